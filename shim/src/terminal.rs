//! Text from the bucket (ref names, `HEAD`, messages naming keys) is written by whoever can write
//! to the bucket. Before it reaches the user's terminal, control characters are spelled out, so
//! no escape sequence can retitle the terminal, move its cursor or hide a line.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) written as a Rust escape such as `\u{1b}`.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_spelled_out() {
        assert_eq!(printable("refs/heads/main"), "refs/heads/main");
        assert_eq!(printable("\u{1b}]0;pwned\u{7}"), "\\u{1b}]0;pwned\\u{7}");
        assert_eq!(printable("a\tb\nc\u{9b}d"), "a\\tb\\nc\\u{9b}d");
        assert_eq!(printable("café #1"), "café #1");
    }
}
