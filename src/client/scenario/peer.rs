//! One scenario client: its connection, the lines it received, and the
//! client steps (send, expect, count, closed, ...) acted out on it.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use regex::Regex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::text::{decode_bytes, substitute, Mode, Vars};
use super::{Pattern, Step};
use crate::client::tls::{self, TlsConnector};
use crate::protocol::codec::{Frame, LineCodec};

/// Every client's traffic with timestamps, shared with the reader tasks.
pub type SharedLog = Arc<Mutex<Log>>;

pub struct Log {
    pub start: Instant,
    pub out: String,
}

impl Log {
    pub fn record(&mut self, who: &str, dir: &str, text: &str) {
        let t = self.start.elapsed().as_secs_f64();
        let _ = writeln!(self.out, "{t:9.4}s {who:>10} {dir} {}", printable(text));
    }
}

/// Control characters escaped (a transcript must not drive the terminal),
/// and very long text shortened.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(300)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if text.chars().nth(300).is_some() {
        let _ = write!(out, "... ({} bytes)", text.len());
    }
    out
}

/// Receive buffer of a client that `stops reading`, so the server's queue
/// toward it fills after little data (as a frozen terminal's would).
const SMALL_RECV_BUFFER: u32 = 4096;

/// One connection of a scenario.
pub struct Peer {
    writer: tls::Writer,
    lines: mpsc::UnboundedReceiver<String>,
    /// Tells the reader task to stop reading.
    stop: Arc<Notify>,
    pub stopped_reading: bool,
    /// Everything received so far (for `!<-` checks without a fence).
    pub seen: Vec<String>,
    /// `!<-` patterns in force, each with the index in `seen` it applies from.
    pub refusals: Vec<(Regex, usize, String)>,
}

/// Connects `who` to `addr` (over TLS with `tls`); `small_buffer` for a
/// client that will stop reading. Returns the peer and its local address
/// (its default name).
pub async fn connect(
    addr: &str,
    tls: Option<&TlsConnector>,
    who: &str,
    log: &SharedLog,
    small_buffer: bool,
) -> Result<(Peer, String), String> {
    let cannot = |e: std::io::Error| format!("{who}: cannot connect to {addr}: {e}");
    let dial = async {
        let to = tokio::net::lookup_host(addr)
            .await
            .map_err(cannot)?
            .next()
            .ok_or_else(|| format!("{who}: {addr} has no address"))?;
        let sock = if to.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(cannot)?;
        if small_buffer {
            sock.set_recv_buffer_size(SMALL_RECV_BUFFER)
                .map_err(cannot)?;
        }
        let stream = sock.connect(to).await.map_err(cannot)?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(cannot)?.to_string();
        Ok::<_, String>((local, tls::halves(stream, tls, addr).await.map_err(cannot)?))
    };
    let (local, (r, w)) = tokio::time::timeout(Duration::from_secs(5), dial)
        .await
        .map_err(|_| format!("{who}: connecting to {addr} timed out"))??;
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = Arc::new(Notify::new());
    let (log, label, stop_rx) = (log.clone(), who.to_string(), stop.clone());
    log.lock()
        .unwrap()
        .record(who, "->", &format!("(connect from {local})"));
    tokio::spawn(async move {
        let mut frames = FramedRead::new(r, LineCodec::new(1 << 20, 1 << 20));
        loop {
            tokio::select! {
                _ = stop_rx.notified() => {
                    log.lock().unwrap().record(&label, "<-", "(stops reading)");
                    // Keep the socket open, unread, until the scenario ends.
                    tx.closed().await;
                    return;
                }
                frame = frames.next() => match frame {
                    Some(Ok(Frame::Line(bytes))) => {
                        let line = String::from_utf8_lossy(&bytes).into_owned();
                        log.lock().unwrap().record(&label, "<-", &line);
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                    Some(Ok(Frame::TooLong)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
        log.lock().unwrap().record(&label, "<-", "(closed)");
    });
    let peer = Peer {
        writer: w,
        lines: rx,
        stop,
        stopped_reading: false,
        seen: Vec::new(),
        refusals: Vec::new(),
    };
    Ok((peer, local))
}

/// The regex of `p` with the variables in force.
pub fn regex(p: &Pattern, vars: &Vars) -> Result<Regex, String> {
    let s = substitute(&p.0, vars, Mode::Backslashed, &|v| regex::escape(v))?;
    Regex::new(&s).map_err(|e| format!("bad regex /{s}/: {e}"))
}

/// Named groups of `re` in `line` become variables.
fn capture(re: &Regex, line: &str, vars: &mut Vars) {
    if let Some(caps) = re.captures(line) {
        for name in re.capture_names().flatten() {
            if let Some(m) = caps.name(name) {
                vars.insert(name.to_string(), m.as_str().to_string());
            }
        }
    }
}

/// What the next line was.
enum Next {
    Line(String),
    Closed,
    TimedOut,
}

impl Peer {
    async fn next(&mut self, deadline: Instant) -> Next {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                Next::Line(line)
            }
            Ok(None) => Next::Closed,
            Err(_) => Next::TimedOut,
        }
    }

    /// Lines that already arrived, into `seen` (for `!<-` checks).
    pub fn drain_ready(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits (until `deadline`) for the server to close this connection.
    pub async fn wait_closed(&mut self, deadline: Instant) {
        if !self.stopped_reading {
            let _ = self.writer.shutdown().await;
            while let Next::Line(_) = self.next(deadline).await {}
        }
    }

    /// Acts out one client step (`Refuse` is the runner's; see
    /// [`super::run`]). `vars` gains what the step captures.
    pub async fn act(
        &mut self,
        who: &str,
        step: &Step,
        vars: &mut Vars,
        timeout: Duration,
        log: &SharedLog,
    ) -> Result<(), String> {
        let wait = |own: &Option<Duration>| own.unwrap_or(timeout);
        match step {
            Step::Send { text, raw, .. } => {
                let (bytes, shown) = if *raw {
                    let text = substitute(text, vars, Mode::Backslashed, &|v| v.to_string())?;
                    (decode_bytes(&text)?, format!("(bytes) {text}"))
                } else {
                    let line = substitute(text, vars, Mode::Literal, &|v| v.to_string())?;
                    (format!("{line}\n").into_bytes(), line)
                };
                log.lock().unwrap().record(who, "->", &shown);
                // The flush sends it through TLS (a no-op on a plain socket).
                let sent = async {
                    self.writer.write_all(&bytes).await?;
                    self.writer.flush().await
                };
                sent.await.map_err(|e| format!("{who} could not send: {e}"))
            }
            Step::Expect {
                pattern, timeout, ..
            } => {
                let (re, t) = (regex(pattern, vars)?, wait(timeout));
                let deadline = Instant::now() + t;
                loop {
                    match self.next(deadline).await {
                        Next::Line(line) if re.is_match(&line) => {
                            capture(&re, &line, vars);
                            return Ok(());
                        }
                        Next::Line(_) => {}
                        Next::Closed => {
                            return Err(format!(
                                "{who}: connection closed before a line matching /{re}/"
                            ))
                        }
                        Next::TimedOut => {
                            return Err(format!("{who}: no line matching /{re}/ within {t:?}"))
                        }
                    }
                }
            }
            Step::Next {
                pattern, timeout, ..
            } => {
                let (re, t) = (regex(pattern, vars)?, wait(timeout));
                match self.next(Instant::now() + t).await {
                    Next::Line(line) if re.is_match(&line) => {
                        capture(&re, &line, vars);
                        Ok(())
                    }
                    Next::Line(line) => Err(format!(
                        "{who}: the next line {line:?} does not match /{re}/"
                    )),
                    Next::Closed => Err(format!("{who}: connection closed; expected /{re}/ next")),
                    Next::TimedOut => Err(format!(
                        "{who}: no line at all within {t:?}; expected /{re}/"
                    )),
                }
            }
            Step::Count {
                count,
                pattern,
                fence,
                timeout,
                ..
            } => {
                let (re, fence, t) = (regex(pattern, vars)?, regex(fence, vars)?, wait(timeout));
                let deadline = Instant::now() + t;
                let mut matched = Vec::new();
                loop {
                    match self.next(deadline).await {
                        Next::Line(line) if fence.is_match(&line) => break,
                        Next::Line(line) if re.is_match(&line) => {
                            capture(&re, &line, vars);
                            matched.push(line);
                            if matched.len() > *count {
                                break;
                            }
                        }
                        Next::Line(_) => {}
                        Next::Closed => {
                            return Err(format!(
                                "{who}: connection closed before the fence /{fence}/"
                            ))
                        }
                        Next::TimedOut => {
                            return Err(format!("{who}: no fence line /{fence}/ within {t:?}"))
                        }
                    }
                }
                match (matched.len(), *count) {
                    (got, want) if got == want => Ok(()),
                    (_, 0) => Err(format!(
                        "{who} received {:?}, which it must not see before /{fence}/",
                        matched[0]
                    )),
                    (got, want) if got > want => Err(format!(
                        "{who}: more than {want} lines matching /{re}/ before /{fence}/: {matched:?}"
                    )),
                    (got, want) => Err(format!(
                        "{who}: {got} lines matching /{re}/ before /{fence}/, not {want}: {matched:?}"
                    )),
                }
            }
            Step::Closed { last, timeout, .. } => {
                let t = wait(timeout);
                let deadline = Instant::now() + t;
                let mut final_line = None;
                loop {
                    match self.next(deadline).await {
                        Next::Line(line) => final_line = Some(line),
                        Next::Closed => break,
                        Next::TimedOut => {
                            return Err(format!(
                                "{who}: the server did not close the connection within {t:?}"
                            ))
                        }
                    }
                }
                let Some(last) = last else { return Ok(()) };
                let re = regex(last, vars)?;
                match final_line {
                    Some(line) if re.is_match(&line) => {
                        capture(&re, &line, vars);
                        Ok(())
                    }
                    other => Err(format!(
                        "{who}: closed, but its last line {other:?} does not match /{re}/"
                    )),
                }
            }
            Step::Quit { .. } => {
                let _ = self.writer.shutdown().await;
                log.lock().unwrap().record(who, "->", "(quit)");
                Ok(())
            }
            Step::StopReading { .. } => {
                self.stopped_reading = true;
                self.stop.notify_one();
                Ok(())
            }
            Step::Connect { .. } => Ok(()),
            other => Err(format!("not a client step: {other:?}")),
        }
    }
}
