//! A folder held open: every open, read, rename and unlink of a file in
//! it is relative to its descriptor (`*at()` calls), so that swapping the
//! folder for a symbolic link at any moment cannot make hookwatch read,
//! write or delete outside the spool (hookwatch(5), The root and its
//! folders). A worker holds its folders open from the start; a publish
//! into one is the publish primitive: a staged dot-file, written, flushed,
//! renamed into place, and the folder flushed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::fcntl::{renameat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};

use crate::error::{Error, Kind, Result};
use crate::spool::names::{self, Numbered};
use crate::spool::publish::Durability;
use crate::sys;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Set once a file system refused RENAME_NOREPLACE (NFS, CephFS, 9P and
/// GlusterFS accept no rename flags): from then on, link and unlink do
/// the same.
static NO_RENAME_FLAGS: AtomicBool = AtomicBool::new(false);

/// A folder held by its descriptor.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    /// Device and inode: the folder held, whatever its path names now.
    id: (u64, u64),
}

/// What an entry is, by `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: SFlag,
    pub size: u64,
    pub ino: u64,
    pub uid: u32,
    pub nlink: u64,
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i128,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        self.kind == SFlag::S_IFREG
    }

    /// What a non-regular entry is, for a dead letter.
    pub fn irregular(&self) -> Option<&'static str> {
        match self.kind {
            SFlag::S_IFREG => None,
            SFlag::S_IFLNK => Some("symlink"),
            SFlag::S_IFDIR => Some("folder"),
            SFlag::S_IFIFO => Some("fifo"),
            SFlag::S_IFSOCK => Some("socket"),
            SFlag::S_IFCHR | SFlag::S_IFBLK => Some("device"),
            _ => Some("unknown file type"),
        }
    }

    pub fn modified(&self) -> std::time::SystemTime {
        let ns = self.mtime_ns.max(0) as u128;
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }
}

/// A folder that is a symbolic link (or no folder) is a configuration
/// error: whoever made it so could lead the worker out of the spool.
fn open_error(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(nix::libc::ELOOP | nix::libc::ENOTDIR) => Error::new(
            Kind::Config,
            format!(
                "refusing {}: not a folder of its own (a symlink?)",
                path.display()
            ),
        ),
        _ => Error::io("cannot open", path, e),
    }
}

// st_nlink is u32 on some targets (aarch64), u64 on others.
#[allow(clippy::unnecessary_cast)]
fn entry_of(st: &FileStat) -> Entry {
    Entry {
        kind: SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT,
        size: st.st_size.max(0) as u64,
        ino: st.st_ino,
        uid: st.st_uid,
        nlink: st.st_nlink as u64,
        mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
    }
}

impl Dir {
    /// Holds the folder at `path`, refusing a symbolic link in its last
    /// component: a folder of the spool must be a folder of its own.
    pub fn open(path: &Path) -> Result<Dir> {
        Dir::open_flags(path, OFlag::O_NOFOLLOW)
    }

    /// Holds the folder at `path`, following a symbolic link (the spool's
    /// own root, or a folder a tool is told to use).
    pub fn open_following(path: &Path) -> Result<Dir> {
        Dir::open_flags(path, OFlag::empty())
    }

    fn open_flags(path: &Path, extra: OFlag) -> Result<Dir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | extra;
        let fd = sys::openat(None, path, flags, Mode::empty()).map_err(|e| open_error(path, e))?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| Error::io("cannot stat", path, e.into()))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            id: (st.st_dev, st.st_ino),
        })
    }

    /// The folder below this one named `name`, held the same way.
    pub fn sub(&self, name: &str) -> Result<Dir> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let fd = sys::openat(Some(self.raw()), name, flags, Mode::empty())
            .map_err(|e| open_error(&path, e))?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| Error::io("cannot stat", &path, e.into()))?;
        Ok(Dir {
            fd,
            path,
            id: (st.st_dev, st.st_ino),
        })
    }

    /// The path it was opened at (for messages, and for what others are
    /// told, like `HW_TASK_FILE`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in it, for messages.
    pub fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// Device and inode of the folder held.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    /// The device it is on: one flush of a file system covers its folders.
    pub fn device(&self) -> u64 {
        self.id.0
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether its path still names this folder (and not a symbolic link
    /// or another folder put in its place).
    pub fn is_at_path(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && (m.dev(), m.ino()) == self.id
        })
    }

    /// The names of its entries (not `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let fd = nix::unistd::dup(self.raw())?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }

    /// `lstat` of an entry: never follows a symbolic link.
    pub fn stat(&self, name: &OsStr) -> io::Result<Entry> {
        let st = fstatat(Some(self.raw()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(entry_of(&st))
    }

    /// Opens an entry for reading without following a symbolic link or
    /// blocking on a FIFO.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        sys::openat(Some(self.raw()), name, flags, Mode::empty()).map(File::from)
    }

    /// Opens an entry to hold a lock on, created (0640 less umask) when
    /// missing: read and write where allowed (a network file system's
    /// flock may need it), else read only. Never follows a symbolic link.
    pub fn open_lock(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        let mode = Mode::from_bits_truncate(0o640);
        match sys::openat(Some(self.raw()), name, flags | OFlag::O_RDWR, mode) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                sys::openat(Some(self.raw()), name, flags | OFlag::O_RDONLY, mode)
            }
            other => other,
        }
        .map(File::from)
    }

    /// Reads a regular file of at most `max` bytes: by the bytes actually
    /// read, so a file that grows while it is read is still refused.
    pub fn read_bounded(&self, name: &OsStr, max: u64) -> io::Result<Vec<u8>> {
        let file = self.open_read(name)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        read_at_most(&file, max)
    }

    /// Renames `name` to `to_name` in `to`, replacing what is there.
    pub fn rename(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        renameat(Some(self.raw()), name, Some(to.raw()), to_name).map_err(io::Error::from)
    }

    /// Renames `name` to `to_name` in `to`, failing with `AlreadyExists`
    /// instead of replacing. Where the file system knows no
    /// RENAME_NOREPLACE, link(2) then unlink(2): the classic NFS recipe,
    /// with the same outcome for a file (link refuses an existing name; the
    /// inode, and so any flock on it, stays the same).
    pub fn rename_noreplace(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        let (from_fd, to_fd) = (Some(self.raw()), Some(to.raw()));
        if !NO_RENAME_FLAGS.load(Ordering::Relaxed) {
            match renameat2(from_fd, name, to_fd, to_name, RenameFlags::RENAME_NOREPLACE) {
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                    NO_RENAME_FLAGS.store(true, Ordering::Relaxed);
                }
                other => return other.map_err(io::Error::from),
            }
        }
        self.link_then_unlink(name, to, to_name)
    }

    /// A second name `to_name` in `to` for `name` here (link(2)).
    pub fn link(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        linkat(
            Some(self.raw()),
            name,
            Some(to.raw()),
            to_name,
            AtFlags::empty(),
        )
        .map_err(io::Error::from)
    }

    fn link_then_unlink(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        let (from_fd, to_fd) = (Some(self.raw()), Some(to.raw()));
        linkat(from_fd, name, to_fd, to_name, AtFlags::empty())?;
        unlinkat(from_fd, name, UnlinkatFlags::NoRemoveDir).map_err(|e| {
            // Never leave the entry in two places: undo the link.
            let _ = unlinkat(to_fd, to_name, UnlinkatFlags::NoRemoveDir);
            io::Error::from(e)
        })
    }

    /// Removes an entry (not a folder).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        unlinkat(Some(self.raw()), name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
    }

    /// Makes its entries durable.
    pub fn sync(&self, d: Durability) -> Result<()> {
        if !d.flushes() {
            return Ok(());
        }
        nix::unistd::fsync(self.raw())
            .map_err(|e| Error::io("cannot fsync folder", &self.path, e.into()))
    }

    /// Flushes the whole file system it is on: one flush makes a batch of
    /// unsynced writes durable.
    pub fn sync_filesystem(&self, d: Durability) -> Result<()> {
        if !d.flushes() {
            return Ok(());
        }
        nix::unistd::syncfs(self.raw())
            .map_err(|e| Error::io("cannot sync the file system of", &self.path, e.into()))
    }

    /// The first half of a publish: `bytes` in a new dot-file of ours,
    /// flushed when `sync` is set; returns its name. Its name comes from a
    /// counter, not from the target, so it is never too long.
    pub fn stage(&self, bytes: &[u8], sync: bool) -> Result<OsString> {
        let tmp = self.stage_name();
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let written = sys::openat(
            Some(self.raw()),
            tmp.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o640),
        )
        .map(File::from)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = written {
            let _ = self.unlink(&tmp);
            return Err(Error::io("cannot write", &self.join(&tmp), e));
        }
        Ok(tmp)
    }

    /// A new name for a staged dot-file of this process.
    pub fn stage_name(&self) -> OsString {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        OsString::from(names::staged(host_tag(), std::process::id(), n))
    }

    /// Opens an existing entry for writing, never following a symbolic
    /// link nor blocking on a FIFO.
    pub fn open_write(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        sys::openat(Some(self.raw()), name, flags, Mode::empty()).map(File::from)
    }

    /// The second half: the staged file renamed into place, replacing what
    /// was there; on failure the staged file is removed.
    pub fn install(&self, tmp: &OsStr, name: &OsStr) -> Result<()> {
        self.rename(tmp, self, name).map_err(|e| {
            let _ = self.unlink(tmp);
            Error::io2("cannot rename", &self.join(tmp), &self.join(name), e)
        })
    }

    /// Writes `name` atomically, replacing what was there.
    pub fn publish(&self, name: &OsStr, bytes: &[u8], d: Durability) -> Result<()> {
        let tmp = self.stage(bytes, d.flushes())?;
        self.install(&tmp, name)?;
        self.sync(d)
    }

    /// Writes the same bytes atomically under each of `names`, replacing
    /// what was there: one file, flushed once, and a link for each other
    /// name, so that a heartbeat's two names cost the flushes of one file
    /// (docs/performance.md: idle wake-ups). Where links fail, a copy.
    pub fn publish_each(&self, names: &[&OsStr], bytes: &[u8], d: Durability) -> Result<()> {
        let Some((last, others)) = names.split_last() else {
            return Ok(());
        };
        let tmp = self.stage(bytes, d.flushes())?;
        for name in others {
            let copy = self.stage_name();
            let copy = match self.link(&tmp, self, &copy) {
                Ok(()) => Ok(copy),
                Err(_) => self.stage(bytes, d.flushes()),
            }
            .and_then(|copy| self.install(&copy, name));
            if let Err(e) = copy {
                let _ = self.unlink(&tmp);
                return Err(e);
            }
        }
        self.install(&tmp, last)?;
        self.sync(d)
    }

    /// Writes `name` atomically unless it exists (then the error's kind
    /// is `CannotCreate` and nothing was changed).
    pub fn publish_new(&self, name: &OsStr, bytes: &[u8], d: Durability) -> Result<()> {
        let tmp = self.stage(bytes, d.flushes())?;
        if let Err(e) = self.rename_noreplace(&tmp, self, name) {
            let _ = self.unlink(&tmp);
            return Err(Error::io2(
                "cannot publish",
                &self.join(&tmp),
                &self.join(name),
                e,
            ));
        }
        self.sync(d)
    }

    /// Publishes `<stem>_<time>.json`, or on a clash `-2`, `-3`… after
    /// the time, trying the numbers from `first` on (a caller who
    /// remembers the last number taken need not try the taken ones
    /// again); returns the name and its number. Flushed as `d` says, the
    /// folder only when `sync_folder` (a burst is synced at its end).
    pub fn publish_numbered(
        &self,
        stem: &str,
        time: u64,
        first: u32,
        bytes: &[u8],
        d: Durability,
        sync_folder: bool,
    ) -> Result<(String, u32)> {
        let tmp = self.stage(bytes, d.flushes() && sync_folder)?;
        for n in first.max(1).. {
            let name = Numbered::new(stem, time, n).format();
            match self.rename_noreplace(&tmp, self, OsStr::new(&name)) {
                Ok(()) => {
                    if sync_folder {
                        self.sync(d)?;
                    }
                    return Ok((name, n));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => continue,
                Err(e) => {
                    let _ = self.unlink(&tmp);
                    return Err(Error::io2(
                        "cannot publish",
                        &self.join(&tmp),
                        &self.join(&name),
                        e,
                    ));
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Removes our staging files left by a crash: those of a process that
    /// is gone (by the pid in their name), and any older than `age`.
    /// Returns how many went.
    pub fn remove_stale_temps(&self, age: std::time::Duration) -> usize {
        let Ok(entries) = self.names() else { return 0 };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for name in entries {
            let Some(text) = name.to_str() else { continue };
            let Some((host, pid)) = names::temp_owner(text) else {
                continue;
            };
            let here = host == Some(host_tag());
            let gone = here && pid != std::process::id() && !process_alive(pid);
            let old = self
                .stat(&name)
                .is_ok_and(|e| now.duration_since(e.modified()).is_ok_and(|d| d > age));
            if (gone || old) && self.unlink(&name).is_ok() {
                log::info!(file = self.join(&name).display().to_string(); "Removed a temporary file left by a crash: {text}");
                removed += 1;
            }
        }
        removed
    }
}

/// This host's tag in staged names, asked once.
pub(crate) fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let host = nix::unistd::gethostname().unwrap_or_default();
        names::host_tag(&host.to_string_lossy())
    })
}

/// Whether a process of that id exists (on this host).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

/// Reads at most `max` bytes; more is an `InvalidData` "too large", by
/// the bytes actually read (a file that grew after a size check).
pub fn read_at_most(file: &File, max: u64) -> io::Result<Vec<u8>> {
    let len = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::with_capacity(len.min(max).min(1 << 24) as usize + 1);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Durability = Durability::Durable;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn link_then_unlink_moves_and_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("a"), b"1").unwrap();
        std::fs::write(tmp.path().join("c"), b"3").unwrap();
        dir.link_then_unlink(os("a"), &dir, os("b")).unwrap();
        assert!(!tmp.path().join("a").exists());
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"1");
        let err = dir.link_then_unlink(os("b"), &dir, os("c")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(tmp.path().join("c")).unwrap(), b"3");
        assert!(tmp.path().join("b").exists());
    }

    #[test]
    fn numbered_publishes_start_from_the_number_asked_and_skip_taken_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let f = Dir::open(tmp.path()).unwrap();
        let publish = |first, bytes| f.publish_numbered("t", 7, first, bytes, D, false).unwrap();
        assert_eq!(publish(1, b"a"), ("t_7.json".to_string(), 1));
        assert_eq!(publish(1, b"b"), ("t_7-2.json".to_string(), 2));
        assert_eq!(publish(3, b"c"), ("t_7-3.json".to_string(), 3));
        assert_eq!(std::fs::read(tmp.path().join("t_7-3.json")).unwrap(), b"c");
        f.sync_filesystem(D).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_symlink_is_not_a_folder_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        let err = Dir::open(&tmp.path().join("link")).unwrap_err();
        assert_eq!(err.kind, Kind::Config);
        assert!(Dir::open_following(&tmp.path().join("link")).is_ok());
        let held = Dir::open(tmp.path()).unwrap();
        assert!(held.sub("link").is_err());
        assert!(held.sub("real").unwrap().is_at_path());
    }

    #[test]
    fn a_held_folder_swapped_for_a_link_is_still_the_folder_held() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let held = Dir::open(&tmp.path().join("d")).unwrap();
        std::fs::rename(tmp.path().join("d"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("d")).unwrap();
        assert!(!held.is_at_path());
        held.publish(os("x.json"), b"{}", D).unwrap();
        assert!(tmp.path().join("moved/x.json").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn reads_are_bounded_by_the_bytes_read() {
        let tmp = tempfile::tempdir().unwrap();
        let held = Dir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("f"), vec![b'x'; 100]).unwrap();
        assert_eq!(held.read_bounded(os("f"), 100).unwrap().len(), 100);
        let err = held.read_bounded(os("f"), 99).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
