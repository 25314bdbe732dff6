//! Spare files (hw-worker(8), Spare files; hookwatch(5), `.spare/`): a
//! finished task's file is written again as a later receipt or result
//! instead of being freed, but only when it is the worker's alone, and
//! what is written is the same as into a new file.
//!
//! A file is told apart from a new one that got the same inode number by
//! its birth time, which a reused inode keeps.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::*;

const W: &str = "anga";
const DEADLINE: Duration = Duration::from_secs(30);

/// A file's inode for good: device, inode number and birth time.
type Identity = (u64, u64, SystemTime);

fn identity(path: &Path) -> Option<Identity> {
    let m = fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.created().ok()?))
}

/// Whether this file system tells birth times; the tests skip without.
fn birth_times(spool: &Spool) -> bool {
    let probe = spool.scratch("probe");
    fs::write(&probe, b"x").unwrap();
    let told = fs::metadata(&probe).and_then(|m| m.created()).is_ok();
    if !told {
        eprintln!("skipped: the temp dir's file system keeps no birth time");
    }
    told
}

fn spare_dir(spool: &Spool) -> PathBuf {
    spool.tasks(W).join(".spare")
}

/// Every receipt and result of the worker.
fn written(spool: &Spool) -> Vec<PathBuf> {
    let mut files = json_files(&spool.results(W));
    let triggers = spool.triggers(W);
    files.extend(all_names(&triggers).into_iter().map(|n| triggers.join(n)));
    files
}

/// Drops `n` tasks `t0`…, then runs a worker over them until every result
/// is in; returns the identities their files had.
fn run_tasks(spool: &Spool, n: usize, prepare: impl Fn(&Path, usize)) -> Vec<Identity> {
    let mut before = Vec::new();
    for i in 0..n {
        spool.drop_simple(W, &format!("t{i}"), &format!("task {i}"));
        let path = spool.tasks(W).join(format!("t{i}.json"));
        prepare(&path, i);
        before.push(identity(&path).unwrap());
    }
    let mut worker = Daemon::start(spool, "hw-worker", &["-c", "1", W], &[]);
    for i in 0..n {
        spool.wait_result(W, &format!("t{i}"));
    }
    assert!(wait_until(DEADLINE, || all_names(&spool.active(W)).is_empty()));
    assert!(worker.stop().success());
    before
}

/// Each receipt and result says what a new file would: its task's id,
/// in a file of the mode a new one gets.
fn assert_all_sound(spool: &Spool, n: usize) {
    for i in 0..n {
        let id = format!("t{i}");
        assert_eq!(spool.result(W, &id).unwrap()["status"], "completed");
        let receipt = read_json(&spool.triggers(W).join(format!("{id}.trigger"))).unwrap();
        assert_eq!(receipt["task_id"], id.as_str());
        assert_eq!(receipt["status"], "received");
    }
    let modes: Vec<u32> = written(spool)
        .iter()
        .map(|p| fs::metadata(p).unwrap().permissions().mode() & 0o7777)
        .collect();
    assert!(
        modes.iter().all(|m| *m == modes[0]),
        "modes differ: {modes:?}"
    );
}

fn reused(spool: &Spool, ids: &[Identity]) -> usize {
    written(spool)
        .iter()
        .filter_map(|p| identity(p))
        .filter(|id| ids.contains(id))
        .count()
}

#[test]
fn a_finished_task_file_is_written_again_as_a_later_receipt_or_result() {
    let spool = Spool::new();
    if !birth_times(&spool) {
        return;
    }
    // The producer's files are 0600; the worker's new ones 0640 less umask.
    // Each is longer than a receipt or a result: what it held must not
    // outlive what is written into it.
    let before = run_tasks(&spool, 8, |path, _| {
        let mut task = read_json(path).unwrap();
        task["description"] = "long ".repeat(600).into();
        fs::write(path, task.to_string()).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap()
    });
    assert_all_sound(&spool, 8);
    let n = reused(&spool, &before);
    assert!(n >= 5, "only {n} of 8 task files were written again");
    assert!(all_names(&spare_dir(&spool)).len() <= 64);
}

#[test]
fn a_task_file_with_a_second_link_is_never_rewritten() {
    let spool = Spool::new();
    if !birth_times(&spool) {
        return;
    }
    let kept = spool.scratch("kept");
    fs::create_dir(&kept).unwrap();
    let before = run_tasks(&spool, 6, |path, i| {
        fs::hard_link(path, kept.join(format!("t{i}.json"))).unwrap()
    });
    assert_all_sound(&spool, 6);
    assert_eq!(reused(&spool, &before), 0);
    for i in 0..6 {
        let task = read_json(&kept.join(format!("t{i}.json"))).unwrap();
        assert_eq!(task["description"], format!("task {i}"));
    }
}

#[test]
fn a_task_file_with_extended_attributes_is_not_reused() {
    let spool = Spool::new();
    if !birth_times(&spool) {
        return;
    }
    let set = |path: &Path| {
        let code = "import os, sys; os.setxattr(sys.argv[1], 'user.origin', b'producer')";
        std::process::Command::new("python3")
            .args(["-c", code])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
    };
    let probe = spool.scratch("xattr-probe");
    fs::write(&probe, b"x").unwrap();
    if !set(&probe) {
        eprintln!("skipped: no user extended attributes here (or no python3)");
        return;
    }
    let before = run_tasks(&spool, 6, |path, _| assert!(set(path)));
    assert_all_sound(&spool, 6);
    assert_eq!(reused(&spool, &before), 0);
}

#[test]
fn a_task_file_of_another_user_is_not_reused() {
    let spool = Spool::new();
    if !birth_times(&spool) {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: giving a file to another user needs root");
        return;
    }
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    let before = run_tasks(&spool, 6, |path, _| {
        nix::unistd::chown(path, nobody, None).unwrap()
    });
    assert_all_sound(&spool, 6);
    assert_eq!(reused(&spool, &before), 0);
}

#[test]
fn spares_left_by_an_earlier_run_are_used_and_at_most_64_are_kept() {
    let spool = Spool::new();
    if !birth_times(&spool) {
        return;
    }
    let spares = spare_dir(&spool);
    fs::create_dir_all(&spares).unwrap();
    let mut planted = Vec::new();
    for i in 0..70 {
        let path = spares.join(format!("old.{i}"));
        fs::write(&path, vec![b'x'; 300]).unwrap();
        planted.push(identity(&path).unwrap());
    }
    let tasks = run_tasks(&spool, 4, |_, _| {});
    assert_all_sound(&spool, 4);
    assert!(reused(&spool, &planted) >= 1);
    let both: Vec<Identity> = planted.into_iter().chain(tasks).collect();
    // The first file into each folder is new: it tells the worker what
    // mode a new file there gets.
    assert_eq!(
        reused(&spool, &both),
        6,
        "every receipt and result but the first"
    );
    assert!(all_names(&spares).len() <= 64);
}

#[test]
fn a_spare_that_is_a_link_a_fifo_a_folder_or_a_second_name_is_never_written_through() {
    let spool = Spool::new();
    let spares = spare_dir(&spool);
    fs::create_dir_all(&spares).unwrap();
    let outside = spool.scratch("outside.txt");
    fs::write(&outside, b"keep me").unwrap();
    std::os::unix::fs::symlink(&outside, spares.join("link")).unwrap();
    let linked = spool.scratch("linked.txt");
    fs::write(&linked, b"keep me too").unwrap();
    fs::hard_link(&linked, spares.join("second-name")).unwrap();
    nix::unistd::mkfifo(
        &spares.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    run_tasks(&spool, 4, |_, _| {});
    assert_all_sound(&spool, 4);
    assert_eq!(fs::read(&outside).unwrap(), b"keep me");
    assert_eq!(fs::read(&linked).unwrap(), b"keep me too");
    for path in written(&spool) {
        assert!(fs::symlink_metadata(&path).unwrap().is_file(), "{path:?}");
    }
}

#[test]
fn results_on_another_file_system_are_written_as_new_files() {
    let spool = Spool::new();
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let elsewhere = tempfile::tempdir_in(shm).unwrap();
    let results = elsewhere.path().display().to_string();
    for i in 0..6 {
        spool.drop_simple(W, &format!("t{i}"), &format!("task {i}"));
    }
    let mut worker = Daemon::start(
        &spool,
        "hw-worker",
        &["-c", "1", W],
        &[("RESULT_DIR", &results)],
    );
    for i in 0..6 {
        let path = elsewhere.path().join(W).join(format!("t{i}.json"));
        assert!(wait_until(DEADLINE, || read_json(&path).is_some()), "t{i}");
        assert_eq!(read_json(&path).unwrap()["task_id"], format!("t{i}"));
    }
    assert!(worker.stop().success());
}
