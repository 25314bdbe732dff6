//! Task dependencies (hw-worker(8), Tasks): a task runs once every task
//! it depends on has a `completed` result in any worker's results folder;
//! it is dead-lettered when one of them ended failed or dead-lettered.
//!
//! The worker keeps an index of those terminal records, so that checking
//! a dependency costs a lookup, not a listing of every folder: a folder is
//! listed again only when its modification time says it changed, and a
//! result is read again only when its inode did (a replay replaces it).
//! Each change bumps a generation, so a waiting task is looked at again
//! only when something it may wait for has happened.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::model::result::ResultStatus;
use crate::spool::names::{dead_letter_id, result_id, valid_worker_name};
use crate::spool::{read_regular, Spool, RECORD_MAX};

/// How far in the past a folder's mtime must be for its listing to stand
/// until the mtime changes.
const SETTLED_NS: i128 = 2_000_000_000;

#[derive(Debug, PartialEq, Eq)]
pub enum DepState {
    Ready,
    /// These have no terminal record yet.
    Waiting(Vec<String>),
    /// This dependency failed or was dead-lettered.
    Failed(String),
}

/// How a task ended, by one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Failed,
}

/// One results or dead-letter folder, as last listed.
#[derive(Debug, Default)]
struct Folder {
    mtime_ns: i128,
    /// Its mtime was well in the past when it was listed: a change since
    /// would show as another mtime. (A folder's mtime has the file
    /// system's tick, a few ms: two changes in one tick share one.)
    settled: bool,
    /// File name: (inode, the task id and how it ended).
    records: HashMap<String, (u64, String, End)>,
}

/// Counts of the records of one task id across folders.
#[derive(Debug, Default, Clone, Copy)]
struct Ends {
    completed: u32,
    failed: u32,
}

#[derive(Debug)]
pub struct DepIndex {
    results: PathBuf,
    dlq: PathBuf,
    folders: HashMap<PathBuf, Folder>,
    ends: HashMap<String, Ends>,
    generation: u64,
}

impl DepIndex {
    pub fn new(spool: &Spool) -> DepIndex {
        DepIndex {
            results: spool.results.clone(),
            dlq: spool.dlq.clone(),
            folders: HashMap::new(),
            ends: HashMap::new(),
            generation: 0,
        }
    }

    /// Bumped by every change the index saw.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// `refresh` when `needed` (a task with dependencies).
    pub fn refresh_if(&mut self, needed: bool) {
        if needed {
            self.refresh();
        }
    }

    /// Brings the index up to date: a stat per worker folder, and a
    /// listing of those that changed.
    pub fn refresh(&mut self) {
        for (root, dead) in [(self.results.clone(), false), (self.dlq.clone(), true)] {
            let workers = worker_folders(&root);
            let gone: Vec<PathBuf> = self
                .folders
                .keys()
                .filter(|p| p.starts_with(&root) && !workers.contains(*p))
                .cloned()
                .collect();
            for p in gone {
                self.drop_folder(&p);
            }
            for folder in workers {
                self.refresh_folder(&folder, dead);
            }
        }
    }

    fn refresh_folder(&mut self, path: &Path, dead: bool) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return self.drop_folder(path);
        };
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        if self
            .folders
            .get(path)
            .is_some_and(|f| f.settled && f.mtime_ns == mtime_ns)
        {
            return;
        }
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let settled = now_ns - mtime_ns > SETTLED_NS;
        let old = self.folders.remove(path).unwrap_or_default();
        let mut records = HashMap::new();
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue;
            };
            let ino = entry.ino();
            if let Some(known) = old.records.get(&name).filter(|r| r.0 == ino) {
                records.insert(name, known.clone());
                continue;
            }
            let end = match dead {
                true => dead_letter_id(&name).map(|id| (id.to_string(), End::Failed)),
                false => result_id(&name)
                    .and_then(|id| Some((id.to_string(), result_end(&entry.path())?))),
            };
            if let Some((id, end)) = end {
                records.insert(name, (ino, id, end));
            }
        }
        let changed = old.records != records;
        for (_, id, end) in old.records.values() {
            self.count(id, *end, -1);
        }
        for (_, id, end) in records.values() {
            self.count(id, *end, 1);
        }
        self.folders.insert(
            path.to_path_buf(),
            Folder {
                mtime_ns,
                settled,
                records,
            },
        );
        if changed {
            self.generation += 1;
        }
    }

    fn drop_folder(&mut self, path: &Path) {
        if let Some(old) = self.folders.remove(path) {
            for (_, id, end) in old.records.values() {
                self.count(id, *end, -1);
            }
            self.generation += 1;
        }
    }

    fn count(&mut self, id: &str, end: End, by: i64) {
        let e = self.ends.entry(id.to_string()).or_default();
        let slot = match end {
            End::Completed => &mut e.completed,
            End::Failed => &mut e.failed,
        };
        *slot = (i64::from(*slot) + by).max(0) as u32;
        if e.completed == 0 && e.failed == 0 {
            self.ends.remove(id);
        }
    }

    /// Where `deps` stand: a lookup each.
    pub fn check(&self, deps: &[String]) -> DepState {
        let mut waiting = Vec::new();
        for dep in deps {
            match self.ends.get(dep) {
                Some(e) if e.completed > 0 => {}
                Some(_) => return DepState::Failed(dep.clone()),
                None => waiting.push(dep.clone()),
            }
        }
        match waiting.is_empty() {
            true => DepState::Ready,
            false => DepState::Waiting(waiting),
        }
    }
}

/// A result file's status: completed, or any other status a failure; no
/// status at all, not a record.
fn result_end(path: &Path) -> Option<End> {
    let bytes = read_regular(path, RECORD_MAX).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    record.get("status")?.as_str()?;
    Some(match ResultStatus::of(&record) {
        Some(ResultStatus::Completed) => End::Completed,
        _ => End::Failed,
    })
}

fn worker_folders(root: &Path) -> HashSet<PathBuf> {
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_str().is_some_and(valid_worker_name))
        .map(|e| e.path())
        .collect()
}

/// The task ids a waiting task waits for, by its id: what the cycle
/// search follows.
pub trait Waits {
    fn waits_for(&self, id: &str) -> Option<Vec<String>>;
}

/// The first path from `id` back to itself through waiting tasks, if
/// there is one: `id → a → … → id`. Visits at most `limit` tasks.
pub fn cycle(id: &str, deps: &[String], waits: &impl Waits, limit: usize) -> Option<Vec<String>> {
    let mut seen = HashSet::new();
    let mut stack: Vec<(String, Vec<String>)> = deps
        .iter()
        .map(|d| (d.clone(), vec![id.to_string(), d.clone()]))
        .collect();
    while let Some((at, path)) = stack.pop() {
        if at == id {
            return Some(path);
        }
        if !seen.insert(at.clone()) || seen.len() > limit {
            continue;
        }
        for next in waits.waits_for(&at).unwrap_or_default() {
            let mut p = path.clone();
            p.push(next.clone());
            stack.push((next, p));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Graph(HashMap<&'static str, Vec<String>>);

    impl Waits for Graph {
        fn waits_for(&self, id: &str) -> Option<Vec<String>> {
            self.0.get(id).cloned()
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_cycle_through_waiting_tasks_is_found_and_a_chain_is_not() {
        let g = Graph(HashMap::from([
            ("b", s(&["c"])),
            ("c", s(&["a"])),
            ("d", s(&["e"])),
        ]));
        assert_eq!(
            cycle("a", &s(&["b"]), &g, 100),
            Some(s(&["a", "b", "c", "a"]))
        );
        assert_eq!(cycle("a", &s(&["a"]), &g, 100), Some(s(&["a", "a"])));
        assert_eq!(cycle("a", &s(&["d"]), &g, 100), None);
    }

    #[test]
    fn the_index_follows_results_and_dead_letters_as_they_change() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::at(tmp.path());
        spool.create_worker_dirs("w").unwrap();
        let mut idx = DepIndex::new(&spool);
        let deps = s(&["a", "b"]);
        idx.refresh();
        assert_eq!(idx.check(&deps), DepState::Waiting(s(&["a", "b"])));
        let g0 = idx.generation();
        fs::write(spool.result_path("w", "a"), r#"{"status":"completed"}"#).unwrap();
        idx.refresh();
        assert!(idx.generation() > g0);
        assert_eq!(idx.check(&deps), DepState::Waiting(s(&["b"])));
        fs::write(spool.dlq_dir("w").join("b_17.json"), "{}").unwrap();
        idx.refresh();
        assert_eq!(idx.check(&deps), DepState::Failed("b".into()));
        fs::remove_file(spool.dlq_dir("w").join("b_17.json")).unwrap();
        let tmp_result = spool.result_dir("w").join(".b.tmp");
        fs::write(&tmp_result, r#"{"status":"completed"}"#).unwrap();
        fs::rename(&tmp_result, spool.result_path("w", "b")).unwrap();
        idx.refresh();
        assert_eq!(idx.check(&deps), DepState::Ready);
        let g1 = idx.generation();
        idx.refresh();
        assert_eq!(idx.generation(), g1, "nothing changed");
    }
}
