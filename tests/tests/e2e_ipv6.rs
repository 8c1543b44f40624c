//! IPv6: guests reach the service at http://[fe80::a9fe:a9fe%eth0]/, which
//! cloud-init tries first.

use std::{net::Ipv4Addr, time::Duration};

use metadata_tests::{Hypervisor, InstanceSpec, wait_for};

const CLOUD_INIT_V6_URL: &str = "http://[fe80::a9fe:a9fe%25eth0]";

#[test]
fn cloud_init_reads_over_ipv6_for_two_vms_with_the_same_addresses() {
    let mut hv = Hypervisor::new().unwrap();
    // Same MAC (so the same link-local address), same IPv4, same IPv6.
    let mac = metadata_tests::random_mac();
    let ip = Ipv4Addr::new(10, 0, 0, 5);
    let a = hv.add_vm_with_mac(ip, &mac).unwrap();
    let b = hv.add_vm_with_mac(ip, &mac).unwrap();
    for vm in [&a, &b] {
        vm.ns
            .ip(&["-6", "addr", "add", "fd12::5/64", "dev", "eth0", "nodad"])
            .unwrap();
    }
    let mut specs = Vec::new();
    for (vm, name) in [(&a, "v6-a"), (&b, "v6-b")] {
        let mut spec = InstanceSpec::for_vm(vm, name);
        spec.ports[0].ips.push("fd12::5/64".into());
        spec.user_data = Some(format!("#cloud-config\nhostname: {name}\n"));
        specs.push(spec);
    }
    hv.set_instances(specs.clone()).unwrap();
    hv.start_daemon().unwrap();

    let (va, vb) = std::thread::scope(|s| {
        let ra = s.spawn(|| a.cloud_init_openstack(CLOUD_INIT_V6_URL));
        let rb = s.spawn(|| b.cloud_init_openstack(CLOUD_INIT_V6_URL));
        (ra.join().unwrap().unwrap(), rb.join().unwrap().unwrap())
    });
    assert_eq!(va.uuid, specs[0].id);
    assert_eq!(vb.uuid, specs[1].id);
    assert_eq!(vb.userdata, specs[1].user_data);

    // The guest resolved fe80::a9fe:a9fe through the program's NA.
    let neigh =
        a.ns.ip(&["-6", "neigh", "show", "fe80::a9fe:a9fe", "dev", "eth0"])
            .unwrap();
    let mdr0 = hv.mac_of("mdr0").unwrap();
    assert!(neigh.contains(&mdr0), "{neigh}");
    let counters = hv.counters(&a.tap).unwrap();
    assert!(counters["ndp_replied"].as_u64().unwrap() >= 1, "{counters}");

    // From the global address too, and EC2's local-ipv4 is still the
    // port's IPv4 address.
    let out =
        a.ns.exec(
            "curl",
            &[
                "-sS",
                "-m",
                "5",
                "--interface",
                "fd12::5",
                "http://[fe80::a9fe:a9fe%eth0]/latest/meta-data/local-ipv4",
            ],
        )
        .unwrap();
    assert_eq!(out, "10.0.0.5");

    // status lists the IPv6 slots next to the IPv4 one.
    let status = hv.status().unwrap();
    let tap = status["taps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["device"] == a.tap.as_str())
        .unwrap()
        .clone();
    let guests: Vec<&str> = tap["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["guest"].as_str().unwrap())
        .collect();
    assert!(
        guests.contains(&"fd12::5") && guests.contains(&a.link_local().to_string().as_str()),
        "{guests:?}"
    );
}

#[test]
fn an_unregistered_ipv6_source_is_dropped() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)).unwrap();
    hv.set_instances(vec![InstanceSpec::for_vm(&vm, "v6")])
        .unwrap();
    hv.start_daemon().unwrap();
    // Registered: the EUI-64 link-local address.
    let ok = vm
        .ns
        .exec(
            "curl",
            &[
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://[fe80::a9fe:a9fe%eth0]/openstack",
            ],
        )
        .unwrap();
    assert_eq!(ok, "200");
    // Not registered: a ULA the port record does not list.
    vm.ns
        .ip(&["-6", "addr", "add", "fd99::9/64", "dev", "eth0", "nodad"])
        .unwrap();
    let spoofed = vm.ns.exec(
        "curl",
        &[
            "-sS",
            "-m",
            "2",
            "--interface",
            "fd99::9",
            "http://[fe80::a9fe:a9fe%eth0]/openstack",
        ],
    );
    assert!(spoofed.is_err(), "{spoofed:?}");
    wait_for("the drop counter", Duration::from_secs(5), || {
        let c = hv.counters(&vm.tap).ok()?;
        (c["drop_unregistered"].as_u64()? > 0).then_some(())
    })
    .unwrap();
}
