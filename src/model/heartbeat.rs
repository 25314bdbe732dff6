//! The heartbeat file (hookwatch(5), Heartbeat): the worker's health, rewritten
//! atomically every `HEARTBEAT_INTERVAL` seconds and once more, as
//! `stopped`, on the way out.

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
