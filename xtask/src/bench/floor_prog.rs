//! The benchmark's floors for per-packet program cost, loaded with the bpf
//! syscall and attached on the same taps as `tap_ingress`, before it, so
//! that all of them run on the same packets and kernel BPF stats measure
//! each:
//!
//! - [`Floor::Empty`] (`r0 = TCX_NEXT; exit`): what the kernel costs
//!   (dispatch and the stats clock reads);
//! - [`Floor::Peek`]: the least any program deciding "not metadata
//!   traffic" must do: bounds-check the headers, read the EtherType and
//!   the IPv4 destination, compare both. What it costs above the empty
//!   program is touching the packet; what `tap_ingress` costs above it is
//!   our own work.
//!
//! Raw syscalls rather than aya: aya loads programs from an object file,
//! and a dozen instructions do not deserve a build step.

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::Context as _;

/// A floor program.
#[derive(Debug, Clone, Copy)]
pub enum Floor {
    Empty,
    Peek,
}

impl Floor {
    /// Its name, as `bpftool prog show name` finds it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Empty => "mdr_bench_empty",
            Self::Peek => "mdr_bench_peek",
        }
    }

    fn instructions(self) -> Vec<u64> {
        match self {
            Self::Empty => vec![mov_imm(0, TCX_NEXT), EXIT],
            Self::Peek => peek_instructions(),
        }
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_F_BEFORE`: attach in front of the programs already there.
const BPF_F_BEFORE: u32 = 1 << 3;
/// tcx's "go on with the next program".
const TCX_NEXT: i32 = -1;

/// A floor program, attached; detached when dropped.
pub struct FloorProgram {
    _prog: OwnedFd,
    _links: Vec<OwnedFd>,
}

/// Loads `floor` and attaches it first on the ingress of each of
/// `ifindexes` (one program, so its stats cover all of them).
pub fn attach(floor: Floor, ifindexes: &[u32]) -> anyhow::Result<FloorProgram> {
    let prog = load(floor).with_context(|| format!("loading {}", floor.name()))?;
    let links = ifindexes
        .iter()
        .map(|&ifindex| {
            link_create(&prog, ifindex)
                .with_context(|| format!("attaching {} to ifindex {ifindex}", floor.name()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(FloorProgram {
        _prog: prog,
        _links: links,
    })
}

/// `__sk_buff` offsets of `data` and `data_end`.
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// Ethernet + IPv4 header, the IPv4 destination's offset in the frame,
/// and the two values compared (as a little-endian load reads them).
const ETH_IPV4_LEN: i32 = 34;
const IPV4_DST: i16 = 30;
const ETH_P_IP_LE: i32 = 0x0008;
const METADATA_V4_LE: u32 = 0xfea9_fea9;

/// `r2 = data; r3 = data_end; if data + 34 > data_end: pass;
/// if EtherType != IPv4: pass; if dst != 169.254.169.254: pass; pass`.
fn peek_instructions() -> Vec<u64> {
    vec![
        load_mem(0x61, 2, 1, SKB_DATA),
        load_mem(0x61, 3, 1, SKB_DATA_END),
        insn(0xbf, 4, 2, 0, 0), // r4 = r2
        insn(0x07, 4, 0, 0, ETH_IPV4_LEN),
        insn(0x2d, 4, 3, 6, 0), // if r4 > r3 goto pass
        load_mem(0x69, 5, 2, 12),
        insn(0x56, 5, 0, 4, ETH_P_IP_LE), // if (u32)r5 != IPv4 goto pass
        load_mem(0x61, 5, 2, IPV4_DST),
        insn(0x56, 5, 0, 2, METADATA_V4_LE as i32),
        mov_imm(0, TCX_NEXT), // metadata traffic: also passed here
        EXIT,
        mov_imm(0, TCX_NEXT), // pass
        EXIT,
    ]
}

/// One instruction: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst | (src << 4)) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// `dst = *(size *)(src + off)` (BPF_LDX | BPF_MEM | size).
fn load_mem(code: u8, dst: u8, src: u8, off: i16) -> u64 {
    insn(code, dst, src, off, 0)
}

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
fn mov_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}

const EXIT: u64 = 0x95;

fn load(floor: Floor) -> anyhow::Result<OwnedFd> {
    let insns = floor.instructions();
    let name = floor.name();
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    put_u32(&mut attr, 68, BPF_TCX_INGRESS);
    bpf(BPF_PROG_LOAD, &mut attr)
}

fn link_create(prog: &OwnedFd, ifindex: u32) -> anyhow::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_TCX_INGRESS);
    put_u32(&mut attr, 12, BPF_F_BEFORE);
    bpf(BPF_LINK_CREATE, &mut attr)
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> anyhow::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed bpf_attr of the size passed, with the
    // fields of `cmd` filled in; the pointers in it outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf syscall");
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put_u32(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}
