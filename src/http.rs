//! The worker's HTTP endpoint on its own thread: `/metrics` (Prometheus
//! text 0.0.4), `/healthz` and `/readyz` (200 while running with the
//! breaker closed, else 503), `/livez` (200 while the process serves).
//! A request only reads atomics, so it never waits for a task; shutdown
//! unblocks the thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tiny_http::{Header, Method, Request, Response, Server};

use crate::error::{Error, Kind, Result};
use crate::metrics::Metrics;

const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct MetricsServer {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    /// The address actually bound (port 0 picks a free one).
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `ip:port`; a port in use is a service that cannot start (69).
    pub fn start(ip: IpAddr, port: u16, metrics: Arc<Metrics>) -> Result<MetricsServer> {
        let wanted = SocketAddr::new(ip, port);
        let server = Server::http(wanted).map_err(|e| {
            Error::new(Kind::Unavailable, format!("cannot listen on {wanted}: {e}"))
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(wanted);
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    answer(request, &metrics);
                }
            })
            .map_err(|e| {
                Error::new(
                    Kind::Unavailable,
                    format!("cannot start the http thread: {e}"),
                )
            })?;
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr,
        })
    }

    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(request: Request, metrics: &Metrics) {
    let path = request.url().split('?').next().unwrap_or("");
    let readable = matches!(request.method(), Method::Get | Method::Head);
    let (status, body, content_type) = match path {
        "/metrics" if readable => (200, metrics.render(), TEXT_0_0_4),
        "/healthz" | "/readyz" if readable => match metrics.healthy() {
            true => (200, "ok\n".to_string(), "text/plain; charset=utf-8"),
            false => (
                503,
                "unavailable\n".to_string(),
                "text/plain; charset=utf-8",
            ),
        },
        "/livez" if readable => (200, "ok\n".to_string(), "text/plain; charset=utf-8"),
        _ => (404, "not found\n".to_string(), "text/plain; charset=utf-8"),
    };
    let header = Header::from_bytes("Content-Type", content_type).expect("a valid header");
    let response = Response::from_string(body)
        .with_status_code(status)
        .with_header(header);
    // A client that went away is its own business.
    let _ = request.respond(response);
}
