//! Hostile input at every entry point (the task file, hw-enqueue's
//! arguments and standard input, hw-dlq's arguments, the listener's state
//! file, the heartbeat files hw-status and hw-listen read), a seeded
//! property test of the parser and the claim path, and the security
//! contract of SECURITY.md: shared task folders refused, folders 0750 and
//! files 0640 less the umask, agents held to --max-cpu and --max-memory.
//!
//! The contract for hostile input: a clear error (one line on stderr, the
//! documented exit status, no "panicked at") or a dead letter with a
//! reason; never a panic, never a hang (every run here is bounded and
//! killed after the bound), never a write outside the spool (a sentinel
//! folder beside the spool stays empty, a victim folder stays as it was).
//! Tools run here get at most 1 GiB of address space, so that one reading
//! without bound fails instead of eating the machine, and their peak
//! resident memory is checked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use nix::libc;
use serde_json::{json, Value};

const W: &str = "marie";

/// How long one run of a tool may take before it counts as a hang.
const RUN_BOUND: Duration = Duration::from_secs(10);
/// The address space of each tool run here (a safety net, not a verdict).
const TOOL_ADDRESS_SPACE: u64 = 1 << 30;
/// The peak resident memory a tool may reach on one hostile file.
const MAX_RSS_KB: i64 = 256 * 1024;
/// A heartbeat timestamp that never gets old.
const FUTURE: &str = "2999-01-01T00:00:00Z";

// ---------------------------------------------------------------------------
// running tools: bounded, in their own process group, with limits

/// How a tool is started.
#[derive(Default, Clone)]
struct Opts {
    umask: Option<u32>,
    address_space: Option<u64>,
    stdin: Option<Vec<u8>>,
}

/// A tool started in its own process group; killed with its group and
/// reaped when dropped. Output goes to files, so no pipe can fill up.
struct Proc {
    /// Reaped by hand (wait4, for its peak memory), never through `Child`.
    _child: std::process::Child,
    pid: i32,
    out: PathBuf,
    err: PathBuf,
    /// The exit status and the peak resident memory (KiB), once reaped.
    done: Option<(ExitStatus, i64)>,
}

/// What a bounded run left behind.
struct Finished {
    /// `None`: still running at the bound (then killed).
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: String,
    max_rss_kb: i64,
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

impl Proc {
    fn start(
        spool: &Spool,
        tool: &str,
        args: &[OsString],
        env: &[(&str, &str)],
        opts: &Opts,
    ) -> Proc {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let out = spool.scratch(&format!("{tool}-{n}.out"));
        let err = spool.scratch(&format!("{tool}-{n}.err"));
        let stdin = match &opts.stdin {
            Some(bytes) => {
                let path = spool.scratch(&format!("{tool}-{n}.in"));
                fs::write(&path, bytes).unwrap();
                Stdio::from(fs::File::open(&path).unwrap())
            }
            None => Stdio::null(),
        };
        let mut cmd = Command::new(bin(tool));
        cmd.args(args)
            .envs(base_env(spool))
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(stdin)
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .process_group(0);
        let (umask, limit) = (opts.umask, opts.address_space);
        if umask.is_some() || limit.is_some() {
            // SAFETY: umask(2) and setrlimit(2) are async-signal-safe, and
            // nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(mask) = umask {
                        libc::umask(mask as libc::mode_t);
                    }
                    if let Some(bytes) = limit {
                        let rl = libc::rlimit {
                            rlim_cur: bytes,
                            rlim_max: bytes,
                        };
                        if libc::setrlimit(libc::RLIMIT_AS, &rl) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {tool}: {e}"));
        Proc {
            pid: child.id() as i32,
            _child: child,
            out,
            err,
            done: None,
        }
    }

    /// Reaps the tool if it has exited; true once it has.
    fn poll(&mut self) -> bool {
        if self.done.is_some() {
            return true;
        }
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child, without blocking.
        let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == self.pid {
            self.done = Some((ExitStatus::from_raw(status), usage.ru_maxrss));
        }
        self.done.is_some()
    }

    /// SIGKILL to the whole group, then reaps the tool.
    fn kill(&mut self) {
        if self.done.is_some() {
            return;
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let mut status = 0;
        // SAFETY: as in `poll`, blocking: the process was just killed.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
        if rc == self.pid {
            self.done = Some((ExitStatus::from_raw(status), usage.ru_maxrss));
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal);
    }

    /// Waits for the tool to end by itself, at most `bound`; kills it after.
    fn finish(self, bound: Duration) -> Finished {
        self.finish_by(Instant::now() + bound)
    }

    /// Waits for the tool to end by itself until `deadline`; kills it after.
    fn finish_by(mut self, deadline: Instant) -> Finished {
        let bound = deadline.saturating_duration_since(Instant::now());
        let ended = wait_until(bound, || self.poll());
        if !ended {
            self.kill();
        }
        let (status, rss) = self.done.expect("reaped");
        Finished {
            status: ended.then_some(status),
            stdout: fs::read(&self.out).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&fs::read(&self.err).unwrap_or_default()).into_owned(),
            max_rss_kb: rss,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.err).unwrap_or_default()).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn oss(args: &[&str]) -> Vec<OsString> {
    args.iter().map(|a| os(a)).collect()
}

/// Runs a tool on a hostile spool: bounded, with at most 1 GiB of
/// address space, logging errors only.
fn run(spool: &Spool, tool: &str, args: &[OsString], env: &[(&str, &str)]) -> Finished {
    run_with_stdin(spool, tool, args, env, None)
}

fn run_with_stdin(
    spool: &Spool,
    tool: &str,
    args: &[OsString],
    env: &[(&str, &str)],
    stdin: Option<Vec<u8>>,
) -> Finished {
    start(spool, tool, args, env, stdin).finish(RUN_BOUND)
}

/// Starts a tool as `run` does, to finish it later.
fn start(
    spool: &Spool,
    tool: &str,
    args: &[OsString],
    env: &[(&str, &str)],
    stdin: Option<Vec<u8>>,
) -> Proc {
    let mut all = vec![("LOG_LEVEL", "error")];
    all.extend_from_slice(env);
    let opts = Opts {
        address_space: Some(TOOL_ADDRESS_SPACE),
        stdin,
        ..Opts::default()
    };
    Proc::start(spool, tool, args, &all, &opts)
}

/// At most the last 600 characters, for messages.
fn tail(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let from = chars.len().saturating_sub(600);
    chars[from..].iter().collect()
}

/// The contract of one run on hostile input: it ended by itself within
/// the bound with one of the `allowed` statuses, printed no panic, stayed
/// within bounded memory, and an error (64 and up) is one line that
/// starts with the tool's name. Returns what is wrong.
fn judge(what: &str, tool: &str, f: &Finished, allowed: &[i32]) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(status) = f.status else {
        return vec![format!(
            "{what}: {tool} still running after {RUN_BOUND:?} (a hang); stderr: {}",
            tail(&f.stderr)
        )];
    };
    match status.code() {
        None => bad.push(format!(
            "{what}: {tool} killed by signal {:?}; stderr: {}",
            status.signal(),
            tail(&f.stderr)
        )),
        Some(c) if !allowed.contains(&c) => bad.push(format!(
            "{what}: {tool} exited {c}, expected one of {allowed:?}; stderr: {}",
            tail(&f.stderr)
        )),
        Some(_) => {}
    }
    if f.stderr.contains("panicked") {
        bad.push(format!("{what}: {tool} panicked: {}", tail(&f.stderr)));
    }
    // A documented error status (a panic's 101 is reported above).
    if status
        .code()
        .is_some_and(|c| c >= 64 && allowed.contains(&c))
    {
        let lines: Vec<&str> = f.stderr.lines().collect();
        let prefix = format!("{tool}: ");
        if lines.len() != 1 || !lines[0].starts_with(&prefix) {
            bad.push(format!(
                "{what}: {tool}'s error is not one line starting {prefix:?}: {:?}",
                tail(&f.stderr)
            ));
        }
    }
    if f.max_rss_kb > MAX_RSS_KB {
        bad.push(format!(
            "{what}: {tool} reached {} MiB of resident memory (bound {} MiB): it reads without bound",
            f.max_rss_kb / 1024,
            MAX_RSS_KB / 1024
        ));
    }
    bad
}

/// Runs `check` on every row at once (each on its own spool), so that a
/// row that hangs costs one bound, not one per row; returns every failure.
fn in_parallel<R: Send>(rows: Vec<R>, check: impl Fn(R) -> Vec<String> + Sync) -> Vec<String> {
    let check = &check;
    std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .into_iter()
            .map(|row| s.spawn(move || check(row)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a row's check panicked".into()])
            })
            .collect()
    })
}

fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failure(s):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

// ---------------------------------------------------------------------------
// the world outside the spool

/// A sentinel folder beside the spool that must stay empty, and a victim
/// folder (a valid task, a dead letter, a note) that must stay as it is.
struct Outside {
    sentinel: PathBuf,
    victim: PathBuf,
    before: BTreeMap<String, Vec<u8>>,
}

impl Outside {
    fn new(spool: &Spool) -> Outside {
        let sentinel = spool.dir.path().join("sentinel");
        let victim = spool.dir.path().join("victim");
        fs::create_dir_all(&sentinel).unwrap();
        fs::create_dir_all(&victim).unwrap();
        let task = json!({"task_id": "victim", "description": "must stay"}).to_string();
        let record = json!({"task_id": "victim", "description": "must stay",
            "dlq_reason": "max_retries_exceeded", "dlq_timestamp": "2023-11-14T22:13:20Z",
            "retry_count": 0})
        .to_string();
        fs::write(victim.join("victim.json"), task).unwrap();
        fs::write(victim.join("victim_1700000000.json"), record).unwrap();
        fs::write(victim.join("note.txt"), "precious").unwrap();
        let before = Outside::contents(&victim);
        Outside {
            sentinel,
            victim,
            before,
        }
    }

    fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let bytes = fs::read(e.path()).unwrap_or_default();
                        (e.file_name().to_string_lossy().into_owned(), bytes)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What changed outside the spool.
    fn check(&self, what: &str) -> Vec<String> {
        let mut bad = Vec::new();
        let found: Vec<String> = fs::read_dir(&self.sentinel)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_else(|e| vec![format!("(cannot list: {e})")]);
        if !found.is_empty() {
            bad.push(format!(
                "{what}: written outside the spool, into {}: {found:?}",
                self.sentinel.display()
            ));
        }
        let now = Outside::contents(&self.victim);
        if now != self.before {
            let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
            bad.push(format!(
                "{what}: the folder outside the spool changed: {} held {:?}, now {:?}",
                self.victim.display(),
                names(&self.before),
                names(&now)
            ));
        }
        bad
    }
}

// ---------------------------------------------------------------------------
// making entries of every kind

#[derive(Clone)]
enum Entry {
    Bytes(Vec<u8>),
    Symlink(PathBuf),
    Fifo,
    Folder,
    Socket,
    /// `mknod c 1 3` (/dev/null); needs privilege.
    CharDevice,
    /// A sparse file of this many bytes.
    Sparse(u64),
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Bytes(_) | Entry::Sparse(_) => "file",
            Entry::Symlink(_) => "symlink",
            Entry::Fifo => "fifo",
            Entry::Folder => "folder",
            Entry::Socket => "socket",
            Entry::CharDevice => "char device",
        }
    }
}

/// Makes `entry` at `path`; `Err` says why this system cannot (then the
/// row is skipped with a message).
fn make_entry(path: &Path, entry: &Entry) -> Result<(), String> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    match entry {
        Entry::Bytes(b) => fs::write(path, b).unwrap(),
        Entry::Symlink(target) => std::os::unix::fs::symlink(target, path).unwrap(),
        Entry::Fifo => nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o640)).unwrap(),
        Entry::Folder => {
            fs::create_dir(path).unwrap();
            fs::write(path.join("inside.txt"), "kept").unwrap();
        }
        Entry::Socket => {
            std::os::unix::net::UnixListener::bind(path).unwrap();
        }
        Entry::CharDevice => {
            mknod(
                path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o640),
                makedev(1, 3),
            )
            .map_err(|e| format!("mknod {} c 1 3 failed: {e}", path.display()))?;
        }
        Entry::Sparse(len) => fs::File::create(path).unwrap().set_len(*len).unwrap(),
    }
    Ok(())
}

static STAGED: AtomicUsize = AtomicUsize::new(0);

/// Makes `entry` under a dot-name in `dir`, then renames it to `name`.
fn drop_entry(dir: &Path, name: &OsStr, entry: &Entry) -> Result<(), String> {
    fs::create_dir_all(dir).unwrap();
    let staging = dir.join(format!(".stage-{}", STAGED.fetch_add(1, Ordering::Relaxed)));
    make_entry(&staging, entry)?;
    fs::rename(&staging, dir.join(name)).unwrap();
    Ok(())
}

/// Starts `hw-worker W` with `agent` and waits for its first heartbeat
/// (written after the watch and the start-up scan).
fn worker_up(spool: &Spool, agent: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut all = vec![("CLAUDE_COMMAND", agent)];
    all.extend_from_slice(env);
    let mut argv = vec![W];
    argv.extend_from_slice(args);
    let w = Daemon::start(spool, "hw-worker", &argv, &all);
    let up = wait_until(DEADLINE, || spool.heartbeat(W).is_some());
    assert!(up, "no heartbeat; log:\n{}", w.log_text());
    w
}

fn alive(w: &mut Daemon) -> bool {
    w.wait_exit(Duration::ZERO).is_none()
}

/// Task ids that would land in the sentinel from one folder or another.
const ESCAPING_IDS: [&str; 3] = [
    "../../sentinel/x",
    "../../../sentinel/x",
    "../../../../sentinel/x",
];

// ---------------------------------------------------------------------------
// 1. the task file

/// What must become of a hostile entry in the tasks folder.
enum Expect {
    /// A dead letter of the entry (by `original_name`) with this reason.
    Dead(&'static str),
    /// The task ran: a result for `id` with `status`; with `argv`, the
    /// agent got exactly that description as one argument; with `once`,
    /// it ran exactly once, as attempt 1 or later.
    Ran {
        id: String,
        status: &'static str,
        argv: Option<String>,
        once: bool,
    },
    /// Exactly one of: a result for one of these ids, or a dead letter.
    Either(Vec<String>),
}

/// One row: an entry named `file` in the tasks folder; the name says
/// what is hostile about it.
struct Row {
    file: OsString,
    entry: Entry,
    expect: Expect,
}

fn dead(file: &str, bytes: impl Into<Vec<u8>>, reason: &'static str) -> Row {
    Row {
        file: os(file),
        entry: Entry::Bytes(bytes.into()),
        expect: Expect::Dead(reason),
    }
}

/// A task that must run and complete.
fn ran(file: &str, task: Value) -> Row {
    Row {
        file: os(file),
        expect: Expect::Ran {
            id: task["task_id"].as_str().unwrap().to_string(),
            status: "completed",
            argv: None,
            once: false,
        },
        entry: Entry::Bytes(task.to_string().into_bytes()),
    }
}

/// A valid task whose description the agent must get as one argument.
fn ran_exactly(file: &str, id: &str, description: &str) -> Row {
    let mut row = ran(file, json!({"task_id": id, "description": description}));
    if let Expect::Ran { argv, .. } = &mut row.expect {
        *argv = Some(description.into());
    }
    row
}

fn irregular(file: &str, entry: Entry) -> Row {
    Row {
        file: os(file),
        entry,
        expect: Expect::Dead("not_a_regular_file"),
    }
}

/// Files that are not JSON at all: each is dead-lettered `invalid_json`.
#[rustfmt::skip]
const NOT_JSON: [(&str, &[u8]); 9] = [
    ("malformed.json", br#"{"task_id" "x", "description": }"#),
    ("empty.json", b""),
    ("blank.json", b" \n\t\n"),
    ("not-utf8.json", b"\xff\xfe{\"task_id\":1}"),
    ("not-utf8-in-string.json", b"{\"task_id\":\"u8\",\"description\":\"caf\xe9\"}"),
    ("lone-surrogate.json", br#"{"task_id":"sur","description":"\ud800"}"#),
    ("raw-nul.json", b"{\"task_id\":\"n\x00ul\",\"description\":\"d\"}"),
    ("two-objects.json", br#"{"task_id":"two1","description":"d"}{"task_id":"two2","description":"d"}"#),
    ("number-too-large.json", br#"{"task_id":"big-num","description":"d","timeout":1e400}"#),
];

/// JSON, but not a task (a wrong type, a value out of range, a worker
/// that is not this one): each is dead-lettered `invalid_task`.
#[rustfmt::skip]
const NOT_A_TASK: [(&str, &str); 25] = [
    ("null.json", "null"),
    ("string.json", r#""a task""#),
    ("array-of-task.json", r#"[{"task_id":"in-array","description":"d"}]"#),
    ("id-number.json", r#"{"task_id":5,"description":"d"}"#),
    ("id-null.json", r#"{"task_id":null,"description":"d"}"#),
    ("description-array.json", r#"{"task_id":"da","description":["d"]}"#),
    ("description-null.json", r#"{"task_id":"dn","description":null}"#),
    ("description-empty.json", r#"{"task_id":"de","description":""}"#),
    ("timeout-string.json", r#"{"task_id":"ts","description":"d","timeout":"60"}"#),
    ("timeout-negative.json", r#"{"task_id":"tn","description":"d","timeout":-1}"#),
    ("timeout-zero.json", r#"{"task_id":"tz","description":"d","timeout":0}"#),
    ("priority-object.json", r#"{"task_id":"po","description":"d","priority":{"p":1}}"#),
    ("priority-spaced.json", r#"{"task_id":"ps","description":"d","priority":"high "}"#),
    ("dependencies-number.json", r#"{"task_id":"dnum","description":"d","dependencies":5}"#),
    ("dependency-escaping.json", r#"{"task_id":"desc","description":"d","dependencies":["../../x"]}"#),
    ("metadata-string.json", r#"{"task_id":"ms","description":"d","metadata":"m"}"#),
    ("retry-count-negative.json", r#"{"task_id":"rcn","description":"d","retry_count":-1}"#),
    ("retry-count-fraction.json", r#"{"task_id":"rcf","description":"d","retry_count":1.5}"#),
    ("retry-count-2-32.json", r#"{"task_id":"rc32","description":"d","retry_count":4294967296}"#),
    ("not-before-number.json", r#"{"task_id":"nbn","description":"d","not_before":5}"#),
    ("not-before-garbage.json", r#"{"task_id":"nbg","description":"d","not_before":"soon"}"#),
    ("worker-other.json", r#"{"task_id":"wo","description":"d","worker":"anga"}"#),
    ("worker-escaping.json", r#"{"task_id":"we","description":"d","worker":"../marie"}"#),
    ("worker-number.json", r#"{"task_id":"wn","description":"d","worker":7}"#),
    // Descriptions no argument can carry: not a task that could run.
    ("description-nul.json", r#"{"task_id":"desc-nul","description":"a\u0000b"}"#),
];

/// Task ids that must never become part of a path: each task is
/// dead-lettered `invalid_task` (more in `ESCAPING_IDS`).
#[rustfmt::skip]
const BAD_IDS: [(&str, &str); 9] = [
    ("id-slash.json", "a/b"),
    ("id-dotdot.json", ".."),
    ("id-dot.json", "."),
    ("id-leading-dot.json", ".hidden"),
    ("id-leading-dash.json", "-rf"),
    ("id-nul.json", "a\u{0}b"),
    ("id-newline.json", "a\nb"),
    ("id-empty.json", ""),
    ("id-non-ascii.json", "caf\u{e9}"),
];

/// File names that mean something elsewhere (Windows devices, a newline,
/// a leading dash), of valid tasks: each runs and completes.
#[rustfmt::skip]
const ODD_NAMES: [(&str, &str); 8] = [
    ("con.json", "con"),
    ("nul.json", "nul"),
    ("aux.json", "aux"),
    ("prn.json", "prn"),
    ("com1.json", "com1"),
    ("lpt1.json", "lpt1"),
    ("new\nline.json", "newline"),
    ("-dash.json", "dash"),
];

fn task_file_rows(spool: &Spool, outside: &Outside) -> Vec<Row> {
    let mut rows = Vec::new();
    // Not JSON.
    for (file, bytes) in NOT_JSON {
        rows.push(dead(file, bytes, "invalid_json"));
    }
    let valid = json!({"task_id": "half", "description": "cut in two"}).to_string();
    let nested = format!(
        r#"{{"task_id":"deep","description":"d","metadata":{{"x":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    rows.extend([
        dead(
            "truncated.json",
            &valid.as_bytes()[..valid.len() / 2],
            "invalid_json",
        ),
        dead("nested-100000.json", "[".repeat(100_000), "invalid_json"),
        dead("nested-in-metadata.json", nested, "invalid_json"),
        dead(
            "nested-objects.json",
            r#"{"a":"#.repeat(100_000),
            "invalid_json",
        ),
        dead(&format!("{}.json", "n".repeat(250)), "{", "invalid_json"),
    ]);
    // JSON, but not a task.
    for (file, text) in NOT_A_TASK {
        rows.push(dead(file, text, "invalid_task"));
    }
    // Too long for one argument: the Claude CLI reads it on stdin.
    rows.push(ran_exactly(
        "description-200k.json",
        "desc-200k",
        &"y".repeat(200_000),
    ));
    // Ids that must never become part of a path.
    let long_ids = [
        ("id-129.json", "a".repeat(129)),
        ("id-10k.json", "a".repeat(10_240)),
    ];
    let escaping = ESCAPING_IDS
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("escaping-{i}.json"), id.to_string()));
    let bad_ids = BAD_IDS
        .iter()
        .map(|(f, id)| (f.to_string(), id.to_string()))
        .chain(long_ids.map(|(f, id)| (f.to_string(), id)))
        .chain(escaping);
    for (file, id) in bad_ids {
        let task = json!({"task_id": id, "description": "d"}).to_string();
        rows.push(dead(&file, task, "invalid_task"));
    }
    // Too large to read (the default --max-task-bytes, 1 MiB).
    let huge = json!({"task_id": "huge", "description": "x".repeat(2 << 20)}).to_string();
    rows.push(dead("huge-task.json", huge, "task_too_large"));
    rows.push(dead(
        "huge-garbage.json",
        vec![b'x'; 3 << 20],
        "task_too_large",
    ));
    // Entries that are not regular files: moved aside, never followed.
    rows.extend([
        irregular(
            "link-to-file.json",
            Entry::Symlink(outside.victim.join("victim.json")),
        ),
        irregular(
            "link-to-folder.json",
            Entry::Symlink(outside.sentinel.clone()),
        ),
        irregular(
            "dangling.json",
            Entry::Symlink(spool.dir.path().join("nowhere")),
        ),
        irregular("loop.json", Entry::Symlink(PathBuf::from("loop.json"))),
        irregular("fifo.json", Entry::Fifo),
        irregular("folder.json", Entry::Folder),
        irregular("socket.json", Entry::Socket),
        irregular("device.json", Entry::CharDevice),
    ]);
    // Odd names and odd but valid content: they run.
    for (file, id) in ODD_NAMES {
        rows.push(ran(file, json!({"task_id": id, "description": "d"})));
    }
    let mut deep_object = json!("bottom");
    for _ in 0..100 {
        deep_object = json!({ "a": deep_object });
    }
    let mut many = serde_json::Map::new();
    many.insert("task_id".into(), "many-fields".into());
    many.insert("description".into(), "d".into());
    for i in 0..10_000 {
        many.insert(format!("extra-{i}"), i.into());
    }
    let past = "0001-01-01T00:00:00Z";
    rows.extend([
        ran(
            "id-128.json",
            json!({"task_id": "b".repeat(128), "description": "d"}),
        ),
        ran(
            "deep-object.json",
            json!({"task_id": "deep-object", "description": "d", "metadata": deep_object}),
        ),
        ran("many-fields.json", Value::Object(many)),
        ran(
            "timeout-huge.json",
            json!({"task_id": "timeout-huge", "description": "d", "timeout": 1e308}),
        ),
        ran(
            "not-before-past.json",
            json!({"task_id": "nb-past", "description": "d", "not_before": past}),
        ),
    ]);
    // Descriptions the agent must get whole, as one argument.
    let shell = format!(
        "$(touch {s}/a); `touch {s}/b` | touch {s}/c; touch {s}/d & echo >{s}/e",
        s = outside.sentinel.display()
    );
    let odd_text = "line one\nline two\ttab \u{1b}[31mred\u{1b}[0m \u{e9}\u{1F980} '\"\\";
    rows.extend([
        ran_exactly("shell.json", "shell", &shell),
        ran_exactly("dash-help.json", "dash-help", "--help"),
        ran_exactly("odd-text.json", "odd-text", odd_text),
    ]);
    // The largest retry_count: it runs once (no retry past it), and fails.
    let rc_max =
        json!({"task_id": "rc-max", "description": "FAIL", "retry_count": 4_294_967_295u64});
    let mut row = ran("retry-count-max.json", rc_max);
    if let Expect::Ran { status, once, .. } = &mut row.expect {
        (*status, *once) = ("failed", true);
    }
    rows.push(row);
    // A key given twice: one of the two ids runs, or it is dead-lettered.
    rows.push(Row {
        file: os("duplicate-keys.json"),
        entry: Entry::Bytes(br#"{"task_id":"dup1","description":"d","task_id":"dup2"}"#.to_vec()),
        expect: Expect::Either(vec!["dup1".into(), "dup2".into()]),
    });
    rows
}

/// Dead letters whose `original_name` is `name`.
fn entry_records<'a>(records: &'a [Value], name: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["original_name"].as_str() == Some(name))
        .collect()
}

#[test]
fn hostile_task_files_end_in_a_dead_letter_or_a_result_and_nothing_leaves_the_spool() {
    let spool = Spool::new();
    let outside = Outside::new(&spool);
    let rec = spool.scratch("rec");
    fs::create_dir_all(&rec).unwrap();
    let agent = spool.script(
        "agent.sh",
        &format!(
            "echo \"$HW_TASK_ID $HW_ATTEMPT\" >> '{r}/attempts'\n\
             printf '%s' \"$desc\" > '{r}/'\"$HW_TASK_ID\"'.argv'\n\
             case \"$desc\" in FAIL*) exit 1;; esac",
            r = rec.display()
        ),
    );
    let mut w = worker_up(
        &spool,
        &agent.display().to_string(),
        &[],
        &[("MAX_RETRIES", "0"), ("TASK_TIMEOUT", "20")],
    );
    let tasks = spool.tasks(W);
    let mut rows = Vec::new();
    for row in task_file_rows(&spool, &outside) {
        match drop_entry(&tasks, &row.file, &row.entry) {
            Ok(()) => rows.push(row),
            Err(why) => eprintln!("skipping the row {:?}: {why}", row.file),
        }
    }

    let outcome = |row: &Row, records: &[Value]| -> bool {
        let name = row.file.to_string_lossy();
        match &row.expect {
            Expect::Dead(_) => !entry_records(records, &name).is_empty(),
            Expect::Ran { id, .. } => spool.result(W, id).is_some(),
            Expect::Either(ids) => {
                !entry_records(records, &name).is_empty()
                    || ids.iter().any(|id| spool.result(W, id).is_some())
            }
        }
    };
    let all_ended = wait_until(DEADLINE, || {
        let records = spool.dlq_records(W);
        rows.iter().all(|r| outcome(r, &records))
    });
    let records = spool.dlq_records(W);
    let mut bad = Vec::new();
    if !all_ended {
        for r in rows.iter().filter(|r| !outcome(r, &records)) {
            bad.push(format!("{:?}: no outcome within {DEADLINE:?}", r.file));
        }
    }
    let attempts = fs::read_to_string(rec.join("attempts")).unwrap_or_default();
    let mut failed_results = 0;
    for row in &rows {
        let name = row.file.to_string_lossy().into_owned();
        let what = format!("{name:?}");
        if fs::symlink_metadata(tasks.join(&row.file)).is_ok() {
            bad.push(format!("{what}: still pending"));
        }
        let mine = entry_records(&records, &name);
        match &row.expect {
            Expect::Dead(reason) => {
                let [record] = mine.as_slice() else {
                    bad.push(format!("{what}: {} dead letters, want 1", mine.len()));
                    continue;
                };
                if record["dlq_reason"] != *reason {
                    bad.push(format!(
                        "{what}: dlq_reason {}, want {reason}",
                        record["dlq_reason"]
                    ));
                }
                if record["retry_count"] != 0 || !record["dlq_timestamp"].is_string() {
                    bad.push(format!(
                        "{what}: no retry_count 0 or dlq_timestamp: {record}"
                    ));
                }
                let moved_aside = matches!(*reason, "not_a_regular_file" | "task_too_large");
                if moved_aside {
                    let rel = record["rejected_path"].as_str().unwrap_or("");
                    let moved = spool.dlq(W).join(rel);
                    let kept = rel.starts_with(".rejected/")
                        && fs::symlink_metadata(&moved).is_ok_and(|m| {
                            let t = m.file_type();
                            match row.entry.kind() {
                                "symlink" => t.is_symlink(),
                                "fifo" => t.is_fifo(),
                                "folder" => t.is_dir(),
                                "socket" => t.is_socket(),
                                "char device" => t.is_char_device(),
                                _ => t.is_file(),
                            }
                        });
                    if !kept {
                        bad.push(format!(
                            "{what}: not moved aside as a {} into .rejected/: {record}",
                            row.entry.kind()
                        ));
                    }
                } else if record.get("original").is_none()
                    && record.get("original_base64").is_none()
                {
                    bad.push(format!("{what}: the record keeps no content: {record}"));
                }
            }
            Expect::Ran {
                id,
                status,
                argv,
                once,
            } => {
                if !mine.is_empty() {
                    bad.push(format!(
                        "{what}: a valid task got an entry dead letter: {:?}",
                        mine
                    ));
                }
                let Some(result) = spool.result(W, id) else {
                    bad.push(format!("{what}: no result for {id}"));
                    continue;
                };
                if result["status"] != *status {
                    bad.push(format!(
                        "{what}: status {}, want {status}: {}",
                        result["status"],
                        tail(&result.to_string())
                    ));
                }
                if result["status"] == "failed" {
                    failed_results += 1;
                    let named = result["dlq_file"]
                        .as_str()
                        .is_some_and(|f| spool.dlq(W).join(f).is_file());
                    if !named {
                        bad.push(format!(
                            "{what}: a failed result names no dead letter: {}",
                            tail(&result.to_string())
                        ));
                    }
                }
                if let Some(want) = argv {
                    let got = fs::read(rec.join(format!("{id}.argv"))).unwrap_or_default();
                    if got != want.as_bytes() {
                        bad.push(format!(
                            "{what}: the agent got {:?} as its description, want {want:?}",
                            String::from_utf8_lossy(&got)
                        ));
                    }
                }
                if *once {
                    let runs: Vec<&str> = attempts
                        .lines()
                        .filter_map(|l| l.strip_prefix(&format!("{id} ")))
                        .collect();
                    if runs.len() != 1 || runs[0] == "0" {
                        bad.push(format!(
                            "{what}: with MAX_RETRIES=0 it must run once, as attempt 1 or later; it ran as attempts {runs:?}"
                        ));
                    }
                }
            }
            Expect::Either(ids) => {
                let results: Vec<&String> = ids
                    .iter()
                    .filter(|id| spool.result(W, id).is_some())
                    .collect();
                if mine.len() + results.len() != 1 {
                    bad.push(format!("{what}: want one outcome, got dead letters {mine:?} and results for {results:?}"));
                }
                failed_results += results
                    .iter()
                    .filter(|id| spool.result(W, id).is_some_and(|r| r["status"] == "failed"))
                    .count();
            }
        }
    }
    let entry_dead = records
        .iter()
        .filter(|r| r.get("original_name").is_some())
        .count();
    let want_entry_dead = rows
        .iter()
        .filter(|r| !matches!(r.expect, Expect::Ran { .. }))
        .count()
        - rows
            .iter()
            .filter(|r| match &r.expect {
                Expect::Either(ids) => ids.iter().any(|id| spool.result(W, id).is_some()),
                _ => false,
            })
            .count();
    if entry_dead != want_entry_dead || records.len() != entry_dead + failed_results {
        bad.push(format!(
            "{} dead letters ({entry_dead} of entries): want {want_entry_dead} of entries and {failed_results} of failed tasks",
            records.len()
        ));
    }
    for dir in [spool.tasks(W), spool.active(W), spool.deferred(W)] {
        let left = spool.names(&dir);
        if !left.is_empty() {
            bad.push(format!("left in {}: {left:?}", dir.display()));
        }
    }
    if spool.result(W, "victim").is_some() {
        bad.push("the task outside the spool ran: a symlink was followed".into());
    }
    bad.extend(outside.check("task files"));
    if !alive(&mut w) {
        bad.push("the worker exited".into());
    }
    let log = w.log_text();
    if log.contains("panicked") {
        bad.push(format!("the worker panicked: {}", tail(&log)));
    }
    assert_no_failures("hostile task files", &bad);
}

// ---------------------------------------------------------------------------
// 2. hw-enqueue: arguments and standard input

struct EnqueueRow {
    what: &'static str,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    allowed: &'static [i32],
}

fn enqueue_row(what: &'static str, args: &[&str], allowed: &'static [i32]) -> EnqueueRow {
    EnqueueRow {
        what,
        args: oss(args),
        stdin: None,
        allowed,
    }
}

fn enqueue_stdin(
    what: &'static str,
    args: &[&str],
    stdin: impl Into<Vec<u8>>,
    allowed: &'static [i32],
) -> EnqueueRow {
    EnqueueRow {
        what,
        args: oss(args),
        stdin: Some(stdin.into()),
        allowed,
    }
}

/// `hw-enqueue W --json` with `stdin`.
fn json_input(
    what: &'static str,
    stdin: impl Into<Vec<u8>>,
    allowed: &'static [i32],
) -> EnqueueRow {
    enqueue_stdin(what, &[W, "--json"], stdin, allowed)
}

#[rustfmt::skip]
fn enqueue_rows() -> Vec<EnqueueRow> {
    let long = "a".repeat(10_240);
    let mut rows = vec![
        enqueue_row("an id with a slash", &[W, "--id", "a/b", "d"], &[65]),
        enqueue_row("an id that is ..", &[W, "--id", "..", "d"], &[65]),
        enqueue_row("an id with a leading dot", &[W, "--id", ".hidden", "d"], &[65]),
        enqueue_row("an empty id", &[W, "--id", "", "d"], &[65]),
        enqueue_row("a 10 kB id", &[W, "--id", &long, "d"], &[65]),
        enqueue_row("a dependency escaping the spool", &[W, "--depends-on", "../../x", "d"], &[65]),
        enqueue_row("a worker escaping the spool", &["../sentinel", "d"], &[64]),
        enqueue_row("a worker that is ..", &["..", "d"], &[64]),
        enqueue_row("a worker with a slash", &["a/b", "d"], &[64]),
        enqueue_row("an empty worker", &["", "d"], &[64]),
        enqueue_row("a 10 kB worker", &[&long, "d"], &[64]),
        enqueue_row("the listener's folder as a worker", &["orchestrator", "d"], &[64]),
        enqueue_row("no worker", &[], &[64]),
        enqueue_row("an unknown option", &[W, "--bogus", "d"], &[64]),
        enqueue_row("an option without its value", &[W, "d", "--id"], &[64]),
        enqueue_row("a timeout that is not a number", &[W, "--timeout", "nan", "d"], &[78]),
        enqueue_row("a negative timeout", &[W, "--timeout", "-5", "d"], &[78]),
        enqueue_row("an infinite timeout", &[W, "--timeout", "1e400", "d"], &[78]),
        enqueue_row("a priority that is a command", &[W, "--priority", "$(id)", "d"], &[78]),
        enqueue_row("metadata without a key", &[W, "--meta", "=v", "d"], &[78]),
        enqueue_row("a count of zero", &[W, "--count", "0", "d"], &[78]),
        enqueue_row("a count beyond reason", &[W, "--count", "99999999999999999999", "d"], &[78]),
        enqueue_row("a wait timeout that is not a number", &[W, "--wait", "--wait-timeout", "nan", "d"], &[78]),
        enqueue_row("a description of shell metacharacters", &[W, "$(touch x); `touch y` | rm -rf /"], &[0]),
        enqueue_row("a description that looks like an option", &[W, "--", "--id", "-p"], &[0]),
        enqueue_stdin("a line with a NUL byte", &[W], b"before\0after\n".to_vec(), &[0, 65]),
        enqueue_stdin("a line that is not UTF-8", &[W], b"good line\n\xff\xfe\n".to_vec(), &[65]),
        enqueue_stdin("a 2 MiB line", &[W], [vec![b'x'; 2 << 20], b"\n".to_vec()].concat(), &[0, 65]),
        enqueue_stdin("only empty lines", &[W], "\n\n \n\t\n", &[0]),
        enqueue_stdin("CRLF lines", &[W], "one\r\ntwo\r\n", &[0]),
        json_input("--json: not JSON", "{oops\n", &[65]),
        json_input("--json: truncated", r#"{"task_id":"j0","descr"#, &[65]),
        json_input("--json: nested 100,000 deep", "[".repeat(100_000) + "\n", &[65]),
        json_input("--json: an array", "[]\n", &[65]),
        json_input("--json: null", "null\n", &[65]),
        json_input("--json: not UTF-8", b"{\"task_id\":\"\xff\"}\n".to_vec(), &[65]),
        json_input("--json: an id with NUL", r#"{"task_id":"a\u0000b","description":"d"}"#, &[65]),
        json_input("--json: another worker", r#"{"task_id":"j1","description":"d","worker":"../anga"}"#, &[65]),
        json_input("--json: a description that is a number", r#"{"task_id":"j2","description":5}"#, &[65]),
        json_input("--json: a dependency escaping the spool", r#"{"task_id":"j3","description":"d","dependencies":["../x"]}"#, &[65]),
        json_input("--json: a 10 kB id", format!(r#"{{"task_id":"{long}","description":"d"}}"#), &[65]),
        json_input("--json: a good line, then a bad one", "{\"task_id\":\"j4\",\"description\":\"d\"}\n{bad\n", &[65]),
        json_input("--json: a description with NUL", r#"{"task_id":"j5","description":"a\u0000b"}"#, &[0, 65]),
    ];
    for id in ESCAPING_IDS {
        rows.push(enqueue_row("an id escaping the spool", &[W, "--id", id, "d"], &[65]));
        rows.push(EnqueueRow {
            what: "--json: an id escaping the spool",
            args: oss(&[W, "--json"]),
            stdin: Some(json!({"task_id": id, "description": "d"}).to_string().into_bytes()),
            allowed: &[65],
        });
    }
    rows.push(EnqueueRow {
        what: "a description that is not UTF-8",
        args: vec![os(W), OsString::from_vec(b"caf\xe9".to_vec())],
        stdin: None,
        allowed: &[64],
    });
    rows.push(EnqueueRow {
        what: "a worker that is not UTF-8",
        args: vec![OsString::from_vec(b"m\xe9".to_vec()), os("d")],
        stdin: None,
        allowed: &[64],
    });
    rows
}

#[test]
fn hostile_hw_enqueue_input_is_refused_in_one_line_or_ends_in_a_result_or_dead_letter() {
    let spool = Spool::new();
    let outside = Outside::new(&spool);
    let mut bad = Vec::new();
    let mut printed: Vec<(String, &'static str)> = Vec::new();
    for row in enqueue_rows() {
        // -q: no warning (marie has no heartbeat) beside the one line of
        // an error.
        let args: Vec<OsString> = std::iter::once(os("-q"))
            .chain(row.args.iter().cloned())
            .collect();
        let f = run_with_stdin(&spool, "hw-enqueue", &args, &[], row.stdin.clone());
        bad.extend(judge(row.what, "hw-enqueue", &f, row.allowed));
        for id in f.stdout_text().lines() {
            printed.push((id.to_string(), row.what));
        }
        bad.extend(outside.check(row.what));
        // Nothing but the tasks it printed, and no staging file left over.
        let mut want: Vec<String> = printed.iter().map(|(id, _)| format!("{id}.json")).collect();
        want.sort();
        let found = all_names(&spool.tasks(W));
        if found != want {
            bad.push(format!(
                "{}: tasks/{W}/ holds {found:?}, want {want:?}",
                row.what
            ));
        }
    }
    let top = all_names(&spool.root);
    let workers = all_names(&spool.root.join("tasks"));
    if top != ["tasks"] || workers != [W] {
        bad.push(format!(
            "folders made for hostile workers: {top:?}, tasks/{workers:?}"
        ));
    }
    // What was accepted runs, or is dead-lettered with a reason.
    let mut w = worker_up(&spool, "/bin/true", &[], &[("MAX_RETRIES", "0")]);
    let ended = |id: &str| {
        spool.result(W, id).is_some()
            || spool.dlq_records(W).iter().any(|r| {
                r["task_id"] == id || r["original_name"].as_str() == Some(&format!("{id}.json"))
            })
    };
    wait_until(DEADLINE, || printed.iter().all(|(id, _)| ended(id)));
    for (id, what) in &printed {
        if !ended(id) {
            bad.push(format!(
                "{what}: task {id} has neither a result nor a dead letter"
            ));
        }
    }
    for r in spool.dlq_records(W) {
        if !r["dlq_reason"].as_str().is_some_and(|s| !s.is_empty()) {
            bad.push(format!("a dead letter without a reason: {r}"));
        }
    }
    if !alive(&mut w) || w.log_text().contains("panicked") {
        bad.push(format!(
            "the worker died or panicked: {}",
            tail(&w.log_text())
        ));
    }
    bad.extend(outside.check("after the worker ran"));
    assert_no_failures("hostile hw-enqueue input", &bad);
}

// ---------------------------------------------------------------------------
// 3. hw-dlq: arguments, over a dead-letter folder with hostile records

/// A dead-letter folder for W with one good record and hostile ones, and
/// a worker folder `linked` that is a symlink to the victim folder.
fn hostile_dlq(spool: &Spool, outside: &Outside) -> Result<(), String> {
    let dir = spool.dlq(W);
    fs::create_dir_all(dir.join(".rejected")).unwrap();
    let record = |id: &str, extra: Value| {
        let mut r = json!({"task_id": id, "description": "d", "dlq_reason": "max_retries_exceeded",
            "dlq_timestamp": "2023-11-14T22:13:20Z", "retry_count": 0, "last_error": "exit status 1"});
        if let (Some(r), Value::Object(extra)) = (r.as_object_mut(), extra) {
            r.extend(extra);
        }
        r.to_string().into_bytes()
    };
    let entry_record = |rejected: &str| {
        json!({"dlq_reason": "not_a_regular_file", "dlq_timestamp": "2023-11-14T22:13:20Z",
            "retry_count": 0, "original_name": "e.json", "rejected_path": rejected})
        .to_string()
        .into_bytes()
    };
    let victim = outside.victim.display().to_string();
    let entries = [
        (
            "keep_1700000000.json",
            Entry::Bytes(record("keep", json!({}))),
        ),
        (
            "evil_1700000001.json",
            Entry::Bytes(record(ESCAPING_IDS[1], json!({}))),
        ),
        (
            "rej_1700000002.json",
            Entry::Bytes(entry_record("../../../victim")),
        ),
        (
            "rej2_1700000003.json",
            Entry::Bytes(entry_record(".rejected/../../../victim")),
        ),
        ("rej3_1700000004.json", Entry::Bytes(entry_record(&victim))),
        (
            "deep_1700000005.json",
            Entry::Bytes("[".repeat(100_000).into_bytes()),
        ),
        ("bin_1700000006.json", Entry::Bytes(b"\xff\xfe{".to_vec())),
        ("fifo_1700000007.json", Entry::Fifo),
        ("dir_1700000008.json", Entry::Folder),
        (
            "link_1700000009.json",
            Entry::Symlink(outside.victim.join("victim_1700000000.json")),
        ),
        (
            "dep_1700000010.json",
            Entry::Bytes(record("dep", json!({"dependencies": ["../../x"]}))),
        ),
    ];
    for (name, entry) in &entries {
        make_entry(&dir.join(name), entry)?;
    }
    std::os::unix::fs::symlink(&outside.victim, spool.root.join("dlq").join("linked")).unwrap();
    Ok(())
}

#[test]
fn hostile_hw_dlq_arguments_get_one_line_errors_and_never_reach_outside_the_spool() {
    let long = "a".repeat(10_240);
    #[rustfmt::skip]
    let mut rows: Vec<(&str, Vec<OsString>, &[i32])> = vec![
        ("list", oss(&["list"]), &[0]),
        ("list --json", oss(&["--json", "list"]), &[0]),
        ("list a worker escaping the spool", oss(&["list", "../sentinel"]), &[64]),
        ("show an id escaping the spool", oss(&["show", W, ESCAPING_IDS[1]]), &[66]),
        ("show a 10 kB id", oss(&["show", W, &long]), &[66]),
        ("show a record nested 100,000 deep", oss(&["show", W, "deep"]), &[65]),
        ("show a record that is not UTF-8", oss(&["show", W, "bin"]), &[65]),
        ("show a FIFO", oss(&["show", W, "fifo_1700000007.json"]), &[66]),
        ("show a symlinked record", oss(&["show", W, "link_1700000009.json"]), &[66]),
        ("show without an id", oss(&["show", W]), &[64]),
        ("show with a worker escaping the spool", oss(&["show", "../marie", "keep"]), &[64]),
        ("replay a record whose id escapes the spool", oss(&["replay", W, "evil"]), &[1]),
        ("replay a record with a dependency escaping the spool", oss(&["replay", W, "dep"]), &[1]),
        ("replay an id escaping the spool", oss(&["replay", W, ESCAPING_IDS[1]]), &[66]),
        ("replay everything", oss(&["replay", "--all"]), &[1]),
        ("purge a rejected_path leaving the spool", oss(&["purge", W, "rej"]), &[1]),
        ("purge a rejected_path through .rejected/..", oss(&["purge", W, "rej2"]), &[1]),
        ("purge an absolute rejected_path", oss(&["purge", W, "rej3"]), &[1]),
        ("purge everything", oss(&["purge", "--all", W]), &[1]),
        ("purge --all with ids", oss(&["purge", "--all", W, "keep"]), &[64]),
        ("a bare replay", oss(&["replay", W]), &[64]),
        ("an infinite --older-than", oss(&["list", "--older-than", "1e400"]), &[78]),
        ("a --older-than that is not a number", oss(&["purge", "--older-than", "nan"]), &[78]),
        ("an empty --reason", oss(&["replay", "--reason", ""]), &[78]),
        ("an unknown command", oss(&["frob"]), &[64]),
        ("no command", oss(&[]), &[64]),
        // A worker folder that is a symlink out of the spool: whatever
        // the answer, nothing out there is replayed or purged.
        ("list a symlinked worker folder", oss(&["list", "linked"]), &[0, 1, 64, 66, 74]),
        ("replay a symlinked worker folder", oss(&["replay", "--all", "linked"]), &[0, 1, 64, 66, 74]),
        ("purge a symlinked worker folder", oss(&["purge", "--all", "linked"]), &[0, 1, 64, 66, 74]),
    ];
    rows.push((
        "an id that is not UTF-8",
        vec![os("show"), os(W), OsString::from_vec(b"\xff".to_vec())],
        &[64],
    ));
    let failures = in_parallel(rows, |(what, args, allowed)| {
        let spool = Spool::new();
        let outside = Outside::new(&spool);
        if let Err(why) = hostile_dlq(&spool, &outside) {
            eprintln!("skipping {what}: {why}");
            return Vec::new();
        }
        let mut argv = vec![os("--root"), spool.root.clone().into_os_string()];
        argv.extend(args);
        let f = run(&spool, "hw-dlq", &argv, &[]);
        let mut bad = judge(what, "hw-dlq", &f, allowed);
        if f.code() == Some(1) && !f.stderr.lines().all(|l| l.starts_with("hw-dlq: ")) {
            bad.push(format!(
                "{what}: stderr lines not all from hw-dlq: {}",
                tail(&f.stderr)
            ));
        }
        bad.extend(outside.check(what));
        let keep = spool.tasks(W).join("keep.json");
        let tasks = all_names(&spool.tasks(W));
        let fine = tasks.is_empty() || (tasks == ["keep.json"] && read_json(&keep).is_some());
        if !fine {
            bad.push(format!(
                "{what}: tasks/{W}/ holds {tasks:?}: only keep may be replayed"
            ));
        }
        bad
    });
    assert_no_failures("hostile hw-dlq arguments", &failures);
}

// ---------------------------------------------------------------------------
// 4. the listener's state file (STATE_FILE) and its journal

/// hw-listen --once on a spool whose state file (or journal) is `entry`.
fn listen_once(spool: &Spool, state: &Path) -> Finished {
    let state = state.display().to_string();
    run(
        spool,
        "hw-listen",
        &oss(&["--once"]),
        &[("STATE_FILE", state.as_str())],
    )
}

#[test]
fn a_hostile_state_file_is_refused_in_one_line_or_read_and_never_hangs_or_panics() {
    let bytes = |b: &[u8]| Some(Entry::Bytes(b.to_vec()));
    let link = |to: &str| Some(Entry::Symlink(PathBuf::from(to)));
    let state = |v: Value| Some(Entry::Bytes(v.to_string().into_bytes()));
    let task_state = |t: Value| state(json!({"version": 1, "tasks": {"w/t": t}}));
    let journal_line = |t: Value| bytes(format!("{}\n", json!({"task": ["w/t", t]})).as_bytes());
    let mut huge = serde_json::Map::new();
    for i in 0..50_000 {
        huge.insert(
            format!("w/t{i}"),
            json!({"enqueued": 1.0, "status": "completed", "ended": 4e9}),
        );
    }
    let huge = state(json!({"version": 1, "horizon": 1.0, "tasks": huge}));
    let valid = json!({"version": 1, "horizon": 1.0, "tasks": {}}).to_string();
    let valid = valid.as_bytes();
    let deep = "[".repeat(100_000);
    let nested = format!(
        r#"{{"tasks":{{"w/t":{{"batch":{deep}1{}}}}}}}"#,
        "]".repeat(100_000)
    );
    let escaping_keys = state(json!({"version": 1, "tasks": {
        "../../../sentinel/x": {"enqueued": 1.0}, "": {"enqueued": 1.0},
        "w": {"enqueued": 1.0, "batch": "../../sentinel/b"}}}));
    let ended = json!({"enqueued": 1.0, "status": "completed", "ended": -1e308});
    // (what, the state file, the journal beside it, allowed statuses)
    type StateRow = (&'static str, Option<Entry>, Option<Entry>, &'static [i32]);
    #[rustfmt::skip]
    let rows: Vec<StateRow> = vec![
        ("malformed", bytes(br#"{"tasks":"#), None, &[65]),
        ("truncated", bytes(&valid[..valid.len() / 2]), None, &[65]),
        ("empty", bytes(b""), None, &[65]),
        ("nested 100,000 deep", bytes(deep.as_bytes()), None, &[65]),
        ("nested deep inside", bytes(nested.as_bytes()), None, &[65]),
        ("not UTF-8", bytes(b"\xff\xfe{}"), None, &[65]),
        ("an array instead of an object", state(json!([])), None, &[65]),
        ("null", state(Value::Null), None, &[65]),
        ("tasks of the wrong type", state(json!({"tasks": 5})), None, &[65]),
        ("a horizon of the wrong type", state(json!({"horizon": "x"})), None, &[65]),
        ("a negative version", state(json!({"version": -1})), None, &[65]),
        ("an unknown health", state(json!({"workers": {"w": {"health": "zombie"}}})), None, &[65]),
        ("an enqueue time of -1e308", task_state(json!({"enqueued": -1e308})), None, &[0, 65]),
        ("an enqueue time of -1e19", task_state(json!({"enqueued": -1e19})), None, &[0, 65]),
        ("an enqueue time of 1e308", task_state(json!({"enqueued": 1e308})), None, &[0, 65]),
        ("an end time of -1e308", task_state(ended), None, &[0, 65]),
        ("a horizon of -1e308", state(json!({"version": 1, "horizon": -1e308})), None, &[0, 65]),
        ("a horizon of 1e308", state(json!({"version": 1, "horizon": 1e308})), None, &[0, 65]),
        ("task keys escaping the spool", escaping_keys, None, &[0, 65]),
        ("50,000 tasks", huge, None, &[0]),
        ("a sparse 4 GiB file", Some(Entry::Sparse(4 << 30)), None, &[65, 74]),
        ("an endless file (/dev/zero)", link("/dev/zero"), None, &[65, 74]),
        ("a FIFO", Some(Entry::Fifo), None, &[65, 74]),
        ("a folder", Some(Entry::Folder), None, &[65, 74]),
        ("a char device (/dev/null)", Some(Entry::CharDevice), None, &[0, 65, 74]),
        ("a dangling symlink", link("/nonexistent/state.json"), None, &[0, 65, 74]),
        ("a journal that is a FIFO", bytes(valid), Some(Entry::Fifo), &[0, 65, 74]),
        ("a journal that is endless", bytes(valid), link("/dev/zero"), &[0, 65, 74]),
        ("a journal of garbage", bytes(valid), bytes(b"{oops\n\xff\xfe\n[[[[\n{\"task\":5}\n"), &[0, 65]),
        ("a journal nested 100,000 deep", bytes(valid), bytes(deep.as_bytes()), &[0, 65]),
        ("a journal line with an enqueue time of -1e308", None, journal_line(json!({"enqueued": -1e308})), &[0, 65]),
        ("a journal line with an enqueue time of -1e19", None, journal_line(json!({"enqueued": -1e19})), &[0, 65]),
    ];
    let failures = in_parallel(rows, |(what, file, journal, allowed)| {
        let spool = Spool::new();
        let outside = Outside::new(&spool);
        let path = spool.root.join("orchestrator_state.json");
        let journal_path = spool.root.join(".orchestrator_state.json.journal");
        for (p, e) in [(&path, &file), (&journal_path, &journal)] {
            if let Some(e) = e {
                if let Err(why) = make_entry(p, e) {
                    eprintln!("skipping the state file row {what:?}: {why}");
                    return Vec::new();
                }
            }
        }
        let f = listen_once(&spool, &path);
        let mut bad = judge(what, "hw-listen", &f, allowed);
        bad.extend(outside.check(what));
        bad
    });
    // The victim of a symlinked state file is replaced, never written through.
    let spool = Spool::new();
    let outside = Outside::new(&spool);
    let path = spool.root.join("orchestrator_state.json");
    std::os::unix::fs::symlink(outside.victim.join("victim.json"), &path).unwrap();
    let f = listen_once(&spool, &path);
    let mut failures = failures;
    failures.extend(judge(
        "a symlink to a file outside",
        "hw-listen",
        &f,
        &[0, 65],
    ));
    failures.extend(outside.check("a symlink to a file outside"));
    assert_no_failures("hostile state files", &failures);
}

// ---------------------------------------------------------------------------
// 5. heartbeat files, as hw-status and hw-listen read them

/// Control characters in human output (a terminal would obey them).
fn control_chars(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

#[test]
fn hostile_heartbeats_leave_hw_status_and_hw_listen_with_a_verdict_and_no_hang() {
    let beat = |v: Value| Entry::Bytes(v.to_string().into_bytes());
    let fresh = |extra: Value| {
        let mut b = json!({"worker": W, "timestamp": FUTURE, "status": "healthy",
            "heartbeat_interval": 10, "circuit_breaker_state": "closed"});
        if let (Some(b), Value::Object(extra)) = (b.as_object_mut(), extra) {
            b.extend(extra);
        }
        beat(b)
    };
    let mut huge = json!({"worker": W, "timestamp": FUTURE, "status": "healthy"});
    huge["hostname"] = json!("h".repeat(3 << 20));
    let nested = format!(
        r#"{{"worker":"marie","stats":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let escapes = fresh(json!({
        "status": "healthy\u{1b}[2J\rfake",
        "circuit_breaker_state": "\u{1b}]0;pwned\u{7}",
        "metrics_addr": "\r\u{1b}[1Aoverall: ok\u{0}"}));
    #[rustfmt::skip]
    let rows: Vec<(&str, Entry)> = vec![
        ("malformed", Entry::Bytes(br#"{"timestamp": "#.to_vec())),
        ("truncated", Entry::Bytes(br#"{"worker":"marie","timestamp":"2999-01-01T00:0"#.to_vec())),
        ("empty", Entry::Bytes(Vec::new())),
        ("nested 100,000 deep", Entry::Bytes("[".repeat(100_000).into_bytes())),
        ("nested deep inside", Entry::Bytes(nested.into_bytes())),
        ("not UTF-8", Entry::Bytes(b"{\"worker\":\"m\xffrie\"}".to_vec())),
        ("an array", beat(json!([]))),
        ("null", beat(Value::Null)),
        ("a timestamp that is a number", fresh(json!({"timestamp": 5}))),
        ("a timestamp that is garbage", fresh(json!({"timestamp": "yesterday"}))),
        ("a timestamp in year 0", fresh(json!({"timestamp": "0000-01-01T00:00:00Z"}))),
        ("a timestamp with a 99:99 offset", fresh(json!({"timestamp": "2999-01-01T00:00:00+99:99"}))),
        ("a timestamp with a multibyte character", fresh(json!({"timestamp": "2999-01-01T00:00:0\u{e9}Z"}))),
        ("an interval that is a string", fresh(json!({"heartbeat_interval": "10"}))),
        ("a negative interval", fresh(json!({"heartbeat_interval": -5}))),
        ("an interval of 1e308", fresh(json!({"heartbeat_interval": 1e308}))),
        ("an interval of 1e-300", fresh(json!({"heartbeat_interval": 1e-300}))),
        ("an uptime of -1e308", fresh(json!({"uptime_seconds": -1e308}))),
        ("an uptime of 1e308", fresh(json!({"uptime_seconds": 1e308}))),
        ("stats of the wrong type", fresh(json!({"stats": "many"}))),
        ("a status that is a number", fresh(json!({"status": 5}))),
        ("a negative pid", fresh(json!({"pid": -1}))),
        ("terminal escapes in every field", escapes),
        ("3 MiB", beat(huge)),
        ("a sparse 4 GiB file", Entry::Sparse(4 << 30)),
        ("an endless file (/dev/zero)", Entry::Symlink(PathBuf::from("/dev/zero"))),
        ("a FIFO", Entry::Fifo),
        ("a folder", Entry::Folder),
        ("a socket", Entry::Socket),
        ("a char device (/dev/null)", Entry::CharDevice),
        ("a dangling symlink", Entry::Symlink(PathBuf::from("/nonexistent/marie.json"))),
    ];
    let failures = in_parallel(rows, |(what, entry)| {
        let spool = Spool::new();
        let outside = Outside::new(&spool);
        let dir = spool.root.join("heartbeats");
        if let Err(why) = drop_entry(&dir, OsStr::new(&format!("{W}.json")), &entry) {
            eprintln!("skipping the heartbeat row {what:?}: {why}");
            return Vec::new();
        }
        let mut bad = Vec::new();
        // The three at once, so that a row that hangs costs one bound.
        let json = start(&spool, "hw-status", &oss(&["--json"]), &[], None);
        let table = start(&spool, "hw-status", &[], &[], None);
        let listen = start(&spool, "hw-listen", &oss(&["--once"]), &[], None);
        let deadline = Instant::now() + RUN_BOUND;
        // hw-status --json: a verdict (not "unknown": the spool is readable).
        let f = json.finish_by(deadline);
        let what_json = format!("{what} (hw-status --json)");
        bad.extend(judge(&what_json, "hw-status", &f, &[0, 1, 2]));
        if f.status.is_some() {
            match serde_json::from_slice::<Value>(&f.stdout) {
                Ok(v) if v["workers"][W]["status"].is_string() => {}
                _ => bad.push(format!(
                    "{what_json}: no status for {W} in {:?}",
                    tail(&f.stdout_text())
                )),
            }
        }
        // hw-status's table: no control character reaches the terminal.
        let f = table.finish_by(deadline);
        let what_table = format!("{what} (hw-status)");
        bad.extend(judge(&what_table, "hw-status", &f, &[0, 1, 2]));
        let found = control_chars(&f.stdout_text());
        if !found.is_empty() {
            bad.push(format!(
                "{what_table}: control characters reach the terminal: {found:?} in {:?}",
                f.stdout_text()
            ));
        }
        // hw-listen --once: catches up and exits.
        let f = listen.finish_by(deadline);
        let what_listen = format!("{what} (hw-listen --once)");
        bad.extend(judge(&what_listen, "hw-listen", &f, &[0]));
        for line in f.stdout_text().lines() {
            if serde_json::from_str::<Value>(line).is_err() {
                bad.push(format!(
                    "{what_listen}: an event that is not JSON: {line:?}"
                ));
            }
        }
        bad.extend(outside.check(what));
        bad
    });
    assert_no_failures("hostile heartbeats", &failures);
}

// ---------------------------------------------------------------------------
// 6. mutated task files: the parser and the claim path

/// xorshift64: small, seeded, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The seed of this run: `HW_HOSTILE_SEED` to replay one, else the clock.
fn seed() -> u64 {
    if let Some(s) = std::env::var("HW_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s;
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
}

const FIELDS: [&str; 10] = [
    "task_id",
    "description",
    "worker",
    "priority",
    "timeout",
    "dependencies",
    "metadata",
    "retry_count",
    "not_before",
    "x-extra",
];

const ODD_STRINGS: [&str; 18] = [
    "",
    "high",
    "HIGH",
    "low ",
    "marie",
    "anga",
    "../x",
    "a/b",
    "..",
    ".h",
    "a\u{0}b",
    "\u{1b}[2J",
    "2000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-13-45T99:99:99Z",
    "60",
    "-1",
    "\u{1F980}",
];

fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(*rng.pick(&[
            0i64,
            -1,
            1,
            7,
            4_294_967_295,
            4_294_967_296,
            i64::MAX,
            i64::MIN
        ])),
        3 => json!(*rng.pick(&[0.5f64, -0.0, 1e-300, 1e308, -1e308, 600.25])),
        4 | 5 => json!(*rng.pick(&ODD_STRINGS)),
        6 => json!([]),
        7 => json!([*rng.pick(&ODD_STRINGS), 5]),
        _ => json!({"k": *rng.pick(&ODD_STRINGS)}),
    }
}

fn base_task(rng: &mut Rng, id: &str) -> Value {
    let mut t = json!({"task_id": id, "description": "mutant"});
    if rng.chance(50) {
        t["priority"] = json!(*rng.pick(&["high", "normal", "low"]));
    }
    if rng.chance(30) {
        t["timeout"] = json!(*rng.pick(&[30, 60, 600]));
    }
    if rng.chance(40) {
        t["metadata"] = json!({"batch_id": "b-1", "n": 1, "nested": {"a": [1, 2, {"b": null}]}});
    }
    if rng.chance(20) {
        t["worker"] = json!(W);
    }
    if rng.chance(20) {
        t["dependencies"] = json!([]);
    }
    if rng.chance(20) {
        t["retry_count"] = json!(0);
    }
    if rng.chance(10) {
        t["not_before"] = json!("2000-01-01T00:00:00Z");
    }
    if rng.chance(20) {
        t["x-extra"] = json!("kept");
    }
    t
}

/// A long string: mostly short, now and then very long.
fn long_string(rng: &mut Rng, very_long: bool) -> String {
    let len = match () {
        _ if very_long && rng.chance(10) => 60_000 + rng.below(140_000),
        _ => rng.below(5_000),
    };
    let c = *rng.pick(&[
        'x',
        '\u{e9}',
        '"',
        '\\',
        '\n',
        '\u{0}',
        '\u{7f}',
        '\u{1F980}',
    ]);
    c.to_string().repeat(len)
}

fn mutate_value(rng: &mut Rng, v: &mut Value, very_long: bool) {
    let field = *rng.pick(&FIELDS);
    let choice = rng.below(7);
    if choice == 6 {
        *v = if rng.chance(50) {
            json!([v.take()])
        } else {
            json!({"task": v.take()})
        };
        return;
    }
    // Once wrapped, it stays what it is.
    let Some(task) = v.as_object_mut() else {
        return;
    };
    let value = match choice {
        // Swap a field's type.
        0 | 1 => odd_value(rng),
        2 => {
            task.remove(field);
            return;
        }
        3 => {
            let id = *rng.pick(&[
                "../x",
                "a/b",
                "",
                ".",
                "..",
                ".h",
                "a\u{0}b",
                "-x",
                "caf\u{e9}",
                "a b",
            ]);
            task.insert("task_id".into(), json!(id));
            return;
        }
        4 => {
            let key = *rng.pick(&["description", "task_id", "priority", "x-extra"]);
            task.insert(key.into(), json!(long_string(rng, very_long)));
            return;
        }
        _ => {
            // Around serde_json's limit of 128 levels, or shallow.
            let depth = if rng.chance(50) {
                120 + rng.below(16)
            } else {
                rng.below(10)
            };
            // Built by hand: json! would copy the whole value at each level.
            let mut nested = json!(1);
            for _ in 0..depth {
                nested = if rng.chance(50) {
                    Value::Array(vec![nested])
                } else {
                    Value::Object([("a".to_string(), nested)].into_iter().collect())
                };
            }
            json!({ "deep": nested })
        }
    };
    let key = if choice == 5 { "metadata" } else { field };
    task.insert(key.into(), value);
}

fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    let at = |rng: &mut Rng, b: &Vec<u8>| rng.below(b.len() + 1);
    match rng.below(9) {
        0 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = at(rng, b);
            let c = *rng.pick(b"{}[]\":,\\0123456789eE-+.tfn \n\x00\xff");
            b.insert(i, c);
        }
        2 if !b.is_empty() => {
            let i = rng.below(b.len());
            let n = (1 + rng.below(8)).min(b.len() - i);
            b.drain(i..i + n);
        }
        3 => {
            let n = rng.below(b.len() + 1);
            b.truncate(n);
        }
        4 => {
            let dup = *rng.pick(&[
                r#","task_id":"dup""#,
                r#","task_id":5"#,
                r#","description":"""#,
                r#","priority":"high""#,
                r#","timeout":-1"#,
                r#","worker":"anga""#,
                r#","dependencies":["x"]"#,
                r#","retry_count":4294967295"#,
            ]);
            let i = b.iter().rposition(|&c| c == b'}').unwrap_or(b.len());
            b.splice(i..i, dup.bytes());
        }
        5 => {
            let i = at(rng, b);
            b.insert(i, 0);
        }
        6 => {
            let choices: [&[u8]; 4] = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"];
            let bad = *rng.pick(&choices);
            let i = at(rng, b);
            b.splice(i..i, bad.iter().copied());
        }
        7 if !b.is_empty() => {
            let from = rng.below(b.len());
            let to = (from + 1 + rng.below(64)).min(b.len());
            let piece = b[from..to].to_vec();
            let i = at(rng, b);
            b.splice(i..i, piece);
        }
        _ => {
            let open = if rng.chance(50) {
                &b"["[..]
            } else {
                br#"{"a":"#
            };
            let n = 1 + rng.below(2000);
            let i = at(rng, b);
            b.splice(i..i, open.repeat(n));
        }
    }
}

/// A task file: a valid task, changed by up to two structural mutations
/// and up to three byte mutations.
fn mutant(rng: &mut Rng, id: &str, very_long: bool) -> Vec<u8> {
    let mut v = base_task(rng, id);
    for _ in 0..rng.below(3) {
        mutate_value(rng, &mut v, very_long);
    }
    let mut bytes = if rng.chance(20) {
        serde_json::to_vec_pretty(&v).unwrap()
    } else {
        serde_json::to_vec(&v).unwrap()
    };
    let n = if rng.chance(25) { 0 } else { 1 + rng.below(3) };
    for _ in 0..n {
        mutate_bytes(rng, &mut bytes);
    }
    bytes
}

/// Swaps `.active` and `.deferred` of the tasks folder `tasks` with
/// symbolic links to `outside` (atomically, `RENAME_EXCHANGE`) and back,
/// again and again until `stop`: SPEC section 2's folder swap, raced
/// against the claims. Returns how many swaps it made.
fn swap_folders(
    tasks: PathBuf,
    outside: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use nix::fcntl::{renameat2, RenameFlags};
    std::thread::spawn(move || {
        let pairs: Vec<(PathBuf, PathBuf)> = [".active", ".deferred"]
            .iter()
            .map(|f| (tasks.join(f), tasks.join(format!("{f}-link"))))
            .collect();
        for (_, link) in &pairs {
            std::os::unix::fs::symlink(&outside, link).unwrap();
        }
        let exchange =
            |a: &Path, b: &Path| renameat2(None, a, None, b, RenameFlags::RENAME_EXCHANGE);
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            for (folder, link) in &pairs {
                if exchange(folder, link).is_ok() {
                    std::thread::sleep(Duration::from_millis(2));
                    exchange(folder, link).expect("swap back");
                    swaps += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, link) in &pairs {
            let _ = fs::remove_file(link);
        }
        swaps
    })
}

/// What the worker must make of a file: run it, dead-letter it, or let
/// it wait.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Runs(String),
    Dead(&'static str),
    /// Valid, but waits (dependencies, a future `not_before`): not used.
    Waits,
}

/// The fate of a task file of W, read from SPEC section 4 here (not
/// taken from the library's parser, so that the worker is held to the
/// contract): too large, not JSON, not a valid task, or a task that
/// runs or waits.
fn fate(bytes: &[u8], max_bytes: usize, now: f64) -> Fate {
    if bytes.len() > max_bytes {
        return Fate::Dead("task_too_large");
    }
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Fate::Dead("invalid_json");
    };
    match valid_task(&value, now) {
        None => Fate::Dead("invalid_task"),
        Some((_, true)) => Fate::Waits,
        Some((id, false)) => Fate::Runs(id),
    }
}

/// A task's id and whether it must wait (for dependencies, or for a
/// `not_before` still to come), or `None` when it breaks a rule: not an
/// object; `task_id` not a name; `description` not a non-empty string
/// without a NUL (a long one goes on stdin); `worker` not W; `priority` not high,
/// normal or low; `timeout` not a positive number; `metadata` not an
/// object; `retry_count` not a count; `dependencies` not a list of
/// names; `not_before` not an RFC 3339 time. An optional field given as
/// null counts as absent.
fn valid_task(value: &Value, now: f64) -> Option<(String, bool)> {
    let task = value.as_object()?;
    let field = |key: &str| task.get(key).filter(|v| !v.is_null());
    let id = task
        .get("task_id")?
        .as_str()
        .filter(|id| is_valid_name(id))?;
    let description = task.get("description")?.as_str()?;
    let valid = !description.is_empty()
        && !description.contains('\0')
        && field("worker").map_or(true, |w| *w == W)
        && field("priority").map_or(true, |p| {
            matches!(p.as_str(), Some("high" | "normal" | "low"))
        })
        && field("timeout").map_or(true, |t| {
            t.as_f64().is_some_and(|t| t > 0.0 && t.is_finite())
        })
        && field("metadata").map_or(true, Value::is_object)
        && field("retry_count").map_or(true, |n| {
            n.as_u64().is_some_and(|n| u32::try_from(n).is_ok())
        });
    if !valid {
        return None;
    }
    let dependencies = match field("dependencies") {
        None => 0,
        Some(Value::Array(deps)) if deps.iter().all(|d| d.as_str().is_some_and(is_valid_name)) => {
            deps.len()
        }
        Some(_) => return None,
    };
    let not_before = match field("not_before") {
        None => None,
        Some(v) => Some(parse_rfc3339(v.as_str()?)?),
    };
    let waits = dependencies > 0 || not_before.is_some_and(|t| t > now - 1.0);
    Some((id.to_string(), waits))
}

fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(300)];
    format!("{:?} ({} bytes)", String::from_utf8_lossy(cut), bytes.len())
}

/// How many of a batch of mutants were valid tasks, and how many not.
struct Drawn {
    runs: usize,
    dead: usize,
}

/// Drops `inputs` mutated task files (seeded by `seed`; with
/// `very_long`, some descriptions near the size limit) into a worker's
/// folder and checks that each ends as `fate` says: a valid task in
/// exactly one result (and, when failed, one dead letter), any other file
/// in exactly one dead letter with the reason the spec gives; that the
/// worker neither exits nor panics; and that at least 1 % and at most
/// 99 % of the mutants are valid (else the generator tests too little).
fn mutants_end_as_the_spec_says(seed: u64, inputs: usize, very_long: bool) -> Drawn {
    const MAX_BYTES: usize = 65_536;
    let replay = format!("seed {seed} (replay with HW_HOSTILE_SEED={seed})");
    eprintln!("claim path property test: {replay}");
    let spool = Spool::new();
    let max = MAX_BYTES.to_string();
    let mut w = worker_up(
        &spool,
        "/bin/true",
        &["--max-task-bytes", &max],
        &[
            ("MAX_RETRIES", "0"),
            ("MAX_CONCURRENT_TASKS", "4"),
            ("LOG_LEVEL", "warning"),
            ("TASK_TIMEOUT", "30"),
        ],
    );
    let outside = spool.scratch("outside");
    fs::create_dir_all(&outside).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = swap_folders(spool.tasks(W), outside.clone(), stop.clone());
    let now = unix_now();
    let mut rng = Rng::new(seed);
    let mut dropped: Vec<(String, Vec<u8>, Fate)> = Vec::with_capacity(inputs);
    let mut ids = HashSet::new();
    for i in 0..inputs {
        // Valid tasks that would wait, or share an id, are drawn again.
        let (bytes, fate) = (0..100)
            .map(|_| {
                let b = mutant(&mut rng, &format!("m{i}"), very_long);
                let f = fate(&b, MAX_BYTES, now);
                (b, f)
            })
            .find(|(_, f)| match f {
                Fate::Runs(id) => !ids.contains(id),
                Fate::Waits => false,
                Fate::Dead(_) => true,
            })
            .unwrap_or_else(|| (b"{".to_vec(), Fate::Dead("invalid_json")));
        if let Fate::Runs(id) = &fate {
            ids.insert(id.clone());
        }
        let file = format!("f{i}.json");
        spool.drop_bytes(W, &file, &bytes);
        dropped.push((file, bytes, fate));
    }
    let runs = dropped
        .iter()
        .filter(|(_, _, f)| matches!(f, Fate::Runs(_)))
        .count();
    let dead = dropped.len() - runs;
    eprintln!("claim path property test: {runs} valid and {dead} bad inputs dropped");
    let count = |dir: &Path| json_files(dir).len();
    let empty = |dir: &Path| all_names(dir).iter().all(|n| n.starts_with('.'));
    let end = Instant::now() + Duration::from_secs(60);
    let mut done = false;
    while Instant::now() < end {
        done = empty(&spool.tasks(W))
            && empty(&spool.active(W))
            && empty(&spool.deferred(W))
            && count(&spool.results(W)) >= runs
            && count(&spool.dlq(W)) >= dead;
        if done || !alive(&mut w) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("claim path property test: .active and .deferred swapped for symlinks {swaps} times");
    let mut bad = Vec::new();
    if swaps == 0 || !all_names(&outside).is_empty() {
        bad.push(format!(
            "{swaps} folder swaps; written outside the spool: {:?}",
            all_names(&outside)
        ));
    }
    if !(inputs / 100..=inputs * 99 / 100).contains(&runs) {
        bad.push(format!(
            "{runs} of {inputs} mutants were valid: the generator tests too little"
        ));
    }
    if !done {
        bad.push(format!(
            "not all {inputs} inputs ended: pending {}, active {}, deferred {}, results {}/{runs}, dead letters {}/{dead}+",
            spool.names(&spool.tasks(W)).len(),
            spool.names(&spool.active(W)).len(),
            spool.names(&spool.deferred(W)).len(),
            count(&spool.results(W)),
            count(&spool.dlq(W)),
        ));
    }
    let results: HashMap<String, Value> = json_files(&spool.results(W))
        .iter()
        .filter_map(|p| {
            let id = p.file_stem()?.to_string_lossy().into_owned();
            Some((id, read_json(p)?))
        })
        .collect();
    let records = spool.dlq_records(W);
    let mut by_name: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut by_task: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        match (r["original_name"].as_str(), r["task_id"].as_str()) {
            (Some(name), _) => by_name.entry(name).or_default().push(r),
            (None, Some(id)) => *by_task.entry(id).or_default() += 1,
            (None, None) => bad.push(format!("a dead letter of nothing: {r}")),
        }
    }
    let mut failed = 0;
    for (i, (file, bytes, fate)) in dropped.iter().enumerate() {
        let mine = by_name.get(file.as_str()).map_or(0, Vec::len);
        let problem = match fate {
            Fate::Runs(id) => match results.get(id) {
                None => Some(format!("a valid task ({id}) has no result")),
                Some(_) if mine > 0 => Some(format!(
                    "a valid task ({id}) was dead-lettered as a bad entry"
                )),
                Some(r) if r["status"] == "failed" => {
                    failed += 1;
                    (by_task.get(id.as_str()) != Some(&1)).then(|| {
                        format!(
                            "a failed task ({id}) has {:?} dead letters, want 1",
                            by_task.get(id.as_str())
                        )
                    })
                }
                Some(_) => by_task
                    .contains_key(id.as_str())
                    .then(|| format!("a completed task ({id}) was dead-lettered too")),
            },
            Fate::Dead(reason) => match by_name.get(file.as_str()).map(Vec::as_slice) {
                Some([r]) if r["dlq_reason"] == *reason => None,
                Some([r]) => Some(format!(
                    "dead-lettered as {}, want {reason}",
                    r["dlq_reason"]
                )),
                other => Some(format!(
                    "{} dead letters, want one ({reason})",
                    other.map_or(0, <[_]>::len)
                )),
            },
            Fate::Waits => unreachable!("waiting tasks are drawn again"),
        };
        if let Some(p) = problem {
            bad.push(format!("input {i} ({file}): {p}: {}", show(bytes)));
        }
    }
    if results.len() != runs {
        bad.push(format!("{} results for {runs} valid tasks", results.len()));
    }
    if records.len() != dead + failed {
        bad.push(format!(
            "{} dead letters, want {dead} of bad files and {failed} of failed tasks",
            records.len()
        ));
    }
    if !alive(&mut w) {
        bad.push("the worker exited".into());
    }
    let log = w.log_text();
    if log.contains("panicked") {
        bad.push(format!("the worker panicked: {}", tail(&log)));
    }
    let shown: Vec<String> = bad.iter().take(30).cloned().collect();
    assert!(
        bad.is_empty(),
        "{replay}; {runs} valid and {dead} bad inputs; {} problem(s), the first:\n- {}",
        bad.len(),
        shown.join("\n- ")
    );
    Drawn { runs, dead }
}

#[test]
fn mutated_task_files_each_end_in_exactly_one_result_or_dead_letter() {
    mutants_end_as_the_spec_says(seed(), 3_000, true);
}

/// 100,000 mutants (in rounds of 3,125, each on its own spool and
/// worker, four rounds at a time: a worker waits on its disk and its
/// agents more than it computes) through the worker's parser and claim
/// path.
#[test]
#[ignore = "slow: run with --ignored"]
fn a_hundred_thousand_mutated_task_files_end_as_the_spec_says_without_a_panic() {
    const LANES: u64 = 4;
    let first = seed();
    let lane = |k: u64| {
        (0..32 / LANES).fold((0, 0), |(runs, dead), i| {
            let round = k + LANES * i;
            let drawn = mutants_end_as_the_spec_says(first.wrapping_add(round), 3_125, false);
            (runs + drawn.runs, dead + drawn.dead)
        })
    };
    let (runs, dead) = std::thread::scope(|s| {
        let lanes: Vec<_> = (0..LANES).map(|k| s.spawn(move || lane(k))).collect();
        lanes.into_iter().fold((0, 0), |(r, d), h| {
            let (lr, ld) = h.join().expect("a round failed (its message is above)");
            (r + lr, d + ld)
        })
    });
    assert_eq!(runs + dead, 100_000);
    eprintln!("{runs} valid and {dead} bad of 100,000 mutants (first seed {first})");
}

// ---------------------------------------------------------------------------
// 7. security: a task folder strangers may write is refused

/// Gives the tasks folder its hostile owner and mode; `None`, and the
/// row `what` skipped with a message, when this system cannot (chown
/// needs root).
fn share_tasks_folder(spool: &Spool, what: &str, mode: u32, owner: Option<u32>) -> Option<PathBuf> {
    let dir = spool.tasks(W);
    fs::create_dir_all(&dir).unwrap();
    if let Some(uid) = owner {
        if let Err(e) = nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(uid)), None) {
            eprintln!("skipping {what}: chown {uid} {} failed: {e}", dir.display());
            return None;
        }
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    Some(dir)
}

/// (what, mode, owner, what the worker must say it found)
const SHARED: [(&str, u32, Option<u32>, &str); 3] = [
    ("mode 0777", 0o777, None, "writable by others"),
    ("mode 0757", 0o757, None, "writable by others"),
    (
        "owned by uid 65534",
        0o750,
        Some(65534),
        "owned by uid 65534",
    ),
];

#[test]
fn the_worker_refuses_a_task_folder_that_others_may_write() {
    let failures = in_parallel(SHARED.to_vec(), |(what, mode, owner, found)| {
        let spool = Spool::new();
        let Some(dir) = share_tasks_folder(&spool, what, mode, owner) else {
            return Vec::new();
        };
        let agent = spool.script("agent.sh", "exit 0");
        let agent = agent.display().to_string();
        // At the default log level: the refusal is all it says.
        let env = [("CLAUDE_COMMAND", agent.as_str()), ("LOG_LEVEL", "info")];
        let mut w = Daemon::start(&spool, "hw-worker", &[W], &env);
        let status = w.wait_exit(RUN_BOUND);
        let log = w.log_text();
        let mut bad = Vec::new();
        match status.and_then(|s| s.code()) {
            Some(78) => {}
            other => bad.push(format!(
                "{what}: exit {other:?} (None: still running), want 78; log: {}",
                tail(&log)
            )),
        }
        let lines: Vec<&str> = log.lines().collect();
        let folder = dir.display().to_string();
        if lines.len() != 1 || !lines[0].contains(&folder) || !lines[0].contains(found) {
            bad.push(format!(
                "{what}: want one stderr line naming {folder} and saying {found:?}; got {log:?}"
            ));
        }
        if spool.heartbeat(W).is_some() {
            bad.push(format!("{what}: the refused worker wrote a heartbeat"));
        }
        bad
    });
    assert_no_failures("shared task folders", &failures);
}

#[test]
fn allow_shared_spool_starts_the_worker_with_a_warning_saying_what_it_found() {
    let failures = in_parallel(SHARED.to_vec(), |(what, mode, owner, found)| {
        let spool = Spool::new();
        let Some(dir) = share_tasks_folder(&spool, what, mode, owner) else {
            return Vec::new();
        };
        let agent = spool.script("agent.sh", "exit 0");
        let mut w = worker_up(
            &spool,
            &agent.display().to_string(),
            &["--allow-shared-spool"],
            &[],
        );
        spool.drop_simple(W, "shared", "runs anyway");
        let r = spool.wait_result(W, "shared");
        let mut bad = Vec::new();
        if r["status"] != "completed" {
            bad.push(format!("{what}: {r}"));
        }
        let log = w.log_text();
        let folder = dir.display().to_string();
        let warned = log
            .lines()
            .any(|l| l.contains("WARNING") && l.contains(found) && l.contains(&folder));
        if !warned {
            bad.push(format!(
                "{what}: no WARNING line naming {folder} and saying {found:?}; log: {}",
                tail(&log)
            ));
        }
        if w.stop().code() != Some(0) {
            bad.push(format!("{what}: did not stop cleanly"));
        }
        bad
    });
    assert_no_failures("--allow-shared-spool", &failures);
}

#[test]
fn a_sticky_world_writable_task_folder_is_accepted_without_a_warning() {
    let spool = Spool::new();
    share_tasks_folder(&spool, "sticky", 0o1777, None).unwrap();
    let agent = spool.script("agent.sh", "exit 0");
    let w = worker_up(&spool, &agent.display().to_string(), &[], &[]);
    spool.drop_simple(W, "sticky", "like /tmp");
    assert_eq!(spool.wait_result(W, "sticky")["status"], "completed");
    let log = w.log_text();
    assert!(
        !log.contains("WARNING") && !log.contains("writable by others"),
        "a sticky folder is not shared; log:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 8. security: a symlinked .active/ or .deferred/ is not a way out

#[test]
fn a_symlinked_active_or_deferred_folder_never_takes_files_from_outside_the_spool() {
    let failures = in_parallel(vec![".active", ".deferred"], |link| {
        let spool = Spool::new();
        let outside = Outside::new(&spool);
        let tasks = spool.tasks(W);
        fs::create_dir_all(&tasks).unwrap();
        fs::set_permissions(&tasks, fs::Permissions::from_mode(0o750)).unwrap();
        // Whoever may drop tasks may also make this symlink.
        std::os::unix::fs::symlink(&outside.victim, tasks.join(link)).unwrap();
        let agent = spool.script("agent.sh", "exit 0");
        let agent = agent.display().to_string();
        let mut w = Daemon::start(
            &spool,
            "hw-worker",
            &[W],
            &[("CLAUDE_COMMAND", agent.as_str())],
        );
        let what = format!("tasks/{W}/{link} -> {}", outside.victim.display());
        let mut bad = Vec::new();
        let mut dropped = false;
        let ran_or_exited = wait_until(RUN_BOUND, || {
            if !dropped && spool.heartbeat(W).is_some() {
                spool.drop_simple(W, "probe", "a task");
                dropped = true;
            }
            spool.result(W, "probe").is_some() || w.wait_exit(Duration::ZERO).is_some()
        });
        match w.wait_exit(Duration::ZERO) {
            // Refusing to start is fine, with a one-line reason.
            Some(status) => {
                let log = w.log_text();
                if status.code().is_none_or(|c| c < 64)
                    || log.lines().filter(|l| l.starts_with("hw-worker: ")).count() != 1
                {
                    bad.push(format!(
                        "{what}: exited {status:?} without a clear error: {}",
                        tail(&log)
                    ));
                }
            }
            None if !ran_or_exited => bad.push(format!(
                "{what}: the worker neither ran a task nor refused to start"
            )),
            // Running is fine too, as long as nothing outside is touched
            // (the heartbeat's recovery pass included).
            None => {
                let untouched = holds_for(Duration::from_millis(1500), || {
                    outside.check(&what).is_empty()
                });
                if !untouched {
                    bad.push(format!("{what}: the worker reached outside the spool"));
                }
            }
        }
        bad.extend(outside.check(&what));
        if spool.result(W, "victim").is_some() {
            bad.push(format!("{what}: the task outside the spool was run"));
        }
        if w.log_text().contains("panicked") {
            bad.push(format!("{what}: the worker panicked"));
        }
        bad
    });
    assert_no_failures("symlinked worker folders", &failures);
}

// ---------------------------------------------------------------------------
// 9. security: 0750 folders and 0640 files, less the umask

#[test]
fn created_folders_are_0750_and_files_0640_less_the_umask() {
    let failures = in_parallel(
        vec![(0o022u32, 0o750u32, 0o640u32), (0o077, 0o700, 0o600)],
        |(umask, dir_mode, file_mode)| {
            let spool = Spool::new();
            let agent = spool.script("agent.sh", "case \"$desc\" in FAIL) exit 1;; esac");
            let agent = agent.display().to_string();
            let env = [
                ("CLAUDE_COMMAND", agent.as_str()),
                ("MAX_RETRIES", "1"),
                ("INITIAL_RETRY_DELAY", "600"),
            ];
            let opts = Opts {
                umask: Some(umask),
                ..Opts::default()
            };
            let w = Proc::start(
                &spool,
                "hw-worker",
                &oss(&[W, "--max-task-bytes", "1024"]),
                &env,
                &opts,
            );
            let what = format!("umask {umask:03o}");
            if !wait_until(DEADLINE, || spool.heartbeat(W).is_some()) {
                return vec![format!(
                    "{what}: no heartbeat; stderr: {}",
                    tail(&w.stderr())
                )];
            }
            spool.drop_simple(W, "ok", "completes");
            spool.drop_simple(W, "later", "FAIL");
            spool.drop_bytes(W, "junk.json", b"{not json");
            let deferred = spool.deferred(W).join("later.json");
            let junk = || {
                json_files(&spool.dlq(W))
                    .into_iter()
                    .find(|p| read_json(p).is_some_and(|r| r["original_name"] == "junk.json"))
            };
            let all_there = wait_until(DEADLINE, || {
                spool.result(W, "ok").is_some() && deferred.exists() && junk().is_some()
            });
            if !all_there {
                return vec![format!(
                    "{what}: no result, deferred task or dead letter; stderr: {}",
                    tail(&w.stderr())
                )];
            }
            let root = &spool.root;
            let folders = [
                root.join("tasks"),
                spool.tasks(W),
                spool.active(W),
                spool.deferred(W),
                root.join("triggers"),
                spool.triggers(W),
                root.join("results"),
                spool.results(W),
                root.join("heartbeats"),
                root.join("dlq"),
                spool.dlq(W),
                spool.dlq(W).join(".rejected"),
            ];
            let files = [
                spool.results(W).join("ok.json"),
                spool.triggers(W).join("ok.trigger"),
                spool.triggers(W).join("later.trigger"),
                spool.heartbeat_path(W),
                junk().unwrap(),
                deferred.clone(),
            ];
            let mut bad = Vec::new();
            for (paths, want) in [(&folders[..], dir_mode), (&files[..], file_mode)] {
                for p in paths {
                    match fs::symlink_metadata(p) {
                        Ok(m) if m.mode() & 0o7777 == want => {}
                        Ok(m) => bad.push(format!(
                            "{what}: {} is {:o}, want {want:o}",
                            p.display(),
                            m.mode() & 0o7777
                        )),
                        Err(e) => bad.push(format!("{what}: {}: {e}", p.display())),
                    }
                }
            }
            w.signal(nix::sys::signal::Signal::SIGTERM);
            let stopped = w.finish(DEADLINE);
            if stopped.code() != Some(0) {
                bad.push(format!(
                    "{what}: did not stop cleanly: {:?}",
                    stopped.status
                ));
            }
            bad
        },
    );
    assert_no_failures("modes of created files", &failures);
}

// ---------------------------------------------------------------------------
// 10. security: --max-cpu and --max-memory

#[test]
fn agents_are_held_to_max_cpu_and_max_memory_and_the_result_says_which() {
    let python = Command::new("python3")
        .args(["-c", "pass"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let (alloc_300m, alloc_50m) = if python {
        (
            "python3 -c 'bytearray(300*1024*1024)'",
            "python3 -c 'b = bytearray(50*1024*1024); print(len(b))'",
        )
    } else {
        // tail keeps a line without end in memory.
        (
            "head -c 300M /dev/zero | tail",
            "head -c 50M /dev/zero | tail | wc -c",
        )
    };
    let body = format!(
        "case \"$desc\" in\n\
           spin) while :; do :; done ;;\n\
           alloc) {alloc_300m} ;;\n\
           other) exit 3 ;;\n\
           normal) {alloc_50m}; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done ;;\n\
         esac"
    );
    // (what, description, generous limits?, status, resource_limit, error)
    type Case = (
        &'static str,
        &'static str,
        bool,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("an agent that spins", "spin", false, "failed", Some("cpu"), Some("resource_limit")),
        ("an agent that allocates 300 MB", "alloc", false, "failed", Some("memory"), Some("resource_limit")),
        ("an agent that fails for another reason", "other", false, "failed", None, None),
        ("a normal agent under generous limits", "normal", true, "completed", None, None),
    ];
    let failures = in_parallel(
        cases,
        |(what, description, generous, status, limit, error)| {
            let spool = Spool::new();
            let agent = spool.script("agent.sh", &body);
            let limits: &[&str] = if generous {
                &["--max-cpu", "60", "--max-memory", "4G"]
            } else {
                &["--max-cpu", "1", "--max-memory", "64M"]
            };
            let _w = worker_up(
                &spool,
                &agent.display().to_string(),
                limits,
                &[("MAX_RETRIES", "0"), ("TASK_TIMEOUT", "25")],
            );
            spool.drop_simple(W, "t", description);
            let r = spool.wait_result(W, "t");
            let mut bad = Vec::new();
            if r["status"] != status {
                bad.push(format!(
                    "{what}: status {}, want {status}: {r}",
                    r["status"]
                ));
            }
            let got_limit = r.get("resource_limit").and_then(Value::as_str);
            if got_limit != limit {
                bad.push(format!(
                    "{what}: resource_limit {got_limit:?}, want {limit:?}: {r}"
                ));
            }
            if let Some(e) = error {
                if r["error"] != e {
                    bad.push(format!("{what}: error {}, want {e}: {r}", r["error"]));
                }
            }
            if status == "failed" && r["exit_code"] == 0 {
                bad.push(format!("{what}: a failed attempt with exit code 0: {r}"));
            }
            bad
        },
    );
    assert_no_failures("resource limits", &failures);
}
