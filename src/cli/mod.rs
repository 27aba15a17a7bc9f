//! The command line (DESIGN section 13). Scripts depend on these interfaces, so their flags,
//! JSON shapes and exit codes are stable: 0 allowed / valid / within, 1 denied / invalid / not
//! within, 2 bad input. Errors go to stderr as one sentence that names the problem and the fix;
//! no panic or backtrace reaches a user.

mod check;
mod issuer;
mod mount;
mod run;
mod scopes;
mod token;

use clap::{Parser, Subcommand};

/// relayauth-mount: enforce relayauth scopes over a relayfile mirror.
#[derive(Debug, Parser)]
#[command(name = "relayauth-mount", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RELAYAUTH_MOUNT_COMMIT"), ")"), about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decide one requirement on one path against a scope set or a verified token.
    Check(check::CheckArgs),
    /// Validate scopes and compare scope sets.
    #[command(subcommand)]
    Scopes(scopes::ScopesCommand),
    /// Inspect relayauth access tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Mount the guarded view of a relayfile mirror.
    Mount(Box<mount::MountArgs>),
    /// Show a mount's session, expiry and decision counts.
    Status(mount::StatusArgs),
    /// Unmount a guarded view.
    Unmount(mount::UnmountArgs),
    /// Run a command (an agent) under its own token in a mount: it and everything it starts.
    Run(run::RunArgs),
    /// Run a command as a sub-agent with a child token of the caller's session (narrower).
    Delegate(run::DelegateArgs),
    /// Run a local development token issuer (not relayauth; not for production).
    DevIssuer(issuer::DevIssuerArgs),
}

pub use crate::failure::{Exit, Failure};

/// How a command that ran ended ([`Exit::Ok`] or [`Exit::No`]; bad input is a [`Failure`]).
pub type CliResult = Result<Exit, Failure>;

/// Parse the process arguments, run the command and return the exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let exit = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return exit.code();
        }
    };
    let outcome = match cli.command {
        Command::Run(args) => match run::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Delegate(args) => match run::delegate(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Check(args) => check::run(args),
        Command::Scopes(cmd) => scopes::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Mount(args) => mount::run_mount(*args),
        Command::Status(args) => mount::run_status(args),
        Command::Unmount(args) => mount::run_unmount(args),
        Command::DevIssuer(args) => issuer::run(args),
    };
    match outcome {
        Ok(exit) => exit.code(),
        Err(e) => {
            eprintln!("relayauth-mount: error: {e}");
            e.code()
        }
    }
}

/// Print a JSON value on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("relayauth-mount: error: cannot encode output: {e}"),
    }
}
