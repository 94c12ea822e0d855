//! Task worktrees: where they live, making one for a run (with the ignored files
//! `.worktreeinclude` names copied and the configured directories linked), resetting one
//! for the next task of a batch, removing it when the run ends, and removing those a
//! killed run left. git's worktree commands run one at a time, across processes too.
//!
//! They live in a per-user state directory, `$XDG_STATE_HOME/execute-local-task/
//! worktrees/<repo>-<hash>/<id>` (else `~/.local/state/…`): never inside the user's
//! working tree, where `git status`, globs, editors and test runners would see them, and
//! never below the project, where a build tool walking up from the worktree (cargo,
//! npm/pnpm workspaces, pyproject) would take the user's project for an enclosing one.
//! When that directory would be inside the repository (a home directory kept in git), the
//! system's temporary directory is used instead.
//!
//! A run holds a lock on `<id>.lock` beside its worktree while it lives, so the next run
//! can tell a killed run's worktree (lock free) from a running one and remove it. A
//! worktree kept on purpose (`--keep-failed`) has an `<id>.kept` marker and stays until
//! `discard`. What remains: a worktree whose lock file was deleted by hand while its run
//! lived could be taken for a stale one.

use std::fs::{self, File, TryLockError};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::git_cli::{self, git, nul_list};

/// The user's repository, as the git command line sees it from the directory a run
/// was started in.
#[derive(Debug, Clone)]
pub struct MainRepo {
    /// The working tree's top directory.
    pub root: PathBuf,
    /// The git directory shared by all worktrees: branches and the tool's records live here.
    pub common_dir: PathBuf,
}

impl MainRepo {
    pub fn discover(dir: &Path) -> Result<Self> {
        let output = git_cli::try_git(
            dir,
            &[
                "rev-parse",
                "--path-format=absolute",
                "--show-toplevel",
                "--git-common-dir",
            ],
        )?;
        let mut lines = output.stdout.lines();
        match (output.ok, lines.next(), lines.next()) {
            (true, Some(root), Some(common)) => Ok(Self {
                root: canonical(Path::new(root))?,
                common_dir: canonical(Path::new(common))?,
            }),
            _ => Err(Error::Repo {
                path: dir.to_path_buf(),
                message: format!(
                    "not inside a git working tree ({})",
                    output.stderr.lines().next().unwrap_or("git said nothing")
                ),
            }),
        }
    }

    /// Where the tool keeps the records of branch runs: in the shared git directory,
    /// beside the branches they describe.
    pub fn records_dir(&self) -> PathBuf {
        self.common_dir.join("execute-local-task").join("branches")
    }

    /// The directory holding this repository's task worktrees.
    pub fn worktrees_dir(&self, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
        let state = env("XDG_STATE_HOME")
            .filter(|dir| Path::new(dir).is_absolute())
            .map(PathBuf::from)
            .or_else(|| {
                env("HOME")
                    .filter(|home| Path::new(home).is_absolute())
                    .map(|home| Path::new(&home).join(".local/state"))
            })
            .filter(|state| !state.starts_with(&self.root))
            .unwrap_or_else(|| {
                // Per user: the owner of this process's own `/proc` entry.
                let uid = fs::metadata("/proc/self")
                    .map_or(0, |meta| std::os::unix::fs::MetadataExt::uid(&meta));
                std::env::temp_dir().join(format!("execute-local-task-{uid}"))
            });
        state
            .join("execute-local-task")
            .join("worktrees")
            .join(self.identity())
    }

    /// `<directory name>-<hash of the shared git directory>`: readable, and distinct for
    /// two clones with one name.
    fn identity(&self) -> String {
        let name: String = self
            .root
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let hash = git2::Oid::hash_object(
            git2::ObjectType::Blob,
            self.common_dir.as_os_str().as_encoded_bytes(),
        )
        .map(|oid| oid.to_string())
        .unwrap_or_default();
        format!("{name}-{}", &hash[..hash.len().min(12)])
    }
}

fn canonical(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|error| Error::io("resolve", path, error))
}

/// Held around every `git worktree` command: git does not make adding, removing and
/// pruning worktrees safe to run at once (a `prune` drops the registration of a worktree
/// another `add` is still making). A batch on branches runs them from several tasks at
/// once, and two processes may run branch runs on one repository: so an in-process mutex
/// (one thread at a time takes the file lock) and a file lock in the tool's directory of
/// the shared git directory.
static ADMIN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Both locks of [`ADMIN`], released on drop (the file's first, by field order).
struct Admin {
    _file: Option<File>,
    _thread: std::sync::MutexGuard<'static, ()>,
}

/// Takes both locks, waiting as long as it takes: worktree commands are short. When the
/// lock file cannot be opened (a read-only git directory), only this process is
/// serialised, as before there was a file lock: the git command that follows fails on
/// such a repository anyway, with git's own words.
fn admin(main: &MainRepo) -> Admin {
    let thread = ADMIN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = main.common_dir.join("execute-local-task");
    let file = fs::create_dir_all(&dir).ok().and_then(|()| {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("worktrees.lock"))
            .ok()
    });
    if let Some(file) = &file
        && matches!(file.try_lock(), Err(TryLockError::WouldBlock))
    {
        // Debug builds only: a test learns that another process holds the lock.
        crate::cancel::stall_point("worktree-admin-busy", None);
        let _ = file.lock();
    }
    // Debug builds only: a test holds the lock here while another process starts.
    crate::cancel::stall_point("worktree-admin", None);
    Admin {
        _file: file,
        _thread: thread,
    }
}

/// A worktree made for one run, detached at its base commit; removed by [`Self::remove`].
pub struct TaskWorktree {
    pub path: PathBuf,
    main: MainRepo,
    /// Held while the run lives: a free lock marks a killed run's worktree.
    _lock: File,
    /// The directories linked into it, relative to its root.
    links: Vec<String>,
}

impl TaskWorktree {
    /// Makes a worktree of `base` under `dir`, named `id`. Its lock is taken before it
    /// exists, so no other run can take it for a stale one.
    pub fn create(main: &MainRepo, dir: &Path, id: &str, base: &str) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|error| Error::io("create directory", dir, error))?;
        let lock_path = dir.join(format!("{id}.lock"));
        let lock = File::create(&lock_path)
            .map_err(|error| Error::io("create worktree lock", &lock_path, error))?;
        lock.try_lock().map_err(|error| {
            Error::io("lock", &lock_path, std::io::Error::other(error.to_string()))
        })?;
        let path = dir.join(id);
        let path_text = path.to_string_lossy().into_owned();
        let added = {
            let _admin = admin(main);
            git(
                &main.root,
                &["worktree", "add", "--quiet", "--detach", &path_text, base],
            )
        };
        if let Err(error) = added {
            let _ = fs::remove_file(&lock_path);
            return Err(error);
        }
        Ok(Self {
            path: canonical(&path)?,
            main: main.clone(),
            _lock: lock,
            links: Vec::new(),
        })
    }

    /// Removes the worktree and its registration; the commits and branch stay.
    pub fn remove(mut self) -> Result<()> {
        self.unlink();
        remove_worktree(&self.main, &self.path)?;
        let _ = fs::remove_file(lock_path(&self.path));
        Ok(())
    }

    /// Undoes the links, so nothing that cleans or removes the worktree can ever reach
    /// through them into the main tree.
    fn unlink(&mut self) {
        for link in self.links.drain(..) {
            let _ = fs::remove_file(self.path.join(link));
        }
    }

    /// Makes the worktree what a new one of `base` would be, for the next task of a batch:
    /// the links undone, then HEAD detached at `base` with every tracked file as `base`
    /// has it, and every other file, untracked or ignored, removed (what the last task's
    /// test built, the copies `.worktreeinclude` named; the caller brings those again).
    /// The repository's hooks do not run, as no task asked for a checkout.
    pub fn reset(&mut self, base: &str) -> Result<()> {
        self.unlink();
        let quiet_hooks = ["-c", "core.hooksPath=/dev/null"];
        let mut checkout = quiet_hooks.to_vec();
        checkout.extend(["checkout", "--quiet", "--force", "--detach", base]);
        git(&self.path, &checkout)?;
        let mut clean = quiet_hooks.to_vec();
        clean.extend(["clean", "--quiet", "-ffdx"]);
        git(&self.path, &clean)?;
        Ok(())
    }

    /// Whether this worktree belongs to the repository whose shared git directory is
    /// `common_dir`.
    pub fn of(&self, main: &MainRepo) -> bool {
        self.main.common_dir == main.common_dir
    }

    /// Leaves the worktree for inspection: marked so no later run removes it; `discard`
    /// does.
    pub fn keep(self) -> Result<PathBuf> {
        let marker = marker_path(&self.path);
        File::create(&marker).map_err(|error| Error::io("create", &marker, error))?;
        Ok(self.path)
    }

    /// Copies into the worktree every file of the main tree that `.worktreeinclude` names
    /// and git ignores (the convention other worktree tools share: a tracked file is in
    /// the worktree already, and an untracked one not ignored is work in progress).
    /// Returns notes on what was brought along.
    pub fn bring_included(&self) -> Result<Vec<String>> {
        let include = self.main.root.join(".worktreeinclude");
        if !include.is_file() {
            return Ok(Vec::new());
        }
        let text = crate::input_file::read_text(&include, 1024 * 1024)
            .map_err(|error| Error::io("read", &include, error))?;
        let mut builder = ignore::gitignore::GitignoreBuilder::new(&self.main.root);
        for line in text.lines() {
            builder
                .add_line(Some(include.clone()), line)
                .map_err(|error| Error::Spec {
                    path: include.clone(),
                    field: None,
                    message: format!("bad pattern `{line}`: {error}"),
                })?;
        }
        let matcher = builder.build().map_err(|error| Error::Spec {
            path: include.clone(),
            field: None,
            message: error.to_string(),
        })?;
        let ignored = nul_list(&git(
            &self.main.root,
            &[
                "ls-files",
                "-z",
                "--others",
                "--ignored",
                "--exclude-standard",
            ],
        )?);
        let mut copied = 0usize;
        for relative in ignored {
            let linked = self
                .links
                .iter()
                .any(|link| Path::new(&relative).starts_with(link));
            if linked
                || !matcher
                    .matched_path_or_any_parents(&relative, false)
                    .is_ignore()
            {
                continue;
            }
            copy_one(&self.main.root.join(&relative), &self.path.join(&relative))?;
            copied += 1;
        }
        Ok(if copied == 0 {
            Vec::new()
        } else {
            vec![format!(
                "{copied} ignored file(s) named by .worktreeinclude were copied into the task worktree"
            )]
        })
    }

    /// Links each of `dirs` (relative to the root) into the worktree as a symlink to the
    /// main tree's directory, for what is slow or unsafe to copy (`node_modules`,
    /// `.venv`, `target`). Only a directory git ignores is linked: a tracked one is in the
    /// worktree already, and must not be replaced by the user's working copy. Returns
    /// notes on what could not be linked.
    pub fn link(&mut self, dirs: &[PathBuf]) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for dir in dirs {
            let Some(relative) = plain_relative(dir) else {
                notes.push(format!(
                    "--link `{}` was not linked: give a directory relative to the repository root",
                    dir.display()
                ));
                continue;
            };
            let source = self.main.root.join(&relative);
            if !source.is_dir() {
                notes.push(format!(
                    "--link `{relative}` was not linked: the main tree has no such directory"
                ));
                continue;
            }
            let ignored = git_cli::try_git(&self.main.root, &["check-ignore", "-q", &relative])?;
            if !ignored.ok {
                notes.push(format!(
                    "--link `{relative}` was not linked: git does not ignore it (a tracked directory is in the worktree already)"
                ));
                continue;
            }
            let target = self.path.join(&relative);
            if target.symlink_metadata().is_ok() {
                notes.push(format!(
                    "--link `{relative}` was not linked: the worktree has it already"
                ));
                continue;
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)
                    .map_err(|error| Error::io("create directory", parent, error))?;
            }
            std::os::unix::fs::symlink(&source, &target)
                .map_err(|error| Error::io("link", &target, error))?;
            self.links.push(relative);
        }
        Ok(notes)
    }

    /// The paths git ignores in the main tree (directories collapsed, `node_modules/`)
    /// that the worktree lacks: what a test that failed there may have needed.
    pub fn missing_ignored(&self) -> Result<Vec<String>> {
        let ignored = nul_list(&git(
            &self.main.root,
            &[
                "ls-files",
                "-z",
                "--others",
                "--ignored",
                "--exclude-standard",
                "--directory",
            ],
        )?);
        Ok(ignored
            .into_iter()
            .filter(|relative| {
                self.path
                    .join(relative.trim_end_matches('/'))
                    .symlink_metadata()
                    .is_err()
            })
            .collect())
    }
}

/// `dir` as a relative path of plain names, or None (absolute, `..`, `.git`).
fn plain_relative(dir: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in dir.components() {
        match component {
            Component::Normal(name) if name != ".git" => parts.push(name.to_str()?.to_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Copies one file (or symlink, as a symlink) with its permissions.
fn copy_one(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|error| Error::io("create directory", parent, error))?;
    }
    let meta = from
        .symlink_metadata()
        .map_err(|error| Error::io("read", from, error))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(|error| Error::io("read link", from, error))?;
        std::os::unix::fs::symlink(target, to).map_err(|error| Error::io("link", to, error))
    } else {
        fs::copy(from, to)
            .map(drop)
            .map_err(|error| Error::io("copy into the task worktree", from, error))
    }
}

fn lock_path(worktree: &Path) -> PathBuf {
    sibling(worktree, "lock")
}

fn marker_path(worktree: &Path) -> PathBuf {
    sibling(worktree, "kept")
}

fn sibling(worktree: &Path, extension: &str) -> PathBuf {
    let mut name = worktree.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(extension);
    worktree.with_file_name(name)
}

/// Removes a worktree's directory and registration. git removes symlinks without
/// following them; the directory is removed by hand when git no longer knows it.
fn remove_worktree(main: &MainRepo, path: &Path) -> Result<()> {
    let _admin = admin(main);
    let text = path.to_string_lossy().into_owned();
    let removed = git_cli::try_git(
        &main.root,
        &["worktree", "remove", "--force", "--force", &text],
    )?;
    if !removed.ok && path.exists() {
        // `fs::remove_dir_all` does not follow symlinks either.
        fs::remove_dir_all(path).map_err(|error| Error::io("remove worktree", path, error))?;
    }
    git_cli::try_git(&main.root, &["worktree", "prune"])?;
    Ok(())
}

/// Removes a worktree left on purpose (`--keep-failed`), for `discard`.
pub fn remove_kept(main: &MainRepo, path: &Path) -> Result<()> {
    if path.exists() {
        remove_worktree(main, path)?;
    }
    let _ = fs::remove_file(marker_path(path));
    let _ = fs::remove_file(lock_path(path));
    Ok(())
}

/// Removes the worktrees killed runs left in `dir` (their lock is free and they were not
/// kept on purpose), then lets git forget registrations whose directory is gone. Returns
/// the paths removed.
pub fn prune_stale(main: &MainRepo, dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) || marker_path(&path).exists() {
            continue;
        }
        let Ok(lock) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(&path))
        else {
            continue;
        };
        match lock.try_lock() {
            // Gone meanwhile: its run ended and removed it, after this listing.
            Ok(()) if !path.exists() => {
                let _ = fs::remove_file(lock_path(&path));
            }
            Ok(()) => {
                if remove_worktree(main, &path).is_ok() {
                    let _ = fs::remove_file(lock_path(&path));
                    removed.push(path);
                }
            }
            Err(TryLockError::WouldBlock | TryLockError::Error(_)) => {}
        }
    }
    let _admin = admin(main);
    let _ = git_cli::try_git(&main.root, &["worktree", "prune"]);
    removed
}
