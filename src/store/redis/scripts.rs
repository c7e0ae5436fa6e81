//! The Lua scripts: each is one round trip and atomic on the server.
//!
//! KEYS[1] is always the value key, KEYS[2] the lock key; ARGV[...] as documented per script.
//! The channel is passed as an argument (it shares the keys' hash tag, so it is cluster-ready).

use redis::Script;
use std::sync::LazyLock;

/// Read: the record and its remaining TTL in one atomic step.
/// Returns {value|false, pttl} or {false, -3} when the key holds another Redis type (`pcall`
/// turns GET's WRONGTYPE error into a value instead of failing the script, which the client
/// would count as a server failure).
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v.err then return {false, -3} end
if not v then return {false, -2} end
return {v, redis.call('PTTL', KEYS[1])}
"#,
    )
});

/// Hard-miss leader: the value if it landed meanwhile, else try the lock.
/// ARGV[1] = owner token, ARGV[2] = lease ms.
/// Returns {1, value, pttl} found, {2} acquired, {3} busy.
pub(crate) static LOCK_OR_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then return {1, redis.call('GET', KEYS[1]), pttl} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
"#,
    )
});

/// Early refresh: take the lock without waiting unless the value was replaced since it was read
/// (its PTTL now exceeds what the reader saw, plus slack) or someone holds the lock.
/// ARGV[1] = token, ARGV[2] = lease ms, ARGV[3] = the remaining ms the reader saw + slack.
/// Returns 1 acquired, 0 skip.
pub(crate) static TRY_LOCK_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local pttl = redis.call('PTTL', KEYS[1])
if pttl > tonumber(ARGV[3]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#,
    )
});

/// Write with the lock: only the owner writes; the write, the release and the wake-up happen
/// together. ARGV[1] = token, ARGV[2] = record, ARGV[3] = ttl ms, ARGV[4] = channel.
/// Returns 1 written, 0 fenced (the lock is gone or someone else's).
pub(crate) static WRITE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.pcall('PUBLISH', ARGV[4], '1')
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

/// Invalidation: drop the value and the lock, so a holder that computed from data older than
/// the invalidation finds its lock gone and its write fenced off; wake waiters.
/// KEYS[1] = value key, KEYS[2] = lock key; ARGV[1] = channel.
pub(crate) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.pcall('PUBLISH', ARGV[1], '2')
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

/// Barrier lock: take it if free. KEYS[1] = lock key; ARGV[1] = token, ARGV[2] = lease ms.
pub(crate) static TRY_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
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
        &WRITE_RELEASE,
        &RELEASE,
        &RENEW,
        &TRY_LOCK,
    ]
}
