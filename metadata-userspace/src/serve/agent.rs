//! The agent policy: the daemon also answers Neutron's haproxies on a unix
//! socket, as neutron-metadata-agent does, identifying the VM by the
//! network (or router) haproxy names and the address it forwarded for.
//!
//! A site can point its existing haproxies here while it moves taps to
//! the eBPF path; the benchmark uses it as the Neutron baseline.

use std::{net::IpAddr, path::Path, sync::Arc};

use http::{HeaderMap, StatusCode};
use tokio::{net::UnixListener, sync::watch};

use super::Policy;
use crate::inventory::{Identity, PortIndex, Snapshot};

/// Binds the socket, replacing a stale one.
pub fn listen(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    UnixListener::bind(path)
}

/// Identifies requests by the headers haproxy adds.
#[derive(Debug)]
pub struct AgentPolicy {
    /// The port source's latest snapshot.
    inventory: watch::Receiver<Snapshot>,
}

impl AgentPolicy {
    pub fn new(inventory: watch::Receiver<Snapshot>) -> Self {
        Self { inventory }
    }
}

impl Policy for AgentPolicy {
    type Peer = tokio::net::unix::SocketAddr;

    /// One haproxy connection carries many instances' requests.
    fn connection_owner(&self, _peer: &Self::Peer) -> Option<Arc<str>> {
        None
    }

    fn identify(&self, _peer: &Self::Peer, headers: &HeaderMap) -> Result<Identity, StatusCode> {
        identify(headers, &self.inventory.borrow())
    }
}

/// The instance behind a haproxy request, as neutron-metadata-agent finds
/// it: 400 with both X-Neutron-Network-ID and X-Neutron-Router-ID, 404 when
/// no port matches.
pub fn identify(headers: &HeaderMap, index: &PortIndex) -> Result<Identity, StatusCode> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let network = header("X-Neutron-Network-ID");
    let router = header("X-Neutron-Router-ID");
    if network.is_some() && router.is_some() {
        return Err(StatusCode::BAD_REQUEST);
    }
    // haproxy appends the client to X-Forwarded-For: the last one is real.
    let forwarded: IpAddr = header("X-Forwarded-For")
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    let (instance, port) = index
        .by_network_address(network, router, forwarded)
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(Identity {
        instance: Arc::clone(instance),
        port,
        device: instance.ports[port].device.0.clone(),
        guest_addr: forwarded,
    })
}
