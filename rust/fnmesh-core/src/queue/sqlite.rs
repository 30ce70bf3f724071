//! [`SqliteStore`]: the embedded default, every queue in one SQLite file that survives a restart.
//!
//! rusqlite is synchronous, so one dedicated thread owns the connection and runs the statements;
//! async callers send it jobs (closures) over a channel and await the answer on a oneshot, and the
//! tokio runtime never blocks on SQLite. The thread runs the jobs waiting at once in one
//! transaction (group commit), each in a savepoint of its own so a failing job undoes only its
//! own writes, and answers them after the commit. One connection also means no lock contention
//! between our own writers: `BEGIN IMMEDIATE` and the busy timeout only matter when another
//! process (or a store being closed) holds the file.
//!
//! The table `messages` holds every queued message; its column `available_at` (ms since the Unix
//! epoch) says when it can be claimed:
//! - waiting: the end of its enqueue or retry delay;
//! - claimed (`lease` set): the end of its visibility timeout, so a claim whose consumer died is
//!   simply claimable again, and one indexed range query on `(queue, available_at)` finds both
//!   new and timed-out messages, oldest first;
//! - a fifo message behind its group's head: `BLOCKED`, never claimable, until the head is
//!   acked or dead and the next one is given its own `not_before`.
//!
//! Dead letters live in `dead_letters`, idempotency keys in `idempotency` (expired ones purged
//! lazily, at most once a minute).

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::{
    now_ms, DeadLetter, Delivery, Enqueued, Nack, NewMessage, QueueConfig, QueueKind, QueueStats,
    QueueStore, StoreError, StoreResult,
};
use crate::config::SqliteSynchronous;
use crate::protocol::ErrorBody;

/// The schema this code writes (`PRAGMA user_version`); a file with a later version was written
/// by a newer fnmesh and is refused.
const SCHEMA_VERSION: i32 = 2;

/// `available_at` of a fifo message waiting behind its group's head.
const BLOCKED: i64 = i64::MAX;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening waits for the file's lock: another engine holds it until it stops, so there
/// is no point waiting long.
const OPEN_LOCK_WAIT: Duration = Duration::from_millis(250);

/// Expired idempotency keys are deleted at most this often (ms); lookups ignore them meanwhile.
const IDEMPOTENCY_PURGE_EVERY_MS: i64 = 60_000;

const SCHEMA_V1: &str = "
CREATE TABLE messages (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    queue        TEXT NOT NULL,
    function_id  TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    data         TEXT NOT NULL,
    traceparent  TEXT,
    baggage      TEXT,
    grp          TEXT,
    fifo         INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    enqueued_at  INTEGER NOT NULL,
    not_before   INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    lease        TEXT
);
CREATE INDEX messages_claim ON messages (queue, available_at);
CREATE INDEX messages_group ON messages (queue, grp) WHERE grp IS NOT NULL;
CREATE TABLE dead_letters (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    queue            TEXT NOT NULL,
    function_id      TEXT NOT NULL,
    namespace        TEXT NOT NULL,
    data             TEXT NOT NULL,
    traceparent      TEXT,
    baggage          TEXT,
    grp              TEXT,
    fifo             INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    enqueued_at      INTEGER NOT NULL,
    failed_at        INTEGER NOT NULL,
    error_code       TEXT NOT NULL,
    error_message    TEXT NOT NULL,
    error_stacktrace TEXT
);
CREATE INDEX dead_letters_queue ON dead_letters (queue);
CREATE TABLE idempotency (
    queue      TEXT NOT NULL,
    key        TEXT NOT NULL,
    id         TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
";

/// Version 2: `messages.releases` counts the claims given back without an attempt
/// ([`Nack::Release`]), and a dead letter's id is unique within its queue only, so a receipt id
/// reused in another queue can be buried too.
const SCHEMA_V2: &str = "
ALTER TABLE messages ADD COLUMN releases INTEGER NOT NULL DEFAULT 0;
CREATE TABLE dead_letters_v2 (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL,
    queue            TEXT NOT NULL,
    function_id      TEXT NOT NULL,
    namespace        TEXT NOT NULL,
    data             TEXT NOT NULL,
    traceparent      TEXT,
    baggage          TEXT,
    grp              TEXT,
    fifo             INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    enqueued_at      INTEGER NOT NULL,
    failed_at        INTEGER NOT NULL,
    error_code       TEXT NOT NULL,
    error_message    TEXT NOT NULL,
    error_stacktrace TEXT,
    UNIQUE (queue, id)
);
INSERT INTO dead_letters_v2 SELECT * FROM dead_letters;
DROP TABLE dead_letters;
ALTER TABLE dead_letters_v2 RENAME TO dead_letters;
CREATE INDEX dead_letters_queue ON dead_letters (queue);
";

/// The statements, together so a test can check that each one uses an index.
mod sql {
    pub(super) const GROUP_BUSY: &str =
        "SELECT 1 FROM messages WHERE queue = ?1 AND grp = ?2 LIMIT 1";
    pub(super) const ADVANCE_GROUP: &str = "
        UPDATE messages SET available_at = not_before
        WHERE seq = (SELECT seq FROM messages WHERE queue = ?1 AND grp = ?2 ORDER BY seq LIMIT 1)
          AND available_at = ?3";
    pub(super) const REMOVE_CLAIMED: &str =
        "DELETE FROM messages WHERE id = ?1 AND lease = ?2 RETURNING queue, grp, fifo";
    pub(super) const PURGE_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE expires_at <= ?1";
    pub(super) const FIND_IDEMPOTENCY: &str =
        "SELECT id FROM idempotency WHERE queue = ?1 AND key = ?2 AND expires_at > ?3";
    pub(super) const KEEP_IDEMPOTENCY: &str =
        "INSERT OR REPLACE INTO idempotency (queue, key, id, expires_at) VALUES (?1, ?2, ?3, ?4)";
    pub(super) const ENQUEUE: &str = "
        INSERT INTO messages (id, queue, function_id, namespace, data, traceparent, baggage, grp,
                              fifo, attempts, enqueued_at, not_before, available_at, lease)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, ?11, ?12, NULL)";
    pub(super) const CLAIMABLE: &str = "
        SELECT seq, id, function_id, namespace, data, traceparent, baggage, grp, attempts,
               enqueued_at, releases
        FROM messages WHERE queue = ?1 AND available_at <= ?2
        ORDER BY available_at, seq LIMIT ?3";
    pub(super) const CLAIM: &str =
        "UPDATE messages SET attempts = ?2, lease = ?3, available_at = ?4 WHERE seq = ?1";
    pub(super) const RETRY: &str =
        "UPDATE messages SET lease = NULL, available_at = ?3 WHERE id = ?1 AND lease = ?2";
    pub(super) const RELEASE: &str = "
        UPDATE messages SET lease = NULL, available_at = ?3, attempts = MAX(attempts - 1, 0),
                            releases = releases + 1
        WHERE id = ?1 AND lease = ?2";
    pub(super) const PARK: &str = "
        UPDATE messages SET lease = NULL, available_at = ?3, attempts = MAX(attempts - 1, 0)
        WHERE id = ?1 AND lease = ?2";
    pub(super) const EXTEND: &str =
        "UPDATE messages SET available_at = ?3 WHERE id = ?1 AND lease = ?2";
    /// `OR REPLACE`: a receipt id chosen by the caller may be buried again after a redrive or
    /// an enqueue that reused it; the newer death replaces the older dead letter instead of
    /// failing on the unique id (which left the message to run again forever).
    pub(super) const BURY: &str = "
        INSERT OR REPLACE INTO dead_letters (id, queue, function_id, namespace, data,
                                             traceparent, baggage, grp, fifo, attempts,
                                             enqueued_at, failed_at, error_code, error_message,
                                             error_stacktrace)
        SELECT id, queue, function_id, namespace, data, traceparent, baggage, grp, fifo,
               attempts, enqueued_at, ?3, ?4, ?5, ?6
        FROM messages WHERE id = ?1 AND lease = ?2";
    /// Scans the table: run once, when an engine starts.
    pub(super) const RELEASE_ALL: &str =
        "UPDATE messages SET lease = NULL, available_at = 0 WHERE lease IS NOT NULL";
    pub(super) const STATS: &str = "
        SELECT COUNT(*),
               COALESCE(SUM(available_at <= ?2 OR (available_at = ?3 AND not_before <= ?2)), 0),
               COALESCE(SUM(lease IS NOT NULL AND available_at > ?2), 0)
        FROM messages WHERE queue = ?1";
    pub(super) const STATS_DEAD: &str = "SELECT COUNT(*) FROM dead_letters WHERE queue = ?1";
    pub(super) const NEXT_QUEUE: &str =
        "SELECT queue FROM messages WHERE queue > ?1 ORDER BY queue LIMIT 1";
    pub(super) const NEXT_DEAD_QUEUE: &str =
        "SELECT queue FROM dead_letters WHERE queue > ?1 ORDER BY queue LIMIT 1";
    pub(super) const DEAD_LETTERS: &str = "
        SELECT id, function_id, namespace, data, grp, attempts, error_code, error_message,
               error_stacktrace, enqueued_at, failed_at
        FROM dead_letters WHERE queue = ?1 ORDER BY seq LIMIT ?2 OFFSET ?3";
    pub(super) const DEAD_ONE: &str =
        "SELECT seq, grp, fifo FROM dead_letters WHERE queue = ?1 AND id = ?2";
    /// `?2` is NULL: the same parameters as `DEAD_ONE`.
    pub(super) const DEAD_ALL: &str =
        "SELECT seq, grp, fifo FROM dead_letters WHERE queue = ?1 AND ?2 IS NULL ORDER BY seq";
    pub(super) const REDRIVE: &str = "
        INSERT INTO messages (id, queue, function_id, namespace, data, traceparent, baggage, grp,
                              fifo, attempts, enqueued_at, not_before, available_at, lease)
        SELECT id, queue, function_id, namespace, data, traceparent, baggage, grp, fifo,
               0, enqueued_at, ?2, ?3, NULL
        FROM dead_letters WHERE seq = ?1";
    pub(super) const DROP_DEAD: &str = "DELETE FROM dead_letters WHERE seq = ?1";
    pub(super) const DISCARD: &str = "DELETE FROM dead_letters WHERE queue = ?1 AND id = ?2";

    /// Every statement but `RELEASE_ALL`, for the query-plan test.
    #[cfg(test)]
    pub(super) const INDEXED: &[&str] = &[
        GROUP_BUSY,
        ADVANCE_GROUP,
        REMOVE_CLAIMED,
        PURGE_IDEMPOTENCY,
        FIND_IDEMPOTENCY,
        KEEP_IDEMPOTENCY,
        ENQUEUE,
        CLAIMABLE,
        CLAIM,
        RETRY,
        RELEASE,
        EXTEND,
        BURY,
        STATS,
        STATS_DEAD,
        NEXT_QUEUE,
        NEXT_DEAD_QUEUE,
        DEAD_LETTERS,
        DEAD_ONE,
        DEAD_ALL,
        REDRIVE,
        DROP_DEAD,
        DISCARD,
    ];
}

/// A queue store in one SQLite file (WAL mode), for an engine that owns the file alone.
///
/// Dropping the store lets its thread finish the statements already sent, then close the file;
/// [`SqliteStore::close`] does the same and waits for it.
#[derive(Debug)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Command>,
    path: PathBuf,
}

/// Runs a job's statements and answers how to reply once its transaction is settled.
type Job = Box<dyn FnOnce(&mut Db) -> Reply + Send>;

/// Sends a job's answer: its result if its transaction committed, else the commit's error.
type Reply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// Jobs run in one transaction at most.
const MAX_BATCH: usize = 64;

enum Command {
    Run(Job),
    Close(oneshot::Sender<StoreResult<()>>),
}

/// What the store's thread owns.
struct Db {
    conn: Connection,
    next_purge_ms: i64,
}

fn db_error(e: rusqlite::Error) -> StoreError {
    StoreError::new(format_args!("sqlite: {e}"))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the store at `path` and starts its
    /// thread, syncing every commit (`synchronous = full`). Blocks for file I/O: call it off
    /// the async runtime (`spawn_blocking`). A file held by another engine fails at once (after
    /// a 250 ms wait for its lock) with [`StoreError::InUse`].
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        SqliteStore::open_with(path, SqliteSynchronous::Full)
    }

    /// [`SqliteStore::open`] with the sync mode `synchronous`.
    pub fn open_with(path: impl AsRef<Path>, synchronous: SqliteSynchronous) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::new(format_args!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut conn = Connection::open(&path)
            .map_err(|e| StoreError::new(format_args!("cannot open {}: {e}", path.display())))?;
        let in_use = |e: StoreError| {
            if e.message().contains("locked") || e.message().contains("busy") {
                StoreError::InUse(format!(
                    "{} is in use by another engine (an SQLite queue file serves one engine; \
                     share queues between engines with queue_backend = \"redis\")",
                    path.display()
                ))
            } else {
                e
            }
        };
        configure(&conn, synchronous)
            .map_err(db_error)
            .map_err(in_use)?;
        migrate(&mut conn).map_err(in_use)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        let (jobs, inbox) = mpsc::channel();
        let db = Db {
            conn,
            next_purge_ms: 0,
        };
        std::thread::Builder::new()
            .name("fnmesh-sqlite".into())
            .spawn(move || serve(db, inbox))
            .map_err(|e| StoreError::new(format_args!("cannot start the sqlite thread: {e}")))?;
        Ok(SqliteStore { jobs, path })
    }

    /// The file this store keeps its queues in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the statements already sent, then closes the file (checkpointing the WAL into it).
    pub async fn close(self) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Command::Close(reply))
            .map_err(|_| StoreError::new("sqlite store already closed"))?;
        answer
            .await
            .map_err(|_| StoreError::new("sqlite store thread stopped"))?
    }

    /// Runs `job` on the store's thread and answers its result.
    fn run<T, F>(&self, job: F) -> BoxFuture<'_, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> rusqlite::Result<T> + Send + 'static,
    {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let job: Job = Box::new(move |db| {
                let result = job(db).map_err(db_error);
                Box::new(move |committed: Result<(), &StoreError>| {
                    let _ = reply.send(match committed {
                        Ok(()) => result,
                        Err(e) => Err(e.clone()),
                    });
                })
            });
            self.jobs
                .send(Command::Run(job))
                .map_err(|_| StoreError::new("sqlite store closed"))?;
            answer
                .await
                .map_err(|_| StoreError::new("sqlite store thread failed"))?
        })
    }
}

fn configure(conn: &Connection, synchronous: SqliteSynchronous) -> rusqlite::Result<()> {
    // Until the migration has taken the file's lock (`open` then sets `BUSY_TIMEOUT`).
    conn.busy_timeout(OPEN_LOCK_WAIT)?;
    // One engine per file: the first write (the migration, at open) takes an exclusive lock that
    // is held until the store closes, so a second engine on the same file fails to open instead
    // of releasing the first one's claims and delivering its messages twice.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Some file systems (network mounts) cannot do WAL; SQLite then keeps a rollback journal,
        // slower but just as durable.
        tracing::warn!(journal_mode = %mode, "queue store: WAL unavailable");
    }
    // NOTE: `full` (the default, setting `queue_sqlite_synchronous`) syncs each commit, so an
    // acknowledged enqueue survives a power cut; in WAL mode `normal` syncs only at checkpoints
    // (a power cut can lose the last commits, never corrupts the file; a process crash loses
    // nothing). Measured with `sqlite_throughput` (tests/queue_store.rs, release, 2-core VM,
    // ext4, shared machine): enqueue one at a time 187 µs full vs 84 µs normal, 16 producers
    // 69 vs 51 µs (group commit shares the fsync), claim(10) + acks at once 108 vs 46 µs per
    // message. End to end (E7 quick) the two were within the run-to-run noise.
    conn.pragma_update(None, "synchronous", synchronous.as_str())?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let version: i32 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::new(format_args!(
            "queue file has schema version {version}, newer than this fnmesh's {SCHEMA_VERSION}"
        )));
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(db_error)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2).map_err(db_error)?;
    }
    // Later versions: `if version < 3 { ALTER ... }`, each step in this same transaction.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db_error)?;
    tx.commit().map_err(db_error)
}

fn serve(mut db: Db, inbox: mpsc::Receiver<Command>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    while let Ok(first) = inbox.recv() {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Run(job) => batch.push(job),
                Command::Close(reply) => closing = Some(reply),
            }
            if closing.is_none() && batch.len() < MAX_BATCH {
                next = inbox.try_recv().ok();
            }
        }
        run_batch(&mut db, &mut batch);
        if closing.is_some() {
            break;
        }
    }
    let closed = db.conn.close().map_err(|(_, e)| db_error(e));
    if let Some(reply) = closing {
        let _ = reply.send(closed);
    }
}

// NOTE: group commit. A commit costs about 20 µs more than the statements in it (WAL,
// synchronous=NORMAL, 2-core VM, ext4), as much as a small job itself. One transaction for all
// the jobs waiting took 16 concurrent producers from 88 to 25-27 µs per enqueue, and a claim of
// 10 whose acks arrive together (as the engine's consumers settle) to 45-55 µs per message,
// against 108-119 µs acking one after another. A lone caller still pays ~55-75 µs per call,
// half of it the hop to this thread and back (`sqlite_throughput`, tests/queue_store.rs).
fn run_batch(db: &mut Db, jobs: &mut Vec<Job>) {
    // Without the outer transaction (another process holds the write lock past the busy
    // timeout), each job's savepoint is a transaction of its own.
    let mut outer = db.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    let mut pending: Vec<Reply> = Vec::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        // A panicking job (a bug) rolls back its savepoint as it unwinds and drops its reply, so
        // its caller gets an error; the others go on.
        let Ok(reply) = catch_unwind(AssertUnwindSafe(|| job(db))) else {
            continue;
        };
        if !outer {
            reply(Ok(()));
        } else if db.conn.is_autocommit() {
            // Some errors (disk full, I/O) make SQLite roll the whole transaction back: the jobs
            // so far are undone; the rest run on their own.
            let lost = StoreError::new("sqlite rolled back the transaction after an error");
            for reply in pending.drain(..) {
                reply(Err(&lost));
            }
            reply(Err(&lost));
            outer = false;
        } else {
            pending.push(reply);
        }
    }
    if outer {
        let committed = db.conn.execute_batch("COMMIT").map_err(db_error);
        if committed.is_err() && !db.conn.is_autocommit() {
            let _ = db.conn.execute_batch("ROLLBACK");
        }
        for reply in pending {
            reply(committed.as_ref().map(|_| ()));
        }
    }
}

/// Whether `group` of `queue` has a message (so a new one queues behind it).
fn group_busy(tx: &Connection, queue: &str, group: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached(sql::GROUP_BUSY)?
        .query_row(params![queue, group], |_| Ok(()))
        .optional()
        .map(|row| row.is_some())
}

/// A fifo head left: the next message of its group becomes claimable from its own `not_before`.
fn advance_group(tx: &Connection, queue: &str, group: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(sql::ADVANCE_GROUP)?
        .execute(params![queue, group, BLOCKED])?;
    Ok(())
}

/// Deletes the claimed message `id` if `lease` is its lease, and unblocks its fifo group.
fn remove_claimed(tx: &Connection, id: &str, lease: &str) -> rusqlite::Result<bool> {
    let removed: Option<(String, Option<String>, bool)> = tx
        .prepare_cached(sql::REMOVE_CLAIMED)?
        .query_row(params![id, lease], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    match removed {
        None => Ok(false),
        Some((queue, group, fifo)) => {
            if let (true, Some(group)) = (fifo, group) {
                advance_group(tx, &queue, &group)?;
            }
            Ok(true)
        }
    }
}

fn enqueue(db: &mut Db, m: NewMessage, fifo: bool, window_ms: i64) -> rusqlite::Result<Enqueued> {
    let now = now();
    let purge = now >= db.next_purge_ms;
    let tx = db.conn.savepoint()?;
    if purge {
        tx.prepare_cached(sql::PURGE_IDEMPOTENCY)?.execute([now])?;
    }
    if let Some(key) = &m.idempotency_key {
        let first: Option<String> = tx
            .prepare_cached(sql::FIND_IDEMPOTENCY)?
            .query_row(params![m.queue, key, now], |r| r.get(0))
            .optional()?;
        if let Some(first) = first {
            tx.commit()?;
            if purge {
                db.next_purge_ms = now.saturating_add(IDEMPOTENCY_PURGE_EVERY_MS);
            }
            return Ok(Enqueued::Duplicate(first));
        }
        tx.prepare_cached(sql::KEEP_IDEMPOTENCY)?.execute(params![
            m.queue,
            key,
            m.id,
            now.saturating_add(window_ms)
        ])?;
    }
    let not_before = now.saturating_add(ms(m.delay));
    let available_at = match (&m.group, fifo) {
        (Some(group), true) if group_busy(&tx, &m.queue, group)? => BLOCKED,
        _ => not_before,
    };
    tx.prepare_cached(sql::ENQUEUE)?.execute(params![
        m.id,
        m.queue,
        m.function_id,
        m.namespace,
        m.data,
        m.traceparent,
        m.baggage,
        m.group,
        fifo,
        now,
        not_before,
        available_at,
    ])?;
    tx.commit()?;
    if purge {
        db.next_purge_ms = now.saturating_add(IDEMPOTENCY_PURGE_EVERY_MS);
    }
    Ok(Enqueued::Stored(m.id))
}

fn claim(
    db: &mut Db,
    queue: &str,
    max: i64,
    visibility_ms: i64,
) -> rusqlite::Result<Vec<Delivery>> {
    let now = now();
    // At least 1 ms, so a message claimed now is not claimable again at this same instant.
    let deadline = now.saturating_add(visibility_ms.max(1));
    // One random part per claim; the row's seq makes each message's lease unique.
    let batch = uuid::Uuid::new_v4().simple().to_string();
    let tx = db.conn.savepoint()?;
    let mut claimed = Vec::new();
    {
        let mut select = tx.prepare_cached(sql::CLAIMABLE)?;
        let rows = select.query_map(params![queue, now, max], |r| {
            let seq: i64 = r.get(0)?;
            let attempts: u32 = r.get(8)?;
            let enqueued_at: i64 = r.get(9)?;
            let releases: u32 = r.get(10)?;
            Ok((
                seq,
                Delivery {
                    id: r.get(1)?,
                    queue: queue.to_owned(),
                    function_id: r.get(2)?,
                    namespace: r.get(3)?,
                    data: r.get(4)?,
                    traceparent: r.get(5)?,
                    baggage: r.get(6)?,
                    group: r.get(7)?,
                    attempt: attempts.saturating_add(1),
                    releases,
                    enqueued_at_ms: u64::try_from(enqueued_at).unwrap_or(0),
                    lease: format!("{batch}.{seq}"),
                },
            ))
        })?;
        for row in rows {
            claimed.push(row?);
        }
    }
    {
        let mut update = tx.prepare_cached(sql::CLAIM)?;
        for (seq, delivery) in &claimed {
            update.execute(params![seq, delivery.attempt, delivery.lease, deadline])?;
        }
    }
    tx.commit()?;
    Ok(claimed.into_iter().map(|(_, d)| d).collect())
}

fn ack(db: &mut Db, id: &str, lease: &str) -> rusqlite::Result<bool> {
    let tx = db.conn.savepoint()?;
    let removed = remove_claimed(&tx, id, lease)?;
    tx.commit()?;
    Ok(removed)
}

/// Ends a claim with the message claimable again after `delay_ms`; `statement` is
/// [`sql::RETRY`] (the attempt counts), [`sql::RELEASE`] or [`sql::PARK`].
fn retry(
    db: &mut Db,
    id: &str,
    lease: &str,
    delay_ms: i64,
    statement: &str,
) -> rusqlite::Result<bool> {
    let changed = db.conn.prepare_cached(statement)?.execute(params![
        id,
        lease,
        now().saturating_add(delay_ms)
    ])?;
    Ok(changed == 1)
}

fn extend(db: &mut Db, id: &str, lease: &str, visibility_ms: i64) -> rusqlite::Result<bool> {
    let deadline = now().saturating_add(visibility_ms.max(1));
    let changed = db
        .conn
        .prepare_cached(sql::EXTEND)?
        .execute(params![id, lease, deadline])?;
    Ok(changed == 1)
}

fn bury(db: &mut Db, id: &str, lease: &str, error: &ErrorBody) -> rusqlite::Result<bool> {
    let tx = db.conn.savepoint()?;
    let copied = tx.prepare_cached(sql::BURY)?.execute(params![
        id,
        lease,
        now(),
        error.code,
        error.message,
        error.stacktrace
    ])?;
    if copied == 0 {
        return Ok(false);
    }
    remove_claimed(&tx, id, lease)?;
    tx.commit()?;
    Ok(true)
}

fn release_all(db: &mut Db) -> rusqlite::Result<u64> {
    // Time 0: before anything else, in enqueue order.
    let released = db.conn.prepare_cached(sql::RELEASE_ALL)?.execute([])?;
    Ok(released as u64)
}

fn stats(db: &mut Db, queue: &str) -> rusqlite::Result<QueueStats> {
    let now = now();
    let (total, ready, in_flight): (i64, i64, i64) = db
        .conn
        .prepare_cached(sql::STATS)?
        .query_row(params![queue, now, BLOCKED], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let dead: i64 = db
        .conn
        .prepare_cached(sql::STATS_DEAD)?
        .query_row([queue], |r| r.get(0))?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(QueueStats {
        ready: count(ready),
        delayed: count(total - ready - in_flight),
        in_flight: count(in_flight),
        dead: count(dead),
    })
}

fn queues(db: &mut Db) -> rusqlite::Result<Vec<String>> {
    let mut names = BTreeSet::new();
    // Hop from one queue name to the next along each table's queue index: a few lookups per
    // queue instead of a scan of every message.
    for sql in [sql::NEXT_QUEUE, sql::NEXT_DEAD_QUEUE] {
        let mut next = db.conn.prepare_cached(sql)?;
        let mut after = String::new();
        while let Some(name) = next
            .query_row([&after], |r| r.get::<_, String>(0))
            .optional()?
        {
            names.insert(name.clone());
            after = name;
        }
    }
    Ok(names.into_iter().collect())
}

fn dead_letters(
    db: &mut Db,
    queue: &str,
    offset: i64,
    limit: i64,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut select = db.conn.prepare_cached(sql::DEAD_LETTERS)?;
    let rows = select.query_map(params![queue, limit, offset], |r| {
        let enqueued_at: i64 = r.get(9)?;
        let failed_at: i64 = r.get(10)?;
        Ok(DeadLetter {
            id: r.get(0)?,
            queue: queue.to_owned(),
            function_id: r.get(1)?,
            namespace: r.get(2)?,
            data: r.get(3)?,
            group: r.get(4)?,
            attempts: r.get(5)?,
            error: ErrorBody {
                code: r.get(6)?,
                message: r.get(7)?,
                stacktrace: r.get(8)?,
            },
            enqueued_at_ms: u64::try_from(enqueued_at).unwrap_or(0),
            failed_at_ms: u64::try_from(failed_at).unwrap_or(0),
        })
    })?;
    rows.collect()
}

fn redrive(db: &mut Db, queue: &str, id: Option<&str>) -> rusqlite::Result<u64> {
    let now = now();
    let tx = db.conn.savepoint()?;
    let dead: Vec<(i64, Option<String>, bool)> = {
        let mut select = match id {
            Some(_) => tx.prepare_cached(sql::DEAD_ONE)?,
            None => tx.prepare_cached(sql::DEAD_ALL)?,
        };
        let rows = select.query_map(params![queue, id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut moved = 0;
    for (seq, group, fifo) in dead {
        let available_at = match (group, fifo) {
            (Some(group), true) if group_busy(&tx, queue, &group)? => BLOCKED,
            _ => now,
        };
        // A fresh message at the back of the queue (and of its fifo group).
        moved += tx
            .prepare_cached(sql::REDRIVE)?
            .execute(params![seq, now, available_at])? as u64;
        tx.prepare_cached(sql::DROP_DEAD)?.execute([seq])?;
    }
    tx.commit()?;
    Ok(moved)
}

fn discard(db: &mut Db, queue: &str, id: &str) -> rusqlite::Result<bool> {
    let deleted = db.conn.prepare_cached(sql::DISCARD)?.execute([queue, id])?;
    Ok(deleted == 1)
}

fn refused<T: Send + 'static>(message: String) -> BoxFuture<'static, StoreResult<T>> {
    Box::pin(std::future::ready(Err(StoreError::Failed(message))))
}

impl QueueStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn enqueue(
        &self,
        message: NewMessage,
        config: &QueueConfig,
    ) -> BoxFuture<'_, StoreResult<Enqueued>> {
        if message.queue != config.name {
            return refused(format!(
                "message for queue '{}' enqueued with the config of '{}'",
                message.queue, config.name
            ));
        }
        let fifo = matches!(config.kind, QueueKind::Fifo { .. });
        if fifo && message.group.is_none() {
            return refused(format!(
                "fifo queue '{}' needs a message group",
                config.name
            ));
        }
        let window = ms(config.idempotency_window);
        self.run(move |db| enqueue(db, message, fifo, window))
    }

    fn claim(&self, config: &QueueConfig, max: usize) -> BoxFuture<'_, StoreResult<Vec<Delivery>>> {
        if max == 0 {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        let queue = config.name.clone();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let visibility = ms(config.visibility_timeout);
        self.run(move |db| claim(db, &queue, max, visibility))
    }

    fn ack(&self, delivery: &Delivery) -> BoxFuture<'_, StoreResult<bool>> {
        let (id, lease) = (delivery.id.clone(), delivery.lease.clone());
        self.run(move |db| ack(db, &id, &lease))
    }

    fn nack(
        &self,
        delivery: &Delivery,
        error: &ErrorBody,
        how: Nack,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        let (id, lease) = (delivery.id.clone(), delivery.lease.clone());
        match how {
            Nack::Retry(delay) => {
                let delay = ms(delay);
                self.run(move |db| retry(db, &id, &lease, delay, sql::RETRY))
            }
            Nack::Release(delay) => {
                let delay = ms(delay);
                self.run(move |db| retry(db, &id, &lease, delay, sql::RELEASE))
            }
            Nack::Park(delay) => {
                let delay = ms(delay);
                self.run(move |db| retry(db, &id, &lease, delay, sql::PARK))
            }
            Nack::Dead => {
                let error = error.clone();
                self.run(move |db| bury(db, &id, &lease, &error))
            }
        }
    }

    fn extend(
        &self,
        delivery: &Delivery,
        visibility_timeout: Duration,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        let (id, lease) = (delivery.id.clone(), delivery.lease.clone());
        let visibility = ms(visibility_timeout);
        self.run(move |db| extend(db, &id, &lease, visibility))
    }

    fn release_all(&self) -> BoxFuture<'_, StoreResult<u64>> {
        self.run(release_all)
    }

    fn stats(&self, queue: &str) -> BoxFuture<'_, StoreResult<QueueStats>> {
        let queue = queue.to_owned();
        self.run(move |db| stats(db, &queue))
    }

    fn queues(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.run(queues)
    }

    fn dead_letters(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<DeadLetter>>> {
        let queue = queue.to_owned();
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |db| dead_letters(db, &queue, offset, limit))
    }

    fn redrive(&self, queue: &str, id: Option<&str>) -> BoxFuture<'_, StoreResult<u64>> {
        let queue = queue.to_owned();
        let id = id.map(str::to_owned);
        self.run(move |db| redrive(db, &queue, id.as_deref()))
    }

    fn discard(&self, queue: &str, id: &str) -> BoxFuture<'_, StoreResult<bool>> {
        let (queue, id) = (queue.to_owned(), id.to_owned());
        self.run(move |db| discard(db, &queue, &id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1 file keeps its messages and dead letters through the migration to version 2,
    /// its messages with no releases counted.
    #[test]
    fn version_1_files_are_migrated() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(
            "INSERT INTO messages (id, queue, function_id, namespace, data, fifo, attempts,
                                   enqueued_at, not_before, available_at)
             VALUES ('m1', 'q', 'f', 'default', '{}', 0, 1, 1, 1, 1);
             INSERT INTO dead_letters (id, queue, function_id, namespace, data, fifo, attempts,
                                       enqueued_at, failed_at, error_code, error_message)
             VALUES ('d1', 'q', 'f', 'default', '{}', 0, 4, 1, 2, 'boom', 'it broke');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let releases: i64 = conn
            .query_row("SELECT releases FROM messages WHERE id = 'm1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(releases, 0);
        let dead: (String, i64) = conn
            .query_row("SELECT error_code, attempts FROM dead_letters", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(dead, ("boom".to_owned(), 4));
    }

    /// No statement on the hot path scans a table or sorts: each finds its rows through an index,
    /// so a claim, an ack or a lookup costs the same with a million messages queued.
    #[test]
    fn statements_use_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        for statement in sql::INDEXED {
            let mut explain = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
                .unwrap();
            let nulls = vec![rusqlite::types::Null; explain.parameter_count()];
            let plan: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for step in &plan {
                assert!(
                    !step.starts_with("SCAN") && !step.contains("TEMP B-TREE"),
                    "{statement}\n{plan:#?}"
                );
            }
        }
    }
}
