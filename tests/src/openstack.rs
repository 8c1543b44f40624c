//! A real Keystone and a real Neutron API (PyPI's keystone and neutron in
//! the virtualenv setup installs, each its own WSGI application under
//! gunicorn) in a hypervisor's network namespace, on 127.0.0.1:5000 and
//! :9696, for the "neutron" port source. Their databases, keys and catalog
//! are made once per machine and version (`tests/openstack/
//! keystone_neutron.py template`, about 25 s) and copied for each test
//! (about 5 s to answer). Ports are created through the REST API as Nova
//! creates them. Both processes are stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use crate::{Hypervisor, wait_for};

/// The virtualenv with PyPI's keystone, neutron and gunicorn (xtask setup
/// creates and fills it).
pub const VENV: &str = "/opt/metadata-redirector-bench/neutron";
/// Where templates are kept, one per version of the script and packages.
pub(crate) const CACHE: &str = "/var/cache/metadata-redirector/openstack";

pub const KEYSTONE_URL: &str = "http://127.0.0.1:5000/v3";
pub const NEUTRON_URL: &str = "http://127.0.0.1:9696";
pub const ADMIN_PASSWORD: &str = "admin-secret";
pub const SERVICE_USER: &str = "neutron";
pub const SERVICE_PASSWORD: &str = "neutron-secret";
pub const SERVICE_PROJECT: &str = "service";
pub const REGION: &str = "RegionOne";

fn python() -> PathBuf {
    Path::new(VENV).join("bin/python")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openstack/keystone_neutron.py")
}

/// The template folder, made the first time on this machine.
fn template() -> anyhow::Result<PathBuf> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn make_template() -> anyhow::Result<PathBuf> {
    let script_text = std::fs::read(script()).context("reading keystone_neutron.py")?;
    let versions = crate::run(
        &python().display().to_string(),
        &["-c", "import keystone, neutron, importlib.metadata as m; print(m.version('keystone'), m.version('neutron'))"],
    )
    .context("the virtualenv with keystone and neutron (run `cargo xtask setup`)")?;
    let key = format!("{:016x}", fnv(&[&script_text, versions.as_bytes()]));
    let folder = Path::new(CACHE).join(key);
    if folder.join("neutron.db").exists() {
        return Ok(folder);
    }
    // Built aside and renamed: a killed build leaves nothing half-made in
    // place, and parallel test processes each build their own.
    let partial = Path::new(CACHE).join(format!("partial-{}", crate::unique_suffix()));
    std::fs::create_dir_all(CACHE).with_context(|| format!("creating {CACHE}"))?;
    crate::run(
        &python().display().to_string(),
        &[
            &script().display().to_string(),
            "template",
            &partial.display().to_string(),
        ],
    )?;
    if std::fs::rename(&partial, &folder).is_err() {
        // Another process was first.
        std::fs::remove_dir_all(&partial).ok();
    }
    Ok(folder)
}

/// FNV-1a over `parts`: a stable name for a template's inputs.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A server process; killed on drop.
#[derive(Debug)]
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Keystone and Neutron in one hypervisor's namespace.
#[derive(Debug)]
pub struct OpenStack {
    ns: String,
    dir: PathBuf,
    keystone: Server,
    neutron: Server,
    /// An admin token for the harness's own API calls.
    token: String,
    /// Where the harness's Neutron API calls go.
    api_base: std::cell::RefCell<String>,
}

/// A port as Neutron made it.
#[derive(Debug, Clone)]
pub struct NeutronPort {
    pub id: String,
    pub mac: String,
    /// The tap Nova would make for it.
    pub tap: String,
}

impl OpenStack {
    /// Copies the template into `hv`'s folder and starts both servers.
    pub fn start(hv: &Hypervisor) -> anyhow::Result<Self> {
        let template = template()?;
        let dir = hv.dir().join("openstack");
        crate::run(
            &python().display().to_string(),
            &[
                &script().display().to_string(),
                "copy",
                &template.display().to_string(),
                &dir.display().to_string(),
            ],
        )?;
        let mut stack = Self {
            ns: hv.ns().name().to_owned(),
            dir,
            keystone: Server(None),
            neutron: Server(None),
            token: String::new(),
            api_base: std::cell::RefCell::new(NEUTRON_URL.to_owned()),
        };
        stack.keystone = stack.serve("keystone")?;
        stack.start_neutron()?;
        stack.token = stack.token_for("admin", ADMIN_PASSWORD, "admin")?;
        Ok(stack)
    }

    fn serve(&self, which: &str) -> anyhow::Result<Server> {
        let bind = if which == "keystone" {
            "127.0.0.1:5000"
        } else {
            "127.0.0.1:9696"
        };
        self.serve_on(which, bind)
    }

    fn serve_on(&self, which: &str, bind: &str) -> anyhow::Result<Server> {
        let env = if which == "keystone" {
            "OS_KEYSTONE_CONFIG_DIR"
        } else {
            "OS_NEUTRON_CONFIG_DIR"
        };
        let log = std::fs::File::create(self.dir.join(format!("{which}.out")))?;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(python())
            .arg(script())
            .args(["serve", which, bind])
            .env(env, &self.dir)
            .env("OS_NEUTRON_CONFIG_FILES", "neutron.conf")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {which}"))?;
        let server = Server(Some(child));
        let url = if which == "keystone" {
            KEYSTONE_URL.to_owned()
        } else {
            format!("http://{bind}/")
        };
        wait_for(
            &format!("{which} to answer"),
            Duration::from_secs(60),
            || self.status_of(&url).ok().filter(|s| *s == 200),
        )
        .with_context(|| self.log(which))?;
        Ok(server)
    }

    /// Starts (again) the Neutron API.
    pub fn start_neutron(&mut self) -> anyhow::Result<()> {
        ensure!(self.neutron.0.is_none(), "neutron runs already");
        self.neutron = self.serve("neutron")?;
        Ok(())
    }

    /// Stops the Neutron API (as an outage would).
    pub fn stop_neutron(&mut self) {
        self.neutron = Server(None);
    }

    /// Runs `change` with the harness's Neutron calls going to a second
    /// Neutron server on the same database (127.0.0.1:9697), which the
    /// daemon does not know: changes made while its Neutron is down.
    pub fn while_neutron_elsewhere<T>(&self, change: impl FnOnce() -> T) -> T {
        let other = self
            .serve_on("neutron", "127.0.0.1:9697")
            .expect("a second neutron server");
        self.api_base.replace("http://127.0.0.1:9697".to_owned());
        let out = change();
        self.api_base.replace(NEUTRON_URL.to_owned());
        drop(other);
        out
    }

    /// Disables or enables the service user; disabling revokes its tokens.
    pub fn set_service_user_enabled(&self, enabled: bool) -> anyhow::Result<()> {
        let users = self.keystone_api("GET", &format!("/users?name={SERVICE_USER}"), None)?;
        let id = users["users"][0]["id"]
            .as_str()
            .context("the service user")?
            .to_owned();
        self.keystone_api(
            "PATCH",
            &format!("/users/{id}"),
            Some(&json!({"user": {"enabled": enabled}})),
        )
        .map(drop)
    }

    fn keystone_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.call(method, &format!("{KEYSTONE_URL}{path}"), body)
    }

    /// The end of a server's log, for a failure message.
    pub fn log(&self, which: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{which}.out"))).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        text[text.floor_char_boundary(start)..].to_owned()
    }

    /// curl with `args` in the hypervisor's namespace.
    fn curl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", self.ns.as_str(), "curl"];
        full.extend_from_slice(args);
        crate::run("ip", &full)
    }

    fn status_of(&self, url: &str) -> anyhow::Result<u16> {
        let out = self.curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])?;
        Ok(out.trim().parse()?)
    }

    /// A project-scoped token for `user`.
    pub fn token_for(&self, user: &str, password: &str, project: &str) -> anyhow::Result<String> {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}});
        let out = self.curl(&[
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            &format!("{KEYSTONE_URL}/auth/tokens"),
        ])?;
        out.lines()
            .find_map(|l| {
                l.strip_prefix("X-Subject-Token: ")
                    .or_else(|| l.strip_prefix("x-subject-token: "))
            })
            .map(|t| t.trim().to_owned())
            .with_context(|| format!("no token for {user}: {out}"))
    }

    /// Revokes `token` (DELETE /v3/auth/tokens).
    pub fn revoke(&self, token: &str) -> anyhow::Result<()> {
        let out = self.curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "-H",
            &format!("X-Auth-Token: {}", self.token),
            "-H",
            &format!("X-Subject-Token: {token}"),
            &format!("{KEYSTONE_URL}/auth/tokens"),
        ])?;
        ensure!(out.trim() == "204", "revoking a token: {out}");
        Ok(())
    }

    /// Calls the Neutron API as the admin; the answer's JSON.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.api_base.borrow());
        self.call(method, &url, body)
    }

    /// `method` on `url` as the admin.
    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let path = url;
        let mut args = vec![
            "-s".to_owned(),
            "-w".to_owned(),
            "\n%{http_code}".to_owned(),
            "--max-time".to_owned(),
            "20".to_owned(),
            "-X".to_owned(),
            method.to_owned(),
            "-H".to_owned(),
            format!("X-Auth-Token: {}", self.token),
            "-H".to_owned(),
            "Content-Type: application/json".to_owned(),
        ];
        if let Some(body) = body {
            args.push("-d".into());
            args.push(body.to_string());
        }
        args.push(url.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.curl(&args)?;
        let (text, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        let status: u16 = status.parse().with_context(|| format!("curl said {out}"))?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {text}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(text).with_context(|| format!("{method} {path}: {text}"))
    }

    /// A project id of the admin's choosing (a new project in Keystone is
    /// not needed: Neutron takes any id an admin names).
    pub fn new_project() -> String {
        crate::uuid_like().replace('-', "")
    }

    /// A network of `project` with a subnet `cidr` (IPv4 or IPv6).
    pub fn network(&self, project: &str, cidrs: &[&str]) -> anyhow::Result<String> {
        let net = self.api(
            "POST",
            "/v2.0/networks",
            Some(&json!({"network": {
            "name": format!("net-{}", &crate::unique_suffix()), "project_id": project}})),
        )?;
        let id = net["network"]["id"]
            .as_str()
            .context("network id")?
            .to_owned();
        for cidr in cidrs {
            let version = if cidr.contains(':') { 6 } else { 4 };
            let mut subnet = json!({"network_id": id, "cidr": cidr, "ip_version": version,
                                    "project_id": project});
            if version == 6 {
                subnet["ipv6_address_mode"] = json!("dhcpv6-stateful");
                subnet["ipv6_ra_mode"] = json!("dhcpv6-stateful");
            }
            self.api("POST", "/v2.0/subnets", Some(&json!({"subnet": subnet})))?;
        }
        Ok(id)
    }

    /// A port as Nova asks for one: compute:nova, the instance as
    /// device_id, bound to `host`, with `ips` as its fixed IPs.
    pub fn port(
        &self,
        network: &str,
        project: &str,
        instance: &str,
        host: &str,
        ips: &[&str],
    ) -> anyhow::Result<NeutronPort> {
        let fixed: Vec<Value> = ips.iter().map(|ip| json!({"ip_address": ip})).collect();
        let port = self.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {
            "network_id": network, "project_id": project, "device_owner": "compute:nova",
            "device_id": instance, "binding:host_id": host, "fixed_ips": fixed}})),
        )?;
        let id = port["port"]["id"].as_str().context("port id")?.to_owned();
        let mac = port["port"]["mac_address"]
            .as_str()
            .context("mac")?
            .to_owned();
        Ok(NeutronPort {
            tap: format!("tap{}", &id[..11]),
            id,
            mac,
        })
    }

    /// Changes a port's fields (`{"fixed_ips": ...}`, `{"binding:host_id": ...}`).
    pub fn update_port(&self, id: &str, fields: &Value) -> anyhow::Result<()> {
        self.api(
            "PUT",
            &format!("/v2.0/ports/{id}"),
            Some(&json!({"port": fields})),
        )
        .map(drop)
    }

    pub fn delete_port(&self, id: &str) -> anyhow::Result<()> {
        self.api("DELETE", &format!("/v2.0/ports/{id}"), None)
            .map(drop)
    }

    /// The daemon's `[ports]` section for this stack, bound to `host`.
    pub fn ports_config(host: &str, refresh_s: u64, extra: &str) -> String {
        format!(
            "source = \"neutron\"\nhost = \"{host}\"\nrefresh_interval_s = {refresh_s}\n{extra}\n\
             [ports.keystone]\nauth_url = \"{KEYSTONE_URL}\"\nusername = \"{SERVICE_USER}\"\n\
             password = \"{SERVICE_PASSWORD}\"\nproject_name = \"{SERVICE_PROJECT}\"\n\
             region_name = \"{REGION}\"\n"
        )
    }
}
