//! `imd --metrics`: the real binary, a known conversation, and a scrape of
//! `GET /metrics` whose numbers are checked exactly against what the
//! clients saw.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{TestServer, EXPECT_TIMEOUT};

/// Sends `request` (a raw HTTP request) to the metrics listener and
/// returns the status line and the body.
pub fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(EXPECT_TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .expect("a whole answer, then close");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// One scrape, as `series -> value`, the series written as in the text
/// (`imd_errors_total{code="usage"}`).
pub fn scrape(addr: SocketAddr) -> BTreeMap<String, u64> {
    let (status, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: imd\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("SERIES VALUE");
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a whole number: {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

/// Scrapes until every series in `want` has its value (the writers count
/// a line just after the socket took it, so a client can see a line a
/// moment before it is counted); panics with both sides if that does not
/// happen within [`EXPECT_TIMEOUT`]. Returns the matching scrape.
pub fn scrape_until(addr: SocketAddr, want: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + EXPECT_TIMEOUT;
    loop {
        let got = scrape(addr);
        let wrong: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: want {v}, got {:?}", got.get(*k)))
            .collect();
        if wrong.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never matched:\n{}\nlast scrape: {got:#?}",
            wrong.join("\n")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The series `name{label="value"}` for every value, with these counts
/// (the rest 0).
fn labelled(name: &str, label: &str, all: &[&str], counts: &[(&str, u64)]) -> Vec<(String, u64)> {
    all.iter()
        .map(|v| {
            let n = counts.iter().find(|(k, _)| k == v).map_or(0, |(_, n)| *n);
            (format!("{name}{{{label}=\"{v}\"}}"), n)
        })
        .collect()
}

const REASONS: [&str; 6] = ["quit", "idle", "too_slow", "flood", "error", "shutdown"];
const CODES: [&str; 10] = [
    "name-taken",
    "bad-name",
    "no-such-user",
    "empty-message",
    "usage",
    "too-long",
    "server-full",
    "too-many-connections",
    "name-registered",
    "auth-failed",
];

/// Three users, five public lines, a whisper, two refused commands, an
/// empty line, and one user leaving: every metric is what the
/// conversation makes it, and deliveries and bytes are exactly what the
/// clients read.
#[test]
fn a_known_conversation_scrapes_exactly() {
    let (srv, metrics) = TestServer::start_binary_with_metrics(&["--idle-timeout", "0"]);
    // Nothing yet: every series there, at 0.
    let empty = scrape(metrics);
    assert_eq!(empty.get("imd_connections"), Some(&0), "{empty:#?}");
    assert_eq!(empty.get("imd_deliveries_total"), Some(&0));
    assert!(!empty.contains_key("imd_cluster_up"), "not a cluster node");

    // Each: welcome, `ok rename`; the earlier ones see each later one come
    // online and rename (2 notices each).
    let mut alice = srv.client("alice");
    let mut bob = srv.client("bob");
    let mut carol = srv.client("carol");
    alice.expect(r"^\*\*\* \S+ is now known as carol$");
    bob.expect(r"^\*\*\* \S+ is now known as carol$");
    for i in 0..5 {
        alice.send(&format!("line {i}"));
    }
    for c in [&mut alice, &mut bob, &mut carol] {
        c.expect("^<alice> line 4$");
    }
    bob.send(""); // read, counted, answered by nothing
    bob.send("to|carol|psst");
    bob.expect_next("^ok to carol: psst$");
    carol.expect(r"^\*bob\* psst$");
    alice.send("to|nobody|hi");
    alice.expect_next("^error no-such-user: ");
    alice.send("rename|bob");
    alice.expect_next("^error name-taken: ");
    let carol_read = (carol.lines_read, carol.bytes_read);
    carol.quit();
    alice.expect(r"^\*\*\* carol is offline \(quit\)$");
    bob.expect(r"^\*\*\* carol is offline \(quit\)$");

    // Lines each user read: alice 6 (welcome, ok, 2 notices for bob, 2 for
    // carol) + 5 + 2 errors + carol offline; bob 4 + 5 + ok to + carol
    // offline; carol 2 + 5 + the whisper.
    assert_eq!(
        (alice.lines_read, bob.lines_read, carol_read.0),
        (14, 11, 8)
    );
    let bytes = alice.bytes_read + bob.bytes_read + carol_read.1;
    let mut want: Vec<(String, u64)> = vec![
        ("imd_connections".into(), 2),
        ("imd_users_online".into(), 2),
        // alice 3 + 5 + 2 (a rename each, her lines, the refused two); bob
        // rename, empty line, whisper; carol her rename.
        ("imd_lines_received_total".into(), 12),
        ("imd_deliveries_total".into(), 14 + 11 + 8),
        ("imd_bytes_sent_total".into(), bytes),
        ("imd_slow_consumers_cut_total".into(), 0),
        ("imd_queued_bytes".into(), 0),
        ("imd_failed_logins_total".into(), 0),
        ("imd_rate_limited_total".into(), 0),
    ];
    want.extend(labelled(
        "imd_disconnects_total",
        "reason",
        &REASONS,
        &[("quit", 1)],
    ));
    want.extend(labelled(
        "imd_errors_total",
        "code",
        &CODES,
        &[("no-such-user", 1), ("name-taken", 1)],
    ));
    let want: Vec<(&str, u64)> = want.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let got = scrape_until(metrics, &want);
    assert!(!got.contains_key("imd_cluster_up"), "{got:#?}");
    // Every series the scrape has is one checked here.
    let unchecked: Vec<_> = got
        .keys()
        .filter(|k| !want.iter().any(|(w, _)| w == k))
        .collect();
    assert!(unchecked.is_empty(), "not checked: {unchecked:?}");
}

/// `imd_rate_limited_total` counts each pause of a sender over
/// `--max-lines-per-sec`: at 1 a second (one at once), three lines in one
/// write are the first on the burst, the second on credit (a pause), the
/// third a second later (another).
#[test]
fn rate_limited_counts_each_pause() {
    let (srv, metrics) =
        TestServer::start_binary_with_metrics(&["--idle-timeout", "0", "--max-lines-per-sec", "1"]);
    let mut ear = srv.client("ear");
    let mut flood = srv.raw_client("flood");
    flood.send_raw(b"a\nb\nc\n");
    ear.expect(r"^<\S+> a$");
    ear.expect(r"^<\S+> b$");
    ear.expect(r"^<\S+> c$");
    scrape_until(
        metrics,
        &[
            ("imd_rate_limited_total", 2),
            ("imd_lines_received_total", 4),
        ],
    );
}

/// Only `GET /metrics` (and HEAD) is served: another path is 404, another
/// method 405, and neither carries any metric.
#[test]
fn other_paths_and_methods_are_refused() {
    let (_srv, metrics) = TestServer::start_binary_with_metrics(&[]);
    let (status, body) = http(metrics, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(!body.contains("imd_"), "{body}");
    let (status, _) = http(metrics, "GET /metrics/x HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, body) = http(metrics, "POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(!body.contains("imd_"), "{body}");
    assert_eq!(scrape(metrics).get("imd_connections"), Some(&0));
}

/// A user cut off for not reading counts once as cut and once as a
/// `too_slow` disconnect, and leaves the connection and online gauges.
#[test]
fn a_slow_consumer_cut_is_counted() {
    let (srv, metrics) = TestServer::start_binary_with_metrics(&[
        "--idle-timeout",
        "0",
        "--queue-bytes",
        "65536",
        "--stall-ms",
        "100",
    ]);
    let mut alice = srv.client("alice");
    let _frozen = srv.frozen_client("frozen");
    crate::limits::send_until_cut(&mut alice, "frozen", 10_000);
    scrape_until(
        metrics,
        &[
            ("imd_slow_consumers_cut_total", 1),
            ("imd_disconnects_total{reason=\"too_slow\"}", 1),
            ("imd_disconnects_total{reason=\"quit\"}", 0),
            ("imd_connections", 1),
            ("imd_users_online", 1),
        ],
    );
}
