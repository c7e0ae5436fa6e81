//! Cross-process per-key locks: open-file-description byte-range locks (`F_OFD_SETLK`) on the
//! store's lock file, one byte per key hash, and in-process bookkeeping around them.
//!
//! Why OFD locks: the kernel releases them when the last descriptor of their open file
//! description closes, which happens when the holding process dies, even by SIGKILL; a blocked
//! `F_OFD_SETLKW` is woken the moment the byte is released, with no polling. Unlike classic
//! POSIX locks they belong to the open file description, not to the process, so two stores
//! opened in one process exclude each other like two processes do, and closing some other
//! descriptor of the file does not drop them.
//!
//! Locks of one open file description do not exclude each other, so this process keeps a
//! table of the bytes it holds or waits on: the first local request for a byte goes to the
//! kernel, later ones see the byte busy here (one representative per process and key). A
//! waiter never blocks in `fcntl` on the caller's thread: one watcher thread per contended
//! byte blocks in `F_OFD_SETLKW`, releases the byte at once when granted, and wakes the
//! local waiters, who then ask for the lock again (without waiting).

use super::stats::DiskStats;
use crate::wait::{Event, WaitMode};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lock slots addressed by key hashes (a collision only makes two keys share a lock). Slot `i`
/// is the 8 bytes at `8 i`: its first byte is the lock, the 8 bytes hold the holder's lease
/// deadline (wall-clock ns), so the file is at most 8 MiB (sparse).
const SLOTS: u64 = 1 << 20;
/// Where each open store holds one presence byte (fleet size), after the slots.
pub(super) const PRESENCE_BASE: u64 = SLOTS * 8;
/// Presence bytes: processes counted at most.
pub(super) const PRESENCE_SLOTS: u64 = 256;

/// The lock byte of a record key (function and key).
pub(super) fn lock_byte(record_key: &[u8; 24]) -> u64 {
    let word = |i: usize| u64::from_be_bytes(record_key[i..i + 8].try_into().expect("8 bytes"));
    ((word(0) ^ word(16)) % SLOTS) * 8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A caller of this process holds the byte.
    Held,
    /// A watcher thread is blocked on the byte (held by another process or store).
    Watched,
}

/// The lock file of one store handle and what this handle holds or watches in it.
pub(super) struct Locks {
    file: Arc<File>,
    slots: Mutex<HashMap<u64, Slot>>,
    /// Notified whenever a byte of this table is released or a watcher is woken.
    changed: Event,
    stats: Arc<DiskStats>,
}

impl Locks {
    pub(super) fn new(file: File, stats: Arc<DiskStats>) -> Arc<Self> {
        Arc::new(Locks {
            file: Arc::new(file),
            slots: Mutex::new(HashMap::new()),
            changed: Event::new(),
            stats,
        })
    }

    /// Takes `byte` without waiting: false if this process or another holds it.
    pub(super) fn try_acquire(&self, byte: u64) -> io::Result<bool> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.contains_key(&byte) {
            return Ok(false);
        }
        let got = ofd::lock(&self.file, byte, false)?;
        if got {
            slots.insert(byte, Slot::Held);
        }
        Ok(got)
    }

    /// The lease deadline the byte's last holder wrote (wall-clock ns; 0 if none).
    pub(super) fn lease(&self, byte: u64) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        match self.file.read_at(&mut b, byte) {
            Ok(8) => u64::from_le_bytes(b),
            _ => 0,
        }
    }

    /// Records the holder's lease deadline (wall-clock ns).
    pub(super) fn set_lease(&self, byte: u64, deadline: u64) {
        use std::os::unix::fs::FileExt;
        let _ = self.file.write_all_at(&deadline.to_le_bytes(), byte);
    }

    /// Releases a byte this process holds and wakes the local waiters (the kernel wakes the
    /// other processes').
    pub(super) fn release(&self, byte: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.get(&byte) == Some(&Slot::Held) {
            // No lease while nobody holds the byte: a holder that sets none (a barrier) must
            // not look lapsed because of this one's deadline.
            self.set_lease(byte, 0);
            let _ = ofd::unlock(&self.file, byte);
            slots.remove(&byte);
        }
        drop(slots);
        self.changed.notify(usize::MAX);
    }

    /// Wakes the local waiters (an invalidation or a write may have answered them).
    pub(super) fn nudge(&self) {
        self.changed.notify(usize::MAX);
    }

    /// Waits at most `max` for `byte` to be released (or for a hint that asking again is
    /// worth it). Never blocks in `fcntl` on the caller's thread.
    pub(super) async fn wait(self: &Arc<Self>, byte: u64, max: Duration, mode: WaitMode) {
        DiskStats::inc(&self.stats.lock_waits);
        let listener = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Listen before the state can change, so that no release is missed.
            let listener = self.changed.listen();
            if let std::collections::hash_map::Entry::Vacant(v) = slots.entry(byte) {
                v.insert(Slot::Watched);
                if let Err(e) = self.spawn_watcher(byte) {
                    slots.remove(&byte);
                    tracing::warn!(error = %e, "cannot start a lock watcher thread; polling instead");
                }
            }
            listener
        };
        mode.wait(listener, Some(Instant::now() + max)).await;
    }

    fn spawn_watcher(self: &Arc<Self>, byte: u64) -> io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("herdless-disk-lock".into())
            .spawn(move || {
                // Blocks until the holder releases the byte or dies.
                let granted = loop {
                    match ofd::lock(&me.file, byte, true) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let mut slots = me.slots.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(granted, Ok(true)) {
                    let _ = ofd::unlock(&me.file, byte);
                    DiskStats::inc(&me.stats.wakeups);
                }
                slots.remove(&byte);
                drop(slots);
                me.changed.notify(usize::MAX);
            })
            .map(|_| ())
    }

    /// Holds one free presence byte for the life of this handle (the kernel frees it when the
    /// process dies); `None` when all are taken.
    pub(super) fn take_presence(&self) -> Option<u64> {
        (0..PRESENCE_SLOTS)
            .map(|i| PRESENCE_BASE + i)
            .find(|b| ofd::lock(&self.file, *b, false).unwrap_or(false))
    }

    /// How many presence bytes are held (by any process, this one included).
    pub(super) fn count_present(&self) -> usize {
        (0..PRESENCE_SLOTS)
            .filter(|i| ofd::is_locked(&self.file, PRESENCE_BASE + i).unwrap_or(false))
            .count()
    }
}

#[cfg(target_os = "linux")]
mod ofd {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    fn flock(kind: libc::c_short, byte: u64) -> libc::flock {
        // SAFETY: `flock` is plain old data; all-zero is a valid value (l_pid must be 0 for OFD).
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte as libc::off_t;
        fl.l_len = 1;
        fl
    }

    /// Takes an exclusive lock on `byte`; `Ok(false)` if it is held elsewhere (non-blocking).
    pub(super) fn lock(file: &File, byte: u64, wait: bool) -> io::Result<bool> {
        let fl = flock(libc::F_WRLCK as libc::c_short, byte);
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        // SAFETY: a valid descriptor and a valid `flock` that lives across the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => Ok(false),
            _ => Err(e),
        }
    }

    pub(super) fn unlock(file: &File, byte: u64) -> io::Result<()> {
        let fl = flock(libc::F_UNLCK as libc::c_short, byte);
        // SAFETY: as in `lock`.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Whether another open file description holds `byte`.
    pub(super) fn is_locked(file: &File, byte: u64) -> io::Result<bool> {
        let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
        // SAFETY: as in `lock`; the kernel writes the conflicting lock (if any) into `fl`.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    }
}

#[cfg(not(target_os = "linux"))]
mod ofd {
    use std::fs::File;
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "open-file-description locks need Linux",
        )
    }
    pub(super) fn lock(_: &File, _: u64, _: bool) -> io::Result<bool> {
        Err(unsupported())
    }
    pub(super) fn unlock(_: &File, _: u64) -> io::Result<()> {
        Err(unsupported())
    }
    pub(super) fn is_locked(_: &File, _: u64) -> io::Result<bool> {
        Err(unsupported())
    }
}
