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

/// Debian packages the tests, the demo and the benchmarks use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "util-linux",
    "python3",
    "cloud-init",
    "curl",
    "bpftool",
    "tcpdump",
    "haproxy",
    "wrk",
    "iperf3",
    "openssl",
];

/// Everything: toolchain and packages.
pub fn all() -> anyhow::Result<()> {
    toolchain()?;
    packages(PACKAGES)
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
    Ok(())
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

/// Installs the Debian packages of `wanted` that are missing.
pub fn packages(wanted: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|package| {
            !output("dpkg-query", &["-W", "-f=${Status}", package])
                .is_ok_and(|status| status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing Debian packages: {}",
        missing.join(" ")
    );
    run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install failed");
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
