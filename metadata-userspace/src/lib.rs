//! metadata-redirector: the host daemon that loads the eBPF datapath,
//! tracks which VM owns which tap, and serves instance metadata.
//!
//! Split by concern: [`inventory`] (port records and where they come
//! from), [`datapath`] (load, attach, maps), [`serve`] (the serving core,
//! with the proxy and agent policies), [`backends`] (what answers),
//! [`config`] and [`cli`]; [`daemon`] ties them together.

pub mod backends;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod fuzzing;
pub mod identity;
pub mod inventory;
pub mod neutron_ini;
pub mod nova_conf;
pub mod proc_net_dev;
pub mod reconcile;
pub mod serve;
pub mod throttled_log;
pub mod tls_client;
