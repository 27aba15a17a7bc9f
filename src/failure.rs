//! How a command ends when it does not succeed: a sentence for the user and an exit code.
//!
//! The exit codes are a stable interface (scripts depend on them, DESIGN section 13), so they
//! are named here once: [`Exit`]. The daemon and the CLI report failures with the same type.

use std::fmt;

/// The exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Exit {
    /// Allowed, valid, within; or the command did what it was asked.
    Ok = 0,
    /// Denied, invalid, not within; or the command ran and could not do it (a mount that
    /// failed, a mount that is not there).
    No = 1,
    /// Bad input: a flag, file or value that cannot be used as given.
    Usage = 2,
    /// A foreground mount whose own session ended (revoked, expired, refused): it unmounted.
    SessionEnded = 3,
    /// `run`: the command was found but could not be executed (as shells report it).
    CannotExecute = 126,
    /// `run`: the command was not found (as shells report it).
    CommandNotFound = 127,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The answer to a yes/no question (`check`, `scopes contains`, ...).
    pub fn answer(yes: bool) -> Exit {
        if yes { Exit::Ok } else { Exit::No }
    }

    /// The exit a daemon reported by number (its parent prints the report and exits so).
    pub fn from_code(code: i64) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Usage,
            3 => Exit::SessionEnded,
            _ => Exit::No,
        }
    }
}

/// A command's failure: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    /// Bad input ([`Exit::Usage`]).
    pub fn input(message: impl Into<String>) -> Failure {
        Failure {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// The command ran and could not do what it was asked ([`Exit::No`]).
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            exit: Exit::No,
            message: message.into(),
        }
    }

    pub fn code(&self) -> i32 {
        self.exit.code()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
