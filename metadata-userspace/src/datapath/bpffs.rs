//! The bpffs the datapath pins its maps and links on. Pins only outlive
//! the daemon (and keep the programs attached, failing closed) on a bpffs
//! the host shares; one mounted inside a private mount namespace dies with
//! the process. This module finds out which one a path is on.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where systemd (and we, on hosts without it) mount bpffs.
pub const STANDARD_ROOT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "{} is not on the host's bpffs: this process runs in a mount namespace of its own \
         (as under `ip netns exec`, which remounts /sys), so a bpffs mounted here would be \
         private and die with the process, taking the pinned programs with it (no fail-closed) \
         and hiding them from `status` and `teardown`. Run the daemon in the host's mount \
         namespace with only the network namespace changed \
         (`nsenter --net=/run/netns/NAME metadata-redirector ...`), or bind-mount the host's \
         /sys/fs/bpf into this mount namespace", path.display()
    )]
    Private { path: PathBuf },
    #[error("{} is not on a bpffs; mount one there or choose a folder under /sys/fs/bpf", path.display())]
    NotBpffs { path: PathBuf },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

/// Makes sure `path` is on a bpffs shared with the host, mounting one at
/// the standard place when the host has none and this process is in the
/// host's mount namespace. Refuses a private one.
pub fn ensure_shared(path: &Path) -> Result<(), BpffsError> {
    match check(path)? {
        Found::Shared => Ok(()),
        Found::WillMount => mount_standard_root(),
    }
}

/// What `ensure_shared` would find at `path`, without mounting anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A bpffs the host shares.
    Shared,
    /// No bpffs yet; the daemon will mount one at the standard place.
    WillMount,
}

/// Checks `path` as `ensure_shared` does, without mounting.
pub fn check(path: &Path) -> Result<Found, BpffsError> {
    if on_bpffs(path)? {
        return if shared_with_host(path) {
            Ok(Found::Shared)
        } else {
            Err(BpffsError::Private { path: path.into() })
        };
    }
    if !path.starts_with(STANDARD_ROOT) {
        return Err(BpffsError::NotBpffs { path: path.into() });
    }
    match in_host_mount_namespace() {
        Some(true) => Ok(Found::WillMount),
        _ => Err(BpffsError::Private { path: path.into() }),
    }
}

/// Why `status` or `teardown` finds nothing at `path`, when the reason is
/// that this process cannot see the host's bpffs.
pub fn explain_missing(path: &Path) -> Option<BpffsError> {
    match on_bpffs(path) {
        Ok(true) if shared_with_host(path) => None,
        Ok(_) if in_host_mount_namespace() == Some(true) => None,
        Ok(_) => Some(BpffsError::Private { path: path.into() }),
        Err(err) => Some(err),
    }
}

/// Whether the nearest existing folder of `path` is on a bpffs.
fn on_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).map_err(|_| {
        BpffsError::NotBpffs {
            path: path.to_owned(),
        }
    })?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a pointer to our struct.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(BpffsError::Io {
            what: format!("statfs {}", existing.display()),
            source: io::Error::last_os_error(),
        });
    }
    // f_type is a signed word whose width varies by architecture.
    #[allow(clippy::unnecessary_cast)]
    let fs_type = stat.f_type as i64;
    Ok(fs_type == BPF_FS_MAGIC)
}

/// Whether the bpffs at `path` is the one the host's init sees there (same
/// device), judged through /proc/1/root. When that cannot be read (no
/// CAP_SYS_PTRACE under a hardened unit), the path is taken as shared:
/// systemd's own private mount namespaces bind the host's bpffs.
fn shared_with_host(path: &Path) -> bool {
    let ours = path.ancestors().find_map(|p| std::fs::metadata(p).ok());
    let host_view = Path::new("/proc/1/root").join(path.strip_prefix("/").unwrap_or(path));
    let theirs = host_view.ancestors().find_map(|p| {
        let meta = std::fs::metadata(p);
        if let Err(err) = &meta
            && err.kind() == io::ErrorKind::PermissionDenied
        {
            return Some(None);
        }
        meta.ok().map(Some)
    });
    match (ours, theirs) {
        (Some(ours), Some(Some(theirs))) => ours.dev() == theirs.dev(),
        _ => true,
    }
}

/// Whether this process shares the mount namespace of PID 1; `None` when
/// that cannot be read.
fn in_host_mount_namespace() -> Option<bool> {
    let ours = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    let init = std::fs::metadata("/proc/1/ns/mnt").ok()?;
    Some(ours.ino() == init.ino() && ours.dev() == init.dev())
}

fn mount_standard_root() -> Result<(), BpffsError> {
    let fstype = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpffsError::Io {
            what: "mounting bpffs on /sys/fs/bpf".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
