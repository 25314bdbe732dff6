//! A one-shot broadcast that threads can poll(2) on together with their
//! other file descriptors: once fired, its read end stays readable for
//! everyone. Used to say "stop now" to the watcher and to running tasks
//! without any of them polling a flag on a timer.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags};
use nix::unistd::{pipe2, write};

#[derive(Debug, Clone)]
pub struct Latch(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    fired: AtomicBool,
    read: OwnedFd,
    write: OwnedFd,
}

impl Latch {
    pub fn new() -> std::io::Result<Latch> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Latch(Arc::new(Inner {
            fired: AtomicBool::new(false),
            read,
            write,
        })))
    }

    /// Fires the latch; the first call wakes every poller, later ones do
    /// nothing.
    pub fn fire(&self) {
        if !self.0.fired.swap(true, Ordering::SeqCst) {
            // The byte is never read, so the read end stays readable.
            let _ = write(&self.0.write, b"!");
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Waits `delay` unless the latch fires first (then true).
    pub fn wait_timeout(&self, delay: std::time::Duration) -> bool {
        let at = std::time::Instant::now() + delay.min(std::time::Duration::from_secs(1 << 30));
        let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, crate::clock::poll_timeout(at));
        self.is_fired()
    }

    /// The descriptor to poll for POLLIN.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.read.as_fd()
    }
}
