//! `hw-status --prune-older-than AGE`: retention, from cron. Removes the
//! results (`results/<worker>/<id>.json`), the receipts
//! (`triggers/<worker>/<id>.trigger`) and the listener's trigger files
//! (`triggers/orchestrator/*.json`) and the heartbeats of dead instances
//! (`heartbeats/<worker>@<instance>.json`, whose lock no process holds)
//! last modified more than AGE ago, but
//! never a result that a pending or deferred task depends on (the worker
//! would wait for it for ever), nor, when the listener's state file
//! exists, a result whose event the listener has not emitted yet.
//!
//! Each worker's folder is opened once without following a symlink
//! (`O_NOFOLLOW|O_DIRECTORY`), and every look and every removal goes
//! through that descriptor (`fstatat`, `unlinkat`), so a folder swapped
//! for a symlink cannot make it remove anything outside the spool.
//!
//! The listener's state is read here, read-only, in the format
//! `listen::state` writes (hookwatch(5), Listener state): the snapshot,
//! then the journal beside it, one change per line.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde_json::Value;

use crate::clock;
use crate::error::{Error, Kind, Result};
use crate::spool::names::{heartbeat_instance, instance_lock, json_stem, result_id, state_journal};
use crate::spool::{read_regular, task_names, Queued, Spool, RECORD_MAX};

/// hw-listen's default `--retain`: a result its state does not remember
/// and older than this was emitted and forgotten (or is too old for it to
/// emit again).
pub const LISTEN_RETAIN: Duration = Duration::from_secs(7 * 86_400);

/// The largest listener state or journal read (as the listener's own cap).
const STATE_MAX: u64 = 1 << 30;

/// What a prune did besides the removals it reported.
#[derive(Debug, Default)]
pub struct Summary {
    /// Old results kept because a pending or deferred task depends on them.
    pub kept_for_dependencies: usize,
    /// Old results kept because the listener has not emitted them yet.
    pub kept_for_listener: usize,
    /// Files or folders that could not be looked at or removed.
    pub errors: Vec<Error>,
}

/// Removes what is older than `age`; `removed` hears each path removed,
/// as it goes. Fails before removing anything when the listener's state
/// exists but cannot be read.
pub fn prune(spool: &Spool, age: Duration, removed: &mut dyn FnMut(&Path)) -> Result<Summary> {
    let now = clock::unix_now();
    let cutoff = now - age.as_secs_f64();
    let listener = ListenerState::load(&spool.state_file)?;
    let mut summary = Summary::default();
    let needed = dependencies(spool, &mut summary.errors)?;

    for worker in spool.result_worker_names()? {
        let dir = spool.result_dir(&worker);
        let keep = |name: &str, mtime_ns: u64, summary: &mut Summary| {
            let Some(id) = result_id(name) else {
                return true;
            };
            if needed.contains(id) {
                summary.kept_for_dependencies += 1;
                return true;
            }
            let key = format!("{worker}/{id}");
            if listener
                .as_ref()
                .is_some_and(|l| !l.emitted(&key, mtime_ns, now))
            {
                summary.kept_for_listener += 1;
                return true;
            }
            false
        };
        sweep(
            &dir,
            cutoff,
            |n| result_id(n).is_some(),
            keep,
            &mut summary,
            removed,
        );
    }
    for worker in spool.trigger_worker_names()? {
        sweep(
            &spool.trigger_dir(&worker),
            cutoff,
            |n| !n.starts_with('.') && n.strip_suffix(".trigger").is_some_and(|s| !s.is_empty()),
            |_, _, _| false,
            &mut summary,
            removed,
        );
    }
    // Heartbeats of instances gone for longer than AGE (another host's
    // dead process, which no successor on its host removes); never one
    // whose lock a live process holds.
    sweep(
        &spool.heartbeats,
        cutoff,
        |n| heartbeat_instance(n).is_some(),
        |n, _, _| {
            heartbeat_instance(n)
                .is_some_and(|(w, i)| lock_held(&spool.heartbeats.join(instance_lock(w, i))))
        },
        &mut summary,
        removed,
    );
    sweep(
        &spool.orchestrator_dir(),
        cutoff,
        |n| !n.starts_with('.') && json_stem(n).is_some_and(|s| !s.is_empty()),
        |_, _, _| false,
        &mut summary,
        removed,
    );
    Ok(summary)
}

/// Whether a live process holds the lock at `path` (a missing lock is
/// held by none).
fn lock_held(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    matches!(
        crate::sys::Locked::shared(file),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// The task ids that pending and deferred tasks depend on, of every
/// worker. A task file that cannot be read names none (the worker will
/// dead-letter it).
fn dependencies(spool: &Spool, errors: &mut Vec<Error>) -> Result<HashSet<String>> {
    let mut needed = HashSet::new();
    for worker in spool.worker_names()? {
        for q in [Queued::Pending, Queued::Deferred] {
            let dir = spool.queued_dir(&worker, q);
            let names = match task_names(&dir) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for name in names {
                let Ok(bytes) = read_regular(&dir.join(&name), RECORD_MAX) else {
                    continue;
                };
                let Ok(task) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                let deps = task.get("dependencies").and_then(Value::as_array);
                needed.extend(
                    deps.into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(String::from),
                );
            }
        }
    }
    Ok(needed)
}

/// Removes the regular files of `dir` that `wanted` names, last modified
/// before `cutoff`, and that `keep` does not keep.
fn sweep(
    dir: &Path,
    cutoff: f64,
    wanted: impl Fn(&str) -> bool,
    mut keep: impl FnMut(&str, u64, &mut Summary) -> bool,
    summary: &mut Summary,
    removed: &mut dyn FnMut(&Path),
) {
    let held = match open_folder(dir) {
        Ok(Some(fd)) => fd,
        Ok(None) => return,
        Err(e) => return summary.errors.push(e),
    };
    // The names come from the path; every look and removal goes through
    // the descriptor, so only entries of the folder opened are touched.
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| wanted(n))
            .collect(),
        Err(e) => return summary.errors.push(Error::io("cannot list", dir, e)),
    };
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let stat = match fstatat(
            Some(held.as_raw_fd()),
            OsStr::new(&name),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESTALE) => continue,
            Err(e) => {
                summary
                    .errors
                    .push(Error::io("cannot stat", &path, e.into()));
                continue;
            }
        };
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            continue;
        }
        let mtime = stat.st_mtime as f64 + stat.st_mtime_nsec as f64 / 1e9;
        if mtime >= cutoff {
            continue;
        }
        let mtime_ns = u64::try_from(stat.st_mtime)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(stat.st_mtime_nsec).unwrap_or(0));
        if keep(&name, mtime_ns, summary) {
            continue;
        }
        match unlinkat(
            Some(held.as_raw_fd()),
            OsStr::new(&name),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => removed(&path),
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESTALE) => {}
            Err(e) => summary
                .errors
                .push(Error::io("cannot remove", &path, e.into())),
        }
    }
}

/// A worker's folder, held: opened through its parent (the top folder,
/// as configured) without following a symlink. `None` when it is absent.
fn open_folder(dir: &Path) -> Result<Option<OwnedFd>> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(None);
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    let top = match crate::sys::openat(None, parent, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if crate::error::vanished(&e) => return Ok(None),
        Err(e) => return Err(Error::io("cannot open", parent, e)),
    };
    match crate::sys::openat(
        Some(top.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if crate::error::vanished(&e) => Ok(None),
        Err(e)
            if e.raw_os_error() == Some(nix::libc::ELOOP)
                || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
        {
            let why = io::Error::new(io::ErrorKind::InvalidData, "not a folder (a symlink?)");
            Err(Error::io("refusing", dir, why))
        }
        Err(e) => Err(Error::io("cannot open", dir, e)),
    }
}

/// What the listener has emitted, as far as results go: for each task
/// it remembers (`<worker>/<id>`), the modification time in nanoseconds
/// of the result whose event went out, if any; and whether its first
/// catch-up is done (`horizon`).
#[derive(Debug, Default)]
pub struct ListenerState {
    horizon: Option<f64>,
    results: HashMap<String, Option<u64>>,
}

impl ListenerState {
    /// The snapshot, then the journal; `None` when there is no state file
    /// (no listener, or one that has never run: nothing to protect).
    pub fn load(path: &Path) -> Result<Option<ListenerState>> {
        let unreadable = |e: String| {
            Error::new(
                Kind::Data,
                format!(
                    "cannot read the listener's state file {}: {e}; nothing was pruned",
                    path.display()
                ),
            )
        };
        let bytes = match read_regular(path, STATE_MAX) {
            Ok(b) => b,
            Err(e) if crate::error::vanished(&e) => return Ok(None),
            Err(e) => return Err(unreadable(e.to_string())),
        };
        let mut state = ListenerState::default();
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(snap)) => {
                state.horizon = snap.get("horizon").and_then(Value::as_f64);
                if let Some(Value::Object(tasks)) = snap.get("tasks") {
                    for (key, t) in tasks {
                        state.results.insert(key.clone(), result_of(t));
                    }
                }
            }
            Ok(_) => return Err(unreadable("not a JSON object".into())),
            Err(e) => return Err(unreadable(e.to_string())),
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let journal: PathBuf = path.with_file_name(state_journal(&name));
        let lines = match read_regular(&journal, STATE_MAX) {
            Ok(b) => b,
            Err(e) if crate::error::vanished(&e) => Vec::new(),
            Err(e) => return Err(unreadable(format!("{}: {e}", journal.display()))),
        };
        // One change per line; a torn last line (a crash mid-write) is
        // skipped, as the listener skips it.
        for line in lines.split(|&b| b == b'\n') {
            let Ok(Value::Object(change)) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if let Some(h) = change.get("horizon").and_then(Value::as_f64) {
                state.horizon = Some(h);
            }
            if let Some(Value::Array(pair)) = change.get("task") {
                if let (Some(Value::String(key)), Some(t)) = (pair.first(), pair.get(1)) {
                    state.results.insert(key.clone(), result_of(t));
                }
            }
        }
        Ok(Some(state))
    }

    /// Whether the listener has emitted the event of the result of `key`
    /// last modified at `mtime_ns`: the state says so; or the state does
    /// not know the task, its first catch-up is done, and the result is
    /// older than the listener's retention (emitted long ago and
    /// forgotten, or too old for it to emit).
    pub fn emitted(&self, key: &str, mtime_ns: u64, now: f64) -> bool {
        match self.results.get(key) {
            Some(result) => *result == Some(mtime_ns),
            None => {
                self.horizon.is_some()
                    && (mtime_ns as f64 / 1e9) < now - LISTEN_RETAIN.as_secs_f64()
            }
        }
    }
}

fn result_of(task: &Value) -> Option<u64> {
    task.get("result").and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &Path, snapshot: &str, journal: &str) -> ListenerState {
        let path = dir.join("state.json");
        std::fs::write(&path, snapshot).unwrap();
        if !journal.is_empty() {
            std::fs::write(dir.join(".state.json.journal"), journal).unwrap();
        }
        ListenerState::load(&path).unwrap().unwrap()
    }

    #[test]
    fn the_journal_overrides_the_snapshot_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(
            dir.path(),
            r#"{"version":1,"horizon":5.0,"tasks":{"w/a":{"result":7},"w/b":{}}}"#,
            "{\"task\":[\"w/b\",{\"result\":9}]}\n{\"task\":[\"w/a\",{\"res",
        );
        assert!(s.emitted("w/a", 7, 10.0));
        assert!(
            !s.emitted("w/a", 8, 10.0),
            "a newer result of a replayed task"
        );
        assert!(s.emitted("w/b", 9, 10.0));
        let old = 1_000_000_000u64 * 10;
        let now = 10.0 + LISTEN_RETAIN.as_secs_f64() + 1.0;
        assert!(s.emitted("w/c", old, now), "forgotten after the retention");
        assert!(!s.emitted("w/c", old, 11.0), "not yet seen");
    }

    #[test]
    fn before_its_first_catch_up_the_listener_has_emitted_nothing_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path(), r#"{"version":1,"tasks":{}}"#, "");
        assert!(!s.emitted("w/c", 1, 1e12));
    }

    #[test]
    fn no_state_file_is_no_listener() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ListenerState::load(&dir.path().join("none.json"))
            .unwrap()
            .is_none());
        std::fs::write(dir.path().join("bad.json"), "[").unwrap();
        let e = ListenerState::load(&dir.path().join("bad.json")).unwrap_err();
        assert_eq!(e.kind, Kind::Data);
    }
}
