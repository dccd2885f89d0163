//! A futex mutex that uses no thread-local storage and never allocates, so
//! it is safe inside `malloc` (parking_lot's and std's slow paths may register
//! thread-local destructors, which calls `calloc` - ours), and can be
//! unlocked by the fork handlers.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

/// A mutex protecting a `T`.
pub struct Lock<T> {
    state: AtomicU32, // 0 free, 1 locked, 2 locked with waiters
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialized by `state`, as in std's Mutex.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Lock<T> {}

fn futex(word: &AtomicU32, op: i32, val: u32) {
    // SAFETY: futex on a live, aligned u32; the kernel validates the rest.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            0usize,
            0usize,
            0u32,
        )
    };
}

impl<T> Lock<T> {
    pub const fn new(v: T) -> Self {
        Lock {
            state: AtomicU32::new(0),
            data: UnsafeCell::new(v),
        }
    }

    pub fn lock(&self) -> Guard<'_, T> {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            for _ in 0..64 {
                std::hint::spin_loop();
                if self
                    .state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Guard { lock: self };
                }
            }
            while self.state.swap(2, Ordering::Acquire) != 0 {
                futex(&self.state, libc::FUTEX_WAIT, 2);
            }
        }
        Guard { lock: self }
    }

    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Guard { lock: self })
    }

    /// Unlocks a lock whose guard was forgotten.
    ///
    /// # Safety
    /// The caller must own the lock (it locked it and forgot the guard).
    pub unsafe fn force_unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            futex(&self.state, libc::FUTEX_WAKE, 1);
        }
    }

    /// The protected data without locking.
    ///
    /// # Safety
    /// The caller must own the lock.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_unlocked(&self) -> &mut T {
        // SAFETY: the caller owns the lock, so no one else accesses the data.
        unsafe { &mut *self.data.get() }
    }
}

/// Holds a [`Lock`] until dropped.
pub struct Guard<'a, T> {
    lock: &'a Lock<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard owns the lock.
        unsafe { self.lock.force_unlock() };
    }
}
