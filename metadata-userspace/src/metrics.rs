//! Prometheus metrics (prometheus-client, the official crate) and health
//! endpoints on a host-only listener (`[metrics] listen`, never the
//! metadata address): requests by listener, status and path class,
//! latency, rejections by reason, taps attached, and the datapath's
//! per-CPU counters by device and verdict, read from the pinned map at
//! scrape time. No per-instance labels: cardinality stays bounded.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use log::debug;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{backends::cache::Lookup, config::Config, datapath::status, inventory::PortIndex};

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

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

fn lookup_label(lookup: Lookup) -> &'static str {
    match lookup {
        Lookup::Hit => "hit",
        Lookup::Miss => "miss",
        Lookup::Collapsed => "collapsed",
        Lookup::Bypass => "bypass",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    database: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    device: String,
    verdict: String,
}

/// Every metric the daemon keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ListenerLabels, Histogram>,
    rejections: Family<RejectionLabels, Counter>,
    taps: Gauge,
    sync_failures: Counter,
    upstream: Family<OutcomeLabels, Counter>,
    upstream_latency: Histogram,
    cache: Family<OutcomeLabels, Counter>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("metadata");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ListenerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
        });
        let rejections = Family::<RejectionLabels, Counter>::default();
        let taps = Gauge::default();
        let sync_failures = Counter::default();
        registry.register(
            "requests",
            "Requests answered, by listener, status and path class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request",
            latency.clone(),
        );
        registry.register(
            "rejections",
            "Requests and connections refused before the backend",
            rejections.clone(),
        );
        registry.register("taps_attached", "Taps carrying the program", taps.clone());
        registry.register(
            "sync_failures",
            "Datapath updates that failed as a whole (a full slot range, a netlink error) and were retried",
            sync_failures.clone(),
        );
        let (upstream, upstream_latency, cache) = register_upstream(&mut registry);
        Self {
            registry,
            requests,
            latency,
            rejections,
            taps,
            sync_failures,
            upstream,
            upstream_latency,
            cache,
            ready: AtomicBool::new(false),
        }
    }
}

/// The Nova backend's series: calls by outcome, their latency, and how
/// the response cache answered.
fn register_upstream(
    registry: &mut Registry,
) -> (
    Family<OutcomeLabels, Counter>,
    Histogram,
    Family<OutcomeLabels, Counter>,
) {
    let upstream = Family::<OutcomeLabels, Counter>::default();
    let latency = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
    let cache = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "upstream_requests",
        "Calls to Nova, by outcome (answered, failed, timeout, oversized)",
        upstream.clone(),
    );
    registry.register(
        "upstream_duration_seconds",
        "Time Nova took to answer a call",
        latency.clone(),
    );
    registry.register(
        "response_cache_lookups",
        "Nova backend requests by how the response cache answered (hit, miss, collapsed into another's call, bypass)",
        cache.clone(),
    );
    (upstream, latency, cache)
}

impl Metrics {
    /// One call to Nova and how it ended.
    pub fn upstream(&self, outcome: Upstream, took: Duration) {
        self.upstream
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        if outcome == Upstream::Answered {
            self.upstream_latency.observe(took.as_secs_f64());
        }
    }

    pub fn cache_lookup(&self, lookup: Lookup) {
        self.cache
            .get_or_create(&OutcomeLabels {
                outcome: lookup_label(lookup),
            })
            .inc();
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

    pub fn set_taps(&self, taps: usize) {
        self.taps.set(i64::try_from(taps).unwrap_or(i64::MAX));
    }

    pub fn sync_failed(&self) {
        self.sync_failures.inc();
    }

    /// Ready once the datapath is attached and the listeners accept.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The text exposition: the daemon's own metrics, then the datapath's
    /// counters as they stand in the pinned map.
    async fn scrape(&self, config: &Config) -> String {
        let mut text = String::new();
        let mut datapath = Registry::with_prefix("metadata");
        let packets = Family::<PacketLabels, Counter>::default();
        datapath.register(
            "datapath_packets",
            "Packets seen by the programs, by device and verdict",
            packets.clone(),
        );
        let connected = Family::<DatabaseLabels, Gauge>::default();
        datapath.register("port_source_connected", "Whether the live port source is connected to each database (1) or serving the last known ports (0)", connected.clone());
        let state = std::fs::read_to_string(
            config
                .daemon
                .state_dir
                .join(crate::daemon::PORTS_STATE_FILE),
        )
        .unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        for (database, up) in state["connected"].as_object().into_iter().flatten() {
            let labels = DatabaseLabels {
                database: database.clone(),
            };
            connected
                .get_or_create(&labels)
                .set(i64::from(up.as_bool().unwrap_or(false)));
        }
        match status::read_status(config, &PortIndex::default()).await {
            Ok(status) => {
                let host = status
                    .host_counters
                    .map(|c| (status.host_device.clone(), c));
                for (device, counters) in status
                    .taps
                    .into_iter()
                    .map(|t| (t.device, t.counters))
                    .chain(host)
                {
                    let fields = serde_json::to_value(counters).unwrap_or_default();
                    for (verdict, value) in fields.as_object().into_iter().flatten() {
                        let labels = PacketLabels {
                            device: device.clone(),
                            verdict: verdict.clone(),
                        };
                        packets
                            .get_or_create(&labels)
                            .inc_by(value.as_u64().unwrap_or(0));
                    }
                }
            }
            Err(err) => debug!("datapath counters unavailable for the scrape: {err}"),
        }
        // Writing into a String cannot fail.
        encode(&mut text, &self.registry).ok();
        let mut own = String::new();
        encode(&mut own, &datapath).ok();
        // One exposition: the second registry's lines before its own EOF.
        let text = text.trim_end().trim_end_matches("# EOF").to_owned();
        text + &own
    }
}

/// Serves /metrics, /healthz and /readyz on `listener` until the process
/// ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, config: Arc<Config>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!("metrics accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, config) = (Arc::clone(&metrics), Arc::clone(&config));
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (metrics, config) = (Arc::clone(&metrics), Arc::clone(&config));
                async move { Ok::<_, Infallible>(answer(&request, &metrics, &config).await) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("metrics connection: {err}");
            }
        });
    }
}

async fn answer(
    request: &Request<Incoming>,
    metrics: &Metrics,
    config: &Config,
) -> Response<Full<Bytes>> {
    let (status, body) = match request.uri().path() {
        "/metrics" => (StatusCode::OK, metrics.scrape(config).await),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "ready\n".to_owned())
        }
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
