//! The registry of online users: names, their outboxes, and fan-out.
//!
//! How a sender's lines are batched before they get here, and how overload
//! slows senders rather than cutting readers, is in [`crate::connection`]
//! and [`crate::outbox`].
//!
//! One `std::sync::Mutex` guards the name table. It is never held across an
//! `.await` and never while touching a socket: under it we only look names up
//! and push shared [`Bytes`] into non-blocking [`Outbox`]es. Holding it for
//! the whole fan-out of a line is deliberate: it gives all users one order of
//! events, so each user sees every sender's lines in the order sent, and a
//! join, rename or leave is atomic with respect to every message. The seed
//! read its map without the lock (crashes, duplicate names); here every read
//! and write of the table goes through [`Registry`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::outbox::Outbox;
use crate::protocol::{visible, ErrorCode, LeaveReason, ServerLine};

/// An online user as the registry sees it.
#[derive(Debug)]
pub struct Peer {
    /// Unique for the server's lifetime; tells two holders of one name apart.
    pub id: u64,
    /// Where the user connected from (its default name).
    pub addr: SocketAddr,
    /// Its outbound queue.
    pub outbox: Outbox,
}

/// The table of online users, shared by every connection.
#[derive(Debug)]
pub struct Registry {
    users: Mutex<HashMap<String, Arc<Peer>>>,
    next_id: AtomicU64,
    /// Presence notices (online, offline, rename) are sent only while at most
    /// this many users are online. Every join told to everyone costs N² lines
    /// (the seed needs minutes to settle 5,000 joins); big IRC networks such
    /// as Twitch's stop sending JOIN/PART above 1,000 users for the same
    /// reason. `who` stays exact at any size.
    presence_limit: usize,
}

/// Encodes a line once, for sharing between recipients.
pub fn wire(line: &ServerLine) -> Bytes {
    Bytes::from(line.encode())
}

impl Registry {
    /// An empty registry; see [`Registry::presence_limit`] for the argument.
    pub fn new(presence_limit: usize) -> Registry {
        Registry {
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            presence_limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Peer>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (each update is a single insert or remove), so poisoning is ignored.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh id for a new connection.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of users online.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody is online.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn presence_on(&self, online: usize) -> bool {
        online <= self.presence_limit
    }

    /// Adds a user under `name` (its address, unique among live
    /// connections), sends it the welcome line and tells everyone else.
    pub fn join(&self, name: &str, peer: Arc<Peer>) {
        let welcome = wire(&ServerLine::Welcome { name: name.into() });
        let notice = wire(&ServerLine::Joined { name: name.into() });
        let mut users = self.lock();
        peer.outbox.push(welcome);
        if self.presence_on(users.len() + 1) {
            for p in users.values() {
                p.outbox.push(notice.clone());
            }
        }
        if let Some(old) = users.insert(name.to_string(), peer) {
            // Two live connections never share an address; if the OS reused
            // one before we saw the old connection end, the old one goes.
            tracing::warn!(name, old = old.id, "duplicate address name replaced");
        }
    }

    /// Removes `name` if it still belongs to connection `id`, and tells
    /// everyone it left, unless `notify` is false (server shutdown).
    pub fn leave(&self, name: &str, id: u64, reason: LeaveReason, notify: bool) {
        let notice = wire(&ServerLine::Left {
            name: name.into(),
            reason: reason.as_str().into(),
        });
        let mut users = self.lock();
        if users.get(name).is_some_and(|p| p.id == id) {
            users.remove(name);
            if notify && self.presence_on(users.len() + 1) {
                for p in users.values() {
                    p.outbox.push(notice.clone());
                }
            }
        }
    }

    /// Sends a line to every online user, the sender included. Returns the
    /// recipients whose queues are now congested (usually none), for the
    /// sender to wait on before its next line.
    pub fn broadcast(&self, line: Bytes) -> Vec<Arc<Peer>> {
        let users = self.lock();
        let mut congested = Vec::new();
        for p in users.values() {
            p.outbox.push(line.clone());
            if p.outbox.congested() {
                congested.push(p.clone());
            }
        }
        congested
    }

    /// Renames `old` (held by `me`) to `new`, atomically: of concurrent
    /// renames to one name exactly one wins. `new` must already be valid.
    /// On success the renamer gets `ok rename` and everyone else a notice.
    pub fn rename(&self, me: &Arc<Peer>, old: &str, new: &str) -> Result<(), ServerLine> {
        let mut users = self.lock();
        if old == new {
            me.outbox
                .push(wire(&ServerLine::Renamed { name: new.into() }));
            return Ok(());
        }
        if users.contains_key(new) {
            return Err(ServerLine::error(
                ErrorCode::NameTaken,
                format!("name '{new}' is taken"),
            ));
        }
        users.remove(old);
        users.insert(new.to_string(), me.clone());
        me.outbox
            .push(wire(&ServerLine::Renamed { name: new.into() }));
        if self.presence_on(users.len()) {
            let notice = wire(&ServerLine::NameChanged {
                old: old.into(),
                new: new.into(),
            });
            for p in users.values().filter(|p| p.id != me.id) {
                p.outbox.push(notice.clone());
            }
        }
        Ok(())
    }

    /// Delivers a whisper to `to` and the confirmation to the sender `me`,
    /// or returns the error to send instead. `text` is already made visible.
    /// On success, returns the target if its queue is now congested.
    pub fn whisper(
        &self,
        me: &Peer,
        from: &str,
        to: &str,
        text: &str,
    ) -> Result<Option<Arc<Peer>>, ServerLine> {
        let users = self.lock();
        let Some(target) = users.get(to) else {
            return Err(ServerLine::error(
                ErrorCode::NoSuchUser,
                format!("no user named '{}' is online", visible(to)),
            ));
        };
        target.outbox.push(wire(&ServerLine::Private {
            from: from.into(),
            text: text.into(),
        }));
        me.outbox.push(wire(&ServerLine::Sent {
            to: to.into(),
            text: text.into(),
        }));
        Ok(target.outbox.congested().then(|| target.clone()))
    }

    /// The reply to `who` for this node's users.
    pub fn who(&self) -> Bytes {
        Registry::who_reply(self.names())
    }

    /// Everyone online on this node, unsorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Sends a presence notice from elsewhere (another node of a cluster)
    /// to every user here, unless this node is over its presence limit.
    pub fn notice(&self, line: Bytes) {
        let users = self.lock();
        if self.presence_on(users.len()) {
            for p in users.values() {
                p.outbox.push(line.clone());
            }
        }
    }

    /// Delivers a whisper from another node to local user `to`; false if
    /// `to` is not here (any more).
    pub fn deliver_private(&self, to: &str, from: &str, text: &str) -> bool {
        let users = self.lock();
        let Some(target) = users.get(to) else {
            return false;
        };
        target.outbox.push(wire(&ServerLine::Private {
            from: from.into(),
            text: text.into(),
        }))
    }

    /// The reply to `who` for a list of names: one line per user, sorted,
    /// then the count, as a single buffer so it reaches the asker in one
    /// piece.
    pub fn who_reply(mut names: Vec<String>) -> Bytes {
        names.sort_unstable();
        names.dedup();
        let mut out = String::with_capacity(names.len() * 24 + 24);
        for name in &names {
            ServerLine::WhoItem { name: name.clone() }.encode_into(&mut out);
        }
        ServerLine::WhoEnd { count: names.len() }.encode_into(&mut out);
        Bytes::from(out)
    }
}
