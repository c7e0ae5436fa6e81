//! [`Store`] for [`DiskStore`]: reads, fenced writes, locks, invalidation, waiting.

use super::cull::{self, Meta};
use super::handle::{wall_now, DiskStore, Inner};
use super::locks;
use super::record::{self, Header, RecordKey, HEADER};
use super::stats::DiskStats;
use crate::entry::Entry;
use crate::store::contract::{
    LockOutcome, Lookup, Namespace, RefreshOutcome, Seen, Store, StoreError, StoreErrorKind,
    Written,
};
use crate::wait::WaitMode;
use serde::{de::DeserializeOwned, Serialize};
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a tombstone is kept before culling may remove it (it fences permits granted
/// before the invalidation; once culled, `culled_max` fences them instead).
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// A write permit of the disk store: the record's version when it was granted and, for a
/// hard miss or a refresh, the key's lock byte (released on drop, waking waiters).
///
/// The write lands only if the record still has that version; a permit granted while the key
/// was absent lands only if the key is still absent and no record created after the permit
/// was culled meanwhile (`culled_max`).
pub struct DiskPermit {
    inner: Arc<Inner>,
    byte: Option<u64>,
    version: u64,
    seq: u64,
}

impl std::fmt::Debug for DiskPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskPermit")
            .field("locked", &self.byte.is_some())
            .field("version", &self.version)
            .finish()
    }
}

impl Drop for DiskPermit {
    fn drop(&mut self) {
        if let Some(b) = self.byte.take() {
            self.inner.locks.release(b);
        }
    }
}

/// What one read transaction saw of a key.
struct Snapshot {
    header: Option<Header>,
    /// The record's bytes after the header (a live, decodable-looking record only).
    body: Option<Vec<u8>>,
    seq: u64,
    foreign: bool,
}

fn io_error(what: &str, e: heed::Error) -> StoreError {
    let kind = match &e {
        heed::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            StoreErrorKind::PermissionDenied
        }
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, format!("disk store {what}: {e}"))
}

impl DiskStore {
    fn key<Q: Hash + ?Sized>(&self, ns: &Namespace, key: &Q) -> RecordKey {
        self.inner.hash_key.record_key(ns.name(), key)
    }

    /// A wall-clock expiry on this process's system-clock timeline.
    fn to_engine(&self, wall: u64) -> u64 {
        (wall as i128 - self.inner.offset).clamp(0, u64::MAX as i128) as u64
    }

    /// The hit path: one read transaction, the value decoded from the map in place.
    #[inline]
    fn lookup<Q: Hash + ?Sized, V: DeserializeOwned>(
        &self,
        ns: &Namespace,
        key: &Q,
    ) -> Result<Option<Entry<V>>, StoreError> {
        let k = self.key(ns, key);
        let inner = &*self.inner;
        let txn = inner.env.read_txn().map_err(|e| io_error("read", e))?;
        DiskStats::inc(&inner.stats.reads);
        let Some(bytes) = inner
            .records
            .get(&txn, &k)
            .map_err(|e| io_error("read", e))?
        else {
            return Ok(None);
        };
        Ok(match record::header(bytes) {
            Some(h) if h.tombstone => None,
            Some(h) => match rmp_serde::from_slice::<V>(&bytes[HEADER..]) {
                Ok(value) => Some(Entry {
                    value,
                    delta_us: h.delta_us,
                    expires_at: self.to_engine(h.expiry),
                    write_id: h.version,
                }),
                Err(_) => {
                    self.undecodable(bytes.len());
                    None
                }
            },
            None => {
                self.undecodable(bytes.len());
                None
            }
        })
    }

    fn undecodable(&self, len: usize) {
        DiskStats::inc(&self.inner.stats.decode_errors);
        if !self.inner.warned_decode.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                len,
                "undecodable or foreign record in the disk store; treating it as a miss \
                 (after a change of value type, it is recomputed under the lock)"
            );
        }
    }

    /// The record's header (and body if live) and the file's sequence, in one snapshot.
    fn seen(&self, k: &RecordKey, wall: u64) -> Result<Snapshot, StoreError> {
        let inner = &*self.inner;
        let txn = inner.env.read_txn().map_err(|e| io_error("read", e))?;
        DiskStats::inc(&inner.stats.reads);
        let seq = Meta::seq(inner.meta, &txn).map_err(|e| io_error("read", e))?;
        let bytes = inner
            .records
            .get(&txn, k)
            .map_err(|e| io_error("read", e))?;
        let header = bytes.and_then(record::header);
        let body = match (bytes, header) {
            (Some(b), Some(h)) if !h.tombstone && h.expiry > wall => Some(b[HEADER..].to_vec()),
            _ => None,
        };
        Ok(Snapshot {
            foreign: bytes.is_some() && header.is_none(),
            header,
            body,
            seq,
        })
    }

    fn entry_from<V: DeserializeOwned>(
        &self,
        h: Header,
        body: &[u8],
        now: u64,
        wall: u64,
    ) -> Option<Entry<V>> {
        match rmp_serde::from_slice::<V>(body) {
            Ok(value) => Some(Entry {
                value,
                delta_us: h.delta_us,
                expires_at: rebuild(h.expiry, now, wall),
                write_id: h.version,
            }),
            Err(_) => {
                self.undecodable(body.len() + HEADER);
                None
            }
        }
    }

    fn permit(&self, byte: Option<u64>, seen: &Snapshot) -> DiskPermit {
        DiskPermit {
            inner: self.inner.clone(),
            byte,
            // A foreign record is replaced like an absent one only if nothing else changes.
            version: seen.header.map_or(0, |h| h.version),
            seq: seen.seq,
        }
    }

    /// Fails open on a write error: counted, warned once, returned as a store error.
    fn write_failed(&self, e: heed::Error) -> StoreError {
        DiskStats::inc(&self.inner.stats.write_errors);
        if !self.inner.warned_write.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, path = %self.inner.stats.path.display(),
                "disk store write failed; values are computed but not stored");
        }
        io_error("write", e)
    }

    /// One write transaction: fence, cull, put. `Ok(false)` when fenced.
    fn commit_record(
        &self,
        k: &RecordKey,
        record: &mut [u8],
        permit: Option<(u64, u64)>,
        force_room: bool,
    ) -> heed::Result<bool> {
        let inner = &*self.inner;
        let mut txn = inner.env.write_txn()?;
        let mut m = Meta::load(inner.meta, &txn)?;
        let cur = inner
            .records
            .get(&txn, k)?
            .map(|b| (b.len(), record::header(b)));
        if let Some((version, seq)) = permit {
            let lands = match cur {
                Some((_, Some(h))) => version != 0 && h.version == version,
                // A foreign record, seen as absent when the permit was granted.
                Some((_, None)) => version == 0,
                None => version == 0 && m.culled_max <= seq,
            };
            if !lands {
                txn.abort();
                return Ok(false);
            }
        }
        let old = cur.map_or(0, |(len, _)| cull::weight(len));
        let new = cull::weight(record.len());
        let culled = cull::make_room(
            &mut txn,
            inner.records,
            &mut m,
            inner.limits,
            new.saturating_sub(old),
            wall_now(),
            force_room,
        )?;
        m.seq += 1;
        record::set_version(record, m.seq);
        // Culling may have removed the old record: count what is there now.
        let old_now = inner
            .records
            .get(&txn, k)?
            .map_or(0, |b| cull::weight(b.len()));
        inner.records.put(&mut txn, k, record)?;
        m.bytes = m.bytes.saturating_sub(old_now) + new;
        m.save(inner.meta, &mut txn)?;
        txn.commit()?;
        let s = &inner.stats;
        s.culls.fetch_add(culled.culls, Ordering::Relaxed);
        s.evictions.fetch_add(culled.evictions, Ordering::Relaxed);
        DiskStats::inc(&s.writes);
        Ok(true)
    }

    /// [`DiskStore::commit_record`], retried once with forced culling when the map is full.
    fn write(
        &self,
        k: &RecordKey,
        mut record: Vec<u8>,
        permit: Option<(u64, u64)>,
    ) -> Result<Written, StoreError> {
        let out = match self.commit_record(k, &mut record, permit, false) {
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                self.commit_record(k, &mut record, permit, true)
            }
            other => other,
        };
        match out {
            Ok(true) => Ok(Written::Stored),
            Ok(false) => {
                DiskStats::inc(&self.inner.stats.fenced_writes);
                Ok(Written::Fenced)
            }
            Err(e) => Err(self.write_failed(e)),
        }
    }

    fn encode<V: Serialize>(
        &self,
        ns: &Namespace,
        entry: &Entry<V>,
        ttl: Duration,
        wall: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let name = ns.name();
        // The engine's expiry, translated to the wall clock; if it is not on the system clock's
        // timeline (a manual clock), the TTL from now instead.
        let by_ttl = wall.saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64);
        let by_entry =
            (entry.expires_at as i128 + self.inner.offset).clamp(0, u64::MAX as i128) as u64;
        let expiry = if by_entry.abs_diff(by_ttl) < 1_000_000_000 {
            by_entry
        } else {
            by_ttl
        };
        let mut out = Vec::with_capacity(HEADER + 64);
        record::write_header(
            &mut out,
            Header {
                version: 0,
                expiry,
                delta_us: entry.delta_us,
                // Kept past its expiry by the grace (reads still report `expiry`).
                keep: expiry.saturating_add(nanos(ns.grace())),
                tombstone: false,
            },
        );
        if let Err(e) = rmp_serde::encode::write(&mut out, &entry.value) {
            return Err(StoreError::new(
                StoreErrorKind::Encode,
                format!("the value of `{name}` cannot be serialized: {e}"),
            ));
        }
        if out.len() > self.inner.max_value_bytes {
            return Err(StoreError::new(
                StoreErrorKind::TooLarge,
                format!(
                    "a value of `{name}` is {} bytes, over max_value_bytes ({})",
                    out.len(),
                    self.inner.max_value_bytes
                ),
            ));
        }
        Ok(out)
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl DiskStore {
    /// Takes over the key of a holder past its maximum hold: in one write transaction (which
    /// serializes takers), checks the lease again, writes this taker's lease and gives the
    /// record a new version (an absent key gets a tombstone), so the hung holder's write is
    /// fenced. `None` if someone else took over first.
    fn take_over(
        &self,
        k: &RecordKey,
        byte: u64,
        max_hold: Duration,
    ) -> heed::Result<Option<DiskPermit>> {
        let inner = &*self.inner;
        let mut txn = inner.env.write_txn()?;
        let wall = wall_now();
        let deadline = inner.locks.lease(byte);
        if deadline == 0 || deadline >= wall {
            txn.abort();
            return Ok(None);
        }
        let mut m = Meta::load(inner.meta, &txn)?;
        m.seq += 1;
        let mut rec = match inner.records.get(&txn, k)? {
            Some(b) if record::header(b).is_some() => b.to_vec(),
            _ => {
                let mut t = Vec::with_capacity(HEADER);
                record::write_header(
                    &mut t,
                    Header {
                        version: 0,
                        expiry: wall + nanos(TOMBSTONE_TTL),
                        delta_us: 0,
                        keep: 0,
                        tombstone: true,
                    },
                );
                t
            }
        };
        record::set_version(&mut rec, m.seq);
        let old = inner
            .records
            .get(&txn, k)?
            .map_or(0, |b| cull::weight(b.len()));
        inner.records.put(&mut txn, k, &rec)?;
        m.bytes = m.bytes.saturating_sub(old) + cull::weight(rec.len());
        m.save(inner.meta, &mut txn)?;
        inner
            .locks
            .set_lease(byte, wall.saturating_add(nanos(max_hold)));
        txn.commit()?;
        tracing::warn!("a disk-store lock holder passed its maximum hold (hung or stopped); taking over, fenced");
        Ok(Some(DiskPermit {
            inner: self.inner.clone(),
            byte: None,
            version: m.seq,
            seq: m.seq,
        }))
    }
}

/// A wall-clock expiry as an engine time, relative to the caller's `now`.
fn rebuild(expiry: u64, now: u64, wall: u64) -> u64 {
    if expiry >= wall {
        now.saturating_add(expiry - wall)
    } else {
        now.saturating_sub(wall - expiry)
    }
}

impl DiskStore {
    /// Around every write of `key` (before and after its commit): per-thread tiers in every
    /// process stop serving what they copied (see `versions`).
    fn bump<Q: Hash + ?Sized>(&self, key: &Q) {
        if let Some(v) = &self.inner.versions {
            v.bump(key);
        }
    }

    fn bump_all(&self) {
        if let Some(v) = &self.inner.versions {
            v.bump_all();
        }
    }
}

impl<K, V> Store<K, V> for DiskStore
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Lock = DiskPermit;

    #[inline(always)]
    fn versions(&self) -> Option<&crate::hot::Versions> {
        if self.inner.thread_tier {
            self.inner.versions.as_ref()
        } else {
            None
        }
    }

    fn namespace(&self, name: &str) -> Namespace {
        self.inner.names.namespace(name)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn fleet_size(&self) -> f64 {
        self.inner
            .fleet
            .size(&self.inner.locks, self.inner.presence.is_some())
    }

    #[inline]
    fn get_now<Q>(&self, ns: &Namespace, key: &Q) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.lookup(ns, key) {
            Ok(Some(e)) => Lookup::Found(e),
            Ok(None) => Lookup::Missing,
            Err(_) => Lookup::NotLocal, // `get` reports the error
        }
    }

    async fn get(&self, ns: &Namespace, key: &K, now: u64) -> Result<Option<Entry<V>>, StoreError> {
        let wall = wall_now();
        let k = self.key(ns, key);
        let seen = self.seen(&k, wall)?;
        if seen.foreign {
            self.undecodable(0);
        }
        Ok(match (seen.header, seen.body) {
            (Some(h), Some(body)) => self.entry_from(h, &body, now, wall),
            (Some(h), None) if !h.tombstone => {
                // Expired: report it as such (the engine may serve it stale).
                let inner = &*self.inner;
                let txn = inner.env.read_txn().map_err(|e| io_error("read", e))?;
                let bytes = inner
                    .records
                    .get(&txn, &k)
                    .map_err(|e| io_error("read", e))?;
                match bytes.and_then(|b| record::header(b).map(|h| (h, &b[HEADER..]))) {
                    Some((h, body)) if !h.tombstone => self.entry_from(h, body, now, wall),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Every key in one read transaction (issue 22: one store read for a batch), each answered
    /// as [`Store::get`] would (an expired record is reported with its expiry, for stale serving).
    async fn get_many(
        &self,
        ns: &Namespace,
        keys: &[K],
        now: u64,
    ) -> Vec<Result<Option<Entry<V>>, StoreError>>
    where
        K: Sync,
        V: Send,
    {
        let wall = wall_now();
        let inner = &*self.inner;
        let txn = match inner.env.read_txn() {
            Ok(t) => t,
            Err(e) => {
                let err = io_error("read", e);
                return keys.iter().map(|_| Err(err.clone())).collect();
            }
        };
        keys.iter()
            .map(|key| {
                let k = self.key(ns, key);
                DiskStats::inc(&inner.stats.reads);
                let bytes = inner
                    .records
                    .get(&txn, &k)
                    .map_err(|e| io_error("read", e))?;
                let Some(bytes) = bytes else { return Ok(None) };
                match record::header(bytes) {
                    None => {
                        self.undecodable(0);
                        Ok(None)
                    }
                    Some(h) if h.tombstone => Ok(None),
                    Some(h) => Ok(self.entry_from(h, &bytes[HEADER..], now, wall)),
                }
            })
            .collect()
    }

    async fn set(
        &self,
        ns: &Namespace,
        key: &K,
        entry: Entry<V>,
        ttl: Duration,
        lock: Option<DiskPermit>,
    ) -> Result<Written, StoreError> {
        let k = self.key(ns, key);
        // An unencodable or oversized value: the permit's drop releases the lock.
        let record = self.encode(ns, &entry, ttl, wall_now())?;
        let permit = lock.as_ref().map(|p| (p.version, p.seq));
        self.bump(key);
        let out = self.write(&k, record, permit);
        self.bump(key);
        drop(lock); // after the commit: waiters woken now find the value
        out
    }

    async fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &K,
        _lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> Result<LockOutcome<V, DiskPermit>, StoreError> {
        let k = self.key(ns, key);
        let wall = wall_now();
        let seen = self.seen(&k, wall)?;
        if let (Some(h), Some(body)) = (seen.header, &seen.body) {
            if let Some(e) = self.entry_from(h, body, now, wall) {
                return Ok(LockOutcome::Found(e));
            }
        }
        let byte = locks::lock_byte(&k);
        let got = self
            .inner
            .locks
            .try_acquire(byte)
            .map_err(|e| StoreError::new(StoreErrorKind::Other, format!("lock file: {e}")))?;
        if !got {
            let deadline = self.inner.locks.lease(byte);
            if deadline != 0 && deadline < wall_now() {
                // The holder is alive (else the kernel would have freed the byte) but past its
                // maximum hold: hung or stopped. Take over, fenced.
                if let Some(p) = self
                    .take_over(&k, byte, max_hold)
                    .map_err(|e| self.write_failed(e))?
                {
                    return Ok(LockOutcome::Acquired(p));
                }
            }
            return Ok(LockOutcome::Busy);
        }
        self.inner
            .locks
            .set_lease(byte, wall_now().saturating_add(nanos(max_hold)));
        // The value may have landed between the read and the lock.
        let seen = match self.seen(&k, wall_now()) {
            Ok(s) => s,
            Err(e) => {
                self.inner.locks.release(byte);
                return Err(e);
            }
        };
        let permit = self.permit(Some(byte), &seen);
        if let (Some(h), Some(body)) = (seen.header, &seen.body) {
            if let Some(e) = self.entry_from(h, body, now, wall_now()) {
                return Ok(LockOutcome::Found(e)); // the permit's drop releases the lock
            }
        }
        Ok(LockOutcome::Acquired(permit))
    }

    async fn try_lock_refresh(
        &self,
        ns: &Namespace,
        key: &K,
        read: Seen,
        _lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> Result<RefreshOutcome<DiskPermit>, StoreError> {
        let k = self.key(ns, key);
        let wall = wall_now();
        let seen = self.seen(&k, wall)?;
        // Replaced since the caller's read: someone refreshed (or inserted). Every write gets
        // the file's next sequence number, so the version tells it exactly; only an entry of
        // unknown origin (`write_id` 0) is compared by expiry.
        if let Some(h) = seen.header.filter(|h| !h.tombstone) {
            let replaced = if read.write_id != 0 {
                h.version != read.write_id
            } else {
                rebuild(h.expiry, now, wall) > read.expires_at.saturating_add(2_000_000)
            };
            if replaced {
                return Ok(RefreshOutcome::Skip);
            }
        }
        let byte = locks::lock_byte(&k);
        match self.inner.locks.try_acquire(byte) {
            Ok(true) => {
                // A refresher holds the key like a computing leader: without its own lease a
                // waiter would read a previous holder's lapsed one and take over from it.
                self.inner
                    .locks
                    .set_lease(byte, wall_now().saturating_add(nanos(max_hold)));
                Ok(RefreshOutcome::Acquired(self.permit(Some(byte), &seen)))
            }
            Ok(false) => Ok(RefreshOutcome::Skip),
            Err(e) => Err(StoreError::new(
                StoreErrorKind::Other,
                format!("lock file: {e}"),
            )),
        }
    }

    async fn write_ticket(
        &self,
        ns: &Namespace,
        key: &K,
    ) -> Result<Option<DiskPermit>, StoreError> {
        let k = self.key(ns, key);
        let seen = self.seen(&k, wall_now())?;
        Ok(Some(self.permit(None, &seen)))
    }

    async fn invalidate(&self, ns: &Namespace, key: &K) -> Result<(), StoreError> {
        let k = self.key(ns, key);
        let wall = wall_now();
        let mut tomb = Vec::with_capacity(HEADER);
        record::write_header(
            &mut tomb,
            Header {
                version: 0,
                expiry: wall + TOMBSTONE_TTL.as_nanos() as u64,
                delta_us: 0,
                keep: 0,
                tombstone: true,
            },
        );
        self.bump(key);
        let out = self.write(&k, tomb, None);
        self.bump(key);
        out?;
        self.inner.locks.nudge();
        Ok(())
    }

    async fn invalidate_all(&self, ns: &Namespace) -> Result<(), StoreError> {
        let prefix = self.inner.hash_key.prefix(ns.name());
        let inner = &*self.inner;
        let run = || -> heed::Result<()> {
            let mut txn = inner.env.write_txn()?;
            let mut m = Meta::load(inner.meta, &txn)?;
            let doomed: Vec<(Vec<u8>, usize)> = inner
                .records
                .prefix_iter(&txn, &prefix)?
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.len())))
                .collect::<heed::Result<_>>()?;
            for (k, len) in doomed {
                cull::delete(&mut txn, inner.records, &mut m, &k, len, 0)?;
            }
            // Fences every permit granted before now (absent keys included).
            m.seq += 1;
            m.culled_max = m.seq;
            m.save(inner.meta, &mut txn)?;
            txn.commit()
        };
        self.bump_all();
        let out = run().map_err(|e| self.write_failed(e));
        self.bump_all();
        out?;
        inner.locks.nudge();
        Ok(())
    }

    async fn wait_for_value(
        &self,
        ns: &Namespace,
        key: &K,
        max: Duration,
        mode: WaitMode,
    ) -> Result<(), StoreError> {
        let byte = locks::lock_byte(&self.key(ns, key));
        self.inner.locks.wait(byte, max, mode).await;
        Ok(())
    }
}
