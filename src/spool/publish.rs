//! The one publish primitive: a dot-file in the target folder, write,
//! fsync, rename, fsync of the folder. A reader never sees half a file and
//! a crash never leaves a torn one. Every file hookwatch writes goes
//! through here (or through a held `Dir`, which does the same relative to
//! its descriptor); every reader ignores dot-files. How much is flushed is
//! a `Durability`, given by the caller: `hw-worker --no-fsync` passes
//! `Volatile` to what it publishes, every other writer `Durable`.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::spool::dir::Dir;

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

/// Writes `name` in the folder `dir` atomically, replacing what was there.
pub fn publish(
    dir: &Path,
    name: impl AsRef<OsStr>,
    bytes: &[u8],
    d: Durability,
) -> Result<PathBuf> {
    Dir::open_following(dir)?.publish(name.as_ref(), bytes, d)?;
    Ok(dir.join(name.as_ref()))
}

/// Writes `name` in `dir` atomically unless it exists (then the error's
/// kind is `CannotCreate` and nothing was changed).
pub fn publish_new(dir: &Path, name: &str, bytes: &[u8], d: Durability) -> Result<PathBuf> {
    Dir::open_following(dir)?.publish_new(name.as_ref(), bytes, d)?;
    Ok(dir.join(name))
}

/// rename(2) that fails with `AlreadyExists` instead of replacing (see
/// `Dir::rename_noreplace`), for two paths.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (from_dir, from_name) = parent_of(from)?;
    let (to_dir, to_name) = parent_of(to)?;
    from_dir.rename_noreplace(from_name, &to_dir, to_name)
}

/// The folder holding `path`, held, and the name in it.
fn parent_of(path: &Path) -> io::Result<(Dir, &OsStr)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let held = Dir::open_following(dir).map_err(|e| {
        let kind = e.io_error().map_or(io::ErrorKind::Other, io::Error::kind);
        io::Error::new(kind, e.to_string())
    })?;
    Ok((held, name))
}

/// Makes the entries of `dir` durable.
pub fn sync_dir(dir: &Path, d: Durability) -> Result<()> {
    if !d.flushes() {
        return Ok(());
    }
    Dir::open_following(dir)?.sync(d)
}

/// Flushes the file system that holds the folder `dir`.
pub fn sync_filesystem(dir: &Path, d: Durability) -> Result<()> {
    if !d.flushes() {
        return Ok(());
    }
    Dir::open_following(dir)?.sync_filesystem(d)
}

/// Serializes `value` as one compact JSON line.
pub fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("JSON values always serialize");
    bytes.push(b'\n');
    bytes
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
    fn numbered_names_count_up_on_clash() {
        let dir = tempfile::tempdir().unwrap();
        let dir = Dir::open(dir.path()).unwrap();
        let first = dir.publish_numbered("t", 7, 1, b"a", D, true).unwrap();
        assert_eq!(first.0, "t_7.json");
        let second = dir.publish_numbered("t", 7, 1, b"b", D, true).unwrap();
        assert_eq!(second.0, "t_7-2.json");
    }
}
