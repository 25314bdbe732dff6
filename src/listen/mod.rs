//! hw-listen: the orchestrator's listener. It follows every worker's
//! pending tasks (to learn when each was enqueued), results, dead letters
//! and heartbeats with inotify, and turns them into events: each emitted
//! once, also across restarts (see `state`). A timer only drives
//! heartbeat ages (judged by `health`) and completion timeouts.

pub mod config;
mod emit;
mod health;
mod python;
mod state;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::path::Path;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::{json, Value};

use crate::clock;
use crate::error::{Error, Result};
use crate::latch::Latch;
use crate::model::dead_letter::DlqReason;
use crate::model::event::{Event, EventKind};
use crate::model::heartbeat::HeartbeatStatus;
use crate::model::instances as heartbeats;
use crate::model::result::ResultStatus;
use crate::model::Word;
use crate::spool::names::{
    dead_letter_id, heartbeat_worker, is_task_file, json_stem, result_id, task_file, valid_name,
    valid_worker_name,
};
use crate::spool::{create_dir, read_regular, RECORD_MAX};
use config::ListenConfig;
use emit::{Emitter, Hooks};
use health::{Beat, Thresholds};
use state::{BatchState, State, TaskState, WorkerState};

/// Task files larger than this are not read for their id and batch.
const MAX_TASK_READ: u64 = 1 << 20;

/// What a watch descriptor watches.
#[derive(Debug, Clone)]
enum Watched {
    /// `tasks/`, `results/` or `dlq/`: new workers appear here.
    Root,
    Heartbeats,
    Pending(String),
    Results(String),
    DeadLetters(String),
}

struct Listener {
    cfg: ListenConfig,
    state: State,
    emitter: Emitter,
    inotify: Inotify,
    watches: HashMap<WatchDescriptor, Watched>,
    followed: BTreeSet<String>,
    /// The heartbeat that speaks for each worker name.
    beats: HashMap<String, Beat>,
    /// Each worker name's instances, by their own heartbeats.
    instances: HashMap<String, Vec<Instance>>,
    /// Completion deadlines (Unix ms) of tasks not yet terminal.
    deadlines: BinaryHeap<Reverse<(u64, String)>>,
    /// Batches with a task that ended in this burst: judged at its end,
    /// when every member the burst revealed is known.
    touched: BTreeSet<String>,
    emitted: u64,
    /// Unix s of the next `--poll` rescan.
    next_poll: Option<f64>,
}

/// One process of a worker name, as its heartbeat says.
#[derive(Debug, Clone)]
struct Instance {
    label: String,
    hostname: String,
    pid: u32,
    beat: Beat,
}

/// Runs the listener until SIGTERM or SIGINT (or, with `--once`, until
/// it has caught up).
pub fn run(cfg: ListenConfig) -> Result<()> {
    crate::sys::close_inherited_on_exec();
    let stop = Latch::new().map_err(|e| Error::io("cannot create a pipe", "".as_ref(), e))?;
    let signals = watch_signals(stop.clone())?;
    if cfg.exec.is_some() {
        // PID 1 in a container: what an --exec command leaves is reaped.
        crate::agent::reaper::start();
    }
    let mut l = Listener::new(cfg)?;
    l.catch_up()?;
    l.poll_due();
    l.tick()?;
    l.flush();
    if !l.cfg.once {
        log::info!(workers = l.followed.len(), emitted = l.emitted; "Listening");
        l.serve(&stop)?;
    }
    let emitted = l.emitted;
    l.finish()?;
    log::info!(emitted = emitted; "Listener stopped");
    signals.close();
    Ok(())
}

fn watch_signals(stop: Latch) -> Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("cannot install signal handlers", "".as_ref(), e))?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                stop.fire();
            }
        })
        .map_err(|e| Error::io("cannot start the signal thread", "".as_ref(), e))?;
    Ok(handle)
}

impl Listener {
    fn new(cfg: ListenConfig) -> Result<Listener> {
        let now = clock::unix_now();
        let horizon = now - cfg.retain.as_secs_f64();
        let state = State::load(&cfg.spool.state_file, |bytes| {
            python::import(bytes, &cfg.spool, now, horizon)
        })?;
        let hooks = match &cfg.exec {
            Some(cmd) => Some(Hooks::start(
                cmd.clone(),
                cfg.exec_timeout,
                cfg.spool.root.clone(),
                &cfg.spool.orchestrator_dir(),
            )?),
            None => None,
        };
        let emitter = Emitter::new(&cfg.spool.orchestrator_dir(), hooks)?;
        let inotify = Inotify::init()
            .map_err(|e| Error::io("cannot start inotify for", &cfg.spool.root, e))?;
        let mut l = Listener {
            cfg,
            state,
            emitter,
            inotify,
            watches: HashMap::new(),
            followed: BTreeSet::new(),
            beats: HashMap::new(),
            instances: HashMap::new(),
            deadlines: BinaryHeap::new(),
            touched: BTreeSet::new(),
            emitted: 0,
            next_poll: None,
        };
        let s = l.cfg.spool.clone();
        for root in [&s.tasks, &s.results, &s.dlq] {
            create_dir(root)?;
            if l.cfg.workers.is_none() {
                l.watch(
                    root,
                    Watched::Root,
                    WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR,
                )?;
            }
        }
        create_dir(&s.heartbeats)?;
        l.watch(
            &s.heartbeats,
            Watched::Heartbeats,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO,
        )?;
        for key in l
            .state
            .snap
            .tasks
            .iter()
            .filter(|(_, t)| !t.is_terminal())
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
        {
            l.schedule_deadline(&key);
        }
        Ok(l)
    }

    fn watch(&mut self, dir: &Path, what: Watched, mask: WatchMask) -> Result<()> {
        let wd = self
            .inotify
            .watches()
            .add(dir, mask)
            .map_err(|e| Error::io("cannot watch", dir, e))?;
        self.watches.insert(wd, what);
        Ok(())
    }

    /// Every worker's folders, read once: what happened while we were away.
    fn catch_up(&mut self) -> Result<()> {
        for worker in self.worker_names() {
            self.follow(&worker);
        }
        if self.state.snap.horizon.is_none() {
            // The first catch-up emitted everything there was; from now on
            // records older than the retention are old news.
            let horizon = clock::unix_now() - self.cfg.retain.as_secs_f64();
            self.state.set_horizon(horizon)?;
        }
        Ok(())
    }

    fn worker_names(&self) -> Vec<String> {
        if let Some(w) = &self.cfg.workers {
            return w.clone();
        }
        let s = &self.cfg.spool;
        let mut names = BTreeSet::new();
        for root in [&s.tasks, &s.results, &s.dlq] {
            for entry in fs::read_dir(root).into_iter().flatten().flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if let Some(n) = entry
                    .file_name()
                    .to_str()
                    .filter(|n| is_dir && valid_worker_name(n))
                {
                    names.insert(n.to_string());
                }
            }
        }
        for entry in fs::read_dir(&s.heartbeats).into_iter().flatten().flatten() {
            if let Some(n) = entry.file_name().to_str().and_then(heartbeat_worker) {
                names.insert(n.to_string());
            }
        }
        names.into_iter().collect()
    }

    /// Starts following a worker (idempotent): watch its folders, then read
    /// them, so nothing between the two is missed.
    fn follow(&mut self, worker: &str) {
        let s = self.cfg.spool.clone();
        let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO;
        let folders = [
            (s.pending_dir(worker), Watched::Pending(worker.to_string())),
            (s.result_dir(worker), Watched::Results(worker.to_string())),
            (s.dlq_dir(worker), Watched::DeadLetters(worker.to_string())),
        ];
        for (dir, what) in folders {
            if let Err(e) = create_dir(&dir).and_then(|()| self.watch(&dir, what, mask)) {
                log::error!("{e}");
            }
        }
        self.followed.insert(worker.to_string());
        for dir in [
            s.pending_dir(worker),
            s.deferred_dir(worker),
            s.active_dir(worker),
        ] {
            for name in list(&dir) {
                self.on_pending(worker, &dir.join(name));
            }
        }
        let dlq = s.dlq_dir(worker);
        for name in list(&dlq) {
            self.on_dead_letter(worker, &name);
        }
        let results = s.result_dir(worker);
        for name in list(&results) {
            self.on_result(worker, &name);
        }
        self.on_heartbeat(worker);
    }

    fn serve(&mut self, stop: &Latch) -> Result<()> {
        let mut buffer = vec![0u8; 256 * 1024];
        while !stop.is_fired() {
            let timeout = self.next_wake();
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, timeout);
            if stop.is_fired() {
                break;
            }
            self.read_events(&mut buffer)?;
            self.poll_due();
            self.tick()?;
            self.flush();
        }
        Ok(())
    }

    fn next_wake(&mut self) -> PollTimeout {
        let mut wake: Option<f64> = self
            .deadlines
            .peek()
            .map(|Reverse((ms, _))| *ms as f64 / 1000.0);
        if let Some(p) = self.next_poll {
            wake = Some(wake.map_or(p, |w| w.min(p)));
        }
        for (w, beat) in &self.beats {
            let health = self
                .state
                .snap
                .workers
                .get(w)
                .map(|s| s.health)
                .unwrap_or_default();
            if let Some(at) = self.thresholds().next_change(health, beat) {
                wake = Some(wake.map_or(at, |x| x.min(at)));
            }
        }
        for (w, all) in &self.instances {
            let lost = self.state.snap.workers.get(w).map(|s| &s.lost_instances);
            for i in all {
                let known = lost.is_some_and(|l| l.contains(&i.label));
                if i.beat.status != HeartbeatStatus::Stopped && !known {
                    let at = i.beat.at + self.thresholds().stale_after(&i.beat);
                    wake = Some(wake.map_or(at, |x| x.min(at)));
                }
            }
        }
        wake.map_or(PollTimeout::NONE, clock::poll_timeout_unix)
    }

    /// `--poll`: every folder read again when it is time.
    fn poll_due(&mut self) {
        let Some(every) = self.cfg.poll else { return };
        let now = clock::unix_now();
        if self.next_poll.is_some_and(|t| now < t) {
            return;
        }
        if self.next_poll.is_some() {
            let workers: BTreeSet<String> = self
                .followed
                .iter()
                .cloned()
                .chain(self.worker_names())
                .collect();
            for w in workers {
                self.follow(&w);
            }
        }
        self.next_poll = Some(now + every.as_secs_f64());
    }

    /// Reads what inotify has queued (up to 64 buffers, so that one burst
    /// holds everything that happened together), then handles it.
    fn read_events(&mut self, buffer: &mut [u8]) -> Result<()> {
        let mut todo = Vec::new();
        let mut overflow = false;
        let mut lost = BTreeSet::new();
        for _ in 0..64 {
            match self.inotify.read_events(buffer) {
                Ok(events) => {
                    for e in events {
                        if e.mask.contains(EventMask::Q_OVERFLOW) {
                            overflow = true;
                        } else if e.mask.contains(EventMask::IGNORED) {
                            // A folder removed or replaced: follow its worker again.
                            if let Some(
                                Watched::Pending(w) | Watched::Results(w) | Watched::DeadLetters(w),
                            ) = self.watches.remove(&e.wd)
                            {
                                lost.insert(w);
                            }
                        } else if let (Some(what), Some(name)) = (self.watches.get(&e.wd), e.name) {
                            todo.push((what.clone(), name.to_string_lossy().into_owned()));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(Error::io(
                        "cannot read inotify events for",
                        &self.cfg.spool.root,
                        e,
                    ));
                }
            }
        }
        if overflow {
            log::warn!("inotify queue overflowed: reading every folder again");
            let workers: Vec<String> = self.followed.iter().cloned().collect();
            for w in workers.iter().chain(self.worker_names().iter()) {
                self.follow(w);
            }
        }
        for (what, name) in todo {
            self.on_file(what, &name);
        }
        for w in lost {
            log::warn!(worker = w; "A folder of this worker was removed or replaced: following it again");
            self.follow(&w);
        }
        Ok(())
    }

    fn on_file(&mut self, what: Watched, name: &str) {
        match what {
            Watched::Root if valid_worker_name(name) && !self.followed.contains(name) => {
                log::info!(worker = name; "Following a new worker");
                self.follow(name);
            }
            Watched::Root => {}
            Watched::Heartbeats => {
                let Some(w) = heartbeat_worker(name) else {
                    return;
                };
                if !self.followed.contains(w) && self.cfg.workers.is_none() {
                    self.follow(w);
                } else if self.followed.contains(w) {
                    self.on_heartbeat(w);
                }
            }
            Watched::Pending(w) => self.on_announced(&w, name),
            Watched::Results(w) => self.on_result(&w, name),
            Watched::DeadLetters(w) => self.on_dead_letter(&w, name),
        }
    }

    /// A task file appeared in a tasks folder. The worker may have claimed
    /// it, or even finished it, before we look: follow it into `.active/`,
    /// `.deferred/`, or to its result, so that no task goes unknown (its
    /// batch would complete early, its timeout never fire).
    fn on_announced(&mut self, worker: &str, name: &str) {
        let s = self.cfg.spool.clone();
        for dir in [
            s.pending_dir(worker),
            s.active_dir(worker),
            s.deferred_dir(worker),
        ] {
            if self.on_pending(worker, &dir.join(name)) {
                return;
            }
        }
        if let Some(id) = result_id(name) {
            self.on_result(worker, &task_file(id));
        }
    }

    /// A task file seen pending (or in flight): learn when it was enqueued
    /// and its batch. False when there is no such task file.
    fn on_pending(&mut self, worker: &str, path: &Path) -> bool {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return false;
        };
        if !meta.is_file()
            || meta.len() > MAX_TASK_READ
            || !path.file_name().is_some_and(is_task_file)
        {
            return false;
        }
        let Some(task) = read_regular(path, MAX_TASK_READ)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            return true;
        };
        let Some(id) = task
            .get("task_id")
            .and_then(Value::as_str)
            .filter(|i| valid_name(i))
        else {
            return true;
        };
        let key = format!("{worker}/{id}");
        let written = meta
            .modified()
            .map(clock::to_unix)
            .unwrap_or_else(|_| clock::unix_now());
        let mut t = self.state.snap.tasks.get(&key).cloned().unwrap_or_default();
        let rerun = t.ended.is_some_and(|e| written > e);
        if t.enqueued.is_some() && !rerun {
            return true;
        }
        if rerun {
            // Replayed from the DLQ: a new run, followed afresh.
            t.status = None;
            t.dead_lettered = false;
            t.timed_out = false;
            t.ended = None;
        }
        t.enqueued = Some(written);
        t.batch = t.batch.or_else(|| batch_of(&task));
        self.save_task(&key, t);
        self.schedule_deadline(&key);
        true
    }

    fn schedule_deadline(&mut self, key: &str) {
        if let Some(enqueued) = self.state.snap.tasks.get(key).and_then(|t| t.enqueued) {
            let at = enqueued + self.cfg.completion_timeout.as_secs_f64();
            self.deadlines
                .push(Reverse((clock::unix_millis(at), key.to_string())));
        }
    }

    fn on_result(&mut self, worker: &str, name: &str) {
        let Some(id) = result_id(name) else {
            return;
        };
        let path = self.cfg.spool.result_path(worker, id);
        let Some(mtime_ns) = mtime_ns(&path) else {
            return;
        };
        let mtime = mtime_ns as f64 / 1e9;
        let key = format!("{worker}/{id}");
        let known = self.state.snap.tasks.get(&key).cloned();
        let mut t = known.clone().unwrap_or_default();
        if t.result == Some(mtime_ns) || (known.is_none() && self.is_old(mtime)) {
            return;
        }
        let Some(record) = read_json(&path) else {
            return;
        };
        let status = ResultStatus::of(&record).unwrap_or(ResultStatus::Failed);
        self.emit(Event::new(
            EventKind::TaskCompleted,
            completion(id, worker, status, &path, &record),
        ));
        t.result = Some(mtime_ns);
        t.status = Some(status.as_str().to_string());
        t.ended = Some(clock::unix_now());
        t.batch = t.batch.or_else(|| batch_of(&record));
        self.save_end(worker, &key, t, |totals| match status {
            ResultStatus::Completed => totals.completed += 1,
            ResultStatus::Failed => totals.failed += 1,
        });
    }

    fn on_dead_letter(&mut self, worker: &str, name: &str) {
        let Some(id) = dead_letter_id(name) else {
            return;
        };
        let path = self.cfg.spool.dlq_dir(worker).join(name);
        let key = format!("{worker}/{id}");
        let known = self.state.snap.tasks.get(&key).cloned();
        let mut t = known.clone().unwrap_or_default();
        if t.dead_letters.iter().any(|d| d == name) {
            return;
        }
        let Some(mtime) = mtime_ns(&path).map(|ns| ns as f64 / 1e9) else {
            return;
        };
        if known.is_none() && self.is_old(mtime) {
            return;
        }
        let Some(record) = read_json(&path) else {
            return;
        };
        let reason = record
            .get("dlq_reason")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        self.emit(Event::new(
            EventKind::TaskDeadLettered,
            json!({"task_id": id, "worker": worker, "dlq_reason": reason,
                   "dlq_file": path.display().to_string(),
                   "last_error": record.get("last_error").cloned().unwrap_or(Value::Null)}),
        ));
        t.dead_letters.push(name.to_string());
        t.batch = t.batch.or_else(|| batch_of(&record));
        // A task out of attempts also gets a failed result, which ends it.
        let has_result = DlqReason::parse(&reason).is_some_and(DlqReason::has_result);
        if !has_result && t.status.is_none() {
            t.dead_lettered = true;
            t.ended = Some(clock::unix_now());
        }
        self.save_end(worker, &key, t, |totals| totals.dead_lettered += 1);
    }

    /// Saves a task that a record ended, and counts it in its worker's
    /// totals; its batch is looked at again.
    fn save_end(
        &mut self,
        worker: &str,
        key: &str,
        t: TaskState,
        count: impl FnOnce(&mut WorkerState),
    ) {
        let mut totals = self.worker_state(worker);
        count(&mut totals);
        self.save_worker(worker, totals);
        self.touched.extend(t.batch.clone());
        self.save_task(key, t);
    }

    /// After the first catch-up, a record older than the retention that the
    /// state does not remember was emitted long ago, and forgotten since.
    fn is_old(&self, mtime: f64) -> bool {
        let cutoff = clock::unix_now() - self.cfg.retain.as_secs_f64();
        self.state.snap.horizon.is_some() && mtime < cutoff
    }

    /// `batch_completed` once every known task of the batch has ended.
    fn check_batch(&mut self, b: String) {
        if self.state.snap.batches.get(&b).is_some_and(|s| s.emitted) {
            return;
        }
        let Some(members) = self.state.members.get(&b) else {
            return;
        };
        let (mut completed, mut failed, mut dead) = (0, 0, 0);
        for key in members {
            let Some(t) = self.state.snap.tasks.get(key) else {
                continue;
            };
            let status = t.status.as_deref().map(ResultStatus::parse);
            match (status, t.dead_lettered) {
                (Some(Some(ResultStatus::Completed)), _) => completed += 1,
                (Some(_), _) => failed += 1,
                (None, true) => dead += 1,
                (None, false) => return,
            }
        }
        let total = completed + failed + dead;
        self.emit(Event::new(
            EventKind::BatchCompleted,
            json!({"batch_id": b, "total": total, "completed": completed,
                   "failed": failed, "dead_lettered": dead}),
        ));
        if let Err(e) = self.state.set_batch(&b, BatchState { emitted: true }) {
            log::error!("{e}");
        }
    }

    fn on_heartbeat(&mut self, worker: &str) {
        let all: Vec<Instance> = heartbeats::of_worker(&self.cfg.spool, worker)
            .into_iter()
            .filter_map(|i| {
                let h = &i.beat;
                let beat = Beat {
                    at: h.written()?,
                    interval: h.interval().as_secs_f64(),
                    status: h.status,
                    paused_reason: h.paused_reason,
                    paused_until: h.paused_until.clone(),
                };
                Some(Instance {
                    label: i.label(worker),
                    hostname: h.hostname.clone(),
                    pid: h.pid,
                    beat,
                })
            })
            .collect();
        let now = clock::unix_now();
        let t = self.thresholds();
        // The name is as healthy as its healthiest instance.
        let best = all
            .iter()
            .min_by(|a, b| {
                let rank = |i: &Instance| t.judge(Some(&i.beat), now).0.rank();
                rank(a).cmp(&rank(b)).then(b.beat.at.total_cmp(&a.beat.at))
            })
            .map(|i| i.beat.clone());
        match best {
            Some(b) => {
                self.beats.insert(worker.to_string(), b);
            }
            None => {
                self.beats.remove(worker);
            }
        }
        self.instances.insert(worker.to_string(), all);
        self.judge(worker, now);
        self.judge_pause(worker);
        self.judge_instances(worker, now);
    }

    /// `worker_instance_lost`, once, for each instance whose heartbeat
    /// went stale (a stopped one is not lost) while another instance of
    /// the name lives (when none does, `worker_unhealthy` says it of the
    /// name); forgotten once it is fresh again or its heartbeat is gone.
    fn judge_instances(&mut self, worker: &str, now: f64) {
        let Some(all) = self.instances.get(worker).cloned() else {
            return;
        };
        let t = self.thresholds();
        let mut state = self.worker_state(worker);
        let before = state.lost_instances.clone();
        state
            .lost_instances
            .retain(|l| all.iter().any(|i| &i.label == l));
        let stale = |i: &Instance| {
            i.beat.status != HeartbeatStatus::Stopped && now - i.beat.at > t.stale_after(&i.beat)
        };
        let live = |i: &Instance| i.beat.status != HeartbeatStatus::Stopped && !stale(i);
        for i in &all {
            if !stale(i) {
                state.lost_instances.remove(&i.label);
            } else if state.lost_instances.insert(i.label.clone())
                && all.iter().any(|o| o.label != i.label && live(o))
            {
                let age = ((now - i.beat.at) * 10.0).round() / 10.0;
                self.emit(Event::new(
                    EventKind::WorkerInstanceLost,
                    json!({"worker": worker, "instance": i.label, "hostname": i.hostname,
                           "pid": i.pid, "heartbeat_age_seconds": age}),
                ));
            }
        }
        if state.lost_instances != before {
            self.save_worker(worker, state);
        }
    }

    /// `worker_paused` when a heartbeat says paused, `worker_resumed` when
    /// one no longer does.
    fn judge_pause(&mut self, worker: &str) {
        let Some(beat) = self.beats.get(worker).cloned() else {
            return;
        };
        let mut state = self.worker_state(worker);
        let (event, paused) = health::pause_event(state.paused, &beat);
        let Some(kind) = event else { return };
        let reason = paused.or(state.paused).map(|r| r.as_str());
        let until = beat
            .paused_until
            .filter(|_| kind == EventKind::WorkerPaused);
        self.emit(Event::new(
            kind,
            json!({"worker": worker, "paused_reason": reason, "paused_until": until}),
        ));
        state.paused = paused;
        self.save_worker(worker, state);
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            stale_after: self.cfg.stale_after.map(|d| d.as_secs_f64()),
            disconnect_after: self.cfg.disconnect_after.map(|d| d.as_secs_f64()),
        }
    }

    /// A worker's health now, and the event when it changed.
    fn judge(&mut self, worker: &str, now: f64) {
        let beat = self.beats.get(worker).cloned();
        let (health, why) = self.thresholds().judge(beat.as_ref(), now);
        let mut state = self.worker_state(worker);
        let before = state.health;
        if before == health {
            return;
        }
        let age = beat.as_ref().map(|b| ((now - b.at) * 10.0).round() / 10.0);
        let data = match health::event_of(before, health) {
            Some(EventKind::WorkerRecovered) => {
                json!({"worker": worker, "heartbeat_age_seconds": age})
            }
            Some(EventKind::WorkerDisconnected) => {
                json!({"worker": worker, "reason": why, "heartbeat_age_seconds": age,
                       "active_task_ids": self.active_ids(worker)})
            }
            _ => json!({"worker": worker, "reason": why, "heartbeat_age_seconds": age}),
        };
        if let Some(kind) = health::event_of(before, health) {
            self.emit(Event::new(kind, data));
        }
        state.health = health;
        self.save_worker(worker, state);
    }

    /// The ids of the tasks in a worker's `.active/`.
    fn active_ids(&self, worker: &str) -> Vec<String> {
        let dir = self.cfg.spool.active_dir(worker);
        let mut ids: Vec<String> = list(&dir)
            .into_iter()
            .filter_map(|name| {
                let task = read_regular(&dir.join(&name), MAX_TASK_READ)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                let id = task
                    .as_ref()
                    .and_then(|t| t.get("task_id"))
                    .and_then(Value::as_str)
                    .map(String::from);
                id.or_else(|| json_stem(&name).map(String::from))
            })
            .collect();
        ids.sort();
        ids
    }

    /// The timer's work: completion timeouts and heartbeat ages.
    fn tick(&mut self) -> Result<()> {
        let now = clock::unix_now();
        while let Some(Reverse((ms, key))) = self.deadlines.peek().cloned() {
            if ms as f64 / 1000.0 > now {
                break;
            }
            self.deadlines.pop();
            let Some(mut t) = self.state.snap.tasks.get(&key).cloned() else {
                continue;
            };
            if t.is_terminal() || t.timed_out {
                continue;
            }
            let (worker, id) = key.split_once('/').unwrap_or(("", &key));
            let enqueued = t.enqueued.map(|e| clock::rfc3339(clock::from_unix(e)));
            self.emit(Event::new(
                EventKind::TaskTimeout,
                json!({"task_id": id, "worker": worker, "enqueued_at": enqueued,
                       "timeout_seconds": self.cfg.completion_timeout.as_secs_f64()}),
            ));
            t.timed_out = true;
            self.save_task(&key, t);
        }
        let workers: Vec<String> = self.followed.iter().cloned().collect();
        for w in workers {
            self.judge(&w, now);
            self.judge_instances(&w, now);
        }
        Ok(())
    }

    fn emit(&mut self, event: Event) {
        // The journal lines of the events before go first: a crash may then
        // repeat only the event it interrupts.
        if let Err(e) = self.state.write_journal() {
            log::error!("{e}");
        }
        match self.emitter.emit(&event) {
            Ok(()) => self.emitted += 1,
            Err(e) => log::error!(event = event.kind.as_str(); "{e}"),
        }
    }

    fn save_task(&mut self, key: &str, t: TaskState) {
        if let Err(e) = self.state.set_task(key, t) {
            log::error!("{e}");
        }
    }

    /// What the state remembers of a worker (nothing yet: the default).
    fn worker_state(&self, worker: &str) -> WorkerState {
        self.state
            .snap
            .workers
            .get(worker)
            .cloned()
            .unwrap_or_default()
    }

    fn save_worker(&mut self, worker: &str, w: WorkerState) {
        if let Err(e) = self.state.set_worker(worker, w) {
            log::error!("{e}");
        }
    }

    /// The end of a burst: batches judged, then triggers and state made
    /// durable; now and then the journal is folded into a snapshot, after
    /// forgetting what is older than the retention.
    fn flush(&mut self) {
        for b in std::mem::take(&mut self.touched) {
            self.check_batch(b);
        }
        // Journal first, so that the one syncfs of the triggers also carries
        // it when it shares their file system.
        if let Err(e) = self.state.write_journal() {
            log::error!("{e}");
        }
        if let Err(e) = self.emitter.sync().and_then(|()| self.state.sync()) {
            log::error!("{e}");
        }
        if self.state.wants_snapshot() {
            self.state
                .forget_before(clock::unix_now() - self.cfg.retain.as_secs_f64());
            if let Err(e) = self.state.save() {
                log::error!("{e}");
            }
        }
    }

    fn finish(mut self) -> Result<()> {
        self.flush();
        self.state
            .forget_before(clock::unix_now() - self.cfg.retain.as_secs_f64());
        self.state.save()?;
        self.emitter.finish();
        Ok(())
    }
}

/// `task_completed`'s data, from the result alone (so a catch-up tells
/// as much as a live listener): the run's duration and exit status, the
/// failure class of a failed run, and what the agent said it cost.
fn completion(id: &str, worker: &str, status: ResultStatus, path: &Path, record: &Value) -> Value {
    let number = |v: Option<&Value>| v.filter(|v| v.is_number()).cloned();
    let mut data = json!({"task_id": id, "worker": worker, "status": status,
        "result_file": path.display().to_string(),
        "duration_seconds": number(record.get("duration_seconds")),
        "exit_code": number(record.get("exit_code"))});
    if status == ResultStatus::Failed {
        data["error"] = record
            .get("error")
            .filter(|e| e.is_string())
            .cloned()
            .into();
    }
    let cost = record.get("agent").and_then(|a| a.get("total_cost_usd"));
    if let Some(cost) = number(cost) {
        data["cost_usd"] = cost;
    }
    data
}

fn batch_of(record: &Value) -> Option<String> {
    let b = record.get("metadata")?.get("batch_id")?;
    match b {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn mtime_ns(path: &Path) -> Option<u64> {
    let t = fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

fn read_json(path: &Path) -> Option<Value> {
    let bytes = read_regular(path, RECORD_MAX).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Visible file names of a folder (no dot-files), sorted; none if missing.
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}
