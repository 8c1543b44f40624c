//! The programs' aya-log events, forwarded to the daemon's log.

use aya::Ebpf;
use log::warn;

/// Starts forwarding; without it the datapath still works, so a failure
/// is a warning.
pub fn start(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            warn!("eBPF log events unavailable: {err}");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd, which stays open and
    // unchanged for as long as the logger (moved into AsyncFd).
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(err) => {
            warn!("eBPF log events unavailable: {err}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(err) => {
                    warn!("eBPF log events stopped: {err}");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
