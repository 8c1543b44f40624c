//! The "ovn" port source against a real OVN control plane: the local
//! Open_vSwitch database written with ovs-vsctl as os-vif writes it, the
//! OVN Northbound written with ovn-nbctl as neutron's ML2/OVN driver writes
//! it, a real ovn-northd computing the Southbound (standalone, SSL, or a
//! 3-member Raft cluster), bindings claimed as ovn-controller claims them,
//! and the Nova backend answered by the Nova test peer, which checks
//! Neutron's signed headers.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use metadata_tests::{
    Hypervisor, Vm,
    nova_peer::NovaPeer,
    ovn::{LocalOvs, NeutronPort, Northbound, Southbound, SslFiles},
    uuid_like, wait_for,
};

const SAME_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const SECRET: &str = "metadata proxy secret";
const CHASSIS: &str = "compute-1";

/// A guest on this host as Neutron and Nova know it.
#[derive(Debug, Clone)]
struct Guest {
    port: String,
    instance: String,
    project: String,
}

impl Guest {
    fn new() -> Self {
        Self {
            port: uuid_like(),
            instance: uuid_like(),
            project: uuid_like().replace('-', ""),
        }
    }
}

/// The hypervisor with OVS, a Southbound computed by ovn-northd from a
/// Northbound, the Nova peer and the daemon configured for source = "ovn".
struct Site {
    hv: Hypervisor,
    ovs: LocalOvs,
    nb: Northbound,
    sb: Southbound,
    chassis: String,
    nova: NovaPeer,
}

impl Site {
    fn new(sb: impl FnOnce(&Hypervisor) -> anyhow::Result<Southbound>, guests: &[&Guest]) -> Self {
        let mut hv = Hypervisor::new().unwrap();
        let ovs = LocalOvs::start(&hv, CHASSIS).unwrap();
        let sb = sb(&hv).unwrap();
        let nb = Northbound::start(&hv, &sb).unwrap();
        let chassis = sb.add_chassis(CHASSIS, "192.0.2.1").unwrap();
        let known: Vec<(&str, &str)> = guests
            .iter()
            .map(|g| (g.instance.as_str(), g.project.as_str()))
            .collect();
        let nova = NovaPeer::start_for(&hv, SECRET, &known).unwrap();
        hv.ports_config = Some(format!(
            "source = \"ovn\"\novs = \"{}\"\novn_sb = \"{}\"\n",
            ovs.remote(),
            sb.remotes()
        ));
        hv.extra_config = nova.backend_config(SECRET);
        Self {
            hv,
            ovs,
            nb,
            sb,
            chassis,
            nova,
        }
    }

    /// A network with its metadata localport (10.0.0.2) and DHCP options;
    /// returns the network id.
    fn network(&self) -> String {
        self.nb.add_network("10.0.0", CHASSIS).unwrap()
    }

    /// The Neutron port of `guest` on `network`, with `vm`'s MAC and IP
    /// and further address entries (allowed-address-pairs with a MAC of
    /// their own).
    fn add_port(&self, vm: &Vm, guest: &Guest, network: &str, pairs: &[&str]) {
        let mut addresses = vec![format!("{} {}", vm.mac, vm.ip)];
        addresses.extend(pairs.iter().map(|p| (*p).to_owned()));
        self.nb
            .add_port(&NeutronPort {
                id: &guest.port,
                network,
                addresses,
                device_id: &guest.instance,
                device_owner: "compute:nova",
                project_id: &guest.project,
                host: CHASSIS,
            })
            .unwrap();
    }

    /// Plugs `vm` as `guest` (OVS, as os-vif does), creates its port
    /// (Northbound) and claims the binding northd made for it here;
    /// returns the binding's uuid.
    fn plug(&self, vm: &Vm, guest: &Guest, network: &str) -> String {
        self.ovs
            .plug(&vm.tap, &guest.port, &vm.mac, &guest.instance)
            .unwrap();
        self.add_port(vm, guest, network, &[]);
        self.nb.claim(&self.sb, &guest.port, &self.chassis).unwrap()
    }
}

/// The instance uuid `vm` is served, if any (a short timeout: a SYN
/// dropped before a change applies must not hide the change).
fn served_uuid(vm: &Vm) -> Option<String> {
    vm.served_uuid(Duration::from_millis(150))
}

/// Waits until `vm` is served as `guest` (or, with `None`, is not served).
fn served_within(vm: &Vm, guest: Option<&Guest>, within: Duration) -> Duration {
    let started = Instant::now();
    let want = guest.map(|g| g.instance.clone());
    let mut last = None;
    let applied = wait_for("the change to apply", within, || {
        last = served_uuid(vm);
        (last == want).then_some(())
    });
    assert!(
        applied.is_ok(),
        "wanted {want:?}, still {last:?} after {within:?}"
    );
    started.elapsed()
}

#[test]
fn two_vms_with_the_same_ip_on_different_networks_are_served_with_their_own_identity() {
    let (a, b) = (Guest::new(), Guest::new());
    let mut site = Site::new(Southbound::standalone, &[&a, &b]);
    let vm_a = site.hv.add_vm(SAME_IP).unwrap();
    let vm_b = site.hv.add_vm(SAME_IP).unwrap();
    let (net_a, net_b) = (site.network(), site.network());
    site.plug(&vm_a, &a, &net_a);
    site.plug(&vm_b, &b, &net_b);
    site.hv.start_daemon().unwrap();
    for (vm, guest) in [(&vm_a, &a), (&vm_b, &b)] {
        served_within(vm, Some(guest), Duration::from_secs(10));
        // The peer answers 200 only for the right X-Instance-ID,
        // X-Tenant-ID and signature; and it saw the guest's own address.
        let seen = site.nova.seen.lock().unwrap();
        assert_eq!(seen.forwarded_for[&guest.instance], "10.0.0.5");
    }
    let statuses = site.nova.seen.lock().unwrap().statuses.clone();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // `status` names each tap's instance, learned from the Southbound.
    let status = site.hv.status().unwrap();
    for (vm, guest) in [(&vm_a, &a), (&vm_b, &b)] {
        let taps = status["taps"].as_array().unwrap();
        let tap = taps
            .iter()
            .find(|t| t["device"] == vm.tap.as_str())
            .unwrap();
        assert_eq!(tap["instance"], guest.instance.as_str(), "{status}");
    }
}

#[test]
fn a_guest_routing_via_its_networks_metadata_port_gets_arp_from_the_program() {
    let guest = Guest::new();
    let mut site = Site::new(Southbound::standalone, &[&guest]);
    let vm = site.hv.add_vm(SAME_IP).unwrap();
    // As OVN's DHCP option 121 sets it: 169.254.169.254/32 via 10.0.0.2,
    // an address no namespace or host holds any more.
    vm.ns
        .ip(&["route", "replace", "169.254.169.254/32", "via", "10.0.0.2"])
        .unwrap();
    let net = site.network();
    site.plug(&vm, &guest, &net);
    site.hv.start_daemon().unwrap();
    let served = wait_for("the guest to be served", Duration::from_secs(10), || {
        (served_uuid(&vm).as_deref() == Some(guest.instance.as_str())).then_some(())
    });
    assert!(
        served.is_ok(),
        "not served; status {}\nlog {}",
        site.hv.daemon_command(&["status"]).unwrap_or_default(),
        site.hv.log()
    );
    let neigh = vm.ns.ip(&["neigh", "show", "10.0.0.2"]).unwrap();
    let mdr0 = site.hv.mac_of("mdr0").unwrap();
    assert!(
        neigh.contains(&mdr0),
        "10.0.0.2 resolved to the host device: {neigh}"
    );
    let counters = site.hv.counters(&vm.tap).unwrap();
    assert!(counters["arp_replied"].as_u64().unwrap() >= 1, "{counters}");
}

#[test]
fn ip_changes_deletions_and_chassis_moves_apply_within_a_second() {
    let guest = Guest::new();
    let mut site = Site::new(Southbound::standalone, &[&guest]);
    let vm = site.hv.add_vm(SAME_IP).unwrap();
    let net = site.network();
    let binding = site.plug(&vm, &guest, &net);
    site.hv.start_daemon().unwrap();
    served_within(&vm, Some(&guest), Duration::from_secs(10));
    let second = Duration::from_secs(1);
    let mut took = Vec::new();

    // The port's IP changes (and the guest follows).
    let addresses = format!("{} 10.0.0.7", vm.mac);
    site.nb
        .nbctl(&["lsp-set-addresses", &guest.port, &addresses])
        .unwrap();
    // (The old address first: deleting a primary takes its secondaries.)
    vm.ns
        .ip(&["addr", "del", "10.0.0.5/24", "dev", "eth0"])
        .unwrap();
    vm.ns
        .ip(&["addr", "add", "10.0.0.7/24", "dev", "eth0"])
        .unwrap();
    vm.ns
        .ip(&["route", "replace", "169.254.169.254/32", "dev", "eth0"])
        .unwrap();
    took.push(("ip change", served_within(&vm, Some(&guest), second)));

    // Bound to another chassis: no longer served here.
    let other = site.sb.add_chassis("compute-2", "192.0.2.2").unwrap();
    site.sb
        .sbctl(&["set", "Port_Binding", &binding, &format!("chassis={other}")])
        .unwrap();
    took.push(("moved away", served_within(&vm, None, second)));

    // Live migration to here: this chassis in additional_chassis.
    let here = format!("additional_chassis={}", site.chassis);
    site.sb
        .sbctl(&["set", "Port_Binding", &binding, &here])
        .unwrap();
    took.push((
        "additional chassis",
        served_within(&vm, Some(&guest), second),
    ));

    // The port is deleted (northd removes its binding).
    site.nb.nbctl(&["lsp-del", &guest.port]).unwrap();
    took.push(("deleted", served_within(&vm, None, second)));
    println!("took: {took:?}");
}

#[test]
fn with_the_whole_southbound_down_the_last_state_serves_and_changes_apply_on_return() {
    let (a, b) = (Guest::new(), Guest::new());
    let mut site = Site::new(Southbound::standalone, &[&a, &b]);
    let vm_a = site.hv.add_vm(SAME_IP).unwrap();
    let vm_b = site.hv.add_vm(Ipv4Addr::new(10, 0, 0, 6)).unwrap();
    let net = site.network();
    site.plug(&vm_a, &a, &net);
    // b's binding exists, but its tap is not plugged into OVS yet.
    site.add_port(&vm_b, &b, &net, &[]);
    site.nb.claim(&site.sb, &b.port, &site.chassis).unwrap();
    site.hv.start_daemon().unwrap();
    served_within(&vm_a, Some(&a), Duration::from_secs(10));

    site.sb.members[0].kill();
    for _ in 0..5 {
        assert_eq!(
            served_uuid(&vm_a).as_deref(),
            Some(a.instance.as_str()),
            "still served"
        );
    }
    // Nova plugs b while the Southbound is down: waiting, not served.
    site.ovs
        .plug(&vm_b.tap, &b.port, &vm_b.mac, &b.instance)
        .unwrap();
    assert_eq!(served_uuid(&vm_b), None);
    let status = site.hv.daemon_command(&["status"]).unwrap();
    assert!(
        status.contains("waiting") && status.contains(&vm_b.tap),
        "{status}"
    );

    site.sb.members[0].restart().unwrap();
    served_within(&vm_b, Some(&b), Duration::from_secs(15));
    assert_eq!(served_uuid(&vm_a).as_deref(), Some(a.instance.as_str()));
}

/// The Southbound member (index) the daemon is connected to.
fn connected_member(site: &Site) -> usize {
    let pid = site.hv.daemon_pid().unwrap().to_string();
    let sockets = site
        .hv
        .ns()
        .exec("ss", &["-tnpH", "state", "established"])
        .unwrap();
    sockets
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .find_map(|line| (0..3).find(|i| line.contains(&format!("127.0.0.1:{} ", 6641 + i))))
        .expect("a connection to a member")
}

#[test]
fn a_clustered_southbound_survives_the_loss_of_the_member_in_use() {
    let (a, b) = (Guest::new(), Guest::new());
    let mut site = Site::new(|hv| Southbound::cluster(hv, 3), &[&a, &b]);
    let vm_a = site.hv.add_vm(SAME_IP).unwrap();
    let vm_b = site.hv.add_vm(Ipv4Addr::new(10, 0, 0, 6)).unwrap();
    let net = site.network();
    site.plug(&vm_a, &a, &net);
    site.hv.start_daemon().unwrap();
    served_within(&vm_a, Some(&a), Duration::from_secs(10));

    let member = connected_member(&site);
    site.sb.members[member].kill();
    assert_eq!(
        served_uuid(&vm_a).as_deref(),
        Some(a.instance.as_str()),
        "service continues"
    );
    // A change through the surviving members (once they have a leader).
    let started = Instant::now();
    site.ovs
        .plug(&vm_b.tap, &b.port, &vm_b.mac, &b.instance)
        .unwrap();
    site.add_port(&vm_b, &b, &net, &[]);
    wait_for(
        "a leader among the survivors",
        Duration::from_secs(10),
        || site.nb.claim(&site.sb, &b.port, &site.chassis).ok(),
    )
    .unwrap();
    served_within(&vm_b, Some(&b), Duration::from_secs(10));
    println!(
        "change applied {:?} after the member was killed",
        started.elapsed()
    );
    assert_ne!(connected_member(&site), member, "moved to another member");

    site.sb.members[member].restart().unwrap();
    served_within(&vm_a, Some(&a), Duration::from_secs(5));
}

/// neutron_ovn_metadata_agent.ini as a deployment writes it.
fn agent_ini(site: &Site, nova_port: u16) -> String {
    format!(
        "[DEFAULT]\n\
         debug = False\n\
         state_path = /var/lib/neutron\n\
         metadata_workers = 2\n\
         metadata_proxy_socket = $state_path/metadata_proxy\n\
         nova_metadata_host = 127.0.0.1\n\
         nova_metadata_port = {nova_port}\n\
         nova_metadata_protocol = http\n\
         metadata_proxy_shared_secret = {SECRET}\n\
         \n\
         [agent]\n\
         root_helper = sudo neutron-rootwrap /etc/neutron/rootwrap.conf\n\
         \n\
         [ovs]\n\
         ovsdb_connection = {}\n\
         \n\
         [ovn]\n\
         ovn_sb_connection = {}\n\
         \n\
         [metadata_rate_limiting]\n\
         rate_limit_enabled = false\n",
        site.ovs.remote(),
        site.sb.remotes()
    )
}

#[test]
fn neutrons_agent_ini_runs_the_daemon_and_a_broken_one_names_file_line_and_key() {
    let guest = Guest::new();
    let mut site = Site::new(Southbound::standalone, &[&guest]);
    let vm = site.hv.add_vm(SAME_IP).unwrap();
    let net = site.network();
    site.plug(&vm, &guest, &net);
    let ini = site.hv.dir().join("neutron_ovn_metadata_agent.ini");
    std::fs::write(&ini, agent_ini(&site, site.nova.addr.port())).unwrap();
    // Only the daemon's own settings in its file: ports and Nova come
    // from neutron's.
    site.hv.ports_config = None;
    site.hv.extra_config = String::new();
    site.hv.run_args = vec!["--neutron-config".into(), ini.display().to_string()];
    site.hv.start_daemon().unwrap();
    served_within(&vm, Some(&guest), Duration::from_secs(10));
    assert!(
        site.hv.log().contains("not used from"),
        "unused keys listed once"
    );

    let broken = site.hv.dir().join("broken.ini");
    let text = agent_ini(&site, site.nova.addr.port())
        .replace("nova_metadata_port = ", "nova_metadata_port = port-");
    std::fs::write(&broken, text).unwrap();
    let binary = metadata_tests::daemon_binary().unwrap();
    // In the hypervisor's namespace, so that even a regression that got
    // past the file could not touch this machine's own network.
    let output = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", site.hv.ns().name()))
        .arg(binary)
        .args([
            "run",
            "--config",
            "/nonexistent/metadata-redirector.toml",
            "--neutron-config",
        ])
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "{}:7: key `DEFAULT.nova_metadata_port`",
            broken.display()
        )),
        "{stderr}"
    );
}

#[test]
fn an_ssl_southbound_with_client_certificates_is_followed() {
    let guest = Guest::new();
    let pki_dir =
        std::env::temp_dir().join(format!("mdr-test-pki-{}", metadata_tests::unique_suffix()));
    std::fs::create_dir_all(&pki_dir).unwrap();
    let _cleanup = RemoveOnDrop(pki_dir.clone());
    let (ca, cert, key) = metadata_tests::nova_peer::make_test_pki(&pki_dir, "127.0.0.1").unwrap();
    let pki = SslFiles { ca, cert, key };
    let mut site = Site::new(|hv| Southbound::standalone_ssl(hv, &pki), &[&guest]);
    site.hv.ports_config = Some(format!(
        "source = \"ovn\"\novs = \"{}\"\novn_sb = \"{}\"\novn_sb_private_key = \"{}\"\novn_sb_certificate = \"{}\"\novn_sb_ca_cert = \"{}\"\n",
        site.ovs.remote(),
        Southbound::ssl_remote(),
        pki.key.display(),
        pki.cert.display(),
        pki.ca.display()
    ));
    let vm = site.hv.add_vm(SAME_IP).unwrap();
    let net = site.network();
    site.plug(&vm, &guest, &net);
    site.hv.start_daemon().unwrap();
    served_within(&vm, Some(&guest), Duration::from_secs(10));
    assert!(
        site.hv
            .log()
            .contains(&format!("monitoring {}", Southbound::ssl_remote()))
    );
}

/// Removes a folder when dropped, also when the test panics.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// `metadata_port_source_connected{database=...}` from the metrics.
fn connected_gauge(hv: &Hypervisor, database: &str) -> Option<u8> {
    let text = hv
        .ns()
        .exec("curl", &["-s", "http://127.0.0.1:9780/metrics"])
        .ok()?;
    let prefix = format!("metadata_port_source_connected{{database=\"{database}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

#[test]
fn with_the_southbound_down_at_start_the_daemon_starts_and_says_so() {
    let guest = Guest::new();
    let mut site = Site::new(Southbound::standalone, &[&guest]);
    let vm = site.hv.add_vm(SAME_IP).unwrap();
    let net = site.network();
    site.plug(&vm, &guest, &net);
    site.sb.members[0].kill();
    site.hv.start_daemon().unwrap();
    let status = site.hv.daemon_command(&["status"]).unwrap();
    assert!(
        status.contains("port source southbound: DISCONNECTED"),
        "{status}"
    );
    assert!(
        status.contains("waiting for a binding") && status.contains(&vm.tap),
        "{status}"
    );
    assert_eq!(connected_gauge(&site.hv, "southbound"), Some(0));
    assert_eq!(connected_gauge(&site.hv, "ovs"), Some(1));
    site.sb.members[0].restart().unwrap();
    served_within(&vm, Some(&guest), Duration::from_secs(15));
    assert_eq!(connected_gauge(&site.hv, "southbound"), Some(1));
}

/// The instance uuid `vm` is served within `within`, with what went wrong
/// (status and log) when not.
fn assert_served(site: &Site, vm: &Vm, guest: &Guest, when: &str) {
    let served = wait_for("the guest to be served", Duration::from_secs(10), || {
        (served_uuid(vm).as_deref() == Some(guest.instance.as_str())).then_some(())
    });
    assert!(
        served.is_ok(),
        "{} not served {when}; status {}\nlog {}",
        vm.tap,
        site.hv.daemon_command(&["status"]).unwrap_or_default(),
        site.hv.log()
    );
}

#[test]
fn a_port_with_an_allowed_address_pair_of_its_own_mac_is_served_across_sighup_and_restart() {
    // Neutron writes such a pair as a second address entry; northd copies
    // the entries into Port_Binding.mac, which OVSDB keeps sorted, so the
    // pair's entry comes first when its MAC sorts first (a VRRP MAC) and
    // last otherwise.
    let (first, last) = (Guest::new(), Guest::new());
    let mut site = Site::new(Southbound::standalone, &[&first, &last]);
    let network = site.network();
    let vm_first = site.hv.add_vm(SAME_IP).unwrap();
    let vm_last = site.hv.add_vm(Ipv4Addr::new(10, 0, 0, 6)).unwrap();
    let pairs = [
        (&vm_first, &first, "00:00:5e:00:01:01 10.0.0.100"),
        (&vm_last, &last, "fe:ff:ff:00:00:01"),
    ];
    for (vm, guest, pair) in pairs {
        site.ovs
            .plug(&vm.tap, &guest.port, &vm.mac, &guest.instance)
            .unwrap();
        site.add_port(vm, guest, &network, &[pair]);
        let binding = site.nb.claim(&site.sb, &guest.port, &site.chassis).unwrap();
        let mac = site
            .sb
            .sbctl(&["get", "Port_Binding", &binding, "mac"])
            .unwrap();
        let own = format!("\"{} {}\"", vm.mac, vm.ip);
        let (own_at, pair_at) = (mac.find(&own).unwrap(), mac.find(pair).unwrap());
        assert_eq!(pair_at < own_at, pair.starts_with("00:"), "{mac}");
    }
    site.hv.start_daemon().unwrap();
    for when in [
        "at start",
        "after SIGHUP (a full resync)",
        "after a restart",
    ] {
        match when {
            "after SIGHUP (a full resync)" => site.hv.reload().unwrap(),
            "after a restart" => {
                site.hv.kill_daemon().unwrap();
                site.hv.start_daemon().unwrap();
            }
            _ => {}
        }
        for (vm, guest, _) in pairs {
            assert_served(&site, vm, guest, when);
        }
    }
    // The pair's addresses are not the instance's: not registered.
    let status = site.hv.daemon_command(&["status"]).unwrap();
    assert!(!status.contains("10.0.0.100"), "{status}");
}
