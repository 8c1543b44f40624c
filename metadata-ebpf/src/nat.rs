//! The stateless 1:1 NAT between a guest and the host proxy.
//!
//! Request (tap ingress):  guest:sport -> 169.254.169.254:80
//!                    becomes slot:sport -> proxy:proxy_port
//! Reply (host egress):    proxy:proxy_port -> slot:sport
//!                    becomes 169.254.169.254:80 -> guest:sport
//!
//! The slot address is unique per (tap, guest address), so the proxy can
//! tell guests with the same address apart, and the reply needs no
//! connection state: the slot alone says where it goes.
//!
//! Header fields are rewritten in place through direct packet access, and
//! the IPv4 header checksum is updated by hand. The TCP checksum goes
//! through `bpf_l4_csum_replace`: with checksum offload the field holds only
//! the pseudo-header sum, and only the helper knows which case applies.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_diff, bpf_redirect},
    programs::TcContext,
};
use metadata_common::{
    DatapathConfig, Ifindex, Ipv4Be, Ipv6Be, METADATA_PORT, METADATA_V4, METADATA_V6, MacAddr,
    PortBe, SlotV4, SlotV6,
};

use crate::{
    csum,
    parse::{ETH_LEN, EthHdr, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, TCP_CHECK_OFF, TcpHdr, header_mut},
    verdict::{Step, Verdict, count_elsewhere},
};

/// Offset of the TCP header behind an IPv6 header with no extension
/// headers (the only kind steered).
pub const TCP6_OFF: usize = ETH_LEN + IPV6_LEN;

/// The addresses and port a rewrite changes, before and after.
struct Rewrite {
    src: (Ipv4Be, Ipv4Be),
    dst: (Ipv4Be, Ipv4Be),
    port: (PortBe, PortBe),
}

/// Rewrites a registered guest's request to the proxy and redirects it into
/// the host device, as if the host stack had received it there.
#[inline(always)]
pub fn steer_request_v4(
    ctx: &TcContext,
    l4_off: usize,
    cfg: &DatapathConfig,
    slot_addr: Ipv4Be,
) -> Step<Verdict> {
    let Some((eth, ip, tcp)) = headers(ctx, l4_off) else {
        return Err(Verdict::DropMalformed);
    };
    // The host stack only accepts frames addressed to the host device.
    eth.dst = cfg.host_mac;
    let rewrite = Rewrite {
        src: (ip.src, slot_addr),
        dst: (ip.dst, cfg.proxy_v4),
        port: (tcp.dest, cfg.proxy_port),
    };
    ip.src = slot_addr;
    ip.dst = cfg.proxy_v4;
    tcp.dest = cfg.proxy_port;
    apply(ctx, ip, l4_off, &rewrite)?;
    // SAFETY: bpf_redirect takes plain integers.
    let action = unsafe { bpf_redirect(cfg.host_ifindex.0, u64::from(BPF_F_INGRESS)) };
    Ok(Verdict::Steered.redirected(action))
}

/// Rewrites a proxy reply back to what the guest expects and redirects it
/// out of the guest's tap. The outcome, success or failure, is charged to
/// that tap (or to `host` if the tap has no counters), never to both.
#[inline(always)]
pub fn return_reply_v4(
    ctx: &TcContext,
    l4_off: usize,
    cfg: &DatapathConfig,
    slot: &SlotV4,
    host: Ifindex,
) -> Verdict {
    let verdict = match rewrite_reply_v4(ctx, l4_off, cfg, slot) {
        Ok(()) => redirect_to_tap(slot.ifindex),
        Err(verdict) => verdict,
    };
    count_elsewhere(slot.ifindex, host, verdict)
}

#[inline(always)]
fn rewrite_reply_v4(
    ctx: &TcContext,
    l4_off: usize,
    cfg: &DatapathConfig,
    slot: &SlotV4,
) -> Step<()> {
    let Some((eth, ip, tcp)) = headers(ctx, l4_off) else {
        return Err(Verdict::DropMalformed);
    };
    eth.dst = slot.guest_mac;
    eth.src = reply_source_mac(cfg, slot.router_mac);
    let rewrite = Rewrite {
        src: (ip.src, METADATA_V4),
        dst: (ip.dst, slot.guest_addr),
        port: (tcp.source, METADATA_PORT),
    };
    ip.src = METADATA_V4;
    ip.dst = slot.guest_addr;
    tcp.source = METADATA_PORT;
    apply(ctx, ip, l4_off, &rewrite)
}

/// Answer from the MAC the guest sent its request to (ours until the
/// request taught the slot otherwise).
#[inline(always)]
fn reply_source_mac(cfg: &DatapathConfig, router_mac: MacAddr) -> MacAddr {
    if router_mac.is_zero() {
        cfg.host_mac
    } else {
        router_mac
    }
}

/// Redirects the packet out of `tap`, towards its guest.
#[inline(always)]
fn redirect_to_tap(tap: Ifindex) -> Verdict {
    // SAFETY: bpf_redirect takes plain integers.
    let action = unsafe { bpf_redirect(tap.0, 0) };
    Verdict::Replied.redirected(action)
}

/// The Ethernet, IPv4 and TCP headers of an already validated packet.
///
/// Returns an `Option`, not a `Result`: a `Result` of references would
/// store its error in the same register as a packet pointer, and the
/// verifier rejects the program when it follows that path.
#[inline(always)]
fn headers<'a>(
    ctx: &TcContext,
    l4_off: usize,
) -> Option<(&'a mut EthHdr, &'a mut Ipv4Hdr, &'a mut TcpHdr)> {
    let eth = header_mut::<EthHdr>(ctx, 0)?;
    let ip = header_mut::<Ipv4Hdr>(ctx, ETH_LEN)?;
    let tcp = header_mut::<TcpHdr>(ctx, l4_off)?;
    // SAFETY: each pointer was bounds-checked against data_end just above,
    // and no helper that could move the packet runs before they are used.
    Some(unsafe { (&mut *eth, &mut *ip, &mut *tcp) })
}

/// Fixes the IPv4 header checksum in place, then the TCP checksum through
/// the helper. Helper calls are skipped for fields that did not change.
#[inline(always)]
fn apply(ctx: &TcContext, ip: &mut Ipv4Hdr, l4_off: usize, rewrite: &Rewrite) -> Step<()> {
    let Rewrite { src, dst, port } = rewrite;
    csum::replace(&mut ip.check, &src.0.0, &src.1.0);
    csum::replace(&mut ip.check, &dst.0.0, &dst.1.0);
    // From here on `ip` must not be touched: the helpers may move the data.
    let check_off = l4_off + TCP_CHECK_OFF;
    let pseudo = u64::from(BPF_F_PSEUDO_HDR);
    for (old, new) in [src, dst] {
        if old != new {
            ctx.l4_csum_replace(
                check_off,
                csum::wire4(old.0),
                csum::wire4(new.0),
                pseudo | 4,
            )
            .map_err(|_| helper_failed(ctx))?;
        }
    }
    if port.0 != port.1 {
        ctx.l4_csum_replace(check_off, csum::wire2(port.0.0), csum::wire2(port.1.0), 2)
            .map_err(|_| helper_failed(ctx))?;
    }
    Ok(())
}

#[inline(always)]
fn helper_failed(ctx: &TcContext) -> Verdict {
    if crate::log::allow(crate::log::Event::HelperFailed) {
        aya_log_ebpf::warn!(ctx, "bpf_l4_csum_replace failed; packet dropped");
    }
    Verdict::DropError
}

/// The IPv6 counterpart of [`steer_request_v4`]: the guest's source becomes
/// its slot in the NAT /96, the destination the proxy's IPv6 address.
#[inline(always)]
pub fn steer_request_v6(ctx: &TcContext, cfg: &DatapathConfig, slot_addr: Ipv6Be) -> Step<Verdict> {
    let Some((eth, ip, tcp)) = headers_v6(ctx) else {
        return Err(Verdict::DropMalformed);
    };
    eth.dst = cfg.host_mac;
    let old = (ip.src, ip.dst, tcp.dest);
    ip.src = slot_addr;
    ip.dst = cfg.proxy_v6;
    tcp.dest = cfg.proxy_port;
    apply_v6(ctx, old, (slot_addr, cfg.proxy_v6, cfg.proxy_port))?;
    // SAFETY: bpf_redirect takes plain integers.
    let action = unsafe { bpf_redirect(cfg.host_ifindex.0, u64::from(BPF_F_INGRESS)) };
    Ok(Verdict::Steered.redirected(action))
}

/// The IPv6 counterpart of [`return_reply_v4`].
#[inline(always)]
pub fn return_reply_v6(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    slot: &SlotV6,
    host: Ifindex,
) -> Verdict {
    let verdict = match rewrite_reply_v6(ctx, cfg, slot) {
        Ok(()) => redirect_to_tap(slot.ifindex),
        Err(verdict) => verdict,
    };
    count_elsewhere(slot.ifindex, host, verdict)
}

#[inline(always)]
fn rewrite_reply_v6(ctx: &TcContext, cfg: &DatapathConfig, slot: &SlotV6) -> Step<()> {
    let Some((eth, ip, tcp)) = headers_v6(ctx) else {
        return Err(Verdict::DropMalformed);
    };
    eth.dst = slot.guest_mac;
    eth.src = reply_source_mac(cfg, slot.router_mac);
    let old = (ip.src, ip.dst, tcp.source);
    ip.src = METADATA_V6;
    ip.dst = slot.guest_addr;
    tcp.source = METADATA_PORT;
    apply_v6(ctx, old, (METADATA_V6, slot.guest_addr, METADATA_PORT))
}

/// The Ethernet, IPv6 and TCP headers of an already validated packet.
#[inline(always)]
fn headers_v6<'a>(ctx: &TcContext) -> Option<(&'a mut EthHdr, &'a mut Ipv6Hdr, &'a mut TcpHdr)> {
    let eth = header_mut::<EthHdr>(ctx, 0)?;
    let ip = header_mut::<Ipv6Hdr>(ctx, ETH_LEN)?;
    let tcp = header_mut::<TcpHdr>(ctx, TCP6_OFF)?;
    // SAFETY: bounds-checked just above; no helper runs before use.
    Some(unsafe { (&mut *eth, &mut *ip, &mut *tcp) })
}

/// Fixes the TCP checksum for new IPv6 addresses and port: one
/// `bpf_csum_diff` over both addresses, one pseudo-header update, one port
/// update.
#[inline(always)]
fn apply_v6(
    ctx: &TcContext,
    old: (Ipv6Be, Ipv6Be, PortBe),
    new: (Ipv6Be, Ipv6Be, PortBe),
) -> Step<()> {
    let check_off = TCP6_OFF + TCP_CHECK_OFF;
    if old.0 != new.0 || old.1 != new.1 {
        let mut from = [0u32; 8];
        let mut to = [0u32; 8];
        words(&mut from, &old.0, &old.1);
        words(&mut to, &new.0, &new.1);
        // SAFETY: both buffers are 32-byte stack arrays, as passed.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 32, to.as_mut_ptr(), 32, 0) };
        if diff < 0 {
            return Err(helper_failed(ctx));
        }
        ctx.l4_csum_replace(
            check_off,
            0,
            diff as u32 as u64,
            u64::from(BPF_F_PSEUDO_HDR),
        )
        .map_err(|_| helper_failed(ctx))?;
    }
    if old.2 != new.2 {
        ctx.l4_csum_replace(check_off, csum::wire2(old.2.0), csum::wire2(new.2.0), 2)
            .map_err(|_| helper_failed(ctx))?;
    }
    Ok(())
}

/// Two addresses as eight 32-bit words in memory order.
#[inline(always)]
fn words(out: &mut [u32; 8], a: &Ipv6Be, b: &Ipv6Be) {
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([a.0[4 * i], a.0[4 * i + 1], a.0[4 * i + 2], a.0[4 * i + 3]]);
        out[i + 4] =
            u32::from_ne_bytes([b.0[4 * i], b.0[4 * i + 1], b.0[4 * i + 2], b.0[4 * i + 3]]);
        i += 1;
    }
}
