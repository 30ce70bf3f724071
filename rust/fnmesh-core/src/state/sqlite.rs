//! [`SqliteStateStore`]: the embedded default, every scope in one SQLite file that survives a
//! restart with every value kept.
//!
//! The same approach as the queue file (`queue/sqlite.rs`): rusqlite is synchronous, so one
//! thread owns the connection; async callers send it jobs over a channel and await the answer on
//! a oneshot, and the tokio runtime never blocks on SQLite. The thread runs the jobs waiting at
//! once in one transaction (group commit, an fsync per commit shared by all of them), answers
//! them after the commit, and emits their change events in job order, so the `state` trigger
//! sees the writes in the order they happened. One connection runs every read-modify-write of
//! `update`, so concurrent updates of one key are applied one after the other.
//!
//! The file is opened in SQLite's normal locking mode: another engine may open the same file
//! (each write takes the file's write lock, so updates stay atomic across processes too), but
//! only the engine that made a change fires its triggers; share state and its triggers between
//! engines with the Redis backend.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{ops, EventSink, StateError, StateEvent, StateResult, StateStore, UpdateOp, Updated};

/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i32 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS state (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
";

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Jobs run in one transaction at most.
const MAX_BATCH: usize = 64;

mod sql {
    pub(super) const GET: &str = "SELECT value FROM state WHERE scope = ?1 AND key = ?2";
    pub(super) const PUT: &str =
        "INSERT OR REPLACE INTO state (scope, key, value) VALUES (?1, ?2, ?3)";
    pub(super) const DELETE: &str = "DELETE FROM state WHERE scope = ?1 AND key = ?2";
    pub(super) const LIST: &str = "SELECT value FROM state WHERE scope = ?1 ORDER BY key";
    pub(super) const NEXT_SCOPE: &str =
        "SELECT scope FROM state WHERE scope > ?1 ORDER BY scope LIMIT 1";
}

/// Sends a job's answer: its result if its transaction committed, else the commit's error.
type Reply = Box<dyn FnOnce(Result<(), &StateError>) + Send>;

/// What a job answers once its transaction is settled, and the change it made.
struct Done {
    /// The job's statements succeeded (else its savepoint is rolled back).
    ok: bool,
    reply: Reply,
    event: Option<StateEvent>,
}

type Job = Box<dyn FnOnce(&Connection) -> Done + Send>;

enum Command {
    Run(Job),
    Close(oneshot::Sender<()>),
}

/// State in one SQLite file (WAL).
#[derive(Debug)]
pub struct SqliteStateStore {
    jobs: mpsc::Sender<Command>,
    path: PathBuf,
}

fn db_error(e: rusqlite::Error) -> StateError {
    StateError::store(format_args!("sqlite: {e}"))
}

fn parse(text: &str) -> rusqlite::Result<Value> {
    serde_json::from_str(text).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

impl SqliteStateStore {
    /// Opens (creating it and its directory if needed) the file at `path` and starts the
    /// store's thread; change events go to `events`. Blocks for file I/O: call it off the async
    /// runtime (`spawn_blocking`).
    pub fn open(path: impl AsRef<Path>, events: EventSink) -> StateResult<SqliteStateStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StateError::store(format_args!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(&path)
            .map_err(|e| StateError::store(format_args!("cannot open {}: {e}", path.display())))?;
        configure(&conn)?;
        let (jobs, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("fnmesh-state".into())
            .spawn(move || serve(conn, inbox, events))
            .map_err(|e| StateError::store(format_args!("cannot start the state thread: {e}")))?;
        Ok(SqliteStateStore { jobs, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the statements already sent, then closes the file.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.jobs.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }

    /// Runs `job` on the store's thread; it answers its result and the change it made.
    fn run<T, F>(&self, job: F) -> BoxFuture<'static, StateResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<(T, Option<StateEvent>)> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let (result, event) = match job(conn) {
                Ok((value, event)) => (Ok(value), event),
                Err(e) => (Err(db_error(e)), None),
            };
            Done {
                ok: result.is_ok(),
                reply: Box::new(move |committed| {
                    let _ = reply.send(match committed {
                        Ok(()) => result,
                        Err(e) => Err(e.clone()),
                    });
                }),
                event,
            }
        });
        let sent = self.jobs.send(Command::Run(job));
        Box::pin(async move {
            sent.map_err(|_| StateError::store("state store closed"))?;
            answer
                .await
                .map_err(|_| StateError::store("state store thread failed"))?
        })
    }
}

fn configure(conn: &Connection) -> StateResult<()> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(db_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "state store: WAL unavailable");
    }
    // An fsync per commit, as the queue file's default: an acknowledged write survives a power
    // cut. Group commit shares it among the writes waiting at once.
    conn.pragma_update(None, "synchronous", "full")
        .map_err(db_error)?;
    conn.set_prepared_statement_cache_capacity(16);
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_error)?;
    if version > SCHEMA_VERSION {
        return Err(StateError::store(format_args!(
            "state file has schema version {version}, newer than this fnmesh's {SCHEMA_VERSION}"
        )));
    }
    conn.execute_batch(SCHEMA_V1).map_err(db_error)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db_error)
}

fn serve(conn: Connection, inbox: mpsc::Receiver<Command>, events: EventSink) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    while let Ok(first) = inbox.recv() {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Run(job) => batch.push(job),
                Command::Close(done) => closing = Some(done),
            }
            if closing.is_none() && batch.len() < MAX_BATCH {
                next = inbox.try_recv().ok();
            }
        }
        run_batch(&conn, &mut batch, &events);
        if closing.is_some() {
            break;
        }
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn run_batch(conn: &Connection, jobs: &mut Vec<Job>, events: &EventSink) {
    let outer = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    let mut done: Vec<Done> = Vec::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        // Each job in a savepoint of its own: a failing one undoes only its own writes.
        let _ = conn.execute_batch("SAVEPOINT job");
        // A panicking job (a bug) drops its reply, so its caller gets an error.
        let Ok(result) = catch_unwind(AssertUnwindSafe(|| job(conn))) else {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            continue;
        };
        let _ = conn.execute_batch(if result.ok {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        });
        done.push(result);
    }
    let committed = if outer {
        let committed = conn.execute_batch("COMMIT").map_err(db_error);
        if committed.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        committed
    } else {
        Ok(())
    };
    for Done { reply, event, .. } in done {
        if let (Ok(()), Some(event)) = (&committed, event) {
            events.emit(event);
        }
        reply(committed.as_ref().map(|_| ()));
    }
}

fn read(conn: &Connection, scope: &str, key: &str) -> rusqlite::Result<Option<Value>> {
    let text: Option<String> = conn
        .prepare_cached(sql::GET)?
        .query_row(params![scope, key], |r| r.get(0))
        .optional()?;
    text.as_deref().map(parse).transpose()
}

fn put(conn: &Connection, scope: &str, key: &str, value: &Value) -> rusqlite::Result<()> {
    conn.prepare_cached(sql::PUT)?
        .execute(params![scope, key, value.to_string()])?;
    Ok(())
}

impl StateStore for SqliteStateStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn get<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.run(move |conn| Ok((read(conn, &scope, &key)?, None)))
    }

    fn set<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        value: Value,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.run(move |conn| {
            let old = read(conn, &scope, &key)?;
            put(conn, &scope, &key, &value)?;
            let event = StateEvent::new(&scope, &key, old.as_ref(), Some(&value));
            Ok((old, Some(event)))
        })
    }

    fn update<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        ops: Vec<UpdateOp>,
    ) -> BoxFuture<'a, StateResult<Updated>> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.run(move |conn| {
            let old = read(conn, &scope, &key)?;
            let (new, errors) = ops::apply(old.as_ref(), &ops);
            put(conn, &scope, &key, &new)?;
            let event = StateEvent::new(&scope, &key, old.as_ref(), Some(&new));
            let updated = Updated {
                old_value: old,
                new_value: new,
                errors,
            };
            Ok((updated, Some(event)))
        })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, StateResult<Option<Value>>> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.run(move |conn| {
            let old = read(conn, &scope, &key)?;
            if old.is_none() {
                return Ok((None, None));
            }
            conn.prepare_cached(sql::DELETE)?
                .execute(params![scope, key])?;
            let event = StateEvent::new(&scope, &key, old.as_ref(), None);
            Ok((old, Some(event)))
        })
    }

    fn list<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, StateResult<Vec<Value>>> {
        let scope = scope.to_owned();
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(sql::LIST)?;
            let rows = statement.query_map(params![scope], |r| r.get::<_, String>(0))?;
            let mut values = Vec::new();
            for text in rows {
                values.push(parse(&text?)?);
            }
            Ok((values, None))
        })
    }

    fn list_groups(&self) -> BoxFuture<'_, StateResult<Vec<String>>> {
        self.run(move |conn| {
            // One index probe per scope (a skip scan), not a scan of every key.
            let mut statement = conn.prepare_cached(sql::NEXT_SCOPE)?;
            let mut groups = Vec::new();
            let mut after = String::new();
            while let Some(scope) = statement
                .query_row(params![after], |r| r.get::<_, String>(0))
                .optional()?
            {
                groups.push(scope.clone());
                after = scope;
            }
            Ok((groups, None))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn values_survive_reopening_the_file() {
        let dir = std::env::temp_dir().join(format!("fnmesh-state-{}", uuid::Uuid::new_v4()));
        let path = dir.join("state.sqlite3");
        let (events, mut received) = EventSink::channel();
        let store = SqliteStateStore::open(&path, events.clone()).expect("open");
        assert_eq!(
            store.set("s", "a", json!({"n": 1})).await.expect("set"),
            None
        );
        store.set("t", "b", json!([1, 2])).await.expect("set");
        let ops = serde_json::from_value(json!([{"type": "increment", "path": "n", "by": 2}]))
            .expect("ops");
        let updated = store.update("s", "a", ops).await.expect("update");
        assert_eq!(updated.old_value, Some(json!({"n": 1})));
        assert_eq!(updated.new_value, json!({"n": 3}));
        assert_eq!(store.delete("t", "missing").await.expect("delete"), None);
        store.close().await;
        drop(store);
        let kinds: Vec<String> = std::iter::from_fn(|| received.try_recv().ok())
            .map(|e| {
                let v: Value = serde_json::from_str(e.payload.get()).expect("json");
                format!(
                    "{}:{}:{}",
                    e.scope,
                    e.key,
                    v["event_type"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "s:a:state:created",
                "t:b:state:created",
                "s:a:state:updated"
            ]
        );

        let store = SqliteStateStore::open(&path, events).expect("reopen");
        assert_eq!(
            store.get("s", "a").await.expect("get"),
            Some(json!({"n": 3}))
        );
        assert_eq!(store.list("t").await.expect("list"), vec![json!([1, 2])]);
        assert_eq!(store.list_groups().await.expect("groups"), ["s", "t"]);
        assert_eq!(
            store.delete("t", "b").await.expect("delete"),
            Some(json!([1, 2]))
        );
        assert_eq!(store.list_groups().await.expect("groups"), ["s"]);
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
