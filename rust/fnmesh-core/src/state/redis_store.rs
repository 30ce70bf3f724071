//! [`RedisStateStore`]: state in Redis, shared by every engine pointed at it.
//!
//! Layout (prefix `fnmesh:state:`): a hash per scope, `fnmesh:state:s:<scope>`, field = key,
//! value = the JSON text; the set `fnmesh:state:scopes` of the scopes holding a key; the channel
//! `fnmesh:state:events` carrying every change event.
//!
//! Each write is one Lua script that changes the hash and publishes the change event in the
//! same atomic step, so the events on the channel are in the order of the writes, whichever
//! engine made them; every engine listens on the channel and hands the events to its own
//! `state` trigger (its own writes included). `update` reads the value, applies the operations
//! here, and writes with a compare-and-set script that only stores if the value is still the
//! one read; otherwise it reads again and retries, so concurrent updates never lose a write.
//! The event payload is put together in the script from JSON texts (the stored values, the
//! scope and key encoded by the caller), never decoded and encoded again in Lua.

use std::sync::LazyLock;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script};
use serde_json::Value;

use super::{ops, StateError, StateEvent, StateResult, StateStore, UpdateOp, Updated};
use crate::protocol::RawJson;
use crate::redis_channel;

/// The key prefix of `state::*` ([`RedisStateStore::connect`]); streams use their own
/// ([`RedisStateStore::connect_with_prefix`]).
const PREFIX: &str = "fnmesh:state:";

/// How often `update` retries its compare-and-set before giving up. Each failed attempt means
/// another write to the same key succeeded, so this bounds only a pathological hot spot.
const MAX_UPDATE_ATTEMPTS: usize = 10_000;

/// Builds the change event from `old` (false: none) and `new_json` (false: deleted). ARGV of
/// every script: 1 key, 2 scope, 3 scope as JSON, 4 key as JSON.
const EVENT: &str = r#"
local function publish(old, new_json)
  local kind = 'state:updated'
  if not new_json then kind = 'state:deleted' elseif not old then kind = 'state:created' end
  redis.call('PUBLISH', KEYS[3], '{"type":"state","event_type":"' .. kind .. '","scope":' ..
    ARGV[3] .. ',"key":' .. ARGV[4] .. ',"old_value":' .. (old or 'null') ..
    ',"new_value":' .. (new_json or 'null') .. '}')
end
"#;

/// KEYS: hash, scopes, channel. ARGV 5: the new value. Answers the old value (nil: none).
const SET: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[2])
publish(old, ARGV[5])
return old
";

/// KEYS as `SET`. ARGV 5: the new value; 6: '1' when a value was read, then 7 is that value.
/// Answers 1 when stored, 0 when the value changed since it was read.
const COMPARE_AND_SET: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[6] == '1' then
  if current ~= ARGV[7] then return 0 end
elseif current then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[2])
publish(current, ARGV[5])
return 1
";

/// KEYS as `SET`. Answers the deleted value (nil: there was none, and nothing is published).
const DELETE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return old end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
publish(old, false)
return old
";

struct Scripts {
    set: Script,
    compare_and_set: Script,
    delete: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    set: Script::new(&format!("{EVENT}{SET}")),
    compare_and_set: Script::new(&format!("{EVENT}{COMPARE_AND_SET}")),
    delete: Script::new(&format!("{EVENT}{DELETE}")),
});

/// State in Redis, shared by engines; see the module docs.
pub struct RedisStateStore {
    redis: ConnectionManager,
    addr: String,
    prefix: &'static str,
    _listener: redis_channel::Listener,
}

impl std::fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The channel every engine's listener reads change events from.
fn channel(prefix: &str) -> String {
    format!("{prefix}events")
}

impl RedisStateStore {
    /// A store on the Redis at `url`; the change events of every engine sharing it go to
    /// `events`. Waits (at most 2 s) for the event subscription, so that this engine's
    /// triggers see the changes made from the start; a Redis that is down is logged and
    /// retried.
    pub async fn connect(url: &str, events: super::EventSink) -> Result<RedisStateStore, String> {
        Self::connect_with_prefix(url, PREFIX, "state_redis_url", events).await
    }

    /// A store as [`RedisStateStore::connect`] makes, its keys and channel under `prefix`
    /// instead of `fnmesh:state:` (streams keep theirs apart from state this way); `setting`
    /// names the URL's setting in errors.
    pub async fn connect_with_prefix(
        url: &str,
        prefix: &'static str,
        setting: &str,
        events: super::EventSink,
    ) -> Result<RedisStateStore, String> {
        let client = redis_channel::client(url, setting)?;
        let addr = client.get_connection_info().addr().to_string();
        let redis = redis_channel::manager(client.clone())
            .await
            .map_err(|e| format!("invalid {setting}: {e}"))?;
        let listener = redis_channel::listen(client, channel(prefix), move |payload| {
            match decode_event(payload) {
                Some(event) => events.emit(event),
                None => tracing::warn!("ignored a malformed state event from Redis"),
            }
        })
        .await;
        Ok(RedisStateStore {
            redis,
            addr,
            prefix,
            _listener: listener,
        })
    }

    fn hash_key(&self, scope: &str) -> String {
        format!("{}s:{scope}", self.prefix)
    }

    fn failed(&self, what: &str, e: &RedisError) -> StateError {
        StateError::store(format_args!("{what} on Redis at {}: {e}", self.addr))
    }

    fn script<'s>(
        &self,
        script: &'s Script,
        scope: &str,
        key: &str,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.hash_key(scope))
            .key(format!("{}scopes", self.prefix))
            .key(channel(self.prefix))
            .arg(key)
            .arg(scope)
            .arg(Value::from(scope).to_string())
            .arg(Value::from(key).to_string());
        invocation
    }
}

fn parse(text: Option<String>) -> StateResult<Option<Value>> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StateError::store(format_args!("a stored value is not JSON: {e}")))
    })
    .transpose()
}

/// The scope and key of an event published by a script, and the event itself.
fn decode_event(payload: Vec<u8>) -> Option<StateEvent> {
    #[derive(serde::Deserialize)]
    struct Head {
        scope: String,
        key: String,
    }
    let text = String::from_utf8(payload).ok()?;
    let head: Head = serde_json::from_str(&text).ok()?;
    let payload: RawJson = serde_json::value::RawValue::from_string(text).ok()?;
    Some(StateEvent {
        scope: head.scope,
        key: head.key,
        payload,
    })
}

impl StateStore for RedisStateStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let text: Option<String> = redis::cmd("HGET")
                .arg(self.hash_key(scope))
                .arg(key)
                .query_async(&mut redis)
                .await
                .map_err(|e| self.failed("state::get", &e))?;
            parse(text)
        })
    }

    fn set<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        value: Value,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let mut invocation = self.script(&SCRIPTS.set, scope, key);
            invocation.arg(value.to_string());
            let old: Option<String> = invocation
                .invoke_async(&mut redis)
                .await
                .map_err(|e| self.failed("state::set", &e))?;
            parse(old)
        })
    }

    fn update<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        ops: Vec<UpdateOp>,
    ) -> BoxFuture<'a, StateResult<Updated>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            for _ in 0..MAX_UPDATE_ATTEMPTS {
                let text: Option<String> = redis::cmd("HGET")
                    .arg(self.hash_key(scope))
                    .arg(key)
                    .query_async(&mut redis)
                    .await
                    .map_err(|e| self.failed("state::update", &e))?;
                let old = parse(text.clone())?;
                let (new, errors) = ops::apply(old.as_ref(), &ops);
                let mut invocation = self.script(&SCRIPTS.compare_and_set, scope, key);
                invocation.arg(new.to_string());
                match &text {
                    Some(read) => invocation.arg("1").arg(read.as_str()),
                    None => invocation.arg("0").arg(""),
                };
                let stored: i64 = invocation
                    .invoke_async(&mut redis)
                    .await
                    .map_err(|e| self.failed("state::update", &e))?;
                if stored == 1 {
                    return Ok(Updated {
                        old_value: old,
                        new_value: new,
                        errors,
                    });
                }
            }
            Err(StateError::store(format_args!(
                "state::update of {scope}/{key} lost {MAX_UPDATE_ATTEMPTS} races in a row"
            )))
        })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let old: Option<String> = self
                .script(&SCRIPTS.delete, scope, key)
                .invoke_async(&mut redis)
                .await
                .map_err(|e| self.failed("state::delete", &e))?;
            parse(old)
        })
    }

    fn list<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, StateResult<Vec<Value>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let entries: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
                .arg(self.hash_key(scope))
                .query_async(&mut redis)
                .await
                .map_err(|e| self.failed("state::list", &e))?;
            entries
                .into_values()
                .map(|text| parse(Some(text)).map(|v| v.unwrap_or(Value::Null)))
                .collect()
        })
    }

    fn list_groups(&self) -> BoxFuture<'_, StateResult<Vec<String>>> {
        Box::pin(async move {
            let mut redis = self.redis.clone();
            let mut groups: Vec<String> = redis::cmd("SMEMBERS")
                .arg(format!("{}scopes", self.prefix))
                .query_async(&mut redis)
                .await
                .map_err(|e| self.failed("state::list_groups", &e))?;
            groups.sort();
            Ok(groups)
        })
    }
}
