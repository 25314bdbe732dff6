//! hw-worker under load (hw-worker(8), INTERNALS: Queue, Group commit):
//! a backlog larger than the in-memory queue, an urgent task arriving
//! while it is full, receipts and results written together, and the
//! `--no-fsync` and `--queue-cap` options.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

const W: &str = "fabien";
const DEADLINE: Duration = Duration::from_secs(30);

fn worker(spool: &Spool, agent: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let agent = agent.display().to_string();
    let mut argv: Vec<&str> = args.to_vec();
    argv.push(W);
    let mut all = vec![("CLAUDE_COMMAND", agent.as_str())];
    all.extend_from_slice(env);
    Daemon::start(spool, "hw-worker", &argv, &all)
}

/// An agent that logs its task id, then waits for the gate file.
fn gated_agent(spool: &Spool) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let log = spool.scratch("ran");
    let gate = spool.scratch("gate");
    let agent = spool.script(
        "agent.sh",
        &format!(
            "echo \"$HW_TASK_ID\" >> '{}'\nwhile [ ! -e '{}' ]; do sleep 0.02; done",
            log.display(),
            gate.display()
        ),
    );
    (agent, log, gate)
}

fn drop_aged(spool: &Spool, id: &str, priority: &str, age_secs: u64) {
    let task = json!({"task_id": id, "description": id, "priority": priority});
    spool.drop_task(W, &format!("{id}.json"), &task);
    age_file(&spool.tasks(W).join(format!("{id}.json")), age_secs);
}

fn queue_size(spool: &Spool) -> Option<u64> {
    spool.heartbeat(W).and_then(|h| h["queue_size"].as_u64())
}

#[test]
fn a_backlog_larger_than_the_queue_cap_runs_every_task_once() {
    let spool = Spool::new();
    let log = spool.scratch("ran");
    let agent = spool.script(
        "agent.sh",
        &format!("echo \"$HW_TASK_ID\" >> '{}'", log.display()),
    );
    let ids: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "backlog");
    }
    let _w = worker(&spool, &agent, &["--queue-cap", "3", "-c", "2"], &[]);
    for id in &ids {
        assert_eq!(spool.wait_result(W, id)["status"], "completed");
    }
    let ran = file_lines(&log);
    let unique: HashSet<&String> = ran.iter().collect();
    assert_eq!(ran.len(), ids.len(), "runs: {ran:?}");
    assert_eq!(unique.len(), ids.len(), "runs: {ran:?}");
    assert!(spool.names(&spool.tasks(W)).is_empty());
}

#[test]
fn the_heartbeat_counts_pending_tasks_beyond_the_queue_cap() {
    let spool = Spool::new();
    let (agent, log, gate) = gated_agent(&spool);
    for i in 0..10 {
        spool.drop_simple(W, &format!("p{i}"), "waits");
    }
    let _w = worker(&spool, &agent, &["--queue-cap", "2", "-c", "1"], &[]);
    assert!(wait_until(DEADLINE, || file_lines(&log).len() == 1));
    // One runs; nine wait, of which at most two are in memory.
    assert!(
        wait_until(DEADLINE, || queue_size(&spool) == Some(9)),
        "heartbeat: {:?}",
        spool.heartbeat(W)
    );
    fs::write(&gate, b"").unwrap();
    for i in 0..10 {
        assert_eq!(
            spool.wait_result(W, &format!("p{i}"))["status"],
            "completed"
        );
    }
}

#[test]
fn a_high_priority_task_arriving_at_a_full_queue_runs_next() {
    let spool = Spool::new();
    let (agent, log, gate) = gated_agent(&spool);
    for i in 0..10 {
        drop_aged(&spool, &format!("n{i}"), "normal", 60 + i);
    }
    let _w = worker(&spool, &agent, &["--queue-cap", "2", "-c", "1"], &[]);
    assert!(wait_until(DEADLINE, || file_lines(&log).len() == 1));
    assert!(wait_until(DEADLINE, || queue_size(&spool) == Some(9)));
    spool.drop_task(
        W,
        "urgent.json",
        &json!({"task_id": "urgent", "description": "now", "priority": "high"}),
    );
    // Seen, though the queue in memory was full: one more pending (beyond
    // the cap the count is an estimate, so a repeated notice may add one).
    assert!(
        wait_until(DEADLINE, || queue_size(&spool) >= Some(10)),
        "heartbeat: {:?}",
        spool.heartbeat(W)
    );
    fs::write(&gate, b"").unwrap();
    assert_eq!(spool.wait_result(W, "urgent")["status"], "completed");
    for i in 0..10 {
        spool.wait_result(W, &format!("n{i}"));
    }
    let ran = file_lines(&log);
    assert_eq!(
        ran.get(1).map(String::as_str),
        Some("urgent"),
        "order: {ran:?}"
    );
}

#[test]
fn every_result_of_a_burst_has_its_receipt_written_no_later() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "exit 0");
    let _w = worker(&spool, &agent, &["-c", "4"], &[]);
    let ids: Vec<String> = (0..60).map(|i| format!("b{i:02}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "burst");
    }
    for id in &ids {
        let result = spool.wait_result(W, id);
        assert_eq!(result["status"], "completed");
        let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        let receipt = modified(&spool.triggers(W).join(format!("{id}.trigger")));
        let written = modified(&spool.results(W).join(format!("{id}.json")));
        assert!(receipt.is_some(), "{id}: no receipt");
        assert!(receipt <= written, "{id}: receipt after its result");
    }
    // Nothing left half-way: no task in .active/, no temporary file.
    assert!(wait_until(DEADLINE, || spool
        .names(&spool.active(W))
        .is_empty()));
    for dir in [spool.results(W), spool.triggers(W)] {
        let dots: Vec<String> = spool
            .names(&dir)
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(dots.is_empty(), "{}: {dots:?}", dir.display());
    }
}

#[test]
fn no_fsync_still_publishes_complete_results_and_says_so_at_start() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "echo done");
    let w = worker(&spool, &agent, &["--no-fsync"], &[]);
    assert!(w.wait_log("fsync=false"), "{}", w.log_text());
    spool.drop_simple(W, "quick", "no fsync");
    let r = spool.wait_result(W, "quick");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["stdout"], "done\n", "{r}");
    assert!(spool.triggers(W).join("quick.trigger").exists());
}

#[test]
fn a_queue_cap_of_zero_is_a_bad_configuration() {
    let spool = Spool::new();
    let out = run_tool(&spool, "hw-worker", &["--queue-cap", "0", W], &[]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--queue-cap"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn receipts_and_results_on_two_file_systems_are_both_published() {
    let spool = Spool::new();
    // /dev/shm is a tmpfs where there is one: another file system than
    // the spool's, so one batch needs a flush of each.
    let elsewhere = tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let results = elsewhere.path().join("results");
    let agent = spool.script("agent.sh", "exit 0");
    let env = [("RESULT_DIR", results.to_str().unwrap())];
    let _w = worker(&spool, &agent, &["-c", "4"], &env);
    let ids: Vec<String> = (0..30).map(|i| format!("fs{i:02}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "two file systems");
    }
    for id in &ids {
        let result = results.join(W).join(format!("{id}.json"));
        assert!(
            wait_until(DEADLINE, || read_json(&result)
                .is_some_and(|r| r["status"] == "completed")),
            "{id}: no completed result in {}",
            results.display()
        );
        assert!(spool.triggers(W).join(format!("{id}.trigger")).exists());
    }
}

/// Whether `strace` is installed and may trace here (says so when not).
fn strace_works() -> bool {
    let ok = std::process::Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: strace is missing or cannot trace here");
    }
    ok
}

/// The worker's publishes and flushes, from an strace log: for a rename
/// of a staged file (a dot-file `.hw-…`), the target's name; for a flush,
/// `None`. (A claim renames `ID.json` too, but not from a staged file.)
fn renames_and_flushes(trace: &Path) -> Vec<Option<String>> {
    let text = fs::read_to_string(trace).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let call = line.split_once(' ').map_or(line, |(_, c)| c).trim_start();
            if ["fsync(", "fdatasync(", "syncfs("]
                .iter()
                .any(|f| call.starts_with(f))
            {
                return Some(None);
            }
            if !call.starts_with("rename") || call.contains("= -1") {
                return None;
            }
            // renameat2(5, ".hw-….tmp", 5, "ID.json", …)
            let mut names = call.split('"').skip(1).step_by(2);
            let (source, target) = (names.next()?, names.next()?);
            source.starts_with(".hw-").then(|| Some(target.to_string()))
        })
        .collect()
}

/// hw-worker `-c 1` under strace, its renames and flushes logged to the
/// returned file.
fn traced_worker(spool: &Spool, heartbeat_interval: &str) -> (Daemon, std::path::PathBuf) {
    let agent = spool.script("agent.sh", "exit 0");
    let trace = spool.scratch("trace");
    let mut cmd = std::process::Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=rename,renameat,renameat2,fsync,fdatasync,syncfs",
    ])
    .arg("-o")
    .arg(&trace)
    .arg(bin("hw-worker"))
    .args(["-c", "1", W])
    .envs(base_env(spool))
    .env("CLAUDE_COMMAND", &agent)
    .env("HEARTBEAT_INTERVAL", heartbeat_interval);
    (Daemon::spawn(spool, "traced-worker", cmd), trace)
}

/// SIGTERM to the group: the worker stops cleanly, then strace.
fn stop_traced(w: &mut Daemon) {
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(w.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(w.wait_exit(DEADLINE).is_some(), "strace did not exit");
}

#[test]
fn a_heartbeat_writes_its_two_files_with_the_flushes_of_one() {
    if !strace_works() {
        return;
    }
    let spool = Spool::new();
    let (mut w, trace) = traced_worker(&spool, "0.2");
    let name = format!("{W}.json");
    let beats = |calls: &[Option<String>]| -> Vec<usize> {
        (0..calls.len())
            .filter(|&i| calls[i].as_deref() == Some(name.as_str()))
            .collect()
    };
    let written = wait_until(DEADLINE, || beats(&renames_and_flushes(&trace)).len() >= 6);
    stop_traced(&mut w);
    assert!(written, "fewer than 6 heartbeats written");
    let calls = renames_and_flushes(&trace);
    // From one beat to the next: the folder's flush, the new file's, and
    // the instance's name for the same file (hw-worker(8), FILES).
    for pair in beats(&calls).windows(2) {
        let between = &calls[pair[0] + 1..pair[1]];
        let flushes = between.iter().filter(|c| c.is_none()).count();
        let instance = between
            .iter()
            .flatten()
            .filter(|n| n.starts_with(&format!("{W}@")))
            .count();
        assert_eq!((flushes, instance), (2, 1), "one beat: {between:?}");
    }
}

#[test]
fn a_receipt_is_durable_before_its_result_and_a_task_costs_the_flushes_of_one_file() {
    if !strace_works() {
        return;
    }
    let spool = Spool::new();
    let (mut w, trace) = traced_worker(&spool, "3600");
    // One at a time, so that no batch holds two tasks' files.
    let ids: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "traced");
        assert_eq!(spool.wait_result(W, id)["status"], "completed");
    }
    stop_traced(&mut w);
    let calls = renames_and_flushes(&trace);
    let at = |name: &str| {
        calls
            .iter()
            .position(|c| c.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no rename to {name} in {calls:?}"))
    };
    for id in &ids {
        let (receipt, result) = (at(&format!("{id}.trigger")), at(&format!("{id}.json")));
        assert!(receipt < result, "{id}: receipt renamed after its result");
        assert!(
            calls[receipt..result].iter().any(Option::is_none),
            "{id}: no flush between the receipt and the result: {:?}",
            &calls[receipt..=result]
        );
    }
    // From the first receipt to the last result: a syncfs before each
    // result and a sync of its folder after, the receipt riding along.
    let (first, last) = (at("t0.trigger"), at("t4.json"));
    let flushes = calls[first..last].iter().filter(|c| c.is_none()).count();
    assert!(
        flushes <= 2 * ids.len(),
        "{flushes} flushes for {} tasks: {:?}",
        ids.len(),
        &calls[first..=last]
    );
}
