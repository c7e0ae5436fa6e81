//! The stored record: the value, how long it took to compute, and when it expires.

/// One cached value with the two numbers XFetch needs.
///
/// `expires_at` is on the engine's [`Clock`](crate::Clock) timeline (nanoseconds). Stores that
/// keep time themselves (Redis) translate: they store the remaining TTL and, on a read, rebuild
/// `expires_at` as `now + remaining`, so clocks of different hosts never meet.
///
/// ```
/// use herdless::Entry;
/// let e = Entry {
///     value: "page".to_string(),
///     delta_us: 200_000,
///     expires_at: 5_000_000_000,
///     write_id: 0,
/// };
/// assert_eq!(e.remaining(4_000_000_000), std::time::Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<V> {
    /// The cached value.
    pub value: V,
    /// How long the computation that produced it took, in microseconds (monotonic clock).
    pub delta_us: u64,
    /// Expiry on the engine clock, in nanoseconds.
    pub expires_at: u64,
    /// Which write stored this entry, as the store that read it numbers its writes; `0` when
    /// unknown (an entry not read from a store, or a store that does not number writes).
    ///
    /// Two reads of one key that return the same non-zero `write_id` saw the same write. An
    /// early refresh hands it back to [`Store::try_lock_refresh`](crate::Store::try_lock_refresh)
    /// (in a [`Seen`](crate::store::Seen)), which then tells "replaced since the read" by
    /// identity instead of by comparing times that the read's own latency and the clocks blur.
    pub write_id: u64,
}

impl<V> Entry<V> {
    /// Time left before expiry at `now` (zero once expired).
    pub fn remaining(&self, now: u64) -> std::time::Duration {
        std::time::Duration::from_nanos(self.expires_at.saturating_sub(now))
    }
}
