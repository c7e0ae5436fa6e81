//! The distributed lock in Redis: a held lease ([`HeldLock`]) renewed while its holder computes
//! and released only by its owner, and the per-key [`RedisLock`] for the barrier layer.
//!
//! Acquire is `SET lock token NX PX lease` with a random 128-bit token; renewal and release are
//! Lua scripts that act only if the stored token is still ours, so a holder that lost its lease
//! (paused, partitioned) can neither extend nor delete a newer holder's lock.

use crate::lock::{jitter, Lock, LockError, WaitMode};
use crate::store::redis::{scripts, Keys, RedisStore};
use serde::Serialize;
use std::time::{Duration, Instant};

/// A held distributed lock: renewed in the background while held, released (by the owner only)
/// when dropped without a write.
pub struct HeldLock {
    store: RedisStore,
    lock_key: Vec<u8>,
    channel: Vec<u8>,
    pub(crate) token: Vec<u8>,
    renewal: Option<tokio::task::JoinHandle<()>>,
    armed: bool,
}

impl HeldLock {
    pub(crate) fn new(
        store: RedisStore,
        lock_key: Vec<u8>,
        channel: Vec<u8>,
        token: Vec<u8>,
        lease: Duration,
        max_hold: Duration,
    ) -> Self {
        let conn = store.inner.conn.clone();
        let (k, t) = (lock_key.clone(), token.clone());
        let renewal = conn.handle.clone().spawn(async move {
            let started = Instant::now();
            let every = lease / 3;
            loop {
                tokio::time::sleep(every).await;
                if started.elapsed() + lease > max_hold {
                    tracing::warn!("lock held for the maximum; no more renewals");
                    return;
                }
                let (k, t) = (k.clone(), t.clone());
                let ms = lease.as_millis() as u64;
                let renewed: Result<i64, _> = conn
                    .call(move |mut m| async move {
                        scripts::RENEW
                            .key(k)
                            .arg(t)
                            .arg(ms)
                            .invoke_async(&mut m)
                            .await
                    })
                    .await;
                if matches!(renewed, Ok(0)) {
                    return; // lost: someone else owns it now
                }
            }
        });
        HeldLock {
            store,
            lock_key,
            channel,
            token,
            renewal: Some(renewal),
            armed: true,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        if self.armed {
            let conn = self.store.inner.conn.clone();
            let (k, t, c) = (
                self.lock_key.clone(),
                self.token.clone(),
                self.channel.clone(),
            );
            conn.handle.clone().spawn(async move {
                let _ = conn
                    .call(move |mut m| async move {
                        scripts::RELEASE
                            .key(k)
                            .arg(t)
                            .arg(c)
                            .invoke_async::<i64>(&mut m)
                            .await
                    })
                    .await;
            });
        }
    }
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldLock")
    }
}

/// A cross-process per-key lock in Redis, for [`barrier`](crate::barrier).
///
/// Waiters are woken by the releasing holder's publish; a holder that dies frees the key when
/// its lease lapses (it is renewed while held).
///
/// ```no_run
/// use herdless::{barrier, memoize, store::RedisStore};
/// use std::time::{Duration, Instant};
/// let store = RedisStore::new("redis://127.0.0.1:6379/").unwrap();
/// let inner = memoize(&store, Duration::from_secs(1))
///     .name("page")
///     .build_blocking_infallible(|k: &String| format!("<h1>{k}</h1>"))
///     .unwrap();
/// let locked = barrier(store.lock("page").lease(Duration::from_secs(2))).wrap_blocking(inner);
/// let page = memoize(&store, Duration::ZERO).name("page").wrap_blocking(locked).unwrap();
/// println!("{}", page.get(&"home".to_string()).unwrap());
/// ```
#[derive(Clone)]
pub struct RedisLock {
    pub(crate) store: RedisStore,
    pub(crate) name: String,
    pub(crate) lease: Duration,
}

impl RedisLock {
    /// The lease of one hold (default 5 s), renewed while held.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }
}

/// A held [`RedisLock`] (released on drop). If Redis is unreachable the barrier fails open:
/// the guard is empty and the caller proceeds.
pub struct RedisGuard(#[allow(dead_code)] Option<HeldLock>);

impl<K: Serialize + Send + Sync + 'static> Lock<K> for RedisLock {
    type Guard = RedisGuard;

    async fn acquire(
        &self,
        key: &K,
        max_wait: Option<Duration>,
        mode: WaitMode,
    ) -> Result<RedisGuard, LockError> {
        let Ok(keys) = self.store.keys(&format!("barrier:{}", self.name), key) else {
            return Ok(RedisGuard(None)); // an unencodable key cannot be locked: fail open
        };
        let deadline = max_wait.map(|d| Instant::now() + d);
        let mut poll = Duration::from_millis(2);
        loop {
            let token = RedisStore::token();
            let (l, t, ms) = (
                keys.lock.clone(),
                token.clone(),
                self.lease.as_millis() as u64,
            );
            let got: Result<i64, _> = self
                .store
                .inner
                .conn
                .call(move |mut m| async move {
                    scripts::TRY_LOCK
                        .key(l)
                        .arg(t)
                        .arg(ms)
                        .invoke_async(&mut m)
                        .await
                })
                .await;
            match got {
                Ok(1) => {
                    let k = Keys {
                        value: keys.value.clone(),
                        lock: keys.lock.clone(),
                        channel: keys.channel.clone(),
                    };
                    return Ok(RedisGuard(Some(self.store.held(
                        k,
                        token,
                        self.lease,
                        Duration::from_secs(3600),
                    ))));
                }
                Ok(_) => {}
                Err(_) => return Ok(RedisGuard(None)), // fail-open
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if max_wait == Some(Duration::ZERO) {
                return Err(LockError::Busy);
            }
            if left.is_some_and(|l| l.is_zero()) {
                return Err(LockError::Timeout(max_wait.unwrap_or_default()));
            }
            let wait = left.map_or(poll, |l| l.min(poll));
            self.store
                .wait_channel(&keys.channel, None, jitter(wait), mode)
                .await;
            poll = (poll * 2).min(Duration::from_millis(100));
        }
    }
}
