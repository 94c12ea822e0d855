//! The fence language of a file, inferred from its name.

use std::path::Path;

/// The Markdown fence tag for a path, or an empty string when the extension is unknown.
pub fn for_path(path: &str) -> &'static str {
    let name = Path::new(path)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    match name {
        "Makefile" | "makefile" | "GNUmakefile" => return "make",
        "Dockerfile" => return "dockerfile",
        "CMakeLists.txt" => return "cmake",
        _ => {}
    }
    let extension = Path::new(name)
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "rs" => "rust",
        "py" | "pyi" => "python",
        "js" | "mjs" | "cjs" => "javascript",
        "jsx" => "jsx",
        "ts" | "mts" | "cts" => "typescript",
        "tsx" => "tsx",
        "go" => "go",
        "java" => "java",
        "kt" | "kts" => "kotlin",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" => "cpp",
        "cs" => "csharp",
        "rb" => "ruby",
        "php" => "php",
        "swift" => "swift",
        "scala" => "scala",
        "sh" | "bash" => "bash",
        "zsh" => "zsh",
        "ps1" => "powershell",
        "sql" => "sql",
        "html" | "htm" => "html",
        "css" => "css",
        "scss" => "scss",
        "json" => "json",
        "yaml" | "yml" => "yaml",
        "toml" => "toml",
        "xml" => "xml",
        "md" | "markdown" => "markdown",
        "lua" => "lua",
        "ex" | "exs" => "elixir",
        "erl" => "erlang",
        "hs" => "haskell",
        "ml" | "mli" => "ocaml",
        "zig" => "zig",
        "dart" => "dart",
        "r" => "r",
        "vue" => "vue",
        "svelte" => "svelte",
        _ => "",
    }
}

/// Every tag [`for_path`] gives.
const KNOWN: &[&str] = &[
    "make",
    "dockerfile",
    "cmake",
    "rust",
    "python",
    "javascript",
    "jsx",
    "typescript",
    "tsx",
    "go",
    "java",
    "kotlin",
    "c",
    "cpp",
    "csharp",
    "ruby",
    "php",
    "swift",
    "scala",
    "bash",
    "zsh",
    "powershell",
    "sql",
    "html",
    "css",
    "scss",
    "json",
    "yaml",
    "toml",
    "xml",
    "markdown",
    "lua",
    "elixir",
    "erlang",
    "haskell",
    "ocaml",
    "zig",
    "dart",
    "r",
    "vue",
    "svelte",
];

/// Languages whose blocks models tag interchangeably: a ```` ```jsx ```` block for a `.js`
/// file, ```` ```html ```` for a `.vue` one.
const FAMILIES: &[&[&str]] = &[
    &[
        "javascript",
        "jsx",
        "typescript",
        "tsx",
        "json",
        "vue",
        "svelte",
    ],
    &["c", "cpp"],
    &["html", "xml", "vue", "svelte", "markdown"],
    &["bash", "zsh", "powershell", "make", "dockerfile"],
    &["css", "scss"],
    &["kotlin", "java"],
];

/// A fence tag that names a language [`for_path`] knows (not `plaintext`, `output` or `ini`).
pub fn is_known(tag: &str) -> bool {
    KNOWN.contains(&tag)
}

/// Whether a block tagged `tag` can hold a file in `language`: the same language, or one of
/// a family models mix up.
pub fn compatible(tag: &str, language: &str) -> bool {
    tag == language
        || FAMILIES
            .iter()
            .any(|family| family.contains(&tag) && family.contains(&language))
}

#[cfg(test)]
mod tests {
    use super::for_path;

    #[test]
    fn infers_from_extension_and_special_names() {
        assert_eq!(for_path("src/a.rs"), "rust");
        assert_eq!(for_path("web/App.TSX"), "tsx");
        assert_eq!(for_path("Makefile"), "make");
        assert_eq!(for_path("docs/README"), "");
    }
}
