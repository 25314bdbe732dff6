//! Cancelling a running task (hw-dlq(1), `cancel`): hw-dlq leaves a
//! request, `tasks/<worker>/.cancel.<id>`, which the worker sees as it
//! sees a task (inotify, or the rescan) and removes. The task's pool
//! thread holds a latch by its id while the agent runs; the request fires
//! it, and the agent is stopped as a timeout stops it. A request for a
//! task not running yet (claimed, its thread not started) is kept a
//! minute, so that the run it was meant for is stopped as it starts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::latch::Latch;

/// How long a request for a task not running is kept.
const KEPT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Latch>,
    requested: HashMap<String, Instant>,
}

impl Cancels {
    /// A task's run starts: its latch, fired already when a request came
    /// first.
    pub fn register(&self, id: &str) -> std::io::Result<Latch> {
        let latch = Latch::new()?;
        let mut inner = self.lock();
        if inner
            .requested
            .remove(id)
            .is_some_and(|at| at.elapsed() < KEPT)
        {
            latch.fire();
        }
        inner.running.insert(id.to_string(), latch.clone());
        Ok(latch)
    }

    pub fn unregister(&self, id: &str) {
        self.lock().running.remove(id);
    }

    /// An operator's request: stops the run of `id` if there is one (true),
    /// else keeps the request for a while.
    pub fn request(&self, id: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        inner
            .requested
            .retain(|_, at| now.duration_since(*at) < KEPT);
        match inner.running.get(id) {
            Some(latch) => {
                latch.fire();
                true
            }
            None => {
                inner.requested.insert(id.to_string(), now);
                false
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stops_the_run_it_names_even_one_that_starts_after_it() {
        let c = Cancels::default();
        let now = Instant::now();
        let running = c.register("a").unwrap();
        assert!(c.request("a", now));
        assert!(running.is_fired());
        assert!(!c.request("b", now), "b is not running yet");
        assert!(c.register("b").unwrap().is_fired(), "b stops as it starts");
        assert!(
            !c.register("b").unwrap().is_fired(),
            "a request stops one run"
        );
    }
}
