//! What a closed-loop run measured, how it is summed up from every
//! client's tally, and how it reads for people.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Board, Tally};

/// What a run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub clients: usize,
    pub senders: usize,
    pub messages_per_sender: u64,
    pub size: u64,
    pub window: Option<u64>,
    pub rate: Option<f64>,
    pub frozen: usize,
    pub connections: usize,
    /// Seconds from the first connect until every join had settled.
    pub join_settle_secs: f64,
    /// Seconds from the first bench message to the last delivery.
    pub duration_secs: f64,
    pub messages_sent: u64,
    pub deliveries: u64,
    pub deliveries_expected: u64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
    /// Cluster mode: deliveries from a sender on the other node.
    pub cross_node_deliveries: u64,
    pub cross_node_latency_us_p50: u64,
    pub cross_node_latency_us_p99: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub corrupted: u64,
    /// Healthy clients whose connection the server closed.
    pub disconnected: u64,
    /// Frozen clients the server disconnected.
    pub frozen_disconnected: u64,
    /// Idle connections that received the final broadcast.
    pub connections_reached: u64,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
    pub server_rss_bytes_per_connection: Option<f64>,
    /// Server CPU (user + system) during the measured phase, per delivery:
    /// the server's own cost, apart from the load generator sharing the
    /// machine.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Set when the run hit --bench-timeout before all deliveries.
    pub stalled: bool,
}

impl Report {
    /// Adds up every client's tally: deliveries, damage, and latency.
    /// `messages` is what each sender sent, so what a client never saw at
    /// all counts as lost too.
    pub(super) fn add_tallies(&mut self, tallies: &[Arc<Mutex<Tally>>], messages: u64) {
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        let mut cross = Histogram::<u64>::new(3).expect("histogram");
        for t in tallies {
            let t = t.lock().unwrap();
            hist.add(&t.hist).expect("same histogram bounds");
            cross.add(&t.cross).expect("same histogram bounds");
            self.deliveries += t.got;
            self.lost += t.lost;
            self.duplicated += t.duplicated;
            self.out_of_order += t.out_of_order;
            self.corrupted += t.corrupted;
            self.disconnected += t.closed as u64;
            if !t.closed {
                self.lost += t
                    .expected_next
                    .iter()
                    .map(|&n| messages.saturating_sub(n))
                    .sum::<u64>();
            }
        }
        self.latency_us_p50 = hist.value_at_quantile(0.50);
        self.latency_us_p90 = hist.value_at_quantile(0.90);
        self.latency_us_p99 = hist.value_at_quantile(0.99);
        self.latency_us_max = hist.max();
        self.cross_node_deliveries = cross.len();
        self.cross_node_latency_us_p50 = cross.value_at_quantile(0.50);
        self.cross_node_latency_us_p99 = cross.value_at_quantile(0.99);
    }

    /// The measured span (first send to last delivery) and the rates over
    /// it.
    pub(super) fn add_timing(&mut self, board: &Board) {
        let first = board.first_send_us.load(Ordering::Relaxed);
        let last = board.last_delivery_us.load(Ordering::Relaxed);
        self.duration_secs = if last > first {
            (last - first) as f64 / 1e6
        } else {
            0.0
        };
        if self.duration_secs > 0.0 {
            self.deliveries_per_sec = self.deliveries as f64 / self.duration_secs;
            self.messages_per_sec = self.messages_sent as f64 / self.duration_secs;
        }
    }
}

impl Report {
    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "{} clients, {} senders x {} messages of {} bytes{}{}{}{}",
            self.clients,
            self.senders,
            self.messages_per_sender,
            self.size,
            self.window
                .map(|w| format!(", window {w}"))
                .unwrap_or_default(),
            self.rate
                .map(|r| format!(", rate {r}/s"))
                .unwrap_or_default(),
            if self.frozen > 0 {
                format!(", {} frozen", self.frozen)
            } else {
                String::new()
            },
            if self.connections > 0 {
                format!(", {} idle connections", self.connections)
            } else {
                String::new()
            },
        );
        let _ = writeln!(s, "joins settled in   {:.3} s", self.join_settle_secs);
        let _ = writeln!(
            s,
            "deliveries         {} of {} in {:.3} s = {:.0}/s ({:.0} messages/s sent)",
            self.deliveries,
            self.deliveries_expected,
            self.duration_secs,
            self.deliveries_per_sec,
            self.messages_per_sec
        );
        let _ = writeln!(
            s,
            "latency (us)       p50 {}  p90 {}  p99 {}  max {}",
            self.latency_us_p50, self.latency_us_p90, self.latency_us_p99, self.latency_us_max
        );
        let _ = writeln!(
            s,
            "problems           lost {}  duplicated {}  out of order {}  corrupted {}  disconnected {}",
            self.lost, self.duplicated, self.out_of_order, self.corrupted, self.disconnected
        );
        if self.frozen > 0 {
            let _ = writeln!(
                s,
                "frozen clients     {} of {} disconnected by the server",
                self.frozen_disconnected, self.frozen
            );
        }
        if self.connections > 0 {
            let _ = writeln!(
                s,
                "idle connections   {} of {} received the final broadcast",
                self.connections_reached, self.connections
            );
        }
        if let (Some(b), Some(a)) = (self.server_rss_kib_before, self.server_rss_kib_after) {
            let _ = writeln!(
                s,
                "server RSS         {b} KiB before, {a} KiB with everyone connected ({:.0} bytes per connection)",
                self.server_rss_bytes_per_connection.unwrap_or(0.0)
            );
        }
        if let Some(cpu) = self.server_cpu_us_per_delivery {
            let _ = writeln!(s, "server CPU         {cpu:.3} us per delivery");
        }
        if self.stalled {
            let _ = writeln!(
                s,
                "STALLED: the run hit --bench-timeout before every delivery arrived"
            );
        }
        s
    }
}
