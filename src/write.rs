//! Crash-safe writes: every target's previous bytes and mode are backed up under the run's
//! id before it is replaced atomically, and a run's writes can be undone byte for byte.
//!
//! Layout, inside the repository's git directory (never the working tree):
//! `execute-local-task/runs/<run_id>/manifest.json`, `…/files/<n>` (previous bytes) and
//! `execute-local-task/tmp/` (temp files, renamed into place). The manifest is saved before
//! each change it describes, so after a crash at any instant it names everything that may
//! need restoring, and every state it can be found in is one `rollback` can undo.
//!
//! Every run makes its directory when it starts, exclusively (a run id is never shared,
//! see [`new_run_id`]), with a manifest of no files, and holds a lock on that directory
//! while it lives: `rollback --last` finds the newest run even when it wrote nothing, and
//! `prune` never removes a running run's backups.
//!
//! A restore puts back only what still holds the bytes the run wrote: a file an editor (or
//! the test command) changed since is left as it is and reported, never overwritten. The
//! one exception is an output a passing test rewrote (a formatter): those bytes become
//! the run's ([`Journal::adopt_after_test`]), so the result and `rollback` agree on them.
//!
//! Targets are reached through [`Bounds`]: a path is checked, then its directory is opened
//! without following symlinks and the file is replaced relative to that open directory.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, readlinkat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::guard::{self, Bounds, Location};
use crate::repo::Repo;

const MANIFEST: &str = "manifest.json";

/// The permission bits of the process umask, read once (see [`capture_umask`]).
static UMASK: OnceLock<u32> = OnceLock::new();

/// Reads the process umask and keeps it for every file a run creates.
///
/// POSIX can only read the umask by setting it: `umask(m)` returns the old value, which is
/// then put back. The mask is process-wide, so between the two calls another thread
/// creating a file would get `m`: this must run at startup, before any thread exists
/// (the command line calls it first thing). `m` is the restrictive 0o077 so that even then
/// nothing could be created more open than intended.
pub fn capture_umask() {
    UMASK.get_or_init(|| {
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
        nix::sys::stat::umask(old);
        #[allow(clippy::useless_conversion)] // `mode_t` is u16 on some platforms.
        u32::from(old.bits())
    });
}

/// The mode of a file the run creates: 0o666 less the umask, as any editor or `touch`
/// would make it. Made with an explicit mode (the temp file is renamed into place), so
/// the kernel does not apply the umask by itself.
fn new_file_mode() -> u32 {
    let umask = UMASK.get_or_init(|| {
        // Not captured at startup (the library used on its own, or unit tests running in
        // threads): read it without changing it where the kernel tells (Linux), else
        // assume the usual 0o022.
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status.lines().find_map(|line| {
                    let value = line.strip_prefix("Umask:")?;
                    u32::from_str_radix(value.trim(), 8).ok()
                })
            })
            .unwrap_or(0o022)
    });
    0o666 & !umask
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub run_id: String,
    pub task_id: String,
    pub files: Vec<Entry>,
    /// Directories the run created (symlink-free, relative to the root), parents first.
    pub created_dirs: Vec<String>,
    /// Set once `rollback` restored the run.
    #[serde(default)]
    pub rolled_back: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub prior: Prior,
    /// Git blob id of the bytes this run last wrote (recorded before writing them), or null
    /// when they were restored.
    pub written: Option<String>,
    /// Set when a restore found the file changed since the run wrote it (an editor, the
    /// test command) and left it as changed: the file is not the run's any more, but its
    /// bytes from before the run are still in the backup, and `rollback --force` puts
    /// them back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

/// What stood at a path before the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prior {
    Absent,
    File {
        backup: String,
        mode: u32,
        blob: String,
    },
    Symlink {
        target: String,
    },
}

/// What `restore` put back.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Files given their previous bytes (or symlink) back.
    pub restored: Vec<String>,
    /// Files the run had created, now deleted.
    pub removed: Vec<String>,
    /// Directories the run had created, now deleted because they were empty.
    pub removed_dirs: Vec<String>,
    /// Files changed since the run wrote them (by an editor, another program or the test
    /// command), left as they are: restoring them would destroy that change. They are not
    /// the run's any more.
    pub kept: Vec<String>,
    /// Where the bytes from before the run are kept, for each kept file that had some:
    /// the path and its backup.
    pub kept_backups: Vec<(String, PathBuf)>,
    /// The run, for the command that puts kept files' old bytes back.
    pub run_id: String,
}

impl Restored {
    /// The error of a restore that kept files as someone else changed them, or None. `why`
    /// is what else ended the attempt (a signal), said first.
    pub fn conflict(&self, why: Option<&str>) -> Option<Error> {
        let first = self.kept.first()?;
        let names = self
            .kept
            .iter()
            .map(|path| format!("`{path}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let (was, it) = if self.kept.len() == 1 {
            ("was", "it was")
        } else {
            ("were", "they were")
        };
        // The old bytes are only in the backup now: say where, and how to get them back.
        let mut backups = String::new();
        for (path, backup) in &self.kept_backups {
            let _ = write!(
                backups,
                "; `{path}` as it was before the run is kept at {} (`execute-local-task rollback {} --force` puts it back)",
                backup.display(),
                self.run_id
            );
        }
        Some(Error::Conflict {
            path: first.clone(),
            message: format!(
                "{}{names} {was} changed while this run's code was in the working tree (by an editor, another program or the test command); {it} left as changed, not restored, and the run stopped{backups}",
                why.map(|why| format!("{why}; ")).unwrap_or_default()
            ),
        })
    }
}

/// What [`Journal::adopt_after_test`] found at an output after its test passed.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterTest {
    /// The bytes the run wrote.
    AsWritten,
    /// Other bytes, now recorded as the run's.
    Rewritten(Vec<u8>),
    /// No regular file (deleted, or replaced by a directory or symlink), or not one the
    /// run wrote: left as it is, for the caller to report.
    Gone,
}

/// What stands at a path now.
#[derive(Debug, PartialEq, Eq)]
enum Current {
    Absent,
    File {
        bytes: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    /// A directory or special file.
    Other,
}

/// The journal of one run's writes.
pub struct Journal {
    bounds: Bounds,
    dir: PathBuf,
    /// The run's directory, locked while the run lives (None for an earlier run's journal),
    /// so `prune` can tell a running run from a finished one.
    _running: Option<File>,
    /// Temp files are made here and renamed into place, so a crash leaves none in the tree.
    tmp_dir: PathBuf,
    manifest: Manifest,
}

impl Journal {
    /// Starts the journal of a new run: makes its directory under a fresh id, exclusively,
    /// locks it and saves a manifest of no files, before anything else the run does.
    pub fn begin(repo: &Repo, task_id: &str) -> Result<Self> {
        let state = repo.state_dir();
        let (run_id, dir, running) = create_run_dir(&state.join("runs"), new_run_id)?;
        let journal = Self {
            bounds: repo.bounds(),
            dir,
            _running: Some(running),
            tmp_dir: state.join("tmp"),
            manifest: Manifest {
                version: 1,
                run_id,
                task_id: task_id.to_owned(),
                files: Vec::new(),
                created_dirs: Vec::new(),
                rolled_back: false,
            },
        };
        journal.save_manifest()?;
        Ok(journal)
    }

    pub fn run_id(&self) -> &str {
        &self.manifest.run_id
    }

    /// Removes the journal of a run that ended before writing anything and is not to be
    /// a run at all (a batch task stopped before its first model call): `rollback --last`
    /// and `prune` never see it. Failing to remove it costs nothing: it undoes nothing.
    pub fn discard(self) {
        if !self.manifest.files.is_empty() || !self.manifest.created_dirs.is_empty() {
            return;
        }
        let Self {
            dir,
            _running: running,
            ..
        } = self;
        drop(running);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Opens the journal of an earlier run.
    pub fn open(repo: &Repo, run_id: &str) -> Result<Self> {
        let dir = repo.state_dir().join("runs").join(run_id);
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|error| Error::Rollback {
            run_id: run_id.to_owned(),
            message: if error.kind() == std::io::ErrorKind::NotFound {
                "no such run in this repository (its backups are listed under .git/execute-local-task/runs)".to_owned()
            } else {
                format!("cannot read {}: {error}", path.display())
            },
        })?;
        let manifest = serde_json::from_str(&text).map_err(|error| Error::Rollback {
            run_id: run_id.to_owned(),
            message: format!("{} is damaged: {error}", path.display()),
        })?;
        Ok(Self {
            bounds: repo.bounds(),
            dir,
            _running: None,
            tmp_dir: repo.state_dir().join("tmp"),
            manifest,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The absolute path of a file's backup, when it had previous bytes and the run's
    /// current state wrote it. An entry an earlier attempt wrote and then restored has a
    /// backup too, but the file holds its own bytes again: no backup of it is in play.
    pub fn written_backup_path(&self, relative: &str) -> Option<PathBuf> {
        self.manifest
            .files
            .iter()
            .find(|e| e.path == relative && e.written.is_some())
            .and_then(|entry| match &entry.prior {
                Prior::File { backup, .. } => Some(self.dir.join(backup)),
                _ => None,
            })
    }

    /// Replaces `relative` with `bytes`, after backing up what was there.
    ///
    /// `expected` is what the caller based the new bytes on: the file's bytes, or None when
    /// there was no regular file. Anything else there now (another run or an editor wrote
    /// it meanwhile) is a conflict and nothing is written, so no update is lost.
    pub fn write(&mut self, relative: &str, bytes: &[u8], expected: Option<&[u8]>) -> Result<()> {
        let location = self.locate(relative)?;
        let base = self.open_dir(&location.dir)?;
        let current = if location.missing.is_empty() {
            read_current(&base, &location.name, &self.shown(&location))?
        } else {
            Current::Absent
        };
        let as_expected = match (&current, expected) {
            (Current::File { bytes, .. }, Some(expected)) => bytes.as_slice() == expected,
            (Current::Absent | Current::Symlink(_), None) => true,
            _ => false,
        };
        if !as_expected {
            return Err(Error::Conflict {
                path: relative.to_owned(),
                message: format!(
                    "`{relative}` changed while this run was waiting for the model (another run or an editor wrote it); nothing was written, run the task again"
                ),
            });
        }
        let index = if let Some(index) = self.manifest.files.iter().position(|e| e.path == relative)
        {
            index
        } else {
            let prior = self.back_up(relative, current)?;
            self.manifest.files.push(Entry {
                path: relative.to_owned(),
                prior,
                written: None,
                kept: false,
            });
            self.manifest.files.len() - 1
        };
        // Record everything this write may leave behind before doing any of it.
        let mut created = location.dir.clone();
        for name in &location.missing {
            created.push(name);
            let created = path_string(&created);
            if !self.manifest.created_dirs.contains(&created) {
                self.manifest.created_dirs.push(created);
            }
        }
        self.manifest.files[index].written = Some(Repo::blob_id(bytes));
        self.manifest.files[index].kept = false;
        self.save_manifest()?;

        let (parent, parent_path) = self.create_missing_dirs(base, &location)?;
        let mode = match &self.manifest.files[index].prior {
            Prior::File { mode, .. } => *mode,
            _ => new_file_mode(),
        };
        self.replace(&parent, &parent_path, &location.name, bytes, mode)
    }

    /// Puts every file the run's current state wrote back as it was before the run and
    /// removes the directories the run created that are empty, keeping the journal so the
    /// run can write again.
    ///
    /// Entries whose `written` is None were restored already (by an earlier attempt's
    /// restore): their file holds its own bytes again and may have been edited and committed
    /// since, so they are left alone.
    ///
    /// A file that holds neither what the run wrote nor what was there before was changed
    /// by someone else meanwhile (an editor saving it during the test, or the test command
    /// rewriting it): it is left as it is, listed in [`Restored::kept`], and is no longer
    /// the run's. Nothing can tell those two writers apart, and putting the old bytes back
    /// would destroy an edit. (A change in the instant between that check and the rename
    /// is still replaced: the check is not atomic with the rename.)
    pub fn restore(&mut self) -> Result<Restored> {
        self.restore_and_mark(false, false)
    }

    /// [`Journal::restore`] for `rollback`: the run is marked rolled back in the same
    /// manifest save that records the restore, so a kill leaves either a run still to undo
    /// or one that is done, never one that looks undone but is not marked. `force`
    /// restores even the files changed since the run wrote them, and those an earlier
    /// restore kept as changed ([`Entry::kept`]): they get their bytes from before the run.
    pub fn roll_back(&mut self, force: bool) -> Result<Restored> {
        self.restore_and_mark(true, force)
    }

    fn restore_and_mark(&mut self, rolled_back: bool, force: bool) -> Result<Restored> {
        let mut done = Restored {
            run_id: self.manifest.run_id.clone(),
            ..Restored::default()
        };
        for index in (0..self.manifest.files.len()).rev() {
            let entry = self.manifest.files[index].clone();
            if entry.written.is_none() && !(force && entry.kept) {
                continue;
            }
            if !force && self.is_changed(&entry) {
                done.kept.push(entry.path.clone());
                if let Prior::File { backup, .. } = &entry.prior {
                    done.kept_backups
                        .push((entry.path.clone(), self.dir.join(backup)));
                }
                self.manifest.files[index].written = None;
                self.manifest.files[index].kept = true;
                continue;
            }
            let location = self.locate(&entry.path)?;
            match &entry.prior {
                Prior::Absent => {
                    if location.missing.is_empty() {
                        let parent = self.open_dir(&location.dir)?;
                        let parent_path = self.bounds.root().join(&location.dir);
                        match unlinkat(
                            Some(parent.as_raw_fd()),
                            location.name.as_str(),
                            UnlinkatFlags::NoRemoveDir,
                        ) {
                            Ok(()) => {
                                crash_point();
                                sync(&parent, &parent_path)?;
                                crash_point();
                            }
                            Err(Errno::ENOENT) => {}
                            Err(error) => {
                                return Err(Error::io(
                                    "remove",
                                    parent_path.join(&location.name),
                                    error.into(),
                                ));
                            }
                        }
                    }
                    done.removed.push(entry.path.clone());
                }
                Prior::File { backup, mode, blob } => {
                    let backup_path = self.dir.join(backup);
                    let bytes = fs::read(&backup_path)
                        .map_err(|error| Error::io("read backup", &backup_path, error))?;
                    if &Repo::blob_id(&bytes) != blob {
                        return Err(Error::Rollback {
                            run_id: self.manifest.run_id.clone(),
                            message: format!(
                                "the backup of `{}` ({}) does not hold the bytes it recorded; it was not restored",
                                entry.path,
                                backup_path.display()
                            ),
                        });
                    }
                    let (parent, parent_path) =
                        self.create_missing_dirs(self.open_dir(&location.dir)?, &location)?;
                    self.replace(&parent, &parent_path, &location.name, &bytes, *mode)?;
                    done.restored.push(entry.path.clone());
                }
                Prior::Symlink { target } => {
                    let (parent, parent_path) =
                        self.create_missing_dirs(self.open_dir(&location.dir)?, &location)?;
                    self.replace_with_symlink(&parent, &parent_path, &location.name, target)?;
                    done.restored.push(entry.path.clone());
                }
            }
            self.manifest.files[index].written = None;
            self.manifest.files[index].kept = false;
        }
        for dir in self.manifest.created_dirs.iter().rev() {
            if self.remove_empty_dir(dir) {
                done.removed_dirs.push(dir.clone());
            }
        }
        // A directory removed here is not the run's any more: a later rollback must not
        // remove one of that name the user makes meanwhile (a later write records it again).
        self.manifest
            .created_dirs
            .retain(|dir| !done.removed_dirs.contains(dir));
        self.manifest.rolled_back = rolled_back;
        self.save_manifest()?;
        Ok(done)
    }

    /// The paths the run still has written that hold neither what the run wrote nor what
    /// was there before it: undoing the run would lose those changes. Files the run already
    /// put back are not the run's any more and are never looked at.
    pub fn changed_since_written(&self) -> Vec<String> {
        self.manifest
            .files
            .iter()
            .filter(|entry| entry.written.is_some() && self.is_changed(entry))
            .map(|entry| entry.path.clone())
            .collect()
    }

    /// True when `entry`'s path holds neither what the run wrote nor what was there before
    /// it (or cannot be read): someone else's change, which a restore would destroy.
    fn is_changed(&self, entry: &Entry) -> bool {
        let Ok(current) = self.current(&entry.path) else {
            return true;
        };
        let is_written = match (&entry.written, &current) {
            (Some(blob), Current::File { bytes, .. }) => &Repo::blob_id(bytes) == blob,
            _ => false,
        };
        let is_prior = match (&entry.prior, &current) {
            (Prior::Absent, Current::Absent) => true,
            (Prior::File { blob, .. }, Current::File { bytes, .. }) => {
                &Repo::blob_id(bytes) == blob
            }
            (Prior::Symlink { target }, Current::Symlink(now)) => target == now,
            _ => false,
        };
        !(is_written || is_prior)
    }

    /// The files a restore left as someone changed them ([`Entry::kept`]), each with the
    /// backup of its bytes from before the run (None: there was no file, or a symlink).
    pub fn kept_files(&self) -> Vec<(String, Option<PathBuf>)> {
        if self.manifest.rolled_back {
            return Vec::new();
        }
        self.manifest
            .files
            .iter()
            .filter(|entry| entry.kept && entry.written.is_none())
            .map(|entry| {
                let backup = match &entry.prior {
                    Prior::File { backup, .. } => Some(self.dir.join(backup)),
                    _ => None,
                };
                (entry.path.clone(), backup)
            })
            .collect()
    }

    /// After a passing test, what stands at an output the run wrote: the bytes it wrote,
    /// other bytes (the test command rewrote it: a formatter such as `black x.py &&
    /// pytest`), or no regular file. Rewritten bytes are recorded as the run's, in the
    /// manifest saved before this returns: the result reports them and `rollback` of the
    /// run undoes them as its own instead of refusing a change it cannot tell from an edit.
    /// The caller holds the repository lock, so no other run wrote them.
    pub fn adopt_after_test(&mut self, relative: &str) -> Result<AfterTest> {
        let Some(index) = self
            .manifest
            .files
            .iter()
            .position(|e| e.path == relative && e.written.is_some())
        else {
            return Ok(AfterTest::Gone);
        };
        let Current::File { bytes, .. } = self.current(relative)? else {
            return Ok(AfterTest::Gone);
        };
        let blob = Repo::blob_id(&bytes);
        if self.manifest.files[index].written.as_ref() == Some(&blob) {
            return Ok(AfterTest::AsWritten);
        }
        self.manifest.files[index].written = Some(blob);
        self.save_manifest()?;
        Ok(AfterTest::Rewritten(bytes))
    }

    /// True while some file still holds bytes this run wrote (or may have written).
    pub fn has_writes(&self) -> bool {
        !self.manifest.rolled_back && self.manifest.files.iter().any(|f| f.written.is_some())
    }

    fn locate(&self, relative: &str) -> Result<Location> {
        self.bounds
            .locate_target(relative)
            .map_err(|reason| Error::UnsafePath {
                path: relative.to_owned(),
                reason,
            })
    }

    fn open_dir(&self, real_relative: &Path) -> Result<File> {
        self.bounds.open_dir(real_relative).map_err(|error| {
            Error::io(
                "open directory",
                self.bounds.root().join(real_relative),
                error,
            )
        })
    }

    fn shown(&self, location: &Location) -> PathBuf {
        self.bounds
            .root()
            .join(location.parent())
            .join(&location.name)
    }

    /// What stands at `relative` now.
    fn current(&self, relative: &str) -> Result<Current> {
        let location = self.locate(relative)?;
        if !location.missing.is_empty() {
            return Ok(Current::Absent);
        }
        let parent = self.open_dir(&location.dir)?;
        read_current(&parent, &location.name, &self.shown(&location))
    }

    /// Saves the previous bytes of a regular file before anything replaces them.
    fn back_up(&self, relative: &str, current: Current) -> Result<Prior> {
        Ok(match current {
            Current::Absent => Prior::Absent,
            Current::Symlink(target) => Prior::Symlink { target },
            Current::File { bytes, mode } => {
                let backup = format!("files/{}", self.manifest.files.len());
                ensure_dir(&self.dir.join("files"))?;
                self.write_state(&self.dir.join(&backup), &bytes)?;
                Prior::File {
                    backup,
                    mode,
                    blob: Repo::blob_id(&bytes),
                }
            }
            Current::Other => {
                return Err(Error::UnsafePath {
                    path: relative.to_owned(),
                    reason: "the path is not a regular file".to_owned(),
                });
            }
        })
    }

    /// Opens `base` (the directory `location` found) and creates the directories below
    /// it that `location` lacks, each through the open handle of its parent and opened
    /// without following a symlink. On a write they were recorded in the manifest first; on
    /// a restore they are ones a user removed since, which the file needs back.
    fn create_missing_dirs(&self, base: File, location: &Location) -> Result<(File, PathBuf)> {
        let mut parent = base;
        let mut parent_path = self.bounds.root().join(&location.dir);
        for name in &location.missing {
            match mkdirat(
                Some(parent.as_raw_fd()),
                name.as_str(),
                Mode::from_bits_truncate(0o777),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(error) => {
                    return Err(Error::io(
                        "create directory",
                        parent_path.join(name),
                        error.into(),
                    ));
                }
            }
            crash_point();
            sync(&parent, &parent_path)?;
            crash_point();
            parent_path.push(name);
            parent = guard::open_at(&parent, OsStr::new(name), OFlag::O_DIRECTORY, Mode::empty())
                .map_err(|error| Error::io("open directory", &parent_path, error))?;
        }
        Ok((parent, parent_path))
    }

    /// Removes a directory the run created if it is empty; anything in it is not ours.
    fn remove_empty_dir(&self, dir: &str) -> bool {
        let path = Path::new(dir);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let Ok(parent_dir) = self.bounds.open_dir(parent) else {
            return false;
        };
        let removed =
            unlinkat(Some(parent_dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir).is_ok();
        if removed {
            crash_point();
            let _ = parent_dir.sync_all();
            crash_point();
        }
        removed
    }

    fn save_manifest(&self) -> Result<()> {
        ensure_dir(&self.dir)?;
        let json = serde_json::to_vec_pretty(&self.manifest).map_err(|error| {
            Error::io(
                "serialise manifest",
                &self.dir,
                std::io::Error::other(error),
            )
        })?;
        self.write_state(&self.dir.join(MANIFEST), &json)
    }

    /// Writes one of the tool's own files in the git directory, atomically and durably.
    ///
    /// The temp file is made beside `path`, in the run's own directory, not in the shared
    /// temp directory: a run saves its first manifest before it takes the repository lock,
    /// while another run holding the lock may be clearing the shared one.
    fn write_state(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(&self.dir);
        let mut temp = tempfile::Builder::new()
            .prefix(".write-")
            .tempfile_in(dir)
            .map_err(|error| Error::io("create temp file in", dir, error))?;
        temp.write_all(bytes)
            .and_then(|()| {
                temp.as_file()
                    .set_permissions(fs::Permissions::from_mode(0o600))
            })
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|error| Error::io("write", temp.path(), error))?;
        crash_point();
        temp.persist(path)
            .map_err(|error| Error::io("replace", path, error.error))?;
        crash_point();
        sync(
            &File::open(dir).map_err(|error| Error::io("open directory", dir, error))?,
            dir,
        )?;
        crash_point();
        Ok(())
    }

    /// Puts a symlink back at `name` in `parent`, the way [`Journal::replace`] puts a file.
    fn replace_with_symlink(
        &self,
        parent: &File,
        parent_path: &Path,
        name: &str,
        link: &str,
    ) -> Result<()> {
        self.place(parent, parent_path, name, &Content::Symlink(link))
    }

    /// Replaces `name` in the open directory `parent` with `bytes` and `mode`.
    fn replace(
        &self,
        parent: &File,
        parent_path: &Path,
        name: &str,
        bytes: &[u8],
        mode: u32,
    ) -> Result<()> {
        self.place(parent, parent_path, name, &Content::File { bytes, mode })
    }

    /// Puts `content` at `name` in the open directory `parent`: it is made under a temp
    /// name in the state directory (a file flushed to disk), renamed over the name and the
    /// directory synced, so the name holds its old or its new content at every instant and
    /// the tree never holds a stray temp file. A symlink at the name is replaced, never
    /// followed.
    ///
    /// When the git directory is on another file system than the target the rename fails
    /// with EXDEV, and the same steps are taken with the temp name in `parent` itself (a
    /// crash at that moment can leave a hidden `.execute-local-task-*.tmp` there: the one
    /// case a temp file can be left in the tree).
    fn place(
        &self,
        parent: &File,
        parent_path: &Path,
        name: &str,
        content: &Content,
    ) -> Result<()> {
        let target = parent_path.join(name);
        ensure_dir(&self.tmp_dir)?;
        let staging = File::open(&self.tmp_dir)
            .map_err(|error| Error::io("open directory", &self.tmp_dir, error))?;
        match stage_and_rename(&staging, parent, name, content) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(Errno::EXDEV as i32) => {
                stage_and_rename(parent, parent, name, content)
                    .map_err(|error| Error::io("replace", &target, error))?;
            }
            Err(error) => return Err(Error::io("replace", &target, error)),
        }
        crash_point();
        sync(parent, parent_path)?;
        crash_point();
        Ok(())
    }
}

/// What [`Journal::place`] puts at a name.
enum Content<'a> {
    File { bytes: &'a [u8], mode: u32 },
    Symlink(&'a str),
}

/// Makes `content` under a fresh temp name in the open directory `staging` and renames it
/// to `name` in `parent`; the temp name is removed again if anything fails.
fn stage_and_rename(
    staging: &File,
    parent: &File,
    name: &str,
    content: &Content,
) -> std::io::Result<()> {
    let temp_name = format!(
        ".execute-local-task-{}-{:08x}.tmp",
        std::process::id(),
        fastrand::u32(..)
    );
    let made = match content {
        Content::File { bytes, mode } => guard::open_at(
            staging,
            OsStr::new(&temp_name),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .and_then(|mut file| {
            file.write_all(bytes)?;
            // Explicit, so the umask does not apply twice (see `new_file_mode`).
            file.set_permissions(fs::Permissions::from_mode(*mode))?;
            file.sync_all()
        }),
        Content::Symlink(link) => symlinkat(*link, Some(staging.as_raw_fd()), temp_name.as_str())
            .map_err(std::io::Error::from),
    };
    let done = made.and_then(|()| {
        crash_point();
        renameat(
            Some(staging.as_raw_fd()),
            temp_name.as_str(),
            Some(parent.as_raw_fd()),
            name,
        )
        .map_err(std::io::Error::from)
    });
    if done.is_err() {
        let _ = unlinkat(
            Some(staging.as_raw_fd()),
            temp_name.as_str(),
            UnlinkatFlags::NoRemoveDir,
        );
    }
    done
}

/// What stands at `name` in `parent`, read without following a symlink.
fn read_current(parent: &File, name: &str, shown: &Path) -> Result<Current> {
    match guard::open_at(parent, OsStr::new(name), OFlag::O_NONBLOCK, Mode::empty()) {
        Ok(mut file) => {
            let metadata = file
                .metadata()
                .map_err(|error| Error::io("inspect", shown, error))?;
            if !metadata.is_file() {
                return Ok(Current::Other);
            }
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|error| Error::io("read", shown, error))?;
            Ok(Current::File {
                bytes,
                mode: metadata.permissions().mode() & 0o7777,
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Current::Absent),
        Err(error) if error.raw_os_error() == Some(Errno::ELOOP as i32) => {
            let target = readlinkat(Some(parent.as_raw_fd()), name)
                .map_err(|error| Error::io("read symlink", shown, error.into()))?;
            Ok(Current::Symlink(target.to_string_lossy().into_owned()))
        }
        Err(error) => Err(Error::io("open", shown, error)),
    }
}

/// A new run id, `20261120T220512123Z-3f9a1c2e`: the UTC time to the millisecond, so ids
/// sort by start time (`rollback --last` and `prune` rely on it), and 32 random bits, so
/// runs started in the same millisecond differ. [`create_run_dir`] makes it certain.
pub fn new_run_id() -> String {
    let stamp = run_id_stamp(time::OffsetDateTime::now_utc());
    format!("{stamp}-{:08x}", fastrand::u32(..))
}

/// The time part of a run id, `20261120T220512123Z`.
pub fn run_id_stamp(at: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second][subsecond digits:3]Z"
    );
    at.format(&format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Makes the directory of a new run under `runs` with `create_dir`, never `create_dir_all`,
/// and locks it: an id another run holds already (two runs in the same millisecond with
/// the same random part) fails with EEXIST instead of sharing its journal, and a fresh id
/// is tried. So is one that `prune` took in the instant between the two steps (it holds
/// the lock from its check until the directory is gone, so the lock is busy or the
/// directory has gone): a run never writes into a directory being removed.
fn create_run_dir(
    runs: &Path,
    mut next_id: impl FnMut() -> String,
) -> Result<(String, PathBuf, File)> {
    ensure_dir(runs)?;
    let mut tries = 0;
    loop {
        let id = next_id();
        let dir = runs.join(&id);
        let retry = match fs::create_dir(&dir) {
            Ok(()) => match File::open(&dir) {
                Ok(running) => match running.try_lock() {
                    Ok(()) => return Ok((id, dir, running)),
                    Err(std::fs::TryLockError::WouldBlock) => {
                        Error::io("lock", &dir, std::io::ErrorKind::WouldBlock.into())
                    }
                    Err(std::fs::TryLockError::Error(error)) => {
                        return Err(Error::io("lock", &dir, error));
                    }
                },
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    Error::io("open directory", &dir, error)
                }
                Err(error) => return Err(Error::io("open directory", &dir, error)),
            },
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                Error::io("create directory", &dir, error)
            }
            Err(error) => return Err(Error::io("create directory", &dir, error)),
        };
        tries += 1;
        if tries > 16 {
            return Err(retry);
        }
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|error| Error::io("create directory", dir, error))
}

fn sync(dir: &File, path: &Path) -> Result<()> {
    dir.sync_all()
        .map_err(|error| Error::io("sync directory", path, error))
}

/// Removes temp files a killed run left in the state directory.
pub fn clean_stale_temp_files(repo: &Repo) {
    let tmp = repo.state_dir().join("tmp");
    if let Ok(entries) = fs::read_dir(tmp) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The environment variable of the test-only fault injection in [`crash_point`].
pub const CRASH_AT_ENV: &str = "EXECUTE_LOCAL_TASK_TEST_CRASH_AT";

/// Test-only fault injection. Every durable step of a write (a temp file flushed, a rename,
/// a directory created or synced) calls this; when `EXECUTE_LOCAL_TASK_TEST_CRASH_AT=k` is
/// set, the k-th call kills the process with SIGKILL, exactly as a crash or `kill -9` at
/// that instant would. The crash-safety tests run a write with k = 1, 2, … and check the
/// invariants after each death. Unset (always, outside those tests), it does nothing, and
/// a release build leaves it out: no variable can kill a user's run.
fn crash_point() {
    static TARGET: OnceLock<Option<u32>> = OnceLock::new();
    static COUNT: AtomicU32 = AtomicU32::new(0);
    if !cfg!(debug_assertions) {
        return;
    }
    let target = TARGET.get_or_init(|| {
        std::env::var(CRASH_AT_ENV)
            .ok()
            .and_then(|value| value.parse().ok())
    });
    if let Some(target) = *target
        && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == target
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        git2::Repository::init(dir.path()).unwrap();
        fs::write(dir.path().join("old.txt"), "old\n").unwrap();
        fs::set_permissions(
            dir.path().join("old.txt"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let repo = Repo::discover(dir.path()).unwrap();
        (dir, repo)
    }

    #[test]
    fn write_then_restore_round_trips_bytes_mode_and_directories() {
        let (dir, repo) = repo();
        let mut journal = Journal::begin(&repo, "T").unwrap();
        journal.write("old.txt", b"new\n", Some(b"old\n")).unwrap();
        journal.write("a/b/c.txt", b"c\n", None).unwrap();
        let mode = fs::metadata(dir.path().join("old.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750, "the mode is kept across a write");
        assert_eq!(journal.manifest().created_dirs, ["a", "a/b"]);
        assert!(journal.changed_since_written().is_empty());
        assert!(journal.has_writes());

        let done = journal.restore().unwrap();
        assert_eq!(done.restored, ["old.txt"]);
        assert_eq!(done.removed, ["a/b/c.txt"]);
        assert_eq!(done.removed_dirs, ["a/b", "a"]);
        assert!(journal.manifest().created_dirs.is_empty());
        assert_eq!(
            fs::read_to_string(dir.path().join("old.txt")).unwrap(),
            "old\n"
        );
        assert!(!dir.path().join("a").exists());
        assert!(!journal.has_writes());

        // Put back already: a second restore leaves the user's new files and directories.
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("old.txt"), "committed since\n").unwrap();
        let again = journal.restore().unwrap();
        assert!(again.restored.is_empty() && again.removed_dirs.is_empty());
        assert!(dir.path().join("a/b").is_dir());
        assert_eq!(
            fs::read_to_string(dir.path().join("old.txt")).unwrap(),
            "committed since\n"
        );

        // The saved manifest reads back as what the journal holds.
        let reopened = Journal::open(&repo, journal.run_id()).unwrap();
        assert_eq!(reopened.manifest().files.len(), 2);
        assert!(
            reopened
                .manifest()
                .files
                .iter()
                .all(|f| f.written.is_none())
        );
    }

    #[test]
    fn a_target_that_is_not_what_the_caller_read_is_a_conflict() {
        let (dir, repo) = repo();
        let mut journal = Journal::begin(&repo, "T").unwrap();
        let error = journal
            .write("old.txt", b"new\n", Some(b"something else\n"))
            .unwrap_err();
        assert_eq!(error.kind(), "conflict");
        assert!(error.to_string().contains("`old.txt`"), "{error}");
        let error = journal.write("old.txt", b"new\n", None).unwrap_err();
        assert_eq!(error.kind(), "conflict");
        assert_eq!(
            fs::read_to_string(dir.path().join("old.txt")).unwrap(),
            "old\n"
        );
        assert!(journal.manifest().files.is_empty(), "nothing was recorded");
    }

    #[test]
    fn a_file_edited_after_the_write_counts_as_changed_but_its_prior_bytes_do_not() {
        let (dir, repo) = repo();
        let mut journal = Journal::begin(&repo, "T").unwrap();
        journal.write("old.txt", b"new\n", Some(b"old\n")).unwrap();
        fs::write(dir.path().join("old.txt"), "edited\n").unwrap();
        assert_eq!(journal.changed_since_written(), ["old.txt"]);
        // As after a crash between recording the write and making it.
        fs::write(dir.path().join("old.txt"), "old\n").unwrap();
        assert!(journal.changed_since_written().is_empty());
    }

    #[test]
    fn the_cross_device_fallback_stages_next_to_the_target_and_leaves_no_temp_file() {
        // `place` takes this path when the state directory is on another file system: the
        // staging directory is the target's own.
        let dir = tempfile::tempdir().unwrap();
        let parent = File::open(dir.path()).unwrap();
        fs::write(dir.path().join("f"), "old\n").unwrap();
        let file = Content::File {
            bytes: b"new\n",
            mode: 0o640,
        };
        stage_and_rename(&parent, &parent, "f", &file).unwrap();
        stage_and_rename(&parent, &parent, "l", &Content::Symlink("f")).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("f")).unwrap(), "new\n");
        let mode = fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(fs::read_link(dir.path().join("l")).unwrap(), Path::new("f"));
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["f", "l"]);
    }

    #[test]
    fn a_restore_keeps_files_changed_since_the_write() {
        let (dir, repo) = repo();
        let mut journal = Journal::begin(&repo, "T").unwrap();
        journal.write("old.txt", b"new\n", Some(b"old\n")).unwrap();
        journal.write("made.txt", b"made\n", None).unwrap();
        journal.write("untouched.txt", b"u\n", None).unwrap();
        fs::write(dir.path().join("old.txt"), "edited\n").unwrap();
        fs::write(dir.path().join("made.txt"), "mine\n").unwrap();
        let done = journal.restore().unwrap();
        assert_eq!(done.kept, ["made.txt", "old.txt"]);
        assert_eq!(done.removed, ["untouched.txt"]);
        assert_eq!(
            fs::read_to_string(dir.path().join("old.txt")).unwrap(),
            "edited\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("made.txt")).unwrap(),
            "mine\n"
        );
        assert!(
            !journal.has_writes(),
            "kept files are not the run's any more"
        );
    }

    #[test]
    fn bytes_a_passing_test_rewrote_become_the_runs_and_roll_back() {
        let (dir, repo) = repo();
        let mut journal = Journal::begin(&repo, "T").unwrap();
        journal.write("old.txt", b"new\n", Some(b"old\n")).unwrap();
        journal.write("gone.txt", b"g\n", None).unwrap();
        assert_eq!(
            journal.adopt_after_test("old.txt").unwrap(),
            AfterTest::AsWritten
        );
        fs::write(dir.path().join("old.txt"), "formatted\n").unwrap();
        fs::remove_file(dir.path().join("gone.txt")).unwrap();
        assert_eq!(
            journal.adopt_after_test("old.txt").unwrap(),
            AfterTest::Rewritten(b"formatted\n".to_vec())
        );
        assert_eq!(
            journal.adopt_after_test("gone.txt").unwrap(),
            AfterTest::Gone
        );
        assert_eq!(
            journal.adopt_after_test("never.txt").unwrap(),
            AfterTest::Gone
        );
        // Saved: the run read back from disk rolls the rewrite back as its own.
        let mut reopened = Journal::open(&repo, journal.run_id()).unwrap();
        assert!(reopened.changed_since_written().is_empty());
        let done = reopened.roll_back(false).unwrap();
        assert!(done.kept.is_empty(), "{:?}", done.kept);
        assert_eq!(
            fs::read_to_string(dir.path().join("old.txt")).unwrap(),
            "old\n"
        );
    }

    #[test]
    fn a_run_directory_is_made_exclusively_under_a_fresh_id() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        fs::create_dir_all(runs.join("A")).unwrap();
        fs::write(runs.join("A/manifest.json"), "theirs").unwrap();
        let mut ids = ["A", "A", "B"].into_iter();
        let (id, made, _held) = create_run_dir(&runs, || ids.next().unwrap().to_owned()).unwrap();
        assert_eq!(id, "B");
        assert_eq!(made, runs.join("B"));
        assert_eq!(
            fs::read_to_string(runs.join("A/manifest.json")).unwrap(),
            "theirs"
        );
        let error = create_run_dir(&runs, || "A".to_owned()).unwrap_err();
        assert!(error.to_string().contains("runs/A"), "{error}");

        let first = new_run_id();
        assert_eq!(first.len(), "20261120T220512123Z-3f9a1c2e".len(), "{first}");
        assert!(crate::spec::valid_task_id(&first));
    }

    #[test]
    fn manifests_without_newer_fields_still_open() {
        let (_dir, repo) = repo();
        let runs = repo.state_dir().join("runs/R4");
        fs::create_dir_all(&runs).unwrap();
        fs::write(
            runs.join(MANIFEST),
            r#"{"version": 1, "run_id": "R4", "task_id": "T", "created_dirs": [],
               "files": [{"path": "x", "prior": {"kind": "absent"}, "written": "abc"}]}"#,
        )
        .unwrap();
        let journal = Journal::open(&repo, "R4").unwrap();
        assert!(!journal.manifest().rolled_back);
        assert!(journal.has_writes());
        let damaged = repo.state_dir().join("runs/R5");
        fs::create_dir_all(&damaged).unwrap();
        fs::write(damaged.join(MANIFEST), "{").unwrap();
        let error = Journal::open(&repo, "R5").err().unwrap();
        assert!(error.to_string().contains("is damaged"), "{error}");
    }
}
