//! `cargo xtask package`: the Debian package (cargo-deb, the maintained
//! tool that builds .debs from Cargo metadata without a debian/ source
//! tree), checked by lintian; and its test: installed into and purged from
//! a throwaway Debian root with dpkg.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

const CARGO_DEB_VERSION: &str = "3.8.0";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// The state directory the package makes and a purge removes.
const STATE_DIR: &str = "var/lib/metadata-redirector";

/// What the package must install, relative to the root.
const INSTALLED: [&str; 9] = [
    "usr/sbin/metadata-redirector",
    "usr/lib/systemd/system/metadata-redirector.service",
    "usr/lib/systemd/system/metadata-redirector.socket",
    "etc/metadata-redirector/metadata-redirector.toml",
    "usr/share/man/man8/metadata-redirector.8.gz",
    "usr/share/man/man8/metadata-redirector-run.8.gz",
    "usr/share/bash-completion/completions/metadata-redirector",
    "usr/share/zsh/vendor-completions/_metadata-redirector",
    "usr/share/doc/metadata-redirector/copyright",
];

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds target/package/metadata-redirector_*.deb and runs lintian on it.
pub fn build(binary: &Path) -> anyhow::Result<PathBuf> {
    let root = super::root();
    let dir = root.join("target/package");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    run(Command::new(binary).arg("generate").arg(&dir))?;
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "8") {
            run(Command::new("gzip").args(["-9n"]).arg(&path))?;
        }
    }
    let output = run(super::cargo()
        .args(["deb", "--no-build", "-p", "metadata-userspace", "-o"])
        .arg(&dir))?;
    let deb = PathBuf::from(output.lines().last().unwrap_or_default().trim());
    ensure!(deb.exists(), "cargo deb named no package: {output}");
    let lintian = Command::new("lintian")
        .args([
            "--fail-on",
            "error",
            "--suppress-tags",
            "initial-upload-closes-no-bugs",
        ])
        .arg(&deb)
        .output()
        .context("running lintian")?;
    print!("{}", String::from_utf8_lossy(&lintian.stdout));
    ensure!(
        lintian.status.success(),
        "lintian found errors in {}",
        deb.display()
    );
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// cargo-deb, installed once.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    let installed = Command::new("cargo").args(["deb", "--version"]).output();
    if installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION}");
    run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
    .map(drop)
}

/// What a host the package installs on has, beyond minbase: systemd (to
/// verify the units against) and procps (the unit's /bin/kill).
const ROOT_PACKAGES: &str = "systemd,procps";

/// A minimal bookworm root, made once with debootstrap and cached.
fn throwaway_root() -> anyhow::Result<PathBuf> {
    let dir =
        PathBuf::from("/var/cache/metadata-redirector/pkgroot").join(format!("{SUITE}-systemd"));
    if dir.join(".done").exists() {
        return Ok(dir);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    eprintln!(
        "package-test: debootstrap {SUITE} (minbase) into {}",
        dir.display()
    );
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={ROOT_PACKAGES}"),
            SUITE,
        ])
        .arg(&dir)
        .arg(MIRROR))?;
    fs::write(dir.join(".done"), "")?;
    Ok(dir)
}

/// Installs `deb` into the throwaway root, checks what landed and that
/// systemd accepts the units, purges it and checks that nothing is left.
/// Returns the number of checks that passed.
pub fn test(deb: &Path) -> anyhow::Result<u64> {
    let root = throwaway_root()?;
    let chroot = |args: &[&str]| run(Command::new("chroot").arg(&root).args(args));
    // A run killed half-way may have left it installed.
    chroot(&["dpkg", "--purge", "metadata-redirector"])?;
    let inside = root.join("tmp/metadata-redirector.deb");
    fs::copy(deb, &inside)?;
    chroot(&["dpkg", "-i", "/tmp/metadata-redirector.deb"])?;
    fs::remove_file(&inside)?;
    for path in INSTALLED {
        ensure!(
            root.join(path).exists(),
            "the package did not install /{path}"
        );
    }
    let version = chroot(&["/usr/sbin/metadata-redirector", "--version"])?;
    ensure!(version.starts_with("metadata-redirector "), "{version}");
    let units = root.join("usr/lib/systemd/system");
    run(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .args(["verify", "--man=no"])
        .arg(units.join("metadata-redirector.socket"))
        .arg(units.join("metadata-redirector.service")))?;
    chroot(&["dpkg", "--purge", "metadata-redirector"])?;
    for path in INSTALLED.iter().chain(&[STATE_DIR]) {
        ensure!(!root.join(path).exists(), "purging left /{path}");
    }
    eprintln!(
        "package-test: installed, verified and purged cleanly in {}",
        root.display()
    );
    Ok(1)
}
