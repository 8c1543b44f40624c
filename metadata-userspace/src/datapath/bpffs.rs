//! The bpffs the datapath pins its maps and links on. Pins only outlive
//! the daemon (and keep the programs attached, failing closed) on a bpffs
//! the host shares; one mounted inside a private mount namespace dies with
//! the process. This module finds out which one a path is on.

use std::{
    collections::BTreeSet,
    fs::File,
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
        Found::WillMount { proven } => {
            if !proven {
                tracing::warn!("{UNPROVEN}");
            }
            mount_standard_root()
        }
    }
}

/// What `ensure_shared` would find at `path`, without mounting anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A bpffs the host shares.
    Shared,
    /// No bpffs yet; the daemon will mount one at the standard place, in a
    /// mount namespace shown to be the host's (`proven`) or taken to be
    /// ([`MountNamespace::Unproven`]).
    WillMount { proven: bool },
}

/// The one warning line of a mount whose namespace could not be proven to
/// be the host's.
pub const UNPROVEN: &str = "/proc/1/ns/mnt cannot be read, so this may not be the host's mount \
     namespace; /sys was not remounted for this network namespace (as `ip netns exec` does), \
     so taking it to be the host's and mounting bpffs on /sys/fs/bpf. If this process runs in \
     a private mount namespace after all, the pinned programs die with it (no fail-closed)";

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
    match mount_namespace() {
        MountNamespace::Private => Err(BpffsError::Private { path: path.into() }),
        MountNamespace::Host => Ok(Found::WillMount { proven: true }),
        MountNamespace::Unproven => Ok(Found::WillMount { proven: false }),
    }
}

/// Why `status` or `teardown` finds nothing at `path`, when the reason is
/// that this process cannot see the host's bpffs. The same rule as
/// [`check`]: where `run` would mount, nothing is hidden.
pub fn explain_missing(path: &Path) -> Option<BpffsError> {
    match on_bpffs(path) {
        Ok(true) if shared_with_host(path) => None,
        Ok(_) if mount_namespace() != MountNamespace::Private => None,
        Ok(_) => Some(BpffsError::Private { path: path.into() }),
        Err(err) => Some(err),
    }
}

/// What this process can tell about its mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountNamespace {
    /// PID 1's: a bpffs mounted here is the host's.
    Host,
    /// PID 1 cannot be inspected (a sandbox's init, or no CAP_SYS_PTRACE),
    /// and nothing shows a namespace of its own: taken as the host's.
    Unproven,
    /// Not PID 1's, or the one `ip netns exec` makes.
    Private,
}

/// What the judgement of the mount namespace rests on.
#[derive(Debug, Clone, Copy)]
struct Evidence {
    /// Whether /proc/self/ns/mnt is PID 1's; `None` when unreadable.
    same_as_pid1: Option<bool>,
    /// Whether /sys lists this process's network namespace's devices.
    sys_shows_own_netns: bool,
    /// Whether this process's network namespace is one of /run/netns.
    netns_is_named: bool,
}

impl Evidence {
    /// `ip netns exec NAME` enters a named network namespace in a new mount
    /// namespace and remounts /sys there for it, so its sysfs lists that
    /// namespace's devices. A process entered with `nsenter --net` keeps
    /// the host's /sys, which lists the host's. Only PID 1's namespace,
    /// when readable, says more.
    fn judge(self) -> MountNamespace {
        match self.same_as_pid1 {
            Some(true) => MountNamespace::Host,
            Some(false) => MountNamespace::Private,
            None if self.sys_shows_own_netns && self.netns_is_named => MountNamespace::Private,
            None => MountNamespace::Unproven,
        }
    }
}

fn mount_namespace() -> MountNamespace {
    let same_as_pid1 = same_namespace("/proc/self/ns/mnt", "/proc/1/ns/mnt");
    if let Some(same) = same_as_pid1 {
        return if same {
            MountNamespace::Host
        } else {
            MountNamespace::Private
        };
    }
    Evidence {
        same_as_pid1,
        sys_shows_own_netns: sys_shows_own_netns(),
        netns_is_named: netns_is_named(),
    }
    .judge()
}

/// Whether two namespace files name the same namespace; `None` when
/// either cannot be read.
fn same_namespace(a: impl AsRef<Path>, b: impl AsRef<Path>) -> Option<bool> {
    let a = std::fs::metadata(a).ok()?;
    let b = std::fs::metadata(b).ok()?;
    Some(a.ino() == b.ino() && a.dev() == b.dev())
}

/// Whether /sys/class/net lists the devices /proc/self/net/dev lists (the
/// network namespace this process is in). Devices come and go while a
/// hypervisor runs, so a mismatch is read three times before it counts.
fn sys_shows_own_netns() -> bool {
    (0..3).any(|_| {
        let sys = sys_devices();
        sys.is_some() && sys == proc_devices()
    })
}

fn sys_devices() -> Option<BTreeSet<String>> {
    let entries = std::fs::read_dir("/sys/class/net").ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    )
}

fn proc_devices() -> Option<BTreeSet<String>> {
    let devices = crate::proc_net_dev::read().ok()?;
    Some(devices.into_iter().map(|d| d.name).collect())
}

/// Whether this process's network namespace is bound under /run/netns
/// (made by `ip netns add`, the kind `ip netns exec` enters).
fn netns_is_named() -> bool {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .any(|e| same_namespace("/proc/self/ns/net", e.path()) == Some(true))
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

/// Mounts bpffs on /sys/fs/bpf unless another process did meanwhile.
/// Daemons starting together (tests, a host's first boot with several
/// configurations) would otherwise stack mounts, each hiding the pins made
/// on the one below it; an exclusive lock on /sys/fs (the same folder for
/// every process of this mount namespace) orders them.
fn mount_standard_root() -> Result<(), BpffsError> {
    let parent = Path::new(STANDARD_ROOT)
        .parent()
        .expect("the standard root has a parent");
    let lock = File::open(parent).map_err(|source| BpffsError::Io {
        what: format!("opening {} to lock it", parent.display()),
        source,
    })?;
    lock.lock().map_err(|source| BpffsError::Io {
        what: format!("locking {}", parent.display()),
        source,
    })?;
    if on_bpffs(Path::new(STANDARD_ROOT))? {
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(
        same_as_pid1: Option<bool>,
        sys_shows_own_netns: bool,
        netns_is_named: bool,
    ) -> MountNamespace {
        Evidence {
            same_as_pid1,
            sys_shows_own_netns,
            netns_is_named,
        }
        .judge()
    }

    #[test]
    fn pid1_when_readable_decides() {
        for sys in [false, true] {
            for named in [false, true] {
                assert_eq!(judge(Some(true), sys, named), MountNamespace::Host);
                assert_eq!(judge(Some(false), sys, named), MountNamespace::Private);
            }
        }
    }

    #[test]
    fn ip_netns_exec_is_recognised_without_pid1() {
        // A named network namespace whose devices /sys lists: /sys was
        // remounted for it, as `ip netns exec` does.
        assert_eq!(judge(None, true, true), MountNamespace::Private);
    }

    #[test]
    fn nsenter_and_the_hosts_own_namespace_are_taken_as_the_host() {
        // `nsenter --net`: a named namespace, the host's /sys.
        assert_eq!(judge(None, false, true), MountNamespace::Unproven);
        // The host's network namespace (never named) and its /sys.
        assert_eq!(judge(None, true, false), MountNamespace::Unproven);
    }
}
