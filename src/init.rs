//! `execute-local-task init`: sets a repository up for users who don't use the Claude Code
//! plugin — the config with the local servers found, an example spec, the plugin's skill
//! and slash commands under `.claude/`, and the MCP server entry in `.mcp.json`.
//!
//! It never overwrites a file that exists (the report says `exists`; `--force` replaces
//! it), merges into an existing `.mcp.json` without touching other servers, and is
//! idempotent. The skill and commands are the plugin's own files, embedded here, so the
//! plugin and `init` cannot teach different things.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::discovery::ServerReport;
use crate::error::{Error, Result};
use crate::repo::Repo;

/// The plugin's files that `init` copies, by their path in a repository.
pub const CLAUDE_FILES: &[(&str, &str)] = &[
    (
        ".claude/skills/delegate-local-task/SKILL.md",
        include_str!("../skills/delegate-local-task/SKILL.md"),
    ),
    (
        ".claude/skills/delegate-local-task/references/cli.md",
        include_str!("../skills/delegate-local-task/references/cli.md"),
    ),
    (
        ".claude/commands/delegate.md",
        include_str!("../commands/delegate.md"),
    ),
    (
        ".claude/commands/delegate-batch.md",
        include_str!("../commands/delegate-batch.md"),
    ),
    (
        ".claude/commands/review-run.md",
        include_str!("../commands/review-run.md"),
    ),
    (
        ".claude/commands/local-runs.md",
        include_str!("../commands/local-runs.md"),
    ),
];

/// The config file, relative to the repository root.
pub const CONFIG_PATH: &str = ".execute-local-task/config.toml";
/// The MCP server's name in `.mcp.json`.
pub const MCP_SERVER: &str = "execute-local-task";

const EXAMPLE_SPEC: &str =
    include_str!("../skills/delegate-local-task/references/example-spec.json");
const SPECS_README: &str =
    include_str!("../skills/delegate-local-task/references/task-specs-README.md");

/// What `init` did, or with `--dry-run` would do.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InitReport {
    pub status: String,
    pub dry_run: bool,
    /// The repository's root.
    pub root: PathBuf,
    pub files: Vec<InitFile>,
    /// The servers discovery found, written into the config as profiles.
    pub servers_found: Vec<String>,
}

/// One file `init` looked at.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InitFile {
    /// Relative to the repository root.
    pub path: String,
    /// `created`, `replaced` (`--force`), `merged` (an entry added to `.mcp.json`),
    /// `unchanged` (already as `init` would write it), or `exists` (kept as it is;
    /// `--force` replaces it).
    pub action: String,
}

/// Writes (or lists, with `dry_run`) the files into the repository containing `start`.
pub fn init(
    start: &Path,
    servers: &[ServerReport],
    force: bool,
    dry_run: bool,
) -> Result<InitReport> {
    let repo = Repo::discover(start)?;
    let root = repo.root().to_path_buf();
    // A `.mcp.json` that cannot be merged stops `init` before it writes anything.
    merge_mcp(&root, force, true)?;
    let mut planned: Vec<(String, String)> = vec![
        (CONFIG_PATH.to_owned(), config_text(servers)),
        (
            "task-specs/example.json".to_owned(),
            EXAMPLE_SPEC.to_owned(),
        ),
        ("task-specs/README.md".to_owned(), SPECS_README.to_owned()),
    ];
    planned.extend(
        CLAUDE_FILES
            .iter()
            .map(|(path, text)| ((*path).to_owned(), (*text).to_owned())),
    );
    let mut files = Vec::new();
    for (path, text) in &planned {
        let action = place(&root, path, text, force, dry_run)?;
        files.push(InitFile {
            path: path.clone(),
            action: action.to_owned(),
        });
    }
    let action = merge_mcp(&root, force, dry_run)?;
    files.push(InitFile {
        path: ".mcp.json".to_owned(),
        action: action.to_owned(),
    });
    Ok(InitReport {
        status: "ok".to_owned(),
        dry_run,
        root,
        files,
        servers_found: servers
            .iter()
            .filter(|s| s.reachable)
            .map(|s| s.endpoint.clone())
            .collect(),
    })
}

/// Writes one file unless it exists (or `force`); returns what was done.
fn place(
    root: &Path,
    relative: &str,
    text: &str,
    force: bool,
    dry_run: bool,
) -> Result<&'static str> {
    let path = root.join(relative);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {
            let same = std::fs::read(&path).is_ok_and(|bytes| bytes == text.as_bytes());
            if same {
                Ok("unchanged")
            } else if force {
                if !dry_run {
                    write_inside(root, relative, text.as_bytes())?;
                }
                Ok("replaced")
            } else {
                Ok("exists")
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if !dry_run {
                write_inside(root, relative, text.as_bytes())?;
            }
            Ok("created")
        }
        Err(error) => Err(Error::io("inspect", path, error)),
    }
}

/// Adds the MCP server's entry to `.mcp.json`, keeping every other key and server.
fn merge_mcp(root: &Path, force: bool, dry_run: bool) -> Result<&'static str> {
    let path = root.join(".mcp.json");
    let entry = serde_json::json!({"command": "execute-local-task", "args": ["mcp"]});
    let (mut document, created) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value: Value = serde_json::from_str(&text).map_err(|error| Error::Usage(format!(
                "{}: is not valid JSON ({error}); fix it or add the `{MCP_SERVER}` server to `mcpServers` by hand",
                path.display()
            )))?;
            (value, false)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            (Value::Object(Map::new()), true)
        }
        Err(error) => return Err(Error::io("read", path, error)),
    };
    let not_object = || {
        Error::Usage(format!(
            "{}: `mcpServers` is not a JSON object; fix it or add the `{MCP_SERVER}` server by hand",
            path.display()
        ))
    };
    let servers = document
        .as_object_mut()
        .ok_or_else(not_object)?
        .entry("mcpServers")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(not_object)?;
    let action = match servers.get(MCP_SERVER) {
        Some(existing) if *existing == entry => return Ok("unchanged"),
        Some(_) if !force => return Ok("exists"),
        Some(_) => "replaced",
        None if created => "created",
        None => "merged",
    };
    servers.insert(MCP_SERVER.to_owned(), entry);
    if !dry_run {
        let mut text = serde_json::to_string_pretty(&document)
            .map_err(|error| Error::Usage(format!("cannot write .mcp.json: {error}")))?;
        text.push('\n');
        write_inside(root, ".mcp.json", text.as_bytes())?;
    }
    Ok(action)
}

/// Writes `bytes` to `root/relative` atomically (a temporary file renamed over it), after
/// checking that the directory it lands in is inside the root: a directory that is a
/// symlink out of the repository must not carry a write outside it.
fn write_inside(root: &Path, relative: &str, bytes: &[u8]) -> Result<()> {
    let path = root.join(relative);
    let parent = path.parent().unwrap_or(root);
    // The deepest directory that exists is checked before any is created, so a symlink
    // out of the repository gets no directories either.
    let existing = parent.ancestors().find(|dir| dir.exists()).unwrap_or(root);
    inside(root, relative, existing)?;
    std::fs::create_dir_all(parent)
        .map_err(|error| Error::io("create directory", parent, error))?;
    let real = inside(root, relative, parent)?;
    let mut file = tempfile::NamedTempFile::new_in(&real)
        .map_err(|error| Error::io("create a temporary file in", &real, error))?;
    file.write_all(bytes)
        .map_err(|error| Error::io("write", file.path().to_path_buf(), error))?;
    file.persist(&path)
        .map_err(|error| Error::io("write", &path, error.error))?;
    Ok(())
}

/// `dir` resolved, when it is inside the repository and outside `.git`.
fn inside(root: &Path, relative: &str, dir: &Path) -> Result<PathBuf> {
    let real = std::fs::canonicalize(dir).map_err(|error| Error::io("resolve", dir, error))?;
    if !real.starts_with(root) || real.starts_with(root.join(".git")) {
        return Err(Error::UnsafePath {
            path: relative.to_owned(),
            reason: format!(
                "its directory resolves to {}, outside the repository",
                real.display()
            ),
        });
    }
    Ok(real)
}

/// The config file: one profile per reachable server, every setting commented.
pub fn config_text(servers: &[ServerReport]) -> String {
    let mut text = String::from(
        "# execute-local-task configuration for this repository (written by `execute-local-task init`).\n\
         # A profile names a model server and a model; a run picks one with --profile NAME or the\n\
         # spec's \"profile\" field, else `default_profile`. Flags and the spec still override it.\n\n",
    );
    let mut names: Vec<String> = Vec::new();
    let mut profiles = String::new();
    for server in servers.iter().filter(|s| s.reachable) {
        let mut name = profile_name(&server.kind);
        if names.contains(&name) {
            name = format!("{name}-{}", names.len() + 1);
        }
        let version = server
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        let _ = write!(
            profiles,
            "# {}{version}, found at {} when `init` ran.\n[profiles.{name}]\n",
            server.kind, server.endpoint
        );
        profiles.push_str(
            "# The protocol: \"ollama\" (Ollama's native API) or \"openai\" (OpenAI-compatible).\n",
        );
        let _ = writeln!(
            profiles,
            "provider = {}",
            quoted(server.provider.as_deref().unwrap_or("openai"))
        );
        profiles.push_str("# The server's address.\n");
        let _ = writeln!(profiles, "endpoint = {}", quoted(&server.endpoint));
        profiles.push_str("# The model to ask");
        match server.models.first() {
            Some(model) => {
                let others = server.models.len() - 1;
                if others > 0 {
                    let _ = write!(profiles, " (the server has {others} more: `execute-local-task models` lists them)");
                }
                let _ = write!(profiles, ".\nmodel = {}\n\n", quoted(model));
            }
            None => profiles.push_str(" (the server listed none: pull one, then set it).\n# model = \"qwen2.5-coder:7b\"\n\n"),
        }
        names.push(name);
    }
    match names.first() {
        Some(first) => {
            text.push_str("# The profile a run uses when neither --profile nor the spec names one.\n");
            let _ = write!(text, "default_profile = {}\n\n", quoted(first));
            text.push_str(&profiles);
        }
        None => text.push_str(
            "# No local model server answered when `init` ran. Start one (`ollama serve`, LM Studio's\n\
             # server) and run `execute-local-task init --force`, or fill in a profile by hand:\n\
             # default_profile = \"ollama\"\n\
             #\n\
             # [profiles.ollama]\n\
             # provider = \"ollama\"\n\
             # endpoint = \"http://127.0.0.1:11434\"\n\
             # model = \"qwen2.5-coder:7b\"\n",
        ),
    }
    text
}

/// A profile name from a server's kind: "LM Studio" becomes `lm-studio`.
fn profile_name(kind: &str) -> String {
    let mut name = String::new();
    for c in kind.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "local".to_owned()
    } else {
        name
    }
}

/// A TOML basic string: JSON's escapes are all valid TOML escapes.
fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_are_bare_keys() {
        assert_eq!(profile_name("LM Studio"), "lm-studio");
        assert_eq!(profile_name("Ollama"), "ollama");
        assert_eq!(profile_name("OpenAI-compatible"), "openai-compatible");
        assert_eq!(profile_name("!!"), "local");
    }

    #[test]
    fn strings_are_quoted_for_toml() {
        assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
    }
}
