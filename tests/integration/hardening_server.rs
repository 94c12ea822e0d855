//! Hardening of the model-server side: numbers on the command line checked.

use serde_json::json;

use crate::harness::{Test, spec};

/// Numbers out of range are usage errors naming the flag and the range, before anything
/// is called; a negative number gets that message too, not "unexpected argument".
#[test]
fn numbers_on_the_command_line_are_checked() {
    for (flag, value, range) in [
        ("--temperature", "nan", "from 0 to 2"),
        ("--temperature", "-1", "from 0 to 2"),
        ("--temperature", "1e308", "from 0 to 2"),
        ("--max-tokens", "0", "from 1 to"),
        ("--max-tokens", "-3", "from 1 to"),
        ("--idle-timeout", "-1", "at most 86400"),
        ("--total-timeout", "1e308", "at most 86400"),
        ("--retries", "-1", "from 0 to 100"),
        ("--retry-max-wait", "-2", "from 0 to 3600"),
        ("--max-reply-bytes", "0", "from 1 to"),
    ] {
        let run = Test::new()
            .spec(spec("out.py", &json!({})))
            .args(&[flag, value])
            .run();
        let error = run.assert_error(2, "usage");
        assert!(
            error.message.contains(flag),
            "{flag} {value}: {}",
            error.message
        );
        assert!(
            error.message.contains(range),
            "{flag} {value}: {}",
            error.message
        );
        assert!(
            run.requests.is_empty(),
            "{flag} {value}: the model was called"
        );
    }
}
