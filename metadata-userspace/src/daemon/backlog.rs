//! The proxy listeners' accept queues, sized for every tap's burst.
//!
//! The datapath lets each tap open `connection_burst` connections at once
//! ([`crate::config::DatapathConfig::connection_burst`]); if every tap did
//! so together, the completed connections would wait in the listeners'
//! accept queues until a serving thread takes them. A full queue drops the
//! handshake's last ACK, and the guest waits a retransmission (1 s). So
//! each listener's backlog is the sum of all attached taps' bursts, reset
//! with `listen(2)` on the listening socket as taps come and go (Linux
//! takes a new backlog on a socket that already listens). The kernel caps
//! it at `net.core.somaxconn`, read at each `listen`: the daemon warns,
//! and `doctor` checks, when that is too small.

use std::os::fd::{AsFd as _, OwnedFd};

use log::{info, warn};
use socket2::SockRef;

/// The backlog with no tap attached (what tokio's own bind uses).
pub const BASE: u32 = 1024;

/// Where the kernel reads the cap on every listen backlog.
pub const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// The backlog the listeners need with `taps` taps of `burst` each.
pub fn wanted(burst: u32, taps: usize) -> u32 {
    let taps = u32::try_from(taps).unwrap_or(u32::MAX);
    BASE.saturating_add(burst.saturating_mul(taps))
}

/// The kernel's cap on a listen backlog, when readable.
pub fn somaxconn() -> std::io::Result<u32> {
    let text = std::fs::read_to_string(SOMAXCONN)?;
    text.trim()
        .parse()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}

/// The proxy's listening sockets (duplicated descriptors of the ones the
/// serving threads accept from) and the backlog last set on them.
#[derive(Debug)]
pub struct ListenBacklog {
    sockets: Vec<OwnedFd>,
    burst: u32,
    applied: Option<u32>,
    warned_cap: Option<u32>,
}

impl ListenBacklog {
    pub fn new(sockets: Vec<OwnedFd>, burst: u32) -> Self {
        Self {
            sockets,
            burst,
            applied: None,
            warned_cap: None,
        }
    }

    /// Sets every listener's backlog for `taps` attached taps, when that
    /// changed. A failure is logged and retried at the next call: the old
    /// backlog stays in force meanwhile.
    pub fn fit(&mut self, taps: usize) {
        let wanted = wanted(self.burst, taps);
        if self.applied == Some(wanted) {
            return;
        }
        let backlog = i32::try_from(wanted).unwrap_or(i32::MAX);
        for socket in &self.sockets {
            if let Err(err) = SockRef::from(&socket.as_fd()).listen(backlog) {
                warn!("setting a proxy listener's backlog to {wanted}: {err} (retried)");
                return;
            }
        }
        self.applied = Some(wanted);
        self.check_cap(wanted, taps);
    }

    fn check_cap(&mut self, wanted: u32, taps: usize) {
        match somaxconn() {
            Ok(cap) if cap < wanted => {
                if self.warned_cap != Some(cap) {
                    warn!(
                        "the proxy's listeners want a backlog of {wanted} ({} x {taps} taps + {BASE}), \
                         but net.core.somaxconn caps it at {cap}: if many guests open their burst \
                         of connections at once, some wait a SYN retransmission. \
                         Raise it: sysctl -w net.core.somaxconn={wanted}",
                        self.burst
                    );
                    self.warned_cap = Some(cap);
                }
            }
            Ok(_) => info!("proxy listeners' backlog: {wanted} ({taps} taps)"),
            Err(err) => warn!("reading {SOMAXCONN}: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_holds_every_taps_burst_over_the_base() {
        assert_eq!(wanted(100, 0), BASE);
        assert_eq!(wanted(100, 500), BASE + 50_000);
        assert_eq!(wanted(u32::MAX, 2), u32::MAX);
    }

    #[test]
    fn a_listening_socket_takes_a_new_backlog() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = OwnedFd::from(listener.try_clone().unwrap());
        let mut backlog = ListenBacklog::new(vec![fd], 10);
        backlog.fit(3);
        assert_eq!(backlog.applied, Some(BASE + 30));
        backlog.fit(3);
        backlog.fit(0);
        assert_eq!(backlog.applied, Some(BASE));
        // Still listening: a connection is accepted.
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
    }
}
