//! When the account, not the task, is at fault (hw-worker(8), Running the
//! command), the worker pauses: it claims nothing until a time, and
//! charges nothing. A pure state machine like the breaker, with time as a
//! parameter (Unix seconds, since reset times come from the CLI's clock).
//!
//! - A usage limit pauses until the reset time the CLI gave; then every
//!   claim may go. Without one, and for a failed login, the pause is 60 s
//!   doubling to 30 min across consecutive limits, after which one task
//!   goes as a probe: if it is refused again the pause doubles, otherwise
//!   the worker resumes.
//! - A daily budget spent pauses until the next UTC day.

use std::time::Duration;

use crate::clock::{self, Backoff};
use crate::model::failure::PauseReason;

/// A pause in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paused {
    pub reason: PauseReason,
    /// Unix seconds.
    pub until: f64,
    /// After `until`, one task goes first to see whether it is over.
    probe: bool,
    probe_out: bool,
}

/// What `admit` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the one task that tells whether the pause is over.
    Probe,
    No,
}

/// What changed, for the log, the heartbeat and the metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Paused(Paused),
    Resumed(PauseReason),
}

#[derive(Debug)]
pub struct Pauses {
    current: Option<Paused>,
    /// 60 s doubling to 30 min across consecutive limits without a reset.
    backoff: Backoff,
    budget_usd: Option<f64>,
}

impl Pauses {
    /// `first`: the first pause without a reset time (60 s by default),
    /// doubling up to 30 minutes.
    pub fn new(budget_usd: Option<f64>, first: Duration) -> Pauses {
        let ceiling = Duration::from_secs(30 * 60).max(first);
        Pauses {
            current: None,
            backoff: Backoff::new(first, ceiling),
            budget_usd,
        }
    }

    /// The pause in force at `now`, if any (a finished one still counts
    /// until its probe says it is over).
    pub fn current(&self) -> Option<Paused> {
        self.current
    }

    /// An attempt was refused for `reason`; `reset_at` is when the CLI
    /// said its limit resets. A refusal while already paused (tasks that
    /// were running when the first one came back) extends nothing but to
    /// a later reset.
    pub fn refused(
        &mut self,
        reason: PauseReason,
        reset_at: Option<f64>,
        now: f64,
    ) -> Option<Change> {
        let probing = self.current.is_some_and(|p| p.probe_out);
        let ongoing = self
            .current
            .filter(|p| p.reason == reason && (now < p.until || !probing));
        let until = match (reset_at, ongoing) {
            (Some(at), Some(p)) => at.max(p.until),
            (Some(at), None) => at,
            (None, Some(p)) => p.until,
            (None, None) => now + self.backoff.take().as_secs_f64(),
        };
        let paused = Paused {
            reason,
            until,
            probe: reset_at.is_none() && ongoing.map_or(true, |p| p.probe),
            probe_out: false,
        };
        let change = (self.current != Some(paused)).then_some(Change::Paused(paused));
        self.current = Some(paused);
        change
    }

    /// An attempt ran and the account let it: a probe ends the pause, and
    /// the back-off starts again from 60 s.
    pub fn ran(&mut self) -> Option<Change> {
        self.backoff.reset();
        match self.current {
            Some(p) if p.probe_out => {
                self.current = None;
                Some(Change::Resumed(p.reason))
            }
            _ => None,
        }
    }

    /// The probe ended without an attempt (a bad task, a shutdown): let
    /// another task be the probe.
    pub fn probe_void(&mut self) {
        if let Some(p) = self.current.as_mut() {
            p.probe_out = false;
        }
    }

    /// May a task be claimed at `now`?
    pub fn admit(&mut self, now: f64) -> (Admit, Option<Change>) {
        let Some(p) = self.current else {
            return (Admit::Yes, None);
        };
        match p {
            _ if now < p.until => (Admit::No, None),
            Paused { probe: false, .. } => {
                self.current = None;
                (Admit::Yes, Some(Change::Resumed(p.reason)))
            }
            Paused {
                probe_out: false, ..
            } => {
                self.current = Some(Paused {
                    probe_out: true,
                    ..p
                });
                (Admit::Probe, None)
            }
            _ => (Admit::No, None),
        }
    }

    /// Pauses for the budget when today's spend has reached it, until the
    /// next UTC day.
    pub fn spent(&mut self, today_usd: f64, now: f64) -> Option<Change> {
        let budget = self.budget_usd?;
        let ongoing = self
            .current
            .is_some_and(|p| p.reason == PauseReason::Budget);
        if today_usd < budget || ongoing {
            return None;
        }
        let paused = Paused {
            reason: PauseReason::Budget,
            until: clock::next_utc_midnight(now),
            probe: false,
            probe_out: false,
        };
        let later = self.current.map_or(true, |p| p.until < paused.until);
        if !later {
            return None;
        }
        self.current = Some(paused);
        Some(Change::Paused(paused))
    }

    /// Takes up a pause a previous run left in its heartbeat.
    pub fn restore(&mut self, reason: PauseReason, until: f64) {
        self.current = Some(Paused {
            reason,
            until,
            probe: reason == PauseReason::AuthFailed,
            probe_out: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: f64 = 1_000_000.0;
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_usage_limit_with_a_reset_pauses_until_it_then_everything_goes() {
        let mut p = Pauses::new(None, MINUTE);
        let change = p.refused(PauseReason::RateLimited, Some(T + 100.0), T);
        assert!(matches!(change, Some(Change::Paused(x)) if x.until == T + 100.0));
        assert_eq!(p.admit(T + 99.0).0, Admit::No);
        // Another running task refused too: nothing changes.
        assert_eq!(
            p.refused(PauseReason::RateLimited, Some(T + 100.0), T + 1.0),
            None
        );
        let (admit, change) = p.admit(T + 100.0);
        assert_eq!(admit, Admit::Yes);
        assert_eq!(change, Some(Change::Resumed(PauseReason::RateLimited)));
        assert_eq!(p.admit(T + 100.0).0, Admit::Yes);
    }

    #[test]
    fn a_failed_login_pauses_60s_doubling_and_one_task_probes() {
        let mut p = Pauses::new(None, MINUTE);
        p.refused(PauseReason::AuthFailed, None, T);
        assert_eq!(p.current().unwrap().until, T + 60.0);
        assert_eq!(p.admit(T + 59.0).0, Admit::No);
        assert_eq!(p.admit(T + 60.0).0, Admit::Probe);
        assert_eq!(p.admit(T + 60.0).0, Admit::No, "one probe at a time");
        p.refused(PauseReason::AuthFailed, None, T + 61.0);
        assert_eq!(p.current().unwrap().until, T + 61.0 + 120.0);
        assert_eq!(p.admit(T + 181.0).0, Admit::Probe);
        assert_eq!(p.ran(), Some(Change::Resumed(PauseReason::AuthFailed)));
        assert_eq!(p.admit(T + 182.0).0, Admit::Yes);
        p.refused(PauseReason::AuthFailed, None, T + 200.0);
        assert_eq!(
            p.current().unwrap().until,
            T + 260.0,
            "back to 60 s after a success"
        );
    }

    #[test]
    fn the_back_off_stops_at_30_minutes() {
        let mut p = Pauses::new(None, MINUTE);
        let mut now = T;
        for _ in 0..10 {
            p.refused(PauseReason::RateLimited, None, now);
            now = p.current().unwrap().until;
            assert_eq!(p.admit(now).0, Admit::Probe);
        }
        p.refused(PauseReason::RateLimited, None, now);
        assert_eq!(p.current().unwrap().until - now, 1800.0);
    }

    #[test]
    fn a_probe_without_an_attempt_lets_another_task_probe() {
        let mut p = Pauses::new(None, MINUTE);
        p.refused(PauseReason::AuthFailed, None, T);
        assert_eq!(p.admit(T + 60.0).0, Admit::Probe);
        p.probe_void();
        assert_eq!(p.admit(T + 60.0).0, Admit::Probe);
    }

    #[test]
    fn a_spent_budget_pauses_until_the_next_utc_day() {
        let mut p = Pauses::new(Some(5.0), MINUTE);
        assert_eq!(p.spent(4.99, 1_795_861_800.0), None);
        let change = p.spent(5.0, 1_795_861_800.0);
        assert!(matches!(change, Some(Change::Paused(x)) if x.until == 1_795_910_400.0));
        assert_eq!(p.spent(6.0, 1_795_861_801.0), None);
        assert_eq!(p.admit(1_795_910_399.0).0, Admit::No);
        assert_eq!(p.admit(1_795_910_400.0).0, Admit::Yes);
        assert_eq!(Pauses::new(None, MINUTE).spent(1e9, T), None);
    }
}
