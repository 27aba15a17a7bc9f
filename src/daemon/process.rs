//! The daemon as a process: its open-file limit, mount-table lookups, forking into the
//! background with a report to the parent, its log.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Exit, Failure, control, fail};
use crate::audit::AuditLog;

/// The kernel's default `fs.nr_open`: the most descriptors a process may be allowed.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// Raise the soft limit on open files to the hard limit (a mount serves many files at once),
/// and return the limit in force.
pub(super) fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let soft = now.current.unwrap_or(u64::MAX);
    // The kernel refuses more than fs.nr_open (1,048,576 by default), even under an
    // "unlimited" hard limit.
    let target = hard.min(NR_OPEN_DEFAULT);
    if soft < target
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: now.maximum,
            },
        )
        .is_ok()
    {
        return target;
    }
    soft
}

/// How many `O_PATH` descriptors the inode table may hold under an open-file limit: a quarter
/// of it, leaving the rest for open files, staging, sockets and the token, between
/// [`MIN_HELD`](crate::fs::inode::MIN_HELD) and [`MAX_HELD`].
pub fn held_descriptor_budget(limit: u64) -> usize {
    (limit / 4).clamp(crate::fs::inode::MIN_HELD as u64, MAX_HELD) as usize
}

/// The most descriptors the inode table holds, however high the limit: enough for the working
/// set of a large tree (a dropped descriptor is found again by name), and each one costs
/// kernel memory.
const MAX_HELD: u64 = 16_384;

/// Is `path` a mount point (per `/proc/self/mountinfo`)?
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.as_os_str().to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == target)
    })
}

pub(super) fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Where the daemon tells the starting command how the start went.
pub(super) struct Reporter {
    pub(super) pipe: Option<File>,
}

impl Reporter {
    pub(super) fn ready(&mut self, summary: &str) {
        match self.pipe.take() {
            Some(mut p) => {
                let _ = writeln!(p, "{}", json!({"ok": true, "summary": summary}));
            }
            None => {
                println!("{summary}");
                let _ = std::io::stdout().flush();
            }
        }
    }

    pub(super) fn failed(&mut self, f: &Failure) {
        if let Some(mut p) = self.pipe.take() {
            let _ = writeln!(
                p,
                "{}",
                json!({"ok": false, "code": f.code(), "error": f.message})
            );
        }
    }
}

/// Fork into the background. In the parent: wait for the child's report, print it and give
/// `Ok(Err(exit code))`. In the child: `Ok(Ok(pipe))`, the pipe to report on.
pub(super) fn daemonize(log: &Path) -> Result<Result<File, Exit>, Failure> {
    let (read_end, write_end) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(ends) => ends,
        Err(e) => return fail(Exit::No, format!("cannot create a pipe: {e}")),
    };
    // SAFETY: fork(2) before any thread of this process exists (the command line was parsed,
    // nothing else started); the child only continues single-threaded code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(
            Exit::No,
            format!("cannot fork: {}", std::io::Error::last_os_error()),
        );
    }
    if pid > 0 {
        drop(write_end);
        let mut text = String::new();
        let _ = File::from(read_end).read_to_string(&mut text);
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
            eprintln!(
                "relayauth-mount: the daemon stopped before reporting; see its log at {}",
                log.display()
            );
            return Ok(Err(Exit::No));
        };
        if msg["ok"] == true {
            println!("{}", msg["summary"].as_str().unwrap_or(""));
            println!("daemon pid {pid}; log {}", log.display());
            return Ok(Err(Exit::Ok));
        }
        eprintln!(
            "relayauth-mount: {}",
            msg["error"]
                .as_str()
                .unwrap_or("the daemon failed to start")
        );
        return Ok(Err(Exit::from_code(msg["code"].as_i64().unwrap_or(1))));
    }
    drop(read_end);
    // The child: its own session, no terminal, stdio to the log.
    let _ = rustix::process::setsid();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/null"));
    let null = std::fs::File::open("/dev/null");
    if let (Ok(out), Ok(null)) = (out, null) {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&out);
        let _ = rustix::stdio::dup2_stderr(&out);
    }
    let _ = std::env::set_current_dir("/");
    Ok(Ok(File::from(write_end)))
}

/// The daemon's log file when it runs in the background.
pub(super) fn daemon_log(mountpoint: &Path) -> PathBuf {
    let base = AuditLog::default_path()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("/tmp/relayauth-mount"));
    let name = control::socket_path(mountpoint);
    let stem = name
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.join(format!("daemon-{stem}.log"))
}

/// Log to stderr (the log file in the background) through a writer thread: a FUSE handler
/// never blocks on the log, even when nothing reads stderr. Under a flood of messages the
/// oldest unwritten lines are dropped rather than stall the mount (the audit log, not this,
/// is the record of decisions). Keep the guard until exit: dropping it writes out the rest.
pub(super) fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAYAUTH_MOUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer)
        .with_target(false)
        .try_init();
    guard
}
