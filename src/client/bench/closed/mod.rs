//! The closed-loop benchmark (`imc bench` without `--subscribers`), in
//! phases: connect everyone, let the joins settle, measure, then check
//! what the server did with frozen clients and idle connections, and
//! report (`report`). The clients' own loops are in `clients`.
//! (Over 400 lines: `BenchArgs`, the flags, is about 55 of them.)

mod clients;
mod report;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::tls::{self, TlsConnector};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::common::{cpu_secs, rss_kib, wait_until};
pub use report::Report;

/// The knobs of one run.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Connect over TLS with this trust (imc's `--tls`, `--ca`); `None`:
    /// plaintext.
    #[arg(skip)]
    pub tls: Option<TlsConnector>,
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

/// One receiving client's tally.
pub(super) struct Tally {
    pub(super) expected_next: Vec<u64>,
    pub(super) got: u64,
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) out_of_order: u64,
    pub(super) corrupted: u64,
    pub(super) hist: Histogram<u64>,
    /// Latencies of deliveries that crossed nodes (cluster mode).
    pub(super) cross: Histogram<u64>,
    pub(super) closed: bool,
}

impl Tally {
    fn new(senders: usize) -> Tally {
        Tally {
            expected_next: vec![0; senders],
            got: 0,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            corrupted: 0,
            hist: Histogram::new(3).expect("histogram"),
            cross: Histogram::new(3).expect("histogram"),
            closed: false,
        }
    }
}

/// What the run's tasks (senders, receivers, idle connections) share:
/// counters and the notifications that wake the phases waiting on them.
pub(super) struct Board {
    pub(super) start: Instant,
    pub(super) size: usize,
    pub(super) senders: usize,
    /// Per sender: how many of its messages came back to it.
    pub(super) confirmed: Vec<AtomicU64>,
    pub(super) confirm_notify: Vec<Notify>,
    /// Healthy clients that have everything they expect (or closed).
    pub(super) done: AtomicUsize,
    pub(super) all_done: Notify,
    /// Connections that have received their first line, i.e. that the
    /// server has registered (a TCP connect completes before that).
    pub(super) registered: AtomicUsize,
    /// Sync lines seen.
    pub(super) synced: AtomicUsize,
    pub(super) sync_notify: Notify,
    pub(super) last_delivery_us: AtomicU64,
    /// Bench messages handed to the socket, all senders.
    pub(super) sent: AtomicU64,
    pub(super) first_send_us: AtomicU64,
}

/// Everyone connected by [`connect`].
struct Clients {
    /// The healthy clients' write halves; the first `senders` send, the
    /// next one (if any) sends the sync and final lines.
    writers: Vec<tls::Writer>,
    /// The healthy clients' readers.
    readers: Vec<JoinHandle<()>>,
    /// Clients that never read after their first line.
    frozen: Vec<Box<dyn tls::Stream>>,
    /// Idle scale-test connections, and how many saw the final broadcast.
    idle: Vec<JoinHandle<()>>,
    idle_reached: Arc<AtomicU64>,
}

/// Runs the benchmark against `addr`.
pub async fn closed_loop(addr: &str, args: &BenchArgs) -> std::io::Result<Report> {
    let senders = args.senders.min(args.clients);
    let deadline = Instant::now() + Duration::from_secs_f64(args.bench_timeout.max(1.0));
    let board = Arc::new(Board {
        start: Instant::now(),
        size: args.size as usize,
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
    let expected = senders as u64 * args.messages;
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..args.clients)
        .map(|_| Arc::new(Mutex::new(Tally::new(senders))))
        .collect();

    let mut clients = connect(addr, args, &board, &tallies, expected).await?;
    let settled = settle(&board, &mut clients, deadline).await?;
    let join_settle_secs = board.start.elapsed().as_secs_f64();
    let rss_after = args.server_pid.and_then(rss_kib);

    let cpu_before = args.server_pid.and_then(cpu_secs);
    // Senders hand their write half back when done: dropping it would
    // close the connection before everything has arrived.
    let sender_writers: Vec<_> = clients.writers.drain(..senders).collect();
    let mut kept = Vec::new();
    let finished = settled && {
        let (finished, writers) = measure(args, &board, sender_writers, &tallies, deadline).await;
        kept = writers;
        finished
    };
    let cpu_after = args.server_pid.and_then(cpu_secs);

    let frozen_disconnected = count_cut(std::mem::take(&mut clients.frozen)).await;
    let connections_reached = reach_idle(&mut clients, deadline).await?;
    for r in &clients.readers {
        r.abort();
    }
    drop(kept);

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
        messages_sent: board.sent.load(Ordering::Acquire),
        deliveries_expected: expected * args.clients as u64,
        frozen_disconnected,
        connections_reached,
        server_rss_kib_before: rss_before,
        server_rss_kib_after: rss_after,
        stalled: !finished,
        ..Report::default()
    };
    report.add_tallies(&tallies, args.messages);
    report.add_timing(&board);
    if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
        if report.deliveries > 0 {
            report.server_cpu_us_per_delivery = Some((a - b) * 1e6 / report.deliveries as f64);
        }
    }
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        let conns = (args.clients + args.frozen + args.connections).max(1) as f64;
        report.server_rss_bytes_per_connection = Some((a.saturating_sub(b) * 1024) as f64 / conns);
    }
    Ok(report)
}

/// Connects everyone: healthy clients (alternating between the nodes in
/// cluster mode), frozen ones, idle connections.
async fn connect(
    addr: &str,
    args: &BenchArgs,
    board: &Arc<Board>,
    tallies: &[Arc<Mutex<Tally>>],
    expected: u64,
) -> std::io::Result<Clients> {
    let mut writers = Vec::with_capacity(args.clients);
    let mut readers = Vec::with_capacity(args.clients);
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
        let (r, w) = tls::halves(stream, args.tls.as_ref(), target).await?;
        writers.push(w);
        readers.push(tokio::spawn(clients::receive(
            r,
            readers.len(),
            tally.clone(),
            board.clone(),
            expected,
            cluster,
        )));
    }
    let mut frozen = Vec::with_capacity(args.frozen);
    for _ in 0..args.frozen {
        frozen.push(connect_frozen(addr, args.tls.as_ref()).await?);
    }
    let idle_reached = Arc::new(AtomicU64::new(0));
    let mut idle = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let dial =
            async { tls::whole(TcpStream::connect(addr).await?, args.tls.as_ref(), addr).await };
        let stream = match dial.await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "imc bench: connection {i} of {} failed: {e}",
                    args.connections
                );
                break;
            }
        };
        idle.push(tokio::spawn(clients::idle_conn(
            stream,
            board.clone(),
            idle_reached.clone(),
        )));
    }
    Ok(Clients {
        writers,
        readers,
        frozen,
        idle,
        idle_reached,
    })
}

/// A client that reads its first line (so it is registered) and never
/// again. A small receive buffer: its kernel buffer fills quickly, so the
/// server's handling of it shows within the run.
async fn connect_frozen(
    addr: &str,
    tls: Option<&TlsConnector>,
) -> std::io::Result<Box<dyn tls::Stream>> {
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
    let mut s = tls::whole(sock.connect(target).await?, tls, addr).await?;
    let mut byte = [0u8; 1];
    let first_line = async {
        while s.read(&mut byte).await? == 1 && byte[0] != b'\n' {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), first_line).await;
    Ok(s)
}

/// Waits until everyone is registered, then sends a sync line: one sent
/// after the last join reaches everyone after all the join notices before
/// it. False if that did not happen before `deadline`.
async fn settle(board: &Board, clients: &mut Clients, deadline: Instant) -> std::io::Result<bool> {
    let listeners = clients.readers.len() + clients.idle.len();
    wait_until(&board.sync_notify, deadline, || {
        board.registered.load(Ordering::Acquire) >= listeners
    })
    .await;
    if let Some(w) = clients.writers.first_mut() {
        w.write_all(b"#sync all joined\n").await?;
        w.flush().await?;
    }
    let settled = wait_until(&board.sync_notify, deadline, || {
        board.synced.load(Ordering::Acquire) >= listeners
    })
    .await;
    if !settled {
        eprintln!(
            "imc bench: joins did not settle: {} of {listeners} saw the sync line",
            board.synced.load(Ordering::Acquire)
        );
    }
    Ok(settled)
}

/// The measured phase: the senders send, and this waits until every
/// healthy client has all it expects. False if `deadline` came first; with
/// the senders' write halves, to keep open until the run ends.
async fn measure(
    args: &BenchArgs,
    board: &Arc<Board>,
    sender_writers: Vec<tls::Writer>,
    tallies: &[Arc<Mutex<Tally>>],
    deadline: Instant,
) -> (bool, Vec<tls::Writer>) {
    let progress = progress_bar(args);
    let mut send_tasks = Vec::new();
    for (i, mut w) in sender_writers.into_iter().enumerate() {
        let (board, args) = (board.clone(), args.clone());
        send_tasks.push(tokio::spawn(async move {
            clients::send(&mut w, i, board, args).await;
            w
        }));
    }
    let finished = wait_until(&board.all_done, deadline, || {
        if let Some(pb) = &progress {
            let got: u64 = tallies.iter().map(|t| t.lock().unwrap().got).sum();
            pb.set_position(got);
        }
        board.done.load(Ordering::Acquire) >= args.clients
    })
    .await;
    let mut kept = Vec::new();
    for t in send_tasks {
        if finished {
            if let Ok(w) = t.await {
                kept.push(w);
            }
        } else {
            t.abort();
        }
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    (finished, kept)
}

/// Frozen clients: the server should have closed them. Reads what they
/// were sent until EOF (closed) or a quiet second (still open); returns
/// how many were closed.
async fn count_cut(frozen: Vec<Box<dyn tls::Stream>>) -> u64 {
    let mut cut = 0;
    for mut s in frozen {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    cut += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    cut
}

/// Idle connections: one more broadcast must reach each. Returns how many
/// it reached.
async fn reach_idle(clients: &mut Clients, deadline: Instant) -> std::io::Result<u64> {
    if clients.idle.is_empty() {
        return Ok(0);
    }
    if let Some(w) = clients.writers.first_mut() {
        w.write_all(b"#final broadcast\n").await?;
        w.flush().await?;
    }
    let n = clients.idle.len() as u64;
    let until = Instant::now()
        + Duration::from_secs(30)
            .min(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5));
    while clients.idle_reached.load(Ordering::Acquire) < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in &clients.idle {
        t.abort();
    }
    Ok(clients.idle_reached.load(Ordering::Acquire))
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
