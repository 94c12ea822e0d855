//! `merge <BATCH_ID>` is all or nothing: the merge of every task is built first, on no
//! ref, and the current branch moves once; anything that stops one task (here the last)
//! leaves HEAD, the index and the working tree byte for byte as they were.

use execute_local_task::bring_in::BatchBringInReport;
use serde_json::Value;

use crate::batch::{batch, fixture, lines, tree, with_replies};
use crate::branches::{git_out, git_state};
use crate::harness::{Run, Test};

/// A chain of three tasks (A1 → A2 → A3), each committed on its branch.
fn chain() -> (Run, String) {
    let specs: Vec<_> = fixture().into_iter().take(3).collect();
    let run = batch(with_replies(Test::new()), &specs, &["--branch"]);
    run.assert_code(0);
    let (_, summary) = lines(&run);
    (run, summary.batch_id)
}

fn reflog_len(run: &Run) -> usize {
    git_out(&run.repo, &["reflog", "show", "--format=%H", "HEAD"])
        .lines()
        .count()
}

/// The working tree has a file of its own where the last task writes: the merge is
/// refused naming it, and nothing of the earlier tasks is merged.
#[test]
fn a_batch_merge_stopped_by_its_last_task_merges_nothing() {
    let (run, batch_id) = chain();
    std::fs::create_dir_all(run.repo.join("out")).unwrap();
    std::fs::write(run.repo.join("out/a3.txt"), "mine\n").unwrap();
    // Refreshes the index now, so only the binary could change it from here.
    git_out(&run.repo, &["status"]);
    let (state, files, reflog) = (git_state(&run.repo), tree(&run.repo), reflog_len(&run));

    let (code, stdout, stderr) = run.again(&["merge", &batch_id]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("an error document");
    assert_eq!(printed["error"]["kind"], "refused", "{stdout}");
    assert!(
        printed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("out/a3.txt")),
        "{stdout}"
    );
    assert_eq!(
        git_state(&run.repo),
        state,
        "HEAD and the index are untouched"
    );
    assert_eq!(tree(&run.repo), files, "the working tree is untouched");
    assert_eq!(reflog_len(&run), reflog, "the branch never moved");
    assert_eq!(run.read("out/a1.txt"), None);
}

/// A batch merge moves the current branch once, to a commit holding every task's.
#[test]
fn a_batch_merge_moves_the_current_branch_once() {
    let (run, batch_id) = chain();
    let reflog = reflog_len(&run);
    let (code, stdout, stderr) = run.again(&["merge", &batch_id]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: BatchBringInReport = serde_json::from_str(&stdout).expect("a batch report");
    assert_eq!(report.runs.len(), 3);
    assert_eq!(reflog_len(&run), reflog + 1, "one move of the branch");
    let head = git_out(&run.repo, &["rev-parse", "HEAD"]);
    assert_eq!(report.runs[2].head.as_deref(), Some(head.as_str()));
    for id in ["a1", "a2", "a3"] {
        assert_eq!(
            run.read(&format!("out/{id}.txt")),
            Some(format!("{}\n", id.to_uppercase()))
        );
    }
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "");
}

/// A diamond (D1 → D2, D3 → D4): the siblings cannot both fast-forward, so the built
/// merge has a merge commit, and still lands as one move with every task's file.
#[test]
fn a_batch_merge_with_a_merge_commit_lands_at_once() {
    let specs: Vec<_> = fixture().into_iter().skip(3).take(4).collect();
    let run = batch(with_replies(Test::new()), &specs, &["--branch"]);
    run.assert_code(0);
    let (results, summary) = lines(&run);
    let reflog = reflog_len(&run);
    let (code, stdout, stderr) = run.again(&["merge", &summary.batch_id]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: BatchBringInReport = serde_json::from_str(&stdout).expect("a batch report");
    assert!(
        report.runs.iter().any(|r| r.fast_forward == Some(false)),
        "{stdout}"
    );
    assert_eq!(reflog_len(&run), reflog + 1);
    for result in &results {
        let commit = result.commit.clone().expect("a commit");
        git_out(&run.repo, &["merge-base", "--is-ancestor", &commit, "HEAD"]);
    }
    for id in ["d1", "d2", "d3", "d4"] {
        assert_eq!(
            run.read(&format!("out/{id}.txt")),
            Some(format!("{}\n", id.to_uppercase()))
        );
    }
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "");
}

/// When git refuses to move the current branch at the last step (here a stale lock on
/// the branch's ref, as a branch moved meanwhile would be refused), the working tree and
/// index, already moved, go back: nothing changed.
#[test]
fn a_branch_that_cannot_move_at_the_end_puts_the_tree_back() {
    let (run, batch_id) = chain();
    let branch = git_out(&run.repo, &["symbolic-ref", "HEAD"]);
    let lock = run.repo.join(".git").join(format!("{branch}.lock"));
    std::fs::write(&lock, "").unwrap();
    let head = git_out(&run.repo, &["rev-parse", "HEAD"]);
    let (files, reflog) = (tree(&run.repo), reflog_len(&run));

    let (code, stdout, stderr) = run.again(&["merge", &batch_id]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("an error document");
    assert_eq!(printed["error"]["kind"], "refused", "{stdout}");
    assert!(
        printed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be moved") && m.contains("Nothing was changed")),
        "{stdout}"
    );
    assert_eq!(git_out(&run.repo, &["rev-parse", "HEAD"]), head);
    assert_eq!(tree(&run.repo), files, "the working tree is back");
    assert_eq!(reflog_len(&run), reflog, "the branch never moved");
    assert_eq!(
        git_out(&run.repo, &["status", "--porcelain"]),
        "",
        "the index is back (its bytes are rewritten, its entries are HEAD's)"
    );
    assert!(lock.exists(), "another's lock is left alone");
}
