//! Dead letters (SPEC section 2 and 4): the record of a task that cannot
//! succeed, `dlq/<worker>/<stem>_<unix>.json`, and the moving aside of
//! entries that must not be read (too large, not a regular file) into
//! `dlq/<worker>/.rejected/`.

use std::ffi::OsStr;
use std::io;
use std::path::Path;

use serde_json::{Map, Value};

use crate::clock;
use crate::error::{Error, Result};
use crate::publish::{self, rename_noreplace};
use crate::spool::{safe_stem, Spool};
use crate::task::Task;

/// The dead letter of a task: its fields plus why and when.
pub fn task_record(task: &Task, reason: &str, last_error: Option<&str>) -> Map<String, Value> {
    let mut record = task.fields.clone();
    record.remove("not_before");
    record.insert("dlq_reason".into(), reason.into());
    record.insert("dlq_timestamp".into(), clock::now_rfc3339().into());
    record.insert("retry_count".into(), task.retry_count.into());
    if let Some(e) = last_error {
        record.insert("last_error".into(), e.into());
    }
    record
}

/// The dead letter of a bad entry: its name and, when it was read, its
/// content (as text, or base64 when it is not UTF-8).
pub fn entry_record(
    name: &OsStr,
    reason: &str,
    detail: &str,
    content: Option<&[u8]>,
) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("dlq_reason".into(), reason.into());
    record.insert("dlq_timestamp".into(), clock::now_rfc3339().into());
    record.insert("retry_count".into(), 0.into());
    record.insert("original_name".into(), name.to_string_lossy().into());
    record.insert("last_error".into(), detail.into());
    match content.map(std::str::from_utf8) {
        Some(Ok(text)) => {
            record.insert("original".into(), text.into());
        }
        Some(Err(_)) => {
            record.insert(
                "original_base64".into(),
                base64(content.unwrap_or_default()).into(),
            );
        }
        None => {}
    }
    record
}

/// Publishes a record for `worker` under `stem`; returns the file name.
pub fn publish(
    spool: &Spool,
    worker: &str,
    stem: &str,
    record: &Map<String, Value>,
) -> Result<String> {
    let dir = spool.dlq_dir(worker);
    let unix = clock::unix_now().max(0.0) as u64;
    publish::publish_numbered(&dir, stem, unix, &publish::json_line(record))
}

/// The stem a bad entry's dead letter is named by.
pub fn entry_stem(name: &OsStr) -> String {
    safe_stem(&name.to_string_lossy())
}

/// Moves `from` as it is into the worker's `.rejected/` folder, under its
/// own name when it can, and returns `rejected_path` (relative to the
/// worker's DLQ folder). `NotFound` means someone else moved it first.
pub fn move_aside(spool: &Spool, worker: &str, from: &Path, name: &OsStr) -> Result<String> {
    let dir = spool.rejected_dir(worker);
    let plain = name
        .to_str()
        .filter(|n| !n.starts_with('.') && !n.contains(char::is_control));
    let base = plain
        .map(String::from)
        .unwrap_or_else(|| format!("{}.json", entry_stem(name)));
    for n in 1..10_000 {
        let candidate = if n == 1 {
            base.clone()
        } else {
            format!("{base}.{n}")
        };
        match rename_noreplace(from, &dir.join(&candidate)) {
            Ok(()) => {
                publish::sync_dir(&dir)?;
                return Ok(Spool::rejected_relative(&candidate));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io2(
                    "cannot move aside",
                    from,
                    &dir.join(&candidate),
                    e,
                ))
            }
        }
    }
    Err(Error::io(
        "cannot move aside",
        from,
        io::Error::from(io::ErrorKind::AlreadyExists),
    ))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
