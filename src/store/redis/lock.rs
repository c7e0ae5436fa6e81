//! The distributed lock in Redis: a held lease ([`HeldLock`]) renewed while its holder computes
//! and released only by its owner, and the per-key [`RedisLock`] for the barrier layer.
//!
//! Acquire is `SET lock token NX PX lease` with a random 128-bit token; renewal and release are
//! Lua scripts that act only if the stored token is still ours, so a holder that lost its lease
//! (paused, partitioned) can neither extend nor delete a newer holder's lock.

use super::conn::Conn;
use super::keys::{token, KeySpace, Keys};
use super::plain;
use super::scripts;
use crate::lock::{Lock, LockError};
use crate::store::contract::{StoreError, StoreErrorKind};
use crate::wait::{Contention, Patience, WaitMode};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A write permit: a held distributed lock and/or a version ticket (see the `scripts` module).
///
/// A held lock is renewed in the background while held and released (by the owner only) when
/// dropped without a write. Renewal retries promptly after a failed attempt, so a short Redis
/// stall does not let the lease lapse; if it lapses anyway (a long stall, an evicted lock key),
/// the ticket still lets the write land as long as nothing newer was written meanwhile.
pub struct HeldLock {
    conn: Arc<Conn>,
    lock_key: Vec<u8>,
    channel: Vec<u8>,
    /// Empty for a ticket without a lock.
    pub(crate) token: Vec<u8>,
    /// The entry's version when this permit was granted; the write lands only if it is unchanged.
    pub(crate) ticket: Option<Vec<u8>>,
    renewal: Option<tokio::task::JoinHandle<()>>,
    armed: bool,
}

/// How soon a failed renewal is retried.
const RENEW_RETRY: Duration = Duration::from_millis(50);

impl HeldLock {
    pub(crate) fn new(
        conn: Arc<Conn>,
        keys: Keys,
        token: Vec<u8>,
        ticket: Option<Vec<u8>>,
        lease: Duration,
        max_hold: Duration,
    ) -> Self {
        let (lock_key, channel) = (keys.lock, keys.channel);
        let (k, t) = (lock_key.clone(), token.clone());
        let renewer = conn.clone();
        let renewal = conn.handle.spawn(async move {
            let started = Instant::now();
            // Four renewals per lease: three may fail (each bounded by the call timeout, which
            // the lease is sized to exceed) before the lease can lapse.
            let every = lease / 4;
            let mut next = every;
            loop {
                tokio::time::sleep(next).await;
                if started.elapsed() + lease > max_hold {
                    tracing::warn!("lock held for the maximum; no more renewals");
                    return;
                }
                let (k, t) = (k.clone(), t.clone());
                let ms = lease.as_millis().min(u64::MAX as u128) as u64;
                let renewed: Result<i64, _> = if renewer.plain_commands() {
                    plain::renew(&renewer, k, t, ms).await
                } else {
                    renewer
                        .call(move |mut m| async move {
                            scripts::RENEW
                                .key(k)
                                .arg(t)
                                .arg(ms)
                                .invoke_async(&mut m)
                                .await
                        })
                        .await
                };
                next = match renewed {
                    Ok(0) => return, // lost: someone else owns it now (the ticket still fences)
                    Ok(_) => every,
                    Err(_) => RENEW_RETRY.min(every),
                };
            }
        });
        HeldLock {
            conn,
            lock_key,
            channel,
            token,
            ticket,
            renewal: Some(renewal),
            armed: true,
        }
    }

    /// A ticket without a lock: nothing to renew or release.
    pub(crate) fn ticket_only(conn: Arc<Conn>, keys: Keys, ticket: Vec<u8>) -> Self {
        HeldLock {
            conn,
            lock_key: keys.lock,
            channel: keys.channel,
            token: Vec::new(),
            ticket: Some(ticket),
            renewal: None,
            armed: false,
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
            let conn = self.conn.clone();
            let (k, t, c) = (
                self.lock_key.clone(),
                self.token.clone(),
                self.channel.clone(),
            );
            conn.handle.clone().spawn(async move {
                if conn.plain_commands() {
                    let _ = plain::release(&conn, k, t, c, "0").await;
                    return;
                }
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

/// Runs an acquiring request on the store's runtime as a task of its own and awaits it. If the
/// caller gives up (a dropped future, a timeout around the call), the task still finishes and
/// drops its result: a lock the script took is then released at once through [`HeldLock`]'s
/// drop, instead of staying held for a whole lease with nobody to renew or release it.
pub(crate) async fn acquiring<T: Send + 'static>(
    conn: &Arc<Conn>,
    request: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    if let Some(err) = conn.would_deadlock() {
        return Err(err); // a blocking caller on the runtime's own worker: the task never runs
    }
    match conn.handle.spawn(request).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::new(
            StoreErrorKind::Other,
            format!("store task failed: {e}"),
        )),
    }
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The owner token is left out: whoever has it can release or extend the lock.
        f.debug_struct("HeldLock")
            .field("lock_key", &String::from_utf8_lossy(&self.lock_key))
            .field("armed", &self.armed)
            .finish_non_exhaustive()
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
    pub(crate) conn: Arc<Conn>,
    pub(crate) space: KeySpace,
    pub(crate) name: String,
    pub(crate) lease: Duration,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.name)
            .field("lease", &self.lease)
            .finish()
    }
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

impl std::fmt::Debug for RedisGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(held) => f.debug_tuple("RedisGuard").field(held).finish(),
            // Redis was unreachable: the barrier failed open without a lock.
            None => f.write_str("RedisGuard(not held)"),
        }
    }
}

impl<K: Serialize + Send + Sync + 'static> Lock<K> for RedisLock {
    type Guard = RedisGuard;

    async fn acquire(
        &self,
        key: &K,
        policy: Contention,
        mode: WaitMode,
    ) -> Result<RedisGuard, LockError> {
        let Ok(keys) = self.space.barrier_keys(&self.name, key) else {
            return Ok(RedisGuard(None)); // an unencodable key cannot be locked: fail open
        };
        let mut patience = Patience::new(policy);
        // At least four renewal intervals' worth of call timeouts (see `HeldLock`).
        let lease = self.lease.max(self.conn.op_timeout * 4);
        loop {
            let (conn, k) = (self.conn.clone(), keys.clone());
            let got = acquiring(&self.conn, async move {
                let token = token();
                let (l, t, ms) = (k.lock.clone(), token.clone(), lease.as_millis() as u64);
                let got = plain::try_lock(&conn, l, t, ms).await?;
                Ok(got
                    .then(|| HeldLock::new(conn, k, token, None, lease, Duration::from_secs(3600))))
            })
            .await;
            match got {
                Ok(Some(held)) => return Ok(RedisGuard(Some(held))),
                Ok(None) => {}
                Err(_) => return Ok(RedisGuard(None)), // fail-open
            }
            if patience.fail_fast() {
                return Err(LockError::Busy);
            }
            let Some(wait) = patience.next_poll() else {
                return Err(LockError::Timeout(policy.max_wait()));
            };
            self.conn
                .wait_channel(&keys.channel, Some(&keys.lock), wait, mode)
                .await;
        }
    }
}
