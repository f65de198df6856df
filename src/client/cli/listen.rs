//! `imc listen`: print what arrives, as it arrives, one line per event.
//!
//! Scripts and tests use it to wait for something to happen, so how it ends
//! is part of its contract:
//!
//! ```text
//! --count N reached                       exit 0
//! --timeout SECS passed, no --count       exit 0 (listened for a while)
//! --timeout SECS passed, count not reached  exit 4 (what was awaited
//!                                           did not happen)
//! server closed the connection            exit 3 (after printing its bye)
//! stdout closed (| head -1)               exit 0, quietly
//! ```
//!
//! The global `--timeout` limits connecting (and claiming `--name`) only.

use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;

use crate::client::{Client, ClientError, Event};

use super::{connect, output, parse_secs, Args, CliError};

/// Flags of `imc listen`.
#[derive(Parser, Debug, Clone)]
pub struct ListenArgs {
    /// Exit 0 after this many messages (public or private; presence
    /// notices are printed but not counted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds: exit 0, or 4 if --count was given and
    /// not reached.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// One JSON object per line: {"kind","from","to","text"}.
    #[arg(long)]
    pub json: bool,
}

/// Runs `imc listen`.
pub async fn listen(args: &Args, opts: &ListenArgs) -> Result<(), CliError> {
    let mut client = connect(args).await?;
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    if opts.count == Some(0) {
        return Ok(());
    }
    let mut seen = 0u64;
    loop {
        let event = match deadline {
            Some(at) => match tokio::time::timeout_at(at, client.next_event()).await {
                Ok(event) => event?,
                Err(_) if opts.count.is_some() => {
                    return Err(ClientError::Timeout(opts.timeout.unwrap_or_default()).into())
                }
                Err(_) => return Ok(()),
            },
            None => client.next_event().await?,
        };
        let Some(event) = event else {
            return Err(ClientError::closed().into());
        };
        print(&client, &event, opts.json)?;
        if output::is_message(&event) {
            seen += 1;
            if opts.count == Some(seen) {
                return Ok(());
            }
        }
    }
}

/// Prints one event in the chosen format.
fn print(client: &Client, event: &Event, json: bool) -> Result<(), CliError> {
    let line = if json {
        output::json(event, client.name())
    } else {
        output::human(event)
    };
    output::line(&line)?;
    Ok(())
}
