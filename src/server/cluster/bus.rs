//! The cluster's message bus: Redis pub/sub between nodes.
//!
//! ```text
//! PUBLISH imchat:all      {"node":N,"notice":bool,"line":"<alice> hi"}      public lines and notices
//! PUBLISH imchat:node:<N> {"node":M,"to":"bob","from":"alice","text":"hi"}  a whisper for a user on N
//! ```
//!
//! Everything this node publishes goes through one queue to one publisher
//! task, which sends it in order, many per round trip. The queue is bounded
//! in bytes ([`OUT_QUEUE_BYTES`]): past half of it, senders wait before
//! their next lines are read, as they do for a slow local reader; only past
//! all of it (many senders at once) is a line not published, and the log
//! says so. Public
//! lines are published as the bytes already encoded for local fan-out, so
//! a message is encoded once. The subscriber task hands what other nodes
//! publish to [`LocalNode`]; when Redis goes away it tells local users,
//! reconnects with backoff, repairs this node's presence
//! ([`Cluster::repair`](super::presence)) and says so.
//!
//! (Over 400 lines: the byte-bounded queue, the publisher and the
//! subscriber are one pipeline; about 45 lines are tests.)

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::keys::{node_channel, ALL};
use super::{lock, Cluster, LocalNode};
use crate::protocol::ServerLine;

/// The longest wait between tries to reach (or rejoin) the cluster.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most publishes sent to Redis in one pipeline.
const PIPELINE: usize = 256;
/// Bytes of lines waiting to be published. Lines are small and Redis is
/// on a LAN, so the queue is nearly always empty; this bounds it when Redis
/// is slow (at 64 MiB, a node's publish backlog costs no more than 64 idle
/// users' queues at the default `--queue-bytes`).
pub const OUT_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// What one queued publish costs beyond its channel name and payload.
const OUTGOING_COST: usize = std::mem::size_of::<Outgoing>() + 32;

/// The byte count of the publish queue. Senders consult
/// [`Pending::congested`] after each read and wait in
/// [`Pending::wait_for_room`]; a line that would take it past the limit is
/// not queued.
#[derive(Debug)]
pub(super) struct Pending {
    bytes: AtomicUsize,
    limit: usize,
    room: Notify,
}

impl Pending {
    pub(super) fn new(limit: usize) -> Pending {
        Pending {
            bytes: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
        }
    }

    /// Counts `n` more bytes in, unless that would pass the limit.
    fn charge(&self, n: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + n <= self.limit).then_some(b + n)
            })
            .is_ok()
    }

    /// Counts `n` bytes out (published, or failed to be) and wakes waiters.
    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.room.notify_waiters();
    }

    fn congested(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > self.limit / 2
    }

    /// Waits until the queue is at most half full.
    async fn wait_for_room(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.congested() {
                return;
            }
            room.await;
        }
    }
}

/// Something to publish, in order.
#[derive(Debug)]
pub(super) struct Outgoing {
    channel: String,
    payload: String,
    /// For whispers: how many nodes received it (0: the user's node is gone).
    reply: Option<oneshot::Sender<Option<i64>>>,
}

impl Outgoing {
    fn cost(&self) -> usize {
        self.channel.len() + self.payload.len() + OUTGOING_COST
    }
}

/// A bus message on `imchat:all`. Borrows when publishing, so the line is
/// not copied on its way into JSON.
#[derive(Debug, Serialize, Deserialize)]
struct LineEvent<'a> {
    #[serde(borrow)]
    node: Cow<'a, str>,
    /// Presence notices obey each node's presence limit.
    notice: bool,
    /// One or more encoded lines, without the last `\n`.
    #[serde(borrow)]
    line: Cow<'a, str>,
}

/// A bus message on `imchat:node:<N>`.
#[derive(Debug, Serialize, Deserialize)]
struct WhisperEvent<'a> {
    #[serde(borrow)]
    node: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
}

impl Cluster {
    fn enqueue(
        &self,
        channel: String,
        payload: String,
        reply: Option<oneshot::Sender<Option<i64>>>,
    ) {
        if !self.is_healthy() {
            return;
        }
        let o = Outgoing {
            channel,
            payload,
            reply,
        };
        let cost = o.cost();
        if !self.pending.charge(cost) {
            tracing::warn!(
                "cluster publish queue full ({OUT_QUEUE_BYTES} bytes): a line was not sent to other nodes"
            );
            return;
        }
        if self.out.send(o).is_err() {
            // The publisher has stopped (shutting down).
            self.pending.release(cost);
        }
    }

    /// True while the publish queue is over half full: senders should wait
    /// in [`Cluster::wait_for_room`] before reading more (Redis is slow).
    pub fn congested(&self) -> bool {
        self.pending.congested()
    }

    /// Waits until the publish queue is at most half full.
    pub async fn wait_for_room(&self) {
        self.pending.wait_for_room().await
    }

    /// Publishes public lines, as encoded for local delivery, to the users
    /// of every other node.
    pub fn publish_public(&self, lines: &[u8]) {
        self.publish(lines, false);
    }

    /// Publishes an encoded presence notice to the users of every other
    /// node (each applies its own presence limit).
    pub fn publish_notice(&self, line: &[u8]) {
        self.publish(line, true);
    }

    fn publish(&self, wire: &[u8], notice: bool) {
        if !self.is_healthy() {
            return;
        }
        let text = wire.strip_suffix(b"\n").unwrap_or(wire);
        let ev = LineEvent {
            node: Cow::Borrowed(&self.node),
            notice,
            line: String::from_utf8_lossy(text),
        };
        if let Ok(payload) = serde_json::to_string(&ev) {
            self.enqueue(ALL.to_string(), payload, None);
        }
    }

    /// Sends a whisper to `to` (in any capitals, or a look-alike) on
    /// whichever node has it.
    /// If that node received it, returns the recipient's own spelling.
    pub async fn whisper(&self, from: &str, to: &str, text: &str) -> Option<String> {
        if !self.is_healthy() {
            return None;
        }
        let (owner, spelling) = self.locate(to).await.filter(|(o, _)| *o != self.node)?;
        let ev = WhisperEvent {
            node: Cow::Borrowed(&self.node),
            to: to.into(),
            from: from.into(),
            text: text.into(),
        };
        let payload = serde_json::to_string(&ev).ok()?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(node_channel(&owner), payload, Some(tx));
        match rx.await {
            // Not listed yet (its node claims a name before listing it):
            // the spelling typed, which is the same name.
            Ok(Some(n)) if n > 0 => Some(spelling.unwrap_or_else(|| to.to_string())),
            _ => None,
        }
    }

    /// A pub/sub connection subscribed to the broadcast channel and this
    /// node's own channel.
    pub(super) async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut ps = self.client.get_async_pubsub().await?;
        ps.subscribe(ALL).await?;
        ps.subscribe(node_channel(&self.node)).await?;
        Ok(ps)
    }

    /// Publishes queued lines in order, many per round trip.
    pub(super) async fn publisher(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(PIPELINE);
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => 0,
                n = rx.recv_many(&mut batch, PIPELINE) => n,
            };
            if n == 0 && batch.is_empty() {
                // Stopping: flush what is already queued, then end.
                rx.close();
                while rx.recv_many(&mut batch, PIPELINE).await > 0 {
                    self.publish_batch(&mut batch).await;
                }
                return;
            }
            self.publish_batch(&mut batch).await;
        }
    }

    async fn publish_batch(&self, batch: &mut Vec<Outgoing>) {
        let cost: usize = batch.iter().map(Outgoing::cost).sum();
        self.publish_pipeline(batch).await;
        self.pending.release(cost);
    }

    async fn publish_pipeline(&self, batch: &mut Vec<Outgoing>) {
        let mut pipe = redis::pipe();
        for o in batch.iter() {
            pipe.cmd("PUBLISH").arg(&o.channel).arg(&o.payload);
        }
        let mut c = self.conn();
        let result: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut c).await;
        match result {
            Ok(counts) => {
                self.published
                    .fetch_add(counts.len() as u64, Ordering::Relaxed);
                for (o, n) in batch.drain(..).zip(counts) {
                    if let Some(r) = o.reply {
                        let _ = r.send(Some(n));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "redis: publish failed, {} lines not sent to other nodes: {e}",
                    batch.len()
                );
                for o in batch.drain(..) {
                    if let Some(r) = o.reply {
                        let _ = r.send(None);
                    }
                }
            }
        }
    }

    /// Receives other nodes' lines and delivers them locally; reconnects
    /// with backoff when Redis goes away, then repairs presence.
    pub(super) async fn subscriber(
        self: Arc<Self>,
        local: Arc<dyn LocalNode>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        // The first subscription was made by `connect`, before this node
        // took any user, so nothing published meanwhile was missed.
        let mut initial = lock(&self.initial).take();
        let mut first = true;
        loop {
            let ps = match initial.take() {
                Some(ps) => Ok(ps),
                None => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        ps = self.subscribe() => ps,
                    }
                }
            };
            match ps {
                Ok(ps) => {
                    if first {
                        first = false;
                    } else if let Err(e) = self.repair(&*local).await {
                        // The command connection is still reconnecting, or
                        // nodes of another version hold the cluster.
                        tracing::warn!("redis: repair failed: {e}; retrying in {backoff:?}");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    backoff = Duration::from_millis(100);
                    if !self.healthy.swap(true, Ordering::AcqRel) {
                        tracing::info!("redis: reconnected; cluster messages resumed");
                        tell_local(&*local, "cluster messages resumed");
                    }
                    let mut messages = ps.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        let Some(msg) = msg else { break };
                        self.deliver(&*local, msg.get_channel_name(), msg.get_payload_bytes());
                    }
                    self.healthy.store(false, Ordering::Release);
                    tracing::error!("redis: subscription lost; local chat continues, reconnecting");
                    tell_local(
                        &*local,
                        "cluster messages are paused (redis unavailable); local chat continues",
                    );
                }
                Err(e) => {
                    tracing::warn!("redis: cannot subscribe: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hands one bus message to local users.
    fn deliver(&self, local: &dyn LocalNode, channel: &str, payload: &[u8]) {
        if channel == ALL {
            let Ok(ev) = serde_json::from_slice::<LineEvent>(payload) else {
                return;
            };
            if ev.node == self.node {
                return;
            }
            let mut line = ev.line.into_owned().into_bytes();
            line.push(b'\n');
            let line = Bytes::from(line);
            if ev.notice {
                local.notice(line);
            } else {
                local.public(line);
            }
        } else if let Ok(ev) = serde_json::from_slice::<WhisperEvent>(payload) {
            local.private(&ev.to, &ev.from, &ev.text);
        }
    }
}

/// Tells this node's users something about the cluster.
fn tell_local(local: &dyn LocalNode, text: &str) {
    local.public(ServerLine::Cluster { text: text.into() }.to_bytes());
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The publish queue is bounded in bytes, not lines: senders are told
    /// to wait past half, a line past the limit is refused, and waiters
    /// wake once it has drained below half.
    #[tokio::test]
    async fn publish_queue_is_bounded_in_bytes() {
        let p = Arc::new(Pending::new(1000));
        assert!(p.charge(400));
        assert!(!p.congested());
        assert!(p.charge(400));
        assert!(p.congested(), "800 of 1000 bytes is past half");
        assert!(!p.charge(201), "past the limit");
        assert!(p.charge(200), "up to the limit");
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        p.release(400);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "600 of 1000 is still past half");
        p.release(400);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once at most half full")
            .unwrap();
        assert_eq!(p.bytes.load(Ordering::Acquire), 200);
    }

    /// A queued publish is charged for its text and its bookkeeping, so a
    /// queue of short lines is bounded by what it really costs.
    #[test]
    fn a_publish_costs_more_than_its_text() {
        let o = Outgoing {
            channel: ALL.to_string(),
            payload: "x".repeat(10),
            reply: None,
        };
        assert!(o.cost() >= ALL.len() + 10 + std::mem::size_of::<Outgoing>());
    }
}
