//! Answers ARP (IPv4) and Neighbour Solicitations (IPv6) for the metadata
//! address from the tap itself, so a guest whose route to 169.254.169.254 is
//! on-link, and every guest asking for fe80::a9fe:a9fe, needs no responder
//! on the tenant network.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use metadata_common::{
    DatapathConfig, Ifindex, Ipv4Be, Ipv6Be, METADATA_V4, METADATA_V6, MacAddr, PortKeyV4,
    PortKeyV6,
};

use crate::{
    csum,
    maps::{MDR_NEXTHOPS_V4, MDR_PORTS_V4, MDR_PORTS_V6},
    parse::{
        ArpEthIpv4, ETH_LEN, ETH_P_IPV6, EthHdr, IPPROTO_ICMPV6, IPV6_LEN, Ipv6Hdr, LinkLayerOpt,
        NeighMsg, ensure_linear, header, store,
    },
    verdict::{Step, Verdict},
};

const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// Solicited and Override flags of a Neighbour Advertisement.
const NA_FLAGS: [u8; 4] = [0x60, 0, 0, 0];
const NEIGH_OFF: usize = ETH_LEN + IPV6_LEN;
/// A Neighbour Advertisement frame with its target link-layer address
/// option, built on the stack and stored over the solicitation at once.
#[repr(C)]
struct AdvertFrame {
    eth: EthHdr,
    ip: Ipv6Hdr,
    msg: NeighMsg,
    opt: LinkLayerOpt,
}
const NA_LEN: usize = size_of::<AdvertFrame>();
const NA_PAYLOAD: u16 = (size_of::<NeighMsg>() + size_of::<LinkLayerOpt>()) as u16;

/// The target of an ICMPv6 Neighbour Solicitation, or `None` for any other
/// packet. (A solicitation is sent to the solicited-node multicast address,
/// so the destination does not say whom it asks for.) The caller has
/// checked that the next header is ICMPv6.
#[inline(always)]
pub fn solicited_target(ctx: &TcContext) -> Option<Ipv6Be> {
    if !ensure_linear(ctx, NEIGH_OFF + size_of::<NeighMsg>()) {
        return None;
    }
    let (ip, msg) = (
        header::<Ipv6Hdr>(ctx, ETH_LEN)?,
        header::<NeighMsg>(ctx, NEIGH_OFF)?,
    );
    // SAFETY: both bounds-checked by header.
    unsafe {
        ((*ip).next_header == IPPROTO_ICMPV6 && (*msg).icmp_type == ND_NEIGHBOR_SOLICIT)
            .then_some((*msg).target)
    }
}

/// Answers a Neighbour Solicitation for fe80::a9fe:a9fe from a registered
/// (tap, source) with a Neighbour Advertisement carrying the host device's
/// MAC, stored over the solicitation and sent back out of the tap.
#[inline(always)]
pub fn answer_ns(ctx: &TcContext, tap: Ifindex, cfg: Option<&DatapathConfig>) -> Step<Verdict> {
    let (Some(eth), Some(ip), Some(msg)) = (
        header::<EthHdr>(ctx, 0),
        header::<Ipv6Hdr>(ctx, ETH_LEN),
        header::<NeighMsg>(ctx, NEIGH_OFF),
    ) else {
        return Err(Verdict::DropMalformed);
    };
    // SAFETY: bounds-checked by header; copied out before the resize.
    let (asker_mac, asker, hop_limit, code) =
        unsafe { ((*eth).src, (*ip).src, (*ip).hop_limit, (*msg).code) };
    // RFC 4861 7.1.1: anything else did not come from the link.
    if hop_limit != 255 || code != 0 {
        return Err(Verdict::DropMalformed);
    }
    let Some(cfg) = cfg else {
        return Err(Verdict::DropError);
    };
    let key = PortKeyV6 {
        ifindex: tap,
        addr: asker,
    };
    if MDR_PORTS_V6.get_ptr(key).is_none() {
        // Includes DAD probes from "::": nobody may claim our address.
        return Err(Verdict::DropUnregistered);
    }
    if ctx.len() as usize != NA_LEN {
        // SAFETY: resizing the skb this program owns.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, NA_LEN as u32, 0) } != 0 {
            return Err(Verdict::DropError);
        }
    }
    let advert = advertisement(asker_mac, asker, cfg.host_mac);
    store(ctx, 0, &advert)?;
    // SAFETY: bpf_redirect takes plain integers. Out of the tap.
    let action = unsafe { bpf_redirect(tap.0, 0) };
    Ok(Verdict::NdpReplied.redirected(action))
}

/// The advertisement of `host_mac` for fe80::a9fe:a9fe to `asker`.
#[inline(always)]
fn advertisement(asker_mac: MacAddr, asker: Ipv6Be, host_mac: MacAddr) -> AdvertFrame {
    // The checksum from scratch: pseudo header (source, destination,
    // length, next header), then the message as written below.
    let mut sum = csum::add_words(0, &METADATA_V6.0);
    sum = csum::add_words(sum, &asker.0);
    sum = csum::add_words(sum, &[0, 0, 0, NA_PAYLOAD as u8, 0, 0, 0, IPPROTO_ICMPV6]);
    sum = csum::add_words(sum, &[ND_NEIGHBOR_ADVERT, 0, 0, 0]);
    sum = csum::add_words(sum, &NA_FLAGS);
    sum = csum::add_words(sum, &METADATA_V6.0);
    sum = csum::add_words(sum, &[ND_OPT_TARGET_LL_ADDR, 1]);
    sum = csum::add_words(sum, &host_mac.0);
    AdvertFrame {
        eth: EthHdr {
            dst: asker_mac,
            src: host_mac,
            ether_type: ETH_P_IPV6,
        },
        ip: Ipv6Hdr {
            vtc_flow: [0x60, 0, 0, 0],
            payload_len: NA_PAYLOAD.to_be_bytes(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: 255,
            src: METADATA_V6,
            dst: asker,
        },
        msg: NeighMsg {
            icmp_type: ND_NEIGHBOR_ADVERT,
            code: 0,
            check: csum::finish(sum),
            flags: NA_FLAGS,
            target: METADATA_V6,
        },
        opt: LinkLayerOpt {
            opt_type: ND_OPT_TARGET_LL_ADDR,
            len: 1,
            addr: host_mac,
        },
    }
}

/// Whether `addr` is a metadata next hop the datapath answers for on `tap`.
#[inline(always)]
fn is_nexthop(tap: Ifindex, addr: Ipv4Be) -> bool {
    MDR_NEXTHOPS_V4
        .get_ptr(PortKeyV4 { ifindex: tap, addr })
        .is_some()
}

const ARPHRD_ETHER: [u8; 2] = 1u16.to_be_bytes();
const ARPOP_REQUEST: [u8; 2] = 1u16.to_be_bytes();
const ARPOP_REPLY: [u8; 2] = 2u16.to_be_bytes();
const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();

/// Turns an ARP request for 169.254.169.254 (or for a metadata next hop of
/// the tap) from a registered (tap, sender address) into the reply, stored
/// over the request, and sends it back out of the tap.
/// ARP that asks for or claims one of the datapath's own addresses is
/// dropped; other ARP packets pass untouched.
#[inline(always)]
pub fn answer_arp(ctx: &TcContext, tap: Ifindex, cfg: Option<&DatapathConfig>) -> Step<Verdict> {
    if !ensure_linear(ctx, size_of::<ArpFrame>()) {
        return Ok(Verdict::Pass);
    }
    let Some(frame) = header::<ArpFrame>(ctx, 0) else {
        return Err(Verdict::DropMalformed);
    };
    // SAFETY: bounds-checked just above; no helper runs before use.
    let ArpFrame { eth, arp } = unsafe { &*frame };
    if cfg.is_some_and(|cfg| cfg.reserved_v4(arp.tpa) || cfg.reserved_v4(arp.spa)) {
        return Err(Verdict::DropReserved);
    }
    if arp.op != ARPOP_REQUEST || !(arp.tpa == METADATA_V4 || is_nexthop(tap, arp.tpa)) {
        return Ok(Verdict::Pass);
    }
    if arp.htype != ARPHRD_ETHER || arp.ptype != ETH_P_IP || arp.hlen != 6 || arp.plen != 4 {
        return Err(Verdict::DropMalformed);
    }
    // Fail closed: without a configured host device there is nobody to
    // answer for.
    let cfg = cfg.ok_or(Verdict::DropError)?;
    let key = PortKeyV4 {
        ifindex: tap,
        addr: arp.spa,
    };
    if MDR_PORTS_V4.get_ptr(key).is_none() {
        return Err(Verdict::DropUnregistered);
    }
    let reply = ArpFrame {
        eth: EthHdr {
            dst: arp.sha,
            src: cfg.host_mac,
            ether_type: eth.ether_type,
        },
        arp: ArpEthIpv4 {
            op: ARPOP_REPLY,
            sha: cfg.host_mac,
            spa: arp.tpa,
            tha: arp.sha,
            tpa: arp.spa,
            ..*arp
        },
    };
    store(ctx, 0, &reply)?;
    // SAFETY: bpf_redirect takes plain integers. Flags 0: out of the tap,
    // towards the guest.
    let action = unsafe { bpf_redirect(tap.0, 0) };
    Ok(Verdict::ArpReplied.redirected(action))
}

/// An ARP packet in its Ethernet frame: the request, and the reply stored
/// over it.
#[repr(C)]
struct ArpFrame {
    eth: EthHdr,
    arp: ArpEthIpv4,
}
