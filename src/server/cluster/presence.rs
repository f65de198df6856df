//! Who is where in the cluster: this node's liveness, name claims, the
//! users of each node, and reaping nodes that died without leaving.
//!
//! ```text
//! SET  imchat:name:<KEY> <node> NX      a name claim: unique across the cluster (atomic)
//! HSET imchat:who:<node> KEY NAME       who is on each node (for `who`), as spelled
//! SET  imchat:alive:<node> 1 EX <ttl>   liveness, refreshed every ttl/3
//! SADD imchat:nodes <node>              every node that may need reaping
//! ```
//!
//! While Redis is unreachable, claims succeed locally and are made again
//! by [`Cluster::repair`] when it comes back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::keys::{
    alive_key, claim_key, reap_key, release_claim, users_key, JOIN, LOCATE, NODES, SCHEMA,
    SCHEMA_KEY, WHO,
};
use super::{Cluster, LocalNode};
use crate::protocol::{name_key, LeaveReason, ServerLine};

impl Cluster {
    /// Marks this node alive and a member, if the cluster runs this
    /// node's key [`SCHEMA`] (or no node is alive): see [`JOIN`]. Otherwise
    /// `Ok(Err(theirs))`, the running nodes' schema (`""` for nodes from
    /// before schemas were checked), and nothing is changed.
    pub(super) async fn register(&self) -> redis::RedisResult<Result<(), String>> {
        let mut c = self.conn();
        let (joined, theirs): (i64, String) = redis::Script::new(JOIN)
            .key(SCHEMA_KEY)
            .key(NODES)
            .key(alive_key(&self.node))
            .arg(SCHEMA)
            .arg(&self.node)
            .arg(self.config.ttl.as_secs().max(1))
            .invoke_async(&mut c)
            .await?;
        Ok(if joined == 1 { Ok(()) } else { Err(theirs) })
    }

    /// Claims `name` across the cluster. False if someone has it.
    /// While Redis is unreachable, claims succeed locally and are made again
    /// when the cluster comes back.
    pub async fn claim(&self, name: &str) -> bool {
        if !self.is_healthy() {
            return true;
        }
        let mut c = self.conn();
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(claim_key(name))
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

    /// Which node holds `name` (by its key: in any capitals, or a
    /// look-alike) and how its user spells it (`None` while that node has
    /// not listed it yet), in one atomic step; `None` if nobody holds it or
    /// Redis cannot say.
    pub(super) async fn locate(&self, name: &str) -> Option<(String, Option<String>)> {
        if !self.is_healthy() {
            return None;
        }
        redis::Script::new(LOCATE)
            .key(claim_key(name))
            .arg(name_key(name))
            .invoke_async(&mut self.conn())
            .await
            .ok()?
    }

    /// How the holder of `name` spells it, on whichever node: for the
    /// error of a rename or login whose claim lost.
    pub async fn spelling(&self, name: &str) -> Option<String> {
        self.locate(name).await?.1
    }

    /// Records that `name` is online here (after a successful claim), as
    /// spelled: another spelling of a name listed here replaces it.
    pub async fn add_user(&self, name: &str) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(users_key(&self.node)).arg(name_key(name)).arg(name);
        self.users_cmd(cmd, name).await;
    }

    /// Gives up `name`: no longer claimed, no longer in `who`.
    pub async fn remove_user(&self, name: &str) {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(users_key(&self.node)).arg(name_key(name));
        self.users_cmd(cmd, name).await;
        if self.is_healthy() {
            self.release(name).await;
        }
    }

    async fn users_cmd(&self, cmd: redis::Cmd, name: &str) {
        if !self.is_healthy() {
            return;
        }
        let mut c = self.conn();
        let r: redis::RedisResult<i64> = cmd.query_async(&mut c).await;
        if let Err(e) = r {
            tracing::debug!("redis: who {name}: {e}");
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

    /// Re-registers this node and everything about its users: after a
    /// reconnect, Redis may have restarted empty, or reaped us.
    pub(super) async fn repair(&self, local: &dyn LocalNode) -> redis::RedisResult<()> {
        if let Err(theirs) = self.register().await? {
            // Every node was gone long enough for nodes of another version
            // to take the cluster over. This node cannot share it: it stays
            // paused, serving its own users, and the caller tries again
            // with backoff, as for an unreachable Redis, until they leave.
            return Err(redis::RedisError::from((
                redis::ErrorKind::ClientError,
                "the cluster now runs imd nodes of another version",
                format!("key schema {theirs:?}; this node's is {SCHEMA}"),
            )));
        }
        let names = local.names();
        let mut c = self.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(users_key(&self.node)).ignore();
        for n in &names {
            pipe.cmd("HSET")
                .arg(users_key(&self.node))
                .arg(name_key(n))
                .arg(n)
                .ignore();
            pipe.cmd("SET").arg(claim_key(n)).arg(&self.node).arg("NX");
        }
        let claims: Vec<Option<String>> = pipe.query_async(&mut c).await?;
        for (n, claimed) in names.iter().zip(claims) {
            if claimed.is_none() {
                let owner: Option<String> = redis::cmd("GET")
                    .arg(claim_key(n))
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

    /// Refreshes this node's liveness and reaps nodes that stopped.
    pub(super) async fn heartbeat(
        self: Arc<Self>,
        local: Arc<dyn LocalNode>,
        stop: CancellationToken,
    ) {
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
            if let Err(e) = self.reap(&*local).await {
                tracing::warn!("redis: reaping failed: {e}");
            }
        }
    }

    /// Frees the names of nodes whose liveness expired and tells everyone
    /// their users went offline. One node reaps each dead node.
    async fn reap(&self, local: &dyn LocalNode) -> redis::RedisResult<()> {
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
                .arg(reap_key(&node))
                .arg(&self.node)
                .arg("NX")
                .arg("EX")
                .arg(60)
                .query_async(&mut c)
                .await?;
            if mine.is_none() {
                continue;
            }
            let users: Vec<String> = redis::cmd("HVALS")
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
                    reason: LeaveReason::NodeLost.as_str().into(),
                }
                .to_bytes();
                local.notice(line.clone());
                self.publish_notice(&line);
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

    /// Removes this node from the cluster (graceful shutdown).
    pub(super) async fn leave_cluster(&self, local: &dyn LocalNode) -> redis::RedisResult<()> {
        let mut c = self.conn();
        for n in local.names() {
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
