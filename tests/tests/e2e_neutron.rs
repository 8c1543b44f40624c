//! The "neutron" port source against a real Neutron API and a real
//! Keystone (PyPI's neutron and keystone, their own WSGI applications
//! under gunicorn), with ports created through the REST API as Nova
//! creates them, and the Nova backend answered by the Nova test peer,
//! which checks Neutron's signed headers. Compute nodes as ML2/OVS and
//! linuxbridge run them: taps named after the port, or an OVS Interface
//! naming the port.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use metadata_tests::{
    Hypervisor, Vm,
    nova_peer::NovaPeer,
    openstack::{NeutronPort, OpenStack},
    ovn::LocalOvs,
    uuid_like, wait_for,
};
use serde_json::json;

const HOST: &str = "compute-1";
const SECRET: &str = "metadata proxy secret";
/// The daemon lists the ports this often in these tests.
const REFRESH_S: u64 = 2;

/// An instance as Nova knows it.
#[derive(Debug, Clone)]
struct Guest {
    instance: String,
    project: String,
}

impl Guest {
    fn new() -> Self {
        Self {
            instance: uuid_like(),
            project: OpenStack::new_project(),
        }
    }
}

/// A hypervisor with Keystone, Neutron, the Nova peer and the daemon
/// configured for source = "neutron".
struct Site {
    hv: Hypervisor,
    stack: OpenStack,
    nova: NovaPeer,
}

impl Site {
    fn new(guests: &[&Guest], ports_extra: &str) -> Self {
        let mut hv = Hypervisor::new().unwrap();
        let stack = OpenStack::start(&hv).unwrap();
        let known: Vec<(&str, &str)> = guests
            .iter()
            .map(|g| (g.instance.as_str(), g.project.as_str()))
            .collect();
        let nova = NovaPeer::start_for(&hv, SECRET, &known).unwrap();
        hv.ports_config = Some(OpenStack::ports_config(HOST, REFRESH_S, ports_extra));
        hv.extra_config = nova.backend_config(SECRET);
        Self { hv, stack, nova }
    }

    /// A port of `guest` on `network` with `ip`, bound here, and its VM.
    fn vm(&self, guest: &Guest, network: &str, ip: Ipv4Addr) -> (NeutronPort, Vm) {
        let port = self
            .stack
            .port(
                network,
                &guest.project,
                &guest.instance,
                HOST,
                &[&ip.to_string()],
            )
            .unwrap();
        let vm = self
            .hv
            .add_vm_on_tap(ip, &port.mac, Some(&port.tap))
            .unwrap();
        (port, vm)
    }
}

/// The instance uuid `vm` is served, if any (a short timeout: a SYN
/// dropped before a change applies must not hide the change).
fn served_uuid(vm: &Vm) -> Option<String> {
    vm.served_uuid(Duration::from_millis(300))
}

/// Waits until `vm` is served as `guest` (`None`: not served); how long
/// that took.
fn served_within(site: &Site, vm: &Vm, guest: Option<&Guest>, within: Duration) -> Duration {
    let started = Instant::now();
    let want = guest.map(|g| g.instance.clone());
    let mut last = None;
    let applied = wait_for("the change to apply", within, || {
        last = served_uuid(vm);
        (last == want).then_some(())
    });
    assert!(
        applied.is_ok(),
        "{}: wanted {want:?}, still {last:?} after {within:?}\nstatus {}\nlog {}",
        vm.tap,
        site.hv.daemon_command(&["status"]).unwrap_or_default(),
        site.hv.log()
    );
    started.elapsed()
}

/// Within one listing period, with room for the listing itself.
fn one_refresh() -> Duration {
    Duration::from_secs(REFRESH_S * 2 + 2)
}

#[test]
fn two_vms_with_the_same_ip_on_two_networks_and_projects_are_served_as_themselves() {
    let (a, b) = (Guest::new(), Guest::new());
    let mut site = Site::new(&[&a, &b], "");
    let ip = Ipv4Addr::new(10, 0, 0, 5);
    let net_a = site.stack.network(&a.project, &["10.0.0.0/24"]).unwrap();
    let net_b = site.stack.network(&b.project, &["10.0.0.0/24"]).unwrap();
    let (_, vm_a) = site.vm(&a, &net_a, ip);
    let (_, vm_b) = site.vm(&b, &net_b, ip);
    site.hv.start_daemon().unwrap();
    for (vm, guest) in [(&vm_a, &a), (&vm_b, &b)] {
        served_within(&site, vm, Some(guest), Duration::from_secs(10));
        // The peer answers 200 only for the right X-Instance-ID,
        // X-Tenant-ID and signature; and it saw the guest's own address.
        let seen = site.nova.seen.lock().unwrap();
        assert_eq!(seen.forwarded_for[&guest.instance], "10.0.0.5");
    }
    let statuses = site.nova.seen.lock().unwrap().statuses.clone();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let status = site.hv.status().unwrap();
    assert_eq!(status["port_source_connected"]["neutron"], true, "{status}");
    for (vm, guest) in [(&vm_a, &a), (&vm_b, &b)] {
        let taps = status["taps"].as_array().unwrap();
        let tap = taps
            .iter()
            .find(|t| t["device"] == vm.tap.as_str())
            .unwrap();
        assert_eq!(tap["instance"], guest.instance.as_str(), "{status}");
    }
    site.hv.stop_daemon().unwrap();
}

#[test]
fn on_an_ovs_node_the_interface_row_names_the_port_whatever_the_tap_is_called() {
    let guest = Guest::new();
    let mut hv_site = Site::new(&[&guest], "");
    let ovs = LocalOvs::start(&hv_site.hv, HOST).unwrap();
    hv_site.hv.ports_config = Some(OpenStack::ports_config(
        HOST,
        REFRESH_S,
        &format!("ovs = \"{}\"", ovs.remote()),
    ));
    let net = hv_site
        .stack
        .network(&guest.project, &["10.0.0.0/24"])
        .unwrap();
    let port = hv_site
        .stack
        .port(&net, &guest.project, &guest.instance, HOST, &["10.0.0.5"])
        .unwrap();
    // A tap whose name is not os-vif's: only the iface-id ties it to the port.
    let vm = hv_site
        .hv
        .add_vm_on_tap(Ipv4Addr::new(10, 0, 0, 5), &port.mac, None)
        .unwrap();
    ovs.plug(&vm.tap, &port.id, &port.mac, &guest.instance)
        .unwrap();
    hv_site.hv.start_daemon().unwrap();
    served_within(&hv_site, &vm, Some(&guest), Duration::from_secs(10));
    hv_site.hv.stop_daemon().unwrap();
}

#[test]
fn ports_bound_changed_deleted_and_moved_apply_within_one_refresh() {
    let guest = Guest::new();
    let mut site = Site::new(&[&guest], "");
    let net = site
        .stack
        .network(&guest.project, &["10.0.0.0/24"])
        .unwrap();
    site.hv.start_daemon().unwrap();
    let mut took = Vec::new();

    // Nova's order: the port, then the tap, then the binding to this host.
    let port = site
        .stack
        .port(&net, &guest.project, &guest.instance, "", &["10.0.0.5"])
        .unwrap();
    let vm = site
        .hv
        .add_vm_on_tap(Ipv4Addr::new(10, 0, 0, 5), &port.mac, Some(&port.tap))
        .unwrap();
    site.stack
        .update_port(&port.id, &json!({"binding:host_id": HOST}))
        .unwrap();
    took.push((
        "bound after its tap",
        served_within(&site, &vm, Some(&guest), one_refresh()),
    ));

    // A new fixed IP (and the guest follows).
    let subnet = site
        .stack
        .api("GET", &format!("/v2.0/ports/{}", port.id), None)
        .unwrap()["port"]["fixed_ips"][0]["subnet_id"]
        .clone();
    site.stack
        .update_port(
            &port.id,
            &json!({"fixed_ips": [{"subnet_id": subnet, "ip_address": "10.0.0.7"}]}),
        )
        .unwrap();
    vm.ns
        .ip(&["addr", "del", "10.0.0.5/24", "dev", "eth0"])
        .unwrap();
    vm.ns
        .ip(&["addr", "add", "10.0.0.7/24", "dev", "eth0"])
        .unwrap();
    vm.ns
        .ip(&["route", "replace", "169.254.169.254/32", "dev", "eth0"])
        .unwrap();
    took.push((
        "fixed IP changed",
        served_within(&site, &vm, Some(&guest), one_refresh()),
    ));

    // Moved to another host: no longer served here; back: served again.
    site.stack
        .update_port(&port.id, &json!({"binding:host_id": "compute-2"}))
        .unwrap();
    took.push((
        "bound elsewhere",
        served_within(&site, &vm, None, one_refresh()),
    ));
    site.stack
        .update_port(&port.id, &json!({"binding:host_id": HOST}))
        .unwrap();
    took.push((
        "bound here again",
        served_within(&site, &vm, Some(&guest), one_refresh()),
    ));

    // Deleted.
    site.stack.delete_port(&port.id).unwrap();
    took.push(("deleted", served_within(&site, &vm, None, one_refresh())));
    println!("refresh period {REFRESH_S} s; took: {took:?}");
    site.hv.stop_daemon().unwrap();
}

/// `metadata_port_source_connected{database="neutron"}` from the metrics.
fn connected_gauge(hv: &Hypervisor) -> Option<u8> {
    let text = hv
        .ns()
        .exec("curl", &["-s", "http://127.0.0.1:9780/metrics"])
        .ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("metadata_port_source_connected{database=\"neutron\"} ")?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn with_neutron_down_the_last_ports_serve_and_changes_made_meanwhile_apply_on_return() {
    let (a, b) = (Guest::new(), Guest::new());
    let mut site = Site::new(&[&a, &b], "");
    let net = site.stack.network(&a.project, &["10.0.0.0/24"]).unwrap();
    let (port_a, vm_a) = site.vm(&a, &net, Ipv4Addr::new(10, 0, 0, 5));
    site.hv.start_daemon().unwrap();
    served_within(&site, &vm_a, Some(&a), Duration::from_secs(10));

    site.stack.stop_neutron();
    wait_for("the daemon to notice", one_refresh() * 2, || {
        (connected_gauge(&site.hv) == Some(0)).then_some(())
    })
    .unwrap();
    for _ in 0..5 {
        assert_eq!(
            served_uuid(&vm_a).as_deref(),
            Some(a.instance.as_str()),
            "still served"
        );
    }
    let status = site.hv.daemon_command(&["status"]).unwrap();
    assert!(
        status.contains("port source neutron: DISCONNECTED"),
        "{status}"
    );

    // Meanwhile (through another Neutron server on the same database):
    // a's port deleted, b's created.
    let (port_b, vm_b) = site.stack.while_neutron_elsewhere(|| {
        site.stack.delete_port(&port_a.id).unwrap();
        site.vm(&b, &net, Ipv4Addr::new(10, 0, 0, 6))
    });
    site.stack.start_neutron().unwrap();
    served_within(&site, &vm_b, Some(&b), one_refresh() * 2);
    served_within(&site, &vm_a, None, one_refresh());
    assert_eq!(connected_gauge(&site.hv), Some(1));
    let lines = site
        .hv
        .log()
        .lines()
        .filter(|l| l.contains("Neutron API"))
        .count();
    assert!(
        lines <= 6,
        "one log line per state change, not per retry:\n{}",
        site.hv.log()
    );
    drop(port_b);
    site.hv.stop_daemon().unwrap();
}

#[test]
fn a_revoked_token_is_replaced_and_a_wrong_password_stops_the_start_with_keystones_answer() {
    let (a, b) = (Guest::new(), Guest::new());
    let mut site = Site::new(&[&a, &b], "");
    let net = site.stack.network(&a.project, &["10.0.0.0/24"]).unwrap();
    let (_, vm_a) = site.vm(&a, &net, Ipv4Addr::new(10, 0, 0, 5));
    site.hv.start_daemon().unwrap();
    served_within(&site, &vm_a, Some(&a), Duration::from_secs(10));

    // Disabling a user revokes its tokens: the daemon's, too.
    site.stack.set_service_user_enabled(false).unwrap();
    site.stack.set_service_user_enabled(true).unwrap();
    let (_, vm_b) = site.vm(&b, &net, Ipv4Addr::new(10, 0, 0, 6));
    served_within(&site, &vm_b, Some(&b), one_refresh());
    assert!(
        !site.hv.log().contains("serving the last known ports"),
        "no failed listing:\n{}",
        site.hv.log()
    );
    site.hv.stop_daemon().unwrap();
    let report = doctor(&site.hv);
    assert!(
        report.contains("ok   port source") && report.contains("lists 2 ports bound to compute-1"),
        "{report}"
    );

    site.hv.ports_config =
        Some(OpenStack::ports_config(HOST, REFRESH_S, "").replace("neutron-secret", "wrong"));
    site.hv.write_files().unwrap();
    let report = doctor(&site.hv);
    assert!(
        report.contains("FAIL port source") && report.contains("refused the credentials"),
        "{report}"
    );
    let err = site.hv.start_daemon().unwrap_err();
    let log = site.hv.log();
    assert!(
        log.contains("ports.keystone") && log.contains("refused the credentials"),
        "{err:#}\n{log}"
    );
}

#[test]
fn an_ipv6_subnet_is_served_over_fe80_a9fe_a9fe_from_both_sources() {
    let guest = Guest::new();
    let mut site = Site::new(&[&guest], "");
    let net = site
        .stack
        .network(&guest.project, &["10.0.0.0/24", "2001:db8:5::/64"])
        .unwrap();
    let port = site
        .stack
        .port(
            &net,
            &guest.project,
            &guest.instance,
            HOST,
            &["10.0.0.5", "2001:db8:5::5"],
        )
        .unwrap();
    let vm = site
        .hv
        .add_vm_on_tap(Ipv4Addr::new(10, 0, 0, 5), &port.mac, Some(&port.tap))
        .unwrap();
    vm.ns
        .ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:5::5/64",
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
    site.hv.start_daemon().unwrap();
    served_within(&site, &vm, Some(&guest), Duration::from_secs(10));
    // From the EUI-64 link-local (what a link-local destination picks as
    // its source) and from the fixed IPv6 address.
    for source in [None, Some("2001:db8:5::5")] {
        let mut args = vec!["-sS", "-m", "5"];
        if let Some(source) = source {
            args.extend(["--interface", source]);
        }
        args.push("http://[fe80::a9fe:a9fe%eth0]/openstack/latest/meta_data.json");
        let out = vm.ns.exec("curl", &args).unwrap();
        assert!(out.contains(&guest.instance), "from {source:?}: {out}");
    }
    let slots = site.hv.status().unwrap()["taps"][0]["slots"].to_string();
    assert!(
        slots.contains(&vm.link_local().to_string()) && slots.contains("2001:db8:5::5"),
        "both IPv6 sources registered: {slots}"
    );
    site.hv.stop_daemon().unwrap();
}

#[test]
fn behind_an_l3_agent_router_the_syn_to_the_gateways_mac_is_steered_and_answered_from_it() {
    let guest = Guest::new();
    let mut site = Site::new(&[&guest], "");
    let net = site
        .stack
        .network(&guest.project, &["10.0.0.0/24"])
        .unwrap();
    let (_, vm) = site.vm(&guest, &net, Ipv4Addr::new(10, 0, 0, 5));
    // No host route: 169.254.169.254 via the default gateway, a router
    // namespace on the tenant bridge (which answers ARP for 10.0.0.1).
    vm.route_via_gateway().unwrap();
    let bridge = site.hv.add_bridge().unwrap();
    site.hv.plug(&vm.tap, &bridge).unwrap();
    let gateway = site.hv.add_gateway(&bridge).unwrap();
    site.hv.start_daemon().unwrap();
    served_within(&site, &vm, Some(&guest), Duration::from_secs(10));
    let capture = vm
        .ns
        .run(|| metadata_tests::RawSocket::open("eth0"))
        .unwrap()
        .unwrap();
    assert_eq!(served_uuid(&vm).as_deref(), Some(guest.instance.as_str()));
    let gateway_mac = mac_bytes(&gateway.mac);
    let replies: Vec<Vec<u8>> = capture
        .drain()
        .into_iter()
        .filter(|f| {
            f.len() > 34
                && f[12..14] == [0x08, 0x00]
                && f[23] == 6
                && f[26..30] == [169, 254, 169, 254]
        })
        .collect();
    assert!(!replies.is_empty(), "the answer reached the guest");
    for frame in &replies {
        assert_eq!(
            frame[6..12],
            gateway_mac,
            "the reply comes from the MAC the guest addressed"
        );
    }
    site.hv.stop_daemon().unwrap();
}

fn mac_bytes(text: &str) -> [u8; 6] {
    let mut mac = [0; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// `metadata-redirector doctor` in `hv`'s network namespace: its report.
fn doctor(hv: &Hypervisor) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", hv.ns().name()))
        .arg(metadata_tests::daemon_binary().unwrap())
        .args(["doctor", "--config"])
        .arg(hv.config_path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// nova.conf as a compute node has it: `[DEFAULT] host` and `[neutron]`
/// with nova-compute's credentials for the Neutron API, among others.
fn nova_conf_text() -> String {
    format!(
        "[DEFAULT]\nhost = {HOST}\nmy_ip = 192.0.2.7\ncompute_driver = libvirt.LibvirtDriver\n\
         transport_url = rabbit://nova:secret@controller:5672/\n\n\
         [api]\nauth_strategy = keystone\n\n\
         [neutron]\nauth_type = password\nauth_url = {}\nusername = {}\npassword = {}\n\
         project_name = {}\nuser_domain_name = Default\nproject_domain_name = Default\n\
         region_name = {}\nvalid_interfaces = internal,public\nservice_metadata_proxy = true\n\
         metadata_proxy_shared_secret = {SECRET}\n\n[libvirt]\nvirt_type = kvm\n",
        metadata_tests::openstack::KEYSTONE_URL,
        metadata_tests::openstack::SERVICE_USER,
        metadata_tests::openstack::SERVICE_PASSWORD,
        metadata_tests::openstack::SERVICE_PROJECT,
        metadata_tests::openstack::REGION,
    )
}

/// ML2/OVS's metadata_agent.ini as neutron's installation guide writes it.
fn metadata_agent_ini(nova: std::net::SocketAddr) -> String {
    format!(
        "[DEFAULT]\nnova_metadata_host = {}\nnova_metadata_port = {}\n\
         metadata_proxy_shared_secret = {SECRET}\nmetadata_workers = 2\n\n\
         [agent]\nroot_helper = sudo neutron-rootwrap /etc/neutron/rootwrap.conf\n\n\
         [cache]\nmemcache_servers = controller:11211\n",
        nova.ip(),
        nova.port()
    )
}

#[test]
fn nova_conf_and_ml2s_metadata_agent_ini_run_the_daemon_and_broken_ones_name_file_line_and_key() {
    let guest = Guest::new();
    let mut site = Site::new(&[&guest], "");
    let net = site
        .stack
        .network(&guest.project, &["10.0.0.0/24"])
        .unwrap();
    let (_, vm) = site.vm(&guest, &net, Ipv4Addr::new(10, 0, 0, 5));
    // Nothing of the port source or the backend in the daemon's own file.
    site.hv.ports_config = None;
    site.hv.extra_config = String::new();
    let nova_conf = site.hv.dir().join("nova.conf");
    let agent_ini = site.hv.dir().join("metadata_agent.ini");
    std::fs::write(&nova_conf, nova_conf_text()).unwrap();
    std::fs::write(&agent_ini, metadata_agent_ini(site.nova.addr)).unwrap();
    site.hv.run_args = vec![
        "--nova-config".into(),
        nova_conf.display().to_string(),
        "--neutron-config".into(),
        agent_ini.display().to_string(),
    ];
    site.hv.start_daemon().unwrap();
    served_within(&site, &vm, Some(&guest), Duration::from_secs(10));
    site.hv.stop_daemon().unwrap();

    let broken = [
        (
            &nova_conf,
            nova_conf_text().replace("internal,public", "internal,privat"),
            "nova.conf:19: key `neutron.valid_interfaces`",
        ),
        (
            &agent_ini,
            metadata_agent_ini(site.nova.addr)
                .replace("nova_metadata_port = ", "nova_metadata_port = x"),
            "metadata_agent.ini:3: key `DEFAULT.nova_metadata_port`",
        ),
    ];
    for (file, text, named) in broken {
        let good = std::fs::read_to_string(file).unwrap();
        std::fs::write(file, text).unwrap();
        assert!(site.hv.start_daemon().is_err(), "{named}");
        // Reap the exited daemon before the next start.
        site.hv.kill_daemon().ok();
        assert!(site.hv.log().contains(named), "{named}: {}", site.hv.log());
        std::fs::write(file, good).unwrap();
    }
}
