//! The server: configuration, the accept loop, limits and shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future, like mini-redis's
//! `server::run`, so the binary and the tests start servers the same way.
//! Per-connection errors stay inside the connection's task; accept errors
//! (e.g. out of file descriptors) are logged and backed off, never fatal and
//! never a busy loop (the seed spun at full CPU there).

pub mod admission;

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::connection::{serve_in_slot, Shared};
use crate::net::keep_alive;
use crate::protocol::{ErrorCode, ServerLine};

/// Server limits. Every resource a client can make the server spend is
/// bounded by one of these.
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest accepted line in bytes, without its line ending. 4096 is the
    /// seed's read buffer, so any line the seed could carry whole still fits.
    pub max_line: usize,
    /// Bytes a user may have queued toward it before it is disconnected as
    /// too slow. 1 MiB is what Redis (pub/sub soft limit) and InspIRCd use:
    /// enough to ride out a pause of a healthy client, small enough that a
    /// frozen one costs little.
    pub queue_bytes: usize,
    /// All output queued for all users together, in bytes (each line
    /// charged its length plus [`crate::outbox::LINE_COST`]). Over it,
    /// users that are not reading are cut first and senders wait; a user
    /// that is reading is never cut for it (see [`crate::outbox::Budget`]).
    /// 512 MiB, Redis's `maxmemory-clients` idea: without it, 10,000 users
    /// that stop reading could hold 10 GiB.
    pub max_queued_bytes: usize,
    /// Disconnect users silent for longer than this; `None` turns it off.
    /// 300 s is the tutorial's own next step after v0.7.
    pub idle_timeout: Option<Duration>,
    /// Most simultaneous connections; one more is told the server is full.
    pub max_connections: usize,
    /// Presence notices are sent only while at most this many are online
    /// (see [`crate::registry::Registry`]).
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
    /// How long a closing connection may take to flush its queue, at
    /// shutdown or after an idle kick, before it is dropped.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_line: 4096,
            queue_bytes: 1024 * 1024,
            max_queued_bytes: 512 * 1024 * 1024,
            idle_timeout: Some(Duration::from_secs(300)),
            max_connections: 10_000,
            presence_limit: 1000,
            shutdown_grace: Duration::from_secs(5),
            stall_timeout: Duration::from_millis(1000),
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

/// Shortest and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves clients from `listener` until `shutdown` completes, then tells
/// every user, flushes their queues (each within
/// [`Config::shutdown_grace`]) and returns once every connection has ended.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future) {
    run_with(listener, config, None, shutdown).await
}

/// [`run`] for a node of a cluster: `cluster` (from
/// [`Cluster::connect`]) links it to the other nodes through Redis.
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    cluster: Option<Arc<Cluster>>,
    shutdown: impl Future,
) {
    let grace = config.shutdown_grace;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let max_connections = config.max_connections;
    let shared = Arc::new(Shared::with_cluster(config, cluster.clone()));
    if let Some(c) = &cluster {
        c.start(shared.clone());
    }
    let stop = CancellationToken::new();
    tokio::spawn(give_back_memory(shared.clone(), stop.clone()));
    let tracker = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut refused = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF.0;
                pair
            }
            Err(e) => {
                tracing::error!("accept failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        keep_alive(&stream);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                let stop = stop.clone();
                tracker.spawn(async move {
                    let (r, w) = stream.into_split();
                    serve_in_slot(r, w, addr, shared, stop, permit).await;
                });
            }
            Err(_) => {
                refused.note(addr, max_connections);
                refuse_full(stream, max_connections);
            }
        }
    }
    tracing::info!("shutting down: telling {} users", shared.registry.len());
    drop(listener);
    stop.cancel();
    tracker.close();
    // Each connection bounds its own flush by `grace`; this is a backstop.
    let _ = tokio::time::timeout(grace * 2, tracker.wait()).await;
    if let Some(c) = &cluster {
        c.shutdown(&shared).await;
    }
}

/// Queued output that counts as a storm worth giving memory back after.
const STORM_BYTES: usize = 32 * 1024 * 1024;

/// Gives memory back to the system after a storm of queued output (many
/// users not reading): glibc's malloc keeps freed memory for reuse, so a
/// storm that peaked at 205 MB left 139 MB behind. Every 250 ms this
/// samples the queued total; once it has been over [`STORM_BYTES`] and has
/// fallen to a quarter of its peak, `malloc_trim` returns the free pages.
/// (mimalloc gave memory back by itself but cost 900 bytes more per idle
/// connection, BENCHMARKS.md target 4.)
async fn give_back_memory(shared: Arc<Shared>, stop: CancellationToken) {
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let used = shared.budget.used();
        peak = peak.max(used);
        if peak >= STORM_BYTES && used <= peak / 4 {
            // Trimming a large heap walks it all: off the async workers,
            // so that clients are not kept waiting meanwhile.
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::info!(
                peak,
                used,
                "gave memory back after a storm of queued output"
            );
            peak = used;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory at the top of glibc's
    // heaps and in its free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Tells a connection over the limit why it is refused and closes it at
/// once, without a task or a timer: one non-blocking write of one short line
/// into a fresh socket's empty buffer, then close. A flood of connections
/// past the limit therefore holds no socket and no memory beyond the accept
/// itself (mini-redis waits for a permit before accepting instead, which
/// leaves the refused client hanging with no answer). Lines the client sent
/// first are discarded; on Linux the client can still read the error line
/// before the reset.
fn refuse_full(stream: TcpStream, max: usize) {
    let line = ServerLine::error(
        ErrorCode::ServerFull,
        format!("server is full ({max} connections); try again later"),
    );
    if let Ok(mut stream) = stream.into_std() {
        // Non-blocking: if the buffer were somehow full, the line is dropped.
        let _ = stream.write_all(line.encode().as_bytes());
    }
}

/// Refused connections, logged at most once a second so that a flood of
/// them cannot flood the log too.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<std::time::Instant>,
}

impl Refusals {
    fn note(&mut self, addr: std::net::SocketAddr, max: usize) {
        self.since_log += 1;
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            %addr,
            refused = self.since_log,
            "refused: server full ({max} connections)"
        );
        self.since_log = 0;
        self.last_log = Some(now);
    }
}
