//! hw-dlq: the dead-letter queue for operators and cron. Reads the records
//! of `dlq/<worker>/` (hookwatch(5), Dead letter; hw-dlq(1)), filters them,
//! shows them, replays a record's task back to pending, and purges records
//! with the entries they moved aside into `.rejected/` (`cancel` is its
//! own module).
//!
//! A replay publishes the task first and removes the record after, so a
//! crash in between leaves a duplicate, never a loss; a cancel, the other
//! way round, publishes the dead letter first and removes the task after.
//! Each record is locked (flock, as a claim) while it is replayed or
//! purged, so two operators never act on one file twice; a worker never
//! locks records, and only ever adds new ones.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::cli::values::{invalid, invalid_worker_name, parse_duration};
use crate::clock;
use crate::error::{Error, Kind, Result};
use crate::model::dead_letter::DlqReason;
use crate::model::task::Task;
use crate::model::Word;
use crate::spool::claim::{self, Attempt, Claim, Unread};
use crate::spool::dir::Dir;
use crate::spool::names::{
    is_task_file, json_stem, task_file, valid_name, valid_worker_name, Numbered,
};
use crate::spool::publish::{self, Durability};
use crate::spool::Spool;

/// hw-dlq writes nothing it may lose.
const D: Durability = Durability::Durable;

/// What a dead letter adds to a task, dropped again by a replay (the task
/// starts over: no attempts counted, no schedule, no error).
const DEAD_LETTER_FIELDS: [&str; 6] = [
    "dlq_reason",
    "dlq_timestamp",
    "error",
    "last_error",
    "not_before",
    "retry_count",
];

/// The widest ERROR cell of the table, in characters.
const ERROR_WIDTH: usize = 60;

/// A record larger than this is listed but not parsed (a worker's largest
/// is a task of `--max-task-bytes` in base64).
pub(crate) const MAX_RECORD_BYTES: u64 = 64 << 20;

/// One dead letter as found in `dlq/<worker>/`.
#[derive(Debug, Clone)]
pub struct Record {
    pub worker: String,
    /// The record's file name, `<stem>_<unix>[-n].json`.
    pub file_name: String,
    /// Its `task_id` when that is a valid name, else the file name's stem.
    pub task_id: String,
    /// Its fields; `None` when it is not a JSON object.
    pub fields: Option<Map<String, Value>>,
    /// When it was dead-lettered (Unix seconds): `dlq_timestamp`, else the
    /// file's modification time.
    pub when: f64,
    pub path: PathBuf,
    /// The file name's seconds and clash number: larger is newer.
    order: (u64, u32),
}

impl Record {
    fn new(
        worker: &str,
        file_name: &str,
        path: PathBuf,
        bytes: Option<&[u8]>,
        mtime: f64,
    ) -> Record {
        let fields = match bytes.map(serde_json::from_slice::<Value>) {
            Some(Ok(Value::Object(map))) => Some(map),
            _ => None,
        };
        let name = Numbered::parse(file_name);
        let stem = match name {
            Some(n) => n.stem,
            None => json_stem(file_name).unwrap_or(file_name),
        };
        let field = |key: &str| fields.as_ref()?.get(key)?.as_str();
        let task_id = field("task_id").filter(|id| valid_name(id)).unwrap_or(stem);
        let when = field("dlq_timestamp")
            .and_then(clock::parse_rfc3339)
            .unwrap_or(mtime);
        Record {
            worker: worker.to_string(),
            file_name: file_name.to_string(),
            task_id: task_id.to_string(),
            order: name.map_or((mtime.max(0.0) as u64, 0), |n| (n.time, n.n)),
            fields,
            when,
            path,
        }
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.fields.as_ref()?.get(key)?.as_str()
    }

    pub fn reason(&self) -> Option<&str> {
        self.text("dlq_reason")
    }

    /// The reason, when it is one hookwatch writes.
    fn known_reason(&self) -> Option<DlqReason> {
        self.reason().and_then(DlqReason::parse)
    }

    pub fn last_error(&self) -> Option<&str> {
        self.text("last_error")
    }

    /// A record of a bad entry, which holds no task.
    pub fn is_bad_entry(&self) -> bool {
        self.known_reason().is_some_and(DlqReason::is_bad_entry)
    }

    /// Attempts made: `retry_count` + 1 after the last retry failed, else
    /// `retry_count` (the failed attempts before it was dead-lettered; 0
    /// for a task that never ran).
    pub fn attempts(&self) -> Option<u64> {
        let retries = self.fields.as_ref()?.get("retry_count")?.as_u64()?;
        match self.known_reason() {
            Some(r) if r.has_result() => retries.checked_add(1),
            _ => Some(retries),
        }
    }

    /// The record plus `worker` and `dlq_file`, as one JSON line (no
    /// newline).
    pub fn json_line(&self) -> String {
        let mut map = self.fields.clone().unwrap_or_default();
        map.insert("worker".into(), self.worker.clone().into());
        map.insert("dlq_file".into(), self.file_name.clone().into());
        Value::Object(map).to_string()
    }
}

/// `--reason` and `--older-than`; they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    reason: Option<String>,
    older_than: Option<Duration>,
}

impl Filter {
    /// The filters from their raw values; a bad value names its flag (78).
    pub fn parse(reason: Option<&str>, older_than: Option<&str>) -> Result<Filter> {
        if reason == Some("") {
            return Err(invalid("", "--reason", "empty"));
        }
        let older_than = match older_than {
            None => None,
            Some(raw) => Some(parse_duration(raw).ok_or_else(|| {
                invalid(
                    raw,
                    "--older-than",
                    "not a duration (seconds, or with s, m, h or d)",
                )
            })?),
        };
        Ok(Filter {
            reason: reason.map(String::from),
            older_than,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.reason.is_none() && self.older_than.is_none()
    }

    /// `dlq_reason` is the reason, or `last_error` starts with it (so
    /// `timeout` selects tasks whose last attempt timed out); and it was
    /// dead-lettered at least `older_than` before `now`.
    pub fn matches(&self, record: &Record, now: f64) -> bool {
        let reason = self.reason.as_deref().map_or(true, |want| {
            record.reason() == Some(want)
                || record.last_error().is_some_and(|e| e.starts_with(want))
        });
        let age = self
            .older_than
            .map_or(true, |d| now - record.when >= d.as_secs_f64());
        reason && age
    }
}

/// What `replay` and `purge` act on: `[WORKER [ID...]]`, `--all`, filters.
#[derive(Debug, Clone)]
pub struct Selection {
    worker: Option<String>,
    ids: Vec<String>,
    filter: Filter,
}

impl Selection {
    /// The operands (a worker, then IDs), `--all` and the filters. Something
    /// must be asked for (IDs, `--all` or a filter), so that a bare command
    /// never acts on every dead letter by accident.
    pub fn new(operands: &[String], all: bool, filter: Filter) -> Result<Selection> {
        let worker = operands.first().cloned();
        if let Some(w) = &worker {
            check_worker(w)?;
        }
        let ids = operands.iter().skip(1).cloned().collect::<Vec<_>>();
        if all && !ids.is_empty() {
            return Err(Error::usage(
                "--all and IDs exclude each other (see --help)",
            ));
        }
        if !all && ids.is_empty() && filter.is_empty() {
            return Err(Error::usage(
                "name IDs, or select with --all, --reason or --older-than (see --help)",
            ));
        }
        Ok(Selection {
            worker,
            ids,
            filter,
        })
    }
}

/// A worker named on the command line: a usage error when it is not a
/// valid worker name.
pub fn check_worker(name: &str) -> Result<()> {
    match valid_worker_name(name) {
        true => Ok(()),
        false => Err(Error::usage(invalid_worker_name(name))),
    }
}

/// The records of `worker`, or of every worker with a DLQ folder, sorted
/// by worker, then by when they were dead-lettered. A worker without a
/// folder has none.
pub fn records(spool: &Spool, worker: Option<&str>) -> Result<Vec<Record>> {
    let workers = match worker {
        Some(w) => vec![w.to_string()],
        None => spool.dlq_worker_names()?,
    };
    let mut all = Vec::new();
    for w in &workers {
        read_worker(spool, w, &mut all)?;
    }
    all.sort_by(|a, b| {
        a.worker
            .cmp(&b.worker)
            .then(a.when.total_cmp(&b.when))
            .then(a.order.cmp(&b.order))
            .then(a.file_name.cmp(&b.file_name))
    });
    Ok(all)
}

/// Every regular `*.json` file (not a dot-file) of one worker's DLQ folder.
fn read_worker(spool: &Spool, worker: &str, out: &mut Vec<Record>) -> Result<()> {
    let dir = spool.dlq_dir(worker);
    // A worker's DLQ folder that is a symlink leads outside the spool.
    if fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
        let why = io::Error::new(io::ErrorKind::InvalidData, "not a folder (a symlink?)");
        return Err(Error::io("refusing", &dir, why));
    }
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if crate::error::vanished(&e) => return Ok(()),
        Err(e) => return Err(Error::io("cannot list", &dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("cannot list", &dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| is_task_file(OsStr::new(n))) else {
            continue;
        };
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) if crate::error::vanished(&e) => continue,
            Err(e) => return Err(Error::io("cannot stat", &path, e)),
        };
        let bytes = match read_limited(&path) {
            Ok(b) => b,
            Err(e) if crate::error::vanished(&e) => continue,
            Err(e) => return Err(Error::io("cannot read", &path, e)),
        };
        let mtime = meta.modified().map_or(0.0, clock::to_unix);
        out.push(Record::new(worker, name, path, bytes.as_deref(), mtime));
    }
    Ok(())
}

/// The file's content, or `None` when it is larger than a record can be.
fn read_limited(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_RECORD_BYTES).then_some(bytes))
}

/// The records an ID names among one worker's: the record of that file
/// name, else every record of that task id, oldest first.
fn named<'a>(records: &'a [Record], id: &str) -> Vec<&'a Record> {
    if let Some(r) = records.iter().find(|r| r.file_name == id) {
        return vec![r];
    }
    let mut of_task: Vec<&Record> = records.iter().filter(|r| r.task_id == id).collect();
    of_task.sort_by(|a, b| (a.order, &a.file_name).cmp(&(b.order, &b.file_name)));
    of_task
}

/// `hw-dlq list`: the records the filter selects.
pub fn list(spool: &Spool, worker: Option<&str>, filter: &Filter) -> Result<Vec<Record>> {
    if let Some(w) = worker {
        check_worker(w)?;
    }
    let now = clock::unix_now();
    let mut all = records(spool, worker)?;
    all.retain(|r| filter.matches(r, now));
    Ok(all)
}

/// `hw-dlq show`: the record an ID names (the newest of a task's), as
/// pretty JSON with a final newline.
pub fn show(spool: &Spool, worker: &str, id: &str) -> Result<String> {
    check_worker(worker)?;
    let all = records(spool, Some(worker))?;
    let Some(record) = named(&all, id).pop() else {
        return Err(not_found(worker, &[id]));
    };
    let Some(fields) = &record.fields else {
        return Err(Error::new(
            Kind::Data,
            format!("dead letter {} is not a JSON object", record.path.display()),
        ));
    };
    let text = serde_json::to_string_pretty(fields).expect("JSON values always serialize");
    Ok(text + "\n")
}

fn not_found(worker: &str, ids: &[&str]) -> Error {
    let quoted: Vec<String> = ids.iter().map(|id| format!("{id:?}")).collect();
    let letters = if ids.len() == 1 { "letter" } else { "letters" };
    Error::new(
        Kind::NotFound,
        format!(
            "no dead {letters} {} for worker {worker}",
            quoted.join(", ")
        ),
    )
}

/// The table of `hw-dlq list`: a header and one row per record, columns
/// separated by two spaces; empty when there are no records.
pub fn render_table(records: &[Record]) -> String {
    if records.is_empty() {
        return String::new();
    }
    let header = ["WORKER", "ID", "REASON", "WHEN", "ATTEMPTS", "ERROR"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in records {
        let or_dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).map_or("-".into(), cell);
        rows.push(vec![
            cell(&r.worker),
            cell(&r.task_id),
            or_dash(r.reason()),
            or_dash(r.text("dlq_timestamp")),
            r.attempts().map_or("-".into(), |n| n.to_string()),
            or_dash(
                r.last_error()
                    .and_then(|e| e.lines().next())
                    .map(cut)
                    .as_deref(),
            ),
        ]);
    }
    crate::cli::table::aligned(&rows)
}

/// A table cell: control characters (a terminal's escapes) shown as `?`.
fn cell(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// At most `ERROR_WIDTH` characters, `...` marking a cut.
fn cut(s: &str) -> String {
    match s.char_indices().nth(ERROR_WIDTH) {
        None => s.to_string(),
        Some(_) => {
            let keep: String = s.chars().take(ERROR_WIDTH - 3).collect();
            format!("{keep}...")
        }
    }
}

/// What became of one selected record in `replay` or `purge`.
#[derive(Debug)]
pub enum Outcome {
    /// Replayed or purged (a line on stdout).
    Done(Done),
    /// Not acted on, and why: it cannot be, or should not be (exit 1).
    Refused(String),
    /// An I/O error on this record; the others go on (exit 74).
    Failed(Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Replayed,
    Purged,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Done {
    pub act: Act,
    pub worker: String,
    pub task_id: String,
    pub dlq_file: String,
    /// The `.rejected/` entry a purge removed with the record.
    pub rejected_path: Option<String>,
}

impl Done {
    /// `<worker> <id>` for a replay or a cancel, `<worker> <dlq_file>` for
    /// a purge, or
    /// a JSON object with `worker`, `task_id`, `dlq_file` (and
    /// `rejected_path` when an entry was removed); no newline.
    pub fn line(&self, json: bool) -> String {
        if json {
            let mut map = Map::new();
            map.insert("worker".into(), self.worker.clone().into());
            map.insert("task_id".into(), self.task_id.clone().into());
            map.insert("dlq_file".into(), self.dlq_file.clone().into());
            if let Some(p) = &self.rejected_path {
                map.insert("rejected_path".into(), p.clone().into());
            }
            return Value::Object(map).to_string();
        }
        match self.act {
            Act::Replayed | Act::Cancelled => format!("{} {}", self.worker, self.task_id),
            Act::Purged => format!("{} {}", self.worker, self.dlq_file),
        }
    }
}

/// The selected records: those the IDs name (every ID must name one;
/// `newest` keeps only the newest record of a task named by its id), or
/// all of them, then those the filter lets through. Nothing is acted on
/// when an ID is unknown.
fn select(spool: &Spool, sel: &Selection, newest: bool) -> Result<Vec<Record>> {
    let all = records(spool, sel.worker.as_deref())?;
    let now = clock::unix_now();
    let chosen = match (&sel.worker, sel.ids.is_empty()) {
        (Some(worker), false) => {
            let mut picked = BTreeSet::new();
            let mut unknown = Vec::new();
            for id in &sel.ids {
                let mut found = named(&all, id);
                if newest {
                    found = found.split_off(found.len().saturating_sub(1));
                }
                if found.is_empty() {
                    unknown.push(id.as_str());
                }
                picked.extend(found.into_iter().map(|r| r.file_name.clone()));
            }
            if !unknown.is_empty() {
                return Err(not_found(worker, &unknown));
            }
            all.into_iter()
                .filter(|r| picked.contains(&r.file_name))
                .collect()
        }
        _ => all,
    };
    Ok(chosen
        .into_iter()
        .filter(|r| sel.filter.matches(r, now))
        .collect())
}

/// `hw-dlq replay`: each selected record's task back to pending, in list
/// order. A task can be pending only once: of several selected records of
/// one task, the newest is replayed and the others refused.
pub fn replay(spool: &Spool, sel: &Selection, report: &mut dyn FnMut(Outcome)) -> Result<()> {
    let chosen = select(spool, sel, true)?;
    let mut newest: HashMap<(&str, &str), &Record> = HashMap::new();
    for r in &chosen {
        let slot = newest.entry((&r.worker, &r.task_id)).or_insert(r);
        if (r.order, &r.file_name) > (slot.order, &slot.file_name) {
            *slot = r;
        }
    }
    for r in &chosen {
        let latest = newest[&(r.worker.as_str(), r.task_id.as_str())];
        if latest.file_name != r.file_name {
            report(refused(
                r,
                "not replayed",
                &format!(
                    "{} is a newer dead letter of the same task",
                    latest.file_name
                ),
            ));
            continue;
        }
        replay_one(spool, r, report);
    }
    Ok(())
}

fn refused(r: &Record, what: &str, why: &str) -> Outcome {
    Outcome::Refused(format!("{} {}: {what}: {why}", r.worker, r.file_name))
}

/// Locks a record for acting on it; `None` when it is gone or another
/// hw-dlq holds it (that one acts on it: skip quietly).
fn lock(spool: &Spool, r: &Record) -> std::result::Result<Option<Claim>, Error> {
    let dir = Arc::new(Dir::open(&spool.dlq_dir(&r.worker))?);
    match claim::lock(&dir, OsStr::new(&r.file_name))? {
        Attempt::Locked(c) => Ok(Some(c)),
        Attempt::Lost | Attempt::Held | Attempt::NotRegular(_) => Ok(None),
    }
}

/// A locked record's content, bounded like every record read.
fn read_record(record: &mut Claim) -> std::result::Result<Vec<u8>, Error> {
    record.read(MAX_RECORD_BYTES).map_err(|e| match e {
        Unread::Failed(e) => e,
        Unread::TooLarge => Error::new(
            Kind::Data,
            format!(
                "dead letter {} is larger than {MAX_RECORD_BYTES} bytes",
                record.path().display()
            ),
        ),
    })
}

/// The record locked and read; `None` when it went meanwhile.
fn lock_and_read(
    spool: &Spool,
    r: &Record,
) -> std::result::Result<Option<(Claim, Vec<u8>)>, Error> {
    let Some(mut record) = lock(spool, r)? else {
        return Ok(None);
    };
    let bytes = read_record(&mut record)?;
    Ok(Some((record, bytes)))
}

fn replay_one(spool: &Spool, r: &Record, report: &mut dyn FnMut(Outcome)) {
    let (record, bytes) = match lock_and_read(spool, r) {
        Ok(Some(locked)) => locked,
        Ok(None) => return,
        Err(e) => return report(Outcome::Failed(e)),
    };
    let task = match task_of(&bytes, &r.worker) {
        Ok(t) => t,
        Err(why) => return report(refused(r, "not replayed", &why)),
    };
    let states = ["pending", "active", "deferred"];
    for (path, state) in spool.queued_paths(&r.worker, &task.id).iter().zip(states) {
        if fs::symlink_metadata(path).is_ok() {
            let why = format!("task {} is already {state}", task.id);
            return report(refused(r, "not replayed", &why));
        }
    }
    let dir = spool.pending_dir(&r.worker);
    let published = crate::spool::create_dir(&dir)
        .and_then(|()| publish::publish_new(&dir, &task_file(&task.id), &task.to_json(), D));
    match published {
        Ok(_) => {}
        Err(e) if e.kind == Kind::CannotCreate => {
            let why = format!("task {} is already pending", task.id);
            return report(refused(r, "not replayed", &why));
        }
        Err(e) => return report(Outcome::Failed(e)),
    }
    // The task is pending again, durably; only now does the record go.
    report(Outcome::Done(Done {
        act: Act::Replayed,
        worker: r.worker.clone(),
        task_id: task.id.clone(),
        dlq_file: r.file_name.clone(),
        rejected_path: None,
    }));
    match record.finish() {
        // Best effort: a record that comes back after a crash is a
        // duplicate, which a later replay refuses while the task is queued.
        Ok(()) => drop(publish::sync_dir(&spool.dlq_dir(&r.worker), D)),
        Err(e) => report(Outcome::Failed(e)),
    }
}

/// The task a record holds, as it goes back to pending: its own fields,
/// without what the dead letter added, plus `replayed_at` and
/// `replay_count`. Checked as the worker will check it.
fn task_of(bytes: &[u8], worker: &str) -> std::result::Result<Task, String> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(bytes) else {
        return Err("the record is not a JSON object".into());
    };
    if let Some(reason) = fields
        .get("dlq_reason")
        .and_then(Value::as_str)
        .and_then(DlqReason::parse)
        .filter(|r| r.is_bad_entry())
    {
        return Err(format!("a bad entry ({reason}) holds no task"));
    }
    for key in DEAD_LETTER_FIELDS {
        fields.remove(key);
    }
    let replays = fields
        .get("replay_count")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    fields.insert("replay_count".into(), replays.saturating_add(1).into());
    fields.insert("replayed_at".into(), clock::now_rfc3339().into());
    Task::parse(&publish::json_line(&fields), worker)
        .map_err(|e| format!("not a valid task: {}", e.detail()))
}

/// `hw-dlq purge`: removes each selected record and the `.rejected/` entry
/// it names.
pub fn purge(spool: &Spool, sel: &Selection, report: &mut dyn FnMut(Outcome)) -> Result<()> {
    for r in &select(spool, sel, false)? {
        purge_one(spool, r, report);
    }
    Ok(())
}

fn purge_one(spool: &Spool, r: &Record, report: &mut dyn FnMut(Outcome)) {
    let (record, bytes) = match lock_and_read(spool, r) {
        Ok(Some(locked)) => locked,
        Ok(None) => return,
        Err(e) => return report(Outcome::Failed(e)),
    };
    let field = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("rejected_path").cloned());
    let rejected = match field {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => match spool.rejected_entry(&r.worker, &p) {
            Some(path) => Some((p, path)),
            None => {
                let why = format!("rejected_path {p:?} is not an entry of .rejected/");
                return report(refused(r, "not purged", &why));
            }
        },
        Some(_) => return report(refused(r, "not purged", "rejected_path is not a string")),
    };
    // The entry first: a crash in between leaves a record that names a
    // missing entry, never an entry that no record names.
    if let Some((_, path)) = &rejected {
        if let Err(e) = remove_entry(path) {
            return report(Outcome::Failed(e));
        }
        let _ = publish::sync_dir(&spool.rejected_dir(&r.worker), D);
    }
    if let Err(e) = record.finish() {
        return report(Outcome::Failed(e));
    }
    let _ = publish::sync_dir(&spool.dlq_dir(&r.worker), D);
    report(Outcome::Done(Done {
        act: Act::Purged,
        worker: r.worker.clone(),
        task_id: r.task_id.clone(),
        dlq_file: r.file_name.clone(),
        rejected_path: rejected.map(|(p, _)| p),
    }));
}

/// Removes a moved-aside entry as it is: a folder with what it holds,
/// anything else (file, symlink, FIFO, socket) without following it.
fn remove_entry(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Err(e) if crate::error::vanished(&e) => return Ok(()),
        Err(e) => return Err(Error::io("cannot stat", path, e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    match removed {
        Err(e) if !crate::error::vanished(&e) => Err(Error::io("cannot remove", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str, file_name: &str) -> Record {
        Record::new(
            "w",
            file_name,
            PathBuf::from(file_name),
            Some(json.as_bytes()),
            5.0,
        )
    }

    #[test]
    fn a_record_is_named_by_its_task_id_else_its_stem() {
        assert_eq!(record(r#"{"task_id":"a"}"#, "x_1.json").task_id, "a");
        assert_eq!(record(r#"{"task_id":"../a"}"#, "x_1.json").task_id, "x");
        assert_eq!(record("not json", "y_b_1-2.json").task_id, "y_b");
        assert_eq!(record("{}", "odd.json").task_id, "odd");
    }

    #[test]
    fn attempts_count_the_last_one_only_after_max_retries() {
        let r = |reason: &str, n: u32| {
            record(
                &format!(r#"{{"dlq_reason":"{reason}","retry_count":{n}}}"#),
                "t_1.json",
            )
        };
        assert_eq!(r("max_retries_exceeded", 2).attempts(), Some(3));
        assert_eq!(r("dependency_failed", 0).attempts(), Some(0));
        assert_eq!(r("invalid_json", 0).attempts(), Some(0));
    }

    #[test]
    fn when_falls_back_to_the_mtime() {
        let r = record(r#"{"dlq_timestamp":"1970-01-01T00:00:10Z"}"#, "t_1.json");
        assert_eq!(r.when, 10.0);
        assert_eq!(record("{}", "t_1.json").when, 5.0);
    }

    #[test]
    fn reason_filter_matches_reason_or_last_error_prefix() {
        let f = Filter::parse(Some("timeout"), None).unwrap();
        let r = |j: &str| record(j, "t_1.json");
        assert!(f.matches(&r(r#"{"dlq_reason":"timeout"}"#), 0.0));
        assert!(f.matches(
            &r(r#"{"dlq_reason":"max_retries_exceeded","last_error":"timeout"}"#),
            0.0
        ));
        assert!(!f.matches(
            &r(r#"{"dlq_reason":"max_retries_exceeded","last_error":"exit status 1"}"#),
            0.0
        ));
        assert!(!f.matches(&r("{}"), 0.0));
    }

    #[test]
    fn bad_filter_values_are_config_errors() {
        let e = Filter::parse(None, Some("abc")).unwrap_err();
        assert_eq!(e.kind, Kind::Config);
        assert!(e.to_string().contains("--older-than"));
        assert_eq!(
            Filter::parse(Some(""), None).unwrap_err().kind,
            Kind::Config
        );
    }

    #[test]
    fn a_bare_selection_is_a_usage_error() {
        let none = Filter::default();
        let e = Selection::new(&[], false, none.clone()).unwrap_err();
        assert_eq!(e.kind, Kind::Usage);
        let e = Selection::new(&["w".into()], false, none.clone()).unwrap_err();
        assert_eq!(e.kind, Kind::Usage);
        let e = Selection::new(&["w".into(), "a".into()], true, none.clone()).unwrap_err();
        assert_eq!(e.kind, Kind::Usage);
        assert!(Selection::new(&[], true, none).is_ok());
    }

    #[test]
    fn long_errors_are_cut() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(80);
        assert_eq!(cut(&long).chars().count(), ERROR_WIDTH);
        assert!(cut(&long).ends_with("..."));
    }

    #[test]
    fn replayed_tasks_lose_the_dead_letter_fields() {
        let t = task_of(
            br#"{"task_id":"a","description":"d","dlq_reason":"max_retries_exceeded",
                "dlq_timestamp":"x","retry_count":3,"last_error":"timeout","replay_count":1,"x":2}"#,
            "w",
        )
        .unwrap();
        assert_eq!(t.retry_count, 0);
        for gone in DEAD_LETTER_FIELDS {
            assert!(!t.fields.contains_key(gone), "{gone}");
        }
        assert_eq!(t.fields["replay_count"], 2);
        assert_eq!(t.fields["x"], 2);
        assert!(t.fields["replayed_at"].is_string());
        assert!(task_of(br#"{"dlq_reason":"invalid_json","original":"{"}"#, "w").is_err());
        assert!(task_of(br#"{"task_id":"a","description":"d","worker":"v"}"#, "w").is_err());
    }
}
