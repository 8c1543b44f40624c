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
