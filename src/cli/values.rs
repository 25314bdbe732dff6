//! Values from the command line and the environment: a flag over its
//! environment variable over the default, parsed and checked before
//! anything starts. A bad value is one error, "invalid value … for …",
//! that names the flag or variable it came from (exit 78); every tool
//! uses these parsers, so every tool says it the same way.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::log::{LogConfig, LogFormat};
use crate::spool::names::{valid_worker_name, ORCHESTRATOR};

/// Longest accepted duration: a hundred years is "forever" here.
const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;

/// A raw value and where it came from (`--flag` or `VARIABLE`).
#[derive(Debug, Clone)]
pub struct Raw {
    pub value: String,
    pub origin: String,
}

impl Raw {
    /// The flag's value if given, else the variable's if set and not blank.
    pub fn pick(flag_value: &Option<String>, flag: &str, var: Option<&str>) -> Option<Raw> {
        if let Some(v) = flag_value {
            return Some(Raw::new(v, flag));
        }
        let var = var?;
        let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
        Some(Raw::new(&value, var))
    }

    pub fn new(value: &str, origin: &str) -> Raw {
        Raw {
            value: value.to_string(),
            origin: origin.to_string(),
        }
    }

    /// The one message for a bad value.
    pub fn invalid(&self, why: &str) -> Error {
        invalid(&self.value, &self.origin, why)
    }
}

/// `invalid value "VALUE" for ORIGIN: WHY`, a configuration error (78).
pub fn invalid(value: &str, origin: &str, why: &str) -> Error {
    Error::config(format!("invalid value {value:?} for {origin}: {why}"))
}

/// Why a worker name is refused, for every tool's message.
pub fn invalid_worker_name(name: &str) -> String {
    format!(
        "invalid worker name {name:?}: up to 128 letters, digits, '.', '_' and '-', \
         starting with a letter or digit, and not \"{ORCHESTRATOR}\""
    )
}

/// A comma-separated list of worker names, each checked; blanks skipped.
pub fn worker_names(raw: &Raw) -> Result<Vec<String>> {
    let names: Vec<String> = raw
        .value
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    match names.iter().find(|n| !valid_worker_name(n)) {
        Some(bad) => Err(raw.invalid(&invalid_worker_name(bad))),
        None => Ok(names),
    }
}

/// Seconds with fractions, or a number with `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1.0),
        (i, 'm') => (&s[..i], 60.0),
        (i, 'h') => (&s[..i], 3600.0),
        (i, 'd') => (&s[..i], 86_400.0),
        _ => (s, 1.0),
    };
    let secs = number.trim().parse::<f64>().ok()? * unit;
    (secs.is_finite() && (0.0..=MAX_SECS).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Bytes, or a number with `K`, `M` or `G` (powers of 1024).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(unit)
}

/// The spellings of yes and no that the Python system accepted.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A duration setting; `positive` refuses zero.
pub fn duration(raw: Option<Raw>, default: f64, positive: bool) -> Result<Duration> {
    let Some(raw) = raw else {
        return Ok(Duration::from_secs_f64(default));
    };
    match parse_duration(&raw.value) {
        Some(d) if positive && d.is_zero() => Err(raw.invalid("must be more than 0")),
        Some(d) => Ok(d),
        None => Err(raw.invalid("not a duration (seconds, or with s, m, h or d)")),
    }
}

/// A duration setting with no default: `None` when not given.
pub fn optional_duration(raw: Option<Raw>, positive: bool) -> Result<Option<Duration>> {
    match raw {
        None => Ok(None),
        raw => duration(raw, 0.0, positive).map(Some),
    }
}

/// A whole number from `min` to `max`.
pub fn count(raw: Option<Raw>, default: u64, min: u64, max: u64) -> Result<u64> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(raw.invalid(&format!("must be from {min} to {max}"))),
        Err(_) => Err(raw.invalid("not a whole number")),
    }
}

/// A positive size in bytes.
pub fn bytes(raw: Option<Raw>, default: u64) -> Result<u64> {
    let Some(raw) = raw else { return Ok(default) };
    match parse_bytes(&raw.value) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(raw.invalid("not a positive size (bytes, or with K, M or G)")),
    }
}

/// A number from `min` to `max`.
pub fn number(raw: Option<Raw>, default: f64, min: f64, max: f64) -> Result<f64> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.value.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && (min..=max).contains(&x) => Ok(x),
        _ => Err(raw.invalid(&format!("not a number from {min} to {max}"))),
    }
}

/// `true` or `false` in the spellings `parse_bool` knows.
pub fn boolean(raw: Option<Raw>, default: bool) -> Result<bool> {
    let Some(raw) = raw else { return Ok(default) };
    parse_bool(&raw.value).ok_or_else(|| raw.invalid("not true or false"))
}

impl LogConfig {
    /// `--log-level` (`LOG_LEVEL`) and `--log-format` (`LOG_FORMAT`).
    pub fn resolve(level: &Option<String>, format: &Option<String>) -> Result<LogConfig> {
        let level = match Raw::pick(level, "--log-level", Some("LOG_LEVEL")) {
            None => log::LevelFilter::Info,
            Some(raw) => crate::log::parse_level(&raw.value)
                .ok_or_else(|| raw.invalid("not DEBUG, INFO, WARNING or ERROR"))?,
        };
        let format = match Raw::pick(format, "--log-format", Some("LOG_FORMAT")) {
            None => LogFormat::Json,
            Some(raw) => match raw.value.to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return Err(raw.invalid("not json or text")),
            },
        };
        Ok(LogConfig { level, format })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_fractions_and_suffixes() {
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("1e300"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_bytes("1M"), Some(1 << 20));
        assert_eq!(parse_bytes("512"), Some(512));
        assert_eq!(parse_bytes("99999999999G"), None);
        assert_eq!(parse_bytes("x"), None);
    }

    #[test]
    fn a_bad_value_names_its_origin() {
        let e = count(Some(Raw::new("x", "--max-concurrent")), 3, 1, 9).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"x\" for --max-concurrent: not a whole number"
        );
    }
}
