//! Reading relayfile's runtime files for the `/.relay` rules.
//!
//! Records (outbox, dead-letter, pending-delete) say which relayfile path they are about
//! (`remotePath` or `path`); an attention marker is about the path of its outbox record; a
//! conflict copy is stored at `conflicts/<path>.<revision>.local`. `state.json` and
//! `permissions-denied.log` are shown filtered to what the caller may see. Everything is read
//! through the mirror's descriptors, and anything that cannot be read or parsed counts as "about
//! no path", which hides it.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

use serde_json::{Map, Value};

use super::mirror::Mirror;

/// Records bigger than this are not parsed (and so stay hidden).
const MAX_RECORD: u64 = 1 << 20;

/// `state.json` and the denial log bigger than this are shown empty: each is read whole to be
/// filtered per caller, and relayfile keeps both far smaller.
const MAX_RUNTIME_FILE: u64 = 64 << 20;

fn read_small(mirror: &Mirror, fd: BorrowedFd<'_>, cap: u64) -> Option<Vec<u8>> {
    let f = mirror.inspect(fd).ok()?;
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= cap).then_some(buf)
}

fn record_path(bytes: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let p = v
        .get("remotePath")
        .or_else(|| v.get("path"))
        .and_then(Value::as_str)?;
    canonical(p).then(|| p.as_bytes().to_vec())
}

/// Whether a path named inside a record is canonical: absolute, with no empty, `.` or `..`
/// segment, no trailing `/` and no NUL. Anything else could be decided as one path and mean
/// another (`/slack/../github/x` against a `/slack/**` grant), so such a record is about no
/// path and stays hidden.
fn canonical(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && !p.contains('\0')
        && rest
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Walk `names` from the mirror root, never following a symlink.
fn walk(mirror: &Mirror, names: &[&str]) -> Option<std::os::fd::OwnedFd> {
    let mut cur: Option<std::os::fd::OwnedFd> = None;
    for n in names {
        let dir = match &cur {
            Some(fd) => fd.as_fd(),
            None => mirror.root(),
        };
        let (fd, _) = mirror.lookup(dir, OsStr::new(n)).ok()?;
        cur = Some(fd);
    }
    cur
}

/// The relayfile path a `/.relay` record is about. `rel` is the record's path below `/.relay`
/// (`outbox/pending/x.json`); `fd` is the record's own `O_PATH` descriptor.
pub fn record_target(
    mirror: &Mirror,
    rel: &str,
    fd: BorrowedFd<'_>,
    is_dir: bool,
) -> Option<Vec<u8>> {
    if let Some(inner) = rel.strip_prefix("conflicts/") {
        return conflict_target(inner, is_dir);
    }
    if is_dir {
        return None;
    }
    if let Some(marker) = rel.strip_prefix("outbox/attention/") {
        let id = marker.strip_suffix(".marker")?;
        let file = format!("{id}.json");
        return ["pending", "failed", "acked"].iter().find_map(|state| {
            let rec = walk(mirror, &[".relay", "outbox", state, &file])?;
            record_path(&read_small(mirror, rec.as_fd(), MAX_RECORD)?)
        });
    }
    record_path(&read_small(mirror, fd, MAX_RECORD)?)
}

/// `conflicts/linear/issues/ACME-12/issue.json.rev_228.local` is about
/// `/linear/issues/ACME-12/issue.json`; a directory `conflicts/linear` is about `/linear`.
fn conflict_target(inner: &str, is_dir: bool) -> Option<Vec<u8>> {
    if is_dir {
        return Some(format!("/{inner}").into_bytes());
    }
    let stem = inner.strip_suffix(".local")?;
    let cut = stem.rfind('.')?;
    let path = &stem[..cut];
    (!path.is_empty()).then(|| format!("/{path}").into_bytes())
}

/// The fields of `state.json` that say nothing about paths or other callers: the sync's own
/// health. Counters, revisions and per-path flags aggregate over every path (hidden ones too),
/// so they are dropped.
const STATE_KEEP: [&str; 9] = [
    "workspaceId",
    "mode",
    "syncMode",
    "intervalMs",
    "lastReconcileAt",
    "lastSuccessfulReconcileAt",
    "staleAfter",
    "status",
    "reconcileAgeSecs",
];

/// The members of `states` about the sync as a whole (not about any path).
const STATES_KEEP: [&str; 2] = ["stale", "offline"];

/// The members of a `providers` entry that say nothing about paths: which provider, and
/// whether it syncs.
const PROVIDER_KEEP: [&str; 2] = ["provider", "status"];

/// `state.json` reduced to what the caller may see: the status fields, the `files` entries for
/// visible paths, and the providers whose root the caller can see. Counters and host details,
/// which aggregate over hidden paths, are dropped.
pub fn filter_state(bytes: &[u8], visible: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
    let Ok(Value::Object(state)) = serde_json::from_slice::<Value>(bytes) else {
        return b"{}\n".to_vec();
    };
    let mut out = Map::new();
    for key in STATE_KEEP {
        if let Some(v) = state.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    if let Some(Value::Object(states)) = state.get("states") {
        out.insert(
            "states".to_owned(),
            Value::Object(keep(states, &STATES_KEEP)),
        );
    }
    if let Some(Value::Object(files)) = state.get("files") {
        let kept: Map<String, Value> = files
            .iter()
            .filter(|(path, _)| visible(path.as_bytes()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.insert("files".to_owned(), Value::Object(kept));
    }
    if let Some(Value::Array(providers)) = state.get("providers") {
        let kept: Vec<Value> = providers
            .iter()
            .filter(|p| {
                p.get("provider")
                    .and_then(Value::as_str)
                    .is_some_and(|name| visible(format!("/{name}").as_bytes()))
            })
            .filter_map(|p| {
                p.as_object()
                    .map(|o| Value::Object(keep(o, &PROVIDER_KEEP)))
            })
            .collect();
        out.insert("providers".to_owned(), Value::Array(kept));
    }
    let mut text =
        serde_json::to_vec_pretty(&Value::Object(out)).unwrap_or_else(|_| b"{}".to_vec());
    text.push(b'\n');
    text
}

fn keep(obj: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| obj.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect()
}

/// `permissions-denied.log` (`[RFC3339] ACTION /path: reason`) keeping lines about visible paths.
pub fn filter_denied_log(bytes: &[u8], visible: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split(|&b| b == b'\n') {
        let Some(path) = denied_line_path(line) else {
            continue;
        };
        if visible(path) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

fn denied_line_path(line: &[u8]) -> Option<&[u8]> {
    let close = line.iter().position(|&b| b == b']')?;
    let rest = line.get(close + 1..)?.strip_prefix(b" ")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let after = &rest[space + 1..];
    let end = after.windows(2).position(|w| w == b": ")?;
    let path = &after[..end];
    path.starts_with(b"/").then_some(path)
}

/// Read a whole small runtime file (state.json, the denial log).
pub fn read_runtime_file(mirror: &Mirror, fd: BorrowedFd<'_>) -> Vec<u8> {
    read_small(mirror, fd, MAX_RUNTIME_FILE).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_paths() {
        assert_eq!(
            conflict_target("linear/issues/ACME-12/issue.json.rev_228.local", false).unwrap(),
            b"/linear/issues/ACME-12/issue.json"
        );
        assert_eq!(
            conflict_target("linear/issues", true).unwrap(),
            b"/linear/issues"
        );
        assert!(conflict_target("x.local", false).is_none());
    }

    #[test]
    fn denied_log_filter() {
        let log = b"[2025-05-12T17:03:41Z] READ_DENIED /github/a.json: no\n[2025-05-13T16:47:55-04:00] WRITE_DENIED /slack/b.json: agent does not have write permission\ngarbage\n";
        let vis = |p: &[u8]| p.starts_with(b"/slack");
        let out = filter_denied_log(log, &vis);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[2025-05-13T16:47:55-04:00] WRITE_DENIED /slack/b.json: agent does not have write permission\n"
        );
    }

    #[test]
    fn state_filter_drops_hidden_paths_and_aggregates() {
        let state = br#"{"status": "ready", "localRoot": "/home/a", "pendingWriteback": 3,
            "lastAppliedRevision": "rev_99",
            "states": {"stale": false, "offline": false, "hasConflicts": true,
                       "hasPendingWriteback": true, "outboxNeedsAttention": true},
            "files": {"/github/a": {"revision": "1"}, "/slack/b": {"revision": "2"}},
            "providers": [{"provider": "github", "status": "ready"},
                          {"provider": "slack", "status": "ready", "lagSeconds": 3,
                           "deadLetteredOps": 1, "lastEventAt": "2025-05-14T07:41:10Z"}]}"#;
        let vis = |p: &[u8]| p.starts_with(b"/slack");
        let v: Value = serde_json::from_slice(&filter_state(state, &vis)).unwrap();
        assert_eq!(v["status"], "ready");
        for dropped in ["localRoot", "pendingWriteback", "lastAppliedRevision"] {
            assert!(v.get(dropped).is_none(), "{dropped}");
        }
        assert_eq!(
            v["states"],
            serde_json::json!({"stale": false, "offline": false})
        );
        assert_eq!(v["files"].as_object().unwrap().len(), 1);
        assert!(v["files"].get("/slack/b").is_some());
        assert_eq!(
            v["providers"],
            serde_json::json!([{"provider": "slack", "status": "ready"}])
        );
    }

    #[test]
    fn record_targets_must_be_canonical() {
        for good in ["/slack/a.json", "/github/repos/a b/x", "/x"] {
            assert!(canonical(good), "{good}");
        }
        for bad in [
            "slack/a",
            "/",
            "/slack/../github/x",
            "/slack/./x",
            "/slack//x",
            "/slack/x/",
            "/..",
            "/a\0b",
        ] {
            assert!(!canonical(bad), "{bad}");
            let rec = serde_json::json!({ "remotePath": bad }).to_string();
            assert!(record_path(rec.as_bytes()).is_none(), "{bad}");
        }
    }
}
