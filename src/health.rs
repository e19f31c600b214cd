//! Internal faults the plugin survived: panics caught at a boundary, and locks found
//! poisoned (a thread panicked while holding them). Each is logged as an error and counted;
//! `qkdctl status` shows the count, so a plugin carrying on after one never looks healthy.
//!
//! A poisoned lock is recovered, not treated as "no value": every lock of the plugin guards
//! state that a panicking holder leaves consistent (values are replaced whole), and reading
//! it as missing would switch QKD off for good while everything else looked fine. The
//! poison is cleared after it was reported, so one panic is one log line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

static INTERNAL_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Internal errors since the plugin was loaded.
pub fn internal_errors() -> u64 {
    INTERNAL_ERRORS.load(Ordering::Relaxed)
}

/// Logs an internal error (a bug) and counts it.
pub fn record(what: std::fmt::Arguments<'_>) {
    let n = INTERNAL_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
    log::error!(
        "qkd: internal error #{n}: {what} (please report this bug; `qkdctl status` counts these)"
    );
}

fn poisoned(what: &str) {
    record(format_args!(
        "a thread panicked while holding the lock of {what}; continuing with its last state"
    ));
}

/// `mutex`, recovered (and reported) if a holder panicked.
pub fn lock<'a, T>(what: &str, mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
    mutex.lock().unwrap_or_else(|e| {
        poisoned(what);
        mutex.clear_poison();
        e.into_inner()
    })
}

/// `lock` read, recovered (and reported) if a writer panicked.
pub fn read<'a, T>(what: &str, lock: &'a RwLock<T>) -> RwLockReadGuard<'a, T> {
    lock.read().unwrap_or_else(|e| {
        poisoned(what);
        lock.clear_poison();
        e.into_inner()
    })
}

/// `lock` written, recovered (and reported) if a writer panicked.
pub fn write<'a, T>(what: &str, lock: &'a RwLock<T>) -> RwLockWriteGuard<'a, T> {
    lock.write().unwrap_or_else(|e| {
        poisoned(what);
        lock.clear_poison();
        e.into_inner()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_keeps_its_value_and_is_counted_once() {
        let value = RwLock::new(Some(7));
        let mutex = Mutex::new(8);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = value.write().unwrap();
                let _held = mutex.lock().unwrap();
                panic!("test: poison both locks");
            })
            .join()
            .unwrap_err();
        });
        assert!(value.is_poisoned() && mutex.is_poisoned());
        let before = internal_errors();
        assert_eq!(*read("the test value", &value), Some(7));
        assert_eq!(*lock("the test mutex", &mutex), 8);
        // Other tests may count too: at least these two, and the poison is gone.
        assert!(internal_errors() >= before + 2);
        assert!(!value.is_poisoned() && !mutex.is_poisoned());
        assert_eq!(*write("the test value", &value), Some(7));
    }
}
