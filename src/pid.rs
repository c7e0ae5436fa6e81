//! This process's id, read without a system call.
//!
//! A Redis store checks on every call that it still runs in the process that created it (a
//! forked child has none of its I/O threads, and must not share its parent's socket).
//! `std::process::id()` is a `getpid` system call each time (glibc stopped caching it), which
//! showed up at about 5 % of a Redis hit's CPU. The id is cached instead, and a
//! `pthread_atfork` child handler clears the cache in every child before `fork` returns there
//! (the child has one thread then, so no read can race it). A child made by a raw `clone`
//! system call, bypassing libc's `fork`, is not seen; such a child must not use a store it
//! inherited.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// The cached id; 0 = not known (no process has id 0).
static PID: AtomicU32 = AtomicU32::new(0);
static HANDLER: Once = Once::new();

extern "C" fn forget_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's id (`std::process::id()`), cached.
#[inline]
pub(crate) fn current() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => learn(),
        pid => pid,
    }
}

#[cold]
fn learn() -> u32 {
    HANDLER.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic (async-signal-safe).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cached_id_is_the_process_id_and_a_child_learns_its_own() {
        assert_eq!(super::current(), std::process::id());
        assert_eq!(super::current(), std::process::id());
        // SAFETY: the child only reads atomics, calls getpid and exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ok = super::current() == std::process::id();
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child made above.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child saw its parent's id"
        );
    }
}
