//! Emitting the listener's events (hookwatch(5), Orchestrator files): each one a JSON line
//! on stdout and a trigger file `triggers/orchestrator/<event>_<ms>.json`,
//! both complete, and optionally the input of an `--exec` hook. Trigger
//! files of a burst are made durable together by one `syncfs`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};

use crate::agent::run::{self, Invocation, Limits};
use crate::agent::CommandLine;
use crate::clock;
use crate::error::{Kind, Result};
use crate::latch::Latch;
use crate::model::event::{Event, EventKind};
use crate::spool::publish::{Durability, Folder};

/// Writes events where the orchestrator looks for them.
pub struct Emitter {
    dir: Folder,
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
            dir: Folder::open(dir, Durability::Durable)?,
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
        let name = match self
            .dir
            .publish_numbered_unsynced(event.kind.as_str(), ms, first, &bytes)
        {
            Ok((name, n)) => {
                self.last.insert(event.kind, (ms, n));
                name
            }
            Err(e) if e.kind == Kind::NotFound => {
                // The folder was removed, perhaps replaced: publish into
                // what its path names now, as before it was held open.
                let path = self.dir.path().to_path_buf();
                self.dir = Folder::open(&path, Durability::Durable).map_err(|_| e)?;
                let (name, n) =
                    self.dir
                        .publish_numbered_unsynced(event.kind.as_str(), ms, 1, &bytes)?;
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
            h.run(event.kind.as_str(), self.dir.path().join(name));
        }
        Ok(())
    }

    /// Makes every trigger written since the last call durable.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            self.dir.sync()?;
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
/// cut off at its timeout; it never stops the listener.
pub struct Hooks {
    queue: Option<Sender<(&'static str, PathBuf)>>,
    thread: Option<JoinHandle<()>>,
}

impl Hooks {
    pub fn start(
        command: CommandLine,
        timeout: Duration,
        workdir: PathBuf,
    ) -> std::io::Result<Hooks> {
        let (tx, rx) = unbounded::<(&'static str, PathBuf)>();
        let never = Latch::new()?;
        let thread = thread::Builder::new().name("exec".into()).spawn(move || {
            for (event_type, trigger) in rx {
                run_hook(&command, event_type, &trigger, timeout, &workdir, &never);
            }
        })?;
        Ok(Hooks {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    fn run(&self, event_type: &'static str, trigger: PathBuf) {
        if let Some(q) = &self.queue {
            let _ = q.send((event_type, trigger));
        }
    }

    fn finish(mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_hook(
    command: &CommandLine,
    event_type: &str,
    trigger: &Path,
    timeout: Duration,
    workdir: &Path,
    never: &Latch,
) {
    let Ok(stdin) = File::open(trigger) else {
        log::warn!(event = event_type; "Hook skipped: the trigger file is gone");
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
        },
        never,
    );
    if !outcome.succeeded() {
        log::warn!(event = event_type, exit_code = outcome.exit_code; "Hook failed: {}", outcome.describe());
    }
}
