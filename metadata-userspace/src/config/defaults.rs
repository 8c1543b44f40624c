//! Every default of the configuration, in one block: what an empty file
//! means. README's configuration section lists the same values.

use std::net::{Ipv4Addr, SocketAddr};

use super::{ConnectionBurst, ConnectionRate, HopLimit, HostMtu};

pub const STATE_DIR: &str = "/var/lib/metadata-redirector";

pub const INTERFACES: &str = "tap*";
pub const HOST_DEVICE: &str = "mdr0";
pub const HOST_MTU: HostMtu = HostMtu::new(9000).expect("in range");
pub const NAT_V4: &str = "100.64.0.0/10";
pub const NAT_V6: &str = "fd00:a9fe:6464::/96";
pub const BPFFS: &str = "/sys/fs/bpf/metadata-redirector";
// Each tap's new-connection budget. cloud-init's crawl of both trees opens
// a connection per request (a few dozen in a second or two, within the
// burst); 50 parallel clients fit the burst; a guest flooding gets 50 a
// second, which the proxy serves in well under a millisecond each.
pub const CONNECTION_RATE: ConnectionRate = ConnectionRate::new(50).expect("in range");
pub const CONNECTION_BURST: ConnectionBurst = ConnectionBurst::new(100).expect("in range");

pub const PROXY_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const PROXY_PORT: u16 = 80;
pub const MAX_CONNECTIONS_PER_INSTANCE: usize = 64;
pub const HEADER_READ_TIMEOUT_S: u64 = 30;

pub const METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9780);

// Generous: a cloud-init crawl of both trees is a few dozen requests in a
// second or two.
pub const RATE_BASE_WINDOW_S: u64 = 10;
pub const RATE_BASE_REQUESTS: usize = 300;
pub const RATE_BURST_WINDOW_S: u64 = 1;
pub const RATE_BURST_REQUESTS: usize = 100;

/// 1 keeps tokens from leaving the guest through a router or container NAT.
pub const TOKEN_HOP_LIMIT: HopLimit = HopLimit::new(1).expect("in range");

pub const INSTANCES_FILE: &str = "instances.toml";
pub const OVS_REMOTE: &str = "unix:/run/openvswitch/db.sock";

pub const NOVA_CONNECT_TIMEOUT_S: u64 = 5;
pub const NOVA_TIMEOUT_S: u64 = 60;
/// Nova's own `metadata_cache_expiration` default.
pub const NOVA_CACHE_TTL_S: u64 = 15;
/// What neutron's metadata agent asks for when its INI names no Nova.
pub const NOVA_METADATA_HOST: &str = "127.0.0.1";
pub const NOVA_METADATA_PORT: u16 = 8775;

/// How long an identity token is valid.
pub const IDENTITY_TOKEN_LIFETIME: super::identity::TokenLifetime =
    super::identity::TokenLifetime::new(600).expect("in range");

/// How often the "neutron" port source lists this host's ports.
pub const NEUTRON_REFRESH_INTERVAL_S: u64 = 30;
/// keystoneauth's default user and project domain.
pub const KEYSTONE_DOMAIN: &str = "Default";
