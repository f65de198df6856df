//! TLS for the client side (`imc --tls [--ca FILE]`, the scenario runner,
//! `imc bench --tls`).
//!
//! A [`TlsConnector`] holds what imc trusts: the CA certificates of
//! `--ca FILE` if given (and then only those, so a private CA is not
//! mixed with the public ones), else the system's roots. The server's
//! certificate must be valid for the host part of the address imc dials:
//! an IP address is checked against the certificate's IP SANs, a host
//! name against its DNS names. There is no way to skip the check: a
//! connection whose server cannot prove who it is is no safer than
//! plaintext, only slower.
//!
//! [`halves`] turns a connected socket into a reading and a writing half,
//! TLS or not, so the rest of the client does not care which.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, RootCertStore};

/// The reading half of a connection, TLS or plaintext.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, TLS or plaintext. Writes through TLS
/// are buffered: flush after each request.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A whole connection, TLS or plaintext, for clients that do not split it.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// What a TLS client trusts; cheap to clone (the configuration is shared).
#[derive(Clone)]
pub struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Trusts the PEM certificates in `ca`, or the system's roots without
    /// it. The error says which file or store is unusable and why.
    pub fn new(ca: Option<&Path>) -> Result<TlsConnector, String> {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "--ca {}: no usable certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                        path.display()
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "no trusted root certificates found on this system; give the server's CA with --ca FILE"
                            .into(),
                    );
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the handshake on `stream`, checking the certificate against
    /// the host part of `addr` (`HOST:PORT`, `[V6]:PORT`). The error
    /// explains what was wrong with the server's certificate.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = server_name(addr)?;
        self.inner
            .connect(name, stream)
            .await
            .map_err(|e| io::Error::new(e.kind(), explain(&e)))
    }
}

/// `stream`'s halves: its own for plaintext (no extra layer), or after
/// a TLS handshake with `tls`'s trust.
pub async fn halves(
    stream: TcpStream,
    tls: Option<&TlsConnector>,
    addr: &str,
) -> io::Result<(Reader, Writer)> {
    match tls {
        None => {
            let (r, w) = stream.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Some(tls) => {
            let (r, w) = tokio::io::split(tls.handshake(stream, addr).await?);
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// `stream` whole: itself for plaintext, or after a TLS handshake.
pub async fn whole(
    stream: TcpStream,
    tls: Option<&TlsConnector>,
    addr: &str,
) -> io::Result<Box<dyn Stream>> {
    Ok(match tls {
        None => Box::new(stream),
        Some(tls) => Box::new(tls.handshake(stream, addr).await?),
    })
}

/// The name the certificate must be valid for: the host part of `addr`.
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS: {host:?} cannot be checked against a certificate: {e}"),
        )
    })
}

/// A failed handshake in words a user can act on, with rustls's own
/// account after it.
fn explain(e: &io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            // A TLS server refusing a connection (full, or too many from
            // this address) closes it without a word.
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                "TLS: the server closed the connection during the handshake (it may be full or limiting this address; see its log)".into()
            }
            _ => format!("TLS handshake failed: {e}"),
        };
    };
    let what = match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            // BadSignature: a trusted CA has the issuer's name, but did not
            // sign it.
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "the server's certificate is not signed by a CA this client trusts (the system's roots, or the --ca file)"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate is not valid for the address dialled"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet"
            }
            CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "the server's certificate is a CA certificate, which cannot be a server's own (make one with basicConstraints CA:FALSE; README, \"On a network\")"
            }
            _ => "the server's certificate was rejected",
        },
        rustls::Error::InvalidMessage(_) => {
            "the server does not speak TLS here (is it started with --tls-cert?)"
        }
        _ => "the TLS handshake failed",
    };
    format!("TLS: {what}: {tls}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The certificate is checked against the host part of the address,
    /// IPv6 brackets and all.
    #[test]
    fn server_name_is_the_host_part() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(server_name("127.0.0.1:8000").unwrap(), ip("127.0.0.1"));
        assert_eq!(server_name("[::1]:8000").unwrap(), ip("::1"));
        assert_eq!(
            server_name("chat.example.org:6697").unwrap(),
            ServerName::try_from("chat.example.org").unwrap()
        );
    }
}
