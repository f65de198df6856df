//! Fuzzes what a client does with the server's lines
//! (`ServerLine::parse`, src/protocol/server_line.rs) with any bytes, as
//! imc sees them from a server it cannot trust: a framed line made UTF-8
//! the lossy way. Checks that parsing never panics, that whatever parses
//! encodes to one line that parses back to the same thing, and that what
//! imc prints of it (`visible`) holds no control character but tab.
#![no_main]

use imchat::protocol::{is_unsafe_char, visible, ServerLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let shown = visible(&line);
    assert!(!shown.chars().any(is_unsafe_char), "{line:?} shows as {shown:?}");
    if line.contains(['\n', '\r']) {
        let _ = ServerLine::parse(&line);
        return;
    }
    let Some(parsed) = ServerLine::parse(&line) else {
        return;
    };
    let wire = parsed.encode();
    assert!(wire.ends_with('\n'));
    assert_eq!(wire.matches('\n').count(), 1, "{parsed:?} encodes to {wire:?}");
    let again = ServerLine::parse(&wire[..wire.len() - 1]);
    assert_eq!(again.as_ref(), Some(&parsed), "{line:?} -> {wire:?}");
});
