//! The per-user outbound queue, bounded in bytes.
//!
//! Every user has an [`Outbox`]: pushing never blocks, and the queue counts
//! the bytes it holds. Every line is kept until it is written, so a connected
//! user never silently misses one.
//!
//! # Who is slow: the reader or the server?
//!
//! A queue can grow for two reasons, and they get opposite treatment:
//!
//! - **The server is behind** (CPU overload: the writer task has not been
//!   run yet, or writes as fast as it is scheduled). The reader is healthy.
//!   Senders whose lines land in a queue over half its limit wait for it
//!   ([`Outbox::wait_for_room`]) before their next line is read, so overload slows
//!   the publishers, and the reader is never cut for it.
//! - **The reader is not taking data**: a write to its socket has been
//!   waiting on a full socket buffer for longer than `stall` with the peer
//!   acknowledging nothing meanwhile (the writer marks the moment a write
//!   could not complete and restarts the clock whenever it sees the
//!   socket's unacknowledged bytes shrink, [`Outbox::frozen`]). Then
//!   nobody waits for it; its queue fills to the limit and it is cut off
//!   (its connection ends and everyone is told it went offline as "too
//!   slow").
//!
//! The clock therefore only runs while the socket refuses data, never while
//! the writer waits for a CPU: a subscriber whose socket accepts data as
//! fast as the server writes is not slow, the server is.
//!
//! Lines are [`Bytes`], so one broadcast line is built once and shared by all
//! its recipients: a push is a reference-count increment, not a copy. The
//! writer takes the whole queue per write; how often it may write under a
//! steady flow is [`super::pace`]'s rule.
//!
//! (Over 400 lines: the queue, the server-wide budget and the writer share
//! one private `State`, so they stay in one file; about 720 lines are
//! tests, most of them the exact edges mutation testing asked for, and
//! the write interval's instants in paused time.)

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pace::Pace;
use crate::protocol::LeaveReason;

/// Most bytes the writer hands to one `write` call. Batching many lines per
/// system call is what makes fan-out cheap; the cap keeps one write short.
const BATCH_BYTES: usize = 64 * 1024;

/// What a queued line costs beyond its bytes: its handle in the queue (a
/// [`Bytes`] is 32 bytes, and the deque keeps spare slots). Charged with
/// every line so that a queue of short lines is bounded by what it really
/// takes, not by its text alone (1 MiB of 20-byte lines is 2.6 MiB).
pub const LINE_COST: usize = 32;

/// The socket under a user's connection, as far as the writer needs it
/// beyond writing to it. In-memory writers (tests, benches) know nothing and
/// do nothing.
pub trait PeerSocket {
    /// Bytes written to the socket that the peer has not acknowledged yet,
    /// if known. While a write waits on a full socket, this shrinking is
    /// the proof that the reader is taking data.
    fn unacked(&self) -> Option<usize> {
        None
    }

    /// Makes the connection's close a reset that discards unsent data.
    ///
    /// A user cut off for not reading has up to `--queue-bytes` we stopped
    /// writing plus a full socket buffer (megabytes) that the kernel would
    /// go on trying to send after a normal close, for minutes, to a peer
    /// that is not reading. A reset frees that memory at once; the user was
    /// cut anyway.
    fn reset_on_close(&self) {}
}

impl<T: PeerSocket + ?Sized> PeerSocket for &mut T {
    fn unacked(&self) -> Option<usize> {
        (**self).unacked()
    }
    fn reset_on_close(&self) {
        (**self).reset_on_close()
    }
}

impl PeerSocket for tokio::net::tcp::OwnedWriteHalf {
    fn unacked(&self) -> Option<usize> {
        use std::os::fd::AsFd;
        unacked(self.as_ref().as_fd())
    }

    fn reset_on_close(&self) {
        use std::os::fd::AsFd;
        reset_on_close(self.as_ref().as_fd())
    }
}

/// [`PeerSocket::unacked`] for a TCP socket: its unacknowledged bytes as
/// the kernel counts them (SIOCOUTQ). Shared by the plaintext and the TLS
/// writer, which both sit on one.
#[cfg(target_os = "linux")]
pub fn unacked(socket: std::os::fd::BorrowedFd<'_>) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) stores one int through the pointer; the
    // descriptor is a live TCP socket, borrowed for the call.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (r == 0).then_some(n as usize)
}

/// [`PeerSocket::unacked`] where the kernel does not say.
#[cfg(not(target_os = "linux"))]
pub fn unacked(_socket: std::os::fd::BorrowedFd<'_>) -> Option<usize> {
    None
}

/// [`PeerSocket::reset_on_close`] for a TCP socket: SO_LINGER with a zero
/// timeout, so close() sends a reset and frees both socket buffers. The
/// close itself happens when the reading half is dropped too, as the
/// session ends.
pub fn reset_on_close(socket: std::os::fd::BorrowedFd<'_>) {
    let sock = socket2::SockRef::from(&socket);
    if let Err(e) = sock.set_linger(Some(Duration::ZERO)) {
        tracing::debug!("cannot reset a cut connection: {e}");
    }
}

impl PeerSocket for tokio::io::Sink {}
impl PeerSocket for tokio::io::DuplexStream {}
#[cfg(test)]
impl PeerSocket for tokio_test::io::Mock {}

/// All the output queued on one server, bounded in total (see
/// [`crate::server::Config::max_queued_bytes`]). Every [`Outbox`] charges
/// its lines here as well as to itself.
///
/// While the total is over the limit, a reader that is not taking data
/// ([`Outbox::frozen`]) is cut at its next line whatever its own queue
/// holds, and every sender waits for each of its recipients to drain (not
/// only for those over half their queue). So the total is held near the
/// limit by cutting only readers that do not read and by slowing senders;
/// a reader that is reading is never cut for it.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Told each time the total passes [`STORM_BYTES`] upwards.
    storm: Notify,
}

/// Queued output, all queues together, that counts as a storm worth giving
/// memory back after (see [`Budget::storm`]).
pub const STORM_BYTES: usize = 32 * 1024 * 1024;

impl Budget {
    /// A budget of `limit` bytes for all queues together.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
            storm: Notify::new(),
        })
    }

    /// Bytes charged by all queues now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Resolves once the total has passed [`STORM_BYTES`] upwards, or at
    /// once if it did since the last call returned. So whoever watches for
    /// storms sleeps, with no timer, while the server is quiet; the cost
    /// on the path of every line is one comparison.
    pub async fn storm(&self) {
        self.storm.notified().await;
    }

    /// Gives back `bytes` charged before (lines written, dropped or cut).
    fn refund(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Charges `cost` bytes; returns the new total.
    fn charge(&self, cost: usize) -> usize {
        let total = self.used.fetch_add(cost, Ordering::AcqRel) + cost;
        if total >= STORM_BYTES && total - cost < STORM_BYTES {
            // A permit is kept if nobody waits yet: no storm is missed.
            self.storm.notify_one();
        }
        total
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

/// The sending side of a user's queue, shared with the hub. There is
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
    /// The [`Drain`] is gone: nothing will be written any more, and nothing
    /// more may be queued (its charges were returned).
    gone: bool,
    /// Protocol lines in `queue` (an entry may hold many: a batch of public
    /// lines, a `who` reply). Counted here, under the lock a push takes
    /// anyway, so that the writer can count lines written without looking
    /// at their bytes (see [`Tally`]).
    count: u64,
}

/// What the sending side and the writer task share.
#[derive(Debug)]
struct State {
    lines: Mutex<Lines>,
    /// Wakes the writer when lines arrive in an empty queue or it finishes.
    ready: Notify,
    /// Bytes pushed and not yet written to the socket, each line charged
    /// [`LINE_COST`] more than its length.
    queued: AtomicUsize,
    /// The server-wide total that `queued` is also charged to.
    budget: Arc<Budget>,
    /// The limit on `queued`; see [`crate::server::Config::queue_bytes`].
    limit: usize,
    /// How long the socket may refuse data before the reader counts as
    /// frozen; see [`crate::server::Config::stall_timeout`].
    stall: Duration,
    /// Set once the queue is closed for good (overflow or write error).
    closed: AtomicBool,
    /// Why it was closed, as a [`LeaveReason`] code.
    reason: AtomicU8,
    /// Cancelled when the connection must end because of its outbox.
    cut: CancellationToken,
    /// Woken after every completed write, when a write starts waiting on a
    /// full socket, and when the queue closes: for senders waiting on a
    /// congested queue (see [`Outbox::wait_for_room`]).
    progress: Notify,
    /// When the queue was created, the clock for `blocked_since_ms`.
    born: Instant,
    /// 1 + milliseconds after `born` when the pending write first found the
    /// socket full; 0 while no write is waiting for the socket.
    blocked_since_ms: AtomicU64,
    /// Lines and bytes written to the socket, for the metrics (see [`Tally`]).
    written: Written,
    /// Set when the user's own input was just read ([`Outbox::hurry`]):
    /// the writer's next write does not wait for its write interval.
    hurry: AtomicBool,
    /// See [`paced_outbox`]; zero: the writer never waits.
    interval: Duration,
}

/// What a writer has written. Only the writer task adds to it, once per
/// write (bytes) and once per batch taken from the queue (lines), with a
/// plain load and store: no locked instruction, and nothing shared with
/// other connections, so counting costs the fan-out nothing measurable.
#[derive(Debug, Default)]
struct Written {
    lines: AtomicU64,
    bytes: AtomicU64,
}

/// Adds `n` to a counter that only one task writes: a plain load and store
/// (a `fetch_add` would be a locked instruction for nothing).
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// A read-only view of one queue's counters for the metrics, which may
/// outlive both the [`Outbox`] and the [`Drain`] (the connection reads it
/// once more as it ends, after its writer has finished).
#[derive(Debug, Clone)]
pub struct Tally {
    state: Arc<State>,
}

impl Tally {
    /// Protocol lines written to the socket: counted once the writer has
    /// written the whole batch it took from the queue, so lines of a batch
    /// cut off halfway are not counted.
    pub fn lines_written(&self) -> u64 {
        self.state.written.lines.load(Ordering::Relaxed)
    }

    /// Bytes written to the socket.
    pub fn bytes_written(&self) -> u64 {
        self.state.written.bytes.load(Ordering::Relaxed)
    }

    /// True if the queue was cut because its reader was too slow.
    pub fn cut_too_slow(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
            && self.state.reason.load(Ordering::Acquire) == LeaveReason::TooSlow as u8
    }
}

/// Protocol lines in `bytes` (each ends with `\n`).
pub fn count_lines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

/// The receiving side, owned by the connection's writer task.
#[derive(Debug)]
pub struct Drain {
    state: Arc<State>,
}

/// Creates a queue holding at most `limit` bytes, charged to `budget` as
/// well, for a reader that counts as frozen once its socket has refused
/// data for `stall`. Its writer writes whenever there is something to
/// write; [`paced_outbox`] is the same with a write interval.
pub fn outbox(limit: usize, stall: Duration, budget: Arc<Budget>) -> (Outbox, Drain) {
    paced_outbox(limit, stall, Duration::ZERO, budget)
}

/// [`outbox`] whose writer, while lines keep coming, writes at most once
/// per `interval`, each write carrying everything queued meanwhile, so
/// that fan-out's cost per line does not grow with idle cores. What waits
/// and what does not (the first lines after a quiet spell, answers, a full
/// 64 KiB (`BATCH_BYTES`), a closing connection) is [`super::pace`]'s rule.
pub fn paced_outbox(
    limit: usize,
    stall: Duration,
    interval: Duration,
    budget: Arc<Budget>,
) -> (Outbox, Drain) {
    let state = Arc::new(State {
        lines: Mutex::new(Lines::default()),
        ready: Notify::new(),
        queued: AtomicUsize::new(0),
        budget,
        limit,
        stall,
        closed: AtomicBool::new(false),
        reason: AtomicU8::new(0),
        cut: CancellationToken::new(),
        progress: Notify::new(),
        born: Instant::now(),
        blocked_since_ms: AtomicU64::new(0),
        written: Written::default(),
        hurry: AtomicBool::new(false),
        interval,
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

impl Drop for Drain {
    /// However the writer ends (finished, cut, write error, or aborted after
    /// the shutdown grace), nothing will be written any more: close the
    /// queue, so that pushes stop and a sender waiting for it moves on.
    fn drop(&mut self) {
        let st = &self.state;
        {
            let mut lines = st.lock();
            lines.gone = true;
            lines.queue = VecDeque::new();
            lines.count = 0;
            let left = st.queued.swap(0, Ordering::AcqRel);
            st.budget.refund(left);
        }
        st.close(LeaveReason::Error);
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
            self.progress.notify_waiters();
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    /// When the pending write found the socket full, if one is waiting.
    fn blocked_since(&self) -> Option<Instant> {
        match self.blocked_since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.born + Duration::from_millis(ms - 1)),
        }
    }

    /// See [`Outbox::frozen`].
    fn frozen(&self) -> bool {
        self.blocked_since()
            .is_some_and(|t| t.elapsed() >= self.stall)
    }
}

impl Outbox {
    /// Queues a line. Never blocks. Returns false if the line was not queued
    /// because the user is being disconnected: either already, or now,
    /// because this line takes its queue over the limit while the reader is
    /// [frozen](Outbox::frozen), or over twice the limit whatever the reason
    /// (a memory bound that senders waiting at half the limit keep a healthy
    /// reader far from).
    ///
    /// While the server's [`Budget`] is exceeded, a frozen reader is cut at
    /// its next line, whatever its own queue holds.
    pub fn push(&self, line: Bytes) -> bool {
        let n = count_lines(&line);
        self.push_lines(line, n)
    }

    /// [`Outbox::push`] for `line` holding `n` protocol lines: the fan-out
    /// counts a broadcast's lines once for all its recipients.
    pub fn push_lines(&self, line: Bytes, n: u64) -> bool {
        let st = &self.state;
        if st.closed.load(Ordering::Acquire) {
            return false;
        }
        let cost = line.len() + LINE_COST;
        let mut lines = st.lock();
        if lines.gone {
            return false;
        }
        let queued = st.queued.fetch_add(cost, Ordering::AcqRel) + cost;
        let total = st.budget.charge(cost);
        let over_own = queued > st.limit && (queued > st.limit * 2 || st.frozen());
        if over_own || (total > st.budget.limit && st.frozen()) {
            tracing::debug!(
                queued,
                total,
                frozen = st.frozen(),
                blocked_ms = st.blocked_since().map(|t| t.elapsed().as_millis() as u64),
                "queue cut"
            );
            st.queued.fetch_sub(cost, Ordering::AcqRel);
            st.budget.refund(cost);
            drop(lines);
            st.close(LeaveReason::TooSlow);
            return false;
        }
        lines.queue.push_back(line);
        lines.count += n;
        let was_empty = lines.queue.len() == 1;
        drop(lines);
        // The writer waits for lines in an empty queue, and may be waiting
        // out its write interval (see `paced_outbox`) when an
        // answer or a full batch comes, neither of which waits.
        let full = queued >= BATCH_BYTES && queued - cost < BATCH_BYTES;
        if was_empty || full || st.hurry.load(Ordering::Relaxed) {
            st.ready.notify_one();
        }
        true
    }

    /// Tells the writer that the user just sent something: what is queued
    /// next is probably its answer (an echo, a `who` reply), which a client
    /// waits for before it sends again, so it goes out without waiting for
    /// the write interval ([`paced_outbox`]). Pacing is for lines
    /// that others' traffic brings; a client in a request-and-answer loop
    /// is not slowed to one exchange per interval.
    pub fn hurry(&self) {
        self.state.hurry.store(true, Ordering::Relaxed);
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

    /// This queue's counters, for the metrics.
    pub fn tally(&self) -> Tally {
        Tally {
            state: self.state.clone(),
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.state.queued.load(Ordering::Acquire)
    }

    /// True when more than half the limit is queued, or anything at all
    /// while the server's [`Budget`] is exceeded: a sender that just added
    /// to this queue should wait for it (see [`Outbox::wait_for_room`]).
    pub fn congested(&self) -> bool {
        let queued = self.queued();
        queued > self.state.limit / 2 || (queued > 0 && self.state.budget.over())
    }

    /// True when the reader is not taking data: a write to its socket has
    /// been waiting on a full socket buffer for at least `stall`, with no
    /// data acknowledged by the peer meanwhile. A writer
    /// that is merely behind (not yet scheduled, or writing as fast as it
    /// runs) is never frozen.
    pub fn frozen(&self) -> bool {
        self.state.frozen()
    }

    /// Waits until this queue is no longer [congested](Outbox::congested)
    /// (under half its limit, and empty while the budget is exceeded), which is how a
    /// fast sender is slowed to the pace its readers and the server can
    /// sustain instead of a reader being cut off. The wait lasts as long as
    /// the reader keeps taking data; it ends early when the reader is
    /// [frozen](Outbox::frozen) (it then holds nobody up; its queue fills to
    /// the limit and it is cut off) or the queue closes. A frozen client
    /// costs a sender at most one wait of `stall` from the moment its socket
    /// filled (often none: by the time its queue is half full it has
    /// usually been stuck that long already).
    pub async fn wait_for_room(&self) {
        let st = &self.state;
        loop {
            let progress = st.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if st.closed.load(Ordering::Acquire) || !self.congested() {
                return;
            }
            match st.blocked_since() {
                // The server is behind, not the reader: wait for the writer.
                None => progress.await,
                Some(since) => {
                    let deadline = since + st.stall;
                    if deadline <= Instant::now() {
                        return;
                    }
                    if tokio::time::timeout_at(deadline, progress).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drain {
    /// Writes queued lines to `w` in batches until every [`Outbox`] handle is
    /// dropped (then flushes what is left and shuts the socket down) or the
    /// outbox is cut (then stops at once: a client that does not read must
    /// not hold anything up). The caller bounds the final flush in time, so
    /// a frozen client cannot stall a graceful shutdown. Returns true if it
    /// stopped because the outbox was cut.
    pub async fn write_to<W: AsyncWrite + PeerSocket + Unpin>(self, mut w: W) -> bool {
        let st = &self.state;
        let mut batch: VecDeque<Bytes> = VecDeque::new();
        let mut buf: Vec<u8> = Vec::new();
        // What the lines in `buf` were charged.
        let mut charged = 0;
        let mut pace = Pace::default();
        loop {
            if let Some(due) = pace.next_write(st.interval) {
                if self.should_wait(due) {
                    // Boxed: only a steady flow waits, and every idle
                    // connection's task would hold the wait's timer.
                    match Box::pin(self.pause_until(due)).await {
                        Pause::Cut => return true,
                        Pause::Woken => continue,
                        Pause::Due => {}
                    }
                }
            }
            // A hurry from before this batch was taken is used up by it.
            st.hurry.store(false, Ordering::Relaxed);
            let (finished, batch_lines) = {
                let mut lines = st.lock();
                std::mem::swap(&mut lines.queue, &mut batch);
                (lines.finished, std::mem::take(&mut lines.count))
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
                    _ = st.cut.cancelled() => return true,
                    _ = st.ready.notified() => continue,
                }
            }
            while let Some(line) = batch.pop_front() {
                buf.extend_from_slice(&line);
                charged += line.len() + LINE_COST;
                if buf.len() < BATCH_BYTES && !batch.is_empty() {
                    continue;
                }
                let wrote = tokio::select! {
                    biased;
                    _ = st.cut.cancelled() => return true,
                    r = write_all_marking(st, &mut w, &buf) => r,
                };
                if let Err(e) = wrote {
                    tracing::debug!("write failed: {e}");
                    st.close(LeaveReason::Error);
                    return false;
                }
                st.queued.fetch_sub(charged, Ordering::AcqRel);
                st.budget.refund(charged);
                bump(&st.written.bytes, buf.len() as u64);
                charged = 0;
                st.progress.notify_waiters();
                buf.clear();
            }
            bump(&st.written.lines, batch_lines);
            pace.wrote(st.interval);
        }
        // The outbox is gone: the connection is ending normally.
        let _ = w.shutdown().await;
        false
    }
}

/// How a writer's wait for its write interval ended.
enum Pause {
    /// The outbox was cut.
    Cut,
    /// Something came that may not wait: look again.
    Woken,
    /// The interval is over.
    Due,
}

impl Drain {
    /// Waits until `due`, or until a wait stops making sense: an answer or
    /// a full batch queued, or the connection closing (each of which wakes
    /// the writer, see [`Outbox::push_lines`]).
    async fn pause_until(&self, due: Instant) -> Pause {
        let st = &self.state;
        tokio::select! {
            biased;
            _ = st.cut.cancelled() => Pause::Cut,
            _ = st.ready.notified() => Pause::Woken,
            _ = tokio::time::sleep_until(due) => Pause::Due,
        }
    }

    /// Whether the writer should wait until `due` (when its write pace
    /// allows the next write) before writing what is queued: not once that
    /// has passed, nor with nothing queued (it then waits for lines
    /// anyway), a full batch queued, the user's own input just read
    /// ([`Outbox::hurry`]), or the connection closing.
    fn should_wait(&self, due: Instant) -> bool {
        let st = &self.state;
        if Instant::now() >= due {
            return false;
        }
        let queued = st.queued.load(Ordering::Acquire);
        if queued == 0 || queued >= BATCH_BYTES || st.hurry.load(Ordering::Relaxed) {
            return false;
        }
        !st.lock().finished
    }
}

/// Writes all of `buf` and flushes it, recording in `st` when the socket
/// first refuses data (so a reader that stops taking data can be told from
/// a writer that is merely behind) and clearing that once the whole buffer
/// is written.
///
/// The flush is what puts the lines on the wire through TLS, whose writer
/// may keep encrypted records it could not write yet; a TCP socket's flush
/// returns at once. A flush waiting on a full socket counts as a refused
/// write.
///
/// A refused write alone does not prove the reader stopped: Linux reports a
/// large send buffer (it grows to 4 MB) writable again only once about a
/// third of it is free, which a reader taking 1 MB/s needs over a second
/// to free. So while a write waits, the socket is looked at every quarter
/// of `stall`: if the peer acknowledged data since the last look, the
/// reader is taking it and the stall clock starts again.
async fn write_all_marking<W: AsyncWrite + PeerSocket + Unpin>(
    st: &State,
    w: &mut W,
    buf: &[u8],
) -> std::io::Result<()> {
    let every = (st.stall / 4).max(Duration::from_millis(1));
    let mut done = 0;
    // While the socket refuses data: when to look at it next, and what it
    // held unacknowledged at the last look.
    let mut probe: Option<(Pin<Box<tokio::time::Sleep>>, Option<usize>)> = None;
    loop {
        // Some(bytes written), or None once the flush is done.
        let step = poll_fn(|cx| {
            let ready = if done < buf.len() {
                Pin::new(&mut *w).poll_write(cx, &buf[done..]).map_ok(Some)
            } else {
                Pin::new(&mut *w).poll_flush(cx).map_ok(|()| None)
            };
            if let Poll::Ready(r) = ready {
                return Poll::Ready(Some(r));
            }
            if st.blocked_since_ms.load(Ordering::Acquire) == 0 {
                st.blocked_since_ms.store(st.now_ms(), Ordering::Release);
                // Waiting senders learn when the stall clock started.
                st.progress.notify_waiters();
            }
            let (look, _) =
                probe.get_or_insert_with(|| (Box::pin(tokio::time::sleep(every)), w.unacked()));
            std::future::Future::poll(look.as_mut(), cx).map(|()| None)
        })
        .await;
        let n = match step {
            Some(written) => written?,
            None => {
                if let Some((look, before)) = probe.as_mut() {
                    let now = w.unacked();
                    if matches!((*before, now), (Some(b), Some(n)) if n < b) {
                        st.blocked_since_ms.store(st.now_ms(), Ordering::Release);
                        st.progress.notify_waiters();
                    }
                    *before = now;
                    look.as_mut().reset(Instant::now() + every);
                }
                continue;
            }
        };
        match n {
            None => break,
            Some(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Some(n) => done += n,
        }
    }
    st.blocked_since_ms.store(0, Ordering::Release);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// Every connection's writer task holds this future while idle, so it
    /// counts at 10,000 connections (BENCHMARKS target 4), and more than
    /// its size says: tokio aligns a task to 128 bytes, so 32 bytes more
    /// (the write interval's first version) cost 128 bytes a connection.
    /// 448 bytes before the write interval; 456 with it (the pace is one
    /// instant, the interval lives in the shared state, a wait is boxed).
    #[test]
    fn writer_future_is_small() {
        let (_ob, drain) = outbox(1, Duration::ZERO, Budget::new(1));
        let size = std::mem::size_of_val(&drain.write_to(tokio::io::sink()));
        eprintln!("write_to() future: {size} bytes");
        assert!(size <= 456, "write_to() future is {size} bytes");
    }

    /// [`Budget::storm`] hears of each time the total passes
    /// [`STORM_BYTES`] upwards, once, even when nobody was waiting then;
    /// growing while above it, or a quiet budget, tells nothing.
    #[test]
    fn a_storm_is_told_once_per_crossing() {
        let budget = Budget::new(usize::MAX);
        let (ob, drain) = outbox(1 << 30, Duration::from_secs(3600), budget.clone());
        let mib = Bytes::from(vec![b'x'; 1 << 20]);
        assert_eq!(budget.storm().now_or_never(), None, "quiet");
        for _ in 0..31 {
            assert!(ob.push(mib.clone()));
        }
        assert_eq!(budget.storm().now_or_never(), None, "31 MiB: not yet");
        assert!(ob.push(mib.clone()));
        assert!(budget.used() >= STORM_BYTES);
        assert_eq!(budget.storm().now_or_never(), Some(()), "passed");
        assert!(ob.push(mib.clone()));
        assert_eq!(budget.storm().now_or_never(), None, "still above: once");
        drop(ob);
        drop(drain);
        assert_eq!(budget.used(), 0, "a closed queue gives its bytes back");
        let (ob, _drain) = outbox(1 << 30, Duration::from_secs(3600), budget.clone());
        for _ in 0..32 {
            assert!(ob.push(mib.clone()));
        }
        assert_eq!(budget.storm().now_or_never(), Some(()), "the next storm");
    }

    /// A reader whose writer is merely behind is not cut at the limit (the
    /// server, not the reader, is slow); twice the limit is a hard bound.
    #[test]
    fn over_the_limit_is_kept_unless_far_over() {
        let budget = Budget::new(usize::MAX);
        let (ob, _drain) = outbox(100, Duration::ZERO, budget.clone());
        let line = || Bytes::from(vec![b'x'; 40]);
        assert!(ob.push(line()));
        assert_eq!(
            ob.queued(),
            40 + LINE_COST,
            "each line costs its handle too"
        );
        assert!(ob.push(line()), "144 of 100: kept");
        assert!(!ob.frozen());
        assert!(!ob.push(line()), "216 of 100");
        assert_eq!(ob.cut_reason(), LeaveReason::TooSlow);
        assert!(!ob.push(Bytes::from_static(b"1\n")));
        assert_eq!(budget.used(), 2 * (40 + LINE_COST));
    }

    /// A writer whose socket is full: after `stall` the reader is frozen,
    /// and the next line over the limit cuts it.
    #[tokio::test(start_paused = true)]
    async fn a_full_socket_freezes_the_reader_and_over_the_limit_cuts() {
        let (ob, drain) = outbox(200, Duration::from_millis(250), Budget::new(usize::MAX));
        // Nobody reads the other end; it takes 16 bytes.
        let (w, _unread) = tokio::io::duplex(16);
        tokio::spawn(drain.write_to(w));
        assert!(ob.push(Bytes::from(vec![b'x'; 60])));
        while ob.state.blocked_since().is_none() {
            tokio::task::yield_now().await;
        }
        assert!(!ob.frozen(), "not before the stall bound");
        assert!(ob.push(Bytes::from(vec![b'x'; 30])), "under the limit");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(ob.frozen());
        assert!(
            !ob.push(Bytes::from(vec![b'x'; 30])),
            "over the limit, frozen"
        );
        assert_eq!(ob.cut_reason(), LeaveReason::TooSlow);
    }

    /// A sender waits for a congested queue as long as its writer has not
    /// run (the server is behind), however long that is, and moves on once
    /// the writer catches up.
    #[tokio::test(start_paused = true)]
    async fn wait_for_room_waits_for_a_writer_that_is_behind() {
        let (ob, drain) = outbox(100, Duration::from_millis(250), Budget::new(usize::MAX));
        assert!(ob.push(Bytes::from(vec![b'x'; 80])));
        assert!(ob.congested());
        let waited = tokio::time::timeout(Duration::from_secs(60), ob.wait_for_room()).await;
        assert!(waited.is_err(), "a writer that has not run is not frozen");
        tokio::spawn(drain.write_to(tokio::io::sink()));
        ob.wait_for_room().await;
        assert_eq!(ob.queued(), 0);
    }

    /// A sender stops waiting for a reader whose socket stays full for
    /// `stall`, and at once when the writer goes away.
    #[tokio::test(start_paused = true)]
    async fn wait_for_room_gives_up_on_a_full_socket_and_a_gone_writer() {
        let (ob, drain) = outbox(100, Duration::from_millis(250), Budget::new(usize::MAX));
        let (w, _unread) = tokio::io::duplex(16);
        let writer = tokio::spawn(drain.write_to(w));
        assert!(ob.push(Bytes::from(vec![b'x'; 80])));
        let t0 = Instant::now();
        ob.wait_for_room().await;
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_millis(400), "{waited:?}");

        let (ob, drain) = outbox(100, Duration::from_secs(3600), Budget::new(usize::MAX));
        let (w, _unread) = tokio::io::duplex(16);
        let writer2 = tokio::spawn(drain.write_to(w));
        assert!(ob.push(Bytes::from(vec![b'x'; 80])));
        let wait_for_room = ob.wait_for_room();
        tokio::pin!(wait_for_room);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), wait_for_room.as_mut())
                .await
                .is_err(),
            "the socket is full, but not for an hour"
        );
        writer2.abort();
        wait_for_room.await;
        assert!(!ob.push(Bytes::from_static(b"x\n")), "closed");
        writer.abort();
    }

    /// The server-wide budget: once exceeded, a frozen reader is cut at its
    /// next line even under its own limit, a reader that is merely behind
    /// is kept (its senders wait for it to drain), and every byte charged
    /// is returned when lines are written or a queue goes away.
    #[tokio::test(start_paused = true)]
    async fn over_the_budget_cuts_frozen_readers_only() {
        let budget = Budget::new(650);
        let stall = Duration::from_millis(250);
        let (frozen, drain) = outbox(1 << 20, stall, budget.clone());
        let (w, _unread) = tokio::io::duplex(16);
        let frozen_writer = tokio::spawn(drain.write_to(w));
        let (behind, behind_drain) = outbox(1 << 20, stall, budget.clone());
        let line = || Bytes::from(vec![b'x'; 68]); // 100 with its cost
        assert!(frozen.push(line()));
        while frozen.state.blocked_since().is_none() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(stall).await;
        assert!(frozen.frozen());
        for _ in 0..3 {
            assert!(behind.push(line()));
        }
        assert!(
            frozen.push(line()) && frozen.push(line()),
            "within the budget"
        );
        assert_eq!(budget.used(), 600);
        assert!(
            !behind.congested(),
            "within the budget, far under its limit"
        );
        assert!(
            behind.push(line()),
            "behind, not frozen: kept over the budget"
        );
        assert_eq!(budget.used(), 700);
        assert!(behind.congested(), "over the budget: wait for any queue");
        assert!(!frozen.push(line()), "frozen and over the budget: cut");
        assert_eq!(frozen.cut_reason(), LeaveReason::TooSlow);
        assert_eq!(budget.used(), 700);
        frozen_writer.await.unwrap();
        assert_eq!(budget.used(), 400, "the cut queue's charges came back");
        let behind_writer = tokio::spawn(behind_drain.write_to(tokio::io::sink()));
        drop(behind);
        behind_writer.await.unwrap();
        assert_eq!(budget.used(), 0, "written lines gave their charges back");
    }

    #[tokio::test]
    async fn drain_writes_in_order_then_shuts_down() {
        let (ob, drain) = outbox(1 << 20, Duration::ZERO, Budget::new(usize::MAX));
        let mock = tokio_test::io::Builder::new().write(b"a\nb\nc\n").build();
        for l in ["a\n", "b\n", "c\n"] {
            assert!(ob.push(Bytes::from(l)));
        }
        drop(ob);
        drain.write_to(mock).await;
    }

    /// A writer that, like TLS, keeps what it is given until flushed.
    struct Buffering {
        held: Vec<u8>,
        sent: tokio::sync::watch::Sender<Vec<u8>>,
    }

    impl PeerSocket for Buffering {}

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            let held = std::mem::take(&mut self.held);
            self.sent.send_modify(|s| s.extend_from_slice(&held));
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    /// Every batch is flushed, so a line reaches the peer through a
    /// buffering writer (TLS) while the user stays online and nothing more
    /// is queued, not only at the end of the connection.
    #[tokio::test]
    async fn each_batch_is_flushed_while_the_queue_stays_open() {
        let (ob, drain) = outbox(1 << 20, Duration::from_secs(1), Budget::new(usize::MAX));
        let (sent, mut seen) = tokio::sync::watch::channel(Vec::new());
        let w = Buffering {
            held: Vec::new(),
            sent,
        };
        tokio::spawn(drain.write_to(w));
        assert!(ob.push(Bytes::from("hello\n")));
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            seen.wait_for(|s| s.as_slice() == b"hello\n"),
        )
        .await;
        assert!(got.is_ok(), "the line was never flushed");
        drop(ob);
    }
}

/// Edges and paths that mutation testing (tests/README.md, "Mutation
/// testing") found no test for: the exact limits, how writes are batched,
/// the socket's acknowledgements, and what the writer returns.
#[cfg(test)]
mod edge_tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tokio::io::AsyncReadExt;

    /// What each write carried, and when.
    pub(super) type Writes = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

    /// An in-memory socket that takes everything at once and records each
    /// write, with its time.
    pub(super) struct Recorder(pub(super) Writes);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push((Instant::now(), buf.to_vec()));
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    impl PeerSocket for Recorder {}

    /// A socket whose buffer is full for good: every write waits. While
    /// `acking`, the peer acknowledges some data each time the writer looks
    /// (a reader taking data slowly); otherwise nothing moves.
    struct FullSocket {
        unacked: AtomicUsize,
        acking: Arc<AtomicBool>,
    }

    impl AsyncWrite for FullSocket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }
    impl PeerSocket for FullSocket {
        fn unacked(&self) -> Option<usize> {
            if self.acking.load(Ordering::Relaxed) {
                Some(self.unacked.fetch_sub(100, Ordering::Relaxed) - 100)
            } else {
                Some(self.unacked.load(Ordering::Relaxed))
            }
        }
    }

    /// Waits until the writer has found the socket full.
    async fn until_blocked(ob: &Outbox) {
        while ob.state.blocked_since().is_none() {
            tokio::task::yield_now().await;
        }
    }

    /// Runs the writer `w` (which must not end) for `d`.
    async fn run_for(w: Pin<&mut impl std::future::Future<Output = bool>>, d: Duration) {
        tokio::select! {
            _ = w => panic!("the writer ended"),
            _ = tokio::time::sleep(d) => {}
        }
    }

    /// A line whose cost in a queue (with [`LINE_COST`]) is `cost` bytes.
    fn costing(cost: usize) -> Bytes {
        Bytes::from(vec![b'x'; cost - LINE_COST])
    }

    /// Lines queued while the writer was away go out together, in writes
    /// of at most [`BATCH_BYTES`] (with lines that divide it evenly).
    #[tokio::test]
    async fn queued_lines_go_out_in_writes_of_at_most_batch_bytes() {
        let (ob, drain) = outbox(1 << 20, Duration::ZERO, Budget::new(usize::MAX));
        for _ in 0..200 {
            assert!(ob.push(Bytes::from(vec![b'x'; 1024])));
        }
        drop(ob);
        let writes = Writes::default();
        let cut = drain.write_to(Recorder(writes.clone())).await;
        assert!(!cut, "finished, not cut");
        let sizes: Vec<usize> = writes
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.len())
            .collect();
        assert_eq!(sizes, [65536, 65536, 65536, 8192]);
    }

    /// At exactly its limit a frozen reader's queue is kept; one more line
    /// cuts it. A reader that is merely behind is kept up to exactly twice
    /// the limit.
    #[tokio::test(start_paused = true)]
    async fn the_own_limit_holds_at_its_exact_edge() {
        // Frozen (stall 0: as soon as the socket refuses data).
        let (ob, drain) = outbox(200, Duration::ZERO, Budget::new(usize::MAX));
        let (w, _unread) = tokio::io::duplex(16);
        let writer = tokio::spawn(drain.write_to(w));
        assert!(ob.push(costing(92)));
        until_blocked(&ob).await;
        assert!(ob.frozen());
        assert!(ob.push(costing(108)), "200 of 200: at the limit, kept");
        assert!(!ob.push(costing(32)), "232 of 200, frozen: cut");
        assert_eq!(ob.cut_reason(), LeaveReason::TooSlow);
        assert!(
            writer.await.unwrap(),
            "the writer stopped because of the cut"
        );

        // Behind (nobody writes yet): twice the limit is the bound.
        let (ob, _drain) = outbox(100, Duration::ZERO, Budget::new(usize::MAX));
        assert!(ob.push(costing(100)) && ob.push(costing(100)));
        assert_eq!(ob.queued(), 200, "exactly twice the limit: kept");
        assert!(!ob.push(costing(32)), "over twice the limit: cut");
    }

    /// The server-wide budget at its exact edge: a total of exactly the
    /// budget is not over it (nobody waits, a frozen reader is kept), one
    /// line more is; and an empty queue holds no sender up even then.
    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_at_its_exact_edge() {
        let budget = Budget::new(200);
        let (frozen, drain) = outbox(1 << 20, Duration::ZERO, budget.clone());
        let (w, _unread) = tokio::io::duplex(16);
        let writer = tokio::spawn(drain.write_to(w));
        let (empty, _empty_drain) = outbox(1 << 20, Duration::ZERO, budget.clone());
        assert!(frozen.push(costing(92)));
        until_blocked(&frozen).await;
        assert!(frozen.push(costing(108)), "exactly the budget: kept");
        assert_eq!(budget.used(), 200);
        assert!(!budget.over());
        assert!(!frozen.congested(), "at the budget, far under its limit");
        assert!(!frozen.push(costing(32)), "over the budget, frozen: cut");
        assert!(writer.await.unwrap());
        assert_eq!(budget.used(), 0, "the cut queue gave everything back");

        let (behind, _behind_drain) = outbox(1 << 20, Duration::ZERO, budget.clone());
        assert!(behind.push(costing(201)));
        assert!(budget.over());
        assert!(behind.congested(), "over the budget: wait for any queue");
        assert!(!empty.congested(), "an empty queue holds nobody up");
    }

    /// Congested means more than half the limit: exactly half is not.
    #[test]
    fn congestion_starts_over_half_the_limit() {
        let (ob, _drain) = outbox(200, Duration::ZERO, Budget::new(usize::MAX));
        assert!(!ob.congested(), "empty");
        assert!(ob.push(costing(100)));
        assert!(!ob.congested(), "exactly half");
        assert!(ob.push(costing(32)));
        assert!(ob.congested(), "over half");
    }

    /// The stall clock starts when the socket fills, not when the queue was
    /// made: a long-lived user whose socket just filled is not frozen.
    #[tokio::test(start_paused = true)]
    async fn the_stall_clock_starts_when_the_socket_fills() {
        let stall = Duration::from_millis(250);
        let (ob, drain) = outbox(1 << 20, stall, Budget::new(usize::MAX));
        tokio::time::sleep(stall * 4).await;
        let (w, _unread) = tokio::io::duplex(16);
        tokio::spawn(drain.write_to(w));
        assert!(ob.push(costing(100)));
        until_blocked(&ob).await;
        assert!(!ob.frozen(), "the socket has only just filled");
        tokio::time::sleep(stall).await;
        assert!(ob.frozen(), "full for `stall`");
    }

    /// A reader whose socket stays full but who acknowledges data (it reads,
    /// slowly) is never frozen; once acknowledgements stop, it is after
    /// `stall`. The writer is given the socket by `&mut`, as a connection
    /// does.
    #[tokio::test(start_paused = true)]
    async fn acknowledged_data_restarts_the_stall_clock() {
        let stall = Duration::from_millis(250);
        let (ob, drain) = outbox(1 << 20, stall, Budget::new(usize::MAX));
        let acking = Arc::new(AtomicBool::new(true));
        let mut sock = FullSocket {
            unacked: AtomicUsize::new(1 << 30),
            acking: acking.clone(),
        };
        assert!(ob.push(costing(100)));
        let writer = drain.write_to(&mut sock);
        tokio::pin!(writer);
        for i in 0..12 {
            run_for(writer.as_mut(), stall / 4).await;
            assert!(ob.state.blocked_since().is_some(), "the socket is full");
            assert!(!ob.frozen(), "frozen at {i} quarters of stall");
        }
        acking.store(false, Ordering::Relaxed);
        run_for(writer.as_mut(), stall * 2).await;
        assert!(ob.frozen(), "nothing acknowledged for `stall`");
    }

    /// A write that fails ends the writer as not cut, and closes the queue
    /// as an error (not as too slow).
    #[tokio::test]
    async fn a_failed_write_closes_the_queue_as_an_error() {
        let (ob, drain) = outbox(1 << 20, Duration::ZERO, Budget::new(usize::MAX));
        assert!(ob.push(Bytes::from_static(b"a\n")));
        let mock = tokio_test::io::Builder::new()
            .write_error(std::io::ErrorKind::BrokenPipe.into())
            .build();
        assert!(!drain.write_to(mock).await, "not cut: the write failed");
        assert_eq!(ob.cut_reason(), LeaveReason::Error);
        assert!(!ob.push(Bytes::from_static(b"b\n")), "closed");
        assert_eq!(ob.queued(), 0);
    }

    /// A real TCP socket: it reports what the peer has not acknowledged
    /// (nothing at first, something once the peer stops reading), and after
    /// `reset_on_close` its close is a reset, not an end of stream.
    #[tokio::test]
    async fn a_tcp_socket_reports_unacknowledged_bytes_and_resets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let (read_half, write_half) = ours.into_split();
        assert_eq!(write_half.unacked(), Some(0), "nothing written yet");
        let chunk = vec![b'x'; 64 * 1024];
        loop {
            write_half.writable().await.unwrap();
            match write_half.try_write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let unacked = write_half.unacked().expect("Linux reports it");
        assert!(unacked > 1, "the peer is not reading: {unacked} bytes");

        write_half.reset_on_close();
        drop((read_half, write_half));
        let mut buf = vec![0; 1 << 20];
        let end = loop {
            match peer.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e.kind()),
            }
        };
        assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
    }
}

/// The write interval as the writer applies it ([`paced_outbox`];
/// the rule itself is [`super::pace`]), in paused time: every instant a
/// write happens is exact, so these are not timing tests.
#[cfg(test)]
mod pace_tests {
    use super::edge_tests::{Recorder, Writes};
    use super::*;
    use crate::server::pace::WRITE_BURST;

    const INTERVAL: Duration = Duration::from_millis(5);

    /// A queue whose writer writes to a [`Recorder`] socket at most once per
    /// [`INTERVAL`] under a steady flow.
    fn paced() -> (Outbox, Writes, tokio::task::JoinHandle<bool>) {
        let (ob, drain) = paced_outbox(
            1 << 20,
            Duration::from_secs(1),
            INTERVAL,
            Budget::new(usize::MAX),
        );
        let writes = Writes::default();
        let writer = tokio::spawn(drain.write_to(Recorder(writes.clone())));
        (ob, writes, writer)
    }

    /// Lets the writer run without letting time pass.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn count(writes: &Writes) -> usize {
        writes.lock().unwrap().len()
    }

    /// Spends the writer's burst: [`WRITE_BURST`] lines, each written at
    /// once.
    async fn spend_the_burst(ob: &Outbox, writes: &Writes) {
        let before = count(writes);
        for i in 0..WRITE_BURST as usize {
            assert!(ob.push(Bytes::from(format!("burst {i}\n"))));
            settle().await;
            assert_eq!(
                count(writes),
                before + i + 1,
                "burst line {i} is written at once"
            );
        }
    }

    /// A line a millisecond: after the burst, one write per interval, each
    /// carrying every line that came meanwhile, none of them held longer
    /// than an interval, all in order; the last one goes out as the queue
    /// closes, without waiting.
    #[tokio::test(start_paused = true)]
    async fn a_steady_flow_is_written_once_per_interval() {
        let (ob, writes, writer) = paced();
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for i in 0..100 {
            let line = format!("line {i}\n");
            sent.extend_from_slice(line.as_bytes());
            assert!(ob.push(Bytes::from(line)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let last = Bytes::from_static(b"last\n");
        sent.extend_from_slice(&last);
        assert!(ob.push(last));
        let closed_at = Instant::now();
        drop(ob);
        assert!(!writer.await.unwrap());
        let writes = writes.lock().unwrap();
        let got: Vec<u8> = writes.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(sent).unwrap()
        );
        let burst = WRITE_BURST as usize;
        for (i, w) in writes.windows(2).enumerate().skip(burst) {
            let gap = w[1].0 - w[0].0;
            if i + 2 < writes.len() {
                assert_eq!(
                    gap,
                    INTERVAL,
                    "write {} came {gap:?} after the one before",
                    i + 1
                );
            }
        }
        assert_eq!(writes.last().unwrap().0, closed_at, "closing does not wait");
        // 100 ms of lines: the burst, then one write per 5 ms.
        assert!(
            writes.len() <= burst + 100 / 5 + 1,
            "{} writes",
            writes.len()
        );
        let lines: Vec<u64> = writes.iter().map(|(_, b)| count_lines(b)).collect();
        assert!(
            lines[burst + 1..lines.len() - 1].iter().all(|&n| n >= 4),
            "{lines:?}"
        );
        assert!(writes[0].0 == t0);
    }

    /// The last lines of a closing connection are not held back.
    #[tokio::test(start_paused = true)]
    async fn a_closing_queue_is_written_at_once() {
        let (ob, writes, writer) = paced();
        spend_the_burst(&ob, &writes).await;
        let t = Instant::now();
        assert!(ob.push(Bytes::from_static(b"goodbye\n")));
        settle().await;
        drop(ob);
        settle().await;
        assert!(writer.is_finished(), "the writer did not wait");
        assert_eq!(
            writes.lock().unwrap().last().unwrap(),
            &(t, b"goodbye\n".to_vec())
        );
    }

    /// A writer quiet for longer than a burst's worth of intervals writes
    /// its next lines at once again: ordinary chat never waits.
    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_lines_go_out_at_once() {
        let (ob, writes, _writer) = paced();
        spend_the_burst(&ob, &writes).await;
        assert!(ob.push(Bytes::from_static(b"paced\n")));
        settle().await;
        let burst = WRITE_BURST as usize;
        assert_eq!(count(&writes), burst, "the burst is spent: it waits");
        tokio::time::sleep(INTERVAL * (WRITE_BURST + 1)).await;
        assert_eq!(count(&writes), burst + 1, "written one interval later");
        spend_the_burst(&ob, &writes).await;
    }

    /// Once the user's own input was read ([`Outbox::hurry`]), what comes
    /// next (its answer) is written at once, every time; a client waiting
    /// for each answer is not slowed to one exchange per interval. A
    /// full batch is not held back either.
    #[tokio::test(start_paused = true)]
    async fn answers_and_full_batches_do_not_wait() {
        let (ob, writes, _writer) = paced();
        spend_the_burst(&ob, &writes).await;
        let t = Instant::now();
        for i in 0..20 {
            ob.hurry();
            assert!(ob.push(Bytes::from(format!("answer {i}\n"))));
            settle().await;
            assert_eq!(
                writes.lock().unwrap().last().unwrap().1,
                format!("answer {i}\n").as_bytes(),
                "answer {i} is written at once"
            );
        }
        assert_eq!(Instant::now(), t, "no time passed");
        let before = count(&writes);
        assert!(ob.push(Bytes::from_static(b"not an answer\n")));
        settle().await;
        assert_eq!(count(&writes), before, "without a hurry it waits");
        assert!(ob.push(Bytes::from(vec![b'x'; BATCH_BYTES])));
        settle().await;
        assert_eq!(count(&writes), before + 1, "a full batch goes at once");
        assert_eq!(Instant::now(), t, "no time passed");
    }
}
