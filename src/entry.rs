//! The stored record: the value, how long it took to compute, and when it expires.

/// One cached value with the two numbers XFetch needs.
///
/// `expires_at` is on the engine's [`Clock`](crate::Clock) timeline (nanoseconds). Stores that
/// keep time themselves (Redis) translate: they store the remaining TTL and, on a read, rebuild
/// `expires_at` as `now + remaining`, so clocks of different hosts never meet.
///
/// ```
/// use herdless::Entry;
/// let e = Entry { value: "page".to_string(), delta_us: 200_000, expires_at: 5_000_000_000 };
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
}

impl<V> Entry<V> {
    /// Time left before expiry at `now` (zero once expired).
    pub fn remaining(&self, now: u64) -> std::time::Duration {
        std::time::Duration::from_nanos(self.expires_at.saturating_sub(now))
    }
}
