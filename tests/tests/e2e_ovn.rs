//! The "ovn" port source against real ovsdb-server processes: the local
//! Open_vSwitch database written with ovs-vsctl, the OVN Southbound with
//! ovn-sbctl (standalone and as a 3-member Raft cluster), the Nova backend
//! answered by the Nova test peer, which checks Neutron's signed headers.

use std::{
    net::{Ipv4Addr, TcpListener},
    time::{Duration, Instant},
};

use metadata_tests::{
    Hypervisor, METADATA, Vm,
    nova_peer::{NovaInstance, NovaPeer},
    ovn::{Binding, LocalOvs, Southbound},
    uuid_like, wait_for,
};

const SAME_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const SECRET: &str = "metadata proxy secret";
const CHASSIS: &str = "compute-1";
const META: &str = "/openstack/latest/meta_data.json";

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

/// The hypervisor with OVS, a Southbound, the Nova peer and the daemon
/// configured for source = "ovn".
struct Site {
    hv: Hypervisor,
    ovs: LocalOvs,
    sb: Southbound,
    chassis: String,
    nova: NovaPeer,
}

impl Site {
    fn new(sb: impl FnOnce(&Hypervisor) -> anyhow::Result<Southbound>, guests: &[&Guest]) -> Self {
        let mut hv = Hypervisor::new().unwrap();
        let ovs = LocalOvs::start(&hv, CHASSIS).unwrap();
        let sb = sb(&hv).unwrap();
        let chassis = sb.add_chassis(CHASSIS).unwrap();
        let listener = hv.ns().run(|| TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
        let instances = guests
            .iter()
            .map(|g| NovaInstance {
                id: g.instance.clone(),
                project_id: g.project.clone(),
                name: format!("vm-{}", &g.instance[..8]),
            })
            .collect();
        let nova = NovaPeer::start(listener, SECRET, instances, None).unwrap();
        hv.ports_config = Some(format!(
            "source = \"ovn\"\novs = \"{}\"\novn_sb = \"{}\"\n",
            ovs.remote(),
            sb.remotes()
        ));
        hv.extra_config = format!(
            "\n[backend]\ntype = \"nova\"\nurl = \"http://{}\"\nshared_secret = \"{SECRET}\"\nconnect_timeout_s = 2\ntimeout_s = 5\n",
            nova.addr
        );
        Self { hv, ovs, sb, chassis, nova }
    }

    /// A network with its metadata localport (10.0.0.2); returns the
    /// datapath uuid.
    fn network(&self, key: u32) -> String {
        let datapath = self.sb.add_network(&uuid_like(), key).unwrap();
        let localport = Binding {
            port: &uuid_like(),
            datapath: &datapath,
            key: 1,
            mac_column: "fa:16:3e:00:00:02 10.0.0.2".into(),
            device_id: "ovnmeta-x",
            project_id: "admin",
        };
        self.sb
            .bind(&localport, &["type=localport", "external_ids:neutron\\:device_owner=network\\:distributed"])
            .unwrap();
        datapath
    }

    /// Plugs `vm` as `guest` (OVS) and binds it here (Southbound).
    fn plug(&self, vm: &Vm, guest: &Guest, datapath: &str, key: u32) -> String {
        self.ovs.plug(&vm.tap, &guest.port, &vm.mac, &guest.instance).unwrap();
        let binding = Binding {
            port: &guest.port,
            datapath,
            key,
            mac_column: format!("{} {}", vm.mac, vm.ip),
            device_id: &guest.instance,
            project_id: &guest.project,
        };
        self.sb.bind(&binding, &[&format!("chassis={}", self.chassis)]).unwrap()
    }
}

/// The instance uuid `vm` is served, if any.
fn served_uuid(vm: &Vm) -> Option<String> {
    let (status, body) = vm.http_get(METADATA, META).ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    json["uuid"].as_str().map(str::to_owned)
}

/// Waits until `vm` is served as `guest` (or, with `None`, is not served).
fn served_within(vm: &Vm, guest: Option<&Guest>, within: Duration) -> Duration {
    let started = Instant::now();
    let want = guest.map(|g| g.instance.clone());
    wait_for("the change to apply", within, || {
        (served_uuid(vm) == want).then_some(())
    })
    .unwrap();
    started.elapsed()
}

#[test]
fn two_vms_with_the_same_ip_on_different_networks_are_served_with_their_own_identity() {
    let (a, b) = (Guest::new(), Guest::new());
    let mut site = Site::new(Southbound::standalone, &[&a, &b]);
    let vm_a = site.hv.add_vm(SAME_IP).unwrap();
    let vm_b = site.hv.add_vm(SAME_IP).unwrap();
    let (net_a, net_b) = (site.network(10), site.network(11));
    site.plug(&vm_a, &a, &net_a, 2);
    site.plug(&vm_b, &b, &net_b, 2);
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
}
