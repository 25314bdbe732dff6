//! Why an attempt failed: the one class each failed attempt gets, in the
//! result's `error`, the dead letter, the log and
//! `watcher_tasks_failed_total{reason}` (hw-worker(8), Running the
//! command), and what each class does to the task and the worker.

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
        /// It hit `--max-memory` or `--max-cpu`.
        ResourceLimit = "resource_limit",
        /// The account's usage or rate limit: the worker pauses.
        RateLimited = "rate_limited",
        /// The CLI's credentials are missing or expired: the worker pauses.
        AuthFailed = "auth_failed",
        /// `error_max_turns`, `error_max_budget_usd`: the same task would
        /// fail the same way, so it is not tried again.
        NotRetryable = "not_retryable",
        /// The API is overloaded (529): retried like any failure.
        Overloaded = "overloaded",
        /// A pending file the worker may not open or lock (another user's
        /// 0600 file): set aside, not attempted; counted once.
        Unreadable = "unreadable",
    }
}

impl FailureClass {
    /// The account, not the task, is at fault: no attempt is charged, the
    /// breaker is not fed, and the worker pauses.
    pub fn pauses(self) -> Option<PauseReason> {
        match self {
            FailureClass::RateLimited => Some(PauseReason::RateLimited),
            FailureClass::AuthFailed => Some(PauseReason::AuthFailed),
            _ => None,
        }
    }
}

words! {
    /// Why a worker claims nothing for a while: its heartbeat's
    /// `paused_reason`.
    pub enum PauseReason {
        /// A usage or rate limit, until the reset time the CLI gave.
        RateLimited = "rate_limited",
        /// A login to mend; one task probes it now and then.
        AuthFailed = "auth_failed",
        /// `--daily-budget-usd` spent, until the next UTC day.
        Budget = "budget",
    }
}
