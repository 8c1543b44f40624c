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
        DatapathConfig, Ifindex, Ipv4Be, MAX_SLOTS_V4, METADATA_PORT, METADATA_V4, PortKeyV4,
    };

    use crate::{
        log::{Event, allow},
        maps::{MDR_CONFIG, MDR_PORTS_V4, MDR_SLOTS_V4},
        nat, neigh,
        parse::{
            ETH_LEN, ETH_P_ARP, ETH_P_IP, EthHdr, IPPROTO_TCP, IPV4_LEN, Ipv4Hdr, TcpHdr,
            ensure_linear, header_mut,
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

    /// Returns proxy replies addressed to a slot to their guest; passes
    /// everything else the host sends on the device.
    fn try_host_egress(ctx: &TcContext) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV4_LEN) {
            return Ok(Verdict::Pass);
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
