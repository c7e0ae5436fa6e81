//! The Redis store's decoders (mounted as `store::redis::fuzz_hooks`, feature `fuzzing`).
#![allow(missing_docs)] // internal hooks (feature `fuzzing`), documented by their names

use super::announce::{self, Announcement};
use super::keys::KeySpace;
use super::RedisStore;
use crate::entry::Entry;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::OnceLock;

/// The largest record the hooks' store reads back (`max_value_bytes`).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// A store that never connects (port 1): `decode` and `encode` need only its settings.
fn store() -> &'static RedisStore {
    static STORE: OnceLock<RedisStore> = OnceLock::new();
    STORE.get_or_init(|| {
        RedisStore::builder("redis://127.0.0.1:1/")
            .max_value_bytes(MAX_VALUE_BYTES)
            .build()
            .expect("a valid URL")
    })
}

/// The record bytes `RedisStore` writes for `value`.
pub fn redis_record_encode<V: Serialize>(value: V, delta_us: u64) -> Result<Vec<u8>, String> {
    let entry = Entry {
        value,
        delta_us,
        expires_at: 0,
        write_id: 0,
    };
    store().encode("fuzz", &entry).map_err(|e| e.to_string())
}

/// `RedisStore`'s decoding of bytes read with `pttl` ms left at engine time `now` (negative:
/// past its logical expiry, kept for `stale_if_error`): `Ok(None)` for a record of the previous
/// format, `Err(())` for a record that is not ours.
#[allow(clippy::result_unit_err)]
pub fn redis_record_decode<V: DeserializeOwned>(
    bytes: &[u8],
    pttl: i64,
    now: u64,
) -> Result<Option<Entry<V>>, ()> {
    store().decode(bytes, super::record::Remaining::Ms(pttl), now)
}

/// What a pub/sub message's channel announces (`announce::parse`), its key still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// A key of function `name`: `key` is its MessagePack encoding.
    Entry { name: String, key: Vec<u8> },
    /// Function `name` got a new generation.
    Function { name: String },
}

/// Parses a channel name as the subscriber does; `None` for anything not an announcement.
pub fn announcement(channel: &[u8]) -> Option<Announced> {
    match announce::parse(channel)? {
        Announcement::Entry { name, key } => Some(Announced::Entry { name, key }),
        Announcement::Function { name } => Some(Announced::Function { name }),
        _ => None,
    }
}

/// The channel announcing writes of `key` of function `name` at `generation`.
pub fn entry_channel<K: Serialize + ?Sized>(
    prefix: &str,
    name: &str,
    generation: u64,
    key: &K,
) -> Result<Vec<u8>, String> {
    let space = KeySpace {
        prefix: prefix.into(),
    };
    Ok(space
        .keys(name, generation, key)
        .map_err(|e| e.to_string())?
        .channel)
}

/// The channel announcing function `name`'s new generations.
pub fn function_channel(prefix: &str, name: &str) -> Vec<u8> {
    KeySpace {
        prefix: prefix.into(),
    }
    .generation_channel(name)
}

/// The channel of a barrier lock (never an announcement).
pub fn barrier_channel<K: Serialize + ?Sized>(prefix: &str, name: &str, key: &K) -> Vec<u8> {
    KeySpace {
        prefix: prefix.into(),
    }
    .barrier_keys(name, key)
    .map(|k| k.channel)
    .unwrap_or_default()
}

/// An announced key decoded as the near tier does (untrusted: `None` if it does not decode).
pub fn announced_key<K: DeserializeOwned>(key: &[u8]) -> Option<K> {
    rmp_serde::from_slice(key).ok()
}
