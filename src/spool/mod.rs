//! The spool layout (hookwatch(5), The root and its folders): the only module that
//! knows where things live. Every other module asks a `Spool` for a
//! folder or a path; none builds one. The names inside the folders are
//! `names`; writing is `publish` (and `commit` for a worker's hot path);
//! claiming is `claim`.

pub(crate) mod claim;
pub(crate) mod commit;
pub(crate) mod dir;
pub mod names;
pub(crate) mod publish;
pub(crate) mod spare;

use std::env;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Kind, Result};
use dir::Dir;
use names::{
    heartbeat_file, task_file, valid_worker_name, ACTIVE, DEFERRED, ORCHESTRATOR, REJECTED, SPARE,
};

/// The default root, the layout of the system hookwatch replaces.
pub const DEFAULT_ROOT: &str = "/shared";

/// The five top folders and the listener's state file.
#[derive(Debug, Clone)]
pub struct Spool {
    pub root: PathBuf,
    pub tasks: PathBuf,
    pub triggers: PathBuf,
    pub results: PathBuf,
    pub heartbeats: PathBuf,
    pub dlq: PathBuf,
    pub state_file: PathBuf,
}

impl Spool {
    /// Every folder under `root`, as the defaults say.
    pub fn at(root: &Path) -> Spool {
        Spool {
            root: root.to_path_buf(),
            tasks: root.join("tasks"),
            triggers: root.join("triggers"),
            results: root.join("results"),
            heartbeats: root.join("heartbeats"),
            dlq: root.join("dlq"),
            state_file: root.join("orchestrator_state.json"),
        }
    }

    /// The spool the environment describes: `HW_ROOT` (or `root` when the
    /// caller has a flag for it), each folder movable by its variable.
    pub fn from_env(root: Option<PathBuf>) -> Spool {
        let root = root
            .or_else(|| env_path("HW_ROOT"))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        let mut spool = Spool::at(&root);
        let moves = [
            ("TASK_DIR", &mut spool.tasks),
            ("TRIGGER_DIR", &mut spool.triggers),
            ("RESULT_DIR", &mut spool.results),
            ("HEARTBEAT_DIR", &mut spool.heartbeats),
            ("DLQ_DIR", &mut spool.dlq),
            ("STATE_FILE", &mut spool.state_file),
        ];
        for (var, slot) in moves {
            if let Some(p) = env_path(var) {
                *slot = p;
            }
        }
        spool
    }

    /// The folder that holds the tasks folder: the agents' default workdir.
    pub fn tasks_parent(&self) -> PathBuf {
        self.tasks
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone())
    }

    pub fn pending_dir(&self, worker: &str) -> PathBuf {
        self.tasks.join(worker)
    }

    pub fn active_dir(&self, worker: &str) -> PathBuf {
        self.pending_dir(worker).join(ACTIVE)
    }

    pub fn deferred_dir(&self, worker: &str) -> PathBuf {
        self.pending_dir(worker).join(DEFERRED)
    }

    pub fn trigger_dir(&self, worker: &str) -> PathBuf {
        self.triggers.join(worker)
    }

    pub fn orchestrator_dir(&self) -> PathBuf {
        self.triggers.join(ORCHESTRATOR)
    }

    pub fn result_dir(&self, worker: &str) -> PathBuf {
        self.results.join(worker)
    }

    pub fn result_path(&self, worker: &str, task_id: &str) -> PathBuf {
        self.result_dir(worker).join(task_file(task_id))
    }

    pub fn heartbeat_path(&self, worker: &str) -> PathBuf {
        self.heartbeats.join(heartbeat_file(worker))
    }

    pub fn dlq_dir(&self, worker: &str) -> PathBuf {
        self.dlq.join(worker)
    }

    pub fn rejected_dir(&self, worker: &str) -> PathBuf {
        self.dlq_dir(worker).join(REJECTED)
    }

    /// Every folder a worker writes to, created on demand (0750 less umask).
    pub fn create_worker_dirs(&self, worker: &str) -> Result<()> {
        for dir in [
            self.pending_dir(worker),
            self.active_dir(worker),
            self.deferred_dir(worker),
            self.pending_dir(worker).join(SPARE),
            self.trigger_dir(worker),
            self.result_dir(worker),
            self.heartbeats.clone(),
            self.dlq_dir(worker),
        ] {
            create_dir(&dir)?;
        }
        // Not through a symbolic link: the worker refuses one there, and
        // must not have made a folder wherever it points first.
        let dlq_is_real = std::fs::symlink_metadata(self.dlq_dir(worker)).is_ok_and(|m| m.is_dir());
        if dlq_is_real {
            create_dir(&self.rejected_dir(worker))?;
        }
        Ok(())
    }

    /// The workers this spool knows of: every valid name with a tasks
    /// folder, sorted.
    pub fn worker_names(&self) -> Result<Vec<String>> {
        worker_folders(&self.tasks)
    }

    /// The workers with a dead-letter folder, sorted.
    pub fn dlq_worker_names(&self) -> Result<Vec<String>> {
        worker_folders(&self.dlq)
    }

    /// The workers with a results folder, sorted.
    pub fn result_worker_names(&self) -> Result<Vec<String>> {
        worker_folders(&self.results)
    }

    /// The workers with a receipts folder under the triggers folder
    /// (not the listener's), sorted.
    pub fn trigger_worker_names(&self) -> Result<Vec<String>> {
        worker_folders(&self.triggers)
    }

    /// The folder of `worker`'s tasks in state `q`.
    pub fn queued_dir(&self, worker: &str, q: Queued) -> PathBuf {
        match q {
            Queued::Pending => self.pending_dir(worker),
            Queued::Active => self.active_dir(worker),
            Queued::Deferred => self.deferred_dir(worker),
        }
    }

    /// Refuses a spool whose root does not exist, so that a typo in `-r`
    /// or `HW_ROOT` is an error and not a new spool (`uses`: the top
    /// folder the tool works in, which a variable may have moved out of
    /// the root; its existence is enough). Only a missing root is refused
    /// here; any other trouble shows when the folders are used.
    pub fn require_root(&self, uses: &Path) -> Result<()> {
        if uses.is_dir() {
            return Ok(());
        }
        match std::fs::metadata(&self.root) {
            Err(e) if crate::error::vanished(&e) => Err(Error::new(
                Kind::NotFound,
                format!(
                    "the spool root {root} does not exist: check -r and HW_ROOT, \
                     or create it with 'hw-status -r {root} --init WORKER[,WORKER...]'",
                    root = self.root.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Where a task named `<id>.json` sits while it is pending, active or
    /// deferred.
    pub fn queued_paths(&self, worker: &str, id: &str) -> [PathBuf; 3] {
        let name = task_file(id);
        [
            self.pending_dir(worker).join(&name),
            self.active_dir(worker).join(&name),
            self.deferred_dir(worker).join(&name),
        ]
    }

    /// The entry a dead letter's `rejected_path` names, when it is exactly
    /// `.rejected/NAME` (see `names::rejected_entry`).
    pub fn rejected_entry(&self, worker: &str, rejected_path: &str) -> Option<PathBuf> {
        names::rejected_entry(rejected_path).map(|name| self.rejected_dir(worker).join(name))
    }
}

/// A worker's folders, held open (see `dir`): what the worker reads,
/// moves and writes is reached through these, never through a path that
/// someone may have swapped for a symbolic link since.
#[derive(Debug)]
pub struct WorkerDirs {
    /// `tasks/<worker>/`, as the tasks folder's path names it.
    pub pending: Arc<Dir>,
    pub active: Arc<Dir>,
    pub deferred: Arc<Dir>,
    /// `.spare/`: finished task files kept to be written again.
    pub spare: Arc<Dir>,
    pub triggers: Arc<Dir>,
    pub results: Arc<Dir>,
    pub dlq: Arc<Dir>,
    pub rejected: Arc<Dir>,
    pub heartbeats: Arc<Dir>,
}

impl Spool {
    /// Holds a worker's folders, creating those missing. `.active/`,
    /// `.deferred/`, `results/<worker>/`, `triggers/<worker>/`,
    /// `dlq/<worker>/` and `.rejected/` must be folders of their own, not
    /// symbolic links (a configuration error); the top folders and the
    /// tasks folder may be links, as whoever set the spool up chose.
    pub fn hold(&self, worker: &str) -> Result<WorkerDirs> {
        self.create_worker_dirs(worker)?;
        let pending = Dir::open_following(&self.pending_dir(worker))?;
        let active = pending.sub(ACTIVE)?;
        let deferred = pending.sub(DEFERRED)?;
        let spare = pending.sub(SPARE)?;
        let dlq = Dir::open(&self.dlq_dir(worker))?;
        let rejected = dlq.sub(REJECTED)?;
        Ok(WorkerDirs {
            active: Arc::new(active),
            deferred: Arc::new(deferred),
            spare: Arc::new(spare),
            pending: Arc::new(pending),
            triggers: Arc::new(Dir::open(&self.trigger_dir(worker))?),
            results: Arc::new(Dir::open(&self.result_dir(worker))?),
            rejected: Arc::new(rejected),
            dlq: Arc::new(dlq),
            heartbeats: Arc::new(Dir::open_following(&self.heartbeats)?),
        })
    }
}

impl WorkerDirs {
    /// The first of them whose path no longer names the folder held (a
    /// folder moved away, replaced, or swapped for a symbolic link).
    /// (`heartbeats/` is shared by every worker, and not checked.)
    pub fn moved(&self) -> Option<&Path> {
        self.all()
            .into_iter()
            .filter(|d| !Arc::ptr_eq(d, &self.heartbeats))
            .find(|d| !d.is_at_path())
            .map(|d| d.path())
    }

    /// Every folder the worker writes into.
    pub fn all(&self) -> [&Arc<Dir>; 9] {
        [
            &self.pending,
            &self.active,
            &self.deferred,
            &self.spare,
            &self.triggers,
            &self.results,
            &self.dlq,
            &self.rejected,
            &self.heartbeats,
        ]
    }
}

/// Where a task file is while it waits or runs: `tasks/<worker>/`,
/// `.active/` or `.deferred/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Queued {
    Pending,
    Active,
    Deferred,
}

impl Queued {
    pub const ALL: [Queued; 3] = [Queued::Pending, Queued::Active, Queued::Deferred];

    pub fn as_str(self) -> &'static str {
        match self {
            Queued::Pending => "pending",
            Queued::Active => "active",
            Queued::Deferred => "deferred",
        }
    }
}

/// The task files of a folder (`*.json`, not dot-files), sorted by name.
/// A missing folder has none; a folder that is a symlink (or not a
/// folder) is refused, not followed, as the worker refuses it.
pub fn task_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            let why =
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a folder (a symlink?)");
            return Err(Error::io("refusing", dir, why));
        }
        Err(e) if crate::error::vanished(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot stat", dir, e)),
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if crate::error::vanished(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    let mut names: Vec<std::ffi::OsString> = entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| names::is_task_file(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Every valid worker name with a folder in `dir`, sorted.
fn worker_folders(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if crate::error::vanished(&e) => return Ok(names),
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if valid_worker_name(name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

pub fn create_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| Error::io("cannot create folder", dir, e).with_kind(Kind::CannotCreate))
}

fn env_path(var: &str) -> Option<PathBuf> {
    env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The most a reader takes of a result or dead letter (they hold up to
/// twice `--max-output` of text, escaped).
pub const RECORD_MAX: u64 = 64 << 20;

/// Reads a spool file that must be a regular file of at most `max` bytes:
/// opened without following a symlink or blocking on a FIFO, its type
/// checked, and never read past `max` (a hostile heartbeat or state file
/// must not hang or exhaust a reader).
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "too large",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "too large",
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_paths_stay_in_rejected() {
        let spool = Spool::at(Path::new("/s"));
        assert_eq!(
            spool.rejected_entry("w", ".rejected/x.json"),
            Some(PathBuf::from("/s/dlq/w/.rejected/x.json"))
        );
        assert_eq!(spool.rejected_entry("w", ".rejected/../x"), None);
    }
}
