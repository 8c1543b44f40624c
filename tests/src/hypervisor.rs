//! The hypervisor: a network namespace with the taps, bridges and host
//! device, its config files, and the daemon's lifecycle in it.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    InstanceSpec, Netns, Vm, instances::quote, random_mac, run, temp_folder, unique_suffix,
    veth_pair,
};

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

/// The previous landed build's daemon, which `cargo xtask test` builds
/// from git for the upgrade test.
pub fn previous_daemon_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("METADATA_REDIRECTOR_PREVIOUS_BIN")
        .map(PathBuf::from)
        .context(
            "METADATA_REDIRECTOR_PREVIOUS_BIN is not set: run the tests with `cargo xtask test`, \
             which builds the previous landed release from git",
        )?;
    ensure!(path.exists(), "{} does not exist", path.display());
    Ok(path)
}

/// A host with its own network namespace, config files and daemon.
#[derive(Debug)]
pub struct Hypervisor {
    ns: Netns,
    /// Config, instances, state and log; removed after the daemon (fields
    /// drop after `Drop::drop` has stopped it).
    dir: tempfile::TempDir,
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
    /// The daemon binary to start instead of this build's (an older
    /// release, for upgrades).
    pub binary: Option<PathBuf>,
}

impl Hypervisor {
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::new("mdr-hv")?;
        let suffix = ns.name().trim_start_matches("mdr-hv-").to_owned();
        let dir = temp_folder(&format!("mdr-test-{suffix}"))?;
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
            binary: None,
        })
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// This hypervisor's folder for files (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("metadata-redirector.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Creates a VM: a namespace whose eth0 is wired to a new tap here,
    /// with `ip/24` and a route to 169.254.169.254 on-link.
    pub fn add_vm(&self, ip: Ipv4Addr) -> anyhow::Result<Vm> {
        self.add_vm_with_mac(ip, &random_mac())
    }

    /// Like [`Self::add_vm`], with a given MAC (and so a given IPv6
    /// link-local address).
    pub fn add_vm_with_mac(&self, ip: Ipv4Addr, mac: &str) -> anyhow::Result<Vm> {
        self.add_vm_on_tap(ip, mac, None)
    }

    /// Like [`Self::add_vm_with_mac`], on a tap of a given name (as Nova
    /// names it after the Neutron port: `tap` + 11 characters of its id).
    pub fn add_vm_on_tap(&self, ip: Ipv4Addr, mac: &str, tap: Option<&str>) -> anyhow::Result<Vm> {
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
        let tap = tap.map_or_else(|| format!("tap{suffix}"), str::to_owned);
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
        self.dir.path().join("instances.toml")
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
            quote(&self.dir.path().join("state").display().to_string()),
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
        let binary = match &self.binary {
            Some(binary) => binary.clone(),
            None => daemon_binary()?,
        };
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
    /// `doctor` with `config`, in this host's network namespace: whether
    /// it passed, and its report (stdout), whatever the verdict.
    pub fn doctor(&self, config: &Path) -> anyhow::Result<(bool, String)> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns.name()))
            .arg(daemon_binary()?)
            .arg("doctor")
            .arg("--config")
            .arg(config)
            .output()
            .context("running doctor")?;
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok((out.status.success(), report))
    }

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
    }
}

/// A router namespace on a tenant bridge (see [`Hypervisor::add_gateway`]).
#[derive(Debug)]
pub struct Gateway {
    pub ns: Netns,
    pub mac: String,
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
