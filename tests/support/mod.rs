//! Test support: a server per test, raw line clients, `imc` commands, and
//! transcripts that explain a failure.
//!
//! - [`TestServer::start`] runs imd in-process on 127.0.0.1:0 (on its own
//!   runtime thread, so sync tests and `assert_cmd` can use it);
//!   [`TestServer::start_binary`] runs the real `imd` binary and reads its
//!   `imd listening on` line. Both stop when dropped.
//! - [`LineClient`] is a plain TCP socket speaking PROTOCOL.md: `send`,
//!   `expect(regex)` with a timeout, `expect_none_before(bad, fence)`.
//! - [`TestServer::imc`] is an `imc` command already pointed at the server,
//!   with HOME, history file and NO_COLOR set so nothing leaks in from the
//!   developer's machine.
//! - Every client records what it sent and received, with timestamps, in the
//!   server's [`Transcript`]; if the test panics, dropping the server prints
//!   the whole transcript, so a failure says who saw what.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod sockets;

use imchat::server::{self, Config};
use regex::Regex;

/// How long `expect` waits. Only matters when something is broken.
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A shared, timestamped log of every client's traffic.
#[derive(Clone)]
pub struct Transcript {
    start: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Transcript {
    /// An empty transcript, for clients made without a [`TestServer`].
    pub fn new() -> Transcript {
        Transcript {
            start: Instant::now(),
            lines: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Records one event for `who`: `dir` is `->` (sent) or `<-` (received).
    pub fn record(&self, who: &str, dir: &str, text: &str) {
        let t = self.start.elapsed().as_secs_f64();
        let line = format!("{t:9.4}s {who:>10} {dir} {text}");
        self.lines.lock().unwrap().push(line);
    }

    /// Everything recorded so far, one event per line.
    pub fn dump(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

enum Running {
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<JoinHandle<()>>,
    },
    Binary(Child),
}

/// A server for one test; stops on drop.
pub struct TestServer {
    addr: SocketAddr,
    running: Running,
    home: tempfile::TempDir,
    pub transcript: Transcript,
}

/// A config for tests: defaults, but no idle timeout (tests of it set one).
pub fn test_config() -> Config {
    Config {
        idle_timeout: None,
        ..Config::default()
    }
}

/// Removes every `IMD_*` and `IMC_*` variable from `cmd`'s environment:
/// imd and imc read their flags from these, so one set on the developer's
/// machine (`IMD_REDIS`, `IMC_TIMEOUT`) would change what a test tests.
pub fn without_settings(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("IMD_") || k.starts_with("IMC_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The `imd` binary, with no `IMD_*`/`IMC_*` settings from the machine
/// (see [`without_settings`]) and `RUST_LOG=warn`.
pub fn imd_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("imd"));
    without_settings(&mut cmd).env("RUST_LOG", "warn");
    cmd
}

/// A local address where nobody listens, for as long as the value lives:
/// the port is bound (so no other test can take it) but not listening, so
/// a connection to it is refused. (Binding a port and dropping it leaves
/// it free for anyone, another test included.)
pub struct RefusedPort {
    _sock: socket2::Socket,
    pub port: u16,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        sock.bind(&any.into()).unwrap();
        let port = sock.local_addr().unwrap().as_socket().unwrap().port();
        RefusedPort { _sock: sock, port }
    }
}

impl TestServer {
    /// imd in-process with [`test_config`].
    pub fn start() -> TestServer {
        TestServer::with_config(test_config())
    }

    /// imd in-process with the given limits.
    pub fn with_config(config: Config) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        TestServer::on_listener(listener, config)
    }

    /// imd in-process on a listener the test made, for socket options that
    /// accepted connections inherit from it (a small `SO_SNDBUF`, so that
    /// a reader's socket is full after a few kilobytes).
    pub fn on_listener(listener: std::net::TcpListener, config: Config) -> TestServer {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                server::run(listener, config, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
        });
        TestServer {
            addr,
            running: Running::InProcess {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            home: tempfile::tempdir().unwrap(),
            transcript: Transcript::new(),
        }
    }

    /// The real `imd` binary on an ephemeral port, with extra flags.
    pub fn start_binary(args: &[&str]) -> TestServer {
        TestServer::start_binary_env(args, &[])
    }

    /// [`TestServer::start_binary`] with environment variables set (such
    /// as `IMD_IDLE_TIMEOUT`), on top of [`imd_command`]'s clean slate.
    pub fn start_binary_env(args: &[&str], env: &[(&str, &str)]) -> TestServer {
        TestServer::spawn_binary(args, env, Stdio::inherit()).0
    }

    /// [`TestServer::start_binary_env`] with imd's log (stderr) coming
    /// back line by line, for tests that wait on a log line or check what
    /// the log holds. The channel ends when imd exits.
    pub fn start_binary_logged(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (TestServer, std::sync::mpsc::Receiver<String>) {
        let (server, _out, stderr) = TestServer::spawn_binary(args, env, Stdio::piped());
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = stderr.expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("imd: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (server, rx)
    }

    /// The real `imd` binary serving metrics on a free port of 127.0.0.1
    /// (`--metrics 127.0.0.1:0`), and the metrics address, read from its
    /// second stdout line.
    pub fn start_binary_with_metrics(args: &[&str]) -> (TestServer, SocketAddr) {
        let mut all = vec!["--metrics", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (server, mut out, _) = TestServer::spawn_binary(&all, &[], Stdio::inherit());
        let metrics = read_address(&mut out, "imd metrics on ");
        (server, metrics)
    }

    /// Starts the binary and reads its first stdout line; returns the rest
    /// of its stdout, and its stderr if `stderr` is piped.
    fn spawn_binary(
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> (
        TestServer,
        BufReader<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ) {
        let mut child = imd_command()
            .args(["--ip", "127.0.0.1", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("imd starts");
        let log = child.stderr.take();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let addr = read_address(&mut out, "imd listening on ");
        let server = TestServer {
            addr,
            running: Running::Binary(child),
            home: tempfile::tempdir().unwrap(),
            transcript: Transcript::new(),
        };
        (server, out, log)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The process ID of a binary server (see [`TestServer::start_binary`]).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::Binary(child) => child.id(),
            Running::InProcess { .. } => panic!("pid() is for start_binary servers"),
        }
    }

    /// A temporary HOME for `imc` processes of this test.
    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    /// A raw client that keeps its default name (its address).
    pub fn raw_client(&self, label: &str) -> LineClient {
        LineClient::connect(self.addr, label, self.transcript.clone())
    }

    /// A client renamed to `name` that will never read again, with a tiny
    /// receive buffer so the server's queue toward it fills quickly.
    pub fn frozen_client(&self, name: &str) -> LineClient {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&self.addr.into()).unwrap();
        let mut c = LineClient::from_stream(sock.into(), name, self.transcript.clone());
        c.send(&format!("rename|{name}"));
        c.expect(&format!("^ok rename: you are now {}$", regex::escape(name)));
        c
    }

    /// A raw client renamed to `name` (also its transcript label).
    pub fn client(&self, name: &str) -> LineClient {
        let mut c = self.raw_client(name);
        c.send(&format!("rename|{name}"));
        c.expect(&format!("^ok rename: you are now {}$", regex::escape(name)));
        c
    }

    /// The `imc` binary pointed at this server, isolated from the machine.
    pub fn imc(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("imc").unwrap();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("IMC_HISTORY", self.home.path().join("history"))
            .env("NO_COLOR", "1")
            .env("IMC_IP", self.addr.ip().to_string())
            .env("IMC_PORT", self.addr.port().to_string())
            .timeout(Duration::from_secs(30));
        cmd
    }

    /// Sends SIGTERM to a binary server and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM, SIGINT) to a binary server and returns its
    /// exit status.
    pub fn signal(&mut self, signal: libc::c_int) -> std::process::ExitStatus {
        match &mut self.running {
            Running::Binary(child) => {
                let pid = libc::pid_t::try_from(child.id()).unwrap();
                // SAFETY: kill(2) on our own child, which has not been
                // waited for, so its PID cannot have been reused.
                assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
                child.wait().unwrap()
            }
            Running::InProcess { .. } => panic!("signal() is for start_binary servers"),
        }
    }

    /// Waits for a binary server to exit (after a signal sent with
    /// [`TestServer::pid`]) and returns its exit status. Call it once imd
    /// has been seen to stop (e.g. its log ended): it does not time out.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        match &mut self.running {
            Running::Binary(child) => child.wait().unwrap(),
            Running::InProcess { .. } => panic!("wait() is for start_binary servers"),
        }
    }

    /// Kills a binary server with SIGKILL: no cleanup at all.
    pub fn kill9(&mut self) {
        match &mut self.running {
            Running::Binary(child) => {
                child.kill().unwrap();
                child.wait().unwrap();
            }
            Running::InProcess { .. } => panic!("kill9() is for start_binary servers"),
        }
    }

    /// Stops an in-process server the way Ctrl-C stops imd, and waits for
    /// `run` to return.
    pub fn shutdown(&mut self) {
        if let Running::InProcess { stop, thread } = &mut self.running {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = thread.take() {
                t.join().unwrap();
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- transcript (server {}) ----\n{}\n---- end of transcript ----",
                self.addr,
                self.transcript.dump()
            );
        }
        match &mut self.running {
            Running::InProcess { .. } => self.shutdown(),
            Running::Binary(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Reads imd's next stdout line, which must be `PREFIX ADDRESS`.
fn read_address(out: &mut impl BufRead, prefix: &str) -> SocketAddr {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}, imd said {line:?}"))
        .parse()
        .unwrap()
}

/// A plain TCP client speaking the protocol line by line (blocking).
pub struct LineClient {
    pub label: String,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    transcript: Transcript,
    /// Our name as the server told us in the welcome line.
    pub name: String,
    /// Whole lines read from the server so far, and their bytes (with
    /// their `\n`): what the server's metrics should count as delivered.
    pub lines_read: u64,
    pub bytes_read: u64,
}

impl LineClient {
    /// Connects and reads the welcome line.
    pub fn connect(addr: SocketAddr, label: &str, transcript: Transcript) -> LineClient {
        let stream = TcpStream::connect(addr).expect("connect to test server");
        LineClient::from_stream(stream, label, transcript)
    }

    /// Wraps a connected socket and reads the welcome line.
    pub fn from_stream(stream: TcpStream, label: &str, transcript: Transcript) -> LineClient {
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = LineClient {
            label: label.to_string(),
            stream,
            reader,
            transcript,
            name: String::new(),
            lines_read: 0,
            bytes_read: 0,
        };
        let welcome = c.expect(r"^\*\*\* welcome, you are (\S+) ");
        c.name = welcome
            .strip_prefix("*** welcome, you are ")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        c
    }

    /// Sends one line (adds `\n`).
    pub fn send(&mut self, line: &str) {
        self.transcript.record(&self.label, "->", line);
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// Sends raw bytes exactly as given.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.transcript.record(
            &self.label,
            "->",
            &format!("(raw) {:?}", String::from_utf8_lossy(bytes)),
        );
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one line within `timeout`; `None` on timeout, panics on EOF.
    fn read_line(&mut self, timeout: Duration) -> Option<String> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => {
                self.transcript.record(&self.label, "<-", "(closed)");
                panic!("{}: connection closed while waiting", self.label)
            }
            Ok(n) => {
                self.lines_read += 1;
                self.bytes_read += n as u64;
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_string();
                self.transcript.record(&self.label, "<-", &line);
                Some(line)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // A partial line stays in `buf`; tests use whole lines only.
                assert!(buf.is_empty(), "{}: partial line {buf:?}", self.label);
                None
            }
            Err(e) => panic!("{}: read failed: {e}", self.label),
        }
    }

    /// Waits for a line matching `pattern` (a regex), skipping others, and
    /// returns it. Panics after [`EXPECT_TIMEOUT`].
    pub fn expect(&mut self, pattern: &str) -> String {
        self.expect_within(pattern, EXPECT_TIMEOUT)
    }

    /// [`LineClient::expect`] with an explicit timeout.
    pub fn expect_within(&mut self, pattern: &str, timeout: Duration) -> String {
        let re = Regex::new(pattern).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: no line matching /{pattern}/ within {timeout:?}",
                    self.label
                );
            }
            if let Some(line) = self.read_line(left) {
                if re.is_match(&line) {
                    return line;
                }
            }
        }
    }

    /// The next line that is not a presence notice (someone else coming,
    /// going or renaming, which can interleave anywhere).
    pub fn next_line(&mut self) -> String {
        static PRESENCE: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"^\*\*\* \S+ is (online|offline|now known as)").unwrap());
        loop {
            let line = self
                .read_line(EXPECT_TIMEOUT)
                .unwrap_or_else(|| panic!("{}: no line within {EXPECT_TIMEOUT:?}", self.label));
            if !PRESENCE.is_match(&line) {
                return line;
            }
        }
    }

    /// [`LineClient::next_line`], which must match `pattern`. For checking
    /// replies and order strictly.
    pub fn expect_next(&mut self, pattern: &str) -> String {
        let line = self.next_line();
        let re = Regex::new(pattern).unwrap();
        assert!(
            re.is_match(&line),
            "{}: next line {line:?} does not match /{pattern}/",
            self.label
        );
        line
    }

    /// Asserts no line matching `pattern` arrives before a line matching
    /// `until` (a fence: send something and wait for it, so "did not
    /// receive" is checked without sleeping).
    pub fn expect_none_before(&mut self, pattern: &str, until: &str) {
        let bad = Regex::new(pattern).unwrap();
        let fence = Regex::new(until).unwrap();
        let deadline = Instant::now() + EXPECT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{}: no /{until}/ in time", self.label);
            if let Some(line) = self.read_line(left) {
                assert!(
                    !bad.is_match(&line),
                    "{}: received {line:?}, which it must not see",
                    self.label
                );
                if fence.is_match(&line) {
                    return;
                }
            }
        }
    }

    /// Sends `who` and returns the names listed, checking the count line.
    pub fn who(&mut self) -> Vec<String> {
        self.send("who");
        let mut names = Vec::new();
        loop {
            let line = self.expect(r"^(who |ok who: )");
            if let Some(n) = line.strip_prefix("who ") {
                names.push(n.to_string());
            } else {
                let count: usize = line
                    .trim_start_matches("ok who: ")
                    .trim_end_matches(" online")
                    .parse()
                    .unwrap();
                assert_eq!(count, names.len(), "who count line");
                return names;
            }
        }
    }

    /// Waits until the server closes the connection, returning what arrived
    /// before; panics if it stays open past [`EXPECT_TIMEOUT`].
    pub fn expect_closed(&mut self) -> String {
        self.reader
            .get_ref()
            .set_read_timeout(Some(EXPECT_TIMEOUT))
            .unwrap();
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{}: not closed by the server: {e}", self.label),
        }
        let text = String::from_utf8_lossy(&rest).to_string();
        for l in text.lines() {
            self.transcript.record(&self.label, "<-", l);
        }
        self.transcript.record(&self.label, "<-", "(closed)");
        text
    }

    /// Closes the connection (both directions).
    pub fn quit(self) {
        self.transcript.record(&self.label, "->", "(close)");
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The underlying socket, for tests that need to misbehave.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// Has every client ask for `name` at once (all lines written before any
/// reply is read) and asserts exactly one got it: one `ok rename`, the rest
/// `error name-taken`, and `who` lists the name once among all clients.
pub fn assert_one_rename_winner(clients: &mut [LineClient], name: &str) {
    let spellings = vec![name.to_string(); clients.len()];
    assert_one_spelling_wins(clients, &spellings);
}

/// Has client i ask for `spellings[i]` (spellings of one name in other
/// capitals or look-alike letters, or the very same) at once, and asserts exactly one got it:
/// one `ok rename`, the rest `error name-taken`, and `who` lists that
/// winner's spelling and no other spelling of the name.
pub fn assert_one_spelling_wins(clients: &mut [LineClient], spellings: &[String]) {
    use imchat::protocol::name_key;
    for (c, name) in clients.iter_mut().zip(spellings) {
        c.send_raw(format!("rename|{name}\n").as_bytes());
    }
    let won: Vec<&String> = clients
        .iter_mut()
        .zip(spellings)
        .filter_map(|(c, name)| {
            let reply = c.expect("^(ok rename|error name-taken)");
            reply.starts_with("ok").then_some(name)
        })
        .collect();
    assert_eq!(won.len(), 1, "renames to {spellings:?} that won: {won:?}");
    let names = clients[0].who();
    let key = name_key(won[0]);
    let listed: Vec<_> = names.iter().filter(|n| name_key(n) == key).collect();
    assert_eq!(listed, [won[0]], "{names:?}");
    assert_eq!(names.len(), clients.len(), "{names:?}");
}

/// A real `redis-server` for cluster tests and the fan-out bench; killed on
/// drop. Debian's package `redis-server` provides it (ci/deps.sh installs
/// it). It listens on a Unix socket in its own directory, which the
/// cluster's nodes use ([`RedisServer::url`]), so a restart comes back at
/// the same address with no chance that another test took it; and on a
/// TCP port ([`RedisServer::port`], for the fan-out bench), checked to be
/// this very server.
pub struct RedisServer {
    /// The TCP port; a new one after each [`RedisServer::restart`].
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server and waits until it answers.
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        r
    }

    /// The Unix socket's URL, `redis+unix:///PATH`, for `imd --redis`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// Runs one Redis command with `redis-cli` (Debian's redis-tools, which
    /// redis-server needs) and returns its reply as redis-cli prints it:
    /// for tests that set up or look at the cluster's keys directly.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("redis-cli must be installed (Debian: redis-tools)");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Kills the server (SIGKILL): to clients, Redis is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP to its own PID): to clients, Redis is
    /// there but answers nothing, as a Redis that is very slow. Undone by
    /// [`RedisServer::resume`]; a frozen server is still killed on drop.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](RedisServer::pause) server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Starts it again, empty, on the same socket (and a fresh TCP port).
    /// Redis cannot pick its own port, so this picks a free one and tries
    /// again if another process took it before Redis could bind it.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + EXPECT_TIMEOUT;
        loop {
            let port = free_port();
            let socket = self.socket();
            let mut child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--unixsocket")
                .arg(&socket)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (Debian: apt-get install redis-server)");
            if redis_answers(&mut child, port, deadline) {
                self.port = port;
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "redis-server did not start");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (bounded) for a line containing `needle` in a log from
/// [`TestServer::start_binary_logged`], and returns it.
pub fn wait_for_log(log: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

/// A presence TTL for cluster nodes long enough (30 s) that a node slowed
/// down by a loaded machine is never reaped as lost; only the tests of
/// node loss use a shorter one.
pub const NODE_TTL: &str = "30";

/// The flags of an `imd` cluster node on the Redis at `url`
/// ([`RedisServer::url`]): a presence TTL of `ttl` seconds, and no idle
/// timeout.
pub fn node_flags<'a>(url: &'a str, ttl: &'a str) -> [&'a str; 6] {
    ["--redis", url, "--cluster-ttl", ttl, "--idle-timeout", "0"]
}

/// A cluster node on `redis`: the `imd` binary with [`node_flags`] and
/// [`NODE_TTL`].
pub fn node(redis: &RedisServer) -> TestServer {
    node_with(redis, &[], &[])
}

/// [`node`] with `extra` flags after the cluster's, and `env` as in
/// [`TestServer::start_binary_env`].
pub fn node_with(redis: &RedisServer, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
    let url = redis.url();
    let mut args = node_flags(&url, NODE_TTL).to_vec();
    args.extend_from_slice(extra);
    TestServer::start_binary_env(&args, env)
}

/// A port that was free a moment ago. Only for servers that cannot pick
/// their own (Redis), and only with a check that the server listening
/// there is the one started.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the redis-server `child` answers on `port`; false if it
/// exited (its port was taken) or another process answers there.
fn redis_answers(child: &mut Child, port: u16, deadline: Instant) -> bool {
    let want = format!("process_id:{}\r\n", child.id());
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut info = Vec::new();
            if s.write_all(b"INFO server\r\n").is_ok() {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    info.extend_from_slice(&buf[..n]);
                    if info.windows(11).any(|w| w == b"process_id:") && info.ends_with(b"\r\n\r\n")
                    {
                        break;
                    }
                }
            }
            let info = String::from_utf8_lossy(&info);
            if info.contains("process_id:") {
                return info.contains(&want);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A real `nats-server` on a port it picks itself, for the fan-out bench's
/// NATS test; killed on drop. Debian's package `nats-server` provides it
/// (ci/deps.sh installs it).
pub struct NatsServer {
    pub port: u16,
    child: Child,
}

impl NatsServer {
    /// Starts nats-server on a random free port (`-p -1`) and reads the
    /// port from its log line `Listening for client connections on
    /// 127.0.0.1:PORT`, which it prints once it accepts clients.
    pub fn start() -> NatsServer {
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let spawn = |program: &str| {
            std::process::Command::new(program)
                .args(["-a", "127.0.0.1", "-p", "-1"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        };
        let mut child = spawn("nats-server")
            .or_else(|_| spawn("/usr/sbin/nats-server"))
            .expect("nats-server must be installed (Debian: apt-get install nats-server)");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let log = BufReader::new(child.stderr.take().unwrap());
        // Reads the log to its end, so nats-server never blocks on it.
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    let port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                    let _ = port_tx.send(port);
                }
            }
        });
        let port: u16 = port_rx
            .recv_timeout(EXPECT_TIMEOUT)
            .ok()
            .flatten()
            .expect("nats-server did not report its port");
        NatsServer { port, child }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
