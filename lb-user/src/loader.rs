//! Loading lb's eBPF object, pinning its maps, and attaching its programs to
//! interfaces: XDP + TC egress on external interfaces, TC ingress + egress on the
//! interfaces behind which pods live, and the socket programs on a cgroup.
//!
//! With pins (the agent), every attachment is a bpf_link pinned under
//! `PINS/links/`, so the programs keep forwarding while no agent runs; a new agent
//! swaps its programs into those links atomically (`bpf_link_update`) instead of
//! attaching twice. `lb reset` removes the pins, which detaches everything.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    ALL_MAPS, CtTimeouts, GLOBAL_CLOCK_HZ, GLOBAL_CT_SEED, GLOBAL_CT_SETS, GLOBAL_CT_TIMEOUTS,
    GLOBAL_DELIVER_KEY, GLOBAL_FIB_REDIRECT, GLOBAL_NETNS_COOKIE, GLOBAL_SNAT_ADDR,
    GLOBAL_SNAT_ADDR6, GLOBAL_TO_PODS, GLOBAL_XDP_META, IFACE_EXTERNAL, IFACE_F_PEER,
    IFACE_F_XDP_XMIT, IFACE_POD, PROG_CLOCK, PROG_CONNECT4, PROG_CONNECT6, PROG_RECVMSG4,
    PROG_RECVMSG6, PROG_SENDMSG4, PROG_SENDMSG6, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP,
    TO_PODS_PEER, TO_PODS_STACK, TO_PODS_XDP, ct_sets,
};
use tracing::{info, warn};

use crate::{
    maps::{self, Maps, MapsError},
    netif::RoutedByDestination,
    sizes::MapSizes,
};

/// The eBPF object built by build.rs (lb-ebpf for bpfel).
pub static EBPF_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The benchmarks' own object (`lb-bench`: baseline, conntrack floor, generator,
/// hops, sinks), embedded only with the `bench` feature (the benches turn it on);
/// the agent never loads it.
#[cfg(feature = "bench")]
pub static BENCH_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading lb's eBPF object (maps pinned under {pins}): {error}")]
    Load {
        pins: String,
        error: Box<aya::EbpfError>,
    },
    #[error("program {program}: {action}")]
    Program {
        program: &'static str,
        action: String,
        #[source]
        error: aya::programs::ProgramError,
    },
    #[error("interface {iface}: {error}")]
    Interface { iface: String, error: String },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("bpffs {dir}: {error}")]
    Bpffs { dir: PathBuf, error: std::io::Error },
    #[error("link for {what}: {error}")]
    Link { what: String, error: String },
    #[error("reading lb's eBPF object: {error}")]
    Object { error: String },
}

/// What the kernel side is told at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadConfig {
    /// The node address flows to backends on other nodes leave with (SNAT); None
    /// turns SNAT off (single node, tests).
    pub snat_addr: Option<std::net::Ipv4Addr>,
    /// The IPv6 one (None: flows to remote IPv6 backends are not translated for).
    pub snat_addr6: Option<std::net::Ipv6Addr>,
    /// XDP forwards translated packets itself (`bpf_fib_lookup` + redirect); false
    /// leaves them to the kernel's stack (for comparison).
    pub fib_redirect: bool,
    /// How translated packets reach local pods (`--to-pods`).
    pub to_pods: ToPods,
    /// Where XDP serves external interfaces (`--xdp`).
    pub xdp: XdpUse,
    /// Entries of the sized maps.
    pub sizes: MapSizes,
    /// Conntrack idle timeouts (`--ct-timeout-*`).
    pub ct_timeouts: CtTimeouts,
}

/// Where lb's XDP program serves an external interface (`lb agent --xdp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpUse {
    /// On a NIC whose driver runs XDP natively: frames off a wire carry complete
    /// checksums, and the NIC transmits redirected frames. Not on virtual devices
    /// (veth, bridge, ...): a frame a local socket sent over a veth may carry a
    /// partial checksum XDP cannot see (TC can), and a veth drops redirected frames
    /// unless its peer has NAPI. There, and where the driver has no native XDP, TC
    /// serves NodePort and LoadBalancer traffic alone.
    #[default]
    Auto,
    /// XDP (native) on every external interface, virtual ones included: the user
    /// vouches that senders fill in checksums (`ethtool -K eth0 tx off`) and the
    /// peers of veths take redirected frames (`gro on`, or an XDP program).
    Native,
    /// TC alone.
    Off,
}

impl std::str::FromStr for XdpUse {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(XdpUse::Auto),
            "native" => Ok(XdpUse::Native),
            "off" => Ok(XdpUse::Off),
            _ => Err(format!("{s}: want auto, native or off")),
        }
    }
}

/// How XDP hands translated packets to pods on this node (`lb agent --to-pods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToPods {
    /// Through the kernel's stack (routing, netfilter, the veth), as without lb.
    Stack,
    /// Chosen per pod: XDP redirects into the veth of a pod whose end runs a
    /// native-mode XDP program (it takes XDP frames; checked at attach and every
    /// second); for any
    /// other pod XDP translates and TC ingress hands the packet to the pod's end of
    /// its veth (`bpf_redirect_peer`), skipping the node's stack; pods behind other
    /// kinds of interface (a bridge) are reached through the stack.
    #[default]
    Peer,
    /// XDP redirects into the pod's veth, no socket buffer on the node at all. Only
    /// when every pod's end of its veth takes XDP frames (it runs an XDP program, or
    /// has GRO on: `ethtool -K eth0 gro on` in the pod); otherwise the kernel drops them.
    Xdp,
}

impl std::str::FromStr for ToPods {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stack" => Ok(ToPods::Stack),
            "peer" => Ok(ToPods::Peer),
            "xdp" => Ok(ToPods::Xdp),
            _ => Err(format!("{s}: want peer, xdp or stack")),
        }
    }
}

impl ToPods {
    fn global(self) -> u32 {
        match self {
            ToPods::Stack => TO_PODS_STACK,
            ToPods::Peer => TO_PODS_PEER,
            ToPods::Xdp => TO_PODS_XDP,
        }
    }
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            snat_addr: None,
            snat_addr6: None,
            fib_redirect: true,
            xdp: XdpUse::Auto,
            to_pods: ToPods::default(),
            sizes: MapSizes::default(),
            ct_timeouts: CtTimeouts::DEFAULT,
        }
    }
}

/// Loads the object, its maps sized as `cfg.sizes` says. With `pins`, every map is
/// pinned there by name and adopted if already pinned with this shape (entries
/// survive agent restarts); a pinned map of another size is replaced by one of the
/// new size and its entries carried over as far as they fit (returned, to be copied
/// once the object is loaded). Without pins, maps are private (tests). Also returns
/// the key this load's XDP marks its frames for TC with (`GLOBAL_DELIVER_KEY`).
pub fn load(
    pins: Option<&Path>,
    cfg: &LoadConfig,
) -> Result<(Ebpf, Vec<maps::Resized>, u64), LoadError> {
    let resized = match pins {
        Some(dir) => retire_changed_pins(dir, &cfg.sizes)?,
        None => Vec::new(),
    };
    let mut loader = EbpfLoader::new();
    for (name, entries) in cfg.sizes.by_map() {
        loader.map_max_entries(name, entries);
    }
    let paths: Vec<(&str, PathBuf)> = pins
        .map(|d| ALL_MAPS.iter().map(|m| (*m, d.join(m))).collect())
        .unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    // The socket programs act only on sockets of the namespace we were loaded in.
    let cookie = netns_cookie().map_err(|error| LoadError::Interface {
        iface: "netns".into(),
        error: error.to_string(),
    })?;
    loader.override_global(GLOBAL_NETNS_COOKIE, &cookie, true);
    let hz = kernel_hz().unwrap_or(0);
    loader.override_global(GLOBAL_CLOCK_HZ, &hz, true);
    let snat = cfg.snat_addr.map_or(0, |a| u32::from(a).to_be());
    loader.override_global(GLOBAL_SNAT_ADDR, &snat, true);
    let snat6: [u32; 4] = cfg.snat_addr6.map_or([0; 4], crate::sync::addr6);
    loader.override_global(GLOBAL_SNAT_ADDR6, &snat6, true);
    let fib = u32::from(cfg.fib_redirect);
    loader.override_global(GLOBAL_FIB_REDIRECT, &fib, true);
    let to_pods = cfg.to_pods.global();
    loader.override_global(GLOBAL_TO_PODS, &to_pods, true);
    loader.override_global(GLOBAL_CT_TIMEOUTS, &cfg.ct_timeouts, true);
    let sets = ct_sets(cfg.sizes.conntrack);
    loader.override_global(GLOBAL_CT_SETS, &sets, true);
    let seed = maps::ct_seed_for(pins);
    loader.override_global(GLOBAL_CT_SEED, &seed, true);
    let deliver_key: u64 = rand::random::<u64>() | 1;
    loader.override_global(GLOBAL_DELIVER_KEY, &deliver_key, true);
    let xdp_meta = u32::from(xdp_metadata());
    loader.override_global(GLOBAL_XDP_META, &xdp_meta, true);
    let mut ebpf = loader.load(EBPF_ELF).map_err(|error| LoadError::Load {
        pins: pins
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "nowhere".into()),
        error: Box::new(error),
    })?;
    maps::keep_ct_seed(&mut ebpf, seed)?;
    Ok((ebpf, resized, deliver_key))
}

/// Whether this kernel lets XDP programs keep metadata in front of a frame
/// (`bpf_xdp_adjust_meta`; kernels can be built without it), asked once per process
/// as libbpf asks: by loading a minimal XDP program that calls the helper.
pub fn xdp_metadata() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        match aya::sys::is_helper_supported(
            aya::programs::ProgramType::Xdp,
            aya::sys::BpfHelper::BPF_FUNC_xdp_adjust_meta,
        ) {
            Ok(has) => has,
            Err(error) => {
                warn!(%error, "probing bpf_xdp_adjust_meta failed: taken as missing");
                false
            }
        }
    })
}

/// Pinned maps whose shape (type, key and value size, entries, flags) is not the one
/// wanted now, left by an agent of another version or with other sizes: unpinned,
/// so that loading creates them anew (aya would otherwise reuse them as they are,
/// and the programs would run against maps of the wrong size). A map that differs
/// only in its number of entries is returned open, for its entries to be carried
/// over ([`maps::carry_over`]); any other loses its entries (for `LB_CT`, the flows
/// it held). Programs still attached keep the old maps until they are replaced.
fn retire_changed_pins(dir: &Path, sizes: &MapSizes) -> Result<Vec<maps::Resized>, LoadError> {
    let obj = aya_obj::Object::parse(EBPF_ELF).map_err(|error| LoadError::Object {
        error: error.to_string(),
    })?;
    let sized: BTreeMap<&str, u32> = sizes.by_map().into_iter().collect();
    let mut resized = Vec::new();
    for name in ALL_MAPS {
        let pin = dir.join(name);
        let Some(want) = obj.maps.get(name) else {
            continue;
        };
        if !pin.exists() {
            continue;
        }
        let want_entries = sized.get(name).copied().unwrap_or(want.max_entries());
        let have = aya::maps::MapData::from_pin(&pin).and_then(|m| Ok((m.info()?, m)));
        let same_kind = |have: &aya::maps::MapInfo| {
            have.map_type().is_ok_and(|t| t as u32 == want.map_type())
                && have.key_size() == want.key_size()
                && have.value_size() == want.value_size()
                && have.map_flags() == want.map_flags()
        };
        // (the old shape when it is another kind of map, the old map to copy from)
        let (other_shape, carried) = match have {
            Ok((info, _)) if same_kind(&info) && info.max_entries() == want_entries => continue,
            Ok((info, data)) if same_kind(&info) && maps::carries_over(name) => {
                info!(
                    map = name,
                    was = info.max_entries(),
                    now = want_entries,
                    "pinned map resized: its entries are carried over to the new one"
                );
                (None, Some(data))
            }
            Ok((info, _)) if same_kind(&info) => {
                info!(
                    map = name,
                    was = info.max_entries(),
                    now = want_entries,
                    "pinned map resized: created anew, its counters start again from zero"
                );
                (None, None)
            }
            Ok((info, _)) => (
                Some(shape(
                    info.key_size(),
                    info.value_size(),
                    info.max_entries(),
                    info.map_flags(),
                )),
                None,
            ),
            Err(e) => (Some(e.to_string()), None),
        };
        if let Some(was) = other_shape {
            let now = shape(
                want.key_size(),
                want.value_size(),
                want_entries,
                want.map_flags(),
            );
            warn!(
                map = name,
                pin = %pin.display(),
                was,
                now,
                "pinned map has another shape (left by another version): created anew, its entries start empty"
            );
        }
        std::fs::remove_file(&pin).map_err(|error| LoadError::Bpffs {
            dir: pin.clone(),
            error,
        })?;
        if let Some(old) = carried {
            resized.push(maps::Resized { name, old });
        }
    }
    Ok(resized)
}

fn shape(key: u32, value: u32, entries: u32, flags: u32) -> String {
    format!("key {key} B, value {value} B, {entries} entries, flags {flags:#x}")
}

const SOCK_PROGRAMS: [&str; 6] = [
    PROG_CONNECT4,
    PROG_SENDMSG4,
    PROG_RECVMSG4,
    PROG_CONNECT6,
    PROG_SENDMSG6,
    PROG_RECVMSG6,
];

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE).
pub fn netns_cookie() -> std::io::Result<u64> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")
        .or_else(|_| std::net::UdpSocket::bind("127.0.0.1:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a u64 we own.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The kernel's HZ (jiffies per second), so the kernel side can use `bpf_jiffies64`,
/// the cheapest clock there is; `None` when it cannot be told (the kernel side then
/// uses the coarse nanosecond clock). Measured once per process, as Cilium does:
/// jiffies from /proc/timer_list beside CLOCK_MONOTONIC. On 64-bit kernels jiffies
/// start at 2^32 - 300*HZ, so one sample at uptime t gives HZ = (j - 2^32) / (t - 300);
/// near t = 300 s two samples 200 ms apart give it instead.
pub fn kernel_hz() -> Option<u64> {
    static HZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        let (j0, t0) = jiffies_and_uptime()?;
        let estimate = if (t0 - 300.0).abs() >= 60.0 {
            (j0 as f64 - 4_294_967_296.0) / (t0 - 300.0)
        } else {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let (j1, t1) = jiffies_and_uptime()?;
            (j1 - j0) as f64 / (t1 - t0)
        };
        [100u64, 250, 300, 1000]
            .into_iter()
            .find(|hz| (estimate / *hz as f64 - 1.0).abs() < 0.05)
    })
}

/// Jiffies (from /proc/timer_list, root only) and CLOCK_MONOTONIC in seconds.
fn jiffies_and_uptime() -> Option<(u64, f64)> {
    let list = std::fs::read_to_string("/proc/timer_list").ok()?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    let jiffies = list
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies:"))?
        .trim()
        .parse()
        .ok()?;
    Some((jiffies, ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9))
}

/// The cgroup v2 mount (the root cgroup), from /proc/mounts.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// How the XDP program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttach {
    Native,
    Generic,
}

impl XdpAttach {
    fn pin_name(self, iface: &str) -> String {
        match self {
            XdpAttach::Native => format!("xdp-native@{iface}"),
            XdpAttach::Generic => format!("xdp-generic@{iface}"),
        }
    }
}

/// How an attachment came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new link.
    New,
    /// A link a previous agent pinned, now running this agent's program.
    Adopted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ifindex: u32,
    pub role: u32,
    pub xdp: Option<XdpAttach>,
}

/// The loaded object, its maps, and where its programs are attached. Dropping it
/// detaches the programs only where nothing is pinned (tests); pinned links and maps
/// stay, and keep forwarding.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    attached: BTreeMap<String, Attachment>,
    /// Where links are pinned (`PINS/links`); None: links die with the process.
    links: Option<PathBuf>,
    xdp_use: XdpUse,
    ct_timeouts: CtTimeouts,
    to_pods: ToPods,
    deliver_key: u64,
    /// What `LB_ROUTING` was last told (None: nothing yet, the programs key their
    /// FIB answers by the whole tuple).
    routing: Option<RoutedByDestination>,
}

impl Dataplane {
    pub fn load(pins: Option<&Path>) -> Result<Self, LoadError> {
        Self::load_with(pins, &LoadConfig::default())
    }

    pub fn load_with(pins: Option<&Path>, cfg: &LoadConfig) -> Result<Self, LoadError> {
        if let Some(dir) = pins {
            std::fs::create_dir_all(dir).map_err(|error| LoadError::Bpffs {
                dir: dir.to_path_buf(),
                error,
            })?;
        }
        let (mut ebpf, resized, deliver_key) = load(pins, cfg)?;
        if cfg.to_pods == ToPods::Peer && cfg.xdp != XdpUse::Off && !xdp_metadata() {
            warn!(
                "this kernel keeps no XDP metadata (bpf_xdp_adjust_meta): XDP leaves \
                 packets for local pods untranslated, and TC ingress translates them and \
                 hands them over (--to-pods peer)"
            );
        }
        for r in resized {
            maps::carry_over(&mut ebpf, r, &cfg.sizes)?;
        }
        let maps = Maps::take(&mut ebpf)?;
        for name in [PROG_XDP, PROG_CLOCK] {
            let xdp: &mut Xdp = program(&mut ebpf, name)?;
            retrying(|| xdp.load()).map_err(prog_err(name, "loading"))?;
        }
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
            let p: &mut SchedClassifier = program(&mut ebpf, name)?;
            retrying(|| p.load()).map_err(prog_err(name, "loading"))?;
        }
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            retrying(|| p.load()).map_err(prog_err(name, "loading"))?;
        }
        log_verified(&ebpf);
        let links = pins.map(|p| p.join("links"));
        if let Some(dir) = &links {
            std::fs::create_dir_all(dir).map_err(|error| LoadError::Bpffs {
                dir: dir.clone(),
                error,
            })?;
        }
        Ok(Dataplane {
            ebpf,
            maps,
            attached: BTreeMap::new(),
            links,
            xdp_use: cfg.xdp,
            ct_timeouts: cfg.ct_timeouts,
            to_pods: cfg.to_pods,
            deliver_key,
            routing: None,
        })
    }

    /// The key this load's XDP program marks frames for TC with (see
    /// `lb_common::DeliverMeta`).
    pub fn deliver_key(&self) -> u64 {
        self.deliver_key
    }

    /// Each program's name and how many instructions the verifier walked to load it:
    /// the headroom under the kernel's limit of 1,000,000 per program, which a
    /// change to the kernel side, or another kernel's verifier, must not use up.
    pub fn verified_insns(&self) -> Vec<(String, u32)> {
        verified_insns(&self.ebpf)
    }

    /// The conntrack timeouts the programs were loaded with.
    pub fn ct_timeouts(&self) -> CtTimeouts {
        self.ct_timeouts
    }

    /// Tells the programs whether the node's routes depend on the destination
    /// alone (`netif::RoutedByDestination`): written when it changed, so that
    /// every round may ask; whether it changed.
    pub fn set_routing(&mut self, by_dst: RoutedByDestination) -> Result<bool, LoadError> {
        if self.routing == Some(by_dst) {
            return Ok(false);
        }
        maps::write_routing(&mut self.ebpf, by_dst.bits())?;
        self.routing = Some(by_dst);
        Ok(true)
    }

    /// The kernel side's clock now (`lb_clock` run once with BPF_PROG_RUN), in its
    /// ticks.
    pub fn kernel_now(&mut self) -> Result<u64, LoadError> {
        use aya::programs::TestRun as _;
        let clock: &mut Xdp = program(&mut self.ebpf, PROG_CLOCK)?;
        let frame = [0u8; 64];
        clock
            .test_run(aya::programs::TestRunOptions {
                data_in: Some(&frame),
                ..Default::default()
            })
            .map_err(prog_err(PROG_CLOCK, "running"))?;
        Ok(maps::read_clock(&self.ebpf)?)
    }

    /// The XDP program (loaded; for BPF_PROG_RUN).
    pub fn xdp(&mut self) -> Result<&mut Xdp, LoadError> {
        program(&mut self.ebpf, PROG_XDP)
    }

    /// A TC program by name (loaded; for BPF_PROG_RUN).
    pub fn tc(&mut self, name: &'static str) -> Result<&mut SchedClassifier, LoadError> {
        program(&mut self.ebpf, name)
    }

    pub fn attached(&self) -> &BTreeMap<String, Attachment> {
        &self.attached
    }

    /// External interface (uplink): TC ingress for new and established flows (and
    /// what XDP leaves), TC egress for replies; XDP in front where `--xdp` says
    /// (see [`XdpUse`]), which marks the interface as taking redirected frames.
    /// Returns how XDP is attached, if it is.
    pub fn attach_external(&mut self, iface: &str) -> Result<Option<XdpAttach>, LoadError> {
        let ifindex = ifindex(iface)?;
        let kind = crate::netif::link_kind(iface);
        let mode = match (self.xdp_use, &kind) {
            (XdpUse::Off, _) => None,
            (XdpUse::Auto, Some(kind)) => {
                info!(
                    iface,
                    kind,
                    "XDP not used on a virtual interface (partial checksums, redirects need NAPI on the peer): TC serves it; `--xdp native` to force"
                );
                None
            }
            (XdpUse::Auto, None) => match self.attach_xdp(iface) {
                Ok(mode) => Some(mode),
                Err(error) => {
                    warn!(iface, %error, "no native XDP on this driver: TC serves it");
                    None
                }
            },
            (XdpUse::Native, _) => Some(self.attach_xdp(iface)?),
        };
        if mode.is_none() {
            self.drop_xdp(iface);
        }
        let how = self.attach_tc(iface, PROG_TC_INGRESS, TcAttachType::Ingress)?;
        self.attach_tc(iface, PROG_TC_EGRESS, TcAttachType::Egress)?;
        let role = match mode {
            Some(_) => IFACE_EXTERNAL | IFACE_F_XDP_XMIT,
            None => IFACE_EXTERNAL,
        };
        self.maps.set_iface(ifindex, role)?;
        info!(iface, ifindex, xdp = ?mode, link = ?how, "attached to external interface");
        self.attached.insert(
            iface.to_string(),
            Attachment {
                ifindex,
                role,
                xdp: mode,
            },
        );
        Ok(mode)
    }

    /// Removes an XDP link of an earlier agent (or mode) from `iface`: its pin
    /// held it.
    fn drop_xdp(&mut self, iface: &str) {
        if let Some(dir) = &self.links {
            for mode in [XdpAttach::Native, XdpAttach::Generic] {
                let pin = dir.join(mode.pin_name(iface));
                if std::fs::remove_file(&pin).is_ok() {
                    info!(iface, pin = %pin.display(), "removed an earlier XDP link");
                }
            }
        }
    }

    /// Interface behind which pods live: TC ingress starts flows from pods (ClusterIP),
    /// TC egress translates replies going to pods. A veth whose peer is in another
    /// namespace is marked `IFACE_F_PEER`: packets for its pod may be handed over.
    pub fn attach_pod_iface(&mut self, iface: &str) -> Result<(), LoadError> {
        let ifindex = ifindex(iface)?;
        let how = self.attach_tc(iface, PROG_TC_INGRESS, TcAttachType::Ingress)?;
        self.attach_tc(iface, PROG_TC_EGRESS, TcAttachType::Egress)?;
        let role = self.pod_role(iface);
        self.maps.set_iface(ifindex, role)?;
        info!(
            iface,
            ifindex,
            link = ?how,
            veth_peer = role & IFACE_F_PEER != 0,
            xdp_frames = role & IFACE_F_XDP_XMIT != 0,
            "attached to pod interface"
        );
        self.attached.insert(
            iface.to_string(),
            Attachment {
                ifindex,
                role,
                xdp: None,
            },
        );
        Ok(())
    }

    /// A pod interface's role: `IFACE_F_PEER` for a veth (or netkit) whose peer is
    /// in another namespace; under `--to-pods peer`, also `IFACE_F_XDP_XMIT` for a
    /// veth whose peer runs a native-mode XDP program, so XDP redirects frames into
    /// it (the pod takes them) instead of leaving them to TC.
    fn pod_role(&self, iface: &str) -> u32 {
        let link = crate::netif::pod_link(iface, self.to_pods == ToPods::Peer);
        let mut role = IFACE_POD;
        if link.peer_in_other_netns {
            role |= IFACE_F_PEER;
            if link.peer_runs_xdp {
                role |= IFACE_F_XDP_XMIT;
            }
        }
        role
    }

    /// Asks every attached pod interface its role again (a pod attached or removed
    /// its XDP program) and writes the roles that changed.
    pub fn refresh_pod_roles(&mut self) -> Result<(), LoadError> {
        let pods: Vec<(String, u32, u32)> = self
            .attached
            .iter()
            .filter(|(_, a)| a.role & IFACE_POD != 0)
            .map(|(name, a)| (name.clone(), a.ifindex, a.role))
            .collect();
        for (iface, ifindex, was) in pods {
            let role = self.pod_role(&iface);
            if role != was {
                self.maps.set_iface(ifindex, role)?;
                if let Some(a) = self.attached.get_mut(&iface) {
                    a.role = role;
                }
                info!(
                    iface,
                    ifindex,
                    xdp_frames = role & IFACE_F_XDP_XMIT != 0,
                    "pod interface: how XDP reaches the pod changed"
                );
            }
        }
        Ok(())
    }

    /// Socket-level balancing for the node's own processes: the cgroup programs on
    /// `cgroup` (a cgroup v2 directory; the root covers every process). They act only
    /// on sockets of this network namespace, so agents of several namespaces coexist.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        let dir = std::fs::File::open(cgroup).map_err(|error| LoadError::Bpffs {
            dir: cgroup.to_path_buf(),
            error,
        })?;
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let id = p.attach(&dir, CgroupAttachMode::Single).map_err(prog_err(
                name,
                format!("attaching to cgroup {}", cgroup.display()),
            ))?;
            // A previous agent's link (if any) runs beside this one until its pin is
            // replaced: running both is harmless, as the second sees a backend
            // address, no frontend.
            if let Some(dir) = &self.links {
                let pin = dir.join(name);
                let link = p.take_link(id).map_err(prog_err(name, "taking the link"))?;
                let fd = FdLink::try_from(link).map_err(|e| LoadError::Link {
                    what: format!("{name} on {}", cgroup.display()),
                    error: e.to_string(),
                })?;
                let _ = std::fs::remove_file(&pin);
                pin_link(fd, &pin)?;
            }
        }
        info!(cgroup = %cgroup.display(), "attached socket-level balancing for node processes");
        Ok(())
    }

    /// Forgets an interface that is gone (its programs went with it).
    pub fn forget(&mut self, iface: &str) -> Result<(), LoadError> {
        if let Some(dir) = &self.links {
            for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
                let _ = std::fs::remove_file(dir.join(format!("{name}@{iface}")));
            }
            for mode in [XdpAttach::Native, XdpAttach::Generic] {
                let _ = std::fs::remove_file(dir.join(mode.pin_name(iface)));
            }
        }
        if let Some(a) = self.attached.remove(iface) {
            self.maps.remove_iface(a.ifindex)?;
            info!(iface, "interface gone");
        }
        Ok(())
    }

    /// XDP on `iface`: into the pinned link if there is a live one, else a new
    /// native link, pinned.
    fn attach_xdp(&mut self, iface: &str) -> Result<XdpAttach, LoadError> {
        let links = self.links.clone();
        let xdp: &mut Xdp = program(&mut self.ebpf, PROG_XDP)?;
        for mode in [XdpAttach::Native, XdpAttach::Generic] {
            let Some(pin) = links.as_ref().map(|d| d.join(mode.pin_name(iface))) else {
                break;
            };
            if let Some(fd) = pinned(&pin) {
                let swapped = XdpLink::try_from(fd)
                    .map_err(|e| e.to_string())
                    .and_then(|link| xdp.attach_to_link(link).map_err(|e| e.to_string()));
                match swapped {
                    Ok(_) => {
                        info!(iface, xdp = ?mode, "XDP: swapped into the pinned link");
                        return Ok(mode);
                    }
                    Err(error) => {
                        warn!(iface, %error, pin = %pin.display(), "stale XDP link pin, attaching anew");
                        let _ = std::fs::remove_file(&pin);
                    }
                }
            }
        }
        // Native only: generic (skb) XDP brings none of XDP's gains, and TC does the
        // same work on socket buffers with their checksum state.
        let id = xdp
            .attach(iface, XdpMode::Driver)
            .map_err(prog_err(PROG_XDP, format!("attaching natively to {iface}")))?;
        let mode = XdpAttach::Native;
        // A generic link an earlier agent pinned goes.
        if let Some(dir) = &links {
            let _ = std::fs::remove_file(dir.join(XdpAttach::Generic.pin_name(iface)));
        }
        if let Some(dir) = &links {
            let link = xdp
                .take_link(id)
                .map_err(prog_err(PROG_XDP, "taking the link"))?;
            let fd = FdLink::try_from(link).map_err(|e| LoadError::Link {
                what: format!("XDP on {iface}"),
                error: e.to_string(),
            })?;
            pin_link(fd, &dir.join(mode.pin_name(iface)))?;
        }
        Ok(mode)
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        name: &'static str,
        ty: TcAttachType,
    ) -> Result<Attached, LoadError> {
        let pin = self
            .links
            .as_ref()
            .map(|d| d.join(format!("{name}@{iface}")));
        let p: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if let Some(fd) = pin.as_deref().and_then(pinned) {
            let swapped = SchedClassifierLink::try_from(fd)
                .map_err(|e| e.to_string())
                .and_then(|link| p.attach_to_link(link).map_err(|e| e.to_string()));
            match swapped {
                Ok(_) => return Ok(Attached::Adopted),
                Err(error) => {
                    let pin = pin.as_deref().unwrap_or(Path::new(""));
                    warn!(iface, program = name, %error, pin = %pin.display(), "stale TC link pin, attaching anew");
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        // TCX links need no qdisc; older kernels need clsact (already there is fine).
        let _ = tc::qdisc_add_clsact(iface);
        let id = p
            .attach(iface, ty)
            .map_err(prog_err(name, format!("attaching to {iface} ({ty:?})")))?;
        if let Some(pin) = pin {
            let link = p.take_link(id).map_err(prog_err(name, "taking the link"))?;
            let fd = FdLink::try_from(link).map_err(|e| LoadError::Link {
                what: format!("{name} on {iface} (TCX needs Linux 6.6)"),
                error: e.to_string(),
            })?;
            pin_link(fd, &pin)?;
        }
        Ok(Attached::New)
    }
}

/// The link pinned at `pin`, if there is one.
fn pinned(pin: &Path) -> Option<FdLink> {
    pin.exists()
        .then(|| PinnedLink::from_pin(pin).ok())
        .flatten()
        .map(FdLink::from)
}

fn pin_link(fd: FdLink, pin: &Path) -> Result<(), LoadError> {
    fd.pin(pin).map(drop).map_err(|e| LoadError::Link {
        what: format!("pinning {}", pin.display()),
        error: e.to_string(),
    })
}

/// Logs how many instructions the verifier walked for each program (see
/// [`Dataplane::verified_insns`]).
fn log_verified(ebpf: &Ebpf) {
    for (name, n) in verified_insns(ebpf) {
        info!(program = name, verified_insns = n, "program loaded");
    }
}

/// Each loaded program's name and how many instructions the verifier walked for it
/// (the kernel's `verified_insns`, by name).
fn verified_insns(ebpf: &Ebpf) -> Vec<(String, u32)> {
    let mut all: Vec<(String, u32)> = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let n = p.info().ok()?.verified_instruction_count()?;
            Some((name.to_string(), n))
        })
        .collect();
    all.sort();
    all
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| LoadError::Program {
        program: name,
        action: "finding".into(),
        error: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    p.try_into().map_err(prog_err(name, "typing"))
}

/// How many times a program's load is tried (libbpf's `PROG_LOAD_ATTEMPTS`).
const LOAD_ATTEMPTS: usize = 5;

/// `load`, tried again (up to [`LOAD_ATTEMPTS`] times in all) while the kernel
/// answers EAGAIN: the verifier gives up so when a signal reaches the loading
/// thread during its work (tens of milliseconds for the TC programs), as one did
/// in a test process; libbpf tries again the same way.
fn retrying(
    load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    retrying_while(load, |e| {
        matches!(e, aya::programs::ProgramError::LoadError { io_error, .. }
            if io_error.kind() == std::io::ErrorKind::WouldBlock)
    })
}

/// [`retrying`], with `interrupted` saying which errors are tried again.
fn retrying_while<E>(
    mut load: impl FnMut() -> Result<(), E>,
    interrupted: impl Fn(&E) -> bool,
) -> Result<(), E> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(e) if interrupted(&e) && attempt < LOAD_ATTEMPTS => {
                warn!(
                    attempt,
                    "the verifier was interrupted (EAGAIN): loading again"
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn prog_err(
    program: &'static str,
    action: impl Into<String>,
) -> impl FnOnce(aya::programs::ProgramError) -> LoadError {
    let action = action.into();
    move |error| LoadError::Program {
        program,
        action,
        error,
    }
}

pub fn ifindex(iface: &str) -> Result<u32, LoadError> {
    nix::net::if_::if_nametoindex(iface).map_err(|e| LoadError::Interface {
        iface: iface.to_string(),
        error: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_the_verifier_gave_up_on_is_tried_again_a_bounded_number_of_times() {
        let eagain = || std::io::Error::from_raw_os_error(11);
        let interrupted = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
        let mut calls = 0;
        let loaded = retrying_while(
            || {
                calls += 1;
                if calls < 3 { Err(eagain()) } else { Ok(()) }
            },
            interrupted,
        );
        assert!(loaded.is_ok() && calls == 3, "loaded at the third try");
        calls = 0;
        let given_up = retrying_while(
            || {
                calls += 1;
                Err(eagain())
            },
            interrupted,
        );
        assert!(given_up.is_err() && calls == LOAD_ATTEMPTS, "{calls} tries");
        calls = 0;
        let refused = retrying_while(
            || {
                calls += 1;
                Err(std::io::Error::from_raw_os_error(13))
            },
            interrupted,
        );
        assert!(refused.is_err() && calls == 1, "any other error at once");
    }
}
