//! An async client for imd, used by every `imc` command and by tests.
//!
//! A [`Client`] owns one connection. Each request method sends one command
//! and waits for *its* reply: the server answers each command line of one
//! connection in order, and replies are told apart from other traffic by
//! their kind (see [`crate::protocol`]). Lines that arrive meanwhile (other
//! users' messages, presence notices, lines outside the protocol) are kept,
//! in the order they came, for [`Client::next_event`]: at most
//! [`MAX_PENDING_EVENTS`], the oldest dropped (and counted) beyond that, and
//! none at all for a command that never reads them
//! ([`Client::ignore_events`]), so a long `imc send -` in a busy room holds
//! no memory for other users' lines.
//!
//! A public message has no `ok` line: the confirmation is the message coming
//! back to its sender as a broadcast, which the server queues for everyone in
//! the same step. So when [`Client::say`] returns, every online user has been
//! sent the message.
//!
//! (Over 400 lines: about 280 of them are tests, against a scripted server
//! and against the real server's sessions.)

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use super::tls::{self, TlsConnector};
use crate::protocol::codec::{Frame, LineCodec};
use crate::protocol::{Command, ErrorCode, ServerLine};

/// Longest server line the client accepts. Server lines carry user text of
/// up to the server's line limit plus a name and a prefix; 1 MiB leaves room
/// for any sane server configuration.
const MAX_SERVER_LINE: usize = 1 << 20;

/// Most events kept while a request waits for its reply. Interactive use
/// reads events between requests, so this is only reached by a reply that
/// takes very long in a very busy room.
pub const MAX_PENDING_EVENTS: usize = 10_000;

/// What can go wrong talking to a server. `imc` maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect at all.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    /// The server refused the request.
    #[error("{message} ({code})")]
    Refused { code: ErrorCode, message: String },
    /// This client did not send the request: the server could never
    /// confirm it, or would read it as something else.
    #[error("{0} (not sent)")]
    Unsendable(Unsendable),
    /// The connection ended: the server said why (`bye`), closed it, or
    /// it failed.
    #[error("connection lost: {0}")]
    Lost(String),
    /// Nothing happened in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Why a request was not sent. Each is something the user can fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsendable {
    /// The server ignores empty lines, so it would never confirm one.
    #[error("message is empty")]
    Empty,
    /// A line break would split it into several lines (commands even).
    #[error("a message is one line; send each line separately")]
    LineBreak,
    /// The server would take it as a command (`who`, `rename|..`, `to|..`).
    #[error("{0:?} would be read as a command, not sent as a message")]
    Command(String),
    /// No user can have this name: it is empty or holds `|` or a line break.
    #[error("no user named {0:?} is online")]
    NoSuchName(String),
    /// A name with a line break cannot be sent as one line.
    #[error("invalid name {0:?}: no line breaks")]
    NameLineBreak(String),
    /// A password would cross the network unencrypted.
    #[error("a password is sent in plain text only to a loopback address; connect with TLS")]
    PlaintextPassword,
}

/// One connection to an imd server.
pub struct Client {
    lines: FramedRead<tls::Reader, LineCodec>,
    writer: tls::Writer,
    /// The server's address, kept because a TLS writer cannot tell it.
    peer: Option<SocketAddr>,
    /// Whether the connection is TLS (the server's certificate verified).
    tls: bool,
    name: String,
    /// Lines received while waiting for replies, in order.
    events: VecDeque<Event>,
    /// Most `events` kept (0: none).
    keep: usize,
    /// Events dropped because `events` was full.
    dropped: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// A line received that is not a reply to one of our requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line of the protocol.
    Line(ServerLine),
    /// A line this client does not understand, as received.
    Raw(String),
}

impl Client {
    /// Connects in plaintext and waits for the welcome line, which tells
    /// our name.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_with(addr, timeout, None).await
    }

    /// [`Client::connect`], over TLS when `tls` is given: a certificate
    /// the connector does not accept is a [`ClientError::Connect`] that
    /// says what was wrong with it.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        tls: Option<&TlsConnector>,
    ) -> Result<Client, ClientError> {
        let dial = async {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            crate::net::keep_alive(&stream);
            let peer = stream.peer_addr().ok();
            Ok((peer, tls::halves(stream, tls, addr).await?))
        };
        let (peer, (r, w)) = tokio::time::timeout(timeout, dial)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let mut client = Client {
            lines: FramedRead::new(r, LineCodec::new(MAX_SERVER_LINE, MAX_SERVER_LINE)),
            writer: w,
            peer,
            tls: tls.is_some(),
            name: String::new(),
            events: VecDeque::new(),
            keep: MAX_PENDING_EVENTS,
            dropped: 0,
        };
        let welcome = tokio::time::timeout(
            timeout,
            client.wait_for(|l| match l {
                ServerLine::Welcome { name } => Some(Ok(name.clone())),
                ServerLine::Error { code, message } => Some(Err(ClientError::Refused {
                    code: *code,
                    message: message.clone(),
                })),
                _ => None,
            }),
        )
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
        client.name = welcome;
        Ok(client)
    }

    /// Keep no events from now on: for commands that only send requests
    /// and never call [`Client::next_event`].
    pub fn ignore_events(&mut self) {
        self.keep_at_most(0);
    }

    /// Keep at most `n` events (the oldest are dropped beyond that).
    pub fn keep_at_most(&mut self, n: usize) {
        self.keep = n;
        while self.events.len() > n {
            self.events.pop_front();
            self.dropped += 1;
        }
    }

    /// Events dropped so far because more than [`MAX_PENDING_EVENTS`]
    /// arrived while a request was waiting.
    pub fn dropped_events(&self) -> u64 {
        self.dropped
    }

    /// Keeps an event for [`Client::next_event`], within the bound.
    fn keep_event(&mut self, event: Event) {
        if self.keep == 0 {
            return;
        }
        if self.events.len() >= self.keep {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Our current name on the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether this connection is TLS, with the server's certificate
    /// verified (what a caller checks before sending a secret).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    async fn send(&mut self, cmd: Command<'_>) -> Result<(), ClientError> {
        // The flush is what sends the line through TLS; for a plain
        // socket it does nothing.
        let sent = async {
            self.writer.write_all(cmd.encode().as_bytes()).await?;
            self.writer.flush().await
        };
        sent.await.map_err(|e| ClientError::Lost(e.to_string()))
    }

    /// Sends a public message and waits until it comes back to us, which
    /// means it has been queued for every online user.
    pub async fn say(&mut self, text: &str) -> Result<(), ClientError> {
        check_text(text)?;
        // The server reads `who`, `rename|..` and `to|..` as commands, so such
        // a text would never come back as a message (and `rename|` would
        // rename us).
        if !matches!(Command::parse(text), Command::Say(_)) {
            let text = crate::protocol::visible(text).into_owned();
            return Err(ClientError::Unsendable(Unsendable::Command(text)));
        }
        self.send(Command::Say(text)).await?;
        let me = self.name.clone();
        self.wait_for(|l| match l {
            ServerLine::Public { from, .. } if *from == me => Some(Ok(())),
            ServerLine::Error { .. } => Some(refused(l)),
            _ => None,
        })
        .await
    }

    /// Whispers to `to` and waits for the server's confirmation.
    pub async fn whisper(&mut self, to: &str, text: &str) -> Result<(), ClientError> {
        check_text(text)?;
        if to.is_empty() || to.contains(['|', '\n', '\r']) {
            return Err(ClientError::Unsendable(Unsendable::NoSuchName(to.into())));
        }
        self.send(Command::Whisper { to, text }).await?;
        self.wait_for(|l| match l {
            ServerLine::Sent { .. } => Some(Ok(())),
            ServerLine::Error { .. } => Some(refused(l)),
            _ => None,
        })
        .await
    }

    /// Claims `name` for this connection.
    pub async fn rename(&mut self, name: &str) -> Result<(), ClientError> {
        if name.contains(['\n', '\r']) {
            return Err(ClientError::Unsendable(Unsendable::NameLineBreak(
                name.into(),
            )));
        }
        self.send(Command::Rename(name)).await?;
        let new = self
            .wait_for(|l| match l {
                ServerLine::Renamed { name } => Some(Ok(name.clone())),
                ServerLine::Error { .. } => Some(refused(l)),
                _ => None,
            })
            .await?;
        self.name = new;
        Ok(())
    }

    /// Logs in as the registered `name` with `password` (sent once, on
    /// this connection, and kept nowhere). Refused with `auth-failed` for
    /// a wrong password, `name-taken` while another logged-in session
    /// holds the name.
    pub async fn login(&mut self, name: &str, password: &str) -> Result<(), ClientError> {
        if name.contains(['\n', '\r']) {
            return Err(ClientError::Unsendable(Unsendable::NameLineBreak(
                name.into(),
            )));
        }
        if password.contains(['\n', '\r']) {
            return Err(ClientError::Unsendable(Unsendable::LineBreak));
        }
        let password = crate::protocol::Password(password);
        self.send(Command::Login { name, password }).await?;
        let new = self
            .wait_for(|l| match l {
                ServerLine::LoggedIn { name } => Some(Ok(name.clone())),
                ServerLine::Error { .. } => Some(refused(l)),
                _ => None,
            })
            .await?;
        self.name = new;
        Ok(())
    }

    /// The names of everyone online, sorted.
    pub async fn who(&mut self) -> Result<Vec<String>, ClientError> {
        self.send(Command::Who).await?;
        let mut names = Vec::new();
        loop {
            let line = self.read_line().await?.ok_or_else(ClientError::closed)?;
            match line {
                Event::Line(ServerLine::WhoItem { name }) => names.push(name),
                Event::Line(ServerLine::WhoEnd { .. }) => return Ok(names),
                Event::Line(l @ ServerLine::Error { .. }) => return refused(&l),
                Event::Line(ServerLine::Bye { reason }) => return Err(ClientError::Lost(reason)),
                other => self.keep_event(other),
            }
        }
    }

    /// The next line that is not a reply to a request: a message, a notice,
    /// or a line outside the protocol. `Ok(None)` when the server closed the
    /// connection.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.read_line().await
    }

    /// Reads lines until `pick` returns a result; other lines are kept as
    /// events. A `bye` or end of stream ends the wait with `Lost`.
    async fn wait_for<T>(
        &mut self,
        mut pick: impl FnMut(&ServerLine) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        loop {
            match self.read_line().await?.ok_or_else(ClientError::closed)? {
                Event::Line(line) => {
                    if let Some(result) = pick(&line) {
                        return result;
                    }
                    if let ServerLine::Bye { reason } = line {
                        return Err(ClientError::Lost(reason));
                    }
                    self.keep_event(Event::Line(line));
                }
                raw @ Event::Raw(_) => self.keep_event(raw),
            }
        }
    }

    /// Reads one line; `None` at the end of the stream.
    async fn read_line(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            match self.lines.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Lost(e.to_string())),
                Some(Ok(Frame::TooLong)) => continue,
                Some(Ok(Frame::Line(bytes))) => {
                    let text = String::from_utf8_lossy(&bytes);
                    return Ok(Some(match ServerLine::parse(&text) {
                        Some(ServerLine::TakenBack { name, now }) => {
                            // The server renamed us: our name's owner
                            // logged in.
                            self.name.clone_from(&now);
                            Event::Line(ServerLine::TakenBack { name, now })
                        }
                        Some(l) => Event::Line(l),
                        None => Event::Raw(text.into_owned()),
                    }));
                }
            }
        }
    }

    /// Closes our side and waits (up to `timeout`) for the server to close
    /// its side, so nothing we sent is lost in a reset.
    pub async fn close(mut self, timeout: Duration) {
        let _ = self.writer.shutdown().await;
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(_)) = self.lines.next().await {}
        })
        .await;
    }
}

fn refused<T>(line: &ServerLine) -> Result<T, ClientError> {
    match line {
        ServerLine::Error { code, message } => Err(ClientError::Refused {
            code: *code,
            message: message.clone(),
        }),
        other => Err(ClientError::Lost(format!("unexpected reply {other:?}"))),
    }
}

impl ClientError {
    /// The connection ended without a word from the server.
    pub fn closed() -> ClientError {
        ClientError::Lost("server closed the connection".into())
    }
}

/// Text that the server would ignore or split can never be confirmed, so it
/// is not sent.
fn check_text(text: &str) -> Result<(), ClientError> {
    if text.trim().is_empty() {
        return Err(ClientError::Unsendable(Unsendable::Empty));
    }
    if text.contains(['\n', '\r']) {
        return Err(ClientError::Unsendable(Unsendable::LineBreak));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A server that welcomes, sends protocol and non-protocol lines
    /// mixed, then answers the first command with an empty `who`.
    async fn mixed_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let welcome = ServerLine::Welcome { name: "me".into() }.encode();
            s.write_all(welcome.as_bytes()).await.unwrap();
            let mut cmd = [0u8; 4];
            s.read_exact(&mut cmd).await.unwrap();
            s.write_all(b"raw one\n<bob> two\nraw three\n<bob> four\nok who: 0 online\n")
                .await
                .unwrap();
            let _ = s.read(&mut cmd).await;
        });
        addr
    }

    /// Events that arrive while a request waits come out in the order
    /// they arrived, protocol lines and raw lines alike.
    #[tokio::test]
    async fn events_keep_arrival_order_across_kinds() {
        let addr = mixed_server().await;
        let mut c = Client::connect(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.who().await.unwrap(), Vec::<String>::new());
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(c.next_event().await.unwrap().unwrap());
        }
        let bob = |t: &str| {
            Event::Line(ServerLine::Public {
                from: "bob".into(),
                text: t.into(),
            })
        };
        assert_eq!(
            got,
            vec![
                Event::Raw("raw one".into()),
                bob("two"),
                Event::Raw("raw three".into()),
                bob("four"),
            ]
        );
    }

    /// The queue is bounded: the oldest events go first, and are counted;
    /// a client that ignores events keeps none.
    #[tokio::test]
    async fn pending_events_are_bounded() {
        let addr = mixed_server().await;
        let mut c = Client::connect(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        c.keep_at_most(2);
        c.who().await.unwrap();
        assert_eq!(c.dropped_events(), 2);
        assert_eq!(
            c.next_event().await.unwrap(),
            Some(Event::Raw("raw three".into()))
        );

        let addr = mixed_server().await;
        let mut c = Client::connect(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        c.ignore_events();
        c.who().await.unwrap();
        assert!(c.events.is_empty());
    }
}

/// Every request against the real server's sessions (in this process, on
/// 127.0.0.1:0, with the hub in the test's hands), each reply and refusal
/// checked. Written for mutation testing (tests/README.md, "Mutation
/// testing"): the `imc` tests cover the same paths only through the binary.
#[cfg(test)]
mod server_tests {
    use super::*;
    use crate::server::connection::serve;
    use crate::server::hub::Hub;
    use crate::server::Config;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    const WAIT: Duration = Duration::from_secs(10);

    /// A server whose hub the test can look at.
    async fn server() -> (String, Arc<Hub>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hub = Hub::new(Config::default(), None);
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                let (s, peer) = listener.accept().await.unwrap();
                let (r, w) = s.into_split();
                tokio::spawn(serve(r, w, peer, h.clone(), CancellationToken::new()));
            }
        });
        (addr, hub)
    }

    async fn client(addr: &str) -> Client {
        Client::connect(addr, WAIT).await.unwrap()
    }

    /// `f`, or a failure if it takes longer than [`WAIT`] (a reply that
    /// is never recognised).
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(WAIT, f)
            .await
            .expect("answered in time")
    }

    fn code(r: Result<(), ClientError>) -> ErrorCode {
        match r {
            Err(ClientError::Refused { code, .. }) => code,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn unsendable(r: Result<(), ClientError>) -> Unsendable {
        match r {
            Err(ClientError::Unsendable(u)) => u,
            other => panic!("sent: {other:?}"),
        }
    }

    /// The next event that is not a presence notice.
    async fn next_message(c: &mut Client) -> Event {
        loop {
            match within(c.next_event()).await.unwrap().expect("open") {
                Event::Line(
                    ServerLine::Joined { .. }
                    | ServerLine::Left { .. }
                    | ServerLine::NameChanged { .. },
                ) => continue,
                e => return e,
            }
        }
    }

    /// The welcome names the client; renames are confirmed or refused with
    /// the server's code; a name with a line break is not sent.
    #[tokio::test]
    async fn connect_and_rename() {
        let (addr, _hub) = server().await;
        let mut a = client(&addr).await;
        assert!(a.name().starts_with("127.0.0.1:"), "{}", a.name());
        let me = a.name().to_string();
        assert_eq!(within(a.who()).await.unwrap(), [me], "the welcome's name");
        assert_eq!(a.peer_addr().unwrap().to_string(), addr);
        // What `imc login` checks before sending a password off loopback.
        assert!(!a.is_tls(), "a plain TCP connection is not TLS");
        within(a.rename("alice")).await.unwrap();
        assert_eq!(a.name(), "alice");
        let mut b = client(&addr).await;
        assert_eq!(code(within(b.rename("alice")).await), ErrorCode::NameTaken);
        assert_eq!(code(within(b.rename("x|y")).await), ErrorCode::BadName);
        assert_eq!(
            unsendable(b.rename("x\ny").await),
            Unsendable::NameLineBreak("x\ny".into())
        );
        within(b.rename("bob")).await.unwrap();
        assert_eq!(within(a.who()).await.unwrap(), ["alice", "bob"]);
    }

    /// `say` returns on our own line coming back, keeping another user's
    /// line that came first as an event; what the server refuses or would
    /// never echo is an error.
    #[tokio::test]
    async fn say_waits_for_its_own_line() {
        let (addr, _hub) = server().await;
        let mut a = client(&addr).await;
        let mut b = client(&addr).await;
        within(a.rename("alice")).await.unwrap();
        within(b.rename("bob")).await.unwrap();
        within(b.say("first")).await.unwrap();
        within(a.say("second")).await.unwrap();
        let public = |from: &str, text: &str| {
            Event::Line(ServerLine::Public {
                from: from.into(),
                text: text.into(),
            })
        };
        assert_eq!(next_message(&mut a).await, public("bob", "first"));
        assert_eq!(next_message(&mut b).await, public("alice", "second"));
        assert_eq!(
            code(within(a.say(&"x".repeat(5000))).await),
            ErrorCode::TooLong
        );
        assert_eq!(
            unsendable(a.say("who").await),
            Unsendable::Command("who".into())
        );
        assert_eq!(unsendable(a.say("  ").await), Unsendable::Empty);
        assert_eq!(unsendable(a.say("a\rb").await), Unsendable::LineBreak);
    }

    /// A whisper is confirmed and reaches its target; nobody by that name
    /// is refused by the server; a name no user can have is not sent.
    #[tokio::test]
    async fn whisper_is_confirmed_or_refused() {
        let (addr, _hub) = server().await;
        let mut a = client(&addr).await;
        let mut b = client(&addr).await;
        within(b.rename("bob")).await.unwrap();
        within(a.whisper("bob", "psst")).await.unwrap();
        let private = ServerLine::Private {
            from: a.name().into(),
            text: "psst".into(),
        };
        assert_eq!(next_message(&mut b).await, Event::Line(private));
        assert_eq!(
            code(within(a.whisper("nobody", "x")).await),
            ErrorCode::NoSuchUser
        );
        for to in ["", "a|b", "a\nb"] {
            assert_eq!(
                unsendable(a.whisper(to, "x").await),
                Unsendable::NoSuchName(to.into())
            );
        }
    }

    /// Events already waiting are cut down to the newest `n`, the rest
    /// counted as dropped.
    #[tokio::test]
    async fn keep_at_most_drops_the_oldest_waiting_events() {
        let (addr, _hub) = server().await;
        let mut a = client(&addr).await;
        let mut b = client(&addr).await;
        for t in ["1", "2", "3", "4"] {
            within(b.say(t)).await.unwrap();
        }
        within(a.who()).await.unwrap(); // b's lines are waiting now
        let waiting = a.events.len();
        assert!(waiting >= 4, "{waiting} events");
        a.keep_at_most(1);
        assert_eq!(a.dropped_events(), waiting as u64 - 1);
        let four = ServerLine::Public {
            from: b.name().into(),
            text: "4".into(),
        };
        assert_eq!(a.events.iter().collect::<Vec<_>>(), [&Event::Line(four)]);
    }

    /// `close` returns once the server has let the user go.
    #[tokio::test]
    async fn close_waits_for_the_server() {
        let (addr, hub) = server().await;
        let a = client(&addr).await;
        let b = client(&addr).await;
        assert_eq!(hub.len(), 2);
        within(a.close(WAIT)).await;
        assert_eq!(hub.len(), 1, "the server let the user go first");
        drop(b);
    }

    /// A server that refuses the connection (here: full) is an error with
    /// its code, not a welcome.
    #[tokio::test]
    async fn a_refusal_instead_of_the_welcome_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"error server-full: too many connections\n")
                .await
                .unwrap();
        });
        match Client::connect(&addr, WAIT).await {
            Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::ServerFull),
            other => panic!("{other:?}"),
        }
    }
}
