//! The record format on disk, and the keyed hashes that address records and lock bytes.
//!
//! A record is a fixed header then the value:
//! `MAGIC (4) | version u64 | expiry u64 (wall clock, ns since the Unix epoch) | delta_us u64 |
//! keep u64 | MessagePack(value)`. `expiry` is the logical expiry (what reads report); `keep` is
//! when culling may treat the record as expired: the expiry plus the function's
//! `stale_if_error` grace, so that a value stays available to serve on error after it expired. A tombstone (left by an invalidation, so that its version is never
//! undone) has the flag bit of the expiry set and no value. Bytes read back are untrusted:
//! anything shorter than the header, with another magic, or whose value does not decode is a
//! miss, counted, never a panic.
//!
//! Record keys are `SipHash-1-3-64(name) | SipHash-1-3-128(key)` under a random key kept in the
//! file (so nobody can choose keys that collide), 24 bytes: all the keys of one function are
//! one contiguous range (`invalidate_all` deletes it). Keys are hashed through their `Hash`
//! impl, which is what lets a lookup by a borrowed form (`&str` for `String`) find the record
//! without allocating; processes that share a file must therefore hash keys alike (the same
//! key types, built by the same Rust version).

use siphasher::sip::SipHasher13 as Sip64;
use siphasher::sip128::{Hasher128, SipHasher13 as Sip128};
use std::hash::{Hash, Hasher};

/// Opens every record herdless writes (format 2: with `keep`).
pub(super) const MAGIC: [u8; 4] = *b"HLD\x02";
/// Bytes before the value.
pub(super) const HEADER: usize = 4 + 8 + 8 + 8 + 8;
/// The tombstone flag in the expiry field (no real expiry reaches 2^63 ns, year 2262).
const TOMBSTONE: u64 = 1 << 63;

/// The 24-byte address of a record.
pub(super) type RecordKey = [u8; 24];

/// The per-file hash key (16 random bytes stored in the file at creation).
#[derive(Clone, Copy, Debug)]
pub(super) struct HashKey {
    pub(super) k0: u64,
    pub(super) k1: u64,
}

impl HashKey {
    /// The 8-byte prefix of every record of function `name`.
    pub(super) fn prefix(&self, name: &str) -> [u8; 8] {
        let mut h = Sip64::new_with_keys(self.k0, self.k1);
        name.hash(&mut h);
        h.finish().to_be_bytes()
    }

    /// The address of `key` of function `name`.
    #[inline]
    pub(super) fn record_key<Q: Hash + ?Sized>(&self, name: &str, key: &Q) -> RecordKey {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.prefix(name));
        let mut h = Sip128::new_with_keys(self.k0 ^ 0x9e37_79b9_7f4a_7c15, self.k1);
        key.hash(&mut h);
        let d = h.finish128();
        out[8..16].copy_from_slice(&d.h1.to_be_bytes());
        out[16..].copy_from_slice(&d.h2.to_be_bytes());
        out
    }
}

/// The header of a record, read without decoding its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) version: u64,
    /// Wall-clock expiry in ns since the epoch (without the tombstone flag).
    pub(super) expiry: u64,
    pub(super) delta_us: u64,
    /// Wall-clock ns until which culling keeps the record (`expiry` + the grace).
    pub(super) keep: u64,
    pub(super) tombstone: bool,
}

/// Parses a header; `None` for bytes that are not a record of ours.
pub(super) fn header(bytes: &[u8]) -> Option<Header> {
    if bytes.len() < HEADER || bytes[..4] != MAGIC {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let raw = word(12);
    Some(Header {
        version: word(4),
        expiry: raw & !TOMBSTONE,
        delta_us: word(20),
        keep: word(28),
        tombstone: raw & TOMBSTONE != 0,
    })
}

/// A record holding `value` (already MessagePack-encoded after the header by the caller).
pub(super) fn write_header(out: &mut Vec<u8>, h: Header) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&h.version.to_le_bytes());
    let expiry = (h.expiry & !TOMBSTONE) | if h.tombstone { TOMBSTONE } else { 0 };
    out.extend_from_slice(&expiry.to_le_bytes());
    out.extend_from_slice(&h.delta_us.to_le_bytes());
    out.extend_from_slice(&h.keep.max(h.expiry).to_le_bytes());
}

/// Sets the version of an encoded record in place (it is known only inside the write txn).
pub(super) fn set_version(record: &mut [u8], version: u64) {
    record[4..12].copy_from_slice(&version.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_foreign_bytes() {
        let h = Header {
            version: 7,
            expiry: 123,
            delta_us: 9,
            keep: 456,
            tombstone: true,
        };
        let mut out = Vec::new();
        write_header(&mut out, h);
        assert_eq!(out.len(), HEADER);
        assert_eq!(header(&out), Some(h));
        set_version(&mut out, 8);
        assert_eq!(header(&out).map(|h| h.version), Some(8));
        assert_eq!(header(&out[..HEADER - 1]), None, "truncated");
        out[0] = b'X';
        assert_eq!(header(&out), None, "foreign magic");
    }

    #[test]
    fn borrowed_and_owned_keys_share_an_address() {
        let k = HashKey { k0: 1, k1: 2 };
        assert_eq!(
            k.record_key("f", "home"),
            k.record_key("f", &"home".to_string())
        );
        assert_ne!(k.record_key("f", "home"), k.record_key("g", "home"));
        assert_eq!(k.record_key("f", "a")[..8], k.prefix("f"));
    }
}
