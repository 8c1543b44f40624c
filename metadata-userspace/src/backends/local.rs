//! The local backend: serves Nova's OpenStack and EC2 metadata formats from
//! the instances file, for hosts without Nova (labs, small KVM hosts, CI).
//!
//! Paths, listings and trailing-slash behaviour follow Nova's metadata API
//! (nova/api/metadata), which is what cloud-init's readers are written
//! against.

use std::{cell::RefCell, collections::BTreeMap};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use rand::{
    RngCore as _, SeedableRng as _,
    rngs::{OsRng, StdRng},
};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    Reply,
    password::{PasswordError, PasswordStore},
};
use crate::{
    config::LocalBackendConfig,
    inventory::{Identity, Port},
};

/// OpenStack metadata versions, oldest first, as Nova lists them.
pub const OPENSTACK_VERSIONS: [&str; 10] = [
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
    "2025-04-04",
];

/// EC2 metadata versions, oldest first: Nova's, then the dated versions
/// that IMDSv2 clients ask for (served with the same tree).
pub const EC2_VERSIONS: [&str; 14] = [
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2016-09-02",
    "2018-09-24",
    "2021-01-03",
    "2021-03-23",
    "2024-04-11",
];

/// Serves metadata from the instance records.
#[derive(Debug)]
pub struct LocalBackend {
    /// vendor_data.json and vendor_data2.json, the same for every guest:
    /// rendered once.
    vendor_data: Bytes,
    vendor_data2: Bytes,
    dns: Vec<std::net::IpAddr>,
    passwords: PasswordStore,
}

impl LocalBackend {
    pub fn new(config: &LocalBackendConfig, state_dir: &std::path::Path) -> Self {
        let to_json = |table: &toml::Table| {
            Bytes::from(serde_json::to_vec(table).unwrap_or_else(|_| b"{}".to_vec()))
        };
        Self {
            vendor_data: to_json(&config.vendor_data),
            vendor_data2: to_json(&config.vendor_data2),
            dns: config.dns.clone(),
            passwords: PasswordStore::new(state_dir),
        }
    }

    /// Answers `method path` (with `body` for POST) for the guest `who`.
    pub fn handle(&self, who: &Identity, method: &Method, path: &str, body: &[u8]) -> Reply {
        // Nova ignores empty segments ("//") and a trailing slash alike.
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if let ["openstack", version, "password"] = segments.as_slice() {
            return match openstack_version(version) {
                Some(_) => self.password(who, method, body),
                None => Reply::status(StatusCode::NOT_FOUND),
            };
        }
        if method != Method::GET && method != Method::HEAD {
            return Reply::method_not_allowed("GET, HEAD");
        }
        match segments.as_slice() {
            [] => Reply::text(listing(EC2_VERSIONS.iter().copied().chain(["latest"]))),
            ["openstack"] => Reply::text(listing(
                OPENSTACK_VERSIONS.iter().copied().chain(["latest"]),
            )),
            ["openstack", "content", name] => content(who, name),
            ["openstack", version, rest @ ..] => match openstack_version(version) {
                Some(_) => self.openstack(who, rest),
                None => Reply::status(StatusCode::NOT_FOUND),
            },
            [version, rest @ ..] if ec2_version(version) => ec2(who, rest),
            _ => Reply::status(StatusCode::NOT_FOUND),
        }
    }

    /// GET returns the password ("" when none); POST sets it once (Nova's
    /// nova/api/metadata/password.py: 409 when set, 400 when too long or
    /// another method).
    fn password(&self, who: &Identity, method: &Method, body: &[u8]) -> Reply {
        let instance = &who.instance.id;
        match *method {
            Method::GET | Method::HEAD => match self.passwords.get(instance) {
                Ok(password) => Reply::bytes(password),
                Err(err) => {
                    log::error!("reading the password of {instance}: {err}");
                    Reply::status(StatusCode::INTERNAL_SERVER_ERROR)
                }
            },
            Method::POST => match self.passwords.set_once(instance, body) {
                Ok(()) => Reply::text(String::new()),
                Err(PasswordError::AlreadySet) => Reply::status(StatusCode::CONFLICT),
                Err(PasswordError::TooLong) => Reply::status(StatusCode::BAD_REQUEST),
                // Not stored (state_dir unwritable, disk full): the guest
                // must not believe it is, and may try again later.
                Err(err) => {
                    log::error!("{err}");
                    Reply::status(StatusCode::SERVICE_UNAVAILABLE)
                }
            },
            _ => Reply::status(StatusCode::BAD_REQUEST),
        }
    }

    fn openstack(&self, who: &Identity, rest: &[&str]) -> Reply {
        let instance = &who.instance;
        match rest {
            [] => {
                let mut items = vec!["meta_data.json", "password"];
                if instance.user_data.is_some() {
                    items.push("user_data");
                }
                items.extend(["vendor_data.json", "network_data.json", "vendor_data2.json"]);
                Reply::text(listing(items))
            }
            ["meta_data.json"] => openstack_meta_data(who),
            ["user_data"] => match &instance.user_data {
                Some(data) => Reply::bytes(data.as_bytes().to_vec()),
                None => Reply::status(StatusCode::NOT_FOUND),
            },
            ["vendor_data.json"] => Reply::json_bytes(self.vendor_data.clone()),
            ["vendor_data2.json"] => Reply::json_bytes(self.vendor_data2.clone()),
            ["network_data.json"] => Reply::json(&network_data(who, &self.dns)),
            _ => Reply::status(StatusCode::NOT_FOUND),
        }
    }
}

/// /openstack/content/NNNN: the files listed in meta_data.json.
fn content(who: &Identity, name: &str) -> Reply {
    let index: Option<usize> = name.parse().ok();
    match index.and_then(|i| who.instance.files.get(i)) {
        Some((_, data)) => Reply::bytes(data.as_bytes().to_vec()),
        None => Reply::status(StatusCode::NOT_FOUND),
    }
}

fn openstack_version(version: &str) -> Option<&str> {
    (version == "latest" || OPENSTACK_VERSIONS.contains(&version)).then_some(version)
}

fn ec2_version(version: &str) -> bool {
    version == "latest" || EC2_VERSIONS.contains(&version)
}

fn listing<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let mut text = String::new();
    for item in items {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(item.as_ref());
    }
    text
}

/// meta_data.json as Nova builds it (nova/api/metadata/base.py),
/// serialized straight from the instance record. Every boot reads it
/// first. Built as a `serde_json::Value` (maps of copied strings, then
/// printed) and with the kernel's random bytes, answering it took 12 % of
/// the daemon's CPU under a connection per request; this way 4 %.
fn openstack_meta_data(who: &Identity) -> Reply {
    let instance = &who.instance;
    let document = MetaData {
        availability_zone: &instance.availability_zone,
        devices: [],
        files: instance
            .files
            .iter()
            .enumerate()
            .map(|(i, (path, _))| InjectedFile {
                path,
                content_path: format!("/content/{i:04}"),
            })
            .collect(),
        hostname: &instance.hostname,
        keys: instance
            .public_keys
            .iter()
            .map(|(name, data)| Key {
                name,
                key_type: key_type(data),
                data,
            })
            .collect(),
        launch_index: instance.launch_index,
        meta: &instance.meta,
        name: &instance.name,
        project_id: &instance.project_id,
        public_keys: &instance.public_keys,
        random_seed: random_seed(),
        uuid: &instance.id,
    };
    match serde_json::to_vec(&document) {
        Ok(body) => Reply::json_bytes(body),
        Err(err) => {
            log::error!("rendering meta_data.json of {}: {err}", instance.id);
            Reply::status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// The members of meta_data.json, in the order a `Value` (sorted keys)
/// printed them.
#[derive(Serialize)]
struct MetaData<'a> {
    availability_zone: &'a str,
    /// Nova lists block devices with tags here; the record has none.
    devices: [(); 0],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<InjectedFile<'a>>,
    hostname: &'a str,
    keys: Vec<Key<'a>>,
    launch_index: u32,
    meta: &'a BTreeMap<String, String>,
    name: &'a str,
    project_id: &'a str,
    public_keys: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    random_seed: Option<String>,
    uuid: &'a str,
}

#[derive(Serialize)]
struct Key<'a> {
    data: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    key_type: &'static str,
}

#[derive(Serialize)]
struct InjectedFile<'a> {
    content_path: String,
    path: &'a str,
}

fn key_type(key: &str) -> &'static str {
    if key.starts_with("x509") || key.contains("BEGIN CERTIFICATE") {
        "x509"
    } else {
        "ssh"
    }
}

/// network_data.json from the port records, as Nova's
/// nova/virt/netutils.py builds it: one link per port, one network per
/// fixed address with its netmask and routes, or a DHCP network when the
/// record gives no prefix length; DNS servers as services.
fn network_data(who: &Identity, default_dns: &[std::net::IpAddr]) -> Value {
    let mut links = Vec::new();
    let mut networks = Vec::new();
    let mut services = Vec::new();
    for (i, port) in who.instance.ports.iter().enumerate() {
        let link_id = format!("tap{i}");
        links.push(json!({
            "id": link_id,
            "vif_id": port.device.0,
            "type": "ethernet",
            "ethernet_mac_address": port.mac.to_string(),
            "mtu": port.mtu,
        }));
        let first = networks.len();
        networks.extend(port_networks(port, &link_id, first));
        let dns = if port.dns.is_empty() {
            default_dns
        } else {
            &port.dns
        };
        for server in dns {
            let service = json!({"type": "dns", "address": server.to_string()});
            if !services.contains(&service) {
                services.push(service);
            }
        }
    }
    json!({"links": links, "networks": networks, "services": services})
}

/// The networks of one port: one per fixed address with a prefix length,
/// one DHCP network when an IPv4 address has none (one per link is enough
/// for cloud-init). Ids continue from `first`.
fn port_networks(port: &Port, link_id: &str, first: usize) -> Vec<Value> {
    let mut networks = Vec::new();
    let mut dhcp_v4 = false;
    for ip in &port.ips {
        let id = format!("network{}", first + networks.len());
        let network = match (ip.addr, ip.prefix_len) {
            (addr, Some(len)) => fixed_network(&id, link_id, port, addr, len),
            (std::net::IpAddr::V4(_), None) if !dhcp_v4 => {
                dhcp_v4 = true;
                json!({"id": id, "link": link_id, "type": "ipv4_dhcp", "network_id": port.network_id})
            }
            _ => continue,
        };
        networks.push(network);
    }
    networks
}

/// A fixed address with its netmask and, when the port has a gateway of
/// the same family, the default route.
fn fixed_network(id: &str, link_id: &str, port: &Port, addr: std::net::IpAddr, len: u8) -> Value {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (kind, mask, any) = match addr {
        IpAddr::V4(_) => {
            let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0));
            ("ipv4", IpAddr::V4(mask), "0.0.0.0")
        }
        IpAddr::V6(_) => {
            let mask = Ipv6Addr::from(u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0));
            ("ipv6", IpAddr::V6(mask), "::")
        }
    };
    let routes: Vec<Value> = port
        .gateway
        .filter(|gw| gw.is_ipv4() == addr.is_ipv4())
        .map(|gw| json!({"network": any, "netmask": any, "gateway": gw.to_string()}))
        .into_iter()
        .collect();
    json!({
        "id": id, "link": link_id, "type": kind,
        "ip_address": addr.to_string(), "netmask": mask.to_string(),
        "routes": routes, "network_id": port.network_id,
    })
}

/// The EC2 tree under one version.
fn ec2(who: &Identity, rest: &[&str]) -> Reply {
    let instance = &who.instance;
    match rest {
        [] => {
            let mut items = vec!["dynamic/", "meta-data/"];
            if instance.user_data.is_some() {
                items.push("user-data");
            }
            Reply::text(listing(items))
        }
        ["dynamic"] => Reply::text(listing(["instance-identity/"])),
        ["dynamic", "instance-identity"] => Reply::text(listing(["document"])),
        ["dynamic", "instance-identity", "document"] => Reply::json(&identity_document(who)),
        ["user-data"] => match &instance.user_data {
            Some(data) => Reply::bytes(data.as_bytes().to_vec()),
            None => Reply::status(StatusCode::NOT_FOUND),
        },
        ["meta-data", path @ ..] => {
            let mut node = ec2_meta_data(who);
            for segment in path {
                match node.child(segment) {
                    Some(child) => node = child,
                    None => return Reply::status(StatusCode::NOT_FOUND),
                }
            }
            match (&node, node.listing()) {
                (Ec2Node::Leaf(value), _) => Reply::text(value.clone()),
                (_, Some(text)) => Reply::text(text),
                (_, None) => Reply::status(StatusCode::NOT_FOUND),
            }
        }
        _ => Reply::status(StatusCode::NOT_FOUND),
    }
}

#[derive(Debug)]
enum Ec2Node {
    Leaf(String),
    Folder(BTreeMap<String, Ec2Node>),
    /// public-keys/: listed as "0=name", walked as "0/openssh-key".
    PublicKeys(Vec<(String, String)>),
}

impl Ec2Node {
    fn child(&self, segment: &str) -> Option<Self> {
        match self {
            Self::Leaf(_) => None,
            Self::Folder(children) => children.get(segment).map(Self::shallow_clone),
            Self::PublicKeys(keys) => {
                let index: usize = segment.parse().ok()?;
                let (_, key) = keys.get(index)?;
                Some(folder([("openssh-key", leaf(key.clone()))]))
            }
        }
    }

    fn shallow_clone(&self) -> Self {
        match self {
            Self::Leaf(value) => Self::Leaf(value.clone()),
            Self::Folder(children) => Self::Folder(
                children
                    .iter()
                    .map(|(k, v)| (k.clone(), v.shallow_clone()))
                    .collect(),
            ),
            Self::PublicKeys(keys) => Self::PublicKeys(keys.clone()),
        }
    }

    /// A folder's listing: one entry per line, sub-folders with a '/'.
    fn listing(&self) -> Option<String> {
        match self {
            Self::Leaf(_) => None,
            Self::Folder(children) => Some(listing(children.iter().map(|(name, child)| {
                if matches!(child, Self::Leaf(_)) {
                    name.clone()
                } else {
                    format!("{name}/")
                }
            }))),
            Self::PublicKeys(keys) => Some(listing(
                keys.iter()
                    .enumerate()
                    .map(|(i, (name, _))| format!("{i}={name}")),
            )),
        }
    }
}

fn leaf(value: impl Into<String>) -> Ec2Node {
    Ec2Node::Leaf(value.into())
}

fn folder<const N: usize>(children: [(&str, Ec2Node); N]) -> Ec2Node {
    Ec2Node::Folder(
        children
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// The EC2 instance identity document, from what the records know.
fn identity_document(who: &Identity) -> Value {
    let instance = &who.instance;
    let zone = &instance.availability_zone;
    // EC2 regions are their zones without the trailing letter.
    let region = zone
        .strip_suffix(|c: char| c.is_ascii_lowercase())
        .filter(|r| !r.is_empty())
        .unwrap_or(zone);
    json!({
        "instanceId": ec2_instance_id(&instance.id),
        "availabilityZone": zone,
        "region": region,
        "privateIp": local_ipv4(who),
        "instanceType": "m1.small",
        "imageId": "ami-00000001",
        "accountId": instance.project_id,
        "version": "2017-09-30",
        "pendingTime": "1970-01-01T00:00:00Z",
        "architecture": std::env::consts::ARCH,
    })
}

/// EC2 ids are "i-" plus 8 hex digits; Nova derives them from its
/// database id, which the local backend does not have: use the uuid.
fn ec2_instance_id(uuid: &str) -> String {
    let short: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("i-{short:0>8}")
}

/// The port's own IPv4 address, also when asked over IPv6.
fn local_ipv4(who: &Identity) -> String {
    match who.guest_addr {
        std::net::IpAddr::V4(addr) => addr.to_string(),
        std::net::IpAddr::V6(_) => who
            .instance
            .ports
            .get(who.port)
            .and_then(|port| port.ipv4().next())
            .map(|addr| addr.to_string())
            .unwrap_or_default(),
    }
}

/// The EC2 meta-data tree Nova serves for an instance.
fn ec2_meta_data(who: &Identity) -> Ec2Node {
    let instance = &who.instance;
    let ec2_id = ec2_instance_id(&instance.id);
    let local_ipv4 = local_ipv4(who);
    let mut tree = BTreeMap::new();
    for (key, value) in [
        ("ami-id", leaf("ami-00000001")),
        ("ami-launch-index", leaf(instance.launch_index.to_string())),
        ("ami-manifest-path", leaf("FIXME")),
        (
            "block-device-mapping",
            folder([("ami", leaf("vda")), ("root", leaf("/dev/vda"))]),
        ),
        ("hostname", leaf(instance.hostname.clone())),
        ("instance-action", leaf("none")),
        ("instance-id", leaf(ec2_id)),
        ("instance-type", leaf("m1.small")),
        ("local-hostname", leaf(instance.hostname.clone())),
        ("local-ipv4", leaf(local_ipv4)),
        (
            "placement",
            folder([(
                "availability-zone",
                leaf(instance.availability_zone.clone()),
            )]),
        ),
        ("public-hostname", leaf(instance.hostname.clone())),
        ("public-ipv4", leaf("")),
        (
            "reservation-id",
            leaf(format!(
                "r-{}",
                &instance.id.chars().take(8).collect::<String>()
            )),
        ),
        ("security-groups", leaf("default")),
    ] {
        tree.insert(key.to_owned(), value);
    }
    if !instance.public_keys.is_empty() {
        let keys = instance.public_keys.iter();
        let keys = keys
            .map(|(name, key)| (name.clone(), key.clone()))
            .collect();
        tree.insert("public-keys".to_owned(), Ec2Node::PublicKeys(keys));
    }
    Ec2Node::Folder(tree)
}

/// 512 random bytes, base64-encoded, for the guest to seed its own
/// generator (Nova sends `os.urandom(512)`). Left out (and logged) rather
/// than served weak when the kernel gives no seed.
fn random_seed() -> Option<String> {
    let mut seed = [0u8; 512];
    match SEED_GENERATOR.with_borrow_mut(|generator| generator.fill(&mut seed)) {
        Ok(()) => Some(base64::engine::general_purpose::STANDARD.encode(seed)),
        Err(err) => {
            log::error!("no random bytes ({err}); meta_data.json goes out without random_seed");
            None
        }
    }
}

thread_local! {
    static SEED_GENERATOR: RefCell<SeedGenerator> = const { RefCell::new(SeedGenerator::new()) };
}

/// A ChaCha12 generator per serving thread, seeded from the kernel's
/// CSPRNG and reseeded after every [`Self::RESEED_AFTER`] bytes. Asking the
/// kernel for 512 bytes per request was 3 % of the daemon's CPU per
/// connection. Unlike `rand`'s `ThreadRng`, a failed (re)seed is an error
/// for the caller, not a panic in a serving thread.
struct SeedGenerator {
    rng: Option<StdRng>,
    /// Bytes left before the next reseed.
    left: usize,
}

impl SeedGenerator {
    const RESEED_AFTER: usize = 64 * 1024;

    const fn new() -> Self {
        Self { rng: None, left: 0 }
    }

    /// Fills `out`; a generator that failed to reseed is gone, so that
    /// nothing is served from it after its time.
    fn fill(&mut self, out: &mut [u8]) -> Result<(), rand::rand_core::OsError> {
        let rng = match self.rng.take().filter(|_| self.left >= out.len()) {
            Some(rng) => rng,
            None => {
                self.left = Self::RESEED_AFTER;
                StdRng::try_from_rng(&mut OsRng)?
            }
        };
        self.rng.insert(rng).fill_bytes(out);
        self.left -= out.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use super::*;
    use crate::inventory::PortIndex;

    fn who() -> Identity {
        let text = "[[instance]]\nid = \"i-1\"\nproject_id = \"p\"\n";
        let index = PortIndex::parse(Path::new("i.toml"), text).unwrap();
        let instance = index.instances().next().unwrap().clone();
        Identity {
            instance: Arc::new(instance),
            port: 0,
            device: "tap".into(),
            guest_addr: "10.0.0.5".parse().unwrap(),
        }
    }

    #[test]
    fn meta_data_json_carries_the_record_and_a_fresh_512_byte_seed() {
        let text = "[[instance]]\nid = \"i-1\"\nproject_id = \"p\"\nname = \"web\"\n\
                    launch_index = 2\npublic_keys = { default = \"ssh-ed25519 AAAA a@b\" }\n\
                    meta = { role = \"db\" }\n\
                    files = [{ path = \"/etc/motd\", content = \"hi\" }]\n";
        let index = PortIndex::parse(Path::new("i.toml"), text).unwrap();
        let who = Identity {
            instance: Arc::new(index.instances().next().unwrap().clone()),
            ..who()
        };
        let backend = LocalBackend::new(&LocalBackendConfig::default(), Path::new("/nonexistent"));
        let get = || {
            let reply = backend.handle(&who, &Method::GET, "/openstack/latest/meta_data.json", b"");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.content_type, "application/json");
            serde_json::from_slice::<Value>(&reply.body).unwrap()
        };
        let (mut first, mut second) = (get(), get());
        let seed = |doc: &mut Value| {
            let seed = doc["random_seed"].take();
            base64::engine::general_purpose::STANDARD
                .decode(seed.as_str().unwrap())
                .unwrap()
        };
        let (seed_a, seed_b) = (seed(&mut first), seed(&mut second));
        assert_eq!(seed_a.len(), 512);
        assert_ne!(seed_a, seed_b, "each request gets its own seed");
        assert_eq!(first, second);
        assert_eq!(
            first,
            json!({
                "uuid": "i-1", "name": "web", "hostname": "web", "availability_zone": "nova",
                "project_id": "p", "launch_index": 2,
                "public_keys": {"default": "ssh-ed25519 AAAA a@b"},
                "keys": [{"name": "default", "type": "ssh", "data": "ssh-ed25519 AAAA a@b"}],
                "meta": {"role": "db"}, "devices": [],
                "files": [{"path": "/etc/motd", "content_path": "/content/0000"}],
                "random_seed": null,
            })
        );
    }

    #[test]
    fn seeds_keep_coming_across_reseeds() {
        let mut generator = SeedGenerator::new();
        let mut previous = [0u8; 512];
        for _ in 0..(2 * SeedGenerator::RESEED_AFTER / 512 + 3) {
            let mut seed = [0u8; 512];
            generator.fill(&mut seed).unwrap();
            assert_ne!(seed, previous);
            previous = seed;
        }
    }

    #[test]
    fn a_password_that_cannot_be_stored_is_a_503_not_a_200() {
        // state_dir is a file: nothing can be created under it (root or not).
        let file = tempfile::NamedTempFile::new().unwrap();
        let backend = LocalBackend::new(&LocalBackendConfig::default(), file.path());
        let reply = backend.handle(
            &who(),
            &Method::POST,
            "/openstack/latest/password",
            b"secret",
        );
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_405_names_the_allowed_methods_and_dated_ec2_versions_are_served() {
        let backend = LocalBackend::new(&LocalBackendConfig::default(), &std::env::temp_dir());
        let reply = backend.handle(
            &who(),
            &Method::DELETE,
            "/openstack/latest/meta_data.json",
            b"",
        );
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.headers[http::header::ALLOW], "GET, HEAD");
        for version in ["2016-09-02", "2021-03-23", "2024-04-11", "latest"] {
            let path = format!("/{version}/dynamic/instance-identity/document");
            let reply = backend.handle(&who(), &Method::GET, &path, b"");
            assert_eq!(reply.status, StatusCode::OK, "{version}");
            let doc: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(doc["accountId"], "p");
            assert_eq!(doc["region"], "nov");
        }
        assert_eq!(
            backend
                .handle(&who(), &Method::GET, "/2099-01-01/meta-data/", b"")
                .status,
            StatusCode::NOT_FOUND
        );
    }
}
