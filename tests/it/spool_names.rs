//! Names in the spool (hookwatch(5), FILES): a task file keeps its own
//! name through every folder it passes, whatever bytes the name holds.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;

use crate::common::*;

const W: &str = "marie";

/// A retry's deferred copy keeps the exact name of a file whose name is
/// not UTF-8, so its scheduled return to pending finds it at once (not
/// only at the next rescan of `.deferred/`: the heartbeat here is a
/// minute away).
#[test]
fn a_task_whose_file_name_is_not_utf8_is_retried_on_schedule() {
    let spool = Spool::new();
    let log = spool.scratch("attempts");
    let agent = spool.script(
        "agent",
        &format!(
            r#"echo "$HW_ATTEMPT" >> '{}'; [ "$HW_ATTEMPT" -ge 2 ]"#,
            log.display()
        ),
    );
    let dir = spool.tasks(W);
    fs::create_dir_all(&dir).unwrap();
    let task = serde_json::json!({"task_id": "latin1", "description": "d"}).to_string();
    let name = OsStr::from_bytes(b"caf\xe9.json");
    fs::write(dir.join(".staging"), task).unwrap();
    let mut worker = Daemon::worker(
        &spool,
        W,
        &agent,
        &[("HEARTBEAT_INTERVAL", "60"), ("INITIAL_RETRY_DELAY", "0.2")],
    );
    fs::rename(dir.join(".staging"), dir.join(name)).unwrap();
    let result = spool.wait_result(W, "latin1");
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["retry_count"], 1, "{result}");
    assert_eq!(file_lines(&log), ["1", "2"]);
    assert!(all_names(&spool.deferred(W)).is_empty());
    worker.stop();
}
