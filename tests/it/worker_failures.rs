//! hw-worker when things go wrong (SPEC sections 2-4): retries with
//! back-off and the dead-letter queue, per-task timeouts, priority order,
//! dependencies, the circuit breaker, and bad input of every kind.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const W: &str = "marie";

// ---------------------------------------------------------------------------
// helpers

/// Starts `hw-worker W args…` with `agent` as the command. Metrics go to a
/// port the kernel picks, so parallel tests never fight over one.
fn worker(spool: &Spool, agent: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let agent = agent.display().to_string();
    let mut all: Vec<(&str, &str)> =
        vec![("CLAUDE_COMMAND", agent.as_str()), ("METRICS_PORT", "0")];
    all.extend_from_slice(env);
    let mut argv = vec![W];
    argv.extend_from_slice(args);
    Daemon::start(spool, "hw-worker", &argv, &all)
}

/// A shell line that appends `TASK_ID ATTEMPT UNIX_SECONDS` to `log`.
fn log_attempt(log: &Path) -> String {
    format!(
        r#"echo "$HW_TASK_ID $HW_ATTEMPT $(date +%s.%N)" >> '{}'"#,
        log.display()
    )
}

#[derive(Debug, Clone)]
struct Attempt {
    id: String,
    attempt: u32,
    at: f64,
}

/// The attempts an agent recorded with `log_attempt`, in order.
fn attempts(log: &Path) -> Vec<Attempt> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "bad agent log line {l:?}");
            Attempt {
                id: f[0].to_string(),
                attempt: f[1].parse().expect("attempt number"),
                at: f[2].parse().expect("timestamp"),
            }
        })
        .collect()
}

fn ids(attempts: &[Attempt]) -> Vec<&str> {
    attempts.iter().map(|a| a.id.as_str()).collect()
}

/// True when no live process has this pid. A zombie counts as gone: it is
/// dead, and in some containers PID 1 never reaps orphans.
fn process_gone(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return true;
    }
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn read_pid(path: &Path) -> i32 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}: not a pid: {text:?}", path.display()))
}

/// Nothing is left waiting or running for `W` (the entry leaves `.active/`
/// just after the result is published, so this waits a little).
fn assert_spool_drained(spool: &Spool) {
    let drained = wait_until(Duration::from_secs(5), || {
        spool.names(&spool.tasks(W)).is_empty() && all_names(&spool.active(W)).is_empty()
    });
    assert!(
        drained,
        "left behind: tasks/{W}/ {:?}, .active/ {:?}",
        spool.names(&spool.tasks(W)),
        all_names(&spool.active(W))
    );
}

fn assert_alive(w: &mut Daemon) {
    assert!(
        w.wait_exit(Duration::ZERO).is_none(),
        "the worker exited; log:\n{}",
        w.log_text()
    );
}

// ---------------------------------------------------------------------------
// 1-2. retries

#[test]
fn a_failing_task_is_retried_with_growing_gaps_then_dead_lettered() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let agent = spool.script(
        "agent.sh",
        &format!(
            "{}\necho \"boom on attempt $HW_ATTEMPT\" >&2\nexit 3",
            log_attempt(&log)
        ),
    );
    let env = [
        ("MAX_RETRIES", "3"),
        ("INITIAL_RETRY_DELAY", "0.1"),
        ("RETRY_BACKOFF", "2"),
    ];
    let _w = worker(&spool, &agent, &[], &env);
    let metadata = json!({"batch_id": "b-17", "custom": "data"});
    let task = json!({"task_id": "doomed", "description": "always fails", "metadata": metadata});
    spool.drop_task(W, "doomed.json", &task);

    // Poll the deferred copy while waiting for the result.
    let deferred = spool.deferred(W).join("doomed.json");
    let mut snapshots: Vec<Value> = Vec::new();
    let mut result = None;
    let done = wait_until(DEADLINE, || {
        if let Some(v) = read_json(&deferred) {
            if !snapshots.contains(&v) {
                snapshots.push(v);
            }
        }
        result = spool.result(W, "doomed");
        result.is_some()
    });
    assert!(done, "no result within {DEADLINE:?}");
    let result = result.unwrap();

    // Exactly four attempts, numbered 1..4, with gaps of at least the delay.
    let runs = attempts(&log);
    assert_eq!(ids(&runs), ["doomed"; 4], "{runs:?}");
    assert_eq!(
        runs.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let delays = [0.1, 0.2, 0.4];
    let gaps: Vec<f64> = runs.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, delay) in gaps.iter().zip(delays) {
        assert!(
            *gap >= delay - 0.01,
            "gap {gap:.3}s shorter than the delay {delay}s: {gaps:?}"
        );
        assert!(
            *gap < delay + 1.5,
            "gap {gap:.3}s far longer than the delay {delay}s: {gaps:?}"
        );
    }
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "gaps do not grow: {gaps:?}"
    );

    // While waiting, the task sat in .deferred/ with its schedule.
    assert!(!snapshots.is_empty(), "never saw the task in .deferred/");
    for s in &snapshots {
        let n = s["retry_count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no retry_count: {s}")) as usize;
        assert!((1..=3).contains(&n), "retry_count {n}: {s}");
        assert!(
            s["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "no last_error: {s}"
        );
        assert_eq!(s["task_id"], "doomed");
        assert_eq!(s["description"], "always fails");
        assert_eq!(s["metadata"], metadata);
        let not_before = utc_seconds(
            s["not_before"]
                .as_str()
                .unwrap_or_else(|| panic!("no not_before: {s}")),
        );
        let (failed, next) = (&runs[n - 1], &runs[n]);
        let delay = delays[n - 1];
        assert!(
            not_before >= failed.at + delay - 0.002 && not_before <= failed.at + delay + 1.0,
            "not_before {not_before:.3} is not attempt {n}'s start {:.3} + {delay}s",
            failed.at
        );
        assert!(
            next.at >= not_before - 0.002,
            "attempt {} ran before not_before {not_before:.3}",
            n + 1
        );
    }

    // The final result and its dead letter.
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["retry_count"], 3, "{result}");
    assert_eq!(result["exit_code"], 3, "{result}");
    assert!(
        result["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error: {result}"
    );
    let dlq_file = result["dlq_file"]
        .as_str()
        .unwrap_or_else(|| panic!("no dlq_file: {result}"));
    let file_name = Path::new(dlq_file)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let unix = file_name
        .strip_prefix("doomed_")
        .and_then(|r| r.strip_suffix(".json"))
        .unwrap_or_else(|| panic!("dlq_file {dlq_file:?} is not doomed_<unix>.json"));
    assert!(
        !unix.is_empty() && unix.bytes().all(|c| c.is_ascii_digit()),
        "{dlq_file:?}"
    );
    let path = spool.dlq(W).join(&file_name);
    let record = read_json(&path)
        .unwrap_or_else(|| panic!("dlq_file {dlq_file:?} is not in {:?}", spool.dlq(W)));
    assert_eq!(record["dlq_reason"], "max_retries_exceeded", "{record}");
    assert_eq!(record["retry_count"], 3, "{record}");
    assert!(
        record["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{record}"
    );
    utc_seconds(record["dlq_timestamp"].as_str().expect("dlq_timestamp"));
    assert_eq!(record["task_id"], "doomed");
    assert_eq!(record["description"], "always fails");
    assert_eq!(record["metadata"], metadata);
    assert_eq!(spool.dlq_records(W).len(), 1, "one dead letter");
    assert_spool_drained(&spool);
    assert_eq!(
        all_names(&spool.deferred(W)),
        Vec::<String>::new(),
        "left in .deferred/"
    );
}

#[test]
fn a_task_that_succeeds_on_its_retry_completes_without_a_dead_letter() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let body = format!(
        "{}\nif [ \"$HW_ATTEMPT\" = 1 ]; then echo 'first try fails' >&2; exit 1; fi\necho done",
        log_attempt(&log)
    );
    let agent = spool.script("agent.sh", &body);
    let _w = worker(&spool, &agent, &[], &[("MAX_RETRIES", "3")]);
    spool.drop_simple(W, "flaky", "works the second time");
    let r = spool.wait_result(W, "flaky");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["retry_count"], 1, "{r}");
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "done\n", "{r}");
    assert!(r.get("dlq_file").map_or(true, Value::is_null), "{r}");
    let runs = attempts(&log);
    assert_eq!(runs.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2]);
    assert!(
        spool.dlq_records(W).is_empty(),
        "dead letters: {:?}",
        spool.dlq_records(W)
    );
    assert_spool_drained(&spool);
}

// ---------------------------------------------------------------------------
// 3. timeouts

/// Runs task `id` with `timeout: 1` under `--kill-grace 1`, its agent
/// starting a grandchild and then sleeping (both ignoring SIGTERM when
/// `ignore_term`); checks that it failed as a timeout (exit code 124) and
/// that the agent and the grandchild are gone within 3 s. Returns the
/// result, how long it took to come, and the worker, still running.
fn timed_out(spool: &Spool, id: &str, ignore_term: bool) -> (Value, Duration, Daemon) {
    let (apid, gpid) = (spool.scratch("agent.pid"), spool.scratch("grandchild.pid"));
    // A trap set to ignore is inherited by the child.
    let body = format!(
        "{}sleep 60 &\necho $! > '{}'\necho $$ > '{}'\nsleep 60",
        if ignore_term { "trap '' TERM\n" } else { "" },
        gpid.display(),
        apid.display()
    );
    let agent = spool.script("agent.sh", &body);
    let w = worker(
        spool,
        &agent,
        &["--kill-grace", "1"],
        &[("MAX_RETRIES", "0")],
    );
    let started = Instant::now();
    let task = json!({"task_id": id, "description": "hangs", "timeout": 1});
    spool.drop_task(W, &format!("{id}.json"), &task);
    let r = spool.wait_result(W, id);
    let took = started.elapsed();
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 124, "{r}");
    assert_eq!(r["error"], "timeout", "{r}");
    let (apid, gpid) = (read_pid(&apid), read_pid(&gpid));
    let gone = wait_until(Duration::from_secs(3), || {
        process_gone(apid) && process_gone(gpid)
    });
    assert!(
        gone,
        "still running: agent {apid} {}, grandchild {gpid} {}",
        !process_gone(apid),
        !process_gone(gpid)
    );
    (r, took, w)
}

#[test]
fn a_task_timeout_kills_the_agent_and_its_children() {
    let spool = Spool::new();
    let (r, took, _w) = timed_out(&spool, "slow", false);
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} for a 1 s timeout"
    );
    let secs = r["duration_seconds"].as_f64().expect("duration_seconds");
    assert!((0.9..4.0).contains(&secs), "duration_seconds {secs}");
    assert_eq!(spool.dlq_records(W).len(), 1);
    assert_spool_drained(&spool);
}

#[test]
fn a_timed_out_agent_ignoring_sigterm_is_killed_after_the_grace() {
    let spool = Spool::new();
    let (_, took, _w) = timed_out(&spool, "stubborn", true);
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} for 1 s timeout + 1 s grace"
    );
}

#[test]
fn task_timeout_env_applies_to_a_task_without_its_own_timeout() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "sleep 60");
    let env = [("MAX_RETRIES", "0"), ("TASK_TIMEOUT", "1")];
    let _w = worker(&spool, &agent, &["--kill-grace", "1"], &env);
    let started = Instant::now();
    spool.drop_simple(W, "no-limit", "hangs");
    let r = spool.wait_result(W, "no-limit");
    let took = started.elapsed();
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 124, "{r}");
    assert_eq!(r["error"], "timeout", "{r}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} for TASK_TIMEOUT=1"
    );
    let secs = r["duration_seconds"].as_f64().expect("duration_seconds");
    assert!((0.9..4.0).contains(&secs), "duration_seconds {secs}");
}

// ---------------------------------------------------------------------------
// 4. priority

#[test]
fn with_one_slot_high_runs_before_normal_before_low_oldest_first() {
    let spool = Spool::new();
    let log = spool.scratch("order");
    let agent = spool.script(
        "agent.sh",
        &format!(r#"echo "$HW_TASK_ID" >> '{}'"#, log.display()),
    );
    // (id, priority, age in seconds): names within a level sort against
    // their age, and the files are written in yet another order.
    let tasks: [(&str, Option<&str>, u64); 9] = [
        ("low-c", Some("low"), 90),
        ("high-z", Some("high"), 80),
        ("norm-b", None, 70),
        ("low-b", Some("low"), 60),
        ("norm-m", Some("normal"), 50),
        ("high-y", Some("high"), 40),
        ("low-a", Some("low"), 30),
        ("norm-a", Some("normal"), 20),
        ("high-x", Some("high"), 10),
    ];
    for (id, priority, age) in tasks.iter().rev() {
        let mut task = json!({"task_id": id, "description": format!("task {id}")});
        if let Some(p) = priority {
            task["priority"] = json!(p);
        }
        spool.drop_task(W, &format!("{id}.json"), &task);
        age_file(&spool.tasks(W).join(format!("{id}.json")), *age);
    }
    let _w = worker(&spool, &agent, &[], &[("MAX_CONCURRENT_TASKS", "1")]);
    for (id, _, _) in &tasks {
        assert_eq!(spool.wait_result(W, id)["status"], "completed");
    }
    let expected = [
        "high-z", "high-y", "high-x", "norm-b", "norm-m", "norm-a", "low-c", "low-b", "low-a",
    ];
    assert_eq!(file_lines(&log), expected);
}

// ---------------------------------------------------------------------------
// 5. dependencies

#[test]
fn a_task_runs_only_after_its_dependency_completed() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let body = format!(
        "echo \"start $HW_TASK_ID $(date +%s.%N)\" >> '{l}'\n\
         if [ \"$desc\" = slow ]; then sleep 0.5; fi\n\
         echo \"end $HW_TASK_ID $(date +%s.%N)\" >> '{l}'",
        l = log.display()
    );
    let agent = spool.script("agent.sh", &body);
    let _w = worker(&spool, &agent, &[], &[("MAX_CONCURRENT_TASKS", "3")]);
    // B first, so that it is seen before A exists at all.
    spool.drop_task(
        W,
        "b.json",
        &json!({"task_id": "B", "description": "fast", "dependencies": ["A"]}),
    );
    spool.drop_task(W, "a.json", &json!({"task_id": "A", "description": "slow"}));
    let b = spool.wait_result(W, "B");
    let a = spool.wait_result(W, "A");
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(b["status"], "completed", "{b}");
    let events: Vec<(String, String, f64)> = file_lines(&log)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
        })
        .collect();
    let when = |what: &str, id: &str| {
        let found = events.iter().find(|(w, i, _)| w == what && i == id);
        found
            .unwrap_or_else(|| panic!("no {what} of {id} in {events:?}"))
            .2
    };
    let order: Vec<String> = events.iter().map(|(w, i, _)| format!("{w} {i}")).collect();
    assert_eq!(order, ["start A", "end A", "start B", "end B"]);
    assert!(when("start", "B") > when("end", "A"));
    let a_done = utc_seconds(a["timestamp"].as_str().expect("timestamp"));
    assert!(
        when("start", "B") >= a_done - 0.001,
        "B started at {:.3}, before A's result at {a_done:.3}",
        when("start", "B")
    );
}

#[test]
fn a_task_whose_dependency_failed_is_dead_lettered_and_never_runs() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let body = format!(
        "{}\nif [ \"$desc\" = fail ]; then exit 1; fi",
        log_attempt(&log)
    );
    let agent = spool.script("agent.sh", &body);
    let _w = worker(&spool, &agent, &[], &[("MAX_RETRIES", "0")]);
    let c = json!({"task_id": "C", "description": "needs D", "dependencies": ["D"], "metadata": {"k": "v"}});
    spool.drop_task(W, "c.json", &c);
    spool.drop_task(W, "d.json", &json!({"task_id": "D", "description": "fail"}));
    assert_eq!(spool.wait_result(W, "D")["status"], "failed");
    let mut record = None;
    let found = wait_until(DEADLINE, || {
        record = spool
            .dlq_records(W)
            .into_iter()
            .find(|r| r["task_id"] == "C");
        record.is_some()
    });
    assert!(
        found,
        "C was not dead-lettered; records: {:?}",
        spool.dlq_records(W)
    );
    let record = record.unwrap();
    assert_eq!(record["dlq_reason"], "dependency_failed", "{record}");
    assert_eq!(record["retry_count"], 0, "{record}");
    assert_eq!(record["description"], "needs D");
    assert_eq!(record["metadata"], json!({"k": "v"}));
    utc_seconds(record["dlq_timestamp"].as_str().expect("dlq_timestamp"));
    assert_eq!(ids(&attempts(&log)), ["D"], "C must never run");
    assert!(
        spool
            .result(W, "C")
            .map_or(true, |r| r["status"] != "completed"),
        "C has a completed result"
    );
    assert_spool_drained(&spool);
    assert_eq!(spool.names(&spool.deferred(W)), Vec::<String>::new());
}

#[test]
fn a_task_waiting_for_an_unknown_dependency_stays_deferred() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let agent = spool.script("agent.sh", &log_attempt(&log));
    let _w = worker(&spool, &agent, &[], &[]);
    let task = json!({"task_id": "orphan", "description": "x", "dependencies": ["ghost"]});
    spool.drop_task(W, "orphan.json", &task);
    let deferred = spool.deferred(W).join("orphan.json");
    assert!(
        wait_until(DEADLINE, || deferred.exists()),
        "orphan never reached .deferred/"
    );
    spool.drop_simple(W, "alive", "the worker still serves");
    assert_eq!(spool.wait_result(W, "alive")["status"], "completed");
    let waits = holds_for(Duration::from_millis(2500), || {
        deferred.exists()
            && spool.result(W, "orphan").is_none()
            && spool.dlq_records(W).is_empty()
            && !ids(&attempts(&log)).contains(&"orphan")
    });
    assert!(
        waits,
        "orphan left .deferred/: deferred {:?}, result {:?}, dlq {:?}, runs {:?}",
        deferred.exists(),
        spool.result(W, "orphan"),
        spool.dlq_records(W),
        attempts(&log)
    );
}

// ---------------------------------------------------------------------------
// 6. circuit breaker

#[test]
fn the_circuit_breaker_opens_probes_once_and_closes_on_success() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let flag = spool.scratch("flag");
    fs::write(&flag, "").unwrap();
    let body = format!(
        "{}\nif [ -e '{}' ]; then echo 'flag up' >&2; exit 1; fi\necho ok",
        log_attempt(&log),
        flag.display()
    );
    let agent = spool.script("agent.sh", &body);
    // Two high tasks trip the breaker; three normal ones wait behind them.
    let tasks = [
        ("f1", "high", 50),
        ("f2", "high", 40),
        ("p1", "normal", 30),
        ("p2", "normal", 20),
        ("p3", "normal", 10),
    ];
    for (id, priority, age) in tasks {
        let task = json!({"task_id": id, "description": "x", "priority": priority});
        spool.drop_task(W, &format!("{id}.json"), &task);
        age_file(&spool.tasks(W).join(format!("{id}.json")), age);
    }
    let env = [
        ("CIRCUIT_BREAKER_THRESHOLD", "2"),
        ("CIRCUIT_BREAKER_TIMEOUT", "1"),
        ("MAX_CONCURRENT_TASKS", "1"),
        ("MAX_RETRIES", "0"),
        ("HEARTBEAT_INTERVAL", "0.1"),
    ];
    let _w = worker(&spool, &agent, &[], &env);
    let pending = |ids: &[&str]| {
        let names = spool.names(&spool.tasks(W));
        ids.iter().all(|id| names.contains(&format!("{id}.json")))
    };
    let beat = |state: &str, status: &str| {
        spool
            .heartbeat(W)
            .is_some_and(|h| h["circuit_breaker_state"] == state && h["status"] == status)
    };

    assert_eq!(spool.wait_result(W, "f1")["status"], "failed");
    assert_eq!(spool.wait_result(W, "f2")["status"], "failed");
    // Open: degraded, and the rest stays pending on disk, unclaimed.
    let open = wait_until(Duration::from_secs(3), || {
        beat("open", "degraded")
            && pending(&["p1", "p2", "p3"])
            && ids(&attempts(&log)) == ["f1", "f2"]
    });
    assert!(
        open,
        "breaker not seen open with p1-p3 pending; heartbeat {:?}",
        spool.heartbeat(W)
    );
    assert!(
        !spool.triggers(W).join("p1.trigger").exists(),
        "p1 claimed while open"
    );

    // Half-open after the timeout: exactly one probe (p1), which fails.
    assert_eq!(spool.wait_result(W, "p1")["status"], "failed");
    let reopened = wait_until(Duration::from_secs(3), || {
        beat("open", "degraded")
            && pending(&["p2", "p3"])
            && ids(&attempts(&log)) == ["f1", "f2", "p1"]
    });
    assert!(
        reopened,
        "breaker not open again with p2, p3 pending; heartbeat {:?}, runs {:?}, tasks {:?}",
        spool.heartbeat(W),
        attempts(&log),
        spool.names(&spool.tasks(W))
    );

    // The agent recovers: the next probe succeeds, the breaker closes.
    fs::remove_file(&flag).unwrap();
    assert_eq!(spool.wait_result(W, "p2")["status"], "completed");
    assert_eq!(spool.wait_result(W, "p3")["status"], "completed");
    let closed = wait_until(Duration::from_secs(3), || beat("closed", "healthy"));
    assert!(
        closed,
        "breaker not closed; heartbeat {:?}",
        spool.heartbeat(W)
    );

    let runs = attempts(&log);
    assert_eq!(ids(&runs), ["f1", "f2", "p1", "p2", "p3"]);
    let at = |id: &str| runs.iter().find(|a| a.id == id).unwrap().at;
    // Breaker opened after f2 ended (after it started), reopened after p1.
    assert!(
        at("p1") - at("f2") >= 0.99,
        "probe p1 {:.3}s after f2: less than the breaker timeout",
        at("p1") - at("f2")
    );
    assert!(
        at("p2") - at("p1") >= 0.99,
        "probe p2 {:.3}s after p1: less than the breaker timeout",
        at("p2") - at("p1")
    );
    assert_spool_drained(&spool);
}

// ---------------------------------------------------------------------------
// 7. bad input

/// A bad-input worker: no retries, task files over 1 KiB are too large.
/// Returns once it is up (its first heartbeat follows the watch and the
/// start-up scan), so every entry below arrives as a fresh event; a file
/// only found by the scan may get a grace period to finish being written.
fn bad_input_worker(spool: &Spool, log: &Path) -> Daemon {
    let agent = spool.script("agent.sh", &log_attempt(log));
    let w = worker(
        spool,
        &agent,
        &["--max-task-bytes", "1K"],
        &[("MAX_RETRIES", "0")],
    );
    let up = wait_until(DEADLINE, || spool.heartbeat(W).is_some());
    assert!(up, "no heartbeat; log:\n{}", w.log_text());
    w
}

/// Waits for the one dead letter whose `original_name` satisfies `name`,
/// and checks what every bad entry's record has.
fn wait_entry_record(spool: &Spool, reason: &str, name: impl Fn(&str) -> bool) -> Value {
    let mut record = None;
    let found = wait_until(DEADLINE, || {
        record = spool
            .dlq_records(W)
            .into_iter()
            .find(|r| r["original_name"].as_str().is_some_and(&name));
        record.is_some()
    });
    assert!(
        found,
        "no {reason} dead letter; records: {:?}",
        spool.dlq_records(W)
    );
    let record = record.unwrap();
    assert_eq!(record["dlq_reason"], reason, "{record}");
    assert_eq!(record["retry_count"], 0, "{record}");
    utc_seconds(
        record["dlq_timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no dlq_timestamp: {record}")),
    );
    record
}

/// A good task still completes.
fn assert_still_serving(spool: &Spool, w: &mut Daemon, id: &str) {
    spool.drop_simple(W, id, "a good task");
    let r = spool.wait_result(W, id);
    assert_eq!(r["status"], "completed", "{r}");
    assert_alive(w);
}

#[test]
fn malformed_task_files_are_dead_lettered_and_the_worker_keeps_serving() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let mut w = bad_input_worker(&spool, &log);
    let obj = |v: Value| v.to_string().into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-json.json", b"{not json".to_vec(), "invalid_json"),
        ("zero-bytes.json", Vec::new(), "invalid_json"),
        ("not-utf8.json", vec![0xff, 0xfe], "invalid_json"),
        ("array.json", b"[1, 2, 3]".to_vec(), "invalid_task"),
        (
            "no-id.json",
            obj(json!({"description": "d"})),
            "invalid_task",
        ),
        (
            "no-description.json",
            obj(json!({"task_id": "nodesc"})),
            "invalid_task",
        ),
        (
            "empty-description.json",
            obj(json!({"task_id": "emptydesc", "description": ""})),
            "invalid_task",
        ),
        (
            "dotdot.json",
            obj(json!({"task_id": "../evil", "description": "d"})),
            "invalid_task",
        ),
        (
            "slash.json",
            obj(json!({"task_id": "a/b", "description": "d"})),
            "invalid_task",
        ),
        (
            "priority-number.json",
            obj(json!({"task_id": "p5", "description": "d", "priority": 5})),
            "invalid_task",
        ),
        (
            "timeout-string.json",
            obj(json!({"task_id": "tx", "description": "d", "timeout": "x"})),
            "invalid_task",
        ),
        (
            "deps-string.json",
            obj(json!({"task_id": "da", "description": "d", "dependencies": "a"})),
            "invalid_task",
        ),
    ];
    for (i, (file, bytes, reason)) in cases.iter().enumerate() {
        spool.drop_bytes(W, file, bytes);
        let record = wait_entry_record(&spool, reason, |n| n == *file);
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                assert_eq!(record["original"], text, "{file}: {record}");
                assert!(record.get("original_base64").is_none(), "{file}: {record}");
            }
            Err(_) => {
                assert_eq!(record["original_base64"], "//4=", "{file}: {record}");
                assert!(record.get("original").is_none(), "{file}: {record}");
            }
        }
        let gone = wait_until(DEADLINE, || !spool.tasks(W).join(file).exists());
        assert!(gone, "{file} is still pending");
        assert_still_serving(&spool, &mut w, &format!("good-{i}"));
    }
    assert_eq!(
        spool.dlq_records(W).len(),
        cases.len(),
        "one dead letter per bad file"
    );
    let runs = attempts(&log);
    assert!(
        runs.iter().all(|a| a.id.starts_with("good-")),
        "a bad task ran: {runs:?}"
    );
    assert_spool_drained(&spool);
}

#[test]
fn an_oversized_task_file_is_moved_aside_unread() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let mut w = bad_input_worker(&spool, &log);
    let mut big = json!({"task_id": "big", "description": "x".repeat(2000)})
        .to_string()
        .into_bytes();
    big.resize(2048, b' ');
    spool.drop_bytes(W, "big.json", &big);
    let record = wait_entry_record(&spool, "task_too_large", |n| n == "big.json");
    assert_eq!(record["rejected_path"], ".rejected/big.json", "{record}");
    assert!(
        record.get("original").is_none() && record.get("original_base64").is_none(),
        "read into the record: {record}"
    );
    let rejected = spool.dlq(W).join(".rejected/big.json");
    assert_eq!(
        fs::read(&rejected).ok(),
        Some(big),
        "not moved as it is to {}",
        rejected.display()
    );
    assert!(spool.result(W, "big").is_none(), "the oversized task ran");
    assert_still_serving(&spool, &mut w, "good");
    assert_eq!(ids(&attempts(&log)), ["good"]);
    assert_spool_drained(&spool);
}

enum Entry {
    Symlink(&'static str),
    Fifo,
    Folder,
}

#[test]
fn entries_that_are_not_regular_files_are_moved_aside_not_followed() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let passwd = fs::read("/etc/passwd").ok();
    let mut w = bad_input_worker(&spool, &log);
    let tasks = spool.tasks(W);
    fs::create_dir_all(&tasks).unwrap();
    let cases = [
        ("x.json", Entry::Symlink("/etc/passwd")),
        ("f.json", Entry::Fifo),
        ("d.json", Entry::Folder),
    ];
    for (i, (file, entry)) in cases.iter().enumerate() {
        // Made under a dot-name, then renamed into place.
        let staging = tasks.join(format!(".{file}.tmp"));
        match entry {
            Entry::Symlink(target) => std::os::unix::fs::symlink(target, &staging).unwrap(),
            Entry::Fifo => {
                nix::unistd::mkfifo(&staging, nix::sys::stat::Mode::from_bits_truncate(0o644))
                    .unwrap()
            }
            Entry::Folder => {
                fs::create_dir(&staging).unwrap();
                fs::write(staging.join("inside.txt"), "kept").unwrap();
            }
        }
        fs::rename(&staging, tasks.join(file)).unwrap();
        let record = wait_entry_record(&spool, "not_a_regular_file", |n| n == *file);
        assert_eq!(
            record["rejected_path"],
            format!(".rejected/{file}"),
            "{record}"
        );
        let moved = spool.dlq(W).join(".rejected").join(file);
        let meta =
            fs::symlink_metadata(&moved).unwrap_or_else(|e| panic!("{}: {e}", moved.display()));
        match entry {
            Entry::Symlink(target) => {
                assert!(
                    meta.file_type().is_symlink(),
                    "{file} is no longer a symlink"
                );
                assert_eq!(fs::read_link(&moved).unwrap(), PathBuf::from(target));
            }
            Entry::Fifo => assert!(meta.file_type().is_fifo(), "{file} is no longer a FIFO"),
            Entry::Folder => {
                assert!(meta.is_dir(), "{file} is no longer a folder");
                assert_eq!(
                    fs::read_to_string(moved.join("inside.txt")).ok().as_deref(),
                    Some("kept")
                );
            }
        }
        assert!(
            fs::symlink_metadata(tasks.join(file)).is_err(),
            "{file} is still pending"
        );
        assert_still_serving(&spool, &mut w, &format!("good-{i}"));
    }
    let target = fs::symlink_metadata("/etc/passwd").expect("/etc/passwd");
    assert!(target.is_file(), "/etc/passwd is no longer a regular file");
    assert_eq!(fs::read("/etc/passwd").ok(), passwd, "/etc/passwd changed");
    assert_eq!(spool.dlq_records(W).len(), cases.len());
    assert_spool_drained(&spool);
}

#[test]
fn a_task_file_whose_name_is_not_utf8_runs_normally() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let _w = bad_input_worker(&spool, &log);
    let name = OsStr::from_bytes(b"caf\xe9.json");
    let task = json!({"task_id": "cafe", "description": "latin-1 file name"}).to_string();
    let tasks = spool.tasks(W);
    fs::create_dir_all(&tasks).unwrap();
    fs::write(tasks.join(".cafe.tmp"), &task).unwrap();
    fs::rename(tasks.join(".cafe.tmp"), tasks.join(name)).unwrap();
    let r = spool.wait_result(W, "cafe");
    assert_eq!(r["status"], "completed", "{r}");
    assert!(
        spool.dlq_records(W).is_empty(),
        "{:?}",
        spool.dlq_records(W)
    );
    assert!(
        fs::symlink_metadata(tasks.join(name)).is_err(),
        "still pending"
    );
    assert_spool_drained(&spool);
}

#[test]
fn an_invalid_task_file_whose_name_is_not_utf8_is_dead_lettered_with_its_name() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let mut w = bad_input_worker(&spool, &log);
    let name = OsStr::from_bytes(b"caf\xe9-bad.json");
    let tasks = spool.tasks(W);
    fs::create_dir_all(&tasks).unwrap();
    fs::write(tasks.join(".bad.tmp"), "{not json").unwrap();
    fs::rename(tasks.join(".bad.tmp"), tasks.join(name)).unwrap();
    let record = wait_entry_record(&spool, "invalid_json", |n| {
        n.starts_with("caf") && n.ends_with("-bad.json")
    });
    assert_eq!(record["original"], "{not json", "{record}");
    assert!(
        fs::symlink_metadata(tasks.join(name)).is_err(),
        "still pending"
    );
    assert_still_serving(&spool, &mut w, "good");
    assert_spool_drained(&spool);
}

// ---------------------------------------------------------------------------
// 8. files that are not tasks

#[test]
fn dot_files_and_non_json_files_are_ignored() {
    let spool = Spool::new();
    let log = spool.scratch("log");
    let agent = spool.script("agent.sh", &log_attempt(&log));
    let tasks = spool.tasks(W);
    fs::create_dir_all(&tasks).unwrap();
    let content = |id: &str| json!({"task_id": id, "description": "must not run"}).to_string();
    // Two present at start-up, two written in place while running.
    fs::write(tasks.join(".hidden.json"), content("hidden")).unwrap();
    fs::write(tasks.join("notes.txt"), content("notes")).unwrap();
    let _w = worker(&spool, &agent, &[], &[]);
    spool.drop_simple(W, "g1", "a good task");
    assert_eq!(spool.wait_result(W, "g1")["status"], "completed");
    fs::write(tasks.join(".late.json"), content("late-hidden")).unwrap();
    fs::write(tasks.join("late.txt"), content("late-notes")).unwrap();
    spool.drop_simple(W, "g2", "a good task");
    assert_eq!(spool.wait_result(W, "g2")["status"], "completed");
    let files = [
        (".hidden.json", "hidden"),
        ("notes.txt", "notes"),
        (".late.json", "late-hidden"),
        ("late.txt", "late-notes"),
    ];
    let ignored = holds_for(Duration::from_secs(1), || {
        files.iter().all(|(file, id)| {
            fs::read_to_string(tasks.join(file)).ok() == Some(content(id))
                && spool.result(W, id).is_none()
        }) && spool.dlq_records(W).is_empty()
            && ids(&attempts(&log)) == ["g1", "g2"]
    });
    assert!(
        ignored,
        "not ignored: tasks {:?}, dlq {:?}, runs {:?}",
        all_names(&tasks),
        spool.dlq_records(W),
        attempts(&log)
    );
    assert_eq!(all_names(&spool.active(W)), Vec::<String>::new());
}
