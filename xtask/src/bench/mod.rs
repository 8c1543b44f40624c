//! `cargo xtask bench`: this datapath against the Neutron path it
//! replaces, built side by side on this machine in one run, each figure a
//! ratio against the path measured beside it.
//!
//! - ours: VM namespace -> tap -> eBPF -> the daemon (local backend);
//! - agent mode: VM namespace -> per-network namespace with Debian's haproxy
//!   and Neutron's configuration -> unix socket -> the same daemon in agent
//!   mode, which identifies the VM as neutron-metadata-agent does;
//! - limit: a VM namespace with the same MTU on a plain routed veth with
//!   no programs, to the same daemon ([`limit`]): the eBPF path's
//!   ceiling; and nginx serving the same bytes over that veth;
//! - the real neutron OVN agent against a Nova peer ([`neutron`]).
//!
//! This module runs the sections and assembles the report; [`paths`]
//! builds the paths side by side and [`harness`] holds the rest they
//! share (load figures, process statistics); each section has its own module with `measure`,
//! `markdown`, `json` and `targets`. The load is wrk ([`wrk`]); a stall
//! probe ([`stalls`]) first measures how much the machine itself stands
//! still.
//!
//! Results go to target/bench/results.md and target/bench/results.json.

mod first_request;
mod floor_prog;
mod harness;
mod identity;
mod limit;
mod memory;
mod neutron;
mod other_traffic;
mod ovn;
mod paths;
mod settings;
mod stalls;
mod throughput;
mod wrk;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use self::settings::Settings;

/// The benchmark's sections, each runnable alone with `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Throughput,
    FirstRequest,
    Memory,
    OtherTraffic,
    Ovn,
    /// Ours against neutron's own OVN metadata agent, both to Nova.
    Neutron,
    /// Every VM booting at once against a realistic Nova.
    Storm,
    /// What signing identity costs, and its effect on other guests.
    Identity,
}

pub fn run(quick: bool, only: &[Section]) -> anyhow::Result<()> {
    let started = Instant::now();
    let out_dir = crate::root().join("target/bench");
    fs::create_dir_all(&out_dir).context("creating target/bench")?;
    let settings = Settings::new(quick, wrk::quantiles_script(&out_dir)?);
    let mut report = Report::new(&settings);
    eprintln!("bench: the machine's own stalls");
    let probe_for = Duration::from_secs(if quick { 2 } else { 5 });
    report.stalls = stalls::measure(probe_for)?;
    let wanted = |section| only.is_empty() || only.contains(&section);
    if wanted(Section::Throughput) {
        report.throughput = throughput::measure(&settings)?;
    }
    if wanted(Section::FirstRequest) {
        report.first_request = Some(first_request::measure(&settings)?);
    }
    if wanted(Section::Memory) {
        report.memory = memory::measure(&settings)?;
    }
    if wanted(Section::OtherTraffic) {
        report.other_traffic = Some(other_traffic::measure(&settings)?);
    }
    if wanted(Section::Neutron) {
        report.nova = neutron::measure(
            &settings.concurrency,
            settings.duration_s,
            &settings.wrk_script,
        )?;
    }
    if wanted(Section::Storm) {
        let vms = if settings.quick { 50 } else { 500 };
        report.storm = Some(neutron::storm(vms)?);
    }
    if wanted(Section::Ovn) {
        report.ovn = ovn::measure()?;
    }
    if wanted(Section::Identity) {
        report.identity = Some(identity::measure(&settings)?);
    }
    report.elapsed = started.elapsed();
    report.write(&out_dir)
}

/// Every section's figures, and what the run was.
struct Report {
    quick: bool,
    /// Rounds of each throughput row, and their length.
    rounds: usize,
    round_s: u32,
    machine: String,
    command: String,
    elapsed: Duration,
    stalls: Vec<stalls::CpuStalls>,
    throughput: Vec<throughput::Throughput>,
    first_request: Option<first_request::FirstRequests>,
    memory: Vec<memory::Memory>,
    other_traffic: Option<other_traffic::OtherTraffic>,
    ovn: Vec<ovn::Sync>,
    nova: Vec<neutron::NovaRow>,
    storm: Option<neutron::Storm>,
    identity: Option<identity::IdentityCost>,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

/// This machine in one line: cores, CPU model, memory, kernel.
fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = metadata_tests::run("uname", &["-r"]).unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores ({cpu}), {mem} GiB, Linux {}", kernel.trim())
}

impl Report {
    fn new(settings: &Settings) -> Self {
        Self {
            quick: settings.quick,
            rounds: settings.rounds,
            round_s: settings.round_s,
            machine: machine(),
            command: if settings.quick {
                "cargo xtask bench --quick".into()
            } else {
                "cargo xtask bench".into()
            },
            elapsed: Duration::ZERO,
            stalls: Vec::new(),
            throughput: Vec::new(),
            first_request: None,
            memory: Vec::new(),
            other_traffic: None,
            ovn: Vec::new(),
            nova: Vec::new(),
            storm: None,
            identity: None,
        }
    }

    /// results.md and results.json under `out_dir`; the markdown also on
    /// stdout.
    fn write(&self, out_dir: &std::path::Path) -> anyhow::Result<()> {
        fs::write(out_dir.join("results.md"), self.markdown()).context("writing results.md")?;
        fs::write(
            out_dir.join("results.json"),
            serde_json::to_string_pretty(&self.json())?,
        )
        .context("writing results.json")?;
        println!("{}", self.markdown());
        println!("written to target/bench/results.md and results.json");
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        self.write_header(&mut md);
        md.push_str(&stalls::markdown(&self.stalls));
        md.push_str(&throughput::markdown(&self.throughput));
        md.push_str(&neutron::markdown(&self.nova));
        md.push_str(&neutron::storm_markdown(self.storm.as_ref()));
        if let Some(first) = &self.first_request {
            md.push_str(&first_request::markdown(first));
        }
        md.push_str(&memory::markdown(&self.memory));
        if let Some(other) = &self.other_traffic {
            md.push_str(&other_traffic::markdown(other));
        }
        md.push_str(&ovn::markdown(&self.ovn));
        md.push_str(&identity::markdown(self.identity.as_ref()));
        let _ = writeln!(md, "\n## Targets\n");
        for (target, ok) in self.targets() {
            let _ = writeln!(md, "- {target}: **{}**", verdict(ok));
        }
        md
    }

    /// Machine, command and what the paths and the load are.
    fn write_header(&self, md: &mut String) {
        let _ = writeln!(md, "# metadata-redirector benchmark\n");
        let _ = writeln!(md, "- machine: {}", self.machine);
        let _ = writeln!(
            md,
            "- command: `{}` (as root){}",
            self.command,
            if self.quick {
                ", quick mode: short runs, fewer sizes"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "- run took {:.0} s", self.elapsed.as_secs_f64());
        let _ = writeln!(
            md,
            "- paths: **ours** = VM namespace -> tap -> eBPF -> daemon (local backend); **agent mode** = VM namespace -> per-network namespace with haproxy 2.6 (Neutron's config) -> unix socket -> the same daemon in agent mode (isolates haproxy's cost); **limit** = a VM namespace with the same MTU on a plain routed veth with no programs -> the same daemon (its address is a reserved tap's slot address, so the daemon knows it without NAT); **nginx** = that VM to Debian's nginx serving the same bytes from files over the same veth"
        );
        let _ = writeln!(
            md,
            "- load: one `wrk -t1 -c1` per VM namespace, all at once; requests/s summed; p50 and p99 over all the clients' requests (pooled from each client's quantiles); each figure the median of {} round(s) of {} s, each round measuring every path once, one after the other\n",
            self.rounds, self.round_s
        );
    }

    fn targets(&self) -> Vec<(String, bool)> {
        let mut targets = throughput::targets(&self.throughput);
        targets.extend(neutron::targets(&self.nova));
        targets.extend(memory::targets(&self.memory));
        if let Some(first) = &self.first_request {
            targets.extend(first_request::targets(first));
        }
        if let Some(other) = &self.other_traffic {
            targets.extend(other_traffic::targets(other));
        }
        targets
    }

    fn json(&self) -> Value {
        let targets: BTreeMap<String, bool> = self.targets().into_iter().collect();
        json!({
            "machine": self.machine,
            "command": self.command,
            "quick": self.quick,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "stalls": stalls::json(&self.stalls),
            "throughput": throughput::json(&self.throughput),
            "first_request": self.first_request.as_ref().map_or_else(|| json!([]), first_request::json),
            "memory": memory::json(&self.memory),
            "other_traffic": self.other_traffic.as_ref().map(other_traffic::json),
            "ovn_first_view": ovn::json(&self.ovn),
            "neutron_ovn_agent": neutron::json(&self.nova),
            "boot_storm": self.storm.as_ref().map(neutron::storm_json),
            "identity": self.identity.as_ref().map(identity::json),
            "targets": targets,
        })
    }
}
