//! Shared test harness: a throwaway spool, the real binaries started in
//! their own process group (always stopped, even when a test panics), and
//! waits that poll with a deadline instead of sleeping.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use serde_json::{Map, Value};

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn bin(tool: &str) -> PathBuf {
    match tool {
        "hw-worker" => PathBuf::from(env!("CARGO_BIN_EXE_hw-worker")),
        "hw-enqueue" => PathBuf::from(env!("CARGO_BIN_EXE_hw-enqueue")),
        "hw-dlq" => PathBuf::from(env!("CARGO_BIN_EXE_hw-dlq")),
        "hw-listen" => PathBuf::from(env!("CARGO_BIN_EXE_hw-listen")),
        "hw-status" => PathBuf::from(env!("CARGO_BIN_EXE_hw-status")),
        other => panic!("unknown tool {other}"),
    }
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A temporary spool root with the default layout.
pub struct Spool {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Spool {
    pub fn new() -> Spool {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("spool");
        fs::create_dir_all(&root).unwrap();
        Spool { dir, root }
    }

    pub fn tasks(&self, worker: &str) -> PathBuf {
        self.root.join("tasks").join(worker)
    }

    pub fn active(&self, worker: &str) -> PathBuf {
        self.tasks(worker).join(".active")
    }

    pub fn deferred(&self, worker: &str) -> PathBuf {
        self.tasks(worker).join(".deferred")
    }

    pub fn results(&self, worker: &str) -> PathBuf {
        self.root.join("results").join(worker)
    }

    pub fn dlq(&self, worker: &str) -> PathBuf {
        self.root.join("dlq").join(worker)
    }

    pub fn triggers(&self, worker: &str) -> PathBuf {
        self.root.join("triggers").join(worker)
    }

    pub fn heartbeat_path(&self, worker: &str) -> PathBuf {
        self.root.join("heartbeats").join(format!("{worker}.json"))
    }

    /// A file outside the spool for the test's own bookkeeping.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `stem-N`, N the number of entries of the scratch area so far: a
    /// name for the next process's files.
    pub fn numbered(&self, stem: &str) -> String {
        let n = fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        format!("{stem}-{n}")
    }

    /// Writes an executable `/bin/sh` script outside the spool; returns its
    /// path. `$desc` is the description, as the worker gives it to the
    /// Claude CLI: the last argument (`… -p -- DESCRIPTION`), or standard
    /// input when the argv ends with `-p` (a long one).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let preamble = "for desc; do :; done\n\
            case \" $* \" in *\" -- \"*) ;; *) [ \"$desc\" = -p ] && desc=$(cat) ;; esac";
        fs::write(&path, format!("#!/bin/sh\n{preamble}\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Drops a task the way producers should: a dot-file, then a rename.
    pub fn drop_task(&self, worker: &str, file_name: &str, json: &Value) {
        self.drop_bytes(worker, file_name, json.to_string().as_bytes());
    }

    pub fn drop_bytes(&self, worker: &str, file_name: &str, bytes: &[u8]) {
        place_bytes(&self.tasks(worker), file_name, bytes);
    }

    /// A minimal valid task `{task_id, description}` named `<id>.json`.
    pub fn drop_simple(&self, worker: &str, id: &str, description: &str) {
        let task = serde_json::json!({"task_id": id, "description": description});
        self.drop_task(worker, &format!("{id}.json"), &task);
    }

    pub fn result(&self, worker: &str, id: &str) -> Option<Value> {
        read_json(&self.results(worker).join(format!("{id}.json")))
    }

    /// Waits for the result of `id` and returns it.
    pub fn wait_result(&self, worker: &str, id: &str) -> Value {
        let mut found = None;
        let ok = wait_until(DEADLINE, || {
            found = self.result(worker, id);
            found.is_some()
        });
        assert!(ok, "no result for {worker}/{id} within {DEADLINE:?}");
        found.unwrap()
    }

    /// Every dead-letter record of `worker` (not the `.rejected/` files).
    pub fn dlq_records(&self, worker: &str) -> Vec<Value> {
        json_files(&self.dlq(worker))
            .into_iter()
            .filter_map(|p| read_json(&p))
            .collect()
    }

    /// Waits until `worker` has at least `n` dead letters, and returns them.
    pub fn wait_dlq(&self, worker: &str, n: usize) -> Vec<Value> {
        let ok = wait_until(DEADLINE, || self.dlq_records(worker).len() >= n);
        assert!(
            ok,
            "fewer than {n} dead letters for {worker} within {DEADLINE:?}"
        );
        self.dlq_records(worker)
    }

    pub fn heartbeat(&self, worker: &str) -> Option<Value> {
        read_json(&self.heartbeat_path(worker))
    }

    /// Names of the visible entries of a folder (no dot-files), sorted.
    pub fn names(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Writes `bytes` into `dir/name` atomically (dot-file, then rename).
pub fn place_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).unwrap();
    let path = dir.join(name);
    fs::rename(&tmp, &path).unwrap();
    path
}

/// Writes `value` into `dir/name` atomically (dot-file, then rename).
pub fn place(dir: &Path, name: &str, value: &Value) -> PathBuf {
    place_bytes(dir, name, value.to_string().as_bytes())
}

/// Every entry of a folder, dot-files too, sorted.
pub fn all_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The lines of a file; none when it is not there.
pub fn file_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// `2026-11-28T10:30:00.123Z` of milliseconds since the epoch: written
/// here, not by the library under test (H. Hinnant's civil date).
pub fn rfc3339_ms(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// `rfc3339_ms` of `t`, to the millisecond below.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).expect("after 1970");
    rfc3339_ms(d.as_millis() as i64)
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds of an RFC 3339 time, `YYYY-MM-DDTHH:MM:SS[.frac]` then
/// `Z` or `+HH:MM`/`-HH:MM` (a lower-case `t` or `z`, or a space for the
/// `T`, as RFC 3339 allows); `None` for anything else. Written here, not
/// taken from the library under test.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let at = |i: usize, set: &[u8]| b.get(i).is_some_and(|c| set.contains(c));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..digits]).parse::<f64>().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(s.len() - 5, s.len() - 3)?, num(s.len() - 2, s.len())?);
            let secs = oh * 3600 + om * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    Some(secs as f64 + frac)
}

/// `parse_rfc3339` of a timestamp hookwatch wrote, which must be UTC:
/// `T` and `Z` (SPEC section 4). Panics on anything else.
pub fn utc_seconds(s: &str) -> f64 {
    let utc = s.as_bytes().get(10) == Some(&b'T') && s.ends_with('Z');
    parse_rfc3339(s)
        .filter(|_| utc)
        .unwrap_or_else(|| panic!("not an RFC 3339 UTC timestamp: {s:?}"))
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// True when `cond` holds at every poll for all of `period`.
pub fn holds_for(period: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + period;
    while Instant::now() < end {
        if !cond() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Regular `*.json` files directly in `dir`, not dot-files.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    !n.starts_with('.') && n.ends_with(".json")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The complete lines of a file a process still writes (a line still
/// being written is left for the next look).
pub fn complete_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete.lines().map(String::from).collect()
}

pub fn parse_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
}

/// A running daemon in its own process group; killed with its group when
/// dropped, so no test leaves a process behind.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    /// Its stdout, when kept (`Daemon::spawn`).
    out: Option<PathBuf>,
}

/// The environment every test worker gets unless the test overrides it:
/// quick heartbeats and retries, text logs.
pub fn base_env(spool: &Spool) -> Vec<(String, String)> {
    [
        ("HW_ROOT", spool.root.display().to_string()),
        // Never the real Claude CLI, even where one is installed.
        ("CLAUDE_COMMAND", "true".into()),
        ("HEARTBEAT_INTERVAL", "0.5".into()),
        ("INITIAL_RETRY_DELAY", "0.1".into()),
        ("LOG_FORMAT", "text".into()),
        ("LOG_LEVEL", "debug".into()),
        ("METRICS_PORT", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `tool args…` with `base_env` plus `env` (later wins).
pub fn tool_command(spool: &Spool, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin(tool));
    cmd.args(args)
        .envs(base_env(spool))
        .envs(env.iter().map(|(k, v)| (*k, *v)));
    cmd
}

/// Variables of the test runner's environment that would change what the
/// listener does; every listener starts without them.
pub const LISTENER_VARS: [&str; 10] = [
    "WORKERS",
    "COMPLETION_TIMEOUT",
    "STATE_FILE",
    "TASK_DIR",
    "TRIGGER_DIR",
    "RESULT_DIR",
    "HEARTBEAT_DIR",
    "DLQ_DIR",
    "RUST_LOG",
    "HW_EVENT",
];

/// `hw-listen ARGS…` with `base_env` plus `env`, none of `LISTENER_VARS`
/// inherited.
pub fn listener_command(spool: &Spool, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin("hw-listen"));
    for var in LISTENER_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(base_env(spool))
        .envs(env.iter().map(|(k, v)| (*k, *v)));
    cmd
}

/// Variables that would move the spool or name the workers.
pub const SPOOL_VARS: [&str; 8] = [
    "HW_ROOT",
    "TASK_DIR",
    "TRIGGER_DIR",
    "RESULT_DIR",
    "HEARTBEAT_DIR",
    "DLQ_DIR",
    "STATE_FILE",
    "WORKERS",
];

/// `tool ARGS…` with `HW_ROOT=root` plus `env`, nothing else of the spool
/// inherited (none of `SPOOL_VARS`); stdin empty, stdout and stderr piped,
/// in its own process group. For `finish`.
pub fn spool_command(tool: &str, root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin(tool));
    for var in SPOOL_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .env("HW_ROOT", root)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// Reads a pipe to its end on a thread, so the child never blocks on it.
pub fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` to exit, at most `timeout`; `None` if it still runs.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Feeds `input` to a started child (when its stdin is piped), reads its
/// piped stdout and stderr, and waits for it at most DEADLINE; after that
/// its process group is killed and the test fails, naming `what`.
pub fn finish(mut child: Child, input: &[u8], what: &str) -> Output {
    let stdin = child.stdin.take();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input);
        }
    });
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_child(&mut child, DEADLINE);
    if status.is_none() {
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = feeder.join();
    assert!(
        status.is_some(),
        "{what} did not finish within {DEADLINE:?}"
    );
    Output {
        status: status.unwrap(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

impl Daemon {
    /// Starts `tool args…` with `base_env` plus `env` (later wins); stderr
    /// goes to a log file in the spool's scratch area.
    pub fn start(spool: &Spool, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = spool.scratch(&format!("{}.log", spool.numbered(tool)));
        let mut cmd = tool_command(spool, tool, args, env);
        cmd.stdout(Stdio::null());
        Daemon::launch(cmd, None, log)
    }

    /// Starts a prepared command, for what `start` cannot express (a
    /// cleaned environment, a limit set before exec, a kept stdout):
    /// stdout to `NAME.out` and stderr to `NAME.log` in the scratch area.
    pub fn spawn(spool: &Spool, name: &str, mut cmd: Command) -> Daemon {
        let out = spool.scratch(&format!("{name}.out"));
        let log = spool.scratch(&format!("{name}.log"));
        cmd.stdout(fs::File::create(&out).unwrap());
        Daemon::launch(cmd, Some(out), log)
    }

    fn launch(mut cmd: Command, out: Option<PathBuf>, log: PathBuf) -> Daemon {
        cmd.stdin(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Daemon {
            child: Some(child),
            log,
            out,
        }
    }

    /// Starts `hw-worker NAME` with a stand-in agent.
    pub fn worker(spool: &Spool, name: &str, agent: &Path, env: &[(&str, &str)]) -> Daemon {
        let agent = agent.display().to_string();
        let mut all: Vec<(&str, &str)> = vec![("CLAUDE_COMMAND", agent.as_str())];
        all.extend_from_slice(env);
        Daemon::start(spool, "hw-worker", &[name], &all)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// SIGKILL to the daemon alone (its running agents live on, as after a
    /// crash), then reaps it.
    pub fn crash(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.as_mut().unwrap().wait();
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits for the daemon to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(self.child.as_mut().unwrap(), timeout)
    }

    /// Sends `signal`, then waits for the exit; returns the status.
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        self.signal(signal);
        self.wait_exit(DEADLINE)
            .unwrap_or_else(|| panic!("daemon did not exit after {signal:?}:\n{}", self.log_text()))
    }

    /// SIGTERM, then waits for a clean exit; returns the status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    #[must_use]
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(DEADLINE, || self.log_text().contains(needle))
    }

    /// Asserts that the log comes to contain `needle`.
    pub fn expect_log(&self, needle: &str) {
        assert!(
            self.wait_log(needle),
            "no {needle:?} in the log within {DEADLINE:?}:\n{}",
            self.log_text()
        );
    }

    /// The file its stdout goes to (`Daemon::spawn` only).
    pub fn out(&self) -> &Path {
        self.out
            .as_deref()
            .expect("a daemon started with its stdout kept")
    }

    /// The complete lines of its stdout.
    pub fn lines(&self) -> Vec<String> {
        complete_lines(self.out())
    }

    /// Its stdout as JSON lines, complete lines only.
    pub fn events(&self) -> Vec<Value> {
        self.lines().iter().map(|l| parse_line(l)).collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a tool to completion (bounded) and returns its output.
pub fn run_tool(spool: &Spool, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tool_command(spool, tool, args, env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("start tool");
    finish(child, b"", &format!("{tool} {args:?}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit status, showing both outputs when it is wrong.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status; stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// Processes still alive in process group `pgid`, zombies not counted
/// (this machine's init may reap orphans late).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok();
    };
    let pgid = pgid.to_string();
    procs.flatten().any(|p| {
        let Ok(stat) = fs::read_to_string(p.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parens.
        let Some(rest) = stat.rfind(") ").map(|i| &stat[i + 2..]) else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && !matches!(f[0], "Z" | "X") && f[2] == pgid
    })
}

/// Sets a file's modification time.
pub fn set_mtime(path: &Path, t: SystemTime) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

// The Claude CLI's result objects (tests/claude_standin.rs, tests/claude_cli.rs).

/// What Claude Code 2.1.197 printed with `-p --output-format json` and no
/// credentials (exit 1), its ids as they came.
pub const CLAUDE_FIXTURE: &str = "tests/fixtures/claude-2.1.197-not-logged-in.json";

/// The result object of `CLAUDE_FIXTURE`.
pub fn claude_fixture() -> Map<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CLAUDE_FIXTURE);
    match read_json(&path) {
        Some(Value::Object(object)) => object,
        other => panic!("{}: not a JSON object: {other:?}", path.display()),
    }
}

/// The JSON type of a value, as the shapes compare it.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn key_set(object: &Map<String, Value>) -> BTreeSet<String> {
    object.keys().cloned().collect()
}

/// The differences between `got` and the shape `want`: keys missing or
/// added, at the top and in `usage`, and common keys of another type.
/// `api_error_status` is null in the fixture and may be a number (the
/// HTTP status of an API error, SPEC 3a).
pub fn shape_differences(want: &Map<String, Value>, got: &Map<String, Value>) -> Vec<String> {
    let mut found = Vec::new();
    let mut compare = |at: &str, want: &Map<String, Value>, got: &Map<String, Value>| {
        let (w, g) = (key_set(want), key_set(got));
        for k in w.difference(&g) {
            found.push(format!("{at}{k} is missing"));
        }
        for k in g.difference(&w) {
            found.push(format!("{at}{k} is not in the real CLI's object"));
        }
        for k in w.intersection(&g) {
            let (a, b) = (json_kind(&want[k]), json_kind(&got[k]));
            let status = k == "api_error_status" && a == "null" && b == "number";
            if a != b && !status {
                found.push(format!("{at}{k} is a {b}, the real CLI's a {a}"));
            }
        }
    };
    compare("", want, got);
    if let (Some(Value::Object(w)), Some(Value::Object(g))) = (want.get("usage"), got.get("usage"))
    {
        compare("usage.", w, g);
    }
    found
}

/// Sets a file's modification time to `secs` before now.
pub fn age_file(path: &Path, secs: u64) {
    set_mtime(path, SystemTime::now() - Duration::from_secs(secs));
}

/// A valid worker name or task id, as SPEC section 1 says:
/// `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, written out again here.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=128).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A scratch file whose existence lets gated agents finish. It is also
/// created when the test ends, so that no agent outlives it for long
/// (declare it after the spool: it must be dropped first).
pub struct Gate {
    pub path: PathBuf,
}

impl Gate {
    pub fn new(spool: &Spool) -> Gate {
        Gate {
            path: spool.scratch("GO"),
        }
    }

    pub fn open(&self) {
        fs::write(&self.path, b"").unwrap();
    }

    /// Shell lines that wait for the gate to open (20 s at most, then
    /// `exit 3`).
    pub fn wait_lines(&self) -> String {
        format!(
            r#"i=0
while [ ! -e '{}' ]; do
  i=$((i + 1))
  if [ "$i" -gt 400 ]; then exit 3; fi
  sleep 0.05
done"#,
            self.path.display()
        )
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, b"");
    }
}

/// Each of `ids` ran exactly once by `ran` (the task id of each
/// execution, in any order), and nothing else ran.
pub fn assert_each_ran_once(ids: &[String], ran: &[&str]) {
    let mut count: std::collections::HashMap<&str, usize> = Default::default();
    for id in ran {
        *count.entry(id).or_default() += 1;
    }
    let wrong: Vec<(String, usize)> = ids
        .iter()
        .filter(|id| count.get(id.as_str()) != Some(&1))
        .map(|id| (id.clone(), count.get(id.as_str()).copied().unwrap_or(0)))
        .take(20)
        .collect();
    assert!(
        wrong.is_empty(),
        "ids not run exactly once (id, runs; first 20): {wrong:?}"
    );
    assert_eq!(ran.len(), ids.len(), "executions of unknown tasks");
}

/// Every id has one completed result of `worker` with `retry_count` 0.
pub fn assert_completed_uncharged(spool: &Spool, worker: &str, ids: &[String]) {
    for id in ids {
        let r = spool
            .result(worker, id)
            .unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["retry_count"], 0, "{r}");
    }
}

/// A process started here, in its own group, killed with it when dropped.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
