//! Configuration values that validate themselves on deserialization, so
//! that a bad one is reported with the file, line and key it came from.

use std::{fmt, net::Ipv4Addr, num::NonZeroU8, path::PathBuf, str::FromStr};

use serde::{Deserialize, Deserializer, de};

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

/// An http or https URL with no path beyond "/".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NovaUrl(pub http::Uri);

impl FromStr for NovaUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let HttpUrl(uri) = text.parse()?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("`{text}`: give only scheme, host and port"));
        }
        Ok(Self(uri))
    }
}

/// An http or https URL, path allowed (Keystone's is ".../v3").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(pub http::Uri);

impl FromStr for HttpUrl {
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
        Ok(Self(uri))
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A password or key: never shown by `Debug` (so no log line or error
/// carries it).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The IP TTL / IPv6 hop limit of token responses: 1 to 255.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopLimit(NonZeroU8);

impl HopLimit {
    pub const fn new(hops: u8) -> Option<Self> {
        match NonZeroU8::new(hops) {
            Some(hops) => Some(Self(hops)),
            None => None,
        }
    }

    pub fn get(self) -> u8 {
        self.0.get()
    }
}

impl<'de> Deserialize<'de> for HopLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hops = u8::deserialize(deserializer)?;
        Self::new(hops).ok_or_else(|| de::Error::custom("must be 1 to 255"))
    }
}

/// How many new connections a second a tap may open to the metadata
/// service, sustained (the datapath's per-tap budget): 0 (no budget) to
/// 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRate(u32);

impl ConnectionRate {
    pub const MAX: u32 = 1_000_000;

    pub const fn new(per_second: u32) -> Option<Self> {
        if per_second <= Self::MAX {
            Some(Self(per_second))
        } else {
            None
        }
    }

    pub fn per_second(self) -> u32 {
        self.0
    }

    /// One connection per this many nanoseconds, as the datapath keeps
    /// it; 0 when there is no budget.
    pub fn interval_ns(self) -> u32 {
        1_000_000_000u32.checked_div(self.0).unwrap_or(0)
    }
}

impl<'de> Deserialize<'de> for ConnectionRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rate = u32::deserialize(deserializer)?;
        Self::new(rate).ok_or_else(|| {
            de::Error::custom(format!(
                "{rate} is not a connection rate between 0 (no budget) and {} a second",
                Self::MAX
            ))
        })
    }
}

/// How many new connections a tap may open at once over its sustained
/// rate: 1 to 65536.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBurst(u32);

impl ConnectionBurst {
    pub const MAX: u32 = 65_536;

    pub const fn new(connections: u32) -> Option<Self> {
        if connections >= 1 && connections <= Self::MAX {
            Some(Self(connections))
        } else {
            None
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for ConnectionBurst {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let burst = u32::deserialize(deserializer)?;
        Self::new(burst).ok_or_else(|| {
            de::Error::custom(format!(
                "{burst} is not a connection burst between 1 and {}",
                Self::MAX
            ))
        })
    }
}

/// The host device's MTU: 1280 (IPv6's minimum) to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMtu(u32);

impl HostMtu {
    pub const MIN: u32 = 1280;
    pub const MAX: u32 = 65_535;

    pub const fn new(mtu: u32) -> Option<Self> {
        if mtu >= Self::MIN && mtu <= Self::MAX {
            Some(Self(mtu))
        } else {
            None
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for HostMtu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mtu = u32::deserialize(deserializer)?;
        Self::new(mtu).ok_or_else(|| {
            de::Error::custom(format!(
                "{mtu} is not an MTU between {} and {}",
                Self::MIN,
                Self::MAX
            ))
        })
    }
}

/// Where an OVSDB server listens, as ovs-vsctl and neutron write it:
/// `unix:PATH`, `tcp:HOST:PORT` or `ssl:HOST:PORT` (IPv6 hosts in
/// brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OvsdbRemote {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Ssl { host: String, port: u16 },
}

impl fmt::Display for OvsdbRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracketed = |host: &str| {
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_owned()
            }
        };
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp { host, port } => write!(f, "tcp:{}:{port}", bracketed(host)),
            Self::Ssl { host, port } => write!(f, "ssl:{}:{port}", bracketed(host)),
        }
    }
}

impl FromStr for OvsdbRemote {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{text}` is not an OVSDB remote like unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT"
            )
        };
        let (scheme, rest) = text.trim().split_once(':').ok_or_else(bad)?;
        if scheme == "unix" {
            return if rest.is_empty() {
                Err(bad())
            } else {
                Ok(Self::Unix(PathBuf::from(rest)))
            };
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        match scheme {
            "tcp" => Ok(Self::Tcp { host, port }),
            "ssl" => Ok(Self::Ssl { host, port }),
            _ => Err(bad()),
        }
    }
}

/// A comma-separated, non-empty list of remotes: a clustered database's
/// members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsdbRemotes(pub Vec<OvsdbRemote>);

impl FromStr for OvsdbRemotes {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let remotes = text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if remotes.is_empty() {
            return Err("no remote given".into());
        }
        Ok(Self(remotes))
    }
}

impl fmt::Display for OvsdbRemotes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&texts.join(","))
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
deserialize_from_str!(
    DeviceName,
    GlobPattern,
    Ipv4Net,
    Ipv6Net96,
    NovaUrl,
    HttpUrl,
    OvsdbRemote,
    OvsdbRemotes
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_read_as_ovs_vsctl_writes_them() {
        let list: OvsdbRemotes =
            "ssl:192.0.2.10:6642, tcp:[2001:db8::1]:6642,unix:/run/ovn/sb.sock"
                .parse()
                .unwrap();
        assert_eq!(
            list.0,
            [
                OvsdbRemote::Ssl {
                    host: "192.0.2.10".into(),
                    port: 6642
                },
                OvsdbRemote::Tcp {
                    host: "2001:db8::1".into(),
                    port: 6642
                },
                OvsdbRemote::Unix("/run/ovn/sb.sock".into()),
            ]
        );
        assert_eq!(
            list.to_string(),
            "ssl:192.0.2.10:6642,tcp:[2001:db8::1]:6642,unix:/run/ovn/sb.sock"
        );
        for bad in ["", "tcp:host", "udp:h:1", "unix:", "tcp::5", "tcp:h:99999"] {
            assert!(bad.parse::<OvsdbRemotes>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_show() {
        let secret = Secret::new("hunter2".into());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn numbers_with_a_range_refuse_what_is_outside_it() {
        assert_eq!(HopLimit::new(0), None);
        assert_eq!(ConnectionRate::new(1_000_001), None);
        assert_eq!(
            ConnectionRate::new(0).map(ConnectionRate::interval_ns),
            Some(0)
        );
        assert_eq!(
            ConnectionRate::new(50).map(ConnectionRate::interval_ns),
            Some(20_000_000)
        );
        assert_eq!(ConnectionBurst::new(0), None);
        assert_eq!(ConnectionBurst::new(65_537), None);
        assert_eq!(HopLimit::new(2).map(HopLimit::get), Some(2));
        assert_eq!(HostMtu::new(1279), None);
        assert_eq!(HostMtu::new(65_536), None);
        assert_eq!(HostMtu::new(9000).map(HostMtu::get), Some(9000));
    }
}
