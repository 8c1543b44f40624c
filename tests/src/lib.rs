//! Test harness: a hypervisor and its VMs as real network namespaces.
//!
//! - [`Hypervisor`]: a network namespace standing in for the host, where
//!   the taps, bridges and the host device live and where the daemon runs
//!   (entered with `nsenter --net`, so bpffs stays the machine's own).
//! - [`Vm`]: a network namespace whose `eth0` is one end of a veth pair; the
//!   other end, in the hypervisor, is the VM's tap.
//!
//! Every name is unique per process and call, and every object removes
//! what it created when dropped, also when a test panics, so tests run in
//! parallel and leave nothing behind.
//!
//! The demo (`cargo xtask demo`) uses the same harness.

pub mod neutron;
pub mod nova_peer;
pub mod ovn;
pub mod packet;
pub mod soak;

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};

/// A suffix no other live object of any test process has.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}_{}", base36(std::process::id()), base36(n))
}

/// Removes what test or demo processes that no longer run left behind
/// (killed with SIGKILL, say): namespaces, pins and temporary folders
/// whose names carry a dead process id. Returns what was removed.
pub fn sweep_stale() -> Vec<String> {
    let alive = |suffix: &str| {
        let pid = suffix
            .split('_')
            .next()
            .and_then(|p| u32::from_str_radix(p, 36).ok());
        pid.is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut removed = Vec::new();
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    for line in namespaces.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(suffix) = [
            "mdr-hv-",
            "mdr-vm-",
            "mdr-gw-",
            "mdr-qd-",
            "mdr-dhcp-",
            "mdr-lim-",
        ]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix)) else {
            continue;
        };
        if alive(suffix) {
            continue;
        }
        // What still runs in it (a haproxy, an nginx, a daemon) would keep
        // the namespace alive after `netns del`.
        for pid in ip(&["netns", "pids", name])
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: signalling a process by pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                removed.push(format!("process {pid} in netns {name}"));
            }
        }
        if name.starts_with("mdr-hv-") {
            let config =
                std::env::temp_dir().join(format!("mdr-test-{suffix}/metadata-redirector.toml"));
            if let (true, Ok(binary)) = (config.exists(), daemon_binary()) {
                let _ = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{name}"))
                    .arg(binary)
                    .args(["teardown", "--config"])
                    .arg(&config)
                    .output();
            }
        }
        if ip(&["netns", "del", name]).is_ok() {
            removed.push(format!("netns {name}"));
        }
    }
    for folder in [PathBuf::from("/sys/fs/bpf"), std::env::temp_dir()] {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Test, neutron-network and nginx folders carry a test suffix;
            // the fuzz body's state folder its (decimal) process id.
            let stale = ["mdr-test-", "mdr-qd-mdr-qd-", "mdr-www-mdr-lim-"]
                .iter()
                .find_map(|prefix| name.strip_prefix(prefix))
                .map(|suffix| !alive(suffix))
                .or_else(|| {
                    let pid = name.strip_prefix("mdr-fuzz-")?;
                    Some(!Path::new(&format!("/proc/{pid}")).exists())
                })
                .unwrap_or(false);
            if stale && fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path().display().to_string());
            }
        }
    }
    removed
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII")
}

/// Runs a command to completion; fails with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    ensure!(
        output.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}-{}", unique_suffix());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program ARGS` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `f` on a thread that has entered this namespace (only that
    /// thread; the test's other threads stay where they are).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter_netns(&self.name)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("thread in {} panicked", self.name))?
        })
    }
}

/// Moves the calling thread (only it, and threads it starts later) into
/// the network namespace `name`.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A veth pair: `host_end` in `host`, `eth0` in `guest`.
pub fn veth_pair(host: &Netns, host_end: &str, guest: &Netns) -> anyhow::Result<()> {
    host.ip(&[
        "link",
        "add",
        host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        guest.name(),
    ])?;
    Ok(())
}

/// A port record of the instances file.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub device: String,
    pub mac: String,
    pub network_id: String,
    pub ips: Vec<String>,
}

/// An instance record of the instances file.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub user_data: Option<String>,
    pub public_key: Option<String>,
    pub ports: Vec<PortSpec>,
    /// `metadata_tokens` ("optional", "required", "disabled").
    pub tokens: Option<String>,
}

impl InstanceSpec {
    /// An instance with one port on `vm`'s tap.
    pub fn for_vm(vm: &Vm, name: &str) -> Self {
        Self {
            id: uuid_like(),
            project_id: "demo-project".into(),
            name: name.into(),
            user_data: None,
            public_key: Some(format!(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} {name}@demo"
            )),
            ports: vec![PortSpec {
                device: vm.tap.clone(),
                mac: vm.mac.clone(),
                network_id: format!("net-{}", vm.tap),
                ips: vec![vm.ip.to_string()],
            }],
            tokens: None,
        }
    }

    fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "[[instance]]");
        let _ = writeln!(out, "id = {}", quote(&self.id));
        let _ = writeln!(out, "project_id = {}", quote(&self.project_id));
        let _ = writeln!(out, "name = {}", quote(&self.name));
        if let Some(data) = &self.user_data {
            let _ = writeln!(out, "user_data = {}", quote(data));
        }
        if let Some(key) = &self.public_key {
            let _ = writeln!(out, "public_keys = {{ default = {} }}", quote(key));
        }
        if let Some(mode) = &self.tokens {
            let _ = writeln!(out, "metadata_tokens = {}", quote(mode));
        }
        for port in &self.ports {
            let _ = writeln!(out, "\n[[instance.port]]");
            let _ = writeln!(out, "device = {}", quote(&port.device));
            let _ = writeln!(out, "mac = {}", quote(&port.mac));
            let _ = writeln!(out, "network_id = {}", quote(&port.network_id));
            let ips: Vec<String> = port.ips.iter().map(|ip| quote(ip)).collect();
            let _ = writeln!(out, "ips = [{}]", ips.join(", "));
        }
        out.push('\n');
        out
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A random version-4 UUID string.
pub fn uuid_like() -> String {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Where the daemon binary is: `METADATA_REDIRECTOR_BIN`, or the release build.
pub fn daemon_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("METADATA_REDIRECTOR_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/metadata-redirector"),
    };
    ensure!(
        path.exists(),
        "{} does not exist: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    Ok(path)
}

/// A host with its own network namespace, config files and daemon.
#[derive(Debug)]
pub struct Hypervisor {
    ns: Netns,
    dir: PathBuf,
    bpffs: PathBuf,
    daemon: Option<Child>,
    instances: Vec<InstanceSpec>,
    /// The sockets handed to the daemon as systemd would (socket activation).
    activated: Vec<std::net::TcpListener>,
    /// Extra TOML appended to the generated config.
    pub extra_config: String,
    /// The `[ports]` section; the instances file when `None`.
    pub ports_config: Option<String>,
    /// More `[datapath]` keys.
    pub datapath_config: String,
    /// More arguments for `run` (after `--config FILE`).
    pub run_args: Vec<String>,
    /// More environment for the daemon (NOTIFY_SOCKET, ...).
    pub daemon_env: Vec<(String, String)>,
    /// How long `start_daemon` waits for "ready" (attaching thousands of
    /// taps takes about 10 ms each).
    pub ready_timeout: Duration,
    /// Capabilities the daemon keeps (`setpriv --bounding-set`), if limited.
    pub capabilities: Option<Vec<&'static str>>,
}

impl Hypervisor {
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::new("mdr-hv")?;
        let suffix = ns.name().trim_start_matches("mdr-hv-").to_owned();
        let dir = std::env::temp_dir().join(format!("mdr-test-{suffix}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            ns,
            dir,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/mdr-test-{suffix}")),
            daemon: None,
            instances: Vec::new(),
            activated: Vec::new(),
            capabilities: None,
            extra_config: String::new(),
            ports_config: None,
            datapath_config: String::new(),
            run_args: Vec::new(),
            daemon_env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        })
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// This hypervisor's folder for files (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("metadata-redirector.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// Creates a VM: a namespace whose eth0 is wired to a new tap here,
    /// with `ip/24` and a route to 169.254.169.254 on-link.
    pub fn add_vm(&self, ip: Ipv4Addr) -> anyhow::Result<Vm> {
        self.add_vm_with_mac(ip, &random_mac())
    }

    /// Like [`Self::add_vm`], with a given MAC (and so a given IPv6
    /// link-local address).
    pub fn add_vm_with_mac(&self, ip: Ipv4Addr, mac: &str) -> anyhow::Result<Vm> {
        let ns = Netns::new("mdr-vm")?;
        // Addresses usable at once: no duplicate address detection.
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ],
        )?;
        let suffix = ns.name().trim_start_matches("mdr-vm-").to_owned();
        let tap = format!("tap{suffix}");
        let mac = mac.to_owned();
        veth_pair(&self.ns, &tap, &ns)?;
        ns.ip(&["link", "set", "eth0", "address", &mac, "up"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        self.ns.ip(&["link", "set", &tap, "up"])?;
        let vm = Vm { ns, tap, mac, ip };
        vm.ns
            .ip(&["route", "add", "169.254.169.254/32", "dev", "eth0"])?;
        Ok(vm)
    }

    /// Deletes `vm`'s tap (its eth0 goes with it), like a VM shut down.
    pub fn unplug(&self, vm: &Vm) -> anyhow::Result<()> {
        self.ns.ip(&["link", "del", &vm.tap])?;
        Ok(())
    }

    /// Re-creates `vm`'s tap under the same name (a new ifindex) and its
    /// eth0 with the same MAC, address and route, like a VM restarted.
    pub fn replug(&self, vm: &Vm) -> anyhow::Result<()> {
        veth_pair(&self.ns, &vm.tap, &vm.ns)?;
        vm.ns
            .ip(&["link", "set", "eth0", "address", &vm.mac, "up"])?;
        vm.ns
            .ip(&["addr", "add", &format!("{}/24", vm.ip), "dev", "eth0"])?;
        vm.ns
            .ip(&["route", "add", "169.254.169.254/32", "dev", "eth0"])?;
        self.ns.ip(&["link", "set", &vm.tap, "up"])?;
        Ok(())
    }

    /// The ifindex of a device here.
    pub fn ifindex_of(&self, device: &str) -> anyhow::Result<u32> {
        let json = self.ns.ip(&["-json", "link", "show", "dev", device])?;
        let links: serde_json::Value = serde_json::from_str(&json)?;
        links[0]["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .context("no ifindex")
    }

    /// A VM namespace with no network yet (for [`neutron::NeutronNetwork`]).
    pub fn bare_vm(&self, ip: Ipv4Addr) -> anyhow::Result<Vm> {
        let ns = Netns::new("mdr-vm")?;
        let suffix = ns.name().trim_start_matches("mdr-vm-").to_owned();
        Ok(Vm {
            ns,
            tap: format!("tap{suffix}"),
            mac: random_mac(),
            ip,
        })
    }

    /// A router namespace on `bridge`: 10.0.0.1/24, with 169.254.169.254 on
    /// its loopback so that any metadata traffic the datapath does not
    /// steer can be seen arriving there.
    pub fn add_gateway(&self, bridge: &str) -> anyhow::Result<Gateway> {
        let ns = Netns::new("mdr-gw")?;
        let port = format!("gw{}", unique_suffix());
        veth_pair(&self.ns, &port, &ns)?;
        self.plug(&port, bridge)?;
        self.ns.ip(&["link", "set", &port, "up"])?;
        ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "eth0"])?;
        ns.ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let json = ns.ip(&["-json", "link", "show", "dev", "eth0"])?;
        let links: serde_json::Value = serde_json::from_str(&json)?;
        let mac = links[0]["address"].as_str().unwrap_or_default().to_owned();
        Ok(Gateway { ns, mac })
    }

    /// Creates a Linux bridge here, up.
    pub fn add_bridge(&self) -> anyhow::Result<String> {
        let name = format!("br{}", unique_suffix());
        self.ns.ip(&["link", "add", &name, "type", "bridge"])?;
        self.ns.ip(&["link", "set", &name, "up"])?;
        Ok(name)
    }

    /// Enslaves `device` to `bridge`.
    pub fn plug(&self, device: &str, bridge: &str) -> anyhow::Result<()> {
        self.ns.ip(&["link", "set", device, "master", bridge])?;
        Ok(())
    }

    /// The instances file.
    pub fn instances_path(&self) -> PathBuf {
        self.dir.join("instances.toml")
    }

    /// Sets the instance records the daemon serves (written on start, or
    /// now with a reload if the daemon runs).
    pub fn set_instances(&mut self, instances: Vec<InstanceSpec>) -> anyhow::Result<()> {
        self.instances = instances;
        self.write_files()
    }

    /// Writes the config and instances files (as `start_daemon` does), for
    /// tests that run the binary themselves.
    pub fn write_files(&self) -> anyhow::Result<()> {
        let instances: String = self.instances.iter().map(InstanceSpec::to_toml).collect();
        let path = self.instances_path();
        // Written whole and renamed, so the daemon never reads half a file.
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, instances).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        let config = format!(
            "[daemon]\nstate_dir = {}\n\n[datapath]\nbpffs = {}\n{}\n[ports]\n{}\n{}",
            quote(&self.dir.join("state").display().to_string()),
            quote(&self.bpffs.display().to_string()),
            self.datapath_config,
            self.ports_config
                .as_deref()
                .unwrap_or("file = \"instances.toml\""),
            self.extra_config
        );
        let path = self.config_path();
        fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
    }

    /// From now on, start the daemon with a listening socket on
    /// 169.254.169.254:80 that this harness holds across restarts, passed
    /// as systemd passes it (fd 3, LISTEN_FDS, LISTEN_PID).
    pub fn use_socket_activation(&mut self) -> anyhow::Result<()> {
        let v4: SocketAddr = "169.254.169.254:80".parse()?;
        let v6: SocketAddr = "[fd00:a9fe:6464::ffff:fffe]:80".parse()?;
        let listeners = self
            .ns
            .run(move || -> anyhow::Result<Vec<std::net::TcpListener>> {
                Ok(vec![freebind_listener(v4)?, freebind_listener(v6)?])
            })??;
        self.activated = listeners;
        Ok(())
    }

    /// Starts the daemon here and waits until it prints `ready`.
    pub fn start_daemon(&mut self) -> anyhow::Result<()> {
        ensure!(self.daemon.is_none(), "daemon already running");
        self.write_files()?;
        let binary = daemon_binary()?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the daemon log")?;
        let mut command = Command::new("sh");
        // `exec` keeps the pid through sh and nsenter, so LISTEN_PID names
        // the daemon itself, as systemd's does.
        command
            .args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.ns.name()));
        if let Some(caps) = &self.capabilities {
            let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
            command.args([
                "setpriv".to_owned(),
                format!("--bounding-set=-all{set}"),
                format!("--inh-caps=-all{set}"),
                format!("--ambient-caps=-all{set}"),
                "--".to_owned(),
            ]);
        }
        command
            .arg(&binary)
            .args(["run", "--config"])
            .arg(self.config_path())
            .args(&self.run_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("LISTEN_FDS")
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if !self.activated.is_empty() {
            let fds: Vec<i32> = self
                .activated
                .iter()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .collect();
            command.env("LISTEN_FDS", fds.len().to_string());
            // SAFETY: only dup2 runs in the child, which is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    // Out of the way first, so no target clobbers a source.
                    for (i, fd) in fds.iter().enumerate() {
                        if libc::dup2(*fd, 100 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for i in 0..fds.len() {
                        if libc::dup2(100 + i as i32, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.daemon = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(self.ready_timeout) {
            Ok(()) => Ok(()),
            Err(_) => {
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                bail!(
                    "daemon did not become ready within {:?}; its log:\n{log}",
                    self.ready_timeout
                )
            }
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 10 s).
    pub fn stop_daemon(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.daemon.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id()).context("pid")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("daemon ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL: no drain, no cleanup of its own.
    pub fn kill_daemon(&mut self) -> anyhow::Result<()> {
        let mut child = self.daemon.take().context("daemon not running")?;
        child.kill().context("killing the daemon")?;
        child.wait().context("reaping the daemon")?;
        Ok(())
    }

    /// The daemon's pid, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Sends SIGHUP to the daemon (reload the instances file).
    pub fn reload(&mut self) -> anyhow::Result<()> {
        self.write_files()?;
        let child = self.daemon.as_ref().context("daemon not running")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(child.id())?, libc::SIGHUP) };
        Ok(())
    }

    /// Runs a daemon subcommand (status, teardown) in this namespace.
    pub fn daemon_command(&self, args: &[&str]) -> anyhow::Result<String> {
        let binary = daemon_binary()?;
        let config = self.config_path();
        let mut full = vec![
            format!("--net=/run/netns/{}", self.ns.name()),
            binary.display().to_string(),
        ];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        full.push("--config".into());
        full.push(config.display().to_string());
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        run("nsenter", &full)
    }

    /// `metadata-redirector status --json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let text = self.daemon_command(&["status", "--json"])?;
        serde_json::from_str(&text).with_context(|| format!("status output: {text}"))
    }

    /// The counters of `tap` from `status --json`.
    pub fn counters(&self, tap: &str) -> anyhow::Result<serde_json::Value> {
        let status = self.status()?;
        status["taps"]
            .as_array()
            .and_then(|taps| taps.iter().find(|t| t["device"] == tap))
            .map(|tap| tap["counters"].clone())
            .with_context(|| format!("{tap} not in status: {status}"))
    }

    /// The MAC address of a device in this namespace.
    pub fn mac_of(&self, device: &str) -> anyhow::Result<String> {
        let json = self.ns.ip(&["-json", "link", "show", "dev", device])?;
        let links: serde_json::Value = serde_json::from_str(&json)?;
        links[0]["address"]
            .as_str()
            .map(str::to_owned)
            .context("no address")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        let _ = self.stop_daemon();
        if self.config_path().exists() {
            let _ = self.daemon_command(&["teardown"]);
        }
        // In case teardown could not run: nothing may stay pinned.
        let _ = fs::remove_dir_all(&self.bpffs);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A router namespace on a tenant bridge (see [`Hypervisor::add_gateway`]).
#[derive(Debug)]
pub struct Gateway {
    pub ns: Netns,
    pub mac: String,
}

/// A VM: a namespace with eth0 wired to a tap in the hypervisor.
#[derive(Debug)]
pub struct Vm {
    pub ns: Netns,
    pub tap: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// What cloud-init's OpenStack reader returned, reduced to what tests check.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CloudInitView {
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    pub public_keys: serde_json::Value,
    pub userdata: Option<String>,
}

const READ_OPENSTACK: &str = r#"
import json, sys
from cloudinit.sources.DataSourceOpenStack import read_metadata_service
r = read_metadata_service(sys.argv[1], timeout=10, retries=2)
md = r["metadata"]
ud = r.get("userdata")
if isinstance(ud, bytes):
    ud = ud.decode()
print(json.dumps({"uuid": md["uuid"], "name": md.get("name"), "hostname": md.get("hostname"),
                  "public_keys": md.get("public_keys"), "userdata": ud or None}))
"#;

impl Vm {
    /// Reads the metadata service with cloud-init's own OpenStack reader
    /// (Debian's cloud-init under /usr/bin/python3).
    pub fn cloud_init_openstack(&self, base_url: &str) -> anyhow::Result<CloudInitView> {
        let out = self
            .ns
            .exec("/usr/bin/python3", &["-c", READ_OPENSTACK, base_url])
            .context("cloud-init's read_metadata_service")?;
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("cloud-init reader printed {out:?}"))
    }

    /// Routes everything, 169.254.169.254 included, via 10.0.0.1 instead of
    /// resolving the metadata address on-link.
    pub fn route_via_gateway(&self) -> anyhow::Result<()> {
        self.ns.ip(&["route", "del", "169.254.169.254/32"])?;
        self.ns
            .ip(&["route", "add", "default", "via", "10.0.0.1"])?;
        Ok(())
    }

    /// The EUI-64 link-local address of eth0.
    pub fn link_local(&self) -> std::net::Ipv6Addr {
        let b: Vec<u8> = self
            .mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
            .collect();
        std::net::Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            b[0] ^ 2,
            b[1],
            b[2],
            0xff,
            0xfe,
            b[3],
            b[4],
            b[5],
        ])
    }

    /// An HTTP/1.1 GET from inside the VM, with a deadline.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.http_get_from(None, addr, path)
    }

    /// Any request from inside the VM: method, path, extra header lines
    /// ("Name: value") and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let (method, path) = (method.to_owned(), path.to_owned());
        let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        let body = body.to_vec();
        self.ns.run(move || {
            let timeout = Duration::from_secs(10);
            let mut stream = TcpStream::connect_timeout(&METADATA, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            for header in &headers {
                request.push_str(header);
                request.push_str("\r\n");
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes())?;
            stream.write_all(&body)?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response)?;
            parse_response(&response)
        })?
    }

    /// Like [`Self::http_get`], from a given local address.
    pub fn http_get_from(
        &self,
        from: Option<Ipv4Addr>,
        addr: SocketAddr,
        path: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.ns
            .run(|| http_get(from, addr, path, Duration::from_secs(5)))?
    }
}

/// A listening socket bound with IP_FREEBIND (the address need not exist
/// yet), as systemd's `FreeBind=true` makes it.
fn freebind_listener(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let (domain, level, option) = match addr {
        SocketAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_IP, libc::IP_FREEBIND),
        SocketAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND),
    };
    // SAFETY: plain socket syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let listener = <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, level, option, (&raw const one).cast(), 4);
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            4,
        );
        let rc = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd,
                    (&raw const sin).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as u16,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                libc::bind(
                    fd,
                    (&raw const sin6).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        };
        ensure!(rc == 0, "bind {addr}: {}", std::io::Error::last_os_error());
        ensure!(
            libc::listen(fd, 1024) == 0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        Ok(listener)
    }
}

/// A minimal HTTP/1.1 client: one request, `Connection: close`.
pub fn http_get(
    from: Option<Ipv4Addr>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = match from {
        None => TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?,
        Some(local) => connect_from(local, addr, timeout)?,
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the response to GET {path}"))?;
    parse_response(&response)
}

fn connect_from(local: Ipv4Addr, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    // std cannot bind before connect: do it with libc, then hand over.
    // SAFETY: plain socket syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(local.octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        ensure!(rc == 0, "bind {local}: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let SocketAddr::V4(v4) = addr else {
            bail!("IPv4 only");
        };
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        ensure!(
            rc == 0,
            "connect {addr} from {local}: {}",
            std::io::Error::last_os_error()
        );
        Ok(stream)
    }
}

/// Splits a raw HTTP/1.1 response into status and body (plain or chunked).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = std::str::from_utf8(&raw[..split]).context("non-UTF-8 headers")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let body = raw[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((status, body));
    }
    let mut out = Vec::new();
    let mut rest = &body[..];
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end])?.trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        out.extend_from_slice(rest.get(..size).context("short chunk")?);
        rest = rest.get(size + 2..).context("chunk end")?;
    }
}

/// A locally administered unicast MAC.
pub fn random_mac() -> String {
    let mut bytes = [0u8; 5];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2]
    )
}

/// The metadata service as a guest addresses it.
pub const METADATA: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    Ipv4Addr::new(169, 254, 169, 254),
    80,
));

/// An AF_PACKET socket on one device of a namespace: sends whole frames a
/// guest crafts and captures every frame the device receives.
#[derive(Debug)]
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens the socket on `device` of the namespace the calling thread is
    /// in (use it inside [`Netns::run`]); it keeps capturing wherever it
    /// is read from.
    pub fn open(device: &str) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        let name = std::ffi::CString::new(device)?;
        // SAFETY: if_nametoindex reads a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        ensure!(ifindex > 0, "no device {device}");
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        };
        ensure!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let socket = Self { fd, ifindex };
        let addr = socket.address(all);
        // SAFETY: binding our socket to a sockaddr_ll we own.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "binding to {device}: {}",
            std::io::Error::last_os_error()
        );
        Ok(socket)
    }

    fn address(&self, protocol: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr
    }

    /// Sends one whole Ethernet frame out of the device.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        let addr = self.address(0);
        // SAFETY: sendto with a buffer and an address we own.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            sent == frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Every frame received since the last call (or since it was opened).
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: recv into a buffer we own.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return frames;
            }
            frames.push(buf[..n as usize].to_vec());
        }
    }
}

/// Raises this process's soft limit on open files to the hard limit (a
/// test that holds thousands of connections).
pub fn raise_open_files_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit"
        );
        limit.rlim_cur = limit.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
            "setrlimit"
        );
    }
    Ok(())
}
