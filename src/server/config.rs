//! The server's limits: every resource a client can make the server spend
//! is bounded by one of these, and each says why its default is what it is.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::accounts::Accounts;
use super::admission::Limits;
use super::tls::Tls;

/// Server limits. Every resource a client can make the server spend is
/// bounded by one of these.
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest accepted line in bytes, without its line ending. 4096 is
    /// the read buffer of the protocol's original clients (PROTOCOL.md), so
    /// any line they send whole fits.
    pub max_line: usize,
    /// Bytes a user may have queued toward it before it is disconnected as
    /// too slow. 1 MiB is what Redis (pub/sub soft limit) and InspIRCd use:
    /// enough to ride out a pause of a healthy client, small enough that a
    /// frozen one costs little.
    pub queue_bytes: usize,
    /// All output queued for all users together, in bytes (each line
    /// charged its length plus [`LINE_COST`](super::outbox::LINE_COST)). Over it,
    /// users that are not reading are cut first and senders wait; a user
    /// that is reading is never cut for it (see [`Budget`](super::outbox::Budget)).
    /// 512 MiB, Redis's `maxmemory-clients` idea: without it, 10,000 users
    /// that stop reading could hold 10 GiB.
    pub max_queued_bytes: usize,
    /// Disconnect users silent for longer than this; `None` turns it off.
    /// 300 s: five minutes, long enough for a person thinking, short enough
    /// that abandoned connections do not pile up.
    pub idle_timeout: Option<Duration>,
    /// Most simultaneous connections; one more is told the server is full.
    pub max_connections: usize,
    /// Speak TLS on the listener (`--tls-cert`, `--tls-key`); `None`, the
    /// default, is plaintext as the protocol always was.
    pub tls: Option<Tls>,
    /// Limits per client address (connections open at once, new
    /// connections a second). None by default: behind a NAT many users
    /// share one address, and a server with no limits configured behaves
    /// as the protocol always has; README's "On a network" gives values.
    pub per_ip: Limits,
    /// Most lines a second each user may send (`--max-lines-per-sec`),
    /// with a second's worth at once; more are not refused but read later
    /// (see [`line_rate`](super::line_rate)). None by default: scripts and
    /// benches that send fast keep the speed the protocol always allowed;
    /// README's "On a network" gives a value for public servers.
    pub max_lines_per_sec: Option<NonZeroU32>,
    /// Presence notices are sent only while at most this many are online
    /// (see [`Hub`](super::hub::Hub)).
    pub presence_limit: usize,
    /// Backpressure: a sender whose line left a reader's queue over half
    /// full waits (without reading more) until that queue drains, so a
    /// flooding sender is slowed to its slowest reader's pace rather than
    /// the reader being cut off. A reader counts as not reading, and then
    /// holds nobody up and is cut once its queue is full, when a write to
    /// it has waited this long with the peer acknowledging no data at all.
    /// 1 s: on loopback the acknowledgements of a reader taking 1 MB/s come
    /// in steps of about 200 KB, up to a quarter second apart, so a shorter
    /// bound would call slow but steady readers frozen.
    pub stall_timeout: Duration,
    /// Under a steady flow of lines, the least time between two writes to
    /// one user's socket, so that each write carries every line that came
    /// meanwhile (see [`paced_outbox`](super::outbox::paced_outbox)):
    /// the cost of fan-out then depends on the load, not on how many cores
    /// are idle. The first line after a quiet spell is written at once.
    /// 5 ms: on the fan-out bench (BENCHMARKS.md) it halves the server's
    /// CPU per delivery at 1–5 M deliveries/s, where p99 latency stays
    /// under 14 ms, and no person notices 5 ms in a chat.
    pub write_interval: Duration,
    /// How long a closing connection may take to flush its queue, at
    /// shutdown or after an idle kick, before it is dropped.
    pub shutdown_grace: Duration,
    /// Registered names (`--accounts`), shared with whoever reloads them
    /// on SIGHUP. `None`: the anonymous mode, where every name is free to
    /// take and `login` always fails.
    pub accounts: Option<Arc<Accounts>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_line: 4096,
            queue_bytes: 1024 * 1024,
            max_queued_bytes: 512 * 1024 * 1024,
            idle_timeout: Some(Duration::from_secs(300)),
            max_connections: 10_000,
            tls: None,
            per_ip: Limits::NONE,
            max_lines_per_sec: None,
            presence_limit: 1000,
            shutdown_grace: Duration::from_secs(5),
            stall_timeout: Duration::from_millis(1000),
            write_interval: Duration::from_millis(5),
            accounts: None,
        }
    }
}

impl Config {
    /// How much of one over-long line the server skips before deciding the
    /// peer is not sending lines at all and disconnecting it: 16 times the
    /// line limit, and at least 64 KiB.
    pub fn discard_limit(&self) -> usize {
        (self.max_line * 16).max(64 * 1024)
    }
}
