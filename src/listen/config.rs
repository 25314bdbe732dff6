//! hw-listen's configuration: every flag over its environment variable
//! over its default, validated in one place before anything starts.

use std::time::Duration;

use crate::agent::CommandLine;
use crate::cli::values::{duration, optional_duration, worker_names, Raw};
use crate::error::Result;
use crate::log::LogConfig;
use crate::spool::Spool;

/// The raw values of hw-listen's flags.
#[derive(Debug, Default)]
pub struct ListenFlags {
    pub root: Option<String>,
    pub workers: Option<String>,
    pub state_file: Option<String>,
    pub completion_timeout: Option<String>,
    pub stale_after: Option<String>,
    pub disconnect_after: Option<String>,
    pub exec: Option<String>,
    pub exec_timeout: Option<String>,
    pub retain: Option<String>,
    pub poll: Option<String>,
    pub once: bool,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// Everything hw-listen needs, validated.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub spool: Spool,
    /// The workers to follow; `None`: every worker found, now and later.
    pub workers: Option<Vec<String>>,
    pub completion_timeout: Duration,
    /// `None`: three of the heartbeat's own intervals.
    pub stale_after: Option<Duration>,
    /// `None`: ten of the heartbeat's own intervals.
    pub disconnect_after: Option<Duration>,
    pub exec: Option<CommandLine>,
    pub exec_timeout: Duration,
    pub once: bool,
    /// Read every folder again this often: on a file system shared by
    /// several hosts, inotify does not see the others' writes.
    pub poll: Option<Duration>,
    pub retain: Duration,
    pub log: LogConfig,
}

impl ListenConfig {
    pub fn resolve(f: &ListenFlags) -> Result<ListenConfig> {
        let root = Raw::pick(&f.root, "--root", None).map(|r| r.value.into());
        let mut spool = Spool::from_env(root);
        if let Some(raw) = Raw::pick(&f.state_file, "--state-file", None) {
            spool.state_file = raw.value.into();
        }
        let workers = match Raw::pick(&f.workers, "--workers", Some("WORKERS")) {
            None => None,
            Some(raw) => Some(worker_names(&raw)?).filter(|n| !n.is_empty()),
        };
        let exec = match Raw::pick(&f.exec, "--exec", None) {
            None => None,
            Some(raw) => Some(
                CommandLine::parse(&raw.value)
                    .ok_or_else(|| raw.invalid("an empty command or an open quote"))?,
            ),
        };
        let completion_timeout = Raw::pick(
            &f.completion_timeout,
            "--completion-timeout",
            Some("COMPLETION_TIMEOUT"),
        );
        let positive = |flag_value: &Option<String>, flag: &str| {
            optional_duration(Raw::pick(flag_value, flag, None), true)
        };
        Ok(ListenConfig {
            spool,
            workers,
            completion_timeout: duration(completion_timeout, 600.0, true)?,
            stale_after: positive(&f.stale_after, "--stale-after")?,
            disconnect_after: positive(&f.disconnect_after, "--disconnect-after")?,
            exec,
            exec_timeout: duration(
                Raw::pick(&f.exec_timeout, "--exec-timeout", None),
                30.0,
                true,
            )?,
            once: f.once,
            poll: positive(&f.poll, "--poll")?,
            retain: duration(Raw::pick(&f.retain, "--retain", None), 7.0 * 86_400.0, true)?,
            log: LogConfig::resolve(&f.log_level, &f.log_format)?,
        })
    }
}
