//! Per-function generations: what makes `invalidate_all` one command instead of a scan.
//!
//! Every entry key of a function carries the function's current generation
//! (`{<hex(name)>.<generation>.<hex(key)>}`). `invalidate_all` increments the generation
//! (`INCR <prefix>:{<hex(name)>}:g`) and announces it on the function's channel; from then on
//! every process reads and writes under the new generation, and the old entries, unreachable,
//! expire by their TTL. Nothing scans the keyspace, and a computation that was running under the
//! old generation writes where nobody reads.
//!
//! Each process caches the generation per function. The first operation of a function reads it
//! (one extra round trip per function and process), and so does the first operation after an
//! announcement arrives (pub/sub, usually within a millisecond on one host) or after the
//! subscription reconnects (messages may have been lost). Besides, a copy older than
//! [`RECHECK`] (while pub/sub is down or refused) or [`RECHECK_LIVE`] (while it is healthy) is
//! re-read in the background, off the callers' path. So another process stops serving the old
//! entries within one message delay while pub/sub is healthy, and within [`RECHECK`] plus one
//! round trip when it is not.
//!
//! **A generation cannot go backwards or split the fleet** (issue 18, finding 2). The key can be
//! lost: `FLUSHALL`, a restart without persistence, eviction, a failover that loses the last
//! `INCR`. Processes that read it before keep their copy, and a process that starts afterwards
//! would begin at 0: two key spaces, and an `invalidate` from one side would not reach the other.
//! So every read and every bump is one script that passes the generation this process holds:
//! when the key is missing, unreadable, or *behind* that copy (which only a loss can cause: the
//! server's value otherwise only grows), the script re-seeds it to the server's clock in
//! microseconds, or to the copy + 1 if that is higher, and announces it. Why this and not a
//! re-seed from 0 or from the copy alone: the clock is above every generation handed out before
//! (they started from an earlier clock and grew by one per `invalidate_all`), so no process can
//! hold the new value already, and the copy + 1 covers a server clock that went backwards. Every
//! process converges on the server's value (`fetch_max` from below; a process still above it
//! ratchets the server past itself on its next read), and none keeps a generation the server
//! no longer has for longer than one message delay after the re-seed, or [`RECHECK`] when the
//! announcement is lost too. Entries of the lost generation are left behind (their keys are no
//! longer read): after a loss every function recomputes once. Counted in
//! `RedisStats::generation_reseeds`.
//!
//! `INCR` and its announcement are one script (neither happens without the other), and a refused
//! announcement raises the fleet's "announcements missed" marker (see `missed`). The subscriber
//! raises a copy's announcement counter *before* near tiers hear the same message, so a near
//! miss right after the drop re-reads the generation first.

use super::conn::{Conn, Stats};
use super::keys::KeySpace;
use super::missed;
use crate::store::contract::{StoreError, StoreErrorKind};
use redis::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How old a copy of a function's generation may get while pub/sub is down or refused.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);
/// How long after the server replaced a generation other processes may still be on it: one
/// message delay, or when the announcement is refused or lost, a poll of the fleet's "announcements
/// missed" marker (`missed::POLL`) or [`RECHECK`], with room for round trips and a slow poll. An
/// `invalidate` or `insert` made meanwhile reaches those generations too (see
/// `RedisStore::reach_lagging_processes`).
pub(crate) const LAGGING: Duration = Duration::from_secs(5);
/// How old it may get while pub/sub is healthy (announcements cover it; this is a safety net).
pub(crate) const RECHECK_LIVE: Duration = Duration::from_secs(30);

/// How many replaced generations a function's history list keeps.
const HISTORY: usize = 8;

/// The list of a function's replaced generations (`"<generation>:<server ms>"`, newest first),
/// beside its generation key and in its Cluster slot (the hash tag is kept).
fn history_key(generation_key: &[u8]) -> Vec<u8> {
    let mut k = generation_key.to_vec();
    k.extend_from_slice(b":h");
    k
}

/// Shared prelude: the generation in KEYS[1], re-seeded when missing, unreadable or behind the
/// caller's copy ARGV[2] (a loss), and announced on ARGV[1] then. Sets `reseeded`, `refused`.
const SEED_FN: &str = r#"
local refused = 0
local function announce()
  local p = redis.pcall('PUBLISH', ARGV[1], 'g')
  if type(p) == 'table' and p.err then refused = 1 end
end
local function remember(old)
  if not old or old <= 0 then return end
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local h = KEYS[1] .. ':h'
  redis.call('LPUSH', h, string.format('%.0f:%.0f', old, ms))
  redis.call('LTRIM', h, 0, 7)
  redis.call('PEXPIRE', h, 60000)
end
local held = tonumber(ARGV[2])
local g = tonumber(redis.call('GET', KEYS[1]) or '')
local reseeded = 0
if not g or g < held then
  remember(g)
  remember(held)
  local t = redis.call('TIME')
  g = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if g <= held then g = held + 1 end
  redis.call('SET', KEYS[1], string.format('%.0f', g))
  reseeded = 1
end
"#;

/// Reads the generation (re-seeding a lost one). Returns {generation, reseeded, refused}.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{SEED_FN}\nif reseeded == 1 then announce() end\nreturn {{string.format('%.0f', g), reseeded, refused}}\n"
    ))
});

/// `invalidate_all`: `INCR` and its announcement in one step. Returns as [`READ`].
static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{SEED_FN}\nlocal n = redis.call('INCR', KEYS[1])\nremember(n - 1)\nannounce()\nreturn {{string.format('%.0f', n), reseeded, refused}}\n"
    ))
});

struct Copy {
    generation: AtomicU64,
    /// A background re-read is under way.
    rereading: AtomicBool,
    /// Raised by every announcement on the function's channel (and every resync): the copy
    /// is current only while `valid_for == marks + 1`.
    marks: Arc<AtomicU64>,
    /// `marks + 1` as of the start of the last completed read; 0 = never read.
    valid_for: AtomicU64,
    /// Milliseconds since `Generations::origin` of the last read.
    checked: AtomicU64,
}

/// The generations this store has seen, per function name.
pub(crate) struct Generations {
    origin: Instant,
    copies: Mutex<HashMap<Arc<str>, Arc<Copy>>>,
}

impl Generations {
    pub(crate) fn new() -> Self {
        Generations {
            origin: Instant::now(),
            copies: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// The cached generation of `name` (0 before the first read); no I/O. For tools.
    pub(crate) fn cached(&self, name: &str) -> u64 {
        let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        copies
            .get(name)
            .map_or(0, |c| c.generation.load(Ordering::Acquire))
    }

    /// The generations of `name` the server replaced less than [`LAGGING`] ago (by
    /// `invalidate_all` or a re-seed), other than `current`: processes that have not heard of
    /// the change yet may still read them. One round trip (`TIME` and the function's short
    /// history list, pipelined); no scripting needed.
    pub(crate) async fn recent(
        &self,
        conn: &Arc<Conn>,
        space: &KeySpace,
        name: &str,
        current: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let key = history_key(&space.generation_key(name));
        let ((secs, micros), entries): ((u64, u64), Vec<Vec<u8>>) = conn
            .call(move |mut m| async move {
                redis::pipe()
                    .cmd("TIME")
                    .cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(HISTORY - 1)
                    .query_async(&mut m)
                    .await
            })
            .await?;
        let now_ms = secs * 1000 + micros / 1000;
        let mut out = Vec::new();
        for e in &entries {
            // Untrusted bytes: an entry that does not parse is skipped.
            let Some((g, at)) = std::str::from_utf8(e).ok().and_then(|t| t.split_once(':')) else {
                continue;
            };
            let (Ok(g), Ok(at)) = (g.parse::<u64>(), at.parse::<u64>()) else {
                continue;
            };
            if g != current
                && now_ms.saturating_sub(at) < LAGGING.as_millis() as u64
                && !out.contains(&g)
            {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// Whether `name`'s generation was read (or bumped) by this store.
    pub(crate) fn known(&self, name: &str) -> bool {
        let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        copies
            .get(name)
            .is_some_and(|c| c.valid_for.load(Ordering::Acquire) != 0)
    }

    fn copy(&self, conn: &Arc<Conn>, space: &KeySpace, name: &str) -> Arc<Copy> {
        let mut copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = copies.get(name) {
            return c.clone();
        }
        let c = Arc::new(Copy {
            generation: AtomicU64::new(0),
            rereading: AtomicBool::new(false),
            marks: Arc::new(AtomicU64::new(0)),
            valid_for: AtomicU64::new(0),
            checked: AtomicU64::new(0),
        });
        conn.wakeups
            .watch_generation(space.generation_channel(name), &c.marks);
        missed::watch(conn);
        copies.insert(name.into(), c.clone());
        c
    }

    /// The generation of `name`, read from the server first if it is unknown or was announced
    /// to have changed (if that read fails, the copy held, or an error when there is none), in
    /// the background if the copy is merely old.
    pub(crate) async fn current(
        &self,
        conn: &Arc<Conn>,
        space: &KeySpace,
        name: &str,
    ) -> Result<u64, StoreError> {
        let now = self.now_ms();
        let limit = if conn.wakeups.live.load(Ordering::Acquire) {
            RECHECK_LIVE
        } else {
            RECHECK
        };
        {
            // A hit's path: the copy is current and no re-check is due. Answered under the
            // lock, without cloning the copy's `Arc` (a shared count every core would write).
            let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(copy) = copies.get(name) {
                if copy.valid_for.load(Ordering::Acquire) == copy.marks.load(Ordering::Acquire) + 1
                    && now.saturating_sub(copy.checked.load(Ordering::Acquire))
                        < limit.as_millis() as u64
                {
                    return Ok(copy.generation.load(Ordering::Acquire));
                }
            }
        }
        let copy = self.copy(conn, space, name);
        if copy.valid_for.load(Ordering::Acquire) == copy.marks.load(Ordering::Acquire) + 1 {
            let checked = copy.checked.load(Ordering::Acquire);
            if now.saturating_sub(checked) >= limit.as_millis() as u64
                && !copy.rereading.swap(true, Ordering::AcqRel)
            {
                let (conn2, space2, name2) = (conn.clone(), space.clone(), name.to_string());
                let (copy2, origin) = (copy.clone(), self.origin);
                conn.handle.spawn(async move {
                    let now = origin.elapsed().as_millis() as u64 + 1;
                    let _ = reread(&conn2, &space2, &name2, &copy2, now).await;
                    copy2.rereading.store(false, Ordering::Release);
                });
            }
            return Ok(copy.generation.load(Ordering::Acquire));
        }
        // Boxed: rare (a function's first read, an announced change), and its state would
        // otherwise grow every hit's future (issue 23's profile).
        if let Err(e) = Box::pin(reread(conn, space, name, &copy, now)).await {
            // The generation's shard cannot answer (paused, failing over, breaker open). A copy
            // this process already holds keeps the function's other shards serving: while that
            // shard is down nobody can `invalidate_all` it either, and single-key `invalidate`
            // and `insert` reach the generations replaced in the last `LAGGING`. Without a copy
            // there is nothing to serve by: the error stands.
            let held = copy.generation.load(Ordering::Acquire);
            if held == 0 {
                return Err(e);
            }
            Stats::inc(&conn.stats.generation_fallbacks);
            return Ok(held);
        }
        Ok(copy.generation.load(Ordering::Acquire))
    }

    /// The generation of `name` as the server holds it now (always one round trip). For
    /// `invalidate` and `insert`: called after the data changed, so any `invalidate_all` whose
    /// readers could hold values computed before that change is seen, however late its
    /// announcement reaches this process, or if it never does (this process refused channels).
    pub(crate) async fn fresh(
        &self,
        conn: &Arc<Conn>,
        space: &KeySpace,
        name: &str,
    ) -> Result<u64, StoreError> {
        let copy = self.copy(conn, space, name);
        reread(conn, space, name, &copy, self.now_ms()).await?;
        Ok(copy.generation.load(Ordering::Acquire))
    }

    /// `invalidate_all`: one script that increments the generation and announces it; returns
    /// the new generation, which this process uses from then on.
    pub(crate) async fn bump(
        &self,
        conn: &Arc<Conn>,
        space: &KeySpace,
        name: &str,
    ) -> Result<u64, StoreError> {
        let copy = self.copy(conn, space, name);
        let held = copy.generation.load(Ordering::Acquire);
        let marks = copy.marks.load(Ordering::Acquire);
        let g = run(conn, space, name, held, true).await?;
        copy.generation.fetch_max(g, Ordering::AcqRel);
        copy.valid_for.fetch_max(marks + 1, Ordering::AcqRel);
        Ok(g)
    }
}

/// Reads the generation into `copy`. The copy counts as current only for the announcements
/// it started after.
async fn reread(
    conn: &Arc<Conn>,
    space: &KeySpace,
    name: &str,
    copy: &Copy,
    now: u64,
) -> Result<(), StoreError> {
    let marks = copy.marks.load(Ordering::Acquire);
    let held = copy.generation.load(Ordering::Acquire);
    let g = run(conn, space, name, held, false).await?;
    copy.generation.fetch_max(g, Ordering::AcqRel);
    copy.valid_for.fetch_max(marks + 1, Ordering::AcqRel);
    copy.checked.store(now, Ordering::Release);
    Ok(())
}

/// Runs [`READ`] (or [`BUMP`]) for `name`, or their plain-command form when the server
/// refuses this user scripting; counts a re-seed and reports a refused announcement.
async fn run(
    conn: &Arc<Conn>,
    space: &KeySpace,
    name: &str,
    held: u64,
    bump: bool,
) -> Result<u64, StoreError> {
    let (key, channel) = (space.generation_key(name), space.generation_channel(name));
    let (g, reseeded, refused) = if conn.plain_commands() {
        plain(conn, key, channel.clone(), held, bump).await?
    } else {
        let script: &'static Script = if bump { &BUMP } else { &READ };
        let (g, reseeded, refused): (String, i64, i64) = conn
            .call(move |mut m| async move {
                script
                    .key(key)
                    .arg(channel)
                    .arg(held)
                    .invoke_async(&mut m)
                    .await
            })
            .await?;
        let g = g.parse::<u64>().map_err(|_| {
            StoreError::new(StoreErrorKind::Protocol, "unexpected reply to generation")
        })?;
        (g, reseeded == 1, refused == 1)
    };
    if reseeded {
        Stats::inc(&conn.stats.generation_reseeds);
        tracing::warn!(
            function = name,
            "the generation key of this function was missing or behind this process (FLUSHALL, \
             a restart without persistence, eviction or a lossy failover): re-seeded, so every \
             process moves to one new generation and recomputes once"
        );
    }
    if refused {
        missed::refused(conn).await;
    }
    Ok(g)
}

/// The plain-command form (no scripting): the same steps, not atomic. A missing key is seeded
/// with `SET NX` (processes starting together agree); two processes that both find the key
/// behind their copies may both re-seed, and then the later value wins and both announce it, so
/// the fleet still converges on the server's value.
async fn plain(
    conn: &Arc<Conn>,
    key: Vec<u8>,
    channel: Vec<u8>,
    held: u64,
    bump: bool,
) -> Result<(u64, bool, bool), StoreError> {
    let k = key.clone();
    let got: Option<Vec<u8>> = conn
        .call(move |mut m| async move { redis::cmd("GET").arg(k).query_async(&mut m).await })
        .await?;
    let got = got.and_then(|b| std::str::from_utf8(&b).ok()?.parse::<u64>().ok());
    let mut g = got.filter(|g| *g >= held);
    let reseeded = g.is_none();
    if reseeded {
        // Missing: `SET NX`, so that processes starting together agree on the first seed.
        // Behind this copy (a loss): overwritten.
        let (k, missing) = (key.clone(), got.is_none());
        let seed: u64 = conn
            .call(move |mut m| async move {
                let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut m).await?;
                let seed = (secs * 1_000_000 + micros).max(held + 1);
                let mut set = redis::cmd("SET");
                set.arg(&k).arg(seed);
                if missing {
                    set.arg("NX");
                }
                let _: Option<String> = set.query_async(&mut m).await?;
                let now: Option<u64> = redis::cmd("GET").arg(&k).query_async(&mut m).await?;
                Ok(now.unwrap_or(seed))
            })
            .await?;
        g = Some(seed);
    }
    let mut g = g.unwrap_or(held);
    if reseeded {
        remember_plain(conn, &key, &[got.unwrap_or(0), held]).await?;
    }
    if bump {
        let k = key.clone();
        g = conn
            .call(move |mut m| async move { redis::cmd("INCR").arg(k).query_async(&mut m).await })
            .await?;
        remember_plain(conn, &key, &[g.saturating_sub(1)]).await?;
    }
    if reseeded || bump {
        // `missed::publish` raises the marker itself on a refusal.
        missed::publish(conn, channel, "g").await;
    }
    Ok((g, reseeded, false))
}

/// The plain-command form of the scripts' `remember`: records replaced generations in the
/// function's history list (see [`Generations::recent`]).
async fn remember_plain(conn: &Arc<Conn>, key: &[u8], old: &[u64]) -> Result<(), StoreError> {
    let old: Vec<u64> = old.iter().copied().filter(|g| *g > 0).collect();
    if old.is_empty() {
        return Ok(());
    }
    let h = history_key(key);
    conn.call(move |mut m| async move {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut m).await?;
        let ms = secs * 1000 + micros / 1000;
        let mut p = redis::pipe();
        for g in &old {
            p.cmd("LPUSH").arg(&h).arg(format!("{g}:{ms}")).ignore();
        }
        p.cmd("LTRIM").arg(&h).arg(0).arg(HISTORY - 1).ignore();
        p.cmd("PEXPIRE").arg(&h).arg(60_000).ignore();
        p.query_async::<()>(&mut m).await
    })
    .await
}
