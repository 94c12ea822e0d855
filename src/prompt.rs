//! Renders the chat messages for a task and for each repair from the prompt templates.
//!
//! The built-in templates under `prompts/` are embedded in the binary. A repository may
//! override any of them with `.execute-local-task/prompts/<name>.md`, and `--template FILE`
//! overrides the task's kind template for one run.

use std::collections::HashMap;
use std::path::Path;

use minijinja::Environment;
use serde::Serialize;

use crate::context::ContextFile;
use crate::error::{Error, Result};
use crate::guard::{Bounds, ReadError};
use crate::model::Message;
use crate::spec::{Kind, TaskSpec};

/// Built-in templates: (name, text).
const BUILT_IN: &[(&str, &str)] = &[
    ("system.md", include_str!("../prompts/system.md")),
    ("_task.md", include_str!("../prompts/_task.md")),
    ("code.md", include_str!("../prompts/code.md")),
    ("test.md", include_str!("../prompts/test.md")),
    ("refactor.md", include_str!("../prompts/refactor.md")),
    ("doc.md", include_str!("../prompts/doc.md")),
    ("repair.md", include_str!("../prompts/repair.md")),
    ("validator.md", include_str!("../prompts/validator.md")),
];

/// Where a repository keeps its own templates.
pub const OVERRIDE_DIR: &str = ".execute-local-task/prompts";

pub struct Templates {
    env: Environment<'static>,
    kind_template: String,
    /// How each template is named in messages: the file it was read from (a repository
    /// override's real path, `--template`'s path as given) or `prompts/<name>` for a
    /// built-in one. Template names are internal (`override.md`); a message naming one
    /// sends the user looking for a file that does not exist.
    shown: HashMap<String, String>,
}

/// An output file as the template sees it.
#[derive(Debug, Serialize)]
pub struct OutputView {
    pub path: String,
    pub language: String,
    pub exists: bool,
    pub body: String,
    pub fence: String,
}

#[derive(Serialize)]
struct ContextView<'a> {
    path: &'a str,
    language: &'a str,
    body: &'a str,
    fence: String,
}

/// What went wrong in an attempt, for the repair template.
#[derive(Debug, Default, Serialize)]
pub struct RepairView {
    /// One line.
    pub problem: String,
    /// The test output tail, or the longer explanation of a refusal.
    pub details: String,
    pub test_command: Option<String>,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
}

impl Templates {
    /// Loads the built-in templates, then the repository's overrides, then `kind_override`.
    pub fn load(bounds: &Bounds, kind: Kind, kind_override: Option<&Path>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let mut shown = HashMap::new();
        for (name, text) in BUILT_IN {
            let relative = format!("{OVERRIDE_DIR}/{name}");
            let override_path = bounds.root().join(&relative);
            // Through the guard: a symlinked override must not pull a file from outside
            // the repository into the prompt.
            let source = match bounds.read(&relative, true) {
                Ok(Some(bytes)) => {
                    shown.insert((*name).to_owned(), override_path.display().to_string());
                    String::from_utf8(bytes).map_err(|_| Error::Template {
                        name: relative.clone(),
                        message: "is not UTF-8 text".to_owned(),
                    })?
                }
                Ok(None) => {
                    shown.insert((*name).to_owned(), format!("prompts/{name} (built in)"));
                    (*text).to_owned()
                }
                Err(ReadError::Unsafe(reason)) => {
                    return Err(Error::UnsafePath {
                        path: relative,
                        reason,
                    });
                }
                Err(ReadError::Directory) => {
                    return Err(Error::Template {
                        name: relative,
                        message: "is a directory, not a template".to_owned(),
                    });
                }
                Err(ReadError::Io(error)) => return Err(unreadable(&override_path, &error)),
            };
            add(&mut env, &shown, name, source)?;
        }
        let kind_template = match kind_override {
            Some(path) => {
                let source =
                    crate::input_file::read_text(path, crate::input_file::MAX_TEMPLATE_BYTES)
                        .map_err(|error| unreadable(path, &error))?;
                shown.insert(OVERRIDE_NAME.to_owned(), path.display().to_string());
                add(&mut env, &shown, OVERRIDE_NAME, source)?;
                OVERRIDE_NAME.to_owned()
            }
            None => format!("{}.md", kind.as_str()),
        };
        Ok(Self {
            env,
            kind_template,
            shown,
        })
    }

    /// The first messages of a task: the system text and the rendered kind template.
    pub fn task_messages(
        &self,
        spec: &TaskSpec,
        outputs: &[OutputView],
        context: &[ContextFile],
    ) -> Result<Vec<Message>> {
        let context: Vec<ContextView<'_>> = context
            .iter()
            .map(|file| ContextView {
                path: &file.path,
                language: file.language,
                body: file.content.strip_suffix('\n').unwrap_or(&file.content),
                fence: fence_for(&file.content),
            })
            .collect();
        let system = self.render("system.md", minijinja::context! {})?;
        let user = self.render(
            &self.kind_template,
            minijinja::context! {
                task_id => spec.task_id,
                description => spec.description.trim(),
                kind => spec.kind.as_str(),
                constraints => spec.constraints,
                context => context,
                outputs => outputs,
            },
        )?;
        Ok(vec![Message::system(system), Message::user(user)])
    }

    /// The message that asks for a corrected reply.
    pub fn repair_message(&self, spec: &TaskSpec, repair: &RepairView) -> Result<Message> {
        let text = self.render(
            "repair.md",
            minijinja::context! {
                problem => repair.problem,
                details => repair.details.trim_end(),
                details_fence => fence_for(&repair.details),
                test_command => repair.test_command,
                exit_code => repair.exit_code,
                timed_out => repair.timed_out,
                constraints => spec.constraints,
                outputs => spec.outputs,
            },
        )?;
        Ok(Message::user(text))
    }

    /// The validator checkpoint's request: the task, its constraints and the code to review.
    pub fn review_message(&self, spec: &TaskSpec, files: &[OutputView]) -> Result<Message> {
        let text = self.render(
            "validator.md",
            minijinja::context! {
                task_id => spec.task_id,
                description => spec.description.trim(),
                constraints => spec.constraints,
                files => files,
            },
        )?;
        Ok(Message::user(text))
    }

    fn render(&self, name: &str, context: minijinja::Value) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|error| template_error(&self.shown, name, &error))?;
        let text = template
            .render(context)
            .map_err(|error| template_error(&self.shown, name, &error))?;
        // File contents pass through verbatim: only the ends of the whole text are trimmed.
        Ok(text.trim().to_owned() + "\n")
    }
}

/// A template file that cannot be read (missing, a FIFO or device, too large, not UTF-8,
/// no permission) is a template error naming the file, like one that does not parse: the
/// fix is the same, in the same place.
fn unreadable(path: &Path, error: &std::io::Error) -> Error {
    let message = match error.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        _ => error.to_string(),
    };
    Error::Template {
        name: path.display().to_string(),
        message,
    }
}

/// The internal name of `--template`'s file among the templates.
const OVERRIDE_NAME: &str = "override.md";

fn add(
    env: &mut Environment<'static>,
    shown: &HashMap<String, String>,
    name: &str,
    source: String,
) -> Result<()> {
    env.add_template_owned(name.to_owned(), source)
        .map_err(|error| template_error(shown, name, &error))
}

/// A template error naming the file it is in (an error inside an included template names
/// that one) and its line, in the words of `shown`, never the internal template name.
fn template_error(shown: &HashMap<String, String>, name: &str, error: &minijinja::Error) -> Error {
    let name = error.name().unwrap_or(name);
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message = format!("{message}: {detail}");
    }
    if let Some(line) = error.line() {
        message = format!("{message} (line {line})");
    }
    Error::Template {
        name: shown.get(name).cloned().unwrap_or_else(|| name.to_owned()),
        message,
    }
}

/// A backtick fence longer than any backtick run inside `content`, so a file that itself
/// holds fences (Markdown) cannot close the block early.
pub fn fence_for(content: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in content.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat(longest.max(2) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_outgrows_inner_fences() {
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("```rust\nx\n```"), "````");
    }
}
