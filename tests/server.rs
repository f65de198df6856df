//! imd over real TCP: every behaviour of issue "imd: the chat server", with
//! several raw clients checking what each side received.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{
    assert_one_rename_winner, assert_one_spelling_wins, test_config, LineClient, TestServer,
    EXPECT_TIMEOUT,
};
use imchat::server::Config;

/// v0.2/v0.4: a public line reaches every online user, the sender included.
#[test]
fn public_message_reaches_everyone_including_sender() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    let mut carol = srv.client("carol");
    alice.send("hello all | with a pipe");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.expect(r"^<alice> hello all \| with a pipe$");
    }
}

/// v0.3: everyone online is told when a user comes online, renames and
/// goes offline; the newcomer learns its address name in the welcome.
#[test]
fn presence_notices_for_join_rename_and_leave() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let bob = srv.raw_client("bob");
    assert!(
        bob.name.starts_with("127.0.0.1:"),
        "default name is the address"
    );
    alice.expect(&format!(r"^\*\*\* {} is online$", regex::escape(&bob.name)));
    let mut bob = bob;
    let old = bob.name.clone();
    bob.send("rename|bob");
    bob.expect("^ok rename: you are now bob$");
    alice.expect(&format!(
        r"^\*\*\* {} is now known as bob$",
        regex::escape(&old)
    ));
    bob.quit();
    alice.expect(r"^\*\*\* bob is offline \(quit\)$");
    assert_eq!(alice.who(), vec!["alice"]);
}

/// v0.5: `who` lists every online user, sorted, and ends with a count.
#[test]
fn who_lists_everyone_with_a_count() {
    let srv = TestServer::start();
    let mut carol = srv.client("carol");
    let _alice = srv.client("alice");
    let _bob = srv.client("bob");
    assert_eq!(carol.who(), vec!["alice", "bob", "carol"]);
}

/// v0.6: rename refuses taken and invalid names with a specific error.
#[test]
fn rename_refuses_taken_and_invalid_names() {
    let srv = TestServer::start();
    let _alice = srv.client("alice");
    let mut bob = srv.client("bob");
    bob.send("rename|alice");
    bob.expect_next("^error name-taken: ");
    bob.send("rename|ALICE");
    bob.expect_next("^error name-taken: name 'ALICE' is taken by alice$");
    for bad in ["a b", "a|b", "x\x1b[2J", "127.0.0.1:9", "<root>"] {
        bob.send(&format!("rename|{bad}"));
        bob.expect_next("^error bad-name: ");
    }
    bob.send(&format!("rename|{}", "x".repeat(33)));
    bob.expect_next("^error bad-name: ");
    bob.send(&format!("rename|{}", "x".repeat(32)));
    bob.expect_next(&format!("^ok rename: you are now {}$", "x".repeat(32)));
    bob.send("rename|");
    bob.expect_next("^error usage: ");
    bob.send("rename|bob");
    bob.expect_next("^ok rename: you are now bob$");
    assert_eq!(bob.who(), vec!["alice", "bob"]);
}

/// v0.6: of many concurrent renames to one name, exactly one wins, and no
/// ghost is left behind (the seed let two users share a name).
#[test]
fn concurrent_renames_to_one_name_have_one_winner() {
    let srv = TestServer::start();
    for round in 0..5 {
        let name = format!("prize{round}");
        let mut clients: Vec<_> = (0..8).map(|i| srv.raw_client(&format!("c{i}"))).collect();
        assert_one_rename_winner(&mut clients, &name);
    }
}

/// Of concurrent renames to spellings of one name in other capitals
/// (`prize`, `Prize`, `PRIZE`, ...), exactly one wins: they are one name.
#[test]
fn concurrent_renames_to_one_name_in_other_capitals_have_one_winner() {
    one_of_concurrent_renames_wins(&["prize", "Prize", "PRIZE", "pRIZE", "PriZe", "prizE"]);
}

/// Of concurrent renames to names that only look alike (`admin`,
/// `adrnin`, Cyrillic `аdmin`, `ADRNIN`, ...), exactly one wins: they are
/// one name, and the rename is as atomic as for one spelling.
#[test]
fn concurrent_renames_to_look_alike_names_have_one_winner() {
    let cyrillic = ["\u{430}dmin", "\u{430}drn\u{456}n"];
    one_of_concurrent_renames_wins(&[
        "admin",
        "adrnin",
        cyrillic[0],
        "ADRNIN",
        cyrillic[1],
        "Admin",
    ]);
}

/// On a server of its own, one client per spelling renames to it, all at
/// once: [`assert_one_spelling_wins`].
fn one_of_concurrent_renames_wins(spellings: &[&str]) {
    let srv = TestServer::start();
    let spellings: Vec<String> = spellings.iter().map(|s| s.to_string()).collect();
    let mut clients: Vec<_> = (0..spellings.len())
        .map(|i| srv.raw_client(&format!("c{i}")))
        .collect();
    assert_one_spelling_wins(&mut clients, &spellings);
}

/// v0.7: a whisper reaches only its target; the sender gets a confirmation
/// and a third user sees nothing.
#[test]
fn whisper_reaches_only_its_target() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    let mut carol = srv.client("carol");
    alice.send("to|bob|psst | secret");
    alice.expect_next(r"^ok to bob: psst \| secret$");
    bob.expect(r"^\*alice\* psst \| secret$");
    // Fence: a public line after the whisper; carol must not see the
    // whisper before it.
    alice.send("fence");
    carol.expect_none_before("secret", "^<alice> fence$");
}

/// v0.7: whisper errors are specific, and none of them crash the server
/// (the seed died on `to|nobody|hi` and `to|alice`).
#[test]
fn whisper_errors_are_specific() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let _bob = srv.client("bob");
    alice.send("to|nobody|hi");
    alice.expect_next("^error no-such-user: ");
    alice.send("to|bob");
    alice.expect_next("^error usage: ");
    alice.send("to||hi");
    alice.expect_next("^error usage: ");
    alice.send("to|bob|");
    alice.expect_next("^error empty-message: ");
    alice.send("to|bob|   ");
    alice.expect_next("^error empty-message: ");
    // The unknown name may be quoted in the message, but never raw.
    alice.send("to|\x1b[2J|x");
    let reply = alice.expect_next("^error no-such-user: ");
    assert!(!reply.contains('\x1b'), "{reply:?}");
    assert_eq!(alice.who(), vec!["alice", "bob"]);
}

/// Framing: CRLF, a line split across writes, several lines in one write,
/// and empty lines (ignored, no reply).
#[test]
fn crlf_split_and_joined_lines_are_lines() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    alice.send_raw(b"who\r\n");
    alice.expect_next("^who alice$");
    alice.expect_next("^who bob$");
    alice.expect_next("^ok who: 2 online$");
    alice.send_raw(b"hel");
    alice.stream().flush().unwrap();
    alice.send_raw(b"lo\r\n\n\r\nto|bob|one\nto|bob|two\r\nbye\n");
    bob.expect_next("^<alice> hello$");
    bob.expect_next(r"^\*alice\* one$");
    bob.expect_next(r"^\*alice\* two$");
    bob.expect_next("^<alice> bye$");
    alice.expect_next("^<alice> hello$");
    alice.expect_next("^ok to bob: one$");
    alice.expect_next("^ok to bob: two$");
    alice.expect_next("^<alice> bye$");
}

/// An over-long line gets an error, its rest is discarded, and the next
/// line works; the server keeps serving others.
#[test]
fn overlong_line_is_refused_and_skipped() {
    let srv = TestServer::with_config(Config {
        max_line: 64,
        ..test_config()
    });
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    let long = "x".repeat(1000);
    alice.send_raw(format!("{long}\nafter\n").as_bytes());
    alice.expect_next("^error too-long: ");
    alice.expect_next("^<alice> after$");
    bob.expect_none_before("xxx", "^<alice> after$");
    let exact = "y".repeat(64);
    alice.send(&exact);
    bob.expect(&format!("^<alice> {exact}$"));
}

/// A peer that sends far past the limit without any newline is told why
/// and disconnected; the others are told it left.
#[test]
fn endless_line_disconnects_the_sender() {
    let srv = TestServer::with_config(Config {
        max_line: 64,
        ..test_config()
    });
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    // Far more than the discard limit (64 KiB), no newline. The server may
    // close while we are still writing; that is fine.
    let chunk = vec![b'z'; 16 * 1024];
    for _ in 0..16 {
        if alice
            .stream()
            .try_clone()
            .unwrap()
            .write_all(&chunk)
            .is_err()
        {
            break;
        }
    }
    assert_flood_kick(&mut alice, &mut bob, 65536);
}

/// `alice` was disconnected for sending more than `limit` bytes without a
/// newline: her last lines say the line was too long and why she is cut
/// off, and `bob` is told she left for flooding.
fn assert_flood_kick(alice: &mut LineClient, bob: &mut LineClient, limit: usize) {
    let rest = alice.expect_closed();
    assert!(rest.contains("error too-long"), "{rest:?}");
    assert!(
        rest.contains(&format!(
            "*** bye: more than {limit} bytes without a newline"
        )),
        "{rest:?}"
    );
    bob.expect(r"^\*\*\* alice is offline \(flood\)$");
}

/// Control characters and terminal escapes in messages are made visible;
/// invalid UTF-8 shows as U+FFFD; nobody can forge a server line.
#[test]
fn control_characters_and_bad_utf8_are_made_visible() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    alice.send_raw(b"\x1b[31mred\x07 \r*** bob is offline (quit)\n");
    bob.expect_next(r"^<alice> \^\[\[31mred\^G \^M\*\*\* bob is offline \(quit\)$");
    alice.send_raw(b"bad \xff\xfe utf8\n");
    bob.expect_next("^<alice> bad \u{fffd}\u{fffd} utf8$");
    alice.send_raw("rtl \u{202e}evil\n".as_bytes());
    bob.expect_next(r"^<alice> rtl \\u\{202e\}evil$");
}

/// A client that never reads is cut off once its queue is full, the others
/// are told it was too slow, and they keep receiving every line in order.
#[test]
fn frozen_client_is_cut_off_and_others_keep_receiving() {
    let srv = TestServer::with_config(Config {
        queue_bytes: 64 * 1024,
        max_line: 64 * 1024,
        ..test_config()
    });
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    let frozen = srv.frozen_client("frozen"); // never reads again
    let payload = "p".repeat(32 * 1024);
    let mut sent = 0;
    let mut alice_saw_cut = false;
    let mut bob_saw_cut = false;
    // Bounded: the frozen client's socket buffers plus a 64 KiB queue fill
    // long before this many lines. Bob reads along, in order.
    while sent < 40_000 && !(alice_saw_cut && bob_saw_cut) {
        alice.send(&format!("{sent} {payload}"));
        for (c, saw_cut) in [
            (&mut alice, &mut alice_saw_cut),
            (&mut bob, &mut bob_saw_cut),
        ] {
            let line = c.expect(r"^(<alice> \d+ |\*\*\* frozen is offline \(too slow\)$)");
            if line.starts_with("***") {
                *saw_cut = true;
                c.expect_next(&format!("^<alice> {sent} "));
            } else {
                assert!(
                    line.starts_with(&format!("<alice> {sent} ")),
                    "lost or reordered: {sent}"
                );
            }
        }
        sent += 1;
    }
    assert!(
        alice_saw_cut && bob_saw_cut,
        "frozen client not cut off after {sent} lines"
    );
    eprintln!("frozen client cut off after {sent} lines");
    assert_eq!(bob.who(), vec!["alice", "bob"]);
    drop(frozen);
}

/// The connection limit: one over it gets a one-line "server full" error
/// and is closed; a freed slot can be used again (nothing leaks).
#[test]
fn connection_limit_refuses_one_over_and_frees_slots() {
    let srv = TestServer::with_config(Config {
        max_connections: 2,
        ..test_config()
    });
    let mut alice = srv.client("alice");
    let bob = srv.client("bob");
    let mut third = std::net::TcpStream::connect(srv.addr()).unwrap();
    third
        .set_read_timeout(Some(crate::support::EXPECT_TIMEOUT))
        .unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut third, &mut got).unwrap();
    assert_one_line(&got, "error server-full: ");
    bob.quit();
    alice.expect(r"^\*\*\* bob is offline");
    for i in 0..5 {
        let c = srv.client(&format!("again{i}"));
        c.quit();
        alice.expect(&format!(r"^\*\*\* again{i} is offline"));
    }
    assert_eq!(alice.who(), vec!["alice"]);
}

/// Lines the flooder of [`flood_of_lines_does_not_starve_others`] has
/// sent before another user is served (so the flood is well under way).
const FLOOD_WARMUP: usize = 1000;

/// One user flooding does not starve the others: while the flood is still
/// going (it stops only once carol has been served), carol's `who` and her
/// own line are answered, and every flood line reaches its target, in
/// order. A server that served carol only after the flood would never
/// answer her, and the test fails at her `who`.
#[test]
fn flood_of_lines_does_not_starve_others() {
    let srv = TestServer::start();
    let flooder = srv.client("flooder");
    let bob = srv.client("bob");
    let mut carol = srv.client("carol");
    let served = std::sync::atomic::AtomicBool::new(false);
    let (warm_tx, warm_rx) = std::sync::mpsc::channel();
    srv.transcript
        .record("flooder", "->", "(to|bob|N whispers until carol is served)");
    std::thread::scope(|s| {
        let mut writer = flooder.stream().try_clone().unwrap();
        let served = &served;
        s.spawn(move || {
            let give_up = std::time::Instant::now() + 2 * EXPECT_TIMEOUT;
            let mut i = 0;
            while !served.load(Ordering::SeqCst) && std::time::Instant::now() < give_up {
                let chunk: String = (i..i + 100).map(|n| format!("to|bob|w{n}\n")).collect();
                writer.write_all(chunk.as_bytes()).unwrap();
                i += 100;
            }
            writer.write_all(b"to|bob|end\n").unwrap();
        });
        // Bob gets every whisper in order, the flooder every confirmation.
        let bob_reader = s.spawn(|| {
            read_in_order(
                bob.stream(),
                |n| format!("*flooder* w{n}"),
                "*flooder* end",
                Some(warm_tx),
            )
        });
        let own = s.spawn(|| {
            read_in_order(
                flooder.stream(),
                |n| format!("ok to bob: w{n}"),
                "ok to bob: end",
                None,
            )
        });
        warm_rx
            .recv_timeout(EXPECT_TIMEOUT)
            .expect("the flood never got going");
        assert_eq!(carol.who(), vec!["bob", "carol", "flooder"]);
        carol.send("heard despite the flood");
        carol.expect_next("^<carol> heard despite the flood$");
        served.store(true, Ordering::SeqCst);
        let got = bob_reader.join().unwrap();
        assert_eq!(got, own.join().unwrap());
        srv.transcript
            .record("bob", "<-", &format!("({got} whispers in order, then end)"));
    });
}

/// Reads `stream` until the line `end`, checking that line `n` is
/// `want(n)` (carol's line and presence notices are skipped);
/// signals `warm` after [`FLOOD_WARMUP`] lines. Returns how many came.
fn read_in_order(
    stream: &std::net::TcpStream,
    want: impl Fn(usize) -> String,
    end: &str,
    warm: Option<std::sync::mpsc::Sender<()>>,
) -> usize {
    use std::io::BufRead;
    let stream = stream.try_clone().unwrap();
    stream.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    let mut n = 0;
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.unwrap_or_else(|e| panic!("after {n} lines in order: {e}"));
        if line == end {
            return n;
        }
        if line.starts_with("<carol> ") || line.starts_with("*** ") {
            continue;
        }
        assert_eq!(line, want(n), "lost or reordered");
        n += 1;
        if n == FLOOD_WARMUP {
            if let Some(w) = &warm {
                let _ = w.send(());
            }
        }
    }
    panic!("closed after {n} lines in order")
}

/// Graceful shutdown of the real binary: SIGTERM tells every user, flushes
/// their queues, and the process exits 0.
#[test]
fn sigterm_tells_everyone_and_exits_zero() {
    stops_gracefully_on(libc::SIGTERM);
}

/// Ctrl-C (SIGINT) stops imd as gracefully as SIGTERM.
#[test]
fn sigint_tells_everyone_and_exits_zero() {
    stops_gracefully_on(libc::SIGINT);
}

/// Sends `signal` to a binary imd with two users: it exits 0, and each
/// user's last line is the shutdown bye.
fn stops_gracefully_on(signal: libc::c_int) {
    let mut srv = TestServer::start_binary(&[]);
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    alice.send("last words");
    bob.expect("^<alice> last words$");
    let status = srv.signal(signal);
    assert!(status.success(), "{status:?}");
    for c in [&mut alice, &mut bob] {
        let rest = c.expect_closed();
        assert!(
            rest.ends_with("*** bye: server shutting down\n"),
            "{rest:?}"
        );
    }
}

/// The binary prints `imd listening on IP:PORT` first and serves clients;
/// flags are applied (here the line limit).
#[test]
fn binary_reports_its_address_and_applies_flags() {
    let srv = TestServer::start_binary(&["--max-line", "32", "--idle-timeout", "0"]);
    let mut alice = srv.client("alice");
    alice.send(&"q".repeat(33));
    alice.expect_next("^error too-long: ");
    alice.send(&"q".repeat(32));
    alice.expect_next(&format!("^<alice> {}$", "q".repeat(32)));
}

/// Out of file descriptors, the accept loop backs off and logs instead of
/// spinning (the seed logged ~220,000 lines/s there), and recovers: once
/// descriptors are free, waiting connections are accepted and served.
#[test]
fn accept_errors_back_off_and_recover() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let imd = assert_cmd::cargo::cargo_bin("imd");
    let mut bash = Command::new("bash");
    crate::support::without_settings(&mut bash);
    let mut child = bash
        .arg("-c")
        .arg(r#"ulimit -n 48 && exec "$0" --port 0 --idle-timeout 0"#)
        .arg(&imd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: std::net::SocketAddr = first
        .trim()
        .strip_prefix("imd listening on ")
        .unwrap()
        .parse()
        .unwrap();
    // The log, line by line: "accept failed" is the event that says the
    // descriptor limit was hit (no fixed wait decides it).
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let transcript = crate::support::Transcript::new();
    // More connections than descriptors: the kernel completes every
    // handshake, imd can accept only some of them. Each one is welcomed,
    // or imd logs that it could not accept it.
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for i in 0..60 {
        let s = std::net::TcpStream::connect(addr).unwrap();
        let limit_hit = |log: &Vec<String>| log.iter().any(|l| l.contains("accept failed"));
        let deadline = std::time::Instant::now() + EXPECT_TIMEOUT;
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        loop {
            let mut byte = [0u8; 1];
            if let Ok(1) = (&s).read(&mut byte) {
                served.push(s);
                break;
            }
            log.extend(log_rx.try_iter());
            if limit_hit(&log) {
                waiting.push((i, s));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "connection {i}: neither welcomed nor refused"
            );
        }
    }
    assert!(!waiting.is_empty(), "the descriptor limit was never hit");
    assert!(served.len() >= 20, "only {} served", served.len());
    // Free descriptors: every waiting connection must now be welcomed.
    drop(served);
    for (i, s) in waiting {
        let mut c =
            crate::support::LineClient::from_stream(s, &format!("w{i}"), transcript.clone());
        c.send("who");
        c.expect("^ok who: ");
    }
    let _ = child.kill();
    let _ = child.wait();
    // The log thread ends with the process; collect the rest.
    log.extend(log_rx.iter());
    let failures = log.iter().filter(|l| l.contains("accept failed")).count();
    assert!(failures >= 1, "no accept error logged:\n{}", log.join("\n"));
    assert!(
        failures < 200,
        "{failures} accept errors logged: not backing off"
    );
}

/// `text` is exactly one line, starting with `prefix` (an error code:
/// the message after it is for people and may change).
fn assert_one_line(text: &str, prefix: &str) {
    assert!(
        text.starts_with(prefix) && text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
}

/// DEL, C1 controls, U+2028/2029, bidi isolates and embeddings, and NUL
/// reach others only in visible form, in public lines and in whispers.
#[test]
fn every_kind_of_control_character_is_made_visible() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    let raw =
        "del\u{7f} nul\0 c1\u{85}\u{9b} ls\u{2028} ps\u{2029} lri\u{2066} pdi\u{2069} lre\u{202a}";
    let shown = r"del\^\? nul\^@ c1\\u\{0085\}\\u\{009b\} ls\\u\{2028\} ps\\u\{2029\} lri\\u\{2066\} pdi\\u\{2069\} lre\\u\{202a\}";
    alice.send(raw);
    alice.expect_next(&format!("^<alice> {shown}$"));
    bob.expect_next(&format!("^<alice> {shown}$"));
    alice.send(&format!("to|bob|{raw}"));
    alice.expect_next(&format!("^ok to bob: {shown}$"));
    bob.expect_next(&format!(r"^\*alice\* {shown}$"));
}

/// With a large `--max-line` (8 KiB), the flood limit is 16 × it (128
/// KiB), not the 64 KiB floor: 100 KB without a newline is one over-long
/// line, skipped; 140 KB is a flood, and the sender is disconnected.
#[test]
fn flood_limit_is_sixteen_times_a_large_max_line() {
    let srv = TestServer::with_config(Config {
        max_line: 8192,
        ..test_config()
    });
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    alice.send_raw(&[vec![b'x'; 100_000], b"\nafter a long one\n".to_vec()].concat());
    alice.expect_next("^error too-long: ");
    bob.expect_next("^<alice> after a long one$");
    // Writing may fail once the server has closed; the bye says why.
    let _ = alice.stream().write_all(&vec![b'z'; 140_000]);
    assert_flood_kick(&mut alice, &mut bob, 131072);
}

/// Shutdown flushes a backlog: a user that was not reading while 15 MB
/// queued up toward it (more than the kernel's socket buffers hold, so
/// most of it waits in imd's queue) gets all of it, in order, then the
/// bye, within the shutdown grace.
#[test]
fn shutdown_flushes_a_backlog_before_the_bye() {
    const LINES: usize = 250;
    let mut srv = TestServer::with_config(Config {
        max_line: 64 * 1024,
        queue_bytes: 64 * 1024 * 1024,
        // It reads nothing until the shutdown: wait for it, never cut it.
        stall_timeout: Duration::from_secs(3600),
        ..test_config()
    });
    let mut behind = srv.frozen_client("behind");
    let mut alice = srv.client("alice");
    let payload = "b".repeat(60_000);
    for i in 0..LINES {
        alice.send(&format!("{i} {payload}"));
    }
    // Echoed: queued for everyone, behind included.
    alice.expect(&format!("^<alice> {} ", LINES - 1));
    let rest = std::thread::scope(|s| {
        s.spawn(|| srv.shutdown());
        behind.expect_closed()
    });
    let lines: Vec<&str> = rest.lines().collect();
    let backlog: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("<alice> "))
        .collect();
    assert_eq!(backlog.len(), LINES, "lines flushed before the close");
    for (i, l) in backlog.iter().enumerate() {
        assert!(
            l.starts_with(&format!("<alice> {i} ")),
            "out of order at {i}"
        );
    }
    assert_eq!(lines.last(), Some(&"*** bye: server shutting down"));
}

/// `--max-connections` and `--presence-limit` given as flags are applied.
#[test]
fn limit_flags_are_applied() {
    let srv = TestServer::start_binary(&[
        "--max-connections",
        "2",
        "--presence-limit",
        "1",
        "--idle-timeout",
        "0",
    ]);
    limits_are_two_connections_and_presence_for_one(&srv);
}

/// `--max-lines-per-sec` given as a flag is applied: at 1 a second, a
/// sender's eight lines come out one a second, so another user's line
/// sent after the first of them overtakes the last (seven seconds later).
/// The behaviour itself, on virtual time:
/// `timeouts::a_sender_over_its_line_rate_is_slowed_and_loses_nothing`.
#[test]
fn line_rate_flag_is_applied() {
    let srv = TestServer::start_binary(&["--max-lines-per-sec", "1", "--idle-timeout", "0"]);
    let mut alice = srv.client("alice");
    let mut flood = srv.client("flood");
    let mut other = srv.client("other");
    // One write, so that without the rate one read holds all eight and
    // they are broadcast together, before `x` is even sent.
    let lines: String = (1..=8).map(|i| format!("l{i}\n")).collect();
    flood.send_raw(lines.as_bytes());
    alice.expect("^<flood> l1$");
    other.send("x");
    alice.expect_none_before("^<flood> l8$", "^<other> x$");
}

/// The same limits from `IMD_MAX_CONNECTIONS` and `IMD_PRESENCE_LIMIT`.
#[test]
fn limit_variables_are_applied() {
    let srv = TestServer::start_binary_env(
        &[],
        &[
            ("IMD_MAX_CONNECTIONS", "2"),
            ("IMD_PRESENCE_LIMIT", "1"),
            ("IMD_IDLE_TIMEOUT", "0"),
        ],
    );
    limits_are_two_connections_and_presence_for_one(&srv);
}

/// A third connection is refused with `server-full`, and a second user's
/// arrival and rename are not announced (2 online is over a limit of 1).
fn limits_are_two_connections_and_presence_for_one(srv: &TestServer) {
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    bob.send("fence");
    alice.expect_none_before(r"^\*\*\* ", "^<bob> fence$");
    let mut third = std::net::TcpStream::connect(srv.addr()).unwrap();
    third.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut third, &mut got).unwrap();
    assert_one_line(&got, "error server-full: ");
}

/// `--idle-timeout 1` disconnects a silent user after a second.
#[test]
fn idle_timeout_flag_is_applied() {
    let srv = TestServer::start_binary(&["--idle-timeout", "1"]);
    assert_kicked_as_idle_after_one_second(&srv);
}

/// The same from `IMD_IDLE_TIMEOUT`.
#[test]
fn idle_timeout_variable_is_applied() {
    let srv = TestServer::start_binary_env(&[], &[("IMD_IDLE_TIMEOUT", "1")]);
    assert_kicked_as_idle_after_one_second(&srv);
}

fn assert_kicked_as_idle_after_one_second(srv: &TestServer) {
    let mut quiet = srv.raw_client("quiet");
    let rest = quiet.expect_closed();
    assert!(
        rest.ends_with("*** bye: idle for more than 1 s\n"),
        "{rest:?}"
    );
}
