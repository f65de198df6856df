//! Server lines: what the server sends, encoded by the server and parsed
//! by the client with the same type. Every line starts with a marker that
//! user text can never produce (see [`super`] for the table).

use std::fmt;

use bytes::Bytes;

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
    /// Its server shut down (told to users on other nodes of a cluster;
    /// users on the same node are all leaving too, and are told nothing).
    Shutdown,
    /// Its node of a cluster stopped without saying goodbye (told by the
    /// node that noticed, to everyone).
    NodeLost,
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
            LeaveReason::NodeLost => "node lost",
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
    /// the client's address has too many connections open, or opened too
    /// many in the last second; the server closes the connection.
    TooManyConnections,
}

impl ErrorCode {
    /// Every code (the metrics list each, at 0 until it is first sent).
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::NameTaken,
        ErrorCode::BadName,
        ErrorCode::NoSuchUser,
        ErrorCode::EmptyMessage,
        ErrorCode::Usage,
        ErrorCode::TooLong,
        ErrorCode::ServerFull,
        ErrorCode::TooManyConnections,
    ];

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
            ErrorCode::TooManyConnections => "too-many-connections",
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
            "too-many-connections" => ErrorCode::TooManyConnections,
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
/// server passes user text through [`visible`](super::visible) before building one.
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

/// Appends `who NAME` (with `\n`): one line of the reply to `who`,
/// without building a [`ServerLine::WhoItem`] for it.
fn encode_who_item<W: std::fmt::Write>(out: &mut W, name: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "who {name}");
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

    /// The line as sent, ready to be shared by all its recipients' queues.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.encode())
    }

    /// The whole reply to `who` for `names` (sorted by the caller): one
    /// `who NAME` line each, then `ok who: N online`, as one buffer so it
    /// reaches the asker in one piece.
    pub fn encode_who(names: &[String]) -> Bytes {
        let mut out = String::with_capacity(names.len() * 24 + 24);
        for name in names {
            encode_who_item(&mut out, name);
        }
        ServerLine::WhoEnd { count: names.len() }.encode_into(&mut out);
        Bytes::from(out)
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
            ServerLine::WhoItem { name } => {
                encode_who_item(out, name);
                Ok(())
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error code reads back as itself, so a client can tell every
    /// refusal apart (cargo mutants: deleting any arm of `from_wire` went
    /// unnoticed). The match makes a new code fail to compile here until
    /// it is added to [`ErrorCode::ALL`].
    #[test]
    fn every_error_code_round_trips() {
        for code in ErrorCode::ALL {
            match code {
                ErrorCode::NameTaken
                | ErrorCode::BadName
                | ErrorCode::NoSuchUser
                | ErrorCode::EmptyMessage
                | ErrorCode::Usage
                | ErrorCode::TooLong
                | ErrorCode::ServerFull
                | ErrorCode::TooManyConnections => {}
            }
            let line = ServerLine::error(code, "why");
            let wire = line.encode();
            assert_eq!(
                ServerLine::parse(wire.trim_end()),
                Some(line),
                "{code} does not read back"
            );
        }
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
}
