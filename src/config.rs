//! Configuration in one place: a flag over its environment variable over
//! the default, validated before anything starts. A bad value is one error
//! that names the flag or the variable it came from (exit 78).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::listen::ListenConfig;
use crate::log::{LogConfig, LogFormat};
use crate::retry::RetryPolicy;
use crate::run::AgentCommand;
use crate::spool::{valid_worker_name, Spool};

/// Longest accepted duration: a hundred years is "forever" here.
const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;

/// A raw value and where it came from, for error messages.
struct Raw {
    value: String,
    origin: String,
}

/// The first of the flag's value and the variable's, if any.
fn pick(flag_value: &Option<String>, flag: &str, var: Option<&str>) -> Option<Raw> {
    if let Some(v) = flag_value {
        return Some(Raw {
            value: v.clone(),
            origin: flag.to_string(),
        });
    }
    let var = var?;
    let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
    Some(Raw {
        value,
        origin: var.to_string(),
    })
}

fn invalid(raw: &Raw, why: &str) -> Error {
    Error::config(format!(
        "invalid value {:?} for {}: {why}",
        raw.value, raw.origin
    ))
}

/// Why a worker name is refused, for every tool's message.
pub fn invalid_worker_name(name: &str) -> String {
    format!(
        "invalid worker name {name:?}: up to 128 letters, digits, '.', '_' and '-', \
         starting with a letter or digit, and not \"{}\"",
        crate::spool::ORCHESTRATOR
    )
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

/// A duration setting; `positive` refuses zero.
fn duration(raw: Option<Raw>, default: f64, positive: bool) -> Result<Duration> {
    let Some(raw) = raw else {
        return Ok(Duration::from_secs_f64(default));
    };
    match parse_duration(&raw.value) {
        Some(d) if positive && d.is_zero() => Err(invalid(&raw, "must be more than 0")),
        Some(d) => Ok(d),
        None => Err(invalid(
            &raw,
            "not a duration (seconds, or with s, m, h or d)",
        )),
    }
}

fn count(raw: Option<Raw>, default: u64, min: u64, max: u64) -> Result<u64> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(invalid(&raw, &format!("must be from {min} to {max}"))),
        Err(_) => Err(invalid(&raw, "not a whole number")),
    }
}

fn bytes(raw: Option<Raw>, default: u64) -> Result<u64> {
    let Some(raw) = raw else { return Ok(default) };
    match parse_bytes(&raw.value) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(invalid(
            &raw,
            "not a positive size (bytes, or with K, M or G)",
        )),
    }
}

fn number(raw: Option<Raw>, default: f64, min: f64, max: f64) -> Result<f64> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.value.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && (min..=max).contains(&x) => Ok(x),
        _ => Err(invalid(&raw, &format!("not a number from {min} to {max}"))),
    }
}

/// The raw values of hw-worker's flags, as the command line gave them.
#[derive(Debug, Default)]
pub struct WorkerFlags {
    pub name: Option<String>,
    pub root: Option<String>,
    pub max_concurrent: Option<String>,
    pub command: Option<String>,
    pub system_prompt_file: Option<String>,
    pub task_timeout: Option<String>,
    pub kill_grace: Option<String>,
    pub max_retries: Option<String>,
    pub retry_backoff: Option<String>,
    pub initial_retry_delay: Option<String>,
    pub breaker_threshold: Option<String>,
    pub breaker_timeout: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub poll: Option<String>,
    pub workdir: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub max_output: Option<String>,
    pub max_task_bytes: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub metrics_port: Option<String>,
    pub metrics_addr: Option<String>,
    /// `--no-metrics`: no listener at all.
    pub no_metrics: bool,
    pub max_memory: Option<String>,
    pub max_cpu: Option<String>,
    /// `--allow-shared-spool`: start on a folder others may write to.
    pub allow_shared_spool: bool,
    /// `--no-inotify`: find tasks by rescans only (a remote host's view).
    pub no_inotify: bool,
    pub queue_cap: Option<String>,
    /// `--no-fsync`: a throwaway spool, fast and not crash-safe.
    pub no_fsync: bool,
}

/// Everything hw-worker needs, validated.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub name: String,
    pub spool: Spool,
    pub max_concurrent: usize,
    pub command: AgentCommand,
    pub task_timeout: Duration,
    pub kill_grace: Duration,
    pub retry: RetryPolicy,
    pub breaker_threshold: u32,
    pub breaker_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Periodic rescans; `None` means "decide from the file system".
    pub poll: Option<Duration>,
    pub workdir: PathBuf,
    pub shutdown_timeout: Duration,
    pub max_output: usize,
    pub max_task_bytes: u64,
    pub log: LogConfig,
    /// Where to serve /metrics and the health checks; `None`: nowhere.
    pub metrics: Option<(IpAddr, u16)>,
    /// RLIMIT_AS of each agent.
    pub max_memory: Option<u64>,
    /// RLIMIT_CPU of each agent.
    pub max_cpu: Option<Duration>,
    pub allow_shared_spool: bool,
    /// Watch the tasks folder with inotify (else rescans only).
    pub inotify: bool,
    /// Pending tasks kept in memory; the folder holds the rest.
    pub queue_cap: usize,
    /// Make every write durable before it counts (off: `--no-fsync`).
    pub fsync: bool,
}

impl WorkerConfig {
    pub fn resolve(f: &WorkerFlags) -> Result<WorkerConfig> {
        let name = f
            .name
            .clone()
            .ok_or_else(|| Error::usage("missing worker NAME"))?;
        if !valid_worker_name(&name) {
            return Err(Error::usage(invalid_worker_name(&name)));
        }
        let spool = Spool::from_env(pick(&f.root, "--root", None).map(|r| r.value.into()));
        let command_raw = pick(&f.command, "--command", Some("CLAUDE_COMMAND"));
        let prompt_file = pick(
            &f.system_prompt_file,
            "--system-prompt-file",
            Some("SYSTEM_PROMPT_FILE"),
        );
        let command_text = command_raw.as_ref().map_or("claude", |r| r.value.as_str());
        let command = AgentCommand::parse(command_text, prompt_file.map(|r| r.value.into()))
            .ok_or_else(|| Error::config("empty value for --command (CLAUDE_COMMAND)"))?;
        let workdir = match pick(&f.workdir, "--workdir", None) {
            Some(raw) if !std::path::Path::new(&raw.value).is_dir() => {
                return Err(invalid(&raw, "not a folder"));
            }
            Some(raw) => PathBuf::from(raw.value),
            None => spool.tasks_parent(),
        };
        let poll = match pick(&f.poll, "--poll", None) {
            None => None,
            raw => Some(duration(raw, 0.0, false)?),
        };
        if f.no_inotify && poll.is_some_and(|p| p.is_zero()) {
            return Err(Error::config(
                "--no-inotify with --poll 0 would never see a new task",
            ));
        }
        let log_level = pick(&f.log_level, "--log-level", Some("LOG_LEVEL"));
        let log_format = pick(&f.log_format, "--log-format", Some("LOG_FORMAT"));
        Ok(WorkerConfig {
            spool,
            max_concurrent: count(
                pick(
                    &f.max_concurrent,
                    "--max-concurrent",
                    Some("MAX_CONCURRENT_TASKS"),
                ),
                3,
                1,
                1024,
            )? as usize,
            command,
            task_timeout: duration(
                pick(&f.task_timeout, "--task-timeout", Some("TASK_TIMEOUT")),
                600.0,
                true,
            )?,
            kill_grace: duration(pick(&f.kill_grace, "--kill-grace", None), 5.0, false)?,
            retry: RetryPolicy {
                max_retries: count(
                    pick(&f.max_retries, "--max-retries", Some("MAX_RETRIES")),
                    3,
                    0,
                    1000,
                )? as u32,
                backoff: number(
                    pick(&f.retry_backoff, "--retry-backoff", Some("RETRY_BACKOFF")),
                    2.0,
                    1.0,
                    100.0,
                )?,
                initial_delay: duration(
                    pick(
                        &f.initial_retry_delay,
                        "--initial-retry-delay",
                        Some("INITIAL_RETRY_DELAY"),
                    ),
                    1.0,
                    false,
                )?,
            },
            breaker_threshold: count(
                pick(
                    &f.breaker_threshold,
                    "--breaker-threshold",
                    Some("CIRCUIT_BREAKER_THRESHOLD"),
                ),
                5,
                1,
                1_000_000,
            )? as u32,
            breaker_timeout: duration(
                pick(
                    &f.breaker_timeout,
                    "--breaker-timeout",
                    Some("CIRCUIT_BREAKER_TIMEOUT"),
                ),
                60.0,
                false,
            )?,
            heartbeat_interval: duration(
                pick(
                    &f.heartbeat_interval,
                    "--heartbeat-interval",
                    Some("HEARTBEAT_INTERVAL"),
                ),
                10.0,
                true,
            )?,
            poll,
            workdir,
            shutdown_timeout: duration(
                pick(&f.shutdown_timeout, "--shutdown-timeout", None),
                30.0,
                false,
            )?,
            max_output: bytes(pick(&f.max_output, "--max-output", None), 1 << 20)? as usize,
            max_task_bytes: bytes(pick(&f.max_task_bytes, "--max-task-bytes", None), 1 << 20)?,
            metrics: metrics_endpoint(f)?,
            max_memory: match pick(&f.max_memory, "--max-memory", None) {
                None => None,
                raw => Some(bytes(raw, 0)?),
            },
            max_cpu: match pick(&f.max_cpu, "--max-cpu", None) {
                None => None,
                raw => Some(duration(raw, 0.0, true)?),
            },
            allow_shared_spool: f.allow_shared_spool,
            inotify: !f.no_inotify,
            queue_cap: count(
                pick(&f.queue_cap, "--queue-cap", None),
                crate::queue::QUEUE_CAP as u64,
                1,
                1 << 24,
            )? as usize,
            fsync: !f.no_fsync,
            log: LogConfig::resolve(
                log_level.map(|r| (r.value, r.origin)),
                log_format.map(|r| (r.value, r.origin)),
            )?,
            name,
        })
    }
}

/// The raw values of hw-listen's flags.
#[derive(Debug, Default)]
pub struct ListenFlags {
    pub root: Option<String>,
    pub workers: Option<String>,
    pub state_file: Option<String>,
    pub completion_timeout: Option<String>,
    pub stale_after: Option<String>,
    pub disconnect_after: Option<String>,
    pub exec: Option<String>,
    pub exec_timeout: Option<String>,
    pub retain: Option<String>,
    pub poll: Option<String>,
    pub once: bool,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

impl ListenConfig {
    pub fn resolve(f: &ListenFlags) -> Result<ListenConfig> {
        let mut spool = Spool::from_env(pick(&f.root, "--root", None).map(|r| r.value.into()));
        if let Some(raw) = pick(&f.state_file, "--state-file", None) {
            spool.state_file = raw.value.into();
        }
        let workers = match pick(&f.workers, "--workers", Some("WORKERS")) {
            None => None,
            Some(raw) => {
                let names: Vec<String> = raw
                    .value
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect();
                if let Some(bad) = names.iter().find(|n| !valid_worker_name(n)) {
                    return Err(invalid(&raw, &invalid_worker_name(bad)));
                }
                Some(names).filter(|n| !n.is_empty())
            }
        };
        let optional = |raw: Option<Raw>| -> Result<Option<Duration>> {
            match raw {
                None => Ok(None),
                raw => Ok(Some(duration(raw, 0.0, true)?)),
            }
        };
        let exec = match pick(&f.exec, "--exec", None) {
            None => None,
            Some(raw) => Some(
                AgentCommand::parse_quoted(&raw.value)
                    .ok_or_else(|| invalid(&raw, "an empty command or an open quote"))?,
            ),
        };
        let log_level = pick(&f.log_level, "--log-level", Some("LOG_LEVEL"));
        let log_format = pick(&f.log_format, "--log-format", Some("LOG_FORMAT"));
        Ok(ListenConfig {
            spool,
            workers,
            completion_timeout: duration(
                pick(
                    &f.completion_timeout,
                    "--completion-timeout",
                    Some("COMPLETION_TIMEOUT"),
                ),
                600.0,
                true,
            )?,
            stale_after: optional(pick(&f.stale_after, "--stale-after", None))?,
            disconnect_after: optional(pick(&f.disconnect_after, "--disconnect-after", None))?,
            exec,
            exec_timeout: duration(pick(&f.exec_timeout, "--exec-timeout", None), 30.0, true)?,
            once: f.once,
            poll: match pick(&f.poll, "--poll", None) {
                None => None,
                raw => Some(duration(raw, 0.0, true)?),
            },
            retain: duration(pick(&f.retain, "--retain", None), 7.0 * 86_400.0, true)?,
            log: LogConfig::resolve(
                log_level.map(|r| (r.value, r.origin)),
                log_format.map(|r| (r.value, r.origin)),
            )?,
        })
    }
}

/// `ENABLE_METRICS` (or `--no-metrics`), `METRICS_ADDR`, `METRICS_PORT`.
fn metrics_endpoint(f: &WorkerFlags) -> Result<Option<(IpAddr, u16)>> {
    let enabled = match pick(&None, "", Some("ENABLE_METRICS")) {
        _ if f.no_metrics => false,
        None => true,
        Some(raw) => parse_bool(&raw.value).ok_or_else(|| invalid(&raw, "not true or false"))?,
    };
    if !enabled {
        return Ok(None);
    }
    let ip = match pick(&f.metrics_addr, "--metrics-addr", Some("METRICS_ADDR")) {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(raw) => raw
            .value
            .trim()
            .parse()
            .map_err(|_| invalid(&raw, "not an IP address"))?,
    };
    let port = count(
        pick(&f.metrics_port, "--metrics-port", Some("METRICS_PORT")),
        9090,
        0,
        65535,
    )?;
    Ok(Some((ip, port as u16)))
}

/// The spellings of yes and no that the Python system accepted.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl LogConfig {
    /// The level and format from their raw values and origins.
    fn resolve(
        level: Option<(String, String)>,
        format: Option<(String, String)>,
    ) -> Result<LogConfig> {
        let level = match level {
            None => log::LevelFilter::Info,
            Some((value, origin)) => crate::log::parse_level(&value).ok_or_else(|| {
                invalid(&Raw { value, origin }, "not DEBUG, INFO, WARNING or ERROR")
            })?,
        };
        let format = match format {
            None => LogFormat::Json,
            Some((value, origin)) => match value.to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return Err(invalid(&Raw { value, origin }, "not json or text")),
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
}
