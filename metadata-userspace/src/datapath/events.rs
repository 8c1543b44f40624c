//! rtnetlink link events: the daemon learns that a tap appeared, went or
//! was renamed as it happens, instead of polling.
//!
//! Only the fact that something changed is used: the daemon then re-reads
//! the device list and converges (`Datapath::sync`), which also covers
//! events lost to a full socket buffer.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

/// A netlink socket subscribed to RTMGRP_LINK.
#[derive(Debug)]
pub struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    pub fn subscribe() -> io::Result<Self> {
        // SAFETY: plain socket syscalls; the descriptor is owned right away.
        let fd = unsafe {
            let raw = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(raw)
        };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: valid socket and address of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open
        // and unchanged for as long as it is registered.
        let fd =
            unsafe { AsyncFd::register(fd) }.map_err(|err| io::Error::other(err.to_string()))?;
        Ok(Self { fd })
    }

    /// Waits for the next batch of link events: returns once something
    /// arrived and the socket stayed quiet for `settle` (so that 500 taps
    /// created at once cost one resync, not 500).
    pub async fn next(&mut self, settle: Duration) -> io::Result<()> {
        self.drain_readable().await?;
        while let Ok(result) = tokio::time::timeout(settle, self.drain_readable()).await {
            result?;
        }
        Ok(())
    }

    async fn drain_readable(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: reading into our own buffer.
            let n = unsafe {
                libc::recv(
                    guard.get_inner().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                continue;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return Ok(());
                }
                // ENOBUFS: events were lost; the caller resyncs anyway.
                _ if err.raw_os_error() == Some(libc::ENOBUFS) => continue,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
    }
}
