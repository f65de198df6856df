//! Passwords on imc's side: where they come from, and where they may go.
//!
//! A password never appears on imc's command line (there is no
//! `--password` flag, so it cannot show in `ps` or in shell history): it
//! comes from `IMC_PASSWORD`, or, in the REPL, from a prompt that does not
//! echo and reads the terminal directly, past the line editor and its
//! history. It is sent only as one `login|NAME|PASSWORD` line, and only
//! where [`password_may_be_sent`] allows.

use std::net::IpAddr;

use crate::client::api::Unsendable;
use crate::client::{Client, ClientError};

/// The variable imc reads a password from.
pub const PASSWORD_ENV: &str = "IMC_PASSWORD";

/// Whether a password may go to a server at `server` over a connection
/// that is encrypted (`tls`) or not. In plain text only to this machine
/// (a loopback address), where nobody else can read the wire.
pub fn password_may_be_sent(server: IpAddr, tls: bool) -> bool {
    tls || server.is_loopback()
}

/// The password in `IMC_PASSWORD`, if it is set and not empty.
pub fn from_env() -> Option<String> {
    std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty())
}

/// Asks for a password on the terminal without echoing it.
///
/// Echo is turned off *before* the prompt is shown: rpassword prints its
/// prompt first and only then turns echo off, so a password typed (or
/// pasted, or sent by a test) the moment the prompt appears could be
/// echoed in that gap. rpassword then reads with its own terminal settings
/// and puts back ours (echo still off); [`EchoOff`] puts back the original.
pub fn prompt(name: &str) -> std::io::Result<String> {
    let _quiet = EchoOff::on_tty();
    rpassword::prompt_password(format!("password for {name}: "))
}

/// The terminal's settings before [`EchoOff::on_tty`] turned echo off,
/// restored on drop. Where there is no terminal it does nothing (rpassword
/// then reports the error).
struct EchoOff {
    tty: std::fs::File,
    saved: libc::termios,
}

impl EchoOff {
    fn on_tty() -> Option<EchoOff> {
        use std::os::fd::AsRawFd;
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `tty` is an open descriptor and `saved` is written by
        // tcgetattr before it is read (only when it returns 0).
        let saved = unsafe {
            if libc::tcgetattr(tty.as_raw_fd(), saved.as_mut_ptr()) != 0 {
                return None;
            }
            saved.assume_init()
        };
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: a valid descriptor and a termios read from it.
        if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &quiet) } != 0 {
            return None;
        }
        Some(EchoOff { tty, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `on_tty`; the settings are the ones read there.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

/// Logs `client` in as `name`, refusing to send the password in plain
/// text to anything but a loopback address.
pub async fn login(client: &mut Client, name: &str, password: &str) -> Result<(), ClientError> {
    let server = client.peer_addr().map(|a| a.ip());
    if !server.is_some_and(|ip| password_may_be_sent(ip, client.is_tls())) {
        return Err(ClientError::Unsendable(Unsendable::PlaintextPassword));
    }
    client.login(name, password).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain text only to loopback; with TLS anywhere.
    #[test]
    fn plaintext_passwords_go_only_to_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(password_may_be_sent(ip("127.0.0.1"), false));
        assert!(password_may_be_sent(ip("127.0.0.2"), false));
        assert!(password_may_be_sent(ip("::1"), false));
        assert!(!password_may_be_sent(ip("192.168.1.10"), false));
        assert!(!password_may_be_sent(ip("10.0.0.1"), false));
        assert!(!password_may_be_sent(ip("::"), false));
        assert!(!password_may_be_sent(ip("0.0.0.0"), false));
        assert!(!password_may_be_sent(ip("2001:db8::1"), false));
        assert!(password_may_be_sent(ip("192.168.1.10"), true));
        assert!(password_may_be_sent(ip("2001:db8::1"), true));
    }
}
