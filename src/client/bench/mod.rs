//! `imc bench`: a fan-out load generator in the spirit of `nats bench` and
//! `redis-benchmark`.
//!
//! It only uses what every server of this protocol does (a public line
//! comes back to everyone, the sender included), so the same run can be
//! pointed at imd and at other servers of the protocol (BENCHMARKS.md). Each bench message is
//! one public line carrying its sender, sequence number and send time:
//!
//! ```text
//! #bench SENDER SEQ MICROS xxxxxxxx...     padded with 'x' to --size bytes
//! ```
//!
//! Receivers find the marker anywhere in a line (other servers
//! prefix `Address:[...]  NAME`, imd `<NAME> `), check the padding (corruption),
//! the sequence (lost, duplicated, out of order) and record the latency in an
//! HDR histogram. Everyone connects first; one `#sync` line, broadcast after
//! the last join, tells when join notices have settled (servers deliver
//! broadcasts in order). A run is bounded by `--timeout`: a stalled server
//! gives a report that says so.
//!
//! [`fanout`] is the other shape: an open-loop publish/subscribe fan-out
//! (publishers at a fixed rate, many subscribers that only read) that also
//! speaks Redis pub/sub and NATS, so the same run compares imd with them.
//!
//! # Layout
//!
//! - `closed`: the closed-loop run, in phases, its clients and its report.
//! - [`fanout`]: the open-loop pub/sub run.
//! - `common`: the bench line, waiting with a deadline, /proc readings.

mod closed;
mod common;
pub mod fanout;

pub use closed::{closed_loop, BenchArgs, Report};
