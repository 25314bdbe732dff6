//! The circuit breaker (hw-worker(8), Tasks): after `threshold` consecutive
//! failed attempts nothing new is claimed for `timeout`; then exactly one
//! probe task goes through, whose success closes the breaker and whose
//! failure opens it again. While it is not closed only the probe counts.

use std::time::{Duration, Instant};

use crate::model::heartbeat::BreakerState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_out: bool },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    timeout: Duration,
    state: State,
}

impl Breaker {
    pub fn new(threshold: u32, timeout: Duration) -> Breaker {
        Breaker {
            threshold,
            timeout,
            state: State::Closed { failures: 0 },
        }
    }

    /// May a task be claimed now? `Some(true)` means: yes, as the probe.
    pub fn admit(&mut self, now: Instant) -> Option<bool> {
        if let State::Open { until } = self.state {
            if now >= until {
                self.state = State::HalfOpen { probe_out: false };
            }
        }
        match self.state {
            State::Closed { .. } => Some(false),
            State::HalfOpen { probe_out: false } => {
                self.state = State::HalfOpen { probe_out: true };
                Some(true)
            }
            _ => None,
        }
    }

    /// An attempt ended; `probe` says whether it was the half-open probe.
    pub fn record(&mut self, succeeded: bool, probe: bool, now: Instant) {
        self.state = match (self.state, succeeded) {
            (State::Closed { .. }, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 >= self.threshold => State::Open {
                until: now + self.timeout,
            },
            (State::Closed { failures }, false) => State::Closed {
                failures: failures + 1,
            },
            (State::HalfOpen { .. }, true) if probe => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, false) if probe => State::Open {
                until: now + self.timeout,
            },
            (state, _) => state,
        };
    }

    /// The probe ended without an attempt (bad input, shutdown): let
    /// another task be the probe.
    pub fn probe_void(&mut self) {
        if let State::HalfOpen { probe_out: true } = self.state {
            self.state = State::HalfOpen { probe_out: false };
        }
    }

    /// When the breaker will let a probe through, while open.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }

    /// The state as the heartbeat says it.
    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(10));
        b.record(false, false, t0);
        assert_eq!(b.admit(t0), Some(false));
        b.record(false, false, t0);
        assert_eq!(b.admit(t0), None);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(later), Some(true));
        assert_eq!(b.admit(later), None, "exactly one probe");
        b.record(false, true, later);
        assert_eq!(b.state(), BreakerState::Open);
        let again = later + Duration::from_secs(10);
        assert_eq!(b.admit(again), Some(true));
        b.record(true, true, again);
        assert!(b.is_closed());
    }
}
