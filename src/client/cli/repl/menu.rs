//! The REPL's menu: the 1/2/3/0 menu and its three modes, as plain
//! blocking code that reads lines from a [`LineInput`] (rustyline on a
//! terminal, [`Piped`] stdin otherwise) and sends each request to the
//! connection side, waiting for its reply before reading on.
//!
//! The vocabulary between the two halves is here too: [`Op`] (a request),
//! [`Done`] (what it achieved), [`Reply`] and [`End`] (how the REPL ends).

use std::io::{self, StdinLock, Write};

use tokio::sync::{mpsc, oneshot};

use crate::client::cli::{input, output, password};
use crate::protocol::visible;

/// The menu, word for word (README.md, "The REPL").
const MENU: &str = "\
input 1 : public talk
input 2 : private talk
input 3 : change username
input 0 : exit";

/// A request from the menu to the connection side.
#[derive(Debug)]
pub(super) enum Op {
    Say(String),
    Whisper { to: String, text: String },
    Rename(String),
    Login { name: String, password: String },
    Who,
}

/// What a request achieved.
#[derive(Debug)]
pub(super) enum Done {
    /// Said in public, under this name.
    Said {
        me: String,
    },
    Whispered,
    Renamed(String),
    /// The name is registered: log in to take it.
    NeedsPassword(String),
    Names(Vec<String>),
}

/// The answer to one request: done, or refused (the reason, to show). If
/// the connection fails instead, the reply is never sent.
pub(super) type Reply = Result<Done, String>;

/// A request and where to send its reply.
pub(super) type Request = (Op, oneshot::Sender<Reply>);

/// How the REPL ends, whichever half notices first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The user chose exit, pressed Ctrl-D or input ended.
    Quit,
    /// The connection is gone (the error is reported by the connection
    /// side).
    Lost,
    /// Nobody reads our stdout any more.
    StdoutClosed,
}

/// One read of a line.
pub(super) enum Read {
    Line(String),
    /// Ctrl-C: forget this line.
    Cancel,
    /// Ctrl-D or end of input.
    End,
}

/// Where the menu's lines come from.
pub(super) trait LineInput {
    /// Reads a line; `names` are offered for Tab completion.
    fn read(&mut self, prompt: &str, names: &[String]) -> Read;
    /// Keeps a line in the history.
    fn remember(&mut self, _line: &str) {}
}

/// Plain lines of stdin, for piped input. No prompts: nobody sees them.
pub(super) struct Piped {
    pub(super) stdin: StdinLock<'static>,
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

/// The menu and its three modes, as blocking code.
pub(super) struct Menu<I: LineInput> {
    pub(super) input: I,
    /// To the connection side; closed once the connection is gone.
    pub(super) requests: mpsc::Sender<Request>,
}

impl<I: LineInput> Menu<I> {
    /// Runs the menu until the user leaves or it cannot go on.
    pub(super) fn run_menu(&mut self) -> End {
        match self.main_loop() {
            Ok(()) => End::Quit,
            Err(end) => end,
        }
    }

    fn main_loop(&mut self) -> Result<(), End> {
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
    fn public_talk(&mut self) -> Result<(), End> {
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
    fn private_talk(&mut self) -> Result<(), End> {
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
    fn change_name(&mut self) -> Result<(), End> {
        self.say(">>> Please enter your new username ('exit' to quit):")?;
        let Some(name) = self.name("new name> ", &[])? else {
            return Ok(());
        };
        match self.call(Op::Rename(name))? {
            Some(Done::Renamed(now)) => {
                self.say(&format!("ok rename: you are now {}", visible(&now)))?
            }
            Some(Done::NeedsPassword(name)) => self.log_in(name)?,
            _ => {}
        }
        Ok(())
    }

    /// The name is registered: logs in with IMC_PASSWORD, or with a
    /// password asked for without echo (never through the line editor,
    /// so never in its history).
    fn log_in(&mut self, name: String) -> Result<(), End> {
        let password = match password::from_env() {
            Some(p) => p,
            None => match password::prompt(&visible(&name)) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => return Ok(()),
                Err(e) => {
                    let _ = writeln!(
                        io::stderr(),
                        "refused: '{}' is registered; cannot ask for its password ({e}); set IMC_PASSWORD",
                        visible(&name)
                    );
                    return Ok(());
                }
            },
        };
        if let Some(Done::Renamed(now)) = self.call(Op::Login { name, password })? {
            self.say(&format!("ok login: you are now {}", visible(&now)))?;
        }
        Ok(())
    }

    /// The next message to send; `None` on `exit` or Ctrl-D. Blank lines
    /// are skipped: the server would ignore them.
    fn message(&mut self, prompt: &str) -> Result<Option<String>, End> {
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
    fn name(&mut self, prompt: &str, names: &[String]) -> Result<Option<String>, End> {
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

    fn read(&mut self, prompt: &str, names: &[String]) -> Result<Read, End> {
        let read = self.input.read(prompt, names);
        if self.requests.is_closed() {
            return Err(End::Lost);
        }
        Ok(read)
    }

    /// Runs a request and waits for it; a refusal is shown and is `None`.
    fn call(&mut self, op: Op) -> Result<Option<Done>, End> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .blocking_send((op, tx))
            .map_err(|_| End::Lost)?;
        // The connection side drops the reply sender when it fails.
        match rx.blocking_recv() {
            Ok(Ok(done)) => Ok(Some(done)),
            Ok(Err(why)) => {
                let _ = writeln!(io::stderr(), "refused: {why}");
                Ok(None)
            }
            Err(_) => Err(End::Lost),
        }
    }

    /// Prints menu text on stdout.
    fn say(&mut self, text: &str) -> Result<(), End> {
        // Any failure to write stdout means nobody can see us any more.
        output::line(text).map_err(|_| End::StdoutClosed)
    }
}
