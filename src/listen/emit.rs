//! Emitting the listener's events (hookwatch(5), Orchestrator files): each one a JSON line
//! on stdout and a trigger file `triggers/orchestrator/<event>_<ms>.json`,
//! both complete, and optionally the input of an `--exec` hook. Trigger
//! files of a burst are made durable together by one `syncfs`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};

use crate::agent::run::{self, Invocation, Limits};
use crate::agent::CommandLine;
use crate::clock;
use crate::error::{Error, Kind, Result};
use crate::latch::Latch;
use crate::model::event::{Event, EventKind};
use crate::spool::dir::Dir;
use crate::spool::names::Numbered;
use crate::spool::publish::Durability;

/// The listener's triggers are always made durable.
const D: Durability = Durability::Durable;

/// Writes events where the orchestrator looks for them.
pub struct Emitter {
    dir: Dir,
    hooks: Option<Hooks>,
    unsynced: bool,
    /// The last trigger name taken, per event type: (ms, number). A burst
    /// puts several events of one type in one millisecond; starting after
    /// the last number taken spares a failed rename for each taken one.
    last: HashMap<EventKind, (u64, u32)>,
}

impl Emitter {
    pub fn new(dir: &Path, hooks: Option<Hooks>) -> Result<Emitter> {
        crate::spool::create_dir(dir)?;
        Ok(Emitter {
            dir: Dir::open_following(dir)?,
            hooks,
            unsynced: false,
            last: HashMap::new(),
        })
    }

    /// The trigger file first (so a reader of stdout finds it), then the
    /// line on stdout, then the hook.
    pub fn emit(&mut self, event: &Event) -> Result<()> {
        let bytes = event.to_line();
        let at = clock::parse_rfc3339(&event.timestamp).unwrap_or_else(clock::unix_now);
        let ms = (at * 1000.0).round() as u64;
        let first = match self.last.get(&event.kind) {
            Some(&(last_ms, n)) if last_ms == ms => n + 1,
            _ => 1,
        };
        let stem = event.kind.as_str();
        let name = match self.dir.publish_numbered(stem, ms, first, &bytes, D, false) {
            Ok((name, n)) => {
                self.last.insert(event.kind, (ms, n));
                name
            }
            Err(e) if e.kind == Kind::NotFound => {
                // The folder was removed, perhaps replaced: publish into
                // what its path names now, as before it was held open.
                let path = self.dir.path().to_path_buf();
                self.dir = Dir::open_following(&path).map_err(|_| e)?;
                let (name, n) = self.dir.publish_numbered(stem, ms, 1, &bytes, D, false)?;
                self.last.insert(event.kind, (ms, n));
                name
            }
            Err(e) => return Err(e),
        };
        self.unsynced = true;
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the listener: the trigger is written.
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
        if let Some(h) = &self.hooks {
            h.run(event.kind.as_str(), &self.dir, &name);
        }
        Ok(())
    }

    /// Makes every trigger written since the last call durable.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            self.dir.sync_filesystem(D)?;
            self.dir.sync(D)?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Waits for the hooks still queued (each one bounded by its timeout).
    pub fn finish(self) {
        if let Some(h) = self.hooks {
            h.finish();
        }
    }
}

/// `--exec CMD`: CMD once per event, in order, on its own thread, with the
/// event on stdin and `HW_EVENT` set. A failing or slow hook is logged and
/// cut off at its timeout; it never stops the listener. Each hook to run
/// is a link to its trigger file in `triggers/orchestrator/.hooks/`, made
/// with the trigger and removed once the hook has run: hooks pending when
/// the listener was killed run when it starts again (at least once).
pub struct Hooks {
    queue: Option<Sender<(String, OsString)>>,
    pending: Arc<Dir>,
    thread: Option<JoinHandle<()>>,
}

impl Hooks {
    /// Starts the hook thread; the hooks a previous run left pending are
    /// queued first, oldest first.
    pub fn start(
        command: CommandLine,
        timeout: Duration,
        workdir: PathBuf,
        triggers: &Path,
    ) -> Result<Hooks> {
        let path = triggers.join(HOOKS);
        crate::spool::create_dir(&path)?;
        let pending = Arc::new(Dir::open(&path)?);
        let (tx, rx) = unbounded::<(String, OsString)>();
        for (kind, name) in left_pending(&pending) {
            let _ = tx.send((kind, name));
        }
        let never = Latch::new().map_err(|e| Error::os("cannot create a pipe", e))?;
        let held = pending.clone();
        let thread = thread::Builder::new()
            .name("exec".into())
            .spawn(move || {
                for (event_type, name) in rx {
                    let trigger = triggers_path(&held, &name);
                    run_hook(
                        &command,
                        &event_type,
                        &held,
                        &name,
                        &trigger,
                        timeout,
                        &workdir,
                        &never,
                    );
                    if let Err(e) = held.unlink(&name) {
                        log::warn!("{}", Error::io("cannot remove", &held.join(&name), e));
                    }
                }
            })
            .map_err(|e| Error::os("cannot start the exec thread", e))?;
        Ok(Hooks {
            queue: Some(tx),
            pending,
            thread: Some(thread),
        })
    }

    /// Queues the hook of the trigger `name` just written in `triggers`.
    fn run(&self, event_type: &'static str, triggers: &Dir, name: &str) {
        let name = OsString::from(name);
        if let Err(e) = triggers.link(&name, &self.pending, &name) {
            let path = self.pending.join(&name);
            log::warn!(
                "{}: the hook runs, but not again after a restart",
                Error::io("cannot link", &path, e)
            );
        }
        if let Some(q) = &self.queue {
            let _ = q.send((event_type.to_string(), name));
        }
    }

    fn finish(mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The folder of pending hooks, below the orchestrator's triggers.
const HOOKS: &str = ".hooks";

/// The trigger file a pending hook stands for (it may be gone: the
/// orchestrator consumes them).
fn triggers_path(pending: &Dir, name: &OsStr) -> PathBuf {
    let triggers = pending.path().parent().unwrap_or(pending.path());
    triggers.join(name)
}

/// The hooks a previous run left, by trigger time: (event type, name).
fn left_pending(pending: &Dir) -> Vec<(String, OsString)> {
    let mut found: Vec<(u64, u32, String, OsString)> = pending
        .names()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| {
            let n = Numbered::parse(name.to_str()?)?;
            Some((n.time, n.n, n.stem.to_string(), name.clone()))
        })
        .collect();
    found.sort();
    if !found.is_empty() {
        log::info!(hooks = found.len(); "Running the hooks a previous run left pending");
    }
    found
        .into_iter()
        .map(|(_, _, kind, name)| (kind, name))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_hook(
    command: &CommandLine,
    event_type: &str,
    pending: &Dir,
    name: &OsStr,
    trigger: &Path,
    timeout: Duration,
    workdir: &Path,
    never: &Latch,
) {
    let Ok(stdin) = pending.open_read(name) else {
        log::warn!(event = event_type; "Hook skipped: its link to the trigger file is gone");
        return;
    };
    let argv = command.words();
    let env = [
        ("HW_EVENT", event_type.to_string()),
        ("HW_TRIGGER_FILE", trigger.display().to_string()),
    ];
    let limits = Limits {
        timeout,
        kill_grace: Duration::from_secs(1),
        max_output: 64 * 1024,
        max_memory: None,
        max_cpu: None,
    };
    let outcome = run::run(
        Invocation {
            argv,
            env: &env,
            workdir,
            stdin: Some(stdin),
            limits,
            agent: false,
            cancel: None,
        },
        never,
    );
    if !outcome.succeeded() {
        log::warn!(event = event_type, exit_code = outcome.exit_code; "Hook failed: {}", outcome.describe());
    }
}
