//! Exit statuses, in one table, and the one function that maps an error to
//! its status (each tool's EXIT STATUS). "No" (1) is not "broken" (64 and up).

use crate::error::{Error, Kind};

pub const OK: u8 = 0;
/// The asked-for thing failed (a task failed, a check said no).
pub const FAILED: u8 = 1;
pub const USAGE: u8 = 64;
pub const DATA_ERR: u8 = 65;
pub const NO_INPUT: u8 = 66;
pub const UNAVAILABLE: u8 = 69;
pub const CANT_CREATE: u8 = 73;
pub const IO_ERR: u8 = 74;
pub const TEMP_FAIL: u8 = 75;
pub const CONFIG: u8 = 78;
/// A wait timed out (timeout(1)'s status).
pub const TIMED_OUT: u8 = 124;

pub fn status(error: &Error) -> u8 {
    match error.kind {
        Kind::Usage => USAGE,
        Kind::Data => DATA_ERR,
        Kind::NotFound => NO_INPUT,
        Kind::Unavailable => UNAVAILABLE,
        Kind::CannotCreate => CANT_CREATE,
        Kind::Io => IO_ERR,
        Kind::TempFail => TEMP_FAIL,
        Kind::Config => CONFIG,
    }
}

/// Prints `tool: error` on stderr and gives the status to exit with.
pub fn report(tool: &str, error: &Error) -> std::process::ExitCode {
    eprintln!("{tool}: {error}");
    std::process::ExitCode::from(status(error))
}
