//! Fault tests: hookwatch's promise (SPEC section 2) is that whatever
//! happens, a task ends exactly once in a terminal record (a result or a
//! dead letter) or is still visibly queued. These tests try hard to break
//! it: the worker killed with SIGKILL again and again, a full results
//! disk, a flood of tasks past the inotify queue, several workers racing
//! for the same tasks, the listener restarted and killed while results
//! pour in, and hostile clients of the metrics endpoint. Each test runs
//! the real binaries on its own spool with `/bin/sh` stand-in agents that
//! append one line per execution to a log outside the spool, so
//! executions can be counted. The slow ones are `#[ignore]`d: run them
//! with `cargo test --release -- --ignored`. Random choices come from a
//! seeded generator; `HW_FAULT_SEED=N` replays a run.
// The tests call libc where nix has no wrapper (Cargo.toml denies
// unsafe code everywhere else but src/sys.rs).
#![allow(unsafe_code)]

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

const W: &str = "w";

/// A bound for what should take a few heartbeats (0.5 s each) at most.
const SHORT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Helpers

/// xorshift64*: small, seeded, good enough to pick moments and durations.
struct Rng(u64);

impl Rng {
    /// Seeded from `HW_FAULT_SEED` when set, else a fixed seed; the seed
    /// is printed so that a failing run can be replayed.
    fn new(test: &str) -> Rng {
        let seed = std::env::var("HW_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5EED_F00D_CAFE_D00D_u64);
        eprintln!("{test}: seed {seed} (HW_FAULT_SEED={seed} replays it)");
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `k` distinct numbers in `lo..hi`, sorted.
    fn distinct_sorted(&mut self, k: usize, lo: u64, hi: u64) -> Vec<u64> {
        let mut picked = BTreeSet::new();
        while picked.len() < k {
            picked.insert(lo + self.below(hi - lo));
        }
        picked.into_iter().collect()
    }
}

fn agent_log(spool: &Spool) -> PathBuf {
    spool.scratch("agent.log")
}

/// The agent log's lines, split into words.
fn log_lines(spool: &Spool) -> Vec<Vec<String>> {
    fs::read_to_string(agent_log(spool))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// Visible `*.json` names in `dir`, without reading the files (cheap
/// enough to poll a folder of 40,000 results).
fn json_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| {
                    let b = n.as_bytes();
                    !b.starts_with(b".") && b.ends_with(b".json")
                })
                .map(|n| n.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn count_json(dir: &Path) -> usize {
    json_names(dir).len()
}

/// Ids of the results in `dir`.
fn result_ids(dir: &Path) -> BTreeSet<String> {
    json_names(dir)
        .into_iter()
        .map(|n| n.trim_end_matches(".json").to_string())
        .collect()
}

/// Waits until `count()` reaches `target`. Fails when the count stops
/// moving for `DEADLINE`, or after `cap` in all; returns the time taken.
fn wait_count(
    what: &str,
    target: usize,
    cap: Duration,
    mut count: impl FnMut() -> usize,
) -> Duration {
    let start = Instant::now();
    let mut last = count();
    let mut moved = Instant::now();
    while last < target {
        assert!(
            moved.elapsed() < DEADLINE,
            "{what}: stuck at {last} of {target} for {DEADLINE:?}"
        );
        assert!(
            start.elapsed() < cap,
            "{what}: {last} of {target} after {cap:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now != last {
            moved = Instant::now();
            last = now;
        }
    }
    start.elapsed()
}

/// Waits until a folder has no visible entries.
fn assert_emptied(spool: &Spool, dir: &Path) {
    assert!(
        wait_until(DEADLINE, || spool.names(dir).is_empty()),
        "left in {}: {:?}",
        dir.display(),
        spool.names(dir)
    );
}

/// Nothing left pending, active or deferred; no dead letter.
fn assert_no_leftovers(spool: &Spool) {
    for dir in [spool.tasks(W), spool.active(W), spool.deferred(W)] {
        assert_emptied(spool, &dir);
    }
    let dead = json_names(&spool.dlq(W));
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    let rejected = spool.names(&spool.dlq(W).join(".rejected"));
    assert!(rejected.is_empty(), "rejected entries: {rejected:?}");
}

/// Dot-files (a publish's temporary files) left in a folder.
fn dot_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Each id ran exactly once according to the agent log, whose lines
/// are `run ID …`; returns the lines.
fn assert_each_ran_once_by_log(spool: &Spool, ids: &[String]) -> Vec<Vec<String>> {
    let runs: Vec<Vec<String>> = log_lines(spool)
        .into_iter()
        .filter(|w| w[0] == "run")
        .collect();
    let ran: Vec<&str> = runs.iter().map(|w| w[1].as_str()).collect();
    assert_each_ran_once(ids, &ran);
    runs
}

/// An agent that logs `run ID ATTEMPT PID PARENT` and succeeds at once.
fn counting_agent(spool: &Spool) -> PathBuf {
    let log = agent_log(spool).display().to_string();
    spool.script(
        "count.sh",
        &format!(r#"echo "run $HW_TASK_ID $HW_ATTEMPT $$ $PPID" >> '{log}'"#),
    )
}

fn task(id: &str) -> Value {
    json!({"task_id": id, "description": format!("do {id}")})
}

/// Writes each task into `staging` (outside the watched folder), so that
/// a later `flood` only renames.
fn stage(spool: &Spool, name: &str, ids: &[String]) -> PathBuf {
    let staging = spool.scratch(name);
    fs::create_dir_all(&staging).unwrap();
    for id in ids {
        fs::write(staging.join(format!("{id}.json")), task(id).to_string()).unwrap();
    }
    staging
}

/// Renames every staged task into the tasks folder, as fast as it goes.
fn flood(spool: &Spool, staging: &Path, ids: &[String]) {
    let tasks = spool.tasks(W);
    fs::create_dir_all(&tasks).unwrap();
    for id in ids {
        let name = format!("{id}.json");
        fs::rename(staging.join(&name), tasks.join(&name)).unwrap();
    }
}

fn assert_exit_zero(status: ExitStatus) {
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
}

/// Waits until the daemon's log says it has started.
fn wait_started(d: &Daemon) {
    assert!(
        d.wait_log("Worker started"),
        "the worker did not start:\n{}",
        d.log_text()
    );
}

// ---------------------------------------------------------------------------
// 1. SIGKILL of the worker, again and again

/// One line of the kill loop's agent log: `start|end ID ATTEMPT RUN PID`.
#[derive(Debug, Clone)]
struct Exec {
    id: String,
    attempt: u32,
    run: usize,
}

/// Run `run` of the kill loop's worker: its agents log `run` (they
/// inherit the worker's environment), and interrupted attempts never
/// exhaust the retries.
fn kill_loop_worker(spool: &Spool, agent: &Path, run: usize) -> Daemon {
    let run = run.to_string();
    let env = [
        ("FAULT_RUN", run.as_str()),
        ("MAX_RETRIES", "10"),
        ("MAX_CONCURRENT_TASKS", "4"),
    ];
    Daemon::worker(spool, W, agent, &env)
}

#[test]
fn five_sigkills_of_the_worker_lose_no_task_and_repeat_only_the_interrupted_ones() {
    const TASKS: usize = 300;
    const KILLS: usize = 5;
    let mut rng = Rng::new("kill loop");
    let spool = Spool::new();
    let log = agent_log(&spool).display().to_string();
    // `$desc` is the description (the last argument): the seconds to take.
    let agent = spool.script(
        "sleepy.sh",
        &format!(
            r#"echo "start $HW_TASK_ID $HW_ATTEMPT $FAULT_RUN $$" >> '{log}'
sleep "$desc"
echo "end $HW_TASK_ID $HW_ATTEMPT $FAULT_RUN $$" >> '{log}'"#
        ),
    );
    let ids: Vec<String> = (0..TASKS).map(|i| format!("k{i:03}")).collect();
    for id in &ids {
        let secs = format!("0.0{}", 2 + rng.below(4)); // 20 to 50 ms
        spool.drop_task(
            W,
            &format!("{id}.json"),
            &json!({"task_id": id, "description": secs}),
        );
    }
    let results = spool.results(W);
    // Kill when this many results exist, a few ms later.
    let kill_at = rng.distinct_sorted(KILLS, 20, TASKS as u64 - 20);
    // Per kill: the ids that had a result when the worker was dead.
    let mut done_at_kill: Vec<BTreeSet<String>> = Vec::new();
    for (run, &at) in kill_at.iter().enumerate() {
        let mut w = kill_loop_worker(&spool, &agent, run);
        wait_count(
            &format!("results before kill {run}"),
            at as usize,
            DEADLINE,
            || count_json(&results),
        );
        std::thread::sleep(Duration::from_millis(rng.below(25)));
        w.crash();
        done_at_kill.push(result_ids(&results));
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(agent_log(&spool))
            .and_then(|mut f| writeln!(f, "kill {run}"))
            .unwrap();
    }
    let mut w = kill_loop_worker(&spool, &agent, KILLS);
    wait_count("results after the last kill", TASKS, DEADLINE, || {
        count_json(&results)
    });
    assert_no_leftovers(&spool);
    // The agents of killed workers live on: let them finish.
    let settled = wait_until(DEADLINE, || {
        let lines = log_lines(&spool);
        let n = |k: &str| lines.iter().filter(|w| w[0] == k).count();
        n("start") == n("end")
    });
    assert!(settled, "agents still running at the end");
    assert_exit_zero(w.stop());

    let lines = log_lines(&spool);
    let mut kill_line = [usize::MAX; KILLS];
    let mut starts: BTreeMap<String, Vec<Exec>> = BTreeMap::new();
    let mut ends: HashMap<(String, u32, usize), usize> = HashMap::new();
    for (i, w) in lines.iter().enumerate() {
        match w[0].as_str() {
            "kill" => kill_line[w[1].parse::<usize>().unwrap()] = i,
            kind @ ("start" | "end") => {
                assert_eq!(w.len(), 5, "odd agent log line: {w:?}");
                let exec = Exec {
                    id: w[1].clone(),
                    attempt: w[2].parse().unwrap(),
                    run: w[3].parse().unwrap(),
                };
                if kind == "start" {
                    starts.entry(exec.id.clone()).or_default().push(exec);
                } else {
                    ends.insert((exec.id, exec.attempt, exec.run), i);
                }
            }
            _ => panic!("odd agent log line: {w:?}"),
        }
    }
    let known: BTreeSet<&String> = ids.iter().collect();
    assert!(
        starts.keys().all(|id| known.contains(id)),
        "executions of unknown tasks"
    );
    let (mut duplicates, mut ended_before_kill) = (0, 0);
    for id in &ids {
        let execs = starts.get(id).map(Vec::as_slice).unwrap_or_default();
        assert!(!execs.is_empty(), "{id} never ran");
        // Interrupted: run by a worker that was killed before the task had
        // its result (the agent may or may not have ended by then).
        let interrupted: Vec<&Exec> = execs
            .iter()
            .filter(|e| e.run < KILLS && !done_at_kill[e.run].contains(id))
            .collect();
        assert!(
            execs.len() - 1 <= interrupted.len(),
            "{id} ran {} times but only {} of its runs were interrupted by a kill: {execs:?}",
            execs.len(),
            interrupted.len()
        );
        duplicates += execs.len() - 1;
        ended_before_kill += interrupted
            .iter()
            .filter(|e| {
                ends.get(&(id.clone(), e.attempt, e.run))
                    .is_some_and(|&end| end < kill_line[e.run])
            })
            .count();
        // Every interrupted run was charged: no attempt number twice.
        let mut attempts: Vec<u32> = execs.iter().map(|e| e.attempt).collect();
        attempts.sort_unstable();
        assert!(
            attempts.windows(2).all(|p| p[0] < p[1]),
            "{id}: an attempt ran twice: {attempts:?}"
        );
        let r = spool.result(W, id).expect("a result");
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(
            r["retry_count"],
            attempts.last().unwrap() - 1,
            "{id}: retry_count is not the last attempt's: {r}"
        );
    }
    assert_eq!(count_json(&results), TASKS, "results of unknown tasks");
    let litter: Vec<String> = [
        spool.results(W),
        spool.deferred(W),
        spool.active(W),
        spool.dlq(W),
        spool.triggers(W),
    ]
    .iter()
    .flat_map(|d| {
        let folder = d.strip_prefix(&spool.root).unwrap().display().to_string();
        dot_files(d)
            .into_iter()
            .map(move |n| format!("{folder}/{n}"))
    })
    .collect();
    eprintln!(
        "kill loop: {TASKS} tasks, {KILLS} kills at {kill_at:?} results; \
         {duplicates} duplicate executions ({ended_before_kill} of the interrupted \
         runs had ended in the agent but had no result yet); \
         temporary files left by the kills: {litter:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. A full results disk

/// A small tmpfs, unmounted when dropped (even when the test panics).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0750")])
            .arg("tmpfs")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.dir)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("warning: cannot unmount {}", self.dir.display());
        }
    }
}

/// A 256 KiB tmpfs for RESULT_DIR; `None`, saying the test is skipped,
/// where this system cannot mount one (mount needs root).
fn results_tmpfs(spool: &Spool) -> Option<Tmpfs> {
    Tmpfs::mount(&spool.scratch("results-fs"), "256k")
        .map_err(|e| eprintln!("skipped: cannot mount tmpfs: {e}"))
        .ok()
}

/// Workers with the counting agent whose results go to `results_tmpfs`,
/// filled by `filler` once the first has started: no result can be
/// written until `filler` goes.
struct FullResults {
    tmpfs: Tmpfs,
    results: PathBuf,
    filler: PathBuf,
    agent: PathBuf,
}

impl FullResults {
    /// The first worker, started with `args`, and the disk filled; `None`
    /// when the test is skipped.
    fn start(spool: &Spool, args: &[&str]) -> Option<(FullResults, Daemon)> {
        let tmpfs = results_tmpfs(spool)?;
        let full = FullResults {
            results: tmpfs.dir.join(W),
            filler: tmpfs.dir.join("filler"),
            agent: counting_agent(spool),
            tmpfs,
        };
        let w = full.worker(spool, args);
        fill(&full.filler);
        Some((full, w))
    }

    fn worker(&self, spool: &Spool, args: &[&str]) -> Daemon {
        let agent = self.agent.display().to_string();
        let result_dir = self.tmpfs.dir.display().to_string();
        let env = [
            ("CLAUDE_COMMAND", agent.as_str()),
            ("RESULT_DIR", result_dir.as_str()),
        ];
        let mut argv = args.to_vec();
        argv.push(W);
        let w = Daemon::start(spool, "hw-worker", &argv, &env);
        wait_started(&w);
        w
    }
}

/// Writes `path` until the file system says it is full.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let block = [0u8; 4096];
    for _ in 0..100_000 {
        if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "filling: {e}");
            return;
        }
    }
    panic!("{} never filled up", path.display());
}

#[test]
fn a_full_results_disk_keeps_tasks_in_place_uncharged_until_space_is_back() {
    let spool = Spool::new();
    let Some((full, mut w)) = FullResults::start(&spool, &["-c", "3"]) else {
        return;
    };
    let (results, filler) = (full.results.clone(), full.filler.clone());
    assert!(results.is_dir(), "the worker did not create {results:?}");

    let ids: Vec<String> = (0..6).map(|i| format!("full{i}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "while the disk is full");
    }
    // The three slots run their tasks and fail to write the results.
    let ran = wait_until(DEADLINE, || {
        log_lines(&spool).iter().filter(|w| w[0] == "run").count() >= 3
    });
    assert!(ran, "the agents did not run: {:?}", log_lines(&spool));
    assert!(
        w.wait_log("No space left on device"),
        "the worker did not log the error:\n{}",
        w.log_text()
    );
    // It keeps serving: alive, and the heartbeat still refreshes.
    for _ in 0..2 {
        let before = spool.heartbeat(W).expect("a heartbeat")["timestamp"].clone();
        let fresh = wait_until(SHORT, || {
            spool
                .heartbeat(W)
                .is_some_and(|h| h["timestamp"] != before && h["status"] == "healthy")
        });
        assert!(
            fresh,
            "the heartbeat stopped while the disk was full: {:?}",
            spool.heartbeat(W)
        );
    }
    assert!(
        w.wait_exit(Duration::ZERO).is_none(),
        "the worker exited:\n{}",
        w.log_text()
    );
    // Every task is still visibly queued, nothing is terminal.
    for id in &ids {
        let file = format!("{id}.json");
        let queued = [spool.tasks(W), spool.active(W), spool.deferred(W)]
            .iter()
            .any(|d| d.join(&file).is_file());
        assert!(queued, "{id} is neither pending, active nor deferred");
    }
    assert_eq!(count_json(&results), 0, "results on a full disk?");
    assert!(
        json_names(&spool.dlq(W)).is_empty(),
        "dead letters: {:?}",
        spool.dlq_records(W)
    );

    fs::remove_file(&filler).unwrap();
    let back = wait_until(DEADLINE, || count_json(&results) >= ids.len());
    assert!(
        back,
        "{} of {} results after space came back:\n{}",
        count_json(&results),
        ids.len(),
        w.log_text()
    );
    for id in &ids {
        let r = read_json(&results.join(format!("{id}.json"))).expect("a result");
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["retry_count"], 0, "an attempt was charged: {r}");
    }
    let runs: Vec<String> = log_lines(&spool)
        .into_iter()
        .filter(|w| w[0] == "run")
        .map(|w| w[1].clone())
        .collect();
    for id in &ids {
        let n = runs.iter().filter(|r| *r == id).count();
        assert_eq!(n, 1, "{id} ran {n} times: {runs:?}");
    }
    assert_no_leftovers(&spool);
    assert_exit_zero(w.stop());
    drop(full);
}

#[test]
fn while_results_cannot_be_written_agents_stop_once_four_per_slot_wait() {
    let spool = Spool::new();
    let Some((full, mut w)) = FullResults::start(&spool, &["-c", "1"]) else {
        return;
    };
    let (results, filler) = (full.results.clone(), full.filler.clone());
    let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "finishes, but its result cannot be written yet");
    }
    // One slot: four results wait, and the fifth task's agent has run
    // and its thread waits to hand the result over.
    let runs = || log_lines(&spool).iter().filter(|l| l[0] == "run").count();
    assert!(wait_until(DEADLINE, || runs() >= 5), "runs: {}", runs());
    assert!(
        holds_for(Duration::from_secs(1), || runs() == 5),
        "agents went on: {} runs\n{}",
        runs(),
        w.log_text()
    );
    assert_eq!(count_json(&results), 0);

    fs::remove_file(&filler).unwrap();
    let done = wait_until(DEADLINE, || count_json(&results) == ids.len());
    assert!(done, "{} of {} results", count_json(&results), ids.len());
    assert_eq!(runs(), ids.len(), "each task ran once");
    assert_no_leftovers(&spool);
    assert_exit_zero(w.stop());
    drop(full);
}

#[test]
fn sigterm_while_results_cannot_be_written_exits_after_the_shutdown_timeout_keeping_the_tasks() {
    let spool = Spool::new();
    let args = ["--shutdown-timeout", "1"];
    let Some((full, mut w)) = FullResults::start(&spool, &args) else {
        return;
    };
    let (results, filler) = (full.results.clone(), full.filler.clone());
    let ids: Vec<String> = (0..2).map(|i| format!("stuck{i}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "finishes, but its result cannot be written");
    }
    let ran = wait_until(DEADLINE, || {
        log_lines(&spool).iter().filter(|w| w[0] == "run").count() >= ids.len()
    });
    assert!(ran, "the agents did not run: {:?}", log_lines(&spool));
    w.expect_log("No space left on device");

    // The agents are done; only their results wait. SIGTERM: the worker
    // waits up to --shutdown-timeout for them, then leaves.
    w.signal(Signal::SIGTERM);
    let status = w.wait_exit(DEADLINE);
    assert!(
        status.is_some(),
        "still running after SIGTERM:\n{}",
        w.log_text()
    );
    assert_exit_zero(status.unwrap());
    w.expect_log("Shutdown timeout: giving up on 2 result(s) not yet written");
    for id in &ids {
        let active = spool.active(W).join(format!("{id}.json"));
        assert!(active.is_file(), "{id} left .active/:\n{}", w.log_text());
    }
    assert_eq!(count_json(&results), 0);
    assert!(json_names(&spool.dlq(W)).is_empty());

    // Space back, a new worker: recovery runs them again, and they end.
    fs::remove_file(&filler).unwrap();
    let mut again = full.worker(&spool, &args);
    let done = wait_until(DEADLINE, || count_json(&results) == ids.len());
    assert!(done, "results after the restart:\n{}", again.log_text());
    assert_exit_zero(again.stop());
    drop(full);
}

// ---------------------------------------------------------------------------
// 3. A flood past the inotify queue

/// How many events an inotify queue holds before it overflows.
fn queued_events_limit() -> usize {
    fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384)
}

/// The state letter of a process (`R`, `S`, `T` for stopped…).
fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(") ")? + 2..];
    rest.chars().next()
}

#[test]
#[ignore = "slow: run with --ignored"]
fn forty_thousand_tasks_half_queued_while_stopped_half_flooded_in_all_run_exactly_once() {
    const HALF: usize = 20_000;
    let spool = Spool::new();
    let log = agent_log(&spool).display().to_string();
    let agent = spool.script(
        "fast.sh",
        &format!(r#"echo "run $HW_TASK_ID $HW_ATTEMPT" >> '{log}'"#),
    );
    let before: Vec<String> = (0..HALF).map(|i| format!("a{i:05}")).collect();
    let during: Vec<String> = (0..HALF).map(|i| format!("b{i:05}")).collect();
    for id in &before {
        spool.drop_simple(W, id, "queued while stopped");
    }
    let staging = stage(&spool, "staging", &during);

    let started = Instant::now();
    let mut w = Daemon::worker(&spool, W, &agent, &[("MAX_CONCURRENT_TASKS", "4")]);
    wait_started(&w);
    // The watcher drains its queue 64 KiB at a time and keeps up with a
    // tight loop of renames on most machines. So the worker is frozen
    // (SIGSTOP) while the first part of the flood, more events than the
    // kernel queues, arrives: the queue overflows for sure. The rest
    // arrives while it runs, and rescans.
    let frozen = (queued_events_limit() + 1000).min(HALF - 1000);
    w.signal(Signal::SIGSTOP);
    assert!(
        wait_until(SHORT, || process_state(w.pid()) == Some('T')),
        "the worker did not stop"
    );
    flood(&spool, &staging, &during[..frozen]);
    w.signal(Signal::SIGCONT);
    flood(&spool, &staging, &during[frozen..]);
    let results = spool.results(W);
    wait_count(
        "results of the flood",
        2 * HALF,
        Duration::from_secs(900),
        || count_json(&results),
    );
    let drained = started.elapsed();

    let all: Vec<String> = before.iter().chain(&during).cloned().collect();
    assert_each_ran_once_by_log(&spool, &all);
    assert_completed_uncharged(&spool, W, &all);
    assert_no_leftovers(&spool);
    assert_exit_zero(w.stop());
    let overflowed = w.log_text().contains("overflowed");
    eprintln!(
        "flood: {} tasks drained in {:.1} s ({frozen} of the flood while the worker was \
         frozen); inotify queue overflow: {}",
        2 * HALF,
        drained.as_secs_f64(),
        if overflowed {
            "yes (logged, rescanned)"
        } else {
            "no (the rescan path was not exercised)"
        }
    );
}

// ---------------------------------------------------------------------------
// 4. Competing consumers

/// `n` workers of the same name on one spool, 2,000 tasks flooded in:
/// each runs exactly once, every worker takes part.
fn competing_consumers(n: usize) {
    const TASKS: usize = 2000;
    let spool = Spool::new();
    let agent = counting_agent(&spool);
    let mut workers: Vec<Daemon> = (0..n)
        .map(|_| Daemon::worker(&spool, W, &agent, &[("MAX_CONCURRENT_TASKS", "3")]))
        .collect();
    for w in &workers {
        wait_started(w);
    }
    let ids: Vec<String> = (0..TASKS).map(|i| format!("c{i:04}")).collect();
    let staging = stage(&spool, "staging", &ids);
    let started = Instant::now();
    flood(&spool, &staging, &ids);
    let results = spool.results(W);
    wait_count("results", TASKS, Duration::from_secs(300), || {
        count_json(&results)
    });
    let took = started.elapsed();

    let runs = assert_each_ran_once_by_log(&spool, &ids);
    assert_completed_uncharged(&spool, W, &ids);
    assert_no_leftovers(&spool);
    let share: Vec<usize> = workers
        .iter()
        .map(|w| {
            let pid = w.pid().to_string();
            runs.iter().filter(|r| r.get(4) == Some(&pid)).count()
        })
        .collect();
    assert_eq!(
        share.iter().sum::<usize>(),
        TASKS,
        "agents with another parent"
    );
    assert!(
        share.iter().all(|&s| s > 0),
        "a worker took no part: {share:?}"
    );
    for w in &mut workers {
        assert_exit_zero(w.stop());
    }
    eprintln!(
        "{n} competing workers: {TASKS} tasks in {:.1} s, shares {share:?}",
        took.as_secs_f64()
    );
}

#[test]
fn two_workers_on_one_spool_run_each_of_2000_tasks_exactly_once() {
    competing_consumers(2);
}

#[test]
fn four_workers_on_one_spool_run_each_of_2000_tasks_exactly_once() {
    competing_consumers(4);
}

// ---------------------------------------------------------------------------
// 5. The listener restarted and killed during a flood of results

/// `hw-listen` following worker `w`, stdout kept; run `n` of the test.
fn listener(spool: &Spool, n: usize) -> Daemon {
    let cmd = listener_command(spool, &[], &[("WORKERS", W)]);
    Daemon::spawn(spool, &format!("listen-{n}"), cmd)
}

/// The `task_completed` ids of a listener's stdout, in order. A line cut
/// short is tolerated only at the end of a killed run's output.
fn completed_ids(out: &Path, killed: bool) -> Vec<String> {
    let text = fs::read_to_string(out).unwrap_or_default();
    let (complete, torn) = match text.rfind('\n') {
        Some(i) => (&text[..=i], &text[i + 1..]),
        None => ("", text.as_str()),
    };
    assert!(
        torn.is_empty() || killed,
        "{}: a torn line from a listener that was not killed: {torn:?}",
        out.display()
    );
    complete
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l:?}", out.display()))
        })
        .filter(|e| e["event_type"] == "task_completed")
        .map(|e| {
            assert_eq!(e["data"]["worker"], W, "{e}");
            assert_eq!(e["data"]["status"], "completed", "{e}");
            e["data"]["task_id"]
                .as_str()
                .expect("a task_id")
                .to_string()
        })
        .collect()
}

/// Writes a completed result the way a worker does (dot-file, rename).
fn write_result(dir: &Path, id: &str) {
    let r = json!({"task_id": id, "worker": W, "status": "completed", "exit_code": 0,
        "stdout": "", "stderr": "", "duration_seconds": 0.01,
        "timestamp": rfc3339(SystemTime::now()), "retry_count": 0});
    place(dir, &format!("{id}.json"), &r);
}

#[test]
fn listener_restarts_and_a_kill_during_a_flood_of_results_emit_each_completion_once() {
    const BURSTS: usize = 30;
    const PER_BURST: usize = 100;
    // Between its last state write and a SIGKILL the listener has at most
    // the one event it is emitting (the state is journaled per event).
    const MAX_REPEATS: usize = 1;
    let mut rng = Rng::new("listener restarts");
    let spool = Spool::new();
    let results = spool.results(W);
    fs::create_dir_all(&results).unwrap();
    // Which bursts end in a SIGTERM and restart, and which in the SIGKILL.
    let cuts = rng.distinct_sorted(5, 2, BURSTS as u64 - 2);
    let kill_after = cuts[1 + rng.below(3) as usize] as usize;
    let term_after: BTreeSet<usize> = cuts
        .iter()
        .map(|&c| c as usize)
        .filter(|&c| c != kill_after)
        .collect();

    let mut runs: Vec<(PathBuf, bool)> = Vec::new();
    let mut l = listener(&spool, 0);
    l.expect_log("Listening");
    let ids: Vec<String> = (0..BURSTS * PER_BURST)
        .map(|i| format!("r{i:04}"))
        .collect();
    for (b, burst) in ids.chunks(PER_BURST).enumerate() {
        for id in burst {
            write_result(&results, id);
        }
        if term_after.contains(&b) {
            // After its signal handlers are in.
            l.expect_log("Listening");
            assert_exit_zero(l.stop());
            runs.push((l.out().to_path_buf(), false));
            l = listener(&spool, runs.len());
        } else if b == kill_after {
            // Killed while it emits this burst.
            let emitting = wait_until(DEADLINE, || {
                let text = fs::read_to_string(l.out()).unwrap_or_default();
                burst.iter().any(|id| text.contains(&format!("\"{id}\"")))
            });
            assert!(emitting, "the listener did not see burst {b}");
            l.crash();
            runs.push((l.out().to_path_buf(), true));
            l = listener(&spool, runs.len());
        }
    }
    // The last run catches up with everything.
    let seen = |runs: &[(PathBuf, bool)], current: &Path| -> BTreeSet<String> {
        runs.iter()
            .flat_map(|(out, killed)| completed_ids(out, *killed))
            .chain(completed_ids(current, true))
            .collect()
    };
    let all = wait_until(DEADLINE, || seen(&runs, l.out()).len() >= ids.len());
    assert!(
        all,
        "{} of {} completions emitted:\n{}",
        seen(&runs, l.out()).len(),
        ids.len(),
        l.log_text()
    );
    l.expect_log("Listening");
    assert_exit_zero(l.stop());
    runs.push((l.out().to_path_buf(), false));

    // Where each id's event went out: (run, its place in the run's output).
    let mut emitted: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    let mut per_run = Vec::new();
    for (i, (out, killed)) in runs.iter().enumerate() {
        let got = completed_ids(out, *killed);
        for (k, id) in got.iter().enumerate() {
            emitted.entry(id.clone()).or_default().push((i, k));
        }
        per_run.push(got.len());
    }
    let known: BTreeSet<&String> = ids.iter().collect();
    assert!(
        emitted.keys().all(|id| known.contains(id)),
        "events of unknown results"
    );
    let missing: Vec<&String> = ids.iter().filter(|id| !emitted.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never emitted: {missing:?}");
    let killed_run = runs.iter().position(|(_, k)| *k).expect("a killed run");
    let mut repeats = Vec::new();
    for (id, at) in &emitted {
        if at.len() == 1 {
            continue;
        }
        assert_eq!(at.len(), 2, "{id} emitted {} times: {at:?}", at.len());
        let (first, second) = (at[0], at[1]);
        assert!(
            first.0 == killed_run && second.0 == killed_run + 1,
            "{id} emitted again, and not across the SIGKILL (runs {first:?}, {second:?}; killed run {killed_run})"
        );
        assert_eq!(
            first.1 + 1,
            per_run[killed_run],
            "{id} repeated, but was not among the last events before the SIGKILL"
        );
        repeats.push(id.clone());
    }
    assert!(
        repeats.len() <= MAX_REPEATS,
        "{} events repeated across the SIGKILL: {repeats:?}",
        repeats.len()
    );
    eprintln!(
        "listener: {} results, {} runs (SIGTERM after bursts {term_after:?}, SIGKILL after burst \
         {kill_after}), completions per run {per_run:?}, repeated across the SIGKILL: {repeats:?}",
        ids.len(),
        runs.len()
    );
}

// ---------------------------------------------------------------------------
// 6. Slow and hostile clients of the metrics endpoint

/// Raises this process's soft limit of open files (its sockets) to at
/// least `n` when the hard limit allows it.
fn allow_open_files(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < n {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard);
        }
    }
}

/// `hw-worker w` with a quick agent, given a soft limit of `soft` open
/// files (its hard limit is this process's), as a service manager would.
fn worker_given_open_files(spool: &Spool, soft: u64) -> Daemon {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let soft = soft.min(hard);
    let mut cmd = Command::new(bin("hw-worker"));
    cmd.arg(W)
        .envs(base_env(spool))
        .env("CLAUDE_COMMAND", counting_agent(spool));
    // SAFETY: only setrlimit(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from)
        });
    }
    Daemon::spawn(spool, "hw-worker", cmd)
}

/// Besieges the metrics endpoint of the worker whose heartbeat names it:
/// one connection that sent half a request and stalls, and 1,000 more
/// opened at once, every third one half-written. The connections stay
/// open as long as the returned vector lives. A connection the worker
/// refuses is counted, not fatal: the tests judge what the worker still
/// does.
fn besiege(spool: &Spool) -> (SocketAddr, Vec<TcpStream>) {
    allow_open_files(4096);
    let mut addr = None;
    let ok = wait_until(DEADLINE, || {
        addr = spool
            .heartbeat(W)
            .and_then(|h| h["metrics_addr"].as_str().and_then(|a| a.parse().ok()));
        addr.is_some()
    });
    assert!(ok, "no metrics address in the heartbeat");
    let addr: SocketAddr = addr.unwrap();
    let mut held = Vec::new();
    let mut slow = TcpStream::connect_timeout(&addr, SHORT).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: loc")
        .unwrap();
    held.push(slow);
    let opened = Instant::now();
    let mut refused = None;
    for i in 0..1000 {
        if opened.elapsed() > DEADLINE {
            refused = Some(format!("connection {i}: not opened within {DEADLINE:?}"));
            break;
        }
        match TcpStream::connect_timeout(&addr, SHORT) {
            Ok(mut c) => {
                if i % 3 == 0 {
                    let _ = c.write_all(b"GET /met");
                }
                held.push(c);
            }
            Err(e) => {
                refused = Some(format!("connection {i}: {e}"));
                break;
            }
        }
    }
    eprintln!(
        "metrics: {} hostile connections open after {:.2} s{}",
        held.len(),
        opened.elapsed().as_secs_f64(),
        refused.map_or(String::new(), |r| format!("; stopped at {r}"))
    );
    (addr, held)
}

/// `GET path` by a fresh client, every step bounded; the whole response.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut c = TcpStream::connect_timeout(&addr, SHORT).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(SHORT)).unwrap();
    c.set_write_timeout(Some(SHORT)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut body = Vec::new();
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 8192];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {} bytes: {e}", body.len())),
        }
        if Instant::now() > end {
            return Err(format!("still reading after {DEADLINE:?}"));
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// 50 quick tasks all complete while the hostile connections are open.
fn assert_tasks_complete_under_siege(spool: &Spool, log: &Path) {
    let ids: Vec<String> = (0..50).map(|i| format!("q{i:02}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "quick");
    }
    let results = spool.results(W);
    let done = wait_until(DEADLINE, || count_json(&results) >= ids.len());
    assert!(
        done,
        "{} of {} tasks completed within {DEADLINE:?} while clients hung; first errors: {:#?}",
        count_json(&results),
        ids.len(),
        errors_in(log)
    );
    assert_each_ran_once_by_log(spool, &ids);
    assert_completed_uncharged(spool, W, &ids);
    assert_no_leftovers(spool);
}

/// The first few ERROR lines of a log.
fn errors_in(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .take(5)
        .map(String::from)
        .collect()
}

/// /metrics answers a fresh client (every step bounded).
fn assert_metrics_answer(addr: SocketAddr, log: &Path) {
    let response = http_get(addr, "/metrics").unwrap_or_else(|e| {
        panic!(
            "GET /metrics with hostile clients hanging: {e}; first errors: {:#?}",
            errors_in(log)
        )
    });
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "response: {}",
        response.lines().next().unwrap_or("")
    );
    assert!(
        response.contains("watcher_tasks_processed_total"),
        "no metrics in the response: {response}"
    );
}

#[test]
fn tasks_keep_completing_while_a_thousand_metrics_clients_hang() {
    let spool = Spool::new();
    let mut w = Daemon::worker(&spool, W, &counting_agent(&spool), &[]);
    let (_addr, held) = besiege(&spool);
    assert_tasks_complete_under_siege(&spool, &w.log);
    assert_exit_zero(w.stop());
    drop(held);
}

#[test]
fn metrics_answers_a_fresh_client_while_a_thousand_others_hang() {
    let spool = Spool::new();
    let mut w = Daemon::worker(&spool, W, &counting_agent(&spool), &[]);
    let (addr, held) = besiege(&spool);
    assert_metrics_answer(addr, &w.log);
    assert_exit_zero(w.stop());
    drop(held);
}

/// A service manager commonly gives a daemon a soft limit of 1,024 open
/// files (systemd's default); a connection costs the worker descriptors.
#[test]
fn a_worker_given_the_usual_1024_open_files_is_not_starved_by_a_thousand_metrics_clients() {
    let spool = Spool::new();
    let mut w = worker_given_open_files(&spool, 1024);
    let (addr, held) = besiege(&spool);
    assert_tasks_complete_under_siege(&spool, &w.log);
    assert_metrics_answer(addr, &w.log);
    assert_exit_zero(w.stop());
    drop(held);
}
