//! The circuit breaker (hw-worker(8), Tasks): after `threshold` consecutive
//! failed attempts nothing new is claimed for `timeout`; then exactly one
//! probe task goes through, whose success closes the breaker and whose
//! failure opens it again. While it is not closed only the probe counts.
//! Its state is named by time: it is half-open as soon as the timeout has
//! passed (`tick`), whether or not a task is waiting, and each change is
//! returned so that the worker can say it.

use std::time::{Duration, Instant};

use crate::model::heartbeat::BreakerState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant, failures: u32 },
    HalfOpen { probe_out: bool },
}

/// A change of state, to be said in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// After this many failed attempts in a row (the threshold, or one
    /// more when the probe failed), until then.
    Opened {
        failures: u32,
        until: Instant,
    },
    HalfOpen,
    Closed,
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

    /// Half-open once the timeout has passed.
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        match self.state {
            State::Open { until, .. } if now >= until => {
                self.state = State::HalfOpen { probe_out: false };
                Some(Change::HalfOpen)
            }
            _ => None,
        }
    }

    /// May a task be claimed now? `Some(true)` means: yes, as the probe.
    /// (`tick` first, so that an open breaker whose time is up admits.)
    pub fn admit(&mut self, now: Instant) -> Option<bool> {
        let _ = self.tick(now);
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
    pub fn record(&mut self, succeeded: bool, probe: bool, now: Instant) -> Option<Change> {
        let until = now + self.timeout;
        let (state, change) = match (self.state, succeeded) {
            (State::Closed { .. }, true) => (State::Closed { failures: 0 }, None),
            (State::Closed { failures }, false) if failures + 1 >= self.threshold => {
                let failures = failures + 1;
                (
                    State::Open { until, failures },
                    Some(Change::Opened { failures, until }),
                )
            }
            (State::Closed { failures }, false) => (
                State::Closed {
                    failures: failures + 1,
                },
                None,
            ),
            (State::HalfOpen { .. }, true) if probe => {
                (State::Closed { failures: 0 }, Some(Change::Closed))
            }
            (State::HalfOpen { .. }, false) if probe => {
                let failures = self.threshold + 1;
                (
                    State::Open { until, failures },
                    Some(Change::Opened { failures, until }),
                )
            }
            (state, _) => (state, None),
        };
        self.state = state;
        change
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
            State::Open { until, .. } => Some(until),
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
        assert!(matches!(
            b.record(false, true, later),
            Some(Change::Opened { .. })
        ));
        assert_eq!(b.state(), BreakerState::Open);
        let again = later + Duration::from_secs(10);
        assert_eq!(b.admit(again), Some(true));
        assert_eq!(b.record(true, true, again), Some(Change::Closed));
        assert!(b.is_closed());
    }

    #[test]
    fn an_idle_open_breaker_turns_half_open_by_time() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        let until = t0 + Duration::from_secs(10);
        assert_eq!(
            b.record(false, false, t0),
            Some(Change::Opened { failures: 1, until })
        );
        assert_eq!(b.tick(t0 + Duration::from_secs(9)), None);
        assert_eq!(b.tick(until), Some(Change::HalfOpen));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.tick(until), None, "said once");
    }
}
