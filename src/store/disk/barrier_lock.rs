//! [`DiskLock`]: the disk store's per-key lock for [`barrier`](crate::barrier), across the
//! processes of one machine.

use super::handle::DiskStore;
use super::locks::{lock_byte, Locks};
use crate::lock::{Lock, LockError};
use crate::wait::{Contention, Patience, WaitMode};
use std::hash::Hash;
use std::sync::Arc;

/// A cross-process per-key lock on a [`DiskStore`]'s lock file, for
/// [`barrier`](crate::barrier): one holder per key across every thread and process of the
/// machine; a holder that dies (even by SIGKILL) frees the key at once, and waiters are woken
/// by the kernel.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herdless::{barrier, memoize, store::DiskStore};
/// use std::time::Duration;
/// let dir = std::env::temp_dir().join(format!("herdless-doc-disklock-{}", std::process::id()));
/// let store = DiskStore::open(&dir)?;
/// let inner = memoize(&store, Duration::from_secs(1))
///     .name("page")
///     .build_blocking_infallible(|k: &String| format!("<h1>{k}</h1>"))?;
/// let locked = barrier(store.lock("page")).wrap_blocking(inner);
/// let page = memoize(&store, Duration::ZERO).name("page").wrap_blocking(locked)?;
/// assert_eq!(page.get(&"home".to_string())?, "<h1>home</h1>");
/// # drop(page); drop(store); std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Clone)]
pub struct DiskLock {
    store: DiskStore,
    /// The key space of this lock (kept apart from the store's own record locks).
    name: String,
}

impl std::fmt::Debug for DiskLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskLock")
            .field("name", &self.name)
            .finish()
    }
}

/// A held [`DiskLock`] (released on drop). If the lock file fails, the barrier fails open: the
/// guard is empty and the caller proceeds.
pub struct DiskGuard {
    locks: Arc<Locks>,
    byte: Option<u64>,
}

impl std::fmt::Debug for DiskGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskGuard")
            .field("held", &self.byte.is_some())
            .finish()
    }
}

impl Drop for DiskGuard {
    fn drop(&mut self) {
        if let Some(b) = self.byte.take() {
            self.locks.release(b);
        }
    }
}

impl DiskStore {
    /// A cross-process per-key lock for [`barrier`](crate::barrier), named like a function.
    pub fn lock(&self, name: &str) -> DiskLock {
        DiskLock {
            store: self.clone(),
            name: format!("\u{0}barrier\u{0}{name}"),
        }
    }
}

impl<K: Hash + Send + Sync + 'static> Lock<K> for DiskLock {
    type Guard = DiskGuard;

    async fn acquire(
        &self,
        key: &K,
        policy: Contention,
        mode: WaitMode,
    ) -> Result<DiskGuard, LockError> {
        let inner = &self.store.inner;
        let byte = lock_byte(&inner.hash_key.record_key(&self.name, key));
        let locks = inner.locks.clone();
        let mut patience = Patience::new(policy);
        loop {
            match locks.try_acquire(byte) {
                Ok(true) => {
                    return Ok(DiskGuard {
                        locks,
                        byte: Some(byte),
                    })
                }
                Ok(false) => {}
                Err(_) => return Ok(DiskGuard { locks, byte: None }), // fail-open
            }
            if patience.fail_fast() {
                return Err(LockError::Busy);
            }
            let Some(wait) = patience.next_poll() else {
                return Err(LockError::Timeout(policy.max_wait()));
            };
            locks.wait(byte, wait, mode).await;
        }
    }
}
