//! A log line for a recurring error at most once per interval, with a
//! count of what it stands for: accept errors, connections over a cap,
//! a datapath sync that keeps failing.

use std::{
    fmt,
    time::{Duration, Instant},
};

use log::warn;

/// A log line for a recurring error at most once per interval, with the
/// number of occurrences it stands for.
#[derive(Debug)]
pub struct ThrottledLog {
    what: &'static str,
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl ThrottledLog {
    pub fn new(what: &'static str) -> Self {
        Self::every(what, Duration::from_secs(1))
    }

    /// At most one line per `interval`.
    pub fn every(what: &'static str, interval: Duration) -> Self {
        Self {
            what,
            interval,
            last: None,
            suppressed: 0,
        }
    }

    pub fn report(&mut self, err: &dyn fmt::Display) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < self.interval) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            warn!(
                "{}: {err} ({} more since the last report)",
                self.what, self.suppressed
            );
        } else {
            warn!("{}: {err}", self.what);
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_log_counts_what_it_suppresses() {
        let mut log = ThrottledLog::new("test");
        let err = std::io::Error::other("boom");
        for _ in 0..100 {
            log.report(&err);
        }
        assert_eq!(log.suppressed, 99);
    }
}
