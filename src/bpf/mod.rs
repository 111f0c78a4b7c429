//! The eBPF datapath: the embedded object, loading, attaching to the LAN
//! interfaces, reading the maps, and detaching. Keeping [`Datapath`] alive is what
//! keeps the programs attached; dropping it detaches them (aya owns the links).

pub mod abi;
mod batch;
mod clsact;
pub mod fs;
pub mod maps;
mod steer;

use std::collections::BTreeMap;

use aya::maps::{PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use abi::{Counters, IfKey, DIR_DOWNLOAD, DIR_UPLOAD};

/// Every program in ebpf/, compiled and linked by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inferlane.bpf.o"));

pub const PROG_LAN_INGRESS: &str = "lan_ingress";
pub const PROG_LAN_INGRESS_TC: &str = "lan_ingress_tc";
pub const PROG_LAN_EGRESS: &str = "lan_egress";
pub const PROG_WAN_EGRESS: &str = "wan_egress";
const MAP_IF_COUNTERS: &str = "if_counters";
const MAP_IF_COUNTERS_ARRAY: &str = "if_counters_array";
const MAP_FLOWS: &str = "flows";

/// Default flow table size (entries), as DESIGN.md and the config document.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("load eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("load program {program}: {source}")]
    LoadProgram { program: &'static str, source: aya::programs::ProgramError },
    #[error("eBPF object has no {kind} {name}")]
    Missing { kind: &'static str, name: &'static str },
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error("interface {iface} is already attached")]
    AlreadyAttached { iface: String },
    #[error("attach {program} to {iface}: {source}")]
    Attach { program: &'static str, iface: String, source: aya::programs::ProgramError },
    #[error("detach {program} from {iface}: {source}")]
    Detach { program: &'static str, iface: String, source: aya::programs::ProgramError },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("{op} clsact qdisc on {iface}: {reason}")]
    Clsact { op: &'static str, iface: String, reason: String },
    #[error("rules: {0}")]
    Rules(String),
}

/// What the loader needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub flow_table_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { flow_table_size: DEFAULT_FLOW_TABLE_SIZE }
    }
}

/// How the XDP program ended up attached: native (driver) where the NIC supports
/// it, generic (skb) otherwise. Reported in status so operators see the slow path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    Driver,
    Skb,
}

/// How the TC program ended up attached: a TCX link (kernel 6.6+), or a netlink
/// filter under a clsact qdisc on older kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachMode {
    Tcx,
    Netlink,
}

impl TcAttachMode {
    /// TCX where the kernel has it. `INFERLANE_TC_ATTACH=netlink` forces the legacy
    /// path so that it can be tested on a new kernel too.
    pub fn for_this_kernel() -> Self {
        if std::env::var("INFERLANE_TC_ATTACH").as_deref() == Ok("netlink") {
            return TcAttachMode::Netlink;
        }
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => TcAttachMode::Tcx,
            _ => TcAttachMode::Netlink,
        }
    }
}

/// One LAN interface with the three programs attached.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub xdp: XdpAttachMode,
    pub tc: TcAttachMode,
    /// Whether we added the clsact qdisc (netlink mode only): only then do we remove it.
    pub clsact_created: bool,
    /// Kernel ids of the loaded programs (`bpftool prog show id N`).
    pub prog_ids: ProgIds,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgIds {
    pub lan_ingress: u32,
    pub lan_ingress_tc: u32,
    pub lan_egress: u32,
}

impl ProgIds {
    pub fn all(&self) -> [u32; 3] {
        [self.lan_ingress, self.lan_ingress_tc, self.lan_egress]
    }
}

/// An uplink interface with wan_egress attached.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UplinkAttachment {
    pub iface: String,
    pub ifindex: u32,
    pub tc: TcAttachMode,
    pub clsact_created: bool,
    pub prog_id: u32,
}

struct UplinkAttached {
    info: UplinkAttachment,
    link: aya::programs::tc::SchedClassifierLinkId,
}

struct Attached {
    info: Attachment,
    xdp_link: aya::programs::xdp::XdpLinkId,
    tc_ingress_link: aya::programs::tc::SchedClassifierLinkId,
    tc_egress_link: aya::programs::tc::SchedClassifierLinkId,
}

/// Per-direction counters of one LAN interface, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IfCounters {
    pub upload: Counters,
    pub download: Counters,
}

pub struct Datapath {
    pub(crate) ebpf: Ebpf,
    attached: Vec<Attached>,
    uplinks: Vec<UplinkAttached>,
    tc_mode: TcAttachMode,
    flow_table_size: u32,
}

impl Datapath {
    /// Load with default sizes (tests, benchmarks).
    pub fn load() -> Result<Self, BpfError> {
        Self::load_with(LoadOptions::default())
    }

    /// Load (verify) every program and create the maps. Nothing is attached yet;
    /// no rules are installed and the mode is observe until [`Datapath::configure`].
    pub fn load_with(opts: LoadOptions) -> Result<Self, BpfError> {
        raise_memlock_rlimit();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_FLOWS, opts.flow_table_size)
            .load(OBJECT)
            .map_err(BpfError::Load)?;
        program_mut::<Xdp>(&mut ebpf, PROG_LAN_INGRESS)?
            .load()
            .map_err(|source| BpfError::LoadProgram { program: PROG_LAN_INGRESS, source })?;
        for name in [PROG_LAN_INGRESS_TC, PROG_LAN_EGRESS, PROG_WAN_EGRESS] {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| BpfError::LoadProgram { program: name, source })?;
        }
        let mut dp = Datapath {
            ebpf,
            attached: Vec::new(),
            uplinks: Vec::new(),
            tc_mode: TcAttachMode::for_this_kernel(),
            flow_table_size: opts.flow_table_size,
        };
        // Slot 0 catches packets from interfaces nobody registered (see inferlane_count.h).
        dp.register_counters(0)?;
        Ok(dp)
    }

    pub fn flow_table_size(&self) -> u32 {
        self.flow_table_size
    }

    /// Attach lan_ingress (XDP), lan_ingress_tc (TC ingress) and lan_egress (TC
    /// egress) to `iface`. On failure nothing of this interface stays attached.
    pub fn attach(&mut self, iface: &str) -> Result<&Attachment, BpfError> {
        if self.attached.iter().any(|a| a.info.iface == iface) {
            return Err(BpfError::AlreadyAttached { iface: iface.into() });
        }
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| BpfError::NoInterface { iface: iface.into() })?;
        // Counters exist before the first packet can reach the programs.
        self.register_counters(ifindex)?;

        // TC first: lan_ingress_tc must be in place before XDP starts handing it
        // metadata, or the first marked packets would go unmarked.
        let clsact_created = match self.tc_mode {
            TcAttachMode::Tcx => false,
            TcAttachMode::Netlink => clsact::add(iface)?,
        };
        let undo_clsact = || {
            if clsact_created {
                if let Err(e) = clsact::remove(ifindex) {
                    tracing::error!(iface, error = %e, "remove clsact after failed attach");
                }
            }
        };
        let tc_ingress_link = match self.attach_tc(iface, PROG_LAN_INGRESS_TC, TcAttachType::Ingress) {
            Ok(l) => l,
            Err(e) => {
                undo_clsact();
                return Err(e);
            }
        };
        let tc_egress_link = match self.attach_tc(iface, PROG_LAN_EGRESS, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                self.detach_tc(PROG_LAN_INGRESS_TC, tc_ingress_link, iface);
                undo_clsact();
                return Err(e);
            }
        };
        let xdp_result = self.attach_xdp(iface);
        let (xdp_link, xdp_mode) = match xdp_result {
            Ok(x) => x,
            Err(e) => {
                self.detach_tc(PROG_LAN_EGRESS, tc_egress_link, iface);
                self.detach_tc(PROG_LAN_INGRESS_TC, tc_ingress_link, iface);
                undo_clsact();
                return Err(e);
            }
        };
        let prog_ids = self.program_ids()?;
        self.attached.push(Attached {
            info: Attachment { iface: iface.into(), ifindex, xdp: xdp_mode, tc: self.tc_mode, clsact_created, prog_ids },
            xdp_link,
            tc_ingress_link,
            tc_egress_link,
        });
        Ok(&self.attached.last().expect("just pushed").info)
    }

    /// Attach wan_egress to an uplink interface, which turns the queue bits of the
    /// mark back into skb->priority before the uplink's qdisc.
    pub fn attach_uplink(&mut self, iface: &str) -> Result<&UplinkAttachment, BpfError> {
        if self.uplinks.iter().any(|a| a.info.iface == iface) {
            return Err(BpfError::AlreadyAttached { iface: iface.into() });
        }
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| BpfError::NoInterface { iface: iface.into() })?;
        let clsact_created = match self.tc_mode {
            TcAttachMode::Tcx => false,
            TcAttachMode::Netlink => clsact::add(iface)?,
        };
        let link = match self.attach_tc(iface, PROG_WAN_EGRESS, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                if clsact_created {
                    if let Err(ce) = clsact::remove(ifindex) {
                        tracing::error!(iface, error = %ce, "remove clsact after failed attach");
                    }
                }
                return Err(e);
            }
        };
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, PROG_WAN_EGRESS)?;
        let prog_id = tc.info().map_err(|source| BpfError::LoadProgram { program: PROG_WAN_EGRESS, source })?.id();
        self.uplinks.push(UplinkAttached {
            info: UplinkAttachment { iface: iface.into(), ifindex, tc: self.tc_mode, clsact_created, prog_id },
            link,
        });
        Ok(&self.uplinks.last().expect("just pushed").info)
    }

    pub fn uplink_attachments(&self) -> Vec<UplinkAttachment> {
        self.uplinks.iter().map(|a| a.info.clone()).collect()
    }

    fn attach_xdp(&mut self, iface: &str) -> Result<(aya::programs::xdp::XdpLinkId, XdpAttachMode), BpfError> {
        let xdp: &mut Xdp = program_mut(&mut self.ebpf, PROG_LAN_INGRESS)?;
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(link) => Ok((link, XdpAttachMode::Driver)),
            // Anything but "driver has no native XDP" (EBUSY: another program is
            // there, EPERM, ...) is a real failure: generic mode would not help.
            Err(source) if !is_unsupported(&source) => {
                Err(BpfError::Attach { program: PROG_LAN_INGRESS, iface: iface.into(), source })
            }
            Err(driver_err) => {
                // Drivers without native XDP: the generic hook works everywhere, slower.
                tracing::warn!(iface, error = %driver_err, "native XDP unavailable, using generic (skb) mode");
                let link = xdp.attach(iface, XdpMode::Skb).map_err(|source| BpfError::Attach {
                    program: PROG_LAN_INGRESS,
                    iface: iface.into(),
                    source,
                })?;
                Ok((link, XdpAttachMode::Skb))
            }
        }
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        program: &'static str,
        attach_type: TcAttachType,
    ) -> Result<aya::programs::tc::SchedClassifierLinkId, BpfError> {
        let options = match self.tc_mode {
            TcAttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            TcAttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
        };
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, program)?;
        tc.attach_with_options(iface, attach_type, options)
            .map_err(|source| BpfError::Attach { program, iface: iface.into(), source })
    }

    fn detach_tc(&mut self, program: &'static str, link: aya::programs::tc::SchedClassifierLinkId, iface: &str) {
        match program_mut::<SchedClassifier>(&mut self.ebpf, program) {
            Ok(tc) => {
                if let Err(e) = tc.detach(link) {
                    tracing::error!(iface, program, error = %e, "detach after failed attach");
                }
            }
            Err(e) => tracing::error!(iface, program, error = %e, "detach after failed attach"),
        }
    }

    fn program_ids(&mut self) -> Result<ProgIds, BpfError> {
        let xdp: &mut Xdp = program_mut(&mut self.ebpf, PROG_LAN_INGRESS)?;
        let lan_ingress =
            xdp.info().map_err(|source| BpfError::LoadProgram { program: PROG_LAN_INGRESS, source })?.id();
        let mut tc_id = |name: &'static str| -> Result<u32, BpfError> {
            let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
            Ok(tc.info().map_err(|source| BpfError::LoadProgram { program: name, source })?.id())
        };
        Ok(ProgIds { lan_ingress, lan_ingress_tc: tc_id(PROG_LAN_INGRESS_TC)?, lan_egress: tc_id(PROG_LAN_EGRESS)? })
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.attached.iter().map(|a| a.info.clone()).collect()
    }

    /// Counters of every attached interface, keyed by interface name.
    pub fn counters(&self) -> Result<BTreeMap<String, IfCounters>, BpfError> {
        let mut out = BTreeMap::new();
        for a in &self.attached {
            out.insert(a.info.iface.clone(), self.counters_for(a.info.ifindex)?);
        }
        Ok(out)
    }

    /// Counters of one ifindex, summed over CPUs. Index 0 is the catch-all slot for
    /// interfaces nobody registered (and for BPF_PROG_TEST_RUN, which has none).
    pub fn counters_for(&self, ifindex: u32) -> Result<IfCounters, BpfError> {
        let sum = |values: PerCpuValues<Counters>| {
            let mut sum = Counters::default();
            values.iter().for_each(|c| sum.add(c));
            sum
        };
        // Mirrors il_count(): small ifindexes live in the per-CPU array.
        if ifindex < abi::IF_ARRAY_IFINDEXES {
            let map = self.ebpf.map(MAP_IF_COUNTERS_ARRAY).ok_or(BpfError::Missing { kind: "map", name: MAP_IF_COUNTERS_ARRAY })?;
            let array: PerCpuArray<&aya::maps::MapData, Counters> =
                PerCpuArray::try_from(map).map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS_ARRAY, source })?;
            let read = |direction: u32| {
                array
                    .get(&(ifindex * 2 + direction), 0)
                    .map(sum)
                    .map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS_ARRAY, source })
            };
            return Ok(IfCounters { upload: read(DIR_UPLOAD)?, download: read(DIR_DOWNLOAD)? });
        }
        let map = self.counters_map()?;
        let read = |direction| -> Result<Counters, BpfError> {
            map.get(&IfKey { ifindex, direction }, 0)
                .map(sum)
                .map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS, source })
        };
        Ok(IfCounters { upload: read(DIR_UPLOAD)?, download: read(DIR_DOWNLOAD)? })
    }

    /// Counters of packets run through BPF_PROG_TEST_RUN: the kernel gives them
    /// the loopback's ifindex (1) or none (0), so those two slots together.
    pub fn counters_test_run(&self) -> Result<IfCounters, BpfError> {
        let mut total = self.counters_for(0)?;
        let lo = self.counters_for(1)?;
        total.upload.add(&lo.upload);
        total.download.add(&lo.download);
        Ok(total)
    }

    /// Detach everything, in reverse order, continuing past failures; every
    /// failure is returned. The maps and programs go when `self` is dropped.
    pub fn detach_all(&mut self) -> Vec<BpfError> {
        let mut errors = Vec::new();
        while let Some(u) = self.uplinks.pop() {
            match program_mut::<SchedClassifier>(&mut self.ebpf, PROG_WAN_EGRESS) {
                Ok(tc) => {
                    if let Err(source) = tc.detach(u.link) {
                        errors.push(BpfError::Detach { program: PROG_WAN_EGRESS, iface: u.info.iface.clone(), source });
                    }
                }
                Err(e) => errors.push(e),
            }
            if u.info.clsact_created {
                if let Err(e) = clsact::remove(u.info.ifindex) {
                    errors.push(e);
                }
            }
        }
        while let Some(a) = self.attached.pop() {
            let iface = a.info.iface.clone();
            match program_mut::<Xdp>(&mut self.ebpf, PROG_LAN_INGRESS) {
                Ok(xdp) => {
                    if let Err(source) = xdp.detach(a.xdp_link) {
                        errors.push(BpfError::Detach { program: PROG_LAN_INGRESS, iface: iface.clone(), source });
                    }
                }
                Err(e) => errors.push(e),
            }
            for (program, link) in [(PROG_LAN_EGRESS, a.tc_egress_link), (PROG_LAN_INGRESS_TC, a.tc_ingress_link)] {
                match program_mut::<SchedClassifier>(&mut self.ebpf, program) {
                    Ok(tc) => {
                        if let Err(source) = tc.detach(link) {
                            errors.push(BpfError::Detach { program, iface: iface.clone(), source });
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
            if a.info.clsact_created {
                if let Err(e) = clsact::remove(a.info.ifindex) {
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn counters_map(&self) -> Result<PerCpuHashMap<&aya::maps::MapData, IfKey, Counters>, BpfError> {
        let map = self.ebpf.map(MAP_IF_COUNTERS).ok_or(BpfError::Missing { kind: "map", name: MAP_IF_COUNTERS })?;
        PerCpuHashMap::try_from(map).map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS, source })
    }

    fn register_counters(&mut self, ifindex: u32) -> Result<(), BpfError> {
        // Array slots always exist; only the hash needs entries (and slot 0 of the
        // hash is the catch-all for unregistered large ifindexes).
        if ifindex != 0 && ifindex < abi::IF_ARRAY_IFINDEXES {
            return Ok(());
        }
        let map = self.ebpf.map_mut(MAP_IF_COUNTERS).ok_or(BpfError::Missing { kind: "map", name: MAP_IF_COUNTERS })?;
        let mut map: PerCpuHashMap<_, IfKey, Counters> =
            PerCpuHashMap::try_from(map).map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS, source })?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| BpfError::Map { map: MAP_IF_COUNTERS, source: aya::maps::MapError::IoError(e) })?;
        for direction in [DIR_UPLOAD, DIR_DOWNLOAD] {
            let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])
                .map_err(|e| BpfError::Map { map: MAP_IF_COUNTERS, source: aya::maps::MapError::IoError(e) })?;
            map.insert(IfKey { ifindex, direction }, zero, 0)
                .map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS, source })?;
        }
        Ok(())
    }

    /// The loaded object, for tests that drive programs through BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // aya would detach the links anyway; doing it here also removes a clsact
        // qdisc we created, and logs what failed.
        for e in self.detach_all() {
            tracing::error!(error = %e, "teardown");
        }
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    let prog = ebpf.program_mut(name).ok_or(BpfError::Missing { kind: "program", name })?;
    prog.try_into().map_err(|_| BpfError::Missing { kind: "program of the expected type", name })
}

/// Whether an XDP attach failed because the driver lacks native XDP.
fn is_unsupported(e: &aya::programs::ProgramError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(io.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL));
        }
        cur = err.source();
    }
    false
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use memcg
/// and ignore it. Raising it is harmless either way.
fn raise_memlock_rlimit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (only matters before Linux 5.11)");
    }
}
