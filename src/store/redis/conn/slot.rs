//! The connection slot of a store: one multiplexed connection shared by every call, opened and
//! re-opened by one background task with backoff. A caller never waits for a connect past its
//! own deadline, and while the last attempt failed (refused, credentials refused, no answer)
//! it fails at once with that error instead of paying a timeout.
//!
//! For a cluster store the slot holds a redis-rs cluster connection instead: opened the same way
//! (in the background, scripts loaded on every node), but never torn down by a failed request
//! afterwards, since redis-rs reconnects node by node and refreshes its slot map itself.
//!
//! Why not redis-rs's `ConnectionManager`: its first reconnect waits about a second whatever
//! its `max_delay` says, inside the caller's call, so a refused port or a wrong password was
//! reported after ~1.5 s, and as a timeout.

use super::local::{self, Found, Locals, Target};
use super::progress::Progress;
use crate::store::contract::{StoreError, StoreErrorKind};
use crate::store::redis::connect::{classify, connect_error};
use crate::store::redis::scripts;
use crate::wait::jitter;
use redis::aio::MultiplexedConnection;
#[cfg(feature = "cluster")]
use redis::cluster_async::ClusterConnection;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The first pause between two failed connection attempts, and the largest: a refused connect
/// costs one round trip, so retrying often is cheap and a restarted server is found soon.
const FIRST_RETRY: Duration = Duration::from_millis(20);
const MAX_RETRY: Duration = Duration::from_millis(500);

/// What the background task tells the store about (for stats, breaker and logs).
pub(crate) enum SlotEvent<'a> {
    /// A connection is up (the first one, or a new one after a failure).
    Connected,
    /// A connection attempt failed.
    Failed(&'a StoreError),
    /// A live connection was given up (it failed or timed out); reconnecting.
    Lost(&'a StoreError),
    /// The server refused this user `SCRIPT LOAD` (NOPERM): the store switches to plain
    /// commands. Reported before the connection is handed out.
    ScriptsRefused(&'a redis::RedisError),
    /// Every script loaded (on a new connection, or on a re-check while refused): the store
    /// uses scripts (again).
    ScriptsAllowed,
}

/// Why [`Slot::get`] has no connection for the caller.
pub(crate) enum Unavailable {
    /// The last attempt failed: reported at once, without waiting.
    Down(StoreError),
    /// The first attempt did not finish before the caller's deadline.
    TimedOut(StoreError),
}

/// What the slot connects to.
pub(crate) enum Raw {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
}

/// An established connection (cheap to clone).
#[derive(Clone)]
pub(crate) enum Ready {
    /// With the connection's [`Progress`] over TCP (none over TLS or a Unix socket).
    Single(MultiplexedConnection, Option<Progress>),
    /// redis-rs keeps one connection per node behind it and repairs them itself.
    #[cfg(feature = "cluster")]
    Cluster(ClusterConnection),
}

impl Ready {
    /// The connection's [`Progress`], if it keeps one.
    fn progress(&self) -> Option<&Progress> {
        match self {
            Ready::Single(_, p) => p.as_ref(),
            #[cfg(feature = "cluster")]
            Ready::Cluster(_) => None,
        }
    }
}

enum State {
    /// Nothing asked for a connection yet (the store is lazy: building it does no I/O).
    Idle,
    Ready(Ready),
    /// The background task is connecting; `last` is why the previous attempt or the previous
    /// connection failed (`None` while the very first attempt runs).
    Down {
        last: Option<StoreError>,
    },
}

struct Inner {
    state: State,
    /// Bumped on every new connection, so that a failure seen on an old one cannot tear down
    /// its successor.
    generation: u64,
    /// A liveness probe of this generation's connection is under way (see [`Slot::suspect`]),
    /// started at this instant.
    probing: Option<std::time::Instant>,
}

type Report = Box<dyn Fn(SlotEvent<'_>) + Send + Sync>;

pub(crate) struct Slot {
    client: Raw,
    /// The URL for messages, password redacted.
    pub(crate) url: String,
    /// Bound of one connection attempt (connect, authenticate, load the scripts). Generous:
    /// no caller waits for it, and an attempt that hangs on a paused server completes as soon
    /// as the server resumes.
    attempt_bound: Duration,
    handle: tokio::runtime::Handle,
    inner: Mutex<Inner>,
    changed: Notify,
    report: Report,
    /// Connections of other runtimes, for their hits (see `local`), and the TCP address that
    /// they and the store's own connection open (`None`: not over TCP, or a cluster).
    locals: Locals,
    local_target: Option<Target>,
}

/// A connection handed to a call, with what the call needs to know about it.
pub(crate) struct Checked {
    pub(crate) ready: Ready,
    pub(crate) generation: u64,
    /// See [`Slot::silent`].
    pub(crate) silent: bool,
    /// The runtime whose own connection this is (see `local`); `None`: the store's.
    pub(crate) local: Option<tokio::runtime::Id>,
}

impl Slot {
    pub(crate) fn new(
        client: Raw,
        url: String,
        attempt_bound: Duration,
        handle: tokio::runtime::Handle,
        report: Report,
    ) -> Arc<Self> {
        let local_target = match &client {
            Raw::Single(c) => match &c.get_connection_info().addr {
                redis::ConnectionAddr::Tcp(host, port) => Some(Target {
                    host: host.clone(),
                    port: *port,
                    info: c.get_connection_info().redis.clone(),
                }),
                _ => None,
            },
            #[cfg(feature = "cluster")]
            Raw::Cluster(_) => None,
        };
        Arc::new(Slot {
            locals: Locals::default(),
            local_target,
            client,
            url,
            attempt_bound,
            handle,
            inner: Mutex::new(Inner {
                state: State::Idle,
                generation: 0,
                probing: None,
            }),
            changed: Notify::new(),
            report,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection and its generation; waits (until `deadline`) only while the very first
    /// attempt is under way. `budget` is the caller's whole timeout, for the message.
    pub(crate) async fn get(
        self: &Arc<Self>,
        deadline: Instant,
        budget: Duration,
    ) -> Result<(Ready, u64), Unavailable> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so a change in between is not missed.
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                match &inner.state {
                    State::Ready(conn) => return Ok((conn.clone(), inner.generation)),
                    State::Down { last: Some(e) } => return Err(Unavailable::Down(e.clone())),
                    State::Down { last: None } => {}
                    State::Idle => {
                        inner.state = State::Down { last: None };
                        self.spawn_connect();
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let err = StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "redis at {}: not connected within {budget:?} (connecting in the \
                         background)",
                        self.url
                    ),
                );
                // Later calls fail at once instead of each waiting out its own deadline.
                if let State::Down { last: last @ None } = &mut self.lock().state {
                    *last = Some(err.clone());
                }
                return Err(Unavailable::TimedOut(err));
            }
        }
    }

    /// The connection of `generation` failed (`err`): drop it and reconnect in the background.
    /// Calls fail at once with `err` until a new connection is up.
    pub(crate) fn broken(self: &Arc<Self>, generation: u64, err: StoreError) {
        {
            let mut inner = self.lock();
            if inner.generation != generation || !matches!(inner.state, State::Ready(_)) {
                return; // already replaced, or already reconnecting
            }
            inner.state = State::Down {
                last: Some(err.clone()),
            };
            self.spawn_connect();
        }
        self.changed.notify_waiters();
        (self.report)(SlotEvent::Lost(&err));
    }

    /// A request on the connection of `generation` got no answer in time. That alone says
    /// nothing about the connection: a large reply, a fork pause or a slow command of another
    /// client delays every reply queued behind it, and the multiplexed connection lets the
    /// caller abandon its own reply (redis-rs drops it when it arrives). So the connection is
    /// kept, and one PING checks it: it is given up only when that PING fails, or is not
    /// answered within the attempt bound while no byte moved on the connection (a dead or
    /// silently dropped connection).
    pub(crate) fn suspect(self: &Arc<Self>, generation: u64) {
        let (con, progress) = {
            let mut inner = self.lock();
            let (con, progress) = match &inner.state {
                State::Ready(Ready::Single(c, p)) if inner.generation == generation => {
                    (c.clone(), p.clone())
                }
                _ => return, // replaced, reconnecting, or a cluster (repaired by redis-rs)
            };
            if inner.probing.is_some() {
                return; // one probe at a time
            }
            inner.probing = Some(std::time::Instant::now());
            (con, progress)
        };
        let this = self.clone();
        self.handle.spawn(async move {
            let mut con = con;
            let started = std::time::Instant::now();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<redis::Value>(&mut con);
            let failed = match tokio::time::timeout(this.attempt_bound, ping).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) if !e.is_timeout() => {
                    Some(crate::store::redis::connect::store_error(&this.url, &e))
                }
                // Bytes moved meanwhile (the PING waits behind large replies): alive.
                _ if progress.is_some_and(|p| p.last() > started) => None,
                _ => Some(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "redis at {}: the connection answered no PING within {:?}",
                        this.url, this.attempt_bound
                    ),
                )),
            };
            {
                let mut inner = this.lock();
                if inner.generation == generation {
                    inner.probing = None;
                }
            }
            if let Some(err) = failed {
                this.broken(generation, err);
            }
        });
    }

    /// Whether the connection of `generation` is silent: a call on it timed out, nothing was
    /// received since, and its PING probe is still out. Calls then fail at once instead of each
    /// paying its timeout (a paused server), as they would on a dropped connection; the first
    /// byte that arrives (a large reply after all) ends this.
    pub(crate) fn silent(&self, generation: u64, progress: Option<&Progress>) -> bool {
        Self::silent_in(&self.lock(), generation, progress)
    }

    fn silent_in(inner: &Inner, generation: u64, progress: Option<&Progress>) -> bool {
        match inner.probing {
            Some(since) if inner.generation == generation => {
                progress.is_none_or(|p| p.last() <= since)
            }
            _ => false,
        }
    }

    /// [`Slot::get`] and [`Slot::silent`] of its connection: one lock when the connection is
    /// up (a hit's path), and no `Notify` registration, which only a wait for it needs.
    pub(crate) async fn get_checked(
        self: &Arc<Self>,
        deadline: Instant,
        budget: Duration,
        caller: Option<&tokio::runtime::Handle>,
    ) -> Result<Checked, Unavailable> {
        {
            let inner = self.lock();
            if let State::Ready(conn) = &inner.state {
                if let Some(rt) = caller {
                    if let Some((con, progress, runtime)) = self.local(rt, inner.generation) {
                        let silent = Self::silent_in(&inner, inner.generation, Some(&progress));
                        return Ok(Checked {
                            ready: Ready::Single(con, Some(progress)),
                            generation: inner.generation,
                            silent,
                            local: Some(runtime),
                        });
                    }
                }
                let silent = Self::silent_in(&inner, inner.generation, conn.progress());
                return Ok(Checked {
                    ready: conn.clone(),
                    generation: inner.generation,
                    silent,
                    local: None,
                });
            }
        }
        // Boxed: waiting for a connection is rare, and its state (a `Notified`, a timer) would
        // otherwise grow every call's future.
        let (conn, generation) = Box::pin(self.get(deadline, budget)).await?;
        let silent = self.silent(generation, conn.progress());
        Ok(Checked {
            ready: conn,
            generation,
            silent,
            local: None,
        })
    }

    /// Runtime `rt`'s own connection under `generation`, if it has one up; starts opening one
    /// there if it has none (see `local`). `None` for the store's own runtime, or without a TCP
    /// target.
    fn local(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        generation: u64,
    ) -> Option<(MultiplexedConnection, Progress, tokio::runtime::Id)> {
        let target = self.local_target.as_ref()?;
        if rt.id() == self.handle.id() {
            return None;
        }
        match self.locals.get(rt.id(), generation) {
            Found::Ready(con, progress) => Some((con, progress, rt.id())),
            Found::Open => {
                rt.spawn(local::open(
                    Arc::downgrade(self),
                    target.clone(),
                    generation,
                    self.attempt_bound,
                ));
                None
            }
            Found::None => None,
        }
    }

    /// The runtimes' own connections (see `local`).
    pub(crate) fn locals(&self) -> &Locals {
        &self.locals
    }

    /// Loads the scripts again on the current connection (a store in plain-command mode asks
    /// periodically whether an administrator granted scripting meanwhile); reports
    /// [`SlotEvent::ScriptsAllowed`] or [`SlotEvent::ScriptsRefused`]. Bounded by the attempt
    /// bound; does nothing without a connection (the next connect loads them anyway).
    pub(crate) async fn recheck_scripts(&self) {
        let ready = match &self.lock().state {
            State::Ready(r) => r.clone(),
            _ => return,
        };
        let check = async {
            match ready {
                Ready::Single(mut c, _) => self.load_scripts(&mut c).await,
                #[cfg(feature = "cluster")]
                Ready::Cluster(mut c) => self.load_scripts(&mut c).await,
            }
        };
        let _ = tokio::time::timeout(self.attempt_bound, check).await;
    }

    /// Called with the state just set to `Down`: exactly one task runs while it is.
    fn spawn_connect(self: &Arc<Self>) {
        self.handle.spawn(reconnect(Arc::downgrade(self)));
    }

    /// One attempt: connect (redis-rs authenticates and selects the database), then load the
    /// scripts so that the first real call is one round trip.
    async fn open(&self) -> Result<Ready, StoreError> {
        match &self.client {
            Raw::Single(client) => {
                if let Some(target) = &self.local_target {
                    // Over TCP the stream notes when bytes arrive (see `Progress`). The attempt
                    // is bounded as a whole.
                    let open = async {
                        let (mut con, progress, driver) = local::open_tracked(target).await?;
                        // Ends when every clone of the connection is gone.
                        self.handle.spawn(driver);
                        self.load_scripts(&mut con).await?;
                        Ok(Ready::Single(con, Some(progress)))
                    };
                    return self.bounded(open).await;
                }
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(self.attempt_bound)
                    .set_response_timeout(self.attempt_bound)
                    // TCP keepalive: a connection a middlebox dropped silently is ended by the
                    // kernel instead of failing one call timeout at a time.
                    .set_tcp_settings(super::subscriber::tcp_settings());
                let open = async {
                    let mut con = client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?;
                    self.load_scripts(&mut con).await?;
                    Ok(Ready::Single(con, None))
                };
                self.bounded(open).await
            }
            #[cfg(feature = "cluster")]
            Raw::Cluster(client) => {
                // `SCRIPT LOAD` goes to every node (replicas included, so a promoted replica
                // has the scripts); a node that lacks one later answers NOSCRIPT and redis-rs
                // loads it there.
                let open = async {
                    let mut con = client.get_async_connection().await?;
                    self.load_scripts(&mut con).await?;
                    Ok(Ready::Cluster(con))
                };
                // redis-rs folds the seeds' I/O errors into one message ("Failed to create
                // initial connections: Connection refused …"): keep the refusal recognizable.
                self.bounded(open).await.map_err(|e| {
                    if e.kind() == StoreErrorKind::Other
                        && e.message().contains("Connection refused")
                    {
                        StoreError::new(StoreErrorKind::ConnectionRefused, e.message())
                    } else {
                        e
                    }
                })
            }
        }
    }

    /// Loads the scripts so that the first real call is one round trip.
    async fn load_scripts(
        &self,
        con: &mut impl redis::aio::ConnectionLike,
    ) -> Result<(), redis::RedisError> {
        for s in scripts::all() {
            if let Err(e) = s.prepare_invoke().load_async(con).await {
                if breaks_connection(&e) || classify(&e) == StoreErrorKind::Authentication {
                    return Err(e);
                }
                if e.code() == Some("NOPERM") {
                    (self.report)(SlotEvent::ScriptsRefused(&e));
                }
                // Not a connection problem: calls load scripts on first use anyway
                // (EVALSHA falls back to EVAL) and report their own errors.
                return Ok(());
            }
        }
        // Every connect re-checks: a grant made while refused takes effect here too.
        (self.report)(SlotEvent::ScriptsAllowed);
        Ok(())
    }

    /// One connection attempt, bounded by `attempt_bound`.
    async fn bounded(
        &self,
        attempt: impl std::future::Future<Output = Result<Ready, redis::RedisError>>,
    ) -> Result<Ready, StoreError> {
        match tokio::time::timeout(self.attempt_bound, attempt).await {
            Ok(Ok(con)) => Ok(con),
            Ok(Err(e)) => Err(connect_error(&self.url, &e)),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "redis at {}: no answer within {:?} while connecting (host unreachable, or \
                     the server is paused or overloaded)",
                    self.url, self.attempt_bound
                ),
            )),
        }
    }
}

/// Whether a request's error means the connection itself is gone or out of step. A timeout
/// (redis-rs's own response timeout is an I/O error of kind `TimedOut`) does not: see
/// [`Slot::suspect`].
pub(crate) fn breaks_connection(e: &redis::RedisError) -> bool {
    !e.is_timeout()
        && (e.is_io_error()
            || e.is_unrecoverable_error()
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS")))
}

/// The background task: attempts until one succeeds, pausing with jittered exponential backoff
/// between failures. Ends when the slot is gone.
async fn reconnect(slot: Weak<Slot>) {
    let mut pause = FIRST_RETRY;
    loop {
        let Some(s) = slot.upgrade() else { return };
        match s.open().await {
            Ok(conn) => {
                {
                    let mut inner = s.lock();
                    inner.generation = inner.generation.wrapping_add(1);
                    inner.probing = None;
                    inner.state = State::Ready(conn);
                }
                s.changed.notify_waiters();
                (s.report)(SlotEvent::Connected);
                return;
            }
            Err(e) => {
                (s.report)(SlotEvent::Failed(&e));
                s.lock().state = State::Down { last: Some(e) };
                s.changed.notify_waiters();
            }
        }
        drop(s);
        tokio::time::sleep(jitter(pause)).await;
        pause = pause.saturating_mul(2).min(MAX_RETRY);
    }
}
