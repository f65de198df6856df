//! imchat: a TCP chat server (`imd`) and client (`imc`) speaking a small
//! line protocol (`who`, `rename|NAME`, `to|NAME|MSG`, `login|NAME|PASSWORD`
//! for registered names, and plain lines as public messages). PROTOCOL.md
//! describes the wire format in full.
//!
//! # Layout
//!
//! The folders are the architecture: one protocol, and two sides that
//! share it and nothing else.
//!
//! - [`protocol`]: lines in both directions as typed values, and their
//!   framing; the only place the wire format is defined.
//! - [`net`]: socket settings both ends use (TCP keepalive).
//! - [`man`]: both binaries' man pages, from their clap definitions.
//! - [`tty`]: asking for a password on the terminal without echo (imc's
//!   REPL, `imd hash-password`).
//! - [`server`]: `imd`. The accept loop, each connection's session, the
//!   [`server::hub`] that owns who is online and fans lines out, the
//!   per-user outbox, and the optional cluster link behind the hub.
//! - [`client`]: `imc`. The async client API, the command line and the
//!   REPL, the fan-out benchmarks, the scenario runner. Behind the default
//!   `client` feature, so the server alone builds without the client's
//!   crates.
//!
//! Nothing under `server` imports from `client`.

pub mod man;
pub mod net;
pub mod protocol;
pub mod server;
pub mod tty;

#[cfg(feature = "client")]
pub mod client;
