//! Port records: which VM sits behind which tap, with which MAC and
//! addresses, and the instance data the local backend serves; and the
//! instances file they are written in (`[ports] source = "file"`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    path::Path,
    str::FromStr,
    sync::Arc,
};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

use metadata_common::MacAddr;

use crate::config::{ConfigError, DeviceName, TokenMode, parse_file};

/// One VM, as the instances file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub hostname: String,
    pub availability_zone: String,
    pub launch_index: u32,
    pub user_data: Option<String>,
    pub public_keys: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    /// Files injected through meta_data.json's "files" (path, content).
    pub files: Vec<(String, String)>,
    pub ports: Vec<Port>,
    /// Session tokens for this instance; the `[tokens]` default when `None`.
    pub token_mode: Option<TokenMode>,
}

impl Instance {
    /// What a live port source knows of an instance: its id, project and
    /// ports, and nothing the guest wrote (the Nova backend answers the
    /// rest). Name and hostname are the id; session tokens follow the
    /// `[tokens]` default.
    pub fn from_ports(id: String, project_id: String, ports: Vec<Port>) -> Self {
        Self {
            name: id.clone(),
            hostname: id.clone(),
            id,
            project_id,
            availability_zone: "nova".into(),
            launch_index: 0,
            user_data: None,
            public_keys: BTreeMap::new(),
            meta: BTreeMap::new(),
            files: Vec::new(),
            ports,
            token_mode: None,
        }
    }
}

/// One of a VM's network ports: the tap it is plugged into and the
/// addresses it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub device: DeviceName,
    pub mac: MacAddr,
    pub network_id: String,
    pub ips: Vec<PortAddress>,
    /// The Neutron router serving the port's subnet, for agent mode's
    /// X-Neutron-Router-ID lookups.
    pub router_id: Option<String>,
    /// Default gateway of the port's subnet (network_data.json route).
    pub gateway: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub dns: Vec<IpAddr>,
    /// The address a guest's route to 169.254.169.254 goes via, when it is
    /// not on-link (ML2/OVN's DHCP option 121 names the network's metadata
    /// port): the program answers ARP for it on this port's tap.
    pub metadata_nexthop: Option<Ipv4Addr>,
}

impl Port {
    /// The port's fixed IPv6 addresses and its EUI-64 link-local address
    /// (what a guest uses for fe80::a9fe:a9fe).
    pub fn ipv6(&self) -> Vec<std::net::Ipv6Addr> {
        let mut addrs: Vec<std::net::Ipv6Addr> = self
            .ips
            .iter()
            .filter_map(|ip| match ip.addr {
                IpAddr::V6(addr) => Some(addr),
                IpAddr::V4(_) => None,
            })
            .collect();
        let link_local = std::net::Ipv6Addr::from(self.mac.eui64_link_local().0);
        if !addrs.contains(&link_local) {
            addrs.push(link_local);
        }
        addrs
    }

    /// The port's fixed IPv4 addresses.
    pub fn ipv4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ips.iter().filter_map(|ip| match ip.addr {
            IpAddr::V4(addr) => Some(addr),
            IpAddr::V6(_) => None,
        })
    }
}

/// A fixed address of a port, optionally with its prefix length
/// ("10.0.0.5" or "10.0.0.5/24").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAddress {
    pub addr: IpAddr,
    pub prefix_len: Option<u8>,
}

impl FromStr for PortAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not an IP address (optionally with /prefix)");
        let (addr, prefix_len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len.is_some_and(|len| len > max) {
            return Err(bad());
        }
        Ok(Self { addr, prefix_len })
    }
}

crate::config::deserialize_from_str!(PortAddress);

/// The instances file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesFile {
    #[serde(default)]
    instance: Vec<InstanceRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceRecord {
    id: Spanned<String>,
    project_id: String,
    name: Option<String>,
    hostname: Option<String>,
    #[serde(default = "default_availability_zone")]
    availability_zone: String,
    #[serde(default)]
    launch_index: u32,
    user_data: Option<String>,
    #[serde(default)]
    public_keys: BTreeMap<String, String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<FileRecord>,
    #[serde(default, rename = "port")]
    ports: Vec<PortRecord>,
    metadata_tokens: Option<TokenMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecord {
    path: String,
    content: String,
}

fn default_availability_zone() -> String {
    "nova".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRecord {
    device: Spanned<DeviceName>,
    mac: MacAddr,
    network_id: String,
    #[serde(default)]
    ips: Vec<Spanned<PortAddress>>,
    router_id: Option<String>,
    gateway: Option<IpAddr>,
    mtu: Option<u32>,
    #[serde(default)]
    dns: Vec<IpAddr>,
    metadata_nexthop: Option<Ipv4Addr>,
}

/// The instances file's consistency rules, checked record by record with
/// the file, line and key of the first record that breaks one.
struct RecordCheck<'a> {
    path: &'a Path,
    source: &'a str,
    ids: HashSet<String>,
    devices: HashSet<String>,
    /// A guest address may appear once per tap: it is the datapath key.
    addresses: HashSet<(String, IpAddr)>,
}

impl RecordCheck<'_> {
    fn error(&self, span: std::ops::Range<usize>, message: String) -> ConfigError {
        ConfigError::at(self.path, self.source, span, message)
    }

    fn instance(&mut self, record: InstanceRecord) -> Result<Instance, ConfigError> {
        let id_span = record.id.span();
        let id = record.id.into_inner();
        if id.trim().is_empty() {
            return Err(self.error(id_span, "must not be empty".into()));
        }
        if !self.ids.insert(id.clone()) {
            return Err(self.error(id_span, format!("instance `{id}` is listed twice")));
        }
        let ports = record
            .ports
            .into_iter()
            .map(|port| self.port(port))
            .collect::<Result<Vec<_>, _>>()?;
        let name = record.name.unwrap_or_else(|| id.clone());
        Ok(Instance {
            hostname: record.hostname.unwrap_or_else(|| name.clone()),
            name,
            id,
            project_id: record.project_id,
            availability_zone: record.availability_zone,
            launch_index: record.launch_index,
            user_data: record.user_data,
            public_keys: record.public_keys,
            meta: record.meta,
            files: record
                .files
                .into_iter()
                .map(|f| (f.path, f.content))
                .collect(),
            ports,
            token_mode: record.metadata_tokens,
        })
    }

    fn port(&mut self, port: PortRecord) -> Result<Port, ConfigError> {
        let device_span = port.device.span();
        let device = port.device.into_inner();
        if !self.devices.insert(device.0.clone()) {
            let message = format!("device `{device}` belongs to more than one port");
            return Err(self.error(device_span, message));
        }
        let mut ips = Vec::new();
        for ip in port.ips {
            let span = ip.span();
            let ip = ip.into_inner();
            if !self.addresses.insert((device.0.clone(), ip.addr)) {
                let message = format!("address {} is listed twice on `{device}`", ip.addr);
                return Err(self.error(span, message));
            }
            ips.push(ip);
        }
        Ok(Port {
            device,
            mac: port.mac,
            network_id: port.network_id,
            ips,
            router_id: port.router_id,
            gateway: port.gateway,
            mtu: port.mtu,
            dns: port.dns,
            metadata_nexthop: port.metadata_nexthop,
        })
    }
}

/// All port records, indexed the ways the daemon looks them up.
#[derive(Debug, Default)]
pub struct PortIndex {
    instances: Vec<Arc<Instance>>,
    by_device: HashMap<String, (Arc<Instance>, usize)>,
}

impl PortIndex {
    /// Whether `other` holds the same records (in the same order).
    pub fn same_records(&self, other: &Self) -> bool {
        self.instances.len() == other.instances.len()
            && self
                .instances
                .iter()
                .zip(&other.instances)
                .all(|(a, b)| a == b)
    }

    /// Reads and checks the instances file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (file, source): (InstancesFile, String) = parse_file(path)?;
        Self::from_records(path, &source, file)
    }

    /// Parses instances-file text that came from `path`.
    pub fn parse(path: &Path, source: &str) -> Result<Self, ConfigError> {
        let file: InstancesFile = crate::config::parse_str(path, source)?;
        Self::from_records(path, source, file)
    }

    fn from_records(path: &Path, source: &str, file: InstancesFile) -> Result<Self, ConfigError> {
        let mut check = RecordCheck {
            path,
            source,
            ids: HashSet::new(),
            devices: HashSet::new(),
            addresses: HashSet::new(),
        };
        let instances = file
            .instance
            .into_iter()
            .map(|record| check.instance(record))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_instances(instances))
    }

    /// The index of `instances`, whose devices are distinct (a port source
    /// checks that before).
    pub fn from_instances(instances: Vec<Instance>) -> Self {
        let mut index = Self::default();
        for instance in instances {
            let instance = Arc::new(instance);
            for (i, port) in instance.ports.iter().enumerate() {
                index
                    .by_device
                    .insert(port.device.0.clone(), (Arc::clone(&instance), i));
            }
            index.instances.push(instance);
        }
        index
    }

    /// Every instance.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().map(AsRef::as_ref)
    }

    /// Every device with a port record, with its instance.
    pub fn devices(&self) -> impl Iterator<Item = (&str, &Instance)> {
        self.by_device
            .iter()
            .map(|(device, (instance, _))| (device.as_str(), instance.as_ref()))
    }

    /// How many devices have a port record.
    pub fn device_count(&self) -> usize {
        self.by_device.len()
    }

    /// The instance and port plugged into `device`, if any.
    pub fn by_device(&self, device: &str) -> Option<(&Arc<Instance>, &Port)> {
        self.by_device
            .get(device)
            .map(|(instance, i)| (instance, &instance.ports[*i]))
    }

    /// The instance and port index with fixed address `ip` on the network
    /// (or behind the router) named, as neutron-metadata-agent finds them.
    pub fn by_network_address(
        &self,
        network_id: Option<&str>,
        router_id: Option<&str>,
        ip: IpAddr,
    ) -> Option<(&Arc<Instance>, usize)> {
        self.instances.iter().find_map(|instance| {
            let index = instance.ports.iter().position(|port| {
                let on_network = match (network_id, router_id) {
                    (Some(net), _) => port.network_id == net,
                    (None, Some(router)) => port.router_id.as_deref() == Some(router),
                    (None, None) => false,
                };
                on_network && port.ips.iter().any(|a| a.addr == ip)
            })?;
            Some((instance, index))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r##"
[[instance]]
id = "4f0c6f3e-8d1b-4a39-9a53-0c9f2d7e1b11"
project_id = "a1b2c3d4e5f6"
name = "vm-a"
user_data = "#cloud-config\n"
public_keys = { default = "ssh-ed25519 AAAA demo" }
meta = { role = "web" }

[[instance.port]]
device = "tapa1b2c3d4-e5"
mac = "fa:16:3e:11:22:33"
network_id = "0b9c5d1e"
ips = ["10.0.0.5", "10.0.1.5/24", "fd00::5"]
"##;

    fn parse(text: &str) -> Result<PortIndex, ConfigError> {
        PortIndex::parse(Path::new("instances.toml"), text)
    }

    #[test]
    fn example_record_parses_with_defaults() {
        let index = parse(EXAMPLE).unwrap();
        let (instance, port) = index.by_device("tapa1b2c3d4-e5").unwrap();
        assert_eq!(instance.name, "vm-a");
        assert_eq!(instance.hostname, "vm-a");
        assert_eq!(instance.availability_zone, "nova");
        assert_eq!(port.mac.to_string(), "fa:16:3e:11:22:33");
        let v4: Vec<_> = port.ipv4().collect();
        assert_eq!(v4, [Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 1, 5)]);
        assert_eq!(port.ips[1].prefix_len, Some(24));
    }

    #[test]
    fn ipv6_sources_include_the_eui64_link_local_address() {
        let index = parse(EXAMPLE).unwrap();
        let (_, port) = index.by_device("tapa1b2c3d4-e5").unwrap();
        let v6: Vec<String> = port.ipv6().iter().map(ToString::to_string).collect();
        assert_eq!(v6, ["fd00::5", "fe80::f816:3eff:fe11:2233"]);
    }

    #[test]
    fn same_records_tells_a_changed_index_from_an_equal_one() {
        let a = parse(EXAMPLE).unwrap();
        assert!(a.same_records(&parse(EXAMPLE).unwrap()));
        let changed = parse(&EXAMPLE.replace("fd00::5", "fd00::6")).unwrap();
        assert!(!a.same_records(&changed));
        assert!(!a.same_records(&PortIndex::default()));
    }

    #[test]
    fn bad_mac_names_line_and_key() {
        let text = EXAMPLE.replace("fa:16:3e:11:22:33", "fa:16:3e:11:22");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("instances.toml:12: key `instance.port.mac`: "),
            "{err}"
        );
    }

    #[test]
    fn missing_id_and_unknown_key_are_errors() {
        let err = parse("[[instance]]\nproject_id = \"p\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `id`"), "{err}");
        let err = parse("[[instance]]\nid = \"i\"\nproject_id = \"p\"\nflavour = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("instances.toml:4: key `instance.flavour`"),
            "{err}"
        );
    }

    #[test]
    fn a_device_belongs_to_one_port() {
        let text = format!("{EXAMPLE}{}", EXAMPLE.replace("4f0c6f3e", "5f0c6f3e"));
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("key `instance.port.device`"), "{err}");
        assert!(err.contains("more than one port"), "{err}");
    }
}
