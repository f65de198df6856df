//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on its own listener
//! (`imd --metrics ADDR`).
//!
//! A few dozen lines of HTTP rather than an HTTP server crate: one request
//! per connection, from Prometheus or `curl`, answered and closed. Like
//! every other resource of imd it is bounded:
//!
//! - at most [`MAX_HEAD`] bytes of request head (more: `431`);
//! - the head must arrive within [`READ_TIMEOUT`] (else `408`), and the
//!   answer be taken within [`WRITE_TIMEOUT`] (else the connection is
//!   dropped), so a silent or stuck client holds its place for seconds;
//! - at most [`MAX_SCRAPES`] connections at once: past that, connections
//!   wait in the kernel's accept queue (they are not accepted, so they
//!   cost imd nothing) until a place frees.
//!
//! ```text
//! GET /metrics          200, the Prometheus text format (0.0.4)
//! HEAD /metrics         200, the same headers, no body
//! other method /metrics 405, with `Allow: GET, HEAD`
//! any other path        404
//! not HTTP              400
//! ```
//!
//! A query string (`/metrics?x=y`) is ignored. Every answer says
//! `Connection: close`, and the connection is closed after it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{registry, render, Source};

/// Longest request head (request line and headers) read. 8 KiB, nginx's
/// default for one header line: Prometheus sends about 300 bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for the whole request head to arrive.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the client to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrape connections served at once. A Prometheus server scrapes each
/// target on one connection at a time; 4 leaves room for a second
/// Prometheus and a person with `curl`.
pub const MAX_SCRAPES: usize = 4;

/// Serves `GET /metrics` from `source` on `listener` until `stop` is
/// cancelled. Accept errors (out of descriptors) are logged and retried
/// after a pause; a connection's errors end only that connection.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>, stop: CancellationToken) {
    let listener = &listener;
    serve_from(
        move || async move { listener.accept().await.map(|(s, _)| s) },
        registry(source),
        stop,
    )
    .await
}

/// [`serve`] over whatever `accept` yields (a listener's sockets, or
/// in-memory pipes in the tests).
async fn serve_from<S, F, Fut>(mut accept: F, registry: Registry, stop: CancellationToken)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        // A place first, then accept: past the limit, connections wait in
        // the kernel's queue rather than in ours.
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else { return };
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            s = accept() => s,
        };
        match stream {
            Ok(stream) => {
                let registry = registry.clone();
                tokio::spawn(async move {
                    answer(stream, &registry).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}; retrying in 100 ms");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Reads one request from `stream`, answers it, and closes the connection.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, registry: &Registry) {
    let reply = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Reply::error(
            "408 Request Timeout",
            "the request head did not arrive in time",
        ),
        Ok(Head::Closed) => return,
        Ok(Head::TooLong) => Reply::error(
            "431 Request Header Fields Too Large",
            "the request head is too long",
        ),
        Ok(Head::Complete(head)) => route(&head, registry),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&reply.encode()).await?;
        stream.shutdown().await
    })
    .await;
}

/// What arrived of a request head.
enum Head {
    /// Up to and without the blank line that ends it.
    Complete(Vec<u8>),
    /// Over [`MAX_HEAD`] without its end.
    TooLong,
    /// The connection ended (or failed) first.
    Closed,
}

/// Reads until the blank line that ends a request head.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Head::Complete(buf);
        }
        if buf.len() > MAX_HEAD {
            return Head::TooLong;
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where the head in `buf` ends: at its first empty line (`\r\n\r\n`, or
/// `\n\n` from a client that sends bare newlines).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n");
    let lf = memchr::memmem::find(buf, b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer to a complete request head.
fn route(head: &[u8], registry: &Registry) -> Reply {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reply::error("400 Bad Request", "not an HTTP request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Reply::error("400 Bad Request", "only HTTP/1.x is served");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Reply::error("404 Not Found", "only /metrics is served here");
    }
    match method {
        "GET" | "HEAD" => Reply {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            allow: false,
            body: render(registry),
            head_only: method == "HEAD",
        },
        _ => Reply {
            allow: true,
            ..Reply::error("405 Method Not Allowed", "only GET and HEAD")
        },
    }
}

/// An HTTP response.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    /// Say `Allow: GET, HEAD` (with a 405).
    allow: bool,
    body: String,
    /// A HEAD request: the headers of the body, without it.
    head_only: bool,
}

impl Reply {
    /// An error `status` (`404 Not Found`) saying `why` in plain text.
    fn error(status: &'static str, why: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: format!("{why}\n"),
            head_only: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let allow = if self.allow {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::metrics::tests::Fixed;
    use crate::server::metrics::Metrics;
    use tokio::io::DuplexStream;
    use tokio::time::Instant;

    fn test_registry() -> Registry {
        registry(Arc::new(Fixed(Metrics::new(), None)))
    }

    /// Sends `request` on a fresh in-memory connection and returns the
    /// whole answer.
    async fn ask(request: &[u8]) -> String {
        ask_through(request, 1 << 16).await
    }

    /// [`ask`] through a pipe that holds at most `pipe` bytes, so that the
    /// server reads the request in pieces of that size at most.
    async fn ask_through(request: &[u8], pipe: usize) -> String {
        let (mut client, server) = tokio::io::duplex(pipe);
        let registry = test_registry();
        let served = tokio::spawn(async move { answer(server, &registry).await });
        client.write_all(request).await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        served.await.unwrap();
        got
    }

    /// GET and HEAD of /metrics answer the Prometheus text format; any
    /// other path is 404, another method 405, and what is not HTTP 400.
    #[tokio::test]
    async fn routes() {
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        assert!(body.contains("\nimd_users_online 2\n"), "{body}");
        assert!(ok.contains(&format!("Content-Length: {}\r\n", body.len())));
        let query = ask(b"GET /metrics?name[]=x HTTP/1.0\n\n").await;
        assert!(query.starts_with("HTTP/1.1 200 OK\r\n"), "{query}");
        let head = ask(b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
        for (request, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404 Not Found"),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", "404 Not Found"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            (b"who\n\n", "400 Bad Request"),
            (b"GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
        ] {
            let got = ask(request).await;
            assert!(
                got.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{request:?}: {got}"
            );
            assert!(!got.contains("imd_"), "{got}");
        }
        assert!(ask(b"PUT /metrics HTTP/1.1\r\n\r\n")
            .await
            .contains("\r\nAllow: GET, HEAD\r\n"));
    }

    /// A head longer than [`MAX_HEAD`] is refused without reading on.
    #[tokio::test]
    async fn a_long_head_is_refused() {
        let mut request = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        request.resize(MAX_HEAD + 2048, b'a');
        let got = ask(&request).await;
        assert!(
            got.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{got}"
        );
    }

    /// A head of 8 KiB (the documented limit, written out here so that a
    /// smaller [`MAX_HEAD`] fails) is served, even when it fills the
    /// buffer exactly before its blank line arrives.
    #[tokio::test]
    async fn a_head_of_8_kib_is_served() {
        let mut request = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        request.resize(8192, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let got = ask(&request).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }

    /// A head over the limit is refused however the reads split it (here
    /// 1000 bytes at a time, so the bytes read are never exactly
    /// [`MAX_HEAD`]), not read on until the client gives up.
    #[tokio::test(start_paused = true)]
    async fn a_long_head_read_in_odd_pieces_is_refused() {
        let mut request = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        request.resize(9000, b'a');
        let got = ask_through(&request, 1000).await;
        assert!(
            got.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{got}"
        );
    }

    /// A client that sends nothing is answered 408 after [`READ_TIMEOUT`].
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let t0 = Instant::now();
        let got = ask(b"GET /metrics HTTP/1.1\r\n").await;
        assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
        assert_eq!(t0.elapsed(), READ_TIMEOUT);
    }

    /// At most [`MAX_SCRAPES`] connections are served at once: with that
    /// many silent clients holding their places, the next one is answered
    /// only once they time out, not before.
    #[tokio::test(start_paused = true)]
    async fn concurrent_scrapes_are_capped() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<DuplexStream>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let stop = CancellationToken::new();
        let accept = move || {
            let rx = rx.clone();
            async move {
                let next = rx.lock().await.recv().await;
                next.ok_or_else(|| std::io::ErrorKind::NotConnected.into())
            }
        };
        let server = tokio::spawn(serve_from(accept, test_registry(), stop.clone()));
        let connect = || {
            let (client, server) = tokio::io::duplex(1 << 16);
            tx.send(server).unwrap();
            client
        };
        let t0 = Instant::now();
        let mut silent: Vec<_> = (0..MAX_SCRAPES).map(|_| connect()).collect();
        let mut late = connect();
        late.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        late.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            t0.elapsed() >= READ_TIMEOUT,
            "answered after {:?}, while {MAX_SCRAPES} others held every place",
            t0.elapsed()
        );
        for s in &mut silent {
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
        }
        stop.cancel();
        server.await.unwrap();
    }
}
