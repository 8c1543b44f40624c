//! Packet fixtures for the BPF_PROG_TEST_RUN tests: builders for the
//! frames a guest or the host stack sends, and checksum verification for
//! what the programs write back.

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// One's complement sum of 16-bit big-endian words.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// An Ethernet frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Options of an IPv4 packet beyond addresses and protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ipv4Opts {
    /// Words of IP options (each 4 bytes of NOPs).
    pub option_words: u8,
    /// Raw flags+fragment offset field.
    pub frag_off: u16,
}

/// An IPv4 packet with a correct header checksum.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: &[u8], opts: Ipv4Opts) -> Vec<u8> {
    let header_len = 20 + 4 * usize::from(opts.option_words);
    let total = header_len + payload.len();
    let mut packet = vec![0u8; header_len];
    packet[0] = 0x40 | (header_len / 4) as u8;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    packet[6..8].copy_from_slice(&opts.frag_off.to_be_bytes());
    packet[8] = 64;
    packet[9] = protocol;
    packet[12..16].copy_from_slice(&src);
    packet[16..20].copy_from_slice(&dst);
    for byte in &mut packet[20..] {
        *byte = 1; // NOP options
    }
    let check = checksum(&packet);
    packet[10..12].copy_from_slice(&check.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// A TCP segment (SYN unless `payload` is non-empty) with a correct
/// checksum over the IPv4 pseudo-header.
pub fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut segment = tcp_segment((sport, dport), payload);
    let check = tcp_checksum(src, dst, &segment);
    segment[16..18].copy_from_slice(&check.to_be_bytes());
    segment
}

/// A TCP segment with its checksum field zero: a SYN without payload, a
/// PSH/ACK with one.
fn tcp_segment(ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[0..2].copy_from_slice(&ports.0.to_be_bytes());
    segment[2..4].copy_from_slice(&ports.1.to_be_bytes());
    segment[4..8].copy_from_slice(&1000u32.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = if payload.is_empty() { 0x02 } else { 0x18 };
    segment[14..16].copy_from_slice(&64240u16.to_be_bytes());
    segment.extend_from_slice(payload);
    segment
}

fn tcp_checksum(src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum16(segment, sum16(&pseudo, 0)))
}

/// A whole Ethernet/IPv4/TCP frame.
pub fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    payload: &[u8],
    opts: Ipv4Opts,
) -> Vec<u8> {
    let segment = tcp(src, dst, ports.0, ports.1, payload);
    ethernet(macs.0, macs.1, ETH_P_IP, &ipv4(src, dst, 6, &segment, opts))
}

/// An ARP request: who has `target`, tell `sender_ip`.
pub fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&1u16.to_be_bytes());
    arp.extend_from_slice(&ETH_P_IP.to_be_bytes());
    arp.extend_from_slice(&[6, 4]);
    arp.extend_from_slice(&1u16.to_be_bytes());
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender_ip);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target);
    ethernet([0xff; 6], sender_mac, ETH_P_ARP, &arp)
}

/// An ARP reply: `sender_ip` is at `sender_mac`, told to the target.
pub fn arp_reply(sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> Vec<u8> {
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&1u16.to_be_bytes());
    arp.extend_from_slice(&ETH_P_IP.to_be_bytes());
    arp.extend_from_slice(&[6, 4]);
    arp.extend_from_slice(&2u16.to_be_bytes());
    arp.extend_from_slice(&sender.0);
    arp.extend_from_slice(&sender.1);
    arp.extend_from_slice(&target.0);
    arp.extend_from_slice(&target.1);
    ethernet(target.0, sender.0, ETH_P_ARP, &arp)
}

/// A parsed view of an Ethernet/IPv4/TCP frame, for assertions.
#[derive(Debug, PartialEq, Eq)]
pub struct TcpView {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ip_checksum_ok: bool,
    pub tcp_checksum_ok: bool,
    pub payload: Vec<u8>,
}

/// Parses a frame built by [`tcp_frame`] (or rewritten from one).
pub fn parse_tcp_frame(frame: &[u8]) -> TcpView {
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let segment = &ip[header_len..total];
    let src: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
    let dst: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
    TcpView {
        dst_mac: frame[0..6].try_into().expect("6 bytes"),
        src_mac: frame[6..12].try_into().expect("6 bytes"),
        src,
        dst,
        sport: u16::from_be_bytes([segment[0], segment[1]]),
        dport: u16::from_be_bytes([segment[2], segment[3]]),
        ip_checksum_ok: checksum(&ip[..header_len]) == 0,
        tcp_checksum_ok: tcp_checksum(src, dst, segment) == 0,
        payload: segment[20..].to_vec(),
    }
}

/// An IPv6 packet (no extension headers unless in `payload`).
pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    packet.push(next_header);
    packet.push(hop_limit);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    packet.extend_from_slice(payload);
    packet
}

/// The checksum of an upper-layer payload over the IPv6 pseudo-header.
pub fn checksum_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    !fold(sum16(payload, sum16(&pseudo, 0)))
}

/// A whole Ethernet/IPv6/TCP frame with a correct checksum.
pub fn tcp6_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut segment = tcp_segment(ports, payload);
    let check = checksum_v6(src, dst, 6, &segment);
    segment[16..18].copy_from_slice(&check.to_be_bytes());
    ethernet(macs.0, macs.1, ETH_P_IPV6, &ipv6(src, dst, 6, 64, &segment))
}

/// A parsed Ethernet/IPv6/TCP frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Tcp6View {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub checksum_ok: bool,
}

pub fn parse_tcp6_frame(frame: &[u8]) -> Tcp6View {
    let ip = &frame[14..];
    let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
    let segment = &ip[40..];
    Tcp6View {
        dst_mac: frame[0..6].try_into().expect("6 bytes"),
        src_mac: frame[6..12].try_into().expect("6 bytes"),
        src,
        dst,
        sport: u16::from_be_bytes([segment[0], segment[1]]),
        dport: u16::from_be_bytes([segment[2], segment[3]]),
        checksum_ok: checksum_v6(src, dst, 6, segment) == 0,
    }
}

/// A Neighbour Solicitation for `target` from `src` (with the source
/// link-layer address option), sent to the solicited-node address.
pub fn neighbor_solicitation(src_mac: [u8; 6], src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut dst = [0u8; 16];
    dst[..2].copy_from_slice(&[0xff, 0x02]);
    dst[11] = 1;
    dst[12] = 0xff;
    dst[13..].copy_from_slice(&target[13..]);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src_mac);
    let check = checksum_v6(src, dst, 58, &icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut mcast_mac = [0x33, 0x33, 0, 0, 0, 0];
    mcast_mac[2..].copy_from_slice(&dst[12..]);
    ethernet(
        mcast_mac,
        src_mac,
        ETH_P_IPV6,
        &ipv6(src, dst, 58, 255, &icmp),
    )
}

/// A solicited Neighbour Advertisement for `target` at `target_mac`, from
/// `target` to `asker`, with the target link-layer address option.
pub fn neighbor_advertisement(asker: ([u8; 6], [u8; 16]), target: ([u8; 6], [u8; 16])) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&target.1);
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&target.0);
    let check = checksum_v6(target.1, asker.1, 58, &icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    ethernet(
        asker.0,
        target.0,
        ETH_P_IPV6,
        &ipv6(target.1, asker.1, 58, 255, &icmp),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        let frame = tcp_frame(
            ([2; 6], [4; 6]),
            [10, 0, 0, 5],
            [169, 254, 169, 254],
            (40000, 80),
            b"GET / HTTP/1.1\r\n\r\n",
            Ipv4Opts {
                option_words: 2,
                frag_off: 0,
            },
        );
        let view = parse_tcp_frame(&frame);
        assert!(view.ip_checksum_ok && view.tcp_checksum_ok, "{view:?}");
        assert_eq!(view.dport, 80);
        assert_eq!(view.payload, b"GET / HTTP/1.1\r\n\r\n");
    }
}
