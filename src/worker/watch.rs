//! Watching a worker's tasks folder with raw inotify. inotify only says
//! when to look; the folder says what is there. A close-after-write or a
//! rename into the folder names a candidate, and so does a file created
//! but not closed in the same batch (link(2) brings a whole file with
//! nothing after its creation); an overflowed queue, or the
//! folder removed or replaced, means "rescan everything" (and, for the
//! latter, a fresh watch). One thread owns the inotify descriptor.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchMask, Watches};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};
use crate::latch::Latch;
use crate::spool::names::{cancel_request_id, is_task_file};

/// What the watcher tells the dispatcher.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// These task files were written or moved in.
    Names(Vec<OsString>),
    /// These regular task files were created and not (yet) closed after
    /// writing: being written, or linked in whole by link(2), which
    /// raises no other event.
    Created(Vec<OsString>),
    /// hw-dlq asks that these running tasks be stopped (their ids).
    Cancel(Vec<String>),
    /// Events were lost: list the folder.
    Rescan,
    /// The folder was removed or replaced: recreate it, watch it again,
    /// list it.
    Rewatch,
}

const MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

pub struct Watcher {
    dir: PathBuf,
    watches: Watches,
    /// The inode watched now, to notice a folder replaced behind our back.
    inode: (u64, u64),
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Adds the watch (before the caller's first scan, so nothing written
    /// in between is missed) and starts the thread that reads events.
    pub fn start(dir: &Path, notices: Sender<Notice>, stop: Latch) -> Result<Watcher> {
        let mut inotify =
            Inotify::init().map_err(|e| Error::io("cannot start inotify for", dir, e))?;
        let watches = inotify.watches();
        let mut watcher = Watcher {
            dir: dir.to_path_buf(),
            watches,
            inode: (0, 0),
            thread: None,
        };
        watcher.rewatch()?;
        let folder = dir.to_path_buf();
        let thread = thread::Builder::new()
            .name("watch".into())
            .spawn(move || read_loop(&folder, &mut inotify, &notices, &stop))
            .map_err(|e| Error::io("cannot start the watch thread for", dir, e))?;
        watcher.thread = Some(thread);
        Ok(watcher)
    }

    /// Watches the folder now at the path (after it was replaced).
    pub fn rewatch(&mut self) -> Result<()> {
        self.watches
            .add(&self.dir, MASK)
            .map_err(|e| Error::io("cannot watch", &self.dir, e))?;
        self.inode = inode(&self.dir).unwrap_or_default();
        Ok(())
    }

    /// True when the path no longer names the folder being watched.
    pub fn replaced(&self) -> bool {
        inode(&self.dir).ok() != Some(self.inode)
    }

    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

fn inode(dir: &Path) -> io::Result<(u64, u64)> {
    std::fs::metadata(dir).map(|m| (m.dev(), m.ino()))
}

fn read_loop(dir: &Path, inotify: &mut Inotify, notices: &Sender<Notice>, stop: &Latch) {
    let mut buffer = vec![0u8; 64 * 1024];
    while !stop.is_fired() {
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.fd(), PollFlags::POLLIN),
        ];
        if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            if e != nix::errno::Errno::EINTR {
                log::error!("inotify poll failed: {e}");
                return;
            }
        }
        loop {
            match inotify.read_events(&mut buffer) {
                Ok(events) => {
                    let mut names = Vec::new();
                    let mut created = Vec::new();
                    let mut cancels = Vec::new();
                    let mut notice = None;
                    for event in events {
                        if event.mask.contains(EventMask::Q_OVERFLOW) {
                            notice = notice.or(Some(Notice::Rescan));
                        } else if event.mask.intersects(
                            EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF,
                        ) {
                            notice = Some(Notice::Rewatch);
                        } else if let Some(id) =
                            event.name.and_then(|n| cancel_request_id(n.to_str()?))
                        {
                            if !event.mask.contains(EventMask::CREATE) {
                                cancels.push(id.to_string());
                            }
                        } else if let Some(name) = event.name.filter(|n| is_task_file(n)) {
                            // A regular file created is being written (its
                            // close-after-write will come) or was linked in.
                            // Any other kind of entry never gets a close.
                            let create = event.mask.contains(EventMask::CREATE);
                            if create && is_regular(&dir.join(name)) {
                                created.push(name.to_os_string());
                            } else {
                                names.push(name.to_os_string());
                            }
                        }
                    }
                    let closed: HashSet<&OsString> = names.iter().collect();
                    created.retain(|n| !closed.contains(n));
                    let sent = (names.is_empty() || notices.send(Notice::Names(names)).is_ok())
                        && (created.is_empty() || notices.send(Notice::Created(created)).is_ok())
                        && (cancels.is_empty() || notices.send(Notice::Cancel(cancels)).is_ok())
                        && notice.map_or(true, |n| notices.send(n).is_ok());
                    if !sent {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("cannot read inotify events: {e}");
                    let _ = notices.send(Notice::Rescan);
                    break;
                }
            }
        }
    }
}
