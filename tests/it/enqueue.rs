//! hw-enqueue (SPEC sections 1, 4 and 5): tasks written atomically from
//! the arguments, from lines of standard input and from `--json` lines;
//! generated ids that are unique and sort by time; the refusal of an id
//! that exists anywhere for the worker, also between racing enqueuers;
//! bad input, bad options and their exit statuses; `--wait` against a real
//! hw-worker; and the pipelines of the README's "Use from the shell".

use crate::common::*;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const W: &str = "marie";

// ---------------------------------------------------------------------------
// Running hw-enqueue.

/// `hw-enqueue ARGS` on `spool` plus `env`; every pipe piped.
fn command(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = spool_command("hw-enqueue", &spool.root, args, env);
    cmd.stdin(Stdio::piped());
    cmd
}

/// `hw-enqueue ARGS` with `input` on standard input.
fn enqueue_env(spool: &Spool, args: &[&str], input: &[u8], env: &[(&str, &str)]) -> Output {
    let child = command(spool, args, env).spawn().expect("start hw-enqueue");
    finish(child, input, &format!("hw-enqueue {args:?}"))
}

fn enqueue_input(spool: &Spool, args: &[&str], input: &[u8]) -> Output {
    enqueue_env(spool, args, input, &[])
}

/// `hw-enqueue ARGS` with an empty standard input.
fn enqueue(spool: &Spool, args: &[&str]) -> Output {
    enqueue_input(spool, args, b"")
}

/// The lines of stdout: the printed ids.
fn printed(out: &Output) -> Vec<String> {
    stdout(out).lines().map(String::from).collect()
}

/// The lines of stdout as JSON records (with `--wait`).
fn records(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

// ---------------------------------------------------------------------------
// Looking at the spool.

/// A generated id: `<unix ms, 13 digits>-<8 hex>-<counter>`.
fn is_generated_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 13
        && parts[0].bytes().all(|c| c.is_ascii_digit())
        && parts[1].len() == 8
        && parts[1]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        && parts[2].len() >= 4
        && parts[2].bytes().all(|c| c.is_ascii_digit())
}

/// The ids of the pending task files of `worker`, sorted.
fn pending_ids(spool: &Spool, worker: &str) -> Vec<String> {
    spool
        .names(&spool.tasks(worker))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".json").map(String::from))
        .collect()
}

fn task(spool: &Spool, id: &str) -> Value {
    let path = spool.tasks(W).join(format!("{id}.json"));
    read_json(&path).unwrap_or_else(|| panic!("no task file {}", path.display()))
}

/// Dot-files (staging files) in a folder.
fn dot_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_no_dot_files(spool: &Spool, worker: &str) {
    let left = dot_files(&spool.tasks(worker));
    assert!(left.is_empty(), "staging files left behind: {left:?}");
}

/// Everything under `dir`, folders included, relative to it.
fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            all.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    all.sort();
    all
}

fn assert_nothing_written(spool: &Spool, what: &str) {
    let found = entries_under(&spool.root);
    assert!(found.is_empty(), "{what}: written anyway: {found:?}");
}

/// Now, in milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn id_ms(id: &str) -> u64 {
    id[..13].parse().unwrap()
}

/// `n` descriptions, one per line.
fn lines(n: usize, prefix: &str) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{prefix} {i}\n"))
        .collect::<String>()
        .into_bytes()
}

// ---------------------------------------------------------------------------
// Workers for --wait.

/// Waits for the worker's first heartbeat: its watch and start-up scan are done.
fn wait_ready(spool: &Spool, worker: &str, daemon: &Daemon) {
    let ok = wait_until(DEADLINE, || spool.heartbeat(worker).is_some());
    assert!(
        ok,
        "no heartbeat from {worker} within {DEADLINE:?}; log:\n{}",
        daemon.log_text()
    );
}

/// An agent that prints `done: DESCRIPTION`, and fails (exit 1) for a
/// description holding "fail".
fn agent(spool: &Spool) -> PathBuf {
    spool.script(
        "agent.sh",
        r#"case "$desc" in *fail*) echo "it broke" >&2; exit 1;; esac; echo "done: $desc""#,
    )
}

/// A running worker `name` with `agent`, no retries, ready.
fn worker(spool: &Spool, name: &str, agent: &Path) -> Daemon {
    let d = Daemon::worker(spool, name, agent, &[("MAX_RETRIES", "0")]);
    wait_ready(spool, name, &d);
    d
}

// ---------------------------------------------------------------------------
// The task from the arguments.

#[test]
fn prints_the_generated_id_of_a_task_written_from_the_arguments() {
    let spool = Spool::new();
    let out = enqueue(&spool, &[W, "Draft", "the weekly report"]);
    assert_exit(&out, 0);
    let ids = printed(&out);
    assert_eq!(ids.len(), 1, "stdout: {:?}", stdout(&out));
    assert!(is_generated_id(&ids[0]), "not a generated id: {:?}", ids[0]);
    assert_eq!(pending_ids(&spool, W), ids);
    let t = task(&spool, &ids[0]);
    assert_eq!(t["task_id"], ids[0].as_str());
    assert_eq!(t["worker"], W);
    assert_eq!(t["description"], "Draft the weekly report");
    assert_no_dot_files(&spool, W);
}

#[test]
fn the_id_given_with_id_names_the_task() {
    let spool = Spool::new();
    let out = enqueue(&spool, &["--id", "report-1", W, "Draft the report"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "report-1\n");
    assert_eq!(task(&spool, "report-1")["task_id"], "report-1");
    assert_eq!(pending_ids(&spool, W), ["report-1"]);
}

#[test]
fn options_fill_priority_dependencies_metadata_and_batch_id() {
    let spool = Spool::new();
    let args = [
        "--priority",
        "high",
        "--depends-on",
        "collect-1",
        "-d",
        "collect-2",
        "--meta",
        "owner=ops",
        "-m",
        "query=a=b",
        "--batch-id",
        "w48",
        W,
        "Summarise",
    ];
    let out = enqueue(&spool, &args);
    assert_exit(&out, 0);
    let t = task(&spool, &printed(&out)[0]);
    assert_eq!(t["priority"], "high");
    assert_eq!(t["dependencies"], json!(["collect-1", "collect-2"]));
    assert_eq!(
        t["metadata"],
        json!({"owner": "ops", "query": "a=b", "batch_id": "w48"})
    );
}

#[test]
fn durations_are_stored_in_seconds() {
    let spool = Spool::new();
    for (given, stored) in [
        ("10m", json!(600)),
        ("90", json!(90)),
        ("1.5", json!(1.5)),
        ("2h", json!(7200)),
        ("1d", json!(86400)),
        ("45s", json!(45)),
    ] {
        let out = enqueue(&spool, &["--timeout", given, W, "timed"]);
        assert_exit(&out, 0);
        let t = task(&spool, &printed(&out)[0]);
        assert_eq!(t["timeout"], stored, "--timeout {given}");
    }
}

#[test]
fn count_makes_n_copies_with_distinct_ids() {
    let spool = Spool::new();
    let out = enqueue(&spool, &["--count", "5", W, "the same thing"]);
    assert_exit(&out, 0);
    let ids = printed(&out);
    assert_eq!(ids.len(), 5);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5, "{ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(pending_ids(&spool, W), sorted);
    for id in &ids {
        assert_eq!(task(&spool, id)["description"], "the same thing");
    }
}

// ---------------------------------------------------------------------------
// Refusals before anything is written.

/// Runs `hw-enqueue ARGS` on a new spool: it must exit `code` with one
/// `hw-enqueue: ...` line on stderr, print nothing and write nothing.
/// Returns stderr.
fn refused(args: &[&str], code: i32) -> String {
    let spool = Spool::new();
    let out = enqueue(&spool, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "{args:?}: stdout {:?}",
        stdout(&out)
    );
    let err = stderr(&out);
    let one_line = err.starts_with("hw-enqueue: ") && err.lines().count() == 1;
    assert!(one_line, "{args:?}: stderr {err:?}");
    assert_nothing_written(&spool, &format!("{args:?}"));
    err
}

#[test]
fn count_with_id_is_a_usage_error_and_writes_nothing() {
    let err = refused(&["--count", "2", "--id", "x", W, "twice"], 64);
    assert!(err.contains("--count"), "stderr: {err}");
}

#[test]
fn bad_worker_names_exit_64_and_write_nothing() {
    let long = "a".repeat(129);
    for name in [
        "../x",
        "a/b",
        ".hidden",
        "-dash",
        "",
        "sp ace",
        "orchestrator",
        long.as_str(),
    ] {
        refused(&[name, "a description"], 64);
    }
}

#[test]
fn bad_ids_exit_65_and_write_nothing() {
    let long = "i".repeat(129);
    for args in [
        ["--id", "a b"],
        ["--id", "../x"],
        ["--id", ".hidden"],
        ["--id", ""],
        ["--id", long.as_str()],
        ["--depends-on", "x/y"],
        ["--depends-on", "-x"],
    ] {
        refused(&[args[0], args[1], W, "a description"], 65);
    }
}

#[test]
fn bad_option_values_exit_78_naming_the_flag_and_write_nothing() {
    for (flag, value) in [
        ("--priority", "urgent"),
        ("--timeout", "abc"),
        ("--timeout", "0"),
        ("--timeout", "-5"),
        ("--meta", "novalue"),
        ("--meta", "=value"),
        ("--count", "0"),
        ("--count", "many"),
        ("--wait-timeout", "soon"),
    ] {
        let mut args = vec![flag, value, W, "a description"];
        if flag == "--wait-timeout" {
            args.insert(0, "--wait");
        }
        let err = refused(&args, 78);
        assert!(err.contains(flag), "{flag} {value}: stderr {err:?}");
    }
}

#[test]
fn usage_errors_exit_64_and_write_nothing() {
    for args in [
        &[][..],
        &["--no-such-flag", W, "x"],
        &["--id"],
        &["--count", "3", W],
        &["--json", W, "a description"],
        &["--wait-timeout", "5", W, "a description"],
        &["--json", "--id", "x1", W],
    ] {
        refused(args, 64);
    }
}

#[test]
fn help_and_version_go_to_stdout_with_exit_0() {
    let spool = Spool::new();
    let help = enqueue(&spool, &["--help"]);
    assert_exit(&help, 0);
    assert!(
        stdout(&help).starts_with("Usage: hw-enqueue"),
        "{}",
        stdout(&help)
    );
    let version = enqueue(&spool, &["--version"]);
    assert_exit(&version, 0);
    assert_eq!(
        stdout(&version).lines().next(),
        Some(format!("hw-enqueue {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_nothing_written(&spool, "--help, --version");
}

// ---------------------------------------------------------------------------
// Descriptions from standard input.

#[test]
fn reads_one_description_per_line_skipping_empty_lines() {
    let spool = Spool::new();
    let out = enqueue_input(&spool, &[W], b"first\n\n   \nsecond one\r\n\nthird");
    assert_exit(&out, 0);
    let ids = printed(&out);
    assert_eq!(ids.len(), 3, "stdout: {:?}", stdout(&out));
    let descriptions: Vec<Value> = ids
        .iter()
        .map(|i| task(&spool, i)["description"].clone())
        .collect();
    assert_eq!(
        descriptions,
        [json!("first"), json!("second one"), json!("third")]
    );
    assert_eq!(pending_ids(&spool, W).len(), 3);
    assert_no_dot_files(&spool, W);
}

#[test]
fn empty_input_enqueues_nothing_and_exits_0() {
    let spool = Spool::new();
    let out = enqueue_input(&spool, &[W], b"\n\n");
    assert_exit(&out, 0);
    assert!(stdout(&out).is_empty(), "stdout: {:?}", stdout(&out));
    assert!(pending_ids(&spool, W).is_empty());
}

#[test]
fn ten_thousand_ids_from_stdin_are_distinct_valid_and_printed_sorted() {
    let spool = Spool::new();
    let out = enqueue_input(&spool, &[W], &lines(10_000, "task"));
    assert_exit(&out, 0);
    let ids = printed(&out);
    assert_eq!(ids.len(), 10_000);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10_000);
    for id in &ids {
        assert!(is_valid_name(id), "not a valid task id: {id:?}");
        assert!(is_generated_id(id), "not a generated id: {id:?}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert!(sorted == ids, "the printed ids are not in sorted order");
    assert_eq!(
        pending_ids(&spool, W),
        sorted,
        "files and printed ids differ"
    );
    // Printed in the order of the lines.
    assert_eq!(task(&spool, &ids[0])["description"], "task 0");
    assert_eq!(task(&spool, &ids[9_999])["description"], "task 9999");
    assert_no_dot_files(&spool, W);
}

#[test]
fn ids_from_concurrent_enqueuers_are_distinct() {
    let spool = Spool::new();
    let mut children: Vec<Child> = (0..4)
        .map(|_| {
            command(&spool, &[W], &[])
                .spawn()
                .expect("start hw-enqueue")
        })
        .collect();
    // Every input is fed at once, so the four make their ids together.
    let feeders: Vec<_> = children
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            let mut stdin = c.stdin.take().unwrap();
            let input = lines(500, &format!("from {i}"));
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            })
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| finish(c, b"", "hw-enqueue"))
        .collect();
    for f in feeders {
        f.join().unwrap();
    }
    let mut all = BTreeSet::new();
    for out in &outs {
        assert_exit(out, 0);
        let ids = printed(out);
        assert_eq!(ids.len(), 500);
        all.extend(ids);
    }
    assert_eq!(all.len(), 2000, "ids repeated across processes");
    assert_eq!(pending_ids(&spool, W).len(), 2000);
}

#[test]
fn generated_ids_begin_with_the_time_in_milliseconds() {
    let spool = Spool::new();
    let before = now_ms();
    let out = enqueue_input(&spool, &[W], &lines(100, "t"));
    let after = now_ms();
    assert_exit(&out, 0);
    for id in printed(&out) {
        let ms = id_ms(&id);
        assert!(
            (before..=after).contains(&ms),
            "{id}: {ms} not within {before}..={after}"
        );
    }
}

#[test]
fn ids_of_a_later_run_sort_after_those_of_an_earlier_run() {
    let spool = Spool::new();
    let first = enqueue_input(&spool, &[W], &lines(100, "first"));
    assert_exit(&first, 0);
    let first = printed(&first);
    let last_ms = first.iter().map(|i| id_ms(i)).max().unwrap();
    // The next run starts in a later millisecond.
    assert!(wait_until(DEADLINE, || now_ms() > last_ms));
    let second = enqueue_input(&spool, &[W], &lines(100, "second"));
    assert_exit(&second, 0);
    let second = printed(&second);
    let newest_first = first.iter().max().unwrap();
    let oldest_second = second.iter().min().unwrap();
    assert!(
        oldest_second > newest_first,
        "{oldest_second} sorts before {newest_first}"
    );
}

#[test]
fn a_pause_in_the_input_publishes_what_was_read() {
    let spool = Spool::new();
    let mut child = command(&spool, &[W], &[])
        .spawn()
        .expect("start hw-enqueue");
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    stdin.write_all(b"early one\nearly two\n").unwrap();
    stdin.flush().unwrap();
    // Input still open: the two tasks are published and their ids printed.
    let a = rx
        .recv_timeout(DEADLINE)
        .expect("no id printed while input paused");
    let b = rx.recv_timeout(DEADLINE).expect("second id not printed");
    assert_eq!(task(&spool, &a)["description"], "early one");
    assert_eq!(task(&spool, &b)["description"], "early two");
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before its input ended"
    );
    stdin.write_all(b"late\n").unwrap();
    drop(stdin);
    let c = rx.recv_timeout(DEADLINE).expect("no id for the last line");
    assert_eq!(task(&spool, &c)["description"], "late");
    let out = finish(child, b"", "hw-enqueue");
    assert_exit(&out, 0);
    reader.join().unwrap();
    assert_eq!(pending_ids(&spool, W).len(), 3);
}

#[test]
fn a_closed_stdout_does_not_stop_the_enqueuing() {
    let spool = Spool::new();
    let mut child = command(&spool, &["--count", "3000", W, "many"], &[])
        .spawn()
        .expect("start hw-enqueue");
    drop(child.stdin.take());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone, as after `| head -n 1`.
    assert!(is_generated_id(first.trim_end()), "{first:?}");
    let out = finish(child, b"", "hw-enqueue --count 3000");
    assert_exit(&out, 0);
    assert_eq!(pending_ids(&spool, W).len(), 3000);
    assert_no_dot_files(&spool, W);
}

// ---------------------------------------------------------------------------
// --json input.

#[test]
fn json_lines_become_tasks_keeping_their_fields_and_filling_the_rest() {
    let spool = Spool::new();
    let input = concat!(
        r#"{"task_id":"j1","description":"one","priority":"high","metadata":{"k":1},"custom":[1,2]}"#,
        "\n",
        r#"{"task_id":"j2","description":"two","worker":"marie"}"#,
        "\n"
    );
    let args = ["--json", "--priority", "low", "--batch-id", "b9", W];
    let out = enqueue_input(&spool, &args, input.as_bytes());
    assert_exit(&out, 0);
    assert_eq!(printed(&out), ["j1", "j2"]);
    let j1 = task(&spool, "j1");
    assert_eq!(j1["priority"], "high", "the line's own priority wins");
    assert_eq!(j1["custom"], json!([1, 2]), "unknown fields are kept");
    assert_eq!(j1["metadata"], json!({"k": 1, "batch_id": "b9"}));
    assert_eq!(j1["worker"], W);
    let j2 = task(&spool, "j2");
    assert_eq!(j2["priority"], "low");
    assert_eq!(j2["metadata"], json!({"batch_id": "b9"}));
}

#[test]
fn a_json_line_without_task_id_gets_a_generated_one() {
    let spool = Spool::new();
    let out = enqueue_input(&spool, &["--json", W], br#"{"description":"no id"}"#);
    assert_exit(&out, 0);
    let ids = printed(&out);
    assert_eq!(ids.len(), 1);
    assert!(is_generated_id(&ids[0]), "{:?}", ids[0]);
    let t = task(&spool, &ids[0]);
    assert_eq!(t["task_id"], ids[0].as_str());
    assert_eq!(t["description"], "no id");
}

#[test]
fn a_json_line_naming_another_worker_exits_65() {
    let spool = Spool::new();
    let input = br#"{"task_id":"x","description":"for anga","worker":"anga"}"#;
    let out = enqueue_input(&spool, &["--json", W], input);
    assert_exit(&out, 65);
    assert!(stderr(&out).contains("line 1"), "stderr: {}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(pending_ids(&spool, W).is_empty());
    assert!(!spool.tasks("anga").exists(), "wrote into anga's folder");
    assert_no_dot_files(&spool, W);
}

#[test]
fn json_lines_are_validated_as_the_worker_validates_them() {
    for line in [
        "not json",
        "[1,2]",
        r#""a string""#,
        r#"{"task_id":"x"}"#,
        r#"{"task_id":"x","description":""}"#,
        r#"{"task_id":"x","description":7}"#,
        r#"{"task_id":"a/b","description":"d"}"#,
        r#"{"task_id":7,"description":"d"}"#,
        r#"{"task_id":"x","description":"d","priority":"urgent"}"#,
        r#"{"task_id":"x","description":"d","timeout":0}"#,
        r#"{"task_id":"x","description":"d","timeout":"10m"}"#,
        r#"{"task_id":"x","description":"d","dependencies":"y"}"#,
        r#"{"task_id":"x","description":"d","dependencies":["../y"]}"#,
        r#"{"task_id":"x","description":"d","metadata":"m"}"#,
        r#"{"task_id":"x","description":"d","worker":5}"#,
    ] {
        let spool = Spool::new();
        let out = enqueue_input(&spool, &["--json", W], line.as_bytes());
        assert_exit(&out, 65);
        assert!(
            stderr(&out).contains("line 1"),
            "{line}: stderr {:?}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{line}: stdout {:?}", stdout(&out));
        assert!(pending_ids(&spool, W).is_empty(), "{line}: enqueued");
        assert_no_dot_files(&spool, W);
    }
}

#[test]
fn a_bad_json_line_exits_65_naming_it_after_enqueuing_the_lines_before() {
    let spool = Spool::new();
    let input = concat!(
        r#"{"description":"one"}"#,
        "\n",
        r#"{"task_id":"two","description":"two"}"#,
        "\n",
        "\n",
        r#"{"description":"three"}"#,
        "\n",
        r#"{"description":"bad","priority":"urgent"}"#,
        "\n",
        r#"{"task_id":"after","description":"after the bad line"}"#,
        "\n",
    );
    let out = enqueue_input(&spool, &["--json", W], input.as_bytes());
    assert_exit(&out, 65);
    assert!(stderr(&out).contains("line 5"), "stderr: {}", stderr(&out));
    let ids = printed(&out);
    assert_eq!(ids.len(), 3, "stdout: {:?}", stdout(&out));
    assert_eq!(ids[1], "two");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(pending_ids(&spool, W), sorted);
    assert_eq!(task(&spool, &ids[2])["description"], "three");
    assert_no_dot_files(&spool, W);
}

#[test]
fn lines_before_a_bad_line_are_enqueued_across_batches() {
    let spool = Spool::new();
    let mut input = String::new();
    for i in 1..1500 {
        input.push_str(&format!("{{\"description\":\"task {i}\"}}\n"));
    }
    input.push_str("{\"description\":\"\"}\n");
    let out = enqueue_input(&spool, &["--json", W], input.as_bytes());
    assert_exit(&out, 65);
    assert!(
        stderr(&out).contains("line 1500"),
        "stderr: {}",
        stderr(&out)
    );
    let ids = printed(&out);
    assert_eq!(ids.len(), 1499);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(pending_ids(&spool, W), sorted);
    assert_no_dot_files(&spool, W);
}

#[test]
fn a_json_line_repeating_an_earlier_id_exits_73_after_enqueuing_the_lines_before() {
    let spool = Spool::new();
    let input = concat!(
        r#"{"task_id":"a","description":"first a"}"#,
        "\n",
        r#"{"task_id":"b","description":"b"}"#,
        "\n",
        r#"{"task_id":"a","description":"second a"}"#,
        "\n",
    );
    let out = enqueue_input(&spool, &["--json", W], input.as_bytes());
    assert_exit(&out, 73);
    assert!(stderr(&out).contains("line 3"), "stderr: {}", stderr(&out));
    assert_eq!(printed(&out), ["a", "b"]);
    assert_eq!(pending_ids(&spool, W), ["a", "b"]);
    assert_eq!(task(&spool, "a")["description"], "first a");
    assert_no_dot_files(&spool, W);
}

// ---------------------------------------------------------------------------
// An id that exists anywhere for the worker is refused.

/// Places a task `dup` at `path`, runs `hw-enqueue --id dup`, and checks
/// the refusal: 73, nothing printed, the file byte-identical, no new task;
/// then the same from a `--json` line. `what` names the case.
fn assert_refused_over(spool: &Spool, path: &Path, what: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let bytes = br#"{"task_id":"dup","description":"the original"}"#;
    fs::write(path, bytes).unwrap();
    let pending_before = pending_ids(spool, W);
    let line = br#"{"task_id":"dup","description":"the impostor"}"#;
    for (args, input) in [
        (&["--id", "dup", W, "the impostor"][..], &b""[..]),
        (&["--json", W], line),
    ] {
        let what = format!("{what}, hw-enqueue {args:?}");
        let out = enqueue_input(spool, args, input);
        assert_eq!(out.status.code(), Some(73), "{what}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{what}: stdout {:?}", stdout(&out));
        assert!(stderr(&out).contains("dup"), "{what}: {}", stderr(&out));
        let same = fs::read(path).unwrap() == bytes;
        assert!(same, "{what}: the existing file changed");
        let pending = pending_ids(spool, W);
        assert_eq!(pending, pending_before, "{what}: a task was written");
        let left = dot_files(&spool.tasks(W));
        assert!(
            left.is_empty(),
            "{what}: staging files left behind: {left:?}"
        );
    }
}

#[test]
fn the_id_of_a_pending_active_deferred_finished_or_dead_task_is_refused() {
    type Place = fn(&Spool) -> PathBuf;
    let rows: [(&str, Place); 5] = [
        ("a pending task", |s| s.tasks(W).join("dup.json")),
        ("an active task", |s| s.active(W).join("dup.json")),
        ("a deferred task", |s| s.deferred(W).join("dup.json")),
        ("a task with a result", |s| s.results(W).join("dup.json")),
        ("a dead letter", |s| s.dlq(W).join("dup_1795861800.json")),
    ];
    for (what, place) in rows {
        let spool = Spool::new();
        assert_refused_over(&spool, &place(&spool), what);
    }
}

#[test]
fn the_same_id_for_another_worker_is_accepted() {
    let spool = Spool::new();
    spool.drop_simple("anga", "shared-id", "anga's");
    let out = enqueue(&spool, &["--id", "shared-id", W, "marie's"]);
    assert_exit(&out, 0);
    assert_eq!(printed(&out), ["shared-id"]);
}

#[test]
fn concurrent_enqueuers_racing_for_one_id_exactly_one_wins() {
    let spool = Spool::new();
    for round in 0..3 {
        let id = format!("same-{round}");
        // All start and block on their input; then all are let go at once.
        let mut children: Vec<Child> = (0..8)
            .map(|_| {
                command(&spool, &["--id", &id, W], &[])
                    .spawn()
                    .expect("start hw-enqueue")
            })
            .collect();
        let mut stdins: Vec<_> = children
            .iter_mut()
            .map(|c| c.stdin.take().unwrap())
            .collect();
        for (i, s) in stdins.iter_mut().enumerate() {
            let _ = s.write_all(format!("from {i}\n").as_bytes());
        }
        drop(stdins);
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| finish(c, b"", "racing hw-enqueue"))
            .collect();
        let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
        let winners: Vec<usize> = (0..8).filter(|&i| codes[i] == Some(0)).collect();
        assert_eq!(winners.len(), 1, "round {round}: exit statuses {codes:?}");
        for (i, out) in outs.iter().enumerate() {
            if i == winners[0] {
                assert_eq!(stdout(out), format!("{id}\n"));
            } else {
                assert_exit(out, 73);
                assert!(stdout(out).is_empty(), "loser printed {:?}", stdout(out));
            }
        }
        assert_eq!(
            task(&spool, &id)["description"],
            format!("from {}", winners[0]),
            "the file is not the winner's"
        );
        assert_no_dot_files(&spool, W);
    }
    assert_eq!(pending_ids(&spool, W), ["same-0", "same-1", "same-2"]);
}

// ---------------------------------------------------------------------------
// The environment.

#[test]
fn task_dir_result_dir_and_dlq_dir_move_their_folders() {
    let spool = Spool::new();
    let elsewhere = spool.scratch("elsewhere");
    let tasks = elsewhere.join("t");
    let results = elsewhere.join("r");
    let dlq = elsewhere.join("d");
    fs::create_dir_all(results.join(W)).unwrap();
    fs::write(results.join(W).join("has-result.json"), "{}").unwrap();
    fs::create_dir_all(dlq.join(W)).unwrap();
    fs::write(dlq.join(W).join("has-letter_1795861800.json"), "{}").unwrap();
    let env = [
        ("TASK_DIR", tasks.to_str().unwrap()),
        ("RESULT_DIR", results.to_str().unwrap()),
        ("DLQ_DIR", dlq.to_str().unwrap()),
    ];
    let out = enqueue_env(&spool, &["--id", "moved", W, "d"], b"", &env);
    assert_exit(&out, 0);
    assert!(tasks.join(W).join("moved.json").is_file());
    for id in ["has-result", "has-letter"] {
        let out = enqueue_env(&spool, &["--id", id, W, "d"], b"", &env);
        assert_exit(&out, 73);
    }
    assert_nothing_written(&spool, "with the folders moved");
}

#[test]
fn root_flag_wins_over_hw_root() {
    let spool = Spool::new();
    let other = spool.scratch("other-root");
    // hw-enqueue refuses a root that does not exist (a typo).
    fs::create_dir(&other).unwrap();
    let out = enqueue(
        &spool,
        &["--root", other.to_str().unwrap(), "--id", "r", W, "d"],
    );
    assert_exit(&out, 0);
    assert!(other.join("tasks").join(W).join("r.json").is_file());
    assert_nothing_written(&spool, "--root elsewhere");
}

#[test]
fn no_dot_files_are_left_behind_after_success_or_failure() {
    let spool = Spool::new();
    spool.drop_simple(W, "taken", "already here");
    let runs: [(&[&str], &[u8], i32); 5] = [
        (&[W], b"a\nb\nc\n", 0),
        (&["--count", "50", W, "copies"], b"", 0),
        (&["--id", "taken", W, "again"], b"", 73),
        (
            &["--json", W],
            b"{\"description\":\"ok\"}\n{\"description\":5}\n",
            65,
        ),
        (
            &["--json", W],
            b"{\"description\":\"ok\"}\n{\"task_id\":\"taken\",\"description\":\"x\"}\n",
            73,
        ),
    ];
    for (args, input, code) in runs {
        let out = enqueue_input(&spool, args, input);
        assert_exit(&out, code);
        assert_no_dot_files(&spool, W);
    }
}

// ---------------------------------------------------------------------------
// --wait, with a real worker.

#[test]
fn wait_prints_the_result_of_a_completed_task_and_exits_0() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let out = enqueue(&spool, &["--wait", "--id", "ok-1", W, "say hello"]);
    assert_exit(&out, 0);
    let recs = records(&out);
    assert_eq!(recs.len(), 1, "stdout: {:?}", stdout(&out));
    assert_eq!(recs[0]["task_id"], "ok-1");
    assert_eq!(recs[0]["status"], "completed");
    assert_eq!(recs[0]["stdout"], "done: say hello\n");
    assert_eq!(Some(&recs[0]), spool.result(W, "ok-1").as_ref());
}

#[test]
fn wait_after_a_bad_line_prints_the_records_of_the_lines_before_and_exits_65() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let input = b"{\"task_id\":\"good-1\",\"description\":\"first\"}\n{\"description\":5}\n";
    let out = enqueue_input(&spool, &["--wait", "--json", W], input);
    assert_exit(&out, 65);
    assert!(stderr(&out).contains("line 2"), "stderr: {}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 1, "stdout: {:?}", stdout(&out));
    assert_eq!(recs[0]["task_id"], "good-1");
    assert_eq!(recs[0]["status"], "completed");
}

#[test]
fn wait_prints_the_failed_result_and_exits_1() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let out = enqueue(&spool, &["--wait", "--id", "bad-1", W, "fail now"]);
    assert_exit(&out, 1);
    let recs = records(&out);
    assert_eq!(recs.len(), 1, "stdout: {:?}", stdout(&out));
    assert_eq!(recs[0]["task_id"], "bad-1");
    assert_eq!(recs[0]["status"], "failed");
    assert_eq!(recs[0]["exit_code"], 1);
    assert_eq!(Some(&recs[0]), spool.result(W, "bad-1").as_ref());
}

#[test]
fn wait_prints_the_dead_letter_of_a_task_whose_dependency_failed() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let out = enqueue(&spool, &["--id", "collect", W, "fail to collect"]);
    assert_exit(&out, 0);
    let args = [
        "--wait",
        "--id",
        "summarise",
        "--depends-on",
        "collect",
        W,
        "sum up",
    ];
    let out = enqueue(&spool, &args);
    assert_exit(&out, 1);
    let recs = records(&out);
    assert_eq!(recs.len(), 1, "stdout: {:?}", stdout(&out));
    assert_eq!(recs[0]["task_id"], "summarise");
    assert_eq!(recs[0]["dlq_reason"], "dependency_failed");
    assert!(spool.result(W, "summarise").is_none(), "it has a result");
    let letters = spool.dlq_records(W);
    assert!(
        letters.contains(&recs[0]),
        "the printed line is not a dead letter: {}",
        recs[0]
    );
}

#[test]
fn wait_timeout_exits_124_and_leaves_the_task_queued() {
    let spool = Spool::new();
    let out = enqueue(
        &spool,
        &[
            "--wait",
            "--wait-timeout",
            "0.3",
            "--id",
            "q",
            W,
            "nobody runs this",
        ],
    );
    assert_exit(&out, 124);
    assert!(stdout(&out).is_empty(), "stdout: {:?}", stdout(&out));
    assert_eq!(pending_ids(&spool, W), ["q"]);
}

#[test]
fn wait_timeout_exits_124_after_printing_what_ended() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let args = ["--json", "--wait", "--wait-timeout", "1", W];
    let mut child = command(&spool, &args, &[])
        .spawn()
        .expect("start hw-enqueue");
    let mut stdin = child.stdin.take().unwrap();
    let input = concat!(
        r#"{"task_id":"quick","description":"quick"}"#,
        "\n",
        r#"{"task_id":"blocked","description":"never runs","dependencies":["never"]}"#,
        "\n",
    );
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // The input stays open until one task has ended, so that it has ended
    // whatever the machine's speed; then the wait begins and times out.
    let quick = spool.wait_result(W, "quick");
    drop(stdin);
    let out = finish(child, b"", "hw-enqueue --wait");
    assert_exit(&out, 124);
    assert_eq!(records(&out), [quick]);
    assert!(spool.result(W, "blocked").is_none());
}

#[test]
fn wait_for_fifty_tasks_from_stdin_prints_fifty_results() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let out = enqueue_input(&spool, &["--wait", W], &lines(50, "job"));
    assert_exit(&out, 0);
    let recs = records(&out);
    assert_eq!(recs.len(), 50, "stdout: {:?}", stdout(&out));
    let mut descriptions = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for r in &recs {
        assert_eq!(r["status"], "completed", "{r}");
        ids.insert(r["task_id"].as_str().unwrap().to_string());
        descriptions.insert(r["stdout"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 50, "a task printed twice");
    let expected: BTreeSet<String> = (0..50).map(|i| format!("done: job {i}\n")).collect();
    assert_eq!(descriptions, expected);
}

#[test]
fn wait_with_a_failure_among_many_exits_1_after_printing_all() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let input = b"fine 1\nfine 2\nfail 3\nfine 4\n";
    let out = enqueue_input(&spool, &["--wait", W], input);
    assert_exit(&out, 1);
    let recs = records(&out);
    assert_eq!(recs.len(), 4, "stdout: {:?}", stdout(&out));
    let failed: Vec<&Value> = recs.iter().filter(|r| r["status"] != "completed").collect();
    assert_eq!(failed.len(), 1, "{recs:?}");
    assert_eq!(failed[0]["status"], "failed");
}

#[test]
fn wait_prints_records_in_the_order_the_tasks_end() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    // The first line waits for the second.
    let input = concat!(
        r#"{"task_id":"ends-second","description":"b","dependencies":["ends-first"]}"#,
        "\n",
        r#"{"task_id":"ends-first","description":"a"}"#,
        "\n",
    );
    let out = enqueue_input(&spool, &["--json", "--wait", W], input.as_bytes());
    assert_exit(&out, 0);
    let order: Vec<Value> = records(&out).iter().map(|r| r["task_id"].clone()).collect();
    assert_eq!(order, [json!("ends-first"), json!("ends-second")]);
}

// ---------------------------------------------------------------------------
// The README's "Use from the shell": each pipeline as written there.

/// Runs `script` with `sh -c` in the spool's scratch folder, the built
/// binaries first on PATH and HW_ROOT set to the spool.
fn shell(spool: &Spool, script: &str) -> Output {
    let bin_dir = bin("hw-enqueue").parent().unwrap().to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("sh");
    for var in SPOOL_VARS {
        cmd.env_remove(var);
    }
    cmd.arg("-c")
        .arg(script)
        .current_dir(spool.dir.path())
        .env("PATH", std::env::join_paths(dirs).unwrap())
        .env("HW_ROOT", &spool.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("start sh");
    finish(child, b"", script)
}

/// `text` as it stands in README.md: the tests run the README's own lines.
fn from_readme(text: &str) -> &str {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    assert!(readme.contains(text), "README.md does not show {text:?}");
    text
}

fn have_jq() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join("jq").is_file())
}

#[test]
fn readme_a_file_of_prompts_into_hw_enqueue() {
    let spool = Spool::new();
    let prompts = "Summarise the incident of 3 March\n\nDraft the weekly report\n";
    fs::write(spool.scratch("prompts.txt"), prompts).unwrap();
    let out = shell(
        &spool,
        from_readme("hw-enqueue marie < prompts.txt > ids.txt"),
    );
    assert_exit(&out, 0);
    let ids: Vec<String> = fs::read_to_string(spool.scratch("ids.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        task(&spool, &ids[0])["description"],
        "Summarise the incident of 3 March"
    );
    assert_eq!(
        task(&spool, &ids[1])["description"],
        "Draft the weekly report"
    );
}

#[test]
fn readme_wait_for_one_task_and_keep_what_the_agent_printed() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    let enqueue_part = r#"hw-enqueue --wait marie "Summarise yesterday's incidents""#;
    if have_jq() {
        let pipeline = format!("{enqueue_part} | jq -r .stdout");
        let out = shell(&spool, from_readme(&pipeline));
        assert_exit(&out, 0);
        assert_eq!(stdout(&out), "done: Summarise yesterday's incidents\n\n");
    } else {
        eprintln!("jq not on PATH: the jq step is skipped, checked in Rust");
        let out = shell(&spool, from_readme(enqueue_part));
        assert_exit(&out, 0);
        assert_eq!(
            records(&out)[0]["stdout"],
            "done: Summarise yesterday's incidents\n"
        );
    }
}

#[test]
fn readme_a_batch_waited_for_lists_what_did_not_complete() {
    let spool = Spool::new();
    let _w = worker(&spool, W, &agent(&spool));
    fs::write(
        spool.scratch("prompts.txt"),
        "Check disk usage\nThis one will fail\nCheck the backups\n",
    )
    .unwrap();
    let enqueue_part =
        "hw-enqueue --batch-id w48 --priority low --wait --wait-timeout 1h marie < prompts.txt";
    let filter = r#"jq -r 'select(.status != "completed") | .task_id'"#;
    let out = if have_jq() {
        let pipeline = format!("{enqueue_part} \\\n  | {filter}");
        shell(&spool, from_readme(&pipeline))
    } else {
        eprintln!("jq not on PATH: the jq step is skipped, checked in Rust");
        shell(&spool, from_readme(enqueue_part))
    };
    // The pipeline's status is jq's; the tasks are known from the spool.
    let failed: Vec<String> = fs::read_dir(spool.results(W))
        .unwrap()
        .flatten()
        .filter_map(|e| read_json(&e.path()))
        .filter(|r| r["status"] != "completed")
        .map(|r| r["task_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(json_files(&spool.results(W)).len(), 3);
    if have_jq() {
        assert_exit(&out, 0);
        assert_eq!(stdout(&out), format!("{}\n", failed[0]));
    } else {
        assert_exit(&out, 1);
        let not_completed: Vec<Value> = records(&out)
            .into_iter()
            .filter(|r| r["status"] != "completed")
            .map(|r| r["task_id"].clone())
            .collect();
        assert_eq!(not_completed, [json!(failed[0])]);
    }
    let r = spool.result(W, &failed[0]).unwrap();
    assert_eq!(r["metadata"], json!({"batch_id": "w48"}));
}

#[test]
fn readme_tasks_from_a_json_array() {
    let spool = Spool::new();
    let tasks = json!([
        {"task_id": "report-1", "description": "Draft the weekly report", "priority": "high"},
        {"description": "Tidy the wiki", "metadata": {"batch_id": "w48"}},
    ]);
    fs::write(spool.scratch("tasks.json"), tasks.to_string()).unwrap();
    let out = if have_jq() {
        shell(
            &spool,
            from_readme("jq -c '.[]' tasks.json | hw-enqueue --json marie"),
        )
    } else {
        eprintln!("jq not on PATH: `jq -c '.[]'` done in Rust");
        let lines: String = tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|t| format!("{t}\n"))
            .collect();
        enqueue_input(&spool, &["--json", W], lines.as_bytes())
    };
    assert_exit(&out, 0);
    let ids = printed(&out);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], "report-1");
    assert_eq!(task(&spool, "report-1")["priority"], "high");
    assert_eq!(
        task(&spool, &ids[1])["metadata"],
        json!({"batch_id": "w48"})
    );
}

#[test]
fn readme_a_chain_across_workers() {
    let spool = Spool::new();
    let script = r#"id=$(hw-enqueue marie "Collect the logs of web-1") &&
hw-enqueue --depends-on "$id" anga "Summarise the collected logs""#;
    let out = shell(&spool, from_readme(script));
    assert_exit(&out, 0);
    let anga_id = stdout(&out).trim().to_string();
    let marie_ids = pending_ids(&spool, "marie");
    assert_eq!(marie_ids.len(), 1);
    let anga_task = read_json(&spool.tasks("anga").join(format!("{anga_id}.json"))).unwrap();
    assert_eq!(anga_task["dependencies"], json!(marie_ids));
    // Run by the workers, anga's task ends after marie's.
    let agent = agent(&spool);
    let _a = worker(&spool, "anga", &agent);
    let _m = worker(&spool, "marie", &agent);
    let r = spool.wait_result("anga", &anga_id);
    assert_eq!(r["status"], "completed");
    assert_eq!(r["stdout"], "done: Summarise the collected logs\n");
    let m = spool
        .result("marie", &marie_ids[0])
        .expect("marie's result");
    assert_eq!(m["status"], "completed");
    assert!(
        r["timestamp"].as_str().unwrap() >= m["timestamp"].as_str().unwrap(),
        "anga's task ended before marie's"
    );
}

#[test]
fn a_bad_line_after_several_full_batches_keeps_every_line_before_it() {
    // Several batches of 1024 went out before the bad line: every line
    // before it is published and printed, none after it.
    let spool = Spool::new();
    let mut input: Vec<u8> = (0..2500)
        .flat_map(|i| format!("{{\"description\":\"task {i}\"}}\n").into_bytes())
        .collect();
    input.extend_from_slice(b"{\"description\":5}\n{\"description\":\"after\"}\n");
    let out = enqueue_input(&spool, &["--json", W], &input);
    assert_exit(&out, 65);
    assert!(
        stderr(&out).contains("line 2501"),
        "stderr: {}",
        stderr(&out)
    );
    let ids = printed(&out);
    assert_eq!(ids.len(), 2500);
    assert_eq!(task(&spool, &ids[2499])["description"], "task 2499");
    assert_eq!(pending_ids(&spool, W).len(), 2500);
    assert_no_dot_files(&spool, W);
}
