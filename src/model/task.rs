//! A task as producers write it (hookwatch(5), Task): parsed, validated, and
//! kept whole, so that unknown fields travel on into deferred copies,
//! results' metadata and dead letters.

use serde_json::{Map, Value};

use crate::clock;
use crate::model::agent_options::AgentOptions;
use crate::model::dead_letter::DlqReason;
use crate::spool::names::valid_name;

/// The largest task file a worker reads unless told otherwise
/// (`--max-task-bytes`); hw-enqueue bounds its input lines by it.
pub const TASK_BYTES_DEFAULT: u64 = 1 << 20;

/// When more tasks are pending than can run, `High` runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Why a task file cannot be run; becomes the dead letter's `dlq_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON at all (`invalid_json`).
    Json(String),
    /// JSON, but not a task (`invalid_task`).
    Task(String),
}

impl Invalid {
    pub fn reason(&self) -> DlqReason {
        match self {
            Invalid::Json(_) => DlqReason::InvalidJson,
            Invalid::Task(_) => DlqReason::InvalidTask,
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Invalid::Json(d) | Invalid::Task(d) => d,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub description: String,
    pub priority: Priority,
    /// The task's own time limit per attempt, in seconds.
    pub timeout: Option<f64>,
    pub dependencies: Vec<String>,
    /// Failed attempts so far (the next attempt is `retry_count + 1`).
    pub retry_count: u32,
    /// Unix seconds before which a deferred task must not run.
    pub not_before: Option<f64>,
    /// What it asks of the Claude CLI (model, turns, tools…).
    pub options: AgentOptions,
    /// Every field as written, the known ones included.
    pub fields: Map<String, Value>,
}

impl Task {
    /// Parses and validates a task file's bytes for `worker`.
    pub fn parse(bytes: &[u8], worker: &str) -> Result<Task, Invalid> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| Invalid::Json(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(Invalid::Task("not a JSON object".into()));
        };
        Task::from_fields(fields, worker).map_err(Invalid::Task)
    }

    fn from_fields(fields: Map<String, Value>, worker: &str) -> Result<Task, String> {
        let id = match fields.get("task_id") {
            Some(Value::String(s)) if valid_name(s) => s.clone(),
            Some(Value::String(_)) => return Err("task_id is not a valid name".into()),
            Some(_) => return Err("task_id is not a string".into()),
            None => return Err("task_id is missing".into()),
        };
        let description = match fields.get("description") {
            Some(Value::String(s)) if s.is_empty() => return Err("description is empty".into()),
            // It becomes an argument of the agent, which takes no NUL.
            Some(Value::String(s)) if s.contains('\0') => {
                return Err("description holds a NUL byte, which no argument can".into())
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("description is not a string".into()),
            None => return Err("description is missing".into()),
        };
        match fields.get("worker") {
            None | Some(Value::Null) => {}
            Some(Value::String(w)) if w == worker => {}
            Some(Value::String(w)) => return Err(format!("worker is {w:?}, not {worker:?}")),
            Some(_) => return Err("worker is not a string".into()),
        }
        let priority = match fields.get("priority") {
            None | Some(Value::Null) => Priority::Normal,
            Some(Value::String(p)) => {
                Priority::parse(p).ok_or("priority is not high, normal or low")?
            }
            Some(_) => return Err("priority is not a string".into()),
        };
        let timeout = match fields.get("timeout") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(t) if t > 0.0 && t.is_finite() => Some(t),
                _ => return Err("timeout is not a positive number".into()),
            },
        };
        let dependencies = match fields.get("dependencies") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(deps)) => deps
                .iter()
                .map(|d| match d {
                    Value::String(s) if valid_name(s) => Ok(s.clone()),
                    _ => Err("dependencies holds something that is not a task id"),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("dependencies is not a list".into()),
        };
        match fields.get("metadata") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => return Err("metadata is not an object".into()),
        }
        let retry_count = match fields.get("retry_count") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("retry_count is not a count")?,
        };
        let not_before = match fields.get("not_before") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(clock::parse_rfc3339(s).ok_or("not_before is not an RFC 3339 time")?)
            }
            Some(_) => return Err("not_before is not a string".into()),
        };
        let options = AgentOptions::parse(&fields)?;
        Ok(Task {
            options,
            id,
            description,
            priority,
            timeout,
            dependencies,
            retry_count,
            not_before,
            fields,
        })
    }

    /// The task's metadata, `{}` when it has none.
    pub fn metadata(&self) -> Value {
        match self.fields.get("metadata") {
            Some(m @ Value::Object(_)) => m.clone(),
            _ => Value::Object(Map::new()),
        }
    }

    /// Records a failed attempt and when the next may start.
    pub fn defer(&mut self, retry_count: u32, not_before: f64, last_error: &str) {
        self.retry_count = retry_count;
        self.not_before = Some(not_before);
        self.fields.insert("retry_count".into(), retry_count.into());
        self.set_not_before(not_before);
        self.fields.insert("last_error".into(), last_error.into());
    }

    /// Sets when a task waiting for its dependencies is looked at again.
    pub fn set_not_before(&mut self, not_before: f64) {
        self.not_before = Some(not_before);
        let when = clock::rfc3339(clock::from_unix(not_before));
        self.fields.insert("not_before".into(), when.into());
    }

    /// The task file's content: every field, one JSON line.
    pub fn to_json(&self) -> Vec<u8> {
        crate::spool::publish::json_line(&self.fields)
    }
}

/// A cheap look at a pending file's priority, to order the queue before
/// claiming; anything unreadable counts as normal (the claim will judge it).
pub fn peek_priority(bytes: &[u8]) -> Priority {
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        priority: Option<&'a str>,
    }
    serde_json::from_slice::<Peek>(bytes)
        .ok()
        .and_then(|p| p.priority.and_then(Priority::parse))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Task, Invalid> {
        Task::parse(s.as_bytes(), "marie")
    }

    #[test]
    fn a_minimal_task_parses_and_keeps_unknown_fields() {
        let t = parse(r#"{"task_id":"a","description":"d","x":{"y":1}}"#).unwrap();
        assert_eq!(t.id, "a");
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.fields["x"]["y"], 1);
        assert!(String::from_utf8(t.to_json()).unwrap().contains("\"x\""));
    }

    #[test]
    fn bad_tasks_name_their_fault() {
        assert_eq!(parse("{").unwrap_err().reason(), DlqReason::InvalidJson);
        assert_eq!(parse("[1]").unwrap_err().reason(), DlqReason::InvalidTask);
        let cases = [
            r#"{"description":"d"}"#,
            r#"{"task_id":"../x","description":"d"}"#,
            r#"{"task_id":"a","description":""}"#,
            r#"{"task_id":"a","description":"d","worker":"anga"}"#,
            r#"{"task_id":"a","description":"d","priority":"urgent"}"#,
            r#"{"task_id":"a","description":"d","timeout":0}"#,
            r#"{"task_id":"a","description":"d","dependencies":"b"}"#,
            r#"{"task_id":"a","description":"d","metadata":[]}"#,
            r#"{"task_id":"a","description":"a\u0000b"}"#,
        ];
        for c in cases {
            assert_eq!(
                parse(c).unwrap_err().reason(),
                DlqReason::InvalidTask,
                "{c}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_invalid_json_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert_eq!(parse(&deep).unwrap_err().reason(), DlqReason::InvalidJson);
    }

    #[test]
    fn peek_reads_priority() {
        assert_eq!(peek_priority(br#"{"priority":"high"}"#), Priority::High);
        assert_eq!(peek_priority(b"garbage"), Priority::Normal);
    }
}
