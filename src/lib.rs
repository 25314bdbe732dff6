//! hookwatch: a file-spool job queue for coordinating AI agent workers.
//!
//! The spool is a folder tree (hookwatch(5)): producers drop JSON task
//! files into `tasks/<worker>/`; a worker daemon claims each one (flock,
//! then rename into `.active/`), runs the agent command, and publishes a
//! result, a deferred retry or a dead letter, each written atomically.
//! Everything is plain files, so shell tools are first-class clients. The
//! binaries in `src/bin` are thin: they parse arguments and call in here.
//!
//! The modules in layers, each using only those listed before it:
//!
//! 1. foundations: `error`, `clock`, `sys` (the system calls nix lacks), `latch`,
//!    `log`;
//! 2. `spool`: where things live (`names`, the layout), how they are
//!    written (`publish`, `commit`) and claimed (`claim`);
//! 3. `model`: the records (task, result, heartbeat, dead letter, event)
//!    and the words they use, as enums;
//! 4. `cli`: the values of flags and variables, exit statuses;
//! 5. `agent`: the command for a task, one attempt of it;
//! 6. `dlq`: dead letters on disk and hw-dlq's work on them;
//! 7. the tools: `worker` (hw-worker), `listen` (hw-listen), `enqueue`
//!    and `wait` (hw-enqueue), `status` (hw-status).

pub mod clock;
pub mod error;
pub(crate) mod latch;
pub mod log;
mod sys;

pub mod spool;

pub mod model;

pub mod cli;

pub(crate) mod agent;

pub mod dlq;

pub mod enqueue;
pub mod listen;
pub mod status;
pub mod wait;
pub mod worker;

#[cfg(test)]
mod layers {
    //! The order above is checked: no module imports one of a later
    //! layer, so no two import each other in a loop across layers.

    use std::path::Path;

    const LAYERS: [&[&str]; 11] = [
        &["error"],
        &["clock"],
        &["sys"],
        &["latch"],
        &["log"],
        &["spool"],
        &["model"],
        &["cli"],
        &["agent"],
        &["dlq"],
        &["worker", "listen", "enqueue", "wait", "status"],
    ];

    fn layer(module: &str) -> usize {
        LAYERS
            .iter()
            .position(|l| l.contains(&module))
            .unwrap_or_else(|| panic!("module {module} is in no layer"))
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.ends_with("bin") {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// A module may use its own parts and the modules of earlier layers;
    /// the tools of the last layer do not use each other.
    #[test]
    fn no_module_imports_its_own_layer_or_a_later_one() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut wrong = Vec::new();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap();
            let top = rel.iter().next().unwrap().to_string_lossy();
            let own = top.trim_end_matches(".rs");
            if own == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for used in text.split("crate::").skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != own && layer(&name) >= layer(own) {
                    wrong.push(format!("{} uses crate::{name}", rel.display()));
                }
            }
        }
        assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
    }
}
