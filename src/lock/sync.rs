//! The synchronization primitives of the single-flight core, swappable for shuttle's.
//!
//! Built with `RUSTFLAGS="--cfg shuttle"`, the flight map's mutexes and its wake-up event come
//! from the `shuttle` crate, whose scheduler then explores thread interleavings at random (the
//! `shuttle_checks` tests in `lock/local.rs`; CI runs them). In that build only those tests may
//! run: shuttle's primitives panic outside a shuttle scheduler.

#[cfg(not(shuttle))]
pub(crate) use event_listener::{Event, EventListener as Listener};
#[cfg(not(shuttle))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(shuttle)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};
#[cfg(shuttle)]
pub(crate) use shuttle_event::{Event, Listener};

#[cfg(shuttle)]
mod shuttle_event {
    use shuttle::sync::{Condvar, Mutex};
    use std::sync::Arc;

    struct Inner {
        generation: Mutex<u64>,
        changed: Condvar,
    }

    /// A notify-all event with event_listener's listen-then-check discipline.
    pub(crate) struct Event(Arc<Inner>);

    /// Remembers the generation it saw; waiting returns once a notification moved past it.
    pub(crate) struct Listener {
        inner: Arc<Inner>,
        seen: u64,
    }

    impl Event {
        pub(crate) fn new() -> Self {
            Event(Arc::new(Inner {
                generation: Mutex::new(0),
                changed: Condvar::new(),
            }))
        }
        pub(crate) fn listen(&self) -> Listener {
            let seen = *self.0.generation.lock().unwrap();
            Listener {
                inner: self.0.clone(),
                seen,
            }
        }
        pub(crate) fn notify(&self, _n: usize) {
            *self.0.generation.lock().unwrap() += 1;
            self.0.changed.notify_all();
        }
    }

    impl Listener {
        pub(crate) fn wait(self) {
            let mut g = self.inner.generation.lock().unwrap();
            while *g == self.seen {
                g = self.inner.changed.wait(g).unwrap();
            }
        }
    }
}
