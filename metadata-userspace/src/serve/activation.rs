//! systemd socket activation (sd_listen_fds(3)): the listening sockets a
//! service manager passes, so that restarts and upgrades drop no
//! connection attempt.

use std::os::fd::FromRawFd as _;

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;
/// More than any unit of ours passes; bounds what a bogus LISTEN_FDS makes
/// us take.
const MAX_LISTEN_FDS: i32 = 16;

/// The listening sockets passed by socket activation (LISTEN_FDS), if this
/// process was given any.
pub fn activated_listeners() -> std::io::Result<Vec<std::net::TcpListener>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if !for_us {
        return Ok(Vec::new());
    }
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut listeners = Vec::new();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count.clamp(0, MAX_LISTEN_FDS) {
        // Not inherited by anything we start.
        // SAFETY: fcntl on a descriptor systemd's protocol hands to us.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: we take ownership of each passed descriptor exactly once.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        listeners.push(listener);
    }
    Ok(listeners)
}
