//! `cargo xtask setup`: what a fresh machine needs, installed only when
//! missing, saying what is being installed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// bpf-linker version that builds against the nightly's own LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// A program the project, its tests, the demo or the benchmarks run, and
/// the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub name: &'static str,
    pub package: &'static str,
}

const fn program(name: &'static str, package: &'static str) -> Program {
    Program { name, package }
}

/// Every program the project runs: the one list that setup installs and
/// that `test`, `demo`, `bench` and `vm-test` check before doing any work.
pub const PROGRAMS: &[Program] = &[
    program("ip", "iproute2"),
    program("ss", "iproute2"),
    program("ping", "iputils-ping"),
    program("nsenter", "util-linux"),
    program("setpriv", "util-linux"),
    program("sysctl", "procps"),
    program("timeout", "coreutils"),
    program("python3", "python3"),
    program("cloud-init", "cloud-init"),
    program("curl", "curl"),
    program("bpftool", "bpftool"),
    program("tcpdump", "tcpdump"),
    program("haproxy", "haproxy"),
    program("nginx", "nginx"),
    program("wrk", "wrk"),
    program("iperf3", "iperf3"),
    program("openssl", "openssl"),
    program("debootstrap", "debootstrap"),
    program("mkfs.ext4", "e2fsprogs"),
    program("qemu-system-x86_64", "qemu-system-x86"),
    program("qemu-img", "qemu-utils"),
    program("dnsmasq", "dnsmasq-base"),
    program("ovsdb-server", "openvswitch-common"),
    program("ovsdb-tool", "openvswitch-common"),
    program("ovsdb-client", "openvswitch-common"),
    program("ovs-appctl", "openvswitch-common"),
    program("ovs-vsctl", "openvswitch-switch"),
    program("ovn-sbctl", "ovn-common"),
    program("ovn-nbctl", "ovn-common"),
    // ovn-central ships ovn-northd and the schemas the tests create databases from.
    program("ovn-northd", "ovn-central"),
    program("iptables", "iptables"),
    program("gzip", "gzip"),
    // The upgrade test's previous release, extracted from git.
    program("git", "git"),
    program("tar", "tar"),
    program("lintian", "lintian"),
    program("chroot", "coreutils"),
    program("systemd-analyze", "systemd"),
];

/// Python modules the tests and benchmarks import with Debian's
/// /usr/bin/python3, and the Debian package that provides each.
pub const PYTHON_MODULES: &[Program] = &[
    program("cloudinit", "cloud-init"),
    program("ovs.db.idl", "python3-openvswitch"),
    program("botocore.utils", "python3-botocore"),
    // The identity test verifies tokens with PyJWT (RSA through cryptography).
    program("jwt", "python3-jwt"),
    program("cryptography", "python3-cryptography"),
    // The metrics test parses the exposition with the reference parser.
    program(
        "prometheus_client.openmetrics.parser",
        "python3-prometheus-client",
    ),
    // The virtualenv for PyPI's packages needs pip bootstrapped.
    program("ensurepip", "python3-venv"),
];

/// Where the virtualenv of PyPI's packages lives (outside the work tree,
/// so a fresh clone does not download it again); the harness runs
/// keystone and neutron from it.
pub const VENV: &str = metadata_tests::openstack::VENV;
/// The neutron release the benchmark runs (2026.1).
pub const NEUTRON_VERSION: &str = "29.0.0";

/// What the virtualenv installs from PyPI, pinned: neutron (the bench's
/// OVN agent, and the Neutron API of the "neutron" port source's tests),
/// keystone, and gunicorn to serve both.
const PYPI_REQUIREMENTS: &[&str] = &["neutron==29.0.0", "keystone==30.0.0", "gunicorn==27.0.1"];

/// Python modules the benchmark imports with the virtualenv's python, and
/// the PyPI requirement that brings each (oslo.config comes with neutron).
pub const PYPI_MODULES: &[Program] = &[
    program(
        "neutron.agent.ovn.metadata.server_socket",
        "neutron==29.0.0",
    ),
    program("oslo_config.cfg", "neutron==29.0.0"),
    program("neutron.db.migration.models.head", "neutron==29.0.0"),
    // SQLAlchemy comes with neutron and keystone.
    program("sqlalchemy", "neutron==29.0.0"),
    program("keystone.server.wsgi", "keystone==30.0.0"),
    program("gunicorn.app.base", "gunicorn==27.0.1"),
];

/// The virtualenv's python, with every module of [`PYPI_MODULES`]
/// importable: created and filled from [`PYPI_REQUIREMENTS`] when not (a
/// few minutes: neutron, keystone and their oslo libraries).
pub fn neutron_python() -> anyhow::Result<PathBuf> {
    let python = Path::new(VENV).join("bin/python");
    let missing = || -> Vec<&str> {
        PYPI_MODULES
            .iter()
            .filter(|m| !importable_by(&python, m.name))
            .map(|m| m.name)
            .collect()
    };
    if missing().is_empty() {
        return Ok(python);
    }
    eprintln!(
        "xtask setup: installing {} from PyPI into {VENV} (a few minutes, once)",
        PYPI_REQUIREMENTS.join(" ")
    );
    run("/usr/bin/python3", &["-m", "venv", VENV])?;
    let pip = Path::new(VENV).join("bin/pip");
    let mut args = vec!["install", "-q"];
    args.extend_from_slice(PYPI_REQUIREMENTS);
    run(&pip.display().to_string(), &args)?;
    let still = missing();
    if !still.is_empty() {
        bail!(
            "{} cannot import {} after installing {}",
            python.display(),
            still.join(", "),
            PYPI_REQUIREMENTS.join(" ")
        );
    }
    Ok(python)
}

/// Packages that must come from the same Debian release as each other.
/// Debian's qemu-system-x86 breaks a newer qemu-utils (a backport some
/// machines come with), and apt resolves that by removing qemu-utils, and
/// with it qemu-img. Asking for both from the running release in one
/// transaction keeps both.
const SAME_RELEASE: &[&str] = &["qemu-utils", "qemu-system-x86"];

/// Everything: toolchain and packages.
pub fn all() -> anyhow::Result<()> {
    toolchain()?;
    packages()?;
    check_programs(PROGRAMS)?;
    check_python_modules(PYTHON_MODULES)?;
    neutron_python().map(drop)
}

/// The nightly toolchain with rust-src, and bpf-linker.
pub fn toolchain() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context(
        "the nightly toolchain is needed for the eBPF crate (rustup toolchain install nightly)",
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask setup: installing rust-src for the nightly toolchain");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    let current = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !current.contains(BPF_LINKER_VERSION) {
        install_bpf_linker()?;
    }
    super::package::ensure_cargo_deb()
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM, so no
/// separate LLVM has to be installed.
fn install_bpf_linker() -> anyhow::Result<()> {
    let version = output("rustc", &["+nightly", "-vV"])?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc +nightly -vV` names no LLVM version")?
        .to_owned();
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let prefix = super::root().join("target/xtask/llvm-prefix");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let sys_lib = sysroot.join("lib");
    let mut main_lib = None;
    for entry in fs::read_dir(&sys_lib).with_context(|| format!("listing {}", sys_lib.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("libLLVM") {
            continue;
        }
        if name.starts_with("libLLVM.so.") {
            main_lib = Some(entry.path());
        }
        symlink(&entry.path(), &lib.join(&name))?;
    }
    let main_lib = main_lib.with_context(|| format!("no libLLVM.so.* in {}", sys_lib.display()))?;
    symlink(&main_lib, &lib.join("libLLVM.so"))?;
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)"
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("installing bpf-linker failed");
    }
    Ok(())
}

fn symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// Installs every package of [`PROGRAMS`] in one apt transaction when any
/// is missing. All of them, not only the missing ones: apt then resolves
/// the whole set together and cannot remove one to make room for another.
fn packages() -> anyhow::Result<()> {
    let mut wanted: Vec<&str> = PROGRAMS
        .iter()
        .chain(PYTHON_MODULES)
        .map(|p| p.package)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    let programs_missing = PROGRAMS.iter().any(|p| !on_path(p.name))
        || PYTHON_MODULES.iter().any(|m| !importable(m.name));
    if missing.is_empty() && !programs_missing {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing Debian packages (missing: {})",
        if missing.is_empty() {
            "none, but programs are".to_owned()
        } else {
            missing.join(" ")
        }
    );
    run("apt-get", &["update", "-q"])?;
    let release = os_release_codename()?;
    let mut args: Vec<String> = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--allow-downgrades",
    ]
    .map(String::from)
    .to_vec();
    args.extend(wanted.iter().map(|package| {
        if SAME_RELEASE.contains(package) {
            format!("{package}/{release}")
        } else {
            (*package).to_owned()
        }
    }));
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed", args[5..].join(" "));
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_ok_and(|status| status.contains("install ok installed"))
}

/// The running Debian release's codename (`bookworm`), from /etc/os-release.
fn os_release_codename() -> anyhow::Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME")
}

/// Whether `program` is an executable file in a folder of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether Debian's python3 can import `module`.
fn importable(module: &str) -> bool {
    importable_by(Path::new("/usr/bin/python3"), module)
}

fn importable_by(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Fails, naming each module Debian's python3 cannot import and its
/// package.
pub fn check_python_modules(modules: &[Program]) -> anyhow::Result<()> {
    let missing: Vec<String> = modules
        .iter()
        .filter(|m| !importable(m.name))
        .map(|m| format!("  python module {} (Debian package {})", m.name, m.package))
        .collect();
    if !missing.is_empty() {
        bail!(
            "python modules the tests import are missing:\n{}\nrun `cargo xtask setup` as root",
            missing.join("\n")
        );
    }
    Ok(())
}

/// Fails, naming each missing program and its package, unless every one of
/// `programs` is on PATH.
pub fn check_programs(programs: &[Program]) -> anyhow::Result<()> {
    let missing: Vec<String> = programs
        .iter()
        .filter(|p| !on_path(p.name))
        .map(|p| format!("  {} (Debian package {})", p.name, p.package))
        .collect();
    if !missing.is_empty() {
        bail!(
            "programs this project runs are not on PATH:\n{}\nrun `cargo xtask setup` as root, or apt-get install the packages named",
            missing.join("\n")
        );
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_message_names_program_and_package() {
        let error = check_programs(&[
            program("sh", "dash"),
            program("mdr-no-such-program", "mdr-some-package"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("mdr-no-such-program (Debian package mdr-some-package)"),
            "{error}"
        );
        assert!(!error.contains("sh (Debian package dash)"), "{error}");
    }

    #[test]
    fn every_program_has_a_package() {
        for p in PROGRAMS {
            assert!(!p.name.is_empty() && !p.package.is_empty());
        }
        for requirement in PYPI_MODULES.iter().map(|m| m.package) {
            assert!(PYPI_REQUIREMENTS.contains(&requirement), "{requirement}");
        }
        assert!(PYPI_REQUIREMENTS.contains(&format!("neutron=={NEUTRON_VERSION}").as_str()));
        for package in SAME_RELEASE {
            assert!(PROGRAMS.iter().any(|p| p.package == *package), "{package}");
        }
    }
}
