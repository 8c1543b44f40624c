//! The Nova backend's metrics: calls to Nova by outcome, their latency,
//! and how the response cache answered.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::cache::Lookup;

/// How a call to Nova ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Nova answered (any status).
    Answered,
    /// Connecting or the exchange failed (refused, reset, garbage).
    Failed,
    /// No whole answer within the timeout.
    Timeout,
    /// An answer over the size limit.
    Oversized,
}

impl Upstream {
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Oversized => "oversized",
        }
    }
}

impl Lookup {
    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Collapsed => "collapsed",
            Self::Bypass => "bypass",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The upstream families; clones count into the same series.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    calls: Family<OutcomeLabels, Counter>,
    latency: Histogram,
    cache: Family<OutcomeLabels, Counter>,
}

impl UpstreamMetrics {
    /// Registers the families in `registry` and returns their handles.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls: Family::default(),
            latency: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            cache: Family::default(),
        };
        registry.register(
            "upstream_requests",
            "Calls to Nova, by outcome (answered, failed, timeout, oversized)",
            metrics.calls.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time Nova took to answer a call",
            metrics.latency.clone(),
        );
        registry.register(
            "response_cache_lookups",
            "Nova backend requests by how the response cache answered (hit, miss, collapsed into another's call, bypass)",
            metrics.cache.clone(),
        );
        metrics
    }

    /// One call to Nova and how it ended.
    pub fn upstream(&self, outcome: Upstream, took: Duration) {
        self.calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        if outcome == Upstream::Answered {
            self.latency.observe(took.as_secs_f64());
        }
    }

    pub fn cache_lookup(&self, lookup: Lookup) {
        self.cache
            .get_or_create(&OutcomeLabels {
                outcome: lookup.label(),
            })
            .inc();
    }
}
