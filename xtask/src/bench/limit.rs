//! The benchmark's limit paths: what a VM could get with no eBPF at all.
//!
//! A VM namespace like the others (same MTU, same client) on a plain veth
//! the daemon does not watch, so no program runs on it, routed to the
//! host. Its address is the slot address of a reserved tap, so the daemon
//! knows who it is without any NAT: the daemon's own cost over a plain
//! routed path. Beside it, Debian's nginx serves the same meta_data.json
//! and user_data bytes from files on 169.254.169.254:8080 over the same
//! veth: what a fast static HTTP server does on this machine.

use std::{fs, net::Ipv4Addr, process::Stdio, time::Duration};

use anyhow::Context as _;
use metadata_tests::{Hypervisor, Netns, Vm, unique_suffix, veth_pair};

/// Where nginx listens (a local address of the hypervisor).
pub const NGINX_PORT: u16 = 8080;

/// The limit VM and nginx; everything goes with it.
pub struct LimitPath {
    pub ns: Netns,
    nginx: Nginx,
    /// nginx's folder (configuration, files, pid), removed after nginx,
    /// which is declared before it.
    _www: tempfile::TempDir,
}

/// nginx's master process. Stopped with SIGTERM, which takes its workers
/// down with it; SIGKILL would leave them running.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: nginx ignored SIGTERM for 5 s; killing it");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl LimitPath {
    /// nginx's master and worker processes.
    pub fn nginx_pids(&self) -> anyhow::Result<Vec<u32>> {
        let master = self.nginx.0.id();
        let mut pids = vec![master];
        for entry in fs::read_dir("/proc").context("listing /proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // A process gone since the listing is no worker of ours. The
            // parent's pid is field 4 of stat(5).
            let parent = super::harness::stat_fields(pid)
                .and_then(|fields| fields.get(1)?.parse::<u32>().ok());
            if parent == Some(master) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Wires the limit VM with the identity of `reserved` (a tap with a
    /// port record and no traffic) and starts nginx with `paths` copied
    /// from what the daemon answers.
    pub fn new(hv: &Hypervisor, reserved: &Vm, paths: &[&str]) -> anyhow::Result<Self> {
        let slot = slot_of(hv, reserved)?;
        let ns = Netns::new("mdr-lim")?;
        let host_end = format!("lim{}", unique_suffix());
        veth_pair(hv.ns(), &host_end, &ns)?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["addr", "add", &format!("{slot}/32"), "dev", "eth0"])?;
        ns.ip(&["route", "add", "169.254.169.254/32", "dev", "eth0"])?;
        // Every limit client shares the one source address: the whole port
        // range and TIME_WAIT reuse, or new-connection runs measure port
        // collisions.
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_local_port_range=1024 65535",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        )?;
        hv.ns().ip(&["link", "set", &host_end, "up"])?;
        // More specific than the slot range's route to the host device.
        hv.ns()
            .ip(&["route", "add", &format!("{slot}/32"), "dev", &host_end])?;
        let www = metadata_tests::temp_folder(&format!("mdr-www-{}", ns.name()))?;
        for path in paths {
            let body = fetch(&ns, &format!("http://169.254.169.254{path}"))?;
            let file = www.path().join(path.trim_start_matches('/'));
            fs::create_dir_all(file.parent().context("a path with a folder")?)?;
            fs::write(&file, body).with_context(|| format!("writing {}", file.display()))?;
        }
        let nginx = start_nginx(hv, www.path())?;
        let limit = Self {
            ns,
            nginx,
            _www: www,
        };
        let url = format!("http://169.254.169.254:{NGINX_PORT}{}", paths[0]);
        metadata_tests::wait_for("nginx to serve", Duration::from_secs(10), || {
            fetch(&limit.ns, &url).ok()
        })?;
        Ok(limit)
    }
}

/// The slot address the daemon gave `vm`'s tap.
fn slot_of(hv: &Hypervisor, vm: &Vm) -> anyhow::Result<Ipv4Addr> {
    let status = hv.status()?;
    status["taps"]
        .as_array()
        .and_then(|taps| taps.iter().find(|t| t["device"] == vm.tap.as_str()))
        .and_then(|t| t["slots"][0]["nat"].as_str())
        .context("the reserved tap's slot")?
        .parse()
        .context("a slot address")
}

/// A body fetched with curl in `ns` (200 only).
fn fetch(ns: &Netns, url: &str) -> anyhow::Result<Vec<u8>> {
    let out = ns
        .command("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .context("running curl")?;
    anyhow::ensure!(out.status.success(), "GET {url} failed");
    Ok(out.stdout)
}

/// nginx in the hypervisor namespace, a worker per core, no logs, keep-alive
/// for as long as wrk wants.
fn start_nginx(hv: &Hypervisor, www: &std::path::Path) -> anyhow::Result<Nginx> {
    let conf = www.join("nginx.conf");
    let text = format!(
        "daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n\
         uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
         server {{\n    listen 169.254.169.254:{NGINX_PORT};\n    root {dir};\n\
         location / {{ default_type application/json; }}\n  }}\n}}\n",
        dir = www.display(),
    );
    fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    hv.ns()
        .command("nginx")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Nginx)
        .context("starting nginx")
}
