//! The state directory (`--state DIR`): what makes a restart keep keys, identities, sessions,
//! revocations and the audit trail.
//!
//! Layout, every file mode 0600 and the directory 0700 (the keys are private keys, and the
//! state names every live session):
//!
//! - `keys/rs256.pem`, `keys/ed25519.pem`: the signing keys, unencrypted PKCS#8 PEM.
//! - `state.json`: identities, sessions and token records (with their revocations), rewritten
//!   atomically (temp file, fsync, rename) after every change, before the answer is sent.
//! - `audit.jsonl`: the audit trail, one entry per line, append-only.
//! - `.lock`: held (flock) while an issuer runs, so two issuers never share one directory.
//!
//! A `state.json` that cannot be read stops the start with an error rather than being replaced:
//! silently starting empty would forget revocations. A torn last line of `audit.jsonl` (a crash
//! mid-append) is skipped with a warning.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::error::StartError;
use super::store::Store;

const STATE_FILE: &str = "state.json";
const AUDIT_FILE: &str = "audit.jsonl";
const LOCK_FILE: &str = ".lock";
pub(crate) const KEYS_DIR: &str = "keys";

/// An opened, locked state directory.
#[derive(Debug)]
pub(crate) struct StateDir {
    root: PathBuf,
    _lock: File,
}

fn state_error(path: &Path, message: impl Into<String>) -> StartError {
    StartError::State {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Create `dir` (mode 0700) when missing; refuse anything that is not a directory.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}

impl StateDir {
    /// Open (creating when missing) and lock `root`.
    pub fn open(root: &Path) -> Result<StateDir, StartError> {
        ensure_dir(root).map_err(|e| state_error(root, e.to_string()))?;
        ensure_dir(&root.join(KEYS_DIR)).map_err(|e| state_error(root, e.to_string()))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| state_error(&lock_path, e.to_string()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                state_error(
                    root,
                    "another dev-issuer is using this directory; stop it or pick another --state",
                )
            },
        )?;
        Ok(StateDir {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The text of `name`, or `None` when it does not exist.
    pub fn read_optional(&self, name: &str) -> Result<Option<String>, StartError> {
        let path = self.path(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(state_error(&path, e.to_string())),
        }
    }

    /// Replace `name` atomically with `bytes`, mode 0600.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp"));
        {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // An existing temp file keeps its old mode under O_CREAT: set it explicitly.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()
    }

    /// Append `bytes` to `name` (created mode 0600) and sync it.
    pub fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.path(name))?;
        f.write_all(bytes)?;
        f.sync_data()
    }
}

/// Keeps the state directory in step with the in-memory store.
#[derive(Debug)]
pub(crate) struct Persister {
    dir: StateDir,
    /// How many audit entries are already in `audit.jsonl`. The mutex also orders flushes, so a
    /// later snapshot is never overwritten by an earlier one.
    audit_written: Mutex<usize>,
}

impl Persister {
    /// Load the store from `dir` (empty when the directory is new).
    pub fn load(dir: StateDir) -> Result<(Persister, Store), StartError> {
        let mut store = match dir.read_optional(STATE_FILE)? {
            Some(text) => Store::from_snapshot(&text).map_err(|e| {
                state_error(
                    &dir.path(STATE_FILE),
                    format!(
                        "cannot be read ({e}); move it away to start empty (revocations in it would be forgotten)"
                    ),
                )
            })?,
            None => Store::default(),
        };
        if let Some(text) = dir.read_optional(AUDIT_FILE)? {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let last = lines.len().saturating_sub(1);
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str(line) {
                    Ok(entry) => store.audit.restore(entry),
                    Err(e) if i == last => eprintln!(
                        "relayauth-mount dev-issuer: warning: skipping the torn last line of {}: {e}",
                        dir.path(AUDIT_FILE).display()
                    ),
                    Err(e) => {
                        return Err(state_error(
                            &dir.path(AUDIT_FILE),
                            format!("line {} is not an audit entry: {e}", i + 1),
                        ));
                    }
                }
            }
        }
        let written = store.audit.len();
        Ok((
            Persister {
                dir,
                audit_written: Mutex::new(written),
            },
            store,
        ))
    }

    /// Write the store's current state and the audit entries not yet on disk. Blocking I/O:
    /// call it off the async workers.
    pub fn flush(&self, store: &Mutex<Store>) -> io::Result<()> {
        let mut written = self.audit_written.lock();
        let (snapshot, lines, total) = {
            let store = store.lock();
            (
                store.snapshot_json()?,
                store.audit.lines_from(*written)?,
                store.audit.len(),
            )
        };
        self.dir.write_atomic(STATE_FILE, snapshot.as_bytes())?;
        if !lines.is_empty() {
            self.dir.append(AUDIT_FILE, lines.as_bytes())?;
        }
        *written = total;
        Ok(())
    }
}
