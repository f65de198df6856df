//! Client lines: what a client sends, parsed by the server and built by
//! the client with the same type.
//!
//! ```text
//! who                     list online users
//! rename|NAME             change your name
//! to|NAME|MESSAGE         whisper MESSAGE to NAME (MESSAGE may contain '|')
//! login|NAME|PASSWORD     take the registered NAME (PASSWORD: everything
//!                         after the second '|', may contain '|')
//! anything else           public message to everyone, sender included
//! (empty line)            ignored
//! ```

/// A line sent by a client, borrowed from the received line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `who`: list online users.
    Who,
    /// `rename|NAME`: NAME is everything after the first `|`, unvalidated.
    Rename(&'a str),
    /// `to|NAME|MESSAGE`: MESSAGE is everything after the second `|`.
    Whisper { to: &'a str, text: &'a str },
    /// `login|NAME|PASSWORD`: PASSWORD is everything after the second `|`
    /// (possibly empty, which simply fails). Never a public message, so a
    /// password can never be broadcast, even to a server without accounts.
    Login {
        name: &'a str,
        password: Password<'a>,
    },
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
/// Usage text for `login`, sent with `error usage`.
pub const LOGIN_USAGE: &str = "login|NAME|PASSWORD";

/// A password as received. Its `Debug` shows nothing, so that no `{:?}`
/// of a command, at any log level, can put a password in a log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Password<'a>(pub &'a str);

impl<'a> Password<'a> {
    /// The password itself, for checking it and nothing else.
    pub fn expose(&self) -> &'a str {
        self.0
    }
}

impl std::fmt::Debug for Password<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl<'a> Command<'a> {
    /// Parses one line (without its line terminator). Never fails: anything
    /// that is not a command is a public message.
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
        if let Some(rest) = line.strip_prefix("login|") {
            return match rest.split_once('|') {
                Some((name, password)) if !name.is_empty() => Command::Login {
                    name,
                    password: Password(password),
                },
                _ => Command::Malformed(LOGIN_USAGE),
            };
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
            Command::Login { name, password } => format!("login|{name}|{}\n", password.0),
            Command::Say(text) => format!("{text}\n"),
            Command::Empty | Command::Malformed(_) => "\n".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands() {
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
    fn login_takes_everything_after_the_second_bar_as_the_password() {
        assert_eq!(
            Command::parse("login|alice|p|w d"),
            Command::Login {
                name: "alice",
                password: Password("p|w d")
            }
        );
        assert_eq!(
            Command::parse("login|alice|"),
            Command::Login {
                name: "alice",
                password: Password("")
            }
        );
        assert_eq!(
            Command::parse("login|alice"),
            Command::Malformed(LOGIN_USAGE)
        );
        assert_eq!(Command::parse("login|"), Command::Malformed(LOGIN_USAGE));
        assert_eq!(Command::parse("login||pw"), Command::Malformed(LOGIN_USAGE));
        assert_eq!(
            Command::parse("login alice pw"),
            Command::Say("login alice pw")
        );
        let cmd = Command::parse("login|alice|hunter2");
        assert_eq!(cmd.encode(), "login|alice|hunter2\n");
        assert!(!format!("{cmd:?}").contains("hunter2"), "{cmd:?}");
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
}
