//! Man pages for both binaries, rendered from their clap definitions by
//! clap_mangen, so a page cannot drift from `--help`.
//!
//! clap_mangen renders NAME, SYNOPSIS, DESCRIPTION, OPTIONS (each option
//! says which environment variable also sets it) and VERSION. This adds
//! COMMANDS (see `subcommands`) and the two sections a user of a server
//! or a script looks for first and that clap has no place for: ENVIRONMENT
//! (every `env` of the definition, plus the variables read outside clap)
//! and EXIT STATUS (the binary's exit-code table, the same text `--help`
//! ends with).

use std::io::{self, Write};

/// Writes `cmd`'s man page (roff) to `out`.
///
/// `exit_codes` is the table `--help` shows after the options, in the form
/// both binaries use: optional lines of introduction, then one item per
/// code, `  N  meaning`, continued on more indented lines. `extra_env`
/// lists variables read outside clap (`RUST_LOG`, `IMC_HISTORY`) with what
/// they do.
pub fn render(
    cmd: clap::Command,
    exit_codes: &str,
    extra_env: &[(&str, &str)],
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let env = environment(&cmd, extra_env);
    let commands = subcommands(&cmd);
    let has_subcommands = cmd.get_subcommands().any(|c| !c.is_hide_set());
    let man = clap_mangen::Man::new(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    if has_subcommands {
        out.write_all(commands.as_bytes())?;
    }
    out.write_all(env.as_bytes())?;
    out.write_all(exit_status(exit_codes).as_bytes())?;
    man.render_version_section(out)
}

/// The COMMANDS section: each subcommand, named as it is typed (`imc
/// send`), with its summary. clap_mangen's own section points to a page per
/// subcommand (imc-send(1)), which is not installed; `--help` has the rest.
fn subcommands(cmd: &clap::Command) -> String {
    let name = cmd.get_name();
    let mut s = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        s += &format!(
            ".TP\n.B {name} {}\n{}\n",
            escape(sub.get_name()),
            escape(&about)
        );
    }
    s += &format!(
        ".PP\nEach command's own options: \\fB{} COMMAND \\-\\-help\\fR.\n",
        escape(name)
    );
    s
}

/// The ENVIRONMENT section: each variable clap reads (for the option it
/// sets a default for), then `extra`.
fn environment(cmd: &clap::Command, extra: &[(&str, &str)]) -> String {
    let mut s = String::from(".SH ENVIRONMENT\n");
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_env_set()) {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        s += &format!(
            ".TP\n.B {}\nUsed for \\fB\\-\\-{}\\fR when that option is not given.\n",
            escape(&var.to_string_lossy()),
            escape(long)
        );
    }
    for (var, what) in extra {
        s += &format!(".TP\n.B {}\n{}\n", escape(var), escape(what));
    }
    s
}

/// The EXIT STATUS section, from the `--help` table (see [`render`]).
fn exit_status(table: &str) -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for line in table.lines() {
        let trimmed = line.trim_start();
        let code_len = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        if code_len > 0 && trimmed[code_len..].starts_with("  ") {
            s += &format!(
                ".TP\n.B {}\n{}\n",
                &trimmed[..code_len],
                escape(trimmed[code_len..].trim())
            );
        } else if !trimmed.is_empty() {
            s += &format!("{}\n", escape(trimmed));
        }
    }
    s
}

/// `text` as roff input text: backslashes and hyphens escaped, and a
/// leading `.` or `'` kept from being read as a request.
fn escape(text: &str) -> String {
    let s = text.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each code of the table becomes one tagged paragraph, with its
    /// continuation lines, and roff's special characters are escaped.
    #[test]
    fn exit_codes_become_tagged_paragraphs() {
        let roff = exit_status("Exit status:\n  0  fine\n  2  bad -x,\n     .or worse\n");
        assert_eq!(
            roff,
            ".SH \"EXIT STATUS\"\nExit status:\n.TP\n.B 0\nfine\n.TP\n.B 2\nbad \\-x,\n\\&.or worse\n"
        );
    }
}
