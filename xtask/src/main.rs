//! `cargo xtask`: everything a developer or CI does with this repository.

mod bench;
mod demo;
mod fuzz;
mod package;
mod previous;
mod setup;
#[cfg(test)]
mod setup_audit;
mod vm;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, demo and test metadata-redirector"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (idempotent): the nightly
    /// toolchain's rust-src, bpf-linker and the Debian packages the tests use.
    Setup,
    /// Build target/release/metadata-redirector.
    Build,
    /// Build, then run the daemon with ARGS (e.g. `run --config FILE`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Two VMs with the same IP, served by the daemon; prints what
    /// cloud-init reads in each, then waits for Ctrl-C.
    Demo {
        /// Exit after printing instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Benchmarks against the Neutron path, side by side; writes
    /// target/bench/results.md and results.json.
    Bench {
        /// Short runs and fewer sizes (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Only the OVN Southbound comparison (same as `--only ovn`).
        #[arg(long)]
        ovn_only: bool,
        /// Run only these sections (repeatable); all when absent.
        #[arg(long, value_enum)]
        only: Vec<bench::Section>,
    },
    /// Build the Debian package (target/package/*.deb) and run lintian.
    Package {
        /// Also install it into a throwaway Debian root and purge it.
        #[arg(long)]
        test: bool,
    },
    /// Build (once, cached) the Debian guest image for vm-test.
    VmImage,
    /// Boot two Debian guests with qemu on real taps and check what their
    /// cloud-init did.
    VmTest,
    /// The soak: 50 VMs, 4 keep-alive connections each, mixed requests
    /// with abusive guests among them; fails on any failed or wrong answer
    /// to a well-behaved guest and reports the daemon's RSS.
    Soak {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// A bounded run of the fuzz targets (cargo fuzz, nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Unit tests, BPF_PROG_TEST_RUN fixtures and end-to-end tests.
    Test {
        /// Also build the guest image if needed and run the VM test (it runs
        /// anyway when the image is cached).
        #[arg(long)]
        vm: bool,
        /// Extra arguments for `cargo test` (a filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => setup::all(),
        Task::Build => {
            setup::toolchain()?;
            build()?;
            Ok(())
        }
        Task::Run { args } => run_daemon(&args),
        Task::Demo { once } => {
            prepare_live_run("the demo")?;
            demo::run(once)
        }
        Task::Bench {
            quick,
            ovn_only,
            mut only,
        } => {
            if ovn_only {
                only.push(bench::Section::Ovn);
            }
            run_bench(quick, &only)
        }
        Task::Package { test } => {
            setup::all()?;
            let binary = build()?;
            let deb = package::build(&binary)?;
            if test {
                require_root("the package test")?;
                package::test(&deb)?;
            }
            Ok(())
        }
        Task::VmImage => {
            require_root("building the VM image")?;
            vm::image().map(drop)
        }
        Task::VmTest => {
            prepare_live_run("the VM test")?;
            let passed = vm::test()?;
            println!("summary: {passed} passed, 0 failed");
            Ok(())
        }
        Task::Soak { seconds } => {
            prepare_live_run("the soak")?;
            run_soak(seconds)
        }
        Task::Fuzz { seconds } => fuzz::run(seconds),
        Task::Test { vm, args } => run_tests(vm, &args),
    }
}

/// `cargo xtask run`: the daemon with `args`.
fn run_daemon(args: &[String]) -> anyhow::Result<()> {
    setup::toolchain()?;
    let binary = build()?;
    let status = Command::new(&binary)
        .args(args)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("metadata-redirector exited with {status}");
    }
    Ok(())
}

fn run_soak(seconds: u64) -> anyhow::Result<()> {
    use metadata_tests::soak;
    let options = soak::standard(std::time::Duration::from_secs(seconds));
    let report = soak::run(options)?;
    println!(
        "soak: {seconds} s, 50 VMs (4 abusive: flood, slowloris, garbage, churn), 4 connections each\n{}",
        report.summary(options.duration)
    );
    soak::check(&report, &options)
}

fn run_bench(quick: bool, only: &[bench::Section]) -> anyhow::Result<()> {
    prepare_live_run("the benchmarks")?;
    bench::run(quick, only)
}

/// What every task that runs the daemon on this machine needs first:
/// root, the installed programs, a fresh build and no leftovers of an
/// interrupted earlier run.
fn prepare_live_run(what: &str) -> anyhow::Result<()> {
    require_root(what)?;
    setup::all()?;
    build()?;
    sweep();
    Ok(())
}

/// `cargo xtask test`: cargo's suites, the package test and (with `--vm`
/// or a cached image) the VM test, with one closing summary line.
fn run_tests(vm: bool, args: &[String]) -> anyhow::Result<()> {
    require_root("the tests (they create namespaces and load eBPF)")?;
    setup::all()?;
    let (mut passed, failed) = test(args)?;
    let binary = root().join("target/release/metadata-redirector");
    passed += package::test(&package::build(&binary)?)?;
    if vm || vm::cached().is_some() {
        passed += vm::test()?;
    }
    // The closing line of the whole run, unit to VM tests.
    println!("summary: {passed} passed, {failed} failed");
    Ok(())
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Builds the release binary and returns its path.
fn build() -> anyhow::Result<PathBuf> {
    eprintln!("xtask: building target/release/metadata-redirector");
    let status = cargo()
        .args([
            "build",
            "--release",
            "--package",
            "metadata-userspace",
            "--bin",
            "metadata-redirector",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(root().join("target/release/metadata-redirector"))
}

/// Removes what earlier, killed test or demo runs left behind.
pub fn sweep() {
    for item in metadata_tests::sweep_stale() {
        eprintln!("xtask: removed leftover {item}");
    }
}

/// Runs the cargo test suites; returns (passed, failed) on success.
fn test(args: &[String]) -> anyhow::Result<(u64, u64)> {
    let binary = build()?;
    let previous = previous::binary(&root())?;
    sweep();
    eprintln!("xtask: running unit, fixture and end-to-end tests");
    // Release profile: shares the build above instead of compiling the
    // daemon a second time. No doc tests: there are none, and their empty
    // summaries would be the last lines of the run.
    let mut child = cargo()
        .args(["test", "--release", "--lib", "--bins", "--tests"])
        .args(args)
        .env("METADATA_REDIRECTOR_BIN", &binary)
        .env("METADATA_REDIRECTOR_PREVIOUS_BIN", &previous)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count_before(result, " passed");
            failed += count_before(result, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        println!("summary: {passed} passed, {failed} failed");
        bail!("tests failed");
    }
    Ok((passed, failed))
}

/// The number right before `label` in a libtest summary such as
/// "ok. 12 passed; 0 failed; ...".
fn count_before(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| part.trim().strip_suffix(label))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{what} must run as root");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
