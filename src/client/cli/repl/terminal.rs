//! The REPL's terminal glue: rustyline set up for the menu, with history,
//! Tab completion of online names, and a way out when the connection is
//! lost while the user is typing. Everything rustyline is here; the menu
//! itself ([`super::menu`]) only sees [`LineInput`].

use std::path::PathBuf;

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
use tokio::sync::mpsc;

use super::menu::{LineInput, Read};
use super::Request;

/// rustyline on a terminal.
pub(super) struct Terminal {
    editor: Editor<NameHelper, DefaultHistory>,
    history: Option<PathBuf>,
    /// Taken by the connection side to print incoming lines above the one
    /// being typed.
    pub(super) printer: Option<Box<dyn ExternalPrinter + Send>>,
}

impl Terminal {
    /// Sets up the editor; `None` if the terminal cannot be used, in which
    /// case the menu reads plain lines. `requests` is the menu's channel to
    /// the connection: once it is closed, the connection is gone.
    pub(super) fn new(requests: mpsc::Sender<Request>) -> Option<Terminal> {
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
            EventHandler::Conditional(Box::new(EndWhenLost(requests))),
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

    /// Saves the history.
    pub(super) fn finish(&mut self) {
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

/// Turns any key into "cancel" once the connection is lost (its request
/// channel closed), so the REPL ends on the next key press: rustyline
/// cannot be stopped from outside.
struct EndWhenLost(mpsc::Sender<Request>);

impl ConditionalEventHandler for EndWhenLost {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, _: &EventContext) -> Option<Cmd> {
        self.0.is_closed().then_some(Cmd::Interrupt)
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
