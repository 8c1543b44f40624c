//! systemd socket activation (sd_listen_fds(3), through the sd-notify
//! crate): the listening sockets a service manager passes, so that
//! restarts and upgrades drop no connection attempt.

use std::os::fd::FromRawFd as _;

/// The listening sockets passed by socket activation (LISTEN_FDS, for this
/// process by LISTEN_PID), if any. They are close-on-exec.
pub fn activated_listeners() -> std::io::Result<Vec<std::net::TcpListener>> {
    sd_notify::listen_fds()?
        .map(|fd| {
            // SAFETY: we take ownership of each passed descriptor exactly
            // once, as the protocol hands them to this process.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect()
}
