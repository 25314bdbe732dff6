//! The dead-letter queue on disk (hookwatch(5), Dead letter): a record is
//! published as `dlq/<worker>/<stem>_<unix>[-N].json` (what it holds is
//! `model::dead_letter`), and an entry that must not be read (too large,
//! not a regular file) is moved as it is into `dlq/<worker>/.rejected/`.
//! `admin` is hw-dlq's side: list, show, replay, purge.

pub mod admin;
pub mod cancel;

use std::ffi::OsStr;
use std::io;

use serde_json::{Map, Value};

use crate::clock;
use crate::error::{Error, Result};
use crate::spool::dir::Dir;
use crate::spool::names::{rejected_path, safe_stem, task_file};
use crate::spool::publish::{json_line, Durability};

/// Publishes a record under `stem` in a worker's DLQ folder; returns
/// the file name.
pub fn publish(
    dlq: &Dir,
    stem: &str,
    record: &Map<String, Value>,
    d: Durability,
) -> Result<String> {
    let unix = clock::unix_now().max(0.0) as u64;
    let (name, _) = dlq.publish_numbered(stem, unix, 1, &json_line(record), d, true)?;
    Ok(name)
}

/// The stem a bad entry's dead letter is named by.
pub fn entry_stem(name: &OsStr) -> String {
    safe_stem(&name.to_string_lossy())
}

/// Moves `name` of `from` as it is into the worker's `.rejected/`
/// folder, under its own name when it can, and returns `rejected_path`
/// (relative to the worker's DLQ folder). `NotFound` means someone else
/// moved it first.
pub fn move_aside(from: &Dir, name: &OsStr, rejected: &Dir, d: Durability) -> Result<String> {
    let plain = name
        .to_str()
        .filter(|n| !n.starts_with('.') && !n.contains(char::is_control));
    let base = plain
        .map(String::from)
        .unwrap_or_else(|| task_file(&entry_stem(name)));
    for n in 1..10_000 {
        let candidate = if n == 1 {
            base.clone()
        } else {
            format!("{base}.{n}")
        };
        match from.rename_noreplace(name, rejected, OsStr::new(&candidate)) {
            Ok(()) => {
                rejected.sync(d)?;
                return Ok(rejected_path(&candidate));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let to = rejected.join(&candidate);
                return Err(Error::io2("cannot move aside", &from.join(name), &to, e));
            }
        }
    }
    Err(Error::io(
        "cannot move aside",
        &from.join(name),
        io::Error::from(io::ErrorKind::AlreadyExists),
    ))
}
