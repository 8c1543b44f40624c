//! Slot assignment: which NAT address each (tap, guest address) pair gets.
//!
//! A pair keeps its slot for as long as it exists, across reloads and
//! daemon restarts (the assignment lives in the pinned map), so that
//! connections in flight survive both. New pairs take the lowest free slot.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    hash::Hash,
};

use metadata_common::Slot;

/// What to change in the maps to go from the current assignment to one
/// that covers exactly the desired pairs (keyed by `K`: a (tap, IPv4) or
/// (tap, IPv6) pair).
#[derive(Debug, PartialEq, Eq)]
pub struct SlotPlan<K> {
    /// Every desired pair with its slot (kept or new).
    pub assigned: Vec<(K, Slot)>,
    /// Pairs no longer desired, with the slot they free.
    pub removed: Vec<(K, Slot)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("all {capacity} NAT slots are in use; widen {range}")]
pub struct SlotsExhausted {
    pub capacity: u32,
    /// The configuration key of the range: datapath.nat_v4 or nat_v6.
    pub range: &'static str,
}

/// Plans slots for `desired` given the `current` assignment, with slots
/// `0..capacity` available.
pub fn plan<K: Copy + Eq + Hash>(
    current: &[(K, Slot)],
    desired: &[K],
    capacity: u32,
    range: &'static str,
) -> Result<SlotPlan<K>, SlotsExhausted> {
    let wanted: HashSet<K> = desired.iter().copied().collect();
    let mut kept: HashMap<K, Slot> = HashMap::new();
    let mut used = BTreeSet::new();
    let mut removed = Vec::new();
    for &(key, slot) in current {
        // A slot beyond the capacity (the range was narrowed) or assigned
        // twice (cannot happen, but the map is outside our control) is
        // reassigned rather than trusted.
        if wanted.contains(&key) && slot.0 < capacity && used.insert(slot.0) {
            kept.insert(key, slot);
        } else {
            removed.push((key, slot));
        }
    }
    let mut next_free = 0u32;
    let mut assigned = Vec::with_capacity(desired.len());
    let mut seen = HashSet::new();
    for &key in desired {
        if !seen.insert(key) {
            continue;
        }
        let slot = match kept.get(&key) {
            Some(&slot) => slot,
            None => {
                while used.contains(&next_free) {
                    next_free += 1;
                }
                if next_free >= capacity {
                    return Err(SlotsExhausted { capacity, range });
                }
                used.insert(next_free);
                Slot(next_free)
            }
        };
        assigned.push((key, slot));
    }
    Ok(SlotPlan { assigned, removed })
}

#[cfg(test)]
mod tests {
    use metadata_common::{Ifindex, Ipv4Be, PortKeyV4};

    use super::*;

    fn key(ifindex: u32, last: u8) -> PortKeyV4 {
        PortKeyV4 {
            ifindex: Ifindex(ifindex),
            addr: Ipv4Be([10, 0, 0, last]),
        }
    }

    #[test]
    fn same_address_on_two_taps_gets_two_slots() {
        let plan = plan(&[], &[key(5, 5), key(6, 5)], 16, "datapath.nat_v4").unwrap();
        assert_eq!(plan.assigned, [(key(5, 5), Slot(0)), (key(6, 5), Slot(1))]);
        assert!(plan.removed.is_empty());
    }

    #[test]
    fn existing_pairs_keep_their_slots_and_gone_ones_free_theirs() {
        let current = [(key(5, 5), Slot(3)), (key(7, 9), Slot(0))];
        let plan = plan(&current, &[key(6, 5), key(5, 5)], 16, "datapath.nat_v4").unwrap();
        assert_eq!(plan.assigned, [(key(6, 5), Slot(0)), (key(5, 5), Slot(3))]);
        assert_eq!(plan.removed, [(key(7, 9), Slot(0))]);
    }

    #[test]
    fn out_of_range_or_duplicate_slots_are_reassigned() {
        let current = [
            (key(5, 5), Slot(9)),
            (key(6, 5), Slot(1)),
            (key(7, 5), Slot(1)),
        ];
        let plan = plan(
            &current,
            &[key(5, 5), key(6, 5), key(7, 5)],
            4,
            "datapath.nat_v4",
        )
        .unwrap();
        assert_eq!(
            plan.assigned,
            [
                (key(5, 5), Slot(0)),
                (key(6, 5), Slot(1)),
                (key(7, 5), Slot(2))
            ]
        );
        assert_eq!(plan.removed, [(key(5, 5), Slot(9)), (key(7, 5), Slot(1))]);
    }

    #[test]
    fn running_out_of_slots_is_an_error() {
        assert_eq!(
            plan(
                &[],
                &[key(1, 1), key(2, 1), key(3, 1)],
                2,
                "datapath.nat_v4"
            )
            .unwrap_err(),
            SlotsExhausted {
                capacity: 2,
                range: "datapath.nat_v4"
            }
        );
    }
}
