//! Process limits the daemon sets for itself.

use anyhow::Context as _;
use log::info;
use rlimit::Resource;

/// Raises the soft limit on open files to the hard limit: every guest
/// connection is a descriptor, and systemd's default soft limit (1024) is
/// far below what a busy hypervisor needs. The unit sets the hard limit
/// (LimitNOFILE).
pub fn raise_open_files_limit() -> anyhow::Result<()> {
    let (before, _) = Resource::NOFILE
        .get()
        .context("reading the open files limit")?;
    let now = rlimit::increase_nofile_limit(u64::MAX).context("raising the open files limit")?;
    if now > before {
        info!("open files limit raised from {before} to {now}");
    }
    Ok(())
}
