//! The repository lock that serialises runs writing the same working tree.

use std::fs::{File, TryLockError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::repo::Repo;

/// Held while a run writes, tests and restores; released on drop (and by the OS when a
/// process dies, so a killed run never leaves the repository locked).
pub struct RepoLock {
    _file: File,
}

pub async fn acquire(repo: &Repo, timeout: Duration) -> Result<RepoLock> {
    let (file, path) = open(repo)?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(RepoLock { _file: file }),
            Err(TryLockError::WouldBlock) if started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Lock {
                    message: format!(
                        "another execute-local-task run is writing this repository and held its lock ({}) for longer than --lock-timeout ({} s); nothing was written",
                        path.display(),
                        timeout.as_secs()
                    ),
                });
            }
            Err(TryLockError::Error(error)) => return Err(Error::io("lock", &path, error)),
        }
    }
}

/// The lock if it is free now, else None: for work that may be skipped, such as the
/// pruning at a run's start, which must never make a run wait.
pub fn try_acquire(repo: &Repo) -> Result<Option<RepoLock>> {
    let (file, path) = open(repo)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(RepoLock { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(error)) => Err(Error::io("lock", &path, error)),
    }
}

fn open(repo: &Repo) -> Result<(File, PathBuf)> {
    let dir = repo.state_dir();
    std::fs::create_dir_all(&dir).map_err(|error| Error::io("create directory", &dir, error))?;
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| Error::io("open lock", &path, error))?;
    Ok((file, path))
}
