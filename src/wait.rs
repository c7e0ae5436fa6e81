//! How to wait: the wait mode (await or park), deadlines with jittered backoff driven by a
//! [`Contention`] policy, a nesting-safe `block_on`, and the synchronization primitives of the
//! single-flight core.
//!
//! This is the one swap point for shuttle: built with `RUSTFLAGS="--cfg shuttle"`, the flight
//! map's mutexes and its wake-up event come from the `shuttle` crate, whose scheduler then
//! explores thread interleavings at random (`src/shuttle_tests.rs`; CI runs them). In that build
//! only those tests may run: shuttle's primitives panic outside a shuttle scheduler.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What to do on a hard miss while another caller computes the same key.
///
/// `Wait(Duration::MAX)` (or any wait too long to represent as a deadline) waits without a
/// deadline.
///
/// ```
/// use herdless::Contention;
/// use std::time::Duration;
/// assert_eq!(Contention::default(), Contention::Wait(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contention {
    /// Wait for the other caller's result, at most this long, then return
    /// [`Error::WaitTimeout`](crate::Error::WaitTimeout). The default waits 30 s.
    Wait(Duration),
    /// Wait at most this long, then compute anyway (a second computation, but an answer).
    ComputeAfter(Duration),
    /// Return [`Error::Busy`](crate::Error::Busy) at once.
    FailFast,
}

impl Default for Contention {
    fn default() -> Self {
        Contention::Wait(Duration::from_secs(30))
    }
}

impl Contention {
    /// The longest this policy waits (zero for fail-fast).
    pub(crate) fn max_wait(self) -> Duration {
        match self {
            Contention::Wait(d) | Contention::ComputeAfter(d) => d,
            Contention::FailFast => Duration::ZERO,
        }
    }
}

/// How a caller waits: by awaiting (async callers, on a Tokio runtime) or by parking its thread
/// (the blocking facade, no runtime needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Await a notification, with a Tokio timer for the deadline.
    Async,
    /// Park the calling thread until notified or the deadline passes.
    Blocking,
}

impl WaitMode {
    #[cfg(shuttle)]
    pub(crate) async fn wait(self, listener: Listener, _deadline: Option<Instant>) -> bool {
        listener.wait(); // shuttle checks wait without deadlines, on shuttle threads
        true
    }

    /// Waits for `listener` until `deadline`; false on timeout.
    #[cfg(not(shuttle))]
    pub(crate) async fn wait(self, listener: Listener, deadline: Option<Instant>) -> bool {
        use event_listener::Listener as _;
        match (self, deadline) {
            (WaitMode::Async, None) => {
                listener.await;
                true
            }
            (WaitMode::Async, Some(d)) => tokio::time::timeout_at(d.into(), listener).await.is_ok(),
            (WaitMode::Blocking, None) => {
                listener.wait();
                true
            }
            (WaitMode::Blocking, Some(d)) => listener.wait_deadline(d).is_some(),
        }
    }

    /// Called after waking a crowd of waiters (or being one of them): a blocking thread yields
    /// its core once, so the next woken waiter runs now instead of queueing for a time slice
    /// behind threads that are busy serving hits. On 2 cores with 10 hot threads this turns a
    /// ~5 ms-per-waiter trickle into one hand-off chain. Async tasks need nothing: their
    /// runtime's workers are not preempted by hot loops of other threads in the same way.
    pub(crate) fn hand_off(self) {
        if self == WaitMode::Blocking {
            std::thread::yield_now();
        }
    }

    /// Sleeps for `d` (used between polls of a remote lock).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only the Redis store sleeps
    pub(crate) async fn sleep(self, d: Duration) {
        match self {
            WaitMode::Async => tokio::time::sleep(d).await,
            WaitMode::Blocking => std::thread::sleep(d),
        }
    }
}

/// ±25 % jitter so that pollers that started together do not stay in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    let f = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

/// The first and the largest interval between two polls of a remote lock.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(100);

/// One caller's patience under a [`Contention`] policy: its deadline and its polling
/// interval, which starts at 2 ms and doubles up to 100 ms, jittered. Every wait in the crate
/// (in-process flights, remote locks, barrier locks) goes through it.
#[derive(Debug, Clone)]
pub(crate) struct Patience {
    policy: Contention,
    /// `None`: no deadline (a wait too long to represent, such as `Duration::MAX`).
    deadline: Option<Instant>,
    poll: Duration,
}

impl Patience {
    pub(crate) fn new(policy: Contention) -> Self {
        Patience {
            policy,
            deadline: Instant::now().checked_add(policy.max_wait()),
            poll: FIRST_POLL,
        }
    }

    pub(crate) fn policy(&self) -> Contention {
        self.policy
    }

    pub(crate) fn fail_fast(&self) -> bool {
        self.policy == Contention::FailFast
    }

    /// The instant the wait ends, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The next interval to wait before asking again (jittered, never past the deadline), or
    /// `None` when the deadline has passed.
    pub(crate) fn next_poll(&mut self) -> Option<Duration> {
        let left = match self.deadline {
            Some(d) => d
                .checked_duration_since(Instant::now())
                .filter(|l| !l.is_zero())?,
            None => Duration::MAX,
        };
        let wait = jitter(left.min(self.poll));
        self.poll = (self.poll * 2).min(MAX_POLL);
        Some(wait)
    }
}

std::thread_local! {
    /// True while this thread polls inside [`block_on`]: a request that needs this thread's
    /// own runtime to progress would then never finish (the Redis store checks it).
    static IN_BLOCK_ON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is blocked in [`block_on`] (see `IN_BLOCK_ON`).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // checked by the Redis store
pub(crate) fn in_block_on() -> bool {
    IN_BLOCK_ON.with(|f| f.get())
}

/// Polls a future to completion on this thread, parking between wake-ups.
///
/// Unlike `futures::executor::block_on` it may nest (a blocking layer calling a blocking layer
/// calls it again from inside), which the layered recipes need.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_BLOCK_ON.with(|f| f.set(self.0));
        }
    }
    let _restore = Restore(IN_BLOCK_ON.with(|f| f.replace(true)));
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    #[test]
    fn patience_without_representable_deadline_waits_forever() {
        let mut p = Patience::new(Contention::Wait(Duration::MAX));
        assert_eq!(p.deadline(), None);
        assert!(p.next_poll().is_some());
    }

    #[test]
    fn patience_backs_off_to_the_cap_and_stops_at_the_deadline() {
        let mut p = Patience::new(Contention::Wait(Duration::from_secs(3600)));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = p.next_poll().unwrap();
        }
        assert!(last <= MAX_POLL.mul_f64(1.25) && last >= MAX_POLL.mul_f64(0.75));
        let mut done = Patience::new(Contention::Wait(Duration::ZERO));
        assert_eq!(done.next_poll(), None);
    }
}
