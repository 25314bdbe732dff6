//! Time as hookwatch counts it: wall-clock time as the spool writes it,
//! RFC 3339 in UTC with milliseconds and a `Z`
//! (`2026-11-28T10:30:00.123Z`), and back; UTC days for the daily budget
//! and wall-clock times in a named zone for the Claude CLI's "resets
//! 3:30am (Europe/Paris)" (jiff, with the system's time zone database);
//! milliseconds for names and poll(2); and the one back-off that every
//! "try again later" uses.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jiff::tz::TimeZone;
use jiff::Timestamp;
use nix::poll::PollTimeout;

/// Seconds since the epoch, with fractions.
pub fn unix_now() -> f64 {
    to_unix(SystemTime::now())
}

pub fn to_unix(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Total for any input: times before the epoch or beyond a few thousand
/// years (a hostile state file may hold anything) are clamped.
pub fn from_unix(secs: f64) -> SystemTime {
    const LIMIT: f64 = 1e11;
    let secs = if secs.is_finite() {
        secs.clamp(-LIMIT, LIMIT)
    } else {
        0.0
    };
    if secs >= 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs_f64(-secs))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Unix seconds as whole milliseconds (0 before the epoch).
pub fn unix_millis(unix: f64) -> u64 {
    (unix.max(0.0) * 1000.0) as u64
}

/// Seconds rounded to the millisecond, as records show durations.
pub fn round_millis(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// poll(2)'s timeout for waking at `at`: rounded up to the next whole
/// millisecond, so a wake is never early.
pub fn poll_timeout(at: Instant) -> PollTimeout {
    let ms = at
        .saturating_duration_since(Instant::now())
        .as_micros()
        .div_ceil(1000)
        + 1;
    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
}

/// poll(2)'s timeout for waking at `at` in Unix seconds.
pub fn poll_timeout_unix(at: f64) -> PollTimeout {
    let secs = (at - unix_now()).clamp(0.0, 1e6);
    poll_timeout(Instant::now() + Duration::from_secs_f64(secs))
}

/// A delay that doubles at each failure in a row, up to a ceiling, and
/// starts again from the floor after a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    floor: Duration,
    ceiling: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(floor: Duration, ceiling: Duration) -> Backoff {
        Backoff {
            floor,
            ceiling,
            next: floor,
        }
    }

    /// The delay to wait now; the one after it is twice as long.
    pub fn take(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.ceiling);
        now
    }

    /// The delay `take` would give, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = self.floor;
    }
}

/// `SystemTime::now()` as RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `2026-11-28T10:30:00.123Z`: UTC, to the nearest millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = (to_unix(t) * 1000.0).round() as i64;
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Unix seconds of an RFC 3339 time (`Z` or an offset; fractions).
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    if !rfc3339_shape(s.as_bytes()) {
        return None;
    }
    let ts: Timestamp = s.parse().ok()?;
    Some(ts.as_nanosecond() as f64 / 1e9)
}

/// RFC 3339's own grammar, `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, which
/// jiff's parser widens (seconds optional, offsets without a colon): the
/// contract is RFC 3339, so the rest is refused.
fn rfc3339_shape(b: &[u8]) -> bool {
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|p| p.iter().all(u8::is_ascii_digit));
    let at = |i: usize, set: &[u8]| b.get(i).is_some_and(|c| set.contains(c));
    let date = digits(0..4) && at(4, b"-") && digits(5..7) && at(7, b"-") && digits(8..10);
    let time = at(10, b"Tt ") && digits(11..13) && at(13, b":") && digits(14..16);
    if !(date && time && at(16, b":") && digits(17..19)) {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    match rest {
        b"Z" | b"z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// The UTC day of a time, `2026-12-04`: the day a daily budget counts.
pub fn utc_day(unix: f64) -> String {
    timestamp(unix).strftime("%Y-%m-%d").to_string()
}

/// The start of the UTC day after the one holding `unix`.
pub fn next_utc_midnight(unix: f64) -> f64 {
    let day = timestamp(unix).to_zoned_datetime(TimeZone::UTC).date();
    day.tomorrow()
        .ok()
        .and_then(|d| d.to_zoned_datetime(TimeZone::UTC).ok())
        .map_or(unix + 86_400.0, |z| z.timestamp().as_second() as f64)
}

/// The first time after `unix` at which the clock in `zone` (an IANA
/// name, read from the system's time zone database; the system's own zone
/// when `None`) shows `hour:minute`. `None` for a zone it does not know.
pub fn next_wall_clock(unix: f64, hour: i8, minute: i8, zone: Option<&str>) -> Option<f64> {
    let tz = match zone {
        Some(name) => TimeZone::get(name).ok()?,
        None => TimeZone::system(),
    };
    let now = timestamp(unix).to_zoned_datetime(tz);
    let time = jiff::civil::Time::new(hour, minute, 0, 0).ok()?;
    let mut day = now.date();
    for _ in 0..3 {
        let at = day
            .to_datetime(time)
            .to_zoned_datetime(now.time_zone().clone())
            .ok()?;
        if at.timestamp() > now.timestamp() {
            return Some(at.timestamp().as_second() as f64);
        }
        day = day.tomorrow().ok()?;
    }
    None
}

fn timestamp(unix: f64) -> Timestamp {
    let ms = (unix.clamp(-1e11, 1e11) * 1000.0) as i64;
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        let t = from_unix(1_795_861_800.123);
        let s = rfc3339(t);
        assert_eq!(s, "2026-11-28T10:30:00.123Z");
        assert!((parse_rfc3339(&s).unwrap() - 1_795_861_800.123).abs() < 1e-6);
    }

    #[test]
    fn a_backoff_doubles_up_to_its_ceiling_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let delays: Vec<_> = (0..5).map(|_| b.take()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.take(), ms(100));
    }

    #[test]
    fn utc_days_and_their_ends() {
        assert_eq!(utc_day(1_795_861_800.0), "2026-11-28");
        assert_eq!(next_utc_midnight(1_795_861_800.0), 1_795_910_400.0);
        assert_eq!(next_utc_midnight(1_795_910_400.0), 1_795_996_800.0);
    }

    #[test]
    fn the_next_wall_clock_time_in_a_named_zone() {
        // 2026-11-28 10:30 UTC is 11:30 in Paris: 3:30am is tomorrow, 02:30 UTC.
        let at = next_wall_clock(1_795_861_800.0, 3, 30, Some("Europe/Paris"));
        assert_eq!(at, Some(1_795_919_400.0));
        // 11:45 Paris is later the same day.
        let at = next_wall_clock(1_795_861_800.0, 11, 45, Some("Europe/Paris"));
        assert_eq!(at, Some(1_795_861_800.0 + 15.0 * 60.0));
        assert_eq!(next_wall_clock(0.0, 3, 30, Some("Not/AZone")), None);
    }

    #[test]
    fn parses_offsets_and_rejects_garbage() {
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("1970-01-01 00:00:00"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2000-01-01T00:00Z"), None, "no seconds");
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00+0000"), None, "no colon");
        assert_eq!(parse_rfc3339(" 2000-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("1970-01-01t00:00:01z"), Some(1.0));
        assert_eq!(parse_rfc3339("1970-01-01 00:00:01.5Z"), Some(1.5));
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }
}
