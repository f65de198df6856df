//! Chat scenarios as plain text, and the runner behind `imc scenario`.
//!
//! A scenario is a file where each line is one client acting or expecting,
//! run top to bottom against a server given by address. It only uses raw
//! protocol lines and regular expressions over what clients receive, so the
//! same file runs against imd or any server speaking the seed's commands
//! (the seed's Go server included), and shows exactly where they differ.
//!
//! ```text
//! # comment                      ignored, as are blank lines
//! timeout 2s                     default wait for later expectations (initially 5s)
//! alice -> hello all             alice sends the line "hello all" (connecting first if needed)
//! alice: rename|alice            the same; reads better for commands
//! bob <- alice.*hello            bob receives a line matching the regex within the timeout
//! bob <-[500ms] ^ok              the same with its own timeout
//! carol !<- secret               carol must not receive a line matching "secret" from
//!                                now until the scenario ends (checked after a quiet wait)
//! carol !<-[1s] secret           the same with its own quiet wait (default 300ms)
//! dave connects                  open dave's connection without sending anything (it
//!                                does not wait for the server: expect a line, such as
//!                                imd's welcome, before relying on dave being online)
//! alice quits                    close alice's connection
//! ```
//!
//! Clients are opened on first mention. Expectations consume lines: `<-`
//! skips lines that do not match, then takes the first that does, so a later
//! expectation only sees what arrived after. On failure the runner reports
//! the step and prints every client's transcript with timestamps.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use futures_util::StreamExt;
use regex::Regex;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::protocol::codec::{Frame, LineCodec};

/// One step of a scenario.
#[derive(Debug, Clone)]
pub enum Step {
    /// `timeout DURATION`.
    Timeout(Duration),
    /// `NAME -> LINE` or `NAME: LINE`.
    Send { who: String, line: String },
    /// `NAME <- REGEX`.
    Expect {
        who: String,
        pattern: Regex,
        timeout: Option<Duration>,
    },
    /// `NAME !<- REGEX`.
    Refuse {
        who: String,
        pattern: Regex,
        quiet: Option<Duration>,
    },
    /// `NAME connects`.
    Connect { who: String },
    /// `NAME quits`.
    Quit { who: String },
}

/// A step with where it came from.
#[derive(Debug, Clone)]
pub struct Located {
    pub line_no: usize,
    pub text: String,
    pub step: Step,
}

/// A parsed scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub steps: Vec<Located>,
}

/// A syntax error in a scenario file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line_no}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line_no: usize,
    pub message: String,
}

/// Parses `10s`, `500ms`, `1.5s`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(Duration::from_millis);
    }
    let secs: f64 = s.strip_suffix('s').unwrap_or(s).parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Splits `[500ms] rest` into the bracketed duration and the rest.
fn bracketed(rest: &str) -> Result<(Option<Duration>, &str), String> {
    let Some(inner) = rest.strip_prefix('[') else {
        return Ok((None, rest));
    };
    let (d, tail) = inner.split_once(']').ok_or("unclosed '[' in timeout")?;
    let d = parse_duration(d).ok_or_else(|| format!("bad duration {d:?}"))?;
    Ok((Some(d), tail))
}

fn parse_step(line: &str) -> Result<Step, String> {
    if let Some(d) = line.strip_prefix("timeout ") {
        return parse_duration(d)
            .map(Step::Timeout)
            .ok_or_else(|| format!("bad duration {d:?}"));
    }
    let (who, rest) = line
        .split_once([' ', ':'])
        .ok_or("expected 'NAME -> LINE', 'NAME <- REGEX', 'NAME !<- REGEX', 'NAME: LINE', 'NAME connects' or 'NAME quits'")?;
    if who.is_empty() {
        return Err("missing client name".into());
    }
    let who = who.to_string();
    if line.as_bytes()[who.len()] == b':' {
        let text = rest.strip_prefix(' ').unwrap_or(rest);
        return Ok(Step::Send {
            who,
            line: text.to_string(),
        });
    }
    let rest = rest.trim_start();
    if let Some(text) = rest.strip_prefix("->") {
        let text = text.strip_prefix(' ').unwrap_or(text);
        return Ok(Step::Send {
            who,
            line: text.to_string(),
        });
    }
    let regex = |s: &str| Regex::new(s.trim()).map_err(|e| format!("bad regex: {e}"));
    if let Some(r) = rest.strip_prefix("!<-") {
        let (quiet, pat) = bracketed(r)?;
        return Ok(Step::Refuse {
            who,
            pattern: regex(pat)?,
            quiet,
        });
    }
    if let Some(r) = rest.strip_prefix("<-") {
        let (timeout, pat) = bracketed(r)?;
        return Ok(Step::Expect {
            who,
            pattern: regex(pat)?,
            timeout,
        });
    }
    match rest.trim() {
        "connects" => Ok(Step::Connect { who }),
        "quits" => Ok(Step::Quit { who }),
        other => Err(format!("unknown action {other:?}")),
    }
}

impl Scenario {
    /// Parses scenario text; `name` is used in messages (usually the path).
    pub fn parse(name: &str, text: &str) -> Result<Scenario, ParseError> {
        let mut steps = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let step = parse_step(trimmed).map_err(|message| ParseError {
                file: name.to_string(),
                line_no: i + 1,
                message,
            })?;
            steps.push(Located {
                line_no: i + 1,
                text: trimmed.to_string(),
                step,
            });
        }
        Ok(Scenario {
            name: name.to_string(),
            steps,
        })
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    /// `None` if every step passed; otherwise the failure, with its step.
    pub failure: Option<String>,
    /// Every client's traffic, with timestamps, in time order.
    pub transcript: String,
}

impl Outcome {
    /// True when every step passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

struct Peer {
    writer: OwnedWriteHalf,
    lines: mpsc::UnboundedReceiver<String>,
    /// Everything received so far (for `!<-` checks).
    seen: Vec<String>,
    /// `!<-` patterns in force, each with the index in `seen` it applies from.
    refusals: Vec<(Regex, usize, String)>,
}

struct Log {
    start: Instant,
    out: String,
}

impl Log {
    fn record(&mut self, who: &str, dir: &str, text: &str) {
        let t = self.start.elapsed().as_secs_f64();
        let _ = writeln!(self.out, "{t:9.4}s {who:>10} {dir} {text}");
    }
}

/// Runs a scenario against the server at `addr`. Every connection it opens
/// is closed when it returns.
pub async fn run(scenario: &Scenario, addr: &str, default_timeout: Duration) -> Outcome {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Log {
        start: Instant::now(),
        out: String::new(),
    }));
    let mut peers: HashMap<String, Peer> = HashMap::new();
    let mut timeout = default_timeout;
    let mut max_quiet = Duration::ZERO;
    let mut failure = None;
    for step in &scenario.steps {
        let at = format!("{}:{}: {}", scenario.name, step.line_no, step.text);
        let result = match &step.step {
            Step::Timeout(d) => {
                timeout = *d;
                Ok(())
            }
            Step::Connect { who } => connect(&mut peers, who, addr, &log).await.map(|_| ()),
            Step::Quit { who } => {
                if let Some(mut p) = peers.remove(who) {
                    let _ = p.writer.shutdown().await;
                    log.lock().unwrap().record(who, "->", "(quit)");
                }
                Ok(())
            }
            Step::Send { who, line } => match connect(&mut peers, who, addr, &log).await {
                Ok(p) => {
                    log.lock().unwrap().record(who, "->", line);
                    p.writer
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .map_err(|e| format!("{who} could not send: {e}"))
                }
                Err(e) => Err(e),
            },
            Step::Expect {
                who,
                pattern,
                timeout: own,
            } => match connect(&mut peers, who, addr, &log).await {
                Ok(p) => expect(p, who, pattern, own.unwrap_or(timeout)).await,
                Err(e) => Err(e),
            },
            Step::Refuse {
                who,
                pattern,
                quiet,
            } => match connect(&mut peers, who, addr, &log).await {
                Ok(p) => {
                    let q = quiet.unwrap_or(Duration::from_millis(300));
                    max_quiet = max_quiet.max(q);
                    drain_ready(p);
                    let from = p.seen.len();
                    p.refusals.push((pattern.clone(), from, at.clone()));
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            failure = Some(format!("{at}\n  {e}"));
            break;
        }
        if let Some(e) = check_refusals(&mut peers) {
            failure = Some(e);
            break;
        }
    }
    if failure.is_none() && max_quiet > Duration::ZERO {
        // Give anything that must not arrive the chance to arrive.
        tokio::time::sleep(max_quiet).await;
        for p in peers.values_mut() {
            drain_ready(p);
        }
        failure = check_refusals(&mut peers);
    }
    // Close every connection and wait (briefly) until the server has closed
    // its side too: imd drops a user before closing, so the next scenario
    // run against the same server finds its names free.
    let deadline = Instant::now() + Duration::from_secs(2);
    for p in peers.values_mut() {
        let _ = p.writer.shutdown().await;
    }
    for (_, mut p) in peers.drain() {
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, p.lines.recv()).await {}
    }
    // Let the reader tasks record their last lines.
    tokio::task::yield_now().await;
    let transcript = std::mem::take(&mut log.lock().unwrap().out);
    Outcome {
        failure,
        transcript,
    }
}

async fn connect<'a>(
    peers: &'a mut HashMap<String, Peer>,
    who: &str,
    addr: &str,
    log: &std::sync::Arc<std::sync::Mutex<Log>>,
) -> Result<&'a mut Peer, String> {
    if !peers.contains_key(who) {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("{who}: connecting to {addr} timed out"))?
            .map_err(|e| format!("{who}: cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let log = log.clone();
        let label = who.to_string();
        log.lock().unwrap().record(who, "->", "(connect)");
        tokio::spawn(async move {
            let mut frames = FramedRead::new(r, LineCodec::new(1 << 20, 1 << 20));
            while let Some(Ok(frame)) = frames.next().await {
                let Frame::Line(bytes) = frame else { continue };
                let line = String::from_utf8_lossy(&bytes).into_owned();
                log.lock().unwrap().record(&label, "<-", &line);
                if tx.send(line).is_err() {
                    break;
                }
            }
            log.lock().unwrap().record(&label, "<-", "(closed)");
        });
        peers.insert(
            who.to_string(),
            Peer {
                writer: w,
                lines: rx,
                seen: Vec::new(),
                refusals: Vec::new(),
            },
        );
    }
    Ok(peers.get_mut(who).expect("just inserted"))
}

fn drain_ready(p: &mut Peer) {
    while let Ok(line) = p.lines.try_recv() {
        p.seen.push(line);
    }
}

async fn expect(p: &mut Peer, who: &str, pattern: &Regex, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, p.lines.recv()).await {
            Ok(Some(line)) => {
                let hit = pattern.is_match(&line);
                p.seen.push(line);
                if hit {
                    return Ok(());
                }
            }
            Ok(None) => {
                return Err(format!(
                    "{who}: connection closed before a line matching /{pattern}/"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "{who}: no line matching /{pattern}/ within {timeout:?}"
                ))
            }
        }
    }
}

fn check_refusals(peers: &mut HashMap<String, Peer>) -> Option<String> {
    for (who, p) in peers.iter() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_step() {
        let s = Scenario::parse(
            "t",
            "# c\n\ntimeout 2s\nalice -> hello | x\nalice: rename|alice\nbob <- alice.*hello\nbob <-[500ms] ^ok\ncarol !<- secret\ncarol !<-[1s] x\ndave connects\nalice quits\n",
        )
        .unwrap();
        assert_eq!(s.steps.len(), 9);
        assert!(
            matches!(&s.steps[1].step, Step::Send { who, line } if who == "alice" && line == "hello | x")
        );
        assert!(matches!(&s.steps[2].step, Step::Send { line, .. } if line == "rename|alice"));
        assert!(
            matches!(&s.steps[4].step, Step::Expect { timeout: Some(d), .. } if *d == Duration::from_millis(500))
        );
        assert!(
            matches!(&s.steps[6].step, Step::Refuse { quiet: Some(d), .. } if *d == Duration::from_secs(1))
        );
    }

    #[test]
    fn reports_bad_lines_with_their_number() {
        let e = Scenario::parse("f.chat", "alice -> hi\nbob <- (\n").unwrap_err();
        assert_eq!(e.line_no, 2);
        assert!(e.to_string().starts_with("f.chat:2: bad regex"));
        assert!(Scenario::parse("f", "alice dances").is_err());
        assert!(Scenario::parse("f", "timeout soon").is_err());
    }
}
