//! Which instance of its worker name this process is (hookwatch(5),
//! Heartbeat): several processes of one name, on several hosts or on one,
//! each write their own heartbeat `<worker>@<instance>.json`, so that a
//! dead host no longer hides behind a live one. The instance is the host
//! tag, then `.2`, `.3`… for a second or third process of the name on the
//! same host: the first slot whose lock `.<worker>@<instance>.lock` no
//! live process holds (a held lock means alive). Taking a slot, a process
//! is the successor of every dead instance of its host: it removes their
//! heartbeats (the other hosts' are left to `hw-status
//! --prune-older-than`).

use std::ffi::OsString;

use nix::errno::Errno;

use crate::model::heartbeat::hostname;
use crate::spool::dir::Dir;
use crate::spool::names::{
    heartbeat_instance, host_tag, instance_heartbeat_file, instance_lock, instance_name,
};
use crate::sys::Locked;

/// Slots tried on one host before giving up on locks.
const SLOTS: u32 = 64;

#[derive(Debug)]
pub(super) struct Instance {
    pub name: String,
    /// Its heartbeat's file name.
    pub file: OsString,
    /// Held for the life of the process; `None` where the file system
    /// gives no locks (the instance is then named by its pid).
    _lock: Option<Locked>,
}

impl Instance {
    /// Takes the first free slot of this host for `worker`, and removes
    /// the heartbeats of this host's dead instances.
    pub fn take(heartbeats: &Dir, worker: &str) -> Instance {
        let host = hostname();
        for slot in 1..=SLOTS {
            let name = instance_name(&host, slot);
            match try_lock(heartbeats, &instance_lock(worker, &name)) {
                Ok(Some(lock)) => {
                    remove_dead(heartbeats, worker, &host, &name);
                    return Instance {
                        file: instance_heartbeat_file(worker, &name).into(),
                        name,
                        _lock: Some(lock),
                    };
                }
                Ok(None) => continue,
                Err(e) => {
                    log::warn!(
                        "cannot lock {} ({e}): this instance is named by its pid",
                        heartbeats.join(instance_lock(worker, &name)).display()
                    );
                    break;
                }
            }
        }
        let name = format!("{}.p{}", host_tag(&host), std::process::id());
        Instance {
            file: instance_heartbeat_file(worker, &name).into(),
            name,
            _lock: None,
        }
    }
}

/// The lock `name` taken, `None` when a live process holds it.
fn try_lock(dir: &Dir, name: &str) -> std::io::Result<Option<Locked>> {
    let file = dir.open_lock(name.as_ref())?;
    match Locked::exclusive(file) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Removes the heartbeat of each other instance of `host` whose lock is
/// free: its process is gone, and this one succeeds it.
fn remove_dead(dir: &Dir, worker: &str, host: &str, mine: &str) {
    let tag = host_tag(host);
    let Ok(names) = dir.names() else { return };
    for file in names {
        let Some((w, instance)) = file.to_str().and_then(heartbeat_instance) else {
            continue;
        };
        let of_host = instance == tag
            || instance
                .strip_prefix(&tag)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        if w != worker || instance == mine || !of_host {
            continue;
        }
        if let Ok(Some(_lock)) = try_lock(dir, &instance_lock(worker, instance)) {
            if dir.unlink(&file).is_ok() {
                log::info!(instance = instance; "Removed the heartbeat of a dead instance of this host: {}", dir.join(&file).display());
            }
        }
    }
}
