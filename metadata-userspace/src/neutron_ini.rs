//! neutron's own metadata agent files as a drop-in: from
//! `neutron_ovn_metadata_agent.ini` the Southbound and OVS connections, and
//! from it or ML2/OVS's `metadata_agent.ini` the Nova endpoint, its TLS
//! files, the shared secret and the rate limits, so migrating from the
//! agent is `metadata-redirector run --neutron-config FILE` (with
//! `--nova-config /etc/nova/nova.conf` on an ML2/OVS or linuxbridge node).
//!
//! oslo.config's INI: `[section]` headers, `key = value` lines, `#` and
//! `;` comments. Keys this daemon has no use for are listed once at start;
//! keys whose setting it cannot honour are errors naming file, line and
//! key.

use std::path::{Path, PathBuf};

use crate::config::{
    BackendConfig, Config, ConfigError, NovaBackendConfig, NovaUrl, OvsdbRemotes, PortSourceKind,
    defaults,
    ini::{Entry, entry_err, invalid, parse, parse_bool},
};

/// What the daemon takes from the file.
const USED: [(&str, &str); 19] = [
    ("DEFAULT", "nova_metadata_host"),
    ("DEFAULT", "nova_metadata_port"),
    ("DEFAULT", "nova_metadata_protocol"),
    ("DEFAULT", "metadata_proxy_shared_secret"),
    ("DEFAULT", "nova_client_cert"),
    ("DEFAULT", "nova_client_priv_key"),
    ("DEFAULT", "auth_ca_cert"),
    ("DEFAULT", "nova_metadata_insecure"),
    ("ovn", "ovn_sb_connection"),
    ("ovn", "ovn_sb_private_key"),
    ("ovn", "ovn_sb_certificate"),
    ("ovn", "ovn_sb_ca_cert"),
    ("ovs", "ovsdb_connection"),
    ("metadata_rate_limiting", "rate_limit_enabled"),
    ("metadata_rate_limiting", "base_window_duration"),
    ("metadata_rate_limiting", "base_query_rate_limit"),
    ("metadata_rate_limiting", "burst_window_duration"),
    ("metadata_rate_limiting", "burst_query_rate_limit"),
    // Neutron limits one family; this daemon counts per instance over
    // both, which covers what either setting asks.
    ("metadata_rate_limiting", "ip_versions"),
];

/// Whose metadata agent the file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// neutron_ovn_metadata_agent.ini: also the Southbound and OVS
    /// connections (port source "ovn").
    Ovn,
    /// ML2/OVS's metadata_agent.ini: Nova and rate limits only; the ports
    /// come from nova.conf's Neutron credentials (port source "neutron").
    Ml2,
}

/// Applies the file at `path` to `config`: the backend becomes Nova, and
/// for the OVN agent's file the port source "ovn". Returns the keys it did
/// not use.
pub fn apply(config: &mut Config, path: &Path, agent: Agent) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let entries = parse(path, &text)?;
    let get = |section: &str, key: &str| {
        entries
            .iter()
            .rev()
            .find(|e| e.section == section && e.key == key)
    };
    rate_limit(path, &get, &mut config.rate_limit)?;
    if agent == Agent::Ovn {
        ovn_ports(path, &get, config)?;
    }
    config.backend = BackendConfig::Nova(nova(path, &get)?);
    let used_here = |e: &&Entry| {
        USED.contains(&(e.section.as_str(), e.key.as_str()))
            && (agent == Agent::Ovn || !matches!(e.section.as_str(), "ovn" | "ovs"))
    };
    Ok(entries
        .iter()
        .filter(|e| !used_here(e))
        .map(|e| format!("{}.{}", e.section, e.key))
        .collect())
}

/// `[ovn]` and `[ovs]`: the Southbound and OVS connections.
fn ovn_ports<'a>(
    path: &Path,
    get: &impl Fn(&str, &str) -> Option<&'a Entry>,
    config: &mut Config,
) -> Result<(), ConfigError> {
    let sb = get("ovn", "ovn_sb_connection").ok_or_else(|| {
        invalid(
            path,
            0,
            "ovn.ovn_sb_connection",
            "missing: the Southbound to learn ports from (for ML2/OVS's metadata_agent.ini, also give --nova-config)",
        )
    })?;
    let remotes: OvsdbRemotes = sb.value.parse().map_err(|e| entry_err(path, sb, e))?;
    config.ports.source = PortSourceKind::Ovn;
    config.ports.ovn_sb = Some(remotes);
    config.ports.ovn_sb_private_key =
        get("ovn", "ovn_sb_private_key").map(|e| PathBuf::from(&e.value));
    config.ports.ovn_sb_certificate =
        get("ovn", "ovn_sb_certificate").map(|e| PathBuf::from(&e.value));
    config.ports.ovn_sb_ca_cert = get("ovn", "ovn_sb_ca_cert").map(|e| PathBuf::from(&e.value));
    if let Some(ovs) = get("ovs", "ovsdb_connection") {
        config.ports.ovs = Some(ovs.value.parse().map_err(|e| entry_err(path, ovs, e))?);
    }
    Ok(())
}

fn nova<'a>(
    path: &Path,
    get: &impl Fn(&str, &str) -> Option<&'a Entry>,
) -> Result<NovaBackendConfig, ConfigError> {
    let value = |key: &str| get("DEFAULT", key).map(|e| e.value.clone());
    let host = value("nova_metadata_host").unwrap_or_else(|| defaults::NOVA_METADATA_HOST.into());
    let port = match get("DEFAULT", "nova_metadata_port") {
        Some(entry) => entry
            .value
            .parse::<u16>()
            .map_err(|_| entry_err(path, entry, "not a port number"))?,
        None => defaults::NOVA_METADATA_PORT,
    };
    let protocol = match get("DEFAULT", "nova_metadata_protocol") {
        Some(entry) if !matches!(entry.value.as_str(), "http" | "https") => {
            return Err(entry_err(path, entry, "must be http or https"));
        }
        Some(entry) => entry.value.clone(),
        None => "http".into(),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let url: NovaUrl = format!("{protocol}://{host}:{port}")
        .parse()
        .map_err(|e: String| invalid(path, 0, "DEFAULT.nova_metadata_host", &e))?;
    let secret = get("DEFAULT", "metadata_proxy_shared_secret").ok_or_else(|| {
        invalid(
            path,
            0,
            "DEFAULT.metadata_proxy_shared_secret",
            "missing: Nova checks every request's signature with it",
        )
    })?;
    let insecure = match get("DEFAULT", "nova_metadata_insecure") {
        Some(entry) => parse_bool(path, entry)?,
        None => false,
    };
    Ok(NovaBackendConfig {
        url,
        shared_secret: Some(secret.value.clone()),
        shared_secret_file: None,
        ca_file: value("auth_ca_cert").map(PathBuf::from),
        client_cert: value("nova_client_cert").map(PathBuf::from),
        client_key: value("nova_client_priv_key").map(PathBuf::from),
        insecure,
        connect_timeout_s: defaults::NOVA_CONNECT_TIMEOUT_S,
        timeout_s: defaults::NOVA_TIMEOUT_S,
        // neutron's agent has no response cache; Nova's own default.
        cache_ttl_s: defaults::NOVA_CACHE_TTL_S,
    })
}

/// `[metadata_rate_limiting]`, in Neutron's names.
fn rate_limit<'a>(
    path: &Path,
    get: &impl Fn(&str, &str) -> Option<&'a Entry>,
    limits: &mut crate::config::RateLimitConfig,
) -> Result<(), ConfigError> {
    let section = "metadata_rate_limiting";
    if let Some(entry) = get(section, "rate_limit_enabled") {
        limits.enabled = parse_bool(path, entry)?;
    }
    let number = |key: &str| -> Result<Option<u64>, ConfigError> {
        get(section, key)
            .map(|e| {
                e.value
                    .parse::<u64>()
                    .map_err(|_| entry_err(path, e, "not a whole number"))
            })
            .transpose()
    };
    if let Some(n) = number("base_window_duration")? {
        limits.base_window_s = n;
    }
    if let Some(n) = number("base_query_rate_limit")? {
        limits.base_requests = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = number("burst_window_duration")? {
        limits.burst_window_s = n;
    }
    if let Some(n) = number("burst_query_rate_limit")? {
        limits.burst_requests = usize::try_from(n).unwrap_or(usize::MAX);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT_INI: &str = "\
[DEFAULT]
# As devstack and the charms write it.
debug = True
state_path = /var/lib/neutron
metadata_workers = 2
nova_metadata_host = 192.0.2.5
nova_metadata_port = 8775
nova_metadata_protocol = https
metadata_proxy_shared_secret = s3cret
auth_ca_cert = /etc/ssl/nova-ca.pem
nova_metadata_insecure = false

[ovs]
ovsdb_connection = unix:/run/openvswitch/db.sock

[ovn]
ovn_sb_connection = ssl:192.0.2.10:6642,ssl:192.0.2.11:6642
ovn_sb_private_key = /etc/neutron/sb.key
ovn_sb_certificate = /etc/neutron/sb.crt
ovn_sb_ca_cert = /etc/neutron/sb-ca.crt

[metadata_rate_limiting]
rate_limit_enabled = false
";

    fn config() -> Config {
        Config::parse(Path::new("/etc/mdr.toml"), "").unwrap()
    }

    fn apply_text(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("neutron_ovn_metadata_agent.ini");
        std::fs::write(&path, text).unwrap();
        let mut config = config();
        apply(&mut config, &path, Agent::Ovn).map(|unused| (config, unused))
    }

    #[test]
    fn the_agents_file_configures_the_ovn_source_and_nova() {
        let (config, unused) = apply_text(AGENT_INI).unwrap();
        assert_eq!(config.ports.source, PortSourceKind::Ovn);
        assert_eq!(
            config.ports.ovn_sb.map(|sb| sb.to_string()).as_deref(),
            Some("ssl:192.0.2.10:6642,ssl:192.0.2.11:6642")
        );
        assert_eq!(
            config.ports.ovn_sb_ca_cert,
            Some(PathBuf::from("/etc/neutron/sb-ca.crt"))
        );
        let BackendConfig::Nova(nova) = &config.backend else {
            panic!("nova backend")
        };
        assert_eq!(nova.url.0.to_string(), "https://192.0.2.5:8775/");
        assert_eq!(nova.shared_secret.as_deref(), Some("s3cret"));
        assert_eq!(nova.ca_file, Some(PathBuf::from("/etc/ssl/nova-ca.pem")));
        assert_eq!(
            unused,
            [
                "DEFAULT.debug",
                "DEFAULT.state_path",
                "DEFAULT.metadata_workers"
            ]
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let broken = AGENT_INI.replace("nova_metadata_port = 8775", "nova_metadata_port = eighty");
        let err = apply_text(&broken).unwrap_err().to_string();
        assert!(
            err.ends_with(":7: key `DEFAULT.nova_metadata_port`: not a port number"),
            "{err}"
        );
        let limited = AGENT_INI.replace(
            "rate_limit_enabled = false",
            "rate_limit_enabled = true\nbase_window_duration = 10\nbase_query_rate_limit = 10\nburst_query_rate_limit = x",
        );
        let err = apply_text(&limited).unwrap_err().to_string();
        assert!(
            err.contains(":26: key `metadata_rate_limiting.burst_query_rate_limit`"),
            "{err}"
        );
        let no_sb = AGENT_INI.replace("ovn_sb_connection", "#");
        assert!(
            apply_text(&no_sb)
                .unwrap_err()
                .to_string()
                .contains("ovn.ovn_sb_connection")
        );
        let garbage = "[DEFAULT]\nthis line has no equals sign\n";
        assert!(
            apply_text(garbage)
                .unwrap_err()
                .to_string()
                .contains(":2: key")
        );
    }
}
