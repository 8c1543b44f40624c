//! The per-tap budget of new connections: a guest opening connections as
//! fast as it can is held to it at its tap, its neighbours notice nothing,
//! and the defaults leave real clients alone.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use metadata_tests::{Hypervisor, InstanceSpec, METADATA, Vm, enter_netns};
use socket2::{Domain, Protocol, Socket, Type};

const META: &str = "/openstack/latest/meta_data.json";

/// The two tests run one at a time: the flood takes a whole core of this
/// machine's two (as a one-vCPU guest would take its vCPU), and the
/// neighbour's latency is measured against what is left, not against
/// another test.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn counter(hv: &Hypervisor, vm: &Vm, name: &str) -> u64 {
    hv.counters(&vm.tap).unwrap()[name].as_u64().unwrap()
}

/// Opens connections to the metadata service from `vm` until `stop`, as
/// fast as a thread can: a non-blocking connect (the SYN leaves at once),
/// then close. Returns how many were opened.
fn open_connections_flat_out(vm: &Vm, stop: &AtomicBool, opened: &AtomicU64) {
    enter_netns(vm.ns.name()).unwrap();
    while !stop.load(Ordering::SeqCst) {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_nonblocking(true).unwrap();
        // EINPROGRESS: the SYN is on its way.
        let _in_progress = socket.connect(&METADATA.into());
        opened.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_guest_opening_connections_flat_out_is_held_to_its_budget_and_delays_no_neighbour() {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut hv = Hypervisor::new().unwrap();
    let flooder = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)).unwrap();
    let neighbour = hv.add_vm(Ipv4Addr::new(10, 0, 0, 6)).unwrap();
    let spec = InstanceSpec::for_vm(&neighbour, "neighbour");
    hv.set_instances(vec![
        InstanceSpec::for_vm(&flooder, "flooder"),
        spec.clone(),
    ])
    .unwrap();
    hv.start_daemon().unwrap();
    assert_eq!(
        neighbour.served_uuid(Duration::from_secs(10)).unwrap(),
        spec.id
    );

    let stop = AtomicBool::new(false);
    let opened = AtomicU64::new(0);
    let (slowest, flood_secs) = std::thread::scope(|s| {
        let started = Instant::now();
        // One thread: a one-vCPU guest flat out.
        s.spawn(|| open_connections_flat_out(&flooder, &stop, &opened));
        // Let the flood spend the burst and fill whatever it can.
        std::thread::sleep(Duration::from_millis(500));
        let mut slowest = Duration::ZERO;
        for _ in 0..100 {
            let asked = Instant::now();
            let (status, body) = neighbour.http_get(METADATA, META).unwrap();
            slowest = slowest.max(asked.elapsed());
            assert_eq!(status, 200);
            assert!(String::from_utf8_lossy(&body).contains(&spec.id));
        }
        stop.store(true, Ordering::SeqCst);
        (slowest, started.elapsed().as_secs_f64())
    });
    let opened = opened.load(Ordering::SeqCst);
    let dropped = counter(&hv, &flooder, "drop_over_budget");
    println!(
        "flooder opened {opened} connections in {flood_secs:.1} s ({:.0}/s), {dropped} dropped at its tap; \
         neighbour's slowest of 100 requests: {slowest:?}",
        opened as f64 / flood_secs
    );
    // 50 a second and a burst of 100 reach the host; the rest stop at the tap.
    let admitted_at_most = 100 + (50.0 * (flood_secs + 1.0)) as u64 + 2;
    assert!(
        dropped + admitted_at_most >= opened,
        "the excess is dropped at the tap: {dropped} of {opened}"
    );
    assert!(dropped > 0);
    assert_eq!(counter(&hv, &neighbour, "drop_over_budget"), 0);
    assert!(
        slowest <= Duration::from_millis(50),
        "the neighbour waited {slowest:?}"
    );
}

#[test]
fn the_default_budget_leaves_cloud_init_and_fifty_parallel_clients_untouched() {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)).unwrap();
    let mut spec = InstanceSpec::for_vm(&vm, "crawler");
    spec.user_data = Some("#!/bin/sh\necho crawled\n".into());
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();

    // cloud-init 22.4's OpenStack reader and its EC2 crawl, back to back:
    // a connection per request.
    let os = vm.cloud_init_openstack("http://169.254.169.254").unwrap();
    assert_eq!(os.uuid, spec.id);
    let ec2 = vm
        .ns
        .exec(
            "/usr/bin/python3",
            &[
                "-c",
                "from cloudinit.sources.helpers import ec2; \
                 md = ec2.get_instance_metadata('latest', 'http://169.254.169.254'); \
                 print(md['instance-id'])",
            ],
        )
        .unwrap();
    assert!(ec2.trim().starts_with("i-"), "{ec2}");
    let crawl = counter(&hv, &vm, "steered");
    assert_eq!(counter(&hv, &vm, "drop_over_budget"), 0, "the crawl");

    // Fifty curls at once.
    let url = format!("http://169.254.169.254{META}");
    let script = format!(
        "for i in $(seq 50); do curl -sf -o /dev/null -w '%{{http_code}}\\n' {url} & done; wait"
    );
    let codes = vm.ns.exec("/bin/sh", &["-c", &script]).unwrap();
    let ok = codes.lines().filter(|l| *l == "200").count();
    assert_eq!(ok, 50, "{codes}");
    assert_eq!(counter(&hv, &vm, "drop_over_budget"), 0, "fifty at once");
    println!(
        "cloud-init's crawl: {crawl} packets steered; 50 parallel curls: all 200, none over budget"
    );
}
