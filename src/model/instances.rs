//! Reading a worker's heartbeats (hookwatch(5), Heartbeat): one file per
//! instance, `<worker>@<instance>.json`, and the name's own
//! `<worker>.json`, which the instances rewrite in turn for the readers
//! of the Python system's name. That file counts as an instance of its
//! own when no instance file exists (a spool of an older hookwatch or of
//! the Python watcher), or when it is live and written by a process no
//! instance file names (an older version still running on one host
//! during an upgrade).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use crate::model::heartbeat::{standing, Heartbeat, Standing, STALE_INTERVALS};
use crate::spool::names::{heartbeat_file, heartbeat_instance};
use crate::spool::{read_regular, Spool};

/// The most a heartbeat may weigh.
pub const HEARTBEAT_MAX: u64 = 1 << 20;

/// One instance's heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceBeat {
    /// `<instance>` of `<worker>@<instance>.json`; `None` for the name's
    /// own file written by a process that writes no instance file.
    pub instance: Option<String>,
    /// Its file name in the heartbeats folder.
    pub file: String,
    pub beat: Heartbeat,
}

impl InstanceBeat {
    /// How it is named to a person: `<worker>@<instance>`, or the file.
    pub fn label(&self, worker: &str) -> String {
        match &self.instance {
            Some(i) => format!("{worker}@{i}"),
            None => self.file.clone(),
        }
    }
}

/// A heartbeat that cannot be read or parsed counts as none.
pub fn read(path: &Path) -> Option<Heartbeat> {
    let bytes = read_regular(path, HEARTBEAT_MAX).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every heartbeat of `worker`, instance files by name, then the name's
/// own file when no instance file speaks for its writer.
pub fn of_worker(spool: &Spool, worker: &str) -> Vec<InstanceBeat> {
    let mut out = Vec::new();
    let mut names: Vec<String> = fs::read_dir(&spool.heartbeats)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort();
    for name in names {
        let Some((w, instance)) = heartbeat_instance(&name) else {
            continue;
        };
        if w != worker {
            continue;
        }
        if let Some(beat) = read(&spool.heartbeats.join(OsStr::new(&name))) {
            out.push(InstanceBeat {
                instance: Some(instance.to_string()),
                file: name.clone(),
                beat,
            });
        }
    }
    let legacy = heartbeat_file(worker);
    if let Some(beat) = read(&spool.heartbeats.join(&legacy)) {
        let known = out
            .iter()
            .any(|i| i.beat.pid == beat.pid && i.beat.hostname == beat.hostname);
        let now = crate::clock::unix_now();
        let stale_after = STALE_INTERVALS * beat.interval().as_secs_f64();
        let live = standing(&beat, now, stale_after) == Standing::Live;
        if out.is_empty() || (!known && live) {
            out.push(InstanceBeat {
                instance: None,
                file: legacy,
                beat,
            });
        }
    }
    out
}
