//! Hits in flight together share one pipeline (issue 23).
//!
//! On a multi-threaded Tokio runtime every request a task hands to redis-rs's multiplexed
//! connection wakes the connection's task at once (the scheduler's LIFO slot), so each request
//! goes out in its own `writev`, and each may have to wake a sleeping server: under concurrency
//! that per-request cost, more than the commands themselves, capped herdless's hits (0.3 × a
//! raw `GET` at 50 tasks). So a hit that starts while another hit of the same store awaits its
//! reply does not send its `GETRANGE` itself: it joins the open batch, and one task, spawned by
//! the batch's first member onto the caller's runtime (yielding once, so that the tasks already
//! ready to run may join meanwhile), sends the batch as one pipeline and hands each member its
//! reply. A batch that reaches [`BATCH`] members is sent at once by a task of its own, and the
//! next hit opens a new one. A hit with no other in flight (one task, a quiet service) is sent
//! at once, exactly as before: no wait is added where there is nothing to share. So is a hit
//! made outside a task (a `block_on` future): its runtime might not run the batch's task.
//!
//! Only a single node's hits coalesce (a cluster pipeline would have to be split by slot). The
//! batch is one call of [`Conn::call_direct`]: one timeout, one breaker booking, the same
//! fail-open errors, handed to every member.

use super::conn::Conn;
use super::plain::{self, Got};
use crate::store::contract::{StoreError, StoreErrorKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The most hits one pipeline carries. A batch that fills goes at once, so that the server
/// works on it while the next one forms: with 50 tasks on one connection, caps of 12 to 24
/// served about the same (0.7 to 0.85 × raw `GET`s), one batch of every ready task (no cap)
/// 0.55 ×, and 4 and 8 less than 16 (`examples/redis_load.rs`, 2026-12-08).
pub(crate) const BATCH: usize = 16;

/// One hit waiting in the open batch.
struct Member {
    key: Vec<u8>,
    max: usize,
    reply: oneshot::Sender<Result<Got, StoreError>>,
}

/// A store's hits in flight and the batch not yet sent.
#[derive(Default)]
pub(crate) struct Coalesce {
    in_flight: AtomicUsize,
    /// The open batch; a flush task is scheduled while it is not empty.
    open: Mutex<Vec<Member>>,
}

/// Counts a hit in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The read of a hit: sent at once when no other hit is in flight, else batched (see the
/// module). `Err` when the batch could not be sent or its task was dropped (a runtime
/// shutting down), like any failed read.
pub(super) async fn get(
    conn: &Arc<Conn>,
    value_key: Vec<u8>,
    max: usize,
) -> Result<Got, StoreError> {
    let state = &conn.coalesce;
    let others = state.in_flight.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(&state.in_flight);
    // Only a hit made from inside a task joins a batch: the batch's task is spawned on the
    // caller's runtime, which then surely runs it. A `block_on` future (`Handle::block_on` on
    // a current-thread runtime nobody drives, say) sends its own.
    if others == 0 || tokio::task::try_id().is_none() || !conn.may_coalesce() {
        return plain::get(conn, value_key, max).await;
    }
    let (reply, answer) = oneshot::channel();
    let (first, full) = {
        let mut open = state.open.lock().unwrap_or_else(|p| p.into_inner());
        open.push(Member {
            key: value_key,
            max,
            reply,
        });
        let full = (open.len() >= BATCH).then(|| std::mem::take(&mut *open));
        (open.len() == 1, full)
    };
    if let Some(batch) = full {
        // A full batch goes now, while the tasks after it form the next one: the server works
        // on it meanwhile instead of waiting for one batch of every ready task.
        let conn = conn.clone();
        tokio::spawn(async move { send(&conn, batch).await });
    } else if first {
        let conn = conn.clone();
        tokio::spawn(async move { flush(&conn).await });
    }
    answer.await.unwrap_or_else(|_| {
        Err(StoreError::new(
            StoreErrorKind::Other,
            "the batched read was dropped before its reply (runtime shutting down)",
        ))
    })
}

/// Sends the open batch as one pipeline and answers its members.
async fn flush(conn: &Arc<Conn>) {
    // A task spawned from a worker runs next (the LIFO slot), before the tasks already ready
    // could join; yielding defers it until they have run.
    tokio::task::yield_now().await;
    let batch = std::mem::take(&mut *conn.coalesce.open.lock().unwrap_or_else(|p| p.into_inner()));
    send(conn, batch).await;
}

/// Sends `batch` as one pipeline and answers its members.
async fn send(conn: &Arc<Conn>, mut batch: Vec<Member>) {
    batch.retain(|m| !m.reply.is_closed());
    if batch.len() <= 1 {
        if let Some(m) = batch.pop() {
            let got = plain::get(conn, m.key, m.max).await;
            let _ = m.reply.send(got);
        }
        return;
    }
    let mut pipe = redis::Pipeline::with_capacity(batch.len());
    for m in &batch {
        pipe.add_command(plain::getrange(&m.key, m.max));
    }
    let count = batch.len();
    let replies = conn
        .call_direct(move |mut c| async move {
            redis::aio::ConnectionLike::req_packed_commands(&mut c, &pipe, 0, count).await
        })
        .await;
    match replies {
        Ok(values) if values.len() == count => {
            for (m, v) in batch.into_iter().zip(values) {
                let _ = m.reply.send(Got::from_reply(conn, v));
            }
        }
        Ok(values) => {
            let e = StoreError::new(
                StoreErrorKind::Protocol,
                format!("{} replies to a pipeline of {count} reads", values.len()),
            );
            batch
                .into_iter()
                .for_each(|m| drop(m.reply.send(Err(e.clone()))));
        }
        Err(e) => batch
            .into_iter()
            .for_each(|m| drop(m.reply.send(Err(e.clone())))),
    }
}
