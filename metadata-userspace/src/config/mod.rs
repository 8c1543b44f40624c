//! The daemon's configuration file (TOML).
//!
//! Unknown keys and bad values are errors that name the file, the line and
//! the key, so an operator can fix a typo without reading the source.

mod backend;
pub mod defaults;
pub mod identity;
pub mod ini;
pub mod keystone;
mod values;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, de};
use toml::Spanned;

use self::backend::BackendSection;
pub(crate) use self::values::deserialize_from_str;
pub use self::{
    identity::IdentityConfig,
    keystone::KeystoneConfig,
    values::{
        ConnectionBurst, ConnectionRate, DeviceName, GlobPattern, HopLimit, HostMtu, HttpUrl,
        Ipv4Net, Ipv6Net96, NovaUrl, OvsdbRemote, OvsdbRemotes, Secret,
    },
};

/// A configuration or instances file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// An error at a byte span of `source`, from `path`.
    pub fn at(path: &Path, source: &str, span: std::ops::Range<usize>, message: String) -> Self {
        let (line, key) = locate(source, span.start);
        Self::Invalid {
            path: path.to_owned(),
            line,
            key,
            message,
        }
    }

    fn from_toml(path: &Path, source: &str, err: &toml::de::Error) -> Self {
        let message = err.message().to_owned();
        match err.span() {
            Some(span) => Self::at(path, source, span, message),
            None => Self::Invalid {
                path: path.to_owned(),
                line: 0,
                key: String::new(),
                message,
            },
        }
    }
}

/// Reads and parses a TOML file into `T`, mapping every error to a
/// [`ConfigError`] with file, line and key.
pub fn parse_file<T: de::DeserializeOwned>(path: &Path) -> Result<(T, String), ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let value = parse_str(path, &source)?;
    Ok((value, source))
}

/// Parses TOML text that came from `path`.
pub fn parse_str<T: de::DeserializeOwned>(path: &Path, source: &str) -> Result<T, ConfigError> {
    toml::from_str(source).map_err(|err| ConfigError::from_toml(path, source, &err))
}

/// The 1-based line of byte `offset` in `source`, and the dotted key
/// written there (`table.key`), for error messages.
fn locate(source: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let mut table = String::new();
    for text in before.lines() {
        let text = text.trim();
        if let Some(header) = text.strip_prefix('[') {
            table = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        }
    }
    let line_text = source.lines().nth(line - 1).unwrap_or_default().trim();
    if let Some(header) = line_text.strip_prefix('[') {
        // The error is about a whole table: name it.
        let name = header.trim_matches(|c| c == '[' || c == ']').trim();
        return (line, name.to_owned());
    }
    let key = match line_text.split_once('=') {
        Some((key, _)) if !line_text.starts_with('[') => key.trim().trim_matches('"').to_owned(),
        _ => String::new(),
    };
    let key = match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    (line, key)
}

/// `metadata-redirector.toml`, resolved: relative paths made absolute,
/// the backend section turned into what it means.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub datapath: DatapathConfig,
    pub proxy: ProxyConfig,
    pub ports: PortsConfig,
    pub agent: AgentConfig,
    pub tokens: TokensConfig,
    pub rate_limit: RateLimitConfig,
    pub metrics: MetricsConfig,
    pub backend: BackendConfig,
    pub identity: IdentityConfig,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    daemon: DaemonConfig,
    datapath: DatapathConfig,
    proxy: ProxyConfig,
    // Spanned: the cross-field check of `[ports]` names the table's line.
    ports: Option<Spanned<PortsConfig>>,
    agent: AgentConfig,
    tokens: TokensConfig,
    rate_limit: RateLimitConfig,
    metrics: MetricsConfig,
    backend: BackendSection,
    // Spanned: the cross-field check names the table's line.
    identity: Option<Spanned<IdentityConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// What must survive restarts.
    pub state_dir: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(defaults::STATE_DIR),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// Glob patterns of VM-facing devices.
    pub interfaces: Vec<GlobPattern>,
    /// The host end of the veth pair the proxy listens on.
    pub host_device: DeviceName,
    /// MTU of the host device: at least the largest tenant MTU, or larger
    /// guest frames could not be redirected into it.
    pub host_mtu: HostMtu,
    /// Range the (tap, guest address) slots are NATed into.
    pub nat_v4: Ipv4Net,
    /// The IPv6 /96 the (tap, guest IPv6) slots are NATed into; the proxy
    /// listens on its address ::ffff:fffe.
    pub nat_v6: Ipv6Net96,
    /// bpffs folder where maps and links are pinned.
    pub bpffs: PathBuf,
    /// New connections a second each tap may open to the metadata
    /// service, sustained; the excess is dropped at the tap (0: no budget).
    pub connection_rate: ConnectionRate,
    /// New connections a tap may open at once over that rate.
    pub connection_burst: ConnectionBurst,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            interfaces: vec![defaults::INTERFACES.parse().expect("valid default pattern")],
            host_device: DeviceName(defaults::HOST_DEVICE.into()),
            host_mtu: defaults::HOST_MTU,
            nat_v4: defaults::NAT_V4.parse().expect("valid default range"),
            nat_v6: defaults::NAT_V6.parse().expect("valid default range"),
            bpffs: PathBuf::from(defaults::BPFFS),
            connection_rate: defaults::CONNECTION_RATE,
            connection_burst: defaults::CONNECTION_BURST,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Host-only address the proxy listens on, on the host device.
    pub address: Ipv4Addr,
    pub port: u16,
    /// Concurrent connections one instance may hold; the excess is closed
    /// at once, so that no guest can take every descriptor.
    pub max_connections_per_instance: usize,
    /// Time a client gets to send a request's headers (slowloris), and an
    /// idle keep-alive connection to start its next request.
    pub header_read_timeout_s: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            address: defaults::PROXY_ADDRESS,
            port: defaults::PROXY_PORT,
            max_connections_per_instance: defaults::MAX_CONNECTIONS_PER_INSTANCE,
            header_read_timeout_s: defaults::HEADER_READ_TIMEOUT_S,
        }
    }
}

/// Prometheus metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A host-only address: never the metadata address. Off when absent.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(defaults::METRICS_LISTEN),
        }
    }
}

/// Per-instance rate limiting with Neutron's semantics: over either
/// window's count, 429. Off by default, as in Neutron.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub base_window_s: u64,
    pub base_requests: usize,
    pub burst_window_s: u64,
    pub burst_requests: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_window_s: defaults::RATE_BASE_WINDOW_S,
            base_requests: defaults::RATE_BASE_REQUESTS,
            burst_window_s: defaults::RATE_BURST_WINDOW_S,
            burst_requests: defaults::RATE_BURST_REQUESTS,
        }
    }
}

/// Session tokens (IMDSv2 semantics) on the datapath's proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// The default for instances whose record names none.
    pub mode: TokenMode,
    /// IP TTL / IPv6 hop limit of the token response (and of the rest of
    /// that connection): 1 keeps tokens from leaving the guest through a
    /// router or container NAT; AWS recommends 2 for containers.
    pub hop_limit: HopLimit,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            mode: TokenMode::Optional,
            hop_limit: defaults::TOKEN_HOP_LIMIT,
        }
    }
}

/// Whether requests need a session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// Tokens can be had and are checked when sent; requests without one
    /// are served (IMDSv1 and v2 alike).
    Optional,
    /// Requests without a valid token get 401; the token PUT works.
    Required,
    /// No tokens: the PUT is refused (403), so clients fall back to v1.
    Disabled,
}

/// Agent mode: also accept Neutron haproxy traffic on a unix socket, as
/// neutron-metadata-agent does (a migration path, and the benchmark's
/// Neutron baseline).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// e.g. "/var/lib/neutron/metadata_proxy"; off when absent.
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsConfig {
    /// Where port records come from.
    pub source: PortSourceKind,
    /// source = "file": the instances file, relative to the config file.
    pub file: PathBuf,
    /// The local Open_vSwitch database: needed by source = "ovn" (default
    /// unix:/run/openvswitch/db.sock); optional for "neutron", where it
    /// gives each tap's port id exactly (Interface external_ids:iface-id).
    pub ovs: Option<OvsdbRemote>,
    /// source = "ovn": the OVN Southbound, one or more comma-separated
    /// remotes (the members of a cluster).
    pub ovn_sb: Option<OvsdbRemotes>,
    /// TLS files for `ssl:` Southbound remotes, as neutron's `[ovn]` names
    /// them.
    pub ovn_sb_private_key: Option<PathBuf>,
    pub ovn_sb_certificate: Option<PathBuf>,
    pub ovn_sb_ca_cert: Option<PathBuf>,
    /// source = "neutron": the binding:host_id of this node's ports; the
    /// host name when absent.
    pub host: Option<String>,
    /// source = "neutron": how often this host's ports are listed.
    pub refresh_interval_s: u64,
    /// source = "neutron": Keystone credentials for the Neutron API.
    pub keystone: Option<KeystoneConfig>,
}

impl PortsConfig {
    /// The cross-field rules of `[ports]`.
    fn check(&self) -> Result<(), String> {
        if self.refresh_interval_s == 0 {
            return Err("refresh_interval_s must be at least 1".into());
        }
        match self.source {
            PortSourceKind::Ovn if self.ovn_sb.is_none() => {
                Err("source = \"ovn\" needs `ovn_sb`".into())
            }
            PortSourceKind::Neutron => match &self.keystone {
                None => Err("source = \"neutron\" needs a [ports.keystone] table".into()),
                Some(keystone) => keystone.check().map_err(|e| format!("ports.keystone: {e}")),
            },
            _ => Ok(()),
        }
    }

    /// The Open_vSwitch database to use, with the default for "ovn".
    pub fn ovs_or_default(&self) -> OvsdbRemote {
        self.ovs
            .clone()
            .unwrap_or_else(|| defaults::OVS_REMOTE.parse().expect("valid default remote"))
    }

    /// source = "neutron": this node's binding:host_id.
    pub fn host_or_hostname(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default()
        })
    }
}

impl Default for PortsConfig {
    fn default() -> Self {
        Self {
            source: PortSourceKind::File,
            file: PathBuf::from(defaults::INSTANCES_FILE),
            ovs: None,
            ovn_sb: None,
            ovn_sb_private_key: None,
            ovn_sb_certificate: None,
            ovn_sb_ca_cert: None,
            host: None,
            refresh_interval_s: defaults::NEUTRON_REFRESH_INTERVAL_S,
            keystone: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortSourceKind {
    /// The instances file (the embedded default).
    File,
    /// Open vSwitch and the OVN Southbound (an ML2/OVN compute node).
    Ovn,
    /// The Neutron API (an ML2/OVS or linuxbridge compute node).
    Neutron,
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// Serve metadata from the instances file.
    Local(LocalBackendConfig),
    /// Forward to Nova's metadata API like neutron-metadata-agent.
    Nova(NovaBackendConfig),
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Local(LocalBackendConfig::default())
    }
}

#[derive(Debug, Clone, Default)]
pub struct LocalBackendConfig {
    /// vendor_data.json for every instance.
    pub vendor_data: toml::Table,
    /// vendor_data2.json for every instance.
    pub vendor_data2: toml::Table,
    /// DNS servers listed in network_data.json when a port names none.
    pub dns: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone)]
pub struct NovaBackendConfig {
    /// Nova's metadata API, e.g. "http://controller:8775".
    pub url: NovaUrl,
    /// The secret shared with Nova (`[neutron] metadata_proxy_shared_secret`).
    pub shared_secret: Option<String>,
    /// A file holding the shared secret (trailing newline ignored).
    pub shared_secret_file: Option<PathBuf>,
    /// CA bundle (PEM) that verifies Nova's certificate over https.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for Nova, both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Do not verify Nova's certificate.
    pub insecure: bool,
    pub connect_timeout_s: u64,
    pub timeout_s: u64,
    /// How long a 200 from Nova is reused for the same instance and path;
    /// 0 turns the response cache off.
    pub cache_ttl_s: u64,
}

impl Config {
    /// Loads the config file; relative paths in it become relative to the
    /// file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &source)
    }

    /// Parses config text that came from `path`.
    pub fn parse(path: &Path, source: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = parse_str(path, source)?;
        let ports_span = file.ports.as_ref().map_or(0..0, Spanned::span);
        let mut ports = file.ports.map(Spanned::into_inner).unwrap_or_default();
        if let Err(message) = ports.check() {
            return Err(ConfigError::at(path, source, ports_span, message));
        }
        // Relative paths are relative to the config file's folder (an
        // absolute one stays as it is through `join`).
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        ports.file = base.join(&ports.file);
        if let Some(keystone) = &mut ports.keystone {
            keystone.rebase(base);
        }
        let mut agent = file.agent;
        agent.socket = agent.socket.map(|socket| base.join(socket));
        let identity_span = file.identity.as_ref().map_or(0..0, Spanned::span);
        let mut identity = file.identity.map(Spanned::into_inner).unwrap_or_default();
        if let Err(message) = identity.check() {
            return Err(ConfigError::at(path, source, identity_span, message));
        }
        identity.rebase(base);
        Ok(Self {
            backend: file.backend.resolve(path, source)?,
            daemon: file.daemon,
            datapath: file.datapath,
            proxy: file.proxy,
            ports,
            agent,
            tokens: file.tokens,
            rate_limit: file.rate_limit,
            metrics: file.metrics,
            identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/mdr.toml"), text)
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.datapath.host_device.0, "mdr0");
        assert!(config.datapath.interfaces[0].matches("tapa1b2c3d4-e5"));
        assert_eq!(config.datapath.nat_v4.to_string(), "100.64.0.0/10");
        assert_eq!(config.proxy.address, Ipv4Addr::new(169, 254, 169, 254));
        assert_eq!(config.proxy.port, 80);
        assert_eq!(config.proxy.max_connections_per_instance, 64);
        assert_eq!(config.ports.source, PortSourceKind::File);
        assert!(matches!(config.backend, BackendConfig::Local(_)));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[daemon]\nstate_dir = \"/x\"\n\n[proxy]\nprot = 80\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/mdr.toml:5: key `proxy.prot`: unknown field `prot`, expected one of `address`, `port`, `max_connections_per_instance`, `header_read_timeout_s`"
        );
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let err = parse("[datapath]\nnat_v4 = \"100.64.0.1/10\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/mdr.toml:2: key `datapath.nat_v4`: "),
            "{text}"
        );
        assert!(text.contains("host bits"), "{text}");
        let err = parse("[proxy]\naddress = \"169.254.169\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/mdr.toml:2: key `proxy.address`: "),
            "{err}"
        );
        let err = parse("[datapath]\nhost_device = \"a-very-long-device-name\"\n").unwrap_err();
        assert!(err.to_string().contains("datapath.host_device"), "{err}");
    }

    #[test]
    fn unknown_backend_type_is_an_error() {
        let err = parse("[backend]\ntype = \"carrier-pigeon\"\n").unwrap_err();
        assert!(err.to_string().contains(":2: key `backend.type`"), "{err}");
    }

    #[test]
    fn nova_backend_keys_are_checked() {
        let config = parse(
            "[backend]\ntype = \"nova\"\nurl = \"https://nova:8775\"\nshared_secret = \"s\"\n",
        )
        .unwrap();
        let BackendConfig::Nova(nova) = config.backend else {
            panic!("not nova");
        };
        assert_eq!((nova.connect_timeout_s, nova.timeout_s), (5, 60));
        let err =
            parse("[backend]\ntype = \"nova\"\nurl = \"ftp://nova\"\nshared_secret = \"s\"\n")
                .unwrap_err();
        assert!(err.to_string().contains(":3: key `backend.url`"), "{err}");
        let err = parse("[backend]\ntype = \"local\"\nurl = \"http://nova\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/mdr.toml:3: key `backend.url`: `url` applies to type = \"nova\" only"
        );
        let err = parse("[backend]\ntype = \"nova\"\nurl = \"http://nova\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains(":2: key `backend.type`: give exactly one"),
            "{err}"
        );
    }

    #[test]
    fn every_value_check_names_the_line_of_its_own_key() {
        // A comment naming a key must not be taken for it (the checks
        // once searched the text for the key's name).
        let err = parse(
            "# hop_limit = 0 would be refused\n[tokens]\nmode = \"optional\"\nhop_limit = 0\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/mdr.toml:4: key `tokens.hop_limit`: must be 1 to 255"
        );
        let err = parse("[datapath]\n# host_mtu below\nhost_mtu = 1000\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/mdr.toml:3: key `datapath.host_mtu`: 1000 is not an MTU between 1280 and 65535"
        );
        let err =
            parse("[ports]\nsource = \"ovn\"\novn_sb = \"tcp:sb:6642,udp:x:1\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "/etc/mdr.toml:3: key `ports.ovn_sb`: `udp:x:1` is not an OVSDB remote"
            ),
            "{err}"
        );
        let err = parse("[ports]\novs = \"unix:\"\n").unwrap_err();
        assert!(err.to_string().contains(":2: key `ports.ovs`"), "{err}");
    }

    #[test]
    fn cross_field_checks_name_their_table() {
        let err = parse("[proxy]\nport = 80\n\n[ports]\nsource = \"ovn\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/mdr.toml:4: key `ports`"), "{text}");
        assert!(text.contains("needs `ovn_sb`"), "{text}");
        let config =
            parse("[ports]\nsource = \"ovn\"\novn_sb = \"ssl:a:6642,ssl:b:6642\"\n").unwrap();
        assert_eq!(config.ports.ovn_sb.as_ref().unwrap().0.len(), 2);
        assert_eq!(
            config.ports.ovs_or_default().to_string(),
            defaults::OVS_REMOTE
        );
    }

    #[test]
    fn the_neutron_source_takes_keystoneauths_options_and_says_what_is_missing() {
        let text = "[ports]\nsource = \"neutron\"\nhost = \"compute-1\"\n\n[ports.keystone]\n\
                    auth_url = \"https://keystone.example:5000/v3\"\nusername = \"neutron\"\n\
                    password_file = \"keystone-password\"\nproject_name = \"service\"\n\
                    region_name = \"RegionOne\"\nvalid_interfaces = [\"internal\", \"public\"]\n";
        let config = parse(text).unwrap();
        let keystone = config.ports.keystone.as_ref().unwrap();
        assert_eq!(keystone.user_domain_name, "Default");
        assert_eq!(
            keystone.password_file.as_deref(),
            Some(Path::new("/etc/keystone-password")),
            "relative to the config file"
        );
        assert_eq!(config.ports.refresh_interval_s, 30);
        assert_eq!(config.ports.host_or_hostname(), "compute-1");
        let err = parse(&text.replace("password_file = \"keystone-password\"\n", "")).unwrap_err();
        assert!(
            err.to_string().contains("key `ports`")
                && err.to_string().contains("`password` and `password_file`"),
            "{err}"
        );
        let err = parse("[ports]\nsource = \"neutron\"\n").unwrap_err();
        assert!(
            err.to_string().contains("needs a [ports.keystone] table"),
            "{err}"
        );
        let err =
            parse(&text.replace("internal\", \"public", "internal\", \"private")).unwrap_err();
        assert!(
            err.to_string().contains("ports.keystone.valid_interfaces"),
            "{err}"
        );
        let appcred = "[ports]\nsource = \"neutron\"\n[ports.keystone]\nauth_url = \"http://k/v3\"\n\
                       auth_type = \"v3applicationcredential\"\napplication_credential_id = \"abc\"\n\
                       application_credential_secret = \"s3cret\"\n";
        let config = parse(appcred).unwrap();
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "secrets never shown"
        );
    }

    #[test]
    fn nat_range_addresses() {
        let net: Ipv4Net = "100.64.0.0/10".parse().unwrap();
        assert_eq!(net.size(), 1 << 22);
        assert_eq!(net.nth(5), Some(Ipv4Addr::new(100, 64, 0, 5)));
        assert_eq!(net.nth(1 << 22), None);
    }
}
