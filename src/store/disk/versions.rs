//! The version file: the per-thread tier's write versions (`hot::Versions`), shared by every
//! process that opens the store, through a `MAP_SHARED` memory map of `herdless.versions`.
//!
//! Why: a disk hit is a read transaction on LMDB (about half a microsecond); the engine's
//! per-thread tier serves a hot key from the thread's own copy in a few nanoseconds, but only
//! while it can tell that no write of the key happened since the copy was made. In one process
//! the store's in-memory counters tell it; across processes the counters must be where every
//! process sees them, with no message sent: a shared page. Atomics on a shared mapping are
//! coherent between processes like between threads (the same physical memory).
//!
//! The protocol is the tier's (see `hot`), with one more bump: a write bumps its key's counter
//! before its transaction commits and again after. The bump after makes a committed write
//! visible to every tier before the call returns; the bump before confines what a process
//! killed between its commit and its second bump can leave behind to tiers that copied the key
//! while that write was in flight: they serve the value it replaced until the next write of a
//! key sharing the counter, or that value's own expiry (the tier never serves past it).
//!
//! Counters are indexed by the key's `Hash` (the same function in every process of one build;
//! the records' own keys depend on it too, see `record`). A file of another size, or one that
//! cannot be mapped, leaves the store without a tier (every hit reads LMDB), with a warning.

use crate::hot::{Versions, VERSIONS};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// The file's name in the store directory.
pub(super) const FILE: &str = "herdless.versions";

/// The mapping; unmapped when the last `Versions` using it is dropped.
struct Map {
    addr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is only read and written through atomics.
unsafe impl Send for Map {}
unsafe impl Sync for Map {}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// Maps `dir/herdless.versions` (created, zero-filled, if absent).
pub(super) fn open(dir: &Path) -> std::io::Result<Versions> {
    let len = VERSIONS * std::mem::size_of::<AtomicU64>();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(FILE))?;
    let size = file.metadata()?.len();
    if size == 0 {
        // Two processes may both get here: growing to the same size twice is harmless.
        file.set_len(len as u64)?;
    } else if size != len as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{FILE} is {size} bytes, expected {len}"),
        ));
    }
    // SAFETY: a fresh shared mapping of the whole file; the fd may be closed afterwards.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let addr = NonNull::new(addr).expect("mmap returned null without failing");
    let map = Map { addr, len };
    // SAFETY: page-aligned, `len` bytes = VERSIONS atomics, valid while `map` lives (it is the
    // owner), and every process touches them only atomically.
    Ok(unsafe { Versions::shared(addr.cast::<AtomicU64>(), Box::new(map)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_maps_of_one_file_see_each_others_bumps() {
        let dir = std::env::temp_dir().join(format!("herdless-versions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (open(&dir).unwrap(), open(&dir).unwrap());
        let before = b.of("k").load(Ordering::Acquire);
        a.bump("k");
        assert_eq!(b.of("k").load(Ordering::Acquire), before + 1);
        a.bump_all();
        assert_eq!(b.of("k").load(Ordering::Acquire), before + 2);
        drop((a, b));
        // A file of another size is refused, not misread.
        std::fs::write(dir.join(FILE), [0u8; 100]).unwrap();
        assert!(open(&dir).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
