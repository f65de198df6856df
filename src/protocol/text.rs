//! Names and user text: which names a user may choose ([`chosen_name`]),
//! when two names are the same name ([`name_key`]: in other capitals or
//! only looking alike), and how text from the network is made safe to show
//! on a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

use unicode_normalization::UnicodeNormalization;
use unicode_security::confusable_detection::skeleton;

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
    /// Only fillers such as U+3164 HANGUL FILLER: letters that show
    /// nothing, so the name would be blank on screen. Its [`name_key`] is
    /// empty.
    #[error("a name needs at least one character that shows")]
    Invisible,
    /// A letter that looks like `:` (U+02D0 `ː`, U+A4FD `ꓽ`, ...): its
    /// [`name_key`] has a `:`, which only address names have.
    #[error("a name cannot contain {0:?}: it looks like ':', which only address names have")]
    LooksLikeColon(char),
}

/// A name as a user typed it, ready to hold: in Unicode NFC (composed)
/// form, then checked with [`validate_name`]. Keyboards differ in how they
/// write accents (macOS sends `e` + U+0301 COMBINING ACUTE ACCENT for `é`,
/// most others the single `é`); both are the same text, and the composed
/// one is what is stored and shown. Borrowed when the name is already NFC,
/// which is the usual case.
pub fn chosen_name(typed: &str) -> Result<Cow<'_, str>, NameError> {
    let name = nfc(typed);
    validate_name(&name)?;
    Ok(name)
}

/// `text` in Unicode NFC form, borrowed when it already is. For names that
/// are looked up rather than held (a login's NAME) the same form as
/// [`chosen_name`] gives, without its checks.
pub fn nfc(text: &str) -> Cow<'_, str> {
    if unicode_normalization::is_nfc(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

/// Checks a name a user chose, in NFC form (see [`chosen_name`]).
///
/// Rules: 1 to [`MAX_NAME_CHARS`] characters, each a Unicode letter or digit
/// or one of `_ - .`. That excludes `|` (the command separator), whitespace
/// (names end at a space in server lines), control characters (no forged
/// lines or terminal escapes), `<>*` (the line markers) and `:`. Names given
/// by the server on connect are the remote address (`127.0.0.1:5555`), which
/// always contains `:`, so no chosen name can ever squat a future default.
///
/// Names are compared by their [`name_key`], so two more rules keep that
/// promise and keep names visible: a letter whose key is `:` (U+02D0 `ː`
/// looks like `:`, and `127.0.0.1ː5555` would otherwise be the same name
/// as the address `127.0.0.1:5555`) is refused, and so is a name whose key
/// is empty (only invisible fillers).
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
    let key = name_key(name);
    if key.contains(':') {
        let c = name
            .chars()
            .find(|c| name_key(c.encode_utf8(&mut [0; 4])).contains(':'))
            .unwrap_or(':');
        return Err(NameError::LooksLikeColon(c));
    }
    if key.is_empty() {
        return Err(NameError::Invisible);
    }
    Ok(())
}

/// The form of a name that decides whether two names are the same name
/// ([UTS #39] "confusable detection", taken case-insensitively): the
/// name's Unicode lowercase, then its confusable skeleton, lowercased
/// again, and that repeated until nothing changes. Two names are one name
/// when their keys are equal: `Alice`, `ALICE` and `alice`; `аlice`
/// (Cyrillic `а`) and `alice`; `paypa1` and `paypal`; `bob0`, `bobO` and
/// `bobo`; `admin` and `adrnin` (`m` looks like `rn`). So a user cannot
/// appear beside `alice` under a name that only looks like hers, and a
/// registered name protects its look-alikes too. Each user keeps the
/// spelling it chose for display; the key is never shown.
///
/// This is the one definition: the name table, the accounts table and the
/// cluster's name claims all key on it.
///
/// Why these steps:
/// - Lowercase first, so the rule of capitals stays as it was (`Ilya` and
///   `ilya` are one name). The price: in the skeleton `I` is `l`, but `I`
///   is lowercased to `i` first, so `Ilya` and `llya` stay two names. The
///   two rules cannot both hold, since `ilya` and `llya` do not look alike.
/// - The skeleton (the `unicode-security` crate's table, from Unicode's
///   `confusables.txt`) maps each character to its prototype: Cyrillic
///   `а` to `a`, `1` and `|` to `l`, `0` to `O`, `m` to `rn`. It is NFD
///   and drops default-ignorable characters, so `é` and `e` + U+0301 are
///   one name, and an invisible filler inside a name changes nothing.
/// - Lowercase again, because prototypes can be capitals (`0` becomes
///   `O`); repeat, because a lowercased prototype can have a prototype of
///   its own (`ᗰ` is `M`, lowercased `m`, whose prototype is `rn`). Every
///   character settles within three rounds (a unit test checks them all).
///
/// What it does not do, by the table's design: `cl` and `d`, `vv` and `w`
/// stay apart (the table maps single characters, and only some sequences,
/// such as `rn`, are targets); `STRASSE` and `straße` stay apart (no case
/// folding, and `ß` has no prototype). Its cost: names that look alike
/// only in some fonts are one name too: `arnie` and `amie`, or Greek
/// `σοφία`, whose `σ` and `ο` both key as Latin `o`. Address names
/// (`127.0.0.1:5555`) key to `l27.o.o.l:5555`, which always has the `:`
/// that [`validate_name`] keeps out of every chosen name's key.
///
/// It runs per command that names a name (join, rename, whisper, login),
/// on at most [`MAX_HELD_NAME_CHARS`] characters ([`lookup_key`] for names
/// that are looked up), never per delivered line; the hub keeps each
/// user's key, so a leave or a rename does not compute the old one again.
///
/// [UTS #39]: https://www.unicode.org/reports/tr39/#Confusable_Detection
pub fn name_key(name: &str) -> String {
    let mut key = name.to_lowercase();
    for _ in 0..KEY_ROUNDS {
        let next: String = skeleton(&key).flat_map(char::to_lowercase).collect();
        if next == key {
            break;
        }
        key = next;
    }
    key
}

/// Longest text, in characters, that can be the name of someone online: a
/// chosen name has at most [`MAX_NAME_CHARS`], an address name at most 58
/// (`[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535`).
pub const MAX_HELD_NAME_CHARS: usize = 64;

/// The [`name_key`] to look `name` up by (a whisper's NAME, a login's), or
/// `None` when it is longer than [`MAX_HELD_NAME_CHARS`] and so names
/// nobody. The key costs time per character (a skeleton can be 30
/// characters for one), and a line can hold 4 KiB of them: without the
/// bound, every `to|NAME|...` line could cost milliseconds of CPU.
pub fn lookup_key(name: &str) -> Option<String> {
    name.chars()
        .nth(MAX_HELD_NAME_CHARS)
        .is_none()
        .then(|| name_key(name))
}

/// At most this many rounds of [`name_key`]: every single character
/// settles in three (the unit test `every_character_key_is_settled` shows
/// it), so four leaves room, and the bound keeps the cost fixed whatever
/// a table update brings.
const KEY_ROUNDS: usize = 4;

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

    /// A letter that looks like `:` would make a chosen name the same name
    /// as an address name: `127.0.0.1ː5555` (U+02D0) keys as the address
    /// `127.0.0.1:5555` does, so it is refused, naming the letter; so is
    /// any name whose key is blank.
    #[test]
    fn no_chosen_name_can_be_an_address_name_or_blank() {
        let squat = "127.0.0.1\u{2d0}5555";
        assert!(squat.chars().all(|c| c.is_alphanumeric() || c == '.'));
        assert_eq!(name_key(squat), name_key("127.0.0.1:5555"), "the trap");
        assert_eq!(
            validate_name(squat),
            Err(NameError::LooksLikeColon('\u{2d0}'))
        );
        assert_eq!(
            validate_name("l\u{a4fd}\u{a4fd}l"),
            Err(NameError::LooksLikeColon('\u{a4fd}')),
            "Lisu letter tone mya jeu, [ꓽꓽ1] without the brackets"
        );
        assert!(NameError::LooksLikeColon('\u{2d0}')
            .to_string()
            .contains("looks like ':'"));
        assert!(name_key("127.0.0.1:5555").contains(':'));
        assert!(name_key("[::1]:5555").contains(':'));
        assert_eq!(validate_name("\u{3164}"), Err(NameError::Invisible));
        assert_eq!(validate_name("\u{115f}\u{3164}"), Err(NameError::Invisible));
        assert_eq!(
            name_key("bob\u{3164}"),
            "bob",
            "a filler inside changes nothing"
        );
    }

    /// Two different address names never key alike (a join would then
    /// replace a connection that is still there): on the characters an
    /// address name is written with, the keys form a prefix code (none is
    /// the start of another's, capitals of hex digits aside), so a key can
    /// be read back into only one address.
    #[test]
    fn address_names_keep_distinct_keys() {
        let alphabet = "0123456789abcdefABCDEF:[].%";
        let keys: Vec<(char, String)> = alphabet
            .chars()
            .map(|c| (c, name_key(&c.to_string())))
            .collect();
        for (c, key) in &keys {
            assert!(!key.is_empty(), "{c:?}");
            for (d, other) in &keys {
                if !c.eq_ignore_ascii_case(d) {
                    assert!(
                        !other.starts_with(key.as_str()),
                        "{c:?} {key:?}, {d:?} {other:?}"
                    );
                }
            }
        }
        assert_ne!(name_key("[::1]:80"), name_key("[::7]:80"));
        assert_ne!(name_key("10.0.0.1:5"), name_key("1.00.0.1:5"));
        assert_ne!(name_key("[fe80::1%2]:5"), name_key("[fe80::1]:5"));
    }

    /// A name to look up is keyed only while it could be someone's: up to
    /// 64 characters, the longest address name (58) with room to spare.
    #[test]
    fn lookups_of_overlong_names_find_nobody() {
        let longest = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
        assert_eq!(longest.chars().count(), 58);
        assert_eq!(lookup_key(longest), Some(name_key(longest)));
        assert_eq!(lookup_key(&"x".repeat(64)), Some("x".repeat(64)));
        assert_eq!(lookup_key(&"x".repeat(65)), None);
        assert_eq!(lookup_key(&"\u{fdfa}".repeat(1000)), None);
        assert_eq!(lookup_key("ALICE").as_deref(), Some("alice"));
    }

    /// Every character a name may have, alone: its key has no `:` (no
    /// chosen name keys like an address name), is not blank, and is
    /// settled (the key of a key is itself, so [`name_key`]'s rounds
    /// reach the end).
    #[test]
    fn every_character_key_is_settled() {
        let mut refused = Vec::new();
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            let name = c.to_string();
            if !c.is_alphanumeric() {
                continue;
            }
            let key = name_key(&name);
            if validate_name(&name).is_err() {
                refused.push(c);
                continue;
            }
            assert!(
                !key.contains(':') && !key.is_empty(),
                "{c:?} keys as {key:?}"
            );
            assert_eq!(name_key(&key), key, "{c:?} keys as {key:?}, not settled");
        }
        assert!(refused.contains(&'\u{2d0}') && refused.contains(&'\u{3164}'));
        assert!(refused.len() < 20, "{refused:?}");
    }

    /// A name typed in decomposed form (macOS: `e` + U+0301) is accepted
    /// and held composed; a mark with no composed form is still refused.
    #[test]
    fn chosen_names_are_held_composed() {
        assert_eq!(
            validate_name("e\u{301}lodie"),
            Err(NameError::BadChar('\u{301}'))
        );
        assert_eq!(chosen_name("e\u{301}lodie").unwrap(), "\u{e9}lodie");
        assert!(matches!(chosen_name("élodie"), Ok(Cow::Borrowed("élodie"))));
        assert_eq!(chosen_name("q\u{301}"), Err(NameError::BadChar('\u{301}')));
        assert_eq!(chosen_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(nfc("E\u{301}LODIE"), "\u{c9}LODIE");
        assert_eq!(name_key("e\u{301}lodie"), name_key("ÉLODIE"));
    }

    /// Names that differ only in case, or only look alike (UTS #39
    /// skeletons), key to one; names that look different stay apart.
    #[test]
    fn name_key_makes_case_variants_and_look_alikes_one_name() {
        let one = |a: &str, b: &str| assert_eq!(name_key(a), name_key(b), "{a} = {b}");
        let two = |a: &str, b: &str| assert_ne!(name_key(a), name_key(b), "{a} != {b}");
        // Capitals, as before.
        one("Alice", "alice");
        one("ALICE", "alice");
        one("ÉLODIE", "élodie");
        one("ΣΟΦΙΑ", "σοφια");
        // Look-alikes.
        one("\u{430}lice", "alice"); // Cyrillic а
        one("\u{410}LICE", "alice"); // Cyrillic А
        one("adrnin", "admin");
        one("bob0", "bobO");
        one("bob0", "bobo");
        one("paypa1", "paypal");
        one("paypa1", "PAYPAL");
        one("\u{15f0}", "M"); // Canadian syllabics ᗰ, settled through m
        one("arnie", "amie"); // the cost: rn looks like m
        one("σοφία", "οοφία"); // the cost: Greek σ and ο both key as o
                               // Different names.
        two("alice", "alicia");
        two("alice", "alice2");
        two("小明", "小朋");
        two("STRASSE", "straße"); // no case folding, and ß has no prototype
        two("clad", "dad"); // cl and d: not in the table
        two("vvill", "will");
        two("Ilya", "llya"); // capitals first: Ilya is ilya
        assert_eq!(name_key("admin"), "adrnin");
        assert_eq!(name_key("127.0.0.1:5555"), "l27.o.o.l:5555");
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
