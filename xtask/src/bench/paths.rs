//! The paths side by side: one daemon with VMs on taps (ours), VMs behind
//! Neutron networks whose haproxies reach the same daemon in agent mode,
//! and the limit paths (a plain routed veth to the daemon, and nginx).

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use metadata_tests::{Hypervisor, InstanceSpec, Vm, neutron::NeutronNetwork};

use super::{
    harness::{LARGE, SMALL, wait_served},
    limit::LimitPath,
};

/// A daemon with `n` VMs on taps (ours) and `n` VMs behind Neutron
/// networks (neutron) whose haproxies reach the same daemon in agent mode,
/// plus one tap reserved for the loopback client (limit).
pub(super) struct Paths {
    pub hv: Hypervisor,
    pub ours: Vec<Vm>,
    pub neutron: Vec<(Vm, NeutronNetwork)>,
    /// The limit paths (a VM on a plain routed veth, and nginx).
    pub limit: LimitPath,
    /// The tap whose identity the limit VM borrows (no traffic).
    _limit_vm: Vm,
}

impl Paths {
    /// `user_data_kib` of user data per instance: 64 for the large-body
    /// runs, 1 for memory (a realistic size, so the figure measures the
    /// path, not the test data).
    pub(super) fn new(n: usize, with_neutron: bool, user_data_kib: usize) -> anyhow::Result<Self> {
        let mut hv = Hypervisor::new()?;
        // Attaching takes about 10 ms a tap; leave room for thousands.
        hv.ready_timeout = Duration::from_secs(30 + n as u64 / 20);
        let socket = hv.log_path().with_file_name("metadata_proxy");
        hv.extra_config = format!("\n[agent]\nsocket = \"{}\"\n", socket.display());
        let user_data = user_data_of(user_data_kib);
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let mut specs = Vec::new();
        let mut ours = Vec::new();
        for i in 0..n {
            let vm = hv.add_vm(ip)?;
            let mut spec = InstanceSpec::for_vm(&vm, &format!("ours-{i}"));
            spec.user_data = Some(user_data.clone());
            specs.push(spec);
            ours.push(vm);
        }
        // The loopback client's identity: a tap no VM uses.
        let limit_vm = hv.add_vm(Ipv4Addr::new(10, 0, 0, 99))?;
        let mut limit_spec = InstanceSpec::for_vm(&limit_vm, "limit");
        limit_spec.user_data = Some(user_data.clone());
        specs.push(limit_spec);
        let mut bare = Vec::new();
        if with_neutron {
            for i in 0..n {
                let vm = hv.bare_vm(ip)?;
                let mut spec = InstanceSpec::for_vm(&vm, &format!("neutron-{i}"));
                spec.user_data = Some(user_data.clone());
                specs.push(spec);
                bare.push(vm);
            }
        }
        hv.set_instances(specs.clone())?;
        hv.start_daemon()?;
        let mut neutron = Vec::new();
        for vm in bare {
            let spec = specs
                .iter()
                .find(|s| s.ports[0].device == vm.tap)
                .context("spec")?;
            let network = NeutronNetwork::new(&vm, &spec.ports[0].network_id, &socket)?;
            neutron.push((vm, network));
        }
        wait_served(ours.iter().chain(neutron.iter().map(|(vm, _)| vm)))?;
        let limit = LimitPath::new(&hv, &limit_vm, &[SMALL, LARGE])?;
        Ok(Self {
            hv,
            ours,
            neutron,
            limit,
            _limit_vm: limit_vm,
        })
    }
}

/// `kib` KiB of cloud-config user data.
fn user_data_of(kib: usize) -> String {
    "#cloud-config\n# "
        .chars()
        .chain(std::iter::repeat_n('x', kib * 1024 - 18))
        .chain(std::iter::once('\n'))
        .collect()
}
