//! The datapath's maps. Names and layouts are in `metadata_common`; the
//! daemon pins every map under its bpffs folder, and the BTF carried by
//! these definitions lets `bpftool map dump` print keys and values by field.

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use metadata_common::{
    DatapathConfig, DeviceCounters, Ifindex, MAX_DEVICES, MAX_SLOTS_V4, MAX_SLOTS_V6, PortKeyV4,
    PortKeyV6, PortV4, PortV6, SlotV4, SlotV6, TapState,
};

/// Host device, proxy address and NAT range; one entry, written by the
/// daemon. Until it is written, metadata traffic is dropped (fail closed).
#[btf_map]
pub static MDR_CONFIG: Array<DatapathConfig, 1> = Array::new();

/// (tap ifindex, guest IPv4) -> slot. The registered sources: a packet to
/// the metadata service whose pair is absent here is spoofed or stale.
#[btf_map]
pub static MDR_PORTS_V4: HashMap<PortKeyV4, PortV4, { MAX_SLOTS_V4 as usize }> = HashMap::new();

/// Slot -> (tap, guest address, guest MAC, router MAC): undoes the NAT on
/// the reply. An array because the slot is already a dense index.
#[btf_map]
pub static MDR_SLOTS_V4: Array<SlotV4, { MAX_SLOTS_V4 as usize }> = Array::new();

/// (tap ifindex, guest IPv6) -> slot: fixed addresses and the EUI-64
/// link-local address of each port.
#[btf_map]
pub static MDR_PORTS_V6: HashMap<PortKeyV6, PortV6, { MAX_SLOTS_V6 as usize }> = HashMap::new();

/// Slot -> (tap, guest IPv6, guest MAC, router MAC).
#[btf_map]
pub static MDR_SLOTS_V6: Array<SlotV6, { MAX_SLOTS_V6 as usize }> = Array::new();

/// (tap ifindex, IPv4) -> 1: the metadata next hops the tap program
/// answers ARP for besides 169.254.169.254 (see `map_names::NEXTHOPS_V4`).
#[btf_map]
pub static MDR_NEXTHOPS_V4: HashMap<PortKeyV4, u32, { MAX_SLOTS_V4 as usize }> = HashMap::new();

/// Per-CPU counters per device. Entries are created by the daemon when it
/// attaches a device; the programs only look them up, never insert.
#[btf_map]
pub static MDR_COUNTERS: PerCpuHashMap<Ifindex, DeviceCounters, { MAX_DEVICES as usize }> =
    PerCpuHashMap::new();

/// Per-tap state shared by every CPU: the new-connection budget. Created
/// by the daemon with the tap's counters; the program only looks it up.
/// A plain hash, not per-CPU: a budget split per CPU would let a guest
/// spread its connections over the CPUs and multiply it.
#[btf_map]
pub static MDR_TAPS: HashMap<Ifindex, TapState, { MAX_DEVICES as usize }> = HashMap::new();

/// Number of rate-limited log events (see `log.rs`).
pub const LOG_EVENTS: u32 = 7;

/// Per-CPU time (ns) each rare event was last logged, so that a guest
/// flooding spoofed packets costs one log line per second per CPU, not one
/// per packet.
#[btf_map]
pub static MDR_LOG_RATELIMIT: PerCpuArray<u64, { LOG_EVENTS as usize }> = PerCpuArray::new();
