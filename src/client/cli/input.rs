//! Lines of stdin, read on a plain thread and handed over through a channel.
//!
//! Why not `tokio::io::stdin`: tokio reads stdin with a blocking read that
//! cannot be cancelled, and the runtime waits for it on shutdown, so `imc`
//! could not exit (say, when the server goes away) until the user pressed
//! Enter. A detached `std::thread` does not hold up the exit of the process.

use std::io::{self, BufRead};

use tokio::sync::mpsc;

/// Lines buffered ahead of the consumer. Small, so a fast producer (a big
/// file piped in) waits for the server instead of filling memory.
const AHEAD: usize = 16;

/// Starts reading stdin; each line arrives without its `\n` / `\r\n`.
/// Invalid UTF-8 is replaced (U+FFFD) rather than refused: the rest of a
/// log line is usually worth sending. The channel closes at end of input;
/// a read error is delivered once, then the channel closes.
pub fn stdin_lines() -> mpsc::Receiver<io::Result<String>> {
    let (tx, rx) = mpsc::channel(AHEAD);
    std::thread::spawn(move || {
        let stdin = io::stdin();
        let mut lock = stdin.lock();
        loop {
            let line = read_line(&mut lock).transpose();
            let Some(line) = line else { break };
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// Reads one line (without its terminator) from `r`; `None` at end of input.
pub fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    if r.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}
