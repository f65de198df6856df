//! `imd`: the chat server binary. Parses flags, sets up logging, binds, and
//! hands over to [`imchat::server::run_in_cluster`] until Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use imchat::server::accounts::{self, Accounts};
use imchat::server::admission::Limits;
use imchat::server::cluster::{Cluster, ClusterConfig};
use imchat::server::tls::Tls;
use imchat::server::{self, Config};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// imd: a TCP chat server speaking a small line protocol.
///
/// Clients connect with nc, telnet or `imc`. Lines:
/// `who`, `rename|NAME`, `to|NAME|MESSAGE`, `login|NAME|PASSWORD`,
/// anything else is a public message. See PROTOCOL.md. Logs go to stderr;
/// set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
#[derive(Parser, Debug)]
#[command(name = "imd", version, after_help = EXIT_CODES)]
struct Args {
    #[command(subcommand)]
    command: Option<ImdCmd>,
    /// Print imd's man page (roff) on stdout and exit, e.g. `imd --man >
    /// ~/.local/share/man/man1/imd.1`. A flag, like --help: imd's one
    /// subcommand, hash-password, is a setup tool, not the server.
    #[arg(long)]
    man: bool,
    /// Address to listen on.
    #[arg(long, env = "IMD_IP", default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, env = "IMD_PORT", default_value_t = 8000)]
    port: u16,
    /// Longest line accepted, in bytes; longer lines are refused and skipped.
    #[arg(long, env = "IMD_MAX_LINE", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..))]
    max_line: u32,
    /// Bytes that may wait for a user that is not reading before it is
    /// disconnected as too slow (a reader that is reading may go up to twice
    /// this while senders are being slowed down).
    #[arg(long, env = "IMD_QUEUE_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    queue_bytes: u64,
    /// Bytes of output queued for all users together (512 MiB): over it,
    /// users that are not reading are cut and senders wait.
    #[arg(long, env = "IMD_MAX_QUEUED_BYTES", default_value_t = 512 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(64 * 1024..))]
    max_queued_bytes: u64,
    /// Seconds of silence before a user is disconnected; 0 turns it off.
    #[arg(long, env = "IMD_IDLE_TIMEOUT", default_value_t = 300)]
    idle_timeout: u64,
    /// Most simultaneous connections; more are told "server full".
    #[arg(long, env = "IMD_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Most connections open at once from one IP address; one more is told
    /// `too-many-connections`. 0: no limit.
    #[arg(long, env = "IMD_MAX_PER_IP", default_value_t = 0)]
    max_per_ip: u64,
    /// Most new connections a second from one IP address; more are told
    /// `too-many-connections`. 0: no limit.
    #[arg(long, env = "IMD_MAX_CONNECTS_PER_IP", default_value_t = 0, value_parser = clap::value_parser!(u32))]
    max_connects_per_ip: u32,
    /// Most lines a second each user may send, a second's worth at once;
    /// a faster sender is not refused but read more slowly (its client
    /// waits). 0: no limit.
    #[arg(long, env = "IMD_MAX_LINES_PER_SEC", default_value_t = 0, value_parser = clap::value_parser!(u32))]
    max_lines_per_sec: u32,
    /// Online/offline/rename notices are sent only while at most this many
    /// users are online (each join told to everyone costs N² lines).
    #[arg(long, env = "IMD_PRESENCE_LIMIT", default_value_t = 1000)]
    presence_limit: u64,
    /// Milliseconds a reader may take no data at all (a write waiting on a
    /// full socket, and the peer acknowledging nothing) before it counts as
    /// not reading: senders stop waiting for it and it is cut off once its
    /// queue is full.
    #[arg(long, env = "IMD_STALL_MS", default_value_t = 1000)]
    stall_ms: u64,
    /// Milliseconds between two writes to one user while lines keep
    /// coming for it: each write then carries every line that came
    /// meanwhile, so fan-out costs a system call per user per interval,
    /// not per line, however many cores are idle. A user's first lines
    /// after a quiet spell, and answers to what it just sent, are written
    /// at once. 0 writes every line as soon as a core is free.
    #[arg(long, env = "IMD_WRITE_INTERVAL_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1000))]
    write_interval_ms: u64,
    /// Speak TLS (1.2 and 1.3) with this certificate: a PEM file, the
    /// server's certificate first, then any intermediates. Needs --tls-key.
    /// Plaintext clients then get nothing; each client has 10 seconds to
    /// finish its handshake.
    #[arg(long, env = "IMD_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert: a PEM file (PKCS#8, RSA or EC).
    /// Needs --tls-cert.
    #[arg(long, env = "IMD_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Join a cluster of imd nodes through this Redis (redis://HOST:PORT,
    /// or rediss://HOST:PORT for TLS, verified against the system's roots).
    /// Without it, imd is a single node and never touches Redis.
    #[arg(long, env = "IMD_REDIS")]
    redis: Option<String>,
    /// Seconds a node's users outlive its last heartbeat in the cluster:
    /// how soon a killed node's users leave `who`.
    #[arg(long, env = "IMD_CLUSTER_TTL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_ttl: u64,
    /// Bytes of lines this node may have waiting to be published to Redis.
    /// While Redis is slow and more than half of this is waiting, this
    /// node's senders are held back (their next lines are read once it
    /// drains); a line that would pass it is not sent to other nodes.
    #[arg(long, env = "IMD_CLUSTER_QUEUE_BYTES", value_name = "BYTES", default_value_t = imchat::server::cluster::OUT_QUEUE_BYTES as u64, value_parser = clap::value_parser!(u64).range(1024..))]
    cluster_queue_bytes: u64,
    /// Registered names: a file of `NAME:HASH` lines (HASH from `imd
    /// hash-password`; `#` comments and blank lines allowed). Those names
    /// are taken with `login|NAME|PASSWORD` only. Read again on SIGHUP
    /// (a bad file then keeps the accounts in use). Without it, every name
    /// is free to take.
    #[arg(long, env = "IMD_ACCOUNTS", value_name = "FILE")]
    accounts: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics as `GET /metrics` on this address (e.g.
    /// 127.0.0.1:9808; port 0 picks a free one, printed on stdout). Off by
    /// default. Anyone who can reach it can read the counts, not who said
    /// what; keep it on a private address.
    #[arg(long, env = "IMD_METRICS", value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Log format on stderr: `text` for people, `json` (one object a line)
    /// for log shippers.
    #[arg(long, env = "IMD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// imd's subcommands: tools for setting a server up, not the server.
#[derive(clap::Subcommand, Debug)]
enum ImdCmd {
    /// Print the Argon2id hash of a password, for a `NAME:HASH` line of
    /// the --accounts file. At a terminal it asks on the terminal, without
    /// echo, twice ("Password: ", "Again: "); a mismatch prints nothing
    /// and exits 2. Otherwise it reads stdin's first line, e.g. `printf
    /// '%s\n' "$pw" | imd hash-password`.
    HashPassword,
}

/// imd's exit statuses, shown by `imd --help` and in its man page.
const EXIT_CODES: &str = "\
Exit status:
  0  stopped by Ctrl-C or SIGTERM, after the graceful shutdown
     (hash-password: the hash was printed)
  1  cannot listen on --ip/--port or --metrics, cannot reach --redis, or
     the --accounts file is missing or invalid, at start
  2  usage error: a bad flag or environment variable (an unreadable or
     unusable --tls-cert or --tls-key included; hash-password: no
     password, or the two typed at the terminal differ)";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        return man_page();
    }
    if let Some(ImdCmd::HashPassword) = args.command {
        return hash_password();
    }
    logging(args.log_format);
    let accounts = match &args.accounts {
        None => None,
        Some(path) => match Accounts::load(path) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("imd: {e}");
                return ExitCode::from(1);
            }
        },
    };

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match Tls::from_pem_files(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("imd: {e}");
                return ExitCode::from(2);
            }
        },
        // clap requires both or neither.
        _ => None,
    };
    let config = Config {
        max_line: args.max_line as usize,
        queue_bytes: args.queue_bytes as usize,
        max_queued_bytes: args.max_queued_bytes as usize,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        max_connections: args.max_connections as usize,
        per_ip: Limits {
            max_per_ip: args.max_per_ip as usize,
            connects_per_sec: args.max_connects_per_ip,
        },
        max_lines_per_sec: std::num::NonZeroU32::new(args.max_lines_per_sec),
        presence_limit: args.presence_limit as usize,
        stall_timeout: Duration::from_millis(args.stall_ms),
        write_interval: Duration::from_millis(args.write_interval_ms),
        accounts: accounts.clone(),
        tls,
        ..Config::default()
    };
    let listener = match TcpListener::bind((args.ip, args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("imd: cannot listen on {}:{}: {e}", args.ip, args.port);
            return ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("imd: {e}");
            return ExitCode::from(1);
        }
    };
    let metrics = match args.metrics {
        None => None,
        Some(at) => match TcpListener::bind(at)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
        {
            Ok(bound) => Some(bound),
            Err(e) => {
                eprintln!("imd: cannot listen for metrics on {at}: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let cluster = match &args.redis {
        None => None,
        Some(url) => {
            let cc = ClusterConfig {
                url: url.clone(),
                ttl: Duration::from_secs(args.cluster_ttl),
                queue_bytes: args.cluster_queue_bytes as usize,
            };
            match Cluster::connect(cc, &addr.to_string()).await {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("imd: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let shutdown = shutdown_signal();
    if let Some(accounts) = accounts {
        reload_on_sighup(accounts);
    }
    // The first stdout line, so scripts and tests can learn the port; the
    // metrics address, if any, is the second.
    let mut said = format!("imd listening on {addr}\n");
    if let Some((at, _)) = &metrics {
        said.push_str(&format!("imd metrics on {at}\n"));
    }
    let mut stdout = tokio::io::stdout();
    let _ = stdout.write_all(said.as_bytes()).await;
    let _ = stdout.flush().await;
    tracing::info!(%addr, tls = config.tls.is_some(), "listening");
    if let Some((at, _)) = &metrics {
        tracing::info!(addr = %at, "serving metrics at http://{at}/metrics");
    }
    let options = server::Options {
        cluster,
        metrics: metrics.map(|(_, l)| l),
    };
    server::run_with(listener, config, options, shutdown).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `imd hash-password`: one password to its hash on stdout. At a
/// terminal (stdin is one) the password is asked for twice without echo,
/// as `passwd` does, so a typo cannot slip into the accounts file unseen;
/// from a pipe or a file it is stdin's first line, as scripts expect.
fn hash_password() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        ask_twice()
    } else {
        first_line_of_stdin()
    };
    match password {
        Ok(password) => {
            println!("{}", accounts::hash_password(&password));
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("imd: {why}");
            ExitCode::from(2)
        }
    }
}

/// The password typed at the terminal, the same twice.
fn ask_twice() -> Result<String, String> {
    let ask = |prompt| {
        imchat::tty::read_hidden(prompt)
            .map_err(|e| format!("cannot read the password from the terminal: {e}"))
    };
    let password = ask("Password: ")?;
    if password.is_empty() {
        return Err("no password given; nothing was printed".into());
    }
    if ask("Again: ")? != password {
        return Err(
            "the passwords do not match; nothing was printed (run imd hash-password again)".into(),
        );
    }
    Ok(password)
}

/// Stdin's first line, without its line ending.
fn first_line_of_stdin() -> Result<String, String> {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        return Err(format!("cannot read the password from stdin: {e}"));
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(
            "no password on stdin (give one line, e.g. printf '%s\\n' \"$pw\" | imd hash-password)"
                .into(),
        );
    }
    Ok(password.to_string())
}

/// Reads the accounts file again on each SIGHUP; a bad file keeps the
/// accounts in use, and the error is logged. (Only with --accounts:
/// otherwise SIGHUP keeps its default meaning, as before.)
fn reload_on_sighup(accounts: std::sync::Arc<Accounts>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP, accounts will not be reloaded: {e}");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match accounts.reload() {
                    Ok(names) => tracing::info!(names, "accounts reloaded"),
                    Err(e) => tracing::error!("accounts not reloaded, keeping those in use: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = accounts;
}

/// `imd --man`: the man page, on stdout.
fn man_page() -> ExitCode {
    use clap::CommandFactory;
    use std::io::Write;
    let env = [(
        "RUST_LOG",
        "Log level filter (default info), e.g. debug or imchat=debug,warn.",
    )];
    let mut page = Vec::new();
    let written = imchat::man::render(Args::command(), EXIT_CODES, &env, &mut page)
        .and_then(|()| std::io::stdout().write_all(&page));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imd: {e}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr at the level `RUST_LOG` asks for (`debug`, `warn`,
/// `imchat=debug,info`, ...), `info` if it is unset or unreadable. The
/// filter is tracing-subscriber's `Targets`, not its `EnvFilter`, whose
/// span and field matching would link a regex engine into the server.
fn logging(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{Layer, Registry};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(layer.with_ansi(std::io::stderr().is_terminal())),
        LogFormat::Json => Box::new(layer.json().with_ansi(false)),
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed by this
/// call, not when the future is first polled: a SIGTERM that arrives just
/// after the `listening` line (before the accept loop first waits) must
/// still be the graceful stop, not the default action that kills imd.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
