//! Port source "neutron": this host's ports from the Neutron API, for
//! ML2/OVS and linuxbridge compute nodes (no OVN Southbound). It lists
//! `GET /v2.0/ports?binding:host_id=<host>` with a Keystone token at start,
//! every `refresh_interval_s` (with jitter), at once when a local tap
//! appears that no known port names, and on SIGHUP. While Keystone or
//! Neutron fail, the last known ports stay served; each change of that
//! state is one log line.

pub mod keystone;
mod transport;
pub mod view;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use log::{info, warn};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use self::{
    keystone::{Keystone, brief, join},
    transport::Http,
    view::{NeutronPort, View},
};
use super::{
    PortSource, Snapshot,
    metrics::SourceMetrics,
    ovsdb::{client::Client, remote::TlsFiles},
    state::{AmbiguousTap, PortsState, WaitingTap},
};
use crate::{
    config::{GlobPattern, KeystoneConfig, OvsdbRemote},
    tls_client::TlsClientError,
};

/// The database label of this source's `port_source_connected` series.
const DATABASE: &str = "neutron";
/// Retries after a failure start here and double up to the refresh period.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// A new tap triggers at most one listing this often.
const TRIGGER_MIN: Duration = Duration::from_millis(500);

/// Why Keystone or Neutron could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NeutronError {
    #[error("ports.keystone: Keystone refused the credentials: {answer}")]
    Credentials { answer: String },
    #[error("Keystone answered {status}: {answer}")]
    Keystone {
        status: ::http::StatusCode,
        answer: String,
    },
    #[error(
        "ports.keystone: the catalog has no network endpoint for region {region:?} and interfaces {interfaces:?} (set endpoint_override?)"
    )]
    NoEndpoint {
        region: Option<String>,
        interfaces: Vec<&'static str>,
    },
    #[error("Neutron answered {status}: {answer}")]
    Neutron {
        status: ::http::StatusCode,
        answer: String,
    },
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Unexpected(String),
    #[error("{key}: reading {}: {source}", path.display())]
    Secret {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ports.keystone: {0}")]
    Tls(#[from] TlsClientError),
}

impl NeutronError {
    /// An error no retry mends: the operator must change the config.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Credentials { .. } | Self::Secret { .. } | Self::Tls(_)
        )
    }
}

/// What the source needs from the configuration.
#[derive(Debug, Clone)]
pub struct NeutronSettings {
    pub keystone: KeystoneConfig,
    /// This node's binding:host_id.
    pub host: String,
    pub refresh: Duration,
    /// OVS, for each tap's exact port id; tap names only when absent.
    pub ovs: Option<OvsdbRemote>,
    /// `datapath.interfaces`: which local devices are taps.
    pub interfaces: Vec<GlobPattern>,
    pub state_file: PathBuf,
    pub metrics: SourceMetrics,
    /// Notified on every link event: a new tap may need a listing now.
    pub links_changed: Arc<Notify>,
}

/// A Neutron API client: Keystone, then the listing, re-authenticating
/// once when Neutron refuses a token (revoked or expired early).
#[derive(Debug)]
pub struct NeutronClient {
    keystone: Keystone,
    http: Http,
}

impl NeutronClient {
    pub fn new(config: &KeystoneConfig) -> Result<Self, NeutronError> {
        let http = Http::new(config)?;
        Ok(Self {
            keystone: Keystone::new(config.clone(), http.clone())?,
            http,
        })
    }

    /// Every port bound to `host`.
    pub async fn list_ports(&mut self, host: &str) -> Result<Vec<NeutronPort>, NeutronError> {
        let mut query = format!("/v2.0/ports?binding%3Ahost_id={}", encode(host));
        for field in view::FIELDS {
            query.push_str("&fields=");
            query.push_str(field);
        }
        let body = self.get(&query).await?;
        let ports = body
            .get("ports")
            .cloned()
            .ok_or_else(|| NeutronError::Unexpected("a listing without \"ports\"".into()))?;
        serde_json::from_value(ports)
            .map_err(|e| NeutronError::Unexpected(format!("Neutron's ports: {e}")))
    }

    /// GET `path_and_query` on the network endpoint, as JSON.
    async fn get(&mut self, path_and_query: &str) -> Result<Value, NeutronError> {
        for attempt in 0..2 {
            let token = self.keystone.token().await?;
            let request = ::http::Request::get(join(&token.network, path_and_query)?)
                .header("x-auth-token", token.value.expose())
                .header(::http::header::ACCEPT, "application/json")
                .body(Full::new(Bytes::new()))
                .map_err(|e| NeutronError::Http(e.to_string()))?;
            let answer = self.http.send(request).await?;
            if answer.status == ::http::StatusCode::UNAUTHORIZED && attempt == 0 {
                // Revoked or expired early: one new token, one more try.
                self.keystone.forget();
                continue;
            }
            if !answer.status.is_success() {
                return Err(NeutronError::Neutron {
                    status: answer.status,
                    answer: brief(&answer.body),
                });
            }
            return serde_json::from_slice(&answer.body)
                .map_err(|e| NeutronError::Unexpected(format!("Neutron's answer: {e}")));
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The source and what it last learned.
#[derive(Debug)]
pub struct NeutronSource {
    settings: NeutronSettings,
    client: NeutronClient,
    /// The last listing that succeeded.
    ports: Vec<NeutronPort>,
    /// Whether the last listing succeeded.
    connected: bool,
    /// Ambiguous taps and skipped ports already logged.
    reported: BTreeSet<String>,
}

impl NeutronSource {
    /// Lists the ports once (before the daemon is ready). Credentials
    /// Keystone refuses, or unreadable secrets, fail the start; an
    /// unreachable Keystone or Neutron starts the source empty, retrying.
    pub async fn open(settings: NeutronSettings) -> Result<(Self, Snapshot), NeutronError> {
        let client = NeutronClient::new(&settings.keystone)?;
        let mut source = Self {
            settings,
            client,
            ports: Vec::new(),
            connected: false,
            reported: BTreeSet::new(),
        };
        match source.refresh().await {
            Err(err) if err.is_fatal() => return Err(err),
            Err(err) => warn!("Neutron API: {err}; starting with no ports, retrying"),
            Ok(()) => {}
        }
        let snapshot = source.snapshot().await;
        Ok((source, snapshot))
    }

    /// One listing; on failure the last known ports stay.
    async fn refresh(&mut self) -> Result<(), NeutronError> {
        let started = Instant::now();
        let listed = self.client.list_ports(&self.settings.host).await;
        let was = self.connected;
        self.connected = listed.is_ok();
        self.settings
            .metrics
            .set_connected(DATABASE, self.connected);
        let ports = listed?;
        let (changed, gone) = view::changed(&self.ports, &ports);
        if !was {
            info!(
                "Neutron API: {} ports bound to {} ({} ms)",
                ports.len(),
                self.settings.host,
                started.elapsed().as_millis()
            );
        } else if changed + gone > 0 {
            info!("Neutron API: {changed} ports new or changed, {gone} gone");
        }
        self.ports = ports;
        Ok(())
    }

    /// The inventory from the last listing, the OVS Interface rows and the
    /// local taps; written to the state file for `status`.
    async fn snapshot(&mut self) -> Snapshot {
        let ovs = self.interfaces().await;
        let view = view::view(&self.ports, ovs.as_ref(), &self.local_taps());
        self.report(&view);
        let state = PortsState {
            served: view
                .index
                .devices()
                .map(|(device, instance)| (device.to_owned(), instance.id.clone()))
                .collect(),
            waiting: view
                .waiting
                .iter()
                .map(|device| WaitingTap {
                    device: device.clone(),
                    iface_id: "no port bound to this host".into(),
                })
                .collect(),
            connected: [(DATABASE.to_owned(), self.connected)].into(),
            ambiguous: view
                .ambiguous
                .iter()
                .map(|a| AmbiguousTap {
                    device: a.device.clone(),
                    ports: a.ports.clone(),
                })
                .collect(),
        };
        if let Err(err) = state.write(&self.settings.state_file) {
            warn!("writing the ports state: {err}");
        }
        Arc::new(view.index)
    }

    /// Logs each ambiguous tap and skipped port once while it stays so.
    fn report(&mut self, view: &View) {
        let mut now = BTreeSet::new();
        for a in &view.ambiguous {
            let line = format!(
                "not serving {}: ports {} of this host would all have that tap name (set [ports] ovs to tell them apart)",
                a.device,
                a.ports.join(", ")
            );
            now.insert(line);
        }
        for s in &view.skipped {
            now.insert(format!("not serving port {}: {}", s.port, s.reason));
        }
        for line in now.difference(&self.reported) {
            warn!("{line}");
        }
        self.reported = now;
    }

    /// Local devices matching `datapath.interfaces`.
    fn local_taps(&self) -> BTreeSet<String> {
        crate::proc_net_dev::read()
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.name)
            .filter(|name| self.settings.interfaces.iter().any(|g| g.matches(name)))
            .collect()
    }

    /// OVS Interface rows: iface-id -> interface name; `None` without OVS
    /// or when it does not answer (tap names are used then).
    async fn interfaces(&self) -> Option<BTreeMap<String, String>> {
        let remote = self.settings.ovs.as_ref()?;
        let select = async {
            let (client, _updates) = Client::connect(remote, &TlsFiles::default()).await?;
            let op = json!({"op": "select", "table": "Interface", "where": [],
                            "columns": ["name", "external_ids"]});
            client.call("transact", json!(["Open_vSwitch", op])).await
        };
        let rows = match tokio::time::timeout(Duration::from_secs(5), select).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => {
                warn!("Open_vSwitch {remote}: {err}; using tap names");
                return None;
            }
            Err(_) => {
                warn!("Open_vSwitch {remote}: no answer; using tap names");
                return None;
            }
        };
        Some(iface_ids(&rows))
    }

    /// Whether a local tap names no known port: worth a listing now.
    fn unknown_tap(&self) -> bool {
        let known: BTreeSet<String> = self.ports.iter().map(|p| view::tap_name(&p.id)).collect();
        self.local_taps().iter().any(|tap| !known.contains(tap))
    }
}

/// iface-id -> interface name from a `transact` select of Interface.
fn iface_ids(reply: &Value) -> BTreeMap<String, String> {
    let rows = reply[0]["rows"].as_array().cloned().unwrap_or_default();
    rows.iter()
        .filter_map(|row| {
            let name = row["name"].as_str()?.to_owned();
            let ids = super::ovsdb::replica::string_map(&row["external_ids"]);
            Some((ids.get("iface-id")?.clone(), name))
        })
        .collect()
}

impl PortSource for NeutronSource {
    async fn run(mut self, snapshots: watch::Sender<Snapshot>, reload: Arc<Notify>) {
        let mut backoff = BACKOFF_MIN;
        let mut last_trigger: Option<Instant> = None;
        loop {
            let wait = if self.connected {
                jittered(self.settings.refresh)
            } else {
                backoff
            };
            tokio::select! {
                () = snapshots.closed() => return,
                () = reload.notified() => info!("listing the ports on request"),
                () = self.settings.links_changed.notified() => {
                    if !self.unknown_tap() || last_trigger.is_some_and(|t| t.elapsed() < TRIGGER_MIN) {
                        // Nothing to learn from Neutron; the taps themselves changed.
                        self.publish(&snapshots).await;
                        continue;
                    }
                    last_trigger = Some(Instant::now());
                }
                () = tokio::time::sleep(wait) => {}
            }
            let was = self.connected;
            match self.refresh().await {
                Ok(()) => {
                    if !was {
                        info!("Neutron API reachable again");
                    }
                    backoff = BACKOFF_MIN;
                }
                Err(err) => {
                    if was {
                        warn!("Neutron API: {err}; serving the last known ports, retrying");
                    }
                    backoff = (backoff * 2).min(self.settings.refresh);
                }
            }
            self.publish(&snapshots).await;
        }
    }
}

impl NeutronSource {
    /// A new snapshot for the reconcile loop only when the records changed:
    /// most listings change nothing, and each snapshot costs a sync.
    async fn publish(&mut self, snapshots: &watch::Sender<Snapshot>) {
        let snapshot = self.snapshot().await;
        snapshots.send_if_modified(|current| {
            if current.same_records(&snapshot) {
                false
            } else {
                *current = snapshot;
                true
            }
        });
    }
}

/// `period` within +-10 %, so that the hosts of a cloud do not all list
/// at the same moment.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(StdRng::from_os_rng().random_range(0.9..1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_encoded_for_the_query() {
        assert_eq!(encode("compute-1.example"), "compute-1.example");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn ovs_interfaces_map_iface_ids_to_names() {
        let reply = json!([{"rows": [
            {"name": "tapa", "external_ids": ["map", [["iface-id", "p1"], ["attached-mac", "x"]]]},
            {"name": "br-int", "external_ids": ["map", []]},
        ]}]);
        let map = iface_ids(&reply);
        assert_eq!(map.len(), 1);
        assert_eq!(map["p1"], "tapa");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(30));
            assert!(
                d >= Duration::from_secs(27) && d <= Duration::from_secs(33),
                "{d:?}"
            );
        }
    }
}
