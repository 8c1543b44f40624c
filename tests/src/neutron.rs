//! The path Neutron builds today, for the agent-mode tests and the
//! benchmark's baseline: per network a namespace (like qdhcp-<net>) holding
//! the network's port with 169.254.169.254 and a real haproxy (Debian's
//! 2.6) with the configuration neutron-metadata-agent generates
//! (neutron/agent/metadata/driver.py), forwarding to a unix socket.

use std::{
    fs,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::{Netns, Vm, unique_suffix};

/// haproxy.cfg as neutron-metadata-agent writes it for a network.
pub fn haproxy_config(network_id: &str, socket: &Path, pidfile: &Path) -> String {
    format!(
        "global
    log-tag     haproxy-metadata-proxy-{network_id}
    user        root
    group       root
    maxconn     1024
    pidfile     {pidfile}
    nbthread    2

defaults
    mode                    http
    option                  http-server-close
    option                  forwardfor
    retries                 3
    timeout http-request    30s
    timeout connect         30s
    timeout client          32s
    timeout server          32s
    timeout http-keep-alive 30s

listen listener
    bind 169.254.169.254:80
    server metadata {socket}
    http-request del-header X-Neutron-Router-ID
    http-request set-header X-Neutron-Network-ID {network_id}
",
        pidfile = pidfile.display(),
        socket = socket.display(),
    )
}

/// One network the Neutron way: its namespace, port and haproxy.
#[derive(Debug)]
pub struct NeutronNetwork {
    haproxy: Child,
    pub ns: Netns,
    /// haproxy's folder, removed after haproxy (declared before it).
    _dir: tempfile::TempDir,
}

impl NeutronNetwork {
    /// Wires `vm` (its eth0 must not exist yet: pass a VM made with
    /// [`Vm::bare`]) to a new network namespace with port 10.0.0.2 and
    /// 169.254.169.254, routes the VM's metadata traffic there, and starts
    /// haproxy forwarding to `socket`.
    pub fn new(vm: &Vm, network_id: &str, socket: &Path) -> anyhow::Result<Self> {
        let ns = Self::wire(vm)?;
        let dir = crate::temp_folder(&format!("mdr-qd-{}", ns.name()))?;
        let cfg = dir.path().join("haproxy.cfg");
        fs::write(
            &cfg,
            haproxy_config(network_id, socket, &dir.path().join("haproxy.pid")),
        )?;
        Self::start(ns, dir, &cfg)
    }

    /// Like [`NeutronNetwork::new`], with a haproxy configuration written
    /// by someone else (neutron's own `HaproxyConfigurator`): it must bind
    /// 169.254.169.254:80.
    pub fn with_config(vm: &Vm, config: &Path) -> anyhow::Result<Self> {
        let ns = Self::wire(vm)?;
        let dir = crate::temp_folder(&format!("mdr-qd-{}", ns.name()))?;
        Self::start(ns, dir, config)
    }

    /// The network's namespace, with its port and the VM's route to it.
    fn wire(vm: &Vm) -> anyhow::Result<Netns> {
        let ns = Netns::new("mdr-qd")?;
        let port = format!("qd{}", unique_suffix());
        crate::veth_pair(&ns, &port, &vm.ns)?;
        ns.ip(&["addr", "add", "10.0.0.2/24", "dev", &port])?;
        ns.ip(&["addr", "add", "169.254.169.254/32", "dev", &port])?;
        ns.ip(&["link", "set", &port, "up"])?;
        vm.ns
            .ip(&["link", "set", "eth0", "address", &vm.mac, "up"])?;
        vm.ns
            .ip(&["addr", "add", &format!("{}/24", vm.ip), "dev", "eth0"])?;
        vm.ns
            .ip(&["route", "add", "169.254.169.254/32", "via", "10.0.0.2"])?;
        Ok(ns)
    }

    /// Starts haproxy in the foreground (`-db`, whatever the file says).
    fn start(ns: Netns, dir: tempfile::TempDir, config: &Path) -> anyhow::Result<Self> {
        let haproxy = Command::new("ip")
            .args(["netns", "exec", ns.name(), "haproxy", "-db", "-f"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting haproxy")?;
        let network = Self {
            haproxy,
            ns,
            _dir: dir,
        };
        network.wait_listening()?;
        Ok(network)
    }

    /// The haproxy's pid.
    pub fn haproxy_pid(&self) -> u32 {
        self.haproxy.id()
    }

    fn wait_listening(&self) -> anyhow::Result<()> {
        let addr = std::net::SocketAddr::from((Ipv4Addr::new(169, 254, 169, 254), 80));
        crate::wait_for("haproxy to listen", Duration::from_secs(10), || {
            self.ns
                .run(move || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                })
                .ok()
                .filter(|ok| *ok)
        })?;
        Ok(())
    }
}

impl Drop for NeutronNetwork {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
    }
}
