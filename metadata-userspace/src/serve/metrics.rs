//! The serving core's metrics: requests by listener, status and path
//! class, their latency, and refusals by reason. No per-instance labels,
//! so the series stay bounded on a busy host.

use std::time::Duration;

use http::StatusCode;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Which listener served a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Listener {
    Proxy,
    Agent,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Agent => "agent",
        }
    }
}

/// What a path asks for, coarsely.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PathClass {
    Openstack,
    Ec2,
    Token,
    Other,
}

impl PathClass {
    fn label(self) -> &'static str {
        match self {
            Self::Openstack => "openstack",
            Self::Ec2 => "ec2",
            Self::Token => "token",
            Self::Other => "other",
        }
    }

    pub fn of(path: &str) -> Self {
        if path.ends_with("/api/token") {
            Self::Token
        } else if path.starts_with("/openstack") {
            Self::Openstack
        } else if path.len() > 1 {
            Self::Ec2
        } else {
            Self::Other
        }
    }
}

/// Why a request or connection was refused before the backend.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Rejection {
    RateLimit,
    ConnectionCap,
    Token,
    BadRequest,
}

impl Rejection {
    fn label(self) -> &'static str {
        match self {
            Self::RateLimit => "rate_limit",
            Self::ConnectionCap => "connection_cap",
            Self::Token => "token",
            Self::BadRequest => "bad_request",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    status: u16,
    path: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    reason: &'static str,
}

/// The serving core's families; clones count into the same series.
#[derive(Debug, Clone)]
pub struct ServeMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<ListenerLabels, Histogram>,
    rejections: Family<RejectionLabels, Counter>,
}

impl ServeMetrics {
    /// Registers the families in `registry` and returns their handles.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
            }),
            rejections: Family::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by listener, status and path class",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request",
            metrics.latency.clone(),
        );
        registry.register(
            "rejections",
            "Requests and connections refused before the backend",
            metrics.rejections.clone(),
        );
        metrics
    }

    pub fn request(&self, listener: Listener, status: StatusCode, path: PathClass, took: Duration) {
        let listener = listener.label();
        let labels = RequestLabels {
            listener,
            status: status.as_u16(),
            path: path.label(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&ListenerLabels { listener })
            .observe(took.as_secs_f64());
    }

    pub fn rejected(&self, reason: Rejection) {
        self.rejections
            .get_or_create(&RejectionLabels {
                reason: reason.label(),
            })
            .inc();
    }
}
