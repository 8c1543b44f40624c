//! The "ovn" port source: ports learned live from the local Open_vSwitch
//! database (which taps name which Neutron port) and the OVN Southbound
//! (which of those ports are bound to this chassis, with their MAC, IPs,
//! instance and project), as neutron's OVN metadata agent learns them, but
//! monitoring only the bindings of local taps instead of the whole
//! Port_Binding table.
//!
//! The Southbound may be a cluster: the remotes are tried in turn with a
//! backoff, the monitor resumes with `monitor_cond_since` from the last
//! transaction seen (a full resync when the server has no such history),
//! and the last known inventory keeps being served while disconnected.

pub mod view;

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use log::{info, warn};
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};

use self::view::{Candidate, Skipped};
use super::{
    PortSource, Snapshot,
    metrics::SourceMetrics,
    ovsdb::{
        OvsdbError,
        client::{Client, Notification},
        remote::{Remote, TlsFiles},
        replica::{Replica, Schema},
    },
    state::{PortsState, WaitingTap},
};

/// How long `open` waits for the first full view before starting empty.
const STARTUP: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// `monitor_cond_since` without history: all rows, as `monitor_cond`.
const NO_TXN: &str = "00000000-0000-0000-0000-000000000000";

/// Where the two databases are.
#[derive(Debug, Clone)]
pub struct OvnSettings {
    pub ovs: Remote,
    pub sb: Vec<Remote>,
    pub sb_tls: TlsFiles,
    /// Where the taps served and those still waiting for a binding are
    /// written, for `status` (which runs without the databases).
    pub state_file: PathBuf,
    /// Whether each database is connected, for the metrics.
    pub metrics: SourceMetrics,
}

/// One monitored connection.
#[derive(Debug)]
struct Conn {
    client: Client,
    updates: mpsc::UnboundedReceiver<Notification>,
}

/// The source and everything it has learned.
#[derive(Debug)]
pub struct OvnSource {
    settings: OvnSettings,
    ovs: Option<Conn>,
    sb: Option<Conn>,
    ovs_rows: Replica,
    sb_rows: Replica,
    ovs_schema: Schema,
    sb_schema: Schema,
    /// The last Southbound transaction applied, to resume from.
    last_txn: Option<String>,
    /// The Southbound remote to try next.
    next_sb: usize,
    /// The candidates the Southbound monitor's conditions name.
    monitored: BTreeSet<Candidate>,
    /// Bindings already logged as unusable, so each is logged once while
    /// it stays so.
    reported: BTreeSet<Skipped>,
}

impl OvnSource {
    /// Connects and reads the first view; starts empty (serving nobody
    /// until the databases answer) rather than failing the daemon.
    pub async fn open(settings: OvnSettings) -> (Self, Snapshot) {
        let mut source = Self {
            settings,
            ovs: None,
            sb: None,
            ovs_rows: Replica::default(),
            sb_rows: Replica::default(),
            ovs_schema: Schema::default(),
            sb_schema: Schema::default(),
            last_txn: None,
            next_sb: 0,
            monitored: BTreeSet::new(),
            reported: BTreeSet::new(),
        };
        let first = tokio::time::timeout(STARTUP, async {
            source.ovs = source
                .connect_ovs()
                .await
                .map_err(|e| warn!("Open_vSwitch: {e}"))
                .ok();
            for _ in 0..source.settings.sb.len() {
                if source.sb.is_some() {
                    break;
                }
                source.sb = source.connect_sb().await.ok();
            }
        });
        if first.await.is_err() {
            warn!(
                "no full view of OVS and the Southbound within {STARTUP:?}; starting with what there is"
            );
        }
        let snapshot = source.snapshot();
        (source, snapshot)
    }

    async fn connect_ovs(&mut self) -> Result<Conn, OvsdbError> {
        let remote = self.settings.ovs.clone();
        let (client, updates) = Client::connect(&remote, &TlsFiles::default()).await?;
        self.ovs_schema =
            Schema::from_json(&client.call("get_schema", json!(["Open_vSwitch"])).await?)?;
        let requests = json!({
            "Open_vSwitch": [{"columns": ["external_ids"]}],
            "Interface": [{"columns": ["name", "external_ids"]}],
        });
        let initial = client
            .call("monitor_cond", json!(["Open_vSwitch", "ovs", requests]))
            .await?;
        self.ovs_rows = Replica::default();
        self.ovs_rows.apply(&self.ovs_schema, &initial)?;
        info!("monitoring {remote}");
        Ok(Conn { client, updates })
    }

    /// Connects to the next Southbound remote and resumes the monitor.
    async fn connect_sb(&mut self) -> Result<Conn, OvsdbError> {
        let remote = self.settings.sb[self.next_sb % self.settings.sb.len()].clone();
        let connected = self.monitor_sb(&remote).await;
        if let Err(err) = &connected {
            warn!("OVN Southbound {remote}: {err}");
            // The next attempt goes to the next member.
            self.next_sb += 1;
        }
        connected
    }

    async fn monitor_sb(&mut self, remote: &Remote) -> Result<Conn, OvsdbError> {
        let (client, updates) = Client::connect(remote, &self.settings.sb_tls).await?;
        self.sb_schema =
            Schema::from_json(&client.call("get_schema", json!(["OVN_Southbound"])).await?)?;
        let candidates = view::candidates(&self.ovs_rows);
        let system_id = view::system_id(&self.ovs_rows);
        let requests = view::sb_requests(&candidates, system_id.as_deref());
        let since = self.last_txn.clone().unwrap_or_else(|| NO_TXN.to_owned());
        let reply = client
            .call(
                "monitor_cond_since",
                json!(["OVN_Southbound", "sb", requests, since]),
            )
            .await?;
        let (found, txn, updates_now) = (reply[0].as_bool(), reply[1].as_str(), &reply[2]);
        if found != Some(true) {
            // No history from our point on (or none asked): start over.
            self.sb_rows = Replica::default();
        }
        self.sb_rows.apply(&self.sb_schema, updates_now)?;
        self.last_txn = txn.map(str::to_owned);
        self.monitored = candidates;
        info!("monitoring {remote} (resumed: {})", found == Some(true));
        Ok(Conn { client, updates })
    }

    /// The inventory as the replicas stand.
    fn snapshot(&mut self) -> Snapshot {
        let inventory = view::inventory(&self.ovs_rows, &self.sb_rows);
        self.report_skipped(&inventory.skipped);
        log::debug!(
            "OVN inventory: {} taps served, {} waiting",
            inventory.index.device_count(),
            inventory.waiting.len()
        );
        let state = PortsState {
            served: inventory
                .index
                .devices()
                .map(|(device, instance)| (device.to_owned(), instance.id.clone()))
                .collect(),
            waiting: inventory
                .waiting
                .iter()
                .map(|c| WaitingTap {
                    device: c.device.clone(),
                    iface_id: c.iface_id.clone(),
                })
                .collect(),
            connected: [
                ("ovs".to_owned(), self.ovs.is_some()),
                ("southbound".to_owned(), self.sb.is_some()),
            ]
            .into(),
            ambiguous: Vec::new(),
        };
        let metrics = &self.settings.metrics;
        metrics.set_connected("ovs", self.ovs.is_some());
        metrics.set_connected("southbound", self.sb.is_some());
        if let Err(err) = state.write(&self.settings.state_file) {
            warn!("writing the ports state: {err}");
        }
        Arc::new(inventory.index)
    }
}

impl OvnSource {
    /// Logs each binding the view cannot use once, and forgets those that
    /// became usable or went away (so a relapse is logged again).
    fn report_skipped(&mut self, skipped: &[Skipped]) {
        let now: BTreeSet<Skipped> = skipped.iter().cloned().collect();
        for new in now.difference(&self.reported) {
            warn!(
                "not serving Port_Binding {} ({}): {}",
                new.uuid, new.logical_port, new.reason
            );
        }
        self.reported = now;
    }
}

impl PortSource for OvnSource {
    async fn run(mut self, snapshots: watch::Sender<Snapshot>, reload: Arc<Notify>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.ovs.is_none() || self.sb.is_none() {
                if self.reconnect().await {
                    backoff = BACKOFF_MIN;
                    snapshots.send_replace(self.snapshot());
                } else {
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            let retry = if self.ovs.is_none() || self.sb.is_none() {
                backoff
            } else {
                Duration::MAX
            };
            tokio::select! {
                () = snapshots.closed() => return,
                () = reload.notified() => {
                    info!("resyncing with the Southbound on request");
                    self.resync();
                }
                update = next_update(&mut self.ovs) => self.on_ovs(update).await,
                update = next_update(&mut self.sb) => self.on_sb(update),
                () = tokio::time::sleep(retry) => continue,
            }
            snapshots.send_replace(self.snapshot());
        }
    }
}

/// The next notification of a connection; never resolves while there is
/// none, `None` once it closed.
async fn next_update(conn: &mut Option<Conn>) -> Option<Notification> {
    match conn {
        Some(conn) => conn.updates.recv().await,
        None => std::future::pending().await,
    }
}

impl OvnSource {
    /// Connects what is disconnected; true when both are up.
    async fn reconnect(&mut self) -> bool {
        if self.ovs.is_none() {
            self.ovs = self
                .connect_ovs()
                .await
                .map_err(|e| warn!("Open_vSwitch: {e}"))
                .ok();
        }
        if self.ovs.is_some() && self.sb.is_none() {
            self.sb = self.connect_sb().await.ok();
        }
        self.ovs.is_some() && self.sb.is_some()
    }

    /// Forgets the Southbound connection and its history: the next
    /// connection reads everything anew.
    fn resync(&mut self) {
        self.sb = None;
        self.last_txn = None;
    }

    async fn on_ovs(&mut self, update: Option<Notification>) {
        let Some(update) = update else {
            warn!("lost the Open_vSwitch connection; serving the last known ports");
            self.ovs = None;
            return;
        };
        if update.method == "update2"
            && let Err(err) = self.ovs_rows.apply(&self.ovs_schema, &update.params[1])
        {
            warn!("Open_vSwitch update: {err}; reconnecting");
            self.ovs = None;
            return;
        }
        self.follow_candidates().await;
    }

    /// Points the Southbound monitor at the local candidates when they
    /// changed: one `monitor_cond_change`, no resync.
    async fn follow_candidates(&mut self) {
        let candidates = view::candidates(&self.ovs_rows);
        let Some(sb) = &self.sb else { return };
        if candidates == self.monitored {
            return;
        }
        let change = json!({"Port_Binding": [{"where": view::binding_clauses(&candidates)}]});
        match sb
            .client
            .call("monitor_cond_change", json!(["sb", "sb", change]))
            .await
        {
            Ok(_) => self.monitored = candidates,
            Err(err) => {
                warn!("changing the Southbound monitor: {err}; reconnecting");
                self.sb = None;
            }
        }
    }

    fn on_sb(&mut self, update: Option<Notification>) {
        let Some(update) = update else {
            warn!(
                "lost the Southbound connection; serving the last known ports while reconnecting"
            );
            self.sb = None;
            return;
        };
        if update.method != "update3" {
            return;
        }
        let system_id = view::system_id(&self.ovs_rows);
        log::debug!("Southbound update3: {}", update.params[2]);
        match self.sb_rows.apply(&self.sb_schema, &update.params[2]) {
            Ok(changes) => {
                self.last_txn = update.params[1].as_str().map(str::to_owned);
                // A new Chassis_Private row for us: our chassis registered
                // again (a reconnect elsewhere); what we hold may be stale.
                let re_registered = changes
                    .iter()
                    .any(|c| c.inserted && c.table == "Chassis_Private");
                if re_registered && system_id.is_some() {
                    info!("this chassis registered again in the Southbound; resyncing");
                    self.resync();
                }
            }
            Err(err) => {
                warn!("Southbound update: {err}; resyncing");
                self.resync();
            }
        }
    }
}
