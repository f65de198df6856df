//! The plain-text scenarios in tests/scenarios/, each its own test against
//! its own imd (so they run in parallel), and the checks that every
//! construct of the format can fail: deliberately wrong expectations, and
//! proxies that make imd misbehave.

use std::path::PathBuf;
use std::time::Duration;

use imchat::client::scenario::{self, Outcome, Scenario, Target};
use imchat::client::tls::TlsConnector;
use imchat::server::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{test_config, TestServer};

/// tests/scenarios/, where the scenario files are.
pub fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

/// The scenario file at `path`, parsed (a parse error fails the test).
pub fn load(path: &std::path::Path) -> Scenario {
    let text = std::fs::read_to_string(path).unwrap();
    Scenario::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `s` against the real imd binary started with the file's `# imd:`
/// flags; `server shuts down` sends it SIGTERM and wants exit status 0.
fn run_on_imd(s: &Scenario) -> Outcome {
    run_on_imd_with(s, &[], None)
}

/// [`run_on_imd`] with `extra` flags for imd after the file's, and the
/// runner connecting over TLS with `tls` (the flags then name a
/// certificate; see `tls::flagged_scenarios_pass_over_tls`).
pub fn run_on_imd_with(s: &Scenario, extra: &[&str], tls: Option<TlsConnector>) -> Outcome {
    let mut args: Vec<&str> = s.imd_args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let mut srv = TestServer::start_binary(&args);
    let target = Target {
        addr: srv.addr().to_string(),
        stop: Some(Box::new(move || {
            let status = srv.terminate();
            status
                .success()
                .then_some(())
                .ok_or_else(|| format!("imd exited with {status}"))
        })),
        started_with_flags: true,
        tls,
    };
    runtime().block_on(scenario::run_on(s, target, Duration::from_secs(5)))
}

fn assert_passes(outcome: Outcome) {
    assert!(
        outcome.passed(),
        "{}\n---- transcript ----\n{}",
        outcome
            .failure
            .or(outcome.skipped.map(|s| format!("skipped: {s}")))
            .unwrap_or_default(),
        outcome.transcript
    );
}

/// Runs scenario text against a server the runner did not start.
async fn run_text(name: &str, text: &str, addr: std::net::SocketAddr) -> Outcome {
    let s = Scenario::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
    scenario::run(&s, &addr.to_string(), Duration::from_secs(5)).await
}

/// Asserts that a run failed, and for a reason that contains `why`.
fn assert_fails(outcome: Outcome, what: &str, why: &str) {
    let failure = outcome
        .failure
        .unwrap_or_else(|| panic!("{what}: passed\n{}", outcome.transcript));
    assert!(
        failure.contains(why),
        "{what}: {failure}\n{}",
        outcome.transcript
    );
}

fn run_file(stem: &str) {
    assert_passes(run_on_imd(&load(
        &scenario_dir().join(format!("{stem}.chat")),
    )));
}

/// One `#[test]` per scenario file, so `cargo test` runs them in parallel,
/// each on its own imd. [`every_scenario_file_is_listed`] fails when a file
/// in tests/scenarios/ is missing here.
macro_rules! scenario_files {
    ($($stem:ident),* $(,)?) => {
        const LISTED: &[&str] = &[$(stringify!($stem)),*];
        $(
            /// This scenario file passes against imd.
            #[test]
            fn $stem() {
                run_file(stringify!($stem));
            }
        )*
    };
}

scenario_files! {
    login_rules,
    commands_are_exact,
    control_characters,
    errors,
    framing_and_safety,
    framing_flood,
    framing_line_endings,
    framing_too_long,
    idle_timeout,
    names_address_and_rules,
    names_ignore_case,
    names_look_alike,
    pipelining,
    portable_empty_line_is_ignored,
    portable_rename_to_own_name,
    portable_whisper_keeps_pipes,
    portable_whisper_to_nobody,
    presence_limit,
    presence_notices,
    rename_race,
    rename_to_own_name,
    server_full,
    shutdown,
    three_users_interleaved,
    too_slow,
    unicode_names,
    v01_connect_and_presence,
    v02_broadcast,
    v03_public_from_address_name,
    v04_offline_notice,
    v05_who,
    v06_rename,
    v07_whisper,
    whisper_pipes_and_self,
    whisper_rules,
    who_rules,
}

/// Every `*.chat` file has its test above: a new file cannot be skipped
/// silently.
#[test]
fn every_scenario_file_is_listed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(scenario_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "chat"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = LISTED.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "add each tests/scenarios/*.chat file to scenario_files! in tests/scenarios.rs"
    );
}

/// A proxy in front of imd that passes each line a client sends through
/// `rewrite` (which may drop it or add lines): a deliberately broken server.
async fn rewriting_proxy(
    upstream: std::net::SocketAddr,
    rewrite: fn(&str) -> Vec<String>,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut lines = BufReader::new(cr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    for l in rewrite(&line) {
                        if sw.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Drops every whisper.
fn drop_whispers(line: &str) -> Vec<String> {
    match line.starts_with("to|") {
        true => vec![],
        false => vec![line.to_string()],
    }
}

/// The whisper scenario fails against a server that drops whispers, and the
/// report names the step and shows who sent what and who saw nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_server_fails_with_a_transcript_that_shows_why() {
    let srv = TestServer::start();
    let proxy = rewriting_proxy(srv.addr(), drop_whispers).await;
    let path = scenario_dir().join("v07_whisper.chat");
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
    let text = "alice: rename|alice\nalice <- ^ok rename\nbob connects\nbob <- welcome\nbob !<-[100ms] secret\nalice -> the secret is out\nalice <- secret\n";
    let outcome = run_text("leak", text, srv.addr()).await;
    let failure = outcome.failure.clone().unwrap_or_default();
    assert_fails(outcome, "leak", "leak:5: bob !<-[100ms] secret");
    assert!(failure.contains("<alice> the secret is out"), "{failure}");
}

/// Every whisper is also said in public: a leak.
fn leak_whispers(line: &str) -> Vec<String> {
    let mut out = vec![line.to_string()];
    if let Some((_, text)) = line.strip_prefix("to|").and_then(|r| r.split_once('|')) {
        out.push(text.to_string());
    }
    out
}

/// three_users_interleaved.chat catches a server that leaks a whisper to a
/// third user (its fence-scoped `!<-` covers the moment of the whisper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_must_not_see_catches_a_leaked_whisper() {
    let srv = TestServer::start();
    let proxy = rewriting_proxy(srv.addr(), leak_whispers).await;
    let path = scenario_dir().join("three_users_interleaved.chat");
    let outcome = scenario::run(&load(&path), &proxy.to_string(), Duration::from_secs(5)).await;
    assert_fails(
        outcome,
        "leaked whisper",
        "alice received \"<carol> are you there?\"",
    );
}

/// Wrong expectations that must fail against a correct imd, each for the
/// reason given: every construct can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_construct_fails_when_its_expectation_is_wrong() {
    let welcome = "a connects\na <- welcome\n";
    let cases: &[(&str, String, &str)] = &[
        (
            "next: the very next line, not a later one",
            format!("{welcome}a: who\na next ^ok who"),
            "the next line \"who ",
        ),
        (
            "exactly N: too few",
            format!("{welcome}a: who\na <- exactly 2 ^who  until ^ok who:"),
            "1 lines matching /^who/ before /^ok who:/, not 2",
        ),
        (
            "exactly N: too many",
            format!(
                "{welcome}b connects\nb <- welcome\na: who\na <- exactly 1 ^who  until ^ok who:"
            ),
            "more than 1 lines matching",
        ),
        (
            "!<- until a fence",
            format!("{welcome}a: secret\na: fence\na !<- secret until fence$"),
            "a received \"<",
        ),
        (
            "the fence must come",
            format!("{welcome}a !<-[200ms] secret until ^never$"),
            "no fence line /^never$/",
        ),
        (
            "closed: the server keeps the connection open",
            format!("{welcome}a closed[200ms]"),
            "did not close the connection within 200ms",
        ),
        (
            "closed with: the last line differs",
            format!("{welcome}b connects\nb <- welcome\nc connects\nc closed with ^\\*\\*\\* bye"),
            "its last line Some(\"error server-full",
        ),
        (
            "$NAME is a client's own address",
            format!("{welcome}b connects\nb <- welcome\na: hi\na <-[200ms] ^<$b> hi$"),
            "no line matching /^<127\\.0\\.0\\.1:",
        ),
        (
            "sends without a newline: the line is not complete",
            format!("{welcome}a sends half\na <-[200ms] half$"),
            "no line matching /half$/",
        ),
        (
            "sends decodes escapes: ESC arrives as ESC, shown ^[",
            format!("{welcome}a sends x\\x1by\\n\na: fence\na !<- ^<\\S+> x\\^\\[y$ until fence$"),
            "a received \"<",
        ),
    ];
    for (what, text, why) in cases {
        let srv = TestServer::with_config(Config {
            max_connections: 2,
            ..test_config()
        });
        assert_fails(run_text(what, text, srv.addr()).await, what, why);
    }
}

/// `parallel` runs each client's steps at the same time: run one after
/// another, a's wait for b's line would time out before b sends it.
/// `repeat` runs its body exactly N times with `$i`; a captured group is
/// sent back later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_repeat_and_captures_work() {
    let srv = TestServer::start();
    let text = "a: rename|a\na <- ^ok\nb: rename|b\nb <- ^ok\nparallel\na <-[2s] ^<b> ping$\nb: ping\nend\nrepeat 3\na: n$i\nend\na: done\nb <- exactly 3 ^<a> n[123]$ until ^<a> done$\na <- ^<a> (?<word>n2)$\nb: $word was it\na <- ^<b> n2 was it$\n";
    assert_passes(run_text("p", text, srv.addr()).await);
}

/// Against a server it did not start, the runner skips (does not fail) a
/// file with `# imd:` flags, one that shuts the server down, and one whose
/// `needs` step fails; `imc scenario` says SKIP and exits 0. Run on imd by
/// the tests, a skip is a failure.
#[test]
fn files_that_do_not_apply_are_skipped() {
    let srv = TestServer::start();
    let file = |name: &str, text: &str| {
        let path = srv.home().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let flags = file("flags.chat", "# imd: --max-line 64\na: hi\n");
    let stop = file("stop.chat", "a connects\nserver shuts down\n");
    let needs = file("needs.chat", "needs a <-[100ms] ^never\na <- ^never\n");
    let out = srv
        .imc()
        .arg("scenario")
        .args([&flags, &stop, &needs])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for (f, why) in [
        ("flags.chat", "needs imd started with '--max-line 64'"),
        ("stop.chat", "needs 'server shuts down'"),
        ("needs.chat", "needs.chat:1: a <-[100ms] ^never"),
    ] {
        assert!(
            stdout.contains(&format!("SKIP {}", srv.home().join(f).display()))
                && stdout.contains(why),
            "{stdout}"
        );
    }
    let outcome = run_on_imd(&Scenario::parse("n", "needs a <-[100ms] ^never\n").unwrap());
    assert!(!outcome.passed() && outcome.skipped.is_some());
}
