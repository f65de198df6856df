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
//! login|NAME|PASSWORD     take a registered name (imd --accounts)
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
//! ok login: you are now NAME    your login worked
//! who NAME                      one online user (reply to `who`) ...
//! ok who: N online              ... and the end of that reply
//! error CODE: MESSAGE           your line was refused; CODE is stable
//! *** welcome, you are NAME (...)   first line on connect
//! *** NAME is online
//! *** NAME is offline (REASON)
//! *** OLD is now known as NEW
//! *** renamed: you are now ADDR (NAME ...)   your name's owner logged in
//! *** bye: REASON               last line before the server closes
//! *** cluster: TEXT             news about this node's link to the others
//! ```
//!
//! # Layout
//!
//! - [`codec`]: newline framing with a length cap.
//! - `command`: client lines, [`Command`].
//! - `server_line`: server lines, [`ServerLine`], and the codes and
//!   reasons they carry.
//! - `text`: names and the safety of user text on a terminal.

pub mod codec;
mod command;
mod server_line;
mod text;

pub use command::{Command, Password, LOGIN_USAGE, RENAME_USAGE, WHISPER_USAGE};
pub use server_line::{encode_public, ErrorCode, LeaveReason, ServerLine};
pub use text::{
    chosen_name, is_unsafe_char, lookup_key, name_key, nfc, validate_name, visible, NameError,
    MAX_HELD_NAME_CHARS, MAX_NAME_CHARS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
