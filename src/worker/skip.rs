//! Pending files the worker cannot claim for now (hw-worker(8), Tasks):
//! another user's file it may not read, a lock someone else holds. Each is
//! set aside with a back-off of its own and looked at again later, while
//! every other task is claimed as usual: one bad file never stalls the
//! rest. A pure schedule, with time as a parameter.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::clock::Backoff;

/// At most this many are named in the heartbeat.
const SHOWN: usize = 10;

/// A file set aside, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    pub name: OsString,
    pub error: String,
    /// Its owner, when known (another user's file, say).
    pub uid: Option<u32>,
}

#[derive(Debug)]
struct Entry {
    trouble: Trouble,
    retry_at: Instant,
    backoff: Backoff,
    /// Said once in the log (and counted once), not at every look.
    reported: bool,
}

#[derive(Debug, Default)]
pub struct Skipped {
    entries: HashMap<OsString, Entry>,
}

impl Skipped {
    /// Sets `trouble.name` aside until its back-off passes: 100 ms at
    /// first, doubling to 5 minutes while the trouble lasts. True the
    /// first time (to report it).
    pub fn skip(&mut self, trouble: Trouble, now: Instant) -> bool {
        let entry = self
            .entries
            .entry(trouble.name.clone())
            .or_insert_with(|| Entry {
                trouble: trouble.clone(),
                retry_at: now,
                backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(300)),
                reported: false,
            });
        entry.trouble = trouble;
        entry.retry_at = now + entry.backoff.take();
        !std::mem::replace(&mut entry.reported, true)
    }

    /// The names whose time to be looked at again has come. They stay set
    /// aside until `clear`; one that is not looked at after all (the
    /// queue is held up) comes due again a back-off later.
    pub fn due(&mut self, now: Instant) -> Vec<OsString> {
        let mut due = Vec::new();
        for (name, e) in &mut self.entries {
            if e.retry_at <= now {
                e.retry_at = now + e.backoff.peek();
                due.push(name.clone());
            }
        }
        due
    }

    /// Forgets the files no longer in the folder (`names`, a listing).
    pub fn keep_only(&mut self, names: &[OsString]) {
        let present: std::collections::HashSet<&OsString> = names.iter().collect();
        self.entries.retain(|n, _| present.contains(n));
    }

    pub fn contains(&self, name: &OsString) -> bool {
        self.entries.contains_key(name)
    }

    /// The file was claimed, or is gone: its trouble is over.
    pub fn clear(&mut self, name: &OsString) {
        self.entries.remove(name);
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.retry_at).min()
    }

    /// The first few, by name, for the heartbeat.
    pub fn shown(&self) -> Vec<Trouble> {
        let mut all: Vec<&Trouble> = self.entries.values().map(|e| &e.trouble).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter().take(SHOWN).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trouble(name: &str) -> Trouble {
        Trouble {
            name: name.into(),
            error: "Permission denied".into(),
            uid: Some(1001),
        }
    }

    #[test]
    fn a_file_set_aside_comes_back_later_and_later() {
        let mut s = Skipped::default();
        let t0 = Instant::now();
        assert!(s.skip(trouble("a.json"), t0), "reported the first time");
        assert!(s.due(t0).is_empty());
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(s.due(t1), ["a.json"]);
        assert!(!s.skip(trouble("a.json"), t1), "reported once");
        assert!(s.due(t1 + Duration::from_millis(199)).is_empty());
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(s.due(t2).len(), 1);
        assert!(
            s.due(t2).is_empty(),
            "not due again at once when not claimed"
        );
        s.keep_only(&["b.json".into()]);
        assert!(s.shown().is_empty(), "a.json left the folder");
    }
}
