//! Logging on stderr, one line per event (hw-worker(8), ENVIRONMENT), through `log`
//! and `env_logger`: `json` lines with the Python system's keys, or a
//! `text` line with the same facts. Key-values given to the `log` macros
//! (`info!(task_id = id; "Task completed")`) become fields.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter};

use crate::clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    pub level: LevelFilter,
    pub format: LogFormat,
}

/// DEBUG, INFO, WARNING (or WARN), ERROR, in any case.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.trim().to_ascii_uppercase().as_str() {
        "DEBUG" => Some(LevelFilter::Debug),
        "INFO" => Some(LevelFilter::Info),
        "WARNING" | "WARN" => Some(LevelFilter::Warn),
        "ERROR" | "CRITICAL" => Some(LevelFilter::Error),
        _ => None,
    }
}

/// The Python system's level names.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARNING",
        Level::Info => "INFO",
        Level::Debug | Level::Trace => "DEBUG",
    }
}

/// Installs the logger for `tool` (and `worker`, when there is one).
/// `RUST_LOG`, when set, overrides the level.
pub fn init(tool: &'static str, worker: Option<String>, config: LogConfig) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(config.level);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    builder.target(env_logger::Target::Stderr);
    builder.format(move |buf, record| {
        let line = match config.format {
            LogFormat::Json => json_line(tool, worker.as_deref(), record),
            LogFormat::Text => text_line(tool, worker.as_deref(), record),
        };
        writeln!(buf, "{line}")
    });
    let _ = builder.try_init();
}

/// Keys in the order the Python system wrote them, then the event's own.
fn json_line(tool: &str, worker: Option<&str>, record: &log::Record) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut line = format!(
        "{{\"timestamp\": {}, \"level\": {}, \"logger\": {}",
        quote(&clock::now_rfc3339()),
        quote(level_name(record.level())),
        quote(tool)
    );
    if let Some(w) = worker {
        line.push_str(&format!(", \"worker\": {}", quote(w)));
    }
    line.push_str(&format!(
        ", \"message\": {}",
        quote(&record.args().to_string())
    ));
    let mut fields = Fields(Vec::new());
    let _ = record.key_values().visit(&mut fields);
    for (k, v) in fields.0 {
        line.push_str(&format!(", {}: {}", quote(&k), v));
    }
    line.push('}');
    line
}

fn text_line(tool: &str, worker: Option<&str>, record: &log::Record) -> String {
    let mut line = format!(
        "{} {} {tool}",
        clock::now_rfc3339(),
        level_name(record.level())
    );
    if let Some(w) = worker {
        line.push_str(&format!("[{w}]"));
    }
    line.push_str(&format!(": {}", record.args()));
    let mut fields = Fields(Vec::new());
    let _ = record.key_values().visit(&mut fields);
    for (k, v) in fields.0 {
        match v {
            serde_json::Value::String(s) if s.is_empty() || s.contains(char::is_whitespace) => {
                line.push_str(&format!(" {k}={s:?}"))
            }
            serde_json::Value::String(s) => line.push_str(&format!(" {k}={s}")),
            v => line.push_str(&format!(" {k}={v}")),
        }
    }
    line
}

/// An event's key-values, numbers and booleans kept as such.
struct Fields(Vec<(String, serde_json::Value)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(x) = value.to_f64().filter(|x| x.is_finite()) {
            x.into()
        } else {
            value.to_string().into()
        };
        self.0.push((key.to_string(), v));
        Ok(())
    }
}
