//! The git command line, for what libgit2 does not do well or at all: linked worktrees,
//! commits with the user's identity rules, compare-and-swap ref updates and merges.
//!
//! Every call runs with the caller's environment minus the variables that would point
//! git at another repository or index (`GIT_DIR`, `GIT_INDEX_FILE`, …: set when the tool
//! runs inside a git hook), with hooks off (a user's `post-checkout` or `pre-commit`
//! would run inside a task worktree the user never sees) and without prompts.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Variables that redirect git away from the directory it runs in.
const REDIRECTING: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
    "GIT_NAMESPACE",
];

/// The identity variables, which override the configured identity.
const IDENTITY: &[&str] = &[
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
];

/// What a git command printed and whether it succeeded.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A `git` command in `dir` with the tool's fixed settings, for the caller to add to.
pub fn command(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgSign=false",
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    for name in REDIRECTING {
        command.env_remove(name);
    }
    // Set but empty, git refuses to commit ("empty ident name not allowed") rather than
    // fall back to the configured identity: treated as unset.
    for name in IDENTITY {
        if std::env::var_os(name).is_some_and(|value| value.is_empty()) {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `git ARGS` in `dir` and returns what it printed, whether or not it succeeded.
pub fn try_git(dir: &Path, args: &[&str]) -> Result<Output> {
    let output = command(dir)
        .args(args)
        .output()
        .map_err(|error| Error::io("run git in", dir, error))?;
    Ok(Output {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// Runs `git ARGS` in `dir`; its stdout when it succeeded, else an error naming the
/// command and what git said.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = try_git(dir, args)?;
    if output.ok {
        Ok(output.stdout)
    } else {
        Err(failed(dir, args, &output.stderr))
    }
}

/// The error of a git command that failed.
pub fn failed(dir: &Path, args: &[&str], said: &str) -> Error {
    Error::Git {
        dir: dir.to_path_buf(),
        command: args.join(" "),
        message: said.to_owned(),
    }
}

/// The commit `rev` names, or None when it names none.
pub fn resolve(dir: &Path, rev: &str) -> Result<Option<String>> {
    let spec = format!("{rev}^{{commit}}");
    let output = try_git(dir, &["rev-parse", "--verify", "--quiet", &spec])?;
    Ok(output.ok.then(|| output.stdout.trim().to_owned()))
}

/// The NUL-separated entries of a `-z` listing.
pub fn nul_list(text: &str) -> Vec<String> {
    text.split('\0')
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `-c` options giving commits made in `dir` the tool's identity,
/// `execute-local-task <execute-local-task@localhost>`, when git has no `user.name` or
/// no `user.email` configured there (the `GIT_AUTHOR_*`/`GIT_COMMITTER_*` variables still
/// win); none when both are configured.
pub fn identity_args(dir: &Path) -> Vec<&'static str> {
    let configured = ["user.name", "user.email"].iter().all(|key| {
        try_git(dir, &["config", "--get", key])
            .is_ok_and(|output| output.ok && !output.stdout.trim().is_empty())
    });
    if configured {
        Vec::new()
    } else {
        vec![
            "-c",
            "user.name=execute-local-task",
            "-c",
            "user.email=execute-local-task@localhost",
        ]
    }
}
