//! The systemd notification protocol, spoken without libsystemd: datagrams
//! like `READY=1` or `STATUS=…` sent to the socket named by
//! `NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`),
//! and `WATCHDOG=1` every half of `WATCHDOG_USEC` when the unit sets
//! `WatchdogSec=`. Without `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => abstract_addr(name.as_bytes())?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.trim().parse::<u64>().ok())
            .filter(|us| *us > 0 && for_us && socket.is_some())
            .map(|us| Duration::from_micros(us) / 2);
        Notifier { socket, watchdog }
    }

    /// How often to send `WATCHDOG=1`, when the unit asks for it.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (lines `KEY=VALUE`); failures are not the
    /// worker's business beyond a debug line.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                log::debug!("cannot notify systemd: {e}");
            }
        }
    }
}

fn abstract_addr(name: &[u8]) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).ok()
}
