//! The worker's HTTP endpoint on its own thread: `/metrics` (Prometheus
//! text 0.0.4), `/healthz` and `/readyz` (200 while running with the
//! breaker closed, else 503), `/livez` (200 while the process serves).
//! A request only reads atomics, so it never waits for a task; shutdown
//! is a latch the thread polls.
//!
//! One thread serves every client from one poll(2) loop, one request per
//! connection, and never holds more than `cap` connections: a flood of
//! clients cannot take the descriptors that tasks need, and no accept
//! error ends the loop. (tiny_http 0.12, used before, had no cap, and its
//! accept thread panicked at the first EMFILE: tiny-http/tiny-http#195.)
//! Clients beyond the cap wait in the kernel's listen queue, which costs
//! this process nothing. Once a connection at the cap
//! has sent no complete request for `YIELD_AFTER`, the crowd is taken for
//! idle or leaked: every waiting client is accepted, each in the place of
//! the connection silent longest, until none waits. So a scrape behind a
//! thousand idle connections is answered within about `YIELD_AFTER`,
//! while a burst of real scrapes, each sending its request at once, just
//! queues.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::socket::{listen, Backlog};

use crate::clock;
use crate::error::{Error, Kind, Result};
use crate::latch::Latch;
use crate::worker::metrics::Metrics;

const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Prometheus (an HA pair at most) and a health checker or two use one
/// connection each per scrape; 64 is an order of magnitude more, and a
/// connection here costs one descriptor and a few KiB, no thread.
const MAX_CONNECTIONS: usize = 64;
/// Real clients send their request as soon as they connect; one silent
/// this long while others wait is idle or leaked. Long enough for a
/// client thread descheduled between connect(2) and write(2).
const YIELD_AFTER: Duration = Duration::from_secs(1);
/// The longest a client may take to send its request, or stall reading
/// the answer, even when nobody else waits.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// After the answer, what the client still sends is read and dropped for
/// this long, so that closing does not reset the answer away.
const LINGER: Duration = Duration::from_secs(1);
/// Out of descriptors, accept(2) fails at once for as long as it lasts:
/// looking again this much later keeps the loop from spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// A request head longer than this is not a scrape.
const MAX_HEAD: usize = 8192;
/// Waiting clients cost the kernel memory, not our descriptors; the
/// default of 128 would make a flood's excess, and any scrape behind it,
/// retry its SYN for seconds. Linux caps it at net.core.somaxconn.
const BACKLOG: libc::c_int = 1024;
/// Warnings about a crowd or a shortage of descriptors, at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub struct MetricsServer {
    stop: Latch,
    thread: Option<JoinHandle<()>>,
    /// The address actually bound (port 0 picks a free one).
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `ip:port`; a port in use is a service that cannot start (69).
    pub fn start(ip: IpAddr, port: u16, metrics: Arc<Metrics>) -> Result<MetricsServer> {
        let wanted = SocketAddr::new(ip, port);
        let unavailable = |e: io::Error| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    " (--metrics-port 0 takes any free port, --no-metrics none)"
                }
                _ => "",
            };
            Error::new(
                Kind::Unavailable,
                format!("cannot listen on {wanted}: {e}{hint}"),
            )
        };
        let listener = TcpListener::bind(wanted).map_err(unavailable)?;
        listener.set_nonblocking(true).map_err(unavailable)?;
        // listen(2) again on our listening socket only resizes its queue;
        // on failure the default queue stays.
        if let Ok(backlog) = Backlog::new(BACKLOG) {
            let _ = listen(&listener, backlog);
        }
        let addr = listener.local_addr().unwrap_or(wanted);
        let stop = Latch::new().map_err(unavailable)?;
        let endpoint = Endpoint {
            listener,
            metrics,
            stop: stop.clone(),
            cap: connection_cap(),
            conns: Vec::new(),
            paused_until: None,
            crowded: false,
            warned_at: None,
        };
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || endpoint.serve())
            .map_err(|e| {
                Error::new(
                    Kind::Unavailable,
                    format!("cannot start the http thread: {e}"),
                )
            })?;
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
            addr,
        })
    }

    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.fire();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// At most a quarter of the open-files limit, so that a worker started
/// with a small limit keeps most of it for its tasks.
fn connection_cap() -> usize {
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    (soft / 4).clamp(4, MAX_CONNECTIONS as u64) as usize
}

struct Endpoint {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: Latch,
    cap: usize,
    conns: Vec<Conn>,
    /// accept(2) ran out of descriptors; not tried again before this.
    paused_until: Option<Instant>,
    /// Taking every waiting client, each in the place of the connection
    /// silent longest, however young: set by a connection silent for
    /// `YIELD_AFTER` at the cap, cleared once nobody waits.
    crowded: bool,
    warned_at: Option<Instant>,
}

impl Endpoint {
    fn serve(mut self) {
        while !self.stop.is_fired() {
            let now = Instant::now();
            self.conns.retain(|c| c.deadline > now);
            if self.paused_until.is_some_and(|t| t <= now) {
                self.paused_until = None;
            }
            let listen = self.paused_until.is_none()
                && (self.conns.len() < self.cap || self.victim(now).is_some());
            let timeout = self.next_wake(listen);
            let (accept, ready) = {
                let mut fds = Vec::with_capacity(self.conns.len() + 2);
                fds.push(PollFd::new(self.stop.fd(), PollFlags::POLLIN));
                if listen {
                    fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
                }
                for c in &self.conns {
                    fds.push(PollFd::new(c.stream.as_fd(), c.interest()));
                }
                if let Err(e) = poll(&mut fds, timeout) {
                    if e != nix::errno::Errno::EINTR {
                        // Only ENOMEM is possible here: let the kernel breathe.
                        thread::sleep(ACCEPT_PAUSE);
                    }
                    continue;
                }
                let fired = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let first = 1 + usize::from(listen);
                let ready: Vec<bool> = fds[first..].iter().map(fired).collect();
                (listen && fired(&fds[1]), ready)
            };
            // Served connections first: each one done frees a place for a
            // client waiting to be accepted.
            let metrics = &self.metrics;
            let now = Instant::now();
            let mut ready = ready.into_iter();
            self.conns
                .retain_mut(|c| !ready.next().unwrap_or(false) || c.advance(metrics, now));
            if accept {
                self.accept(now);
            } else if listen {
                self.crowded = false;
            }
        }
    }

    /// The connection to close for a waiting client at the cap: one whose
    /// answer is already sent, else the one silent longest, once silent
    /// for `YIELD_AFTER` or while crowded.
    fn victim(&self, now: Instant) -> Option<usize> {
        if let Some(i) = self.conns.iter().position(|c| c.state.is_draining()) {
            return Some(i);
        }
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state.is_reading())
            .min_by_key(|(_, c)| c.accepted)
            .filter(|(_, c)| self.crowded || c.accepted + YIELD_AFTER <= now)
            .map(|(i, _)| i)
    }

    fn next_wake(&self, listen: bool) -> PollTimeout {
        let mut wake = self.conns.iter().map(|c| c.deadline).min();
        let mut earlier = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(t) = self.paused_until {
            earlier(t);
        }
        if !listen && self.conns.len() >= self.cap {
            let silent = self.conns.iter().filter(|c| c.state.is_reading());
            if let Some(t) = silent.map(|c| c.accepted + YIELD_AFTER).min() {
                earlier(t);
            }
        }
        wake.map_or(PollTimeout::NONE, clock::poll_timeout)
    }

    /// Accepts what waits, within the cap. A turn takes at most `cap`
    /// clients, so that the requests of those just accepted are read
    /// before the next turn could make any of them the one silent longest.
    fn accept(&mut self, now: Instant) {
        for _ in 0..self.cap {
            if self.conns.len() >= self.cap {
                let Some(i) = self.victim(now) else {
                    return;
                };
                if self.conns[i].state.is_reading() {
                    self.crowded = true;
                    let cap = self.cap;
                    self.warn(format_args!(
                        "Metrics clients at the cap of {cap} connections: closing those silent longest"
                    ));
                }
                self.conns.swap_remove(i);
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.conns.push(Conn::new(stream, now));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.crowded = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the client stays
                    // queued and is taken once descriptors are back.
                    self.warn(format_args!(
                        "Cannot accept a metrics client: {e}; trying again in {}ms",
                        ACCEPT_PAUSE.as_millis()
                    ));
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    fn warn(&mut self, message: std::fmt::Arguments) {
        let now = Instant::now();
        if self.warned_at.map_or(true, |t| now >= t + WARN_EVERY) {
            self.warned_at = Some(now);
            log::warn!("{message}");
        }
    }
}

struct Conn {
    stream: TcpStream,
    state: State,
    accepted: Instant,
    /// Closed when this passes: no request, a stalled reader, or the end
    /// of the linger.
    deadline: Instant,
}

enum State {
    Reading(Vec<u8>),
    Writing { out: Vec<u8>, sent: usize },
    Draining,
}

impl State {
    fn is_reading(&self) -> bool {
        matches!(self, State::Reading(_))
    }

    fn is_draining(&self) -> bool {
        matches!(self, State::Draining)
    }
}

impl Conn {
    fn new(stream: TcpStream, now: Instant) -> Conn {
        Conn {
            stream,
            state: State::Reading(Vec::new()),
            accepted: now,
            deadline: now + IO_TIMEOUT,
        }
    }

    fn interest(&self) -> PollFlags {
        match self.state {
            State::Writing { .. } => PollFlags::POLLOUT,
            _ => PollFlags::POLLIN,
        }
    }

    /// Does what the socket allows now; false when the connection is done.
    fn advance(&mut self, metrics: &Metrics, now: Instant) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match &mut self.state {
                State::Reading(head) => match self.stream.read(&mut chunk) {
                    Ok(0) => return false,
                    Ok(n) => {
                        head.extend_from_slice(&chunk[..n]);
                        let answer = match head_end(head) {
                            Some(end) if end <= MAX_HEAD => answer(&head[..end], metrics),
                            _ if head.len() > MAX_HEAD => {
                                Answer::text(431, "request header too large\n")
                            }
                            _ => continue,
                        };
                        let out = answer.to_bytes(SystemTime::now());
                        self.state = State::Writing { out, sent: 0 };
                        self.deadline = now + IO_TIMEOUT;
                    }
                    Err(e) => return e.kind() == ErrorKind::WouldBlock,
                },
                State::Writing { out, sent } => match self.stream.write(&out[*sent..]) {
                    Ok(0) => return false,
                    Ok(n) => {
                        *sent += n;
                        self.deadline = now + IO_TIMEOUT;
                        if *sent == out.len() {
                            let _ = self.stream.shutdown(Shutdown::Write);
                            self.state = State::Draining;
                            self.deadline = now + LINGER;
                        }
                    }
                    Err(e) => return e.kind() == ErrorKind::WouldBlock,
                },
                // A client that keeps sending is cut off by the deadline;
                // one turn reads what a read or two brings.
                State::Draining => {
                    return match self.stream.read(&mut chunk) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => e.kind() == ErrorKind::WouldBlock,
                    }
                }
            }
        }
    }
}

/// Where the request head ends (after its blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A finished answer: status, body, Content-Type, and whether the body
/// goes out (not for HEAD, which keeps its Content-Length).
struct Answer {
    status: u16,
    body: String,
    content_type: &'static str,
    with_body: bool,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            content_type: TEXT,
            with_body: true,
        }
    }

    /// Every answer closes the connection: scrapes are seconds apart, and
    /// one request per connection keeps a place from being held between
    /// them.
    fn to_bytes(&self, now: SystemTime) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            http_date(now),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if self.with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request head (without its blank line or not).
fn answer(head: &[u8], metrics: &Metrics) -> Answer {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::text(400, "bad request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::text(400, "bad request\n");
    }
    let readable = matches!(method, "GET" | "HEAD");
    let path = target.split('?').next().unwrap_or("");
    let mut answer = match path {
        "/metrics" if readable => Answer {
            content_type: TEXT_0_0_4,
            ..Answer::text(200, &metrics.render())
        },
        "/healthz" | "/readyz" if readable => match metrics.healthy() {
            true => Answer::text(200, "ok\n"),
            false => Answer::text(503, "unavailable\n"),
        },
        "/livez" if readable => Answer::text(200, "ok\n"),
        _ => Answer::text(404, "not found\n"),
    };
    answer.with_body = method != "HEAD";
    answer
}

/// IMF-fixdate (RFC 9110): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Whole seconds, so that rounding the milliseconds cannot move them.
    let iso = crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    let month = iso[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{}, {} {} {} {} GMT",
        DAYS[(secs / 86_400 % 7) as usize],
        &iso[8..10],
        MONTHS[month - 1],
        &iso[0..4],
        &iso[11..19]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn http_date_is_imf_fixdate() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn a_head_ends_at_its_first_blank_line_crlf_or_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nrest"), Some(16));
    }

    #[test]
    fn routes_and_methods_answer_as_the_man_page_says() {
        let m = Metrics::new("w", None);
        let get = answer(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &m);
        assert_eq!((get.status, get.content_type), (200, TEXT_0_0_4));
        assert!(get.body.contains("watcher_tasks_processed_total"));
        assert_eq!(answer(b"GET /livez HTTP/1.0\n\n", &m).status, 200);
        assert_eq!(answer(b"POST /metrics HTTP/1.1\r\n\r\n", &m).status, 404);
        assert_eq!(answer(b"GET /nothing HTTP/1.1\r\n\r\n", &m).status, 404);
        assert_eq!(answer(b"garbage\r\n\r\n", &m).status, 400);
        assert_eq!(answer(b"GET / HTTP/2.0\r\n\r\n", &m).status, 400);
    }

    #[test]
    fn head_gets_the_headers_of_get_without_the_body() {
        let m = Metrics::new("w", None);
        let now = UNIX_EPOCH;
        let get = text(&answer(b"GET /livez HTTP/1.1\r\n\r\n", &m).to_bytes(now));
        let head = text(&answer(b"HEAD /livez HTTP/1.1\r\n\r\n", &m).to_bytes(now));
        assert_eq!(get, format!("{head}ok\n"));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 3\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }

    #[test]
    fn the_cap_is_at_most_64_and_at_least_4() {
        assert!((4..=MAX_CONNECTIONS).contains(&connection_cap()));
    }
}
