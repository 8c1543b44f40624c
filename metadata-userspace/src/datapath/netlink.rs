//! The host side of the datapath through rtnetlink (rust-netlink's
//! `rtnetlink` crate): the veth pair the proxy listens on, its addresses
//! and routes, the list of devices, and link events.
//!
//! Every step is idempotent (`replace` semantics), so a restarted daemon
//! converges on the same state instead of failing on what its predecessor
//! left.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use metadata_common::{Ifindex, MacAddr};
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, MulticastGroup, RouteMessageBuilder,
    packet_core::NetlinkMessage,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressFlags},
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    },
    sys::SocketAddr,
};

use crate::config::{Ipv4Net, Ipv6Net96};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("host device {name}: {reason}")]
    HostDevice { name: String, reason: String },
}

/// A network device of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: Ifindex,
    pub mac: MacAddr,
    pub mtu: u32,
    /// The driver kind ("veth", "bridge", ...); `None` for physical devices
    /// and taps.
    pub kind: Option<String>,
    /// The device's own packet counters (received, sent), since it was
    /// created.
    pub packets: (u64, u64),
}

impl Link {
    fn from_message(message: &LinkMessage) -> Self {
        let mut link = Self {
            name: String::new(),
            ifindex: Ifindex(message.header.index),
            mac: MacAddr::default(),
            mtu: 0,
            kind: None,
            packets: (0, 0),
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(bytes) => {
                    if let Ok(mac) = <[u8; 6]>::try_from(bytes.as_slice()) {
                        link.mac = MacAddr(mac);
                    }
                }
                LinkAttribute::Stats64(stats) => {
                    link.packets = (stats.rx_packets, stats.tx_packets);
                }
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind_name(kind)),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Tun => "tun".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What the host device must look like.
#[derive(Debug, Clone, Copy)]
pub struct HostDeviceSpec<'a> {
    pub name: &'a str,
    pub mtu: u32,
    pub proxy: Ipv4Addr,
    pub nat_v4: Ipv4Net,
    pub nat_v6: Ipv6Net96,
}

/// A route netlink connection of this network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the connection; its driver task runs on the current runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every device of this network namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|message| Link::from_message(&message))
            .try_collect()
            .await
            .map_err(request("listing network devices"))
    }

    /// The device called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match found.try_next().await {
            Ok(message) => Ok(message.as_ref().map(Link::from_message)),
            // The kernel answers ENODEV for a name it does not know.
            Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ENODEV => Ok(None),
            Err(err) => Err(request(format!("looking up {name}"))(err)),
        }
    }

    /// Creates (or checks) the host veth pair and gives it what the
    /// datapath needs: up, ARP off (the programs address frames to it
    /// directly), the proxy addresses, the MTU and the routes for the NAT
    /// ranges.
    pub async fn ensure_host_device(&self, spec: HostDeviceSpec<'_>) -> Result<Link, NetlinkError> {
        let HostDeviceSpec {
            name,
            mtu,
            proxy,
            nat_v4,
            nat_v6,
        } = spec;
        let peer = peer_name(name);
        self.ensure_veth(name, &peer).await?;
        for device in [peer.as_str(), name] {
            let message = LinkUnspec::new_with_name(device)
                .mtu(mtu)
                .arp(false)
                .up()
                .build();
            self.handle
                .link()
                .set(message)
                .execute()
                .await
                .map_err(request(format!("setting up {device}")))?;
        }
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| NetlinkError::HostDevice {
                name: name.to_owned(),
                reason: "vanished right after it was configured".into(),
            })?;
        let index = link.ifindex.0;
        self.replace_address(index, IpAddr::V4(proxy), 32).await?;
        // No DAD: nobody else is on this link.
        self.replace_address(index, IpAddr::V6(nat_v6.proxy()), 128)
            .await?;
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(nat_v4.addr, nat_v4.prefix_len)
            .output_interface(index)
            .build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(nat_v6.prefix, 96)
            .output_interface(index)
            .build();
        for (route, what) in [(v4, nat_v4.to_string()), (v6, nat_v6.to_string())] {
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(request(format!("routing {what} to {name}")))?;
        }
        Ok(link)
    }

    /// Creates the veth pair unless `name` exists; refuses an existing
    /// device of another kind.
    async fn ensure_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        match self.link(name).await? {
            Some(link) if link.kind.as_deref() == Some("veth") => Ok(()),
            Some(link) => Err(NetlinkError::HostDevice {
                name: name.to_owned(),
                reason: format!(
                    "exists but is a {} device, not a veth; choose another \
                     datapath.host_device or remove it",
                    link.kind.as_deref().unwrap_or("physical")
                ),
            }),
            None => self
                .handle
                .link()
                .add(LinkVeth::new(name, peer).build())
                .execute()
                .await
                .map_err(request(format!("creating the veth pair {name}/{peer}"))),
        }
    }

    async fn replace_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut add = self.handle.address().add(index, addr, prefix).replace();
        if addr.is_ipv6() {
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        add.execute()
            .await
            .map_err(request(format!("adding {addr}/{prefix}")))
    }

    /// Removes the device `name` (a veth pair's peer, addresses and routes
    /// go with it); false when there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        self.handle
            .link()
            .del(link.ifindex.0)
            .execute()
            .await
            .map_err(request(format!("deleting {name}")))?;
        Ok(true)
    }
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// The name of the veth peer of host device `name`.
pub fn peer_name(name: &str) -> String {
    // IFNAMSIZ leaves 15 bytes.
    let stem: String = name.chars().take(13).collect();
    format!("{stem}-p")
}

/// Link events (RTNLGRP_LINK): the daemon learns that a tap appeared, went
/// or was renamed as it happens, instead of polling. Only the fact that
/// something changed is used: the daemon then lists the devices again and
/// converges, which also covers events lost to a full socket buffer.
#[derive(Debug)]
pub struct LinkEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// When the last batch was returned.
    last_batch: Option<Instant>,
}

impl LinkEvents {
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let (connection, _, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self {
            messages,
            last_batch: None,
        })
    }

    /// Waits for the next batch of link events. After a quiet spell it
    /// returns at once with what is queued: a new tap is acted on right
    /// away, since its first request waits for it. Within `burst` of the
    /// previous batch it returns only once nothing more came for `settle`:
    /// each attach holds RTNL for an RCU grace period, so syncing in the
    /// middle of a burst slows the burst itself down (a 50-tap burst took
    /// 17 % longer), while waiting for its end attaches it in one sync. An
    /// error means the subscription ended.
    pub async fn next(&mut self, settle: Duration, burst: Duration) -> Result<(), NetlinkError> {
        let ended =
            || NetlinkError::Socket(std::io::Error::other("the link event subscription ended"));
        self.messages.next().await.ok_or_else(ended)?;
        if self.last_batch.is_some_and(|at| at.elapsed() < burst) {
            while let Ok(message) = tokio::time::timeout(settle, self.messages.next()).await {
                message.ok_or_else(ended)?;
            }
        } else {
            while let Some(message) = self.messages.next().now_or_never() {
                message.ok_or_else(ended)?;
            }
        }
        self.last_batch = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_fit_ifnamsiz() {
        assert_eq!(peer_name("mdr0"), "mdr0-p");
        assert_eq!(peer_name("a-fifteen-bytes"), "a-fifteen-byt-p");
        assert!(peer_name("a-fifteen-bytes").len() <= 15);
    }
}
