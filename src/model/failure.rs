//! Why an attempt failed: the class each failed attempt gets, as
//! `watcher_tasks_failed_total{reason}` counts it (hw-worker(8), Running the command).

use crate::model::words;

words! {
    /// The class of a failed attempt.
    pub enum FailureClass {
        /// The agent exited with a status other than 0.
        ExitStatus = "exit_status",
        /// It ran longer than its timeout (exit code 124).
        Timeout = "timeout",
        /// The command could not be started (126, 127).
        SpawnFailed = "spawn_failed",
        /// The agent exited 0 but reported an error in its JSON.
        AgentReportedError = "agent_reported_error",
        /// Its worker died while it ran (found by recovery).
        Interrupted = "interrupted",
    }
}
