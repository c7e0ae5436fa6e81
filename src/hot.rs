//! The per-thread tier: each thread's most recently hit entry of each memoized function, served
//! without touching anything another core writes.
//!
//! Why: a hit on quick_cache takes its shard's read lock (two atomic read-modify-writes on a
//! line every reader of the shard writes) and clones the value (an `Arc` value's count is one
//! more shared line). On one hot key every core then writes the same lines and adding a core
//! makes each hit slower (issue 19). A hit served from this tier reads the shared store's
//! *version* of the key, which only writers write, and writes only lines of its own thread.
//!
//! The protocol (checked by `shuttle_tests::a_tier_never_serves_a_value_older_than_a_returned_write`):
//! - the store keeps [`Versions`], a fixed array of counters indexed by a hash of the key; every
//!   write of the store (`set`, `remove`/`invalidate`, `invalidate_all`) bumps the key's counter
//!   (all of them for `invalidate_all`) *after* the write, before it returns. Eviction bumps
//!   nothing: an evicted value is still the current one;
//! - a thread fills its tier on the cold path: it reads the key's counter *first*, then the
//!   store, and keeps the entry with the counter value it read;
//! - a tier hit compares the counter now with the one kept. A write that returned before the
//!   hit began has bumped the counter (its bump happens before the hit's load), so the kept
//!   value is not served; the hit goes to the store.
//!
//! Each slot belongs to the thread holding the same stripe index of the hit counter
//! ([`crate::stats`]): only that thread reads or writes it, like its stripe, and the index passes
//! to another thread only through the stripe free list's mutex.
//!
//! Memory: per memoized function on a store with versions, [`SLOTS`] slots of `key + value +
//! 48 bytes` each, rounded up to whole 64-byte lines (4 KiB for a `u64 → u64` function, 8 KiB
//! for `String → String`), plus the key and value each thread last admitted (held until that
//! thread admits another key of that function, or the function is dropped). Per store:
//! [`VERSIONS`] counters (8 KiB).

use crate::entry::Entry;
use std::cell::{Cell, UnsafeCell};
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;

#[cfg(not(shuttle))]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(shuttle)]
use shuttle::sync::atomic::{AtomicU64, Ordering};

/// Counters per store (fewer under shuttle, which models each atomic).
#[cfg(not(shuttle))]
pub const VERSIONS: usize = 1024;
#[cfg(shuttle)]
pub const VERSIONS: usize = 8;
/// Slots per function: one per hit-counter stripe.
pub(crate) const SLOTS: usize = crate::stats::STRIPES;

/// Write versions of a store's keys, hashed into [`VERSIONS`] counters (equal keys of several
/// functions share a counter: a write of one costs the others a store probe, never a wrong
/// answer). The counters live on this process's heap (the in-memory store) or in memory shared
/// by the processes of a machine (the disk store's version file, `store::disk::versions`).
#[doc(hidden)]
pub struct Versions {
    /// [`VERSIONS`] counters, valid while `_owner` lives.
    counters: NonNull<AtomicU64>,
    _owner: Box<dyn std::any::Any + Send + Sync>,
}

// SAFETY: `counters` points into memory owned by `_owner` (Send + Sync) and is only accessed
// through atomics.
unsafe impl Send for Versions {}
unsafe impl Sync for Versions {}

impl Default for Versions {
    fn default() -> Self {
        let heap: Box<[AtomicU64]> = (0..VERSIONS).map(|_| AtomicU64::new(0)).collect();
        let counters = NonNull::from(&heap[0]);
        Versions {
            counters,
            _owner: Box::new(heap),
        }
    }
}

impl Versions {
    /// Counters that `owner` keeps alive (e.g. a shared memory map).
    ///
    /// # Safety
    /// `counters` points to [`VERSIONS`] properly aligned `AtomicU64`s that stay valid, and are
    /// only accessed atomically, for as long as `owner` lives.
    #[cfg(all(feature = "disk", not(shuttle)))]
    pub(crate) unsafe fn shared(
        counters: NonNull<AtomicU64>,
        owner: Box<dyn std::any::Any + Send + Sync>,
    ) -> Versions {
        Versions {
            counters,
            _owner: owner,
        }
    }

    #[inline(always)]
    fn counter(&self, index: usize) -> &AtomicU64 {
        debug_assert!(index < VERSIONS);
        // SAFETY: `index < VERSIONS` (every caller masks or iterates below it); the counters
        // live as long as `self` (see the field).
        unsafe { &*self.counters.as_ptr().add(index) }
    }

    /// The index of `key`'s counter (any borrowed form: it hashes as the owned key).
    #[inline]
    fn index_of<Q: Hash + ?Sized>(key: &Q) -> usize {
        let mut h = Fx(0);
        key.hash(&mut h);
        // The top bits of a multiplicative hash are its best mixed.
        (h.0.wrapping_mul(FX) >> (64 - VERSIONS.trailing_zeros())) as usize
    }

    /// The counter of `key`.
    #[inline]
    pub(crate) fn of<Q: Hash + ?Sized>(&self, key: &Q) -> &AtomicU64 {
        self.counter(Self::index_of(key))
    }

    /// After a write of `key`: tiers holding an older value of it stop serving it.
    #[inline]
    pub(crate) fn bump<Q: Hash + ?Sized>(&self, key: &Q) {
        self.of(key).fetch_add(1, Ordering::Release);
    }

    /// After a write of many keys (`invalidate_all`): every tier entry stops serving.
    pub(crate) fn bump_all(&self) {
        for i in 0..VERSIONS {
            self.counter(i).fetch_add(1, Ordering::Release);
        }
    }
}

const FX: u64 = 0xf135_7aea_2e62_a9c5;

/// A small multiplicative hasher (rustc's Fx): the version index is computed on the cold path
/// and on writes, never on a tier hit.
struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One thread's tier entry of one function.
pub(crate) struct HotEntry<K, V> {
    pub(crate) key: K,
    /// The entry's value, δ and expiry (not its `write_id`: the in-memory store does not
    /// number writes, and a slot stays one cache line for small types).
    pub(crate) value: V,
    pub(crate) delta_us: u64,
    pub(crate) expires_at: u64,
    /// The key's version counter in the store, and its value read before the store was.
    version: NonNull<AtomicU64>,
    seen: u64,
    /// Hits served from this entry since the rate meter last heard of them (automatic β).
    pub(crate) unmetered: Cell<u64>,
}

impl<K, V> HotEntry<K, V> {
    /// Has no write of the key returned since this entry was read from the store?
    #[inline(always)]
    pub(crate) fn current(&self) -> bool {
        // SAFETY: `version` points into the `Versions` of the store the engine owns, which
        // outlives every tier of that engine.
        unsafe { self.version.as_ref() }.load(Ordering::Relaxed) == self.seen
    }
}

/// One thread's tier of one function: its own cache line(s).
#[repr(align(64))]
struct Slot<K, V> {
    entry: UnsafeCell<Option<HotEntry<K, V>>>,
    /// The version counter of the last key that missed the tier, unadmitted: a key is admitted
    /// the second time in a row it misses, so a stream of distinct keys costs no copies.
    candidate: Cell<u32>,
    /// Set while user code (key comparison, value clone, a `read` closure) runs with a borrow
    /// of the entry: a call it makes on this thread then does not replace the entry.
    busy: Cell<bool>,
}

/// The per-thread tiers of one function, indexed by the hit counter's stripe index.
pub(crate) struct HotTier<K, V> {
    slots: Box<[Slot<K, V>]>,
}

// SAFETY: a slot is only touched by the thread that owns the stripe index of the same number
// (see the module doc), and it passes from thread to thread through a mutex, so its contents
// move between threads (`Send`) but are never shared; the counters are atomics.
unsafe impl<K: Send, V: Send> Sync for HotTier<K, V> {}
// SAFETY: as above.
unsafe impl<K: Send, V: Send> Send for HotTier<K, V> {}

impl<K, V> HotTier<K, V> {
    pub(crate) fn new() -> Self {
        HotTier {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    entry: UnsafeCell::new(None),
                    candidate: Cell::new(0),
                    busy: Cell::new(false),
                })
                .collect(),
        }
    }

    /// Runs `f` on this thread's entry, marked busy meanwhile.
    ///
    /// # Safety
    /// `index` is the stripe index the calling thread owns now (`< SLOTS`).
    #[inline(always)]
    pub(crate) unsafe fn with<R>(
        &self,
        index: usize,
        f: impl FnOnce(&HotEntry<K, V>) -> Option<R>,
    ) -> Option<R> {
        // SAFETY: the caller owns the index; it is in bounds.
        let slot = unsafe { self.slots.get_unchecked(index) };
        // SAFETY: only this thread touches the slot, and the only `&mut` (in `admit`) is never
        // made while `busy` is set, which it is while this borrow lives.
        let entry = unsafe { &*slot.entry.get() }.as_ref()?;
        slot.busy.set(true);
        let out = f(entry);
        slot.busy.set(false);
        out
    }

    /// The cold path saw `key` hit the store: admit it into this thread's slot if it missed
    /// the tier twice in a row (or the slot is empty). `read` re-reads the store after the
    /// version: the entry kept is never newer than the version kept.
    ///
    /// # Safety
    /// As [`HotTier::with`].
    pub(crate) unsafe fn admit<Q>(
        &self,
        index: usize,
        versions: &Versions,
        key: &Q,
        read: impl FnOnce() -> Option<Entry<V>>,
    ) -> Option<HotEntry<K, V>>
    where
        Q: Hash + ?Sized + ToOwned<Owned = K>,
        V: Clone,
    {
        // SAFETY: as in `with`.
        let slot = unsafe { self.slots.get_unchecked(index) };
        if slot.busy.get() {
            return None;
        }
        let index_of = Versions::index_of(key);
        let counter = versions.counter(index_of);
        // 1 + the counter's index: 0 is "no candidate".
        let id = index_of as u32 + 1;
        // SAFETY: not busy, so no borrow of the entry lives; only this thread touches it.
        let occupied = unsafe { &*slot.entry.get() }.is_some();
        if occupied && slot.candidate.get() != id {
            slot.candidate.set(id);
            return None;
        }
        slot.candidate.set(0);
        let seen = counter.load(Ordering::Acquire);
        let entry = read()?;
        let new = HotEntry {
            key: key.to_owned(),
            value: entry.value,
            delta_us: entry.delta_us,
            expires_at: entry.expires_at,
            version: NonNull::from(counter),
            seen,
            unmetered: Cell::new(0),
        };
        if slot.busy.get() {
            return None; // `read` or `to_owned` called back into this function
        }
        // SAFETY: not busy (checked after the last user code ran): no borrow of the entry.
        // The old entry is returned, so its drop (user code) runs after the slot is whole.
        unsafe { (*slot.entry.get()).replace(new) }
    }

    /// Takes this thread's unmetered hit count (with its key), for the rate meter.
    ///
    /// # Safety
    /// As [`HotTier::with`].
    pub(crate) unsafe fn take_unmetered<R>(
        &self,
        index: usize,
        f: impl FnOnce(&K, u64) -> R,
    ) -> Option<R> {
        // SAFETY: as in `with`.
        let slot = unsafe { self.slots.get_unchecked(index) };
        if slot.busy.get() {
            return None;
        }
        // SAFETY: not busy: no `&mut` can exist; a shared borrow for the count only.
        let e = unsafe { &*slot.entry.get() }.as_ref()?;
        let n = e.unmetered.replace(0);
        if n == 0 {
            return None;
        }
        slot.busy.set(true);
        let out = f(&e.key, n);
        slot.busy.set(false);
        Some(out)
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_key_finds_the_owned_keys_counter() {
        let v = Versions::default();
        let owned = "some key".to_string();
        assert!(std::ptr::eq(v.of(&owned), v.of("some key")));
        let before = v.of("some key").load(Ordering::SeqCst);
        v.bump(&owned);
        assert_eq!(v.of("some key").load(Ordering::SeqCst), before + 1);
    }

    /// The crate doc's memory figures: one line per slot for `u64 → u64`, two for
    /// `String → String`.
    #[test]
    fn a_slot_is_one_line_for_small_keys_and_values() {
        assert_eq!(std::mem::size_of::<Slot<u64, u64>>(), 64);
        assert_eq!(std::mem::size_of::<Slot<String, String>>(), 128);
        assert_eq!(std::mem::size_of::<Versions>(), 24);
    }

    #[test]
    fn keys_spread_over_the_counters() {
        let v = Versions::default();
        let used: std::collections::HashSet<usize> = (0..4096u64)
            .map(|k| v.of(&k) as *const AtomicU64 as usize)
            .collect();
        assert!(used.len() > VERSIONS / 2, "{} counters used", used.len());
    }

    #[test]
    fn a_key_is_admitted_the_second_time_in_a_row_it_misses() {
        let v = Versions::default();
        let tier = HotTier::<u64, u64>::new();
        let e = |value| Entry {
            value,
            delta_us: 1,
            expires_at: u64::MAX,
            write_id: 0,
        };
        // SAFETY: the test thread is the only user of index 0.
        unsafe {
            assert!(tier.admit(0, &v, &1, || Some(e(10))).is_none()); // empty slot: admitted
            assert_eq!(tier.with(0, |h| Some(h.value)), Some(10));
            tier.admit(0, &v, &2, || Some(e(20)));
            assert_eq!(
                tier.with(0, |h| Some(h.key)),
                Some(1),
                "one miss is not enough"
            );
            let old = tier.admit(0, &v, &2, || Some(e(20)));
            assert_eq!(old.map(|o| o.key), Some(1));
            assert_eq!(tier.with(0, |h| Some(h.key)), Some(2));
            assert!(tier.with(0, |h| h.current().then_some(())).is_some());
            v.bump(&2);
            assert!(tier.with(0, |h| h.current().then_some(())).is_none());
        }
    }
}
