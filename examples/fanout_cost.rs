//! The server's fan-out path alone, in one thread, with no sockets: a hub
//! with `--users` users whose writers write into `tokio::io::sink()`, and
//! one sender's `--messages` public lines, each pushed to every queue and
//! written by every writer before the next. Nothing depends on timing, so
//! instruction counts under `valgrind --tool=callgrind` repeat exactly run
//! to run (BENCHMARKS.md, "Metrics: what counting costs"): the way to see
//! what a change to the hub, the outbox or the writer costs per delivery
//! on a machine too noisy for wall-clock numbers.
//!
//! ```sh
//! cargo build --release --example fanout_cost
//! valgrind --tool=callgrind target/release/examples/fanout_cost --users 100 --messages 1000
//! ```
//!
//! Uses only the hub's public operations, so the same file builds against
//! older commits for a before/after comparison.

use std::net::SocketAddr;

use bytes::Bytes;
use imchat::server::hub::Hub;
use imchat::server::Config;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let users = arg("--users", 100);
    let messages = arg("--messages", 1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let hub = Hub::new(Config::default(), None);
        let mut online = Vec::new();
        for i in 0..users {
            let addr: SocketAddr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
            let (user, drain) = hub.new_user(addr);
            tokio::spawn(drain.write_to(tokio::io::sink()));
            hub.join(&format!("u{i}"), &user).await;
            online.push(user);
        }
        settle(&hub).await;
        let line = Bytes::from(format!("<u0> {}\n", "x".repeat(95)));
        let mut congested = Vec::new();
        for _ in 0..messages {
            hub.say(line.clone(), &mut congested);
            congested.clear();
            settle(&hub).await;
        }
        println!("{} deliveries", users * messages);
    });
}

/// Lets every writer run until nothing is queued.
async fn settle(hub: &Hub) {
    while hub.budget().used() > 0 {
        tokio::task::yield_now().await;
    }
}
