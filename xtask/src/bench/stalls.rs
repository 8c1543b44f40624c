//! The machine's own stalls, measured before the sections: a thread pinned
//! to each CPU spins on the clock and records every gap longer than
//! [`GAP`], time in which that CPU did not run it.
//!
//! On this VM the tails of every path (nginx's too) and the spread of the
//! throughput ratios come from such gaps. A gap without an involuntary
//! context switch of the probe is time the guest kernel did not schedule
//! anything else in: the hypervisor ran something else on the vCPU (the
//! guest's steal time stays 0 here, so it does not say).

use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Shorter gaps are interrupts and timer ticks.
const GAP: Duration = Duration::from_micros(200);

/// One CPU's stalls over the probe's run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuStalls {
    pub cpu: usize,
    pub ran_for: Duration,
    /// Every gap.
    pub all: Gaps,
    /// The gaps in which the guest's scheduler did not switch the probe
    /// out: the vCPU itself was not running (or served interrupts).
    pub outside_guest: Gaps,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gaps {
    pub count: usize,
    pub lost: Duration,
    pub largest: Duration,
}

impl Gaps {
    fn add(&mut self, gap: Duration) {
        self.count += 1;
        self.lost += gap;
        self.largest = self.largest.max(gap);
    }
}

impl CpuStalls {
    pub fn per_s(&self, gaps: &Gaps) -> f64 {
        gaps.count as f64 / self.ran_for.as_secs_f64()
    }

    pub fn lost_percent(&self, gaps: &Gaps) -> f64 {
        100.0 * gaps.lost.as_secs_f64() / self.ran_for.as_secs_f64()
    }
}

/// Runs the probe on every CPU this process may use, all at once.
pub(crate) fn measure(run_for: Duration) -> anyhow::Result<Vec<CpuStalls>> {
    let probes: Vec<_> = allowed_cpus()?
        .into_iter()
        .map(|cpu| {
            std::thread::Builder::new()
                .name(format!("stall-probe-{cpu}"))
                .spawn(move || probe(cpu, run_for))
                .context("starting a stall probe")
        })
        .collect::<anyhow::Result<_>>()?;
    probes
        .into_iter()
        .map(|probe| {
            probe
                .join()
                .map_err(|_| anyhow::anyhow!("a stall probe panicked"))?
        })
        .collect()
}

/// Spins on `cpu` for `run_for`, timing every gap between two clock
/// reads and asking the kernel, at each, whether it switched the probe
/// out (a syscall per turn: well below the gaps it looks for).
fn probe(cpu: usize, run_for: Duration) -> anyhow::Result<CpuStalls> {
    pin_to(cpu)?;
    let mut stalls = CpuStalls {
        cpu,
        ran_for: run_for,
        ..CpuStalls::default()
    };
    let started = Instant::now();
    let (mut last, mut last_switches) = (started, involuntary_switches()?);
    while last - started < run_for {
        let switches = involuntary_switches()?;
        let now = Instant::now();
        let gap = now - last;
        if gap > GAP {
            stalls.all.add(gap);
            if switches == last_switches {
                stalls.outside_guest.add(gap);
            }
        }
        (last, last_switches) = (now, switches);
    }
    Ok(stalls)
}

/// The CPUs this process may run on.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is the empty set, which
    // sched_getaffinity fills for this process (0).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    let size = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    // SAFETY: CPU_ISSET reads within the set for indices below its size.
    Ok((0..size)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pins the calling thread (0) to the set above.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// This thread's involuntary context switches so far.
fn involuntary_switches() -> anyhow::Result<i64> {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &raw mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    Ok(usage.ru_nivcsw)
}

/// The section of results.md.
pub(crate) fn markdown(stalls: &[CpuStalls]) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let Some(first) = stalls.first() else {
        return md;
    };
    let _ = writeln!(
        md,
        "## The machine's own stalls (before the sections)\n\n\
         A thread pinned to each CPU spins on the clock for {:.0} s and counts gaps over {} µs, \
         time in which the CPU did not run it; \"outside the guest\": gaps in which the guest's \
         scheduler did not switch it out, so the vCPU itself stood still.\n\n\
         | CPU | gaps per s | time lost | largest gap ms | outside the guest: gaps per s | time lost | largest gap ms |\n\
         |---|---|---|---|---|---|---|",
        first.ran_for.as_secs_f64(),
        GAP.as_micros()
    );
    for s in stalls {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.2} % | {:.2} | {:.1} | {:.2} % | {:.2} |",
            s.cpu,
            s.per_s(&s.all),
            s.lost_percent(&s.all),
            s.all.largest.as_secs_f64() * 1e3,
            s.per_s(&s.outside_guest),
            s.lost_percent(&s.outside_guest),
            s.outside_guest.largest.as_secs_f64() * 1e3,
        );
    }
    md.push('\n');
    md
}

/// The same for results.json.
pub(crate) fn json(stalls: &[CpuStalls]) -> serde_json::Value {
    let gaps = |s: &CpuStalls, g: &Gaps| {
        serde_json::json!({
            "per_s": s.per_s(g), "lost_percent": s.lost_percent(g),
            "largest_ms": g.largest.as_secs_f64() * 1e3,
        })
    };
    stalls
        .iter()
        .map(|s| {
            serde_json::json!({
                "cpu": s.cpu, "all": gaps(s, &s.all),
                "outside_guest": gaps(s, &s.outside_guest),
            })
        })
        .collect()
}
