//! systemd's notification protocol (sd_notify(3), through the sd-notify
//! crate): READY=1 once the datapath is attached and the proxy listens,
//! STATUS= lines, WATCHDOG=1 from the daemon's main loop (so a wedged loop
//! gets the service restarted) and STOPPING=1 on drain. Without
//! NOTIFY_SOCKET (not under systemd) every call is a no-op.

use std::time::Duration;

use log::warn;
use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        warn!("notifying the service manager: {err}");
    }
}

/// Serving: the datapath is attached and the listeners accept.
pub fn ready(taps: usize) {
    send(&[NotifyState::Ready, NotifyState::Status(&status_line(taps))]);
}

/// The state line `systemctl status` shows.
pub fn status(taps: usize) {
    send(&[NotifyState::Status(&status_line(taps))]);
}

fn status_line(taps: usize) -> String {
    format!("serving {taps} taps")
}

/// Draining on shutdown.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Still alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half the interval systemd set
/// (WatchdogSec=), or never.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|interval| interval / 2)
}
