//! The generated command-line docs: `imc completions SHELL`, `imc man` and
//! `imd --man`. The bash script must parse and really complete imc's
//! commands; the zsh and fish scripts must name them (and parse, where
//! those shells are installed); the man pages must render without a
//! warning (groff, else `man -l`; skipped, with a message, where neither
//! exists) and list the exit codes and every variable `--help` lists.

use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;

use crate::support::{imd_command, without_settings};

fn imc_command() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("imc"));
    without_settings(&mut cmd);
    cmd
}

/// Runs `cmd` and returns its stdout, failing the test unless it exits 0.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `program` can be run (it is on PATH).
fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// imc's commands, as `imc --help` lists them.
fn imc_commands() -> Vec<String> {
    imchat::client::cli::Args::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

/// Writes `text` to a file in a fresh temporary folder.
fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// What the bash completion function offers for `words`, the last being the
/// word under the cursor.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let line = words.join(" ");
    let cur = words[cword];
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let code = format!(
        "source '{}' || exit 9; COMP_WORDS=({}); COMP_CWORD={cword}; \
         COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; \
         _imc imc '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" ")
    );
    stdout_of(Command::new("bash").arg("-c").arg(code))
        .lines()
        .map(str::to_string)
        .collect()
}

/// The bash script parses (`bash -n`), and sourced into bash it completes
/// imc's commands: all of them after `imc`, and `whisper`/`who` for `imc w`.
#[test]
fn bash_completion_parses_and_completes_commands() {
    let script = stdout_of(imc_command().args(["completions", "bash"]));
    let (_dir, path) = temp_file("imc.bash", &script);
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "bash -n: {check:?}");

    let all = bash_completes(&path, &["imc", ""]);
    for cmd in imc_commands() {
        assert!(all.contains(&cmd), "`imc <TAB>` lacks {cmd}: {all:?}");
    }
    assert!(all.contains(&"send".to_string()) && all.contains(&"whisper".to_string()));
    let w = bash_completes(&path, &["imc", "w"]);
    assert_eq!(w, ["whisper", "who"], "`imc w<TAB>`");
}

/// The zsh and fish scripts name every command, and parse (`zsh -n`,
/// `fish -n`) where that shell is installed.
#[test]
fn zsh_and_fish_completions_name_every_command() {
    for shell in ["zsh", "fish"] {
        let script = stdout_of(imc_command().args(["completions", shell]));
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for cmd in imc_commands() {
            assert!(script.contains(&cmd), "{shell} script lacks {cmd}");
        }
        if installed(shell) {
            let (_dir, path) = temp_file("imc.completion", &script);
            let check = Command::new(shell).arg("-n").arg(&path).output().unwrap();
            assert!(check.status.success(), "{shell} -n: {check:?}");
        } else {
            eprintln!("skipped `{shell} -n`: {shell} is not installed");
        }
    }
}

/// Renders the roff page at `path` as plain text, wide enough not to wrap,
/// with whatever is there (groff, else man); `None` if neither is. Fails
/// the test on a warning.
fn render(path: &Path) -> Option<String> {
    let out: Output = if installed("groff") {
        // -ww: every warning; -P-cbou: plain text, no bold or underlining.
        Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P-cbou", "-rLL=200n"])
            .arg(path)
            .output()
            .unwrap()
    } else if installed("man") {
        Command::new("man")
            .arg("--warnings")
            .arg("-l")
            .arg(path)
            .env("MANWIDTH", "200")
            .env("MANPAGER", "cat")
            .output()
            .unwrap()
    } else {
        return None;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "rendering {} warned: {stderr}",
        path.display()
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The lines of `text` from the heading `name` to the next heading.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != name)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// Checks the man page `bin` prints with `man_args` against its `--help`:
/// it renders without warnings, and its ENVIRONMENT and EXIT STATUS list
/// every variable (`[env: NAME=`) and every exit code `--help` shows.
fn check_man_page(bin: &str, mut man: Command, mut help: Command, extra_env: &[&str]) {
    let page = stdout_of(&mut man);
    let help = stdout_of(help.arg("--help"));
    let (_dir, path) = temp_file(&format!("{bin}.1"), &page);
    let Some(text) = render(&path) else {
        eprintln!("skipped rendering {bin}.1: neither groff nor man is installed");
        return;
    };
    // groff -Tutf8 prints \- as U+2212.
    let text = text.replace('\u{2212}', "-");

    let vars: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .collect();
    assert!(vars.len() >= 4, "{bin} --help lists no variables: {help}");
    let env = section(&text, "ENVIRONMENT");
    for var in vars.iter().chain(extra_env) {
        assert!(
            env.iter().any(|l| l.trim().starts_with(var)),
            "{bin}.1's ENVIRONMENT lacks {var}:\n{}",
            env.join("\n")
        );
    }

    let codes: Vec<(&str, String)> = help
        .lines()
        .skip_while(|l| !l.starts_with("Exit status"))
        .filter_map(|l| {
            let (code, meaning) = l.trim_start().split_once("  ")?;
            code.parse::<u8>().ok()?;
            let start: Vec<&str> = meaning.split_whitespace().take(3).collect();
            Some((code, start.join(" ")))
        })
        .collect();
    assert!(codes.len() >= 3, "{bin} --help lists no exit codes: {help}");
    let exit = section(&text, "EXIT STATUS");
    for (code, start) in &codes {
        assert!(
            exit.iter().any(|l| {
                let l = l.trim_start();
                l.strip_prefix(code).is_some_and(|rest| {
                    rest.starts_with(' ') && rest.trim_start().starts_with(start.as_str())
                })
            }),
            "{bin}.1's EXIT STATUS lacks `{code}  {start}`:\n{}",
            exit.join("\n")
        );
    }
}

/// `imc man` renders cleanly and lists imc's exit codes and variables.
#[test]
fn imc_man_page_lists_exit_codes_and_environment() {
    let mut man = imc_command();
    man.arg("man");
    check_man_page("imc", man, imc_command(), &["IMC_HISTORY"]);
}

/// `imd --man` renders cleanly and lists imd's exit codes and variables.
#[test]
fn imd_man_page_lists_exit_codes_and_environment() {
    let mut man = imd_command();
    man.arg("--man");
    check_man_page("imd", man, imd_command(), &["RUST_LOG"]);
}
