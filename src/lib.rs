//! hookwatch: a file-spool job queue for coordinating AI agent workers.
//!
//! The spool is a folder tree (see `spool` and hookwatch(5)): producers
//! drop JSON task files into `tasks/<worker>/`; a worker daemon claims each
//! one (flock, then rename into `.active/`), runs the agent command, and
//! publishes a result, a deferred retry or a dead letter, each written
//! atomically. Everything is plain files, so shell tools are first-class
//! clients. The binaries in `src/bin` are thin: they parse arguments and
//! call into these modules.

pub mod breaker;
pub mod claim;
pub mod clock;
pub mod commit;
pub mod config;
pub mod deps;
pub mod dlq;
pub mod dlq_admin;
pub mod enqueue;
pub mod error;
pub mod event;
pub mod exit;
pub mod heartbeat;
pub mod http;
pub mod latch;
pub mod listen;
pub mod listen_state;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod publish;
pub mod queue;
pub mod result;
pub mod retry;
pub mod run;
pub mod spool;
pub mod status;
pub mod task;
pub mod wait;
pub mod watch;
pub mod worker;
