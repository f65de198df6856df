//! `imc`: the chat client binary. Parses flags, hands over to
//! [`imchat::client::cli::execute`], and turns the outcome into the documented exit
//! status (see `imc --help`).

use std::process::ExitCode;

use clap::Parser;
use imchat::client::cli::{self, Args};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match cli::execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_quiet() {
                eprintln!("imc: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
