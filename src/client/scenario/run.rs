//! The runner: steps in order against one server, `parallel` and `repeat`
//! blocks, `$NAME` variables, skips, and a transcript of every client.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use super::peer::{connect, regex, Log, Peer, SharedLog};
use super::text::Vars;
use super::{Located, Outcome, Scenario, Step};
use crate::client::tls::TlsConnector;

/// Stops the server the runner started; `Err` says how it went wrong.
pub type StopServer = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// The server a scenario runs against.
pub struct Target {
    /// Its address, `IP:PORT`.
    pub addr: String,
    /// How to shut it down gracefully (imd: SIGTERM), for `server shuts
    /// down`; `None` for a server the runner did not start.
    pub stop: Option<StopServer>,
    /// Whether it was started with the file's `# imd:` flags. A file with
    /// flags is skipped against any other server.
    pub started_with_flags: bool,
    /// Connect over TLS with this trust (`imc --tls scenario`); `None`:
    /// plaintext.
    pub tls: Option<TlsConnector>,
}

impl Target {
    /// A server the runner did not start (`imc scenario`).
    pub fn address(addr: &str) -> Target {
        Target {
            addr: addr.to_string(),
            stop: None,
            started_with_flags: false,
            tls: None,
        }
    }
}

/// Runs a scenario against the server at `addr`, which the runner did not
/// start. Every connection it opens is closed when it returns.
pub async fn run(scenario: &Scenario, addr: &str, default_timeout: Duration) -> Outcome {
    run_on(scenario, Target::address(addr), default_timeout).await
}

/// Why a run stopped early.
enum Halt {
    Failed(String),
    Skipped(String),
}

/// Runs a scenario against `target`; a file that needs what the target
/// cannot give is skipped before any connection is made.
pub async fn run_on(scenario: &Scenario, target: Target, default_timeout: Duration) -> Outcome {
    let skip = |why: String| Outcome {
        failure: None,
        skipped: Some(why),
        transcript: String::new(),
    };
    if !scenario.imd_args.is_empty() && !target.started_with_flags {
        return skip(format!(
            "needs imd started with '{}' (only a runner that starts the server can do that)",
            scenario.imd_args.join(" ")
        ));
    }
    let steps = scenario.all_steps();
    if target.stop.is_none() && steps.iter().any(|s| matches!(s.step, Step::Shutdown)) {
        return skip(
            "needs 'server shuts down' (only a runner that starts the server can do that)".into(),
        );
    }
    let mut runner = Runner {
        name: &scenario.name,
        addr: target.addr,
        tls: target.tls,
        stop: target.stop,
        log: Arc::new(Mutex::new(Log {
            start: Instant::now(),
            out: String::new(),
        })),
        peers: HashMap::new(),
        vars: Vars::new(),
        timeout: default_timeout,
        max_quiet: Duration::ZERO,
        stops_reading: steps
            .iter()
            .filter(|s| matches!(s.step, Step::StopReading { .. }))
            .filter_map(|s| s.step.who().map(String::from))
            .collect(),
    };
    let mut halt = runner.exec(&scenario.steps).await.err();
    if halt.is_none() && runner.max_quiet > Duration::ZERO {
        // Give anything that must not arrive the chance to arrive.
        tokio::time::sleep(runner.max_quiet).await;
        for p in runner.peers.values_mut() {
            p.drain_ready();
        }
        halt = runner.check_refusals().map(Halt::Failed);
    }
    // Close every connection and wait (briefly) until the server has closed
    // its side too: imd drops a user before closing, so the next scenario
    // run against the same server finds its names free.
    let deadline = Instant::now() + Duration::from_secs(2);
    for p in runner.peers.values_mut() {
        p.wait_closed(deadline).await;
    }
    runner.peers.clear();
    // Let the reader tasks record their last lines.
    tokio::task::yield_now().await;
    let transcript = std::mem::take(&mut runner.log.lock().unwrap().out);
    let (failure, skipped) = match halt {
        None => (None, None),
        Some(Halt::Failed(f)) => (Some(f), None),
        Some(Halt::Skipped(s)) => (None, Some(s)),
    };
    Outcome {
        failure,
        skipped,
        transcript,
    }
}

struct Runner<'s> {
    name: &'s str,
    addr: String,
    tls: Option<TlsConnector>,
    stop: Option<StopServer>,
    log: SharedLog,
    peers: HashMap<String, Peer>,
    vars: Vars,
    timeout: Duration,
    max_quiet: Duration,
    /// Clients that `stops reading` somewhere (they get a small buffer).
    stops_reading: HashSet<String>,
}

/// `FILE:LINE: STEP`, how failures name a step.
fn at(name: &str, s: &Located) -> String {
    format!("{name}:{}: {}", s.line_no, s.text)
}

type Steps<'a> = Vec<(&'a Located, Option<usize>)>;

/// A parallel block's steps with each repeat unrolled (and its `$i`).
fn unroll<'a>(body: &'a [Located], i: Option<usize>, out: &mut Steps<'a>) {
    for s in body {
        match &s.step {
            Step::Repeat(n, inner) => (1..=*n).for_each(|k| unroll(inner, Some(k), out)),
            _ => out.push((s, i)),
        }
    }
}

impl Runner<'_> {
    fn exec<'a>(
        &'a mut self,
        steps: &'a [Located],
    ) -> Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 'a>> {
        Box::pin(async move {
            for s in steps {
                self.step(s).await?;
                if let Some(e) = self.check_refusals() {
                    return Err(Halt::Failed(e));
                }
            }
            Ok(())
        })
    }

    async fn step(&mut self, s: &Located) -> Result<(), Halt> {
        match &s.step {
            Step::Timeout(d) => self.timeout = *d,
            Step::Shutdown => {
                let stop = self.stop.take().ok_or_else(|| {
                    Halt::Failed(format!(
                        "{}\n  the server was already shut down",
                        at(self.name, s)
                    ))
                })?;
                self.log
                    .lock()
                    .unwrap()
                    .record("server", "--", "(shuts down)");
                let done = tokio::task::spawn_blocking(stop).await;
                done.map_err(|e| e.to_string())
                    .and_then(|r| r)
                    .map_err(|e| Halt::Failed(format!("{}\n  {e}", at(self.name, s))))?;
            }
            Step::Repeat(n, body) => {
                for i in 1..=*n {
                    self.vars.insert("i".into(), i.to_string());
                    self.exec(body).await?;
                }
            }
            Step::Parallel(body) => self.parallel(body).await.map_err(Halt::Failed)?,
            Step::Needs(inner) => self.client(inner).await.map_err(|e| {
                Halt::Skipped(format!(
                    "{e}\n  (a 'needs' step: this file does not apply to this server)"
                ))
            })?,
            Step::Refuse {
                who,
                pattern,
                quiet,
            } => {
                let re = regex(pattern, &self.vars).map_err(Halt::Failed)?;
                self.max_quiet = self
                    .max_quiet
                    .max(quiet.unwrap_or(Duration::from_millis(300)));
                let name = self.name;
                let p = self.peer(who).await.map_err(Halt::Failed)?;
                p.drain_ready();
                let from = p.seen.len();
                p.refusals.push((re, from, at(name, s)));
            }
            _ => self.client(s).await.map_err(Halt::Failed)?,
        }
        Ok(())
    }

    /// `who`'s connection, opened on first mention; `$who` is its address.
    async fn peer(&mut self, who: &str) -> Result<&mut Peer, String> {
        if !self.peers.contains_key(who) {
            let small = self.stops_reading.contains(who);
            let (peer, local) =
                connect(&self.addr, self.tls.as_ref(), who, &self.log, small).await?;
            self.vars.insert(who.to_string(), local);
            self.peers.insert(who.to_string(), peer);
        }
        Ok(self.peers.get_mut(who).expect("just inserted"))
    }

    /// One client step; a failure names the step.
    async fn client(&mut self, s: &Located) -> Result<(), String> {
        let who = s.step.who().expect("a client step");
        let quits = matches!(s.step, Step::Quit { .. });
        if quits && !self.peers.contains_key(who) {
            return Ok(());
        }
        let name = self.name;
        self.peer(who)
            .await
            .map_err(|e| format!("{}\n  {e}", at(name, s)))?;
        let p = self.peers.get_mut(who).expect("connected");
        p.act(who, &s.step, &mut self.vars, self.timeout, &self.log)
            .await
            .map_err(|e| format!("{}\n  {e}", at(self.name, s)))?;
        if quits {
            self.peers.remove(who);
        }
        Ok(())
    }

    /// Each client's steps in order, the clients at the same time.
    async fn parallel(&mut self, body: &[Located]) -> Result<(), String> {
        let mut all = Vec::new();
        unroll(body, None, &mut all);
        let mut groups: Vec<(String, Steps)> = Vec::new();
        for (s, i) in all {
            let who = s.step.who().expect("checked when parsed").to_string();
            match groups.iter_mut().find(|(w, _)| *w == who) {
                Some((_, steps)) => steps.push((s, i)),
                None => groups.push((who, vec![(s, i)])),
            }
        }
        let mut branches = Vec::new();
        for (who, steps) in &groups {
            let first = steps[0].0;
            let name = self.name;
            self.peer(who)
                .await
                .map_err(|e| format!("{}\n  {e}", at(name, first)))?;
            let peer = self.peers.remove(who).expect("connected");
            branches.push((who, steps, peer, self.vars.clone()));
        }
        let (name, timeout, log) = (self.name, self.timeout, &self.log);
        let results = join_all(
            branches
                .iter_mut()
                .map(|(who, steps, peer, vars)| async move {
                    for (s, i) in steps.iter() {
                        if let Some(i) = i {
                            vars.insert("i".into(), i.to_string());
                        }
                        peer.act(who, &s.step, vars, timeout, log)
                            .await
                            .map_err(|e| format!("{}\n  {e}", at(name, s)))?;
                    }
                    Ok::<(), String>(())
                }),
        )
        .await;
        for (who, steps, peer, vars) in branches {
            self.vars.extend(vars);
            if !steps
                .iter()
                .any(|(s, _)| matches!(s.step, Step::Quit { .. }))
            {
                self.peers.insert(who.clone(), peer);
            }
        }
        results.into_iter().collect()
    }

    fn check_refusals(&self) -> Option<String> {
        for (who, p) in &self.peers {
            for (pattern, from, at) in &p.refusals {
                if let Some(line) = p.seen[*from..].iter().find(|l| pattern.is_match(l)) {
                    return Some(format!(
                        "{at}\n  {who} received {line:?}, which it must not see"
                    ));
                }
            }
        }
        None
    }
}
