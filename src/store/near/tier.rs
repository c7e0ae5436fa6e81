//! What a near tier holds: typed keys (one probe per hit, borrowed lookups hash like owned
//! keys) and entries stamped with when they were read from Redis.

use super::epochs::{Epochs, NearStats};
use crate::entry::Entry;
use crate::store::redis::RedisStore;
use quick_cache::{sync::Cache, Equivalent};
use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct NearKey<K> {
    pub(crate) ns: u32,
    pub(crate) key: K,
}

/// A borrowed key (`&str` for a `String` key): hashes exactly like [`NearKey`] (field order and
/// the `Borrow` contract: a borrowed form hashes like its owner).
#[derive(Hash)]
pub(crate) struct NearKeyRef<'a, Q: ?Sized> {
    pub(crate) ns: u32,
    pub(crate) key: &'a Q,
}

impl<K: Borrow<Q>, Q: Eq + ?Sized> Equivalent<NearKey<K>> for NearKeyRef<'_, Q> {
    fn equivalent(&self, other: &NearKey<K>) -> bool {
        self.ns == other.ns && self.key == other.key.borrow()
    }
}

#[derive(Clone)]
pub(crate) struct NearEntry<V> {
    pub(crate) entry: Entry<V>,
    /// When it was read from Redis (for the staleness bound while the channel is down).
    /// When the read was sent, in ns of the process's coarse clock (`clock::coarse().now()`).
    pub(crate) read_at: u64,
    /// The whole-tier epoch it was read under; served only while that is still current.
    pub(crate) all: u64,
}

pub(crate) struct Inner<K, V> {
    pub(crate) shared: RedisStore,
    pub(crate) local: Cache<NearKey<K>, NearEntry<V>>,
    pub(crate) epochs: Epochs,
    pub(crate) max_stale: Duration,
    /// `max_stale` in ns, for the hit path.
    pub(crate) max_stale_ns: u64,
    pub(crate) stats: Arc<NearStats>,
    /// Keeps this tier's announcement hook registered (the store holds it weakly); set right
    /// after the tier exists, so no announcement meets a half-built tier.
    pub(crate) tap: std::sync::OnceLock<crate::store::redis::Tap>,
}
