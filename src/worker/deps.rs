//! Task dependencies (hw-worker(8), Tasks): a task runs once every task it
//! depends on has a `completed` result in any worker's results folder; it
//! is dead-lettered when one of them ended failed or dead-lettered.

use std::fs;

use crate::model::result::ResultStatus;
use crate::spool::names::dead_letter_id;
use crate::spool::{Spool, RECORD_MAX};

#[derive(Debug, PartialEq, Eq)]
pub enum DepState {
    Ready,
    Waiting,
    /// This dependency failed or was dead-lettered.
    Failed(String),
}

pub fn check(spool: &Spool, deps: &[String]) -> DepState {
    if deps.is_empty() {
        return DepState::Ready;
    }
    let workers = list(&spool.results);
    let mut waiting = false;
    for dep in deps {
        match result_status(spool, &workers, dep) {
            Some(ResultStatus::Completed) => {}
            Some(_) => return DepState::Failed(dep.clone()),
            None if dead_lettered(spool, dep) => return DepState::Failed(dep.clone()),
            None => waiting = true,
        }
    }
    if waiting {
        DepState::Waiting
    } else {
        DepState::Ready
    }
}

/// How `id` ended, by its results in any worker's folder: completed if
/// one says so; failed if one has any other status.
fn result_status(spool: &Spool, workers: &[String], id: &str) -> Option<ResultStatus> {
    let mut found = None;
    for w in workers {
        let Ok(bytes) = crate::spool::read_regular(&spool.result_path(w, id), RECORD_MAX) else {
            continue;
        };
        let record = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
        if !record.get("status").is_some_and(|s| s.is_string()) {
            continue;
        }
        match ResultStatus::of(&record) {
            Some(ResultStatus::Completed) => return Some(ResultStatus::Completed),
            _ => found = Some(ResultStatus::Failed),
        }
    }
    found
}

/// A record `<id>_<unix>[-n].json` in any worker's DLQ folder.
fn dead_lettered(spool: &Spool, id: &str) -> bool {
    list(&spool.dlq).iter().any(|w| {
        list(&spool.dlq_dir(w))
            .iter()
            .any(|name| dead_letter_id(name) == Some(id))
    })
}

fn list(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}
