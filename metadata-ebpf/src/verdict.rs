//! What a program decided for a packet, and the counter it is charged to.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use metadata_common::{DeviceCounters, Ifindex};

use crate::maps::MDR_COUNTERS;

/// Why a packet was dropped. Each reason has its own counter.
#[derive(Clone, Copy)]
pub enum DropReason {
    /// Metadata traffic from a (tap, source) pair that is not registered.
    Unregistered,
    /// Metadata traffic whose headers are truncated or invalid.
    Malformed,
    /// An IP fragment addressed to the metadata service.
    Fragment,
    /// A reply to a slot that has no entry.
    NoSlot,
    /// The datapath is not configured, or a helper failed mid-rewrite.
    Error,
}

/// The outcome of one program run.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Not metadata traffic: hand it on untouched.
    Pass,
    /// A guest request rewritten and redirected to the host device; the
    /// value is what `bpf_redirect` returned.
    Steered(i32),
    /// A proxy reply rewritten and redirected to the tap with this index.
    Replied(Ifindex, i32),
    /// An ARP request answered back out of the tap.
    ArpReplied(i32),
    Drop(DropReason),
}

impl Verdict {
    /// Charges the verdict to the counters of `device` (or, for replies, of
    /// the tap the reply goes to) and returns the tc action.
    #[inline(always)]
    pub fn finish(self, device: Ifindex) -> i32 {
        let counted = match self {
            Self::Replied(tap, _) => tap,
            _ => device,
        };
        // The daemon creates the entry when it attaches; a missing entry
        // (a device being torn down) only loses the count, never the packet.
        if let Some(counters) = MDR_COUNTERS.get_ptr_mut(counted) {
            // SAFETY: per-CPU value; nothing else on this CPU runs while a
            // tc program does, so a plain read-modify-write is exact.
            let counters: &mut DeviceCounters = unsafe { &mut *counters };
            match self {
                Self::Pass => counters.passed += 1,
                Self::Steered(_) => counters.steered += 1,
                Self::Replied(..) => counters.replied += 1,
                Self::ArpReplied(_) => counters.arp_replied += 1,
                Self::Drop(DropReason::Unregistered) => counters.drop_unregistered += 1,
                Self::Drop(DropReason::Malformed) => counters.drop_malformed += 1,
                Self::Drop(DropReason::Fragment) => counters.drop_fragment += 1,
                Self::Drop(DropReason::NoSlot) => counters.drop_no_slot += 1,
                Self::Drop(DropReason::Error) => counters.drop_error += 1,
            }
        }
        match self {
            Self::Pass => TC_ACT_OK as i32,
            Self::Steered(action) | Self::Replied(_, action) | Self::ArpReplied(action) => action,
            Self::Drop(_) => TC_ACT_SHOT as i32,
        }
    }
}
