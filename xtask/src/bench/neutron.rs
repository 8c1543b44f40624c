//! `cargo xtask bench`: ours against the path a Neutron/OVN site runs
//! today, both ending at the same Nova peer.
//!
//! - ours: VM namespace -> tap -> eBPF -> daemon (Nova backend, response
//!   cache off, so every request reaches Nova as neutron's do) -> peer.
//! - neutron: VM namespace -> per-network namespace with Debian's haproxy
//!   and the configuration neutron's own `HaproxyConfigurator` writes ->
//!   unix socket -> neutron's OVN metadata proxy from PyPI, unmodified,
//!   looking each port up in a real ovsdb-server Southbound -> peer.
//! - the peer alone: wrk in the hypervisor straight to the Nova peer with
//!   the signed headers, as many connections as VMs: what it can serve.
//!
//! A second run gives the peer a realistic service time (20 ms per
//! request, 8 at once, a small nova-api-metadata).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use metadata_tests::{
    Hypervisor, InstanceSpec, Vm,
    neutron::NeutronNetwork,
    nova_peer::{NovaInstance, NovaPeer, Service, instance_signature},
    ovn::{Binding, Southbound},
    uuid_like,
};

use super::harness::{KillOnDrop, Load, SMALL, ratio, wait_served};
use super::wrk::{Strictness, Wrk, field, latency};

const SECRET: &str = "benchmark shared secret";
const CHASSIS: &str = "bench-chassis";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
/// The realistic Nova: per-request time and workers.
pub const REALISTIC: (Duration, usize) = (Duration::from_millis(20), 8);

/// A boot storm: every VM crawling at once, as cloud-init does at boot.
pub struct Storm {
    pub vms: usize,
    /// The requests of one VM's boot (the crawl cloud-init made, twice).
    pub requests_per_vm: usize,
    /// The crawl, as recorded.
    pub crawl: Vec<String>,
    pub ours: StormRun,
    pub neutron: StormRun,
}

/// One path's storm.
#[derive(Debug, Clone, Copy)]
pub struct StormRun {
    /// Until the last VM had all its data (or gave up).
    pub seconds: f64,
    /// VMs that did not get all their data after the client's retries.
    pub failed_vms: usize,
    /// Calls that reached Nova.
    pub nova_calls: usize,
}

/// 500 VMs (50 in quick mode) booting at once against a Nova that takes
/// 20 ms per request, 8 at once: ours with its response cache (the
/// default 15 s) against neutron's agent.
pub fn storm(vms: usize) -> anyhow::Result<Storm> {
    let python = crate::setup::neutron_python()?;
    let (time, workers) = REALISTIC;
    eprintln!(
        "bench: boot storm, {vms} VMs per path, Nova {time:?} per request, {workers} at once"
    );
    let service = Service {
        time,
        workers,
        record: true,
    };
    let paths = Paths::new(vms, service, &python, 15)?;
    let crawl = paths.record_crawl()?;
    // cloud-init crawls twice at boot: the OpenStackLocal datasource in
    // the local stage, then OpenStack in the network stage.
    let boot: Vec<String> = crawl.iter().chain(&crawl).cloned().collect();
    let before = paths.peer.seen.lock().expect("peer state").requests.len();
    let ours = paths.storm(paths.ours.iter(), &boot)?;
    let middle = paths.peer.seen.lock().expect("peer state").requests.len();
    let neutron = paths.storm(paths.neutron.iter().map(|(vm, _)| vm), &boot)?;
    let after = paths.peer.seen.lock().expect("peer state").requests.len();
    Ok(Storm {
        vms,
        requests_per_vm: boot.len(),
        crawl,
        ours: StormRun {
            nova_calls: middle - before,
            ..ours
        },
        neutron: StormRun {
            nova_calls: after - middle,
            ..neutron
        },
    })
}

/// One row: both paths and the peer alone at `vms` clients.
pub struct NovaRow {
    pub vms: usize,
    pub new_connection: bool,
    /// Service time of the peer, zero when it answers at once.
    pub service_ms: u64,
    pub ours: Load,
    pub neutron: Load,
    /// The peer alone; `None` in the realistic run (its limit is known:
    /// workers / time).
    pub peer: Option<Load>,
}

/// Both paths at each concurrency, then the realistic Nova at 10 VMs.
pub fn measure(concurrency: &[usize], seconds: u32, script: &Path) -> anyhow::Result<Vec<NovaRow>> {
    let python = crate::setup::neutron_python()?;
    let mut rows = Vec::new();
    for &n in concurrency {
        eprintln!("bench: ours vs neutron's OVN metadata agent, {n} VM(s) per path");
        let paths = Paths::new(n, Service::default(), &python, 0)?;
        for close in [false, true] {
            rows.push(paths.measure(close, seconds, script, true)?);
        }
    }
    let (time, workers) = REALISTIC;
    let n = 10;
    eprintln!("bench: the same with Nova taking {time:?} per request, {workers} at once");
    let service = Service {
        time,
        workers,
        record: false,
    };
    let paths = Paths::new(n, service, &python, 0)?;
    rows.push(paths.measure(false, seconds.max(4), script, false)?);
    Ok(rows)
}

/// Both paths set up side by side in one hypervisor.
struct Paths {
    hv: Hypervisor,
    peer: NovaPeer,
    ours: Vec<Vm>,
    neutron: Vec<(Vm, NeutronNetwork)>,
    /// Headers a request for `ours[0]` carries to Nova, for the peer alone.
    signed: Vec<String>,
    service_ms: u64,
    _agent: KillOnDrop,
    _sb: Southbound,
}

impl Paths {
    /// `cache_ttl_s` is the daemon's response cache (0: off).
    fn new(n: usize, service: Service, python: &Path, cache_ttl_s: u64) -> anyhow::Result<Self> {
        let mut hv = Hypervisor::new()?;
        hv.ready_timeout = Duration::from_secs(30 + n as u64 / 20);
        let ours: Vec<Vm> = (0..n)
            .map(|_| hv.add_vm(GUEST_IP))
            .collect::<anyhow::Result<_>>()?;
        let bare: Vec<Vm> = (0..n)
            .map(|_| hv.bare_vm(GUEST_IP))
            .collect::<anyhow::Result<_>>()?;
        let specs: Vec<InstanceSpec> = ours
            .iter()
            .chain(&bare)
            .enumerate()
            .map(|(i, vm)| InstanceSpec::for_vm(vm, &format!("vm-{i}")))
            .collect();
        let listener = hv.ns().run(|| TcpListener::bind("127.0.0.1:0"))??;
        let instances = specs.iter().map(NovaInstance::from).collect();
        let peer = NovaPeer::start_with(listener, SECRET, instances, None, service)?;
        hv.extra_config = format!(
            "\n[backend]\ntype = \"nova\"\nurl = \"http://{}\"\nshared_secret = \"{SECRET}\"\n\
             timeout_s = 30\ncache_ttl_s = {cache_ttl_s}\n",
            peer.addr
        );
        hv.set_instances(specs[..n].to_vec())?;
        hv.start_daemon()?;
        let sb = Southbound::standalone(&hv)?;
        let networks = register_ports(&sb, &bare, &specs[n..])?;
        let agent = start_agent(&hv, python, peer.addr.port())?;
        let configs = haproxy_configs(&hv, python, &networks)?;
        let neutron = bare
            .into_iter()
            .zip(&configs)
            .map(|(vm, cfg)| NeutronNetwork::with_config(&vm, cfg).map(|net| (vm, net)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        wait_served(ours.iter().chain(neutron.iter().map(|(vm, _)| vm)))?;
        let signed = signed_headers(&specs[0]);
        Ok(Self {
            hv,
            peer,
            ours,
            neutron,
            signed,
            service_ms: service.time.as_millis() as u64,
            _agent: agent,
            _sb: sb,
        })
    }

    fn measure(
        &self,
        close: bool,
        seconds: u32,
        script: &Path,
        with_peer: bool,
    ) -> anyhow::Result<NovaRow> {
        let url = format!("http://169.254.169.254{SMALL}");
        let ours: Vec<&str> = self.ours.iter().map(|vm| vm.ns.name()).collect();
        let neutron: Vec<&str> = self.neutron.iter().map(|(vm, _)| vm.ns.name()).collect();
        let wrk = Wrk {
            script,
            url: &url,
            close,
            seconds,
        };
        let o = wrk.run(&ours, Strictness::EveryRequest)?;
        let q = wrk
            .run(&neutron, Strictness::CountFailures)
            .with_context(|| {
                let log = fs::read_to_string(self.hv.dir().join("neutron-agent.log"));
                let log = log.unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "neutron's agent log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })?;
        let peer = if with_peer {
            Some(self.peer_alone(close, seconds)?)
        } else {
            None
        };
        Ok(NovaRow {
            vms: self.ours.len(),
            new_connection: close,
            service_ms: self.service_ms,
            ours: o,
            neutron: q,
            peer,
        })
    }

    /// The paths a stock cloud-init's OpenStack reader requests, in order,
    /// recorded from one real crawl (by the first VM on our path).
    fn record_crawl(&self) -> anyhow::Result<Vec<String>> {
        let id = {
            let seen = self.peer.seen.lock().expect("peer state");
            seen.requests.len()
        };
        self.ours[0]
            .cloud_init_openstack("http://169.254.169.254")
            .context("recording cloud-init's crawl")?;
        let seen = self.peer.seen.lock().expect("peer state");
        let crawl: Vec<String> = seen.requests[id..]
            .iter()
            .map(|(_, _, path)| path.clone())
            .collect();
        ensure!(
            !crawl.is_empty(),
            "cloud-init's crawl reached Nova with no request"
        );
        Ok(crawl)
    }

    /// Every VM fetches `paths` at once with curl (keep-alive, each URL
    /// retried up to 5 times a second apart on any error, as cloud-init
    /// retries); the time until the last one finished.
    fn storm<'a>(
        &self,
        vms: impl Iterator<Item = &'a Vm>,
        paths: &[String],
    ) -> anyhow::Result<StormRun> {
        let urls: Vec<String> = paths
            .iter()
            .map(|p| format!("http://169.254.169.254{p}"))
            .collect();
        let started = std::time::Instant::now();
        let children = vms
            .map(|vm| {
                vm.ns
                    .command("curl")
                    .args([
                        "-sf",
                        "-o",
                        "/dev/null",
                        "--retry",
                        "5",
                        "--retry-all-errors",
                    ])
                    .args(["--retry-delay", "1", "--max-time", "60"])
                    .args(&urls)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting curl")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut failed_vms = 0;
        for mut child in children {
            if !child.wait().context("waiting for curl")?.success() {
                failed_vms += 1;
            }
        }
        Ok(StormRun {
            seconds: started.elapsed().as_secs_f64(),
            failed_vms,
            nova_calls: 0,
        })
    }

    /// wrk in the hypervisor straight to the peer, one connection per VM.
    fn peer_alone(&self, close: bool, seconds: u32) -> anyhow::Result<Load> {
        let connections = self.ours.len().to_string();
        let mut args = vec!["netns", "exec", self.hv.ns().name(), "wrk", "--latency"];
        args.extend(["-t1", "-c", &connections]);
        let duration = format!("-d{seconds}s");
        args.push(&duration);
        for header in &self.signed {
            args.extend(["-H", header]);
        }
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        let url = format!("http://{}{SMALL}", self.peer.addr);
        args.push(&url);
        let out = Command::new("ip")
            .args(&args)
            .output()
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && !text.contains("Non-2xx"),
            "wrk against the peer: {text}"
        );
        Ok(Load {
            rps: field(&text, "Requests/sec:").context("wrk: Requests/sec")?,
            p50_us: latency(&text, "50%").context("wrk: p50")?,
            p99_us: latency(&text, "99%").context("wrk: p99")?,
            ..Load::default()
        })
    }
}

/// The four headers neutron's agent sends for `spec`.
fn signed_headers(spec: &InstanceSpec) -> Vec<String> {
    let signature = instance_signature(SECRET.as_bytes(), &spec.id);
    vec![
        format!("X-Instance-ID: {}", spec.id),
        format!("X-Tenant-ID: {}", spec.project_id),
        format!("X-Forwarded-For: {GUEST_IP}"),
        format!("X-Instance-ID-Signature: {signature}"),
    ]
}

/// A network per VM in the Southbound, each with the VM's port bound to
/// this chassis, as ovn-northd and ovn-controller would leave them.
/// Returns the network ids.
fn register_ports(
    sb: &Southbound,
    vms: &[Vm],
    specs: &[InstanceSpec],
) -> anyhow::Result<Vec<String>> {
    let chassis = sb.add_chassis(CHASSIS, "127.0.0.1")?;
    let chassis_column = format!("chassis={chassis}");
    let mut networks = Vec::new();
    for (i, (vm, spec)) in vms.iter().zip(specs).enumerate() {
        let network = uuid_like();
        let datapath = sb.add_network(&network, i as u32 + 1)?;
        let port = uuid_like();
        let binding = Binding {
            port: &port,
            datapath: &datapath,
            key: 1,
            mac_column: format!("{} {}", vm.mac, vm.ip),
            device_id: &spec.id,
            project_id: &spec.project_id,
        };
        sb.bind(&binding, &[&chassis_column])?;
        networks.push(network);
    }
    Ok(networks)
}

/// neutron's configuration for the agent, in the hypervisor's folder.
fn agent_config(hv: &Hypervisor, nova_port: u16) -> anyhow::Result<PathBuf> {
    let state = hv.dir().join("neutron-state");
    fs::create_dir_all(&state).context("creating neutron's state_path")?;
    let ini = hv.dir().join("neutron.ini");
    let text = format!(
        "[DEFAULT]\nmetadata_proxy_socket = {socket}\nnova_metadata_host = 127.0.0.1\n\
         nova_metadata_port = {nova_port}\nmetadata_proxy_shared_secret = {SECRET}\n\
         state_path = {state}\n\n[ovn]\novn_sb_connection = tcp:127.0.0.1:6641\n",
        socket = agent_socket(hv).display(),
        state = state.display(),
    );
    fs::write(&ini, text).with_context(|| format!("writing {}", ini.display()))?;
    Ok(ini)
}

fn agent_socket(hv: &Hypervisor) -> PathBuf {
    hv.dir().join("neutron-metadata.sock")
}

fn runner() -> PathBuf {
    crate::root().join("tests/bench/neutron_ovn_metadata.py")
}

/// Starts neutron's OVN metadata proxy in the hypervisor namespace and
/// waits (60 s at most) for it to say it serves.
fn start_agent(hv: &Hypervisor, python: &Path, nova_port: u16) -> anyhow::Result<KillOnDrop> {
    let ini = agent_config(hv, nova_port)?;
    let log = fs::File::create(hv.dir().join("neutron-agent.log")).context("agent log")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", hv.ns().name()])
        .arg(python)
        .arg(runner())
        .args(["serve", "--chassis", CHASSIS, "--config-file"])
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting neutron's OVN metadata proxy")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let agent = KillOnDrop(child);
    let (ready, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim() == "ready" {
                let _ = ready.send(());
            }
        }
    });
    if said.recv_timeout(Duration::from_secs(60)).is_err() {
        bail!(
            "neutron's OVN metadata proxy did not start; its log: {}",
            hv.dir().join("neutron-agent.log").display()
        );
    }
    Ok(agent)
}

/// Each network's haproxy configuration, written by neutron's own
/// `HaproxyConfigurator`.
fn haproxy_configs(
    hv: &Hypervisor,
    python: &Path,
    networks: &[String],
) -> anyhow::Result<Vec<PathBuf>> {
    let state = hv.dir().join("neutron-state");
    let mut command = Command::new(python);
    command.arg(runner()).arg("haproxy-config");
    for network in networks {
        command.args(["--network", network]);
    }
    command.arg("--socket").arg(agent_socket(hv));
    command.arg("--state-path").arg(&state);
    let out = command
        .output()
        .context("running neutron's HaproxyConfigurator")?;
    ensure!(
        out.status.success(),
        "neutron's HaproxyConfigurator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(".conf"))
        .map(PathBuf::from)
        .collect();
    ensure!(
        paths.len() == networks.len(),
        "expected {} configs, got {paths:?}",
        networks.len()
    );
    Ok(paths)
}

/// The storm's section of results.md.
pub fn storm_markdown(storm: Option<&Storm>) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let Some(s) = storm else {
        return md;
    };
    let (time, workers) = REALISTIC;
    let _ = writeln!(
        md,
        "\n## Boot storm: {} VMs per path at once, Nova {} ms per request, {workers} at once\n",
        s.vms,
        time.as_millis()
    );
    let _ = writeln!(
        md,
        "Each VM makes the {} requests of a boot: the crawl a stock cloud-init 22.4 OpenStack reader made (recorded from a real run), twice (the OpenStackLocal and OpenStack datasources each crawl). curl, keep-alive, each URL retried up to 5 times a second apart on any error. Ours with its response cache (default 15 s); neutron's agent has none.\n",
        s.requests_per_vm
    );
    let _ = writeln!(md, "The crawl: `{}`\n", s.crawl.join("`, `"));
    let _ = writeln!(
        md,
        "| path | all VMs served s | VMs that failed | calls that reached Nova |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for (name, run) in [("ours", &s.ours), ("neutron", &s.neutron)] {
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {} | {} |",
            run.seconds, run.failed_vms, run.nova_calls
        );
    }
    md
}

/// The section of results.md.
pub fn markdown(rows: &[NovaRow]) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    if rows.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "\n## Ours vs neutron's OVN metadata agent, both to the same Nova peer (meta_data.json)\n"
    );
    let _ = writeln!(
        md,
        "ours: tap -> eBPF -> daemon, Nova backend, response cache off (every request reaches Nova). neutron: per-network namespace with Debian's haproxy and the configuration neutron's `HaproxyConfigurator` writes -> unix socket -> neutron {} (PyPI) `neutron.agent.ovn.metadata.server_socket`, ports looked up in a real ovsdb-server Southbound, default `metadata_workers` (0 with OVN: served in the main thread). peer alone: wrk from the hypervisor straight to the Nova peer with the signed headers, one connection per VM.\n",
        crate::setup::NEUTRON_VERSION
    );
    let _ = writeln!(
        md,
        "| VMs | connections | Nova service time | ours req/s | neutron req/s (2xx) | neutron failed | peer alone req/s | ours/neutron | ours p50 µs | neutron p50 µs | ours p99 µs | neutron p99 µs |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let service = if r.service_ms == 0 {
            "none".to_owned()
        } else {
            format!("{} ms, {} at once", r.service_ms, REALISTIC.1)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {service} | {:.0} | {:.0} | {:.1} % | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.vms,
            if r.new_connection {
                "new per request"
            } else {
                "keep-alive"
            },
            r.ours.rps,
            r.neutron.rps,
            r.neutron.error_share * 100.0,
            r.peer
                .map_or_else(|| "-".to_owned(), |p| format!("{:.0}", p.rps)),
            ratio(r.ours.rps, r.neutron.rps),
            r.ours.p50_us,
            r.neutron.p50_us,
            r.ours.p99_us,
            r.neutron.p99_us,
        );
    }
    md
}

pub fn storm_json(s: &Storm) -> serde_json::Value {
    serde_json::json!({
        "vms": s.vms, "requests_per_vm": s.requests_per_vm,
        "ours": {"seconds": s.ours.seconds, "failed_vms": s.ours.failed_vms, "nova_calls": s.ours.nova_calls},
        "neutron": {"seconds": s.neutron.seconds, "failed_vms": s.neutron.failed_vms, "nova_calls": s.neutron.nova_calls},
    })
}

pub fn json(rows: &[NovaRow]) -> serde_json::Value {
    let row = |r: &NovaRow| {
        serde_json::json!({
            "vms": r.vms, "new_connection": r.new_connection, "service_ms": r.service_ms,
            "ours": {"rps": r.ours.rps, "p50_us": r.ours.p50_us, "p99_us": r.ours.p99_us},
            "neutron": {"rps_2xx": r.neutron.rps, "failed_share": r.neutron.error_share,
                        "p50_us": r.neutron.p50_us, "p99_us": r.neutron.p99_us},
            "peer_alone_rps": r.peer.map(|p| p.rps),
        })
    };
    rows.iter().map(row).collect()
}

/// At least 5x the real neutron path's requests/s at every concurrency
/// (with the peer answering at once: with the realistic Nova both are
/// bound by Nova), and the peer never the bottleneck.
pub fn targets(rows: &[NovaRow]) -> Vec<(String, bool)> {
    let fast: Vec<&NovaRow> = rows.iter().filter(|r| r.service_ms == 0).collect();
    if fast.is_empty() {
        return Vec::new();
    }
    let worst = fast
        .iter()
        .map(|r| ratio(r.ours.rps, r.neutron.rps))
        .fold(f64::INFINITY, f64::min);
    let peer_headroom = fast
        .iter()
        .filter_map(|r| r.peer.map(|p| ratio(p.rps, r.ours.rps.max(r.neutron.rps))))
        .fold(f64::INFINITY, f64::min);
    vec![
        (
            format!(
                "ours >= 5x the real neutron path's requests/s at every concurrency (worst {worst:.2}x)"
            ),
            worst >= 5.0,
        ),
        (
            format!(
                "the Nova peer is not the bottleneck (alone it serves {peer_headroom:.2}x the faster path)"
            ),
            peer_headroom >= 1.0,
        ),
    ]
}
