//! TLS on the listener (`imd --tls-cert FILE --tls-key FILE`).
//!
//! With a [`Tls`] in [`Config::tls`](super::Config::tls), every accepted
//! connection is handed to [`serve`], which runs the TLS handshake inside
//! the connection's own task, so a client that never finishes its handshake
//! holds up nobody else's accept. The handshake is bounded by
//! [`HANDSHAKE_TIMEOUT`], holds the connection's slot and its address's
//! place (like any connection) while it runs, and ends with the connection
//! closed if it fails: the client has not been welcomed, has no name, and
//! nobody is told anything. Failures are logged at most once a second.
//!
//! rustls (through tokio-rustls) speaks TLS 1.2 and 1.3 with its `ring`
//! provider; nothing links OpenSSL. Plaintext connections do not pass
//! through here at all: without `--tls-cert` the listener hands the
//! socket's own halves to the connection, exactly as before.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::connection::serve_in_slot;
use super::hub::Hub;
use super::outbox::{self, PeerSocket};

/// How long a client may take to complete its TLS handshake after the
/// TCP connection is accepted. 10 s: a real client on a slow link needs a
/// few round trips (well under a second on most networks, a few seconds on
/// a bad one); a connection that sends no ClientHello at all (a port
/// scanner, a plaintext client waiting for the welcome line) is closed
/// then, giving back its slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's TLS settings: the certificate and key, and how long a
/// handshake may take. Cheap to clone (the rustls configuration is shared).
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    failures: Arc<Failures>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Why the certificate or key cannot be used. Each names the file and
/// what to fix; `imd` prints it and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    /// The key file holds no PEM private key.
    #[error("{path}: no private key in it (expected PEM: -----BEGIN PRIVATE KEY-----, or an RSA or EC key)")]
    NoKey { path: String },
    /// rustls refused the pair (e.g. the key does not belong to the
    /// certificate, or an unsupported key type).
    #[error("cannot use the certificate and key: {0}")]
    Unusable(rustls::Error),
}

impl Tls {
    /// Loads a PEM certificate chain (the server's certificate first, then
    /// any intermediates) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Tls::from_pem(
            &read(cert)?,
            &cert.display().to_string(),
            &read(key)?,
            &key.display().to_string(),
        )
    }

    /// [`Tls::from_pem_files`] with the files' contents; the names are only
    /// for messages.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_name: &str,
        key_pem: &[u8],
        key_name: &str,
    ) -> Result<Tls, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_name.into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey {
            path: key_name.into(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(TlsError::Unusable)?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            failures: Arc::default(),
        })
    }

    /// The same settings with another handshake timeout (tests use a short
    /// one to see a stalled handshake closed).
    pub fn with_handshake_timeout(mut self, limit: Duration) -> Tls {
        self.handshake_timeout = limit;
        self
    }
}

/// Runs the TLS handshake on `stream` (within the handshake timeout, and
/// given up at shutdown), then serves the user like any other, holding
/// `slot` throughout.
pub async fn serve<S>(
    tls: Tls,
    stream: TcpStream,
    addr: SocketAddr,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    slot: S,
) {
    let fd = stream.as_raw_fd();
    let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tls.failures.note(addr, &e.to_string()),
            Err(_) => {
                let why = format!("no handshake within {:?}", tls.handshake_timeout);
                return tls.failures.note(addr, &why);
            }
        },
    };
    let (r, w) = tokio::io::split(stream);
    let (r, w) = (TlsReader { half: r }, TlsWriter { half: w, fd });
    serve_in_slot(r, w, addr, hub, shutdown, slot).await
}

/// The reading half of a TLS connection, where a peer that closes the
/// socket without TLS's `close_notify` has simply left.
///
/// rustls reports such an end as an error, because in protocols that mark
/// the end of a message by the end of the stream it could hide a cut-off
/// reply. Here lines end with a newline, and the records an attacker could
/// drop by forging the TCP close are whole records (each authenticated),
/// so at worst the user's last lines are missing, as when a plaintext
/// connection drops. Many clients (a killed `openssl s_client`, an `imc
/// listen` stopped by Ctrl-C) end that way; they are told to others as
/// `quit`, like on a plaintext port, not as a connection error.
pub struct TlsReader {
    half: ReadHalf<TlsStream<TcpStream>>,
}

impl AsyncRead for TlsReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.half).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// The writing half of a TLS connection, with the socket under it for the
/// outbox's questions ([`PeerSocket`]): the TLS layer cannot answer them,
/// the TCP socket can.
pub struct TlsWriter {
    half: WriteHalf<TlsStream<TcpStream>>,
    /// The TCP socket's descriptor. It stays open as long as `half` lives:
    /// `half` shares ownership of the stream that owns the socket.
    fd: RawFd,
}

impl TlsWriter {
    fn socket(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` is the descriptor of the TcpStream inside the
        // TlsStream that `self.half` keeps alive, so it is open (and still
        // that socket) for as long as `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl PeerSocket for TlsWriter {
    fn unacked(&self) -> Option<usize> {
        outbox::unacked(self.socket())
    }

    fn reset_on_close(&self) {
        outbox::reset_on_close(self.socket())
    }
}

impl AsyncWrite for TlsWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.half).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.half).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.half).poll_shutdown(cx)
    }
}

/// Failed handshakes, logged at most once a second with how many there
/// were since the last log line, so that a scanner or a flood of plaintext
/// connections cannot flood the log. Shared by all connection tasks.
#[derive(Default)]
struct Failures {
    /// Failures since the last log line, and when that line was written.
    state: Mutex<(u64, Option<Instant>)>,
}

impl Failures {
    fn note(&self, addr: SocketAddr, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (count, last) = &mut *state;
        *count += 1;
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        tracing::warn!(%addr, failed = *count, "TLS handshake failed: {why}");
        *count = 0;
        *last = Some(now);
    }
}
