//! The benchmarks' own eBPF object (`lb-bench`: baseline, conntrack floor,
//! generator, hops, sinks), loaded beside lb's but never by the agent. Its maps are
//! its own: the floor finds flows copied into its `LB_CT`, and its verdicts are
//! counted in its own `LB_STATS`.
// Each bench uses part of it (hotpath the baseline and floor, livebench the rest).
#![allow(dead_code)]

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
};
use lb_common::{
    BENCH_HDR_LEN, Counters, CtValue, FlowKey, GLOBAL_CT_SEED, GLOBAL_CT_SETS, MAP_BENCH,
    MAP_BENCH_FRAME, MAP_BENCH_SINK, MAP_CONNTRACK, MAP_STATS, ct_sets,
};
use lb_user::sizes::{MapSizes, Need, NodeMemory, SizeFlags};

pub struct BenchObject {
    ebpf: Ebpf,
}

impl BenchObject {
    /// Loads the object, its conntrack sized as the agent sizes its own on this
    /// machine by default (so a stateful hop's flow table is the agent's).
    pub fn load() -> Result<Self> {
        let (sizes, _) = MapSizes::choose(
            &SizeFlags::default(),
            NodeMemory::here(),
            Need {
                frontends: 0,
                backends: 0,
                ..Need::default()
            },
        );
        let sets = ct_sets(sizes.conntrack);
        let seed = lb_user::maps::ct_seed_for(None);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_CONNTRACK, sets)
            .override_global(GLOBAL_CT_SETS, &sets, true)
            .override_global(GLOBAL_CT_SEED, &seed, true)
            .load(lb_user::loader::BENCH_ELF)
            .context("loading the lb-bench object")?;
        lb_user::maps::keep_ct_seed(&mut ebpf, seed)?;
        Ok(BenchObject { ebpf })
    }

    /// An XDP program of the object, loaded on first use.
    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        let p: &mut Xdp = self.program(name)?;
        if p.fd().is_err() {
            p.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(p)
    }

    fn program<'a, P>(&'a mut self, name: &str) -> Result<&'a mut P>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("lb-bench has no program {name}"))?
            .try_into()?)
    }

    /// A TC program of the object, loaded on first use (not attached).
    pub fn tc(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        let p: &mut SchedClassifier = self.program(name)?;
        if p.fd().is_err() {
            p.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(p)
    }

    /// Attaches an XDP program (native mode) for as long as the object lives.
    pub fn attach_xdp(&mut self, name: &str, iface: &str) -> Result<()> {
        self.xdp(name)?
            .attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        Ok(())
    }

    /// Attaches a TC program to `iface`'s ingress for as long as the object lives.
    pub fn attach_tc(&mut self, name: &str, iface: &str) -> Result<()> {
        let p = self.tc(name)?;
        let _ = tc::qdisc_add_clsact(iface);
        p.attach(iface, TcAttachType::Ingress)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        Ok(())
    }

    /// Sets `LB_BENCH[index]` (`lb_common::BENCH_*`).
    pub fn set(&mut self, index: u32, value: u32) -> Result<()> {
        let mut a: Array<_, u32> = Array::try_from(self.map(MAP_BENCH)?)?;
        Ok(a.set(index, value, 0)?)
    }

    /// Sets a header template (`LB_BENCH_FRAME[index]`, `lb_common::BENCH_FRAME_*`)
    /// from the first `BENCH_HDR_LEN` bytes of `frame`.
    pub fn set_frame(&mut self, index: u32, frame: &[u8]) -> Result<()> {
        let hdr: [u8; BENCH_HDR_LEN] = frame
            .get(..BENCH_HDR_LEN)
            .and_then(|h| h.try_into().ok())
            .context("a template frame shorter than its headers")?;
        let mut a: Array<_, [u8; BENCH_HDR_LEN]> = Array::try_from(self.map(MAP_BENCH_FRAME)?)?;
        Ok(a.set(index, hdr, 0)?)
    }

    /// Frames the sink has counted, all CPUs.
    pub fn sink_count(&self) -> Result<u64> {
        let map = self
            .ebpf
            .map(MAP_BENCH_SINK)
            .ok_or_else(|| anyhow!("lb-bench has no map {MAP_BENCH_SINK}"))?;
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(a.get(&0, 0)?.iter().sum())
    }

    /// Writes a flow into the object's own conntrack (for the floor program).
    pub fn put_conntrack(&mut self, key: &FlowKey, value: &CtValue) -> Result<()> {
        lb_user::maps::new_flow_table::<u32>(&self.ebpf, MAP_CONNTRACK)?.insert(key, value);
        Ok(())
    }

    /// Packets counted under verdict `reason` by the object's programs, all CPUs.
    pub fn verdict_packets(&self, reason: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map(MAP_STATS)
            .ok_or_else(|| anyhow!("lb-bench has no map {MAP_STATS}"))?;
        let a: PerCpuArray<_, Counters> = PerCpuArray::try_from(map)?;
        Ok(a.get(&reason, 0)?.iter().map(|c| c.packets).sum())
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("lb-bench has no map {name}"))
    }
}
