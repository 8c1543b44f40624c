//! Reconcile as a pure plan plus an apply step. [`plan`] decides, from the
//! inventory, the devices present and what the datapath holds now, what to
//! change: slots to write and free, taps to attach (new links), to adopt
//! (links a previous daemon pinned, given this daemon's program) and to
//! detach, counters to create and remove. It touches nothing, so every
//! case (name reuse, an ifindex change, late records, slot reuse, a full
//! map) is unit-tested without root; [`slots`] is its slot planner.
//! `Datapath::apply` carries a plan out and reports what failed item by
//! item.

pub mod slots;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use metadata_common::{
    DatapathConfig, Ifindex, Ipv4Be, Ipv6Be, MacAddr, PortKeyV4, PortKeyV6, Slot,
};

use self::slots::{SlotPlan, SlotsExhausted};
use crate::{
    config::GlobPattern,
    inventory::{Identity, Instance, PortIndex, SlotOwners},
};

/// A device present in the network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub ifindex: Ifindex,
    pub name: String,
}

/// What the datapath holds now, read before planning.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub ports_v4: Vec<(PortKeyV4, Slot)>,
    pub ports_v6: Vec<(PortKeyV6, Slot)>,
    /// Taps with a link pinned on the bpffs (this daemon's or a
    /// predecessor's).
    pub pinned: BTreeSet<Ifindex>,
    /// Pinned taps whose link runs this daemon's program.
    pub adopted: BTreeSet<Ifindex>,
    /// Devices with a counters entry.
    pub counters: BTreeSet<Ifindex>,
    /// The metadata next hops answered now.
    pub nexthops_v4: BTreeSet<PortKeyV4>,
}

/// Which devices the datapath may attach to, and its slot capacities.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    pub interfaces: &'a [GlobPattern],
    pub host: Ifindex,
    pub capacity_v4: u32,
    pub capacity_v6: u32,
}

/// A tap that should carry the program, and whose it is.
#[derive(Debug, Clone)]
pub struct Tap {
    pub ifindex: Ifindex,
    pub name: String,
    pub instance: Arc<Instance>,
    /// Index of the port in `instance.ports`.
    pub port: usize,
}

impl Tap {
    pub fn mac(&self) -> MacAddr {
        self.instance.ports[self.port].mac
    }
}

/// Everything to change, in the order `apply` carries it out.
#[derive(Debug)]
pub struct Plan {
    /// Every tap that should carry the program after the plan.
    pub taps: Vec<Tap>,
    pub slots_v4: SlotPlan<PortKeyV4>,
    pub slots_v6: SlotPlan<PortKeyV6>,
    pub add_counters: Vec<Ifindex>,
    /// Taps without a link: attach anew.
    pub attach: Vec<Ifindex>,
    /// Taps with a predecessor's link: give it this daemon's program.
    pub adopt: Vec<Ifindex>,
    /// Links of devices that are gone or have no port record any more.
    pub detach: Vec<Ifindex>,
    pub remove_counters: Vec<Ifindex>,
    /// Metadata next hops to answer ARP for, and to stop answering for.
    pub add_nexthops_v4: Vec<PortKeyV4>,
    pub remove_nexthops_v4: Vec<PortKeyV4>,
}

/// Plans the datapath for `inventory` on `devices`, given `current`.
pub fn plan(
    inventory: &PortIndex,
    devices: &[Device],
    current: &Current,
    scope: &Scope<'_>,
) -> Result<Plan, SlotsExhausted> {
    let taps = wanted_taps(inventory, devices, scope);
    let wanted: BTreeSet<Ifindex> = taps.iter().map(|t| t.ifindex).collect();
    let desired = Desired::of(&taps);
    let with_counters: BTreeSet<Ifindex> = wanted.iter().copied().chain([scope.host]).collect();
    let new_only = |want: &BTreeSet<Ifindex>, have: &BTreeSet<Ifindex>| -> Vec<Ifindex> {
        want.difference(have).copied().collect()
    };
    Ok(Plan {
        slots_v4: slots::plan(
            &current.ports_v4,
            &desired.v4,
            scope.capacity_v4,
            "datapath.nat_v4",
        )?,
        slots_v6: slots::plan(
            &current.ports_v6,
            &desired.v6,
            scope.capacity_v6,
            "datapath.nat_v6",
        )?,
        add_counters: new_only(&with_counters, &current.counters),
        attach: new_only(&wanted, &current.pinned),
        adopt: wanted
            .intersection(&current.pinned)
            .filter(|t| !current.adopted.contains(t))
            .copied()
            .collect(),
        detach: new_only(&current.pinned, &wanted),
        remove_counters: new_only(&current.counters, &with_counters),
        add_nexthops_v4: desired
            .nexthops_v4
            .difference(&current.nexthops_v4)
            .copied()
            .collect(),
        remove_nexthops_v4: current
            .nexthops_v4
            .difference(&desired.nexthops_v4)
            .copied()
            .collect(),
        taps,
    })
}

/// The map keys the wanted taps call for.
struct Desired {
    v4: Vec<PortKeyV4>,
    v6: Vec<PortKeyV6>,
    nexthops_v4: BTreeSet<PortKeyV4>,
}

impl Desired {
    fn of(taps: &[Tap]) -> Self {
        let mut desired = Self {
            v4: Vec::new(),
            v6: Vec::new(),
            nexthops_v4: BTreeSet::new(),
        };
        for tap in taps {
            let port = &tap.instance.ports[tap.port];
            let v4 = |addr: std::net::Ipv4Addr| PortKeyV4 {
                ifindex: tap.ifindex,
                addr: Ipv4Be(addr.octets()),
            };
            desired.v4.extend(port.ipv4().map(v4));
            desired
                .v6
                .extend(port.ipv6().into_iter().map(|addr| PortKeyV6 {
                    ifindex: tap.ifindex,
                    addr: Ipv6Be(addr.octets()),
                }));
            desired.nexthops_v4.extend(port.metadata_nexthop.map(v4));
        }
        desired
    }
}

/// The devices that match `datapath.interfaces` and have a port record.
fn wanted_taps(inventory: &PortIndex, devices: &[Device], scope: &Scope<'_>) -> Vec<Tap> {
    devices
        .iter()
        .filter(|d| d.ifindex != scope.host && scope.interfaces.iter().any(|p| p.matches(&d.name)))
        .filter_map(|device| {
            let (instance, port) = inventory.by_device(&device.name)?;
            let port = instance
                .ports
                .iter()
                .position(|p| p.device == port.device)?;
            Some(Tap {
                ifindex: device.ifindex,
                name: device.name.clone(),
                instance: Arc::clone(instance),
                port,
            })
        })
        .collect()
}

/// Who the proxy will see behind each slot address once `plan` is applied:
/// the slots of the taps in `attached` (a tap whose attach failed gets no
/// identity, so nothing is served on its behalf).
pub fn slot_owners(plan: &Plan, attached: &BTreeSet<Ifindex>, cfg: &DatapathConfig) -> SlotOwners {
    let taps: BTreeMap<Ifindex, &Tap> = plan.taps.iter().map(|t| (t.ifindex, t)).collect();
    let v4 = plan.slots_v4.assigned.iter().map(|(key, slot)| {
        let nat = IpAddr::from(cfg.slot_addr_v4(*slot).0);
        (key.ifindex, IpAddr::from(key.addr.0), nat)
    });
    let v6 = plan.slots_v6.assigned.iter().map(|(key, slot)| {
        let nat = IpAddr::from(cfg.slot_addr_v6(*slot).0);
        (key.ifindex, IpAddr::from(key.addr.0), nat)
    });
    v4.chain(v6)
        .filter(|(ifindex, _, _)| attached.contains(ifindex))
        .filter_map(|(ifindex, guest_addr, nat)| {
            let tap = taps.get(&ifindex)?;
            let identity = Identity {
                instance: Arc::clone(&tap.instance),
                port: tap.port,
                device: tap.name.clone(),
                guest_addr,
            };
            Some((nat, identity))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{path::Path, str::FromStr as _};

    use super::*;

    const HOST: Ifindex = Ifindex(2);

    fn inventory(taps: &[(&str, &str)]) -> PortIndex {
        let text: String = taps
            .iter()
            .enumerate()
            .map(|(i, (device, ip))| {
                format!(
                    "[[instance]]\nid = \"i{i}\"\nproject_id = \"p\"\n[[instance.port]]\n\
                     device = \"{device}\"\nmac = \"fa:16:3e:00:00:0{i}\"\nnetwork_id = \"n\"\n\
                     ips = [\"{ip}\"]\n"
                )
            })
            .collect();
        PortIndex::parse(Path::new("instances.toml"), &text).unwrap()
    }

    fn devices(list: &[(u32, &str)]) -> Vec<Device> {
        list.iter()
            .map(|(i, name)| Device {
                ifindex: Ifindex(*i),
                name: (*name).to_owned(),
            })
            .collect()
    }

    fn scope(patterns: &[GlobPattern]) -> Scope<'_> {
        Scope {
            interfaces: patterns,
            host: HOST,
            capacity_v4: 4,
            capacity_v6: 16,
        }
    }

    fn taps() -> Vec<GlobPattern> {
        vec![GlobPattern::from_str("tap*").unwrap()]
    }

    fn v4(ifindex: u32, last: u8) -> PortKeyV4 {
        PortKeyV4 {
            ifindex: Ifindex(ifindex),
            addr: Ipv4Be([10, 0, 0, last]),
        }
    }

    fn set(items: &[u32]) -> BTreeSet<Ifindex> {
        items.iter().map(|i| Ifindex(*i)).collect()
    }

    #[test]
    fn a_new_tap_with_a_record_is_attached_with_slots_and_counters() {
        let inv = inventory(&[("tapa", "10.0.0.5")]);
        let patterns = taps();
        let plan = plan(
            &inv,
            &devices(&[(1, "lo"), (2, "mdr0"), (7, "tapa"), (8, "eth0")]),
            &Current::default(),
            &scope(&patterns),
        )
        .unwrap();
        assert_eq!(plan.attach, [Ifindex(7)]);
        assert!(plan.adopt.is_empty() && plan.detach.is_empty());
        assert_eq!(plan.slots_v4.assigned, [(v4(7, 5), Slot(0))]);
        assert_eq!(
            plan.slots_v6.assigned.len(),
            1,
            "the EUI-64 link-local address"
        );
        assert_eq!(plan.add_counters, [HOST, Ifindex(7)]);
    }

    #[test]
    fn a_tap_without_a_record_or_outside_the_patterns_is_left_alone() {
        let inv = inventory(&[("tapa", "10.0.0.5"), ("vnet0", "10.0.0.6")]);
        let patterns = taps();
        let plan = plan(
            &inv,
            &devices(&[(7, "tapb"), (8, "vnet0")]),
            &Current::default(),
            &scope(&patterns),
        )
        .unwrap();
        assert!(plan.taps.is_empty() && plan.attach.is_empty());
        assert!(plan.slots_v4.assigned.is_empty());
    }

    #[test]
    fn a_late_record_attaches_an_existing_tap() {
        let patterns = taps();
        let devs = devices(&[(7, "tapa")]);
        let before = plan(
            &inventory(&[]),
            &devs,
            &Current::default(),
            &scope(&patterns),
        )
        .unwrap();
        assert!(before.attach.is_empty());
        let after = plan(
            &inventory(&[("tapa", "10.0.0.5")]),
            &devs,
            &Current::default(),
            &scope(&patterns),
        )
        .unwrap();
        assert_eq!(after.attach, [Ifindex(7)]);
    }

    #[test]
    fn a_name_reused_with_a_new_ifindex_moves_link_slots_and_counters() {
        let inv = inventory(&[("tapa", "10.0.0.5")]);
        let patterns = taps();
        let current = Current {
            ports_v4: vec![(v4(7, 5), Slot(0))],
            pinned: set(&[7]),
            adopted: set(&[7]),
            counters: set(&[2, 7]),
            ..Current::default()
        };
        let plan = plan(&inv, &devices(&[(9, "tapa")]), &current, &scope(&patterns)).unwrap();
        assert_eq!(plan.detach, [Ifindex(7)], "the old device's link goes");
        assert_eq!(plan.attach, [Ifindex(9)]);
        assert_eq!(plan.slots_v4.removed, [(v4(7, 5), Slot(0))]);
        assert_eq!(
            plan.slots_v4.assigned,
            [(v4(9, 5), Slot(0))],
            "the freed slot is reused"
        );
        assert_eq!(plan.remove_counters, [Ifindex(7)]);
        assert_eq!(plan.add_counters, [Ifindex(9)]);
    }

    #[test]
    fn a_predecessors_links_are_adopted_once_and_kept_slots_stay() {
        let inv = inventory(&[("tapa", "10.0.0.5")]);
        let patterns = taps();
        let mut current = Current {
            ports_v4: vec![(v4(7, 5), Slot(3))],
            pinned: set(&[7]),
            counters: set(&[2, 7]),
            ..Current::default()
        };
        let first = plan(&inv, &devices(&[(7, "tapa")]), &current, &scope(&patterns)).unwrap();
        assert_eq!(first.adopt, [Ifindex(7)]);
        assert!(first.attach.is_empty() && first.detach.is_empty());
        assert_eq!(
            first.slots_v4.assigned,
            [(v4(7, 5), Slot(3))],
            "connections keep their slot"
        );
        current.adopted = set(&[7]);
        let second = plan(&inv, &devices(&[(7, "tapa")]), &current, &scope(&patterns)).unwrap();
        assert!(second.adopt.is_empty() && second.add_counters.is_empty());
    }

    #[test]
    fn a_pin_left_for_a_vanished_device_is_detached() {
        let patterns = taps();
        let current = Current {
            pinned: set(&[40]),
            counters: set(&[2, 40]),
            ..Current::default()
        };
        let plan = plan(&inventory(&[]), &devices(&[]), &current, &scope(&patterns)).unwrap();
        assert_eq!(plan.detach, [Ifindex(40)]);
        assert_eq!(plan.remove_counters, [Ifindex(40)]);
    }

    #[test]
    fn metadata_next_hops_follow_their_taps() {
        let text = "[[instance]]\nid = \"i\"\nproject_id = \"p\"\n[[instance.port]]\n\
                    device = \"tapa\"\nmac = \"fa:16:3e:00:00:01\"\nnetwork_id = \"n\"\n\
                    ips = [\"10.0.0.5\"]\nmetadata_nexthop = \"10.0.0.2\"\n";
        let inv = PortIndex::parse(Path::new("instances.toml"), text).unwrap();
        let patterns = taps();
        let stale = PortKeyV4 {
            ifindex: Ifindex(3),
            addr: Ipv4Be([10, 0, 0, 2]),
        };
        let current = Current {
            nexthops_v4: [stale].into(),
            ..Current::default()
        };
        let plan = plan(&inv, &devices(&[(7, "tapa")]), &current, &scope(&patterns)).unwrap();
        assert_eq!(
            plan.add_nexthops_v4,
            [PortKeyV4 {
                ifindex: Ifindex(7),
                addr: Ipv4Be([10, 0, 0, 2])
            }]
        );
        assert_eq!(plan.remove_nexthops_v4, [stale]);
    }

    #[test]
    fn a_full_slot_map_is_an_error_naming_the_capacity() {
        let inv = inventory(&[
            ("tapa", "10.0.0.5"),
            ("tapb", "10.0.0.6"),
            ("tapc", "10.0.0.7"),
            ("tapd", "10.0.0.8"),
            ("tape", "10.0.0.9"),
        ]);
        let patterns = taps();
        let devs = devices(&[
            (3, "tapa"),
            (4, "tapb"),
            (5, "tapc"),
            (6, "tapd"),
            (7, "tape"),
        ]);
        let err = plan(&inv, &devs, &Current::default(), &scope(&patterns)).unwrap_err();
        assert_eq!(
            err,
            SlotsExhausted {
                capacity: 4,
                range: "datapath.nat_v4"
            }
        );
    }

    #[test]
    fn slot_owners_are_only_attached_taps_by_slot_address() {
        let inv = inventory(&[("tapa", "10.0.0.5"), ("tapb", "10.0.0.5")]);
        let patterns = taps();
        let plan = plan(
            &inv,
            &devices(&[(7, "tapa"), (8, "tapb")]),
            &Current::default(),
            &scope(&patterns),
        )
        .unwrap();
        let cfg = DatapathConfig {
            nat_v4_base: Ipv4Be([100, 64, 0, 0]),
            nat_v4_size: 4,
            nat_v6_base: Ipv6Be([
                0xfd, 0, 0xa9, 0xfe, 0x64, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]),
            nat_v6_size: 16,
            ..DatapathConfig::default()
        };
        let owners = slot_owners(&plan, &set(&[8]), &cfg);
        assert_eq!(
            owners.len(),
            2,
            "tapb's IPv4 and IPv6 slots only: {owners:?}"
        );
        let who = &owners[&"100.64.0.1".parse::<IpAddr>().unwrap()];
        assert_eq!(
            (who.device.as_str(), who.instance.id.as_str()),
            ("tapb", "i1")
        );
        assert_eq!(who.guest_addr, "10.0.0.5".parse::<IpAddr>().unwrap());
    }
}
