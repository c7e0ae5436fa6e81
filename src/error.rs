//! Errors: what a memoized call can return, and what a builder rejects.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a memoized call returned no value.
///
/// The closure's own error is shared (`Arc`) because every caller coalesced onto one computation
/// receives the same error. Errors are never cached: the next call computes again.
///
/// ```
/// use herdless::Error;
/// let e: Error<String> = Error::Busy;
/// assert_eq!(e.to_string(), "another caller is computing this key (fail-fast policy)");
/// ```
#[derive(Debug)]
pub enum Error<E> {
    /// The closure returned this error (to the caller that ran it and to every coalesced waiter).
    Compute(Arc<E>),
    /// Another caller is computing the key and the contention policy is fail-fast.
    Busy,
    /// Waited the configured maximum for another caller's computation.
    WaitTimeout(Duration),
    /// The closure panicked in the caller that ran it; this is what coalesced waiters that could
    /// not take over receive. The key is not poisoned: the next call computes again.
    Panicked,
}

impl<E> Error<E> {
    /// The closure's error, if that is what this is.
    pub fn compute_error(&self) -> Option<&E> {
        match self {
            Error::Compute(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> Clone for Error<E> {
    fn clone(&self) -> Self {
        match self {
            Error::Compute(e) => Error::Compute(e.clone()),
            Error::Busy => Error::Busy,
            Error::WaitTimeout(d) => Error::WaitTimeout(*d),
            Error::Panicked => Error::Panicked,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Compute(e) => write!(f, "computation failed: {e}"),
            Error::Busy => f.write_str("another caller is computing this key (fail-fast policy)"),
            Error::WaitTimeout(d) => {
                write!(
                    f,
                    "gave up waiting for another caller's computation after {d:?}"
                )
            }
            Error::Panicked => f.write_str("the computation panicked"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Error<E> {}

/// A builder rejected its configuration. The message names the field.
///
/// ```
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<String, u32>::new(100).unwrap();
/// let err = memoize_stampede(&store, Duration::from_secs(1))
///     .beta(-1.0)
///     .build_blocking_infallible(|_k: &String| 1)
///     .err()
///     .unwrap();
/// assert_eq!(err.field(), "beta");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
    /// The name of the offending field (`beta`, `ttl`, `capacity`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}
