//! The server side: everything `imd` runs, and nothing of the client's.
//!
//! A public line goes, top to bottom: [`listener`] accepts the socket and
//! spawns a [`connection`], which frames and parses the line and calls the
//! [`hub`]; the hub pushes it into each recipient's [`outbox`] (and, in a
//! [`cluster`], publishes it for the other nodes), whose writer task
//! writes it to that recipient's socket.
//!
//! - [`config`]: the limits, each with the reason for its default.
//! - [`listener`]: the accept loop, the connection limit, shutdown.
//! - [`admission`]: limits per client address (`--max-per-ip`,
//!   `--max-connects-per-ip`).
//! - [`accounts`]: registered names (`--accounts`): the file, password
//!   checks off the async workers, reload; [`throttle`]: the brake on
//!   failed logins per address.
//! - [`tls`]: the TLS handshake (`--tls-cert`) in each connection's task,
//!   and the TLS writer the outbox writes to.
//! - [`connection`]: one client's session: read, parse, call the hub,
//!   reply; [`line_rate`]: the flood control it applies to what it reads.
//! - [`hub`]: who is online, the protocol's operations, fan-out.
//! - [`outbox`]: the per-user queue, bounded in bytes, and its writer;
//!   [`pace`]: how often that writer writes (`--write-interval-ms`), which
//!   keeps fan-out's cost per line from growing with the cores.
//! - [`cluster`]: several nodes as one chat over Redis (`imd --redis`),
//!   plugged in behind the hub.
//! - [`metrics`]: what the server counts, and `GET /metrics` for
//!   Prometheus (`imd --metrics`).
//!
//! Modules depend downwards only: listener → (tls →) connection → hub →
//! cluster, metrics, outbox → pace; none of them imports from the client side.

pub mod accounts;
pub mod admission;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod hub;
pub mod line_rate;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod pace;
pub mod throttle;
pub mod tls;

pub use config::Config;
pub use listener::{run, run_in_cluster, run_with, Options};
