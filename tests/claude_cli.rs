//! Contract tests against the real Claude Code CLI (issue #18): `make
//! test-claude` installs the pinned version from npm into a cache outside
//! the repository and runs these with `HW_CLAUDE_CLI` naming its binary.
//! They are `#[ignore]`d, so `make test` never needs npm, and each skips
//! with a message when `HW_CLAUDE_CLI` is not set.
//!
//! With an empty HOME and no key, the CLI parses its whole command line,
//! then answers every prompt with a real result object, "Not logged in ·
//! Please run /login" (`is_error: true`, exit 1), after writing the
//! session to HOME/.claude/projects/<cwd>/<session id>.jsonl. It only gets
//! that far when the command line parses (an unknown option, a bad value,
//! a session that does not exist are refused at once, in plain text on
//! stderr), so each argv form hookwatch builds is an exact test of what
//! hookwatch hands it. Each form runs in a real hw-worker of its own, the
//! task pending before it starts, and must end the same way: the worker
//! reads the result object, classes the failure `auth_failed` and pauses
//! (heartbeat `paused`, `paused_reason: auth_failed`, `/healthz` 503,
//! hw-status exit 1 "paused (auth_failed)"), and charges nothing: the
//! task's deferred copy (due at once, so back among the pending tasks,
//! which a paused worker leaves alone) has `retry_count` 0 and
//! `last_error` "auth_failed: Not logged in · Please run /login"; no
//! dead letter, no result, no retry, no spend. The session the CLI wrote shows that the prompt arrived whole,
//! in the working directory the task chose (and, for `resume`, in the
//! resumed session). Then the same argv is run directly, to print what the
//! CLI answered and check its shape against tests/fixtures/.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hookwatch::model::agent_options::AgentOptions;
use serde_json::{json, Map, Value};

/// The version `make test-claude` installs; another one is run too, and
/// said.
const PINNED: &str = "2.1.197";
/// What the CLI answers without credentials.
const NOT_LOGGED_IN: &str = "Not logged in · Please run /login";
const W: &str = "contract";
/// How long the worker may take to run the CLI once and pause: a 240 MB
/// binary, maybe cold, on a busy machine.
const CLI_DEADLINE: Duration = Duration::from_secs(120);

/// The real CLI, or `None` (said) when `HW_CLAUDE_CLI` is not set.
fn cli() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("HW_CLAUDE_CLI") else {
        // Once, straight to stderr, which the test harness does not capture.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            let line = format!(
                "\nclaude_cli: skipped, HW_CLAUDE_CLI is not set (make test-claude \
                 installs Claude Code {PINNED} and sets it)\n"
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        });
        return None;
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "HW_CLAUDE_CLI={}: not a file",
        path.display()
    );
    Some(path)
}

/// The account and the desk: an empty HOME (no credentials, no settings)
/// and the worker's `--workdir`, with `repo/sub` in it. Shared by the
/// runs of one test, so that a later run can resume an earlier session.
struct Place {
    dir: tempfile::TempDir,
    cli: PathBuf,
}

impl Place {
    fn new(cli: PathBuf) -> Place {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("home")).unwrap();
        fs::create_dir_all(dir.path().join("work/repo/sub")).unwrap();
        Place { dir, cli }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The environment of the worker and of the CLI: nothing of the test
    /// runner's but PATH (no ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN,
    /// ANTHROPIC_BASE_URL…), HOME the empty folder, and no telemetry or
    /// update check (no network).
    fn env(&self, cmd: &mut Command) {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        cmd.env_clear()
            .env("PATH", path)
            .env("HOME", self.home())
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    }

    /// Every prompt the CLI's sessions hold: the user lines of
    /// HOME/.claude/projects/*/*.jsonl.
    fn prompts(&self) -> Vec<SessionPrompt> {
        let mut found = Vec::new();
        let projects = self.home().join(".claude/projects");
        for project in fs::read_dir(projects).into_iter().flatten().flatten() {
            for file in fs::read_dir(project.path()).into_iter().flatten().flatten() {
                let text = fs::read_to_string(file.path()).unwrap_or_default();
                for line in text.lines() {
                    let Ok(v) = serde_json::from_str::<Value>(line) else {
                        continue;
                    };
                    let Some(prompt) = v["message"]["content"].as_str() else {
                        continue;
                    };
                    if v["type"] == "user" && v["isMeta"] != true {
                        found.push(SessionPrompt {
                            session: v["sessionId"].as_str().unwrap_or("").into(),
                            cwd: v["cwd"].as_str().unwrap_or("").into(),
                            text: prompt.into(),
                        });
                    }
                }
            }
        }
        found
    }
}

#[derive(Debug, Clone, PartialEq)]
struct SessionPrompt {
    session: String,
    cwd: String,
    text: String,
}

/// One argv form: the command (`CLAUDE_COMMAND` as written, and the words
/// it must split into), the worker's environment, and the task.
struct Form {
    name: &'static str,
    command: String,
    words: Vec<String>,
    env: Vec<(&'static str, String)>,
    system_prompt_file: Option<PathBuf>,
    task: Value,
}

impl Form {
    /// The CLI alone: its path, as one word.
    fn new(place: &Place, name: &'static str, task: Value) -> Form {
        let program = place.cli.display().to_string();
        Form {
            name,
            command: quote(&program),
            words: vec![program],
            env: Vec::new(),
            system_prompt_file: None,
            task,
        }
    }

    fn description(&self) -> &str {
        self.task["description"].as_str().unwrap()
    }

    fn id(&self) -> &str {
        self.task["task_id"].as_str().unwrap()
    }

    /// The argv hookwatch builds (SPEC 3a, the options' flags as the
    /// library makes them), and what goes to stdin.
    fn argv(&self) -> (Vec<String>, Option<String>) {
        let mut argv = self.words.clone();
        if let Some(file) = &self.system_prompt_file {
            argv.push("--system-prompt-file".into());
            argv.push(file.display().to_string());
        }
        if !argv.iter().any(|w| w.starts_with("--output-format")) {
            argv.extend(["--output-format".into(), "json".into()]);
        }
        let fields = self.task.as_object().unwrap();
        argv.extend(AgentOptions::parse(fields).expect("valid options").flags());
        argv.push("-p".into());
        let description = self.description().to_string();
        if description.len() >= 128 * 1024 {
            return (argv, Some(description));
        }
        argv.extend(["--".into(), description]);
        (argv, None)
    }

    /// The argv as the record shows it: the program's name, a long
    /// prompt as its size.
    fn shown(&self, place: &Place) -> String {
        let (argv, stdin) = self.argv();
        let program = place.cli.display().to_string();
        let mut words: Vec<String> = argv
            .iter()
            .map(|w| match w.as_str() {
                w if w == program => "claude".into(),
                w if w == argv[0] => {
                    let p = Path::new(w);
                    let dir = p.parent().and_then(Path::file_name).unwrap_or_default();
                    let name = p.file_name().unwrap_or_default();
                    quote(&format!(
                        "…/{}/{}",
                        dir.to_string_lossy(),
                        name.to_string_lossy()
                    ))
                }
                w if w.len() > 60 => format!("<{} bytes>", w.len()),
                w => quote(w),
            })
            .collect();
        if let Some(s) = stdin {
            words.push(format!("< ({} bytes on stdin)", s.len()));
        }
        words.join(" ")
    }

    fn workdir(&self, place: &Place) -> PathBuf {
        match self.task["workdir"].as_str() {
            Some(sub) => place.work().join(sub),
            None => place.work(),
        }
    }
}

/// A word as a shell would need it.
fn quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_=./:,@[]".contains(&c));
    match plain {
        true => w.to_string(),
        false => format!("'{}'", w.replace('\'', r"'\''")),
    }
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
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// The value of one sample of the exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `hw-worker W --workdir WORK --pause-backoff 60` running `form`'s
/// command, with the form's task already pending.
fn start_worker(place: &Place, spool: &Spool, form: &Form, extra: &[(&str, &str)]) -> Daemon {
    spool.drop_task(W, &format!("{}.json", form.id()), &form.task);
    let mut cmd = Command::new(bin("hw-worker"));
    place.env(&mut cmd);
    // A slow heartbeat: a pause writes one at once anyway, and its tick is
    // what may run a deferred copy again before the pause (through_worker).
    cmd.envs(base_env(spool))
        .env("HEARTBEAT_INTERVAL", "5")
        .env("CLAUDE_COMMAND", &form.command)
        .envs(form.env.iter().map(|(k, v)| (*k, v)))
        .envs(extra.iter().copied())
        .arg(W)
        .arg("--workdir")
        .arg(place.work())
        .args(["--pause-backoff", "60"]);
    Daemon::spawn(spool, &spool.numbered("worker"), cmd)
}

/// The form through a real worker: it must pause on the login and charge
/// nothing. Returns the prompt the CLI's session gained, and the deferred
/// copy's `last_error`.
fn through_worker(place: &Place, form: &Form) -> (SessionPrompt, String) {
    let what = form.name;
    let before = place.prompts();
    let spool = Spool::new();
    let mut w = start_worker(place, &spool, form, &[]);
    let mut beat = Value::Null;
    let paused = wait_until(CLI_DEADLINE, || {
        beat = spool.heartbeat(W).unwrap_or(Value::Null);
        beat["status"] == "paused"
    });
    assert!(
        paused,
        "{what}: the worker did not pause within {CLI_DEADLINE:?}; heartbeat {beat}\n{}",
        w.log_text()
    );
    assert_eq!(beat["paused_reason"], "auth_failed", "{what}: {beat}");
    // The deferred copy: in `.deferred/`, then back among the pending
    // tasks once due (at once: no reset time), where the pause leaves it.
    let name = format!("{}.json", form.id());
    let copies = [spool.deferred(W).join(&name), spool.tasks(W).join(&name)];
    let mut deferred = Value::Null;
    let ok = wait_until(DEADLINE, || {
        deferred = copies
            .iter()
            .filter_map(|c| read_json(c))
            .find(|t| t["last_error"].is_string())
            .unwrap_or(Value::Null);
        deferred.is_object()
    });
    assert!(ok, "{what}: no deferred copy with last_error: {copies:?}");
    assert_eq!(deferred["retry_count"], 0, "{what}: charged an attempt");
    assert_eq!(
        deferred["last_error"],
        format!("auth_failed: {NOT_LOGGED_IN}"),
        "{what}"
    );
    assert_eq!(deferred["description"], form.description(), "{what}");
    assert!(spool.dlq_records(W).is_empty(), "{what}: a dead letter");
    assert!(spool.result(W, form.id()).is_none(), "{what}: a result");

    let status = run_tool(&spool, "hw-status", &[], &[]);
    assert_exit(&status, 1);
    let table = stdout(&status);
    assert!(
        table.contains(&format!("{W}: paused (auth_failed)")),
        "{what}: hw-status says\n{table}"
    );
    let addr = beat["metrics_addr"].as_str().expect("a metrics address");
    assert_eq!(http_get(addr, "/healthz").0, 503, "{what}: /healthz");
    let (_, metrics) = http_get(addr, "/metrics");
    let series = |s: &str| sample(&metrics, s).unwrap_or(-1.0);
    let labels = format!("worker=\"{W}\"");
    // At least one refused attempt. Sometimes two: the worker's heartbeat
    // tick may load the deferred copy (due at once, no reset time) before
    // the dispatcher has read the attempt's report and paused; that one
    // is refused too, and charged nothing either.
    let refused = series(&format!(
        "watcher_tasks_failed_total{{{labels},reason=\"auth_failed\"}}"
    ));
    assert!(
        refused >= 1.0,
        "{what}: no refused attempt counted:\n{metrics}"
    );
    if refused > 1.0 {
        println!("{what}: {refused} refused attempts (the deferred copy was run again)");
    }
    assert_eq!(
        series(&format!("watcher_tasks_retried_total{{{labels}}}")),
        0.0,
        "{what}: a retry was scheduled"
    );
    assert_eq!(
        series(&format!("watcher_agent_cost_usd_total{{{labels}}}")),
        0.0,
        "{what}: spend"
    );
    w.expect_log(&format!("Task not run: auth_failed: {NOT_LOGGED_IN}"));
    w.stop();

    let mut new = Vec::new();
    let arrived = wait_until(DEADLINE, || {
        new = place
            .prompts()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        !new.is_empty()
    });
    assert!(arrived, "{what}: the CLI's session holds no new prompt");
    assert_eq!(new.len(), 1, "{what}: {new:?}");
    let prompt = new.remove(0);
    assert!(
        prompt.text == form.description(),
        "{what}: the CLI got another prompt ({} bytes, not {})",
        prompt.text.len(),
        form.description().len()
    );
    let cwd = fs::canonicalize(form.workdir(place)).unwrap();
    assert_eq!(Path::new(&prompt.cwd), cwd, "{what}: the CLI's cwd");
    let why = deferred["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (prompt, why)
}

/// The same argv run directly (same HOME, working directory and stdin):
/// the CLI's exit status and result object, whose shape must be the
/// fixture's.
fn directly(place: &Place, form: &Form) -> (i32, Map<String, Value>) {
    let (argv, stdin) = form.argv();
    let mut cmd = Command::new(&argv[0]);
    place.env(&mut cmd);
    cmd.args(&argv[1..])
        .current_dir(form.workdir(place))
        .stdin(match stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("start the CLI");
    let input = stdin.unwrap_or_default();
    let out = finish(child, input.as_bytes(), form.name);
    let text = stdout(&out);
    let object = text
        .lines()
        .rev()
        .find_map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(o)) if o["type"] == "result" => Some(o),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no result object; stdout:\n{text}\nstderr:\n{}",
                form.name,
                stderr(&out)
            )
        });
    let differences = shape_differences(&claude_fixture(), &object);
    assert!(
        differences.is_empty(),
        "{}: the CLI's result object is not the shape of {CLAUDE_FIXTURE}:\n{}",
        form.name,
        differences.join("\n")
    );
    (out.status.code().unwrap_or(-1), object)
}

/// Runs `form` through a worker and directly, and prints what happened.
fn check(place: &Place, form: &Form) -> SessionPrompt {
    let (prompt, why) = through_worker(place, form);
    let (code, object) = directly(place, form);
    assert_eq!(object["result"], NOT_LOGGED_IN, "{}", form.name);
    assert_eq!(object["is_error"], true, "{}", form.name);
    let cwd = Path::new(&prompt.cwd)
        .strip_prefix(fs::canonicalize(place.work()).unwrap())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    println!(
        "{}\n  argv:      {}\n  worker:    paused (auth_failed), deferred, retry_count 0, last_error {why:?}\n  \
         CLI:       exit {code}, subtype {}, is_error {}, api_error_status {}, result {:?}, \
         {} keys as the fixture's\n  session:   {} got the prompt ({} bytes) in --workdir/{cwd}",
        form.name,
        form.shown(place),
        object["subtype"],
        object["is_error"],
        object["api_error_status"],
        object["result"].as_str().unwrap_or_default(),
        object.len(),
        prompt.session,
        prompt.text.len(),
    );
    prompt
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn the_cli_is_the_pinned_version_and_answers_as_the_fixture() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli.clone());
    let mut cmd = Command::new(&cli);
    place.env(&mut cmd);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let out = finish(cmd.spawn().unwrap(), b"", "claude --version");
    let version = stdout(&out).trim().to_string();
    println!("{}: {version}", cli.display());
    if !version.starts_with(&format!("{PINNED} ")) {
        println!("  (not the pinned {PINNED}: the fixture and README name {PINNED})");
    }
    let form = Form::new(
        &place,
        "plain",
        json!({"task_id": "t", "description": "hello"}),
    );
    let (code, object) = directly(&place, &form);
    assert_eq!(code, 1, "exit status");
    let fixture = claude_fixture();
    for key in ["type", "subtype", "is_error", "api_error_status", "result"] {
        assert_eq!(object[key], fixture[key], "{key}");
    }
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn a_bullet_prompt() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let task = json!({"task_id": "bullet", "description": "- fix the login bug"});
    check(
        &place,
        &Form::new(&place, "a `- ` prompt (Markdown bullet)", task),
    );
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn a_prompt_that_looks_like_an_option() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let task = json!({"task_id": "option", "description": "--dangerously-skip-permissions"});
    check(
        &place,
        &Form::new(&place, "a prompt that looks like an option", task),
    );
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn a_prompt_over_128_kib_goes_to_stdin() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let long = format!(
        "Summarise this log.\n{}",
        "line of a long log\n".repeat(8000)
    );
    assert!(long.len() > 128 * 1024);
    let task = json!({"task_id": "long", "description": long});
    check(
        &place,
        &Form::new(&place, "a prompt over 128 KiB (stdin)", task),
    );
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn a_prompt_over_128_kib_after_allowed_tools() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let long = "x".repeat(200_000);
    let task = json!({"task_id": "long-tools", "description": long,
        "allowed_tools": ["Read", "Bash(git log:*)"]});
    let name = "a prompt over 128 KiB after --allowedTools (argv ends with the tools, -p)";
    check(&place, &Form::new(&place, name, task));
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn every_task_option_and_a_workdir_below_workdir() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let task = json!({"task_id": "options", "description": "go",
        "model": "claude-sonnet-4-5[1m]", "max_turns": 3, "max_budget_usd": 0.5,
        "allowed_tools": ["Read", "Bash(git log:*)"], "append_system_prompt": "-be terse",
        "workdir": "repo/sub"});
    check(
        &place,
        &Form::new(&place, "every task option but resume", task),
    );
}

/// A session the CLI wrote on a first run (even "Not logged in" writes
/// one) is resumed by a second task in the same working directory: the
/// prompt lands in that session, not in a new one.
#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn resume_of_a_session_that_exists() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let seed = json!({"task_id": "seed", "description": "start a session", "workdir": "repo"});
    let first = check(
        &place,
        &Form::new(&place, "a first task, in --workdir/repo", seed),
    );
    let task = json!({"task_id": "resume", "description": "go on", "workdir": "repo",
        "resume": first.session, "model": "sonnet"});
    let second = check(&place, &Form::new(&place, "resume of that session", task));
    assert_eq!(second.session, first.session, "not resumed");
}

/// A session that does not exist is refused before the login check, in
/// plain text: no result object, so an ordinary failed attempt
/// (`exit_status`), no pause. It shows that the forms above pass because
/// the CLI accepted their argv.
#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn resume_of_a_session_that_does_not_exist_is_an_exit_status_failure() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let task = json!({"task_id": "missing", "description": "go on",
        "resume": "00000000-0000-4000-8000-000000000000"});
    let form = Form::new(&place, "resume of a session that does not exist", task);
    let spool = Spool::new();
    let _w = start_worker(&place, &spool, &form, &[("MAX_RETRIES", "0")]);
    let mut r = None;
    let ok = wait_until(CLI_DEADLINE, || {
        r = spool.result(W, "missing");
        r.is_some()
    });
    assert!(ok, "no result within {CLI_DEADLINE:?}");
    let r = r.unwrap();
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"], "exit_status", "{r}");
    assert_eq!(r["exit_code"], 1, "{r}");
    assert!(r.get("agent").is_none(), "{r}");
    let words = r["stderr"].as_str().unwrap_or_default();
    assert!(
        words.contains("No conversation found with session ID"),
        "{r}"
    );
    assert_ne!(spool.heartbeat(W).unwrap()["status"], "paused");
    println!(
        "{}\n  argv:      {}\n  worker:    failed, error exit_status, exit 1, stderr {:?}",
        form.name,
        form.shown(&place),
        words.trim()
    );
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn a_system_prompt_file() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let file = place.path("system prompt.txt");
    fs::write(&file, "You review code. You answer in one paragraph.\n").unwrap();
    let task = json!({"task_id": "system", "description": "review the last commit"});
    let mut form = Form::new(&place, "a system prompt file (SYSTEM_PROMPT_FILE)", task);
    form.env
        .push(("SYSTEM_PROMPT_FILE", file.display().to_string()));
    form.system_prompt_file = Some(file);
    check(&place, &form);
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn a_command_with_quoted_words() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli.clone());
    let dir = place.path("a folder with spaces");
    fs::create_dir_all(&dir).unwrap();
    let program = dir.join("claude");
    std::os::unix::fs::symlink(&cli, &program).unwrap();
    let program = program.display().to_string();
    let task = json!({"task_id": "quoted", "description": "hello"});
    let mut form = Form::new(&place, "a command with quoted words", task);
    form.command = format!(
        "{} --permission-mode acceptEdits --append-system-prompt \"be brief, it's late\"",
        quote(&program)
    );
    form.words = [
        program.as_str(),
        "--permission-mode",
        "acceptEdits",
        "--append-system-prompt",
        "be brief, it's late",
    ]
    .map(String::from)
    .to_vec();
    check(&place, &form);
}

#[test]
#[ignore = "needs the real Claude Code CLI: make test-claude"]
fn stream_json_with_verbose_in_the_command() {
    let Some(cli) = cli() else { return };
    let place = Place::new(cli);
    let task = json!({"task_id": "stream", "description": "- summarise the stream",
        "max_turns": 2});
    let mut form = Form::new(&place, "--verbose --output-format=stream-json", task);
    form.command
        .push_str(" --verbose --output-format=stream-json");
    form.words
        .extend(["--verbose".into(), "--output-format=stream-json".into()]);
    check(&place, &form);
}
