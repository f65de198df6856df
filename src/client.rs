//! An async client for imd, used by every `imc` command and by tests.
//!
//! A [`Client`] owns one connection. Each request method sends one command
//! and waits for *its* reply: the server answers each command line of one
//! connection in order, and replies are told apart from other traffic by
//! their kind (see [`crate::protocol`]). Lines that arrive meanwhile (other
//! users' messages, presence notices) are kept, in order, for
//! [`Client::next_event`].
//!
//! A public message has no `ok` line: the confirmation is the message coming
//! back to its sender as a broadcast, which the server queues for everyone in
//! the same step. So when [`Client::say`] returns, every online user has been
//! sent the message.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::codec::{Frame, LineCodec};
use crate::protocol::{Command, ErrorCode, ServerLine};

/// Longest server line the client accepts. Server lines carry user text of
/// up to the server's line limit plus a name and a prefix; 1 MiB leaves room
/// for any sane server configuration.
const MAX_SERVER_LINE: usize = 1 << 20;

/// What can go wrong talking to a server. `imc` maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect at all.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    /// The server refused the command.
    #[error("{message} ({code})")]
    Refused { code: ErrorCode, message: String },
    /// The connection ended (the reason, if the server gave one).
    #[error("connection lost: {0}")]
    Lost(String),
    /// Nothing happened in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One connection to an imd server.
#[derive(Debug)]
pub struct Client {
    lines: FramedRead<OwnedReadHalf, LineCodec>,
    writer: OwnedWriteHalf,
    name: String,
    events: VecDeque<ServerLine>,
    /// Lines that are not in imd's protocol (e.g. from the seed's server),
    /// kept as raw text events.
    unparsed: VecDeque<String>,
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
    /// Connects and waits for the welcome line, which tells our name.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut client = Client {
            lines: FramedRead::new(r, LineCodec::new(MAX_SERVER_LINE, MAX_SERVER_LINE)),
            writer: w,
            name: String::new(),
            events: VecDeque::new(),
            unparsed: VecDeque::new(),
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

    /// Our current name on the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.writer.peer_addr().ok()
    }

    async fn send(&mut self, cmd: Command<'_>) -> Result<(), ClientError> {
        self.writer
            .write_all(cmd.encode().as_bytes())
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))
    }

    /// Sends a public message and waits until it comes back to us, which
    /// means it has been queued for every online user.
    pub async fn say(&mut self, text: &str) -> Result<(), ClientError> {
        check_text(text)?;
        // The server reads `who`, `rename|..` and `to|..` as commands, so such
        // a text would never come back as a message (and `rename|` would
        // rename us).
        if !matches!(Command::parse(text), Command::Say(_)) {
            return Err(ClientError::Refused {
                code: ErrorCode::Usage,
                message: format!(
                    "{:?} would be read as a command, not sent as a message",
                    crate::protocol::visible(text)
                ),
            });
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
            return Err(ClientError::Refused {
                code: ErrorCode::NoSuchUser,
                message: format!("no user named {to:?} is online"),
            });
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
            return Err(ClientError::Refused {
                code: ErrorCode::BadName,
                message: format!("invalid name {name:?}: no line breaks"),
            });
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

    /// The names of everyone online, sorted.
    pub async fn who(&mut self) -> Result<Vec<String>, ClientError> {
        self.send(Command::Who).await?;
        let mut names = Vec::new();
        loop {
            let line = self.read_line().await?;
            match line {
                Event::Line(ServerLine::WhoItem { name }) => names.push(name),
                Event::Line(ServerLine::WhoEnd { .. }) => return Ok(names),
                Event::Line(l @ ServerLine::Error { .. }) => return refused(&l),
                Event::Line(ServerLine::Bye { reason }) => return Err(ClientError::Lost(reason)),
                Event::Line(l) => self.events.push_back(l),
                Event::Raw(r) => self.unparsed.push_back(r),
            }
        }
    }

    /// The next line that is not a reply to a request: a message, a notice,
    /// or a line outside the protocol. `Ok(None)` when the server closed the
    /// connection.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        if let Some(l) = self.events.pop_front() {
            return Ok(Some(Event::Line(l)));
        }
        if let Some(r) = self.unparsed.pop_front() {
            return Ok(Some(Event::Raw(r)));
        }
        match self.read_line().await {
            Ok(e) => Ok(Some(e)),
            Err(ClientError::Lost(r)) if r.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads lines until `pick` returns a result; other lines are kept as
    /// events. A `bye` or end of stream ends the wait with `Lost`.
    async fn wait_for<T>(
        &mut self,
        mut pick: impl FnMut(&ServerLine) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        loop {
            match self.read_line().await {
                Ok(Event::Line(line)) => {
                    if let Some(result) = pick(&line) {
                        return result;
                    }
                    if let ServerLine::Bye { reason } = line {
                        return Err(ClientError::Lost(reason));
                    }
                    self.events.push_back(line);
                }
                Ok(Event::Raw(raw)) => self.unparsed.push_back(raw),
                Err(ClientError::Lost(r)) if r.is_empty() => {
                    return Err(ClientError::Lost("server closed the connection".into()))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one line. End of stream is `Lost("")`.
    async fn read_line(&mut self) -> Result<Event, ClientError> {
        loop {
            match self.lines.next().await {
                None => return Err(ClientError::Lost(String::new())),
                Some(Err(e)) => return Err(ClientError::Lost(e.to_string())),
                Some(Ok(Frame::TooLong)) => continue,
                Some(Ok(Frame::Line(bytes))) => {
                    let text = String::from_utf8_lossy(&bytes);
                    return Ok(match ServerLine::parse(&text) {
                        Some(l) => Event::Line(l),
                        None => Event::Raw(text.into_owned()),
                    });
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

/// Text that the server would ignore or split can never be confirmed, so it
/// is refused before sending.
fn check_text(text: &str) -> Result<(), ClientError> {
    if text.trim().is_empty() {
        return Err(ClientError::Refused {
            code: ErrorCode::EmptyMessage,
            message: "message is empty".into(),
        });
    }
    if text.contains(['\n', '\r']) {
        return Err(ClientError::Refused {
            code: ErrorCode::Usage,
            message: "a message is one line; send each line separately".into(),
        });
    }
    Ok(())
}
