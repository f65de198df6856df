//! The REPL: the 1/2/3/0 menu (1 public talk, 2 private talk, 3 change
//! username, 0 exit), for people.
//!
//! Two halves, because reading the keyboard blocks and the network must
//! not wait for it:
//!
//! - the `Courier`, an async task that owns the [`Client`]: it prints
//!   incoming messages as they arrive and runs the requests the menu sends
//!   it (say, whisper, rename, who), one at a time, replying to each;
//! - the `menu`, plain blocking code on its own thread: it reads lines
//!   (with rustyline, `terminal`, when stdin and stdout are terminals,
//!   plain stdin lines otherwise), sends a request and waits for its reply
//!   before reading on.
//!
//! Waiting for each reply makes piped input scriptable: with
//! `printf '1\nhello all\nexit\n0\n' | imc`, "hello all" has reached every
//! online user before imc reads the next line, and output comes in a fixed
//! order. Messages that arrive during a request are printed before its
//! result.
//!
//! On a terminal, incoming messages are printed through rustyline's
//! external printer, which redraws the line being typed below them. If the
//! server goes away while the user is typing, imc says so at once; rustyline
//! cannot be interrupted from outside, so the next key press ends the REPL
//! (exit 3), which leaves the terminal as it was. In piped mode imc exits at
//! once.
//!
//! Keys: Ctrl-C cancels the line being typed; Ctrl-D leaves the current
//! mode, or imc at the menu; Tab completes online names when asked for one.
//! History is kept in `$IMC_HISTORY`, by default `~/.imc_history` (an empty
//! `IMC_HISTORY` turns it off).

use std::io::{self, IsTerminal};
use std::time::Duration;

use futures_util::FutureExt;
use rustyline::ExternalPrinter;
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, ClientError, Event};
use crate::protocol::{visible, ErrorCode};

use super::{connect, output, password, within, Args, CliError, CLOSE_WAIT};
use menu::{Done, End, Menu, Op, Piped, Request};
use terminal::Terminal;

mod menu;
mod terminal;

/// Runs the REPL until the user leaves (Ok), the server goes away
/// ([`ClientError::Lost`], exit 3) or stops answering (exit 4).
pub async fn repl(args: &Args) -> Result<(), CliError> {
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    let client = match connect(args).await {
        Err(ClientError::Refused {
            code: ErrorCode::NameRegistered,
            ..
        }) if interactive => log_in_at_start(args).await?,
        connected => connected?,
    };
    let addr = client
        .peer_addr()
        .map_or_else(|| "the server".to_string(), |a| a.to_string());
    output::line(&format!(
        "connected to {addr} as {}",
        visible(client.name())
    ))?;

    let (requests, request_rx) = mpsc::channel(1);
    let (printer_tx, printer_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    // A plain thread, not spawn_blocking: a blocked read of stdin must not
    // keep the runtime (and so the process) from exiting.
    std::thread::spawn(move || {
        let end = menu_thread(interactive, requests, printer_tx);
        let _ = done_tx.send(end);
    });
    let printer = printer_rx.await.ok().flatten();
    let interactive = printer.is_some();
    let mut courier = Courier {
        client,
        out: match printer {
            Some(p) => Out::Terminal(p),
            None => Out::Plain,
        },
        timeout: args.timeout,
    };
    // Returning drops the request channel's receiver: that is how the menu
    // learns the connection is gone.
    let ended = courier.serve(request_rx).await;
    match ended {
        Ok(()) => {
            courier.client.close(CLOSE_WAIT).await;
            match done_rx.await {
                Ok(End::StdoutClosed) => Err(io::Error::from(io::ErrorKind::BrokenPipe).into()),
                _ => Ok(()),
            }
        }
        Err((error, while_typing)) => {
            if interactive {
                if while_typing {
                    let _ = courier
                        .out
                        .line(format!("*** {error}; press any key to exit"));
                }
                // Wait for rustyline to give the terminal back.
                let _ = done_rx.await;
            }
            Err(error.into())
        }
    }
}

/// Where the courier prints incoming events.
enum Out {
    /// Plain lines on stdout.
    Plain,
    /// rustyline's external printer, which keeps the typed line intact.
    Terminal(Box<dyn ExternalPrinter + Send>),
}

impl Out {
    fn line(&mut self, mut text: String) -> io::Result<()> {
        match self {
            Out::Plain => output::line(&text),
            Out::Terminal(p) => {
                text.push('\n');
                p.print(text).map_err(io::Error::other)
            }
        }
    }
}

/// The async half: owns the connection, carries the menu's requests to
/// the server and incoming events to the screen.
struct Courier {
    client: Client,
    out: Out,
    /// How long one request may wait for its reply.
    timeout: Duration,
}

/// What woke the courier.
enum Wake {
    /// A request from the menu; `None` when the menu hung up.
    Request(Option<Request>),
    /// A line from the server; `Ok(None)` when it closed the connection.
    Event(Result<Option<Event>, ClientError>),
}

impl Courier {
    /// Prints events and runs requests until the menu hangs up (Ok) or the
    /// connection fails. The error comes with whether it happened while the
    /// user was typing (rather than during a request the menu waits on).
    async fn serve(
        &mut self,
        mut requests: mpsc::Receiver<Request>,
    ) -> Result<(), (ClientError, bool)> {
        loop {
            let wake = tokio::select! {
                req = requests.recv() => Wake::Request(req),
                ev = self.client.next_event() => Wake::Event(ev),
            };
            match wake {
                Wake::Request(None) => {
                    self.drain();
                    return Ok(());
                }
                Wake::Request(Some((op, reply))) => {
                    let result = within(self.timeout, exec(&mut self.client, op)).await;
                    // What arrived before the reply is shown before it.
                    self.drain();
                    match result {
                        Ok(done) => {
                            let _ = reply.send(Ok(done));
                        }
                        Err(e @ (ClientError::Refused { .. } | ClientError::Unsendable(_))) => {
                            let _ = reply.send(Err(e.to_string()));
                        }
                        // Dropping `reply` tells the menu.
                        Err(e) => return Err((e, false)),
                    }
                }
                Wake::Event(Ok(Some(event))) => self.show(&event),
                Wake::Event(Ok(None)) => return Err((ClientError::closed(), true)),
                Wake::Event(Err(e)) => return Err((e, true)),
            }
        }
    }

    /// Prints the events already received, without waiting for more.
    fn drain(&mut self) {
        while let Some(Ok(Some(event))) = self.client.next_event().now_or_never() {
            self.show(&event);
        }
    }

    fn show(&mut self, event: &Event) {
        // A closed stdout is noticed (and ends imc) by the menu's own output.
        let _ = self.out.line(output::human(event));
    }
}

/// `--name NAME` at a terminal, NAME registered and no `IMC_PASSWORD`:
/// asks for the password without echo, as choosing the name from the menu
/// does, then connects again and logs in. The user's typing is not
/// part of `--timeout`; connecting and logging in are. No password (Enter
/// or Ctrl-D alone) is unusable input: exit 2.
async fn log_in_at_start(args: &Args) -> Result<Client, CliError> {
    let name = args.name.clone().unwrap_or_default();
    let shown = visible(&name).into_owned();
    let password = tokio::task::spawn_blocking(move || password::prompt(&shown))
        .await
        .map_err(io::Error::other)??;
    if password.is_empty() {
        return Err(CliError::Usage(format!(
            "no password given for the registered name '{}'",
            visible(&name)
        )));
    }
    let unnamed = Args {
        name: None,
        ..args.clone()
    };
    let mut client = connect(&unnamed).await?;
    within(args.timeout, password::login(&mut client, &name, &password)).await?;
    Ok(client)
}

/// Runs one request against the server.
async fn exec(client: &mut Client, op: Op) -> Result<Done, ClientError> {
    match op {
        Op::Say(text) => {
            client.say(&text).await?;
            Ok(Done::Said {
                me: client.name().to_string(),
            })
        }
        Op::Whisper { to, text } => {
            client.whisper(&to, &text).await?;
            Ok(Done::Whispered)
        }
        Op::Rename(name) => match client.rename(&name).await {
            Ok(()) => Ok(Done::Renamed(client.name().to_string())),
            Err(ClientError::Refused {
                code: ErrorCode::NameRegistered,
                ..
            }) => Ok(Done::NeedsPassword(name)),
            Err(e) => Err(e),
        },
        Op::Login { name, password } => {
            password::login(client, &name, &password).await?;
            Ok(Done::Renamed(client.name().to_string()))
        }
        Op::Who => Ok(Done::Names(client.who().await?)),
    }
}

/// The menu thread: sets up line input, hands the courier a printer (or
/// none), and runs the menu.
fn menu_thread(
    interactive: bool,
    requests: mpsc::Sender<Request>,
    printer: oneshot::Sender<Option<Box<dyn ExternalPrinter + Send>>>,
) -> End {
    let terminal = if interactive {
        Terminal::new(requests.clone())
    } else {
        None
    };
    match terminal {
        Some(mut t) => {
            let _ = printer.send(t.printer.take());
            let mut menu = Menu { input: t, requests };
            let end = menu.run_menu();
            menu.input.finish();
            end
        }
        None => {
            let _ = printer.send(None);
            let stdin = io::stdin().lock();
            Menu {
                input: Piped { stdin },
                requests,
            }
            .run_menu()
        }
    }
}
