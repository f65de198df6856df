//! One client connection: read lines, run commands, queue replies.
//!
//! Each connection is two tasks. This one reads and frames the client's
//! lines ([`LineCodec`]), parses each into a [`Command`], calls the [`Hub`]
//! and queues the reply, mapping the hub's typed outcomes to protocol
//! lines; the writer task ([`Drain`](super::outbox::Drain)) writes whatever
//! is queued for the user. Reading never waits on its own writing, so a client that does not
//! read can only fill its own queue, and is then cut off.
//!
//! # Fan-out in batches
//!
//! The public lines of one read are broadcast together: consecutive public
//! lines are encoded into one buffer, which is pushed to each recipient's
//! queue once, when the read's lines are used up, another kind of command
//! comes, or the batch reaches `BATCH_BYTES` (16 KiB). Each recipient then costs
//! one queue push, at most one writer wake-up and one system call per
//! batch, not per line. The batch grows with the load by itself: when the
//! server falls behind, lines pile up in the sender's socket and the next
//! read holds many (NATS flushes its clients once per read buffer for the
//! same reason). Order is unchanged: a batch is broadcast under one hub
//! lock, like a single line, and anything else the sender asks for is
//! handled after its earlier lines went out. What a reader's writer then
//! does with the batches of many senders, and of many reads, is in
//! [`super::pace`]: under a steady flow it writes once per interval, so
//! idle cores do not turn every batch into a write of its own.
//!
//! # Overload
//!
//! After a batch, the sender waits for every recipient whose queue is now
//! over half full and whose reader is still taking data
//! ([`Outbox::wait_for_room`](super::outbox::Outbox::wait_for_room)) before reading on. When the server
//! cannot keep up, its writers fall behind, queues fill, and so publishers
//! are slowed: their lines wait in their own sockets, and TCP flow control
//! slows them down. Readers are cut off only when their socket refuses data
//! (see [`super::outbox`]). The idle clock does not run while a sender is
//! held back this way. A sender's own queue counts too: a client whose
//! answers pile up faster than it reads them is read more slowly, not cut.
//!
//! The handler is generic over the read and write halves so it can be driven
//! by a TCP socket or, in unit tests, by `tokio_test::io` mocks.
//!
//! (Over 400 lines: about 260 of them are those unit tests, which drive
//! whole sessions, the memory storm included, through in-memory sockets.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, LoginError, NoSuchUser, RenameError, User};
use super::line_rate::LineRate;
use super::metrics::Opened;
use super::outbox::PeerSocket;
use crate::protocol::codec::{Frame, FrameError, LineCodec};
use crate::protocol::{encode_public, nfc, visible, Command, ErrorCode, LeaveReason, ServerLine};

/// Read buffer space reserved while a connection is quiet. Idle connections
/// are most of a big server, so each holds only this much; a client that
/// fills it gets a bigger buffer for its next read (up to [`MAX_READ`]).
const SMALL_READ: usize = 256;
/// Largest read buffer reservation for a busy client.
const MAX_READ: usize = 16 * 1024;
/// A batch of public lines is broadcast once it holds this many bytes.
const BATCH_BYTES: usize = 16 * 1024;

/// Serves one client until it leaves, is cut off, or the server shuts down.
/// Everything the connection owns is released when this returns.
pub async fn serve<R, W>(
    reader: R,
    writer: W,
    addr: SocketAddr,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + PeerSocket + Unpin + Send + 'static,
{
    serve_in_slot(reader, writer, addr, hub, shutdown, ()).await
}

/// [`serve`], holding `slot` (the server's connection-limit permit) while
/// the user is online. The slot is given back as the user leaves, before
/// anyone is told: a client that sees `NAME is offline` and connects again
/// must not be refused as `server-full` because the old connection's writer
/// is still flushing its last lines (that takes at most `shutdown_grace`).
pub async fn serve_in_slot<R, W, S>(
    reader: R,
    writer: W,
    addr: SocketAddr,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    slot: S,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + PeerSocket + Unpin + Send + 'static,
{
    let (user, drain) = hub.new_user(addr);
    // Counted from here until the writer is done (dropped last, below).
    let opened = hub.metrics().open(user.outbox.tally());
    let writer = tokio::spawn(async move {
        let mut writer = writer;
        if drain.write_to(&mut writer).await {
            writer.reset_on_close();
        }
    });
    let name = addr.to_string();
    tracing::info!(%addr, "connected");
    user.outbox
        .push(ServerLine::Welcome { name: name.clone() }.to_bytes());
    hub.join(&name, &user).await;

    let mut conn = Connection {
        name,
        user,
        hub: hub.clone(),
        congested: Vec::new(),
        batch: BytesMut::new(),
        opened,
    };
    let reason = conn.read_loop(reader, &shutdown).await;
    let Connection { user, opened, .. } = conn;
    let name = user.name();
    hub.metrics().disconnected(reason);
    drop(slot);
    hub.leave(&user, reason).await;
    match reason {
        LeaveReason::TooSlow => {
            tracing::warn!(name, %addr, "slow consumer disconnected: outbound queue full")
        }
        LeaveReason::Quit => tracing::info!(name, %addr, "disconnected"),
        _ => tracing::info!(name, %addr, reason = reason.as_str(), "disconnected"),
    }
    // The hub has let go of the user; dropping ours closes the queue, so
    // the writer flushes what is left and ends. A client that does not read
    // gets `grace` to take it, then the writer is stopped.
    drop(user);
    let abort = writer.abort_handle();
    if tokio::time::timeout(hub.config().shutdown_grace, writer)
        .await
        .is_err()
    {
        abort.abort();
    }
    drop(opened);
}

/// The reading side of a connection and the user's current name.
struct Connection {
    name: String,
    user: Arc<User>,
    hub: Arc<Hub>,
    /// Recipients whose queues this user's last line left over half full.
    /// Before reading on, the connection waits for them to drain:
    /// backpressure that slows a flooding sender to its slowest reader's
    /// pace.
    congested: Vec<Arc<User>>,
    /// Public lines of this read not yet broadcast, encoded.
    batch: BytesMut,
    /// This connection's counters in the metrics.
    opened: Opened,
}

impl Connection {
    fn reply(&self, line: ServerLine) {
        if let ServerLine::Error { code, .. } = &line {
            self.hub.metrics().error_sent(*code);
        }
        self.user.outbox.push(line.to_bytes());
    }

    /// Broadcasts the batched public lines, if any, as one buffer.
    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.hub.say(
                &self.user,
                &self.name,
                self.batch.split().freeze(),
                &mut self.congested,
            );
        }
    }

    /// Reads and handles lines until the connection should end. Returns why.
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        shutdown: &CancellationToken,
    ) -> LeaveReason {
        let hub = self.hub.clone();
        let config = hub.config();
        let mut codec = LineCodec::new(config.max_line, config.discard_limit());
        let idle = config.idle_timeout;
        let far = Duration::from_secs(86400 * 365);
        let idle_sleep = tokio::time::sleep(idle.unwrap_or(far));
        tokio::pin!(idle_sleep);
        let mut buf = BytesMut::new();
        let mut chunk = SMALL_READ;
        let mut rate = config
            .max_lines_per_sec
            .map(|n| LineRate::new(n, Instant::now()));
        let mut read_again_at = None;
        loop {
            while self.congested.is_empty() {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if let Some(end) = self.handle(frame, shutdown).await {
                            return end;
                        }
                        // Answers to this user pile up faster than it
                        // takes them: read no more of its lines until
                        // they drain, as for any congested reader.
                        if self.user.outbox.congested() {
                            self.congested.push(self.user.clone());
                        }
                        read_again_at = rate.as_mut().and_then(|r| r.take(Instant::now()));
                        if read_again_at.is_some() {
                            hub.metrics().rate_limited();
                            self.flush();
                            break;
                        }
                    }
                    Ok(None) => {
                        self.flush();
                        break;
                    }
                    Err(e) => return self.flooded(e),
                }
            }
            // Over its line rate: the rest waits in the socket until the
            // bucket is paid back (src/server/line_rate.rs).
            if let Some(at) = read_again_at.take() {
                if let Err(end) =
                    Box::pin(self.unless_ended(shutdown, tokio::time::sleep_until(at))).await
                {
                    return end;
                }
                if let Some(idle) = idle {
                    idle_sleep.as_mut().reset(Instant::now() + idle);
                }
                continue;
            }
            // Redis behind on this node's publishes holds senders back the
            // same way as a slow reader does.
            let cluster_behind = hub.cluster_behind();
            if !self.congested.is_empty() || cluster_behind {
                // Public lines read before the wait go out before it.
                self.flush();
                let congested = std::mem::take(&mut self.congested);
                let drained = async {
                    for u in &congested {
                        u.outbox.wait_for_room().await;
                    }
                    if cluster_behind {
                        hub.wait_for_cluster().await;
                    }
                };
                if let Err(end) = Box::pin(self.unless_ended(shutdown, drained)).await {
                    return end;
                }
                // The server held this user back: that was not idleness.
                if let Some(idle) = idle {
                    idle_sleep.as_mut().reset(Instant::now() + idle);
                }
                continue;
            }
            if buf.is_empty() && buf.capacity() > MAX_READ {
                buf = BytesMut::new();
            }
            buf.reserve(chunk);
            let room = buf.capacity() - buf.len();
            tokio::select! {
                biased;
                end = self.ended(shutdown) => return end,
                _ = &mut idle_sleep, if idle.is_some() => {
                    let secs = idle.unwrap_or(far).as_secs();
                    self.reply(ServerLine::Bye {
                        reason: format!("idle for more than {secs} s"),
                    });
                    return LeaveReason::Idle;
                }
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) => {
                        loop {
                            match codec.decode_eof(&mut buf) {
                                Ok(Some(frame)) => {
                                    if let Some(end) = self.handle(frame, shutdown).await {
                                        return end;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => return self.flooded(e),
                            }
                        }
                        self.flush();
                        return LeaveReason::Quit;
                    }
                    Ok(n) => {
                        // Its answers go out without waiting for the write
                        // interval (`Outbox::hurry`, src/server/pace.rs).
                        self.user.outbox.hurry();
                        chunk = if n == room { (chunk * 2).min(MAX_READ) } else { SMALL_READ };
                        if let Some(idle) = idle {
                            idle_sleep.as_mut().reset(Instant::now() + idle);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(name = self.name, "read failed: {e}");
                        return LeaveReason::Error;
                    }
                }
            }
        }
    }

    /// Resolves when the connection must end for a reason other than its
    /// own input: the server is shutting down (the user is told why) or the
    /// user was cut off for not reading.
    ///
    /// A failed write does not end the connection: a client that sends a
    /// line and closes at once, without reading what it was sent, resets
    /// the connection, and the next write to it fails while its last lines
    /// are still waiting in the socket. Those lines count, so reading goes
    /// on until the read side ends too (at once, after the buffered data,
    /// on a reset connection).
    async fn ended(&self, shutdown: &CancellationToken) -> LeaveReason {
        let cut = async {
            self.user.outbox.cut().await;
            match self.user.outbox.cut_reason() {
                LeaveReason::TooSlow => LeaveReason::TooSlow,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                self.reply(ServerLine::Bye { reason: "server shutting down".into() });
                LeaveReason::Shutdown
            }
            reason = cut => reason,
        }
    }

    /// Runs `wait` (the server holding this user back, or a login's
    /// password check) unless the connection must end first: a shutdown or
    /// a cut is never held up by it.
    async fn unless_ended<T>(
        &self,
        shutdown: &CancellationToken,
        wait: impl std::future::Future<Output = T>,
    ) -> Result<T, LeaveReason> {
        tokio::select! {
            biased;
            end = self.ended(shutdown) => Err(end),
            done = wait => Ok(done),
        }
    }

    fn flooded(&mut self, e: FrameError) -> LeaveReason {
        // The complete lines before the flood still count.
        self.flush();
        match e {
            FrameError::Flood(limit) => {
                self.reply(ServerLine::Bye {
                    reason: format!("more than {limit} bytes without a newline"),
                });
                LeaveReason::Flood
            }
            FrameError::Io(_) => LeaveReason::Error,
        }
    }

    /// Runs one frame. Every command line gets exactly one reply (an `ok`, an
    /// `error`, or for a public message its own broadcast coming back).
    /// Returns why the connection must end if it must end before the reply:
    /// only a login waits long enough for that (see [`Connection::login`]).
    async fn handle(&mut self, frame: Frame, shutdown: &CancellationToken) -> Option<LeaveReason> {
        self.opened.line_received();
        let bytes = match frame {
            Frame::Line(bytes) => bytes,
            Frame::TooLong => {
                let max = self.hub.config().max_line;
                self.reply(ServerLine::error(
                    ErrorCode::TooLong,
                    format!("line longer than {max} bytes was discarded"),
                ));
                return None;
            }
        };
        // Invalid UTF-8 is shown as U+FFFD rather than refused: the rest of
        // the line is usually worth reading.
        // A login took our name away: lines from now on use the new one
        // (the hub renames any already encoded with the old one).
        if self.user.take_displaced() {
            self.flush();
            self.name = self.user.name();
        }
        let line = String::from_utf8_lossy(&bytes);
        let command = Command::parse(&line);
        // Anything but a public line comes after this user's earlier ones.
        if !matches!(command, Command::Say(_) | Command::Empty) {
            self.flush();
        }
        match command {
            Command::Empty => {}
            Command::Say(text) => {
                encode_public(&mut self.batch, &self.name, &visible(text));
                if self.batch.len() >= BATCH_BYTES {
                    self.flush();
                }
            }
            Command::Who => {
                let names = self.hub.who().await;
                self.user.outbox.push(ServerLine::encode_who(&names));
            }
            // Boxed, like a login below: their state (a cluster claim, a
            // lookup) would otherwise be part of every connection's
            // future, held all the time by every idle connection, for a
            // command sent now and then (BENCHMARKS.md target 4).
            Command::Rename(new) => Box::pin(self.rename(new)).await,
            Command::Whisper { to, text } => Box::pin(self.whisper(to, text)).await,
            // Boxed: a login waits on the brake and the password check,
            // state that every idle connection would carry otherwise.
            Command::Login { name, password } => {
                return Box::pin(self.login(name, password.expose(), shutdown)).await;
            }
            Command::Malformed(usage) => self.reply(ServerLine::error(
                ErrorCode::Usage,
                format!("malformed command; usage: {usage}"),
            )),
        }
        None
    }

    async fn whisper(&mut self, to: &str, text: &str) {
        if text.trim().is_empty() {
            return self.reply(ServerLine::error(
                ErrorCode::EmptyMessage,
                "message is empty; usage: to|NAME|MESSAGE",
            ));
        }
        let text = visible(text);
        match self.hub.whisper(&self.user, to, &text).await {
            Ok(sent) => {
                self.congested.extend(sent.congested);
                // The recipient's own spelling, whatever capitals were typed.
                self.reply(ServerLine::Sent {
                    to: sent.to,
                    text: text.into_owned(),
                });
            }
            Err(NoSuchUser) => self.reply(ServerLine::error(
                ErrorCode::NoSuchUser,
                format!("no user named '{}' is online", visible(to)),
            )),
        }
    }

    async fn rename(&mut self, new: &str) {
        match self.hub.rename(&self.user, new).await {
            Ok(held) => {
                let now = self.user.name();
                if self.name != now {
                    tracing::info!(old = self.name, new = held, "renamed");
                    self.name = now;
                }
                // As held: composed (NFC), whatever form was typed.
                self.reply(ServerLine::Renamed { name: held });
            }
            // The accounts file's spelling: `rename|ADMIN` or the
            // look-alike `rename|adrnin` is told to log in as `admin`.
            Err(RenameError::Registered(name)) => self.reply(ServerLine::error(
                ErrorCode::NameRegistered,
                format!("use login|{name}|PASSWORD"),
            )),
            Err(RenameError::Invalid(e)) => self.reply(ServerLine::error(
                ErrorCode::BadName,
                format!("invalid name '{}': {e}", visible(new)),
            )),
            Err(RenameError::Taken(holder)) => self.reply(ServerLine::error(
                ErrorCode::NameTaken,
                match other_spelling(holder.as_deref(), new) {
                    Some(holder) => format!("name {} is taken by {holder}", quoted(new)),
                    None => format!("name {} is taken", quoted(new)),
                },
            )),
        }
    }

    /// `login|NAME|PASSWORD`. The password goes to the hub's check and
    /// nowhere else: it is never logged, echoed or kept.
    ///
    /// The check can wait a long time: up to a minute on the brake of an
    /// address that failed before, then in line for a password check. A
    /// shutdown (or the user being cut off) ends that wait like any other,
    /// so the user gets the usual `bye` at once and imd does not wait for
    /// the login; the abandoned check counts as neither a failure nor a
    /// success. Only the check is abandoned: once the password is right,
    /// taking the name (and claiming it in a cluster) runs to its end.
    async fn login(
        &mut self,
        name: &str,
        password: &str,
        shutdown: &CancellationToken,
    ) -> Option<LeaveReason> {
        let check = self.hub.check_login(&self.user, name, password);
        let checked = match self.unless_ended(shutdown, check).await {
            Ok(checked) => checked,
            Err(end) => {
                tracing::debug!(name = visible(name).as_ref(), addr = %self.user.addr, "login abandoned: the connection is ending");
                return Some(end);
            }
        };
        let outcome = match checked {
            // The accounts file's spelling of the name, whatever was typed.
            Ok(name) => self.hub.take_login(&self.user, &name).await.map(|()| name),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(name) => {
                let old = std::mem::replace(&mut self.name, self.user.name());
                tracing::info!(old, name, addr = %self.user.addr, "logged in");
                self.reply(ServerLine::LoggedIn { name });
            }
            Err(LoginError::AuthFailed) => self.reply(ServerLine::error(
                ErrorCode::AuthFailed,
                "wrong name or password",
            )),
            Err(LoginError::Taken(holder)) => self.reply(ServerLine::error(
                ErrorCode::NameTaken,
                format!(
                    "name {} is in use{} by a session that logged in (or on another node)",
                    quoted(name),
                    match other_spelling(holder.as_deref(), name) {
                        Some(holder) => format!(" as {holder}"),
                        None => String::new(),
                    }
                ),
            )),
        }
        None
    }
}

/// A name a user typed, for an error reply: in quotes, composed (NFC) as
/// the server compares it, and [visible](crate::protocol::visible).
fn quoted(typed: &str) -> String {
    format!("'{}'", visible(&nfc(typed)))
}

/// The holder of a taken name, for the error, when it spells the name
/// otherwise than `typed` (`rename|ALICE` while `alice` is online, or the
/// look-alike `rename|аlice`): without it the user could not tell who has
/// it. None when the server does not know the holder (a claim on another
/// node that it has not listed yet) or the spelling is the one typed.
fn other_spelling<'a>(holder: Option<&'a str>, typed: &str) -> Option<&'a str> {
    holder.filter(|&h| h != nfc(typed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Config;

    fn hub() -> Arc<Hub> {
        Hub::new(Config::default(), None)
    }

    /// Per-connection memory matters at 10,000 connections: the session's
    /// future (its state across awaits) stays small. Every idle connection
    /// holds all of it, so what only some lines need (a rename, a
    /// whisper, a login, waiting out backpressure or the line rate) is
    /// boxed: 984 bytes here, where those inline made it 1,584.
    #[test]
    fn session_future_is_small() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let fut = serve(
            tokio::io::empty(),
            tokio::io::sink(),
            addr,
            hub(),
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!("serve() future: {size} bytes");
        assert!(size <= 1100, "serve() future is {size} bytes");
    }

    /// A session fed by mock halves: commands split across reads and ended
    /// by CRLF are framed, each gets its reply, and at EOF the user leaves
    /// and the socket is shut down after the last reply.
    #[tokio::test]
    async fn session_replies_to_each_command_in_order() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let reader = tokio_test::io::Builder::new()
            .read(b"rename|al")
            .read(b"ice\r\nwho\nto|nobody|x\n\nhi there\n")
            .build();
        let writer = tokio_test::io::Builder::new()
            .write(
                b"*** welcome, you are 127.0.0.1:4000 (commands: who, rename|NAME, to|NAME|MESSAGE)\n",
            )
            .write(b"ok rename: you are now alice\n")
            .write(b"who alice\nok who: 1 online\n")
            .write(b"error no-such-user: no user named 'nobody' is online\n")
            .write(b"<alice> hi there\n")
            .build();
        let hub = hub();
        serve(reader, writer, addr, hub.clone(), CancellationToken::new()).await;
        assert!(hub.is_empty(), "user left at EOF");
    }

    /// Last words: a client whose connection fails for writing (it closed
    /// without reading, so the welcome could not be written) still has the
    /// line it sent before closing broadcast.
    #[tokio::test]
    async fn lines_sent_before_a_failed_write_still_count() {
        let hub = hub();
        let (observer, drain) = hub.new_user("127.0.0.1:3999".parse().unwrap());
        let (w, mut seen) = tokio::io::duplex(1 << 16);
        tokio::spawn(drain.write_to(w));
        hub.join("observer", &observer).await;

        let addr: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        // The line arrives only after the first write has failed.
        let reader = tokio_test::io::Builder::new()
            .wait(Duration::from_millis(50))
            .read(b"build done\n")
            .build();
        let writer = tokio_test::io::Builder::new()
            .write_error(std::io::ErrorKind::BrokenPipe.into())
            .build();
        serve(reader, writer, addr, hub.clone(), CancellationToken::new()).await;

        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while !got.contains("is offline") {
            let n = tokio::time::timeout(Duration::from_secs(5), seen.read(&mut buf))
                .await
                .expect("observer got the offline notice")
                .unwrap();
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(got.contains("<127.0.0.1:4002> build done\n"), "{got:?}");
        assert!(
            got.contains("*** 127.0.0.1:4002 is offline (quit)\n"),
            "{got:?}"
        );
    }

    /// A client that waits for each answer before it asks again (a script
    /// sending line by line, `imc send`) gets every answer at once: the
    /// write interval paces lines that others' traffic brings, not answers
    /// to the user's own input. In paused time, twenty exchanges take no
    /// time at all; paced, each would take an interval.
    #[tokio::test(start_paused = true)]
    async fn answers_are_not_held_for_the_write_interval() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let hub = hub();
        assert!(!hub.config().write_interval.is_zero());
        let (mut to_server, from_client) = tokio::io::duplex(1 << 16);
        let (to_client, from_server) = tokio::io::duplex(1 << 16);
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        tokio::spawn(serve(
            from_client,
            to_client,
            addr,
            hub.clone(),
            CancellationToken::new(),
        ));
        let mut from_server = BufReader::new(from_server);
        let mut line = String::new();
        from_server.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("*** welcome"), "{line}");
        let t0 = Instant::now();
        for i in 0..20 {
            to_server
                .write_all(format!("line {i}\n").as_bytes())
                .await
                .unwrap();
            line.clear();
            from_server.read_line(&mut line).await.unwrap();
            assert_eq!(line, format!("<127.0.0.1:4000> line {i}\n"));
            to_server.write_all(b"who\n").await.unwrap();
            for want in ["who 127.0.0.1:4000\n", "ok who: 1 online\n"] {
                line.clear();
                from_server.read_line(&mut line).await.unwrap();
                assert_eq!(line, want);
            }
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "an answer waited");
    }

    /// A client that sends commands faster than it reads their answers is
    /// read more slowly, not cut off: once its own queue is over half full,
    /// no more of its lines are read until the queue drains. (One that does
    /// not read at all is still cut, once its socket has refused data for
    /// the stall timeout: see `limits` in tests/.)
    #[tokio::test(start_paused = true)]
    async fn a_client_slow_to_read_its_answers_is_slowed_not_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const N: usize = 500;
        let config = Config {
            queue_bytes: 4096,
            ..Config::default()
        };
        let hub = Hub::new(config, None);
        let (mut to_server, from_client) = tokio::io::duplex(1 << 16);
        let (to_client, mut from_server) = tokio::io::duplex(256);
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let session = tokio::spawn(serve(
            from_client,
            to_client,
            addr,
            hub.clone(),
            CancellationToken::new(),
        ));
        // About 50 KB of answers, twelve times the queue's limit, asked
        // for at once; nothing is read for half the stall timeout.
        to_server
            .write_all("who\n".repeat(N).as_bytes())
            .await
            .unwrap();
        to_server.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut got = String::new();
        from_server.read_to_string(&mut got).await.unwrap();
        session.await.unwrap();
        assert!(
            !got.contains("too slow"),
            "cut off: {}",
            &got[got.len() - 200..]
        );
        assert_eq!(
            got.matches("ok who: 1 online\n").count(),
            N,
            "every answer came"
        );
    }

    /// Reads `r` until the next line from 127.0.0.1:4000, which must be
    /// `want`.
    async fn expect_from_4000(r: &mut tokio::io::BufReader<tokio::io::DuplexStream>, want: &str) {
        use tokio::io::AsyncBufReadExt;
        let mut got = String::new();
        loop {
            got.clear();
            r.read_line(&mut got).await.unwrap();
            if got.starts_with("<127.0.0.1:4000>") {
                assert_eq!(got, want, "lost or reordered");
                return;
            }
        }
    }

    /// The memory storm, small: users that never read, one that reads,
    /// and a sender of short lines. All queued output stays within
    /// `max_queued_bytes` (plus one line per recipient, charged before the
    /// check), the non-readers are cut, the reader gets every line in
    /// order, and every charge comes back once all have left.
    #[tokio::test]
    async fn a_storm_of_non_readers_stays_within_the_budget() {
        use tokio::io::{AsyncWriteExt, BufReader};
        const FROZEN: usize = 20;
        const LINES: usize = 1500;
        let limit = 64 * 1024;
        let hub = Hub::new(
            Config {
                max_queued_bytes: limit,
                stall_timeout: Duration::from_millis(20),
                ..Config::default()
            },
            None,
        );
        let mut servers = Vec::new();
        let mut user = |port: u16, buffer: usize| {
            let (to_server, from_client) = tokio::io::duplex(4096);
            let (to_client, from_server) = tokio::io::duplex(buffer);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            servers.push(tokio::spawn(serve(
                from_client,
                to_client,
                addr,
                hub.clone(),
                CancellationToken::new(),
            )));
            (to_server, BufReader::new(from_server))
        };
        // Non-readers: a small pipe that nobody reads, kept open.
        let frozen: Vec<_> = (0..FROZEN).map(|i| user(5000 + i as u16, 256)).collect();
        let (mut sender, mut echo) = user(4000, 1 << 16);
        let (reader_in, mut reader) = user(4001, 1 << 16);
        let line = |i: usize| format!("{i:06} {}", "x".repeat(40));
        while hub.len() < FROZEN + 2 {
            tokio::task::yield_now().await; // every session has joined
        }
        let per_line = (FROZEN + 2) * (line(0).len() + 20 + crate::server::outbox::LINE_COST);
        let mut peak = 0;
        for i in 0..LINES {
            sender
                .write_all(format!("{}\n", line(i)).as_bytes())
                .await
                .unwrap();
            let want = format!("<127.0.0.1:4000> {}\n", line(i));
            // The sender's own line back: queued for everyone by now.
            tokio::time::timeout(Duration::from_secs(10), expect_from_4000(&mut echo, &want))
                .await
                .expect("the sender's line came back");
            peak = peak.max(hub.budget().used());
            assert!(
                hub.budget().used() <= limit + per_line,
                "line {i}: {} bytes queued, budget {limit}",
                hub.budget().used()
            );
            tokio::time::timeout(
                Duration::from_secs(10),
                expect_from_4000(&mut reader, &want),
            )
            .await
            .unwrap_or_else(|_| panic!("the reader got line {i} ({} online)", hub.len()));
        }
        assert_eq!(
            hub.len(),
            2,
            "every non-reader was cut, the sender and reader were not"
        );
        assert!(
            peak > limit / 2,
            "the storm filled the budget (peak {peak})"
        );
        drop((sender, echo, reader_in, reader, frozen));
        for s in servers {
            tokio::time::timeout(Duration::from_secs(10), s)
                .await
                .expect("session ended")
                .unwrap();
        }
        assert_eq!(hub.budget().used(), 0, "every charge came back");
    }

    /// What a metrics scrape reads from the hub: the users online here and
    /// the output queued for them, as the budget charges it (a queue with
    /// no writer yet keeps what is pushed).
    #[tokio::test]
    async fn the_hub_shows_the_metrics_who_is_online_and_what_is_queued() {
        use crate::server::metrics::Source;
        use crate::server::outbox::LINE_COST;
        let hub = hub();
        let (user, drain) = hub.new_user("127.0.0.1:4005".parse().unwrap());
        hub.join("alice", &user).await;
        assert!(user.outbox.push(bytes::Bytes::from_static(b"hello\n")));
        let source: &dyn Source = &*hub;
        assert_eq!(source.users_online(), 1);
        assert_eq!(source.queued_bytes(), 6 + LINE_COST);
        assert!(source.cluster().is_none());
        hub.leave(&user, LeaveReason::Quit).await;
        drop(user);
        drain.write_to(tokio::io::sink()).await;
        assert_eq!((source.users_online(), source.queued_bytes()), (0, 0));
    }

    /// At shutdown a connected user is told why before the socket closes,
    /// and no offline notice goes out.
    #[tokio::test]
    async fn shutdown_says_bye() {
        let addr: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        // Shutdown is checked before reading, so the reader is never polled.
        let reader = tokio::io::empty();
        let writer = tokio_test::io::Builder::new()
            .write(
                b"*** welcome, you are 127.0.0.1:4001 (commands: who, rename|NAME, to|NAME|MESSAGE)\n",
            )
            .write(b"*** bye: server shutting down\n")
            .build();
        let stop = CancellationToken::new();
        stop.cancel();
        serve(reader, writer, addr, hub(), stop).await;
    }
}

/// Orders and sizes that mutation testing (tests/README.md, "Mutation
/// testing") found no test for.
#[cfg(test)]
mod edge_tests {
    use super::*;
    use crate::server::Config;
    use tokio::io::AsyncReadExt;

    /// Serves one session that reads `input` (in reads of `read_size`
    /// bytes) and then ends, and returns everything written to it.
    async fn session(config: Config, input: &[u8], read_size: usize) -> String {
        let mut reader = tokio_test::io::Builder::new();
        for chunk in input.chunks(read_size) {
            reader.read(chunk);
        }
        let (w, mut seen) = tokio::io::duplex(1 << 20);
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let hub = Hub::new(config, None);
        let served = serve(reader.build(), w, addr, hub, CancellationToken::new());
        let mut out = Vec::new();
        let (_, read) = tokio::join!(served, seen.read_to_end(&mut out));
        read.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Public lines batched from one read go out before a command that
    /// follows them in that read is answered, and after the ones before.
    #[tokio::test]
    async fn public_lines_and_commands_of_one_read_keep_their_order() {
        let input = b"one\nwho\ntwo\nto|nobody|x\nthree\n";
        let out = session(Config::default(), input, input.len()).await;
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "<127.0.0.1:4000> one",
                "who 127.0.0.1:4000",
                "ok who: 1 online",
                "<127.0.0.1:4000> two",
                "error no-such-user: no user named 'nobody' is online",
                "<127.0.0.1:4000> three",
            ]
        );
    }

    /// A line longer than the biggest read buffer, arriving in many reads,
    /// is kept whole: a buffer holding part of a line is never dropped.
    #[tokio::test]
    async fn a_line_longer_than_the_read_buffer_arrives_whole() {
        let config = Config {
            max_line: 64 * 1024,
            ..Config::default()
        };
        let text = "x".repeat(40_000);
        let out = session(config, format!("{text}\n").as_bytes(), 1000).await;
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(lines, [format!("<127.0.0.1:4000> {text}")]);
    }
}
