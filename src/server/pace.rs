//! How often a user's writer may write: the write interval.
//!
//! # Why fan-out batches by time
//!
//! A write to a socket costs microseconds whatever it carries (on loopback
//! the sender's system call also runs the receiver's side of TCP), so
//! fan-out is cheap only when each write carries many lines. Batching by
//! the sender's reads ([`super::connection`]) and taking a whole queue per
//! write ([`super::outbox`]) give big writes only while the server is short
//! of CPU: a writer that is not run for a while finds many lines queued.
//! With cores to spare, every writer runs the moment a line lands in its
//! queue and writes that line alone, so the same load cost more CPU the more
//! cores the server had (issue 9: on 4 cores imd spent more per delivery
//! than on 1, and fell behind where 1 core kept up).
//!
//! So a writer that keeps getting lines writes at most once per interval
//! (`imd --write-interval-ms`, 5 ms by default) and each write carries
//! everything that came meanwhile: the size of a write depends on the
//! load, not on how many cores are idle, and a server on 4 cores spends
//! what one on 1 core does.
//!
//! # What waits, and what does not
//!
//! - A steady flow (a busy room) waits at most one interval per write.
//! - The first [`WRITE_BURST`] writes after a quiet spell go out at once:
//!   ordinary chat, where lines come seconds apart, never waits.
//! - Answers to the user's own input do not wait
//!   ([`Outbox::hurry`](super::outbox::Outbox::hurry)): a client in a
//!   request-and-answer loop (`imc send`, a script waiting for each echo)
//!   would otherwise be slowed to one exchange per interval.
//! - A full batch queued, or a closing connection, is written at once.
//!
//! The rule is a token bucket holding [`WRITE_BURST`] writes and refilled one
//! per interval, kept as a single instant as GCRA does; writes that did not
//! wait still take a token, but never put the next write more than one
//! interval away.

use std::time::Duration;

use tokio::time::Instant;

/// Writes a reader may be sent at once, one after another, before the
/// write interval applies: enough for a welcome and the lines that follow
/// a join, too few to matter to a steady flow.
pub const WRITE_BURST: u32 = 4;

/// When one writer may write next, for a given interval (the writer's
/// queue keeps the interval: every idle connection's task holds this, so it
/// is kept to one instant).
#[derive(Debug, Default)]
pub struct Pace {
    /// The bucket is empty until then; None: full (no write yet, or the
    /// interval is zero).
    empty_until: Option<Instant>,
}

impl Pace {
    /// The earliest instant the next write may start, if there is one (it
    /// may be past).
    pub fn next_write(&self, interval: Duration) -> Option<Instant> {
        let burst = interval * (WRITE_BURST - 1);
        self.empty_until.map(|t| t.checked_sub(burst).unwrap_or(t))
    }

    /// Counts a write that just ended, whether it waited or not. A write
    /// that did not wait (an answer, a full batch) never puts the next
    /// write more than one interval away: without that bound, the hundreds
    /// of writes of a join storm would each push the next write one
    /// interval further and hold a reader back for seconds.
    pub fn wrote(&mut self, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        let now = Instant::now();
        let from = self.empty_until.map_or(now, |t| t.max(now));
        let most = now + interval * WRITE_BURST;
        self.empty_until = Some((from + interval).min(most));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(5);

    /// Whether a write may start now.
    fn may_write(p: &Pace) -> bool {
        p.next_write(I).is_none_or(|t| t <= Instant::now())
    }

    /// A burst of [`WRITE_BURST`] writes, then one per interval while writes
    /// keep coming; after a quiet spell of a burst's worth of intervals,
    /// another whole burst.
    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_write_per_interval() {
        let mut p = Pace::default();
        for i in 0..WRITE_BURST {
            assert!(may_write(&p), "write {i} of the burst");
            p.wrote(I);
        }
        assert!(!may_write(&p), "the burst is spent");
        for _ in 0..10 {
            let due = p.next_write(I).unwrap();
            assert_eq!(due - Instant::now(), I, "one interval after the last");
            tokio::time::sleep_until(due).await;
            assert!(may_write(&p));
            p.wrote(I);
            assert!(!may_write(&p));
        }
        tokio::time::sleep(I * WRITE_BURST).await;
        for i in 0..WRITE_BURST {
            assert!(may_write(&p), "write {i} of the second burst");
            p.wrote(I);
        }
        assert!(!may_write(&p));
    }

    /// However many writes did not wait, the next one is due at most one
    /// interval after the last.
    #[tokio::test(start_paused = true)]
    async fn writes_that_did_not_wait_delay_the_next_by_one_interval_at_most() {
        let mut p = Pace::default();
        for _ in 0..1000 {
            p.wrote(I);
        }
        let due = p.next_write(I).unwrap();
        assert_eq!(due - Instant::now(), I);
        tokio::time::sleep(Duration::from_millis(1)).await;
        p.wrote(I);
        assert_eq!(p.next_write(I).unwrap() - Instant::now(), I);
    }

    /// An interval of zero never waits.
    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_never_waits() {
        let mut p = Pace::default();
        for _ in 0..100 {
            assert!(p.next_write(Duration::ZERO).is_none());
            p.wrote(Duration::ZERO);
        }
        assert_eq!(p.next_write(Duration::ZERO), None);
    }
}
