//! What the kernel knows about a test's TCP connections: Linux's
//! /proc/net/tcp (IPv4, which is all the tests use) and a process's open
//! file descriptors. Tests use it to check what no protocol line shows: that
//! a connection is probed by keepalive, that a cut connection's buffers are
//! gone, that refused connections hold no descriptor.

use std::time::{Duration, Instant};

/// One IPv4 TCP socket of this machine.
#[derive(Debug, Clone)]
pub struct TcpEntry {
    pub local_port: u16,
    pub remote_port: u16,
    /// Which timer is pending: 0 none, 1 retransmit, 2 keepalive, 4 zero
    /// window probe.
    pub timer: u8,
    /// When that timer fires, from now.
    pub timer_due: Duration,
    /// The socket's inode, which names it among a process's descriptors
    /// (`/proc/PID/fd/N -> socket:[INODE]`); 0 for a socket no descriptor
    /// holds any more (TIME_WAIT).
    pub inode: u64,
}

/// Every IPv4 TCP socket on 127.0.0.1 (both ends of loopback connections).
pub fn tcp_sockets() -> Vec<TcpEntry> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    text.lines().skip(1).filter_map(parse).collect()
}

fn parse(line: &str) -> Option<TcpEntry> {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when
    // retrnsmt uid timeout inode ...
    let f: Vec<&str> = line.split_whitespace().collect();
    let port = |a: &str| u16::from_str_radix(a.split(':').nth(1)?, 16).ok();
    let (tr, when) = f.get(5)?.split_once(':')?;
    if !f.get(1)?.starts_with("0100007F") {
        return None;
    }
    Some(TcpEntry {
        local_port: port(f[1])?,
        remote_port: port(f[2])?,
        timer: u8::from_str_radix(tr, 16).ok()?,
        // In clock ticks: USER_HZ, 100 on Linux.
        timer_due: Duration::from_millis(u64::from_str_radix(when, 16).ok()? * 10),
        inode: f.get(9)?.parse().ok()?,
    })
}

/// The socket with this local and remote port, if it exists.
pub fn tcp_socket(local_port: u16, remote_port: u16) -> Option<TcpEntry> {
    tcp_sockets()
        .into_iter()
        .find(|e| e.local_port == local_port && e.remote_port == remote_port)
}

/// Waits (polling the kernel's table, bounded by `timeout`) until `check`
/// holds for the socket local_port→remote_port (`None`: it is gone).
/// Returns whether it did.
///
/// It must hold in three reads in a row: the kernel reads the table out
/// in pieces while sockets come and go, so one read can miss a row that
/// is there, and "gone" seen once could be that miss.
pub fn wait_for_socket(
    local_port: u16,
    remote_port: u16,
    timeout: Duration,
    check: impl Fn(Option<&TcpEntry>) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut in_a_row = 0;
    loop {
        if check(tcp_socket(local_port, remote_port).as_ref()) {
            in_a_row += 1;
            if in_a_row == 3 {
                return true;
            }
        } else {
            in_a_row = 0;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (polling, bounded by `timeout`) until process `pid` holds a TCP
/// socket toward `remote_port`, and returns it.
///
/// A port alone does not name a client's socket: /proc/net/tcp lists the
/// whole machine, where sockets of earlier connections to an earlier server
/// that had the same port linger in TIME_WAIT for a minute (a loaded suite,
/// or a neighbour's, leaves thousands). The socket's inode among the
/// process's own descriptors names it exactly; and since the kernel reads
/// the table out in pieces while sockets come and go, one read is not a
/// snapshot, so this looks again until the socket shows.
pub fn wait_for_process_socket(pid: u32, remote_port: u16, timeout: Duration) -> Option<TcpEntry> {
    let deadline = Instant::now() + timeout;
    loop {
        let owned = socket_inodes(pid);
        let found = tcp_sockets()
            .into_iter()
            .find(|e| e.remote_port == remote_port && owned.contains(&e.inode));
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The inodes of the sockets process `pid` holds (none once it has exited).
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let target = std::fs::read_link(fd.ok()?.path()).ok()?;
        let inode = target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?;
        inode.parse().ok()
    })
    .collect()
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}
