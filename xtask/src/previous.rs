//! The previous landed release, built from git for the upgrade test: the
//! daemon a package upgrade replaces, with the older map layout (no
//! `MDR_TAPS`, 12 counters, no budget in the datapath configuration).
//!
//! Built once into `target/previous/<rev>` (its own target folder: the
//! sources sit elsewhere, so cargo would not share this build's units
//! anyway) and reused while that binary exists.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The commit of the previous landed release: main before the map layout
/// gained the per-tap connection budget.
pub const REV: &str = "dd726b3eb4707f3880cece358b5124ea235adb78";

/// The previous release's daemon, built if it is not yet.
pub fn binary(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/previous").join(&REV[..12]);
    let binary = dir.join("target/release/metadata-redirector");
    if binary.exists() {
        return Ok(binary);
    }
    let src = dir.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src)
            .with_context(|| format!("removing the partial {}", src.display()))?;
    }
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    eprintln!(
        "xtask: building the previous release ({}) for the upgrade test (a few minutes, once)",
        &REV[..12]
    );
    extract(root, &src)?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&src)
        .args([
            "build",
            "--release",
            "--locked",
            "--package",
            "metadata-userspace",
            "--bin",
            "metadata-redirector",
            "--target-dir",
        ])
        .arg(dir.join("target"))
        .status()
        .context("running cargo build for the previous release")?;
    if !status.success() {
        bail!("building the previous release {REV} failed");
    }
    Ok(binary)
}

/// Writes the tree of [`REV`] into `dest` (`git archive | tar -x`).
fn extract(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", REV])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive's output")?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(stdout)
        .status()
        .context("running tar")?;
    let archived = archive.wait().context("waiting for git archive")?;
    if !archived.success() {
        bail!("git archive {REV} failed: is this a clone with main's history?");
    }
    if !untar.success() {
        bail!("unpacking {REV} into {} failed", dest.display());
    }
    Ok(())
}
