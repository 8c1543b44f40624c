//! What the sections share: a load run's figures ([`Load`]) and their
//! medians and ratios, process statistics (CPU time, PSS), waiting for
//! VMs to be served, and a child that is killed when dropped.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use metadata_tests::{Hypervisor, METADATA, Vm};
use serde_json::{Value, json};

/// One wrk run's figures, summed or combined over its parallel clients.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Load {
    /// Successful (2xx) answers per second.
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Share of requests that failed (non-2xx answers, socket errors);
    /// zero wherever the run is strict.
    pub error_share: f64,
    /// CPU µs the server's processes spent per answered request (0 where
    /// not measured).
    pub server_cpu_us: f64,
}

/// The paths' two bodies: a small document and 64 KiB of user data.
pub(super) const SMALL: &str = "/openstack/latest/meta_data.json";
pub(super) const LARGE: &str = "/openstack/latest/user_data";

/// Waits until every VM is served, so that nothing is measured while
/// still starting.
pub(super) fn wait_served<'a>(vms: impl Iterator<Item = &'a Vm>) -> anyhow::Result<()> {
    for vm in vms {
        metadata_tests::wait_for(
            &format!("{} to be served", vm.ns.name()),
            Duration::from_secs(60),
            || matches!(vm.http_get(METADATA, SMALL), Ok((200, _))).then_some(()),
        )?;
    }
    Ok(())
}

impl Load {
    pub(super) fn json(&self) -> Value {
        json!({"rps": self.rps, "p50_us": self.p50_us, "p99_us": self.p99_us,
               "server_cpu_us_per_request": self.server_cpu_us})
    }
}

/// `a / b`, 0 where `b` is 0.
pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// Each figure's median over `rounds` (the upper one of an even count).
pub(super) fn median_load(rounds: &[Load]) -> Load {
    let median = |pick: fn(&Load) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    Load {
        rps: median(|l| l.rps),
        p50_us: median(|l| l.p50_us),
        p99_us: median(|l| l.p99_us),
        error_share: median(|l| l.error_share),
        server_cpu_us: median(|l| l.server_cpu_us),
    }
}

/// `load` run, with the CPU time the `servers` processes (all their
/// threads, user and system, softirq work the kernel charged to them
/// included) spent per answered request.
pub(super) fn with_server_cpu(
    servers: &[u32],
    load: impl FnOnce() -> anyhow::Result<Load>,
) -> anyhow::Result<Load> {
    let before = cpu_seconds(servers)?;
    let started = Instant::now();
    let mut load = load()?;
    let spent = cpu_seconds(servers)? - before;
    let answered = load.rps * started.elapsed().as_secs_f64();
    load.server_cpu_us = ratio(spent * 1e6, answered);
    Ok(load)
}

/// User plus system CPU seconds of `pids`.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0.0;
    for &pid in pids {
        let fields = stat_fields(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
        // utime and stime: fields 14 and 15 of stat(5).
        for field in [14, 15] {
            ticks += fields
                .get(field - 3)
                .and_then(|f| f.parse::<f64>().ok())
                .with_context(|| format!("no CPU times for pid {pid}"))?;
        }
    }
    Ok(ticks / ticks_per_s)
}

/// The fields of /proc/<pid>/stat after the parenthesised command name,
/// so that field N of stat(5) is at index N - 3; `None` for a process that
/// is gone.
pub(super) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Proportional set size of a process, in KiB (RSS where PSS is missing).
pub(super) fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .or_else(|_| fs::read_to_string(format!("/proc/{pid}/status")))
        .with_context(|| format!("reading memory of pid {pid}"))?;
    for key in ["Pss:", "VmRSS:"] {
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix(key)) {
            return v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .context("memory figure");
        }
    }
    bail!("no Pss or VmRSS for pid {pid}")
}

pub(super) fn daemon_pid(hv: &Hypervisor) -> anyhow::Result<u32> {
    hv.daemon_pid().context("daemon not running")
}

pub(super) struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
