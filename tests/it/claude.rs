//! hw-worker and the Claude CLI (hw-worker(8), Running the command and
//! The Claude CLI's answer), with the bundled stand-in `examples/claude`,
//! which parses options like the real CLI and answers in its JSON shapes:
//! the argv, the prompt on stdin, the result object, the failure classes
//! and the pauses they cause, the task's options, the spend and the
//! daily budget, and the start-up checks.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use serde_json::{json, Value};

const W: &str = "marie";

/// The stand-in, as shipped.
fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/claude")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `hw-worker W ARGS…` running the stand-in (or `command`), with `env`.
fn worker(spool: &Spool, command: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut all = vec![("CLAUDE_COMMAND", command)];
    all.extend_from_slice(env);
    let mut argv = vec![W];
    argv.extend_from_slice(args);
    Daemon::start(spool, "hw-worker", &argv, &all)
}

fn standin_worker(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    worker(spool, &quoted(&standin()), args, env)
}

/// A path as one word of a command line.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The arguments the stand-in got, from `STANDIN_ARGS` (NUL-terminated).
fn args_of(file: &Path) -> Vec<String> {
    let bytes = fs::read(file).unwrap_or_default();
    bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn wait_heartbeat(spool: &Spool, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = spool.heartbeat(W).unwrap_or(Value::Null);
        cond(&last)
    });
    assert!(
        ok,
        "no heartbeat with {what} within {DEADLINE:?}; last: {last}"
    );
    last
}

/// One plain HTTP GET: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

fn metrics_addr(spool: &Spool) -> String {
    let beat = wait_heartbeat(spool, "a metrics address", |b| {
        b["metrics_addr"].is_string()
    });
    beat["metrics_addr"].as_str().unwrap().to_string()
}

/// The value of one sample of the exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

// 1. Prompt passing.

#[test]
fn a_description_starting_with_a_dash_is_the_prompt_not_an_option() {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let args_s = args.display().to_string();
    let _w = standin_worker(&spool, &[], &[("STANDIN_ARGS", &args_s)]);
    spool.drop_simple(W, "bullet", "- fix the login bug");
    let r = spool.wait_result(W, "bullet");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["stdout"], "done: - fix the login bug");
    assert_eq!(
        args_of(&args),
        ["--output-format", "json", "-p", "--", "- fix the login bug"]
    );
}

#[test]
fn a_prompt_of_128_kib_or_more_goes_to_stdin_without_a_prompt_argument() {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let args_s = args.display().to_string();
    let _w = standin_worker(&spool, &[], &[("STANDIN_ARGS", &args_s)]);
    let long = "z".repeat(200_000);
    spool.drop_simple(W, "long", &long);
    let r = spool.wait_result(W, "long");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["stdout"].as_str().unwrap(), format!("done: {long}"));
    assert_eq!(args_of(&args), ["--output-format", "json", "-p"]);
}

#[test]
fn the_command_is_split_like_a_shell_splits_words() {
    let spool = Spool::new();
    let dir = spool.scratch("a folder with spaces");
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("claude");
    fs::copy(standin(), &copy).unwrap();
    let args = spool.scratch("args");
    let args_s = args.display().to_string();
    let command = format!("{} --append-system-prompt \"be brief\"", quoted(&copy));
    let _w = worker(&spool, &command, &[], &[("STANDIN_ARGS", &args_s)]);
    spool.drop_simple(W, "q", "hello");
    let r = spool.wait_result(W, "q");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(
        args_of(&args),
        [
            "--append-system-prompt",
            "be brief",
            "--output-format",
            "json",
            "-p",
            "--",
            "hello"
        ]
    );
}

#[test]
fn an_output_format_in_the_command_is_kept_and_none_is_added() {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let args_s = args.display().to_string();
    let command = format!("{} --output-format=text", quoted(&standin()));
    let _w = worker(&spool, &command, &[], &[("STANDIN_ARGS", &args_s)]);
    spool.drop_simple(W, "t", "plain");
    let r = spool.wait_result(W, "t");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["stdout"], "done: plain\n");
    assert!(r.get("agent").is_none(), "{r}");
    assert_eq!(
        args_of(&args),
        ["--output-format=text", "-p", "--", "plain"]
    );
}

// 2. The result object.

#[test]
fn the_result_file_gains_agent_and_stdout_becomes_the_answer() {
    let spool = Spool::new();
    let _w = standin_worker(&spool, &[], &[]);
    spool.drop_simple(W, "a", "summarise");
    let r = spool.wait_result(W, "a");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["stdout"], "done: summarise");
    let agent = &r["agent"];
    assert_eq!(agent["type"], "result");
    assert_eq!(agent["subtype"], "success");
    assert_eq!(agent["is_error"], false);
    assert_eq!(agent["total_cost_usd"], 0.0123);
    assert_eq!(agent["num_turns"], 1);
    assert_eq!(agent["usage"]["output_tokens"], 34);
    assert!(agent["session_id"].is_string());
    assert!(
        agent.get("result").is_none(),
        "the answer is stdout: {agent}"
    );
}

#[test]
fn a_stream_json_result_keeps_the_stream_and_agent_has_the_answer() {
    let spool = Spool::new();
    let command = format!(
        "{} --verbose --output-format stream-json",
        quoted(&standin())
    );
    let _w = worker(&spool, &command, &[], &[]);
    spool.drop_simple(W, "s", "stream it");
    let r = spool.wait_result(W, "s");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["stdout"].as_str().unwrap().lines().count(), 3, "{r}");
    assert_eq!(r["agent"]["result"], "done: stream it");
}

#[test]
fn a_json_line_that_is_not_a_result_object_fails_nothing() {
    let spool = Spool::new();
    let agent = spool.script(
        "agent.sh",
        r#"echo 'The log said:'; echo '{"is_error": true, "message": "quoted"}'"#,
    );
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    spool.drop_simple(W, "quote", "x");
    let r = spool.wait_result(W, "quote");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["retry_count"], 0);
}

#[test]
fn an_error_in_an_answer_larger_than_max_output_is_still_seen() {
    let spool = Spool::new();
    let agent = spool.script(
        "agent.sh",
        r#"printf '{"type":"result","is_error":true,"result":"'; head -c 3145728 /dev/zero | tr '\0' x; printf '"}\n'"#,
    );
    let _w = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    spool.drop_simple(W, "big", "x");
    let r = spool.wait_result(W, "big");
    assert_eq!(r["status"], "failed", "{r:.200}");
    assert_eq!(r["error"], "agent_reported_error");
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(r["agent_error"].as_str().unwrap().len(), 1024);
}

// 3. Failure classes.

/// The one attempt of a task that cannot succeed: its result, and its
/// dead letter.
fn failed_once(keyword: &str) -> (Value, Vec<Value>) {
    let spool = Spool::new();
    let _w = standin_worker(
        &spool,
        &["--breaker-threshold", "1"],
        &[("MAX_RETRIES", "3")],
    );
    spool.drop_simple(W, "t", keyword);
    let r = spool.wait_result(W, "t");
    (r, spool.dlq_records(W))
}

#[test]
fn error_max_turns_is_dead_lettered_after_one_attempt_as_not_retryable() {
    let (r, dead) = failed_once("MAX_TURNS");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"], "not_retryable");
    assert_eq!(r["retry_count"], 0, "one attempt: {r}");
    assert_eq!(r["agent"]["subtype"], "error_max_turns");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["dlq_reason"], "not_retryable");
    assert_eq!(dead[0]["last_error"], "error_max_turns");
    assert_eq!(dead[0]["error"], "not_retryable");
}

#[test]
fn an_overloaded_api_is_retried_and_classed_overloaded() {
    let spool = Spool::new();
    let _w = standin_worker(
        &spool,
        &[],
        &[("MAX_RETRIES", "1"), ("INITIAL_RETRY_DELAY", "0.05")],
    );
    spool.drop_simple(W, "o", "OVERLOADED");
    let r = spool.wait_result(W, "o");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"], "overloaded");
    assert_eq!(r["retry_count"], 1, "retried: {r}");
    assert!(
        r["agent_error"]
            .as_str()
            .unwrap()
            .contains("overloaded_error"),
        "{r}"
    );
    let dead = spool.dlq_records(W);
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("overloaded: "),
        "{dead:?}"
    );
}

/// A usage limit with a reset time: the worker claims nothing until then,
/// charges no attempt and does not feed the breaker; then every task
/// runs. With 50 tasks and one slot, one attempt meets the limit.
#[test]
fn a_usage_limit_pauses_claims_until_its_reset_and_charges_nothing() {
    let spool = Spool::new();
    let runs = spool.scratch("runs");
    let wrapper = spool.script(
        "claude",
        &format!(
            "date +%s.%N >> '{}'\nexec {} \"$@\"",
            runs.display(),
            quoted(&standin())
        ),
    );
    let reset = unix_now().ceil() as u64 + 3;
    let reset_s = reset.to_string();
    let w = worker(
        &spool,
        &quoted(&wrapper),
        &["-c", "1", "--breaker-threshold", "1"],
        &[("STANDIN_LIMIT_UNTIL", &reset_s), ("MAX_RETRIES", "3")],
    );
    let addr = metrics_addr(&spool);
    for i in 0..50 {
        spool.drop_simple(W, &format!("t{i:02}"), "work");
    }
    let beat = wait_heartbeat(&spool, "status paused", |b| b["status"] == "paused");
    assert_eq!(beat["paused_reason"], "rate_limited");
    let until = beat["paused_until"].as_str().unwrap().to_string();
    assert!(
        until.starts_with(&rfc3339_ms(reset as i64 * 1000)[..19]),
        "{until} vs {reset}"
    );
    let (code, _) = http_get(&addr, "/healthz");
    assert_eq!(code, 503, "healthz while paused");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert_eq!(
        sample(
            &metrics,
            r#"watcher_worker_paused{worker="marie",reason="rate_limited"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"watcher_circuit_breaker_state{worker="marie"}"#),
        Some(0.0)
    );
    for i in 0..50 {
        let r = spool.wait_result(W, &format!("t{i:02}"));
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["retry_count"], 0, "no attempt charged: {r}");
    }
    let times: Vec<f64> = file_lines(&runs)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    let before: Vec<&f64> = times.iter().filter(|t| **t < reset as f64).collect();
    assert_eq!(
        before.len(),
        1,
        "runs before the reset at {reset}: {before:?}"
    );
    assert_eq!(times.len(), 51, "50 tasks, one refused attempt");
    eprintln!(
        "50 tasks behind a usage limit: {} runs of the agent; retried at once with back-off they would have taken 200",
        times.len()
    );
    assert!(spool.dlq_records(W).is_empty());
    let (_, metrics) = http_get(&addr, "/metrics");
    assert_eq!(
        sample(
            &metrics,
            r#"watcher_tasks_failed_total{worker="marie",reason="rate_limited"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"watcher_worker_paused{worker="marie",reason="rate_limited"}"#
        ),
        Some(0.0)
    );
    w.expect_log("Worker paused");
    w.expect_log("Worker resumed");
}

#[test]
fn a_clock_time_reset_in_a_named_zone_gives_paused_until() {
    let spool = Spool::new();
    let _w = standin_worker(&spool, &[], &[]);
    spool.drop_simple(W, "z", "HIT_LIMIT");
    let beat = wait_heartbeat(&spool, "status paused", |b| b["status"] == "paused");
    // 3:30am in Paris is 01:30 or 02:30 UTC, within a day.
    let until = beat["paused_until"].as_str().unwrap();
    assert!(
        until.ends_with(":30:00.000Z") && ["01", "02"].contains(&&until[11..13]),
        "{until}"
    );
    let secs = (rfc3339_secs(until) - unix_now()).round();
    assert!((0.0..=86_400.0).contains(&secs), "{until} is {secs} s away");
    let deferred = json_files(&spool.deferred(W));
    assert_eq!(deferred.len(), 1, "the task waits in .deferred/");
    let task = read_json(&deferred[0]).unwrap();
    assert_eq!(task["retry_count"], 0, "no attempt charged: {task}");
    assert!(
        task["last_error"]
            .as_str()
            .unwrap()
            .starts_with("rate_limited: "),
        "{task}"
    );
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` as Unix seconds.
fn rfc3339_secs(s: &str) -> f64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as f64
}

/// A broken login: nothing is charged or dead-lettered; one task probes
/// now and then; once the login works, every task runs.
#[test]
fn a_failed_login_pauses_and_probes_until_it_works() {
    let spool = Spool::new();
    let login = spool.scratch("logged-in");
    let login_s = login.display().to_string();
    let w = standin_worker(
        &spool,
        &["--pause-backoff", "0.3", "-c", "2"],
        &[("STANDIN_LOGIN_FILE", &login_s)],
    );
    let addr = metrics_addr(&spool);
    for i in 0..5 {
        spool.drop_simple(W, &format!("t{i}"), "work");
    }
    let beat = wait_heartbeat(&spool, "status paused", |b| b["status"] == "paused");
    assert_eq!(beat["paused_reason"], "auth_failed");
    assert_eq!(http_get(&addr, "/healthz").0, 503);
    let status = run_tool(&spool, "hw-status", &[], &[]);
    assert_exit(&status, 1);
    assert!(
        stdout(&status).contains("marie: paused (auth_failed)"),
        "{}",
        stdout(&status)
    );
    // A few probes go and are refused before the login is mended.
    assert!(w.wait_log("Worker paused"));
    std::thread::sleep(Duration::from_millis(800));
    fs::write(&login, "").unwrap();
    for i in 0..5 {
        let r = spool.wait_result(W, &format!("t{i}"));
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["retry_count"], 0, "{r}");
    }
    assert!(spool.dlq_records(W).is_empty());
    let beat = wait_heartbeat(&spool, "status healthy", |b| b["status"] == "healthy");
    assert!(beat.get("paused_reason").is_none(), "{beat}");
    let log = w.log_text();
    assert!(log.matches("Task not run").count() >= 2, "probes: {log}");
}

#[test]
fn an_expired_oauth_token_is_auth_failed() {
    let spool = Spool::new();
    let _w = standin_worker(&spool, &["--pause-backoff", "60"], &[]);
    spool.drop_simple(W, "t", "AUTH");
    let beat = wait_heartbeat(&spool, "status paused", |b| b["status"] == "paused");
    assert_eq!(beat["paused_reason"], "auth_failed");
    assert!(spool.dlq_records(W).is_empty());
    assert!(spool.result(W, "t").is_none());
}

#[test]
fn a_pause_survives_a_restart() {
    let spool = Spool::new();
    let until = unix_now().ceil() as u64 + 60;
    let until_s = until.to_string();
    let mut w = standin_worker(&spool, &[], &[("STANDIN_LIMIT_UNTIL", &until_s)]);
    spool.drop_simple(W, "t", "work");
    wait_heartbeat(&spool, "status paused", |b| b["status"] == "paused");
    w.stop();
    let runs = spool.scratch("runs");
    let runs_s = runs.display().to_string();
    let _w = standin_worker(&spool, &[], &[("STANDIN_ARGS", &runs_s)]);
    let beat = wait_heartbeat(&spool, "a paused restart", |b| {
        b["status"] == "paused" && b["uptime_seconds"] == 0
    });
    assert_eq!(beat["paused_reason"], "rate_limited");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !runs.exists(),
        "the restarted worker claimed during the pause"
    );
}

// 4. The task's options.

#[test]
fn task_options_become_flags_before_the_prompt() {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let args_s = args.display().to_string();
    fs::create_dir_all(spool.root.join("repo/sub")).unwrap();
    let root = spool.root.display().to_string();
    let _w = standin_worker(&spool, &["--workdir", &root], &[("STANDIN_ARGS", &args_s)]);
    let task = json!({"task_id": "o", "description": "go", "model": "claude-sonnet-4-5[1m]",
        "max_turns": 3, "max_budget_usd": 0.5, "allowed_tools": ["Read", "Bash(git log:*)"],
        "append_system_prompt": "-be terse", "resume": "a-session", "workdir": "repo/sub"});
    spool.drop_task(W, "o.json", &task);
    let r = spool.wait_result(W, "o");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(
        args_of(&args),
        [
            "--output-format",
            "json",
            "--model=claude-sonnet-4-5[1m]",
            "--max-turns=3",
            "--max-budget-usd=0.5",
            "--append-system-prompt=-be terse",
            "--resume=a-session",
            "--allowedTools",
            "Read",
            "Bash(git log:*)",
            "-p",
            "--",
            "go"
        ]
    );
}

#[test]
fn the_agent_runs_in_the_tasks_workdir_below_the_workers() {
    let spool = Spool::new();
    let base = spool.scratch("base");
    fs::create_dir_all(base.join("repo")).unwrap();
    let agent = spool.script("agent.sh", "pwd");
    let base_s = base.display().to_string();
    let command = quoted(&agent);
    let _w = worker(&spool, &command, &["--workdir", &base_s], &[]);
    let task = json!({"task_id": "wd", "description": "where", "workdir": "repo"});
    spool.drop_task(W, "wd.json", &task);
    let r = spool.wait_result(W, "wd");
    assert_eq!(
        r["stdout"].as_str().unwrap().trim(),
        base.join("repo").display().to_string()
    );
}

#[test]
fn bad_task_options_are_invalid_tasks() {
    let spool = Spool::new();
    let base = spool.scratch("base");
    fs::create_dir_all(base.join("real")).unwrap();
    std::os::unix::fs::symlink("/etc", base.join("link")).unwrap();
    let base_s = base.display().to_string();
    let _w = standin_worker(&spool, &["--workdir", &base_s], &[]);
    let cases = [
        ("m", json!({"model": "-x"}), "model"),
        ("t", json!({"max_turns": 0}), "max_turns"),
        ("b", json!({"max_budget_usd": "lots"}), "max_budget_usd"),
        (
            "a",
            json!({"allowed_tools": ["--dangerously-skip-permissions"]}),
            "allowed_tools",
        ),
        ("r", json!({"resume": ""}), "resume"),
        ("up", json!({"workdir": "../base"}), "workdir"),
        ("link", json!({"workdir": "link"}), "workdir"),
        ("gone", json!({"workdir": "real/gone"}), "workdir"),
    ];
    for (id, extra, _) in &cases {
        let mut task = json!({"task_id": id, "description": "d"});
        task.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spool.drop_task(W, &format!("{id}.json"), &task);
    }
    let dead = spool.wait_dlq(W, cases.len());
    for (id, _, key) in cases {
        let d = dead
            .iter()
            .find(|d| d["original_name"] == format!("{id}.json"))
            .unwrap();
        assert_eq!(d["dlq_reason"], "invalid_task", "{d}");
        assert!(
            d["last_error"].as_str().unwrap().starts_with(key),
            "{id}: {d}"
        );
    }
}

#[test]
fn hw_enqueue_has_a_flag_for_each_option() {
    let spool = Spool::new();
    let out = run_tool(
        &spool,
        "hw-enqueue",
        &[
            "--id",
            "e",
            "--model",
            "opus",
            "--max-turns",
            "5",
            "--max-budget-usd",
            "1.5",
            "--allowed-tools",
            "Read",
            "--allowed-tools",
            "Bash(ls:*)",
            "--append-system-prompt",
            "be brief",
            "--resume",
            "s-1",
            "--workdir",
            "repo",
            W,
            "- a bullet",
        ],
        &[],
    );
    assert_exit(&out, 0);
    let task = read_json(&spool.tasks(W).join("e.json")).unwrap();
    assert_eq!(task["description"], "- a bullet");
    assert_eq!(task["model"], "opus");
    assert_eq!(task["max_turns"], 5);
    assert_eq!(task["max_budget_usd"], 1.5);
    assert_eq!(task["allowed_tools"], json!(["Read", "Bash(ls:*)"]));
    assert_eq!(task["append_system_prompt"], "be brief");
    assert_eq!(task["resume"], "s-1");
    assert_eq!(task["workdir"], "repo");
    for (flag, value) in [
        ("--max-turns", "0"),
        ("--max-turns", "many"),
        ("--model", "-x"),
        ("--workdir", "../x"),
        ("--max-budget-usd", "-1"),
    ] {
        let out = run_tool(&spool, "hw-enqueue", &[flag, value, W, "d"], &[]);
        assert_exit(&out, 78);
        assert!(
            stderr(&out).contains(&format!("for {flag}")),
            "{flag}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_generic_command_ignores_the_options() {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let agent = spool.script(
        "agent.sh",
        &format!(
            r#"for a in "$@"; do printf '%s\0' "$a"; done > '{}'"#,
            args.display()
        ),
    );
    let command = format!("{} -p {{}}", quoted(&agent));
    let _w = worker(&spool, &command, &[], &[]);
    let task = json!({"task_id": "g", "description": "d", "model": "opus", "max_turns": 2});
    spool.drop_task(W, "g.json", &task);
    spool.wait_result(W, "g");
    assert_eq!(args_of(&args), ["-p", "d"]);
}

// 5. Spend.

#[test]
fn spend_is_counted_in_metrics_heartbeat_and_hw_status() {
    let spool = Spool::new();
    let _w = standin_worker(&spool, &[], &[("STANDIN_COST", "0.25")]);
    let addr = metrics_addr(&spool);
    for i in 0..3 {
        spool.drop_simple(W, &format!("s{i}"), "work");
    }
    for i in 0..3 {
        spool.wait_result(W, &format!("s{i}"));
    }
    let (_, m) = http_get(&addr, "/metrics");
    let w = r#"{worker="marie"}"#;
    assert_eq!(
        sample(&m, &format!("watcher_agent_cost_usd_total{w}")),
        Some(0.75)
    );
    assert_eq!(
        sample(&m, &format!("watcher_agent_cost_usd_today{w}")),
        Some(0.75)
    );
    assert_eq!(
        sample(&m, &format!("watcher_agent_turns_total{w}")),
        Some(3.0)
    );
    for (kind, n) in [
        ("input", 36.0),
        ("output", 102.0),
        ("cache_read", 300.0),
        ("cache_creation", 15.0),
    ] {
        let series = format!(r#"watcher_agent_tokens_total{{worker="marie",type="{kind}"}}"#);
        assert_eq!(sample(&m, &series), Some(n), "{series}");
    }
    assert!(
        !m.contains("watcher_agent_daily_budget_usd"),
        "no budget, no series"
    );
    let beat = wait_heartbeat(&spool, "the spend", |b| b["cost_usd_today"] == 0.75);
    assert_eq!(beat["status"], "healthy");
    let json_status = run_tool(&spool, "hw-status", &["--json"], &[]);
    let report: Value = serde_json::from_str(&stdout(&json_status)).unwrap();
    assert_eq!(report["workers"][W]["cost_usd_today"], 0.75);
    let table = stdout(&run_tool(&spool, "hw-status", &[], &[]));
    assert!(table.contains("COST") && table.contains("$0.75"), "{table}");
}

#[test]
fn a_daily_budget_spent_pauses_until_the_next_utc_day_and_survives_a_restart() {
    let spool = Spool::new();
    let env = [("STANDIN_COST", "0.4")];
    let mut w = standin_worker(&spool, &["-c", "1", "--daily-budget-usd", "1"], &env);
    for i in 0..4 {
        spool.drop_simple(W, &format!("b{i}"), "work");
    }
    let beat = wait_heartbeat(&spool, "a budget pause", |b| b["status"] == "paused");
    assert_eq!(beat["paused_reason"], "budget");
    let until = rfc3339_secs(beat["paused_until"].as_str().unwrap());
    let midnight = ((unix_now() / 86_400.0).floor() + 1.0) * 86_400.0;
    assert_eq!(until, midnight, "{beat}");
    // The third result may still be on its way to the disk (group
    // commit) when the pause is written.
    let done = || {
        (0..4)
            .filter(|i| spool.result(W, &format!("b{i}")).is_some())
            .count()
    };
    wait_until(DEADLINE, || done() >= 3);
    assert_eq!(done(), 3, "0.4 + 0.4 + 0.4 reaches 1: then nothing more");
    assert!(
        (beat["cost_usd_today"].as_f64().unwrap() - 1.2).abs() < 1e-9,
        "{beat}"
    );
    w.stop();
    let _w = standin_worker(&spool, &["-c", "1", "--daily-budget-usd", "1"], &env);
    let beat = wait_heartbeat(&spool, "a restarted budget pause", |b| {
        b["status"] == "paused" && b["uptime_seconds"] == 0
    });
    assert!(
        (beat["cost_usd_today"].as_f64().unwrap() - 1.2).abs() < 1e-9,
        "{beat}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        spool.result(W, "b3").is_none(),
        "ran past the budget after a restart"
    );
}

// 6. Start-up checks.

#[test]
fn a_program_that_is_not_found_or_cannot_run_is_a_configuration_error() {
    let spool = Spool::new();
    let not_exec = spool.scratch("not-exec");
    fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let missing = spool.scratch("missing").display().to_string();
    let not_exec = not_exec.display().to_string();
    for (command, says) in [
        ("no-such-claude-here", "not found on PATH"),
        (missing.as_str(), "No such file"),
        (not_exec.as_str(), "not an executable file"),
        ("'open quote", "open quote"),
    ] {
        let out = run_tool(&spool, "hw-worker", &[W], &[("CLAUDE_COMMAND", command)]);
        assert_exit(&out, 78);
        let err = stderr(&out);
        assert!(
            err.contains("for CLAUDE_COMMAND") && err.contains(says),
            "{command}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let out = run_tool(
        &spool,
        "hw-worker",
        &["--command", "no-such-claude-here", W],
        &[],
    );
    assert_exit(&out, 78);
    assert!(stderr(&out).contains("for --command"), "{}", stderr(&out));
}

#[test]
fn stream_json_without_verbose_is_a_configuration_error() {
    let spool = Spool::new();
    let command = format!("{} --output-format stream-json", quoted(&standin()));
    let out = run_tool(&spool, "hw-worker", &[W], &[("CLAUDE_COMMAND", &command)]);
    assert_exit(&out, 78);
    assert!(stderr(&out).contains("--verbose"), "{}", stderr(&out));
}

#[test]
fn an_unreadable_system_prompt_file_is_a_configuration_error() {
    let spool = Spool::new();
    let missing = spool.scratch("prompt.txt").display().to_string();
    let out = run_tool(
        &spool,
        "hw-worker",
        &["--system-prompt-file", &missing, W],
        &[],
    );
    assert_exit(&out, 78);
    assert!(
        stderr(&out).contains("for --system-prompt-file"),
        "{}",
        stderr(&out)
    );
    let folder = spool.scratch("").display().to_string();
    let out = run_tool(
        &spool,
        "hw-worker",
        &[W],
        &[("SYSTEM_PROMPT_FILE", &folder)],
    );
    assert_exit(&out, 78);
    assert!(
        stderr(&out).contains("for SYSTEM_PROMPT_FILE: not a regular file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_relative_system_prompt_file_is_made_absolute() {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let args_s = args.display().to_string();
    fs::write(spool.scratch("prompt.txt"), "be brief").unwrap();
    let mut cmd = tool_command(
        &spool,
        "hw-worker",
        &["--system-prompt-file", "prompt.txt", W],
        &[],
    );
    cmd.current_dir(spool.scratch(""))
        .env("CLAUDE_COMMAND", quoted(&standin()))
        .env("STANDIN_ARGS", &args_s);
    let _w = Daemon::spawn(&spool, "worker", cmd);
    spool.drop_simple(W, "p", "d");
    spool.wait_result(W, "p");
    let got = args_of(&args);
    let file = spool.scratch("prompt.txt").display().to_string();
    assert_eq!(got[..2], ["--system-prompt-file".to_string(), file]);
}

#[test]
fn the_start_line_names_the_root_the_command_and_the_pool_size() {
    let spool = Spool::new();
    let w = standin_worker(&spool, &["-c", "4"], &[]);
    let root = spool.root.display().to_string();
    assert!(w.wait_log("Worker started on"), "{}", w.log_text());
    let line = w
        .log_text()
        .lines()
        .find(|l| l.contains("Worker started on"))
        .unwrap()
        .to_string();
    assert!(line.contains(&root), "{line}");
    assert!(line.contains("examples/claude"), "{line}");
    assert!(
        line.contains("--output-format json -p -- DESCRIPTION"),
        "{line}"
    );
    assert!(line.contains("4 at once"), "{line}");
}

// The listener's view of a pause.

#[test]
fn hw_listen_emits_worker_paused_then_worker_resumed() {
    let spool = Spool::new();
    let reset = unix_now().ceil() as u64 + 2;
    let reset_s = reset.to_string();
    let _w = standin_worker(&spool, &[], &[("STANDIN_LIMIT_UNTIL", &reset_s)]);
    let listener = Daemon::spawn(&spool, "listen", listener_command(&spool, &[], &[]));
    spool.drop_simple(W, "t", "work");
    spool.wait_result(W, "t");
    let ok = wait_until(DEADLINE, || {
        listener
            .events()
            .iter()
            .any(|e| e["event_type"] == "worker_resumed")
    });
    let events = listener.events();
    assert!(ok, "{events:?}");
    let paused: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "worker_paused")
        .collect();
    assert_eq!(paused.len(), 1, "{events:?}");
    assert_eq!(paused[0]["data"]["worker"], W);
    assert_eq!(paused[0]["data"]["paused_reason"], "rate_limited");
    assert!(paused[0]["data"]["paused_until"].is_string());
    let resumed = events
        .iter()
        .find(|e| e["event_type"] == "worker_resumed")
        .unwrap();
    assert_eq!(resumed["data"]["paused_reason"], "rate_limited");
}

// 8. The Claude Code hook in contrib/.

#[test]
fn the_stop_hook_enqueues_a_review_task_from_the_hook_input() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("")
        .status()
        .is_err()
    {
        eprintln!("skipped: no python3 for contrib/claude-code/enqueue-review");
        return;
    }
    let spool = Spool::new();
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/claude-code/enqueue-review");
    let input = fs::read(hook.with_file_name("stop-hook-input.json")).unwrap();
    let enqueue = bin("hw-enqueue").display().to_string();
    let run = |input: &[u8]| {
        let mut hook_cmd = std::process::Command::new(&hook);
        hook_cmd
            .envs(base_env(&spool))
            .env("HW_ENQUEUE", &enqueue)
            .env("REVIEW_WORKER", "anga")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        finish(hook_cmd.spawn().unwrap(), input, "enqueue-review")
    };
    let out = run(&input);
    assert_exit(&out, 0);
    let tasks = json_files(&spool.tasks("anga"));
    assert_eq!(tasks.len(), 1, "{}", stderr(&out));
    let task = read_json(&tasks[0]).unwrap();
    assert!(
        task["description"]
            .as_str()
            .unwrap()
            .contains("/home/dev/shop"),
        "{task}"
    );
    let meta = &task["metadata"];
    assert_eq!(meta["session_id"], "3b1f5f2e-6c1e-4d1a-9d55-1b5c2e0f7a10");
    assert_eq!(meta["cwd"], "/home/dev/shop");
    assert_eq!(
        meta["batch_id"],
        "review-3b1f5f2e-6c1e-4d1a-9d55-1b5c2e0f7a10"
    );
    assert!(stderr(&out).contains("review task"), "{}", stderr(&out));
    // A Stop hook already active enqueues nothing (no loop), nor does junk.
    let active = String::from_utf8(input).unwrap().replace("false", "true");
    assert_exit(&run(active.as_bytes()), 0);
    assert_exit(&run(b"not json"), 0);
    assert_eq!(json_files(&spool.tasks("anga")).len(), 1);
}
