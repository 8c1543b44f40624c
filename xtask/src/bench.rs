//! `cargo xtask bench`: this datapath against the Neutron path it
//! replaces, built side by side on this machine in one run, each figure a
//! ratio against the path measured beside it.
//!
//! - ours: VM namespace -> tap -> eBPF -> the daemon (local backend);
//! - agent mode: VM namespace -> per-network namespace with Debian's haproxy
//!   and Neutron's configuration -> unix socket -> the same daemon in agent
//!   mode, which identifies the VM as neutron-metadata-agent does;
//! - limit: a VM namespace with the same MTU on a plain routed veth with
//!   no programs, to the same daemon (bench_limit.rs): the eBPF path's
//!   ceiling; and nginx serving the same bytes over that veth;
//! - the real neutron OVN agent against a Nova peer (bench_neutron.rs).
//!
//! The load is wrk (bench_wrk.rs); a stall probe (bench_stalls.rs) first
//! measures how much the machine itself stands still.
//!
//! Results go to target/bench/results.md and target/bench/results.json.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use metadata_common::{map_names, pins, program_names};

use super::{
    bench_wrk::{Strictness, Wrk},
    floor_prog::Floor,
};
use anyhow::{Context as _, bail, ensure};
use metadata_tests::{Hypervisor, InstanceSpec, METADATA, Vm, neutron::NeutronNetwork};
use serde_json::{Value, json};

struct Settings {
    quick: bool,
    duration_s: u32,
    concurrency: Vec<usize>,
    memory_networks: Vec<usize>,
    /// Tap counts measured for ours alone.
    memory_taps_only: Vec<usize>,
    burst_taps: usize,
    iperf_s: u32,
    /// Rounds of iperf3 without and with programs, alternating.
    iperf_rounds: usize,
    /// iperf3 runs that time the programs against the floors.
    timing_rounds: usize,
    /// Rounds of each throughput row (every path once per round); each
    /// figure is the median over them. Several short rounds, because this
    /// VM's vCPUs stall for milliseconds a few times a second (the stall
    /// probe's section): one long run's p99 is set by whether a stall fell
    /// into it.
    rounds: usize,
    /// Length of one path's run in a round.
    round_s: u32,
    /// wrk's Lua hook that prints each client's latency quantiles.
    wrk_script: PathBuf,
}

impl Settings {
    fn new(quick: bool, wrk_script: PathBuf) -> Self {
        if quick {
            Self {
                quick,
                duration_s: 1,
                concurrency: vec![1, 10],
                memory_networks: vec![10],
                memory_taps_only: Vec::new(),
                burst_taps: 50,
                iperf_s: 2,
                iperf_rounds: 3,
                timing_rounds: 1,
                rounds: 1,
                round_s: 1,
                wrk_script,
            }
        } else {
            Self {
                quick,
                duration_s: 4,
                concurrency: vec![1, 10, 50],
                memory_networks: vec![10, 100, 500],
                memory_taps_only: vec![5_000],
                burst_taps: 500,
                iperf_s: 5,
                iperf_rounds: 9,
                timing_rounds: 3,
                rounds: 5,
                round_s: 2,
                wrk_script,
            }
        }
    }
}

/// One wrk run's figures, summed or combined over its parallel clients.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Load {
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
}

pub fn run(quick: bool, only: &[Section]) -> anyhow::Result<()> {
    let started = Instant::now();
    let out_dir = super::root().join("target/bench");
    fs::create_dir_all(&out_dir).context("creating target/bench")?;
    let settings = Settings::new(quick, super::bench_wrk::quantiles_script(&out_dir)?);
    let mut report = Report::new(&settings);
    eprintln!("bench: the machine's own stalls");
    let probe_for = Duration::from_secs(if quick { 2 } else { 5 });
    report.stalls = super::bench_stalls::measure(probe_for)?;
    let wanted = |section| only.is_empty() || only.contains(&section);

    if wanted(Section::Throughput) {
        throughput(&settings, &mut report)?;
    }
    if wanted(Section::FirstRequest) {
        first_request(&settings, &mut report)?;
    }
    if wanted(Section::Memory) {
        memory(&settings, &mut report)?;
    }
    if wanted(Section::OtherTraffic) {
        other_traffic(&settings, &mut report)?;
    }
    if wanted(Section::Neutron) {
        report.nova = super::bench_neutron::run(
            &settings.concurrency,
            settings.duration_s,
            &settings.wrk_script,
        )?;
    }
    if wanted(Section::Storm) {
        let vms = if settings.quick { 50 } else { 500 };
        report.storm = Some(super::bench_neutron::storm(vms)?);
    }
    if wanted(Section::Ovn) {
        report.ovn = super::bench_ovn::run()?;
    }

    report.elapsed = started.elapsed();
    fs::write(out_dir.join("results.md"), report.markdown()).context("writing results.md")?;
    fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&report.json())?,
    )
    .context("writing results.json")?;
    println!("{}", report.markdown());
    println!("written to target/bench/results.md and results.json");
    Ok(())
}

/// A daemon with `n` VMs on taps (ours) and `n` VMs behind Neutron
/// networks (neutron) whose haproxies reach the same daemon in agent mode,
/// plus one tap reserved for the loopback client (limit).
struct Bench {
    hv: Hypervisor,
    ours: Vec<Vm>,
    neutron: Vec<(Vm, NeutronNetwork)>,
    /// The limit paths (a VM on a plain routed veth, and nginx).
    limit: super::bench_limit::LimitPath,
    /// The tap whose identity the limit VM borrows (no traffic).
    _limit_vm: Vm,
}

pub(crate) const SMALL: &str = "/openstack/latest/meta_data.json";
const LARGE: &str = "/openstack/latest/user_data";

impl Bench {
    /// `user_data_kib` of user data per instance: 64 for the large-body
    /// runs, 1 for memory (a realistic size, so the figure measures the
    /// path, not the test data).
    fn new(n: usize, with_neutron: bool, user_data_kib: usize) -> anyhow::Result<Self> {
        let mut hv = Hypervisor::new()?;
        // Attaching takes about 10 ms a tap; leave room for thousands.
        hv.ready_timeout = Duration::from_secs(30 + n as u64 / 20);
        let socket = hv.log_path().with_file_name("metadata_proxy");
        hv.extra_config = format!("\n[agent]\nsocket = \"{}\"\n", socket.display());
        let user_data = user_data_of(user_data_kib);
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let mut specs = Vec::new();
        let mut ours = Vec::new();
        for i in 0..n {
            let vm = hv.add_vm(ip)?;
            let mut spec = InstanceSpec::for_vm(&vm, &format!("ours-{i}"));
            spec.user_data = Some(user_data.clone());
            specs.push(spec);
            ours.push(vm);
        }
        // The loopback client's identity: a tap no VM uses.
        let limit_vm = hv.add_vm(Ipv4Addr::new(10, 0, 0, 99))?;
        let mut limit_spec = InstanceSpec::for_vm(&limit_vm, "limit");
        limit_spec.user_data = Some(user_data.clone());
        specs.push(limit_spec);
        let mut bare = Vec::new();
        if with_neutron {
            for i in 0..n {
                let vm = hv.bare_vm(ip)?;
                let mut spec = InstanceSpec::for_vm(&vm, &format!("neutron-{i}"));
                spec.user_data = Some(user_data.clone());
                specs.push(spec);
                bare.push(vm);
            }
        }
        hv.set_instances(specs.clone())?;
        hv.start_daemon()?;
        let mut neutron = Vec::new();
        for vm in bare {
            let spec = specs
                .iter()
                .find(|s| s.ports[0].device == vm.tap)
                .context("spec")?;
            let network = NeutronNetwork::new(&vm, &spec.ports[0].network_id, &socket)?;
            neutron.push((vm, network));
        }
        wait_served(ours.iter().chain(neutron.iter().map(|(vm, _)| vm)))?;
        let limit = super::bench_limit::LimitPath::new(&hv, &limit_vm, &[SMALL, LARGE])?;
        Ok(Self {
            hv,
            ours,
            neutron,
            limit,
            _limit_vm: limit_vm,
        })
    }
}

/// `kib` KiB of cloud-config user data.
fn user_data_of(kib: usize) -> String {
    "#cloud-config\n# "
        .chars()
        .chain(std::iter::repeat_n('x', kib * 1024 - 18))
        .chain(std::iter::once('\n'))
        .collect()
}

/// Waits until every VM is served, so that nothing is measured while
/// still starting.
pub(crate) fn wait_served<'a>(vms: impl Iterator<Item = &'a Vm>) -> anyhow::Result<()> {
    for vm in vms {
        metadata_tests::wait_for(
            &format!("{} to be served", vm.ns.name()),
            Duration::from_secs(60),
            || matches!(vm.http_get(METADATA, SMALL), Ok((200, _))).then_some(()),
        )?;
    }
    Ok(())
}

fn throughput(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    for &n in &settings.concurrency {
        eprintln!("bench: throughput with {n} VM(s) per path");
        let bench = Bench::new(n, true, 64)?;
        for (body, path) in [("meta_data.json", SMALL), ("64 KB user_data", LARGE)] {
            for close in [false, true] {
                let rounds = (0..settings.rounds)
                    .map(|_| bench.throughput_round(settings, path, close))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let median = |pick: fn(&Round) -> Load| {
                    median_load(&rounds.iter().map(pick).collect::<Vec<_>>())
                };
                report.throughput.push(Throughput {
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
    Ok(())
}

/// One measurement of each path, one after the other.
struct Round {
    ours: Load,
    neutron: Load,
    limit: Load,
    nginx: Load,
}

impl Bench {
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
        let nginx_url = format!(
            "http://169.254.169.254:{}{path}",
            super::bench_limit::NGINX_PORT
        );
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

/// Each figure's median over `rounds` (the upper one of an even count).
pub(crate) fn median_load(rounds: &[Load]) -> Load {
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

struct Throughput {
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

/// `load` run, with the CPU time the `servers` processes (all their
/// threads, user and system, softirq work the kernel charged to them
/// included) spent per answered request.
fn with_server_cpu(
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
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Polls GETs from `vm` until one is served (200) or 30 s pass.
fn served_after(vm: &Vm, t0: Instant, probe: Probe) -> anyhow::Result<Duration> {
    let deadline = t0 + Duration::from_secs(30);
    vm.ns.run(|| {
        loop {
            // A short timeout: a SYN lost before the program was attached must
            // not hide the moment the path works.
            if let Ok((200, _)) = metadata_tests::http_get(None, METADATA, SMALL, probe.timeout) {
                return Ok(t0.elapsed());
            }
            if Instant::now() > deadline {
                bail!("not served within 30 s");
            }
            std::thread::sleep(probe.pause);
        }
    })?
}

/// How a poller looks for a VM's first served request: each GET's
/// timeout, which bounds the figure's resolution, and the pause between
/// GETs.
#[derive(Clone, Copy)]
struct Probe {
    timeout: Duration,
    pause: Duration,
}

impl Probe {
    /// Neutron's path, one network at a time: 50 ms GETs every 0.5 ms (with
    /// 5 ms GETs its first answer never came within 30 s; not looked into).
    const NEUTRON: Self = Self {
        timeout: Duration::from_millis(50),
        pause: Duration::from_micros(500),
    };

    /// One tap: 1 ms GETs every 0.5 ms (an answered GET takes about
    /// 0.3 ms here; a SYN sent before the attach is lost, and the GET
    /// carrying it bounds the resolution). A burst: 50 ms GETs every
    /// 10 ms, so that hundreds of pollers do not starve the daemon of the
    /// two cores (5 ms GETs never let a 500-tap burst finish).
    fn for_burst(burst: usize) -> Self {
        if burst == 1 {
            Self {
                timeout: Duration::from_millis(1),
                pause: Duration::from_micros(500),
            }
        } else {
            Self {
                timeout: Duration::from_millis(50),
                pause: Duration::from_millis(10),
            }
        }
    }
}

fn first_request(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: time to first served request");
    report.link_create = Some(kernel_link_create()?);
    for burst in [1, settings.burst_taps] {
        let (attached, ours) = if burst == 1 {
            one_tap_first_request()?
        } else {
            ours_first_request(burst)?
        };
        let neutron = if burst == 1 || !settings.quick {
            let count = burst.min(if settings.quick { 10 } else { 100 });
            Some((count, neutron_first_request(count)?))
        } else {
            None
        };
        report.first_request.push(FirstRequest {
            taps: burst,
            rcu_expedited: false,
            attached,
            ours,
            neutron,
        });
    }
    // The same burst with expedited RCU grace periods, the host-wide
    // setting that makes the kernel's first TCX link on a device cheap.
    let previous = fs::read_to_string(RCU_EXPEDITED).context("reading rcu_expedited")?;
    fs::write(RCU_EXPEDITED, "1").context("setting rcu_expedited")?;
    let measured = ours_first_request(settings.burst_taps);
    fs::write(RCU_EXPEDITED, previous.trim()).context("restoring rcu_expedited")?;
    let (attached, ours) = measured?;
    report.first_request.push(FirstRequest {
        taps: settings.burst_taps,
        rcu_expedited: true,
        attached,
        ours,
        neutron: None,
    });
    Ok(())
}

const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// Samples of the kernel's own first TCX link on a fresh device: one RCU
/// grace period, mostly, whose length moves from run to run (single
/// samples of 7 to 53 ms were seen here), so the floor is their median.
const LINK_CREATE_SAMPLES: usize = 5;

/// The kernel's own BPF_LINK_CREATE time for the first TCX link on a
/// fresh device (an empty program, nothing else), the floor under a new
/// tap's first served request: the median of [`LINK_CREATE_SAMPLES`].
fn kernel_link_create() -> anyhow::Result<Duration> {
    let hv = Hypervisor::new()?;
    let mut samples = (0..LINK_CREATE_SAMPLES)
        .map(|_| link_create_once(&hv))
        .collect::<anyhow::Result<Vec<_>>>()?;
    samples.sort();
    Ok(samples[samples.len() / 2])
}

/// One first TCX link on a fresh veth in `hv`.
fn link_create_once(hv: &Hypervisor) -> anyhow::Result<Duration> {
    let name = format!("lc{}", metadata_tests::unique_suffix());
    hv.ns().ip(&[
        "link",
        "add",
        &name,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{name}p"),
    ])?;
    let ifindex = hv.ifindex_of(&name)?;
    let took = hv.ns().run(|| {
        let started = Instant::now();
        super::floor_prog::attach(Floor::Empty, &[ifindex]).map(|_| started.elapsed())
    })??;
    Ok(took)
}

/// One tap's first request, like the kernel's floor the median of
/// [`LINK_CREATE_SAMPLES`] trials (each a fresh hypervisor, VM and
/// daemon): both are mostly one RCU grace period, whose length moves.
fn one_tap_first_request() -> anyhow::Result<(Duration, Percentiles)> {
    let mut trials = (0..LINK_CREATE_SAMPLES)
        .map(|_| ours_first_request(1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    trials.sort_by_key(|(_, served)| served.p50);
    let (_, median) = &trials[trials.len() / 2];
    let mut attached: Vec<Duration> = trials.iter().map(|(a, _)| *a).collect();
    attached.sort();
    let served: Vec<Duration> = trials.iter().map(|(_, p)| p.p50).collect();
    Ok((
        attached[attached.len() / 2],
        Percentiles {
            p50: median.p50,
            max: *served.last().expect("trials"),
        },
    ))
}

/// Ours: VMs ready, host ends under a name the daemon ignores; then they
/// all get their tap names at once. Returns when every tap was attached,
/// and when each VM was first served.
fn ours_first_request(burst: usize) -> anyhow::Result<(Duration, Percentiles)> {
    let mut hv = Hypervisor::new()?;
    let mut vms = Vec::new();
    let mut specs = Vec::new();
    for i in 0..burst {
        let vm = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5))?;
        hv.ns().ip(&["link", "set", &vm.tap, "down"])?;
        let hidden = format!("pre{}", &vm.tap[3..]);
        hv.ns().ip(&["link", "set", &vm.tap, "name", &hidden])?;
        specs.push(InstanceSpec::for_vm(&vm, &format!("burst-{i}")));
        vms.push((vm, hidden));
    }
    hv.set_instances(specs)?;
    hv.start_daemon()?;
    let batch: String = vms
        .iter()
        .map(|(vm, hidden)| {
            format!(
                "link set dev {hidden} name {}\nlink set dev {} up\n",
                vm.tap, vm.tap
            )
        })
        .collect();
    let file = hv.log_path().with_file_name("burst.batch");
    fs::write(&file, batch)?;
    let t0 = Instant::now();
    hv.ns().ip(&["-batch", &file.display().to_string()])?;
    // Pollers start with the taps.
    let probe = Probe::for_burst(burst);
    let links = hv.bpffs().join(pins::LINKS_DIR);
    let (attached, times) = std::thread::scope(|s| {
        let attached = s.spawn(|| wait_attached(&links, burst, t0));
        let handles: Vec<_> = vms
            .iter()
            .map(|(vm, _)| {
                s.spawn(move || {
                    served_after(vm, t0, probe)
                        .with_context(|| format!("our first request from {}", vm.ns.name()))
                })
            })
            .collect();
        let times = handles
            .into_iter()
            .map(|h| h.join().expect("poller"))
            .collect::<anyhow::Result<Vec<_>>>();
        (attached.join().expect("attach poller"), times)
    });
    fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    let mut times = times?;
    times.sort();
    Ok((attached?, Percentiles::of(&times)))
}

/// The time from `t0` until the daemon had pinned a link for `burst` taps.
fn wait_attached(links: &Path, burst: usize, t0: Instant) -> anyhow::Result<Duration> {
    let deadline = t0 + Duration::from_secs(60);
    loop {
        let pinned = fs::read_dir(links)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().and_then(pins::tap_of_link).is_some())
                    .count()
            })
            .unwrap_or(0);
        if pinned >= burst {
            return Ok(t0.elapsed());
        }
        if Instant::now() > deadline {
            bail!("taps not attached within 60 s");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Neutron: a namespace with its port and a haproxy per network, spawned
/// one after another as an agent does; when each VM was first served.
fn neutron_first_request(count: usize) -> anyhow::Result<Percentiles> {
    let mut hv = Hypervisor::new()?;
    let socket = hv.log_path().with_file_name("metadata_proxy");
    hv.extra_config = format!("\n[agent]\nsocket = \"{}\"\n", socket.display());
    let mut vms = Vec::new();
    let mut specs = Vec::new();
    for i in 0..count {
        let vm = hv.bare_vm(Ipv4Addr::new(10, 0, 0, 5))?;
        specs.push(InstanceSpec::for_vm(&vm, &format!("nburst-{i}")));
        vms.push(vm);
    }
    hv.set_instances(specs.clone())?;
    hv.start_daemon()?;
    let t0 = Instant::now();
    let mut networks = Vec::new();
    let mut times = Vec::new();
    for (vm, spec) in vms.iter().zip(&specs) {
        networks.push(NeutronNetwork::new(vm, &spec.ports[0].network_id, &socket)?);
        times.push(
            served_after(vm, t0, Probe::NEUTRON)
                .with_context(|| format!("neutron's first request from {}", vm.ns.name()))?,
        );
    }
    times.sort();
    Ok(Percentiles::of(&times))
}

#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: Duration,
    max: Duration,
}

impl Percentiles {
    fn of(sorted: &[Duration]) -> Self {
        Self {
            p50: sorted[sorted.len() / 2],
            max: *sorted.last().expect("at least one"),
        }
    }
}

struct FirstRequest {
    taps: usize,
    /// Measured with /sys/kernel/rcu_expedited=1.
    rcu_expedited: bool,
    /// Until the daemon had attached (and pinned) every tap.
    attached: Duration,
    ours: Percentiles,
    neutron: Option<(usize, Percentiles)>,
}

/// Proportional set size of a process, in KiB (RSS where PSS is missing).
fn pss_kib(pid: u32) -> anyhow::Result<u64> {
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

fn daemon_pid(hv: &Hypervisor) -> anyhow::Result<u32> {
    hv.daemon_pid().context("daemon not running")
}

fn memory(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    for &n in &settings.memory_networks {
        eprintln!("bench: memory at {n} networks");
        let bench = Bench::new(n, true, 1)?;
        let daemon = pss_kib(daemon_pid(&bench.hv)?)?;
        let bpf = bpf_memlock_kib()?;
        let mut haproxies = 0;
        for (_, network) in &bench.neutron {
            haproxies += pss_kib(network.haproxy_pid())?;
        }
        report.memory.push(Memory {
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
        let bench = Bench::new(n, false, 1)?;
        let daemon = pss_kib(daemon_pid(&bench.hv)?)?;
        let bpf = bpf_memlock_kib()?;
        report.memory.push(Memory {
            networks: n,
            ours_kib: daemon + bpf,
            ours_daemon_kib: daemon,
            ours_bpf_kib: bpf,
            neutron_kib: 0,
            neutron_haproxy_kib: 0,
        });
    }
    Ok(())
}

struct Memory {
    networks: usize,
    ours_kib: u64,
    ours_daemon_kib: u64,
    ours_bpf_kib: u64,
    neutron_kib: u64,
    neutron_haproxy_kib: u64,
}

fn sysctl(key: &str, value: Option<&str>) -> anyhow::Result<String> {
    match value {
        Some(v) => metadata_tests::run("sysctl", &["-qw", &format!("{key}={v}")]),
        None => metadata_tests::run("sysctl", &["-n", key]).map(|s| s.trim().to_owned()),
    }
}

/// iperf3 from one VM to another across a bridge, with the programs on
/// both taps and without, and the programs' mean run time per packet.
fn other_traffic(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: cost to other traffic");
    let mut hv = Hypervisor::new()?;
    let a = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5))?;
    let b = hv.add_vm(Ipv4Addr::new(10, 0, 0, 6))?;
    let bridge = hv.add_bridge()?;
    hv.plug(&a.tap, &bridge)?;
    hv.plug(&b.tap, &bridge)?;
    let _server = start_iperf_server(&b)?;
    // Alternate without and with programs and compare the medians: single
    // iperf3 runs on veths vary by a few percent. The rate with programs is
    // measured with the daemon's programs alone and statistics off; the
    // per-packet times come from separate runs with the floors in front
    // and statistics on (their clock reads cost more than the programs).
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..settings.iperf_rounds {
        without.push(iperf_bps(&a, &b, settings.iperf_s)?);
        with.push(with_programs(&mut hv, &a, &b, settings.iperf_s, Timing::Off)?.0);
    }
    let mut stats = [(0.0, 0.0); 3];
    for _ in 0..settings.timing_rounds {
        let (_, round) = with_programs(&mut hv, &a, &b, settings.iperf_s, Timing::On)?;
        for (total, (time, count)) in stats.iter_mut().zip(round) {
            *total = (total.0 + time, total.1 + count);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [
        (run_time, run_cnt),
        (empty_time, empty_cnt),
        (peek_time, peek_cnt),
    ] = stats;
    ensure!(
        run_cnt == empty_cnt && run_cnt == peek_cnt,
        "the empty program ran {empty_cnt} times, the peeking one {peek_cnt}, \
         tap_ingress {run_cnt}: not the same packets"
    );
    report.other_traffic = Some(OtherTraffic {
        without_bps: median(&mut without),
        with_bps: median(&mut with),
        ns_per_packet: ratio(run_time, run_cnt),
        empty_ns_per_packet: ratio(empty_time, empty_cnt),
        peek_ns_per_packet: ratio(peek_time, peek_cnt),
        packets: run_cnt as u64,
    });
    Ok(())
}

/// Whether a run with programs also times them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// The daemon's programs alone, statistics off: the rate other
    /// traffic gets.
    Off,
    /// The floors (the empty and the peeking program) in front of them on
    /// the same packets (data one way, ACKs the other), statistics on.
    On,
}

/// One iperf3 run from `a` to `b` with the daemon's programs on their taps.
/// Returns the rate and, when timed, (run time, run count) of tap_ingress,
/// the empty and the peeking program (zeros otherwise).
fn with_programs(
    hv: &mut Hypervisor,
    a: &Vm,
    b: &Vm,
    seconds: u32,
    timing: Timing,
) -> anyhow::Result<(f64, [(f64, f64); 3])> {
    hv.set_instances(vec![
        InstanceSpec::for_vm(a, "a"),
        InstanceSpec::for_vm(b, "b"),
    ])?;
    hv.start_daemon()?;
    let measured = if timing == Timing::On {
        timed_iperf(hv, a, b, seconds)
    } else {
        iperf_bps(a, b, seconds).map(|bps| (bps, [(0.0, 0.0); 3]))
    };
    hv.stop_daemon()?;
    hv.daemon_command(&["teardown"])?;
    measured
}

/// An iperf3 run with the floors attached and statistics on.
fn timed_iperf(
    hv: &Hypervisor,
    a: &Vm,
    b: &Vm,
    seconds: u32,
) -> anyhow::Result<(f64, [(f64, f64); 3])> {
    let taps = [hv.ifindex_of(&a.tap)?, hv.ifindex_of(&b.tap)?];
    let _floors = hv.ns().run(|| {
        anyhow::Ok([
            super::floor_prog::attach(Floor::Empty, &taps)?,
            super::floor_prog::attach(Floor::Peek, &taps)?,
        ])
    })??;
    let previous = sysctl("kernel.bpf_stats_enabled", None)?;
    sysctl("kernel.bpf_stats_enabled", Some("1"))?;
    let measured = iperf_bps(a, b, seconds);
    let stats = [
        run_stats("tap_ingress"),
        run_stats(Floor::Empty.name()),
        run_stats(Floor::Peek.name()),
    ];
    sysctl("kernel.bpf_stats_enabled", Some(&previous))?;
    let [ours, empty, peek] = stats;
    Ok((measured?, [ours?, empty?, peek?]))
}

/// Total run time (ns) and run count of the newest program called `name`.
fn run_stats(name: &str) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "name", name])
        .output()
        .context("running bpftool prog show")?;
    program_run_stats(&out.stdout).with_context(|| format!("stats of {name}"))
}

/// An iperf3 server in `vm`, returned once it listens (a probe connection
/// would count as a client).
fn start_iperf_server(vm: &Vm) -> anyhow::Result<KillOnDrop> {
    let server = vm
        .ns
        .command("iperf3")
        .args(["-s", "-B", &vm.ip.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .context("starting iperf3 -s")?;
    metadata_tests::wait_for("iperf3 server", Duration::from_secs(5), || {
        vm.ns
            .exec("ss", &["-Hltn", "sport = :5201"])
            .ok()
            .filter(|out| !out.trim().is_empty())
    })?;
    Ok(server)
}

/// TCP throughput from `client` to `server` over `seconds`, bits/s received.
fn iperf_bps(client: &Vm, server: &Vm, seconds: u32) -> anyhow::Result<f64> {
    let out = client.ns.exec(
        "iperf3",
        &[
            "-J",
            "-c",
            &server.ip.to_string(),
            "-t",
            &seconds.to_string(),
        ],
    )?;
    let json: Value = serde_json::from_str(&out)?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 result: {out}"))
}

/// Total run time (ns) and run count of the newest program in
/// `bpftool -j prog show name ...` output.
fn program_run_stats(bpftool_stdout: &[u8]) -> anyhow::Result<(f64, f64)> {
    let text = String::from_utf8_lossy(bpftool_stdout);
    // One object per program of that name; take ours (the newest).
    let progs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| if let Value::Array(a) = v { a } else { vec![v] })
        .collect();
    let prog = progs
        .iter()
        .max_by_key(|p| p["id"].as_u64())
        .context("no such program")?;
    Ok((
        prog["run_time_ns"].as_f64().unwrap_or(0.0),
        prog["run_cnt"].as_f64().unwrap_or(0.0),
    ))
}

pub(crate) struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct OtherTraffic {
    without_bps: f64,
    with_bps: f64,
    ns_per_packet: f64,
    /// The empty program's, on the same packets.
    empty_ns_per_packet: f64,
    /// The peeking program's (headers read and compared), on the same
    /// packets.
    peek_ns_per_packet: f64,
    packets: u64,
}

struct Report {
    quick: bool,
    /// Rounds of each throughput row, and their length.
    rounds: usize,
    round_s: u32,
    machine: String,
    command: String,
    elapsed: Duration,
    throughput: Vec<Throughput>,
    first_request: Vec<FirstRequest>,
    memory: Vec<Memory>,
    other_traffic: Option<OtherTraffic>,
    ovn: Vec<super::bench_ovn::Sync>,
    nova: Vec<super::bench_neutron::NovaRow>,
    storm: Option<super::bench_neutron::Storm>,
    /// The kernel's BPF_LINK_CREATE for a first TCX link, alone.
    link_create: Option<Duration>,
    stalls: Vec<super::bench_stalls::CpuStalls>,
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

impl Report {
    fn new(settings: &Settings) -> Self {
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
        Self {
            quick: settings.quick,
            rounds: settings.rounds,
            round_s: settings.round_s,
            machine: format!("{cores} cores ({cpu}), {mem} GiB, Linux {}", kernel.trim()),
            command: if settings.quick {
                "cargo xtask bench --quick".into()
            } else {
                "cargo xtask bench".into()
            },
            elapsed: Duration::ZERO,
            throughput: Vec::new(),
            first_request: Vec::new(),
            memory: Vec::new(),
            other_traffic: None,
            ovn: Vec::new(),
            nova: Vec::new(),
            storm: None,
            link_create: None,
            stalls: Vec::new(),
        }
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        self.write_header(&mut md);
        md.push_str(&super::bench_stalls::markdown(&self.stalls));
        self.write_throughput(&mut md);
        md.push_str(&super::bench_neutron::markdown(&self.nova));
        md.push_str(&super::bench_neutron::storm_markdown(self.storm.as_ref()));
        self.write_first_request(&mut md);
        self.write_memory(&mut md);
        self.write_other_traffic(&mut md);
        md.push_str(&super::bench_ovn::markdown(&self.ovn));
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

    /// Requests per second and latency, one row per VM count, body size and connection mode.
    fn write_throughput(&self, md: &mut String) {
        if self.throughput.is_empty() {
            return;
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
        for t in &self.throughput {
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
    }

    /// Time from a tap (or network) appearing to its first served request.
    fn write_first_request(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Time from a VM's tap (or network) appearing to its first served request\n"
        );
        let _ = writeln!(
            md,
            "| appearing at once | ours: all attached ms | ours: first served p50 ms | ours max ms | neutron (namespace + haproxy, sequential) p50 ms | neutron max ms | ours/neutron (p50) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for f in &self.first_request {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            match f.neutron {
                Some((count, n)) => {
                    let _ = writeln!(
                        md,
                        "| {} taps / {} networks | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} |",
                        f.taps,
                        count,
                        ms(f.attached),
                        ms(f.ours.p50),
                        ms(f.ours.max),
                        ms(n.p50),
                        ms(n.max),
                        ratio(ms(f.ours.p50), ms(n.p50))
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} taps{} | {:.1} | {:.1} | {:.1} | - | - | - |",
                        f.taps,
                        if f.rcu_expedited {
                            " (rcu_expedited=1)"
                        } else {
                            ""
                        },
                        ms(f.attached),
                        ms(f.ours.p50),
                        ms(f.ours.max)
                    );
                }
            }
        }
        if let Some(link) = self.link_create {
            let _ = writeln!(
                md,
                "\nThe kernel's own BPF_LINK_CREATE for the first TCX link on a fresh device (an empty program, timed alone; median of {LINK_CREATE_SAMPLES} devices): {:.1} ms. One tap: the median of {LINK_CREATE_SAMPLES} trials (max: the slowest trial).",
                link.as_secs_f64() * 1e3
            );
        }
    }

    /// Memory of the metadata path, ours against neutron's.
    fn write_memory(&self, md: &mut String) {
        if self.memory.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## Memory of everything the metadata path runs\n");
        let _ = writeln!(
            md,
            "| networks (1 VM each) | ours KiB (daemon PSS + BPF memlock) | neutron KiB (haproxies PSS + agent PSS) | ours/neutron |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for m in &self.memory {
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
    }

    /// Throughput of tenant traffic with and without the programs.
    fn write_other_traffic(&self, md: &mut String) {
        if let Some(o) = &self.other_traffic {
            let _ = writeln!(
                md,
                "\n## Cost to other traffic (iperf3 TCP, VM to VM across a bridge)\n"
            );
            let _ = writeln!(
                md,
                "| without programs Gbit/s | with the daemon's programs Gbit/s | with/without | tap_ingress ns per packet | empty program ns per packet (same packets) | peeking program ns per packet (same packets) | ours above empty | ours above peeking | packets measured |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
            let _ = writeln!(
                md,
                "| {:.2} | {:.2} | {:.3} | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {} |",
                o.without_bps / 1e9,
                o.with_bps / 1e9,
                ratio(o.with_bps, o.without_bps),
                o.ns_per_packet,
                o.empty_ns_per_packet,
                o.peek_ns_per_packet,
                o.ns_per_packet - o.empty_ns_per_packet,
                o.ns_per_packet - o.peek_ns_per_packet,
                o.packets
            );
            let _ = writeln!(
                md,
                "\nRates: medians of alternating rounds, the daemon's programs alone and BPF statistics off. Per-packet times: separate runs with the empty and the peeking program attached in front of `tap_ingress` and statistics on."
            );
        }
    }

    fn targets(&self) -> Vec<(String, bool)> {
        let mut targets = self.throughput_targets();
        targets.extend(super::bench_neutron::targets(&self.nova));
        if let Some(m) = self.memory.iter().rfind(|m| m.neutron_kib > 0) {
            let r = ratio(m.ours_kib as f64, m.neutron_kib as f64);
            targets.push((
                format!(
                    "memory at {} networks <= 1/50 of neutron's ({r:.4}, i.e. 1/{:.0})",
                    m.networks,
                    1.0 / r
                ),
                r <= 1.0 / 50.0,
            ));
        }
        targets.extend(self.first_request_targets());
        if let Some(o) = &self.other_traffic {
            let r = ratio(o.with_bps, o.without_bps);
            targets.push((
                format!("other traffic within 1% of no programs ({r:.3})"),
                r >= 0.99,
            ));
            let above = o.ns_per_packet - o.empty_ns_per_packet;
            targets.push((
                format!(
                    "tap_ingress <= 10 ns above an empty program on the same packets ({above:.1} ns)"
                ),
                above <= 10.0,
            ));
        }
        targets
    }

    /// One tap served within the kernel's link time plus 5 ms; a burst
    /// attached within a second (with the host's default RCU).
    fn first_request_targets(&self) -> Vec<(String, bool)> {
        let mut targets = Vec::new();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if let (Some(f), Some(link)) = (self.first_request.first(), self.link_create) {
            targets.push((
                format!(
                    "one tap's first request served <= the kernel's BPF_LINK_CREATE + 5 ms (medians: {:.1} ms vs {:.1} + 5 ms)",
                    ms(f.ours.p50),
                    ms(link)
                ),
                ms(f.ours.p50) <= ms(link) + 5.0,
            ));
        }
        let burst = |expedited: bool| {
            self.first_request
                .iter()
                .find(|f| f.taps > 1 && f.rcu_expedited == expedited)
        };
        if let Some(f) = burst(false) {
            let expedited = burst(true).map_or_else(String::new, |e| {
                format!("; with rcu_expedited=1: {:.0} ms", ms(e.attached))
            });
            targets.push((
                format!(
                    "{} taps appearing at once all attached within 1 s ({:.0} ms{expedited})",
                    f.taps,
                    ms(f.attached)
                ),
                f.attached <= Duration::from_secs(1),
            ));
        }
        targets
    }

    /// The request-rate and latency targets, each with its worst ratio.
    fn throughput_targets(&self) -> Vec<(String, bool)> {
        let mut targets = Vec::new();
        if self.throughput.is_empty() {
            return targets;
        }
        let worst_p99 = self
            .throughput
            .iter()
            .map(|t| ratio(t.ours.p99_us, t.limit.p99_us))
            .fold(0.0, f64::max);
        targets.push((
            format!("ours p99 <= 1.2x the limit path's p99 in every row (worst {worst_p99:.2}x)"),
            worst_p99 <= 1.2,
        ));
        let worst_nginx = self
            .throughput
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

    fn json(&self) -> Value {
        let load = |l: &Load| {
            json!({"rps": l.rps, "p50_us": l.p50_us, "p99_us": l.p99_us,
                   "server_cpu_us_per_request": l.server_cpu_us})
        };
        let mut targets = BTreeMap::new();
        for (name, ok) in self.targets() {
            targets.insert(name, ok);
        }
        json!({
            "machine": self.machine,
            "command": self.command,
            "quick": self.quick,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "stalls": super::bench_stalls::json(&self.stalls),
            "throughput": self.throughput.iter().map(|t| json!({
                "vms": t.vms, "body": t.body, "new_connection": t.new_connection,
                "ours": load(&t.ours), "agent_mode": load(&t.neutron), "limit": load(&t.limit),
                "nginx": load(&t.nginx),
                "ours_over_neutron_rps": ratio(t.ours.rps, t.neutron.rps),
                "ours_over_limit_rps": ratio(t.ours.rps, t.limit.rps),
                "ours_over_neutron_p99": ratio(t.ours.p99_us, t.neutron.p99_us),
            })).collect::<Vec<_>>(),
            "first_request": self.first_request.iter().map(|f| json!({
                "taps": f.taps,
                "ours_attached_ms": f.attached.as_secs_f64() * 1e3,
                "ours_p50_ms": f.ours.p50.as_secs_f64() * 1e3,
                "ours_max_ms": f.ours.max.as_secs_f64() * 1e3,
                "neutron": f.neutron.map(|(count, n)| json!({"networks": count, "p50_ms": n.p50.as_secs_f64() * 1e3, "max_ms": n.max.as_secs_f64() * 1e3})),
            })).collect::<Vec<_>>(),
            "memory": self.memory.iter().map(|m| json!({
                "networks": m.networks, "ours_kib": m.ours_kib, "ours_daemon_kib": m.ours_daemon_kib,
                "ours_bpf_kib": m.ours_bpf_kib, "neutron_kib": m.neutron_kib,
                "neutron_haproxy_kib": m.neutron_haproxy_kib,
                "ours_over_neutron": ratio(m.ours_kib as f64, m.neutron_kib as f64),
            })).collect::<Vec<_>>(),
            "other_traffic": self.other_traffic.as_ref().map(|o| json!({
                "without_bps": o.without_bps, "with_bps": o.with_bps,
                "with_over_without": ratio(o.with_bps, o.without_bps),
                "tap_ingress_ns_per_packet": o.ns_per_packet,
                "empty_program_ns_per_packet": o.empty_ns_per_packet,
                "peeking_program_ns_per_packet": o.peek_ns_per_packet, "packets": o.packets,
            })),
            "ovn_first_view": super::bench_ovn::json(&self.ovn),
            "neutron_ovn_agent": super::bench_neutron::json(&self.nova),
            "boot_storm": self.storm.as_ref().map(|s| json!({
                "vms": s.vms, "requests_per_vm": s.requests_per_vm,
                "ours": {"seconds": s.ours.seconds, "failed_vms": s.ours.failed_vms, "nova_calls": s.ours.nova_calls},
                "neutron": {"seconds": s.neutron.seconds, "failed_vms": s.neutron.failed_vms, "nova_calls": s.neutron.nova_calls},
            })),
            "targets": targets,
        })
    }
}
