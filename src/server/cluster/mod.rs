//! Several imd nodes as one chat, over Redis (`imd --redis URL`).
//!
//! Without `--redis` none of this runs and Redis is never touched. With it,
//! each node keeps serving its own users exactly as a single node does, and
//! Redis carries what crosses nodes. The [`Hub`](super::hub::Hub) is the
//! only caller: it plugs the cluster in behind its operations, and the
//! cluster hands what other nodes send back to it through [`LocalNode`].
//!
//! - `keys`: every Redis key and channel, and the Lua scripts.
//! - `bus`: pub/sub. One publish per public line or notice for the whole
//!   cluster, each node fanning out locally; everything a node publishes
//!   goes through one queue (bounded in bytes; past half of it senders are
//!   held back) and one connection, in order, so every user sees each
//!   sender's lines in the order sent. If Redis goes away, the
//!   node keeps serving its own users, tells them cluster messages are
//!   paused, reconnects with backoff, resubscribes, then repairs its
//!   presence and says so.
//! - `presence`: names claimed atomically across the cluster (by their
//!   [`name_key`](crate::protocol::name_key), so `alice`, `Alice` and the
//!   look-alike `аlice` are one claim), who is on
//!   each node, heartbeats, and reaping: a node killed without cleaning up
//!   stops refreshing its `alive` key; the others notice within `ttl` +
//!   `ttl/3`, and one of them frees its users' names, removes them from
//!   `who`, and tells everyone they went offline (node lost).

mod bus;
mod keys;
mod presence;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use bus::OUT_QUEUE_BYTES;
use bus::{Outgoing, Pending};

/// What the cluster needs from this node: somewhere to deliver what the
/// other nodes send, and the names to re-register after Redis comes back.
/// Implemented by the [`Hub`](super::hub::Hub); a trait so that the
/// cluster depends on the hub's operations, not on the hub.
pub trait LocalNode: Send + Sync + 'static {
    /// Public lines (encoded, one or more) for every user here.
    fn public(&self, lines: Bytes);
    /// A presence notice (encoded), for every user here unless this node
    /// is over its presence limit.
    fn notice(&self, line: Bytes);
    /// A whisper for local user `to` (by its name key: in any capitals, or
    /// a look-alike); false if `to` is not here.
    fn private(&self, to: &str, from: &str, text: &str) -> bool;
    /// Everyone online here, as each spells its name, unsorted.
    fn names(&self) -> Vec<String>;
}

/// Cluster settings, from `imd --redis URL --cluster-ttl SECS
/// --cluster-queue-bytes BYTES`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT`.
    pub url: String,
    /// How long a node's presence outlives its last heartbeat: the bound on
    /// how long a killed node's users stay in `who`. 10 s by default: long
    /// enough to ride out a pause, short enough for users to trust `who`.
    pub ttl: Duration,
    /// Bound of this node's publish queue in bytes ([`OUT_QUEUE_BYTES`] by
    /// default): past half of it senders are held back, and a line that
    /// would pass it is not sent to other nodes. A setting so that an
    /// operator can trade memory for riding out a slower Redis, and so that
    /// a test can back the queue up without pushing 32 MiB through it.
    pub queue_bytes: usize,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid redis URL {0:?}: {1}")]
    Url(String, redis::RedisError),
    #[error("cannot reach redis at {0}: {1}")]
    Unreachable(String, redis::RedisError),
    /// Live nodes of another version hold the cluster (`keys::SCHEMA`).
    #[error(
        "the cluster at {url} runs imd nodes of another version (key schema {theirs}; this imd's is {ours}): \
         every node of a cluster must run one version, so stop the running nodes before starting this one"
    )]
    OtherVersion {
        url: String,
        theirs: String,
        ours: &'static str,
    },
}

/// This node's membership of a cluster.
pub struct Cluster {
    /// This node's id: the label given to [`Cluster::connect`], the
    /// process id and a nonce.
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
    /// PUBLISH commands Redis has acknowledged (`imd_cluster_published_total`);
    /// added to by the publisher task alone, once per pipeline.
    published: AtomicU64,
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
        let pending = Pending::new(config.queue_bytes);
        let cluster = Arc::new(Cluster {
            node,
            config,
            client,
            conn,
            out,
            out_rx: std::sync::Mutex::new(Some(out_rx)),
            pending,
            healthy: AtomicBool::new(false),
            published: AtomicU64::new(0),
            initial: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        let unreachable = |e| ClusterError::Unreachable(cluster.config.url.clone(), e);
        if let Err(theirs) = cluster.register().await.map_err(unreachable)? {
            return Err(ClusterError::OtherVersion {
                url: cluster.config.url.clone(),
                theirs: if theirs.is_empty() {
                    "1".into()
                } else {
                    theirs
                },
                ours: keys::SCHEMA,
            });
        }
        let ps = cluster.subscribe().await.map_err(unreachable)?;
        *lock(&cluster.initial) = Some(ps);
        cluster.healthy.store(true, Ordering::Release);
        tracing::info!(
            node = cluster.node,
            url = cluster.config.url,
            "joined cluster"
        );
        Ok(cluster)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Starts the subscriber, publisher and heartbeat tasks, which deliver
    /// to `local`; they run until [`Cluster::shutdown`].
    pub fn start(self: &Arc<Self>, local: Arc<dyn LocalNode>) {
        let stop = self.stop.clone();
        let mut tasks = lock(&self.tasks);
        if let Some(rx) = lock(&self.out_rx).take() {
            tasks.push(tokio::spawn(self.clone().publisher(rx, stop.clone())));
        }
        tasks.push(tokio::spawn(
            self.clone().subscriber(local.clone(), stop.clone()),
        ));
        tasks.push(tokio::spawn(self.clone().heartbeat(local, stop)));
    }

    /// True while Redis is reachable and subscribed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// PUBLISH commands Redis has acknowledged so far: one per batch of
    /// public lines from one read, per presence notice, per whisper to
    /// another node.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Graceful exit, after every local connection has ended (and published
    /// its offline notice): flush the publish queue, then take this node out
    /// of the cluster. Bounded in time, so a dead Redis cannot hold up exit.
    pub async fn shutdown(&self, local: &dyn LocalNode) {
        self.stop.cancel();
        let handles: Vec<_> = std::mem::take(&mut *lock(&self.tasks));
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for h in handles {
                let _ = h.await;
            }
            if let Err(e) = self.leave_cluster(local).await {
                tracing::warn!("redis: leaving the cluster: {e}");
            }
        })
        .await;
    }
}

/// Locks one of the cluster's small mutexes (each guards a single take or
/// push, so a panic cannot leave one half-updated; poisoning is ignored).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
