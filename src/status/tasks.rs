//! `hw-status --tasks`: one line per task that waits or runs (pending,
//! active, deferred), like `pueue status`: its id, state, priority, age,
//! attempts, `not_before`, and the dependencies it still waits for (those
//! without a completed result in any worker's results folder). Task files
//! are read as the worker reads them: never through a symlink, never past
//! a bound; one that cannot be read is still listed, with why.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use serde::Serialize;
use serde_json::Value;

use crate::clock;
use crate::error::Result;
use crate::model::result::ResultStatus;
use crate::model::task::Priority;
use crate::spool::names::{json_stem, valid_name};
use crate::spool::{read_regular, task_names, Queued, Spool, RECORD_MAX};

use super::{human_duration, printable};

/// One task as `--tasks` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskLine {
    pub worker: String,
    /// The task's `task_id`, or, for a file that cannot be read, the
    /// file name's stem.
    pub task_id: String,
    /// The file's name in its folder.
    pub file: String,
    /// `pending`, `active` or `deferred`.
    pub state: &'static str,
    pub priority: Option<String>,
    /// Seconds since the file was last written: enqueued (pending),
    /// claimed (active), or deferred.
    pub age_seconds: Option<f64>,
    /// Attempts made so far, the running one included.
    pub attempts: Option<u64>,
    pub not_before: Option<String>,
    /// Dependencies without a completed result, in the task's order.
    pub waiting_for: Vec<String>,
    /// Why the file could not be read or parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How it sorts: the order in which the worker will take it.
    #[serde(skip)]
    order: (u8, f64),
}

/// The tasks of `workers` (none: every worker with a tasks folder), by
/// worker, then running first, then pending in the order they will run
/// (priority, then oldest first), then deferred by `not_before`.
pub fn list(spool: &Spool, workers: &[String]) -> Result<Vec<TaskLine>> {
    let names = match workers.is_empty() {
        true => spool.worker_names()?,
        false => workers.to_vec(),
    };
    let now = clock::unix_now();
    let mut deps = Dependencies::new(spool)?;
    let mut lines = Vec::new();
    for worker in &names {
        let mut of_worker = Vec::new();
        for q in [Queued::Active, Queued::Pending, Queued::Deferred] {
            let dir = spool.queued_dir(worker, q);
            for name in task_names(&dir)? {
                let file = name.to_string_lossy().into_owned();
                of_worker.push(read_one(worker, q, &dir.join(&name), file, now, &mut deps));
            }
        }
        of_worker.sort_by(|a, b| {
            (a.order.0, a.order.1)
                .partial_cmp(&(b.order.0, b.order.1))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.file.cmp(&b.file))
        });
        lines.extend(of_worker);
    }
    Ok(lines)
}

fn read_one(
    worker: &str,
    q: Queued,
    path: &std::path::Path,
    file: String,
    now: f64,
    deps: &mut Dependencies,
) -> TaskLine {
    let stem = json_stem(&file).unwrap_or(&file).to_string();
    let mut line = TaskLine {
        worker: worker.to_string(),
        task_id: stem,
        file,
        state: q.as_str(),
        priority: None,
        age_seconds: None,
        attempts: None,
        not_before: None,
        waiting_for: Vec::new(),
        error: None,
        order: (rank(q, None), 0.0),
    };
    let mtime = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| m.mtime() as f64 + m.mtime_nsec() as f64 / 1e9);
    if let Some(t) = mtime {
        line.age_seconds = Some(((now - t).max(0.0) * 10.0).round() / 10.0);
        line.order.1 = t;
    }
    let fields = match read_regular(path, RECORD_MAX) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                line.error = Some("not a JSON object".into());
                return line;
            }
            Err(e) => {
                line.error = Some(format!("not JSON: {e}"));
                return line;
            }
        },
        Err(e) => {
            line.error = Some(format!("cannot read: {e}"));
            return line;
        }
    };
    if let Some(id) = fields
        .get("task_id")
        .and_then(Value::as_str)
        .filter(|id| valid_name(id))
    {
        line.task_id = id.to_string();
    }
    let priority = fields
        .get("priority")
        .and_then(Value::as_str)
        .map_or(Some(Priority::Normal), Priority::parse);
    line.priority = Some(priority.map_or("?", Priority::as_str).to_string());
    line.order.0 = rank(q, priority);
    let retries = fields
        .get("retry_count")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    line.attempts = Some(match q {
        Queued::Active => retries.saturating_add(1),
        _ => retries,
    });
    line.not_before = fields
        .get("not_before")
        .and_then(Value::as_str)
        .map(String::from);
    if q == Queued::Deferred {
        if let Some(t) = line.not_before.as_deref().and_then(clock::parse_rfc3339) {
            line.order.1 = t;
        }
    }
    if q != Queued::Active {
        let wanted = fields.get("dependencies").and_then(Value::as_array);
        for dep in wanted.into_iter().flatten().filter_map(Value::as_str) {
            if !deps.completed(dep) {
                line.waiting_for.push(dep.to_string());
            }
        }
    }
    line
}

/// Running first, then pending by priority, then deferred.
fn rank(q: Queued, priority: Option<Priority>) -> u8 {
    match (q, priority) {
        (Queued::Active, _) => 0,
        (Queued::Pending, Some(Priority::High)) => 1,
        (Queued::Pending, Some(Priority::Low)) => 3,
        (Queued::Pending, _) => 2,
        (Queued::Deferred, _) => 4,
    }
}

/// Whether a task id has a completed result in any worker's results
/// folder, each id looked up once.
pub(crate) struct Dependencies<'a> {
    spool: &'a Spool,
    workers: Vec<String>,
    known: HashMap<String, bool>,
}

impl<'a> Dependencies<'a> {
    pub(crate) fn new(spool: &'a Spool) -> Result<Dependencies<'a>> {
        Ok(Dependencies {
            spool,
            workers: spool.result_worker_names()?,
            known: HashMap::new(),
        })
    }

    pub(crate) fn completed(&mut self, id: &str) -> bool {
        if let Some(&done) = self.known.get(id) {
            return done;
        }
        let done = valid_name(id)
            && self.workers.iter().any(|w| {
                read_regular(&self.spool.result_path(w, id), RECORD_MAX)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .is_some_and(|r| ResultStatus::of(&r) == Some(ResultStatus::Completed))
            });
        self.known.insert(id.to_string(), done);
        done
    }
}

/// The table: a header and one row per task; nothing at all when there
/// is no task (so that cron mails only when there is something to read).
pub fn render_table(lines: &[TaskLine]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let header = [
        "WORKER",
        "ID",
        "STATE",
        "PRIORITY",
        "AGE",
        "ATTEMPTS",
        "NOT_BEFORE",
        "WAITING_FOR",
    ];
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for t in lines {
        rows.push(vec![
            t.worker.clone(),
            t.task_id.clone(),
            t.state.to_string(),
            t.priority.clone().unwrap_or_else(dash),
            t.age_seconds
                .map_or_else(dash, |a| human_duration(a as u64)),
            t.attempts.map_or_else(dash, |n| n.to_string()),
            t.not_before.clone().unwrap_or_else(dash),
            match t.waiting_for.is_empty() {
                true => dash(),
                false => t.waiting_for.join(","),
            },
        ]);
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    crate::cli::table::aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_tasks_come_first_then_pending_by_priority_then_deferred() {
        assert!(rank(Queued::Active, None) < rank(Queued::Pending, Some(Priority::High)));
        assert!(rank(Queued::Pending, Some(Priority::High)) < rank(Queued::Pending, None));
        assert!(rank(Queued::Pending, None) < rank(Queued::Pending, Some(Priority::Low)));
        assert!(rank(Queued::Pending, Some(Priority::Low)) < rank(Queued::Deferred, None));
    }

    #[test]
    fn no_tasks_prints_nothing() {
        assert_eq!(render_table(&[]), "");
    }
}
