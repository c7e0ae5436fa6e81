//! The disk store's record decoder (mounted as `store::disk::fuzz_hooks`, feature `fuzzing`).
#![allow(missing_docs)] // internal hooks (feature `fuzzing`), documented by their names

use super::record::{self, Header, HEADER};
use serde::{de::DeserializeOwned, Serialize};

/// A record's header, as `record::header` parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskHeader {
    pub version: u64,
    pub expiry: u64,
    pub delta_us: u64,
    /// Until when culling keeps the record (`expiry` + the `stale_if_error` grace).
    pub keep: u64,
    pub tombstone: bool,
}

/// The record bytes `DiskStore` writes: the header, then the MessagePack value (none for a
/// tombstone). The version is set in place afterwards, as the store does inside its write.
pub fn disk_record_encode<V: Serialize>(
    h: DiskHeader,
    value: Option<&V>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(HEADER + 16);
    record::write_header(
        &mut out,
        Header {
            version: 0,
            expiry: h.expiry,
            delta_us: h.delta_us,
            keep: h.keep,
            tombstone: h.tombstone,
        },
    );
    if let Some(v) = value {
        rmp_serde::encode::write(&mut out, v).map_err(|e| e.to_string())?;
    }
    record::set_version(&mut out, h.version);
    Ok(out)
}

/// What `DiskStore` reads from record bytes: `None` for bytes that are not a record of ours;
/// else the header and, for a live record, its value (`None` if it does not decode).
pub fn disk_record_decode<V: DeserializeOwned>(bytes: &[u8]) -> Option<(DiskHeader, Option<V>)> {
    let h = record::header(bytes)?;
    let value = if h.tombstone {
        None
    } else {
        rmp_serde::from_slice::<V>(&bytes[HEADER..]).ok()
    };
    Some((
        DiskHeader {
            version: h.version,
            expiry: h.expiry,
            delta_us: h.delta_us,
            keep: h.keep,
            tombstone: h.tombstone,
        },
        value,
    ))
}
