//! tc (TCX) programs of metadata-redirector.
//!
//! - `tap_ingress`, on every VM-facing tap: steers guest requests for
//!   169.254.169.254:80 to the host proxy, answers ARP for that address,
//!   drops metadata traffic from sources not registered on the tap, and
//!   passes everything else untouched.
//! - `host_egress`, on the host device: turns the proxy's replies back into
//!   packets from 169.254.169.254:80 and sends them out of the right tap.
//!
//! Each entry point is thin: the `try_` function decides a [`Verdict`], and
//! [`Verdict::finish`] counts it and turns it into a tc action.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod log;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod neigh;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{macros::classifier, programs::TcContext};
    use metadata_common::{
        DatapathConfig, Ifindex, Ipv4Be, Ipv6Be, MAX_SLOTS_V4, MAX_SLOTS_V6, METADATA_PORT,
        METADATA_V4, METADATA_V6, PortKeyV4, PortKeyV6,
    };

    use crate::{
        log::{Event, allow},
        maps::{MDR_CONFIG, MDR_PORTS_V4, MDR_PORTS_V6, MDR_SLOTS_V4, MDR_SLOTS_V6},
        nat, neigh,
        parse::{
            ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_ICMPV6, IPPROTO_TCP,
            IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, TcpHdr, ensure_linear, header_mut,
        },
        verdict::{Step, Verdict},
    };

    const TCP_LEN: usize = size_of::<TcpHdr>();

    #[classifier]
    pub fn tap_ingress(ctx: TcContext) -> i32 {
        let tap = device(&ctx);
        match try_tap_ingress(&ctx, tap) {
            Ok(verdict) | Err(verdict) => verdict,
        }
        .finish(tap)
    }

    #[classifier]
    pub fn host_egress(ctx: TcContext) -> i32 {
        let host = device(&ctx);
        match try_host_egress(&ctx) {
            Ok(verdict) | Err(verdict) => verdict,
        }
        .finish(host)
    }

    /// The device the program runs on.
    #[inline(always)]
    fn device(ctx: &TcContext) -> Ifindex {
        // SAFETY: the skb pointer is the program's context, valid for the run.
        Ifindex(unsafe { (*ctx.skb.skb).ifindex })
    }

    /// The daemon's configuration, or `None` before the daemon wrote it.
    #[inline(always)]
    fn config() -> Option<DatapathConfig> {
        MDR_CONFIG
            .get(0)
            .copied()
            .filter(|cfg| cfg.host_ifindex.0 != 0)
    }

    fn try_tap_ingress(ctx: &TcContext, tap: Ifindex) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN) {
            // Shorter than an Ethernet header: nothing we could steer.
            return Ok(Verdict::Pass);
        }
        let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header_mut.
        let ether_type = unsafe { (*eth).ether_type };
        match ether_type {
            ETH_P_IP => ipv4_request(ctx, tap),
            ETH_P_ARP => neigh::answer_arp(ctx, tap, config().as_ref()),
            ETH_P_IPV6 => ipv6_request(ctx, tap),
            _ => Ok(Verdict::Pass),
        }
    }

    /// Steers TCP to 169.254.169.254:80 from a registered source; passes
    /// every other IPv4 packet untouched.
    #[inline(always)]
    fn ipv4_request(ctx: &TcContext, tap: Ifindex) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV4_LEN) {
            // Too short to be addressed to us; the stack will judge it.
            return Ok(Verdict::Pass);
        }
        let Some(ip) = header_mut::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header_mut; copied out before any pull.
        let (dst, protocol, header_len, fragment) = unsafe {
            let ip = &*ip;
            (ip.dst, ip.protocol, ip.header_len(), ip.is_fragment())
        };
        if dst != METADATA_V4 {
            return Ok(Verdict::Pass);
        }
        let header_len = header_len.ok_or(Verdict::DropMalformed)?;
        if protocol != IPPROTO_TCP {
            // ICMP and UDP to the metadata address are not ours to serve.
            return Ok(Verdict::Pass);
        }
        if fragment {
            return Err(Verdict::DropFragment);
        }
        let l4_off = ETH_LEN + header_len;
        if !ensure_linear(ctx, l4_off + TCP_LEN) {
            return Err(Verdict::DropMalformed);
        }
        let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
            return Err(Verdict::DropMalformed);
        };
        let Some(ip) = header_mut::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return Err(Verdict::DropMalformed);
        };
        let Some(tcp) = header_mut::<TcpHdr>(ctx, l4_off) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: all three bounds-checked just above.
        let (addressed_mac, src, dport) = unsafe { ((*eth).dst, (*ip).src, (*tcp).dest) };
        if dport != METADATA_PORT {
            return Ok(Verdict::Pass);
        }
        let Some(cfg) = config() else {
            if allow(Event::NotConfigured) {
                aya_log_ebpf::warn!(ctx, "metadata request before the datapath is configured");
            }
            return Err(Verdict::DropError);
        };
        let key = PortKeyV4 {
            ifindex: tap,
            addr: src,
        };
        let Some(port) = MDR_PORTS_V4.get_ptr(key) else {
            if allow(Event::Unregistered) {
                aya_log_ebpf::warn!(
                    ctx,
                    "dropped metadata request from unregistered source {:i} on ifindex {}",
                    src.to_bits(),
                    tap.0
                );
            }
            return Err(Verdict::DropUnregistered);
        };
        // SAFETY: a hash value pointer is valid until the next update of the
        // same key; only the daemon updates, and it is copied right away.
        let slot = unsafe { (*port).slot };
        if slot.0 >= cfg.nat_v4_size || slot.0 >= MAX_SLOTS_V4 {
            return Err(Verdict::DropError);
        }
        if let Some(entry) = MDR_SLOTS_V4.get_ptr_mut(slot.0) {
            // SAFETY: array values are preallocated and never freed. The
            // store is idempotent and only happens when the guest changes
            // the MAC it sends to (first request, or a new router).
            unsafe {
                if (*entry).router_mac != addressed_mac {
                    (*entry).router_mac = addressed_mac;
                }
            }
        }
        let slot_addr = Ipv4Be::from_bits(cfg.nat_v4_base.to_bits().wrapping_add(slot.0));
        nat::steer_request_v4(ctx, l4_off, &cfg, slot_addr)
    }

    /// IPv6: answers Neighbour Solicitations for fe80::a9fe:a9fe, steers TCP
    /// to [fe80::a9fe:a9fe]:80 from a registered source, passes the rest of
    /// a registered source's traffic to that address (extension headers,
    /// fragments, other ICMPv6, other ports) untouched, and drops an
    /// unregistered source's.
    #[inline(always)]
    fn ipv6_request(ctx: &TcContext, tap: Ifindex) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV6_LEN) {
            return Ok(Verdict::Pass);
        }
        let Some(ip) = header_mut::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return Ok(Verdict::Pass);
        };
        // SAFETY: bounds-checked by header_mut; copied out before any pull.
        let (src, dst, next_header) = unsafe { ((*ip).src, (*ip).dst, (*ip).next_header) };
        // Only ICMPv6 is looked into further for a solicitation (sent to a
        // multicast address, so the destination cannot tell).
        if next_header == IPPROTO_ICMPV6 && neigh::is_metadata_solicitation(ctx) {
            return neigh::answer_ns(ctx, tap, config().as_ref());
        }
        if dst != METADATA_V6 {
            return Ok(Verdict::Pass);
        }
        let key = PortKeyV6 {
            ifindex: tap,
            addr: src,
        };
        let Some(port) = MDR_PORTS_V6.get_ptr(key) else {
            if allow(Event::Unregistered) {
                aya_log_ebpf::warn!(
                    ctx,
                    "dropped IPv6 metadata traffic from an unregistered source {:i} on ifindex {}",
                    src.0,
                    tap.0
                );
            }
            return Err(Verdict::DropUnregistered);
        };
        // SAFETY: see ipv4_request.
        let slot = unsafe { (*port).slot };
        if next_header != IPPROTO_TCP {
            return Ok(Verdict::Pass);
        }
        if !ensure_linear(ctx, nat::TCP6_OFF + TCP_LEN) {
            return Err(Verdict::DropMalformed);
        }
        let (Some(eth), Some(tcp)) = (
            header_mut::<EthHdr>(ctx, 0),
            header_mut::<TcpHdr>(ctx, nat::TCP6_OFF),
        ) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: both bounds-checked just above.
        let (addressed_mac, dport) = unsafe { ((*eth).dst, (*tcp).dest) };
        if dport != METADATA_PORT {
            return Ok(Verdict::Pass);
        }
        let Some(cfg) = config() else {
            return Err(Verdict::DropError);
        };
        if slot.0 >= cfg.nat_v6_size || slot.0 >= MAX_SLOTS_V6 {
            return Err(Verdict::DropError);
        }
        if let Some(entry) = MDR_SLOTS_V6.get_ptr_mut(slot.0) {
            // SAFETY: see ipv4_request.
            unsafe {
                if (*entry).router_mac != addressed_mac {
                    (*entry).router_mac = addressed_mac;
                }
            }
        }
        let mut slot_addr = cfg.nat_v6_base;
        let [a, b, c, d] = slot.0.to_be_bytes();
        slot_addr.0[12] = a;
        slot_addr.0[13] = b;
        slot_addr.0[14] = c;
        slot_addr.0[15] = d;
        nat::steer_request_v6(ctx, &cfg, slot_addr)
    }

    /// The slot a NAT /96 address stands for, if it is one.
    #[inline(always)]
    fn slot_v6(cfg: &DatapathConfig, addr: &Ipv6Be) -> Option<u32> {
        let base = &cfg.nat_v6_base.0;
        let mut i = 0;
        while i < 12 {
            if addr.0[i] != base[i] {
                return None;
            }
            i += 1;
        }
        let slot = u32::from_be_bytes([addr.0[12], addr.0[13], addr.0[14], addr.0[15]]);
        (slot < cfg.nat_v6_size).then_some(slot)
    }

    /// IPv6 replies from the proxy to a slot.
    #[inline(always)]
    fn ipv6_reply(ctx: &TcContext) -> Step<Verdict> {
        if !ensure_linear(ctx, nat::TCP6_OFF + TCP_LEN) {
            return Ok(Verdict::Pass);
        }
        let (Some(ip), Some(tcp)) = (
            header_mut::<Ipv6Hdr>(ctx, ETH_LEN),
            header_mut::<TcpHdr>(ctx, nat::TCP6_OFF),
        ) else {
            return Ok(Verdict::Pass);
        };
        // SAFETY: bounds-checked by header_mut.
        let (src, dst, next_header, sport) =
            unsafe { ((*ip).src, (*ip).dst, (*ip).next_header, (*tcp).source) };
        let Some(cfg) = config() else {
            return Ok(Verdict::Pass);
        };
        if src != cfg.proxy_v6 || next_header != IPPROTO_TCP || sport != cfg.proxy_port {
            return Ok(Verdict::Pass);
        }
        let Some(slot) = slot_v6(&cfg, &dst) else {
            return Ok(Verdict::Pass);
        };
        let entry = MDR_SLOTS_V6.get(slot).copied().filter(|e| e.ifindex.0 != 0);
        let Some(entry) = entry else {
            if allow(Event::MissingSlot) {
                aya_log_ebpf::warn!(ctx, "dropped IPv6 reply to slot {} with no entry", slot);
            }
            return Err(Verdict::DropNoSlot);
        };
        nat::return_reply_v6(ctx, &cfg, &entry)
    }

    /// Returns proxy replies addressed to a slot to their guest; passes
    /// everything else the host sends on the device.
    fn try_host_egress(ctx: &TcContext) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV4_LEN) {
            return Ok(Verdict::Pass);
        }
        let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
            return Ok(Verdict::Pass);
        };
        // SAFETY: bounds-checked by header_mut.
        if unsafe { (*eth).ether_type } == ETH_P_IPV6 {
            return ipv6_reply(ctx);
        }
        let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
            return Err(Verdict::DropMalformed);
        };
        let Some(ip) = header_mut::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: both bounds-checked by header_mut; copied out before any pull.
        let (ether_type, src, dst, protocol, header_len, fragment) = unsafe {
            let ip = &*ip;
            (
                (*eth).ether_type,
                ip.src,
                ip.dst,
                ip.protocol,
                ip.header_len(),
                ip.is_fragment(),
            )
        };
        let Some(cfg) = config() else {
            return Ok(Verdict::Pass);
        };
        if ether_type != ETH_P_IP || src != cfg.proxy_v4 || protocol != IPPROTO_TCP {
            return Ok(Verdict::Pass);
        }
        let slot = dst.to_bits().wrapping_sub(cfg.nat_v4_base.to_bits());
        if slot >= cfg.nat_v4_size {
            return Ok(Verdict::Pass);
        }
        let header_len = header_len.ok_or(Verdict::DropMalformed)?;
        if fragment {
            return Err(Verdict::DropFragment);
        }
        let l4_off = ETH_LEN + header_len;
        if !ensure_linear(ctx, l4_off + TCP_LEN) {
            return Err(Verdict::DropMalformed);
        }
        let Some(tcp) = header_mut::<TcpHdr>(ctx, l4_off) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header_mut.
        if unsafe { (*tcp).source } != cfg.proxy_port {
            return Ok(Verdict::Pass);
        }
        let entry = MDR_SLOTS_V4
            .get(slot)
            .copied()
            .filter(|entry| entry.ifindex.0 != 0);
        let Some(entry) = entry else {
            if allow(Event::MissingSlot) {
                aya_log_ebpf::warn!(ctx, "dropped reply to slot {} with no entry", slot);
            }
            return Err(Verdict::DropNoSlot);
        };
        nat::return_reply_v4(ctx, l4_off, &cfg, &entry)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Built for the host (e.g. by `cargo clippy --workspace`), this crate is
/// empty: the programs only exist for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
