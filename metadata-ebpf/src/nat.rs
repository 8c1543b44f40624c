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
//! Each rewrite reads what it changes first, then writes through
//! [`store`] (never through the header pointers: see `parse`): the
//! Ethernet addresses, the IP addresses (with the IPv4 header checksum
//! updated by hand, in the same store), the port. The TCP checksum goes
//! through `bpf_l4_csum_replace`: with checksum offload the field holds
//! only the pseudo-header sum, and only the helper knows which case
//! applies.

use core::ptr;

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
    parse::{
        ETH_LEN, EthAddrs, EthHdr, IPV4_CHECK_ADDRS_OFF, IPV6_ADDRS_OFF, IPV6_LEN, Ipv4CheckAddrs,
        Ipv4Hdr, Ipv6Addrs, Ipv6Hdr, TCP_CHECK_OFF, TCP_DEST_OFF, TCP_SOURCE_OFF, TcpHdr, header,
        store,
    },
    verdict::{Step, Verdict, count_elsewhere, helper_failed},
};

/// Offset of the TCP header behind an IPv6 header with no extension
/// headers (the only kind steered).
pub const TCP6_OFF: usize = ETH_LEN + IPV6_LEN;

/// What an IPv4 rewrite changes in the IP and TCP headers, before and
/// after; `port_off` says which port (source or destination) inside the
/// TCP header.
struct RewriteV4 {
    src: (Ipv4Be, Ipv4Be),
    dst: (Ipv4Be, Ipv4Be),
    port: (PortBe, PortBe),
    port_off: usize,
}

/// The fields of an already validated IPv4 packet that a rewrite reads.
struct Ipv4Fields {
    eth_src: MacAddr,
    check: [u8; 2],
    src: Ipv4Be,
    dst: Ipv4Be,
    sport: PortBe,
    dport: PortBe,
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
    let old = read_v4(ctx, l4_off).ok_or(Verdict::DropMalformed)?;
    // The host stack only accepts frames addressed to the host device.
    let eth = EthAddrs {
        dst: cfg.host_mac,
        src: old.eth_src,
    };
    let rewrite = RewriteV4 {
        src: (old.src, slot_addr),
        dst: (old.dst, cfg.proxy_v4),
        port: (old.dport, cfg.proxy_port),
        port_off: TCP_DEST_OFF,
    };
    apply_v4(ctx, l4_off, &eth, old.check, &rewrite)?;
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
    let old = read_v4(ctx, l4_off).ok_or(Verdict::DropMalformed)?;
    let eth = EthAddrs {
        dst: slot.guest_mac,
        src: reply_source_mac(cfg, slot.router_mac),
    };
    let rewrite = RewriteV4 {
        src: (old.src, METADATA_V4),
        dst: (old.dst, slot.guest_addr),
        port: (old.sport, METADATA_PORT),
        port_off: TCP_SOURCE_OFF,
    };
    apply_v4(ctx, l4_off, &eth, old.check, &rewrite)
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

/// Reads what an IPv4 rewrite changes, from an already validated packet.
///
/// Returns an `Option`, not a `Result`: header pointers and an error in one
/// `Result` end up sharing a register, which the verifier rejects.
#[inline(always)]
fn read_v4(ctx: &TcContext, l4_off: usize) -> Option<Ipv4Fields> {
    let eth = header::<EthHdr>(ctx, 0)?;
    let ip = header::<Ipv4Hdr>(ctx, ETH_LEN)?;
    let tcp = header::<TcpHdr>(ctx, l4_off)?;
    // SAFETY: each pointer was bounds-checked against data_end just above,
    // and no helper that could move the packet runs in between.
    let (eth, ip, tcp) = unsafe { (&*eth, &*ip, &*tcp) };
    Some(Ipv4Fields {
        eth_src: eth.src,
        check: ip.check,
        src: ip.src,
        dst: ip.dst,
        sport: tcp.source,
        dport: tcp.dest,
    })
}

/// Writes an IPv4 rewrite: the Ethernet addresses, the IP addresses with
/// the header checksum updated from `check`, the port, then the TCP
/// checksum through the helper (skipped for fields that did not change).
#[inline(always)]
fn apply_v4(
    ctx: &TcContext,
    l4_off: usize,
    eth: &EthAddrs,
    check: [u8; 2],
    rewrite: &RewriteV4,
) -> Step<()> {
    let RewriteV4 {
        src,
        dst,
        port,
        port_off,
    } = rewrite;
    let mut check = check;
    csum::replace(&mut check, &src.0.0, &src.1.0);
    csum::replace(&mut check, &dst.0.0, &dst.1.0);
    let addrs = Ipv4CheckAddrs {
        check,
        src: src.1,
        dst: dst.1,
    };
    store(ctx, 0, eth)?;
    store(ctx, IPV4_CHECK_ADDRS_OFF, &addrs)?;
    store(ctx, l4_off + port_off, &port.1)?;
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
    replace_port_csum(ctx, check_off, port)
}

/// Updates the TCP checksum for a new port, if it changed.
#[inline(always)]
fn replace_port_csum(ctx: &TcContext, check_off: usize, port: &(PortBe, PortBe)) -> Step<()> {
    if port.0 != port.1 {
        ctx.l4_csum_replace(check_off, csum::wire2(port.0.0), csum::wire2(port.1.0), 2)
            .map_err(|_| helper_failed(ctx))?;
    }
    Ok(())
}

/// The fields of an already validated IPv6 packet that a rewrite reads.
struct Ipv6Fields {
    eth_src: MacAddr,
    addrs: Ipv6Addrs,
    sport: PortBe,
    dport: PortBe,
}

/// The IPv6 counterpart of [`steer_request_v4`]: the guest's source becomes
/// its slot in the NAT /96, the destination the proxy's IPv6 address.
#[inline(always)]
pub fn steer_request_v6(ctx: &TcContext, cfg: &DatapathConfig, slot_addr: Ipv6Be) -> Step<Verdict> {
    let old = read_v6(ctx).ok_or(Verdict::DropMalformed)?;
    let eth = EthAddrs {
        dst: cfg.host_mac,
        src: old.eth_src,
    };
    let new = Ipv6Addrs {
        src: slot_addr,
        dst: cfg.proxy_v6,
    };
    let port = (old.dport, cfg.proxy_port);
    apply_v6(ctx, &eth, (&old.addrs, &new), port, TCP_DEST_OFF)?;
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
    let old = read_v6(ctx).ok_or(Verdict::DropMalformed)?;
    let eth = EthAddrs {
        dst: slot.guest_mac,
        src: reply_source_mac(cfg, slot.router_mac),
    };
    let new = Ipv6Addrs {
        src: METADATA_V6,
        dst: slot.guest_addr,
    };
    let port = (old.sport, METADATA_PORT);
    apply_v6(ctx, &eth, (&old.addrs, &new), port, TCP_SOURCE_OFF)
}

/// Reads what an IPv6 rewrite changes, from an already validated packet.
#[inline(always)]
fn read_v6(ctx: &TcContext) -> Option<Ipv6Fields> {
    let eth = header::<EthHdr>(ctx, 0)?;
    let ip = header::<Ipv6Hdr>(ctx, ETH_LEN)?;
    let tcp = header::<TcpHdr>(ctx, TCP6_OFF)?;
    // SAFETY: bounds-checked just above; no helper runs in between.
    let (eth, ip, tcp) = unsafe { (&*eth, &*ip, &*tcp) };
    Some(Ipv6Fields {
        eth_src: eth.src,
        addrs: Ipv6Addrs {
            src: ip.src,
            dst: ip.dst,
        },
        sport: tcp.source,
        dport: tcp.dest,
    })
}

/// Writes an IPv6 rewrite (addresses `old` to `new`, the port at
/// `port_off` in the TCP header) and fixes the TCP checksum: one
/// `bpf_csum_diff` over both addresses, one pseudo-header update, one port
/// update.
#[inline(always)]
fn apply_v6(
    ctx: &TcContext,
    eth: &EthAddrs,
    (old, new): (&Ipv6Addrs, &Ipv6Addrs),
    port: (PortBe, PortBe),
    port_off: usize,
) -> Step<()> {
    store(ctx, 0, eth)?;
    store(ctx, IPV6_ADDRS_OFF, new)?;
    store(ctx, TCP6_OFF + port_off, &port.1)?;
    let check_off = TCP6_OFF + TCP_CHECK_OFF;
    if old.src != new.src || old.dst != new.dst {
        // Both are 32 bytes of addresses in wire order, as the helper
        // takes them (it only reads them, despite the `*mut`).
        let (from, to) = (ptr::from_ref(old).cast_mut(), ptr::from_ref(new).cast_mut());
        // SAFETY: two 32-byte stack values, sizes as passed.
        let diff = unsafe { bpf_csum_diff(from.cast(), 32, to.cast(), 32, 0) };
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
    replace_port_csum(ctx, check_off, &port)
}
