//! Who fires a tick: [`LocalLock`] for one engine, [`RedisLock`] for engines sharing one Redis.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

/// Exclusive right to fire one tick of one job: several engines sharing one Redis take it there;
/// [`LocalLock`] is the default for a single engine.
pub trait CronLock: Send + Sync + 'static {
    /// Tries to take the lock for `job_id`'s tick scheduled at `tick` (keyed by the tick, so that
    /// engines firing the same tick agree on one winner); true if this caller won.
    fn try_acquire(
        &self,
        job_id: &str,
        tick: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// Always wins (one engine).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalLock;

impl CronLock for LocalLock {
    fn try_acquire(
        &self,
        _job_id: &str,
        _tick: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(true))
    }
}

/// How long a won tick's key lives in Redis: far longer than any stall or clock difference between
/// engines, so an engine that reaches a tick late finds it taken instead of winning it again.
// NOTE: a key costs about 220 bytes in Redis 7.0 (6,000 keys measured with INFO used_memory), so
// an every-second job keeps 600 keys alive, about 130 KB; a shorter TTL saves memory only by
// letting an engine stalled that long win a tick again.
pub const REDIS_LOCK_TTL: Duration = Duration::from_secs(600);

/// Bound on one lock attempt, connecting included: a Redis that hangs delays a tick by at most
/// this much, and the tick is then skipped rather than fired late.
const REDIS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds on one connection attempt and on one reply, inside [`REDIS_ATTEMPT_TIMEOUT`].
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why one attempt at a tick's lock in Redis failed (logged; the tick is skipped).
#[derive(Debug, thiserror::Error)]
enum LockAttemptError {
    /// Redis answered `SET NX` with something else than OK or nil.
    #[error("unexpected answer to SET NX: {0}")]
    UnexpectedAnswer(String),
    /// Redis could not be reached or refused the command.
    #[error(transparent)]
    Redis(redis::RedisError),
    /// Nothing within [`REDIS_ATTEMPT_TIMEOUT`].
    #[error("no answer within {} s", REDIS_ATTEMPT_TIMEOUT.as_secs())]
    NoAnswer,
}

/// The lock for several engines sharing one Redis: the first engine to `SET` a tick's key wins
/// that tick, so each tick of a job fires on one engine only.
///
/// The key is `fnmesh:cron:<job_id>:<tick in unix milliseconds>` (a job's id is its binding id,
/// so engines agree on it when they bind the same function the same way), the value names the
/// engine that won ([`RedisLock::owner`]), and the key expires after [`REDIS_LOCK_TTL`].
///
/// When Redis cannot be reached, refuses the command or does not answer within 2 s, the tick is
/// skipped on this engine (firing it would fire it on every engine): the first failure, and a
/// failure with another cause, log a warning, the others only at debug, and the first success
/// after them logs at info. All the engine's jobs share one multiplexed connection, reconnected
/// on the next tick after a failure. A tick whose `SET` reached Redis but whose answer was lost
/// is fired by nobody: at most once, never twice.
pub struct RedisLock {
    redis: redis::aio::ConnectionManager,
    /// `host:port` or the socket path (never the credentials), for the logs.
    addr: String,
    owner: String,
    /// The error last warned about, from a failed attempt to the next successful one: a warning
    /// is logged when an outage starts or its cause changes, not for every tick.
    failing: Mutex<Option<String>>,
    skipped_while_failing: AtomicU64,
}

impl RedisLock {
    /// A lock on the Redis at `url`: `redis://[[user]:password@]host[:port][/db]` or
    /// `redis+unix:///path/to/socket` (TLS, `rediss://`, is not built in). Nothing is sent before
    /// the first tick, so an engine starts while Redis is down.
    ///
    /// Must be called inside a tokio runtime, which runs the connection. The error
    /// ([`crate::Error::InvalidArgument`]) says why `url` is not a usable Redis URL; it never
    /// repeats the URL, which may hold a password.
    pub fn new(url: &str) -> crate::Result<RedisLock> {
        let invalid = |e: redis::RedisError| {
            let reason = if e.kind() == redis::ErrorKind::InvalidClientConfig {
                if url.starts_with("rediss:") || url.starts_with("valkeys:") {
                    "TLS (rediss://) is not built in".to_owned()
                } else {
                    // Drop the " - InvalidClientConfig" the crate appends to its message.
                    let text = e.to_string();
                    text.split(" - ").next().unwrap_or(&text).to_owned()
                }
            } else {
                e.to_string()
            };
            crate::Error::InvalidArgument(format!(
                "{reason}; expected redis://[[user]:password@]host[:port][/db] \
                 or redis+unix:///path/to/socket"
            ))
        };
        let client = redis::Client::open(url).map_err(invalid)?;
        let addr = client.get_connection_info().addr().to_string();
        // No retries inside one attempt: the next tick is the retry, and a tick must not wait.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT));
        let redis =
            redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
        Ok(RedisLock {
            redis,
            addr,
            owner: format!(
                "pid{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            failing: Mutex::new(None),
            skipped_while_failing: AtomicU64::new(0),
        })
    }

    /// The value this engine writes into the keys of the ticks it wins (process id and a random
    /// id), to tell from Redis which engine fired a tick.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// One `SET key owner NX PX ttl`: `Ok(true)` if this engine set the key.
    async fn set_if_absent(&self, key: &str) -> Result<bool, LockAttemptError> {
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(REDIS_LOCK_TTL.as_millis() as u64);
        let mut redis = self.redis.clone();
        let mut answer = set.query_async::<redis::Value>(&mut redis).await;
        if matches!(&answer, Err(e) if e.is_unrecoverable_error()) {
            // The connection was dead (Redis restarted): the manager has started a new one, and
            // a second try on it saves this tick. Redis being down fails it just as fast.
            answer = set.query_async::<redis::Value>(&mut redis).await;
        }
        match answer {
            Ok(redis::Value::Okay) => Ok(true),
            Ok(redis::Value::Nil) => Ok(false),
            Ok(other) => Err(LockAttemptError::UnexpectedAnswer(format!("{other:?}"))),
            Err(e) => Err(LockAttemptError::Redis(e)),
        }
    }

    fn succeeded(&self) {
        let was_failing = lock_failing(&self.failing).take().is_some();
        if was_failing {
            let skipped = self.skipped_while_failing.swap(0, Ordering::Relaxed);
            info!(
                redis = %self.addr,
                skipped,
                "the cron lock in Redis at {} works again ({skipped} tick(s) were skipped)",
                self.addr
            );
        }
    }

    fn failed(&self, key: &str, error: &str) {
        self.skipped_while_failing.fetch_add(1, Ordering::Relaxed);
        let known = {
            let mut failing = lock_failing(&self.failing);
            let known = failing.as_deref() == Some(error);
            if !known {
                *failing = Some(error.to_owned());
            }
            known
        };
        if known {
            debug!(redis = %self.addr, key, "cron tick skipped, the cron lock still fails: {error}");
        } else {
            warn!(
                redis = %self.addr,
                key,
                "cannot take the cron lock in Redis at {}: {error}; this engine skips cron ticks \
                 until it can",
                self.addr
            );
        }
    }
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("addr", &self.addr)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn lock_failing(failing: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    failing.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Redis key of `job_id`'s tick at `tick`.
fn redis_lock_key(job_id: &str, tick: DateTime<Utc>) -> String {
    format!("fnmesh:cron:{job_id}:{}", tick.timestamp_millis())
}

impl CronLock for RedisLock {
    fn try_acquire(
        &self,
        job_id: &str,
        tick: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        let key = redis_lock_key(job_id, tick);
        Box::pin(async move {
            let answer = tokio::time::timeout(REDIS_ATTEMPT_TIMEOUT, self.set_if_absent(&key))
                .await
                .unwrap_or(Err(LockAttemptError::NoAnswer));
            match answer {
                Ok(won) => {
                    self.succeeded();
                    won
                }
                Err(error) => {
                    self.failed(&key, &error.to_string());
                    false
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::test_support::{sleep_ms, utc, Captured, JOB};
    use chrono::TimeDelta;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A stand-in for Redis speaking just enough RESP for the lock: `SET key value NX ...` answers
    /// `+OK` the first time a key is set and a null reply after; any other command (the client's
    /// `CLIENT SETINFO` on connecting) answers `+OK`. It records every command.
    #[derive(Clone, Default)]
    struct FakeRedis {
        commands: Arc<Mutex<Vec<Vec<String>>>>,
        keys: Arc<Mutex<HashMap<String, String>>>,
        /// Answers `SET` with an error while true, as a read-only replica does.
        read_only: Arc<AtomicBool>,
    }

    impl FakeRedis {
        /// Serves on a free loopback port; returns the `redis://` URL.
        async fn start(&self) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("redis://{}", listener.local_addr().unwrap());
            tokio::spawn(self.clone().serve(listener));
            url
        }

        async fn serve(self, listener: tokio::net::TcpListener) {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(self.clone().answer(socket));
            }
        }

        async fn answer(self, socket: tokio::net::TcpStream) {
            use tokio::io::AsyncWriteExt;
            let (read, mut write) = socket.into_split();
            let mut read = tokio::io::BufReader::new(read);
            while let Some(command) = read_command(&mut read).await {
                let set = command[0].eq_ignore_ascii_case("SET");
                let reply: &[u8] = if set && self.read_only.load(Ordering::SeqCst) {
                    b"-READONLY You can't write against a read only replica.\r\n"
                } else if set {
                    let mut keys = self.keys.lock().unwrap();
                    if keys.contains_key(&command[1]) {
                        b"$-1\r\n"
                    } else {
                        keys.insert(command[1].clone(), command[2].clone());
                        b"+OK\r\n"
                    }
                } else {
                    b"+OK\r\n"
                };
                self.commands.lock().unwrap().push(command);
                if write.write_all(reply).await.is_err() {
                    return;
                }
            }
        }

        fn sets(&self) -> Vec<Vec<String>> {
            let commands = self.commands.lock().unwrap();
            commands
                .iter()
                .filter(|c| c[0].eq_ignore_ascii_case("SET"))
                .cloned()
                .collect()
        }
    }

    /// One RESP command (an array of bulk strings); `None` at the end of the stream.
    async fn read_command(
        read: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    ) -> Option<Vec<String>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut line = String::new();
        if read.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let count: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            line.clear();
            read.read_line(&mut line).await.ok()?;
            let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
            let mut bytes = vec![0; len + 2];
            read.read_exact(&mut bytes).await.ok()?;
            bytes.truncate(len);
            args.push(String::from_utf8(bytes).ok()?);
        }
        (!args.is_empty()).then_some(args)
    }

    #[test]
    fn redis_lock_key_names_the_job_and_the_tick_in_unix_milliseconds() {
        assert_eq!(
            redis_lock_key("job-1", utc(2026, 3, 10, 12, 0, 1)),
            "fnmesh:cron:job-1:1773144001000"
        );
    }

    #[tokio::test]
    async fn redis_lock_refuses_what_is_not_a_redis_url() {
        for url in [
            "notaurl",
            "",
            "http://localhost:6379",
            "redis://localhost:6379/not-a-db",
            "rediss://localhost:6379",
        ] {
            let e = RedisLock::new(url).unwrap_err();
            assert!(matches!(e, crate::Error::InvalidArgument(_)), "{url}: {e}");
            assert!(e.to_string().contains("; expected redis://"), "{url}: {e}");
        }
        let e = RedisLock::new("rediss://localhost:6379").unwrap_err();
        assert!(
            e.to_string().contains("TLS (rediss://) is not built in"),
            "{e}"
        );
        let e = RedisLock::new("notaurl").unwrap_err();
        assert!(e.to_string().contains(": Redis URL did not parse; "), "{e}");
        let e = RedisLock::new("redis://:s3cret@localhost:6379/x").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn redis_lock_starts_without_reaching_redis() {
        for url in [
            "redis://127.0.0.1:1",
            "redis://user:pw@localhost/2",
            "redis+unix:///nowhere/redis.sock",
        ] {
            let lock = RedisLock::new(url).unwrap();
            assert!(!format!("{lock:?}").contains("pw"));
        }
    }

    #[tokio::test]
    async fn the_first_engine_to_set_a_ticks_key_wins_the_tick() {
        let redis = FakeRedis::default();
        let url = redis.start().await;
        let a = RedisLock::new(&url).unwrap();
        let b = RedisLock::new(&url).unwrap();
        assert_ne!(a.owner(), b.owner());
        let tick = utc(2026, 3, 10, 12, 0, 1);
        assert!(a.try_acquire(JOB, tick).await);
        assert!(!b.try_acquire(JOB, tick).await);
        assert!(!a.try_acquire(JOB, tick).await);
        // The next tick and another job are other keys.
        assert!(b.try_acquire(JOB, tick + TimeDelta::seconds(1)).await);
        assert!(b.try_acquire("job-2", tick).await);

        let sets = redis.sets();
        assert_eq!(sets.len(), 5, "{sets:?}");
        assert_eq!(
            sets[0],
            [
                "SET",
                "fnmesh:cron:job-1:1773144001000",
                a.owner(),
                "NX",
                "PX",
                "600000"
            ]
        );
        assert_eq!(sets[1][2], b.owner());
    }

    #[tokio::test]
    async fn a_failing_redis_skips_ticks_warns_once_per_cause_and_recovers() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.clone());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let lock = RedisLock::new(&format!("redis://127.0.0.1:{port}")).unwrap();
        let tick = utc(2026, 3, 10, 12, 0, 1);
        let mut second = 0;
        let mut next_tick = || {
            second += 1;
            tick + TimeDelta::seconds(second)
        };
        let mut skipped = 0;
        // Nothing listens on the port.
        for _ in 0..3 {
            assert!(!lock.try_acquire(JOB, next_tick()).await);
            skipped += 1;
        }
        let warnings = captured.lines(tracing::Level::WARN);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!(
                "cannot take the cron lock in Redis at 127.0.0.1:{port}"
            )),
            "{warnings:?}"
        );

        // A Redis comes up there but refuses writes: another cause, one more warning.
        let redis = FakeRedis::default();
        redis.read_only.store(true, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(redis.clone().serve(listener));
        while redis.sets().len() < 3 {
            assert!(!lock.try_acquire(JOB, next_tick()).await);
            skipped += 1;
            assert!(skipped < 10, "the lock did not reconnect");
            sleep_ms(20).await;
        }
        let warnings = captured.lines(tracing::Level::WARN);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[1].contains("read only replica"), "{warnings:?}");
        assert!(captured.lines(tracing::Level::INFO).is_empty());

        // It accepts writes again: the next tick is won, and that is logged once.
        redis.read_only.store(false, Ordering::SeqCst);
        assert!(lock.try_acquire(JOB, next_tick()).await);
        assert!(lock.try_acquire(JOB, next_tick()).await);
        assert_eq!(captured.lines(tracing::Level::WARN).len(), 2);
        let infos = captured.lines(tracing::Level::INFO);
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert!(infos[0].contains("works again"), "{infos:?}");
        assert!(
            infos[0].contains(&format!("skipped={skipped}")),
            "{infos:?}"
        );
    }
}
