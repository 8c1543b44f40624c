//! `cargo xtask demo`: the product on its embedded default.
//!
//! A hypervisor namespace with two VMs that have the SAME address
//! (10.0.0.5), one daemon on the local backend, and cloud-init's own reader
//! run inside each VM. The hypervisor is a namespace of its own so that the
//! demo never takes this machine's own 169.254.169.254 or 100.64.0.0/10.

use std::{net::Ipv4Addr, sync::mpsc, time::Instant};

use anyhow::Context as _;
use metadata_tests::{Hypervisor, InstanceSpec, Vm};

pub fn run(once: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut hv = Hypervisor::new()?;
    let guest = Ipv4Addr::new(10, 0, 0, 5);
    let vm_a = hv.add_vm(guest)?;
    let vm_b = hv.add_vm(guest)?;
    let mut spec_a = InstanceSpec::for_vm(&vm_a, "demo-a");
    spec_a.user_data = Some("#cloud-config\nruncmd:\n  - echo hello from demo-a\n".into());
    let mut spec_b = InstanceSpec::for_vm(&vm_b, "demo-b");
    spec_b.user_data = Some("#cloud-config\nruncmd:\n  - echo hello from demo-b\n".into());
    hv.set_instances(vec![spec_a, spec_b])?;
    hv.start_daemon().context("starting the daemon")?;

    println!(
        "hypervisor namespace {} runs metadata-redirector",
        hv.ns().name()
    );
    for vm in [&vm_a, &vm_b] {
        print_cloud_init_view(vm)?;
    }
    println!();
    print!("{}", hv.daemon_command(&["status"])?);
    println!();
    println!("ready in {:.1} s", started.elapsed().as_secs_f64());
    if once {
        return Ok(());
    }
    wait_for_ctrl_c(&hv, &vm_a)?;
    println!("removing the demo's namespaces, links and pins");
    Ok(())
}

/// What cloud-init, run inside `vm`, reads from the metadata service.
fn print_cloud_init_view(vm: &Vm) -> anyhow::Result<()> {
    let view = vm
        .cloud_init_openstack("http://169.254.169.254")
        .with_context(|| format!("reading metadata in {}", vm.ns.name()))?;
    println!();
    println!("VM {} (eth0 {}, tap {}):", vm.ns.name(), vm.ip, vm.tap);
    println!("  cloud-init read uuid      {}", view.uuid);
    println!("                  name      {}", view.name);
    println!("                  hostname  {}", view.hostname);
    println!(
        "                  ssh key   {}",
        view.public_keys["default"].as_str().unwrap_or("-")
    );
    println!(
        "                  user-data {:?}",
        view.userdata.as_deref().unwrap_or("")
    );
    Ok(())
}

/// Tells the user how to look around, then blocks until Ctrl-C.
fn wait_for_ctrl_c(hv: &Hypervisor, vm_a: &Vm) -> anyhow::Result<()> {
    println!(
        "Try it:  ip netns exec {} curl http://169.254.169.254/openstack/latest/meta_data.json",
        vm_a.ns.name()
    );
    println!(
        "Status:  nsenter --net=/run/netns/{} target/release/metadata-redirector status --config {}",
        hv.ns().name(),
        hv.config_path().display()
    );
    println!("Daemon log: {}", hv.log_path().display());
    println!("Press Ctrl-C to stop and remove everything.");
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    // A closed channel (handler gone) ends the demo just as Ctrl-C does.
    let _ = rx.recv();
    Ok(())
}
