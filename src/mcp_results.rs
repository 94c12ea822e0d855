//! The documents the MCP server's runs ended with, kept by run id (or batch id) in the
//! repository's state directory (`<git dir>/execute-local-task/mcp-results/<id>.json`),
//! so that `get_run` still answers with a finished run's result after the server
//! restarted — a client that timed out, or was restarted itself, asks a new server.
//!
//! A document is kept before the server says the run ended, so whatever a `get_run`
//! answered `done` for, a later server finds too. Failing to keep one costs only that
//! later answer: the run's writes and journal are unaffected. The newest
//! [`MCP_RESULTS_KEPT`](crate::defaults::MCP_RESULTS_KEPT) are kept per repository.
//! What remains: a run whose server was killed outright (SIGKILL) never ended, so it has
//! no document here; its journal still lets `rollback` undo it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch::BatchSummary;
use crate::document::{Body, Document};
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::result::TaskResult;

const DIR: &str = "mcp-results";

/// One kept document, with what its answer needs besides its JSON.
#[derive(Serialize, Deserialize)]
struct Kept<D> {
    version: u32,
    exit_code: u8,
    stderr: Vec<String>,
    document: D,
}

/// Whether `id` is a run's or a batch's id, and so safe as a file name.
fn valid_id(id: &str) -> bool {
    crate::spec::valid_task_id(id) || crate::batch::valid_batch_id(id)
}

fn dir_of(repo_dir: &Path) -> Result<PathBuf> {
    Ok(Repo::discover(repo_dir)?.state_dir().join(DIR))
}

/// Keeps `document` as the end of run `id` of the repository at `repo_dir`, whole or not
/// at all (a new file renamed into place), and removes the oldest beyond the limit.
pub fn keep(repo_dir: &Path, id: &str, document: &Document) -> Result<()> {
    if !valid_id(id) {
        return Err(Error::Usage(format!("`{id}` is not a run id")));
    }
    let dir = dir_of(repo_dir)?;
    std::fs::create_dir_all(&dir).map_err(|error| Error::io("create directory", &dir, error))?;
    let kept = Kept {
        version: 1,
        exit_code: document.exit_code,
        stderr: document.stderr.clone(),
        document: &document.json,
    };
    let text = serde_json::to_vec_pretty(&kept).unwrap_or_default();
    let temp = dir.join(format!(".{id}.tmp"));
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&temp, text).map_err(|error| Error::io("write", &temp, error))?;
    std::fs::rename(&temp, &path).map_err(|error| Error::io("rename", &path, error))?;
    remove_oldest(&dir);
    Ok(())
}

/// The document run `id` of the repository at `repo_dir` ended with, if one was kept.
pub fn find(repo_dir: &Path, id: &str) -> Option<Document> {
    if !valid_id(id) {
        return None;
    }
    let path = dir_of(repo_dir).ok()?.join(format!("{id}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    let kept: Kept<Value> = serde_json::from_str(&text).ok()?;
    // Typed again, so the answer's fields come in the order the command line prints them.
    let json = serde_json::from_value::<TaskResult>(kept.document.clone())
        .map(Body::Result)
        .or_else(|_| serde_json::from_value::<BatchSummary>(kept.document.clone()).map(Body::Batch))
        .unwrap_or(Body::Value(kept.document));
    Some(Document {
        json,
        exit_code: kept.exit_code,
        stderr: kept.stderr,
    })
}

/// Removes the oldest kept documents beyond the limit. Ids sort by their start time (a
/// batch's after its `batch-` prefix).
fn remove_oldest(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| Path::new(name).extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort_by(|a, b| {
        let stamp = |name: &str| name.trim_start_matches("batch-").to_owned();
        stamp(b).cmp(&stamp(a))
    });
    for name in names.iter().skip(crate::defaults::MCP_RESULTS_KEPT) {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_beyond_the_limit_go_whatever_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let kept = crate::defaults::MCP_RESULTS_KEPT;
        // Ids a millisecond apart, every other one a batch's.
        let ids: Vec<String> = (0..kept + 3)
            .map(|n| {
                let id = format!("20261202T{n:09}Z-0000abcd");
                if n % 2 == 0 {
                    format!("batch-{id}")
                } else {
                    id
                }
            })
            .collect();
        for id in &ids {
            std::fs::write(dir.path().join(format!("{id}.json")), "{}").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        remove_oldest(dir.path());
        for (n, id) in ids.iter().enumerate() {
            let exists = dir.path().join(format!("{id}.json")).exists();
            assert_eq!(exists, n >= 3, "{id}");
        }
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn an_id_that_is_not_a_run_id_is_never_a_path() {
        assert!(!valid_id("../x"));
        assert!(!valid_id("a/b"));
        assert!(valid_id("20261202T013336266Z-8f454fc1"));
        assert!(valid_id("batch-20261202T013336266Z-8f454fc1"));
    }
}
