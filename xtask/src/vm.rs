//! Real VMs: `cargo xtask vm-image` builds a Debian bookworm guest once
//! (cached outside the repository), and `cargo xtask vm-test` boots two of
//! them with qemu on real tap devices, with the SAME address on two
//! networks, and checks from their serial consoles that their own
//! cloud-init configured them through the daemon.
//!
//! Each network is a Linux bridge with its VM's tap and a namespace running
//! dnsmasq as Neutron's DHCP agent would, with no metadata proxy anywhere:
//! the only way to metadata is the daemon.

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use metadata_tests::{Hypervisor, InstanceSpec, Netns, PortSpec, unique_suffix};

/// Everything that goes into the image; a change rebuilds it.
/// python3-cffi-backend: debootstrap does not resolve the virtual package
/// cloud-init's python3-cryptography needs through it.
const PACKAGES: &str = "systemd,systemd-sysv,udev,linux-image-amd64,cloud-init,python3-cffi-backend,iproute2,ifupdown,isc-dhcp-client,sudo,openssh-server";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const IMAGE_SIZE: &str = "3G";
const RECIPE_VERSION: u32 = 1;

/// A built image: disk, kernel and initrd.
pub struct Image {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn cache_dir() -> PathBuf {
    let mut hasher = DefaultHasher::new();
    (PACKAGES, SUITE, IMAGE_SIZE, RECIPE_VERSION, GUEST_CONFIG).hash(&mut hasher);
    PathBuf::from(format!(
        "/var/cache/metadata-redirector/vm/{SUITE}-{:016x}",
        hasher.finish()
    ))
}

/// cloud-init in the image: the OpenStack datasource only, so a missing
/// service fails fast instead of trying every cloud.
const GUEST_CONFIG: &str = "datasource_list: [ OpenStack ]\n";

/// The cached image, if it was built with the current recipe.
pub fn cached() -> Option<Image> {
    let dir = cache_dir();
    dir.join("done").exists().then(|| image_in(&dir))
}

fn image_in(dir: &Path) -> Image {
    Image {
        disk: dir.join("disk.raw"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    }
}

/// Builds the image unless the cache has it.
pub fn image() -> anyhow::Result<Image> {
    if let Some(image) = cached() {
        eprintln!("vm-image: cached in {}", cache_dir().display());
        return Ok(image);
    }
    super::setup::all()?;
    let dir = cache_dir();
    let started = Instant::now();
    let root = dir.join("root");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    eprintln!(
        "vm-image: debootstrap {SUITE} into {} (a few minutes)",
        root.display()
    );
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
        .arg(&root)
        .arg(MIRROR))?;
    fs::write(root.join("etc/fstab"), "/dev/vda / ext4 defaults 0 1\n")?;
    fs::write(
        root.join("etc/cloud/cloud.cfg.d/90-metadata-redirector.cfg"),
        GUEST_CONFIG,
    )?;
    fs::write(root.join("etc/hostname"), "unconfigured\n")?;
    let boot = root.join("boot");
    let find = |prefix: &str| -> anyhow::Result<PathBuf> {
        fs::read_dir(&boot)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .with_context(|| format!("no {prefix}* in {}", boot.display()))
    };
    let image = image_in(&dir);
    fs::copy(find("vmlinuz-")?, &image.kernel)?;
    fs::copy(find("initrd.img-")?, &image.initrd)?;
    // No loop mounts: mkfs.ext4 copies the tree in.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&root)
        .arg(&image.disk)
        .arg(IMAGE_SIZE))?;
    fs::remove_dir_all(&root)?;
    fs::write(
        dir.join("done"),
        format!("{:.0} s\n", started.elapsed().as_secs_f64()),
    )?;
    eprintln!(
        "vm-image: built in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(image)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(status.success(), "{command:?} failed: {status}");
    Ok(())
}

/// Whether KVM works here. On some machines KVM guests hang right after
/// the firmware, so the probe boots the image's kernel with no disk and
/// looks for the kernel's first line on the serial console.
fn kvm_works(image: &Image) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let console = std::env::temp_dir().join(format!("mdr-kvm-probe-{}", unique_suffix()));
    let _ = Command::new("timeout")
        .args([
            "8",
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nographic",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let log = fs::read_to_string(&console).unwrap_or_default();
    let _ = fs::remove_file(&console);
    log.contains("Linux version")
}

/// A network of the test: a bridge, a DHCP namespace running dnsmasq.
struct Network {
    _ns: Netns,
    dnsmasq: Child,
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
    }
}

struct Guest {
    qemu: Child,
    console: PathBuf,
    spec: InstanceSpec,
    started: Instant,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Runs the VM test; returns the number of guests that passed.
pub fn test() -> anyhow::Result<u64> {
    let interrupted = interrupt_flag()?;
    let image = image()?;
    let accel = if kvm_works(&image) { "kvm" } else { "tcg" };
    eprintln!("vm-test: qemu with {accel}");
    let mut hv = Hypervisor::new()?;
    let work_dir = metadata_tests::temp_folder(&format!("mdr-vm-{}", unique_suffix()))?;
    let work = work_dir.path().to_owned();
    let mut specs = Vec::new();
    let mut networks = Vec::new();
    let mut taps = Vec::new();
    for name in ["guest-a", "guest-b"] {
        let tap = format!("tap{}", unique_suffix());
        let mac = metadata_tests::random_mac();
        let bridge = hv.add_bridge()?;
        hv.ns().ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        hv.plug(&tap, &bridge)?;
        hv.ns().ip(&["link", "set", &tap, "up"])?;
        networks.push(dhcp_network(&hv, &bridge, &mac, &work)?);
        specs.push(guest_spec(name, &tap, &mac));
        taps.push((tap, mac));
    }
    hv.set_instances(specs.clone())?;
    hv.start_daemon()?;
    let mut guests = Vec::new();
    for (spec, (tap, mac)) in specs.iter().zip(&taps) {
        guests.push(boot(&hv, &image, accel, &work, spec, (tap, mac))?);
    }
    // cloud-init gives up on the metadata service after about two and a
    // half minutes of guest time; past that the marker will not come.
    let deadline = Instant::now() + Duration::from_secs(if accel == "kvm" { 300 } else { 600 });
    for guest in &guests {
        let log = wait_for_marker(guest, &guests, deadline, &interrupted)?;
        check_guest(guest, &log)?;
    }
    println!("{}", hv.daemon_command(&["status"])?);
    println!(
        "vm-test: {} guests configured by cloud-init through the daemon",
        guests.len()
    );
    let passed = guests.len() as u64;
    drop(guests);
    drop(networks);
    Ok(passed)
}

/// Ctrl-C ends the wait for the guests, so that every guard runs: qemu,
/// dnsmasq, namespaces, taps, pins and the work folder all go.
fn interrupt_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    Ok(interrupted)
}

/// The guest's record: its user data prints what cloud-init did, and a
/// marker with the guest's own uuid, on the serial console.
fn guest_spec(name: &str, tap: &str, mac: &str) -> InstanceSpec {
    let id = metadata_tests::uuid_like();
    InstanceSpec {
        id: id.clone(),
        project_id: "vm-test".into(),
        name: name.into(),
        user_data: Some(format!(
            "#cloud-config\nruncmd:\n  - echo \"MDR-HOSTNAME $(hostname)\" > /dev/ttyS0\n  - echo \"MDR-KEYS $(cat /home/debian/.ssh/authorized_keys /root/.ssh/authorized_keys 2>/dev/null | tr '\\n' ' ')\" > /dev/ttyS0\n  - echo \"MDR-MARKER {id}\" > /dev/ttyS0\n"
        )),
        public_key: Some(format!(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} {name}@vm-test"
        )),
        ports: vec![PortSpec {
            device: tap.to_owned(),
            mac: mac.to_owned(),
            network_id: format!("net-{name}"),
            ips: vec!["10.0.0.5".into()],
        }],
        tokens: None,
    }
}

/// Starts qemu for `spec` on its tap, on a copy-on-write overlay of the
/// image, with its serial console in a file.
fn boot(
    hv: &Hypervisor,
    image: &Image,
    accel: &str,
    work: &Path,
    spec: &InstanceSpec,
    (tap, mac): (&str, &str),
) -> anyhow::Result<Guest> {
    let overlay = work.join(format!("{}.qcow2", spec.name));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image.disk)
        .arg(&overlay))?;
    let console = work.join(format!("{}.console", spec.name));
    let qemu = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", hv.ns().name()))
        .args([
            "qemu-system-x86_64",
            "-accel",
            accel,
            "-m",
            "1024",
            "-smp",
            "1",
        ])
        .args(["-nographic", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", "root=/dev/vda rw console=ttyS0 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        ])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
        .args([
            "-smbios",
            "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu")?;
    Ok(Guest {
        qemu,
        console,
        spec: spec.clone(),
        started: Instant::now(),
    })
}

/// The guest's console once it printed its marker.
fn wait_for_marker(
    guest: &Guest,
    guests: &[Guest],
    deadline: Instant,
    interrupted: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<String> {
    let marker = format!("MDR-MARKER {}", guest.spec.id);
    loop {
        let log = fs::read_to_string(&guest.console).unwrap_or_default();
        if log.contains(&marker) {
            return Ok(log);
        }
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted; removing the guests and their networks");
        }
        if Instant::now() > deadline {
            keep_consoles(guests);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            bail!(
                "{} printed no marker in time; console tail:\n{tail}",
                guest.spec.name
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What cloud-init did in the guest, from its console.
fn check_guest(guest: &Guest, log: &str) -> anyhow::Result<()> {
    let name = &guest.spec.name;
    ensure!(
        log.contains(&format!("MDR-HOSTNAME {name}")),
        "{name}: cloud-init did not set the hostname from meta_data.json"
    );
    let key = guest.spec.public_key.as_deref().unwrap_or_default();
    ensure!(
        log.lines()
            .any(|l| l.contains("MDR-KEYS") && l.contains(key)),
        "{name}: cloud-init did not install the SSH key"
    );
    println!(
        "{name}: hostname, SSH key and user data from the daemon; marker after {:.0} s",
        guest.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Copies the guests' serial consoles to target/vm-test/ for a post-mortem.
fn keep_consoles(guests: &[Guest]) {
    let dir = super::root().join("target/vm-test");
    let _ = fs::create_dir_all(&dir);
    for guest in guests {
        let _ = fs::copy(
            &guest.console,
            dir.join(format!("{}.console", guest.spec.name)),
        );
    }
    eprintln!("vm-test: consoles kept in {}", dir.display());
}

/// A namespace on `bridge` with dnsmasq handing 10.0.0.5 to `mac`, plus a
/// host route to 169.254.169.254 on the link (option 121), as Neutron's
/// DHCP agent does for isolated networks.
fn dhcp_network(hv: &Hypervisor, bridge: &str, mac: &str, work: &Path) -> anyhow::Result<Network> {
    let ns = Netns::new("mdr-dhcp")?;
    let port = format!("dh{}", unique_suffix());
    metadata_tests::veth_pair(hv.ns(), &port, &ns)?;
    hv.plug(&port, bridge)?;
    hv.ns().ip(&["link", "set", &port, "up"])?;
    ns.ip(&["addr", "add", "10.0.0.2/24", "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    let dnsmasq = ns
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
        ])
        .arg("--dhcp-range=10.0.0.5,static,255.255.255.0,12h")
        .arg(format!("--dhcp-host={mac},10.0.0.5"))
        .arg("--dhcp-option=option:classless-static-route,169.254.169.254/32,0.0.0.0")
        .arg("--pid-file=")
        // Its own lease file: the default one is shared by every dnsmasq
        // on the machine, and an old lease of 10.0.0.5 would block this one.
        .arg(format!(
            "--dhcp-leasefile={}",
            work.join(format!("{port}.leases")).display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsmasq")?;
    Ok(Network { _ns: ns, dnsmasq })
}
