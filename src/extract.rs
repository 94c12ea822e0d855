//! Takes the code for each output file out of a model's reply: fenced blocks, the file each
//! block is for, thinking removed, prose ignored.
//!
//! Replies from local models are messy: prose around the code, file names written in half a
//! dozen styles, usage examples after the code, fences nested in Markdown, no fence at all.
//! Everything here aims at one question per output file — which text is its complete
//! content? — and answers "none" rather than guess when a wrong guess would be written.

use crate::language;

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
    /// The path comment (and the blank line after it) taken off the first line, kept so a
    /// file whose own first line is that comment can have it back.
    pub label_lines: String,
    /// The line before the fence introduces it as a usage example ("You can use it like
    /// this:"), which is never the file itself.
    pub usage: bool,
    /// The line before the fence introduces it as the file as it was ("For reference, the
    /// original was:", "Your current code:"), an echo rather than the update.
    pub echo: bool,
    /// Its place among the reply's blocks, counting from 1, for notes.
    pub number: usize,
}

impl Block {
    /// The info string's language tag, with common aliases mapped to the names
    /// [`language::for_path`] uses (`py` → `python`), or empty when there is none.
    pub fn language(&self) -> String {
        let first = self.info.split_whitespace().next().unwrap_or_default();
        let first = first.split([':', '{', ',']).next().unwrap_or_default();
        if looks_like_path(first) || first.contains('=') {
            return String::new();
        }
        let tag = first.trim_start_matches('.').to_ascii_lowercase();
        let canonical = match tag.as_str() {
            "py" | "python3" | "py3" => "python",
            "js" | "node" | "nodejs" => "javascript",
            "ts" => "typescript",
            "sh" | "shell" | "console" | "shellscript" => "bash",
            "rs" => "rust",
            "golang" => "go",
            "c++" | "cxx" | "cc" | "hpp" => "cpp",
            "h" => "c",
            "cs" | "c#" => "csharp",
            "yml" => "yaml",
            "md" => "markdown",
            "rb" => "ruby",
            "kt" => "kotlin",
            "ps1" | "pwsh" | "ps" => "powershell",
            "htm" => "html",
            "jsonc" | "json5" => "json",
            "makefile" => "make",
            "text" | "txt" | "plain" | "plaintext" => "",
            other => other,
        };
        canonical.to_owned()
    }

    /// A unified diff rather than a file's content.
    fn is_diff(&self) -> bool {
        matches!(self.language().as_str(), "diff" | "patch") || is_unified_diff(&self.code)
    }

    /// Only the name of one of `outputs` (```` ```plaintext ```` then `mywc.py`): a label
    /// for the code beside it, never the file's content. (A `.gitignore` holding only
    /// `.env` names another file and is content.)
    fn is_only_a_name(&self, outputs: &[String]) -> bool {
        let text = self.code.trim();
        !text.contains(char::is_whitespace)
            && looks_like_path(text)
            && resolve_label(text, outputs).is_some()
    }
}

/// A unified diff: a `--- ` line, a `+++ ` line right after it and a `@@ -` hunk header,
/// with no fence before the header (a diff shown inside a Markdown file's own code block is
/// part of that file). The header may follow a comment or a sentence, so it is looked for
/// on every line, not only the first.
fn is_unified_diff(text: &str) -> bool {
    let mut previous = "";
    let mut header = false;
    for line in text.lines() {
        if !header && Fence::open(line).is_some() {
            return false;
        }
        if previous.starts_with("--- ") && line.starts_with("+++ ") {
            header = true;
        }
        if header && line.starts_with("@@ -") {
            return true;
        }
        previous = line;
    }
    false
}

/// The code for each requested output, in the order of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub files: Vec<(String, String)>,
    /// What is worth knowing but did not stop the extraction.
    pub notes: Vec<String>,
    /// For each file, the path comment taken off its block's first line (empty if none).
    pub label_lines: Vec<String>,
}

impl Extracted {
    /// Puts back the path comment taken off a block when the file as it was (`before`, by
    /// path) starts with that same comment: it was the file's own first line, and every
    /// edit removed it.
    pub fn keep_own_path_comments<'a>(&mut self, before: impl Fn(&str) -> Option<&'a str>) {
        for ((path, code), label) in self.files.iter_mut().zip(&self.label_lines) {
            let Some(comment) = label.lines().next() else {
                continue;
            };
            let own = before(path)
                .and_then(|before| before.lines().next())
                .is_some_and(|first| first.trim_end() == comment.trim_end());
            if own {
                code.insert_str(0, label);
            }
        }
    }
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
            // Said so the repair prompt tells the model how to fix it: usually the block
            // was there, without the path that says which file it is.
            Self::MissingFiles(files) => write!(
                f,
                "the reply has no code block labelled with the path of {}; start each block's fence with its path (```python path={})",
                files
                    .iter()
                    .map(|file| format!("`{file}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                files.first().map_or("src/a.py", String::as_str)
            ),
        }
    }
}

/// Finds the code for `outputs` (normalised relative paths) in `reply`. `language` is the
/// fence language of a single-file task (the spec's, or inferred from the output's name).
pub fn extract(reply: &str, outputs: &[String], language: &str) -> Result<Extracted, ExtractError> {
    extract_against(reply, outputs, language, |_| None)
}

/// [`extract`] for outputs that may exist: `before` gives a file's content as it was
/// before the run, by output path.
pub fn extract_against<'a>(
    reply: &str,
    outputs: &[String],
    language: &str,
    before: impl Fn(&str) -> Option<&'a str>,
) -> Result<Extracted, ExtractError> {
    let reply = reply.replace("\r\n", "\n");
    let reply = strip_thinking(&reply);
    let mut blocks = blocks(reply);
    if blocks.is_empty() {
        return bare_code(reply, outputs);
    }
    let names: Vec<bool> = blocks
        .iter()
        .map(|block| block.is_only_a_name(outputs))
        .collect();
    if let Some(first) = names.iter().position(|&name| name) {
        label_code_beside_names(&mut blocks, &names);
        let name = blocks[first].code.trim().to_owned();
        let mut is_name = names.iter();
        blocks.retain(|_| !is_name.next().copied().unwrap_or_default());
        if blocks.is_empty() {
            return Err(ExtractError::NoCode(format!(
                "the reply's only code block holds just the name `{name}`, not the file's content: put the complete file in a fenced block"
            )));
        }
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

    let stale = stale_blocks(&blocks, outputs, &before);
    let mut notes = Vec::new();
    let chosen = choose(&blocks, outputs, language, &stale, &mut notes);
    for (index, block) in blocks.iter().enumerate() {
        let Some(label) = &block.path else { continue };
        if chosen.contains(&Some(index)) {
            if resolve_label(label, outputs).is_none() {
                notes.push(format!(
                    "the only block was labelled `{label}`; it was written to `{}`",
                    outputs[0]
                ));
            }
        } else if resolve_label(label, outputs).is_none() {
            notes.push(format!(
                "ignored a block for `{label}`, a file the task did not ask for"
            ));
        }
    }

    let missing: Vec<String> = outputs
        .iter()
        .zip(&chosen)
        .filter(|(_, block)| block.is_none())
        .map(|(output, _)| output.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ExtractError::MissingFiles(missing));
    }
    let mut files = Vec::with_capacity(outputs.len());
    let mut label_lines = Vec::with_capacity(outputs.len());
    for (output, index) in outputs.iter().zip(chosen) {
        let Some(block) = index.map(|i| &blocks[i]) else {
            continue;
        };
        if block.is_diff() && !is_diff_file(output) {
            return Err(ExtractError::NoCode(format!(
                "the block for `{output}` is a diff, not the file: reply with the complete content of `{output}`"
            )));
        }
        // An empty file is never what a task asks for: an empty block is a reply that
        // forgot its code.
        if block.code.trim().is_empty() {
            return Err(ExtractError::NoCode(format!(
                "the block for `{output}` is empty: reply with the complete content of `{output}`"
            )));
        }
        if let Some(how) = ends_open(&block.code, language::for_path(output)) {
            return Err(ExtractError::Truncated(format!(
                "the code for `{output}` {how}: a fence line inside the code may have cut it, or the reply stopped early; \
                 send the complete file, with a longer fence (````) around it when it holds fence lines"
            )));
        }
        if block.path.is_none() {
            let expected = match outputs {
                [_] if !language.is_empty() => language,
                _ => language::for_path(output),
            };
            check_language(block, output, expected)?;
        }
        files.push((output.clone(), with_final_newline(&block.code)));
        label_lines.push(block.label_lines.clone());
    }
    Ok(Extracted {
        files,
        notes,
        label_lines,
    })
}

/// Why each block is only the file as it was: introduced as the original, or equal to the
/// file before the run. Such a block is never the update, however long.
fn stale_blocks<'a>(
    blocks: &[Block],
    outputs: &[String],
    before: impl Fn(&str) -> Option<&'a str>,
) -> Vec<Option<&'static str>> {
    // Once per output, not per block: a looping reply holds thousands of blocks.
    let was: Vec<Option<String>> = outputs
        .iter()
        .map(|output| before(output).map(|text| text.replace("\r\n", "\n").trim_end().to_owned()))
        .collect();
    blocks
        .iter()
        .map(|block| {
            let output = match (&block.path, outputs) {
                (Some(label), _) => resolve_label(label, outputs),
                (None, [only]) => Some(only.as_str()),
                (None, _) => None,
            };
            let unchanged = output
                .and_then(|output| outputs.iter().position(|o| o == output))
                .and_then(|at| was[at].as_deref())
                .is_some_and(|was| was == block.code.trim_end());
            if block.echo {
                Some("introduced as the file as it was")
            } else if unchanged {
                Some("the file as it was")
            } else {
                None
            }
        })
        .collect()
}

/// Labels the code beside each name-only block (`names[i]`) with that name. A reply puts
/// such names either before each block or after it, the same way throughout: a reply that
/// opens with a name puts them before.
fn label_code_beside_names(blocks: &mut [Block], names: &[bool]) {
    let before = names.first().copied().unwrap_or_default();
    for at in (0..blocks.len()).filter(|&at| names[at]) {
        let code = if before { at + 1 } else { at.wrapping_sub(1) };
        if code < blocks.len() && !names[code] && blocks[code].path.is_none() {
            blocks[code].path = Some(blocks[at].code.trim().to_owned());
        }
    }
}

/// Refuses an unlabelled block tagged with another language than its file's: two
/// ```` ```bash ```` blocks of `npm install` for a `.js` target are commands to run, and the
/// largest of them was written into the file.
fn check_language(block: &Block, output: &str, expected: &str) -> Result<(), ExtractError> {
    let tag = block.language();
    // Only two languages both known can disagree: a spec may name its language its own way
    // (`py`), and `plaintext` or `ini` say nothing.
    if !language::is_known(expected)
        || !language::is_known(&tag)
        || language::compatible(&tag, expected)
    {
        return Ok(());
    }
    Err(ExtractError::NoCode(format!(
        "the reply has no `{expected}` block for `{output}`, only `{tag}` (commands or another file's code, not this file): reply with the complete content of `{output}` in a ```{expected} block"
    )))
}

/// The index of the block for each output, in the order of `outputs`.
///
/// A block labelled with an output's path wins (the last one, when a reply corrects itself,
/// unless it only repeats the file as it was).
/// Otherwise a single-file task takes its only block, or the largest unlabelled block that
/// is not a diff, preferring the file's language; a several-file task takes an unlabelled
/// block only when it is the one block in that file's language.
fn choose(
    blocks: &[Block],
    outputs: &[String],
    language: &str,
    stale: &[Option<&'static str>],
    notes: &mut Vec<String>,
) -> Vec<Option<usize>> {
    let mut chosen: Vec<Option<usize>> = outputs
        .iter()
        .map(|output| {
            let labelled: Vec<usize> = (0..blocks.len())
                .filter(|&i| {
                    blocks[i]
                        .path
                        .as_deref()
                        .and_then(|label| resolve_label(label, outputs))
                        == Some(output.as_str())
                })
                .collect();
            // The last one, when a reply corrects itself, unless it only echoes the file.
            let used = labelled
                .iter()
                .rev()
                .find(|&&i| stale[i].is_none())
                .or(labelled.last())
                .copied();
            if let Some(used) = used {
                note_ignored(blocks, output, used, &labelled, |i| stale[i], notes);
            }
            used
        })
        .collect();

    if let [output] = outputs {
        if chosen[0].is_none() {
            chosen[0] = if blocks.len() == 1 {
                Some(0)
            } else {
                choose_unlabelled(blocks, output, language, stale, notes)
            };
        }
        return chosen;
    }

    let unlabelled_in = |language: &str| -> Vec<usize> {
        (0..blocks.len())
            .filter(|&i| {
                blocks[i].path.is_none() && !language.is_empty() && blocks[i].language() == language
            })
            .collect()
    };
    let open: Vec<usize> = (0..outputs.len())
        .filter(|&o| chosen[o].is_none())
        .collect();
    for &o in &open {
        let language = language::for_path(&outputs[o]);
        let rivals = open
            .iter()
            .filter(|&&other| language::for_path(&outputs[other]) == language)
            .count();
        if let ([only], 1) = (unlabelled_in(language).as_slice(), rivals) {
            chosen[o] = Some(*only);
            notes.push(format!(
                "the block for `{}` had no file name; it was the only unlabelled `{language}` block",
                outputs[o]
            ));
        }
    }
    chosen
}

/// The largest unlabelled block for the one `output` of a single-file task, preferring its
/// language, and never a diff, a usage example or a copy of the file as it was when
/// another block will do.
fn choose_unlabelled(
    blocks: &[Block],
    output: &str,
    language: &str,
    stale: &[Option<&'static str>],
    notes: &mut Vec<String>,
) -> Option<usize> {
    let language = if language.is_empty() {
        language::for_path(output)
    } else {
        language
    };
    let candidates: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].path.is_none())
        .collect();
    let called = called_by_others(blocks, &candidates);
    let fit = |block: &Block| {
        let tag = block.language();
        if tag == language {
            2
        } else {
            u8::from(tag.is_empty())
        }
    };
    let used = candidates.iter().copied().max_by_key(|&i| {
        let block = &blocks[i];
        // A usage example may be longer than the code it calls: the block that
        // defines what another block calls is the file, and a block introduced
        // as an example is not. Nor is a copy of the file as it was.
        (
            !block.is_diff(),
            !block.code.trim().is_empty(),
            !block.usage,
            fit(block),
            stale[i].is_none(),
            called[i],
            block.code.len(),
        )
    });
    if let Some(used) = used {
        let why = |i: usize| {
            let block = &blocks[i];
            if block.is_diff() {
                Some("a diff")
            } else if block.code.trim().is_empty() {
                Some("empty")
            } else if block.usage {
                Some("a usage example")
            } else if fit(block) < fit(&blocks[used]) {
                Some("another language")
            } else {
                stale[i]
            }
        };
        note_ignored(blocks, output, used, &candidates, why, notes);
    }
    used
}

/// Notes which of several `candidates` for `output` was used and which were ignored, with
/// why when there is more to say than "smaller": a reply's other blocks are never silently
/// dropped.
fn note_ignored(
    blocks: &[Block],
    output: &str,
    used: usize,
    candidates: &[usize],
    why: impl Fn(usize) -> Option<&'static str>,
    notes: &mut Vec<String>,
) {
    // A looping reply may hold thousands of blocks: the first few name the pattern.
    const LISTED: usize = 8;
    if candidates.len() < 2 {
        return;
    }
    let mut ignored: Vec<String> = candidates
        .iter()
        .filter(|&&i| i != used)
        .take(LISTED)
        .map(|&i| match why(i) {
            Some(reason) => format!("block {} ({reason})", blocks[i].number),
            None => format!("block {}", blocks[i].number),
        })
        .collect();
    if candidates.len() - 1 > LISTED {
        ignored.push(format!("and {} more", candidates.len() - 1 - LISTED));
    }
    notes.push(format!(
        "{} blocks could be `{output}`; used block {}, ignored {}",
        candidates.len(),
        blocks[used].number,
        ignored.join(", ")
    ));
}

/// For each block, whether another of `candidates` calls a name it defines (`def f`,
/// `function f`, `fn f`, `func f`, `class F`) without defining it too.
///
/// Linear in the reply: a looping reply repeats one definition in thousands of blocks, so
/// only the first two definers of a name are kept.
fn called_by_others(blocks: &[Block], candidates: &[usize]) -> Vec<bool> {
    use std::collections::{HashMap, HashSet};
    let mut definers: HashMap<&str, Vec<usize>> = HashMap::new();
    // A set, not a list: one large block may define thousands of names.
    let mut defined: Vec<HashSet<&str>> = vec![HashSet::new(); blocks.len()];
    for &i in candidates {
        for name in definitions(&blocks[i].code) {
            let list = definers.entry(name).or_default();
            if list.len() < 2 && !list.contains(&i) {
                list.push(i);
            }
            defined[i].insert(name);
        }
    }
    let mut called = vec![false; blocks.len()];
    for &i in candidates {
        for word in identifiers(&blocks[i].code) {
            if defined[i].contains(word) {
                continue;
            }
            for &definer in definers.get(word).into_iter().flatten() {
                called[definer] = true;
            }
        }
    }
    called
}

/// The names `code` defines, from the usual keywords at the start of a line.
fn definitions(code: &str) -> impl Iterator<Item = &str> {
    code.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let mut word = words.next()?;
        while matches!(
            word,
            "pub" | "export" | "async" | "default" | "static" | "public"
        ) {
            word = words.next()?;
        }
        if !matches!(word, "def" | "function" | "fn" | "func" | "class") {
            return None;
        }
        identifiers(words.next()?).next()
    })
}

/// The identifiers in `text`: runs of letters, digits and `_` not starting with a digit.
fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| {
            word.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        })
}

/// The output a label names: the exact path, or the unique output that the label is a
/// path suffix of (models often drop leading directories) or that is a suffix of the label
/// (or add one, such as the project's name).
fn resolve_label<'a>(label: &str, outputs: &'a [String]) -> Option<&'a str> {
    // A label that is not a safe relative path names no output, whatever it ends with:
    // `../a.txt` and `/etc/a.txt` are other files than `a.txt`.
    let label = crate::guard::normalize_relative(label).ok()?;
    if let Some(exact) = outputs.iter().find(|o| **o == label) {
        return Some(exact);
    }
    let mut matches = outputs.iter().filter(|o| drops_leading_dirs(o, &label));
    match (matches.next(), matches.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// `label` is `output` without some leading directories (`a.py` for `src/a.py`), the way
/// models shorten paths. Never the other way round: `vendor/src/a.py` is another file.
fn drops_leading_dirs(output: &str, label: &str) -> bool {
    output.ends_with(&format!("/{label}"))
}

/// `a` and `b` name the same file up to leading directories (a path comment that agrees
/// with the fence's label is dropped from the code).
fn same_file(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches("./"), b.trim_start_matches("./"));
    a == b || a.ends_with(&format!("/{b}")) || b.ends_with(&format!("/{a}"))
}

fn is_diff_file(path: &str) -> bool {
    std::path::Path::new(path)
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("diff") || ext.eq_ignore_ascii_case("patch"))
}

/// The reply without its leading thinking: `<think>…</think>` (or `<thinking>`) sections at
/// the start, everything when the leading section never closes, and the text before a
/// closing tag on a line of its own when the server's template sent the opening tag.
///
/// Only leading sections count: a `<think>` later on is more likely part of the code (a
/// parser for exactly these tags, say) than thinking.
pub fn strip_thinking(reply: &str) -> &str {
    let mut rest = reply;
    loop {
        let trimmed = rest.trim_start();
        let Some((open, close)) = [("<think>", "</think>"), ("<thinking>", "</thinking>")]
            .into_iter()
            .find(|(open, _)| trimmed.starts_with(open))
        else {
            break;
        };
        match trimmed[open.len()..].find(close) {
            Some(end) => rest = &trimmed[open.len() + end + close.len()..],
            None => return "",
        }
    }
    let mut offset = 0;
    // A `</think>` inside a fenced block is code (a parser for these tags, a docstring
    // quoting one), and taking it for the end of thinking dropped the code before it.
    let mut open_fence: Option<Fence<'_>> = None;
    for line in rest.split_inclusive('\n') {
        if line.contains("<think>") {
            break;
        }
        match open_fence {
            Some(fence) if fence.closed_by(line, fence.indent) => open_fence = None,
            Some(_) => {}
            None if line.trim() == "</think>" => return &rest[offset + line.len()..],
            None => open_fence = Fence::open(line.trim_end_matches('\n')),
        }
        offset += line.len();
    }
    rest
}

/// A fence line: three or more backticks or tildes and an info string.
#[derive(Debug, Clone, Copy)]
struct Fence<'a> {
    marker: char,
    len: usize,
    indent: usize,
    info: &'a str,
}

impl<'a> Fence<'a> {
    fn open(line: &'a str) -> Option<Self> {
        let rest = line.trim_start_matches(' ');
        let marker = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let len = rest.chars().take_while(|c| *c == marker).count();
        let info = rest[len..].trim();
        if len < 3 || (marker == '`' && info.contains('`')) {
            return None;
        }
        Some(Self {
            marker,
            len,
            indent: line.len() - rest.len(),
            info,
        })
    }

    /// Whether `line` closes this fence: the same character at least as many times and
    /// nothing else, indented no more than three spaces past the block's own indentation
    /// (so a fence inside an indented docstring does not end the block).
    fn closed_by(&self, line: &str, block_indent: usize) -> bool {
        let rest = line.trim_start_matches(' ');
        let run = rest.chars().take_while(|c| *c == self.marker).count();
        line.len() - rest.len() <= block_indent + 3
            && run >= self.len
            && rest[run..].trim().is_empty()
    }
}

/// Every fenced block, in order.
///
/// A fence is three or more backticks or tildes; it closes on a bare line of the same
/// character at least as long, so a longer outer fence can hold shorter inner ones. Inside
/// a block, a fence line of the same character *with* an info string opens a nested block
/// (a closing fence never has one), so a Markdown file or a docstring whose examples use
/// the same fence length stays one block.
pub fn blocks(reply: &str) -> Vec<Block> {
    let lines: Vec<&str> = reply.split('\n').collect();
    let mut blocks = Vec::new();
    let mut bare_counts = BareFenceCounts::default();
    let mut index = 0;
    while index < lines.len() {
        let Some(fence) = Fence::open(lines[index]) else {
            index += 1;
            continue;
        };
        // A Markdown file's own bare code blocks, fenced like the file itself, are
        // ambiguous: a bare fence may close the file or open one of its blocks. When
        // reading it as opening one leaves every later fence paired and the last one
        // closing the file, that is the reading taken (`rest` below is even).
        let markdown = matches!(
            fence.info.split_whitespace().next(),
            Some("markdown" | "md")
        );
        // Each nested fence with the index of its opening line in `body`.
        let mut nested: Vec<(Fence<'_>, usize)> = Vec::new();
        let mut body: Vec<&str> = Vec::new();
        let mut closed = false;
        let mut cursor = index + 1;
        let mut long_close = None;
        while cursor < lines.len() {
            let line = lines[cursor];
            let innermost = nested.last().map_or(&fence, |(inner, _)| inner);
            if innermost.closed_by(line, fence.indent) {
                if let Some((inner, opener)) = nested.pop() {
                    if inner.len < fence.len && fence.closed_by(line, fence.indent) {
                        long_close.get_or_insert(StrayOpener {
                            close: cursor,
                            body_len: body.len(),
                            opener,
                        });
                    }
                } else {
                    // Only a Markdown block looks ahead: counting the rest of the reply at
                    // every closing fence made a looping reply of many blocks quadratic.
                    let reopens = markdown && {
                        let rest = bare_counts.after(&lines, cursor + 1, &fence);
                        rest >= 2 && rest.is_multiple_of(2)
                    };
                    if !reopens {
                        closed = true;
                        break;
                    }
                    nested.extend(Fence::open(line).map(|inner| (inner, body.len())));
                }
            } else if let Some(inner) = Fence::open(line).filter(|inner| {
                inner.marker == fence.marker
                    && !inner.info.is_empty()
                    && inner.indent <= fence.indent + 3
            }) {
                nested.push((inner, body.len()));
            }
            body.push(strip_indent(line, fence.indent));
            cursor += 1;
        }
        let mut label = label_before(&lines[..index]);
        if let (false, Some(stray)) = (closed, long_close) {
            label = stray.apply(&mut body).or(label);
            cursor = stray.close;
            closed = true;
        }
        // Text after the last fence often ends with a newline: drop the empty last "line"
        // it leaves in an unclosed block.
        while !closed && body.last().is_some_and(|line| line.trim().is_empty()) {
            body.pop();
        }
        // An unclosed fence with nothing after it is a stray fence line, not a cut-off block.
        if closed || !body.is_empty() {
            let mut block = block(fence.info, label, body, closed);
            block.usage = introduces_usage(&lines[..index]);
            block.echo = introduces_original(&lines[..index]);
            block.number = blocks.len() + 1;
            blocks.push(block);
        }
        index = cursor + 1;
    }
    blocks
}

/// An outer fence that never closed, though a line long enough to close it closed a
/// shorter fence opened inside it: ````` ```` `````, the path, a stray ```` ```typescript ````
/// opener, the code, ````` ```` `````. A person reads complete code there; read strictly,
/// the outer block is unclosed and the reply was refused as cut off.
#[derive(Debug, Clone, Copy)]
struct StrayOpener {
    /// The line that closes the outer block.
    close: usize,
    /// The block's lines before that line.
    body_len: usize,
    /// The stray opening line, as an index into the block's lines.
    opener: usize,
}

impl StrayOpener {
    /// Cuts `body` to the outer block without the stray opener, and takes a first line that
    /// is only a file name as the block's label.
    fn apply(self, body: &mut Vec<&str>) -> Option<String> {
        body.truncate(self.body_len);
        body.remove(self.opener);
        let first = body.first()?.trim();
        (body.len() > 1 && !first.contains(char::is_whitespace) && looks_like_path(first)).then(
            || {
                let name = first.to_owned();
                body.remove(0);
                name
            },
        )
    }
}

/// How many bare fences that could close a fence follow each line at the top level, not
/// counting those that close a block opened with an info string; worked out once per kind
/// of fence, from the end of the reply.
///
/// Scanning the rest of the reply at every closing fence of a Markdown block was quadratic
/// in a looping reply of such blocks. From the end, each line's count follows from one
/// later line's: an opening fence takes the first bare fence left open after it, and the
/// count resumes after that one.
#[derive(Default)]
struct BareFenceCounts {
    kinds: Vec<((char, usize, usize), Vec<usize>)>,
}

impl BareFenceCounts {
    /// The count for `lines[start..]` and fences that could close `fence`.
    fn after(&mut self, lines: &[&str], start: usize, fence: &Fence<'_>) -> usize {
        let key = (fence.marker, fence.len, fence.indent);
        let at = if let Some(at) = self.kinds.iter().position(|(kind, _)| *kind == key) {
            at
        } else {
            self.kinds.push((key, bare_fence_counts(lines, fence)));
            self.kinds.len() - 1
        };
        self.kinds[at].1[start]
    }
}

/// For each line, the count [`BareFenceCounts`] gives from that line on.
fn bare_fence_counts(lines: &[&str], fence: &Fence<'_>) -> Vec<usize> {
    let mut count = vec![0; lines.len() + 1];
    // The first bare fence at the top level from each line on: the one an opening fence
    // just before that line would take as its closing fence.
    let mut first: Vec<Option<usize>> = vec![None; lines.len() + 1];
    for at in (0..lines.len()).rev() {
        match Fence::open(lines[at]).filter(|other| other.marker == fence.marker) {
            None => {
                count[at] = count[at + 1];
                first[at] = first[at + 1];
            }
            Some(other) if other.info.is_empty() => {
                let closes = other.len >= fence.len && other.indent <= fence.indent + 3;
                count[at] = count[at + 1] + usize::from(closes);
                first[at] = Some(at);
            }
            Some(_) => {
                if let Some(taken) = first[at + 1] {
                    count[at] = count[taken + 1];
                    first[at] = first[taken + 1];
                }
            }
        }
    }
    count
}

fn block(info: &str, label_before: Option<String>, mut body: Vec<&str>, closed: bool) -> Block {
    let mut path = path_in_info(info).or(label_before);
    let mut label_lines = String::new();
    if let Some(commented) = body.first().and_then(|first| path_in_comment(first))
        && path.as_deref().is_none_or(|p| same_file(p, &commented))
    {
        path.get_or_insert(commented);
        label_lines = format!("{}\n", body.remove(0));
        // `# src/a.py` then a blank line: the blank line separated the label from the code
        // and would otherwise become the file's first line.
        if body.len() > 1 && body[0].trim().is_empty() {
            label_lines.push_str(body.remove(0));
            label_lines.push('\n');
        }
    }
    Block {
        info: info.to_owned(),
        path,
        // Every line between the fences with its newline, as CommonMark reads a block: a
        // blank line before the closing fence is part of the file.
        code: body.iter().flat_map(|line| [*line, "\n"]).collect(),
        closed,
        label_lines,
        usage: false,
        echo: false,
        number: 0,
    }
}

/// The line that introduces the block after `lines`: the last non-blank one, with at
/// most one blank line between it and the fence.
fn introducing_line<'a>(lines: &[&'a str]) -> Option<&'a str> {
    lines
        .iter()
        .rev()
        .take(2)
        .find(|line| !line.trim().is_empty())
        .copied()
}

/// The last non-blank line before a fence (one blank line may separate them) introduces a
/// usage example: "You can use this function like this:", "Example usage:".
fn introduces_usage(lines: &[&str]) -> bool {
    let Some(line) = introducing_line(lines) else {
        return false;
    };
    let line = line.to_lowercase();
    line.trim_end().ends_with(':')
        && [
            "usage",
            "use it",
            "use this",
            "use the",
            "like this",
            "call it",
            "run it",
            "try it",
            "for example",
            "example of using",
        ]
        .iter()
        .any(|cue| line.contains(cue))
}

/// The last non-blank line before a fence (one blank line may separate them) introduces
/// the file as it was: "For reference, the original was:", "Your current code:". A line
/// that also speaks of the change ("the updated version of your current code:") introduces
/// the update.
fn introduces_original(lines: &[&str]) -> bool {
    let Some(line) = introducing_line(lines) else {
        return false;
    };
    let line = format!(" {} ", line.to_lowercase().replace(['*', '_', '`'], ""));
    let cue = |cues: &[&str]| cues.iter().any(|cue| line.contains(cue));
    line.trim_end().ends_with(':')
        && cue(&[
            "original",
            "current code",
            "current version",
            "your current",
            "current file",
            "previous version",
            "previous code",
            "old version",
            "old code",
            " before:",
            "before the change",
            "for reference",
            "as it was",
        ])
        && !cue(&[
            "updated",
            " new ",
            "fixed",
            "modified",
            "corrected",
            "changed",
            "improved",
            "refactored",
            "rewritten",
            "complete",
            "final",
            " after",
            " now ",
            " with ",
            " add",
            "replace",
            " change",
            "instead",
            "should",
            "look like",
        ])
}

/// The file named by the last non-blank line before a fence (one blank line may separate
/// them).
fn label_before(lines: &[&str]) -> Option<String> {
    lines
        .iter()
        .rev()
        .take(2)
        .find(|line| !line.trim().is_empty())
        .and_then(|line| path_in_label_line(line).or_else(|| path_in_comment(line)))
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
            let value = value.trim_matches(['"', '\'']);
            if matches!(key, "path" | "file" | "filename" | "title" | "name")
                && looks_like_path(value)
            {
                return Some(value.to_owned());
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

/// The file a line before a fence names: a line that is only a name (`src/a.py`,
/// `**src/a.py**`, `` `src/a.py` ``, `File: src/a.py`, `### 2. src/a.py`, `src/a.py (new
/// file)`), or a lead-in sentence ending in a colon that quotes exactly one name
/// (``Here is the updated `src/a.py`:``).
fn path_in_label_line(line: &str) -> Option<String> {
    let mut text = line.trim().trim_start_matches(['#', '>']).trim();
    // List markers: `-`, `*`, `1.`, `2)`.
    text = text.trim_start_matches(['-', '+']).trim_start();
    if let Some(rest) = text.strip_prefix("* ") {
        text = rest.trim_start();
    }
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && text[digits..].starts_with(['.', ')']) {
        text = text[digits + 1..].trim_start();
    }
    let decoration = |c: char| matches!(c, '*' | '`' | '_' | '"' | '\'');
    let mut name = text.trim_matches(decoration).trim();
    for prefix in [
        "File",
        "Filename",
        "File name",
        "Path",
        "Updated",
        "New file",
    ] {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with(&prefix.to_ascii_lowercase())
            && name[prefix.len()..].trim_start().starts_with(':')
        {
            name = name[prefix.len()..].trim_start()[1..].trim_matches(decoration);
            name = name.trim();
        }
    }
    if let Some((before, after)) = name.split_once(" (")
        && after.ends_with(')')
    {
        name = before;
    }
    let name = name
        .trim_end_matches(':')
        .trim_matches(decoration)
        .trim_end_matches(':');
    if !name.contains(char::is_whitespace) && looks_like_path(name) {
        return Some(name.to_owned());
    }
    // A sentence: only names set off in backticks or bold count.
    if !text.trim_end_matches(decoration).ends_with(':') {
        return None;
    }
    let text = text.replace("**", "`");
    let quoted: Vec<&str> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|quoted| quoted.trim().trim_end_matches(':'))
        .filter(|quoted| !quoted.contains(char::is_whitespace) && looks_like_path(quoted))
        .collect();
    match quoted.as_slice() {
        [only] => Some((*only).to_owned()),
        _ => None,
    }
}

/// `// src/a.py`, `# src/a.py`, `-- a.sql`, `<!-- a.html -->`, `/* a.c */`,
/// `# file: src/a.py`.
fn path_in_comment(line: &str) -> Option<String> {
    let trimmed = line.trim();
    if trimmed.starts_with("#!") {
        return None;
    }
    let text = ["//", "#", "--", "<!--", "/*", ";"]
        .into_iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))?;
    let mut text = text.trim_end_matches("-->").trim_end_matches("*/").trim();
    for prefix in ["File:", "file:", "Filename:", "filename:", "Path:", "path:"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim();
        }
    }
    (!text.contains(char::is_whitespace) && looks_like_path(text) && text.contains('.'))
        .then(|| text.to_owned())
}

/// A relative file path with an extension or a directory: `a.py`, `src/x`, `.gitignore`;
/// not `python`, `3.10` or `e.g.`.
fn looks_like_path(text: &str) -> bool {
    if text.is_empty() || text.len() > 255 || text.starts_with('-') || text.ends_with('.') {
        return false;
    }
    let valid_chars = text
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@'));
    let file_name = text.rsplit('/').next().unwrap_or_default();
    let has_extension = file_name.rsplit_once('.').is_some_and(|(stem, ext)| {
        ext.len() <= 10
            && ext.chars().any(char::is_alphabetic)
            && (!stem.is_empty() || file_name.starts_with('.'))
    });
    // `..` and a leading `/` are allowed: such a label names a file the task did not ask
    // for and is reported, and labels never become write paths.
    valid_chars
        && (has_extension || (text.contains('/') && !text.ends_with('/')))
        && !text.contains("//")
        && !text.contains("...")
}

/// A reply without a fence: its whole text when it is plainly only code, for a single file.
fn bare_code(reply: &str, outputs: &[String]) -> Result<Extracted, ExtractError> {
    let code = reply.trim_start_matches(['\n', ' ']).trim_end();
    if code.is_empty() {
        return Err(ExtractError::NoCode(
            "the reply is empty (after removing any <think> section)".to_owned(),
        ));
    }
    if is_unified_diff(code) && !outputs.iter().any(|output| is_diff_file(output)) {
        return Err(ExtractError::NoCode(
            "the reply is a diff, not the file: reply with the complete content of the file in a fenced block"
                .to_owned(),
        ));
    }
    if outputs.len() == 1 && looks_like_bare_code(code) {
        return Ok(Extracted {
            files: vec![(outputs[0].clone(), with_final_newline(code))],
            notes: vec![
                "the reply had no code fence; its whole text was taken as the code".to_owned(),
            ],
            label_lines: vec![String::new()],
        });
    }
    Err(ExtractError::NoCode(
        "the reply has no fenced code block".to_owned(),
    ))
}

/// Plainly only code: it starts with a line of code, most lines look like code, and no line
/// outside comments and multi-line strings reads as a sentence.
fn looks_like_bare_code(text: &str) -> bool {
    let mut in_string = false;
    let mut code_like = 0;
    let mut total = 0;
    let mut first = true;
    for line in text.lines() {
        let trimmed = line.trim();
        let quotes = trimmed.matches("\"\"\"").count() + trimmed.matches("'''").count();
        let inside = in_string;
        in_string ^= quotes % 2 == 1;
        if trimmed.is_empty() || inside {
            continue;
        }
        let code = quotes > 0 || looks_like_code_line(trimmed);
        let comment = trimmed.starts_with(['#', '/', '*', ';', '<']) || trimmed.starts_with("--");
        if first && !code && !comment {
            return false;
        }
        first = false;
        if line.len() == trimmed.len() && !comment && reads_as_sentence(trimmed) {
            return false;
        }
        total += 1;
        code_like += usize::from(code || comment);
    }
    total > 0 && code_like * 2 >= total
}

fn looks_like_code_line(line: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "def ",
        "class ",
        "import ",
        "from ",
        "fn ",
        "pub ",
        "use ",
        "function ",
        "const ",
        "let ",
        "var ",
        "package ",
        "return",
        "if ",
        "for ",
        "while ",
        "export ",
        "async ",
        "struct ",
        "enum ",
        "impl ",
        "mod ",
        "type ",
        "interface ",
        "public ",
        "private ",
        "static ",
        "func ",
        "end",
        "echo ",
        "set ",
    ];
    line.contains(['(', ')', '{', '}', '=', ';', '[', ']', '<', '>'])
        || line.ends_with(':')
        || KEYWORDS.iter().any(|keyword| line.starts_with(keyword))
}

/// Four or more words after any list marker, a capital first, and no code punctuation,
/// except the brackets of a Markdown link in a long sentence.
fn reads_as_sentence(line: &str) -> bool {
    let text = line.trim_start_matches(['-', '*', '+']).trim_start();
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let text = text[digits..].trim_start_matches(['.', ')']).trim_start();
    let words = text.split_whitespace().count();
    let brackets = text.contains(['(', '[']);
    words >= 4
        && text.chars().next().is_some_and(char::is_uppercase)
        && !text.contains(['{', ';', '=', '<'])
        && (!brackets || (words >= 8 && text.ends_with('.')))
}

/// How `code` ends open, where that is cheap to see: inside a Python triple-quoted
/// string, or inside a string or with a `{` (and in JSON a `[`) never closed in the brace
/// languages. A fence line inside a string ends the block there, and the cut file would
/// otherwise be written as a success.
///
/// Only an opener left at the end counts: a stray closer (a regex, a macro) is not what a
/// cut looks like, and refusing working code costs an attempt.
fn ends_open(code: &str, language: &str) -> Option<String> {
    let chars: Vec<char> = code.chars().collect();
    match language {
        "python" => python_ends_in_string(&chars).then(|| "ends inside a string".to_owned()),
        "json" | "javascript" | "typescript" | "rust" | "go" | "c" | "cpp" | "java" | "csharp" => {
            match braces_left_open(&chars, language) {
                Unclosed::String => Some("ends inside a string".to_owned()),
                Unclosed::Braces(0) => None,
                Unclosed::Braces(n) => Some(format!(
                    "ends with {n} bracket{} never closed",
                    if n == 1 { "" } else { "s" }
                )),
            }
        }
        _ => None,
    }
}

/// Whether Python source ends inside a triple-quoted string (comments and one-line strings
/// are skipped so their quotes do not count).
fn python_ends_in_string(chars: &[char]) -> bool {
    let mut at = 0;
    while at < chars.len() {
        match chars[at] {
            '#' => {
                while at < chars.len() && chars[at] != '\n' {
                    at += 1;
                }
            }
            quote @ ('"' | '\'') => {
                let triple = chars.get(at + 1) == Some(&quote) && chars.get(at + 2) == Some(&quote);
                at += if triple { 3 } else { 1 };
                loop {
                    match chars.get(at) {
                        None => return triple,
                        Some('\\') => at += 2,
                        Some('\n') if !triple => break,
                        Some(&c) if c == quote => {
                            if !triple {
                                break;
                            }
                            if chars.get(at + 1) == Some(&quote)
                                && chars.get(at + 2) == Some(&quote)
                            {
                                at += 2;
                                break;
                            }
                            at += 1;
                        }
                        Some(_) => at += 1,
                    }
                }
            }
            _ => {}
        }
        at += 1;
    }
    false
}

enum Unclosed {
    String,
    Braces(usize),
}

/// The brackets left open at the end of code in a brace language, skipping comments,
/// strings, character literals and the text of JavaScript template literals.
fn braces_left_open(chars: &[char], language: &str) -> Unclosed {
    let json = language == "json";
    let script = matches!(language, "javascript" | "typescript");
    let mut depth: usize = 0;
    // The depth at which each `${` of an open template literal was entered.
    let mut templates: Vec<usize> = Vec::new();
    let mut in_template = false;
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        if in_template {
            match c {
                '\\' => at += 1,
                '`' => in_template = false,
                '$' if next == Some('{') => {
                    templates.push(depth);
                    in_template = false;
                    at += 1;
                }
                _ => {}
            }
            at += 1;
            continue;
        }
        match c {
            '/' if !json && next == Some('/') => {
                while at < chars.len() && chars[at] != '\n' {
                    at += 1;
                }
            }
            '/' if !json && next == Some('*') => {
                at += 2;
                while at < chars.len() && !(chars[at] == '*' && chars.get(at + 1) == Some(&'/')) {
                    at += 1;
                }
                at += 1;
            }
            '`' if script => in_template = true,
            '"' | '`' | '\'' if c == '"' || script || language == "go" && c == '`' => {
                let raw = c == '`';
                at += 1;
                while at < chars.len() && chars[at] != c {
                    // Rust strings may span lines; the others end at the line's end.
                    if !raw && chars[at] == '\n' && language != "rust" {
                        break;
                    }
                    if !raw && chars[at] == '\\' {
                        at += 1;
                    }
                    at += 1;
                }
                if at >= chars.len() {
                    return Unclosed::String;
                }
            }
            // A character literal (`'{'`, `'\''`); in Rust a `'` may also start a lifetime.
            '\'' => {
                if next == Some('\\') {
                    at += 2;
                    while at < chars.len() && chars[at] != '\'' && chars[at] != '\n' {
                        at += 1;
                    }
                } else if chars.get(at + 2) == Some(&'\'') {
                    at += 2;
                }
            }
            '{' => depth += 1,
            '[' if json => depth += 1,
            '}' if templates.last() == Some(&depth) => {
                templates.pop();
                in_template = true;
            }
            '}' => depth = depth.saturating_sub(1),
            ']' if json => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    if in_template {
        Unclosed::String
    } else {
        Unclosed::Braces(depth)
    }
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
    #[test]
    fn a_label_names_an_output_only_by_dropping_leading_directories() {
        let outputs = ["src/a.py".to_owned(), "b.py".to_owned()];
        assert_eq!(resolve_label("src/a.py", &outputs), Some("src/a.py"));
        assert_eq!(resolve_label("./a.py", &outputs), Some("src/a.py"));
        assert_eq!(resolve_label("vendor/b.py", &outputs), None);
        assert_eq!(resolve_label("../b.py", &outputs), None);
        assert_eq!(resolve_label("/etc/b.py", &outputs), None);
        assert_eq!(resolve_label("lib/src/a.py", &outputs), None);
    }

    use super::*;

    fn one(reply: &str, output: &str) -> Result<Extracted, ExtractError> {
        extract(
            reply,
            &[output.to_owned()],
            crate::language::for_path(output),
        )
    }

    fn code(reply: &str, output: &str) -> String {
        match one(reply, output) {
            Ok(out) => out.files[0].1.clone(),
            Err(error) => panic!("{error}"),
        }
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
        assert!(out.notes.is_empty());
    }

    #[test]
    fn strips_leading_think_sections_only() {
        let reply = "<think>maybe ```js\nwrong\n```</think>\n```js\nright()\n```";
        assert_eq!(code(reply, "a.js"), "right()\n");
        assert!(matches!(
            one("<think>never finished", "a.js"),
            Err(ExtractError::NoCode(_))
        ));
        // The template sent the opening tag; the reply starts inside the thinking.
        assert_eq!(
            code("so ```x``` then\n</think>\n\n```js\nok()\n```\n", "a.js"),
            "ok()\n"
        );
        assert_eq!(
            code(
                "<thinking>a</thinking>\n<think>\nb\n</think>\n```js\nok()\n```",
                "a.js"
            ),
            "ok()\n"
        );
        // A parser for think tags is code, not thinking.
        let parser = "```python\ndef strip(t):\n    return t.split('<think>')[0]\n```\n";
        assert!(code(parser, "s.py").contains("<think>"));
    }

    #[test]
    fn outer_fence_holds_inner_fences() {
        let reply = "````markdown\n# Title\n\n```sh\nls\n```\n````\n";
        assert_eq!(code(reply, "README.md"), "# Title\n\n```sh\nls\n```\n");
        // Same length: an inner fence with an info string opens a nested block.
        let reply = "```markdown\n# Title\n\n```sh\nls\n```\n\nEnd.\n```\n";
        assert_eq!(
            code(reply, "README.md"),
            "# Title\n\n```sh\nls\n```\n\nEnd.\n"
        );
        // Same length, bare inner fences in a Markdown block: one reading pairs them all.
        let reply = "```markdown\n# T\n```\nls\n```\n\nEnd.\n```\n\nDone.\n";
        assert_eq!(code(reply, "README.md"), "# T\n```\nls\n```\n\nEnd.\n");
        let reply = "~~~\nA\n```\nB\n```\n~~~\n";
        assert_eq!(code(reply, "a.md"), "A\n```\nB\n```\n");
    }

    #[test]
    fn fences_indented_in_a_list_are_found_and_dedented() {
        let reply =
            "1. Create **src/a.py**:\n\n    ```python\n    def a():\n        return 1\n    ```\n";
        assert_eq!(code(reply, "src/a.py"), "def a():\n    return 1\n");
        // A fence inside an indented docstring does not close the block.
        let reply = "```python\ndef f():\n    \"\"\"\n    ```\n    f()\n    ```\n    \"\"\"\n```\n";
        assert_eq!(
            code(reply, "f.py"),
            "def f():\n    \"\"\"\n    ```\n    f()\n    ```\n    \"\"\"\n"
        );
    }

    #[test]
    fn labels_from_info_line_and_comment() {
        let reply = "```python path=src/a.py\nA = 1\n```\n**src/b.py**\n```python\nB = 2\n```\n```python\n# src/c.py\nC = 3\n```\nHere is the updated `src/d.py`:\n```\nD = 4\n```\n";
        let outputs = ["src/a.py", "src/b.py", "src/c.py", "src/d.py"].map(str::to_owned);
        let out = extract(reply, &outputs, "python").unwrap();
        let codes: Vec<&str> = out.files.iter().map(|(_, code)| code.as_str()).collect();
        assert_eq!(codes, ["A = 1\n", "B = 2\n", "C = 3\n", "D = 4\n"]);
        assert!(out.notes.is_empty(), "{:?}", out.notes);
    }

    #[test]
    fn label_lines_in_many_styles() {
        for line in [
            "src/a.py",
            "**src/a.py**",
            "`src/a.py`",
            "File: src/a.py",
            "**File:** `src/a.py`",
            "### src/a.py",
            "### 1. `src/a.py`",
            "- `src/a.py`:",
            "src/a.py (new file)",
            "Create `src/a.py` with this content:",
            "1. Create **src/a.py**:",
            "### `src/a.py` (updated)",
            "**`src/a.py`**",
            "Filename: `src/a.py`",
            "**File: src/a.py**",
        ] {
            assert_eq!(
                path_in_label_line(line).as_deref(),
                Some("src/a.py"),
                "{line}"
            );
        }
        for line in [
            "Here is the code:",
            "Use Python 3.10:",
            "Update `a.py` and `b.py`:",
            "I used `a.py` for this.",
        ] {
            assert_eq!(path_in_label_line(line), None, "{line}");
        }
    }

    #[test]
    fn a_path_comment_just_before_the_fence_labels_it() {
        let reply = "// src/b.js\n```js\nexport const b = 1;\n```\n```js path=src/a.js\nexport const a = 1;\n```\n";
        let outputs = ["src/a.js", "src/b.js"].map(str::to_owned);
        let out = extract(reply, &outputs, "javascript").unwrap();
        assert_eq!(out.files[1].1, "export const b = 1;\n");
    }

    #[test]
    fn missing_and_unrequested_files() {
        let reply = "```python path=src/a.py\nA = 1\n```\n```python path=evil.py\nimport os\n```\n";
        let outputs = ["src/a.py", "src/b.py"].map(str::to_owned);
        assert_eq!(
            extract(reply, &outputs, "python"),
            Err(ExtractError::MissingFiles(vec!["src/b.py".to_owned()]))
        );
        let outputs = ["src/a.py".to_owned()];
        let out = extract(reply, &outputs, "python").unwrap();
        assert_eq!(out.files[0].1, "A = 1\n");
        assert_eq!(
            out.notes,
            ["ignored a block for `evil.py`, a file the task did not ask for"]
        );
    }

    #[test]
    fn an_unlabelled_block_fills_the_one_file_of_its_language() {
        let reply =
            "```python path=src/a.py\nA = 1\n```\n```javascript\nexport const b = 2;\n```\n";
        let outputs = ["src/a.py", "web/b.js"].map(str::to_owned);
        let out = extract(reply, &outputs, "python").unwrap();
        assert_eq!(out.files[1].1, "export const b = 2;\n");
        assert_eq!(out.notes.len(), 1);
        // Two Python outputs and one unlabelled Python block: no guess.
        let reply = "```python path=src/a.py\nA = 1\n```\n```python\nB = 2\n```\n";
        let outputs = ["src/a.py", "src/b.py", "src/c.py"].map(str::to_owned);
        assert_eq!(
            extract(reply, &outputs, "python"),
            Err(ExtractError::MissingFiles(
                ["src/b.py", "src/c.py"].map(str::to_owned).to_vec()
            ))
        );
    }

    #[test]
    fn unclosed_fence_is_truncated_but_a_stray_fence_is_not() {
        assert!(matches!(
            one("```rust\nfn main() {\n", "a.rs"),
            Err(ExtractError::Truncated(_))
        ));
        assert_eq!(
            code("```rust\nfn main() {}\n```\n```\n", "a.rs"),
            "fn main() {}\n"
        );
    }

    #[test]
    fn a_diff_is_not_a_file() {
        let reply = "```diff\n--- a/f.py\n+++ b/f.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n```\n";
        assert!(matches!(one(reply, "f.py"), Err(ExtractError::NoCode(_))));
        assert!(one(reply, "fix.patch").is_ok());
    }

    #[test]
    fn bare_code_is_taken_but_prose_is_not() {
        let out = one("def f(x):\n    return x * 2\n", "f.py").unwrap();
        assert_eq!(out.files[0].1, "def f(x):\n    return x * 2\n");
        assert_eq!(out.notes.len(), 1);
        for prose in [
            "I cannot do that without more information about the project.",
            "Here is the function:\n\ndef f(x):\n    return x * 2\n",
            "The function already exists.\nNo changes are needed here at all.",
            "# Summary\n\n- Added the parser and wired it into the command line.\n",
            "# Notes\n\nThe parser follows [the spec](https://example.com) closely, as asked.\n",
        ] {
            assert!(
                matches!(one(prose, "f.py"), Err(ExtractError::NoCode(_))),
                "{prose}"
            );
        }
        // A docstring's sentences are code.
        let doc = "def f(x):\n    \"\"\"Double x.\n\nThis is used by the parser everywhere.\n\"\"\"\n    return x * 2\n";
        assert!(one(doc, "f.py").is_ok());
    }

    #[test]
    fn prefers_the_block_in_the_file_language() {
        let reply = "```python\ndef long_function():\n    pass\n```\nRun it:\n```bash\npython -c 'import f; f.long_function()' && echo ok && echo more\n```\n";
        assert_eq!(code(reply, "f.py"), "def long_function():\n    pass\n");
        let reply = "```py\nx = 1\n```\n```\nsome much longer output text of the program\n```\n";
        assert_eq!(code(reply, "f.py"), "x = 1\n");
    }

    #[test]
    fn a_block_is_every_line_between_its_fences() {
        assert_eq!(code("```c\nint x;\n\n```\n", "a.c"), "int x;\n\n");
        // An empty block is a reply that forgot its code, never an empty file.
        assert!(matches!(
            one("```c\n```\n", "a.c"),
            Err(ExtractError::NoCode(_))
        ));
    }

    /// A looping model repeats one small block until the byte cap: thousands of blocks.
    /// Looking ahead to the end of the reply from every fence made this quadratic (4 MB
    /// took minutes); this input is large enough that such a scan would outlast the suite.
    #[test]
    fn a_looping_reply_of_many_small_blocks_is_read_in_one_pass() {
        let reply = "Here:\n```python\nx = 1\n```\n".repeat(160_000);
        assert!(reply.len() > 4_000_000);
        assert_eq!(blocks(&reply).len(), 160_000);
        assert_eq!(code(&reply, "f.py"), "x = 1\n");
    }

    /// One large block defining many names, then a usage example: telling which block
    /// defines what the other calls must not compare every name with every word.
    #[test]
    fn a_large_block_of_many_definitions_is_weighed_in_one_pass() {
        use std::fmt::Write as _;
        let mut module = String::new();
        for i in 0..160_000 {
            let _ = write!(module, "def f{i}(x):\n    return g{i}(x) + {i}\n");
        }
        let reply = format!("```python\n{module}```\n\nExample usage:\n```python\nf1(2)\n```\n");
        assert!(reply.len() > 4_000_000);
        assert_eq!(code(&reply, "m.py"), module);
    }

    /// The same reply of Markdown blocks, which look ahead at each closing fence.
    #[test]
    fn a_looping_reply_of_markdown_blocks_is_read_in_one_pass() {
        let reply = "```markdown\n# T\n```\n".repeat(220_000);
        assert!(reply.len() > 4_000_000);
        assert_eq!(blocks(&reply).len(), 220_000);
    }

    /// How many bare fences that could close `fence` follow at the top level, not counting
    /// those that close a block opened with an info string.
    fn bare_fences_after(lines: &[&str], fence: &Fence<'_>) -> usize {
        let mut open = 0usize;
        let mut count = 0;
        for line in lines {
            let Some(other) = Fence::open(line).filter(|other| other.marker == fence.marker) else {
                continue;
            };
            if !other.info.is_empty() {
                open += 1;
            } else if open > 0 {
                open -= 1;
            } else if other.len >= fence.len && other.indent <= fence.indent + 3 {
                count += 1;
            }
        }
        count
    }

    #[test]
    fn bare_fence_counts_agree_with_a_scan() {
        let reply = "```markdown\n```\n```sh\nls\n```\n````\n```\n  ```\n```py\n```js\n```\n```\n```\n~~~\n```\n";
        let lines: Vec<&str> = reply.split('\n').collect();
        for fence in lines.iter().filter_map(|line| Fence::open(line)) {
            let counts = bare_fence_counts(&lines, &fence);
            for start in 0..=lines.len() {
                assert_eq!(
                    counts[start],
                    bare_fences_after(&lines[start..], &fence),
                    "{fence:?} from line {start}"
                );
            }
        }
    }

    #[test]
    fn a_block_in_another_known_language_is_refused() {
        let reply = "```bash\nnpm install express\n```\n";
        assert!(matches!(one(reply, "app.js"), Err(ExtractError::NoCode(_))));
        // Related tags, unknown tags and a spec's own name for the language pass.
        assert!(one("```jsx\nexport const a = 1;\n```\n", "app.js").is_ok());
        assert!(one("```ini\n[a]\nb = 1\n```\n", "setup.toml").is_ok());
        let out = extract("```python\nx = 1\n```\n", &["a.py".to_owned()], "py");
        assert!(out.is_ok());
    }

    #[test]
    fn a_block_holding_only_an_outputs_name_is_a_label() {
        let reply = "```text\nmywc.py\n```\n```python\nprint(1)\n```\n";
        assert_eq!(code(reply, "mywc.py"), "print(1)\n");
        assert!(matches!(
            one("```text\nmywc.py\n```\n", "mywc.py"),
            Err(ExtractError::NoCode(_))
        ));
        // Another file's name is content.
        assert_eq!(code("```\n.env\n```\n", ".gitignore"), ".env\n");
    }

    #[test]
    fn code_cut_inside_a_string_or_a_brace_is_seen() {
        use super::ends_open;
        for (code, language) in [
            ("HELP = \"\"\"\nUsage:\n", "python"),
            ("x = '''a\n", "python"),
            ("function f() {\n  return 1;\n", "javascript"),
            ("const s = `\nRun it:\n", "typescript"),
            ("{\"a\": [1, 2\n", "json"),
            ("fn main() {\n    let s = \"{\";\n", "rust"),
            ("var s = `\nraw\n", "go"),
            ("int main(void) {\n", "c"),
        ] {
            assert!(ends_open(code, language).is_some(), "{language}: {code:?}");
        }
        for (code, language) in [
            (
                "s = \"\"\"a\nb\"\"\"\nt = '\"\"\"'  # \"\"\" in a comment\n",
                "python",
            ),
            ("x = \"it's\"\ny = 'say \"\"\"'\n", "python"),
            (
                "const a = `${b ? `${c}` : '{'}`;\n// }\nfunction f() { return \"}\"; }\n",
                "javascript",
            ),
            (
                "fn f<'a>(s: &'a str) -> char {\n    let c = '{';\n    let d = '\\'';\n    c\n}\n",
                "rust",
            ),
            ("/* { */\nstruct A { int x; };\n", "c"),
            ("fn f() -> &'static str {\n    \"a\n{\nb\"\n}\n", "rust"),
            ("var s = `{`\nfunc f() { r := '{'; _ = r }\n", "go"),
            ("{\"a\": \"[{\", \"b\": [1]}\n", "json"),
            ("const re = /\\}/;\n", "javascript"),
            ("<p>{x}</p> {\n", "jsx"),
        ] {
            assert_eq!(ends_open(code, language), None, "{language}: {code:?}");
        }
    }

    #[test]
    fn only_a_sentence_about_the_file_as_it_was_introduces_an_echo() {
        use super::introduces_original;
        for line in [
            "For reference, the original was:",
            "Your current code:",
            "**Before:**",
            "The previous version, for comparison:",
        ] {
            assert!(introduces_original(&[line, ""]), "{line}");
        }
        for line in [
            "Here is the updated version of your original code:",
            "Add this to your current code:",
            "Replace the old code with:",
            "Your current file should look like this:",
            "Here is the code:",
        ] {
            assert!(!introduces_original(&[line, ""]), "{line}");
        }
    }

    /// Each block is compared with the file as it was, which is read once, not per block.
    #[test]
    fn a_looping_reply_against_a_large_file_is_read_in_one_pass() {
        let before = "x = 1\r\n".repeat(300_000);
        let reply = "```python\nx = 2\n```\n".repeat(20_000);
        let outputs = ["m.py".to_owned()];
        let extracted = super::extract_against(&reply, &outputs, "python", |_| Some(&before))
            .expect("extracts");
        assert_eq!(extracted.files[0].1, "x = 2\n");
        assert_eq!(
            extracted.notes,
            [
                "20000 blocks could be `m.py`; used block 20000, ignored block 1, block 2, block 3, \
              block 4, block 5, block 6, block 7, block 8, and 19991 more"
            ]
        );
    }

    #[test]
    fn crlf_replies_give_lf_files() {
        let reply = "Here:\r\n```python\r\nx = 1\r\ny = 2\r\n```\r\n";
        assert_eq!(code(reply, "f.py"), "x = 1\ny = 2\n");
    }
}
