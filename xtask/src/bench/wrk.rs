//! wrk, the load of the throughput sections: one `wrk -t1 -c1` per VM
//! namespace, all at once, with their latency distributions pooled.
//!
//! wrk reports percentiles per process. The bench used to report the worst
//! client's p99: at 10 and 50 VMs, the maximum of 10 or 50 noisy samples.
//! In four quick runs of one build, that figure's ratio between two
//! baselines that differ only in the server (nginx and the daemon over the
//! same veth) ranged from 0.35 to 2.9. Now each client prints its quantile
//! function from wrk's Lua `done()` hook, and the percentiles are read off
//! the mixture of those, each client weighted by its request count: the
//! p50 and p99 over every request of the run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, ensure};

use super::harness::{Load, ratio};

/// Prints the request count and the latency quantiles (µs) in steps of
/// 0.1 %, and of 0.01 % above 99.9 %.
const QUANTILES_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  io.write("mdr-requests ", summary.requests, "\n")
  for i = 1, 999 do
    io.write("mdr-q ", i / 10, " ", latency:percentile(i / 10), "\n")
  end
  for i = 1, 9 do
    local p = 99.9 + i / 100
    io.write("mdr-q ", p, " ", latency:percentile(p), "\n")
  end
end
"#;

/// The quantile script, written once into the bench's output folder.
pub(crate) fn quantiles_script(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = out_dir.join("wrk-quantiles.lua");
    std::fs::write(&path, QUANTILES_SCRIPT)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Whether a path must answer every request (the figures would be wrong
/// otherwise), or fails some by design and is counted by its 2xx answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    EveryRequest,
    CountFailures,
}

/// One load run: a wrk per namespace in `namespaces`, all at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wrk<'a> {
    pub script: &'a Path,
    pub url: &'a str,
    /// A new connection per request (`Connection: close`).
    pub close: bool,
    pub seconds: u32,
}

impl Wrk<'_> {
    /// Runs the clients; sums requests/s and pools the latencies.
    pub(crate) fn run(&self, namespaces: &[&str], strictness: Strictness) -> anyhow::Result<Load> {
        let mut children = Vec::new();
        for ns in namespaces {
            children.push(self.command(ns).spawn().context("starting wrk")?);
        }
        let mut clients = Vec::new();
        for (child, ns) in children.into_iter().zip(namespaces) {
            let output = child.wait_with_output().context("waiting for wrk")?;
            let text = String::from_utf8_lossy(&output.stdout);
            ensure!(
                output.status.success(),
                "wrk in {ns} failed: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let run = WrkRun::parse(&text).with_context(|| format!("wrk in {ns}: {text}"))?;
            ensure!(
                strictness == Strictness::CountFailures || run.failed == 0.0,
                "wrk in {ns} ({}) saw errors, the figures would be wrong:\n{text}",
                self.mode()
            );
            clients.push(run);
        }
        Ok(pooled(&clients))
    }

    fn command(&self, ns: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, "wrk", "-t1", "-c1", "-s"]);
        command.arg(self.script).arg(format!("-d{}s", self.seconds));
        if self.close {
            command.args(["-H", "Connection: close"]);
        }
        command
            .arg(self.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn mode(&self) -> &'static str {
        if self.close {
            "new connection per request"
        } else {
            "keep-alive"
        }
    }
}

/// The clients of one run as one: requests/s summed (2xx only), p50 and p99
/// over all their requests, the share that failed.
fn pooled(clients: &[WrkRun]) -> Load {
    let requests: f64 = clients.iter().map(|c| c.requests).sum();
    let failed: f64 = clients.iter().map(|c| c.failed).sum();
    Load {
        rps: clients
            .iter()
            .map(|c| c.rps * (1.0 - ratio(c.failed, c.requests)))
            .sum(),
        p50_us: pooled_quantile(clients, 50.0),
        p99_us: pooled_quantile(clients, 99.0),
        error_share: ratio(failed, requests),
        server_cpu_us: 0.0,
    }
}

/// The smallest latency at or below which `percent` of all the clients'
/// requests finished, each client's share of requests read off its own
/// quantile function.
fn pooled_quantile(clients: &[WrkRun], percent: f64) -> f64 {
    let total: f64 = clients.iter().map(|c| c.requests).sum();
    let mut candidates: Vec<f64> = clients
        .iter()
        .flat_map(|c| c.quantiles.iter().map(|&(_, us)| us))
        .collect();
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let share_at = |us: f64| -> f64 {
        clients
            .iter()
            .map(|c| {
                let below = c.quantiles.partition_point(|&(_, q)| q <= us);
                let percent = below.checked_sub(1).map_or(0.0, |i| c.quantiles[i].0);
                c.requests * percent
            })
            .sum::<f64>()
            / total
    };
    // The share grows with the latency: a binary search finds the first
    // candidate that reaches `percent`.
    let first = candidates.partition_point(|&us| share_at(us) < percent - 1e-9);
    candidates
        .get(first)
        .or(candidates.last())
        .copied()
        .unwrap_or(0.0)
}

/// One wrk client's report.
#[derive(Debug)]
struct WrkRun {
    rps: f64,
    requests: f64,
    /// Non-2xx answers and socket errors.
    failed: f64,
    /// (percent, µs), ascending in both.
    quantiles: Vec<(f64, f64)>,
}

impl WrkRun {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let non_2xx = field(text, "Non-2xx or 3xx responses:").unwrap_or(0.0);
        let socket_errors: f64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map_or(0.0, |errors| {
                errors
                    .split(',')
                    .filter_map(|e| e.split_whitespace().last()?.parse::<f64>().ok())
                    .sum()
            });
        let quantiles = text
            .lines()
            .filter_map(|l| l.strip_prefix("mdr-q "))
            .map(|l| {
                let (percent, us) = l.split_once(' ').context("a quantile line")?;
                Ok((percent.parse()?, us.trim().parse()?))
            })
            .collect::<anyhow::Result<Vec<(f64, f64)>>>()?;
        ensure!(
            !quantiles.is_empty(),
            "no quantiles (the Lua script did not run)"
        );
        Ok(Self {
            rps: field(text, "Requests/sec:").context("Requests/sec")?,
            requests: field(text, "mdr-requests").context("the request count")?,
            failed: non_2xx + socket_errors,
            quantiles,
        })
    }
}

/// The number after `name` on the first line that starts with it.
pub(crate) fn field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// A latency percentile from wrk's own `--latency` table, in µs.
pub(crate) fn latency(text: &str, percentile: &str) -> Option<f64> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(percentile))?
        .trim();
    let (number, factor) = if let Some(v) = value.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1e6)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(requests: f64, quantiles: &[(f64, f64)]) -> WrkRun {
        WrkRun {
            rps: requests,
            requests,
            failed: 0.0,
            quantiles: quantiles.to_vec(),
        }
    }

    #[test]
    fn one_client_pools_to_its_own_quantiles() {
        let c = client(100.0, &[(50.0, 10.0), (99.0, 40.0), (99.9, 90.0)]);
        assert_eq!(pooled_quantile(&[c], 99.0), 40.0);
    }

    #[test]
    fn a_slow_client_with_few_requests_weighs_by_its_requests() {
        // 99 % of the requests come from the fast client, whose p99 is 20:
        // the slow one's p50 of 1000 moves the pooled p99 only so far.
        let fast = client(9900.0, &[(50.0, 10.0), (99.0, 20.0), (100.0, 30.0)]);
        let slow = client(100.0, &[(50.0, 1000.0), (100.0, 2000.0)]);
        assert_eq!(pooled_quantile(&[fast, slow], 99.0), 30.0);
        let fast = client(9900.0, &[(50.0, 10.0), (99.0, 20.0), (100.0, 30.0)]);
        let slow = client(100.0, &[(50.0, 1000.0), (100.0, 2000.0)]);
        assert_eq!(pooled_quantile(&[fast, slow], 99.5), 1000.0);
    }

    #[test]
    fn a_report_parses_with_its_quantiles_and_errors() {
        let text = "  10 requests in 1.00s, 1KB read\n  Socket errors: connect 1, read 2, write 0, timeout 0\n\
                    Requests/sec:  10.00\nmdr-requests 10\nmdr-q 50 7\nmdr-q 99 9\n";
        let run = WrkRun::parse(text).unwrap();
        assert_eq!((run.rps, run.requests, run.failed), (10.0, 10.0, 3.0));
        assert_eq!(run.quantiles, vec![(50.0, 7.0), (99.0, 9.0)]);
        assert!(WrkRun::parse("Requests/sec: 1\nmdr-requests 1\n").is_err());
    }
}
