//! Many clients at once: users joining, renaming and leaving while others
//! chat, and renames racing each other. Each test checks the invariants
//! PROTOCOL.md promises under that load: no ghost in `who`, no message lost
//! or reordered for users who stayed, names unique and `who` agreeing with
//! every rename the server confirmed.
//!
//! The rest of the module checks, end to end, the protocol rules no other
//! module covers: the presence limit, a reset connection, a last line
//! without its newline, and backpressure toward a slow reader.
//!
//! Threads, not sleeps: every client is a blocking [`LineClient`] on its own
//! thread, each step waits for a line the server sent, and every wait is
//! bounded by [`EXPECT_TIMEOUT`], so a broken server fails the test instead
//! of hanging it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use imchat::server::Config;
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
    c.quit();
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
fn stormer(mut c: LineClient, j: usize) -> (String, usize) {
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
    (held, oks)
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

    let finals: Vec<(String, usize)> = std::thread::scope(|s| {
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
    let mut expected: BTreeSet<String> = finals.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        expected.len(),
        STORMERS,
        "two clients hold one name: {finals:?}"
    );
    expected.insert("watcher".into());
    assert_eq!(unique, expected, "who vs the last ok rename of each client");
    assert_eq!(room, expected, "who vs the replayed rename notices");
    let oks: usize = finals.iter().map(|(_, n)| n).sum();
    eprintln!(
        "rename storm: {oks} of {} renames succeeded",
        STORMERS * STORM_ROUNDS
    );
}
