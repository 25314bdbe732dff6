//! What comes in: the claim of a pending file and what it becomes (a job
//! for the pool, a deferral until its time or its dependencies, a dead
//! letter's job, or a file set aside with its own back-off), and the
//! deferred tasks going back to pending when their time comes. Part of
//! the dispatcher, whose state it works on.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::time::{Instant, SystemTime};

use super::*;

impl Dispatcher {
    /// An I/O error while claiming: the task stays pending, claims pause
    /// with back-off (up to 5 s) and resume by themselves.
    pub(super) fn pause_claims(&mut self, e: &Error, name: OsString) {
        let pause = self.claim_backoff.take();
        log::error!("{e}; claims paused for {pause:?}");
        self.claim_pause = Some(Instant::now() + pause);
        self.push_peeked(name);
    }

    /// A pending file that cannot be claimed for now: it gets a back-off
    /// of its own while the others are claimed. One the worker may not
    /// read is reported once (log, metric, heartbeat) and moved aside
    /// when the folder lets the worker move it.
    pub(super) fn set_aside(&mut self, trouble: Trouble, unreadable: bool) {
        let (name, file) = (
            trouble.name.clone(),
            trouble.name.to_string_lossy().into_owned(),
        );
        let owner = trouble.uid.map_or_else(|| "?".into(), |u| u.to_string());
        let detail = format!("{}; owner uid {owner}", trouble.error);
        let first = self.skipped.skip(trouble, Instant::now());
        if !unreadable {
            if first {
                log::info!(file = file.as_str(); "{detail}: looked at again later");
            }
            return;
        }
        if first {
            log::warn!(file = file.as_str(), owner_uid = owner.as_str(); "Cannot claim {file}: {detail}; set aside, the other tasks go on");
            self.metrics.attempt_failed(FailureClass::Unreadable);
        }
        self.send(Job::Unreadable { name, detail });
    }

    /// Why a pending file was not claimed: its own trouble, or the spool's.
    fn refusal(&self, name: OsString, e: Error) -> Refused {
        let denied = e
            .io_error()
            .is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied);
        if !denied {
            return Refused::Spool(e);
        }
        let uid = self.held().pending.stat(&name).ok().map(|s| s.uid);
        let error = e
            .io_error()
            .map_or_else(|| e.to_string(), |io| io.to_string());
        Refused::Unreadable(Trouble { name, error, uid })
    }

    /// Locks one pending file and decides what it is: a job for the pool,
    /// or nothing (lost to another claimer, still being written, waiting).
    pub(super) fn claim(
        &mut self,
        name: OsString,
        probe: bool,
    ) -> std::result::Result<Option<Job>, Refused> {
        let dirs = self.held();
        let announced = self.announced.remove(&name);
        let mut locked = match claim::lock(&dirs.pending, &name) {
            Ok(Attempt::Lost) => return Ok(None),
            Ok(Attempt::Held) => {
                let error = "another process holds its lock".into();
                return Err(Refused::Held(Trouble {
                    name,
                    error,
                    uid: None,
                }));
            }
            Ok(Attempt::NotRegular(kind)) => return Ok(Some(Job::Irregular { name, kind })),
            Ok(Attempt::Locked(c)) => c,
            Err(e) => return Err(self.refusal(name, e)),
        };
        if locked.size > self.cfg.max_task_bytes {
            return Ok(Some(Job::TooLarge { claim: locked }));
        }
        let bytes = match locked.read(self.cfg.max_task_bytes) {
            Ok(b) => b,
            Err(Unread::TooLarge) => return Ok(Some(Job::TooLarge { claim: locked })),
            Err(Unread::Failed(e)) => return Err(self.refusal(name, e)),
        };
        let task = match Task::parse(&bytes, &self.cfg.name) {
            Err(Invalid::Json(_)) if !announced && young(locked.written) => {
                // Perhaps written in place and not finished: look again later.
                let age = SystemTime::now()
                    .duration_since(locked.written)
                    .unwrap_or_default();
                self.settling
                    .push((Instant::now() + SETTLE.saturating_sub(age), name));
                return Ok(None);
            }
            Err(invalid) => {
                return self.activate(locked, |claim| Job::Invalid {
                    claim,
                    bytes,
                    invalid,
                });
            }
            Ok(task) => task,
        };
        if let Some(why) = self.unrunnable(&task) {
            let invalid = Invalid::Task(why);
            return self.activate(locked, |claim| Job::Invalid {
                claim,
                bytes,
                invalid,
            });
        }
        if let Some(detail) = duplicate(&dirs, &name, &task) {
            return self.activate(locked, |claim| Job::Duplicate {
                claim,
                task,
                detail,
            });
        }
        if task.not_before.is_some_and(|t| t > clock::unix_now()) {
            return self.defer(locked, &task, Vec::new());
        }
        self.deps.refresh_if(!task.dependencies.is_empty());
        match self.deps.check(&task.dependencies) {
            DepState::Ready => self.activate(locked, |claim| Job::Run { claim, task, probe }),
            DepState::Waiting(missing) => match self.cycle_of(&task, &missing) {
                Some(why) => {
                    self.activate(locked, |claim| Job::DependencyFailed { claim, task, why })
                }
                None => self.defer(locked, &task, missing),
            },
            DepState::Failed(dependency) => {
                let why = format!("dependency {dependency} failed");
                self.activate(locked, |claim| Job::DependencyFailed { claim, task, why })
            }
        }
    }

    /// "depends on itself", or the cycle of waiting tasks it would close.
    fn cycle_of(&self, task: &Task, missing: &[String]) -> Option<String> {
        let waits = Waiting {
            own: &self.waits,
            spool: &self.cfg.spool,
            max_bytes: self.cfg.max_task_bytes,
        };
        let path = deps::cycle(&task.id, missing, &waits, CYCLE_SEARCH)?;
        Some(match path.len() {
            2 => "depends on itself".to_string(),
            _ => format!("dependency cycle {}", path.join(" -> ")),
        })
    }

    /// Why this worker cannot run a task that is valid on its own: its
    /// description is too long for a command with `{}`, or its `workdir`
    /// is not a folder below `--workdir` reached without a symlink.
    fn unrunnable(&self, task: &Task) -> Option<String> {
        let command = &self.cfg.command;
        if let Some(why) = command.refuses(&task.description) {
            return Some(why);
        }
        let sub = task
            .options
            .workdir
            .as_ref()
            .filter(|_| command.claude().is_some())?;
        startup::folder_below(&self.cfg.workdir, sub)
            .err()
            .map(|why| format!("workdir {:?} {why}", sub.display().to_string()))
    }

    fn activate(
        &mut self,
        claim: Claim,
        job: impl FnOnce(Claim) -> Job,
    ) -> std::result::Result<Option<Job>, Refused> {
        let name = claim.name.clone();
        let active = self.held().active.clone();
        let activated = claim
            .activate(&active)
            .map_err(|e| self.refusal(name.clone(), e))?;
        match activated {
            Activated::Active(claim) => {
                let latency = claim
                    .claimed
                    .duration_since(claim.written)
                    .unwrap_or_default();
                self.metrics.pickup.observe(latency);
                Ok(Some(job(claim)))
            }
            Activated::Busy => {
                log::warn!(file = name.to_string_lossy(); "A task of that name is running: this one waits");
                self.busy.push(name);
                Ok(None)
            }
            Activated::Lost => Ok(None),
        }
    }

    /// Moves a locked pending task (not yet due, or waiting for its
    /// dependencies) into `.deferred/` as it is, and schedules it.
    fn defer(
        &mut self,
        claim: Claim,
        task: &Task,
        dependencies: Vec<String>,
    ) -> std::result::Result<Option<Job>, Refused> {
        let deferred = self.held().deferred.clone();
        let name = claim.name.clone();
        if let Err(failed) = claim.move_to(&deferred, &name) {
            let (_claim, e) = *failed;
            return Err(Refused::Spool(e));
        }
        let recheck = clock::unix_now() + DEPENDENCY_RECHECK;
        let not_before = match task.not_before {
            Some(t) if dependencies.is_empty() => t,
            Some(t) => t.max(recheck),
            None => recheck,
        };
        if !dependencies.is_empty() {
            let named = dependencies
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = dependencies.len().saturating_sub(10);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            log::info!(task_id = task.id, waiting_for = dependencies.len(); "Task waits for {} dependencies with no result yet: {named}{more}", dependencies.len());
            self.waits.insert(task.id.clone(), dependencies.clone());
        }
        let entry = Deferred {
            not_before,
            priority: task.priority,
            dependencies,
            checked: Some(self.deps.generation()),
        };
        self.deferred.insert(name, entry);
        Ok(None)
    }

    /// Deferred tasks whose time has come go back to pending (and into the
    /// queue); those still waiting for dependencies are rescheduled. The
    /// dependencies are looked up again only when the index changed, and
    /// only those still missing.
    pub(super) fn release_due_deferred(&mut self) {
        let now = clock::unix_now();
        let dirs = self.held();
        let mut later = Vec::new();
        let mut refreshed = false;
        while let Some((name, mut entry)) = self.deferred.pop_due(now) {
            if !entry.dependencies.is_empty() {
                if !refreshed {
                    self.deps.refresh();
                    refreshed = true;
                }
                let generation = self.deps.generation();
                let unchanged = entry.checked == Some(generation);
                entry.checked = Some(generation);
                let waiting = match unchanged {
                    true => None,
                    false => match self.deps.check(&entry.dependencies) {
                        DepState::Waiting(missing) => Some(missing),
                        _ => None,
                    },
                };
                if unchanged || waiting.is_some() {
                    entry.dependencies = waiting.unwrap_or(entry.dependencies);
                    entry.not_before = now + DEPENDENCY_RECHECK;
                    later.push((name, entry));
                    continue;
                }
            }
            match dirs.deferred.rename_noreplace(&name, &dirs.pending, &name) {
                Ok(()) => {
                    self.forget_waits(&name);
                    self.queue.push(name, entry.priority, SystemTime::now());
                }
                Err(e) if crate::error::vanished(&e) => self.forget_waits(&name),
                Err(e) => {
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        let (from, to) = (dirs.deferred.join(&name), dirs.pending.join(&name));
                        log::error!("{}", Error::io2("cannot rename", &from, &to, e));
                    }
                    entry.not_before = now + 1.0;
                    later.push((name, entry));
                }
            }
        }
        for (name, entry) in later {
            self.deferred.insert(name, entry);
        }
    }

    /// A deferred file left `.deferred/`: its task waits for nothing here.
    pub(super) fn forget_waits(&mut self, name: &OsStr) {
        if let Some(id) = name.to_str().and_then(json_stem) {
            self.waits.remove(id);
        }
    }
}

/// Why a pending file was not claimed.
pub(super) enum Refused {
    /// Someone else holds its lock: look again later.
    Held(Trouble),
    /// The worker may not open or read it.
    Unreadable(Trouble),
    /// The spool itself (a folder, the disk): every claim pauses.
    Spool(Error),
}

/// Another record already uses the task's id: a result (unless a replay
/// from the dead-letter queue brings it back), or a queued file of
/// another name. A retry (`retry_count` above 0) was checked at its first
/// claim: an older result of the same id does not stop it.
fn duplicate(dirs: &WorkerDirs, name: &OsStr, task: &Task) -> Option<String> {
    if task.retry_count > 0 {
        return None;
    }
    let file = OsString::from(task_file(&task.id));
    let replayed = task.fields.contains_key("replayed_at");
    if !replayed && dirs.results.stat(&file).is_ok() {
        return Some(format!("task id {} already has a result", task.id));
    }
    let queued = [&dirs.pending, &dirs.active, &dirs.deferred];
    let elsewhere = queued
        .iter()
        .any(|d| (d.path() != dirs.pending.path() || file != name) && d.stat(&file).is_ok());
    let other_name = file != name && elsewhere;
    other_name.then(|| {
        format!(
            "task id {} is queued as {}",
            task.id,
            file.to_string_lossy()
        )
    })
}

/// The tasks waiting for dependencies, for the cycle search: this
/// worker's from memory, the others' from their `.deferred/` folders.
struct Waiting<'a> {
    own: &'a HashMap<String, Vec<String>>,
    spool: &'a crate::spool::Spool,
    max_bytes: u64,
}

impl Waits for Waiting<'_> {
    fn waits_for(&self, id: &str) -> Option<Vec<String>> {
        if let Some(deps) = self.own.get(id) {
            return Some(deps.clone());
        }
        let file = task_file(id);
        self.spool.worker_names().ok()?.iter().find_map(|w| {
            let path = self.spool.deferred_dir(w).join(&file);
            let bytes = crate::spool::read_regular(&path, self.max_bytes).ok()?;
            let task = Task::parse(&bytes, w).ok()?;
            Some(task.dependencies).filter(|d| !d.is_empty())
        })
    }
}

fn young(written: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(written)
        .map_or(true, |age| age < SETTLE)
}
