//! Resources the server must give back at once: refused connections, the
//! buffers of a user cut for not reading, and connections whose other end
//! vanished (keepalive, on both imd's and imc's sockets). These are checked
//! in the kernel's own tables (support::sockets), since no protocol line
//! shows them.

use std::io::{BufRead, ErrorKind, Read};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use imchat::net::KEEPALIVE;
use imchat::server::admission::Limits;
use imchat::server::Config;

use crate::imc::imc_background;
use crate::support::sockets::{open_fds, tcp_socket, wait_for_process_socket, wait_for_socket};
use crate::support::{test_config, LineClient, TestServer, EXPECT_TIMEOUT};

/// A flood of connections past the limit, each kept open by its client and
/// never read from: every one is told `server-full` and closed by the
/// server at once, so the server holds no descriptor for any of them and
/// a freed slot still works afterwards.
#[test]
fn refused_connections_hold_no_descriptor() {
    let srv = TestServer::start_binary(&["--max-connections", "2"]);
    let mut alice = srv.client("alice");
    let bob = srv.client("bob");
    let baseline = open_fds(srv.pid());
    let mut refused = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        // Some flooders talk first; the refusal must not wait for them.
        if i % 2 == 0 {
            std::io::Write::write_all(&mut s, b"hello\n").unwrap();
        }
        refused.push(s);
    }
    // Each one's error line has arrived: the server is done with it, and
    // must not be holding a descriptor for any of them.
    for (i, s) in refused.iter_mut().enumerate() {
        s.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
        let mut line = String::new();
        let _ = std::io::BufReader::new(&*s).read_line(&mut line);
        assert!(
            line.starts_with("error server-full: "),
            "refused connection {i} got {line:?}"
        );
    }
    let during = open_fds(srv.pid());
    assert!(
        during <= baseline + 2,
        "imd holds {during} descriptors with 300 refused connections open (baseline {baseline})"
    );
    // And each is closed (the close may come as a reset: the client's
    // "hello" was never read).
    for s in &mut refused {
        let mut rest = Vec::new();
        let end = s.read_to_end(&mut rest);
        assert!(
            rest.is_empty()
                && end.map_or_else(|e| e.kind() == ErrorKind::ConnectionReset, |_| true),
            "refused connection not closed after its error line"
        );
    }
    bob.quit();
    alice.expect(r"^\*\*\* bob is offline");
    let carol = srv.client("carol");
    assert_eq!(alice.who(), vec!["alice", "carol"]);
    drop((carol, refused));
}

/// A user cut for not reading is reset, not closed: the megabytes queued
/// toward it in the kernel are freed at once instead of being retried for
/// minutes, and the cut user's socket reports the reset.
#[test]
fn a_user_cut_for_not_reading_is_reset_and_its_buffers_freed() {
    let srv = quick_cut_server();
    let mut alice = srv.client("alice");
    let frozen = srv.frozen_client("frozen");
    let frozen_port = frozen.stream().local_addr().unwrap().port();
    send_until_cut(&mut alice, "frozen", 10_000);
    // The server's end of the frozen connection is gone: not lingering in
    // FIN-WAIT with its unsent bytes.
    let gone = wait_for_socket(srv.port(), frozen_port, EXPECT_TIMEOUT, |e| e.is_none());
    assert!(
        gone,
        "server still holds the cut connection: {:?}",
        tcp_socket(srv.port(), frozen_port)
    );
    // The frozen client, reading at last, finds a reset rather than an
    // orderly end after everything queued.
    let mut s = frozen.stream().try_clone().unwrap();
    s.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    let mut sink = Vec::new();
    let end = s.read_to_end(&mut sink);
    assert_eq!(
        end.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the cut connection ended without a reset after {} bytes",
        sink.len()
    );
}

/// Both ends turn on TCP keepalive, so a peer that vanished without a FIN
/// (host gone) is noticed: imd's socket toward a client and `imc listen`'s
/// socket toward imd each carry the kernel's keepalive timer, due within
/// [`KEEPALIVE`]'s idle time (the kernel default is two hours).
#[test]
fn both_ends_probe_an_idle_connection() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let alice_port = alice.stream().local_addr().unwrap().port();

    let mut listen = imc_background(&srv)
        .args(["--name", "ear", "listen"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("imc starts");
    alice.expect(r"^\*\*\* .* is now known as ear$");
    // imc's own socket, by its descriptor: a port alone could also name a
    // stale TIME_WAIT socket toward an earlier server on the same port.
    let ear_port =
        wait_for_process_socket(listen.id(), srv.port(), EXPECT_TIMEOUT).map(|e| e.local_port);
    let keepalive = |e: Option<&crate::support::sockets::TcpEntry>| {
        e.is_some_and(|e| e.timer == 2 && e.timer_due <= KEEPALIVE.0)
    };
    let server_side = wait_for_socket(srv.port(), alice_port, EXPECT_TIMEOUT, keepalive);
    let client_side =
        ear_port.is_some_and(|p| wait_for_socket(p, srv.port(), EXPECT_TIMEOUT, keepalive));
    // What imc's socket looked like while imc still held it.
    let ear_socket = ear_port.and_then(|p| tcp_socket(p, srv.port()));
    let _ = listen.kill();
    let _ = listen.wait();
    assert!(
        server_side,
        "imd's socket toward a client has no keepalive timer: {:?}",
        tcp_socket(srv.port(), alice_port)
    );
    assert!(
        client_side,
        "imc's socket has no keepalive timer: {ear_socket:?}"
    );
}

/// `imc listen` reads only as fast as it can print: with its stdout a pipe
/// nobody reads, it stops taking data, so the server cuts it as too slow
/// (rather than imc buffering everything in memory), and what it printed
/// before is every line in order, with no gap.
#[test]
fn listen_into_a_blocked_pipe_stops_reading() {
    let srv = quick_cut_server();
    let mut alice = srv.client("alice");
    let mut listen = imc_background(&srv)
        .args(["--name", "ear", "listen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("imc starts");
    alice.expect(r"^\*\*\* .* is now known as ear$");
    // 20 MB at most: more than the pipe, imc's buffers, both sockets'
    // kernel buffers and the server's queue hold together (about 10 MB).
    let sent = send_until_cut(&mut alice, "ear", 5_000);
    eprintln!("imc listen cut after {sent} lines");
    let mut out = String::new();
    listen
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = listen.wait().unwrap();
    assert_eq!(status.code(), Some(3), "connection lost: exit 3");
    let got: Vec<&str> = out.lines().filter(|l| l.starts_with("<alice> ")).collect();
    assert!(
        !got.is_empty() && got.len() < sent,
        "printed {} of {sent}",
        got.len()
    );
    for (i, line) in got.iter().enumerate() {
        assert!(
            line.starts_with(&format!("<alice> {i:06} ")),
            "line {i} is {:?}",
            &line[..line.len().min(20)]
        );
    }
}

/// A server that cuts a non-reader quickly: 64 KiB queues, 100 ms stall.
fn quick_cut_server() -> TestServer {
    TestServer::with_config(Config {
        queue_bytes: 64 * 1024,
        stall_timeout: Duration::from_millis(100),
        ..test_config()
    })
}

/// Has `sender` send numbered 4 KB lines, reading each back, until the
/// server says `victim` went offline as too slow; returns how many lines
/// were sent before. Panics past `most` lines.
pub fn send_until_cut(sender: &mut LineClient, victim: &str, most: usize) -> usize {
    let pad = "x".repeat(4000);
    let me = regex::escape(&sender.label); // client() names it after its label
    let cut = format!(r"\*\*\* {} is offline \(too slow\)", regex::escape(victim));
    for sent in 0..most {
        sender.send(&format!("{sent:06} {pad}"));
        let got = sender.expect(&format!(r"^(<{me}> \d+ x+|{cut})$"));
        if got.starts_with("***") {
            return sent;
        }
    }
    panic!("{victim} not cut after {most} lines");
}

/// A reader that keeps reading, slower than a flooding sender, is never cut
/// as too slow: the sender is slowed to its pace and it gets every line in
/// order. Linux reports a large send buffer (4 MB) writable only once about
/// a third of it is free: this reader, at about 3 MB/s, needs some 400 ms
/// for that, so with a 250 ms stall bound "a write waited that long" alone
/// would call it frozen. The acknowledgements it sends meanwhile show it is
/// reading.
#[test]
fn a_reader_slower_than_a_flood_but_reading_is_not_cut() {
    let srv = TestServer::with_config(Config {
        stall_timeout: Duration::from_millis(250),
        ..test_config()
    });
    let mut reader = srv.client("reader");
    let flooder = srv.client("flooder");
    // The flooder writes everything as fast as its socket takes it, and
    // reads its own lines back on another thread so it is not the slow one.
    let mut out = flooder.stream().try_clone().unwrap();
    let mut echo = flooder.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for i in 0..FLOOD_LINES {
            buf.extend_from_slice(flood_line(i).as_bytes());
            buf.push(b'\n');
            if buf.len() > 64 * 1024 {
                std::io::Write::write_all(&mut out, &buf).unwrap();
                buf.clear();
            }
        }
        std::io::Write::write_all(&mut out, &buf).unwrap();
    });
    let drain = std::thread::spawn(move || {
        let mut sink = [0u8; 1 << 16];
        while matches!(echo.read(&mut sink), Ok(n) if n > 0) {}
    });
    // The reader: 64 KiB every 20 ms at most, steadily.
    let mut s = reader.stream().try_clone().unwrap();
    s.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    let mut seen = FloodSeen::default();
    let mut chunk = vec![0u8; 64 * 1024];
    while seen.lines < FLOOD_LINES {
        std::thread::sleep(Duration::from_millis(20)); // the reader's pace
        let n = s.read(&mut chunk).expect("reader still connected");
        assert!(
            n > 0,
            "reader cut after {} of {FLOOD_LINES} lines",
            seen.lines
        );
        seen.take(&chunk[..n]);
    }
    writer.join().unwrap();
    assert_eq!(reader.who(), vec!["flooder", "reader"]);
    flooder.quit(); // ends the echo drain's read
    drain.join().unwrap();
}

/// How many lines the flood of the slow-reader tests has (here and in
/// `tls::a_tls_reader_slower_than_a_flood_is_not_cut`): 120-byte lines,
/// 7 MB, more than the socket buffers (the sending one grows to 4 MB) and
/// the 1 MiB queue hold together.
pub const FLOOD_LINES: usize = 60_000;

/// Line `i` of that flood, without its newline.
pub fn flood_line(i: usize) -> String {
    format!("{i:08} {}", "x".repeat(110))
}

/// What the slow reader of that flood has received so far: every line
/// from `flooder` checked, in order, as it arrives, and no notice that the
/// reader itself went offline.
#[derive(Default)]
pub struct FloodSeen {
    /// The flooder's lines received, all of them in order.
    pub lines: usize,
    /// The start of a line whose end has not arrived yet.
    pending: Vec<u8>,
}

impl FloodSeen {
    /// Checks the lines that `bytes`, just read, complete.
    pub fn take(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let complete = self
            .pending
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        for got in String::from_utf8_lossy(&self.pending[..complete]).lines() {
            if let Some(text) = got.strip_prefix("<flooder> ") {
                assert_eq!(text, flood_line(self.lines), "lost or reordered");
                self.lines += 1;
            } else {
                assert!(!got.contains("reader is offline"), "{got}");
            }
        }
        self.pending.drain(..complete);
    }
}

/// A TCP connection to `srv` from the loopback address `from` (127.0.0.x):
/// how the per-address limits are tested with two source addresses.
fn connect_from(srv: &TestServer, from: [u8; 4]) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local = std::net::SocketAddr::from((from, 0));
    sock.bind(&local.into()).unwrap();
    sock.connect(&srv.addr().into()).unwrap();
    sock.into()
}

/// Reads what a refused connection gets: one error line, then the close.
fn refusal(stream: TcpStream) -> String {
    stream.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(stream).read_line(&mut line);
    line
}

/// `--max-per-ip 2`: a third connection from one address is refused with
/// `too-many-connections`, another address is unaffected, and a place
/// freed by a user who left can be taken again.
#[test]
fn connections_per_address_are_limited() {
    let srv = TestServer::with_config(Config {
        per_ip: Limits {
            max_per_ip: 2,
            connects_per_sec: 0,
        },
        ..test_config()
    });
    let t = srv.transcript.clone();
    let mut a1 = LineClient::from_stream(connect_from(&srv, [127, 0, 0, 1]), "a1", t.clone());
    let a2 = LineClient::from_stream(connect_from(&srv, [127, 0, 0, 1]), "a2", t.clone());
    let got = refusal(connect_from(&srv, [127, 0, 0, 1]));
    assert!(got.starts_with("error too-many-connections: "), "{got:?}");
    let mut b = LineClient::from_stream(connect_from(&srv, [127, 0, 0, 2]), "b", t.clone());
    let a2_name = a2.name.clone();
    a2.quit();
    a1.expect(&format!(r"^\*\*\* {} is offline", regex::escape(&a2_name)));
    let a3 = LineClient::from_stream(connect_from(&srv, [127, 0, 0, 1]), "a3", t);
    let mut who = b.who();
    who.sort();
    let mut want = vec![a1.name.clone(), a3.name.clone(), b.name.clone()];
    want.sort();
    assert_eq!(who, want, "the refused connection never joined");
}

/// `--max-connects-per-ip 3`: connecting over and over from one address is
/// refused once it passes three a second; another address still gets in.
#[test]
fn new_connections_per_address_are_rate_limited() {
    let srv = TestServer::with_config(Config {
        per_ip: Limits {
            max_per_ip: 0,
            connects_per_sec: 3,
        },
        ..test_config()
    });
    // Ten in a row: at most three a second get a welcome, so unless the
    // machine takes over a third of a second per connect, some are refused.
    let mut welcomed = 0;
    let mut refused = 0;
    for _ in 0..10 {
        let got = refusal(connect_from(&srv, [127, 0, 0, 1]));
        if got.starts_with("*** welcome") {
            welcomed += 1;
        } else {
            assert!(got.starts_with("error too-many-connections: "), "{got:?}");
            refused += 1;
        }
    }
    assert!(
        refused > 0 && welcomed >= 3,
        "{welcomed} welcomed, {refused} refused"
    );
    let got = refusal(connect_from(&srv, [127, 0, 0, 2]));
    assert!(got.starts_with("*** welcome"), "another address: {got:?}");
}
