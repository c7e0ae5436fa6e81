//! The hot path without a task hop: a caller on a Tokio runtime awaits the multiplexed
//! connection itself instead of spawning the request onto the store's runtime and awaiting its
//! `JoinHandle` (issue 23). Timeout, breaker and the counters are the same as [`Conn::call`]'s;
//! the request is polled inside the store's runtime context, so its timer (and anything redis-rs
//! spawns) lives there, whatever runtime the caller is on.
//!
//! Why [`Conn::call`] spawns: a cancelled half-open probe must still book its outcome, or the
//! breaker would stay half-open for good. So a call goes direct only while its breaker is
//! closed, and a direct call dropped before it is booked while the circuit is open (it raced
//! the opening and may be the probe) books a failure: the circuit re-opens for a cooldown
//! instead of hanging half-open.

use super::{Cause, Conn, Connection, Stats, Touch};
use crate::store::contract::StoreError;
use std::future::Future;
use std::sync::Arc;

/// Books a failure for a direct call dropped while the circuit is open (see the module).
struct Unbooked<'a> {
    conn: &'a Conn,
    touch: &'a Touch,
    booked: bool,
}

impl Drop for Unbooked<'_> {
    fn drop(&mut self) {
        if self.booked {
            return;
        }
        let breaker = if self.conn.cluster {
            self.touch.range().map(|r| self.conn.breakers.get(r))
        } else {
            Some(self.conn.breakers.get(0))
        };
        if let Some(b) = breaker.filter(|b| b.is_open()) {
            b.failure();
        }
    }
}

impl Conn {
    /// The caller's runtime, if the call may skip the task hop: the caller runs on a Tokio
    /// runtime (and not inside a blocking call), in the process that made the store, and no
    /// breaker is open.
    fn direct_runtime(&self) -> Option<tokio::runtime::Handle> {
        let current = tokio::runtime::Handle::try_current().ok()?;
        (!crate::wait::in_block_on()
            && crate::pid::current() == self.pid
            && !self.breakers.any_open())
        .then_some(current)
    }

    /// A hit may join a batch (see `coalesce`): a single node's direct call.
    pub(crate) fn may_coalesce(&self) -> bool {
        !self.cluster && self.direct_runtime().is_some()
    }

    /// `e` as this store reports it.
    pub(crate) fn error(&self, e: &redis::RedisError) -> StoreError {
        crate::store::redis::connect::store_error(&self.slot.url, e)
    }

    /// [`Conn::call`] without the task hop when the caller runs on a Tokio runtime (and not
    /// inside a blocking call) and no breaker is open; [`Conn::call`] otherwise.
    pub(crate) async fn call_direct<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let Some(current) = self.direct_runtime() else {
            return self.call(f).await;
        };
        // A single node's breaker is asked here; a cluster's when the key is known (`Routed`).
        if !self.cluster && !self.breakers.get(0).allow() {
            Stats::inc(&self.stats.rejected_open);
            return Err(super::circuit_open());
        }
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        Stats::inc(&self.stats.round_trips);
        // Only a cluster's calls record their range in a `Touch` (its routed connection holds
        // a clone); a single node's share one that nothing writes, saving an allocation a hit.
        let own;
        let touch: &Arc<Touch> = if self.cluster {
            own = Arc::new(Touch::default());
            &own
        } else {
            &super::breaker::UNTOUCHED
        };
        let mut guard = Unbooked {
            conn: self,
            touch,
            booked: false,
        };
        // A hit from a task of another runtime than the store's may use that runtime's own
        // connection (see `local`); read before the store's context is entered below. From a
        // task only: its runtime surely drives that connection's task, which a current-thread
        // runtime reached through `Handle::block_on` from another thread would not.
        let caller = Some(current).filter(|h| {
            !self.cluster && h.id() != self.handle.id() && tokio::task::try_id().is_some()
        });
        let run = self.run(f, deadline, touch, caller.as_ref());
        let mut run = std::pin::pin!(run);
        let out: Result<T, (StoreError, Cause)> = std::future::poll_fn(|cx| {
            let _in_store_runtime = self.handle.enter();
            run.as_mut().poll(cx)
        })
        .await;
        self.book(&out, touch);
        guard.booked = true;
        out.map_err(|(e, _)| e)
    }
}
