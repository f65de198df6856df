//! imchat: a TCP chat server (`imd`) and client (`imc`) speaking the line
//! protocol of the seed tutorial (`who`, `rename|NAME`, `to|NAME|MSG`, and
//! plain lines as public messages), without the seed's crashes, races and
//! stalls. PROTOCOL.md describes the wire format in full.
//!
//! # Layout
//!
//! - [`protocol`]: lines in both directions as typed values; the only place
//!   the wire format is defined, shared by server and client.
//! - [`codec`]: newline framing with a length cap (server and client).
//! - [`outbox`]: the per-user outbound queue, bounded in bytes, and the
//!   writer that drains it in batches.
//! - [`registry`]: who is online, atomic renames, and fan-out.
//! - [`connection`]: one client's session: read, run commands, reply.
//! - [`net`]: socket settings both ends use (TCP keepalive).
//! - [`server`]: configuration, accept loop, limits, graceful shutdown.
//! - [`cluster`]: several nodes as one chat over Redis (`imd --redis`).
//! - [`client`]: an async client API used by every `imc` command.
//! - [`bench`]: `imc bench`, the fan-out load generator; [`bench::fanout`]
//!   is its open-loop pub/sub shape, which also speaks Redis and NATS.
//! - [`scenario`]: plain-text multi-client scenarios and their runner.
//! - [`cli`]: `imc`'s commands: one-shot commands and the REPL.

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod connection;
pub mod net;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod scenario;
pub mod server;
