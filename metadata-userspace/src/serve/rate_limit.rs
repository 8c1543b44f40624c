//! Per-instance rate limiting with Neutron's semantics
//! (`[metadata_rate_limiting]`): a request is refused with 429 when the
//! instance made `base_requests` in the last `base_window`, or
//! `burst_requests` in the last `burst_window`. Counted per instance, over
//! IPv4 and IPv6 (and the agent socket) together; Neutron can only count
//! per source address of one family.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::config::RateLimitConfig;

/// Instances tracked before idle ones are forgotten.
const PRUNE_AT: usize = 4096;

#[derive(Debug)]
pub struct RateLimiter {
    limits: [(Duration, usize); 2],
    /// Instance -> times of its recent requests, oldest first, at most the
    /// larger limit of them.
    recent: Mutex<HashMap<Arc<str>, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// `None` when rate limiting is off.
    pub fn new(config: &RateLimitConfig) -> Option<Self> {
        config.enabled.then(|| Self {
            limits: [
                (
                    Duration::from_secs(config.base_window_s),
                    config.base_requests,
                ),
                (
                    Duration::from_secs(config.burst_window_s),
                    config.burst_requests,
                ),
            ],
            recent: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a request of `instance` at `now`; `Err(retry_after)` when it
    /// is over a limit (and is then not counted).
    pub fn check(&self, instance: &str, now: Instant) -> Result<(), Duration> {
        let longest = self
            .limits
            .iter()
            .map(|(w, _)| *w)
            .max()
            .unwrap_or_default();
        let keep = self
            .limits
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or_default();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() >= PRUNE_AT {
            recent.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < longest)
            });
        }
        let times = recent.entry(Arc::from(instance)).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= longest)
        {
            times.pop_front();
        }
        for (window, limit) in self.limits {
            let in_window: Vec<&Instant> = times
                .iter()
                .filter(|t| now.duration_since(**t) < window)
                .collect();
            if in_window.len() >= limit {
                // Free again when the oldest request in the window leaves it.
                let oldest = in_window.first().map_or(now, |t| **t);
                return Err(window.saturating_sub(now.duration_since(oldest)));
            }
        }
        times.push_back(now);
        while times.len() > keep {
            times.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(base: (u64, usize), burst: (u64, usize)) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            enabled: true,
            base_window_s: base.0,
            base_requests: base.1,
            burst_window_s: burst.0,
            burst_requests: burst.1,
        })
        .unwrap()
    }

    #[test]
    fn the_burst_and_the_base_window_each_limit_one_instance_only() {
        let limiter = limiter((10, 5), (1, 3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let retry = limiter.check("a", t0).unwrap_err();
        assert!(retry <= Duration::from_secs(1), "{retry:?}");
        assert!(
            limiter.check("b", t0).is_ok(),
            "another instance is not limited"
        );
        // A second later the burst window is clear, the base one is not.
        let t1 = t0 + Duration::from_millis(1100);
        assert!(limiter.check("a", t1).is_ok());
        assert!(limiter.check("a", t1).is_ok());
        assert!(
            limiter.check("a", t1 + Duration::from_secs(1)).is_err(),
            "5 in 10 s"
        );
        assert!(
            limiter.check("a", t0 + Duration::from_secs(11)).is_ok(),
            "the base window moved on"
        );
    }

    #[test]
    fn off_is_none() {
        assert!(RateLimiter::new(&RateLimitConfig::default()).is_none());
    }
}
