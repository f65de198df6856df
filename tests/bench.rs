//! `imc bench` in a tiny configuration against imd: it measures, and on a
//! correct server it finds nothing lost, duplicated or corrupted. The
//! open-loop fan-out bench (src/client/bench/fanout/) likewise against imd, a
//! real redis-server and a real nats-server. (Figures are never asserted:
//! tests check behaviour, the bench speed.)

use std::time::Duration;

use imchat::client::bench::fanout::{self, FanoutArgs, FanoutReport, Proto};
use imchat::client::bench::{self, BenchArgs};
use imchat::server::Config;

use crate::support::{test_config, NatsServer, RedisServer, TestServer};

/// A run small enough for a debug build on a busy CI machine. Its time
/// limit is generous (a debug build on two loaded cores can take tens of
/// seconds for what a release build does in one); it only matters when
/// something is broken, and then the report says what was missing.
pub fn tiny() -> BenchArgs {
    BenchArgs {
        clients: 6,
        senders: 3,
        messages: 200,
        size: 64,
        window: Some(8),
        rate: None,
        frozen: 0,
        connections: 0,
        server_pid: None,
        second_port: None,
        json: false,
        bench_timeout: 120.0,
        tls: None,
    }
}

/// Closed loop: every message reaches every client, in order, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_delivers_everything_in_order() {
    let srv = TestServer::start();
    let r = bench::closed_loop(&srv.addr().to_string(), &tiny())
        .await
        .unwrap();
    assert!(!r.stalled, "{}", r.human());
    assert_eq!(r.deliveries, 3 * 200 * 6, "{}", r.human());
    assert_eq!(
        r.lost + r.duplicated + r.out_of_order + r.corrupted + r.disconnected,
        0,
        "{}",
        r.human()
    );
    assert!(r.latency_us_max > 0);
}

/// A frozen client among healthy ones: the frozen one is disconnected (once
/// the kernel's buffers toward it, a few MB, and its queue are full), and
/// the healthy ones get everything. Closed loop, so that a test run on a
/// loaded machine paces itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_out_with_a_frozen_client() {
    // The default 1 MiB queue, and a generous stall bound: the bench's
    // readers share two cores with the whole parallel test run, which can
    // deschedule a healthy one for a second or two; in production the
    // bound is 1 s. The frozen client costs at most this once.
    let srv = TestServer::with_config(Config {
        stall_timeout: Duration::from_secs(3),
        ..test_config()
    });
    let args = BenchArgs {
        window: Some(32),
        messages: 1500,
        size: 4000,
        frozen: 1,
        ..tiny()
    };
    let r = bench::closed_loop(&srv.addr().to_string(), &args)
        .await
        .unwrap();
    assert!(!r.stalled, "{}", r.human());
    assert_eq!(r.deliveries, 3 * 1500 * 6, "{}", r.human());
    assert_eq!(r.lost + r.corrupted + r.disconnected, 0, "{}", r.human());
    assert_eq!(r.frozen_disconnected, 1, "{}", r.human());
}

/// Idle connections: each joins, and each receives a broadcast after the
/// run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_each_receive_the_final_broadcast() {
    let srv = TestServer::start();
    let args = BenchArgs {
        connections: 50,
        ..tiny()
    };
    let r = bench::closed_loop(&srv.addr().to_string(), &args)
        .await
        .unwrap();
    assert!(!r.stalled, "{}", r.human());
    assert_eq!(r.connections_reached, 50, "{}", r.human());
}

/// A fan-out run small enough for a debug build on a busy CI machine: one
/// publisher, 20 subscribers, 200 messages/s for half a second.
fn tiny_fanout() -> FanoutArgs {
    FanoutArgs {
        publishers: 1,
        subscribers: 20,
        rate: 200.0,
        duration: 0.5,
        size: 100,
        drain_timeout: 60.0,
        ..FanoutArgs::default()
    }
}

/// What every tiny fan-out run must show on a correct server: every
/// scheduled message sent and delivered to every subscriber, in order,
/// intact, nobody disconnected; latency measured; the server answered new
/// clients meanwhile. (Never how fast.)
fn assert_complete_fanout(r: &FanoutReport, proto: &str) {
    let args = tiny_fanout();
    let scheduled = (args.rate * args.duration) as u64;
    assert_eq!(r.proto, proto);
    assert!(!r.stalled, "{}", r.human());
    assert_eq!(r.messages_scheduled, scheduled, "{}", r.human());
    assert_eq!(r.messages_sent, scheduled, "{}", r.human());
    assert_eq!(r.deliveries, scheduled * 20, "{}", r.human());
    assert_eq!(r.deliveries_expected, r.deliveries, "{}", r.human());
    assert_eq!(r.delivered_pct, 100.0, "{}", r.human());
    assert_eq!(
        r.lost + r.lost_to_disconnects + r.out_of_order + r.corrupted + r.disconnected,
        0,
        "{}",
        r.human()
    );
    assert_eq!(r.publishers_disconnected, 0, "{}", r.human());
    assert!(r.achieved_publish_per_sec > 0.0, "{}", r.human());
    assert!(r.latency_us_p50 > 0, "{}", r.human());
    assert!(r.latency_us_p50 <= r.latency_us_p99, "{}", r.human());
    assert!(r.latency_us_p99 <= r.latency_us_p999, "{}", r.human());
    assert!(r.latency_us_p999 <= r.latency_us_max, "{}", r.human());
    assert!(r.notes.is_empty(), "{}", r.human());
    // A probe every 200 ms while publishing: each a new client answered.
    assert!(r.probes >= 2, "{}", r.human());
    assert_eq!(r.probes_failed, 0, "{}", r.human());
    assert!(r.probe_ms_max > 0.0, "{}", r.human());
}

/// Open-loop fan-out against imd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_imd_delivers_everything() {
    let srv = TestServer::start();
    let r = fanout::open_loop(&srv.addr().to_string(), Proto::Imchat, &tiny_fanout())
        .await
        .unwrap();
    assert_complete_fanout(&r, "imd");
}

/// The same run against a real redis-server (RESP PUBLISH / SUBSCRIBE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_redis_delivers_everything() {
    let redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", redis.port);
    let r = fanout::open_loop(&addr, Proto::Redis, &tiny_fanout())
        .await
        .unwrap();
    assert_complete_fanout(&r, "redis");
}

/// The same run against a real nats-server (PUB / SUB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_nats_delivers_everything() {
    let nats = NatsServer::start();
    let r = fanout::open_loop(&nats.addr(), Proto::Nats, &tiny_fanout())
        .await
        .unwrap();
    assert_complete_fanout(&r, "nats");
}

/// With --server-pid, server CPU is reported (the binary imd, so the PID
/// is the server's alone). Write system calls are reported only where perf
/// works, so they are not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reports_server_cpu_with_a_pid() {
    let srv = TestServer::start_binary(&["--idle-timeout", "0"]);
    let args = FanoutArgs {
        server_pid: Some(srv.pid()),
        ..tiny_fanout()
    };
    let r = fanout::open_loop(&srv.addr().to_string(), Proto::Imchat, &args)
        .await
        .unwrap();
    assert!(!r.stalled, "{}", r.human());
    assert_eq!(r.delivered_pct, 100.0, "{}", r.human());
    assert!(r.server_cpu_secs.is_some(), "{}", r.human());
    assert!(r.server_cpu_pct.is_some(), "{}", r.human());
    assert!(r.server_cpu_us_per_delivery.is_some(), "{}", r.human());
    if let Some(w) = r.write_syscalls {
        assert!(w > 0, "{}", r.human());
        assert!(r.write_syscalls_per_delivery.is_some(), "{}", r.human());
    }
}

/// `imc bench --subscribers`: the fan-out mode from the command line, with
/// its JSON report; and it refuses the closed-loop flags.
#[test]
fn imc_bench_fanout_mode() {
    let srv = TestServer::start();
    let out = srv
        .imc()
        .timeout(Duration::from_secs(120))
        .args(["bench", "--subscribers", "10", "--rate", "100"])
        .args(["--duration", "0.5", "--drain-timeout", "60", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["proto"], "imd", "{v}");
    assert_eq!(v["size"], 100, "{v}");
    assert_eq!(v["messages_sent"], 50, "{v}");
    assert_eq!(v["deliveries"], 500, "{v}");
    assert_eq!(v["disconnected"], 0, "{v}");
    srv.imc()
        .args([
            "bench",
            "--subscribers",
            "10",
            "--rate",
            "100",
            "--clients",
            "5",
        ])
        .assert()
        .code(2);
    srv.imc()
        .args(["bench", "--subscribers", "10"])
        .assert()
        .code(2);
}
