//! Exit statuses, in one table, and the one function that maps an error to
//! its status (SPEC section 5). "No" (1) is not "broken" (64 and up).

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

/// What a tool's command line asks for: a run with these arguments, the
/// usage or the version.
pub enum Command<T> {
    Run(T),
    Help,
    Version,
}

/// The arguments to run with; or, for `--help`, `--version` and a command
/// line that does not parse, the status to exit with once the usage
/// (stdout), the version (stdout) or a one-line error (stderr) is printed.
pub fn command_line<T>(
    tool: &str,
    usage: &str,
    parsed: Result<Command<T>, lexopt::Error>,
) -> Result<T, std::process::ExitCode> {
    match parsed {
        Ok(Command::Run(args)) => Ok(args),
        Ok(Command::Help) => {
            print!("{usage}");
            Err(std::process::ExitCode::SUCCESS)
        }
        Ok(Command::Version) => {
            println!("{tool} {}", env!("CARGO_PKG_VERSION"));
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(e) => Err(report(tool, &Error::usage(format!("{e} (see --help)")))),
    }
}

/// Prints `tool: error` on stderr and gives the status to exit with.
pub fn report(tool: &str, error: &Error) -> std::process::ExitCode {
    eprintln!("{tool}: {error}");
    std::process::ExitCode::from(status(error))
}
