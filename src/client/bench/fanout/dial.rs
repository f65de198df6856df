//! How the open-loop run's connections are made: plaintext, or TLS from
//! the first byte (imd started with `--tls-cert`, a Redis `--tls-port`).
//!
//! The run is generic over [`Dial`] rather than boxing its halves, so the
//! plaintext bench keeps tokio's own socket halves (no dynamic dispatch,
//! no lock between a connection's reader and writer), while TLS gets the
//! rustls stream split by [`tokio::io::split`], which must share one
//! session between its halves. TLS writes are buffered in that session:
//! every writer flushes after each batch (a no-op on a plain socket).

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::client::tls::TlsConnector;

/// Turns a connected socket into the halves the run reads and writes.
pub(super) trait Dial: Clone + Send + Sync + 'static {
    type Read: AsyncRead + Send + Unpin + 'static;
    type Write: AsyncWrite + Send + Unpin + 'static;
    /// `stream`'s halves; `addr` (`HOST:PORT`) is what a TLS server's
    /// certificate must be valid for.
    fn halves(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> impl Future<Output = io::Result<(Self::Read, Self::Write)>> + Send;
}

/// Plaintext: the socket's own halves.
#[derive(Clone, Copy)]
pub(super) struct Plain;

impl Dial for Plain {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    async fn halves(
        &self,
        stream: TcpStream,
        _addr: &str,
    ) -> io::Result<(OwnedReadHalf, OwnedWriteHalf)> {
        Ok(stream.into_split())
    }
}

/// TLS with this trust (imc's `--tls`, `--ca`).
#[derive(Clone)]
pub(super) struct Tls(pub(super) TlsConnector);

impl Dial for Tls {
    type Read = ReadHalf<TlsStream<TcpStream>>;
    type Write = WriteHalf<TlsStream<TcpStream>>;
    async fn halves(&self, stream: TcpStream, addr: &str) -> io::Result<(Self::Read, Self::Write)> {
        Ok(tokio::io::split(self.0.handshake(stream, addr).await?))
    }
}
