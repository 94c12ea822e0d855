//! Crash-safe writes: every target's previous bytes are backed up under the run's id before
//! it is replaced atomically, and a run's writes can be undone byte for byte.
//!
//! Layout, inside the repository's git directory (never the working tree):
//! `execute-local-task/runs/<run_id>/manifest.json` and `…/files/<n>` (previous bytes).
//! The manifest is saved before each change it describes, so after a crash at any
//! instant it still names everything that may need restoring.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::guard;
use crate::repo::Repo;

const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub run_id: String,
    pub task_id: String,
    pub files: Vec<Entry>,
    /// Directories the run created, parents first.
    pub created_dirs: Vec<String>,
    /// Set once `rollback` restored the run.
    #[serde(default)]
    pub rolled_back: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub prior: Prior,
    /// Git blob id of the bytes this run last wrote, or null when they were restored.
    pub written: Option<String>,
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

/// The journal of one run's writes.
pub struct Journal {
    root: PathBuf,
    dir: PathBuf,
    /// Temp files are made here and renamed into place, so a crash leaves none in the tree.
    tmp_dir: PathBuf,
    manifest: Manifest,
}

impl Journal {
    pub fn new(repo: &Repo, run_id: &str, task_id: &str) -> Self {
        let state = repo.state_dir();
        Self {
            root: repo.root().to_path_buf(),
            dir: state.join("runs").join(run_id),
            tmp_dir: state.join("tmp"),
            manifest: Manifest {
                version: 1,
                run_id: run_id.to_owned(),
                task_id: task_id.to_owned(),
                files: Vec::new(),
                created_dirs: Vec::new(),
                rolled_back: false,
            },
        }
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
            root: repo.root().to_path_buf(),
            dir,
            tmp_dir: repo.state_dir().join("tmp"),
            manifest,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The absolute path of a file's backup, when it had previous bytes.
    pub fn backup_path(&self, relative: &str) -> Option<PathBuf> {
        self.manifest
            .files
            .iter()
            .find(|e| e.path == relative)
            .and_then(|entry| match &entry.prior {
                Prior::File { backup, .. } => Some(self.dir.join(backup)),
                _ => None,
            })
    }

    /// Replaces `relative` with `bytes`, after backing up what was there.
    pub fn write(&mut self, relative: &str, bytes: &[u8]) -> Result<()> {
        let target =
            guard::resolve_inside(&self.root, relative).map_err(|reason| Error::UnsafePath {
                path: relative.to_owned(),
                reason,
            })?;
        let index = match self.manifest.files.iter().position(|e| e.path == relative) {
            Some(index) => index,
            None => self.record_prior(relative, &target)?,
        };
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        self.create_parents(&parent)?;
        let mode = match &self.manifest.files[index].prior {
            Prior::File { mode, .. } => *mode,
            _ => 0o644,
        };
        self.manifest.files[index].written = Some(Repo::blob_id(bytes));
        self.save_manifest()?;
        self.write_durably(&target, bytes, mode)
    }

    /// Puts every file back as it was before the run and removes the directories the run
    /// created, keeping the journal so the run can write again.
    pub fn restore(&mut self) -> Result<Vec<String>> {
        let mut restored = Vec::new();
        for index in (0..self.manifest.files.len()).rev() {
            let entry = self.manifest.files[index].clone();
            let target = self.root.join(&entry.path);
            match &entry.prior {
                Prior::Absent => match fs::remove_file(&target) {
                    Ok(()) => sync_dir(target.parent().unwrap_or(&self.root))?,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(Error::io("remove", &target, error)),
                },
                Prior::File { backup, mode, .. } => {
                    let backup_path = self.dir.join(backup);
                    let bytes = fs::read(&backup_path)
                        .map_err(|error| Error::io("read backup", &backup_path, error))?;
                    self.write_durably(&target, &bytes, *mode)?;
                }
                Prior::Symlink { target: link } => self.replace_with_symlink(&target, link)?,
            }
            self.manifest.files[index].written = None;
            restored.push(entry.path);
        }
        for dir in self.manifest.created_dirs.iter().rev() {
            // Only empty directories go: anything else in them is not ours to delete.
            let _ = fs::remove_dir(self.root.join(dir));
        }
        self.save_manifest()?;
        Ok(restored)
    }

    /// The paths whose current bytes differ from what this run last wrote.
    pub fn changed_since_written(&self) -> Vec<String> {
        self.manifest
            .files
            .iter()
            .filter(|entry| {
                let current = fs::symlink_metadata(self.root.join(&entry.path))
                    .ok()
                    .filter(std::fs::Metadata::is_file)
                    .and_then(|_| fs::read(self.root.join(&entry.path)).ok())
                    .map(|bytes| Repo::blob_id(&bytes));
                match &entry.written {
                    Some(blob) => current.as_ref() != Some(blob),
                    // Restored already: the file should hold its prior state.
                    None => match &entry.prior {
                        Prior::Absent => current.is_some(),
                        Prior::File { blob, .. } => current.as_ref() != Some(blob),
                        Prior::Symlink { .. } => false,
                    },
                }
            })
            .map(|entry| entry.path.clone())
            .collect()
    }

    pub fn mark_rolled_back(&mut self) -> Result<()> {
        self.manifest.rolled_back = true;
        self.save_manifest()
    }

    fn record_prior(&mut self, relative: &str, target: &Path) -> Result<usize> {
        let prior = match fs::symlink_metadata(target) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Prior::Absent,
            Err(error) => return Err(Error::io("inspect", target, error)),
            Ok(metadata) if metadata.file_type().is_symlink() => Prior::Symlink {
                target: fs::read_link(target)
                    .map_err(|error| Error::io("read symlink", target, error))?
                    .to_string_lossy()
                    .into_owned(),
            },
            Ok(metadata) => {
                let bytes = fs::read(target).map_err(|error| Error::io("read", target, error))?;
                let backup = format!("files/{}", self.manifest.files.len());
                ensure_dir(&self.dir.join("files"))?;
                self.write_durably(&self.dir.join(&backup), &bytes, 0o600)?;
                Prior::File {
                    backup,
                    mode: metadata.permissions().mode() & 0o7777,
                    blob: Repo::blob_id(&bytes),
                }
            }
        };
        self.manifest.files.push(Entry {
            path: relative.to_owned(),
            prior,
            written: None,
        });
        self.save_manifest()?;
        Ok(self.manifest.files.len() - 1)
    }

    /// Creates the missing directories above a target, recording each before it exists.
    fn create_parents(&mut self, parent: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut current = parent;
        while !current.exists() && current.starts_with(&self.root) && current != self.root {
            missing.push(current.to_path_buf());
            current = current.parent().unwrap_or(&self.root);
        }
        if missing.is_empty() {
            return Ok(());
        }
        for dir in missing.iter().rev() {
            let relative = dir
                .strip_prefix(&self.root)
                .unwrap_or(dir)
                .to_string_lossy()
                .into_owned();
            if !self.manifest.created_dirs.contains(&relative) {
                self.manifest.created_dirs.push(relative);
            }
        }
        self.save_manifest()?;
        for dir in missing.iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(Error::io("create directory", dir, error)),
            }
        }
        sync_dir(current)
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
        self.write_durably(&self.dir.join(MANIFEST), &json, 0o600)
    }

    /// Writes bytes to a temp file, flushes them to disk, renames over `target`, and syncs
    /// the directory: `target` holds either its old or its new bytes at every instant.
    fn write_durably(&self, target: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        let parent = target.parent().unwrap_or(&self.root);
        let mut temp = self.temp_file_for(parent)?;
        temp.write_all(bytes)
            .and_then(|()| {
                temp.as_file()
                    .set_permissions(fs::Permissions::from_mode(mode))
            })
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|error| Error::io("write", temp.path(), error))?;
        match temp.persist(target) {
            Ok(_) => {}
            Err(error) if error.error.raw_os_error() == Some(nix::libc::EXDEV) => {
                // The git directory is on another file system: rename within the target's
                // directory instead (a crash may then leave a hidden temp file there).
                let mut local = tempfile::Builder::new()
                    .prefix(".execute-local-task-")
                    .tempfile_in(parent)
                    .map_err(|error| Error::io("create temp file in", parent, error))?;
                local
                    .write_all(bytes)
                    .and_then(|()| {
                        local
                            .as_file()
                            .set_permissions(fs::Permissions::from_mode(mode))
                    })
                    .and_then(|()| local.as_file().sync_all())
                    .map_err(|error| Error::io("write", local.path(), error))?;
                local
                    .persist(target)
                    .map_err(|error| Error::io("replace", target, error.error))?;
            }
            Err(error) => return Err(Error::io("replace", target, error.error)),
        }
        sync_dir(parent)
    }

    fn temp_file_for(&self, parent: &Path) -> Result<tempfile::NamedTempFile> {
        ensure_dir(&self.tmp_dir)?;
        tempfile::Builder::new()
            .prefix("write-")
            .tempfile_in(&self.tmp_dir)
            .or_else(|_| {
                tempfile::Builder::new()
                    .prefix(".execute-local-task-")
                    .tempfile_in(parent)
            })
            .map_err(|error| Error::io("create temp file for", parent, error))
    }

    fn replace_with_symlink(&self, target: &Path, link: &str) -> Result<()> {
        let parent = target.parent().unwrap_or(&self.root);
        let temp = parent.join(format!(".execute-local-task-link-{}", std::process::id()));
        let _ = fs::remove_file(&temp);
        symlink(link, &temp).map_err(|error| Error::io("create symlink", &temp, error))?;
        fs::rename(&temp, target).map_err(|error| Error::io("replace", target, error))?;
        sync_dir(parent)
    }
}

fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|error| Error::io("create directory", dir, error))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| Error::io("sync directory", dir, error))
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
