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
use crate::protocol::{visible, ErrorCode};

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

/// Asks for `name`'s password on the terminal without echoing it (see
/// [`crate::tty`], which `imd hash-password` uses too).
pub fn prompt(name: &str) -> std::io::Result<String> {
    crate::tty::read_hidden(&format!("password for {name}: "))
}

/// `--name NAME` without `IMC_PASSWORD`, refused because NAME is
/// registered: the server's words (`use login|NAME|PASSWORD`) tell a
/// protocol user what to send, but an imc user needs to hear how imc logs
/// in. Other errors pass through; the code, and so the exit status (1),
/// stays the same.
pub fn explain_registered(name: &str, e: ClientError) -> ClientError {
    match e {
        ClientError::Refused {
            code: ErrorCode::NameRegistered,
            ..
        } => ClientError::Refused {
            code: ErrorCode::NameRegistered,
            message: format!(
                "'{}' is a registered name: set {PASSWORD_ENV} to log in as it (or run \
                 `imc repl --name {0}` at a terminal, which asks for the password)",
                visible(name)
            ),
        },
        e => e,
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
