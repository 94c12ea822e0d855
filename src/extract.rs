//! Takes the code for each output file out of a model's reply: fenced blocks, the file each
//! block is for, thinking removed, prose ignored.

/// One fenced block of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The fence's info string, e.g. `python path=src/a.py`.
    pub info: String,
    /// The file the block says it is for, from the info string, the line before the fence,
    /// or a path comment on its first line (which is then not part of `code`).
    pub path: Option<String>,
    pub code: String,
    /// False when the reply ended before the closing fence.
    pub closed: bool,
}

impl Block {
    /// The info string's language tag, lowercased.
    pub fn language(&self) -> String {
        let first = self.info.split_whitespace().next().unwrap_or_default();
        let first = first.split([':', '{']).next().unwrap_or_default();
        if looks_like_path(first) || first.contains('=') {
            String::new()
        } else {
            first.to_ascii_lowercase()
        }
    }
}

/// The code for each requested output, in the order of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub files: Vec<(String, String)>,
    /// What is worth knowing but did not stop the extraction.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    /// The reply has no usable code.
    NoCode(String),
    /// The reply ends inside a code block.
    Truncated(String),
    /// Some requested files have no block.
    MissingFiles(Vec<String>),
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCode(reason) | Self::Truncated(reason) => f.write_str(reason),
            Self::MissingFiles(files) => write!(
                f,
                "the reply has no code block for {}",
                files
                    .iter()
                    .map(|file| format!("`{file}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Finds the code for `outputs` (normalised relative paths) in `reply`.
pub fn extract(reply: &str, outputs: &[String], language: &str) -> Result<Extracted, ExtractError> {
    let reply = strip_thinking(&reply.replace("\r\n", "\n"));
    let blocks = blocks(&reply);
    let mut notes = Vec::new();

    if blocks.is_empty() {
        if outputs.len() == 1 && looks_like_bare_code(&reply) {
            notes.push(
                "the reply had no code fence; its whole text was taken as the code".to_owned(),
            );
            return Ok(Extracted {
                files: vec![(
                    outputs[0].clone(),
                    with_final_newline(reply.trim_matches('\n')),
                )],
                notes,
            });
        }
        return Err(ExtractError::NoCode(if reply.trim().is_empty() {
            "the reply is empty (after removing any <think> section)".to_owned()
        } else {
            "the reply has no fenced code block".to_owned()
        }));
    }
    if let Some(open) = blocks.iter().find(|block| !block.closed) {
        return Err(ExtractError::Truncated(format!(
            "the reply ends inside a code block{} that was never closed: it looks cut off",
            open.path
                .as_deref()
                .map(|p| format!(" for `{p}`"))
                .unwrap_or_default()
        )));
    }

    let mut files = Vec::with_capacity(outputs.len());
    let mut missing = Vec::new();
    for output in outputs {
        match pick(&blocks, output, outputs, language) {
            Some(block) => files.push((output.clone(), with_final_newline(&block.code))),
            None => missing.push(output.clone()),
        }
    }
    for block in &blocks {
        if let Some(path) = &block.path
            && outputs.len() > 1
            && resolve_label(path, outputs).is_none()
        {
            notes.push(format!(
                "ignored a block for `{path}`, a file the task did not ask for"
            ));
        }
    }
    if !missing.is_empty() {
        return Err(ExtractError::MissingFiles(missing));
    }
    if outputs.len() == 1
        && let Some(label) = blocks.iter().find_map(|b| b.path.as_deref())
        && blocks.len() == 1
        && resolve_label(label, outputs).is_none()
    {
        notes.push(format!(
            "the only block was labelled `{label}`; it was written to `{}`",
            outputs[0]
        ));
    }
    Ok(Extracted { files, notes })
}

/// The block that holds `output`: one labelled with its path; in a single-file task, the
/// only block, or the largest block in the file's language.
fn pick<'a>(
    blocks: &'a [Block],
    output: &str,
    outputs: &[String],
    language: &str,
) -> Option<&'a Block> {
    let labelled = blocks.iter().rev().find(|block| {
        block
            .path
            .as_deref()
            .and_then(|p| resolve_label(p, outputs))
            == Some(output)
    });
    if labelled.is_some() || outputs.len() > 1 {
        return labelled;
    }
    if blocks.len() == 1 {
        return blocks.first();
    }
    let unlabelled: Vec<&Block> = blocks.iter().filter(|b| b.path.is_none()).collect();
    let candidates: Vec<&Block> = if language.is_empty() {
        unlabelled
    } else {
        let same_language: Vec<&Block> = unlabelled
            .iter()
            .copied()
            .filter(|b| b.language() == language || b.language().is_empty())
            .collect();
        if same_language.is_empty() {
            unlabelled
        } else {
            same_language
        }
    };
    candidates.into_iter().max_by_key(|b| b.code.len())
}

/// The output a label names: the exact path, or a unique output with the same file name
/// or path suffix (models often drop leading directories).
fn resolve_label<'a>(label: &str, outputs: &'a [String]) -> Option<&'a str> {
    let label = label.trim_start_matches("./");
    if let Some(exact) = outputs.iter().find(|o| *o == label) {
        return Some(exact);
    }
    let mut suffix_matches = outputs.iter().filter(|o| o.ends_with(&format!("/{label}")));
    match (suffix_matches.next(), suffix_matches.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// Removes `<think>…</think>` sections, and everything after an unclosed leading `<think>`.
pub fn strip_thinking(reply: &str) -> String {
    let mut out = String::with_capacity(reply.len());
    let mut rest = reply;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        if let Some(end) = rest[start..].find("</think>") {
            rest = &rest[start + end + "</think>".len()..];
        } else {
            rest = "";
            break;
        }
    }
    out.push_str(rest);
    // A reply may also open with a bare closing tag when the template added the opening one.
    match out.find("</think>") {
        Some(end) if !out[..end].contains("```") => out[end + "</think>".len()..].to_owned(),
        _ => out,
    }
}

/// Every fenced block, in order. A fence is three or more backticks or tildes; it closes
/// on a line of the same character at least as long, so a longer outer fence can hold
/// shorter inner ones.
pub fn blocks(reply: &str) -> Vec<Block> {
    let lines: Vec<&str> = reply.split('\n').collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let Some((fence_char, fence_len, indent, info)) = opening_fence(lines[index]) else {
            index += 1;
            continue;
        };
        let label_before = index
            .checked_sub(1)
            .and_then(|i| {
                lines[..=i]
                    .iter()
                    .rev()
                    .take(2)
                    .find(|l| !l.trim().is_empty())
            })
            .and_then(|line| path_in_label_line(line));
        let mut body: Vec<&str> = Vec::new();
        let mut closed = false;
        let mut cursor = index + 1;
        while cursor < lines.len() {
            let line = lines[cursor];
            if is_closing_fence(line, fence_char, fence_len) {
                closed = true;
                break;
            }
            body.push(strip_indent(line, indent));
            cursor += 1;
        }
        // The text after the last fence of a reply often ends with a newline: drop the
        // empty last "line" it leaves when the block is unclosed.
        if !closed && body.last().is_some_and(|l| l.is_empty()) {
            body.pop();
        }
        let mut path = path_in_info(info).or(label_before);
        if let Some(first) = body.first()
            && let Some(commented) = path_in_comment(first)
            && (path.is_none() || path.as_deref() == Some(commented.as_str()))
        {
            path = Some(commented);
            body.remove(0);
        }
        blocks.push(Block {
            info: info.to_owned(),
            path,
            code: body.join("\n"),
            closed,
        });
        index = cursor + 1;
    }
    blocks
}

fn opening_fence(line: &str) -> Option<(char, usize, usize, &str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let fence_char = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let fence_len = rest.chars().take_while(|c| *c == fence_char).count();
    if fence_len < 3 {
        return None;
    }
    let info = rest[fence_len..].trim();
    if fence_char == '`' && info.contains('`') {
        return None;
    }
    Some((fence_char, fence_len, indent, info))
}

fn is_closing_fence(line: &str, fence_char: char, fence_len: usize) -> bool {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return false;
    }
    let run = trimmed.chars().take_while(|c| *c == fence_char).count();
    run >= fence_len && trimmed[run..].trim().is_empty()
}

fn strip_indent(line: &str, indent: usize) -> &str {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    &line[spaces.min(indent)..]
}

/// `python path=src/a.py`, `src/a.py`, `python src/a.py`, `python:src/a.py`,
/// `title="src/a.py"`.
fn path_in_info(info: &str) -> Option<String> {
    for token in info.split_whitespace() {
        let token = token.trim_matches(['{', '}', ',']);
        if let Some((key, value)) = token.split_once('=') {
            if matches!(key, "path" | "file" | "filename" | "title" | "name") {
                let value = value.trim_matches(['"', '\'']);
                if !value.is_empty() {
                    return Some(value.to_owned());
                }
            }
            continue;
        }
        let candidate = token.split_once(':').map_or(token, |(_, path)| path);
        if looks_like_path(candidate) {
            return Some(candidate.to_owned());
        }
    }
    None
}

/// A line that only names a file: `src/a.py`, `**src/a.py**`, `` `src/a.py` ``,
/// `File: src/a.py`, `### src/a.py`, `src/a.py:`.
fn path_in_label_line(line: &str) -> Option<String> {
    let mut text = line.trim();
    text = text.trim_start_matches('#').trim();
    for prefix in [
        "- ",
        "* ",
        "File:",
        "file:",
        "Filename:",
        "filename:",
        "Path:",
        "path:",
        "**File:**",
        "**File**:",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim();
        }
    }
    let text = text
        .trim_matches(|c: char| c == '*' || c == '`' || c == '_' || c == '"' || c == '\'')
        .trim_end_matches(':')
        .trim_matches(|c: char| c == '*' || c == '`');
    (!text.contains(char::is_whitespace) && looks_like_path(text)).then(|| text.to_owned())
}

/// `// src/a.py`, `# src/a.py`, `-- a.sql`, `<!-- a.html -->`, `/* a.c */`,
/// `# file: src/a.py`.
fn path_in_comment(line: &str) -> Option<String> {
    let trimmed = line.trim();
    if trimmed.starts_with("#!") {
        return None;
    }
    let mut text = None;
    for prefix in ["//", "#", "--", "<!--", "/*", ";"] {
        if let Some(rest) = trimmed.strip_prefix(prefix) {
            text = Some(rest.trim_end_matches("-->").trim_end_matches("*/").trim());
            break;
        }
    }
    let mut text = text?;
    for prefix in ["File:", "file:", "Filename:", "filename:", "Path:", "path:"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim();
        }
    }
    (!text.contains(char::is_whitespace) && looks_like_path(text) && text.contains('.'))
        .then(|| text.to_owned())
}

/// A relative file path with an extension or a directory: `a.py`, `src/x`, not `python`.
fn looks_like_path(text: &str) -> bool {
    if text.is_empty() || text.len() > 255 || text.starts_with('-') || text.ends_with('.') {
        return false;
    }
    let valid_chars = text
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@'));
    let file_name = text.rsplit('/').next().unwrap_or_default();
    let has_extension = file_name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !ext.is_empty() && ext.len() <= 10 && (!stem.is_empty() || file_name.starts_with('.'))
    });
    valid_chars && (text.contains('/') || has_extension) && !text.contains("..")
}

/// A reply with no fence that is nothing but code: no line reads as a sentence.
fn looks_like_bare_code(reply: &str) -> bool {
    let lines: Vec<&str> = reply
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return false;
    }
    let code_like = lines
        .iter()
        .filter(|line| {
            line.contains(['(', ')', '{', '}', '=', ';', ':', '[', ']', '<', '>'])
                || line.starts_with(['#', '/', '-', '@'])
        })
        .count();
    let prose_like = lines.iter().any(|line| {
        let words = line.split_whitespace().count();
        let starts_capital = line.chars().next().is_some_and(char::is_uppercase);
        words >= 5
            && starts_capital
            && (line.ends_with('.') || line.ends_with(':') || line.ends_with('!'))
            && !line.contains(['(', '{', ';', '='])
    });
    !prose_like && code_like * 2 >= lines.len()
}

fn with_final_newline(code: &str) -> String {
    if code.is_empty() || code.ends_with('\n') {
        code.to_owned()
    } else {
        format!("{code}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(reply: &str, output: &str) -> Result<Extracted, ExtractError> {
        extract(
            reply,
            &[output.to_owned()],
            crate::language::for_path(output),
        )
    }

    #[test]
    fn takes_the_single_block_and_ignores_prose() {
        let reply =
            "Sure! Here it is:\n\n```python\ndef f():\n    return 1\n```\n\nThis returns 1.";
        let out = one(reply, "src/f.py").unwrap();
        assert_eq!(
            out.files,
            [("src/f.py".to_owned(), "def f():\n    return 1\n".to_owned())]
        );
    }

    #[test]
    fn strips_think_sections() {
        let reply = "<think>maybe ```js\nwrong\n```</think>\n```js\nright()\n```";
        assert_eq!(one(reply, "a.js").unwrap().files[0].1, "right()\n");
        assert!(matches!(
            one("<think>never finished", "a.js"),
            Err(ExtractError::NoCode(_))
        ));
    }

    #[test]
    fn outer_fence_holds_inner_fences() {
        let reply = "````markdown\n# Title\n\n```sh\nls\n```\n````\n";
        assert_eq!(
            one(reply, "README.md").unwrap().files[0].1,
            "# Title\n\n```sh\nls\n```\n"
        );
    }

    #[test]
    fn labels_from_info_line_and_comment() {
        let reply = "```python path=src/a.py\nA = 1\n```\n**src/b.py**\n```python\nB = 2\n```\n```python\n# src/c.py\nC = 3\n```\n";
        let outputs = ["src/a.py", "src/b.py", "src/c.py"].map(str::to_owned);
        let out = extract(reply, &outputs, "python").unwrap();
        assert_eq!(out.files[0].1, "A = 1\n");
        assert_eq!(out.files[1].1, "B = 2\n");
        assert_eq!(out.files[2].1, "C = 3\n");
    }

    #[test]
    fn missing_and_unrequested_files() {
        let reply = "```python path=src/a.py\nA = 1\n```\n```python path=evil.py\nimport os\n```\n";
        let outputs = ["src/a.py", "src/b.py"].map(str::to_owned);
        assert_eq!(
            extract(reply, &outputs, "python"),
            Err(ExtractError::MissingFiles(vec!["src/b.py".to_owned()]))
        );
    }

    #[test]
    fn unclosed_fence_is_truncated() {
        assert!(matches!(
            one("```rust\nfn main() {\n", "a.rs"),
            Err(ExtractError::Truncated(_))
        ));
    }

    #[test]
    fn bare_code_is_taken_but_prose_is_not() {
        let out = one("def f(x):\n    return x * 2\n", "f.py").unwrap();
        assert_eq!(out.files[0].1, "def f(x):\n    return x * 2\n");
        assert_eq!(out.notes.len(), 1);
        assert!(matches!(
            one(
                "I cannot do that without more information about the project.",
                "f.py"
            ),
            Err(ExtractError::NoCode(_))
        ));
    }

    #[test]
    fn prefers_the_block_in_the_file_language() {
        let reply = "```python\ndef long_function():\n    pass\n```\nRun it:\n```bash\npython -c 'import f; f.long_function()' && echo ok && echo more\n```\n";
        assert_eq!(
            one(reply, "f.py").unwrap().files[0].1,
            "def long_function():\n    pass\n"
        );
    }
}
