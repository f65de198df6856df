//! What an open-loop run measured, and how it reads for people.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Tally;

/// What a fan-out run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FanoutReport {
    pub proto: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub size: u64,
    pub rate_per_publisher: f64,
    pub duration_secs: f64,
    /// publishers × rate × subscribers.
    pub requested_deliveries_per_sec: f64,
    /// Seconds to connect everyone and see the sync message.
    pub ready_secs: f64,
    /// Messages the schedule called for, all publishers.
    pub messages_scheduled: u64,
    /// Messages written in full to the server, all publishers.
    pub messages_sent: u64,
    /// messages_sent over the publishing time (at least --duration).
    pub achieved_publish_per_sec: f64,
    /// achieved_publish_per_sec as a percentage of publishers × rate.
    pub achieved_publish_pct: f64,
    /// How far behind schedule a publisher's write completed, at worst.
    pub publisher_lag_ms_max: f64,
    /// Publishers whose connection the server closed.
    pub publishers_disconnected: u64,
    /// From the first scheduled message until the last delivery (or the
    /// drain timeout): the phase CPU and system calls are measured over.
    pub measured_secs: f64,
    pub deliveries: u64,
    /// messages_sent × subscribers.
    pub deliveries_expected: u64,
    pub delivered_pct: f64,
    pub deliveries_per_sec: f64,
    /// Gaps in the sequence, and messages never seen, on subscribers that
    /// stayed connected.
    pub lost: u64,
    /// Messages that subscribers the server disconnected never got.
    pub lost_to_disconnects: u64,
    pub out_of_order: u64,
    pub corrupted: u64,
    /// Subscribers whose connection the server closed.
    pub disconnected: u64,
    /// The last error line (`-ERR ...`, `*** bye: ...`) each disconnected
    /// subscriber got, counted; `(none)` when it got none.
    pub disconnect_reasons: BTreeMap<String, u64>,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    pub server_cpu_secs: Option<f64>,
    /// Server CPU as a percentage of one core over measured_secs.
    pub server_cpu_pct: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// write + writev + sendto + sendmsg calls by the server (perf stat).
    pub write_syscalls: Option<u64>,
    pub write_syscalls_per_delivery: Option<f64>,
    /// The same, per system call.
    pub write_syscalls_by_call: BTreeMap<String, u64>,
    /// Responsiveness while the load runs: every 200 ms a new client
    /// connects and asks something (imd: `who`; Redis and NATS: PING).
    pub probes: u64,
    /// Probes with no answer within 5 s.
    pub probes_failed: u64,
    /// Connect-to-answer time of the answered probes.
    pub probe_ms_p50: f64,
    pub probe_ms_max: f64,
    /// What went wrong, if anything (not ready, perf unavailable, ...).
    pub notes: Vec<String>,
    /// Set when not everything sent reached every connected subscriber
    /// within the drain timeout, or the publishers could not finish.
    pub stalled: bool,
}

impl FanoutReport {
    /// Adds the probe's answer times (ms; `None` for no answer).
    pub(super) fn add_probes(&mut self, times: Vec<Option<f64>>) {
        self.probes = times.len() as u64;
        let mut answered: Vec<f64> = times.into_iter().flatten().collect();
        self.probes_failed = self.probes - answered.len() as u64;
        answered.sort_by(f64::total_cmp);
        if let Some(&max) = answered.last() {
            self.probe_ms_max = max;
            self.probe_ms_p50 = answered[(answered.len() - 1) / 2];
        }
    }

    /// Adds up every subscriber's tally against what each publisher
    /// `sent`: deliveries, damage, losses (apart for subscribers the
    /// server closed, with why), and latency.
    pub(super) fn add_tallies(&mut self, tallies: &[Arc<Mutex<Tally>>], sent: &[u64]) {
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        for t in tallies {
            let t = t.lock().unwrap();
            hist.add(&t.hist).expect("same histogram bounds");
            self.deliveries += t.got;
            self.out_of_order += t.out_of_order;
            self.corrupted += t.corrupted;
            let unseen: u64 = t
                .next
                .iter()
                .zip(sent)
                .map(|(got, sent)| sent.saturating_sub(*got))
                .sum();
            if t.closed {
                self.disconnected += 1;
                self.lost_to_disconnects += t.lost + unseen;
                let why = t.last_error.clone().unwrap_or_else(|| "(none)".into());
                *self.disconnect_reasons.entry(why).or_default() += 1;
            } else {
                self.lost += t.lost + unseen;
            }
        }
        if self.deliveries_expected > 0 {
            self.delivered_pct = 100.0 * self.deliveries as f64 / self.deliveries_expected as f64;
        }
        self.latency_us_p50 = hist.value_at_quantile(0.50);
        self.latency_us_p90 = hist.value_at_quantile(0.90);
        self.latency_us_p99 = hist.value_at_quantile(0.99);
        self.latency_us_p999 = hist.value_at_quantile(0.999);
        self.latency_us_max = hist.max();
    }

    /// The human summary.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} publisher(s) x {}/s for {} s, {} bytes, to {} subscribers = {:.0} deliveries/s requested",
            self.proto,
            self.publishers,
            self.rate_per_publisher,
            self.duration_secs,
            self.size,
            self.subscribers,
            self.requested_deliveries_per_sec
        );
        let _ = writeln!(s, "ready in           {:.3} s", self.ready_secs);
        let _ = writeln!(
            s,
            "published          {} of {} messages, {:.0}/s ({:.1}% of the rate asked), worst lag behind schedule {:.1} ms{}",
            self.messages_sent,
            self.messages_scheduled,
            self.achieved_publish_per_sec,
            self.achieved_publish_pct,
            self.publisher_lag_ms_max,
            if self.publishers_disconnected > 0 {
                format!(", {} publisher(s) disconnected", self.publishers_disconnected)
            } else {
                String::new()
            }
        );
        if self.probes > 0 {
            let _ = writeln!(
                s,
                "responsiveness     {} probes (new client + {}), {} unanswered, p50 {:.1} ms, max {:.1} ms",
                self.probes,
                if self.proto == "imd" { "who" } else { "PING" },
                self.probes_failed,
                self.probe_ms_p50,
                self.probe_ms_max
            );
        }
        let _ = writeln!(
            s,
            "deliveries         {} of {} ({:.2}%), {:.0}/s",
            self.deliveries, self.deliveries_expected, self.delivered_pct, self.deliveries_per_sec
        );
        let _ = writeln!(
            s,
            "latency (us)       p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.latency_us_p50,
            self.latency_us_p90,
            self.latency_us_p99,
            self.latency_us_p999,
            self.latency_us_max
        );
        let _ = writeln!(
            s,
            "problems           lost {}  out of order {}  corrupted {}  disconnected {} (missing {} deliveries)",
            self.lost, self.out_of_order, self.corrupted, self.disconnected, self.lost_to_disconnects
        );
        for (why, count) in &self.disconnect_reasons {
            let _ = writeln!(s, "  disconnected      {count} x {why}");
        }
        if let (Some(cpu), Some(pct)) = (self.server_cpu_secs, self.server_cpu_pct) {
            let _ = writeln!(
                s,
                "server CPU         {cpu:.2} s over {:.2} s = {pct:.0}% of a core, {:.3} us per delivery",
                self.measured_secs,
                self.server_cpu_us_per_delivery.unwrap_or(0.0)
            );
        }
        if let Some(w) = self.write_syscalls {
            let by: Vec<String> = self
                .write_syscalls_by_call
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "server writes      {w} system calls ({}), {:.4} per delivery",
                by.join(", "),
                self.write_syscalls_per_delivery.unwrap_or(0.0)
            );
        }
        for note in &self.notes {
            let _ = writeln!(s, "note               {note}");
        }
        if self.stalled {
            let _ = writeln!(
                s,
                "STALLED: not everything sent reached every connected subscriber in time"
            );
        }
        s
    }
}
