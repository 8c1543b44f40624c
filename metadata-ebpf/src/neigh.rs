//! Answers ARP for the metadata address from the tap itself, so a guest
//! whose route to 169.254.169.254 is on-link needs no responder on the
//! tenant network.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use metadata_common::{DatapathConfig, Ifindex, METADATA_V4, PortKeyV4};

use crate::{
    maps::MDR_PORTS_V4,
    parse::{ArpEthIpv4, ETH_LEN, EthHdr, ensure_linear, header_mut},
    verdict::{Step, Verdict},
};

const ARPHRD_ETHER: [u8; 2] = 1u16.to_be_bytes();
const ARPOP_REQUEST: [u8; 2] = 1u16.to_be_bytes();
const ARPOP_REPLY: [u8; 2] = 2u16.to_be_bytes();
const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();

/// Turns an ARP request for 169.254.169.254 from a registered (tap, sender
/// address) into the reply, in place, and sends it back out of the tap.
/// Other ARP packets pass untouched.
#[inline(always)]
pub fn answer_arp(ctx: &TcContext, tap: Ifindex, cfg: Option<&DatapathConfig>) -> Step<Verdict> {
    if !ensure_linear(ctx, ETH_LEN + size_of::<ArpEthIpv4>()) {
        return Ok(Verdict::Pass);
    }
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return Err(Verdict::DropMalformed);
    };
    let Some(arp) = header_mut::<ArpEthIpv4>(ctx, ETH_LEN) else {
        return Err(Verdict::DropMalformed);
    };
    // SAFETY: both bounds-checked just above; no helper runs before use.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if arp.tpa != METADATA_V4 || arp.op != ARPOP_REQUEST {
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
    let asker_mac = arp.sha;
    let asker_ip = arp.spa;
    arp.op = ARPOP_REPLY;
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    arp.sha = cfg.host_mac;
    arp.spa = METADATA_V4;
    eth.dst = asker_mac;
    eth.src = cfg.host_mac;
    // SAFETY: bpf_redirect takes plain integers. Flags 0: out of the tap,
    // towards the guest.
    let action = unsafe { bpf_redirect(tap.0, 0) };
    Ok(Verdict::ArpReplied.redirected(action))
}
