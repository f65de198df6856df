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

use crate::support::TestServer;

/// How long a background `imc` (or script) may take to finish.
const FINISH: Duration = Duration::from_secs(20);

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
fn finish(mut child: Child) -> (ExitStatus, String) {
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
    (status, out)
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

/// A whisper to a name nobody has exits 1 with the server's reason.
#[test]
fn whisper_to_nobody_is_refused() {
    let server = TestServer::start();
    server
        .imc()
        .args(["whisper", "nobody", "hi"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "no user named 'nobody' is online",
        ));
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

/// `imc send -` sends each stdin line, skipping blank ones.
#[test]
fn send_dash_reads_stdin_lines() {
    let server = TestServer::start();
    let mut watch = server.client("watch");
    server
        .imc()
        .args(["--name", "log", "send", "-"])
        .write_stdin("one\n\ntwo | with bar\r\nthree")
        .assert()
        .success();
    watch.expect_next(r"^<log> one$");
    watch.expect_next(r"^<log> two \| with bar$");
    watch.expect_next(r"^<log> three$");
}

/// A text the server would read as a command is refused, not sent.
#[test]
fn send_refuses_command_lookalikes() {
    let server = TestServer::start();
    server
        .imc()
        .args(["--name", "sly", "send", "rename|bob"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("would be read as a command"));
    let mut watch = server.client("watch");
    assert_eq!(watch.who(), ["watch"]);
}

/// `imc listen --count 3` prints exactly three messages and exits 0.
#[test]
fn listen_count_stops_after_exactly_three() {
    let server = TestServer::start();
    let mut alice = server.client("alice");
    let child = imc_background(&server)
        .args(["--name", "ear", "listen", "--count", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    alice.expect(r"^\*\*\* \S+ is now known as ear$");
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
    let child = imc_background(&server)
        .args(["--name", "ear", "listen", "--count", "2", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    alice.expect(r"^\*\*\* \S+ is now known as ear$");
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
        "input 1 : public talk",
        "ok rename: you are now alice",
        "<alice> hello all",
        "users online:\n  alice\n  bob\n",
        "ok to bob: psst bob",
        "Please input the correct number",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
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
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = TestServer::start();
    for args in [&["who"][..], &["send", "hi"], &["listen"], &[]] {
        server
            .imc()
            .env("IMC_PORT", port.to_string())
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
    let child = imc_background(&server)
        .args(["--name", "ear", "listen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    alice.expect(r"^\*\*\* \S+ is now known as ear$");
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
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// `--name` with a taken name exits 1 and does nothing else.
#[test]
fn taken_name_exits_1() {
    let server = TestServer::start();
    let mut bob = server.client("bob");
    server
        .imc()
        .args(["--name", "bob", "send", "impostor"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("name 'bob' is taken"));
    bob.send("fence");
    bob.expect_none_before("impostor", "^<bob> fence$");
}

/// `imc rename` reports whether a name can be had.
#[test]
fn rename_reports_success_and_refusal() {
    let server = TestServer::start();
    let _bob = server.client("bob");
    server
        .imc()
        .args(["rename", "carol"])
        .assert()
        .success()
        .stdout("you are now carol\n");
    server
        .imc()
        .args(["rename", "bad|name"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("invalid name"));
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
