//! The output files as they were before the run: what stands at each path, its text, and
//! the checks that refuse unsafe or uncommitted targets before any model call.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::guard;
use crate::language;
use crate::prompt::{self, OutputView};
use crate::repo::{Repo, TargetStatus};
use crate::spec::TaskSpec;

/// An output file as it was before the run.
pub(crate) struct Target {
    pub(crate) path: String,
    /// Something (a file or a symlink) stands at the path.
    pub(crate) exists: bool,
    pub(crate) before: Option<String>,
    /// The path relative to the root with every directory symlink resolved: what git
    /// knows the file by, and what tells two names of one file apart.
    pub(crate) real: PathBuf,
    /// The target of the symlink standing at the path, which the run replaces.
    pub(crate) link: Option<String>,
}

/// The text `path` held before the run, when it is a target that was a file.
pub(crate) fn before_of<'a>(targets: &'a [Target], path: &str) -> Option<&'a str> {
    targets
        .iter()
        .find(|target| target.path == path)
        .and_then(|target| target.before.as_deref())
}

/// The output files as they are now; refuses paths that resolve outside the repository,
/// and two outputs that are one file (or a file and a directory holding another) through
/// a symlink, before any model call.
pub(crate) fn read_targets(bounds: &guard::Bounds, spec: &TaskSpec) -> Result<Vec<Target>> {
    let targets = spec
        .outputs
        .iter()
        .map(|path| {
            let unsafe_path = |reason: String| Error::UnsafePath {
                path: path.clone(),
                reason,
            };
            let location = bounds.locate_target(path).map_err(unsafe_path)?;
            // A symlink there is replaced, never followed: it reads as no previous text.
            let before = match bounds.read(path, false) {
                Ok(Some(bytes)) => Some(String::from_utf8(bytes).map_err(|_| Error::Context {
                    message: format!("output file `{path}` exists and is not UTF-8 text; it cannot be edited by a model"),
                })?),
                Ok(None) => None,
                Err(guard::ReadError::Unsafe(reason)) => return Err(unsafe_path(reason)),
                Err(guard::ReadError::Directory) => {
                    return Err(unsafe_path("the path is an existing directory".to_owned()));
                }
                Err(guard::ReadError::Io(error)) => {
                    return Err(Error::io(
                        "read output file",
                        bounds.root().join(location.parent()).join(&location.name),
                        error,
                    ));
                }
            };
            let real = location.parent().join(&location.name);
            let link = if location.existing == guard::Existing::Symlink {
                let shown = bounds.root().join(&real);
                let target = std::fs::read_link(&shown)
                    .map_err(|error| Error::io("read symlink", &shown, error))?;
                Some(target.to_string_lossy().into_owned())
            } else {
                None
            };
            Ok(Target {
                path: path.clone(),
                exists: location.existing != guard::Existing::Nothing,
                before,
                real,
                link,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (index, target) in targets.iter().enumerate() {
        for other in &targets[..index] {
            let same = target.real == other.real;
            if same || target.real.starts_with(&other.real) || other.real.starts_with(&target.real)
            {
                return Err(Error::spec(
                    &spec.source,
                    Some(&format!("output_files[{index}]")),
                    format!(
                        "`{}` and `{}` {} (through a symlink); list each file once",
                        target.path,
                        other.path,
                        if same {
                            "are the same file"
                        } else {
                            "are a file and a directory holding the other"
                        }
                    ),
                ));
            }
        }
    }
    Ok(targets)
}

pub(crate) fn output_views(targets: &[Target], language: &str) -> Vec<OutputView> {
    targets
        .iter()
        .map(|target| {
            let body = target.before.as_deref().unwrap_or_default();
            OutputView {
                path: target.path.clone(),
                language: fence_language(&target.path, language, targets.len()),
                exists: target.before.is_some(),
                body: body.strip_suffix('\n').unwrap_or(body).to_owned(),
                fence: prompt::fence_for(body),
            }
        })
        .collect()
}

/// The fence language for one output: the task's language, or with several outputs each
/// file's own when its extension tells.
pub(crate) fn fence_language(path: &str, language: &str, outputs: usize) -> String {
    let own = language::for_path(path);
    if outputs == 1 || own.is_empty() {
        language.to_owned()
    } else {
        own.to_owned()
    }
}

pub(crate) fn check_clean_targets(repo: &Repo, targets: &[Target]) -> Result<()> {
    for target in targets.iter().filter(|t| t.exists) {
        let ignored = match repo.target_status(&target.real)? {
            TargetStatus::Clean => continue,
            TargetStatus::Uncommitted => false,
            TargetStatus::Ignored => true,
        };
        return Err(Error::DirtyTarget {
            path: target.path.clone(),
            ignored,
        });
    }
    Ok(())
}
