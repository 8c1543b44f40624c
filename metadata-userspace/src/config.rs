//! The daemon's configuration file (TOML).
//!
//! Unknown keys and bad values are errors that name the file, the line and
//! the key, so an operator can fix a typo without reading the source.

use std::{
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

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
    pub datapath: DatapathSection,
    pub proxy: ProxyConfig,
    pub ports: PortsConfig,
    pub agent: AgentConfig,
    pub tokens: TokensConfig,
    pub rate_limit: RateLimitConfig,
    pub metrics: MetricsConfig,
    pub backend: BackendConfig,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    daemon: DaemonConfig,
    datapath: DatapathSection,
    proxy: ProxyConfig,
    ports: PortsConfig,
    agent: AgentConfig,
    tokens: TokensConfig,
    rate_limit: RateLimitConfig,
    metrics: MetricsConfig,
    backend: BackendSection,
}

/// `[backend]` as written: one flat table whose `type` says which keys
/// apply. Parsed flat rather than as a tagged enum so that every error
/// keeps the line of the key it is about.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSection {
    #[serde(rename = "type")]
    kind: Option<Spanned<BackendKind>>,
    // local
    vendor_data: Option<Spanned<toml::Table>>,
    vendor_data2: Option<Spanned<toml::Table>>,
    dns: Option<Spanned<Vec<std::net::IpAddr>>>,
    // nova
    url: Option<Spanned<NovaUrl>>,
    shared_secret: Option<Spanned<String>>,
    shared_secret_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    insecure: Option<Spanned<bool>>,
    connect_timeout_s: Option<Spanned<u64>>,
    timeout_s: Option<Spanned<u64>>,
    cache_ttl_s: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    Local,
    Nova,
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
            state_dir: PathBuf::from("/var/lib/metadata-redirector"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathSection {
    /// Glob patterns of VM-facing devices.
    pub interfaces: Vec<GlobPattern>,
    /// The host end of the veth pair the proxy listens on.
    pub host_device: DeviceName,
    /// MTU of the host device: at least the largest tenant MTU, or larger
    /// guest frames could not be redirected into it.
    pub host_mtu: u32,
    /// Range the (tap, guest address) slots are NATed into.
    pub nat_v4: Ipv4Net,
    /// The IPv6 /96 the (tap, guest IPv6) slots are NATed into; the proxy
    /// listens on its address ::ffff:fffe.
    pub nat_v6: Ipv6Net96,
    /// bpffs folder where maps and links are pinned.
    pub bpffs: PathBuf,
}

impl Default for DatapathSection {
    fn default() -> Self {
        Self {
            interfaces: vec![GlobPattern::from_str("tap*").expect("valid default pattern")],
            host_device: DeviceName("mdr0".into()),
            host_mtu: 9000,
            nat_v4: Ipv4Net::from_str("100.64.0.0/10").expect("valid default range"),
            nat_v6: Ipv6Net96::from_str("fd00:a9fe:6464::/96").expect("valid default range"),
            bpffs: PathBuf::from("/sys/fs/bpf/metadata-redirector"),
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
            address: Ipv4Addr::new(169, 254, 169, 254),
            port: 80,
            max_connections_per_instance: 64,
            header_read_timeout_s: 30,
        }
    }
}

/// Prometheus metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A host-only address: never the metadata address. Off when absent.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9780))),
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
    /// Generous: a cloud-init crawl of both trees is a few dozen requests
    /// in a second or two.
    fn default() -> Self {
        Self {
            enabled: false,
            base_window_s: 10,
            base_requests: 300,
            burst_window_s: 1,
            burst_requests: 100,
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
    pub hop_limit: u8,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            mode: TokenMode::Optional,
            hop_limit: 1,
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
    /// source = "ovn": the local Open_vSwitch database.
    pub ovs: String,
    /// source = "ovn": the OVN Southbound, one or more comma-separated
    /// remotes (the members of a cluster).
    pub ovn_sb: Option<String>,
    /// TLS files for `ssl:` Southbound remotes, as neutron's `[ovn]` names
    /// them.
    pub ovn_sb_private_key: Option<PathBuf>,
    pub ovn_sb_certificate: Option<PathBuf>,
    pub ovn_sb_ca_cert: Option<PathBuf>,
}

impl Default for PortsConfig {
    fn default() -> Self {
        Self {
            source: PortSourceKind::File,
            file: PathBuf::from("instances.toml"),
            ovs: "unix:/run/openvswitch/db.sock".into(),
            ovn_sb: None,
            ovn_sb_private_key: None,
            ovn_sb_certificate: None,
            ovn_sb_ca_cert: None,
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

/// A key of `[backend]` that was given, with where.
type GivenKey = (&'static str, Option<std::ops::Range<usize>>);

fn given<T>(key: &'static str, value: Option<&Spanned<T>>) -> GivenKey {
    (key, value.map(Spanned::span))
}

impl BackendSection {
    /// What the section means, or an error naming the offending key.
    fn resolve(self, path: &Path, source: &str) -> Result<BackendConfig, ConfigError> {
        let kind = self
            .kind
            .as_ref()
            .map_or(BackendKind::Local, |k| *k.get_ref());
        let (wrong, other) = match kind {
            BackendKind::Local => (self.nova_keys().to_vec(), "nova"),
            BackendKind::Nova => (self.local_keys().to_vec(), "local"),
        };
        if let Some((key, Some(span))) = wrong.into_iter().find(|(_, s)| s.is_some()) {
            let message = format!("`{key}` applies to type = \"{other}\" only");
            return Err(ConfigError::at(path, source, span, message));
        }
        match kind {
            BackendKind::Local => Ok(BackendConfig::Local(self.local())),
            BackendKind::Nova => self.nova(path, source).map(BackendConfig::Nova),
        }
    }

    fn nova_keys(&self) -> [GivenKey; 10] {
        [
            given("url", self.url.as_ref()),
            given("shared_secret", self.shared_secret.as_ref()),
            given("shared_secret_file", self.shared_secret_file.as_ref()),
            given("ca_file", self.ca_file.as_ref()),
            given("client_cert", self.client_cert.as_ref()),
            given("client_key", self.client_key.as_ref()),
            given("insecure", self.insecure.as_ref()),
            given("connect_timeout_s", self.connect_timeout_s.as_ref()),
            given("timeout_s", self.timeout_s.as_ref()),
            given("cache_ttl_s", self.cache_ttl_s.as_ref()),
        ]
    }

    fn local_keys(&self) -> [GivenKey; 3] {
        [
            given("vendor_data", self.vendor_data.as_ref()),
            given("vendor_data2", self.vendor_data2.as_ref()),
            given("dns", self.dns.as_ref()),
        ]
    }

    fn local(self) -> LocalBackendConfig {
        LocalBackendConfig {
            vendor_data: self
                .vendor_data
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            vendor_data2: self
                .vendor_data2
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            dns: self.dns.map(Spanned::into_inner).unwrap_or_default(),
        }
    }

    fn nova(self, path: &Path, source: &str) -> Result<NovaBackendConfig, ConfigError> {
        let kind_span = self.kind.as_ref().map_or(0..0, Spanned::span);
        let err = |span, message: &str| Err(ConfigError::at(path, source, span, message.into()));
        let Some(url) = self.url else {
            return err(kind_span, "type = \"nova\" needs `url`");
        };
        if self.shared_secret.is_some() == self.shared_secret_file.is_some() {
            return err(
                kind_span,
                "give exactly one of `shared_secret` and `shared_secret_file`",
            );
        }
        if let (Some(cert), None) | (None, Some(cert)) = (&self.client_cert, &self.client_key) {
            return err(
                cert.span(),
                "give both `client_cert` and `client_key`, or neither",
            );
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let file = |p: Option<Spanned<PathBuf>>| p.map(|p| base.join(p.into_inner()));
        Ok(NovaBackendConfig {
            url: url.into_inner(),
            shared_secret: self.shared_secret.map(Spanned::into_inner),
            shared_secret_file: file(self.shared_secret_file),
            ca_file: file(self.ca_file),
            client_cert: file(self.client_cert),
            client_key: file(self.client_key),
            insecure: self.insecure.is_some_and(|i| *i.get_ref()),
            connect_timeout_s: self.connect_timeout_s.map_or(5, Spanned::into_inner),
            timeout_s: self.timeout_s.map_or(60, Spanned::into_inner),
            // Nova's own `metadata_cache_expiration` default.
            cache_ttl_s: self.cache_ttl_s.map_or(15, Spanned::into_inner),
        })
    }
}

/// An http or https URL with no path beyond "/".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NovaUrl(pub http::Uri);

impl FromStr for NovaUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let uri: http::Uri = text
            .parse()
            .map_err(|err| format!("`{text}` is not a URL: {err}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(format!("`{text}`: the scheme must be http or https")),
        }
        if uri.host().is_none() {
            return Err(format!("`{text}` has no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("`{text}`: give only scheme, host and port"));
        }
        Ok(Self(uri))
    }
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
        // Relative paths are relative to the config file's folder (an
        // absolute one stays as it is through `join`).
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut config = Self {
            backend: file.backend.resolve(path, source)?,
            daemon: file.daemon,
            datapath: file.datapath,
            proxy: file.proxy,
            ports: file.ports,
            agent: file.agent,
            tokens: file.tokens,
            rate_limit: file.rate_limit,
            metrics: file.metrics,
        };
        config.ports.file = base.join(&config.ports.file);
        if config.ports.source == PortSourceKind::Ovn && config.ports.ovn_sb.is_none() {
            let at = source.find("source").unwrap_or(0);
            let message = "source = \"ovn\" needs `ovn_sb`".to_owned();
            return Err(ConfigError::at(path, source, at..at, message));
        }
        config.agent.socket = config.agent.socket.map(|socket| base.join(socket));
        if config.tokens.hop_limit == 0 {
            let at = source.find("hop_limit").unwrap_or(0);
            return Err(ConfigError::at(
                path,
                source,
                at..at,
                "must be 1 to 255".into(),
            ));
        }
        if config.datapath.host_mtu < 1280 || config.datapath.host_mtu > 65_535 {
            let at = source.find("host_mtu").unwrap_or(0);
            return Err(ConfigError::at(
                path,
                source,
                at..at,
                format!(
                    "{} is not an MTU between 1280 and 65535",
                    config.datapath.host_mtu
                ),
            ));
        }
        Ok(config)
    }
}

/// A network device name the kernel accepts (1 to 15 bytes, no '/', no
/// whitespace, not "." or "..").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceName(pub String);

impl FromStr for DeviceName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let valid = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "`{name}` is not a valid device name (1-15 bytes, no '/', ':' or spaces)"
            ))
        }
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A glob pattern matched against device names.
#[derive(Debug, Clone)]
pub struct GlobPattern(glob::Pattern);

impl GlobPattern {
    pub fn matches(&self, name: &str) -> bool {
        self.0.matches(name)
    }
}

impl FromStr for GlobPattern {
    type Err = String;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        glob::Pattern::new(pattern)
            .map(Self)
            .map_err(|err| format!("`{pattern}` is not a glob pattern: {err}"))
    }
}

/// An IPv4 prefix such as "100.64.0.0/10".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    /// Number of addresses in the prefix.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// The `n`th address of the prefix.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        (u64::from(n) < self.size()).then(|| Ipv4Addr::from(self.addr.to_bits() + n))
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not an IPv4 prefix like 100.64.0.0/10");
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if prefix_len > 30 {
            return Err(format!("`{text}`: the prefix must be /30 or shorter"));
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        if addr.to_bits() & !mask != 0 {
            return Err(format!("`{text}` has host bits set"));
        }
        Ok(Self { addr, prefix_len })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An IPv6 /96 such as "fd00:a9fe:6464::/96".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Net96 {
    pub prefix: std::net::Ipv6Addr,
}

impl Ipv6Net96 {
    /// The proxy's IPv6 address (never a slot: slots stay far below it).
    pub fn proxy(&self) -> std::net::Ipv6Addr {
        let prefix = metadata_common::Ipv6Be(self.prefix.octets());
        let addr = metadata_common::slot_addr_v6(prefix, metadata_common::PROXY_SLOT_V6);
        std::net::Ipv6Addr::from(addr.0)
    }
}

impl FromStr for Ipv6Net96 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not an IPv6 /96 like fd00:a9fe:6464::/96");
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let prefix: std::net::Ipv6Addr = addr.parse().map_err(|_| bad())?;
        if len != "96" {
            return Err(format!("`{text}`: the IPv6 NAT range must be a /96"));
        }
        if prefix.to_bits() & 0xffff_ffff != 0 {
            return Err(format!("`{text}` has host bits set"));
        }
        Ok(Self { prefix })
    }
}

impl fmt::Display for Ipv6Net96 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/96", self.prefix)
    }
}

/// Deserializes any `FromStr` type whose error is a message, from a string
/// (so the message lands in the error with the file, line and key).
macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(de::Error::custom)
            }
        }
    )*};
}
pub(crate) use deserialize_from_str;
deserialize_from_str!(DeviceName, GlobPattern, Ipv4Net, Ipv6Net96, NovaUrl);

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
    fn nat_range_addresses() {
        let net: Ipv4Net = "100.64.0.0/10".parse().unwrap();
        assert_eq!(net.size(), 1 << 22);
        assert_eq!(net.nth(5), Some(Ipv4Addr::new(100, 64, 0, 5)));
        assert_eq!(net.nth(1 << 22), None);
    }
}
