//! Many clients at once: users joining, renaming and leaving while others
//! chat, and renames racing each other. Each test checks the invariants
//! PROTOCOL.md promises under that load: no ghost in `who`, no message lost
//! or reordered for users who stayed, names unique and `who` agreeing with
//! every rename the server confirmed.
//!
//! The rest of the module checks, end to end, what no other module covers:
//! the presence limit, a reset connection, a last line without its newline,
//! backpressure toward a slow reader, and `imc scenario`'s exit codes.
//!
//! Threads, not sleeps: every client is a blocking [`LineClient`] on its own
//! thread, each step waits for a line the server sent, and every wait is
//! bounded by [`EXPECT_TIMEOUT`], so a broken server fails the test instead
//! of hanging it.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use imchat::server::Config;
use predicates::prelude::*;
use regex::Regex;

use crate::support::{test_config, LineClient, TestServer, EXPECT_TIMEOUT};

/// The users who stay for the whole of [`joiners_and_leavers_leave_no_ghosts_and_lose_no_messages`].
const STEADY: [&str; 3] = ["alice", "bob", "carol"];
/// Numbered public messages each steady user sends.
const STEADY_MESSAGES: u32 = 50;
/// Clients that come, rename, say one line and go.
const CHURNERS: usize = 30;
/// Threads the churners are spread over (so several are online at once).
const CHURN_THREADS: usize = 6;

/// The next line of any kind (presence notices included).
fn any_line(c: &mut LineClient) -> String {
    c.expect("")
}

/// What one steady user saw: each steady sender's numbers in arrival order,
/// and every other line.
struct Seen {
    numbers: HashMap<String, Vec<u32>>,
    other: Vec<String>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            numbers: STEADY.iter().map(|s| (s.to_string(), Vec::new())).collect(),
            other: Vec::new(),
        }
    }

    /// Files one received line; returns the steady (sender, number) it
    /// carried, if any.
    fn file(&mut self, line: String) -> Option<(String, u32)> {
        static NUMBERED: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new(r"^<(alice|bob|carol)> n=(\d+)$").unwrap());
        if let Some(c) = NUMBERED.captures(&line) {
            let (from, n) = (c[1].to_string(), c[2].parse().unwrap());
            self.numbers.get_mut(&from).unwrap().push(n);
            Some((from, n))
        } else {
            self.other.push(line);
            None
        }
    }

    fn complete(&self) -> bool {
        self.numbers
            .values()
            .all(|v| v.len() >= STEADY_MESSAGES as usize)
    }
}

/// One steady user's part: send each numbered message and wait for it to
/// come back (closed loop, so it paces itself), then read until every
/// steady user's messages are in.
fn steady_user(mut c: LineClient) -> (LineClient, Seen) {
    let me = c.label.clone();
    let mut seen = Seen::new();
    for i in 0..STEADY_MESSAGES {
        c.send(&format!("n={i}"));
        loop {
            let line = any_line(&mut c);
            if seen.file(line) == Some((me.clone(), i)) {
                break;
            }
        }
    }
    while !seen.complete() {
        let line = any_line(&mut c);
        seen.file(line);
    }
    (c, seen)
}

/// One churner: connect, rename, say one line, wait for it to come back
/// (so it has been queued for everyone online), and quit.
fn churner(srv: &TestServer, j: usize) {
    let name = format!("churn{j:02}");
    let mut c = srv.raw_client(&name);
    c.send(&format!("rename|{name}"));
    c.expect(&format!("^ok rename: you are now {name}$"));
    c.send(&format!("hello from {name}"));
    c.expect(&format!("^<{name}> hello from {name}$"));
    // A polite quit: no more sending, then read what is left until the
    // server closes. (Closing with unread lines makes the kernel reset the
    // connection, which the others would see as "connection error".)
    c.stream().shutdown(Shutdown::Write).unwrap();
    c.expect_closed();
}

/// Three users chat while 30 others join, rename, speak and quit: `who`
/// ends with exactly the three, and each of them got every steady line, in
/// order, and saw each churner arrive, speak and leave in that order.
#[test]
fn joiners_and_leavers_leave_no_ghosts_and_lose_no_messages() {
    let srv = TestServer::start();
    let steady: Vec<LineClient> = STEADY.iter().map(|n| srv.client(n)).collect();

    let mut results: Vec<(LineClient, Seen)> = std::thread::scope(|s| {
        let handles: Vec<_> = steady
            .into_iter()
            .map(|c| s.spawn(move || steady_user(c)))
            .collect();
        for t in 0..CHURN_THREADS {
            let srv = &srv;
            s.spawn(move || {
                for j in (t..CHURNERS).step_by(CHURN_THREADS) {
                    churner(srv, j);
                }
            });
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Every churner has left (each waited for its own line, then closed);
    // wait until each steady user has been told so, then check what it saw.
    let left = Regex::new(r"^\*\*\* (churn\d+) is offline \(quit\)$").unwrap();
    for (c, seen) in results.iter_mut() {
        let gone = |other: &[String]| {
            other
                .iter()
                .filter(|l| left.is_match(l))
                .collect::<BTreeSet<_>>()
                .len()
        };
        while gone(&seen.other) < CHURNERS {
            let line = any_line(c);
            seen.file(line);
        }
        for (from, got) in &seen.numbers {
            let want: Vec<u32> = (0..STEADY_MESSAGES).collect();
            assert_eq!(got, &want, "{} got {from}'s lines", c.label);
        }
        for j in 0..CHURNERS {
            let name = format!("churn{j:02}");
            let at = |want: &str| {
                seen.other
                    .iter()
                    .position(|l| l == want)
                    .unwrap_or_else(|| panic!("{} never saw {want:?}", c.label))
            };
            let renamed = seen
                .other
                .iter()
                .position(|l| {
                    l.starts_with("*** ") && l.ends_with(&format!(" is now known as {name}"))
                })
                .unwrap_or_else(|| panic!("{} never saw {name} arrive", c.label));
            let spoke = at(&format!("<{name}> hello from {name}"));
            let gone = at(&format!("*** {name} is offline (quit)"));
            assert!(
                renamed < spoke && spoke < gone,
                "{}: {name} arrived, spoke and left out of order",
                c.label
            );
        }
    }
    for (c, _) in results.iter_mut() {
        assert_eq!(c.who(), STEADY, "{}: who after the churn", c.label);
    }
}

/// Clients in [`rename_storm_leaves_unique_names_that_match_who`].
const STORMERS: usize = 12;
/// Rename attempts per client.
const STORM_ROUNDS: usize = 40;
/// The contested names.
const POOL: [&str; 4] = ["red", "green", "blue", "gold"];

/// One client of the storm: alternately grab a contested name and retreat
/// to its own, so contested names are freed and fought over again. Returns
/// the name the server last confirmed (its address name if none) and how
/// many renames succeeded.
fn stormer(mut c: LineClient, j: usize) -> (LineClient, String, usize) {
    let mut held = c.name.clone();
    let mut oks = 0;
    for r in 0..STORM_ROUNDS {
        let want = if r % 2 == 0 {
            POOL[(j + r / 2) % POOL.len()].to_string()
        } else {
            format!("solo{j:02}")
        };
        c.send(&format!("rename|{want}"));
        let reply = c.expect(r"^(ok rename: you are now \S+|error name-taken: .*)$");
        if let Some(name) = reply.strip_prefix("ok rename: you are now ") {
            assert_eq!(name, want, "{}", c.label);
            held = want;
            oks += 1;
        }
    }
    (c, held, oks)
}

/// Twelve clients rename at once among four contested names and their own:
/// `who` has no duplicate, lists exactly the name each client last got
/// `ok rename` for, and agrees with replaying every rename notice in order.
#[test]
fn rename_storm_leaves_unique_names_that_match_who() {
    let srv = TestServer::start();
    let mut watcher = srv.client("watcher");
    let stormers: Vec<LineClient> = (0..STORMERS)
        .map(|j| srv.raw_client(&format!("storm{j:02}")))
        .collect();

    // The clients come back from their threads, so they stay online.
    let finals: Vec<(LineClient, String, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = stormers
            .into_iter()
            .enumerate()
            .map(|(j, c)| s.spawn(move || stormer(c, j)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Every rename was confirmed before `who` is sent, so the watcher has
    // been sent every notice before the reply. Replay them from an empty
    // room (plus the watcher): online adds a name, "known as" moves one.
    let mut room: BTreeSet<String> = ["watcher".to_string()].into();
    let online = Regex::new(r"^\*\*\* (\S+) is online$").unwrap();
    let moved = Regex::new(r"^\*\*\* (\S+) is now known as (\S+)$").unwrap();
    watcher.send("who");
    let mut listed = Vec::new();
    loop {
        let line = any_line(&mut watcher);
        if let Some(c) = online.captures(&line) {
            assert!(room.insert(c[1].to_string()), "{line:?}: already online");
        } else if let Some(c) = moved.captures(&line) {
            assert!(room.remove(&c[1]), "{line:?}: {} was not online", &c[1]);
            assert!(room.insert(c[2].to_string()), "{line:?}: name already held");
        } else if let Some(name) = line.strip_prefix("who ") {
            listed.push(name.to_string());
        } else if line.starts_with("ok who: ") {
            assert_eq!(line, format!("ok who: {} online", listed.len()));
            break;
        }
    }
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "duplicate in who: {listed:?}");
    let mut expected: BTreeSet<String> = finals.iter().map(|(_, n, _)| n.clone()).collect();
    assert_eq!(
        expected.len(),
        STORMERS,
        "two clients hold one name: {:?}",
        finals.iter().map(|(_, n, _)| n).collect::<Vec<_>>()
    );
    expected.insert("watcher".into());
    assert_eq!(unique, expected, "who vs the last ok rename of each client");
    assert_eq!(room, expected, "who vs the replayed rename notices");
    let oks: usize = finals.iter().map(|(_, _, n)| n).sum();
    eprintln!(
        "rename storm: {oks} of {} renames succeeded",
        STORMERS * STORM_ROUNDS
    );
}

/// Sends `who` and returns the names, failing if any line before the reply
/// matches `forbidden` (so "nothing was announced" is checked without
/// sleeping: the reply is the fence).
fn who_without(c: &mut LineClient, forbidden: &str) -> Vec<String> {
    let bad = Regex::new(forbidden).unwrap();
    c.send("who");
    let mut names = Vec::new();
    loop {
        let line = any_line(c);
        assert!(!bad.is_match(&line), "{}: got {line:?}", c.label);
        if let Some(name) = line.strip_prefix("who ") {
            names.push(name.to_string());
        } else if line.starts_with("ok who: ") {
            return names;
        }
    }
}

/// Presence notices at the exact boundary of `--presence-limit` (2 here):
/// with 2 online, a join, a rename and a leave are announced; with 3 online
/// (one over), none is, while `who` stays exact; back at 2, they are again.
#[test]
fn presence_notices_stop_above_the_limit() {
    let srv = TestServer::with_config(Config {
        presence_limit: 2,
        ..test_config()
    });
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob"); // 2 online: announced
    alice.expect(r"^\*\*\* \S+ is now known as bob$");
    bob.send("rename|bobby"); // 2 online: announced
    alice.expect(r"^\*\*\* bob is now known as bobby$");
    let mut carol = srv.client("carol"); // 3 online: silent
    carol.send("rename|caroline"); // 3 online: silent
    carol.expect("^ok rename: you are now caroline$");
    bob.send("rename|bob"); // 3 online: silent
    bob.expect("^ok rename: you are now bob$");
    carol.send("fence");
    alice.expect_none_before(r"^\*\*\* ", "^<caroline> fence$");
    assert_eq!(
        who_without(&mut alice, r"^\*\*\* "),
        ["alice", "bob", "caroline"]
    );
    carol.quit(); // leaving a room of 3: silent
    let deadline = std::time::Instant::now() + EXPECT_TIMEOUT;
    while who_without(&mut alice, r"^\*\*\* ").len() != 2 {
        assert!(std::time::Instant::now() < deadline, "carol never left who");
    }
    bob.send("rename|bobby"); // 2 online again: announced
    assert_eq!(any_line(&mut alice), "*** bob is now known as bobby");
    bob.quit(); // leaving a room of 2: announced
    alice.expect_none_before("carol", r"^\*\*\* bobby is offline \(quit\)$");
}

/// A client whose connection is reset (RST, not a clean close) leaves, and
/// the others are told why: "connection error".
#[test]
fn reset_connection_is_offline_with_connection_error() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let rst = srv.client("rst");
    alice.expect(r"^\*\*\* \S+ is now known as rst$");
    // Linger 0: closing sends RST instead of FIN.
    socket2::SockRef::from(rst.stream())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rst);
    alice.expect(r"^\*\*\* rst is offline \(connection error\)$");
    assert_eq!(alice.who(), ["alice"]);
}

/// Threads of [`send_and_close_at_once_loses_no_last_words`], and clients
/// each one runs, one after another.
const HIT_AND_RUN: (usize, usize) = (20, 10);

/// Clients that connect, send one line and close at once without reading
/// (`printf 'build done\n' | nc`, a cron job), many at a time: their
/// connections are reset because they never read the welcome, so writes to
/// them fail while their line is still in the socket. Every line must
/// still reach the others (the seed's server delivers them all; imd lost a
/// few percent before reading went on past a failed write).
#[test]
fn send_and_close_at_once_loses_no_last_words() {
    let srv = TestServer::start();
    let mut observer = srv.client("observer");
    let (threads, each) = HIT_AND_RUN;
    std::thread::scope(|s| {
        for t in 0..threads {
            let addr = srv.addr();
            s.spawn(move || {
                for i in 0..each {
                    let mut c = TcpStream::connect(addr).unwrap();
                    // Wait until the welcome is there, and leave it unread:
                    // closing then resets the connection.
                    c.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
                    c.peek(&mut [0u8; 1]).unwrap();
                    c.write_all(format!("last words {t} {i}\n").as_bytes())
                        .unwrap();
                }
            });
        }
    });
    let re = Regex::new(r"^<\S+> last words (\d+) (\d+)$").unwrap();
    let mut heard = BTreeSet::new();
    srv.transcript
        .record("observer", "..", "(waiting for every last line)");
    while heard.len() < threads * each {
        let line = observer.expect(r"^<\S+> last words ");
        let caps = re.captures(&line).expect("well-formed");
        heard.insert((caps[1].to_string(), caps[2].to_string()));
    }
}

/// A last line without its newline, sent just before the client closes,
/// still counts; then the sender is offline (quit).
#[test]
fn last_line_without_newline_counts_at_close() {
    let srv = TestServer::start();
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    alice.send_raw(b"first\nparting words");
    alice.stream().shutdown(Shutdown::Write).unwrap();
    bob.expect_next("^<alice> first$");
    bob.expect_next("^<alice> parting words$");
    bob.expect(r"^\*\*\* alice is offline \(quit\)$");
    let rest = alice.expect_closed();
    assert!(rest.ends_with("<alice> parting words\n"), "{rest:?}");
}

/// Lines in the burst of [`slow_reader_is_waited_for_not_cut_off`].
const BURST_LINES: usize = 2000;

/// Backpressure: a reader that keeps reading, but slower than a sender
/// floods (a 4 KiB socket buffer, a 64 KiB queue, an 8 MB burst), slows
/// the sender down instead of being cut off, and gets every line in order.
#[test]
fn slow_reader_is_waited_for_not_cut_off() {
    let srv = TestServer::with_config(Config {
        queue_bytes: 64 * 1024,
        // A loaded test machine can deschedule a healthy reader for longer
        // than the 1 s production default; this test is about waiting
        // for a reader that reads, not about that bound.
        stall_timeout: Duration::from_secs(5),
        ..test_config()
    });
    // The reader: a small receive buffer, so the server's queue toward it
    // is what absorbs the burst, not the kernel.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&srv.addr().into()).unwrap();
    let mut slow = LineClient::from_stream(sock.into(), "slow", srv.transcript.clone());
    slow.send("rename|slow");
    slow.expect("^ok rename: you are now slow$");
    let mut flooder = srv.client("flooder");
    slow.expect(r"^\*\*\* \S+ is now known as flooder$");

    let payload = "p".repeat(4000);
    let burst: String = (0..BURST_LINES)
        .map(|i| format!("{i} {payload}\n"))
        .collect();
    srv.transcript.record(
        "flooder",
        "->",
        &format!("({BURST_LINES} lines of 4000 bytes, not logged)"),
    );
    // Bulk reads bypass the transcript (8 MB of it would bury a failure);
    // each side checks numbering as it goes and logs a summary.
    let check = |stream: TcpStream, who: &str| {
        stream.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
        let mut lines = BufReader::new(stream).lines();
        for i in 0..BURST_LINES {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                other => {
                    let why = format!("({i} lines in order, then {other:?})");
                    srv.transcript.record(who, "<-", &why);
                    panic!("{who}: line {i} never came (cut off as too slow?): {other:?}")
                }
            };
            let want = format!("<flooder> {i} ");
            assert!(
                line.starts_with(&want),
                "{who}: expected {want:?}..., got {:.60?}",
                line
            );
        }
        srv.transcript
            .record(who, "<-", &format!("({BURST_LINES} lines, in order)"));
    };
    std::thread::scope(|s| {
        let mut writer = flooder.stream().try_clone().unwrap();
        let burst = &burst;
        // If the server cuts the flooder off, writing fails; the readers
        // report that with what they got.
        s.spawn(move || writer.write_all(burst.as_bytes()));
        let own = flooder.stream().try_clone().unwrap();
        s.spawn(move || check(own, "flooder"));
        check(slow.stream().try_clone().unwrap(), "slow");
    });
    // Both are still online: nobody was cut off as too slow.
    slow.send("still here");
    flooder.expect(r"^<slow> still here$");
    assert_eq!(flooder.who(), ["flooder", "slow"]);
}

/// `imc scenario`, the runner for anyone: exit 0 when every file passes, 1
/// with the failing step and every transcript when one fails, 2 for a file
/// it cannot parse.
#[test]
fn imc_scenario_exit_codes() {
    use predicates::str::contains;
    let srv = TestServer::start();
    let file = |name: &str, text: &str| {
        let path = srv.home().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let pass = file(
        "pass.chat",
        "a: rename|a1\na <- ^ok rename: you are now a1$\n",
    );
    let fail = file("fail.chat", "b: who\nb <-[200ms] ^nobody says this$\n");
    let bad = file("bad.chat", "b dances\n");
    srv.imc()
        .arg("scenario")
        .arg(&pass)
        .assert()
        .success()
        .stdout(contains("PASS ").and(contains("pass.chat")));
    srv.imc()
        .arg("scenario")
        .args([&pass, &fail])
        .assert()
        .code(1)
        .stdout(
            contains("FAIL ")
                .and(contains("fail.chat:2: b <-[200ms] ^nobody says this$"))
                .and(contains("---- transcript ----"))
                .and(contains("b <- ok who: ")),
        );
    srv.imc()
        .arg("scenario")
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(contains("bad.chat:1: "));
}
