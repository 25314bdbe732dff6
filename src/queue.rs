//! The worker's in-memory view of what waits: the pending queue (high
//! before normal before low, oldest first) and the deferred schedule
//! (earliest `not_before` first). Both are rebuilt from the folders by
//! rescans, so they are a cache of the spool, never its truth.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::task::Priority;

#[derive(Debug, Default)]
pub struct PendingQueue {
    heap: BinaryHeap<Reverse<(Priority, u128, u64, OsString)>>,
    queued: HashSet<OsString>,
    seq: u64,
}

impl PendingQueue {
    /// Adds a task file by name, unless it is queued already.
    pub fn push(&mut self, name: OsString, priority: Priority, written: SystemTime) {
        if self.queued.insert(name.clone()) {
            let ns = written
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            self.seq += 1;
            self.heap.push(Reverse((priority, ns, self.seq, name)));
        }
    }

    pub fn pop(&mut self) -> Option<OsString> {
        let Reverse((_, _, _, name)) = self.heap.pop()?;
        self.queued.remove(&name);
        Some(name)
    }

    pub fn contains(&self, name: &OsStr) -> bool {
        self.queued.contains(name)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// A deferred task as the schedule knows it.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// Unix seconds.
    pub not_before: f64,
    pub priority: Priority,
    pub dependencies: Vec<String>,
}

#[derive(Debug, Default)]
pub struct DeferredSchedule {
    heap: BinaryHeap<Reverse<(u64, OsString)>>,
    entries: HashMap<OsString, Deferred>,
}

impl DeferredSchedule {
    /// Schedules (or reschedules) a deferred task file.
    pub fn insert(&mut self, name: OsString, entry: Deferred) {
        self.heap
            .push(Reverse((millis(entry.not_before), name.clone())));
        self.entries.insert(name, entry);
    }

    pub fn contains(&self, name: &OsStr) -> bool {
        self.entries.contains_key(name)
    }

    /// Unix seconds of the earliest entry.
    pub fn next_due(&mut self) -> Option<f64> {
        self.drop_stale();
        self.heap.peek().map(|Reverse((ms, _))| *ms as f64 / 1000.0)
    }

    /// The next entry due at `now` (Unix seconds), taken off the schedule.
    pub fn pop_due(&mut self, now: f64) -> Option<(OsString, Deferred)> {
        self.drop_stale();
        let Reverse((ms, _)) = self.heap.peek()?;
        if *ms > millis(now) {
            return None;
        }
        let Reverse((_, name)) = self.heap.pop()?;
        let entry = self.entries.remove(&name)?;
        Some((name, entry))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap entries whose task was rescheduled or removed since.
    fn drop_stale(&mut self) {
        while let Some(Reverse((ms, name))) = self.heap.peek() {
            match self.entries.get(name) {
                Some(e) if millis(e.not_before) == *ms => return,
                _ => {
                    self.heap.pop();
                }
            }
        }
    }
}

fn millis(unix: f64) -> u64 {
    (unix.max(0.0) * 1000.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pending_runs_high_first_then_oldest() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let mut q = PendingQueue::default();
        q.push("low.json".into(), Priority::Low, t(1));
        q.push("new.json".into(), Priority::Normal, t(5));
        q.push("old.json".into(), Priority::Normal, t(2));
        q.push("high.json".into(), Priority::High, t(9));
        q.push("old.json".into(), Priority::Normal, t(2));
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["high.json", "old.json", "new.json", "low.json"]);
    }

    #[test]
    fn deferred_pops_when_due_and_honours_reschedules() {
        let mut d = DeferredSchedule::default();
        let e = |t| Deferred {
            not_before: t,
            priority: Priority::Normal,
            dependencies: vec![],
        };
        d.insert("a".into(), e(10.0));
        d.insert("b".into(), e(5.0));
        d.insert("b".into(), e(20.0));
        assert_eq!(d.next_due(), Some(10.0));
        assert!(d.pop_due(9.0).is_none());
        assert_eq!(d.pop_due(10.0).unwrap().0, "a");
        assert!(d.pop_due(15.0).is_none());
        assert_eq!(d.pop_due(20.0).unwrap().0, "b");
        assert!(d.is_empty());
    }
}
