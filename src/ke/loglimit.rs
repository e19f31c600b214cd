//! A token bucket for log lines that anyone on the network can cause: what a responder
//! logs about exchanges before the peer is authenticated. A flood of such exchanges gets
//! [`BURST`] lines, then one per [`INTERVAL`], and a line saying how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines logged in a row before the limit applies.
pub const BURST: u32 = 10;
/// One more line per interval after the burst.
pub const INTERVAL: Duration = Duration::from_secs(6);

pub struct LogLimiter {
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket was full).
    refilled: Instant,
    suppressed: u64,
}

/// Whether a line may be logged now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Yes, after a line saying that this many were left out since the last one.
    Log {
        suppressed_before: u64,
    },
    Suppress,
}

impl LogLimiter {
    pub fn new(now: Instant) -> LogLimiter {
        LogLimiter {
            state: Mutex::new(Bucket {
                tokens: BURST,
                refilled: now,
                suppressed: 0,
            }),
        }
    }

    pub fn admit(&self, now: Instant) -> Admit {
        let mut b = crate::health::lock("the log limiter", &self.state);
        let earned = now.saturating_duration_since(b.refilled).as_nanos() / INTERVAL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            b.tokens = b.tokens.saturating_add(earned).min(BURST);
            b.refilled += INTERVAL * earned.min(BURST);
            if b.tokens == BURST {
                b.refilled = now;
            }
        }
        if b.tokens == 0 {
            b.suppressed += 1;
            return Admit::Suppress;
        }
        b.tokens -= 1;
        Admit::Log {
            suppressed_before: std::mem::take(&mut b.suppressed),
        }
    }

    /// Logs `message` at `level` if the bucket allows it now.
    pub fn log(&self, level: log::Level, message: std::fmt::Arguments<'_>) {
        if let Admit::Log { suppressed_before } = self.admit(Instant::now()) {
            if suppressed_before > 0 {
                log::warn!(
                    "qkd: {suppressed_before} similar messages about exchanges with not yet \
                     authenticated peers suppressed (at most {BURST} in a row, then one per {}s)",
                    INTERVAL.as_secs()
                );
            }
            log::log!(level, "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_per_interval_and_the_count_of_the_rest() {
        let t0 = Instant::now();
        let limiter = LogLimiter::new(t0);
        for _ in 0..BURST {
            assert_eq!(
                limiter.admit(t0),
                Admit::Log {
                    suppressed_before: 0
                }
            );
        }
        for _ in 0..1000 {
            assert_eq!(limiter.admit(t0 + INTERVAL / 2), Admit::Suppress);
        }
        assert_eq!(
            limiter.admit(t0 + INTERVAL),
            Admit::Log {
                suppressed_before: 1000
            }
        );
        assert_eq!(limiter.admit(t0 + INTERVAL), Admit::Suppress);
        // A quiet hour refills the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..BURST {
            assert!(matches!(limiter.admit(later), Admit::Log { .. }));
        }
        assert_eq!(limiter.admit(later), Admit::Suppress);
    }
}
