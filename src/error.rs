//! The one error type of hookwatch. An error says what failed (`op`), on
//! which path, and why, so that a binary can print it as one line and map
//! it to an exit status (see `exit`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure this is; decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The command line is wrong (64).
    Usage,
    /// Input data is wrong (65).
    Data,
    /// No such task or file (66).
    NotFound,
    /// A service could not start (69).
    Unavailable,
    /// Something cannot be created, e.g. it exists already (73).
    CannotCreate,
    /// An I/O error (74).
    Io,
    /// Busy now, try again later (75).
    TempFail,
    /// A configuration value is wrong (78).
    Config,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    op: String,
    path: Option<PathBuf>,
    to: Option<PathBuf>,
    source: Option<io::Error>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O failure of `op` on `path`.
    pub fn io(op: &str, path: &Path, source: io::Error) -> Error {
        let kind = match source.kind() {
            _ if vanished(&source) => Kind::NotFound,
            io::ErrorKind::AlreadyExists => Kind::CannotCreate,
            _ => Kind::Io,
        };
        Error {
            kind,
            op: op.to_string(),
            path: Some(path.to_path_buf()),
            to: None,
            source: Some(source),
        }
    }

    /// A failure of an operation on no path (a pipe, a thread, a signal
    /// handler): `op: cause`.
    pub fn os(op: &str, source: io::Error) -> Error {
        Error {
            path: None,
            ..Error::io(op, Path::new(""), source)
        }
    }

    /// A failure of an operation that moves `from` to `to`.
    pub fn io2(op: &str, from: &Path, to: &Path, source: io::Error) -> Error {
        Error {
            to: Some(to.to_path_buf()),
            ..Error::io(op, from, source)
        }
    }

    /// A failure described by a message alone.
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            op: message.into(),
            path: None,
            to: None,
            source: None,
        }
    }

    pub fn config(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, message)
    }

    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }

    pub fn with_kind(mut self, kind: Kind) -> Error {
        self.kind = kind;
        self
    }

    /// The underlying I/O error, when there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }

    /// True for an error that no wait will mend: a name the file system
    /// refuses, a path through something that is not a folder.
    pub fn is_permanent(&self) -> bool {
        let code = self.source.as_ref().and_then(|e| e.raw_os_error());
        use nix::libc::{EINVAL, EISDIR, ELOOP, ENAMETOOLONG, ENOTDIR, EXDEV};
        matches!(
            code,
            Some(ENAMETOOLONG | EINVAL | ELOOP | ENOTDIR | EISDIR | EXDEV)
        )
    }

    /// True for a full disk or quota: the spool's fault, not the task's.
    pub fn is_no_space(&self) -> bool {
        let code = self.source.as_ref().and_then(|e| e.raw_os_error());
        matches!(code, Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op)?;
        if let Some(path) = &self.path {
            write!(f, " {}", path.display())?;
        }
        if let Some(to) = &self.to {
            write!(f, " to {}", to.display())?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {}", strip_os_error(source))?;
        }
        Ok(())
    }
}

/// The file is gone: ENOENT, or ESTALE, what a network file system
/// (NFS, GlusterFS, CephFS) says of a file another host removed or
/// replaced while this one still held its name or handle. Either way the
/// entry is not there to act on: skip it, or look again.
pub fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ESTALE)
}

/// `No such file or directory (os error 2)` reads better without the number.
fn strip_os_error(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
