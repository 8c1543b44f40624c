//! From Neutron's ports of this host to an inventory: pure, so every rule
//! (which ports count, which tap is which port, what is ambiguous) is
//! unit-tested without a server.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use metadata_common::MacAddr;
use serde::Deserialize;

use crate::{
    config::DeviceName,
    inventory::{Instance, Port, PortIndex, ports::PortAddress},
};

/// The fields of a port the listing asks for.
pub const FIELDS: [&str; 8] = [
    "id",
    "mac_address",
    "fixed_ips",
    "project_id",
    "network_id",
    "device_id",
    "device_owner",
    "revision_number",
];

/// One port as `GET /v2.0/ports?fields=...` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NeutronPort {
    pub id: String,
    pub mac_address: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub project_id: String,
    pub network_id: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(default)]
    pub revision_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FixedIp {
    pub ip_address: String,
}

/// The tap Nova/os-vif makes for a port: "tap" and the first 11
/// characters of its id (a 14-byte device name).
pub fn tap_name(port_id: &str) -> String {
    let prefix: String = port_id.chars().take(11).collect();
    format!("tap{prefix}")
}

/// The tap behind an OVS Interface that names a port: the tap itself
/// (openvswitch firewall), or, for the iptables_hybrid firewall's
/// `qvo<id11>` veth end on br-int, the tap on the same `qbr` bridge.
pub fn tap_of_interface(name: &str) -> String {
    match name.strip_prefix("qvo") {
        Some(id11) => format!("tap{id11}"),
        None => name.to_owned(),
    }
}

/// Two or more ports of this host whose taps would have one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    pub device: String,
    pub ports: Vec<String>,
}

/// A port that is not served, with why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub port: String,
    pub reason: String,
}

/// What the listing makes of this host.
#[derive(Debug, Default)]
pub struct View {
    pub index: PortIndex,
    /// Local taps (matching `datapath.interfaces`) that no port names.
    pub waiting: Vec<String>,
    pub ambiguous: Vec<Ambiguous>,
    pub skipped: Vec<Skipped>,
}

/// The inventory for `ports` (this host's), given the OVS Interface rows
/// (iface-id -> interface name, when OVS is configured) and the local taps.
pub fn view(
    ports: &[NeutronPort],
    ovs: Option<&BTreeMap<String, String>>,
    local_taps: &BTreeSet<String>,
) -> View {
    let mut by_device: BTreeMap<String, Vec<&NeutronPort>> = BTreeMap::new();
    for port in ports
        .iter()
        .filter(|p| p.device_owner.starts_with("compute:"))
    {
        let device = match ovs.and_then(|rows| rows.get(&port.id)) {
            Some(interface) => tap_of_interface(interface),
            None => tap_name(&port.id),
        };
        by_device.entry(device).or_default().push(port);
    }
    let mut view = View::default();
    let mut instances: BTreeMap<(String, String), Vec<Port>> = BTreeMap::new();
    for (device, ports) in by_device {
        if let [port] = ports.as_slice() {
            match record(&device, port) {
                Ok(record) => instances
                    .entry((port.device_id.clone(), port.project_id.clone()))
                    .or_default()
                    .push(record),
                Err(reason) => view.skipped.push(Skipped {
                    port: port.id.clone(),
                    reason,
                }),
            }
        } else {
            view.ambiguous.push(Ambiguous {
                device,
                ports: ports.iter().map(|p| p.id.clone()).collect(),
            });
        }
    }
    let instances = instances
        .into_iter()
        .map(|((id, project_id), ports)| Instance::from_ports(id, project_id, ports))
        .collect();
    view.index = PortIndex::from_instances(instances);
    let named: BTreeSet<&str> = view.index.devices().map(|(d, _)| d).collect();
    view.waiting = local_taps
        .iter()
        .filter(|tap| !named.contains(tap.as_str()))
        .filter(|tap| !view.ambiguous.iter().any(|a| &&a.device == tap))
        .cloned()
        .collect();
    view
}

/// A port's record on `device`.
fn record(device: &str, port: &NeutronPort) -> Result<Port, String> {
    if port.device_id.is_empty() {
        return Err("no device_id (no instance)".into());
    }
    let mac: MacAddr = port.mac_address.parse()?;
    let ips = port
        .fixed_ips
        .iter()
        .map(|ip| {
            ip.ip_address
                .parse::<IpAddr>()
                .map(|addr| PortAddress {
                    addr,
                    prefix_len: None,
                })
                .map_err(|_| format!("`{}` is not an address", ip.ip_address))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Port {
        device: device.parse::<DeviceName>()?,
        mac,
        network_id: port.network_id.clone(),
        ips,
        router_id: None,
        gateway: None,
        mtu: None,
        dns: Vec::new(),
        metadata_nexthop: None,
    })
}

/// What a listing changed since `before`: the ports (by id and revision)
/// that are new or changed, and those gone.
pub fn changed(before: &[NeutronPort], after: &[NeutronPort]) -> (usize, usize) {
    let old: BTreeSet<(&str, u64)> = before
        .iter()
        .map(|p| (p.id.as_str(), p.revision_number))
        .collect();
    let new: BTreeSet<(&str, u64)> = after
        .iter()
        .map(|p| (p.id.as_str(), p.revision_number))
        .collect();
    let ids_after: BTreeSet<&str> = after.iter().map(|p| p.id.as_str()).collect();
    let changed = new.difference(&old).count();
    let gone = old.iter().filter(|(id, _)| !ids_after.contains(id)).count();
    (changed, gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, device: &str, ips: &[&str]) -> NeutronPort {
        NeutronPort {
            id: id.into(),
            mac_address: "fa:16:3e:00:00:05".into(),
            fixed_ips: ips
                .iter()
                .map(|ip| FixedIp {
                    ip_address: (*ip).into(),
                })
                .collect(),
            project_id: "p1".into(),
            network_id: "n1".into(),
            device_id: device.into(),
            device_owner: "compute:nova".into(),
            revision_number: 3,
        }
    }

    #[test]
    fn taps_are_named_as_os_vif_names_them() {
        assert_eq!(
            tap_name("4f0c6f3e-8d2a-4b6e-9c1d-0123456789ab"),
            "tap4f0c6f3e-8d"
        );
        assert_eq!(tap_of_interface("qvo4f0c6f3e-8d"), "tap4f0c6f3e-8d");
        assert_eq!(tap_of_interface("tap4f0c6f3e-8d"), "tap4f0c6f3e-8d");
    }

    #[test]
    fn compute_ports_are_served_on_their_taps_with_every_fixed_ip() {
        let mut dhcp = port("dddddddd-dddd", "dhcp", &["10.0.0.2"]);
        dhcp.device_owner = "network:dhcp".into();
        let ports = [
            port("4f0c6f3e-8d2a-4b6e", "vm-1", &["10.0.0.5", "2001:db8::5"]),
            dhcp,
        ];
        let local = BTreeSet::from(["tap4f0c6f3e-8d".to_owned(), "tapffffffff-ff".to_owned()]);
        let view = view(&ports, None, &local);
        let (instance, port) = view.index.by_device("tap4f0c6f3e-8d").unwrap();
        assert_eq!(
            (instance.id.as_str(), instance.project_id.as_str()),
            ("vm-1", "p1")
        );
        assert_eq!(port.ips.len(), 2);
        assert_eq!(port.network_id, "n1");
        assert!(
            view.index.by_device("tapdddddddd-dd").is_none(),
            "not a compute port"
        );
        assert_eq!(view.waiting, ["tapffffffff-ff"]);
    }

    #[test]
    fn two_ports_sharing_a_tap_name_are_both_refused_and_named() {
        let ports = [
            port("4f0c6f3e-8d2a-aaaa", "vm-1", &["10.0.0.5"]),
            port("4f0c6f3e-8d2a-bbbb", "vm-2", &["10.0.0.6"]),
        ];
        let local = BTreeSet::from(["tap4f0c6f3e-8d".to_owned()]);
        let view = view(&ports, None, &local);
        assert!(view.index.by_device("tap4f0c6f3e-8d").is_none());
        assert_eq!(view.ambiguous.len(), 1);
        assert_eq!(view.ambiguous[0].ports.len(), 2);
        assert!(view.waiting.is_empty(), "ambiguous, not waiting");
        // With OVS, the iface-ids tell them apart.
        let ovs = BTreeMap::from([
            ("4f0c6f3e-8d2a-aaaa".to_owned(), "tapa".to_owned()),
            ("4f0c6f3e-8d2a-bbbb".to_owned(), "qvob".to_owned()),
        ]);
        let view = super::view(&ports, Some(&ovs), &BTreeSet::new());
        assert_eq!(view.index.by_device("tapa").unwrap().0.id, "vm-1");
        assert_eq!(view.index.by_device("tapb").unwrap().0.id, "vm-2");
    }

    #[test]
    fn a_port_without_an_instance_or_with_bad_data_is_skipped_with_why() {
        let ports = [
            port("11111111-1111", "", &["10.0.0.5"]),
            port("22222222-2222", "vm-2", &["10.0.0.500"]),
        ];
        let view = view(&ports, None, &BTreeSet::new());
        assert_eq!(view.skipped.len(), 2, "{:?}", view.skipped);
        assert_eq!(view.index.device_count(), 0);
    }

    #[test]
    fn changes_are_told_by_revision() {
        let a = port("a", "vm", &[]);
        let mut a2 = a.clone();
        a2.revision_number = 4;
        let b = port("b", "vm", &[]);
        assert_eq!(
            changed(&[a.clone(), b.clone()], &[a.clone(), b.clone()]),
            (0, 0)
        );
        assert_eq!(changed(&[a.clone(), b.clone()], &[a2, b.clone()]), (1, 0));
        assert_eq!(changed(&[a, b.clone()], &[b]), (0, 1));
    }
}
