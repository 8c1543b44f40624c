//! Rate-limited reporting of rare events to the daemon through aya-log.
//!
//! Nothing is logged for ordinary packets. An event kind is logged at most
//! once per second per CPU; the counters still count every packet.

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{LOG_EVENTS, MDR_LOG_RATELIMIT};

const INTERVAL_NS: u64 = 1_000_000_000;

/// The rare events worth a log line.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Event {
    /// A guest sent to the metadata service from a source not registered on
    /// its tap (spoofing, or a port record that is missing).
    Unregistered = 0,
    /// A reply for a slot with no entry (a port removed mid-connection).
    MissingSlot = 1,
    /// A checksum or redirect helper failed.
    HelperFailed = 2,
    /// Metadata traffic arrived before the daemon wrote its config.
    NotConfigured = 3,
    /// A guest used one of the datapath's own addresses.
    Reserved = 4,
    /// A packet from the proxy's address came from elsewhere than the host.
    Forged = 5,
    /// A tap opened new connections over its budget.
    OverBudget = 6,
}

/// Whether `event` may be logged now; records the time if so.
#[inline(always)]
pub fn allow(event: Event) -> bool {
    let index = event as u32;
    if index >= LOG_EVENTS {
        return false;
    }
    let Some(last) = MDR_LOG_RATELIMIT.get_ptr_mut(index) else {
        return false;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot, see `verdict.rs`.
    let last = unsafe { &mut *last };
    if now.wrapping_sub(*last) < INTERVAL_NS && *last != 0 {
        return false;
    }
    *last = now;
    true
}
