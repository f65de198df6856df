//! `imc`'s command line: flags, subcommands, exit codes, and dispatch.
//!
//! Every command connects with [`Client::connect`], claims `--name` if one
//! was given, and then does its work through the same [`Client`] API:
//!
//! - [`oneshot`]: `send`, `whisper`, `rename`, `who`, for scripts;
//! - [`listen`]: print what arrives, one line (or JSON object) per event;
//! - [`repl`]: the 1/2/3/0 menu for people (the default);
//! - [`output`]: how events look on stdout, and writing them there;
//! - [`password`]: `IMC_PASSWORD`, the no-echo prompt, and where a
//!   password may be sent;
//! - [`input`]: stdin lines read on a plain thread, so a pending read can
//!   never hold up the exit of the process;
//! - [`docs`]: `completions` and `man`, generated from these definitions
//!   (they need no server).
//!
//! Errors end up as a [`CliError`], whose [`CliError::exit_code`] is the
//! documented exit status (see [`EXIT_CODES`]).

pub mod docs;
pub mod input;
pub mod listen;
pub mod oneshot;
pub mod output;
pub mod password;
pub mod repl;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::api::Unsendable;
use crate::client::tls::TlsConnector;
use crate::client::{Client, ClientError};

/// The exit-status table, shown by `imc --help` and kept in step with
/// README.md. Scripts rely on these numbers, so they never change meaning.
pub const EXIT_CODES: &str = "\
Exit status (the same for every command):
  0  success (also when stdout is a closed pipe)
  1  refused by the server (the reason is on stderr), or a message not
     sent because the server would read it as a command; for `scenario`:
     a scenario failed
  2  usage error: bad arguments or unusable input
  3  cannot connect (a server certificate --tls refuses included), or
     the connection was lost
  4  timed out";

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status when the server refused a request.
pub const EXIT_REFUSED: u8 = 1;
/// Exit status for usage errors; clap's own errors use it too.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the server cannot be reached or went away.
pub const EXIT_CONNECTION: u8 = 3;
/// Exit status when something took longer than allowed.
pub const EXIT_TIMEOUT: u8 = 4;

/// imc: the client for imd, for people (a REPL) and for scripts (one-shot
/// commands with reliable exit codes).
///
/// With no command, imc starts the REPL: a menu (1 public
/// talk, 2 private talk, 3 change username, 0 exit) with line editing.
/// Data goes to stdout, diagnostics to stderr.
#[derive(Parser, Debug, Clone)]
#[command(name = "imc", version, after_help = EXIT_CODES)]
pub struct Args {
    /// Server: an IP address (`192.0.2.10`, `::1`) or a host name
    /// (`chat.example.org`, resolved when imc connects, each address tried
    /// in turn). With --tls, the certificate must name it. `--ip` is its
    /// older name; IMC_IP is read when IMC_HOST is not set. [default:
    /// 127.0.0.1]
    #[arg(long, visible_alias = "ip", env = "IMC_HOST", value_name = "HOST", value_parser = parse_host)]
    pub host: Option<String>,
    /// Server port.
    #[arg(long, env = "IMC_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Claim this name right after connecting, before anything else; if it
    /// is taken or invalid, imc says why and exits 1. With IMC_PASSWORD
    /// set, log in as this registered name instead (exit 1 if refused);
    /// without it, the REPL at a terminal asks for the password, and
    /// anything else refuses a registered name (exit 1) saying how to
    /// log in.
    #[arg(long, env = "IMC_NAME")]
    pub name: Option<String>,
    /// Seconds allowed to connect, and in all for a one-shot command (for
    /// `send -` and `whisper -`: for each line). Fractions are allowed.
    #[arg(long, env = "IMC_TIMEOUT", default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Connect with TLS (to an imd started with --tls-cert), checking the
    /// server's certificate against the system's roots (or --ca) and the
    /// name in --host. A certificate that fails the check is a connect
    /// error (exit 3) saying why; there is no way to skip the check.
    #[arg(long, env = "IMC_TLS", value_parser = clap::builder::FalseyValueParser::new())]
    pub tls: bool,
    /// With --tls: trust the CA certificates in this PEM file instead of the
    /// system's roots (for a private or self-signed certificate).
    #[arg(long, env = "IMC_CA", value_name = "FILE", requires = "tls")]
    pub ca: Option<std::path::PathBuf>,
    /// What --tls and --ca trust, loaded once by [`execute`].
    #[arg(skip)]
    pub tls_connector: Option<TlsConnector>,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// The subcommands. Words after a command are joined with spaces, so
/// `imc send build finished` needs no quotes; a message starting with `-`
/// goes after `--`.
#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Send a public message; returns once the server has queued it for
    /// everyone. `-` sends each line of stdin (blank lines are skipped).
    Send {
        /// The message (several words are joined with spaces), or `-` for stdin.
        #[arg(required = true, num_args = 1..)]
        message: Vec<String>,
    },
    /// Send a private message; fails (exit 1) if NAME is not online.
    /// `-` sends each line of stdin.
    Whisper {
        /// Who to send to.
        to: String,
        /// The message (several words are joined with spaces), or `-` for stdin.
        #[arg(required = true, num_args = 1..)]
        message: Vec<String>,
    },
    /// Claim NAME for this connection and report whether that worked: a
    /// quick check that a name is valid and free (a registered name: that
    /// IMC_PASSWORD logs in as it).
    Rename {
        /// The name to claim.
        name: String,
    },
    /// List online users, one per line (imc's own connection is left out).
    Who {
        /// Print a JSON array of names instead.
        #[arg(long)]
        json: bool,
    },
    /// Print messages and notices as they arrive, one line each.
    Listen(listen::ListenArgs),
    /// The interactive menu (also what imc does with no command).
    Repl,
    /// Run scenario files (tests/README.md describes the format) against
    /// the server; exit 0 if none fails (a file that needs what this
    /// server or runner lacks is reported SKIP), 1 if any fails (with
    /// transcripts).
    Scenario {
        /// Scenario files, run one after another.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Default wait for each expectation, in seconds, until a file's own
        /// `timeout` line.
        #[arg(long, default_value = "5", value_parser = parse_secs)]
        expect_timeout: Duration,
    },
    /// Measure fan-out: connect clients, have some send, and report
    /// deliveries/s, latency and anything lost (BENCHMARKS.md).
    ///
    /// Two modes. Closed loop (the default): --clients connect, --senders of
    /// them send --messages each (with --window, --rate, --frozen,
    /// --connections, --second-port). Open-loop pub/sub fan-out, chosen by
    /// --subscribers: --publishers send --rate messages/s each for
    /// --duration seconds to N subscribers that only read, and the report
    /// adds delivered %, disconnects, the achieved publish rate and, with
    /// --server-pid, server CPU per delivery and write system calls per
    /// delivery (perf stat). Example: `imc bench --subscribers 500 --rate
    /// 5000 --duration 3 --server-pid PID`. Exit 4 when a run did not
    /// complete in time.
    Bench(BenchCmd),
    /// Print a completion script for SHELL on stdout (README: "Completions
    /// and man pages"), e.g. `imc completions bash >
    /// ~/.local/share/bash-completion/completions/imc`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print imc's man page (roff) on stdout, e.g. `imc man >
    /// ~/.local/share/man/man1/imc.1`, or read it with `imc man | man -l -`.
    Man,
}

/// `imc bench`'s flags: the closed-loop benchmark's
/// ([`crate::client::bench::BenchArgs`]) and, with `--subscribers`, the open-loop
/// fan-out mode's ([`crate::client::bench::fanout`]), which shares --rate, --size,
/// --server-pid and --json.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchCmd {
    #[command(flatten)]
    pub closed: crate::client::bench::BenchArgs,
    /// Open-loop fan-out mode: this many connections that only read, sent
    /// to by --publishers at --rate messages/s each (required) for
    /// --duration seconds. Not with the closed-loop flags.
    #[arg(
        long,
        requires = "rate",
        conflicts_with_all = ["clients", "senders", "messages", "window", "frozen", "connections", "second_port", "bench_timeout"],
        help_heading = "Open-loop fan-out (--subscribers)"
    )]
    pub subscribers: Option<usize>,
    /// Fan-out: connections that publish, each at --rate [default: 1].
    #[arg(
        long,
        requires = "subscribers",
        help_heading = "Open-loop fan-out (--subscribers)"
    )]
    pub publishers: Option<usize>,
    /// Fan-out: seconds of publishing [default: 3].
    #[arg(
        long,
        requires = "subscribers",
        help_heading = "Open-loop fan-out (--subscribers)"
    )]
    pub duration: Option<f64>,
    /// Fan-out: seconds to wait for stragglers after the last message
    /// [default: 10].
    #[arg(
        long,
        requires = "subscribers",
        help_heading = "Open-loop fan-out (--subscribers)"
    )]
    pub drain_timeout: Option<f64>,
}

impl BenchCmd {
    /// The fan-out run's arguments, when --subscribers chose that mode.
    pub fn fanout(&self) -> Option<crate::client::bench::fanout::FanoutArgs> {
        let subscribers = self.subscribers?;
        let d = crate::client::bench::fanout::FanoutArgs::default();
        Some(crate::client::bench::fanout::FanoutArgs {
            publishers: self.publishers.unwrap_or(d.publishers),
            subscribers,
            rate: self.closed.rate.unwrap_or(d.rate),
            duration: self.duration.unwrap_or(d.duration),
            size: self.closed.size,
            server_pid: self.closed.server_pid,
            json: self.closed.json,
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            ..d
        })
    }
}

/// Where imc connects when neither --host nor IMC_HOST nor IMC_IP says.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// `--host`: an IP address (IPv6 with or without brackets) or a DNS name,
/// without a port (that is `--port`).
fn parse_host(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bare = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if s.is_empty() {
        return Err("empty host".into());
    }
    if s.contains(':') {
        return Err(format!(
            "{s:?} is not an IP address or host name (the port goes in --port)"
        ));
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{s:?} is not an IP address or host name"));
    }
    Ok(s.to_string())
}

impl Args {
    /// The server as `HOST:PORT` (`[V6]:PORT`), the form [`Client::connect`]
    /// dials and the TLS check reads its name from: --host (or IMC_HOST,
    /// or IMC_IP, see [`execute`]), else [`DEFAULT_HOST`].
    pub fn server_addr(&self) -> String {
        let host = self.host.as_deref().unwrap_or(DEFAULT_HOST);
        match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.port).to_string(),
            Err(_) => format!("{host}:{}", self.port),
        }
    }
}

/// Parses a number of seconds (fractions allowed) into a duration.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Everything that can end an `imc` command early. Each maps to one exit
/// status, so `main` stays a one-liner.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the server failed or was refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command line or the input cannot be used.
    #[error("{0}")]
    Usage(String),
    /// Reading stdin or writing stdout failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Checks ran and some failed (`imc scenario`); details are on stdout.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The documented exit status for this error (see [`EXIT_CODES`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(ClientError::Refused { .. }) => EXIT_REFUSED,
            // Documented as a refusal: imc refuses it for the server,
            // which would run it as a command.
            CliError::Client(ClientError::Unsendable(Unsendable::Command(_))) => EXIT_REFUSED,
            CliError::Client(ClientError::Unsendable(_)) => EXIT_USAGE,
            CliError::Client(ClientError::Connect { .. } | ClientError::Lost(_)) => EXIT_CONNECTION,
            CliError::Client(ClientError::Timeout(_)) => EXIT_TIMEOUT,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_REFUSED,
            CliError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
            CliError::Io(_) => EXIT_USAGE,
        }
    }

    /// Whether to say anything: a reader that went away (`imc listen |
    /// head -1`) is a normal way to stop, not something to complain about.
    pub fn is_quiet(&self) -> bool {
        matches!(self, CliError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Runs the command `args` asks for. The binary prints the error (unless
/// [`CliError::is_quiet`]) and exits with [`CliError::exit_code`].
pub async fn execute(mut args: Args) -> Result<(), CliError> {
    // IMC_IP is --host's older variable: read when neither --host nor
    // IMC_HOST is given, and checked the same way.
    if args.host.is_none() {
        if let Some(ip) = std::env::var("IMC_IP")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            args.host = Some(parse_host(&ip).map_err(|e| CliError::Usage(format!("IMC_IP: {e}")))?);
        }
    }
    // A CA file that cannot be used is a usage error, found before
    // connecting, whatever the command.
    if args.tls && args.tls_connector.is_none() {
        args.tls_connector = Some(TlsConnector::new(args.ca.as_deref()).map_err(CliError::Usage)?);
    }
    match args.command.clone().unwrap_or(Cmd::Repl) {
        Cmd::Send { message } => oneshot::send(&args, None, &message).await,
        Cmd::Whisper { to, message } => oneshot::send(&args, Some(&to), &message).await,
        Cmd::Rename { name } => oneshot::rename(&args, &name).await,
        Cmd::Who { json } => oneshot::who(&args, json).await,
        Cmd::Listen(opts) => listen::listen(&args, &opts).await,
        Cmd::Repl => repl::repl(&args).await,
        Cmd::Scenario {
            files,
            expect_timeout,
        } => scenarios(&args, &files, expect_timeout).await,
        Cmd::Bench(opts) => bench(&args, &opts).await,
        Cmd::Completions { shell } => docs::completions(shell),
        Cmd::Man => docs::man(),
    }
}

/// `imc scenario`: runs each file, prints PASS/FAIL per file and, for a
/// failure, the step and every client's transcript.
async fn scenarios(
    args: &Args,
    files: &[std::path::PathBuf],
    expect_timeout: Duration,
) -> Result<(), CliError> {
    use crate::client::scenario::{self, Scenario, Target};
    let addr = args.server_addr();
    let tls = tls_connector(args).map_err(CliError::Usage)?;
    let mut parsed = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", f.display())))?;
        let s = Scenario::parse(&f.display().to_string(), &text)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        parsed.push(s);
    }
    let mut failed = 0;
    for s in &parsed {
        let target = Target {
            tls: tls.clone(),
            ..Target::address(&addr)
        };
        let outcome = scenario::run_on(s, target, expect_timeout).await;
        match (&outcome.failure, &outcome.skipped) {
            (None, None) => println!("PASS {}", s.name),
            (None, Some(why)) => println!("SKIP {}: {why}", s.name),
            (Some(why), _) => {
                failed += 1;
                println!("FAIL {why}");
                println!("---- transcript ----\n{}---- end ----", outcome.transcript);
            }
        }
    }
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} of {} scenarios failed",
            parsed.len()
        )));
    }
    Ok(())
}

/// `imc bench`: runs the benchmark and prints the report; exit 4 if it
/// hit its time limit before everything arrived.
async fn bench(args: &Args, cmd: &BenchCmd) -> Result<(), CliError> {
    let addr = args.server_addr();
    let tls = tls_connector(args).map_err(CliError::Usage)?;
    if let Some(fan) = cmd.fanout() {
        return bench_fanout(
            &addr,
            &crate::client::bench::fanout::FanoutArgs { tls, ..fan },
        )
        .await;
    }
    let opts = &crate::client::bench::BenchArgs {
        tls,
        ..cmd.closed.clone()
    };
    let report = crate::client::bench::closed_loop(&addr, opts)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    if opts.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(io::Error::other)?
        );
    } else {
        print!("{}", report.human());
    }
    if report.stalled {
        return Err(ClientError::Timeout(Duration::from_secs_f64(opts.bench_timeout)).into());
    }
    Ok(())
}

/// `imc bench --subscribers`: the open-loop fan-out run against imd (over
/// TLS with `--tls`).
async fn bench_fanout(
    addr: &str,
    opts: &crate::client::bench::fanout::FanoutArgs,
) -> Result<(), CliError> {
    use crate::client::bench::fanout::{self, Proto};
    let report = match fanout::open_loop(addr, Proto::Imchat, opts).await {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            return Err(CliError::Usage(e.to_string()))
        }
        Err(source) => {
            return Err(ClientError::Connect {
                addr: addr.to_string(),
                source,
            }
            .into())
        }
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(io::Error::other)?
        );
    } else {
        print!("{}", report.human());
    }
    if report.stalled {
        let limit = opts.ready_timeout + opts.duration + opts.drain_timeout;
        return Err(ClientError::Timeout(Duration::from_secs_f64(limit)).into());
    }
    Ok(())
}

/// Connects (with TLS for `--tls`) and claims `--name`, within
/// `--timeout` in all.
pub async fn connect(args: &Args) -> Result<Client, ClientError> {
    let addr = args.server_addr();
    let start = async {
        let tls = tls_connector(args).map_err(|e| ClientError::Connect {
            addr: addr.clone(),
            source: io::Error::other(e),
        })?;
        let mut client = Client::connect_with(&addr, args.timeout, tls.as_ref()).await?;
        if let Some(name) = &args.name {
            claim(&mut client, name).await?;
        }
        Ok(client)
    };
    within(args.timeout, start).await
}

/// Takes `name` for `client`: logs in with `IMC_PASSWORD` when it is set,
/// else renames, explaining a registered name in imc's terms (how to log
/// in) rather than the protocol's. Used by `--name` and `imc rename`.
pub async fn claim(client: &mut Client, name: &str) -> Result<(), ClientError> {
    match password::from_env() {
        Some(pw) => password::login(client, name, &pw).await,
        None => client
            .rename(name)
            .await
            .map_err(|e| password::explain_registered(name, e)),
    }
}

/// What `--tls` and `--ca` ask to trust: `None` for plaintext. Loaded
/// here if [`execute`] has not (for callers that build [`Args`] by hand).
pub fn tls_connector(args: &Args) -> Result<Option<TlsConnector>, String> {
    match (&args.tls_connector, args.tls) {
        (Some(c), _) => Ok(Some(c.clone())),
        (None, true) => TlsConnector::new(args.ca.as_deref()).map(Some),
        (None, false) => Ok(None),
    }
}

/// Runs `fut`, turning running out of time into [`ClientError::Timeout`].
pub async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ClientError::Timeout(limit))?
}

/// How long [`Client::close`] may wait for the server to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// `--host` and the address imc dials, at their exact edges (the
/// integration tests in `tests/imc.rs` run the binary; these pin the
/// values, so that a looser check or a wrong form cannot pass).
#[cfg(test)]
mod host_tests {
    use super::*;

    /// `n` labels of `len` letters joined by dots.
    fn name_of(labels: usize, len: usize) -> String {
        vec!["a".repeat(len); labels].join(".")
    }

    /// Addresses come back in their usual form, brackets and blanks gone;
    /// names come back as given, a final dot kept.
    #[test]
    fn good_hosts_are_kept() {
        for (given, want) in [
            ("127.0.0.1", "127.0.0.1"),
            (" 192.0.2.10 ", "192.0.2.10"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("[2001:DB8::0001]", "2001:db8::1"),
            ("localhost", "localhost"),
            ("chat.example.org", "chat.example.org"),
            ("chat.example.org.", "chat.example.org."),
            ("my-host_1.example", "my-host_1.example"),
            ("x", "x"),
        ] {
            assert_eq!(parse_host(given).as_deref(), Ok(want), "{given:?}");
        }
        // A label may have 63 characters, a name 253 (without the final dot).
        let long_label = "a".repeat(63);
        assert_eq!(parse_host(&long_label), Ok(long_label.clone()));
        let longest = name_of(63, 3) + ".a";
        assert_eq!(longest.len(), 253);
        assert_eq!(parse_host(&longest), Ok(longest.clone()));
        let dotted = format!("{longest}.");
        assert_eq!(parse_host(&dotted), Ok(dotted.clone()));
    }

    /// Each way a host can be wrong is refused with what is wrong.
    #[test]
    fn bad_hosts_say_why() {
        let err = |s: &str| parse_host(s).expect_err(s);
        assert_eq!(err(""), "empty host");
        assert_eq!(err("   "), "empty host");
        assert!(err("chat.example.org:8000").contains("the port goes in --port"));
        assert!(err("[::1]:8000").contains("the port goes in --port"));
        let too_long = name_of(63, 3) + ".ab";
        assert_eq!(too_long.len(), 254);
        for bad in [
            "bad host",
            "a..b",
            ".a",
            "a/b",
            "héllo",
            &"a".repeat(64),
            &too_long,
        ] {
            assert_eq!(
                err(bad),
                format!("{bad:?} is not an IP address or host name"),
                "{bad:?}"
            );
        }
    }

    /// `HOST:PORT` as dialled: IPv6 in brackets, a name as it is, and
    /// 127.0.0.1 when no host is given.
    #[test]
    fn server_addr_joins_host_and_port() {
        let mut args = Args::try_parse_from(["imc", "--port", "7000"]).unwrap();
        for (host, want) in [
            (None, "127.0.0.1:7000"),
            (Some("192.0.2.1"), "192.0.2.1:7000"),
            (Some("::1"), "[::1]:7000"),
            (Some("chat.example.org"), "chat.example.org:7000"),
        ] {
            args.host = host.map(String::from);
            assert_eq!(args.server_addr(), want, "{host:?}");
        }
    }
}
