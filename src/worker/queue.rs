//! The worker's in-memory view of what waits: the pending queue (high
//! before normal before low, oldest first) and the deferred schedule
//! (earliest `not_before` first). Both are rebuilt from the folders by
//! rescans, so they are a cache of the spool, never its truth.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::clock::unix_millis;
use crate::model::task::Priority;

/// How many pending tasks the worker keeps in memory (about 150 bytes
/// each). Beyond that the folder holds the rest, and a rescan brings them
/// in as the queue runs low, so memory stays flat whatever the backlog.
pub const QUEUE_CAP: usize = 8192;

type Entry = (Priority, u128, u64, OsString);

#[derive(Debug)]
pub struct PendingQueue {
    order: BTreeSet<Entry>,
    queued: HashSet<OsString>,
    seq: u64,
    cap: usize,
    /// Task files known to wait in the folder but left out of the queue.
    left_out: usize,
}

impl Default for PendingQueue {
    fn default() -> Self {
        PendingQueue::with_cap(QUEUE_CAP)
    }
}

impl PendingQueue {
    pub fn with_cap(cap: usize) -> Self {
        PendingQueue {
            order: BTreeSet::new(),
            queued: HashSet::new(),
            seq: 0,
            cap: cap.max(1),
            left_out: 0,
        }
    }

    /// Adds a task file by name, unless it is queued already or the queue
    /// is full (then it is counted as left out).
    pub fn push(&mut self, name: OsString, priority: Priority, written: SystemTime) {
        if self.queued.contains(&name) {
            return;
        }
        if self.is_full() {
            self.left_out += 1;
            return;
        }
        self.insert(name, priority, written);
    }

    /// Like `push`, but a full queue makes room for a task that would run
    /// before its last entry: a new urgent task is not stuck behind a
    /// backlog the worker has not looked at yet.
    pub fn push_urgent(&mut self, name: OsString, priority: Priority, written: SystemTime) {
        if self.is_full() && !self.queued.contains(&name) {
            let beats_last = self
                .order
                .last()
                .is_some_and(|(p, ns, _, _)| (priority, nanos(written)) < (*p, *ns));
            if !beats_last {
                self.left_out += 1;
                return;
            }
            if let Some((_, _, _, last)) = self.order.pop_last() {
                self.queued.remove(&last);
                self.left_out += 1;
            }
        }
        self.push(name, priority, written);
    }

    fn insert(&mut self, name: OsString, priority: Priority, written: SystemTime) {
        self.seq += 1;
        self.queued.insert(name.clone());
        self.order
            .insert((priority, nanos(written), self.seq, name));
    }

    pub fn pop(&mut self) -> Option<OsString> {
        let (_, _, _, name) = self.order.pop_first()?;
        self.queued.remove(&name);
        Some(name)
    }

    pub fn contains(&self, name: &OsStr) -> bool {
        self.queued.contains(name)
    }

    pub fn is_full(&self) -> bool {
        self.order.len() >= self.cap
    }

    /// Tasks left out while the queue was full, and it has room again:
    /// time to list the folder.
    pub fn wants_rescan(&self) -> bool {
        self.left_out > 0 && self.order.len() <= self.cap / 2
    }

    /// Counts a task left in the folder without a look (the queue is full).
    pub fn leave_out(&mut self) {
        self.left_out += 1;
    }

    /// A rescan is listing the folder afresh: it counts what it leaves out.
    pub fn forget_left_out(&mut self) {
        self.left_out = 0;
    }

    /// Queued tasks.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Queued tasks and those known to wait outside the queue: what the
    /// heartbeat and the metrics report as pending.
    pub fn pending(&self) -> usize {
        self.order.len() + self.left_out
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A deferred task as the schedule knows it.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// Unix seconds.
    pub not_before: f64,
    pub priority: Priority,
    pub dependencies: Vec<String>,
    /// The generation of the dependency index when they were last looked
    /// at: nothing new, no look.
    pub checked: Option<u64>,
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
            .push(Reverse((unix_millis(entry.not_before), name.clone())));
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
        if *ms > unix_millis(now) {
            return None;
        }
        let Reverse((_, name)) = self.heap.pop()?;
        let entry = self.entries.remove(&name)?;
        Some((name, entry))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap entries whose task was rescheduled or removed since.
    fn drop_stale(&mut self) {
        while let Some(Reverse((ms, name))) = self.heap.peek() {
            match self.entries.get(name) {
                Some(e) if unix_millis(e.not_before) == *ms => return,
                _ => {
                    self.heap.pop();
                }
            }
        }
    }
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
    fn a_full_queue_leaves_tasks_out_but_makes_room_for_urgent_ones() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let mut q = PendingQueue::with_cap(2);
        q.push("a.json".into(), Priority::Normal, t(1));
        q.push("b.json".into(), Priority::Normal, t(2));
        q.push("c.json".into(), Priority::Normal, t(3));
        assert_eq!((q.len(), q.pending()), (2, 3));
        q.push_urgent("late.json".into(), Priority::Normal, t(9));
        assert_eq!((q.len(), q.pending()), (2, 4));
        q.push_urgent("high.json".into(), Priority::High, t(9));
        assert_eq!((q.len(), q.pending()), (2, 5));
        assert!(!q.wants_rescan());
        assert_eq!(q.pop().unwrap(), "high.json");
        assert!(q.wants_rescan());
        assert_eq!(q.pop().unwrap(), "a.json");
        q.forget_left_out();
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn deferred_pops_when_due_and_honours_reschedules() {
        let mut d = DeferredSchedule::default();
        let e = |t| Deferred {
            not_before: t,
            priority: Priority::Normal,
            dependencies: vec![],
            checked: None,
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
