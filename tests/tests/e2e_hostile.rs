//! A hostile guest against the datapath and the daemon: forged proxy
//! replies with forwarding on, direct reach of the proxy through the slot
//! ranges, descriptor exhaustion, and a daemon without a shared bpffs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use metadata_tests::{
    Hypervisor, InstanceSpec, METADATA, Netns, RawSocket, Vm,
    packet::{Ipv4Opts, tcp_frame, tcp6_frame},
    raise_open_files_limit, veth_pair, wait_for,
};

const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const VICTIM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
const META: &str = "/openstack/latest/meta_data.json";
const PROXY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa9fe, 0x6464, 0, 0, 0, 0xffff, 0xfffe);

fn mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

fn counter(hv: &Hypervisor, tap: &str, name: &str) -> u64 {
    hv.counters(tap).unwrap()[name].as_u64().unwrap()
}

/// The NAT addresses of `tap`'s slots, IPv4 and IPv6.
fn slot_addrs(hv: &Hypervisor, tap: &str) -> Vec<IpAddr> {
    let status = hv.status().unwrap();
    let taps = status["taps"].as_array().unwrap();
    let tap = taps.iter().find(|t| t["device"] == tap).unwrap();
    tap["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["nat"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The uuid `vm` is served, asserted to be its own.
fn served(vm: &Vm, spec: &InstanceSpec) {
    let (status, body) = vm.http_get(METADATA, META).unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["uuid"], spec.id.as_str());
}

/// Two VMs, the daemon, and forwarding on in the hypervisor, as on many
/// compute nodes.
fn setup() -> (Hypervisor, Vm, Vm, InstanceSpec) {
    setup_with("")
}

/// As [`setup`], with more `[datapath]` keys.
fn setup_with(datapath: &str) -> (Hypervisor, Vm, Vm, InstanceSpec) {
    let mut hv = Hypervisor::new().unwrap();
    hv.datapath_config = datapath.into();
    let attacker = hv.add_vm(ATTACKER_IP).unwrap();
    let victim = hv.add_vm(VICTIM_IP).unwrap();
    let victim_spec = InstanceSpec::for_vm(&victim, "victim");
    hv.set_instances(vec![
        InstanceSpec::for_vm(&attacker, "attacker"),
        victim_spec.clone(),
    ])
    .unwrap();
    hv.start_daemon().unwrap();
    hv.ns()
        .exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )
        .unwrap();
    (hv, attacker, victim, victim_spec)
}

/// Data segments "from the proxy" to each of `slots`, as a guest forges
/// them: to `dst_mac`, from the metadata or proxy address and port 80.
fn forged_replies(slots: &[IpAddr], src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<Vec<u8>> {
    slots
        .iter()
        .map(|slot| match slot {
            IpAddr::V4(slot) => tcp_frame(
                (dst_mac, src_mac),
                [169, 254, 169, 254],
                slot.octets(),
                (80, 40000),
                b"INJECTED",
                Ipv4Opts::default(),
            ),
            IpAddr::V6(slot) => tcp6_frame(
                (dst_mac, src_mac),
                PROXY6.octets(),
                slot.octets(),
                (80, 40000),
                b"INJECTED",
            ),
        })
        .collect()
}

/// Sends `frames` out of `ns`'s eth0 as they are.
fn send_frames(ns: &Netns, frames: &[Vec<u8>]) {
    ns.run(|| -> anyhow::Result<()> {
        let socket = RawSocket::open("eth0")?;
        for frame in frames {
            socket.send(frame)?;
        }
        Ok(())
    })
    .unwrap()
    .unwrap();
}

fn injected(frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter(|f| f.windows(8).any(|w| w == b"INJECTED"))
        .count()
}

#[test]
fn forged_proxy_replies_never_reach_another_vm_even_with_forwarding_on() {
    let (hv, attacker, victim, victim_spec) = setup();
    let victim_slots = slot_addrs(&hv, &victim.tap);
    assert_eq!(
        victim_slots.len(),
        2,
        "one IPv4 and one IPv6 slot: {victim_slots:?}"
    );
    let capture = victim.ns.run(|| RawSocket::open("eth0")).unwrap().unwrap();

    let tap_mac = mac(&hv.mac_of(&attacker.tap).unwrap());
    let forged = forged_replies(&victim_slots, mac(&attacker.mac), tap_mac);
    send_frames(&attacker.ns, &forged);
    // The forgeries went through the hypervisor before this request and
    // its reply did: if one was delivered, it is in the capture by now.
    served(&victim, &victim_spec);
    let seen = capture.drain();
    assert_eq!(injected(&seen), 0, "no forged segment reached the victim");
    assert!(!seen.is_empty(), "the capture saw the victim's own traffic");
    let dropped = counter(&hv, &attacker.tap, "drop_reserved");
    assert_eq!(
        dropped,
        forged.len() as u64,
        "each forgery dropped at the attacker's tap"
    );
    println!("attacker's tap: drop_reserved {dropped}");
}

#[test]
fn forged_replies_from_an_unwatched_device_are_dropped_on_the_host_device() {
    // Defence in depth: a forgery that never crossed a tap program (an
    // uplink the datapath does not watch) still reaches host_egress, which
    // translates only what the host itself sent.
    let (hv, _attacker, victim, victim_spec) = setup();
    let victim_slots = slot_addrs(&hv, &victim.tap);
    let capture = victim.ns.run(|| RawSocket::open("eth0")).unwrap().unwrap();
    let outside = Netns::new("mdr-vm").unwrap();
    let uplink = format!("up{}", outside.name().trim_start_matches("mdr-vm-"));
    veth_pair(hv.ns(), &uplink, &outside).unwrap();
    hv.ns().ip(&["link", "set", &uplink, "up"]).unwrap();
    outside.ip(&["link", "set", "eth0", "up"]).unwrap();
    let uplink_mac = mac(&hv.mac_of(&uplink).unwrap());
    let outside_mac = mac(&outside
        .ip(&["-json", "link", "show", "eth0"])
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(&j).unwrap();
            v[0]["address"].as_str().unwrap().to_owned()
        })
        .unwrap());
    // IPv6 only: the IPv4 stack drops a forwarded packet whose source is
    // one of its own addresses (a martian) before any program sees it.
    let v6_slots: Vec<IpAddr> = victim_slots.into_iter().filter(IpAddr::is_ipv6).collect();
    let forged = forged_replies(&v6_slots, outside_mac, uplink_mac);
    let host_dropped = || -> u64 {
        hv.status().unwrap()["host_counters"]["drop_forged"]
            .as_u64()
            .unwrap()
    };
    let before = host_dropped();
    send_frames(&outside, &forged);
    let dropped = wait_for("the forgery to be dropped", Duration::from_secs(5), || {
        Some(host_dropped() - before).filter(|n| *n >= 1)
    })
    .unwrap();
    served(&victim, &victim_spec);
    assert_eq!(
        injected(&capture.drain()),
        0,
        "no forged segment reached the victim"
    );
    println!("host device: drop_forged {dropped}");
}

#[test]
fn a_guest_cannot_connect_to_the_proxy_by_routing_to_the_slot_ranges() {
    let (hv, attacker, victim, _) = setup();
    let victim_slots = slot_addrs(&hv, &victim.tap);
    let tap_mac = hv.mac_of(&attacker.tap).unwrap();
    // Route the slot ranges to the tap, and claim the victim's IPv6 slot.
    let ns = &attacker.ns;
    ns.ip(&[
        "neigh",
        "replace",
        "10.0.0.1",
        "lladdr",
        &tap_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();
    ns.ip(&["route", "add", "100.64.0.0/10", "via", "10.0.0.1"])
        .unwrap();
    ns.ip(&[
        "-6",
        "neigh",
        "replace",
        "fe80::1",
        "lladdr",
        &tap_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();
    ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:a9fe:6464::/96",
        "via",
        "fe80::1",
        "dev",
        "eth0",
    ])
    .unwrap();
    let victim_v6 = victim_slots.iter().find(|a| a.is_ipv6()).unwrap();
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{victim_v6}/128"),
        "dev",
        "eth0",
        "nodad",
    ])
    .unwrap();

    let mut targets: Vec<SocketAddr> = victim_slots
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| SocketAddr::new(*a, 80))
        .collect();
    targets.push(SocketAddr::new(IpAddr::V6(PROXY6), 80));
    for target in targets {
        let connected = attacker
            .ns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(1)))
            .unwrap();
        assert!(
            connected.is_err(),
            "{target} must not be reachable from a guest"
        );
    }
    let dropped = counter(&hv, &attacker.tap, "drop_reserved");
    assert!(dropped >= 2, "the SYNs were dropped at the tap: {dropped}");
    println!("attacker's tap: drop_reserved {dropped}");
    assert!(
        !hv.log().contains("refused a request"),
        "nothing reached the proxy"
    );
}

/// Opens up to `count` connections to the metadata service from `vm` and
/// holds them until `stop`; reports how many opened.
fn hold_connections(vm: &Vm, count: usize, opened: &AtomicUsize, stop: &AtomicBool) {
    vm.ns
        .run(|| {
            let mut held = Vec::with_capacity(count);
            let deadline = Instant::now() + Duration::from_secs(30);
            while held.len() < count && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                if let Ok(stream) = TcpStream::connect_timeout(&METADATA, Duration::from_secs(1)) {
                    held.push(stream);
                    opened.store(held.len(), Ordering::Relaxed);
                }
            }
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .unwrap();
}

/// Sets its flag when dropped, on a panic too.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_guest_holding_thousands_of_connections_does_not_slow_another_guest() {
    const HELD: usize = 3000;
    raise_open_files_limit().unwrap();
    // The proxy's own connection cap, with the datapath's budget of new
    // connections out of its way: behind the default budget, opening
    // 3,000 connections takes a minute (the flood test covers that).
    let (hv, attacker, victim, victim_spec) = setup_with("connection_rate = 0\n");
    let opened = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let slowest = std::thread::scope(|s| {
        s.spawn(|| hold_connections(&attacker, HELD, &opened, &stop));
        // Stops the attacker however this closure ends: a failed wait
        // must fail the test, not leave the scope waiting for it.
        let _stop_attacker = StopOnDrop(&stop);
        wait_for(
            "the attacker to hold 1000 connections",
            Duration::from_secs(30),
            || (opened.load(Ordering::Relaxed) >= 1000).then_some(()),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..20 {
            let started = Instant::now();
            served(&victim, &victim_spec);
            tx.send(started.elapsed()).unwrap();
        }
        wait_for(
            "the attacker to finish opening",
            Duration::from_secs(40),
            || (opened.load(Ordering::Relaxed) >= HELD).then_some(()),
        )
        .unwrap();
        let fds = std::fs::read_dir(format!("/proc/{}/fd", hv.daemon_pid().unwrap()))
            .unwrap()
            .count();
        stop.store(true, Ordering::Relaxed);
        drop(tx);
        (rx.iter().max().unwrap(), fds)
    });
    let (slowest, daemon_fds) = slowest;
    println!(
        "slowest of 20 requests while another guest held {HELD} connections: {slowest:?}; daemon fds {daemon_fds}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request took {slowest:?}"
    );
    assert!(
        daemon_fds < 64 + 100,
        "the attacker holds at most its cap: {daemon_fds} fds"
    );
    let log = hv.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("over its instance's cap") || l.contains("accept failed"))
        .count();
    assert!(
        (1..=60).contains(&lines),
        "a bounded number of log lines about it: {lines}"
    );
}

#[test]
fn without_a_shared_bpffs_the_daemon_refuses_to_start_and_under_nsenter_it_fails_closed() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(ATTACKER_IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "nsenter");
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.write_files().unwrap();

    // `ip netns exec` remounts /sys: no bpffs of the host's in there.
    let binary = metadata_tests::daemon_binary().unwrap();
    let config = hv.config_path();
    let output = hv
        .ns()
        .command(binary.to_str().unwrap())
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("mount namespace of its own") && stderr.contains("nsenter --net"),
        "explains why and how: {stderr}"
    );
    let status = hv
        .ns()
        .command(binary.to_str().unwrap())
        .args(["status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("nsenter --net"));
    assert!(!hv.bpffs().exists(), "nothing pinned anywhere");

    // Under nsenter --net (the harness's way): pins on the host's bpffs,
    // and after SIGKILL the programs stay and metadata fails closed.
    hv.start_daemon().unwrap();
    served(&vm, &spec);
    hv.kill_daemon().unwrap();
    let steered = counter(&hv, &vm.tap, "steered");
    assert!(
        vm.http_get(METADATA, META).is_err(),
        "nothing serves while down"
    );
    let after = counter(&hv, &vm.tap, "steered");
    assert!(
        after > steered,
        "still steered to the host device after SIGKILL: {steered} -> {after}"
    );
    hv.start_daemon().unwrap();
    served(&vm, &spec);
}

#[test]
fn a_guest_over_its_rate_limit_gets_429_across_both_families_and_another_is_served() {
    let mut hv = Hypervisor::new().unwrap();
    let greedy = hv.add_vm(ATTACKER_IP).unwrap();
    let other = hv.add_vm(VICTIM_IP).unwrap();
    let other_spec = InstanceSpec::for_vm(&other, "other");
    hv.set_instances(vec![
        InstanceSpec::for_vm(&greedy, "greedy"),
        other_spec.clone(),
    ])
    .unwrap();
    hv.extra_config = "\n[rate_limit]\nenabled = true\nbase_window_s = 60\nbase_requests = 50\nburst_window_s = 5\nburst_requests = 5\n".into();
    hv.start_daemon().unwrap();
    for _ in 0..5 {
        assert_eq!(greedy.http("GET", META, &[], b"").unwrap().0, 200);
    }
    // The sixth, over IPv6, counts for the same instance.
    let v6 = greedy
        .ns
        .exec(
            "curl",
            &[
                "-s",
                "-i",
                "-g",
                "http://[fe80::a9fe:a9fe%eth0]/openstack/latest/meta_data.json",
            ],
        )
        .unwrap();
    let head = v6.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{v6}");
    assert!(head.contains("retry-after: "), "{v6}");
    assert_eq!(
        greedy.http("GET", META, &[], b"").unwrap().0,
        429,
        "and over IPv4"
    );
    // Another guest at the same time: served.
    served(&other, &other_spec);
}

/// Python's prometheus_client (Debian's python3-prometheus-client) reads
/// the exposition: family name, sample name, labels, value per line.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"family": family.name, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
"#;

#[test]
fn metrics_and_health_endpoints_show_what_happened() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(ATTACKER_IP).unwrap();
    hv.set_instances(vec![InstanceSpec::for_vm(&vm, "metrics")])
        .unwrap();
    hv.extra_config =
        "\n[rate_limit]\nenabled = true\nburst_window_s = 30\nburst_requests = 3\n".into();
    hv.start_daemon().unwrap();
    for _ in 0..3 {
        assert_eq!(vm.http("GET", META, &[], b"").unwrap().0, 200);
    }
    assert_eq!(vm.http("GET", META, &[], b"").unwrap().0, 429);
    let get = |path: &str| {
        hv.ns()
            .exec(
                "curl",
                &[
                    "-s",
                    "-w",
                    "\n%{http_code}",
                    &format!("http://127.0.0.1:9780{path}"),
                ],
            )
            .unwrap()
    };
    assert!(get("/healthz").ends_with("200"));
    assert!(get("/readyz").ends_with("200"));
    let text = get("/metrics");
    let text = text.rsplit_once('\n').unwrap().0.to_owned();
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PARSE_METRICS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition:\n{text}"
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
            .map(|s| s["value"].as_f64().unwrap())
            .sum()
    };
    assert_eq!(
        value(
            "metadata_requests_total",
            &[
                ("listener", "proxy"),
                ("status", "200"),
                ("path", "openstack")
            ]
        ),
        3.0
    );
    assert_eq!(value("metadata_requests_total", &[("status", "429")]), 1.0);
    assert_eq!(
        value("metadata_rejections_total", &[("reason", "rate_limit")]),
        1.0
    );
    assert_eq!(value("metadata_taps_attached", &[]), 1.0);
    assert!(
        value(
            "metadata_request_duration_seconds_count",
            &[("listener", "proxy")]
        ) >= 4.0
    );
    assert!(
        value(
            "metadata_datapath_packets_total",
            &[("device", vm.tap.as_str()), ("verdict", "steered")]
        ) >= 4.0,
        "{text}"
    );
}

#[test]
fn a_guest_flooding_syns_does_not_delay_another_guest() {
    let (hv, attacker, victim, victim_spec) = setup();
    let tap_mac = mac(&hv.mac_of(&attacker.tap).unwrap());
    let attacker_mac = mac(&attacker.mac);
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let slowest = std::thread::scope(|s| {
        s.spawn(|| {
            attacker
                .ns
                .run(|| {
                    let socket = RawSocket::open("eth0").unwrap();
                    let mut sport: u16 = 1024;
                    // SYNs from the attacker's own (registered) address, so
                    // that each is steered to the proxy's listener.
                    while !stop.load(Ordering::Relaxed) {
                        sport = sport.wrapping_add(1).max(1024);
                        let syn = tcp_frame(
                            (tap_mac, attacker_mac),
                            ATTACKER_IP.octets(),
                            [169, 254, 169, 254],
                            (sport, 80),
                            b"",
                            Ipv4Opts::default(),
                        );
                        if socket.send(&syn).is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap();
        });
        wait_for("the flood to start", Duration::from_secs(5), || {
            (sent.load(Ordering::Relaxed) > 50_000).then_some(())
        })
        .unwrap();
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let started = Instant::now();
            served(&victim, &victim_spec);
            slowest = slowest.max(started.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        slowest
    });
    let steered = counter(&hv, &attacker.tap, "steered");
    println!(
        "{} SYNs flooded ({steered} steered); the other guest's slowest of 20 requests: {slowest:?}",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request took {slowest:?}"
    );
}

#[test]
fn a_full_slot_range_is_logged_and_counted_and_existing_guests_keep_being_served() {
    let mut hv = Hypervisor::new().unwrap();
    // A /30: four IPv4 slots in all, for four VMs.
    hv.datapath_config = "nat_v4 = \"100.64.0.0/30\"\n".into();
    let vms: Vec<Vm> = (5..10)
        .map(|i| hv.add_vm(Ipv4Addr::new(10, 0, 0, i)).unwrap())
        .collect();
    let specs: Vec<InstanceSpec> = vms
        .iter()
        .enumerate()
        .map(|(i, vm)| InstanceSpec::for_vm(vm, &format!("vm{i}")))
        .collect();
    hv.set_instances(specs[..4].to_vec()).unwrap();
    hv.start_daemon().unwrap();
    served(&vms[0], &specs[0]);
    // A fifth port: no slot left.
    hv.set_instances(specs.clone()).unwrap();
    hv.reload().unwrap();
    let failures = wait_for(
        "the failed sync to be counted",
        Duration::from_secs(10),
        || {
            let metrics = hv
                .ns()
                .exec("curl", &["-s", "http://127.0.0.1:9780/metrics"])
                .ok()?;
            let line = metrics
                .lines()
                .find(|l| l.starts_with("metadata_sync_failures_total "))?;
            let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
            (n >= 3.0).then_some(n)
        },
    )
    .unwrap();
    for (vm, spec) in vms.iter().zip(&specs).take(4) {
        served(vm, spec);
    }
    assert!(
        vms[4].http_get(METADATA, META).is_err(),
        "no slot, no service"
    );
    let lines = hv
        .log()
        .lines()
        .filter(|l| l.contains("NAT slots are in use"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "one line per 10 s, not per retry: {lines} lines for {failures} failures"
    );
}

#[test]
fn a_guest_claiming_its_neighbours_address_is_dropped_and_the_neighbour_served() {
    let (hv, attacker, victim, victim_spec) = setup();
    // The attacker takes the victim's address as a second one and asks
    // from it: the (tap, address) pair is not registered on its tap.
    attacker
        .ns
        .ip(&["addr", "add", &format!("{VICTIM_IP}/32"), "dev", "eth0"])
        .unwrap();
    let before = counter(&hv, &attacker.tap, "drop_unregistered");
    assert!(
        attacker
            .http_get_from(Some(VICTIM_IP), METADATA, META)
            .is_err()
    );
    let after = counter(&hv, &attacker.tap, "drop_unregistered");
    assert!(
        after > before,
        "dropped as unregistered: {before} -> {after}"
    );
    assert!(
        !hv.log().contains("refused a request"),
        "nothing reached the proxy"
    );
    served(&victim, &victim_spec);
    println!("attacker's tap: drop_unregistered {before} -> {after}");
}

/// The MAC is not part of a guest's identity (the tap and the address
/// are): a guest that changes its MAC is still itself, and the reply goes
/// to the port record's MAC, so the forger's own NIC drops it. Nobody else
/// sees anything, and with its real MAC back the guest is served again.
#[test]
fn a_guest_with_a_forged_mac_gets_no_answer_and_nobody_else_does_either() {
    let (hv, attacker, victim, victim_spec) = setup();
    let real_mac = attacker.mac.clone();
    let set_mac = |mac: &str| {
        attacker
            .ns
            .ip(&["link", "set", "eth0", "address", mac])
            .unwrap();
    };
    set_mac(&metadata_tests::random_mac());
    let steered = counter(&hv, &attacker.tap, "steered");
    let url = format!("http://169.254.169.254{META}");
    let forged = attacker.ns.exec("curl", &["-sf", "--max-time", "2", &url]);
    assert!(forged.is_err(), "answered to a forged MAC: {forged:?}");
    assert!(
        counter(&hv, &attacker.tap, "steered") > steered,
        "the request itself went through as the guest's own"
    );
    assert_eq!(
        counter(&hv, &victim.tap, "replied"),
        0,
        "nothing to the neighbour"
    );
    served(&victim, &victim_spec);
    set_mac(&real_mac);
    let (status, _) = attacker.http_get(METADATA, META).unwrap();
    assert_eq!(status, 200);
}

/// The per-instance connection cap is one count for both families and
/// every serving thread: a guest opening 100 connections over IPv4 and 100
/// over IPv6 keeps exactly the cap (64) open on the daemon's side, and its
/// neighbour is served meanwhile.
#[test]
fn the_connection_cap_counts_both_families_and_all_threads_together() {
    const EACH: usize = 100;
    const CAP: usize = 64;
    let (hv, attacker, victim, victim_spec) = setup();
    let scope = attacker
        .ns
        .run(|| {
            // SAFETY: a NUL-terminated name; no other precondition.
            unsafe { libc::if_nametoindex(c"eth0".as_ptr()) }
        })
        .unwrap();
    let metadata_v6 = SocketAddr::V6(std::net::SocketAddrV6::new(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe),
        80,
        0,
        scope,
    ));
    let held: Vec<TcpStream> = attacker
        .ns
        .run(|| {
            [METADATA, metadata_v6]
                .into_iter()
                .flat_map(|addr| std::iter::repeat_n(addr, EACH))
                .map(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .unwrap();
    let daemon_side = || {
        let out = hv
            .ns()
            .exec("ss", &["-Htn", "state", "established", "( sport = :80 )"])
            .ok()?;
        Some(out.lines().filter(|l| !l.trim().is_empty()).count())
    };
    wait_for(
        "the daemon to keep exactly the cap open",
        Duration::from_secs(10),
        || daemon_side().filter(|&open| open == CAP),
    )
    .unwrap();
    served(&victim, &victim_spec);
    assert_eq!(daemon_side(), Some(CAP), "still the cap, not more");
    drop(held);
}
