//! Where entries live: the [`Store`] trait and its implementations.
//!
//! A store keeps [`Entry`](crate::Entry) records under a namespace (one per memoized function) and, if it is
//! shared between processes, also coordinates who computes a key ([`LockOutcome`]). The in-process
//! [`MemoryStore`] answers synchronously and leaves coordination to the engine's in-process
//! single-flight; a remote store (Redis) adds a distributed lock on top.
//!
//! One backend is one module implementing [`Store`]: `memory.rs` for the embedded store,
//! `redis/` for everything Redis (connection, scripts, keys, locks, wake-ups). Every store
//! passes the same contract suite (`tests/store_contract.rs`).
//!
//! # Implementing a Store
//!
//! The engine calls a store in this order, and each method may assume what is listed:
//!
//! 1. [`Store::namespace`] once per memoized function, at build time. Equal names must give
//!    equal namespaces; different names must never share an entry.
//! 2. On every call, [`Store::get_now`] (the hit path). A store that needs I/O returns
//!    [`Lookup::NotLocal`] and the engine awaits [`Store::get`] instead. Neither may block.
//! 3. On a hard miss (no unexpired value), the in-process leader of the key calls
//!    [`Store::lock_or_get`]; only one caller per key *per process* does, so a store that
//!    coordinates across processes sees at most one request per process at a time.
//!    - [`LockOutcome::Acquired`]: the engine computes and calls [`Store::set`] with the lock,
//!      which must write only if the lock is still held (or, for a lock that lapsed, only if no
//!      newer record exists), release it and wake waiters.
//!    - [`LockOutcome::Busy`]: the engine calls [`Store::wait_for_value`] (bounded by the
//!      caller's policy) and then asks `lock_or_get` again.
//!    - [`LockOutcome::Found`] / [`LockOutcome::Local`]: as documented on the variants.
//! 4. On an XFetch trigger, in the background: [`Store::try_lock_refresh`], never waiting;
//!    then [`Store::set`] with the lock it got, if any.
//! 5. Dropping a held `Store::Lock` without a write releases it (in the background: `Drop`
//!    cannot await).
//!
//! Every method may fail with a [`StoreError`]; the engine then fails open (computes locally,
//! counts the error). A store must never panic on what it reads: bytes from another process are
//! untrusted, and anything undecodable is a miss.

pub(crate) mod contract;
mod data_arc;
#[cfg(feature = "disk")]
pub mod disk;
pub mod memory;
#[cfg(feature = "redis")]
pub mod near;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{
    ConnectError, HeldLock, RedisGuard, RedisLock, RedisStats, RedisStore, RedisStoreBuilder,
};
pub use contract::{
    LockOutcome, Lookup, Namespace, NamespaceRegistry, RefreshOutcome, Seen, Store, StoreError,
    StoreErrorKind, Written,
};
#[cfg(feature = "disk")]
pub use disk::{
    DiskError, DiskGuard, DiskLock, DiskPermit, DiskStats, DiskStore, DiskStoreBuilder,
};
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use near::{NearStats, NearStore, NearStoreBuilder};
