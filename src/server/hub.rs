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
//! readers is in [`super::outbox`]; how often each reader's socket is
//! written to, whatever the cores, is in [`super::pace`].
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
//! # Names in other capitals, or that only look alike, are one name
//!
//! The table is keyed by each name's [`name_key`] (its lowercase
//! confusable skeleton), so `Alice` and `alice`, or `alice` and `аlice`
//! (Cyrillic `а`), cannot both be online, and a whisper to `ALICE` finds
//! `alice`. Each [`User`] keeps the spelling it chose: that is what
//! everyone sees, and what an error about a taken name quotes.
//!
//! (Over 400 lines: about 220 of them are unit tests of each operation.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::accounts::{Accounts, Verdict};
use super::cluster::{Cluster, LocalNode};
use super::metrics::{ClusterStatus, Metrics, Source};
use super::outbox::{count_lines, paced_outbox, Budget, Drain, Outbox};
use super::Config;
use crate::protocol::{chosen_name, lookup_key, name_key, nfc, LeaveReason, NameError, ServerLine};

/// An online user as the hub sees it: where to send its lines.
#[derive(Debug)]
pub struct User {
    /// Unique for the server's lifetime; tells two holders of one name apart.
    pub id: u64,
    /// Where the user connected from (its default name).
    pub addr: SocketAddr,
    /// Its outbound queue.
    pub outbox: Outbox,
    /// Its name as the hub knows it, and whether it got it by `login`.
    /// Changed only under the hub's lock. The connection keeps a copy for
    /// building its lines; the hub is the authority, because a login can
    /// take a registered name away from a user that did not log in
    /// (its connection learns it through `displaced`).
    held: Mutex<Held>,
    /// Set when a login took this user's name away; the connection then
    /// reads its new name with [`User::name`].
    displaced: AtomicBool,
}

#[derive(Debug, Default)]
struct Held {
    name: String,
    /// `name`'s [`name_key`], under which the hub's table holds the user:
    /// computed once per name, before the hub's lock is taken, since a
    /// skeleton costs more than a table lookup.
    key: String,
    /// Whether `name` was taken by `login` (and so cannot be taken back).
    logged_in: bool,
}

impl User {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's name now.
    pub fn name(&self) -> String {
        self.held().name.clone()
    }

    /// Whether the user holds its name by `login`.
    pub fn logged_in(&self) -> bool {
        self.held().logged_in
    }

    /// True once after a login took this user's name away: the caller
    /// should read [`User::name`] again.
    pub fn take_displaced(&self) -> bool {
        self.displaced.swap(false, Ordering::AcqRel)
    }

    /// The [`name_key`] of the user's name now.
    fn key(&self) -> String {
        self.held().key.clone()
    }

    /// `key` is `name`'s [`name_key`].
    fn set_name(&self, name: &str, key: String, logged_in: bool) {
        let mut h = self.held();
        h.name.clear();
        h.name.push_str(name);
        h.key = key;
        h.logged_in = logged_in;
    }
}

/// Why a rename did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenameError {
    /// The name breaks the name rules.
    Invalid(NameError),
    /// Someone else has it (on this node or, in a cluster, another one),
    /// perhaps in other capitals or in letters that only look alike: the
    /// holder's spelling, when this node knows it.
    Taken(Option<String>),
    /// It is a registered name (`imd --accounts`), or looks like one: only
    /// `login` takes it. The accounts file's spelling.
    Registered(String),
}

/// Why a login did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong password, a name that is not registered, or no accounts on
    /// this server: deliberately one answer.
    AuthFailed,
    /// Another session logged in as this name holds it (or, in a cluster,
    /// anyone on another node does): the holder's spelling, when this node
    /// knows it.
    Taken(Option<String>),
}

/// A whisper that was delivered.
#[derive(Debug)]
pub struct Whispered {
    /// The recipient's name as it spells it (the sender may have typed
    /// other capitals).
    pub to: String,
    /// The recipient, if it is here and its queue is now congested.
    pub congested: Option<Arc<User>>,
}

/// Why a whisper did not happen: nobody online has that name, here or on
/// another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchUser;

/// Everyone online on this node, the limits, and the cluster link.
#[derive(Debug)]
pub struct Hub {
    /// Everyone online here, by the [`name_key`] of its name (computed per
    /// command that names someone, outside this lock, never per delivered
    /// line).
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
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The registered names, when imd runs with `--accounts`.
    pub fn accounts(&self) -> Option<&Arc<Accounts>> {
        self.config.accounts.as_ref()
    }

    /// Failed logins since the start (0 without `--accounts`): what
    /// `imd_failed_logins_total` reports.
    pub fn failed_logins(&self) -> u64 {
        self.accounts().map_or(0, |a| a.failed_logins())
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
        let (outbox, drain) = paced_outbox(
            self.config.queue_bytes,
            self.config.stall_timeout,
            self.config.write_interval,
            self.budget.clone(),
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let user = User {
            id,
            addr,
            outbox,
            held: Mutex::new(Held::default()),
            displaced: AtomicBool::new(false),
        };
        (Arc::new(user), drain)
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
        let key = name_key(name);
        {
            let mut users = self.lock();
            user.set_name(name, key.clone(), false);
            if self.presence_on(users.len() + 1) {
                fan_out(users.values(), &bytes, None);
            }
            if let Some(old) = users.insert(key, user.clone()) {
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

    /// Takes `user` offline, if it is still online, and tells everyone
    /// why: users here unless the whole node is shutting down
    /// ([`LeaveReason::Shutdown`]), users on other nodes always.
    pub async fn leave(&self, user: &User, reason: LeaveReason) {
        let name = user.name();
        let name = name.as_str();
        let notice = ServerLine::Left {
            name: name.into(),
            reason: reason.as_str().into(),
        }
        .to_bytes();
        {
            let mut users = self.lock();
            let key = user.key();
            if users.get(&key).is_some_and(|u| u.id == user.id) {
                users.remove(&key);
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

    /// Sends `lines` (one or more public lines from `sender`, encoded
    /// under the name `as_name`) to every user here, the sender included,
    /// and to the other nodes. Adds to `congested` the users whose queues
    /// are now over half full, for the sender to wait on before reading on.
    ///
    /// With accounts, a login may have taken the sender's name away after
    /// its lines were encoded; they then go out under its new name, so no
    /// line ever shows a registered name its owner did not send.
    pub fn say(&self, sender: &User, as_name: &str, lines: Bytes, congested: &mut Vec<Arc<User>>) {
        if self.accounts().is_none() {
            // No logins, so no takeovers: the name is always right.
            if let Some(c) = &self.cluster {
                c.publish_public(&lines);
            }
            return fan_out(self.lock().values(), &lines, Some(congested));
        }
        let users = self.lock();
        let now = sender.name();
        let lines = if now == as_name {
            lines
        } else {
            rename_public_lines(&lines, as_name, &now)
        };
        if let Some(c) = &self.cluster {
            c.publish_public(&lines);
        }
        fan_out(users.values(), &lines, Some(congested));
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
    /// from `sender` to `to` (in any capitals, or a look-alike of the name:
    /// by its [`name_key`]), here or on another node.
    pub async fn whisper(
        &self,
        sender: &User,
        to: &str,
        text: &str,
    ) -> Result<Whispered, NoSuchUser> {
        // Too long to be anyone's name: nobody, here or elsewhere.
        let key = lookup_key(to).ok_or(NoSuchUser)?;
        let from = {
            let users = self.lock();
            // Read under the lock: never a name a login just took away.
            let from = sender.name();
            if let Some(target) = users.get(&key) {
                target.outbox.push(private_line(&from, text));
                return Ok(Whispered {
                    to: target.name(),
                    congested: target.outbox.congested().then(|| target.clone()),
                });
            }
            from
        };
        // Not here: maybe on another node of the cluster.
        let Some(c) = &self.cluster else {
            return Err(NoSuchUser);
        };
        match Box::pin(c.whisper(&from, to, text)).await {
            Some(to) => Ok(Whispered {
                to,
                congested: None,
            }),
            None => Err(NoSuchUser),
        }
    }

    /// Renames `user` to `new`, atomically: of concurrent renames to one
    /// name, here or on any node, exactly one wins. Everyone else is told.
    /// Renaming to the name one has succeeds and tells nobody; renaming to
    /// a registered name is refused (only [`Hub::login`] takes it), and
    /// renaming away from a name taken by login gives it up.
    ///
    /// Names are one name when their [`name_key`]s are equal (in other
    /// capitals, or only looking alike): renaming to another spelling of
    /// one's own name keeps holding it (and a login with it) under the new
    /// spelling, and everyone is told as for any rename; another spelling
    /// of someone else's name is taken, and the error says whose.
    ///
    /// `typed` is taken in NFC form ([`chosen_name`]); returns the name
    /// now held, as everyone sees it.
    pub async fn rename(&self, user: &Arc<User>, typed: &str) -> Result<String, RenameError> {
        let new = chosen_name(typed).map_err(RenameError::Invalid)?;
        let new = new.as_ref();
        let before = user.name();
        if before == new {
            return Ok(before);
        }
        let key = name_key(new);
        let respell = user.key() == key;
        let owner_respells = respell && user.logged_in();
        if !owner_respells {
            if let Some(registered) = self.accounts().and_then(|a| a.registered_name(new)) {
                return Err(RenameError::Registered(registered));
            }
        }
        // In a cluster the name is first claimed atomically in Redis; a
        // new spelling of one's own name is already claimed by this node.
        if let Some(c) = &self.cluster {
            if !respell && !Box::pin(c.claim(new)).await {
                return Err(RenameError::Taken(Box::pin(c.spelling(new)).await));
            }
        }
        let renamed = {
            let mut users = self.lock();
            // A respelling needs the user to still hold the name (a login
            // may have taken it back meanwhile); anything else a free name.
            match users.get(&key) {
                Some(holder) if !(respell && holder.id == user.id) => Err(Some(holder.name())),
                None if respell => Err(None),
                _ => {
                    let logged_in = respell && user.logged_in();
                    Ok(self.move_user(&mut users, user, new, key, logged_in))
                }
            }
        };
        let (old, notice) = match renamed {
            Ok(moved) => moved,
            Err(holder) => {
                self.unclaim(!respell, new).await;
                return Err(RenameError::Taken(holder));
            }
        };
        if let Some(c) = &self.cluster {
            Box::pin(cluster_moved(c, &old, new)).await;
            c.publish_notice(&notice);
        }
        Ok(new.to_string())
    }

    /// Logs `user` in as the registered `name` (in any capitals, or a
    /// look-alike: by its [`name_key`]) if
    /// `password` is its password, under the accounts file's spelling of
    /// it, which it returns. Whoever holds `name` here without having logged in is
    /// renamed to its address and told why; a holder that logged in, or
    /// any holder on another node of a cluster, keeps it
    /// ([`LoginError::Taken`]). Everyone else sees the usual rename
    /// notices. The password check waits out the brake on the user's
    /// address and runs off the async workers (see
    /// [`super::accounts`]).
    pub async fn login(
        &self,
        user: &Arc<User>,
        name: &str,
        password: &str,
    ) -> Result<String, LoginError> {
        let name = self.check_login(user, name, password).await?;
        self.take_login(user, &name).await?;
        Ok(name)
    }

    /// The first half of [`Hub::login`]: whether `password` is `name`'s,
    /// after the brake on the user's address; if so, `name` as the
    /// accounts file spells it (`ALICE` logs in as the file's `alice`:
    /// a registered name looks the same whoever types it how). It changes
    /// nothing but the brake and the failure count, so the caller may drop
    /// it half-way (at shutdown) and leave no trace of the login.
    pub async fn check_login(
        &self,
        user: &Arc<User>,
        name: &str,
        password: &str,
    ) -> Result<String, LoginError> {
        let Some(accounts) = self.accounts() else {
            return Err(LoginError::AuthFailed);
        };
        if Box::pin(accounts.verify(user.addr.ip(), name, password)).await != Verdict::Accepted {
            return Err(LoginError::AuthFailed);
        }
        // A reload may have dropped it since the check: the typed one then,
        // composed as a chosen name would be.
        Ok(accounts
            .registered_name(name)
            .unwrap_or_else(|| nfc(name).into_owned()))
    }

    /// The second half of [`Hub::login`], once [`Hub::check_login`] said
    /// yes: takes `name` for `user`. Run it to the end: half-way, a name
    /// could be claimed in the cluster and never used.
    pub async fn take_login(&self, user: &Arc<User>, name: &str) -> Result<(), LoginError> {
        // In a cluster, a name nobody here holds is claimed first; a
        // holder on another node keeps it (each node checks only its own
        // users' logins, so it cannot take a name back from another node).
        let key = name_key(name);
        let here = self.lock().contains_key(&key);
        if let Some(c) = &self.cluster {
            if !here && !Box::pin(c.claim(name)).await {
                return Err(LoginError::Taken(Box::pin(c.spelling(name)).await));
            }
        }
        let outcome = self.take_name(user, name, key);
        let (old, displaced) = match outcome {
            Ok(taken) => taken,
            Err(holder) => {
                self.unclaim(!here, name).await;
                return Err(LoginError::Taken(Some(holder)));
            }
        };
        if let Some(c) = &self.cluster {
            if here {
                // Held here a moment ago, so claimed by this node; if the
                // holder left meanwhile and released it, claim it again.
                Box::pin(c.claim(name)).await;
            }
            if let Some((addr, notice)) = &displaced {
                Box::pin(c.claim(addr)).await;
                Box::pin(c.add_user(addr)).await;
                c.publish_notice(notice);
            }
            if let Some((old, notice)) = &old {
                Box::pin(cluster_moved(c, old, name)).await;
                c.publish_notice(notice);
            }
        }
        Ok(())
    }

    /// The local part of a login whose password was right: under the
    /// lock, moves a holder that did not log in to its address, then
    /// `user` to `name` (whose [`name_key`] is `key`). Returns the user's
    /// old name and the displaced
    /// user's new one, each with the notice sent for it (`None`s when
    /// nothing changed), or `Err` with its spelling when a logged-in
    /// session holds `name`.
    #[allow(clippy::type_complexity)]
    fn take_name(
        &self,
        user: &Arc<User>,
        name: &str,
        key: String,
    ) -> Result<(Option<(String, Bytes)>, Option<(String, Bytes)>), String> {
        let mut users = self.lock();
        let mut displaced = None;
        if let Some(holder) = users.get(&key).cloned() {
            if holder.id == user.id {
                if user.name() == name {
                    user.set_name(name, key, true);
                    return Ok((None, None));
                }
                // Held under other capitals or a look-alike: now under the
                // registered spelling, and everyone sees the change.
                let moved = self.move_user(&mut users, user, name, key, true);
                return Ok((Some(moved), None));
            }
            if holder.logged_in() {
                return Err(holder.name());
            }
            let addr = holder.addr.to_string();
            // Known only now, so keyed under the lock (a short ASCII
            // address: microseconds).
            let addr_key = name_key(&addr);
            let (_, notice) = self.move_user(&mut users, &holder, &addr, addr_key, false);
            holder.displaced.store(true, Ordering::Release);
            holder.outbox.push(
                ServerLine::TakenBack {
                    name: name.into(),
                    now: addr.clone(),
                }
                .to_bytes(),
            );
            tracing::info!(name, now = addr, "name taken back by its registered owner");
            displaced = Some((addr, notice));
        }
        let moved = self.move_user(&mut users, user, name, key, true);
        Ok((Some(moved), displaced))
    }

    /// Gives `name`'s cluster claim back when `claimed` (this operation
    /// made it) and the name then turned out to be taken here after all.
    async fn unclaim(&self, claimed: bool, name: &str) {
        if let (true, Some(c)) = (claimed, &self.cluster) {
            Box::pin(c.release(name)).await;
        }
    }

    /// Under the lock: moves `user` from its name to the free `new`, whose
    /// [`name_key`] is `key` (`logged_in`: by login), and tells everyone
    /// else here. Returns the old name and the notice, for the other nodes.
    fn move_user(
        &self,
        users: &mut HashMap<String, Arc<User>>,
        user: &Arc<User>,
        new: &str,
        key: String,
        logged_in: bool,
    ) -> (String, Bytes) {
        let old = user.name();
        users.remove(&user.key());
        users.insert(key.clone(), user.clone());
        user.set_name(new, key, logged_in);
        let notice = ServerLine::NameChanged {
            old: old.clone(),
            new: new.into(),
        }
        .to_bytes();
        if self.presence_on(users.len()) {
            let others = users.values().filter(|u| u.id != user.id);
            fan_out(others, &notice, None);
        }
        (old, notice)
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
        let Some(key) = lookup_key(to) else {
            return false;
        };
        match self.lock().get(&key) {
            Some(target) => target.outbox.push(private_line(from, text)),
            None => false,
        }
    }

    fn names(&self) -> Vec<String> {
        self.lock().values().map(|u| u.name()).collect()
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

    fn failed_logins(&self) -> u64 {
        Hub::failed_logins(self)
    }

    fn cluster(&self) -> Option<ClusterStatus> {
        self.cluster.as_ref().map(|c| ClusterStatus {
            up: c.is_healthy(),
            published: c.published(),
        })
    }
}

/// The cluster's part of a move from `old` to `new`: `new` is in `who`
/// instead of `old`, and `old`'s claim is given up unless `new` is another
/// spelling of it (one name, so the claim is `new`'s too).
async fn cluster_moved(c: &Cluster, old: &str, new: &str) {
    if name_key(old) != name_key(new) {
        Box::pin(c.remove_user(old)).await;
    }
    Box::pin(c.add_user(new)).await;
}

/// `lines` (public lines `<FROM> TEXT`, each with its `\n`) with FROM
/// replaced by `to`: for lines encoded just before a login took the
/// sender's name away. Lines not from `from` are kept as they are.
fn rename_public_lines(lines: &[u8], from: &str, to: &str) -> Bytes {
    let prefix = format!("<{from}> ");
    let mut out = Vec::with_capacity(lines.len() + 16);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        match line.strip_prefix(prefix.as_bytes()) {
            Some(text) => {
                out.extend_from_slice(format!("<{to}> ").as_bytes());
                out.extend_from_slice(text);
            }
            None => out.extend_from_slice(line),
        }
    }
    Bytes::from(out)
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

#[cfg(test)]
mod login_tests {
    use super::*;
    use crate::server::accounts::{hash_password, Accounts};
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// Public lines encoded under a name that a login then took away go
    /// out under the sender's new name (its address): no line shows a
    /// registered name its owner did not send.
    #[tokio::test]
    async fn lines_encoded_before_a_takeover_do_not_carry_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts");
        std::fs::write(&path, "").unwrap();
        let accounts = Accounts::load(&path).unwrap();
        let hub = Hub::new(
            Config {
                accounts: Some(accounts.clone()),
                ..Config::default()
            },
            None,
        );
        let (watch, drain) = hub.new_user("127.0.0.1:4000".parse().unwrap());
        let (w, seen) = tokio::io::duplex(1 << 16);
        tokio::spawn(drain.write_to(w));
        hub.join("watch", &watch).await;
        let (squatter, _d1) = hub.new_user("127.0.0.1:4001".parse().unwrap());
        hub.join("127.0.0.1:4001", &squatter).await;
        hub.rename(&squatter, "alice").await.unwrap();

        std::fs::write(&path, format!("alice:{}\n", hash_password("pw"))).unwrap();
        accounts.reload().unwrap();
        let (owner, _d2) = hub.new_user("127.0.0.1:4002".parse().unwrap());
        hub.join("127.0.0.1:4002", &owner).await;
        hub.login(&owner, "alice", "pw").await.unwrap();
        assert!(squatter.take_displaced());

        // The squatter's connection had encoded these before it noticed.
        let lines = Bytes::from_static(b"<alice> one\n<alice> two\n");
        hub.say(&squatter, "alice", lines, &mut Vec::new());
        hub.say(
            &owner,
            "alice",
            Bytes::from_static(b"<alice> real\n"),
            &mut Vec::new(),
        );

        let mut seen = BufReader::new(seen).lines();
        let mut got = Vec::new();
        while got.last().map(String::as_str) != Some("<alice> real") {
            got.push(seen.next_line().await.unwrap().unwrap());
        }
        let public: Vec<_> = got.iter().filter(|l| l.starts_with('<')).collect();
        assert_eq!(
            public,
            [
                "<127.0.0.1:4001> one",
                "<127.0.0.1:4001> two",
                "<alice> real"
            ],
            "{got:?}"
        );
    }

    #[test]
    fn rename_public_lines_keeps_other_lines() {
        let out = rename_public_lines(b"<a> x\n<ab> y\n<a> <a> z\n", "a", "b");
        assert_eq!(&out[..], b"<b> x\n<ab> y\n<b> <a> z\n");
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
            let (fence, _drain) = hub.new_user(addr(9));
            fence.set_name("fence", name_key("fence"), false);
            hub.whisper(&fence, &self.name, "end").await.unwrap();
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
        hub.rename(&c.user, "carol").await.unwrap();
        hub.leave(&c.user, LeaveReason::Quit).await;
        assert_eq!(a.lines(&hub).await, Vec::<String>::new(), "3 of 2");
        assert_eq!(b.lines(&hub).await, Vec::<String>::new(), "3 of 2");
        hub.rename(&b.user, "bob").await.unwrap();
        b.name = "bob".into();
        assert_eq!(a.lines(&hub).await, ["*** b is now known as bob"]);
        assert_eq!(b.lines(&hub).await, Vec::<String>::new(), "the renamer");
        hub.leave(&b.user, LeaveReason::Quit).await;
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
        hub.leave(&old.user, LeaveReason::Quit).await;
        assert_eq!(hub.who().await, ["127.0.0.1:2", "watcher"]);
        let told = watcher.lines(&hub).await;
        assert_eq!(
            told,
            ["*** 127.0.0.1:2 is online", "*** 127.0.0.1:2 is online"]
        );
        hub.leave(&new.user, LeaveReason::Shutdown).await;
        assert_eq!(hub.who().await, ["watcher"]);
        assert_eq!(watcher.lines(&hub).await, Vec::<String>::new());
        hub.leave(&watcher.user, LeaveReason::Idle).await;
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
        hub.say(
            &a.user,
            "a",
            Bytes::from_static(b"<a> hi\n"),
            &mut congested,
        );
        assert!(congested.is_empty(), "39 of 200 queued for each");
        assert_eq!(a.lines(&hub).await, ["*** stuck is online", "<a> hi"]);
        let long = format!("<a> {}\n", "x".repeat(33)); // 70 with its cost
        hub.say(&a.user, "a", Bytes::from(long.clone()), &mut congested);
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
        assert!(hub
            .whisper(&a.user, "b", "psst")
            .await
            .unwrap()
            .congested
            .is_none());
        assert!(hub
            .whisper(&a.user, "stuck", "one")
            .await
            .unwrap()
            .congested
            .is_none());
        let long = "x".repeat(40); // 40 + 32 + 5, after 40 for "one"
        let congested = hub.whisper(&a.user, "stuck", &long).await.unwrap();
        assert_eq!(congested.congested.map(|u| u.id), Some(stuck.id));
        assert_eq!(
            hub.whisper(&a.user, "nobody", "hi").await.unwrap_err(),
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
            hub.rename(&b.user, "x|y").await,
            Err(RenameError::Invalid(_))
        ));
        assert_eq!(
            hub.rename(&b.user, "a").await,
            Err(RenameError::Taken(Some("a".into())))
        );
        assert_eq!(hub.rename(&b.user, "b").await, Ok("b".into()));
        assert_eq!(hub.who().await, ["a", "b"]);
        assert_eq!(a.lines(&hub).await, Vec::<String>::new());
        assert_eq!(hub.rename(&b.user, "0bob").await, Ok("0bob".into()));
        b.name = "0bob".into();
        assert_eq!(hub.who().await, ["0bob", "a"], "sorted");
        assert_eq!(a.lines(&hub).await, ["*** b is now known as 0bob"]);
        assert_eq!(b.lines(&hub).await, Vec::<String>::new());
    }

    /// Names that differ only in case are one name: another spelling of
    /// someone's name is taken, a whisper in any capitals reaches the
    /// holder and reports its spelling (from other nodes too), a holder
    /// may respell its own name (everyone is told), and it leaves under
    /// the new spelling.
    #[tokio::test]
    async fn names_in_other_capitals_are_one_name() {
        let hub = hub_with(100, 1 << 20);
        let mut a = join(&hub, "alice", 1).await;
        let mut b = join(&hub, "b", 2).await;
        assert_eq!(a.lines(&hub).await, ["*** b is online"]);
        assert_eq!(
            hub.rename(&b.user, "ALICE").await,
            Err(RenameError::Taken(Some("alice".into())))
        );
        let sent = hub.whisper(&b.user, "ALICE", "psst").await.unwrap();
        assert_eq!(sent.to, "alice");
        assert!(hub.private("Alice", "x", "from afar"));
        assert_eq!(a.lines(&hub).await, ["*b* psst", "*x* from afar"]);
        assert_eq!(hub.rename(&a.user, "Alice").await, Ok("Alice".into()));
        a.name = "Alice".into();
        assert_eq!(b.lines(&hub).await, ["*** alice is now known as Alice"]);
        assert_eq!(a.lines(&hub).await, Vec::<String>::new(), "the renamer");
        assert_eq!(
            hub.whisper(&b.user, "alice", "hi").await.unwrap().to,
            "Alice"
        );
        let mut names = hub.names();
        names.sort();
        assert_eq!(names, ["Alice", "b"], "as spelled");
        hub.leave(&a.user, LeaveReason::Quit).await;
        assert_eq!(b.lines(&hub).await, ["*** Alice is offline (quit)"]);
        assert_eq!(hub.who().await, ["b"]);
        assert_eq!(
            hub.rename(&b.user, "alice").await,
            Ok("alice".into()),
            "free again"
        );
    }

    /// Names that only look alike are one name too: the look-alike of an
    /// online name is taken (the error names the holder's spelling), a
    /// whisper to it reaches the holder, the holder may switch to it, and
    /// a name typed decomposed is held composed.
    #[tokio::test]
    async fn look_alike_names_are_one_name() {
        let hub = hub_with(100, 1 << 20);
        let mut a = join(&hub, "alice", 1).await;
        let mut b = join(&hub, "b", 2).await;
        assert_eq!(a.lines(&hub).await, ["*** b is online"]);
        let cyrillic = "\u{430}lice";
        for squat in [cyrillic, "a1ice", "\u{391}LICE"] {
            assert_eq!(
                hub.rename(&b.user, squat).await,
                Err(RenameError::Taken(Some("alice".into()))),
                "{squat}"
            );
        }
        let sent = hub.whisper(&b.user, cyrillic, "psst").await.unwrap();
        assert_eq!(sent.to, "alice");
        assert!(hub.private("a1ice", "x", "from afar"));
        assert_eq!(a.lines(&hub).await, ["*b* psst", "*x* from afar"]);
        assert_eq!(hub.rename(&a.user, cyrillic).await, Ok(cyrillic.into()));
        a.name = cyrillic.into();
        assert_eq!(
            b.lines(&hub).await,
            [format!("*** alice is now known as {cyrillic}")]
        );
        assert_eq!(
            hub.rename(&b.user, "e\u{301}lodie").await,
            Ok("\u{e9}lodie".into())
        );
        assert_eq!(b.user.name(), "\u{e9}lodie");
        assert_eq!(hub.who().await, ["\u{e9}lodie", cyrillic]);
        assert_eq!(
            hub.rename(&a.user, "E\u{301}LODIE").await,
            Err(RenameError::Taken(Some("\u{e9}lodie".into())))
        );
    }

    /// A whisper's NAME is keyed only up to 64 characters (the longest
    /// name anyone can hold is 58): `alice` padded with invisible fillers,
    /// which key to nothing, reaches her at 64 characters and nobody at
    /// 65, here or from another node.
    #[tokio::test]
    async fn whispers_to_overlong_names_reach_nobody() {
        let hub = hub_with(100, 1 << 20);
        let mut a = join(&hub, "alice", 1).await;
        let b = join(&hub, "b", 2).await;
        assert_eq!(a.lines(&hub).await, ["*** b is online"]);
        let padded = |n: usize| format!("alice{}", "\u{3164}".repeat(n - 5));
        assert_eq!(
            hub.whisper(&b.user, &padded(64), "in").await.unwrap().to,
            "alice"
        );
        assert!(hub.private(&padded(64), "x", "in too"));
        assert_eq!(
            hub.whisper(&b.user, &padded(65), "out").await.unwrap_err(),
            NoSuchUser
        );
        assert!(!hub.private(&padded(65), "x", "out too"));
        assert_eq!(a.lines(&hub).await, ["*b* in", "*x* in too"]);
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
