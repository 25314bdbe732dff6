//! The worker's counters, shared between the dispatcher, the pool and the
//! heartbeat without locks.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Tasks that reached a terminal result (completed or failed).
    pub processed: AtomicU64,
    /// Tasks whose final result is failed.
    pub failed: AtomicU64,
    /// Failed attempts that were scheduled for a retry.
    pub retried: AtomicU64,
    /// Dead letters written.
    pub dlq: AtomicU64,
    pub queue_size: AtomicU64,
    pub active: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Ordering::Relaxed);
    }
}
