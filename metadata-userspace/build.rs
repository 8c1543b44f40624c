//! Builds the eBPF programs (metadata-ebpf) for the BPF target with the
//! nightly toolchain and bpf-linker, so that `include_bytes_aligned!` in
//! `datapath` embeds the object. `cargo xtask setup` installs what this needs.
//!
//! aya-build forwards every line of the inner cargo's progress as a
//! `cargo:warning=`, which reads as dozens of problems on a healthy build.
//! Its output is captured and the progress lines are shown only when the
//! eBPF build fails; anything else (real compiler warnings, cargo
//! directives) is passed on unchanged.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("{manifest_dir} has no parent"))?
        .join("metadata-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", ebpf_dir.display()))?;
    // The shared types are part of the object too.
    println!("cargo:rerun-if-changed={root_dir}/common/src");
    let (result, captured) = capture_stdout(|| {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "metadata-ebpf",
                root_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::Nightly,
        )
    })?;
    let mut stdout = std::io::stdout().lock();
    for line in captured.lines() {
        if result.is_err() || !is_progress(line) {
            writeln!(stdout, "{line}").context("writing to cargo")?;
        }
    }
    result
}

/// A progress line of the inner cargo, forwarded as a warning.
fn is_progress(line: &str) -> bool {
    const PROGRESS: &[&str] = &[
        "Compiling ",
        "Finished ",
        "Fresh ",
        "Running ",
        "Updating ",
        "Locking ",
        "Downloading ",
        "Downloaded ",
        "Blocking ",
        "Checking ",
        "Building ",
    ];
    line.strip_prefix("cargo:warning=").is_some_and(|message| {
        let message = message.trim_start();
        PROGRESS.iter().any(|p| message.starts_with(p))
    })
}

/// Runs `f` with this process's stdout (fd 1) sent to a temporary file and
/// returns what it printed.
fn capture_stdout<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, String)> {
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    let path = std::path::Path::new(&out_dir).join("aya-build-output.txt");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::stdout().flush().context("flushing stdout")?;
    // SAFETY: dup and dup2 on valid descriptors; fd 1 is restored below
    // before anything else writes to it.
    let saved = unsafe { libc::dup(1) };
    anyhow::ensure!(saved >= 0, "dup(1): {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    anyhow::ensure!(
        unsafe { libc::dup2(file.as_raw_fd(), 1) } >= 0,
        "dup2: {}",
        std::io::Error::last_os_error()
    );
    let value = f();
    let flushed = std::io::stdout().flush();
    // SAFETY: `saved` is the original fd 1, duplicated above.
    let restored = unsafe { libc::dup2(saved, 1) };
    // SAFETY: `saved` is ours and no longer needed.
    unsafe { libc::close(saved) };
    anyhow::ensure!(
        restored >= 0,
        "restoring stdout: {}",
        std::io::Error::last_os_error()
    );
    flushed.context("flushing captured stdout")?;
    let mut captured = String::new();
    file.rewind().context("rewinding the captured output")?;
    file.read_to_string(&mut captured)
        .context("reading the captured output")?;
    Ok((value, captured))
}
