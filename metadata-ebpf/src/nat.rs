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
    helpers::bpf_redirect,
    programs::TcContext,
};
use metadata_common::{DatapathConfig, Ipv4Be, METADATA_PORT, METADATA_V4, PortBe, SlotV4};

use crate::{
    csum,
    parse::{ETH_LEN, EthHdr, Ipv4Hdr, TCP_CHECK_OFF, TcpHdr, header_mut},
    verdict::{Step, Verdict, count},
};

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
/// out of the guest's tap.
#[inline(always)]
pub fn return_reply_v4(
    ctx: &TcContext,
    l4_off: usize,
    cfg: &DatapathConfig,
    slot: &SlotV4,
) -> Step<Verdict> {
    let Some((eth, ip, tcp)) = headers(ctx, l4_off) else {
        return Err(Verdict::DropMalformed);
    };
    eth.dst = slot.guest_mac;
    // Answer from the MAC the guest sent its request to.
    eth.src = if slot.router_mac.is_zero() {
        cfg.host_mac
    } else {
        slot.router_mac
    };
    let rewrite = Rewrite {
        src: (ip.src, METADATA_V4),
        dst: (ip.dst, slot.guest_addr),
        port: (tcp.source, METADATA_PORT),
    };
    ip.src = METADATA_V4;
    ip.dst = slot.guest_addr;
    tcp.source = METADATA_PORT;
    apply(ctx, ip, l4_off, &rewrite)?;
    // SAFETY: bpf_redirect takes plain integers.
    let action = unsafe { bpf_redirect(slot.ifindex.0, 0) };
    let verdict = Verdict::Replied.redirected(action);
    // Replies are counted on the tap they return to.
    count(slot.ifindex, verdict);
    Ok(verdict)
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
