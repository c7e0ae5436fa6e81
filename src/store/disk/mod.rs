//! The disk store: one LMDB file shared by the processes of one machine, no server, surviving
//! restarts (feature `disk`, Linux).
//!
//! - **Reads** are one LMDB read transaction: no lock, no write, no system call; the record is
//!   read in place from the shared memory map. A hit answers on the caller's stack
//!   ([`Store::get_now`](crate::store::Store::get_now)).
//! - **Hot keys at memory speed, coherent across processes with no message**: the engine's
//!   per-thread tier serves a hot key from the thread's own copy while the key's write version
//!   is unchanged; the versions live in `herdless.versions`, an 8 KiB file every process maps
//!   shared, and every write bumps its key's version before its commit and again before it
//!   returns (`versions` module; [`DiskStoreBuilder::thread_tier`]). Checked by
//!   `tests/disk_history.rs`: with the bumps removed it reports hundreds of stale reads.
//! - **Writes** are one write transaction that checks the record's version against the
//!   writer's permit (fencing), culls if the file is over its limits, and commits.
//! - **One computation per key across processes**: an open-file-description byte-range lock
//!   per key hash (`locks` module). The kernel releases it when the holder dies, even by
//!   SIGKILL, and wakes blocked waiters at once; no polling.
//! - **Versions**: every record carries a version unique in the file. `invalidate` leaves a
//!   tombstone with a new version, so a computation that started before it cannot land after
//!   it; `invalidate_all` deletes the function's key range and fences every permit granted
//!   before it.
//! - **Time**: expiries are stored as wall-clock times (they survive restarts and are shared
//!   between processes) and translated onto this process's [`SystemClock`](crate::SystemClock)
//!   timeline when read. Engines over a `DiskStore` use the system clock (the default).
//! - **Crash safety**: LMDB's copy-on-write B-tree: a process killed in the middle of a write
//!   leaves the last committed state; stale reader slots of dead processes are cleared at open
//!   (`DiskStats::stale_readers_cleared`; `tests/disk_processes.rs`).
//!   By default commits are not fsynced (a cache: a power cut may lose the last writes, never
//!   the file's integrity); [`DiskStoreBuilder::durable`] fsyncs each commit.
//!
//! - **Grace**: a function's [`stale_if_error`](crate::Builder::stale_if_error) grace is
//!   written into each of its records: culling keeps a record that long past its expiry, reads
//!   still report the logical expiry, so the engine can serve it when a recomputation fails.
//! - **A stopped process**: a holder stopped (SIGSTOP, a debugger) while computing is taken
//!   over past its maximum hold ([`lease_bounds`](crate::Builder::lease_bounds)), fenced. One
//!   stopped inside a write transaction holds LMDB's single writer lock: writes of the other
//!   processes wait until it continues; reads go on.
//!
//! Platforms: Linux only (OFD locks). Elsewhere [`DiskStoreBuilder::build`] returns
//! [`DiskError`] naming the platform; nothing is written.

mod barrier_lock;
mod cull;
#[cfg(feature = "fuzzing")]
#[path = "../../fuzz_hooks/disk.rs"]
pub(crate) mod fuzz_hooks;
mod handle;
mod locks;
mod record;
mod stats;
mod store_impl;
#[cfg(not(shuttle))]
mod versions;

pub use barrier_lock::{DiskGuard, DiskLock};
pub use handle::DiskStore;
use handle::{wall_now, Fleet, Inner, SharedFile};
pub use stats::DiskStats;
pub use store_impl::DiskPermit;

use crate::store::contract::NamespaceRegistry;
use cull::{Db, Limits, Meta};
use heed::{Env, EnvFlags, EnvOpenOptions};
use locks::Locks;
use record::HashKey;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The store could not be opened: the path and the cause.
///
/// ```
/// use herdless::store::DiskStore;
/// let file = std::env::temp_dir().join(format!("herdless-doc-notdir-{}", std::process::id()));
/// std::fs::write(&file, b"not a directory").unwrap();
/// let err = DiskStore::open(&file).unwrap_err();
/// assert!(err.to_string().contains(&file.display().to_string()));
/// std::fs::remove_file(&file).ok();
/// ```
#[derive(Debug)]
pub struct DiskError {
    path: PathBuf,
    cause: String,
}

impl DiskError {
    fn new(path: &Path, cause: impl Into<String>) -> Self {
        DiskError {
            path: path.to_path_buf(),
            cause: cause.into(),
        }
    }
    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// What went wrong.
    pub fn cause(&self) -> &str {
        &self.cause
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot open the disk store at {}: {}",
            self.path.display(),
            self.cause
        )
    }
}
impl std::error::Error for DiskError {}

/// Configures a [`DiskStore`]; see [`DiskStore::builder`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herdless::store::DiskStore;
/// let dir = std::env::temp_dir().join(format!("herdless-doc-builder-{}", std::process::id()));
/// let store = DiskStore::builder(&dir)
///     .max_bytes(64 << 20)
///     .max_entries(100_000)
///     .build()?;
/// assert!(DiskStore::builder(&dir).max_bytes(10).build().is_err()); // names `max_bytes`
/// # drop(store); std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DiskStoreBuilder {
    path: PathBuf,
    max_bytes: u64,
    max_entries: Option<u64>,
    durable: bool,
    rebuild_if_corrupt: bool,
    max_value_bytes: Option<usize>,
    thread_tier: bool,
}

/// The smallest byte limit accepted.
const MIN_BYTES: u64 = 1 << 20;

impl DiskStoreBuilder {
    /// The most bytes of keys and records kept (default 256 MiB, at least 1 MiB). The file
    /// itself is capped at twice this plus 16 MiB (LMDB's map size): the B-tree's pages and
    /// free space. A write that would pass the limit culls first (see the `cull` module).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }
    /// The most records kept (default: no limit but bytes).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }
    /// Fsync every commit (default off: a cache survives a process crash either way; only a
    /// power cut or kernel crash may lose the last writes without it).
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }
    /// A file that is not a store of ours, or is corrupt, is moved aside (renamed with a
    /// `.corrupt-<unix seconds>` suffix) and a new store is created, instead of failing.
    pub fn rebuild_if_corrupt(mut self, on: bool) -> Self {
        self.rebuild_if_corrupt = on;
        self
    }
    /// Serve hot keys from each thread's own copy, validated by write versions the processes
    /// share through a memory-mapped file, `herdless.versions` (default on). A hit on a hot key
    /// then reads no LMDB page: a few nanoseconds instead of a read transaction, and still
    /// coherent across processes with no message sent: every write bumps its key's shared
    /// version before it returns. Off: every hit is an LMDB read transaction.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use herdless::store::DiskStore;
    /// let dir = std::env::temp_dir().join(format!("herdless-doc-tier-{}", std::process::id()));
    /// let store = DiskStore::builder(&dir).thread_tier(false).build()?;
    /// # drop(store); std::fs::remove_dir_all(&dir).ok(); Ok(()) }
    /// ```
    pub fn thread_tier(mut self, on: bool) -> Self {
        self.thread_tier = on;
        self
    }
    /// Values larger than this are returned but not stored (default 16 MiB, or half of
    /// `max_bytes` if less).
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = Some(n);
        self
    }

    /// Opens (or creates) the store in the directory.
    pub fn build(self) -> Result<DiskStore, DiskError> {
        if !cfg!(target_os = "linux") {
            return Err(DiskError::new(
                &self.path,
                format!(
                    "DiskStore needs Linux (open-file-description locks); this is {}",
                    std::env::consts::OS
                ),
            ));
        }
        if self.max_bytes < MIN_BYTES {
            return Err(DiskError::new(
                &self.path,
                format!("invalid `max_bytes`: must be at least {MIN_BYTES}"),
            ));
        }
        if self.max_entries == Some(0) {
            return Err(DiskError::new(
                &self.path,
                "invalid `max_entries`: must be at least 1",
            ));
        }
        let max_value = self.max_value();
        if max_value == 0 || max_value as u64 > self.max_bytes / 2 {
            return Err(DiskError::new(
                &self.path,
                "invalid `max_value_bytes`: must be positive and at most half of `max_bytes`",
            ));
        }
        match self.open_files() {
            Ok(store) => Ok(store),
            Err(e) if self.rebuild_if_corrupt && e.cause.starts_with(FOREIGN) => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = self.path.with_extension(format!("corrupt-{secs}"));
                std::fs::rename(&self.path, &aside).map_err(|r| {
                    DiskError::new(
                        &self.path,
                        format!("{}; moving it aside failed: {r}", e.cause),
                    )
                })?;
                tracing::warn!(path = %self.path.display(), aside = %aside.display(), cause = %e.cause, "disk store moved aside and rebuilt");
                self.open_files()
            }
            Err(e) => Err(e),
        }
    }

    fn max_value(&self) -> usize {
        self.max_value_bytes
            .unwrap_or_else(|| (16usize << 20).min((self.max_bytes / 2) as usize))
    }

    fn open_env(&self) -> Result<SharedFile, DiskError> {
        let path = &self.path;
        let err = |cause: String| DiskError::new(path, cause);
        let map_size = (self.max_bytes * 2 + (16 << 20)).div_ceil(1 << 20) * (1 << 20);
        let mut opts = EnvOpenOptions::new();
        opts.map_size(map_size as usize)
            .max_dbs(4)
            .max_readers(1024);
        let mut flags = EnvFlags::NO_READ_AHEAD;
        if !self.durable {
            flags |= EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC;
        }
        // SAFETY: flags LMDB documents as safe for multi-process use; `NO_LOCK` is not set.
        unsafe { opts.flags(flags) };
        // SAFETY: the file is only modified through LMDB (with its lock file) by any process.
        let env = unsafe { opts.open(path) }.map_err(|e| match e {
            heed::Error::Mdb(
                m @ (heed::MdbError::Invalid
                | heed::MdbError::Corrupted
                | heed::MdbError::VersionMismatch
                | heed::MdbError::Panic),
            ) => err(format!("{FOREIGN}: not a readable LMDB file ({m})")),
            other => err(format!("LMDB refused to open it: {other}")),
        })?;
        let dead = env.clear_stale_readers().unwrap_or(0);
        if dead > 0 {
            tracing::info!(path = %path.display(), dead, "cleared reader slots of dead processes");
        }
        let (records, meta, hash_key) = init(&env).map_err(err)?;
        Ok(SharedFile {
            env,
            records,
            meta,
            hash_key,
            stale_readers_cleared: dead as u64,
        })
    }

    fn open_files(&self) -> Result<DiskStore, DiskError> {
        let path = &self.path;
        let err = |cause: String| DiskError::new(path, cause);
        if path.exists() && !path.is_dir() {
            return Err(err(format!(
                "{FOREIGN}: the path is a file, not a store directory"
            )));
        }
        std::fs::create_dir_all(path).map_err(|e| err(format!("cannot create it: {e}")))?;
        let data = path.join("data.mdb");
        if let Ok(m) = std::fs::metadata(&data) {
            // LMDB maps a file shorter than its two meta pages as garbage; refuse it here.
            if m.len() > 0 && m.len() < 8192 {
                return Err(err(format!(
                    "{FOREIGN}: data.mdb is truncated ({} bytes)",
                    m.len()
                )));
            }
        }
        let file = shared_file(path, || self.open_env())?;
        let lock_path = path.join("herdless.locks");
        let lock_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| {
                err(format!(
                    "cannot open the lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        let stats = Arc::new(DiskStats {
            path: path.clone(),
            stale_readers_cleared: AtomicU64::new(file.stale_readers_cleared),
            ..DiskStats::default()
        });
        let locks = Locks::new(lock_file, stats.clone());
        let presence = locks.take_presence();
        #[cfg(not(shuttle))]
        let versions = match versions::open(path) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the version file cannot be mapped: no per-thread tier, every hit reads LMDB");
                None
            }
        };
        #[cfg(shuttle)]
        let versions = None;
        Ok(DiskStore {
            inner: Arc::new(Inner {
                env: file.env.clone(),
                records: file.records,
                meta: file.meta,
                hash_key: file.hash_key,
                file,
                locks,
                stats,
                limits: Limits {
                    max_bytes: self.max_bytes,
                    max_entries: self.max_entries,
                },
                max_value_bytes: self.max_value(),
                names: NamespaceRegistry::default(),
                offset: wall_minus_engine(),
                warned_write: AtomicBool::new(false),
                warned_decode: AtomicBool::new(false),
                presence,
                fleet: Fleet::default(),
                versions,
                thread_tier: self.thread_tier,
            }),
        })
    }
}

/// How every "not ours / corrupt" cause starts (what `rebuild_if_corrupt` acts on).
const FOREIGN: &str = "not a herdless disk store or corrupt";
/// The format marker in the meta database.
const FORMAT: &[u8] = b"herdless-disk-2";

/// Creates the databases of a new file, or checks those of an existing one.
fn init(env: &Env) -> Result<(Db, Db, HashKey), String> {
    let mut txn = env
        .write_txn()
        .map_err(|e| format!("cannot start a write transaction: {e}"))?;
    let opened = (|| -> heed::Result<(Option<Db>, Option<Db>, Option<Db>)> {
        let main: Option<Db> = env.open_database(&txn, None)?;
        let records: Option<Db> = env.open_database(&txn, Some("records"))?;
        let meta: Option<Db> = env.open_database(&txn, Some("meta"))?;
        Ok((main, records, meta))
    })()
    .map_err(|e| format!("{FOREIGN}: {e}"))?;
    let io = |e: heed::Error| format!("cannot initialise it: {e}");
    match opened {
        (_, Some(records), Some(meta)) => {
            let format = meta.get(&txn, b"format").map_err(io)?;
            if format != Some(FORMAT) {
                return Err(format!(
                    "{FOREIGN}: the format marker is {:?}, expected {:?}",
                    format.map(String::from_utf8_lossy),
                    String::from_utf8_lossy(FORMAT)
                ));
            }
            let key = meta.get(&txn, b"hash_key").map_err(io)?.unwrap_or(&[]);
            if key.len() != 16 {
                return Err(format!("{FOREIGN}: the hash key is missing"));
            }
            let hk = HashKey {
                k0: u64::from_le_bytes(key[..8].try_into().expect("8")),
                k1: u64::from_le_bytes(key[8..].try_into().expect("8")),
            };
            txn.commit().map_err(io)?;
            Ok((records, meta, hk))
        }
        (Some(main), None, None) if main.len(&txn).map_err(io)? > 0 => {
            Err(format!("{FOREIGN}: an LMDB file of another application"))
        }
        (_, None, None) => {
            let records: Db = env.create_database(&mut txn, Some("records")).map_err(io)?;
            let meta: Db = env.create_database(&mut txn, Some("meta")).map_err(io)?;
            let hk = HashKey {
                k0: rand::random(),
                k1: rand::random(),
            };
            let mut key = hk.k0.to_le_bytes().to_vec();
            key.extend_from_slice(&hk.k1.to_le_bytes());
            meta.put(&mut txn, b"hash_key", &key).map_err(io)?;
            meta.put(&mut txn, b"format", FORMAT).map_err(io)?;
            Meta::default().save(meta, &mut txn).map_err(io)?;
            txn.commit().map_err(io)?;
            Ok((records, meta, hk))
        }
        _ => Err(format!("{FOREIGN}: one of its databases is missing")),
    }
}

/// Wall-clock ns minus this process's system-clock ns: adds to an engine time to give a wall
/// time.
fn wall_minus_engine() -> i128 {
    use crate::Clock;
    let engine = crate::SystemClock::new().now() as i128;
    wall_now() as i128 - engine
}

/// The environments open in this process, by canonical directory.
static OPEN_FILES: std::sync::Mutex<Vec<(PathBuf, std::sync::Weak<SharedFile>)>> =
    std::sync::Mutex::new(Vec::new());

/// The open environment of `path`, or a new one from `open`.
fn shared_file(
    path: &Path,
    open: impl FnOnce() -> Result<SharedFile, DiskError>,
) -> Result<Arc<SharedFile>, DiskError> {
    let canonical = path
        .canonicalize()
        .map_err(|e| DiskError::new(path, format!("cannot resolve the path: {e}")))?;
    let mut files = OPEN_FILES.lock().unwrap_or_else(|p| p.into_inner());
    files.retain(|(_, w)| w.strong_count() > 0);
    if let Some(f) = files
        .iter()
        .find(|(p, _)| *p == canonical)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(f);
    }
    let f = Arc::new(open()?);
    files.push((canonical, Arc::downgrade(&f)));
    Ok(f)
}

impl DiskStore {
    /// Opens (or creates) a store in directory `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DiskError> {
        Self::builder(path).build()
    }

    /// A builder for the other settings.
    pub fn builder(path: impl AsRef<Path>) -> DiskStoreBuilder {
        DiskStoreBuilder {
            path: path.as_ref().to_path_buf(),
            max_bytes: 256 << 20,
            max_entries: None,
            durable: false,
            rebuild_if_corrupt: false,
            max_value_bytes: None,
            thread_tier: true,
        }
    }
}
