//! Several processes of one worker name (hookwatch(5), Heartbeat and
//! Result; hw-worker(8), Several hosts): each writes its own heartbeat
//! `heartbeats/<worker>@<instance>.json` beside the name's own
//! `<worker>.json`; hw-status judges each instance and the name (healthy
//! if any instance is, the dead ones listed); a successor on the same
//! host removes its dead predecessors' heartbeats and `hw-status
//! --prune-older-than` those of other hosts; recovery tells a finished
//! run by the claim identity its result records, whatever the clocks;
//! and a worker reaps the orphans its agents leave (PID 1 in a
//! container).

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

const W: &str = "w";

/// The instance heartbeats of `W`, by file name.
fn instance_files(spool: &Spool) -> Vec<String> {
    spool
        .names(&spool.root.join("heartbeats"))
        .into_iter()
        .filter(|n| n.starts_with("w@") && n.ends_with(".json"))
        .collect()
}

fn status_json(spool: &Spool) -> (Option<i32>, Value) {
    let out = run_tool(spool, "hw-status", &["--json"], &[]);
    let text = stdout(&out);
    let v = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("no JSON ({e}): {text:?} {}", stderr(&out)));
    (out.status.code(), v)
}

fn worker_pair(spool: &Spool) -> (Daemon, Daemon) {
    let agent = spool.script("ok.sh", "exit 0");
    let a = Daemon::worker(spool, W, &agent, &[]);
    assert!(wait_until(DEADLINE, || instance_files(spool).len() == 1));
    let b = Daemon::worker(spool, W, &agent, &[]);
    assert!(
        wait_until(DEADLINE, || instance_files(spool).len() == 2),
        "{:?}\n{}",
        instance_files(spool),
        b.log_text()
    );
    (a, b)
}

#[test]
fn each_worker_process_writes_its_own_heartbeat_and_the_name_s_file_stays() {
    let spool = Spool::new();
    let (a, b) = worker_pair(&spool);
    let files = instance_files(&spool);
    let beats: Vec<Value> = files
        .iter()
        .map(|f| read_json(&spool.root.join("heartbeats").join(f)).unwrap())
        .collect();
    let pids: Vec<i64> = beats.iter().map(|b| b["pid"].as_i64().unwrap()).collect();
    assert!(
        pids.contains(&(a.pid() as i64)) && pids.contains(&(b.pid() as i64)),
        "{beats:?}"
    );
    for (file, beat) in files.iter().zip(&beats) {
        let instance = beat["instance"].as_str().expect("the instance it names");
        assert_eq!(file, &format!("w@{instance}.json"));
    }
    assert!(files.iter().any(|f| f.ends_with(".2.json")), "{files:?}");
    // The Python-compatible name is still written, by either process.
    let name = spool.heartbeat(W).expect("heartbeats/w.json");
    assert!(pids.contains(&name["pid"].as_i64().unwrap()), "{name}");
}

#[test]
fn a_dead_instance_is_listed_while_the_name_stays_healthy() {
    let spool = Spool::new();
    let (mut a, b) = worker_pair(&spool);
    a.crash();
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = status_json(&spool).1;
        let insts = last["workers"][W]["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        insts.iter().any(|i| i["status"] == "stale")
    });
    assert!(ok, "no stale instance: {last:#}");
    let (code, v) = status_json(&spool);
    let w = &v["workers"][W];
    assert_eq!(w["status"], "healthy", "{v:#}");
    assert_eq!(v["overall"], "warning", "a dead instance warns: {v:#}");
    assert_eq!(code, Some(1));
    let insts = w["instances"].as_array().unwrap();
    assert_eq!(insts.len(), 2, "{v:#}");
    let dead: Vec<&Value> = insts.iter().filter(|i| i["status"] == "stale").collect();
    assert_eq!(dead.len(), 1, "{v:#}");
    assert_eq!(dead[0]["pid"], a.pid());
    let table = stdout(&run_tool(&spool, "hw-status", &[], &[]));
    assert!(table.contains("1/2 (dead: w@"), "{table}");
    assert!(
        table.contains(&format!("pid {}) stale", a.pid())),
        "{table}"
    );
    drop(b);
}

#[test]
fn a_successor_on_the_same_host_removes_its_dead_predecessors_heartbeats() {
    let spool = Spool::new();
    let (mut a, mut b) = worker_pair(&spool);
    let agent = spool.script("ok2.sh", "exit 0");
    b.crash();
    a.crash();
    // The first successor takes slot 1 and removes both dead files (its
    // own slot's by overwriting, slot 2's because its lock is free).
    let c = Daemon::worker(&spool, W, &agent, &[]);
    assert!(wait_until(DEADLINE, || {
        spool.heartbeat(W).is_some_and(|h| h["pid"] == c.pid())
    }));
    assert!(
        wait_until(DEADLINE, || instance_files(&spool).len() == 1),
        "{:?}\n{}",
        instance_files(&spool),
        c.log_text()
    );
    let d = Daemon::worker(&spool, W, &agent, &[]);
    assert!(
        wait_until(DEADLINE, || {
            let pids: Vec<Value> = instance_files(&spool)
                .iter()
                .filter_map(|f| read_json(&spool.root.join("heartbeats").join(f)))
                .map(|h| h["pid"].clone())
                .collect();
            pids.len() == 2 && pids.contains(&json!(c.pid())) && pids.contains(&json!(d.pid()))
        }),
        "{:?}",
        instance_files(&spool)
    );
    // A file of a dead higher slot on this host goes when a successor starts.
    let host = read_json(
        &spool
            .root
            .join("heartbeats")
            .join(&instance_files(&spool)[0]),
    )
    .unwrap()["instance"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let ghost = spool
        .root
        .join("heartbeats")
        .join(format!("w@{host}.7.json"));
    fs::write(
        &ghost,
        b"{\"worker\":\"w\",\"pid\":1,\"timestamp\":\"2020-01-01T00:00:00Z\"}\n",
    )
    .unwrap();
    let e = Daemon::worker(&spool, W, &agent, &[]);
    assert!(wait_until(DEADLINE, || !ghost.exists()), "{}", e.log_text());
    assert!(e
        .log_text()
        .contains("Removed the heartbeat of a dead instance"));
    let (code, v) = status_json(&spool);
    assert_eq!(code, Some(0), "{v:#}");
}

#[test]
fn prune_removes_dead_instances_heartbeats_of_other_hosts_but_never_a_live_one() {
    let spool = Spool::new();
    let agent = spool.script("ok.sh", "exit 0");
    let live = Daemon::worker(&spool, W, &agent, &[]);
    assert!(wait_until(DEADLINE, || instance_files(&spool).len() == 1));
    let dir = spool.root.join("heartbeats");
    let other = dir.join("w@otherhost.json");
    let beat = json!({"worker": W, "pid": 99, "hostname": "otherhost", "instance": "otherhost",
                      "timestamp": "2020-01-01T00:00:00.000Z", "heartbeat_interval": 0.5,
                      "status": "healthy"});
    fs::write(&other, format!("{beat}\n")).unwrap();
    age_file(&other, 3600);
    // The live one's file, made to look old: its lock keeps it.
    let mine = dir.join(
        instance_files(&spool)
            .into_iter()
            .find(|f| !f.contains("otherhost"))
            .unwrap(),
    );
    let (_, v) = status_json(&spool);
    assert_eq!(v["workers"][W]["status"], "healthy", "{v:#}");
    assert_eq!(v["overall"], "warning", "{v:#}");
    live.signal(Signal::SIGSTOP);
    age_file(&mine, 3600);
    let out = run_tool(&spool, "hw-status", &["--prune-older-than", "60"], &[]);
    live.signal(Signal::SIGCONT);
    assert!(
        stdout(&out).contains("w@otherhost.json"),
        "{}",
        stdout(&out)
    );
    assert!(!other.exists());
    assert!(mine.exists(), "a live instance's heartbeat was pruned");
    assert!(wait_until(DEADLINE, || status_json(&spool).0 == Some(0)));
}

#[test]
fn a_stopping_instance_leaves_the_name_s_file_to_a_live_one() {
    let spool = Spool::new();
    let (mut a, b) = worker_pair(&spool);
    a.stop();
    // Its own file says stopped; the name's file never does while b runs.
    assert!(wait_until(DEADLINE, || {
        instance_files(&spool).iter().any(|f| {
            read_json(&spool.root.join("heartbeats").join(f))
                .is_some_and(|h| h["status"] == "stopped")
        })
    }));
    assert!(
        holds_for(Duration::from_millis(1500), || {
            spool.heartbeat(W).is_some_and(|h| h["status"] == "healthy")
        }),
        "{:?}",
        spool.heartbeat(W)
    );
    assert!(wait_until(DEADLINE, || {
        spool.heartbeat(W).is_some_and(|h| h["pid"] == b.pid())
    }));
    let (code, v) = status_json(&spool);
    assert_eq!(code, Some(0), "a stopped instance is no dead one: {v:#}");
}

#[test]
fn an_older_writer_s_heartbeat_alone_still_speaks_for_the_name() {
    let spool = Spool::new();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    let dir = spool.root.join("heartbeats");
    fs::create_dir_all(&dir).unwrap();
    let now = rfc3339(SystemTime::now());
    let beat = json!({"worker": W, "pid": 7, "hostname": "py", "timestamp": now,
                      "heartbeat_interval": 10, "status": "healthy"});
    fs::write(dir.join("w.json"), format!("{beat}\n")).unwrap();
    let (code, v) = status_json(&spool);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(
        v["workers"][W]["instances"][0]["instance"], "w.json",
        "{v:#}"
    );
}

// ---------------------------------------------------------------------------
// Recovery by claim identity

/// A dead claim of task `id`: its entry in `.active/` with mtime `stamp`.
fn dead_claim(spool: &Spool, id: &str, stamp: SystemTime) -> PathBuf {
    let active = spool.active(W);
    fs::create_dir_all(&active).unwrap();
    let entry = place(
        &active,
        &format!("{id}.json"),
        &json!({"task_id": id, "description": "x"}),
    );
    set_mtime(&entry, stamp);
    entry
}

fn ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A completed result of `id` naming the claim stamped `claim_ns`.
fn result_of_claim(spool: &Spool, id: &str, claim_ns: u64) -> PathBuf {
    let results = spool.results(W);
    fs::create_dir_all(&results).unwrap();
    place(
        &results,
        &format!("{id}.json"),
        &json!({"task_id": id, "worker": W, "status": "completed", "exit_code": 0,
                "stdout": "first run", "stderr": "", "duration_seconds": 0.1,
                "timestamp": rfc3339(SystemTime::now()), "retry_count": 0, "metadata": {},
                "claim": {"hostname": "elsewhere", "pid": 4242, "mtime_ns": claim_ns}}),
    )
}

fn counting_agent(spool: &Spool) -> (PathBuf, PathBuf) {
    let log = spool.scratch("runs.log");
    let agent = spool.script(
        "count.sh",
        &format!(r#"echo "run $HW_TASK_ID" >> '{}'"#, log.display()),
    );
    (agent, log)
}

#[test]
fn a_claimer_whose_clock_is_ahead_is_not_run_again_when_its_result_names_its_claim() {
    let spool = Spool::new();
    // The claimer's clock was an hour ahead: its stamp is later than any
    // result time this host would compare it with.
    let stamp = SystemTime::now() + Duration::from_secs(3600);
    let stamp = SystemTime::UNIX_EPOCH + Duration::from_micros(ns(stamp) / 1000);
    let entry = dead_claim(&spool, "ahead", stamp);
    result_of_claim(&spool, "ahead", ns(stamp));
    let (agent, log) = counting_agent(&spool);
    let w = Daemon::worker(&spool, W, &agent, &[]);
    assert!(wait_until(DEADLINE, || !entry.exists()), "{}", w.log_text());
    assert!(
        w.log_text().contains("Recovered a finished run"),
        "{}",
        w.log_text()
    );
    assert!(!log.exists(), "the finished task ran again");
    assert_eq!(spool.result(W, "ahead").unwrap()["stdout"], "first run");
}

#[test]
fn a_result_of_another_claim_does_not_hide_an_interrupted_run_whatever_the_clocks() {
    let spool = Spool::new();
    // The dead claimer's clock was an hour behind; the result on disk is
    // newer than its stamp but names an earlier claim (a run before a
    // replay): the task was interrupted and runs again.
    let stamp = SystemTime::now() - Duration::from_secs(3600);
    let stamp = SystemTime::UNIX_EPOCH + Duration::from_micros(ns(stamp) / 1000);
    dead_claim(&spool, "behind", stamp);
    let earlier = ns(stamp) - 7_000_000_000;
    result_of_claim(&spool, "behind", earlier);
    let (agent, log) = counting_agent(&spool);
    let w = Daemon::worker(&spool, W, &agent, &[]);
    assert!(
        wait_until(DEADLINE, || file_lines(&log)
            .iter()
            .any(|l| l == "run behind")),
        "{}",
        w.log_text()
    );
    assert!(
        w.log_text().contains("Recovered an interrupted run"),
        "{}",
        w.log_text()
    );
}

#[test]
fn a_result_records_the_claim_that_ran_it() {
    let spool = Spool::new();
    let (agent, _log) = counting_agent(&spool);
    let w = Daemon::worker(&spool, W, &agent, &[]);
    spool.drop_simple(W, "t1", "x");
    let r = spool.wait_result(W, "t1");
    assert_eq!(r["claim"]["pid"], w.pid(), "{r:#}");
    assert!(r["claim"]["hostname"].is_string(), "{r:#}");
    let stamp = r["claim"]["mtime_ns"].as_u64().expect("mtime_ns");
    assert_eq!(stamp % 1000, 0, "cut to whole microseconds: {stamp}");
}

// ---------------------------------------------------------------------------
// Orphans (PID 1)

fn ppid_of(pid: u32) -> Option<(u32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((f.next()?.parse().ok()?, state))
}

#[test]
fn the_orphans_an_agent_leaves_are_adopted_and_reaped_by_the_worker() {
    let spool = Spool::new();
    let pidfile = spool.scratch("orphan.pid");
    let go = spool.scratch("orphan.go");
    // The agent starts a job in a session of its own (so the kill of the
    // agent's process group at its exit spares it) and exits once the job
    // is there: the job is orphaned, and ends once told to.
    let agent = spool.script(
        "leaver.sh",
        &format!(
            "setsid sh -c 'echo $$ > \"$2\"; while [ ! -e \"$1\" ]; do sleep 0.05; done' sh '{go}' '{pid}' &\n\
             while [ ! -s '{pid}' ]; do sleep 0.01; done\nexit 0",
            go = go.display(),
            pid = pidfile.display()
        ),
    );
    let w = Daemon::worker(&spool, W, &agent, &[]);
    spool.drop_simple(W, "t1", "x");
    spool.wait_result(W, "t1");
    assert!(wait_until(DEADLINE, || fs::read_to_string(&pidfile)
        .is_ok_and(|s| s.ends_with('\n'))));
    let orphan: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || ppid_of(orphan)
            .is_some_and(|(pp, _)| pp == w.pid() as u32)),
        "the orphan was not adopted by the worker: {:?}",
        ppid_of(orphan)
    );
    fs::write(&go, b"").unwrap();
    assert!(
        wait_until(DEADLINE, || ppid_of(orphan)
            .is_none_or(|(pp, _)| pp != w.pid() as u32)),
        "the orphan stays a zombie of the worker: {:?}",
        ppid_of(orphan)
    );
}

/// How many times a thread of `pid` named `name` has gone to sleep.
fn sleeps_of_thread(pid: i32, name: &str) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let task = tasks
        .flatten()
        .find(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))?;
    let status = fs::read_to_string(task.path().join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
}

#[test]
fn with_no_orphan_left_the_reaper_does_not_wake_an_idle_worker() {
    let spool = Spool::new();
    let w = Daemon::worker(&spool, W, Path::new("true"), &[]);
    spool.drop_simple(W, "t1", "x");
    spool.wait_result(W, "t1");
    let pid = w.pid();
    // Let it settle after the agent's exit (a look, then sleep), then
    // watch it.
    let sleeps = || sleeps_of_thread(pid, "reaper");
    let mut asleep = None;
    assert!(wait_until(DEADLINE, || {
        asleep = sleeps();
        asleep.is_some() && holds_for(Duration::from_millis(300), || sleeps() == asleep)
    }));
    assert!(
        holds_for(Duration::from_secs(3), || sleeps() == asleep),
        "the reaper woke: {asleep:?} then {:?}",
        sleeps()
    );
}

#[test]
fn the_reaper_looks_once_for_the_agents_that_end_together() {
    let spool = Spool::new();
    let w = Daemon::worker(
        &spool,
        W,
        Path::new("true"),
        &[("MAX_CONCURRENT_TASKS", "4")],
    );
    spool.drop_simple(W, "t0", "x");
    spool.wait_result(W, "t0");
    let sleeps = || sleeps_of_thread(w.pid(), "reaper").unwrap();
    let (before, started) = (sleeps(), Instant::now());
    let ids: Vec<String> = (1..=300).map(|i| format!("t{i}")).collect();
    for id in &ids {
        spool.drop_simple(W, id, "x");
    }
    for id in &ids {
        spool.wait_result(W, id);
    }
    let (looked, took) = (sleeps() - before, started.elapsed());
    // A look is at most three sleeps (for an end, the 50 ms gathering,
    // the registry's lock), and the gathering allows one per 50 ms.
    let bound = 3 * (took.as_millis() as u64 / 50 + 2);
    assert!(
        looked <= bound,
        "the reaper slept {looked} times while 300 agents ended in {took:?} (at most {bound})"
    );
}

/// The pids whose parent is `pid`, by /proc.
fn children_of(pid: u32) -> Vec<(u32, char, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((pp, state)) = ppid_of(p) {
            if pp == pid {
                let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                out.push((p, state, comm.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn a_worker_that_is_pid_1_reaps_the_orphans_of_its_agents() {
    let unshare = ["/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let (true, Some(unshare)) = (nix::unistd::geteuid().is_root(), unshare) else {
        eprintln!("skipped: needs root and unshare(1) for a PID namespace");
        return;
    };
    let spool = Spool::new();
    // Each task leaves a `sleep` behind, orphaned as soon as the agent exits.
    let agent = spool.script("leaver.sh", "sleep 0.3 &\nexit 0");
    let mut cmd = Command::new(unshare);
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(bin("hw-worker"))
        .arg(W)
        .envs(base_env(&spool))
        .env("CLAUDE_COMMAND", &agent);
    let worker = Daemon::spawn(&spool, "pid1-worker", cmd);
    let mut pid1 = None;
    assert!(wait_until(DEADLINE, || {
        pid1 = children_of(worker.pid() as u32)
            .into_iter()
            .find(|(_, _, comm)| comm == "hw-worker")
            .map(|(p, _, _)| p);
        pid1.is_some()
    }));
    let pid1 = pid1.unwrap();
    for i in 0..5 {
        spool.drop_simple(W, &format!("t{i}"), "x");
    }
    for i in 0..5 {
        spool.wait_result(W, &format!("t{i}"));
    }
    // The sleeps were PID 1's children, and none stays a zombie.
    assert!(
        wait_until(DEADLINE, || children_of(pid1)
            .iter()
            .all(|(_, state, comm)| *state != 'Z' && comm != "sleep")),
        "left behind: {:?}\n{}",
        children_of(pid1),
        worker.log_text()
    );
}
