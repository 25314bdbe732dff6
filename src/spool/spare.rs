//! Spare files: the file of a finished task, kept to be written again as
//! a later receipt or result instead of being freed. On a disk, most of
//! what a new file costs is allocating its inode and block, and freeing
//! the task's file once it is done (docs/performance.md, Spare files); a
//! spare costs a write in place. A spare waits in `tasks/<worker>/.spare/`
//! under a name of its own; reusing it stages the write (it is renamed to
//! a staged dot-file, rewritten, then published as any staged file), so
//! readers and the order of durability see no difference.
//!
//! Only a file that is the worker's alone is kept: a regular file with
//! one link, owned by the worker's user, with no extended attribute (no
//! ACL, no security label, nothing a producer set) and of at most
//! `MAX_SIZE` bytes. It is checked again when reused, and given the mode
//! a new file in its target folder gets. A target whose new files carry
//! extended attributes (a default ACL, a label), or that is on another
//! file system, never receives a spare. On a network file system the
//! worker turns spares off: another host's client may answer from its
//! cache that a name still holds the inode it locked, which is only
//! harmless while that inode is gone, not reused.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::stat::{fstat, FileStat, SFlag};

use crate::error::Result;
use crate::spool::dir::{host_tag, Dir};
use crate::spool::names;
use crate::sys;

/// Spares kept at most: enough for a busy worker's next few files.
pub const CAPACITY: usize = 64;
/// A larger task file is freed: a spare is for small files.
const MAX_SIZE: i64 = 64 * 1024;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A worker's spare files.
#[derive(Debug)]
pub struct Spares {
    dir: Arc<Dir>,
    enabled: bool,
    names: Mutex<Vec<OsString>>,
    /// What each folder a spare may go to makes of a new file.
    targets: Mutex<Vec<Target>>,
}

#[derive(Debug)]
struct Target {
    id: (u64, u64),
    /// The mode of a new file there, or `None`: never reuse into it.
    mode: Option<u32>,
}

impl Spares {
    /// The spares in `dir` (left by an earlier run), up to `CAPACITY`;
    /// the rest are removed. Unless `enabled`, none is kept or used.
    pub fn open(dir: Arc<Dir>, enabled: bool) -> Spares {
        let mut names = if enabled {
            dir.names().unwrap_or_default()
        } else {
            Vec::new()
        };
        for extra in names.split_off(names.len().min(CAPACITY)) {
            let _ = dir.unlink(&extra);
        }
        Spares {
            dir,
            enabled,
            names: Mutex::new(names),
            targets: Mutex::new(Vec::new()),
        }
    }

    /// How many spares are waiting.
    fn len(&self) -> usize {
        self.names.lock().map_or(0, |n| n.len())
    }

    /// Moves `name` (in `from`, open as `file`) out of its folder into
    /// the spares when it is ours alone and there is room: whether it
    /// went. The caller removes it when it did not.
    pub fn keep(&self, from: &Dir, name: &OsStr, file: BorrowedFd<'_>) -> bool {
        let room = self.enabled && self.len() < CAPACITY;
        if !room || from.device() != self.dir.device() || !ours(file) {
            return false;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let spare = OsString::from(names::spare(host_tag(), std::process::id(), n));
        if from.rename(name, &self.dir, &spare).is_err() {
            return false;
        }
        if let Ok(mut names) = self.names.lock() {
            names.push(spare);
        }
        true
    }

    /// The first half of a publish into `to`, as `Dir::stage`, written
    /// into a spare when one fits.
    pub fn stage(&self, to: &Dir, bytes: &[u8], sync: bool) -> Result<OsString> {
        if !self.enabled {
            return to.stage(bytes, sync);
        }
        match self.target_mode(to) {
            Some(Some(mode)) => {
                if let Some(tmp) = self.reuse(to, bytes, mode, sync) {
                    return Ok(tmp);
                }
                to.stage(bytes, sync)
            }
            Some(None) => to.stage(bytes, sync),
            None => {
                let tmp = to.stage(bytes, sync)?;
                self.learn(to, &tmp);
                Ok(tmp)
            }
        }
    }

    /// A spare renamed to a staged name in `to` and rewritten with
    /// `bytes`; `None` when none was at hand or it failed (nothing left).
    /// It is opened and checked before it moves, and written through
    /// that descriptor once its new name is seen to hold the same file.
    fn reuse(&self, to: &Dir, bytes: &[u8], mode: u32, sync: bool) -> Option<OsString> {
        loop {
            let spare = self.names.lock().ok()?.pop()?;
            let Some(file) = self.open_spare(&spare) else {
                continue;
            };
            let tmp = to.stage_name();
            match self.dir.rename(&spare, to, &tmp) {
                Ok(()) => {}
                // Another process on a shared spool took it.
                Err(e) if crate::error::vanished(&e) => continue,
                Err(_) => return None,
            }
            let same = fstat(file.as_raw_fd())
                .ok()
                .filter(|st| to.stat(&tmp).is_ok_and(|e| e.ino == st.st_ino));
            let written = same.is_some_and(|st| rewrite(&file, &st, bytes, mode, sync).is_ok());
            if !written {
                let _ = to.unlink(&tmp);
                return None;
            }
            return Some(tmp);
        }
    }

    /// Opens a spare for writing if it is ours alone; one that is not is
    /// removed (a folder is only forgotten).
    fn open_spare(&self, spare: &OsStr) -> Option<std::fs::File> {
        let file = match self.dir.open_write(spare) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(nix::libc::EISDIR) => return None,
            Err(_) => {
                let _ = self.dir.unlink(spare);
                return None;
            }
        };
        if !ours(file.as_fd()) {
            let _ = self.dir.unlink(spare);
            return None;
        }
        Some(file)
    }

    /// `Some(mode)` once `to` is known: `Some(None)` when it never takes
    /// a spare.
    fn target_mode(&self, to: &Dir) -> Option<Option<u32>> {
        let targets = self.targets.lock().ok()?;
        let t = targets.iter().find(|t| t.id == to.id())?;
        Some(t.mode)
    }

    /// Learns, from the new file `tmp` just staged in `to`, what mode a
    /// spare must take there, or that none may go there.
    fn learn(&self, to: &Dir, tmp: &OsStr) {
        let same_fs = to.device() == self.dir.device();
        let mode = to
            .open_read(tmp)
            .ok()
            .filter(|f| same_fs && sys::xattr_names_len(f.as_raw_fd()).is_ok_and(|n| n == 0))
            .and_then(|f| fstat(f.as_raw_fd()).ok())
            .map(|st| st.st_mode & 0o7777);
        if let Ok(mut targets) = self.targets.lock() {
            if !targets.iter().any(|t| t.id == to.id()) {
                targets.push(Target { id: to.id(), mode });
            }
        }
    }
}

/// `bytes` as the whole content of `f` (whose status is `st`), in the
/// blocks it has, with the mode of a new file. Each change of the inode
/// is one more for the next flush to write: none is made for nothing.
fn rewrite(
    f: &std::fs::File,
    st: &FileStat,
    bytes: &[u8],
    mode: u32,
    sync: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    if st.st_mode & 0o7777 != mode {
        nix::sys::stat::fchmod(
            f.as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(mode),
        )?;
    }
    f.write_all_at(bytes, 0)?;
    if st.st_size > bytes.len() as i64 {
        f.set_len(bytes.len() as u64)?;
    }
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// A regular file with one link, of this user, small, without extended
/// attributes: nobody else can read it through another name or change it.
fn ours(file: BorrowedFd<'_>) -> bool {
    let Ok(st) = fstat(file.as_raw_fd()) else {
        return false;
    };
    plain(&st) && sys::xattr_names_len(file.as_raw_fd()).is_ok_and(|n| n == 0)
}

fn plain(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
        && st.st_nlink == 1
        && st.st_uid == nix::unistd::geteuid().as_raw()
        && st.st_size <= MAX_SIZE
}
