//! What a program decided for a packet, and the counter it is charged to.
//!
//! A verdict is a plain fieldless enum on purpose: enums with payloads get
//! merged by LLVM into register pairs whose unused half may hold anything,
//! including a packet pointer, which the verifier then rejects.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    programs::TcContext,
};
use metadata_common::{DeviceCounters, Ifindex};

use crate::maps::MDR_COUNTERS;

/// The outcome of one program run. Each has its own counter, except
/// [`Verdict::Pass`]: nearly every packet is passed, and counting it would
/// cost a hash lookup per packet; `status` derives it from the device's
/// own packet counter instead.
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
    /// A new connection over the tap's budget.
    DropOverBudget,
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
    if !verdict.counted_here() {
        // Derived (passes) or already counted.
        return true;
    }
    // The daemon creates the entry when it attaches; a missing entry (a
    // device being torn down) only loses the count, never the packet.
    let Some(counters) = MDR_COUNTERS.get_ptr_mut(device) else {
        return false;
    };
    // SAFETY: per-CPU value; nothing else on this CPU runs while a tc
    // program does, so a plain read-modify-write is exact.
    let counters: &mut DeviceCounters = unsafe { &mut *counters };
    // Each arm increments its own field: a shared `&mut` picked by the
    // match gets lowered to a computed offset the verifier cannot bound.
    match verdict {
        Verdict::Steered => counters.steered += 1,
        Verdict::Replied => counters.replied += 1,
        Verdict::ArpReplied => counters.arp_replied += 1,
        Verdict::NdpReplied => counters.ndp_replied += 1,
        Verdict::DropUnregistered => counters.drop_unregistered += 1,
        Verdict::DropMalformed => counters.drop_malformed += 1,
        Verdict::DropFragment => counters.drop_fragment += 1,
        Verdict::DropNoSlot => counters.drop_no_slot += 1,
        Verdict::DropError => counters.drop_error += 1,
        Verdict::DropReserved => counters.drop_reserved += 1,
        Verdict::DropForged => counters.drop_forged += 1,
        Verdict::DropOverBudget => counters.drop_over_budget += 1,
        Verdict::Pass | Verdict::RedirectCounted | Verdict::DropCounted => {}
    }
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
    /// Charges the verdict to `device` and returns the tc action. A pass
    /// is not counted: nothing is done per passed packet beyond parsing,
    /// not even reading the device (hence a closure).
    #[inline(always)]
    pub fn finish(self, device: impl FnOnce() -> Ifindex) -> i32 {
        if self.counted_here() {
            count(device(), self);
        }
        self.action()
    }

    /// Whether [`count`] charges this verdict (passes are derived, the
    /// `*Counted` verdicts were charged elsewhere).
    #[inline(always)]
    const fn counted_here(self) -> bool {
        !matches!(self, Self::Pass | Self::RedirectCounted | Self::DropCounted)
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
            | Self::DropOverBudget
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

/// The verdict for a packet-rewriting helper that failed mid-rewrite: the
/// packet is half written, so it is dropped (and logged, rate-limited).
#[inline(always)]
pub fn helper_failed(ctx: &TcContext) -> Verdict {
    if crate::log::allow(crate::log::Event::HelperFailed) {
        aya_log_ebpf::warn!(ctx, "a packet-rewriting helper failed; packet dropped");
    }
    Verdict::DropError
}
