//! The listener's memory (`STATE_FILE`): what it has seen and emitted, so
//! that each event goes out once, also across restarts. A snapshot is
//! written atomically now and then; between snapshots every change is
//! appended to a journal beside it (`.<state file>.journal`), one JSON line
//! per change, written before the next event goes out (the listener calls
//! `write_journal` first; the changes that one event makes go out in one
//! write). Loading reads the
//! snapshot, then replays the journal. Terminal tasks older than the
//! retention are forgotten, and records older than the horizon are not
//! emitted again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind, Result};
use crate::listen::health::Health;
use crate::model::failure::PauseReason;
use crate::spool::names::{state_journal, state_lock, state_python_copy};
use crate::spool::publish::{json_line, publish, Durability};
use crate::sys::Locked;

/// The largest state file or journal read (a state of a million tasks
/// takes a few hundred MB).
const STATE_MAX: u64 = 1 << 30;

/// A snapshot must be a JSON object (serde would take `[]` for one).
fn parse_snapshot(bytes: &[u8]) -> std::result::Result<Snapshot, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Journal lines before a fresh snapshot is written.
const SNAPSHOT_EVERY: usize = 20_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TaskState {
    /// When the task was first seen pending (its file's mtime), Unix s.
    pub enqueued: Option<f64>,
    pub batch: Option<String>,
    /// The mtime, in nanoseconds, of the result whose event went out (an
    /// integer: a float may not read back equal).
    pub result: Option<u64>,
    /// That result's status.
    pub status: Option<String>,
    /// Dead-letter files whose events went out.
    pub dead_letters: Vec<String>,
    /// A dead letter that no result will follow (not max_retries_exceeded).
    pub dead_lettered: bool,
    pub timed_out: bool,
    /// When it reached its terminal state, Unix s.
    pub ended: Option<f64>,
}

impl TaskState {
    pub fn is_terminal(&self) -> bool {
        self.status.is_some() || self.dead_lettered
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WorkerState {
    pub health: Health,
    /// The instances whose `worker_instance_lost` went out, until their
    /// heartbeat is fresh again or gone.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub lost_instances: BTreeSet<String>,
    /// The pause whose `worker_paused` went out, until `worker_resumed`.
    pub paused: Option<PauseReason>,
    pub completed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BatchState {
    pub emitted: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub version: u32,
    /// Unix s, set when the first catch-up is done (that one emits every
    /// record present); after it, records older than the retention that
    /// the state does not remember are old news.
    pub horizon: Option<f64>,
    /// Keyed `<worker>/<task id>`.
    pub tasks: BTreeMap<String, TaskState>,
    pub batches: BTreeMap<String, BatchState>,
    pub workers: BTreeMap<String, WorkerState>,
}

/// One journal line: the new value of one entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    Task(String, TaskState),
    Batch(String, BatchState),
    Worker(String, WorkerState),
    Horizon(f64),
}

/// A snapshot made from a state file of another format (the Python
/// watcher's; see `python`), with, for the log, whose it was and what it
/// held.
pub struct Imported {
    pub snap: Snapshot,
    pub whose: &'static str,
    pub summary: String,
}

pub struct State {
    pub snap: Snapshot,
    /// Members of each batch, by task key.
    pub members: BTreeMap<String, BTreeSet<String>>,
    path: PathBuf,
    journal_path: PathBuf,
    /// Changes are held here until `write_journal` (or `sync`, or a drop).
    journal: Option<BufWriter<File>>,
    journaled: usize,
    /// Held while this listener uses the state: two would emit twice.
    _lock: Locked,
}

impl State {
    /// Loads the snapshot and replays the journal. A state file that is
    /// not a snapshot is handed to `import`: what it makes of it becomes
    /// the state, written at once, the original kept beside it
    /// (`NAME.python-<unix>`). One that neither can parse is an error
    /// (exit 65): guessing would re-emit or lose events.
    pub fn load(path: &Path, import: impl FnOnce(&[u8]) -> Option<Imported>) -> Result<State> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let journal_path = path.with_file_name(state_journal(&name));
        let lock = lock_state(path)?;
        let mut imported = None;
        let snap = match crate::spool::read_regular(path, STATE_MAX) {
            Ok(bytes) => match parse_snapshot(&bytes) {
                Ok(snap) => snap,
                Err(e) => {
                    let Some(i) = import(&bytes) else {
                        return Err(Error::new(
                            Kind::Data,
                            format!("cannot parse the state file {}: {e}", path.display()),
                        ));
                    };
                    imported = Some((i.whose, i.summary));
                    i.snap
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot {
                version: 1,
                ..Snapshot::default()
            },
            // Not a regular file (a symlink, a FIFO), or too large: bad data.
            Err(e)
                if e.kind() == std::io::ErrorKind::InvalidData
                    || e.raw_os_error() == Some(nix::libc::ELOOP) =>
            {
                return Err(Error::io("cannot use the state file", path, e).with_kind(Kind::Data));
            }
            Err(e) => return Err(Error::io("cannot read", path, e)),
        };
        let mut state = State {
            snap,
            members: BTreeMap::new(),
            path: path.to_path_buf(),
            journal_path,
            journal: None,
            journaled: 0,
            _lock: lock,
        };
        match imported {
            // A journal beside a file of another format is older than that
            // file, which replaced the snapshot it continued: it is not
            // replayed, and `save` removes it.
            Some((whose, summary)) => {
                let kept = keep_original(path)?;
                state.save()?;
                log::info!(state_file = path.display().to_string(), kept = kept.display().to_string();
                    "Imported {whose} state file {} ({summary}); the original is kept as {}",
                    path.display(), kept.display());
            }
            None => state.replay_journal()?,
        }
        for (key, t) in &state.snap.tasks {
            if let Some(b) = &t.batch {
                state
                    .members
                    .entry(b.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        Ok(state)
    }

    fn replay_journal(&mut self) -> Result<()> {
        let bytes = match crate::spool::read_regular(&self.journal_path, STATE_MAX) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("cannot read", &self.journal_path, e)),
        };
        // A torn last line (a crash mid-write) is the only one that can
        // fail to parse: it is skipped.
        for line in BufReader::new(bytes.as_slice()).lines() {
            let Ok(line) = line else { break };
            if let Ok(change) = serde_json::from_str::<Change>(&line) {
                self.apply(change);
            }
        }
        Ok(())
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Task(k, t) => {
                self.snap.tasks.insert(k, t);
            }
            Change::Batch(k, b) => {
                self.snap.batches.insert(k, b);
            }
            Change::Worker(k, w) => {
                self.snap.workers.insert(k, w);
            }
            Change::Horizon(h) => self.snap.horizon = Some(h),
        }
    }

    pub fn set_task(&mut self, key: &str, task: TaskState) -> Result<()> {
        if let Some(b) = &task.batch {
            self.members
                .entry(b.clone())
                .or_default()
                .insert(key.to_string());
        }
        self.record(Change::Task(key.to_string(), task))
    }

    pub fn set_batch(&mut self, id: &str, batch: BatchState) -> Result<()> {
        self.record(Change::Batch(id.to_string(), batch))
    }

    pub fn set_worker(&mut self, name: &str, worker: WorkerState) -> Result<()> {
        self.record(Change::Worker(name.to_string(), worker))
    }

    pub fn set_horizon(&mut self, horizon: f64) -> Result<()> {
        self.record(Change::Horizon(horizon))
    }

    /// Appends the change to the journal, then applies it.
    fn record(&mut self, change: Change) -> Result<()> {
        if self.journal.is_none() {
            crate::spool::create_dir(self.dir())?;
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(&self.journal_path)
                .map_err(|e| Error::io("cannot open", &self.journal_path, e))?;
            self.journal = Some(BufWriter::with_capacity(64 * 1024, file));
        }
        let line = json_line(&change);
        if let Some(j) = self.journal.as_mut() {
            j.write_all(&line)
                .map_err(|e| Error::io("cannot write", &self.journal_path, e))?;
        }
        self.journaled += 1;
        self.apply(change);
        Ok(())
    }

    /// Hands the changes held to the kernel: from then on they survive a
    /// crash of the process (not yet of the machine; see `sync`).
    pub fn write_journal(&mut self) -> Result<()> {
        if let Some(j) = self.journal.as_mut() {
            j.flush()
                .map_err(|e| Error::io("cannot write", &self.journal_path, e))?;
        }
        Ok(())
    }

    /// Makes the journal durable.
    pub fn sync(&mut self) -> Result<()> {
        self.write_journal()?;
        if let Some(j) = &self.journal {
            j.get_ref()
                .sync_data()
                .map_err(|e| Error::io("cannot fsync", &self.journal_path, e))?;
        }
        Ok(())
    }

    /// The journal has grown enough to be folded into a snapshot.
    pub fn wants_snapshot(&self) -> bool {
        self.journaled >= SNAPSHOT_EVERY
    }

    fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// Forgets terminal tasks that ended before `cutoff` (and their
    /// batches); the next `save` makes it so on disk.
    pub fn forget_before(&mut self, cutoff: f64) {
        let old: Vec<String> = self
            .snap
            .tasks
            .iter()
            .filter(|(_, t)| t.is_terminal() && t.ended.is_some_and(|e| e < cutoff))
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            if let Some(b) = self.snap.tasks.remove(&key).and_then(|t| t.batch) {
                if let Some(m) = self.members.get_mut(&b) {
                    m.remove(&key);
                    if m.is_empty() {
                        self.members.remove(&b);
                        self.snap.batches.remove(&b);
                    }
                }
            }
        }
    }

    /// Writes the snapshot atomically and starts an empty journal.
    pub fn save(&mut self) -> Result<()> {
        let dir = self.dir().to_path_buf();
        crate::spool::create_dir(&dir)?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        publish(&dir, &name, &json_line(&self.snap), Durability::Durable)?;
        // The snapshot holds everything the journal said, and what it still
        // held unwritten: that is dropped, not written to a file that goes.
        if let Some(j) = self.journal.take() {
            drop(j.into_parts());
        }
        match fs::remove_file(&self.journal_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", &self.journal_path, e)),
        }
        self.journaled = 0;
        Ok(())
    }
}

/// Keeps the state file of another format as `NAME.python-<unix>` beside
/// it, by a hard link (the very file, its owner and times), or else a
/// copy; durable before the state file is replaced.
fn keep_original(path: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unix = crate::clock::unix_now() as u64;
    let kept_name = state_python_copy(&name, unix);
    let kept = path.with_file_name(&kept_name);
    let dir = kept
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match fs::hard_link(path, &kept) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // The same file, linked by an import that a crash cut short
            // within this second, is kept already; anything else is not
            // ours to replace.
            let same = |p: &Path| fs::metadata(p).map(|m| (m.dev(), m.ino()));
            if same(path).ok() != same(&kept).ok() {
                return Err(Error::io("cannot keep the state file as", &kept, e));
            }
        }
        // No hard links here (some FUSE file systems): a copy.
        Err(_) => {
            let bytes = crate::spool::read_regular(path, STATE_MAX)
                .map_err(|e| Error::io("cannot read", path, e))?;
            publish(dir, &kept_name, &bytes, Durability::Durable)?;
            return Ok(kept);
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot fsync", dir, e))?;
    Ok(kept)
}

/// Takes the lock file beside the state (`.<name>.lock`), or fails with
/// a temporary error (75) naming it when another listener holds it.
fn lock_state(path: &Path) -> Result<Locked> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = path.with_file_name(state_lock(&name));
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::spool::create_dir(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(&lock_path)
        .map_err(|e| Error::io("cannot open", &lock_path, e))?;
    let lock = match Locked::exclusive(file) {
        Ok(lock) => lock,
        Err((file, _)) => {
            let holder = read_holder(&file).map_or_else(String::new, |h| format!(", {h}"));
            return Err(Error::new(
                Kind::TempFail,
                format!(
                    "another hw-listen uses the state file {} (it holds {}{holder})",
                    path.display(),
                    lock_path.display()
                ),
            ));
        }
    };
    // Who holds it, for the next listener's message; best effort.
    let me = format!(
        "pid {} on {}\n",
        std::process::id(),
        crate::model::heartbeat::hostname()
    );
    let _ = lock
        .set_len(0)
        .and_then(|()| lock.write_all_at(me.as_bytes(), 0));
    Ok(lock)
}

/// What the holder of a state lock wrote in it: `pid N on HOST`.
fn read_holder(file: &File) -> Option<String> {
    let mut buf = [0u8; 128];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?.trim();
    text.starts_with("pid ").then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_survives_a_crash_and_snapshot_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = State::load(&path, |_| None).unwrap();
        let t = TaskState {
            status: Some("completed".into()),
            batch: Some("b".into()),
            ..TaskState::default()
        };
        s.set_task("w/a", t.clone()).unwrap();
        s.write_journal().unwrap();
        drop(s); // a crash once the journal is written: no snapshot
        let mut s = State::load(&path, |_| None).unwrap();
        assert_eq!(s.snap.tasks["w/a"], t);
        assert!(s.members["b"].contains("w/a"));
        s.save().unwrap();
        drop(s);
        let s = State::load(&path, |_| None).unwrap();
        assert_eq!(s.snap.tasks["w/a"], t);
        assert!(!dir.path().join(".state.json.journal").exists());
    }

    #[test]
    fn a_second_user_of_the_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let first = State::load(&path, |_| None).unwrap();
        let err = State::load(&path, |_| None)
            .err()
            .expect("the second load must fail");
        assert_eq!(err.kind, Kind::TempFail);
        drop(first);
        assert!(State::load(&path, |_| None).is_ok());
    }
}
