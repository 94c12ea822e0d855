//! One attempt's write-and-test transaction under the repository lock: its code is
//! written, tested, and undone unless the test passed; what the test changed in the tree
//! (its outputs rewritten, other paths); and what a run that did not succeed leaves in
//! the tree.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lock;
use crate::options::RunOptions;
use crate::pipeline::Progress;
use crate::repo::Repo;
use crate::result::{FileChange, PathChange, TestReport};
use crate::spec::TaskSpec;
use crate::summary::{describe_changes, file_changes};
use crate::targets::{Target, before_of};
use crate::test_changes::TreeView;
use crate::test_run;
use crate::write::{self, AfterTest, Journal};

fn write_files(
    journal: &mut Journal,
    files: &[(String, String)],
    targets: &[Target],
) -> Result<()> {
    for (path, code) in files {
        let before = before_of(targets, path);
        if before != Some(code.as_str()) {
            journal.write(path, code.as_bytes(), before.map(str::as_bytes))?;
        }
    }
    Ok(())
}

pub(crate) enum TestVerdict {
    /// The test passed, or none ran (None); with the attempt's files as the tree now
    /// holds them (a test command may have rewritten them: a formatter).
    Passed(Option<TestReport>, Vec<(String, String)>),
    Failed(TestReport),
    CannotStart(String, Option<TestReport>),
}

/// Writes one attempt's files under the repository lock and tests them. Unless the test
/// passed, the files are undone at once, so the next attempt's test sees exactly its own
/// code, and the supervisor after the last attempt sees the tree as it was.
pub(crate) async fn write_and_test(
    repo: &Repo,
    journal: &mut Journal,
    files: &[(String, String)],
    targets: &[Target],
    spec: &TaskSpec,
    options: &RunOptions,
    progress: Progress<'_>,
) -> Result<TestVerdict> {
    let _lock = options
        .cancel
        .or_cancel(lock::acquire(repo, options.lock_timeout))
        .await??;
    write::clean_stale_temp_files(repo);
    // From the first write until the verdict, anything that ends this early (an error, a
    // panic unwinding, the future dropped) undoes the writes: untested code never stays.
    // Should the undo fail too, the journal still has writes, and the caller's error says
    // the tree may hold code.
    let mut undo = UndoUnlessSettled {
        journal,
        settled: false,
    };
    write_files(undo.journal, files, targets)?;
    let before = tests(spec, options).then(|| TreeView::take(repo)).flatten();
    let mut verdict = run_test(spec, options, repo.root(), progress).await;
    // An interrupted run reports no success, so even code that passed is undone.
    let interrupted = options.cancel.signal();
    let keep = interrupted.is_none() && matches!(verdict, TestVerdict::Passed(..));
    // Read again under the same lock: no other run can have written meanwhile.
    let mut changed = match before.filter(|_| interrupted.is_none()) {
        Some(before) => TreeView::take(repo)
            .map(|after| before.changes_to(&after))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if interrupted.is_some() {
        // Debug builds only: a test holds the cleanup here to send a second signal.
        #[cfg(debug_assertions)]
        crate::blocking::off_thread(|| crate::cancel::stall_point("cleanup", None)).await;
    }
    undo.settled = true;
    if !keep {
        let restored = undo.journal.restore()?;
        let why = interrupted.map(|signal| format!("interrupted by {}", signal.as_str()));
        if let Some(conflict) = restored.conflict(why.as_deref()) {
            return Err(conflict);
        }
    }
    if let Some(signal) = interrupted {
        return Err(Error::Interrupted(signal));
    }
    let written: Vec<&str> = files
        .iter()
        .filter(|(path, code)| before_of(targets, path) != Some(code.as_str()))
        .map(|(path, _)| path.as_str())
        .collect();
    if let TestVerdict::Passed(test, in_tree) = &mut verdict {
        *in_tree = if test.is_some() {
            adopt_rewritten(undo.journal, files, &written, &mut changed)?
        } else {
            files.to_vec()
        };
    } else {
        // Undone, or kept as someone else's and reported as a conflict above.
        changed.retain(|change| !written.contains(&change.path.as_str()));
    }
    if let TestVerdict::Passed(Some(report), _)
    | TestVerdict::Failed(report)
    | TestVerdict::CannotStart(_, Some(report)) = &mut verdict
    {
        report.changed_paths = changed;
    }
    Ok(verdict)
}

/// True when this attempt runs a test command.
fn tests(spec: &TaskSpec, options: &RunOptions) -> bool {
    spec.test_command.is_some() && !options.no_test
}

/// The attempt's files as the tree holds them after its test passed: an output the test
/// rewrote is taken as the run's (see [`Journal::adopt_after_test`]) and reported with its
/// bytes now, so the result describes the tree. Outputs reported that way leave `changed`;
/// one the test deleted stays in it.
fn adopt_rewritten(
    journal: &mut Journal,
    files: &[(String, String)],
    written: &[&str],
    changed: &mut Vec<PathChange>,
) -> Result<Vec<(String, String)>> {
    let mut in_tree = Vec::with_capacity(files.len());
    for (path, code) in files {
        if !written.contains(&path.as_str()) {
            in_tree.push((path.clone(), code.clone()));
            continue;
        }
        let now = match journal.adopt_after_test(path)? {
            AfterTest::AsWritten => code.clone(),
            AfterTest::Rewritten(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            AfterTest::Gone => {
                in_tree.push((path.clone(), code.clone()));
                continue;
            }
        };
        changed.retain(|change| &change.path != path);
        in_tree.push((path.clone(), now));
    }
    Ok(in_tree)
}

/// Restores the journal when dropped before the attempt's verdict settled what stays.
struct UndoUnlessSettled<'a> {
    journal: &'a mut Journal,
    settled: bool,
}

impl Drop for UndoUnlessSettled<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.journal.restore();
        }
    }
}

async fn run_test(
    spec: &TaskSpec,
    options: &RunOptions,
    root: &Path,
    progress: Progress<'_>,
) -> TestVerdict {
    let Some(command) = spec.test_command.as_deref().filter(|_| !options.no_test) else {
        return TestVerdict::Passed(None, Vec::new());
    };
    progress(&format!("testing: {command}"));
    let stop = async {
        options.cancel.cancelled().await;
    };
    match test_run::run(command, root, Duration::from_secs(spec.timeout_secs), stop).await {
        Ok(report) if report.passed => TestVerdict::Passed(Some(report), Vec::new()),
        Ok(report) => TestVerdict::Failed(report),
        Err(cannot_start) => TestVerdict::CannotStart(cannot_start.message, cannot_start.report),
    }
}

/// What a run that did not succeed leaves in the tree, and the summary's words for it.
/// Every failed attempt was undone when it failed, so the tree holds its original bytes;
/// with `--keep-failed` the last tested attempt's files are written again for inspection,
/// listed in the result, and undone by `rollback`.
pub(crate) async fn leave_tree(
    repo: &Repo,
    journal: &mut Journal,
    targets: &[Target],
    tested: Option<&Tested>,
    options: &RunOptions,
    run_id: &str,
) -> Result<(Vec<FileChange>, String)> {
    if !options.keep_failed {
        return Ok((Vec::new(), "the working tree is unchanged".to_owned()));
    }
    let Some(tested) = tested else {
        return Ok((
            Vec::new(),
            "no attempt produced code to keep (--keep-failed); the working tree is unchanged"
                .to_owned(),
        ));
    };
    let _lock = options
        .cancel
        .or_cancel(lock::acquire(repo, options.lock_timeout))
        .await??;
    if let Err(error) = write_files(journal, &tested.files, targets) {
        // As in `write_and_test`: a failed undo shows in the journal and the error says so.
        let _ = journal.restore();
        return Err(error);
    }
    let changes = file_changes(journal, targets, &tested.files);
    let tree = format!(
        "the working tree holds attempt {}'s failed code (--keep-failed): {}; undo it with `execute-local-task rollback {run_id}`",
        tested.n,
        describe_changes(&changes)
    );
    Ok((changes, tree))
}

/// An attempt whose code was written and tested.
pub(crate) struct Tested {
    pub(crate) n: u32,
    pub(crate) files: Vec<(String, String)>,
    /// None when the test command could not even be spawned.
    pub(crate) test: Option<TestReport>,
}
