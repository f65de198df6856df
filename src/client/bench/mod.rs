//! `imc bench`: a fan-out load generator in the spirit of `nats bench` and
//! `redis-benchmark`.
//!
//! It only uses what every server of this protocol does (a public line
//! comes back to everyone, the sender included), so the same run can be
//! pointed at imd and at other servers of the protocol (BENCHMARKS.md). Each bench message is
//! one public line carrying its sender, sequence number and send time:
//!
//! ```text
//! #bench SENDER SEQ MICROS xxxxxxxx...     padded with 'x' to --size bytes
//! ```
//!
//! Receivers find the marker anywhere in a line (other servers
//! prefix `Address:[...]  NAME`, imd `<NAME> `), check the padding (corruption),
//! the sequence (lost, duplicated, out of order) and record the latency in an
//! HDR histogram. Everyone connects first; one `#sync` line, broadcast after
//! the last join, tells when join notices have settled (servers deliver
//! broadcasts in order). A run is bounded by `--timeout`: a stalled server
//! gives a report that says so.
//!
//! [`fanout`] is the other shape: an open-loop publish/subscribe fan-out
//! (publishers at a fixed rate, many subscribers that only read) that also
//! speaks Redis pub/sub and NATS, so the same run compares imd with them.

pub mod fanout;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The knobs of one run.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Clients that receive (senders are among them).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How many of the clients also send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Bytes per message line (without the newline); at least 48. Default
    /// 64, or 100 with --subscribers.
    #[arg(
        long,
        default_value_t = 64,
        default_value_if("subscribers", clap::builder::ArgPredicate::IsPresent, "100"),
        value_parser = clap::value_parser!(u64).range(48..=4000)
    )]
    pub size: u64,
    /// Closed loop: each sender keeps at most W of its messages unconfirmed
    /// (not yet come back to itself).
    #[arg(long)]
    pub window: Option<u64>,
    /// Open loop: messages per second per sender. Without --window or
    /// --rate, senders go as fast as the socket takes them. With
    /// --subscribers: messages per second per publisher (required).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Extra clients that connect and never read.
    #[arg(long, default_value_t = 0)]
    pub frozen: usize,
    /// Extra idle connections for a scale test: they join, then must each
    /// receive one broadcast.
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// PID of the server, to report its RSS and CPU (from /proc); with
    /// --subscribers also its write system calls (perf stat).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Cluster mode: a second node (same IP, this port); odd-numbered
    /// clients connect there, so half of all deliveries cross nodes.
    #[arg(long)]
    pub second_port: Option<u16>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds in all; the report says what was
    /// still missing.
    #[arg(long = "bench-timeout", default_value_t = 120.0)]
    pub bench_timeout: f64,
}

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

/// One receiving client's tally.
struct Tally {
    expected_next: Vec<u64>,
    got: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    corrupted: u64,
    hist: Histogram<u64>,
    /// Latencies of deliveries that crossed nodes (cluster mode).
    cross: Histogram<u64>,
    closed: bool,
}

/// What all tasks share.
struct Shared {
    start: Instant,
    size: usize,
    senders: usize,
    /// Per sender: how many of its messages came back to it.
    confirmed: Vec<AtomicU64>,
    confirm_notify: Vec<Notify>,
    /// Healthy clients that have everything they expect (or closed).
    done: AtomicUsize,
    all_done: Notify,
    /// Connections that have received their first line, i.e. that the
    /// server has registered (a TCP connect completes before that).
    registered: AtomicUsize,
    /// Sync lines seen.
    synced: AtomicUsize,
    sync_notify: Notify,
    last_delivery_us: AtomicU64,
    /// Bench messages handed to the socket, all senders.
    sent: AtomicU64,
    first_send_us: AtomicU64,
}

pub(crate) fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Builds message `seq` of `sender`, `size` bytes plus `\n`.
pub(crate) fn bench_line(sender: usize, seq: u64, t: u64, size: usize) -> Vec<u8> {
    let mut line = format!("#bench {sender} {seq} {t} ").into_bytes();
    line.resize(size.max(line.len()), b'x');
    line.push(b'\n');
    line
}

/// Parses a bench marker out of a received line; `Err(())` when the marker
/// is there but damaged. Byte by byte, without allocating or building a
/// searcher when the marker is at the first '#': receivers call this for
/// every delivery, and must stay much cheaper than the server.
pub(crate) fn parse_bench(line: &[u8], size: usize) -> Option<Result<(usize, u64, u64), ()>> {
    const MARK: &[u8] = b"#bench ";
    // Usually the first '#' (imd: `<NAME> #bench`); a full search otherwise.
    let pos = match memchr::memchr(b'#', line) {
        Some(p) if line[p..].starts_with(MARK) => p,
        Some(_) => find(line, MARK)?,
        None => return None,
    };
    let body = &line[pos..];
    let mut rest = &body[MARK.len()..];
    let parsed = (|| {
        let s = usize::try_from(take_number(&mut rest, false)?).ok()?;
        let q = take_number(&mut rest, false)?;
        let ts = take_number(&mut rest, true)?;
        // Without an early exit, so that it compiles to vector code.
        let pad_ok = rest.iter().fold(0u8, |acc, &b| acc | (b ^ b'x')) == 0;
        (body.len() == size && pad_ok).then_some((s, q, ts))
    })();
    Some(parsed.ok_or(()))
}

/// Takes a decimal number followed by a space (or, if `last`, by the end)
/// off the front of `rest`.
fn take_number(rest: &mut &[u8], last: bool) -> Option<u64> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &rest[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    match rest.get(digits) {
        Some(b' ') => *rest = &rest[digits + 1..],
        None if last => *rest = &rest[digits..],
        _ => return None,
    }
    Some(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// CPU time (user + system) the process has used, in seconds, from
/// /proc/PID/stat (clock ticks of 1/100 s on Linux).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the benchmark against `addr`.
pub async fn closed_loop(addr: &str, args: &BenchArgs) -> std::io::Result<Report> {
    let senders = args.senders.min(args.clients);
    let size = args.size as usize;
    let deadline = Instant::now() + Duration::from_secs_f64(args.bench_timeout.max(1.0));
    let shared = Arc::new(Shared {
        start: Instant::now(),
        size,
        senders,
        confirmed: (0..senders).map(|_| AtomicU64::new(0)).collect(),
        confirm_notify: (0..senders).map(|_| Notify::new()).collect(),
        done: AtomicUsize::new(0),
        all_done: Notify::new(),
        registered: AtomicUsize::new(0),
        synced: AtomicUsize::new(0),
        sync_notify: Notify::new(),
        last_delivery_us: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        first_send_us: AtomicU64::new(u64::MAX),
    });
    let rss_before = args.server_pid.and_then(rss_kib);
    let progress = progress_bar(args);

    // Connect everyone: healthy clients, frozen ones, idle connections.
    let mut writers = Vec::with_capacity(args.clients);
    let mut readers = Vec::with_capacity(args.clients);
    let expected = senders as u64 * args.messages;
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..args.clients)
        .map(|_| {
            Arc::new(Mutex::new(Tally {
                expected_next: vec![0; senders],
                got: 0,
                lost: 0,
                duplicated: 0,
                out_of_order: 0,
                corrupted: 0,
                hist: Histogram::new(3).expect("histogram"),
                cross: Histogram::new(3).expect("histogram"),
                closed: false,
            }))
        })
        .collect();
    let second = match args.second_port {
        Some(port) => {
            let first = tokio::net::lookup_host(addr)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            Some(std::net::SocketAddr::new(first.ip(), port).to_string())
        }
        None => None,
    };
    let cluster = second.is_some();
    for (i, tally) in tallies.iter().enumerate() {
        let target = match &second {
            Some(s) if i % 2 == 1 => s.as_str(),
            _ => addr,
        };
        let stream = TcpStream::connect(target).await?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        writers.push(w);
        readers.push(tokio::spawn(receive(
            r,
            readers.len(),
            tally.clone(),
            shared.clone(),
            expected,
            cluster,
        )));
    }
    let mut frozen = Vec::with_capacity(args.frozen);
    for _ in 0..args.frozen {
        // A small receive buffer: a frozen client's kernel buffer fills
        // quickly, so the server's handling of it shows within the run.
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let sock = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_recv_buffer_size(4096)?;
        let mut s = sock.connect(target).await?;
        // Its first line shows it is registered; then it never reads again.
        let mut byte = [0u8; 1];
        let first_line = async {
            while s.read(&mut byte).await? == 1 && byte[0] != b'\n' {}
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), first_line).await;
        frozen.push(s);
    }
    let idle_reached = Arc::new(AtomicU64::new(0));
    let mut idle = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "imc bench: connection {i} of {} failed: {e}",
                    args.connections
                );
                break;
            }
        };
        idle.push(tokio::spawn(idle_conn(
            stream,
            shared.clone(),
            idle_reached.clone(),
        )));
    }
    let total_listeners = args.clients + idle.len();
    wait_until(&shared.sync_notify, deadline, || {
        shared.registered.load(Ordering::Acquire) >= total_listeners
    })
    .await;

    // Settle: a sync line after the last join reaches everyone after all
    // the join notices before it.
    if let Some(w) = writers.first_mut() {
        w.write_all(b"#sync all joined\n").await?;
    }
    let settled = wait_until(&shared.sync_notify, deadline, || {
        shared.synced.load(Ordering::Acquire) >= total_listeners
    })
    .await;
    let join_settle_secs = shared.start.elapsed().as_secs_f64();
    if !settled {
        eprintln!(
            "imc bench: joins did not settle: {} of {total_listeners} saw the sync line",
            shared.synced.load(Ordering::Acquire)
        );
    }
    let rss_after = args.server_pid.and_then(rss_kib);

    // Measure.
    let cpu_before = args.server_pid.and_then(cpu_secs);
    // Senders hand their write half back when done: dropping it would
    // close the connection before everything has arrived.
    let sender_writers: Vec<_> = writers.drain(..senders).collect();
    let mut send_tasks = Vec::new();
    if settled {
        for (i, mut w) in sender_writers.into_iter().enumerate() {
            let (shared, args) = (shared.clone(), args.clone());
            send_tasks.push(tokio::spawn(async move {
                send(&mut w, i, shared, args).await;
                w
            }));
        }
    }
    let healthy = args.clients;
    let finished = settled
        && wait_until(&shared.all_done, deadline, || {
            if let Some(pb) = &progress {
                let got: u64 = tallies.iter().map(|t| t.lock().unwrap().got).sum();
                pb.set_position(got);
            }
            shared.done.load(Ordering::Acquire) >= healthy
        })
        .await;
    let cpu_after = args.server_pid.and_then(cpu_secs);
    let messages_sent = shared.sent.load(Ordering::Acquire);
    let mut done_writers = Vec::new();
    for t in send_tasks {
        if finished {
            if let Ok(w) = t.await {
                done_writers.push(w);
            }
        } else {
            t.abort();
        }
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }

    // Frozen clients: the server should have closed them. Read what they
    // were sent until EOF (closed) or a quiet second (still open).
    let mut frozen_disconnected = 0;
    for mut s in frozen {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    frozen_disconnected += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }

    // Idle connections: one more broadcast must reach each.
    let mut connections_reached = 0;
    if !idle.is_empty() {
        if let Some(w) = writers.first_mut() {
            w.write_all(b"#final broadcast\n").await?;
        }
        let n = idle.len() as u64;
        let until = Instant::now()
            + Duration::from_secs(30)
                .min(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5));
        while idle_reached.load(Ordering::Acquire) < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        connections_reached = idle_reached.load(Ordering::Acquire);
        for t in idle {
            t.abort();
        }
    }
    for r in &readers {
        r.abort();
    }

    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut cross = Histogram::<u64>::new(3).expect("histogram");
    let mut report = Report {
        clients: args.clients,
        senders,
        messages_per_sender: args.messages,
        size: args.size,
        window: args.window,
        rate: args.rate,
        frozen: args.frozen,
        connections: args.connections,
        join_settle_secs,
        messages_sent,
        deliveries_expected: expected * healthy as u64,
        frozen_disconnected,
        connections_reached,
        server_rss_kib_before: rss_before,
        server_rss_kib_after: rss_after,
        stalled: !finished,
        ..Report::default()
    };
    for t in &tallies {
        let t = t.lock().unwrap();
        hist.add(&t.hist).expect("same histogram bounds");
        cross.add(&t.cross).expect("same histogram bounds");
        report.deliveries += t.got;
        report.lost += t.lost;
        report.duplicated += t.duplicated;
        report.out_of_order += t.out_of_order;
        report.corrupted += t.corrupted;
        report.disconnected += t.closed as u64;
        // Whatever was never seen at all is lost too.
        if !t.closed {
            report.lost += t
                .expected_next
                .iter()
                .map(|&n| args.messages.saturating_sub(n))
                .sum::<u64>();
        }
    }
    let first = shared.first_send_us.load(Ordering::Relaxed);
    let last = shared.last_delivery_us.load(Ordering::Relaxed);
    report.duration_secs = if last > first {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    if report.duration_secs > 0.0 {
        report.deliveries_per_sec = report.deliveries as f64 / report.duration_secs;
        report.messages_per_sec = report.messages_sent as f64 / report.duration_secs;
    }
    report.latency_us_p50 = hist.value_at_quantile(0.50);
    report.latency_us_p90 = hist.value_at_quantile(0.90);
    report.latency_us_p99 = hist.value_at_quantile(0.99);
    report.latency_us_max = hist.max();
    if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
        if report.deliveries > 0 {
            report.server_cpu_us_per_delivery = Some((a - b) * 1e6 / report.deliveries as f64);
        }
    }
    report.cross_node_deliveries = cross.len();
    report.cross_node_latency_us_p50 = cross.value_at_quantile(0.50);
    report.cross_node_latency_us_p99 = cross.value_at_quantile(0.99);
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        let conns = (args.clients + args.frozen + args.connections).max(1) as f64;
        report.server_rss_bytes_per_connection = Some((a.saturating_sub(b) * 1024) as f64 / conns);
    }
    Ok(report)
}

fn progress_bar(args: &BenchArgs) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let total = args.senders.min(args.clients) as u64 * args.messages * args.clients as u64;
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} deliveries {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(pb)
}

/// Waits until `cond` holds, re-checking on each notification and at least
/// every 50 ms; false if `deadline` passes first.
pub(crate) async fn wait_until(
    notify: &Notify,
    deadline: Instant,
    mut cond: impl FnMut() -> bool,
) -> bool {
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let step = (deadline - now).min(Duration::from_millis(50));
        let _ = tokio::time::timeout(step, notify.notified()).await;
    }
}

/// One healthy client's reader. It reads big chunks and handles every
/// complete line in a chunk under one lock, with one clock reading: the
/// bench shares the machine with the server, so its own cost per line must
/// stay well below the server's.
async fn receive(
    mut r: tokio::net::tcp::OwnedReadHalf,
    me: usize,
    tally: Arc<Mutex<Tally>>,
    shared: Arc<Shared>,
    expected: u64,
    cluster: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut first = true;
    let mut done = expected == 0;
    if done {
        shared.done.fetch_add(1, Ordering::AcqRel);
    }
    loop {
        if filled == buf.len() {
            // A line longer than the buffer: not ours; drop it.
            filled = 0;
        }
        let n = match r.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => {
                tally.lock().unwrap().closed = true;
                if !done {
                    shared.done.fetch_add(1, Ordering::AcqRel);
                    shared.all_done.notify_one();
                }
                return;
            }
            Ok(n) => n,
        };
        filled += n;
        let Some(last_nl) = memchr::memrchr(b'\n', &buf[..filled]) else {
            continue;
        };
        if first {
            first = false;
            shared.registered.fetch_add(1, Ordering::AcqRel);
            shared.sync_notify.notify_one();
        }
        let now = micros(shared.start);
        let mut confirmed = 0;
        let mut t = tally.lock().unwrap();
        for line in buf[..last_nl].split(|&b| b == b'\n') {
            if memchr::memmem::find(line, b"#sync ").is_some() {
                shared.synced.fetch_add(1, Ordering::AcqRel);
                shared.sync_notify.notify_one();
                continue;
            }
            match parse_bench(line, shared.size) {
                None => {}
                Some(Err(())) => t.corrupted += 1,
                Some(Ok((sender, seq, ts))) if sender < shared.senders => {
                    let next = &mut t.expected_next[sender];
                    if seq == *next {
                        *next += 1;
                    } else if seq > *next {
                        let gap = seq - *next;
                        *next = seq + 1;
                        t.lost += gap;
                    } else {
                        t.duplicated += 1;
                        t.out_of_order += 1;
                        continue;
                    }
                    t.got += 1;
                    let latency = now.saturating_sub(ts).max(1);
                    let _ = t.hist.record(latency);
                    if cluster && sender % 2 != me % 2 {
                        let _ = t.cross.record(latency);
                    }
                    if sender == me {
                        confirmed += 1;
                    }
                }
                Some(Ok(_)) => t.corrupted += 1,
            }
        }
        let finished = !done && t.got + t.lost >= expected;
        drop(t);
        buf.copy_within(last_nl + 1..filled, 0);
        filled -= last_nl + 1;
        if confirmed > 0 {
            shared.confirmed[me].fetch_add(confirmed, Ordering::AcqRel);
            shared.confirm_notify[me].notify_one();
        }
        shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        if finished {
            done = true;
            shared.done.fetch_add(1, Ordering::AcqRel);
            shared.all_done.notify_one();
        }
    }
}

/// One sender: closed loop (window), open loop (rate) or flat out.
async fn send(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    me: usize,
    shared: Arc<Shared>,
    args: BenchArgs,
) -> u64 {
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let began = Instant::now();
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut seq = 0;
    while seq < args.messages {
        if let Some(win) = args.window {
            while seq.saturating_sub(shared.confirmed[me].load(Ordering::Acquire)) >= win.max(1) {
                let _ = tokio::time::timeout(
                    Duration::from_millis(50),
                    shared.confirm_notify[me].notified(),
                )
                .await;
            }
        }
        if let Some(iv) = interval {
            let at = began + iv.mul_f64(seq as f64);
            tokio::time::sleep_until(at.into()).await;
        }
        let t = micros(shared.start);
        shared.first_send_us.fetch_min(t, Ordering::Relaxed);
        batch.extend_from_slice(&bench_line(me, seq, t, shared.size));
        seq += 1;
        // Flat out: hand the socket several lines per write.
        if args.window.is_none()
            && interval.is_none()
            && batch.len() < 16 * 1024
            && seq < args.messages
        {
            continue;
        }
        if w.write_all(&batch).await.is_err() {
            return seq;
        }
        shared
            .sent
            .fetch_add((batch.len() / (shared.size + 1)) as u64, Ordering::AcqRel);
        batch.clear();
    }
    seq
}

/// An idle scale-test connection: reads and discards, and counts itself
/// once it sees the final broadcast.
async fn idle_conn(stream: TcpStream, shared: Arc<Shared>, reached: Arc<AtomicU64>) {
    let mut r = BufReader::with_capacity(1024, stream);
    let mut line = Vec::new();
    let mut synced = false;
    let mut first = true;
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if first {
            first = false;
            shared.registered.fetch_add(1, Ordering::AcqRel);
            shared.sync_notify.notify_one();
        }
        if !synced && find(&line, b"#sync ").is_some() {
            synced = true;
            shared.synced.fetch_add(1, Ordering::AcqRel);
            shared.sync_notify.notify_one();
        } else if find(&line, b"#final ").is_some() {
            reached.fetch_add(1, Ordering::AcqRel);
            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_parse_back_and_detect_damage() {
        let line = bench_line(3, 42, 1234, 64);
        assert_eq!(line.len(), 65);
        let body = &line[..64];
        assert_eq!(parse_bench(body, 64), Some(Ok((3, 42, 1234))));
        let mut prefixed = b"Address:[127.0.0.1:5]  127.0.0.1:5".to_vec();
        prefixed.extend_from_slice(body);
        assert_eq!(parse_bench(&prefixed, 64), Some(Ok((3, 42, 1234))));
        assert_eq!(parse_bench(&body[..63], 64), Some(Err(())));
        assert_eq!(parse_bench(b"<alice> hello", 64), None);
        assert_eq!(parse_bench(b"#bench 1 2 3", 12), Some(Ok((1, 2, 3))));
        assert_eq!(parse_bench(b"#bench 1 2", 10), Some(Err(())));
        assert_eq!(parse_bench(b"#bench 1 x 3 xx", 15), Some(Err(())));
        assert_eq!(parse_bench(b"#bench 1  2 3 xx", 16), Some(Err(())));
        let mut bad_pad = body.to_vec();
        bad_pad[60] = b'y';
        assert_eq!(parse_bench(&bad_pad, 64), Some(Err(())));
        let huge = b"#bench 1 99999999999999999999999 3 ";
        assert_eq!(parse_bench(huge, huge.len()), Some(Err(())));
    }
}
