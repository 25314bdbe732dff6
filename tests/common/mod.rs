//! Shared test harness: a throwaway spool, the real binaries started in
//! their own process group (always stopped, even when a test panics), and
//! waits that poll with a deadline instead of sleeping.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

    /// Writes an executable `/bin/sh` script outside the spool; returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Drops a task the way producers should: a dot-file, then a rename.
    pub fn drop_task(&self, worker: &str, file_name: &str, json: &Value) {
        self.drop_bytes(worker, file_name, json.to_string().as_bytes());
    }

    pub fn drop_bytes(&self, worker: &str, file_name: &str, bytes: &[u8]) {
        let dir = self.tasks(worker);
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{file_name}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, dir.join(file_name)).unwrap();
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

/// A running daemon in its own process group; killed with its group when
/// dropped, so no test leaves a process behind.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

/// The environment every test worker gets unless the test overrides it:
/// quick heartbeats and retries, text logs.
pub fn base_env(spool: &Spool) -> Vec<(String, String)> {
    [
        ("HW_ROOT", spool.root.display().to_string()),
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

impl Daemon {
    /// Starts `tool args…` with `base_env` plus `env` (later wins); stderr
    /// goes to a log file in the spool's scratch area.
    pub fn start(spool: &Spool, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let n = fs::read_dir(spool.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = spool.scratch(&format!("{tool}-{n}.log"));
        let mut cmd = Command::new(bin(tool));
        cmd.args(args)
            .envs(base_env(spool))
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0);
        let child = cmd.spawn().expect("start daemon");
        Daemon {
            child: Some(child),
            log,
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

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// SIGKILL to the daemon alone (its running agents live on, as after a
    /// crash), then reaps it.
    pub fn crash(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.as_mut().unwrap().wait();
    }

    /// Waits for the daemon to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// SIGTERM, then waits for a clean exit; returns the status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(DEADLINE)
            .expect("daemon did not stop after SIGTERM")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(DEADLINE, || self.log_text().contains(needle))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a tool to completion (bounded) and returns its output.
pub fn run_tool(spool: &Spool, tool: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(tool));
    cmd.args(args)
        .envs(base_env(spool))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("start tool");
    let mut status = None;
    let done = wait_until(DEADLINE, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("tool output");
    assert!(done, "{tool} {args:?} did not finish within {DEADLINE:?}");
    out
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
