//! The error kinds the library returns, each carrying the file, field or command it is about.
//!
//! The library never prints: the command line turns an [`Error`] into a result JSON with
//! status `error`, an exit code ([`Error::exit_code`]) and a one-line hint on stderr.

use std::path::PathBuf;

use nix::sys::signal::Signal;

use crate::model::ModelError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line itself is wrong (conflicting flags, a bad value).
    #[error("{0}")]
    Usage(String),

    /// The task spec cannot be read, parsed or validated.
    #[error("{}: {}{message}", path.display(), field.as_deref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Spec {
        path: PathBuf,
        field: Option<String>,
        message: String,
    },

    /// No usable git repository where one is needed.
    #[error("{}: {message}", path.display())]
    Repo { path: PathBuf, message: String },

    /// A path that would leave the repository, enter `.git` or pass through a symlink.
    #[error("unsafe path `{path}`: {reason}")]
    UnsafePath { path: String, reason: String },

    /// An output file has uncommitted changes, or is ignored by git, and `--force` was not
    /// given.
    #[error("{}", dirty_target_message(path, *ignored))]
    DirtyTarget { path: String, ignored: bool },

    /// An output file changed behind the run's back (another run or an editor wrote it);
    /// writing or restoring it would lose that change.
    #[error("{message}")]
    Conflict { path: String, message: String },

    /// A context file is missing, binary, or the context is over its budget.
    #[error("context: {message}")]
    Context { message: String },

    /// A prompt template does not parse or render.
    #[error("template {name}: {message}")]
    Template { name: String, message: String },

    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Another run holds the repository's lock for too long.
    #[error("{message}")]
    Lock { message: String },

    /// `rollback` cannot restore a run.
    #[error("rollback {run_id}: {message}")]
    Rollback { run_id: String, message: String },

    /// A batch cannot run as given (a dependency cycle, an unknown id, two specs with one
    /// id, no spec found); nothing ran. `paths` are the spec files it is about.
    #[error("{message}")]
    Batch {
        paths: Vec<PathBuf>,
        message: String,
    },

    /// The model server could not be used.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A git command the tool ran for a branch run or a verb failed.
    #[error("{}: `git {command}` failed: {message}", dir.display())]
    Git {
        dir: PathBuf,
        command: String,
        message: String,
    },

    /// A `--branch` run's branch exists already and `--force` was not given.
    #[error(
        "branch `{branch}` exists already (at {tip}); pass --force to replace it (its tip is kept reachable), or `execute-local-task discard` the run that made it"
    )]
    BranchExists { branch: String, tip: String },

    /// `apply` or `merge` would change files the working tree has changes to, or does not
    /// go in cleanly; nothing was changed.
    #[error("{message}")]
    BringIn { files: Vec<String>, message: String },

    /// The run ledger cannot be opened, read or written.
    #[error("ledger {}: {message}", path.display())]
    Ledger { path: PathBuf, message: String },

    /// A run id the ledger does not hold.
    #[error("no run `{run_id}` in the ledger {}", ledger.display())]
    UnknownRun { run_id: String, ledger: PathBuf },

    /// A configuration file cannot be read, parsed or validated, or names a profile that
    /// does not exist; `line` and `key` locate the mistake when the file has one.
    #[error("{}{}: {}{message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Config {
        path: PathBuf,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },

    /// A command would replace or remove a file that is not the tool's (a git hook someone
    /// else wrote); nothing was changed.
    #[error("{}: {message}", path.display())]
    Refused { path: PathBuf, message: String },

    /// A signal (Ctrl-C, a caller's timeout) stopped the run: its test was stopped and its
    /// writes undone.
    #[error("interrupted by {}", .0.as_str())]
    Interrupted(Signal),
}

fn dirty_target_message(path: &str, ignored: bool) -> String {
    if ignored {
        format!(
            "`{path}` exists and is ignored by git, so git can neither show nor undo overwriting it; pass --force to overwrite it anyway (its bytes are backed up and `execute-local-task rollback` restores them), or choose another output file"
        )
    } else {
        format!(
            "`{path}` has changes git has not committed (or git does not track it yet); commit or stash them first, or pass --force to overwrite it (its bytes are backed up either way)"
        )
    }
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn spec(path: impl Into<PathBuf>, field: Option<&str>, message: impl Into<String>) -> Self {
        Self::Spec {
            path: path.into(),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    /// The stable name of the error class, as `error.kind` in the result JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::Spec { .. } => "spec",
            Self::Repo { .. } => "repo",
            Self::UnsafePath { .. } => "unsafe_path",
            Self::DirtyTarget { .. } => "dirty_target",
            Self::Conflict { .. } => "conflict",
            Self::Context { .. } => "context",
            Self::Template { .. } => "template",
            Self::Io { source, .. } if is_environment(source) => "environment",
            Self::Io { .. } => "io",
            Self::Lock { .. } => "lock",
            Self::Rollback { .. } => "rollback",
            Self::Batch { .. } => "batch",
            Self::Model(error) => error.kind.as_str(),
            Self::Ledger { .. } => "ledger",
            Self::UnknownRun { .. } => "unknown_run",
            Self::Interrupted(_) => "interrupted",
            Self::Git { .. } => "git",
            Self::BranchExists { .. } => "branch_exists",
            Self::BringIn { .. } | Self::Refused { .. } => "refused",
            Self::Config { .. } => "config",
        }
    }

    /// The documented exit code: 2 for bad input of any kind, 3 when the model server
    /// could not be used, and for a signal the shell's own 128 + its number (130 SIGINT,
    /// 143 SIGTERM, 129 SIGHUP), so a caller sees the run ended as a killed one would.
    /// A prompt too large for the model's window is bad input although the model layer
    /// finds it: the server is fine, and the same task fails the same way until it is cut
    /// smaller or given a larger model.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Model(error) if error.kind == crate::model::ModelErrorKind::PromptTooLarge => 2,
            Self::Model(_) => 3,
            Self::Interrupted(signal) => u8::try_from(128 + *signal as i32).unwrap_or(u8::MAX),
            _ => 2,
        }
    }

    /// What the user can do about it, when there is something to say beyond the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Model(error) => error
                .hint
                .clone()
                .or_else(|| error.kind.default_hint().map(str::to_owned)),
            Self::Repo { .. } => Some(
                "run inside a git repository, or pass --repo DIR (create one with `git init`)"
                    .to_owned(),
            ),
            Self::Interrupted(_) => Some(
                "if a caller's timeout sent it, give the run more time or lower the spec's timeout_secs".to_owned(),
            ),
            Self::Lock { .. } => Some(
                "another execute-local-task run is writing this repository; wait for it or raise --lock-timeout".to_owned(),
            ),
            Self::Io { source, .. } if is_environment(source) => Some(ENVIRONMENT_HINT.to_owned()),
            Self::Ledger { .. } => Some(
                "set LOCAL_TASK_LEDGER to a file in a writable directory (the default is $XDG_DATA_HOME/execute-local-task/ledger.db)".to_owned(),
            ),
            Self::UnknownRun { .. } => Some(
                "`execute-local-task log` lists the recorded runs and their ids".to_owned(),
            ),
            _ => None,
        }
    }
}

const ENVIRONMENT_HINT: &str = "the machine refused, not the input: for the path in the message check the free space and quota (`df -h`), its permissions and whether it is on a read-only mount, the open-file limit (`ulimit -n`), and that no file stands where a directory must be; then run the task again";

/// True for an I/O failure of the machine the tool runs on rather than of what it was
/// given: a full disk or quota, a permission or read-only mount, too many open files, or
/// a file where the tool's own state needs a directory. The input is fine; running again
/// once the machine is fixed succeeds.
fn is_environment(source: &std::io::Error) -> bool {
    use nix::errno::Errno;
    use std::io::ErrorKind;
    if let Some(code) = source.raw_os_error() {
        return matches!(
            Errno::from_raw(code),
            Errno::ENOSPC
                | Errno::EDQUOT
                | Errno::EACCES
                | Errno::EPERM
                | Errno::EROFS
                | Errno::EMFILE
                | Errno::ENFILE
                | Errno::ENOTDIR
        );
    }
    matches!(
        source.kind(),
        ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
            | ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    fn io(source: std::io::Error) -> Error {
        Error::io("write", "/repo/.git/execute-local-task/runs", source)
    }

    #[test]
    fn failures_of_the_machine_are_environment_errors_with_their_own_hint() {
        for errno in [
            Errno::ENOSPC,
            Errno::EDQUOT,
            Errno::EACCES,
            Errno::EPERM,
            Errno::EROFS,
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOTDIR,
        ] {
            let error = io(std::io::Error::from_raw_os_error(errno as i32));
            assert_eq!(error.kind(), "environment", "{errno}");
            assert_eq!(error.exit_code(), 2, "{errno}");
            let hint = error.hint().unwrap_or_default();
            assert!(
                hint.contains("free space") && hint.contains("permissions"),
                "{hint}"
            );
            assert!(error.to_string().contains("runs"), "{error}");
        }
        let by_kind = io(std::io::ErrorKind::StorageFull.into());
        assert_eq!(by_kind.kind(), "environment");
    }

    #[test]
    fn other_io_failures_stay_io() {
        for source in [
            std::io::Error::from_raw_os_error(Errno::EINVAL as i32),
            std::io::ErrorKind::InvalidData.into(),
        ] {
            let error = io(source);
            assert_eq!(error.kind(), "io");
            assert_eq!(error.hint(), None);
        }
    }
}
