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
