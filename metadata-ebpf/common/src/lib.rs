//! Types shared by the eBPF programs (`metadata-ebpf`) and the daemon
//! (`metadata-userspace`).
//!
//! Everything that crosses the kernel boundary is defined here exactly once:
//! map names, map key and value layouts, counter indices and the fixed
//! addresses of the metadata service. Every type is `#[repr(C)]` with no
//! implicit padding, so the eBPF side, the daemon and `bpftool` (through the
//! BTF the eBPF object carries) agree on every byte.
//!
//! Addresses and ports are kept in network byte order in newtypes
//! ([`Ipv4Be`], [`PortBe`]) so that the datapath compares and copies them
//! without swapping, and so that userspace cannot store a host-order value
//! by accident.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

/// The link-local IPv4 address guests send metadata requests to.
pub const METADATA_V4: Ipv4Be = Ipv4Be([169, 254, 169, 254]);
/// The link-local IPv6 address guests send metadata requests to.
pub const METADATA_V6: Ipv6Be = Ipv6Be([
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0xa9, 0xfe,
]);
/// The TCP port guests send metadata requests to.
pub const METADATA_PORT: PortBe = PortBe::new(80);

/// Highest number of IPv4 slots (one per registered (tap, guest IPv4) pair).
///
/// Sized for a large hypervisor (a few thousand ports, several addresses
/// each); the slot array is preallocated, so this bounds its memory:
/// `MAX_SLOTS_V4 * size_of::<SlotV4>()` bytes.
pub const MAX_SLOTS_V4: u32 = 16_384;
/// Highest number of IPv6 slots (one per registered (tap, guest IPv6)
/// pair: fixed addresses and the EUI-64 link-local address of each port).
pub const MAX_SLOTS_V6: u32 = 16_384;
/// The "slot" of the proxy's own IPv6 address in the NAT /96
/// (`prefix::ffff:fffe`), far above any real slot.
pub const PROXY_SLOT_V6: Slot = Slot(0xffff_fffe);
/// Highest number of VM-facing devices the datapath tracks counters for.
pub const MAX_DEVICES: u32 = 8_192;

/// Names of the maps, as they appear in the object file, in `bpftool map
/// show` and as file names under the bpffs pin folder.
pub mod map_names {
    /// What every map name starts with; `bpftool` shows at most 15
    /// characters of a name, so tools match on this.
    pub const PREFIX: &str = "MDR_";
    /// [`crate::DatapathConfig`] at index 0: host device, proxy address and
    /// the NAT range. Written by the daemon at start.
    pub const CONFIG: &str = "MDR_CONFIG";
    /// (tap ifindex, guest IPv4) -> [`crate::PortV4`]: which guest
    /// sources may reach the metadata service, and their slot.
    pub const PORTS_V4: &str = "MDR_PORTS_V4";
    /// Slot -> [`crate::SlotV4`]: the reverse mapping used for replies.
    pub const SLOTS_V4: &str = "MDR_SLOTS_V4";
    /// (tap ifindex, guest IPv6) -> [`crate::PortV6`].
    pub const PORTS_V6: &str = "MDR_PORTS_V6";
    /// Slot -> [`crate::SlotV6`].
    pub const SLOTS_V6: &str = "MDR_SLOTS_V6";
    /// Per-CPU time each rare event was last logged.
    pub const LOG_RATELIMIT: &str = "MDR_LOG_RATELIMIT";
    /// Device ifindex -> [`crate::DeviceCounters`], per CPU.
    pub const COUNTERS: &str = "MDR_COUNTERS";
    /// (tap ifindex, IPv4) -> 1: further addresses the tap program answers
    /// ARP for with the host device's MAC, as it does for 169.254.169.254:
    /// a network's metadata port address, when the guest's route to the
    /// metadata service goes via it (ML2/OVN).
    pub const NEXTHOPS_V4: &str = "MDR_NEXTHOPS_V4";
    /// Tap ifindex -> [`crate::TapState`]: what the tap program keeps per
    /// tap across packets and CPUs (the new-connection budget).
    pub const TAPS: &str = "MDR_TAPS";
}

/// Names of the programs, as in the object file and `bpftool prog show`.
pub mod program_names {
    /// On every VM-facing tap, TCX ingress.
    pub const TAP: &str = "tap_ingress";
    /// On the host device, TCX egress.
    pub const HOST: &str = "host_egress";
}

/// Where the daemon pins its state under its bpffs folder (`datapath.bpffs`).
pub mod pins {
    use super::{Ifindex, map_names};

    /// Maps pinned by name under the folder. The log ring buffer is not: it
    /// belongs to the daemon that reads it.
    pub const MAPS: [&str; 9] = [
        map_names::CONFIG,
        map_names::PORTS_V4,
        map_names::SLOTS_V4,
        map_names::PORTS_V6,
        map_names::SLOTS_V6,
        map_names::COUNTERS,
        map_names::LOG_RATELIMIT,
        map_names::NEXTHOPS_V4,
        map_names::TAPS,
    ];
    /// Subfolder holding, during an upgrade across a map-layout change,
    /// the older build's maps until every link runs the new programs.
    pub const PREVIOUS_DIR: &str = "previous";
    /// Subfolder holding the pinned TCX links.
    pub const LINKS_DIR: &str = "links";
    /// File name of the host program's link in [`LINKS_DIR`].
    pub const HOST_LINK: &str = super::program_names::HOST;
    /// Prefix of a tap link's file name in [`LINKS_DIR`]; the tap's ifindex
    /// follows it.
    pub const TAP_LINK_PREFIX: &str = "tap_ingress-";

    /// The tap whose link pin is called `file_name`, if it is one.
    pub fn tap_of_link(file_name: &str) -> Option<Ifindex> {
        file_name
            .strip_prefix(TAP_LINK_PREFIX)
            .and_then(|n| n.parse().ok())
            .map(Ifindex)
    }

    /// The file name of `tap`'s link pin in [`LINKS_DIR`].
    #[cfg(feature = "user")]
    pub fn tap_link(tap: Ifindex) -> alloc::string::String {
        alloc::format!("{TAP_LINK_PREFIX}{}", tap.0)
    }
}

/// A network interface index as the kernel assigns it. Zero is never a
/// valid index, which the slot table uses to mark a free slot.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ifindex(pub u32);

/// Index into the slot table. Slot `n` is NATed to address
/// `nat_v4_base + n`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u32);

/// An IPv4 address in network byte order, as it appears in a packet.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Be(pub [u8; 4]);

impl Ipv4Be {
    /// The address as a host-order integer, for arithmetic on ranges.
    #[inline(always)]
    pub const fn to_bits(self) -> u32 {
        u32::from_be_bytes(self.0)
    }

    /// The address for a host-order integer.
    #[inline(always)]
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits.to_be_bytes())
    }
}

/// An IPv6 address in network byte order, as it appears in a packet.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Be(pub [u8; 16]);

/// A TCP or UDP port in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortBe(pub [u8; 2]);

impl PortBe {
    /// The network-order encoding of a host-order port.
    pub const fn new(port: u16) -> Self {
        Self(port.to_be_bytes())
    }

    /// The port in host order.
    pub const fn get(self) -> u16 {
        u16::from_be_bytes(self.0)
    }
}

/// An Ethernet MAC address.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether this is the all-zero address (never learned or configured).
    #[inline(always)]
    pub const fn is_zero(&self) -> bool {
        let b = self.0;
        (b[0] | b[1] | b[2] | b[3] | b[4] | b[5]) == 0
    }
}

/// The single entry of [`map_names::CONFIG`].
///
/// Kept in a map so that a restarted daemon can change where it listens
/// while the previous daemon's programs still run. The reserved addresses
/// are also written into the tap program's instructions when it is loaded
/// ([`load_time`]), for its fast path; a starting daemon always loads
/// fresh programs and swaps them into the links, so the two agree once it
/// has started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The host end of the veth pair ("mdr0") that the proxy listens on.
    /// Zero means "not configured yet": the programs then steer nothing.
    pub host_ifindex: Ifindex,
    /// Address the proxy listens on (169.254.169.254 unless configured).
    pub proxy_v4: Ipv4Be,
    /// First address of the IPv4 NAT range; slot `n` is `nat_v4_base + n`.
    pub nat_v4_base: Ipv4Be,
    /// Number of addresses in the NAT range that may be used as slots.
    pub nat_v4_size: u32,
    /// MAC of the host device: destination of steered frames, and the
    /// address the programs answer ARP for the metadata address with.
    pub host_mac: MacAddr,
    /// Port the proxy listens on.
    pub proxy_port: PortBe,
    /// IPv6 address the proxy listens on.
    pub proxy_v6: Ipv6Be,
    /// The IPv6 NAT /96: slot `n` is this prefix with `n` in the last 32
    /// bits.
    pub nat_v6_base: Ipv6Be,
    /// Number of IPv6 slots in use at most (0: IPv6 steering off).
    pub nat_v6_size: u32,
    /// The new-connection budget of each tap (see [`TapState`]): one
    /// connection per this many nanoseconds, sustained. 0: no budget.
    pub conn_interval_ns: u32,
    /// How many connections a tap may open at once, above the sustained
    /// rate (the bucket's depth; at least 1).
    pub conn_burst: u32,
}

impl DatapathConfig {
    /// The slot an IPv4 address of the NAT range stands for, if it is one.
    #[inline(always)]
    pub const fn slot_v4(&self, addr: Ipv4Be) -> Option<Slot> {
        let offset = addr.to_bits().wrapping_sub(self.nat_v4_base.to_bits());
        if offset < self.nat_v4_size {
            Some(Slot(offset))
        } else {
            None
        }
    }

    /// The IPv4 address that `slot` is NATed to.
    #[inline(always)]
    pub const fn slot_addr_v4(&self, slot: Slot) -> Ipv4Be {
        slot_addr_v4(self.nat_v4_base, slot)
    }

    /// Whether `addr` lies in the IPv6 NAT /96 (slots and the proxy's own
    /// address alike).
    #[inline(always)]
    pub fn in_nat_v6(&self, addr: &Ipv6Be) -> bool {
        self.nat_prefix_v6().contains(addr)
    }

    /// The IPv4 addresses guests may not use, as the tap program's fast
    /// path gets them at load time.
    #[inline(always)]
    pub const fn reserved_v4_addrs(&self) -> ReservedV4 {
        ReservedV4 {
            nat_base: self.nat_v4_base,
            nat_size: self.nat_v4_size,
            proxy: self.proxy_v4,
        }
    }

    /// The IPv6 NAT /96, as the tap program's fast path gets it at load
    /// time.
    #[inline(always)]
    pub fn nat_prefix_v6(&self) -> NatPrefixV6 {
        let prefix = &self.nat_v6_base.0;
        NatPrefixV6([word(prefix, 0), word(prefix, 4), word(prefix, 8)])
    }

    /// The slot an address of the IPv6 NAT /96 stands for, if it is one.
    #[inline(always)]
    pub fn slot_v6(&self, addr: &Ipv6Be) -> Option<Slot> {
        if !self.in_nat_v6(addr) {
            return None;
        }
        let slot = u32::from_be_bytes([addr.0[12], addr.0[13], addr.0[14], addr.0[15]]);
        (slot < self.nat_v6_size).then_some(Slot(slot))
    }

    /// The IPv6 address that `slot` is NATed to.
    #[inline(always)]
    pub const fn slot_addr_v6(&self, slot: Slot) -> Ipv6Be {
        slot_addr_v6(self.nat_v6_base, slot)
    }

    /// Whether a guest may not use `addr` as an IPv4 source or destination:
    /// it is one of the datapath's own addresses (a NAT slot, or the
    /// proxy's address where that is not the metadata address itself).
    #[inline(always)]
    pub fn reserved_v4(&self, addr: Ipv4Be) -> bool {
        self.reserved_v4_addrs().contains(addr)
    }
}

/// The budget of new connections a tap may open to the metadata service,
/// as the generic cell rate algorithm (GCRA) keeps it: a token bucket of
/// `burst` tokens refilled at one per `interval_ns`, stored as a single
/// time, the "theoretical arrival time" ([`TapState::conn_tat_ns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnBudget {
    /// One token per this many nanoseconds; 0 turns the budget off.
    pub interval_ns: u32,
    /// The bucket's depth (values under 1 count as 1).
    pub burst: u32,
}

impl ConnBudget {
    /// Decides a new connection at `now_ns` against the stored arrival
    /// time `tat_ns`: `Some(new tat)` admits it, `None` refuses it (and
    /// leaves the state as it was, so a refused flood earns nothing).
    #[inline(always)]
    pub const fn admit(&self, tat_ns: u64, now_ns: u64) -> Option<u64> {
        if self.interval_ns == 0 {
            return Some(tat_ns);
        }
        let interval = self.interval_ns as u64;
        let depth = self.burst.saturating_sub(1);
        let tolerance = interval * depth as u64;
        let tat = if tat_ns > now_ns { tat_ns } else { now_ns };
        if tat - now_ns > tolerance {
            None
        } else {
            Some(tat + interval)
        }
    }
}

impl DatapathConfig {
    /// The per-tap new-connection budget.
    #[inline(always)]
    pub const fn conn_budget(&self) -> ConnBudget {
        ConnBudget {
            interval_ns: self.conn_interval_ns,
            burst: self.conn_burst,
        }
    }
}

/// Value of [`map_names::TAPS`]: per-tap state of the tap program, shared
/// by every CPU. Created by the daemon when it attaches a tap (with its
/// counters), looked up, never inserted, by the program.
///
/// Fields are only ever appended: an upgrade carries an older, shorter
/// value over as the prefix of the new one, the rest zeroed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapState {
    /// The new-connection budget's theoretical arrival time (ns on the
    /// kernel's monotonic clock, as `bpf_ktime_get_ns`): the bucket is
    /// full when this is in the past. Updated without a lock: two SYNs of
    /// one tap handled at the same instant on two CPUs may both take the
    /// last token, so the budget may admit one extra connection per CPU
    /// at a time; it bounds the rate, it does not count exactly.
    pub conn_tat_ns: u64,
}

/// The datapath's own IPv4 addresses, which a guest may use neither as
/// source nor as destination: the NAT range and the proxy's address. The
/// tap program's full path reads them from [`DatapathConfig`]; its fast
/// path gets the same values written into its instructions when the daemon
/// loads it ([`load_time`]), so that deciding a pass reads no map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedV4 {
    /// First address of the NAT range.
    pub nat_base: Ipv4Be,
    /// Number of addresses in the NAT range.
    pub nat_size: u32,
    /// The proxy's address (reserved unless it is 169.254.169.254).
    pub proxy: Ipv4Be,
}

impl ReservedV4 {
    /// Whether `addr` is one of these addresses.
    #[inline(always)]
    pub fn contains(&self, addr: Ipv4Be) -> bool {
        addr.to_bits().wrapping_sub(self.nat_base.to_bits()) < self.nat_size
            || (addr == self.proxy && addr != METADATA_V4)
    }
}

/// The IPv6 NAT /96 (slots and the proxy's own address alike): its first
/// 12 bytes as three words in memory order, as 4-byte loads from a packet
/// read them. Like [`ReservedV4`], in the map and at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPrefixV6(pub [u32; 3]);

impl NatPrefixV6 {
    /// Whether `addr` lies in the /96: three word compares instead of a
    /// 12-step byte loop.
    #[inline(always)]
    pub fn contains(&self, addr: &Ipv6Be) -> bool {
        let [w0, w1, w2] = self.0;
        word(&addr.0, 0) == w0 && word(&addr.0, 4) == w1 && word(&addr.0, 8) == w2
    }
}

/// Values the daemon writes into the programs' instructions when it loads
/// them, so that the tap program decides a pass without reading a map (a
/// map value is a cache line of its own, cold between the packets of a
/// stream: 6 ns per passed packet, measured).
///
/// In the object each is an `ld_imm64` whose upper 32 bits are its tag and
/// whose lower 32 bits are zero; the loader writes the value in the lower
/// half and clears the tag. An object loaded without that reads every
/// value as zero, [`FAST_PATH`] included, which turns the fast path off:
/// every packet then takes the full path, which reads the map. Fail-safe,
/// not fail-open.
pub mod load_time {
    use super::{NatPrefixV6, ReservedV4};

    /// 1 when the values below are set.
    pub const FAST_PATH: u32 = 0x4d44_5200;
    /// [`ReservedV4::nat_base`], as a host-order integer.
    pub const NAT_V4_BASE: u32 = 0x4d44_5201;
    /// [`ReservedV4::nat_size`].
    pub const NAT_V4_SIZE: u32 = 0x4d44_5202;
    /// [`ReservedV4::proxy`], as a host-order integer.
    pub const PROXY_V4: u32 = 0x4d44_5203;
    /// [`NatPrefixV6`], word by word.
    pub const NAT_V6_PREFIX: [u32; 3] = [0x4d44_5204, 0x4d44_5205, 0x4d44_5206];

    /// How many values there are.
    pub const COUNT: usize = 7;

    /// Every tag with its value.
    pub fn values(v4: &ReservedV4, v6: &NatPrefixV6) -> [(u32, u32); COUNT] {
        let ReservedV4 {
            nat_base,
            nat_size,
            proxy,
        } = *v4;
        let NatPrefixV6([w0, w1, w2]) = *v6;
        [
            (FAST_PATH, 1),
            (NAT_V4_BASE, nat_base.to_bits()),
            (NAT_V4_SIZE, nat_size),
            (PROXY_V4, proxy.to_bits()),
            (NAT_V6_PREFIX[0], w0),
            (NAT_V6_PREFIX[1], w1),
            (NAT_V6_PREFIX[2], w2),
        ]
    }
}

/// The IPv4 address that `slot` is NATed to in the range starting at `base`.
#[inline(always)]
pub const fn slot_addr_v4(base: Ipv4Be, slot: Slot) -> Ipv4Be {
    Ipv4Be::from_bits(base.to_bits().wrapping_add(slot.0))
}

/// The IPv6 address that `slot` is NATed to in the /96 `prefix`: the slot
/// number in the last 32 bits.
#[inline(always)]
pub const fn slot_addr_v6(prefix: Ipv6Be, slot: Slot) -> Ipv6Be {
    let mut addr = prefix.0;
    let [a, b, c, d] = slot.0.to_be_bytes();
    addr[12] = a;
    addr[13] = b;
    addr[14] = c;
    addr[15] = d;
    Ipv6Be(addr)
}

#[inline(always)]
fn word(bytes: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Key of [`map_names::PORTS_V4`]: a guest source as seen on one tap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKeyV4 {
    /// The tap the packet arrived on (cannot be forged by the guest).
    pub ifindex: Ifindex,
    /// The guest's source address.
    pub addr: Ipv4Be,
}

/// Value of [`map_names::PORTS_V4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortV4 {
    /// The slot this (tap, address) pair is NATed to.
    pub slot: Slot,
}

/// Value of [`map_names::SLOTS_V4`]: what a reply to a slot is turned back
/// into. A slot whose `ifindex` is zero is free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotV4 {
    /// The tap the guest sits behind.
    pub ifindex: Ifindex,
    /// The guest's own address (restored as the reply's destination).
    pub guest_addr: Ipv4Be,
    /// The guest's MAC (the reply's destination MAC).
    pub guest_mac: MacAddr,
    /// The MAC the guest addressed its request to: ours when it resolved
    /// 169.254.169.254 on-link, its router's when it routed the request.
    /// Learned by the ingress program and used as the reply's source MAC so
    /// that the guest sees the reply come from where it sent the request.
    pub router_mac: MacAddr,
}

/// Key of [`map_names::PORTS_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKeyV6 {
    pub ifindex: Ifindex,
    pub addr: Ipv6Be,
}

/// Value of [`map_names::PORTS_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortV6 {
    pub slot: Slot,
}

/// Value of [`map_names::SLOTS_V6`]; see [`SlotV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotV6 {
    pub ifindex: Ifindex,
    pub guest_addr: Ipv6Be,
    pub guest_mac: MacAddr,
    pub router_mac: MacAddr,
}

/// Per-device packet counters, one copy per CPU in [`map_names::COUNTERS`].
/// (Serialized as is by `metadata-redirector status --json`.)
///
/// Tap programs count under the tap's ifindex; replies are counted under
/// the tap they are returned to; events on the host device that belong to
/// no tap are counted under the host device's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct DeviceCounters {
    /// Packets passed on untouched (not for the metadata service). Never
    /// written by the programs (a hash lookup on every passed packet would
    /// be most of their cost); `status` fills it in from the device's own
    /// packet counter less the verdicts counted here. Kept in the layout so
    /// that maps pinned by earlier versions stay compatible.
    pub passed: u64,
    /// Guest requests steered to the proxy.
    pub steered: u64,
    /// Proxy replies returned to a guest.
    pub replied: u64,
    /// ARP requests for the metadata address answered by the program.
    pub arp_replied: u64,
    /// Neighbour Solicitations for the metadata address answered by the
    /// program with a Neighbour Advertisement.
    pub ndp_replied: u64,
    /// Dropped: metadata traffic from a source not registered on this tap.
    pub drop_unregistered: u64,
    /// Dropped: metadata traffic with a truncated or malformed header.
    pub drop_malformed: u64,
    /// Dropped: an IP fragment addressed to the metadata service.
    pub drop_fragment: u64,
    /// Dropped: a reply for a slot that has no entry (port removed).
    pub drop_no_slot: u64,
    /// Dropped: steering failed (checksum helper or redirect error), or
    /// metadata traffic arrived before the daemon configured the datapath.
    pub drop_error: u64,
    /// Dropped: a guest packet from or to the datapath's own addresses (the
    /// NAT slot ranges, or the proxy's address when it is not the metadata
    /// address), or ARP/NDP asking for them: forged proxy replies and
    /// attempts to reach the proxy directly.
    pub drop_reserved: u64,
    /// Dropped on the host device: a packet from the proxy's address that
    /// the host stack did not send itself (one a guest forged and the
    /// hypervisor forwarded). Counted on the tap it came in on when that
    /// tap is attached, else on the host device.
    pub drop_forged: u64,
    /// Dropped: a new connection (a SYN) to the metadata service over the
    /// tap's budget ([`ConnBudget`]): the guest retransmits it later.
    pub drop_over_budget: u64,
}

impl DeviceCounters {
    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &Self) {
        // Destructured so that a new counter cannot be forgotten here.
        let Self {
            passed,
            steered,
            replied,
            arp_replied,
            ndp_replied,
            drop_unregistered,
            drop_malformed,
            drop_fragment,
            drop_no_slot,
            drop_error,
            drop_reserved,
            drop_forged,
            drop_over_budget,
        } = *other;
        self.passed += passed;
        self.steered += steered;
        self.replied += replied;
        self.arp_replied += arp_replied;
        self.ndp_replied += ndp_replied;
        self.drop_unregistered += drop_unregistered;
        self.drop_malformed += drop_malformed;
        self.drop_fragment += drop_fragment;
        self.drop_no_slot += drop_no_slot;
        self.drop_error += drop_error;
        self.drop_reserved += drop_reserved;
        self.drop_forged += drop_forged;
        self.drop_over_budget += drop_over_budget;
    }

    /// Every counter with its name (the field's), in declaration order:
    /// what `status` prints, the metrics label and the fixtures report.
    /// Destructured, so that a new counter cannot be left out.
    pub fn fields(&self) -> [(&'static str, u64); 13] {
        let Self {
            passed,
            steered,
            replied,
            arp_replied,
            ndp_replied,
            drop_unregistered,
            drop_malformed,
            drop_fragment,
            drop_no_slot,
            drop_error,
            drop_reserved,
            drop_forged,
            drop_over_budget,
        } = *self;
        [
            ("passed", passed),
            ("steered", steered),
            ("replied", replied),
            ("arp_replied", arp_replied),
            ("ndp_replied", ndp_replied),
            ("drop_unregistered", drop_unregistered),
            ("drop_malformed", drop_malformed),
            ("drop_fragment", drop_fragment),
            ("drop_no_slot", drop_no_slot),
            ("drop_error", drop_error),
            ("drop_reserved", drop_reserved),
            ("drop_forged", drop_forged),
            ("drop_over_budget", drop_over_budget),
        ]
    }

    /// Total dropped packets, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.fields()
            .iter()
            .filter(|(name, _)| name.starts_with("drop_"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every packet counted, whatever the verdict.
    pub fn total(&self) -> u64 {
        self.fields().iter().map(|(_, n)| n).sum()
    }

    /// Packets `tap_ingress` passed on a tap that received `received`
    /// packets: those less what the program counted there on ingress. The
    /// programs do not count passes (see [`Self::passed`]); the tap's own
    /// counter also holds the few packets it received before it was
    /// attached (a guest's first DHCP and router solicitations), so this
    /// is an upper bound by that much.
    pub fn passed_on_tap(&self, received: u64) -> u64 {
        let Self {
            passed: _,
            steered,
            // A reply is counted on the tap it returns to, but it is sent
            // on the tap, not received.
            replied: _,
            arp_replied,
            ndp_replied,
            drop_unregistered,
            drop_malformed,
            drop_fragment,
            // Charged to the tap by host_egress, for packets that came in
            // on it and that tap_ingress had passed.
            drop_no_slot: _,
            drop_error,
            drop_reserved,
            drop_forged: _,
            drop_over_budget,
        } = *self;
        let verdicts = steered
            + arp_replied
            + ndp_replied
            + drop_unregistered
            + drop_malformed
            + drop_fragment
            + drop_error
            + drop_reserved
            + drop_over_budget;
        received.saturating_sub(verdicts)
    }
}

#[cfg(feature = "user")]
impl core::fmt::Display for Ifindex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// MAC addresses as text ("fa:16:3e:11:22:33"), for config files, logs
/// and `status`.
#[cfg(feature = "user")]
mod mac_text {
    use alloc::{format, string::String};
    use core::{fmt, str::FromStr};

    use super::MacAddr;

    impl FromStr for MacAddr {
        type Err = String;

        fn from_str(text: &str) -> Result<Self, Self::Err> {
            let bad = || format!("`{text}` is not a MAC address like fa:16:3e:11:22:33");
            let mut mac = [0u8; 6];
            let mut parts = text.split(':');
            for byte in &mut mac {
                let part = parts.next().ok_or_else(bad)?;
                if part.len() != 2 {
                    return Err(bad());
                }
                *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            }
            if parts.next().is_some() {
                return Err(bad());
            }
            if mac[0] & 1 != 0 {
                return Err(format!("`{text}` is a multicast address, not a port's MAC"));
            }
            Ok(Self(mac))
        }
    }

    impl fmt::Display for MacAddr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let [a, b, c, d, e, g] = self.0;
            write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
        }
    }

    impl<'de> serde::Deserialize<'de> for MacAddr {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = <alloc::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        }
    }
}

impl MacAddr {
    /// fe80::/64 with the modified EUI-64 interface id of this MAC: the
    /// link-local address a guest with this MAC uses.
    pub const fn eui64_link_local(&self) -> Ipv6Be {
        let [a, b, c, d, e, f] = self.0;
        Ipv6Be([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            a ^ 0x02,
            b,
            c,
            0xff,
            0xfe,
            d,
            e,
            f,
        ])
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C) or repr(transparent) over integers and
    // byte arrays, have no padding (checked by the size assertions below) and
    // every bit pattern is valid.
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::PortKeyV4 {}
    unsafe impl aya::Pod for super::PortV4 {}
    unsafe impl aya::Pod for super::SlotV4 {}
    unsafe impl aya::Pod for super::DeviceCounters {}
    unsafe impl aya::Pod for super::Ifindex {}
    unsafe impl aya::Pod for super::PortKeyV6 {}
    unsafe impl aya::Pod for super::PortV6 {}
    unsafe impl aya::Pod for super::SlotV6 {}
    unsafe impl aya::Pod for super::TapState {}
}

// No implicit padding anywhere: the sizes below are the sums of the fields.
const _: () = {
    assert!(size_of::<DatapathConfig>() == 4 + 4 + 4 + 4 + 6 + 2 + 16 + 16 + 4 + 4 + 4);
    assert!(size_of::<PortKeyV6>() == 20);
    assert!(size_of::<SlotV6>() == 4 + 16 + 6 + 6);
    assert!(size_of::<PortKeyV4>() == 8);
    assert!(size_of::<PortV4>() == 4);
    assert!(size_of::<SlotV4>() == 4 + 4 + 6 + 6);
    assert!(size_of::<DeviceCounters>() == 13 * 8);
    assert!(size_of::<TapState>() == 8);
};

#[cfg(test)]
mod tests {
    use super::ConnBudget;

    const MS: u64 = 1_000_000;

    /// 100 connections a second, 5 at once.
    const BUDGET: ConnBudget = ConnBudget {
        interval_ns: 10_000_000,
        burst: 5,
    };

    /// Feeds `times` through the budget from a full bucket; returns which
    /// were admitted.
    fn run(budget: ConnBudget, times: &[u64]) -> [bool; 16] {
        let mut admitted = [false; 16];
        let mut tat = 0;
        for (i, &now) in times.iter().enumerate() {
            if let Some(next) = budget.admit(tat, now) {
                tat = next;
                admitted[i] = true;
            }
        }
        admitted
    }

    #[test]
    fn a_burst_takes_exactly_the_depth_at_once() {
        let admitted = run(BUDGET, &[1000 * MS; 8]);
        assert_eq!(
            admitted[..8],
            [true, true, true, true, true, false, false, false]
        );
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        // Five at t=1 s empty it; one token back 10 ms later, not before.
        let t = 1000 * MS;
        let times = [t, t, t, t, t, t + 9 * MS, t + 10 * MS, t + 11 * MS];
        let admitted = run(BUDGET, &times);
        assert_eq!(admitted[5..8], [false, true, false]);
    }

    #[test]
    fn a_steady_rate_at_the_budget_is_never_refused() {
        let times: [u64; 16] = core::array::from_fn(|i| 1000 * MS + i as u64 * 10 * MS);
        assert_eq!(run(BUDGET, &times), [true; 16]);
    }

    #[test]
    fn refusals_earn_nothing_and_a_quiet_tap_refills_to_the_depth_only() {
        let t = 1000 * MS;
        // A flood at one instant, then a minute of silence: five again.
        let mut times = [t; 16];
        times[8..].fill(t + 60_000 * MS);
        let admitted = run(BUDGET, &times);
        assert_eq!(admitted.iter().filter(|a| **a).count(), 10);
    }

    #[test]
    fn no_interval_means_no_budget_and_a_burst_of_zero_means_one() {
        let off = ConnBudget {
            interval_ns: 0,
            burst: 0,
        };
        assert_eq!(run(off, &[MS; 16]), [true; 16]);
        let one = ConnBudget {
            interval_ns: 10_000_000,
            burst: 0,
        };
        assert_eq!(run(one, &[MS; 3])[..3], [true, false, false]);
    }
}
