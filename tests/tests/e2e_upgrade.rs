//! A package upgrade across a map-layout change: the previous landed
//! release (built from git by `cargo xtask test`) runs with its maps
//! pinned, two guests ask in a loop, and this build's daemon takes over.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use metadata_common::{map_names, pins};
use metadata_tests::{
    Hypervisor, InstanceSpec, METADATA, Vm, previous_daemon_binary, run, wait_for,
};

const META: &str = "/openstack/latest/meta_data.json";

/// `bpftool -j` on a pinned object.
fn bpftool(args: &[&str], pin: &std::path::Path) -> serde_json::Value {
    let pin = pin.display().to_string();
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    full.push(&pin);
    serde_json::from_str(&run("bpftool", &full).unwrap()).unwrap()
}

/// The (tap, guest address) -> slot entries, as pinned.
fn slots(hv: &Hypervisor) -> serde_json::Value {
    bpftool(
        &["map", "dump", "pinned"],
        &hv.bpffs().join(map_names::PORTS_V4),
    )
}

/// Requests steered on `ifindex`, summed over CPUs, from the pinned
/// counters (whatever their layout: bpftool reads it from the BTF).
fn steered(hv: &Hypervisor, ifindex: u32) -> u64 {
    let dump = bpftool(
        &["map", "dump", "pinned"],
        &hv.bpffs().join(map_names::COUNTERS),
    );
    dump.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["formatted"]["key"] == ifindex)
        .flat_map(|e| e["formatted"]["values"].as_array().unwrap().clone())
        .map(|v| v["value"]["steered"].as_u64().unwrap())
        .sum()
}

fn prog_of_link(hv: &Hypervisor, ifindex: u32) -> u64 {
    let pin = hv
        .bpffs()
        .join(pins::LINKS_DIR)
        .join(format!("{}{ifindex}", pins::TAP_LINK_PREFIX));
    bpftool(&["link", "show", "pinned"], &pin)["prog_id"]
        .as_u64()
        .unwrap()
}

/// GETs from `vm`, 20 a second (within the default connection budget),
/// until `stop`: (right answers, failures).
fn ask_in_a_loop(vm: &Vm, uuid: &str, stop: &AtomicBool) -> (u32, Vec<String>) {
    let (mut ok, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        match vm.http_get(METADATA, META) {
            Ok((200, body)) if String::from_utf8_lossy(&body).contains(uuid) => ok += 1,
            Ok((status, body)) => failures.push(format!(
                "{}: {status} {}",
                vm.tap,
                String::from_utf8_lossy(&body)
            )),
            Err(err) => failures.push(format!("{}: {err:#}", vm.tap)),
        }
    }
    (ok, failures)
}

#[test]
fn an_upgrade_from_the_previous_release_carries_the_maps_over_under_load() {
    let mut hv = Hypervisor::new().unwrap();
    hv.use_socket_activation().unwrap();
    let a = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)).unwrap();
    let b = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)).unwrap();
    let specs = [InstanceSpec::for_vm(&a, "a"), InstanceSpec::for_vm(&b, "b")];
    hv.set_instances(specs.to_vec()).unwrap();
    hv.binary = Some(previous_daemon_binary().unwrap());
    hv.start_daemon().unwrap();
    for (vm, spec) in [(&a, &specs[0]), (&b, &specs[1])] {
        assert_eq!(vm.served_uuid(Duration::from_secs(10)).unwrap(), spec.id);
    }
    let ifindex_a = hv.ifindex_of(&a.tap).unwrap();
    let slots_before = slots(&hv);
    let old_prog = prog_of_link(&hv, ifindex_a);
    assert!(
        !hv.bpffs().join(map_names::TAPS).exists(),
        "the previous release has no MDR_TAPS: this is a layout change"
    );
    let status = hv.status().unwrap_err();
    assert!(
        format!("{status:#}").contains("another build's layout"),
        "this build's status says what it cannot read: {status:#}"
    );
    // Other checks may fail here (the old daemon holds the metadata
    // address): only the pinned state's line matters.
    let (_, doctor) = hv.doctor(&hv.config_path()).unwrap();
    let pinned = doctor
        .lines()
        .find(|l| l.contains("pinned state"))
        .unwrap_or_default();
    assert!(
        pinned.starts_with("ok")
            && pinned.contains("an older build's layout")
            && pinned.contains("MDR_TAPS new"),
        "doctor names the older layout, adoptable: {doctor}"
    );

    let stop = AtomicBool::new(false);
    let (ra, rb, steered_before) = std::thread::scope(|s| {
        let ca = s.spawn(|| ask_in_a_loop(&a, &specs[0].id, &stop));
        let cb = s.spawn(|| ask_in_a_loop(&b, &specs[1].id, &stop));
        std::thread::sleep(Duration::from_secs(1));
        hv.stop_daemon().unwrap();
        // Read while no daemon runs: nothing is steered meanwhile.
        let steered_before = steered(&hv, ifindex_a);
        hv.binary = None;
        hv.start_daemon().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        (ca.join().unwrap(), cb.join().unwrap(), steered_before)
    });
    assert_eq!(ra.1, Vec::<String>::new(), "guest a lost no request");
    assert_eq!(rb.1, Vec::<String>::new(), "guest b lost no request");
    assert!(ra.0 > 10 && rb.0 > 10, "requests flowed: {} {}", ra.0, rb.0);
    println!("served across the upgrade: a {}, b {}", ra.0, rb.0);

    assert_eq!(slots(&hv), slots_before, "slots unchanged");
    assert_ne!(
        prog_of_link(&hv, ifindex_a),
        old_prog,
        "the link runs the new program"
    );
    let previous = hv.bpffs().join(pins::PREVIOUS_DIR);
    wait_for("the old pins to go", Duration::from_secs(10), || {
        (!previous.exists()).then_some(())
    })
    .unwrap();
    let counters = bpftool(
        &["map", "show", "pinned"],
        &hv.bpffs().join(map_names::COUNTERS),
    );
    assert_eq!(
        counters["bytes_value"].as_u64(),
        Some(size_of::<metadata_common::DeviceCounters>() as u64),
        "this build's counters"
    );
    assert!(
        steered(&hv, ifindex_a) >= steered_before,
        "counters carried over"
    );
    let status = hv.counters(&a.tap).unwrap();
    assert_eq!(status["drop_over_budget"], 0, "{status}");
    let log = std::fs::read_to_string(hv.log_path()).unwrap();
    assert!(
        log.contains("carried"),
        "the log says what was carried: {log}"
    );
    assert!(
        hv.bpffs().join(map_names::TAPS).exists(),
        "this build's new map is pinned"
    );
}
