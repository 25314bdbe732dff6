//! hw-listen (SPEC sections 4 and 5, hw-listen(8)): the events it emits,
//! each one a JSON line on stdout and a trigger file with the same
//! content; worker health from heartbeats; batches; `--exec` hooks; and
//! its state across runs: catching up on what happened while it was down,
//! never emitting anything twice. Each test runs the real binary on its
//! own spool, either as a daemon (stdout captured to a file) or with
//! `--once`; terminal records are written by a real hw-worker or by hand,
//! the way a worker writes them (a dot-file, then a rename).

use crate::common::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

const W: &str = "marie";

/// Every event type of SPEC section 4.
const EVENT_TYPES: [&str; 7] = [
    "task_completed",
    "task_dead_lettered",
    "task_timeout",
    "worker_unhealthy",
    "worker_recovered",
    "worker_disconnected",
    "batch_completed",
];

// ---------------------------------------------------------------------------
// Running the listener

/// A listener running as a daemon, its stdout kept; killed with its group
/// when dropped.
struct Listener(Daemon);

impl std::ops::Deref for Listener {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Listener {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

/// `hw-listen ARGS…` on the spool, stdout and stderr to files in the
/// scratch area.
fn spawn_listener(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let cmd = listener_command(spool, args, env);
    Daemon::spawn(spool, &spool.numbered("hw-listen"), cmd)
}

impl Listener {
    fn start(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Listener {
        Listener(spawn_listener(spool, args, env))
    }

    /// Starts it and waits until it has caught up and is listening.
    fn ready(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Listener {
        let l = Listener::start(spool, args, env);
        l.wait_listening();
        l
    }

    fn wait_listening(&self) {
        assert!(
            wait_until(DEADLINE, || self.log_text().contains("Listening")),
            "hw-listen did not start listening: {}",
            self.log_text()
        );
    }

    /// Waits for an event of type `kind` whose data satisfies `what`.
    fn wait_event(&self, kind: &str, what: impl Fn(&Value) -> bool) -> Value {
        self.wait_event_after(0, kind, what)
    }

    /// As `wait_event`, among the events after the first `seen`.
    fn wait_event_after(&self, seen: usize, kind: &str, what: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        let ok = wait_until(DEADLINE, || {
            found = self
                .events()
                .into_iter()
                .skip(seen)
                .find(|e| e["event_type"] == kind && what(&e["data"]));
            found.is_some()
        });
        assert!(
            ok,
            "no matching {kind} event within {DEADLINE:?}; events: {:#?}\nlog:\n{}",
            self.events(),
            self.log_text()
        );
        found.unwrap()
    }

    /// Waits for the `task_completed` event of `worker/id`.
    fn wait_completed(&self, worker: &str, id: &str) -> Value {
        self.wait_event("task_completed", |d| {
            d["worker"] == worker && d["task_id"] == id
        })
    }
}

/// What a `--once` run did.
struct Once {
    status: ExitStatus,
    lines: Vec<String>,
    events: Vec<Value>,
    stderr: String,
}

/// `hw-listen --once ARGS…`, bounded by `within`.
fn once_within(spool: &Spool, args: &[&str], env: &[(&str, &str)], within: Duration) -> Once {
    let mut all = vec!["--once"];
    all.extend_from_slice(args);
    let mut l = spawn_listener(spool, &all, env);
    let status = l.wait_exit(within).unwrap_or_else(|| {
        panic!(
            "hw-listen --once did not finish within {within:?}:\n{}",
            l.log_text()
        )
    });
    let lines = l.lines();
    let events = lines.iter().map(|l| parse_line(l)).collect();
    Once {
        status,
        lines,
        events,
        stderr: l.log_text(),
    }
}

fn once(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Once {
    once_within(spool, args, env, DEADLINE)
}

/// `--once` that must succeed.
fn once_ok(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let run = once(spool, args, env);
    assert_eq!(
        run.status.code(),
        Some(0),
        "hw-listen --once failed:\n{}",
        run.stderr
    );
    run.events
}

// ---------------------------------------------------------------------------
// Events

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == kind).collect()
}

/// `worker/task_id` of each event of type `kind`, sorted.
fn keys(events: &[Value], kind: &str) -> Vec<String> {
    let mut k: Vec<String> = of_type(events, kind)
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["data"]["worker"].as_str().unwrap_or("?"),
                e["data"]["task_id"].as_str().unwrap_or("?")
            )
        })
        .collect();
    k.sort();
    k
}

/// How many events of type `kind` concern task `id`.
fn count_for(events: &[Value], kind: &str, id: &str) -> usize {
    of_type(events, kind)
        .iter()
        .filter(|e| e["data"]["task_id"] == id)
        .count()
}

fn worker_events<'a>(events: &'a [Value], kind: &str, worker: &str) -> Vec<&'a Value> {
    of_type(events, kind)
        .into_iter()
        .filter(|e| e["data"]["worker"] == worker)
        .collect()
}

fn trigger_dir(spool: &Spool) -> PathBuf {
    spool.triggers("orchestrator")
}

/// Every trigger file: name and content.
fn trigger_files(spool: &Spool) -> BTreeMap<String, String> {
    json_files(&trigger_dir(spool))
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Each line has its own trigger file `<event_type>_<ms>[-n].json`, `ms`
/// being the event's timestamp, with the line as its whole content; and
/// there are no other trigger files.
fn assert_each_line_has_its_trigger(spool: &Spool, lines: &[String]) {
    // Trigger files by stem, the `-n` of a name clash taken off.
    let mut by_stem: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, body) in trigger_files(spool) {
        let n = name.strip_suffix(".json").unwrap();
        let stem = match n.rsplit_once('-') {
            Some((s, k)) if k.parse::<u32>().is_ok() => s,
            _ => n,
        };
        by_stem
            .entry(stem.to_string())
            .or_default()
            .push((name.clone(), body));
    }
    for line in lines {
        let e = parse_line(line);
        let stem = format!(
            "{}_{}",
            e["event_type"].as_str().unwrap(),
            ms_of(e["timestamp"].as_str().unwrap())
        );
        let files = by_stem.get_mut(&stem);
        let at = files
            .as_ref()
            .and_then(|f| f.iter().position(|(_, body)| *body == format!("{line}\n")));
        match (files, at) {
            (Some(f), Some(i)) => {
                f.remove(i);
            }
            (f, _) => panic!("no trigger file {stem}*.json holding {line}; with that stem: {f:#?}"),
        }
    }
    by_stem.retain(|_, f| !f.is_empty());
    assert!(
        by_stem.is_empty(),
        "trigger files without an event: {by_stem:#?}"
    );
}

// ---------------------------------------------------------------------------
// Files written by hand, as a worker writes them

/// `2026-11-28T10:30:00.123Z` of Unix seconds.
fn rfc3339(unix: f64) -> String {
    rfc3339_ms((unix * 1000.0).round() as i64)
}

/// Milliseconds since the epoch of an RFC 3339 UTC time, exactly.
fn ms_of(rfc: &str) -> i64 {
    assert!(
        rfc.len() >= 20 && rfc.ends_with('Z') && rfc.as_bytes()[10] == b'T',
        "not an RFC 3339 UTC time: {rfc}"
    );
    let n = |r: std::ops::Range<usize>| -> i64 {
        rfc[r]
            .parse()
            .unwrap_or_else(|_| panic!("not an RFC 3339 time: {rfc}"))
    };
    let days = days_from_civil(n(0..4), n(5..7), n(8..10));
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    let frac = rfc[19..rfc.len() - 1].strip_prefix('.').unwrap_or("");
    let milli: i64 = format!("{:0<3}", &frac[..frac.len().min(3)])
        .parse()
        .unwrap();
    secs * 1000 + milli
}

/// Sets a file's modification time to `unix` seconds.
fn set_mtime_unix(path: &Path, unix: f64) {
    set_mtime(path, SystemTime::UNIX_EPOCH + Duration::from_secs_f64(unix));
}

fn task(id: &str) -> Value {
    json!({"task_id": id, "description": format!("do {id}")})
}

fn batch_task(id: &str, batch: &str) -> Value {
    json!({"task_id": id, "description": format!("do {id}"),
           "metadata": {"batch_id": batch}})
}

/// A result record `results/<worker>/<id>.json` as a worker writes it.
fn write_result(spool: &Spool, worker: &str, id: &str, status: &str) -> PathBuf {
    write_result_with(spool, worker, id, status, json!({}))
}

fn write_result_with(
    spool: &Spool,
    worker: &str,
    id: &str,
    status: &str,
    metadata: Value,
) -> PathBuf {
    let record = json!({
        "task_id": id, "worker": worker, "status": status,
        "exit_code": if status == "completed" { 0 } else { 1 },
        "stdout": "", "stderr": "", "duration_seconds": 0.1,
        "timestamp": rfc3339(unix_now()), "retry_count": 0,
        "metadata": metadata,
    });
    place(&spool.results(worker), &format!("{id}.json"), &record)
}

/// A dead letter `dlq/<worker>/<id>_<unix>.json`.
fn write_dead_letter(spool: &Spool, worker: &str, id: &str, reason: &str) -> PathBuf {
    write_dead_letter_with(spool, worker, id, reason, json!({}))
}

fn write_dead_letter_with(
    spool: &Spool,
    worker: &str,
    id: &str,
    reason: &str,
    metadata: Value,
) -> PathBuf {
    let now = unix_now();
    let record = json!({
        "task_id": id, "description": format!("do {id}"), "metadata": metadata,
        "dlq_reason": reason, "dlq_timestamp": rfc3339(now), "retry_count": 0,
        "last_error": "exit status 1",
    });
    place(
        &spool.dlq(worker),
        &format!("{id}_{}.json", now as u64),
        &record,
    )
}

/// A heartbeat written `age` seconds ago, promising `interval`.
fn write_heartbeat(spool: &Spool, worker: &str, age: f64, interval: f64, status: &str) {
    let hb = json!({
        "worker": worker, "timestamp": rfc3339(unix_now() - age),
        "uptime_seconds": 100, "queue_size": 0, "active_tasks": 0,
        "circuit_breaker_state": "closed",
        "stats": {"tasks_processed": 0, "tasks_failed": 0, "tasks_retried": 0, "tasks_dlq": 0},
        "status": status, "pid": 1, "hostname": "test", "version": "0",
        "heartbeat_interval": interval, "metrics_addr": null,
    });
    place(
        &spool.root.join("heartbeats"),
        &format!("{worker}.json"),
        &hb,
    );
}

/// An agent that succeeds, except for tasks whose id starts with `bad`.
fn agent(spool: &Spool) -> PathBuf {
    spool.script(
        "agent.sh",
        r#"case "$HW_TASK_ID" in bad*) echo "no good" >&2; exit 1;; esac
echo "done $HW_TASK_ID""#,
    )
}

/// An agent that runs until the gate opens (20 s at most).
fn gated_agent(spool: &Spool, gate: &Gate) -> PathBuf {
    spool.script("gated.sh", &gate.wait_lines())
}

/// Hooks started by a test that may outlive it (they run in their own
/// process groups): each hook writes its pid to `pids`, and whatever is
/// still running from this spool at the end is killed (declare it before
/// the listener, so that the listener is gone first).
struct Hooks {
    pids: PathBuf,
    cwd: PathBuf,
}

impl Hooks {
    fn new(spool: &Spool) -> Hooks {
        Hooks {
            pids: spool.scratch("hook.pids"),
            cwd: fs::canonicalize(&spool.root).unwrap(),
        }
    }

    /// A hook that records its pid and sleeps for 60 s; its path.
    fn hanging(&self, spool: &Spool) -> String {
        let body = format!("echo $$ >> '{}'\nexec sleep 60", self.pids.display());
        spool.script("hang.sh", &body).display().to_string()
    }

    fn started(&self) -> Vec<i32> {
        fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        for pid in self.started() {
            // Only a hook of this test: its folder is this spool's root.
            let ours = fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == self.cwd);
            if ours {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn assert_exit_zero(status: ExitStatus, what: &str) {
    assert_eq!(status.code(), Some(0), "{what}: exit status {status:?}");
}

// ---------------------------------------------------------------------------
// The event format

/// A spool with one result, one dead letter and a worker without heartbeat.
fn some_records(spool: &Spool) {
    write_result(spool, W, "t-ok", "completed");
    write_dead_letter(spool, W, "t-dead", "invalid_task");
}

#[test]
fn each_event_is_a_json_line_with_event_type_timestamp_and_data() {
    let spool = Spool::new();
    some_records(&spool);
    let before = (unix_now() * 1000.0) as i64;
    let run = once(&spool, &[], &[]);
    let after = (unix_now() * 1000.0) as i64 + 1;
    assert_exit_zero(run.status, "hw-listen --once");

    assert_eq!(run.lines.len(), 3, "events: {:#?}", run.lines);
    for line in &run.lines {
        let e = parse_line(line);
        let obj = e
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let mut k: Vec<&str> = obj.keys().map(String::as_str).collect();
        k.sort();
        assert_eq!(k, ["data", "event_type", "timestamp"], "{line}");
        let kind = e["event_type"].as_str().unwrap();
        assert!(EVENT_TYPES.contains(&kind), "unknown event type: {line}");
        assert!(e["data"].is_object(), "data is not an object: {line}");
        let ts = ms_of(e["timestamp"].as_str().unwrap());
        assert!(
            before <= ts && ts <= after,
            "timestamp {ts} outside the run [{before}, {after}]: {line}"
        );
    }
    let mut kinds: Vec<&str> = run
        .events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "task_completed",
            "task_dead_lettered",
            "worker_disconnected"
        ]
    );
}

#[test]
fn each_event_has_a_trigger_file_with_the_same_content() {
    let spool = Spool::new();
    some_records(&spool);
    let run = once(&spool, &[], &[]);
    assert_exit_zero(run.status, "hw-listen --once");
    assert!(!run.lines.is_empty());
    assert_each_line_has_its_trigger(&spool, &run.lines);
    let staging: Vec<String> = fs::read_dir(trigger_dir(&spool))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(staging.is_empty(), "staging files left: {staging:?}");
}

#[test]
fn a_live_listener_writes_the_trigger_file_of_each_event_it_prints() {
    let spool = Spool::new();
    fs::create_dir_all(spool.results(W)).unwrap();
    let mut l = Listener::ready(&spool, &[], &[]);
    write_result(&spool, W, "a", "completed");
    write_dead_letter(&spool, W, "b", "invalid_json");
    l.wait_completed(W, "a");
    l.wait_event("task_dead_lettered", |d| d["task_id"] == "b");
    assert_exit_zero(l.stop(), "hw-listen after SIGTERM");
    assert_each_line_has_its_trigger(&spool, &l.lines());
}

// ---------------------------------------------------------------------------
// task_completed

#[test]
fn task_completed_names_the_result_file_and_the_run_s_duration_from_it() {
    let spool = Spool::new();
    let enqueued = unix_now() - 100.0;
    let pending = place(&spool.tasks(W), "t1.json", &task("t1"));
    set_mtime_unix(&pending, enqueued);
    let first = once_ok(&spool, &[], &[]);
    assert!(
        of_type(&first, "task_completed").is_empty(),
        "a pending task completed: {first:#?}"
    );

    // The worker runs it for 42.5 s; its result arrives 90 s after the
    // enqueue: the event tells the run's time, not the wait.
    fs::remove_file(&pending).unwrap();
    let record = json!({"task_id": "t1", "worker": W, "status": "completed",
        "exit_code": 0, "stdout": "", "stderr": "", "duration_seconds": 42.5,
        "timestamp": rfc3339(unix_now()), "retry_count": 0});
    let result = place(&spool.results(W), "t1.json", &record);
    set_mtime_unix(&result, enqueued + 90.0);
    let events = once_ok(&spool, &[], &[]);

    let done = of_type(&events, "task_completed");
    assert_eq!(done.len(), 1, "{events:#?}");
    let d = &done[0]["data"];
    assert_eq!(d["task_id"], "t1");
    assert_eq!(d["worker"], W);
    assert_eq!(d["status"], "completed");
    let file = d["result_file"].as_str().expect("result_file");
    assert!(Path::new(file).is_absolute(), "not absolute: {file}");
    assert_eq!(
        fs::canonicalize(file).unwrap(),
        fs::canonicalize(&result).unwrap()
    );
    assert_eq!(d["duration_seconds"], 42.5, "{}", done[0]);
    assert_eq!(d["exit_code"], 0, "{}", done[0]);
}

#[test]
fn a_catch_up_tells_the_run_s_duration_exit_code_failure_class_and_cost() {
    let spool = Spool::new();
    let agent = spool.script(
        "priced.sh",
        r#"case "$desc" in fail*) echo "no good" >&2; exit 3;; esac
printf '%s\n' '{"type":"result","subtype":"success","is_error":false,"result":"ok","total_cost_usd":0.0123,"num_turns":1}'"#,
    );
    let mut worker = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    spool.drop_simple(W, "paid", "answer");
    spool.drop_simple(W, "broke", "fail now");
    let paid = spool.wait_result(W, "paid");
    let broke = spool.wait_result(W, "broke");
    worker.stop();

    // Never seen pending: everything comes from the results.
    let events = once_ok(&spool, &[], &[]);
    let data = |id: &str| {
        let e = of_type(&events, "task_completed")
            .into_iter()
            .find(|e| e["data"]["task_id"] == id)
            .unwrap_or_else(|| panic!("no task_completed for {id}: {events:#?}"));
        e["data"].clone()
    };
    let d = data("paid");
    assert_eq!(d["status"], "completed", "{d}");
    assert_eq!(d["duration_seconds"], paid["duration_seconds"], "{d}");
    assert!(d["duration_seconds"].is_number(), "{d}");
    assert_eq!(d["exit_code"], 0, "{d}");
    assert_eq!(d["cost_usd"], 0.0123, "{d}");
    assert!(
        d.get("error").is_none(),
        "a completed run has no error: {d}"
    );

    let d = data("broke");
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["duration_seconds"], broke["duration_seconds"], "{d}");
    assert_eq!(d["exit_code"], 3, "{d}");
    assert_eq!(d["error"], broke["error"], "{d}");
    assert_eq!(d["error"], "exit_status", "{d}");
    assert!(d.get("cost_usd").is_none(), "no cost was reported: {d}");
}

#[test]
fn task_completed_follows_a_task_run_by_a_worker_from_enqueue_to_result_with_its_duration() {
    let spool = Spool::new();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    let l = Listener::ready(&spool, &[], &[]);
    let _w = Daemon::worker(&spool, W, &agent(&spool), &[]);
    let started = Instant::now();
    spool.drop_simple(W, "t1", "say hello");
    let e = l.wait_completed(W, "t1");
    let elapsed = started.elapsed().as_secs_f64();

    let d = &e["data"];
    assert_eq!(d["status"], "completed");
    let file = d["result_file"].as_str().unwrap();
    assert_eq!(
        read_json(Path::new(file)).expect("the result file")["task_id"],
        "t1"
    );
    let result = read_json(Path::new(file)).unwrap();
    assert_eq!(d["duration_seconds"], result["duration_seconds"], "{e}");
    let duration = d["duration_seconds"].as_f64().expect("a duration");
    assert!(
        (0.0..=elapsed + 0.01).contains(&duration),
        "duration {duration} outside [0, {elapsed}]"
    );
}

#[test]
fn a_failed_result_gives_task_completed_with_status_failed() {
    let spool = Spool::new();
    write_result(&spool, W, "t1", "failed");
    let events = once_ok(&spool, &[], &[]);
    let done = of_type(&events, "task_completed");
    assert_eq!(done.len(), 1, "{events:#?}");
    assert_eq!(done[0]["data"]["status"], "failed");
}

#[test]
fn a_replaced_result_is_emitted_again() {
    let spool = Spool::new();
    let old = write_result(&spool, W, "t1", "failed");
    set_mtime_unix(&old, unix_now() - 60.0);
    let first = once_ok(&spool, &[], &[]);
    assert_eq!(keys(&first, "task_completed"), [format!("{W}/t1")]);

    // Replayed from the DLQ, the task ran again and its new result
    // replaced the old one.
    write_result(&spool, W, "t1", "completed");
    let second = once_ok(&spool, &[], &[]);
    let done = of_type(&second, "task_completed");
    assert_eq!(done.len(), 1, "{second:#?}");
    assert_eq!(done[0]["data"]["status"], "completed");
}

// ---------------------------------------------------------------------------
// task_dead_lettered

#[test]
fn task_dead_lettered_names_the_reason_and_the_dead_letter_file() {
    let spool = Spool::new();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    let l = Listener::ready(&spool, &[], &[]);
    let _w = Daemon::worker(&spool, W, &agent(&spool), &[]);
    spool.drop_bytes(W, "broken.json", b"{not json");
    let e = l.wait_event("task_dead_lettered", |d| d["task_id"] == "broken");

    let d = &e["data"];
    assert_eq!(d["worker"], W);
    assert_eq!(d["dlq_reason"], "invalid_json");
    let file = d["dlq_file"].as_str().expect("dlq_file");
    assert!(Path::new(file).is_absolute(), "not absolute: {file}");
    let record = read_json(Path::new(file)).expect("the dead letter");
    assert_eq!(record["dlq_reason"], "invalid_json");
    assert_eq!(count_for(&l.events(), "task_completed", "broken"), 0);
}

#[test]
fn a_task_out_of_attempts_gives_a_dead_letter_and_a_failed_completion() {
    let spool = Spool::new();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    let l = Listener::ready(&spool, &[], &[]);
    let _w = Daemon::worker(&spool, W, &agent(&spool), &[("MAX_RETRIES", "0")]);
    spool.drop_simple(W, "bad-1", "fail");

    let dead = l.wait_event("task_dead_lettered", |d| d["task_id"] == "bad-1");
    assert_eq!(dead["data"]["dlq_reason"], "max_retries_exceeded");
    let done = l.wait_completed(W, "bad-1");
    assert_eq!(done["data"]["status"], "failed");
    let events = l.events();
    assert_eq!(count_for(&events, "task_dead_lettered", "bad-1"), 1);
    assert_eq!(count_for(&events, "task_completed", "bad-1"), 1);
}

// ---------------------------------------------------------------------------
// task_timeout

#[test]
fn task_timeout_fires_once_and_not_again_after_a_restart() {
    let spool = Spool::new();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    let env = [("COMPLETION_TIMEOUT", "0.5")];
    let mut l = Listener::ready(&spool, &[], &env);
    spool.drop_task(W, "t1.json", &task("t1"));
    let e = l.wait_event("task_timeout", |d| d["task_id"] == "t1");
    assert_eq!(e["data"]["worker"], W);
    assert_eq!(e["data"]["timeout_seconds"], 0.5);

    // A later task's timeout: the timer has gone past t1's deadline since.
    spool.drop_task(W, "t2.json", &task("t2"));
    l.wait_event("task_timeout", |d| d["task_id"] == "t2");
    assert_eq!(count_for(&l.events(), "task_timeout", "t1"), 1);
    assert_exit_zero(l.stop(), "hw-listen after SIGTERM");

    // Restarted, with t1 and t2 still pending: no timeout again.
    let again = Listener::ready(&spool, &[], &env);
    spool.drop_task(W, "t3.json", &task("t3"));
    again.wait_event("task_timeout", |d| d["task_id"] == "t3");
    let events = again.events();
    assert_eq!(
        keys(&events, "task_timeout"),
        [format!("{W}/t3")],
        "timeouts after the restart"
    );
}

#[test]
fn a_task_that_ends_in_time_gets_no_timeout() {
    let spool = Spool::new();
    let pending = place(&spool.tasks(W), "t1.json", &task("t1"));
    let env = [("COMPLETION_TIMEOUT", "3")];
    let l = Listener::ready(&spool, &[], &env);
    // Seen pending at catch-up, then run: its result comes in time.
    fs::remove_file(pending).unwrap();
    write_result(&spool, W, "t1", "completed");
    l.wait_completed(W, "t1");

    // t2, enqueued after t1, times out: t1's deadline has passed by then.
    spool.drop_task(W, "t2.json", &task("t2"));
    l.wait_event("task_timeout", |d| d["task_id"] == "t2");
    assert_eq!(count_for(&l.events(), "task_timeout", "t1"), 0);
}

// ---------------------------------------------------------------------------
// Worker health

#[test]
fn a_killed_worker_is_reported_unhealthy_then_disconnected_with_its_in_flight_task() {
    let spool = Spool::new();
    let gate = Gate::new(&spool);
    let env = [("HEARTBEAT_INTERVAL", "0.2")];
    let mut w = Daemon::worker(&spool, W, &gated_agent(&spool, &gate), &env);
    spool.drop_simple(W, "long", "a long job");
    assert!(
        wait_until(DEADLINE, || spool.active(W).join("long.json").exists()
            && spool.heartbeat(W).is_some()),
        "the task never ran: {}",
        w.log_text()
    );
    let l = Listener::ready(&spool, &[], &[]);
    let seen = l.events().len();

    w.crash();
    let gone = l.wait_event_after(seen, "worker_disconnected", |d| d["worker"] == W);
    let after: Vec<Value> = l.events().split_off(seen);
    let kinds: Vec<&str> = after
        .iter()
        .filter(|e| e["data"]["worker"] == W)
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["worker_unhealthy", "worker_disconnected"],
        "{after:#?}"
    );
    let sick = worker_events(&after, "worker_unhealthy", W)[0];
    assert_eq!(sick["data"]["reason"], "heartbeat stale", "{sick}");
    // Ages are rounded to tenths.
    assert!(sick["data"]["heartbeat_age_seconds"].as_f64().unwrap() >= 0.6);
    let d = &gone["data"];
    assert_eq!(d["reason"], "heartbeat too old", "{gone}");
    assert!(
        d["heartbeat_age_seconds"].as_f64().unwrap() >= 2.0,
        "{gone}"
    );
    assert_eq!(d["active_task_ids"], json!(["long"]), "{gone}");
}

#[test]
fn a_restarted_worker_is_reported_recovered() {
    let spool = Spool::new();
    let env = [("HEARTBEAT_INTERVAL", "0.2")];
    let mut w = Daemon::worker(&spool, W, &agent(&spool), &env);
    assert!(wait_until(DEADLINE, || spool.heartbeat(W).is_some()));
    let l = Listener::ready(&spool, &[], &[]);
    let seen = l.events().len();
    w.crash();
    l.wait_event_after(seen, "worker_disconnected", |d| d["worker"] == W);

    let _again = Daemon::worker(&spool, W, &agent(&spool), &env);
    let e = l.wait_event("worker_recovered", |d| d["worker"] == W);
    let age = e["data"]["heartbeat_age_seconds"]
        .as_f64()
        .expect("a heartbeat age");
    assert!(age <= 0.65, "recovered with a stale heartbeat: {e}");
    let after = l.events().split_off(seen);
    assert_eq!(
        worker_events(&after, "worker_recovered", W).len(),
        1,
        "{after:#?}"
    );
}

#[test]
fn a_gracefully_stopped_worker_is_reported_disconnected_with_reason_stopped() {
    let spool = Spool::new();
    let env = [("HEARTBEAT_INTERVAL", "0.2")];
    let mut w = Daemon::worker(&spool, W, &agent(&spool), &env);
    assert!(wait_until(DEADLINE, || spool
        .heartbeat(W)
        .is_some_and(|h| h["status"] == "healthy")));
    let l = Listener::ready(&spool, &[], &[]);
    assert_exit_zero(w.stop(), "hw-worker after SIGTERM");

    let e = l.wait_event("worker_disconnected", |d| d["worker"] == W);
    assert_eq!(e["data"]["reason"], "stopped", "{e}");
    assert_eq!(e["data"]["active_task_ids"], json!([]), "{e}");
    assert!(
        worker_events(&l.events(), "worker_unhealthy", W).is_empty(),
        "a stopped worker is not unhealthy: {:#?}",
        l.events()
    );
}

#[test]
fn a_new_worker_without_heartbeat_is_reported_disconnected_at_the_first_run() {
    let spool = Spool::new();
    place(&spool.active("ghost"), "g1.json", &task("g1"));
    let events = once_ok(&spool, &[], &[]);
    let gone = worker_events(&events, "worker_disconnected", "ghost");
    assert_eq!(gone.len(), 1, "{events:#?}");
    let d = &gone[0]["data"];
    assert_eq!(d["reason"], "no heartbeat");
    assert!(d["heartbeat_age_seconds"].is_null());
    assert_eq!(d["active_task_ids"], json!(["g1"]));
}

#[test]
fn a_new_worker_with_an_old_heartbeat_is_reported_disconnected_at_the_first_run() {
    let spool = Spool::new();
    write_heartbeat(&spool, "ghost", 3600.0, 10.0, "healthy");
    place(&spool.active("ghost"), "x.json", &task("g1"));
    place(&spool.active("ghost"), "y.json", &task("g0"));
    let events = once_ok(&spool, &[], &[]);
    let gone = worker_events(&events, "worker_disconnected", "ghost");
    assert_eq!(gone.len(), 1, "{events:#?}");
    let d = &gone[0]["data"];
    assert_eq!(d["reason"], "heartbeat too old");
    assert_eq!(d["active_task_ids"], json!(["g0", "g1"]));
    assert!(worker_events(&events, "worker_unhealthy", "ghost").is_empty());
}

#[test]
fn a_stale_heartbeat_at_the_first_run_is_reported_unhealthy() {
    let spool = Spool::new();
    // Older than 3 intervals, younger than 10.
    write_heartbeat(&spool, W, 50.0, 10.0, "healthy");
    let events = once_ok(&spool, &[], &[]);
    let sick = worker_events(&events, "worker_unhealthy", W);
    assert_eq!(sick.len(), 1, "{events:#?}");
    assert_eq!(sick[0]["data"]["reason"], "heartbeat stale");
    assert!(worker_events(&events, "worker_disconnected", W).is_empty());
}

#[test]
fn a_fresh_heartbeat_gives_no_health_event() {
    let spool = Spool::new();
    write_heartbeat(&spool, W, 1.0, 10.0, "healthy");
    let events = once_ok(&spool, &[], &[]);
    assert!(events.is_empty(), "{events:#?}");
}

#[test]
fn stale_after_and_disconnect_after_replace_the_multiples_of_the_interval() {
    // 5 s old, promising 10 s: healthy by default.
    let stale = Spool::new();
    write_heartbeat(&stale, W, 5.0, 10.0, "healthy");
    let events = once_ok(&stale, &["--stale-after", "2"], &[]);
    assert_eq!(
        worker_events(&events, "worker_unhealthy", W).len(),
        1,
        "{events:#?}"
    );

    let gone = Spool::new();
    write_heartbeat(&gone, W, 5.0, 10.0, "healthy");
    let events = once_ok(&gone, &["--disconnect-after", "4s"], &[]);
    let d = worker_events(&events, "worker_disconnected", W);
    assert_eq!(d.len(), 1, "{events:#?}");
    assert_eq!(d[0]["data"]["reason"], "heartbeat too old");
}

// ---------------------------------------------------------------------------
// Which workers

#[test]
fn a_worker_that_appears_after_the_listener_started_is_followed() {
    let spool = Spool::new();
    let l = Listener::ready(&spool, &[], &[]);
    assert!(l.events().is_empty(), "{:#?}", l.events());
    let _w = Daemon::worker(&spool, "late", &agent(&spool), &[]);
    spool.drop_simple("late", "t1", "hello");
    let e = l.wait_completed("late", "t1");
    assert_eq!(e["data"]["status"], "completed");
}

#[test]
fn a_worker_seen_only_by_its_results_folder_is_followed_when_it_appears() {
    let spool = Spool::new();
    let l = Listener::ready(&spool, &[], &[]);
    write_result(&spool, "newcomer", "t1", "completed");
    l.wait_completed("newcomer", "t1");
    write_result(&spool, "newcomer", "t2", "completed");
    l.wait_completed("newcomer", "t2");
}

#[test]
fn a_removed_and_recreated_results_folder_is_followed_again() {
    let spool = Spool::new();
    fs::create_dir_all(spool.results(W)).unwrap();
    let l = Listener::ready(&spool, &[], &[]);
    write_result(&spool, W, "t1", "completed");
    l.wait_completed(W, "t1");

    // An operator clears the folder; the worker creates it again.
    fs::remove_dir_all(spool.results(W)).unwrap();
    fs::create_dir_all(spool.results(W)).unwrap();
    write_result(&spool, W, "t2", "completed");
    l.wait_completed(W, "t2");
}

#[test]
fn only_the_workers_named_by_the_workers_flag_are_followed() {
    let spool = Spool::new();
    write_result(&spool, "anga", "a1", "completed");
    write_result(&spool, W, "m1", "completed");
    write_result(&spool, "fabien", "f1", "completed");
    let events = once_ok(&spool, &["--workers", "marie,fabien"], &[]);
    assert_eq!(
        keys(&events, "task_completed"),
        ["fabien/f1", format!("{W}/m1").as_str()]
    );
    assert!(
        events.iter().all(|e| e["data"]["worker"] != "anga"),
        "{events:#?}"
    );
}

#[test]
fn the_workers_variable_names_the_workers_followed() {
    let spool = Spool::new();
    write_result(&spool, "anga", "a1", "completed");
    write_result(&spool, W, "m1", "completed");
    let events = once_ok(&spool, &[], &[("WORKERS", "anga")]);
    assert_eq!(keys(&events, "task_completed"), ["anga/a1"]);
    assert!(
        events.iter().all(|e| e["data"]["worker"] == "anga"),
        "{events:#?}"
    );
}

// ---------------------------------------------------------------------------
// batch_completed

#[test]
fn a_batch_with_mixed_outcomes_is_completed_once_with_its_counts() {
    let spool = Spool::new();
    let b = "b-17";
    spool.drop_task(W, "ok-1.json", &batch_task("ok-1", b));
    spool.drop_task(W, "ok-2.json", &batch_task("ok-2", b));
    spool.drop_task(W, "bad-1.json", &batch_task("bad-1", b));
    let mut dep = batch_task("dep-1", b);
    dep["dependencies"] = json!(["bad-1"]);
    spool.drop_task(W, "dep-1.json", &dep);
    spool.drop_simple(W, "other", "not in the batch");
    // The listener learns the batch's members while they are pending.
    once_ok(&spool, &[], &[]);

    let mut l = Listener::ready(&spool, &[], &[]);
    let _w = Daemon::worker(&spool, W, &agent(&spool), &[("MAX_RETRIES", "0")]);
    let e = l.wait_event("batch_completed", |d| d["batch_id"] == b);
    let d = &e["data"];
    assert_eq!(d["total"], 4, "{e}");
    assert_eq!(d["completed"], 2, "{e}");
    assert_eq!(d["failed"], 1, "{e}");
    assert_eq!(d["dead_lettered"], 1, "{e}");
    let events = l.events();
    assert_eq!(count_for(&events, "task_completed", "ok-1"), 1);
    assert_eq!(count_for(&events, "task_completed", "ok-2"), 1);
    assert_eq!(count_for(&events, "task_completed", "bad-1"), 1);
    assert_eq!(count_for(&events, "task_completed", "dep-1"), 0);
    assert_eq!(count_for(&events, "task_dead_lettered", "dep-1"), 1);

    // Later events, then a restart: the batch is not completed again.
    l.wait_completed(W, "other");
    write_result(&spool, "probe", "p1", "completed");
    l.wait_completed("probe", "p1");
    assert_eq!(of_type(&l.events(), "batch_completed").len(), 1);
    assert_exit_zero(l.stop(), "hw-listen after SIGTERM");
    let again = once_ok(&spool, &[], &[]);
    assert!(of_type(&again, "batch_completed").is_empty(), "{again:#?}");
}

#[test]
fn a_batch_whose_records_are_already_there_is_completed_at_catch_up() {
    let spool = Spool::new();
    let meta = json!({"batch_id": "b-9"});
    write_result_with(&spool, W, "a", "completed", meta.clone());
    write_result_with(&spool, W, "b", "failed", meta.clone());
    write_dead_letter_with(&spool, W, "b", "max_retries_exceeded", meta.clone());
    write_dead_letter_with(&spool, W, "c", "dependency_failed", meta.clone());
    write_dead_letter_with(&spool, "anga", "d", "invalid_task", meta);
    let events = once_ok(&spool, &[], &[]);
    let batches = of_type(&events, "batch_completed");
    assert_eq!(batches.len(), 1, "{events:#?}");
    assert_eq!(
        batches[0]["data"],
        json!({"batch_id": "b-9", "total": 4, "completed": 1, "failed": 1, "dead_lettered": 2})
    );
}

#[test]
fn a_batch_with_a_member_still_pending_is_not_completed() {
    let spool = Spool::new();
    place(&spool.tasks(W), "b.json", &batch_task("b", "b-3"));
    write_result_with(&spool, W, "a", "completed", json!({"batch_id": "b-3"}));
    let events = once_ok(&spool, &[], &[]);
    assert!(
        of_type(&events, "batch_completed").is_empty(),
        "{events:#?}"
    );
}

// ---------------------------------------------------------------------------
// --exec

#[test]
fn exec_runs_the_hook_once_per_event_with_the_event_on_stdin_and_hw_event_set() {
    let spool = Spool::new();
    some_records(&spool);
    let log = spool.scratch("hook.log");
    let hook = spool.script(
        "hook.sh",
        &format!(
            r#"line=$(cat)
printf '%s %s\n' "$HW_EVENT" "$line" >> '{}'"#,
            log.display()
        ),
    );
    let hook = hook.display().to_string();
    let run = once(&spool, &["--exec", &hook], &[]);
    assert_exit_zero(run.status, "hw-listen --once --exec");

    assert_eq!(run.lines.len(), 3, "{:#?}", run.lines);
    let expected: Vec<String> = run
        .events
        .iter()
        .zip(&run.lines)
        .map(|(e, line)| format!("{} {line}", e["event_type"].as_str().unwrap()))
        .collect();
    let text = fs::read_to_string(&log).expect("the hook never ran");
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got, expected, "hook runs vs events");
}

#[test]
fn a_failing_hook_is_logged_and_every_event_still_goes_out() {
    let spool = Spool::new();
    some_records(&spool);
    let hook = spool.script("fail.sh", "exit 7");
    let hook = hook.display().to_string();
    let run = once(&spool, &["--exec", &hook], &[]);
    assert_exit_zero(run.status, "hw-listen --once --exec failing hook");
    assert_eq!(run.events.len(), 3, "{:#?}", run.lines);
    let failures = run.stderr.matches("Hook failed").count();
    assert_eq!(failures, 3, "stderr:\n{}", run.stderr);
}

#[test]
fn a_hanging_hook_is_cut_off_at_the_exec_timeout_and_later_events_still_go_out() {
    let spool = Spool::new();
    write_heartbeat(&spool, W, 0.0, 3600.0, "healthy");
    let hooks = Hooks::new(&spool);
    let hook = hooks.hanging(&spool);
    let mut l = Listener::ready(&spool, &["--exec", &hook, "--exec-timeout", "1"], &[]);
    for id in ["a", "b", "c"] {
        write_result(&spool, W, id, "completed");
        l.wait_completed(W, id);
    }

    // Hooks run one after the other: the third ran, so the first two were
    // cut off; and each is gone long before its 60 s.
    assert!(
        wait_until(DEADLINE, || hooks.started().len() == 3),
        "hooks started: {:?}\n{}",
        hooks.started(),
        l.log_text()
    );
    for pid in hooks.started() {
        assert!(
            wait_until(DEADLINE, || !group_alive(pid)),
            "hook {pid} still runs"
        );
    }
    assert!(
        wait_until(DEADLINE, || l.log_text().matches("Hook failed").count()
            == 3),
        "{}",
        l.log_text()
    );
    assert_exit_zero(l.stop(), "hw-listen after SIGTERM");
    assert_eq!(l.events().len(), 3, "{:#?}", l.events());
}

#[test]
fn events_go_out_while_a_hook_still_runs() {
    let spool = Spool::new();
    write_heartbeat(&spool, W, 0.0, 3600.0, "healthy");
    let hooks = Hooks::new(&spool);
    let hook = hooks.hanging(&spool);
    let l = Listener::ready(&spool, &["--exec", &hook, "--exec-timeout", "25"], &[]);
    write_result(&spool, W, "a", "completed");
    l.wait_completed(W, "a");
    assert!(wait_until(DEADLINE, || hooks.started().len() == 1));
    let first = hooks.started()[0];

    write_result(&spool, W, "b", "completed");
    l.wait_completed(W, "b");
    assert!(group_alive(first), "the first hook is no longer running");
    assert_eq!(hooks.started().len(), 1, "the second hook ran early");
}

// ---------------------------------------------------------------------------
// State across runs

#[test]
fn once_twice_the_second_run_emits_nothing() {
    let spool = Spool::new();
    some_records(&spool);
    write_heartbeat(&spool, "anga", 3600.0, 10.0, "healthy");
    let first = once_ok(&spool, &[], &[]);
    assert_eq!(first.len(), 4, "{first:#?}");
    let triggers = trigger_files(&spool).len();

    let second = once(&spool, &[], &[]);
    assert_exit_zero(second.status, "the second hw-listen --once");
    assert!(second.lines.is_empty(), "{:#?}", second.lines);
    assert_eq!(trigger_files(&spool).len(), triggers);
}

#[test]
fn no_result_is_emitted_again_after_a_restart_whatever_its_modification_time() {
    let spool = Spool::new();
    write_heartbeat(&spool, W, 0.0, 3600.0, "healthy");
    // Modification times with all sorts of nanoseconds, an hour ago.
    let secs = unix_now() as u64 - 3600;
    for i in 0..200u32 {
        let id = format!("t-{i:03}");
        let path = write_result(&spool, W, &id, "completed");
        let t = SystemTime::UNIX_EPOCH + Duration::new(secs, i * 4_999_999 + 1);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let first = once_ok(&spool, &[], &[]);
    assert_eq!(of_type(&first, "task_completed").len(), 200);

    let second = once_ok(&spool, &[], &[]);
    assert!(
        second.is_empty(),
        "{} of 200 results emitted again: {:?}",
        second.len(),
        keys(&second, "task_completed")
    );
}

#[test]
fn results_written_while_the_listener_was_down_are_emitted_at_the_next_start() {
    let spool = Spool::new();
    fs::create_dir_all(spool.results(W)).unwrap();
    let mut l = Listener::ready(&spool, &[], &[]);
    write_result(&spool, W, "before", "completed");
    l.wait_completed(W, "before");
    assert_exit_zero(l.stop(), "hw-listen after SIGTERM");

    write_result(&spool, W, "while-down", "completed");
    write_dead_letter(&spool, W, "dead-while-down", "invalid_task");
    write_result(&spool, "anga", "new-worker", "completed");
    let again = Listener::ready(&spool, &[], &[]);
    again.wait_completed(W, "while-down");
    again.wait_completed("anga", "new-worker");
    again.wait_event("task_dead_lettered", |d| d["task_id"] == "dead-while-down");
    let events = again.events();
    assert_eq!(count_for(&events, "task_completed", "before"), 0);
    assert_eq!(
        keys(&events, "task_completed"),
        ["anga/new-worker", format!("{W}/while-down").as_str()]
    );
}

#[test]
fn after_a_crash_nothing_emitted_before_it_is_emitted_again() {
    let spool = Spool::new();
    fs::create_dir_all(spool.results(W)).unwrap();
    let mut l = Listener::ready(&spool, &[], &[]);
    write_result(&spool, W, "a", "completed");
    write_dead_letter(&spool, W, "b", "invalid_task");
    l.wait_completed(W, "a");
    l.wait_event("task_dead_lettered", |d| d["task_id"] == "b");
    // Events go out one after another: once this one is out, what came
    // before it is recorded (only the last one may repeat after a crash).
    write_result(&spool, W, "last", "completed");
    l.wait_completed(W, "last");
    l.crash();

    let events = once_ok(&spool, &[], &[]);
    assert_eq!(count_for(&events, "task_completed", "a"), 0, "{events:#?}");
    assert_eq!(count_for(&events, "task_dead_lettered", "b"), 0);
    assert!(
        worker_events(&events, "worker_disconnected", W).is_empty(),
        "{events:#?}"
    );
}

#[test]
fn a_torn_last_journal_line_is_skipped() {
    let spool = Spool::new();
    fs::create_dir_all(spool.results(W)).unwrap();
    let mut l = Listener::ready(&spool, &[], &[]);
    write_result(&spool, W, "a", "completed");
    l.wait_completed(W, "a");
    write_result(&spool, W, "last", "completed");
    l.wait_completed(W, "last");
    l.crash();
    let journal = spool.root.join(".orchestrator_state.json.journal");
    let mut text = fs::read_to_string(&journal).expect("the journal, after a crash");
    text.push_str("{\"task\":[\"marie/zz\",{\"enqu");
    fs::write(&journal, text).unwrap();

    let run = once(&spool, &[], &[]);
    assert_exit_zero(run.status, "hw-listen --once after a torn journal");
    assert_eq!(count_for(&run.events, "task_completed", "a"), 0);
    assert!(!journal.exists(), "the journal outlived a clean exit");
}

#[test]
fn the_first_run_emits_records_of_any_age() {
    let spool = Spool::new();
    let month = 30.0 * 86_400.0;
    let old = write_result(&spool, W, "old", "completed");
    set_mtime_unix(&old, unix_now() - month);
    let dead = write_dead_letter(&spool, W, "older", "invalid_task");
    set_mtime_unix(&dead, unix_now() - 2.0 * month);
    let events = once_ok(&spool, &[], &[]);
    assert_eq!(keys(&events, "task_completed"), [format!("{W}/old")]);
    assert_eq!(keys(&events, "task_dead_lettered"), [format!("{W}/older")]);
}

#[test]
fn later_runs_skip_new_records_older_than_retain() {
    let spool = Spool::new();
    fs::create_dir_all(spool.results(W)).unwrap();
    once_ok(&spool, &[], &[]);

    let month = 30.0 * 86_400.0;
    let old = write_result(&spool, W, "old", "completed");
    set_mtime_unix(&old, unix_now() - month);
    let dead = write_dead_letter(&spool, W, "old-dead", "invalid_task");
    set_mtime_unix(&dead, unix_now() - month);
    let recent = write_result(&spool, W, "recent", "completed");
    set_mtime_unix(&recent, unix_now() - 86_400.0);
    let events = once_ok(&spool, &[], &[]);
    assert_eq!(keys(&events, "task_completed"), [format!("{W}/recent")]);
    assert!(
        of_type(&events, "task_dead_lettered").is_empty(),
        "{events:#?}"
    );
}

#[test]
fn a_task_forgotten_after_retain_is_not_emitted_again() {
    let spool = Spool::new();
    write_heartbeat(&spool, W, 0.0, 3600.0, "healthy");
    write_result(&spool, W, "t1", "completed");
    let args = ["--retain", "1"];
    let first = once_ok(&spool, &args, &[]);
    assert_eq!(keys(&first, "task_completed"), [format!("{W}/t1")]);

    // Retention is wall-clock time: let it pass, then a run forgets t1.
    std::thread::sleep(Duration::from_millis(1200));
    let second = once_ok(&spool, &args, &[]);
    assert!(second.is_empty(), "{second:#?}");
    let third = once_ok(&spool, &args, &[]);
    assert!(
        third.is_empty(),
        "a result emitted before was emitted again after it was forgotten: {third:#?}"
    );
}

#[test]
fn ten_thousand_results_are_caught_up_in_one_once_run() {
    const N: usize = 10_000;
    let spool = Spool::new();
    write_heartbeat(&spool, W, 0.0, 3600.0, "healthy");
    let dir = spool.results(W);
    fs::create_dir_all(&dir).unwrap();
    for i in 0..N {
        let id = format!("t-{i:05}");
        let record = json!({"task_id": id, "worker": W, "status": "completed",
                            "exit_code": 0, "stdout": "", "stderr": "",
                            "duration_seconds": 0.1, "retry_count": 0});
        fs::write(dir.join(format!("{id}.json")), record.to_string()).unwrap();
    }

    let started = Instant::now();
    let run = once_within(&spool, &[], &[], Duration::from_secs(300));
    let took = started.elapsed();
    eprintln!("hw-listen --once caught up {N} results in {took:?}");
    assert_exit_zero(run.status, "hw-listen --once");

    let done = of_type(&run.events, "task_completed");
    assert_eq!(done.len(), N);
    let mut ids: Vec<&str> = done
        .iter()
        .map(|e| e["data"]["task_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "some task completed twice");
    assert_eq!(
        run.events.len(),
        N,
        "other events: {}",
        run.events.len() - N
    );
    assert_each_line_has_its_trigger(&spool, &run.lines);
}

#[test]
fn the_state_file_is_valid_json_after_sigterm_and_exit_zero() {
    state_saved_at(Signal::SIGTERM);
}

#[test]
fn the_state_file_is_valid_json_after_sigint_and_exit_zero() {
    state_saved_at(Signal::SIGINT);
}

fn state_saved_at(signal: Signal) {
    let spool = Spool::new();
    fs::create_dir_all(spool.results(W)).unwrap();
    let mut l = Listener::ready(&spool, &[], &[]);
    write_result(&spool, W, "a", "completed");
    l.wait_completed(W, "a");
    assert_exit_zero(l.stop_with(signal), &format!("hw-listen after {signal:?}"));

    let path = spool.root.join("orchestrator_state.json");
    let text = fs::read_to_string(&path).expect("no state file after the signal");
    let state: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the state file is not JSON ({e}): {text}"));
    assert!(state.is_object(), "{state}");
    assert!(
        !spool.root.join(".orchestrator_state.json.journal").exists(),
        "the journal outlived a clean exit"
    );
    let again = once_ok(&spool, &[], &[]);
    assert!(again.is_empty(), "{again:#?}");
}

#[test]
fn the_state_file_moves_with_state_file() {
    let spool = Spool::new();
    write_result(&spool, W, "a", "completed");
    let state = spool.scratch("listener.json");
    let env = [("STATE_FILE", state.to_str().unwrap())];
    let first = once_ok(&spool, &[], &env);
    assert_eq!(count_for(&first, "task_completed", "a"), 1);
    assert!(
        read_json(&state).is_some(),
        "no state at {}",
        state.display()
    );
    assert!(!spool.root.join("orchestrator_state.json").exists());
    let second = once_ok(&spool, &[], &env);
    assert!(second.is_empty(), "{second:#?}");

    // --state-file wins over STATE_FILE.
    let other = spool.scratch("other.json");
    let third = once_ok(&spool, &["--state-file", other.to_str().unwrap()], &env);
    assert_eq!(count_for(&third, "task_completed", "a"), 1);
    assert!(read_json(&other).is_some());
}

#[test]
fn a_state_file_in_a_folder_not_yet_there_gets_its_folder() {
    let spool = Spool::new();
    write_result(&spool, W, "a", "completed");
    let state = spool.scratch("state/listener.json");
    let env = [("STATE_FILE", state.to_str().unwrap())];
    let run = once(&spool, &[], &env);
    assert_exit_zero(run.status, &format!("hw-listen --once:\n{}", run.stderr));
    assert!(
        read_json(&state).is_some(),
        "no state at {}",
        state.display()
    );
    let second = once_ok(&spool, &[], &env);
    assert!(second.is_empty(), "{second:#?}");
}

#[test]
fn a_corrupt_state_file_is_a_one_line_error_and_exit_65() {
    let spool = Spool::new();
    write_result(&spool, W, "a", "completed");
    let path = spool.root.join("orchestrator_state.json");
    fs::write(&path, b"{\"version\": 1, \"tasks\": {tor").unwrap();
    let run = once(&spool, &[], &[]);
    assert_eq!(run.status.code(), Some(65), "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {}", run.stderr);
    assert!(lines[0].starts_with("hw-listen: "), "{}", lines[0]);
    assert!(
        lines[0].contains(&path.display().to_string()),
        "the error does not name the state file: {}",
        lines[0]
    );
    assert!(run.lines.is_empty(), "emitted: {:#?}", run.lines);
    assert!(trigger_files(&spool).is_empty());
    assert_eq!(
        fs::read(&path).unwrap(),
        b"{\"version\": 1, \"tasks\": {tor",
        "the state file was changed"
    );
}

// ---------------------------------------------------------------------------
// Command line

#[test]
fn help_and_version_go_to_stdout_and_exit_zero() {
    let spool = Spool::new();
    let help = run_tool(&spool, "hw-listen", &["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--once",
        "--exec",
        "--exec-timeout",
        "--workers",
        "--retain",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let version = run_tool(&spool, "hw-listen", &["--version"], &[]);
    assert_eq!(version.status.code(), Some(0));
    let first = String::from_utf8_lossy(&version.stdout);
    assert!(first.starts_with("hw-listen "), "{first}");
}

#[test]
fn a_bad_value_is_a_one_line_error_naming_it_and_exit_78() {
    let spool = Spool::new();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["--exec-timeout", "0"], &[], "--exec-timeout"),
        (&["--retain", "soon"], &[], "--retain"),
        (&[], &[("COMPLETION_TIMEOUT", "-3")], "COMPLETION_TIMEOUT"),
        (&[], &[("WORKERS", "marie,../etc")], "WORKERS"),
    ];
    for (args, env, name) in cases {
        let run = once(&spool, args, env);
        assert_eq!(
            run.status.code(),
            Some(78),
            "{args:?} {env:?}: {}",
            run.stderr
        );
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} {env:?}: {}", run.stderr);
        assert!(lines[0].contains(name), "{}", lines[0]);
        assert!(run.lines.is_empty());
    }
    assert!(trigger_files(&spool).is_empty(), "it started anyway");
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let spool = Spool::new();
    let run = once(&spool, &["--frobnicate"], &[]);
    assert_eq!(run.status.code(), Some(64), "{}", run.stderr);
}

#[test]
fn a_dead_instance_behind_a_live_one_is_reported_lost_once_and_the_name_stays_healthy() {
    let spool = Spool::new();
    let env = [("HEARTBEAT_INTERVAL", "0.2")];
    let mut a = Daemon::worker(&spool, W, &agent(&spool), &env);
    assert!(wait_until(DEADLINE, || spool.heartbeat(W).is_some()));
    let _b = Daemon::worker(&spool, W, &agent(&spool), &env);
    let beats = spool.root.join("heartbeats");
    assert!(wait_until(DEADLINE, || spool
        .names(&beats)
        .iter()
        .filter(|n| n.starts_with(&format!("{W}@")))
        .count()
        == 2));
    let l = Listener::ready(&spool, &[], &[]);
    let seen = l.events().len();
    a.crash();
    let lost = l.wait_event_after(seen, "worker_instance_lost", |d| d["worker"] == W);
    let d = &lost["data"];
    assert_eq!(d["pid"], a.pid(), "{lost}");
    assert!(
        d["instance"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{W}@")),
        "{lost}"
    );
    assert!(
        d["heartbeat_age_seconds"].as_f64().unwrap() >= 0.6,
        "{lost}"
    );
    // Once, and the name as a whole is never unhealthy.
    assert!(
        holds_for(Duration::from_secs(2), || {
            let after = l.events().split_off(seen);
            worker_events(&after, "worker_instance_lost", W).len() == 1
                && worker_events(&after, "worker_unhealthy", W).is_empty()
                && worker_events(&after, "worker_disconnected", W).is_empty()
        }),
        "{:#?}",
        l.events()
    );
}
