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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub worker: String,
    pub timestamp: String,
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

impl Heartbeat {
    /// The interval it promises, for staleness checks.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval.clamp(0.001, 1e9))
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}
