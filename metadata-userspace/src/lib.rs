//! metadata-redirector: the host daemon that loads the eBPF datapath,
//! tracks which VM owns which tap, and serves instance metadata.
//!
//! Split by concern: [`datapath`] (load, attach, maps), [`ports`] (where
//! port records come from), [`proxy`] (HTTP), [`backends`] (what answers),
//! [`config`] and [`cli`]; [`daemon`] ties them together.

pub mod agent;
pub mod backends;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod ports;
pub mod proxy;
