//! `doctor`: a preflight that says, line by line, whether `run` would work
//! on this host and what to do where it would not.

use std::{fmt, path::Path, time::Duration};

use anyhow::bail;

use super::backlog;
use crate::{
    config::{BackendConfig, Config, PortSourceKind},
    datapath::{
        bpffs::{self, Found},
        layout::Layout,
    },
    inventory::{
        PortIndex,
        neutron::NeutronClient,
        ovsdb::{client::Client, remote},
    },
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
// From linux/capability.h.
const CAPABILITIES: [(u32, &str); 3] =
    [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok  ",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug)]
struct Check {
    outcome: Outcome,
    what: &'static str,
    detail: String,
}

fn check(outcome: Outcome, what: &'static str, detail: impl Into<String>) -> Check {
    Check {
        outcome,
        what,
        detail: detail.into(),
    }
}

/// Runs every check, prints them, and fails when `run` would not work.
pub async fn doctor(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let mut checks = vec![
        kernel(),
        capabilities(),
        bpffs(&config),
        pinned_state(&config),
        listen_backlog(&config),
        identity_keys(&config),
        metadata_listeners(),
    ];
    checks.extend(port_source(&config).await);
    checks.extend(nova(&config).await);
    for c in &checks {
        println!("{} {}: {}", c.outcome, c.what, c.detail);
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed: `run` would not work on this host");
    }
    Ok(())
}

fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .trim()
        .split(['.', '-'])
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version >= (6, 6) {
        check(
            Outcome::Ok,
            "kernel",
            format!("Linux {} has TCX", release.trim()),
        )
    } else {
        check(
            Outcome::Fail,
            "kernel",
            format!("Linux {}: TCX needs 6.6 or newer", release.trim()),
        )
    }
}

fn capabilities() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = CAPABILITIES
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        check(
            Outcome::Ok,
            "capabilities",
            "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON held",
        )
    } else {
        check(
            Outcome::Fail,
            "capabilities",
            format!(
                "missing {}; run as root or with the unit's capabilities",
                missing.join(", ")
            ),
        )
    }
}

fn bpffs(config: &Config) -> Check {
    let path = &config.datapath.bpffs;
    match bpffs::check(path) {
        Ok(Found::Shared) => check(
            Outcome::Ok,
            "bpffs",
            format!("{} is on the host's bpffs", path.display()),
        ),
        Ok(Found::WillMount { proven: true }) => check(
            Outcome::Warn,
            "bpffs",
            "none mounted yet: `run` will mount one on /sys/fs/bpf",
        ),
        Ok(Found::WillMount { proven: false }) => check(
            Outcome::Warn,
            "bpffs",
            format!(
                "none mounted yet: `run` will mount one on /sys/fs/bpf; {}",
                bpffs::UNPROVEN
            ),
        ),
        Err(err) => check(Outcome::Fail, "bpffs", err.to_string()),
    }
}

/// Whether what a previous daemon pinned fits this build's map layout.
fn pinned_state(config: &Config) -> Check {
    let bpffs = &config.datapath.bpffs;
    let layout = match Layout::read(bpffs) {
        Ok(layout) => layout,
        Err(err) => return check(Outcome::Fail, "pinned state", err.to_string()),
    };
    if layout.is_empty() {
        return check(Outcome::Ok, "pinned state", "none: a first start");
    }
    if layout.is_current() {
        let detail = format!(
            "present under {}, this build's layout: it will be adopted",
            bpffs.display()
        );
        return check(Outcome::Ok, "pinned state", detail);
    }
    let changes = layout.changes().join("; ");
    match layout.ensure_adoptable() {
        Ok(()) => check(
            Outcome::Ok,
            "pinned state",
            format!(
                "an older build's layout under {} ({changes}): this build adopts it, carrying \
                 every entry over, and swaps its programs into the pinned links",
                bpffs.display()
            ),
        ),
        Err(err) => check(Outcome::Fail, "pinned state", format!("{changes}: {err}")),
    }
}

/// Whether `[identity]`'s key and certificate load and match.
fn identity_keys(config: &Config) -> Check {
    match crate::identity::Signer::load(&config.identity) {
        Ok(None) => check(
            Outcome::Ok,
            "identity",
            "no [identity] key: the signed paths answer 404",
        ),
        Ok(Some(signer)) => check(Outcome::Ok, "identity", signer.describe()),
        Err(err) => check(Outcome::Fail, "identity", err.to_string()),
    }
}

/// Whether net.core.somaxconn lets the proxy's listeners hold every
/// attached tap's burst of new connections (see `backlog`).
fn listen_backlog(config: &Config) -> Check {
    let links = config.datapath.bpffs.join(metadata_common::pins::LINKS_DIR);
    let taps = std::fs::read_dir(&links)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(metadata_common::pins::tap_of_link)
                .is_some()
        })
        .count();
    let burst = config.datapath.connection_burst.get();
    let wanted = backlog::wanted(burst, taps);
    match backlog::somaxconn() {
        Ok(cap) if cap >= wanted => check(
            Outcome::Ok,
            "listen backlog",
            format!(
                "net.core.somaxconn {cap} holds {taps} taps' bursts of {burst} connections ({wanted})"
            ),
        ),
        Ok(cap) => check(
            Outcome::Warn,
            "listen backlog",
            format!(
                "net.core.somaxconn {cap} is under {wanted} ({taps} taps x {burst} + {}): if many \
                 guests open their burst of connections at once, some wait a SYN retransmission; \
                 sysctl -w net.core.somaxconn={} (the package's sysctl.d file sets 65535)",
                backlog::BASE,
                wanted.max(65_535)
            ),
        ),
        Err(err) => check(
            Outcome::Warn,
            "listen backlog",
            format!("reading {}: {err}", backlog::SOMAXCONN),
        ),
    }
}

/// Neutron's namespaces, and anything else listening on 169.254.169.254:80
/// in this or any named network namespace.
fn metadata_listeners() -> Check {
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let neutron: Vec<&String> = namespaces
        .iter()
        .filter(|n| {
            ["qdhcp-", "qrouter-", "ovnmeta-"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    let mut listening: Vec<String> = namespaces
        .iter()
        .filter(|ns| listens_in(Some(ns.as_str())))
        .cloned()
        .collect();
    if listens_in(None) {
        listening.push("this namespace".into());
    }
    match (neutron.is_empty(), listening.is_empty()) {
        (true, true) => check(
            Outcome::Ok,
            "metadata address",
            "nothing else serves 169.254.169.254:80",
        ),
        _ => {
            let mut detail = Vec::new();
            if !neutron.is_empty() {
                detail.push(format!(
                    "Neutron's metadata namespaces still exist: {neutron:?}"
                ));
            }
            if !listening.is_empty() {
                detail.push(format!(
                    "169.254.169.254:80 has a listener in: {}",
                    listening.join(", ")
                ));
            }
            check(
                Outcome::Fail,
                "metadata address",
                format!(
                    "{}; stop neutron's metadata agent and its haproxies first",
                    detail.join("; ")
                ),
            )
        }
    }
}

/// Whether a TCP socket listens on 169.254.169.254:80 in network
/// namespace `ns` (this one for `None`).
fn listens_in(ns: Option<&str>) -> bool {
    // 169.254.169.254 as /proc/net/tcp writes it (host order), port 80.
    const LOCAL: &str = "FEA9FEA9:0050";
    const LISTEN: &str = "0A";
    let read = move || -> std::io::Result<String> {
        if let Some(ns) = ns {
            let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
            // SAFETY: setns on a namespace fd, for this (scoped) thread.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) }
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        std::fs::read_to_string("/proc/thread-self/net/tcp")
    };
    let table = std::thread::scope(|s| s.spawn(read).join())
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&LOCAL) && fields.get(3) == Some(&LISTEN)
    })
}

async fn port_source(config: &Config) -> Vec<Check> {
    match config.ports.source {
        PortSourceKind::File => vec![match PortIndex::load(&config.ports.file) {
            Ok(index) => check(
                Outcome::Ok,
                "port source",
                format!(
                    "{} parses: {} taps",
                    config.ports.file.display(),
                    index.device_count()
                ),
            ),
            Err(err) => check(Outcome::Fail, "port source", err.to_string()),
        }],
        PortSourceKind::Ovn => {
            let ports = &config.ports;
            let ovs = ports.ovs_or_default();
            let sb = ports.ovn_sb.iter().flat_map(|sb| &sb.0);
            let remotes = std::iter::once(("Open_vSwitch", &ovs))
                .chain(sb.map(|remote| ("OVN_Southbound", remote)));
            let mut checks = Vec::new();
            for (db, remote) in remotes {
                checks.push(ovsdb_answers(db, remote, config).await);
            }
            checks
        }
        PortSourceKind::Neutron => vec![neutron_answers(config).await],
    }
}

/// Keystone accepts the credentials, the catalog (or the override) names
/// the network endpoint, and Neutron lists this host's ports.
async fn neutron_answers(config: &Config) -> Check {
    let Some(keystone) = &config.ports.keystone else {
        return check(Outcome::Fail, "port source", "no [ports.keystone]");
    };
    let host = config.ports.host_or_hostname();
    let listed = async {
        let mut client = NeutronClient::new(keystone)?;
        client.list_ports(&host).await
    };
    match tokio::time::timeout(Duration::from_secs(30), listed).await {
        Ok(Ok(ports)) => {
            let compute = ports
                .iter()
                .filter(|p| p.device_owner.starts_with("compute:"))
                .count();
            check(
                Outcome::Ok,
                "port source",
                format!(
                    "Keystone {} accepted the credentials; Neutron lists {} ports bound to {host} ({compute} of instances)",
                    keystone.auth_url,
                    ports.len()
                ),
            )
        }
        Ok(Err(err)) => check(Outcome::Fail, "port source", err.to_string()),
        Err(_) => check(
            Outcome::Fail,
            "port source",
            format!(
                "Keystone {} or Neutron gave no answer within 30 s",
                keystone.auth_url
            ),
        ),
    }
}

async fn ovsdb_answers(db: &'static str, remote: &remote::Remote, config: &Config) -> Check {
    let tls = remote::TlsFiles {
        private_key: config.ports.ovn_sb_private_key.clone(),
        certificate: config.ports.ovn_sb_certificate.clone(),
        ca_cert: config.ports.ovn_sb_ca_cert.clone(),
    };
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let (client, _updates) = Client::connect(remote, &tls).await?;
        client.call("list_dbs", serde_json::json!([])).await
    })
    .await;
    match answer {
        Ok(Ok(dbs)) if dbs.as_array().is_some_and(|d| d.iter().any(|n| n == db)) => {
            check(Outcome::Ok, "port source", format!("{remote} serves {db}"))
        }
        Ok(Ok(dbs)) => check(
            Outcome::Fail,
            "port source",
            format!("{remote} serves {dbs}, not {db}"),
        ),
        Ok(Err(err)) => check(Outcome::Fail, "port source", format!("{remote}: {err}")),
        Err(_) => check(
            Outcome::Fail,
            "port source",
            format!("{remote}: no answer within {CONNECT_TIMEOUT:?}"),
        ),
    }
}

async fn nova(config: &Config) -> Vec<Check> {
    let BackendConfig::Nova(nova) = &config.backend else {
        return vec![check(
            Outcome::Ok,
            "backend",
            "local: served from the instances file",
        )];
    };
    vec![nova_reachable(&nova.url.0).await, shared_secret(nova)]
}

async fn nova_reachable(uri: &http::Uri) -> Check {
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let port = uri.port_u16().unwrap_or(default_port);
    let connect = tokio::net::TcpStream::connect((host, port));
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(_)) => check(Outcome::Ok, "nova", format!("{uri} accepts connections")),
        Ok(Err(err)) => check(Outcome::Fail, "nova", format!("{uri}: {err}")),
        Err(_) => check(
            Outcome::Fail,
            "nova",
            format!("{uri}: no answer within {CONNECT_TIMEOUT:?}"),
        ),
    }
}

fn shared_secret(nova: &crate::config::NovaBackendConfig) -> Check {
    match (&nova.shared_secret, &nova.shared_secret_file) {
        (Some(secret), _) if !secret.is_empty() => check(Outcome::Ok, "shared secret", "set"),
        (_, Some(file)) => match std::fs::read_to_string(file) {
            Ok(s) if !s.trim().is_empty() => check(
                Outcome::Ok,
                "shared secret",
                format!("read from {}", file.display()),
            ),
            Ok(_) => check(
                Outcome::Fail,
                "shared secret",
                format!("{} is empty", file.display()),
            ),
            Err(err) => check(
                Outcome::Fail,
                "shared secret",
                format!("{}: {err}", file.display()),
            ),
        },
        _ => check(
            Outcome::Fail,
            "shared secret",
            "not set: Nova will answer 403 to every request",
        ),
    }
}
