//! What a program decided for a packet, and the counter it is charged to.
//!
//! A verdict is a plain fieldless enum on purpose: enums with payloads get
//! merged by LLVM into register pairs whose unused half may hold anything,
//! including a packet pointer, which the verifier then rejects.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use metadata_common::{DeviceCounters, Ifindex};

use crate::maps::MDR_COUNTERS;

/// The outcome of one program run. Each has its own counter.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    /// Not metadata traffic: hand it on untouched.
    Pass,
    /// A guest request rewritten and redirected into the host device.
    Steered,
    /// A proxy reply rewritten and redirected to its tap (charged to the
    /// tap through [`count_elsewhere`], never to the host device).
    Replied,
    /// An ARP request answered back out of the tap.
    ArpReplied,
    /// A Neighbour Solicitation answered back out of the tap.
    NdpReplied,
    /// Metadata traffic from a (tap, source) pair that is not registered.
    DropUnregistered,
    /// Metadata traffic whose headers are truncated or invalid.
    DropMalformed,
    /// An IP fragment addressed to the metadata service.
    DropFragment,
    /// A reply to a slot that has no entry.
    DropNoSlot,
    /// The datapath is not configured, or a helper failed mid-rewrite.
    DropError,
    /// A guest packet from or to the datapath's own addresses.
    DropReserved,
    /// A packet from the proxy's address that the host did not send.
    DropForged,
    /// Redirected, and already counted on another device (a reply, on the
    /// tap it returns to).
    RedirectCounted,
    /// Dropped, and already counted on another device.
    DropCounted,
}

/// Result type of the parsing and rewriting steps: `Err` ends the run
/// early with that verdict (usually a drop), via `?`.
pub type Step<T> = Result<T, Verdict>;

/// Adds one to the counter of `verdict` on `device`. Returns false when
/// the device has no counters entry.
#[inline(always)]
pub fn count(device: Ifindex, verdict: Verdict) -> bool {
    // The daemon creates the entry when it attaches; a missing entry (a
    // device being torn down) only loses the count, never the packet.
    let Some(counters) = MDR_COUNTERS.get_ptr_mut(device) else {
        return false;
    };
    // SAFETY: per-CPU value; nothing else on this CPU runs while a tc
    // program does, so a plain read-modify-write is exact.
    let counters: &mut DeviceCounters = unsafe { &mut *counters };
    let counter = match verdict {
        Verdict::Pass => &mut counters.passed,
        Verdict::Steered => &mut counters.steered,
        Verdict::Replied => &mut counters.replied,
        Verdict::ArpReplied => &mut counters.arp_replied,
        Verdict::NdpReplied => &mut counters.ndp_replied,
        Verdict::DropUnregistered => &mut counters.drop_unregistered,
        Verdict::DropMalformed => &mut counters.drop_malformed,
        Verdict::DropFragment => &mut counters.drop_fragment,
        Verdict::DropNoSlot => &mut counters.drop_no_slot,
        Verdict::DropError => &mut counters.drop_error,
        Verdict::DropReserved => &mut counters.drop_reserved,
        Verdict::DropForged => &mut counters.drop_forged,
        Verdict::RedirectCounted | Verdict::DropCounted => return true,
    };
    *counter += 1;
    true
}

/// Charges `verdict` to `device` (falling back to `fallback` when `device`
/// has no counters entry) and returns the matching already-counted verdict.
#[inline(always)]
pub fn count_elsewhere(device: Ifindex, fallback: Ifindex, verdict: Verdict) -> Verdict {
    if !count(device, verdict) {
        count(fallback, verdict);
    }
    match verdict.action() {
        TC_ACT_REDIRECT => Verdict::RedirectCounted,
        TC_ACT_OK => Verdict::Pass,
        _ => Verdict::DropCounted,
    }
}

impl Verdict {
    /// Charges the verdict to `device` and returns the tc action.
    #[inline(always)]
    pub fn finish(self, device: Ifindex) -> i32 {
        count(device, self);
        self.action()
    }

    /// The tc action of this verdict.
    #[inline(always)]
    fn action(self) -> i32 {
        match self {
            Self::Pass => TC_ACT_OK,
            Self::Steered
            | Self::Replied
            | Self::ArpReplied
            | Self::NdpReplied
            | Self::RedirectCounted => TC_ACT_REDIRECT,
            Self::DropUnregistered
            | Self::DropMalformed
            | Self::DropFragment
            | Self::DropNoSlot
            | Self::DropError
            | Self::DropReserved
            | Self::DropForged
            | Self::DropCounted => TC_ACT_SHOT,
        }
    }

    /// The verdict for a redirect whose helper returned `action`.
    #[inline(always)]
    pub fn redirected(self, action: i64) -> Self {
        if action == i64::from(TC_ACT_REDIRECT) {
            self
        } else {
            Self::DropError
        }
    }
}
