//! Bridges the `log` crate to charon's `dbg` hook, so plugin messages go through charon's
//! loggers with the IKE SA context of the calling thread.
//!
//! Target `cfg` goes to charon's CFG group, everything else to IKE. Levels: error, warn
//! and info are DBG1 (shown by default), debug DBG2, trace DBG3.

use super::symbols;
use ::log::{Level, LevelFilter, Log, Metadata, Record};
use once_cell::sync::Lazy;
use std::ffi::CString;

const DBG_IKE: i32 = 2;

/// DBG_CFG is 5 before strongSwan 6.0.2 and 6 after DBG_WCH was inserted.
static DBG_CFG: Lazy<i32> = Lazy::new(|| if symbols::has_wch_group() { 6 } else { 5 });

struct CharonLogger;

static LOGGER: CharonLogger = CharonLogger;

impl Log for CharonLogger {
    /// Ours, plus warnings and errors of the crates below (reqwest, hyper, rustls): their
    /// debug chatter would flood charon's IKE group.
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.target().starts_with("strongswan_qkd")
            || metadata.target() == "cfg"
            || metadata.level() <= Level::Warn
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let group = if record.target() == "cfg" {
            *DBG_CFG
        } else {
            DBG_IKE
        };
        let level = match record.level() {
            Level::Error | Level::Warn | Level::Info => 1,
            Level::Debug => 2,
            Level::Trace => 3,
        };
        let text = record.args().to_string().replace('\0', "\\0");
        let text = CString::new(text).expect("NULs replaced");
        match symbols::dbg() {
            // SAFETY: `dbg` is printf-like; "%s" with one NUL-terminated string.
            Some(dbg) => unsafe { dbg(group, level, c"%s".as_ptr() as *mut _, text.as_ptr()) },
            None => eprintln!("{}", text.to_string_lossy()),
        }
    }

    fn flush(&self) {}
}

pub(crate) fn install() {
    if ::log::set_logger(&LOGGER).is_ok() {
        ::log::set_max_level(LevelFilter::Trace);
    }
}
