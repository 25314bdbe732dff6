//! What hw-worker checks and prepares before its threads start: the
//! folders it writes, who else may write its tasks folder, that
//! `.active/` and `.deferred/` are folders of their own, the locks the
//! Python watcher left behind, and whether its file system needs rescans
//! because inotify cannot see other hosts.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::spool::names::python_lock_task;
use crate::spool::WorkerDirs;
use crate::worker::config::WorkerConfig;

/// File systems on which inotify misses other hosts' writes.
const NETWORK_FS_POLL: Duration = Duration::from_secs(2);

/// Creates the worker's folders, refuses a spool it must not use, and
/// holds the folders (refusing one that is a symbolic link where the
/// worker writes: `.active/`, `.deferred/`, `results/<w>/`, `dlq/<w>/`…).
pub(super) fn prepare_spool(config: &WorkerConfig) -> Result<WorkerDirs> {
    let spool = &config.spool;
    let new_root = !spool.root.exists();
    spool.create_worker_dirs(&config.name)?;
    if new_root {
        log::warn!(root = spool.root.display().to_string(); "Created the spool root {}: it did not exist (a typo in -r or HW_ROOT?)", spool.root.display());
    }
    check_access(&spool.pending_dir(&config.name), config.allow_shared_spool)?;
    let dirs = spool.hold(&config.name)?;
    remove_stale_python_locks(&spool.pending_dir(&config.name));
    Ok(dirs)
}

/// Removes the `<name>.json.lock` files that the Python watcher left in
/// the tasks folder `dir`: it held one beside each task it ran and
/// removed both when done, so a lock whose task file is gone is left over
/// from a run cut short by the switch to hookwatch. A lock whose task file
/// is there (as anything) is kept; one that is not a regular file is left
/// alone (never followed) and logged. Returns how many were removed.
pub(super) fn remove_stale_python_locks(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(task) = name.to_str().and_then(python_lock_task) else {
            continue;
        };
        let lock = dir.join(&name);
        match fs::symlink_metadata(dir.join(task)) {
            Err(e) if crate::error::vanished(&e) => {}
            // There, or unknowable: the lock may still mean something.
            _ => continue,
        }
        match fs::symlink_metadata(&lock) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                log::warn!(file = lock.display().to_string();
                    "Left alone: a stale lock of the Python watcher that is not a regular file");
                continue;
            }
            Err(_) => continue,
        }
        // unlink(2) removes the name itself, never what a link points to.
        match fs::remove_file(&lock) {
            Ok(()) => {
                removed += 1;
                log::info!(file = lock.display().to_string();
                    "Removed a stale lock of the Python watcher (its task file is gone)");
            }
            Err(e) if crate::error::vanished(&e) => {}
            Err(e) => log::warn!("{}", Error::io("cannot remove", &lock, e)),
        }
    }
    removed
}

/// Checks that `sub` (relative, plain names) is a folder below `base`
/// reached without following a symlink; `Err` says what it is instead.
pub(super) fn folder_below(base: &Path, sub: &Path) -> std::result::Result<(), String> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
    let mut dir = crate::sys::openat(
        None,
        base,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot be reached: {base:?}: {e}"))?;
    for part in sub.iter() {
        dir =
            crate::sys::openat(Some(dir.as_raw_fd()), part, flags, Mode::empty()).map_err(|e| {
                match e.raw_os_error() {
                    Some(nix::libc::ENOENT) => "does not exist below --workdir".to_string(),
                    Some(nix::libc::ELOOP | nix::libc::ENOTDIR) => {
                        "is not a folder below --workdir (a symlink?)".to_string()
                    }
                    _ => format!("cannot be opened: {e}"),
                }
            })?;
    }
    Ok(())
}

/// `--poll`, or where inotify is off or blind to other hosts' writes, a
/// rescan every 2 s: then rescans are the only way to see new tasks.
pub(super) fn poll_interval(config: &WorkerConfig) -> Option<Duration> {
    let pending = config.spool.pending_dir(&config.name);
    let blind = !config.inotify || network_fs(&pending);
    config.poll.or_else(|| blind.then_some(NETWORK_FS_POLL))
}

/// Whoever can write the tasks folder can make this worker run its agent
/// with any description: refuse a folder that strangers may write to (by
/// its mode, or because another user owns it) unless told it is meant.
fn check_access(dir: &Path, allowed: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).map_err(|e| Error::io("cannot stat", dir, e))?;
    let me = nix::unistd::geteuid().as_raw();
    let mut found = Vec::new();
    if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
        found.push(format!(
            "writable by others without the sticky bit (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    if meta.uid() != me && meta.uid() != 0 {
        found.push(format!(
            "owned by uid {}, neither this user ({me}) nor root",
            meta.uid()
        ));
    }
    if found.is_empty() {
        if meta.mode() & 0o020 != 0 && meta.mode() & 0o1000 == 0 {
            log::warn!(folder = dir.display().to_string(); "The tasks folder is group-writable (mode {:o}): every member of group {} can hand this worker tasks", meta.mode() & 0o7777, meta.gid());
        }
        return Ok(());
    }
    let found = found.join(", and ");
    if allowed {
        log::warn!(folder = dir.display().to_string(); "Shared tasks folder allowed: {found}");
        return Ok(());
    }
    Err(Error::config(format!(
        "refusing the tasks folder {}: {found} (--allow-shared-spool starts anyway)",
        dir.display()
    )))
}

/// statfs: NFS, CIFS/SMB, FUSE, and other file systems whose changes by
/// other hosts inotify does not see.
pub(super) fn network_fs(dir: &Path) -> bool {
    const NETWORK: [i64; 8] = [
        0x6969,      // NFS
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x517B,      // SMB
        0x6573_5546, // FUSE (GlusterFS, s3fs, sshfs…)
        0x0102_1997, // 9P
        0x00C3_6400, // CephFS
        0x0BD0_0BD0, // Lustre
    ];
    nix::sys::statfs::statfs(dir).is_ok_and(|s| NETWORK.contains(&{ s.filesystem_type().0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_locks_without_their_task_file_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let touch = |n: &str| fs::write(d.join(n), "").unwrap();
        touch("gone.json.lock");
        touch("here.json");
        touch("here.json.lock");
        touch("other.lock");
        std::os::unix::fs::symlink(d.join("here.json"), d.join("link.json.lock")).unwrap();
        fs::create_dir(d.join("dir.json.lock")).unwrap();
        assert_eq!(remove_stale_python_locks(d), 1);
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "dir.json.lock",
                "here.json",
                "here.json.lock",
                "link.json.lock",
                "other.lock"
            ]
        );
        assert_eq!(remove_stale_python_locks(&d.join("missing")), 0);
    }
}
