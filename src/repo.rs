//! The git repository a run works in: its root, its git directory, HEAD, and file status.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::result::GitInfo;

/// What git knows about an existing output file, for the `--force` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetStatus {
    /// Committed and unchanged: `git diff` shows the run's change and `git checkout` undoes it.
    Clean,
    /// Modified, staged, untracked, or unknown to git: overwriting would lose work git
    /// cannot give back.
    Uncommitted,
    /// Ignored by git (a `.env`, a build output): git can neither show nor restore it.
    Ignored,
}

pub struct Repo {
    /// Canonical working-tree root: every relative path is resolved against it.
    root: PathBuf,
    /// The repository's git directory (per worktree), where backups and the lock live.
    git_dir: PathBuf,
    /// Behind a mutex: libgit2's handle may move between threads but not be shared, and a
    /// run holding `&Repo` across an `.await` must stay `Send` to run on any thread.
    git: Mutex<git2::Repository>,
}

impl Repo {
    /// Finds the repository that contains `start`. A bare repository or a path outside any
    /// repository is an error: the tool only writes where git can show and undo the change.
    pub fn discover(start: &Path) -> Result<Self> {
        let git = git2::Repository::discover(start).map_err(|error| Error::Repo {
            path: start.to_path_buf(),
            message: format!("not inside a git repository ({})", error.message()),
        })?;
        let git_dir = std::fs::canonicalize(git.path())
            .map_err(|error| Error::io("resolve git directory", git.path(), error))?;
        if let Some(tree) = linked_working_tree(&git, start, &git_dir) {
            git.set_workdir(&tree, false).map_err(|error| Error::Repo {
                path: tree.clone(),
                message: format!("cannot use as working tree: {}", error.message()),
            })?;
        }
        let workdir = git.workdir().ok_or_else(|| Error::Repo {
            path: start.to_path_buf(),
            message: "is a bare repository; a working tree is needed".to_owned(),
        })?;
        let root = std::fs::canonicalize(workdir)
            .map_err(|error| Error::io("resolve repository root", workdir, error))?;
        let git = Mutex::new(git);
        Ok(Self { root, git_dir, git })
    }

    /// The repository's working tree, canonical: every relative path is resolved against it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What a run may read and write: the working tree, without the git directory.
    pub fn bounds(&self) -> crate::guard::Bounds {
        crate::guard::Bounds::new(self.root.clone(), self.git_dir.clone())
    }

    /// Where this tool keeps its state: `<git dir>/execute-local-task`, outside the working
    /// tree so backups never show up as changes and are never committed.
    pub fn state_dir(&self) -> PathBuf {
        self.git_dir.join("execute-local-task")
    }

    pub fn info(&self) -> GitInfo {
        let git = self.git();
        let head = git.head().ok();
        GitInfo {
            root: self.root.display().to_string(),
            branch: head
                .as_ref()
                .filter(|head| head.is_branch())
                .and_then(|head| head.shorthand().map(str::to_owned))
                .or_else(|| unborn_branch(&git)),
            head: head
                .as_ref()
                .and_then(git2::Reference::target)
                .map(|oid| oid.to_string()),
        }
    }

    /// The handle; a panic elsewhere while it was held leaves nothing half-changed in it.
    fn git(&self) -> std::sync::MutexGuard<'_, git2::Repository> {
        self.git
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether git can show and undo a change to the existing file at `real_relative`.
    ///
    /// `real_relative` must be the path with every directory symlink resolved (the guard's
    /// location): git knows a file only by its real path, and asked about `link/x.py` it
    /// answers "not found" for `src/x.py` behind it. For the same reason a file git still
    /// says it does not know is treated as changed, never as clean: the caller only asks
    /// about files that exist.
    pub fn target_status(&self, real_relative: &Path) -> Result<TargetStatus> {
        match self.git().status_file(real_relative) {
            Ok(status) if status.is_empty() => Ok(TargetStatus::Clean),
            Ok(status) if status.contains(git2::Status::IGNORED) => Ok(TargetStatus::Ignored),
            Ok(_) => Ok(TargetStatus::Uncommitted),
            Err(error) if error.code() == git2::ErrorCode::NotFound => {
                Ok(TargetStatus::Uncommitted)
            }
            Err(error) => Err(Error::Repo {
                path: self.root.join(real_relative),
                message: format!("cannot read git status: {}", error.message()),
            }),
        }
    }

    /// Every path git sees as changed in the working tree against the index or HEAD,
    /// untracked files included (their directories walked) and ignored ones not scanned,
    /// relative to the root. Read only: the index is not refreshed or written.
    pub fn changed_paths(&self) -> Result<Vec<(String, git2::Status)>> {
        let mut options = git2::StatusOptions::new();
        options
            .include_untracked(true)
            .recurse_untracked_dirs(true)
            .include_ignored(false)
            .exclude_submodules(true);
        let git = self.git();
        let statuses = git
            .statuses(Some(&mut options))
            .map_err(|error| Error::Repo {
                path: self.root.clone(),
                message: format!("cannot read git status: {}", error.message()),
            })?;
        Ok(statuses
            .iter()
            .filter_map(|entry| Some((entry.path()?.to_owned(), entry.status())))
            .collect())
    }

    /// The git blob id of `bytes`: a content hash that needs no extra dependency and that
    /// `git` itself understands.
    pub fn blob_id(bytes: &[u8]) -> String {
        git2::Oid::hash_object(git2::ObjectType::Blob, bytes)
            .map(|oid| oid.to_string())
            .unwrap_or_default()
    }
}

/// The branch name HEAD points at in a repository without commits.
fn unborn_branch(git: &git2::Repository) -> Option<String> {
    let head = git.find_reference("HEAD").ok()?;
    let target = head.symbolic_target()?;
    target.strip_prefix("refs/heads/").map(str::to_owned)
}

/// The working tree git itself would use when libgit2 guesses another: the directory
/// whose `.git` is a file (`git init --separate-git-dir`) or a symlink naming `git_dir`.
///
/// libgit2 takes the git directory's parent as the working tree unless `core.worktree`
/// says otherwise, so in those layouts a run would write its files beside the git
/// directory, outside the work tree, and run the test there. Submodules set
/// `core.worktree` and linked worktrees record theirs, so libgit2 finds those; they are
/// left to it.
fn linked_working_tree(git: &git2::Repository, start: &Path, git_dir: &Path) -> Option<PathBuf> {
    let local = git.config().ok()?.open_level(git2::ConfigLevel::Local).ok();
    if local.is_some_and(|config| config.get_path("core.worktree").is_ok()) || git.is_worktree() {
        return None;
    }
    let start = std::fs::canonicalize(start).ok()?;
    let holder = start
        .ancestors()
        .find(|dir| dir.join(".git").symlink_metadata().is_ok())?;
    let dot_git = holder.join(".git");
    let named = if dot_git.symlink_metadata().ok()?.is_file() {
        // A file `.git` holds `gitdir: PATH`, PATH relative to the file's directory.
        let text = crate::input_file::read_text(&dot_git, 64 * 1024).ok()?;
        holder.join(text.strip_prefix("gitdir:")?.trim())
    } else {
        dot_git
    };
    // A `.git` naming another repository is not the one discovery found (the run
    // started inside a git directory, say): keep libgit2's answer.
    (std::fs::canonicalize(named).ok()? == git_dir).then(|| holder.to_path_buf())
}
