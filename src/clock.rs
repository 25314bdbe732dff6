//! Time as hookwatch counts it: wall-clock time as the spool writes it,
//! RFC 3339 in UTC with milliseconds and a `Z`
//! (`2026-11-28T10:30:00.123Z`), and back (by hand, the civil-from-days
//! algorithm, to stay dependency-light); milliseconds for names and
//! poll(2); and the one back-off that every "try again later" uses.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

pub fn rfc3339(t: SystemTime) -> String {
    let ms = (to_unix(t) * 1000.0).round() as i64;
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Parses the RFC 3339 forms hookwatch and its producers write:
/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`. Returns Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs as f64 + frac)
}

// Howard Hinnant's algorithms, valid for the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    fn parses_offsets_and_rejects_garbage() {
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("1970-01-01 00:00:00"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }
}
