//! The wire protocol: lines in both directions, as typed values.
//!
//! This is the one definition of the protocol. The server parses client lines
//! with [`Command::parse`] and writes [`ServerLine::encode`]; the client builds
//! its requests with [`Command::encode`] and reads replies with
//! [`ServerLine::parse`]. A format change is a change here and in PROTOCOL.md.
//!
//! Client to server (one command per line, `\n` or `\r\n` terminated):
//!
//! ```text
//! who                     list online users
//! rename|NAME             change your name
//! to|NAME|MESSAGE         whisper MESSAGE to NAME (MESSAGE may contain '|')
//! anything else           public message to everyone, sender included
//! (empty line)            ignored
//! ```
//!
//! Server to client: every line starts with a marker that user text can never
//! produce, because user text only ever appears *after* a fixed prefix:
//!
//! ```text
//! <NAME> TEXT                   public message
//! *NAME* TEXT                   whisper to you
//! ok to NAME: TEXT              your whisper was delivered
//! ok rename: you are now NAME   your rename worked
//! who NAME                      one online user (reply to `who`) ...
//! ok who: N online              ... and the end of that reply
//! error CODE: MESSAGE           your line was refused; CODE is stable
//! *** welcome, you are NAME (...)   first line on connect
//! *** NAME is online
//! *** NAME is offline (REASON)
//! *** OLD is now known as NEW
//! *** bye: REASON               last line before the server closes
//! ```

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Longest name a user may choose, in characters. Short enough to keep chat
/// lines readable on an 80-column terminal, long enough for real nicknames.
pub const MAX_NAME_CHARS: usize = 32;

/// A line sent by a client, borrowed from the received line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `who`: list online users.
    Who,
    /// `rename|NAME`: NAME is everything after the first `|`, unvalidated.
    Rename(&'a str),
    /// `to|NAME|MESSAGE`: MESSAGE is everything after the second `|`.
    Whisper { to: &'a str, text: &'a str },
    /// Any other non-empty line: broadcast to everyone.
    Say(&'a str),
    /// An empty (or all-whitespace) line: ignored, no reply.
    Empty,
    /// A line that starts like a command but cannot be one; the reply is an
    /// `error usage` line carrying this usage text.
    Malformed(&'static str),
}

/// Usage text for `rename`, sent with `error usage`.
pub const RENAME_USAGE: &str = "rename|NAME";
/// Usage text for `to`, sent with `error usage`.
pub const WHISPER_USAGE: &str = "to|NAME|MESSAGE";

impl<'a> Command<'a> {
    /// Parses one line (without its line terminator). Never fails: anything
    /// that is not a command is a public message, as in the seed.
    pub fn parse(line: &'a str) -> Command<'a> {
        if line.trim().is_empty() {
            return Command::Empty;
        }
        if line == "who" {
            return Command::Who;
        }
        if let Some(name) = line.strip_prefix("rename|") {
            if name.is_empty() {
                return Command::Malformed(RENAME_USAGE);
            }
            return Command::Rename(name);
        }
        if let Some(rest) = line.strip_prefix("to|") {
            return match rest.split_once('|') {
                Some((to, text)) if !to.is_empty() => Command::Whisper { to, text },
                _ => Command::Malformed(WHISPER_USAGE),
            };
        }
        Command::Say(line)
    }

    /// The line a client sends for this command, with its `\n`.
    pub fn encode(&self) -> String {
        match self {
            Command::Who => "who\n".to_string(),
            Command::Rename(name) => format!("rename|{name}\n"),
            Command::Whisper { to, text } => format!("to|{to}|{text}\n"),
            Command::Say(text) => format!("{text}\n"),
            Command::Empty | Command::Malformed(_) => "\n".to_string(),
        }
    }
}

/// Why a user went offline; shown in the offline notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client closed its connection.
    Quit,
    /// Silent for longer than the idle timeout.
    Idle,
    /// Its outbound queue overflowed because it stopped reading.
    TooSlow,
    /// Sent a line far past the length limit without a newline.
    Flood,
    /// A network error on its connection.
    Error,
    /// Its server shut down (told to users on other nodes of a cluster).
    Shutdown,
}

impl LeaveReason {
    /// The word used in `*** NAME is offline (REASON)`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Quit => "quit",
            LeaveReason::Idle => "idle",
            LeaveReason::TooSlow => "too slow",
            LeaveReason::Flood => "flood",
            LeaveReason::Error => "connection error",
            LeaveReason::Shutdown => "server shutting down",
        }
    }
}

/// The stable codes of `error CODE: MESSAGE` lines. Programs match on the
/// code; people read the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// rename to a name someone else (or you) already has.
    NameTaken,
    /// rename to a name that breaks the name rules.
    BadName,
    /// whisper to a name nobody online has.
    NoSuchUser,
    /// whisper with nothing to say.
    EmptyMessage,
    /// a command with missing parts; the message is its usage.
    Usage,
    /// a line over the length limit; it was discarded.
    TooLong,
    /// the connection limit is reached; the server closes the connection.
    ServerFull,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NameTaken => "name-taken",
            ErrorCode::BadName => "bad-name",
            ErrorCode::NoSuchUser => "no-such-user",
            ErrorCode::EmptyMessage => "empty-message",
            ErrorCode::Usage => "usage",
            ErrorCode::TooLong => "too-long",
            ErrorCode::ServerFull => "server-full",
        }
    }

    fn from_wire(s: &str) -> Option<ErrorCode> {
        Some(match s {
            "name-taken" => ErrorCode::NameTaken,
            "bad-name" => ErrorCode::BadName,
            "no-such-user" => ErrorCode::NoSuchUser,
            "empty-message" => ErrorCode::EmptyMessage,
            "usage" => ErrorCode::Usage,
            "too-long" => ErrorCode::TooLong,
            "server-full" => ErrorCode::ServerFull,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fixed text of the welcome line after the name.
const WELCOME_HELP: &str = "(commands: who, rename|NAME, to|NAME|MESSAGE)";

/// A line sent by the server. Text fields hold what goes on the wire: the
/// server passes user text through [`visible`] before building one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    /// `<NAME> TEXT`: a public message, sent to everyone including the sender.
    Public { from: String, text: String },
    /// `*NAME* TEXT`: a whisper addressed to you.
    Private { from: String, text: String },
    /// `ok to NAME: TEXT`: your whisper was delivered to NAME's queue.
    Sent { to: String, text: String },
    /// `ok rename: you are now NAME`.
    Renamed { name: String },
    /// `who NAME`: one line per online user in reply to `who`.
    WhoItem { name: String },
    /// `ok who: N online`: the end of the `who` reply.
    WhoEnd { count: usize },
    /// `error CODE: MESSAGE`: the line you sent was refused.
    Error { code: ErrorCode, message: String },
    /// `*** welcome, you are NAME (commands: ...)`: first line on connect.
    Welcome { name: String },
    /// `*** NAME is online`.
    Joined { name: String },
    /// `*** NAME is offline (REASON)`.
    Left { name: String, reason: String },
    /// `*** OLD is now known as NEW`.
    NameChanged { old: String, new: String },
    /// `*** bye: REASON`: the server is closing this connection.
    Bye { reason: String },
    /// `*** cluster: TEXT`: news about this node's link to the others
    /// (`imd --redis`): paused, resumed.
    Cluster { text: String },
}

/// Appends the public line `<FROM> TEXT` (with `\n`) to `out`, the same
/// as encoding a [`ServerLine::Public`] but without building one: the
/// broadcast path encodes every public line this way, with no allocation.
pub fn encode_public<W: std::fmt::Write>(out: &mut W, from: &str, text: &str) {
    // Writing to a String or a BytesMut cannot fail.
    let _ = writeln!(out, "<{from}> {text}");
}

impl ServerLine {
    /// Shorthand for an error line.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerLine {
        ServerLine::Error {
            code,
            message: message.into(),
        }
    }

    /// The line as sent, with its trailing `\n`.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(64);
        self.encode_into(&mut s);
        s
    }

    /// Appends the encoded line (with `\n`) to `out` (a `String`, or a
    /// `BytesMut` batch of lines).
    pub fn encode_into<W: std::fmt::Write>(&self, out: &mut W) {
        // Writing to a String or a BytesMut cannot fail.
        let _ = match self {
            ServerLine::Public { from, text } => {
                encode_public(out, from, text);
                Ok(())
            }
            ServerLine::Private { from, text } => writeln!(out, "*{from}* {text}"),
            ServerLine::Sent { to, text } => writeln!(out, "ok to {to}: {text}"),
            ServerLine::Renamed { name } => writeln!(out, "ok rename: you are now {name}"),
            ServerLine::WhoItem { name } => writeln!(out, "who {name}"),
            ServerLine::WhoEnd { count } => writeln!(out, "ok who: {count} online"),
            ServerLine::Error { code, message } => writeln!(out, "error {code}: {message}"),
            ServerLine::Welcome { name } => {
                writeln!(out, "*** welcome, you are {name} {WELCOME_HELP}")
            }
            ServerLine::Joined { name } => writeln!(out, "*** {name} is online"),
            ServerLine::Left { name, reason } => writeln!(out, "*** {name} is offline ({reason})"),
            ServerLine::NameChanged { old, new } => {
                writeln!(out, "*** {old} is now known as {new}")
            }
            ServerLine::Bye { reason } => writeln!(out, "*** bye: {reason}"),
            ServerLine::Cluster { text } => writeln!(out, "*** cluster: {text}"),
        };
    }

    /// Parses one server line (without its terminator). Returns `None` for a
    /// line that is not in this protocol (e.g. from another server).
    pub fn parse(line: &str) -> Option<ServerLine> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(rest) = line.strip_prefix('<') {
            let (from, text) = rest.split_once("> ")?;
            return Some(ServerLine::Public {
                from: from.into(),
                text: text.into(),
            });
        }
        if let Some(rest) = line.strip_prefix("*** ") {
            return parse_notice(rest);
        }
        if let Some(rest) = line.strip_prefix('*') {
            let (from, text) = rest.split_once("* ")?;
            return Some(ServerLine::Private {
                from: from.into(),
                text: text.into(),
            });
        }
        if let Some(rest) = line.strip_prefix("ok to ") {
            let (to, text) = rest.split_once(": ")?;
            return Some(ServerLine::Sent {
                to: to.into(),
                text: text.into(),
            });
        }
        if let Some(name) = line.strip_prefix("ok rename: you are now ") {
            return Some(ServerLine::Renamed { name: name.into() });
        }
        if let Some(rest) = line.strip_prefix("ok who: ") {
            let count = rest.strip_suffix(" online")?.parse().ok()?;
            return Some(ServerLine::WhoEnd { count });
        }
        if let Some(name) = line.strip_prefix("who ") {
            return Some(ServerLine::WhoItem { name: name.into() });
        }
        if let Some(rest) = line.strip_prefix("error ") {
            let (code, message) = rest.split_once(": ")?;
            return Some(ServerLine::Error {
                code: ErrorCode::from_wire(code)?,
                message: message.into(),
            });
        }
        None
    }
}

fn parse_notice(rest: &str) -> Option<ServerLine> {
    if let Some(reason) = rest.strip_prefix("bye: ") {
        return Some(ServerLine::Bye {
            reason: reason.into(),
        });
    }
    if let Some(text) = rest.strip_prefix("cluster: ") {
        return Some(ServerLine::Cluster { text: text.into() });
    }
    if let Some(tail) = rest.strip_prefix("welcome, you are ") {
        let name = tail.strip_suffix(WELCOME_HELP)?.strip_suffix(' ')?;
        return Some(ServerLine::Welcome { name: name.into() });
    }
    // Names never contain spaces, so the first word is the name.
    let (name, tail) = rest.split_once(' ')?;
    if tail == "is online" {
        return Some(ServerLine::Joined { name: name.into() });
    }
    if let Some(reason) = tail.strip_prefix("is offline (") {
        return Some(ServerLine::Left {
            name: name.into(),
            reason: reason.strip_suffix(')')?.into(),
        });
    }
    if let Some(new) = tail.strip_prefix("is now known as ") {
        return Some(ServerLine::NameChanged {
            old: name.into(),
            new: new.into(),
        });
    }
    None
}

/// Why a name was refused; the text is sent to the user as is.
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
    use proptest::prelude::*;

    #[test]
    fn parses_the_seed_commands() {
        assert_eq!(Command::parse("who"), Command::Who);
        assert_eq!(Command::parse("rename|bob"), Command::Rename("bob"));
        assert_eq!(
            Command::parse("to|bob|hi | there"),
            Command::Whisper {
                to: "bob",
                text: "hi | there"
            }
        );
        assert_eq!(Command::parse("hello|world"), Command::Say("hello|world"));
        assert_eq!(Command::parse("who "), Command::Say("who "));
        assert_eq!(Command::parse(""), Command::Empty);
        assert_eq!(Command::parse("   "), Command::Empty);
    }

    #[test]
    fn malformed_commands_carry_their_usage() {
        assert_eq!(Command::parse("rename|"), Command::Malformed(RENAME_USAGE));
        assert_eq!(
            Command::parse("to|alice"),
            Command::Malformed(WHISPER_USAGE)
        );
        assert_eq!(Command::parse("to|"), Command::Malformed(WHISPER_USAGE));
        assert_eq!(Command::parse("to||hi"), Command::Malformed(WHISPER_USAGE));
        assert_eq!(
            Command::parse("to|bob|"),
            Command::Whisper {
                to: "bob",
                text: ""
            }
        );
    }

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

    #[test]
    fn visible_escapes_terminal_controls() {
        assert_eq!(visible("plain text"), "plain text");
        assert_eq!(visible("\x1b[31mred"), "^[[31mred");
        assert_eq!(visible("a\rb\x7f"), "a^Mb^?");
        assert_eq!(visible("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(visible("tab\tok"), "tab\tok");
    }

    #[test]
    fn server_lines_round_trip() {
        let lines = [
            ServerLine::Public {
                from: "alice".into(),
                text: "hi <there> *x* ok to".into(),
            },
            ServerLine::Private {
                from: "bob".into(),
                text: "psst".into(),
            },
            ServerLine::Sent {
                to: "bob".into(),
                text: "a: b".into(),
            },
            ServerLine::Renamed {
                name: "carol".into(),
            },
            ServerLine::WhoItem {
                name: "127.0.0.1:5000".into(),
            },
            ServerLine::WhoEnd { count: 3 },
            ServerLine::error(ErrorCode::NameTaken, "name 'bob' is taken"),
            ServerLine::Welcome {
                name: "[::1]:4000".into(),
            },
            ServerLine::Joined {
                name: "dave".into(),
            },
            ServerLine::Left {
                name: "dave".into(),
                reason: "too slow".into(),
            },
            ServerLine::NameChanged {
                old: "a".into(),
                new: "b".into(),
            },
            ServerLine::Bye {
                reason: "server shutting down".into(),
            },
            ServerLine::Cluster {
                text: "cluster messages resumed".into(),
            },
        ];
        for line in lines {
            let wire = line.encode();
            assert!(wire.ends_with('\n'));
            assert_eq!(ServerLine::parse(wire.trim_end_matches('\n')), Some(line));
        }
    }

    proptest! {
        /// No input line makes the command parser panic, and whatever it
        /// parses re-encodes to a single line.
        #[test]
        fn command_parse_never_panics(line in "\\PC*|[|a-z\r\x1b]{0,20}") {
            let cmd = Command::parse(&line);
            let _ = visible(&line);
            let _ = validate_name(&line);
            if !line.contains('\n') {
                prop_assert_eq!(cmd.encode().matches('\n').count(), 1);
            }
        }

        /// Public text made visible can never be parsed as any line but a
        /// public message from its real sender: user text cannot forge.
        #[test]
        fn user_text_cannot_forge_server_lines(text in any::<String>()) {
            let line = ServerLine::Public { from: "alice".into(), text: visible(&text).into_owned() };
            let wire = line.encode();
            prop_assert_eq!(wire.matches('\n').count(), 1);
            let parsed = ServerLine::parse(wire.trim_end_matches('\n'));
            let from_alice = matches!(parsed, Some(ServerLine::Public { ref from, .. }) if from == "alice");
            prop_assert!(from_alice);
        }

        /// ServerLine::parse never panics on arbitrary input.
        #[test]
        fn server_parse_never_panics(line in any::<String>()) {
            let _ = ServerLine::parse(&line);
        }
    }
}
