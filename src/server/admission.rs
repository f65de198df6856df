//! Who may connect: limits per client address.
//!
//! The connection limit (`--max-connections`) protects the server; these
//! protect the other users from one host. Without them a single address
//! can take every slot, or a reconnect storm from one host can crowd out
//! everyone else's connects. Two limits, each 0 for none:
//!
//! - at most `max_per_ip` connections open at once from one IP address;
//! - at most `connects_per_sec` new connections from one IP address per
//!   second (a fixed one-second window).
//!
//! A refused connection is told `error too-many-connections: ...` and
//! closed, like `server-full`. The table holds one small entry per address
//! that has a connection open or connected within the last second, so it
//! is bounded by the connection limit plus one second of connects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits per client address; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once from one address.
    pub max_per_ip: usize,
    /// New connections from one address per second.
    pub connects_per_sec: u32,
}

impl Limits {
    /// No limits at all.
    pub const NONE: Limits = Limits {
        max_per_ip: 0,
        connects_per_sec: 0,
    };

    fn is_none(&self) -> bool {
        self.max_per_ip == 0 && self.connects_per_sec == 0
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address already has `max_per_ip` connections open.
    TooMany(usize),
    /// The address opened `connects_per_sec` connections this second.
    TooFast(u32),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooMany(n) => write!(f, "your address already has {n} connections open"),
            Refusal::TooFast(n) => {
                write!(
                    f,
                    "your address opened {n} connections in the last second; slow down"
                )
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    open: usize,
    window: Instant,
    connects: u32,
}

/// The per-address table. Cheap when no limit is set: nothing is stored.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Size at which stale entries are next swept out: twice the size after
    /// the last sweep, so sweeping costs O(1) per connect on average.
    sweep_at: usize,
}

impl Table {
    /// Drops entries with nothing open and no connect in the last second.
    fn sweep(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| e.open > 0 || now.duration_since(e.window) < WINDOW);
        self.sweep_at = (self.entries.len() * 2).max(SWEEP_MIN);
    }
}

/// The table is never swept below this size.
const SWEEP_MIN: usize = 1024;

/// A connection admitted under the per-address limits; dropping it gives
/// its place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Option<(Arc<Admission>, IpAddr)>,
}

const WINDOW: Duration = Duration::from_secs(1);

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        if self.limits.is_none() {
            return Ok(Ticket { admission: None });
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.entries.len() >= table.sweep_at {
            table.sweep(now);
        }
        let e = table.entries.entry(ip).or_insert(Entry {
            open: 0,
            window: now,
            connects: 0,
        });
        if now.duration_since(e.window) >= WINDOW {
            e.window = now;
            e.connects = 0;
        }
        let per_sec = self.limits.connects_per_sec;
        if per_sec > 0 && e.connects >= per_sec {
            return Err(Refusal::TooFast(per_sec));
        }
        // A refused connect counts toward the rate too: a host hammering
        // the server stays refused until it slows down.
        e.connects += 1;
        let max = self.limits.max_per_ip;
        if max > 0 && e.open >= max {
            return Err(Refusal::TooMany(max));
        }
        e.open += 1;
        drop(table);
        Ok(Ticket {
            admission: Some((self.clone(), ip)),
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.entries.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            // Its rate window still matters for a second; after that the
            // next sweep forgets it.
            if e.open == 0 && e.window.elapsed() >= WINDOW {
                table.entries.remove(&ip);
            }
        }
    }

    /// Addresses in the table (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some((admission, ip)) = self.admission.take() {
            admission.release(ip);
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
    fn at_most_n_open_per_address_and_others_unaffected() {
        let a = Admission::new(Limits {
            max_per_ip: 2,
            connects_per_sec: 0,
        });
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let _t2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::TooMany(2));
        let _other = a
            .admit(ip("10.0.0.2"))
            .expect("another address is unaffected");
        drop(t1);
        let _t3 = a
            .admit(ip("10.0.0.1"))
            .expect("a closed connection frees its place");
    }

    #[test]
    fn at_most_n_connects_per_second_per_address() {
        let a = Admission::new(Limits {
            max_per_ip: 0,
            connects_per_sec: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(a.admit_at(ip("10.0.0.1"), t0).unwrap());
        }
        assert_eq!(
            a.admit_at(ip("10.0.0.1"), t0 + Duration::from_millis(500))
                .unwrap_err(),
            Refusal::TooFast(3)
        );
        assert!(a.admit_at(ip("10.0.0.2"), t0).is_ok(), "per address");
        assert!(
            a.admit_at(ip("10.0.0.1"), t0 + WINDOW).is_ok(),
            "a new second, a new allowance"
        );
    }

    /// The table does not grow without bound: addresses with nothing open
    /// and no recent connect are swept out once it doubles.
    #[test]
    fn the_table_forgets_idle_addresses() {
        let a = Admission::new(Limits {
            max_per_ip: 0,
            connects_per_sec: 10,
        });
        let t0 = Instant::now();
        let addr = |i: usize| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        // Ten seconds, each with a thousand new addresses that connect once.
        for second in 0..10 {
            let now = t0 + WINDOW * second;
            for i in 0..SWEEP_MIN {
                drop(
                    a.admit_at(addr(second as usize * SWEEP_MIN + i), now)
                        .unwrap(),
                );
            }
        }
        assert!(
            a.tracked() <= 4 * SWEEP_MIN,
            "{} addresses kept of {} seen: the stale ones were not swept",
            a.tracked(),
            10 * SWEEP_MIN
        );
    }

    #[test]
    fn no_limits_store_nothing() {
        let a = Admission::new(Limits::NONE);
        let _t: Vec<_> = (0..10).map(|_| a.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(a.tracked(), 0);
    }
}
