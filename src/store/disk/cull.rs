//! Keeping the file bounded: the per-file counters (`Meta`) and culling inside the write
//! transaction.
//!
//! Policy: when a write would pass a limit (bytes, or entries if set), the writer samples up to
//! [`SAMPLE`] records from a cursor that walks the key space round-robin (keys are hashes, so
//! the walk is a random sample) and deletes, in this order, records that are expired (values
//! past their `stale_if_error` grace, and tombstones) or not ours, then the sampled live
//! records that expire soonest (grace included), until the
//! write fits. At most [`ROUNDS`] samples per write: culling is bounded work in the write
//! transaction, never a scan of the file.
//!
//! Every deletion raises `culled_max` to the deleted record's version, which is what keeps a
//! permit granted while its key was absent from landing after an invalidation's tombstone was
//! culled (see `DiskPermit`).

use super::record::{header, RecordKey, HEADER};
use heed::types::Bytes;
use heed::{Database, RwTxn};

/// Records looked at per round.
pub(super) const SAMPLE: usize = 64;
/// Rounds per write at most.
pub(super) const ROUNDS: usize = 4;

pub(super) type Db = Database<Bytes, Bytes>;

/// The counters kept in the meta database, read and written inside each write transaction.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Meta {
    /// The last version handed out (versions are unique in the file).
    pub(super) seq: u64,
    /// The highest version of a record deleted by culling or `invalidate_all`.
    pub(super) culled_max: u64,
    /// Bytes of keys and records held.
    pub(super) bytes: u64,
    /// Where the next sample starts.
    pub(super) cursor: RecordKey,
}

const SEQ: &[u8] = b"seq";
const CULLED: &[u8] = b"culled_max";
const BYTES: &[u8] = b"bytes";
const CURSOR: &[u8] = b"cursor";

fn word(meta: Db, txn: &heed::RoTxn, name: &[u8]) -> heed::Result<u64> {
    Ok(meta
        .get(txn, name)?
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0))
}

impl Meta {
    pub(super) fn load(meta: Db, txn: &heed::RoTxn) -> heed::Result<Self> {
        let mut cursor = [0u8; 24];
        if let Some(c) = meta.get(txn, CURSOR)? {
            if c.len() == 24 {
                cursor.copy_from_slice(c);
            }
        }
        Ok(Meta {
            seq: word(meta, txn, SEQ)?,
            culled_max: word(meta, txn, CULLED)?,
            bytes: word(meta, txn, BYTES)?,
            cursor,
        })
    }

    /// Only the sequence (for permits, in a read transaction).
    pub(super) fn seq(meta: Db, txn: &heed::RoTxn) -> heed::Result<u64> {
        word(meta, txn, SEQ)
    }

    pub(super) fn save(&self, meta: Db, txn: &mut RwTxn) -> heed::Result<()> {
        meta.put(txn, SEQ, &self.seq.to_le_bytes())?;
        meta.put(txn, CULLED, &self.culled_max.to_le_bytes())?;
        meta.put(txn, BYTES, &self.bytes.to_le_bytes())?;
        meta.put(txn, CURSOR, &self.cursor)
    }
}

/// The size a record is accounted at.
pub(super) fn weight(record_len: usize) -> u64 {
    (24 + record_len) as u64
}

/// The configured limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_bytes: u64,
    pub(super) max_entries: Option<u64>,
}

/// What culling removed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Culled {
    /// Expired, tombstone or foreign records.
    pub(super) culls: u64,
    /// Live records evicted.
    pub(super) evictions: u64,
}

/// Makes room for a record of `incoming` bytes (0 for a replacement that does not grow the
/// file). `force` frees at least a quarter of a sample even when under the limits (the map
/// was full: the file has fragmentation the byte count does not see).
pub(super) fn make_room(
    txn: &mut RwTxn,
    db: Db,
    m: &mut Meta,
    limits: Limits,
    incoming: u64,
    wall_now: u64,
    force: bool,
) -> heed::Result<Culled> {
    let mut out = Culled::default();
    for round in 0..ROUNDS {
        let entries = db.len(txn)?;
        let over = |m: &Meta, entries: u64| {
            m.bytes + incoming > limits.max_bytes
                || limits.max_entries.is_some_and(|max| entries + 1 > max)
        };
        let forcing = force && round == 0;
        if !(over(m, entries) || forcing) {
            break;
        }
        let sample = sample(txn, db, &mut m.cursor)?;
        if sample.is_empty() {
            break;
        }
        let mut live = Vec::new();
        let mut entries = entries;
        for (key, len, h) in sample {
            match h {
                // Expired past its grace (`keep`): a value within it may still be served on error.
                Some(h) if h.keep > wall_now => live.push((key, len, h.version, h.keep)),
                _ => {
                    delete(txn, db, m, &key, len, h.map_or(0, |h| h.version))?;
                    out.culls += 1;
                    entries -= 1;
                }
            }
        }
        live.sort_by_key(|r| r.3);
        let mut forced = if force && round == 0 {
            live.len().div_ceil(4)
        } else {
            0
        };
        for (key, len, version, _) in live {
            if !over(m, entries) && forced == 0 {
                break;
            }
            delete(txn, db, m, &key, len, version)?;
            out.evictions += 1;
            entries -= 1;
            forced = forced.saturating_sub(1);
        }
    }
    Ok(out)
}

/// Deletes one record, keeping the counters true.
pub(super) fn delete(
    txn: &mut RwTxn,
    db: Db,
    m: &mut Meta,
    key: &[u8],
    len: usize,
    version: u64,
) -> heed::Result<()> {
    if db.delete(txn, key)? {
        m.bytes = m.bytes.saturating_sub(weight(len));
        m.culled_max = m.culled_max.max(version);
    }
    Ok(())
}

type Sampled = (Vec<u8>, usize, Option<super::record::Header>);

/// Up to [`SAMPLE`] records from the cursor on (wrapping to the start), moving the cursor.
fn sample(txn: &RwTxn, db: Db, cursor: &mut RecordKey) -> heed::Result<Vec<Sampled>> {
    let mut out: Vec<Sampled> = Vec::with_capacity(SAMPLE);
    let start: &[u8] = cursor;
    let take = |k: &[u8], v: &[u8], out: &mut Vec<Sampled>| {
        // A header-sized prefix is all culling needs; a foreign record has none.
        let h = header(&v[..v.len().min(HEADER)]);
        out.push((k.to_vec(), v.len(), h));
    };
    let range = (std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded);
    for item in db.range(txn, &range)? {
        let (k, v) = item?;
        take(k, v, &mut out);
        if out.len() == SAMPLE {
            break;
        }
    }
    if out.len() < SAMPLE {
        for item in db.iter(txn)? {
            let (k, v) = item?;
            if out.iter().any(|(seen, _, _)| seen.as_slice() == k) {
                break; // wrapped all the way round
            }
            take(k, v, &mut out);
            if out.len() == SAMPLE {
                break;
            }
        }
    }
    if let Some((last, _, _)) = out.last() {
        if last.len() == 24 {
            cursor.copy_from_slice(last);
        }
    }
    Ok(out)
}
