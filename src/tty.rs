//! Asking for a password on the terminal without echoing it: imc's REPL
//! when a name is registered, and `imd hash-password` at a terminal.
//!
//! Both binaries use this one helper, which needs nothing but libc (the
//! server links libc anyway), so `imd` asks without the client's crates
//! and a fix here fixes both. It talks to the process's terminal
//! (`/dev/tty`) directly, not stdin and stdout, as `passwd` and `ssh` do:
//! the prompt shows even when stdout is a pipe, and the password never
//! goes through a line editor or its history.
//!
//! Echo is turned off *before* the prompt is shown, so a password typed
//! (or pasted) the moment the prompt appears cannot be echoed, and put
//! back when the line has been read (also on an error). The kernel's line
//! editing stays on: Backspace works, Enter ends the line and, with
//! `ECHONL`, still moves to the next line. Ctrl-C keeps its usual meaning
//! (the process is interrupted; shells put the terminal's settings back
//! after a program killed by a signal).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

/// Shows `prompt` on the terminal and reads one line there without
/// echoing it; returns it without its line ending. Ctrl-D on an empty
/// line gives an empty string (callers treat that as "no password"). An
/// error if the process has no terminal.
pub fn read_hidden(prompt: &str) -> io::Result<String> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let quiet = EchoOff::on(&tty)?;
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    let mut line = String::new();
    // In canonical mode a read returns at most one line, so the buffer
    // holds nothing past this line.
    BufReader::new(&tty).read_line(&mut line)?;
    drop(quiet);
    match line.strip_suffix('\n') {
        Some(l) => line = l.strip_suffix('\r').unwrap_or(l).to_string(),
        // Ended by Ctrl-D, not Enter: nothing moved to the next line.
        None => (&tty).write_all(b"\n")?,
    }
    Ok(line)
}

/// A terminal's settings before [`EchoOff::on`] turned echo off, put back
/// on drop.
struct EchoOff<'a> {
    tty: &'a File,
    saved: libc::termios,
}

impl<'a> EchoOff<'a> {
    fn on(tty: &'a File) -> io::Result<EchoOff<'a>> {
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `tty` is an open descriptor and `saved` is written by
        // tcgetattr before it is read (only when it returns 0).
        let saved = unsafe {
            if libc::tcgetattr(tty.as_raw_fd(), saved.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            saved.assume_init()
        };
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: a valid descriptor and a termios read from it.
        if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { tty, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `on`; the settings are the ones read there.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}
