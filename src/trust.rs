//! The trust lifecycle of a (task kind, model) pair, and whether a run needs review.
//!
//! A pair starts in `calibrate`: its first 5 reviewed runs are all reviewed. Then
//! `establish`: a 15% sample is reviewed, chosen from the run id so the same run is always
//! in or out of it, until at least 20 reviewed runs are at least 80% good or acceptable.
//! Then `trust`: only runs that did not succeed, ran untested, or changed more than 200
//! lines are reviewed. Two `poor` verdicts among the last 10 send the pair back to
//! `calibrate`, and its count starts again. The phase is computed from the verdicts each
//! time, never stored, so a verdict changed later changes the phase with it.
//!
//! The numbers are [`crate::defaults`]; a config file will set them.

use crate::defaults;
use crate::error::Result;
use crate::ledger::Ledger;
use crate::result::{Phase, ReviewAdvice};

/// The lifecycle's numbers.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub calibrate_runs: usize,
    pub establish_runs: usize,
    pub good_percent: usize,
    pub sample_percent: u64,
    pub relapse_poor: usize,
    pub relapse_window: usize,
    pub max_changed_lines: u64,
    pub repository_runs: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            calibrate_runs: defaults::TRUST_CALIBRATE_RUNS,
            establish_runs: defaults::TRUST_ESTABLISH_RUNS,
            good_percent: defaults::TRUST_GOOD_PERCENT,
            sample_percent: defaults::TRUST_SAMPLE_PERCENT,
            relapse_poor: defaults::TRUST_RELAPSE_POOR,
            relapse_window: defaults::TRUST_RELAPSE_WINDOW,
            max_changed_lines: defaults::TRUST_MAX_CHANGED_LINES,
            repository_runs: defaults::TRUST_REPOSITORY_RUNS,
        }
    }
}

/// Where a pair stands after its verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub phase: Phase,
    /// Reviewed runs since the pair last went back to `calibrate` (or ever).
    pub reviewed: usize,
    /// Of those, how many were good or acceptable.
    pub good: usize,
    /// True when poor verdicts sent the pair back to `calibrate` at some point.
    pub relapsed: bool,
}

/// The standing of a pair whose runs got `verdicts` (`good`, `acceptable`, `poor`), in the
/// order the runs were made.
pub fn standing(verdicts: &[&str], t: &Thresholds) -> Standing {
    let mut counted: Vec<&str> = Vec::new();
    let mut relapsed = false;
    for verdict in verdicts {
        counted.push(verdict);
        let window = &counted[counted.len().saturating_sub(t.relapse_window)..];
        if window.iter().filter(|v| **v == "poor").count() >= t.relapse_poor {
            counted.clear();
            relapsed = true;
        }
    }
    let reviewed = counted.len();
    let good = counted.iter().filter(|v| **v != "poor").count();
    let phase = if reviewed < t.calibrate_runs {
        Phase::Calibrate
    } else if reviewed >= t.establish_runs && good * 100 >= t.good_percent * reviewed {
        Phase::Trust
    } else {
        Phase::Establish
    };
    Standing {
        phase,
        reviewed,
        good,
        relapsed,
    }
}

/// The standing of the pair (`kind`, `model`) and whose record it is: the repository
/// `repo_id`'s, or all repositories' when that one has fewer reviewed runs of the pair
/// than [`Thresholds::repository_runs`] (or when `repo_id` is `None`).
pub fn pair_standing(
    ledger: &mut Ledger,
    kind: &str,
    model: &str,
    repo_id: Option<&str>,
    t: &Thresholds,
) -> Result<(Standing, String)> {
    let here = match repo_id {
        Some(repo_id) => ledger.reviewed(kind, model, Some(repo_id))?,
        None => Vec::new(),
    };
    let (reviewed, scope) = if repo_id.is_none() {
        (
            ledger.reviewed(kind, model, None)?,
            "across all repositories".to_owned(),
        )
    } else if here.len() >= t.repository_runs {
        (here, "in this repository".to_owned())
    } else {
        let count = here.len();
        (
            ledger.reviewed(kind, model, None)?,
            format!(
                "across all repositories as this one has {count} of the {} needed to go by its own",
                t.repository_runs
            ),
        )
    };
    let verdicts: Vec<&str> = reviewed.iter().map(|r| r.verdict.as_str()).collect();
    Ok((standing(&verdicts, t), scope))
}

/// What of a finished run decides whether it needs review in `trust`.
#[derive(Debug, Clone)]
pub struct RunFacts<'a> {
    pub run_id: &'a str,
    pub succeeded: bool,
    pub tested: bool,
    pub changed_lines: u64,
}

/// True when the run is in the review sample: decided by its id alone, so anyone can
/// recompute it. FNV-1a, as it is fixed and needs no dependency.
pub fn sampled(run_id: &str, percent: u64) -> bool {
    let hash = run_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    hash % 100 < percent
}

/// Whether the run needs review. `pair` names the pair (`code by qwen2.5-coder:7b`) and
/// `scope` says whose record the standing is (`in this repository`, or across all).
pub fn advise(
    standing: &Standing,
    run: &RunFacts<'_>,
    t: &Thresholds,
    pair: &str,
    scope: &str,
) -> ReviewAdvice {
    let record = format!(
        "{pair}: {} reviewed, {} good or acceptable, {scope}",
        standing.reviewed, standing.good
    );
    let (required, why) = match standing.phase {
        Phase::Calibrate if standing.relapsed => (
            true,
            format!(
                "{} poor verdicts among the last {} sent {pair} back to calibrate: every run is reviewed until {} more have been ({record})",
                t.relapse_poor, t.relapse_window, t.calibrate_runs
            ),
        ),
        Phase::Calibrate => (
            true,
            format!(
                "calibrate: every run is reviewed until {} have been ({record})",
                t.calibrate_runs
            ),
        ),
        Phase::Establish if !run.succeeded => (
            true,
            format!("establish: the run did not succeed ({record})"),
        ),
        Phase::Establish => {
            let sampled = sampled(run.run_id, t.sample_percent);
            let which = if sampled { "is" } else { "is not" };
            (
                sampled,
                format!(
                    "establish: this run {which} in the {}% sample chosen from its run id; trust comes at {} reviewed runs {}% good or acceptable ({record})",
                    t.sample_percent, t.establish_runs, t.good_percent
                ),
            )
        }
        Phase::Trust => trusted(run, t, &record),
    };
    ReviewAdvice {
        required,
        phase: standing.phase,
        why,
    }
}

fn trusted(run: &RunFacts<'_>, t: &Thresholds, record: &str) -> (bool, String) {
    if !run.succeeded {
        (
            true,
            format!("trust, but the run did not succeed ({record})"),
        )
    } else if !run.tested {
        (true, format!("trust, but the run had no test ({record})"))
    } else if run.changed_lines > t.max_changed_lines {
        (
            true,
            format!(
                "trust, but the run changed {} lines, more than {} ({record})",
                run.changed_lines, t.max_changed_lines
            ),
        )
    } else {
        (
            false,
            format!("trust: a successful, tested, small change needs no review ({record})"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_after(verdicts: &str) -> (Phase, usize, bool) {
        let verdicts: Vec<&str> = verdicts
            .chars()
            .map(|c| match c {
                'g' => "good",
                'a' => "acceptable",
                _ => "poor",
            })
            .collect();
        let standing = standing(&verdicts, &Thresholds::default());
        (standing.phase, standing.reviewed, standing.relapsed)
    }

    /// The transitions, one verdict string (g good, a acceptable, p poor) a row.
    #[test]
    fn the_lifecycle_moves_through_its_phases_and_back() {
        use Phase::{Calibrate, Establish, Trust};
        let twenty_good = "g".repeat(20);
        let nineteen_good = "g".repeat(19);
        let rows: Vec<(String, (Phase, usize, bool))> = vec![
            (String::new(), (Calibrate, 0, false)),
            ("gggg".into(), (Calibrate, 4, false)),
            ("gggga".into(), (Establish, 5, false)),
            (nineteen_good.clone(), (Establish, 19, false)),
            (twenty_good.clone(), (Trust, 20, false)),
            // One poor in twenty is 95%: still trusted.
            (format!("{nineteen_good}p"), (Trust, 20, false)),
            // Poor verdicts more than ten apart never relapse: 32 of 36 good is 89%.
            (
                "pggggggggggpggggggggggpggggggggggpgg".into(),
                (Trust, 36, false),
            ),
            // Two poor among the last ten: back to calibrate, counting from zero.
            (format!("{twenty_good}pgp"), (Calibrate, 0, true)),
            (format!("{twenty_good}pgpgg"), (Calibrate, 2, true)),
            (format!("{twenty_good}pgpggggg"), (Establish, 5, true)),
            // Two poor further apart than ten do not relapse.
            (format!("{twenty_good}pggggggggggp"), (Trust, 32, false)),
            // Early poor verdicts in calibrate restart its count too.
            ("gpp".into(), (Calibrate, 0, true)),
        ];
        for (verdicts, expected) in rows {
            assert_eq!(phase_after(&verdicts), expected, "after `{verdicts}`");
        }
    }

    /// With the default relapse rule a pair cannot stay below 80% for long without
    /// going back to calibrate; with a laxer one, the rate alone keeps it in establish.
    #[test]
    fn a_pair_below_eighty_percent_stays_in_establish() {
        let t = Thresholds {
            relapse_poor: usize::MAX,
            ..Thresholds::default()
        };
        let mut verdicts = vec!["good"; 15];
        verdicts.extend(["poor"; 5]);
        let below = standing(&verdicts, &t);
        assert_eq!(
            (below.phase, below.reviewed, below.good),
            (Phase::Establish, 20, 15)
        );
        verdicts.extend(["good"; 5]);
        assert_eq!(standing(&verdicts, &t).phase, Phase::Trust);
    }

    #[test]
    fn the_sample_is_about_fifteen_percent_and_reproducible() {
        let ids: Vec<String> = (0..10_000)
            .map(|n| format!("20261120T220512123Z-{n:08x}"))
            .collect();
        let chosen = ids.iter().filter(|id| sampled(id, 15)).count();
        assert!((1300..1700).contains(&chosen), "{chosen}");
        assert!(ids.iter().all(|id| sampled(id, 15) == sampled(id, 15)));
        assert!(!ids.iter().any(|id| sampled(id, 0)));
    }

    #[test]
    fn in_trust_only_unsuccessful_untested_or_large_runs_need_review() {
        let t = Thresholds::default();
        let trust = standing(&["good"; 20], &t);
        let run = |succeeded, tested, changed_lines| RunFacts {
            run_id: "r",
            succeeded,
            tested,
            changed_lines,
        };
        let required = |facts: RunFacts<'_>| advise(&trust, &facts, &t, "code by m", "").required;
        assert!(!required(run(true, true, 10)));
        assert!(required(run(false, true, 10)));
        assert!(required(run(true, false, 10)));
        assert!(required(run(true, true, 201)));
        let calibrating = standing(&[], &t);
        assert!(advise(&calibrating, &run(true, true, 1), &t, "code by m", "").required);
    }

    /// A ledger holding, for the pair (code, m), the verdicts `here` in repository `here`
    /// and `elsewhere` in repository `there`, one letter a run (g good, p poor), in order.
    fn ledger_with(dir: &std::path::Path, here: &str, elsewhere: &str) -> Ledger {
        let mut ledger = Ledger::open(&dir.join("ledger.db")).expect("a ledger");
        let runs = elsewhere
            .chars()
            .map(|v| ("there", v))
            .chain(here.chars().map(|v| ("here", v)));
        for (n, (repo, verdict)) in runs.enumerate() {
            let run_id = format!("run-{n:03}");
            let record = crate::ledger::RunRecord {
                run_id: run_id.clone(),
                repo_root: format!("/{repo}"),
                repo_id: repo.to_owned(),
                kind: Some("code".to_owned()),
                model: Some("m".to_owned()),
                status: "success".to_owned(),
                started_at: format!("2026-01-01T00:00:{n:02}.000Z"),
                ended_at: format!("2026-01-01T00:00:{n:02}.000Z"),
                ..crate::ledger::RunRecord::default()
            };
            ledger.record(&record).expect("a run recorded");
            let entry = crate::ledger::ReviewEntry {
                verdict: if verdict == 'g' { "good" } else { "poor" }.to_owned(),
                reason: None,
                failure_mode: None,
                at: crate::ledger::now(),
            };
            ledger
                .add_review(&run_id, &entry)
                .expect("a verdict recorded");
        }
        ledger
    }

    /// Which record a pair goes by: this repository's once it has 5 reviewed runs of the
    /// pair, all repositories' before (and says so), so a well-tried pair is not sent back
    /// to calibrate in a new repository, nor one that failed elsewhere trusted here.
    #[test]
    fn a_repository_with_few_reviews_goes_by_every_repositorys_record() {
        use Phase::{Calibrate, Establish, Trust};
        let twenty = "g".repeat(20);
        let rows: Vec<(&str, &str, Phase, &str)> = vec![
            // Nothing anywhere: calibrate, by the (empty) record of all repositories.
            (
                "",
                "",
                Calibrate,
                "across all repositories as this one has 0",
            ),
            // Trusted elsewhere, new here: trusted through the others' record.
            (
                "",
                &twenty,
                Trust,
                "across all repositories as this one has 0",
            ),
            (
                "gggg",
                &twenty,
                Trust,
                "across all repositories as this one has 4",
            ),
            // Five here: this repository's own record, calibrate over.
            ("ggggg", &twenty, Establish, "in this repository"),
            // Relapsed elsewhere (two poor among the last ten): calibrate here too.
            ("gg", "ggggggggggggggggggggpgp", Calibrate, "this one has 2"),
            // Its own five good verdicts outweigh another repository's relapse.
            (
                "ggggg",
                "ggggggggggggggggggggpgp",
                Establish,
                "in this repository",
            ),
        ];
        for (here, elsewhere, phase, scope) in rows {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let mut ledger = ledger_with(dir.path(), here, elsewhere);
            let (standing, said) = pair_standing(
                &mut ledger,
                "code",
                "m",
                Some("here"),
                &Thresholds::default(),
            )
            .expect("the pair's standing");
            assert_eq!(
                standing.phase, phase,
                "here `{here}`, elsewhere `{elsewhere}`"
            );
            assert!(
                said.contains(scope),
                "here `{here}`, elsewhere `{elsewhere}`: {said}"
            );
        }
    }
}
