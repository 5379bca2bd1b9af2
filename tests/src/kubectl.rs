//! The real kubectl against `lb api-server`: the server started on a store (on
//! loopback, or inside a node namespace for an agent there), a kubeconfig from
//! `lb kubeconfig`, and kubectl run with it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    lbctl::{Lb, lb_bin},
    topology::{Netns, Topology},
};

/// kubectl as `cargo xtask test` installs it (`target/tools/kubectl`), or
/// `LB_KUBECTL`.
pub fn kubectl_bin() -> PathBuf {
    let bin = std::env::var_os("LB_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/kubectl")
        });
    assert!(
        bin.exists(),
        "{} not found: run the tests through `cargo xtask test` (its setup fetches kubectl)",
        bin.display()
    );
    bin
}

/// `lb api-server` on a store, on loopback in this namespace (port chosen by
/// the kernel); stopped (by PID) on drop.
pub struct ApiServer {
    child: Child,
    /// Its standard output, kept open (the server may still write to it).
    _stdout: Option<BufReader<std::process::ChildStdout>>,
    /// The kubeconfig `lb kubeconfig` wrote, and kubectl's cache beside it.
    pub kubeconfig: PathBuf,
    home: PathBuf,
    pub addr: String,
}

impl ApiServer {
    /// Serves `lb`'s store.
    pub fn start(lb: &Lb) -> Result<Self> {
        let mut child = Command::new(lb_bin())
            .arg("--store")
            .arg(&lb.store)
            .args(["api-server", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting lb api-server")?;
        let mut line = String::new();
        let mut stdout = child.stdout.take().map(BufReader::new);
        let read = stdout.as_mut().map(|out| out.read_line(&mut line));
        let addr = line
            .split("https://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        let Some(addr) = addr.filter(|_| matches!(read, Some(Ok(_)))) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lb api-server did not say where it serves: {line:?}");
        };
        let home = lb.store.with_file_name(format!("kube-home-{}", child.id()));
        std::fs::create_dir_all(&home)?;
        let kubeconfig = home.join("config");
        let config = lb.ok(&["kubeconfig"])?;
        std::fs::write(&kubeconfig, config)?;
        Ok(ApiServer {
            child,
            _stdout: stdout,
            kubeconfig,
            home,
            addr,
        })
    }

    /// `kubectl ARGS` (its cache under this server's own home).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_in(Path::new("."), args)
    }

    /// [`kubectl`](Self::kubectl) run in `dir` (relative `-f` paths).
    pub fn kubectl_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(kubectl_bin())
            .current_dir(dir)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    /// `kubectl ARGS` started in the background (a watch), output piped.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Child {
        Command::new(kubectl_bin())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kubectl")
    }

    /// `kubectl ARGS`, failing the test unless it succeeds; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// `lb api-server` inside `ns` on 127.0.0.1:6443 (label `api-server`, stopped with
/// the topology), for an agent in the same namespace; waits until it serves and
/// returns the path of a kubeconfig for it.
pub fn serve_in(t: &mut Topology, ns: &Netns, lb: &Lb) -> Result<PathBuf> {
    serve_on(t, ns, lb, "127.0.0.1:6443")
}

/// [`serve_in`] on `addr` (an address of `ns`: the LAN's, for agents on other
/// nodes).
pub fn serve_on(t: &mut Topology, ns: &Netns, lb: &Lb, addr: &str) -> Result<PathBuf> {
    let bin = lb_bin().display().to_string();
    let store = lb.store.display().to_string();
    t.spawn(
        ns,
        "api-server",
        &[&bin, "--store", &store, "api-server", "--listen", addr],
        &[],
    )?;
    let server = format!("https://{addr}");
    let config = Topology::wait_for(Duration::from_secs(10), || {
        let log = t.log("api-server");
        log.contains("serving the store")
            .then(|| lb.ok(&["kubeconfig", "--server", &server]).ok())?
    })
    .with_context(|| format!("lb api-server never served: {}", t.log("api-server")))?;
    let path = t.dir().join("lb-api.kubeconfig");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// kubectl in `ns` with `kubeconfig` (its cache in the topology's directory).
pub fn kubectl_in_ns(t: &Topology, ns: &Netns, kubeconfig: &Path, args: &[&str]) -> Output {
    let bin = kubectl_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    t.cmd(ns, &argv)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", t.dir())
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl")
}
