//! Process limits the daemon sets for itself.

use anyhow::Context as _;
use log::info;

/// Raises the soft limit on open files to the hard limit: every guest
/// connection is a descriptor, and systemd's default soft limit (1024) is
/// far below what a busy hypervisor needs. The unit sets the hard limit
/// (LimitNOFILE).
pub fn raise_open_files_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the open files limit");
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(());
    }
    let previous = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising the open files limit");
    }
    info!(
        "open files limit raised from {previous} to {}",
        limit.rlim_max
    );
    Ok(())
}
