//! Timeout behaviour on paused tokio time: the server runs in the test's own
//! runtime, so hours of idle time pass instantly and deterministically.

use std::time::Duration;

use imchat::server::{self, Config};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Starts a server on this (paused) runtime; returns its address and the
/// handle that stops it.
async fn start(config: Config) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(listener, config, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

async fn lines(
    addr: std::net::SocketAddr,
) -> (
    tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    (BufReader::new(r).lines(), w)
}

/// A user silent for longer than the idle timeout is told why and
/// disconnected; the others are told it went offline; a user who keeps
/// talking stays.
#[tokio::test(start_paused = true)]
async fn idle_user_is_told_and_disconnected() {
    let (addr, _stop) = start(Config {
        idle_timeout: Some(Duration::from_secs(300)),
        ..Config::default()
    })
    .await;
    let (mut sleepy, _sw) = lines(addr).await;
    let welcome = sleepy.next_line().await.unwrap().unwrap();
    let sleepy_name = welcome.split(' ').nth(4).unwrap().to_string();
    let (mut chatty, mut cw) = lines(addr).await;
    let chatty_welcome = chatty.next_line().await.unwrap().unwrap();
    assert!(sleepy
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .ends_with("is online"));
    // Chatty speaks every 200 s of (virtual) time, so only sleepy is idle.
    cw.write_all(b"hi\n").await.unwrap();
    assert!(chatty.next_line().await.unwrap().unwrap().ends_with("> hi"));
    tokio::time::sleep(Duration::from_secs(200)).await;
    cw.write_all(b"still here\n").await.unwrap();
    let mut got = Vec::new();
    while let Some(line) = sleepy.next_line().await.unwrap() {
        got.push(line);
    }
    assert_eq!(
        got.last().unwrap(),
        "*** bye: idle for more than 300 s",
        "{got:?}"
    );
    loop {
        let line = chatty.next_line().await.unwrap().unwrap();
        if line.starts_with("***") {
            assert_eq!(line, format!("*** {sleepy_name} is offline (idle)"));
            break;
        }
    }
    // Chatty, who spoke 100 s ago, is still connected and served (a clock
    // that talking did not reset would have cut it at 300 s too).
    cw.write_all(b"who\n").await.unwrap();
    let chatty_name = chatty_welcome.split(' ').nth(4).unwrap().to_string();
    assert_eq!(
        chatty.next_line().await.unwrap().unwrap(),
        format!("who {chatty_name}")
    );
    assert_eq!(
        chatty.next_line().await.unwrap().unwrap(),
        "ok who: 1 online"
    );
}

/// With the idle timeout off (0 on the command line), a silent user stays
/// connected however long it is quiet.
#[tokio::test(start_paused = true)]
async fn idle_timeout_off_keeps_silent_users() {
    let (addr, _stop) = start(Config {
        idle_timeout: None,
        ..Config::default()
    })
    .await;
    let (mut quiet, _qw) = lines(addr).await;
    quiet.next_line().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    let (mut other, mut ow) = lines(addr).await;
    other.next_line().await.unwrap().unwrap();
    ow.write_all(b"who\n").await.unwrap();
    assert!(other
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .starts_with("who "));
    assert!(other
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .starts_with("who "));
    assert_eq!(
        other.next_line().await.unwrap().unwrap(),
        "ok who: 2 online"
    );
}

/// The idle clock does not run while the server holds a sender back:
/// a sender whose lines wait for a reader that is still taking data (here
/// one that reads nothing for 400 s of virtual time, with a stall bound of
/// an hour, so it is waited for) is not kicked as idle once it is let go.
#[tokio::test(start_paused = true)]
async fn a_sender_held_back_is_not_idle() {
    let (addr, _stop) = start(Config {
        idle_timeout: Some(Duration::from_secs(300)),
        queue_bytes: 64 * 1024,
        stall_timeout: Duration::from_secs(3600),
        ..Config::default()
    })
    .await;
    // The reader: a small receive buffer, so its queue fills quickly.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let (r, mut rw) = sock.connect(addr).await.unwrap().into_split();
    let mut reader = BufReader::new(r).lines();
    reader.next_line().await.unwrap().unwrap(); // welcome
    let (mut sender, mut sw) = lines(addr).await;
    sender.next_line().await.unwrap().unwrap(); // welcome
                                                // The sender reads everything it is sent, and remembers any bye.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = sender.next_line().await {
            let _ = seen_tx.send(line);
        }
    });
    const BURST: usize = 2000;
    let payload = "p".repeat(4000);
    // The task keeps the write half (in its output) until the test ends.
    let _burst = tokio::spawn(async move {
        for i in 0..BURST {
            sw.write_all(format!("{i} {payload}\n").as_bytes())
                .await
                .unwrap();
        }
        sw
    });
    // 400 s pass while the reader reads nothing but keeps talking (so it
    // is not idle itself); the sender is held back all that time.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(200)).await;
        rw.write_all(b"still reading, slowly\n").await.unwrap();
    }
    // Now the reader takes everything; the sender's lines all come back
    // to it, and it is never told it was idle.
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
    let mut echoed = 0;
    while echoed < BURST {
        let line = seen.recv().await.expect("sender still connected");
        assert!(!line.starts_with("*** bye"), "sender kicked: {line}");
        if line.contains("> ") && line.ends_with(&"p".repeat(10)) {
            echoed += 1;
        }
    }
}

/// The idle clock does not run while the line rate holds a sender back:
/// the server's pauses are not the user's silence. A flood read at 10
/// lines a second (about 2 s of pauses, the last one after the flood's
/// last line) with an idle timeout of 300 s leaves the sender connected,
/// and its next line goes out as usual.
#[tokio::test(start_paused = true)]
async fn a_sender_slowed_by_its_line_rate_is_not_idle() {
    let (addr, _stop) = start(Config {
        idle_timeout: Some(Duration::from_secs(300)),
        max_lines_per_sec: std::num::NonZeroU32::new(10),
        ..Config::default()
    })
    .await;
    let (mut flood, mut fw) = named(addr, "flood").await;
    let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
    fw.write_all(text.as_bytes()).await.unwrap();
    read_until(&mut flood, "<flood> line 29").await;
    fw.write_all(b"after\n").await.unwrap();
    let got = read_until(&mut flood, "<flood> after").await;
    assert_eq!(got, ["<flood> after"], "the sender was cut: {got:?}");
}

/// A connection that took `name` (its `ok rename` read).
async fn named(
    addr: std::net::SocketAddr,
    name: &str,
) -> (
    tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (mut r, mut w) = lines(addr).await;
    w.write_all(format!("rename|{name}\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut r, &format!("ok rename: you are now {name}")).await;
    (r, w)
}

/// Reads lines from `r` until one equals `last`; returns them all.
async fn read_until(
    r: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    last: &str,
) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(line) = r.next_line().await.unwrap() {
        let done = line == last;
        got.push(line);
        if done {
            return got;
        }
    }
    panic!("connection closed before {last:?}; got {got:?}");
}

/// `--max-lines-per-sec`: a flood over the rate is read at the rate, not
/// refused or cut. Every line arrives, in order, the last no sooner than
/// the rate allows (virtual time), while another user's line sent after
/// the flood goes through at once, ahead of most of it.
#[tokio::test(start_paused = true)]
async fn a_sender_over_its_line_rate_is_slowed_and_loses_nothing() {
    let (addr, _stop) = start(Config {
        idle_timeout: None,
        max_lines_per_sec: std::num::NonZeroU32::new(10),
        ..Config::default()
    })
    .await;
    let (mut ear, _ew) = named(addr, "ear").await;
    let (mut flood, mut fw) = named(addr, "flood").await;
    let (_or, mut ow) = named(addr, "other").await;

    let t0 = tokio::time::Instant::now();
    let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
    fw.write_all(text.as_bytes()).await.unwrap();
    ow.write_all(b"quick\n").await.unwrap();
    let got = read_until(&mut ear, "<flood> line 29").await;
    let elapsed = t0.elapsed();

    let flood_lines: Vec<&String> = got.iter().filter(|l| l.starts_with("<flood> ")).collect();
    let want: Vec<String> = (0..30).map(|i| format!("<flood> line {i}")).collect();
    assert_eq!(flood_lines, want.iter().collect::<Vec<_>>(), "{got:?}");
    let quick = got.iter().position(|l| l == "<other> quick");
    let quick = quick.unwrap_or_else(|| panic!("no <other> quick in {got:?}"));
    assert!(quick < 20, "the other user waited for the flood: {got:?}");
    // 10 at once (less the rename's token), then 10 a second: about 2 s.
    assert!(elapsed >= Duration::from_millis(1800), "{elapsed:?}");
    // The flooder itself was only slowed: it hears its own last line.
    read_until(&mut flood, "<flood> line 29").await;
}
