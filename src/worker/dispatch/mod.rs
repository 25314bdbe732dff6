//! The dispatcher: the thread that ties the spool, the watcher, the pool,
//! the retry schedule and the breaker together. One thread owns all the
//! state (the pending queue, the deferred schedule, the breaker, the
//! timers) and talks to the others through channels; it blocks in the
//! kernel when there is nothing to do, and wakes for a notice, a report, a
//! signal, or its next timer (the heartbeat when idle).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};

use crate::clock::{self, Backoff};
use crate::error::Error;
use crate::latch::Latch;
use crate::model::failure::FailureClass;
use crate::model::heartbeat::{
    self, Heartbeat, HeartbeatStatus, Standing, Unclaimable, STALE_INTERVALS,
};
use crate::model::instances as heartbeats;
use crate::model::task::{peek_priority, Invalid, Priority, Task};
use crate::spool::claim::{self, Activated, Attempt, Claim, Unread};
use crate::spool::dir::Dir;
use crate::spool::names::{
    cancel_request, cancel_request_id, heartbeat_file, is_task_file, json_stem, task_file,
};
use crate::spool::publish::json_line;
use crate::spool::WorkerDirs;
use crate::worker::breaker::{self, Breaker};
use crate::worker::cancel::Cancels;
use crate::worker::config::WorkerConfig;
use crate::worker::deps::{self, DepIndex, DepState, Waits};
use crate::worker::instance::Instance;
use crate::worker::metrics::{DaySpend, Metrics};
use crate::worker::notify::Notifier;
use crate::worker::pause::{Admit, Change, Pauses};
use crate::worker::pool::{End, Job, Report};
use crate::worker::queue::{Deferred, DeferredSchedule, PendingQueue};
use crate::worker::skip::{Skipped, Trouble};
use crate::worker::startup;
use crate::worker::watch::{Notice, Watcher};

mod intake;
use crate::worker::{current, SharedDirs};
use intake::Refused;

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
    /// The running tasks an operator may cancel (shared with the pool).
    cancels: Arc<Cancels>,
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
    /// Results handed to the committer and not yet durable. The
    /// committer's word can come before the pool thread's, so this dips
    /// below zero for a moment.
    committing: isize,
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
    /// Which process of the worker name this is: its own heartbeat.
    instance: Instance,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: WorkerConfig,
        dirs: SharedDirs,
        cancels: Arc<Cancels>,
        metrics: Arc<Metrics>,
        jobs: Sender<Job>,
        watcher: Option<Watcher>,
        poll: Option<Duration>,
        metrics_addr: Option<String>,
    ) -> Self {
        let now = Instant::now();
        let poll = poll.filter(|p| !p.is_zero());
        let queue = PendingQueue::with_cap(cfg.queue_cap);
        let instance = Instance::take(&current(&dirs).heartbeats, &cfg.name);
        Dispatcher {
            instance,
            breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_timeout),
            pauses: Pauses::new(cfg.daily_budget_usd, cfg.pause_backoff),
            deps: DepIndex::new(&cfg.spool),
            waits: HashMap::new(),
            skipped: Skipped::default(),
            dirs,
            cancels,
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
            committing: 0,
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
            if self.stopping.is_some()
                && self.running == 0
                && (self.committing <= 0 || self.aborted)
            {
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
        // The breaker turns half-open by time, a task waiting or not.
        consider(self.breaker.reopens_at());
        if !self.queue.is_empty() {
            consider(self.pauses.current().map(|p| instant_at(p.until)));
        }
        consider(self.deferred.next_due().map(instant_at));
        wake
    }

    fn on_timers(&mut self, abort: &Latch) {
        let now = Instant::now();
        let change = self.breaker.tick(now);
        self.breaker_changed(change);
        if self.stopping.is_some_and(|t| now >= t) && !self.aborted {
            if self.running > 0 {
                log::warn!(running = self.running; "Shutdown timeout: stopping running tasks now");
            } else {
                log::warn!(unwritten = self.committing; "Shutdown timeout: giving up on {} result(s) not yet written; their tasks stay in .active/ and run again after recovery", self.committing);
            }
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

    /// Says a change of the breaker in the log, the gauge and at once in
    /// the heartbeat.
    fn breaker_changed(&mut self, change: Option<breaker::Change>) {
        let Some(change) = change else { return };
        match change {
            breaker::Change::Opened { failures, until } => {
                let wait = until.saturating_duration_since(Instant::now());
                let at = clock::rfc3339(SystemTime::now() + wait);
                log::warn!(failures = failures, until = at.as_str(); "Circuit breaker open after {failures} failed attempts in a row: claims nothing until {at}");
            }
            breaker::Change::HalfOpen => {
                log::info!("Circuit breaker half-open: the next task probes the agent");
            }
            breaker::Change::Closed => log::info!("Circuit breaker closed: the probe succeeded"),
        }
        self.update_gauges();
        self.write_heartbeat(self.status());
    }

    /// Takes up what the last heartbeat of this worker (a previous run)
    /// said: a pause not over yet, and today's spend.
    fn resume_from_heartbeat(&mut self) {
        let own = self.cfg.spool.heartbeats.join(&self.instance.file);
        let name = self.cfg.spool.heartbeat_path(&self.cfg.name);
        let Some(beat) = heartbeats::read(&own).or_else(|| heartbeats::read(&name)) else {
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
            Notice::Cancel(ids) => {
                for id in ids {
                    self.cancel_requested(&id);
                }
            }
            Notice::Rescan => {
                log::warn!("inotify queue overflowed: rescanning");
                self.rescan();
            }
            Notice::Rewatch => self.rewatch(),
        }
    }

    /// hw-dlq asks that the running task `id` be stopped and
    /// dead-lettered: the request is taken, and its file removed.
    fn cancel_requested(&mut self, id: &str) {
        let running = self.cancels.request(id, Instant::now());
        match running {
            true => {
                log::info!(task_id = id; "Cancel requested by hw-dlq: stopping the running task")
            }
            false => {
                log::info!(task_id = id; "Cancel requested by hw-dlq for a task not running here: kept a minute")
            }
        }
        let request = OsString::from(cancel_request(id));
        if let Err(e) = self.held().pending.unlink(&request) {
            if !crate::error::vanished(&e) {
                log::warn!(
                    "{}",
                    Error::io("cannot remove", &self.held().pending.join(&request), e)
                );
            }
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
        let grace = self.cfg.shutdown_timeout.as_secs_f64();
        log::info!(signal = signal, running = self.running; "Shutting down: no new claims; the {} running task(s) get up to {grace} s (--shutdown-timeout), a second signal stops them now", self.running);
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
            self.committing -= 1;
            self.release_busy(&report.name);
            return;
        }
        self.running -= 1;
        if report.end == End::Committing {
            self.committing += 1;
        }
        self.in_flight.remove(&report.name);
        self.pause_after(&report);
        match report.attempt {
            Some(ok) => {
                let change = self.breaker.record(ok, report.probe, Instant::now());
                self.breaker_changed(change);
            }
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
        let requests: Vec<String> = names
            .iter()
            .filter_map(|n| cancel_request_id(n.to_str()?).map(String::from))
            .collect();
        for id in requests {
            self.cancel_requested(&id);
        }
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
            instance: Some(self.instance.name.clone()),
            version: env!("CARGO_PKG_VERSION").into(),
            heartbeat_interval: self.cfg.heartbeat_interval.as_secs_f64(),
            metrics_addr: self.metrics_addr.clone(),
        };
        let bytes = json_line(&beat);
        // The name's own file, for its readers, says what the name does:
        // a stopping instance leaves it to a live one.
        let leaving = matches!(status, HeartbeatStatus::Stopping | HeartbeatStatus::Stopped);
        let name = OsString::from(heartbeat_file(&self.cfg.name));
        let mut files = vec![self.instance.file.as_os_str()];
        if !(leaving && self.other_instance_lives()) {
            files.push(&name);
        }
        let folder = self.held().heartbeats.clone();
        if let Err(e) = folder.publish_each(&files, &bytes, self.cfg.durability) {
            log::error!("{e}");
        }
    }

    /// Whether another instance of the name has a live heartbeat.
    fn other_instance_lives(&self) -> bool {
        let now = clock::unix_now();
        heartbeats::of_worker(&self.cfg.spool, &self.cfg.name)
            .iter()
            .filter(|i| i.instance.as_deref() != Some(self.instance.name.as_str()))
            .filter(|i| i.instance.is_some())
            .any(|i| {
                let stale_after = STALE_INTERVALS * i.beat.interval().as_secs_f64();
                heartbeat::standing(&i.beat, now, stale_after) == Standing::Live
            })
    }
}

/// The instant at which the wall clock shows `unix`.
fn instant_at(unix: f64) -> Instant {
    let secs = (unix - clock::unix_now()).clamp(0.0, 1e6);
    Instant::now() + Duration::from_secs_f64(secs)
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
