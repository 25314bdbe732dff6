//! hw-enqueue: producing tasks from the shell. Each task is published
//! atomically into `tasks/<worker>/` under its id; ids are generated
//! unique across processes and hosts and sortable by time, or given, and
//! then refused when the id exists anywhere for that worker. Tasks read
//! from a pipe are published in batches: every file of a batch is written,
//! one `syncfs` makes them durable, then each is renamed into place and
//! the folder is synced once, so ten thousand lines cost a handful of
//! flushes instead of twenty thousand.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Map, Value};

use crate::clock;
use crate::error::{Error, Kind, Result};
use crate::model::task::{Priority, Task};
use crate::spool::names::{dead_letter_id, enqueue_staged, task_file, valid_name};
use crate::spool::publish::{json_line, rename_noreplace, sync_dir, sync_filesystem, Durability};
use crate::spool::Spool;

/// hw-enqueue writes nothing it may lose.
const D: Durability = Durability::Durable;

/// What every task of one invocation gets unless its own JSON says otherwise.
#[derive(Debug, Clone, Default)]
pub struct Template {
    pub priority: Option<Priority>,
    /// Seconds.
    pub timeout: Option<f64>,
    pub depends_on: Vec<String>,
    pub meta: Vec<(String, String)>,
    pub batch_id: Option<String>,
    /// Options for the Claude CLI (`model`, `max_turns`…), checked.
    pub agent: Map<String, Value>,
}

impl Template {
    /// Fills the fields a task does not set itself.
    fn apply(&self, fields: &mut Map<String, Value>) {
        if let Some(p) = self.priority {
            fields
                .entry("priority")
                .or_insert_with(|| p.as_str().into());
        }
        if let Some(t) = self.timeout {
            fields.entry("timeout").or_insert_with(|| seconds_value(t));
        }
        if !self.depends_on.is_empty() {
            fields
                .entry("dependencies")
                .or_insert_with(|| self.depends_on.clone().into());
        }
        for (key, value) in &self.agent {
            fields.entry(key).or_insert_with(|| value.clone());
        }
        if self.meta.is_empty() && self.batch_id.is_none() {
            return;
        }
        let metadata = fields
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = metadata {
            for (k, v) in &self.meta {
                m.entry(k.clone()).or_insert_with(|| v.clone().into());
            }
            if let Some(b) = &self.batch_id {
                m.entry("batch_id").or_insert_with(|| b.clone().into());
            }
        }
    }
}

/// Whole seconds as an integer, fractions as a float.
fn seconds_value(t: f64) -> Value {
    if t.fract() == 0.0 && t < 1e15 {
        Value::from(t as u64)
    } else {
        Value::from(t)
    }
}

/// Task ids: `<unix ms, 13 digits>-<8 hex random per process>-<counter,
/// 6 digits>`,
/// unique across processes and hosts, and sortable by time.
pub struct IdGenerator {
    nonce: u32,
    counter: AtomicU32,
}

impl IdGenerator {
    pub fn new() -> IdGenerator {
        let mut bytes = [0u8; 4];
        let random = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        let nonce = match random {
            Ok(()) => u32::from_le_bytes(bytes),
            // No urandom: the pid and the clock's nanoseconds still differ.
            Err(_) => std::process::id() ^ (clock::unix_now().fract() * 1e9) as u32,
        };
        IdGenerator {
            nonce,
            counter: AtomicU32::new(0),
        }
    }

    pub fn next(&self) -> String {
        let ms = clock::unix_millis(clock::unix_now());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{ms:013}-{:08x}-{n:06}", self.nonce)
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

/// A task ready to publish.
#[derive(Debug)]
pub struct Prepared {
    pub id: String,
    pub bytes: Vec<u8>,
}

pub struct Enqueuer<'a> {
    spool: &'a Spool,
    worker: String,
    pending: PathBuf,
    ids: IdGenerator,
    /// Ids of the worker's dead letters, read once when first needed.
    dead_letters: Option<HashSet<String>>,
    /// Given ids of this run (the input must not hold one twice).
    taken: HashSet<String>,
    /// Part of every staging file's name; asked once, not per file.
    pid: u32,
}

impl<'a> Enqueuer<'a> {
    /// Creates the worker's tasks folder if needed.
    pub fn new(spool: &'a Spool, worker: &str) -> Result<Enqueuer<'a>> {
        let pending = spool.pending_dir(worker);
        crate::spool::create_dir(&pending)?;
        Ok(Enqueuer {
            spool,
            worker: worker.to_string(),
            pending,
            ids: IdGenerator::new(),
            dead_letters: None,
            taken: HashSet::new(),
            pid: std::process::id(),
        })
    }

    /// A task from a description; `id` when the caller gave one.
    pub fn from_description(
        &mut self,
        description: &str,
        id: Option<&str>,
        t: &Template,
    ) -> Result<Prepared> {
        let mut fields = Map::new();
        fields.insert(
            "task_id".into(),
            id.map_or_else(|| self.ids.next(), String::from).into(),
        );
        fields.insert("worker".into(), self.worker.clone().into());
        fields.insert("description".into(), description.into());
        t.apply(&mut fields);
        self.prepare(fields, id.is_some())
    }

    /// A task from a JSON object (one line of `--json` input): validated as
    /// the worker validates it, after the template and a generated id fill
    /// what it leaves out.
    pub fn from_json(&mut self, line: &[u8], t: &Template) -> Result<Prepared> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| data(format!("not JSON: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err(data("not a JSON object".into()));
        };
        let given = fields.contains_key("task_id");
        if !given {
            fields.insert("task_id".into(), self.ids.next().into());
        }
        fields
            .entry("worker")
            .or_insert_with(|| self.worker.clone().into());
        t.apply(&mut fields);
        self.prepare(fields, given)
    }

    fn prepare(&mut self, fields: Map<String, Value>, check_unique: bool) -> Result<Prepared> {
        let bytes = json_line(&fields);
        let task = Task::parse(&bytes, &self.worker).map_err(|e| data(e.detail().to_string()))?;
        // A generated id is new by construction; a given one is looked up.
        if check_unique {
            self.refuse_existing(&task.id)?;
            self.taken.insert(task.id.clone());
        }
        Ok(Prepared { id: task.id, bytes })
    }

    /// Exit 73 when the id exists anywhere for this worker: pending,
    /// active, deferred, as a result or as a dead letter.
    pub fn refuse_existing(&mut self, id: &str) -> Result<()> {
        let s = self.spool;
        let w = self.worker.clone();
        let w = &w;
        let name = task_file(id);
        let places = [
            s.pending_dir(w).join(&name),
            s.active_dir(w).join(&name),
            s.deferred_dir(w).join(&name),
            s.result_path(w, id),
        ];
        let found = places.iter().find(|p| fs::symlink_metadata(p).is_ok());
        let exists = |what: String| {
            Error::new(
                Kind::CannotCreate,
                format!("task id {id:?} exists for {w}: {what}"),
            )
        };
        if let Some(p) = found {
            return Err(exists(p.display().to_string()));
        }
        if self.taken.contains(id) {
            return Err(exists("given twice in this input".into()));
        }
        if self.dead_letter_ids().contains(id) {
            return Err(exists(format!(
                "a dead letter in {}",
                s.dlq_dir(w).display()
            )));
        }
        Ok(())
    }

    fn dead_letter_ids(&mut self) -> &HashSet<String> {
        let dir = self.spool.dlq_dir(&self.worker);
        self.dead_letters.get_or_insert_with(|| {
            fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter_map(|n| dead_letter_id(&n).map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Publishes a batch: write every file, one syncfs, rename each into
    /// place (never replacing anything), one fsync of the folder. Returns
    /// the ids published, in order; on an error, the ids published before
    /// it come with it.
    pub fn publish(
        &mut self,
        batch: Vec<Prepared>,
    ) -> std::result::Result<Vec<String>, (Vec<String>, Error)> {
        let mut staged = Vec::with_capacity(batch.len());
        for p in batch {
            match self.stage(&p) {
                Ok(tmp) => staged.push((p.id, tmp)),
                Err(e) => return Err(self.abandon(staged, e)),
            }
        }
        if !staged.is_empty() {
            if let Err(e) = sync_filesystem(&self.pending, D) {
                return Err(self.abandon(staged, e));
            }
        }
        let mut done = Vec::with_capacity(staged.len());
        let mut rest = staged.into_iter();
        for (id, tmp) in rest.by_ref() {
            let target = self.pending.join(task_file(&id));
            if let Err(e) = rename_noreplace(&tmp, &target) {
                let _ = fs::remove_file(&tmp);
                let err = Error::io2("cannot publish", &tmp, &target, e);
                for (_, t) in rest {
                    let _ = fs::remove_file(t);
                }
                let _ = sync_dir(&self.pending, D);
                return Err((done, err));
            }
            done.push(id);
        }
        if !done.is_empty() {
            sync_dir(&self.pending, D).map_err(|e| (done.clone(), e))?;
        }
        Ok(done)
    }

    fn stage(&self, p: &Prepared) -> Result<PathBuf> {
        let tmp = self.pending.join(enqueue_staged(&p.id, self.pid));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)
            // Not created, so not ours to remove (another host's, say).
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        file.write_all(&p.bytes).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("cannot write", &tmp, e)
        })?;
        Ok(tmp)
    }

    fn abandon(&self, staged: Vec<(String, PathBuf)>, e: Error) -> (Vec<String>, Error) {
        for (_, tmp) in staged {
            let _ = fs::remove_file(tmp);
        }
        (Vec::new(), e)
    }
}

fn data(message: String) -> Error {
    Error::new(Kind::Data, message)
}

/// A task id given on the command line (`--id`, `--depends-on`).
pub fn check_id(id: &str) -> Result<()> {
    if valid_name(id) {
        Ok(())
    } else {
        Err(data(format!(
            "invalid task id {id:?}: up to 128 letters, digits, '.', '_' and '-', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_name_taken_by_someone_else_fails_the_batch_and_stays() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::at(root.path());
        let mut e = Enqueuer::new(&spool, "marie").unwrap();
        let t = Template::default();
        let batch: Vec<Prepared> = (0..3)
            .map(|i| e.from_description(&format!("task {i}"), None, &t).unwrap())
            .collect();
        let blocker = enqueue_staged(&batch[1].id, std::process::id());
        fs::write(e.pending.join(&blocker), b"theirs").unwrap();
        let (published, err) = e.publish(batch).unwrap_err();
        assert!(published.is_empty(), "{published:?}");
        assert!(err.to_string().contains("cannot write"), "{err}");
        let left: Vec<String> = fs::read_dir(&e.pending)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, std::slice::from_ref(&blocker));
        assert_eq!(fs::read(e.pending.join(&blocker)).unwrap(), b"theirs");
    }

    #[test]
    fn generated_ids_are_valid_unique_and_sorted() {
        let g = IdGenerator::new();
        let ids: Vec<String> = (0..1000).map(|_| g.next()).collect();
        assert!(ids.iter().all(|i| valid_name(i)));
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
    }

    #[test]
    fn template_fills_only_what_is_missing() {
        let t = Template {
            priority: Some(Priority::High),
            timeout: Some(600.0),
            meta: vec![("k".into(), "v".into())],
            batch_id: Some("b1".into()),
            ..Template::default()
        };
        let mut fields = Map::new();
        fields.insert("priority".into(), "low".into());
        t.apply(&mut fields);
        assert_eq!(fields["priority"], "low");
        assert_eq!(fields["timeout"], 600);
        assert_eq!(fields["metadata"]["batch_id"], "b1");
        assert_eq!(fields["metadata"]["k"], "v");
    }
}
