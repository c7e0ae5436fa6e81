//! The Lua scripts: each is one round trip and atomic on the server.
//!
//! Per entry, KEYS[1] is the value key, KEYS[2] the lock key and KEYS[3] the version key; ARGV as
//! documented per script. The channel is passed as an argument (it shares the keys' hash tag, so
//! everything one script touches lives in one Cluster slot).
//!
//! **Versions (the fencing token applied to the data).** The version key holds a per-entry
//! counter, bumped by every write that lands and by every invalidation. A computation gets the
//! counter's value as its *ticket* when it takes the lock (or asks for a ticket without one); its
//! write lands only if the counter still equals the ticket, i.e. nothing was written or
//! invalidated since it started, and nobody else holds the lock now. So a late write never replaces a newer one, an invalidation
//! cannot be undone by a computation that was already running, and a holder whose lock lapsed
//! (a stalled Redis, an evicted lock key) still stores its value when nobody overtook it or
//! took the lock over. A
//! missing counter starts from the server's clock in microseconds, so a counter that expired or
//! was evicted never comes back at a value an old ticket still holds.

use redis::Script;
use std::sync::LazyLock;

/// Shared Lua prelude: the entry's version, created from the server clock when absent.
const VERSION_FN: &str = r#"
local function version(k, keep)
  local n = redis.call('GET', k)
  if not n then
    local t = redis.call('TIME')
    n = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
    redis.call('SET', k, n, 'PX', keep)
  end
  return n
end
"#;

/// Shared Lua prelude: the server's time in ms, and the remaining *logical* life (ms) of a record
/// (its expiry is in its header, see `record`; the key itself lives longer by the grace of
/// `stale_if_error`). `nil` for a missing key, another type or a record of another format.
const REMAINING_FN: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function stamp(k)
  local h = redis.pcall('GETRANGE', k, 0, 18)
  if type(h) ~= 'string' or string.sub(h, 1, 3) ~= 'HL\2' then return nil end
  return tonumber(string.sub(h, 4, 19))
end
local function remaining(k)
  local e = stamp(k)
  if not e then return nil end
  return e - now_ms()
end
"#;

fn with_version(body: &str) -> Script {
    Script::new(&format!("{VERSION_FN}{REMAINING_FN}{body}"))
}

/// The former read (hits are now one plain `GET`, see `record`); kept for the cluster store's
/// start-up check, which runs it on a key to see that scripts reach every master.
/// The record and its remaining TTL in one atomic step; the size is checked before the
/// record is sent, so an oversized one never crosses the wire. ARGV[1] = max bytes.
/// Returns {value, pttl}, {false, -2} missing, {false, -3} another Redis type (`pcall` turns
/// WRONGTYPE into a value instead of a script failure the breaker would count), {false, -4, len}
/// too large.
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local len = redis.pcall('STRLEN', KEYS[1])
if type(len) == 'table' and len.err then return {false, -3} end
if len == 0 then return {false, -2} end
if len > tonumber(ARGV[1]) then return {false, -4, len} end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"#,
    )
});

/// Hard-miss leader: the value if it landed meanwhile, else try the lock.
/// ARGV[1] = owner token, ARGV[2] = lease ms, ARGV[3] = max bytes, ARGV[4] = '1' to ignore the
/// stored value (the caller could not decode it: recompute it under the lock), ARGV[5] = ms the
/// version key is kept.
/// Returns {1, value, remaining ms} found, {2, ticket} acquired, {3} busy. An oversized record, a
/// key of another type, a record of the previous format or one past its logical expiry (kept
/// for `stale_if_error`) is not "found": it is replaced under the lock. A foreign string is
/// "found": the caller counts it as undecodable and asks again with ARGV[4] = '1'.
///
/// Idempotent for its own token: a replay (redis-rs retries a request whose connection failed,
/// and the first run may have landed) that finds the lock held by ARGV[1] acquired it, so the
/// caller computes instead of waiting out its own orphaned lease.
pub(crate) static LOCK_OR_GET: LazyLock<Script> = LazyLock::new(|| {
    with_version(
        r#"
if ARGV[4] ~= '1' and redis.call('TYPE', KEYS[1])['ok'] == 'string'
    and redis.call('STRLEN', KEYS[1]) <= tonumber(ARGV[3]) then
  local left = remaining(KEYS[1])
  local old = string.sub(redis.call('GETRANGE', KEYS[1], 0, 2), 1, 3) == 'HL\1'
  if (left and left > 0) or (not left and not old) then
    return {1, redis.call('GET', KEYS[1]), left or 1}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, version(KEYS[3], ARGV[5])}
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {2, version(KEYS[3], ARGV[5])}
end
return {3}
"#,
    )
});

/// Early refresh: take the lock without waiting unless the value was replaced since it was read
/// or someone holds the lock. "Replaced" is decided by identity when the reader knows the
/// record's stamp (its header expiry, unique per write): another stamp is another write. A
/// missing record (expired, invalidated) is not "replaced": the refresh goes ahead. Without a
/// stamp, by time: its remaining logical life exceeds what the reader saw, plus slack.
/// ARGV[1] = token, ARGV[2] = lease ms, ARGV[3] = the remaining ms the reader saw + slack,
/// ARGV[4] = ms the version key is kept, ARGV[5] = the stamp the reader saw or ''.
/// Returns {1, ticket} acquired, {0} skip. Idempotent for its own token, like [`LOCK_OR_GET`].
pub(crate) static TRY_LOCK_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    with_version(
        r#"
if ARGV[5] ~= '' then
  local e = stamp(KEYS[1])
  if e and e ~= tonumber(ARGV[5]) then return {0} end
elseif (remaining(KEYS[1]) or -1) > tonumber(ARGV[3]) then
  return {0}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, version(KEYS[3], ARGV[4])}
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, version(KEYS[3], ARGV[4])}
end
return {0}
"#,
    )
});

/// A ticket without a lock, for a computation that runs unlocked (it waited past its patience,
/// or the value was unreadable): its write is fenced like a locked one.
/// ARGV[1] = ms the version key is kept. Returns the ticket.
pub(crate) static TICKET: LazyLock<Script> = LazyLock::new(|| {
    with_version(
        r#"
return version(KEYS[3], ARGV[1])
"#,
    )
});

/// Write, fenced by the version: lands only if the counter still equals the writer's ticket and
/// nobody else holds the lock (a holder whose lease lapsed still writes if nobody overtook it). A
/// write without a ticket (`insert`) lands unconditionally and, like every write, bumps the
/// version, so computations already running cannot overwrite it. The writer's lock is released either way, and waiters
/// are woken, in the same step. `PUBLISH` is a `pcall`: an ACL without channel permission must
/// not fail a write that already happened; the script reports the refusal instead, and the
/// caller raises the fleet's "announcements missed" marker (see `missed`).
/// The record's header gets its logical expiry (now + ttl, server clock); the key lives
/// ttl + grace (`stale_if_error`).
/// ARGV[1] = lock token or '', ARGV[2] = record, ARGV[3] = ttl ms, ARGV[4] = channel,
/// ARGV[5] = ticket or '', ARGV[6] = ms the version key is kept, ARGV[7] = grace ms.
/// Returns 1 written, 3 written but its announcement refused, 0 fenced (something newer was
/// written, or the key was invalidated).
///
/// Idempotent for its own write: a replay (see [`LOCK_OR_GET`]) that finds the version exactly
/// one past its ticket and its own record stored (the same bytes but for the expiry the first
/// run stamped into the header) finds the bump its first run made, and
/// reports it written instead of fenced. (Another writer with byte-identical bytes would have
/// stored the same record: reporting success is true either way.)
pub(crate) static WRITE: LazyLock<Script> = LazyLock::new(|| {
    with_version(
        r#"
local holder = redis.call('GET', KEYS[2])
local mine = ARGV[1] ~= '' and holder == ARGV[1]
if mine then redis.call('DEL', KEYS[2]) end
if ARGV[5] == '' then
  version(KEYS[3], ARGV[6])
elseif (holder and not mine) or redis.call('GET', KEYS[3]) ~= ARGV[5] then
  -- Its own record: the same bytes but for the expiry the first run stamped (bytes 4-19).
  local stored = redis.call('GET', KEYS[1])
  if redis.call('GET', KEYS[3]) == string.format('%.0f', tonumber(ARGV[5]) + 1)
      and stored and string.sub(stored, 1, 3) == string.sub(ARGV[2], 1, 3)
      and string.sub(stored, 20) == string.sub(ARGV[2], 20) then
    return 1
  end
  if mine then redis.pcall('PUBLISH', ARGV[4], '0') end
  return 0
end
local ttl = tonumber(ARGV[3])
local rec = string.sub(ARGV[2], 1, 3) .. string.format('%016.0f', math.min(now_ms() + ttl, 9999999999999999)) .. string.sub(ARGV[2], 20)
redis.call('SET', KEYS[1], rec, 'PX', ttl + tonumber(ARGV[7]))
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
local p = redis.pcall('PUBLISH', ARGV[4], '1')
if type(p) == 'table' and p.err then return 3 end
return 1
"#,
    )
});

/// Release without writing (the computation failed or was abandoned); wakes waiters so one of
/// them takes over at once. KEYS[1] = lock key; ARGV[1] = token, ARGV[2] = channel.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[2], '0')
  return 1
end
return 0
"#,
    )
});

/// Invalidation: drop the value and the lock and bump the version, so no computation that
/// started before it can write; wake waiters. ARGV[1] = channel, ARGV[2] = ms the version key
/// is kept. Returns 1, or 2 when the announcement was refused.
pub(crate) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    with_version(
        r#"
redis.call('DEL', KEYS[1], KEYS[2])
version(KEYS[3], ARGV[2])
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local p = redis.pcall('PUBLISH', ARGV[1], '2')
if type(p) == 'table' and p.err then return 2 end
return 1
"#,
    )
});

/// Lease renewal by the owner only. KEYS[1] = lock key; ARGV[1] = token, ARGV[2] = lease ms.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

pub(super) fn all() -> [&'static Script; 8] {
    [
        &INVALIDATE,
        &READ,
        &LOCK_OR_GET,
        &TRY_LOCK_REFRESH,
        &TICKET,
        &WRITE,
        &RELEASE,
        &RENEW,
    ]
}

#[cfg(test)]
mod tests {
    //! Replays against a private `redis-server` (skipped without one, unless `CI` is set).
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    struct Server(Child, u16);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn server() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            assert!(std::env::var_os("CI").is_none(), "redis-server missing");
            return None;
        };
        let s = Server(child, port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }

    const KEYS: [&str; 3] = ["t:{k}:v", "t:{k}:l", "t:{k}:n"];

    fn lock_or_get(con: &mut redis::Connection, token: &str) -> redis::Value {
        LOCK_OR_GET
            .key(&KEYS[..])
            .arg(token)
            .arg(10_000)
            .arg(1 << 20)
            .arg("0")
            .arg(60_000)
            .invoke(con)
            .unwrap()
    }

    /// Writes a record of the current format (magic, 16 expiry digits the script stamps, body).
    fn write(con: &mut redis::Connection, token: &str, body: &str, ticket: &str) -> i64 {
        WRITE
            .key(&KEYS[..])
            .arg(token)
            .arg(format!("HL\x02{:016}{body}", 0))
            .arg(60_000)
            .arg("t:{k}:c")
            .arg(ticket)
            .arg(60_000)
            .arg(0)
            .invoke(con)
            .unwrap()
    }

    fn ticket(v: &redis::Value) -> String {
        match v {
            redis::Value::Array(a) => {
                assert_eq!(a[0], redis::Value::Int(2), "acquired: {v:?}");
                redis::from_redis_value(&a[1]).unwrap()
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }

    #[test]
    fn replayed_lock_and_write_are_idempotent_for_their_own_token() {
        let Some(s) = server() else { return };
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", s.1)).unwrap();
        let mut con = client.get_connection().unwrap();
        // A replayed lock-or-get finds its own lock: acquired (same ticket), not busy.
        let first = ticket(&lock_or_get(&mut con, "me"));
        let again = ticket(&lock_or_get(&mut con, "me"));
        assert_eq!(first, again);
        assert_eq!(
            lock_or_get(&mut con, "other"),
            redis::Value::Array(vec![redis::Value::Int(3)]),
            "another token still finds the lock busy"
        );
        // A replayed write finds its own version bump and record: written, not fenced.
        assert_eq!(write(&mut con, "me", "rec-1", &first), 1);
        assert_eq!(write(&mut con, "me", "rec-1", &first), 1, "replay");
        // A different write on the same old ticket is still fenced.
        assert_eq!(write(&mut con, "", "rec-2", &first), 0);
        // And once anything else moved the version, the replay is fenced too.
        assert_eq!(write(&mut con, "", "rec-3", ""), 1);
        assert_eq!(write(&mut con, "me", "rec-1", &first), 0);
        // A replayed early refresh finds its own lock: acquired again.
        let refresh = |con: &mut redis::Connection| -> redis::Value {
            TRY_LOCK_REFRESH
                .key(&KEYS[..])
                .arg("me2")
                .arg(10_000)
                .arg(u64::MAX / 2)
                .arg(60_000)
                .arg("")
                .invoke(con)
                .unwrap()
        };
        for _ in 0..2 {
            match refresh(&mut con) {
                redis::Value::Array(a) => assert_eq!(a[0], redis::Value::Int(1)),
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
}
