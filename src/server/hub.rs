//! The hub: the one owner of who is online on this node, of fan-out, and of
//! the link to the other nodes of a cluster.
//!
//! It has the operations the protocol has: [`Hub::join`], [`Hub::leave`],
//! [`Hub::say`], [`Hub::whisper`], [`Hub::rename`] and [`Hub::who`]. Each
//! does the local part and, when this node is one of several (`imd
//! --redis`), the cluster part, so a connection never knows whether there
//! is a cluster: the single-node and cluster paths are one code path. The
//! hub answers with typed outcomes ([`RenameError::Taken`], [`NoSuchUser`]); what a
//! user is told about them, word for word, is the connection's business
//! (and [`crate::protocol`]'s).
//!
//! How a sender's lines are batched before they get here is in
//! [`super::connection`]; how overload slows senders rather than cutting
//! readers is in [`super::outbox`].
//!
//! # One lock, never across an await
//!
//! One `std::sync::Mutex` guards the name table. It is never held across an
//! `.await` and never while touching a socket: under it we only look names
//! up and push shared [`Bytes`] into non-blocking [`Outbox`]es. Holding it
//! for the whole fan-out of a line is deliberate: it gives all users one
//! order of events, so each user sees every sender's lines in the order
//! sent, and a join, rename or leave is atomic with respect to every
//! message. Cluster calls (Redis round trips) happen outside it.
//!
//! (Over 400 lines: about 220 of them are unit tests of each operation.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::cluster::{Cluster, LocalNode};
use super::metrics::{ClusterStatus, Metrics, Source};
use super::outbox::{count_lines, outbox, Budget, Drain, Outbox};
use super::Config;
use crate::protocol::{validate_name, LeaveReason, NameError, ServerLine};

/// An online user as the hub sees it: where to send its lines.
#[derive(Debug)]
pub struct User {
    /// Unique for the server's lifetime; tells two holders of one name apart.
    pub id: u64,
    /// Where the user connected from (its default name).
    pub addr: SocketAddr,
    /// Its outbound queue.
    pub outbox: Outbox,
}

/// Why a rename did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenameError {
    /// The name breaks the name rules.
    Invalid(NameError),
    /// Someone else has it (on this node or, in a cluster, another one).
    Taken,
}

/// Why a whisper did not happen: nobody online has that name, here or on
/// another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchUser;

/// Everyone online on this node, the limits, and the cluster link.
#[derive(Debug)]
pub struct Hub {
    users: Mutex<HashMap<String, Arc<User>>>,
    next_id: AtomicU64,
    /// The server's limits (every connection reads them from here).
    config: Config,
    /// All users' queued output, bounded by [`Config::max_queued_bytes`].
    budget: Arc<Budget>,
    /// The other nodes, when this node is one of several (`imd --redis`).
    cluster: Option<Arc<Cluster>>,
    /// What the connections count, for `imd --metrics`.
    metrics: Arc<Metrics>,
}

impl Hub {
    /// A hub with nobody online; `cluster` (from [`Cluster::connect`])
    /// links it to other nodes. Call [`Hub::start`] before the first join.
    pub fn new(config: Config, cluster: Option<Arc<Cluster>>) -> Arc<Hub> {
        Arc::new(Hub {
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            budget: Budget::new(config.max_queued_bytes),
            config,
            cluster,
            metrics: Metrics::new(),
        })
    }

    /// Starts receiving from the other nodes, if this is a cluster node.
    pub fn start(self: &Arc<Self>) {
        if let Some(c) = &self.cluster {
            c.start(self.clone());
        }
    }

    /// Leaves the cluster, if this is a cluster node; call after every
    /// connection has ended (and so has told the others it left).
    pub async fn stop(&self) {
        if let Some(c) = &self.cluster {
            c.shutdown(self).await;
        }
    }

    /// The server's limits.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// All users' queued output together.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The counters behind `imd --metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<User>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (each update is a single insert or remove), so poisoning is ignored.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of users online on this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody is online on this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A user for a new connection from `addr`, not yet online, and the
    /// writer side of its queue.
    pub fn new_user(&self, addr: SocketAddr) -> (Arc<User>, Drain) {
        let (outbox, drain) = outbox(
            self.config.queue_bytes,
            self.config.stall_timeout,
            self.budget.clone(),
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (Arc::new(User { id, addr, outbox }), drain)
    }

    /// Presence notices (online, offline, rename) are sent only while at
    /// most [`Config::presence_limit`] users are online: every join told to
    /// everyone costs N² lines; big IRC networks such as Twitch's stop
    /// sending JOIN/PART above 1,000 users for the same reason. `who` stays
    /// exact at any size.
    fn presence_on(&self, online: usize) -> bool {
        online <= self.config.presence_limit
    }

    /// Puts `user` online as `name` (its address, unique among live
    /// connections) and tells everyone, here and on the other nodes.
    pub async fn join(&self, name: &str, user: &Arc<User>) {
        let notice = ServerLine::Joined { name: name.into() };
        let bytes = notice.to_bytes();
        {
            let mut users = self.lock();
            if self.presence_on(users.len() + 1) {
                fan_out(users.values(), &bytes, None);
            }
            if let Some(old) = users.insert(name.to_string(), user.clone()) {
                // Two live connections never share an address; if the OS
                // reused one before we saw the old connection end, the old
                // one goes.
                tracing::warn!(name, old = old.id, "duplicate address name replaced");
            }
        }
        // Cluster calls are boxed here and below: their futures would
        // otherwise be part of every connection's state, cluster or not,
        // and idle connections are most of a big server.
        if let Some(c) = &self.cluster {
            // Address names are claimed too, so `who` and whispers see
            // them; two nodes' clients could share an address only across
            // hosts.
            if !Box::pin(c.claim(name)).await {
                tracing::warn!(name, "address name already claimed on another node");
            }
            Box::pin(c.add_user(name)).await;
            c.publish_notice(&bytes);
        }
    }

    /// Takes `name` offline if it still belongs to `user`, and tells
    /// everyone why: users here unless the whole node is shutting down
    /// ([`LeaveReason::Shutdown`]), users on other nodes always.
    pub async fn leave(&self, name: &str, user: &User, reason: LeaveReason) {
        let notice = ServerLine::Left {
            name: name.into(),
            reason: reason.as_str().into(),
        }
        .to_bytes();
        {
            let mut users = self.lock();
            if users.get(name).is_some_and(|u| u.id == user.id) {
                users.remove(name);
                if reason != LeaveReason::Shutdown && self.presence_on(users.len() + 1) {
                    fan_out(users.values(), &notice, None);
                }
            }
        }
        if let Some(c) = &self.cluster {
            Box::pin(c.remove_user(name)).await;
            c.publish_notice(&notice);
        }
    }

    /// Sends `lines` (one or more encoded public lines) to every user here,
    /// the sender included, and to the other nodes. Adds to `congested`
    /// the users whose queues are now over half full, for the sender to
    /// wait on before reading on.
    pub fn say(&self, lines: Bytes, congested: &mut Vec<Arc<User>>) {
        if let Some(c) = &self.cluster {
            c.publish_public(&lines);
        }
        fan_out(self.lock().values(), &lines, Some(congested));
    }

    /// True while this node's publishes to the other nodes are backed up
    /// (Redis is slow): a sender should wait in [`Hub::wait_for_cluster`]
    /// before its next lines are read, as for a slow local reader.
    pub fn cluster_behind(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.congested())
    }

    /// Waits until this node's publish queue is at most half full.
    pub async fn wait_for_cluster(&self) {
        if let Some(c) = &self.cluster {
            c.wait_for_room().await;
        }
    }

    /// Delivers the whisper `text` (already [visible](crate::protocol::visible))
    /// from `from` to `to`, here or on another node. On success, returns
    /// the recipient if it is here and its queue is now congested.
    pub async fn whisper(
        &self,
        from: &str,
        to: &str,
        text: &str,
    ) -> Result<Option<Arc<User>>, NoSuchUser> {
        let line = private_line(from, text);
        {
            let users = self.lock();
            if let Some(target) = users.get(to) {
                target.outbox.push(line);
                return Ok(target.outbox.congested().then(|| target.clone()));
            }
        }
        // Not here: maybe on another node of the cluster.
        match &self.cluster {
            Some(c) if Box::pin(c.whisper(from, to, text)).await => Ok(None),
            _ => Err(NoSuchUser),
        }
    }

    /// Renames `user` from `old` to `new`, atomically: of concurrent
    /// renames to one name, here or on any node, exactly one wins.
    /// Everyone else is told. Renaming to the name one has succeeds and
    /// tells nobody.
    pub async fn rename(&self, user: &Arc<User>, old: &str, new: &str) -> Result<(), RenameError> {
        validate_name(new).map_err(RenameError::Invalid)?;
        if old == new {
            return Ok(());
        }
        // In a cluster the name is first claimed atomically in Redis.
        if let Some(c) = &self.cluster {
            if !Box::pin(c.claim(new)).await {
                return Err(RenameError::Taken);
            }
        }
        let notice = ServerLine::NameChanged {
            old: old.into(),
            new: new.into(),
        }
        .to_bytes();
        let renamed = {
            let mut users = self.lock();
            let free = !users.contains_key(new);
            if free {
                users.remove(old);
                users.insert(new.to_string(), user.clone());
                if self.presence_on(users.len()) {
                    let others = users.values().filter(|u| u.id != user.id);
                    fan_out(others, &notice, None);
                }
            }
            free
        };
        if !renamed {
            if let Some(c) = &self.cluster {
                Box::pin(c.release(new)).await;
            }
            return Err(RenameError::Taken);
        }
        if let Some(c) = &self.cluster {
            Box::pin(c.remove_user(old)).await;
            Box::pin(c.add_user(new)).await;
            c.publish_notice(&notice);
        }
        Ok(())
    }

    /// Everyone online, sorted: in a cluster, on every live node (this
    /// node's users alone while Redis cannot say).
    pub async fn who(&self) -> Vec<String> {
        let cluster_names = match &self.cluster {
            Some(c) => Box::pin(c.who()).await,
            None => None,
        };
        let mut names = cluster_names.unwrap_or_else(|| self.names());
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// What the cluster delivers here from the other nodes.
impl LocalNode for Hub {
    fn public(&self, lines: Bytes) {
        fan_out(self.lock().values(), &lines, None);
    }

    fn notice(&self, line: Bytes) {
        let users = self.lock();
        if self.presence_on(users.len()) {
            fan_out(users.values(), &line, None);
        }
    }

    fn private(&self, to: &str, from: &str, text: &str) -> bool {
        match self.lock().get(to) {
            Some(target) => target.outbox.push(private_line(from, text)),
            None => false,
        }
    }

    fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// What a metrics scrape reads from the hub.
impl Source for Hub {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn users_online(&self) -> usize {
        self.len()
    }

    fn queued_bytes(&self) -> usize {
        self.budget.used()
    }

    fn cluster(&self) -> Option<ClusterStatus> {
        self.cluster.as_ref().map(|c| ClusterStatus {
            up: c.is_healthy(),
            published: c.published(),
        })
    }
}

/// `*FROM* TEXT`, encoded for the recipient's queue.
fn private_line(from: &str, text: &str) -> Bytes {
    ServerLine::Private {
        from: from.into(),
        text: text.into(),
    }
    .to_bytes()
}

/// The fan-out: pushes `line` (shared, not copied) to each of `users`, and
/// adds to `congested`, if given, those whose queues are now congested.
/// Its protocol lines are counted once here, for every recipient's writer
/// to count them as written (the metrics' deliveries).
fn fan_out<'a>(
    users: impl Iterator<Item = &'a Arc<User>>,
    line: &Bytes,
    mut congested: Option<&mut Vec<Arc<User>>>,
) {
    let n = count_lines(line);
    for u in users {
        u.outbox.push_lines(line.clone(), n);
        if let Some(c) = congested.as_deref_mut() {
            if u.outbox.congested() {
                c.push(u.clone());
            }
        }
    }
}

/// The hub's operations one by one, on users whose queues are read back
/// (the connection's tests drive it through whole sessions). Written for
/// mutation testing (tests/README.md, "Mutation testing"): each checks
/// what every user received, at the exact edges of the presence limit.
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    /// A user online in the hub under test, and what its writer wrote.
    struct Peer {
        user: Arc<User>,
        name: String,
        seen: BufReader<DuplexStream>,
    }

    fn hub_with(presence_limit: usize, queue_bytes: usize) -> Arc<Hub> {
        let config = Config {
            presence_limit,
            queue_bytes,
            ..Config::default()
        };
        Hub::new(config, None)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Puts a user online as `name`, its writer running.
    async fn join(hub: &Hub, name: &str, port: u16) -> Peer {
        let (user, drain) = hub.new_user(addr(port));
        let (w, r) = tokio::io::duplex(1 << 16);
        tokio::spawn(drain.write_to(w));
        hub.join(name, &user).await;
        Peer {
            user,
            name: name.into(),
            seen: BufReader::new(r),
        }
    }

    impl Peer {
        /// Every line this user got since the last call: all that came
        /// before a fence whispered to it now.
        async fn lines(&mut self, hub: &Hub) -> Vec<String> {
            hub.whisper("fence", &self.name, "end").await.unwrap();
            let mut got = Vec::new();
            loop {
                let mut line = String::new();
                tokio::time::timeout(Duration::from_secs(5), self.seen.read_line(&mut line))
                    .await
                    .expect("the fence arrives")
                    .unwrap();
                match line.trim_end_matches('\n') {
                    "*fence* end" => return got,
                    l => got.push(l.to_string()),
                }
            }
        }
    }

    /// Joins, renames and leaves are announced to the others while at most
    /// `presence_limit` users are online (counting the one joining or
    /// leaving), and to nobody above it; nobody is told about itself.
    #[tokio::test]
    async fn presence_notices_stop_above_the_limit_at_its_exact_edge() {
        let hub = hub_with(2, 1 << 20);
        let mut a = join(&hub, "a", 1).await;
        assert_eq!(a.lines(&hub).await, Vec::<String>::new(), "alone");
        let mut b = join(&hub, "b", 2).await;
        assert_eq!(a.lines(&hub).await, ["*** b is online"], "2 of 2");
        assert_eq!(
            b.lines(&hub).await,
            Vec::<String>::new(),
            "not about itself"
        );
        let c = join(&hub, "c", 3).await;
        hub.rename(&c.user, "c", "carol").await.unwrap();
        hub.leave("carol", &c.user, LeaveReason::Quit).await;
        assert_eq!(a.lines(&hub).await, Vec::<String>::new(), "3 of 2");
        assert_eq!(b.lines(&hub).await, Vec::<String>::new(), "3 of 2");
        hub.rename(&b.user, "b", "bob").await.unwrap();
        b.name = "bob".into();
        assert_eq!(a.lines(&hub).await, ["*** b is now known as bob"]);
        assert_eq!(b.lines(&hub).await, Vec::<String>::new(), "the renamer");
        hub.leave("bob", &b.user, LeaveReason::Quit).await;
        assert_eq!(a.lines(&hub).await, ["*** bob is offline (quit)"]);
        assert_eq!(hub.len(), 1);
    }

    /// A leave takes a name offline only from the user holding it (a
    /// connection replaced under the same address name leaves nobody), and
    /// at shutdown nobody here is told.
    #[tokio::test]
    async fn leave_removes_only_the_holder_and_shutdown_tells_nobody() {
        let hub = hub_with(100, 1 << 20);
        let mut watcher = join(&hub, "watcher", 1).await;
        let old = join(&hub, "127.0.0.1:2", 2).await;
        let new = join(&hub, "127.0.0.1:2", 2).await;
        assert_eq!(hub.len(), 2, "the old one was replaced");
        assert!(!hub.is_empty());
        hub.leave("127.0.0.1:2", &old.user, LeaveReason::Quit).await;
        assert_eq!(hub.who().await, ["127.0.0.1:2", "watcher"]);
        let told = watcher.lines(&hub).await;
        assert_eq!(
            told,
            ["*** 127.0.0.1:2 is online", "*** 127.0.0.1:2 is online"]
        );
        hub.leave("127.0.0.1:2", &new.user, LeaveReason::Shutdown)
            .await;
        assert_eq!(hub.who().await, ["watcher"]);
        assert_eq!(watcher.lines(&hub).await, Vec::<String>::new());
        hub.leave("watcher", &watcher.user, LeaveReason::Idle).await;
        assert!(hub.is_empty());
    }

    /// A public line reaches everyone, the sender too, and the users whose
    /// queues it left congested are reported for the sender to wait on.
    #[tokio::test]
    async fn say_reaches_everyone_and_reports_congested_queues() {
        let hub = hub_with(100, 200);
        let mut a = join(&hub, "a", 1).await;
        // Its writer never runs: its queue only grows.
        let (stuck, _drain) = hub.new_user(addr(2));
        hub.join("stuck", &stuck).await;
        let mut congested = Vec::new();
        hub.say(Bytes::from_static(b"<a> hi\n"), &mut congested);
        assert!(congested.is_empty(), "39 of 200 queued for each");
        assert_eq!(a.lines(&hub).await, ["*** stuck is online", "<a> hi"]);
        let long = format!("<a> {}\n", "x".repeat(33)); // 70 with its cost
        hub.say(Bytes::from(long.clone()), &mut congested);
        let ids: Vec<u64> = congested.iter().map(|u| u.id).collect();
        assert_eq!(
            ids,
            [stuck.id],
            "109 of 200 for the stuck queue, 70 for a's"
        );
        assert_eq!(a.lines(&hub).await, [long.trim_end()]);
    }

    /// A whisper reaches only its target and says whether the target's
    /// queue is now congested; nobody by that name is an error.
    #[tokio::test]
    async fn whisper_reports_a_congested_target_and_no_such_user() {
        let hub = hub_with(100, 200);
        let mut a = join(&hub, "a", 1).await;
        let mut b = join(&hub, "b", 2).await;
        let (stuck, _drain) = hub.new_user(addr(3));
        hub.join("stuck", &stuck).await;
        assert_eq!(
            a.lines(&hub).await,
            ["*** b is online", "*** stuck is online"]
        );
        assert_eq!(b.lines(&hub).await, ["*** stuck is online"]);
        assert!(hub.whisper("a", "b", "psst").await.unwrap().is_none());
        assert!(hub.whisper("a", "stuck", "one").await.unwrap().is_none());
        let long = "x".repeat(40); // 40 + 32 + 5, after 40 for "one"
        let congested = hub.whisper("a", "stuck", &long).await.unwrap();
        assert_eq!(congested.map(|u| u.id), Some(stuck.id));
        assert_eq!(
            hub.whisper("a", "nobody", "hi").await.unwrap_err(),
            NoSuchUser
        );
        assert_eq!(b.lines(&hub).await, ["*a* psst"]);
        assert_eq!(a.lines(&hub).await, Vec::<String>::new());
    }

    /// A rename: refused when invalid or taken (nobody told, nothing
    /// changed), a no-op to one's own name, and otherwise seen in `who`.
    #[tokio::test]
    async fn rename_outcomes() {
        let hub = hub_with(100, 1 << 20);
        let mut a = join(&hub, "a", 1).await;
        let mut b = join(&hub, "b", 2).await;
        assert_eq!(a.lines(&hub).await, ["*** b is online"]);
        assert!(matches!(
            hub.rename(&b.user, "b", "x|y").await,
            Err(RenameError::Invalid(_))
        ));
        assert_eq!(hub.rename(&b.user, "b", "a").await, Err(RenameError::Taken));
        assert_eq!(hub.rename(&b.user, "b", "b").await, Ok(()));
        assert_eq!(hub.who().await, ["a", "b"]);
        assert_eq!(a.lines(&hub).await, Vec::<String>::new());
        assert_eq!(hub.rename(&b.user, "b", "0bob").await, Ok(()));
        b.name = "0bob".into();
        assert_eq!(hub.who().await, ["0bob", "a"], "sorted");
        assert_eq!(a.lines(&hub).await, ["*** b is now known as 0bob"]);
        assert_eq!(b.lines(&hub).await, Vec::<String>::new());
    }

    /// What the cluster hands this node: public lines for everyone, notices
    /// within the presence limit, whispers for one user (false for nobody),
    /// and the names here.
    #[tokio::test]
    async fn lines_from_other_nodes_reach_users_here() {
        let hub = hub_with(2, 1 << 20);
        let mut a = join(&hub, "a", 1).await;
        let mut b = join(&hub, "b", 2).await;
        assert_eq!(a.lines(&hub).await, ["*** b is online"]);
        hub.public(Bytes::from_static(b"<x> one\n<x> two\n"));
        hub.notice(Bytes::from_static(b"*** y is online\n"));
        assert!(hub.private("b", "x", "psst"));
        assert!(!hub.private("nobody", "x", "psst"));
        assert_eq!(
            a.lines(&hub).await,
            ["<x> one", "<x> two", "*** y is online"]
        );
        assert_eq!(
            b.lines(&hub).await,
            ["<x> one", "<x> two", "*** y is online", "*x* psst"]
        );
        let mut names = hub.names();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let _c = join(&hub, "c", 3).await;
        hub.notice(Bytes::from_static(b"*** z is online\n"));
        assert_eq!(a.lines(&hub).await, Vec::<String>::new(), "3 here, limit 2");
    }
}
