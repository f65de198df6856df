//! The accept loop, the connection limits, and graceful shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future, like mini-redis's
//! `server::run`, so the binary and the tests start servers the same way.
//! With TLS ([`Config::tls`]), the handshake too runs in the connection's
//! task ([`super::tls::serve`]), never here, so a client that stalls it
//! holds up nobody else's accept.
//! Per-connection errors stay inside the connection's task; accept errors
//! (e.g. out of file descriptors) are logged and backed off, never fatal and
//! never a busy loop.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Admission;
use super::cluster::Cluster;
use super::connection::serve_in_slot;
use super::hub::Hub;
use super::outbox::{Budget, STORM_BYTES};
use super::Config;
use crate::net::keep_alive;
use crate::protocol::{ErrorCode, ServerLine};

/// Shortest and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves clients from `listener` until `shutdown` completes, then tells
/// every user, flushes their queues (each within
/// [`Config::shutdown_grace`]) and returns once every connection has ended.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future) {
    run_in_cluster(listener, config, None, shutdown).await
}

/// [`run`] for a node that may be one of several: `cluster` (from
/// [`Cluster::connect`]) links it to the other nodes through Redis.
pub async fn run_in_cluster(
    listener: TcpListener,
    config: Config,
    cluster: Option<Arc<Cluster>>,
    shutdown: impl Future,
) {
    let options = Options {
        cluster,
        ..Options::default()
    };
    run_with(listener, config, options, shutdown).await
}

/// What a node runs besides its chat listener; each is optional.
#[derive(Default)]
pub struct Options {
    /// The link to the other nodes of a cluster (from [`Cluster::connect`]).
    pub cluster: Option<Arc<Cluster>>,
    /// A bound listener for `GET /metrics` (`imd --metrics`), served until
    /// shutdown begins.
    pub metrics: Option<TcpListener>,
}

/// [`run`] with everything [`Options`] adds.
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    options: Options,
    shutdown: impl Future,
) {
    let Options { cluster, metrics } = options;
    let grace = config.shutdown_grace;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let max_connections = config.max_connections;
    let admission = Admission::new(config.per_ip);
    let tls = config.tls.clone();
    let hub = Hub::new(config, cluster);
    hub.start();
    let stop = CancellationToken::new();
    tokio::spawn(give_back_memory(
        hub.budget().clone(),
        stop.clone(),
        malloc_trim,
    ));
    if let Some(metrics) = metrics {
        tokio::spawn(super::metrics::http::serve(
            metrics,
            hub.clone(),
            stop.clone(),
        ));
    }
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let why = format!("server is full ({max_connections} connections); try again later");
            refused.note(addr, ErrorCode::ServerFull, &why);
            hub.metrics().error_sent(ErrorCode::ServerFull);
            refuse(stream, ErrorCode::ServerFull, why, tls.is_some());
            continue;
        };
        let ticket = match admission.admit(addr.ip()) {
            Ok(ticket) => ticket,
            Err(why) => {
                let why = why.to_string();
                refused.note(addr, ErrorCode::TooManyConnections, &why);
                hub.metrics().error_sent(ErrorCode::TooManyConnections);
                refuse(stream, ErrorCode::TooManyConnections, why, tls.is_some());
                continue;
            }
        };
        let hub = hub.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            // The slot and the address's place are held while the user is
            // online (and, with TLS, during the handshake).
            let slot = (permit, ticket);
            match tls {
                None => {
                    let (r, w) = stream.into_split();
                    serve_in_slot(r, w, addr, hub, stop, slot).await;
                }
                // Boxed: a task's future is as large as its largest
                // branch, and the TLS one (the handshake, rustls's
                // connection state) would otherwise cost every plaintext
                // connection about 1 KB (BENCHMARKS.md target 4).
                Some(tls) => Box::pin(super::tls::serve(tls, stream, addr, hub, stop, slot)).await,
            }
        });
    }
    tracing::info!("shutting down: telling {} users", hub.len());
    drop(listener);
    stop.cancel();
    tracker.close();
    // Each connection bounds its own flush by `grace`; this is a backstop.
    let _ = tokio::time::timeout(grace * 2, tracker.wait()).await;
    hub.stop().await;
}

/// Gives memory back to the system after a storm of queued output (many
/// users not reading): glibc's malloc keeps freed memory for reuse, so a
/// storm that peaked at 205 MB left 139 MB behind. Once the queued total
/// has passed [`STORM_BYTES`] ([`Budget::storm`]), this samples it every
/// 250 ms; when it has fallen to a quarter of its peak, `trim` (glibc's
/// `malloc_trim`) returns the free pages, and the watch goes back to sleep
/// until the next storm. No timer runs while the server is quiet: an idle
/// server is not woken four times a second, and a test that sleeps a day
/// of paused time is not stepped through 345,600 ticks. (mimalloc gave
/// memory back by itself but cost 900 bytes more per idle connection,
/// BENCHMARKS.md target 4.)
async fn give_back_memory(budget: Arc<Budget>, stop: CancellationToken, trim: fn()) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = budget.storm() => {}
        }
        let mut peak = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let used = budget.used();
            peak = peak.max(used);
            if peak < STORM_BYTES {
                // Woken for a storm that had already passed (its notice
                // kept while the last one was watched).
                break;
            }
            if used <= peak / 4 {
                // Trimming a large heap walks it all: off the async
                // workers, so that clients are not kept waiting meanwhile.
                let _ = tokio::task::spawn_blocking(trim).await;
                tracing::info!(
                    peak,
                    used,
                    "gave memory back after a storm of queued output"
                );
                if used < STORM_BYTES {
                    break;
                }
                peak = used;
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_trim() {
    // SAFETY: malloc_trim only releases free memory at the top of glibc's
    // heaps and in its free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_trim() {}

/// Tells a connection over the limit why it is refused and closes it at
/// once, without a task or a timer: one non-blocking write of one short line
/// into a fresh socket's empty buffer, then close. A flood of connections
/// past the limit therefore holds no socket and no memory beyond the accept
/// itself (mini-redis waits for a permit before accepting instead, which
/// leaves the refused client hanging with no answer). Lines the client sent
/// first are discarded; on Linux the client can still read the error line
/// before the reset.
///
/// On a TLS port (`tls`) the connection is closed without a word: the line
/// would be plaintext that a TLS client reads as a broken handshake, and
/// a TLS handshake per refused connection is the cost a flood must not
/// impose. The refusal is still logged.
fn refuse(stream: TcpStream, code: ErrorCode, why: String, tls: bool) {
    if tls {
        return;
    }
    let line = ServerLine::error(code, why);
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
    fn note(&mut self, addr: std::net::SocketAddr, code: ErrorCode, why: &str) {
        self.since_log += 1;
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(%addr, refused = self.since_log, "refused: {code}: {why}");
        self.since_log = 0;
        self.last_log = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::server::outbox::outbox;

    static TRIMS: AtomicUsize = AtomicUsize::new(0);

    fn count_trim() {
        TRIMS.fetch_add(1, Ordering::SeqCst);
    }

    /// Memory is given back once a storm of queued output has passed (its
    /// total fallen to a quarter of its peak), not while it lasts, and not
    /// on a quiet server, however long it runs.
    #[tokio::test(start_paused = true)]
    async fn memory_is_given_back_after_a_storm_only() {
        let budget = Budget::new(usize::MAX);
        let stop = CancellationToken::new();
        let watch = tokio::spawn(give_back_memory(budget.clone(), stop.clone(), count_trim));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            TRIMS.load(Ordering::SeqCst),
            0,
            "quiet: nothing to give back"
        );

        // A reader that takes nothing: 40 MiB wait for it.
        let (ob, drain) = outbox(1 << 30, Duration::from_secs(3600), budget.clone());
        let mib = Bytes::from(vec![b'x'; 1 << 20]);
        for _ in 0..40 {
            assert!(ob.push(mib.clone()));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0, "the storm lasts");

        // It reads at last: the queue drains, and the memory goes back.
        let writer = tokio::spawn(drain.write_to(tokio::io::sink()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(budget.used(), 0);
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "given back once");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "and not again");

        drop(ob);
        let _ = writer.await;
        stop.cancel();
        watch.await.unwrap();
    }
}
