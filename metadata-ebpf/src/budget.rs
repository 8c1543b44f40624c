//! The per-tap budget for new connections to the metadata service.
//!
//! Enforced here, before a SYN reaches the host: a guest that opens
//! connections as fast as it can would otherwise fill the proxy's accept
//! queue, and every other guest's SYN that finds it full waits a
//! retransmission (1 s, then 2 s). Only connection openings are charged;
//! the segments of an admitted connection never are.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use metadata_common::{DatapathConfig, Ifindex};

use crate::{
    log::{Event, allow},
    maps::MDR_TAPS,
    verdict::{Step, Verdict},
};

/// Charges one new connection to `tap`; drops it when the tap's budget is
/// spent. A tap without state (attached a moment before the daemon
/// created it) is not limited: the budget protects the others, it is
/// never a reason to fail a guest on its own.
#[inline(always)]
pub fn charge_connection(ctx: &TcContext, tap: Ifindex, cfg: &DatapathConfig) -> Step<()> {
    let budget = cfg.conn_budget();
    if budget.interval_ns == 0 {
        return Ok(());
    }
    let Some(state) = MDR_TAPS.get_ptr_mut(tap) else {
        return Ok(());
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a hash value the daemon never deletes while the tap is
    // attached; shared between CPUs, a race only admits one extra
    // connection (see `TapState`).
    let tat = unsafe { &mut (*state).conn_tat_ns };
    match budget.admit(*tat, now) {
        Some(next) => {
            *tat = next;
            Ok(())
        }
        None => {
            if allow(Event::OverBudget) {
                aya_log_ebpf::warn!(
                    ctx,
                    "ifindex {} opens connections to the metadata service over its budget; dropping the excess",
                    tap.0
                );
            }
            Err(Verdict::DropOverBudget)
        }
    }
}
