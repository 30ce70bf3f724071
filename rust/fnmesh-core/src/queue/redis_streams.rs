//! [`RedisStore`]: the queue store on Redis, shared by several engines.
//!
//! A `standard` queue is a Redis Stream read through one consumer group: every engine is a
//! consumer of the group, `XREADGROUP` hands out new entries, `XAUTOCLAIM` takes back the entries
//! a consumer held longer than the visibility timeout (its engine died or stalled). A `fifo`
//! queue keeps one list per group and a schedule of the groups whose head may be claimed, so a
//! group never has two messages out at once, whichever engines claim.
//!
//! Every operation that changes state is one Lua script (run with `EVALSHA`), so it is atomic
//! against every other engine: a due retry is moved to the stream once, a message is leased to
//! one claim, and a settle with a stale lease changes nothing. Times are read from Redis's clock
//! (`TIME` inside the scripts), so engines whose clocks disagree still agree on when a delay ends.
//!
//! # Key layout
//!
//! `P` is the prefix (`fnmesh:q:` unless [`RedisStore::with_prefix`] says otherwise) and `Q` the
//! queue's name; the braces delimit the name, which therefore must not contain `}`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `Pqueues` | set | the names of the queues ever enqueued to |
//! | `P{Q}:m:<receipt id>` | hash | one message: `f` function, `ns` namespace, `d` data, `tp`/`bg` trace context, `g` fifo group, `at` enqueued at, `q` enqueue sequence, `n` attempts, `r` releases (claims given back without an attempt), `c` claims ever, `l` the current lease, `e` its stream entry, `nb` (fifo) not claimable before, `err`/`fa` (dead) error and failed at |
//! | `P{Q}:seq` | string | the last enqueue sequence (ties between equal times go to the older message) |
//! | `P{Q}:s` | stream, group `fnmesh` | standard: entries `id <receipt id>` of the claimable and claimed messages |
//! | `P{Q}:delayed` | sorted set | standard: `<sequence>:<receipt id>` waiting for an enqueue or retry delay, scored by when they are due |
//! | `P{Q}:cursor` | string | standard: where the next `XAUTOCLAIM` scan starts |
//! | `P{Q}:vt` | string | standard: the visibility timeout of the last claim (for [`QueueStore::stats`]) |
//! | `P{Q}:gc` | string, expires | standard: present for a minute after a sweep of departed consumers |
//! | `P{Q}:g:<group>` | list | fifo: the group's receipt ids in enqueue order, head first |
//! | `P{Q}:gs` | sorted set | fifo: `<head's sequence>:<group>` of the groups whose head is not claimed, scored by when it may be |
//! | `P{Q}:gf` | sorted set | fifo: the same members for the groups whose head is claimed, scored by when the claim expires |
//! | `P{Q}:gn` | string | fifo: how many messages the group lists hold |
//! | `P{Q}:dead` | list | receipt ids of the dead letters, oldest first |
//! | `P{Q}:i:<key>` | string, expires | an idempotency key: the receipt id of the first message that used it |
//!
//! A lease is `<consumer>/<claims ever>`: every claim, a reclaim included, counts one more, so a
//! lease from a claim that expired and was taken by another engine no longer matches `l`.
//!
//! Limits: a consumer sees another engine's enqueue at its next poll (a script cannot block, so
//! there is no blocking read); Redis Cluster is not supported (the scripts reach message keys
//! they derive from a prefix, although one queue's keys do share a hash slot); a queue must not
//! change kind while it holds messages (a fifo claim does not read the stream, nor the reverse).

use std::sync::LazyLock;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, ScriptInvocation, Value};
use tracing::warn;

use super::{
    DeadLetter, Delivery, Enqueued, Nack, NewMessage, QueueConfig, QueueKind, QueueStats,
    QueueStore, StoreError, StoreResult,
};
use crate::protocol::ErrorBody;

/// The key prefix unless [`RedisStore::with_prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "fnmesh:q:";

/// The consumer group every engine reads the standard queues' streams through.
const GROUP: &str = "fnmesh";

/// The most messages one claim takes: bounds how long one claim script keeps Redis busy (a
/// consumer that gets a full batch claims again at once).
// NOTE: inside Redis 7.0 here a claim script costs about 45 µs plus 8 µs per message (INFO
// commandstats: 147 µs for 10, 857 µs for 100, 7.7 ms for 1,000), and every other engine's
// command waits behind it; past 100 the fixed part is under 6% of the work, so larger batches
// only lengthen the stall.
const MAX_CLAIM: usize = 100;

/// Dead letters one redrive script moves; a redrive of more loops, letting other commands in.
const REDRIVE_CHUNK: usize = 500;

/// Bounds on connecting and on one answer: a Redis that hangs fails the operation with a
/// [`StoreError`] instead of stalling the engine's consumers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepended to every script: `now`, Redis's clock in milliseconds; `member(q, name)`, a sorted
/// set member that sorts by the enqueue sequence `q` among equal scores (16 digits, `:`, the
/// name), and `named(member)`, the name back.
const PRELUDE: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function member(q, name) return string.format('%016d', tonumber(q)) .. ':' .. name end
local function named(m) return string.sub(m, 18) end
";

/// Leases the message at key `mk` to consumer `ARGV[1]`: one more attempt and one more claim,
/// and appends what [`parse_deliveries`] reads to `out`.
const LEASE: &str = "local function lease(mk, id, out)
  local c = redis.call('HINCRBY', mk, 'c', 1)
  local n = redis.call('HINCRBY', mk, 'n', 1)
  local l = ARGV[1] .. '/' .. c
  redis.call('HSET', mk, 'l', l)
  local v = redis.call('HMGET', mk, 'f', 'ns', 'd', 'tp', 'bg', 'g', 'at', 'r')
  out[#out + 1] = {id, n, l, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]}
end
";

/// KEYS: message, queue names, stream | group list, delayed | fifo schedule, fifo count,
/// sequence[, idempotency key]. ARGV: queue, receipt id, delay ms, idempotency window ms (`0`:
/// none), `s` | `f`, group, then the message's field/value pairs. Answers `{1, id}` when stored,
/// `{0, first id}` for a duplicate, `{-1, id}` when the receipt id is taken.
const ENQUEUE: &str = "
if ARGV[4] ~= '0' then
  local first = redis.call('GET', KEYS[7])
  if first then return {0, first} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, ARGV[2]} end
if ARGV[4] ~= '0' then redis.call('SET', KEYS[7], ARGV[2], 'PX', ARGV[4]) end
local q = redis.call('INCR', KEYS[6])
local fields = {'at', now, 'n', 0, 'c', 0, 'q', q}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SADD', KEYS[2], ARGV[1])
local due = now + tonumber(ARGV[3])
if ARGV[5] == 'f' then
  redis.call('HSET', KEYS[1], 'nb', due)
  redis.call('INCR', KEYS[5])
  if redis.call('RPUSH', KEYS[3], ARGV[2]) == 1 then
    redis.call('ZADD', KEYS[4], due, member(q, ARGV[6]))
  end
elseif due > now then
  redis.call('ZADD', KEYS[4], due, member(q, ARGV[2]))
else
  redis.call('HSET', KEYS[1], 'e', redis.call('XADD', KEYS[3], '*', 'id', ARGV[2]))
end
return {1, ARGV[2]}
";

/// KEYS: stream, delayed, cursor, visibility timeout, consumer sweep. ARGV: consumer, max,
/// visibility timeout ms, message key prefix, group. Moves up to `max` due delayed messages to
/// the stream, takes back expired claims from where the last scan stopped, then reads new
/// entries for the rest. Once a minute it also deletes the consumers (engines gone) that hold
/// nothing and did nothing for an hour, or every restart of an engine would leave one behind.
// NOTE: one script per batch, one round trip: with concurrent acks, claim+ack ran at about
// 4,000 messages/s in claims of 1, 20,000/s in claims of 10 and 37,000/s in claims of 100 on
// the local Redis 7.0 (2 cores, release build, `throughput_on_the_local_redis`).
const CLAIM_STANDARD: &str = "
local max = tonumber(ARGV[2])
if redis.call('GET', KEYS[4]) ~= ARGV[3] then redis.call('SET', KEYS[4], ARGV[3]) end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, max)) do
  redis.call('ZREM', KEYS[2], m)
  local id = named(m)
  local mk = ARGV[4] .. id
  if redis.call('EXISTS', mk) == 1 then
    redis.call('HSET', mk, 'e', redis.call('XADD', KEYS[1], '*', 'id', id))
  end
end
local cursor = redis.call('GET', KEYS[3]) or '0-0'
local entries = {}
local r = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[5], ARGV[1], ARGV[3], cursor, 'COUNT', max)
if r.err then
  if not string.find(r.err, 'NOGROUP', 1, true) then return r end
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[5], '0', 'MKSTREAM')
else
  if r[1] ~= cursor then redis.call('SET', KEYS[3], r[1]) end
  entries = r[2]
end
if #entries < max then
  local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[5], ARGV[1], 'COUNT', max - #entries,
    'STREAMS', KEYS[1], '>')
  if fresh then
    for _, e in ipairs(fresh[1][2]) do entries[#entries + 1] = e end
  end
end
local out = {}
for _, e in ipairs(entries) do
  local id = e[2] and e[2][2]
  local mk = ARGV[4] .. tostring(id)
  if id and redis.call('HGET', mk, 'e') == e[1] then
    lease(mk, id, out)
  else
    -- An entry without its message (never written by these scripts): drop it.
    redis.call('XACK', KEYS[1], ARGV[5], e[1])
    redis.call('XDEL', KEYS[1], e[1])
  end
end
if redis.call('SET', KEYS[5], '1', 'NX', 'PX', 60000) then
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[5])) do
    local info = {}
    for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
    if info['pending'] == 0 and info['idle'] > 3600000 and info['name'] ~= ARGV[1] then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[5], info['name'])
    end
  end
end
return out
";

/// KEYS: fifo schedule, fifo in flight. ARGV: consumer, max, visibility timeout ms, message key
/// prefix, group list prefix. Takes the groups whose claim expired first, then the groups whose
/// head is due, and leases each one's head.
const CLAIM_FIFO: &str = "
local max = tonumber(ARGV[2])
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, max)
if #members < max then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, max - #members)
  for _, m in ipairs(due) do
    redis.call('ZREM', KEYS[1], m)
    members[#members + 1] = m
  end
end
local out = {}
for _, m in ipairs(members) do
  local list = ARGV[5] .. named(m)
  local id = redis.call('LINDEX', list, 0)
  if id and redis.call('EXISTS', ARGV[4] .. id) == 1 then
    lease(ARGV[4] .. id, id, out)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), m)
  else
    -- A head without its message (never written by these scripts): drop it.
    redis.call('ZREM', KEYS[2], m)
    if id then
      redis.call('LPOP', list)
      local head = redis.call('LINDEX', list, 0)
      if head then
        local q = redis.call('HGET', ARGV[4] .. head, 'q') or 0
        redis.call('ZADD', KEYS[1], now, member(q, named(m)))
      end
    end
  end
end
return out
";

/// KEYS: message, stream, delayed, dead, fifo schedule, fifo in flight, fifo count. ARGV: lease,
/// `ack` | `retry` | `release` (a retry that gives the attempt back) | `park` (a release not
/// counted as one) | `dead`, delay ms, error JSON, receipt id, group, message key prefix, group
/// list prefix. Answers 1, or 0 when the lease is not the current one. Whether the message is
/// fifo is read from the message (its `g`), not taken from the caller.
///
/// Standard: the stream entry goes (`XACK`, `XDEL`); a retry waits in the delayed set. Fifo: a
/// retry keeps the message at its group's head; an ack or a death schedules the next head at
/// the end of its enqueue delay, so among ready heads the oldest message goes first.
const SETTLE: &str = "
local h = redis.call('HMGET', KEYS[1], 'l', 'e', 'g', 'q')
if h[1] ~= ARGV[1] then return 0 end
local e, g, q = h[2], h[3], h[4]
local delay = tonumber(ARGV[3])
redis.call('HDEL', KEYS[1], 'l', 'e')
if ARGV[2] == 'release' or ARGV[2] == 'park' then
  if tonumber(redis.call('HGET', KEYS[1], 'n') or '0') > 0 then redis.call('HINCRBY', KEYS[1], 'n', -1) end
  if ARGV[2] == 'release' then redis.call('HINCRBY', KEYS[1], 'r', 1) end
  ARGV[2] = 'retry'
end
if g then
  local m = member(q, g)
  redis.call('ZREM', KEYS[6], m)
  if ARGV[2] == 'retry' then
    redis.call('ZADD', KEYS[5], now + delay, m)
    return 1
  end
  local list = ARGV[8] .. g
  redis.call('LREM', list, 1, ARGV[5])
  redis.call('DECR', KEYS[7])
  local head = redis.call('LINDEX', list, 0)
  if head then
    local next = redis.call('HMGET', ARGV[7] .. head, 'q', 'nb')
    redis.call('ZADD', KEYS[5], tonumber(next[2]) or now, member(next[1] or 0, g))
  end
elseif e then
  redis.call('XACK', KEYS[2], ARGV[6], e)
  redis.call('XDEL', KEYS[2], e)
end
if ARGV[2] == 'ack' then
  redis.call('DEL', KEYS[1])
elseif ARGV[2] == 'dead' then
  redis.call('HSET', KEYS[1], 'err', ARGV[4], 'fa', now)
  -- Idempotent: the id is listed once however often it died.
  redis.call('LREM', KEYS[4], 0, ARGV[5])
  redis.call('RPUSH', KEYS[4], ARGV[5])
elseif delay > 0 then
  redis.call('ZADD', KEYS[3], now + delay, member(q, ARGV[5]))
else
  redis.call('HSET', KEYS[1], 'e', redis.call('XADD', KEYS[2], '*', 'id', ARGV[5]))
end
return 1
";

/// KEYS: message, stream, fifo in flight. ARGV: lease, visibility timeout ms, group, consumer.
/// Answers 1 when the lease is the current one and its claim now ends a visibility timeout from
/// now: a fifo head's claim is rescheduled; a standard entry is claimed again by its own consumer
/// (`XCLAIM ... JUSTID` resets its idle time, which `XAUTOCLAIM` compares with the visibility
/// timeout, and does not count a delivery).
const EXTEND: &str = "
local h = redis.call('HMGET', KEYS[1], 'l', 'e', 'g', 'q')
if h[1] ~= ARGV[1] then return 0 end
if h[3] then
  redis.call('ZADD', KEYS[3], 'XX', now + tonumber(ARGV[2]), member(h[4], h[3]))
elseif h[2] then
  redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, h[2], 'JUSTID')
end
return 1
";

/// KEYS: dead, stream, fifo schedule, fifo count, sequence. ARGV: message key prefix, group
/// list prefix, receipt id (empty: the oldest `ARGV[4]`), chunk. A redriven message is a fresh
/// one at the back of its queue (and of its fifo group). Answers `{moved, taken from the list}`.
const REDRIVE: &str = "
local ids
if ARGV[3] ~= '' then
  if redis.call('LREM', KEYS[1], 1, ARGV[3]) == 0 then return {0, 0} end
  ids = {ARGV[3]}
else
  ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)
  if #ids > 0 then redis.call('LTRIM', KEYS[1], #ids, -1) end
end
local moved = 0
for _, id in ipairs(ids) do
  local mk = ARGV[1] .. id
  if redis.call('EXISTS', mk) == 1 then
    local q = redis.call('INCR', KEYS[5])
    redis.call('HSET', mk, 'n', 0, 'q', q)
    redis.call('HDEL', mk, 'err', 'fa', 'l', 'e', 'r')
    local g = redis.call('HGET', mk, 'g')
    if g then
      redis.call('HSET', mk, 'nb', now)
      redis.call('INCR', KEYS[4])
      if redis.call('RPUSH', ARGV[2] .. g, id) == 1 then
        redis.call('ZADD', KEYS[3], now, member(q, g))
      end
    else
      redis.call('HSET', mk, 'e', redis.call('XADD', KEYS[2], '*', 'id', id))
    end
    moved = moved + 1
  end
end
return {moved, #ids}
";

/// KEYS: dead, message. ARGV: receipt id.
const DISCARD: &str = "
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: dead. ARGV: message key prefix, first index, last index.
const DEAD_LETTERS: &str = "
local out = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], ARGV[2], ARGV[3])) do
  local v = redis.call('HMGET', ARGV[1] .. id, 'f', 'ns', 'd', 'g', 'n', 'err', 'at', 'fa')
  out[#out + 1] = {id, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]}
end
return out
";

/// KEYS: stream, delayed, dead, fifo schedule, fifo in flight, fifo count, visibility timeout.
/// ARGV: group. Answers `{ready, delayed, in flight, dead}`: a due delayed message and a claim
/// past its visibility timeout count as ready, a fifo message behind its group's head as ready.
const STATS: &str = "
local len = redis.call('XLEN', KEYS[1])
local pending, expired = 0, 0
if len > 0 then
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
  if not p.err then
    pending = p[1]
    local vt = redis.call('GET', KEYS[7])
    if pending > 0 and vt then
      expired = #redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', vt, '-', '+',
        math.min(pending, 10000))
    end
  end
end
local due = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local later = redis.call('ZCARD', KEYS[2]) - due
local fifo = tonumber(redis.call('GET', KEYS[6]) or '0')
local fifo_flight = redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf')
local fifo_later = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
local ready = len - pending + expired + due + fifo - fifo_flight - fifo_later
return {ready, later + fifo_later, pending - expired + fifo_flight, redis.call('LLEN', KEYS[3])}
";

/// The scripts, hashed once per process.
struct Scripts {
    enqueue: Script,
    claim_standard: Script,
    claim_fifo: Script,
    settle: Script,
    extend: Script,
    redrive: Script,
    discard: Script,
    dead_letters: Script,
    stats: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: Script::new(&format!("{PRELUDE}{ENQUEUE}")),
    claim_standard: Script::new(&format!("{PRELUDE}{LEASE}{CLAIM_STANDARD}")),
    claim_fifo: Script::new(&format!("{PRELUDE}{LEASE}{CLAIM_FIFO}")),
    settle: Script::new(&format!("{PRELUDE}{SETTLE}")),
    extend: Script::new(&format!("{PRELUDE}{EXTEND}")),
    redrive: Script::new(&format!("{PRELUDE}{REDRIVE}")),
    discard: Script::new(DISCARD),
    dead_letters: Script::new(DEAD_LETTERS),
    stats: Script::new(&format!("{PRELUDE}{STATS}")),
});

/// One queue's keys (see the module docs).
struct Keys {
    /// `P{Q}:`
    base: String,
}

impl Keys {
    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    fn message(&self, id: &str) -> String {
        format!("{}m:{id}", self.base)
    }

    fn group(&self, group: &str) -> String {
        format!("{}g:{group}", self.base)
    }
}

/// A [`QueueStore`] on Redis, shared by every engine that connects to the same Redis with the
/// same prefix: each engine is one consumer (its own name), and a message is claimed by one of
/// them at a time. See the module docs for the key layout.
///
/// `standard` queues use a Redis Stream with a consumer group (Redis 6.2 or later, for
/// `XAUTOCLAIM`); `fifo` queues keep each group's order across engines. All the engine's queues
/// share one multiplexed connection, which pipelines concurrent operations and reconnects after
/// a failure; an operation that fails answers a [`StoreError`] naming Redis's address and the
/// cause. Times (delays, visibility timeouts, `enqueued_at_ms`, `failed_at_ms`) come from
/// Redis's clock.
pub struct RedisStore {
    // NOTE: one multiplexed connection, no pool: concurrent operations are pipelined on it, 32
    // concurrent enqueuers reached about 75,000 enqueues/s against 8,000-10,000/s one at a time
    // (local Redis 7.0, 2 cores, release build).
    redis: ConnectionManager,
    consumer: String,
    prefix: String,
    /// `host:port` or the socket path (never the credentials), for errors.
    addr: String,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[[user]:password@]host[:port][/db]` or
    /// `redis+unix:///path/to/socket`; TLS is not built in), claiming as `consumer`, which must
    /// be unique among the engines sharing this Redis (an engine that restarts may reuse its
    /// name).
    ///
    /// Refuses a Redis older than 6.2 (no `XAUTOCLAIM`). A Redis that cannot be reached now is
    /// only logged: the store connects at its next operation, so an engine starts while Redis
    /// is down and its consumers pick up once it is back. The error says why `url` is not
    /// usable without repeating it (it may hold a password).
    pub async fn connect(url: &str, consumer: &str) -> StoreResult<RedisStore> {
        if consumer.is_empty() {
            return Err(StoreError::new(
                "a Redis queue store needs a non-empty consumer name",
            ));
        }
        let invalid = |e: RedisError| {
            let reason = if url.starts_with("rediss:") || url.starts_with("valkeys:") {
                "TLS (rediss://) is not built in".to_owned()
            } else {
                // Drop the " - InvalidClientConfig" the crate appends to its message.
                let text = e.to_string();
                text.split(" - ").next().unwrap_or(&text).to_owned()
            };
            StoreError::new(format!(
                "unusable Redis URL for the queue store: {reason}; expected \
                 redis://[[user]:password@]host[:port][/db] or redis+unix:///path/to/socket"
            ))
        };
        let client = redis::Client::open(url).map_err(invalid)?;
        let addr = client.get_connection_info().addr().to_string();
        // One reconnection attempt inside an operation: the consumers retry on their next poll.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let redis = ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
        let store = RedisStore {
            redis,
            consumer: consumer.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            addr,
        };
        store.check_version().await?;
        Ok(store)
    }

    /// Refuses a Redis older than 6.2; one that does not answer is logged and accepted.
    async fn check_version(&self) -> StoreResult<()> {
        let mut redis = self.redis.clone();
        let info = redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut redis)
            .await;
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                warn!(
                    redis = %self.addr,
                    "the queue store cannot reach Redis at {} yet: {e}; it retries at every \
                     operation",
                    self.addr
                );
                return Ok(());
            }
        };
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("")
            .trim();
        let mut parts = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        let major_minor = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if major_minor < (6, 2) {
            return Err(StoreError::new(format!(
                "Redis at {} is version {version:?}; the queue store needs 6.2 or later \
                 (XAUTOCLAIM)",
                self.addr
            )));
        }
        Ok(())
    }

    /// The same store under another key prefix (tests, or several fnmesh deployments on one
    /// Redis). Engines must agree on it to share queues.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> RedisStore {
        self.prefix = prefix.into();
        self
    }

    /// This engine's consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self, queue: &str) -> StoreResult<Keys> {
        if queue.contains('}') {
            return Err(StoreError::new(format!(
                "queue name {queue:?} cannot be stored in Redis: it must not contain '}}'"
            )));
        }
        Ok(Keys {
            base: format!("{}{{{queue}}}:", self.prefix),
        })
    }

    fn queues_key(&self) -> String {
        format!("{}queues", self.prefix)
    }

    /// Runs a script; a connection that turns out dead is replaced and the script sent once
    /// more (when the first was executed but its answer lost, that repeats it: a claim's
    /// messages come back after the visibility timeout, an enqueue without an idempotency key
    /// is stored twice, within at-least-once).
    async fn run(&self, what: &str, invocation: &ScriptInvocation<'_>) -> StoreResult<Value> {
        let mut redis = self.redis.clone();
        let mut answer = invocation.invoke_async::<Value>(&mut redis).await;
        if matches!(&answer, Err(e) if e.is_unrecoverable_error()) {
            answer = invocation.invoke_async::<Value>(&mut redis).await;
        }
        answer.map_err(|e| self.failed(what, &e))
    }

    #[cold]
    fn failed(&self, what: &str, error: &RedisError) -> StoreError {
        StoreError::new(format!("{what} on Redis at {}: {error}", self.addr))
    }

    async fn enqueue_inner(
        &self,
        message: NewMessage,
        name: String,
        kind: QueueKind,
        window: Duration,
    ) -> StoreResult<Enqueued> {
        if message.queue != name {
            return Err(StoreError::new(format!(
                "message for queue {:?} enqueued with the config of {name:?}",
                message.queue
            )));
        }
        let keys = self.keys(&message.queue)?;
        let fifo = matches!(kind, QueueKind::Fifo { .. });
        let group = if fifo {
            match &message.group {
                Some(group) => group.clone(),
                None => {
                    return Err(StoreError::new(format!(
                        "message {} of fifo queue {:?} has no group",
                        message.id, message.queue
                    )))
                }
            }
        } else {
            String::new()
        };
        let window_ms = match &message.idempotency_key {
            Some(_) => millis(window),
            None => 0,
        };
        let mut invocation = SCRIPTS.enqueue.prepare_invoke();
        invocation
            .key(keys.message(&message.id))
            .key(self.queues_key());
        if fifo {
            invocation.key(keys.group(&group)).key(keys.key("gs"));
        } else {
            invocation.key(keys.key("s")).key(keys.key("delayed"));
        }
        invocation.key(keys.key("gn")).key(keys.key("seq"));
        if let (Some(key), true) = (&message.idempotency_key, window_ms > 0) {
            invocation.key(format!("{}i:{key}", keys.base));
        }
        invocation
            .arg(&message.queue)
            .arg(&message.id)
            .arg(millis(message.delay))
            .arg(window_ms)
            .arg(if fifo { "f" } else { "s" })
            .arg(&group)
            .arg("f")
            .arg(&message.function_id)
            .arg("ns")
            .arg(&message.namespace)
            .arg("d")
            .arg(&message.data);
        if let Some(traceparent) = &message.traceparent {
            invocation.arg("tp").arg(traceparent);
        }
        if let Some(baggage) = &message.baggage {
            invocation.arg("bg").arg(baggage);
        }
        if fifo {
            invocation.arg("g").arg(&group);
        }
        let answer = self.run("enqueue", &invocation).await?;
        let bad = || StoreError::new(format!("unexpected answer to enqueue: {answer:?}"));
        let Value::Array(items) = &answer else {
            return Err(bad());
        };
        match items.as_slice() {
            [stored, id] => {
                let id = text(id).ok_or_else(bad)?;
                match integer(stored) {
                    Some(1) => Ok(Enqueued::Stored(id)),
                    Some(0) => Ok(Enqueued::Duplicate(id)),
                    _ => Err(StoreError::new(format!(
                        "message id {id:?} already in queue {:?}",
                        message.queue
                    ))),
                }
            }
            _ => Err(bad()),
        }
    }

    async fn claim_inner(
        &self,
        queue: String,
        kind: QueueKind,
        visibility: Duration,
        max: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let keys = self.keys(&queue)?;
        let max = max.min(MAX_CLAIM);
        if max == 0 {
            return Ok(Vec::new());
        }
        let visibility_ms = millis(visibility).max(1);
        let mut invocation;
        match kind {
            QueueKind::Standard => {
                invocation = SCRIPTS.claim_standard.prepare_invoke();
                invocation
                    .key(keys.key("s"))
                    .key(keys.key("delayed"))
                    .key(keys.key("cursor"))
                    .key(keys.key("vt"))
                    .key(keys.key("gc"))
                    .arg(&self.consumer)
                    .arg(max)
                    .arg(visibility_ms)
                    .arg(keys.message(""))
                    .arg(GROUP);
            }
            QueueKind::Fifo { .. } => {
                invocation = SCRIPTS.claim_fifo.prepare_invoke();
                invocation
                    .key(keys.key("gs"))
                    .key(keys.key("gf"))
                    .arg(&self.consumer)
                    .arg(max)
                    .arg(visibility_ms)
                    .arg(keys.message(""))
                    .arg(keys.group(""));
            }
        }
        let answer = self.run("claim", &invocation).await?;
        parse_deliveries(&queue, answer)
    }

    async fn settle(
        &self,
        delivery: Delivery,
        how: &'static str,
        delay: Duration,
        error: String,
    ) -> StoreResult<bool> {
        let keys = self.keys(&delivery.queue)?;
        let mut invocation = SCRIPTS.settle.prepare_invoke();
        invocation
            .key(keys.message(&delivery.id))
            .key(keys.key("s"))
            .key(keys.key("delayed"))
            .key(keys.key("dead"))
            .key(keys.key("gs"))
            .key(keys.key("gf"))
            .key(keys.key("gn"))
            .arg(&delivery.lease)
            .arg(how)
            .arg(millis(delay))
            .arg(error)
            .arg(&delivery.id)
            .arg(GROUP)
            .arg(keys.message(""))
            .arg(keys.group(""));
        let answer = self.run(how, &invocation).await?;
        match integer(&answer) {
            Some(settled) => Ok(settled == 1),
            None => Err(StoreError::new(format!(
                "unexpected answer to {how}: {answer:?}"
            ))),
        }
    }

    async fn redrive_inner(&self, queue: String, id: Option<String>) -> StoreResult<u64> {
        let keys = self.keys(&queue)?;
        let mut moved_total = 0;
        loop {
            let mut invocation = SCRIPTS.redrive.prepare_invoke();
            invocation
                .key(keys.key("dead"))
                .key(keys.key("s"))
                .key(keys.key("gs"))
                .key(keys.key("gn"))
                .key(keys.key("seq"))
                .arg(keys.message(""))
                .arg(keys.group(""))
                .arg(id.as_deref().unwrap_or(""))
                .arg(REDRIVE_CHUNK);
            let answer = self.run("redrive", &invocation).await?;
            let counts = match &answer {
                Value::Array(items) if items.len() == 2 => {
                    integer(&items[0]).zip(integer(&items[1]))
                }
                _ => None,
            };
            let Some((moved, taken)) = counts else {
                return Err(StoreError::new(format!(
                    "unexpected answer to redrive: {answer:?}"
                )));
            };
            moved_total += moved.max(0) as u64;
            if id.is_some() || taken < REDRIVE_CHUNK as i64 {
                return Ok(moved_total);
            }
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .field("consumer", &self.consumer)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl QueueStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn enqueue(
        &self,
        message: NewMessage,
        config: &QueueConfig,
    ) -> BoxFuture<'_, StoreResult<Enqueued>> {
        Box::pin(self.enqueue_inner(
            message,
            config.name.clone(),
            config.kind.clone(),
            config.idempotency_window,
        ))
    }

    fn claim(&self, config: &QueueConfig, max: usize) -> BoxFuture<'_, StoreResult<Vec<Delivery>>> {
        Box::pin(self.claim_inner(
            config.name.clone(),
            config.kind.clone(),
            config.visibility_timeout,
            max,
        ))
    }

    fn ack(&self, delivery: &Delivery) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(self.settle(delivery.clone(), "ack", Duration::ZERO, String::new()))
    }

    fn nack(
        &self,
        delivery: &Delivery,
        error: &ErrorBody,
        how: Nack,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        let delivery = delivery.clone();
        let error = serde_json::to_string(error);
        Box::pin(async move {
            let error = error.map_err(StoreError::new)?;
            match how {
                Nack::Retry(delay) => self.settle(delivery, "retry", delay, error).await,
                Nack::Release(delay) => self.settle(delivery, "release", delay, error).await,
                Nack::Park(delay) => self.settle(delivery, "park", delay, error).await,
                Nack::Dead => self.settle(delivery, "dead", Duration::ZERO, error).await,
            }
        })
    }

    fn extend(
        &self,
        delivery: &Delivery,
        visibility_timeout: Duration,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        let keys = self.keys(&delivery.queue);
        let (id, lease) = (delivery.id.clone(), delivery.lease.clone());
        Box::pin(async move {
            let keys = keys?;
            let mut invocation = SCRIPTS.extend.prepare_invoke();
            invocation
                .key(keys.message(&id))
                .key(keys.key("s"))
                .key(keys.key("gf"))
                .arg(&lease)
                .arg(millis(visibility_timeout).max(1))
                .arg(GROUP)
                .arg(&self.consumer);
            let answer = self.run("extend", &invocation).await?;
            match integer(&answer) {
                Some(extended) => Ok(extended == 1),
                None => Err(StoreError::new(format!(
                    "unexpected answer to extend: {answer:?}"
                ))),
            }
        })
    }

    fn release_all(&self) -> BoxFuture<'_, StoreResult<u64>> {
        // Other engines' claims are theirs; an expired one of this engine's previous run is
        // taken back by XAUTOCLAIM once its visibility timeout has passed.
        Box::pin(std::future::ready(Ok(0)))
    }

    fn stats(&self, queue: &str) -> BoxFuture<'_, StoreResult<QueueStats>> {
        let keys = self.keys(queue);
        Box::pin(async move {
            let keys = keys?;
            let mut invocation = SCRIPTS.stats.prepare_invoke();
            invocation
                .key(keys.key("s"))
                .key(keys.key("delayed"))
                .key(keys.key("dead"))
                .key(keys.key("gs"))
                .key(keys.key("gf"))
                .key(keys.key("gn"))
                .key(keys.key("vt"))
                .arg(GROUP);
            let answer = self.run("stats", &invocation).await?;
            let counts: Option<Vec<u64>> = match &answer {
                Value::Array(items) if items.len() == 4 => items
                    .iter()
                    .map(|v| integer(v).map(|n| n.max(0) as u64))
                    .collect(),
                _ => None,
            };
            match counts.as_deref() {
                Some(&[ready, delayed, in_flight, dead]) => Ok(QueueStats {
                    ready,
                    delayed,
                    in_flight,
                    dead,
                }),
                _ => Err(StoreError::new(format!(
                    "unexpected answer to stats: {answer:?}"
                ))),
            }
        })
    }

    fn queues(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let names: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.queues_key())
                .query_async(&mut redis)
                .await
                .map_err(|e| self.failed("queues", &e))?;
            let mut counts = redis::pipe();
            let mut checked = Vec::with_capacity(names.len());
            for name in names {
                // Names with '}' are never stored (enqueue refuses them).
                let Ok(keys) = self.keys(&name) else { continue };
                counts
                    .cmd("XLEN")
                    .arg(keys.key("s"))
                    .cmd("ZCARD")
                    .arg(keys.key("delayed"))
                    .cmd("LLEN")
                    .arg(keys.key("dead"))
                    .cmd("GET")
                    .arg(keys.key("gn"));
                checked.push(name);
            }
            if checked.is_empty() {
                return Ok(checked);
            }
            let counts: Vec<Value> = counts
                .query_async(&mut redis)
                .await
                .map_err(|e| self.failed("queues", &e))?;
            let mut busy: Vec<String> = checked
                .into_iter()
                .zip(counts.chunks(4))
                .filter(|(_, counts)| counts.iter().any(|n| integer(n).unwrap_or(0) > 0))
                .map(|(name, _)| name)
                .collect();
            busy.sort();
            Ok(busy)
        })
    }

    fn dead_letters(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<DeadLetter>>> {
        let queue = queue.to_owned();
        Box::pin(async move {
            let keys = self.keys(&queue)?;
            if limit == 0 {
                return Ok(Vec::new());
            }
            let first = offset.min(i64::MAX as usize) as i64;
            let last = first.saturating_add(limit.min(i64::MAX as usize) as i64 - 1);
            let mut invocation = SCRIPTS.dead_letters.prepare_invoke();
            invocation
                .key(keys.key("dead"))
                .arg(keys.message(""))
                .arg(first)
                .arg(last);
            let answer = self.run("dead_letters", &invocation).await?;
            parse_dead_letters(&queue, answer)
        })
    }

    fn redrive(&self, queue: &str, id: Option<&str>) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.redrive_inner(queue.to_owned(), id.map(str::to_owned)))
    }

    fn discard(&self, queue: &str, id: &str) -> BoxFuture<'_, StoreResult<bool>> {
        let keys = self.keys(queue);
        let id = id.to_owned();
        Box::pin(async move {
            let keys = keys?;
            let mut invocation = SCRIPTS.discard.prepare_invoke();
            invocation
                .key(keys.key("dead"))
                .key(keys.message(&id))
                .arg(&id);
            let answer = self.run("discard", &invocation).await?;
            match integer(&answer) {
                Some(discarded) => Ok(discarded == 1),
                None => Err(StoreError::new(format!(
                    "unexpected answer to discard: {answer:?}"
                ))),
            }
        })
    }
}

/// `duration` in milliseconds, at most about 34 years: Redis refuses an expiry or idle time
/// that overflows its clock, and no delay or window means more than that.
fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(1 << 40) as u64
}

/// A string answer (`None` for nil or another type).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integer answer, or a string holding one.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The claim scripts' answer: per message `{id, attempt, lease, function, namespace, data,
/// traceparent, baggage, group, enqueued at}`.
fn parse_deliveries(queue: &str, answer: Value) -> StoreResult<Vec<Delivery>> {
    let bad = |what: &Value| StoreError::new(format!("unexpected answer to claim: {what:?}"));
    let Value::Array(messages) = &answer else {
        return Err(bad(&answer));
    };
    let mut deliveries = Vec::with_capacity(messages.len());
    for message in messages {
        let Value::Array(fields) = message else {
            return Err(bad(message));
        };
        let [id, attempt, lease, function_id, namespace, data, traceparent, baggage, group, at, releases] =
            fields.as_slice()
        else {
            return Err(bad(message));
        };
        let (Some(id), Some(attempt), Some(lease)) = (text(id), integer(attempt), text(lease))
        else {
            return Err(bad(message));
        };
        let (Some(function_id), Some(namespace), Some(data)) =
            (text(function_id), text(namespace), text(data))
        else {
            return Err(StoreError::new(format!(
                "message {id} of queue {queue:?} is missing its function, namespace or data"
            )));
        };
        deliveries.push(Delivery {
            id,
            queue: queue.to_owned(),
            function_id,
            namespace,
            data,
            traceparent: text(traceparent),
            baggage: text(baggage),
            group: text(group),
            attempt: attempt.clamp(0, u32::MAX as i64) as u32,
            releases: integer(releases).unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            enqueued_at_ms: integer(at).unwrap_or(0).max(0) as u64,
            lease,
        });
    }
    Ok(deliveries)
}

/// The dead-letter script's answer: per message `{id, function, namespace, data, group,
/// attempts, error JSON, enqueued at, failed at}`.
fn parse_dead_letters(queue: &str, answer: Value) -> StoreResult<Vec<DeadLetter>> {
    let bad =
        |what: &Value| StoreError::new(format!("unexpected answer to dead_letters: {what:?}"));
    let Value::Array(messages) = &answer else {
        return Err(bad(&answer));
    };
    let mut letters = Vec::with_capacity(messages.len());
    for message in messages {
        let Value::Array(fields) = message else {
            return Err(bad(message));
        };
        let [id, function_id, namespace, data, group, attempts, error, at, failed_at] =
            fields.as_slice()
        else {
            return Err(bad(message));
        };
        let Some(id) = text(id) else {
            return Err(bad(message));
        };
        let (Some(function_id), Some(namespace), Some(data), Some(error)) =
            (text(function_id), text(namespace), text(data), text(error))
        else {
            return Err(StoreError::new(format!(
                "dead letter {id} of queue {queue:?} is missing its function, namespace, data \
                 or error"
            )));
        };
        let error: ErrorBody = serde_json::from_str(&error).map_err(|e| {
            StoreError::new(format!(
                "dead letter {id} of queue {queue:?} has an unreadable error: {e}"
            ))
        })?;
        letters.push(DeadLetter {
            id,
            queue: queue.to_owned(),
            function_id,
            namespace,
            data,
            group: text(group),
            attempts: integer(attempts).unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            error,
            enqueued_at_ms: integer(at).unwrap_or(0).max(0) as u64,
            failed_at_ms: integer(failed_at).unwrap_or(0).max(0) as u64,
        });
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn deliveries_are_read_from_the_claim_answer() {
        let answer = Value::Array(vec![Value::Array(vec![
            bulk("m1"),
            Value::Int(2),
            bulk("engine-a/7"),
            bulk("orders.process"),
            bulk("default"),
            bulk("{}"),
            Value::Nil,
            bulk("k=v"),
            Value::Nil,
            bulk("1700000000123"),
            bulk("3"),
        ])]);
        let deliveries = parse_deliveries("jobs", answer).unwrap();
        assert_eq!(
            deliveries,
            [Delivery {
                id: "m1".to_owned(),
                queue: "jobs".to_owned(),
                function_id: "orders.process".to_owned(),
                namespace: "default".to_owned(),
                data: "{}".to_owned(),
                traceparent: None,
                baggage: Some("k=v".to_owned()),
                group: None,
                attempt: 2,
                releases: 3,
                enqueued_at_ms: 1_700_000_000_123,
                lease: "engine-a/7".to_owned(),
            }]
        );
    }

    #[test]
    fn malformed_answers_are_store_errors() {
        assert!(parse_deliveries("jobs", Value::Okay).is_err());
        assert!(parse_deliveries("jobs", Value::Array(vec![Value::Int(1)])).is_err());
        let missing_data = Value::Array(vec![Value::Array(vec![
            bulk("m1"),
            Value::Int(1),
            bulk("a/1"),
            bulk("f"),
            bulk("default"),
            Value::Nil,
            Value::Nil,
            Value::Nil,
            Value::Nil,
            bulk("1"),
        ])]);
        let error = parse_deliveries("jobs", missing_data).unwrap_err();
        assert!(error.to_string().contains("m1"), "{error}");
        let bad_error = Value::Array(vec![Value::Array(vec![
            bulk("m1"),
            bulk("f"),
            bulk("default"),
            bulk("{}"),
            Value::Nil,
            bulk("4"),
            bulk("not json"),
            bulk("1"),
            bulk("2"),
        ])]);
        assert!(parse_dead_letters("jobs", bad_error).is_err());
    }
}
