//! What a test command changed in the working tree: git's view of the tree (modified,
//! deleted and untracked files; ignored ones are not scanned) taken before and after the
//! test and compared, so the result can name every path the test created, modified or
//! deleted.
//!
//! A file is compared by its metadata (inode, size, mode, change and modification
//! times), as git compares the stat data of its index, not by reading it: a test that
//! rewrites a file keeps at least its change time moving. What remains: a file changed
//! outside git's view (an ignored one) is not reported, and a path that is not UTF-8 is
//! skipped.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crate::repo::Repo;
use crate::result::{PathChange, PathChangeKind};

/// The working tree as git sees it at one moment: each path that differs from the index
/// or HEAD, with what stands there (None when nothing does).
pub(crate) struct TreeView(BTreeMap<String, (git2::Status, Option<Stamp>)>);

/// What identifies one state of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    ino: u64,
    len: u64,
    mode: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl TreeView {
    /// The tree now; None when git cannot read its status (the test is then reported
    /// without the paths it changed, rather than the run failing over a report).
    pub(crate) fn take(repo: &Repo) -> Option<Self> {
        let paths = repo.changed_paths().ok()?;
        Some(Self(
            paths
                .into_iter()
                .map(|(path, status)| {
                    let stamp = stamp(&repo.root().join(&path));
                    (path, (status, stamp))
                })
                .collect(),
        ))
    }

    /// The paths that differ between `self` (before the test) and `after`, sorted.
    pub(crate) fn changes_to(&self, after: &Self) -> Vec<PathChange> {
        let mut paths: Vec<&String> = self.0.keys().chain(after.0.keys()).collect();
        paths.sort();
        paths.dedup();
        paths
            .into_iter()
            .filter_map(|path| {
                let change = change(self.0.get(path), after.0.get(path))?;
                Some(PathChange {
                    path: path.clone(),
                    change,
                })
            })
            .collect()
    }
}

/// How one path changed, or None when it did not. A path git did not list at one moment
/// was as HEAD has it, so present, unless it is untracked at the other: then it was
/// absent (or ignored).
fn change(
    before: Option<&(git2::Status, Option<Stamp>)>,
    after: Option<&(git2::Status, Option<Stamp>)>,
) -> Option<PathChangeKind> {
    if before == after {
        return None;
    }
    let untracked = |listed: Option<&(git2::Status, Option<Stamp>)>| {
        listed.is_some_and(|(status, _)| status.contains(git2::Status::WT_NEW))
    };
    let existed = match before {
        Some((_, stamp)) => stamp.is_some(),
        None => !untracked(after),
    };
    let exists = match after {
        Some((_, stamp)) => stamp.is_some(),
        None => !untracked(before),
    };
    Some(match (existed, exists) {
        (false, true) => PathChangeKind::Created,
        (true, false) => PathChangeKind::Deleted,
        _ => PathChangeKind::Modified,
    })
}

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = path.symlink_metadata().ok()?;
    Some(Stamp {
        ino: metadata.ino(),
        len: metadata.len(),
        mode: metadata.mode(),
        mtime: (metadata.mtime(), metadata.mtime_nsec()),
        ctime: (metadata.ctime(), metadata.ctime_nsec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(len: u64) -> Stamp {
        Stamp {
            ino: 1,
            len,
            mode: 0o100_644,
            mtime: (0, 0),
            ctime: (0, 0),
        }
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let new = git2::Status::WT_NEW;
        let modified = git2::Status::WT_MODIFIED;
        let deleted = git2::Status::WT_DELETED;
        // Listed after only: created when untracked, deleted when gone, else modified.
        assert_eq!(
            change(None, Some(&(new, Some(stamp(1))))),
            Some(PathChangeKind::Created)
        );
        assert_eq!(
            change(None, Some(&(deleted, None))),
            Some(PathChangeKind::Deleted)
        );
        assert_eq!(
            change(None, Some(&(modified, Some(stamp(1))))),
            Some(PathChangeKind::Modified)
        );
        // Listed before only: put back as HEAD has it, or an untracked file removed.
        assert_eq!(
            change(Some(&(modified, Some(stamp(1)))), None),
            Some(PathChangeKind::Modified)
        );
        assert_eq!(
            change(Some(&(new, Some(stamp(1)))), None),
            Some(PathChangeKind::Deleted)
        );
        // Listed in both.
        assert_eq!(
            change(
                Some(&(modified, Some(stamp(1)))),
                Some(&(modified, Some(stamp(1))))
            ),
            None
        );
        assert_eq!(
            change(
                Some(&(modified, Some(stamp(1)))),
                Some(&(modified, Some(stamp(2))))
            ),
            Some(PathChangeKind::Modified)
        );
        assert_eq!(
            change(Some(&(deleted, None)), Some(&(modified, Some(stamp(2))))),
            Some(PathChangeKind::Created)
        );
    }
}
