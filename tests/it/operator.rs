//! The operator's tools (issue #15): what hw-enqueue says when a wait
//! times out, `--id` that writes nothing on bad input, hw-status's
//! reasons, its verdict on an unreadable spool, `--tasks` and
//! `--prune-older-than`, `hw-dlq cancel`, typos that are no longer silent
//! (a worker without a heartbeat, a spool root that does not exist), and
//! the flags that --help, the man pages and the README must agree on.
//! Each test runs the real binaries on its own temporary spool; every
//! wait has a deadline; daemons run in their own process group and are
//! always stopped.

use crate::common::*;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::SystemTime;

use serde_json::{json, Value};

const W: &str = "marie";

// ---------------------------------------------------------------------------
// Helpers

/// `tool ARGS…` on the spool at `root` (nothing of the spool inherited),
/// `input` on its standard input.
fn run_in(root: &Path, tool: &str, args: &[&str], input: &[u8]) -> Output {
    let mut cmd = spool_command(tool, root, args, &[]);
    cmd.stdin(Stdio::piped());
    let child = cmd.spawn().expect("start the tool");
    finish(child, input, &format!("{tool} {args:?}"))
}

fn run(spool: &Spool, tool: &str, args: &[&str]) -> Output {
    run_in(&spool.root, tool, args, b"")
}

fn write_json(path: &Path, value: &Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, value.to_string()).unwrap();
}

/// A heartbeat as hw-worker writes it, fresh.
fn put_heartbeat(spool: &Spool, worker: &str, status: &str, breaker: &str) {
    write_json(
        &spool.heartbeat_path(worker),
        &json!({
            "worker": worker, "timestamp": rfc3339(SystemTime::now()),
            "uptime_seconds": 60, "queue_size": 0, "active_tasks": 0,
            "circuit_breaker_state": breaker,
            "stats": {"tasks_processed": 0, "tasks_failed": 0, "tasks_retried": 0, "tasks_dlq": 0},
            "status": status, "pid": 4242, "hostname": "test-host", "version": "0.0.0",
            "heartbeat_interval": 10, "metrics_addr": null,
        }),
    );
}

fn put_result(spool: &Spool, worker: &str, id: &str, status: &str) -> PathBuf {
    let path = spool.results(worker).join(format!("{id}.json"));
    write_json(
        &path,
        &json!({"task_id": id, "worker": worker, "status": status, "exit_code": 0,
                "stdout": "", "stderr": "", "duration_seconds": 0.1,
                "timestamp": rfc3339(SystemTime::now()), "retry_count": 0}),
    );
    path
}

fn put_file(path: &Path, text: &str) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Every file under `dir`, relative to it, sorted (dot-files too).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out).lines().map(parse_line).collect()
}

const DAY: u64 = 86_400;

// ---------------------------------------------------------------------------
// hw-enqueue --wait: a timeout says where each unfinished task is (item 2)

#[test]
fn a_wait_timeout_says_on_stderr_where_each_unfinished_task_is() {
    let spool = Spool::new();
    put_heartbeat(&spool, W, "healthy", "closed");
    let input = b"{\"task_id\":\"p-1\",\"description\":\"a\"}\n\
                  {\"task_id\":\"r-1\",\"description\":\"b\"}\n\
                  {\"task_id\":\"d-1\",\"description\":\"c\",\"dependencies\":[\"x-1\"]}\n\
                  {\"task_id\":\"n-1\",\"description\":\"d\"}\n";
    let mut cmd = spool_command(
        "hw-enqueue",
        &spool.root,
        &["--json", "--wait", "--wait-timeout", "8", W],
        &[],
    );
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("start hw-enqueue");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input).unwrap();
    drop(stdin);
    // No worker runs: the test plays its part. One task is claimed, one
    // deferred for a retry, one waits for a dependency, one stays.
    let tasks = spool.tasks(W);
    assert!(
        wait_until(DEADLINE, || spool.names(&tasks).len() == 4),
        "the tasks were not written: {:?}",
        spool.names(&tasks)
    );
    fs::create_dir_all(spool.active(W)).unwrap();
    fs::create_dir_all(spool.deferred(W)).unwrap();
    fs::rename(tasks.join("r-1.json"), spool.active(W).join("r-1.json")).unwrap();
    fs::rename(tasks.join("d-1.json"), spool.deferred(W).join("d-1.json")).unwrap();
    fs::remove_file(tasks.join("n-1.json")).unwrap();
    write_json(
        &spool.deferred(W).join("n-1.json"),
        &json!({"task_id": "n-1", "description": "d", "retry_count": 1,
                "not_before": "2099-01-01T00:00:00.000Z", "last_error": "exit status 1"}),
    );
    let out = finish(child, b"", "hw-enqueue --wait");
    assert_exit(&out, 124);
    assert!(stdout(&out).is_empty(), "stdout: {}", stdout(&out));
    let lines: Vec<String> = stderr(&out).lines().map(String::from).collect();
    assert_eq!(
        lines,
        [
            "hw-enqueue: not finished: p-1 still pending",
            "hw-enqueue: not finished: r-1 running",
            "hw-enqueue: not finished: d-1 deferred, waiting for x-1",
            "hw-enqueue: not finished: n-1 deferred until 2099-01-01T00:00:00.000Z",
        ]
    );
}

// ---------------------------------------------------------------------------
// hw-enqueue --id: nothing written on bad input (item 3)

#[test]
fn id_with_two_lines_of_input_writes_nothing_and_exits_64() {
    let spool = Spool::new();
    let out = run_in(
        &spool.root,
        "hw-enqueue",
        &["-q", "--id", "x-1", W],
        b"one\ntwo\n",
    );
    assert_exit(&out, 64);
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("line 2"), "stderr: {}", stderr(&out));
    assert_eq!(
        tree(&spool.root),
        Vec::<String>::new(),
        "something was written"
    );
}

#[test]
fn id_with_one_line_among_blank_ones_writes_that_task() {
    let spool = Spool::new();
    let out = run_in(
        &spool.root,
        "hw-enqueue",
        &["-q", "--id", "x-1", W],
        b"\n  \nthe one\n\n",
    );
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "x-1\n");
    let task = read_json(&spool.tasks(W).join("x-1.json")).unwrap();
    assert_eq!(task["description"], "the one");
}

// ---------------------------------------------------------------------------
// hw-status (item 4)

#[test]
fn a_worker_named_twice_in_workers_is_shown_once() {
    let spool = Spool::new();
    put_heartbeat(&spool, W, "healthy", "closed");
    let out = run(&spool, "hw-status", &["-w", "marie,marie", "--json"]);
    assert_exit(&out, 0);
    let report = parse_line(stdout(&out).trim());
    assert_eq!(report["workers"].as_object().unwrap().len(), 1);
    let out = run(&spool, "hw-status", &["-w", "marie,anga,marie"]);
    let rows = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("marie "))
        .count();
    assert_eq!(rows, 1, "{}", stdout(&out));
    assert_eq!(stdout(&out).matches("anga: no heartbeat").count(), 1);
}

#[test]
fn an_unreadable_spool_still_prints_its_verdict_line_with_exit_3() {
    let spool = Spool::new();
    fs::write(spool.root.join("tasks"), b"not a folder").unwrap();
    put_heartbeat(&spool, W, "healthy", "closed");
    let out = run(&spool, "hw-status", &[]);
    assert_exit(&out, 3);
    let text = stdout(&out);
    assert!(text.starts_with("overall: unknown ("), "stdout: {text:?}");
    assert_eq!(text.lines().count(), 1, "stdout: {text:?}");
    assert!(stderr(&out).starts_with("hw-status: "), "{}", stderr(&out));
}

#[test]
fn every_reason_of_a_worker_is_shown_a_breaker_open_does_not_hide_dead_letters() {
    let spool = Spool::new();
    put_heartbeat(&spool, W, "degraded", "open");
    write_json(
        &spool.dlq(W).join("t-1_1700000000.json"),
        &json!({"task_id": "t-1", "description": "x", "dlq_reason": "max_retries_exceeded",
                "dlq_timestamp": "2026-11-28T10:30:00.000Z", "retry_count": 3}),
    );
    let out = run(&spool, "hw-status", &[]);
    assert_exit(&out, 1);
    let first = stdout(&out).lines().next().unwrap().to_string();
    assert_eq!(
        first,
        "overall: warning (marie: breaker open; marie: 1 dead letter)"
    );
}

#[test]
fn bad_values_of_hw_status_are_one_line_exit_78() {
    for args in [
        &["-w", "../x"][..],
        &["--watch", "soon"],
        &["--init", "a/b"],
        &["--prune-older-than", "ages"],
    ] {
        let spool = Spool::new();
        let out = run(&spool, "hw-status", args);
        assert_exit(&out, 78);
        let err = stderr(&out);
        assert!(err.contains("invalid value"), "{args:?}: {err:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
    }
}

#[test]
fn hw_status_modes_exclude_each_other_and_take_no_stray_words() {
    let spool = Spool::new();
    for args in [
        &["--tasks", "--prune-older-than", "1d"][..],
        &["--watch", "1", "--tasks"],
        &["marie"],
        &["--tasks", "a/b"],
    ] {
        let out = run(&spool, "hw-status", args);
        assert_exit(&out, 64);
    }
}

// ---------------------------------------------------------------------------
// Typos are not silent (item 6)

#[test]
fn enqueueing_to_a_worker_that_never_had_a_heartbeat_warns_unless_quiet() {
    let spool = Spool::new();
    let out = run(&spool, "hw-enqueue", &["mairie", "Draft the report"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.starts_with("hw-enqueue: warning: worker mairie has never had a heartbeat"),
        "stderr: {err:?}"
    );
    assert_eq!(err.lines().count(), 1, "stderr: {err:?}");
    assert_eq!(
        spool.names(&spool.tasks("mairie")).len(),
        1,
        "still written"
    );
    for quiet in ["-q", "--quiet"] {
        let out = run(&spool, "hw-enqueue", &[quiet, "mairie", "again"]);
        assert_exit(&out, 0);
        assert!(stderr(&out).is_empty(), "{quiet}: {}", stderr(&out));
    }
    put_heartbeat(&spool, W, "healthy", "closed");
    let out = run(&spool, "hw-enqueue", &[W, "a known worker"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn a_spool_root_that_does_not_exist_is_refused_with_66_and_nothing_created() {
    let spool = Spool::new();
    let typo = spool.scratch("typo");
    let runs: [(&str, &[&str]); 6] = [
        ("hw-enqueue", &[W, "a task"]),
        ("hw-dlq", &["list"]),
        ("hw-dlq", &["cancel", W, "t-1"]),
        ("hw-status", &[]),
        ("hw-status", &["--tasks"]),
        ("hw-status", &["--prune-older-than", "1d"]),
    ];
    for (tool, args) in runs {
        let out = run_in(&typo, tool, args, b"");
        assert_exit(&out, 66);
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{tool} {args:?}: {err:?}");
        assert!(
            err.contains("does not exist") && err.contains("hw-status") && err.contains("--init"),
            "{tool} {args:?}: {err:?}"
        );
        assert!(!typo.exists(), "{tool} {args:?} created the root");
    }
    let out = run_in(&typo, "hw-status", &["--json"], b"");
    assert_eq!(parse_line(stdout(&out).trim())["overall"], "unknown");
}

#[test]
fn status_init_creates_a_spool_root_that_does_not_exist() {
    let spool = Spool::new();
    let root = spool.scratch("new-spool");
    let out = run_in(&root, "hw-status", &["--init", W], b"");
    assert_exit(&out, 0);
    assert!(root.join("tasks").join(W).join(".active").is_dir());
    let out = run_in(&root, "hw-enqueue", &["-q", W, "now it works"], b"");
    assert_exit(&out, 0);
}

// ---------------------------------------------------------------------------
// hw-status --tasks (item 11)

/// marie: one running task (its second attempt), two pending (low and
/// high), one deferred for a retry, one deferred for its dependencies
/// (one of which completed for another worker).
fn queued_spool() -> Spool {
    let spool = Spool::new();
    write_json(
        &spool.active(W).join("run-1.json"),
        &json!({"task_id": "run-1", "description": "x", "retry_count": 1}),
    );
    write_json(
        &spool.tasks(W).join("low-1.json"),
        &json!({"task_id": "low-1", "description": "x", "priority": "low"}),
    );
    write_json(
        &spool.tasks(W).join("high-1.json"),
        &json!({"task_id": "high-1", "description": "x", "priority": "high"}),
    );
    write_json(
        &spool.deferred(W).join("retry-1.json"),
        &json!({"task_id": "retry-1", "description": "x", "retry_count": 2,
                "not_before": "2099-01-01T00:00:00.000Z", "last_error": "timeout"}),
    );
    write_json(
        &spool.deferred(W).join("deps-1.json"),
        &json!({"task_id": "deps-1", "description": "x",
                "dependencies": ["done-1", "open-1"]}),
    );
    put_result(&spool, "anga", "done-1", "completed");
    spool
}

#[test]
fn tasks_lists_each_task_that_waits_or_runs_with_what_it_waits_for() {
    let spool = queued_spool();
    let out = run(&spool, "hw-status", &["--tasks", "--json"]);
    assert_exit(&out, 0);
    let lines = json_lines(&out);
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["task_id"].as_str().unwrap())
        .collect();
    // Running first, pending in the order they will run, then deferred
    // by when they are due (a task waiting for dependencies is due now).
    assert_eq!(ids, ["run-1", "high-1", "low-1", "deps-1", "retry-1"]);
    let by_id = |id: &str| lines.iter().find(|l| l["task_id"] == id).unwrap().clone();
    let run1 = by_id("run-1");
    assert_eq!(run1["state"], "active");
    assert_eq!(run1["attempts"], 2, "the running attempt counts");
    assert_eq!(run1["worker"], W);
    let retry = by_id("retry-1");
    assert_eq!(retry["state"], "deferred");
    assert_eq!(retry["attempts"], 2);
    assert_eq!(retry["not_before"], "2099-01-01T00:00:00.000Z");
    assert_eq!(by_id("deps-1")["waiting_for"], json!(["open-1"]));
    assert_eq!(by_id("high-1")["priority"], "high");
    assert_eq!(by_id("low-1")["state"], "pending");
    assert!(run1["age_seconds"].as_f64().is_some());

    let out = run(&spool, "hw-status", &["--tasks"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("WORKER  ID "), "{text}");
    assert!(rows[0].ends_with("WAITING_FOR"), "{text}");
    assert_eq!(rows.len(), 6, "{text}");
    assert!(
        rows[4].contains("deps-1") && rows[4].ends_with("open-1"),
        "{text}"
    );
}

#[test]
fn tasks_of_one_worker_and_nothing_at_all_when_none_waits() {
    let spool = queued_spool();
    write_json(
        &spool.tasks("anga").join("a-1.json"),
        &json!({"task_id": "a-1", "description": "x"}),
    );
    let out = run(&spool, "hw-status", &["--tasks", "anga", "--json"]);
    assert_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["task_id"], "a-1");
    let out = run(&spool, "hw-status", &["--tasks=fabien"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn tasks_never_reads_through_a_symlink() {
    let spool = Spool::new();
    let secret = put_file(
        &spool.scratch("secret.json"),
        r#"{"task_id":"SECRET","description":"x"}"#,
    );
    fs::create_dir_all(spool.tasks(W)).unwrap();
    std::os::unix::fs::symlink(&secret, spool.tasks(W).join("evil.json")).unwrap();
    let out = run(&spool, "hw-status", &["--tasks", "--json"]);
    assert_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["task_id"], "evil");
    assert!(lines[0]["error"].is_string());
    assert!(!stdout(&out).contains("SECRET"));
}

// ---------------------------------------------------------------------------
// hw-dlq cancel (item 12)

#[test]
fn cancel_dead_letters_a_pending_task_and_replay_undoes_it() {
    let spool = Spool::new();
    let task = json!({"task_id": "t-1", "description": "Draft", "priority": "high",
                      "metadata": {"batch_id": "b-1"}});
    spool.drop_task(W, "t-1.json", &task);
    let out = run(&spool, "hw-dlq", &["cancel", W, "t-1"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "marie t-1\n");
    assert!(spool.names(&spool.tasks(W)).is_empty());
    let letters = spool.dlq_records(W);
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l["dlq_reason"], "cancelled");
    assert_eq!(l["last_error"], "cancelled by hw-dlq");
    assert_eq!(l["retry_count"], 0);
    assert!(l["dlq_timestamp"].is_string());
    assert_eq!(l["priority"], "high");
    assert_eq!(l["metadata"]["batch_id"], "b-1");

    let out = run(&spool, "hw-dlq", &["replay", W, "t-1"]);
    assert_exit(&out, 0);
    let back = read_json(&spool.tasks(W).join("t-1.json")).unwrap();
    assert_eq!(back["description"], "Draft");
    assert!(back.get("dlq_reason").is_none());
    assert!(spool.dlq_records(W).is_empty());
}

#[test]
fn cancel_dead_letters_a_deferred_task_with_its_attempts() {
    let spool = Spool::new();
    write_json(
        &spool.deferred(W).join("t-2.json"),
        &json!({"task_id": "t-2", "description": "x", "retry_count": 2,
                "not_before": "2099-01-01T00:00:00.000Z", "last_error": "timeout"}),
    );
    let out = run(&spool, "hw-dlq", &["--json", "cancel", W, "t-2"]);
    assert_exit(&out, 0);
    let done = parse_line(stdout(&out).trim());
    assert_eq!(done["task_id"], "t-2");
    assert!(done["dlq_file"].as_str().unwrap().starts_with("t-2_"));
    assert!(spool.names(&spool.deferred(W)).is_empty());
    let l = &spool.dlq_records(W)[0];
    assert_eq!(l["dlq_reason"], "cancelled");
    assert_eq!(l["retry_count"], 2);
    assert_eq!(l["last_error"], "cancelled by hw-dlq");
    assert!(l.get("not_before").is_none());
}

#[test]
fn cancel_of_an_unknown_id_does_nothing_at_all_and_exits_66() {
    let spool = Spool::new();
    spool.drop_simple(W, "t-1", "x");
    let out = run(&spool, "hw-dlq", &["cancel", W, "t-1", "nope"]);
    assert_exit(&out, 66);
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    assert_eq!(spool.names(&spool.tasks(W)), ["t-1.json"]);
    assert!(spool.dlq_records(W).is_empty());
    for args in [&["cancel"][..], &["cancel", W], &["cancel", "../x", "t-1"]] {
        assert_exit(&run(&spool, "hw-dlq", args), 64);
    }
}

/// A worker with one slot; the agent of `block` runs until the file
/// `release` exists, every other one succeeds.
fn blocking_worker(spool: &Spool) -> (Daemon, PathBuf) {
    let release = spool.scratch("release");
    let agent = spool.script(
        "agent.sh",
        &format!(
            "if [ \"$desc\" = block ]; then while [ ! -e '{}' ]; do sleep 0.05; done; fi\necho done",
            release.display()
        ),
    );
    let d = Daemon::worker(spool, W, &agent, &[("MAX_CONCURRENT_TASKS", "1")]);
    (d, release)
}

#[test]
fn cancel_of_a_running_task_stops_its_agent_dead_letters_it_and_replay_undoes_it() {
    let spool = Spool::new();
    let stopped = spool.scratch("stopped");
    let agent = spool.script(
        "agent.sh",
        &format!(
            "if [ \"$desc\" = block ]; then trap 'echo TERM > {s}; exit 143' TERM; \
             while :; do sleep 0.05; done; fi\necho done",
            s = stopped.display()
        ),
    );
    let mut d = Daemon::worker(&spool, W, &agent, &[("MAX_CONCURRENT_TASKS", "1")]);
    spool.drop_simple(W, "busy", "block");
    assert!(
        wait_until(DEADLINE, || spool.active(W).join("busy.json").exists()),
        "never claimed:\n{}",
        d.log_text()
    );
    let out = run(&spool, "hw-dlq", &["cancel", W, "busy"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "marie busy\n");
    assert_eq!(
        fs::read_to_string(&stopped).unwrap(),
        "TERM\n",
        "SIGTERM first"
    );
    let letters = spool.dlq_records(W);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["dlq_reason"], "cancelled");
    assert_eq!(letters[0]["last_error"], "cancelled by hw-dlq");
    assert!(!spool.active(W).join("busy.json").exists());
    assert!(
        spool.result(W, "busy").is_none(),
        "a cancelled task has no result"
    );
    assert!(all_names(&spool.tasks(W))
        .iter()
        .all(|n| !n.starts_with(".cancel")));
    d.expect_log("Cancel requested by hw-dlq: stopping the running task");
    // Replay undoes it; this time the agent is let finish.
    fs::remove_file(&stopped).unwrap();
    let out = run(&spool, "hw-dlq", &["replay", W, "busy"]);
    assert_exit(&out, 0);
    assert!(wait_until(DEADLINE, || spool
        .active(W)
        .join("busy.json")
        .exists()));
    let out = run(&spool, "hw-dlq", &["cancel", W, "busy"]);
    assert_exit(&out, 0);
    assert_eq!(spool.dlq_records(W).len(), 1, "cancelled again");
    d.stop();
}

#[test]
fn cancel_of_a_running_task_without_a_worker_to_stop_it_exits_75_and_leaves_the_request() {
    let spool = Spool::new();
    put_file(
        &spool.active(W).join("orphan.json"),
        r#"{"task_id":"orphan","description":"x"}"#,
    );
    // No worker runs: nobody acts on the request.
    let out = run(&spool, "hw-dlq", &["cancel", "--wait", "0.5", W, "orphan"]);
    assert_exit(&out, 75);
    assert!(
        stderr(&out).contains("has not stopped the running task"),
        "{}",
        stderr(&out)
    );
    assert!(spool.tasks(W).join(".cancel.orphan").exists());
}

#[test]
fn a_cancelled_task_never_runs_and_its_dependents_are_dead_lettered() {
    let spool = Spool::new();
    let (mut d, release) = blocking_worker(&spool);
    spool.drop_simple(W, "busy", "block");
    assert!(wait_until(DEADLINE, || spool
        .active(W)
        .join("busy.json")
        .exists()));
    // The one slot is taken: these wait, and one of them is cancelled.
    spool.drop_simple(W, "doomed", "x");
    let dependent = json!({"task_id": "after", "description": "x", "dependencies": ["doomed"]});
    spool.drop_task(W, "after.json", &dependent);
    let out = run(&spool, "hw-dlq", &["cancel", W, "doomed"]);
    assert_exit(&out, 0);
    fs::write(&release, b"").unwrap();
    spool.drop_simple(W, "later", "x");
    spool.wait_result(W, "later");
    let letters = spool.wait_dlq(W, 2);
    let reason_of = |id: &str| {
        letters
            .iter()
            .find(|l| l["task_id"] == id)
            .map(|l| l["dlq_reason"].clone())
    };
    assert_eq!(reason_of("doomed"), Some(json!("cancelled")));
    assert_eq!(reason_of("after"), Some(json!("dependency_failed")));
    assert!(
        spool.result(W, "doomed").is_none(),
        "the cancelled task ran"
    );
    d.stop();
}

// ---------------------------------------------------------------------------
// hw-status --prune-older-than (item 13)

#[test]
fn prune_removes_old_results_receipts_and_trigger_files_and_prints_each() {
    let spool = Spool::new();
    let old_result = put_result(&spool, W, "old-1", "completed");
    let new_result = put_result(&spool, W, "new-1", "completed");
    let old_receipt = put_file(&spool.triggers(W).join("old-1.trigger"), "{}");
    let new_receipt = put_file(&spool.triggers(W).join("new-1.trigger"), "{}");
    let events = spool.root.join("triggers").join("orchestrator");
    let old_event = put_file(&events.join("task_completed_1700000000000.json"), "{}");
    let dot = put_file(&spool.results(W).join(".staged.json.1.2.tmp"), "{}");
    let old_letter = put_file(&spool.dlq(W).join("x_1700000000.json"), "{}");
    let heartbeat = put_file(&spool.heartbeat_path(W), "{}");
    for p in [
        &old_result,
        &old_receipt,
        &old_event,
        &dot,
        &old_letter,
        &heartbeat,
    ] {
        age_file(p, 3 * DAY);
    }
    let out = run(&spool, "hw-status", &["--prune-older-than", "2d"]);
    assert_exit(&out, 0);
    let mut printed: Vec<String> = stdout(&out).lines().map(String::from).collect();
    printed.sort();
    let mut want: Vec<String> = [&old_result, &old_receipt, &old_event]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    want.sort();
    assert_eq!(printed, want);
    for gone in [&old_result, &old_receipt, &old_event] {
        assert!(!gone.exists(), "{} left", gone.display());
    }
    for kept in [&new_result, &new_receipt, &dot, &old_letter, &heartbeat] {
        assert!(kept.exists(), "{} removed", kept.display());
    }
}

#[test]
fn prune_keeps_a_result_that_a_pending_or_deferred_task_depends_on() {
    let spool = Spool::new();
    let needed = put_result(&spool, "anga", "needed-1", "completed");
    let also = put_result(&spool, "anga", "needed-2", "completed");
    let free = put_result(&spool, "anga", "free-1", "completed");
    for p in [&needed, &also, &free] {
        age_file(p, 3 * DAY);
    }
    spool.drop_task(
        W,
        "a.json",
        &json!({"task_id": "a", "description": "x", "dependencies": ["needed-1"]}),
    );
    write_json(
        &spool.deferred(W).join("b.json"),
        &json!({"task_id": "b", "description": "x", "dependencies": ["needed-2"]}),
    );
    let out = run(&spool, "hw-status", &["--prune-older-than", "1d"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), format!("{}\n", free.display()));
    assert!(needed.exists() && also.exists());
}

#[test]
fn prune_keeps_what_the_listener_has_not_emitted_yet() {
    let spool = Spool::new();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    let emitted = put_result(&spool, W, "seen-1", "completed");
    age_file(&emitted, 3 * DAY);
    // The listener's first run emits it and remembers it.
    let out = listener_command(&spool, &["--once"], &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map(|c| finish(c, b"", "hw-listen --once"))
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("seen-1"), "{}", stdout(&out));
    // Written after the listener ran: not emitted yet.
    let unseen = put_result(&spool, W, "unseen-1", "completed");
    age_file(&unseen, 2 * DAY);
    let out = run(&spool, "hw-status", &["--prune-older-than", "1d"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), format!("{}\n", emitted.display()));
    assert!(unseen.exists());
}

#[test]
fn prune_with_a_listener_state_it_cannot_read_removes_nothing_and_exits_65() {
    let spool = Spool::new();
    let old = put_result(&spool, W, "old-1", "completed");
    age_file(&old, 3 * DAY);
    fs::write(spool.root.join("orchestrator_state.json"), b"[not json").unwrap();
    let out = run(&spool, "hw-status", &["--prune-older-than", "1d"]);
    assert_exit(&out, 65);
    assert!(stdout(&out).is_empty());
    assert!(old.exists());
}

#[test]
fn prune_never_follows_a_results_folder_that_is_a_symlink() {
    let spool = Spool::new();
    let outside = spool.scratch("outside");
    let victim = put_file(&outside.join("precious.json"), "{}");
    age_file(&victim, 30 * DAY);
    fs::create_dir_all(spool.root.join("results")).unwrap();
    std::os::unix::fs::symlink(&outside, spool.results(W)).unwrap();
    let out = run(&spool, "hw-status", &["--prune-older-than", "1d"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(victim.exists(), "removed outside the spool");
}

// ---------------------------------------------------------------------------
// --help, the man pages, the README and the bash completion agree (item 9)

/// The flags a tool's --help lists (`-x` and `--long`).
fn help_flags(tool: &str) -> Vec<String> {
    let out = std::process::Command::new(bin(tool))
        .arg("--help")
        .output()
        .unwrap();
    let mut flags = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let t = line.trim_start();
        if !line.starts_with("  ") || !t.starts_with('-') {
            continue;
        }
        for word in t.split([',', ' ']).filter(|w| w.starts_with('-')) {
            let flag: String = word
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if flag.len() > 1 && flag != "--" {
                flags.push(flag);
            }
        }
    }
    flags
}

#[test]
fn every_flag_of_help_is_in_the_man_page_the_readme_and_the_completion() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(repo.join("README.md")).unwrap();
    let completion = fs::read_to_string(repo.join("contrib/bash-completion/hookwatch")).unwrap();
    for tool in ["hw-enqueue", "hw-dlq", "hw-status"] {
        let man = fs::read_to_string(repo.join(format!("man/{tool}.1"))).unwrap();
        for flag in help_flags(tool) {
            // mdoc writes --tasks as `Fl -tasks`, -q as `Fl q`.
            let mdoc = format!("Fl {}", &flag[1..]);
            assert!(
                man.contains(&format!("{mdoc}\n"))
                    || man.contains(&format!("{mdoc} "))
                    || man.contains(&format!("{mdoc} ,")),
                "{tool}: {flag} is in --help but not in {tool}(1)"
            );
            if flag.starts_with("--") && !matches!(flag.as_str(), "--help" | "--version") {
                assert!(
                    readme.contains(&format!("`{flag}")) || readme.contains(&format!(" {flag}")),
                    "{tool}: {flag} is in --help but not in README.md"
                );
            }
            let offered = completion
                .split(|c: char| c.is_whitespace() || c == '|' || c == ')')
                .any(|w| w == flag);
            assert!(
                offered,
                "{tool}: {flag} is in --help but not in the bash completion"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The worker's own words (items 1, 6, 10)

#[test]
fn an_idle_breaker_turns_half_open_by_time_and_each_change_is_logged() {
    let spool = Spool::new();
    let healthy = spool.scratch("healthy");
    let agent = spool.script(
        "agent.sh",
        &format!("[ -e '{}' ] || exit 1\necho ok", healthy.display()),
    );
    let env = [
        ("CIRCUIT_BREAKER_THRESHOLD", "1"),
        ("CIRCUIT_BREAKER_TIMEOUT", "1"),
        ("MAX_RETRIES", "0"),
    ];
    let mut d = Daemon::worker(&spool, W, &agent, &env);
    spool.drop_simple(W, "bad", "x");
    assert_eq!(spool.wait_result(W, "bad")["status"], "failed");
    d.expect_log("Circuit breaker open after 1 failed attempts in a row: claims nothing until ");
    // No task waits; the breaker is half-open by time all the same.
    let half = wait_until(DEADLINE, || {
        spool
            .heartbeat(W)
            .is_some_and(|b| b["circuit_breaker_state"] == "half_open")
    });
    assert!(
        half,
        "heartbeat: {:?}\n{}",
        spool.heartbeat(W),
        d.log_text()
    );
    d.expect_log("Circuit breaker half-open: the next task probes the agent");
    fs::write(&healthy, b"").unwrap();
    spool.drop_simple(W, "good", "x");
    assert_eq!(spool.wait_result(W, "good")["status"], "completed");
    d.expect_log("Circuit breaker closed: the probe succeeded");
    let closed = wait_until(DEADLINE, || {
        spool
            .heartbeat(W)
            .is_some_and(|b| b["circuit_breaker_state"] == "closed")
    });
    assert!(closed, "heartbeat: {:?}", spool.heartbeat(W));
    d.stop();
}

#[test]
fn a_worker_that_creates_its_spool_root_says_so() {
    let spool = Spool::new();
    let root = spool.root.join("typo");
    let root_arg = root.display().to_string();
    let mut d = Daemon::start(&spool, "hw-worker", &["-r", &root_arg, W], &[]);
    assert!(wait_until(DEADLINE, || root
        .join("heartbeats/marie.json")
        .exists()));
    d.expect_log("Created the spool root");
    d.expect_log("it did not exist (a typo in -r or HW_ROOT?)");
    d.stop();
}

#[test]
fn a_task_waiting_for_dependencies_names_them_in_the_log() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "echo ok");
    let mut d = Daemon::worker(&spool, W, &agent, &[]);
    let task =
        json!({"task_id": "t", "description": "x", "dependencies": ["nowhere-1", "nowhere-2"]});
    spool.drop_task(W, "t.json", &task);
    d.expect_log("Task waits for 2 dependencies with no result yet: nowhere-1, nowhere-2");
    d.stop();
}

#[test]
fn the_first_signal_says_how_long_running_tasks_get_and_that_a_second_stops_them() {
    let spool = Spool::new();
    let (mut d, release) = blocking_worker(&spool);
    spool.drop_simple(W, "busy", "block");
    assert!(wait_until(DEADLINE, || spool
        .active(W)
        .join("busy.json")
        .exists()));
    d.signal(nix::sys::signal::Signal::SIGINT);
    d.expect_log("Shutting down: no new claims; the 1 running task(s) get up to 30 s (--shutdown-timeout), a second signal stops them now");
    fs::write(&release, b"").unwrap();
    assert_exit_zero_status(d.wait_exit(DEADLINE));
}

fn assert_exit_zero_status(status: Option<std::process::ExitStatus>) {
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
}

#[test]
fn a_metrics_port_in_use_suggests_port_0() {
    let spool = Spool::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut d = Daemon::start(&spool, "hw-worker", &[W], &[("METRICS_PORT", &port)]);
    let status = d.wait_exit(DEADLINE);
    assert_eq!(status.and_then(|s| s.code()), Some(69));
    let log = d.log_text();
    assert!(
        log.contains("--metrics-port 0 takes any free port"),
        "{log}"
    );
}

#[test]
fn a_second_listener_names_the_pid_holding_the_state_lock() {
    let spool = Spool::new();
    let mut first = Daemon::spawn(&spool, "listen", listener_command(&spool, &[], &[]));
    let lock = spool.root.join(".orchestrator_state.json.lock");
    let holder = format!("pid {} on ", first.pid());
    assert!(
        wait_until(DEADLINE, || fs::read_to_string(&lock)
            .is_ok_and(|t| t.starts_with(&holder))),
        "lock: {:?}; log:\n{}",
        fs::read_to_string(&lock),
        first.log_text()
    );
    let second = run(&spool, "hw-listen", &["--once"]);
    assert_exit(&second, 75);
    assert!(stderr(&second).contains(&holder), "{}", stderr(&second));
    first.stop();
}
