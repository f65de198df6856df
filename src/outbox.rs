//! The per-user outbound queue, bounded in bytes.
//!
//! The seed pushed every message through unbuffered channels while holding a
//! global lock, so one client that stopped reading froze everyone. Here every
//! user has an [`Outbox`]: pushing never blocks, the queue counts the bytes it
//! holds, and a user whose queue goes over the limit is cut off (its
//! connection ends and everyone is told it went offline as "too slow"). Until
//! then every line is kept, so a connected user never silently misses one.
//!
//! Lines are [`Bytes`], so one broadcast line is built once and shared by all
//! its recipients: a push is a reference-count increment, not a copy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::LeaveReason;

/// Most bytes the writer hands to one `write` call. Batching many lines per
/// system call is what makes fan-out cheap; the cap keeps one write short.
const BATCH_BYTES: usize = 64 * 1024;

/// The sending side of a user's queue, shared with the registry. There is
/// exactly one per queue; dropping it tells the writer to finish.
#[derive(Debug)]
pub struct Outbox {
    state: Arc<State>,
}

/// The lines waiting for the writer.
///
/// A plain `Mutex<VecDeque>` rather than a channel: the writer takes the
/// whole queue in one swap, and only a push into an empty queue has to wake
/// it, so fan-out costs one short lock and no wakeup per line for a busy
/// user (a channel costs an atomic list push and a wake per line).
#[derive(Debug, Default)]
struct Lines {
    queue: VecDeque<Bytes>,
    /// The [`Outbox`] is gone: write what is left, then finish.
    finished: bool,
}

/// What the sending side and the writer task share.
#[derive(Debug)]
struct State {
    lines: Mutex<Lines>,
    /// Wakes the writer when lines arrive in an empty queue or it finishes.
    ready: Notify,
    /// Bytes pushed and not yet written to the socket.
    queued: AtomicUsize,
    /// The limit on `queued`; see [`crate::server::Config::queue_bytes`].
    limit: usize,
    /// Set once the queue is closed for good (overflow or write error).
    closed: AtomicBool,
    /// Why it was closed, as a [`LeaveReason`] code.
    reason: AtomicU8,
    /// Cancelled when the connection must end because of its outbox.
    cut: CancellationToken,
    /// Woken after every completed write, for senders waiting on a
    /// congested queue (see [`Outbox::relieve`]).
    progress: Notify,
    /// When the queue was created, the clock for `last_progress_ms`.
    born: Instant,
    /// Milliseconds after `born` when the last write completed.
    last_progress_ms: AtomicU64,
}

/// The receiving side, owned by the connection's writer task.
#[derive(Debug)]
pub struct Drain {
    state: Arc<State>,
}

/// Creates a queue holding at most `limit` bytes.
pub fn outbox(limit: usize) -> (Outbox, Drain) {
    let state = Arc::new(State {
        lines: Mutex::new(Lines::default()),
        ready: Notify::new(),
        queued: AtomicUsize::new(0),
        limit,
        closed: AtomicBool::new(false),
        reason: AtomicU8::new(0),
        cut: CancellationToken::new(),
        progress: Notify::new(),
        born: Instant::now(),
        last_progress_ms: AtomicU64::new(0),
    });
    (
        Outbox {
            state: state.clone(),
        },
        Drain { state },
    )
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.state.lock().finished = true;
        self.state.ready.notify_one();
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        // Every critical section is a single push or swap: nothing can be
        // left half-done by a panic, so poisoning is ignored.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self, reason: LeaveReason) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.reason.store(reason as u8, Ordering::Release);
            self.cut.cancel();
        }
    }
}

impl Outbox {
    /// Queues a line. Never blocks. Returns false if the line was not queued
    /// because the user is being disconnected: either already, or now, because
    /// this line would take its queue over the limit.
    pub fn push(&self, line: Bytes) -> bool {
        let st = &self.state;
        if st.closed.load(Ordering::Acquire) {
            return false;
        }
        let n = line.len();
        if st.queued.fetch_add(n, Ordering::AcqRel) + n > st.limit {
            st.close(LeaveReason::TooSlow);
            return false;
        }
        let was_empty = {
            let mut lines = st.lock();
            lines.queue.push_back(line);
            lines.queue.len() == 1
        };
        if was_empty {
            st.ready.notify_one();
        }
        true
    }

    /// Resolves when the connection must end because of its outbox.
    pub fn cut(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.state.cut.cancelled()
    }

    /// Why the outbox was cut, once [`Outbox::cut`] has resolved.
    pub fn cut_reason(&self) -> LeaveReason {
        match self.state.reason.load(Ordering::Acquire) {
            r if r == LeaveReason::TooSlow as u8 => LeaveReason::TooSlow,
            _ => LeaveReason::Error,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.state.queued.load(Ordering::Acquire)
    }

    /// True when more than half the limit is queued: a sender that just
    /// added to this queue should wait for it (see [`Outbox::relieve`]).
    pub fn congested(&self) -> bool {
        self.queued() > self.state.limit / 2
    }

    /// Waits until this queue is back under half its limit, which is how a
    /// fast sender is slowed to the pace of its slowest reader instead of
    /// that reader being cut off. Only a reader that is making progress is
    /// waited for: one whose last write completed more than `stall` ago is
    /// frozen, not slow, and holds nobody up; its queue fills to the limit
    /// and it is cut off then. So a frozen client costs senders one wait of
    /// at most `stall` after its last progress (often none: by the time its
    /// queue is half full it has usually been stuck that long already).
    pub async fn relieve(&self, stall: Duration) {
        let st = &self.state;
        loop {
            let progress = st.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if st.closed.load(Ordering::Acquire) || !self.congested() {
                return;
            }
            // Wait until `stall` after the last progress, not `stall` from
            // now: a reader that froze a while ago costs less than `stall`.
            let last = Duration::from_millis(st.last_progress_ms.load(Ordering::Acquire));
            let deadline = st.born + last + stall;
            if deadline <= Instant::now() {
                return;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return;
            }
        }
    }
}

impl Drain {
    /// Writes queued lines to `w` in batches until every [`Outbox`] handle is
    /// dropped (then flushes what is left and shuts the socket down) or the
    /// outbox is cut (then stops at once: a client that does not read must
    /// not hold anything up). The caller bounds the final flush in time, so
    /// a frozen client cannot stall a graceful shutdown.
    pub async fn run<W: AsyncWrite + Unpin>(self, mut w: W) {
        let st = &self.state;
        let cut = st.cut.clone();
        let mut batch: VecDeque<Bytes> = VecDeque::new();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let finished = {
                let mut lines = st.lock();
                std::mem::swap(&mut lines.queue, &mut batch);
                lines.finished
            };
            if batch.is_empty() {
                if finished {
                    break;
                }
                // An idle connection keeps no buffers: neither ours nor the
                // (drained) deque the swap just left in the shared queue.
                buf = Vec::new();
                batch = VecDeque::new();
                {
                    let mut lines = st.lock();
                    if lines.queue.is_empty() {
                        lines.queue = VecDeque::new();
                    }
                }
                tokio::select! {
                    biased;
                    _ = cut.cancelled() => return,
                    _ = st.ready.notified() => continue,
                }
            }
            while let Some(line) = batch.pop_front() {
                buf.extend_from_slice(&line);
                if buf.len() < BATCH_BYTES && !batch.is_empty() {
                    continue;
                }
                let wrote = tokio::select! {
                    biased;
                    _ = cut.cancelled() => return,
                    r = w.write_all(&buf) => r,
                };
                if let Err(e) = wrote {
                    tracing::debug!("write failed: {e}");
                    st.close(LeaveReason::Error);
                    return;
                }
                st.queued.fetch_sub(buf.len(), Ordering::AcqRel);
                let now = st.born.elapsed().as_millis() as u64;
                st.last_progress_ms.store(now, Ordering::Release);
                st.progress.notify_waiters();
                buf.clear();
            }
        }
        // The outbox is gone: the connection is ending normally.
        let _ = w.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_cuts_and_refuses() {
        let (ob, _drain) = outbox(10);
        assert!(ob.push(Bytes::from_static(b"12345\n")));
        assert!(!ob.push(Bytes::from_static(b"12345\n")));
        assert_eq!(ob.cut_reason(), LeaveReason::TooSlow);
        assert!(!ob.push(Bytes::from_static(b"1\n")));
    }

    #[tokio::test]
    async fn drain_writes_in_order_then_shuts_down() {
        let (ob, drain) = outbox(1 << 20);
        let mock = tokio_test::io::Builder::new().write(b"a\nb\nc\n").build();
        for l in ["a\n", "b\n", "c\n"] {
            assert!(ob.push(Bytes::from(l)));
        }
        drop(ob);
        drain.run(mock).await;
    }
}
