//! The open-loop pub/sub fan-out benchmark (src/client/bench/fanout/) as a
//! program of its own, for imd, Redis and NATS alike:
//!
//! ```sh
//! cargo run --release --example fanout_load -- --proto redis --addr 127.0.0.1:6379 \
//!     --subscribers 500 --rate 5000 --duration 3 --server-pid "$(pidof redis-server)"
//! ```
//!
//! `imc bench --subscribers` runs the same code against imd;
//! scripts/bench-fanout.sh runs it against all three servers side by side.
//! Exit status: 0 when everything sent arrived in time, 4 when the run
//! stalled (see the report), 3 when it could not connect, 2 for bad
//! arguments.

use std::process::ExitCode;

use clap::Parser;
use imchat::client::bench::fanout::{self, FanoutArgs, Proto};

/// Open-loop pub/sub fan-out load against imd, Redis or NATS.
#[derive(Parser, Debug)]
#[command(name = "fanout_load")]
struct Cli {
    /// Which protocol the server speaks.
    #[arg(long, value_enum)]
    proto: Proto,
    /// Server address [default: 127.0.0.1 and the protocol's usual port:
    /// 8000, 6379 or 4222].
    #[arg(long)]
    addr: Option<String>,
    #[command(flatten)]
    run: FanoutArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let addr = cli
        .addr
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{}", cli.proto.default_port()));
    let report = match fanout::open_loop(&addr, cli.proto, &cli.run).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fanout_load: {addr}: {e}");
            return ExitCode::from(if e.kind() == std::io::ErrorKind::InvalidInput {
                2
            } else {
                3
            });
        }
    };
    if cli.run.json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("fanout_load: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.human());
    }
    if report.stalled {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    }
}
