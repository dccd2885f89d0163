//! The one lock helper of the workspace: a std mutex whose poisoning is
//! ignored. A thread that panicked while holding a lock has already been
//! logged; refusing every later request for it would turn one bug into an
//! outage. (std's mutex rather than parking_lot's: the transport runs inside
//! programs under the runtime too, where a lock must not allocate.)

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, whether or not a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
