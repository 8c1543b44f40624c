//! Header layouts, bounds-checked direct packet reads, and the one way the
//! programs write a packet.
//!
//! Headers are read in place through pointers into the linear part of the
//! skb: one comparison against `data_end` per header replaces a
//! `bpf_skb_load_bytes` call per field. When a header is not in the linear
//! area (a guest driver that puts everything in fragments), the slow path
//! pulls it in once with `bpf_skb_pull_data`.
//!
//! Writes never go through those pointers. A tc program that stores to
//! packet memory directly gets a prologue from the verifier that unclones
//! every cloned skb it sees (`bpf_unclone_prologue`: a `bpf_skb_pull_data`
//! call and a header copy), and TCP sends clones: every passed packet of a
//! guest's TCP stream would pay it (25 ns per packet measured on iperf3
//! traffic, and a header copy). [`store`] goes through
//! `bpf_skb_store_bytes`, which makes only the packets it writes private.
//!
//! All fields are byte arrays, so every header has alignment 1 and no
//! padding, whatever offset it sits at.

use core::mem::offset_of;

use aya_ebpf::programs::TcContext;
use metadata_common::{Ipv4Be, Ipv6Be, MacAddr, PortBe};

use crate::verdict::{Step, helper_failed};

pub const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();
pub const ETH_P_ARP: [u8; 2] = 0x0806u16.to_be_bytes();
pub const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_ICMPV6: u8 = 58;

/// An Ethernet II header.
#[repr(C)]
pub struct EthHdr {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub ether_type: [u8; 2],
}
pub const ETH_LEN: usize = size_of::<EthHdr>();

/// The two addresses of an Ethernet header, at its start: one store.
#[repr(C)]
pub struct EthAddrs {
    pub dst: MacAddr,
    pub src: MacAddr,
}

/// The fixed part of an IPv4 header (options, if any, follow it).
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: Ipv4Be,
    pub dst: Ipv4Be,
}
pub const IPV4_LEN: usize = size_of::<Ipv4Hdr>();

/// The IPv4 header checksum and the two addresses behind it: what a NAT
/// rewrite changes, adjacent, so one store writes them.
#[repr(C)]
pub struct Ipv4CheckAddrs {
    pub check: [u8; 2],
    pub src: Ipv4Be,
    pub dst: Ipv4Be,
}
/// Where [`Ipv4CheckAddrs`] starts in the frame.
pub const IPV4_CHECK_ADDRS_OFF: usize = ETH_LEN + offset_of!(Ipv4Hdr, check);

impl Ipv4Hdr {
    /// Header length in bytes, or `None` when the version is not 4 or the
    /// length is shorter than the fixed header.
    #[inline(always)]
    pub fn header_len(&self) -> Option<usize> {
        let version = self.version_ihl >> 4;
        let ihl = usize::from(self.version_ihl & 0x0f) * 4;
        (version == 4 && ihl >= IPV4_LEN).then_some(ihl)
    }

    /// The total length field: header and payload, in bytes.
    #[inline(always)]
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes(self.tot_len))
    }

    /// Whether this packet is a fragment (more-fragments set or a non-zero
    /// offset): only the first fragment carries the TCP ports.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        // MF is 0x2000, the offset the low 13 bits; DF (0x4000) is fine.
        u16::from_be_bytes(self.frag_off) & 0x3fff != 0
    }
}

/// An IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: Ipv6Be,
    pub dst: Ipv6Be,
}
pub const IPV6_LEN: usize = size_of::<Ipv6Hdr>();

/// The two addresses of an IPv6 header, adjacent: one store.
#[repr(C)]
pub struct Ipv6Addrs {
    pub src: Ipv6Be,
    pub dst: Ipv6Be,
}
/// Where [`Ipv6Addrs`] starts in the frame.
pub const IPV6_ADDRS_OFF: usize = ETH_LEN + offset_of!(Ipv6Hdr, src);

impl Ipv6Hdr {
    /// The payload length field, in bytes.
    #[inline(always)]
    pub fn payload_len(&self) -> usize {
        usize::from(u16::from_be_bytes(self.payload_len))
    }
}

/// An ICMPv6 Neighbour Solicitation or Advertisement (RFC 4861), without
/// options.
#[repr(C)]
pub struct NeighMsg {
    pub icmp_type: u8,
    pub code: u8,
    pub check: [u8; 2],
    /// Reserved (NS) or R/S/O flags and reserved (NA).
    pub flags: [u8; 4],
    pub target: Ipv6Be,
}

/// A link-layer address option (RFC 4861 4.6.1) for Ethernet.
#[repr(C)]
pub struct LinkLayerOpt {
    pub opt_type: u8,
    /// In units of 8 bytes.
    pub len: u8,
    pub addr: MacAddr,
}

/// The fixed part of a TCP header.
#[repr(C)]
pub struct TcpHdr {
    pub source: PortBe,
    pub dest: PortBe,
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    pub off_flags: [u8; 2],
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}
pub const TCP_LEN: usize = size_of::<TcpHdr>();

impl TcpHdr {
    /// Header length from the data offset, in bytes (20 to 60; a value
    /// under 20 is malformed).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.off_flags[0] >> 4) * 4
    }

    /// Whether this segment opens a connection: SYN set, ACK clear (a
    /// retransmitted SYN too; a SYN/ACK or anything later is not).
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        self.off_flags[1] & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// TCP flags, in the second byte of `off_flags`.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Whether a TCP header at `l4_off` whose IP packet ends at `ip_end` is
/// well formed: a data offset of at least five words that stays inside the
/// IP packet. Checked before any rewrite, so that no malformed segment is
/// ever steered or returned.
#[inline(always)]
pub fn tcp_header_ok(tcp: &TcpHdr, l4_off: usize, ip_end: usize) -> bool {
    let len = tcp.header_len();
    len >= TCP_LEN && l4_off + len <= ip_end
}

/// Offset of the checksum inside the TCP header.
pub const TCP_CHECK_OFF: usize = offset_of!(TcpHdr, check);
/// Offsets of the ports inside the TCP header.
pub const TCP_SOURCE_OFF: usize = offset_of!(TcpHdr, source);
pub const TCP_DEST_OFF: usize = offset_of!(TcpHdr, dest);

/// An ARP packet for IPv4 over Ethernet.
#[repr(C)]
pub struct ArpEthIpv4 {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    pub sha: MacAddr,
    pub spa: Ipv4Be,
    pub tha: MacAddr,
    pub tpa: Ipv4Be,
}

/// Makes sure the first `len` bytes of the packet are in the linear area,
/// pulling them in when the packet is long enough but they are not. Returns
/// false when the packet is shorter than `len`.
///
/// Pulling invalidates every packet pointer taken before: callers take
/// their header pointers with [`header`] after this returns.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, len: usize) -> bool {
    if ctx.data() + len <= ctx.data_end() {
        return true;
    }
    // Slow path: the bytes may be in the skb's non-linear part.
    len <= ctx.len() as usize
        && ctx.pull_data(len as u32).is_ok()
        && ctx.data() + len <= ctx.data_end()
}

/// Returns a pointer to a `T` at `offset` in the linear area, or `None`
/// when it does not fit. This comparison against `data_end` is the bounds
/// check the verifier needs before any read through the pointer. Read-only
/// on purpose: see the module documentation, and write with [`store`].
#[inline(always)]
pub fn header<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Writes `value` at `offset` in the packet through `bpf_skb_store_bytes`
/// (which unclones the skb first if it must); a failure drops the packet.
/// Every packet pointer taken before is invalid afterwards: read
/// everything first, then store.
#[inline(always)]
pub fn store<T>(ctx: &TcContext, offset: usize, value: &T) -> Step<()> {
    ctx.store(offset, value, 0).map_err(|_| helper_failed(ctx))
}
