//! The checks that stand between a model's reply and the disk: paths, elided code, shrinking.
//!
//! Each function answers with the reason for a refusal; the pipeline turns a refusal into a
//! failed attempt whose reason goes back to the model in the repair prompt.

use std::path::{Component, Path, PathBuf};

/// Normalises a repository-relative path (`./a//b` → `a/b`) or says why it is unsafe.
///
/// Lexical only: it runs before anything touches the disk, for spec paths and for paths a
/// model names. [`resolve_inside`] does the checks that need the file system.
pub fn normalize_relative(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".to_owned());
    }
    if path.contains('\\') {
        return Err("the path contains a backslash; use `/` between components".to_owned());
    }
    if path.starts_with('/') || path.starts_with('~') || has_drive_prefix(path) {
        return Err("the path is absolute; paths are relative to the repository root".to_owned());
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("the path contains `..`".to_owned()),
            _ if part.eq_ignore_ascii_case(".git") => {
                return Err("the path is inside `.git`".to_owned());
            }
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("the path names the repository root, not a file".to_owned());
    }
    if path.ends_with('/') {
        return Err("the path names a directory, not a file".to_owned());
    }
    Ok(parts.join("/"))
}

fn has_drive_prefix(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

/// The absolute location of `relative` under `root`, refused when an existing directory on
/// the way is a symlink that leads outside the root or into `.git`.
///
/// `root` must be canonical. The last component is not followed: a symlink there is
/// replaced by the write, never written through.
pub fn resolve_inside(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let relative = normalize_relative(relative)?;
    let target = root.join(&relative);
    let git_dir = root.join(".git");
    let mut current = root.to_path_buf();
    let components: Vec<Component<'_>> = Path::new(&relative).components().collect();
    for component in &components[..components.len() - 1] {
        current.push(component);
        let Ok(metadata) = std::fs::symlink_metadata(&current) else {
            // Not created yet: nothing below it exists either.
            break;
        };
        if metadata.file_type().is_symlink() {
            let resolved = std::fs::canonicalize(&current).map_err(|error| {
                format!(
                    "`{}` is a symlink that cannot be resolved: {error}",
                    display_relative(root, &current)
                )
            })?;
            if !resolved.starts_with(root) {
                return Err(format!(
                    "`{}` is a symlink to a directory outside the repository",
                    display_relative(root, &current)
                ));
            }
            if resolved.starts_with(&git_dir) {
                return Err(format!(
                    "`{}` is a symlink into `.git`",
                    display_relative(root, &current)
                ));
            }
        } else if !metadata.is_dir() {
            return Err(format!(
                "`{}` is a file, not a directory",
                display_relative(root, &current)
            ));
        }
    }
    if let Ok(metadata) = std::fs::symlink_metadata(&target)
        && metadata.is_dir()
    {
        return Err("the path is an existing directory".to_owned());
    }
    Ok(target)
}

fn display_relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Phrases models write in place of code they left out. Matched case-insensitively inside
/// comment lines only, so real code that merely mentions "existing" is not refused.
const ELISION_PHRASES: &[&str] = &[
    "rest of the file",
    "rest of the code",
    "rest of file",
    "rest of code",
    "remaining code",
    "remains unchanged",
    "remain unchanged",
    "rest unchanged",
    "unchanged code",
    "existing code",
    "same as before",
    "previous code",
    "code omitted",
    "omitted for brevity",
    "for brevity",
    "implementation here",
    "your code here",
    "other methods",
    "other functions",
    "keep the rest",
    "as before",
];

/// Returns the first line that stands for omitted code, if any.
pub fn find_elision(code: &str) -> Option<String> {
    for line in code.lines() {
        let trimmed = line.trim();
        let Some(comment) = comment_text(trimmed) else {
            if trimmed == "..." || trimmed == "…" {
                return Some(trimmed.to_owned());
            }
            continue;
        };
        let lower = comment.to_lowercase();
        let mentions_elision = ELISION_PHRASES.iter().any(|phrase| lower.contains(phrase));
        let is_ellipsis = lower
            .trim_matches(|c: char| c == '.' || c == '…' || c.is_whitespace())
            .is_empty()
            && (lower.contains("...") || lower.contains('…'));
        if mentions_elision
            && (lower.contains("...") || lower.contains('…') || is_placeholder_wording(&lower))
            || is_ellipsis
        {
            return Some(trimmed.to_owned());
        }
    }
    None
}

fn is_placeholder_wording(lower: &str) -> bool {
    [
        "unchanged",
        "omitted",
        "here",
        "same as before",
        "as before",
        "brevity",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

/// The text of a comment line in the common comment syntaxes, without its markers.
fn comment_text(line: &str) -> Option<&str> {
    for prefix in ["//", "#", "--", ";;", "/*", "<!--", "*", "%", "'"] {
        if let Some(rest) = line.strip_prefix(prefix) {
            let rest = rest.trim_end_matches("*/").trim_end_matches("-->");
            return Some(rest.trim());
        }
    }
    None
}

/// Refuses a replacement that is less than half the size of the file it replaces.
pub fn check_shrink(path: &str, old_len: usize, new_len: usize) -> Result<(), String> {
    if old_len >= 64 && new_len * 2 < old_len {
        return Err(format!(
            "the new `{path}` is {new_len} bytes, less than half of the current {old_len} bytes; \
             reply with the complete file (set \"allow_shrink\": true in the spec if the file really should shrink)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_safe_paths() {
        assert_eq!(normalize_relative("./src//a.rs").unwrap(), "src/a.rs");
        assert_eq!(normalize_relative("a.gitignore").unwrap(), "a.gitignore");
        assert_eq!(
            normalize_relative(".github/ci.yml").unwrap(),
            ".github/ci.yml"
        );
    }

    #[test]
    fn refuses_unsafe_paths() {
        for path in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            ".git/config",
            "sub/.GIT/hooks/pre-commit",
            "a\\b",
            "a\0b",
            "C:/x",
            "~/x",
            ".",
            "dir/",
        ] {
            assert!(normalize_relative(path).is_err(), "{path:?} was accepted");
        }
    }

    #[test]
    fn finds_elisions_in_comments_only() {
        assert!(find_elision("fn a() {}\n// ... rest of the file unchanged ...\n").is_some());
        assert!(find_elision("    # ... (same as before)\n").is_some());
        assert!(find_elision("// existing code here\n").is_some());
        assert!(find_elision("  ...\n").is_some());
        assert!(find_elision("let existing_code = rest_of_file();\n").is_none());
        assert!(find_elision("// Keeps the existing entries sorted.\nfn f() {}\n").is_none());
        assert!(find_elision("print('...')\n").is_none());
    }

    #[test]
    fn shrink_refuses_less_than_half() {
        assert!(check_shrink("a", 1000, 400).is_err());
        assert!(check_shrink("a", 1000, 600).is_ok());
        assert!(check_shrink("a", 10, 1).is_ok());
    }
}
