//! A worker's health as the listener judges it from its heartbeat: a pure
//! state machine, like the breaker. The heartbeat's age against two
//! thresholds (stale, disconnected) gives the state; a change of state
//! gives the event to emit. Time is a parameter, so every transition is a
//! unit test.

use serde::{Deserialize, Serialize};

use crate::model::event::EventKind;
use crate::model::failure::PauseReason;
use crate::model::heartbeat::HeartbeatStatus;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not judged yet.
    #[default]
    Unknown,
    Healthy,
    /// Its heartbeat is stale.
    Unhealthy,
    /// No heartbeat, a stopped one, or one far too old.
    Disconnected,
}

impl Health {
    /// Better first: which of several instances speaks for the name.
    pub fn rank(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Unhealthy => 1,
            Health::Disconnected => 2,
            Health::Unknown => 3,
        }
    }
}

/// The last heartbeat seen of a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    /// When it was written, Unix seconds.
    pub at: f64,
    /// The interval it promises, seconds.
    pub interval: f64,
    pub status: HeartbeatStatus,
    pub paused_reason: Option<PauseReason>,
    pub paused_until: Option<String>,
}

/// `--stale-after` and `--disconnect-after`; by default 3 and 10 of the
/// heartbeat's own intervals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    pub stale_after: Option<f64>,
    pub disconnect_after: Option<f64>,
}

impl Thresholds {
    pub fn stale_after(&self, beat: &Beat) -> f64 {
        self.stale_after.unwrap_or(3.0 * beat.interval)
    }

    pub fn disconnect_after(&self, beat: &Beat) -> f64 {
        self.disconnect_after.unwrap_or(10.0 * beat.interval)
    }

    /// The health a heartbeat (or none) gives at `now`, and why.
    pub fn judge(&self, beat: Option<&Beat>, now: f64) -> (Health, &'static str) {
        match beat {
            None => (Health::Disconnected, "no heartbeat"),
            Some(b) if b.status == HeartbeatStatus::Stopped => (Health::Disconnected, "stopped"),
            Some(b) if now - b.at > self.disconnect_after(b) => {
                (Health::Disconnected, "heartbeat too old")
            }
            Some(b) if now - b.at > self.stale_after(b) => (Health::Unhealthy, "heartbeat stale"),
            Some(_) => (Health::Healthy, "heartbeat fresh"),
        }
    }

    /// When the health of a worker now `health` will next change by age
    /// alone (Unix seconds), if it will.
    pub fn next_change(&self, health: Health, beat: &Beat) -> Option<f64> {
        match health {
            Health::Healthy | Health::Unknown => Some(beat.at + self.stale_after(beat)),
            Health::Unhealthy => Some(beat.at + self.disconnect_after(beat)),
            Health::Disconnected => None,
        }
    }
}

/// The event a change of health makes, if any.
pub fn event_of(before: Health, after: Health) -> Option<EventKind> {
    match (before, after) {
        _ if before == after => None,
        (Health::Unhealthy | Health::Disconnected, Health::Healthy) => {
            Some(EventKind::WorkerRecovered)
        }
        (Health::Healthy | Health::Unknown, Health::Unhealthy) => Some(EventKind::WorkerUnhealthy),
        (_, Health::Disconnected) => Some(EventKind::WorkerDisconnected),
        _ => None,
    }
}

/// Whether a heartbeat starts or ends a pause the listener knew of
/// (`before`): the event, and the pause known from now on. A stopped
/// worker's pause is kept (its next run takes it up again).
pub fn pause_event(
    before: Option<PauseReason>,
    beat: &Beat,
) -> (Option<EventKind>, Option<PauseReason>) {
    match (beat.status, before) {
        (HeartbeatStatus::Paused, _) if beat.paused_reason != before => {
            (Some(EventKind::WorkerPaused), beat.paused_reason)
        }
        (HeartbeatStatus::Paused | HeartbeatStatus::Stopped, _) => (None, before),
        (_, Some(_)) => (Some(EventKind::WorkerResumed), None),
        (_, None) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(at: f64) -> Beat {
        Beat {
            at,
            interval: 10.0,
            status: HeartbeatStatus::Healthy,
            paused_reason: None,
            paused_until: None,
        }
    }

    #[test]
    fn a_pause_is_told_once_and_its_end_once() {
        let paused = Beat {
            status: HeartbeatStatus::Paused,
            paused_reason: Some(PauseReason::RateLimited),
            ..beat(0.0)
        };
        let rl = Some(PauseReason::RateLimited);
        assert_eq!(
            pause_event(None, &paused),
            (Some(EventKind::WorkerPaused), rl)
        );
        assert_eq!(pause_event(rl, &paused), (None, rl));
        let stopped = Beat {
            status: HeartbeatStatus::Stopped,
            ..beat(0.0)
        };
        assert_eq!(pause_event(rl, &stopped), (None, rl));
        assert_eq!(
            pause_event(rl, &beat(0.0)),
            (Some(EventKind::WorkerResumed), None)
        );
        assert_eq!(pause_event(None, &beat(0.0)), (None, None));
        let budget = Beat {
            paused_reason: Some(PauseReason::Budget),
            ..paused
        };
        assert_eq!(
            pause_event(rl, &budget),
            (Some(EventKind::WorkerPaused), Some(PauseReason::Budget))
        );
    }

    #[test]
    fn a_heartbeat_ages_from_healthy_to_unhealthy_to_disconnected() {
        let t = Thresholds::default();
        let b = beat(100.0);
        assert_eq!(t.judge(Some(&b), 130.0).0, Health::Healthy);
        assert_eq!(t.judge(Some(&b), 130.1).0, Health::Unhealthy);
        assert_eq!(t.judge(Some(&b), 200.1).0, Health::Disconnected);
        assert_eq!(t.judge(None, 0.0).0, Health::Disconnected);
        assert_eq!(t.next_change(Health::Healthy, &b), Some(130.0));
        assert_eq!(t.next_change(Health::Unhealthy, &b), Some(200.0));
    }

    #[test]
    fn a_stopped_worker_is_disconnected_at_once() {
        let b = Beat {
            status: HeartbeatStatus::Stopped,
            ..beat(100.0)
        };
        assert_eq!(
            Thresholds::default().judge(Some(&b), 100.0),
            (Health::Disconnected, "stopped")
        );
    }

    #[test]
    fn changes_make_events_and_first_sightings_of_health_make_none() {
        use Health::*;
        assert_eq!(event_of(Unknown, Healthy), None);
        assert_eq!(event_of(Healthy, Healthy), None);
        assert_eq!(
            event_of(Healthy, Unhealthy),
            Some(EventKind::WorkerUnhealthy)
        );
        assert_eq!(
            event_of(Unknown, Unhealthy),
            Some(EventKind::WorkerUnhealthy)
        );
        assert_eq!(
            event_of(Unhealthy, Healthy),
            Some(EventKind::WorkerRecovered)
        );
        assert_eq!(
            event_of(Disconnected, Healthy),
            Some(EventKind::WorkerRecovered)
        );
        assert_eq!(
            event_of(Healthy, Disconnected),
            Some(EventKind::WorkerDisconnected)
        );
        assert_eq!(
            event_of(Unknown, Disconnected),
            Some(EventKind::WorkerDisconnected)
        );
        assert_eq!(event_of(Disconnected, Unhealthy), None);
    }
}
