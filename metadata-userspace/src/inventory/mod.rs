//! The inventory: which instances this host serves, on which taps, and who
//! sits behind a slot. Port sources yield inventory snapshots; the
//! reconcile loop hands them to the datapath, and the serving policies
//! look identities up in them. Nothing here needs a loaded datapath.

pub mod file;
pub mod metrics;
pub mod neutron;
pub mod ovn;
pub mod ovsdb;
pub mod ports;
pub mod state;

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use tokio::sync::{Notify, watch};

pub use self::ports::{Instance, Port, PortIndex};

/// Who sits behind a slot or a haproxy request: what the backends need to
/// answer it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance: Arc<Instance>,
    /// Index of the port in `instance.ports`.
    pub port: usize,
    /// The tap the guest is plugged into.
    pub device: String,
    /// The guest's own address (never the slot address).
    pub guest_addr: IpAddr,
}

/// Slot address -> identity, as the proxy sees its peers.
pub type SlotOwners = HashMap<IpAddr, Identity>;

/// A snapshot of every port record this host serves.
pub type Snapshot = Arc<PortIndex>;

/// Where port records come from. A source runs as a task and publishes a
/// new snapshot whenever its records change; a `reload` notification
/// (SIGHUP) asks it to look again at once. A source that cannot read its
/// records keeps the last snapshot and says why in the log.
pub trait PortSource: Send + 'static {
    /// Publishes snapshots into `snapshots` until it has no receiver.
    fn run(
        self,
        snapshots: watch::Sender<Snapshot>,
        reload: Arc<Notify>,
    ) -> impl Future<Output = ()> + Send;
}
