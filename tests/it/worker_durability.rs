//! hw-worker's durability (SPEC sections 1 and 2): graceful shutdown,
//! crash recovery, the claim protocol across processes, deferred retries
//! across restarts, and watching a tasks folder that is flooded, removed
//! or replaced. Each test runs the real binary on its own spool with a
//! `/bin/sh` stand-in agent that appends one line per execution to a log
//! outside the spool, so executions can be counted.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

const W: &str = "marie";

/// A bound for what should take a few heartbeats (0.5 s each) at most.
const SHORT: Duration = Duration::from_secs(5);

/// Starts `hw-worker marie ARGS…` with `agent` as the agent command.
fn start_worker(spool: &Spool, agent: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let agent = agent.display().to_string();
    let mut all: Vec<(&str, &str)> = vec![("CLAUDE_COMMAND", agent.as_str())];
    all.extend_from_slice(env);
    let mut argv = vec![W];
    argv.extend_from_slice(args);
    Daemon::start(spool, "hw-worker", &argv, &all)
}

fn agent_log(spool: &Spool) -> PathBuf {
    spool.scratch("agent.log")
}

/// An agent that logs `start ID ATTEMPT PID`, waits (bounded) for the
/// gate, then logs `end ID ATTEMPT PID` and succeeds.
fn gated_agent(spool: &Spool, gate: &Gate) -> PathBuf {
    let log = agent_log(spool).display().to_string();
    spool.script(
        "gated.sh",
        &format!(
            "echo \"start $HW_TASK_ID $HW_ATTEMPT $$\" >> '{log}'\n{}\n\
             echo \"end $HW_TASK_ID $HW_ATTEMPT $$\" >> '{log}'",
            gate.wait_lines()
        ),
    )
}

/// An agent that logs `run ID ATTEMPT PID PARENT` and succeeds at once.
fn counting_agent(spool: &Spool) -> PathBuf {
    let log = agent_log(spool).display().to_string();
    spool.script(
        "count.sh",
        &format!(r#"echo "run $HW_TASK_ID $HW_ATTEMPT $$ $PPID" >> '{log}'"#),
    )
}

/// One line of the agent log.
#[derive(Debug, Clone, PartialEq)]
struct Exec {
    kind: String,
    id: String,
    attempt: u32,
    pid: i32,
    /// The fifth word: the parent pid, or a Unix time (agent-specific).
    extra: Option<String>,
}

fn executions(spool: &Spool) -> Vec<Exec> {
    let text = fs::read_to_string(agent_log(spool)).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert!(w.len() >= 4, "odd agent log line: {l:?}");
            Exec {
                kind: w[0].to_string(),
                id: w[1].to_string(),
                attempt: w[2].parse().unwrap(),
                pid: w[3].parse().unwrap(),
                extra: w.get(4).map(|s| s.to_string()),
            }
        })
        .collect()
}

/// Executions of kind `kind` (start, end, run) of task `id`.
fn execs_of(spool: &Spool, kind: &str, id: &str) -> Vec<Exec> {
    executions(spool)
        .into_iter()
        .filter(|e| e.kind == kind && e.id == id)
        .collect()
}

/// Waits until the agent log has a line `kind id attempt …`; returns it.
fn wait_exec(spool: &Spool, kind: &str, id: &str, attempt: u32) -> Exec {
    let mut found = None;
    let ok = wait_until(DEADLINE, || {
        found = execs_of(spool, kind, id)
            .into_iter()
            .find(|e| e.attempt == attempt);
        found.is_some()
    });
    assert!(
        ok,
        "the agent never logged `{kind} {id} {attempt}`: {:?}",
        executions(spool)
    );
    found.unwrap()
}

fn wait_heartbeat(spool: &Spool, within: Duration, what: impl Fn(&Value) -> bool) -> bool {
    wait_until(within, || spool.heartbeat(W).is_some_and(|h| what(&h)))
}

fn heartbeat_status(spool: &Spool) -> Option<String> {
    spool
        .heartbeat(W)
        .and_then(|h| h["status"].as_str().map(String::from))
}

/// Waits until the worker has taken the first signal (its heartbeat says so).
fn wait_stopping(spool: &Spool) {
    let ok = wait_heartbeat(spool, SHORT, |h| h["status"] == "stopping");
    assert!(
        ok,
        "no `stopping` heartbeat after SIGTERM: {:?}",
        spool.heartbeat(W)
    );
}

fn assert_exit_zero(status: ExitStatus) {
    assert_eq!(status.code(), Some(0), "worker exit status: {status:?}");
}

fn task(id: &str) -> Value {
    json!({"task_id": id, "description": format!("do {id}")})
}

/// Waits until a folder has no visible entries.
fn wait_empty(spool: &Spool, dir: &Path) -> bool {
    wait_until(SHORT, || spool.names(dir).is_empty())
}

/// The spool holds `id` as one completed result and nowhere else: not
/// pending, active, deferred, nor dead-lettered.
fn assert_only_result(spool: &Spool, id: &str) -> Value {
    let file = format!("{id}.json");
    assert!(
        wait_empty(spool, &spool.active(W)),
        "left in .active/: {:?}",
        spool.names(&spool.active(W))
    );
    assert!(!spool.tasks(W).join(&file).exists(), "{id} still pending");
    assert!(
        !spool.deferred(W).join(&file).exists(),
        "{id} still deferred"
    );
    assert!(
        spool.dlq_records(W).is_empty(),
        "dead letters: {:?}",
        spool.dlq_records(W)
    );
    let result = spool.result(W, id).expect("a result");
    assert_eq!(result["status"], "completed", "{result}");
    result
}

// ---------------------------------------------------------------------------
// Graceful shutdown

#[test]
fn sigterm_waits_for_a_running_task_that_finishes_within_the_shutdown_timeout() {
    let spool = Spool::new();
    let gate = Gate::new(&spool);
    let agent = gated_agent(&spool, &gate);
    let mut w = start_worker(&spool, &agent, &["--shutdown-timeout", "10"], &[]);
    spool.drop_simple(W, "t1", "long job");
    wait_exec(&spool, "start", "t1", 1);

    w.signal(Signal::SIGTERM);
    wait_stopping(&spool);
    assert!(
        w.wait_exit(Duration::from_millis(300)).is_none(),
        "the worker exited while its task was still running"
    );
    gate.open();
    let status = w
        .wait_exit(SHORT)
        .expect("the worker did not exit once its task was done");

    assert_exit_zero(status);
    wait_exec(&spool, "end", "t1", 1);
    let result = assert_only_result(&spool, "t1");
    assert_eq!(result["retry_count"], 0);
    assert_eq!(heartbeat_status(&spool).as_deref(), Some("stopped"));
}

#[test]
fn sigterm_past_the_shutdown_timeout_kills_the_task_and_returns_it_to_pending_uncharged() {
    let spool = Spool::new();
    let gate = Gate::new(&spool);
    let agent = gated_agent(&spool, &gate);
    let mut w = start_worker(&spool, &agent, &["--shutdown-timeout", "0.5"], &[]);
    spool.drop_simple(W, "t2", "too long");
    let first = wait_exec(&spool, "start", "t2", 1);
    assert!(group_alive(first.pid), "the agent is not running");

    let signalled = Instant::now();
    w.signal(Signal::SIGTERM);
    let status = w
        .wait_exit(SHORT)
        .expect("the worker did not exit after the shutdown timeout");
    let took = signalled.elapsed();

    assert_exit_zero(status);
    assert!(
        took >= Duration::from_millis(500),
        "did not wait the shutdown timeout: {took:?}"
    );
    assert!(
        wait_until(SHORT, || !group_alive(first.pid)),
        "the agent's process group {} is still alive",
        first.pid
    );
    let pending = read_json(&spool.tasks(W).join("t2.json")).expect("t2 back in tasks/marie/");
    assert_eq!(pending["task_id"], "t2");
    assert!(
        pending.get("retry_count").map_or(true, |n| n == 0),
        "an attempt was charged: {pending}"
    );
    assert!(
        spool.result(W, "t2").is_none(),
        "a result was written: {:?}",
        spool.result(W, "t2")
    );
    assert!(spool.names(&spool.active(W)).is_empty(), "left in .active/");
    assert!(
        spool.names(&spool.deferred(W)).is_empty(),
        "deferred instead of pending"
    );
    assert!(
        execs_of(&spool, "end", "t2").is_empty(),
        "the agent was not stopped"
    );
    assert_eq!(heartbeat_status(&spool).as_deref(), Some("stopped"));

    // The next worker runs it as the same first attempt, to completion.
    gate.open();
    let mut again = start_worker(&spool, &agent, &[], &[]);
    let result = spool.wait_result(W, "t2");
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["retry_count"], 0, "{result}");
    let starts: Vec<u32> = execs_of(&spool, "start", "t2")
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(starts, vec![1, 1], "attempts seen by the agent");
    assert_only_result(&spool, "t2");
    assert_exit_zero(again.stop());
}

/// Starts a task under a long shutdown timeout, sends `first` then
/// `second`, and checks the worker stopped at once with the task pending.
fn second_signal_stops_at_once(first: Signal, second: Signal) {
    let spool = Spool::new();
    let gate = Gate::new(&spool);
    let agent = gated_agent(&spool, &gate);
    let mut w = start_worker(&spool, &agent, &["--shutdown-timeout", "30"], &[]);
    spool.drop_simple(W, "t3", "long job");
    let run = wait_exec(&spool, "start", "t3", 1);
    assert!(group_alive(run.pid), "the agent is not running");

    w.signal(first);
    wait_stopping(&spool);
    let signalled = Instant::now();
    w.signal(second);
    let status = w
        .wait_exit(SHORT)
        .expect("the worker did not stop at the second signal");

    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "took {:?}",
        signalled.elapsed()
    );
    assert_exit_zero(status);
    assert!(
        wait_until(SHORT, || !group_alive(run.pid)),
        "the agent is still alive"
    );
    let pending = read_json(&spool.tasks(W).join("t3.json")).expect("t3 back in tasks/marie/");
    assert!(
        pending.get("retry_count").map_or(true, |n| n == 0),
        "an attempt was charged: {pending}"
    );
    assert!(spool.result(W, "t3").is_none());
    assert!(spool.names(&spool.active(W)).is_empty(), "left in .active/");
    assert_eq!(heartbeat_status(&spool).as_deref(), Some("stopped"));
}

#[test]
fn a_second_sigterm_stops_at_once_and_returns_the_task_to_pending() {
    second_signal_stops_at_once(Signal::SIGTERM, Signal::SIGTERM);
}

#[test]
fn a_second_sigint_stops_at_once_and_returns_the_task_to_pending() {
    second_signal_stops_at_once(Signal::SIGINT, Signal::SIGINT);
}

#[test]
fn nothing_new_is_claimed_after_sigterm() {
    let spool = Spool::new();
    let gate = Gate::new(&spool);
    let agent = gated_agent(&spool, &gate);
    let mut w = start_worker(
        &spool,
        &agent,
        &["--shutdown-timeout", "10"],
        &[("MAX_CONCURRENT_TASKS", "1")],
    );
    spool.drop_simple(W, "first", "runs");
    wait_exec(&spool, "start", "first", 1);
    spool.drop_simple(W, "second", "waits");
    // One running and one waiting, as the worker sees it.
    let seen = wait_heartbeat(&spool, SHORT, |h| {
        h["active_tasks"] == 1 && h["queue_size"].as_u64() >= Some(1)
    });
    assert!(
        seen,
        "the worker never saw the second task: {:?}",
        spool.heartbeat(W)
    );

    w.signal(Signal::SIGTERM);
    wait_stopping(&spool);
    gate.open();
    let status = w.wait_exit(SHORT).expect("the worker did not exit");

    assert_exit_zero(status);
    assert_eq!(spool.wait_result(W, "first")["status"], "completed");
    assert!(
        execs_of(&spool, "start", "second").is_empty(),
        "the second task ran"
    );
    assert!(spool.result(W, "second").is_none());
    assert!(
        spool.tasks(W).join("second.json").is_file(),
        "the second task is not pending any more"
    );
    assert!(spool.names(&spool.active(W)).is_empty(), "left in .active/");
}

// ---------------------------------------------------------------------------
// Crash recovery

#[test]
fn a_task_interrupted_by_sigkill_of_the_worker_is_retried_once_and_ends_once() {
    let spool = Spool::new();
    let gate = Gate::new(&spool);
    let agent = gated_agent(&spool, &gate);
    let mut w = start_worker(&spool, &agent, &[], &[]);
    spool.drop_simple(W, "t5", "crashy");
    let first = wait_exec(&spool, "start", "t5", 1);

    w.crash();
    let mut again = start_worker(&spool, &agent, &[], &[]);
    let second = wait_exec(&spool, "start", "t5", 2);
    assert_ne!(first.pid, second.pid);
    gate.open();

    let result = spool.wait_result(W, "t5");
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(
        result["retry_count"], 1,
        "the interrupted attempt counts: {result}"
    );
    assert_only_result(&spool, "t5");
    assert_eq!(json_files(&spool.results(W)).len(), 1);
    let attempts: Vec<u32> = execs_of(&spool, "start", "t5")
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, vec![1, 2], "executions of t5");
    assert_exit_zero(again.stop());
    assert_eq!(
        execs_of(&spool, "start", "t5").len(),
        2,
        "t5 ran again after its result"
    );
}

/// An entry left in `.active/` by a dead claimer (no lock held), claimed
/// at `claimed`, with a result file written at `result_at`.
fn dead_claim(spool: &Spool, id: &str, claimed: SystemTime, result_at: SystemTime) -> Vec<u8> {
    let active = place(&spool.active(W), &format!("{id}.json"), &task(id));
    set_mtime(&active, claimed);
    let old = json!({"task_id": id, "worker": W, "status": "completed", "exit_code": 0,
        "stdout": "an earlier run", "stderr": "", "duration_seconds": 0.1,
        "timestamp": "2020-01-01T00:00:00.000Z", "retry_count": 0});
    let result = place(&spool.results(W), &format!("{id}.json"), &old);
    set_mtime(&result, result_at);
    fs::read(&result).unwrap()
}

#[test]
fn a_dead_claim_whose_result_is_newer_than_the_claim_is_removed_without_running() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let now = SystemTime::now();
    let before = dead_claim(
        &spool,
        "done",
        now - Duration::from_secs(60),
        now - Duration::from_secs(30),
    );
    let mut w = start_worker(&spool, &agent, &[], &[("MAX_CONCURRENT_TASKS", "1")]);

    assert!(
        wait_empty(&spool, &spool.active(W)),
        "the dead claim stayed in .active/"
    );
    // A task after it in the one slot: by its end the recovery is over.
    spool.drop_simple(W, "later", "after the recovery");
    spool.wait_result(W, "later");

    assert!(
        execs_of(&spool, "run", "done").is_empty(),
        "the finished task ran again"
    );
    assert_eq!(
        fs::read(spool.results(W).join("done.json")).unwrap(),
        before,
        "result rewritten"
    );
    assert!(
        spool.names(&spool.tasks(W)).is_empty(),
        "pending: {:?}",
        spool.names(&spool.tasks(W))
    );
    assert!(
        spool.names(&spool.deferred(W)).is_empty(),
        "deferred: {:?}",
        spool.names(&spool.deferred(W))
    );
    assert!(spool.dlq_records(W).is_empty());
    assert_exit_zero(w.stop());
}

#[test]
fn a_dead_claim_with_only_an_older_result_counts_one_interrupted_attempt_and_runs_again() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let now = SystemTime::now();
    dead_claim(&spool, "redo", now, now - Duration::from_secs(3600));
    let mut w = start_worker(&spool, &agent, &[], &[]);

    wait_exec(&spool, "run", "redo", 2);
    let ok = wait_until(DEADLINE, || {
        spool
            .result(W, "redo")
            .is_some_and(|r| r["stdout"] != "an earlier run")
    });
    assert!(ok, "no new result: {:?}", spool.result(W, "redo"));
    let result = assert_only_result(&spool, "redo");
    assert_eq!(result["retry_count"], 1, "{result}");
    let attempts: Vec<u32> = execs_of(&spool, "run", "redo")
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, vec![2], "executions of redo");
    assert_exit_zero(w.stop());
}

#[test]
fn a_dead_claim_appearing_while_the_worker_runs_is_recovered_at_a_heartbeat() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let mut w = start_worker(&spool, &agent, &[], &[]);
    assert!(
        wait_heartbeat(&spool, SHORT, |h| h["status"] == "healthy"),
        "no heartbeat"
    );

    place(&spool.active(W), "orphan.json", &task("orphan"));
    let found = wait_until(SHORT, || !execs_of(&spool, "run", "orphan").is_empty());
    assert!(
        found,
        "not recovered within {SHORT:?} (heartbeat every 0.5 s)"
    );

    let result = spool.wait_result(W, "orphan");
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["retry_count"], 1, "{result}");
    let attempts: Vec<u32> = execs_of(&spool, "run", "orphan")
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, vec![2], "executions of orphan");
    assert_only_result(&spool, "orphan");
    assert_exit_zero(w.stop());
}

// ---------------------------------------------------------------------------
// Retries across restarts

#[test]
fn a_deferred_retry_keeps_its_schedule_across_a_restart() {
    let spool = Spool::new();
    let log = agent_log(&spool).display().to_string();
    let agent = spool.script(
        "flaky.sh",
        &format!(
            r#"echo "run $HW_TASK_ID $HW_ATTEMPT $$ $(date +%s.%N)" >> '{log}'
[ "$HW_ATTEMPT" -ge 2 ] || exit 1"#
        ),
    );
    let env = [("INITIAL_RETRY_DELAY", "2")];
    let mut w = start_worker(&spool, &agent, &[], &env);
    spool.drop_simple(W, "t8", "fails once");

    let deferred_file = spool.deferred(W).join("t8.json");
    let mut deferred = None;
    let ok = wait_until(DEADLINE, || {
        deferred = read_json(&deferred_file);
        deferred.is_some()
    });
    assert!(ok, "t8 never reached .deferred/");
    let deferred = deferred.unwrap();
    assert_eq!(deferred["retry_count"], 1, "{deferred}");
    let not_before = utc_seconds(deferred["not_before"].as_str().expect("not_before"));

    assert_exit_zero(w.stop());
    let mut again = start_worker(&spool, &agent, &[], &env);
    assert!(
        wait_heartbeat(&spool, SHORT, |h| h["status"] == "healthy"),
        "no heartbeat"
    );
    assert!(
        unix_now() < not_before,
        "the restart took too long to tell whether the schedule was kept"
    );

    let result = spool.wait_result(W, "t8");
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["retry_count"], 1, "{result}");
    let runs = execs_of(&spool, "run", "t8");
    let attempts: Vec<u32> = runs.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, vec![1, 2], "executions of t8");
    let second_at: f64 = runs[1].extra.as_deref().unwrap().parse().unwrap();
    assert!(
        second_at >= not_before,
        "attempt 2 ran {:.3} s before not_before",
        not_before - second_at
    );
    assert_only_result(&spool, "t8");
    assert_exit_zero(again.stop());
}

#[test]
fn pending_and_due_deferred_tasks_present_before_start_are_run_at_start() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    spool.drop_simple(W, "waiting", "was pending");
    let mut late = task("late");
    late["retry_count"] = json!(1);
    late["not_before"] = json!("2020-01-01T00:00:00.000Z");
    late["last_error"] = json!("exit status 1");
    place(&spool.deferred(W), "late.json", &late);
    let mut w = start_worker(&spool, &agent, &[], &[]);

    let pending = spool.wait_result(W, "waiting");
    let deferred = spool.wait_result(W, "late");
    assert_eq!(pending["status"], "completed");
    assert_eq!(pending["retry_count"], 0);
    assert_eq!(deferred["status"], "completed");
    assert_eq!(deferred["retry_count"], 1);
    assert_eq!(execs_of(&spool, "run", "late")[0].attempt, 2);
    assert_only_result(&spool, "waiting");
    assert_only_result(&spool, "late");
    assert_exit_zero(w.stop());
}

// ---------------------------------------------------------------------------
// Many tasks, several claimers

/// Every id ran exactly once according to the agent log, and has one
/// completed result; nothing is left pending, active or deferred.
fn assert_each_ran_once_by_log(spool: &Spool, ids: &[String]) -> Vec<Exec> {
    let runs = executions(spool);
    let ran: Vec<&str> = runs.iter().map(|e| e.id.as_str()).collect();
    assert_each_ran_once(ids, &ran);
    assert_completed_uncharged(spool, W, ids);
    for dir in [spool.tasks(W), spool.active(W), spool.deferred(W)] {
        assert!(
            wait_empty(spool, &dir),
            "left in {dir:?}: {:?}",
            spool.names(&dir)
        );
    }
    assert!(spool.dlq_records(W).is_empty());
    runs
}

fn wait_results(spool: &Spool, n: usize, within: Duration) {
    let ok = wait_until(within, || json_files(&spool.results(W)).len() >= n);
    let got = json_files(&spool.results(W)).len();
    assert!(ok, "{got} of {n} results within {within:?}");
}

#[test]
fn two_workers_on_one_spool_run_each_of_500_tasks_exactly_once() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let env = [("MAX_CONCURRENT_TASKS", "3")];
    let mut a = start_worker(&spool, &agent, &[], &env);
    let mut b = start_worker(&spool, &agent, &[], &env);
    // Both are up once each has written the (shared) heartbeat file.
    let (mut seen_a, mut seen_b) = (false, false);
    let both = wait_until(SHORT, || {
        if let Some(pid) = spool.heartbeat(W).and_then(|h| h["pid"].as_i64()) {
            seen_a |= pid == a.pid() as i64;
            seen_b |= pid == b.pid() as i64;
        }
        seen_a && seen_b
    });
    assert!(both, "both workers did not start");

    let ids: Vec<String> = (0..500).map(|i| format!("t{i:03}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "fast");
    }
    wait_results(&spool, ids.len(), DEADLINE);

    let runs = assert_each_ran_once_by_log(&spool, &ids);
    let by = |pid: i32| {
        runs.iter()
            .filter(|e| e.extra.as_deref() == Some(pid.to_string().as_str()))
            .count()
    };
    let (ran_a, ran_b) = (by(a.pid()), by(b.pid()));
    assert_eq!(ran_a + ran_b, ids.len(), "agents with another parent");
    assert!(
        ran_a > 0 && ran_b > 0,
        "one worker did everything: {ran_a} / {ran_b}"
    );
    assert_exit_zero(a.stop());
    assert_exit_zero(b.stop());
}

#[test]
fn two_thousand_tasks_dropped_at_once_all_run_exactly_once() {
    let spool = Spool::new();
    let log = agent_log(&spool).display().to_string();
    // Only a shell builtin: as fast as an agent gets.
    let agent = spool.script(
        "fast.sh",
        &format!(r#"echo "run $HW_TASK_ID $HW_ATTEMPT $$" >> '{log}'"#),
    );
    let staging = spool.scratch("staging");
    fs::create_dir_all(&staging).unwrap();
    let ids: Vec<String> = (0..2000).map(|i| format!("bulk-{i:04}")).collect();
    for id in &ids {
        fs::write(staging.join(format!("{id}.json")), task(id).to_string()).unwrap();
    }
    let mut w = start_worker(&spool, &agent, &[], &[("MAX_CONCURRENT_TASKS", "4")]);
    assert!(
        wait_heartbeat(&spool, SHORT, |h| h["status"] == "healthy"),
        "no heartbeat"
    );

    for id in &ids {
        let name = format!("{id}.json");
        fs::rename(staging.join(&name), spool.tasks(W).join(&name)).unwrap();
    }
    wait_results(&spool, ids.len(), Duration::from_secs(120));

    assert_each_ran_once_by_log(&spool, &ids);
    assert_exit_zero(w.stop());
}

// ---------------------------------------------------------------------------
// Watching

#[test]
fn a_tasks_folder_removed_and_recreated_is_watched_again() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let mut w = start_worker(&spool, &agent, &[], &[]);
    spool.drop_simple(W, "before", "first");
    spool.wait_result(W, "before");

    fs::remove_dir_all(spool.tasks(W)).unwrap();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    spool.drop_simple(W, "after", "second");

    let result = spool.wait_result(W, "after");
    assert_eq!(result["status"], "completed", "{result}");
    // And the folder is watched from then on, not just rescanned once.
    spool.drop_simple(W, "later", "third");
    assert_eq!(spool.wait_result(W, "later")["status"], "completed");
    assert_exit_zero(w.stop());
}

#[test]
fn a_tasks_folder_moved_away_is_replaced_and_watched() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let mut w = start_worker(&spool, &agent, &[], &[]);
    spool.drop_simple(W, "before", "first");
    spool.wait_result(W, "before");

    fs::rename(spool.tasks(W), spool.scratch("old")).unwrap();
    spool.drop_simple(W, "after", "second");

    assert_eq!(spool.wait_result(W, "after")["status"], "completed");
    spool.drop_simple(W, "later", "third");
    assert_eq!(spool.wait_result(W, "later")["status"], "completed");
    assert_exit_zero(w.stop());
}

#[test]
fn a_tasks_folder_replaced_by_a_rename_has_its_tasks_run() {
    use nix::fcntl::{renameat2, RenameFlags};
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let mut w = start_worker(&spool, &agent, &[], &[]);
    spool.drop_simple(W, "before", "first");
    spool.wait_result(W, "before");

    // A new folder, filled beforehand, swapped into place in one step.
    let fresh = spool.scratch("fresh");
    place(&fresh, "inside.json", &task("inside"));
    renameat2(
        None,
        &fresh,
        None,
        &spool.tasks(W),
        RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();

    assert_eq!(spool.wait_result(W, "inside")["status"], "completed");
    spool.drop_simple(W, "after", "second");
    assert_eq!(spool.wait_result(W, "after")["status"], "completed");
    assert_only_result(&spool, "inside");
    assert_exit_zero(w.stop());
}

#[test]
fn poll_finds_a_task_that_inotify_does_not_report() {
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let mut w = start_worker(&spool, &agent, &["--poll", "0.2"], &[]);
    assert!(
        wait_heartbeat(&spool, SHORT, |h| h["status"] == "healthy"),
        "no heartbeat"
    );

    // A hard link makes no close-after-write and no moved-to event.
    let outside = spool.scratch("linked.json");
    fs::write(&outside, task("linked").to_string()).unwrap();
    fs::hard_link(&outside, spool.tasks(W).join("linked.json")).unwrap();

    let found = wait_until(SHORT, || spool.result(W, "linked").is_some());
    assert!(
        found,
        "the periodic rescan did not find the task within {SHORT:?}"
    );
    assert_only_result(&spool, "linked");
    assert_exit_zero(w.stop());
}

#[test]
fn temporary_files_left_by_a_crash_are_removed_at_start_and_nothing_else() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "exit 0");
    let results = spool.results("w");
    fs::create_dir_all(&results).unwrap();
    fs::create_dir_all(spool.tasks("w")).unwrap();
    let stale = results.join(".t1.json.4242.7.tmp");
    let fresh = results.join(".t2.json.4242.8.tmp");
    let staging = spool.tasks("w").join(".producer.tmp");
    for f in [&stale, &fresh, &staging] {
        fs::write(f, b"{}").unwrap();
    }
    for f in [&stale, &staging] {
        let old = std::process::Command::new("touch")
            .args(["-d", "3 hours ago"])
            .arg(f)
            .status()
            .unwrap();
        assert!(old.success());
    }
    let mut w = Daemon::worker(&spool, "w", &agent, &[]);
    assert!(w.wait_log("Worker started"), "{}", w.log_text());
    assert!(
        wait_until(DEADLINE, || !stale.exists()),
        "the stale temporary file is still there"
    );
    assert!(fresh.exists(), "a fresh temporary file was removed");
    assert!(staging.exists(), "a producer's staging file was removed");
    assert!(w.stop().success());
}
