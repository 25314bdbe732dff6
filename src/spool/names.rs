//! Every name the spool uses, formatted and parsed here and nowhere else
//! (hookwatch(5), FILES): which words may become part of a path, a task
//! file `<name>.json`, a result `<task_id>.json`, a heartbeat
//! `<worker>.json` or `<worker>@<instance>.json`, a receipt `<task_id>.trigger`, a dead letter or a
//! listener event `<stem>_<time>[-N].json`, a `.rejected/` entry, and the
//! dot-files that stage a write (`.<name>.<pid>.<n>.tmp`, hw-enqueue's
//! `.<id>.<pid>.enqueue.tmp`), which every reader ignores.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// The listener's folder under the triggers folder; no worker may be
/// named so.
pub const ORCHESTRATOR: &str = "orchestrator";
/// Claimed tasks, in the worker's tasks folder.
pub const ACTIVE: &str = ".active";
/// Tasks waiting for a retry or their dependencies.
pub const DEFERRED: &str = ".deferred";
/// Finished task files kept to be written again, in the worker's tasks
/// folder.
pub const SPARE: &str = ".spare";
/// Entries moved aside, in the worker's dead-letter folder.
pub const REJECTED: &str = ".rejected";

const JSON: &str = ".json";

/// Worker names and task ids: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
/// Nothing else ever becomes part of a path.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A worker name: a valid name that is not the listener's folder.
pub fn valid_worker_name(s: &str) -> bool {
    valid_name(s) && s != ORCHESTRATOR
}

/// A pending task's file name: `*.json`, not a dot-file (staging files are
/// dot-files and are ignored); any other bytes, since a name that is not
/// UTF-8 is still a task file, to be judged.
pub fn is_task_file(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.len() > JSON.len() && !b.starts_with(b".") && b.ends_with(JSON.as_bytes())
}

/// `<id>.json`: the file of a task hookwatch writes (hw-enqueue, a
/// replay), and the name of its result.
pub fn task_file(id: &str) -> String {
    format!("{id}{JSON}")
}

/// hw-dlq's request to stop the running task `id`: `.cancel.<id>` in the
/// tasks folder (a dot-file, so no producer's protocol sees it as a task).
pub fn cancel_request(id: &str) -> String {
    format!(".cancel.{id}")
}

/// The task id of a cancel request's file name.
pub fn cancel_request_id(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(".cancel.")
        .filter(|id| valid_name(id))
}

/// `NAME` of any `NAME.json`.
pub fn json_stem(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(JSON)
}

/// The task id of a result's file name `<id>.json`.
pub fn result_id(file_name: &str) -> Option<&str> {
    json_stem(file_name).filter(|id| valid_name(id))
}

/// `<worker>.json` in the heartbeats folder: the worker name's heartbeat
/// as the Python system named it, rewritten by whichever instance beat
/// last (kept for the readers of that name).
pub fn heartbeat_file(worker: &str) -> String {
    format!("{worker}{JSON}")
}

/// `<worker>@<instance>.json`: the heartbeat of one worker process.
pub fn instance_heartbeat_file(worker: &str, instance: &str) -> String {
    format!("{worker}@{instance}{JSON}")
}

/// `.<worker>@<instance>.lock`: held (flock) by the live process of that
/// instance, for as long as it runs.
pub fn instance_lock(worker: &str, instance: &str) -> String {
    format!(".{worker}@{instance}.lock")
}

/// The instance name of the `slot`-th worker process of one name on
/// host `hostname`: its host tag (`host_tag`, no dots), then `.<slot>`
/// from the second on.
pub fn instance_name(hostname: &str, slot: u32) -> String {
    match slot {
        0 | 1 => host_tag(hostname),
        n => format!("{}.{n}", host_tag(hostname)),
    }
}

/// The worker a heartbeat's file name belongs to, `<worker>.json` or
/// `<worker>@<instance>.json`.
pub fn heartbeat_worker(file_name: &str) -> Option<&str> {
    match heartbeat_instance(file_name) {
        Some((worker, _)) => Some(worker),
        None => json_stem(file_name).filter(|w| valid_worker_name(w)),
    }
}

/// The worker and instance of `<worker>@<instance>.json`; `None` for
/// any other name, the worker name's own `<worker>.json` included.
pub fn heartbeat_instance(file_name: &str) -> Option<(&str, &str)> {
    let (worker, instance) = json_stem(file_name)?.split_once('@')?;
    (valid_worker_name(worker) && valid_name(instance)).then_some((worker, instance))
}

/// `<id>.trigger`: the receipt written at claim.
pub fn trigger_file(id: &str) -> String {
    format!("{id}.trigger")
}

/// A name `<stem>_<time>[-n].json`: a dead letter (`time` in Unix
/// seconds) or a listener event (`time` in Unix milliseconds); `-n`
/// numbers a clash within one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered<'a> {
    pub stem: &'a str,
    pub time: u64,
    /// 1, or the `-n` that a name clash added.
    pub n: u32,
}

impl<'a> Numbered<'a> {
    pub fn new(stem: &'a str, time: u64, n: u32) -> Numbered<'a> {
        Numbered { stem, time, n }
    }

    pub fn format(&self) -> String {
        let Numbered { stem, time, n } = self;
        match n {
            0 | 1 => format!("{stem}_{time}{JSON}"),
            n => format!("{stem}_{time}-{n}{JSON}"),
        }
    }

    /// Takes a name apart; `None` for any other name.
    pub fn parse(file_name: &'a str) -> Option<Numbered<'a>> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        let base = file_name.strip_suffix(JSON)?;
        let (stem, when) = base.rsplit_once('_')?;
        let (time, n) = match when.split_once('-') {
            Some((time, n)) if digits(n) => (time, n.parse().ok().filter(|&n| n >= 2)?),
            Some(_) => return None,
            None => (when, 1),
        };
        if stem.is_empty() || file_name.starts_with('.') || !digits(time) {
            return None;
        }
        Some(Numbered {
            stem,
            time: time.parse().ok()?,
            n,
        })
    }
}

/// The task id of a dead letter's file name `<id>_<unix>[-n].json`.
pub fn dead_letter_id(file_name: &str) -> Option<&str> {
    Numbered::parse(file_name)
        .map(|d| d.stem)
        .filter(|stem| valid_name(stem))
}

/// The stem of a file name, made safe to be part of a dead letter's name:
/// anything outside the name alphabet becomes `_`, and it is cut to fit.
pub fn safe_stem(file_name: &str) -> String {
    let stem = json_stem(file_name).unwrap_or(file_name);
    let mut out: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 'x');
    }
    out
}

/// `rejected_path` as a dead letter records it: `.rejected/NAME`,
/// relative to the worker's dead-letter folder.
pub fn rejected_path(name: &str) -> String {
    format!("{REJECTED}/{name}")
}

/// The entry name a `rejected_path` names, when it is exactly
/// `.rejected/NAME`: nothing outside `.rejected/` (no `..`, no deeper
/// `/`) is ever reached through it.
pub fn rejected_entry(rejected_path: &str) -> Option<&str> {
    let name = rejected_path.strip_prefix(REJECTED)?.strip_prefix('/')?;
    let fine = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    fine.then_some(name)
}

/// The dot-file that stages a write: `.hw-<host>.<pid>.<n>.tmp`. It does
/// not depend on the target's name, so it is never too long, and it says
/// which process of which host wrote it, so a crash's leftovers can be
/// told from another host's write in progress.
pub fn staged(host: &str, pid: u32, n: u64) -> String {
    format!(".hw-{host}.{pid}.{n}.tmp")
}

/// A spare file in `.spare/`: `<host>.<pid>.<n>`, unique on a spool
/// that several hosts share.
pub fn spare(host: &str, pid: u32, n: u64) -> String {
    format!("{host}.{pid}.{n}")
}

/// A host name as it goes into a staged name: `[A-Za-z0-9-]`, at most 32.
pub fn host_tag(hostname: &str) -> String {
    let tag: String = hostname
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
    if tag.is_empty() {
        "host".into()
    } else {
        tag
    }
}

/// hw-enqueue's staging file for task `id`: `.<id>.<pid>.enqueue.tmp`.
pub fn enqueue_staged(id: &str, pid: u32) -> String {
    format!(".{id}.{pid}.enqueue.tmp")
}

/// Who wrote a staging file of ours: the host tag when the name says it,
/// and the pid. `None` for any other name (a producer's own dot-file).
pub fn temp_owner(name: &str) -> Option<(Option<&str>, u32)> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = rest.rsplitn(3, '.');
    let (last, pid, first) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !(digits(last) || last == "enqueue") || !digits(pid) || first.is_empty() {
        return None;
    }
    let host = first.strip_prefix("hw-").filter(|_| digits(last));
    Some((host, pid.parse().ok()?))
}

/// A staging file of ours (`staged`, `enqueue_staged`, or the older
/// `.<target>.<pid>.<n>.tmp`), not a producer's own dot-file.
pub fn is_our_temp(name: &str) -> bool {
    temp_owner(name).is_some()
}

/// The task file beside which the Python watcher held its lock
/// `<name>.json.lock` while it ran the task (hw-worker removes the locks
/// it left behind); `None` for any other name.
pub fn python_lock_task(file_name: &str) -> Option<&str> {
    file_name
        .strip_suffix(".lock")
        .filter(|task| is_task_file(OsStr::new(task)))
}

/// The listener's journal beside its state file `NAME`: `.NAME.journal`.
pub fn state_journal(state_file_name: &str) -> String {
    format!(".{state_file_name}.journal")
}

/// The lock beside the state file `NAME`: `.NAME.lock`.
pub fn state_lock(state_file_name: &str) -> String {
    format!(".{state_file_name}.lock")
}

/// Where a Python watcher's state file `NAME` is kept once hw-listen has
/// imported it: `NAME.python-<unix>` beside it (not a dot-file: it is
/// the operator's, for a roll-back).
pub fn state_python_copy(state_file_name: &str, unix: u64) -> String {
    format!("{state_file_name}.python-{unix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(valid_name("marie"));
        assert!(valid_name("task-001.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".."));
        assert!(!valid_name(&"a".repeat(129)));
        assert!(valid_name(&"a".repeat(128)));
        assert!(!valid_worker_name(ORCHESTRATOR));
    }

    #[test]
    fn task_files_are_json_and_not_dot_files() {
        assert!(is_task_file(OsStr::new("a.json")));
        assert!(is_task_file(OsStr::from_bytes(b"\xff.json")));
        assert!(!is_task_file(OsStr::new(".a.json")));
        assert!(!is_task_file(OsStr::new(".json")));
        assert!(!is_task_file(OsStr::new("a.json.tmp")));
    }

    #[test]
    fn results_heartbeats_and_triggers_round_trip() {
        assert_eq!(result_id(&task_file("t-1")), Some("t-1"));
        assert_eq!(result_id(".t.json"), None);
        assert_eq!(heartbeat_worker(&heartbeat_file("marie")), Some("marie"));
        assert_eq!(heartbeat_worker("orchestrator.json"), None);
        let file = instance_heartbeat_file("marie", &instance_name("node1.example", 2));
        assert_eq!(file, "marie@node1_example.2.json");
        assert_eq!(heartbeat_worker(&file), Some("marie"));
        assert_eq!(
            heartbeat_instance(&file),
            Some(("marie", "node1_example.2"))
        );
        assert_eq!(heartbeat_instance(&heartbeat_file("marie")), None);
        assert_eq!(heartbeat_instance("marie@.json"), None);
        assert_eq!(heartbeat_instance("marie@a/b.json"), None);
        assert_eq!(instance_lock("marie", "h"), ".marie@h.lock");
        assert_eq!(trigger_file("t-1"), "t-1.trigger");
    }

    #[test]
    fn python_locks_name_their_task_file() {
        assert_eq!(python_lock_task("t-1.json.lock"), Some("t-1.json"));
        assert_eq!(python_lock_task("t-1.json"), None);
        assert_eq!(python_lock_task(".t-1.json.lock"), None);
        assert_eq!(python_lock_task(".json.lock"), None);
        assert_eq!(python_lock_task("t-1.lock"), None);
    }

    #[test]
    fn state_file_companions() {
        assert_eq!(state_journal("s.json"), ".s.json.journal");
        assert_eq!(state_lock("s.json"), ".s.json.lock");
        assert_eq!(
            state_python_copy("orchestrator_state.json", 1_796_378_438),
            "orchestrator_state.json.python-1796378438"
        );
    }

    #[test]
    fn numbered_names_round_trip() {
        for (stem, time, n) in [
            ("t", 17, 1),
            ("a_b", 17, 3),
            ("task_completed", 1_700_000_000_123, 2),
        ] {
            let name = Numbered::new(stem, time, n).format();
            assert_eq!(
                Numbered::parse(&name),
                Some(Numbered::new(stem, time, n)),
                "{name}"
            );
        }
        assert_eq!(Numbered::new("t", 17, 1).format(), "t_17.json");
        assert_eq!(Numbered::new("t", 17, 2).format(), "t_17-2.json");
    }

    #[test]
    fn other_names_are_not_numbered() {
        for bad in [
            "t_17-1.json",
            "t_x.json",
            "_17.json",
            ".t_17.json",
            "t_17.txt",
            "t.json",
        ] {
            assert_eq!(Numbered::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn dead_letter_ids() {
        assert_eq!(dead_letter_id("t-1_1795865691.json"), Some("t-1"));
        assert_eq!(dead_letter_id("a_b_1795865691-2.json"), Some("a_b"));
        assert_eq!(dead_letter_id("t_x.json"), None);
        assert_eq!(dead_letter_id(".t_1.json"), None);
    }

    #[test]
    fn rejected_paths_round_trip_and_stay_in_rejected() {
        assert_eq!(rejected_entry(&rejected_path("x.json")), Some("x.json"));
        for bad in [
            ".rejected/../x",
            ".rejected/..",
            ".rejected/a/b",
            ".rejected/",
            "x.json",
            "/etc/passwd",
            ".rejectedx/y",
        ] {
            assert_eq!(rejected_entry(bad), None, "{bad}");
        }
    }

    #[test]
    fn our_staging_files_say_who_wrote_them_and_no_others_are_ours() {
        let staged = staged(&host_tag("node1.example"), 123, 4);
        assert_eq!(staged, ".hw-node1_example.123.4.tmp");
        assert_eq!(temp_owner(&staged), Some((Some("node1_example"), 123)));
        assert_eq!(temp_owner(&enqueue_staged("t-1", 123)), Some((None, 123)));
        assert_eq!(temp_owner(".a.json.123.4.tmp"), Some((None, 123)));
        assert!(!is_our_temp(".x.tmp"));
        assert!(!is_our_temp("a.json.1.2.tmp"));
        assert!(!is_our_temp(".a.json.x.4.tmp"));
        assert!(staged.len() < 60, "never too long whatever the target");
    }

    #[test]
    fn safe_stems() {
        assert_eq!(safe_stem("ok.json"), "ok");
        assert_eq!(safe_stem(".x y.json"), "x.x_y");
        assert_eq!(safe_stem("é.json"), "x_");
    }

    #[test]
    fn a_cancel_request_names_its_task_and_nothing_else() {
        assert_eq!(cancel_request_id(&cancel_request("t-1")), Some("t-1"));
        assert_eq!(cancel_request_id(".cancel.../x"), None);
        assert_eq!(cancel_request_id(".cancel."), None);
        assert_eq!(cancel_request_id("t-1.json"), None);
    }
}
