//! Merging task branches into the current branch, all or nothing: the merge of every
//! branch, in order, is first built as commits on no ref (`git merge-tree --write-tree`
//! and `git commit-tree`, which touch neither the working tree, the index nor a ref),
//! then the working tree and index move to it in one `git read-tree -m -u` (which checks
//! every path before it writes any) and the current branch in one compare-and-swap
//! `git update-ref HEAD <new> <old>`. A conflict in any branch refuses before anything
//! changed; HEAD moved by someone else meanwhile puts the tree and index back.
//!
//! What remains: `read-tree` writes the files one after another, so a failure of the file
//! system in the middle of it (a full disk) can leave some paths moved; git reports
//! them, and `git checkout -f HEAD -- <paths>` restores them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::git_cli::{self, git, nul_list};

/// One branch to merge: its name (for messages), the run it came from and its tip.
pub struct Branch<'a> {
    pub name: &'a str,
    pub run_id: &'a str,
    pub tip: &'a str,
}

/// What merging one branch did to the commit being built.
#[derive(Debug, Clone)]
pub struct Step {
    /// The commit after this branch: its tip (a fast-forward), a merge commit, or the
    /// same as before when it was contained already.
    pub head: String,
    /// None when the branch was contained already.
    pub fast_forward: Option<bool>,
}

/// The merge of every branch, built and not yet landed.
pub struct Built {
    pub old: String,
    pub new: String,
    pub steps: Vec<Step>,
    /// The paths that differ between `old` and `new`.
    pub files: Vec<String>,
}

/// Builds the merge of `branches`, in order, onto HEAD as commits on no ref. Refuses,
/// naming the files, a branch whose commits conflict with HEAD and those before it.
pub fn build(root: &Path, branches: &[Branch<'_>]) -> Result<Built> {
    let old = git(root, &["rev-parse", "--verify", "HEAD^{commit}"])?
        .trim()
        .to_owned();
    let ancestor = |a: &str, b: &str| {
        git_cli::try_git(root, &["merge-base", "--is-ancestor", a, b]).map(|output| output.ok)
    };
    let mut head = old.clone();
    let mut steps = Vec::new();
    for (n, branch) in branches.iter().enumerate() {
        let fast_forward = if ancestor(branch.tip, &head)? {
            None
        } else if ancestor(&head, branch.tip)? {
            branch.tip.clone_into(&mut head);
            Some(true)
        } else {
            head = merge_commit(root, &head, branch, n > 0)?;
            Some(false)
        };
        steps.push(Step {
            head: head.clone(),
            fast_forward,
        });
    }
    let files = nul_list(&git(root, &["diff", "--name-only", "-z", &old, &head])?);
    Ok(Built {
        old,
        new: head,
        steps,
        files,
    })
}

/// A commit merging `branch` into `onto`, made with `git merge-tree` and `git commit-tree`.
fn merge_commit(
    root: &Path,
    onto: &str,
    branch: &Branch<'_>,
    after_others: bool,
) -> Result<String> {
    let merged = git_cli::try_git(
        root,
        &[
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            onto,
            branch.tip,
        ],
    )?;
    let mut lines = merged.stdout.lines();
    let tree = lines.next().unwrap_or_default().trim().to_owned();
    if !merged.ok {
        let conflicted: Vec<String> = lines.map(str::to_owned).collect();
        if conflicted.is_empty() || tree.is_empty() {
            return Err(git_cli::failed(
                root,
                &["merge-tree", onto, branch.tip],
                &merged.stderr,
            ));
        }
        return Err(Error::BringIn {
            message: format!(
                "merging {}{} would conflict in {}; nothing was changed (resolve it by hand with `git merge {}`)",
                branch.name,
                if after_others {
                    " after the branches before it"
                } else {
                    ""
                },
                conflicted
                    .iter()
                    .map(|file| format!("`{file}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                branch.name
            ),
            files: conflicted,
        });
    }
    let message = format!("Merge task branch {} (run {})", branch.name, branch.run_id);
    let mut args = git_cli::identity_args(root);
    args.extend([
        "commit-tree",
        &tree,
        "-p",
        onto,
        "-p",
        branch.tip,
        "-m",
        &message,
    ]);
    Ok(git(root, &args)?.trim().to_owned())
}

/// Moves the working tree, the index and the current branch (or a detached HEAD) from
/// `built.old` to `built.new`, all at once; refuses with nothing changed when the tree
/// or index has changes the move would overwrite, or HEAD is no longer `built.old`.
pub fn land(root: &Path, built: &Built, reflog: &str) -> Result<()> {
    if built.new == built.old {
        return Ok(());
    }
    let moved = git_cli::try_git(root, &["read-tree", "-m", "-u", &built.old, &built.new])?;
    if !moved.ok {
        return Err(Error::BringIn {
            files: Vec::new(),
            message: format!(
                "the working tree or index has changes the merge would overwrite ({}); nothing was changed",
                moved.stderr.trim()
            ),
        });
    }
    let swapped = git_cli::try_git(
        root,
        &["update-ref", "-m", reflog, "HEAD", &built.new, &built.old],
    )?;
    if swapped.ok {
        return Ok(());
    }
    // HEAD moved since the merge was built (or git refused the move): the tree and index
    // go back to where they were.
    let back = git_cli::try_git(root, &["read-tree", "-m", "-u", &built.new, &built.old]);
    let restored = back.as_ref().is_ok_and(|output| output.ok);
    let said = swapped.stderr.trim();
    Err(Error::BringIn {
        files: built.files.clone(),
        message: if restored {
            format!(
                "the current branch could not be moved to the merge (git said: {said}); it may have moved meanwhile. Nothing was changed"
            )
        } else {
            format!(
                "the current branch could not be moved to the merge (git said: {said}), and the working tree could not be put back: `git checkout -f HEAD -- {}` restores these files",
                built.files.join(" ")
            )
        },
    })
}
