//! The Redis key layout and owner tokens.
//!
//! `<prefix>:{<hex(name)>.<generation>.<hex(msgpack(key))>}:v` (value), `...:l` (lock),
//! `...:c` (channel), `...:n` (version). One hash tag per (function, generation, key), so a value,
//! its lock, its version and its channel share a Cluster slot. Per function,
//! `<prefix>:{<hex(name)>}:g` holds the generation (bumped by `invalidate_all`) and
//! `<prefix>:{<hex(name)>}:c` announces it. Barrier locks live under `{!<hex(name)>.<hex(key)>}`.
//! A cluster store's breaker probes read (`EXISTS`, never write) `<prefix>:{~probe<n>}`.
//! Hex has no `.`, `{` or `}`, so no user key or name can collide with another's or with a lock.

use crate::store::contract::{StoreError, StoreErrorKind};
use serde::Serialize;

/// The keys of one (function, key) pair.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) value: Vec<u8>,
    pub(crate) lock: Vec<u8>,
    pub(crate) channel: Vec<u8>,
    /// The entry's version counter (the fencing token of its writes; see `scripts`).
    pub(crate) version: Vec<u8>,
}

pub(crate) fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    // Two digits per byte from one table lookup, into space reserved once: a hit builds its
    // key on every call (it showed in the Redis hit's instruction profile, issue 23).
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
            i += 1;
        }
        t
    };
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.extend_from_slice(&PAIRS[*b as usize]);
    }
}

/// The key space of one store: everything under its prefix.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    pub(crate) prefix: String,
}

impl KeySpace {
    /// The keys of one (function, key) pair. A key that cannot be encoded is a store error, so
    /// the call fails open instead of sharing one bogus Redis key with other unencodable keys.
    pub(crate) fn keys<K: Serialize + ?Sized>(
        &self,
        name: &str,
        generation: u64,
        key: &K,
    ) -> Result<Keys, StoreError> {
        self.keys_raw(None, Some(generation), name, key)
    }

    /// Only the value key of [`KeySpace::keys`]: what a hit reads, built in one allocation
    /// (plus the key's encoding) instead of four keys.
    pub(crate) fn value_key<K: Serialize + ?Sized>(
        &self,
        name: &str,
        generation: u64,
        key: &K,
    ) -> Result<Vec<u8>, StoreError> {
        let mut k = self.base(None, Some(generation), name, key, 2)?;
        k.extend_from_slice(b":v");
        Ok(k)
    }

    /// The key holding function `name`'s generation.
    pub(crate) fn generation_key(&self, name: &str) -> Vec<u8> {
        self.function_key(name, b":g")
    }

    /// The channel announcing function `name`'s new generations.
    pub(crate) fn generation_channel(&self, name: &str) -> Vec<u8> {
        self.function_key(name, b":c")
    }

    /// The sorted set counting the processes that share this prefix (see `fleet`).
    pub(crate) fn fleet_key(&self) -> Vec<u8> {
        let mut k = self.prefix.as_bytes().to_vec();
        k.extend_from_slice(b":{fleet}:z");
        k
    }

    /// The fleet's "announcements missed" marker (see `missed`).
    pub(crate) fn missed_key(&self) -> Vec<u8> {
        let mut k = self.prefix.as_bytes().to_vec();
        k.extend_from_slice(b":{missed}:n");
        k
    }

    fn function_key(&self, name: &str, suffix: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 6 + 2 * name.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(b":{");
        hex(name.as_bytes(), &mut k);
        k.push(b'}');
        k.extend_from_slice(suffix);
        k
    }

    /// `prefix:{[marker]hex(name).[generation.]hex(key)}`, with room for `spare` more bytes.
    fn base<K: Serialize + ?Sized>(
        &self,
        marker: Option<u8>,
        generation: Option<u64>,
        name: &str,
        key: &K,
        spare: usize,
    ) -> Result<Vec<u8>, StoreError> {
        // A typical key encodes into a buffer on the stack (no allocation on a hit's path); a
        // longer one, or one that fails, is encoded again into a `Vec` (whose error is the one
        // reported).
        let mut stack = [0u8; 96];
        let mut heap = Vec::new();
        let encoded: &[u8] = {
            let mut rest: &mut [u8] = &mut stack;
            let fits = rmp_serde::encode::write(&mut rest, key).is_ok();
            let used = 96 - rest.len();
            if fits {
                &stack[..used]
            } else {
                rmp_serde::encode::write(&mut heap, key).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Encode,
                        format!("the key cannot be encoded: {e}"),
                    )
                })?;
                &heap
            }
        };
        let mut base =
            Vec::with_capacity(self.prefix.len() + 26 + spare + 2 * (name.len() + encoded.len()));
        base.extend_from_slice(self.prefix.as_bytes());
        base.extend_from_slice(b":{");
        base.extend(marker);
        hex(name.as_bytes(), &mut base);
        base.push(b'.');
        if let Some(g) = generation {
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut n = g;
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            base.extend_from_slice(&digits[at..]);
            base.push(b'.');
        }
        hex(encoded, &mut base);
        base.push(b'}');
        Ok(base)
    }

    /// `marker`: a non-hex byte opening the hash tag, giving a key space of its own.
    fn keys_raw<K: Serialize + ?Sized>(
        &self,
        marker: Option<u8>,
        generation: Option<u64>,
        name: &str,
        key: &K,
    ) -> Result<Keys, StoreError> {
        let base = self.base(marker, generation, name, key, 0)?;
        let with = |suffix: &[u8]| {
            let mut k = base.clone();
            k.extend_from_slice(suffix);
            k
        };
        Ok(Keys {
            value: with(b":v"),
            lock: with(b":l"),
            channel: with(b":c"),
            version: with(b":n"),
        })
    }
}

impl KeySpace {
    /// The keys of a [`RedisLock`](super::RedisLock) named `name`: a key space of their own
    /// (`{!…}`: `!` is not a hex digit, so no function's key can equal a barrier lock's).
    pub(crate) fn barrier_keys<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: &K,
    ) -> Result<Keys, StoreError> {
        self.keys_raw(Some(b'!'), None, name, key)
    }
}

/// Escapes Redis glob characters (`* ? [ ] \`) so that `s` matches only itself.
pub(crate) fn glob_escape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 4);
    for b in s.bytes() {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// A random 128-bit owner token, hex-encoded.
pub(crate) fn token() -> Vec<u8> {
    let mut t = Vec::with_capacity(32);
    hex(&rand::random::<u128>().to_le_bytes(), &mut t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is a contract with data already in Redis (and other processes' builds).
    #[test]
    fn the_layout_is_stable() {
        let space = KeySpace {
            prefix: "p".to_string(),
        };
        // "f" = 0x66; msgpack "k" = a1 6b; every byte value hexes to two lower-case digits.
        assert_eq!(space.value_key("f", 12, "k").unwrap(), b"p:{66.12.a16b}:v");
        let mut out = Vec::new();
        hex(&[0x00, 0x0f, 0xa5, 0xff], &mut out);
        assert_eq!(out, b"000fa5ff");
    }

    /// A hit reads the key every write and invalidation addresses: the short form is the same.
    #[test]
    fn the_value_key_alone_is_the_value_key_of_the_set() {
        let space = KeySpace {
            prefix: "p".to_string(),
        };
        for generation in [0, 7, 10, 1_234_567_890, u64::MAX] {
            for key in ["", "k", "a longer key with spaces"] {
                let all = space.keys("f", generation, key).unwrap();
                assert_eq!(space.value_key("f", generation, key).unwrap(), all.value);
                let text = String::from_utf8(all.value).unwrap();
                assert!(text.contains(&format!(".{generation}.")), "{text}");
            }
        }
    }
}
