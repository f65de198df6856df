//! `imc bench` in a tiny configuration against imd: it measures, and on a
//! correct server it finds nothing lost, duplicated or corrupted. (Its
//! figures are never asserted: tests check behaviour, the bench speed.)

use std::time::Duration;

use imchat::bench::{self, BenchArgs};
use imchat::server::Config;

use crate::support::{test_config, TestServer};

/// A run small enough for a debug build on a busy CI machine.
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
        bench_timeout: 30.0,
    }
}

/// Closed loop: every message reaches every client, in order, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_delivers_everything_in_order() {
    let srv = TestServer::start();
    let r = bench::run(&srv.addr().to_string(), &tiny()).await.unwrap();
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
    // bound is 250 ms. The frozen client costs at most this once.
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
    let r = bench::run(&srv.addr().to_string(), &args).await.unwrap();
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
    let r = bench::run(&srv.addr().to_string(), &args).await.unwrap();
    assert!(!r.stalled, "{}", r.human());
    assert_eq!(r.connections_reached, 50, "{}", r.human());
}
