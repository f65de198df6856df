//! Several imd nodes as one chat (`imd --redis`): real `redis-server`, real
//! `imd` binaries, raw clients on each node.

use std::time::Duration;

use crate::support::{
    assert_one_rename_winner, assert_one_spelling_wins, imd_command, node, node_flags, node_with,
    wait_for_log, RedisServer, RefusedPort, TestServer, NODE_TTL,
};

/// A node with a presence TTL of `ttl` seconds (the tests of node loss;
/// the others use [`node`], with [`NODE_TTL`]).
fn node_with_ttl(redis: &RedisServer, ttl: u32) -> TestServer {
    TestServer::start_binary(&node_flags(&redis.url(), &ttl.to_string()))
}

/// A cluster node's metrics show its link: up, and the PUBLISH commands
/// Redis acknowledged (alice's arrival, her rename, her line: 3); down
/// once Redis is gone and the users were told.
#[test]
fn metrics_show_the_cluster_link() {
    use crate::metrics::scrape_until;
    let mut redis = RedisServer::start();
    let (n1, metrics) = TestServer::start_binary_with_metrics(&node_flags(&redis.url(), NODE_TTL));
    let n2 = node(&redis);
    let mut bob = n2.client("bob");
    let mut alice = n1.client("alice");
    bob.expect(r"is now known as alice$");
    alice.send("hello, other node");
    bob.expect("^<alice> hello, other node$");
    scrape_until(
        metrics,
        &[("imd_cluster_up", 1), ("imd_cluster_published_total", 3)],
    );
    redis.stop();
    alice.expect(r"^\*\*\* cluster: cluster messages are paused");
    scrape_until(metrics, &[("imd_cluster_up", 0)]);
}

/// Across two nodes: presence notices, public messages, whispers (only to
/// their target), `who` listing everyone, and offline notices.
#[test]
fn two_nodes_behave_as_one_server() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let n2 = node(&redis);
    let mut alice = n1.client("alice");
    let mut carol = n1.client("carol");
    let mut bob = n2.raw_client("bob");
    let bob_addr = regex::escape(&bob.name);
    alice.expect(&format!(r"^\*\*\* {bob_addr} is online$"));
    bob.send("rename|bob");
    bob.expect_next("^ok rename: you are now bob$");
    alice.expect(&format!(r"^\*\*\* {bob_addr} is now known as bob$"));

    alice.send("hello from node one");
    bob.expect("^<alice> hello from node one$");
    bob.send("hello from node two");
    alice.expect("^<bob> hello from node two$");
    carol.expect("^<bob> hello from node two$");

    alice.send("to|bob|psst | secret");
    alice.expect_next(r"^ok to bob: psst \| secret$");
    bob.expect(r"^\*alice\* psst \| secret$");
    alice.send("fence");
    carol.expect_none_before("secret", "^<alice> fence$");

    bob.send("to|nobody|hi");
    bob.expect("^error no-such-user: ");
    assert_eq!(bob.who(), vec!["alice", "bob", "carol"]);
    assert_eq!(alice.who(), vec!["alice", "bob", "carol"]);

    bob.quit();
    alice.expect(r"^\*\*\* bob is offline \(quit\)$");
    assert_eq!(carol.who(), vec!["alice", "carol"]);
}

/// Names are unique across the cluster: of concurrent renames to one name
/// from clients on two nodes, exactly one wins, every round.
#[test]
fn concurrent_renames_on_two_nodes_have_one_winner() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let n2 = node(&redis);
    for round in 0..4 {
        let name = format!("prize{round}");
        let mut clients: Vec<_> = (0..5)
            .map(|i| n1.raw_client(&format!("a{i}")))
            .chain((0..5).map(|i| n2.raw_client(&format!("b{i}"))))
            .collect();
        assert_one_rename_winner(&mut clients, &name);
    }
}

/// Names that differ only in case are one name across the cluster: a
/// name held on one node is taken on the other in any capitals, a whisper
/// in other capitals crosses nodes and `ok to` shows the holder's
/// spelling; a holder that respells its name keeps the claim; and of
/// concurrent renames to spellings of one name on two nodes, one wins.
#[test]
fn names_in_other_capitals_are_one_name_across_nodes() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let n2 = node(&redis);
    one_spelling_wins_across_nodes(&n1, &n2, ["prize", "Prize", "PRIZE", "pRIZE", "PriZe"]);

    let mut alice = n1.client("alice");
    let mut bob = n2.client("bob");
    alice.expect(r"is now known as bob$");
    bob.send("rename|ALICE");
    bob.expect_next("^error name-taken: ");
    bob.send("to|ALICE|psst");
    bob.expect_next("^ok to alice: psst$");
    alice.expect(r"^\*bob\* psst$");
    alice.send("rename|Alice");
    alice.expect_next("^ok rename: you are now Alice$");
    bob.expect(r"^\*\*\* alice is now known as Alice$");
    bob.send("rename|alice");
    bob.expect_next("^error name-taken: ");
    bob.send("to|aLiCe|again");
    bob.expect_next("^ok to Alice: again$");
    alice.expect(r"^\*bob\* again$");
    let who = bob.who();
    assert!(
        who.contains(&"Alice".to_string()) && !who.contains(&"alice".to_string()),
        "{who:?}"
    );
}

/// Names that only look alike are one name across the cluster too (the
/// claim is keyed by the name key): of concurrent renames to look-alikes
/// of one name on two nodes one wins; a look-alike of a name held on the
/// other node is taken, and the error names the holder's spelling (looked
/// up in Redis); a whisper to a look-alike crosses nodes and `ok to` shows
/// the holder's spelling.
#[test]
fn look_alike_names_are_one_name_across_nodes() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let n2 = node(&redis);
    // Latin, capitals, Cyrillic р, і and е.
    let cyrillic = ["\u{440}rize", "pr\u{456}ze", "priz\u{435}"];
    one_spelling_wins_across_nodes(
        &n1,
        &n2,
        ["prize", "PRIZE", cyrillic[0], cyrillic[1], cyrillic[2]],
    );

    let mut alice = n1.client("alice");
    let mut bob = n2.client("bob");
    alice.expect(r"is now known as bob$");
    bob.send("rename|\u{430}lice");
    bob.expect_next("^error name-taken: name '\u{430}lice' is taken by alice$");
    bob.send("rename|a1ice");
    bob.expect_next("^error name-taken: name 'a1ice' is taken by alice$");
    bob.send("to|\u{430}l\u{456}ce|psst");
    bob.expect_next("^ok to alice: psst$");
    alice.expect(r"^\*bob\* psst$");
    alice.send("rename|adrnin");
    alice.expect_next("^ok rename: you are now adrnin$");
    bob.expect(r"^\*\*\* alice is now known as adrnin$");
    bob.send("rename|admin");
    bob.expect_next("^error name-taken: name 'admin' is taken by adrnin$");
    bob.send("rename|alice");
    bob.expect_next("^ok rename: you are now alice$");
    let who = bob.who();
    assert!(
        who.contains(&"adrnin".to_string()) && who.contains(&"alice".to_string()),
        "{who:?}"
    );
}

/// Five clients on each node rename at once, those of each node to the
/// five `spellings` of one name: [`assert_one_spelling_wins`].
fn one_spelling_wins_across_nodes(n1: &TestServer, n2: &TestServer, spellings: [&str; 5]) {
    let spellings: Vec<String> = spellings
        .iter()
        .chain(&spellings)
        .map(|s| s.to_string())
        .collect();
    let mut clients: Vec<_> = (0..5)
        .map(|i| n1.raw_client(&format!("a{i}")))
        .chain((0..5).map(|i| n2.raw_client(&format!("b{i}"))))
        .collect();
    assert_one_spelling_wins(&mut clients, &spellings);
}

/// Each user sees each sender's lines in the order sent, across nodes.
#[test]
fn order_is_kept_across_nodes() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let n2 = node(&redis);
    let mut alice = n1.client("alice");
    let mut bob = n2.client("bob");
    alice.expect(r"is now known as bob$");
    let mut burst = String::new();
    for i in 0..2000 {
        burst.push_str(&format!("to|bob|w{i}\nline {i}\n"));
    }
    alice.send_raw(burst.as_bytes());
    for i in 0..2000 {
        assert_eq!(bob.next_line(), format!("*alice* w{i}"));
        assert_eq!(bob.next_line(), format!("<alice> line {i}"));
    }
}

/// A node killed with SIGKILL leaves no ghost: its users leave `who`, the
/// others are told they went offline, and their names become free.
#[test]
fn killed_node_leaves_no_ghosts() {
    let redis = RedisServer::start();
    // TTL 3 s: the survivor reaps within 4 s, well within the expect
    // timeout, and a busy debug build still refreshes its own presence
    // in time (1 s was too short on a loaded machine).
    let n1 = node_with_ttl(&redis, 3);
    let mut n2 = node_with_ttl(&redis, 3);
    let mut alice = n1.client("alice");
    let _bob = n2.client("bob");
    alice.expect(r"is now known as bob$");
    assert_eq!(alice.who(), vec!["alice", "bob"]);
    n2.kill9();
    alice.expect(r"^\*\*\* bob is offline \(node lost\)$");
    assert_eq!(alice.who(), vec!["alice"]);
    let mut bob2 = n1.raw_client("bob2");
    bob2.send("rename|bob");
    bob2.expect_next("^ok rename: you are now bob$");
}

/// Redis stopped while clients chat: each node keeps serving its own users
/// and tells them cluster messages are paused; once Redis is back (empty),
/// the nodes resubscribe, repair presence, and cross-node chat and `who`
/// work again.
#[test]
fn redis_restart_pauses_then_resumes_the_cluster() {
    let mut redis = RedisServer::start();
    let n1 = node(&redis);
    let n2 = node(&redis);
    let mut alice = n1.client("alice");
    let mut carol = n1.client("carol");
    let mut bob = n2.client("bob");
    alice.expect(r"is now known as bob$");

    redis.stop();
    alice.expect(r"^\*\*\* cluster: cluster messages are paused");
    bob.expect(r"^\*\*\* cluster: cluster messages are paused");
    // While paused: lines reach this node's users only, `who` lists this
    // node's users, and a whisper to another node's user is refused.
    alice.send("local still works");
    carol.expect("^<alice> local still works$");
    alice.expect("^<alice> local still works$");
    assert_eq!(alice.who(), vec!["alice", "carol"]);
    assert_eq!(bob.who(), vec!["bob"]);
    alice.send("to|bob|across?");
    alice.expect_next("^error no-such-user: ");
    bob.send("fence on node two");
    bob.expect_none_before("local still works|across", "^<bob> fence on node two$");

    redis.restart();
    alice.expect(r"^\*\*\* cluster: cluster messages resumed$");
    bob.expect(r"^\*\*\* cluster: cluster messages resumed$");
    assert_eq!(alice.who(), vec!["alice", "bob", "carol"]);
    alice.send("across again");
    // What alice said while paused never reaches bob, not even late.
    bob.expect_none_before("local still works", "^<alice> across again$");
    alice.expect_none_before("fence on node two", "^<alice> across again$");
    bob.send("to|carol|welcome back");
    carol.expect_none_before("fence on node two", r"^\*bob\* welcome back$");
}

/// `imd --redis` on `redis`, run to its end: exit status and stderr.
fn start_node_to_end(redis: &RedisServer) -> (Option<i32>, String, Vec<u8>) {
    let out = assert_cmd::Command::from_std(imd_command())
        .args(["--port", "0"])
        .args(node_flags(&redis.url(), NODE_TTL))
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err, out.stdout)
}

/// While nodes of another version are alive (the key schema they wrote
/// is not ours), a new node refuses to join: exit 1, a message that says
/// what to do, and no `listening` line. The running node is untouched.
#[test]
fn a_node_of_another_version_is_refused_while_the_cluster_runs() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let mut alice = n1.client("alice");
    assert_eq!(redis.cli(&["GET", "imchat:schema"]), "3");
    // The running nodes are now "of version 999".
    redis.cli(&["SET", "imchat:schema", "999"]);
    let (code, err, stdout) = start_node_to_end(&redis);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("runs imd nodes of another version (key schema 999; this imd's is 3)")
            && err.contains("stop the running nodes before starting this one"),
        "{err}"
    );
    assert!(stdout.is_empty(), "no 'listening' line when it cannot join");
    // Nodes from before schemas were checked write no schema key.
    redis.cli(&["DEL", "imchat:schema"]);
    let (code, err, _) = start_node_to_end(&redis);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("(key schema 1; this imd's is 3)"), "{err}");
    // Neither refused node left a trace: alice's node is the only member.
    assert_eq!(redis.cli(&["SCARD", "imchat:nodes"]), "1");
    assert_eq!(alice.who(), vec!["alice"]);
}

/// A cluster whose nodes are all dead (no `alive` key) and of an older
/// version: the first new node takes it over. What the dead nodes left,
/// which it could not read or reap, is deleted, so the names they held
/// are free again.
#[test]
fn a_new_version_takes_over_a_dead_cluster_and_frees_its_names() {
    let redis = RedisServer::start();
    // A node of version 1 that was killed: its claim on `alice` (keyed by
    // spelling), its user set, its membership; no schema key, no `alive`.
    redis.cli(&["SET", "imchat:name:alice", "old-node"]);
    redis.cli(&["SADD", "imchat:users:old-node", "alice"]);
    redis.cli(&["SADD", "imchat:nodes", "old-node"]);
    let n1 = node(&redis);
    let mut a = n1.raw_client("a");
    a.send("rename|alice");
    a.expect_next("^ok rename: you are now alice$");
    assert_eq!(a.who(), vec!["alice"]);
    assert_eq!(redis.cli(&["GET", "imchat:schema"]), "3");
    assert_eq!(redis.cli(&["EXISTS", "imchat:users:old-node"]), "0");
    assert_eq!(redis.cli(&["SISMEMBER", "imchat:nodes", "old-node"]), "0");
}

/// A node that lost Redis and comes back to find nodes of another version
/// holding the cluster stays paused (serving its own users, retrying),
/// and joins once they are gone.
#[test]
fn a_node_stays_paused_while_another_version_holds_the_cluster() {
    let redis = RedisServer::start();
    let (n1, log) = TestServer::start_binary_logged(
        &node_flags(&redis.url(), NODE_TTL),
        &[("RUST_LOG", "warn")],
    );
    let mut alice = n1.client("alice");
    // Another version's node is alive and has written its schema...
    redis.cli(&["SET", "imchat:schema", "999"]);
    redis.cli(&["SADD", "imchat:nodes", "other-node"]);
    redis.cli(&["SET", "imchat:alive:other-node", "1", "EX", "300"]);
    // ...when n1's link to Redis drops.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    alice.expect(r"^\*\*\* cluster: cluster messages are paused");
    let refused = wait_for_log(&log, "the cluster now runs imd nodes of another version");
    assert!(
        refused.contains(r#"key schema "999"; this node's is 3"#),
        "{refused}"
    );
    alice.send("still here");
    alice.expect("^<alice> still here$");
    assert_eq!(redis.cli(&["SCARD", "imchat:who:other-node"]), "0");
    // The other version's last node goes: n1 joins and takes over.
    redis.cli(&["DEL", "imchat:alive:other-node"]);
    alice.expect(r"^\*\*\* cluster: cluster messages resumed$");
    assert_eq!(redis.cli(&["GET", "imchat:schema"]), "3");
    assert_eq!(redis.cli(&["EXISTS", "imchat:name:alice"]), "1");
}

/// Redis unreachable at start: a clear error and a non-zero exit.
#[test]
fn unreachable_redis_at_start_is_an_error() {
    let nobody = RefusedPort::new();
    let out = assert_cmd::Command::from_std(imd_command())
        .args(["--port", "0", "--redis"])
        .arg(format!("redis://127.0.0.1:{}", nobody.port))
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach redis at redis://127.0.0.1:"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no 'listening' line when it cannot start"
    );
}

/// The bench's cluster mode: clients spread over two nodes, nothing lost
/// or reordered, and half the deliveries cross nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_across_two_nodes_loses_nothing() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let n2 = node(&redis);
    let args = imchat::client::bench::BenchArgs {
        senders: 2,
        messages: 300,
        second_port: Some(n2.port()),
        ..crate::bench::tiny()
    };
    let r = imchat::client::bench::closed_loop(&n1.addr().to_string(), &args)
        .await
        .unwrap();
    assert!(!r.stalled, "{}", r.human());
    assert_eq!(r.deliveries, 2 * 300 * 6, "{}", r.human());
    assert_eq!(
        r.lost + r.duplicated + r.corrupted + r.disconnected,
        0,
        "{}",
        r.human()
    );
    assert_eq!(r.cross_node_deliveries, 300 * 6, "{}", r.human());
}

/// A node shut down gracefully (SIGTERM) takes its users out of the
/// cluster at once: the others see them go offline, and `who` and the
/// names are updated without waiting for the TTL.
#[test]
fn graceful_node_shutdown_tells_the_other_nodes() {
    let redis = RedisServer::start();
    let n1 = node(&redis);
    let mut n2 = node(&redis);
    let mut alice = n1.client("alice");
    let _bob = n2.client("bob");
    alice.expect(r"is now known as bob$");
    assert!(n2.terminate().success());
    alice.expect(r"^\*\*\* bob is offline \(server shutting down\)$");
    assert_eq!(alice.who(), vec!["alice"]);
    let mut again = n1.raw_client("again");
    again.send("rename|bob");
    again.expect_next("^ok rename: you are now bob$");
}

/// Redis slow on this node's publishes (frozen with SIGSTOP, for at most
/// 1 s: imd gives up on a Redis reply after 2 s): once the publish queue
/// (`--cluster-queue-bytes`, 1 MiB here) is over half full, the node reads
/// no more of alice's flood until Redis catches up, instead of reading on
/// and dropping what does not fit; afterwards bob, on the other node, gets
/// every line in order. Node one runs on one worker thread, so a sender
/// that waited by spinning instead of sleeping would stall the node (and
/// its publisher) for good.
#[test]
fn a_sender_waits_while_redis_is_behind() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::mpsc;
    use std::time::Instant;

    const LINES: usize = 4000;
    const QUEUE: usize = 1024 * 1024;
    let redis = RedisServer::start();
    let n1 = node_with(
        &redis,
        &["--cluster-queue-bytes", &QUEUE.to_string()],
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    let n2 = node_with(&redis, &["--queue-bytes", &(16 * QUEUE).to_string()], &[]);
    let mut bob = n2.client("bob");
    let line = |i: usize| format!("line {i:05} {}", "x".repeat(990));

    // alice: a raw socket, so that one thread can write the flood while
    // another reads her own lines back (each one read back is one the node
    // has read from her and queued for Redis).
    let alice = std::net::TcpStream::connect(n1.addr()).unwrap();
    let mut reader = BufReader::new(alice.try_clone().unwrap());
    let mut writer = alice;
    writer.write_all(b"rename|alice\n").unwrap();
    let mut got = String::new();
    while !got.starts_with("ok rename") {
        got.clear();
        assert!(reader.read_line(&mut got).unwrap() > 0, "node one closed");
    }
    bob.expect(r"is now known as alice$");
    let (echoed_tx, echoed) = mpsc::channel();
    let echo_reader = std::thread::spawn(move || {
        let mut got = String::new();
        let mut n = 0;
        while n < LINES {
            got.clear();
            if reader.read_line(&mut got).unwrap() == 0 {
                break;
            }
            if got.starts_with("<alice> line ") {
                n += 1;
                let _ = echoed_tx.send(n);
            }
        }
        n
    });

    redis.pause();
    let flood = std::thread::spawn(move || {
        let mut all = String::with_capacity(LINES * 1001);
        for i in 0..LINES {
            all.push_str(&line(i));
            all.push('\n');
        }
        writer.write_all(all.as_bytes()).unwrap();
        writer
    });
    // Resume Redis once the node has read the whole flood (it was not held
    // back) or after 1 s (well under imd's 2 s wait for a reply).
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut read_while_paused = 0;
    while read_while_paused < LINES {
        let left = deadline.saturating_duration_since(Instant::now());
        match echoed.recv_timeout(left) {
            Ok(n) => read_while_paused = n,
            Err(_) => break,
        }
    }
    redis.resume();
    assert!(
        read_while_paused < LINES,
        "node one read all {LINES} lines (4 MB) while its 1 MiB publish queue was stuck"
    );
    for i in 0..LINES {
        assert_eq!(bob.next_line(), format!("<alice> {}", line(i)));
    }
    assert_eq!(echo_reader.join().unwrap(), LINES);
    drop(flood.join().unwrap());
}
