//! The retry schedule (hw-worker(8), Tasks): the n-th retry waits
//! `INITIAL_RETRY_DELAY × RETRY_BACKOFF^(n-1)`, at most `MAX_RETRIES`
//! retries, so `1 + MAX_RETRIES` attempts in all.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff: f64,
    pub initial_delay: Duration,
}

impl RetryPolicy {
    /// After a failed attempt of a task that had `failed_before` failed
    /// attempts: how long until the next one, or `None` when none is left.
    pub fn next_delay(&self, failed_before: u32) -> Option<Duration> {
        let n = failed_before.saturating_add(1);
        if n > self.max_retries {
            return None;
        }
        let secs = self.initial_delay.as_secs_f64() * self.backoff.powi(n.min(10_000) as i32 - 1);
        Some(Duration::from_secs_f64(secs.min(86_400.0 * 365.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stop() {
        let p = RetryPolicy {
            max_retries: 3,
            backoff: 2.0,
            initial_delay: Duration::from_secs(1),
        };
        let d: Vec<_> = (0..4)
            .map(|k| p.next_delay(k).map(|d| d.as_secs()))
            .collect();
        assert_eq!(d, [Some(1), Some(2), Some(4), None]);
    }
}
