//! hw-dlq (SPEC sections 2, 4 and 5, hw-dlq(1)): list, show, replay and
//! purge, on records written by hand and by a real hw-worker; the filters,
//! the selection rules (a bare replay or purge acts on nothing), replays
//! that never replace a pending task, purges that stay inside
//! `.rejected/`, every exit status, and the crontab example of the man
//! page.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

const W: &str = "marie";

/// `hw-dlq ARGS` on `spool` (`HW_ROOT` only), with stdout and stderr
/// piped unless `stdout` is given; waits a bounded time.
fn hw_dlq_with(spool: &Spool, args: &[&str], stdout: Option<Stdio>) -> Output {
    let mut cmd = spool_command("hw-dlq", &spool.root, args, &[]);
    if let Some(stdout) = stdout {
        cmd.stdout(stdout);
    }
    let child = cmd.spawn().expect("start hw-dlq");
    finish(child, b"", &format!("hw-dlq {args:?}"))
}

fn hw_dlq(spool: &Spool, args: &[&str]) -> Output {
    hw_dlq_with(spool, args, None)
}

/// `age` seconds ago as RFC 3339.
fn ago(age: u64) -> String {
    rfc3339(SystemTime::now() - Duration::from_secs(age))
}

/// Writes a record by hand: `dlq/<worker>/<file_name>`.
fn put_record(spool: &Spool, worker: &str, file_name: &str, record: &Value) -> PathBuf {
    let dir = spool.dlq(worker);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file_name);
    fs::write(&path, format!("{record}\n")).unwrap();
    path
}

/// The dead letter of a task that failed, `age` seconds ago.
fn task_record(id: &str, reason: &str, last_error: &str, retries: u32, age: u64) -> Value {
    json!({"task_id": id, "description": format!("do {id}"), "priority": "high",
           "metadata": {"batch_id": "b-1"}, "dlq_reason": reason,
           "dlq_timestamp": ago(age), "retry_count": retries,
           "not_before": ago(age + 5), "last_error": last_error})
}

/// Writes the dead letter of task `id`, which failed its only attempt
/// ("x") a minute ago: `dlq/<worker>/<file_name>`.
fn put_failed(spool: &Spool, worker: &str, file_name: &str, id: &str) -> PathBuf {
    let record = task_record(id, "max_retries_exceeded", "x", 0, 60);
    put_record(spool, worker, file_name, &record)
}

/// Writes the dead letters of tasks of W that ran out of retries, one
/// per `(id, last_error, retry_count, age in seconds)`, as `<id>_1.json`.
fn put_failures(spool: &Spool, rows: &[(&str, &str, u32, u64)]) {
    for (id, error, retries, age) in rows {
        let record = task_record(id, "max_retries_exceeded", error, *retries, *age);
        put_record(spool, W, &format!("{id}_1.json"), &record);
    }
}

/// The dead letter of a file that was not JSON.
fn invalid_json_record(name: &str, age: u64) -> Value {
    json!({"dlq_reason": "invalid_json", "dlq_timestamp": ago(age), "retry_count": 0,
           "original_name": name, "original": "{not json",
           "last_error": "key must be a string at line 1 column 2"})
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// The table's rows split into cells (two or more spaces apart).
fn rows(out: &Output) -> Vec<Vec<String>> {
    stdout(out)
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

/// The spool's state that hw-dlq may change: the DLQ folders (with
/// `.rejected/`) and the tasks folders.
fn snapshot(spool: &Spool, workers: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut state = Vec::new();
    for w in workers {
        for dir in [spool.dlq(w), spool.dlq(w).join(".rejected"), spool.tasks(w)] {
            let mut entries = all_names(&dir);
            for e in entries.iter_mut() {
                if let Ok(bytes) = fs::read(dir.join(&*e)) {
                    e.push_str(&format!(" {}", bytes.len()));
                }
            }
            state.push((dir.display().to_string(), entries));
        }
    }
    state
}

/// A worker whose agent fails (`exit status 3: boom`) and whose tasks get
/// no retry; stop it with `stop`.
fn failing_worker(spool: &Spool) -> Daemon {
    let agent = spool.script("fail.sh", "echo boom >&2\nexit 3");
    Daemon::worker(spool, W, &agent, &[("MAX_RETRIES", "0")])
}

/// Real records: a task whose only attempt failed, and a file that is not
/// JSON, dead-lettered by hw-worker.
fn real_records(spool: &Spool) {
    let mut worker = failing_worker(spool);
    spool.drop_simple(W, "boom", "fail please");
    spool.drop_bytes(W, "bad.json", b"{not json");
    spool.wait_dlq(W, 2);
    worker.stop();
}

/// Runs `hw-dlq ARGS`, which must exit `code`, print nothing on stdout
/// and leave the spool's records and tasks of W as they were; an error
/// (any `code` but 0) must be one line on stderr, `hw-dlq: ...`, and a
/// success must print nothing there. Returns stderr.
fn changes_nothing(spool: &Spool, args: &[&str], code: i32) -> String {
    let before = snapshot(spool, &[W]);
    let out = hw_dlq(spool, args);
    assert_exit(&out, code);
    assert_eq!(stdout(&out), "", "{args:?}");
    let err = stderr(&out);
    if code == 0 {
        assert_eq!(err, "", "{args:?}");
    } else {
        let one_line = err.starts_with("hw-dlq: ") && err.lines().count() == 1;
        assert!(one_line, "{args:?}: {err}");
    }
    assert_eq!(snapshot(spool, &[W]), before, "{args:?}");
    err
}

/// A pipe whose ends no other child of this process inherits (the tests
/// run on threads that spawn children at any moment): a read end kept
/// open elsewhere would make a closed stdout look open.
fn cloexec_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn record_named(spool: &Spool, worker: &str, id: &str) -> Vec<PathBuf> {
    json_files(&spool.dlq(worker))
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{id}_"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// list

#[test]
fn list_prints_a_table_sorted_by_worker_then_time() {
    let spool = Spool::new();
    let long = format!("exit status 1: {}\nsecond line", "x".repeat(100));
    for (worker, file, record) in [
        (
            W,
            "late_300.json",
            task_record("late", "max_retries_exceeded", "timeout", 2, 100),
        ),
        (
            W,
            "early_100.json",
            task_record("early", "dependency_failed", "dependency x failed", 0, 3000),
        ),
        (
            "anga",
            "a1_200.json",
            task_record("a1", "max_retries_exceeded", &long, 0, 50),
        ),
        ("anga", "bad_250.json", invalid_json_record("bad.json", 10)),
    ] {
        put_record(&spool, worker, file, &record);
    }

    let out = hw_dlq(&spool, &["list"]);
    assert_exit(&out, 0);
    let rows = rows(&out);
    assert_eq!(
        rows[0],
        ["WORKER", "ID", "REASON", "WHEN", "ATTEMPTS", "ERROR"],
        "{}",
        stdout(&out)
    );
    let summary: Vec<(&str, &str, &str, &str)> = rows[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str(), r[4].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("anga", "a1", "max_retries_exceeded", "1"),
            ("anga", "bad", "invalid_json", "0"),
            ("marie", "early", "dependency_failed", "0"),
            ("marie", "late", "max_retries_exceeded", "3"),
        ],
        "{}",
        stdout(&out)
    );
    // WHEN is dlq_timestamp as stored; ERROR the first line, cut.
    let a1: Value =
        serde_json::from_slice(&fs::read(spool.dlq("anga").join("a1_200.json")).unwrap()).unwrap();
    assert_eq!(rows[1][3], a1["dlq_timestamp"].as_str().unwrap());
    let error = &rows[1][5];
    assert!(error.starts_with("exit status 1: xxx"), "{error}");
    assert!(error.chars().count() <= 60, "{error}");
    assert!(!stdout(&out).contains("second line"));
    assert_eq!(rows[4][5], "timeout");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    // One worker's only.
    let out = hw_dlq(&spool, &["list", W]);
    assert_exit(&out, 0);
    let ids: Vec<String> = rows_of(&out).into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(ids, ["early", "late"]);
}

fn rows_of(out: &Output) -> Vec<Vec<String>> {
    rows(out).into_iter().skip(1).collect()
}

#[test]
fn list_json_prints_each_record_with_worker_and_dlq_file() {
    let spool = Spool::new();
    let record = task_record("t1", "max_retries_exceeded", "exit status 1", 3, 60);
    put_record(&spool, W, "t1_100.json", &record);
    put_record(
        &spool,
        "anga",
        "bad_100.json",
        &invalid_json_record("bad.json", 30),
    );

    let out = hw_dlq(&spool, &["list", "--json"]);
    assert_exit(&out, 0);
    let got = json_lines(&out);
    assert_eq!(got.len(), 2, "{}", stdout(&out));
    let mut expected = record.clone();
    expected["worker"] = json!(W);
    expected["dlq_file"] = json!("t1_100.json");
    assert_eq!(got[1], expected);
    assert_eq!(got[0]["worker"], "anga");
    assert_eq!(got[0]["dlq_file"], "bad_100.json");
    assert_eq!(got[0]["dlq_reason"], "invalid_json");
    assert_eq!(got[0]["original"], "{not json");
    // -j before the command says the same.
    assert_eq!(hw_dlq(&spool, &["-j", "list"]).stdout, out.stdout);
}

#[test]
fn list_without_dead_letters_prints_nothing() {
    let spool = Spool::new();
    let out = hw_dlq(&spool, &["list"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "");
    // A worker without a DLQ folder has no records; not an error.
    let out = hw_dlq(&spool, &["list", "nobody"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "");
}

#[test]
fn records_written_by_a_real_worker_are_listed() {
    let spool = Spool::new();
    real_records(&spool);
    let out = hw_dlq(&spool, &["list", W]);
    assert_exit(&out, 0);
    let mut got: Vec<(String, String, String, String)> = rows_of(&out)
        .into_iter()
        .map(|r| (r[1].clone(), r[2].clone(), r[4].clone(), r[5].clone()))
        .collect();
    got.sort();
    assert_eq!(got.len(), 2, "{}", stdout(&out));
    assert_eq!(got[0].0, "bad");
    assert_eq!(got[0].1, "invalid_json");
    assert_eq!(got[0].2, "0");
    assert_eq!(
        got[1],
        (
            "boom".into(),
            "max_retries_exceeded".into(),
            "1".into(),
            "exit status 3: boom".into()
        )
    );
}

#[test]
fn list_stops_quietly_when_stdout_is_closed() {
    let spool = Spool::new();
    for i in 0..50 {
        put_record(
            &spool,
            W,
            &format!("t{i}_100.json"),
            &task_record(&format!("t{i}"), "max_retries_exceeded", "x", 0, 10),
        );
    }
    let (read, write) = cloexec_pipe();
    drop(read);
    let out = hw_dlq_with(&spool, &["list"], Some(Stdio::from(write)));
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------
// Filters

#[test]
fn reason_selects_by_dlq_reason_or_by_the_start_of_last_error() {
    let spool = Spool::new();
    put_failures(
        &spool,
        &[
            ("to", "timeout", 3, 60),
            ("sp", "spawn_failed: No such file or directory", 3, 50),
            ("ex", "exit status 1: no", 3, 40),
        ],
    );
    let dep = task_record("dep", "dependency_failed", "dependency to failed", 0, 30);
    put_record(&spool, W, "dep_1.json", &dep);
    put_record(
        &spool,
        W,
        "bad_1.json",
        &invalid_json_record("bad.json", 20),
    );

    let ids = |args: &[&str]| -> Vec<String> {
        let out = hw_dlq(&spool, args);
        assert_exit(&out, 0);
        json_lines(&out)
            .iter()
            .map(|r| r["dlq_file"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&["list", "--json", "--reason", "timeout"]),
        ["to_1.json"]
    );
    assert_eq!(
        ids(&["list", "--json", "--reason", "spawn_failed"]),
        ["sp_1.json"]
    );
    assert_eq!(
        ids(&["list", "--json", "--reason", "dependency_failed"]),
        ["dep_1.json"]
    );
    assert_eq!(
        ids(&["list", "--json", "--reason", "invalid_json"]),
        ["bad_1.json"]
    );
    assert_eq!(
        ids(&["list", "--json", "--reason", "max_retries_exceeded"]),
        ["to_1.json", "sp_1.json", "ex_1.json"]
    );
}

#[test]
fn older_than_compares_with_dlq_timestamp_else_the_file_mtime() {
    let spool = Spool::new();
    let day = 86_400;
    put_failures(
        &spool,
        &[
            ("old", "x", 0, 10 * day),
            ("hour", "x", 0, 3600),
            ("new", "x", 0, 5),
        ],
    );
    // No dlq_timestamp: the file's modification time counts.
    let mut untimed = task_record("untimed", "max_retries_exceeded", "x", 0, 0);
    untimed.as_object_mut().unwrap().remove("dlq_timestamp");
    let path = put_record(&spool, W, "untimed_1.json", &untimed);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(9 * day))
        .unwrap();

    let ids = |age: &str| -> Vec<String> {
        let out = hw_dlq(&spool, &["list", "--json", "--older-than", age]);
        assert_exit(&out, 0);
        let mut ids: Vec<String> = json_lines(&out)
            .iter()
            .map(|r| r["task_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids("7d"), ["old", "untimed"]);
    assert_eq!(ids("30m"), ["hour", "old", "untimed"]);
    assert_eq!(ids("2h"), ["old", "untimed"]);
    assert_eq!(ids("60"), ["hour", "old", "untimed"]);
    assert_eq!(ids("0"), ["hour", "new", "old", "untimed"]);
}

#[test]
fn filters_combine_with_and() {
    let spool = Spool::new();
    let day = 86_400;
    put_failures(
        &spool,
        &[
            ("a", "timeout", 0, 10 * day),
            ("b", "timeout", 0, 60),
            ("c", "exit status 2", 0, 10 * day),
        ],
    );
    let out = hw_dlq(
        &spool,
        &[
            "list",
            "--json",
            "--reason",
            "timeout",
            "--older-than",
            "7d",
        ],
    );
    assert_exit(&out, 0);
    let ids: Vec<Value> = json_lines(&out)
        .iter()
        .map(|r| r["task_id"].clone())
        .collect();
    assert_eq!(ids, [json!("a")]);
}

#[test]
fn filters_that_select_nothing_exit_0_and_print_nothing() {
    let spool = Spool::new();
    put_failures(&spool, &[("a", "timeout", 0, 60)]);
    put_record(
        &spool,
        W,
        "bad_1.json",
        &invalid_json_record("bad.json", 60),
    );
    for args in [
        &["list", "--reason", "nothing-like-this"][..],
        &["list", "--json", "--older-than", "100d"],
        &["replay", "--reason", "nothing-like-this"],
        &["replay", "--all", "--older-than", "100d"],
        &["purge", W, "--reason", "nothing-like-this"],
        &["purge", "--all", "--older-than", "100d"],
    ] {
        assert_eq!(changes_nothing(&spool, args, 0), "", "{args:?}");
    }
}

// ---------------------------------------------------------------------------
// show

#[test]
fn show_prints_the_record_as_pretty_json_by_task_id_or_file_name() {
    let spool = Spool::new();
    let record = task_record("t1", "max_retries_exceeded", "timeout", 1, 60);
    put_record(&spool, W, "t1_100.json", &record);
    for id in ["t1", "t1_100.json"] {
        let out = hw_dlq(&spool, &["show", W, id]);
        assert_exit(&out, 0);
        let text = stdout(&out);
        assert_eq!(
            text,
            format!("{}\n", serde_json::to_string_pretty(&record).unwrap()),
            "show {id}"
        );
        assert!(text.lines().count() > 5, "not pretty: {text}");
    }
}

#[test]
fn show_picks_the_newest_record_of_a_task() {
    let spool = Spool::new();
    let mut older = task_record("t1", "max_retries_exceeded", "first", 0, 60);
    older["n"] = json!(1);
    let mut newer = older.clone();
    newer["n"] = json!(2);
    let mut newest = older.clone();
    newest["n"] = json!(3);
    put_record(&spool, W, "t1_1700000000.json", &older);
    put_record(&spool, W, "t1_1800000000.json", &newer);
    put_record(&spool, W, "t1_1800000000-2.json", &newest);
    let show = |id: &str| -> Value {
        let out = hw_dlq(&spool, &["show", W, id]);
        assert_exit(&out, 0);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(show("t1")["n"], 3);
    // A file name picks exactly that one.
    assert_eq!(show("t1_1700000000.json")["n"], 1);
}

#[test]
fn show_of_an_unknown_id_exits_66() {
    let spool = Spool::new();
    put_failed(&spool, W, "t1_100.json", "t1");
    for args in [&["show", W, "nope"][..], &["show", "anga", "t1"]] {
        let err = changes_nothing(&spool, args, 66);
        assert!(err.contains(args[2]), "{err}");
    }
}

// ---------------------------------------------------------------------------
// replay

#[test]
fn replay_puts_the_task_back_to_pending_with_attempts_reset() {
    let spool = Spool::new();
    let record = task_record("t1", "max_retries_exceeded", "timeout", 3, 60);
    let path = put_record(&spool, W, "t1_100.json", &record);
    put_record(
        &spool,
        W,
        "t2_100.json",
        &task_record("t2", "max_retries_exceeded", "x", 3, 60),
    );

    let out = hw_dlq(&spool, &["replay", W, "t1"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "marie t1\n");
    assert!(!path.exists(), "the record is removed");
    assert_eq!(spool.dlq_records(W).len(), 1, "the other record stays");

    let task = read_json(&spool.tasks(W).join("t1.json")).expect("tasks/marie/t1.json");
    for gone in [
        "retry_count",
        "dlq_reason",
        "dlq_timestamp",
        "last_error",
        "not_before",
    ] {
        assert!(task.get(gone).is_none(), "{gone} still in {task}");
    }
    for kept in ["task_id", "description", "priority", "metadata"] {
        assert_eq!(task[kept], record[kept], "{kept}");
    }
    assert_eq!(task["replay_count"], 1);
    let at = task["replayed_at"].as_str().expect("replayed_at");
    let secs = parse_rfc3339(at).expect("RFC 3339");
    assert!((unix_now() - secs).abs() < 60.0, "{at}");
    assert!(at.ends_with('Z'));
    // Published as producers must: no staging file left behind.
    assert_eq!(all_names(&spool.tasks(W)), ["t1.json"]);
}

#[test]
fn a_second_replay_counts_two() {
    let spool = Spool::new();
    put_record(
        &spool,
        W,
        "t1_100.json",
        &task_record("t1", "max_retries_exceeded", "x", 3, 60),
    );
    assert_exit(&hw_dlq(&spool, &["replay", W, "t1"]), 0);
    // The task fails again: its dead letter is the replayed task plus the
    // dead letter's fields, as the worker writes it.
    let pending = spool.tasks(W).join("t1.json");
    let mut again = read_json(&pending).unwrap();
    fs::remove_file(&pending).unwrap();
    again["dlq_reason"] = json!("max_retries_exceeded");
    again["dlq_timestamp"] = json!(ago(1));
    again["retry_count"] = json!(3);
    again["last_error"] = json!("timeout");
    put_record(&spool, W, "t1_200.json", &again);

    let out = hw_dlq(&spool, &["--json", "replay", W, "t1_200.json"]);
    assert_exit(&out, 0);
    assert_eq!(
        json_lines(&out),
        [json!({"worker": W, "task_id": "t1", "dlq_file": "t1_200.json"})]
    );
    let task = read_json(&pending).unwrap();
    assert_eq!(task["replay_count"], 2);
    assert!(spool.dlq_records(W).is_empty());
}

#[test]
fn a_replayed_task_runs_and_completes_while_the_worker_runs() {
    let spool = Spool::new();
    let flag = spool.scratch("failing");
    fs::write(&flag, "").unwrap();
    let agent = spool.script(
        "flaky.sh",
        &format!(
            "if [ -e '{}' ]; then echo still failing >&2; exit 1; fi\necho done",
            flag.display()
        ),
    );
    let mut worker = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    spool.drop_simple(W, "job", "try me");
    let failed = spool.wait_result(W, "job");
    assert_eq!(failed["status"], "failed");
    spool.wait_dlq(W, 1);
    // The worker writes the dead letter, then lets go of the claimed file;
    // until then the task is still active and a replay is refused.
    let released = wait_until(DEADLINE, || spool.names(&spool.active(W)).is_empty());
    assert!(released, "the failed task stays in .active/");

    fs::remove_file(&flag).unwrap();
    let out = hw_dlq(&spool, &["replay", W, "job"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "marie job\n");
    let completed = wait_until(DEADLINE, || {
        spool
            .result(W, "job")
            .is_some_and(|r| r["status"] == "completed")
    });
    assert!(
        completed,
        "the replayed task did not complete; log:\n{}",
        worker.log_text()
    );
    assert!(spool.dlq_records(W).is_empty(), "no new dead letter");
    worker.stop();
}

#[test]
fn replay_never_replaces_a_pending_task() {
    let spool = Spool::new();
    let path = put_failed(&spool, W, "t1_100.json", "t1");
    put_record(
        &spool,
        W,
        "t2_100.json",
        &task_record("t2", "max_retries_exceeded", "x", 0, 50),
    );
    let pending = spool.tasks(W).join("t1.json");
    fs::create_dir_all(spool.tasks(W)).unwrap();
    fs::write(
        &pending,
        "{\"task_id\":\"t1\",\"description\":\"the new one\"}\n",
    )
    .unwrap();

    let out = hw_dlq(&spool, &["replay", W, "--all"]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "marie t2\n", "the other record is replayed");
    let err = stderr(&out);
    assert!(err.contains("t1") && err.contains("pending"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(path.exists(), "the refused record is kept");
    assert_eq!(
        fs::read_to_string(&pending).unwrap(),
        "{\"task_id\":\"t1\",\"description\":\"the new one\"}\n"
    );
    assert_eq!(all_names(&spool.tasks(W)), ["t1.json", "t2.json"]);
}

#[test]
fn replay_skips_a_bad_entry_record_and_keeps_it() {
    let spool = Spool::new();
    real_records(&spool);
    let bad = record_named(&spool, W, "bad");
    assert_eq!(bad.len(), 1);
    let name = bad[0].file_name().unwrap().to_string_lossy().into_owned();
    fs::remove_dir_all(spool.tasks(W)).unwrap();

    // Named, and within --all (which replays the rest).
    let out = hw_dlq(&spool, &["replay", W, &name]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(err.contains(&name) && err.contains("invalid_json"), "{err}");
    assert_eq!(err.lines().count(), 1);
    assert!(bad[0].exists());
    assert!(all_names(&spool.tasks(W)).is_empty());

    let out = hw_dlq(&spool, &["replay", "--all"]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "marie boom\n");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(bad[0].exists());
    assert_eq!(all_names(&spool.tasks(W)), ["boom.json"]);
}

#[test]
fn replay_or_purge_of_an_unknown_id_exits_66_and_changes_nothing() {
    let spool = Spool::new();
    put_failed(&spool, W, "t1_100.json", "t1");
    for action in ["replay", "purge"] {
        let err = changes_nothing(&spool, &[action, W, "t1", "nope"], 66);
        assert!(err.contains("nope"), "{action}: {err}");
    }
}

#[test]
fn bare_replay_and_purge_are_usage_errors_and_change_nothing() {
    let spool = Spool::new();
    put_failed(&spool, W, "t1_100.json", "t1");
    put_record(
        &spool,
        W,
        "bad_100.json",
        &invalid_json_record("bad.json", 60),
    );
    for args in [
        &["replay"][..],
        &["replay", W],
        &["purge"],
        &["purge", W],
        &["purge", W, "t1", "--all"],
        &[],
        &["frobnicate"],
        &["list", "--all"],
        &["show", W],
        &["show", W, "t1", "--reason", "x"],
    ] {
        changes_nothing(&spool, args, 64);
    }
}

#[test]
fn replay_all_replays_the_newest_of_several_records_of_a_task() {
    let spool = Spool::new();
    let mut older = task_record("t1", "max_retries_exceeded", "x", 0, 600);
    older["n"] = json!(1);
    let mut newer = older.clone();
    newer["n"] = json!(2);
    let old = put_record(&spool, W, "t1_1700000000.json", &older);
    put_record(&spool, W, "t1_1800000000.json", &newer);

    let out = hw_dlq(&spool, &["replay", "--all"]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "marie t1\n");
    let err = stderr(&out);
    assert!(
        err.contains("t1_1700000000.json") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(read_json(&spool.tasks(W).join("t1.json")).unwrap()["n"], 2);
    assert!(old.exists(), "the older record is kept");
    assert_eq!(spool.dlq_records(W).len(), 1);
}

#[test]
fn replay_goes_on_when_stdout_is_closed() {
    let spool = Spool::new();
    for id in ["a", "b", "c"] {
        put_failed(&spool, W, &format!("{id}_1.json"), id);
    }
    let (read, write) = cloexec_pipe();
    drop(read);
    let out = hw_dlq_with(&spool, &["replay", "--all"], Some(Stdio::from(write)));
    assert_exit(&out, 0);
    assert_eq!(all_names(&spool.tasks(W)), ["a.json", "b.json", "c.json"]);
    assert!(spool.dlq_records(W).is_empty());
}

// ---------------------------------------------------------------------------
// purge

#[test]
fn purge_removes_only_the_selected_records_and_their_rejected_entries() {
    let spool = Spool::new();
    let rejected = spool.dlq(W).join(".rejected");
    fs::create_dir_all(rejected.join("dir.json/inside")).unwrap();
    fs::write(rejected.join("dir.json/inside/f"), "x").unwrap();
    fs::write(rejected.join("big.json"), "x".repeat(1000)).unwrap();
    fs::write(rejected.join("keep.json"), "x").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", rejected.join("link.json")).unwrap();
    // The records of the entries moved aside.
    for (stem, reason) in [
        ("dir", "not_a_regular_file"),
        ("big", "task_too_large"),
        ("link", "not_a_regular_file"),
        ("keep", "task_too_large"),
    ] {
        let record = json!({"dlq_reason": reason, "dlq_timestamp": ago(60), "retry_count": 0,
               "original_name": format!("{stem}.json"), "last_error": "moved aside",
               "rejected_path": format!(".rejected/{stem}.json")});
        put_record(&spool, W, &format!("{stem}_1.json"), &record);
    }
    put_failed(&spool, W, "t1_1.json", "t1");
    put_failed(&spool, W, "t2_1.json", "t2");
    put_failed(&spool, "anga", "t1_1.json", "t1");

    let out = hw_dlq(&spool, &["purge", W, "dir", "big_1.json", "link", "t1"]);
    assert_exit(&out, 0);
    let mut printed = lines(&stdout(&out))
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    printed.sort();
    assert_eq!(
        printed,
        [
            "marie big_1.json",
            "marie dir_1.json",
            "marie link_1.json",
            "marie t1_1.json"
        ]
    );
    assert_eq!(
        all_names(&spool.dlq(W)),
        [".rejected", "keep_1.json", "t2_1.json"]
    );
    assert_eq!(all_names(&rejected), ["keep.json"]);
    assert!(
        Path::new("/etc/hostname").exists(),
        "a symlink is removed, not followed"
    );
    assert_eq!(
        all_names(&spool.dlq("anga")),
        ["t1_1.json"],
        "another worker's is kept"
    );
}

#[test]
fn purge_all_of_a_worker_leaves_the_other_workers() {
    let spool = Spool::new();
    put_failed(&spool, W, "t1_1.json", "t1");
    put_record(
        &spool,
        W,
        "bad_1.json",
        &invalid_json_record("bad.json", 60),
    );
    put_failed(&spool, "anga", "t1_1.json", "t1");
    let out = hw_dlq(&spool, &["--json", "purge", "--all", W]);
    assert_exit(&out, 0);
    let mut files: Vec<Value> = json_lines(&out)
        .iter()
        .map(|l| l["dlq_file"].clone())
        .collect();
    files.sort_by_key(|f| f.to_string());
    assert_eq!(files, [json!("bad_1.json"), json!("t1_1.json")]);
    assert!(spool.dlq_records(W).is_empty());
    assert_eq!(spool.dlq_records("anga").len(), 1);
}

#[test]
fn purge_refuses_a_rejected_path_outside_rejected() {
    let spool = Spool::new();
    let victim = spool.dlq(W).join("victim.txt");
    let record = put_record(
        &spool,
        W,
        "evil_1.json",
        &json!({"dlq_reason": "not_a_regular_file", "dlq_timestamp": ago(60),
                "retry_count": 0, "rejected_path": ".rejected/../victim.txt"}),
    );
    fs::write(&victim, "precious").unwrap();
    let out = hw_dlq(&spool, &["purge", W, "evil"]);
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("rejected_path"), "{}", stderr(&out));
    assert!(victim.exists(), "nothing outside .rejected/ is removed");
    assert!(record.exists(), "the record is kept");
}

// ---------------------------------------------------------------------------
// Bad values, usage, help

#[test]
fn older_than_abc_is_a_bad_value() {
    let spool = Spool::new();
    put_failed(&spool, W, "t1_1.json", "t1");
    for action in ["list", "replay", "purge"] {
        let err = changes_nothing(&spool, &[action, "--older-than", "abc"], 78);
        assert!(err.contains("--older-than") && err.contains("abc"), "{err}");
    }
}

#[test]
fn an_invalid_worker_name_is_a_usage_error() {
    let spool = Spool::new();
    put_failed(&spool, W, "t1_1.json", "t1");
    for args in [
        &["list", "../marie"][..],
        &["show", "a/b", "t1"],
        &["replay", ".hidden", "--all"],
        &["purge", "orchestrator", "--all"],
    ] {
        let err = changes_nothing(&spool, args, 64);
        assert!(err.contains("invalid worker name"), "{err}");
    }
}

#[test]
fn help_and_version_print_on_stdout() {
    let spool = Spool::new();
    for args in [&["--help"][..], &["-h"], &["replay", "--help"]] {
        let out = hw_dlq(&spool, args);
        assert_exit(&out, 0);
        let text = stdout(&out);
        assert!(text.starts_with("Usage: hw-dlq"), "{text}");
        for word in [
            "list",
            "show",
            "replay",
            "purge",
            "--older-than",
            "--reason",
            "--all",
        ] {
            assert!(text.contains(word), "{word} missing from --help");
        }
    }
    for args in [&["--version"][..], &["-V"]] {
        let out = hw_dlq(&spool, args);
        assert_exit(&out, 0);
        assert_eq!(
            stdout(&out).lines().next(),
            Some(format!("hw-dlq {}", env!("CARGO_PKG_VERSION")).as_str())
        );
    }
}

// ---------------------------------------------------------------------------
// The man page's crontab example

#[test]
fn the_nightly_crontab_line_replays_only_timeouts() {
    let spool = Spool::new();
    let agent = spool.script(
        "slow-or-failing.sh",
        "case \"$HW_TASK_ID\" in slow) exec sleep 30;; esac\necho nope >&2\nexit 2",
    );
    let mut worker = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    spool.drop_task(
        W,
        "slow.json",
        &json!({"task_id": "slow", "description": "too slow", "timeout": 0.3}),
    );
    spool.drop_simple(W, "broken", "fails at once");
    let records = spool.wait_dlq(W, 2);
    worker.stop();
    let errors: Vec<&str> = records
        .iter()
        .map(|r| r["last_error"].as_str().unwrap())
        .collect();
    assert!(errors.contains(&"timeout"), "{errors:?}");

    // 0 3 * * * hw-dlq replay --all --reason timeout
    let out = hw_dlq(&spool, &["replay", "--all", "--reason", "timeout"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "marie slow\n");
    assert_eq!(
        all_names(&spool.tasks(W))
            .iter()
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>(),
        ["slow.json"]
    );
    let left = spool.dlq_records(W);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["task_id"], "broken");
}
