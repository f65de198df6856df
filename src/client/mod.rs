//! The client side: everything `imc` runs, and nothing of the server's.
//!
//! - [`api`]: an async client for one connection, used by every `imc`
//!   command, the scenario runner and the tests: one method per request,
//!   each waiting for its own reply.
//! - [`cli`]: `imc`'s command line: flags, exit codes, the one-shot
//!   commands, `listen`, and the REPL.
//! - [`bench`](mod@bench): `imc bench`, the fan-out load generators.
//! - [`scenario`]: plain-text multi-client scenarios and their runner
//!   (`imc scenario`, and the tests).
//! - [`tls`]: what a TLS client trusts, and a connection's halves with or
//!   without TLS.
//!
//! It shares only [`crate::protocol`] with the server.

pub mod api;
pub mod bench;
pub mod cli;
pub mod scenario;
pub mod tls;

pub use api::{Client, ClientError, Event, MAX_PENDING_EVENTS};
