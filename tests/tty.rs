//! imc's interactive REPL on a real terminal: rustyline, line editing and
//! incoming lines printed through its ExternalPrinter. The program runs in
//! a pseudo-terminal driven by tests/support/pty_drive.py (Python's `pty`).

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use crate::support::TestServer;

/// A REPL in a pseudo-terminal, and the driver's command channel.
struct Tty {
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    child: std::process::Child,
}

impl Tty {
    fn start(srv: &TestServer, args: &[&str]) -> Tty {
        Tty::start_env(srv, args, &[])
    }

    /// [`Tty::start`] with extra environment variables.
    fn start_env(srv: &TestServer, args: &[&str], env: &[(&str, &str)]) -> Tty {
        let mut cmd = Tty::command("imc");
        cmd.args(args)
            .env("HOME", srv.home())
            .env("IMC_HISTORY", srv.home().join("history"))
            .env("IMC_IP", srv.addr().ip().to_string())
            .env("IMC_PORT", srv.port().to_string())
            .envs(env.iter().copied());
        Tty::run(cmd)
    }

    /// The driver running this package's `binary` in a pseudo-terminal,
    /// with a clean environment (PATH and TERM only); add the arguments.
    fn command(binary: &str) -> Command {
        let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pty_drive.py");
        let mut cmd = Command::new("python3");
        cmd.arg(driver)
            .arg(assert_cmd::cargo::cargo_bin(binary))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "xterm");
        cmd
    }

    /// Starts the driver `cmd` from [`Tty::command`].
    fn run(mut cmd: Command) -> Tty {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the pty driver");
        Tty {
            to: child.stdin.take().unwrap(),
            from: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    /// Sends one driver command and returns its answer.
    fn cmd(&mut self, c: &str) -> String {
        writeln!(self.to, "{c}").unwrap();
        self.to.flush().unwrap();
        let mut answer = String::new();
        self.from.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    }

    fn expect(&mut self, text: &str) {
        let a = self.cmd(&format!("expect {text}"));
        assert_eq!(a, "ok", "terminal never showed {text:?}");
    }

    fn typed(&mut self, text: &str) {
        assert_eq!(self.cmd(&format!("type {text}")), "ok");
    }

    /// Presses keys without Enter; `keys` uses Python escapes (`\\t`).
    fn keys(&mut self, keys: &str) {
        assert_eq!(self.cmd(&format!("keys {keys}")), "ok");
    }

    /// From the menu into public talk (menu 1).
    fn open_public_talk(&mut self) {
        self.expect("menu> ");
        self.typed("1");
        self.expect("public> ");
    }

    /// Waits until imc has shown `confirmation` for the line just sent
    /// and is back at `prompt`: keys pressed before rustyline has the
    /// terminal again would reach the kernel's line editing instead
    /// (Ctrl-D there is lost).
    fn confirmed(&mut self, confirmation: &str, prompt: &str) {
        self.expect(confirmation);
        self.expect(prompt);
    }

    /// `exit` leaves public talk, then Ctrl-D at the menu: exit 0.
    fn leave_and_quit(&mut self) {
        self.typed("exit");
        self.expect("menu> ");
        self.quit_at_menu();
    }

    /// Ctrl-D at the menu: imc exits 0.
    fn quit_at_menu(&mut self) {
        assert_eq!(self.cmd("ctrl-d"), "ok");
        assert_eq!(self.cmd("wait"), "exit 0");
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On a terminal: the menu, public talk, a message from someone else shown
/// while typing, and history written to IMC_HISTORY on exit.
#[test]
fn interactive_repl_on_a_terminal() {
    let srv = TestServer::start();
    let mut bob = srv.client("bob");
    let mut tty = Tty::start(&srv, &["--name", "alice"]);
    // The prompt shows once rustyline has the terminal in raw mode; keys
    // typed before that would go to the kernel's line editing instead.
    tty.expect("menu> ");
    bob.expect(r"is now known as alice$");
    tty.typed("1");
    tty.expect("public> ");
    tty.typed("hello from a terminal");
    bob.expect("^<alice> hello from a terminal$");
    // Arrives while alice's prompt is waiting: printed above it.
    bob.send("hi alice, from bob");
    tty.expect("<bob> hi alice, from bob");
    tty.expect("public> ");
    tty.typed("exit");
    tty.expect("menu> ");
    tty.typed("0");
    assert_eq!(tty.cmd("wait"), "exit 0");
    let history = std::fs::read_to_string(srv.home().join("history")).unwrap();
    assert!(history.contains("hello from a terminal"), "{history:?}");
}

/// On a terminal, Ctrl-D at the menu exits cleanly (status 0).
#[test]
fn ctrl_d_at_the_menu_exits() {
    let srv = TestServer::start();
    let mut tty = Tty::start(&srv, &[]);
    tty.expect("menu> ");
    assert_eq!(tty.cmd("ctrl-d"), "ok");
    assert_eq!(tty.cmd("wait"), "exit 0");
}

/// Tab completes an online name when private talk asks for one.
#[test]
fn tab_completes_an_online_name() {
    let srv = TestServer::start();
    let mut bob = srv.client("bob");
    let mut tty = Tty::start(&srv, &["--name", "alice"]);
    tty.expect("menu> ");
    tty.typed("2");
    tty.expect("to whom> ");
    tty.keys(r"bo\t\r");
    tty.expect("to bob> ");
    tty.typed("completed");
    bob.expect(r"^\*alice\* completed$");
    tty.confirmed("ok to bob: completed", "to bob> ");
    tty.keys(r"\x04");
    tty.expect("menu> ");
    tty.quit_at_menu();
}

/// A line sent in one run is recalled with Up in the next (history kept
/// in IMC_HISTORY across runs).
#[test]
fn history_is_recalled_in_the_next_run() {
    let srv = TestServer::start();
    let mut bob = srv.client("bob");
    for run in 0..2 {
        let mut tty = Tty::start(&srv, &["--name", "alice"]);
        tty.open_public_talk();
        if run == 0 {
            tty.typed("worth repeating");
        } else {
            tty.keys(r"\x1b[A\r");
        }
        bob.expect_next("^<alice> worth repeating$");
        tty.confirmed("<alice> worth repeating", "public> ");
        tty.leave_and_quit();
        bob.expect(r"^\*\*\* alice is offline \(quit\)$");
    }
}

/// `IMC_HISTORY=""` keeps no history: nothing is written anywhere in HOME.
#[test]
fn empty_imc_history_keeps_none() {
    let srv = TestServer::start();
    let mut bob = srv.client("bob");
    let mut tty = Tty::start_env(&srv, &["--name", "alice"], &[("IMC_HISTORY", "")]);
    tty.open_public_talk();
    tty.typed("not to be kept");
    bob.expect("^<alice> not to be kept$");
    tty.confirmed("<alice> not to be kept", "public> ");
    tty.leave_and_quit();
    let files: Vec<_> = std::fs::read_dir(srv.home())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(files.is_empty(), "{files:?}");
}

/// Inside a mode, Ctrl-C cancels the line being typed (nothing is sent,
/// the mode goes on) and Ctrl-D leaves the mode for the menu.
#[test]
fn ctrl_c_and_ctrl_d_inside_a_mode() {
    let srv = TestServer::start();
    let mut bob = srv.client("bob");
    let mut tty = Tty::start(&srv, &["--name", "alice"]);
    tty.open_public_talk();
    tty.keys(r"half typed\x03");
    tty.expect("public> ");
    tty.typed("whole line");
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
    bob.expect_next("^<alice> whole line$");
    tty.confirmed("<alice> whole line", "public> ");
    tty.keys(r"\x04");
    tty.expect("menu> ");
    tty.quit_at_menu();
}

/// An in-process imd where alice is registered with `password` (the
/// accounts file lives as long as the returned directory).
fn server_with_alice(password: &str) -> (tempfile::TempDir, TestServer) {
    use imchat::server::accounts::{hash_password, Accounts};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts");
    std::fs::write(&path, format!("alice:{}\n", hash_password(password))).unwrap();
    let srv = TestServer::with_config(imchat::server::Config {
        accounts: Some(Accounts::load(&path).unwrap()),
        ..crate::support::test_config()
    });
    (dir, srv)
}

/// On a terminal, choosing a registered name asks for its password
/// without echo and logs in; the password shows neither on the terminal
/// nor in the history file.
#[test]
fn registered_name_asks_for_the_password_without_echo() {
    const PW: &str = "tty-secret-93";
    let (_dir, srv) = server_with_alice(PW);
    let mut bob = srv.client("bob");
    let mut tty = Tty::start(&srv, &[]);
    tty.expect("menu> ");
    tty.typed("3");
    tty.expect("new name> ");
    tty.typed("alice");
    tty.expect("password for alice: ");
    tty.typed(PW);
    tty.expect("ok login: you are now alice");
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
    tty.typed("1");
    tty.expect("public> ");
    tty.typed("hello as alice");
    bob.expect("^<alice> hello as alice$");
    tty.confirmed("<alice> hello as alice", "public> ");
    let screen = tty.cmd("dump");
    assert!(!screen.contains(PW), "the password was echoed: {screen}");
    tty.leave_and_quit();
    let history = std::fs::read_to_string(srv.home().join("history")).unwrap_or_default();
    assert!(
        history.contains("hello as alice"),
        "history was written: {history:?}"
    );
    assert!(!history.contains(PW), "the password is in the history");
}

/// `imc --name alice` at a terminal, alice registered and no
/// IMC_PASSWORD: imc asks for the password without echo and logs in
/// before the menu; bob sees the rename and alice's first line.
#[test]
fn registered_name_on_the_command_line_asks_for_the_password() {
    const PW: &str = "at-start-77c2";
    let (_dir, srv) = server_with_alice(PW);
    let mut bob = srv.client("bob");
    let mut tty = Tty::start(&srv, &["--name", "alice"]);
    tty.expect("password for alice: ");
    tty.typed(PW);
    tty.expect("as alice");
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
    tty.open_public_talk();
    tty.typed("logged in at start");
    bob.expect_next("^<alice> logged in at start$");
    tty.confirmed("<alice> logged in at start", "public> ");
    let screen = tty.cmd("dump");
    assert!(!screen.contains(PW), "the password was echoed: {screen}");
    tty.leave_and_quit();
}

/// `imd hash-password` at a terminal asks twice without echo and prints a
/// hash that verifies against the typed password; the password never
/// shows on the terminal.
#[test]
fn hash_password_at_a_terminal_asks_twice_without_echo() {
    const PW: &str = "typed-not-shown-4b1d";
    let mut tty = Tty::run({
        let mut cmd = Tty::command("imd");
        cmd.arg("hash-password");
        cmd
    });
    tty.expect("Password: ");
    tty.typed(PW);
    tty.expect("Again: ");
    tty.typed(PW);
    tty.expect("$argon2id$");
    assert_eq!(tty.cmd("wait"), "exit 0");
    let screen = tty.cmd("dump");
    assert!(!screen.contains(PW), "the password was echoed: {screen}");
    let hash =
        regex::Regex::new(r"\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+")
            .unwrap()
            .find(&screen)
            .unwrap_or_else(|| panic!("no hash on the terminal: {screen}"))
            .as_str()
            .to_string();
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(&hash).unwrap();
    assert!(
        Argon2::default()
            .verify_password(PW.as_bytes(), &parsed)
            .is_ok(),
        "{hash} is not the hash of the typed password"
    );
    assert!(Argon2::default()
        .verify_password(b"something else", &parsed)
        .is_err());
}

/// `imd hash-password` at a terminal: two different passwords print no
/// hash, say why, and exit 2.
#[test]
fn hash_password_refuses_a_mismatch() {
    let mut tty = Tty::run({
        let mut cmd = Tty::command("imd");
        cmd.arg("hash-password");
        cmd
    });
    tty.expect("Password: ");
    tty.typed("first-try-1");
    tty.expect("Again: ");
    tty.typed("first-try-2");
    tty.expect("the passwords do not match");
    assert_eq!(tty.cmd("wait"), "exit 2");
    let screen = tty.cmd("dump");
    assert!(!screen.contains("$argon2"), "a hash was printed: {screen}");
    assert!(
        !screen.contains("first-try"),
        "a password was echoed: {screen}"
    );
}

/// Ctrl-C at a password prompt ends the program as Ctrl-C does (killed by
/// SIGINT, no hash), and the terminal echoes again afterwards: the
/// settings are put back before the signal, not left to the shell.
/// Ctrl-\ likewise, with SIGQUIT.
#[test]
fn interrupting_the_password_prompt_gives_the_terminal_back() {
    for (key, signal) in [("\\x03", libc::SIGINT), ("\\x1c", libc::SIGQUIT)] {
        let mut tty = Tty::run({
            let mut cmd = Tty::command("imd");
            cmd.arg("hash-password");
            cmd
        });
        tty.expect("Password: ");
        assert_eq!(tty.cmd("echo?"), "echo off", "the prompt hides the typing");
        tty.cmd(&format!("keys half-typed{key}"));
        assert_eq!(tty.cmd("wait"), format!("exit -{signal}"), "{key}");
        assert_eq!(tty.cmd("echo?"), "echo on", "{key}: echo left off");
        let screen = tty.cmd("dump");
        assert!(!screen.contains("$argon2"), "a hash was printed: {screen}");
        assert!(!screen.contains("half-typed"), "echoed: {screen}");
    }
}
