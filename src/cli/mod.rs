//! What the five tools share at their edge: the parsers of flag and
//! environment values with their one error message (`values`), the table
//! of exit statuses and the one mapping from an error to a status
//! (`exit`), and the `--help` / `--version` / usage-error handling that
//! every `main` would otherwise repeat.

pub mod exit;
pub mod table;
pub mod values;

use crate::error::Error;

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
        Err(e) => Err(exit::report(
            tool,
            &Error::usage(format!("{e} (see --help)")),
        )),
    }
}
