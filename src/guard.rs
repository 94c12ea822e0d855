//! Path containment, the check that stands between a model's reply and the disk: paths by
//! their text, then on the file system, and opened without following symlinks. (What the
//! new content itself may hold is checked in `content`.)
//!
//! Each check answers with the reason for a refusal; the pipeline turns a refusal into an
//! `unsafe_path` error whose reason names the path.
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

/// Whether `dir` is a git directory by git's own test (`is_git_directory` in git's
/// `setup.c`): a `HEAD`, and `objects/` and `refs/` directories, or, for a linked
/// worktree's git directory, a `commondir` file in place of the two. A `.git` file's
/// `gitdir:` line can only name such a directory (git refuses anything else), so the shape
/// finds every git directory in the tree whatever it is called, without reading `.git`
/// files. A symlinked `HEAD` (old repositories) counts.
pub fn is_git_dir(dir: &Path) -> bool {
    let file = |name: &str| {
        std::fs::symlink_metadata(dir.join(name))
            .is_ok_and(|metadata| metadata.is_file() || metadata.file_type().is_symlink())
    };
    let directory = |name: &str| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.is_dir());
    file("HEAD") && ((directory("objects") && directory("refs")) || file("commondir"))
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
    /// is, and so is any other git directory inside the tree, whatever its name (a nested
    /// repository's, made with `--separate-git-dir`): see [`is_git_dir`].
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
    /// leads ("outside the repository", "into `.git`", "into the git directory `ngd`").
    /// Every directory on the way is checked, so a nested repository's git directory with
    /// an ordinary name (`git init --separate-git-dir=ngd sub`) is refused like `.git`.
    fn check_real(&self, real: &Path) -> Result<(), String> {
        let Ok(inside) = real.strip_prefix(&self.root) else {
            return Err("outside the repository".to_owned());
        };
        if real.starts_with(&self.git_dir)
            || inside
                .components()
                .any(|c| is_dot_git(&c.as_os_str().to_string_lossy()))
        {
            return Err("into `.git`".to_owned());
        }
        // The root itself is the working tree, never a git directory.
        let mut dir = self.root.clone();
        let mut shown = PathBuf::new();
        for component in inside.components() {
            dir.push(component);
            shown.push(component);
            if is_git_dir(&dir) {
                return Err(format!("into the git directory `{}`", shown.display()));
            }
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
    fn git_directories_with_any_name_are_refused() {
        use std::os::unix::fs::symlink;
        let temp = tempfile::tempdir().unwrap();
        let repo = temp.path().join("repo");
        for dir in [
            "ngd/objects",
            "ngd/refs",
            "ngd/hooks",
            "wt",
            "plain/objects",
        ] {
            std::fs::create_dir_all(repo.join(dir)).unwrap();
        }
        std::fs::write(repo.join("ngd/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(repo.join("ngd/config"), "[core]\n").unwrap();
        std::fs::write(repo.join("wt/HEAD"), "ref: refs/heads/x\n").unwrap();
        std::fs::write(repo.join("wt/commondir"), "../..\n").unwrap();
        // A HEAD alone, or objects without refs, is an ordinary project file.
        std::fs::write(repo.join("plain/HEAD"), "not git\n").unwrap();
        let bounds = bounds_in(&repo);
        symlink("ngd", repo.join("link")).unwrap();
        symlink("ngd/config", repo.join("to-config")).unwrap();

        for path in ["ngd/hooks/post-commit", "ngd/config", "link/config", "wt/x"] {
            let error = bounds.locate(path).unwrap_err();
            assert!(error.contains("into the git directory"), "{path}: {error}");
        }
        assert!(bounds.locate("ngd/new/deeper/x").is_err());
        assert!(matches!(
            bounds.read("ngd/config", true),
            Err(ReadError::Unsafe(_))
        ));
        assert!(matches!(
            bounds.read("to-config", true),
            Err(ReadError::Unsafe(_))
        ));
        assert_eq!(
            bounds.read("plain/HEAD", true).unwrap().unwrap(),
            b"not git\n"
        );
        assert!(bounds.locate_target("plain/objects/x").is_ok());
        assert!(is_git_dir(&repo.join("ngd")));
        assert!(!is_git_dir(&repo.join("plain")));
    }
}
