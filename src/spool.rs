//! The spool layout (SPEC section 1, hookwatch(5)): the only module that
//! knows where things live and which names may become part of a path.
//! Every other module asks a `Spool` for a path; none builds one.

use std::env;
use std::ffi::OsStr;
use std::fs::DirBuilder;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Kind, Result};

/// The default root, the layout of the system hookwatch replaces.
pub const DEFAULT_ROOT: &str = "/shared";

/// The listener's folder under the triggers folder.
pub const ORCHESTRATOR: &str = "orchestrator";

const ACTIVE: &str = ".active";
const DEFERRED: &str = ".deferred";
const REJECTED: &str = ".rejected";

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
        self.result_dir(worker).join(json_name(task_id))
    }

    pub fn heartbeat_path(&self, worker: &str) -> PathBuf {
        self.heartbeats.join(json_name(worker))
    }

    pub fn dlq_dir(&self, worker: &str) -> PathBuf {
        self.dlq.join(worker)
    }

    pub fn rejected_dir(&self, worker: &str) -> PathBuf {
        self.dlq_dir(worker).join(REJECTED)
    }

    /// `rejected_path` as a dead letter records it: relative to the
    /// worker's DLQ folder.
    pub fn rejected_relative(name: &str) -> String {
        format!("{REJECTED}/{name}")
    }

    /// Every folder a worker writes to, created on demand (0750 less umask).
    pub fn create_worker_dirs(&self, worker: &str) -> Result<()> {
        for dir in [
            self.pending_dir(worker),
            self.active_dir(worker),
            self.deferred_dir(worker),
            self.trigger_dir(worker),
            self.result_dir(worker),
            self.heartbeats.clone(),
            self.dlq_dir(worker),
            self.rejected_dir(worker),
        ] {
            create_dir(&dir)?;
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

    /// Where a task named `<id>.json` sits while it is pending, active or
    /// deferred.
    pub fn queued_paths(&self, worker: &str, id: &str) -> [PathBuf; 3] {
        let name = json_name(id);
        [
            self.pending_dir(worker).join(&name),
            self.active_dir(worker).join(&name),
            self.deferred_dir(worker).join(&name),
        ]
    }

    /// The entry a dead letter's `rejected_path` names, when it is exactly
    /// `.rejected/NAME`: nothing outside the worker's `.rejected/` folder
    /// (no `..`, no deeper `/`) is ever reached through it.
    pub fn rejected_entry(&self, worker: &str, rejected_path: &str) -> Option<PathBuf> {
        let name = rejected_path.strip_prefix(REJECTED)?.strip_prefix('/')?;
        let fine = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
        fine.then(|| self.rejected_dir(worker).join(name))
    }
}

/// Every valid worker name with a folder in `dir`, sorted.
fn worker_folders(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
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

/// Worker names and task ids: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
/// Nothing else ever becomes part of a path.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
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

/// A worker name: a valid name that is not the listener's folder.
pub fn valid_worker_name(s: &str) -> bool {
    valid_name(s) && s != ORCHESTRATOR
}

/// A pending task's file name: `*.json`, not a dot-file (staging files are
/// dot-files and are ignored); any other bytes, since a name that is not
/// UTF-8 is still a task file, to be judged.
pub fn is_task_file(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.len() > ".json".len() && !b.starts_with(b".") && b.ends_with(b".json")
}

pub fn json_name(stem: &str) -> String {
    format!("{stem}.json")
}

/// The task id of a dead letter's file name `<id>_<unix>[-n].json`.
pub fn dead_letter_id(file_name: &str) -> Option<&str> {
    parse_dead_letter_name(file_name)
        .map(|d| d.stem)
        .filter(|stem| valid_name(stem))
}

/// A dead letter's file name, `<stem>_<unix>[-n].json`, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterName<'a> {
    pub stem: &'a str,
    /// Seconds since the epoch when it was written.
    pub unix: u64,
    /// 1, or the `-n` that a name clash added.
    pub n: u32,
}

/// Takes a dead letter's file name apart; `None` for any other name.
pub fn parse_dead_letter_name(file_name: &str) -> Option<DeadLetterName<'_>> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let base = file_name.strip_suffix(".json")?;
    let (stem, when) = base.rsplit_once('_')?;
    let (unix, n) = match when.split_once('-') {
        Some((unix, n)) if digits(n) => (unix, n.parse().ok().filter(|&n| n >= 2)?),
        Some(_) => return None,
        None => (when, 1),
    };
    if stem.is_empty() || file_name.starts_with('.') || !digits(unix) {
        return None;
    }
    Some(DeadLetterName {
        stem,
        unix: unix.parse().ok()?,
        n,
    })
}

/// The stem of a file name, made safe to be part of a dead letter's name:
/// anything outside the name alphabet becomes `_`, and it is cut to fit.
pub fn safe_stem(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".json").unwrap_or(file_name);
    let mut out: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 'x');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(valid_name("marie"));
        assert!(valid_name("task-001.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".."));
        assert!(!valid_name(&"a".repeat(129)));
        assert!(valid_name(&"a".repeat(128)));
    }

    #[test]
    fn dead_letter_ids() {
        assert_eq!(dead_letter_id("t-1_1795865691.json"), Some("t-1"));
        assert_eq!(dead_letter_id("a_b_1795865691-2.json"), Some("a_b"));
        assert_eq!(dead_letter_id("t_x.json"), None);
        assert_eq!(dead_letter_id(".t_1.json"), None);
    }

    #[test]
    fn dead_letter_names_come_apart() {
        let name = |stem, unix, n| Some(DeadLetterName { stem, unix, n });
        assert_eq!(parse_dead_letter_name("t_17.json"), name("t", 17, 1));
        assert_eq!(parse_dead_letter_name("a_b_17-3.json"), name("a_b", 17, 3));
        assert_eq!(parse_dead_letter_name("t_17-1.json"), None);
        assert_eq!(parse_dead_letter_name("t_x.json"), None);
        assert_eq!(parse_dead_letter_name("_17.json"), None);
        assert_eq!(parse_dead_letter_name(".t_17.json"), None);
        assert_eq!(parse_dead_letter_name("t_17.txt"), None);
    }

    #[test]
    fn rejected_paths_stay_in_rejected() {
        let spool = Spool::at(Path::new("/s"));
        assert_eq!(
            spool.rejected_entry("w", ".rejected/x.json"),
            Some(PathBuf::from("/s/dlq/w/.rejected/x.json"))
        );
        for bad in [
            ".rejected/../x",
            ".rejected/..",
            ".rejected/a/b",
            ".rejected/",
            "x.json",
            "/etc/passwd",
            ".rejectedx/y",
        ] {
            assert_eq!(spool.rejected_entry("w", bad), None, "{bad}");
        }
    }

    #[test]
    fn safe_stems() {
        assert_eq!(safe_stem("ok.json"), "ok");
        assert_eq!(safe_stem(".x y.json"), "x.x_y");
        assert_eq!(safe_stem("é.json"), "x_");
    }
}
