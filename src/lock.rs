//! The repository lock that serialises runs writing the same working tree: a file lock
//! between processes, and in front of it a fair in-process queue, so the tasks of one
//! batch are handed the lock the moment it is released instead of polling for it.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::error::{Error, Result};
use crate::repo::Repo;

/// How often a task polls the file lock while another process holds it. Only waiting on
/// another process polls: tasks of this process wait in [`queue`], and are woken at once.
const POLL: Duration = Duration::from_millis(25);

/// Held while a run writes, tests and restores; released on drop (and by the OS when a
/// process dies, so a killed run never leaves the repository locked).
pub struct RepoLock {
    // Fields drop in order: the file lock is released before the next task of this
    // process is woken, so that task finds it free.
    _file: File,
    _turn: OwnedMutexGuard<()>,
}

/// The queue of this process's tasks for one repository's lock. A tokio mutex is fair:
/// tasks get the lock in the order they asked, and a waiting task costs nothing.
fn queue(repo: &Repo) -> Arc<tokio::sync::Mutex<()>> {
    static QUEUES: Mutex<Option<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = Mutex::new(None);
    let mut queues = QUEUES.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(
        queues
            .get_or_insert_with(HashMap::new)
            .entry(repo.state_dir())
            .or_default(),
    )
}

pub async fn acquire(repo: &Repo, timeout: Duration) -> Result<RepoLock> {
    let (file, path) = open(repo)?;
    let started = Instant::now();
    let held_too_long = |path: &PathBuf| Error::Lock {
        message: format!(
            "another execute-local-task run is writing this repository and held its lock ({}) for longer than --lock-timeout ({} s); nothing was written",
            path.display(),
            timeout.as_secs()
        ),
    };
    let Ok(turn) = tokio::time::timeout(timeout, queue(repo).lock_owned()).await else {
        return Err(held_too_long(&path));
    };
    loop {
        match file.try_lock() {
            Ok(()) => {
                return Ok(RepoLock {
                    _file: file,
                    _turn: turn,
                });
            }
            Err(TryLockError::WouldBlock) if started.elapsed() < timeout => {
                tokio::time::sleep(POLL).await;
            }
            Err(TryLockError::WouldBlock) => return Err(held_too_long(&path)),
            Err(TryLockError::Error(error)) => return Err(Error::io("lock", &path, error)),
        }
    }
}

/// The lock if it is free now, else None: for work that may be skipped, such as the
/// pruning at a run's start, which must never make a run wait.
pub fn try_acquire(repo: &Repo) -> Result<Option<RepoLock>> {
    let Ok(turn) = queue(repo).try_lock_owned() else {
        return Ok(None);
    };
    let (file, path) = open(repo)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(RepoLock {
            _file: file,
            _turn: turn,
        })),
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
