//! The Nova backend's response cache and a broken Nova, end to end: guests
//! in their namespaces, the real datapath, the daemon, and a Nova peer that
//! checks Nova's signature rules and counts what reaches it.

use std::{
    net::{Ipv4Addr, TcpListener},
    time::{Duration, Instant},
};

use metadata_tests::{
    Hypervisor, InstanceSpec, METADATA, Vm,
    nova_peer::{Fault, NovaInstance, NovaPeer},
    wait_for,
};

const SAME_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const SECRET: &str = "nova cache secret";
const META_DATA: &str = "/openstack/latest/meta_data.json";
const PASSWORD: &str = "/openstack/latest/password";

/// Starts a Nova peer in the hypervisor namespace and points the daemon's
/// Nova backend at it, with `extra` added to `[backend]`.
fn start_nova(hv: &mut Hypervisor, instances: Vec<NovaInstance>, extra: &str) -> NovaPeer {
    let listener = hv
        .ns()
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let peer = NovaPeer::start(listener, SECRET, instances, None).unwrap();
    hv.extra_config = format!(
        "\n[backend]\ntype = \"nova\"\nurl = \"http://{}\"\nshared_secret = \"{SECRET}\"\n\
         connect_timeout_s = 2\ntimeout_s = 3\n{extra}",
        peer.addr
    );
    peer
}

fn get_ok(vm: &Vm, path: &str) -> String {
    let (status, body) = vm.http_get(METADATA, path).unwrap();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    String::from_utf8(body).unwrap()
}

fn asked(peer: &NovaPeer, spec: &InstanceSpec, method: &str, path: &str) -> usize {
    peer.seen.lock().unwrap().count(&spec.id, method, path)
}

#[test]
fn the_cache_answers_each_instance_its_own_data_and_never_caches_the_password() {
    let mut hv = Hypervisor::new().unwrap();
    let (a, b) = (hv.add_vm(SAME_IP).unwrap(), hv.add_vm(SAME_IP).unwrap());
    let (spec_a, spec_b) = (
        InstanceSpec::for_vm(&a, "cache-a"),
        InstanceSpec::for_vm(&b, "cache-b"),
    );
    let peer = start_nova(
        &mut hv,
        vec![NovaInstance::from(&spec_a), NovaInstance::from(&spec_b)],
        "",
    );
    hv.set_instances(vec![spec_a.clone(), spec_b.clone()])
        .unwrap();
    hv.start_daemon().unwrap();

    // Same guest address, same path: each instance still gets its own.
    for _ in 0..3 {
        for (vm, spec) in [(&a, &spec_a), (&b, &spec_b)] {
            let body = get_ok(vm, META_DATA);
            assert!(body.contains(&spec.id), "{body}");
        }
    }
    assert_eq!(asked(&peer, &spec_a, "GET", META_DATA), 1);
    assert_eq!(asked(&peer, &spec_b, "GET", META_DATA), 1);

    // The password: every GET reaches Nova, and sees the POST at once.
    assert_eq!(get_ok(&a, PASSWORD), "");
    let (status, _) = a.http("POST", PASSWORD, &[], b"s3cr3t").unwrap();
    assert_eq!(status, 200);
    assert_eq!(get_ok(&a, PASSWORD), "s3cr3t");
    assert_eq!(get_ok(&b, PASSWORD), "", "not another instance's");
    assert_eq!(asked(&peer, &spec_a, "GET", PASSWORD), 2);

    // Errors are not kept.
    for _ in 0..2 {
        assert_eq!(a.http_get(METADATA, "/openstack/nope").unwrap().0, 404);
    }
    assert_eq!(asked(&peer, &spec_a, "GET", "/openstack/nope"), 2);
}

#[test]
fn identical_requests_in_flight_reach_nova_once() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "storm");
    let mut nova = NovaInstance::from(&spec);
    nova.delay = Duration::from_millis(600);
    let peer = start_nova(&mut hv, vec![nova], "");
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    std::thread::scope(|s| {
        let requests: Vec<_> = (0..12)
            .map(|_| s.spawn(|| get_ok(&vm, META_DATA)))
            .collect();
        for request in requests {
            assert!(request.join().unwrap().contains(&spec.id));
        }
    });
    assert_eq!(asked(&peer, &spec, "GET", META_DATA), 1);
}

#[test]
fn a_changed_port_record_is_fetched_again_and_ttl_zero_turns_the_cache_off() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    let mut spec = InstanceSpec::for_vm(&vm, "changing");
    // A long ttl: only the record change can cause the second call.
    let peer = start_nova(
        &mut hv,
        vec![NovaInstance::from(&spec)],
        "cache_ttl_s = 600\n",
    );
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    get_ok(&vm, META_DATA);
    get_ok(&vm, META_DATA);
    assert_eq!(asked(&peer, &spec, "GET", META_DATA), 1);
    spec.name = "renamed".into();
    hv.set_instances(vec![spec.clone()]).unwrap();
    wait_for(
        "the changed record to miss the cache",
        Duration::from_secs(10),
        || {
            get_ok(&vm, META_DATA);
            (asked(&peer, &spec, "GET", META_DATA) == 2).then_some(())
        },
    )
    .unwrap();
    drop(peer);

    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "uncached");
    let peer = start_nova(
        &mut hv,
        vec![NovaInstance::from(&spec)],
        "cache_ttl_s = 0\n",
    );
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    for _ in 0..3 {
        get_ok(&vm, META_DATA);
    }
    assert_eq!(asked(&peer, &spec, "GET", META_DATA), 3);
}

/// Each broken answer a Nova can give, for one instance each, and the
/// status its guest gets; a healthy instance beside them is served.
#[test]
fn a_broken_nova_answer_is_a_bounded_5xx_and_never_cached() {
    let mut hv = Hypervisor::new().unwrap();
    let cases = [
        (Fault::Reset, 502),
        (Fault::Garbage, 502),
        (Fault::HalfBody, 502),
        (Fault::Oversized, 502),
    ];
    let vms: Vec<Vm> = cases.iter().map(|_| hv.add_vm(SAME_IP).unwrap()).collect();
    let healthy_vm = hv.add_vm(SAME_IP).unwrap();
    let mut specs: Vec<InstanceSpec> = vms
        .iter()
        .enumerate()
        .map(|(i, vm)| InstanceSpec::for_vm(vm, &format!("broken-{i}")))
        .collect();
    specs.push(InstanceSpec::for_vm(&healthy_vm, "healthy"));
    let mut instances: Vec<NovaInstance> = specs.iter().map(NovaInstance::from).collect();
    for (instance, (fault, _)) in instances.iter_mut().zip(cases) {
        instance.fault = fault;
    }
    let peer = start_nova(&mut hv, instances, "");
    hv.set_instances(specs.clone()).unwrap();
    hv.start_daemon().unwrap();

    for ((vm, spec), (fault, expected)) in vms.iter().zip(&specs).zip(cases) {
        for attempt in 0..2 {
            let started = Instant::now();
            let (status, _) = vm.http_get(METADATA, META_DATA).unwrap();
            let took = started.elapsed();
            println!("{fault:?} attempt {attempt}: {status} in {took:?}");
            assert_eq!(status, expected, "{fault:?}");
            assert!(took < Duration::from_secs(4), "{fault:?} took {took:?}");
        }
        assert_eq!(asked(&peer, spec, "GET", META_DATA), 2, "{fault:?}");
    }
    assert!(get_ok(&healthy_vm, META_DATA).contains(&specs[4].id));
    let log = hv.log();
    assert!(log.contains("broke off its answer"), "{log}");
    assert!(log.contains("over 8388608 bytes"), "{log}");
    let scrape = hv
        .ns()
        .exec("curl", &["-s", "http://127.0.0.1:9780/metrics"])
        .unwrap();
    let failed = scrape
        .lines()
        .find(|l| l.starts_with("metadata_upstream_requests_total{outcome=\"failed\"}"))
        .unwrap_or_else(|| panic!("{scrape}"));
    assert!(failed.ends_with(" 6"), "{failed}");
}
