//! `imc completions SHELL` and `imc man`: imc's shell completions
//! (clap_complete) and man page ([`crate::man`]), both generated from the
//! clap definition in [`super::Args`], so they cannot drift from it. They
//! need no server.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Args, CliError, EXIT_CODES};

/// Variables imc reads outside clap, for the man page's ENVIRONMENT.
const EXTRA_ENV: &[(&str, &str)] = &[
    (
        "IMC_HISTORY",
        "The REPL's history file (default ~/.imc_history); set but empty, no history is kept.",
    ),
    (
        "IMC_PASSWORD",
        "Password for a registered name: with --name, imc logs in instead of renaming; the REPL uses it when a name is registered (otherwise it asks, without echo). Sent in plain text only to a loopback address.",
    ),
];

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "imc", &mut script);
    write_out(&script)
}

/// Prints imc's man page (roff) on stdout.
pub fn man() -> Result<(), CliError> {
    let mut page = Vec::new();
    crate::man::render(Args::command(), EXIT_CODES, EXTRA_ENV, &mut page)?;
    write_out(&page)
}

/// Writes all of `bytes` to stdout; a closed pipe ends quietly (see
/// [`CliError::is_quiet`]).
fn write_out(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}
