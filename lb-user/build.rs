use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds `lb-ebpf` for the bpfel target with the nightly toolchain (aya-build runs
/// `rustup run nightly cargo build -Z build-std=core`), so that a plain `cargo build` on
/// stable builds everything; the ELF lands in OUT_DIR and is embedded by `loader.rs`.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("package lb-ebpf not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
