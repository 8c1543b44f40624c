//! A live port source's own series: whether it is connected to each of
//! its databases.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    database: &'static str,
}

/// `port_source_connected{database}`; clones set the same series.
#[derive(Debug, Clone, Default)]
pub struct SourceMetrics {
    connected: Family<DatabaseLabels, Gauge>,
}

impl SourceMetrics {
    /// Registers the family in `registry` and returns its handle.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "port_source_connected",
            "Whether the live port source is connected to each database (1) or serving the last known ports (0)",
            metrics.connected.clone(),
        );
        metrics
    }

    pub fn set_connected(&self, database: &'static str, connected: bool) {
        self.connected
            .get_or_create(&DatabaseLabels { database })
            .set(i64::from(connected));
    }
}
