//! Incremental Internet checksum updates (RFC 1624, eqn. 3).
//!
//! Only the IPv4 header checksum (and the Neighbour Advertisement's, built
//! from scratch) is computed here, with no helper call. TCP checksums go through `bpf_l4_csum_replace`, which alone knows
//! whether the skb carries a full checksum or a partial (offloaded) one.

/// Replaces `old` by `new` under the checksum `check` (all in network
/// order). Both slices must have an even length.
#[inline(always)]
pub fn replace(check: &mut [u8; 2], old: &[u8], new: &[u8]) {
    let mut sum = u32::from(!u16::from_ne_bytes(*check));
    // Bounded: callers pass 4-byte addresses or 2-byte ports.
    let mut i = 0;
    while i + 1 < old.len() && i + 1 < new.len() {
        sum += u32::from(!u16::from_ne_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_ne_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    *check = (!fold(sum)).to_ne_bytes();
}

/// Folds a 32-bit one's complement sum to 16 bits. Two folds suffice for any
/// sum of fewer than 65,537 16-bit words.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The value `bpf_l4_csum_replace` expects for a 4-byte field: the bytes as
/// they lie in memory.
#[inline(always)]
pub fn wire4(bytes: [u8; 4]) -> u64 {
    u64::from(u32::from_ne_bytes(bytes))
}

/// The value `bpf_l4_csum_replace` expects for a 2-byte field.
#[inline(always)]
pub fn wire2(bytes: [u8; 2]) -> u64 {
    u64::from(u16::from_ne_bytes(bytes))
}

/// One's complement sum of 16-bit words (memory order) of `bytes`, added
/// to `sum`. Bounded: callers pass fixed-size arrays.
#[inline(always)]
pub fn add_words(sum: u32, bytes: &[u8]) -> u32 {
    let mut sum = sum;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The checksum field value for a one's complement `sum`.
#[inline(always)]
pub fn finish(sum: u32) -> [u8; 2] {
    (!fold(sum)).to_ne_bytes()
}
