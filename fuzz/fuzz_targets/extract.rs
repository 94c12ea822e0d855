//! Fuzzes reply extraction and the elision guard: any text a model might send must give a
//! result, never a panic, and an `Ok` must hold exactly the requested files.

#![no_main]

use execute_local_task::{content, extract};
use libfuzzer_sys::fuzz_target;

/// Output sets that exercise the single-file and several-file paths.
const OUTPUTS: &[&[&str]] = &[
    &["src/a.py"],
    &["README.md"],
    &["src/a.py", "tests/test_a.py"],
    &["web/app.js", "src/a.py", "docs/a.md"],
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(reply) = std::str::from_utf8(rest) else {
        return;
    };
    let outputs: Vec<String> = OUTPUTS[usize::from(selector) % OUTPUTS.len()]
        .iter()
        .map(|path| (*path).to_owned())
        .collect();
    let language = execute_local_task::language::for_path(&outputs[0]);

    let stripped = extract::strip_thinking(reply);
    assert!(
        reply.ends_with(stripped),
        "thinking removal must keep a suffix"
    );
    let _ = extract::blocks(reply);

    if let Ok(extracted) = extract::extract(reply, &outputs, language) {
        let paths: Vec<&String> = extracted.files.iter().map(|(path, _)| path).collect();
        assert_eq!(
            paths,
            outputs.iter().collect::<Vec<_>>(),
            "files out of order"
        );
        for (path, code) in &extracted.files {
            assert!(code.is_empty() || code.ends_with('\n'), "no final newline");
            assert!(!code.contains('\r') || reply.contains('\r'));
            let _ = content::find_elision(path, code);
        }
    }
    for path in &outputs {
        let _ = content::find_elision(path, reply);
    }
});
