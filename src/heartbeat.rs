//! The heartbeat file (SPEC section 4): the worker's health, rewritten
//! atomically every `HEARTBEAT_INTERVAL` seconds and once more, as
//! `stopped`, on the way out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    pub circuit_breaker_state: String,
    pub stats: HeartbeatStats,
    /// `healthy`, `degraded`, `stopping` or `stopped`.
    pub status: String,
    pub pid: u32,
    pub hostname: String,
    pub version: String,
    pub heartbeat_interval: f64,
    pub metrics_addr: Option<String>,
}

fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    Ok(n.as_u64()
        .unwrap_or_else(|| n.as_f64().unwrap_or(0.0).max(0.0) as u64))
}

impl Heartbeat {
    /// The interval it promises, for staleness checks.
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
