//! The claim protocol (hw-worker(8), Tasks; hookwatch(5), Claimed and
//! deferred tasks): exactly one claimer wins a pending task, also across
//! processes and hosts sharing the spool. A held flock means "running":
//! the lock lives in `Claim` and is released only after the task has left
//! `.active/`. `probe` is the other half: a lock that can be taken on a
//! file in `.active/` belongs to a dead claimer. Every step is relative to
//! a held folder, so a folder swapped for a symbolic link leads nowhere.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use nix::libc;
use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};
use crate::spool::dir::{read_at_most, Dir};
use crate::spool::spare::Spares;
use crate::sys::Locked;

/// A task file locked by this process: pending until `activate` moves it
/// into `.active/`.
#[derive(Debug)]
pub struct Claim {
    file: Locked,
    pub name: OsString,
    /// The folder it is in now.
    dir: Arc<Dir>,
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
    /// Someone else holds its lock and it is still pending: look again
    /// later (another claimer between its lock and its rename, or any
    /// process that locks the file).
    Held,
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

/// Why a claimed file cannot be read.
#[derive(Debug)]
pub enum Unread {
    /// More than the bound, by the bytes read (it may have grown since
    /// its size was looked at).
    TooLarge,
    Failed(Error),
}

/// Locks `name` in `dir`, a pending task file: open without following
/// links or blocking, a regular file, flock, and still the same inode
/// under that name.
pub fn lock(dir: &Arc<Dir>, name: &OsStr) -> Result<Attempt> {
    let before = match dir.stat(name) {
        Ok(e) => e,
        Err(e) if gone(&e) => return Ok(Attempt::Lost),
        Err(e) => return Err(Error::io("cannot stat", &dir.join(name), e)),
    };
    if let Some(kind) = before.irregular() {
        return Ok(Attempt::NotRegular(kind));
    }
    let file = match dir.open_read(name) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Ok(Attempt::Lost),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Attempt::NotRegular("symlink"))
        }
        Err(e) => return Err(Error::io("cannot open", &dir.join(name), e)),
    };
    let meta = nix::sys::stat::fstat(file.as_raw_fd())
        .map_err(|e| Error::io("cannot stat", &dir.join(name), e.into()))?;
    if meta.st_ino != before.ino {
        return Ok(Attempt::Lost);
    }
    let file = match Locked::exclusive(file) {
        Ok(f) => f,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let still = dir.stat(name).is_ok_and(|e| e.ino == before.ino);
            return Ok(if still { Attempt::Held } else { Attempt::Lost });
        }
        Err((_, e)) => return Err(Error::io("cannot lock", &dir.join(name), e.into())),
    };
    if !dir.stat(name).is_ok_and(|e| e.ino == before.ino) {
        return Ok(Attempt::Lost);
    }
    let written = before.modified();
    Ok(Attempt::Locked(Claim {
        file,
        name: name.to_os_string(),
        dir: dir.clone(),
        written,
        claimed: written,
        size: before.size,
    }))
}

/// Takes the lock of `name` in `active` if its claimer is gone.
pub fn probe(active: &Arc<Dir>, name: &OsStr) -> Result<Option<Claim>> {
    let file = match active.open_read(name) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(Error::io("cannot open", &active.join(name), e)),
    };
    let meta = nix::sys::stat::fstat(file.as_raw_fd())
        .map_err(|e| Error::io("cannot stat", &active.join(name), e.into()))?;
    let regular = meta.st_mode & libc::S_IFMT == libc::S_IFREG;
    if !regular {
        return Ok(None);
    }
    let Ok(file) = Locked::exclusive(file) else {
        return Ok(None);
    };
    // nlink 0: the claimer finished and removed it between our open and lock.
    let same = active.stat(name).is_ok_and(|e| e.ino == meta.st_ino);
    if meta.st_nlink == 0 || !same {
        return Ok(None);
    }
    let since = std::time::Duration::new(meta.st_mtime.max(0) as u64, meta.st_mtime_nsec as u32);
    let claimed = SystemTime::UNIX_EPOCH + since;
    Ok(Some(Claim {
        file,
        name: name.to_os_string(),
        dir: active.clone(),
        written: claimed,
        claimed,
        size: meta.st_size.max(0) as u64,
    }))
}

/// A time cut to whole microseconds, so that a file system that keeps
/// microseconds (not nanoseconds) keeps the stamp exactly.
fn whole_micros(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(d.as_micros() as u64)
}

/// ENOENT, and what a network file system says of a file that another
/// host removed (ESTALE): the file is gone.
fn gone(e: &io::Error) -> bool {
    crate::error::vanished(e)
}

impl Claim {
    /// The folder it is in now.
    pub fn dir(&self) -> &Arc<Dir> {
        &self.dir
    }

    /// Whether its folder still holds the locked file under its name.
    pub fn is_in_place(&self) -> bool {
        let Ok(meta) = nix::sys::stat::fstat(self.file.as_raw_fd()) else {
            return false;
        };
        self.dir
            .stat(&self.name)
            .is_ok_and(|e| e.ino == meta.st_ino)
    }

    /// The file moved, with its lock, to `dir` (someone else renamed it):
    /// `finish` removes it there, if it is there.
    pub fn moved_to(&mut self, dir: Arc<Dir>) {
        let previous = std::mem::replace(&mut self.dir, dir);
        if !self.is_in_place() {
            self.dir = previous;
        }
    }

    /// The path of the entry now, for messages and `HW_TASK_FILE`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Moves the locked pending file into `active` and stamps its mtime
    /// with the claim time, so that anyone can tell a result of this run
    /// from an older one.
    pub fn activate(mut self, active: &Arc<Dir>) -> Result<Activated> {
        match self.dir.rename_noreplace(&self.name, active, &self.name) {
            Ok(()) => {}
            Err(e) if gone(&e) => return Ok(Activated::Lost),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Activated::Busy),
            Err(e) => {
                let to = active.join(&self.name);
                return Err(Error::io2("cannot rename", &self.path(), &to, e));
            }
        }
        self.claimed = whole_micros(SystemTime::now());
        self.stamp(self.claimed);
        self.dir = active.clone();
        Ok(Activated::Active(self))
    }

    /// Best effort: without it a crash is recovered as an interrupted run.
    fn stamp(&self, t: SystemTime) {
        let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let ts = TimeSpec::from(since_epoch);
        let _ = futimens(self.file.as_raw_fd(), &ts, &ts);
    }

    /// The file's content from its start, at most `max` bytes by the
    /// bytes actually read.
    pub fn read(&mut self, max: u64) -> std::result::Result<Vec<u8>, Unread> {
        let path = self.path();
        let mut file: &File = &self.file;
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| read_at_most(file, max));
        match read {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Unread::TooLarge),
            Err(e) => Err(Unread::Failed(Error::io("cannot read", &path, e))),
        }
    }

    /// The task has left `.active/` for good: remove the entry, then let
    /// the lock go (in that order, so a probe never sees a free lock on a
    /// live entry).
    pub fn finish(self) -> Result<()> {
        match self.dir.unlink(&self.name) {
            Ok(()) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(Error::io("cannot remove", &self.path(), e)),
        }
    }

    /// As `finish`, but the file goes to `spares` when they take it.
    pub fn retire(self, spares: &Spares) -> Result<()> {
        use std::os::fd::AsFd;
        if spares.keep(&self.dir, &self.name, self.file.as_fd()) {
            return Ok(());
        }
        self.finish()
    }

    /// Moves the entry to `to_name` in `to`, replacing nothing, and lets
    /// the lock go. On failure the claim comes back with the error.
    pub fn move_to(
        self,
        to: &Dir,
        to_name: &OsStr,
    ) -> std::result::Result<(), Box<(Claim, Error)>> {
        match self.dir.rename_noreplace(&self.name, to, to_name) {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = Error::io2("cannot rename", &self.path(), &to.join(to_name), e);
                Err(Box::new((self, err)))
            }
        }
    }

    /// Puts the original write time back (a task returned to pending keeps
    /// its place in the queue).
    pub fn restore_mtime(&self) {
        self.stamp(self.written);
    }
}
