//! The listener's event (hookwatch(5), Orchestrator files): a JSON line on stdout and the
//! body of a trigger file `triggers/orchestrator/<event>_<ms>.json`
//! (`listen::emit` writes both), `{"event_type", "timestamp", "data"}`.

use serde_json::Value;

use crate::clock;
use crate::model::words;
use crate::spool::publish::json_line;

words! {
    /// What happened: an event's `event_type`.
    pub enum EventKind {
        /// A task has its result (data: task_id, worker, status, …).
        TaskCompleted = "task_completed",
        /// A dead letter was written.
        TaskDeadLettered = "task_dead_lettered",
        /// No terminal record within `COMPLETION_TIMEOUT` of its enqueue.
        TaskTimeout = "task_timeout",
        /// A heartbeat went stale.
        WorkerUnhealthy = "worker_unhealthy",
        /// A stale or disconnected worker's heartbeat is fresh again.
        WorkerRecovered = "worker_recovered",
        /// No heartbeat, a stopped one, or one far too old.
        WorkerDisconnected = "worker_disconnected",
        /// One process of a worker name (an instance: a host, a slot on
        /// it) has a stale heartbeat while another instance lives: it or
        /// its host is gone, hidden behind the healthy name.
        WorkerInstanceLost = "worker_instance_lost",
        /// Every known task of a batch has ended.
        BatchCompleted = "batch_completed",
        /// A worker claims nothing for a while (a usage limit, a login to
        /// mend, the day's budget spent).
        WorkerPaused = "worker_paused",
        /// A paused worker claims again.
        WorkerResumed = "worker_resumed",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub timestamp: String,
    pub data: Value,
}

impl Event {
    pub fn new(kind: EventKind, data: Value) -> Event {
        Event {
            kind,
            timestamp: clock::now_rfc3339(),
            data,
        }
    }

    /// One JSON line, keys in the order hookwatch(5) shows them.
    pub fn to_line(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            event_type: EventKind,
            timestamp: &'a str,
            data: &'a Value,
        }
        json_line(&Line {
            event_type: self.kind,
            timestamp: &self.timestamp,
            data: &self.data,
        })
    }
}
