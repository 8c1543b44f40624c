//! The proxy policy: guests reach the proxy through the datapath, which
//! replaced their address by the slot of their (tap, address) pair, so the
//! peer address alone says who is asking.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, PoisonError, RwLock},
};

use http::{HeaderMap, StatusCode};
use log::warn;

use super::Policy;
use crate::inventory::{Identity, SlotOwners};

/// The slot owners, shared between the reconcile loop and the proxy.
pub type SharedSlotOwners = Arc<RwLock<Arc<SlotOwners>>>;

/// Identifies TCP peers by their slot address.
#[derive(Debug)]
pub struct ProxyPolicy {
    slot_owners: SharedSlotOwners,
}

impl ProxyPolicy {
    pub fn new(slot_owners: SharedSlotOwners) -> Self {
        Self { slot_owners }
    }

    fn lookup(&self, peer: &SocketAddr) -> Option<Identity> {
        let owners = self
            .slot_owners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        owners.get(&canonical(peer.ip())).cloned()
    }
}

impl Policy for ProxyPolicy {
    type Peer = SocketAddr;

    fn connection_owner(&self, peer: &SocketAddr) -> Option<Arc<str>> {
        let owners = self
            .slot_owners
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        owners
            .get(&canonical(peer.ip()))
            .map(|identity| Arc::from(identity.instance.id.as_str()))
    }

    fn identify(&self, peer: &SocketAddr, _headers: &HeaderMap) -> Result<Identity, StatusCode> {
        self.lookup(peer).ok_or_else(|| {
            // Not a slot address: not a guest the datapath steered here.
            warn!("refused a request from {peer}: not a known guest");
            StatusCode::FORBIDDEN
        })
    }
}

/// IPv4 peers of a dual-stack socket arrive as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}
