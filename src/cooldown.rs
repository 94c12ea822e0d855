//! The cool-down of model servers that failed: a small JSON file next to the run ledger
//! (`cooldown.json`), which every run on the machine reads before it routes and writes
//! when a server fails, so a batch's tasks — in one process or in many — do not each pay
//! the connection timeout of a server that is down.
//!
//! The file is replaced atomically (a temporary file renamed over it), so a reader sees
//! the old state or the new, never half. Two runs marking servers at the same instant may
//! lose one mark (the last rename wins): that costs one more timeout, never a wrong
//! result, so no lock is taken. A file that cannot be read or written is no cool-down at
//! all: a failure to record must never fail a run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::endpoint;

/// The file's name, in the ledger's directory.
pub const FILE_NAME: &str = "cooldown.json";

/// The cool-down state's place and length.
#[derive(Debug, Clone)]
pub struct Cooldowns {
    /// `None` when no place is known (no home directory): nothing cools.
    path: Option<PathBuf>,
    secs: u64,
}

/// One server passed over until `until` (seconds since the epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    until: u64,
    reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// By endpoint, redacted (no credentials are written down).
    servers: BTreeMap<String, Entry>,
}

impl Cooldowns {
    /// The cool-down file beside the ledger the configuration and environment name.
    pub fn beside_ledger(
        env: &dyn Fn(&str) -> Option<String>,
        settings: &crate::config::LedgerSettings,
        secs: u32,
    ) -> Self {
        let path = crate::ledger::locate_configured(env, settings.path.as_deref())
            .ok()
            .and_then(|ledger| ledger.parent().map(|dir| dir.join(FILE_NAME)));
        Self {
            path,
            secs: u64::from(secs),
        }
    }

    /// No cool-down at all (a run with its server given by the caller).
    pub fn none() -> Self {
        Self {
            path: None,
            secs: 0,
        }
    }

    /// Why `endpoint` is cooling down now, or `None` when it is not.
    pub fn cooling(&self, endpoint: &str) -> Option<String> {
        let state = self.read()?;
        let entry = state.servers.get(&key(endpoint))?;
        let left = entry.until.saturating_sub(now());
        (left > 0).then(|| {
            format!(
                "its server {} failed ({}) and cools down for {left} s more",
                key(endpoint),
                entry.reason
            )
        })
    }

    /// Puts `endpoint` on cool-down for the configured time because of `reason`.
    /// Best effort: a file that cannot be written leaves the server uncooled.
    pub fn mark(&self, endpoint: &str, reason: &str) {
        let Some(path) = &self.path else { return };
        if self.secs == 0 {
            return;
        }
        let mut state = self.read().unwrap_or_default();
        let now = now();
        state.servers.retain(|_, entry| entry.until > now);
        state.servers.insert(
            key(endpoint),
            Entry {
                until: now + self.secs,
                reason: reason.to_owned(),
            },
        );
        let _ = write(path, &state);
    }

    fn read(&self) -> Option<State> {
        let bytes = std::fs::read(self.path.as_ref()?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Servers are known by their endpoint without credentials, scheme and host's case and a
/// trailing slash aside.
fn key(endpoint: &str) -> String {
    endpoint::redact(endpoint.trim().trim_end_matches('/')).to_ascii_lowercase()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Replaces the file at `path` with `state`, atomically.
fn write(path: &Path, state: &State) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&serde_json::to_vec_pretty(state).unwrap_or_default())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_server_cools_for_every_reader_until_its_time_is_up() {
        let dir = tempfile::tempdir().expect("a directory");
        let one = Cooldowns {
            path: Some(dir.path().join(FILE_NAME)),
            secs: 60,
        };
        let other = one.clone();
        assert_eq!(other.cooling("http://h:1"), None);
        one.mark("http://H:1/", "connection refused");
        let why = other.cooling("http://h:1").expect("cooling");
        assert!(why.contains("connection refused"), "{why}");
        let expired = Cooldowns { secs: 0, ..one };
        expired.mark("http://h:2", "x");
        assert_eq!(expired.cooling("http://h:2"), None);
    }
}
