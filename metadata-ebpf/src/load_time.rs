//! The values the daemon writes into the instructions at load time
//! (`metadata_common::load_time`): what the tap program's fast path
//! compares against without reading a map.

use metadata_common::{Ipv4Be, NatPrefixV6, ReservedV4, load_time};

/// The value tagged `$tag`: one `ld_imm64` whose upper half is the tag
/// until the loader replaces it. Inline assembly, so that the compiler can
/// neither fold the placeholder into the code around it nor load it from
/// memory. Not `pure`, which would let the compiler hoist every value to
/// the program's entry, ahead of the branch (IPv4 or IPv6) that needs it.
macro_rules! load_time_value {
    ($tag:expr) => {{
        let value: u64;
        // SAFETY: loads a constant into a register, and nothing else.
        unsafe {
            core::arch::asm!(
                "{0} = {1} ll",
                out(reg) value,
                const ($tag as u64) << 32,
                options(nomem, nostack, preserves_flags),
            );
        }
        // The lower half: the value once patched, zero before.
        value as u32
    }};
}

/// Whether the object was loaded with its load-time values (the fast path
/// is off otherwise).
#[inline(always)]
pub fn fast_path() -> bool {
    load_time_value!(load_time::FAST_PATH) != 0
}

/// The datapath's own IPv4 addresses.
#[inline(always)]
pub fn reserved_v4() -> ReservedV4 {
    ReservedV4 {
        nat_base: Ipv4Be::from_bits(load_time_value!(load_time::NAT_V4_BASE)),
        nat_size: load_time_value!(load_time::NAT_V4_SIZE),
        proxy: Ipv4Be::from_bits(load_time_value!(load_time::PROXY_V4)),
    }
}

/// The IPv6 NAT /96.
#[inline(always)]
pub fn nat_prefix_v6() -> NatPrefixV6 {
    NatPrefixV6([
        load_time_value!(load_time::NAT_V6_PREFIX[0]),
        load_time_value!(load_time::NAT_V6_PREFIX[1]),
        load_time_value!(load_time::NAT_V6_PREFIX[2]),
    ])
}
