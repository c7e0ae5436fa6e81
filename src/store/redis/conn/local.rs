//! A connection per caller runtime (issue 23).
//!
//! A store's connection is driven by a task on the store's own runtime. A caller on another
//! runtime (the default store's case: the service's runtime calling a store that runs its own)
//! then crosses threads twice per request: its request wakes the store's thread, which writes
//! it, and the reply wakes the caller's thread. On a loaded machine those wake-ups, not the
//! commands, bound the hits a second. So a hit from another runtime gets a second multiplexed
//! connection whose driver runs on *that* runtime: opened in the background on the runtime's
//! first call (which, like every call until it is up, uses the store's connection), dropped
//! when it fails (the next call retries after [`RETRY`]) or when the store's connection is
//! replaced (it is tied to that connection's generation: a reconnect of the store reconnects
//! these too). Only hits made from a task use it (`Conn::call_direct`: a task's runtime drives
//! the connection's task for sure); locks, writes, scripts and background work stay on the
//! store's connection. Over TCP only (a connection's silence is told by its
//! `Progress`); at most [`MAX`] runtimes per store; an entry whose runtime shut down (its driver
//! task is gone) is pruned when another runtime asks.

use super::progress::{Progress, Tracked};
use redis::aio::MultiplexedConnection;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, Id};
use tokio::task::JoinHandle;

/// Runtimes with a connection of their own, per store.
const MAX: usize = 8;
/// How long after a failed open or a failure of its connection a runtime uses the store's
/// connection before opening another.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

enum State {
    Opening,
    Ready {
        con: MultiplexedConnection,
        progress: Progress,
        driver: JoinHandle<()>,
    },
    Failed(Instant),
}

struct Local {
    runtime: Id,
    /// The store connection's generation this one belongs to.
    generation: u64,
    state: State,
}

/// What [`Locals::get`] found for the calling runtime.
pub(crate) enum Found {
    /// Its own connection.
    Ready(MultiplexedConnection, Progress),
    /// None yet: open one on this runtime (the caller spawns [`open`]).
    Open,
    /// None, and none to open now (opening, failed recently, or the table is full).
    None,
}

/// Where to open a connection: the server's address and its credentials and database.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) info: redis::RedisConnectionInfo,
}

#[derive(Default)]
pub(crate) struct Locals {
    table: Mutex<Vec<Local>>,
}

impl Locals {
    /// The connection of `runtime` under `generation`, or whether to open one.
    pub(crate) fn get(&self, runtime: Id, generation: u64) -> Found {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = table.iter_mut().find(|l| l.runtime == runtime) {
            if l.generation != generation {
                // The store reconnected: this runtime reconnects too.
                *l = Local {
                    runtime,
                    generation,
                    state: State::Opening,
                };
                return Found::Open;
            }
            return match &l.state {
                State::Ready { con, progress, .. } => Found::Ready(con.clone(), progress.clone()),
                State::Opening => Found::None,
                State::Failed(at) if at.elapsed() < RETRY => Found::None,
                State::Failed(_) => {
                    l.state = State::Opening;
                    Found::Open
                }
            };
        }
        // A runtime that shut down took its driver task with it.
        table.retain(|l| !matches!(&l.state, State::Ready { driver, .. } if driver.is_finished()));
        if table.len() >= MAX {
            return Found::None;
        }
        table.push(Local {
            runtime,
            generation,
            state: State::Opening,
        });
        Found::Open
    }

    /// `runtime`'s connection failed: the store's connection serves it for [`RETRY`].
    pub(crate) fn failed(&self, runtime: Id) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = table.iter_mut().find(|l| l.runtime == runtime) {
            l.state = State::Failed(Instant::now());
        }
    }

    /// Records the outcome of an open started under `generation` (ignored if the entry moved
    /// on meanwhile).
    fn opened(
        &self,
        runtime: Id,
        generation: u64,
        out: Option<(MultiplexedConnection, Progress, JoinHandle<()>)>,
    ) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = table
            .iter_mut()
            .find(|l| l.runtime == runtime && l.generation == generation)
        else {
            return;
        };
        l.state = match out {
            Some((con, progress, driver)) => State::Ready {
                con,
                progress,
                driver,
            },
            None => State::Failed(Instant::now()),
        };
    }
}

/// A multiplexed connection to `target` over a TCP stream that notes its [`Progress`], and
/// its driver, for the caller to spawn where the connection's I/O should run (the store's and
/// every runtime's own connection alike). No response timeout of redis-rs's own: each call
/// has its deadline (`Conn::run`).
pub(crate) async fn open_tracked(
    target: &Target,
) -> Result<
    (
        MultiplexedConnection,
        Progress,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    redis::RedisError,
> {
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
    stream.set_nodelay(true)?;
    super::subscriber::keepalive(&stream);
    let progress = Progress::new();
    let stream = Tracked::new(stream, progress.clone());
    let cfg = redis::AsyncConnectionConfig::new();
    let (con, driver) = MultiplexedConnection::new_with_config(&target.info, stream, cfg).await?;
    Ok((con, progress, driver))
}

/// Opens `runtime`'s connection (run as a task on that runtime; bounded by `bound`).
pub(crate) async fn open(
    locals: std::sync::Weak<super::slot::Slot>,
    target: Target,
    generation: u64,
    bound: Duration,
) {
    let runtime = Handle::current().id();
    let attempt = async {
        let (con, progress, driver) = open_tracked(&target).await?;
        // On this runtime: that is the point. It ends when every clone of `con` is gone.
        Ok::<_, redis::RedisError>((con, progress, tokio::spawn(driver)))
    };
    let out = tokio::time::timeout(bound, attempt)
        .await
        .ok()
        .and_then(Result::ok);
    if let Some(slot) = locals.upgrade() {
        slot.locals().opened(runtime, generation, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime_ids(n: usize) -> Vec<Id> {
        (0..n)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .handle()
                    .id()
            })
            .collect()
    }

    /// One open per runtime and generation; a new generation of the store's connection opens
    /// anew; a failure waits out `RETRY`; at most `MAX` runtimes get one.
    #[test]
    fn one_connection_per_runtime_and_generation_at_most_max_runtimes() {
        let locals = Locals::default();
        let ids = runtime_ids(MAX + 1);
        assert!(matches!(locals.get(ids[0], 1), Found::Open));
        assert!(
            matches!(locals.get(ids[0], 1), Found::None),
            "opening already"
        );
        assert!(
            matches!(locals.get(ids[0], 2), Found::Open),
            "the store reconnected"
        );
        locals.opened(ids[0], 2, None);
        assert!(
            matches!(locals.get(ids[0], 2), Found::None),
            "failed just now"
        );
        locals.failed(ids[0]);
        assert!(matches!(locals.get(ids[0], 2), Found::None));
        for id in &ids[1..MAX] {
            assert!(matches!(locals.get(*id, 2), Found::Open));
        }
        assert!(
            matches!(locals.get(ids[MAX], 2), Found::None),
            "a table of {MAX} runtimes is full"
        );
    }
}
