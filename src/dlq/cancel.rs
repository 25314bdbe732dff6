//! `hw-dlq cancel` (hw-dlq(1)): a task taken back before or while it runs.
//! A pending or deferred task is locked as a claim locks it, its dead
//! letter (`cancelled`) written, then the task file removed: a crash in
//! between leaves a duplicate, never a loss. A running task is stopped by
//! its worker: hw-dlq leaves a request (`.cancel.<id>` in the tasks
//! folder) that the worker watches, and waits for the dead letter the
//! worker writes once the agent has stopped.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clock;
use crate::dlq::admin::{check_worker, records, Act, Done, Outcome, MAX_RECORD_BYTES};
use crate::error::{Error, Kind, Result};
use crate::model::dead_letter::{task_record, DlqReason};
use crate::model::task::Task;
use crate::spool::claim::{self, Attempt, Claim, Unread};
use crate::spool::dir::Dir;
use crate::spool::names::{cancel_request, task_file, valid_name};
use crate::spool::publish::Durability;
use crate::spool::{read_regular, task_names, Queued, Spool};

/// hw-dlq writes nothing it may lose.
const D: Durability = Durability::Durable;

/// Where a task of `worker` named by `id` is: the file `<id>.json`, else
/// the task file whose `task_id` is `id`, else the file named `id`,
/// looked for pending, then deferred, then active.
fn find_task(spool: &Spool, worker: &str, id: &str) -> Result<Option<(Queued, OsString)>> {
    let order = [Queued::Pending, Queued::Deferred, Queued::Active];
    // Only a valid name becomes part of a path.
    for q in order.into_iter().filter(|_| valid_name(id)) {
        let name = task_file(id);
        if fs::symlink_metadata(spool.queued_dir(worker, q).join(&name)).is_ok() {
            return Ok(Some((q, name.into())));
        }
    }
    for q in order {
        let dir = spool.queued_dir(worker, q);
        for name in task_names(&dir)? {
            if name == OsStr::new(id) {
                return Ok(Some((q, name)));
            }
            let Ok(bytes) = read_regular(&dir.join(&name), MAX_RECORD_BYTES) else {
                continue;
            };
            let named = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .is_some_and(|t| t.get("task_id").and_then(Value::as_str) == Some(id));
            if named {
                return Ok(Some((q, name)));
            }
        }
    }
    Ok(None)
}

/// `hw-dlq cancel`: each task the IDs name, pending or deferred, becomes
/// a dead letter `cancelled` (its fields, `dlq_reason`, `dlq_timestamp`,
/// `retry_count`, `last_error`). Every ID must name a task of `worker`,
/// else nothing is done (66). A running task is refused: cancelling it
/// needs its worker.
pub fn cancel(
    spool: &Spool,
    worker: &str,
    ids: &[String],
    wait: Duration,
    report: &mut dyn FnMut(Outcome),
) -> Result<()> {
    check_worker(worker)?;
    if ids.is_empty() {
        return Err(Error::usage(
            "cancel takes WORKER and at least one ID (see --help)",
        ));
    }
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    for id in ids {
        match find_task(spool, worker, id)? {
            Some(place) => found.push((id, place)),
            None => unknown.push(id.as_str()),
        }
    }
    if !unknown.is_empty() {
        let quoted: Vec<String> = unknown.iter().map(|id| format!("{id:?}")).collect();
        return Err(Error::new(
            Kind::NotFound,
            format!(
                "no pending, deferred or running task {} for worker {worker}",
                quoted.join(", ")
            ),
        ));
    }
    for (id, place) in found {
        cancel_one(spool, worker, id, place, wait, report);
    }
    Ok(())
}

/// How often a task that moves under a cancel (claimed, deferred, due) is
/// looked for again.
const CANCEL_TRIES: usize = 5;

fn cancel_one(
    spool: &Spool,
    worker: &str,
    id: &str,
    mut place: (Queued, OsString),
    wait: Duration,
    report: &mut dyn FnMut(Outcome),
) {
    let refused = |why: String| Outcome::Refused(format!("{worker} {id}: not cancelled: {why}"));
    for _ in 0..CANCEL_TRIES {
        let (q, name) = &place;
        if *q == Queued::Active {
            return cancel_running(spool, worker, id, wait, report);
        }
        let path = spool.queued_dir(worker, *q);
        let dir = match Dir::open(&path) {
            Ok(d) => Arc::new(d),
            Err(e) => return report(Outcome::Failed(e)),
        };
        match claim::lock(&dir, name) {
            Ok(Attempt::Locked(c)) => return cancel_locked(spool, worker, c, report),
            Ok(Attempt::NotRegular(kind)) => {
                return report(refused(format!(
                    "{} is a {kind}, not a task file (the worker will dead-letter it)",
                    dir.join(name).display()
                )))
            }
            Ok(Attempt::Lost | Attempt::Held) => {}
            Err(e) => return report(Outcome::Failed(e)),
        }
        // Claimed, deferred or released meanwhile: where is it now?
        match find_task(spool, worker, id) {
            Ok(Some(p)) => place = p,
            Ok(None) => return report(refused("it is gone: it ended meanwhile".into())),
            Err(e) => return report(Outcome::Failed(e)),
        }
    }
    report(refused("it keeps moving; try again".into()))
}

/// The task is locked: no worker can claim it. Its dead letter first,
/// then the task file goes; a crash in between leaves both (a duplicate
/// that replay refuses while the task is queued), never neither.
fn cancel_locked(spool: &Spool, worker: &str, mut c: Claim, report: &mut dyn FnMut(Outcome)) {
    let bytes = match c.read(crate::spool::RECORD_MAX) {
        Ok(b) => b,
        Err(Unread::TooLarge) => {
            return report(Outcome::Refused(format!(
            "{worker} {}: not cancelled: too large to be a task (the worker will dead-letter it)",
            c.name.to_string_lossy()
        )))
        }
        Err(Unread::Failed(e)) => return report(Outcome::Failed(e)),
    };
    let task = match Task::parse(&bytes, worker) {
        Ok(t) => t,
        Err(e) => {
            return report(Outcome::Refused(format!(
                "{worker} {}: not cancelled: not a valid task ({}): the worker will dead-letter it",
                c.name.to_string_lossy(),
                e.detail()
            )))
        }
    };
    let record = task_record(&task, DlqReason::Cancelled, Some(CANCELLED_BY));
    let published = crate::spool::create_dir(&spool.dlq_dir(worker))
        .and_then(|()| Dir::open(&spool.dlq_dir(worker)))
        .and_then(|dlq| crate::dlq::publish(&dlq, &task.id, &record, D));
    let dlq_file = match published {
        Ok(f) => f,
        Err(e) => return report(Outcome::Failed(e)),
    };
    // A deferred task may have been moved back to pending meanwhile (the
    // worker does that without a lock); the lock went with the file, so
    // it is still ours: remove it where it is now.
    if !c.is_in_place() {
        if let Ok(pending) = Dir::open_following(&spool.pending_dir(worker)) {
            c.moved_to(Arc::new(pending));
        }
    }
    let folder = c.dir().clone();
    if let Err(e) = c.finish() {
        return report(Outcome::Failed(e));
    }
    let _ = folder.sync(D);
    report(Outcome::Done(Done {
        act: Act::Cancelled,
        worker: worker.to_string(),
        task_id: task.id,
        dlq_file,
        rejected_path: None,
    }));
}

/// How long a cancel waits for the worker to stop a running task: its
/// `--kill-grace` (10 s by default) and then some.
pub const RUNNING_WAIT: Duration = Duration::from_secs(60);

/// A running task: a request the worker watches (`.cancel.<id>` in the
/// tasks folder), then a wait for the dead letter the worker writes once
/// the agent stopped (SIGTERM, SIGKILL after its grace).
fn cancel_running(
    spool: &Spool,
    worker: &str,
    id: &str,
    wait: Duration,
    report: &mut dyn FnMut(Outcome),
) {
    let since = clock::unix_now() - 1.0;
    let pending = spool.pending_dir(worker);
    let request = cancel_request(id);
    let asked = Dir::open_following(&pending).and_then(|d| d.publish(OsStr::new(&request), b"", D));
    if let Err(e) = asked {
        return report(Outcome::Failed(e));
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        match cancelled_record(spool, worker, id, since) {
            Ok(Some(dlq_file)) => {
                return report(Outcome::Done(Done {
                    act: Act::Cancelled,
                    worker: worker.to_string(),
                    task_id: id.to_string(),
                    dlq_file,
                    rejected_path: None,
                }))
            }
            Ok(None) => {}
            Err(e) => return report(Outcome::Failed(e)),
        }
        let running = matches!(find_task(spool, worker, id), Ok(Some((Queued::Active, _))));
        if !running
            && cancelled_record(spool, worker, id, since)
                .ok()
                .flatten()
                .is_none()
        {
            let _ = fs::remove_file(pending.join(&request));
            return report(Outcome::Refused(format!(
                "{worker} {id}: not cancelled: it ended before the worker could stop it"
            )));
        }
        if std::time::Instant::now() >= deadline {
            return report(Outcome::Failed(Error::new(
                Kind::TempFail,
                format!(
                    "{worker} {id}: the worker has not stopped the running task within {}s; the request stays in {}",
                    wait.as_secs_f64(),
                    pending.join(&request).display()
                ),
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The dead letter of `id` that a cancel wrote since `since`, by name.
fn cancelled_record(spool: &Spool, worker: &str, id: &str, since: f64) -> Result<Option<String>> {
    Ok(records(spool, Some(worker))?
        .into_iter()
        .filter(|r| r.task_id == id && r.when >= since)
        .find(|r| {
            r.fields
                .as_ref()
                .and_then(|f| f.get("dlq_reason"))
                .and_then(Value::as_str)
                == Some(DlqReason::Cancelled.as_str())
        })
        .map(|r| r.file_name))
}

/// A cancelled task's `last_error`.
pub const CANCELLED_BY: &str = "cancelled by hw-dlq";
