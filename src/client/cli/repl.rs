//! The REPL: the seed client's menu (1 public talk, 2 private talk,
//! 3 change username, 0 exit), for people.
//!
//! Two halves, because reading the keyboard blocks and the network must
//! not wait for it:
//!
//! - the *session*, an async task that owns the [`Client`]: it prints
//!   incoming messages as they arrive and runs the requests the menu sends
//!   it (say, whisper, rename, who), one at a time, replying to each;
//! - the *menu*, plain blocking code on its own thread: it reads lines
//!   (with rustyline when stdin and stdout are terminals, plain stdin lines
//!   otherwise), sends a request and waits for its reply before reading on.
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

use std::io::{self, IsTerminal, StdinLock, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{
    Cmd, CompletionType, ConditionalEventHandler, Config, Editor, Event, EventContext,
    EventHandler, ExternalPrinter, Helper, RepeatCount,
};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, ClientError};
use crate::protocol::visible;

use super::{connect, input, output, within, Args, CliError, CLOSE_WAIT};

/// The seed's menu, word for word.
const MENU: &str = "\
input 1 : public talk
input 2 : private talk
input 3 : change username
input 0 : exit";

/// Runs the REPL until the user leaves (Ok), the server goes away
/// ([`ClientError::Lost`], exit 3) or stops answering (exit 4).
pub async fn run(args: &Args) -> Result<(), CliError> {
    let client = connect(args).await?;
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
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
    let lost = Arc::new(AtomicBool::new(false));
    let menu_lost = lost.clone();
    // A plain thread, not spawn_blocking: a blocked read of stdin must not
    // keep the runtime (and so the process) from exiting.
    std::thread::spawn(move || {
        let end = menu_thread(interactive, requests, printer_tx, menu_lost);
        let _ = done_tx.send(end);
    });
    let printer = printer_rx.await.ok().flatten();
    let interactive = printer.is_some();
    let mut session = Session {
        client,
        out: match printer {
            Some(p) => Out::Terminal(p),
            None => Out::Plain,
        },
        timeout: args.timeout,
    };
    let ended = session.serve(request_rx).await;
    match ended {
        Ok(()) => {
            session.client.close(CLOSE_WAIT).await;
            match done_rx.await {
                Ok(MenuEnd::StdoutClosed) => Err(io::Error::from(io::ErrorKind::BrokenPipe).into()),
                _ => Ok(()),
            }
        }
        Err((error, while_typing)) => {
            lost.store(true, Ordering::SeqCst);
            if interactive {
                if while_typing {
                    let _ = session
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

/// A request from the menu to the session.
#[derive(Debug)]
enum Op {
    Say(String),
    Whisper { to: String, text: String },
    Rename(String),
    Who,
}

/// What a request achieved.
#[derive(Debug)]
enum Done {
    /// Said in public, under this name.
    Said {
        me: String,
    },
    Whispered,
    Renamed(String),
    Names(Vec<String>),
}

/// The session's answer to one request.
#[derive(Debug)]
enum Reply {
    Ok(Done),
    /// The server refused; the reason, to show.
    Refused(String),
    /// The session is over (the error is reported by [`run`]).
    Fatal,
}

type Request = (Op, oneshot::Sender<Reply>);

/// How the menu ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MenuEnd {
    /// The user chose exit, pressed Ctrl-D or input ended.
    Quit,
    /// The session ended under it.
    Lost,
    /// Nobody reads our stdout any more.
    StdoutClosed,
}

/// Where the session prints incoming events.
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

/// The async half: owns the connection.
struct Session {
    client: Client,
    out: Out,
    /// How long one request may wait for its reply.
    timeout: Duration,
}

impl Session {
    /// Prints events and runs requests until the menu hangs up (Ok) or the
    /// connection fails. The error comes with whether it happened while the
    /// user was typing (rather than during a request the menu waits on).
    async fn serve(
        &mut self,
        mut requests: mpsc::Receiver<Request>,
    ) -> Result<(), (ClientError, bool)> {
        loop {
            let step = tokio::select! {
                req = requests.recv() => Step::Request(req),
                ev = self.client.next_event() => Step::Event(ev),
            };
            match step {
                Step::Request(None) => {
                    self.drain();
                    return Ok(());
                }
                Step::Request(Some((op, reply))) => {
                    let result = within(self.timeout, exec(&mut self.client, op)).await;
                    // What arrived before the reply is shown before it.
                    self.drain();
                    match result {
                        Ok(done) => {
                            let _ = reply.send(Reply::Ok(done));
                        }
                        Err(e @ ClientError::Refused { .. }) => {
                            let _ = reply.send(Reply::Refused(e.to_string()));
                        }
                        Err(e) => {
                            let _ = reply.send(Reply::Fatal);
                            return Err((e, false));
                        }
                    }
                }
                Step::Event(Ok(Some(event))) => self.show(&event),
                Step::Event(Ok(None)) => {
                    let e = ClientError::Lost("server closed the connection".into());
                    return Err((e, true));
                }
                Step::Event(Err(e)) => return Err((e, true)),
            }
        }
    }

    /// Prints the events already received, without waiting for more.
    fn drain(&mut self) {
        while let Some(Ok(Some(event))) = self.client.next_event().now_or_never() {
            self.show(&event);
        }
    }

    fn show(&mut self, event: &crate::client::Event) {
        // A closed stdout is noticed (and ends imc) by the menu's own output.
        let _ = self.out.line(output::human(event));
    }
}

enum Step {
    Request(Option<Request>),
    Event(Result<Option<crate::client::Event>, ClientError>),
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
        Op::Rename(name) => {
            client.rename(&name).await?;
            Ok(Done::Renamed(client.name().to_string()))
        }
        Op::Who => Ok(Done::Names(client.who().await?)),
    }
}

/// The menu thread: sets up line input, hands the session a printer (or
/// none), and runs the menu.
fn menu_thread(
    interactive: bool,
    requests: mpsc::Sender<Request>,
    printer: oneshot::Sender<Option<Box<dyn ExternalPrinter + Send>>>,
    lost: Arc<AtomicBool>,
) -> MenuEnd {
    let terminal = if interactive {
        Terminal::new(lost.clone())
    } else {
        None
    };
    let end = match terminal {
        Some(mut t) => {
            let _ = printer.send(t.printer.take());
            let mut menu = Menu {
                input: t,
                requests,
                lost,
            };
            let end = menu.run();
            menu.input.finish();
            end
        }
        None => {
            let _ = printer.send(None);
            let mut menu = Menu {
                input: Piped {
                    stdin: io::stdin().lock(),
                },
                requests,
                lost,
            };
            menu.run()
        }
    };
    match end {
        Ok(()) => MenuEnd::Quit,
        Err(Stop::Lost) => MenuEnd::Lost,
        Err(Stop::StdoutClosed) => MenuEnd::StdoutClosed,
    }
}

/// One read of a line.
enum Read {
    Line(String),
    /// Ctrl-C: forget this line.
    Cancel,
    /// Ctrl-D or end of input.
    End,
}

/// Why the menu stops early.
#[derive(Debug)]
enum Stop {
    Lost,
    StdoutClosed,
}

/// Where the menu's lines come from.
trait LineInput {
    /// Reads a line; `names` are offered for Tab completion.
    fn read(&mut self, prompt: &str, names: &[String]) -> Read;
    /// Keeps a line in the history.
    fn remember(&mut self, _line: &str) {}
}

/// Plain lines of stdin, for piped input. No prompts: nobody sees them.
struct Piped {
    stdin: StdinLock<'static>,
}

impl LineInput for Piped {
    fn read(&mut self, _prompt: &str, _names: &[String]) -> Read {
        match input::read_line(&mut self.stdin) {
            Ok(Some(line)) => Read::Line(line),
            Ok(None) => Read::End,
            Err(e) => {
                eprintln!("imc: cannot read stdin: {e}");
                Read::End
            }
        }
    }
}

/// rustyline on a terminal.
struct Terminal {
    editor: Editor<NameHelper, DefaultHistory>,
    history: Option<PathBuf>,
    printer: Option<Box<dyn ExternalPrinter + Send>>,
}

impl Terminal {
    /// Sets up the editor; `None` if the terminal cannot be used, in which
    /// case the menu reads plain lines.
    fn new(lost: Arc<AtomicBool>) -> Option<Terminal> {
        let config = Config::builder()
            .auto_add_history(false)
            .history_ignore_dups(true)
            .ok()?
            .completion_type(CompletionType::List)
            .build();
        let mut editor = Editor::with_config(config).ok()?;
        editor.set_helper(Some(NameHelper { names: Vec::new() }));
        editor.bind_sequence(
            Event::Any,
            EventHandler::Conditional(Box::new(EndWhenLost(lost))),
        );
        let history = history_path();
        if let Some(path) = &history {
            // A missing file is the first run, not an error.
            let _ = editor.load_history(path);
        }
        let printer = editor
            .create_external_printer()
            .ok()
            .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
        Some(Terminal {
            editor,
            history,
            printer,
        })
    }

    fn finish(&mut self) {
        if let Some(path) = &self.history {
            if let Err(e) = self.editor.save_history(path) {
                eprintln!("imc: cannot save history to {}: {e}", path.display());
            }
        }
    }
}

impl LineInput for Terminal {
    fn read(&mut self, prompt: &str, names: &[String]) -> Read {
        if let Some(h) = self.editor.helper_mut() {
            h.names = names.to_vec();
        }
        match self.editor.readline(prompt) {
            Ok(line) => Read::Line(line),
            Err(ReadlineError::Interrupted) => Read::Cancel,
            Err(ReadlineError::Eof) => Read::End,
            Err(e) => {
                eprintln!("imc: cannot read the terminal: {e}");
                Read::End
            }
        }
    }

    fn remember(&mut self, line: &str) {
        let _ = self.editor.add_history_entry(line);
    }
}

/// The history file: `$IMC_HISTORY`, else `~/.imc_history`; none if
/// `IMC_HISTORY` is set but empty, or there is no home directory.
fn history_path() -> Option<PathBuf> {
    match std::env::var_os("IMC_HISTORY") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".imc_history")),
    }
}

/// Turns any key into "cancel" once the connection is lost, so the REPL
/// ends on the next key press (rustyline cannot be stopped from outside).
struct EndWhenLost(Arc<AtomicBool>);

impl ConditionalEventHandler for EndWhenLost {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, _: &EventContext) -> Option<Cmd> {
        self.0.load(Ordering::SeqCst).then_some(Cmd::Interrupt)
    }
}

/// Tab completion of online names, when the menu asks for a name.
struct NameHelper {
    /// The names to offer; empty when not asking for a name.
    names: Vec<String>,
}

impl Completer for NameHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let typed = &line[..pos];
        let found = self
            .names
            .iter()
            .filter(|n| n.starts_with(typed))
            .cloned()
            .collect();
        Ok((0, found))
    }
}

impl Hinter for NameHelper {
    type Hint = String;
}
impl Highlighter for NameHelper {}
impl Validator for NameHelper {}
impl Helper for NameHelper {}

/// The menu and its three modes, as blocking code.
struct Menu<I: LineInput> {
    input: I,
    requests: mpsc::Sender<Request>,
    lost: Arc<AtomicBool>,
}

impl<I: LineInput> Menu<I> {
    fn run(&mut self) -> Result<(), Stop> {
        self.say(MENU)?;
        loop {
            let choice = match self.read("menu> ", &[])? {
                Read::Line(l) => l,
                Read::Cancel => continue,
                Read::End => return Ok(()),
            };
            match choice.trim() {
                "1" => self.public_talk()?,
                "2" => self.private_talk()?,
                "3" => self.change_name()?,
                "0" | "exit" | "quit" => return Ok(()),
                "" => {}
                _ => self.say("Please input the correct number")?,
            }
            self.say(MENU)?;
        }
    }

    /// Sends each line to everyone until `exit` or Ctrl-D.
    fn public_talk(&mut self) -> Result<(), Stop> {
        self.say(">>> public talk: type a message and press Enter ('exit' to quit)")?;
        while let Some(text) = self.message("public> ")? {
            if let Some(Done::Said { me }) = self.call(Op::Say(text.clone()))? {
                self.say(&format!("<{}> {}", visible(&me), visible(&text)))?;
            }
        }
        Ok(())
    }

    /// Shows who is online, asks for a name, then sends each line to that
    /// user until `exit` or Ctrl-D.
    fn private_talk(&mut self) -> Result<(), Stop> {
        let Some(Done::Names(names)) = self.call(Op::Who)? else {
            return Ok(());
        };
        self.say("users online:")?;
        for name in &names {
            self.say(&format!("  {}", visible(name)))?;
        }
        self.say(">>> Please input the username ('exit' to quit, Tab completes):")?;
        let Some(to) = self.name("to whom> ", &names)? else {
            return Ok(());
        };
        if !names.contains(&to) {
            self.say(&format!("no user named '{}' is online", visible(&to)))?;
            return Ok(());
        }
        self.say(&format!(
            ">>> private talk with {}: type a message ('exit' to quit)",
            visible(&to)
        ))?;
        let prompt = format!("to {}> ", visible(&to));
        while let Some(text) = self.message(&prompt)? {
            let op = Op::Whisper {
                to: to.clone(),
                text: text.clone(),
            };
            if let Some(Done::Whispered) = self.call(op)? {
                self.say(&format!("ok to {}: {}", visible(&to), visible(&text)))?;
            }
        }
        Ok(())
    }

    /// Asks for a new name and shows the server's answer.
    fn change_name(&mut self) -> Result<(), Stop> {
        self.say(">>> Please enter your new username ('exit' to quit):")?;
        let Some(name) = self.name("new name> ", &[])? else {
            return Ok(());
        };
        if let Some(Done::Renamed(now)) = self.call(Op::Rename(name))? {
            self.say(&format!("ok rename: you are now {}", visible(&now)))?;
        }
        Ok(())
    }

    /// The next message to send; `None` on `exit` or Ctrl-D. Blank lines
    /// are skipped: the server would ignore them.
    fn message(&mut self, prompt: &str) -> Result<Option<String>, Stop> {
        loop {
            match self.read(prompt, &[])? {
                Read::Line(l) if l.trim() == "exit" => return Ok(None),
                Read::Line(l) if l.trim().is_empty() => {}
                Read::Line(l) => {
                    self.input.remember(&l);
                    return Ok(Some(l));
                }
                Read::Cancel => {}
                Read::End => return Ok(None),
            }
        }
    }

    /// A name (trimmed); `None` on `exit` or Ctrl-D.
    fn name(&mut self, prompt: &str, names: &[String]) -> Result<Option<String>, Stop> {
        loop {
            match self.read(prompt, names)? {
                Read::Line(l) if l.trim() == "exit" => return Ok(None),
                Read::Line(l) if l.trim().is_empty() => {}
                Read::Line(l) => return Ok(Some(l.trim().to_string())),
                Read::Cancel => {}
                Read::End => return Ok(None),
            }
        }
    }

    fn read(&mut self, prompt: &str, names: &[String]) -> Result<Read, Stop> {
        let read = self.input.read(prompt, names);
        if self.lost.load(Ordering::SeqCst) {
            return Err(Stop::Lost);
        }
        Ok(read)
    }

    /// Runs a request and waits for it; a refusal is shown and is `None`.
    fn call(&mut self, op: Op) -> Result<Option<Done>, Stop> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .blocking_send((op, tx))
            .map_err(|_| Stop::Lost)?;
        match rx.blocking_recv() {
            Ok(Reply::Ok(done)) => Ok(Some(done)),
            Ok(Reply::Refused(why)) => {
                let _ = writeln!(io::stderr(), "refused: {why}");
                Ok(None)
            }
            Ok(Reply::Fatal) | Err(_) => Err(Stop::Lost),
        }
    }

    /// Prints menu text on stdout.
    fn say(&mut self, text: &str) -> Result<(), Stop> {
        // Any failure to write stdout means nobody can see us any more.
        output::line(text).map_err(|_| Stop::StdoutClosed)
    }
}
