//! Requests per second and latency of every path side by side, for each
//! VM count, body size and connection mode (local backend).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    harness::{LARGE, Load, SMALL, daemon_pid, median_load, ratio, with_server_cpu},
    paths::Paths,
    settings::Settings,
    wrk::{Strictness, Wrk},
};

/// Every row: each VM count, body size and connection mode.
pub(super) fn measure(settings: &Settings) -> anyhow::Result<Vec<Throughput>> {
    let mut rows = Vec::new();
    for &n in &settings.concurrency {
        eprintln!("bench: throughput with {n} VM(s) per path");
        let bench = Paths::new(n, true, 64)?;
        for (body, path) in [("meta_data.json", SMALL), ("64 KB user_data", LARGE)] {
            for close in [false, true] {
                let rounds = (0..settings.rounds)
                    .map(|_| bench.throughput_round(settings, path, close))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let median = |pick: fn(&Round) -> Load| {
                    median_load(&rounds.iter().map(pick).collect::<Vec<_>>())
                };
                rows.push(Throughput {
                    vms: n,
                    body,
                    new_connection: close,
                    ours: median(|r| r.ours),
                    neutron: median(|r| r.neutron),
                    limit: median(|r| r.limit),
                    nginx: median(|r| r.nginx),
                });
            }
        }
    }
    Ok(rows)
}

/// One measurement of each path, one after the other.
struct Round {
    ours: Load,
    neutron: Load,
    limit: Load,
    nginx: Load,
}

impl Paths {
    fn throughput_round(
        &self,
        settings: &Settings,
        path: &str,
        close: bool,
    ) -> anyhow::Result<Round> {
        let ours: Vec<&str> = self.ours.iter().map(|vm| vm.ns.name()).collect();
        let neutron: Vec<&str> = self.neutron.iter().map(|(vm, _)| vm.ns.name()).collect();
        let limit: Vec<&str> = vec![self.limit.ns.name(); ours.len()];
        let url = format!("http://169.254.169.254{path}");
        let nginx_url = format!("http://169.254.169.254:{}{path}", super::limit::NGINX_PORT);
        let wrk = |url| Wrk {
            script: &settings.wrk_script,
            url,
            close,
            seconds: settings.round_s,
        };
        let daemon = [daemon_pid(&self.hv)?];
        let nginx = self.limit.nginx_pids()?;
        let strict = Strictness::EveryRequest;
        Ok(Round {
            ours: with_server_cpu(&daemon, || wrk(&url).run(&ours, strict))?,
            neutron: wrk(&url).run(&neutron, strict)?,
            limit: with_server_cpu(&daemon, || wrk(&url).run(&limit, strict))?,
            nginx: with_server_cpu(&nginx, || wrk(&nginx_url).run(&limit, strict))?,
        })
    }
}

/// One row: every path's figures, each the median over the rounds.
pub(super) struct Throughput {
    vms: usize,
    body: &'static str,
    new_connection: bool,
    ours: Load,
    /// Agent mode: haproxy -> unix socket -> this daemon.
    neutron: Load,
    /// The limit VM on a plain routed veth to the daemon.
    limit: Load,
    /// The limit VM to nginx serving the same bytes.
    nginx: Load,
}

/// Requests per second and latency, one row per VM count, body size and connection mode.
pub(super) fn markdown(rows: &[Throughput]) -> String {
    let mut md = String::new();
    if rows.is_empty() {
        return md;
    }
    let _ = writeln!(md, "## Requests per second and latency (local backend)\n");
    let _ = writeln!(
        md,
        "| VMs | body | connections | ours req/s | agent mode req/s | limit req/s | nginx req/s | ours/limit | ours/nginx | ours p50 µs | limit p50 µs | ours p99 µs | agent mode p99 µs | limit p99 µs | nginx p99 µs | p99 ours/limit | p99 nginx/limit | daemon CPU µs/req (ours) | daemon CPU µs/req (limit) | nginx CPU µs/req |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for t in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |",
            t.vms,
            t.body,
            if t.new_connection {
                "new per request"
            } else {
                "keep-alive"
            },
            t.ours.rps,
            t.neutron.rps,
            t.limit.rps,
            t.nginx.rps,
            ratio(t.ours.rps, t.limit.rps),
            ratio(t.ours.rps, t.nginx.rps),
            t.ours.p50_us,
            t.limit.p50_us,
            t.ours.p99_us,
            t.neutron.p99_us,
            t.limit.p99_us,
            t.nginx.p99_us,
            ratio(t.ours.p99_us, t.limit.p99_us),
            ratio(t.nginx.p99_us, t.limit.p99_us),
            t.ours.server_cpu_us,
            t.limit.server_cpu_us,
            t.nginx.server_cpu_us,
        );
    }
    md
}

/// The request-rate and latency targets, each with its worst ratio.
pub(super) fn targets(rows: &[Throughput]) -> Vec<(String, bool)> {
    let mut targets = Vec::new();
    if rows.is_empty() {
        return targets;
    }
    let worst_p99 = rows
        .iter()
        .map(|t| ratio(t.ours.p99_us, t.limit.p99_us))
        .fold(0.0, f64::max);
    targets.push((
        format!("ours p99 <= 1.2x the limit path's p99 in every row (worst {worst_p99:.2}x)"),
        worst_p99 <= 1.2,
    ));
    let worst_nginx = rows
        .iter()
        .filter(|t| t.vms >= 10 && t.body == "meta_data.json")
        .map(|t| ratio(t.ours.rps, t.nginx.rps))
        .fold(f64::INFINITY, f64::min);
    if worst_nginx.is_finite() {
        targets.push((
            format!(
                "ours >= 0.9x nginx's requests/s for meta_data.json at 10 and 50 VMs (worst {worst_nginx:.2}x)"
            ),
            worst_nginx >= 0.9,
        ));
    }
    targets
}

pub(super) fn json(rows: &[Throughput]) -> Value {
    rows.iter()
        .map(|t| {
            json!({
                "vms": t.vms, "body": t.body, "new_connection": t.new_connection,
                "ours": t.ours.json(), "agent_mode": t.neutron.json(), "limit": t.limit.json(),
                "nginx": t.nginx.json(),
                "ours_over_neutron_rps": ratio(t.ours.rps, t.neutron.rps),
                "ours_over_limit_rps": ratio(t.ours.rps, t.limit.rps),
                "ours_over_neutron_p99": ratio(t.ours.p99_us, t.neutron.p99_us),
            })
        })
        .collect()
}
