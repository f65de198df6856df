//! The plain-text scenarios in tests/scenarios/, each run against its own
//! in-process imd, and a deliberately broken server that they must catch.

use std::path::PathBuf;
use std::time::Duration;

use imchat::scenario::{self, Scenario};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::TestServer;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "chat"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "scenario files found: {files:?}");
    files
}

fn load(path: &PathBuf) -> Scenario {
    let text = std::fs::read_to_string(path).unwrap();
    Scenario::parse(&path.display().to_string(), &text).unwrap()
}

/// Every scenario file passes against imd (each on a fresh server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_file_passes_against_imd() {
    for path in scenario_files() {
        let srv = TestServer::start();
        let outcome = scenario::run(
            &load(&path),
            &srv.addr().to_string(),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            outcome.passed(),
            "{}\n---- transcript ----\n{}",
            outcome.failure.unwrap(),
            outcome.transcript
        );
    }
}

/// A proxy in front of imd that drops every whisper a client sends: a
/// deliberately broken server.
async fn whisper_dropping_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (cr, mut cw) = client.into_split();
                let (sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let mut sr = sr;
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut lines = BufReader::new(cr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("to|") {
                        continue;
                    }
                    if sw.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The whisper scenario fails against a server that drops whispers, and the
/// report names the step and shows who sent what and who saw nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_server_fails_with_a_transcript_that_shows_why() {
    let srv = TestServer::start();
    let proxy = whisper_dropping_proxy(srv.addr()).await;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/v07_whisper.chat");
    let outcome = scenario::run(&load(&path), &proxy.to_string(), Duration::from_millis(500)).await;
    let failure = outcome
        .failure
        .expect("the broken server must fail the scenario");
    assert!(failure.contains("v07_whisper.chat:"), "{failure}");
    assert!(
        failure.contains("alice: no line matching /^ok to bob: psst, lunch\\?$/"),
        "{failure}"
    );
    assert!(
        outcome.transcript.contains("alice -> to|bob|psst, lunch?"),
        "{}",
        outcome.transcript
    );
    assert!(
        !outcome.transcript.contains("bob <- *alice*"),
        "{}",
        outcome.transcript
    );
}

/// A "must not see" expectation catches a leak: bob sees a line meant to be
/// refused, and the report says which line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_not_see_catches_a_leak() {
    let srv = TestServer::start();
    let s = Scenario::parse(
        "leak",
        "alice: rename|alice\nalice <- ^ok rename\nbob connects\nbob <- welcome\nbob !<-[100ms] secret\nalice -> the secret is out\nalice <- secret\n",
    )
    .unwrap();
    let outcome = scenario::run(&s, &srv.addr().to_string(), Duration::from_secs(5)).await;
    let failure = outcome
        .failure
        .unwrap_or_else(|| panic!("leak not caught:\n{}", outcome.transcript));
    assert!(
        failure.contains("leak:5: bob !<-[100ms] secret"),
        "{failure}"
    );
    assert!(failure.contains("<alice> the secret is out"), "{failure}");
}
