//! Text from outside the tool (a spec's `task_id` or `description`) made safe to put in a
//! message: control characters are written as escapes, so an escape sequence in a spec
//! cannot recolour, retitle or rewrite the terminal the message is shown on.

/// `text` with every control character (C0, DEL, C1: escape sequences, carriage returns,
/// newlines) written as Rust writes it in a string literal (`\u{1b}`, `\r`, `\n`).
pub fn controls(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            safe.extend(c.escape_debug());
        } else {
            safe.push(c);
        }
    }
    safe
}

/// [`controls`] for a text of several lines: each line escaped, the line breaks kept.
pub fn controls_keeping_lines(text: &str) -> String {
    text.split('\n')
        .map(controls)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::{controls, controls_keeping_lines};

    #[test]
    fn line_breaks_can_be_kept() {
        assert_eq!(
            controls_keeping_lines("a\u{1b}[2J\n\nb\r\n"),
            "a\\u{1b}[2J\n\nb\\r\n"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            controls("a\u{1b}[31mb\r\n\u{9b}é"),
            r"a\u{1b}[31mb\r\n\u{9b}é"
        );
    }
}
