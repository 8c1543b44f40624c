//! The benchmark's floor for per-packet program cost: an empty TCX program
//! (`r0 = TCX_NEXT; exit`) loaded with the bpf syscall and attached on the
//! same tap as `tap_ingress`, before it, so both run on the same packets
//! and kernel BPF stats measure both. What the empty one costs is the
//! kernel's (dispatch and the stats clock reads); the difference is ours.
//!
//! Raw syscalls rather than aya: aya loads programs from an object file,
//! and two instructions do not deserve a build step.

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::Context as _;

/// The empty program's name, as `bpftool prog show name` finds it.
pub const NAME: &str = "mdr_bench_empty";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_F_BEFORE`: attach in front of the programs already there.
const BPF_F_BEFORE: u32 = 1 << 3;
/// tcx's "go on with the next program".
const TCX_NEXT: i32 = -1;

/// The empty program, attached; detached when dropped.
pub struct EmptyProgram {
    _prog: OwnedFd,
    _links: Vec<OwnedFd>,
}

/// Loads one empty program and attaches it first on the ingress of each
/// of `ifindexes` (one program, so its stats cover all of them).
pub fn attach(ifindexes: &[u32]) -> anyhow::Result<EmptyProgram> {
    let prog = load().context("loading the empty TCX program")?;
    let links = ifindexes
        .iter()
        .map(|&ifindex| {
            link_create(&prog, ifindex)
                .with_context(|| format!("attaching the empty TCX program to ifindex {ifindex}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(EmptyProgram {
        _prog: prog,
        _links: links,
    })
}

/// Two instructions: `r0 = TCX_NEXT` (BPF_ALU64 | BPF_MOV | BPF_K), `exit`.
fn instructions() -> [u64; 2] {
    let mov_r0 = 0xb7u64 | (u64::from(TCX_NEXT as u32) << 32);
    let exit = 0x95u64;
    [mov_r0, exit]
}

fn load() -> anyhow::Result<OwnedFd> {
    let insns = instructions();
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + NAME.len()].copy_from_slice(NAME.as_bytes());
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
