//! End to end over IPv4: VMs (network namespaces) on taps of a hypervisor
//! (another namespace) running the real daemon with the real programs.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::Duration,
};

use metadata_tests::{Hypervisor, InstanceSpec, METADATA, Vm, wait_for};

const SAME_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

fn counter(hv: &Hypervisor, vm: &Vm, name: &str) -> u64 {
    hv.counters(&vm.tap).expect("status")[name]
        .as_u64()
        .expect("a number")
}

#[test]
fn two_vms_with_the_same_ip_each_get_their_own_metadata() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(SAME_IP).unwrap();
    let b = hv.add_vm(SAME_IP).unwrap();
    let mut spec_a = InstanceSpec::for_vm(&a, "vm-a");
    spec_a.user_data = Some("#cloud-config\nruncmd: [echo vm-a]\n".into());
    let spec_b = InstanceSpec::for_vm(&b, "vm-b");
    hv.set_instances(vec![spec_a.clone(), spec_b.clone()])
        .unwrap();
    hv.start_daemon().unwrap();

    // Concurrently, through cloud-init's own reader.
    let (view_a, view_b) = std::thread::scope(|s| {
        let ra = s.spawn(|| a.cloud_init_openstack("http://169.254.169.254"));
        let rb = s.spawn(|| b.cloud_init_openstack("http://169.254.169.254"));
        (ra.join().unwrap(), rb.join().unwrap())
    });
    let (view_a, view_b) = (view_a.unwrap(), view_b.unwrap());
    assert_eq!(view_a.uuid, spec_a.id);
    assert_eq!(view_a.name, "vm-a");
    assert_eq!(view_a.userdata.as_deref(), spec_a.user_data.as_deref());
    assert_eq!(
        view_a.public_keys["default"].as_str(),
        spec_a.public_key.as_deref()
    );
    assert_eq!(view_b.uuid, spec_b.id);
    assert_eq!(view_b.hostname, "vm-b");
    assert_eq!(view_b.userdata, None, "vm-b has no user data");

    // EC2 paths identify them too.
    let (status, body) = b
        .http_get(METADATA, "/latest/meta-data/local-ipv4")
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, b"10.0.0.5".as_slice()));
    let (status, _) = b.http_get(METADATA, "/latest/user-data").unwrap();
    assert_eq!(status, 404, "no user data is a 404");
    assert!(counter(&hv, &a, "steered") > 0 && counter(&hv, &a, "replied") > 0);
}

#[test]
fn on_link_vm_gets_arp_from_the_program_and_routed_vm_via_its_gateway() {
    let mut hv = Hypervisor::new().unwrap();
    // VM "onlink" resolves 169.254.169.254 itself: the program answers.
    let onlink = hv.add_vm(SAME_IP).unwrap();
    // VM "routed" sits on a bridge with a gateway namespace and sends to
    // 169.254.169.254 via the gateway's MAC, like a VM behind a router.
    let routed = hv.add_vm(SAME_IP).unwrap();
    routed.route_via_gateway().unwrap();
    let bridge = hv.add_bridge().unwrap();
    hv.plug(&routed.tap, &bridge).unwrap();
    let gateway = hv.add_gateway(&bridge).unwrap();

    hv.set_instances(vec![
        InstanceSpec::for_vm(&onlink, "onlink"),
        InstanceSpec::for_vm(&routed, "routed"),
    ])
    .unwrap();
    hv.start_daemon().unwrap();

    let (status, body) = onlink
        .http_get(METADATA, "/openstack/latest/meta_data.json")
        .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"name\":\"onlink\""));
    assert_eq!(
        counter(&hv, &onlink, "arp_replied"),
        1,
        "the program answered ARP"
    );
    let neigh = onlink.ns.ip(&["neigh", "show", "169.254.169.254"]).unwrap();
    let mdr0 = hv.mac_of("mdr0").unwrap();
    assert!(
        neigh.contains(&mdr0),
        "guest resolved 169.254.169.254 to the host device: {neigh}"
    );

    let (status, body) = routed
        .http_get(METADATA, "/openstack/latest/meta_data.json")
        .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"name\":\"routed\""));
    assert_eq!(
        counter(&hv, &routed, "arp_replied"),
        0,
        "the gateway answered ARP"
    );
    let neigh = routed.ns.ip(&["neigh", "show", "10.0.0.1"]).unwrap();
    assert!(
        neigh.contains(&gateway.mac),
        "routed via the gateway: {neigh}"
    );
}

#[test]
fn other_traffic_from_a_vm_passes_unchanged() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    vm.route_via_gateway().unwrap();
    let bridge = hv.add_bridge().unwrap();
    hv.plug(&vm.tap, &bridge).unwrap();
    let gateway = hv.add_gateway(&bridge).unwrap();
    hv.set_instances(vec![InstanceSpec::for_vm(&vm, "vm")])
        .unwrap();
    hv.start_daemon().unwrap();

    // ping across the bridge.
    vm.ns
        .exec("ping", &["-c", "2", "-W", "2", "10.0.0.1"])
        .unwrap();

    // TCP to the gateway, and TCP to 169.254.169.254 on another port: both
    // arrive at the gateway with the VM's own address as source.
    let listeners = gateway
        .ns
        .run(|| {
            (
                TcpListener::bind("10.0.0.1:8080").unwrap(),
                TcpListener::bind("169.254.169.254:8080").unwrap(),
            )
        })
        .unwrap();
    for (listener, target) in [
        (&listeners.0, SocketAddr::from(([10, 0, 0, 1], 8080))),
        (&listeners.1, SocketAddr::from(([169, 254, 169, 254], 8080))),
    ] {
        let client = vm
            .ns
            .run(move || std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)));
        let client = client.unwrap().unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), SAME_IP, "source untouched for {target}");
        drop((client, server_side));
    }
    // Nothing above was steered; the metadata service still works.
    assert_eq!(counter(&hv, &vm, "steered"), 0);
    assert!(counter(&hv, &vm, "passed") > 0);
    let (status, _) = vm.http_get(METADATA, "/openstack").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn metadata_requests_from_unregistered_sources_are_dropped_and_counted() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    hv.set_instances(vec![InstanceSpec::for_vm(&vm, "vm")])
        .unwrap();
    hv.start_daemon().unwrap();
    // Served from its registered address first (this also resolves ARP).
    let (status, _) = vm.http_get(METADATA, "/openstack").unwrap();
    assert_eq!(status, 200);
    let steered = counter(&hv, &vm, "steered");

    // A second address the port record does not list.
    vm.ns
        .ip(&["addr", "add", "10.0.0.99/24", "dev", "eth0"])
        .unwrap();
    let spoofed = vm.http_get_from(Some(Ipv4Addr::new(10, 0, 0, 99)), METADATA, "/openstack");
    assert!(
        spoofed.is_err(),
        "an unregistered source must not be served: {spoofed:?}"
    );
    let dropped = wait_for("the drop counter", Duration::from_secs(5), || {
        let dropped = counter(&hv, &vm, "drop_unregistered");
        (dropped > 0).then_some(dropped)
    })
    .unwrap();
    assert!(dropped >= 1);
    assert_eq!(
        counter(&hv, &vm, "steered"),
        steered,
        "nothing reached the proxy"
    );
    assert!(
        hv.log().contains("unregistered source 10.0.0.99"),
        "the program reported it through aya-log:\n{}",
        hv.log()
    );
}

#[test]
fn a_one_megabyte_body_comes_back_byte_exact() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    // 1 MiB of printable pseudo-random text as user data.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let body: String = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'!' + (state % 90) as u8)
        })
        .map(|c| if c == '"' || c == '\\' { '#' } else { c })
        .collect();
    let mut spec = InstanceSpec::for_vm(&vm, "big");
    spec.user_data = Some(body.clone());
    hv.set_instances(vec![spec]).unwrap();
    hv.start_daemon().unwrap();
    for path in ["/openstack/latest/user_data", "/latest/user-data"] {
        let (status, got) = vm.http_get(METADATA, path).unwrap();
        assert_eq!(status, 200);
        assert_eq!(got.len(), body.len(), "{path}");
        assert!(got == body.as_bytes(), "{path}: body differs");
    }
}

#[test]
fn status_lists_taps_slots_and_instances() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(SAME_IP).unwrap();
    let b = hv.add_vm(SAME_IP).unwrap();
    let spec_a = InstanceSpec::for_vm(&a, "a");
    hv.set_instances(vec![spec_a.clone(), InstanceSpec::for_vm(&b, "b")])
        .unwrap();
    hv.start_daemon().unwrap();
    let status = hv.status().unwrap();
    let taps = status["taps"].as_array().unwrap();
    assert_eq!(taps.len(), 2, "{status}");
    let tap_a = taps.iter().find(|t| t["device"] == a.tap.as_str()).unwrap();
    assert_eq!(tap_a["instance"], spec_a.id.as_str());
    assert_eq!(tap_a["slots"][0]["guest"], "10.0.0.5");
    let nats: Vec<&str> = taps
        .iter()
        .map(|t| t["slots"][0]["nat"].as_str().unwrap())
        .collect();
    assert_ne!(nats[0], nats[1], "same guest IP, different slots");
    let table = hv.daemon_command(&["status"]).unwrap();
    assert!(
        table.contains(&a.tap) && table.contains(&spec_a.id),
        "{table}"
    );
}
