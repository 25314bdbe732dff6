//! The integration tests, one crate: each module tests one tool or one
//! concern against the real binaries (SPEC and the man pages), sharing
//! the harness of tests/common. One crate means the harness is compiled
//! once and the tests are linked once. tests/faults.rs stays a crate of
//! its own: it raises this process's limit of open files and floods the
//! machine, which the tests here must not share.
//!
//! `cargo test NAME` selects by `module::test_name`, e.g.
//! `cargo test hostile::` or `cargo test dlq::replay`.
// The tests call libc where nix has no wrapper (Cargo.toml denies
// unsafe code everywhere else but src/sys.rs).
#![allow(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;

mod claude;
mod claude_standin;
mod deploy;
mod dlq;
mod enqueue;
mod hardening;
mod hostile;
mod instances;
mod listen;
mod metrics;
mod migration;
mod operator;
mod smoke;
mod spare;
mod spool_names;
mod status;
mod worker_durability;
mod worker_failures;
mod worker_run;
mod worker_throughput;
