//! The datapath over time: taps that come and go, instance files that
//! change, daemon restarts and program upgrades, and the daemon being down.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use metadata_common::{Ifindex, map_names, pins};
use metadata_tests::{Hypervisor, InstanceSpec, METADATA, Vm, wait_for};

const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const META: &str = "/openstack/latest/meta_data.json";

/// The uuid a VM gets from the service, if it gets one.
fn uuid_of(vm: &Vm) -> Option<String> {
    let (status, body) = vm.http_get(METADATA, META).ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    json["uuid"].as_str().map(str::to_owned)
}

fn served(vm: &Vm, spec: &InstanceSpec) {
    let uuid = wait_for(
        &format!("{} to be served", vm.tap),
        Duration::from_secs(10),
        || uuid_of(vm),
    )
    .unwrap();
    assert_eq!(uuid, spec.id);
}

fn tap_listed(hv: &Hypervisor, tap: &str) -> bool {
    let status = hv.status().unwrap();
    status["taps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["device"] == tap)
}

/// Names of the pinned links.
fn link_pins(hv: &Hypervisor) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(hv.bpffs().join(pins::LINKS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn taps_that_appear_disappear_and_come_back_are_followed() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(IP).unwrap();
    let b = hv.add_vm(IP).unwrap();
    hv.unplug(&b).unwrap();
    let (spec_a, spec_b) = (InstanceSpec::for_vm(&a, "a"), InstanceSpec::for_vm(&b, "b"));
    hv.set_instances(vec![spec_a.clone(), spec_b.clone()])
        .unwrap();
    hv.start_daemon().unwrap();
    served(&a, &spec_a);
    assert!(!tap_listed(&hv, &b.tap));

    // A tap created after the daemon is ready is served.
    hv.replug(&b).unwrap();
    let first = hv.ifindex_of(&b.tap).unwrap();
    served(&b, &spec_b);

    // A deleted one leaves no entries and no link.
    hv.unplug(&b).unwrap();
    wait_for("b to be detached", Duration::from_secs(10), || {
        (!tap_listed(&hv, &b.tap)).then_some(())
    })
    .unwrap();
    assert!(!link_pins(&hv).contains(&pins::tap_link(Ifindex(first))));

    // The same name with a new ifindex is served again.
    hv.replug(&b).unwrap();
    let second = hv.ifindex_of(&b.tap).unwrap();
    assert_ne!(first, second);
    served(&b, &spec_b);
    served(&a, &spec_a);
}

#[test]
fn a_port_record_added_later_attaches_the_tap_and_a_bad_file_keeps_the_old_records() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(IP).unwrap();
    let late = hv.add_vm(IP).unwrap();
    let spec_a = InstanceSpec::for_vm(&a, "a");
    hv.set_instances(vec![spec_a.clone()]).unwrap();
    hv.start_daemon().unwrap();
    served(&a, &spec_a);
    assert!(!tap_listed(&hv, &late.tap));
    assert_eq!(uuid_of(&late), None, "no record, no metadata");

    // The record arrives: the file changes on disk, no signal needed.
    let spec_late = InstanceSpec::for_vm(&late, "late");
    hv.set_instances(vec![spec_a.clone(), spec_late.clone()])
        .unwrap();
    served(&late, &spec_late);

    // A broken file is reported with file, line and key; nothing changes.
    std::fs::write(
        hv.instances_path(),
        "[[instance]]\nid = \"x\"\nproject_id = \"p\"\nflavor = \"m1\"\n",
    )
    .unwrap();
    let log = wait_for("the reload error", Duration::from_secs(10), || {
        let log = hv.log();
        log.contains("keeping the previous port records")
            .then_some(log)
    })
    .unwrap();
    assert!(
        log.contains("instances.toml:4: key `instance.flavor`"),
        "{log}"
    );
    served(&a, &spec_a);
    served(&late, &spec_late);
}

#[test]
fn a_thousand_tap_create_delete_cycles_leave_nothing_behind() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(IP).unwrap();
    let spec_a = InstanceSpec::for_vm(&a, "a");
    // A record for the churned tap name, so every incarnation is attached.
    let churn = format!("tapc{}", metadata_tests::unique_suffix());
    let mut spec_churn = InstanceSpec::for_vm(&a, "churn");
    spec_churn.ports[0].device = churn.clone();
    spec_churn.ports[0].mac = "fa:16:3e:00:00:99".into();
    hv.set_instances(vec![spec_a.clone(), spec_churn]).unwrap();
    hv.start_daemon().unwrap();
    let base_pins = link_pins(&hv);

    // 1000 cycles in 10 rounds; each round leaves the tap present until
    // the daemon has attached it, so attach and detach both really happen.
    // In the hypervisor's own folder, which goes with it even on a panic.
    let file = hv.log_path().with_file_name("churn.batch");
    for round in 0..10 {
        let mut batch = String::new();
        if round > 0 {
            batch.push_str(&format!("link del {churn}\n"));
        }
        for _ in 0..99 {
            batch.push_str(&format!(
                "link add {churn} type veth peer name {churn}p\nlink set {churn} up\nlink del {churn}\n"
            ));
        }
        batch.push_str(&format!(
            "link add {churn} type veth peer name {churn}p\nlink set {churn} up\n"
        ));
        std::fs::write(&file, batch).unwrap();
        hv.ns()
            .ip(&["-batch", &file.display().to_string()])
            .unwrap();
        let attached = wait_for(
            "the churned tap to be attached",
            Duration::from_secs(10),
            || tap_listed(&hv, &churn).then_some(()),
        );
        if let Err(err) = attached {
            panic!("round {round}: {err}; daemon log:\n{}", hv.log());
        }
    }
    hv.ns().ip(&["link", "del", &churn]).unwrap();
    std::fs::remove_file(&file).unwrap();

    // Settled: only a's tap, its slot and its link remain.
    wait_for("the churn to settle", Duration::from_secs(30), || {
        let status = hv.status().ok()?;
        let taps = status["taps"].as_array()?;
        (taps.len() == 1 && link_pins(&hv) == base_pins).then_some(())
    })
    .unwrap();
    let ports = dump_map(&hv, map_names::PORTS_V4);
    assert_eq!(
        ports.as_array().unwrap().len(),
        1,
        "one (tap, address) entry: {ports}"
    );
    let ports_v6 = dump_map(&hv, map_names::PORTS_V6);
    assert_eq!(
        ports_v6.as_array().unwrap().len(),
        1,
        "one (tap, link-local) entry: {ports_v6}"
    );
    let counters = dump_map(&hv, map_names::COUNTERS);
    assert_eq!(
        counters.as_array().unwrap().len(),
        2,
        "counters for a's tap and the host device only"
    );
    served(&a, &spec_a);
}

/// `bpftool map dump` of a pinned map, as JSON.
fn dump_map(hv: &Hypervisor, map: &str) -> serde_json::Value {
    let pin = hv.bpffs().join(map).display().to_string();
    let out = metadata_tests::run("bpftool", &["-j", "map", "dump", "pinned", &pin]).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// Runs GETs from `vm` until `stop`; returns (served, failed, wrong).
fn client_loop(vm: &Vm, expected: &str, stop: &AtomicBool) -> (u32, u32, u32) {
    let (mut ok, mut failed, mut wrong) = (0, 0, 0);
    while !stop.load(Ordering::SeqCst) {
        match vm.http_get(METADATA, META) {
            Ok((200, body)) => {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if json["uuid"] == expected {
                    ok += 1;
                } else {
                    wrong += 1;
                }
            }
            Ok((status, _)) => {
                eprintln!("{}: status {status}", vm.tap);
                failed += 1;
            }
            Err(err) => {
                eprintln!("{}: {err:#}", vm.tap);
                failed += 1;
            }
        }
    }
    (ok, failed, wrong)
}

fn tap_link_prog_id(hv: &Hypervisor, tap: &str) -> u64 {
    let ifindex = hv.ifindex_of(tap).unwrap();
    let pin = hv.bpffs().join(format!("links/tap_ingress-{ifindex}"));
    let out = metadata_tests::run(
        "bpftool",
        &["-j", "link", "show", "pinned", &pin.display().to_string()],
    )
    .unwrap();
    let link: serde_json::Value = serde_json::from_str(&out).unwrap();
    link["prog_id"].as_u64().unwrap()
}

#[test]
fn restarts_and_program_upgrades_under_load_lose_nothing_with_socket_activation() {
    let mut hv = Hypervisor::new().unwrap();
    hv.use_socket_activation().unwrap();
    let vm = hv.add_vm(IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "busy");
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    served(&vm, &spec);
    let mut prog_ids = vec![tap_link_prog_id(&hv, &vm.tap)];

    let stop = AtomicBool::new(false);
    let (ok, failed, wrong) = std::thread::scope(|s| {
        let client = s.spawn(|| client_loop(&vm, &spec.id, &stop));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(300));
            hv.stop_daemon().unwrap();
            // The new daemon loads its own program and swaps it into the
            // pinned TCX link atomically: an upgrade.
            hv.start_daemon().unwrap();
            prog_ids.push(tap_link_prog_id(&hv, &vm.tap));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        client.join().unwrap()
    });
    assert_eq!(wrong, 0, "no wrong answer");
    assert_eq!(failed, 0, "no failed request ({ok} served)");
    assert!(ok > 20, "requests flowed throughout: {ok}");
    prog_ids.dedup();
    assert_eq!(
        prog_ids.len(),
        4,
        "each start replaced the program in place: {prog_ids:?}"
    );
}

#[test]
fn restarts_without_socket_activation_never_give_a_wrong_answer() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(IP).unwrap();
    let b = hv.add_vm(IP).unwrap();
    let (spec_a, spec_b) = (InstanceSpec::for_vm(&a, "a"), InstanceSpec::for_vm(&b, "b"));
    hv.set_instances(vec![spec_a.clone(), spec_b.clone()])
        .unwrap();
    hv.start_daemon().unwrap();
    served(&a, &spec_a);
    let stop = AtomicBool::new(false);
    let (ra, rb) = std::thread::scope(|s| {
        let ca = s.spawn(|| client_loop(&a, &spec_a.id, &stop));
        let cb = s.spawn(|| client_loop(&b, &spec_b.id, &stop));
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(300));
            hv.stop_daemon().unwrap();
            hv.start_daemon().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        (ca.join().unwrap(), cb.join().unwrap())
    });
    assert_eq!((ra.2, rb.2), (0, 0), "no wrong answer: {ra:?} {rb:?}");
    assert!(ra.0 > 0 && rb.0 > 0);
}

#[test]
fn while_the_daemon_is_down_metadata_fails_closed_and_other_traffic_flows() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(IP).unwrap();
    vm.route_via_gateway().unwrap();
    let bridge = hv.add_bridge().unwrap();
    hv.plug(&vm.tap, &bridge).unwrap();
    // A router on the tenant network that would answer 169.254.169.254:80
    // if a metadata packet ever reached it.
    let gw = hv.add_gateway(&bridge).unwrap().ns;
    let (trap, other) = gw
        .run(|| {
            (
                TcpListener::bind("169.254.169.254:80").unwrap(),
                TcpListener::bind("10.0.0.1:8080").unwrap(),
            )
        })
        .unwrap();
    trap.set_nonblocking(true).unwrap();

    let spec = InstanceSpec::for_vm(&vm, "down");
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    served(&vm, &spec);
    hv.stop_daemon().unwrap();

    // Metadata: refused by the host (nothing listens), never forwarded.
    for _ in 0..3 {
        assert!(
            vm.http_get(METADATA, META).is_err(),
            "nothing serves while down"
        );
    }
    assert!(
        trap.accept().is_err(),
        "no metadata connection reached the tenant network"
    );
    // Everything else flows.
    vm.ns
        .exec("ping", &["-c", "1", "-W", "2", "10.0.0.1"])
        .unwrap();
    let target = SocketAddr::from(([10, 0, 0, 1], 8080));
    vm.ns
        .run(move || std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    let (_conn, peer) = other.accept().unwrap();
    assert_eq!(peer.ip(), IP);

    hv.start_daemon().unwrap();
    served(&vm, &spec);
    assert!(trap.accept().is_err());
}

#[test]
fn the_daemon_runs_with_only_the_capabilities_of_its_systemd_unit() {
    // deploy/metadata-redirector.service: CapabilityBoundingSet.
    let unit = include_str!("../../deploy/metadata-redirector.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap();
    let caps: Vec<&'static str> = line
        .split_whitespace()
        .map(|c| &*c.trim_start_matches("CAP_").to_ascii_lowercase().leak())
        .collect();
    assert_eq!(caps, ["bpf", "net_admin", "perfmon"]);
    let mut hv = Hypervisor::new().unwrap();
    hv.use_socket_activation().unwrap();
    hv.capabilities = Some(caps);
    let vm = hv.add_vm(IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "caps");
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    served(&vm, &spec);
    // And a restart adopts the pinned state under the same limits.
    hv.stop_daemon().unwrap();
    hv.start_daemon().unwrap();
    served(&vm, &spec);
}

/// The notifications a service manager would read, as strings.
fn notifications(
    socket: &std::os::unix::net::UnixDatagram,
    until: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline && !seen.iter().any(|m: &String| m.contains(until)) {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

#[test]
fn systemd_hears_ready_after_the_attach_then_watchdog_pings_then_stopping() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "notify");
    hv.set_instances(vec![spec.clone()]).unwrap();
    let path = hv.dir().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    hv.daemon_env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        ("WATCHDOG_USEC".into(), "200000".into()),
    ];
    hv.start_daemon().unwrap();
    let ready = notifications(&socket, "READY=1", Duration::from_secs(10));
    let message = ready
        .iter()
        .find(|m| m.contains("READY=1"))
        .expect("READY=1");
    // Sent with the state line, once the tap was attached.
    assert!(message.contains("STATUS=serving 1 taps"), "{message}");
    served(&vm, &spec);
    let pings = notifications(&socket, "never", Duration::from_millis(1500));
    let watchdogs = pings.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(watchdogs >= 5, "pinged every 100 ms: {pings:?}");
    hv.stop_daemon().unwrap();
    let stopping = notifications(&socket, "STOPPING=1", Duration::from_secs(5));
    assert!(
        stopping.iter().any(|m| m.contains("STOPPING=1")),
        "{stopping:?}"
    );
}

#[test]
fn sigkill_and_sigstop_lose_nothing_passwords_tokens_and_slots_survive() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "survivor");
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    served(&vm, &spec);
    let password_path = "/openstack/latest/password";
    assert_eq!(
        vm.http("POST", password_path, &[], b"s3cret").unwrap().0,
        200
    );
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds: 600";
    let (status, token) = vm.http("PUT", "/latest/api/token", &[ttl], b"").unwrap();
    assert_eq!(status, 200);
    let token = String::from_utf8(token).unwrap();
    let slots_before = hv.status().unwrap()["taps"][0]["slots"].clone();

    // Stopped for two seconds: a request made meanwhile waits, then is served.
    let pid = i32::try_from(hv.daemon_pid().unwrap()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (status, _) = std::thread::scope(|s| {
        let request = s.spawn(|| vm.http_get(METADATA, META).unwrap());
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        request.join().unwrap()
    });
    assert_eq!(status, 200, "served after SIGCONT");

    // Killed mid-life and restarted: the password, the token and the slots are as before.
    hv.kill_daemon().unwrap();
    hv.start_daemon().unwrap();
    let (status, body) = vm.http("GET", password_path, &[], b"").unwrap();
    assert_eq!((status, body.as_slice()), (200, b"s3cret".as_slice()));
    let header = format!("X-aws-ec2-metadata-token: {token}");
    assert_eq!(
        vm.http("GET", "/latest/meta-data/instance-id", &[&header], b"")
            .unwrap()
            .0,
        200,
        "the token key survived"
    );
    assert_eq!(hv.status().unwrap()["taps"][0]["slots"], slots_before);
}
