//! The eBPF object as the daemon loads it: with the values of
//! `metadata_common::load_time` written into its instructions.
//!
//! aya offers load-time globals only as map values (`.rodata`), and a map
//! value is the memory read this exists to avoid on every passed packet.
//! So the loader patches the instructions itself: each value is an
//! `ld_imm64` whose upper immediate is its tag, found by scanning the
//! program sections.

use metadata_common::{
    DatapathConfig,
    load_time::{self, COUNT},
};
use object::{Object as _, ObjectSection as _, SectionKind};

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("reading the eBPF object: {0}")]
    Parse(#[from] object::Error),
    #[error(
        "the eBPF object has no load-time value tagged {tag:#x} (built from other sources than \
         this daemon?)"
    )]
    MissingTag { tag: u32 },
}

/// An eBPF object in 8-byte aligned memory: the ELF reader reads its
/// headers in place, and a plain `Vec<u8>` promises no alignment.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl std::fmt::Debug for AlignedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedObject")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl AlignedObject {
    fn copy_of(bytes: &[u8]) -> Self {
        let words = bytes
            .chunks(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                u64::from_ne_bytes(word)
            })
            .collect();
        Self {
            words,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes, and u8
        // has no alignment or validity requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, through the unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// `object` with the load-time values of `entry` written in; `None`
/// leaves every value zero, which turns the tap program's fast path off.
/// Fails when a value's tag is missing from the object.
pub fn with_load_time_values(
    object: &[u8],
    entry: Option<&DatapathConfig>,
) -> Result<AlignedObject, ObjectError> {
    let mut aligned = AlignedObject::copy_of(object);
    let Some(entry) = entry else {
        return Ok(aligned);
    };
    let values = load_time::values(&entry.reserved_v4_addrs(), &entry.nat_prefix_v6());
    let texts = program_sections(aligned.bytes())?;
    let mut found = [0usize; COUNT];
    for range in texts {
        patch(&mut aligned.bytes_mut()[range], &values, &mut found);
    }
    if let Some(i) = found.iter().position(|&n| n == 0) {
        return Err(ObjectError::MissingTag { tag: values[i].0 });
    }
    Ok(aligned)
}

/// Where the program sections (code) lie in the file.
fn program_sections(bytes: &[u8]) -> Result<Vec<std::ops::Range<usize>>, ObjectError> {
    let file = object::File::parse(bytes)?;
    Ok(file
        .sections()
        .filter(|section| section.kind() == SectionKind::Text)
        .filter_map(|section| section.file_range())
        .map(|(offset, size)| offset as usize..(offset + size) as usize)
        .collect())
}

/// `BPF_LD | BPF_IMM | BPF_DW`: the first half of an `ld_imm64`.
const LD_IMM64: u8 = 0x18;
const INSN_LEN: usize = 8;

/// Writes each tagged placeholder's value in `text` (instructions,
/// little-endian), counting them per value in `found`.
fn patch(text: &mut [u8], values: &[(u32, u32); COUNT], found: &mut [usize; COUNT]) {
    let mut at = 0;
    while at + 2 * INSN_LEN <= text.len() {
        let insn = &text[at..at + 2 * INSN_LEN];
        // A plain constant: no pseudo source register (map references
        // have one).
        if insn[0] != LD_IMM64 || insn[1] >> 4 != 0 {
            at += INSN_LEN;
            continue;
        }
        let low = imm(insn, 4);
        let high = imm(insn, INSN_LEN + 4);
        if low == 0
            && let Some(i) = values.iter().position(|&(tag, _)| tag == high)
        {
            text[at + 4..at + 8].copy_from_slice(&values[i].1.to_le_bytes());
            text[at + INSN_LEN + 4..at + 2 * INSN_LEN].fill(0);
            found[i] += 1;
        }
        at += 2 * INSN_LEN;
    }
}

fn imm(insn: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([insn[at], insn[at + 1], insn[at + 2], insn[at + 3]])
}

#[cfg(test)]
mod tests {
    use metadata_common::{Ipv4Be, Ipv6Be};

    use super::*;
    use crate::datapath::EBPF_OBJECT;

    fn entry() -> DatapathConfig {
        DatapathConfig {
            nat_v4_base: Ipv4Be([100, 64, 0, 0]),
            nat_v4_size: 1 << 22,
            proxy_v4: Ipv4Be([169, 254, 169, 254]),
            nat_v6_base: Ipv6Be([
                0xfd, 0, 0xa9, 0xfe, 0x64, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]),
            ..DatapathConfig::default()
        }
    }

    fn values() -> [(u32, u32); COUNT] {
        let entry = entry();
        load_time::values(&entry.reserved_v4_addrs(), &entry.nat_prefix_v6())
    }

    /// Counts of each of `values`' tags still in the object's code.
    fn tags_left(object: &[u8], values: &[(u32, u32); COUNT]) -> [usize; COUNT] {
        let mut copy = AlignedObject::copy_of(object);
        let mut found = [0; COUNT];
        for range in program_sections(copy.bytes()).unwrap() {
            patch(&mut copy.bytes_mut()[range], values, &mut found);
        }
        found
    }

    #[test]
    fn every_value_is_written_and_no_tag_is_left() {
        let values = values();
        assert!(
            tags_left(EBPF_OBJECT, &values).iter().all(|&n| n > 0),
            "the built object carries every tag"
        );
        let patched = with_load_time_values(EBPF_OBJECT, Some(&entry())).unwrap();
        assert_eq!(tags_left(patched.bytes(), &values), [0; COUNT]);
        assert_eq!(patched.bytes().len(), EBPF_OBJECT.len());
    }

    #[test]
    fn the_value_lands_in_the_lower_half_and_the_tag_is_cleared() {
        let tag = load_time::NAT_V4_SIZE;
        let mut text = [0u8; 24];
        text[0] = LD_IMM64;
        text[12..16].copy_from_slice(&tag.to_le_bytes());
        text[16] = 0x95; // exit
        let mut values = values();
        values[2] = (tag, 0xdead_beef);
        let mut found = [0; COUNT];
        patch(&mut text, &values, &mut found);
        assert_eq!(imm(&text, 4), 0xdead_beef);
        assert_eq!(imm(&text, 12), 0);
        assert_eq!(found[2], 1);
    }

    #[test]
    fn a_map_reference_or_a_set_lower_half_is_not_a_placeholder() {
        let tag = load_time::FAST_PATH;
        let mut map_ref = [0u8; 16];
        map_ref[0] = LD_IMM64;
        map_ref[1] = 1 << 4; // BPF_PSEUDO_MAP_FD
        map_ref[12..16].copy_from_slice(&tag.to_le_bytes());
        let mut constant = map_ref;
        constant[1] = 0;
        constant[4] = 7;
        let values = values();
        for mut text in [map_ref, constant] {
            let before = text;
            let mut found = [0; COUNT];
            patch(&mut text, &values, &mut found);
            assert_eq!((text, found), (before, [0; COUNT]));
        }
    }

    #[test]
    fn an_object_without_a_tag_is_refused_by_name() {
        // A valid ELF with no program code at all: this test binary is not
        // one, so take the object and blank its program sections.
        let mut object = AlignedObject::copy_of(EBPF_OBJECT);
        for range in program_sections(object.bytes()).unwrap() {
            object.bytes_mut()[range].fill(0);
        }
        let err = with_load_time_values(object.bytes(), Some(&entry())).expect_err("refused");
        assert!(
            err.to_string()
                .contains(&format!("{:#x}", load_time::FAST_PATH)),
            "{err}"
        );
    }

    #[test]
    fn without_values_the_object_is_unchanged() {
        let object = with_load_time_values(EBPF_OBJECT, None).unwrap();
        assert_eq!(object.bytes(), EBPF_OBJECT);
    }
}
