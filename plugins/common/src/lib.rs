// SPDX-License-Identifier: MPL-2.0

//! Helpers shared by the vcambridge plugins: one definition instead of a copy per crate.
//!
//! * [`lock`]: a mutex lock that survives a poisoned mutex.
//! * [`live`]: how a live source that receives frames from another process stamps them
//!   (onto the pipeline's running time) and answers the latency query (used by `shmringsrc`
//!   and `surfacesrc`).
//! * `testing` (feature `testing`, for the plugins' tests): the check of that behaviour both
//!   sources' tests run.

use std::sync::{Mutex, MutexGuard};

pub mod live;
#[cfg(feature = "testing")]
pub mod testing;

/// Lock a mutex, taking the data even if a panicking thread poisoned it (the elements' state
/// stays usable; the panic is already reported elsewhere).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
