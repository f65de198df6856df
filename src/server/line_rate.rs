//! The per-user line rate (`--max-lines-per-sec`): flood control that slows
//! a sender down instead of cutting it off.
//!
//! Backpressure already slows a sender to its slowest *reader's* pace, but
//! a sender whose readers all keep up could still fill every screen with
//! thousands of lines a second. With a rate set, each user has a token
//! bucket: it holds one second's worth of lines (the burst: a pasted
//! paragraph goes through at once) and refills at the rate. Every line read
//! takes a token, commands included, since each one costs the server work.
//! A line that finds the bucket empty is still handled, and the connection
//! then reads nothing more until the bucket is back to zero.
//!
//! Nothing is lost and nobody is cut: the sender's lines wait in its own
//! socket, so TCP slows the sending program (`imc send -` simply takes
//! longer), exactly as when the server is overloaded. Other users are not
//! held up at all. IRC servers do the same with their "fake lag" before
//! they resort to an "Excess Flood" disconnect; imd never disconnects for
//! it, since a client that is slowed costs the server nothing.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;

/// One user's token bucket.
#[derive(Debug)]
pub struct LineRate {
    per_sec: f64,
    /// Tokens left; may go down to -1, the line that was let through on
    /// credit, which is paid back before the next read.
    tokens: f64,
    last: Instant,
}

impl LineRate {
    /// A full bucket for `per_sec` lines a second, `per_sec` of them at once.
    pub fn new(per_sec: NonZeroU32, now: Instant) -> LineRate {
        let per_sec = f64::from(per_sec.get());
        LineRate {
            per_sec,
            tokens: per_sec,
            last: now,
        }
    }

    /// Takes a token for one line read at `now`. `None`: read on. `Some(t)`:
    /// the bucket is empty; read nothing more until `t`.
    pub fn take(&mut self, now: Instant) -> Option<Instant> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.per_sec);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            return None;
        }
        Some(now + Duration::from_secs_f64(-self.tokens / self.per_sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// A second's worth goes through at once; the next line waits a
    /// tenth of a second at 10 a second, and every one after it too.
    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = LineRate::new(rate(10), t0);
        for i in 0..10 {
            assert_eq!(r.take(t0), None, "line {i} of the burst");
        }
        let ms = Duration::from_millis;
        assert_eq!(r.take(t0), Some(t0 + ms(100)));
        // Paid back at t0 + 100 ms: the next line is on credit again.
        assert_eq!(r.take(t0 + ms(100)), Some(t0 + ms(200)));
        // Waiting longer earns tokens back, up to the burst and no more.
        let later = t0 + Duration::from_secs(60);
        for i in 0..10 {
            assert_eq!(r.take(later), None, "line {i} after a pause");
        }
        assert!(r.take(later).is_some());
    }

    /// Over any stretch, no more than the burst plus the rate get through.
    #[test]
    fn the_average_is_the_rate() {
        let t0 = Instant::now();
        let mut r = LineRate::new(rate(50), t0);
        let mut now = t0;
        let mut lines = 0;
        // Bounded, so that a bucket that never makes a line wait fails
        // here at once instead of looping for ever.
        while now < t0 + Duration::from_secs(10) && lines < 10_000 {
            lines += 1;
            if let Some(until) = r.take(now) {
                now = until;
            }
        }
        // 50 at once, then 50 a second for 10 s, and the one on credit.
        assert!((549..=551).contains(&lines), "{lines}");
    }
}
