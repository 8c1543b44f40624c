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
// Inline assembly on the BPF target, for the load-time values.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod budget;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod load_time;
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
    //! Truncated headers follow one rule in both programs and both
    //! families: a packet too short to hold the header that says where it
    //! goes is passed (it is not ours to judge, and the stack will); once a
    //! packet is known to be metadata traffic (to the metadata address, or
    //! from the proxy to a slot), anything truncated or malformed in the
    //! rest is dropped as malformed, before any rewrite.

    use aya_ebpf::{macros::classifier, programs::TcContext};
    use metadata_common::{
        DatapathConfig, Ifindex, Ipv4Be, MAX_SLOTS_V4, MAX_SLOTS_V6, METADATA_PORT, METADATA_V4,
        METADATA_V6, MacAddr, PortBe, PortKeyV4, PortKeyV6, Slot,
    };

    use crate::{
        budget, load_time,
        log::{Event, allow},
        maps::{MDR_CONFIG, MDR_PORTS_V4, MDR_PORTS_V6, MDR_SLOTS_V4, MDR_SLOTS_V6},
        nat, neigh,
        parse::{
            ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_ICMPV6, IPPROTO_TCP,
            IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, TCP_LEN, TcpHdr, ensure_linear, header,
            tcp_header_ok,
        },
        verdict::{Step, Verdict, count_elsewhere},
    };

    #[classifier]
    pub fn tap_ingress(ctx: TcContext) -> i32 {
        if passes_untouched(&ctx) {
            return Verdict::Pass.finish(|| device(&ctx));
        }
        tap_ingress_slow_path(&ctx)
    }

    /// Everything [`passes_untouched`] did not settle. A BPF subprogram,
    /// never inlined: its code (most of the program) then stays out of the
    /// cache lines a passed packet runs through (5 ns per passed packet on
    /// iperf3 traffic, measured against the same tests inline).
    #[inline(never)]
    fn tap_ingress_slow_path(ctx: &TcContext) -> i32 {
        // The tap's ifindex is read only where it is used (a skb->dev
        // dereference saved on most packets).
        match try_tap_ingress(ctx) {
            Ok(verdict) | Err(verdict) => verdict,
        }
        .finish(|| device(ctx))
    }

    /// The verdict for nearly every packet a tap carries, decided in a few
    /// instructions that read no map: IPv4 or IPv6 (not ICMPv6) whose
    /// headers are linear, neither to the metadata address nor from or to
    /// the datapath's own addresses (fixed at load time). The same tests
    /// as in [`try_tap_ingress`], which makes every other decision; `false`
    /// only means "not settled here".
    #[inline(always)]
    fn passes_untouched(ctx: &TcContext) -> bool {
        if !load_time::fast_path() {
            return false;
        }
        let Some(eth) = header::<EthHdr>(ctx, 0) else {
            return false;
        };
        // SAFETY: bounds-checked by header.
        match unsafe { (*eth).ether_type } {
            ETH_P_IP => {
                let Some(ip) = header::<Ipv4Hdr>(ctx, ETH_LEN) else {
                    return false;
                };
                // SAFETY: bounds-checked by header.
                let (src, dst) = unsafe { ((*ip).src, (*ip).dst) };
                let reserved = load_time::reserved_v4();
                dst != METADATA_V4 && !reserved.contains(src) && !reserved.contains(dst)
            }
            ETH_P_IPV6 => {
                let Some(ip) = header::<Ipv6Hdr>(ctx, ETH_LEN) else {
                    return false;
                };
                // SAFETY: bounds-checked by header.
                let ip = unsafe { &*ip };
                let nat = load_time::nat_prefix_v6();
                ip.next_header != IPPROTO_ICMPV6
                    && ip.dst != METADATA_V6
                    && !nat.contains(&ip.src)
                    && !nat.contains(&ip.dst)
            }
            _ => false,
        }
    }

    #[classifier]
    pub fn host_egress(ctx: TcContext) -> i32 {
        let host = device(&ctx);
        match try_host_egress(&ctx, host) {
            Ok(verdict) | Err(verdict) => verdict,
        }
        .finish(|| host)
    }

    /// The device the program runs on.
    #[inline(always)]
    fn device(ctx: &TcContext) -> Ifindex {
        // SAFETY: the skb pointer is the program's context, valid for the run.
        Ifindex(unsafe { (*ctx.skb.skb).ifindex })
    }

    /// The device the packet entered this host on; zero for a packet the
    /// host's own stack created (the daemon's sockets, the kernel's RSTs).
    #[inline(always)]
    fn ingress_device(ctx: &TcContext) -> Ifindex {
        // SAFETY: as in `device`.
        Ifindex(unsafe { (*ctx.skb.skb).ingress_ifindex })
    }

    /// The daemon's configuration, or `None` before the daemon wrote it.
    /// (An array lookup the verifier inlines: a few instructions. A
    /// reference into the map, not a copy: the programs' 512-byte stack
    /// has no room for several copies of it.)
    #[inline(always)]
    fn config() -> Option<&'static DatapathConfig> {
        MDR_CONFIG.get(0).filter(|cfg| cfg.host_ifindex.0 != 0)
    }

    /// The configuration for metadata traffic, which fails closed without
    /// one.
    #[inline(always)]
    fn config_or_drop<'a>(
        ctx: &TcContext,
        cfg: Option<&'a DatapathConfig>,
    ) -> Step<&'a DatapathConfig> {
        cfg.ok_or_else(|| {
            if allow(Event::NotConfigured) {
                aya_log_ebpf::warn!(ctx, "metadata traffic before the datapath is configured");
            }
            Verdict::DropError
        })
    }

    #[inline(always)]
    fn reserved(ctx: &TcContext, tap: Ifindex) -> Verdict {
        core::hint::cold_path();
        if allow(Event::Reserved) {
            aya_log_ebpf::warn!(
                ctx,
                "dropped a packet using the datapath's own addresses on ifindex {}",
                tap.0
            );
        }
        Verdict::DropReserved
    }

    fn try_tap_ingress(ctx: &TcContext) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN) {
            // Shorter than an Ethernet header: nothing we could steer.
            return Ok(Verdict::Pass);
        }
        let Some(eth) = header::<EthHdr>(ctx, 0) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header.
        let ether_type = unsafe { (*eth).ether_type };
        match ether_type {
            ETH_P_IP => ipv4_request(ctx),
            ETH_P_IPV6 => ipv6_request(ctx, device(ctx)),
            ETH_P_ARP => {
                // Out of the passed packets' way in the program's layout.
                core::hint::cold_path();
                neigh::answer_arp(ctx, device(ctx), config())
            }
            _ => Ok(Verdict::Pass),
        }
    }

    /// Steers TCP to 169.254.169.254:80 from a registered source, drops
    /// packets from or to the datapath's own addresses, and passes every
    /// other IPv4 packet untouched.
    #[inline(always)]
    fn ipv4_request(ctx: &TcContext) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV4_LEN) {
            return Ok(Verdict::Pass);
        }
        let Some(ip) = header::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return Err(Verdict::DropMalformed);
        };
        // The addresses alone decide a pass, nearly every packet: read
        // nothing else before that is settled.
        // SAFETY: bounds-checked by header.
        let (src, dst) = unsafe { ((*ip).src, (*ip).dst) };
        let cfg = config();
        if cfg.is_some_and(|cfg| cfg.reserved_v4(src) || cfg.reserved_v4(dst)) {
            return Err(reserved(ctx, device(ctx)));
        }
        if dst != METADATA_V4 {
            return Ok(Verdict::Pass);
        }
        // Metadata traffic is a sliver of what a tap carries: keep its code
        // out of the passed packets' cache lines.
        core::hint::cold_path();
        let tap = device(ctx);
        // SAFETY: as above; copied out before any pull.
        let (protocol, header_len, fragment, total_len) = unsafe {
            let ip = &*ip;
            (
                ip.protocol,
                ip.header_len(),
                ip.is_fragment(),
                ip.total_len(),
            )
        };
        let header_len = header_len.ok_or(Verdict::DropMalformed)?;
        let ip_end = ETH_LEN + total_len;
        if total_len < header_len || ip_end > ctx.len() as usize {
            return Err(Verdict::DropMalformed);
        }
        if protocol != IPPROTO_TCP {
            // ICMP and UDP to the metadata address are not ours to serve.
            return Ok(Verdict::Pass);
        }
        if fragment {
            return Err(Verdict::DropFragment);
        }
        let l4_off = ETH_LEN + header_len;
        let addressed_mac = addressed_mac(ctx)?;
        let (dport, opens) = request_tcp(ctx, l4_off, ip_end)?;
        if dport != METADATA_PORT {
            return Ok(Verdict::Pass);
        }
        let cfg = config_or_drop(ctx, cfg)?;
        let slot = registered_v4(ctx, tap, src)?;
        if opens {
            budget::charge_connection(ctx, tap, cfg)?;
        }
        if slot.0 >= cfg.nat_v4_size || slot.0 >= MAX_SLOTS_V4 {
            return Err(Verdict::DropError);
        }
        if let Some(entry) = MDR_SLOTS_V4.get_ptr_mut(slot.0) {
            // SAFETY: array values are preallocated and never freed.
            learn_router_mac(unsafe { &mut (*entry).router_mac }, addressed_mac);
        }
        nat::steer_request_v4(ctx, l4_off, cfg, cfg.slot_addr_v4(slot))
    }

    /// The slot of a registered IPv4 (tap, source); drops the rest.
    #[inline(always)]
    fn registered_v4(ctx: &TcContext, tap: Ifindex, src: Ipv4Be) -> Step<Slot> {
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
        Ok(unsafe { (*port).slot })
    }

    /// The destination port of a request and whether it opens a
    /// connection, from a TCP header checked to be whole and, when it is
    /// for the metadata port, well formed.
    #[inline(always)]
    fn request_tcp(ctx: &TcContext, l4_off: usize, ip_end: usize) -> Step<(PortBe, bool)> {
        if !ensure_linear(ctx, l4_off + TCP_LEN) {
            return Err(Verdict::DropMalformed);
        }
        let Some(tcp) = header::<TcpHdr>(ctx, l4_off) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked just above.
        let tcp = unsafe { &*tcp };
        if tcp.dest == METADATA_PORT && !tcp_header_ok(tcp, l4_off, ip_end) {
            return Err(Verdict::DropMalformed);
        }
        Ok((tcp.dest, tcp.opens_connection()))
    }

    /// The MAC the frame was addressed to. Read before any pull, while the
    /// IP header's bounds check covers the Ethernet header too.
    #[inline(always)]
    fn addressed_mac(ctx: &TcContext) -> Step<MacAddr> {
        let Some(eth) = header::<EthHdr>(ctx, 0) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header.
        Ok(unsafe { (*eth).dst })
    }

    /// Records the MAC a guest addressed its request to, for the reply's
    /// source. The store only happens when it changes (first request, or a
    /// new router), so the cache line stays shared otherwise.
    #[inline(always)]
    fn learn_router_mac(stored: &mut MacAddr, addressed: MacAddr) {
        if *stored != addressed {
            *stored = addressed;
        }
    }

    /// IPv6: answers Neighbour Solicitations for fe80::a9fe:a9fe, steers TCP
    /// to [fe80::a9fe:a9fe]:80 from a registered source, passes the rest of
    /// a registered source's traffic to that address (extension headers,
    /// fragments, other ICMPv6, other ports) untouched, drops an
    /// unregistered source's, and drops anything from or to the NAT /96.
    #[inline(always)]
    fn ipv6_request(ctx: &TcContext, tap: Ifindex) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV6_LEN) {
            return Ok(Verdict::Pass);
        }
        let Some(ip) = header::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header; copied out before any pull.
        let (src, dst, next_header, payload_len) =
            unsafe { ((*ip).src, (*ip).dst, (*ip).next_header, (*ip).payload_len()) };
        let cfg = config();
        if cfg.is_some_and(|cfg| cfg.in_nat_v6(&src) || cfg.in_nat_v6(&dst)) {
            return Err(reserved(ctx, tap));
        }
        // Only ICMPv6 is looked into further for a solicitation.
        if next_header == IPPROTO_ICMPV6
            && let Some(target) = neigh::solicited_target(ctx)
        {
            if target == METADATA_V6 {
                return neigh::answer_ns(ctx, tap, cfg);
            }
            if cfg.is_some_and(|cfg| cfg.in_nat_v6(&target)) {
                return Err(reserved(ctx, tap));
            }
        }
        if dst != METADATA_V6 {
            return Ok(Verdict::Pass);
        }
        let ip_end = ETH_LEN + IPV6_LEN + payload_len;
        if ip_end > ctx.len() as usize {
            return Err(Verdict::DropMalformed);
        }
        let cfg = config_or_drop(ctx, cfg)?;
        let slot = registered_v6(ctx, tap, &src)?;
        if next_header != IPPROTO_TCP {
            return Ok(Verdict::Pass);
        }
        let addressed_mac = addressed_mac(ctx)?;
        let (dport, opens) = request_tcp(ctx, nat::TCP6_OFF, ip_end)?;
        if dport != METADATA_PORT {
            return Ok(Verdict::Pass);
        }
        if opens {
            budget::charge_connection(ctx, tap, cfg)?;
        }
        if slot.0 >= cfg.nat_v6_size || slot.0 >= MAX_SLOTS_V6 {
            return Err(Verdict::DropError);
        }
        if let Some(entry) = MDR_SLOTS_V6.get_ptr_mut(slot.0) {
            // SAFETY: array values are preallocated and never freed.
            learn_router_mac(unsafe { &mut (*entry).router_mac }, addressed_mac);
        }
        nat::steer_request_v6(ctx, cfg, cfg.slot_addr_v6(slot))
    }

    /// The slot of a registered IPv6 (tap, source); drops the rest.
    #[inline(always)]
    fn registered_v6(ctx: &TcContext, tap: Ifindex, src: &metadata_common::Ipv6Be) -> Step<Slot> {
        let key = PortKeyV6 {
            ifindex: tap,
            addr: *src,
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
        // SAFETY: see registered_v4.
        Ok(unsafe { (*port).slot })
    }

    /// Returns proxy replies addressed to a slot to their guest, drops
    /// packets from the proxy's address that the host did not send, and
    /// passes everything else the host sends on the device.
    fn try_host_egress(ctx: &TcContext, host: Ifindex) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN) {
            return Ok(Verdict::Pass);
        }
        let Some(eth) = header::<EthHdr>(ctx, 0) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header.
        match unsafe { (*eth).ether_type } {
            ETH_P_IP => ipv4_reply(ctx, host),
            ETH_P_IPV6 => ipv6_reply(ctx, host),
            _ => Ok(Verdict::Pass),
        }
    }

    /// Only packets the host's own stack sent may leave as the proxy: a
    /// forwarded packet (a guest's forgery, with the hypervisor routing)
    /// has the device it entered on. Charged to that device, so the
    /// operator sees which guest tried.
    #[inline(always)]
    fn ensure_sent_by_host(ctx: &TcContext, host: Ifindex) -> Step<()> {
        let ingress = ingress_device(ctx);
        if ingress.0 == 0 {
            return Ok(());
        }
        if allow(Event::Forged) {
            aya_log_ebpf::warn!(
                ctx,
                "dropped a packet from the proxy's address forwarded from ifindex {}",
                ingress.0
            );
        }
        Err(count_elsewhere(ingress, host, Verdict::DropForged))
    }

    /// IPv4 replies from the proxy to a slot.
    #[inline(always)]
    fn ipv4_reply(ctx: &TcContext, host: Ifindex) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV4_LEN) {
            return Ok(Verdict::Pass);
        }
        let Some(ip) = header::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header; copied out before any pull.
        let (src, dst, protocol, header_len, fragment) = unsafe {
            let ip = &*ip;
            (
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
        if src != cfg.proxy_v4 {
            return Ok(Verdict::Pass);
        }
        ensure_sent_by_host(ctx, host)?;
        let Some(slot) = cfg.slot_v4(dst) else {
            return Ok(Verdict::Pass);
        };
        if protocol != IPPROTO_TCP {
            return Ok(Verdict::Pass);
        }
        let header_len = header_len.ok_or(Verdict::DropMalformed)?;
        if fragment {
            return Err(Verdict::DropFragment);
        }
        let l4_off = ETH_LEN + header_len;
        if !reply_tcp_from(ctx, l4_off, cfg)? {
            return Ok(Verdict::Pass);
        }
        let Some(entry) = MDR_SLOTS_V4
            .get(slot.0)
            .copied()
            .filter(|e| e.ifindex.0 != 0)
        else {
            return Err(no_slot(ctx, slot));
        };
        Ok(nat::return_reply_v4(ctx, l4_off, cfg, &entry, host))
    }

    /// Whether the TCP header at `l4_off` comes from the proxy's port;
    /// drops it as malformed when truncated or with a bad data offset.
    /// (The stack's own segments always pass the offset check; the IP
    /// length is not checked here, since the host may send GSO packets.)
    #[inline(always)]
    fn reply_tcp_from(ctx: &TcContext, l4_off: usize, cfg: &DatapathConfig) -> Step<bool> {
        if !ensure_linear(ctx, l4_off + TCP_LEN) {
            return Err(Verdict::DropMalformed);
        }
        let Some(tcp) = header::<TcpHdr>(ctx, l4_off) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header.
        let tcp = unsafe { &*tcp };
        if tcp.source != cfg.proxy_port {
            return Ok(false);
        }
        if !tcp_header_ok(tcp, l4_off, ctx.len() as usize) {
            return Err(Verdict::DropMalformed);
        }
        Ok(true)
    }

    #[inline(always)]
    fn no_slot(ctx: &TcContext, slot: Slot) -> Verdict {
        if allow(Event::MissingSlot) {
            aya_log_ebpf::warn!(ctx, "dropped a reply to slot {} with no entry", slot.0);
        }
        Verdict::DropNoSlot
    }

    /// IPv6 replies from the proxy to a slot.
    #[inline(always)]
    fn ipv6_reply(ctx: &TcContext, host: Ifindex) -> Step<Verdict> {
        if !ensure_linear(ctx, ETH_LEN + IPV6_LEN) {
            return Ok(Verdict::Pass);
        }
        let Some(ip) = header::<Ipv6Hdr>(ctx, ETH_LEN) else {
            return Err(Verdict::DropMalformed);
        };
        // SAFETY: bounds-checked by header.
        let (src, dst, next_header) = unsafe { ((*ip).src, (*ip).dst, (*ip).next_header) };
        let Some(cfg) = config() else {
            return Ok(Verdict::Pass);
        };
        if src != cfg.proxy_v6 {
            return Ok(Verdict::Pass);
        }
        ensure_sent_by_host(ctx, host)?;
        let Some(slot) = cfg.slot_v6(&dst) else {
            return Ok(Verdict::Pass);
        };
        if next_header != IPPROTO_TCP || !reply_tcp_from(ctx, nat::TCP6_OFF, cfg)? {
            return Ok(Verdict::Pass);
        }
        let Some(entry) = MDR_SLOTS_V6
            .get(slot.0)
            .copied()
            .filter(|e| e.ifindex.0 != 0)
        else {
            return Err(no_slot(ctx, slot));
        };
        Ok(nat::return_reply_v6(ctx, cfg, &entry, host))
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
