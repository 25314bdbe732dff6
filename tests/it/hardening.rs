//! SPEC section 2's promises under attack and accident (issue #14): no
//! folder swap leads the worker outside the spool, one bad file never
//! stalls the rest, every read is bounded, dependencies cost a lookup, a
//! task id has one result, and the smaller ones (long names, held locks,
//! link(2) arrivals, stray descriptors, crash leftovers, hooks at least
//! once, an unbounded input line). Each test runs the real binaries.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use nix::fcntl::{Flock, FlockArg};
use serde_json::json;

const W: &str = "marie";

/// Starts W's worker with `agent` and waits for its first heartbeat.
fn up(spool: &Spool, agent: &Path, env: &[(&str, &str)]) -> Daemon {
    let w = Daemon::worker(spool, W, agent, env);
    let ok = wait_until(DEADLINE, || spool.heartbeat(W).is_some());
    assert!(ok, "no heartbeat; log:\n{}", w.log_text());
    w
}

/// An agent that prints the description it was given.
fn echo_agent(spool: &Spool) -> PathBuf {
    spool.script("agent.sh", r#"printf '%s' "$desc""#)
}

fn dlq_reasons(spool: &Spool) -> Vec<String> {
    let mut r: Vec<String> = spool
        .dlq_records(W)
        .iter()
        .map(|d| d["dlq_reason"].as_str().unwrap_or("?").to_string())
        .collect();
    r.sort();
    r
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// 1. Folder swaps.

#[test]
fn active_and_deferred_swapped_for_symlinks_lead_nothing_outside_the_spool() {
    let spool = Spool::new();
    let outside = spool.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("t.json"), "precious").unwrap();
    let agent = spool.script("agent.sh", "exit 1");
    // Rare heartbeats: the swap lands between two of the worker's looks.
    let env = [("HEARTBEAT_INTERVAL", "60"), ("MAX_RETRIES", "1")];
    let _w = up(&spool, &agent, &env);
    for folder in [".active", ".deferred"] {
        let path = spool.tasks(W).join(folder);
        fs::rename(&path, spool.tasks(W).join(format!("{folder}-old"))).unwrap();
        symlink(&outside, &path).unwrap();
    }
    spool.drop_simple(W, "t", "x");
    let dead = spool.wait_dlq(W, 1);
    assert_eq!(dead[0]["dlq_reason"], "max_retries_exceeded", "{dead:?}");
    assert_eq!(
        fs::read_to_string(outside.join("t.json")).unwrap(),
        "precious"
    );
    assert_eq!(all_names(&outside), ["t.json"], "written outside the spool");
}

#[test]
fn a_symlinked_results_or_dlq_folder_is_refused_at_start_with_78() {
    for top in ["results", "dlq"] {
        let spool = Spool::new();
        let outside = spool.dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::create_dir_all(spool.root.join(top)).unwrap();
        symlink(&outside, spool.root.join(top).join(W)).unwrap();
        let mut w = Daemon::worker(&spool, W, Path::new("/bin/true"), &[]);
        let status = w.wait_exit(Duration::from_secs(10));
        let log = w.log_text();
        assert_eq!(status.and_then(|s| s.code()), Some(78), "{top}: {log}");
        assert!(
            log.contains("refusing") && log.contains(top),
            "{top}: {log}"
        );
        assert!(all_names(&outside).is_empty(), "{top}: wrote outside");
    }
}

// 2. Long names.

#[test]
fn a_failing_task_with_a_250_byte_file_name_is_retried_then_dead_lettered() {
    let spool = Spool::new();
    let agent = spool.script("agent.sh", "exit 1");
    let _w = up(&spool, &agent, &[("MAX_RETRIES", "1")]);
    let name = format!("{}.json", "n".repeat(245));
    let staged = spool.dir.path().join("long.json");
    fs::write(
        &staged,
        json!({"task_id": "long", "description": "x"}).to_string(),
    )
    .unwrap();
    fs::rename(&staged, spool.tasks(W).join(&name)).unwrap();
    let r = spool.wait_result(W, "long");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(dlq_reasons(&spool), ["max_retries_exceeded"]);
    // The slot is free again.
    spool.drop_simple(W, "next", "x");
    assert_eq!(spool.wait_result(W, "next")["status"], "failed");
}

// 3. Files the worker may not read.

/// `hw-worker W` as uid/gid 65534 (nobody), through setpriv.
fn worker_as_nobody(spool: &Spool, agent: &Path) -> Daemon {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin("hw-worker"))
        .arg(W)
        .envs(base_env(spool))
        .env("CLAUDE_COMMAND", agent);
    let w = Daemon::spawn(spool, "worker", cmd);
    let ok = wait_until(DEADLINE, || spool.heartbeat(W).is_some());
    assert!(ok, "no heartbeat; log:\n{}", w.log_text());
    w
}

/// A spool that nobody (65534) owns, under a temporary folder it may
/// enter; returns the agent.
fn spool_for_nobody(spool: &Spool) -> PathBuf {
    fs::set_permissions(spool.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for top in ["tasks", "results", "dlq", "heartbeats"] {
        fs::create_dir_all(spool.root.join(top)).unwrap();
    }
    fs::create_dir_all(spool.tasks(W)).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&spool.root)
        .status()
        .unwrap();
    assert!(chown.success());
    echo_agent(spool)
}

/// Another user's (uid 1) 0600 task file in W's tasks folder.
fn drop_foreign_secret(spool: &Spool) {
    let path = spool.tasks(W).join("secret.json");
    fs::write(
        &path,
        json!({"task_id": "secret", "description": "x"}).to_string(),
    )
    .unwrap();
    std::os::unix::fs::chown(&path, Some(1), Some(1)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn another_users_unreadable_file_is_moved_aside_and_the_rest_run() {
    if !is_root() {
        eprintln!("skipped: needs root to make another user's file and drop privileges");
        return;
    }
    let spool = Spool::new();
    let agent = spool_for_nobody(&spool);
    drop_foreign_secret(&spool);
    let w = worker_as_nobody(&spool, &agent);
    spool.drop_simple(W, "ok", "fine");
    assert_eq!(spool.wait_result(W, "ok")["stdout"], "fine");
    let dead = spool.wait_dlq(W, 1);
    assert_eq!(dead[0]["dlq_reason"], "unreadable", "{dead:?}");
    assert!(spool.dlq(W).join(".rejected/secret.json").exists());
    let log = w.log_text();
    assert!(
        log.contains("secret.json") && log.contains("owner uid 1"),
        "{log}"
    );
}

#[test]
fn an_unmovable_unreadable_file_in_a_shared_sticky_folder_is_set_aside_and_shown() {
    if !is_root() {
        eprintln!("skipped: needs root to make another user's file and drop privileges");
        return;
    }
    let spool = Spool::new();
    let agent = spool_for_nobody(&spool);
    // A shared folder: root's, sticky, writable by all.
    std::os::unix::fs::chown(spool.tasks(W), Some(0), Some(0)).unwrap();
    fs::set_permissions(spool.tasks(W), fs::Permissions::from_mode(0o1777)).unwrap();
    drop_foreign_secret(&spool);
    let w = worker_as_nobody(&spool, &agent);
    for i in 0..5 {
        // nobody's own tasks, which it may move out of the sticky folder.
        let staged = spool.dir.path().join(format!("ok{i}.json"));
        fs::write(
            &staged,
            json!({"task_id": format!("ok{i}"), "description": "fine"}).to_string(),
        )
        .unwrap();
        std::os::unix::fs::chown(&staged, Some(65534), Some(65534)).unwrap();
        fs::rename(&staged, spool.tasks(W).join(format!("ok{i}.json"))).unwrap();
    }
    for i in 0..5 {
        assert_eq!(
            spool.wait_result(W, &format!("ok{i}"))["status"],
            "completed"
        );
    }
    let shown = wait_until(DEADLINE, || {
        spool.heartbeat(W).is_some_and(|b| {
            b["unclaimable"][0]["file"] == "secret.json" && b["unclaimable"][0]["owner_uid"] == 1
        })
    });
    assert!(shown, "heartbeat: {:?}", spool.heartbeat(W));
    let status = run_tool(&spool, "hw-status", &["-w", W], &[]);
    assert_exit(&status, 1);
    assert!(
        stdout(&status).contains("marie: cannot claim secret.json (Permission denied"),
        "{}",
        stdout(&status)
    );
    assert!(spool.tasks(W).join("secret.json").exists(), "nothing lost");
    let log = w.log_text();
    assert_eq!(
        log.matches("Cannot claim secret.json").count(),
        1,
        "reported once: {log}"
    );
}

// 4. Bounded reads.

/// VmHWM, the peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A sparse 150 MiB task file in `folder` of W's tasks folder before the
/// worker starts is moved aside unread: `task_too_large`, memory small.
fn assert_huge_file_moved_aside_unread(folder: &str) {
    let spool = Spool::new();
    let dir = spool.tasks(W).join(folder);
    fs::create_dir_all(&dir).unwrap();
    File::create(dir.join("huge.json"))
        .unwrap()
        .set_len(150 << 20)
        .unwrap();
    let w = up(&spool, &echo_agent(&spool), &[]);
    let dead = spool.wait_dlq(W, 1);
    // Not the record itself: one that held the file would be 150 MiB.
    let reason = &dead[0]["dlq_reason"];
    assert_eq!(
        reason, "task_too_large",
        "{folder}: dead-lettered as {reason}"
    );
    assert!(spool.dlq(W).join(".rejected/huge.json").exists());
    let peak = peak_rss(w.pid());
    eprintln!("{folder}: worker peak RSS {} KiB", peak / 1024);
    assert!(peak < 64 << 20, "{folder}: peak RSS {peak} bytes");
}

#[test]
fn a_sparse_150_mib_file_in_active_is_moved_aside_unread() {
    assert_huge_file_moved_aside_unread(".active");
}

#[test]
fn a_sparse_150_mib_file_in_deferred_is_moved_aside_unread() {
    assert_huge_file_moved_aside_unread(".deferred");
}

// 5. Dependencies.

#[test]
fn a_task_depending_on_itself_is_dead_lettered_dependency_failed() {
    let spool = Spool::new();
    let _w = up(&spool, &echo_agent(&spool), &[]);
    let task = json!({"task_id": "me", "description": "x", "dependencies": ["me"]});
    spool.drop_task(W, "me.json", &task);
    let dead = spool.wait_dlq(W, 1);
    assert_eq!(dead[0]["dlq_reason"], "dependency_failed", "{dead:?}");
    assert_eq!(dead[0]["last_error"], "depends on itself");
}

#[test]
fn tasks_waiting_for_each_other_are_dead_lettered_dependency_failed() {
    let spool = Spool::new();
    let _w = up(&spool, &echo_agent(&spool), &[]);
    let a = json!({"task_id": "a", "description": "x", "dependencies": ["b"]});
    spool.drop_task(W, "a.json", &a);
    let waits = wait_until(DEADLINE, || spool.deferred(W).join("a.json").exists());
    assert!(waits, "a did not wait for b");
    let b = json!({"task_id": "b", "description": "x", "dependencies": ["a"]});
    spool.drop_task(W, "b.json", &b);
    let dead = spool.wait_dlq(W, 2);
    assert_eq!(
        dlq_reasons(&spool),
        ["dependency_failed", "dependency_failed"]
    );
    let errors: Vec<&str> = dead
        .iter()
        .filter_map(|d| d["last_error"].as_str())
        .collect();
    assert!(
        errors.contains(&"dependency cycle b -> a -> b"),
        "{errors:?}"
    );
}

#[test]
fn a_task_with_50000_missing_dependencies_beside_2000_dead_letters_holds_up_no_one() {
    let spool = Spool::new();
    let old = spool.dlq("anga");
    fs::create_dir_all(&old).unwrap();
    for i in 0..2000 {
        fs::write(old.join(format!("old{i}_1700000000.json")), "{}").unwrap();
    }
    let _w = up(&spool, &echo_agent(&spool), &[]);
    let deps: Vec<String> = (0..50_000).map(|i| format!("d{i}")).collect();
    let heavy = json!({"task_id": "heavy", "description": "x", "dependencies": deps});
    spool.drop_task(W, "heavy.json", &heavy);
    let waits = wait_until(DEADLINE, || spool.deferred(W).join("heavy.json").exists());
    assert!(waits, "heavy did not wait");
    let started = Instant::now();
    for i in 0..100 {
        spool.drop_simple(W, &format!("n{i}"), "x");
    }
    for i in 0..100 {
        assert_eq!(
            spool.wait_result(W, &format!("n{i}"))["status"],
            "completed"
        );
    }
    eprintln!(
        "100 tasks beside the 50,000-dependency task: {:?}",
        started.elapsed()
    );
    assert!(
        spool.deferred(W).join("heavy.json").exists(),
        "heavy still waits"
    );
    assert!(spool.dlq_records(W).is_empty());
}

// 6. Stranded tasks.

#[test]
fn a_task_whose_lock_is_held_at_pickup_runs_once_the_lock_is_let_go() {
    let spool = Spool::new();
    let w = up(&spool, &echo_agent(&spool), &[]);
    let staged = spool.dir.path().join("held.json");
    fs::write(
        &staged,
        json!({"task_id": "held", "description": "x"}).to_string(),
    )
    .unwrap();
    let lock = Flock::lock(File::open(&staged).unwrap(), FlockArg::LockExclusive).unwrap();
    fs::rename(&staged, spool.tasks(W).join("held.json")).unwrap();
    assert!(
        w.wait_log("another process holds its lock"),
        "{}",
        w.log_text()
    );
    drop(lock);
    assert_eq!(spool.wait_result(W, "held")["status"], "completed");
}

#[test]
fn a_task_linked_in_by_link2_runs_without_a_restart() {
    let spool = Spool::new();
    let _w = up(&spool, &echo_agent(&spool), &[]);
    // Maildir's way: write elsewhere, link into place, remove the first name.
    let staged = spool.dir.path().join("linked.json");
    fs::write(
        &staged,
        json!({"task_id": "linked", "description": "x"}).to_string(),
    )
    .unwrap();
    fs::hard_link(&staged, spool.tasks(W).join("linked.json")).unwrap();
    fs::remove_file(&staged).unwrap();
    assert_eq!(spool.wait_result(W, "linked")["status"], "completed");
}

// 7. One result per task id.

#[test]
fn a_reused_task_id_is_dead_lettered_and_only_a_replay_replaces_the_result() {
    let spool = Spool::new();
    let _w = up(&spool, &echo_agent(&spool), &[]);
    spool.drop_simple(W, "t1", "first");
    assert_eq!(spool.wait_result(W, "t1")["stdout"], "first");
    let result = spool.results(W).join("t1.json");
    let before = fs::read(&result).unwrap();
    spool.drop_simple(W, "t1", "second");
    let dead = spool.wait_dlq(W, 1);
    assert_eq!(dead[0]["dlq_reason"], "duplicate_task_id", "{dead:?}");
    assert_eq!(
        fs::read(&result).unwrap(),
        before,
        "the result was replaced"
    );
    // The dead letter is published before the task leaves .active/ (never
    // in no place); until it has left, a replay is refused as active.
    assert!(wait_until(DEADLINE, || spool
        .names(&spool.active(W))
        .is_empty()));
    let out = run_tool(&spool, "hw-dlq", &["replay", W, "t1"], &[]);
    assert_exit(&out, 0);
    let replaced = wait_until(DEADLINE, || {
        spool
            .result(W, "t1")
            .is_some_and(|r| r["stdout"] == "second")
    });
    assert!(
        replaced,
        "the replay did not run: {:?}",
        spool.result(W, "t1")
    );
}

// 8. The smaller ones.

#[test]
fn agents_do_not_inherit_the_workers_stray_descriptors() {
    let spool = Spool::new();
    let marker = spool.dir.path().join("stray-marker");
    fs::write(&marker, "x").unwrap();
    // Opened without close-on-exec: the worker inherits it, as from a
    // careless parent.
    let fd = nix::fcntl::open(
        &marker,
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let agent = spool.script("agent.sh", "ls -l /proc/$$/fd/");
    let w = up(&spool, &agent, &[]);
    let _ = nix::unistd::close(fd);
    spool.drop_simple(W, "fds", "x");
    let r = spool.wait_result(W, "fds");
    let fds = r["stdout"].as_str().unwrap();
    assert!(!fds.contains("stray-marker"), "inherited: {fds}");
    let worker_fds = fs::read_dir(format!("/proc/{}/fd", w.pid())).unwrap();
    let worker_has_it = worker_fds
        .flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|p| p == marker));
    assert!(
        worker_has_it,
        "the test did not hand the worker a stray descriptor"
    );
}

#[test]
fn temporary_files_a_dead_process_left_are_removed_at_start() {
    let spool = Spool::new();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let tag: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let dead = format!(".hw-{tag}.{dead_pid}.1.tmp");
    let live = format!(".hw-{tag}.{}.1.tmp", std::process::id());
    let folders = [spool.tasks(W), spool.results(W), spool.dlq(W)];
    for dir in &folders {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(&dead), "{").unwrap();
    }
    fs::write(spool.tasks(W).join(&live), "{").unwrap();
    let _w = up(&spool, &echo_agent(&spool), &[]);
    let cleaned = wait_until(DEADLINE, || folders.iter().all(|d| !d.join(&dead).exists()));
    assert!(
        cleaned,
        "left: {:?}",
        folders.iter().map(|d| all_names(d)).collect::<Vec<_>>()
    );
    assert!(
        spool.tasks(W).join(&live).exists(),
        "a live process's file was removed"
    );
}

#[test]
fn an_input_line_longer_than_the_task_limit_is_refused_without_reading_it_whole() {
    let spool = Spool::new();
    fs::create_dir_all(spool.tasks(W)).unwrap();
    // 1.5 GB could not fit under 512 MB of address space.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 524288; exec \"$0\" -q marie")
        .arg(bin("hw-enqueue"))
        .envs(base_env(&spool))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..1500 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let status = wait_child(&mut child, DEADLINE).expect("hw-enqueue hung");
    feeder.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(65), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("line 1") && err.contains("longer than"),
        "{err}"
    );
    assert!(spool.names(&spool.tasks(W)).is_empty());
}

#[test]
fn hooks_pending_when_the_listener_is_killed_run_after_its_restart() {
    let spool = Spool::new();
    let ran = spool.dir.path().join("ran");
    let gate = spool.dir.path().join("gate");
    fs::write(&gate, "").unwrap();
    let hook = spool.script(
        "hook.sh",
        &format!(
            "basename \"$HW_TRIGGER_FILE\" >> '{ran}'\nwhile [ -e '{gate}' ]; do sleep 0.05; done",
            ran = ran.display(),
            gate = gate.display()
        ),
    );
    let hook = hook.display().to_string();
    let mut listener = Daemon::spawn(
        &spool,
        "listen",
        listener_command(&spool, &["--exec", &hook], &[]),
    );
    for id in ["h1", "h2", "h3"] {
        let record = json!({"task_id": id, "worker": W, "status": "completed",
            "exit_code": 0, "stdout": "", "stderr": "", "duration_seconds": 1.0,
            "timestamp": rfc3339(std::time::SystemTime::now()), "retry_count": 0});
        place(&spool.results(W), &format!("{id}.json"), &record);
    }
    let triggers = spool.root.join("triggers/orchestrator");
    let emitted = wait_until(DEADLINE, || {
        spool
            .names(&triggers)
            .iter()
            .filter(|n| n.starts_with("task_completed"))
            .count()
            == 3
    });
    assert!(
        emitted,
        "events: {:?}; log:\n{}",
        spool.names(&triggers),
        listener.log_text()
    );
    assert!(wait_until(DEADLINE, || ran.exists()), "no hook ran");
    listener.crash();
    fs::remove_file(&gate).unwrap();
    let _again = Daemon::spawn(
        &spool,
        "listen2",
        listener_command(&spool, &["--exec", &hook], &[]),
    );
    // The hook also runs for other events (a worker_disconnected, when the
    // listener looks before the spool has a heartbeat): the three results'
    // hooks are what this test follows.
    let all_ran = wait_until(DEADLINE, || {
        let lines = fs::read_to_string(&ran).unwrap_or_default();
        let mut seen: Vec<&str> = lines
            .lines()
            .filter(|l| l.starts_with("task_completed"))
            .collect();
        seen.sort();
        seen.dedup();
        seen.len() == 3
    });
    assert!(all_ran, "hooks that ran: {:?}", fs::read_to_string(&ran));
    let events: Vec<String> = spool
        .names(&triggers)
        .into_iter()
        .filter(|n| n.starts_with("task_completed"))
        .collect();
    assert_eq!(events.len(), 3, "an event was emitted twice: {events:?}");
}
