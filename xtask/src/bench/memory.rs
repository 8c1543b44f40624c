//! Memory of everything the metadata path runs: the daemon's PSS and the
//! BPF maps' and programs' memlock against neutron's haproxies and agent.

use std::{fmt::Write as _, process::Command};

use anyhow::Context as _;
use metadata_common::{map_names, program_names};
use serde_json::{Value, json};

use super::{
    harness::{daemon_pid, pss_kib, ratio},
    paths::Paths,
    settings::Settings,
};

/// memlock of our maps and programs, from bpftool, in KiB.
fn bpf_memlock_kib() -> anyhow::Result<u64> {
    let mut total = 0;
    for what in ["map", "prog"] {
        let out = Command::new("bpftool")
            .args(["-j", what, "show"])
            .output()?;
        let items: Value = serde_json::from_slice(&out.stdout).context("bpftool json")?;
        for item in items.as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap_or_default();
            let ours = name.starts_with(map_names::PREFIX)
                || name == "AYA_LOGS"
                || name == program_names::TAP
                || name == program_names::HOST;
            if ours {
                total += item["bytes_memlock"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok(total / 1024)
}

/// Ours against neutron's haproxies at each network count, and ours alone
/// at a scale neutron's per-network processes cannot reach here.
pub(super) fn measure(settings: &Settings) -> anyhow::Result<Vec<Memory>> {
    let mut rows = Vec::new();
    for &n in &settings.memory_networks {
        eprintln!("bench: memory at {n} networks");
        let bench = Paths::new(n, true, 1)?;
        let daemon = pss_kib(daemon_pid(&bench.hv)?)?;
        let bpf = bpf_memlock_kib()?;
        let mut haproxies = 0;
        for (_, network) in &bench.neutron {
            haproxies += pss_kib(network.haproxy_pid())?;
        }
        rows.push(Memory {
            networks: n,
            ours_kib: daemon + bpf,
            ours_daemon_kib: daemon,
            ours_bpf_kib: bpf,
            neutron_kib: haproxies + daemon,
            neutron_haproxy_kib: haproxies,
        });
    }
    // Ours alone at a scale Neutron's per-network haproxies cannot reach
    // on this machine (5,000 would need about 18 GiB).
    for &n in &settings.memory_taps_only {
        eprintln!("bench: memory at {n} taps (ours only)");
        let bench = Paths::new(n, false, 1)?;
        let daemon = pss_kib(daemon_pid(&bench.hv)?)?;
        let bpf = bpf_memlock_kib()?;
        rows.push(Memory {
            networks: n,
            ours_kib: daemon + bpf,
            ours_daemon_kib: daemon,
            ours_bpf_kib: bpf,
            neutron_kib: 0,
            neutron_haproxy_kib: 0,
        });
    }
    Ok(rows)
}

pub(super) struct Memory {
    networks: usize,
    ours_kib: u64,
    ours_daemon_kib: u64,
    ours_bpf_kib: u64,
    neutron_kib: u64,
    neutron_haproxy_kib: u64,
}

/// Memory of the metadata path, ours against neutron's.
pub(super) fn markdown(rows: &[Memory]) -> String {
    let mut md = String::new();
    if rows.is_empty() {
        return md;
    }
    let _ = writeln!(md, "\n## Memory of everything the metadata path runs\n");
    let _ = writeln!(
        md,
        "| networks (1 VM each) | ours KiB (daemon PSS + BPF memlock) | neutron KiB (haproxies PSS + agent PSS) | ours/neutron |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for m in rows {
        if m.neutron_kib == 0 {
            let _ = writeln!(
                md,
                "| {} (ours only) | {} ({} + {}) | - | - |",
                m.networks, m.ours_kib, m.ours_daemon_kib, m.ours_bpf_kib
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} ({} + {}) | {} ({} + {}) | {:.4} |",
            m.networks,
            m.ours_kib,
            m.ours_daemon_kib,
            m.ours_bpf_kib,
            m.neutron_kib,
            m.neutron_haproxy_kib,
            m.neutron_kib - m.neutron_haproxy_kib,
            ratio(m.ours_kib as f64, m.neutron_kib as f64)
        );
    }
    md
}

/// At the largest network count measured against neutron: 1/50 of its
/// memory at most.
pub(super) fn targets(rows: &[Memory]) -> Vec<(String, bool)> {
    let Some(m) = rows.iter().rfind(|m| m.neutron_kib > 0) else {
        return Vec::new();
    };
    let r = ratio(m.ours_kib as f64, m.neutron_kib as f64);
    vec![(
        format!(
            "memory at {} networks <= 1/50 of neutron's ({r:.4}, i.e. 1/{:.0})",
            m.networks,
            1.0 / r
        ),
        r <= 1.0 / 50.0,
    )]
}

pub(super) fn json(rows: &[Memory]) -> Value {
    rows.iter()
        .map(|m| {
            json!({
                "networks": m.networks, "ours_kib": m.ours_kib, "ours_daemon_kib": m.ours_daemon_kib,
                "ours_bpf_kib": m.ours_bpf_kib, "neutron_kib": m.neutron_kib,
                "neutron_haproxy_kib": m.neutron_haproxy_kib,
                "ours_over_neutron": ratio(m.ours_kib as f64, m.neutron_kib as f64),
            })
        })
        .collect()
}
