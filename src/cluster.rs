//! Several imd nodes as one chat, over Redis (`imd --redis URL`).
//!
//! Without `--redis` none of this runs and Redis is never touched. With it,
//! each node keeps serving its own users exactly as a single node does, and
//! Redis carries what crosses nodes:
//!
//! ```text
//! PUBLISH imchat:all  {"node":N,"notice":bool,"line":"<alice> hi"}   one per public line or presence notice
//! PUBLISH imchat:node:<N> {"node":M,"to":"bob","from":"alice","text":"hi"}   a whisper for a user on node N
//! SET   imchat:name:<NAME> <node> NX      a name claim: unique across the cluster (atomic)
//! SADD  imchat:users:<node> NAME          who is on each node (for `who`)
//! SET   imchat:alive:<node> 1 EX <ttl>    liveness, refreshed every ttl/3
//! SADD  imchat:nodes <node>               every node that may need reaping
//! ```
//!
//! - One publish per message for the whole cluster; each node fans out
//!   locally with the same [`Registry`] machinery as a single node.
//! - Everything a node publishes goes through one queue and one connection,
//!   in order, so every user sees each sender's lines in the order sent.
//!   The queue is bounded in bytes ([`OUT_QUEUE_BYTES`]): past half of it,
//!   senders wait before their next lines are read, as they do for a slow
//!   local reader; only past all of it (many senders at once) is a line not
//!   published, and the log says so.
//! - A node killed without cleaning up stops refreshing its `alive` key; the
//!   others notice within `ttl` + `ttl/3`, one of them (the holder of
//!   `imchat:reap:<node>`) frees its users' names, removes them from `who`,
//!   and tells everyone they went offline.
//! - If Redis goes away, the node keeps serving its own users, tells them
//!   cluster messages are paused, reconnects with backoff, resubscribes, then
//!   repairs its presence (alive key, user set, name claims) and says so.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::connection::Shared;
use crate::protocol::ServerLine;
use crate::registry::wire;

/// Cluster settings, from `imd --redis URL --cluster-ttl SECS`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT`.
    pub url: String,
    /// How long a node's presence outlives its last heartbeat: the bound on
    /// how long a killed node's users stay in `who`. 10 s by default: long
    /// enough to ride out a pause, short enough for users to trust `who`.
    pub ttl: Duration,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid redis URL {0:?}: {1}")]
    Url(String, redis::RedisError),
    #[error("cannot reach redis at {0}: {1}")]
    Unreachable(String, redis::RedisError),
}

/// Something to publish, in order.
#[derive(Debug)]
struct Outgoing {
    channel: String,
    payload: String,
    /// For whispers: how many nodes received it (0: the user's node is gone).
    reply: Option<oneshot::Sender<Option<i64>>>,
}

/// A bus message on `imchat:all`.
#[derive(Debug, Serialize, Deserialize)]
struct LineEvent {
    node: String,
    /// Presence notices obey each node's presence limit.
    notice: bool,
    line: String,
}

/// A bus message on `imchat:node:<N>`.
#[derive(Debug, Serialize, Deserialize)]
struct WhisperEvent {
    node: String,
    to: String,
    from: String,
    text: String,
}

/// This node's membership of a cluster.
pub struct Cluster {
    node: String,
    config: ClusterConfig,
    client: redis::Client,
    conn: ConnectionManager,
    out: mpsc::UnboundedSender<Outgoing>,
    out_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    /// What `out` holds, in bytes: the queue's bound.
    pending: Pending,
    /// False while Redis is unreachable; cluster messages are then dropped
    /// (local chat goes on) and users have been told.
    healthy: AtomicBool,
    /// The subscription made at start, for the subscriber task.
    initial: std::sync::Mutex<Option<redis::aio::PubSub>>,
    /// Ends the background tasks.
    stop: CancellationToken,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("url", &self.config.url)
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

const ALL: &str = "imchat:all";
const NODES: &str = "imchat:nodes";

fn name_key(name: &str) -> String {
    format!("imchat:name:{name}")
}
fn users_key(node: &str) -> String {
    format!("imchat:users:{node}")
}
fn alive_key(node: &str) -> String {
    format!("imchat:alive:{node}")
}
fn node_channel(node: &str) -> String {
    format!("imchat:node:{node}")
}

/// Deletes a key only if it still holds our value (a name claim we own).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Everyone on every live node, in one atomic step.
const WHO: &str = r"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', 'imchat:alive:' .. n) == 1 then
    for _, u in ipairs(redis.call('SMEMBERS', 'imchat:users:' .. n)) do
      table.insert(out, u)
    end
  end
end
return out";

/// Most publishes sent to Redis in one pipeline.
const PIPELINE: usize = 256;
/// Bytes of lines waiting to be published. Lines are small and Redis is
/// on a LAN, so the queue is nearly always empty; this bounds it when Redis
/// is slow (at 64 MiB, a node's publish backlog costs no more than 64 idle
/// users' queues at the default `--queue-bytes`).
pub const OUT_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// What one queued publish costs beyond its channel name and payload.
const OUTGOING_COST: usize = std::mem::size_of::<Outgoing>() + 32;

/// The byte count of the publish queue. Senders consult [`Pending::congested`]
/// after each read and wait in [`Pending::relieve`]; a line that would take
/// it past the limit is not queued.
#[derive(Debug)]
struct Pending {
    bytes: AtomicUsize,
    limit: usize,
    room: Notify,
}

impl Pending {
    fn new(limit: usize) -> Pending {
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
    async fn relieve(&self) {
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

impl Outgoing {
    fn cost(&self) -> usize {
        self.channel.len() + self.payload.len() + OUTGOING_COST
    }
}

impl Cluster {
    /// Connects to Redis (a clear error if it is unreachable) and registers
    /// this node. `label` (e.g. the listen address) goes into the node id for
    /// readable logs.
    pub async fn connect(config: ClusterConfig, label: &str) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| ClusterError::Url(config.url.clone(), e))?;
        let mgr_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let mut conn = ConnectionManager::new_with_config(client.clone(), mgr_config)
            .await
            .map_err(|e| ClusterError::Unreachable(config.url.clone(), e))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| ClusterError::Unreachable(config.url.clone(), e))?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let node = format!("{label}/{}/{nonce:08x}", std::process::id());
        let (out, out_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            node,
            config,
            client,
            conn,
            out,
            out_rx: std::sync::Mutex::new(Some(out_rx)),
            pending: Pending::new(OUT_QUEUE_BYTES),
            healthy: AtomicBool::new(false),
            initial: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        let unreachable = |e| ClusterError::Unreachable(cluster.config.url.clone(), e);
        cluster.register().await.map_err(unreachable)?;
        let ps = cluster.subscribe().await.map_err(unreachable)?;
        *cluster.initial.lock().unwrap_or_else(|e| e.into_inner()) = Some(ps);
        cluster.healthy.store(true, Ordering::Release);
        tracing::info!(
            node = cluster.node,
            url = cluster.config.url,
            "joined cluster"
        );
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Marks this node alive and a member.
    async fn register(&self) -> redis::RedisResult<()> {
        let mut c = self.conn();
        redis::pipe()
            .cmd("SET")
            .arg(alive_key(&self.node))
            .arg(1)
            .arg("EX")
            .arg(self.config.ttl.as_secs().max(1))
            .ignore()
            .cmd("SADD")
            .arg(NODES)
            .arg(&self.node)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    }

    /// Starts the subscriber, publisher and heartbeat tasks; they run until
    /// [`Cluster::shutdown`].
    pub fn start(self: &Arc<Self>, shared: Arc<Shared>) {
        let stop = self.stop.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = self.out_rx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tasks.push(tokio::spawn(self.clone().publisher(rx, stop.clone())));
        }
        tasks.push(tokio::spawn(
            self.clone().subscriber(shared.clone(), stop.clone()),
        ));
        tasks.push(tokio::spawn(self.clone().heartbeat(shared, stop)));
    }

    /// True while Redis is reachable and subscribed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

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
    /// in [`Cluster::relieve`] before reading more (Redis is slow).
    pub fn congested(&self) -> bool {
        self.pending.congested()
    }

    /// Waits until the publish queue is at most half full.
    pub async fn relieve(&self) {
        self.pending.relieve().await
    }

    /// Publishes a line every user on the other nodes should get.
    pub fn publish_line(&self, line: &ServerLine, notice: bool) {
        if self.is_healthy() {
            self.publish_wire(&wire(line), notice);
        }
    }

    /// [`Cluster::publish_line`] for a line already encoded for local
    /// delivery, so the broadcast path encodes each message once.
    pub fn publish_wire(&self, wire: &[u8], notice: bool) {
        if !self.is_healthy() {
            return;
        }
        let text = wire.strip_suffix(b"\n").unwrap_or(wire);
        let ev = LineEvent {
            node: self.node.clone(),
            notice,
            line: String::from_utf8_lossy(text).into_owned(),
        };
        if let Ok(payload) = serde_json::to_string(&ev) {
            self.enqueue(ALL.to_string(), payload, None);
        }
    }

    /// Claims `name` across the cluster. `Ok(false)` if someone has it.
    /// While Redis is unreachable, claims succeed locally and are made again
    /// when the cluster comes back.
    pub async fn claim(&self, name: &str) -> bool {
        if !self.is_healthy() {
            return true;
        }
        let mut c = self.conn();
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(name_key(name))
            .arg(&self.node)
            .arg("NX")
            .query_async(&mut c)
            .await;
        match r {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("redis: claim {name}: {e}");
                true
            }
        }
    }

    /// Gives up a claim without touching `who` (a rename that failed).
    pub async fn release(&self, name: &str) {
        let r = release_claim(&mut self.conn(), name, &self.node).await;
        if let Err(e) = r {
            tracing::debug!("redis: release {name}: {e}");
        }
    }

    /// Records that `name` is online here (after a successful claim).
    pub async fn add_user(&self, name: &str) {
        self.users_cmd("SADD", name).await;
    }

    /// Gives up `name`: no longer claimed, no longer in `who`.
    pub async fn remove_user(&self, name: &str) {
        self.users_cmd("SREM", name).await;
        if self.is_healthy() {
            self.release(name).await;
        }
    }

    async fn users_cmd(&self, cmd: &str, name: &str) {
        if !self.is_healthy() {
            return;
        }
        let mut c = self.conn();
        let r: redis::RedisResult<i64> = redis::cmd(cmd)
            .arg(users_key(&self.node))
            .arg(name)
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            tracing::debug!("redis: {cmd} {name}: {e}");
        }
    }

    /// Everyone online in the cluster, or `None` if Redis cannot say now.
    pub async fn who(&self) -> Option<Vec<String>> {
        if !self.is_healthy() {
            return None;
        }
        let mut c = self.conn();
        redis::Script::new(WHO)
            .key(NODES)
            .invoke_async(&mut c)
            .await
            .map_err(|e| tracing::warn!("redis: who: {e}"))
            .ok()
    }

    /// Sends a whisper to `to` on whichever node has it. True if that node
    /// received it.
    pub async fn whisper(&self, from: &str, to: &str, text: &str) -> bool {
        if !self.is_healthy() {
            return false;
        }
        let mut c = self.conn();
        let owner: Option<String> = match redis::cmd("GET")
            .arg(name_key(to))
            .query_async(&mut c)
            .await
        {
            Ok(o) => o,
            Err(_) => return false,
        };
        let Some(owner) = owner.filter(|o| *o != self.node) else {
            return false;
        };
        let ev = WhisperEvent {
            node: self.node.clone(),
            to: to.into(),
            from: from.into(),
            text: text.into(),
        };
        let Ok(payload) = serde_json::to_string(&ev) else {
            return false;
        };
        let (tx, rx) = oneshot::channel();
        self.enqueue(node_channel(&owner), payload, Some(tx));
        matches!(rx.await, Ok(Some(n)) if n > 0)
    }

    /// A pub/sub connection subscribed to the broadcast channel and this
    /// node's own channel.
    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut ps = self.client.get_async_pubsub().await?;
        ps.subscribe(ALL).await?;
        ps.subscribe(node_channel(&self.node)).await?;
        Ok(ps)
    }

    /// Publishes queued lines in order, many per round trip.
    async fn publisher(
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
    async fn subscriber(self: Arc<Self>, shared: Arc<Shared>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // The first subscription was made by `connect`, before this node
        // took any user, so nothing published meanwhile was missed.
        let mut initial = self
            .initial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
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
                    backoff = Duration::from_millis(100);
                    if first {
                        first = false;
                    } else if let Err(e) = self.repair(&shared).await {
                        // The command connection is still reconnecting.
                        tracing::warn!("redis: repair failed: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    if !self.healthy.swap(true, Ordering::AcqRel) {
                        tracing::info!("redis: reconnected; cluster messages resumed");
                        local_notice(&shared, "cluster messages resumed");
                    }
                    let mut messages = ps.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        let Some(msg) = msg else { break };
                        self.deliver(&shared, msg.get_channel_name(), msg.get_payload_bytes());
                    }
                    self.healthy.store(false, Ordering::Release);
                    tracing::error!("redis: subscription lost; local chat continues, reconnecting");
                    local_notice(
                        &shared,
                        "cluster messages are paused (redis unavailable); local chat continues",
                    );
                }
                Err(e) => {
                    tracing::warn!("redis: cannot subscribe: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Re-registers this node and everything about its users: after a
    /// reconnect, Redis may have restarted empty, or reaped us.
    async fn repair(&self, shared: &Shared) -> redis::RedisResult<()> {
        self.register().await?;
        let names = shared.registry.names();
        let mut c = self.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(users_key(&self.node)).ignore();
        for n in &names {
            pipe.cmd("SADD").arg(users_key(&self.node)).arg(n).ignore();
            pipe.cmd("SET").arg(name_key(n)).arg(&self.node).arg("NX");
        }
        let claims: Vec<Option<String>> = pipe.query_async(&mut c).await?;
        for (n, claimed) in names.iter().zip(claims) {
            if claimed.is_none() {
                let owner: Option<String> = redis::cmd("GET")
                    .arg(name_key(n))
                    .query_async(&mut c)
                    .await?;
                if owner.as_deref() != Some(self.node.as_str()) {
                    tracing::warn!(
                        name = n,
                        ?owner,
                        "name taken on another node while the cluster was paused"
                    );
                }
            }
        }
        Ok(())
    }

    /// Hands one bus message to local users.
    fn deliver(&self, shared: &Shared, channel: &str, payload: &[u8]) {
        if channel == ALL {
            let Ok(ev) = serde_json::from_slice::<LineEvent>(payload) else {
                return;
            };
            if ev.node == self.node {
                return;
            }
            let mut line = ev.line.into_bytes();
            line.push(b'\n');
            let line = Bytes::from(line);
            if ev.notice {
                shared.registry.notice(line);
            } else {
                shared.registry.broadcast(line);
            }
        } else if let Ok(ev) = serde_json::from_slice::<WhisperEvent>(payload) {
            shared.registry.deliver_private(&ev.to, &ev.from, &ev.text);
        }
    }

    /// Refreshes this node's liveness and reaps nodes that stopped.
    async fn heartbeat(self: Arc<Self>, shared: Arc<Shared>, stop: CancellationToken) {
        let every = (self.config.ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.is_healthy() {
                continue;
            }
            if let Err(e) = self.register().await {
                tracing::warn!("redis: heartbeat failed: {e}");
                continue;
            }
            if let Err(e) = self.reap(&shared).await {
                tracing::warn!("redis: reaping failed: {e}");
            }
        }
    }

    /// Frees the names of nodes whose liveness expired and tells everyone
    /// their users went offline. One node reaps each dead node.
    async fn reap(&self, shared: &Shared) -> redis::RedisResult<()> {
        let mut c = self.conn();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(NODES)
            .query_async(&mut c)
            .await?;
        for node in nodes.into_iter().filter(|n| *n != self.node) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(alive_key(&node))
                .query_async(&mut c)
                .await?;
            if alive {
                continue;
            }
            let mine: Option<String> = redis::cmd("SET")
                .arg(format!("imchat:reap:{node}"))
                .arg(&self.node)
                .arg("NX")
                .arg("EX")
                .arg(60)
                .query_async(&mut c)
                .await?;
            if mine.is_none() {
                continue;
            }
            let users: Vec<String> = redis::cmd("SMEMBERS")
                .arg(users_key(&node))
                .query_async(&mut c)
                .await?;
            tracing::warn!(
                node,
                users = users.len(),
                "node stopped without leaving; removing its users"
            );
            for u in &users {
                release_claim(&mut c, u, &node).await?;
                let line = ServerLine::Left {
                    name: u.clone(),
                    reason: "node lost".into(),
                };
                shared.registry.notice(wire(&line));
                self.publish_line(&line, true);
            }
            let _: () = redis::pipe()
                .cmd("DEL")
                .arg(users_key(&node))
                .ignore()
                .cmd("SREM")
                .arg(NODES)
                .arg(&node)
                .ignore()
                .query_async(&mut c)
                .await?;
        }
        Ok(())
    }

    /// Graceful exit, after every local connection has ended (and published
    /// its offline notice): flush the publish queue, then take this node out
    /// of the cluster. Bounded in time, so a dead Redis cannot hold up exit.
    pub async fn shutdown(&self, shared: &Shared) {
        self.stop.cancel();
        let handles: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for h in handles {
                let _ = h.await;
            }
            if let Err(e) = self.leave_cluster(shared).await {
                tracing::warn!("redis: leaving the cluster: {e}");
            }
        })
        .await;
    }

    /// Removes this node from the cluster (graceful shutdown).
    async fn leave_cluster(&self, shared: &Shared) -> redis::RedisResult<()> {
        let mut c = self.conn();
        for n in shared.registry.names() {
            release_claim(&mut c, &n, &self.node).await?;
        }
        redis::pipe()
            .cmd("DEL")
            .arg(users_key(&self.node))
            .ignore()
            .cmd("DEL")
            .arg(alive_key(&self.node))
            .ignore()
            .cmd("SREM")
            .arg(NODES)
            .arg(&self.node)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    }
}

/// Frees `name` if `node` still holds it (a later claim by someone else is
/// left alone).
async fn release_claim(
    c: &mut ConnectionManager,
    name: &str,
    node: &str,
) -> redis::RedisResult<i64> {
    redis::Script::new(RELEASE)
        .key(name_key(name))
        .arg(node)
        .invoke_async(c)
        .await
}

/// Tells this node's users something about the cluster.
fn local_notice(shared: &Shared, text: &str) {
    shared
        .registry
        .broadcast(wire(&ServerLine::Cluster { text: text.into() }));
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
            async move { p.relieve().await }
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
