//! Which specs a batch runs and in what order: the `*.json` files below a directory (or
//! named one by one), each read and validated, ordered by `depends_on`. Everything that
//! would stop the batch — a spec that does not validate, two specs with one id, an unknown
//! id, a cycle — is found here, before any task runs, and names the spec files.
//!
//! The order is the one a serial run follows: dependencies first, otherwise by path. Tasks
//! that share a file (one writes what the other writes or reads) are also kept in that
//! order when run in parallel, so the tree ends as a serial run leaves it; tasks sharing no
//! file and no dependency are assumed independent (a test command that reads every file
//! of the repository can still see another task's code).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::input_file;
use crate::spec::{self, TaskSpec};

/// One task of a batch, validated.
#[derive(Debug, Clone)]
pub struct Task {
    /// The spec file.
    pub path: PathBuf,
    /// The spec's text as read and validated: the run is given exactly this.
    pub text: String,
    pub spec: TaskSpec,
    /// The tasks (indices in the plan) named by `depends_on`: they must succeed first.
    pub needs: Vec<usize>,
    /// Earlier tasks (indices in the plan) sharing a file with this one: they finish first,
    /// whatever their status.
    pub after: Vec<usize>,
}

/// The tasks of a batch in the order a serial run follows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tasks: Vec<Task>,
}

/// The spec files the batch's inputs name: each file given, and every `*.json` below each
/// directory given, hidden and git-ignored files skipped, filtered by `glob` (matched
/// against the path below the directory, or the file name). Sorted, each file once.
pub fn find_specs(inputs: &[PathBuf], glob: Option<&str>) -> Result<Vec<PathBuf>> {
    let matcher = glob
        .map(|pattern| {
            globset::Glob::new(pattern)
                .map(|glob| glob.compile_matcher())
                .map_err(|error| Error::Usage(format!("--glob `{pattern}`: {error}")))
        })
        .transpose()?;
    let mut found = Vec::new();
    for input in inputs {
        let metadata = std::fs::metadata(input)
            .map_err(|error| Error::spec(input, None, format!("cannot read the spec: {error}")))?;
        if !metadata.is_dir() {
            found.push(input.clone());
            continue;
        }
        let mut below = Vec::new();
        for entry in ignore::WalkBuilder::new(input)
            .hidden(true)
            .git_ignore(true)
            .require_git(false)
            .build()
        {
            let entry = entry.map_err(|error| Error::Batch {
                paths: vec![input.clone()],
                message: format!("cannot list the specs below {}: {error}", input.display()),
            })?;
            let path = entry.path();
            let is_spec = entry.file_type().is_some_and(|kind| kind.is_file())
                && path.extension().is_some_and(|ext| ext == "json");
            let relative = path.strip_prefix(input).unwrap_or(path);
            let wanted = matcher.as_ref().is_none_or(|matcher| {
                matcher.is_match(relative)
                    || relative
                        .file_name()
                        .is_some_and(|name| matcher.is_match(name))
            });
            if is_spec && wanted {
                below.push(path.to_path_buf());
            }
        }
        if below.is_empty() {
            return Err(Error::Batch {
                paths: vec![input.clone()],
                message: format!(
                    "{}: no task spec (*.json{}) below this directory",
                    input.display(),
                    glob.map(|g| format!(" matching --glob `{g}`"))
                        .unwrap_or_default()
                ),
            });
        }
        below.sort();
        found.extend(below);
    }
    let mut seen = HashSet::new();
    found.retain(|path| seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone())));
    Ok(found)
}

/// Reads and validates every spec and orders them. `done` are task ids that succeeded
/// before (an `--only-failed` rerun): a dependency on one of them is met.
pub fn plan(paths: &[PathBuf], done: &BTreeSet<String>) -> Result<Plan> {
    let mut read = Vec::new();
    for path in paths {
        let text = input_file::read_text(path, input_file::MAX_SPEC_BYTES)
            .map_err(|error| Error::spec(path, None, format!("cannot read the spec: {error}")))?;
        let spec = spec::parse(path, &text)?;
        read.push((path.clone(), text, spec));
    }
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (index, (path, _, spec)) in read.iter().enumerate() {
        if let Some(&first) = by_id.get(spec.task_id.as_str()) {
            let other = &read[first].0;
            return Err(Error::Batch {
                paths: vec![other.clone(), path.clone()],
                message: format!(
                    "two specs have the task id `{}`: {} and {}; give each task its own id",
                    spec.task_id,
                    other.display(),
                    path.display()
                ),
            });
        }
        by_id.insert(&spec.task_id, index);
    }
    let mut needs: Vec<Vec<usize>> = Vec::with_capacity(read.len());
    for (path, _, spec) in &read {
        let mut mine = Vec::new();
        for id in &spec.depends_on {
            match by_id.get(id.as_str()) {
                Some(&index) => mine.push(index),
                None if done.contains(id) => {}
                None => {
                    return Err(Error::Batch {
                        paths: vec![path.clone()],
                        message: format!(
                            "{}: field `depends_on`: no spec of this batch has the task id `{id}`",
                            path.display()
                        ),
                    });
                }
            }
        }
        needs.push(mine);
    }
    let order = order(&read, &needs)?;
    Ok(build(read, &needs, &order))
}

/// The serial order: Kahn's algorithm, taking the first ready spec by path each time.
fn order(read: &[(PathBuf, String, TaskSpec)], needs: &[Vec<usize>]) -> Result<Vec<usize>> {
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<(&Path, usize)> = waiting
        .iter()
        .enumerate()
        .filter(|(_, count)| **count == 0)
        .map(|(index, _)| (read[index].0.as_path(), index))
        .collect();
    let mut order = Vec::with_capacity(read.len());
    while let Some((_, index)) = ready.pop_first() {
        order.push(index);
        for (other, mine) in needs.iter().enumerate() {
            for _ in mine.iter().filter(|&&need| need == index) {
                waiting[other] -= 1;
                if waiting[other] == 0 {
                    ready.insert((read[other].0.as_path(), other));
                }
            }
        }
    }
    if order.len() == read.len() {
        return Ok(order);
    }
    // Every task left waits on another left: walking their dependencies finds a cycle.
    let left: HashSet<usize> = (0..read.len()).filter(|i| !order.contains(i)).collect();
    let mut walk = vec![left.iter().copied().min().unwrap_or_default()];
    loop {
        let last = walk[walk.len() - 1];
        let Some(&next) = needs[last].iter().find(|need| left.contains(need)) else {
            break;
        };
        if let Some(start) = walk.iter().position(|&i| i == next) {
            walk.drain(..start);
            walk.push(next);
            break;
        }
        walk.push(next);
    }
    let named = |i: usize| format!("{} ({})", read[i].0.display(), read[i].2.task_id);
    Err(Error::Batch {
        paths: walk[..walk.len().saturating_sub(1)]
            .iter()
            .map(|&i| read[i].0.clone())
            .collect(),
        message: format!(
            "the specs' depends_on make a cycle: {} (each waits for the next to succeed); nothing ran",
            walk.iter()
                .map(|&i| named(i))
                .collect::<Vec<_>>()
                .join(" → ")
        ),
    })
}

fn build(read: Vec<(PathBuf, String, TaskSpec)>, needs: &[Vec<usize>], order: &[usize]) -> Plan {
    let position: HashMap<usize, usize> = order
        .iter()
        .enumerate()
        .map(|(at, &index)| (index, at))
        .collect();
    let mut slots: Vec<Option<(PathBuf, String, TaskSpec)>> = read.into_iter().map(Some).collect();
    let mut tasks: Vec<Task> = order
        .iter()
        .filter_map(|&index| {
            let (path, text, spec) = slots[index].take()?;
            Some(Task {
                path,
                text,
                spec,
                needs: needs[index].iter().map(|need| position[need]).collect(),
                after: Vec::new(),
            })
        })
        .collect();
    for later in 0..tasks.len() {
        let after: Vec<usize> = (0..later)
            .filter(|&earlier| share_a_file(&tasks[earlier].spec, &tasks[later].spec))
            .collect();
        tasks[later].after = after;
    }
    Plan { tasks }
}

/// One writes a file the other writes or reads (a context entry naming it, or a glob
/// matching it).
fn share_a_file(one: &TaskSpec, other: &TaskSpec) -> bool {
    let touches = |writer: &TaskSpec, toucher: &TaskSpec| {
        writer
            .outputs
            .iter()
            .any(|path| toucher.outputs.contains(path) || reads(toucher, path))
    };
    touches(one, other) || touches(other, one)
}

fn reads(spec: &TaskSpec, path: &str) -> bool {
    spec.context_files.iter().any(|entry| {
        entry == path
            || globset::Glob::new(entry).is_ok_and(|glob| glob.compile_matcher().is_match(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(dir: &Path, specs: &[(&str, &str, &[&str])]) -> Vec<PathBuf> {
        specs
            .iter()
            .map(|(name, id, deps)| {
                let path = dir.join(format!("{name}.json"));
                let spec = serde_json::json!({
                    "task_id": id,
                    "description": "d",
                    "output_file": format!("{id}.txt"),
                    "depends_on": deps,
                });
                std::fs::write(&path, spec.to_string()).expect("write a spec");
                path
            })
            .collect()
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.tasks.iter().map(|t| t.spec.task_id.as_str()).collect()
    }

    #[test]
    fn dependencies_come_first_and_ties_go_by_path() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let paths = specs(
            dir.path(),
            &[
                ("a", "A", &["D"]),
                ("b", "B", &[]),
                ("c", "C", &["A", "B"]),
                ("d", "D", &[]),
            ],
        );
        let plan = plan(&paths, &BTreeSet::new()).expect("a plan");
        assert_eq!(ids(&plan), ["B", "D", "A", "C"]);
        assert_eq!(plan.tasks[3].needs, [2, 0]);
    }

    #[test]
    fn tasks_sharing_a_file_keep_the_serial_order() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let write = |name: &str, spec: serde_json::Value| {
            let path = dir.path().join(name);
            std::fs::write(&path, spec.to_string()).expect("write a spec");
            path
        };
        let paths = [
            write(
                "a.json",
                serde_json::json!({"task_id": "A", "description": "d", "output_file": "src/a.py"}),
            ),
            write(
                "b.json",
                serde_json::json!({"task_id": "B", "description": "d", "output_file": "b.py", "context_files": ["src/*.py"]}),
            ),
            write(
                "c.json",
                serde_json::json!({"task_id": "C", "description": "d", "output_file": "c.py"}),
            ),
            write(
                "d.json",
                serde_json::json!({"task_id": "D", "description": "d", "output_file": "src/a.py"}),
            ),
        ];
        let plan = plan(&paths, &BTreeSet::new()).expect("a plan");
        let after: Vec<&[usize]> = plan.tasks.iter().map(|t| t.after.as_slice()).collect();
        assert_eq!(after, [&[][..], &[0], &[], &[0, 1]]);
    }

    #[test]
    fn a_cycle_is_named_with_its_files() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let paths = specs(
            dir.path(),
            &[
                ("a", "A", &["C"]),
                ("b", "B", &["A"]),
                ("c", "C", &["B"]),
                ("d", "D", &[]),
            ],
        );
        let Err(Error::Batch { paths, message }) = plan(&paths, &BTreeSet::new()) else {
            panic!("a cycle was accepted");
        };
        assert_eq!(paths.len(), 3, "{message}");
        assert!(message.contains("a.json (A)"), "{message}");
        assert!(message.contains("c.json (C)"), "{message}");
    }

    #[test]
    fn a_dependency_met_before_is_not_unknown() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let paths = specs(dir.path(), &[("b", "B", &["A"])]);
        assert!(matches!(
            plan(&paths, &BTreeSet::new()),
            Err(Error::Batch { .. })
        ));
        let done = BTreeSet::from(["A".to_owned()]);
        assert_eq!(ids(&plan(&paths, &done).expect("a plan")), ["B"]);
    }
}
