//! The two backends end to end: the local backend read by cloud-init's own
//! OpenStack and EC2 readers, and the Nova backend against a peer that
//! enforces Nova's header rules.

use std::{
    net::{Ipv4Addr, TcpListener},
    time::Duration,
};

use metadata_tests::{
    Hypervisor, InstanceSpec, METADATA, Vm,
    nova_peer::{NovaInstance, NovaPeer, make_test_pki, server_tls},
    wait_for,
};

const SAME_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

const READ_EC2: &str = r#"
import json
from cloudinit.sources.helpers import ec2
md = ec2.get_instance_metadata(api_version="2009-04-04", metadata_address="http://169.254.169.254", timeout=10, retries=2)
ud = ec2.get_instance_userdata(api_version="2009-04-04", metadata_address="http://169.254.169.254", timeout=10, retries=2)
if isinstance(ud, bytes):
    ud = ud.decode()
print(json.dumps({"md": md, "ud": ud}))
"#;

fn read_ec2(vm: &Vm) -> serde_json::Value {
    let out = vm.ns.exec("/usr/bin/python3", &["-c", READ_EC2]).unwrap();
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
fn cloud_init_reads_openstack_and_ec2_from_the_local_backend() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(SAME_IP).unwrap();
    let b = hv.add_vm(SAME_IP).unwrap();
    let mut spec_a = InstanceSpec::for_vm(&a, "vm-a");
    spec_a.user_data = Some("#!/bin/sh\necho vm-a\n".into());
    spec_a.ports[0].ips = vec!["10.0.0.5/24".into()];
    let spec_b = InstanceSpec::for_vm(&b, "vm-b");
    hv.set_instances(vec![spec_a.clone(), spec_b.clone()])
        .unwrap();
    hv.start_daemon().unwrap();

    for (vm, spec) in [(&a, &spec_a), (&b, &spec_b)] {
        let os = vm.cloud_init_openstack("http://169.254.169.254").unwrap();
        assert_eq!(os.uuid, spec.id);
        assert_eq!(os.userdata, spec.user_data);
        let ec2 = read_ec2(vm);
        let md = &ec2["md"];
        assert_eq!(
            md["local-ipv4"], "10.0.0.5",
            "the guest's own address, not its slot"
        );
        assert_eq!(md["hostname"], spec.name.as_str());
        assert_eq!(md["placement"]["availability-zone"], "nova");
        assert_eq!(
            md["public-keys"]["default"],
            spec.public_key.as_deref().unwrap()
        );
        assert!(md["instance-id"].as_str().unwrap().starts_with("i-"));
        assert_eq!(
            ec2["ud"].as_str().unwrap_or(""),
            spec.user_data.as_deref().unwrap_or("")
        );
    }

    // network_data.json describes the port: static with a prefix, else DHCP.
    let (status, body) = a
        .http_get(METADATA, "/openstack/latest/network_data.json")
        .unwrap();
    assert_eq!(status, 200);
    let net: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(net["links"][0]["ethernet_mac_address"], a.mac.as_str());
    assert_eq!(net["networks"][0]["type"], "ipv4");
    assert_eq!(net["networks"][0]["netmask"], "255.255.255.0");
    let (_, body) = b
        .http_get(METADATA, "/openstack/latest/network_data.json")
        .unwrap();
    let net: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(net["networks"][0]["type"], "ipv4_dhcp");

    // Unknown paths 404, other methods 405, HEAD works like GET.
    assert_eq!(
        a.http("GET", "/openstack/latest/nothing", &[], b"")
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        a.http("DELETE", "/openstack/latest/meta_data.json", &[], b"")
            .unwrap()
            .0,
        405
    );
    let (status, body) = a
        .http("HEAD", "/openstack/latest/meta_data.json", &[], b"")
        .unwrap();
    assert_eq!((status, body.len()), (200, 0));
}

#[test]
fn passwords_are_set_once_and_survive_a_restart() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    let other = hv.add_vm(Ipv4Addr::new(10, 0, 0, 6)).unwrap();
    hv.set_instances(vec![
        InstanceSpec::for_vm(&vm, "pw"),
        InstanceSpec::for_vm(&other, "other"),
    ])
    .unwrap();
    hv.start_daemon().unwrap();
    let path = "/openstack/latest/password";
    assert_eq!(vm.http("GET", path, &[], b"").unwrap(), (200, Vec::new()));
    assert_eq!(
        vm.http("POST", path, &[], b"encrypted-password").unwrap().0,
        200
    );
    assert_eq!(vm.http("POST", path, &[], b"another").unwrap().0, 409);
    let too_long = vec![b'x'; 1021];
    assert_eq!(other.http("POST", path, &[], &too_long).unwrap().0, 400);
    hv.stop_daemon().unwrap();
    hv.start_daemon().unwrap();
    assert_eq!(
        vm.http("GET", path, &[], b"").unwrap(),
        (200, b"encrypted-password".to_vec())
    );
    assert_eq!(vm.http("POST", path, &[], b"again").unwrap().0, 409);
    assert_eq!(
        other.http("GET", path, &[], b"").unwrap(),
        (200, Vec::new())
    );
}

const SECRET: &str = "s3cret shared with nova";

fn nova_instances(specs: &[&InstanceSpec]) -> Vec<NovaInstance> {
    specs.iter().map(|s| NovaInstance::from(*s)).collect()
}

/// Binds a listener inside the hypervisor namespace.
fn listen(hv: &Hypervisor, addr: &str) -> TcpListener {
    let addr = addr.to_owned();
    hv.ns()
        .run(move || TcpListener::bind(addr))
        .unwrap()
        .unwrap()
}

#[test]
fn nova_backend_forwards_with_neutrons_signed_headers() {
    let mut hv = Hypervisor::new().unwrap();
    let a = hv.add_vm(SAME_IP).unwrap();
    let b = hv.add_vm(SAME_IP).unwrap();
    let spec_a = InstanceSpec::for_vm(&a, "nova-a");
    let mut spec_b = InstanceSpec::for_vm(&b, "nova-b");
    spec_b.project_id = "other-project".into();
    let peer = NovaPeer::start(
        listen(&hv, "127.0.0.1:0"),
        SECRET,
        nova_instances(&[&spec_a, &spec_b]),
        None,
    )
    .unwrap();
    hv.extra_config = format!(
        "\n[backend]\ntype = \"nova\"\nurl = \"http://{}\"\nshared_secret = \"{SECRET}\"\nconnect_timeout_s = 2\ntimeout_s = 5\n",
        peer.addr
    );
    hv.set_instances(vec![spec_a.clone(), spec_b.clone()])
        .unwrap();
    hv.start_daemon().unwrap();

    for (vm, spec) in [(&a, &spec_a), (&b, &spec_b)] {
        let view = vm.cloud_init_openstack("http://169.254.169.254").unwrap();
        assert_eq!(view.uuid, spec.id);
        assert_eq!(view.name, spec.name);
        assert_eq!(
            peer.seen.lock().unwrap().forwarded_for[&spec.id],
            "10.0.0.5"
        );
    }
    // A guest claiming another identity still gets only its own data.
    let forged = [
        format!("X-Instance-ID: {}", spec_b.id),
        format!("X-Tenant-ID: {}", spec_b.project_id),
        "X-Forwarded-For: 10.9.9.9".to_owned(),
        "X-Instance-ID-Signature: 00".to_owned(),
        "X-Neutron-Network-ID: x".to_owned(),
    ];
    let forged: Vec<&str> = forged.iter().map(String::as_str).collect();
    let (status, body) = a
        .http("GET", "/openstack/latest/meta_data.json", &forged, b"")
        .unwrap();
    assert_eq!(status, 200);
    let md: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(md["uuid"], spec_a.id.as_str());
    assert_eq!(
        peer.seen.lock().unwrap().forwarded_for[&spec_a.id],
        "10.0.0.5"
    );
    // Nova's own statuses pass through.
    assert_eq!(
        a.http("GET", "/openstack/latest/none", &[], b"").unwrap().0,
        404
    );
    // A status neutron-metadata-agent does not pass through (405) is a 500.
    assert_eq!(
        a.http("POST", "/openstack/latest/meta_data.json", &[], b"x")
            .unwrap()
            .0,
        500
    );
    assert!(
        !peer
            .seen
            .lock()
            .unwrap()
            .statuses
            .iter()
            .any(|s| *s == 400 || *s == 403)
    );
}

#[test]
fn nova_down_is_a_503_and_nova_back_is_served_without_restart() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "flaky");
    let peer = NovaPeer::start(
        listen(&hv, "127.0.0.1:0"),
        SECRET,
        nova_instances(&[&spec]),
        None,
    )
    .unwrap();
    let addr = peer.addr;
    // No response cache: every request must reach Nova (or fail to).
    hv.extra_config = format!(
        "\n[backend]\ntype = \"nova\"\nurl = \"http://{addr}\"\nshared_secret = \"{SECRET}\"\nconnect_timeout_s = 2\ntimeout_s = 3\ncache_ttl_s = 0\n"
    );
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    let path = "/openstack/latest/meta_data.json";
    assert_eq!(vm.http("GET", path, &[], b"").unwrap().0, 200);
    drop(peer);
    // The pooled connection Nova closed may carry the first request (a
    // broken answer, 502); after that nothing is listening (503).
    let first = vm.http("GET", path, &[], b"").unwrap().0;
    assert!(first == 503 || first == 502, "Nova down: {first}");
    assert_eq!(vm.http("GET", path, &[], b"").unwrap().0, 503, "still down");
    let _peer = NovaPeer::start(
        listen(&hv, &addr.to_string()),
        SECRET,
        nova_instances(&[&spec]),
        None,
    )
    .unwrap();
    let (status, body) = wait_for("Nova to be served again", Duration::from_secs(10), || {
        vm.http("GET", path, &[], b"")
            .ok()
            .filter(|(s, _)| *s == 200)
    })
    .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains(&spec.id));
    assert!(hv.log().contains("unreachable"), "{}", hv.log());
}

#[test]
fn nova_over_https_with_a_test_ca_and_a_clear_error_for_the_wrong_ca() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    let spec = InstanceSpec::for_vm(&vm, "tls");
    let pki = std::env::temp_dir().join(format!("mdr-pki-{}", metadata_tests::unique_suffix()));
    std::fs::create_dir_all(&pki).unwrap();
    let _cleanup = RemoveDir(pki.clone());
    let (ca, cert, key) = make_test_pki(&pki, "127.0.0.1").unwrap();
    let other = pki.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (wrong_ca, _, _) = make_test_pki(&other, "127.0.0.1").unwrap();
    let tls = server_tls(&cert, &key).unwrap();
    let peer = NovaPeer::start(
        listen(&hv, "127.0.0.1:0"),
        SECRET,
        nova_instances(&[&spec]),
        Some(tls),
    )
    .unwrap();
    let path = "/openstack/latest/meta_data.json";

    let config = |ca: &std::path::Path| {
        format!(
            "\n[backend]\ntype = \"nova\"\nurl = \"https://{}\"\nshared_secret = \"{SECRET}\"\nca_file = \"{}\"\nconnect_timeout_s = 2\ntimeout_s = 5\n",
            peer.addr,
            ca.display()
        )
    };
    hv.extra_config = config(&ca);
    hv.set_instances(vec![spec.clone()]).unwrap();
    hv.start_daemon().unwrap();
    let (status, body) = vm.http("GET", path, &[], b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(&spec.id));
    hv.stop_daemon().unwrap();

    hv.extra_config = config(&wrong_ca);
    hv.start_daemon().unwrap();
    assert_eq!(vm.http("GET", path, &[], b"").unwrap().0, 503);
    let log = hv.log();
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "the log says why:\n{log}"
    );
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn agent_mode_serves_neutrons_haproxies() {
    let mut hv = Hypervisor::new().unwrap();
    let socket = hv.log_path().with_file_name("metadata_proxy");
    hv.extra_config = format!("\n[agent]\nsocket = \"{}\"\n", socket.display());
    // Two networks with the same VM address, each with its own haproxy.
    let a = hv.bare_vm(SAME_IP).unwrap();
    let b = hv.bare_vm(SAME_IP).unwrap();
    let (spec_a, spec_b) = (
        InstanceSpec::for_vm(&a, "agent-a"),
        InstanceSpec::for_vm(&b, "agent-b"),
    );
    hv.set_instances(vec![spec_a.clone(), spec_b.clone()])
        .unwrap();
    hv.start_daemon().unwrap();
    let _net_a =
        metadata_tests::neutron::NeutronNetwork::new(&a, &spec_a.ports[0].network_id, &socket)
            .unwrap();
    let _net_b =
        metadata_tests::neutron::NeutronNetwork::new(&b, &spec_b.ports[0].network_id, &socket)
            .unwrap();
    for (vm, spec) in [(&a, &spec_a), (&b, &spec_b)] {
        let view = vm.cloud_init_openstack("http://169.254.169.254").unwrap();
        assert_eq!(view.uuid, spec.id);
    }
    // haproxy deletes a Router-ID a guest sends, so both can only come
    // straight to the socket: 400, as neutron-metadata-agent answers.
    let raw = format!(
        "GET /openstack HTTP/1.1\r\nHost: x\r\nX-Neutron-Network-ID: {}\r\nX-Neutron-Router-ID: r\r\nX-Forwarded-For: 10.0.0.5\r\nConnection: close\r\n\r\n",
        spec_a.ports[0].network_id
    );
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut stream, raw.as_bytes()).unwrap();
    let mut response = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut response).unwrap();
    assert_eq!(metadata_tests::parse_response(&response).unwrap().0, 400);
}

#[test]
fn a_slow_nova_for_one_instance_does_not_hold_another_and_is_asked_at_most_8_at_once() {
    let mut hv = Hypervisor::new().unwrap();
    let slow = hv.add_vm(SAME_IP).unwrap();
    let fast = hv.add_vm(SAME_IP).unwrap();
    let (spec_slow, spec_fast) = (
        InstanceSpec::for_vm(&slow, "slow"),
        InstanceSpec::for_vm(&fast, "fast"),
    );
    let mut instances = nova_instances(&[&spec_slow, &spec_fast]);
    instances[0].delay = Duration::from_millis(1500);
    let peer = NovaPeer::start(listen(&hv, "127.0.0.1:0"), SECRET, instances, None).unwrap();
    hv.extra_config = format!(
        // No response cache: identical requests would share one call.
        "\n[backend]\ntype = \"nova\"\nurl = \"http://{}\"\nshared_secret = \"{SECRET}\"\nconnect_timeout_s = 2\ntimeout_s = 10\ncache_ttl_s = 0\n",
        peer.addr
    );
    hv.set_instances(vec![spec_slow.clone(), spec_fast.clone()])
        .unwrap();
    hv.start_daemon().unwrap();
    let slowest_fast = std::thread::scope(|s| {
        let flood: Vec<_> = (0..20)
            .map(|_| s.spawn(|| slow.http_get(METADATA, "/openstack/latest/meta_data.json")))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let (status, _) = fast
                .http_get(METADATA, "/openstack/latest/meta_data.json")
                .unwrap();
            assert_eq!(status, 200);
            slowest = slowest.max(started.elapsed());
        }
        for request in flood {
            assert_eq!(
                request.join().unwrap().unwrap().0,
                200,
                "the slow instance is served, in turn"
            );
        }
        slowest
    });
    let (_, most) = peer.seen.lock().unwrap().in_flight[&spec_slow.id];
    println!(
        "fast instance's slowest request {slowest_fast:?} while the slow one had {most} at Nova at once"
    );
    assert!(slowest_fast < Duration::from_secs(1), "{slowest_fast:?}");
    assert!((1..=8).contains(&most), "at most 8 at once: {most}");
}
