//! The FunctionsRegistry: every function the engine can route to, keyed by
//! `(namespace, function_id)`.
//!
//! A key holds one or more *replicas* (docs/protocol.md 11.1): several owners (worker connections, the
//! embedded Python app, a Rust host) may serve the same function, and [`FunctionsRegistry::select`]
//! picks the replica with the fewest calls in flight, round-robin among equals. The `reject`
//! policy ([`ConflictPolicy::Reject`]) restores iii's one-owner-per-key behaviour instead.
//!
//! The registry is generic over the handler `H` a replica carries: the engine stores its route to
//! a worker connection there, the Python binding a Python callable, a Rust host a closure.
//!
//! ```
//! use fnmesh_core::registry::{FunctionDef, FunctionsRegistry};
//!
//! let registry = FunctionsRegistry::<fn(i64) -> i64>::default();
//! registry.register("default", "math::double", "app", |x| x * 2, FunctionDef::default())?;
//! let lease = registry.select("default", "math::double").expect("registered");
//! assert_eq!((lease.handler())(21), 42);
//! assert_eq!(lease.in_flight(), 1); // until the lease is dropped
//! # Ok::<(), fnmesh_core::Error>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::DashMap;
use hashbrown::HashTable;

mod key;
pub use key::FunctionKey;
pub(crate) use key::KeyView;

use crate::error::{Error, Result};
use crate::meter::FunctionStats;
use crate::protocol::RawJson;

// NOTE: foldhash instead of the default SipHash: probing a (namespace, id) key of ~30 bytes
// took 55 ns with SipHash and 40 ns with foldhash (benches/benches/registry.rs, 1 function,
// `fnmesh_contains/hit`). It is seeded per map, which is enough against ids chosen by workers.
pub(crate) type Hasher = foldhash::fast::RandomState;

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Refuses a namespace that is present but blank (docs/protocol.md 3.5).
pub fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.trim().is_empty() {
        Err(Error::InvalidNamespace)
    } else {
        Ok(())
    }
}

pub(crate) fn check_non_empty(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        Err(Error::InvalidArgument(format!("{what} must not be empty")))
    } else {
        Ok(())
    }
}

/// Where a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FunctionKind {
    /// A handler inside the engine's own process (Python or Rust).
    #[default]
    Local,
    /// A function registered by a remote worker over the WebSocket.
    Worker,
    /// An external HTTP endpoint (`registerfunction` with `invocation`, docs/protocol.md 5).
    Http,
}

impl FunctionKind {
    /// The lowercase name used in listings and by the Python API.
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionKind::Local => "local",
            FunctionKind::Worker => "worker",
            FunctionKind::Http => "http",
        }
    }
}

impl FromStr for FunctionKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(FunctionKind::Local),
            "worker" => Ok(FunctionKind::Worker),
            "http" => Ok(FunctionKind::Http),
            other => Err(Error::InvalidArgument(format!(
                "function kind must be 'local', 'worker' or 'http', not '{other}'"
            ))),
        }
    }
}

impl fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens when a second owner registers a key that is already served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Add the newcomer as another replica (fnmesh's default).
    #[default]
    Replicate,
    /// Refuse the newcomer with [`Error::FunctionConflict`] (iii's behaviour).
    Reject,
}

impl ConflictPolicy {
    /// The setting's spelling: `replicate` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Replicate => "replicate",
            ConflictPolicy::Reject => "reject",
        }
    }
}

impl FromStr for ConflictPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "replicate" => Ok(ConflictPolicy::Replicate),
            "reject" => Ok(ConflictPolicy::Reject),
            other => Err(Error::InvalidArgument(format!(
                "function_conflict must be 'replicate' or 'reject', not '{other}'"
            ))),
        }
    }
}

/// The description of a function shared by all its replicas. The last registration of a key
/// sets it.
#[derive(Debug, Clone, Default)]
pub struct FunctionDef {
    /// Where the function runs.
    pub kind: FunctionKind,
    /// Free text for discovery.
    pub description: Option<String>,
    /// JSON Schema (usually) of the input, kept as raw JSON.
    pub request_format: Option<RawJson>,
    /// JSON Schema (usually) of the output, kept as raw JSON.
    pub response_format: Option<RawJson>,
    /// Arbitrary metadata, kept as raw JSON.
    pub metadata: Option<RawJson>,
}

impl FunctionDef {
    /// True when `metadata.internal == true` (hidden from discovery listings).
    pub fn is_internal(&self) -> bool {
        self.metadata.as_ref().is_some_and(|m| {
            serde_json::from_str::<InternalFlag>(m.get()).is_ok_and(|flag| flag.internal)
        })
    }
}

#[derive(serde::Deserialize)]
struct InternalFlag {
    #[serde(default)]
    internal: bool,
}

/// What a replica's leases share: who serves it and its calls in flight. It outlives the replica
/// while a lease holds it (a call routed just before the owner left still releases here), and a
/// re-registration by the same owner keeps it, so calls already routed still count.
struct Slot {
    owner: Arc<str>,
    in_flight: AtomicUsize,
}

#[repr(C)]
struct Replica<H> {
    slot: Arc<Slot>,
    handler: H,
}

impl<H> Replica<H> {
    fn new(owner: Arc<str>, handler: H) -> Self {
        Replica {
            slot: Arc::new(Slot {
                owner,
                in_flight: AtomicUsize::new(0),
            }),
            handler,
        }
    }

    fn owner(&self) -> &str {
        &self.slot.owner
    }

    fn load(&self) -> usize {
        self.slot.in_flight.load(Ordering::Relaxed)
    }
}

/// The replicas after the first, with the round-robin cursor: only keys served more than once
/// pay for them.
struct Others<H> {
    list: Vec<Replica<H>>,
    // The replica of the current batch, over all replicas (the first is index 0).
    cursor: AtomicUsize,
    // Calls given to it in the current batch.
    streak: AtomicUsize,
    // Draws of the power-of-two choice's random candidate.
    draws: AtomicUsize,
}

/// Calls routed to one replica in a row at most while its earlier ones are still in flight
/// (see [`Entry::pick`]).
// NOTE: least-in-flight spread 64 calls over 64 of 1,000 replicas, one frame per write: E6
// routing (`python benches/scale.py --quick`, C=64) with 1,000 workers ran at 0.40x of 10
// workers (16,980 against 42,476 calls/s; the last full run 0.50x), the engine spending 27.4 us
// of CPU per call. With batches of 8: 1.42x, 1.19x, 1.63x in three runs (68.7k/48.3k, 73.3k/61.7k,
// 90.6k/55.5k calls/s; 10 workers stay least-in-flight), 6.9-8.7 us of engine CPU per call;
// 2-core box shared with two other Rust builds.
pub const REPLICA_BATCH: usize = 8;

/// Functions with more replicas than this are routed in batches; fewer replicas keep exact
/// least-in-flight (calls in flight then already share each replica's writes, and two slow calls
/// on two replicas run side by side).
pub const BATCHES_ABOVE_REPLICAS: usize = 2 * REPLICA_BATCH;

// NOTE: the fields a select reads first, in this order (`repr(C)`): `fnmesh-microbench lookup
// --functions 1000000 --op select` read 344-348 ns per select over 65,536 random keys and 60-62 ns
// over 1,024 with Rust's own order (the inline key first, the first replica at byte 48, `others`
// at 80), 156-182 ns and 41-43 ns with this one.
#[repr(C)]
struct Entry<H> {
    // Never empty: an entry goes with its last replica.
    first: Replica<H>,
    others: Option<Box<Others<H>>>,
    key: FunctionKey,
    def: Arc<FunctionDef>,
    // The function's meters, kept while the key is registered (docs/observability.md); made on
    // the first metered call, so a function never called costs nothing for them.
    stats: OnceLock<Arc<FunctionStats>>,
}

impl<H> Entry<H> {
    fn replica_count(&self) -> usize {
        1 + self.others.as_ref().map_or(0, |o| o.list.len())
    }

    fn replicas(&self) -> impl Iterator<Item = &Replica<H>> {
        std::iter::once(&self.first).chain(self.others.iter().flat_map(|o| o.list.iter()))
    }

    fn replica(&self, index: usize) -> &Replica<H> {
        match (index, &self.others) {
            (0, _) | (_, None) => &self.first,
            (i, Some(others)) => &others.list[i - 1],
        }
    }

    fn replica_mut(&mut self, owner: &str) -> Option<&mut Replica<H>> {
        if self.first.owner() == owner {
            return Some(&mut self.first);
        }
        self.others
            .as_mut()
            .and_then(|o| o.list.iter_mut().find(|r| r.owner() == owner))
    }

    fn serves(&self, owner: &str) -> bool {
        self.replicas().any(|r| r.owner() == owner)
    }

    fn push(&mut self, replica: Replica<H>) {
        match &mut self.others {
            Some(others) => others.list.push(replica),
            None => {
                self.others = Some(Box::new(Others {
                    list: vec![replica],
                    cursor: AtomicUsize::new(0),
                    streak: AtomicUsize::new(0),
                    draws: AtomicUsize::new(0),
                }))
            }
        }
    }

    /// Removes `owner`'s replica, keeping the others in registration order. Returns whether one
    /// was removed and whether the entry is now empty (it must then leave the table).
    fn remove(&mut self, owner: &str) -> (bool, bool) {
        if self.first.owner() == owner {
            let Some(others) = &mut self.others else {
                return (true, true);
            };
            self.first = others.list.remove(0);
        } else if let Some(others) = &mut self.others {
            let before = others.list.len();
            others.list.retain(|r| r.owner() != owner);
            if others.list.len() == before {
                return (false, false);
            }
        } else {
            return (false, false);
        }
        if self.others.as_ref().is_some_and(|o| o.list.is_empty()) {
            self.others = None;
        }
        (true, false)
    }

    /// The replica for the next call, in batches that keep writes full and turns that keep the
    /// load fair (docs/protocol.md 11.1):
    ///
    /// - the replica of the current batch again, while its batch has fewer than
    ///   [`REPLICA_BATCH`] calls and every call in flight on it belongs to the batch (it has no
    ///   backlog of its own) and is unanswered: those frames are queued together for one write
    ///   to that connection and come back together;
    /// - otherwise a new batch: the next replica in turn, unless a randomly drawn one has fewer
    ///   calls in flight (the power of two choices), so a slow replica is passed over.
    ///
    /// With one call in flight at a time every call starts a batch, so idle replicas take
    /// strict turns.
    fn pick_batched(&self) -> &Replica<H> {
        let Some(others) = &self.others else {
            return &self.first;
        };
        let n = others.list.len() + 1;
        let current = others.cursor.load(Ordering::Relaxed) % n;
        let streak = others.streak.load(Ordering::Relaxed);
        let load = self.replica(current).load();
        if streak < REPLICA_BATCH && load > 0 && load <= streak {
            others.streak.store(streak + 1, Ordering::Relaxed);
            return self.replica(current);
        }
        // No batch yet (a new entry): the first replica's turn.
        let next = if streak == 0 {
            current
        } else {
            (current + 1) % n
        };
        let draw = others.draws.fetch_add(1, Ordering::Relaxed);
        // Any replica but `next` (n >= 2 here).
        let drawn = (next + 1 + (mix(draw as u64) % (n as u64 - 1)) as usize) % n;
        let chosen = if self.replica(drawn).load() < self.replica(next).load() {
            drawn
        } else {
            next
        };
        others.cursor.store(chosen, Ordering::Relaxed);
        others.streak.store(1, Ordering::Relaxed);
        self.replica(chosen)
    }
}

impl<H> Entry<H> {
    /// The replica with the fewest calls in flight, round-robin among equals.
    fn pick_least(&self) -> &Replica<H> {
        let Some(others) = &self.others else {
            return &self.first;
        };
        let n = others.list.len() + 1;
        let start = others.cursor.load(Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = self.replica(start).load();
        for step in 1..n {
            if best_load == 0 {
                break;
            }
            let candidate = (start + step) % n;
            let load = self.replica(candidate).load();
            if load < best_load {
                best = candidate;
                best_load = load;
            }
        }
        // The next scan starts just after the pick, so equals alternate strictly.
        others.cursor.store(best + 1, Ordering::Relaxed);
        self.replica(best)
    }
}

/// SplitMix64's finaliser: a well-spread number from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a registration changed the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The key did not exist before.
    Created,
    /// The key existed; this owner was added as another replica.
    Replica,
    /// This owner already served the key; its handler and the definition were replaced.
    Replaced,
}

/// A snapshot of one registered function, for discovery.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    /// The namespace.
    pub namespace: String,
    /// The function id.
    pub function_id: String,
    /// Kind, description, schemas and metadata.
    pub def: Arc<FunctionDef>,
    /// The owners of its replicas, in registration order.
    pub owners: Vec<Arc<str>>,
    /// Calls in flight over all replicas when the snapshot was taken.
    pub in_flight: usize,
}

/// A selected replica. Counts as one call in flight on that replica until it is released or
/// dropped.
pub struct Lease<H> {
    handler: H,
    slot: Arc<Slot>,
    released: bool,
}

impl<H> Lease<H> {
    /// The replica's handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The replica's owner.
    pub fn owner(&self) -> &Arc<str> {
        &self.slot.owner
    }

    /// Calls currently in flight on this replica, this one included until released.
    pub fn in_flight(&self) -> usize {
        self.slot.in_flight.load(Ordering::Relaxed)
    }

    /// Ends the call early; dropping the lease does the same. Idempotent.
    pub fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// True once released.
    pub fn is_released(&self) -> bool {
        self.released
    }
}

impl<H> Drop for Lease<H> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<H> fmt::Debug for Lease<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("owner", &self.slot.owner)
            .field("in_flight", &self.in_flight())
            .field("released", &self.released)
            .finish()
    }
}

/// Filters for [`FunctionsRegistry::list`]; all given filters must match.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// Only this namespace.
    pub namespace: Option<&'a str>,
    /// Only ids starting with this.
    pub prefix: Option<&'a str>,
    /// Case-insensitive substring of the id or the description.
    pub search: Option<&'a str>,
}

// Independent locks over the key space, so concurrent routing rarely contends on one. A power
// of two: the shard is a few bits of the key's hash.
const SHARDS: usize = 16;

type Table<H> = HashTable<Box<Entry<H>>>;

// One lock and its table per cache line, so shards do not share lines between cores.
#[repr(align(64))]
struct Shard<H>(RwLock<Table<H>>);

/// The registry of functions. Cheap to share behind an `Arc`; every method takes `&self`.
///
/// Operations on behalf of one owner are expected to be issued in order by that owner (one
/// connection's frames are processed in order), which keeps the owner index exact.
// NOTE: memory per function, `fnmesh-microbench lookup --functions 1000000` (resident memory
// the fill added / functions, 3 runs each, 2-core box shared with other builds): 815 bytes with
// the former DashMap of `FunctionKey -> Entry` (80-byte slots at ~2.1 slots per key at 1M, eager
// 176-byte meters, a private `FunctionDef` per key, replicas in their own Vec, an owner index
// holding copies of every key) against 199.5 for a plain hashbrown map of the same
// `(String, String)` keys (`--op hashbrown`). Now 246: sharded `HashTable`s of boxed entries
// (8-byte slots), the key in one block, meters made on the first metered call, definitions
// without text shared per kind, the first replica inline, the owner index holding key hashes.
// The same runs' select at 1M (65,536 random keys): 1,054-1,135 ns before against 248-345 ns
// for the plain map (3.5x); now 397-849 ns against 303-799 ns (1.06-1.31x): fewer cache misses
// per lookup (no separate namespace and id strings, no replica Vec, one counter block). Then 230
// with keys held in the entry (`FunctionKey`). On another box (2026-12): select 156-215 ns against
// 165-228 ns for a plain map of the same keys whose value is a shared in-flight counter leased the
// same way (`--op leased`); a bare `get` there took 111-145 ns, the difference being the
// counter's own cache line, which a lease must hold because the count outlives the entry.
pub struct FunctionsRegistry<H> {
    policy: ConflictPolicy,
    // Replica choice: batches (`Entry::pick_batched`, the engine's routing) or least in flight.
    batched: bool,
    hasher: Hasher,
    shards: Box<[Shard<H>]>,
    len: AtomicUsize,
    // owner -> hashes of the keys it serves, so a disconnect does not scan every function. A
    // hash may stand for several keys (a 64-bit collision): lookups by hash compare the keys.
    by_owner: DashMap<Arc<str>, HashSet<u64, Hasher>, Hasher>,
    // The definitions that carry no text, one per kind, shared by every key registered with one.
    plain: [Arc<FunctionDef>; 3],
}

impl<H> Default for FunctionsRegistry<H> {
    fn default() -> Self {
        Self::new(ConflictPolicy::default())
    }
}

impl<H> fmt::Debug for FunctionsRegistry<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionsRegistry")
            .field("policy", &self.policy)
            .field("functions", &self.len())
            .finish()
    }
}

fn read<H>(shard: &Shard<H>) -> RwLockReadGuard<'_, Table<H>> {
    // A panic never happens while a shard is locked (no user code runs under the lock); if one
    // did, the table itself is still consistent, so the poison is ignored.
    shard.0.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<H>(shard: &Shard<H>) -> RwLockWriteGuard<'_, Table<H>> {
    shard.0.write().unwrap_or_else(PoisonError::into_inner)
}

impl<H> FunctionsRegistry<H> {
    /// An empty registry with the given conflict policy.
    pub fn new(policy: ConflictPolicy) -> Self {
        let plain = [
            FunctionKind::Local,
            FunctionKind::Worker,
            FunctionKind::Http,
        ]
        .map(|kind| {
            Arc::new(FunctionDef {
                kind,
                ..FunctionDef::default()
            })
        });
        FunctionsRegistry {
            policy,
            batched: false,
            hasher: Hasher::default(),
            shards: (0..SHARDS)
                .map(|_| Shard(RwLock::new(HashTable::new())))
                .collect(),
            len: AtomicUsize::new(0),
            by_owner: DashMap::with_hasher(Hasher::default()),
            plain,
        }
    }

    /// The same registry choosing replicas in batches (the engine's routing, see
    /// [`FunctionsRegistry::select`]) instead of by least calls in flight.
    pub fn with_replica_batches(mut self, batched: bool) -> Self {
        self.batched = batched;
        self
    }

    fn hash(&self, namespace: &str, function_id: &str) -> u64 {
        self.hasher.hash_one((namespace, function_id))
    }

    fn shard(&self, hash: u64) -> &Shard<H> {
        // Bits the table itself does not use for the slot (the low ones) or the tag (the top 7).
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    fn rehasher(&self) -> impl Fn(&Box<Entry<H>>) -> u64 + '_ {
        |entry| self.hasher.hash_one(entry.key.parts())
    }

    /// `def` itself, or the shared copy when it carries no text.
    fn share(&self, def: FunctionDef) -> Arc<FunctionDef> {
        let plain = def.description.is_none()
            && def.request_format.is_none()
            && def.response_format.is_none()
            && def.metadata.is_none();
        if plain {
            // `plain` is in the declaration order of `FunctionKind`.
            self.plain[def.kind as usize].clone()
        } else {
            Arc::new(def)
        }
    }

    /// Runs `f` on the entry of the key, under its shard's read lock.
    fn with_entry<T>(
        &self,
        namespace: &str,
        function_id: &str,
        f: impl FnOnce(&Entry<H>) -> T,
    ) -> Option<T> {
        let hash = self.hash(namespace, function_id);
        let table = read(self.shard(hash));
        table
            .find(hash, |e| e.key.is(namespace, function_id))
            .map(|entry| f(entry))
    }

    /// The conflict policy in force.
    pub fn policy(&self) -> ConflictPolicy {
        self.policy
    }

    /// Number of `(namespace, function_id)` keys.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no function is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the key is registered.
    pub fn contains(&self, namespace: &str, function_id: &str) -> bool {
        self.with_entry(namespace, function_id, |_| ()).is_some()
    }

    /// True when the key is registered with at least one replica to call ([`Self::select`]
    /// would pick one).
    pub fn is_served(&self, namespace: &str, function_id: &str) -> bool {
        // An entry always has a replica: it leaves the table with its last one.
        self.contains(namespace, function_id)
    }

    /// Registers `handler` as `owner`'s replica of `(namespace, function_id)`.
    ///
    /// The same owner registering again replaces its replica in place (idempotent). Another
    /// owner becomes an extra replica, or is refused with [`Error::FunctionConflict`] under
    /// [`ConflictPolicy::Reject`]. The definition of the last successful registration wins.
    pub fn register(
        &self,
        namespace: &str,
        function_id: &str,
        owner: impl Into<Arc<str>>,
        handler: H,
        def: FunctionDef,
    ) -> Result<Registered> {
        check_namespace(namespace)?;
        check_non_empty("function id", function_id)?;
        let owner: Arc<str> = owner.into();
        check_non_empty("owner", &owner)?;
        let hash = self.hash(namespace, function_id);
        let mut table = write(self.shard(hash));
        let found = table.entry(hash, |e| e.key.is(namespace, function_id), self.rehasher());
        let outcome = match found {
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(Box::new(Entry {
                    key: FunctionKey::new(namespace, function_id),
                    def: self.share(def),
                    stats: OnceLock::new(),
                    first: Replica::new(owner.clone(), handler),
                    others: None,
                }));
                self.len.fetch_add(1, Ordering::Relaxed);
                Registered::Created
            }
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if let Some(mine) = entry.replica_mut(&owner) {
                    // Keep the in-flight counter: calls already routed here still count.
                    mine.handler = handler;
                    entry.def = self.share(def);
                    Registered::Replaced
                } else if self.policy == ConflictPolicy::Reject {
                    return Err(Error::FunctionConflict {
                        namespace: namespace.to_owned(),
                        function_id: function_id.to_owned(),
                        owner: entry.first.owner().to_owned(),
                    });
                } else {
                    entry.push(Replica::new(owner.clone(), handler));
                    entry.def = self.share(def);
                    Registered::Replica
                }
            }
        };
        drop(table);
        self.by_owner.entry(owner).or_default().insert(hash);
        Ok(outcome)
    }

    /// Removes `owner`'s replica of the key; the key goes when its last replica goes. Returns
    /// whether anything was removed. Calls already routed to the replica are not affected.
    pub fn unregister(&self, namespace: &str, function_id: &str, owner: &str) -> Result<bool> {
        check_namespace(namespace)?;
        let hash = self.hash(namespace, function_id);
        let mut table = write(self.shard(hash));
        let Ok(mut found) = table.find_entry(hash, |e| e.key.is(namespace, function_id)) else {
            return Ok(false);
        };
        let (removed, empty) = found.get_mut().remove(owner);
        if empty {
            found.remove();
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        if removed {
            // The hash stays indexed while the owner serves another key with the same hash.
            let still = table.iter_hash(hash).any(|e| e.serves(owner));
            drop(table);
            if !still {
                if let Some(mut hashes) = self.by_owner.get_mut(owner) {
                    hashes.remove(&hash);
                }
                self.by_owner
                    .remove_if(owner, |_, hashes| hashes.is_empty());
            }
        }
        Ok(removed)
    }

    /// Removes every replica `owner` serves (a worker disconnected). Returns the keys it
    /// served, sorted.
    pub fn remove_owner(&self, owner: &str) -> Vec<FunctionKey> {
        let Some((_, hashes)) = self.by_owner.remove(owner) else {
            return Vec::new();
        };
        let mut removed = Vec::with_capacity(hashes.len());
        for hash in hashes {
            let mut table = write(self.shard(hash));
            // Every key with this hash that the owner serves (almost always exactly one).
            let served: Vec<FunctionKey> = table
                .iter_hash(hash)
                .filter(|e| e.serves(owner))
                .map(|e| e.key.clone())
                .collect();
            for key in served {
                let Ok(mut found) = table.find_entry(hash, |e| e.key == key) else {
                    continue;
                };
                let (_, empty) = found.get_mut().remove(owner);
                if empty {
                    found.remove();
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
                removed.push(key);
            }
        }
        removed.sort_by(|a, b| a.parts().cmp(&b.parts()));
        removed
    }

    /// A snapshot of one function, or `None`.
    pub fn lookup(&self, namespace: &str, function_id: &str) -> Option<FunctionInfo> {
        self.with_entry(namespace, function_id, info)
    }

    /// The definition of a function (kind, schemas, metadata) without copying it, or `None`.
    pub fn def(&self, namespace: &str, function_id: &str) -> Option<Arc<FunctionDef>> {
        self.with_entry(namespace, function_id, |entry| entry.def.clone())
    }

    /// Runs `f` on every entry, shard by shard (each under its read lock).
    fn for_each(&self, mut f: impl FnMut(&Entry<H>)) {
        for shard in self.shards.iter() {
            for entry in read(shard).iter() {
                f(entry);
            }
        }
    }

    /// Every registered function's meters, as `(key, meters)`, in no particular order. A
    /// function not called since it was registered shows all zeros.
    pub fn stats(&self) -> Vec<(FunctionKey, Arc<FunctionStats>)> {
        let zero = Arc::<FunctionStats>::default();
        let mut out = Vec::with_capacity(self.len());
        self.for_each(|entry| {
            let stats = entry.stats.get().unwrap_or(&zero).clone();
            out.push((entry.key.clone(), stats));
        });
        out
    }

    /// Functions matching `filter`, sorted by `(namespace, function_id)`.
    pub fn list(&self, filter: ListFilter<'_>) -> Vec<FunctionInfo> {
        let needle = filter.search.map(str::to_lowercase);
        let mut out: Vec<FunctionInfo> = Vec::new();
        self.for_each(|entry| {
            let key = &entry.key;
            let matches = filter.namespace.is_none_or(|ns| key.namespace() == ns)
                && filter
                    .prefix
                    .is_none_or(|p| key.function_id().starts_with(p))
                && needle.as_deref().is_none_or(|n| {
                    key.function_id().to_lowercase().contains(n)
                        || entry
                            .def
                            .description
                            .as_deref()
                            .is_some_and(|d| d.to_lowercase().contains(n))
                });
            if matches {
                out.push(info(entry));
            }
        });
        out.sort_by(|a, b| {
            (a.namespace.as_str(), a.function_id.as_str())
                .cmp(&(b.namespace.as_str(), b.function_id.as_str()))
        });
        out
    }
}

impl<H: Clone> FunctionsRegistry<H> {
    /// Picks a replica, the one with the fewest calls in flight (round-robin among equals) or,
    /// built [`Self::with_replica_batches`], the current batch's (`Entry::pick_batched`), and
    /// counts one more call on it until the returned lease is released or dropped. `None` when
    /// the key is not registered.
    // A lookup builds no String: the table is probed with the borrowed key's hash and compared
    // with the borrowed strs.
    pub fn select(&self, namespace: &str, function_id: &str) -> Option<Lease<H>> {
        self.select_metered(namespace, function_id, false)
            .map(|(lease, _)| lease)
    }

    /// [`Self::select`], also handing back the function's meters when `metered` (one `Arc`
    /// clone, from the same lookup; made on the first metered call).
    pub fn select_metered(
        &self,
        namespace: &str,
        function_id: &str,
        metered: bool,
    ) -> Option<(Lease<H>, Option<Arc<FunctionStats>>)> {
        self.with_entry(namespace, function_id, |entry| {
            let chosen = if self.batched && entry.replica_count() > BATCHES_ABOVE_REPLICAS {
                entry.pick_batched()
            } else {
                entry.pick_least()
            };
            chosen.slot.in_flight.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                handler: chosen.handler.clone(),
                slot: chosen.slot.clone(),
                released: false,
            };
            let stats = metered.then(|| entry.stats.get_or_init(Arc::default).clone());
            (lease, stats)
        })
    }
}

fn info<H>(entry: &Entry<H>) -> FunctionInfo {
    FunctionInfo {
        namespace: entry.key.namespace().to_owned(),
        function_id: entry.key.function_id().to_owned(),
        def: entry.def.clone(),
        owners: entry.replicas().map(|r| r.slot.owner.clone()).collect(),
        in_flight: entry.replicas().map(Replica::load).sum(),
    }
}

#[cfg(test)]
mod tests;
