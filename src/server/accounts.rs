//! Registered names (`imd --accounts FILE`): the file, password checks,
//! reloading, and the brake on guessing.
//!
//! The file has one account a line:
//!
//! ```text
//! # comments and blank lines are ignored
//! alice:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$...
//! NAME:HASH
//! ```
//!
//! NAME follows the name rules of PROTOCOL.md, and is taken in NFC form as
//! a chosen name is (an editor that writes `é` as `e` + U+0301 makes the
//! same account); HASH is an Argon2id PHC string, as `imd hash-password`
//! prints it. Spaces around either are ignored. A name listed twice (also
//! in other capitals or in letters that only look alike: `alice`, `Alice`
//! and `аlice` are one name, as are `admin` and `adrnin`, see
//! [`name_key`]), a bad name or a hash that is not Argon2id makes the whole
//! file invalid: at start imd exits 1, on a reload (SIGHUP) the accounts in
//! use are kept and the error is logged.
//!
//! # Checking a password
//!
//! Argon2id costs tens of milliseconds of CPU and 19 MiB by design, so it
//! runs on tokio's blocking threads, never on the async workers that move
//! chat lines, and at most [`MAX_VERIFYING`] at once (the rest wait their
//! turn): a flood of logins costs login latency, not chat latency. A name
//! that is not registered is checked against a dummy hash with the same
//! parameters, so neither the answer nor its timing says whether a name
//! exists. Failures go through the [`Throttle`] of their address first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use password_hash::rand_core::OsRng;
use password_hash::SaltString;
use tokio::sync::Semaphore;

use super::throttle::Throttle;
use crate::protocol::{chosen_name, lookup_key, name_key, nfc};

/// Most password checks running at once. Each holds 19 MiB and a core for
/// tens of milliseconds; four bound that to under 80 MiB and leave cores
/// for the chat on any machine with more than four.
pub const MAX_VERIFYING: usize = 4;

/// Why the accounts file cannot be used. The message names the file and
/// line, never a hash.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The file cannot be read.
    #[error("cannot read accounts file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A line of it is wrong.
    #[error("{path}:{line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: String,
    },
}

/// One registered name.
#[derive(Clone)]
pub struct Account {
    /// The name as the file spells it (in NFC form): what a user who logs
    /// in is called, whatever capitals or look-alike letters they typed.
    pub name: String,
    /// Its Argon2id PHC string.
    pub hash: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hash.
        f.debug_struct("Account")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The registered names, keyed by their [`name_key`], so a lookup in any
/// capitals, or by a look-alike (`adrnin` for `admin`), finds the account.
pub type Table = HashMap<String, Account>;

/// The registered names and the state of logins: the table from the file
/// (swapped whole on reload), the brake per address, and the count of
/// failures.
pub struct Accounts {
    path: Option<PathBuf>,
    /// NAME's [`name_key`] → its account. Read on every login and rename,
    /// written only by a reload, which swaps in a whole new table.
    table: RwLock<Arc<Table>>,
    /// A hash of a random password with the default parameters, checked
    /// for names that are not registered.
    dummy: String,
    /// [`MAX_VERIFYING`] permits. A check's permit goes to its blocking
    /// thread and is given back when the hash is done, not when the
    /// login that asked stops waiting (at shutdown): the bound holds for
    /// the work itself.
    verifying: Arc<Semaphore>,
    /// Whether a password matches a PHC hash: [`argon2_matches`]; the
    /// unit tests put in one that counts and holds the checks.
    matches: fn(&str, &str) -> bool,
    /// Password checks handed to a blocking thread since the start.
    checks: AtomicU64,
    throttle: Mutex<Throttle>,
    failed: AtomicU64,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        f.debug_struct("Accounts")
            .field("path", &self.path)
            .field("names", &self.read().len())
            .finish_non_exhaustive()
    }
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password is the name's.
    Accepted,
    /// Wrong password, or no such name (deliberately not told apart).
    Rejected,
}

/// Hashes `password` for the accounts file: Argon2id with the argon2
/// crate's default (OWASP) parameters and a random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 with default parameters and a fresh salt cannot fail")
        .to_string()
}

/// Parses an accounts file's text; `path` is only for the messages.
pub fn parse(path: &str, text: &str) -> Result<Table, AccountsError> {
    let mut table = Table::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| AccountsError::Line {
            path: path.to_string(),
            line: i + 1,
            why,
        };
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| bad("expected NAME:HASH".into()))?;
        let hash = hash.trim();
        let name = chosen_name(name.trim()).map_err(|e| bad(format!("invalid name: {e}")))?;
        let name = name.as_ref();
        let parsed = PasswordHash::new(hash)
            .map_err(|e| bad(format!("'{name}': not a PHC hash string ({e})")))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(bad(format!(
                "'{name}': the hash must be Argon2id (imd hash-password), not {}",
                parsed.algorithm
            )));
        }
        if parsed.hash.is_none() || parsed.salt.is_none() {
            return Err(bad(format!(
                "'{name}': the hash has no salt or no hash value"
            )));
        }
        if let Err(e) = argon2::Params::try_from(&parsed) {
            return Err(bad(format!("'{name}': bad Argon2 parameters ({e})")));
        }
        let account = Account {
            name: name.to_string(),
            hash: hash.to_string(),
        };
        if let Some(first) = table.insert(name_key(name), account) {
            return Err(bad(if first.name == name {
                format!("'{name}' is listed twice")
            } else {
                format!(
                    "'{name}' and '{}' are one name (names that differ only in case, or \
                     only look alike, are the same name)",
                    first.name
                )
            }));
        }
    }
    Ok(table)
}

fn read_file(path: &Path) -> Result<Table, AccountsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

impl Accounts {
    /// Loads the accounts file at `path`.
    pub fn load(path: &Path) -> Result<Arc<Accounts>, AccountsError> {
        let table = read_file(path)?;
        Ok(Accounts::build(Some(path.to_path_buf()), table))
    }

    /// Accounts from NAME → hash pairs in memory (tests; `reload` then
    /// keeps them).
    pub fn from_table(table: HashMap<String, String>) -> Arc<Accounts> {
        Accounts::build(None, table_of(table))
    }

    fn build(path: Option<PathBuf>, table: Table) -> Arc<Accounts> {
        Arc::new(Accounts::new(path, table, argon2_matches))
    }

    fn new(path: Option<PathBuf>, table: Table, matches: fn(&str, &str) -> bool) -> Accounts {
        Accounts {
            path,
            table: RwLock::new(Arc::new(table)),
            dummy: hash_password(&format!("{:x}", rand_u64())),
            verifying: Arc::new(Semaphore::new(MAX_VERIFYING)),
            matches,
            checks: AtomicU64::new(0),
            throttle: Mutex::new(Throttle::default()),
            failed: AtomicU64::new(0),
        }
    }

    fn read(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the file again and, if it is valid, uses it from now on.
    /// Returns the number of names; on an error the old accounts stay.
    pub fn reload(&self) -> Result<usize, AccountsError> {
        let Some(path) = &self.path else {
            return Ok(self.read().len());
        };
        let table = read_file(path)?;
        let n = table.len();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(n)
    }

    /// Whether `name` is registered, in any capitals or as a look-alike.
    pub fn is_registered(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// `name` as the accounts file spells it, if it is registered in any
    /// capitals or as a look-alike: `ALICE` is `alice` when the file says
    /// `alice`, and `adrnin` is `admin`.
    pub fn registered_name(&self, name: &str) -> Option<String> {
        self.lookup(name).map(|a| a.name)
    }

    /// `name`'s account, found by its [`name_key`] (a name too long to be
    /// anyone's is not keyed at all, see [`lookup_key`]).
    fn lookup(&self, name: &str) -> Option<Account> {
        let key = lookup_key(name)?;
        self.read().get(&key).cloned()
    }

    /// Failed logins since the start (for `imd_failed_logins_total`).
    pub fn failed_logins(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Password checks started since the start: one per login that was
    /// not refused unchecked, registered name or not.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Checks `password` for `name`, attempted from `ip`. Waits first as
    /// long as the address's earlier failures require; the check itself
    /// runs on a blocking thread, at most [`MAX_VERIFYING`] at once. Every
    /// failure is counted and logged (the name, never the password).
    pub async fn verify(&self, ip: IpAddr, name: &str, password: &str) -> Verdict {
        let booked = {
            let mut t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
            t.book(ip, tokio::time::Instant::now())
        };
        let ok = match booked {
            None => false,
            Some(wait) => {
                if !wait.is_zero() {
                    tracing::debug!(%ip, ?wait, "login held back after failures");
                    tokio::time::sleep(wait).await;
                }
                let account = self.lookup(name);
                let registered = account.is_some();
                let hash = account.map_or_else(|| self.dummy.clone(), |a| a.hash);
                let matches = self.check(hash, password.to_owned()).await;
                matches && registered
            }
        };
        let mut t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            t.succeeded(ip);
            Verdict::Accepted
        } else {
            t.failed(ip, tokio::time::Instant::now());
            drop(t);
            let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            let name = crate::protocol::visible(name);
            if booked.is_none() {
                // Refused without a check: the address is far behind in
                // its queue. At debug only, so a flood of these lines
                // cannot flood the log too.
                tracing::debug!(%ip, %name, failed_total = n, "login refused unchecked: too many failures");
            } else {
                tracing::warn!(%ip, %name, failed_total = n, "login failed");
            }
            Verdict::Rejected
        }
    }

    /// Runs the Argon2 check off the async workers, within the bound.
    async fn check(&self, hash: String, password: String) -> bool {
        let Ok(permit) = self.verifying.clone().acquire_owned().await else {
            return false;
        };
        self.checks.fetch_add(1, Ordering::Relaxed);
        let matches = self.matches;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            matches(&hash, &password)
        })
        .await
        .unwrap_or(false)
    }
}

/// A [`Table`] from NAME → hash pairs (names in NFC form as in a file,
/// assumed distinct by [`name_key`]; a later one replaces an earlier).
fn table_of(pairs: HashMap<String, String>) -> Table {
    pairs
        .into_iter()
        .map(|(name, hash)| {
            let name = nfc(&name).into_owned();
            (name_key(&name), Account { name, hash })
        })
        .collect()
}

/// Whether `password` matches the PHC string `hash` (Argon2, with the
/// parameters the hash names). A hash that cannot be parsed matches
/// nothing.
fn argon2_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random number for the dummy password (never used as a secret: it only
/// makes the dummy hash one that no password is known to match).
fn rand_u64() -> u64 {
    use password_hash::rand_core::RngCore;
    OsRng.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(n, p)| (n.to_string(), hash_password(p)))
            .collect()
    }

    #[test]
    fn a_file_with_comments_parses_and_bad_lines_say_where() {
        let h = hash_password("pw");
        let text = format!("# accounts\n\n  alice : {h}\r\nbob:{h}\n");
        let t = parse("f", &text).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.contains_key("alice"));

        let err = |text: &str| parse("f", text).unwrap_err().to_string();
        assert_eq!(err(&format!("a:{h}\nnocolon\n")), "f:2: expected NAME:HASH");
        assert!(err(&format!("a b:{h}")).starts_with("f:1: invalid name"));
        assert!(err("a:plaintext").starts_with("f:1: 'a': not a PHC hash string"));
        assert!(err(&format!("a:{h}\na:{h}")).contains("'a' is listed twice"));
        let argon2i = h.replace("$argon2id$", "$argon2i$");
        assert!(
            err(&format!("a:{argon2i}")).contains("must be Argon2id"),
            "{}",
            err(&format!("a:{argon2i}"))
        );
        let junk = err("a:$argon2id$v=19$junk");
        assert!(
            junk.starts_with("f:1: 'a'") && !junk.contains("junk"),
            "{junk}"
        );
        let weak = err("a:$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo");
        assert!(weak.contains("bad Argon2 parameters"), "{weak}");
    }

    /// Two lines whose names differ only in case are one name listed
    /// twice: the file is refused, and the message names both spellings
    /// and the line of the second.
    #[test]
    fn names_differing_only_in_case_are_listed_twice() {
        let h = hash_password("pw");
        let err = parse("f", &format!("alice:{h}\nbob:{h}\nALICE:{h}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f:3: 'ALICE' and 'alice' are one name"),
            "{err}"
        );
        let t = parse("f", &format!("Alice:{h}\n")).unwrap();
        assert_eq!(
            t["alice"].name, "Alice",
            "keyed by the name_key, spelled as in the file"
        );
    }

    /// Two names that only look alike are one name too: `admin` and
    /// `adrnin` (or the Cyrillic `аlice` and `alice`) in one file are
    /// refused, naming both; a name written decomposed (`e` + U+0301) is
    /// held composed, and its composed twin is the same name.
    #[test]
    fn look_alike_names_are_listed_twice_and_names_are_composed() {
        let h = hash_password("pw");
        let err = parse("f", &format!("admin:{h}\nadrnin:{h}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f:2: 'adrnin' and 'admin' are one name")
                && err.contains("only look alike"),
            "{err}"
        );
        let err = parse("f", &format!("\u{430}lice:{h}\nbob:{h}\nalice:{h}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f:3: 'alice' and '\u{430}lice' are one name"),
            "{err}"
        );
        let t = parse("f", &format!("e\u{301}lodie:{h}\n")).unwrap();
        assert_eq!(t.values().next().unwrap().name, "\u{e9}lodie");
        let err = parse("f", &format!("e\u{301}lodie:{h}\n\u{e9}lodie:{h}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'\u{e9}lodie' is listed twice"), "{err}");
        let err = parse("f", &format!("127.0.0.1\u{2d0}5555:{h}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f:1: invalid name: a name cannot contain"),
            "{err}"
        );
    }

    /// A registered name is found in any capitals, and reported as the
    /// file spells it; its password checks under any capitals too.
    #[tokio::test]
    async fn a_registered_name_is_found_in_any_capitals() {
        let a = Accounts::from_table(table(&[("Alice", "secret")]));
        assert!(a.is_registered("alice") && a.is_registered("ALICE"));
        assert!(!a.is_registered("alice2"));
        assert_eq!(a.registered_name("aLiCe").as_deref(), Some("Alice"));
        assert_eq!(a.registered_name("bob"), None);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.verify(ip, "ALICE", "secret").await, Verdict::Accepted);
    }

    /// A registered name is found by its look-alikes too (`adrnin` for
    /// `admin`), reported as the file spells it, and its password checks
    /// under them; a name that looks different is not found.
    #[tokio::test]
    async fn a_registered_name_is_found_by_its_look_alikes() {
        let a = Accounts::from_table(table(&[("admin", "secret")]));
        for alike in ["adrnin", "ADRNIN", "\u{430}dmin", "\u{430}drnin"] {
            assert_eq!(
                a.registered_name(alike).as_deref(),
                Some("admin"),
                "{alike}"
            );
        }
        assert!(!a.is_registered("admins") && !a.is_registered("adnin"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.verify(ip, "adrnin", "secret").await, Verdict::Accepted);
    }

    /// The right password is accepted, a wrong one and an unknown name
    /// are rejected and counted.
    #[tokio::test]
    async fn verify_accepts_only_the_right_password() {
        let a = Accounts::from_table(table(&[("alice", "secret")]));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.verify(ip, "alice", "secret").await, Verdict::Accepted);
        assert_eq!(a.failed_logins(), 0);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.verify(other, "alice", "wrong").await, Verdict::Rejected);
        assert_eq!(a.failed_logins(), 1);
        let third: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(a.verify(third, "nobody", "secret").await, Verdict::Rejected);
        assert_eq!(a.failed_logins(), 2);
    }

    /// A name that is not registered costs a full check, against the
    /// dummy hash, whose Argon2 parameters are those of a real one (so
    /// its cost is too); a registered name is checked against its own.
    #[tokio::test]
    async fn an_unknown_name_costs_a_full_check() {
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        fn record(hash: &str, password: &str) -> bool {
            SEEN.lock().unwrap().push(hash.to_string());
            argon2_matches(hash, password)
        }
        let real = table(&[("alice", "secret")]);
        let alices = real["alice"].clone();
        let a = Accounts::new(None, table_of(real), record);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.verify(ip, "nobody", "secret").await, Verdict::Rejected);
        assert_eq!(a.checks(), 1, "the unknown name was not checked");
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "one check");
        assert_eq!(seen[0], a.dummy, "checked against the dummy hash");
        let params = |h: &str| argon2::Params::try_from(&PasswordHash::new(h).unwrap()).unwrap();
        assert_eq!(params(&seen[0]), params(&alices));
        let (dummy, default) = (params(&seen[0]), argon2::Params::default());
        assert_eq!(
            (dummy.m_cost(), dummy.t_cost(), dummy.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );

        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.verify(other, "alice", "secret").await, Verdict::Accepted);
        assert_eq!(a.checks(), 2);
        assert_eq!(SEEN.lock().unwrap()[1], alices);
    }

    /// At most MAX_VERIFYING (4) checks run at once: of 10 logins from 10
    /// addresses, each polled once while the checks are held (by a
    /// stand-in for Argon2 that waits to be let go), exactly 4
    /// get a check and the rest wait in line; once the checks are let go
    /// all 10 finish, and no more than 4 ever ran together.
    #[tokio::test]
    async fn at_most_four_checks_run_at_once() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Condvar;
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        static OPEN: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
        fn held(_hash: &str, _password: &str) -> bool {
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            PEAK.fetch_max(now, Ordering::SeqCst);
            let (open, cv) = &OPEN;
            let mut go = open.lock().unwrap();
            while !*go {
                go = cv.wait(go).unwrap();
            }
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            false
        }
        /// Lets the held checks go, also when an assertion fails first
        /// (the runtime would otherwise wait for them forever).
        struct Opener;
        impl Drop for Opener {
            fn drop(&mut self) {
                let (open, cv) = &OPEN;
                *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
                cv.notify_all();
            }
        }
        assert_eq!(MAX_VERIFYING, 4, "README and the docs say 4");
        let pairs = HashMap::from([("alice".into(), "HASH".into())]);
        let a = Accounts::new(None, table_of(pairs), held);
        let opener = Opener;
        let mut logins: Vec<_> = (0..10u8)
            .map(|i| {
                let a = &a;
                tokio_test::task::spawn(async move {
                    let ip = IpAddr::from([10, 0, 0, i]);
                    a.verify(ip, "alice", "pw").await
                })
            })
            .collect();
        for login in &mut logins {
            assert!(login.poll().is_pending());
        }
        // Each has run as far as it can without a check finishing.
        assert_eq!(a.checks(), MAX_VERIFYING as u64, "checks started at once");
        assert_eq!(a.verifying.available_permits(), 0);
        drop(opener);
        for login in logins {
            assert_eq!(login.await, Verdict::Rejected);
        }
        assert_eq!(a.checks(), 10);
        let peak = PEAK.load(Ordering::SeqCst);
        assert!(
            (1..=MAX_VERIFYING).contains(&peak),
            "{peak} checks ran at once"
        );
        assert_eq!(a.verifying.available_permits(), MAX_VERIFYING);
    }

    /// On paused time: after failures, the next attempt from the same
    /// address waits the brake's delay before it is even checked, and an
    /// attempt from another address does not.
    #[tokio::test(start_paused = true)]
    async fn failures_slow_down_the_next_attempt_from_that_address() {
        use super::super::throttle::{delay_after, FIRST_DELAY};
        let a = Accounts::from_table(table(&[("alice", "secret")]));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            a.verify(ip, "alice", "guess").await;
        }
        let start = tokio::time::Instant::now();
        assert_eq!(a.verify(ip, "alice", "secret").await, Verdict::Accepted);
        let waited = start.elapsed();
        // 0.5 s, 1 s, 2 s: the third failure's delay.
        assert_eq!(delay_after(3), FIRST_DELAY * 4);
        assert!(
            waited >= FIRST_DELAY * 4,
            "waited only {waited:?} after 3 failures"
        );
        // The success cleared the address.
        let start = tokio::time::Instant::now();
        a.verify(ip, "alice", "secret").await;
        assert!(start.elapsed() < FIRST_DELAY, "{:?}", start.elapsed());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let start = tokio::time::Instant::now();
        a.verify(other, "alice", "secret").await;
        assert!(start.elapsed() < FIRST_DELAY);
    }
}
