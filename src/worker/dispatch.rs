//! The dispatcher: the thread that ties the spool, the watcher, the pool,
//! the retry schedule and the breaker together. One thread owns all the
//! state (the pending queue, the deferred schedule, the breaker, the
//! timers) and talks to the others through channels; it blocks in the
//! kernel when there is nothing to do, and wakes for a notice, a report, a
//! signal, or its next timer (the heartbeat when idle).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};

use crate::clock::{self, Backoff};
use crate::error::Error;
use crate::latch::Latch;
use crate::model::failure::FailureClass;
use crate::model::heartbeat::{self, Heartbeat, HeartbeatStatus, Unclaimable};
use crate::model::task::{peek_priority, Invalid, Priority, Task};
use crate::spool::claim::{self, Activated, Attempt, Claim, Unread};
use crate::spool::dir::Dir;
use crate::spool::names::{heartbeat_file, is_task_file, json_stem, task_file};
use crate::spool::publish::json_line;
use crate::spool::WorkerDirs;
use crate::worker::breaker::Breaker;
use crate::worker::config::WorkerConfig;
use crate::worker::deps::{self, DepIndex, DepState, Waits};
use crate::worker::metrics::{DaySpend, Metrics};
use crate::worker::notify::Notifier;
use crate::worker::pause::{Admit, Change, Pauses};
use crate::worker::pool::{End, Job, Report};
use crate::worker::queue::{Deferred, DeferredSchedule, PendingQueue};
use crate::worker::skip::{Skipped, Trouble};
use crate::worker::startup;
use crate::worker::watch::{Notice, Watcher};
use crate::worker::{current, SharedDirs};

/// A file found by a scan whose JSON does not parse may still be being
/// written in place; it gets this long since its last write.
const SETTLE: Duration = Duration::from_secs(2);
/// Our temporary files live milliseconds; one this old is a crash's.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// How often a task waiting for its dependencies looks again (when the
/// index of terminal records changed).
const DEPENDENCY_RECHECK: f64 = 1.0;
/// The most waiting tasks a search for a dependency cycle visits.
const CYCLE_SEARCH: usize = 10_000;
/// The most bytes read of a pending file to learn its priority.
const PEEK_MAX: u64 = 64 * 1024;

pub(super) struct Dispatcher {
    cfg: WorkerConfig,
    /// The worker's folders, held open; shared with the pool.
    dirs: SharedDirs,
    /// Terminal records by task id, for dependencies.
    deps: DepIndex,
    /// What each task waiting for dependencies waits for, by its id.
    waits: HashMap<String, Vec<String>>,
    /// Pending files that cannot be claimed for now, each with its back-off.
    skipped: Skipped,
    metrics: Arc<Metrics>,
    metrics_addr: Option<String>,
    jobs: Option<Sender<Job>>,
    /// `None` with `--no-inotify`: rescans only.
    watcher: Option<Watcher>,
    /// systemd's notification socket (READY, STATUS, STOPPING, WATCHDOG).
    notifier: Notifier,
    next_watchdog: Option<Instant>,
    queue: PendingQueue,
    deferred: DeferredSchedule,
    /// Files that did not parse and are young: looked at again later.
    settling: Vec<(Instant, OsString)>,
    /// Names that inotify saw closed after writing or moved in: complete,
    /// so a parse error is final at once.
    announced: HashSet<OsString>,
    /// Names whose claim found `.active/` holding the same name.
    busy: Vec<OsString>,
    /// Dead claimers' entries waiting for a free slot.
    recovered: Vec<Claim>,
    running: usize,
    /// The names of the jobs the pool has not reported on yet.
    in_flight: HashSet<OsString>,
    breaker: Breaker,
    /// A usage limit, a failed login or a spent budget: no claims.
    pauses: Pauses,
    started: Instant,
    next_heartbeat: Instant,
    poll: Option<Duration>,
    next_poll: Option<Instant>,
    /// After an I/O error claiming, nothing is claimed until then.
    claim_pause: Option<Instant>,
    /// The next pause, doubled at each error in a row (up to 5 s).
    claim_backoff: Backoff,
    /// Set at the first signal: the time by which running tasks must end.
    stopping: Option<Instant>,
    aborted: bool,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: WorkerConfig,
        dirs: SharedDirs,
        metrics: Arc<Metrics>,
        jobs: Sender<Job>,
        watcher: Option<Watcher>,
        poll: Option<Duration>,
        metrics_addr: Option<String>,
    ) -> Self {
        let now = Instant::now();
        let poll = poll.filter(|p| !p.is_zero());
        let queue = PendingQueue::with_cap(cfg.queue_cap);
        Dispatcher {
            breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_timeout),
            pauses: Pauses::new(cfg.daily_budget_usd, cfg.pause_backoff),
            deps: DepIndex::new(&cfg.spool),
            waits: HashMap::new(),
            skipped: Skipped::default(),
            dirs,
            next_heartbeat: now + cfg.heartbeat_interval,
            next_poll: poll.map(|p| now + p),
            cfg,
            metrics,
            metrics_addr,
            jobs: Some(jobs),
            watcher,
            next_watchdog: None,
            notifier: Notifier::from_env(),
            queue,
            deferred: DeferredSchedule::default(),
            settling: Vec::new(),
            announced: HashSet::new(),
            busy: Vec::new(),
            recovered: Vec::new(),
            running: 0,
            in_flight: HashSet::new(),
            started: now,
            poll,
            claim_pause: None,
            claim_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            stopping: None,
            aborted: false,
        }
    }

    /// Recovery, then the deferred schedule, then the first scan (the watch
    /// is already in place), then the first heartbeat.
    pub(super) fn start(&mut self) {
        self.resume_from_heartbeat();
        self.remove_stale_temps();
        self.probe_active();
        self.load_deferred();
        self.rescan();
        self.write_heartbeat(HeartbeatStatus::Healthy);
        // Watching and scanned: ready, in systemd's sense.
        self.notifier
            .send(&format!("READY=1\nSTATUS={}", self.status_line()));
        self.next_watchdog = self.notifier.watchdog_every().map(|d| Instant::now() + d);
        let command = self.cfg.command.describe();
        log::info!(
            root = self.cfg.spool.root.display().to_string(), command = command.as_str(),
            pool = self.cfg.max_concurrent,
            pending = self.queue.pending(), deferred = self.deferred.len(),
            recovered = self.recovered.len(),
            queue_cap = self.cfg.queue_cap, fsync = self.cfg.durability.flushes(),
            receipts = self.cfg.receipts,
            poll = self.poll.map_or(0.0, |p| p.as_secs_f64());
            "Worker started on {}: {command}, {} at once",
            self.cfg.spool.root.display(), self.cfg.max_concurrent
        );
    }

    pub(super) fn serve(
        &mut self,
        notices: &Receiver<Notice>,
        reports: &Receiver<Report>,
        signals: &Receiver<i32>,
        abort: &Latch,
    ) {
        loop {
            self.dispatch();
            if self.stopping.is_some() && self.running == 0 {
                return;
            }
            let timeout = self.next_wake().saturating_duration_since(Instant::now());
            select! {
                recv(notices) -> n => if let Ok(n) = n { self.on_notice(n) },
                recv(reports) -> r => if let Ok(r) = r { self.on_report(r) },
                recv(signals) -> s => if let Ok(s) = s { self.on_signal(s, abort) },
                default(timeout) => {},
            }
            self.on_timers(abort);
        }
    }

    /// No more jobs: the pool threads end once they are done.
    pub(super) fn close_jobs(&mut self) {
        drop(self.jobs.take());
    }

    pub(super) fn join_watcher(&mut self) {
        if let Some(w) = self.watcher.as_mut() {
            w.join();
        }
    }

    /// The last heartbeat, `stopped`, once every thread has ended.
    pub(super) fn stopped(mut self) {
        self.metrics_addr = None;
        self.write_heartbeat(HeartbeatStatus::Stopped);
        log::info!(uptime_seconds = self.started.elapsed().as_secs(); "Worker stopped");
    }

    fn next_wake(&mut self) -> Instant {
        let mut wake = self.next_heartbeat;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = wake.min(t);
            }
        };
        consider(self.next_poll);
        consider(self.next_watchdog);
        consider(self.settling.iter().map(|(t, _)| *t).min());
        consider(self.skipped.next_due());
        consider(self.claim_pause);
        consider(self.stopping.filter(|_| !self.aborted));
        if !self.queue.is_empty() {
            consider(self.breaker.reopens_at());
            consider(self.pauses.current().map(|p| instant_at(p.until)));
        }
        consider(self.deferred.next_due().map(instant_at));
        wake
    }

    fn on_timers(&mut self, abort: &Latch) {
        let now = Instant::now();
        if self.stopping.is_some_and(|t| now >= t) && !self.aborted {
            log::warn!(running = self.running; "Shutdown timeout: stopping running tasks now");
            self.abort(abort);
        }
        if let (Some(at), Some(every)) = (self.next_watchdog, self.notifier.watchdog_every()) {
            if now >= at {
                self.notifier.send("WATCHDOG=1");
                self.next_watchdog = Some(now + every);
            }
        }
        if now >= self.next_heartbeat {
            self.heartbeat_tick();
            self.next_heartbeat = now + self.cfg.heartbeat_interval;
        }
        if self.next_poll.is_some_and(|t| now >= t) {
            self.rescan();
            self.next_poll = self.poll.map(|p| now + p);
        }
        if self.claim_pause.is_some_and(|t| now >= t) {
            self.claim_pause = None;
        }
        let (due, later): (Vec<_>, Vec<_>) = self.settling.drain(..).partition(|(t, _)| now >= *t);
        self.settling = later;
        for (_, name) in due {
            self.push_peeked(name);
        }
        for name in self.skipped.due(now) {
            self.push_peeked(name);
        }
        self.release_due_deferred();
    }

    /// Everything the heartbeat interval drives: recovery of dead claims,
    /// deferred tasks other processes wrote, a replaced folder, the file.
    fn heartbeat_tick(&mut self) {
        if self.watcher.as_ref().is_some_and(Watcher::replaced) {
            self.rewatch();
        }
        if !self.hold_folders() {
            return;
        }
        if self.stopping.is_none() {
            self.probe_active();
            self.load_deferred();
        }
        let change = self
            .pauses
            .spent(self.metrics.today().usd, clock::unix_now());
        self.pause_changed(change);
        self.write_heartbeat(self.status());
        self.notifier
            .send(&format!("STATUS={}", self.status_line()));
    }

    /// What the heartbeat says of the worker now.
    fn status(&self) -> HeartbeatStatus {
        match () {
            _ if self.stopping.is_some() => HeartbeatStatus::Stopping,
            _ if self.pauses.current().is_some() => HeartbeatStatus::Paused,
            _ if !self.breaker.is_closed() => HeartbeatStatus::Degraded,
            _ => HeartbeatStatus::Healthy,
        }
    }

    /// What a finished task says about the account: refused (pause, or
    /// pause longer), let run (a pause's probe ends it), and whether
    /// today's spend reached the budget.
    fn pause_after(&mut self, report: &Report) {
        let now = clock::unix_now();
        let change = match &report.end {
            End::Deferred { pause: Some(p), .. } => self.pauses.refused(p.reason, p.reset_at, now),
            _ if report.ran => self.pauses.ran(),
            _ => None,
        };
        self.pause_changed(change);
        let change = self.pauses.spent(self.metrics.today().usd, now);
        self.pause_changed(change);
    }

    /// Says a pause's start or end in the log, the metric and at once in
    /// the heartbeat (hw-status and hw-listen read it).
    fn pause_changed(&mut self, change: Option<Change>) {
        let Some(change) = change else { return };
        match change {
            Change::Paused(p) => {
                let until = clock::rfc3339(clock::from_unix(p.until));
                log::warn!(paused_reason = p.reason.as_str(), paused_until = until.as_str(); "Worker paused: claims nothing until {until} ({})", p.reason);
            }
            Change::Resumed(reason) => {
                log::info!(paused_reason = reason.as_str(); "Worker resumed: claims again (was {reason})");
            }
        }
        self.metrics
            .set_paused(self.pauses.current().map(|p| p.reason));
        self.write_heartbeat(self.status());
    }

    /// Takes up what the last heartbeat of this worker (a previous run)
    /// said: a pause not over yet, and today's spend.
    fn resume_from_heartbeat(&mut self) {
        let path = self.cfg.spool.heartbeat_path(&self.cfg.name);
        let Some(beat) = crate::spool::read_regular(&path, 1 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice::<Heartbeat>(&b).ok())
        else {
            return;
        };
        let now = clock::unix_now();
        let written = clock::parse_rfc3339(&beat.timestamp).unwrap_or(0.0);
        if clock::utc_day(written) == clock::utc_day(now) && beat.cost_usd_today > 0.0 {
            self.metrics.resume_today(DaySpend {
                day: clock::utc_day(now),
                usd: beat.cost_usd_today,
            });
        }
        let until = beat.paused_until.as_deref().and_then(clock::parse_rfc3339);
        if let (Some(reason), Some(until)) = (beat.paused_reason, until.filter(|u| *u > now)) {
            self.pauses.restore(reason, until);
            self.pause_changed(Some(Change::Paused(
                self.pauses.current().expect("restored"),
            )));
        }
        let change = self.pauses.spent(self.metrics.today().usd, now);
        self.pause_changed(change);
    }

    /// One line for `systemctl status`.
    fn status_line(&self) -> String {
        let h = self.metrics.heartbeat_stats();
        format!(
            "{} pending, {} running, {} deferred; {} done, {} failed, {} dead letters; breaker {}",
            self.queue.pending(),
            self.running,
            self.deferred.len(),
            h.tasks_processed - h.tasks_failed,
            h.tasks_failed,
            h.tasks_dlq,
            self.breaker.state()
        )
    }

    fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Names(names) => {
                // With nothing waiting and room for all of them there is no
                // order to decide: skip the look at their priority.
                let free = self.cfg.max_concurrent.saturating_sub(self.running);
                let direct =
                    self.queue.is_empty() && names.len() <= free && self.breaker.is_closed();
                for name in names {
                    self.announced.insert(name.clone());
                    if direct {
                        self.queue.push(name, Priority::Normal, SystemTime::now());
                    } else {
                        self.push_arrival(name);
                    }
                }
            }
            Notice::Created(names) => {
                // A link(2) brings a whole file, and no close-after-write:
                // take it now. A file being written gets its close, else
                // a look once it has settled.
                let pending = self.held().pending.clone();
                for name in names {
                    match pending.stat(&name) {
                        Ok(e) if e.nlink > 1 => self.push_arrival(name),
                        Ok(_) => self.settling.push((Instant::now() + SETTLE, name)),
                        Err(_) => {}
                    }
                }
            }
            Notice::Rescan => {
                log::warn!("inotify queue overflowed: rescanning");
                self.rescan();
            }
            Notice::Rewatch => self.rewatch(),
        }
    }

    fn rewatch(&mut self) {
        log::warn!(folder = self.watcher_dir(); "Tasks folder removed or replaced: watching it again");
        if let Err(e) = self.cfg.spool.create_worker_dirs(&self.cfg.name) {
            log::error!("{e}");
        }
        if let Some(Err(e)) = self.watcher.as_mut().map(Watcher::rewatch) {
            log::error!("{e}");
        }
        if self.hold_folders() {
            self.rescan();
        }
    }

    /// Checks that each folder held is still the one its path names; when
    /// one was replaced by another folder, holds them all anew; when one
    /// is no folder of its own (a symbolic link), claims nothing until it
    /// is one again. True when claims may go on.
    fn hold_folders(&mut self) -> bool {
        let Some(moved) = self.held().moved().map(|p| p.display().to_string()) else {
            return true;
        };
        match self.cfg.spool.hold(&self.cfg.name) {
            Ok(dirs) => {
                log::warn!(folder = moved.as_str(); "A folder was replaced: holding the new one");
                *self.dirs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dirs);
                true
            }
            Err(e) => {
                log::error!(folder = moved.as_str(); "{e}: claims paused until it is a folder of its own again");
                self.claim_pause = Some(Instant::now() + self.cfg.heartbeat_interval);
                false
            }
        }
    }

    /// The folders held now.
    fn held(&self) -> Arc<WorkerDirs> {
        current(&self.dirs)
    }

    fn watcher_dir(&self) -> String {
        self.cfg
            .spool
            .pending_dir(&self.cfg.name)
            .display()
            .to_string()
    }

    fn on_signal(&mut self, signal: i32, abort: &Latch) {
        if self.stopping.is_some() {
            log::warn!(signal = signal; "Second signal: stopping running tasks now");
            self.abort(abort);
            return;
        }
        log::info!(signal = signal, running = self.running; "Shutting down: no new claims");
        self.stopping = Some(Instant::now() + self.cfg.shutdown_timeout);
        self.metrics.set_stopping();
        self.recovered.clear();
        self.notifier.send("STOPPING=1");
        self.write_heartbeat(HeartbeatStatus::Stopping);
    }

    fn abort(&mut self, abort: &Latch) {
        self.aborted = true;
        abort.fire();
    }

    fn on_report(&mut self, report: Report) {
        if report.end == End::Completed {
            // The committer's word: the slot was freed at `Committing`.
            self.release_busy(&report.name);
            return;
        }
        self.running -= 1;
        self.in_flight.remove(&report.name);
        self.pause_after(&report);
        match report.attempt {
            Some(ok) => self.breaker.record(ok, report.probe, Instant::now()),
            None if report.probe => self.breaker.probe_void(),
            None => {}
        }
        if report.end == End::Postponed {
            self.claim_pause = Some(Instant::now() + self.claim_backoff.take());
        }
        if let End::Deferred {
            not_before, task, ..
        } = &report.end
        {
            let entry = Deferred {
                not_before: *not_before,
                priority: task.priority,
                dependencies: Vec::new(),
                checked: None,
            };
            self.deferred.insert(report.name.clone(), entry);
        }
        self.release_busy(&report.name);
        self.update_gauges();
    }

    /// A task of that name has left `.active/`: one waiting for it may go.
    fn release_busy(&mut self, name: &OsString) {
        if let Some(i) = self.busy.iter().position(|n| n == name) {
            let name = self.busy.swap_remove(i);
            self.push_peeked(name);
        }
    }

    /// Claims while slots are free, the breaker admits, and tasks wait.
    fn dispatch(&mut self) {
        if self.stopping.is_some() || self.claim_pause.is_some() {
            return;
        }
        if self.queue.wants_rescan() {
            self.rescan();
        }
        while self.running < self.cfg.max_concurrent {
            if let Some(claim) = self.recovered.pop() {
                self.send(Job::Recovered { claim });
                continue;
            }
            if self.queue.is_empty() {
                break;
            }
            let (admit, change) = self.pauses.admit(clock::unix_now());
            self.pause_changed(change);
            if admit == Admit::No {
                break;
            }
            let pause_probe = admit == Admit::Probe;
            let Some(probe) = self.breaker.admit(Instant::now()) else {
                if pause_probe {
                    self.pauses.probe_void();
                }
                break;
            };
            let Some(name) = self.queue.pop() else { break };
            let claimed = self.claim(name.clone(), probe);
            let is_run = matches!(claimed, Ok(Some(Job::Run { .. })));
            if probe && !is_run {
                self.breaker.probe_void();
            }
            if pause_probe && !is_run {
                self.pauses.probe_void();
            }
            match claimed {
                Ok(Some(job)) => {
                    self.skipped.clear(&name);
                    self.send(job);
                    self.claim_backoff.reset();
                }
                Ok(None) => {}
                Err(Refused::Held(trouble)) => self.set_aside(trouble, false),
                Err(Refused::Unreadable(trouble)) => self.set_aside(trouble, true),
                Err(Refused::Spool(e)) => {
                    self.pause_claims(&e, name);
                    break;
                }
            }
        }
        self.update_gauges();
    }

    fn send(&mut self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let name = job.name().clone();
            if jobs.send(job).is_ok() {
                self.running += 1;
                self.in_flight.insert(name);
            }
        }
    }

    /// An I/O error while claiming: the task stays pending, claims pause
    /// with back-off (up to 5 s) and resume by themselves.
    fn pause_claims(&mut self, e: &Error, name: OsString) {
        let pause = self.claim_backoff.take();
        log::error!("{e}; claims paused for {pause:?}");
        self.claim_pause = Some(Instant::now() + pause);
        self.push_peeked(name);
    }

    /// A pending file that cannot be claimed for now: it gets a back-off
    /// of its own while the others are claimed. One the worker may not
    /// read is reported once (log, metric, heartbeat) and moved aside
    /// when the folder lets the worker move it.
    fn set_aside(&mut self, trouble: Trouble, unreadable: bool) {
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
    fn claim(&mut self, name: OsString, probe: bool) -> std::result::Result<Option<Job>, Refused> {
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
            log::info!(task_id = task.id, waiting_for = dependencies.len(); "Task waits for its dependencies");
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
    fn release_due_deferred(&mut self) {
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
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.forget_waits(&name),
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
    fn forget_waits(&mut self, name: &OsStr) {
        if let Some(id) = name.to_str().and_then(json_stem) {
            self.waits.remove(id);
        }
    }

    /// Queues a name after a look at its priority and age; with the queue
    /// full it stays in the folder unread, for a later rescan.
    fn push_peeked(&mut self, name: OsString) {
        if self.queue.contains(&name) {
            return;
        }
        if self.queue.is_full() {
            self.queue.leave_out();
            return;
        }
        let (priority, written) = peek(&self.held().pending, &name, self.cfg.max_task_bytes);
        self.queue.push(name, priority, written);
    }

    /// A task that just arrived: even a full queue takes it if it would
    /// run before the queue's last entry.
    fn push_arrival(&mut self, name: OsString) {
        if self.queue.contains(&name) {
            return;
        }
        let (priority, written) = peek(&self.held().pending, &name, self.cfg.max_task_bytes);
        self.queue.push_urgent(name, priority, written);
    }

    /// Lists the tasks folder and queues what the queue misses, up to its
    /// capacity; the rest is counted and waits for the queue to run low.
    /// A file set aside waits for its own back-off.
    fn rescan(&mut self) {
        self.queue.forget_left_out();
        let pending = self.held().pending.clone();
        let names = match pending.names() {
            Ok(n) => n,
            Err(e) => {
                log::error!("{}", Error::io("cannot list", pending.path(), e));
                return;
            }
        };
        self.skipped.keep_only(&names);
        for name in names {
            let settling = self.settling.iter().any(|(_, n)| *n == name);
            if is_task_file(&name) && !settling && !self.skipped.contains(&name) {
                self.push_peeked(name);
            }
        }
        self.update_gauges();
    }

    /// Loads deferred tasks the schedule does not know (after a restart, or
    /// written by another process for the same worker). Each read is
    /// bounded; a copy this worker is still handling is left to its report.
    fn load_deferred(&mut self) {
        let deferred = self.held().deferred.clone();
        let Ok(names) = deferred.names() else {
            return;
        };
        for name in names {
            if !is_task_file(&name)
                || self.deferred.contains(&name)
                || self.in_flight.contains(&name)
            {
                continue;
            }
            let task = deferred
                .read_bounded(&name, self.cfg.max_task_bytes)
                .ok()
                .and_then(|b| Task::parse(&b, &self.cfg.name).ok());
            let entry = match task {
                Some(t) => {
                    if !t.dependencies.is_empty() {
                        self.waits.insert(t.id.clone(), t.dependencies.clone());
                    }
                    Deferred {
                        not_before: t.not_before.unwrap_or(0.0),
                        priority: t.priority,
                        dependencies: t.dependencies,
                        checked: None,
                    }
                }
                // Unreadable or too large: back to pending, where the
                // claim judges it.
                None => Deferred {
                    not_before: 0.0,
                    priority: Priority::Normal,
                    dependencies: Vec::new(),
                    checked: None,
                },
            };
            self.deferred.insert(name, entry);
        }
    }

    /// Temporary files a crash left in the folders this worker writes:
    /// those of a process of this host that is gone, and any an hour old.
    fn remove_stale_temps(&self) {
        let dirs = self.held();
        let removed: usize = dirs
            .all()
            .iter()
            .map(|d| d.remove_stale_temps(STALE_TEMP))
            .sum();
        if removed > 0 {
            log::info!(removed = removed; "Removed temporary files a crash left");
        }
    }

    /// Takes the lock of every `.active/` entry whose claimer is gone.
    fn probe_active(&mut self) {
        let active = self.held().active.clone();
        let Ok(names) = active.names() else {
            return;
        };
        for name in names {
            if !is_task_file(&name) || self.recovered.iter().any(|c| c.name == name) {
                continue;
            }
            match claim::probe(&active, &name) {
                Ok(Some(claim)) => self.recovered.push(claim),
                Ok(None) => {}
                Err(e) => log::error!("{e}"),
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics.set_queue_size(self.queue.pending());
        self.metrics.set_active(self.running);
        self.metrics.set_breaker(self.breaker.state());
    }

    fn write_heartbeat(&self, status: HeartbeatStatus) {
        let beat = Heartbeat {
            worker: self.cfg.name.clone(),
            timestamp: clock::now_rfc3339(),
            uptime_seconds: self.started.elapsed().as_secs(),
            queue_size: self.queue.pending() as u64,
            active_tasks: self.running as u64,
            circuit_breaker_state: self.breaker.state(),
            paused_reason: self.pauses.current().map(|p| p.reason),
            paused_until: self
                .pauses
                .current()
                .map(|p| clock::rfc3339(clock::from_unix(p.until))),
            cost_usd_today: (self.metrics.today().usd * 1e6).round() / 1e6,
            unclaimable: self
                .skipped
                .shown()
                .into_iter()
                .map(|t| Unclaimable {
                    file: t.name.to_string_lossy().into_owned(),
                    owner_uid: t.uid,
                    error: t.error,
                })
                .collect(),
            stats: self.metrics.heartbeat_stats(),
            status,
            pid: std::process::id(),
            hostname: heartbeat::hostname(),
            version: env!("CARGO_PKG_VERSION").into(),
            heartbeat_interval: self.cfg.heartbeat_interval.as_secs_f64(),
            metrics_addr: self.metrics_addr.clone(),
        };
        let name = OsString::from(heartbeat_file(&self.cfg.name));
        let heartbeats = self.held().heartbeats.clone();
        if let Err(e) = heartbeats.publish(&name, &json_line(&beat), self.cfg.durability) {
            log::error!("{e}");
        }
    }
}

/// Why a pending file was not claimed.
enum Refused {
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

/// The instant at which the wall clock shows `unix`.
fn instant_at(unix: f64) -> Instant {
    let secs = (unix - clock::unix_now()).clamp(0.0, 1e6);
    Instant::now() + Duration::from_secs_f64(secs)
}

fn young(written: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(written)
        .map_or(true, |age| age < SETTLE)
}

/// A pending file's priority and write time, without claiming it.
fn peek(pending: &Dir, name: &OsStr, max_bytes: u64) -> (Priority, SystemTime) {
    let Ok(entry) = pending.stat(name) else {
        return (Priority::Normal, SystemTime::now());
    };
    let written = entry.modified();
    if !entry.is_file() || entry.size > max_bytes.min(PEEK_MAX) {
        return (Priority::Normal, written);
    }
    let priority = pending
        .read_bounded(name, PEEK_MAX)
        .map_or(Priority::Normal, |b| peek_priority(&b));
    (priority, written)
}
