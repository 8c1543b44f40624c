//! The per-address-family halves of the datapath's maps, behind one
//! interface: a (tap, guest address) -> slot hash map and a slot -> guest
//! array, for IPv4 and for IPv6.

use std::{hash::Hash, net::IpAddr};

use aya::{
    Pod,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
};
use metadata_common::{
    Ifindex, Ipv4Be, Ipv6Be, MacAddr, PortKeyV4, PortKeyV6, PortV4, PortV6, Slot, SlotV4, SlotV6,
};

use super::{DatapathError, map_err};
use crate::reconcile::slots::SlotPlan;

/// What differs between the IPv4 and IPv6 maps.
pub trait Family {
    type Key: Pod + Copy + Eq + Hash;
    type Port: Pod;
    type Entry: Pod + PartialEq + Default;
    const PORTS: &'static str;
    const SLOTS: &'static str;

    fn key(ifindex: Ifindex, addr: IpAddr) -> Option<Self::Key>;
    fn key_parts(key: &Self::Key) -> (Ifindex, IpAddr);
    fn port(slot: Slot) -> Self::Port;
    fn port_slot(port: &Self::Port) -> Slot;
    fn entry(key: &Self::Key, guest_mac: MacAddr, router_mac: MacAddr) -> Self::Entry;
    /// The router MAC an entry learned, if it is for `key`.
    fn learned(entry: &Self::Entry, key: &Self::Key) -> Option<MacAddr>;
}

/// IPv4: [`PortKeyV4`], [`PortV4`], [`SlotV4`].
#[derive(Debug)]
pub struct V4;
/// IPv6: [`PortKeyV6`], [`PortV6`], [`SlotV6`].
#[derive(Debug)]
pub struct V6;

/// The two families differ only in their types and address variant.
macro_rules! family {
    ($family:ty, $key:ident, $port:ident, $entry:ident, $be:ident, $variant:ident, $ports:ident, $slots:ident) => {
        impl Family for $family {
            type Key = $key;
            type Port = $port;
            type Entry = $entry;
            const PORTS: &'static str = metadata_common::map_names::$ports;
            const SLOTS: &'static str = metadata_common::map_names::$slots;

            fn key(ifindex: Ifindex, addr: IpAddr) -> Option<Self::Key> {
                match addr {
                    IpAddr::$variant(addr) => Some($key {
                        ifindex,
                        addr: $be(addr.octets()),
                    }),
                    _ => None,
                }
            }

            fn key_parts(key: &Self::Key) -> (Ifindex, IpAddr) {
                (key.ifindex, IpAddr::from(key.addr.0))
            }

            fn port(slot: Slot) -> Self::Port {
                $port { slot }
            }

            fn port_slot(port: &Self::Port) -> Slot {
                port.slot
            }

            fn entry(key: &Self::Key, guest_mac: MacAddr, router_mac: MacAddr) -> Self::Entry {
                $entry {
                    ifindex: key.ifindex,
                    guest_addr: key.addr,
                    guest_mac,
                    router_mac,
                }
            }

            fn learned(entry: &Self::Entry, key: &Self::Key) -> Option<MacAddr> {
                (entry.ifindex == key.ifindex && entry.guest_addr == key.addr)
                    .then_some(entry.router_mac)
            }
        }
    };
}

family!(
    V4, PortKeyV4, PortV4, SlotV4, Ipv4Be, V4, PORTS_V4, SLOTS_V4
);
family!(
    V6, PortKeyV6, PortV6, SlotV6, Ipv6Be, V6, PORTS_V6, SLOTS_V6
);

/// One family's pair of maps.
#[expect(
    missing_debug_implementations,
    reason = "aya's map types have no Debug"
)]
pub struct SlotMaps<F: Family> {
    pub ports: BpfHashMap<MapData, F::Key, F::Port>,
    pub slots: Array<MapData, F::Entry>,
    /// Slots available (the smaller of the map size and the NAT range).
    pub capacity: u32,
}

impl<F: Family> SlotMaps<F> {
    /// Takes the family's two maps out of the loaded object.
    pub fn take(ebpf: &mut aya::Ebpf, capacity: u32) -> Result<Self, DatapathError> {
        Ok(Self {
            ports: super::take_map(ebpf, F::PORTS)?,
            slots: super::take_map(ebpf, F::SLOTS)?,
            capacity,
        })
    }

    /// The (pair, slot) assignment in the map now.
    pub fn current(&self) -> Vec<(F::Key, Slot)> {
        self.ports
            .iter()
            .filter_map(Result::ok)
            .map(|(key, port)| (key, F::port_slot(&port)))
            .collect()
    }

    /// Writes `plan`: frees the removed pairs' slots, then writes every
    /// assigned slot before its pair, so the reverse path exists before a
    /// request can take the forward one. `mac_of` gives a tap's guest MAC.
    pub fn apply(
        &mut self,
        plan: &SlotPlan<F::Key>,
        mac_of: impl Fn(Ifindex) -> Option<MacAddr>,
    ) -> Result<(), DatapathError> {
        for (key, slot) in &plan.removed {
            match self.ports.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(map_err(F::PORTS)(err)),
            }
            let reused = plan.assigned.iter().any(|(_, s)| s == slot);
            if slot.0 < self.slots.len() && !reused {
                self.slots
                    .set(slot.0, F::Entry::default(), 0)
                    .map_err(map_err(F::SLOTS))?;
            }
        }
        for (key, slot) in &plan.assigned {
            let (ifindex, _) = F::key_parts(key);
            let Some(mac) = mac_of(ifindex) else {
                continue;
            };
            let previous = self.slots.get(&slot.0, 0).ok();
            // Keep what the program learned if the slot is unchanged.
            let router = previous
                .as_ref()
                .and_then(|p| F::learned(p, key))
                .unwrap_or_default();
            let entry = F::entry(key, mac, router);
            if previous.as_ref() != Some(&entry) {
                self.slots
                    .set(slot.0, entry, 0)
                    .map_err(map_err(F::SLOTS))?;
            }
            self.ports
                .insert(key, F::port(*slot), 0)
                .map_err(map_err(F::PORTS))?;
        }
        Ok(())
    }
}
