//! The checks on a file's new content before it is written: code that stands for omitted
//! code (elision), and a replacement much smaller than the file it replaces (shrinking).
//!
//! Each check answers with the reason for a refusal, which the pipeline turns into a failed
//! attempt (`guard_refused`) and the repair prompt shows the model. A false refusal costs a
//! whole model attempt, a missed one writes a file with holes: the elision check looks only
//! at lines whose whole job is to stand for code. Where the file existed, a structural
//! check backs the word lists: a definition that vanished with a comment in its place is
//! elision however the comment is worded. What remains: in a new file, or in a language
//! without definition patterns here, a placeholder worded in a way no list below
//! anticipates passes, and the test command is what catches it.

use std::path::Path;

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
    let raw: Vec<&str> = code.lines().collect();
    let lines: Vec<&str> = raw.iter().map(|line| line.trim()).collect();
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
            (is_only_ellipsis(text) && marker != "*" && !after_comment)
                || is_placeholder(text)
                || (is_weak_placeholder(text) && !after_comment && stands_alone(&raw, index))
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
        let idle = matches!(code.trim(), "pass" | "..." | ";");
        return !prose
            && !code.contains(['"', '\'', '`'])
            && (is_placeholder(text)
                || (idle && is_weak_placeholder(text))
                || says_rest_of_the_code(text));
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
    functions tests imports fields helpers logic props properties routes handlers snip \
    snipped identical";

/// Words that say the code is not here (one of them must appear without an ellipsis).
const PREDICATES: &str = "\
    unchanged before omitted brevity untouched unmodified elided remains remain stays \
    stay identical";

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
    test helper import was were like similar previously untouched they";

/// A comment's text (or a line's) says it stands for code left out.
fn is_placeholder(text: &str) -> bool {
    // `sub()` and `mul()` name code, the way `functions` does: "sub() and mul() remain the
    // same" is a placeholder, not an ordinary comment with unknown words.
    let lower: String = text
        .to_lowercase()
        .split_inclusive(char::is_whitespace)
        .map(|token| {
            let bare = token.trim_end().trim_end_matches(',');
            if bare.len() > 2 && bare.ends_with("()") {
                "code "
            } else {
                token
            }
        })
        .collect();
    if lists_names_as_unchanged(&lower) {
        return true;
    }
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
    if lead.starts_with("...") || lead.starts_with(['…', '⋯']) {
        return has(CUES) && unknown <= 2;
    }
    // `[previous code]`, `<existing functions>`: a bracketed name for code is a template's
    // slot left unfilled.
    let bracketed = [('[', ']'), ('<', '>'), ('{', '}')]
        .iter()
        .any(|(open, close)| lower.trim().starts_with(*open) && lower.trim().ends_with(*close));
    if bracketed && (1..=4).contains(&words.len()) && has(CUES) && has(SUBJECTS) && unknown == 0 {
        return true;
    }
    // "(sub and mul omitted for brevity)": the names left out are the comment's own words.
    if lower.contains("for brevity")
        && words.iter().any(|word| {
            matches!(
                *word,
                "omitted" | "elided" | "skipped" | "removed" | "shown"
            )
        })
        && words.len() <= 10
        && unknown <= 3
    {
        return true;
    }
    // Phrases that say "unchanged" in two words: "keep the rest as is", "no changes to the
    // functions above".
    let phrase = [" as is", "no changes", "no change "]
        .iter()
        .any(|phrase| format!(" {lower} ").contains(phrase));
    // "here" alone is weak: "// existing code here" stands for code, "// the logic here"
    // points at it.
    let here = words.contains(&"here")
        && ["code", "implementation", "existing"]
            .iter()
            .any(|subject| words.contains(subject));
    (2..=8).contains(&words.len())
        && (has(PREDICATES) || here || phrase)
        && has(SUBJECTS)
        && unknown == 0
}

/// Wordings that stand for code only when nothing follows them (`# etc.`, `# [unchanged]`,
/// `# same as above`, `# --- unchanged ---`, `# ⋯`): the same words head real code
/// (`# Same as above, but for floats:`), so the caller asks for a comment standing alone.
fn is_weak_placeholder(text: &str) -> bool {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    let has = |word: &str| words.contains(&word);
    let phrase = |phrase: &str| format!(" {} ", words.join(" ")).contains(&format!(" {phrase} "));
    matches!(
        words.as_slice(),
        [] | ["etc" | "unchanged" | "snip"] | ["and", "so", "on"]
    ) && (!words.is_empty() || lower.contains('⋯'))
        || (lower.contains('⋯') && words.len() <= 3)
        || ((has("snip") || has("snipped")) && words.len() <= 4)
        || ((phrase("same as above") || phrase("same as before")) && words.len() <= 5)
        || (phrase("not shown") && words.len() <= 5)
        || (has("identical") && words.len() <= 6)
        || says_rest_of_the_code(text)
}

/// `rest of the code`, said alone: a line's trailing comment may say it after real code.
fn says_rest_of_the_code(text: &str) -> bool {
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect();
    matches!(
        words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["rest", "of", "the", "code"]
            | ["rest", "of", "code"]
            | ["the", "rest", "of", "the", "code"]
    )
}

/// `unchanged: sub, mul`, `omitted: parse()`: a word saying the code is not here, a colon,
/// and nothing but a list of names.
fn lists_names_as_unchanged(lower: &str) -> bool {
    let Some((head, list)) = lower.trim().split_once(':') else {
        return false;
    };
    let head = head.trim_start_matches(['(', '[']).trim();
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    matches!(
        head,
        "unchanged" | "omitted" | "not shown" | "same as before" | "elided"
    ) && names.len() <= 8
        && names.iter().all(|name| {
            let name = name
                .trim_end_matches([')', ']'])
                .trim_end_matches(" code")
                .trim();
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | ':'))
        })
}

/// Returns why `code` (the new content of `path`, which held `before`) stands for a
/// definition it left out, if it does: a definition `before` had (a function, class or
/// method) is gone, and a comment stands for it — one that names it, or one standing alone
/// at its indentation between the neighbours it had.
///
/// Placeholder wordings are endless (`# mul stays`, `# <mul from before>`), while a
/// definition that vanished with a comment in its place is one shape. A definition removed
/// with nothing standing for it is a real deletion and passes (the shrink check covers big
/// ones), as does a comment that says it was removed, renamed or moved, and one the file
/// already had.
pub fn find_removed_definition(path: &str, before: &str, code: &str) -> Option<String> {
    use std::collections::HashMap;
    let language = crate::language::for_path(path);
    let old = definitions(before, language);
    if old.is_empty() {
        return None;
    }
    let new: HashMap<&str, usize> = definitions(code, language)
        .into_iter()
        .rev()
        .map(|definition| (definition.name, definition.line))
        .collect();
    let lines: Vec<&str> = code.lines().collect();
    let old_lines: std::collections::HashSet<&str> = before.lines().map(str::trim).collect();
    let stand_ins: Vec<(usize, usize, &str)> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !old_lines.contains(line.trim()))
        .filter_map(|(at, line)| {
            let text = comment_standing_for_code(line.trim())?;
            (!speaks_of_removal(text)).then(|| (at, indent_of(line), line.trim()))
        })
        .collect();
    // Linear in the file: a rewrite may drop thousands of definitions and add thousands of
    // comments. Stand-ins by the words they hold, and the lines of those standing alone by
    // indentation (in order, for a search by range).
    let mut by_word: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut alone_at: HashMap<usize, Vec<usize>> = HashMap::new();
    for (index, &(at, indent, line)) in stand_ins.iter().enumerate() {
        for word in line.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            let list = by_word.entry(word).or_default();
            if list.last() != Some(&index) {
                list.push(index);
            }
        }
        if stands_alone(&lines, at) {
            alone_at.entry(indent).or_default().push(index);
        }
    }
    // For each old definition, the new line of the nearest one before it that is still
    // there, and of the nearest one after it.
    let mut previous = Vec::with_capacity(old.len());
    let mut last = None;
    for definition in &old {
        previous.push(last);
        if let Some(&line) = new.get(definition.name) {
            last = Some(line);
        }
    }
    let mut next = vec![None; old.len()];
    let mut first = None;
    for (index, definition) in old.iter().enumerate().rev() {
        next[index] = first;
        if let Some(&line) = new.get(definition.name) {
            first = Some(line);
        }
    }
    for (index, gone) in old.iter().enumerate() {
        if new.contains_key(gone.name) {
            continue;
        }
        // A name is also a word (`run`, `get`): a comment heading ordinary code may use it.
        // One standing alone, calling it `mul()` or `` `mul` ``, or heading a definition
        // stands for it.
        let named = by_word
            .get(gone.name)
            .into_iter()
            .flatten()
            .map(|&index| stand_ins[index])
            .find(|&(at, _, line)| {
                names(line, gone.name)
                    && (stands_alone(&lines, at)
                        || line.contains(&format!("{}(", gone.name))
                        || line.contains(&format!("`{}`", gone.name))
                        || heads_definition(&lines, at, language))
            });
        // Standing alone at its indentation, between the neighbours it had.
        let from = previous[index].map_or(0, |line| line + 1);
        let to = next[index].unwrap_or(lines.len());
        let in_place = || {
            let candidates = alone_at.get(&gone.indent)?;
            let first = candidates.partition_point(|&index| stand_ins[index].0 < from);
            let &index = candidates.get(first)?;
            (stand_ins[index].0 < to).then_some(stand_ins[index])
        };
        if let Some((_, _, line)) = named.or_else(in_place) {
            return Some(format!(
                "`{}` was in the file and is gone; a comment stands in its place: `{line}`",
                gone.name
            ));
        }
    }
    None
}

/// A comment saying the code it names was removed on purpose (`# mul was removed; use
/// times`): a real deletion, not a stand-in.
fn speaks_of_removal(text: &str) -> bool {
    const REMOVAL: &[&str] = &[
        "removed",
        "deleted",
        "dropped",
        "replaced",
        "renamed",
        "instead",
        "deprecated",
        "no longer",
        "moved",
        "merged",
        "inlined",
        "formerly",
        "obsolete",
        "unused",
    ];
    let lower = text.to_lowercase();
    REMOVAL.iter().any(|word| lower.contains(word))
}

/// A definition found by [`definitions`]: its name, line and indentation.
struct Definition<'a> {
    name: &'a str,
    line: usize,
    indent: usize,
}

/// The functions, classes and methods `code` defines, found with each language's usual
/// keywords at the start of a line; none for a language without patterns here.
fn definitions<'a>(code: &'a str, language: &str) -> Vec<Definition<'a>> {
    let modifiers: &[&str] = match language {
        "python" => &["async"],
        "javascript" | "typescript" | "jsx" | "tsx" => &[
            "export",
            "default",
            "async",
            "static",
            "declare",
            "abstract",
            "public",
            "private",
            "protected",
            "get",
            "set",
        ],
        "rust" => &[
            "pub",
            "pub(crate)",
            "pub(super)",
            "async",
            "unsafe",
            "const",
            "extern",
        ],
        "go" | "ruby" | "php" => &[
            "public",
            "private",
            "protected",
            "static",
            "abstract",
            "final",
        ],
        _ => return Vec::new(),
    };
    let keywords: &[&str] = match language {
        "python" => &["def", "class"],
        "javascript" | "typescript" | "jsx" | "tsx" => &[
            "function",
            "function*",
            "class",
            "interface",
            "type",
            "enum",
            "const",
            "let",
            "var",
        ],
        "rust" => &["fn", "struct", "enum", "trait", "mod", "type", "union"],
        "go" => &["func", "type"],
        "ruby" => &["def", "class", "module"],
        _ => &["function", "class", "interface", "trait"],
    };
    let script = matches!(language, "javascript" | "typescript" | "jsx" | "tsx");
    code.lines()
        .enumerate()
        .filter_map(|(line, text)| {
            let mut words = text.split_whitespace().peekable();
            while words.peek().is_some_and(|word| modifiers.contains(word)) {
                words.next();
            }
            let first = words.next()?;
            let name = if keywords.contains(&first) {
                let mut rest = words.next()?;
                // Go methods: `func (s *Store) Put(`.
                if language == "go" && first == "func" && rest.starts_with('(') {
                    rest = text.split_once(')')?.1.trim_start();
                }
                let name = identifier(rest)?;
                // `const x = 1` is a value; `const f = (a) =>`, `= function` is a function.
                if matches!(first, "const" | "let" | "var") {
                    let value = text.split_once('=')?.1.trim_start();
                    let value = value.strip_prefix("async").unwrap_or(value).trim_start();
                    let function = value.starts_with("function")
                        || value.starts_with('(')
                        || value
                            .split_once("=>")
                            .is_some_and(|(head, _)| identifier(head.trim()) == Some(head.trim()));
                    if !function {
                        return None;
                    }
                }
                name
            } else if script && indent_of(text) > 0 && text.trim_end().ends_with('{') {
                // A method in a class body: `  total(items) {`.
                let name = identifier(first)?;
                let control = [
                    "if", "for", "while", "switch", "catch", "return", "function", "else", "do",
                    "try", "with",
                ];
                (first[name.len()..].starts_with('(') && !control.contains(&name))
                    .then_some(name)?
            } else {
                return None;
            };
            Some(Definition {
                name,
                line,
                indent: indent_of(text),
            })
        })
        .collect()
}

/// The identifier `text` starts with.
fn identifier(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(text.len());
    let name = &text[..end];
    name.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
        .then_some(name)
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The text of a line that is only a comment, or a comment after a statement that does
/// nothing (`pass  # rest of the code`, `...  // others`).
fn comment_standing_for_code(line: &str) -> Option<&str> {
    if let Some((code, text)) = trailing_comment(line)
        && matches!(code.trim(), "pass" | "..." | ";" | "")
    {
        return Some(text);
    }
    if line.starts_with("#!") || line.starts_with("///") || line.starts_with("//!") {
        return None;
    }
    comment(line, false).map(|(_, text)| text)
}

/// The line after `at` starts a definition.
fn heads_definition(lines: &[&str], at: usize, language: &str) -> bool {
    lines
        .get(at + 1)
        .is_some_and(|next| !definitions(next, language).is_empty())
}

/// `line` names `name` as a word; a short name (`a`, `fn`) only as a call or in backticks,
/// where it cannot be an ordinary word.
fn names(line: &str, name: &str) -> bool {
    if name.len() < 3 {
        return line.contains(&format!("{name}(")) || line.contains(&format!("`{name}`"));
    }
    line.match_indices(name).any(|(at, _)| {
        let word = |c: char| c.is_alphanumeric() || c == '_';
        !line[..at].chars().next_back().is_some_and(word)
            && !line[at + name.len()..].chars().next().is_some_and(word)
    })
}

/// Line `at` ends its block: nothing follows it at its indentation (the next line is
/// blank, less indented, or the end of the file).
fn stands_alone(lines: &[&str], at: usize) -> bool {
    lines
        .get(at + 1)
        .is_none_or(|next| next.trim().is_empty() || indent_of(next) < indent_of(lines[at]))
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
            ("a.py", "# (sub and mul omitted for brevity)\n"),
            ("a.py", "# keep the rest as is\n"),
            ("a.py", "# [previous code]\n"),
            ("a.py", "# sub() and mul() remain the same\n"),
            ("a.py", "# <existing functions>\n"),
            ("a.py", "# unchanged: sub, mul\n"),
            ("a.js", "// (no changes to the functions above)\n"),
            ("a.py", "def f():\n    return 1\n\n# ... snip ...\n"),
            (
                "a.py",
                "class A:\n    x = 1\n\n    # [unchanged]\n\n    def f(self):\n        pass\n",
            ),
            ("a.py", "def f():\n    pass\n\n\n# same as above\n"),
            ("a.py", "# (the remaining functions are identical)\n"),
            ("a.py", "# ⋯ unchanged ⋯\n"),
            ("a.py", "# --- unchanged ---\n\ndef f():\n    pass\n"),
            ("a.py", "def f():\n    pass\n\n\n# etc.\n"),
            ("a.py", "def f():\n    pass  # rest of the code\n"),
            ("a.js", "function f() {}\n\n// ⋯\n"),
            ("a.py", "# (helpers not shown)\n"),
            ("a.py", "# other helpers stay as they were\n"),
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
            ("a.py", "# Values are passed through as is\n"),
            ("a.py", "# Names are shortened for brevity\n"),
            ("a.py", "# Unchanged: returns None when empty\n"),
            ("a.py", "# [Deprecated] kept for old callers\n"),
            ("a.py", "# The value must remain the same\n"),
            ("a.js", "// No changes needed when the cache is warm\n"),
            ("a.js", "/* .............................. */\n"),
            ("a.rs", "// So we just inline\n// the logic here.\n"),
            (
                "a.py",
                "# ...add other platform-specific processing here, if\n# needed.\n",
            ),
            (
                "a.py",
                "# Same as above, but for floats:\ndef g(x):\n    return float(x)\n",
            ),
            (
                "a.py",
                "def f(a, b):\n    # Same as above.\n    return g(a, b)\n",
            ),
            ("a.py", "x = parse(text)  # rest of the code uses x\n"),
            (
                "a.py",
                "def f():\n    # Identical inputs give identical outputs.\n    return 1\n",
            ),
            ("a.js", "// Not shown to the user:\nconst secret = 1;\n"),
            ("a.py", "# etc.\nFORMATS = ['a', 'b']\n"),
            (
                "a.rs",
                "// Snip the trailing newline before comparing.\nfn f() {}\n",
            ),
        ] {
            assert_eq!(find_elision(path, code), None, "{path}: {code:?}");
        }
    }

    #[test]
    fn a_definition_replaced_by_a_comment_is_found_in_each_language() {
        for (path, before, code, gone) in [
            (
                "a.py",
                "class A:\n    def f(self):\n        pass\n\n    def g(self):\n        pass\n",
                "class A:\n    def f(self):\n        return 1\n\n    # g as before\n",
                "g",
            ),
            (
                "a.js",
                "function add(a, b) {\n  return a + b;\n}\n\nconst mul = (a, b) => a * b;\n",
                "function add(a, b) {\n  return a + b;\n}\n\n// mul: keep yours\n",
                "mul",
            ),
            (
                "a.ts",
                "export class Cart {\n  total() {\n    return 1;\n  }\n\n  clear() {\n    this.items = [];\n  }\n}\n",
                "export class Cart {\n  total() {\n    return 2;\n  }\n\n  // (as you had it)\n}\n",
                "clear",
            ),
            (
                "a.rs",
                "pub fn add(a: i32) -> i32 {\n    a\n}\n\nfn mul(a: i32) -> i32 {\n    a\n}\n",
                "pub fn add(a: i32) -> i32 {\n    a + 1\n}\n\n// mul is yours to keep\n",
                "mul",
            ),
            (
                "a.go",
                "func (s *Store) Put(k string) {\n}\n\nfunc Get(k string) string {\n\treturn k\n}\n",
                "// Put: see original\n\nfunc Get(k string) string {\n\treturn k + \"!\"\n}\n",
                "Put",
            ),
        ] {
            let reason = find_removed_definition(path, before, code)
                .unwrap_or_else(|| panic!("{path}: {code:?} was accepted"));
            assert!(
                reason.starts_with(&format!("`{gone}` was in the file")),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_definition_removed_for_real_is_a_deletion() {
        let before = "# Arithmetic.\n\ndef add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n\n\n# End of helpers.\n";
        for code in [
            // Nothing stands for it.
            "# Arithmetic.\n\ndef add(a, b):\n    return a + b\n",
            // A comment the file already had.
            "# Arithmetic.\n\ndef add(a, b):\n    return a + b\n\n\n# End of helpers.\n",
            // A comment saying it was removed.
            "def add(a, b):\n    return a + b\n\n\n# mul was removed; use add in a loop\n",
            // A comment heading new code, and one inside a body.
            "def add(a, b):\n    return a + b\n\n\n# Subtraction.\ndef sub(a, b):\n    # Order matters.\n    return a - b\n",
            // A comment heading ordinary code that happens to use the name as a word.
            "def add(a, b):\n    # mul the inputs first, then add\n    return add(a * b, 0)\n",
            // Renamed: the old name is gone with no comment for it.
            "def add(a, b):\n    return a + b\n\n\ndef times(a, b):\n    return a * b\n",
        ] {
            assert_eq!(
                find_removed_definition("calc.py", before, code),
                None,
                "{code:?}"
            );
        }
        // A language without patterns here is left to the other checks.
        assert_eq!(
            find_removed_definition("a.txt", "def mul():\n", "# mul stays\n"),
            None
        );
    }

    /// A rewrite renaming every one of many definitions, each body with a comment: every
    /// old definition is gone and every comment is looked at, once.
    #[test]
    fn a_rewrite_of_many_definitions_is_checked_in_one_pass() {
        use std::fmt::Write as _;
        let (mut before, mut code) = (String::new(), String::new());
        for i in 0..60_000 {
            let _ = write!(before, "def f{i}(x):\n    return x\n\n\n");
            let _ = write!(
                code,
                "def g{i}(x):\n    # Sum f{i} parts.\n    return x\n\n\n"
            );
        }
        assert_eq!(find_removed_definition("m.py", &before, &code), None);
    }

    #[test]
    fn shrink_refuses_less_than_half() {
        assert!(check_shrink("a", 1000, 400).is_err());
        assert!(check_shrink("a", 1000, 600).is_ok());
        assert!(check_shrink("a", 10, 1).is_ok());
    }
}
