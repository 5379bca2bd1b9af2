//! The topology guard: namespaces, veths, processes, a private bpffs and a scratch
//! directory, all removed when the guard is dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes it.
pub fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A network namespace made by a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

/// The calling thread inside another network namespace until dropped (sockets
/// made meanwhile stay in that namespace).
pub struct InNetns(fs::File);

impl InNetns {
    pub fn enter(ns: &Netns) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        let home = fs::File::open("/proc/thread-self/ns/net").context("own netns")?;
        let target = fs::File::open(ns.path()).with_context(|| ns.path())?;
        // SAFETY: setns(2) on valid descriptors; only this thread moves.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", ns.name, std::io::Error::last_os_error());
        }
        Ok(InNetns(home))
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: as above; back to the namespace we came from.
        unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

pub struct Topology {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<Netns>,
    children: Vec<(String, Child)>,
    mounts: Vec<PathBuf>,
    /// `/etc/netns/NAME` directories written for namespaces (removed on drop).
    etc: Vec<PathBuf>,
}

fn check(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Topology {
    /// A new, empty topology; `tag` makes its namespace names readable
    /// (`lb<pid>-<n>-<tag>-<name>`).
    pub fn new(tag: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("lb{}-{n}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Topology {
            prefix,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            mounts: Vec::new(),
            etc: Vec::new(),
        })
    }

    /// Scratch directory (store, logs, bpffs), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new namespace with loopback up.
    pub fn netns(&mut self, short: &str) -> Result<Netns> {
        let ns = Netns {
            name: format!("{}-{short}", self.prefix),
        };
        check(Command::new("ip").args(["netns", "add", &ns.name]))?;
        self.namespaces.push(ns.clone());
        self.ip(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair created directly inside the two namespaces (never in the root
    /// namespace), both ends up.
    pub fn link(&mut self, a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
        check(Command::new("ip").args([
            "link", "add", "name", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
            "netns", &b.name,
        ]))?;
        self.ip(a, &["link", "set", a_if, "up"])?;
        self.ip(b, &["link", "set", b_if, "up"])?;
        let links = Links::from_env();
        for (ns, iface) in [(a, a_if), (b, b_if)] {
            links.apply(self, ns, iface)?;
        }
        Ok(())
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, ns: &Netns, args: &[&str]) -> Result<()> {
        self.guard_ns(ns)?;
        check(Command::new("ip").arg("-n").arg(&ns.name).args(args)).map(|_| ())
    }

    fn guard_ns(&self, ns: &Netns) -> Result<()> {
        if !self.namespaces.contains(ns) {
            bail!("namespace {} was not made by this topology", ns.name);
        }
        Ok(())
    }

    /// A command inside the namespace (nsenter keeps our mounts, bpffs included).
    pub fn cmd(&self, ns: &Netns, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ns.path())).arg("--").args(argv);
        c
    }

    /// Runs a command inside the namespace and returns its output, whatever its status.
    pub fn run(&self, ns: &Netns, argv: &[&str]) -> Result<Output> {
        self.guard_ns(ns)?;
        self.cmd(ns, argv)
            .output()
            .with_context(|| format!("running {argv:?} in {}", ns.name))
    }

    /// Like [`run`](Self::run), failing unless the command succeeds.
    pub fn sh(&self, ns: &Netns, argv: &[&str]) -> Result<String> {
        self.guard_ns(ns)?;
        let out = check(&mut self.cmd(ns, argv))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The interface index of `iface` inside the namespace.
    pub fn ifindex(&self, ns: &Netns, iface: &str) -> Result<u32> {
        self.guard_ns(ns)?;
        let _in = InNetns::enter(ns)?;
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: a valid C string.
        let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if i == 0 {
            bail!("no {iface} in {}", ns.name);
        }
        Ok(i)
    }

    /// The MAC address of `iface` inside the namespace.
    pub fn mac(&self, ns: &Netns, iface: &str) -> Result<[u8; 6]> {
        let out = self.sh(ns, &["ip", "-br", "link", "show", "dev", iface])?;
        let text = out
            .split_whitespace()
            .nth(2)
            .context("ip -br link: no address")?;
        let mut m = [0u8; 6];
        for (b, part) in m.iter_mut().zip(text.split(':')) {
            *b = u8::from_str_radix(part, 16)?;
        }
        Ok(m)
    }

    /// A permanent neighbour entry in the namespace: `addr` is at `mac` on `dev`.
    pub fn neigh(&self, ns: &Netns, addr: &str, mac: [u8; 6], dev: &str) -> Result<()> {
        let mac = mac_text(mac);
        self.ip(
            ns,
            &[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        )
    }

    pub fn sysctl(&self, ns: &Netns, key: &str, value: &str) -> Result<()> {
        self.sh(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Starts a long-running process inside the namespace; its output goes to
    /// `DIR/LABEL.log`. It is stopped (by PID) on drop.
    pub fn spawn(
        &mut self,
        ns: &Netns,
        label: &str,
        argv: &[&str],
        env: &[(&str, &str)],
    ) -> Result<u32> {
        self.guard_ns(ns)?;
        let log = fs::File::create(self.dir.join(format!("{label}.log")))?;
        let mut cmd = self.cmd(ns, argv);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {argv:?} in {}", ns.name))?;
        let pid = child.id();
        self.children.push((label.to_string(), child));
        Ok(pid)
    }

    /// Stops the process started as `label` (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self, label: &str) {
        if let Some(i) = self.children.iter().position(|(l, _)| l == label) {
            let (_, child) = self.children.remove(i);
            terminate(child);
        }
    }

    /// Kills the process started as `label` at once (SIGKILL: as a crash, nothing of
    /// its own shutdown runs) and reaps it.
    pub fn kill(&mut self, label: &str) {
        if let Some(i) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PID of the process started as `label`, while this topology holds it.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c.id())
    }

    /// Whether the process started as `label` is still running.
    pub fn running(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// What the process started as `label` wrote.
    pub fn log(&self, label: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// The namespace's own /etc/resolv.conf, as `ip netns exec` puts it over the
    /// machine's (`/etc/netns/NAME/resolv.conf`, removed on drop); seen by
    /// [`resolving`](Self::resolving).
    pub fn resolv_conf(&mut self, ns: &Netns, text: &str) -> Result<()> {
        self.guard_ns(ns)?;
        let dir = Path::new("/etc/netns").join(&ns.name);
        fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        self.etc.push(dir.clone());
        fs::write(dir.join("resolv.conf"), text).context("writing resolv.conf")
    }

    /// Runs a command in the namespace as `ip netns exec` does, with its
    /// /etc/netns files (its resolv.conf) over /etc, failing unless it succeeds.
    pub fn resolving(&self, ns: &Netns, argv: &[&str]) -> Result<String> {
        self.guard_ns(ns)?;
        let out = check(
            Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .args(argv),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A private bpffs mounted in the scratch directory (unmounted on drop).
    pub fn bpffs(&mut self) -> Result<PathBuf> {
        let dir = self.dir.join("bpffs");
        fs::create_dir_all(&dir)?;
        check(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))?;
        self.mounts.push(dir.clone());
        Ok(dir)
    }

    /// Retries `probe` every 100 ms until it returns `Some` or `timeout` passes.
    pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return Some(v);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn terminate(mut child: Child) {
    // SAFETY: kill(2) on the PID of a child we spawned and have not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Topology {
    fn drop(&mut self) {
        // LB_TEST_PAUSE=SECONDS keeps a topology up that long before tearing it down,
        // to look at a failing test from another shell.
        if let Some(secs) = std::env::var("LB_TEST_PAUSE")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            eprintln!("LB_TEST_PAUSE: keeping {}* for {secs} s", self.prefix);
            thread::sleep(Duration::from_secs(secs));
        }
        for (_, child) in self.children.drain(..).rev() {
            terminate(child);
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        }
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        for dir in self.etc.drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
        if std::env::var_os("LB_KEEP_TEST_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// How the tests' veths are set, from `LB_TEST_LINKS` (unset: `default`). lb must
/// deliver on every one; `cargo xtask test` runs the end-to-end tests on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// As `ip link add` makes them, as container runtimes and kind leave them:
    /// transmit checksum offload on (a local socket's packets carry partial
    /// checksums), GRO off (no NAPI: a veth drops frames XDP redirects into it).
    Default,
    /// Transmit checksum offload off on every end: complete checksums, as off a wire.
    OffloadsOff,
    /// GRO on every end: NAPI, so veths take redirected frames.
    GroOn,
    /// Both: what lb's XDP fast path on veths (`--xdp native`) needs.
    Tuned,
}

impl Links {
    pub fn from_env() -> Links {
        match std::env::var("LB_TEST_LINKS").as_deref() {
            Ok("offloads-off") => Links::OffloadsOff,
            Ok("gro-on") => Links::GroOn,
            Ok("tuned") => Links::Tuned,
            _ => Links::Default,
        }
    }

    /// Sets one veth end as these links want.
    pub fn apply(self, t: &Topology, ns: &Netns, iface: &str) -> Result<()> {
        if matches!(self, Links::OffloadsOff | Links::Tuned) {
            t.sh(ns, &["ethtool", "-K", iface, "tx", "off"])?;
        }
        if matches!(self, Links::GroOn | Links::Tuned) {
            t.sh(ns, &["ethtool", "-K", iface, "gro", "on"])?;
        }
        Ok(())
    }
}

/// The seeds' network: a laptop (192.168.1.10) and a node (192.168.1.2) on one LAN,
/// pods in 10.244.0.0/16 behind the node, each on its own veth (as Cilium's and the
/// ptp CNI plugin's pods are).
pub mod seeds {
    use super::*;

    pub const LAPTOP_IP: &str = "192.168.1.10";
    pub const NODE_IP: &str = "192.168.1.2";
    pub const POD_IP: &str = "10.244.0.2";
    /// The address pods use as their gateway (on every host-side pod veth).
    pub const POD_GATEWAY: &str = "10.244.0.1";

    pub struct Seeds {
        pub laptop: Netns,
        pub node: Netns,
    }

    /// Laptop and node joined by a veth "wire", set as [`Links::from_env`] says.
    pub fn lan(t: &mut Topology) -> Result<Seeds> {
        let laptop = t.netns("laptop")?;
        let node = t.netns("node")?;
        t.link(&laptop, "eth0", &node, "eth0")?;
        t.ip(
            &laptop,
            &["addr", "add", &format!("{LAPTOP_IP}/24"), "dev", "eth0"],
        )?;
        t.ip(
            &node,
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"],
        )?;
        t.sysctl(&node, "net.ipv4.ip_forward", "1")?;
        Ok(Seeds { laptop, node })
    }

    /// A pod namespace `short` with address `ip`, its veth's host side named
    /// `host_if` in the node, a /32 route to it, and a default route back via the node.
    pub fn pod(
        t: &mut Topology,
        node: &Netns,
        short: &str,
        host_if: &str,
        ip: &str,
    ) -> Result<Netns> {
        pod_via(t, node, short, host_if, ip, POD_GATEWAY)
    }

    /// [`pod`] with the gateway address of the node's pod network (`10.244.N.1`).
    pub fn pod_via(
        t: &mut Topology,
        node: &Netns,
        short: &str,
        host_if: &str,
        ip: &str,
        gateway: &str,
    ) -> Result<Netns> {
        let pod = t.netns(short)?;
        t.link(&pod, "eth0", node, host_if)?;
        // As with the ptp CNI plugin, the pod's address is a /32: everything, other
        // pods included, goes through the node.
        t.ip(&pod, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        t.ip(
            &pod,
            &["route", "add", gateway, "dev", "eth0", "scope", "link"],
        )?;
        t.ip(
            &pod,
            &["route", "add", "default", "via", gateway, "dev", "eth0"],
        )?;
        t.ip(
            node,
            &["addr", "add", &format!("{gateway}/32"), "dev", host_if],
        )?;
        t.ip(node, &["route", "add", &format!("{ip}/32"), "dev", host_if])?;
        Ok(pod)
    }
}

/// The seeds' network in both families: [`seeds`]' namespaces with IPv6 addresses
/// beside the IPv4 ones (unique-local, inside the namespaces only), as a dual-stack
/// cluster's nodes and pods have them.
pub mod dual {
    use super::*;

    pub const LAPTOP_IP6: &str = "fd00:192:168:1::10";
    pub const NODE_IP6: &str = "fd00:192:168:1::2";
    pub const POD_IP6: &str = "fd00:10:244::2";
    pub const POD_GATEWAY6: &str = "fd00:10:244::1";
    /// The store's ranges: IPv4 first, as a dual-stack cluster's usual order.
    pub const SERVICE_CIDRS: &str = "10.96.0.0/12,fd00:10:96::/112";

    /// [`seeds::lan`] with IPv6 on the wire (no duplicate address detection: the
    /// addresses are usable at once) and IPv6 forwarding in the node.
    pub fn lan(t: &mut Topology) -> Result<seeds::Seeds> {
        let s = seeds::lan(t)?;
        for (ns, ip) in [(&s.laptop, LAPTOP_IP6), (&s.node, NODE_IP6)] {
            t.ip(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
        }
        t.sysctl(&s.node, "net.ipv6.conf.all.forwarding", "1")?;
        Ok(s)
    }

    /// [`seeds::pod`] with an IPv6 address too: a /128 with a route to the node's
    /// gateway address on its veth, as [`seeds::pod_via`] does for IPv4.
    pub fn pod(
        t: &mut Topology,
        node: &Netns,
        short: &str,
        host_if: &str,
        ip: &str,
        ip6: &str,
    ) -> Result<Netns> {
        let pod = seeds::pod(t, node, short, host_if, ip)?;
        add_ip6(t, node, &pod, host_if, ip6, POD_GATEWAY6)?;
        Ok(pod)
    }

    /// Gives `pod` (behind `host_if` in `node`) the IPv6 address `ip6`: a /128, a
    /// route to `gateway` on its veth and a default route via it; the gateway
    /// address on the host side and a /128 route back, as IPv4's.
    pub fn add_ip6(
        t: &Topology,
        node: &Netns,
        pod: &Netns,
        host_if: &str,
        ip6: &str,
        gateway: &str,
    ) -> Result<()> {
        let add = |ns: &Netns, cidr: &str, dev: &str| {
            t.ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"])
        };
        add(pod, &format!("{ip6}/128"), "eth0")?;
        t.ip(pod, &["-6", "route", "add", gateway, "dev", "eth0"])?;
        t.ip(
            pod,
            &[
                "-6", "route", "add", "default", "via", gateway, "dev", "eth0",
            ],
        )?;
        add(node, &format!("{gateway}/128"), host_if)?;
        t.ip(
            node,
            &["-6", "route", "add", &format!("{ip6}/128"), "dev", host_if],
        )
    }
}

/// [`multinode`]'s LAN in both families: the laptop and node N with IPv6 addresses
/// beside their IPv4 ones (`fd00:192:168:1::10`, `fd00:192:168:1::(2+N)`), node N's
/// pods at `fd00:10:244:N::(2+i)` behind it (gateway `fd00:10:244:N::1`), and every
/// node routing the other nodes' IPv6 pod networks to them.
pub mod multinode6 {
    use super::*;

    pub fn node_ip6(n: usize) -> String {
        format!("fd00:192:168:1::{}", 2 + n)
    }

    pub fn pod_ip6(n: usize, i: usize) -> String {
        format!("fd00:10:244:{n}::{}", 2 + i)
    }

    pub fn lan(t: &mut Topology, nodes: usize, pods_per_node: usize) -> Result<multinode::Lan> {
        let lan = multinode::lan(t, nodes, pods_per_node)?;
        let add = |ns: &Netns, cidr: &str, dev: &str| {
            t.ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"])
        };
        add(&lan.laptop, &format!("{}/64", dual::LAPTOP_IP6), "eth0")?;
        for (n, node) in lan.nodes.iter().enumerate() {
            add(node, &format!("{}/64", node_ip6(n)), "eth0")?;
            t.sysctl(node, "net.ipv6.conf.all.forwarding", "1")?;
            for m in (0..nodes).filter(|m| *m != n) {
                t.ip(
                    node,
                    &[
                        "-6",
                        "route",
                        "add",
                        &format!("fd00:10:244:{m}::/64"),
                        "via",
                        &node_ip6(m),
                    ],
                )?;
            }
            let gateway = format!("fd00:10:244:{n}::1");
            for (i, pod) in lan.pods[n].iter().enumerate() {
                let host_if = format!("lxc{i}");
                dual::add_ip6(t, node, pod, &host_if, &pod_ip6(n, i), &gateway)?;
            }
        }
        Ok(lan)
    }
}

/// Several nodes on one LAN: a bridge in a namespace of its own joins the laptop
/// (192.168.1.10) and nodes 192.168.1.2, .3, ...; node N's pods live in
/// 10.244.N.0/24 behind it, and every node routes the other nodes' pod networks to
/// them (as a flat, routed CNI does).
pub mod multinode {
    use super::*;

    pub struct Lan {
        /// The bridge's namespace.
        pub lan: Netns,
        pub laptop: Netns,
        pub nodes: Vec<Netns>,
        /// `pods[n][i]`: pod i of node n, address 10.244.n.(2+i).
        pub pods: Vec<Vec<Netns>>,
    }

    pub fn node_ip(n: usize) -> String {
        format!("192.168.1.{}", 2 + n)
    }

    pub fn pod_ip(n: usize, i: usize) -> String {
        format!("10.244.{n}.{}", 2 + i)
    }

    pub fn lan(t: &mut Topology, nodes: usize, pods_per_node: usize) -> Result<Lan> {
        let lan = t.netns("lan")?;
        t.ip(&lan, &["link", "add", "br0", "type", "bridge"])?;
        t.ip(&lan, &["link", "set", "br0", "up"])?;
        let laptop = t.netns("laptop")?;
        t.link(&laptop, "eth0", &lan, "p-laptop")?;
        t.ip(&lan, &["link", "set", "p-laptop", "master", "br0"])?;
        t.ip(
            &laptop,
            &[
                "addr",
                "add",
                &format!("{}/24", seeds::LAPTOP_IP),
                "dev",
                "eth0",
            ],
        )?;
        let mut node_ns = Vec::new();
        let mut pods = Vec::new();
        for n in 0..nodes {
            let node = t.netns(&format!("node{}", n + 1))?;
            let port = format!("p-node{}", n + 1);
            t.link(&node, "eth0", &lan, &port)?;
            t.ip(&lan, &["link", "set", &port, "master", "br0"])?;
            t.ip(
                &node,
                &["addr", "add", &format!("{}/24", node_ip(n)), "dev", "eth0"],
            )?;
            t.sysctl(&node, "net.ipv4.ip_forward", "1")?;
            for m in (0..nodes).filter(|m| *m != n) {
                t.ip(
                    &node,
                    &[
                        "route",
                        "add",
                        &format!("10.244.{m}.0/24"),
                        "via",
                        &node_ip(m),
                    ],
                )?;
            }
            let gateway = format!("10.244.{n}.1");
            let mut mine = Vec::new();
            for i in 0..pods_per_node {
                mine.push(seeds::pod_via(
                    t,
                    &node,
                    &format!("n{}p{i}", n + 1),
                    &format!("lxc{i}"),
                    &pod_ip(n, i),
                    &gateway,
                )?);
            }
            pods.push(mine);
            node_ns.push(node);
        }
        Ok(Lan {
            lan,
            laptop,
            nodes: node_ns,
            pods,
        })
    }
}
