//! The integration test binary: one crate, one module per area, so the
//! suite links once (ripgrep's layout). Every test starts its own server on
//! 127.0.0.1:0; see support/ for the harness.

mod bench;
mod churn;
mod cli_docs;
mod cluster;
mod imc;
mod limits;
mod metrics;
mod scenarios;
mod server;
mod service;
mod support;
mod timeouts;
mod tls;
mod tty;
