//! hw-status (SPEC sections 4 and 5): the counts of a prepared spool in
//! JSON and in the table, every exit status, stale detection after a real
//! worker dies, `--workers`/`WORKERS`, `--init`, `--watch`, and the usual
//! `--help`, `--version` and usage errors.

use crate::common::*;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

/// `hw-status ARGS` with `HW_ROOT=root` plus `env`, nothing else of the
/// spool inherited; stdout and stderr piped.
fn status_command(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    spool_command("hw-status", root, args, env)
}

/// Runs hw-status to completion (bounded) and returns its output.
fn hw_status_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = status_command(root, args, env)
        .spawn()
        .expect("start hw-status");
    finish(child, b"", &format!("hw-status {args:?}"))
}

fn hw_status(root: &Path, args: &[&str]) -> Output {
    hw_status_env(root, args, &[])
}

/// `hw-status --json`: its exit status and its object.
fn status_json(root: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = hw_status_env(root, &all, env);
    let text = stdout(&out);
    let value: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON object ({e}): {text:?}; stderr: {}",
            stderr(&out)
        )
    });
    (out.status.code(), value)
}

// ---------------------------------------------------------------------------
// A prepared spool.

/// A heartbeat as hw-worker writes it, `age` seconds old.
fn heartbeat(worker: &str, status: &str, age: f64, interval: f64) -> Value {
    let breaker = if status == "degraded" {
        "open"
    } else {
        "closed"
    };
    json!({
        "worker": worker,
        "timestamp": rfc3339(SystemTime::now() - Duration::from_secs_f64(age)),
        "uptime_seconds": 3600,
        "queue_size": 0,
        "active_tasks": 0,
        "circuit_breaker_state": breaker,
        "stats": {"tasks_processed": 0, "tasks_failed": 0, "tasks_retried": 0, "tasks_dlq": 0},
        "status": status,
        "pid": 4242,
        "hostname": "test-host",
        "version": "0.0.0",
        "heartbeat_interval": interval,
        "metrics_addr": "127.0.0.1:9999",
    })
}

fn write_json(path: &Path, value: &Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, value.to_string()).unwrap();
}

fn put_heartbeat(spool: &Spool, worker: &str, status: &str, age: f64, interval: f64) {
    write_json(
        &spool.heartbeat_path(worker),
        &heartbeat(worker, status, age, interval),
    );
}

fn put_task(dir: &Path, id: &str) {
    write_json(
        &dir.join(format!("{id}.json")),
        &json!({"task_id": id, "description": "x"}),
    );
}

fn put_result(spool: &Spool, worker: &str, id: &str, status: &str) {
    write_json(
        &spool.results(worker).join(format!("{id}.json")),
        &json!({"task_id": id, "worker": worker, "status": status,
                "exit_code": if status == "completed" { 0 } else { 1 },
                "stdout": "", "stderr": "", "duration_seconds": 0.1,
                "timestamp": rfc3339(SystemTime::now()), "retry_count": 0}),
    );
}

fn put_dead_letter(spool: &Spool, worker: &str, id: &str) {
    write_json(
        &spool.dlq(worker).join(format!("{id}_1700000000.json")),
        &json!({"task_id": id, "description": "x", "dlq_reason": "max_retries_exceeded",
                "dlq_timestamp": rfc3339(SystemTime::now()), "retry_count": 3,
                "last_error": "exit status 1"}),
    );
}

/// A worker with a fresh, healthy heartbeat and an (empty) tasks folder.
fn healthy_worker(spool: &Spool, worker: &str) {
    fs::create_dir_all(spool.tasks(worker)).unwrap();
    put_heartbeat(spool, worker, "healthy", 0.0, 10.0);
}

/// Asserts the exit status and verdict of `--json` and of the table, and
/// returns the JSON.
fn assert_verdict(spool: &Spool, code: i32, overall: &str) -> Value {
    let (json_code, report) = status_json(&spool.root, &[], &[]);
    assert_eq!(
        json_code,
        Some(code),
        "--json exit status; report: {report}"
    );
    assert_eq!(report["overall"], overall, "report: {report}");
    let table = hw_status(&spool.root, &[]);
    assert_eq!(
        table.status.code(),
        Some(code),
        "table exit status; stdout:\n{}stderr:\n{}",
        stdout(&table),
        stderr(&table)
    );
    report
}

// ---------------------------------------------------------------------------
// Counts.

#[test]
fn counts_of_a_prepared_spool_match_in_json_and_in_the_table() {
    let spool = Spool::new();
    let w = "marie";
    put_task(&spool.tasks(w), "p-1");
    put_task(&spool.tasks(w), "p-2");
    // A producer's staging file is not a pending task.
    write_json(&spool.tasks(w).join(".p-3.json"), &json!({}));
    put_task(&spool.active(w), "a-1");
    put_task(&spool.deferred(w), "d-1");
    for id in ["c-1", "c-2", "c-3"] {
        put_result(&spool, w, id, "completed");
    }
    put_result(&spool, w, "f-1", "failed");
    put_dead_letter(&spool, w, "f-1");
    put_heartbeat(&spool, w, "healthy", 2.0, 10.0);
    // A second worker known only by its heartbeat.
    put_heartbeat(&spool, "anga", "healthy", 0.0, 10.0);

    let (code, report) = status_json(&spool.root, &[], &[]);
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"))
            .keys()
            .cloned()
            .collect()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    assert_eq!(keys(&report), set(&["timestamp", "overall", "workers"]));
    let ts = report["timestamp"].as_str().expect("timestamp is a string");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "timestamp {ts:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    assert_eq!(report["overall"], "warning", "dead letters exist: {report}");
    assert_eq!(code, Some(1));
    assert_eq!(keys(&report["workers"]), set(&["anga", "marie"]));
    let m = &report["workers"][w];
    assert_eq!(
        keys(m),
        set(&[
            "status",
            "heartbeat_age_seconds",
            "pending",
            "active",
            "deferred",
            "completed",
            "failed",
            "dlq",
            "circuit_breaker_state",
            "metrics_addr",
            "uptime_seconds",
            "paused_reason",
            "paused_until",
            "cost_usd_today",
            "instances",
        ])
    );
    assert_eq!(m["status"], "healthy");
    // The prepared heartbeat is the name's own file, written by a
    // process no instance file names: it speaks as the one instance.
    assert_eq!(m["instances"].as_array().map(Vec::len), Some(1), "{m}");
    let age = m["heartbeat_age_seconds"]
        .as_f64()
        .expect("age is a number");
    assert!(
        (1.5..2.0 + DEADLINE.as_secs_f64()).contains(&age),
        "heartbeat written 2 s ago has age {age}"
    );
    for (field, n) in [
        ("pending", 2),
        ("active", 1),
        ("deferred", 1),
        ("completed", 3),
        ("failed", 1),
        ("dlq", 1),
    ] {
        assert_eq!(m[field], n, "{field}: {m}");
    }
    assert_eq!(m["circuit_breaker_state"], "closed");
    assert_eq!(m["metrics_addr"], "127.0.0.1:9999");
    assert_eq!(m["uptime_seconds"], 3600);
    let a = &report["workers"]["anga"];
    for field in [
        "pending",
        "active",
        "deferred",
        "completed",
        "failed",
        "dlq",
    ] {
        assert_eq!(a[field], 0, "anga {field}: {a}");
    }

    let out = hw_status(&spool.root, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let header_at = lines
        .iter()
        .position(|l| l.split_whitespace().next() == Some("WORKER"))
        .unwrap_or_else(|| panic!("no header row starting with WORKER:\n{text}"));
    let header: Vec<&str> = lines[header_at].split_whitespace().collect();
    assert_eq!(header.get(1), Some(&"STATUS"), "header: {header:?}");
    let row = |name: &str| -> Vec<&str> {
        lines[header_at + 1..]
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
    };
    let cell = |cells: &[&str], column: &str| -> String {
        let i = header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(column))
            .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
        cells
            .get(i)
            .unwrap_or_else(|| panic!("row {cells:?} has no column {column}"))
            .to_string()
    };
    let marie = row(w);
    assert_eq!(cell(&marie, "STATUS"), "healthy");
    for (column, n) in [
        ("PENDING", "2"),
        ("ACTIVE", "1"),
        ("DEFERRED", "1"),
        ("COMPLETED", "3"),
        ("FAILED", "1"),
        ("DLQ", "1"),
    ] {
        assert_eq!(cell(&marie, column), n, "{column} of marie:\n{text}");
    }
    let anga = row("anga");
    assert_eq!(cell(&anga, "STATUS"), "healthy");
    assert_eq!(cell(&anga, "PENDING"), "0");
}

// ---------------------------------------------------------------------------
// Exit statuses.

#[test]
fn exit_0_when_every_worker_is_healthy() {
    let spool = Spool::new();
    healthy_worker(&spool, "marie");
    // 20 s old, but the interval is 10: within three intervals.
    put_heartbeat(&spool, "anga", "healthy", 20.0, 10.0);
    let report = assert_verdict(&spool, 0, "ok");
    assert_eq!(report["workers"]["anga"]["status"], "healthy");
}

#[test]
fn exit_1_when_dead_letters_exist() {
    let spool = Spool::new();
    healthy_worker(&spool, "marie");
    put_dead_letter(&spool, "marie", "t-1");
    let report = assert_verdict(&spool, 1, "warning");
    assert_eq!(report["workers"]["marie"]["status"], "healthy");
    assert_eq!(report["workers"]["marie"]["dlq"], 1);
}

#[test]
fn exit_1_when_a_worker_is_degraded_or_stopped() {
    for status in ["degraded", "stopped"] {
        let spool = Spool::new();
        healthy_worker(&spool, "marie");
        put_heartbeat(&spool, "anga", status, 0.0, 10.0);
        let report = assert_verdict(&spool, 1, "warning");
        assert_eq!(report["workers"]["anga"]["status"], status);
    }
}

#[test]
fn exit_1_when_a_heartbeat_is_older_than_three_of_its_intervals() {
    let spool = Spool::new();
    healthy_worker(&spool, "marie");
    // Interval 2: stale after 6 s.
    fs::create_dir_all(spool.tasks("anga")).unwrap();
    put_heartbeat(&spool, "anga", "healthy", 7.0, 2.0);
    let report = assert_verdict(&spool, 1, "warning");
    assert_eq!(report["workers"]["anga"]["status"], "stale");
    assert_eq!(report["workers"]["marie"]["status"], "healthy");
}

#[test]
fn exit_2_when_a_worker_has_a_tasks_folder_but_no_heartbeat() {
    let spool = Spool::new();
    healthy_worker(&spool, "marie");
    fs::create_dir_all(spool.tasks("anga")).unwrap();
    let report = assert_verdict(&spool, 2, "critical");
    assert_eq!(report["workers"]["anga"]["status"], "missing");
    assert!(report["workers"]["anga"]["metrics_addr"].is_null());
    assert!(report["workers"]["anga"]["uptime_seconds"].is_null());
}

#[test]
fn exit_2_when_the_spool_is_empty() {
    let spool = Spool::new();
    assert_verdict(&spool, 2, "critical");
}

#[test]
fn exit_66_with_an_unknown_verdict_when_the_root_does_not_exist() {
    let spool = Spool::new();
    let root = spool.scratch("no-such-root");
    let (code, report) = status_json(&root, &[], &[]);
    assert_eq!(code, Some(66), "report: {report}");
    assert_eq!(report["overall"], "unknown");
    assert_eq!(hw_status(&root, &[]).status.code(), Some(66));
}

#[test]
fn exit_3_when_tasks_is_a_file_instead_of_a_folder() {
    let spool = Spool::new();
    fs::write(spool.root.join("tasks"), b"not a folder").unwrap();
    put_heartbeat(&spool, "marie", "healthy", 0.0, 10.0);
    assert_verdict(&spool, 3, "unknown");
}

// ---------------------------------------------------------------------------
// A real worker that dies.

#[test]
fn a_killed_worker_turns_stale_with_exit_1() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "echo ok");
    let mut d = Daemon::worker(&spool, "marie", &agent, &[("HEARTBEAT_INTERVAL", "0.2")]);
    let mut last = (None, Value::Null);
    let healthy = wait_until(DEADLINE, || {
        last = status_json(&spool.root, &[], &[]);
        last.0 == Some(0) && last.1["workers"]["marie"]["status"] == "healthy"
    });
    assert!(
        healthy,
        "hw-status never said healthy with exit 0: {:?} {}; log:\n{}",
        last.0,
        last.1,
        d.log_text()
    );
    d.crash();
    let stale = wait_until(DEADLINE, || {
        last = status_json(&spool.root, &[], &[]);
        last.0 == Some(1) && last.1["workers"]["marie"]["status"] == "stale"
    });
    assert!(
        stale,
        "hw-status never said stale with exit 1 after SIGKILL: {:?} {}",
        last.0, last.1
    );
    assert_eq!(last.1["overall"], "warning");
}

// ---------------------------------------------------------------------------
// Which workers.

fn spool_with_a_and_c() -> Spool {
    let spool = Spool::new();
    healthy_worker(&spool, "a");
    healthy_worker(&spool, "c");
    spool
}

fn assert_exactly_a_and_missing_b(code: Option<i32>, report: &Value) {
    let names: Vec<&String> = report["workers"]
        .as_object()
        .unwrap_or_else(|| panic!("no workers object: {report}"))
        .keys()
        .collect();
    assert_eq!(names, ["a", "b"], "report: {report}");
    assert_eq!(report["workers"]["a"]["status"], "healthy");
    assert_eq!(report["workers"]["b"]["status"], "missing");
    assert_eq!(report["overall"], "critical");
    assert_eq!(code, Some(2));
}

#[test]
fn workers_flag_lists_exactly_those_workers() {
    let spool = spool_with_a_and_c();
    let (code, report) = status_json(&spool.root, &["--workers", "a,b"], &[]);
    assert_exactly_a_and_missing_b(code, &report);
}

#[test]
fn workers_variable_lists_exactly_those_workers() {
    let spool = spool_with_a_and_c();
    let (code, report) = status_json(&spool.root, &[], &[("WORKERS", "a,b")]);
    assert_exactly_a_and_missing_b(code, &report);
}

// ---------------------------------------------------------------------------
// --init.

#[test]
fn init_creates_the_layout_of_each_worker() {
    let spool = Spool::new();
    let out = hw_status(&spool.root, &["--init", "marie,anga"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    for w in ["marie", "anga"] {
        for dir in [
            spool.tasks(w),
            spool.active(w),
            spool.deferred(w),
            spool.results(w),
            spool.triggers(w),
            spool.dlq(w),
        ] {
            assert!(dir.is_dir(), "{} was not created", dir.display());
        }
    }
    for dir in [
        spool.root.join("heartbeats"),
        spool.triggers("orchestrator"),
    ] {
        assert!(dir.is_dir(), "{} was not created", dir.display());
    }
}

#[test]
fn init_with_a_bad_name_exits_78_and_creates_nothing() {
    let spool = Spool::new();
    let out = hw_status(&spool.root, &["--init", "../x"]);
    // SPEC 5: a bad value is a one-line error naming the flag, exit 78.
    assert_eq!(out.status.code(), Some(78), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one stderr line: {err}");
    assert!(lines[0].contains("--init"), "does not name --init: {err}");
    let root_entries: Vec<_> = fs::read_dir(&spool.root).unwrap().flatten().collect();
    assert!(
        root_entries.is_empty(),
        "created {:?}",
        root_entries.iter().map(|e| e.path()).collect::<Vec<_>>()
    );
    assert_eq!(spool.names(spool.dir.path()), ["spool"]);
}

// ---------------------------------------------------------------------------
// --watch.

#[test]
fn watch_redraws_until_sigint() {
    const CLEAR: &str = "\x1b[2J";
    let spool = Spool::new();
    healthy_worker(&spool, "marie");
    let child = status_command(&spool.root, &["--watch", "0.2"], &[])
        .spawn()
        .expect("start hw-status --watch");
    let mut child = Spawned(child);
    let mut pipe = child.0.stdout.take().unwrap();
    let _stderr = drain(child.0.stderr.take());
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Two complete screens: two clears, each followed by a worker row.
    let mut seen = String::new();
    let end = Instant::now() + DEADLINE;
    let two_screens = |s: &str| {
        let screens: Vec<&str> = s.split(CLEAR).skip(1).collect();
        screens.len() >= 2 && screens[..2].iter().all(|screen| screen.contains("marie"))
    };
    while !two_screens(&seen) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => {
                let tail: String = seen
                    .chars()
                    .rev()
                    .take(600)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "fewer than two screens within {DEADLINE:?}: {} clear-screen sequences in {} bytes, ending {tail:?}",
                    seen.matches(CLEAR).count(),
                    seen.len()
                )
            }
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut status = None;
    let exited = wait_until(DEADLINE, || {
        status = child.0.try_wait().ok().flatten();
        status.is_some()
    });
    assert!(exited, "hw-status --watch did not exit after SIGINT");
}

// ---------------------------------------------------------------------------
// Help, version, usage.

#[test]
fn help_prints_usage_and_exits_0() {
    let spool = Spool::new();
    let out = hw_status(&spool.root, &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("Usage: hw-status"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn version_prints_name_and_version_first() {
    let spool = Spool::new();
    let out = hw_status(&spool.root, &["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert_eq!(
        text.lines().next(),
        Some(format!("hw-status {}", env!("CARGO_PKG_VERSION")).as_str())
    );
}

#[test]
fn an_unknown_flag_exits_64() {
    let spool = Spool::new();
    let out = hw_status(&spool.root, &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(64), "stderr: {}", stderr(&out));
    assert!(!stderr(&out).trim().is_empty(), "no diagnostic on stderr");
}
