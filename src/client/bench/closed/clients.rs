//! The closed-loop benchmark's clients: a healthy client's reader, a
//! sender, and an idle scale-test connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::super::common::{bench_line, find, micros, parse_bench};
use super::{BenchArgs, Board, Tally};

/// One healthy client's reader. It reads big chunks and handles every
/// complete line in a chunk under one lock, with one clock reading: the
/// bench shares the machine with the server, so its own cost per line must
/// stay well below the server's.
pub(super) async fn receive(
    mut r: crate::client::tls::Reader,
    me: usize,
    tally: Arc<Mutex<Tally>>,
    board: Arc<Board>,
    expected: u64,
    cluster: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut first = true;
    let mut done = expected == 0;
    if done {
        board.done.fetch_add(1, Ordering::AcqRel);
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
                    board.done.fetch_add(1, Ordering::AcqRel);
                    board.all_done.notify_one();
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
            board.registered.fetch_add(1, Ordering::AcqRel);
            board.sync_notify.notify_one();
        }
        let now = micros(board.start);
        let mut confirmed = 0;
        let mut t = tally.lock().unwrap();
        for line in buf[..last_nl].split(|&b| b == b'\n') {
            if memchr::memmem::find(line, b"#sync ").is_some() {
                board.synced.fetch_add(1, Ordering::AcqRel);
                board.sync_notify.notify_one();
                continue;
            }
            match parse_bench(line, board.size) {
                None => {}
                Some(Err(())) => t.corrupted += 1,
                Some(Ok((sender, seq, ts))) if sender < board.senders => {
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
            board.confirmed[me].fetch_add(confirmed, Ordering::AcqRel);
            board.confirm_notify[me].notify_one();
        }
        board.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        if finished {
            done = true;
            board.done.fetch_add(1, Ordering::AcqRel);
            board.all_done.notify_one();
        }
    }
}

/// One sender: closed loop (window), open loop (rate) or flat out.
pub(super) async fn send(
    w: &mut crate::client::tls::Writer,
    me: usize,
    board: Arc<Board>,
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
            while seq.saturating_sub(board.confirmed[me].load(Ordering::Acquire)) >= win.max(1) {
                let _ = tokio::time::timeout(
                    Duration::from_millis(50),
                    board.confirm_notify[me].notified(),
                )
                .await;
            }
        }
        if let Some(iv) = interval {
            let at = began + iv.mul_f64(seq as f64);
            tokio::time::sleep_until(at.into()).await;
        }
        let t = micros(board.start);
        board.first_send_us.fetch_min(t, Ordering::Relaxed);
        batch.extend_from_slice(&bench_line(me, seq, t, board.size));
        seq += 1;
        // Flat out: hand the socket several lines per write.
        if args.window.is_none()
            && interval.is_none()
            && batch.len() < 16 * 1024
            && seq < args.messages
        {
            continue;
        }
        // The flush sends the batch through TLS (a no-op on a plain socket).
        if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
            return seq;
        }
        board
            .sent
            .fetch_add((batch.len() / (board.size + 1)) as u64, Ordering::AcqRel);
        batch.clear();
    }
    seq
}

/// An idle scale-test connection: reads and discards, and counts itself
/// once it sees the final broadcast.
pub(super) async fn idle_conn(
    stream: Box<dyn crate::client::tls::Stream>,
    board: Arc<Board>,
    reached: Arc<AtomicU64>,
) {
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
            board.registered.fetch_add(1, Ordering::AcqRel);
            board.sync_notify.notify_one();
        }
        if !synced && find(&line, b"#sync ").is_some() {
            synced = true;
            board.synced.fetch_add(1, Ordering::AcqRel);
            board.sync_notify.notify_one();
        } else if find(&line, b"#final ").is_some() {
            reached.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
}
