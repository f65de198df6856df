//! Registered names (`imd --accounts`): `login|NAME|PASSWORD`, the rules
//! for who keeps a name, reloading on SIGHUP, passwords kept out of the
//! log, and imc's `IMC_PASSWORD`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use imchat::server::accounts::{hash_password, Accounts};
use imchat::server::Config;

use crate::support::{
    imd_command, node, node_with, test_config, wait_for_log, LineClient, TestServer, Transcript,
};

/// A password no other text of a session contains, so finding it in a log
/// means it leaked.
const ALICE_PW: &str = "correct-horse-7f3a";

/// An accounts file in its own directory (kept alive by the returned guard).
fn accounts_file(entries: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts");
    write_accounts(&path, entries);
    (dir, path)
}

fn write_accounts(path: &Path, entries: &[(&str, &str)]) {
    let mut text = String::from("# test accounts\n\n");
    for (name, pw) in entries {
        text.push_str(&format!("{name}:{}\n", hash_password(pw)));
    }
    std::fs::write(path, text).unwrap();
}

/// The real imd with alice registered (the file's path returned, to
/// edit), its log at `rust_log` coming back line by line.
fn binary_with_alice(rust_log: &str) -> (tempfile::TempDir, PathBuf, TestServer, Receiver<String>) {
    let (dir, path) = accounts_file(&[("alice", ALICE_PW)]);
    let (srv, log) = TestServer::start_binary_logged(
        &["--accounts", path.to_str().unwrap()],
        &[("RUST_LOG", rust_log)],
    );
    (dir, path, srv, log)
}

/// An in-process imd with these accounts; the test keeps the accounts to
/// reload them.
fn server_with(path: &Path) -> (TestServer, Arc<Accounts>) {
    let accounts = Accounts::load(path).unwrap();
    let srv = TestServer::with_config(Config {
        accounts: Some(accounts.clone()),
        ..test_config()
    });
    (srv, accounts)
}

/// [`server_with`] an accounts file that registers `alice` with
/// [`ALICE_PW`]; the directory guard keeps the file.
fn alice_registered() -> (tempfile::TempDir, TestServer, Arc<Accounts>) {
    let (dir, path) = accounts_file(&[("alice", ALICE_PW)]);
    let (srv, accounts) = server_with(&path);
    (dir, srv, accounts)
}

/// A right password: the user is told `ok login`, the others see the
/// usual rename notice, and `who` lists the name.
#[test]
fn login_takes_a_registered_name() {
    let (_dir, srv, _) = alice_registered();
    let mut bob = srv.client("bob");
    let mut a = srv.raw_client("a");
    bob.expect(&format!(r"^\*\*\* {} is online$", regex::escape(&a.name)));
    a.send(&format!("login|alice|{ALICE_PW}"));
    a.expect_next("^ok login: you are now alice$");
    bob.expect(&format!(
        r"^\*\*\* {} is now known as alice$",
        regex::escape(&a.name)
    ));
    a.send("hello");
    bob.expect("^<alice> hello$");
    assert_eq!(bob.who(), ["alice", "bob"]);
}

/// A wrong password and a name that is not registered get the very same
/// reply, which says nothing about the name; nobody else hears of it, and
/// the user keeps its name.
#[test]
fn failed_logins_give_no_hint_and_change_nothing() {
    let (_dir, srv, accounts) = alice_registered();
    let mut bob = srv.client("bob");
    let mut m = srv.client("mallory");
    m.send("login|alice|guess");
    let wrong = m.expect_next("^error auth-failed: ");
    m.send(&format!("login|nobody|{ALICE_PW}"));
    let unknown = m.expect_next("^error auth-failed: ");
    assert_eq!(
        wrong, unknown,
        "the reply tells a wrong password from an unknown name"
    );
    assert!(
        !wrong.contains("alice") && !wrong.contains("exist"),
        "{wrong}"
    );
    m.send("fence");
    bob.expect_none_before("known as alice|<alice>", "^<mallory> fence$");
    assert_eq!(accounts.failed_logins(), 2, "both failures are counted");
    assert_eq!(bob.who(), ["bob", "mallory"]);
}

/// `rename` to a registered name is refused with `name-registered`;
/// unregistered names work as before.
#[test]
fn rename_to_a_registered_name_is_refused() {
    let (_dir, srv, _) = alice_registered();
    let mut bob = srv.client("bob");
    let mut c = srv.raw_client("c");
    c.send("rename|alice");
    c.expect_next(r"^error name-registered: use login\|alice\|PASSWORD$");
    c.send("rename|carol");
    c.expect_next("^ok rename: you are now carol$");
    bob.expect(r"is now known as carol$");
    assert_eq!(bob.who(), ["bob", "carol"]);
}

/// A user that holds a name before it is registered keeps it until the
/// owner logs in: then it is renamed to its address and told why, its
/// next line goes out under its address, and everyone sees both renames.
#[test]
fn login_takes_a_name_back_from_a_user_who_did_not_log_in() {
    let (_dir, path) = accounts_file(&[("bob", "bobs-pw")]);
    let (srv, accounts) = server_with(&path);
    let mut watch = srv.client("watch");
    let mut squatter = srv.client("alice");
    let addr = squatter.name.clone();
    write_accounts(&path, &[("alice", ALICE_PW), ("bob", "bobs-pw")]);
    assert_eq!(accounts.reload().unwrap(), 2);
    let mut owner = srv.raw_client("owner");
    owner.send(&format!("login|alice|{ALICE_PW}"));
    owner.expect_next("^ok login: you are now alice$");
    squatter.expect_next(&format!(
        r"^\*\*\* renamed: you are now {} \(alice is a registered name and its owner logged in\)$",
        regex::escape(&addr)
    ));
    watch.expect(&format!(
        r"^\*\*\* alice is now known as {}$",
        regex::escape(&addr)
    ));
    watch.expect(&format!(
        r"^\*\*\* {} is now known as alice$",
        regex::escape(&owner.name)
    ));
    squatter.send("still here");
    watch.expect(&format!("^<{}> still here$", regex::escape(&addr)));
    owner.send("it is me");
    watch.expect("^<alice> it is me$");
    squatter.send("rename|alice");
    squatter.expect("^error name-registered: ");
}

/// A name held by a session that logged in cannot be taken by another
/// login with the right password: `name-taken`, and the first keeps it.
#[test]
fn a_logged_in_name_is_not_taken_by_a_second_login() {
    let (_dir, srv, _) = alice_registered();
    let mut first = srv.raw_client("first");
    first.send(&format!("login|alice|{ALICE_PW}"));
    first.expect_next("^ok login: you are now alice$");
    let mut second = srv.raw_client("second");
    second.send(&format!("login|alice|{ALICE_PW}"));
    second.expect_next("^error name-taken: ");
    second.send("fence");
    first.expect_none_before("renamed: you are now", "fence$");
    first.send("mine");
    second.expect("^<alice> mine$");
}

/// Renaming away from a logged-in name gives it up: the old holder is an
/// ordinary user under its new name (cannot rename back) and the owner
/// can log in again from elsewhere.
#[test]
fn renaming_away_gives_the_name_up() {
    let (_dir, srv, _) = alice_registered();
    let mut a = srv.raw_client("a");
    a.send(&format!("login|alice|{ALICE_PW}"));
    a.expect_next("^ok login: you are now alice$");
    a.send("rename|al");
    a.expect_next("^ok rename: you are now al$");
    a.send("rename|alice");
    a.expect_next("^error name-registered: ");
    let mut b = srv.raw_client("b");
    b.send(&format!("login|alice|{ALICE_PW}"));
    b.expect_next("^ok login: you are now alice$");
    assert_eq!(a.who(), ["al", "alice"]);
}

/// A registered name is one name in any capitals: renames to `Alice` or
/// `ALICE` are refused as registered (told to log in as the file spells
/// it), `login|ALICE|...` logs in under the
/// file's spelling `alice`, the owner may respell it (everyone is told,
/// and it still holds the name: a second login is refused), and a whisper
/// to it in any capitals gets there, answered with its spelling.
#[test]
fn a_registered_name_is_one_name_in_any_capitals() {
    let (_dir, srv, _) = alice_registered();
    let mut bob = srv.client("bob");
    let mut a = srv.raw_client("a");
    for spelling in ["Alice", "ALICE"] {
        a.send(&format!("rename|{spelling}"));
        a.expect_next(r"^error name-registered: use login\|alice\|PASSWORD$");
    }
    a.send(&format!("login|ALICE|{ALICE_PW}"));
    a.expect_next("^ok login: you are now alice$");
    bob.expect(&format!(
        r"^\*\*\* {} is now known as alice$",
        regex::escape(&a.name)
    ));
    a.send("rename|Alice");
    a.expect_next("^ok rename: you are now Alice$");
    bob.expect(r"^\*\*\* alice is now known as Alice$");
    let mut second = srv.raw_client("second");
    second.send(&format!("login|alice|{ALICE_PW}"));
    second.expect_next("^error name-taken: ");
    bob.send("to|ALICE|hi");
    bob.expect_next("^ok to Alice: hi$");
    a.expect(r"^\*bob\* hi$");
    a.send("fence");
    second.expect_none_before(r"renamed|known as|\bhi$", "^<Alice> fence$");
    assert_eq!(bob.who(), [&second.name, "Alice", "bob"], "sorted");
}

/// A registered name protects the names that only look like it: renames
/// to `adrnin` (rn looks like m) or `аdmin` (Cyrillic а) are refused and
/// told the file's spelling, `login|adrnin|...` logs in as `admin`, a
/// second login by another look-alike is told who holds it, and a whisper
/// to a look-alike reaches the owner. A name written decomposed in the file
/// (`e` + U+0301) logs in typed either way and is shown composed.
#[test]
fn a_registered_name_protects_its_look_alikes() {
    let (_dir, path) = accounts_file(&[("admin", ALICE_PW), ("e\u{301}lodie", "elodie-pw")]);
    let (srv, _accounts) = server_with(&path);
    let mut bob = srv.client("bob");
    let mut a = srv.raw_client("a");
    for alike in ["adrnin", "\u{430}dmin", "ADRNIN"] {
        a.send(&format!("rename|{alike}"));
        a.expect_next(r"^error name-registered: use login\|admin\|PASSWORD$");
    }
    a.send(&format!("login|adrnin|{ALICE_PW}"));
    a.expect_next("^ok login: you are now admin$");
    bob.expect(&format!(
        r"^\*\*\* {} is now known as admin$",
        regex::escape(&a.name)
    ));
    let mut second = srv.raw_client("second");
    second.send(&format!("login|\u{430}drnin|{ALICE_PW}"));
    second.expect_next(
        "^error name-taken: name '\u{430}drnin' is in use as admin by a session that logged in",
    );
    bob.send("to|\u{430}drnin|hi");
    bob.expect_next("^ok to admin: hi$");
    a.expect(r"^\*bob\* hi$");

    let mut e = srv.raw_client("e");
    e.send("login|e\u{301}lodie|elodie-pw");
    e.expect_next("^ok login: you are now \u{e9}lodie$");
    bob.expect("^\\*\\*\\* \\S+ is now known as \u{e9}lodie$");
    e.send("rename|elsewhere");
    e.expect_next("^ok rename: you are now elsewhere$");
    e.send("login|\u{e9}lodie|elodie-pw");
    e.expect_next("^ok login: you are now \u{e9}lodie$");
    a.send("fence");
    second.expect_none_before(r"known as admin|\bhi$", "^<admin> fence$");
    assert_eq!(bob.who(), [&second.name, "admin", "bob", "\u{e9}lodie"]);
}

/// A user holding a look-alike of a name before the name is registered
/// loses it when the owner logs in, as for other capitals.
#[test]
fn a_login_takes_back_a_look_alike_of_the_name() {
    a_login_takes_back("adrnin", "admin", "admin");
}

/// A user holding a name in other capitals before the name is registered
/// loses it when the owner logs in: both renames are announced, the owner
/// under the file's spelling.
#[test]
fn a_login_takes_back_a_name_held_in_other_capitals() {
    a_login_takes_back("ALICE", "alice", "Alice");
}

/// A user holds `squatted`; then `registered` (another spelling of it) is
/// registered, and its owner logs in typing `typed`: the squatter is moved
/// to its address and told why, and a watcher sees both renames, the
/// owner's under the file's spelling.
fn a_login_takes_back(squatted: &str, registered: &str, typed: &str) {
    let (_dir, path) = accounts_file(&[("bob", "bobs-pw")]);
    let (srv, accounts) = server_with(&path);
    let mut watch = srv.client("watch");
    let mut squatter = srv.client(squatted);
    let addr = regex::escape(&squatter.name);
    write_accounts(&path, &[(registered, ALICE_PW), ("bob", "bobs-pw")]);
    assert_eq!(accounts.reload().unwrap(), 2);
    let mut owner = srv.raw_client("owner");
    owner.send(&format!("login|{typed}|{ALICE_PW}"));
    owner.expect_next(&format!("^ok login: you are now {registered}$"));
    squatter.expect_next(&format!(
        r"^\*\*\* renamed: you are now {addr} \({registered} is a registered name and its owner logged in\)$"
    ));
    watch.expect(&format!(r"^\*\*\* {squatted} is now known as {addr}$"));
    watch.expect(&format!(
        r"^\*\*\* {} is now known as {registered}$",
        regex::escape(&owner.name)
    ));
}

fn sighup(srv: &TestServer) {
    send_signal(srv, libc::SIGHUP);
}

/// Sends `signal` to a binary server without waiting for it to exit.
fn send_signal(srv: &TestServer, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(srv.pid()).unwrap();
    // SAFETY: kill(2) on our own live child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// The real binary: an account added to the file works after SIGHUP
/// (synchronised on imd's log line), a file with one name in two
/// spellings or a broken file on the next SIGHUP keeps the accounts in
/// use, and the hash comes from `imd
/// hash-password`.
#[test]
fn sighup_reloads_the_accounts_file() {
    let hashed = imd_command()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"dave-pw\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(hashed.status.success());
    let hash = String::from_utf8(hashed.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    let (_dir, path, srv, log) = binary_with_alice("info");
    let mut d = LineClient::connect(srv.addr(), "d", Transcript::new());
    d.send("login|dave|dave-pw");
    d.expect_next("^error auth-failed: ");

    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("dave:{}", hash.trim()));
    std::fs::write(&path, &text).unwrap();
    sighup(&srv);
    wait_for_log(&log, "accounts reloaded");
    d.send("login|dave|dave-pw");
    d.expect_next("^ok login: you are now dave$");

    // Two spellings of one name: refused like any bad file, naming both.
    std::fs::write(&path, format!("{text}\nDave:{}", hash.trim())).unwrap();
    sighup(&srv);
    let err = wait_for_log(&log, "accounts not reloaded");
    assert!(
        err.contains("'Dave' and 'dave' are one name"),
        "the error names both: {err}"
    );
    d.send("login|DAVE|dave-pw");
    d.expect_next("^ok login: you are now dave$");

    std::fs::write(&path, "dave:not-a-hash\n").unwrap();
    sighup(&srv);
    let err = wait_for_log(&log, "accounts not reloaded");
    assert!(err.contains(":1:"), "the error names the line: {err}");
    let mut a = LineClient::connect(srv.addr(), "a", Transcript::new());
    a.send(&format!("login|alice|{ALICE_PW}"));
    a.expect_next("^ok login: you are now alice$");
}

/// Runs `imd --port 0 --accounts path`, which should refuse the file:
/// its exit code and stderr. If it listens instead (it prints its address
/// on stdout), it is killed and the test fails at once, not hangs.
fn imd_refusing_accounts(path: &Path) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    use std::process::Stdio;
    let mut child = imd_command()
        .args(["--port", "0", "--accounts", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    if !first.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("imd listens instead of refusing the file: {first}");
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

/// An invalid accounts file at start (a hash not Argon2id, one name in
/// two spellings): imd says which line and exits 1;
/// `hash-password` with nothing on stdin exits 2.
#[test]
fn invalid_accounts_file_at_start_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts");
    std::fs::write(
        &path,
        "# ok\nalice:$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n",
    )
    .unwrap();
    let out = imd_command()
        .args(["--port", "0", "--accounts", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("accounts:2:") && err.contains("Argon2id"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "imd must not listen");

    let h = hash_password("pw");
    std::fs::write(&path, format!("alice:{h}\nbob:{h}\nALICE:{h}\n")).unwrap();
    let (code, err) = imd_refusing_accounts(&path);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("accounts:3:") && err.contains("'ALICE' and 'alice' are one name"),
        "{err}"
    );

    let missing = imd_command()
        .args(["--port", "0", "--accounts", "/nonexistent/accounts"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));

    let empty = imd_command()
        .arg("hash-password")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(2));
}

/// At the most verbose log level, no password reaches imd's log: not a
/// right one, not a wrong one, not one in a malformed or unregistered
/// login. (The log does show the failures.)
#[test]
fn passwords_never_reach_the_log() {
    let (_dir, _, mut srv, log) = binary_with_alice("trace");
    let mut a = LineClient::connect(srv.addr(), "a", Transcript::new());
    a.send("login|alice|wrong-9d2e");
    a.expect_next("^error auth-failed");
    a.send("login|nobody|other-41c7");
    a.expect_next("^error auth-failed");
    a.send(&format!("login|alice|{ALICE_PW}"));
    a.expect_next("^ok login");
    a.send("rename|x|y-55ab");
    a.expect_next("^error bad-name");
    a.quit();
    assert!(srv.terminate().success());
    let all: Vec<String> = log.iter().collect();
    let text = all.join("\n");
    assert!(
        text.contains("login failed"),
        "failures are logged:\n{text}"
    );
    for secret in [ALICE_PW, "wrong-9d2e", "other-41c7"] {
        assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
    }
}

/// SIGTERM does not wait for a login held back by the brake: after six
/// failures from 127.0.0.1 the next login waits 16 s, longer than the
/// test's own timeouts (and than imd's shutdown backstop, twice the 5 s
/// grace), yet its client gets the usual bye and EOF at once, and imd
/// exits 0.
#[test]
fn shutdown_does_not_wait_for_a_login_on_the_brake() {
    let (_dir, _, mut srv, log) = binary_with_alice("info,imchat::server::accounts=debug");
    // Six wrong passwords at once: each is checked (none waits long
    // enough to be refused unchecked) and fails.
    let mut guessers: Vec<LineClient> = (0..6)
        .map(|i| LineClient::connect(srv.addr(), &format!("g{i}"), srv.transcript.clone()))
        .collect();
    for (i, g) in guessers.iter_mut().enumerate() {
        g.send(&format!("login|alice|guess-{i}"));
    }
    for g in &mut guessers {
        g.expect_next("^error auth-failed: ");
    }
    let mut w = LineClient::connect(srv.addr(), "waiter", srv.transcript.clone());
    w.send(&format!("login|alice|{ALICE_PW}"));
    let held = wait_for_log(&log, "login held back");
    let wait = regex::Regex::new(r"wait=([0-9.]+)s\b")
        .unwrap()
        .captures(&held)
        .and_then(|c| c[1].parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no wait in seconds in {held:?}"));
    assert!(
        wait > 10.0,
        "the login must wait longer than the test's timeouts: {held}"
    );
    send_signal(&srv, libc::SIGTERM);
    w.expect_next(r"^\*\*\* bye: server shutting down$");
    let rest = w.expect_closed();
    assert!(!rest.contains("ok login"), "the login went on: {rest:?}");
    for g in &mut guessers {
        g.expect(r"^\*\*\* bye: server shutting down$");
    }
    wait_for_log(&log, "stopped");
    // The log ends when imd exits.
    assert!(log.iter().all(|l| !l.contains("login failed")));
    assert!(srv.wait().success());
}

/// `imc --name alice` with IMC_PASSWORD logs in and sends (bob sees the
/// rename and the message); with a wrong password it exits 1 with the
/// server's reason and sends nothing.
#[test]
fn imc_logs_in_with_imc_password() {
    let (_dir, srv, _) = alice_registered();
    let mut bob = srv.client("bob");
    srv.imc()
        .env("IMC_PASSWORD", ALICE_PW)
        .args(["--name", "alice", "send", "signed", "in"])
        .assert()
        .success();
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
    bob.expect("^<alice> signed in$");

    srv.imc()
        .env("IMC_PASSWORD", "wrong")
        .args(["--name", "alice", "send", "should not arrive"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("(auth-failed)"));
    bob.expect_none_before("should not arrive|known as alice", r"is offline \(quit\)$");
}

/// `imc send/whisper/listen --name alice` without IMC_PASSWORD, alice
/// being registered: exit 1 (refused), and stderr says how to log in, not
/// the protocol's `use login|alice|PASSWORD`; nothing reaches bob.
#[test]
fn imc_says_how_to_log_in_when_the_name_is_registered() {
    let (_dir, path) = accounts_file(&[("alice", ALICE_PW)]);
    let (srv, _) = server_with(&path);
    let mut bob = srv.client("bob");
    let commands: [&[&str]; 3] = [
        &["send", "not sent"],
        &["whisper", "bob", "not whispered"],
        &["listen", "--count", "1"],
    ];
    for command in commands {
        let out = srv
            .imc()
            .args(["--name", "alice"])
            .args(command)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            "imc: 'alice' is a registered name: set IMC_PASSWORD to log in as it (or run \
             `imc repl --name alice` at a terminal, which asks for the password) \
             (name-registered)",
            "{command:?}"
        );
        assert!(out.stdout.is_empty(), "{command:?}");
        // Each imc's connection came and went; alice never spoke.
        bob.expect_none_before(
            "not sent|not whispered|known as alice",
            r"is offline \(quit\)$",
        );
    }
}

/// `imc rename alice`, alice being registered: without IMC_PASSWORD, exit
/// 1 with the same hint as `--name`; with it, a login, and bob sees alice
/// arrive.
#[test]
fn imc_rename_to_a_registered_name_logs_in_with_imc_password() {
    let (_dir, srv, _) = alice_registered();
    let mut bob = srv.client("bob");
    let out = srv.imc().args(["rename", "alice"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("'alice' is a registered name: set IMC_PASSWORD to log in as it"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    srv.imc()
        .env("IMC_PASSWORD", ALICE_PW)
        .args(["rename", "alice"])
        .assert()
        .success()
        .stdout("you are now alice\n");
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
}

/// The REPL, when a new name is registered, logs in with IMC_PASSWORD
/// (here with piped stdin, where it cannot prompt).
#[test]
fn repl_logs_in_when_the_name_is_registered() {
    let (_dir, srv, _) = alice_registered();
    let mut bob = srv.client("bob");
    srv.imc()
        .env("IMC_PASSWORD", ALICE_PW)
        .write_stdin("3\nalice\n0\n")
        .assert()
        .success()
        .stdout(predicates::str::contains("ok login: you are now alice"));
    bob.expect(r"^\*\*\* \S+ is now known as alice$");
}

/// In a cluster a login claims the name across the nodes like a rename,
/// and cannot take a name back from a user of another node: that gets
/// `name-taken` (here the other node runs without the accounts file,
/// which PROTOCOL.md warns against, so its user could take the name).
/// Once that user leaves, the login works and the other node sees the
/// rename; a second login to the name on its node is refused without
/// releasing the claim, so a rename there to the logged-in name is then
/// refused.
#[test]
fn cluster_login_claims_the_name_and_respects_other_nodes() {
    let redis = crate::support::RedisServer::start();
    let (_dir, path) = accounts_file(&[("alice", ALICE_PW)]);
    let n1 = node_with(&redis, &["--accounts", path.to_str().unwrap()], &[]);
    let n2 = node(&redis);
    let mut squatter = n2.client("alice");
    let mut watch = n2.client("watch");
    let mut owner = n1.raw_client("owner");
    owner.send(&format!("login|alice|{ALICE_PW}"));
    owner.expect_next("^error name-taken: ");
    squatter.send("fence");
    squatter.expect("^<alice> fence$");
    squatter.quit();
    watch.expect(r"^\*\*\* alice is offline \(quit\)$");
    owner.send(&format!("login|alice|{ALICE_PW}"));
    owner.expect("^ok login: you are now alice$");
    watch.expect(&format!(
        r"^\*\*\* {} is now known as alice$",
        regex::escape(&owner.name)
    ));
    // A second login on the holder's node is refused, and must not give up
    // the holder's claim in the cluster (the rename below would then win).
    let mut second = n1.raw_client("second");
    second.send(&format!("login|alice|{ALICE_PW}"));
    second.expect_next("^error name-taken: ");
    watch.send("rename|alice");
    watch.expect("^error name-taken: ");
}

/// `imd_failed_logins_total` counts failed logins (and `imd_errors_total`
/// their `auth-failed` replies); a successful login is not counted.
#[test]
fn failed_logins_are_counted_in_the_metrics() {
    let (_dir, path) = accounts_file(&[("alice", ALICE_PW)]);
    let (srv, metrics) =
        TestServer::start_binary_with_metrics(&["--accounts", path.to_str().unwrap()]);
    let mut a = LineClient::connect(srv.addr(), "a", Transcript::new());
    a.send("login|alice|wrong");
    a.expect_next("^error auth-failed: ");
    a.send(&format!("login|alice|{ALICE_PW}"));
    a.expect_next("^ok login: ");
    let got = crate::metrics::scrape_until(
        metrics,
        &[
            ("imd_failed_logins_total", 1),
            ("imd_errors_total{code=\"auth-failed\"}", 1),
        ],
    );
    assert_eq!(got.get("imd_failed_logins_total"), Some(&1));
}
