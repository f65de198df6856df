//! Socket settings both ends use.
//!
//! A TCP connection whose other end vanished (its host lost power, a cable
//! or NAT mapping went away) sends nothing more: no FIN, no reset. Without a
//! check, a server keeps such a user's slot forever and `imc listen` waits
//! forever. Both ends therefore turn on TCP keepalive: the kernel probes an
//! idle connection and ends it when the probes go unanswered. This costs
//! nothing while the connection is busy and needs no protocol change, so
//! plain `nc` clients keep working (PROTOCOL.md, "Dead connections").

use std::time::Duration;

use tokio::net::TcpStream;

/// Idle time before the first keepalive probe, and between probes.
pub const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));
/// Unanswered probes after which the kernel drops the connection: a dead
/// peer is noticed within 30 s + 3 × 10 s = one minute of silence.
pub const KEEPALIVE_PROBES: u32 = 3;

/// Turns on TCP keepalive ([`KEEPALIVE`], [`KEEPALIVE_PROBES`]). A failure
/// is logged and ignored: the connection works, it is just not probed.
pub fn keep_alive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE.0)
        .with_interval(KEEPALIVE.1)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!("cannot turn on TCP keepalive: {e}");
    }
}
