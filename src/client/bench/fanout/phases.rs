//! The open-loop run's phases, in the order [`open_loop`](super::open_loop)
//! runs them: check the arguments, connect, sync, publish on schedule
//! (with the probe running beside), drain.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::super::common::wait_until;
use super::clients::{probe_loop, publish, publisher_reader, subscriber, Plan, SYNC_PAYLOAD};
use super::dial::Dial;
use super::{Counters, FanoutArgs, Proto, Tally};

/// Refuses arguments no run can use (exit 2 in `imc bench`).
pub(super) fn check(args: &FanoutArgs) -> io::Result<()> {
    let bad = |what: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            what.to_string(),
        ))
    };
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return bad("--rate must be a positive number of messages per second");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return bad("--duration must be a positive number of seconds");
    }
    if args.publishers == 0 || args.subscribers == 0 {
        return bad("--publishers and --subscribers must be at least 1");
    }
    if !(48..=4000).contains(&args.size) {
        return bad("--size must be 48 to 4000 bytes");
    }
    Ok(())
}

/// Connects the subscribers, then the publishers (for imd, the
/// publishers' joins are then announced to the subscribers before the sync
/// message), and starts their readers. Returns the reader tasks and the
/// publishers' write halves.
pub(super) async fn connect<D: Dial>(
    dial: &D,
    addr: &str,
    args: &FanoutArgs,
    shared: &Arc<Counters>,
    tallies: &[Arc<Mutex<Tally>>],
    deadline: Instant,
) -> io::Result<(Vec<JoinHandle<()>>, Vec<D::Write>)> {
    let proto = shared.proto;
    let np = args.publishers;
    let hello: Arc<[u8]> = proto.subscriber_hello(&args.channel).into();
    let mut tasks = Vec::with_capacity(tallies.len() + np);
    for (i, tally) in tallies.iter().enumerate() {
        let halves = connect_one(dial, addr, format!("subscriber {i}"), deadline).await?;
        tasks.push(tokio::spawn(subscriber(
            halves,
            hello.clone(),
            tally.clone(),
            shared.clone(),
        )));
    }
    let mut writers = Vec::with_capacity(np);
    for p in 0..np {
        let (r, mut w) = connect_one(dial, addr, format!("publisher {p}"), deadline).await?;
        let hello = proto.publisher_hello();
        if !hello.is_empty() {
            w.write_all(&hello).await?;
            w.flush().await?;
        }
        tasks.push(tokio::spawn(publisher_reader(r, shared.clone())));
        writers.push(w);
    }
    Ok((tasks, writers))
}

/// One connection and its TLS handshake, if any, by `deadline`; errors
/// say which one (`what`).
pub(super) async fn connect_one<D: Dial>(
    dial: &D,
    addr: &str,
    what: String,
    deadline: Instant,
) -> io::Result<(D::Read, D::Write)> {
    let halves = async {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        dial.halves(s, addr).await
    };
    match tokio::time::timeout_at(deadline.into(), halves).await {
        Ok(Ok(halves)) => Ok(halves),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{what}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: connect timed out"),
        )),
    }
}

/// Waits for every handshake, then has publisher 0 send the sync message
/// and waits until every subscriber saw it. False if anything was closed
/// or `deadline` came first.
pub(super) async fn sync(
    args: &FanoutArgs,
    shared: &Counters,
    writers: &mut [impl AsyncWrite + Unpin],
    deadline: Instant,
) -> io::Result<bool> {
    let (n, np) = (args.subscribers, args.publishers);
    let closed = || {
        shared.subs_closed.load(Ordering::Acquire) > 0
            || shared.pubs_closed.load(Ordering::Acquire) > 0
    };
    let all_ready = wait_until(&shared.notify, deadline, || {
        (shared.subs_ready.load(Ordering::Acquire) >= n
            && shared.pubs_ready.load(Ordering::Acquire) >= np)
            || closed()
    })
    .await
        && !closed();
    if !all_ready {
        return Ok(false);
    }
    let mut sync = Vec::new();
    shared.proto.publish(&args.channel, SYNC_PAYLOAD, &mut sync);
    writers[0].write_all(&sync).await?;
    writers[0].flush().await?;
    Ok(wait_until(&shared.notify, deadline, || {
        shared.synced.load(Ordering::Acquire) >= n
    })
    .await)
}

/// What the publishers did, together.
pub(super) struct AllPublished<W> {
    /// The worst lag behind schedule.
    pub(super) lag_us: u64,
    /// When the last one finished.
    pub(super) end_us: u64,
    /// Every publisher wrote everything scheduled.
    pub(super) complete: bool,
    /// Kept open until the end: closing a publisher's socket early could
    /// make some servers drop what it still holds.
    pub(super) writers: Vec<W>,
}

/// The publishers write on schedule from `start_us`; returns once all have
/// finished (or hit duration + drain timeout).
pub(super) async fn publish_all<W: AsyncWrite + Send + Unpin + 'static>(
    args: &FanoutArgs,
    shared: &Arc<Counters>,
    writers: Vec<W>,
    start_us: u64,
) -> AllPublished<W> {
    let hard_stop = shared.start
        + Duration::from_micros(start_us)
        + Duration::from_secs_f64(args.duration + args.drain_timeout.max(0.0));
    let mut pubs = Vec::with_capacity(writers.len());
    for (p, w) in writers.into_iter().enumerate() {
        let plan = Plan {
            p,
            start_us,
            rate: args.rate,
            count: shared.per_publisher,
            channel: args.channel.clone(),
            hard_stop,
        };
        pubs.push(tokio::spawn(publish(w, plan, shared.clone())));
    }
    let mut all = AllPublished {
        lag_us: 0,
        end_us: start_us,
        complete: true,
        writers: Vec::new(),
    };
    for t in pubs {
        match t.await {
            Ok(out) => {
                all.lag_us = all.lag_us.max(out.lag_us);
                all.end_us = all.end_us.max(out.end_us);
                all.complete &= out.complete;
                all.writers.push(out.writer);
            }
            Err(_) => all.complete = false,
        }
    }
    all
}

/// Waits until every still-connected subscriber has everything that was
/// `sent`, or the drain timeout; false if it timed out.
pub(super) async fn drain(
    args: &FanoutArgs,
    shared: &Counters,
    tallies: &[Arc<Mutex<Tally>>],
    sent: &[u64],
) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout.max(0.0));
    let everything = || {
        tallies.iter().all(|t| {
            let t = t.lock().unwrap();
            t.closed || t.next.iter().zip(sent).all(|(got, sent)| got >= sent)
        })
    };
    // `done` counts subscribers with every scheduled message; the full
    // check also covers publishers that sent fewer.
    wait_until(&shared.notify, deadline, || {
        shared.done.load(Ordering::Acquire) >= args.subscribers || everything()
    })
    .await
}

/// The responsiveness probe, on a thread and runtime of its own, so that
/// what it measures is the server, not the load generator's own busy
/// runtime.
pub(super) struct Probe {
    stop: tokio_util::sync::CancellationToken,
    thread: std::thread::JoinHandle<Vec<Option<f64>>>,
}

impl Probe {
    /// Probes `addr` through `dial` (TLS too, for a TLS server).
    pub(super) fn start(dial: impl Dial, addr: &str, proto: Proto) -> Probe {
        let stop = tokio_util::sync::CancellationToken::new();
        let (addr, until) = (addr.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(probe_loop(dial, addr, proto, until)))
                .unwrap_or_default()
        });
        Probe { stop, thread }
    }

    /// Stops probing; each probe's answer time in ms, `None` for none.
    pub(super) async fn stop(self) -> Vec<Option<f64>> {
        self.stop.cancel();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap_or_default())
            .await
            .unwrap_or_default()
    }
}
