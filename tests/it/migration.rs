//! Switching a spool from the Python watcher to hookwatch in place
//! (docs/migrating.md): hw-listen imports the Python listener's state
//! file, so that no event it had sent goes out again (hw-listen(8),
//! STATE), and hw-worker removes the lock files the Python worker left
//! beside tasks it no longer has (hw-worker(8), FILES). Each test runs the
//! real binaries on a spool of its own, laid out as the Python system
//! leaves it.

use crate::common::*;

use std::fs;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const W: &str = "marie";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn state_path(spool: &Spool) -> PathBuf {
    spool.root.join("orchestrator_state.json")
}

/// A task of the Python listener's state, as it wrote them.
fn python_task(spool: &Spool, id: &str, status: &str, created_at: f64, ended: bool) -> Value {
    json!({"task_id": id, "worker": W, "created_at": created_at,
           "completed_at": if ended { json!(created_at + 1.0) } else { Value::Null },
           "status": status,
           "result_file": spool.results(W).join(format!("{id}.json")).display().to_string(),
           "attempts": 0})
}

/// Writes the Python listener's state file; returns its bytes.
fn write_python_state(spool: &Spool, tasks: Vec<Value>) -> Vec<u8> {
    let state = json!({"tasks": tasks,
        "stats": {"total_tasks": 3, "completed": 2, "failed": 1},
        "timestamp": "2026-12-04T10:00:38.780262"});
    let bytes = serde_json::to_vec_pretty(&state).unwrap();
    fs::write(state_path(spool), &bytes).unwrap();
    bytes
}

/// A result as the Python worker wrote it.
fn write_result(spool: &Spool, id: &str, status: &str) -> PathBuf {
    let record = json!({"task_id": id, "worker": W, "status": status,
        "exit_code": if status == "completed" { 0 } else { 1 },
        "stdout": "", "stderr": "", "duration_seconds": 1.5,
        "timestamp": "2026-12-04T10:00:38.770000", "retry_count": 0});
    place(&spool.results(W), &format!("{id}.json"), &record)
}

fn write_dead_letter(spool: &Spool, id: &str, reason: &str) -> PathBuf {
    let record = json!({"task_id": id, "description": "x", "dlq_reason": reason,
        "dlq_timestamp": "2026-12-04T10:00:38.770000", "retry_count": 3});
    place(&spool.dlq(W), &format!("{id}_1796378438.json"), &record)
}

/// `hw-listen --once`, bounded; its exit code, events and log.
fn listen_once(spool: &Spool, env: &[(&str, &str)]) -> (Option<i32>, Vec<Value>, String) {
    let cmd = listener_command(spool, &["--once"], env);
    let mut l = Daemon::spawn(spool, &spool.numbered("hw-listen"), cmd);
    let status = l
        .wait_exit(DEADLINE)
        .unwrap_or_else(|| panic!("hw-listen --once did not finish:\n{}", l.log_text()));
    (status.code(), l.events(), l.log_text())
}

/// `worker/task_id` of each event of type `kind`, sorted.
fn keys(events: &[Value], kind: &str) -> Vec<String> {
    let mut k: Vec<String> = events
        .iter()
        .filter(|e| e["event_type"] == kind)
        .map(|e| format!("{}/{}", e["data"]["worker"], e["data"]["task_id"]).replace('"', ""))
        .collect();
    k.sort();
    k
}

/// The files `orchestrator_state.json.python-<unix>` of the spool root.
fn kept_copies(spool: &Spool) -> Vec<PathBuf> {
    all_names(&spool.root)
        .into_iter()
        .filter(|n| n.starts_with("orchestrator_state.json.python-"))
        .map(|n| spool.root.join(n))
        .collect()
}

// ---------------------------------------------------------------------------
// hw-listen on the Python listener's state file

#[test]
fn the_python_state_is_imported_and_nothing_it_reported_goes_out_again() {
    let spool = Spool::new();
    let now = unix_now();
    write_result(&spool, "done", "completed");
    write_result(&spool, "lost", "failed");
    write_dead_letter(&spool, "lost", "max_retries_exceeded");
    write_dead_letter(&spool, "bad", "invalid_format");
    // A result the Python listener never listed: new to both.
    write_result(&spool, "unlisted", "completed");
    let original = write_python_state(
        &spool,
        vec![
            python_task(&spool, "done", "completed", now - 60.0, true),
            python_task(&spool, "lost", "failed", now - 60.0, true),
            python_task(&spool, "bad", "dead_lettered", now - 60.0, true),
            python_task(&spool, "open", "pending", now - 5.0, false),
        ],
    );

    let cmd = listener_command(&spool, &[], &[]);
    let mut l = Daemon::spawn(&spool, "hw-listen", cmd);
    l.expect_log("Listening");
    let log = l.log_text();
    let imported: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Imported the Python watcher's state"))
        .collect();
    assert_eq!(imported.len(), 1, "one line on the import:\n{log}");
    assert!(
        imported[0].contains("4 tasks: 3 ended, 1 still open"),
        "{log}"
    );

    // The original is kept beside the state file, as it was.
    let kept = kept_copies(&spool);
    assert_eq!(kept.len(), 1, "{:?}", all_names(&spool.root));
    assert_eq!(fs::read(&kept[0]).unwrap(), original);
    let kept_name = kept[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(imported[0].contains(&kept_name), "{log}");

    // New results are emitted once: the open task's, and a replay's.
    write_result(&spool, "open", "completed");
    let ok = wait_until(DEADLINE, || {
        keys(&l.events(), "task_completed").contains(&format!("{W}/open"))
    });
    assert!(ok, "no task_completed for open: {:#?}", l.events());
    l.stop();
    let first = l.events();
    assert_eq!(
        keys(&first, "task_completed"),
        [format!("{W}/open"), format!("{W}/unlisted")],
        "{first:#?}"
    );
    assert!(
        keys(&first, "task_dead_lettered").is_empty(),
        "a reported dead letter went out again: {first:#?}"
    );

    // The state is hookwatch's now: a later run repeats nothing, and
    // reports a result written after the switch once.
    let state = read_json(&state_path(&spool)).expect("the state file");
    assert!(state["tasks"].is_object(), "{state}");
    let (code, again, log) = listen_once(&spool, &[]);
    assert_eq!(code, Some(0), "{log}");
    assert!(again.is_empty(), "events repeated: {again:#?}");
    write_result(&spool, "done", "completed");
    let (code, last, log) = listen_once(&spool, &[]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(keys(&last, "task_completed"), [format!("{W}/done")]);
    assert_eq!(kept_copies(&spool).len(), 1, "imported twice");
    assert!(!log.contains("Imported"), "imported twice:\n{log}");
}

#[test]
fn an_open_python_task_keeps_its_creation_time_for_the_completion_timeout() {
    let spool = Spool::new();
    let created = (unix_now() - 100.0).floor();
    write_python_state(
        &spool,
        vec![
            python_task(&spool, "slow", "pending", created, false),
            // The Python listener reported this one's timeout already.
            python_task(&spool, "late", "timeout", created, false),
        ],
    );
    let (code, events, log) = listen_once(&spool, &[("COMPLETION_TIMEOUT", "50")]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        keys(&events, "task_timeout"),
        [format!("{W}/slow")],
        "{events:#?}"
    );
    let timeout = events
        .iter()
        .find(|e| e["event_type"] == "task_timeout")
        .unwrap();
    assert_eq!(
        timeout["data"]["enqueued_at"],
        rfc3339_ms(created as i64 * 1000),
        "{timeout}"
    );
    // "timeout" was not an end: its result, when it comes, is reported.
    write_result(&spool, "late", "completed");
    let (code, events, log) = listen_once(&spool, &[("COMPLETION_TIMEOUT", "50")]);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(keys(&events, "task_completed"), [format!("{W}/late")]);
    assert!(keys(&events, "task_timeout").is_empty(), "{events:#?}");
}

#[test]
fn a_state_file_of_neither_format_still_exits_65_and_is_left_as_it_is() {
    for bad in [r#"{"tasks": "all"}"#, "[1, 2]", r#"{"tasks": [1]}"#] {
        let spool = Spool::new();
        fs::write(state_path(&spool), bad).unwrap();
        let (code, events, log) = listen_once(&spool, &[]);
        assert_eq!(code, Some(65), "{bad}: {log}");
        assert!(log.contains("orchestrator_state.json"), "{log}");
        assert!(events.is_empty());
        assert_eq!(fs::read_to_string(state_path(&spool)).unwrap(), bad);
        assert!(kept_copies(&spool).is_empty());
    }
}

// ---------------------------------------------------------------------------
// hw-worker and the Python worker's lock files

#[test]
fn hw_worker_removes_the_python_workers_stale_locks_at_start() {
    let spool = Spool::new();
    let tasks = spool.tasks(W);
    fs::create_dir_all(&tasks).unwrap();
    let outside = spool.scratch("outside");
    fs::write(&outside, "keep me").unwrap();
    fs::write(tasks.join("done.json.lock"), "").unwrap();
    std::os::unix::fs::symlink(&outside, tasks.join("link.json.lock")).unwrap();
    // A task the Python worker was running at the switch: it runs again.
    spool.drop_simple(W, "running", "again");
    fs::write(tasks.join("running.json.lock"), "").unwrap();

    let agent = spool.script("agent.sh", "echo ok");
    let mut w = Daemon::worker(&spool, W, &agent, &[]);
    spool.wait_result(W, "running");
    w.expect_log("Removed a stale lock of the Python watcher");
    w.stop();
    let log = w.log_text();
    assert!(log.contains("done.json.lock"), "{log}");
    assert!(!tasks.join("done.json.lock").exists());
    // Never followed: the symlink stays, and so does what it names.
    assert!(log.contains("link.json.lock"), "{log}");
    assert!(fs::symlink_metadata(tasks.join("link.json.lock")).is_ok());
    assert_eq!(fs::read_to_string(&outside).unwrap(), "keep me");
    // Its task file was there at start: kept, until the next start.
    assert!(tasks.join("running.json.lock").exists());

    let mut w = Daemon::worker(&spool, W, &agent, &[]);
    assert!(
        wait_until(DEADLINE, || !tasks.join("running.json.lock").exists()),
        "the lock of a task run since was not removed:\n{}",
        w.log_text()
    );
    w.stop();
    assert_eq!(
        all_names(&tasks)
            .into_iter()
            .filter(|n| n.ends_with(".lock"))
            .collect::<Vec<_>>(),
        ["link.json.lock"]
    );
}
