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
    /// The closure panicked in the caller that ran it. Every caller coalesced onto that
    /// computation receives this (the panicking caller itself gets its panic back); nothing is
    /// stored and the key is not poisoned: the next call computes again.
    Panicked,
    /// The batch loader ([`Builder::build_batch`](crate::Builder::build_batch)) returned no
    /// value for this key. Only this key fails; nothing is cached for it.
    MissingFromBatch,
}

impl<E> Error<E> {
    /// The closure's error, if that is what this is.
    pub fn compute_error(&self) -> Option<&E> {
        match self {
            Error::Compute(e) => Some(e),
            _ => None,
        }
    }

    /// The shared closure's error, if that is what this is (clone the `Arc` to keep it).
    ///
    /// ```
    /// use herdless::Error;
    /// use std::sync::Arc;
    /// let e: Error<String> = Error::Compute(Arc::new("db down".to_string()));
    /// let shared: Arc<String> = e.compute_arc().unwrap().clone();
    /// assert_eq!(*shared, "db down");
    /// assert!(Error::<String>::Busy.compute_arc().is_none());
    /// ```
    pub fn compute_arc(&self) -> Option<&Arc<E>> {
        match self {
            Error::Compute(e) => Some(e),
            _ => None,
        }
    }

    /// The closure's error by value: `Ok(e)` when this is [`Error::Compute`] and no other
    /// caller shares the error (`Arc::try_unwrap`), otherwise `Err(self)` unchanged (another
    /// kind of error, or a coalesced waiter still holds a clone; see
    /// [`Error::compute_arc`]).
    ///
    /// ```
    /// use herdless::{memoize_stampede, Error, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u32, u32>::new(16).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(1))
    ///     .build_blocking(|_k: &u32| Err::<u32, _>(std::io::Error::other("db down")))
    ///     .unwrap();
    /// let err: Error<std::io::Error> = f.get(&1).unwrap_err();
    /// let io: std::io::Error = err.into_compute().unwrap();
    /// assert_eq!(io.to_string(), "db down");
    ///
    /// let busy: Error<std::io::Error> = Error::Busy;
    /// assert!(matches!(busy.into_compute(), Err(Error::Busy)));
    /// ```
    pub fn into_compute(self) -> Result<E, Self> {
        match self {
            Error::Compute(e) => Arc::try_unwrap(e).map_err(Error::Compute),
            other => Err(other),
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
            Error::MissingFromBatch => Error::MissingFromBatch,
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
            Error::MissingFromBatch => {
                f.write_str("the batch loader returned no value for this key")
            }
        }
    }
}

/// `source()` is the closure's error for [`Error::Compute`], so error reporters (`anyhow`,
/// `tracing`) show the whole chain. Closures that fail with a plain `String` or `&str` get no
/// `std::error::Error` impl; wrap the message in an error type (or `std::io::Error::other`).
///
/// ```
/// use herdless::Error;
/// use std::error::Error as _;
/// use std::sync::Arc;
/// let e: Error<std::io::Error> = Error::Compute(Arc::new(std::io::Error::other("db down")));
/// assert_eq!(e.source().unwrap().to_string(), "db down");
/// assert!(Error::<std::io::Error>::Busy.source().is_none());
/// // `Infallible` is an error type too:
/// let _: &dyn std::error::Error = &Error::<std::convert::Infallible>::Panicked;
/// ```
impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Compute(e) => Some(&**e),
            _ => None,
        }
    }
}

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
