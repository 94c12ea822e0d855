//! `hook install` / `hook uninstall`: a plain git `pre-commit` hook that validates the
//! task specs a commit adds or changes. It is recognised as the tool's own by a marker
//! line, so a hook someone else wrote is never replaced or removed.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The line that marks a hook as written by `hook install`.
pub const MARKER: &str = "# managed-by: execute-local-task hook install";

/// The hook's text. The spec directory is `task-specs/` at the root; the binary is found
/// on PATH, or named by `EXECUTE_LOCAL_TASK` (for a build that is not installed).
pub fn script() -> String {
    format!(
        "#!/bin/sh\n\
         {MARKER}\n\
         # Validates the task specs (task-specs/**/*.json) this commit adds or changes; a bad\n\
         # spec stops the commit with the spec error. `execute-local-task hook uninstall`\n\
         # removes this hook; `git commit --no-verify` skips it once.\n\
         set -f\n\
         specs=$(git diff --cached --name-only --diff-filter=ACMR -- ':(glob)task-specs/**/*.json')\n\
         [ -n \"$specs\" ] || exit 0\n\
         IFS='\n'\n\
         exec \"${{EXECUTE_LOCAL_TASK:-execute-local-task}}\" check --validate-only $specs >/dev/null\n"
    )
}

/// What `hook install` or `hook uninstall` did.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HookReport {
    pub status: String,
    /// The hook file (under `core.hooksPath` when that is set).
    pub path: PathBuf,
    /// `installed`, `unchanged`, `removed` or `absent`.
    pub action: String,
}

/// The `pre-commit` hook's path for the repository containing `dir`, honouring
/// `core.hooksPath` (which `git rev-parse --git-path hooks` resolves).
fn hook_path(dir: &Path) -> Result<PathBuf> {
    let output = std::process::Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", "--path-format=absolute", "--git-path", "hooks"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| Error::io("run git in", dir, error))?;
    if !output.status.success() {
        return Err(Error::Repo {
            path: dir.to_path_buf(),
            message: format!(
                "not inside a git repository ({})",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let hooks = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim_end_matches('\n'));
    Ok(hooks.join("pre-commit"))
}

/// Writes the hook; refuses when a `pre-commit` hook that is not the tool's exists.
pub fn install(dir: &Path) -> Result<HookReport> {
    let path = hook_path(dir)?;
    let text = script();
    let action = match std::fs::read_to_string(&path) {
        Ok(existing) if existing == text => "unchanged",
        Ok(existing) if existing.lines().any(|line| line == MARKER) => "installed",
        Ok(_) => return Err(foreign(&path, "install")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "installed",
        // A hook that is not text (a binary) is not the tool's either.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            return Err(foreign(&path, "install"));
        }
        Err(error) => return Err(Error::io("read", path, error)),
    };
    if action == "installed" {
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)
            .map_err(|error| Error::io("create directory", parent, error))?;
        let mut file = tempfile::NamedTempFile::new_in(parent)
            .map_err(|error| Error::io("create a temporary file in", parent, error))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .map_err(|error| Error::io("write", &path, error))?;
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|error| Error::io("make executable", &path, error))?;
        file.persist(&path)
            .map_err(|error| Error::io("write", &path, error.error))?;
    }
    Ok(HookReport {
        status: "ok".to_owned(),
        path,
        action: action.to_owned(),
    })
}

/// Removes the hook when it is the tool's; refuses to remove anyone else's.
pub fn uninstall(dir: &Path) -> Result<HookReport> {
    let path = hook_path(dir)?;
    let action = match std::fs::read_to_string(&path) {
        Ok(existing) if existing.lines().any(|line| line == MARKER) => {
            std::fs::remove_file(&path).map_err(|error| Error::io("remove", &path, error))?;
            "removed"
        }
        Ok(_) => return Err(foreign(&path, "uninstall")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "absent",
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            return Err(foreign(&path, "uninstall"));
        }
        Err(error) => return Err(Error::io("read", path, error)),
    };
    Ok(HookReport {
        status: "ok".to_owned(),
        path,
        action: action.to_owned(),
    })
}

fn foreign(path: &Path, verb: &str) -> Error {
    Error::Refused {
        path: path.to_path_buf(),
        message: format!(
            "is a pre-commit hook that `execute-local-task hook install` did not write; it was left as it is. \
             To {verb} anyway, move it away first, or call `execute-local-task check --validate-only` from it"
        ),
    }
}
