//! An open-loop publish/subscribe fan-out benchmark that speaks three
//! protocols: imd's lines, Redis pub/sub (RESP) and NATS.
//!
//! The shape: P publishers each send fixed-size messages at a fixed rate R
//! for D seconds; N subscribers read as fast as they can. Each message is
//! the same payload as `imc bench`'s (src/client/bench/common.rs):
//!
//! ```text
//! #bench PUB SEQ MICROS xxxxxxxx...     padded with 'x' to --size bytes
//! ```
//!
//! where MICROS is the time the message was *scheduled* for (start +
//! SEQ/R), in µs since the bench started. A server that slows a publisher
//! down (by not reading from it) therefore shows up as latency rather than
//! hiding it (no coordinated omission), and as an achieved publish rate
//! below the requested one.
//!
//! Framing per protocol (what one publish and one delivery look like):
//!
//! | | publish | delivery |
//! |---|---|---|
//! | imd | `PAYLOAD\n` | `<NAME> PAYLOAD\n` |
//! | Redis | `*3\r\n$7\r\nPUBLISH\r\n$L\r\nCHAN\r\n$L\r\nPAYLOAD\r\n` | `*3\r\n$7\r\nmessage\r\n$L\r\nCHAN\r\n$L\r\nPAYLOAD\r\n` |
//! | NATS | `PUB CHAN L\r\nPAYLOAD\r\n` | `MSG CHAN 1 L\r\nPAYLOAD\r\n` |
//!
//! Split on `\n` with one trailing `\r` removed, the payload is always a
//! line of its own or the end of one, so a receiver only looks for the
//! `#bench ` marker in each line. Receivers read 64 KiB at a time and handle
//! every complete line of a chunk under one lock with one clock reading:
//! the load generator must stay much cheaper than the server it measures.
//!
//! A run: connect and handshake every subscriber (imd: its welcome line;
//! Redis: the `subscribe` confirmation; NATS: `PONG` after `SUB`) and every
//! publisher; publisher 0 sends one `#sync` message and everyone waits
//! until every subscriber saw it (for imd: all join notices have settled).
//! Then the measured phase: publishers write on schedule (every message due
//! by now in one write; tokio's timers have about 1 ms resolution), and
//! after the last one the bench waits until every still-connected
//! subscriber has everything, or `--drain-timeout`. With `--server-pid` it
//! reads the server's CPU time from /proc and, where `perf stat` works,
//! counts its write system calls during that phase.
//!
//! With `tls` set (imc's `--tls`, `--ca`) every connection, the probe's
//! included, is TLS from its first byte: imd started with `--tls-cert`, or
//! a Redis `--tls-port`. NATS upgrades to TLS only after its plaintext
//! `INFO`, which this bench does not speak, so TLS with NATS is refused.
//!
//! # Layout
//!
//! Here: the arguments and the run itself ([`open_loop`]). `phases`: its
//! steps. `proto`: the three protocols; `clients`: the subscribers, probe
//! and publishers; `dial`: plaintext or TLS halves, which the run is
//! generic over;
//! `perf`: the system-call count; `report`: the [`FanoutReport`] and how
//! it is summed up.

mod clients;
mod dial;
mod perf;
mod phases;
mod proto;
mod report;

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use super::common::{cpu_secs, micros};
use crate::client::tls::TlsConnector;

use dial::{Dial, Plain, Tls};
use perf::Perf;
use phases::{check, connect, drain, publish_all, sync, Probe};
pub use proto::Proto;
pub use report::FanoutReport;

/// The knobs of one fan-out run.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Connect over TLS with this trust (imc's `--tls`, `--ca`); `None`:
    /// plaintext.
    #[arg(skip)]
    pub tls: Option<TlsConnector>,
    /// Connections that publish, each at --rate.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Connections that only receive.
    #[arg(long, default_value_t = 500)]
    pub subscribers: usize,
    /// Messages per second per publisher.
    #[arg(long)]
    pub rate: f64,
    /// Seconds of publishing: each publisher sends rate × duration messages.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Bytes per message payload; at least 48.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(48..=4000))]
    pub size: u64,
    /// Channel (Redis) or subject (NATS) to publish on; imd has one room.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// PID of the server: report its CPU (from /proc) and, if `perf stat`
    /// works, its write system calls during the measured phase.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for stragglers after the last scheduled message.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Seconds allowed to connect everyone and see the sync message.
    #[arg(long, default_value_t = 30.0)]
    pub ready_timeout: f64,
    /// Do not run `perf stat` even with --server-pid (it adds a little cost
    /// to each of the server's system calls).
    #[arg(long)]
    pub no_perf: bool,
}

impl Default for FanoutArgs {
    /// The command line's defaults, with a rate of 1,000 messages/s.
    fn default() -> Self {
        FanoutArgs {
            tls: None,
            publishers: 1,
            subscribers: 500,
            rate: 1000.0,
            duration: 3.0,
            size: 100,
            channel: "bench".into(),
            server_pid: None,
            json: false,
            drain_timeout: 10.0,
            ready_timeout: 30.0,
            no_perf: false,
        }
    }
}

/// One subscriber's tally.
struct Tally {
    /// Per publisher: the sequence number expected next.
    next: Vec<u64>,
    got: u64,
    lost: u64,
    out_of_order: u64,
    corrupted: u64,
    hist: Histogram<u64>,
    closed: bool,
    last_error: Option<String>,
}

impl Tally {
    fn new(publishers: usize) -> Tally {
        Tally {
            next: vec![0; publishers],
            got: 0,
            lost: 0,
            out_of_order: 0,
            corrupted: 0,
            hist: Histogram::new(3).expect("histogram"),
            closed: false,
            last_error: None,
        }
    }
}

/// What the run's tasks share: counters and the one notification that
/// wakes whoever waits on them.
struct Counters {
    start: Instant,
    proto: Proto,
    size: usize,
    publishers: usize,
    /// Messages each publisher will send if nothing goes wrong.
    per_publisher: u64,
    /// Connections whose handshake completed (subscribers, publishers).
    subs_ready: AtomicUsize,
    pubs_ready: AtomicUsize,
    /// Subscribers that saw the sync message.
    synced: AtomicUsize,
    /// Subscribers that have every scheduled message, or were closed.
    done: AtomicUsize,
    subs_closed: AtomicUsize,
    pubs_closed: AtomicUsize,
    notify: Notify,
    /// Messages written in full, per publisher.
    sent: Vec<AtomicU64>,
    last_delivery_us: AtomicU64,
}

impl Counters {
    /// A run's counters, all zero, its clock starting now.
    fn new(proto: Proto, size: usize, publishers: usize, per_publisher: u64) -> Counters {
        Counters {
            start: Instant::now(),
            proto,
            size,
            publishers,
            per_publisher,
            subs_ready: AtomicUsize::new(0),
            pubs_ready: AtomicUsize::new(0),
            synced: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            subs_closed: AtomicUsize::new(0),
            pubs_closed: AtomicUsize::new(0),
            notify: Notify::new(),
            sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            last_delivery_us: AtomicU64::new(0),
        }
    }
}

/// Runs the fan-out benchmark against the server at `addr`, in phases:
/// connect and handshake everyone, sync, publish on schedule while a probe
/// times the server's answers, drain, report. Over TLS when `args.tls`
/// says so.
pub async fn open_loop(addr: &str, proto: Proto, args: &FanoutArgs) -> io::Result<FanoutReport> {
    check(args)?;
    match &args.tls {
        None => run(Plain, addr, proto, args).await,
        Some(_) if proto == Proto::Nats => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NATS upgrades to TLS after its plaintext INFO, which this bench does not speak; \
             run NATS without TLS",
        )),
        Some(tls) => run(Tls(tls.clone()), addr, proto, args).await,
    }
}

/// [`open_loop`] with its connections made by `dial`.
async fn run<D: Dial>(
    dial: D,
    addr: &str,
    proto: Proto,
    args: &FanoutArgs,
) -> io::Result<FanoutReport> {
    let per_publisher = (args.rate * args.duration).round().max(1.0) as u64;
    let (n, np) = (args.subscribers, args.publishers);
    let shared = Arc::new(Counters::new(proto, args.size as usize, np, per_publisher));
    let mut report = FanoutReport {
        proto: proto.name().into(),
        publishers: np,
        subscribers: n,
        size: args.size,
        rate_per_publisher: args.rate,
        duration_secs: args.duration,
        requested_deliveries_per_sec: np as f64 * args.rate * n as f64,
        messages_scheduled: per_publisher * np as u64,
        ..FanoutReport::default()
    };
    let ready_deadline = Instant::now() + Duration::from_secs_f64(args.ready_timeout.max(1.0));
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..n)
        .map(|_| Arc::new(Mutex::new(Tally::new(np))))
        .collect();

    let (tasks, mut writers) =
        connect(&dial, addr, args, &shared, &tallies, ready_deadline).await?;
    let synced = sync(args, &shared, &mut writers, ready_deadline).await?;
    report.ready_secs = shared.start.elapsed().as_secs_f64();
    if !synced {
        report.notes.push(format!(
            "not ready within {} s: {} of {n} subscribers and {} of {np} publishers handshaked, \
             {} subscribers saw the sync message, {} subscribers and {} publishers were closed",
            args.ready_timeout,
            shared.subs_ready.load(Ordering::Acquire),
            shared.pubs_ready.load(Ordering::Acquire),
            shared.synced.load(Ordering::Acquire),
            shared.subs_closed.load(Ordering::Acquire),
            shared.pubs_closed.load(Ordering::Acquire),
        ));
        report.stalled = true;
        for t in &tasks {
            t.abort();
        }
        return Ok(report);
    }

    // The measured phase.
    let mut perf = None;
    if let Some(pid) = args.server_pid.filter(|_| !args.no_perf) {
        match Perf::start(pid).await {
            Ok(p) => perf = Some(p),
            Err(why) => report.notes.push(why),
        }
    }
    let cpu_before = args.server_pid.and_then(cpu_secs);
    // A little lead, so that the first message is not late already.
    let publish_start_us = micros(shared.start) + 5_000;
    let probe = Probe::start(dial.clone(), addr, proto);
    let published = publish_all(args, &shared, writers, publish_start_us).await;
    report.add_probes(probe.stop().await);
    let sent: Vec<u64> = shared
        .sent
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .collect();
    let drained = drain(args, &shared, &tallies, &sent).await;
    let end_us = micros(shared.start);
    let cpu_after = args.server_pid.and_then(cpu_secs);
    if let Some(perf) = perf {
        let (counts, note) = perf.stop().await;
        match counts {
            Ok(counts) => {
                report.write_syscalls = Some(counts.values().sum());
                report.write_syscalls_by_call = counts;
            }
            Err(why) => report.notes.push(why),
        }
        report.notes.extend(note);
    }
    for t in &tasks {
        t.abort();
    }
    drop(published.writers);

    // The report.
    let messages_sent: u64 = sent.iter().sum();
    report.messages_sent = messages_sent;
    let publish_secs =
        ((published.end_us.saturating_sub(publish_start_us)) as f64 / 1e6).max(args.duration);
    report.achieved_publish_per_sec = messages_sent as f64 / publish_secs;
    report.achieved_publish_pct = 100.0 * report.achieved_publish_per_sec / (np as f64 * args.rate);
    report.publisher_lag_ms_max = published.lag_us as f64 / 1e3;
    report.publishers_disconnected = shared.pubs_closed.load(Ordering::Acquire) as u64;
    report.measured_secs = end_us.saturating_sub(publish_start_us) as f64 / 1e6;
    report.deliveries_expected = messages_sent * n as u64;
    report.add_tallies(&tallies, &sent);
    let last = shared.last_delivery_us.load(Ordering::Acquire);
    if last > publish_start_us {
        report.deliveries_per_sec =
            report.deliveries as f64 / ((last - publish_start_us) as f64 / 1e6);
    }
    if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
        let cpu = (a - b).max(0.0);
        report.server_cpu_secs = Some(cpu);
        if report.measured_secs > 0.0 {
            report.server_cpu_pct = Some(100.0 * cpu / report.measured_secs);
        }
        if report.deliveries > 0 {
            report.server_cpu_us_per_delivery = Some(cpu * 1e6 / report.deliveries as f64);
        }
    }
    if let Some(w) = report.write_syscalls {
        if report.deliveries > 0 {
            report.write_syscalls_per_delivery = Some(w as f64 / report.deliveries as f64);
        }
    }
    if !published.complete {
        report.notes.push(format!(
            "the publishers could not write every scheduled message within duration + drain timeout \
             ({messages_sent} of {} written)",
            report.messages_scheduled
        ));
    }
    if !drained {
        report.notes.push(format!(
            "connected subscribers still missed messages {} s after the last send",
            args.drain_timeout
        ));
    }
    report.stalled = !published.complete || !drained;
    Ok(report)
}
