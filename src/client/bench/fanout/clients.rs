//! The open-loop run's connections: subscribers that read and tally, the
//! responsiveness probe, and publishers that write on schedule; and how a
//! received line is told apart (payload, sync, damage).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::common::{bench_line, micros, parse_bench};
use super::dial::Dial;
use super::{Counters, Proto, Tally};

/// Calls `f` with each complete line of `buf` (a trailing `\r` removed) and
/// returns how many bytes that used up (through the last `\n`).
pub(super) fn for_each_line(buf: &[u8], mut f: impl FnMut(&[u8])) -> usize {
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
pub(super) enum Seen {
    /// A bench message: publisher, sequence, scheduled time; `Err` when
    /// the marker is there but the message is damaged.
    Bench(Result<(usize, u64, u64), ()>),
    Sync,
    Other,
}

pub(super) fn classify(line: &[u8], size: usize) -> Seen {
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
pub(super) fn payload(p: usize, seq: u64, micros: u64, size: usize) -> Vec<u8> {
    let mut line = bench_line(p, seq, micros, size);
    line.pop();
    line
}

pub(super) const SYNC_PAYLOAD: &[u8] = b"#sync all subscribed";

/// One subscriber: sends the handshake, then reads and tallies until the
/// server closes the connection (or the task is aborted).
pub(super) async fn subscriber(
    (mut r, mut w): (impl AsyncRead + Unpin, impl AsyncWrite + Unpin),
    hello: Arc<[u8]>,
    tally: Arc<Mutex<Tally>>,
    shared: Arc<Counters>,
) {
    let proto = shared.proto;
    let expected = shared.per_publisher * shared.publishers as u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut ready = false;
    let mut synced = false;
    let mut done = false;
    let ok = hello.is_empty() || (w.write_all(&hello).await.is_ok() && w.flush().await.is_ok());
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
        if pings > 0 {
            let _ = w.flush().await;
        }
    }
}

/// Probes the server every 200 ms until `stop`: each probe is a new
/// connection that asks [`Proto::probe`]'s question. Returns each probe's
/// answer time in ms, `None` for no answer within 5 s.
pub(super) async fn probe_loop(
    dial: impl Dial,
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
        let answered =
            tokio::time::timeout(Duration::from_secs(5), probe_once(&dial, &addr, proto)).await;
        times.push(matches!(answered, Ok(Ok(true))).then(|| t0.elapsed().as_secs_f64() * 1e3));
    }
}

/// One probe: connect (through `dial`'s TLS, if any: the handshake counts
/// in the answer time, as it would for a user), ask, and read lines until
/// the answer (true) or EOF.
pub(super) async fn probe_once(dial: &impl Dial, addr: &str, proto: Proto) -> io::Result<bool> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    // `w` lives until the answer: a plain write half shuts the socket's
    // sending side when dropped.
    let (r, mut w) = dial.halves(stream, addr).await?;
    let (question, answer) = proto.probe();
    w.write_all(&question).await?;
    w.flush().await?;
    let mut lines = tokio::io::BufReader::new(r);
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

/// A publisher's read side: waits for its handshake's answer, then reads
/// and discards (imd echoes every public line to its sender, and cuts a
/// sender that does not read; Redis answers each PUBLISH with `:N`).
pub(super) async fn publisher_reader(mut r: impl AsyncRead + Unpin, shared: Arc<Counters>) {
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
pub(super) struct Plan {
    pub(super) p: usize,
    /// When message 0 of publisher 0 is due, µs since the bench started.
    pub(super) start_us: u64,
    pub(super) rate: f64,
    pub(super) count: u64,
    pub(super) channel: String,
    /// Give up writing at this instant.
    pub(super) hard_stop: Instant,
}

impl Plan {
    /// When message `k` is due, µs since the bench started. Publishers are
    /// offset from each other by a fraction of the interval.
    pub(super) fn due_us(&self, k: u64, publishers: usize) -> u64 {
        let slot = k as f64 + self.p as f64 / publishers as f64;
        self.start_us + (slot * 1e6 / self.rate) as u64
    }
}

pub(super) struct Published<W> {
    pub(super) writer: W,
    pub(super) lag_us: u64,
    pub(super) end_us: u64,
    pub(super) complete: bool,
}

/// One publisher: message k is due at start + k / rate; it sleeps until the
/// next one is due, then writes every message due by then in one go (and
/// flushes it, for TLS).
pub(super) async fn publish<W: AsyncWrite + Unpin>(
    mut w: W,
    plan: Plan,
    shared: Arc<Counters>,
) -> Published<W> {
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
        // TLS holds the batch's last record until flushed; a plain socket
        // has nothing to flush.
        if !matches!(
            tokio::time::timeout_at(plan.hard_stop.into(), w.flush()).await,
            Ok(Ok(()))
        ) {
            complete = false;
            break 'schedule;
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

    /// Client and server ends of a TLS session (a self-signed certificate
    /// for "localhost", made here) over an in-memory pipe that holds only
    /// `pipe` bytes: a socket whose buffer is that small.
    async fn tls_over_a_tiny_pipe(
        pipe: usize,
    ) -> (
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
    ) {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        // No session tickets: the server's accept would wait to write them
        // to a client that is not reading, through a pipe that holds 64 bytes.
        server.send_tls13_tickets = 0;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (c, s) = tokio::io::duplex(pipe);
        let name = ServerName::try_from("localhost").unwrap();
        let (c, s) = tokio::join!(
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, c),
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(s),
        );
        (c.unwrap(), s.unwrap())
    }

    /// A publisher over TLS gets its last batch out even when the socket
    /// is full at its last write: rustls keeps the records the socket did
    /// not take, and only the flush after the batch writes them. (Over a
    /// real loopback socket that moment is rare: Linux sizes the buffers in
    /// megabytes and wakes a writer only once a third is free, so a bench
    /// run over TLS loses its tail only now and then. Here a 64-byte pipe
    /// is that full socket at every write, and the runtime has one thread,
    /// so the reader cannot make room in the middle of one.)
    #[tokio::test]
    async fn a_tls_publisher_flushes_what_its_full_socket_did_not_take() {
        let (count, size) = (20, 100);
        let (client, mut server) = tls_over_a_tiny_pipe(64).await;
        // What arrives through TLS, until the publisher's end is dropped.
        let received = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The end comes without TLS's close_notify, which rustls
            // reports as an error: the data before it is what counts.
            while let Ok(n @ 1..) = server.read(&mut buf).await {
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let shared = Arc::new(Counters::new(Proto::Imchat, size, 1, count));
        let plan = Plan {
            p: 0,
            start_us: 0,
            // All due at once: one batch, one write.
            rate: 1e9,
            count,
            channel: "bench".into(),
            hard_stop: Instant::now() + Duration::from_secs(60),
        };
        let published = publish(client, plan, shared.clone()).await;
        assert!(published.complete);
        assert_eq!(shared.sent[0].load(Ordering::Acquire), count);
        // Close the pipe without flushing: what the publisher left in
        // rustls is lost, as it would be at the end of a bench run.
        drop(published.writer);
        let got = received.await.unwrap();
        let seqs: Vec<u64> = lines_of(&got)
            .0
            .iter()
            .filter_map(|l| match classify(l, size) {
                Seen::Bench(Ok((0, seq, _))) => Some(seq),
                _ => None,
            })
            .collect();
        assert_eq!(
            seqs,
            (0..count).collect::<Vec<_>>(),
            "{} bytes arrived",
            got.len()
        );
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
}
