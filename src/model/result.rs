//! The result file (hookwatch(5), Result and Trigger): `results/<worker>/<task_id>.json`,
//! written once per run at the terminal state, and the trigger file
//! written at claim.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::failure::FailureClass;
use crate::model::words;

words! {
    /// How a task ended.
    pub enum ResultStatus {
        Completed = "completed",
        Failed = "failed",
    }
}

words! {
    /// What a receipt says: the task was received (claimed).
    pub enum TriggerStatus {
        Received = "received",
    }
}

impl ResultStatus {
    /// The `status` of a result read as JSON, if it is one of ours.
    pub fn of(record: &Value) -> Option<ResultStatus> {
        <ResultStatus as crate::model::Word>::parse(record.get("status")?.as_str()?)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    pub task_id: String,
    pub worker: String,
    pub status: ResultStatus,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub duration_seconds: f64,
    pub timestamp: String,
    pub retry_count: u32,
    #[serde(default)]
    pub metadata: Value,
    /// The failure class of the last attempt (`exit_status`, `timeout`,
    /// `rate_limited`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FailureClass>,
    /// The dead letter of a failed task, in `dlq/<worker>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_file: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdout_truncated: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stderr_truncated: bool,
    /// `memory` or `cpu`: the attempt hit `--max-memory` or `--max-cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_limit: Option<String>,
    /// The Claude CLI's result object as it gave it, less `result` (which
    /// is `stdout`) unless `stdout` keeps a stream-json stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Map<String, Value>>,
    /// The CLI's own words on a failure (`result` or `errors`), first KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
    /// Which claim ran it: recovery tells this run's result from an older
    /// one by this, never by comparing two hosts' clocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimIdentity>,
}

/// The claim a result came from (hookwatch(5), Result): the host and
/// process that claimed the task, and the modification time, in Unix
/// nanoseconds, that the claim stamped on its entry in `.active/` (a
/// value the claimer chose, kept as is by the file system, so equal
/// values mean the same claim whatever the clocks of the hosts).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClaimIdentity {
    pub hostname: String,
    pub pid: u32,
    pub mtime_ns: u64,
}

impl ClaimIdentity {
    /// Whether an entry of `.active/` whose mtime is `entry_ns` is the
    /// claim this names: the same stamp, or, on a file system that keeps
    /// whole seconds only, the same second.
    pub fn stamped(&self, entry_ns: u64) -> bool {
        const S: u64 = 1_000_000_000;
        entry_ns == self.mtime_ns || (entry_ns % S == 0 && entry_ns / S == self.mtime_ns / S)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The receipt written when a task is claimed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trigger {
    pub task_id: String,
    pub worker: String,
    pub status: TriggerStatus,
    pub timestamp: String,
}
