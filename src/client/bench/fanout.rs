//! An open-loop publish/subscribe fan-out benchmark that speaks three
//! protocols: imd's lines, Redis pub/sub (RESP) and NATS.
//!
//! The shape: P publishers each send fixed-size messages at a fixed rate R
//! for D seconds; N subscribers read as fast as they can. Each message is
//! the same payload as `imc bench`'s (src/bench/mod.rs):
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

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::common::{bench_line, cpu_secs, micros, parse_bench, wait_until};

/// Which server protocol to speak.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proto {
    /// imd's line protocol (PROTOCOL.md): every public line goes to everyone.
    #[value(name = "imd")]
    #[serde(rename = "imd")]
    Imchat,
    /// Redis pub/sub over RESP2: PUBLISH and SUBSCRIBE.
    #[value(name = "redis")]
    #[serde(rename = "redis")]
    Redis,
    /// NATS core: PUB and SUB.
    #[value(name = "nats")]
    #[serde(rename = "nats")]
    Nats,
}

impl Proto {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Imchat => "imd",
            Proto::Redis => "redis",
            Proto::Nats => "nats",
        }
    }

    /// The usual port of a server of this kind.
    pub fn default_port(self) -> u16 {
        match self {
            Proto::Imchat => 8000,
            Proto::Redis => 6379,
            Proto::Nats => 4222,
        }
    }

    /// Appends one publish of `payload` on `channel` to `out`.
    fn publish(self, channel: &str, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Proto::Imchat => {
                out.extend_from_slice(payload);
                out.push(b'\n');
            }
            Proto::Redis => {
                out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
                resp_bulk(channel.as_bytes(), out);
                resp_bulk(payload, out);
            }
            Proto::Nats => {
                out.extend_from_slice(format!("PUB {channel} {}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// What a subscriber sends right after connecting.
    fn subscriber_hello(self, channel: &str) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Proto::Imchat => {}
            Proto::Redis => {
                out.extend_from_slice(b"*2\r\n$9\r\nSUBSCRIBE\r\n");
                resp_bulk(channel.as_bytes(), &mut out);
            }
            Proto::Nats => {
                out.extend_from_slice(NATS_CONNECT);
                out.extend_from_slice(format!("SUB {channel} 1\r\nPING\r\n").as_bytes());
            }
        }
        out
    }

    /// What a responsiveness probe sends once connected, and the start of
    /// the line that answers it: `who` for imd (a new user's full round
    /// trip: accepted, welcomed, a command answered), PING for the others.
    fn probe(self) -> (Vec<u8>, &'static [u8]) {
        match self {
            Proto::Imchat => (b"who\n".to_vec(), b"ok who:"),
            Proto::Redis => (b"*1\r\n$4\r\nPING\r\n".to_vec(), b"+PONG"),
            Proto::Nats => ([NATS_CONNECT, b"PING\r\n"].concat(), b"PONG"),
        }
    }

    /// What a publisher sends right after connecting: something that gets
    /// an answer, so that we know the server has taken the connection.
    fn publisher_hello(self) -> Vec<u8> {
        match self {
            Proto::Imchat => Vec::new(),
            Proto::Redis => b"*1\r\n$4\r\nPING\r\n".to_vec(),
            Proto::Nats => [NATS_CONNECT, b"PING\r\n"].concat(),
        }
    }

    /// Whether `line` (without its line end) says the connection is ready:
    /// imd's welcome (any first line), Redis's `subscribe` confirmation or
    /// `+PONG`, NATS's `PONG`.
    fn is_ready_line(self, line: &[u8], subscriber: bool) -> bool {
        match self {
            Proto::Imchat => true,
            Proto::Redis if subscriber => line == b"subscribe",
            Proto::Redis => line == b"+PONG",
            Proto::Nats => line == b"PONG",
        }
    }

    /// Whether `line` is the server telling why it is about to close the
    /// connection (kept as the disconnect reason).
    fn is_error_line(self, line: &[u8]) -> bool {
        match self {
            Proto::Imchat => line.starts_with(b"*** bye"),
            Proto::Redis | Proto::Nats => line.starts_with(b"-ERR"),
        }
    }
}

const NATS_CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n";

fn resp_bulk(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The knobs of one fan-out run.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
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

/// What all tasks share.
struct Shared {
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

/// Calls `f` with each complete line of `buf` (a trailing `\r` removed) and
/// returns how many bytes that used up (through the last `\n`).
fn for_each_line(buf: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', buf) {
        let mut line = &buf[start..nl];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        f(line);
        start = nl + 1;
    }
    start
}

/// What one received line is to the bench.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A bench message: publisher, sequence, scheduled time; `Err` when
    /// the marker is there but the message is damaged.
    Bench(Result<(usize, u64, u64), ()>),
    Sync,
    Other,
}

fn classify(line: &[u8], size: usize) -> Seen {
    // Cheap first test: every marker starts with '#', and the protocols'
    // own lines (`$100`, `MSG bench 1 100`, `*3`) have none.
    let Some(pos) = memchr::memchr(b'#', line) else {
        return Seen::Other;
    };
    let rest = &line[pos..];
    if rest.starts_with(b"#sync ") {
        return Seen::Sync;
    }
    match parse_bench(rest, size) {
        Some(r) => Seen::Bench(r),
        None => Seen::Other,
    }
}

/// The payload of message `seq` of publisher `p` (no line end).
fn payload(p: usize, seq: u64, micros: u64, size: usize) -> Vec<u8> {
    let mut line = bench_line(p, seq, micros, size);
    line.pop();
    line
}

const SYNC_PAYLOAD: &[u8] = b"#sync all subscribed";

/// Runs the fan-out benchmark against the server at `addr`.
pub async fn open_loop(addr: &str, proto: Proto, args: &FanoutArgs) -> io::Result<FanoutReport> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(bad(
            "--rate must be a positive number of messages per second",
        ));
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(bad("--duration must be a positive number of seconds"));
    }
    if args.publishers == 0 || args.subscribers == 0 {
        return Err(bad("--publishers and --subscribers must be at least 1"));
    }
    if !(48..=4000).contains(&args.size) {
        return Err(bad("--size must be 48 to 4000 bytes"));
    }
    let per_publisher = (args.rate * args.duration).round().max(1.0) as u64;
    let (n, np) = (args.subscribers, args.publishers);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        proto,
        size: args.size as usize,
        publishers: np,
        per_publisher,
        subs_ready: AtomicUsize::new(0),
        pubs_ready: AtomicUsize::new(0),
        synced: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        subs_closed: AtomicUsize::new(0),
        pubs_closed: AtomicUsize::new(0),
        notify: Notify::new(),
        sent: (0..np).map(|_| AtomicU64::new(0)).collect(),
        last_delivery_us: AtomicU64::new(0),
    });
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
    let connect = |what: String| {
        let addr = addr.to_string();
        async move {
            match tokio::time::timeout_at(ready_deadline.into(), TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(s)
                }
                Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{what}: {e}"))),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: connect timed out"),
                )),
            }
        }
    };

    // Subscribers first, then publishers (for imd, the publishers' joins
    // are then announced to the subscribers before the sync message).
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..n)
        .map(|_| {
            Arc::new(Mutex::new(Tally {
                next: vec![0; np],
                got: 0,
                lost: 0,
                out_of_order: 0,
                corrupted: 0,
                hist: Histogram::new(3).expect("histogram"),
                closed: false,
                last_error: None,
            }))
        })
        .collect();
    let hello: Arc<[u8]> = proto.subscriber_hello(&args.channel).into();
    let mut tasks = Vec::with_capacity(n + np);
    for (i, tally) in tallies.iter().enumerate() {
        let stream = connect(format!("subscriber {i}")).await?;
        tasks.push(tokio::spawn(subscriber(
            stream,
            hello.clone(),
            tally.clone(),
            shared.clone(),
        )));
    }
    let mut writers = Vec::with_capacity(np);
    for p in 0..np {
        let stream = connect(format!("publisher {p}")).await?;
        let (r, mut w) = stream.into_split();
        let hello = proto.publisher_hello();
        if !hello.is_empty() {
            w.write_all(&hello).await?;
        }
        tasks.push(tokio::spawn(publisher_reader(r, shared.clone())));
        writers.push(w);
    }
    let all_ready = wait_until(&shared.notify, ready_deadline, || {
        (shared.subs_ready.load(Ordering::Acquire) >= n
            && shared.pubs_ready.load(Ordering::Acquire) >= np)
            || shared.subs_closed.load(Ordering::Acquire) > 0
            || shared.pubs_closed.load(Ordering::Acquire) > 0
    })
    .await
        && shared.subs_closed.load(Ordering::Acquire) == 0
        && shared.pubs_closed.load(Ordering::Acquire) == 0;
    let mut synced = false;
    if all_ready {
        let mut sync = Vec::new();
        proto.publish(&args.channel, SYNC_PAYLOAD, &mut sync);
        writers[0].write_all(&sync).await?;
        synced = wait_until(&shared.notify, ready_deadline, || {
            shared.synced.load(Ordering::Acquire) >= n
        })
        .await;
    }
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
    let hard_stop = shared.start
        + Duration::from_micros(publish_start_us)
        + Duration::from_secs_f64(args.duration + args.drain_timeout.max(0.0));
    // The probe runs on a thread and runtime of its own, so that what it
    // measures is the server, not the load generator's own busy runtime.
    let probing = tokio_util::sync::CancellationToken::new();
    let prober = {
        let (addr, stop) = (addr.to_string(), probing.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(probe_loop(addr, proto, stop)))
                .unwrap_or_default()
        })
    };
    let mut pubs = Vec::with_capacity(np);
    for (p, w) in writers.into_iter().enumerate() {
        let plan = Plan {
            p,
            start_us: publish_start_us,
            rate: args.rate,
            count: per_publisher,
            channel: args.channel.clone(),
            hard_stop,
        };
        pubs.push(tokio::spawn(publish(w, plan, shared.clone())));
    }
    let mut lag_us = 0;
    let mut publish_end_us = publish_start_us;
    let mut finished_publishing = true;
    let mut keep_writers = Vec::new();
    for t in pubs {
        match t.await {
            Ok(out) => {
                lag_us = lag_us.max(out.lag_us);
                publish_end_us = publish_end_us.max(out.end_us);
                if !out.complete {
                    finished_publishing = false;
                }
                // Kept open until the end: closing a publisher's socket
                // early could make some servers drop what it still holds.
                keep_writers.push(out.writer);
            }
            Err(_) => finished_publishing = false,
        }
    }
    probing.cancel();
    let probe_times = tokio::task::spawn_blocking(move || prober.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    report.probes = probe_times.len() as u64;
    let mut answered: Vec<f64> = probe_times.into_iter().flatten().collect();
    report.probes_failed = report.probes - answered.len() as u64;
    answered.sort_by(f64::total_cmp);
    if let Some(&max) = answered.last() {
        report.probe_ms_max = max;
        report.probe_ms_p50 = answered[(answered.len() - 1) / 2];
    }
    let sent: Vec<u64> = shared
        .sent
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .collect();
    let messages_sent: u64 = sent.iter().sum();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout.max(0.0));
    let everything = |tallies: &[Arc<Mutex<Tally>>]| {
        tallies.iter().all(|t| {
            let t = t.lock().unwrap();
            t.closed || t.next.iter().zip(&sent).all(|(got, sent)| got >= sent)
        })
    };
    // `done` counts subscribers with every scheduled message; the full
    // check also covers publishers that sent fewer.
    let drained = wait_until(&shared.notify, drain_deadline, || {
        shared.done.load(Ordering::Acquire) >= n || everything(&tallies)
    })
    .await;
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
    drop(keep_writers);

    // The report.
    report.messages_sent = messages_sent;
    let publish_secs =
        ((publish_end_us.saturating_sub(publish_start_us)) as f64 / 1e6).max(args.duration);
    report.achieved_publish_per_sec = messages_sent as f64 / publish_secs;
    report.achieved_publish_pct = 100.0 * report.achieved_publish_per_sec / (np as f64 * args.rate);
    report.publisher_lag_ms_max = lag_us as f64 / 1e3;
    report.publishers_disconnected = shared.pubs_closed.load(Ordering::Acquire) as u64;
    report.measured_secs = end_us.saturating_sub(publish_start_us) as f64 / 1e6;
    report.deliveries_expected = messages_sent * n as u64;
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for t in &tallies {
        let t = t.lock().unwrap();
        hist.add(&t.hist).expect("same histogram bounds");
        report.deliveries += t.got;
        report.out_of_order += t.out_of_order;
        report.corrupted += t.corrupted;
        let unseen: u64 = t
            .next
            .iter()
            .zip(&sent)
            .map(|(got, sent)| sent.saturating_sub(*got))
            .sum();
        if t.closed {
            report.disconnected += 1;
            report.lost_to_disconnects += t.lost + unseen;
            let why = t.last_error.clone().unwrap_or_else(|| "(none)".into());
            *report.disconnect_reasons.entry(why).or_default() += 1;
        } else {
            report.lost += t.lost + unseen;
        }
    }
    if report.deliveries_expected > 0 {
        report.delivered_pct = 100.0 * report.deliveries as f64 / report.deliveries_expected as f64;
    }
    let last = shared.last_delivery_us.load(Ordering::Acquire);
    if last > publish_start_us {
        report.deliveries_per_sec =
            report.deliveries as f64 / ((last - publish_start_us) as f64 / 1e6);
    }
    report.latency_us_p50 = hist.value_at_quantile(0.50);
    report.latency_us_p90 = hist.value_at_quantile(0.90);
    report.latency_us_p99 = hist.value_at_quantile(0.99);
    report.latency_us_p999 = hist.value_at_quantile(0.999);
    report.latency_us_max = hist.max();
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
    if !finished_publishing {
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
    report.stalled = !finished_publishing || !drained;
    Ok(report)
}

/// One subscriber: sends the handshake, then reads and tallies until the
/// server closes the connection (or the task is aborted).
async fn subscriber(
    stream: TcpStream,
    hello: Arc<[u8]>,
    tally: Arc<Mutex<Tally>>,
    shared: Arc<Shared>,
) {
    let (mut r, mut w) = stream.into_split();
    let proto = shared.proto;
    let expected = shared.per_publisher * shared.publishers as u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut ready = false;
    let mut synced = false;
    let mut done = false;
    let ok = hello.is_empty() || w.write_all(&hello).await.is_ok();
    loop {
        if filled == buf.len() {
            // A line longer than the buffer: not ours; drop it.
            filled = 0;
        }
        let n = if ok {
            r.read(&mut buf[filled..]).await.unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            tally.lock().unwrap().closed = true;
            shared.subs_closed.fetch_add(1, Ordering::AcqRel);
            if !done {
                shared.done.fetch_add(1, Ordering::AcqRel);
            }
            shared.notify.notify_one();
            return;
        }
        filled += n;
        let now = micros(shared.start);
        let mut pings = 0;
        let mut became_ready = false;
        let mut saw_sync = false;
        let mut delivered = false;
        let (used, finished) = {
            let mut guard = tally.lock().unwrap();
            let t = &mut *guard;
            let used = for_each_line(&buf[..filled], |line| match classify(line, shared.size) {
                Seen::Bench(Ok((p, seq, ts))) if p < shared.publishers => {
                    let next = &mut t.next[p];
                    if seq == *next {
                        *next += 1;
                    } else if seq > *next {
                        t.lost += seq - *next;
                        *next = seq + 1;
                    } else {
                        t.out_of_order += 1;
                        return;
                    }
                    t.got += 1;
                    delivered = true;
                    let _ = t.hist.record(now.saturating_sub(ts).max(1));
                }
                Seen::Bench(_) => t.corrupted += 1,
                Seen::Sync => saw_sync = true,
                Seen::Other => {
                    if !ready && proto.is_ready_line(line, true) {
                        ready = true;
                        became_ready = true;
                    } else if proto == Proto::Nats && line == b"PING" {
                        pings += 1;
                    } else if proto.is_error_line(line) {
                        t.last_error = Some(String::from_utf8_lossy(line).into_owned());
                    }
                }
            });
            (used, !done && t.next.iter().sum::<u64>() >= expected)
        };
        buf.copy_within(used..filled, 0);
        filled -= used;
        if delivered {
            shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        }
        if became_ready {
            shared.subs_ready.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
        }
        if saw_sync && !synced {
            synced = true;
            shared.synced.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
        }
        if finished {
            done = true;
            shared.done.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
        }
        for _ in 0..pings {
            let _ = w.write_all(b"PONG\r\n").await;
        }
    }
}

/// A publisher's read side: waits for its handshake's answer, then reads
/// and discards (imd echoes every public line to its sender, and cuts a
/// sender that does not read; Redis answers each PUBLISH with `:N`).
/// Probes the server every 200 ms until `stop`: each probe is a new
/// connection that asks [`Proto::probe`]'s question. Returns each probe's
/// answer time in ms, `None` for no answer within 5 s.
async fn probe_loop(
    addr: String,
    proto: Proto,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Option<f64>> {
    let mut times = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return times,
            _ = tick.tick() => {}
        }
        let t0 = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(5), probe_once(&addr, proto)).await;
        times.push(matches!(answered, Ok(Ok(true))).then(|| t0.elapsed().as_secs_f64() * 1e3));
    }
}

/// One probe: connect, ask, and read lines until the answer (true) or EOF.
async fn probe_once(addr: &str, proto: Proto) -> io::Result<bool> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (question, answer) = proto.probe();
    let mut lines = tokio::io::BufReader::new(stream);
    lines.get_mut().write_all(&question).await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if tokio::io::AsyncBufReadExt::read_until(&mut lines, b'\n', &mut line).await? == 0 {
            return Ok(false);
        }
        if line.starts_with(answer) {
            return Ok(true);
        }
    }
}

async fn publisher_reader(mut r: OwnedReadHalf, shared: Arc<Shared>) {
    let proto = shared.proto;
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut ready = false;
    loop {
        if filled == buf.len() {
            filled = 0;
        }
        let n = r.read(&mut buf[filled..]).await.unwrap_or(0);
        if n == 0 {
            shared.pubs_closed.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
            return;
        }
        if ready {
            continue;
        }
        filled += n;
        let used = for_each_line(&buf[..filled], |line| {
            ready = ready || proto.is_ready_line(line, false);
        });
        buf.copy_within(used..filled, 0);
        filled -= used;
        if ready {
            shared.pubs_ready.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
        }
    }
}

/// One publisher's schedule.
struct Plan {
    p: usize,
    /// When message 0 of publisher 0 is due, µs since the bench started.
    start_us: u64,
    rate: f64,
    count: u64,
    channel: String,
    /// Give up writing at this instant.
    hard_stop: Instant,
}

impl Plan {
    /// When message `k` is due, µs since the bench started. Publishers are
    /// offset from each other by a fraction of the interval.
    fn due_us(&self, k: u64, publishers: usize) -> u64 {
        let slot = k as f64 + self.p as f64 / publishers as f64;
        self.start_us + (slot * 1e6 / self.rate) as u64
    }
}

struct Published {
    writer: OwnedWriteHalf,
    lag_us: u64,
    end_us: u64,
    complete: bool,
}

/// One publisher: message k is due at start + k / rate; it sleeps until the
/// next one is due, then writes every message due by then in one go.
async fn publish(mut w: OwnedWriteHalf, plan: Plan, shared: Arc<Shared>) -> Published {
    let proto = shared.proto;
    let mut frame = Vec::new();
    proto.publish(
        &plan.channel,
        &payload(plan.p, 0, 0, shared.size),
        &mut frame,
    );
    let frame_len = frame.len() as u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut k = 0;
    let mut written: u64 = 0;
    let mut lag_us = 0;
    let mut complete = true;
    'schedule: while k < plan.count {
        let due = plan.due_us(k, shared.publishers);
        if micros(shared.start) < due {
            let at = shared.start + Duration::from_micros(due);
            tokio::time::sleep_until(at.into()).await;
        }
        let now = micros(shared.start);
        // Everything due by now, at most 4096 messages per write.
        let mut upto = k + 1;
        while upto < plan.count && upto - k < 4096 && plan.due_us(upto, shared.publishers) <= now {
            upto += 1;
        }
        buf.clear();
        for j in k..upto {
            let msg = payload(plan.p, j, plan.due_us(j, shared.publishers), shared.size);
            proto.publish(&plan.channel, &msg, &mut buf);
        }
        debug_assert_eq!(buf.len() as u64, (upto - k) * frame_len);
        let mut off = 0;
        while off < buf.len() {
            match tokio::time::timeout_at(plan.hard_stop.into(), w.write(&buf[off..])).await {
                Ok(Ok(n)) if n > 0 => {
                    off += n;
                    written += n as u64;
                    shared.sent[plan.p].store(written / frame_len, Ordering::Release);
                }
                _ => {
                    complete = false;
                    break 'schedule;
                }
            }
        }
        lag_us = lag_us.max(micros(shared.start).saturating_sub(due));
        k = upto;
    }
    Published {
        writer: w,
        lag_us,
        end_us: micros(shared.start),
        complete,
    }
}

/// `perf stat` counting the server's write system calls.
///
/// `perf stat -p` counts the threads the process has when perf attaches;
/// threads started later (a Go runtime may add some) are not counted, so
/// [`Perf::stop`] says when the thread count grew meanwhile.
struct Perf {
    child: std::process::Child,
    pid: u32,
    threads: Option<usize>,
}

/// How many threads process `pid` has now.
fn thread_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// The system calls that send bytes to a socket.
const WRITE_CALLS: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];

impl Perf {
    /// Starts `perf stat -p PID` on the write system calls and gives it a
    /// moment to attach; `Err` says why it cannot count.
    async fn start(pid: u32) -> Result<Perf, String> {
        let events = WRITE_CALLS
            .iter()
            .map(|c| format!("syscalls:sys_enter_{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut child = std::process::Command::new("perf")
            .args(["stat", "-x,", "-e", &events, "-p", &pid.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("perf stat not run: {e}"))?;
        // perf prints nothing once attached; give it time to.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match child.try_wait() {
            Ok(None) => Ok(Perf {
                child,
                pid,
                threads: thread_count(pid),
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                Err(format!("perf stat failed: {}", err.trim()))
            }
        }
    }

    /// Stops perf with SIGINT (it then prints its counts) and parses them;
    /// the second value is a note when the server started threads that
    /// perf did not count.
    async fn stop(mut self) -> (Result<BTreeMap<String, u64>, String>, Option<String>) {
        let note = match (self.threads, thread_count(self.pid)) {
            (Some(before), Some(now)) if now > before => Some(format!(
                "the server went from {before} to {now} threads while perf counted; \
                 writes by the new threads are not in write_syscalls"
            )),
            _ => None,
        };
        (self.stop_perf().await, note)
    }

    async fn stop_perf(&mut self) -> Result<BTreeMap<String, u64>, String> {
        let id = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-INT", &id])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("perf stat did not stop on SIGINT".into());
                }
            }
        }
        let mut out = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut out);
        }
        parse_perf_csv(&out)
    }
}

/// Parses `perf stat -x,` output: `COUNT,UNIT,EVENT,...` per event.
/// `<not counted>` (the task never ran while counting) is 0; anything
/// else unparsable, or no write event at all, is an error.
fn parse_perf_csv(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let Some(call) = f.get(2).and_then(|e| e.strip_prefix("syscalls:sys_enter_")) else {
            continue;
        };
        let n = match f[0].trim() {
            "<not counted>" => 0,
            v => v
                .parse::<u64>()
                .map_err(|_| format!("perf stat: {call}: {v}"))?,
        };
        counts.insert(call.to_string(), n);
    }
    if counts.is_empty() {
        return Err(format!("perf stat printed no counts: {}", text.trim()));
    }
    Ok(counts)
}

impl FanoutReport {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
        let mut out = Vec::new();
        let used = for_each_line(bytes, |l| out.push(l.to_vec()));
        (out, used)
    }

    fn bench_in(bytes: &[u8], size: usize) -> Vec<Seen> {
        lines_of(bytes)
            .0
            .iter()
            .map(|l| classify(l, size))
            .filter(|s| *s != Seen::Other)
            .collect()
    }

    #[test]
    fn publish_frames_are_exact_and_of_constant_length() {
        let msg = payload(2, 7, 1234, 64);
        assert_eq!(msg.len(), 64);
        let mut out = Vec::new();
        Proto::Redis.publish("bench", &msg, &mut out);
        let mut want = b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$64\r\n".to_vec();
        want.extend_from_slice(&msg);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);

        out.clear();
        Proto::Nats.publish("bench", &msg, &mut out);
        let mut want = b"PUB bench 64\r\n".to_vec();
        want.extend_from_slice(&msg);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);

        out.clear();
        Proto::Imchat.publish("bench", &msg, &mut out);
        assert_eq!(out, [msg.as_slice(), b"\n"].concat());

        // The publisher counts messages written by bytes / frame length.
        for proto in [Proto::Imchat, Proto::Redis, Proto::Nats] {
            let mut a = Vec::new();
            let mut b = Vec::new();
            proto.publish("bench", &payload(0, 0, 0, 100), &mut a);
            proto.publish("bench", &payload(9, 123456, 98765432, 100), &mut b);
            assert_eq!(a.len(), b.len(), "{proto:?}");
        }
    }

    #[test]
    fn an_imd_line_yields_the_payload() {
        let msg = payload(0, 3, 99, 100);
        let mut bytes = b"*** 127.0.0.1:5 is online\n<127.0.0.1:6> ".to_vec();
        bytes.extend_from_slice(&msg);
        bytes.extend_from_slice(b"\n<127.0.0.1:6> #sync all subscribed\n");
        assert_eq!(
            bench_in(&bytes, 100),
            vec![Seen::Bench(Ok((0, 3, 99))), Seen::Sync]
        );
    }

    #[test]
    fn a_redis_message_yields_the_payload() {
        let msg = payload(1, 42, 5000, 100);
        let mut bytes = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n".to_vec();
        bytes.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$100\r\n");
        bytes.extend_from_slice(&msg);
        bytes.extend_from_slice(b"\r\n");
        let (lines, used) = lines_of(&bytes);
        assert_eq!(used, bytes.len());
        assert!(lines.iter().any(|l| Proto::Redis.is_ready_line(l, true)));
        assert_eq!(bench_in(&bytes, 100), vec![Seen::Bench(Ok((1, 42, 5000)))]);
    }

    #[test]
    fn a_nats_msg_yields_the_payload() {
        let msg = payload(0, 7, 10, 100);
        let mut bytes = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPONG\r\n".to_vec();
        bytes.extend_from_slice(b"MSG bench 1 100\r\n");
        bytes.extend_from_slice(&msg);
        bytes.extend_from_slice(b"\r\nPING\r\nMSG bench 1 100\r\n");
        // The second message is cut mid-payload: not a line yet.
        bytes.extend_from_slice(&msg[..50]);
        let (lines, used) = lines_of(&bytes);
        assert!(lines.iter().any(|l| Proto::Nats.is_ready_line(l, true)));
        assert!(lines.iter().any(|l| l == b"PING"));
        assert_eq!(&bytes[used..], &msg[..50]);
        assert_eq!(bench_in(&bytes, 100), vec![Seen::Bench(Ok((0, 7, 10)))]);
    }

    #[test]
    fn a_damaged_payload_is_corrupted_not_missed() {
        let mut msg = payload(0, 1, 1, 100);
        msg[90] = b'y';
        let mut bytes = b"MSG bench 1 100\r\n".to_vec();
        bytes.extend_from_slice(&msg);
        bytes.extend_from_slice(b"\r\n");
        assert_eq!(bench_in(&bytes, 100), vec![Seen::Bench(Err(()))]);
    }

    #[test]
    fn the_schedule_is_rate_times_duration_and_spread_over_publishers() {
        let plan = Plan {
            p: 1,
            start_us: 1_000,
            rate: 1000.0,
            count: 10,
            channel: "bench".into(),
            hard_stop: Instant::now(),
        };
        assert_eq!(plan.due_us(0, 2), 1_500);
        assert_eq!(plan.due_us(3, 2), 4_500);
    }

    #[test]
    fn perf_csv_is_summed_per_call() {
        let text = "677581,,syscalls:sys_enter_write,399133733,100.00,,\n\
                    0,,syscalls:sys_enter_writev,399143511,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_sendto,0,100.00,,\n\
                    12,,syscalls:sys_enter_sendmsg,399160574,100.00,,\n";
        let counts = parse_perf_csv(text).unwrap();
        assert_eq!(counts["write"], 677581);
        assert_eq!(counts["sendto"], 0);
        assert_eq!(counts.values().sum::<u64>(), 677593);
        assert!(parse_perf_csv("<not supported>,,syscalls:sys_enter_write,,,\n").is_err());
        assert!(parse_perf_csv("Error: no permission\n").is_err());
    }
}
