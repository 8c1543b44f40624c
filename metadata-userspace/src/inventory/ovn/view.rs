//! From the two databases' replicas to an inventory: pure, so every rule
//! (which taps are candidates, which bindings are served here, what a
//! binding's columns mean) is unit-tested without a server.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use metadata_common::MacAddr;
use serde_json::{Value, json};

use crate::{
    config::DeviceName,
    inventory::{
        Instance, Port, PortIndex,
        ovsdb::replica::{Replica, Row, column, set_atoms, string_map, uuid_of, uuids},
        ports::PortAddress,
    },
};

/// A tap on this host whose OVS Interface row names a Neutron port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// external_ids:iface-id, the Neutron port id (Port_Binding.logical_port).
    pub iface_id: String,
    /// The Interface's name: the tap.
    pub device: String,
    /// external_ids:attached-mac (os-vif sets it): the port's own MAC,
    /// which tells its address entry from an allowed-address-pair's.
    pub attached_mac: Option<MacAddr>,
}

/// This chassis's name: the Open_vSwitch row's external_ids:system-id.
pub fn system_id(ovs: &Replica) -> Option<String> {
    ovs.table("Open_vSwitch")
        .find_map(|(_, row)| string_map(column(row, "external_ids")).remove("system-id"))
}

/// The local Interface rows with an iface-id.
pub fn candidates(ovs: &Replica) -> BTreeSet<Candidate> {
    ovs.table("Interface")
        .filter_map(|(_, row)| {
            let mut ids = string_map(column(row, "external_ids"));
            let iface_id = ids.remove("iface-id")?;
            let device = column(row, "name").as_str()?.to_owned();
            let attached_mac = ids.remove("attached-mac").and_then(|m| m.parse().ok());
            Some(Candidate {
                iface_id,
                device,
                attached_mac,
            })
        })
        .collect()
}

/// The Southbound monitor: only the bindings of local candidates (one
/// `logical_port ==` clause each, OR-ed), the networks' metadata
/// localports, the datapaths, and this chassis's rows. Never the whole
/// Port_Binding table.
pub fn sb_requests(candidates: &BTreeSet<Candidate>, system_id: Option<&str>) -> Value {
    json!({
        "Port_Binding": [{"columns": BINDING_COLUMNS, "where": binding_clauses(candidates)}],
        "Datapath_Binding": [{"columns": ["external_ids"]}],
        "Chassis": [{"columns": ["name"], "where": chassis_clauses(system_id)}],
        "Chassis_Private": [{"columns": ["name"], "where": chassis_clauses(system_id)}],
    })
}

const BINDING_COLUMNS: [&str; 7] = [
    "logical_port",
    "mac",
    "chassis",
    "additional_chassis",
    "datapath",
    "external_ids",
    "type",
];

/// The Port_Binding clauses: each candidate, and every localport.
pub fn binding_clauses(candidates: &BTreeSet<Candidate>) -> Vec<Value> {
    candidates
        .iter()
        .map(|c| json!(["logical_port", "==", c.iface_id]))
        .chain([json!(["type", "==", "localport"])])
        .collect()
}

fn chassis_clauses(system_id: Option<&str>) -> Vec<Value> {
    match system_id {
        Some(name) => vec![json!(["name", "==", name])],
        None => vec![json!(false)],
    }
}

/// What the replicas make of this host.
#[derive(Debug, Default)]
pub struct Inventory {
    pub index: PortIndex,
    /// Local candidates with no binding served here (yet).
    pub waiting: Vec<Candidate>,
    /// Bindings bound here that the view cannot use, with why.
    pub skipped: Vec<Skipped>,
}

/// A Port_Binding bound here that is not served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub uuid: String,
    pub logical_port: String,
    pub reason: String,
}

/// The instances served on this chassis.
pub fn inventory(ovs: &Replica, sb: &Replica) -> Inventory {
    let system_id = system_id(ovs);
    let chassis: BTreeSet<&String> = sb
        .table("Chassis")
        .filter(|(_, row)| {
            system_id
                .as_deref()
                .is_some_and(|id| column(row, "name") == id)
        })
        .map(|(uuid, _)| uuid)
        .collect();
    let bindings: BTreeMap<&str, (&String, &Row)> = sb
        .table("Port_Binding")
        .filter_map(|(uuid, row)| Some((column(row, "logical_port").as_str()?, (uuid, row))))
        .collect();
    let mut ports: BTreeMap<(String, String), Vec<Port>> = BTreeMap::new();
    let mut waiting = Vec::new();
    let mut skipped = Vec::new();
    for candidate in candidates(ovs) {
        let served = bindings
            .get(candidate.iface_id.as_str())
            .filter(|(_, row)| bound_here(row, &chassis));
        let Some((uuid, row)) = served else {
            waiting.push(candidate);
            continue;
        };
        match port(sb, &candidate, row) {
            Ok((owner, port)) => ports.entry(owner).or_default().push(port),
            Err(reason) => skipped.push(Skipped {
                uuid: (*uuid).clone(),
                logical_port: candidate.iface_id.clone(),
                reason,
            }),
        }
    }
    let instances = ports
        .into_iter()
        .map(|((id, project_id), ports)| Instance::from_ports(id, project_id, ports))
        .collect();
    Inventory {
        index: PortIndex::from_instances(instances),
        waiting,
        skipped,
    }
}

/// Whether a binding's chassis, or one of its additional chassis (live
/// migration), is this one.
fn bound_here(row: &Row, chassis: &BTreeSet<&String>) -> bool {
    uuids(column(row, "chassis"))
        .iter()
        .chain(&uuids(column(row, "additional_chassis")))
        .any(|uuid| chassis.contains(uuid))
}

/// The port a binding describes, with its owner (instance, project).
fn port(
    sb: &Replica,
    candidate: &Candidate,
    row: &Row,
) -> Result<((String, String), Port), String> {
    let ids = string_map(column(row, "external_ids"));
    let instance = ids.get("neutron:device_id").filter(|id| !id.is_empty());
    let instance = instance.ok_or("no neutron:device_id")?.clone();
    let project = ids.get("neutron:project_id").cloned().unwrap_or_default();
    let (mac, addrs) = port_addresses(column(row, "mac"), candidate.attached_mac)?;
    let datapath = uuid_of(column(row, "datapath")).ok_or("no datapath")?;
    let device = candidate
        .device
        .parse::<DeviceName>()
        .map_err(|e| format!("device: {e}"))?;
    let port = Port {
        device,
        mac,
        network_id: network_id(sb, &datapath),
        ips: addrs
            .into_iter()
            .map(|addr| PortAddress {
                addr,
                prefix_len: None,
            })
            .collect(),
        router_id: None,
        gateway: None,
        mtu: None,
        dns: Vec::new(),
        metadata_nexthop: metadata_nexthop(sb, &datapath),
    };
    Ok(((instance, project), port))
}

/// One entry of the mac column: "MAC IP1 IP2 ...".
#[derive(Debug, Clone, PartialEq, Eq)]
struct AddressEntry {
    mac: MacAddr,
    ips: Vec<IpAddr>,
}

/// Words OVN allows in place of an entry's MAC; they name no address of
/// the port's own.
const MAC_KEYWORDS: [&str; 3] = ["unknown", "dynamic", "router"];

/// Every entry of the mac column but OVN's keywords.
fn address_entries(value: &Value) -> Result<Vec<AddressEntry>, String> {
    let mut entries = Vec::new();
    for atom in set_atoms(value) {
        let text = atom.as_str().ok_or("a mac entry that is not a string")?;
        let mut words = text.split_whitespace();
        let Some(first) = words.next() else { continue };
        if MAC_KEYWORDS.contains(&first) {
            continue;
        }
        let mac: MacAddr = first.parse()?;
        let ips = words
            .map(|w| {
                w.parse::<IpAddr>()
                    .map_err(|_| format!("`{w}` in the mac column is not an address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.push(AddressEntry { mac, ips });
    }
    Ok(entries)
}

/// The port's own MAC and the IPs of every entry with that MAC.
///
/// Neutron writes an allowed-address-pair with a MAC of its own as a
/// second entry, and OVSDB sorts the set, so the port's entry is not
/// always first. The port's entry is the one with the Interface's
/// attached-mac; without one, the one MAC whose entries carry IPs.
/// Allowed-address-pair entries of another MAC are not this instance's:
/// such an address (a VIP moving between instances) is not registered, as
/// neutron's ML2/OVS agent, which looks up fixed IPs only, does not serve
/// it either.
pub fn port_addresses(
    value: &Value,
    attached_mac: Option<MacAddr>,
) -> Result<(MacAddr, Vec<IpAddr>), String> {
    let entries = address_entries(value)?;
    let own = match attached_mac {
        Some(mac) if entries.iter().any(|e| e.mac == mac) => mac,
        Some(mac) => return Err(format!("no mac entry has the attached-mac {mac}")),
        None => sole_mac(&entries)?,
    };
    let ips = entries
        .iter()
        .filter(|e| e.mac == own)
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    Ok((own, ips))
}

/// Without attached-mac: the MAC of the entries with IPs, or of the only
/// entry.
fn sole_mac(entries: &[AddressEntry]) -> Result<MacAddr, String> {
    let with_ips: BTreeSet<MacAddr> = entries
        .iter()
        .filter(|e| !e.ips.is_empty())
        .map(|e| e.mac)
        .collect();
    match (with_ips.len(), entries) {
        (1, _) => Ok(*with_ips.first().expect("one element")),
        (0, [only]) => Ok(only.mac),
        (0, []) => Err("an empty mac column".into()),
        (0, _) => Err("several MAC-only entries and no attached-mac to choose".into()),
        _ => Err(format!(
            "entries with addresses for several MACs ({}) and no attached-mac to choose",
            with_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The Neutron network of a datapath: its external_ids name "neutron-<id>".
fn network_id(sb: &Replica, datapath: &str) -> String {
    let row = sb
        .tables
        .get("Datapath_Binding")
        .and_then(|t| t.get(datapath));
    let name = row.and_then(|row| string_map(column(row, "external_ids")).remove("name"));
    match name {
        Some(name) => name.strip_prefix("neutron-").unwrap_or(&name).to_owned(),
        None => datapath.to_owned(),
    }
}

/// The IPv4 address of the network's metadata port (the localport owned by
/// network:distributed), which OVN's DHCP gives guests as the next hop to
/// 169.254.169.254.
fn metadata_nexthop(sb: &Replica, datapath: &str) -> Option<Ipv4Addr> {
    sb.table("Port_Binding")
        .filter(|(_, row)| column(row, "type") == "localport")
        .filter(|(_, row)| uuid_of(column(row, "datapath")).as_deref() == Some(datapath))
        .filter(|(_, row)| {
            string_map(column(row, "external_ids"))
                .get("neutron:device_owner")
                .map(String::as_str)
                == Some("network:distributed")
        })
        .find_map(|(_, row)| {
            let (_, addrs) = port_addresses(column(row, "mac"), None).ok()?;
            addrs.into_iter().find_map(|a| match a {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
        })
}

#[cfg(test)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "json! literals read better by value"
)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::inventory::ovsdb::replica::Schema;

    fn ovs() -> Replica {
        let mut ovs = Replica::default();
        let rows = json!({
            "Open_vSwitch": {"o": {"initial": {"external_ids": ["map", [["system-id", "compute-1"]]]}}},
            "Interface": {
                "i1": {"initial": {"name": "tap1", "external_ids": ["map", [["iface-id", "p1"], ["attached-mac", "fa:16:3e:00:00:01"]]]}},
                "i2": {"initial": {"name": "tap2", "external_ids": ["map", [["iface-id", "p2"]]]}},
                "i3": {"initial": {"name": "br-int", "external_ids": ["map", []]}},
            },
        });
        ovs.apply(&Schema::default(), &rows).unwrap();
        ovs
    }

    fn sb(bindings: Value) -> Replica {
        let mut sb = Replica::default();
        let rows = json!({
            "Chassis": {"c1": {"initial": {"name": "compute-1"}}},
            "Datapath_Binding": {"d1": {"initial": {"external_ids": ["map", [["name", "neutron-net1"]]]}}},
            "Port_Binding": bindings,
        });
        sb.apply(&Schema::default(), &rows).unwrap();
        sb
    }

    fn binding(port: &str, mac: &str, chassis: Value, extra: Value) -> Value {
        let mut row = json!({
            "logical_port": port,
            "mac": mac,
            "chassis": chassis,
            "datapath": ["uuid", "d1"],
            "type": "",
            "external_ids": ["map", [["neutron:device_id", "vm-1"], ["neutron:project_id", "proj"]]],
        });
        for (k, v) in extra.as_object().unwrap() {
            row[k] = v.clone();
        }
        json!({"initial": row})
    }

    #[test]
    fn candidates_are_interfaces_with_an_iface_id_and_the_monitor_names_only_them() {
        let ovs = ovs();
        assert_eq!(system_id(&ovs).as_deref(), Some("compute-1"));
        let found: Vec<String> = candidates(&ovs).into_iter().map(|c| c.device).collect();
        assert_eq!(found, ["tap1", "tap2"]);
        let requests = sb_requests(&candidates(&ovs), Some("compute-1"));
        assert_eq!(
            requests["Port_Binding"][0]["where"],
            json!([
                ["logical_port", "==", "p1"],
                ["logical_port", "==", "p2"],
                ["type", "==", "localport"]
            ])
        );
        assert_eq!(
            requests["Chassis"][0]["where"],
            json!([["name", "==", "compute-1"]])
        );
        assert_eq!(
            sb_requests(&BTreeSet::new(), None)["Chassis"][0]["where"],
            json!([false])
        );
    }

    #[test]
    fn bindings_here_are_served_others_wait_and_bad_ones_are_skipped() {
        let localport = json!({"initial": {
            "logical_port": "meta", "mac": "fa:16:3e:00:00:02 10.0.0.2", "type": "localport",
            "datapath": ["uuid", "d1"], "chassis": ["set", []],
            "external_ids": ["map", [["neutron:device_owner", "network:distributed"]]],
        }});
        let sb = sb(json!({
            "b1": binding("p1", "fa:16:3e:00:00:01 10.0.0.5 fd00::5", json!(["uuid", "c1"]), json!({})),
            "b2": binding("p2", "fa:16:3e:00:00:09 10.0.0.9", json!(["uuid", "elsewhere"]), json!({})),
            "m": localport,
        }));
        let inventory = inventory(&ovs(), &sb);
        let (instance, port) = inventory.index.by_device("tap1").unwrap();
        assert_eq!(
            (instance.id.as_str(), instance.project_id.as_str()),
            ("vm-1", "proj")
        );
        assert_eq!(port.network_id, "net1");
        assert_eq!(port.mac.to_string(), "fa:16:3e:00:00:01");
        assert_eq!(port.ips.len(), 2);
        assert_eq!(port.metadata_nexthop, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(
            inventory.index.by_device("tap2").is_none(),
            "bound elsewhere"
        );
        assert_eq!(inventory.waiting.len(), 1);

        // Live migration: here as an additional chassis.
        let migrating = sb_with(
            "p2",
            json!({"additional_chassis": ["set", [["uuid", "c1"]]]}),
        );
        assert!(inventory_of(&migrating).by_device("tap2").is_some());
        // Unparsable data: skipped, not served.
        let bad = sb_with("p1", json!({"mac": "not-a-mac 10.0.0.5"}));
        assert!(inventory_of(&bad).by_device("tap1").is_none());
    }

    fn sb_with(port: &str, extra: Value) -> Replica {
        let chassis = if port == "p1" {
            json!(["uuid", "c1"])
        } else {
            json!(["uuid", "elsewhere"])
        };
        sb(json!({"b": binding(port, "fa:16:3e:00:00:01 10.0.0.5", chassis, extra)}))
    }

    fn inventory_of(sb: &Replica) -> PortIndex {
        inventory(&ovs(), sb).index
    }

    #[test]
    fn the_mac_column_reads_as_neutron_writes_it() {
        let (mac, addrs) =
            port_addresses(&json!("fa:16:3e:11:22:33 10.0.0.5 2001:db8::5"), None).unwrap();
        assert_eq!(mac.to_string(), "fa:16:3e:11:22:33");
        assert_eq!(addrs.len(), 2);
        assert!(port_addresses(&json!(["set", []]), None).is_err());
        assert!(port_addresses(&json!("fa:16:3e:11:22:33 10.0.0.500"), None).is_err());
        assert!(
            port_addresses(&json!("router"), None).is_err(),
            "keywords only"
        );
    }

    #[test]
    fn an_allowed_address_pair_entry_is_not_the_port_in_either_order() {
        let own: MacAddr = "fa:16:3e:0e:0a:4a".parse().unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        for entries in [
            json!(["set", ["fa:16:3e:00:00:01", "fa:16:3e:0e:0a:4a 10.0.0.5"]]),
            json!(["set", ["fa:16:3e:0e:0a:4a 10.0.0.5", "fa:16:3e:00:00:01"]]),
            json!([
                "set",
                [
                    "fa:16:3e:0e:0a:4a 10.0.0.5",
                    "unknown",
                    "fa:16:3e:ff:00:01 10.0.0.99"
                ]
            ]),
        ] {
            assert_eq!(
                port_addresses(&entries, Some(own)).unwrap(),
                (own, vec![ip]),
                "{entries}"
            );
        }
        // Without attached-mac: the only MAC with addresses.
        let both = json!([
            "set",
            ["fa:16:3e:00:00:01", "fa:16:3e:0e:0a:4a 10.0.0.5", "dynamic"]
        ]);
        assert_eq!(port_addresses(&both, None).unwrap(), (own, vec![ip]));
        // Two MACs with addresses and nothing to choose: refused, said why.
        let two = json!([
            "set",
            ["fa:16:3e:00:00:01 10.0.0.7", "fa:16:3e:0e:0a:4a 10.0.0.5"]
        ]);
        let err = port_addresses(&two, None).unwrap_err();
        assert!(err.contains("several MACs"), "{err}");
        let wrong = "fa:16:3e:99:99:99".parse().unwrap();
        assert!(
            port_addresses(&both, Some(wrong))
                .unwrap_err()
                .contains("attached-mac")
        );
    }

    #[test]
    fn a_binding_that_cannot_be_used_is_reported_with_its_uuid_and_reason() {
        let sb = sb(json!({"b9": binding(
            "p2",
            "fa:16:3e:00:00:07 10.0.0.7",
            json!(["uuid", "c1"]),
            json!({"mac": ["set", ["fa:16:3e:00:00:07 10.0.0.7", "fa:16:3e:00:00:08 10.0.0.8"]]}),
        )}));
        let inventory = inventory(&ovs(), &sb);
        assert!(inventory.index.by_device("tap2").is_none());
        assert_eq!(inventory.skipped.len(), 1);
        let skipped = &inventory.skipped[0];
        assert_eq!(
            (skipped.uuid.as_str(), skipped.logical_port.as_str()),
            ("b9", "p2")
        );
        assert!(skipped.reason.contains("several MACs"), "{skipped:?}");
    }
}
