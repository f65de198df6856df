//! Fuzzes the command parser (`Command::parse`, src/protocol/command.rs)
//! with any bytes, as the server sees them: a framed line made UTF-8 the
//! lossy way. Checks that parsing never panics and that each command
//! survives a round trip: encoding a parsed command and parsing that line
//! again (without its `\n`) gives the same command, for every line that
//! has no line break of its own. A `login|` line's password is part of
//! that check, and its `Debug` never shows the password.
#![no_main]

use imchat::protocol::{validate_name, visible, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let cmd = Command::parse(&line);
    let _ = visible(&line);
    let _ = validate_name(&line);
    if line.contains(['\n', '\r']) {
        return;
    }
    let wire = cmd.encode();
    assert!(wire.ends_with('\n'));
    assert_eq!(wire.matches('\n').count(), 1, "{cmd:?} encodes to {wire:?}");
    let again = Command::parse(&wire[..wire.len() - 1]);
    match (&cmd, &again) {
        // These encode to an empty line, which reads back as Empty.
        (Command::Empty | Command::Malformed(_), Command::Empty) => {}
        _ => assert_eq!(cmd, again, "{line:?} -> {wire:?}"),
    }
    if let Command::Login { password, .. } = &cmd {
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
    }
});
