//! The cluster side of a connection: a redis-rs `ClusterConnection` (which owns the slot map,
//! follows `MOVED`/`ASK`, reconnects to nodes and refreshes the topology after a failover)
//! wrapped so that every request passes the breaker of its slot range first.
//!
//! Routing is redis-rs's. The slot computed here only picks the breaker: the breaker of a
//! request is the one of the slot of its first key (the first key of an `EVALSHA`, which is
//! also what redis-rs routes it by; every herdless script touches one slot).

use super::breaker::{Breakers, Touch};
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Arg, Cmd, RedisError, RedisFuture, Value};
use std::sync::Arc;

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and
/// the next `}`, if not empty), else of the whole key, modulo 16384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % super::breaker::SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    // CRC16-XMODEM, a byte per table lookup: every cluster hit hashes its key, and the bitwise
    // form cost about 40 instructions per byte of it (issue 23).
    const TABLE: [u16; 256] = {
        let mut t = [0u16; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u16) << 8;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
                bit += 1;
            }
            t[i] = crc;
            i += 1;
        }
        t
    };
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ TABLE[((crc >> 8) as u8 ^ b) as usize]
    })
}

/// A cluster connection for one call (cheap to clone; requests are pipelined per node).
#[derive(Clone)]
pub(crate) struct Routed {
    pub(crate) con: ClusterConnection,
    pub(crate) breakers: Arc<Breakers>,
    pub(crate) touch: Arc<Touch>,
}

impl Routed {
    /// Lets the call's first keyed command through its range's breaker (later commands of the
    /// same call, e.g. the `SCRIPT LOAD` + `EVALSHA` after a `NOSCRIPT`, ride on that decision).
    fn admit(&self, cmd: Option<&Cmd>) -> Result<(), RedisError> {
        let Some(key) = cmd.and_then(first_key) else {
            return Ok(());
        };
        let range = Breakers::range_of(slot_of(key));
        if !self.touch.claim(range) || self.breakers.get(range).allow() {
            return Ok(());
        }
        self.touch.reject();
        Err(RedisError::from((
            redis::ErrorKind::ClientError,
            "circuit open for this slot range",
        )))
    }
}

/// The first key of a command herdless sends, or `None` for a keyless one (`PUBLISH`,
/// `SCRIPT LOAD`, `PING`).
fn first_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        Arg::Cursor => &[][..],
    });
    let name = args.next()?;
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("EVALSHA") || is("EVAL") || is("EVALSHA_RO") || is("EVAL_RO") {
        let _script = args.next()?;
        let numkeys = args.next()?;
        if numkeys == b"0" {
            return None;
        }
        return args.next();
    }
    if is("PUBLISH") || is("SCRIPT") || is("PING") || is("SPUBLISH") {
        return None;
    }
    args.next()
}

impl ConnectionLike for Routed {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if let Err(e) = self.admit(Some(cmd)) {
            return Box::pin(async move { Err(e) });
        }
        self.con.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if let Err(e) = self.admit(pipeline.cmd_iter().next()) {
            return Box::pin(async move { Err(e) });
        }
        self.con.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        // CRC16/XMODEM's check value.
        assert_eq!(slot_of(b"123456789"), 0x31C3);
    }

    #[test]
    fn first_keys() {
        let mut c = redis::cmd("EVALSHA");
        c.arg("abc").arg(2).arg("k1").arg("k2").arg("a");
        assert_eq!(first_key(&c), Some(&b"k1"[..]));
        let mut p = redis::cmd("PUBLISH");
        p.arg("ch").arg("1");
        assert_eq!(first_key(&p), None);
        let mut g = redis::cmd("GET");
        g.arg("k");
        assert_eq!(first_key(&g), Some(&b"k"[..]));
    }
}
