//! The cluster's key schema in Redis, and the Lua scripts that read or
//! change several keys in one atomic step. Every Redis key and channel
//! name is spelled here and nowhere else:
//!
//! ```text
//! imchat:all              channel: public lines and presence notices, to every node
//! imchat:node:<N>         channel: whispers for users on node N
//! imchat:name:<KEY>       string: the node that holds the name (claimed with SET NX)
//! imchat:who:<N>          hash: KEY → NAME for each user on node N (for `who`)
//! imchat:alive:<N>        string with a TTL: node N is alive
//! imchat:nodes            set: every node that may need reaping
//! imchat:reap:<N>         string with a TTL: which node reaps dead node N
//! imchat:schema           string: the SCHEMA of the nodes running (see below)
//! ```
//!
//! KEY is the name's [`name_key`] (its lowercase confusable skeleton):
//! names that differ only in case or only look alike are one name, so two
//! nodes cannot hand out `alice` and `Alice`, or `alice` and `аlice`
//! (Cyrillic `а`), at once. NAME is the spelling its user chose, which is
//! what `who` lists and what a whisper's `ok to` shows.
//!
//! Nodes of one cluster must agree on all of this, so it has a version,
//! [`SCHEMA`], kept in `imchat:schema`. A node joins only a cluster of its
//! own schema, or one with no live node (then it takes over: see [`JOIN`]).

use redis::aio::ConnectionManager;

use crate::protocol::name_key;

/// The channel every node subscribes to.
pub(super) const ALL: &str = "imchat:all";
/// Every node that may need reaping.
pub(super) const NODES: &str = "imchat:nodes";

/// The version of this key schema, bumped whenever a node of one version
/// would misread another's keys:
/// - 1 (no `imchat:schema` key; before the check existed): claims keyed
///   by the name as spelled, each node's users in a set `imchat:users:<N>`.
/// - 2: claims keyed by the name's lowercase, each node's users in the
///   hash `imchat:who:<N>`.
/// - 3: claims, and the fields of `imchat:who:<N>`, keyed by [`name_key`]
///   (lowercase confusable skeleton: look-alikes are one name).
pub(super) const SCHEMA: &str = "3";
/// Where the running nodes' [`SCHEMA`] is kept.
pub(super) const SCHEMA_KEY: &str = "imchat:schema";

/// Holds the id of the node that claimed `name`, in any capitals or
/// look-alike letters (it is keyed by [`name_key`]).
pub(super) fn claim_key(name: &str) -> String {
    format!("imchat:name:{}", name_key(name))
}
/// The names online on `node`: each one's [`name_key`] → its spelling.
pub(super) fn users_key(node: &str) -> String {
    format!("imchat:who:{node}")
}
/// Exists while `node` is alive.
pub(super) fn alive_key(node: &str) -> String {
    format!("imchat:alive:{node}")
}
/// Held by the one node that reaps dead `node`.
pub(super) fn reap_key(node: &str) -> String {
    format!("imchat:reap:{node}")
}
/// `node`'s own channel, for whispers to its users.
pub(super) fn node_channel(node: &str) -> String {
    format!("imchat:node:{node}")
}

/// A node joins, in one atomic step. KEYS: [`SCHEMA_KEY`], [`NODES`], the
/// node's alive key; ARGV: [`SCHEMA`], the node, the TTL in seconds.
///
/// If the cluster's schema is another (or none: nodes from before the
/// check) and any other node is alive, the join is refused and the script
/// returns `{0, THEIRS}` (`''` for none): the operator must stop the old
/// nodes before starting new ones, rather than have two versions split
/// names between them. If no node is alive, whatever is left in Redis
/// belongs to dead nodes of the old schema, which a new node could not
/// read (and would never reap): it is deleted, the schema becomes ours,
/// and the node joins. Returns `{1, SCHEMA}` when it joined.
pub(super) const JOIN: &str = r"
local theirs = redis.call('GET', KEYS[1])
if theirs ~= ARGV[1] then
  for _, n in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if n ~= ARGV[2] and redis.call('EXISTS', 'imchat:alive:' .. n) == 1 then
      return {0, theirs or ''}
    end
  end
  for _, pattern in ipairs({'imchat:name:*', 'imchat:who:*', 'imchat:users:*', 'imchat:reap:*'}) do
    for _, k in ipairs(redis.call('KEYS', pattern)) do redis.call('DEL', k) end
  end
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[3], 1, 'EX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
return {1, ARGV[1]}";

/// Deletes a key only if it still holds our value (a name claim we own).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Everyone on every live node, in one atomic step.
pub(super) const WHO: &str = r"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', 'imchat:alive:' .. n) == 1 then
    for _, u in ipairs(redis.call('HVALS', 'imchat:who:' .. n)) do
      table.insert(out, u)
    end
  end
end
return out";

/// Where a user is, in one atomic step: KEYS[1] is its [`claim_key`],
/// ARGV[1] its [`name_key`]. Returns {node, spelling}, or nil if nobody holds the name
/// (spelling is false if that node has not listed the user yet).
pub(super) const LOCATE: &str = r"
local n = redis.call('GET', KEYS[1])
if not n then return nil end
return {n, redis.call('HGET', 'imchat:who:' .. n, ARGV[1])}";

/// Frees `name` if `node` still holds it (a later claim by someone else is
/// left alone).
pub(super) async fn release_claim(
    c: &mut ConnectionManager,
    name: &str,
    node: &str,
) -> redis::RedisResult<i64> {
    redis::Script::new(RELEASE)
        .key(claim_key(name))
        .arg(node)
        .invoke_async(c)
        .await
}
