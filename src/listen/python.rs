//! The Python watcher's state file, imported once when hw-listen takes
//! over its spool (issue #20; hw-listen(8), STATE). That listener kept its
//! `STATE_FILE` as `{"tasks": [{"task_id", "worker", "created_at",
//! "completed_at", "status", "result_file", "attempts"}], "stats": {…},
//! "timestamp": "…"}`. Each task it lists becomes an entry of hookwatch's
//! state, so that the switch repeats no event it had sent: a task that had
//! ended counts as reported, with the result and the dead letters present
//! now (new ones, written later, are new events); one still open keeps its
//! creation time for the completion timeout.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::model::result::ResultStatus;
use crate::spool::names::{dead_letter_id, valid_name, valid_worker_name};
use crate::spool::Spool;

use super::state::{Imported, Snapshot, TaskState};
use super::{list, mtime_ns, read_json};

/// What the Python listener's `status` says of a task.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Python {
    /// Ended with a result of this status (the file's, when it is there,
    /// decides).
    Result(ResultStatus),
    /// Ended with a dead letter and no result.
    DeadLetter,
    /// Not ended; `timed_out` when its task_timeout went out already.
    Open { timed_out: bool },
}

impl Python {
    /// `completed`, `failed`, `dead_lettered` (or `dead-lettered`, `dlq`)
    /// and `cancelled` are ends. `timeout` is the Python listener's own
    /// completion timeout: it reported the timeout, but the task may still
    /// end, so it is open, unless `completed_at` says it ended (a run
    /// killed at its time limit). Any other status (pending, running…) is
    /// an end exactly when `completed_at` is set.
    fn of(status: &str, completed_at: Option<f64>) -> Python {
        let word = status.trim().to_ascii_lowercase().replace('-', "_");
        let ended = completed_at.is_some();
        match word.as_str() {
            "completed" => Python::Result(ResultStatus::Completed),
            "failed" => Python::Result(ResultStatus::Failed),
            "dead_lettered" | "dead_letter" | "dlq" | "cancelled" | "canceled" => {
                Python::DeadLetter
            }
            "timeout" | "timed_out" if !ended => Python::Open { timed_out: true },
            _ if ended => Python::Result(ResultStatus::Failed),
            _ => Python::Open { timed_out: false },
        }
    }
}

/// Recognises the Python listener's state in `bytes` (an object whose
/// `tasks` is an array of objects) and turns it into hookwatch's, judged
/// against the spool as it is now; `None` for anything else. `horizon`
/// becomes the snapshot's: the Python listener caught up long ago, so a
/// record it does not list is judged as after a first run (new unless
/// older than `--retain`).
pub fn import(bytes: &[u8], spool: &Spool, now: f64, horizon: f64) -> Option<Imported> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let tasks = value.as_object()?.get("tasks")?.as_array()?;
    if !tasks.iter().all(Value::is_object) {
        return None;
    }
    let mut snap = Snapshot {
        version: 1,
        horizon: Some(horizon),
        ..Snapshot::default()
    };
    let mut skipped = 0;
    let mut records: HashMap<String, Records> = HashMap::new();
    for entry in tasks.iter().filter_map(Value::as_object) {
        let (Some(worker), Some(id)) = (
            text(entry, "worker").filter(|w| valid_worker_name(w)),
            text(entry, "task_id").filter(|i| valid_name(i)),
        ) else {
            skipped += 1;
            continue;
        };
        let found = records
            .entry(worker.to_string())
            .or_insert_with(|| Records::of(spool, worker));
        // A task listed twice (replayed, say): the later entry is its
        // present state.
        let key = format!("{worker}/{id}");
        let t = task_state(entry, spool, worker, id, found, now);
        snap.tasks.insert(key, t);
    }
    let ended = snap.tasks.values().filter(|t| t.is_terminal()).count();
    let summary = format!(
        "{} tasks: {ended} ended, {} still open; {skipped} entries without a valid worker or task_id skipped",
        snap.tasks.len(),
        snap.tasks.len() - ended,
    );
    Some(Imported {
        snap,
        whose: "the Python watcher's",
        summary,
    })
}

/// One listed task as hookwatch's state remembers it.
fn task_state(
    entry: &Map<String, Value>,
    spool: &Spool,
    worker: &str,
    id: &str,
    found: &Records,
    now: f64,
) -> TaskState {
    let created_at = entry.get("created_at").and_then(Value::as_f64);
    let completed_at = entry.get("completed_at").and_then(Value::as_f64);
    let said = Python::of(text(entry, "status").unwrap_or(""), completed_at);
    let result_path = spool.result_path(worker, id);
    let result = mtime_ns(&result_path);
    let letters = found.dead_letters.get(id).map(Vec::as_slice).unwrap_or(&[]);
    let mut t = TaskState {
        enqueued: created_at,
        ..TaskState::default()
    };
    match said {
        Python::Result(_) | Python::DeadLetter => {
            // Its end went out: every record of it present now did too.
            t.dead_letters = letters.iter().map(|(name, _)| name.clone()).collect();
            t.result = result;
            let word = match said {
                Python::Result(s) => Some(s),
                _ => None,
            };
            // The result's own status, as `on_result` would have read it.
            let of_file = result.map(|_| {
                read_json(&result_path)
                    .and_then(|r| ResultStatus::of(&r))
                    .or(word)
                    .unwrap_or(ResultStatus::Failed)
            });
            t.status = of_file.or(word).map(|s| s.as_str().to_string());
            t.dead_lettered = t.status.is_none();
            // Remembered for --retain from now, so that these records are
            // not met again as unknown ones.
            t.ended = Some(now);
        }
        Python::Open { timed_out } => {
            t.timed_out = timed_out;
            // Records older than the task's creation are of an earlier run
            // (before a replay), which the Python listener reported.
            if let Some(created) = created_at {
                let before = |ns: u64| (ns as f64 / 1e9) < created;
                t.result = result.filter(|&ns| before(ns));
                t.dead_letters = letters
                    .iter()
                    .filter(|(_, ns)| before(*ns))
                    .map(|(name, _)| name.clone())
                    .collect();
            }
        }
    }
    t
}

/// The dead letters of one worker present at the import, by task id,
/// with their modification times (ns).
struct Records {
    dead_letters: HashMap<String, Vec<(String, u64)>>,
}

impl Records {
    fn of(spool: &Spool, worker: &str) -> Records {
        let dir = spool.dlq_dir(worker);
        let mut dead_letters: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        for name in list(&dir) {
            let Some(id) = dead_letter_id(&name) else {
                continue;
            };
            let Some(ns) = mtime_ns(&dir.join(&name)) else {
                continue;
            };
            dead_letters
                .entry(id.to_string())
                .or_default()
                .push((name.clone(), ns));
        }
        Records { dead_letters }
    }
}

fn text<'a>(entry: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    entry.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    #[test]
    fn ends_and_open_tasks() {
        let at = Some(1.0);
        for s in ["completed", "COMPLETED"] {
            assert_eq!(Python::of(s, at), Python::Result(ResultStatus::Completed));
        }
        assert_eq!(
            Python::of("failed", None),
            Python::Result(ResultStatus::Failed)
        );
        for s in ["dead_lettered", "dead-lettered", "dlq", "cancelled"] {
            assert_eq!(Python::of(s, None), Python::DeadLetter, "{s}");
        }
        assert_eq!(
            Python::of("timeout", None),
            Python::Open { timed_out: true }
        );
        assert_eq!(
            Python::of("timeout", at),
            Python::Result(ResultStatus::Failed)
        );
        assert_eq!(
            Python::of("pending", None),
            Python::Open { timed_out: false }
        );
        assert_eq!(
            Python::of("running", at),
            Python::Result(ResultStatus::Failed)
        );
    }

    #[test]
    fn other_json_is_not_the_python_format() {
        let spool = Spool::at(std::path::Path::new("/nonexistent"));
        for bad in [
            json!([]),
            json!({"tasks": {}}),
            json!({"tasks": 3}),
            json!({"tasks": [1]}),
            json!({"stats": {}}),
        ] {
            let bytes = bad.to_string().into_bytes();
            assert!(import(&bytes, &spool, 0.0, 0.0).is_none(), "{bad}");
        }
        assert!(import(b"{", &spool, 0.0, 0.0).is_none());
    }

    #[test]
    fn records_present_are_reported_and_open_tasks_keep_their_creation() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path());
        let results = spool.result_dir("w");
        let dlq = spool.dlq_dir("w");
        fs::create_dir_all(&results).unwrap();
        fs::create_dir_all(&dlq).unwrap();
        fs::write(results.join("done.json"), r#"{"status":"completed"}"#).unwrap();
        fs::write(results.join("lost.json"), r#"{"status":"failed"}"#).unwrap();
        fs::write(dlq.join("lost_1796378438.json"), "{}").unwrap();
        fs::write(dlq.join("bad_1796378438.json"), "{}").unwrap();
        let state = json!({"tasks": [
            {"task_id": "done", "worker": "w", "status": "completed", "completed_at": 2.0},
            {"task_id": "lost", "worker": "w", "status": "failed", "completed_at": 2.0},
            {"task_id": "bad", "worker": "w", "status": "dead_lettered"},
            {"task_id": "gone", "worker": "w", "status": "completed"},
            {"task_id": "wait", "worker": "w", "status": "pending", "created_at": 5.0e9},
            {"task_id": "late", "worker": "w", "status": "timeout", "created_at": 7.0},
            {"task_id": "../x", "worker": "w", "status": "completed"},
            {"task_id": "nobody", "status": "completed"}
        ], "stats": {}, "timestamp": "2026-12-04T10:00:38.780262"});
        let imported = import(state.to_string().as_bytes(), &spool, 100.0, 50.0).unwrap();
        let t = &imported.snap.tasks;
        assert_eq!(imported.snap.horizon, Some(50.0));
        assert_eq!(t.len(), 6, "{t:?}");
        assert_eq!(t["w/done"].result, mtime_ns(&results.join("done.json")));
        assert_eq!(t["w/done"].status.as_deref(), Some("completed"));
        assert_eq!(t["w/lost"].status.as_deref(), Some("failed"));
        assert_eq!(t["w/lost"].dead_letters, ["lost_1796378438.json"]);
        assert!(t["w/bad"].dead_lettered && t["w/bad"].is_terminal());
        assert_eq!(t["w/bad"].dead_letters, ["bad_1796378438.json"]);
        assert_eq!(t["w/gone"].status.as_deref(), Some("completed"));
        assert_eq!(t["w/gone"].result, None);
        assert!(!t["w/wait"].is_terminal());
        assert_eq!(t["w/wait"].enqueued, Some(5.0e9));
        assert!(!t["w/wait"].timed_out);
        assert!(t["w/late"].timed_out && !t["w/late"].is_terminal());
        assert!(imported
            .summary
            .contains("6 tasks: 4 ended, 2 still open; 2 entries"));
    }

    #[test]
    fn an_open_task_keeps_the_records_of_an_earlier_run_as_reported() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path());
        let results = spool.result_dir("w");
        fs::create_dir_all(&results).unwrap();
        fs::write(results.join("again.json"), r#"{"status":"failed"}"#).unwrap();
        let ns = mtime_ns(&results.join("again.json")).unwrap();
        let created = ns as f64 / 1e9 + 10.0;
        let state = json!({"tasks": [
            {"task_id": "again", "worker": "w", "status": "pending", "created_at": created}
        ]});
        let imported = import(state.to_string().as_bytes(), &spool, 0.0, 0.0).unwrap();
        let t = &imported.snap.tasks["w/again"];
        assert_eq!(t.result, Some(ns));
        assert!(!t.is_terminal());
    }
}
