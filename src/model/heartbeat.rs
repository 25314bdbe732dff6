//! The heartbeat file (hookwatch(5), Heartbeat): the worker's health, rewritten
//! atomically every `HEARTBEAT_INTERVAL` seconds and once more, as
//! `stopped`, on the way out. Each worker process (an instance: a host,
//! and a slot on it) writes its own; `speaker` picks the one that speaks
//! for the worker name as a whole (healthy if any instance is).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::failure::PauseReason;
use crate::model::{words, Word};

words! {
    /// What a worker says of itself in its heartbeat.
    #[derive(Default)]
    pub enum HeartbeatStatus {
        /// Claiming and running, breaker closed.
        Healthy = "healthy",
        /// The breaker is open or half-open.
        Degraded = "degraded",
        /// Claiming nothing: a usage limit, a login to mend, or the day's
        /// budget spent (`paused_reason`, `paused_until`).
        Paused = "paused",
        /// SIGTERM or SIGINT received: running tasks finish, nothing new.
        Stopping = "stopping",
        /// The last heartbeat of a worker that stopped cleanly.
        Stopped = "stopped",
        /// A status this version does not know (another system's).
        #[default]
        Unknown = "unknown",
    }
}

words! {
    /// The circuit breaker's state, as the heartbeat and hw-status say it.
    #[derive(Default)]
    pub enum BreakerState {
        Closed = "closed",
        Open = "open",
        HalfOpen = "half_open",
        #[default]
        Unknown = "unknown",
    }
}

impl BreakerState {
    /// `watcher_circuit_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed | BreakerState::Unknown => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A pause reason this version does not know is none.
fn lenient_reason<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PauseReason>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.as_deref().and_then(PauseReason::parse))
}

/// A word of another system's heartbeat that this version does not know
/// reads as `unknown`, not as a heartbeat that cannot be read.
fn lenient<'de, D: serde::Deserializer<'de>, W: Word + Default>(d: D) -> Result<W, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    Ok(W::parse(&s).unwrap_or_default())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatStats {
    pub tasks_processed: u64,
    pub tasks_failed: u64,
    pub tasks_retried: u64,
    pub tasks_dlq: u64,
}

/// Read leniently: a heartbeat of the Python system (fractional uptime,
/// fields missing) is still a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct Heartbeat {
    pub worker: String,
    pub timestamp: String,
    #[serde(deserialize_with = "whole_seconds")]
    pub uptime_seconds: u64,
    pub queue_size: u64,
    pub active_tasks: u64,
    #[serde(deserialize_with = "lenient")]
    pub circuit_breaker_state: BreakerState,
    pub stats: HeartbeatStats,
    #[serde(deserialize_with = "lenient")]
    pub status: HeartbeatStatus,
    pub pid: u32,
    pub hostname: String,
    /// Which process of the worker name wrote it: `<instance>` of its
    /// file `<worker>@<instance>.json` (absent in the Python system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub version: String,
    pub heartbeat_interval: f64,
    pub metrics_addr: Option<String>,
    /// While paused: why, and until when (RFC 3339).
    #[serde(
        deserialize_with = "lenient_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub paused_reason: Option<PauseReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    /// The agent's spend on the UTC day of `timestamp`, USD.
    pub cost_usd_today: f64,
    /// Pending files set aside because they cannot be claimed (the first
    /// few by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unclaimable: Vec<Unclaimable>,
}

/// A pending file the worker cannot claim for now, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unclaimable {
    pub file: String,
    /// Its owner, when the worker could see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    pub error: String,
}

fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    Ok(n.as_u64()
        .unwrap_or_else(|| n.as_f64().unwrap_or(0.0).max(0.0) as u64))
}

impl Heartbeat {
    /// When it was written, Unix seconds.
    pub fn written(&self) -> Option<f64> {
        crate::clock::parse_rfc3339(&self.timestamp)
    }

    /// Its age at `now`, seconds (never negative: another host's clock
    /// may be ahead).
    pub fn age(&self, now: f64) -> Option<f64> {
        self.written().map(|t| (now - t).max(0.0))
    }

    /// The interval it promises (10 s when it names none), for staleness.
    pub fn interval(&self) -> Duration {
        let secs = if self.heartbeat_interval > 0.0 {
            self.heartbeat_interval
        } else {
            10.0
        };
        Duration::from_secs_f64(secs.clamp(0.001, 1e9))
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// A heartbeat is stale when older than this many of the intervals it
/// names itself.
pub const STALE_INTERVALS: f64 = 3.0;

/// How one instance's heartbeat stands: live (fresh and not stopped),
/// stopped cleanly, or stale (its process or its host is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Live,
    Stopped,
    Stale,
}

/// The standing of `beat` at `now`, stale once older than `stale_after`
/// seconds (an unreadable time is stale).
pub fn standing(beat: &Heartbeat, now: f64, stale_after: f64) -> Standing {
    match beat.age(now) {
        _ if beat.status == HeartbeatStatus::Stopped => Standing::Stopped,
        Some(age) if age <= stale_after => Standing::Live,
        _ => Standing::Stale,
    }
}

/// The order in which a live instance's status speaks for its name.
fn rank(status: HeartbeatStatus) -> u8 {
    match status {
        HeartbeatStatus::Healthy => 0,
        HeartbeatStatus::Degraded => 1,
        HeartbeatStatus::Paused => 2,
        HeartbeatStatus::Stopping => 3,
        HeartbeatStatus::Unknown => 4,
        HeartbeatStatus::Stopped => 5,
    }
}

/// The heartbeat that speaks for a worker name among its instances':
/// the live one with the best status (healthy before degraded, paused,
/// stopping), the newest of those; with none live, the newest of all.
/// `stale_after` gives each heartbeat's staleness threshold.
pub fn speaker<'a>(
    beats: impl IntoIterator<Item = &'a Heartbeat>,
    now: f64,
    stale_after: impl Fn(&Heartbeat) -> f64,
) -> Option<&'a Heartbeat> {
    beats.into_iter().min_by(|a, b| {
        let key = |h: &Heartbeat| {
            let live = standing(h, now, stale_after(h)) == Standing::Live;
            (!live, if live { rank(h.status) } else { 0 })
        };
        let newer = b
            .written()
            .unwrap_or(f64::MIN)
            .total_cmp(&a.written().unwrap_or(f64::MIN));
        key(a).cmp(&key(b)).then(newer)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(at: f64, status: HeartbeatStatus, pid: u32) -> Heartbeat {
        Heartbeat {
            timestamp: crate::clock::rfc3339(crate::clock::from_unix(at)),
            status,
            pid,
            heartbeat_interval: 10.0,
            ..Heartbeat::default()
        }
    }

    #[test]
    fn the_name_is_healthy_if_any_instance_is() {
        let now = 1_800_000_000.0;
        let dead = beat(now - 100.0, HeartbeatStatus::Healthy, 1);
        let degraded = beat(now - 1.0, HeartbeatStatus::Degraded, 2);
        let healthy = beat(now - 5.0, HeartbeatStatus::Healthy, 3);
        let stopped = beat(now, HeartbeatStatus::Stopped, 4);
        let all = [dead.clone(), degraded.clone(), healthy, stopped.clone()];
        let thirty = |_: &Heartbeat| 30.0;
        assert_eq!(speaker(&all, now, thirty).map(|h| h.pid), Some(3));
        assert_eq!(speaker(&all[..2], now, thirty).map(|h| h.pid), Some(2));
        // None live: the newest speaks, stopped or stale.
        let gone = [dead.clone(), stopped];
        assert_eq!(speaker(&gone, now, thirty).map(|h| h.pid), Some(4));
        assert_eq!(standing(&dead, now, 30.0), Standing::Stale);
        assert_eq!(standing(&degraded, now, 30.0), Standing::Live);
        assert_eq!(speaker(&[], now, thirty), None);
    }
}
