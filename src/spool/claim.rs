//! The claim protocol (hw-worker(8), Tasks; hookwatch(5), Claimed and deferred tasks): exactly one claimer wins a pending
//! task, also across processes and hosts sharing the spool. A held flock
//! means "running": the lock lives in `Claim` and is released only after
//! the task has left `.active/`. `probe` is the other half: a lock that can
//! be taken on a file in `.active/` belongs to a dead claimer.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use nix::libc;
use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};
use crate::spool::publish::rename_noreplace;

/// A task file locked by this process: pending until `activate` moves it
/// into `.active/`.
#[derive(Debug)]
pub struct Claim {
    file: Flock<File>,
    pub name: OsString,
    pub path: PathBuf,
    /// When the producer last wrote the file (for the pickup latency).
    pub written: SystemTime,
    /// When it was claimed; its mtime from then on.
    pub claimed: SystemTime,
    pub size: u64,
}

#[derive(Debug)]
pub enum Attempt {
    Locked(Claim),
    /// Another claimer won, or the file is gone: skip quietly.
    Lost,
    /// The entry is a symlink, FIFO, socket, folder or device (named).
    NotRegular(&'static str),
}

/// What became of `Claim::activate`.
#[derive(Debug)]
pub enum Activated {
    Active(Claim),
    /// `.active/` already holds a task of that name; try again later.
    Busy,
    Lost,
}

/// Locks `dir/name`, a pending task file: open without following links or
/// blocking, a regular file, flock, and still the same inode at that path.
pub fn lock(dir: &Path, name: &OsStr) -> Result<Attempt> {
    let path = dir.join(name);
    let before = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Lost),
        Err(e) => return Err(Error::io("cannot stat", &path, e)),
    };
    if let Some(kind) = irregular(&before) {
        return Ok(Attempt::NotRegular(kind));
    }
    let file = match open_nofollow(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Lost),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Attempt::NotRegular("symlink"))
        }
        Err(e) => return Err(Error::io("cannot open", &path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", &path, e))?;
    if !meta.is_file() || meta.ino() != before.ino() {
        return Ok(Attempt::Lost);
    }
    let Some(file) = try_lock(file).filter(|_| same_inode(&path, &meta)) else {
        return Ok(Attempt::Lost);
    };
    let written = meta.modified().unwrap_or_else(|_| SystemTime::now());
    Ok(Attempt::Locked(Claim {
        file,
        name: name.to_os_string(),
        path,
        written,
        claimed: written,
        size: meta.len(),
    }))
}

/// Takes the lock of `active_dir/name` if its claimer is gone.
pub fn probe(active_dir: &Path, name: &OsStr) -> Result<Option<Claim>> {
    let path = active_dir.join(name);
    let file = match open_nofollow(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot open", &path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", &path, e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    // nlink 0: the claimer finished and removed it between our open and lock.
    let Some(file) = try_lock(file).filter(|_| meta.nlink() > 0 && same_inode(&path, &meta)) else {
        return Ok(None);
    };
    let claimed = meta.modified().unwrap_or_else(|_| SystemTime::now());
    Ok(Some(Claim {
        file,
        name: name.to_os_string(),
        path,
        written: claimed,
        claimed,
        size: meta.len(),
    }))
}

impl Claim {
    /// Moves the locked pending file into `active_dir` and stamps its mtime
    /// with the claim time, so that anyone can tell a result of this run
    /// from an older one.
    pub fn activate(mut self, active_dir: &Path) -> Result<Activated> {
        let active = active_dir.join(&self.name);
        match rename_noreplace(&self.path, &active) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Activated::Lost),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Activated::Busy),
            Err(e) => return Err(Error::io2("cannot rename", &self.path, &active, e)),
        }
        self.claimed = SystemTime::now();
        let since_epoch = self
            .claimed
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let ts = TimeSpec::from(since_epoch);
        // Best effort: without it a crash is recovered as an interrupted run.
        let _ = futimens(self.file.as_raw_fd(), &ts, &ts);
        self.path = active;
        Ok(Activated::Active(self))
    }

    /// The file's content, read from the start.
    pub fn read(&mut self) -> Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(self.size.min(1 << 24) as usize);
        let read = (&*self.file)
            .seek(SeekFrom::Start(0))
            .and_then(|_| (&*self.file).read_to_end(&mut bytes));
        read.map_err(|e| Error::io("cannot read", &self.path, e))?;
        Ok(bytes)
    }

    /// The task has left `.active/` for good: remove the entry, then let
    /// the lock go (in that order, so a probe never sees a free lock on a
    /// live entry).
    pub fn finish(self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot remove", &self.path, e)),
        }
    }

    /// Moves the entry to `to`, replacing nothing, and lets the lock go.
    /// On failure the claim comes back with the error.
    pub fn move_to(self, to: &Path) -> std::result::Result<(), Box<(Claim, Error)>> {
        match rename_noreplace(&self.path, to) {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = Error::io2("cannot rename", &self.path, to, e);
                Err(Box::new((self, err)))
            }
        }
    }

    /// Puts the original write time back (a task returned to pending keeps
    /// its place in the queue).
    pub fn restore_mtime(&self) {
        let since_epoch = self
            .written
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let ts = TimeSpec::from(since_epoch);
        let _ = futimens(self.file.as_raw_fd(), &ts, &ts);
    }
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn try_lock(file: File) -> Option<Flock<File>> {
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

fn same_inode(path: &Path, meta: &fs::Metadata) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev())
}

/// What a non-regular entry is, for the dead letter.
pub fn irregular(meta: &fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    match () {
        _ if t.is_file() => None,
        _ if t.is_symlink() => Some("symlink"),
        _ if t.is_dir() => Some("folder"),
        _ if t.is_fifo() => Some("fifo"),
        _ if t.is_socket() => Some("socket"),
        _ if t.is_char_device() || t.is_block_device() => Some("device"),
        _ => Some("unknown file type"),
    }
}
