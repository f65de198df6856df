//! `imc`, the client binary, against a real server: one-shot commands and
//! their exit codes, `listen`, the REPL from piped input, and the scripts
//! in scripts/. Each test checks both sides: what imc printed and exited
//! with, and what the other users' sockets received (or did not).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{LineClient, RefusedPort, TestServer};

/// How long a background `imc` (or script) may take to finish.
/// (Only matters when something is broken.)
const FINISH: Duration = Duration::from_secs(60);

/// A plain `std::process::Command` for `imc`, set up like
/// [`TestServer::imc`], for processes that run in the background.
pub fn imc_background(server: &TestServer) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("imc"));
    isolate(&mut cmd, server);
    cmd
}

/// Environment for imc and the scripts: this server, a private HOME, no
/// settings from the developer's machine.
fn isolate(cmd: &mut Command, server: &TestServer) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", server.home())
        .env("IMC_HISTORY", server.home().join("history"))
        .env("NO_COLOR", "1")
        .env("IMC_IP", server.addr().ip().to_string())
        .env("IMC_PORT", server.port().to_string())
        .env("IMC", assert_cmd::cargo::cargo_bin("imc"))
        .env("IMD", assert_cmd::cargo::cargo_bin("imd"));
}

/// A script of scripts/, with the same environment.
fn script(server: &TestServer, name: &str) -> Command {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "scripts", name]
        .iter()
        .collect();
    let mut cmd = Command::new(path);
    isolate(&mut cmd, server);
    cmd
}

/// Waits for `child` to exit (failing the test after [`FINISH`]) and
/// returns its status and stdout.
fn finish(child: Child) -> (ExitStatus, String) {
    let (status, out, _) = finish_all(child);
    (status, out)
}

/// [`finish`], also returning stderr (if it was piped).
fn finish_all(mut child: Child) -> (ExitStatus, String, String) {
    let deadline = Instant::now() + FINISH;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not finish within {FINISH:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).unwrap();
    }
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).unwrap();
    }
    (status, out, err)
}

/// `imc --name ear listen ARGS` in the background (stdout and stderr
/// piped), once `alice` has seen it take its name: from then on it hears
/// everything.
fn ear_listening(server: &TestServer, alice: &mut LineClient, args: &[&str]) -> Child {
    let child = imc_background(server)
        .args(["--name", "ear", "listen"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    alice.expect(r"^\*\*\* \S+ is now known as ear$");
    child
}

/// The lines of `out` that are messages (not presence notices).
fn messages(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.starts_with("*** ")).collect()
}

/// `imc whisper bob hi` exits 0, bob gets it, and a third user does not.
#[test]
fn whisper_reaches_only_its_target() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    let mut carol = server.client("carol");
    server
        .imc()
        .args(["--name", "alice", "whisper", "bob", "hi there"])
        .assert()
        .success()
        .stdout("");
    bob.expect(r"^\*alice\* hi there$");
    carol.send("fence");
    carol.expect_none_before(r"hi there", r"^<carol> fence$");
}

/// `--host` takes a host name as well as an address (`localhost` here),
/// `--ip` is its older name, and IMC_HOST beats IMC_IP (still read when
/// IMC_HOST is not set: the other tests here rely on that). An IMC_IP set
/// but blank counts as unset: imc dials 127.0.0.1 instead of refusing an
/// empty host.
#[test]
fn host_takes_a_name_and_ip_is_its_older_name() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    let send = |extra: &[&str], env: &[(&str, &str)], name: &str, text: &str| {
        let mut cmd = server.imc();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(extra)
            .args(["--name", name, "send", text])
            .assert()
            .success();
    };
    send(
        &["--host", "localhost"],
        &[("IMC_IP", "192.0.2.1")],
        "a1",
        "by name",
    );
    bob.expect("^<a1> by name$");
    send(
        &["--ip", "127.0.0.1"],
        &[("IMC_IP", "192.0.2.1")],
        "a2",
        "old flag",
    );
    bob.expect("^<a2> old flag$");
    let env = [("IMC_HOST", "localhost"), ("IMC_IP", "no such host!")];
    send(&[], &env, "a3", "by IMC_HOST");
    bob.expect("^<a3> by IMC_HOST$");
    send(&[], &[("IMC_IP", " ")], "a4", "blank IMC_IP");
    bob.expect("^<a4> blank IMC_IP$");
}

/// A host that is neither an address nor a name, or that carries a port,
/// is a usage error (exit 2) saying what is wrong, before connecting; so
/// is a bad IMC_IP.
#[test]
fn a_bad_host_is_a_usage_error() {
    let server = TestServer::start();
    let refused = |extra: &[&str], env: Option<(&str, &str)>, says: &str| {
        let mut cmd = server.imc();
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.args(extra)
            .args(["send", "never"])
            .assert()
            .code(2)
            .stderr(predicates::str::contains(says));
    };
    refused(
        &["--host", "chat.example.org:8000"],
        None,
        "the port goes in --port",
    );
    refused(
        &["--host", "bad host"],
        None,
        "not an IP address or host name",
    );
    refused(&["--host", ""], None, "empty host");
    refused(&[], Some(("IMC_IP", "no such host!")), "IMC_IP");
    let mut bob = server.client("bob");
    bob.send("fence");
    bob.expect_none_before("never", "^<bob> fence$");
}

/// A whisper to a name nobody has exits 1 with the server's reason.
#[test]
fn whisper_to_nobody_is_refused() {
    let server = TestServer::start();
    server
        .imc()
        .args(["whisper", "nobody", "hi"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("(no-such-user)"));
}

/// `imc who --json` is a JSON array of exactly the users online.
#[test]
fn who_json_lists_exactly_who_is_connected() {
    let server = TestServer::start();
    let _alice = server.client("alice");
    let _bob = server.client("bob");
    let out = server.imc().args(["who", "--json"]).assert().success();
    let names: Vec<String> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(names, ["alice", "bob"]);
    server
        .imc()
        .arg("who")
        .assert()
        .success()
        .stdout("alice\nbob\n");
}

/// `imc send` in a loop from several processes at once delivers every
/// message, each confirmed before its process exits.
#[test]
fn concurrent_sends_deliver_every_message() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    let senders: Vec<_> = (0..4)
        .map(|p| {
            let cmds: Vec<_> = (0..5)
                .map(|m| {
                    let mut cmd = server.imc();
                    cmd.args(["send", &format!("p{p} m{m}")]);
                    cmd
                })
                .collect();
            std::thread::spawn(move || {
                for mut cmd in cmds {
                    cmd.assert().success();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut got = BTreeSet::new();
    for _ in 0..20 {
        let line = watch.expect(r"^<\S+> p\d m\d$");
        got.insert(line.split_once("> ").unwrap().1.to_string());
    }
    let want: BTreeSet<String> = (0..4)
        .flat_map(|p| (0..5).map(move |m| format!("p{p} m{m}")))
        .collect();
    assert_eq!(got, want);
}

/// `imc send -` sends each stdin line, skipping empty and whitespace-only
/// ones (which imd would ignore, leaving imc waiting for an echo).
#[test]
fn send_dash_reads_stdin_lines() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    server
        .imc()
        .args(["--name", "log", "send", "-"])
        .write_stdin("one\n\n \t \ntwo | with bar\r\nthree")
        .assert()
        .success();
    watch.expect_next(r"^<log> one$");
    watch.expect_next(r"^<log> two \| with bar$");
    watch.expect_next(r"^<log> three$");
}

/// A text the server would read as a command is refused, not sent: a
/// user online all along sees sly come and go, and nothing else.
#[test]
fn send_refuses_command_lookalikes() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    for lookalike in ["rename|bob", "to|watch|hi"] {
        server
            .imc()
            .args(["--name", "sly", "send", lookalike])
            .assert()
            .code(1)
            .stderr(predicates::str::contains("would be read as a command"));
        watch.expect(r"^\*\*\* \S+ is now known as sly$");
        // sly's leaving is the fence: all it sent came before it.
        watch.expect_none_before(r"bob|\*sly\* hi", r"^\*\*\* sly is offline \(quit\)$");
    }
    assert_eq!(watch.who(), ["watch"]);
}

/// `imc listen --count 3` prints exactly three messages and exits 0.
#[test]
fn listen_count_stops_after_exactly_three() {
    let server = TestServer::start();
    let mut alice = server.client("alice");
    let child = ear_listening(&server, &mut alice, &["--count", "3"]);
    for i in 1..=5 {
        alice.send(&format!("m{i}"));
    }
    let (status, out) = finish(child);
    assert_eq!(status.code(), Some(0), "output: {out}");
    assert_eq!(messages(&out), ["<alice> m1", "<alice> m2", "<alice> m3"]);
}

/// `listen --json` prints one object per event with kind/from/to/text.
#[test]
fn listen_json_prints_one_object_per_event() {
    let server = TestServer::start();
    let mut alice = server.client("alice");
    let child = ear_listening(&server, &mut alice, &["--count", "2", "--json"]);
    alice.send("hello");
    alice.send("to|ear|psst");
    alice.expect("^ok to ear: psst$");
    let (status, out) = finish(child);
    assert!(status.success(), "output: {out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events,
        [
            serde_json::json!({"kind": "public", "from": "alice", "to": null, "text": "hello"}),
            serde_json::json!({"kind": "private", "from": "alice", "to": "ear", "text": "psst"}),
        ]
    );
}

/// `listen --timeout` exits 0 without --count, 4 if the count was not met.
#[test]
fn listen_timeout_exit_codes() {
    let server = TestServer::start();
    server
        .imc()
        .args(["listen", "--timeout", "0.2"])
        .assert()
        .success();
    server
        .imc()
        .args(["listen", "--count", "1", "--timeout", "0.2"])
        .assert()
        .code(4);
}

/// The REPL from piped input renames, talks in public and in private, and
/// the other side receives each.
#[test]
fn repl_from_piped_input() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    let input = "3\nalice\n1\nhello all\nexit\n2\nbob\npsst bob\nexit\n7\n0\n";
    let out = server.imc().write_stdin(input).assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
    bob.expect_next(r"^<alice> hello all$");
    bob.expect_next(r"^\*alice\* psst bob$");
    for want in [
        "ok rename: you are now alice",
        "<alice> hello all",
        "ok to bob: psst bob",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    // Private talk lists who is online (the names, however laid out).
    for name in ["alice", "bob"] {
        assert!(stdout.lines().any(|l| l.trim() == name), "{stdout}");
    }
    // The menu at the start, after each mode, and after the unknown "7".
    assert_eq!(
        stdout.matches("input 1 : public talk").count(),
        5,
        "{stdout}"
    );
}

/// Messages that arrive while the REPL is used are printed too.
#[test]
fn repl_prints_incoming_messages() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    let mut child = imc_background(&server)
        .args(["--name", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
    bob.send("to|alice|are you there?");
    bob.expect("^ok to alice: ");
    // A round trip through the REPL after the whisper: it is printed before.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\nyes\nexit\n0\n").unwrap();
    drop(stdin);
    bob.expect("^<alice> yes$");
    let (status, out) = finish(child);
    assert!(status.success());
    let whisper = out.find("*bob* are you there?").expect(&out);
    let said = out.find("<alice> yes").expect(&out);
    assert!(whisper < said, "{out}");
}

/// A port nobody listens on gives exit code 3.
#[test]
fn stopped_server_exits_3() {
    let nobody = RefusedPort::new();
    let server = TestServer::start();
    for args in [&["who"][..], &["send", "hi"], &["listen"], &[]] {
        server
            .imc()
            .env("IMC_PORT", nobody.port.to_string())
            .args(args)
            .assert()
            .code(3)
            .stderr(predicates::str::contains("cannot connect"));
    }
}

/// A server that shuts down under `imc listen` ends it with exit code 3,
/// after it printed the server's goodbye.
#[test]
fn lost_connection_exits_3() {
    let mut server = TestServer::start();
    let mut alice = server.client("alice");
    let child = ear_listening(&server, &mut alice, &[]);
    server.shutdown();
    let (status, out) = finish(child);
    assert_eq!(status.code(), Some(3), "output: {out}");
    assert!(out.contains("*** bye: "), "{out}");
}

/// A server that accepts but never answers gives exit code 4, in about
/// the time given with --timeout.
#[test]
fn silent_server_times_out_with_4() {
    // The kernel completes the handshake; nobody ever writes a welcome.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = TestServer::start();
    let start = Instant::now();
    server
        .imc()
        .env("IMC_PORT", silent.local_addr().unwrap().port().to_string())
        .args(["--timeout", "0.3", "who"])
        .assert()
        .code(4)
        .stderr(predicates::str::contains("timed out"));
    // Well under imc's default of 10 s: --timeout was applied.
    assert!(start.elapsed() < Duration::from_secs(8));
}

/// `--name` with a taken name exits 1 and does nothing else.
#[test]
fn taken_name_exits_1() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    refused_name_sends_nothing(&server, &mut bob, "bob", "name-taken");
}

/// An invalid `--name` exits 1 with the server's code, and nothing is sent.
#[test]
fn invalid_name_exits_1() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    refused_name_sends_nothing(&server, &mut watch, "bad name", "bad-name");
}

/// `imc --name NAME send ...` when NAME cannot be had: exit 1 with the
/// server's error `code`, and `watch` never gets the message (the imc
/// connection's leaving is the fence).
fn refused_name_sends_nothing(server: &TestServer, watch: &mut LineClient, name: &str, code: &str) {
    server
        .imc()
        .args(["--name", name, "send", "should not arrive"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains(format!("({code})")));
    watch.expect_none_before("should not arrive", r"^\*\*\* \S+ is offline \(quit\)$");
}

/// `imc rename` reports whether a name can be had, and the others see
/// the rename only when it succeeded.
#[test]
fn rename_reports_success_and_refusal() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    server
        .imc()
        .args(["rename", "carol"])
        .assert()
        .success()
        .stdout("you are now carol\n");
    bob.expect(r"^\*\*\* \S+ is now known as carol$");
    bob.expect(r"^\*\*\* carol is offline \(quit\)$");
    server
        .imc()
        .args(["rename", "bad|name"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicates::str::contains("(bad-name)"));
    bob.expect(r"^\*\*\* \S+ is online$");
    bob.expect_none_before("now known as", r"^\*\*\* \S+ is offline \(quit\)$");
}

/// Bad flags are usage errors (2), and `--help` lists the exit codes.
#[test]
fn usage_errors_exit_2_and_help_lists_codes() {
    let server = TestServer::start();
    server.imc().args(["send"]).assert().code(2);
    server
        .imc()
        .args(["--timeout", "soon", "who"])
        .assert()
        .code(2);
    server
        .imc()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicates::str::contains("4  timed out"));
}

/// scripts/notify.sh posts a command's output line by line, then its
/// status, and exits with the command's status.
#[test]
fn notify_script_posts_command_output() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    let child = script(&server, "notify.sh")
        .env("IMC_NAME", "ci")
        .env("NOTIFY_PREFIX", "[build] ")
        .args(["sh", "-c", "echo compiling; echo warning: x >&2; exit 3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, _) = finish(child);
    assert_eq!(status.code(), Some(3));
    watch.expect_next(r"^<ci> \[build\] compiling$");
    watch.expect_next(r"^<ci> \[build\] warning: x$");
    watch.expect_next(r"^<ci> \[build\] sh: finished \(exit 3\)$");
}

/// scripts/wait-for.sh ignores other messages and returns the first
/// matching one from the named user.
#[test]
fn wait_for_script_finds_the_message() {
    let server = TestServer::start();
    let mut alice = server.client("alice");
    let mut bob = server.client("bob");
    let child = script(&server, "wait-for.sh")
        .env("IMC_NAME", "waiter")
        .env("WAIT_TIMEOUT", "15")
        .args(["alice", "^deploy (done|ok)"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    alice.expect(r"^\*\*\* \S+ is now known as waiter$");
    bob.send("deploy done");
    alice.send("deploy started");
    alice.send("deploy done: v2");
    let (status, out) = finish(child);
    assert!(status.success(), "{out}");
    assert_eq!(out, "deploy done: v2\n");
}

/// scripts/wait-for.sh exits 4 when nothing matches in time.
#[test]
fn wait_for_script_times_out() {
    let server = TestServer::start();
    let child = script(&server, "wait-for.sh")
        .env("WAIT_TIMEOUT", "0.3")
        .args(["alice", "never"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, out) = finish(child);
    assert_eq!(status.code(), Some(4), "{out}");
}

/// scripts/demo.sh runs a conversation on its own imd and stops it.
#[test]
fn demo_script_runs_a_conversation() {
    // Only for the environment; the demo starts its own imd.
    let server = TestServer::start();
    let child = script(&server, "demo.sh")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, out) = finish(child);
    assert!(status.success(), "{out}");
    for want in [
        "    <alice> hello everyone",
        "    *** alice is now known as alicia",
        "    <bob> hi alice, welcome",
        "    *bob* psst, lunch at noon?",
        "    <alice> bye all",
        "$ imc who\ncarol\n",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    let addr = out
        .lines()
        .find_map(|l| l.split_once(" listening on ").map(|(_, a)| a.to_string()))
        .expect("demo prints the address");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "imd still running on {addr}"
    );
}

/// A stand-in server on 127.0.0.1:0 for one client: it sends imd's welcome
/// (naming the client `fake`), then `script` runs on the connection. For
/// what a real imd does not do on cue: drop a connection in the middle of a
/// command, or never confirm one. The listener lives as long as the value.
struct FakeServer {
    port: u16,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl FakeServer {
    /// `script` gets the lines the client sent so far through `read`, and
    /// the socket to answer on; the lines read are returned by `finish`.
    fn start(
        script: impl FnOnce(&mut dyn FnMut() -> Option<String>, &mut std::net::TcpStream)
            + Send
            + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .write_all(
                    b"*** welcome, you are fake (commands: who, rename|NAME, to|NAME|MESSAGE)\n",
                )
                .unwrap();
            let mut lines =
                std::io::BufRead::lines(std::io::BufReader::new(stream.try_clone().unwrap()));
            let mut got = Vec::new();
            let mut read = || {
                let line = lines.next()?.ok()?;
                got.push(line.clone());
                Some(line)
            };
            script(&mut read, &mut stream);
            got
        });
        FakeServer {
            port,
            handle: Some(handle),
        }
    }

    /// `server.imc()` (its HOME and clean environment), pointed here.
    fn imc(&self, server: &TestServer) -> assert_cmd::Command {
        let mut cmd = server.imc();
        cmd.env("IMC_PORT", self.port.to_string());
        cmd
    }

    /// Waits for the script to end; returns the lines the client sent.
    fn finish(mut self) -> Vec<String> {
        self.handle.take().unwrap().join().unwrap()
    }
}

/// `imc listen | head -1`: once the reader has gone, imc exits 0, quietly.
#[test]
fn closed_stdout_pipe_exits_0() {
    let server = TestServer::start();
    let mut alice = server.client("alice");
    let mut child = ear_listening(&server, &mut alice, &[]);
    alice.send("one");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first, "<alice> one\n");
    drop(stdout); // the reader goes away, like `head -1`
    alice.send("two");
    let (status, _, err) = finish_all(child);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(err, "", "a closed pipe is a normal way to stop");
}

/// Input imc cannot read (stdin is a directory) is a usage error: exit 2,
/// and nothing is sent.
#[test]
fn unreadable_input_exits_2() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    let dir = std::fs::File::open(server.home()).unwrap();
    let out = imc_background(&server)
        .args(["--name", "reader", "send", "-"])
        .stdin(Stdio::from(dir))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.is_empty(), "says why");
    watch.expect(r"^\*\*\* \S+ is now known as reader$");
    watch.expect_none_before(r"^<reader> ", r"^\*\*\* reader is offline \(quit\)$");
}

/// The connection dropped while `send` waits for its confirmation: exit 3,
/// after the line reached the server.
#[test]
fn connection_lost_during_send_exits_3() {
    let fake = FakeServer::start(|read, _| {
        read(); // the message; then close without confirming it
    });
    let server = TestServer::start();
    fake.imc(&server)
        .args(["send", "are you there"])
        .assert()
        .code(3);
    assert_eq!(fake.finish(), ["are you there"]);
}

/// The REPL (from piped input) whose server goes away exits 3.
#[test]
fn connection_lost_in_the_repl_exits_3() {
    let fake = FakeServer::start(|read, _| {
        while let Some(line) = read() {
            if line == "first words" {
                return; // close without confirming it
            }
        }
    });
    let server = TestServer::start();
    fake.imc(&server)
        .write_stdin("1\nfirst words\nsecond words\nexit\n0\n")
        .assert()
        .code(3);
    let got = fake.finish();
    assert_eq!(
        got.last().map(String::as_str),
        Some("first words"),
        "{got:?}"
    );
}

/// A server that never confirms: `send` exits 4 within its --timeout.
#[test]
fn unconfirmed_send_times_out_with_4() {
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let fake = FakeServer::start(move |read, _| {
        read();
        // Keep the connection open, silent, until the test is done.
        let _ = hold_rx.recv();
    });
    let server = TestServer::start();
    fake.imc(&server)
        .args(["--timeout", "0.5", "send", "hello?"])
        .assert()
        .code(4)
        .stderr(predicates::str::contains("timed out"));
    drop(hold_tx);
    assert_eq!(fake.finish(), ["hello?"]);
}

/// `send -` allows --timeout per line, not for the whole input: a producer
/// slower than the timeout is fine as long as each line is confirmed in
/// time; a line that is never confirmed exits 4.
#[test]
fn send_dash_timeout_is_per_line() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    let mut child = imc_background(&server)
        .args(["--timeout", "0.5", "--name", "slowpoke", "send", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").unwrap();
    watch.expect("^<slowpoke> first$");
    // The producer is slow: more than the whole timeout passes before the
    // next line (this wait is what is being tested, not a synchronisation).
    std::thread::sleep(Duration::from_millis(1200));
    stdin.write_all(b"second\n").unwrap();
    drop(stdin);
    watch.expect_next("^<slowpoke> second$");
    let (status, _) = finish(child);
    assert_eq!(status.code(), Some(0));

    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let fake = FakeServer::start(move |read, stream| {
        let line = read().unwrap();
        writeln!(stream, "<fake> {line}").unwrap(); // confirm the first
        read();
        let _ = hold_rx.recv(); // but never the second
    });
    fake.imc(&server)
        .args(["--timeout", "0.5", "send", "-"])
        .write_stdin("one\ntwo\nthree\n")
        .assert()
        .code(4);
    drop(hold_tx);
    assert_eq!(fake.finish(), ["one", "two"]);
}

/// `listen --json` for every kind imd sends: online, rename (from/to),
/// public, private (to = our name), offline (text = reason) and bye
/// (text = reason), in the order they happened; then exit 3.
#[test]
fn listen_json_covers_every_kind() {
    let mut server = TestServer::start();
    let mut alice = server.client("alice");
    let child = ear_listening(&server, &mut alice, &["--json"]);
    let mut bob = server.raw_client("bob");
    let bob_addr = bob.name.clone();
    bob.send("rename|bob");
    bob.expect("^ok rename: ");
    alice.send("hello");
    alice.send("to|ear|psst");
    alice.expect("^ok to ear: psst$");
    bob.quit();
    alice.expect(r"^\*\*\* bob is offline \(quit\)$");
    server.shutdown();
    let (status, out) = finish(child);
    assert_eq!(status.code(), Some(3), "{out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    use serde_json::json;
    assert_eq!(
        events,
        [
            json!({"kind": "online", "from": bob_addr, "to": null, "text": null}),
            json!({"kind": "rename", "from": bob_addr, "to": "bob", "text": null}),
            json!({"kind": "public", "from": "alice", "to": null, "text": "hello"}),
            json!({"kind": "private", "from": "alice", "to": "ear", "text": "psst"}),
            json!({"kind": "offline", "from": "bob", "to": null, "text": "quit"}),
            json!({"kind": "bye", "from": null, "to": null, "text": "server shutting down"}),
        ]
    );
}

/// `listen --json` for the lines only a cluster sends (`cluster`) and for
/// anything it does not know (`other`, the line as received, made
/// visible).
#[test]
fn listen_json_cluster_and_other_lines() {
    let fake = FakeServer::start(|_, stream| {
        stream
            .write_all(
                b"*** cluster: cluster messages are paused (redis unavailable); local chat continues\n\
                  something new \x1b[2J\n",
            )
            .unwrap();
    });
    let server = TestServer::start();
    let out = fake
        .imc(&server)
        .args(["listen", "--json"])
        .assert()
        .code(3);
    fake.finish();
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    use serde_json::json;
    assert_eq!(
        events,
        [
            json!({"kind": "cluster", "from": null, "to": null,
                   "text": "cluster messages are paused (redis unavailable); local chat continues"}),
            json!({"kind": "other", "from": null, "to": null, "text": "something new ^[[2J"}),
        ]
    );
}

/// `listen --count 1` counts messages only: presence notices that arrive
/// first are printed, not counted, and the one message ends it.
#[test]
fn listen_count_ignores_presence_notices() {
    let server = TestServer::start();
    let mut alice = server.client("alice");
    let child = ear_listening(&server, &mut alice, &["--count", "1"]);
    let carol = server.client("carol"); // online, then renamed
    carol.quit(); // offline
    alice.expect(r"^\*\*\* carol is offline \(quit\)$");
    alice.send("m1");
    alice.send("m2");
    let (status, out) = finish(child);
    assert_eq!(status.code(), Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].ends_with(" is online"), "{out}");
    assert!(lines[1].ends_with(" is now known as carol"), "{out}");
    assert_eq!(lines[2..], ["*** carol is offline (quit)", "<alice> m1"]);
}

/// `imc whisper bob -` whispers each stdin line (blank ones skipped) to
/// bob only.
#[test]
fn whisper_dash_reads_stdin_lines() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    let mut carol = server.client("carol");
    server
        .imc()
        .args(["--name", "ops", "whisper", "bob", "-"])
        .write_stdin("first\n \n\nsecond | with bar\n")
        .assert()
        .success();
    bob.expect_next(r"^\*ops\* first$");
    bob.expect_next(r"^\*ops\* second \| with bar$");
    carol.send("fence");
    carol.expect_none_before(r"^\*ops\*|first|second", "^<carol> fence$");
}

/// scripts/notify.sh without a command posts stdin, one message per line
/// (a last line without newline too, blank lines skipped), and exits 0;
/// if imc cannot connect, it exits with imc's status (3).
#[test]
fn notify_script_posts_stdin() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    let status = script(&server, "notify.sh")
        .env("IMC_NAME", "cron")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"nightly backup\n\n   \nsize 3 GB")?;
            child.wait()
        })
        .unwrap();
    assert_eq!(status.code(), Some(0));
    watch.expect_next("^<cron> nightly backup$");
    watch.expect_next("^<cron> size 3 GB$");
    let nobody = RefusedPort::new();
    let status = script(&server, "notify.sh")
        .env("IMC_PORT", nobody.port.to_string())
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"lost\n")?;
            child.wait()
        })
        .unwrap();
    assert_eq!(status.code(), Some(3));
}

/// scripts/wait-for.sh with a command: a whisper from the named user
/// matches too, the command runs with IMC_FROM and IMC_TEXT set, and the
/// script exits with the command's status.
#[test]
fn wait_for_script_runs_the_command_on_a_whisper() {
    let server = TestServer::start();
    let mut alice = server.client("alice");
    let child = script(&server, "wait-for.sh")
        .env("IMC_NAME", "waiter")
        .env("WAIT_TIMEOUT", "30")
        .args(["alice", "^ship (it|now)"])
        .args([
            "sh",
            "-c",
            r#"echo "from=$IMC_FROM text=$IMC_TEXT"; exit 7"#,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    alice.expect(r"^\*\*\* \S+ is now known as waiter$");
    alice.send("ship later");
    alice.send("to|waiter|ship now, please");
    alice.expect("^ok to waiter: ");
    let (status, out) = finish(child);
    assert_eq!(status.code(), Some(7), "{out}");
    assert_eq!(out, "from=alice text=ship now, please\n");
}

/// scripts/wait-for.sh's other exit codes: 2 for bad usage, 3 when it
/// cannot connect.
#[test]
fn wait_for_script_usage_and_connection_exit_codes() {
    let server = TestServer::start();
    let status = script(&server, "wait-for.sh")
        .arg("alice")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let nobody = RefusedPort::new();
    let status = script(&server, "wait-for.sh")
        .env("IMC_PORT", nobody.port.to_string())
        .args(["alice", "anything"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
}
