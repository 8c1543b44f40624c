//! `cargo xtask fuzz`: each cargo-fuzz target of metadata-userspace/fuzz
//! for a bounded time, from its seeds (and the corpus earlier runs left).
//! A crash fails the run and names the input: fix it and add the input to
//! the regression cases in metadata-userspace/src/fuzzing.rs, which the
//! normal tests run.

use std::{fs, process::Command};

use anyhow::{Context as _, bail};

/// The targets, each a binary of the fuzz crate.
const TARGETS: &[&str] = &["request_routes"];

pub fn run(seconds: u64) -> anyhow::Result<()> {
    super::setup::toolchain()?;
    ensure_cargo_fuzz()?;
    let crate_dir = super::root().join("metadata-userspace");
    for target in TARGETS {
        let corpus = crate_dir.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = crate_dir.join("fuzz/seeds").join(target);
        eprintln!("xtask fuzz: {target} for {seconds} s");
        let status = Command::new("cargo")
            .current_dir(&crate_dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}"), "-max_len=4096"])
            .status()
            .context("running cargo fuzz")?;
        // The fuzz process's backend state folder (its pid is gone now).
        super::sweep();
        if !status.success() {
            bail!(
                "{target} crashed; the input is under metadata-userspace/fuzz/artifacts/{target}/: \
                 fix it and add it to the regression cases in metadata-userspace/src/fuzzing.rs"
            );
        }
    }
    println!(
        "fuzz: {} target(s), {seconds} s each, no crash",
        TARGETS.len()
    );
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz from crates.io (once)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed");
    }
    Ok(())
}
