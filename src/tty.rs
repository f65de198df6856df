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
//! `ECHONL`, still moves to the next line.
//!
//! Ctrl-C (and Ctrl-\) keep their meaning, but the terminal is put back
//! first. Killed by the signal straight from the terminal, a program
//! would leave echo off for whatever runs next (bash and zsh repair that,
//! `sh`, a script or a parent program may not). So while the prompt waits,
//! the terminal's interrupt and quit characters end the line instead of
//! sending a signal (`ISIG` off, the characters made extra line ends,
//! `VEOL` and `VEOL2`); when a line ends with one, the settings are put
//! back, and only then does the process send itself SIGINT (or SIGQUIT),
//! which ends it as the key would have. Ctrl-Z does not suspend at the
//! prompt (a suspended prompt would leave echo off too); it is typed like
//! any other key.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
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
    let mut line = read_one_line(&tty)?;
    let interrupt = quiet.interrupted_by(&line);
    drop(quiet);
    if let Some(signal) = interrupt {
        (&tty).write_all(b"\n")?;
        // SAFETY: raise has no memory-safety preconditions. With the
        // default action the process ends here, as by the key itself.
        unsafe { libc::raise(signal) };
        // A handler caught it: the caller hears of it as an error.
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "interrupted at the password prompt",
        ));
    }
    match line.strip_suffix('\n') {
        Some(l) => line = l.strip_suffix('\r').unwrap_or(l).to_string(),
        // Ended by Ctrl-D, not Enter: nothing moved to the next line.
        None => (&tty).write_all(b"\n")?,
    }
    Ok(line)
}

/// One line from a terminal in canonical mode: one read returns at most
/// one line, ended by Enter, by the interrupt or quit character (see
/// [`EchoOff`]), or by Ctrl-D (without a line end; nothing at all on an
/// empty line). Reading on to a `\n` would wait past those ends.
fn read_one_line(mut tty: &File) -> io::Result<String> {
    // Above the kernel's own limit on a line (4095 bytes).
    let mut buf = [0u8; 8192];
    let n = loop {
        match tty.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    String::from_utf8(buf[..n].to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the line typed is not UTF-8"))
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
        quiet.c_lflag &= !(libc::ECHO | libc::ISIG);
        quiet.c_lflag |= libc::ECHONL;
        quiet.c_cc[libc::VEOL] = saved.c_cc[libc::VINTR];
        quiet.c_cc[libc::VEOL2] = saved.c_cc[libc::VQUIT];
        // SAFETY: a valid descriptor and a termios read from it.
        if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { tty, saved })
    }
}

impl EchoOff<'_> {
    /// The signal the key that ended `line` stands for: SIGINT for the
    /// terminal's interrupt character (Ctrl-C), SIGQUIT for its quit
    /// character (Ctrl-\\); `None` for Enter or Ctrl-D. A character the
    /// terminal has disabled (`_POSIX_VDISABLE`, 0) never counts.
    fn interrupted_by(&self, line: &str) -> Option<libc::c_int> {
        let last = *line.as_bytes().last()?;
        let key = |index: usize| {
            let c = self.saved.c_cc[index];
            c != 0 && c == last
        };
        if key(libc::VINTR) {
            Some(libc::SIGINT)
        } else if key(libc::VQUIT) {
            Some(libc::SIGQUIT)
        } else {
            None
        }
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `on`; the settings are the ones read there.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}
