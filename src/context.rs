//! Gathers the context files a spec names (paths or globs) into text the prompt can show.

use std::path::Path;

use globset::Glob;

use crate::error::{Error, Result};
use crate::guard;
use crate::language;

/// The default cap on the bytes of all context files together. Local models have small
/// windows; an explicit error beats a silently truncated prompt.
pub const DEFAULT_BUDGET_BYTES: usize = crate::defaults::CONTEXT_BUDGET_BYTES;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ContextFile {
    pub path: String,
    pub language: &'static str,
    pub content: String,
}

/// Reads every file the patterns name, in the order given (a glob's matches sorted by
/// path), each file once. A glob skips files in git directories and others the guard
/// refuses; a path named outright that the guard refuses is an `unsafe_path` error. Output files are left out: the prompt shows their current
/// content where it asks for the new one, and twice would waste a small context window.
pub fn gather(
    bounds: &guard::Bounds,
    patterns: &[String],
    outputs: &[String],
    budget_bytes: usize,
) -> Result<Vec<ContextFile>> {
    let root = bounds.root();
    let mut paths: Vec<String> = Vec::new();
    let mut seen: std::collections::HashSet<String> = outputs.iter().cloned().collect();
    let mut walked: Option<Vec<String>> = None;
    for pattern in patterns {
        if is_glob(pattern) {
            let matcher = Glob::new(pattern)
                .map(|glob| glob.compile_matcher())
                .map_err(|error| Error::Context {
                    message: format!("`{pattern}` is not a valid glob: {error}"),
                })?;
            let files = walked.get_or_insert_with(|| walk(root));
            let before = paths.len();
            // A glob skips what the guard refuses (the walk already leaves out git
            // directories); a path named outright is still refused, loudly.
            for file in files
                .iter()
                .filter(|file| matcher.is_match(file.as_str()) && bounds.locate(file).is_ok())
            {
                if seen.insert(file.clone()) {
                    paths.push(file.clone());
                }
            }
            if paths.len() == before && !files.iter().any(|file| matcher.is_match(file.as_str())) {
                return Err(Error::Context {
                    message: format!("the glob `{pattern}` matches no file in the repository"),
                });
            }
        } else if seen.insert(pattern.clone()) {
            paths.push(pattern.clone());
        }
    }

    // Sizes first, so one huge file is refused before it is read into memory. A symlink
    // counts with what it points to, when that is inside the repository (the read refuses
    // the rest).
    let sizes: Vec<(usize, &str)> = paths
        .iter()
        .map(|path| {
            let size = bounds
                .locate(path)
                .ok()
                .and_then(|_| std::fs::canonicalize(root.join(path)).ok())
                .filter(|real| real.starts_with(root))
                .and_then(|real| std::fs::metadata(real).ok())
                .filter(std::fs::Metadata::is_file)
                .map_or(0, |metadata| metadata.len());
            (usize::try_from(size).unwrap_or(usize::MAX), path.as_str())
        })
        .collect();
    check_budget(sizes, budget_bytes)?;

    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let content = read_text(bounds, &path)?;
        files.push(ContextFile {
            language: language::for_path(&path),
            path,
            content,
        });
    }
    check_budget(
        files
            .iter()
            .map(|file| (file.content.len(), file.path.as_str()))
            .collect(),
        budget_bytes,
    )?;
    Ok(files)
}

/// Refuses context over the budget, naming the largest files.
fn check_budget(mut sizes: Vec<(usize, &str)>, budget_bytes: usize) -> Result<()> {
    let total: usize = sizes.iter().map(|(size, _)| size).sum();
    if total <= budget_bytes {
        return Ok(());
    }
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let largest: Vec<String> = sizes
        .iter()
        .take(3)
        .map(|(size, path)| format!("{path} ({size} bytes)"))
        .collect();
    Err(Error::Context {
        message: format!(
            "the context files are {total} bytes, over the budget of {budget_bytes} bytes \
             (largest: {}); name fewer files or raise --max-context-bytes",
            largest.join(", ")
        ),
    })
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// Every file of the working tree that git would not ignore, as `/`-separated relative paths,
/// without what is in a git directory: `.git`, and one with any other name (a nested
/// repository's `--separate-git-dir`), which the guard refuses to read.
fn walk(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = ignore::WalkBuilder::new(root)
        .hidden(false)
        .require_git(false)
        .filter_entry(|entry| !in_git_dir(entry))
        .build()
        .filter_map(std::result::Result::ok)
        .filter(|entry| entry.file_type().is_some_and(|kind| kind.is_file()))
        .filter_map(|entry| {
            let relative = entry.path().strip_prefix(root).ok()?;
            relative
                .to_str()
                .map(|s| s.replace(std::path::MAIN_SEPARATOR, "/"))
        })
        .collect();
    files.sort_unstable();
    files
}

/// Whether the walk leaves `entry` out: a `.git`, or a git directory with another name (the
/// root itself is the working tree, never one).
fn in_git_dir(entry: &ignore::DirEntry) -> bool {
    guard::is_dot_git(&entry.file_name().to_string_lossy())
        || (entry.depth() > 0
            && entry.file_type().is_some_and(|kind| kind.is_dir())
            && guard::is_git_dir(entry.path()))
}

/// Reads a context file through the guard: paths that leave the repository or enter `.git`
/// (also through a symlink, at any component) are refused, as are binary files and files
/// that are not UTF-8.
fn read_text(bounds: &guard::Bounds, relative: &str) -> Result<String> {
    let bytes = match bounds.read(relative, true) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(Error::Context {
                message: format!("context file `{relative}` does not exist"),
            });
        }
        Err(guard::ReadError::Unsafe(reason)) => {
            return Err(Error::UnsafePath {
                path: relative.to_owned(),
                reason: format!("context file: {reason}"),
            });
        }
        Err(guard::ReadError::Directory) => {
            return Err(Error::Context {
                message: format!(
                    "context file `{relative}` is a directory; use a glob such as `{relative}/**`"
                ),
            });
        }
        Err(guard::ReadError::Io(error)) => {
            return Err(Error::io(
                "read context file",
                bounds.root().join(relative),
                error,
            ));
        }
    };
    if bytes.iter().take(8192).any(|&b| b == 0) {
        return Err(Error::Context {
            message: format!("context file `{relative}` is binary"),
        });
    }
    String::from_utf8(bytes).map_err(|_| Error::Context {
        message: format!("context file `{relative}` is not UTF-8 text"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src/nested")).unwrap();
        std::fs::write(root.join("src/a.rs"), "fn a() {}\n").unwrap();
        std::fs::write(root.join("src/nested/b.rs"), "fn b() {}\n").unwrap();
        std::fs::write(root.join("src/c.txt"), "c\n").unwrap();
        std::fs::write(root.join("blob.bin"), b"\0\x01\x02").unwrap();
        dir
    }

    #[test]
    fn globs_and_paths_in_order_without_duplicates() {
        let dir = tree();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let bounds = guard::Bounds::new(root.clone(), root.join(".git"));
        let files = gather(
            &bounds,
            &[
                "src/c.txt".to_owned(),
                "src/**/*.rs".to_owned(),
                "src/a.rs".to_owned(),
            ],
            &["src/nested/b.rs".to_owned()],
            1000,
        )
        .unwrap();
        // The output file is left out: its content is shown where the prompt asks for it.
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["src/c.txt", "src/a.rs"]);
        assert_eq!(files[1].language, "rust");
    }

    #[test]
    fn globs_skip_git_directories_but_named_paths_are_refused() {
        let dir = tree();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        for inner in ["gd/objects", "gd/refs"] {
            std::fs::create_dir_all(root.join(inner)).unwrap();
        }
        std::fs::write(root.join("gd/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(root.join("gd/COMMIT_EDITMSG"), "nested\n").unwrap();
        std::fs::remove_file(root.join("blob.bin")).unwrap();
        let bounds = guard::Bounds::new(root.clone(), root.join(".git"));
        let files = gather(&bounds, &["**/*".to_owned()], &[], 1000).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["src/a.rs", "src/c.txt", "src/nested/b.rs"]);
        let error = gather(&bounds, &["gd/COMMIT_EDITMSG".to_owned()], &[], 1000).unwrap_err();
        assert!(matches!(error, Error::UnsafePath { .. }), "{error}");
    }

    #[test]
    fn clear_errors() {
        let dir = tree();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let bounds = guard::Bounds::new(root.clone(), root.join(".git"));
        let error = |patterns: &[&str], budget| {
            let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
            gather(&bounds, &patterns, &[], budget)
                .unwrap_err()
                .to_string()
        };
        assert!(error(&["missing.rs"], 1000).contains("`missing.rs` does not exist"));
        assert!(error(&["blob.bin"], 1000).contains("is binary"));
        assert!(error(&["*.py"], 1000).contains("matches no file"));
        assert!(error(&["src"], 1000).contains("is a directory"));
        assert!(error(&["src/**/*.rs"], 5).contains("over the budget of 5 bytes"));
    }
}
