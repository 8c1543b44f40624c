//! Real OVSDB servers for the OVN port source tests: the local
//! Open_vSwitch database and the OVN Southbound (standalone or a Raft
//! cluster), each an `ovsdb-server` process in the hypervisor's network
//! namespace (so every test has its own loopback and fixed ports are
//! unique), with files in the hypervisor's folder; stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};

use crate::{Hypervisor, Netns, wait_for};

const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const NB_CLIENT_PORT: u16 = 6631;
const SB_CLIENT_PORT: u16 = 6641;
const SB_RAFT_PORT: u16 = 6651;
const SB_SSL_PORT: u16 = 6645;

/// A CA and a certificate with its key that it signed (used by both ends).
#[derive(Debug, Clone)]
pub struct SslFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One `ovsdb-server` process; killed (and reaped) on drop.
#[derive(Debug)]
pub struct OvsdbServer {
    ns: String,
    dir: PathBuf,
    name: String,
    db: PathBuf,
    remote: String,
    /// Further `ovsdb-server` arguments (more remotes, SSL files).
    extra: Vec<String>,
    child: Option<Child>,
}

impl OvsdbServer {
    fn start(
        ns: &Netns,
        dir: &Path,
        name: &str,
        db: PathBuf,
        remote: &str,
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            ns: ns.name().to_owned(),
            dir: dir.to_owned(),
            name: name.to_owned(),
            db,
            remote: remote.to_owned(),
            extra: Vec::new(),
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// The control socket (`ovs-appctl -t`).
    pub fn ctl(&self) -> PathBuf {
        self.dir.join(format!("{}.ctl", self.name))
    }

    /// Starts the process (again).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "{} is running", self.name);
        let file = |ext: &str| self.dir.join(format!("{}.{ext}", self.name));
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "ovsdb-server"])
            .arg(&self.db)
            .arg(format!("--remote={}", self.remote))
            .arg(format!("--pidfile={}", file("pid").display()))
            .arg(format!("--unixctl={}", self.ctl().display()))
            .arg(format!("--log-file={}", file("log").display()))
            .arg("--no-chdir")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ovsdb-server")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for OvsdbServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tool(args: &[&str]) -> anyhow::Result<String> {
    crate::run("ovsdb-tool", args)
}

/// The local Open_vSwitch database with this host's system-id and br-int.
#[derive(Debug)]
pub struct LocalOvs {
    server: OvsdbServer,
    socket: PathBuf,
}

impl LocalOvs {
    pub fn start(hv: &Hypervisor, system_id: &str) -> anyhow::Result<Self> {
        let dir = hv.dir().to_owned();
        let db = dir.join("conf.db");
        tool(&["create", &db.display().to_string(), VSWITCH_SCHEMA])?;
        let socket = dir.join("ovs.sock");
        let remote = format!("punix:{}", socket.display());
        let server = OvsdbServer::start(hv.ns(), &dir, "ovs", db, &remote)?;
        let ovs = Self { server, socket };
        wait_for(
            "ovsdb-server (Open_vSwitch)",
            Duration::from_secs(10),
            || ovs.vsctl(&["--no-wait", "init"]).ok(),
        )?;
        let id = format!("external_ids:system-id={system_id}");
        ovs.vsctl(&["--no-wait", "set", "Open_vSwitch", ".", &id])?;
        ovs.vsctl(&["--no-wait", "add-br", "br-int"])?;
        Ok(ovs)
    }

    /// The daemon's `[ports] ovs`.
    pub fn remote(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub fn vsctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db={}", self.remote());
        let mut full = vec![db.as_str()];
        full.extend_from_slice(args);
        crate::run("ovs-vsctl", &full)
    }

    /// What os-vif does when Nova plugs a VM: the tap on br-int, its
    /// Interface row naming the Neutron port.
    pub fn plug(&self, tap: &str, iface_id: &str, mac: &str, vm: &str) -> anyhow::Result<()> {
        self.vsctl(&[
            "--no-wait",
            "add-port",
            "br-int",
            tap,
            "--",
            "set",
            "Interface",
            tap,
            &format!("external_ids:iface-id={iface_id}"),
            &format!("external_ids:attached-mac={mac}"),
            &format!("external_ids:vm-uuid={vm}"),
        ])
        .map(drop)
    }

    pub fn server(&mut self) -> &mut OvsdbServer {
        &mut self.server
    }
}

/// The OVN Southbound: one member, or a Raft cluster.
#[derive(Debug)]
pub struct Southbound {
    ns: String,
    pub members: Vec<OvsdbServer>,
}

impl Southbound {
    /// A standalone database on tcp:127.0.0.1:6641.
    pub fn standalone(hv: &Hypervisor) -> anyhow::Result<Self> {
        let db = hv.dir().join("sb.db");
        tool(&["create", &db.display().to_string(), SB_SCHEMA])?;
        let remote = format!("ptcp:{SB_CLIENT_PORT}:127.0.0.1");
        let member = OvsdbServer::start(hv.ns(), hv.dir(), "sb0", db, &remote)?;
        Self::ready(hv, vec![member])
    }

    /// A standalone database that also listens with SSL on
    /// ssl:127.0.0.1:6645 (server and client certificates from `ca`).
    pub fn standalone_ssl(hv: &Hypervisor, pki: &SslFiles) -> anyhow::Result<Self> {
        let db = hv.dir().join("sb.db");
        tool(&["create", &db.display().to_string(), SB_SCHEMA])?;
        let remote = format!("ptcp:{SB_CLIENT_PORT}:127.0.0.1");
        let mut member = OvsdbServer {
            ns: hv.ns().name().to_owned(),
            dir: hv.dir().to_owned(),
            name: "sb0".into(),
            db,
            remote,
            extra: vec![
                format!("--remote=pssl:{SB_SSL_PORT}:127.0.0.1"),
                format!("--private-key={}", pki.key.display()),
                format!("--certificate={}", pki.cert.display()),
                format!("--ca-cert={}", pki.ca.display()),
            ],
            child: None,
        };
        member.restart()?;
        Self::ready(hv, vec![member])
    }

    /// The SSL remote of [`Self::standalone_ssl`].
    pub fn ssl_remote() -> String {
        format!("ssl:127.0.0.1:{SB_SSL_PORT}")
    }

    /// A cluster of `size` members on tcp:127.0.0.1:6641.. (Raft on 6651..).
    pub fn cluster(hv: &Hypervisor, size: u16) -> anyhow::Result<Self> {
        let raft = |i: u16| format!("tcp:127.0.0.1:{}", SB_RAFT_PORT + i);
        let mut members = Vec::new();
        for i in 0..size {
            let db = hv.dir().join(format!("sb{i}.db"));
            let file = db.display().to_string();
            if i == 0 {
                tool(&["create-cluster", &file, SB_SCHEMA, &raft(0)])?;
            } else {
                tool(&["join-cluster", &file, "OVN_Southbound", &raft(i), &raft(0)])?;
            }
            let remote = format!("ptcp:{}:127.0.0.1", SB_CLIENT_PORT + i);
            members.push(OvsdbServer::start(
                hv.ns(),
                hv.dir(),
                &format!("sb{i}"),
                db,
                &remote,
            )?);
        }
        let sb = Self::ready(hv, members)?;
        for member in &sb.members {
            wait_for("the cluster to form", Duration::from_secs(30), || {
                let ctl = member.ctl().display().to_string();
                let status = crate::run(
                    "ovs-appctl",
                    &["-t", &ctl, "cluster/status", "OVN_Southbound"],
                )
                .ok()?;
                status.contains("Status: cluster member").then_some(())
            })?;
        }
        Ok(sb)
    }

    fn ready(hv: &Hypervisor, members: Vec<OvsdbServer>) -> anyhow::Result<Self> {
        let sb = Self {
            ns: hv.ns().name().to_owned(),
            members,
        };
        wait_for("the Southbound to answer", Duration::from_secs(20), || {
            sb.sbctl(&["show"]).ok()
        })?;
        Ok(sb)
    }

    /// The client remote of member `i`.
    pub fn remote(i: usize) -> String {
        format!("tcp:127.0.0.1:{}", usize::from(SB_CLIENT_PORT) + i)
    }

    /// Every member's client remote, comma-separated (the daemon's `ovn_sb`).
    pub fn remotes(&self) -> String {
        (0..self.members.len())
            .map(Self::remote)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `ovn-sbctl` against the members that are up.
    pub fn sbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let up: Vec<String> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .map(Self::remote)
            .collect();
        let db = format!("--db={}", up.join(","));
        let mut full = vec![
            "netns",
            "exec",
            self.ns.as_str(),
            "ovn-sbctl",
            "--timeout=10",
            db.as_str(),
        ];
        full.extend_from_slice(args);
        Ok(crate::run("ip", &full)?.trim().to_owned())
    }

    /// A chassis (what ovn-controller registers) with its tunnel
    /// endpoint `ip`; returns its uuid.
    pub fn add_chassis(&self, name: &str, ip: &str) -> anyhow::Result<String> {
        self.sbctl(&["chassis-add", name, "geneve", ip])?;
        self.sbctl(&[
            "--bare",
            "--columns=_uuid",
            "find",
            "Chassis",
            &format!("name={name}"),
        ])
    }

    /// A Neutron network's datapath; returns its uuid.
    pub fn add_network(&self, network: &str, key: u32) -> anyhow::Result<String> {
        self.sbctl(&[
            "create",
            "Datapath_Binding",
            &format!("tunnel_key={key}"),
            &format!("external_ids:name=neutron-{network}"),
        ])
    }

    /// A port binding; `extra` are further column settings. Returns its uuid.
    pub fn bind(&self, binding: &Binding<'_>, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec![
            "create".to_owned(),
            "Port_Binding".to_owned(),
            format!("logical_port={}", binding.port),
            format!("datapath={}", binding.datapath),
            format!("tunnel_key={}", binding.key),
            format!("mac=\"{}\"", binding.mac_column),
            format!("external_ids:neutron\\:device_id={}", binding.device_id),
            format!("external_ids:neutron\\:project_id={}", binding.project_id),
        ];
        args.extend(extra.iter().map(|e| (*e).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.sbctl(&args)
    }
}

/// The OVN Northbound written as neutron's ML2/OVN driver writes it, and a
/// real `ovn-northd` computing the Southbound from it; both stopped on
/// drop. Bindings are claimed as ovn-controller claims them (the chassis
/// column), since there is no ovn-controller here.
#[derive(Debug)]
pub struct Northbound {
    ns: String,
    server: OvsdbServer,
    northd: Option<Child>,
    /// Each network's DHCP_Options row, which its ports point at.
    dhcp: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// A Neutron port as the ML2/OVN driver writes its Logical_Switch_Port.
#[derive(Debug, Clone)]
pub struct NeutronPort<'a> {
    pub id: &'a str,
    /// The network's id (the switch is `neutron-<id>`).
    pub network: &'a str,
    /// Address entries: "MAC IP ..." for the port, "MAC" or "MAC IP" for
    /// each allowed-address-pair with a MAC of its own.
    pub addresses: Vec<String>,
    pub device_id: &'a str,
    pub device_owner: &'a str,
    pub project_id: &'a str,
    /// The host name for options:requested-chassis.
    pub host: &'a str,
}

impl Northbound {
    /// A Northbound database on tcp:127.0.0.1:6631 and ovn-northd between
    /// it and `sb`.
    pub fn start(hv: &Hypervisor, sb: &Southbound) -> anyhow::Result<Self> {
        let db = hv.dir().join("nb.db");
        tool(&["create", &db.display().to_string(), NB_SCHEMA])?;
        let remote = format!("ptcp:{NB_CLIENT_PORT}:127.0.0.1");
        let server = OvsdbServer::start(hv.ns(), hv.dir(), "nb", db, &remote)?;
        let file = |ext: &str| hv.dir().join(format!("northd.{ext}"));
        let northd = std::process::Command::new("ip")
            .args(["netns", "exec", hv.ns().name(), "ovn-northd"])
            .arg(format!("--ovnnb-db={}", Self::remote()))
            .arg(format!("--ovnsb-db={}", sb.remotes()))
            .arg(format!("--pidfile={}", file("pid").display()))
            .arg(format!("--unixctl={}", file("ctl").display()))
            .arg(format!("--log-file={}", file("log").display()))
            .arg("--no-chdir")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ovn-northd")?;
        let nb = Self {
            ns: hv.ns().name().to_owned(),
            server,
            northd: Some(northd),
            dhcp: std::sync::Mutex::default(),
        };
        wait_for("the Northbound to answer", Duration::from_secs(20), || {
            nb.nbctl(&["show"]).ok()
        })?;
        Ok(nb)
    }

    pub fn remote() -> String {
        format!("tcp:127.0.0.1:{NB_CLIENT_PORT}")
    }

    pub fn nbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db={}", Self::remote());
        let mut full = vec![
            "netns",
            "exec",
            self.ns.as_str(),
            "ovn-nbctl",
            "--timeout=10",
        ];
        full.push(db.as_str());
        full.extend_from_slice(args);
        Ok(crate::run("ip", &full)?.trim().to_owned())
    }

    /// A Neutron network with a /24 `cidr` ("10.0.0"): its Logical_Switch,
    /// its metadata localport at .2 (device_owner network:distributed, as
    /// the metadata namespace's port) and DHCP_Options with the classless
    /// route to 169.254.169.254 through it. Returns the network id.
    pub fn add_network(&self, cidr: &str, host: &str) -> anyhow::Result<String> {
        let network = crate::uuid_like();
        let switch = format!("neutron-{network}");
        self.nbctl(&[
            "ls-add",
            &switch,
            "--",
            "set",
            "Logical_Switch",
            &switch,
            &format!("external_ids:neutron\\:network_name=net-{}", &network[..8]),
        ])?;
        let metadata = NeutronPort {
            id: &crate::uuid_like(),
            network: &network,
            addresses: vec![format!("fa:16:3e:00:00:02 {cidr}.2")],
            device_id: &format!("ovnmeta-{network}"),
            device_owner: "network:distributed",
            project_id: "admin",
            host,
        };
        self.add_port(&metadata)?;
        self.nbctl(&["lsp-set-type", metadata.id, "localport"])?;
        // As the driver writes a subnet's options (the classless route
        // sends 169.254.169.254 to the metadata port).
        let route = format!("{{169.254.169.254/32,{cidr}.2, 0.0.0.0/0,{cidr}.1}}");
        let options = self.nbctl(&[
            "create",
            "DHCP_Options",
            &format!("cidr=\"{cidr}.0/24\""),
            &format!("external_ids:subnet_id={}", crate::uuid_like()),
            "options:lease_time=43200",
            "options:mtu=1442",
            &format!("options:router={cidr}.1"),
            &format!("options:server_id={cidr}.1"),
            "options:server_mac=\"fa:16:3e:00:00:01\"",
            &format!("options:classless_static_route=\"{route}\""),
        ])?;
        self.dhcp
            .lock()
            .expect("not poisoned")
            .insert(network.clone(), options);
        Ok(network)
    }

    /// A port as the driver writes it: addresses, port_security, the
    /// neutron:* external_ids and options:requested-chassis.
    pub fn add_port(&self, port: &NeutronPort<'_>) -> anyhow::Result<()> {
        let switch = format!("neutron-{}", port.network);
        let mut args: Vec<String> = vec!["lsp-add".into(), switch, port.id.into()];
        args.extend(["--", "lsp-set-addresses", port.id].map(String::from));
        args.extend(port.addresses.iter().cloned());
        args.extend(["--", "lsp-set-port-security", port.id].map(String::from));
        args.extend(port.addresses.iter().cloned());
        args.extend(["--", "set", "Logical_Switch_Port", port.id].map(String::from));
        args.push(format!(
            "external_ids:neutron\\:device_id={}",
            port.device_id
        ));
        args.push(format!(
            "external_ids:\"neutron:device_owner\"=\"{}\"",
            port.device_owner
        ));
        args.push(format!(
            "external_ids:neutron\\:project_id={}",
            port.project_id
        ));
        args.push(format!(
            "external_ids:neutron\\:network_name=neutron-{}",
            port.network
        ));
        args.push(format!("options:requested-chassis={}", port.host));
        let dhcp = self
            .dhcp
            .lock()
            .expect("not poisoned")
            .get(port.network)
            .cloned();
        if let Some(options) = dhcp {
            args.push(format!("dhcpv4_options={options}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nbctl(&args).map(drop)
    }

    /// Waits for northd to write `port`'s Port_Binding, then claims it for
    /// `chassis` as ovn-controller does. Returns the binding's uuid.
    pub fn claim(&self, sb: &Southbound, port: &str, chassis: &str) -> anyhow::Result<String> {
        let binding = wait_for(
            "northd to write the binding",
            Duration::from_secs(20),
            || {
                sb.sbctl(&[
                    "--bare",
                    "--columns=_uuid",
                    "find",
                    "Port_Binding",
                    &format!("logical_port={port}"),
                ])
                .ok()
                .filter(|uuid| !uuid.is_empty())
            },
        )?;
        sb.sbctl(&[
            "set",
            "Port_Binding",
            &binding,
            &format!("chassis={chassis}"),
        ])?;
        Ok(binding)
    }

    pub fn server(&mut self) -> &mut OvsdbServer {
        &mut self.server
    }
}

impl Drop for Northbound {
    fn drop(&mut self) {
        if let Some(mut child) = self.northd.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// The columns of a Port_Binding row a test creates.
#[derive(Debug, Clone)]
pub struct Binding<'a> {
    pub port: &'a str,
    pub datapath: &'a str,
    pub key: u32,
    /// "MAC IP ...".
    pub mac_column: String,
    pub device_id: &'a str,
    pub project_id: &'a str,
}
