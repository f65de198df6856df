//! The brute-force brake: failed logins from one address slow down the
//! next ones from it.
//!
//! Each address that failed to log in gets a schedule. Its first attempt
//! runs at once; after its Nth failure in a row each further attempt waits
//! [`FIRST_DELAY`] × 2^(N-1), at most [`MAX_DELAY`], after the previous
//! one. Attempts from one address are put in line one after another, so
//! opening many connections does not buy parallel guesses: each one gets
//! the next slot. An attempt whose slot is more than [`MAX_WAIT`] away is
//! refused at once (no password check at all), so the queue of one address
//! cannot grow without bound. A success clears the address; so do
//! [`FORGET_AFTER`] without a failure.
//!
//! With these numbers one address gets a handful of tries in the first
//! seconds (typos cost nothing noticeable), then one every 16 s: about 225
//! an hour, against passwords hashed with Argon2id.
//!
//! Memory: one small entry per address that failed within the last
//! [`FORGET_AFTER`]. Stale entries are swept once the table has doubled
//! since the last sweep (as in [`super::admission`]), and it never holds
//! more than [`MAX_TRACKED`] addresses: past that, the oldest entry goes.
//!
//! Times are `tokio::time::Instant`, so the unit tests run on paused time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The wait after the first failure; it doubles with each further one.
pub const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The longest wait between two attempts from one address.
pub const MAX_DELAY: Duration = Duration::from_secs(16);
/// An attempt that would have to wait longer than this is refused at once.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// An address with no failure for this long starts afresh.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most addresses remembered at once.
pub const MAX_TRACKED: usize = 100_000;
/// The table is never swept below this size.
const SWEEP_MIN: usize = 1024;

#[derive(Debug)]
struct Entry {
    /// Failures in a row.
    failures: u32,
    /// When the next attempt from this address may run.
    next_slot: Instant,
    /// The last failure, for forgetting.
    last_failure: Instant,
}

/// Failed logins per address, and when each address may try next.
#[derive(Debug)]
pub struct Throttle {
    entries: HashMap<IpAddr, Entry>,
    sweep_at: usize,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            entries: HashMap::new(),
            sweep_at: SWEEP_MIN,
        }
    }
}

/// The wait between attempts after `failures` failures in a row.
pub fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY)
}

impl Throttle {
    /// Books the next attempt from `ip`: how long it must wait before
    /// checking the password, or `None` if that would be over
    /// [`MAX_WAIT`] (refuse it without checking).
    pub fn book(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let Some(e) = self.entries.get_mut(&ip) else {
            return Some(Duration::ZERO);
        };
        if now.duration_since(e.last_failure) >= FORGET_AFTER {
            self.entries.remove(&ip);
            return Some(Duration::ZERO);
        }
        let slot = e.next_slot.max(now);
        let wait = slot - now;
        if wait > MAX_WAIT {
            return None;
        }
        e.next_slot = slot + delay_after(e.failures);
        Some(wait)
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.entries.contains_key(&ip) {
            if self.entries.len() >= self.sweep_at {
                self.sweep(now);
            }
            if self.entries.len() >= MAX_TRACKED {
                self.evict_oldest();
            }
        }
        let e = self.entries.entry(ip).or_insert(Entry {
            failures: 0,
            next_slot: now,
            last_failure: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        // The attempt that just failed had booked the slot after it with
        // the old count; the new count applies from this failure on.
        e.next_slot = e.next_slot.max(now + delay_after(e.failures));
    }

    /// Records a successful login from `ip`: its failures are forgotten.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }

    /// Addresses remembered (for tests).
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    fn sweep(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.duration_since(e.last_failure) < FORGET_AFTER);
        self.sweep_at = (self.entries.len() * 2).clamp(SWEEP_MIN, MAX_TRACKED);
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_failure)
            .map(|(ip, _)| *ip);
        if let Some(ip) = oldest {
            self.entries.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_delay_doubles_and_is_bounded() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(1), FIRST_DELAY);
        assert_eq!(delay_after(2), FIRST_DELAY * 2);
        assert_eq!(delay_after(3), FIRST_DELAY * 4);
        assert_eq!(delay_after(6), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    /// Failures from one address push its next attempts further out, one
    /// after another; another address is not affected, and a success
    /// clears the address.
    #[tokio::test(start_paused = true)]
    async fn failures_slow_down_only_their_address() {
        let mut t = Throttle::default();
        let a = ip("10.0.0.1");
        let now = Instant::now();
        assert_eq!(t.book(a, now), Some(Duration::ZERO));
        t.failed(a, now);
        // Two attempts at once: the second waits for the first's slot.
        assert_eq!(t.book(a, now), Some(FIRST_DELAY));
        assert_eq!(t.book(a, now), Some(FIRST_DELAY * 2));
        assert_eq!(t.book(ip("10.0.0.2"), now), Some(Duration::ZERO));
        t.succeeded(a);
        assert_eq!(t.book(a, now), Some(Duration::ZERO));
    }

    /// A queue of attempts longer than MAX_WAIT is refused without a wait,
    /// and the address is forgotten after FORGET_AFTER.
    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_and_forgotten() {
        let mut t = Throttle::default();
        let a = ip("10.0.0.1");
        let now = Instant::now();
        for _ in 0..10 {
            t.failed(a, now);
        }
        let mut booked = 0;
        while t.book(a, now).is_some() {
            booked += 1;
            assert!(booked < 100, "the queue never ends");
        }
        assert!(booked >= 1);
        let later = now + FORGET_AFTER + MAX_WAIT * 2;
        assert_eq!(t.book(a, later), Some(Duration::ZERO));
        assert_eq!(t.tracked(), 0);
    }

    /// The table forgets stale addresses and never passes MAX_TRACKED.
    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let addr = |i: usize| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        for round in 0..5u32 {
            let at = now + FORGET_AFTER * round;
            for i in 0..SWEEP_MIN * 2 {
                t.failed(addr(round as usize * SWEEP_MIN * 2 + i), at);
            }
        }
        assert!(
            t.tracked() <= SWEEP_MIN * 4,
            "{} addresses kept: stale ones were not swept",
            t.tracked()
        );
    }
}
