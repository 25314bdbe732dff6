//! Reaping orphans (hw-worker(8), PID 1): an agent may leave a process
//! behind whose parent exits (a background job, a daemon it started).
//! Such an orphan goes to the nearest child subreaper, else to PID 1; in
//! a container hookwatch itself is often PID 1, and an orphan that nobody
//! waits for stays a zombie for ever. So hw-worker and hw-listen make
//! themselves child subreapers and reap every zombie child that is not
//! one of the commands they started themselves (those their own
//! supervisor waits for: a registry, locked across each spawn, tells the
//! two apart). They look when a command of theirs has ended (its orphans
//! are theirs from then on; the ends of 50 ms gathered into one look)
//! and once a second while an orphan lives;
//! with none, the reaper sleeps, so an idle worker does not wake for it.

use std::collections::HashSet;
use std::io;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The pids of the commands started and not yet waited for.
fn started() -> MutexGuard<'static, HashSet<u32>> {
    static STARTED: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    STARTED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Spawns `command`, registered as one of ours until `waited`.
pub fn spawn(command: &mut Command) -> io::Result<Child> {
    let mut started = started();
    let child = command.spawn()?;
    started.insert(child.id());
    Ok(child)
}

/// A command of ours was waited for: its pid may be reused, and what it
/// left running is ours now.
pub fn waited(pid: u32) {
    started().remove(&pid);
    let (ended, wake) = ended();
    *ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
    wake.notify_one();
}

/// Set when a command of ours ended and the reaper has not looked since.
fn ended() -> &'static (Mutex<bool>, Condvar) {
    static ENDED: OnceLock<(Mutex<bool>, Condvar)> = OnceLock::new();
    ENDED.get_or_init(Default::default)
}

/// How long the reaper lets ends gather before it looks (each look reads
/// /proc for every thread and child: docs/performance.md).
const GATHER: Duration = Duration::from_millis(50);

/// Sleeps until a command of ours ends, or at most `limit`.
fn wait_for_an_end(limit: Option<Duration>) {
    let (ended, wake) = ended();
    let mut flag = ended.lock().unwrap_or_else(|e| e.into_inner());
    if !*flag {
        flag = match limit {
            Some(t) => match wake.wait_timeout(flag, t) {
                Ok((f, _)) => f,
                Err(e) => e.into_inner().0,
            },
            None => wake.wait(flag).unwrap_or_else(|e| e.into_inner()),
        };
    }
    *flag = false;
}

/// Registers as a child subreaper and starts the thread that reaps
/// orphans, once per process. A failure is logged; tasks still run.
pub fn start() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Err(e) = crate::sys::set_child_subreaper() {
            log::warn!("cannot become a child subreaper ({e}); orphans of agents go to PID 1");
        }
        let spawned = thread::Builder::new().name("reaper".into()).spawn(|| loop {
            let alive = reap_orphans().alive;
            wait_for_an_end((alive > 0).then_some(Duration::from_secs(1)));
            // A busy pool ends hundreds of commands a second: one look
            // for all the ends of the moment, not one each.
            thread::sleep(GATHER);
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the reaper thread ({e})");
        }
    });
}

/// What `reap_orphans` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Orphans {
    pub reaped: usize,
    /// Children not of ours that still run: they may end any time.
    pub alive: usize,
}

/// Waits for every zombie child that is not a command of ours.
pub fn reap_orphans() -> Orphans {
    let me = std::process::id();
    // /proc is read without the registry's lock, so that no spawn waits
    // for it. A child seen here is in the registry by the time the lock
    // is ours if it is a command of ours: a spawn registers its child
    // before it lets the lock go.
    let children = processes();
    let started = started();
    let mut found = Orphans::default();
    for (pid, ppid, state) in children {
        if ppid != me || started.contains(&pid) {
            continue;
        }
        if state != 'Z' {
            found.alive += 1;
            continue;
        }
        let flags = Some(WaitPidFlag::WNOHANG);
        if waitpid(Pid::from_raw(pid as i32), flags).is_ok() {
            found.reaped += 1;
        }
    }
    found
}

/// This process's children (pid, parent, state), from
/// /proc/self/task/*/children; where the kernel has no such file, every
/// process of /proc.
fn processes() -> Vec<(u32, u32, char)> {
    let mut pids: Vec<u32> = Vec::new();
    let mut listed = false;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            listed = true;
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    if !listed {
        pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .collect();
    }
    pids.into_iter().filter_map(stat).collect()
}

/// A process's pid, parent and state.
fn stat(pid: u32) -> Option<(u32, u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ppid ...`: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((pid, ppid, state))
}
