//! The one module with `unsafe` code: the few system calls that nix does
//! not wrap, or wraps without taking ownership of what they return, or
//! (flock) wraps in a type whose drop can panic a daemon. Each
//! is a small safe function here, with the reason it is sound; the rest of
//! the crate denies `unsafe` altogether.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::Mode;
use nix::NixPath;

/// openat(2), the descriptor owned at once (nix 0.29 returns a raw one).
pub fn openat<P: ?Sized + NixPath>(
    dir: Option<RawFd>,
    path: &P,
    flags: OFlag,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::openat(dir, path, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks every descriptor from 3 up close-on-exec: those this process
/// inherited (from a shell, a supervisor) must not reach the agents it
/// starts. Its own are opened close-on-exec already. Called once, before
/// any thread starts.
pub fn close_inherited_on_exec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range(2) takes three integers and touches no memory;
    // with CLOSE_RANGE_CLOEXEC it only sets a flag on each descriptor.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return;
    }
    // Before Linux 5.11: each descriptor listed in /proc/self/fd.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number changes only its flags;
        // on one that was closed meanwhile (the listing's own) it fails.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// A pidfd for a child (Linux 5.3 and later), to poll(2) for its exit
/// together with its pipes; `None` on older kernels.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes two integers and returns a new
    // descriptor or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a descriptor that we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reaps the exited child `pid` and returns the CPU time it used (user
/// and system), which only wait4(2) reports per child.
pub fn reap(pid: i32) -> Option<Duration> {
    let mut status = 0;
    // SAFETY: rusage is plain data, valid when zeroed, which wait4 fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into the two valid pointers given.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc <= 0 {
        return None;
    }
    let secs =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) * 1000) as u32);
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// One resource limit to set in a child before it runs its program.
#[derive(Debug, Clone, Copy)]
pub struct ChildLimit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

/// Sets these resource limits in the child between fork and exec. Nothing
/// else runs there: the limits are computed beforehand, so the child only
/// calls setrlimit(2), which is async-signal-safe and allocates nothing.
pub fn limits_before_exec(command: &mut Command, limits: Vec<ChildLimit>) {
    if limits.is_empty() {
        return;
    }
    // SAFETY: the closure only reads the vector moved into it (no
    // allocation, no lock) and calls setrlimit(2), which is safe to call
    // between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for l in &limits {
                setrlimit(l.resource, l.soft, l.hard)?;
            }
            Ok(())
        });
    }
}

/// How many bytes the names of a file's extended attributes take
/// (flistxattr(2)): 0 when it has none. nix does not wrap it.
pub fn xattr_names_len(fd: RawFd) -> io::Result<usize> {
    // SAFETY: with a null buffer and a size of 0, flistxattr(2) writes
    // nothing and only returns the size the names would need.
    let n = unsafe { libc::flistxattr(fd, std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Makes this process the child subreaper of its descendants
/// (prctl(2) PR_SET_CHILD_SUBREAPER): a process orphaned below it (an
/// agent's background child whose parent exited) becomes its child, to
/// be reaped (the agent module's reaper), instead of going to PID 1 (where, in a
/// container, there may be nothing that reaps it).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes integers only and
    // changes one flag of this process; it touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A file under a non-blocking `flock(2)` of ours. The lock belongs to the
/// open file: closing it (dropping this) is what releases it. Unlike nix's
/// `Flock`, whose drop unlocks explicitly and panics when that fails, this
/// never panics: on a network mount that has gone away, unlocking answers
/// ENOTCONN, and the server has already dropped the lock anyway.
#[derive(Debug)]
pub struct Locked(std::fs::File);

impl Locked {
    /// An exclusive lock, or the file back with why not (EWOULDBLOCK: a
    /// live process holds it).
    pub fn exclusive(file: std::fs::File) -> Result<Locked, (std::fs::File, nix::errno::Errno)> {
        Locked::take(file, libc::LOCK_EX)
    }

    /// A shared lock, as `exclusive`.
    pub fn shared(file: std::fs::File) -> Result<Locked, (std::fs::File, nix::errno::Errno)> {
        Locked::take(file, libc::LOCK_SH)
    }

    fn take(file: std::fs::File, how: i32) -> Result<Locked, (std::fs::File, nix::errno::Errno)> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own, for as long as the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
        match nix::errno::Errno::result(rc) {
            Ok(_) => Ok(Locked(file)),
            Err(e) => Err((file, e)),
        }
    }
}

impl std::ops::Deref for Locked {
    type Target = std::fs::File;

    fn deref(&self) -> &std::fs::File {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Locked;

    #[test]
    fn a_lock_excludes_another_open_and_goes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || std::fs::File::create(&path).unwrap();
        let held = Locked::exclusive(open()).unwrap();
        let (_, why) = Locked::shared(open()).unwrap_err();
        assert_eq!(why, nix::errno::Errno::EWOULDBLOCK);
        drop(held);
        assert!(Locked::exclusive(open()).is_ok());
    }
}
