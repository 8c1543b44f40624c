//! Map entries as bytes, for carrying a pinned map over to a map of a
//! newer layout whose key and value types this build no longer has.
//!
//! aya's typed maps need the Rust types of key and value, and an older
//! build's types are gone; it offers no untyped access. Three commands of
//! `bpf(2)` (get next key, lookup, update) on byte buffers are all a copy
//! needs, so they are written here rather than pulling in libbpf.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The part of `union bpf_attr` the element commands read.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value` for lookup and update, `next_key` for get-next-key.
    value: u64,
    flags: u64,
}

impl ElemAttr {
    fn new(map: BorrowedFd<'_>, key: *const u8, value: *const u8) -> Self {
        Self {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as u64,
            value: value as u64,
            flags: 0,
        }
    }
}

fn bpf(cmd: libc::c_long, attr: &ElemAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for these commands and
    // outlives the call; the kernel reads and writes only the buffers it
    // points to, whose sizes the callers match to the map's.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A map's element sizes, as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub key: usize,
    pub value: usize,
    /// Per-CPU maps hold one value per possible CPU, each padded to 8
    /// bytes; `None` for a shared value.
    pub cpus: Option<usize>,
}

impl Sizes {
    /// The stride of one CPU's value in a per-CPU buffer.
    fn stride(&self) -> usize {
        if self.cpus.is_some() {
            self.value.next_multiple_of(8)
        } else {
            self.value
        }
    }

    /// The size of the buffer a lookup fills.
    fn buffer(&self) -> usize {
        self.stride() * self.cpus.unwrap_or(1)
    }
}

/// Copies every entry of `from` into `to`: each key as it is, each value
/// (each CPU's, for per-CPU maps) as the prefix of the new value, the rest
/// zero. The caller has checked that keys are the same size and values
/// only grew. Returns how many entries were copied.
pub fn carry(
    from: BorrowedFd<'_>,
    from_sizes: Sizes,
    to: BorrowedFd<'_>,
    to_sizes: Sizes,
) -> io::Result<usize> {
    let mut key: Option<Vec<u8>> = None;
    let mut next = vec![0u8; from_sizes.key];
    let mut old = vec![0u8; from_sizes.buffer()];
    let mut new = vec![0u8; to_sizes.buffer()];
    let mut copied = 0;
    loop {
        // No key yet: the kernel answers with the first one. The buffers
        // the kernel writes are passed as `as_mut_ptr`, for write access.
        let first = std::ptr::null();
        let attr = ElemAttr::new(
            from,
            key.as_ref().map_or(first, Vec::as_ptr),
            next.as_mut_ptr(),
        );
        match bpf(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(copied),
            Err(err) => return Err(err),
        }
        let current = key.insert(next.clone());
        let lookup = ElemAttr::new(from, current.as_ptr(), old.as_mut_ptr());
        match bpf(BPF_MAP_LOOKUP_ELEM, &lookup) {
            Ok(()) => {}
            // Deleted meanwhile (the old programs still run): skip it.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(err) => return Err(err),
        }
        widen(&old, from_sizes, &mut new, to_sizes);
        let update = ElemAttr::new(to, current.as_ptr(), new.as_ptr());
        bpf(BPF_MAP_UPDATE_ELEM, &update)?;
        copied += 1;
    }
}

/// Lays `old` (one value per CPU, or one) out as `new`: each value the
/// prefix of its new slot, the rest zero.
fn widen(old: &[u8], from: Sizes, new: &mut [u8], to: Sizes) {
    new.fill(0);
    let cpus = from.cpus.unwrap_or(1).min(to.cpus.unwrap_or(1));
    let len = from.value.min(to.value);
    for cpu in 0..cpus {
        let src = &old[cpu * from.stride()..][..len];
        new[cpu * to.stride()..][..len].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_value_becomes_the_prefix_of_the_longer_one() {
        let from = Sizes {
            key: 4,
            value: 3,
            cpus: None,
        };
        let to = Sizes { value: 5, ..from };
        let mut new = vec![9u8; to.buffer()];
        widen(&[1, 2, 3], from, &mut new, to);
        assert_eq!(new, [1, 2, 3, 0, 0]);
    }

    #[test]
    fn each_cpus_value_keeps_its_padded_stride() {
        // 12-byte values pad to 16; 20-byte values to 24.
        let from = Sizes {
            key: 4,
            value: 12,
            cpus: Some(2),
        };
        let to = Sizes { value: 20, ..from };
        let old: Vec<u8> = (0..32).collect();
        let mut new = vec![9u8; to.buffer()];
        widen(&old, from, &mut new, to);
        assert_eq!(new.len(), 48);
        assert_eq!(new[..12], old[..12]);
        assert!(new[12..24].iter().all(|b| *b == 0));
        assert_eq!(new[24..36], old[16..28]);
        assert!(new[36..].iter().all(|b| *b == 0));
    }
}
