//! The pool: a fixed number of threads that take claimed tasks from the
//! dispatcher, run them, and publish what became of them: a result, a
//! deferred retry, a dead letter. Each thread reports back so that the
//! dispatcher can free the slot and feed the breaker. A full disk is not
//! the task's fault: a publish that fails keeps the task where it is and
//! is tried again with back-off.

use std::ffi::OsStr;
use std::ffi::OsString;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::agent;
use crate::agent::claude::AgentReport;
use crate::agent::run::{self, Failure, Invocation, Limits, Outcome};
use crate::clock;
use crate::dlq;
use crate::dlq::cancel::CANCELLED_BY;
use crate::error::Result;
use crate::latch::Latch;
use crate::model::dead_letter::{self, DlqReason};
use crate::model::failure::{FailureClass, PauseReason};
use crate::model::result::{ClaimIdentity, ResultStatus, TaskResult, Trigger, TriggerStatus};
use crate::model::task::{Invalid, Priority, Task};
use crate::spool::claim::{Claim, Unread};
use crate::spool::commit::{self, Commits, Persisted};
use crate::spool::dir::Dir;
use crate::spool::names::{task_file, trigger_file, valid_name};
use crate::spool::publish::json_line;
use crate::spool::spare::Spares;
use crate::spool::WorkerDirs;
use crate::worker::cancel::Cancels;
use crate::worker::config::WorkerConfig;
use crate::worker::metrics::Metrics;
use crate::worker::{current, SharedDirs};

/// Work handed to a pool thread; every variant but `Irregular` holds the
/// task's lock.
#[derive(Debug)]
pub enum Job {
    /// A valid task in `.active/`: run it.
    Run {
        claim: Claim,
        task: Task,
        probe: bool,
    },
    /// A task file in `.active/` that cannot be run.
    Invalid {
        claim: Claim,
        bytes: Vec<u8>,
        invalid: Invalid,
    },
    /// A pending file over `--max-task-bytes`, never read.
    TooLarge { claim: Claim },
    /// A pending entry that is not a regular file.
    Irregular { name: OsString, kind: &'static str },
    /// A pending file the worker may not open or lock: moved aside if
    /// the folder lets it, else left (the dispatcher looks again later).
    Unreadable { name: OsString, detail: String },
    /// A task in `.active/` whose id already has a result, or is queued
    /// under another file name.
    Duplicate {
        claim: Claim,
        task: Task,
        detail: String,
    },
    /// A task in `.active/` one of whose dependencies failed.
    DependencyFailed {
        claim: Claim,
        task: Task,
        /// "dependency X failed", or the cycle it is part of.
        why: String,
    },
    /// An entry of `.active/` whose claimer died.
    Recovered { claim: Claim },
}

impl Job {
    /// The file name it is about.
    pub fn name(&self) -> &OsString {
        match self {
            Job::Run { claim, .. }
            | Job::Invalid { claim, .. }
            | Job::TooLarge { claim }
            | Job::DependencyFailed { claim, .. }
            | Job::Duplicate { claim, .. }
            | Job::Recovered { claim } => &claim.name,
            Job::Irregular { name, .. } | Job::Unreadable { name, .. } => name,
        }
    }
}

/// What a thread reports when it is done with a job.
#[derive(Debug)]
pub struct Report {
    pub name: OsString,
    pub probe: bool,
    /// Whether the agent's attempt succeeded, when one ran and counts for
    /// the breaker.
    pub attempt: Option<bool>,
    /// The agent ran and the account let it (no usage limit, a working
    /// login): a pause's probe says the pause is over.
    pub ran: bool,
    pub end: End,
}

#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Completed, its result handed to the committer: the slot is free,
    /// and `Completed` follows once the result is durable.
    Committing,
    /// From the committer: the result is durable and the task has left
    /// `.active/`. Frees no slot.
    Completed,
    /// Failed for good: result and dead letter written.
    Failed,
    /// Waiting in `.deferred/` for a retry, or, with a `pause`, until the
    /// account can run tasks again.
    Deferred {
        not_before: f64,
        task: Box<DeferredTask>,
        pause: Option<Pause>,
    },
    DeadLettered,
    /// Back in pending, no attempt charged (shutdown).
    Returned,
    /// Back in pending because the worker could not start the agent (out
    /// of open files or processes): claims should pause a while.
    Postponed,
    /// A dead claimer's run had finished: its entry was removed.
    Removed,
    /// Left where it was (another claimer, or an error already logged).
    Left,
}

/// The account failed, not the task: the worker should pause.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub reason: PauseReason,
    /// When the CLI said its limit resets (Unix seconds).
    pub reset_at: Option<f64>,
    /// What was said, for the log.
    pub words: String,
}

/// What the schedule needs of a deferred task.
#[derive(Debug, Clone, PartialEq)]
pub struct DeferredTask {
    pub priority: Priority,
}

/// What every pool thread shares.
pub struct Context {
    pub config: WorkerConfig,
    pub metrics: Arc<Metrics>,
    /// Fired when running tasks must stop now (the second signal).
    pub abort: Latch,
    /// Receipts and completed results go out through the committer.
    pub commits: Commits,
    /// To the dispatcher: a slot is free, or a result is durable.
    pub reports: Sender<Report>,
    /// The worker's folders, held open (the dispatcher holds them anew
    /// when one was replaced).
    pub dirs: SharedDirs,
    /// The running tasks an operator may cancel.
    pub cancels: Arc<Cancels>,
    /// Finished task files, kept to be written again.
    pub spares: Arc<Spares>,
}

impl Context {
    fn dirs(&self) -> Arc<WorkerDirs> {
        current(&self.dirs)
    }
}

pub struct Pool {
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn start(context: Arc<Context>, jobs: Receiver<Job>) -> std::io::Result<Pool> {
        let mut threads = Vec::new();
        for i in 0..context.config.max_concurrent {
            let (ctx, jobs) = (context.clone(), jobs.clone());
            let t = thread::Builder::new()
                .name(format!("pool-{i}"))
                .spawn(move || {
                    for job in jobs {
                        let report = execute_guarded(&ctx, job);
                        if ctx.reports.send(report).is_err() {
                            return;
                        }
                    }
                })?;
            threads.push(t);
        }
        Ok(Pool { threads })
    }

    /// Waits for every thread; they end once the job channel is closed.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A panic in one job must not take the daemon down: the job's lock is
/// released and its entry left in `.active/` for recovery.
fn execute_guarded(ctx: &Context, job: Job) -> Report {
    let probe = matches!(job, Job::Run { probe: true, .. });
    let name = job.name().clone();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(ctx, job)));
    caught.unwrap_or_else(|_| {
        log::error!(file = name.to_string_lossy(); "Internal error while handling a task; left for recovery");
        report(name, probe, None, End::Left)
    })
}

fn execute(ctx: &Context, job: Job) -> Report {
    match job {
        Job::Run { claim, task, probe } => run_task(ctx, claim, task, probe),
        Job::Invalid {
            claim,
            bytes,
            invalid,
        } => reject_invalid(ctx, claim, &bytes, &invalid),
        Job::TooLarge { claim } => reject_too_large(ctx, claim),
        Job::Irregular { name, kind } => reject_irregular(ctx, name, kind),
        Job::DependencyFailed { claim, task, why } => {
            let name = claim.name.clone();
            let end = refuse_task(ctx, claim, &task, DlqReason::DependencyFailed, &why);
            report(name, false, None, end)
        }
        Job::Duplicate {
            claim,
            task,
            detail,
        } => {
            let name = claim.name.clone();
            let end = refuse_task(ctx, claim, &task, DlqReason::DuplicateTaskId, &detail);
            report(name, false, None, end)
        }
        Job::Unreadable { name, detail } => reject_unreadable(ctx, name, &detail),
        Job::Recovered { claim } => recover(ctx, claim),
    }
}

/// A valid task that must not run (a dependency failed, its id is
/// taken): a dead letter saying why, and it leaves `.active/`.
fn refuse_task(ctx: &Context, claim: Claim, task: &Task, reason: DlqReason, why: &str) -> End {
    let record = dead_letter::task_record(task, reason, Some(why));
    let (dlq, d) = (ctx.dirs().dlq.clone(), ctx.config.durability);
    match persist(ctx, || dlq::publish(&dlq, &task.id, &record, d)) {
        Some(_) => {
            ctx.metrics.dead_lettered(reason);
            log::warn!(task_id = task.id, reason = reason.as_str(); "Task dead-lettered: {why}");
            finish(&ctx.spares, claim, End::DeadLettered)
        }
        None => End::Left,
    }
}

fn report(name: OsString, probe: bool, attempt: Option<bool>, end: End) -> Report {
    Report {
        name,
        probe,
        attempt,
        ran: false,
        end,
    }
}

/// The report of an attempt the agent ran and the account let run.
fn ran(name: OsString, probe: bool, attempt: Option<bool>, end: End) -> Report {
    Report {
        ran: true,
        ..report(name, probe, attempt, end)
    }
}

fn run_task(ctx: &Context, claim: Claim, task: Task, probe: bool) -> Report {
    let cfg = &ctx.config;
    let attempt = task.retry_count.saturating_add(1);
    log::info!(task_id = task.id, attempt = attempt; "Task started");
    let prompt = cfg.command.prompt(&task.description, &task.options);
    let env = [
        ("HW_TASK_ID", task.id.clone()),
        ("HW_WORKER", cfg.name.clone()),
        ("HW_TASK_FILE", claim.path().display().to_string()),
        ("HW_ATTEMPT", attempt.to_string()),
        ("HW_ROOT", cfg.spool.root.display().to_string()),
    ];
    let limits = Limits {
        timeout: task
            .timeout
            .map_or(cfg.task_timeout, |t| Duration::from_secs_f64(t.min(1e9))),
        kill_grace: cfg.kill_grace,
        max_output: cfg.max_output,
        max_memory: cfg.max_memory,
        max_cpu: cfg.max_cpu,
    };
    let workdir = workdir_of(cfg, &task);
    let stdin = match prompt
        .stdin
        .as_deref()
        .map(agent::stdin_holding)
        .transpose()
    {
        Ok(stdin) => stdin,
        Err(e) => {
            log::error!(task_id = task.id; "Cannot hold the prompt for the agent's stdin ({e}): task returned to pending, no attempt charged");
            return postpone(ctx, claim, probe);
        }
    };
    let cancel = ctx
        .cancels
        .register(&task.id)
        .map_err(|e| log::warn!(task_id = task.id; "Cannot make this run cancellable: {e}"))
        .ok();
    let invocation = Invocation {
        cancel: cancel.as_ref(),
        argv: &prompt.argv,
        env: &env,
        workdir: &workdir,
        stdin,
        limits,
        agent: true,
    };
    if cfg.receipts {
        send_receipt(ctx, &task);
    }
    let outcome = run::run(invocation, &ctx.abort);
    if let Some(latch) = cancel {
        ctx.cancels.unregister(&task.id);
        drop(latch);
    }
    let name = claim.name.clone();
    if !outcome.succeeded() && cfg.receipts {
        // The receipt goes out before anything else written for the task.
        ctx.commits.flush();
    }
    if outcome.aborted {
        return report(name, probe, None, return_to_pending(ctx, claim));
    }
    if outcome.cancelled {
        let end = refuse_task(ctx, claim, &task, DlqReason::Cancelled, CANCELLED_BY);
        return report(name, probe, None, end);
    }
    if outcome.transient {
        log::error!(task_id = task.id; "Cannot start the agent ({}): task returned to pending, no attempt charged", outcome.describe());
        return postpone(ctx, claim, probe);
    }
    ctx.metrics.duration.observe(outcome.duration);
    if let Some(agent) = &outcome.agent {
        ctx.metrics.spent(agent);
    }
    let Some(failure) = outcome.failure.clone() else {
        let end = complete(ctx, claim, &task, &outcome);
        return ran(name, probe, Some(true), end);
    };
    ctx.metrics.attempt_failed(failure.class);
    match failure.class {
        c if c.pauses().is_some() => report(name, probe, None, pause(ctx, claim, task, &failure)),
        FailureClass::NotRetryable => {
            let reason = DlqReason::NotRetryable;
            let end = give_up(ctx, claim, &task, reason, &failure, Some(&outcome));
            ran(name, probe, None, end)
        }
        _ => {
            let end = fail(ctx, claim, task, &failure, Some(&outcome));
            ran(name, probe, Some(false), end)
        }
    }
}

/// The task's own `workdir` below `--workdir` (the claim checked it), or
/// `--workdir`.
fn workdir_of(cfg: &WorkerConfig, task: &Task) -> std::path::PathBuf {
    match &task.options.workdir {
        Some(sub) if cfg.command.claude().is_some() => cfg.workdir.join(sub),
        _ => cfg.workdir.clone(),
    }
}

/// The worker, not the task, lacked what it takes: back to pending, no
/// attempt charged, and claims pause a while.
fn postpone(ctx: &Context, claim: Claim, probe: bool) -> Report {
    let name = claim.name.clone();
    let end = match return_to_pending(ctx, claim) {
        End::Returned => End::Postponed,
        other => other,
    };
    report(name, probe, None, end)
}

/// Hands the result to the committer; the entry leaves `.active/` and
/// the task counts as completed only once the result is durable.
fn complete(ctx: &Context, claim: Claim, task: &Task, outcome: &Outcome) -> End {
    let mut result = result_of(ctx, task, ResultStatus::Completed, Some(outcome), None);
    result.claim = Some(identity(&claim));
    let dir = ctx.dirs().results.clone();
    let file = OsString::from(task_file(&result.task_id));
    let (metrics, reports, spares) = (ctx.metrics.clone(), ctx.reports.clone(), ctx.spares.clone());
    let (task_id, secs) = (task.id.clone(), outcome.duration.as_secs_f64());
    let then = move |durable: bool| {
        if !durable {
            return; // Told to stop now: the entry is left for recovery.
        }
        metrics.processed(ResultStatus::Completed);
        log::info!(task_id = task_id, duration = format!("{secs:.3}s"); "Task completed");
        let name = claim.name.clone();
        let end = finish(&spares, claim, End::Completed);
        let _ = reports.send(report(name, false, None, end));
    };
    ctx.commits
        .result(dir, file, json_line(&result), Box::new(then));
    End::Committing
}

/// The account, not the task, failed (a usage limit, a login): the task
/// waits in `.deferred/` with no attempt charged, and the worker pauses.
fn pause(ctx: &Context, claim: Claim, mut task: Task, failure: &Failure) -> End {
    let Some(reason) = failure.class.pauses() else {
        unreachable!("only a class that pauses comes here")
    };
    let not_before = failure.reset_at.unwrap_or_else(clock::unix_now);
    task.defer(task.retry_count, not_before, &failure.detail);
    match defer_copy(ctx, &claim, &task) {
        Persisted::Done(()) => {}
        Persisted::Aborted => return End::Left,
        Persisted::Never(e) => return cannot_defer(ctx, claim, &task, failure, None, e),
    }
    log::warn!(task_id = task.id, error = failure.class.as_str(); "Task not run: {}; it waits, no attempt charged", failure.detail);
    finish(
        &ctx.spares,
        claim,
        End::Deferred {
            not_before,
            task: Box::new(DeferredTask {
                priority: task.priority,
            }),
            pause: Some(Pause {
                reason,
                reset_at: failure.reset_at,
                words: failure.detail.clone(),
            }),
        },
    )
}

/// Writes the task's deferred copy, retried while the disk refuses.
fn defer_copy(ctx: &Context, claim: &Claim, task: &Task) -> Persisted<()> {
    let (dir, d) = (ctx.dirs().deferred.clone(), ctx.config.durability);
    commit::persist(&ctx.abort, || dir.publish(&claim.name, &task.to_json(), d))
}

/// A failed attempt (`outcome` is `None` for an interrupted one): retry
/// later while attempts are left, else a failed result and a dead letter.
fn fail(
    ctx: &Context,
    claim: Claim,
    mut task: Task,
    failure: &Failure,
    outcome: Option<&Outcome>,
) -> End {
    let Some(delay) = ctx.config.retry.next_delay(task.retry_count) else {
        return give_up(
            ctx,
            claim,
            &task,
            DlqReason::MaxRetriesExceeded,
            failure,
            outcome,
        );
    };
    let not_before = clock::unix_now() + delay.as_secs_f64();
    task.defer(
        task.retry_count.saturating_add(1),
        not_before,
        &failure.detail,
    );
    match defer_copy(ctx, &claim, &task) {
        Persisted::Done(()) => {}
        Persisted::Aborted => return End::Left,
        Persisted::Never(e) => return cannot_defer(ctx, claim, &task, failure, outcome, e),
    }
    ctx.metrics.retried();
    log::warn!(task_id = task.id, retry_in = format!("{:.3}s", delay.as_secs_f64()), error = failure.class.as_str(); "Task failed, will retry: {}", failure.detail);
    let deferred = Box::new(DeferredTask {
        priority: task.priority,
    });
    finish(
        &ctx.spares,
        claim,
        End::Deferred {
            not_before,
            task: deferred,
            pause: None,
        },
    )
}

/// The deferred copy can never be written: the task ends here, as if it
/// had no attempt left, saying why.
fn cannot_defer(
    ctx: &Context,
    claim: Claim,
    task: &Task,
    failure: &Failure,
    outcome: Option<&Outcome>,
    e: crate::error::Error,
) -> End {
    log::error!(task_id = task.id; "{e}: this will not change; the task is dead-lettered");
    let failure = Failure {
        detail: format!("{}; and its retry cannot be written: {e}", failure.detail),
        ..failure.clone()
    };
    give_up(
        ctx,
        claim,
        task,
        DlqReason::MaxRetriesExceeded,
        &failure,
        outcome,
    )
}

/// No more attempts: a dead letter, then a failed result that names it.
fn give_up(
    ctx: &Context,
    claim: Claim,
    task: &Task,
    reason: DlqReason,
    failure: &Failure,
    outcome: Option<&Outcome>,
) -> End {
    let mut record = dead_letter::task_record(task, reason, Some(&failure.detail));
    record.insert("error".into(), failure.class.as_str().into());
    let (dlq, d) = (ctx.dirs().dlq.clone(), ctx.config.durability);
    let Some(dlq_file) = persist(ctx, || dlq::publish(&dlq, &task.id, &record, d)) else {
        return End::Left;
    };
    ctx.metrics.dead_lettered(reason);
    let mut result = result_of(ctx, task, ResultStatus::Failed, outcome, Some(dlq_file));
    result.claim = Some(identity(&claim));
    result.error = Some(failure.class);
    result.agent_error = failure.agent_error.clone();
    if !publish_result(ctx, &result) {
        return End::Left;
    }
    ctx.metrics.processed(ResultStatus::Failed);
    log::error!(task_id = task.id, error = failure.class.as_str(), reason = reason.as_str(); "Task failed for good, dead-lettered: {}", failure.detail);
    finish(&ctx.spares, claim, End::Failed)
}

fn result_of(
    ctx: &Context,
    task: &Task,
    status: ResultStatus,
    outcome: Option<&Outcome>,
    dlq_file: Option<String>,
) -> TaskResult {
    // An interrupted run has no exit status of its own: -1 says so.
    let blank = Outcome {
        exit_code: -1,
        ..Outcome::default()
    };
    let o = outcome.unwrap_or(&blank);
    let (stdout, stdout_truncated) = stdout_of(o, ctx.config.max_output);
    TaskResult {
        task_id: task.id.clone(),
        worker: ctx.config.name.clone(),
        status,
        exit_code: o.exit_code,
        stdout,
        stderr: o.stderr.text(),
        duration_seconds: clock::round_millis(o.duration.as_secs_f64()),
        timestamp: clock::now_rfc3339(),
        retry_count: task.retry_count,
        metadata: task.metadata(),
        error: o.failure.as_ref().map(|f| f.class),
        dlq_file,
        stdout_truncated,
        stderr_truncated: o.stderr.truncated,
        resource_limit: o.resource_limit.map(String::from),
        agent: o.agent.as_ref().map(AgentReport::fields),
        agent_error: o.failure.as_ref().and_then(|f| f.agent_error.clone()),
        claim: None,
    }
}

/// The identity of this process's claim, for its result.
fn identity(claim: &Claim) -> ClaimIdentity {
    ClaimIdentity {
        hostname: crate::model::heartbeat::hostname(),
        pid: std::process::id(),
        mtime_ns: unix_ns(claim.claimed),
    }
}

fn unix_ns(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the result's `stdout` holds: the CLI's answer when its output was
/// one result object, else the output as kept; cut to `--max-output`.
fn stdout_of(o: &Outcome, max: usize) -> (String, bool) {
    match o
        .agent
        .as_ref()
        .filter(|a| a.whole)
        .and_then(|a| a.answer())
    {
        Some(answer) => (agent::claude::cut(answer, max), answer.len() > max),
        None => (o.stdout.text(), o.stdout.truncated),
    }
}

fn publish_result(ctx: &Context, result: &TaskResult) -> bool {
    let (dir, d) = (ctx.dirs().results.clone(), ctx.config.durability);
    let name = OsString::from(task_file(&result.task_id));
    persist(ctx, || dir.publish(&name, &json_line(result), d)).is_some()
}

/// The receipt: its fsyncs happen in the committer, while the agent runs.
fn send_receipt(ctx: &Context, task: &Task) {
    let trigger = Trigger {
        task_id: task.id.clone(),
        worker: ctx.config.name.clone(),
        status: TriggerStatus::Received,
        timestamp: clock::now_rfc3339(),
    };
    let dir = ctx.dirs().triggers.clone();
    let name = OsString::from(trigger_file(&task.id));
    ctx.commits.receipt(dir, name, json_line(&trigger));
}

/// The task leaves `.active/`; a failure to remove the entry is logged
/// (recovery will see the newer result and remove it).
fn finish(spares: &Spares, claim: Claim, end: End) -> End {
    if let Err(e) = claim.retire(spares) {
        log::error!("{e}");
    }
    end
}

fn return_to_pending(ctx: &Context, claim: Claim) -> End {
    let pending = ctx.dirs().pending.clone();
    let to = pending.join(&claim.name);
    let name = claim.name.clone();
    claim.restore_mtime();
    match claim.move_to(&pending, &name) {
        Ok(()) => {
            log::info!(file = to.display().to_string(); "Task returned to pending");
            End::Returned
        }
        Err(failed) => {
            log::error!("{}; left in .active/ for recovery", failed.1);
            End::Left
        }
    }
}

fn reject_invalid(ctx: &Context, claim: Claim, bytes: &[u8], invalid: &Invalid) -> Report {
    let cfg = &ctx.config;
    let name = claim.name.clone();
    let stem = stem_of(bytes).unwrap_or_else(|| dlq::entry_stem(&name));
    let record = dead_letter::entry_record(&name, invalid.reason(), invalid.detail(), Some(bytes));
    let (dlq, d) = (ctx.dirs().dlq.clone(), cfg.durability);
    let end = match persist(ctx, || dlq::publish(&dlq, &stem, &record, d)) {
        Some(file) => {
            ctx.metrics.dead_lettered(invalid.reason());
            log::warn!(file = name.to_string_lossy(), reason = invalid.reason().as_str(), dlq_file = file; "Invalid task dead-lettered: {}", invalid.detail());
            finish(&ctx.spares, claim, End::DeadLettered)
        }
        None => End::Left,
    };
    report(name, false, None, end)
}

/// A bad entry's dead letter is named by its task id when it has a usable one.
fn stem_of(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = v.get("task_id")?.as_str()?;
    valid_name(id).then(|| id.to_string())
}

fn reject_too_large(ctx: &Context, claim: Claim) -> Report {
    let name = claim.name.clone();
    let detail = format!(
        "{} bytes or more, over the limit of {}",
        claim.size.max(ctx.config.max_task_bytes + 1),
        ctx.config.max_task_bytes
    );
    // The lock is held while the file moves; it goes with the claim after.
    let (from, rejected) = (claim.dir().clone(), ctx.dirs().rejected.clone());
    let d = ctx.config.durability;
    let moved = persist(ctx, || dlq::move_aside(&from, &name, &rejected, d));
    drop(claim);
    let end = match moved {
        Some(rejected) => record_rejected(ctx, &name, DlqReason::TaskTooLarge, &detail, rejected),
        None => End::Left,
    };
    report(name, false, None, end)
}

fn reject_irregular(ctx: &Context, name: OsString, kind: &str) -> Report {
    let dirs = ctx.dirs();
    let d = ctx.config.durability;
    let end = match dlq::move_aside(&dirs.pending, &name, &dirs.rejected, d) {
        Ok(rejected) => record_rejected(
            ctx,
            &name,
            DlqReason::NotARegularFile,
            &format!("a {kind}"),
            rejected,
        ),
        Err(e) if e.kind == crate::error::Kind::NotFound => End::Left,
        Err(e) => {
            log::error!("{e}");
            End::Left
        }
    };
    report(name, false, None, end)
}

/// A file the worker may not read: moved aside unread where the folder
/// lets it (a sticky folder keeps another user's file where it is).
fn reject_unreadable(ctx: &Context, name: OsString, detail: &str) -> Report {
    let dirs = ctx.dirs();
    let d = ctx.config.durability;
    let end = match dlq::move_aside(&dirs.pending, &name, &dirs.rejected, d) {
        Ok(rejected) => record_rejected(ctx, &name, DlqReason::Unreadable, detail, rejected),
        Err(e) => {
            log::debug!("{e}");
            End::Left
        }
    };
    report(name, false, None, end)
}

fn record_rejected(
    ctx: &Context,
    name: &OsString,
    reason: DlqReason,
    detail: &str,
    rejected: String,
) -> End {
    let cfg = &ctx.config;
    let mut record = dead_letter::entry_record(name, reason, detail, None);
    record.insert("rejected_path".into(), rejected.into());
    let stem = dlq::entry_stem(name);
    let (dlq, d) = (ctx.dirs().dlq.clone(), cfg.durability);
    match persist(ctx, || dlq::publish(&dlq, &stem, &record, d)) {
        Some(file) => {
            ctx.metrics.dead_lettered(reason);
            log::warn!(file = name.to_string_lossy(), reason = reason.as_str(), dlq_file = file; "Bad entry moved aside: {detail}");
            End::DeadLettered
        }
        None => End::Left,
    }
}

/// A dead claimer's entry: its run finished if a result newer than the
/// claim exists (or a retry was already scheduled); otherwise the run was
/// interrupted, which counts as a failed attempt.
fn recover(ctx: &Context, mut claim: Claim) -> Report {
    let cfg = &ctx.config;
    let name = claim.name.clone();
    let bytes = match claim.read(cfg.max_task_bytes) {
        Ok(b) => b,
        Err(Unread::TooLarge) => return reject_too_large(ctx, claim),
        Err(Unread::Failed(e)) => {
            log::error!("{e}");
            return report(name, false, None, End::Left);
        }
    };
    let task = match Task::parse(&bytes, &cfg.name) {
        Ok(t) => t,
        Err(invalid) => return reject_invalid(ctx, claim, &bytes, &invalid),
    };
    let dirs = ctx.dirs();
    let result = OsString::from(task_file(&task.id));
    let finished = finished_by(ctx, &dirs.results, &result, &claim);
    if finished || retry_scheduled(ctx, &dirs, &name, task.retry_count) {
        log::info!(task_id = task.id; "Recovered a finished run; entry removed");
        return report(name, false, None, finish(&ctx.spares, claim, End::Removed));
    }
    log::warn!(task_id = task.id; "Recovered an interrupted run");
    ctx.metrics.attempt_failed(FailureClass::Interrupted);
    let failure = Failure::new(FailureClass::Interrupted, "interrupted".into());
    let end = fail(ctx, claim, task, &failure, None);
    report(name, false, None, end)
}

/// Whether the result `name` is that of the dead claim's run. A result
/// that names its claim (hookwatch(5), Result) is compared by identity:
/// the stamp the claimer put on its entry, whatever the clocks of the
/// hosts. One that names none (an older writer's) is compared by time,
/// newer than the claim. A result that cannot be read now (another host
/// replacing it, a stale handle) is not taken for finished: at worst the
/// task runs again, it is never lost.
fn finished_by(ctx: &Context, dir: &Dir, name: &OsStr, claim: &Claim) -> bool {
    let Ok(entry) = dir.stat(name) else {
        return false;
    };
    let Ok(bytes) = dir.read_bounded(name, crate::spool::RECORD_MAX) else {
        return false;
    };
    let named = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("claim").cloned())
        .and_then(|c| serde_json::from_value::<ClaimIdentity>(c).ok());
    match named {
        Some(id) => {
            let same = id.stamped(unix_ns(claim.claimed));
            if !same {
                log::debug!(worker = ctx.config.name.as_str(); "A result of another claim ({}, pid {})", id.hostname, id.pid);
            }
            same
        }
        None => entry.modified() >= claim.claimed,
    }
}

fn retry_scheduled(ctx: &Context, dirs: &WorkerDirs, name: &OsStr, retry_count: u32) -> bool {
    dirs.deferred
        .read_bounded(name, ctx.config.max_task_bytes)
        .ok()
        .and_then(|b| Task::parse(&b, &ctx.config.name).ok())
        .is_some_and(|t| t.retry_count > retry_count)
}

/// Runs a publish until it works; `None` when told to stop now, or on an
/// error no wait will mend (logged).
fn persist<T>(ctx: &Context, publish: impl FnMut() -> Result<T>) -> Option<T> {
    match commit::persist(&ctx.abort, publish) {
        Persisted::Done(v) => Some(v),
        Persisted::Aborted => None,
        Persisted::Never(e) => {
            log::error!("{e}; this will not change by waiting");
            None
        }
    }
}
