//! The [`Store`] trait and the types it speaks: namespaces, lookups, lock outcomes, errors.
//! Backends import from here; `store/mod.rs` only re-exports.

use crate::entry::Entry;
use crate::wait::WaitMode;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A memoized function's private part of a store, resolved once at build time.
///
/// ```
/// use herdless::{MemoryStore, Store};
/// let store = MemoryStore::<String, u32>::new(10).unwrap();
/// let a = Store::<String, u32>::namespace(&store, "a");
/// assert_eq!(a.name(), "a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub(crate) id: u32,
    pub(crate) name: Arc<str>,
    /// How long a record outlives its logical expiry (`Builder::stale_if_error`).
    pub(crate) grace: Duration,
}

impl Namespace {
    /// Builds a namespace; stores call this from [`Store::namespace`].
    pub fn new(id: u32, name: &str) -> Self {
        Namespace {
            id,
            name: name.into(),
            grace: Duration::ZERO,
        }
    }
    /// This namespace with records that outlive their logical expiry by `grace` (the
    /// function's [`stale_if_error`](crate::Builder::stale_if_error) window). A store that
    /// removes records by time keeps each one `ttl + grace` and still reports the logical
    /// expiry (`ttl`) on reads; a store that keeps expired entries anyway needs nothing.
    ///
    /// ```
    /// use herdless::store::Namespace;
    /// use std::time::Duration;
    /// let ns = Namespace::new(1, "page").with_grace(Duration::from_secs(30));
    /// assert_eq!(ns.grace(), Duration::from_secs(30));
    /// ```
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// How long records of this namespace outlive their logical expiry (zero by default).
    pub fn grace(&self) -> Duration {
        self.grace
    }
    /// The function name this namespace belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// A store-assigned number, unique per name within one store.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// The registry of function names of one store: the same name always gets the same
/// [`Namespace`] id. Stores hold one and answer [`Store::namespace`] from it.
///
/// ```
/// use herdless::store::NamespaceRegistry;
/// let names = NamespaceRegistry::default();
/// assert_eq!(names.namespace("a"), names.namespace("a"));
/// assert_ne!(names.namespace("a").id(), names.namespace("b").id());
/// ```
#[derive(Debug, Default)]
pub struct NamespaceRegistry {
    ids: Mutex<HashMap<Arc<str>, u32>>,
}

impl NamespaceRegistry {
    /// The namespace of `name`, registering it on first use.
    pub fn namespace(&self, name: &str) -> Namespace {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let next = ids.len() as u32;
        let id = *ids.entry(name.into()).or_insert(next);
        Namespace::new(id, name)
    }
}

/// What kind of failure a [`StoreError`] is. The engine treats them all alike (it fails open);
/// the kind is for stats, logs and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The server did not answer within the operation timeout.
    Timeout,
    /// Nothing listens at the address (or the connection was reset).
    ConnectionRefused,
    /// The server refused the credentials.
    Authentication,
    /// The user lacks a permission (an ACL refusing a command, a key or a channel).
    PermissionDenied,
    /// The circuit breaker is open: the call was not sent.
    CircuitOpen,
    /// The server answered something unexpected.
    Protocol,
    /// A key or value could not be encoded.
    Encode,
    /// A record could not be decoded.
    Decode,
    /// A record is larger than the configured limit.
    TooLarge,
    /// Any other I/O or server error.
    Other,
}

/// A store operation failed. The engine fails open: it counts the error and computes locally.
///
/// ```
/// use herdless::store::{StoreError, StoreErrorKind};
/// let e = StoreError::new(StoreErrorKind::Timeout, "GET took longer than 250ms");
/// assert_eq!(e.kind(), StoreErrorKind::Timeout);
/// assert_eq!(e.to_string(), "store error (Timeout): GET took longer than 250ms");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// An error of `kind` with a human-readable message.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }
    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store error ({:?}): {}", self.kind, self.message)
    }
}
impl std::error::Error for StoreError {}

/// What a synchronous lookup ([`Store::get_now`]) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// An entry (possibly expired: the engine decides).
    Found(Entry<V>),
    /// Nothing stored under the key.
    Missing,
    /// This store cannot answer without I/O: the engine awaits [`Store::get`].
    NotLocal,
}

/// What a hard-miss leader learns when it asks the store for the key's lock.
#[derive(Debug)]
pub enum LockOutcome<V, L> {
    /// This caller holds the (distributed) lock and must compute, then write with the lock.
    Acquired(L),
    /// A value was found after all (written since the first read): no computation needed.
    Found(Entry<V>),
    /// Another process holds the lock: wait for its value.
    Busy,
    /// The store does not coordinate across processes; in-process single-flight is enough.
    Local,
}

/// What the reader of an entry saw, handed to [`Store::try_lock_refresh`] so that the store can
/// tell whether the entry was replaced since it was read.
///
/// A store that numbers its writes compares [`Entry::write_id`] (exact: no clock, no slack);
/// with `write_id == 0` it falls back to comparing expiries.
///
/// ```
/// use herdless::{store::Seen, Entry};
/// let e = Entry { value: 1u32, delta_us: 10, expires_at: 5_000, write_id: 42 };
/// assert_eq!(Seen::of(&e), Seen { expires_at: 5_000, write_id: 42 });
/// assert!(Seen::NOTHING.expires_at == u64::MAX && Seen::NOTHING.write_id == 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The entry's expiry on the engine clock ([`Entry::expires_at`]).
    pub expires_at: u64,
    /// The entry's [`Entry::write_id`] (`0`: unknown).
    pub write_id: u64,
}

impl Seen {
    /// Nothing was seen: the refresh is unconditional (`refresh()` on a facade), so no entry in
    /// the store counts as "replaced since".
    pub const NOTHING: Seen = Seen {
        expires_at: u64::MAX,
        write_id: 0,
    };

    /// What a reader of `entry` saw.
    pub fn of<V>(entry: &Entry<V>) -> Seen {
        Seen {
            expires_at: entry.expires_at,
            write_id: entry.write_id,
        }
    }
}

/// What a background refresh learns when it tries the lock without waiting.
#[derive(Debug)]
pub enum RefreshOutcome<L> {
    /// This process refreshes, holding the distributed lock.
    Acquired(L),
    /// No distributed lock exists; the in-process refresh slot already made this caller unique.
    Local,
    /// Someone else refreshes (or already did): keep serving the current value.
    Skip,
}

/// Whether a write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The entry is stored.
    Stored,
    /// Something newer was written, or the key was invalidated, after the writer's permit was
    /// granted: the store kept what it had (fencing).
    Fenced,
}

/// A place to keep entries, shared by any number of memoized functions.
///
/// Methods return futures so that remote stores fit; [`Store::get_now`] lets an in-memory store
/// answer on the caller's stack, which is what keeps a hit at a few tens of nanoseconds.
///
/// ```
/// use herdless::{Entry, MemoryStore, Store};
/// let store = MemoryStore::<u32, &'static str>::new(10).unwrap();
/// let ns = store.namespace("greeting");
/// let e = Entry { value: "hi", delta_us: 1, expires_at: u64::MAX, write_id: 0 };
/// futures::executor::block_on(store.set(&ns, &1, e.clone(), std::time::Duration::from_secs(1), None)).unwrap();
/// assert_eq!(store.get_now(&ns, &1), herdless::store::Lookup::Found(e));
/// ```
pub trait Store<K, V>: Clone + Send + Sync + 'static {
    /// A held distributed lock (dropping it releases the lock in the background).
    type Lock: Send + Sync + 'static;

    /// The namespace for a function name; the same name always gives the same namespace.
    fn namespace(&self, name: &str) -> Namespace;

    /// True when other processes share this store (their callers then also trigger XFetch
    /// refreshes of the same keys, which automatic β takes into account).
    fn is_shared(&self) -> bool {
        false
    }

    /// About how many processes call this store's functions (1 for a store of one process).
    /// Automatic β multiplies the rate each process measures by it, so the XFetch lead aims at
    /// the fleet's request rate, not one process's. Must be cheap (no I/O on the caller's path).
    fn fleet_size(&self) -> f64 {
        1.0
    }

    /// The write versions of this store's keys, if every write of the store bumps them (see
    /// the crate's per-thread tier): then hits may be served from a thread's own copy while
    /// the key's version is unchanged. `None` (the default): every hit probes the store.
    #[doc(hidden)]
    fn versions(&self) -> Option<&crate::hot::Versions> {
        None
    }

    /// A lookup that needs no I/O: [`Lookup::NotLocal`] if this store cannot answer
    /// synchronously. It takes any borrowed form `Q` of the key (`&str` for `String`), which
    /// must find the same entry as the owned key (the `Borrow` contract: equal hashes and
    /// equality), without allocating.
    fn get_now<Q>(&self, ns: &Namespace, key: &Q) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let _ = (ns, key);
        Lookup::NotLocal
    }

    /// Reads an entry; `now` is the engine clock, used to rebuild `expires_at`.
    fn get(
        &self,
        ns: &Namespace,
        key: &K,
        now: u64,
    ) -> impl Future<Output = Result<Option<Entry<V>>, StoreError>> + Send;

    /// Writes an entry that lives for `ttl`. With `lock` (a permit from [`Store::lock_or_get`],
    /// [`Store::try_lock_refresh`] or [`Store::write_ticket`]), the write lands only if nothing
    /// newer was written and the key was not invalidated since the permit was granted
    /// (returning [`Written::Fenced`] otherwise), and a held lock is released and waiters are
    /// woken in the same step. Without a permit (`insert`) the write lands unconditionally and
    /// fences every computation already running.
    fn set(
        &self,
        ns: &Namespace,
        key: &K,
        entry: Entry<V>,
        ttl: Duration,
        lock: Option<Self::Lock>,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;

    /// For a hard-miss leader: take the key's lock, or find the value that just landed. A lock
    /// is taken for `lease` and renewed while held, for at most `max_hold` in all.
    fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &K,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> impl Future<Output = Result<LockOutcome<V, Self::Lock>, StoreError>> + Send;

    /// For an early refresh: take the lock without waiting, unless someone replaced the entry
    /// the caller read (`seen`) or holds the lock. A store that numbers its writes must decide
    /// "replaced" by [`Seen::write_id`] when it is non-zero, never by times: a slow read or a
    /// clock estimate must not make every refresh of a cycle skip.
    fn try_lock_refresh(
        &self,
        ns: &Namespace,
        key: &K,
        seen: Seen,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> impl Future<Output = Result<RefreshOutcome<Self::Lock>, StoreError>> + Send;

    /// A write permit without a lock, for a computation that runs unlocked on a shared store
    /// (its caller waited past its patience, or the lock could not be had): a later
    /// [`Store::set`] with it lands only if nothing was written or invalidated since this call.
    /// `None` (the default) means the store needs no permit. The engine asks for one before
    /// every unlocked computation on a shared store ([`Store::is_shared`]).
    fn write_ticket(
        &self,
        ns: &Namespace,
        key: &K,
    ) -> impl Future<Output = Result<Option<Self::Lock>, StoreError>> + Send {
        let _ = (ns, key);
        async { Ok(None) }
    }

    /// Invalidates one key: after the returned future completes, no reader of this store (in
    /// any process) gets the entry that was there, and a write fenced by a lock taken before
    /// the invalidation does not land. Wakes waiters of the key.
    fn invalidate(
        &self,
        ns: &Namespace,
        key: &K,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Invalidates every key of one namespace (one memoized function).
    fn invalidate_all(&self, ns: &Namespace)
        -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Waits up to `max` for another process's lock holder to publish the key (or for a hint
    /// that it is worth asking again). The engine then asks [`Store::lock_or_get`] again.
    fn wait_for_value(
        &self,
        ns: &Namespace,
        key: &K,
        max: Duration,
        mode: WaitMode,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (ns, key, max, mode);
        async { Ok(()) }
    }

    /// Reads many entries at once, one answer per key in `keys`' order (for
    /// [`Builder::build_batch`](crate::Builder::build_batch)). The default asks [`Store::get`]
    /// for each key in turn; a remote store overrides it with one round trip (Redis: one
    /// pipeline, one per slot on a cluster).
    ///
    /// ```
    /// use herdless::{Entry, MemoryStore, Store};
    /// let store = MemoryStore::<u32, u32>::new(10).unwrap();
    /// let ns = store.namespace("f");
    /// let e = Entry { value: 7, delta_us: 1, expires_at: u64::MAX, write_id: 0 };
    /// let ttl = std::time::Duration::from_secs(1);
    /// futures::executor::block_on(async {
    ///     store.set_many(&ns, vec![(1, e.clone(), None)], ttl).await;
    ///     let got = store.get_many(&ns, &[1, 2], 0).await;
    ///     assert_eq!(got, vec![Ok(Some(e)), Ok(None)]);
    /// });
    /// ```
    fn get_many(
        &self,
        ns: &Namespace,
        keys: &[K],
        now: u64,
    ) -> impl Future<Output = Vec<Result<Option<Entry<V>>, StoreError>>> + Send
    where
        K: Sync,
        V: Send,
    {
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(self.get(ns, key, now).await);
            }
            out
        }
    }

    /// Writes many entries at once, each as [`Store::set`] would (its permit fences it), one
    /// answer per item in order. The default calls [`Store::set`] for each in turn; a remote
    /// store overrides it with one round trip.
    fn set_many(
        &self,
        ns: &Namespace,
        items: Vec<(K, Entry<V>, Option<Self::Lock>)>,
        ttl: Duration,
    ) -> impl Future<Output = Vec<Result<Written, StoreError>>> + Send
    where
        K: Send + Sync,
        V: Send,
    {
        async move {
            let mut out = Vec::with_capacity(items.len());
            for (key, entry, lock) in items {
                out.push(self.set(ns, &key, entry, ttl, lock).await);
            }
            out
        }
    }
}
