//! Builds the eBPF programs (metadata-ebpf) for the BPF target with the
//! nightly toolchain and bpf-linker, so that `include_bytes_aligned!` in
//! `datapath` embeds the object. `cargo xtask setup` installs what this needs.

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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "metadata-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
