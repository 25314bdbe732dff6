//! hw-worker running tasks (SPEC sections 1-4 and 8): the result of a run,
//! in-place producers, how the agent is started (argv, environment, stdin,
//! working directory), trigger and heartbeat files, output capture, the
//! verdict on an attempt, configuration errors and JSON logs.

use crate::common::*;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

const W: &str = "marie";

/// `hw-worker ARGS… marie` with a stand-in agent.
fn worker_with_args(spool: &Spool, args: &[&str], agent: &Path, env: &[(&str, &str)]) -> Daemon {
    let agent = agent.display().to_string();
    let mut all: Vec<(&str, &str)> = vec![("CLAUDE_COMMAND", agent.as_str())];
    all.extend_from_slice(env);
    let mut argv: Vec<&str> = args.to_vec();
    argv.push(W);
    Daemon::start(spool, "hw-worker", &argv, &all)
}

/// Waits for the first heartbeat: the watch and the start-up scan are done.
fn wait_ready(spool: &Spool, w: &Daemon) {
    let ok = wait_until(DEADLINE, || spool.heartbeat(W).is_some());
    assert!(
        ok,
        "no heartbeat within {DEADLINE:?}; log:\n{}",
        w.log_text()
    );
}

/// Waits for a file to exist and returns its bytes (the agent writes its
/// files before it exits, so they are complete once the result exists).
fn wait_file(path: &Path) -> Vec<u8> {
    let ok = wait_until(DEADLINE, || path.exists());
    assert!(ok, "{} did not appear within {DEADLINE:?}", path.display());
    fs::read(path).unwrap()
}

/// A shell-quoted path for a script body.
fn q(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// An agent that writes its argv, NUL-terminated, to `file`.
fn argv_agent(spool: &Spool, file: &Path) -> PathBuf {
    spool.script(
        "argv.sh",
        &format!(
            r#"for a in "$@"; do printf '%s\0' "$a"; done > {}"#,
            q(file)
        ),
    )
}

fn split_nul(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\0"),
        "argv file not NUL-terminated: {bytes:?}"
    );
    let mut words: Vec<Vec<u8>> = bytes.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    words.pop();
    words
}

fn strings(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// `KEY=VALUE` lines into a map.
fn key_values(bytes: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_timestamp(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: timestamp not a string: {v}"));
    assert!(
        s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z'),
        "{what}: not RFC 3339 UTC with Z: {s}"
    );
}

// 1. A task present before start.

#[test]
fn a_task_present_before_start_completes_with_a_full_result() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", r#"echo "ran: $desc""#);
    let task = json!({
        "task_id": "pre", "description": "hello",
        "metadata": {"batch_id": "b-17", "custom": {"n": 1}},
    });
    spool.drop_task(W, "pre.json", &task);
    let mut w = Daemon::worker(&spool, W, &agent, &[]);
    let r = spool.wait_result(W, "pre");
    assert_eq!(r["task_id"], "pre");
    assert_eq!(r["worker"], W);
    assert_eq!(r["status"], "completed");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout"], "ran: hello\n");
    assert_eq!(r["stderr"], "");
    assert_eq!(r["retry_count"], 0);
    assert_eq!(
        r["metadata"],
        json!({"batch_id": "b-17", "custom": {"n": 1}})
    );
    assert_timestamp(&r["timestamp"], "result");
    let d = r["duration_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("duration_seconds not a number: {r}"));
    assert!(
        (0.0..DEADLINE.as_secs_f64()).contains(&d),
        "duration_seconds {d}"
    );
    // The result is made durable first, then the claimed file goes.
    let left = wait_until(DEADLINE, || {
        spool.names(&spool.tasks(W)).is_empty() && spool.names(&spool.active(W)).is_empty()
    });
    assert!(left, "task still pending or active");
    assert!(w.stop().success());
}

#[test]
fn a_task_without_metadata_gets_an_empty_metadata_object() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "true");
    spool.drop_simple(W, "bare", "hello");
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    let r = spool.wait_result(W, "bare");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["metadata"], json!({}));
}

// 2. In-place producers.

/// Writes `tasks/marie/NAME` in place: half, a pause, the rest, close.
fn write_in_place_slowly(spool: &Spool, name: &str, task: &Value) {
    let bytes = task.to_string().into_bytes();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let mut f = fs::File::create(spool.tasks(W).join(name)).unwrap();
    f.write_all(first).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    f.write_all(rest).unwrap();
    drop(f);
}

/// Writes task `slow` in place slowly for a worker started with `args`:
/// it completes, the agent having got its description, and nothing is
/// dead-lettered.
fn assert_written_in_place_completes(args: &[&str]) {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", r#"printf '%s' "$desc""#);
    let w = worker_with_args(&spool, args, &agent, &[]);
    wait_ready(&spool, &w);
    let task = json!({"task_id": "slow", "description": "written in place"});
    write_in_place_slowly(&spool, "slow.json", &task);
    let r = spool.wait_result(W, "slow");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["stdout"], "written in place");
    assert!(
        spool.dlq_records(W).is_empty(),
        "dead-lettered: {:?}",
        spool.dlq_records(W)
    );
}

#[test]
fn a_task_written_in_place_slowly_completes_and_is_not_dead_lettered() {
    assert_written_in_place_completes(&[]);
}

#[test]
fn a_task_half_written_in_place_is_not_dead_lettered_by_a_rescan() {
    // Rescans every 50 ms, so the worker certainly sees the half-written file.
    assert_written_in_place_completes(&["--poll", "0.05"]);
}

// 3-5. The agent's argv.

#[test]
fn shell_metacharacters_reach_the_agent_verbatim() {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let agent = argv_agent(&spool, &args);
    let pwned = spool.scratch("pwned");
    let redirected = spool.scratch("redirected");
    let p = pwned.display();
    let description = format!(
        "$(touch {p}) `touch {p}` ; touch {p} | touch {p} & touch {p} && touch {p} > {r} < /dev/null \
         \"double\" 'single' \\ backslash\nsecond line\ttab * ? [a] ~ {{}} $HOME ${{PATH}} %s %% é  trailing  \n",
        r = redirected.display()
    );
    let task = json!({"task_id": "meta", "description": description});
    spool.drop_task(W, "meta.json", &task);
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    let r = spool.wait_result(W, "meta");
    assert_eq!(r["status"], "completed", "{r}");
    let got = split_nul(&wait_file(&args));
    let mut want = strings(&["--output-format", "json", "-p", "--"]);
    want.push(description.as_bytes().to_vec());
    assert_eq!(got, want);
    assert!(!pwned.exists(), "a shell ran the description");
    assert!(!redirected.exists(), "a shell redirected output");
}

/// The argv the agent gets for task `id` when `CLAUDE_COMMAND` is the
/// agent's path followed by `words` and `SYSTEM_PROMPT_FILE` is set; and
/// that file's path.
fn argv_with_prompt_file(words: &str, id: &str, description: &str) -> (Vec<Vec<u8>>, String) {
    let spool = Spool::new();
    let args = spool.scratch("args");
    let agent = argv_agent(&spool, &args);
    let prompt = spool.scratch("prompt.txt");
    fs::write(&prompt, "be brief").unwrap();
    let command = format!("{}{words}", agent.display());
    spool.drop_simple(W, id, description);
    let prompt_s = prompt.display().to_string();
    let env = [
        ("CLAUDE_COMMAND", command.as_str()),
        ("SYSTEM_PROMPT_FILE", prompt_s.as_str()),
    ];
    let _w = Daemon::start(&spool, "hw-worker", &[W], &env);
    let r = spool.wait_result(W, id);
    assert_eq!(r["status"], "completed", "{r}");
    (split_nul(&wait_file(&args)), prompt_s)
}

#[test]
fn a_placeholder_in_the_command_is_replaced_and_nothing_is_appended() {
    let (got, _) = argv_with_prompt_file(" --desc {} --end", "ph", "fix the bug; then -p test");
    assert_eq!(
        got,
        strings(&["--desc", "fix the bug; then -p test", "--end"])
    );
}

#[test]
fn the_system_prompt_file_goes_after_the_commands_words_and_before_the_prompt() {
    let (got, prompt_s) = argv_with_prompt_file("  --model   opus --verbose", "sp", "do it now");
    assert_eq!(
        got,
        strings(&[
            "--model",
            "opus",
            "--verbose",
            "--system-prompt-file",
            &prompt_s,
            "--output-format",
            "json",
            "-p",
            "--",
            "do it now"
        ])
    );
}

// 6. The agent's environment, stdin and working directory.

/// Runs task `id` with an agent that writes `VAR=value` (`<unset>` when
/// unset) for each of `vars`, and `TASK_FILE_EXISTS=yes|no`, under a
/// worker given `env`; returns what the agent wrote.
fn agent_env(
    spool: &Spool,
    id: &str,
    vars: &[&str],
    env: &[(&str, &str)],
) -> HashMap<String, String> {
    let out = spool.scratch("env");
    let mut body: String = vars
        .iter()
        .map(|v| format!("  printf '{v}=%s\\n' \"${{{v}-<unset>}}\"\n"))
        .collect();
    body.push_str(
        "  if [ -f \"$HW_TASK_FILE\" ]; then echo TASK_FILE_EXISTS=yes; else echo TASK_FILE_EXISTS=no; fi\n",
    );
    let agent = spool.script("agent.sh", &format!("{{\n{body}}} > {}", q(&out)));
    spool.drop_simple(W, id, "show me");
    let _w = Daemon::worker(spool, W, &agent, env);
    let r = spool.wait_result(W, id);
    assert_eq!(r["status"], "completed", "{r}");
    key_values(&wait_file(&out))
}

#[test]
fn the_agent_gets_the_task_variables() {
    let spool = Spool::new();
    let vars = [
        "HW_TASK_ID",
        "HW_WORKER",
        "HW_TASK_FILE",
        "HW_ATTEMPT",
        "HW_ROOT",
    ];
    let env = agent_env(&spool, "envy", &vars, &[]);
    assert_eq!(env["HW_TASK_ID"], "envy");
    assert_eq!(env["HW_WORKER"], W);
    assert_eq!(env["HW_ATTEMPT"], "1");
    assert_eq!(env["HW_ROOT"], spool.root.display().to_string());
    let task_file = PathBuf::from(&env["HW_TASK_FILE"]);
    assert_eq!(
        task_file.parent(),
        Some(spool.active(W).as_path()),
        "HW_TASK_FILE {}",
        task_file.display()
    );
    assert_eq!(
        env["TASK_FILE_EXISTS"], "yes",
        "HW_TASK_FILE did not exist while the agent ran"
    );
}

#[test]
fn systemd_variables_do_not_reach_the_agent() {
    let spool = Spool::new();
    let vars = [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "HW_TEST_KEPT",
    ];
    let given = [
        ("NOTIFY_SOCKET", "/run/systemd/notify"),
        ("WATCHDOG_USEC", "30000000"),
        ("WATCHDOG_PID", "1"),
        ("HW_TEST_KEPT", "inherited"),
    ];
    let env = agent_env(&spool, "sd", &vars, &given);
    assert_eq!(env["NOTIFY_SOCKET"], "<unset>");
    assert_eq!(env["WATCHDOG_USEC"], "<unset>");
    assert_eq!(env["WATCHDOG_PID"], "<unset>");
    assert_eq!(
        env["HW_TEST_KEPT"], "inherited",
        "the worker's other variables are passed on"
    );
}

/// hw-worker started by hand with its stdin on an open pipe, so that an
/// agent that inherited the worker's stdin would see the pipe (and block on
/// it), not /dev/null. Killed with its process group when dropped.
struct PipedWorker {
    child: std::process::Child,
}

impl PipedWorker {
    fn start(spool: &Spool, agent: &Path, env: &[(&str, &str)]) -> PipedWorker {
        let log = fs::File::create(spool.scratch("piped-worker.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_hw-worker"))
            .arg(W)
            .envs(base_env(spool))
            .env("CLAUDE_COMMAND", agent)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start hw-worker");
        PipedWorker { child }
    }
}

impl Drop for PipedWorker {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_agents_stdin_is_dev_null() {
    let spool = Spool::new();
    let out = spool.scratch("stdin");
    // `cat` would block on the worker's open stdin pipe; /dev/null is at EOF.
    let agent = spool.script(
        "agent.sh",
        &format!(
            r#"n=$(cat | wc -c); printf 'bytes=%s\nfd0=%s\n' $n "$(readlink /proc/$$/fd/0)" > {}"#,
            q(&out)
        ),
    );
    spool.drop_simple(W, "in", "x");
    let w = PipedWorker::start(
        &spool,
        &agent,
        &[("TASK_TIMEOUT", "3"), ("MAX_RETRIES", "0")],
    );
    assert!(
        w.child.stdin.is_some(),
        "the worker's stdin pipe is held open"
    );
    let r = spool.wait_result(W, "in");
    assert_eq!(r["status"], "completed", "{r}");
    let kv = key_values(&wait_file(&out));
    assert_eq!(kv["bytes"], "0");
    assert_eq!(kv["fd0"], "/dev/null");
}

#[test]
fn the_agent_runs_in_the_spool_root_by_default() {
    let spool = Spool::new();
    let out = spool.scratch("pwd");
    let agent = spool.script("agent.sh", &format!("pwd -P > {}", q(&out)));
    spool.drop_simple(W, "wd", "x");
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    let r = spool.wait_result(W, "wd");
    assert_eq!(r["status"], "completed", "{r}");
    let pwd = String::from_utf8(wait_file(&out)).unwrap();
    assert_eq!(
        pwd.trim_end(),
        fs::canonicalize(&spool.root).unwrap().display().to_string()
    );
}

#[test]
fn workdir_flag_sets_the_agents_working_directory() {
    let spool = Spool::new();
    let out = spool.scratch("pwd");
    let wd = spool.scratch("elsewhere");
    fs::create_dir(&wd).unwrap();
    let agent = spool.script("agent.sh", &format!("pwd -P > {}", q(&out)));
    spool.drop_simple(W, "wd", "x");
    let wd_s = wd.display().to_string();
    let _w = worker_with_args(&spool, &["--workdir", &wd_s], &agent, &[]);
    let r = spool.wait_result(W, "wd");
    assert_eq!(r["status"], "completed", "{r}");
    let pwd = String::from_utf8(wait_file(&out)).unwrap();
    assert_eq!(
        pwd.trim_end(),
        fs::canonicalize(&wd).unwrap().display().to_string()
    );
}

// 7. Trigger.

#[test]
fn claiming_a_task_writes_a_received_trigger() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "true");
    spool.drop_simple(W, "trig", "x");
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    let r = spool.wait_result(W, "trig");
    assert_eq!(r["status"], "completed", "{r}");
    let path = spool.triggers(W).join("trig.trigger");
    let t: Value = serde_json::from_slice(&wait_file(&path)).expect("trigger is JSON");
    assert_eq!(t["status"], "received");
    assert_eq!(t["task_id"], "trig");
    assert_eq!(t["worker"], W);
    assert_timestamp(&t["timestamp"], "trigger");
}

#[test]
fn no_receipts_writes_the_result_and_no_trigger_and_says_so_at_start() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "true");
    spool.drop_simple(W, "quiet", "x");
    let failing = spool.script("fail.sh", "exit 3");
    let w = worker_with_args(&spool, &["--no-receipts"], &agent, &[]);
    assert_eq!(spool.wait_result(W, "quiet")["status"], "completed");
    assert!(w.wait_log("receipts=false"), "{}", w.log_text());
    drop(w);
    // A failing attempt, too, leaves no receipt behind.
    spool.drop_simple(W, "fails", "x");
    let _w = worker_with_args(
        &spool,
        &["--no-receipts", "--max-retries", "0"],
        &failing,
        &[],
    );
    assert_eq!(spool.wait_result(W, "fails")["status"], "failed");
    let left: Vec<String> = spool
        .names(&spool.triggers(W))
        .into_iter()
        .filter(|n| n.ends_with(".trigger"))
        .collect();
    assert!(left.is_empty(), "receipts written: {left:?}");
}

// 8. Heartbeat.

#[test]
fn the_heartbeat_has_the_spec_fields_and_is_refreshed() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "true");
    let w = Daemon::worker(&spool, W, &agent, &[("ENABLE_METRICS", "false")]);
    wait_ready(&spool, &w);
    let hb = spool.heartbeat(W).unwrap();
    assert_eq!(hb["worker"], W);
    assert_eq!(hb["status"], "healthy");
    assert_eq!(hb["pid"], w.pid());
    assert_eq!(hb["heartbeat_interval"], 0.5);
    assert_eq!(hb["circuit_breaker_state"], "closed");
    assert_eq!(hb["metrics_addr"], Value::Null);
    assert_timestamp(&hb["timestamp"], "heartbeat");
    assert!(hb["uptime_seconds"].is_number(), "{hb}");
    assert!(hb["queue_size"].is_u64(), "{hb}");
    assert!(hb["active_tasks"].is_u64(), "{hb}");
    assert!(hb["hostname"].is_string(), "{hb}");
    assert!(hb["version"].is_string(), "{hb}");
    for k in [
        "tasks_processed",
        "tasks_failed",
        "tasks_retried",
        "tasks_dlq",
    ] {
        assert!(hb["stats"][k].is_u64(), "stats.{k}: {hb}");
    }
    let first = hb["timestamp"].clone();
    let refreshed = wait_until(DEADLINE, || {
        spool.heartbeat(W).is_some_and(|h| h["timestamp"] != first)
    });
    assert!(refreshed, "heartbeat not rewritten within {DEADLINE:?}");
}

#[test]
fn sigterm_writes_a_stopped_heartbeat_and_exits_0() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "true");
    let mut w = Daemon::worker(&spool, W, &agent, &[]);
    wait_ready(&spool, &w);
    let status = w.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log:\n{}",
        w.log_text()
    );
    let hb = spool.heartbeat(W).expect("heartbeat after stop");
    assert_eq!(hb["status"], "stopped", "{hb}");
}

// 9. Output bounds.

const FIVE_MB: &str = r"head -c 5000000 /dev/zero | tr '\0' a";

#[test]
fn stdout_beyond_the_default_max_output_is_cut_at_1_mib_and_flagged() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", FIVE_MB);
    spool.drop_simple(W, "big", "x");
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    let r = spool.wait_result(W, "big");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["exit_code"], 0);
    let out = r["stdout"].as_str().unwrap();
    assert_eq!(out.len(), 1_048_576);
    assert!(out.bytes().all(|b| b == b'a'));
    assert_eq!(r["stdout_truncated"], true);
    assert_ne!(r["stderr_truncated"], true);
}

#[test]
fn max_output_flag_sets_the_bytes_kept() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", FIVE_MB);
    spool.drop_simple(W, "big", "x");
    let _w = worker_with_args(&spool, &["--max-output", "10K"], &agent, &[]);
    let r = spool.wait_result(W, "big");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["stdout"].as_str().unwrap().len(), 10_240);
    assert_eq!(r["stdout_truncated"], true);
}

// 10. The agent's own error report.

#[test]
fn an_is_error_json_result_on_exit_0_is_a_failed_attempt() {
    let spool = Spool::new();
    let agent = spool.script(
        "agent.sh",
        // Spread over lines, so only the whole output is the JSON object.
        r#"cat <<'EOF'
{
  "type": "result",
  "subtype": "success",
  "is_error": true,
  "result": "The tool failed"
}
EOF"#,
    );
    spool.drop_simple(W, "rl", "x");
    let _w = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    let r = spool.wait_result(W, "rl");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["error"], "agent_reported_error");
    assert_eq!(r["agent_error"], "The tool failed");
}

#[test]
fn an_is_error_last_line_of_stream_json_is_a_failed_attempt() {
    let spool = Spool::new();
    let agent = spool.script(
        "agent.sh",
        r#"cat <<'EOF'
{"type":"system","subtype":"init","session_id":"s"}
{"type":"assistant","message":{"content":[{"type":"text","text":"working"}]}}
{"type":"result","subtype":"error_during_execution","is_error":true,"result":"The tool failed"}

EOF"#,
    );
    spool.drop_simple(W, "rl", "x");
    let _w = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    let r = spool.wait_result(W, "rl");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["error"], "agent_reported_error");
}

// 11. Exit codes.

/// The worker checks the command at start; one that goes away after is
/// a spawn failure of the attempt.
#[test]
fn a_command_gone_after_the_start_fails_with_127_and_spawn_failed() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "true");
    let w = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    wait_ready(&spool, &w);
    fs::remove_file(&agent).unwrap();
    spool.drop_simple(W, "nf", "x");
    let r = spool.wait_result(W, "nf");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 127);
    assert_eq!(r["error"], "spawn_failed", "{r}");
}

#[test]
fn a_command_made_not_executable_after_the_start_fails_with_126() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "true");
    let w = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    wait_ready(&spool, &w);
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o644)).unwrap();
    spool.drop_simple(W, "nx", "x");
    let r = spool.wait_result(W, "nx");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 126);
}

#[test]
fn an_agent_killed_by_a_signal_fails_with_128_plus_the_signal() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "kill -9 $$");
    spool.drop_simple(W, "sig", "x");
    let _w = Daemon::worker(&spool, W, &agent, &[("MAX_RETRIES", "0")]);
    let r = spool.wait_result(W, "sig");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 137);
}

// 12. Non-UTF-8 output.

#[test]
fn non_utf8_output_is_replaced_and_the_result_stays_json() {
    let spool = Spool::new();
    let agent = spool.script(
        "agent.sh",
        r"printf 'ok \377\376 end\n'; printf 'err \300 end\n' >&2",
    );
    spool.drop_simple(W, "bytes", "x");
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    let path = spool.results(W).join("bytes.json");
    let raw = wait_file(&path);
    let r: Value = serde_json::from_slice(&raw).expect("the result is valid JSON (and UTF-8)");
    assert_eq!(r["status"], "completed", "{r}");
    let out = r["stdout"].as_str().unwrap();
    assert!(out.starts_with("ok ") && out.ends_with(" end\n"), "{out:?}");
    assert!(out.contains('\u{FFFD}'), "{out:?}");
    let err = r["stderr"].as_str().unwrap();
    assert!(
        err.starts_with("err ") && err.contains('\u{FFFD}'),
        "{err:?}"
    );
}

// 13. Configuration and usage.

fn worker_tool(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_tool(spool, "hw-worker", args, env)
}

/// Exit 78, one stderr line naming `name`, and nothing started.
fn assert_config_error(args: &[&str], env: &[(&str, &str)], name: &str) {
    let spool = Spool::new();
    let out = worker_tool(&spool, args, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(78),
        "status {:?}, stderr {stderr:?}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr {stderr:?}");
    assert!(
        lines[0].contains(name),
        "stderr {stderr:?} does not name {name}"
    );
    assert!(
        !spool.tasks(W).exists(),
        "the worker started before checking its configuration"
    );
}

#[test]
fn a_non_numeric_max_concurrent_is_a_configuration_error() {
    assert_config_error(&["--max-concurrent", "abc", W], &[], "--max-concurrent");
}

#[test]
fn a_negative_task_timeout_variable_is_a_configuration_error() {
    assert_config_error(&[W], &[("TASK_TIMEOUT", "-5")], "TASK_TIMEOUT");
}

#[test]
fn an_unknown_log_format_is_a_configuration_error() {
    assert_config_error(&[W], &[("LOG_FORMAT", "xml")], "LOG_FORMAT");
}

#[test]
fn a_missing_workdir_is_a_configuration_error() {
    assert_config_error(
        &["--workdir", "/nonexistent/hookwatch-test", W],
        &[],
        "--workdir",
    );
}

fn assert_usage_error(args: &[&str]) {
    let spool = Spool::new();
    let out = worker_tool(&spool, args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(64),
        "args {args:?}: status {:?}, stderr {stderr:?}",
        out.status
    );
    assert!(!stderr.trim().is_empty(), "args {args:?}: no diagnostic");
    assert!(!spool.tasks(W).exists());
}

#[test]
fn a_missing_worker_name_is_a_usage_error() {
    assert_usage_error(&[]);
}

#[test]
fn a_worker_name_with_a_path_is_a_usage_error() {
    assert_usage_error(&["../x"]);
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    assert_usage_error(&["--no-such-flag", W]);
}

#[test]
fn help_prints_usage_on_stdout_and_exits_0() {
    let spool = Spool::new();
    let out = worker_tool(&spool, &["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: hw-worker"));
}

#[test]
fn version_prints_the_name_and_version_first() {
    let spool = Spool::new();
    let out = worker_tool(&spool, &["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().next(),
        Some(format!("hw-worker {}", env!("CARGO_PKG_VERSION")).as_str())
    );
}

// 14. JSON logs.

#[test]
fn json_logs_are_one_object_per_line_with_the_spec_keys() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "echo done; echo noise >&2");
    spool.drop_simple(W, "task-001", "x");
    let mut w = Daemon::worker(&spool, W, &agent, &[("LOG_FORMAT", "json")]);
    let r = spool.wait_result(W, "task-001");
    assert_eq!(r["status"], "completed", "{r}");
    assert!(w.stop().success());
    let log = w.log_text();
    assert!(!log.is_empty());
    let mut completed = None;
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v.is_object(), "{line}");
        assert_timestamp(&v["timestamp"], line);
        assert!(v["level"].is_string(), "{line}");
        assert_eq!(v["logger"], "hw-worker", "{line}");
        assert_eq!(v["worker"], W, "{line}");
        assert!(v["message"].is_string(), "{line}");
        if v["message"] == "Task completed" {
            completed = Some(v);
        }
    }
    let completed = completed.unwrap_or_else(|| panic!("no \"Task completed\" line in:\n{log}"));
    assert_eq!(completed["task_id"], "task-001");
    assert_eq!(completed["level"], "INFO");
}

// 15. A task for another worker.

#[test]
fn a_task_naming_another_worker_is_dead_lettered_invalid_task() {
    let spool = Spool::new();
    let ran = spool.scratch("ran");
    let agent = spool.script("agent.sh", &format!("touch {}", q(&ran)));
    let task = json!({"task_id": "astray", "worker": "anga", "description": "x"});
    spool.drop_task(W, "astray.json", &task);
    let _w = Daemon::worker(&spool, W, &agent, &[]);
    let records = spool.wait_dlq(W, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["dlq_reason"], "invalid_task", "{}", records[0]);
    assert!(spool.result(W, "astray").is_none(), "a result was written");
    assert!(!ran.exists(), "the agent ran");
    let gone = wait_until(DEADLINE, || {
        spool.names(&spool.tasks(W)).is_empty() && spool.names(&spool.active(W)).is_empty()
    });
    assert!(gone, "the task is still pending or active");
}

/// `hw-worker -c N marie` started with the open-files limit (soft, hard);
/// the agent writes the soft limit it got to `seen`.
fn worker_with_nofile(spool: &Spool, c: &str, soft: u64, hard: u64, agent: &Path) -> Daemon {
    let mut cmd = tool_command(spool, "hw-worker", &["-c", c, W], &[]);
    cmd.env("CLAUDE_COMMAND", agent)
        .env("ENABLE_METRICS", "false");
    // SAFETY: setrlimit(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(std::io::Error::from)
        });
    }
    Daemon::spawn(spool, &format!("worker-nofile-{soft}"), cmd)
}

/// The soft limit of open files in /proc/PID/limits.
fn soft_nofile(pid: i32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn agents_get_the_open_files_limit_the_worker_was_given_raised_only_when_too_low() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let hard = hard.min(4096);
    if hard < 1024 {
        eprintln!("skipped: the hard limit of open files here is {hard}");
        return;
    }
    let spool = Spool::new();
    let seen = spool.dir.path().join("seen");
    let agent = spool.script("agent.sh", &format!("ulimit -Sn >> {}", q(&seen)));
    // Enough for 2 tasks: left as it is.
    spool.drop_simple(W, "enough", "x");
    let w = worker_with_nofile(&spool, "2", 1000, hard, &agent);
    spool.wait_result(W, "enough");
    assert_eq!(soft_nofile(w.pid()), 1000, "{}", w.log_text());
    drop(w);
    // Too low for 2 tasks: the worker raises its own, the agent gets 64.
    spool.drop_simple(W, "low", "x");
    let w = worker_with_nofile(&spool, "2", 64, hard, &agent);
    spool.wait_result(W, "low");
    assert_eq!(soft_nofile(w.pid()), hard, "{}", w.log_text());
    drop(w);
    assert_eq!(fs::read_to_string(&seen).unwrap(), "1000\n64\n");
}
