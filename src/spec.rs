//! The task spec: reading, validating, and the errors that name the spec file and field.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::escape;
use crate::guard;
use crate::input_file;

/// Defaults a spec may override.
pub const DEFAULT_MAX_ATTEMPTS: u32 = crate::defaults::MAX_ATTEMPTS;
pub const MAX_MAX_ATTEMPTS: u32 = crate::defaults::MAX_MAX_ATTEMPTS;
pub const DEFAULT_TIMEOUT_SECS: u64 = crate::defaults::TEST_TIMEOUT_SECS;

/// The task spec as written on disk. Its JSON Schema is `execute-local-task schema spec`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "execute-local-task task spec")]
pub struct SpecDocument {
    /// Ignored; lets editors validate the file.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Names the run and its backups: `[A-Za-z0-9._-]{1,64}`, not starting with `.` or `-`, without `..`, not ending in `.` or `.lock`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]([A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?$"))]
    pub task_id: String,
    /// What to build.
    pub description: String,
    /// The file to create or replace, relative to the repository root. Exactly one of
    /// `output_file` and `output_files`.
    #[serde(default)]
    pub output_file: Option<String>,
    /// Several files produced by one reply.
    #[serde(default)]
    pub output_files: Option<Vec<String>>,
    /// Files (paths or globs, relative to the repository root) shown to the model.
    #[serde(default)]
    pub context_files: Option<Vec<String>>,
    /// Rules the code must follow.
    #[serde(default)]
    pub constraints: Option<Vec<String>>,
    /// Shell command run with `sh -c` in the repository root; exit 0 means the task passed.
    #[serde(default)]
    pub test_command: Option<String>,
    /// Picks the prompt template.
    #[serde(default)]
    pub kind: Option<Kind>,
    /// Fence language; inferred from the output file's extension when absent.
    #[serde(default)]
    pub language: Option<String>,
    /// Overrides the model name.
    #[serde(default)]
    pub model: Option<String>,
    /// A model profile name (reserved for routing).
    #[serde(default)]
    pub profile: Option<String>,
    /// Model attempts including repairs, 1 to 5 (default 2).
    #[serde(default)]
    #[schemars(range(min = 1, max = 5))]
    pub max_attempts: Option<u32>,
    /// Time limit of the test command in seconds (default 300).
    #[serde(default)]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_secs: Option<u64>,
    /// Task ids that must succeed first (batch runs).
    #[serde(default)]
    pub depends_on: Option<Vec<String>>,
    /// Allow replacing a file with content less than half its size.
    #[serde(default)]
    pub allow_shrink: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Code,
    Test,
    Refactor,
    Doc,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Code, Kind::Test, Kind::Refactor, Kind::Doc];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::Test => "test",
            Self::Refactor => "refactor",
            Self::Doc => "doc",
        }
    }
}

/// A validated spec: every path normalised, every default applied.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Where the spec was read from, for messages.
    pub source: PathBuf,
    pub task_id: String,
    pub description: String,
    pub outputs: Vec<String>,
    pub context_files: Vec<String>,
    pub constraints: Vec<String>,
    pub test_command: Option<String>,
    pub kind: Kind,
    pub language: Option<String>,
    pub model: Option<String>,
    pub profile: Option<String>,
    pub max_attempts: Option<u32>,
    pub timeout_secs: u64,
    pub depends_on: Vec<String>,
    pub allow_shrink: bool,
}

const FIELDS: &[&str] = &[
    "$schema",
    "task_id",
    "description",
    "output_file",
    "output_files",
    "context_files",
    "constraints",
    "test_command",
    "kind",
    "language",
    "model",
    "profile",
    "max_attempts",
    "timeout_secs",
    "depends_on",
    "allow_shrink",
];

/// The spec's JSON Schema, with the rule the struct cannot express: exactly one of
/// `output_file` and `output_files`.
pub fn json_schema() -> Value {
    let mut schema = serde_json::json!(schemars::schema_for!(SpecDocument));
    schema["oneOf"] = serde_json::json!([
        {"required": ["output_file"], "not": {"required": ["output_files"]}},
        {"required": ["output_files"], "not": {"required": ["output_file"]}},
    ]);
    schema
}

/// Reads and validates the spec at `path`.
pub fn load(path: &Path) -> Result<TaskSpec> {
    let text = input_file::read_text(path, input_file::MAX_SPEC_BYTES)
        .map_err(|error| Error::spec(path, None, format!("cannot read the spec: {error}")))?;
    parse(path, &text)
}

/// Reads the `task_id` of a spec that may not validate, so an error result can still name it.
pub fn peek_task_id(path: &Path) -> Option<String> {
    let text = input_file::read_text(path, input_file::MAX_SPEC_BYTES).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    let id = value.get("task_id")?.as_str()?;
    valid_task_id(id).then(|| id.to_owned())
}

/// Parses and validates the spec `text` read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<TaskSpec> {
    parse_unescaped(path, text).map_err(|error| match error {
        // Messages quote spec text (an id, a path, a field name): an escape sequence there
        // must not reach the terminal raw.
        Error::Spec {
            path,
            field,
            message,
        } => Error::Spec {
            path,
            field: field.as_deref().map(escape::controls),
            message: escape::controls(&message),
        },
        other => other,
    })
}

fn parse_unescaped(path: &Path, text: &str) -> Result<TaskSpec> {
    let value: Value = serde_json::from_str(text).map_err(|error| {
        Error::spec(
            path,
            None,
            format!(
                "not valid JSON at line {} column {}: {error}",
                error.line(),
                error.column()
            ),
        )
    })?;
    // serde_json keeps the last of two equal keys: `output_file` given twice would write
    // the second file while a reader of the spec sees the first.
    if let Some(key) = duplicate_key(text) {
        return Err(Error::spec(
            path,
            Some(&key),
            "is given twice; give each field once (JSON keeps only the last)",
        ));
    }
    let Value::Object(object) = value else {
        return Err(Error::spec(
            path,
            None,
            "a spec is a JSON object with at least task_id, description and output_file",
        ));
    };
    check_field_names(path, &object)?;
    for required in ["task_id", "description"] {
        if !object.contains_key(required) {
            return Err(Error::spec(path, Some(required), "is required"));
        }
    }
    let document: SpecDocument =
        serde_path_to_error::deserialize(Value::Object(object)).map_err(|error| {
            let field = error.path().to_string();
            Error::spec(path, Some(&field), error.into_inner().to_string())
        })?;
    validate(path, document)
}

/// The JSON path (`output_file`, `constraints[2]`, `a.b`) of the first key given twice in
/// one object of `text`, which must be valid JSON.
fn duplicate_key(text: &str) -> Option<String> {
    let found = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let seed = UniqueKeys {
        path: String::new(),
        found: &found,
    };
    // The only error the walk itself raises is the duplicate, recorded in `found`.
    let _ = seed.deserialize(&mut deserializer);
    found.into_inner()
}

/// Walks a JSON value, stopping at the first object key seen twice.
struct UniqueKeys<'a> {
    path: String,
    found: &'a RefCell<Option<String>>,
}

impl UniqueKeys<'_> {
    fn at(&self, path: String) -> Self {
        UniqueKeys {
            path,
            found: self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(self.at(format!("{}[{index}]", self.path)))?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                *self.found.borrow_mut() = Some(path);
                return Err(A::Error::custom("duplicate key"));
            }
            map.next_value_seed(self.at(path))?;
        }
        Ok(())
    }
}

fn check_field_names(path: &Path, object: &Map<String, Value>) -> Result<()> {
    for key in object.keys() {
        if FIELDS.contains(&key.as_str()) {
            continue;
        }
        let nearest = FIELDS
            .iter()
            .map(|known| (strsim::jaro_winkler(key, known), known))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .filter(|(score, _)| *score > 0.8);
        // A near match is the likely fix; the whole list only helps when there is none.
        let advice = match nearest {
            Some((_, known)) => format!("did you mean `{known}`?"),
            None => format!("known fields: {}", FIELDS.join(", ")),
        };
        return Err(Error::spec(
            path,
            Some(key),
            format!("unknown field; {advice}"),
        ));
    }
    Ok(())
}

/// One check a field, in the order of the table.
fn validate(path: &Path, document: SpecDocument) -> Result<TaskSpec> {
    let field_error = |field: &str, message: String| Error::spec(path, Some(field), message);

    if let Some(problem) = task_id_problem(&document.task_id) {
        return Err(field_error(
            "task_id",
            format!(
                "`{}` is not a valid task id: it {problem}",
                document.task_id
            ),
        ));
    }
    if document.description.trim().is_empty() {
        return Err(field_error("description", "is empty".to_owned()));
    }

    let outputs = outputs(path, document.output_file, document.output_files)?;

    let context_files = document
        .context_files
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, pattern)| normalize_field(path, &format!("context_files[{index}]"), pattern))
        .collect::<Result<Vec<_>>>()?;

    let max_attempts = document.max_attempts;
    if let Some(n) = max_attempts
        && !(1..=MAX_MAX_ATTEMPTS).contains(&n)
    {
        return Err(field_error(
            "max_attempts",
            format!("{n} is out of range 1..={MAX_MAX_ATTEMPTS}"),
        ));
    }
    let timeout_secs = document.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=86_400).contains(&timeout_secs) {
        return Err(field_error(
            "timeout_secs",
            format!("{timeout_secs} is out of range 1..=86400"),
        ));
    }
    let depends_on = document.depends_on.unwrap_or_default();
    for (index, id) in depends_on.iter().enumerate() {
        if let Some(problem) = task_id_problem(id) {
            return Err(field_error(
                &format!("depends_on[{index}]"),
                format!("`{id}` is not a valid task id: it {problem}"),
            ));
        }
    }
    for (field, value) in [
        ("model", &document.model),
        ("profile", &document.profile),
        ("language", &document.language),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(field_error(field, "is empty".to_owned()));
        }
    }

    Ok(TaskSpec {
        source: path.to_path_buf(),
        task_id: document.task_id,
        description: document.description,
        outputs,
        context_files,
        constraints: document.constraints.unwrap_or_default(),
        // The shell pipeline treated an empty command as "no test".
        test_command: document.test_command.filter(|c| !c.trim().is_empty()),
        kind: document.kind.unwrap_or_default(),
        language: document.language,
        model: document.model,
        profile: document.profile,
        max_attempts,
        timeout_secs,
        depends_on,
        allow_shrink: document.allow_shrink.unwrap_or(false),
    })
}

/// The output files, normalised: exactly one of `output_file` and `output_files`, each
/// file once, none inside another.
fn outputs(
    path: &Path,
    output_file: Option<String>,
    output_files: Option<Vec<String>>,
) -> Result<Vec<String>> {
    let field_error = |field: &str, message: String| Error::spec(path, Some(field), message);
    let outputs = match (output_file, output_files) {
        (Some(_), Some(_)) => {
            return Err(field_error(
                "output_files",
                "give either output_file or output_files, not both".to_owned(),
            ));
        }
        (None, None) => {
            return Err(field_error(
                "output_file",
                "is required (or output_files for several files)".to_owned(),
            ));
        }
        (Some(file), None) => vec![normalize_field(path, "output_file", &file)?],
        (None, Some(files)) => {
            if files.is_empty() {
                return Err(field_error("output_files", "is empty".to_owned()));
            }
            let mut outputs: Vec<String> = Vec::with_capacity(files.len());
            for (index, file) in files.iter().enumerate() {
                let normalized = normalize_field(path, &format!("output_files[{index}]"), file)?;
                if outputs.contains(&normalized) {
                    return Err(field_error(
                        &format!("output_files[{index}]"),
                        format!("`{normalized}` is listed twice"),
                    ));
                }
                // One path cannot be both a file to write and a directory holding another.
                if let Some(other) = outputs.iter().find(|other| {
                    Path::new(&normalized).starts_with(other.as_str())
                        || Path::new(other.as_str()).starts_with(&normalized)
                }) {
                    return Err(field_error(
                        &format!("output_files[{index}]"),
                        format!(
                            "`{normalized}` and `{other}` cannot both be output files: one would have to be a file and a directory at once"
                        ),
                    ));
                }
                outputs.push(normalized);
            }
            outputs
        }
    };
    Ok(outputs)
}

fn normalize_field(path: &Path, field: &str, value: &str) -> Result<String> {
    guard::normalize_relative(value).map_err(|reason| {
        Error::spec(
            path,
            Some(field),
            format!("unsafe path `{value}`: {reason}"),
        )
    })
}

/// Whether `id` is a valid task id (see [`task_id_problem`]).
pub fn valid_task_id(id: &str) -> bool {
    task_id_problem(id).is_none()
}

/// The rule `id` breaks, if any: `[A-Za-z0-9._-]{1,64}`, not starting with `.` or `-`,
/// and valid as the git branch `local-task/<id>` (so no `..`, no trailing `.`, no
/// `.lock` at the end). The id names a directory of backups, and task branches are
/// named after it: an id git refuses would fail only when its branch is made.
pub fn task_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("is empty".to_owned());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !matches!(c, '.' | '_' | '-'))
    {
        return Some(format!(
            "has `{}`: use only A-Z a-z 0-9 . _ -",
            crate::escape::controls(&c.to_string())
        ));
    }
    let rule = if id.len() > 64 {
        "is longer than 64 characters"
    } else if id.starts_with(['.', '-']) {
        "starts with `.` or `-`"
    } else if id.contains("..") {
        "contains `..`, which git refuses in a branch name"
    } else if id.to_ascii_lowercase().ends_with(".lock") {
        "ends in `.lock`, which git refuses in a branch name"
    } else if id.ends_with('.') {
        "ends in `.`, which git refuses in a branch name"
    } else if !git2::Reference::is_valid_name(&format!("refs/heads/local-task/{id}")) {
        "is not valid in a git branch name"
    } else {
        return None;
    };
    Some(rule.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<TaskSpec> {
        parse(Path::new("spec.json"), text)
    }

    fn error_text(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_six_fields_of_the_shell_pipeline() {
        let spec = parse_str(
            r#"{"task_id":"T-001","description":"d","output_file":"./src/x.js",
                "context_files":["src/a.js"],"constraints":["no deps"],"test_command":"npm test"}"#,
        )
        .unwrap();
        assert_eq!(spec.outputs, ["src/x.js"]);
        assert_eq!(spec.kind, Kind::Code);
        assert_eq!(spec.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(spec.test_command.as_deref(), Some("npm test"));
    }

    #[test]
    fn unknown_field_names_the_nearest_known_one() {
        let message =
            error_text(r#"{"task_id":"a","description":"d","output_file":"x","contex_files":[]}"#);
        assert!(message.contains("field `contex_files`"), "{message}");
        assert!(
            message.contains("did you mean `context_files`"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_field_far_from_any_lists_the_known_ones() {
        let message = error_text(r#"{"task_id":"a","description":"d","output_file":"x","zzz":1}"#);
        assert!(
            message.contains("known fields: $schema, task_id"),
            "{message}"
        );
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let message =
            error_text(r#"{"task_id":"a","description":"d","output_file":"x","constraints":[1]}"#);
        assert!(
            message.starts_with("spec.json: field `constraints[0]`"),
            "{message}"
        );
    }

    #[test]
    fn rejects_bad_values() {
        for (text, field) in [
            (r#"{"description":"d","output_file":"x"}"#, "task_id"),
            (
                r#"{"task_id":"a b","description":"d","output_file":"x"}"#,
                "task_id",
            ),
            (
                r#"{"task_id":"a","description":" ","output_file":"x"}"#,
                "description",
            ),
            (r#"{"task_id":"a","description":"d"}"#, "output_file"),
            (
                r#"{"task_id":"a","description":"d","output_file":"/etc/x"}"#,
                "output_file",
            ),
            (
                r#"{"task_id":"a","description":"d","output_files":["a","../b"]}"#,
                "output_files[1]",
            ),
            (
                r#"{"task_id":"a","description":"d","output_file":"x","max_attempts":9}"#,
                "max_attempts",
            ),
            (
                r#"{"task_id":"a","description":"d","output_file":"x","kind":"poem"}"#,
                "kind",
            ),
            (
                r#"{"task_id":"a","description":"d","output_file":".git/hooks/x"}"#,
                "output_file",
            ),
        ] {
            let message = error_text(text);
            assert!(
                message.contains(&format!("field `{field}`")),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_with_its_path() {
        let message = error_text(
            r#"{"task_id":"a","description":"d","output_file":"x.py","output_file":"y.py"}"#,
        );
        assert!(
            message.starts_with("spec.json: field `output_file`: is given twice"),
            "{message}"
        );
        assert_eq!(
            duplicate_key(r#"{"a":[1,{"b":null,"c":{"d":1,"d":2}}],"e":true}"#).as_deref(),
            Some("a[1].c.d")
        );
        assert_eq!(duplicate_key(r#"{"a":{"b":1},"c":{"b":1}}"#), None);
    }

    #[test]
    fn task_ids_git_refuses_as_branch_names_are_refused_naming_the_rule() {
        for (id, rule) in [
            ("T-1.", "ends in `.`"),
            ("a..b", "contains `..`"),
            ("x.lock", "ends in `.lock`"),
            ("X.LOCK", "ends in `.lock`"),
            ("@{", "`@`"),
            ("a/", "`/`"),
            ("-a", "starts with `.` or `-`"),
            (".a", "starts with `.` or `-`"),
            ("a b", "` `"),
            ("a\u{1b}[31mb", "`\\u{1b}`"),
        ] {
            let message = error_text(&format!(
                r#"{{"task_id":{},"description":"d","output_file":"x"}}"#,
                serde_json::to_string(id).unwrap()
            ));
            assert!(message.contains("field `task_id`"), "{id}: {message}");
            assert!(message.contains(rule), "{id}: {message}");
            assert!(!message.contains('\u{1b}'), "{id}: {message}");
        }
        let message = error_text(
            "{\"task_id\":\"a\",\"description\":\"d\",\"output_file\":\"x\",\"\\u001b]0;t\\u0007\":1}",
        );
        assert!(message.contains(r"field `\u{1b}]0;t\u{7}`"), "{message}");
        // Every id git takes as a branch and valid before stays valid.
        for id in ["T-001", "a.b", "_x", "a-", "A_1.2-3", "lock", "x.locks"] {
            assert!(valid_task_id(id), "{id}");
            assert!(git2::Reference::is_valid_name(&format!(
                "refs/heads/local-task/{id}"
            )));
        }
    }

    #[test]
    fn task_ids() {
        assert!(valid_task_id("T-001.v2_b"));
        assert!(!valid_task_id(""));
        assert!(!valid_task_id("-x"));
        assert!(!valid_task_id("a..b"));
        assert!(!valid_task_id(&"a".repeat(65)));
    }
}
