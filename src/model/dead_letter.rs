//! The dead letter (hookwatch(5), Dead letter): the record of a task that
//! cannot succeed, or of a bad entry, written as
//! `dlq/<worker>/<stem>_<unix>.json` by `dlq::publish`. Here: why it was
//! written (`DlqReason`) and what it holds.

use std::ffi::OsStr;

use serde_json::{Map, Value};

use crate::clock;
use crate::model::task::Task;
use crate::model::words;

words! {
    /// Why a dead letter was written: its `dlq_reason`.
    pub enum DlqReason {
        /// Out of attempts.
        MaxRetriesExceeded = "max_retries_exceeded",
        /// Not JSON.
        InvalidJson = "invalid_json",
        /// JSON, but not a task (a field missing or ill-typed, a bad id).
        InvalidTask = "invalid_task",
        /// Over `--max-task-bytes`: moved aside unread.
        TaskTooLarge = "task_too_large",
        /// A symlink, FIFO, socket, device or folder: moved aside.
        NotARegularFile = "not_a_regular_file",
        /// A task it depends on failed or was dead-lettered.
        DependencyFailed = "dependency_failed",
        /// The agent said the same task would fail again
        /// (`error_max_turns`, `error_max_budget_usd`).
        NotRetryable = "not_retryable",
        /// An operator cancelled the task before it ran (`hw-dlq cancel`).
        Cancelled = "cancelled",
        /// A pending file the worker may not read: moved aside unread.
        Unreadable = "unreadable",
        /// A task id that already has a result (only a replay may run it
        /// again), or that another queued file already uses.
        DuplicateTaskId = "duplicate_task_id",
    }
}

impl DlqReason {
    /// The dead letter of a bad entry, which holds no task to replay.
    pub fn is_bad_entry(self) -> bool {
        matches!(
            self,
            DlqReason::InvalidJson
                | DlqReason::InvalidTask
                | DlqReason::TaskTooLarge
                | DlqReason::NotARegularFile
                | DlqReason::Unreadable
        )
    }

    /// Whether a failed result follows this dead letter (a task out of
    /// attempts gets both; the record that ends it is the result).
    pub fn has_result(self) -> bool {
        matches!(
            self,
            DlqReason::MaxRetriesExceeded | DlqReason::NotRetryable
        )
    }
}

/// The dead letter of a task: its fields plus why and when.
pub fn task_record(task: &Task, reason: DlqReason, last_error: Option<&str>) -> Map<String, Value> {
    let mut record = task.fields.clone();
    record.remove("not_before");
    record.insert("dlq_reason".into(), reason.as_str().into());
    record.insert("dlq_timestamp".into(), clock::now_rfc3339().into());
    record.insert("retry_count".into(), task.retry_count.into());
    if let Some(e) = last_error {
        record.insert("last_error".into(), e.into());
    }
    record
}

/// The dead letter of a bad entry: its name and, when it was read, its
/// content (as text, or base64 when it is not UTF-8).
pub fn entry_record(
    name: &OsStr,
    reason: DlqReason,
    detail: &str,
    content: Option<&[u8]>,
) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("dlq_reason".into(), reason.as_str().into());
    record.insert("dlq_timestamp".into(), clock::now_rfc3339().into());
    record.insert("retry_count".into(), 0.into());
    record.insert("original_name".into(), name.to_string_lossy().into());
    record.insert("last_error".into(), detail.into());
    match content.map(std::str::from_utf8) {
        Some(Ok(text)) => {
            record.insert("original".into(), text.into());
        }
        Some(Err(_)) => {
            record.insert(
                "original_base64".into(),
                base64(content.unwrap_or_default()).into(),
            );
        }
        None => {}
    }
    record
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Word;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn reasons_round_trip_through_their_spelling_and_json() {
        for r in DlqReason::ALL {
            assert_eq!(DlqReason::parse(r.as_str()), Some(*r));
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(serde_json::from_str::<DlqReason>(&json).unwrap(), *r);
        }
        assert!(serde_json::from_str::<DlqReason>("\"nope\"").is_err());
    }
}
