//! The one publish primitive: a dot-file in the target folder, write,
//! fsync, rename, fsync of the folder. A reader never sees half a file and
//! a crash never leaves a torn one. Every file hookwatch writes goes
//! through here; every reader ignores dot-files. How much is flushed is a
//! `Durability`, given by the caller: `hw-worker --no-fsync` passes
//! `Volatile` to what it publishes, every other writer `Durable`.

//! The one publish primitive: a dot-file in the target folder, write,
//! fsync, rename, fsync of the folder. A reader never sees half a file and
//! a crash never leaves a torn one. Every file hookwatch writes goes
//! through here; every reader ignores dot-files.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::fcntl::{renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};
use nix::NixPath;

use crate::error::{Error, Result};
use crate::spool::names::{self, Numbered};
use crate::sys;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a publish flushes what it wrote before it counts. Writes are
/// atomic for readers either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the file, rename, fsync the folder: survives a crash.
    #[default]
    Durable,
    /// Write and rename only (`--no-fsync`, throwaway spools): a crash
    /// may lose or tear what was not yet flushed by the kernel.
    Volatile,
}

impl Durability {
    pub fn flushes(self) -> bool {
        self == Durability::Durable
    }
}

/// Writes `name` in `dir` atomically, replacing what was there.
pub fn publish(
    dir: &Path,
    name: impl AsRef<OsStr>,
    bytes: &[u8],
    d: Durability,
) -> Result<PathBuf> {
    let target = dir.join(name.as_ref());
    let tmp = write_temp(dir, name.as_ref(), bytes, d.flushes())?;
    install(&tmp, &target)?;
    sync_dir(dir, d)?;
    Ok(target)
}

/// The first half of a publish: `bytes` in a dot-file beside `name`,
/// fsynced only when `sync` is set (a group commit syncs many at once).
/// `install` is the second half.
pub fn stage(dir: &Path, name: &OsStr, bytes: &[u8], sync: bool) -> Result<PathBuf> {
    write_temp(dir, name, bytes, sync)
}

/// Renames a staged file into place, replacing what was there; on
/// failure the staged file is removed.
pub fn install(tmp: &Path, target: &Path) -> Result<()> {
    std::fs::rename(tmp, target).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io2("cannot rename", tmp, target, e)
    })
}

/// Writes `name` in `dir` atomically unless it exists (then the error's
/// kind is `CannotCreate` and nothing was changed).
pub fn publish_new(dir: &Path, name: &str, bytes: &[u8], d: Durability) -> Result<PathBuf> {
    let target = dir.join(name);
    let tmp = write_temp(dir, name.as_ref(), bytes, d.flushes())?;
    let moved = rename_noreplace(&tmp, &target);
    if let Err(e) = moved {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io2("cannot publish", &tmp, &target, e));
    }
    sync_dir(dir, d)?;
    Ok(target)
}

/// Publishes `<stem>_<unix>.json`, or on a clash `<stem>_<unix>-2.json`,
/// `-3`…, and returns the name it took (dead letters are named so).
pub fn publish_numbered(
    dir: &Path,
    stem: &str,
    unix: u64,
    bytes: &[u8],
    d: Durability,
) -> Result<String> {
    let tmp = write_temp(dir, stem.as_ref(), bytes, d.flushes())?;
    for n in 1u32.. {
        let name = Numbered::new(stem, unix, n).format();
        let target = dir.join(&name);
        match rename_noreplace(&tmp, &target) {
            Ok(()) => {
                sync_dir(dir, d)?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => continue,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io2("cannot publish", &tmp, &target, e));
            }
        }
    }
    unreachable!("the loop returns")
}

/// Set once a file system refused RENAME_NOREPLACE (NFS, CephFS and 9P
/// accept no rename flags): from then on, link and unlink do the same.
static NO_RENAME_FLAGS: AtomicBool = AtomicBool::new(false);

/// rename(2) that fails with `AlreadyExists` instead of replacing. Where
/// the file system knows no RENAME_NOREPLACE, link(2) then unlink(2): the
/// classic NFS recipe, with the same outcome for a file (link refuses an
/// existing name; the inode, and so any flock on it, stays the same).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rename_noreplace_at(None, from, to)
}

/// `rename_noreplace` with names relative to the folder `dir` (the
/// current one when `None`).
fn rename_noreplace_at<P: ?Sized + NixPath>(
    dir: Option<RawFd>,
    from: &P,
    to: &P,
) -> io::Result<()> {
    if !NO_RENAME_FLAGS.load(Ordering::Relaxed) {
        match renameat2(dir, from, dir, to, RenameFlags::RENAME_NOREPLACE) {
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                NO_RENAME_FLAGS.store(true, Ordering::Relaxed);
            }
            other => return other.map_err(io::Error::from),
        }
    }
    link_then_unlink(dir, from, to)
}

fn link_then_unlink<P: ?Sized + NixPath>(dir: Option<RawFd>, from: &P, to: &P) -> io::Result<()> {
    linkat(dir, from, dir, to, AtFlags::empty())?;
    unlinkat(dir, from, UnlinkatFlags::NoRemoveDir).map_err(|e| {
        // Never leave the entry in two places: undo the link.
        let _ = unlinkat(dir, to, UnlinkatFlags::NoRemoveDir);
        io::Error::from(e)
    })
}

/// Makes the entries of `dir` durable.
pub fn sync_dir(dir: &Path, d: Durability) -> Result<()> {
    if !d.flushes() {
        return Ok(());
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot fsync folder", dir, e))
}

/// Flushes the file system that holds `path`: one flush makes a whole
/// batch of unsynced writes durable.
pub fn sync_filesystem(path: &Path, d: Durability) -> Result<()> {
    if !d.flushes() {
        return Ok(());
    }
    let f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f))
        .map_err(|e| Error::io("cannot sync the file system of", path, io::Error::from(e)))
}

fn write_temp(dir: &Path, name: &OsStr, bytes: &[u8], sync: bool) -> Result<PathBuf> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(names::staged(name, std::process::id(), n));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("cannot write", &tmp, e));
    }
    Ok(tmp)
}

/// Removes our temporary files older than `age` from `dir`: left by a
/// crash between write and rename, they would otherwise pile up. Returns
/// how many went.
pub fn remove_stale_temps(dir: &Path, age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| names::is_our_temp(n)) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age));
        if old && std::fs::remove_file(entry.path()).is_ok() {
            log::info!(file = entry.path().display().to_string(); "Removed a temporary file left by a crash: {name}");
            removed += 1;
        }
    }
    removed
}

/// Serializes `value` as one compact JSON line.
pub fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("JSON values always serialize");
    bytes.push(b'\n');
    bytes
}

/// A folder held open to publish many files into (the listener's
/// triggers): names relative to it spare the kernel a walk of the whole
/// path at every open and rename, and the process id is asked once.
pub struct Folder {
    path: PathBuf,
    fd: OwnedFd,
    pid: u32,
    durability: Durability,
}

impl Folder {
    pub fn open(path: &Path, durability: Durability) -> Result<Folder> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = sys::openat(None, path, flags, Mode::empty())
            .map_err(|e| Error::io("cannot open", path, e))?;
        Ok(Folder {
            path: path.to_path_buf(),
            fd,
            pid: std::process::id(),
            durability,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<stem>_<time>[-n].json` into this folder, unsynced (`sync` makes a
    /// burst durable), trying the numbers from `first` on (1 is the name
    /// without a number), so that a caller who remembers the last number
    /// it took need not try the taken ones again. Returns the name and its
    /// number.
    pub fn publish_numbered_unsynced(
        &self,
        stem: &str,
        time: u64,
        first: u32,
        bytes: &[u8],
    ) -> Result<(String, u32)> {
        let tmp = self.write_temp(stem, bytes)?;
        for n in first.max(1).. {
            let name = Numbered::new(stem, time, n).format();
            match self.rename_noreplace(tmp.as_os_str(), OsStr::new(&name)) {
                Ok(()) => return Ok((name, n)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => continue,
                Err(e) => {
                    let _ = unlinkat(
                        Some(self.raw()),
                        tmp.as_os_str(),
                        UnlinkatFlags::NoRemoveDir,
                    );
                    return Err(Error::io2(
                        "cannot publish",
                        &self.path.join(&tmp),
                        &self.path.join(&name),
                        e,
                    ));
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// `sync_filesystem` and `sync_dir` on the folder held.
    pub fn sync(&self) -> Result<()> {
        if !self.durability.flushes() {
            return Ok(());
        }
        nix::unistd::syncfs(self.raw())
            .map_err(|e| Error::io("cannot sync the file system of", &self.path, e.into()))?;
        nix::unistd::fsync(self.raw())
            .map_err(|e| Error::io("cannot fsync folder", &self.path, e.into()))
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `write_temp` relative to the folder, unsynced, under the same name
    /// (so `remove_stale_temps` knows it).
    fn write_temp(&self, name: &str, bytes: &[u8]) -> Result<std::ffi::OsString> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = names::staged(OsStr::new(name), self.pid, n);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
        let written = sys::openat(
            Some(self.raw()),
            tmp.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o640),
        )
        .and_then(|fd| File::from(fd).write_all(bytes));
        if let Err(e) = written {
            let _ = unlinkat(
                Some(self.raw()),
                tmp.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
            return Err(Error::io("cannot write", &self.path.join(&tmp), e));
        }
        Ok(tmp)
    }

    /// `rename_noreplace` within the folder.
    fn rename_noreplace(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        rename_noreplace_at(Some(self.raw()), from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Durability = Durability::Durable;

    #[test]
    fn publish_replaces_and_publish_new_refuses() {
        let dir = tempfile::tempdir().unwrap();
        publish(dir.path(), "a.json", b"1", D).unwrap();
        publish(dir.path(), "a.json", b"2", D).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"2");
        let err = publish_new(dir.path(), "a.json", b"3", D).unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::CannotCreate);
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn link_then_unlink_moves_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"1").unwrap();
        std::fs::write(&c, b"3").unwrap();
        link_then_unlink(None, a.as_path(), b.as_path()).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"1");
        let err = link_then_unlink(None, b.as_path(), c.as_path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&c).unwrap(), b"3");
        assert!(b.exists());
    }

    #[test]
    fn numbered_names_count_up_on_clash() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            publish_numbered(dir.path(), "t", 7, b"a", D).unwrap(),
            "t_7.json"
        );
        assert_eq!(
            publish_numbered(dir.path(), "t", 7, b"b", D).unwrap(),
            "t_7-2.json"
        );
    }

    #[test]
    fn a_folder_publishes_from_the_number_asked_and_skips_taken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::open(dir.path(), D).unwrap();
        let first = f.publish_numbered_unsynced("t", 7, 1, b"a").unwrap();
        assert_eq!(first, ("t_7.json".to_string(), 1));
        assert_eq!(
            f.publish_numbered_unsynced("t", 7, 1, b"b").unwrap(),
            ("t_7-2.json".to_string(), 2)
        );
        assert_eq!(
            f.publish_numbered_unsynced("t", 7, 3, b"c").unwrap(),
            ("t_7-3.json".to_string(), 3)
        );
        assert_eq!(std::fs::read(dir.path().join("t_7-3.json")).unwrap(), b"c");
        f.sync().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
