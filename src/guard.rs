//! The checks that stand between a model's reply and the disk: paths (by their text, then on
//! the file system, and opened without following symlinks), elided code, shrinking.
//!
//! Each check answers with the reason for a refusal; the pipeline turns a refusal into a
//! failed attempt or an `unsafe_path` error whose reason names the path.
//!
//! Time of check and time of use: [`Bounds::locate`] resolves a path once, to a directory
//! with no symlink on the way, and writers then open that directory one component at a
//! time with `O_NOFOLLOW` ([`Bounds::open_dir`]) and act relative to the open handle. A
//! symlink swapped into the path after the check makes the open fail instead of being
//! followed. What remains: a directory that is already open can be moved elsewhere by
//! another process with write access to the tree, and a write then lands where it went.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

/// Normalises a repository-relative path (`./a//b` → `a/b`) or says why it is unsafe.
///
/// Lexical only: it runs before anything touches the disk, for spec paths and for paths a
/// model names. [`Bounds::locate`] does the checks that need the file system.
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
    if path.chars().any(char::is_control) {
        // Newlines and escapes in a file name would garble diffs, prompts and terminals.
        return Err("the path contains a control character".to_owned());
    }
    if path.starts_with('/') || path.starts_with('~') || has_drive_prefix(path) {
        return Err("the path is absolute; paths are relative to the repository root".to_owned());
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("the path contains `..`".to_owned()),
            _ if is_dot_git(part) => return Err("the path is inside `.git`".to_owned()),
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("the path names the repository root, not a file".to_owned());
    }
    if path.ends_with('/') || path.ends_with("/.") {
        return Err("the path names a directory, not a file".to_owned());
    }
    Ok(parts.join("/"))
}

fn has_drive_prefix(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

/// True for a name that git or some file system treats as `.git`: any case, with trailing
/// dots or spaces (Windows drops them), with code points HFS+ ignores (`.g\u{200c}it`), an
/// NTFS stream (`.git::$INDEX_ALLOCATION`), or the 8.3 short name `git~1`. These are the
/// names git itself refuses to check out; look-alikes from other scripts are ordinary names.
pub fn is_dot_git(name: &str) -> bool {
    let visible: String = name.chars().filter(|&c| !is_hfs_ignorable(c)).collect();
    let base = visible.split(':').next().unwrap_or_default();
    base.trim_end_matches(['.', ' '])
        .eq_ignore_ascii_case(".git")
        || visible.eq_ignore_ascii_case("git~1")
}

/// The code points HFS+ leaves out when it compares names (the list git uses).
fn is_hfs_ignorable(c: char) -> bool {
    matches!(c, '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
}

/// What stands at a path's last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Nothing,
    File,
    Symlink,
    Directory,
    /// A FIFO, socket or device: reading one could block or have effects.
    Special,
}

/// A repository-relative path resolved against the file system.
#[derive(Debug, Clone)]
pub struct Location {
    /// The normalised path as the spec or model gave it.
    pub relative: String,
    /// The deepest existing directory on the way, relative to the root, with every symlink
    /// resolved: opening it needs no symlink.
    pub dir: PathBuf,
    /// The directories below `dir` that do not exist yet, in order.
    pub missing: Vec<String>,
    /// The last component.
    pub name: String,
    pub existing: Existing,
}

impl Location {
    /// The directory that holds the file once `missing` is created, symlink-free.
    pub fn parent(&self) -> PathBuf {
        let mut parent = self.dir.clone();
        parent.extend(&self.missing);
        parent
    }
}

/// Why a read through the guard did not give bytes.
#[derive(Debug)]
pub enum ReadError {
    /// The path is unsafe; the reason says why.
    Unsafe(String),
    Directory,
    Io(std::io::Error),
}

/// The part of the file system a run may touch: the working tree without any git directory.
#[derive(Debug, Clone)]
pub struct Bounds {
    root: PathBuf,
    git_dir: PathBuf,
}

impl Bounds {
    /// `root` and `git_dir` must be canonical. The git directory is refused wherever it
    /// is, also when it sits in the tree under another name (`--separate-git-dir`).
    pub fn new(root: PathBuf, git_dir: PathBuf) -> Self {
        Self { root, git_dir }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `relative`, refused when a directory on the way is a file, or a symlink that
    /// leads outside the root or into a git directory (also through a chain of symlinks).
    /// The last component is reported, not followed.
    pub fn locate(&self, relative: &str) -> Result<Location, String> {
        let relative = normalize_relative(relative)?;
        let parts: Vec<&str> = relative.split('/').collect();
        let Some((name, dirs)) = parts.split_last() else {
            return Err("the path is empty".to_owned());
        };
        let mut lexical = self.root.clone();
        let mut existing_dirs = 0;
        for dir in dirs {
            lexical.push(dir);
            let shown = dirs[..=existing_dirs].join("/");
            match std::fs::symlink_metadata(&lexical) {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                Err(error) => return Err(format!("`{shown}` cannot be inspected: {error}")),
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    let real = std::fs::canonicalize(&lexical).map_err(|error| {
                        format!("`{shown}` is a symlink that cannot be resolved: {error}")
                    })?;
                    self.check_real(&real)
                        .map_err(|why| format!("`{shown}` is a symlink that leads {why}"))?;
                    if !real.is_dir() {
                        return Err(format!("`{shown}` is a symlink to a file, not a directory"));
                    }
                }
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => return Err(format!("`{shown}` is a file, not a directory")),
            }
            existing_dirs += 1;
        }
        let deepest = self.root.join(dirs[..existing_dirs].join("/"));
        let real = std::fs::canonicalize(&deepest)
            .map_err(|error| format!("`{relative}`: its directory cannot be resolved: {error}"))?;
        self.check_real(&real)
            .map_err(|why| format!("its directory leads {why}"))?;
        let dir = real.strip_prefix(&self.root).unwrap_or(&real).to_path_buf();
        let missing: Vec<String> = dirs[existing_dirs..]
            .iter()
            .map(|d| (*d).to_owned())
            .collect();
        let name = (*name).to_owned();
        let existing = if missing.is_empty() {
            match std::fs::symlink_metadata(real.join(&name)) {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Existing::Nothing,
                Err(error) => return Err(format!("`{relative}` cannot be inspected: {error}")),
                Ok(metadata) if metadata.file_type().is_symlink() => Existing::Symlink,
                Ok(metadata) if metadata.is_dir() => Existing::Directory,
                Ok(metadata) if metadata.is_file() => Existing::File,
                Ok(_) => Existing::Special,
            }
        } else {
            Existing::Nothing
        };
        Ok(Location {
            relative,
            dir,
            missing,
            name,
            existing,
        })
    }

    /// [`Bounds::locate`] for a file about to be written: an existing directory, FIFO,
    /// socket or device there is refused; a symlink is fine (it is replaced, not followed).
    pub fn locate_target(&self, relative: &str) -> Result<Location, String> {
        let location = self.locate(relative)?;
        match location.existing {
            Existing::Directory => Err("the path is an existing directory".to_owned()),
            Existing::Special => {
                Err("the path is not a regular file (a FIFO, socket or device)".to_owned())
            }
            _ => Ok(location),
        }
    }

    /// Refuses a canonical path outside the root or inside a git directory, saying where it
    /// leads ("outside the repository", "into `.git`").
    fn check_real(&self, real: &Path) -> Result<(), &'static str> {
        let Ok(inside) = real.strip_prefix(&self.root) else {
            return Err("outside the repository");
        };
        if real.starts_with(&self.git_dir)
            || inside
                .components()
                .any(|c| is_dot_git(&c.as_os_str().to_string_lossy()))
        {
            return Err("into `.git`");
        }
        Ok(())
    }

    /// Opens a directory [`Bounds::locate`] found (relative to the root, symlink-free) one
    /// component at a time, never following a symlink, so a path swapped after the check
    /// fails here instead of leading elsewhere.
    pub fn open_dir(&self, real_relative: &Path) -> std::io::Result<File> {
        let mut dir = File::open(&self.root)?;
        for component in real_relative.components() {
            let Component::Normal(name) = component else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a plain relative path",
                ));
            };
            dir = open_at(&dir, name, OFlag::O_DIRECTORY, Mode::empty())?;
        }
        Ok(dir)
    }

    /// The bytes at `relative`, or None when nothing is there. With `follow_final` a symlink
    /// as the last component is followed while it stays inside the bounds (context files);
    /// without, a symlink reads as None (an output file: it is replaced, never followed).
    pub fn read(&self, relative: &str, follow_final: bool) -> Result<Option<Vec<u8>>, ReadError> {
        let location = self.locate(relative).map_err(ReadError::Unsafe)?;
        let (dir, name) = match location.existing {
            Existing::Nothing => return Ok(None),
            Existing::Directory => return Err(ReadError::Directory),
            Existing::Special => {
                return Err(ReadError::Unsafe(
                    "the path is not a regular file (a FIFO, socket or device)".to_owned(),
                ));
            }
            Existing::Symlink if !follow_final => return Ok(None),
            Existing::Symlink => {
                let link = self.root.join(location.parent()).join(&location.name);
                let real = match std::fs::canonicalize(&link) {
                    Ok(real) => real,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(error) => return Err(ReadError::Io(error)),
                };
                self.check_real(&real).map_err(|why| {
                    ReadError::Unsafe(format!("it is a symlink that leads {why}"))
                })?;
                let inside = real.strip_prefix(&self.root).unwrap_or(&real);
                let name = inside.file_name().map(OsStr::to_os_string);
                let dir = inside.parent().map(Path::to_path_buf);
                match (dir, name) {
                    (Some(dir), Some(name)) => (dir, name),
                    _ => return Err(ReadError::Directory),
                }
            }
            Existing::File => (location.dir.clone(), location.name.clone().into()),
        };
        let parent = self.open_dir(&dir).map_err(ReadError::Io)?;
        let mut file = match open_at(&parent, &name, OFlag::O_NONBLOCK, Mode::empty()) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ReadError::Io(error)),
        };
        let metadata = file.metadata().map_err(ReadError::Io)?;
        if metadata.is_dir() {
            return Err(ReadError::Directory);
        }
        if !metadata.is_file() {
            return Err(ReadError::Unsafe(
                "the path is not a regular file (a FIFO, socket or device)".to_owned(),
            ));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(ReadError::Io)?;
        Ok(Some(bytes))
    }
}

/// Opens `name` in `dir` without following a symlink there (`ELOOP` if it is one).
pub fn open_at(dir: &File, name: &OsStr, flags: OFlag, mode: Mode) -> std::io::Result<File> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        mode,
    )?;
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Returns the first line of `code` (the new content of `path`) that stands for omitted
/// code, if any.
///
/// A false refusal costs a whole model attempt, so only lines whose whole job is to stand
/// for code count: a comment that is nothing but an ellipsis, a comment led by an ellipsis that speaks of the code (`# ... (same as before)`, `// ...existing code...`), a
/// short comment made only of placeholder words (`// existing code here`, `# rest of the
/// file unchanged`), and, where `...` is not a statement, a bare `...` line or a `{ ... }`
/// body. Real code that merely mentions such words is left alone: strings, ordinary
/// comments, lines inside multi-line strings, Python's `...` (stubs, `Protocol`s,
/// overloads, type hints, doctests), spread `...args`, Rust's `..` ranges.
pub fn find_elision(path: &str, code: &str) -> Option<String> {
    let language = crate::language::for_path(path);
    let extension = Path::new(path)
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let prose = language == "markdown" || matches!(extension.as_str(), "txt" | "rst" | "adoc");
    // Languages where a lone `...` is code or text: Python's Ellipsis, YAML's end of
    // document, prose, markup text, and whatever the extension does not tell.
    let ellipsis_is_code = prose || matches!(language, "python" | "yaml" | "html" | "xml" | "");
    let lines: Vec<&str> = code.lines().map(str::trim).collect();
    // The next non-blank line after each line, in one pass from the end: looking ahead
    // from every line would be quadratic in a long run of blank lines.
    let mut next_non_blank = vec![""; lines.len()];
    let mut following = "";
    for (index, &line) in lines.iter().enumerate().rev() {
        next_non_blank[index] = following;
        if !line.is_empty() {
            following = line;
        }
    }
    // Multi-line strings and block comments hold text, not code: their lines are skipped.
    let mut in_string = false;
    let mut in_block_comment = false;
    let mut after_comment = false;
    for (index, &line) in lines.iter().enumerate() {
        if in_block_comment {
            in_block_comment = !line.contains("*/");
            continue;
        }
        let quotes = line.matches("\"\"\"").count() + line.matches("'''").count();
        let inside = in_string;
        in_string ^= quotes % 2 == 1;
        if inside || quotes > 0 {
            after_comment = false;
            continue;
        }
        in_block_comment = !prose && line.starts_with("/*") && !line.contains("*/");
        // Doc comments hold examples, and an example may elide.
        if ["///", "//!", "/**"]
            .iter()
            .any(|doc| line.starts_with(doc))
        {
            after_comment = true;
            continue;
        }
        let comment = comment(line, prose);
        let elided = if let Some((marker, text)) = comment {
            // A lone `// ...` stands for code; inside a run of comments it elides text.
            (is_only_ellipsis(text) && marker != "*" && !after_comment) || is_placeholder(text)
        } else {
            stands_for_code(line, next_non_blank[index], prose, ellipsis_is_code)
        };
        if elided {
            return Some(line.to_owned());
        }
        if !line.is_empty() {
            after_comment = comment.is_some();
        }
    }
    None
}

/// A line that is not a comment line stands for code. `next` is the next non-blank line.
fn stands_for_code(line: &str, next: &str, prose: bool, ellipsis_is_code: bool) -> bool {
    if matches!(line.trim_end_matches([';', ',']), "..." | "…") {
        // A variadic parameter on its own line is followed by the list's `)`.
        return !ellipsis_is_code && !next.starts_with(')');
    }
    if !ellipsis_is_code && has_ellipsis_body(line) {
        return true;
    }
    if let Some((code, text)) = trailing_comment(line) {
        return !prose && !code.contains(['"', '\'', '`']) && is_placeholder(text);
    }
    // `... rest of the file unchanged ...` written as a line of its own, not a comment.
    let text = line.trim_start_matches(['(', '[']);
    starts_with_free_ellipsis(text) && is_placeholder(text)
}

/// `...`, `…`, `[...]`, `(...)`; not a ruler of dots.
fn is_only_ellipsis(text: &str) -> bool {
    let text = text.trim_matches(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']'));
    matches!(text, "..." | "…")
}

/// `{ ... }` as code, outside string literals and comments: a body left out.
fn has_ellipsis_body(line: &str) -> bool {
    let mut outside = String::with_capacity(line.len());
    let mut quote = None;
    let mut escaped = false;
    let mut previous = ' ';
    for c in line.chars() {
        match quote {
            Some(open) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == open {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            // The rest is a comment: `(3, 0), // { ... }` speaks of code.
            None if (previous == '/' && matches!(c, '/' | '*'))
                || (c == '#' && previous.is_whitespace()) =>
            {
                break;
            }
            None => outside.push(c),
        }
        previous = c;
    }
    let compact: String = outside.split_whitespace().collect();
    compact.contains("{...}") || compact.contains("{…}")
}

/// The marker and text of a comment line in the common comment syntaxes. In prose files
/// only HTML comments are comments: `#` and `*` start headings and lists there.
fn comment(line: &str, prose: bool) -> Option<(&'static str, &str)> {
    let line = line
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|inner| inner.trim_start().starts_with("/*"))
        .unwrap_or(line)
        .trim();
    let markers: &[&'static str] = if prose {
        &["<!--"]
    } else {
        &["//", "#", "--", ";", "/*", "<!--", "*", "%"]
    };
    markers.iter().find_map(|marker| {
        let rest = line.strip_prefix(marker)?;
        let rest = rest.trim_start_matches(['/', '!', '*']);
        let rest = rest.trim_end_matches("*/").trim_end_matches("-->");
        Some((*marker, rest.trim()))
    })
}

/// `pass  # ... existing code ...`: the code and the comment after it.
fn trailing_comment(line: &str) -> Option<(&str, &str)> {
    ["  #", " //", " /*", " --"].iter().find_map(|marker| {
        let at = line.find(marker)?;
        let text = line[at + marker.len()..].trim_start_matches(['/', '*', '-', '#']);
        Some((&line[..at], text.trim_end_matches("*/").trim()))
    })
}

/// An ellipsis followed by a space or nothing: not a spread (`...args`) or a call.
fn starts_with_free_ellipsis(text: &str) -> bool {
    let rest = text
        .strip_prefix("...")
        .or_else(|| text.strip_prefix('…'))
        .map(|rest| rest.trim_start_matches('.'));
    rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

/// Words that, after a leading ellipsis, say that code was left out.
const CUES: &str = "\
    rest existing unchanged same previous previously other others remaining remainder \
    omitted brevity original unmodified untouched elided code implementation methods \
    functions tests imports fields helpers logic props properties routes handlers";

/// Words that say the code is not here (one of them must appear without an ellipsis).
const PREDICATES: &str = "\
    unchanged before omitted brevity untouched unmodified elided remains remain stays \
    stay";

/// What a placeholder speaks of (one of them must appear without an ellipsis).
const SUBJECTS: &str = "\
    rest existing previous other remaining remainder code implementation implementations \
    file class methods functions logic imports body helpers tests module content \
    contents same lines";

/// Every other word a placeholder comment may use; a comment with any word outside these
/// lists (`// Keeps the existing entries sorted`) is an ordinary comment.
const FILLERS: &str = "\
    the a an of in is are and or as to for with all from this that your its it be been \
    here goes go keep kept insert add put not shown no changes \
    original above below etc so on function method definitions fields config component \
    test helper import was were like similar previously untouched";

/// A comment's text (or a line's) says it stands for code left out.
fn is_placeholder(text: &str) -> bool {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    let in_list = |list: &str, word: &str| list.split_whitespace().any(|known| known == word);
    let has = |list: &str| words.iter().any(|word| in_list(list, word));
    let unknown = words
        .iter()
        .filter(|word| {
            ![CUES, PREDICATES, SUBJECTS, FILLERS]
                .iter()
                .any(|list| in_list(list, word))
        })
        .count();
    // Only a leading ellipsis is a strong sign: `// ... other methods`, `# ... (same as
    // before)`, allowing a couple of the project's own nouns (`... remaining queries
    // unchanged`). A trailing one (`# Try the other host...`) is ordinary punctuation, and
    // a sentence continued from the line before (`# ...add other processing here, if`)
    // has more words of its own.
    let lead = lower.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '(' | '[' | '{' | '"' | '\'')
    });
    if lead.starts_with("...") || lead.starts_with('…') {
        return has(CUES) && unknown <= 2;
    }
    // "here" alone is weak: "// existing code here" stands for code, "// the logic here"
    // points at it.
    let here = words.contains(&"here")
        && ["code", "implementation", "existing"]
            .iter()
            .any(|subject| words.contains(subject));
    (2..=8).contains(&words.len()) && (has(PREDICATES) || here) && has(SUBJECTS) && unknown == 0
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
            "dir/.",
            "./.git/../x",
            ".GiT/config",
            ".git./x",
            ".git /x",
            ".g\u{200c}it/config",
            "\u{feff}.git/config",
            "GIT~1/config",
            ".git::$INDEX_ALLOCATION/x",
            "a\nb",
            "a\u{1b}[31mb",
        ] {
            assert!(normalize_relative(path).is_err(), "{path:?} was accepted");
        }
    }

    #[test]
    fn look_alikes_of_git_are_ordinary_names() {
        for path in [
            ".g\u{0456}t/config",
            ".gitignore",
            ".github/x",
            "git/x",
            "x.git",
            ".gît/x",
        ] {
            assert!(normalize_relative(path).is_ok(), "{path:?} was refused");
        }
    }

    fn bounds_in(dir: &Path) -> Bounds {
        let root = std::fs::canonicalize(dir).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        Bounds::new(root.clone(), root.join(".git"))
    }

    #[test]
    fn locate_resolves_inner_symlinks_and_refuses_escapes() {
        use std::os::unix::fs::symlink;
        let temp = tempfile::tempdir().unwrap();
        let repo = temp.path().join("repo");
        std::fs::create_dir_all(repo.join("src/real")).unwrap();
        std::fs::write(repo.join("file"), "x").unwrap();
        let bounds = bounds_in(&repo);
        symlink("src/real", repo.join("inner")).unwrap();
        symlink("..", repo.join("up")).unwrap();
        symlink(".git", repo.join("g")).unwrap();
        symlink("up", repo.join("chain")).unwrap();

        let location = bounds.locate("inner/new/deeper/a.rs").unwrap();
        assert_eq!(location.dir, Path::new("src/real"));
        assert_eq!(location.missing, ["new", "deeper"]);
        assert_eq!(location.name, "a.rs");
        assert_eq!(location.parent(), Path::new("src/real/new/deeper"));

        for (path, reason) in [
            ("up/x", "outside the repository"),
            ("chain/x", "outside the repository"),
            ("g/hooks/pre-commit", "into `.git`"),
            ("file/x", "is a file"),
        ] {
            let error = bounds.locate(path).unwrap_err();
            assert!(error.contains(reason), "{path}: {error}");
        }
        assert!(bounds.locate_target("src").is_err());
        assert_eq!(
            bounds.locate_target("up").unwrap().existing,
            Existing::Symlink
        );
    }

    #[test]
    fn read_follows_a_final_symlink_only_inside() {
        use std::os::unix::fs::symlink;
        let temp = tempfile::tempdir().unwrap();
        let repo = temp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(temp.path().join("secret"), "secret").unwrap();
        std::fs::write(repo.join("a"), "inside").unwrap();
        let bounds = bounds_in(&repo);
        symlink("a", repo.join("to-a")).unwrap();
        symlink("../secret", repo.join("to-secret")).unwrap();
        assert_eq!(bounds.read("to-a", true).unwrap().unwrap(), b"inside");
        assert!(bounds.read("to-a", false).unwrap().is_none());
        assert!(matches!(
            bounds.read("to-secret", true),
            Err(ReadError::Unsafe(_))
        ));
        assert!(bounds.read("to-secret", false).unwrap().is_none());
        assert!(bounds.read("missing", true).unwrap().is_none());
    }

    #[test]
    fn refuses_code_that_stands_for_omitted_code() {
        for (path, code) in [
            ("a.rs", "fn a() {}\n// ... rest of the file unchanged ...\n"),
            ("a.py", "def f():\n    # ... (same as before)\n"),
            ("a.js", "// existing code here\n"),
            ("a.js", "function f() {\n  ...\n}\n"),
            ("a.ts", "class A {\n  // ...existing code...\n}\n"),
            ("a.go", "func f() { ... }\n"),
            ("a.py", "# rest of the file unchanged\n"),
            ("a.py", "def f():\n    pass  # ... existing code ...\n"),
            ("a.java", "class A {\n    /* ... */\n}\n"),
            ("a.jsx", "<div>\n  {/* ... other fields ... */}\n</div>\n"),
            ("a.sql", "-- ... remaining queries unchanged\n"),
            (
                "a.html",
                "<body>\n<!-- ... rest of the page ... -->\n</body>\n",
            ),
            (
                "a.py",
                "class A:\n    ... rest of the class unchanged ...\n",
            ),
            (
                "README.md",
                "# Title\n\n<!-- rest of the file unchanged -->\n",
            ),
            ("a.c", "int main(void) {\n    // Your code here\n}\n"),
        ] {
            assert!(
                find_elision(path, code).is_some(),
                "{path}: {code:?} was accepted"
            );
        }
    }

    #[test]
    fn accepts_real_code_that_mentions_such_words() {
        for (path, code) in [
            ("a.rs", "let existing_code = rest_of_file();\n"),
            ("a.rs", "// Keeps the existing entries sorted.\nfn f() {}\n"),
            (
                "a.py",
                "print('...')\nprint(\"... rest of the file unchanged ...\")\n",
            ),
            (
                "a.py",
                "class P(Protocol):\n    def f(self) -> int:\n        ...\n",
            ),
            ("a.py", "@overload\ndef f(x: int) -> int: ...\n"),
            ("a.py", "Fn = Callable[..., int]\nT = tuple[int, ...]\n"),
            (
                "a.py",
                "def f():\n    \"\"\"\n    >>> for x in rest:\n    ...     print(other)\n    \"\"\"\n",
            ),
            (
                "a.py",
                "def merge(cfg, new):\n    # Apply the overrides; keep the rest unchanged.\n    return {**cfg, **new}\n",
            ),
            ("a.py", "# Existing tests\ndef test_a():\n    pass\n"),
            ("a.py", "# Other helpers\n"),
            (
                "a.js",
                "const f = (...args) => g(...args);\nconst { a,\n  ...rest\n} = props;\n",
            ),
            ("a.js", "return {\n  ...state,\n  ...others,\n};\n"),
            (
                "a.rs",
                "for i in 0..n {}\nlet Foo { a, .. } = foo;\nmatch x { 0..=9 => {} _ => {} }\n",
            ),
            ("a.c", "int printf(const char *fmt, ...);\n"),
            (
                "a.cpp",
                "try { f(); } catch (...) { }\ntemplate <typename... Args> void g(Args... args);\n",
            ),
            ("a.go", "func f(args ...int) { g(args...) }\n"),
            ("a.yaml", "a: 1\n...\n"),
            (
                "README.md",
                "# Usage\n\n...\n\n## Existing code here\n* rest of the file unchanged\n",
            ),
            ("a.rs", "/// Returns `Foo { ... }` when empty.\nfn f() {}\n"),
            ("a.js", "const s = `{ ... }`;\n"),
            (
                "a.py",
                "# TODO: implementation here once the API is stable\n",
            ),
            ("a.py", "# Examples:\n#   parse(\"1\")\n#   ...\nx = 1\n"),
            (
                "a.sh",
                "# Usage: run.sh [options] FILE...\n# Try the other host...\n",
            ),
            ("a.js", "// Handles dates, numbers, etc...\n"),
            (
                "a.h",
                "int log_printf(\n    const char *fmt,\n    ...\n);\n",
            ),
            (
                "a.rs",
                "/// ```\n/// fn f() {\n///     // your code here\n/// }\n/// ```\npub fn g() {}\n",
            ),
            ("a.c", "/*\n * Steps:\n...\n */\nint x;\n"),
            ("a.rs", "let cases = [(3, 0), // { ... }\n];\n"),
            ("a.py", "# the same.\n"),
            ("a.js", "/* .............................. */\n"),
            ("a.rs", "// So we just inline\n// the logic here.\n"),
            (
                "a.py",
                "# ...add other platform-specific processing here, if\n# needed.\n",
            ),
        ] {
            assert_eq!(find_elision(path, code), None, "{path}: {code:?}");
        }
    }

    #[test]
    fn shrink_refuses_less_than_half() {
        assert!(check_shrink("a", 1000, 400).is_err());
        assert!(check_shrink("a", 1000, 600).is_ok());
        assert!(check_shrink("a", 10, 1).is_ok());
    }
}
