//! What the Claude CLI says about an attempt (hw-worker(8), Running the
//! command): its result object, read from the whole output (stdout when
//! it is one JSON object, else the last line that is an object with
//! `"type": "result"`, as `--output-format stream-json` ends), and the
//! verdict drawn from it: success, or a failure class with the CLI's own
//! words and, for a usage limit, when it resets. Only a result object
//! counts: an `is_error` anywhere else is just text.

use serde_json::{Map, Value};

use crate::clock;
use crate::model::failure::FailureClass;
use crate::model::words;

words! {
    /// The kinds of tokens a result object counts, as
    /// `watcher_agent_tokens_total{type}` says them.
    pub enum TokenType {
        Input = "input",
        Output = "output",
        CacheRead = "cache_read",
        CacheCreation = "cache_creation",
    }
}

/// The longest line read for a result object: a result line holds the
/// whole answer, which may be far larger than `--max-output`.
const LINE_CAP: usize = 32 << 20;

/// `agent_error` holds this much of the CLI's words.
const WORDS_MAX: usize = 1024;

/// Follows stdout as it comes, keeping only the line being read (when it
/// may be JSON) and the last result object and rate-limit reset seen.
#[derive(Debug, Default)]
pub struct Scanner {
    line: Vec<u8>,
    /// The line being read is not JSON, or too long: skip to its end.
    skipping: bool,
    at_line_start: bool,
    lines: u64,
    last: Option<(u64, Map<String, Value>)>,
    reset_at: Option<f64>,
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner {
            at_line_start: true,
            ..Scanner::default()
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let (part, rest, ends) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            self.take(part);
            if ends {
                self.end_line();
            }
            chunk = rest;
        }
    }

    fn take(&mut self, part: &[u8]) {
        if self.at_line_start {
            let text = part.iter().position(|b| !b.is_ascii_whitespace());
            match text {
                None => return,
                Some(i) => {
                    self.at_line_start = false;
                    self.skipping = part[i] != b'{';
                }
            }
        }
        if self.skipping {
            return;
        }
        if self.line.len() + part.len() > LINE_CAP {
            self.skipping = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self) {
        if !self.at_line_start {
            self.lines += 1;
        }
        if !self.skipping && !self.line.is_empty() {
            self.consider();
        }
        self.line.clear();
        self.skipping = false;
        self.at_line_start = true;
    }

    fn consider(&mut self) {
        let maybe = |needle: &[u8]| self.line.windows(needle.len()).any(|w| w == needle);
        if !maybe(b"\"result\"") && !maybe(b"\"rate_limit_event\"") {
            return;
        }
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&self.line) else {
            return;
        };
        match object.get("type").and_then(Value::as_str) {
            Some("result") => self.last = Some((self.lines, object)),
            Some("rate_limit_event") => {
                if let Some(at) = object.get("rate_limit_info").and_then(reset_field) {
                    self.reset_at = Some(at);
                }
            }
            _ => {}
        }
    }

    /// The result object, once stdout has ended. `head` is stdout as kept
    /// (up to `--max-output`): when it is whole and one JSON object, that
    /// is the object, whatever its lines.
    pub fn finish(mut self, head: &[u8], head_whole: bool) -> Option<AgentReport> {
        self.end_line();
        if head_whole {
            if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(head) {
                let reset_at = self.reset_at;
                return is_result(&object).then_some(AgentReport {
                    object,
                    whole: true,
                    reset_at,
                });
            }
        }
        let (line, object) = self.last?;
        Some(AgentReport {
            object,
            // The only line of stdout: what `--output-format json` prints.
            whole: line == 1 && self.lines == 1,
            reset_at: self.reset_at,
        })
    }
}

fn is_result(object: &Map<String, Value>) -> bool {
    object.get("type").and_then(Value::as_str) == Some("result")
}

/// A reset time in Unix seconds (a value in milliseconds is taken for one).
fn reset_field(info: &Value) -> Option<f64> {
    let at = info.get("resetsAt")?;
    let secs = at
        .as_f64()
        .or_else(|| at.as_str().and_then(clock::parse_rfc3339))?;
    Some(if secs > 1e11 { secs / 1000.0 } else { secs })
}

/// The CLI's result object, and what else its output said.
#[derive(Debug, Clone)]
pub struct AgentReport {
    pub object: Map<String, Value>,
    /// stdout was this object alone (`--output-format json`), so `result`
    /// is what the task's stdout becomes.
    pub whole: bool,
    /// The reset time of the last rate-limit event of a stream.
    pub reset_at: Option<f64>,
}

/// A failed attempt, as the CLI reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFailure {
    pub class: FailureClass,
    /// The CLI's own words, at most a KiB: `result`, else `errors`.
    pub words: String,
    /// `error_max_turns` and the like, for `last_error`.
    pub subtype: Option<String>,
    /// When a usage limit resets (Unix seconds), if the CLI said.
    pub reset_at: Option<f64>,
}

impl AgentReport {
    fn text(&self, key: &str) -> Option<&str> {
        self.object.get(key)?.as_str()
    }

    fn number(&self, key: &str) -> Option<f64> {
        self.object.get(key)?.as_f64()
    }

    /// The answer: `result`.
    pub fn answer(&self) -> Option<&str> {
        self.text("result")
    }

    /// The fields the result file keeps under `agent`: all of them but
    /// the answer, which is `stdout` (kept too when stdout is a stream).
    pub fn fields(&self) -> Map<String, Value> {
        let mut fields = self.object.clone();
        if self.whole {
            fields.remove("result");
        }
        fields
    }

    pub fn cost_usd(&self) -> f64 {
        self.number("total_cost_usd")
            .filter(|c| c.is_finite() && *c >= 0.0)
            .unwrap_or(0.0)
    }

    pub fn turns(&self) -> u64 {
        self.object
            .get("num_turns")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// Tokens by type, from `usage`.
    pub fn tokens(&self) -> [(TokenType, u64); 4] {
        let usage = self.object.get("usage");
        let get = |k: &str| {
            usage
                .and_then(|u| u.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        [
            (TokenType::Input, get("input_tokens")),
            (TokenType::Output, get("output_tokens")),
            (TokenType::CacheRead, get("cache_read_input_tokens")),
            (TokenType::CacheCreation, get("cache_creation_input_tokens")),
        ]
    }

    /// The CLI's own words: `result`, else its `errors`.
    fn words(&self) -> String {
        let words = match (self.answer(), self.object.get("errors")) {
            (Some(text), _) if !text.trim().is_empty() => text.to_string(),
            (_, Some(Value::Array(errors))) => errors
                .iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), String::from))
                .collect::<Vec<_>>()
                .join("; "),
            (_, Some(other)) => other.to_string(),
            _ => String::new(),
        };
        cut(&words, WORDS_MAX)
    }

    /// The verdict: `None` for a success, else the class of the failure.
    /// `now` (Unix seconds) places a "resets 3:30am" clock time.
    pub fn failure(&self, now: f64) -> Option<AgentFailure> {
        let subtype = self.text("subtype").map(String::from);
        let is_error = self.object.get("is_error").and_then(Value::as_bool) == Some(true);
        let failed_subtype = subtype.as_deref().is_some_and(|s| s.starts_with("error"));
        if !is_error && !failed_subtype {
            return None;
        }
        let words = self.words();
        let status = self.object.get("api_error_status").and_then(Value::as_u64);
        let class = classify(subtype.as_deref(), status, &words.to_lowercase());
        let reset_at = match class {
            FailureClass::RateLimited => reset_time(&words, now).or(self.reset_at),
            _ => None,
        };
        Some(AgentFailure {
            class,
            words,
            subtype,
            reset_at,
        })
    }
}

/// Which failure a result object reports, from its subtype, its HTTP
/// status and its words (lowercased).
fn classify(subtype: Option<&str>, status: Option<u64>, words: &str) -> FailureClass {
    let says = |phrases: &[&str]| phrases.iter().any(|p| words.contains(p));
    match (subtype, status) {
        (Some("error_max_turns" | "error_max_budget_usd"), _) => FailureClass::NotRetryable,
        (_, Some(429)) => FailureClass::RateLimited,
        (_, Some(401 | 403)) => FailureClass::AuthFailed,
        (_, Some(529)) => FailureClass::Overloaded,
        _ if says(&[
            "usage limit",
            "rate limit",
            "hit your limit",
            "rate_limit_error",
        ]) =>
        {
            FailureClass::RateLimited
        }
        _ if says(&[
            "not logged in",
            "/login",
            "oauth token has expired",
            "invalid api key",
            "authentication_error",
            "failed to authenticate",
            "credit balance is too low",
        ]) =>
        {
            FailureClass::AuthFailed
        }
        _ if says(&["overloaded"]) => FailureClass::Overloaded,
        _ => FailureClass::AgentReportedError,
    }
}

/// When a usage limit resets, from the CLI's words: a Unix time after a
/// `|` (`Claude AI usage limit reached|1764993600`), or a clock time,
/// `resets 3:30am (Europe/Paris)` (the zone's rules decide the offset;
/// without a zone, the system's).
pub fn reset_time(words: &str, now: f64) -> Option<f64> {
    if let Some((_, after)) = words.split_once('|') {
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<f64>() {
            return Some(if n > 1e11 { n / 1000.0 } else { n });
        }
    }
    // ASCII lowercase keeps every byte where it was: the zone's name is
    // read from the original words, in its own case (IANA names have one).
    let lower = words.to_ascii_lowercase();
    let at = lower.find("resets ")? + "resets ".len();
    let at = at + if lower[at..].starts_with("at ") { 3 } else { 0 };
    let (hour, minute, rest) = clock_time(&lower[at..])?;
    let rest = &words[words.len() - rest.len()..];
    let zone = rest
        .trim_start()
        .strip_prefix('(')
        .and_then(|z| z.split_once(')'))
        .map(|(z, _)| z.trim());
    clock::next_wall_clock(now, hour, minute, zone)
}

/// `3:30am`, `11pm`, `15:00`: the hour (0-23), the minute and what follows.
fn clock_time(s: &str) -> Option<(i8, i8, &str)> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let n = digits(s);
    let hour: i8 = s
        .get(..n)
        .filter(|h| !h.is_empty() && h.len() <= 2)?
        .parse()
        .ok()?;
    let mut rest = &s[n..];
    let mut minute = 0;
    if let Some(r) = rest.strip_prefix(':') {
        let m = digits(r);
        minute = r.get(..m).filter(|m| m.len() == 2)?.parse().ok()?;
        rest = &r[m..];
    }
    let (hour, rest) = match rest.trim_start() {
        r if r.starts_with("am") => (if hour == 12 { 0 } else { hour }, &r[2..]),
        r if r.starts_with("pm") => (if hour == 12 { 12 } else { hour + 12 }, &r[2..]),
        r => (hour, r),
    };
    ((0..24).contains(&hour) && (0..60).contains(&minute)).then_some((hour, minute, rest))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(stdout: &[u8], max: usize) -> Option<AgentReport> {
        let mut s = Scanner::new();
        for chunk in stdout.chunks(7) {
            s.feed(chunk);
        }
        let whole = stdout.len() <= max;
        s.finish(&stdout[..stdout.len().min(max)], whole)
    }

    #[test]
    fn the_result_is_stdout_when_it_is_one_object_whatever_its_lines() {
        let r = scan(
            b"{\n \"type\": \"result\",\n \"result\": \"hi\"\n}\n",
            1 << 20,
        )
        .unwrap();
        assert!(r.whole);
        assert_eq!(r.answer(), Some("hi"));
        assert!(!r.fields().contains_key("result"));
    }

    #[test]
    fn the_result_of_a_stream_is_its_last_result_line() {
        let out = b"{\"type\":\"system\"}\n{\"type\":\"result\",\"result\":\"a\"}\n{\"type\":\"result\",\"result\":\"b\"}\n";
        let r = scan(out, 1 << 20).unwrap();
        assert!(!r.whole);
        assert_eq!(r.answer(), Some("b"));
        assert_eq!(r.fields()["result"], "b");
    }

    #[test]
    fn only_a_result_object_counts() {
        assert!(scan(b"text\n{\"is_error\": true}\n", 1 << 20).is_none());
        assert!(scan(b"{\"type\":\"assistant\",\"result\":1}", 1 << 20).is_none());
        assert!(scan(b"plain text", 1 << 20).is_none());
    }

    #[test]
    fn a_result_larger_than_the_output_kept_is_read_whole() {
        let answer = "x".repeat(3 << 20);
        let out = format!("{{\"type\":\"result\",\"is_error\":true,\"result\":\"{answer}\"}}\n");
        let r = scan(out.as_bytes(), 1 << 20).unwrap();
        assert!(r.whole);
        assert_eq!(
            r.failure(0.0).unwrap().class,
            FailureClass::AgentReportedError
        );
        assert_eq!(r.failure(0.0).unwrap().words.len(), WORDS_MAX);
    }

    fn failure(object: Value) -> Option<AgentFailure> {
        let Value::Object(object) = object else {
            panic!()
        };
        AgentReport {
            object,
            whole: true,
            reset_at: None,
        }
        .failure(1_795_861_800.0)
    }

    #[test]
    fn failures_are_classed_by_subtype_status_and_words() {
        use serde_json::json;
        let class = |v| failure(v).map(|f| f.class);
        assert_eq!(
            class(json!({"is_error": false, "subtype": "success"})),
            None
        );
        let cases = [
            (
                json!({"is_error": true, "result": "Claude AI usage limit reached|1795900000"}),
                FailureClass::RateLimited,
            ),
            (
                json!({"is_error": true, "result": "x", "api_error_status": 429}),
                FailureClass::RateLimited,
            ),
            (
                json!({"is_error": true, "result": "Not logged in · Please run /login"}),
                FailureClass::AuthFailed,
            ),
            (
                json!({"is_error": true, "result": "Failed to authenticate. API Error: 401 OAuth token has expired"}),
                FailureClass::AuthFailed,
            ),
            (
                json!({"is_error": true, "result": "x", "api_error_status": 403}),
                FailureClass::AuthFailed,
            ),
            (
                json!({"is_error": true, "subtype": "error_max_turns"}),
                FailureClass::NotRetryable,
            ),
            (
                json!({"is_error": false, "subtype": "error_max_budget_usd"}),
                FailureClass::NotRetryable,
            ),
            (
                json!({"is_error": true, "result": "API Error: 529 overloaded_error"}),
                FailureClass::Overloaded,
            ),
            (
                json!({"is_error": true, "result": "tool failed"}),
                FailureClass::AgentReportedError,
            ),
            (
                json!({"is_error": false, "subtype": "error_during_execution", "errors": ["boom"]}),
                FailureClass::AgentReportedError,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(class(v.clone()), Some(want), "{v}");
        }
    }

    #[test]
    fn usage_limits_say_when_they_reset() {
        let now = 1_795_861_800.0; // 2026-11-28 10:30 UTC, 11:30 in Paris
        assert_eq!(
            reset_time("Claude AI usage limit reached|1795900000", now),
            Some(1_795_900_000.0)
        );
        assert_eq!(
            reset_time("limit|1795900000123", now),
            Some(1_795_900_000.123)
        );
        assert_eq!(
            reset_time("You've hit your limit · resets 3:30am (Europe/Paris)", now),
            Some(1_795_919_400.0)
        );
        assert_eq!(
            reset_time("You've hit your limit · resets 12pm (Europe/Paris)", now),
            Some(now + 30.0 * 60.0)
        );
        assert_eq!(reset_time("You've hit your limit", now), None);
        assert_eq!(reset_time("resets soon", now), None);
    }

    #[test]
    fn a_stream_s_rate_limit_event_gives_the_reset() {
        let out = b"{\"type\":\"rate_limit_event\",\"rate_limit_info\":{\"status\":\"rejected\",\"resetsAt\":1795900000}}\n{\"type\":\"result\",\"is_error\":true,\"result\":\"rate limit\"}\n";
        let r = scan(out, 1 << 20).unwrap();
        let f = r.failure(1_795_861_800.0).unwrap();
        assert_eq!(
            (f.class, f.reset_at),
            (FailureClass::RateLimited, Some(1_795_900_000.0))
        );
    }

    #[test]
    fn cost_tokens_and_turns() {
        let r = scan(br#"{"type":"result","total_cost_usd":0.25,"num_turns":3,"usage":{"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":30,"cache_creation_input_tokens":40}}"#, 1 << 20).unwrap();
        let tokens: Vec<u64> = r.tokens().iter().map(|(_, n)| *n).collect();
        assert_eq!(
            (r.cost_usd(), r.turns(), tokens),
            (0.25, 3, vec![10, 20, 30, 40])
        );
    }
}
