//! The server's metrics for Prometheus (`imd --metrics ADDR`): the counters
//! the server keeps, and the collector that turns them into the Prometheus
//! text format at each scrape. [`http`] serves them as `GET /metrics`.
//! README ("Metrics") lists every metric, with a query per dashboard panel.
//!
//! # Counting costs the fan-out nothing
//!
//! Nothing shared is touched per delivery. Each connection's writer counts
//! the lines and bytes it wrote in its own outbox
//! ([`Tally`]), per write and per batch taken from
//! the queue, with a plain load and store; the reading side counts the
//! lines it reads the same way, in the connection's own [`Opened`]. A
//! scrape sums the counters of the open connections and adds those of the
//! closed ones, which each connection folds into [`Totals`] as it ends.
//! Rare events (an error line sent, a disconnect) go to shared atomics:
//! they happen per command or per connection, not per delivery. Gauges are
//! read at scrape time from the state the server keeps anyway: the hub's
//! users, the queued-bytes [`Budget`](super::outbox::Budget), the cluster
//! link ([`Source`]).
//!
//! The exposition itself is prometheus-client's (its Prometheus text
//! format 0.0.4 encoder, through a [`Collector`]), not written here.

pub mod http;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::outbox::{bump, Tally};
use crate::protocol::{ErrorCode, LeaveReason};

/// `code`'s place in [`ErrorCode::ALL`], the order `imd_errors_total`
/// lists them in (each from the start, at 0, so that `rate()` works before
/// the first one). A protocol test keeps `ALL` complete.
fn error_slot(code: ErrorCode) -> usize {
    ErrorCode::ALL.iter().position(|&c| c == code).unwrap_or(0)
}

/// The `reason` label of `imd_disconnects_total`, for each way a local
/// connection ends (the words of the offline notice, as label values).
const REASONS: [&str; 6] = ["quit", "idle", "too_slow", "flood", "error", "shutdown"];

/// `reason`'s place in [`REASONS`]; `None` for [`LeaveReason::NodeLost`],
/// which is about another node's users, never a connection of this one.
fn reason_slot(reason: LeaveReason) -> Option<usize> {
    Some(match reason {
        LeaveReason::Quit => 0,
        LeaveReason::Idle => 1,
        LeaveReason::TooSlow => 2,
        LeaveReason::Flood => 3,
        LeaveReason::Error => 4,
        LeaveReason::Shutdown => 5,
        LeaveReason::NodeLost => return None,
    })
}

/// The server's own counters; one per server, owned by the hub.
#[derive(Debug)]
pub struct Metrics {
    conns: Mutex<Conns>,
    /// Error lines sent, by [`error_slot`].
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Connections ended, by [`reason_slot`].
    disconnects: [AtomicU64; REASONS.len()],
    /// Times a sender was paused for its line rate (`--max-lines-per-sec`).
    rate_limited: AtomicU64,
}

/// The open connections' counters, and what the closed ones counted.
/// Locked once per connection opened or closed and once per scrape, never
/// per line.
#[derive(Debug, Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, Arc<ConnCounters>>,
    closed: Totals,
}

/// One connection's counters.
#[derive(Debug)]
struct ConnCounters {
    /// Lines read from the client; only its reading task adds to it.
    received: AtomicU64,
    /// What its writer wrote.
    written: Tally,
}

impl ConnCounters {
    fn totals(&self) -> Totals {
        Totals {
            connections: 1,
            lines_received: self.received.load(Ordering::Relaxed),
            deliveries: self.written.lines_written(),
            bytes_sent: self.written.bytes_written(),
            slow_consumers_cut: u64::from(self.written.cut_too_slow()),
        }
    }
}

/// Sums over connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Connections counted (for the open ones: `imd_connections`).
    pub connections: u64,
    /// Lines read from clients, commands included.
    pub lines_received: u64,
    /// Lines written to clients, one per line per recipient.
    pub deliveries: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Connections whose queue was cut because the reader stopped reading.
    pub slow_consumers_cut: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.connections += o.connections;
        self.lines_received += o.lines_received;
        self.deliveries += o.deliveries;
        self.bytes_sent += o.bytes_sent;
        self.slow_consumers_cut += o.slow_consumers_cut;
    }
}

/// A connection's place in the metrics while it is open. Dropping it (as
/// the session ends, after its writer has finished) adds its counts to
/// the closed connections' totals, so no count is lost or counted twice.
#[derive(Debug)]
pub struct Opened {
    metrics: Arc<Metrics>,
    id: u64,
    counters: Arc<ConnCounters>,
}

impl Opened {
    /// Counts one line read from the client.
    pub fn line_received(&self) {
        bump(&self.counters.received, 1);
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let mut conns = self.metrics.lock();
        conns.open.remove(&self.id);
        let mut done = self.counters.totals();
        done.connections = 0;
        conns.closed += done;
    }
}

impl Metrics {
    /// No connections yet, every count at zero.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics {
            conns: Mutex::new(Conns::default()),
            errors: Default::default(),
            disconnects: Default::default(),
            rate_limited: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Conns> {
        // Each critical section is one insert, remove or sum: a panic
        // cannot leave it half-done, so poisoning is ignored.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection whose outbox counts into `written`.
    pub fn open(self: &Arc<Self>, written: Tally) -> Opened {
        let counters = Arc::new(ConnCounters {
            received: AtomicU64::new(0),
            written,
        });
        let mut conns = self.lock();
        conns.next_id += 1;
        let id = conns.next_id;
        conns.open.insert(id, counters.clone());
        Opened {
            metrics: self.clone(),
            id,
            counters,
        }
    }

    /// Counts an error line sent to a client (or to a refused connection).
    pub fn error_sent(&self, code: ErrorCode) {
        self.errors[error_slot(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a local connection that ended for `reason`.
    pub fn disconnected(&self, reason: LeaveReason) {
        if let Some(slot) = reason_slot(reason) {
            self.disconnects[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a sender paused for going over its line rate: at most the
    /// rate per user and second, so a shared atomic is cheap enough.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The per-connection counters summed over every connection, open or
    /// closed; `connections` counts the open ones.
    pub fn totals(&self) -> Totals {
        let conns = self.lock();
        let mut sum = conns.closed;
        for c in conns.open.values() {
            sum += c.totals();
        }
        sum
    }

    /// Error lines sent so far, by wire code.
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ErrorCode::ALL
            .iter()
            .zip(&self.errors)
            .map(|(code, n)| (code.as_str(), n.load(Ordering::Relaxed)))
    }

    /// Connections ended so far, by `reason` label.
    pub fn disconnects(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REASONS
            .iter()
            .zip(&self.disconnects)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }
}

/// A cluster node's link, as the metrics show it.
#[derive(Debug, Clone, Copy)]
pub struct ClusterStatus {
    /// Redis is reachable and this node subscribed (`imd_cluster_up`).
    pub up: bool,
    /// PUBLISH commands Redis acknowledged (`imd_cluster_published_total`).
    pub published: u64,
}

/// What a scrape reads from the server. Implemented by the
/// [`Hub`](super::hub::Hub); a trait so that the metrics do not depend on
/// the hub, which counts into them.
pub trait Source: Send + Sync + 'static {
    /// The counters.
    fn metrics(&self) -> &Metrics;
    /// Users online on this node.
    fn users_online(&self) -> usize;
    /// Output queued for all users, in bytes as charged to the budget.
    fn queued_bytes(&self) -> usize;
    /// The cluster link, if this node is one of several.
    fn cluster(&self) -> Option<ClusterStatus>;
    /// Failed logins since the start (`imd --accounts`; 0 without it).
    fn failed_logins(&self) -> u64 {
        0
    }
}

/// A registry whose only collector reads `source` at each scrape.
pub fn registry(source: Arc<dyn Source>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(source)));
    registry
}

/// The collector: every value is read when Prometheus asks.
struct Scrape(Arc<dyn Source>);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let src = &*self.0;
        let m = src.metrics();
        let t = m.totals();
        let e = &mut enc;
        gauge(
            e,
            "imd_connections",
            "Client connections open (served; refused ones are not counted).",
            t.connections,
        )?;
        gauge(
            e,
            "imd_users_online",
            "Users online on this node.",
            src.users_online() as u64,
        )?;
        counter(
            e,
            "imd_lines_received",
            "Lines read from clients, commands included.",
            t.lines_received,
        )?;
        counter(
            e,
            "imd_deliveries",
            "Lines written to clients: one per line per recipient (messages, notices and replies).",
            t.deliveries,
        )?;
        counter(
            e,
            "imd_bytes_sent",
            "Bytes written to clients.",
            t.bytes_sent,
        )?;
        counter(
            e,
            "imd_slow_consumers_cut",
            "Users cut off because they stopped reading (their queue overflowed).",
            t.slow_consumers_cut,
        )?;
        family(
            e,
            "imd_disconnects",
            "Client connections ended, by reason.",
            "reason",
            m.disconnects(),
        )?;
        family(
            e,
            "imd_errors",
            "Error lines sent to clients, by code.",
            "code",
            m.errors(),
        )?;
        counter(
            e,
            "imd_failed_logins",
            "Logins refused (wrong password, unknown name, or too many failures from the address).",
            src.failed_logins(),
        )?;
        counter(
            e,
            "imd_rate_limited",
            "Times a sender was paused for going over --max-lines-per-sec (its next lines read later).",
            m.rate_limited.load(Ordering::Relaxed),
        )?;
        gauge(e, "imd_queued_bytes", "Output queued for all users, in bytes, each line charged 32 bytes more than its length.", src.queued_bytes() as u64)?;
        if let Some(c) = src.cluster() {
            gauge(
                e,
                "imd_cluster_up",
                "1 while this node's link to Redis is up, 0 while cluster messages are paused.",
                u64::from(c.up),
            )?;
            counter(e, "imd_cluster_published", "PUBLISH commands Redis acknowledged (public line batches, presence notices, whispers to other nodes).", c.published)?;
        }
        Ok(())
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter; the encoder adds the `_total` suffix.
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A counter with one label, one series per `(label value, count)`.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'static str, u64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The Prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail; a collector's error would be ours.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!("metrics: encoding failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::outbox::{outbox, Budget};
    use bytes::Bytes;
    use std::time::Duration;

    /// A server with 2 users online and 77 bytes queued.
    pub(super) struct Fixed(pub Arc<Metrics>, pub Option<ClusterStatus>);

    impl Source for Fixed {
        fn metrics(&self) -> &Metrics {
            &self.0
        }
        fn users_online(&self) -> usize {
            2
        }
        fn queued_bytes(&self) -> usize {
            77
        }
        fn cluster(&self) -> Option<ClusterStatus> {
            self.1
        }
    }

    /// Counts of open and closed connections add up, a closed connection
    /// leaves the open count, and the text is Prometheus's, names with
    /// `_total` for counters and every code and reason listed.
    #[tokio::test]
    async fn open_and_closed_connections_sum_up() {
        let metrics = Metrics::new();
        let (ob, drain) = outbox(1 << 20, Duration::from_secs(1), Budget::new(usize::MAX));
        let opened = metrics.open(ob.tally());
        opened.line_received();
        opened.line_received();
        assert!(ob.push(Bytes::from_static(b"a\nbb\n")));
        assert!(ob.push_lines(Bytes::from_static(b"ccc\n"), 1));
        drop(ob);
        drain.write_to(tokio::io::sink()).await;
        let open = Totals {
            connections: 1,
            lines_received: 2,
            deliveries: 3,
            bytes_sent: 9,
            slow_consumers_cut: 0,
        };
        assert_eq!(metrics.totals(), open);
        drop(opened);
        assert_eq!(
            metrics.totals(),
            Totals {
                connections: 0,
                ..open
            }
        );
        metrics.error_sent(ErrorCode::NoSuchUser);
        metrics.disconnected(LeaveReason::TooSlow);
        metrics.disconnected(LeaveReason::NodeLost);

        let text = render(&registry(Arc::new(Fixed(metrics, None))));
        for line in [
            "# TYPE imd_deliveries_total counter",
            "imd_deliveries_total 3",
            "imd_bytes_sent_total 9",
            "imd_connections 0",
            "imd_users_online 2",
            "imd_queued_bytes 77",
            "imd_errors_total{code=\"no-such-user\"} 1",
            "imd_errors_total{code=\"server-full\"} 0",
            "imd_disconnects_total{reason=\"too_slow\"} 1",
            "imd_disconnects_total{reason=\"quit\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("node_lost") && !text.contains("imd_cluster"));
    }

    /// Two connections open at once count as two (each its own entry),
    /// one cut for not reading counts as cut while open and once closed,
    /// and the rate-limit pauses and failed logins reach the text (0 for
    /// a source without accounts, which is what the default says).
    #[test]
    fn two_connections_a_cut_and_the_rate_limit() {
        let metrics = Metrics::new();
        let unbounded = || Budget::new(usize::MAX);
        let (fine, _fine_drain) = outbox(1 << 20, Duration::from_secs(1), unbounded());
        let (slow, _slow_drain) = outbox(1, Duration::from_secs(1), unbounded());
        let a = metrics.open(fine.tally());
        let b = metrics.open(slow.tally());
        assert!(!slow.push(Bytes::from_static(b"more than a queue of 1 byte\n")));
        b.line_received();
        let open = Totals {
            connections: 2,
            lines_received: 1,
            deliveries: 0,
            bytes_sent: 0,
            slow_consumers_cut: 1,
        };
        assert_eq!(metrics.totals(), open);
        drop(b);
        assert_eq!(
            metrics.totals(),
            Totals {
                connections: 1,
                ..open
            }
        );
        drop(a);
        assert_eq!(
            metrics.totals(),
            Totals {
                connections: 0,
                ..open
            }
        );
        metrics.rate_limited();
        metrics.rate_limited();
        let text = render(&registry(Arc::new(Fixed(metrics, None))));
        for line in [
            "imd_connections 0",
            "imd_lines_received_total 1",
            "imd_slow_consumers_cut_total 1",
            "imd_rate_limited_total 2",
            "imd_failed_logins_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }

    /// A cluster node also shows its link.
    #[test]
    fn a_cluster_node_shows_its_link() {
        let up = ClusterStatus {
            up: true,
            published: 5,
        };
        let text = render(&registry(Arc::new(Fixed(Metrics::new(), Some(up)))));
        assert!(text.contains("\nimd_cluster_up 1\n"), "{text}");
        assert!(text.contains("\nimd_cluster_published_total 5\n"), "{text}");
    }
}
