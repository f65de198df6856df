//! TLS end to end: imd with a certificate made at test time (rcgen), imc,
//! the library client, the scenario runner and `openssl s_client` over it,
//! what a plaintext or stalled client on a TLS port gets (nothing, and no
//! harm to anyone else), and flow control through TLS: slow, frozen and
//! lagging readers, as the TLS writer's socket questions and its flush
//! decide.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imchat::client::tls::TlsConnector;
use imchat::client::{Client, ClientError, Event};
use imchat::server::tls::Tls;
use imchat::server::Config;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use regex::Regex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{flood_line, FloodSeen, FLOOD_LINES};
use crate::support::sockets::{tcp_socket, wait_for_socket};
use crate::support::{imd_command, test_config, TestServer, EXPECT_TIMEOUT};

/// A CA and a server certificate it signed, as PEM files in a tempdir.
pub struct Certs {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// A fresh CA, and a server certificate from it valid for `names`
    /// (IP addresses become IP SANs, the rest DNS names).
    pub fn new(names: &[&str]) -> Certs {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Each CA its own name, as two real ones would have.
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        ca.distinguished_name
            .push(DnType::CommonName, format!("imchat test CA {serial}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut leaf = CertificateParams::new(names).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "imd");
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Certs {
            ca: write("ca.pem", ca.pem()),
            cert: write("cert.pem", leaf.pem()),
            key: write("key.pem", key.serialize_pem()),
            _dir: dir,
        }
    }

    /// The listener's settings for these files.
    pub fn tls(&self) -> Tls {
        Tls::from_pem_files(&self.cert, &self.key).unwrap()
    }

    /// A client that trusts this CA only.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::new(Some(&self.ca)).unwrap()
    }

    /// `--tls --ca FILE`, for imc.
    pub fn imc_args(&self) -> [String; 3] {
        ["--tls".into(), "--ca".into(), self.ca.display().to_string()]
    }
}

/// An in-process imd speaking TLS with `tls`, other limits as in tests.
fn tls_server(tls: Tls) -> TestServer {
    TestServer::with_config(Config {
        tls: Some(tls),
        ..test_config()
    })
}

/// A library client over TLS, trusting `certs`' CA, renamed to `name`.
async fn tls_client(server: &TestServer, certs: &Certs, name: &str) -> Client {
    let addr = server.addr().to_string();
    let mut c = Client::connect_with(&addr, EXPECT_TIMEOUT, Some(&certs.connector()))
        .await
        .unwrap();
    c.rename(name).await.unwrap();
    c
}

/// Waits for an event whose line matches `pattern`; returns the line.
async fn expect(client: &mut Client, pattern: &str) -> String {
    let re = Regex::new(pattern).unwrap();
    let wait = async {
        loop {
            let line = match client.next_event().await.unwrap() {
                Some(Event::Line(l)) => l.encode().trim_end().to_string(),
                Some(Event::Raw(r)) => r,
                None => panic!("connection closed waiting for /{pattern}/"),
            };
            if re.is_match(&line) {
                return line;
            }
        }
    };
    tokio::time::timeout(EXPECT_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("no line matching /{pattern}/"))
}

/// `imc --tls --ca CA --name alice send TEXT`, trusting `certs`' CA,
/// succeeds against `server`, and `bob` gets the line.
async fn imc_send_reaches(server: &TestServer, certs: &Certs, bob: &mut Client, text: &str) {
    server
        .imc()
        .args(certs.imc_args())
        .args(["--name", "alice", "send", text])
        .assert()
        .success();
    expect(bob, &format!("^<alice> {}$", regex::escape(text))).await;
}

/// `imc --tls --ca CA send` reaches a user connected over TLS.
#[tokio::test]
async fn imc_send_over_tls_reaches_a_tls_user() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = tls_server(certs.tls());
    let mut bob = tls_client(&server, &certs, "bob").await;
    assert!(bob.is_tls());
    imc_send_reaches(&server, &certs, &mut bob, "hello over tls").await;
}

/// `imc --tls listen` prints what a TLS user says; IMC_TLS and IMC_CA
/// work like the flags.
#[tokio::test]
async fn imc_listen_over_tls_hears_a_tls_user() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = tls_server(certs.tls());
    let mut bob = tls_client(&server, &certs, "bob").await;
    let ear = crate::imc::imc_background(&server)
        .env("IMC_TLS", "1")
        .env("IMC_CA", &certs.ca)
        .args(["--name", "ear", "listen", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    expect(&mut bob, r"^\*\*\* \S+ is now known as ear$").await;
    bob.say("hi ear").await.unwrap();
    let out = ear.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout.trim(), "<bob> hi ear");
}

/// A server certificate from a CA imc does not trust, or one not valid
/// for the address imc dials, is a connect error (exit 3) saying which,
/// and nothing is sent.
#[tokio::test]
async fn a_bad_certificate_is_a_connect_error_saying_why() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = tls_server(certs.tls());
    let mut bob = tls_client(&server, &certs, "bob").await;

    let stranger = Certs::new(&["127.0.0.1"]);
    imc_cannot_connect(
        &server,
        &stranger,
        &["send", "via the wrong CA"],
        "not signed by a CA this client trusts",
    );

    let elsewhere = Certs::new(&["127.0.0.2", "chat.example.org"]);
    let server2 = tls_server(elsewhere.tls());
    imc_cannot_connect(
        &server2,
        &elsewhere,
        &["send", "to the wrong name"],
        "not valid for the address dialled",
    );

    // Nothing of the refused send reached the user on the first server.
    bob.say("fence").await.unwrap();
    assert_eq!(bob.who().await.unwrap(), ["bob"]);
    let events = received(&mut bob).await;
    assert!(events.iter().all(|e| !e.contains("wrong CA")), "{events:?}");
}

/// `imc --tls --ca CA ARGS` with `certs`' CA, against `server`: it must
/// exit 3 (cannot connect) with `says` in its error.
fn imc_cannot_connect(server: &TestServer, certs: &Certs, args: &[&str], says: &str) {
    let out = server
        .imc()
        .args(certs.imc_args())
        .args(args)
        .assert()
        .code(3)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "{err}");
}

/// Every event already received, as debug text.
async fn received(client: &mut Client) -> Vec<String> {
    let mut events = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::ZERO, client.next_event()).await {
        events.push(format!("{e:?}"));
    }
    events
}

/// A plaintext client on a TLS port learns nothing (no welcome, no
/// names), never joins, and a TLS user online meanwhile is unaffected.
#[tokio::test]
async fn a_plaintext_client_on_a_tls_port_learns_nothing() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = tls_server(certs.tls());
    let mut bob = tls_client(&server, &certs, "bob").await;

    let mut plain = std::net::TcpStream::connect(server.addr()).unwrap();
    plain.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    plain
        .write_all(b"rename|mallory\nhello everyone\nwho\n")
        .unwrap();
    let mut got = Vec::new();
    // The server closes the connection (after at most a TLS alert).
    let _ = plain.read_to_end(&mut got);
    let seen = String::from_utf8_lossy(&got);
    assert!(!seen.contains("welcome"), "{seen:?}");
    assert!(!seen.contains("bob"), "{seen:?}");
    assert!(got.len() < 16, "more than an alert: {got:?}");

    bob.say("still here").await.unwrap();
    assert_eq!(
        bob.who().await.unwrap(),
        ["bob"],
        "the plaintext client never joined"
    );
    let events = received(&mut bob).await;
    assert!(
        events
            .iter()
            .all(|e| !e.contains("mallory") && !e.contains("hello everyone")),
        "{events:?}"
    );
}

/// A connection that never sends a ClientHello does not stop anyone else
/// from connecting: the handshake runs in the connection's own task.
#[tokio::test]
async fn a_stalled_handshake_does_not_block_accepts() {
    let certs = Certs::new(&["127.0.0.1"]);
    // Long enough that an accept loop waiting for it would never get on.
    let server = tls_server(
        certs
            .tls()
            .with_handshake_timeout(Duration::from_secs(3600)),
    );
    let _staller = std::net::TcpStream::connect(server.addr()).unwrap();
    let mut bob = tls_client(&server, &certs, "bob").await;
    assert_eq!(bob.who().await.unwrap(), ["bob"]);
}

/// A handshake that does not finish in time is given up: the connection
/// is closed and its slot given back (the server has only one).
#[tokio::test]
async fn a_stalled_handshake_times_out_and_gives_its_slot_back() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = TestServer::with_config(Config {
        tls: Some(
            certs
                .tls()
                .with_handshake_timeout(Duration::from_millis(100)),
        ),
        max_connections: 1,
        ..test_config()
    });
    let mut staller = std::net::TcpStream::connect(server.addr()).unwrap();
    staller.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let closed = staller.read_to_end(&mut got);
    assert!(closed.is_ok(), "still open: {closed:?}");
    assert!(got.is_empty(), "{got:?}");
    let mut bob = tls_client(&server, &certs, "bob").await;
    assert_eq!(bob.who().await.unwrap(), ["bob"]);
}

/// The imd binary: --tls-cert and --tls-key from the environment work;
/// one without the other, or files that are not a certificate and key,
/// are usage errors (exit 2) that say what is wrong.
#[tokio::test]
async fn imd_tls_flags_and_their_errors() {
    let certs = Certs::new(&["127.0.0.1"]);
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let server = TestServer::start_binary_env(&[], &[("IMD_TLS_CERT", cert), ("IMD_TLS_KEY", key)]);
    let mut bob = tls_client(&server, &certs, "bob").await;
    imc_send_reaches(&server, &certs, &mut bob, "from the binary").await;

    let usage = |args: &[&str], says: &str| {
        // Bounded: an imd that took these flags would listen for ever.
        let out = assert_cmd::Command::from_std(imd_command())
            .args(["--ip", "127.0.0.1", "--port", "0"])
            .args(args)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} listened");
    };
    usage(&["--tls-cert", cert], "--tls-key");
    usage(&["--tls-key", key], "--tls-cert");
    usage(
        &["--tls-cert", "/nonexistent.pem", "--tls-key", key],
        "cannot read /nonexistent.pem",
    );
    usage(
        &["--tls-cert", key, "--tls-key", key],
        "no certificate in it",
    );
    usage(
        &["--tls-cert", cert, "--tls-key", cert],
        "no private key in it",
    );
    let other = Certs::new(&["127.0.0.1"]);
    let other_key = other.key.to_str().unwrap();
    usage(
        &["--tls-cert", cert, "--tls-key", other_key],
        "cannot use the certificate and key",
    );
}

/// `openssl s_client` (a TLS client that is not ours) connects, sends a
/// line and receives the broadcast of it and of another user's line.
/// Skipped, saying so, where the `openssl` binary is missing.
#[tokio::test]
async fn openssl_s_client_can_chat() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP openssl_s_client_can_chat: no `openssl` binary on PATH");
        return;
    }
    let certs = Certs::new(&["127.0.0.1"]);
    let server = tls_server(certs.tls());
    let mut bob = tls_client(&server, &certs, "bob").await;
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-CAfile"])
        .arg(&certs.ca)
        .arg("-connect")
        .arg(server.addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = s_client.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = BufReader::new(s_client.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |want: &str| loop {
        let line = rx.recv_timeout(EXPECT_TIMEOUT).unwrap_or_else(|e| {
            panic!("s_client: nothing matching {want:?}: {e}");
        });
        if line.contains(want) {
            return line;
        }
    };
    next("*** welcome, you are ");
    stdin.write_all(b"rename|ossl\nhi from openssl\n").unwrap();
    next("ok rename: you are now ossl");
    next("<ossl> hi from openssl");
    expect(&mut bob, "^<ossl> hi from openssl$").await;
    bob.say("hi back").await.unwrap();
    next("<bob> hi back");
    // Killed, it closes its socket without TLS's close_notify: that is
    // leaving, as on a plaintext port, not a connection error.
    let _ = s_client.kill();
    let _ = s_client.wait();
    drop(stdin);
    let gone = expect(&mut bob, r"^\*\*\* ossl is offline").await;
    assert_eq!(gone, "*** ossl is offline (quit)");
}

/// A plaintext connection to a TLS port is not a crash or a hang for the
/// client either: the library reports a connect error.
#[tokio::test]
async fn tls_client_to_a_plaintext_port_says_so() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = TestServer::start();
    let addr = server.addr().to_string();
    let err = Client::connect_with(&addr, EXPECT_TIMEOUT, Some(&certs.connector()))
        .await
        .unwrap_err();
    match err {
        ClientError::Connect { source, .. } => {
            assert!(
                source.to_string().contains("does not speak TLS"),
                "{source}"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// The scenario files that need imd's own flags, and `server shuts down`,
/// pass over TLS too: imd started with the file's flags and a
/// certificate, the runner connecting with `Target::tls`. `too_slow`
/// checks that a TLS reader that stops reading is cut like a plaintext
/// one (the TLS writer's socket questions); `shutdown` that the goodbye
/// line is flushed through TLS before the close.
#[test]
fn flagged_scenarios_pass_over_tls() {
    use crate::scenarios::{load, run_on_imd_with, scenario_dir};
    for stem in [
        "too_slow",
        "framing_flood",
        "framing_too_long",
        "presence_limit",
        "shutdown",
    ] {
        let s = load(&scenario_dir().join(format!("{stem}.chat")));
        let certs = Certs::new(&["127.0.0.1"]);
        let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
        let tls_flags = ["--tls-cert", cert, "--tls-key", key];
        let outcome = run_on_imd_with(&s, &tls_flags, Some(certs.connector()));
        assert!(
            outcome.passed(),
            "{stem}: {:?} {:?}\n{}",
            outcome.failure,
            outcome.skipped,
            outcome.transcript
        );
    }
}

/// `imc --tls --ca CA scenario FILE...` runs the scenario files that need
/// no flags of imd's against a TLS server, and they pass.
#[test]
fn imc_scenario_over_tls() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = tls_server(certs.tls());
    let dir = crate::scenarios::scenario_dir();
    let files = [
        "v07_whisper.chat",
        "commands_are_exact.chat",
        "framing_line_endings.chat",
    ];
    let out = server
        .imc()
        .args(certs.imc_args())
        .arg("scenario")
        .args(files.iter().map(|f| dir.join(f)))
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("PASS ").count(), files.len(), "{stdout}");
}

/// A refused connection on a TLS port (server full) gets no plaintext
/// line, which a TLS client would read as a broken handshake: it is
/// closed, and imc says the server closed it during the handshake.
#[test]
fn a_refusal_on_a_tls_port_is_a_close() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = TestServer::with_config(Config {
        tls: Some(certs.tls()),
        max_connections: 1,
        ..test_config()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _bob = rt.block_on(tls_client(&server, &certs, "bob"));
    let mut plain = std::net::TcpStream::connect(server.addr()).unwrap();
    plain.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    imc_cannot_connect(
        &server,
        &certs,
        &["who"],
        "closed the connection during the handshake",
    );
}

/// A raw TLS connection to `server` over `tcp`, renamed to `name` (its
/// reply read): for tests that read at their own pace, or not at all,
/// rather than line by line as [`Client`] does.
async fn raw_tls(server: &TestServer, certs: &Certs, tcp: TcpStream, name: &str) -> RawTls {
    let addr = server.addr().to_string();
    let tls = certs.connector().handshake(tcp, &addr).await.unwrap();
    let mut s = tokio::io::BufReader::new(tls);
    send_line(&mut s, &format!("rename|{name}")).await;
    read_until(&mut s, &format!("ok rename: you are now {name}")).await;
    s
}

/// A TLS connection as [`raw_tls`] makes it.
type RawTls = tokio::io::BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

/// Writes `line` and a newline, and flushes it through TLS.
async fn send_line(s: &mut (impl AsyncWrite + Unpin), line: &str) {
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    s.flush().await.unwrap();
}

/// Reads lines until one is `want` (without its newline); returns those
/// before it. Panics if the connection ends or nothing matches in time.
async fn read_until(s: &mut RawTls, want: &str) -> Vec<String> {
    let mut before = Vec::new();
    let wait = async {
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).await.unwrap() == 0 {
                return Err("the connection closed");
            }
            if line.trim_end() == want {
                return Ok(());
            }
            before.push(line.trim_end().to_string());
        }
    };
    let why = match tokio::time::timeout(EXPECT_TIMEOUT, wait).await {
        Ok(Ok(())) => return before,
        Ok(Err(closed)) => closed,
        Err(_) => "nothing more came",
    };
    // Long lines (kilobytes of padding) shown by their start.
    let short = |l: &str| l.chars().take(60).collect::<String>();
    let last = before.last().map(|l| short(l));
    panic!(
        "{why} waiting for {:?}, after {} lines, the last {last:?}",
        short(want),
        before.len()
    );
}

/// A TCP connection to `server` with a tiny receive buffer (4 KiB, as
/// `TestServer::frozen_client` has), so that the server's socket toward
/// it is full after a few kilobytes it has not read.
fn tiny_receive_buffer(server: &TestServer) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr().into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    TcpStream::from_std(sock.into()).unwrap()
}

/// An in-process imd with `config` whose sockets toward clients have a
/// 16 KiB send buffer (set on the listener, which accepted connections
/// inherit; Linux doubles the 8 KiB asked for) instead of the megabytes
/// Linux gives a loopback connection, so that a reader's socket is full
/// after a few kilobytes it has not read.
fn small_send_buffers(config: Config) -> TestServer {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.set_send_buffer_size(8 * 1024).unwrap();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    listener.bind(&any.into()).unwrap();
    listener.listen(128).unwrap();
    TestServer::on_listener(listener.into(), config)
}

/// Over TLS too, a reader that keeps reading, slower than a flooding
/// sender, is never cut and gets every line in order: the TLS writer
/// answers the outbox's question (the bytes the peer has not yet
/// acknowledged) from the TCP socket under the TLS layer, and the
/// acknowledgements show the reader is taking data. The same flood and
/// pace as `limits::a_reader_slower_than_a_flood_but_reading_is_not_cut`,
/// which says why a 250 ms stall bound alone would call this reader
/// frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_reader_slower_than_a_flood_is_not_cut() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = TestServer::with_config(Config {
        tls: Some(certs.tls()),
        stall_timeout: Duration::from_millis(250),
        ..test_config()
    });
    let connect = || TcpStream::connect(server.addr());
    let mut reader = raw_tls(&server, &certs, connect().await.unwrap(), "reader").await;
    let flooder = raw_tls(&server, &certs, connect().await.unwrap(), "flooder").await;
    // The flooder writes everything as fast as its socket takes it, and
    // reads its own lines back meanwhile so it is not the slow one.
    let (mut echo, mut out) = tokio::io::split(flooder);
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        for i in 0..FLOOD_LINES {
            buf.extend_from_slice(flood_line(i).as_bytes());
            buf.push(b'\n');
            if buf.len() > 64 * 1024 || i + 1 == FLOOD_LINES {
                out.write_all(&buf).await.unwrap();
                buf.clear();
            }
        }
        out.flush().await.unwrap();
        out
    });
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 1 << 16];
        while matches!(echo.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    // The reader: 64 KiB every 20 ms at most, steadily.
    let mut seen = FloodSeen::default();
    let mut chunk = vec![0u8; 64 * 1024];
    while seen.lines < FLOOD_LINES {
        tokio::time::sleep(Duration::from_millis(20)).await; // the reader's pace
        let mut this_turn = 0;
        while this_turn < chunk.len() && seen.lines < FLOOD_LINES {
            let read = tokio::time::timeout(EXPECT_TIMEOUT, reader.read(&mut chunk[this_turn..]));
            let n = match read.await {
                Ok(Ok(n)) if n > 0 => n,
                end => panic!(
                    "reader cut after {} of {FLOOD_LINES} lines: {end:?}",
                    seen.lines
                ),
            };
            seen.take(&chunk[this_turn..this_turn + n]);
            this_turn += n;
        }
    }
    let _out = writer.await.unwrap();
    // Still online, as its own `who` says.
    send_line(&mut reader, "who").await;
    let who = read_until(&mut reader, "ok who: 2 online").await;
    assert_eq!(&who[who.len() - 2..], ["who flooder", "who reader"]);
    drain.abort();
}

/// A TLS reader that stops reading is cut like a plaintext one: the
/// others are told `*** frozen is offline (too slow)`, and the connection
/// is reset (PROTOCOL.md, "Server-initiated disconnects"): the server's
/// end is gone at once, and the frozen client, reading at last, finds the
/// reset rather than an orderly end after everything queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_tls_reader_is_cut_and_reset() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = small_send_buffers(Config {
        tls: Some(certs.tls()),
        queue_bytes: 64 * 1024,
        stall_timeout: Duration::from_millis(100),
        ..test_config()
    });
    let mut alice = raw_tls(
        &server,
        &certs,
        TcpStream::connect(server.addr()).await.unwrap(),
        "alice",
    )
    .await;
    let tcp = tiny_receive_buffer(&server);
    let frozen_port = tcp.local_addr().unwrap().port();
    let mut frozen = raw_tls(&server, &certs, tcp, "frozen").await;
    // Numbered 4 KB lines, each read back, until the cut is announced.
    let pad = "x".repeat(4000);
    let cut = "*** frozen is offline (too slow)";
    for sent in 0.. {
        assert!(sent < 10_000, "frozen not cut after {sent} lines");
        send_line(&mut alice, &format!("{sent:06} {pad}")).await;
        let before = read_until(&mut alice, &format!("<alice> {sent:06} {pad}")).await;
        if before.iter().any(|l| l == cut) {
            break;
        }
    }
    let port = server.port();
    let gone = tokio::task::spawn_blocking(move || {
        wait_for_socket(port, frozen_port, EXPECT_TIMEOUT, |e| e.is_none())
    });
    assert!(
        gone.await.unwrap(),
        "server still holds the cut connection: {:?}",
        tcp_socket(port, frozen_port)
    );
    let mut sink = Vec::new();
    let end = tokio::time::timeout(EXPECT_TIMEOUT, frozen.read_to_end(&mut sink)).await;
    assert_eq!(
        end.expect("the cut connection ended").map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the cut connection ended without a reset after {} bytes",
        sink.len()
    );
}

/// Each batch is flushed through TLS, not left in the TLS layer: a reader
/// whose socket was full when its last lines were written gets them once
/// it reads, with nothing sent after them. (A socket that takes the data
/// at once is written through by the write itself; only a full one leaves
/// encrypted records waiting in rustls, up to 64 KiB, which only the flush
/// writes out later. The server's send buffer and the reader's receive
/// buffer are made small, 16 and 4 KiB, so that even a reader that keeps
/// up leaves the socket unable to take all that rustls holds when the last
/// line is written.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_reader_that_fell_behind_gets_the_last_line() {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = small_send_buffers(Config {
        tls: Some(certs.tls()),
        // 400 KB waiting for the reader: not past half, so alice is never
        // held back for it.
        queue_bytes: 2 * 1024 * 1024,
        ..test_config()
    });
    let mut reader = raw_tls(&server, &certs, tiny_receive_buffer(&server), "reader").await;
    let mut alice = tls_client(&server, &certs, "alice").await;
    // The reader reads nothing while alice says 400 KB and a last line:
    // its socket fills, and the rest waits in its queue.
    let pad = "x".repeat(4000);
    for i in 0..100 {
        alice.say(&format!("{i:03} {pad}")).await.unwrap();
    }
    alice.say("last").await.unwrap();
    let before = read_until(&mut reader, "<alice> last").await;
    let said: Vec<&String> = before
        .iter()
        .filter(|l| l.starts_with("<alice> "))
        .collect();
    assert_eq!(said.len(), 100, "lost lines");
    for (i, line) in said.iter().enumerate() {
        assert_eq!(**line, format!("<alice> {i:03} {pad}"), "reordered");
    }
}

/// `imc --tls --ca CA bench ARGS --json` against a fresh TLS imd (`args`
/// split at spaces): it succeeds, and its report.
fn bench_over_tls(args: &str) -> serde_json::Value {
    let certs = Certs::new(&["127.0.0.1"]);
    let server = tls_server(certs.tls());
    let out = server
        .imc()
        .args(certs.imc_args())
        .arg("bench")
        .args(args.split_whitespace())
        .arg("--json")
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .get_output()
        .clone();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `imc --tls --ca CA bench` (closed loop) over TLS: every message reaches
/// every client, and idle TLS connections see the final broadcast. (A
/// TLS reader that stops reading is cut: [`a_frozen_tls_reader_is_cut_and_reset`],
/// and `too_slow` in [`flagged_scenarios_pass_over_tls`].)
#[test]
fn imc_bench_over_tls_delivers_everything() {
    let report = bench_over_tls(
        "--clients 4 --senders 2 --messages 300 --size 2000 --window 16 --connections 3",
    );
    assert_eq!(report["deliveries"], 2 * 300 * 4, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["connections_reached"], 3, "{report}");
    assert_eq!(report["stalled"], false, "{report}");
}

/// The open-loop fan-out bench over TLS: `imc --tls --ca bench
/// --subscribers` against an imd that speaks only TLS (a plaintext bench
/// gets no welcome and never starts), so every delivery counted went
/// through a TLS session; the probe's new clients answered over TLS too.
#[test]
fn imc_fanout_bench_over_tls_delivers_everything() {
    let report =
        bench_over_tls("--subscribers 5 --publishers 2 --rate 40 --duration 1 --drain-timeout 30");
    assert_eq!(report["proto"], "imd", "{report}");
    assert_eq!(report["messages_sent"], 2 * 40, "{report}");
    assert_eq!(report["deliveries"], 2 * 40 * 5, "{report}");
    assert_eq!(report["delivered_pct"], 100.0, "{report}");
    assert_eq!(report["disconnected"], 0, "{report}");
    assert_eq!(report["publishers_disconnected"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["corrupted"], 0, "{report}");
    assert_eq!(report["probes_failed"], 0, "{report}");
    assert_eq!(report["stalled"], false, "{report}");
}

/// The fan-out bench's TLS is TLS from the first byte, which NATS does not
/// speak (it sends INFO in plaintext first): refused as bad input before
/// any connection.
#[tokio::test]
async fn fanout_over_tls_refuses_nats() {
    use imchat::client::bench::fanout::{self, FanoutArgs, Proto};
    let certs = Certs::new(&["127.0.0.1"]);
    let args = FanoutArgs {
        tls: Some(certs.connector()),
        rate: 10.0,
        ..FanoutArgs::default()
    };
    // Nothing listens here: an attempt to connect would be another error.
    let err = fanout::open_loop("127.0.0.1:1", Proto::Nats, &args)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("NATS"), "{err}");
}

/// The fan-out bench against a Redis that speaks only TLS (`--tls-port`):
/// everything is delivered (skipped where redis-server has no TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_tls_to_redis_delivers_everything() {
    use imchat::client::bench::fanout::{self, FanoutArgs, Proto};
    let certs = Certs::new(&["127.0.0.1"]);
    let Some(redis) = TlsRedis::start(&certs) else {
        return;
    };
    let args = FanoutArgs {
        tls: Some(certs.connector()),
        subscribers: 5,
        rate: 40.0,
        duration: 1.0,
        drain_timeout: 30.0,
        ..FanoutArgs::default()
    };
    let r = fanout::open_loop(&format!("127.0.0.1:{}", redis.port), Proto::Redis, &args)
        .await
        .unwrap();
    assert_eq!(r.messages_sent, 40, "{}", r.human());
    assert_eq!(r.deliveries, 40 * 5, "{}", r.human());
    assert_eq!(r.delivered_pct, 100.0, "{}", r.human());
    assert_eq!(
        r.disconnected + r.publishers_disconnected,
        0,
        "{}",
        r.human()
    );
    assert_eq!(r.probes_failed, 0, "{}", r.human());
    assert!(!r.stalled, "{}", r.human());
}

/// A redis-server that speaks TLS only, on `port`, with `certs`' server
/// certificate. Killed on drop.
struct TlsRedis {
    port: u16,
    child: std::process::Child,
}

impl TlsRedis {
    /// Starts one, or `None` (saying why) where redis-server lacks TLS.
    /// Ready once its log says so; a port taken meanwhile is tried again.
    fn start(certs: &Certs) -> Option<TlsRedis> {
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&certs.cert)
                .arg("--tls-key-file")
                .arg(&certs.key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (Debian: apt-get install redis-server)");
            let mut log = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut said = String::new();
            let ready = log.by_ref().map_while(Result::ok).any(|line| {
                said.push_str(&line);
                said.push('\n');
                line.contains("Ready to accept connections")
            });
            if ready {
                // Keep reading its log, so that it never blocks on it.
                std::thread::spawn(move || log.for_each(drop));
                return Some(TlsRedis { port, child });
            }
            let _ = child.wait();
            if said.contains("in use") {
                continue;
            }
            // A redis-server built without TLS rejects the directive.
            if said.contains("tls-port") {
                eprintln!("SKIP: this redis-server has no TLS:\n{said}");
                return None;
            }
            panic!("redis-server did not start:\n{said}");
        }
        panic!("redis-server with TLS found no free port");
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two nodes linked through Redis over TLS (`--redis rediss://...`, the
/// CA given to rustls-native-certs by SSL_CERT_FILE): a line said on one
/// reaches a user on the other. Trusting another CA, the link's
/// certificate check fails and imd exits 1 saying it cannot reach Redis.
#[tokio::test]
async fn cluster_links_over_rediss() {
    let certs = Certs::new(&["127.0.0.1"]);
    let Some(redis) = TlsRedis::start(&certs) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = certs.ca.to_str().unwrap();
    let node = || TestServer::start_binary_env(&["--redis", &url], &[("SSL_CERT_FILE", ca)]);
    let (one, two) = (node(), node());
    let mut alice = one.client("alice");
    let mut bob = two.client("bob");
    alice.expect(r"^\*\*\* \S+ is now known as bob$");
    alice.send("across over tls");
    bob.expect("^<alice> across over tls$");

    let stranger = Certs::new(&["127.0.0.1"]);
    let out = imd_command()
        .args(["--ip", "127.0.0.1", "--port", "0", "--redis", &url])
        .env("SSL_CERT_FILE", &stranger.ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach redis at rediss://"), "{err}");
    assert!(out.stdout.is_empty());
}

/// `imc --host NAME --tls` checks the server's certificate against the
/// host name, as a real server's certificate names its DNS name rather
/// than an address; the same certificate dialled by address is refused.
#[tokio::test]
async fn imc_checks_the_certificate_against_the_host_name() {
    let certs = Certs::new(&["localhost"]);
    let server = tls_server(certs.tls());
    let by_name = format!("localhost:{}", server.port());
    let mut bob = Client::connect_with(&by_name, EXPECT_TIMEOUT, Some(&certs.connector()))
        .await
        .unwrap();
    bob.rename("bob").await.unwrap();
    server
        .imc()
        .args(certs.imc_args())
        .args(["--host", "localhost", "--name", "alice", "send", "by name"])
        .assert()
        .success();
    expect(&mut bob, "^<alice> by name$").await;

    imc_cannot_connect(
        &server,
        &certs,
        &["--host", "127.0.0.1", "send", "by address"],
        "not valid for the address dialled",
    );
    bob.say("fence").await.unwrap();
    assert_eq!(bob.who().await.unwrap(), ["bob"]);
    let events = received(&mut bob).await;
    assert!(
        events.iter().all(|e| !e.contains("by address")),
        "{events:?}"
    );
}
