//! Test harness: a hypervisor and its VMs as real network namespaces.
//!
//! - [`Hypervisor`]: a network namespace standing in for the host, where
//!   the taps, bridges and the host device live and where the daemon runs
//!   (entered with `nsenter --net`, so bpffs stays the machine's own).
//! - [`Vm`]: a network namespace whose `eth0` is one end of a veth pair; the
//!   other end, in the hypervisor, is the VM's tap.
//!
//! Every name is unique per process and call, and every object removes
//! what it created when dropped, also when a test panics, so tests run in
//! parallel and leave nothing behind.
//!
//! The demo (`cargo xtask demo`) uses the same harness.

pub mod neutron;
pub mod nova_peer;
pub mod openstack;
pub mod ovn;
pub mod packet;
pub mod soak;

mod http;
mod hypervisor;
mod instances;
mod netns;
mod process;
mod raw_socket;
mod sweep;
mod vm;

pub use self::{
    http::{METADATA, http_get, parse_response},
    hypervisor::{Gateway, Hypervisor, daemon_binary, previous_daemon_binary},
    instances::{InstanceSpec, PortSpec, uuid_like},
    netns::{Netns, enter_netns, ip, veth_pair},
    process::{run, temp_folder, unique_suffix, wait_for},
    raw_socket::RawSocket,
    sweep::sweep_stale,
    vm::{CloudInitView, Vm, random_mac},
};

/// Raises this process's soft limit on open files to the hard limit (a
/// test that holds thousands of connections).
pub fn raise_open_files_limit() -> anyhow::Result<()> {
    use anyhow::Context as _;
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open files limit")?;
    Ok(())
}
