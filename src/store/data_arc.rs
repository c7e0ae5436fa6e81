//! A shared, reference-counted handle whose pointer addresses the data itself.
//!
//! `std::sync::Arc<T>` points at its counts, so every use adds the counts' size to reach `T`:
//! one instruction on each memory hit, whose budget is counted in instructions (issue 13). This
//! handle keeps the pointer `Arc::into_raw` gives, and does everything else through `Arc`'s own
//! raw-pointer functions, so the counting and freeing are `Arc`'s.

use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

/// An `Arc<T>` held by its data pointer. Clone and drop behave exactly as `Arc`'s.
pub(crate) struct DataArc<T> {
    data: NonNull<T>,
    /// Owns one strong count of an `Arc<T>`: `Send`, `Sync` and drop check follow from it.
    _owns: PhantomData<Arc<T>>,
}

// SAFETY: a DataArc is an Arc<T> in another form; Arc<T> is Send and Sync when T is both.
unsafe impl<T: Send + Sync> Send for DataArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for DataArc<T> {}

impl<T> DataArc<T> {
    pub(crate) fn new(value: T) -> Self {
        let data = Arc::into_raw(Arc::new(value)).cast_mut();
        DataArc {
            // `Arc::into_raw` never returns null.
            data: NonNull::new(data).expect("Arc::into_raw is never null"),
            _owns: PhantomData,
        }
    }
}

impl<T> Deref for DataArc<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: `data` came from `Arc::into_raw` and this handle holds a strong count, so the
        // data is alive; only shared references are ever made from it.
        unsafe { self.data.as_ref() }
    }
}

impl<T> Clone for DataArc<T> {
    fn clone(&self) -> Self {
        // SAFETY: `data` came from `Arc::into_raw` and its count is at least 1 (ours).
        unsafe { Arc::increment_strong_count(self.data.as_ptr().cast_const()) };
        DataArc {
            data: self.data,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for DataArc<T> {
    fn drop(&mut self) {
        // SAFETY: gives back the one strong count this handle owns, exactly once.
        unsafe { drop(Arc::from_raw(self.data.as_ptr().cast_const())) }
    }
}

#[cfg(test)]
mod tests {
    use super::DataArc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_value_is_dropped_once_after_the_last_handle() {
        let drops = Arc::new(AtomicUsize::new(0));
        let a = DataArc::new(Counted(drops.clone()));
        let b = a.clone();
        let c = std::thread::spawn(move || {
            let c = b.clone();
            drop(b);
            c
        })
        .join()
        .unwrap();
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        assert!(Arc::ptr_eq(&c.0, &drops));
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }
}
