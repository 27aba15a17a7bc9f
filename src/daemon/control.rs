//! The mount's control socket: `status`, `unmount` and `run` talk to the daemon through it.
//!
//! One Unix socket per mount, in a private runtime directory (mode 0700), named after a hash of
//! the canonical mountpoint so any command given the mountpoint finds it. Requests and answers
//! are one JSON object per line. Every connection's peer is checked with `SO_PEERCRED`: only the
//! daemon's own user (or root) is answered, and a registration is always of the peer process
//! itself (the pid a request names must be the peer's), never of a pid someone else chose.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A request on the control socket: one JSON object per line, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The mount's session, expiry and decision counts.
    Status,
    /// Unmount and stop the daemon.
    Unmount,
    /// Make the sending process (and every descendant) act under `token`. `pid` is the
    /// sender's own pid: the daemon refuses the request unless the socket's peer is that very
    /// process.
    Register { token: String, pid: u32 },
    /// Replace the token of the session the sender registered (it must be that session's
    /// root process, its `run`) with `token`, a refreshed token of the same relayauth session.
    Renew { token: String, pid: u32 },
    /// Obtain a child token of the session the sending process acts under, with `scopes`
    /// (which must be within it), for the agent `agent`, and register the sender under it.
    Delegate {
        agent: String,
        scopes: Vec<String>,
        ttl_secs: Option<u64>,
        pid: u32,
    },
}

impl Request {
    /// This request as sent by the process `pid` (for the requests that name their sender).
    pub fn from(&self, pid: u32) -> Request {
        let mut r = self.clone();
        match &mut r {
            Request::Register { pid: p, .. }
            | Request::Renew { pid: p, .. }
            | Request::Delegate { pid: p, .. } => *p = pid,
            Request::Status | Request::Unmount => {}
        }
        r
    }

    /// A request line as the daemon reads it: anything else is refused with the reason.
    pub fn parse(line: &str) -> Result<Request, String> {
        serde_json::from_str(line).map_err(|e| {
            format!(
                "bad request ({e}); send {{\"op\":\"status\"}}, {{\"op\":\"unmount\"}} or \
                 {{\"op\":\"register\",\"token\":...,\"pid\":...}}, \
                 {{\"op\":\"renew\",\"token\":...,\"pid\":...}} or \
                 {{\"op\":\"delegate\",\"agent\":...,\"scopes\":[...],\"pid\":...}}"
            )
        })
    }
}

/// Where control sockets live: `/run/relayauth-mount` for root, else
/// `$XDG_RUNTIME_DIR/relayauth-mount`, else `/tmp/relayauth-mount-<uid>`.
pub fn runtime_dir() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    if uid == 0 && Path::new("/run").is_dir() {
        return PathBuf::from("/run/relayauth-mount");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("relayauth-mount"),
        None => PathBuf::from(format!("/tmp/relayauth-mount-{uid}")),
    }
}

/// The canonical form of a mountpoint path (without touching a possibly hung mount: only the
/// parent is resolved).
pub fn canonical_mountpoint(mountpoint: &Path) -> PathBuf {
    let abs = if mountpoint.is_absolute() {
        mountpoint.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(mountpoint)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The control socket of the mount at `mountpoint`.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let canon = canonical_mountpoint(mountpoint);
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canon.as_os_str().as_encoded_bytes(),
    );
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    runtime_dir().join(format!("{hex}.sock"))
}

/// Send one request to the daemon of `mountpoint` and read its answer.
pub fn request(mountpoint: &Path, req: &Request) -> Result<Value, String> {
    let path = socket_path(mountpoint);
    let mut stream = UnixStream::connect(&path).map_err(|e| not_answering(mountpoint, &e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("cannot talk to the daemon: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("the daemon's answer is not JSON: {e}"))
}

/// The relayauth-mount mounts of this user (as this process's mount namespace shows them),
/// by mountpoint: the FUSE mounts of `/proc/self/mountinfo` with a control socket of this
/// user's runtime directory.
pub fn mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    fuse_mounts_in(&info)
        .into_iter()
        .filter(|m| socket_path(m).exists())
        .collect()
}

/// The mountpoints of FUSE filesystems (type `fuse` or `fuse.*`) in a mountinfo text.
fn fuse_mounts_in(info: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let at = fields.get(4)?;
            let fstype = fields.get(dash + 1)?;
            (*fstype == "fuse" || fstype.starts_with("fuse."))
                .then(|| PathBuf::from(unescape_mountinfo(at)))
        })
        .collect()
}

/// A mountinfo path: spaces, tabs, newlines and backslashes are written as octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(digits, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why nothing answers for `mountpoint`, with what to do: the mount it is inside, the mounts
/// there are, or how to take a dead mount down.
fn not_answering(mountpoint: &Path, e: &std::io::Error) -> String {
    let mp = canonical_mountpoint(mountpoint);
    let all = mounts();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if all.contains(&mp) || fuse_mounts_in(&info).contains(&mp) {
        return format!(
            "the relayauth-mount daemon of {} does not answer ({e}); if it was killed, \
             `relayauth-mount unmount {}` takes the dead mount down",
            mp.display(),
            mp.display()
        );
    }
    if let Some(above) = all
        .iter()
        .filter(|m| mp.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
    {
        return format!(
            "{} is inside the relayauth-mount mount at {}; ask about that: \
             `relayauth-mount status {}`",
            mp.display(),
            above.display(),
            above.display()
        );
    }
    if all.is_empty() {
        format!(
            "{} is not a relayauth-mount mountpoint, and there is no relayauth-mount mount here \
             (start one with `relayauth-mount mount SOURCE MOUNTPOINT ...`)",
            mp.display()
        )
    } else {
        let list: Vec<String> = all.iter().map(|m| m.display().to_string()).collect();
        format!(
            "{} is not a relayauth-mount mountpoint; the mounts here are: {}",
            mp.display(),
            list.join(", ")
        )
    }
}

/// An error answer.
pub fn error(message: impl Into<String>) -> Value {
    json!({"ok": false, "error": message.into()})
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuse_mounts_are_found_in_mountinfo_with_escaped_paths() {
        let info = "36 35 0:40 / /tmp/a\\040b rw,nosuid - fuse /src rw\n\
                    37 35 0:41 / /tmp/other rw - ext4 /dev/x rw\n\
                    38 35 0:42 / /m rw shared:1 - fuse.relayauth-mount /s rw,user_id=0\n";
        assert_eq!(
            super::fuse_mounts_in(info),
            vec![
                std::path::PathBuf::from("/tmp/a b"),
                std::path::PathBuf::from("/m")
            ]
        );
    }

    use super::*;

    #[test]
    fn requests_are_a_closed_set() {
        assert_eq!(Request::parse(r#"{"op":"status"}"#), Ok(Request::Status));
        assert_eq!(Request::parse(r#"{"op":"unmount"}"#), Ok(Request::Unmount));
        for bad in [
            r#"{"op":"Status"}"#,
            r#"{"op":"shutdown"}"#,
            r#"{}"#,
            "status",
            "",
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert!(e.contains("\"op\":\"status\""), "{bad}: {e}");
        }
        assert_eq!(
            serde_json::to_string(&Request::Unmount).unwrap(),
            r#"{"op":"unmount"}"#
        );
        assert_eq!(
            Request::parse(r#"{"op":"register","token":"t","pid":7}"#),
            Ok(Request::Register {
                token: "t".into(),
                pid: 7
            })
        );
        assert_eq!(
            Request::parse(r#"{"op":"renew","token":"t","pid":7}"#),
            Ok(Request::Renew {
                token: "t".into(),
                pid: 7
            })
        );
        for bad in [
            r#"{"op":"renew","token":"t"}"#,
            r#"{"op":"register","token":"t"}"#,
            r#"{"op":"register","token":"t","pid":-1}"#,
            r#"{"op":"register","token":"t","pid":7,"root":1}"#,
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
    }
}
