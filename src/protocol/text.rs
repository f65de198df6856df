//! Names and user text: which names a user may choose, when two names are
//! the same name ([`fold`]), and how text from the network is made safe to
//! show on a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Longest name a user may choose, in characters. Short enough to keep chat
/// lines readable on an 80-column terminal, long enough for real nicknames.
pub const MAX_NAME_CHARS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name is at most {MAX_NAME_CHARS} characters")]
    TooLong,
    #[error("a name may contain only letters, digits, '_', '-' and '.' (not {0:?})")]
    BadChar(char),
}

/// Checks a name a user chose.
///
/// Rules: 1 to [`MAX_NAME_CHARS`] characters, each a Unicode letter or digit
/// or one of `_ - .`. That excludes `|` (the command separator), whitespace
/// (names end at a space in server lines), control characters (no forged
/// lines or terminal escapes), `<>*` (the line markers) and `:`. Names given
/// by the server on connect are the remote address (`127.0.0.1:5555`), which
/// always contains `:`, so no chosen name can ever squat a future default.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::BadChar(c));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    Ok(())
}

/// The form of a name that decides whether two names are the same: its
/// Unicode lowercase ([`str::to_lowercase`]). `Alice`, `ALICE` and `alice`
/// fold to `alice`, so they are one name for uniqueness, for registered
/// names and for whispers, while each user keeps the spelling it chose for
/// display. This is the one definition: the name table, the accounts
/// table and the cluster's name claims all key on it.
///
/// Why lowercasing and not full Unicode case folding: it is in std (no
/// table of our own to keep in step), it is what a reader sees as "the same
/// name in other capitals", and names are letters and digits only, where
/// the two differ in a handful of letters (`ß` stays `ß`, so `STRASSE` and
/// `straße` are different names). Address names (`127.0.0.1:5555`,
/// `[::1]:5555`) have no capitals and fold to themselves.
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

/// True for characters that must never reach a terminal raw: C0 and C1
/// controls, DEL, line/paragraph separators and the bidirectional overrides
/// and isolates (which can reorder what a reader sees). Tab is kept.
pub fn is_unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Makes text safe to show on a terminal: control characters become visible
/// caret notation (ESC shows as `^[`, DEL as `^?`), other unsafe characters
/// become `\u{XXXX}`. Borrowed when there is nothing to change, which is the
/// common case, so the broadcast path does not allocate for it.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !is_unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x20 {
            out.push('^');
            out.push((b'@' + c as u8) as char);
        } else if c == '\u{7f}' {
            out.push_str("^?");
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("小明_2.x-y").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_name("a|b"), Err(NameError::BadChar('|')));
        assert_eq!(validate_name("a\rb"), Err(NameError::BadChar('\r')));
        assert_eq!(validate_name("127.0.0.1:80"), Err(NameError::BadChar(':')));
        assert_eq!(validate_name(&"x".repeat(33)), Err(NameError::TooLong));
        assert!(validate_name(&"x".repeat(32)).is_ok());
    }

    /// Names that differ only in case fold to one; others, and address
    /// names, stay apart.
    #[test]
    fn fold_makes_case_variants_one_name() {
        assert_eq!(fold("Alice"), "alice");
        assert_eq!(fold("ALICE"), fold("alice"));
        assert_eq!(fold("ÉLODIE"), fold("élodie"));
        assert_eq!(fold("ΣΟΦΙΑ"), fold("σοφια"));
        assert_ne!(fold("alice"), fold("alice2"));
        assert_ne!(
            fold("STRASSE"),
            fold("straße"),
            "lowercase, not full folding"
        );
        assert_eq!(fold("127.0.0.1:5555"), "127.0.0.1:5555");
        assert_eq!(fold("[::1]:5555"), "[::1]:5555");
    }

    #[test]
    fn visible_escapes_terminal_controls() {
        assert_eq!(visible("plain text"), "plain text");
        assert_eq!(visible("\x1b[31mred"), "^[[31mred");
        assert_eq!(visible("a\rb\x7f"), "a^Mb^?");
        assert_eq!(visible("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(visible("tab\tok"), "tab\tok");
    }
}
