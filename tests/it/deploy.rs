//! Deployment (SPEC sections 2 and 5; the SYSTEMD section of hw-worker(8),
//! hw-listen(8), docs/scaling.md): what running hookwatch under systemd
//! and on a spool shared by several hosts relies on. The test plays
//! systemd's side of sd_notify with a datagram socket; several workers of
//! one name share a spool, two of them without inotify as on another host
//! of a network file system, also across a SIGKILL of one of them;
//! `--no-inotify` and hw-listen's `--poll` find what inotify does not
//! report; one listener per state file. Each test runs the real binaries
//! on its own spool, in their own process groups, always stopped.

use crate::common::*;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

const W: &str = "marie";

/// systemd's variables: a test sets those it needs, none is inherited
/// from whoever runs the tests.
const SYSTEMD_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

// ---------------------------------------------------------------------------
// Processes

/// `hw-worker marie` with `agent`, the harness's environment, systemd's
/// variables only from `env`, and heartbeats every 0.3 s.
fn worker_command(spool: &Spool, agent: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin("hw-worker"));
    for var in SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    cmd.arg(W)
        .envs(base_env(spool))
        .env("HEARTBEAT_INTERVAL", "0.3")
        .env("CLAUDE_COMMAND", agent)
        .envs(env.iter().map(|(k, v)| (*k, *v)));
    cmd
}

/// `hw-listen ARGS…` on the spool, stdout kept for its events.
fn listener(spool: &Spool, name: &str, args: &[&str]) -> Daemon {
    Daemon::spawn(spool, name, listener_command(spool, args, &[]))
}

/// An agent that logs `ID ATTEMPT PARENT` and succeeds. The worker
/// starts it directly, so its parent is the worker that ran it.
fn logging_agent(spool: &Spool) -> PathBuf {
    let log = agent_log(spool).display().to_string();
    spool.script(
        "agent.sh",
        &format!(r#"echo "$HW_TASK_ID $HW_ATTEMPT $PPID" >> '{log}'"#),
    )
}

/// Whether a process runs the script `agent` (its command line names it).
fn agents_running(agent: &Path) -> bool {
    let needle = agent.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
}

fn agent_log(spool: &Spool) -> PathBuf {
    spool.scratch("agent.log")
}

/// One execution of `logging_agent`.
#[derive(Debug, Clone)]
struct Exec {
    id: String,
    attempt: u32,
    parent: i32,
}

fn executions(spool: &Spool) -> Vec<Exec> {
    let text = fs::read_to_string(agent_log(spool)).unwrap_or_default();
    text.lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 3, "odd agent log line: {l:?}");
            Exec {
                id: w[0].to_string(),
                attempt: w[1].parse().unwrap(),
                parent: w[2].parse().unwrap(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. sd_notify, from systemd's side

/// The receiving end of the notification protocol, as systemd binds it:
/// every datagram received is kept, in order.
struct NotifySocket {
    socket: UnixDatagram,
    /// The value of `NOTIFY_SOCKET`: a path, or `@name`.
    address: String,
    received: Vec<String>,
}

impl NotifySocket {
    fn at_path(spool: &Spool) -> NotifySocket {
        let path = spool.scratch("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket::new(socket, path.display().to_string())
    }

    /// A name in the abstract namespace, unique to this test run.
    fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("hookwatch-test/{}/{nanos}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        NotifySocket::new(socket, format!("@{name}"))
    }

    fn new(socket: UnixDatagram, address: String) -> NotifySocket {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket {
            socket,
            address,
            received: Vec::new(),
        }
    }

    /// Receives until a datagram satisfies `what` (and returns it) or
    /// `timeout` passes (None).
    fn wait_for(&mut self, timeout: Duration, what: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < end {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.received.push(message.clone());
                    if what(&message) {
                        return Some(message);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("cannot receive on the notify socket: {e}"),
            }
        }
        None
    }

    /// Waits for the `n`-th datagram (counting those already received)
    /// that satisfies `what`.
    fn wait_count(&mut self, n: usize, timeout: Duration, what: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.received.iter().filter(|m| what(m)).count() >= n {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.wait_for(left, &what).is_none() {
                return self.received.iter().filter(|m| what(m)).count() >= n;
            }
        }
    }

    fn count(&self, what: impl Fn(&str) -> bool) -> usize {
        self.received.iter().filter(|m| what(m)).count()
    }
}

/// Whether a datagram holds the line `line` (`READY=1`).
fn has(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// The `STATUS=` line of a datagram, without the key.
fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// A heartbeat's datagram: a `STATUS=` line alone (READY=1 comes with one).
fn is_heartbeat_status(message: &str) -> bool {
    status_of(message).is_some() && message.lines().count() == 1
}

fn is_watchdog(message: &str) -> bool {
    has(message, "WATCHDOG=1")
}

/// The counts of a status line, as
/// `5 pending, 2 running, 1 deferred; 150 done, 3 failed, 1 dead letters; breaker closed`.
fn status_counts(status: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for part in status.split([',', ';']) {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(what)) = (words.next(), words.next()) {
            if let Ok(n) = n.parse::<u64>() {
                counts.insert(what.to_string(), n);
            }
        }
    }
    counts
}

/// A bound for what takes a few heartbeats (0.3 s each).
const FEW_BEATS: Duration = Duration::from_secs(10);

#[test]
fn ready_comes_once_the_first_scan_is_done_with_a_status_and_tasks_dropped_after_it_run() {
    let spool = Spool::new();
    let agent = logging_agent(&spool);
    // Dropped before the start: the first scan must find it.
    spool.drop_simple(W, "before", "early");
    let mut systemd = NotifySocket::at_path(&spool);
    let cmd = worker_command(&spool, &agent, &[("NOTIFY_SOCKET", &systemd.address)]);
    let _worker = Daemon::spawn(&spool, "worker", cmd);

    let ready = systemd
        .wait_for(DEADLINE, |m| has(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; received {:?}", systemd.received));
    let status = status_of(&ready)
        .unwrap_or_else(|| panic!("READY=1 came without a STATUS= line: {ready:?}"));
    // Sent after the first scan and before the first claim.
    let counts = status_counts(status);
    assert_eq!(
        (
            counts.get("pending"),
            counts.get("running"),
            counts.get("done")
        ),
        (Some(&1), Some(&0), Some(&0)),
        "the status sent with READY=1 should count the task found by the first scan, \
         not yet claimed: {status:?}"
    );
    assert_eq!(
        systemd.count(|m| has(m, "READY=1")),
        1,
        "{:?}",
        systemd.received
    );

    spool.drop_simple(W, "after", "late");
    for id in ["before", "after"] {
        assert_eq!(spool.wait_result(W, id)["status"], "completed");
    }
}

#[test]
fn status_lines_arrive_at_every_heartbeat_with_the_counts() {
    let spool = Spool::new();
    // Fails for a description `fail`, succeeds otherwise.
    let agent = spool.script("agent.sh", r#"[ "$desc" != fail ]"#);
    let mut systemd = NotifySocket::at_path(&spool);
    let env = [
        ("NOTIFY_SOCKET", systemd.address.as_str()),
        ("MAX_RETRIES", "0"),
    ];
    let _worker = Daemon::spawn(&spool, "worker", worker_command(&spool, &agent, &env));
    assert!(systemd.wait_for(DEADLINE, |m| has(m, "READY=1")).is_some());

    spool.drop_simple(W, "ok-1", "fine");
    spool.drop_simple(W, "ok-2", "fine");
    spool.drop_simple(W, "bad", "fail");
    let want = |m: &str| {
        let c = status_of(m).map(status_counts).unwrap_or_default();
        is_heartbeat_status(m)
            && c.get("done") == Some(&2)
            && c.get("failed") == Some(&1)
            && c.get("dead") == Some(&1)
            && c.get("running") == Some(&0)
    };
    assert!(
        systemd.wait_for(DEADLINE, want).is_some(),
        "no heartbeat status with 2 done, 1 failed, 1 dead letter; received {:?}",
        systemd.received
    );
    // And they go on, one per heartbeat.
    let before = systemd.count(is_heartbeat_status);
    assert!(
        systemd.wait_count(before + 3, FEW_BEATS, is_heartbeat_status),
        "fewer than 3 more STATUS= within {FEW_BEATS:?}; received {:?}",
        systemd.received
    );
    let last = systemd
        .received
        .iter()
        .rev()
        .find(|m| is_heartbeat_status(m))
        .unwrap();
    assert!(
        status_of(last).unwrap().ends_with("breaker closed"),
        "{last:?}"
    );
}

/// A file whose existence lets a gated agent finish; created when the
/// test ends too, so that no agent outlives a failed test for long.
struct Gate(PathBuf);

impl Gate {
    fn open(&self) {
        fs::write(&self.0, b"").unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, b"");
    }
}

#[test]
fn stopping_arrives_at_sigterm_before_the_worker_exits() {
    let spool = Spool::new();
    let started = spool.scratch("started");
    let gate = Gate(spool.scratch("GO"));
    // Runs until the gate opens (at most 20 s), so the worker cannot exit
    // before the test has seen STOPPING=1.
    let agent = spool.script(
        "gated.sh",
        &format!(
            r#"touch '{}'
i=0
while [ ! -e '{}' ] && [ "$i" -lt 400 ]; do i=$((i + 1)); sleep 0.05; done"#,
            started.display(),
            gate.0.display()
        ),
    );
    let mut systemd = NotifySocket::at_path(&spool);
    let cmd = worker_command(&spool, &agent, &[("NOTIFY_SOCKET", &systemd.address)]);
    let mut worker = Daemon::spawn(&spool, "worker", cmd);
    assert!(systemd.wait_for(DEADLINE, |m| has(m, "READY=1")).is_some());
    spool.drop_simple(W, "long", "runs until the gate opens");
    assert!(
        wait_until(DEADLINE, || started.exists()),
        "the task did not start"
    );
    assert_eq!(systemd.count(|m| has(m, "STOPPING=1")), 0);

    worker.signal(Signal::SIGTERM);
    assert!(
        systemd
            .wait_for(DEADLINE, |m| has(m, "STOPPING=1"))
            .is_some(),
        "no STOPPING=1 after SIGTERM; received {:?}",
        systemd.received
    );
    assert_eq!(
        worker.exited(),
        None,
        "the worker exited before its task ended"
    );
    gate.open();
    let status = worker.wait_exit(DEADLINE).expect("the worker did not exit");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(spool.wait_result(W, "long")["status"], "completed");
    assert_eq!(
        systemd.count(|m| has(m, "STOPPING=1")),
        1,
        "{:?}",
        systemd.received
    );
}

#[test]
fn watchdog_pings_arrive_every_half_of_watchdog_usec() {
    let spool = Spool::new();
    let mut systemd = NotifySocket::at_path(&spool);
    let cmd = watched_worker(&spool, &systemd, &[]);
    let _worker = Daemon::spawn(&spool, "worker", cmd);
    assert!(
        systemd.wait_count(3, FEW_BEATS, is_watchdog),
        "fewer than 3 WATCHDOG=1 within {FEW_BEATS:?}; received {:?}",
        systemd.received
    );
}

/// `worker_command` with a logging agent, the notify socket of `systemd`,
/// a watchdog of 0.4 s, and `extra` variables.
fn watched_worker(spool: &Spool, systemd: &NotifySocket, extra: &[(&str, &str)]) -> Command {
    let agent = logging_agent(spool);
    let mut env = vec![
        ("NOTIFY_SOCKET", systemd.address.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    env.extend_from_slice(extra);
    worker_command(spool, &agent, &env)
}

/// Receives for four heartbeats after READY=1 (1.2 s of the worker's own
/// time, six watchdog periods of 0.2 s) and returns the pings among them.
fn pings_over_four_heartbeats(systemd: &mut NotifySocket) -> usize {
    assert!(systemd.wait_for(DEADLINE, |m| has(m, "READY=1")).is_some());
    assert!(
        systemd.wait_count(4, FEW_BEATS, is_heartbeat_status),
        "fewer than 4 heartbeats within {FEW_BEATS:?}; received {:?}",
        systemd.received
    );
    systemd.count(is_watchdog)
}

#[test]
fn watchdog_pid_naming_another_process_means_no_pings() {
    let spool = Spool::new();
    let mut systemd = NotifySocket::at_path(&spool);
    let test_pid = std::process::id().to_string();
    let cmd = watched_worker(&spool, &systemd, &[("WATCHDOG_PID", test_pid.as_str())]);
    let _worker = Daemon::spawn(&spool, "worker", cmd);
    assert_eq!(
        pings_over_four_heartbeats(&mut systemd),
        0,
        "WATCHDOG=1 sent although WATCHDOG_PID names another process: {:?}",
        systemd.received
    );
}

#[test]
fn watchdog_pid_naming_the_worker_itself_keeps_the_pings() {
    let spool = Spool::new();
    let mut systemd = NotifySocket::at_path(&spool);
    // As systemd does for its main process: the pid the worker will have.
    let plain = watched_worker(&spool, &systemd, &[]);
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        r#"WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@""#,
    ])
    .arg(plain.get_program())
    .args(plain.get_args());
    for (k, v) in plain.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let _worker = Daemon::spawn(&spool, "worker", cmd);
    assert!(
        pings_over_four_heartbeats(&mut systemd) >= 3,
        "fewer than 3 WATCHDOG=1 over four heartbeats: {:?}",
        systemd.received
    );
}

#[test]
fn an_abstract_notify_socket_gets_the_messages_too() {
    let spool = Spool::new();
    let mut systemd = NotifySocket::abstract_name();
    let cmd = watched_worker(&spool, &systemd, &[]);
    let mut worker = Daemon::spawn(&spool, "worker", cmd);
    let ready = systemd.wait_for(DEADLINE, |m| has(m, "READY=1"));
    assert!(
        ready.as_deref().and_then(status_of).is_some(),
        "no READY=1 with a status on {}; received {:?}",
        systemd.address,
        systemd.received
    );
    assert!(systemd.wait_count(1, FEW_BEATS, is_heartbeat_status));
    assert!(systemd.wait_count(1, FEW_BEATS, is_watchdog));
    worker.signal(Signal::SIGTERM);
    assert!(systemd
        .wait_for(DEADLINE, |m| has(m, "STOPPING=1"))
        .is_some());
    assert_eq!(worker.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0));
}

// ---------------------------------------------------------------------------
// 2. Many hosts on one spool

const FLEET_TASKS: usize = 2000;
/// Pool size of each worker of the fleet.
const FLEET_POOL: usize = 3;

/// Four workers of one name: two with inotify, two that find tasks by
/// rescans every 0.2 s only, as on the other hosts of a network file
/// system. Returns (inotify workers, blind workers).
fn start_fleet(spool: &Spool, agent: &Path) -> (Vec<Daemon>, Vec<Daemon>) {
    let agent = agent.display().to_string();
    let pool = FLEET_POOL.to_string();
    let env = [
        ("CLAUDE_COMMAND", agent.as_str()),
        ("MAX_CONCURRENT_TASKS", pool.as_str()),
        ("HEARTBEAT_INTERVAL", "0.3"),
        ("LOG_LEVEL", "info"),
    ];
    let start = |args: &[&str]| Daemon::start(spool, "hw-worker", args, &env);
    let seeing = vec![start(&[W]), start(&[W])];
    let blind = vec![
        start(&[W, "--no-inotify", "--poll", "0.2"]),
        start(&[W, "--no-inotify", "--poll", "0.2"]),
    ];
    for d in seeing.iter().chain(&blind) {
        assert!(
            d.wait_log("Worker started"),
            "a worker did not start:\n{}",
            d.log_text()
        );
    }
    (seeing, blind)
}

/// Writes the tasks outside the spool, so that dropping them is a rename.
fn stage(spool: &Spool, ids: &[String]) -> PathBuf {
    let staging = spool.scratch("staging");
    fs::create_dir_all(&staging).unwrap();
    for id in ids {
        let task = json!({"task_id": id, "description": format!("do {id}")});
        fs::write(staging.join(format!("{id}.json")), task.to_string()).unwrap();
    }
    staging
}

/// Drops every staged task into the tasks folder, as fast as it goes.
fn flood(spool: &Spool, staging: &Path, ids: &[String]) {
    for id in ids {
        let name = format!("{id}.json");
        fs::rename(staging.join(&name), spool.tasks(W).join(&name)).unwrap();
    }
}

fn count_json(dir: &Path) -> usize {
    json_files(dir).len()
}

/// Waits until `dir` holds `n` results, failing when the count stops
/// moving for `DEADLINE`.
fn wait_results(dir: &Path, n: usize) {
    let mut last = count_json(dir);
    let mut moved = Instant::now();
    while last < n {
        assert!(
            moved.elapsed() < DEADLINE,
            "results stuck at {last} of {n} for {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        let now = count_json(dir);
        if now != last {
            (last, moved) = (now, Instant::now());
        }
    }
}

/// Nothing pending, active or deferred (once the workers have caught
/// up), and no dead letter.
fn assert_nothing_left(spool: &Spool) {
    for dir in [spool.tasks(W), spool.active(W), spool.deferred(W)] {
        assert!(
            wait_until(DEADLINE, || spool.names(&dir).is_empty()),
            "left in {}: {:?}",
            dir.display(),
            spool.names(&dir)
        );
    }
    let dead = spool.dlq_records(W);
    assert!(dead.is_empty(), "dead letters: {dead:?}");
}

/// Executions per task id.
fn by_id(execs: &[Exec]) -> BTreeMap<String, Vec<Exec>> {
    let mut map: BTreeMap<String, Vec<Exec>> = BTreeMap::new();
    for e in execs {
        map.entry(e.id.clone()).or_default().push(e.clone());
    }
    map
}

fn fleet_ids() -> Vec<String> {
    (0..FLEET_TASKS).map(|i| format!("f{i:04}")).collect()
}

#[test]
fn four_workers_two_without_inotify_run_each_of_2000_tasks_exactly_once() {
    let spool = Spool::new();
    let agent = logging_agent(&spool);
    let ids = fleet_ids();
    let staging = stage(&spool, &ids);
    let (mut seeing, mut blind) = start_fleet(&spool, &agent);
    let started = Instant::now();
    flood(&spool, &staging, &ids);
    wait_results(&spool.results(W), FLEET_TASKS);
    let took = started.elapsed();
    assert_nothing_left(&spool);

    for id in &ids {
        let r = spool.result(W, id).unwrap();
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["retry_count"], 0, "{r}");
    }
    let execs = executions(&spool);
    let runs = by_id(&execs);
    let wrong: Vec<(&String, usize)> = ids
        .iter()
        .map(|id| (id, runs.get(id).map_or(0, Vec::len)))
        .filter(|(_, n)| *n != 1)
        .take(20)
        .collect();
    assert!(
        wrong.is_empty(),
        "not run exactly once (id, runs; first 20): {wrong:?}"
    );
    assert_eq!(execs.len(), FLEET_TASKS, "executions of unknown tasks");
    let share = |d: &Daemon| execs.iter().filter(|e| e.parent == d.pid()).count();
    let seeing_share: Vec<usize> = seeing.iter().map(&share).collect();
    let blind_share: Vec<usize> = blind.iter().map(&share).collect();
    assert_eq!(
        seeing_share.iter().chain(&blind_share).sum::<usize>(),
        FLEET_TASKS,
        "executions by another parent than the four workers"
    );
    assert!(
        blind_share.iter().all(|&n| n > 0),
        "a worker without inotify ran nothing: {blind_share:?}"
    );
    for d in seeing.iter_mut().chain(blind.iter_mut()) {
        assert_eq!(d.stop().code(), Some(0));
    }
    eprintln!(
        "4 workers (2 --no-inotify --poll 0.2): {FLEET_TASKS} tasks in {:.2} s ({:.0} tasks/s); \
         inotify {seeing_share:?}, rescans {blind_share:?}",
        took.as_secs_f64(),
        FLEET_TASKS as f64 / took.as_secs_f64()
    );
}

#[test]
fn a_worker_killed_half_way_repeats_only_the_tasks_it_was_running() {
    let spool = Spool::new();
    let agent = logging_agent(&spool);
    let ids = fleet_ids();
    let staging = stage(&spool, &ids);
    let (mut seeing, mut blind) = start_fleet(&spool, &agent);
    let victim = seeing[0].pid();
    flood(&spool, &staging, &ids);
    wait_results(&spool.results(W), FLEET_TASKS / 2);
    // SIGKILL to the worker alone: its agents finish on their own, its
    // claims stay in .active/ until another worker's heartbeat finds
    // their locks free.
    seeing[0].crash();
    let at_kill = count_json(&spool.results(W));
    wait_results(&spool.results(W), FLEET_TASKS);
    assert_nothing_left(&spool);
    // The dead worker's orphaned agents may still be on their way to
    // logging their run.
    assert!(
        wait_until(DEADLINE, || !agents_running(&agent)),
        "agents still running"
    );

    let survivors: HashSet<i32> = seeing[1..].iter().chain(&blind).map(Daemon::pid).collect();
    let mut interrupted = 0;
    for id in &ids {
        let r = spool.result(W, id).unwrap();
        assert_eq!(r["status"], "completed", "{r}");
        match r["retry_count"].as_u64() {
            Some(0) => {}
            Some(1) => interrupted += 1,
            _ => panic!("more than one attempt charged: {r}"),
        }
    }
    // Only the claims of the dead worker were interrupted: at most a
    // pool's worth running, and four per slot finished whose results were
    // still on their way to the disk (hw-worker(8), "Group commit").
    let held = FLEET_POOL + 4 * FLEET_POOL;
    assert!(
        interrupted <= held,
        "{interrupted} tasks charged an interrupted attempt; the dead worker held at most {held}"
    );
    let execs = executions(&spool);
    let runs = by_id(&execs);
    let mut duplicated = Vec::new();
    for id in &ids {
        let runs = runs.get(id).map(Vec::as_slice).unwrap_or_default();
        match runs {
            [] => panic!("{id} has a result but never ran"),
            [one] => {
                // Run once: a task of its own, or one the dead worker had
                // claimed but not started, retried by a survivor.
                let charged = spool.result(W, id).unwrap()["retry_count"].clone();
                assert!(
                    (one.attempt == 1 && charged == 0)
                        || (one.attempt == 2 && charged == 1 && survivors.contains(&one.parent)),
                    "{id} ran once, as {one:?}, with retry_count {charged}"
                );
            }
            [first, second] => {
                // The dead worker's agent (whose parent is gone, or was
                // the dead worker), then a survivor's retry.
                assert!(
                    !survivors.contains(&first.parent) && first.attempt == 1,
                    "{id} ran twice, first not by the dead worker: {runs:?}"
                );
                assert!(
                    survivors.contains(&second.parent) && second.attempt == 2,
                    "{id}'s repeat was not a survivor's second attempt: {runs:?}"
                );
                assert_eq!(spool.result(W, id).unwrap()["retry_count"], 1, "{id}");
                duplicated.push(id.clone());
            }
            more => panic!("{id} ran {} times: {more:?}", more.len()),
        }
    }
    // The dead worker's agents log their parent when they start: the
    // dead worker, or whoever adopted them if it was already gone.
    let by_dead = execs
        .iter()
        .filter(|e| !survivors.contains(&e.parent))
        .count();
    for d in seeing[1..].iter_mut().chain(blind.iter_mut()) {
        assert_eq!(d.stop().code(), Some(0));
    }
    eprintln!(
        "SIGKILL of one of 4 workers at {at_kill} of {FLEET_TASKS} results: \
         it ran {by_dead} ({} with it still alive); {interrupted} interrupted, {} executed twice {duplicated:?}",
        execs.iter().filter(|e| e.parent == victim).count(),
        duplicated.len()
    );
}

// ---------------------------------------------------------------------------
// 3. --no-inotify

#[test]
fn no_inotify_alone_still_finds_a_task_dropped_after_the_start() {
    let spool = Spool::new();
    let agent = logging_agent(&spool);
    let agent = agent.display().to_string();
    let worker = Daemon::start(
        &spool,
        "hw-worker",
        &[W, "--no-inotify"],
        &[("CLAUDE_COMMAND", agent.as_str())],
    );
    assert!(worker.wait_log("Worker started"), "{}", worker.log_text());
    spool.drop_simple(W, "late", "found by a rescan");
    // The default rescan is every 2 s: a few of them at most.
    let found = wait_until(Duration::from_secs(10), || {
        spool.result(W, "late").is_some()
    });
    assert!(
        found,
        "no result within 10 s without inotify:\n{}",
        worker.log_text()
    );
    assert_eq!(spool.result(W, "late").unwrap()["status"], "completed");
}

#[test]
fn no_inotify_with_poll_0_is_refused_with_78() {
    let spool = Spool::new();
    let out = run_tool(
        &spool,
        "hw-worker",
        &[W, "--no-inotify", "--poll", "0"],
        &[("CLAUDE_COMMAND", "/bin/true")],
    );
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("--poll") || stderr.contains("--no-inotify"),
        "{stderr:?}"
    );
    assert!(
        spool.heartbeat(W).is_none(),
        "a heartbeat was written before the refusal"
    );
}

// ---------------------------------------------------------------------------
// 4. hw-listen on a shared spool

/// Writes `results/marie/ID.json`, completed; with `link`, by a hard link
/// from a dot-file outside the watched folders (which inotify reports as
/// IN_CREATE only), else by a rename from a dot-file beside it.
fn put_result(spool: &Spool, id: &str, link: bool) {
    let r = json!({"task_id": id, "worker": W, "status": "completed", "exit_code": 0,
        "stdout": "", "stderr": "", "duration_seconds": 0.01,
        "timestamp": "2026-11-28T10:30:00.000Z", "retry_count": 0});
    let dir = spool.results(W);
    fs::create_dir_all(&dir).unwrap();
    let target = dir.join(format!("{id}.json"));
    let tmp = match link {
        true => spool.scratch(&format!(".{id}.json.tmp")),
        false => dir.join(format!(".{id}.json.tmp")),
    };
    fs::write(&tmp, r.to_string()).unwrap();
    match link {
        true => {
            fs::hard_link(&tmp, &target).unwrap();
            fs::remove_file(&tmp).unwrap();
        }
        false => fs::rename(&tmp, &target).unwrap(),
    }
}

fn completed(l: &Daemon, id: &str) -> bool {
    l.events()
        .iter()
        .any(|e| e["event_type"] == "task_completed" && e["data"]["task_id"] == id)
}

#[test]
fn a_second_listener_on_the_same_state_file_exits_75_naming_the_lock() {
    let spool = Spool::new();
    let mut first = listener(&spool, "first", &["--workers", W]);
    first.expect_log("Listening");

    let mut second = listener(&spool, "second", &["--workers", W]);
    let status = second
        .wait_exit(DEADLINE)
        .expect("the second listener did not exit");
    assert_eq!(status.code(), Some(75), "{}", second.log_text());
    let stderr = second.log_text();
    let lock = spool.root.join(".orchestrator_state.json.lock");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains(&lock.display().to_string()),
        "the error does not name {}: {stderr:?}",
        lock.display()
    );
    assert!(second.events().is_empty(), "{:?}", second.events());

    // The first one goes on as if nothing happened.
    assert_eq!(first.exited(), None, "the first listener exited");
    put_result(&spool, "t1", false);
    assert!(
        wait_until(DEADLINE, || completed(&first, "t1")),
        "the first listener emitted nothing: {:?}",
        first.events()
    );
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0));

    // Its lock ends with it.
    let mut third = listener(&spool, "third", &["--workers", W]);
    third.expect_log("Listening");
    assert_eq!(third.exited(), None);
}

#[test]
fn listen_poll_finds_a_result_that_inotify_does_not_report() {
    let spool = Spool::new();
    let l = listener(&spool, "listen", &["--workers", W, "--poll", "0.3"]);
    l.expect_log("Listening");
    put_result(&spool, "linked", true);
    assert!(
        wait_until(Duration::from_secs(10), || completed(&l, "linked")),
        "no task_completed within 10 s with --poll 0.3: {:?}\n{}",
        l.events(),
        l.log_text()
    );
}
