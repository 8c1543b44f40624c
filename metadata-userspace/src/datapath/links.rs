//! TCX links: created and pinned (many at once), given a new program,
//! and removed. A link belongs to its file descriptor; pinned on the
//! bpffs it outlives the daemon, so the programs stay attached (and
//! metadata fails closed) while no daemon runs.
//!
//! Creating a TCX link waits for an RCU grace period in the kernel (8-21 ms
//! here). aya attaches through `&mut SchedClassifier`, one at a time, so a
//! burst of 500 taps took about 5 s. New links are therefore created here
//! with BPF_LINK_CREATE and pinned with BPF_OBJ_PIN from a pool of threads
//! that share the program's descriptor, overlapping those waits. aya has no
//! public way to wrap a link fd it did not create, and no other maintained
//! crate covers these two commands, so they are the two raw syscalls below.

use std::{
    collections::BTreeSet,
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};
use log::warn;
use metadata_common::{Ifindex, pins};

use super::DatapathError;

/// Threads creating links at once: enough to overlap the kernel's grace
/// periods, few enough not to matter on a small host.
const ATTACH_THREADS: usize = 16;

// From the kernel's uapi/linux/bpf.h.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;

/// The pin of `tap`'s link under the links folder `dir`.
pub fn tap_pin(dir: &Path, tap: Ifindex) -> PathBuf {
    dir.join(pins::tap_link(tap))
}

/// The taps with a link pinned in `dir`.
pub fn pinned_taps(dir: &Path) -> Result<BTreeSet<Ifindex>, DatapathError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DatapathError::Io {
        what: format!("listing {}", dir.display()),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(pins::tap_of_link))
        .collect())
}

/// Creates a TCX ingress link of `program` on each tap and pins it, from a
/// pool of threads; returns each tap's outcome.
pub fn attach_ingress_many(
    program: BorrowedFd<'_>,
    taps: &[(Ifindex, PathBuf)],
) -> Vec<(Ifindex, io::Result<()>)> {
    if taps.is_empty() {
        return Vec::new();
    }
    let chunk = taps.len().div_ceil(ATTACH_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = taps
            .chunks(chunk)
            .map(|batch| {
                scope.spawn(move || {
                    batch
                        .iter()
                        .map(|(tap, pin)| (*tap, create_pinned(program, *tap, pin)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    })
}

/// BPF_LINK_CREATE (TCX ingress, appended) then BPF_OBJ_PIN; the link's
/// descriptor is closed on return, the pin keeps the link.
fn create_pinned(program: BorrowedFd<'_>, tap: Ifindex, pin: &Path) -> io::Result<()> {
    // union bpf_attr, link_create: prog_fd, target_ifindex, attach_type,
    // flags, then the TCX fields (relative fd/id, expected revision), all
    // zero: append after the programs already there.
    let mut attr = [0u32; 16];
    attr[0] = program.as_raw_fd() as u32;
    attr[1] = tap.0;
    attr[2] = BPF_TCX_INGRESS;
    let link = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: a fresh descriptor the kernel returned to us.
    let link = unsafe { OwnedFd::from_raw_fd(link) };
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the pin path"))?;
    // union bpf_attr, obj_pin: pathname (u64), bpf_fd, file_flags.
    let mut attr = [0u32; 16];
    let pathname = path.as_ptr() as u64;
    attr[0] = pathname as u32;
    attr[1] = (pathname >> 32) as u32;
    attr[2] = link.as_raw_fd() as u32;
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

fn bpf(cmd: libc::c_long, attr: &mut [u32; 16]) -> io::Result<i32> {
    // SAFETY: the bpf(2) syscall with an attribute buffer we own, sized
    // for the commands used (the kernel reads only its part of it).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(rc).map_err(|_| io::Error::other("bpf(2) returned an out-of-range fd"))
}

/// Attaches `program` to `device` through a TCX link pinned at `pin`. If a
/// previous daemon left a link there, the program in it is replaced
/// atomically instead, so the device never runs without a program.
pub fn attach_or_adopt(
    program: &mut SchedClassifier,
    name: &'static str,
    device: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<PinnedLink, DatapathError> {
    let attach_err = |source| DatapathError::Attach {
        program: name,
        device: device.to_owned(),
        source,
    };
    let link_id = match adopt(program, pin)? {
        Some(id) => id,
        None => program
            .attach_with_options(
                device,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?,
    };
    let owned = program.take_link(link_id).map_err(attach_err)?;
    let fd_link: FdLink = owned.try_into().map_err(|source| DatapathError::Link {
        path: pin.to_owned(),
        source,
    })?;
    fd_link.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_owned(),
        source,
    })
}

/// Gives the link pinned at `pin` (if any) `program`; `None` when there is
/// no usable link there and one must be created.
fn adopt(
    program: &mut SchedClassifier,
    pin: &Path,
) -> Result<Option<aya::programs::tc::SchedClassifierLinkId>, DatapathError> {
    if !pin.exists() {
        return Ok(None);
    }
    let old = PinnedLink::from_pin(pin).map_err(|source| DatapathError::Link {
        path: pin.to_owned(),
        source,
    })?;
    let old = old.unpin().map_err(|source| DatapathError::Io {
        what: format!("unpinning {}", pin.display()),
        source,
    })?;
    match SchedClassifierLink::try_from(old) {
        Ok(old) => match program.attach_to_link(old) {
            Ok(id) => Ok(Some(id)),
            // A link whose device is gone cannot be updated; attach anew.
            Err(err) => {
                warn!(
                    "replacing the program in {}: {err}; attaching anew",
                    pin.display()
                );
                Ok(None)
            }
        },
        Err(err) => {
            warn!(
                "{} is not a TCX link ({err}); attaching anew",
                pin.display()
            );
            Ok(None)
        }
    }
}

/// Removes the link pinned at `pin`, which detaches its program; a pin
/// that is not a link is removed as a file.
pub fn detach(pin: &Path) -> Result<(), DatapathError> {
    let io_err = |source| DatapathError::Io {
        what: format!("removing {}", pin.display()),
        source,
    };
    match PinnedLink::from_pin(pin) {
        Ok(link) => link.unpin().map(drop).map_err(io_err),
        Err(_) if !pin.exists() => Ok(()),
        Err(_) => std::fs::remove_file(pin).map_err(io_err),
    }
}
