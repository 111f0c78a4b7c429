//! The eBPF datapath: the embedded object, loading, attaching to the LAN
//! interfaces, reading the maps, and detaching. Keeping [`Datapath`] alive is what
//! keeps the programs attached; dropping it detaches them (aya owns the links).

pub mod abi;
mod clsact;

use std::collections::BTreeMap;

use aya::maps::{PerCpuHashMap, PerCpuValues};
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use abi::{Counters, IfKey, DIR_DOWNLOAD, DIR_UPLOAD};

/// Every program in ebpf/, compiled and linked by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inferlane.bpf.o"));

const PROG_LAN_INGRESS: &str = "lan_ingress";
const PROG_LAN_EGRESS: &str = "lan_egress";
const MAP_IF_COUNTERS: &str = "if_counters";

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

/// One LAN interface with both programs attached.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub xdp: XdpAttachMode,
    pub tc: TcAttachMode,
    /// Whether we added the clsact qdisc (netlink mode only): only then do we remove it.
    pub clsact_created: bool,
    /// Kernel ids of the loaded programs (`bpftool prog show id N`).
    pub xdp_prog_id: u32,
    pub tc_prog_id: u32,
}

struct Attached {
    info: Attachment,
    xdp_link: aya::programs::xdp::XdpLinkId,
    tc_link: aya::programs::tc::SchedClassifierLinkId,
}

/// Per-direction counters of one LAN interface, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IfCounters {
    pub upload: Counters,
    pub download: Counters,
}

pub struct Datapath {
    ebpf: Ebpf,
    attached: Vec<Attached>,
    tc_mode: TcAttachMode,
}

impl Datapath {
    /// Load (verify) every program and create the maps. Nothing is attached yet.
    pub fn load() -> Result<Self, BpfError> {
        raise_memlock_rlimit();
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(BpfError::Load)?;
        {
            let xdp: &mut Xdp = program_mut(&mut ebpf, PROG_LAN_INGRESS)?;
            xdp.load().map_err(|source| BpfError::LoadProgram { program: PROG_LAN_INGRESS, source })?;
        }
        {
            let tc: &mut SchedClassifier = program_mut(&mut ebpf, PROG_LAN_EGRESS)?;
            tc.load().map_err(|source| BpfError::LoadProgram { program: PROG_LAN_EGRESS, source })?;
        }
        let mut dp = Datapath { ebpf, attached: Vec::new(), tc_mode: TcAttachMode::for_this_kernel() };
        // Slot 0 catches packets from interfaces nobody registered (see inferlane_count.h).
        dp.register_counters(0)?;
        Ok(dp)
    }

    /// Attach lan_ingress (XDP) and lan_egress (TC egress) to `iface`. On failure
    /// nothing of this interface stays attached.
    pub fn attach(&mut self, iface: &str) -> Result<&Attachment, BpfError> {
        if self.attached.iter().any(|a| a.info.iface == iface) {
            return Err(BpfError::AlreadyAttached { iface: iface.into() });
        }
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| BpfError::NoInterface { iface: iface.into() })?;
        // Counters exist before the first packet can reach the programs.
        self.register_counters(ifindex)?;

        let xdp: &mut Xdp = program_mut(&mut self.ebpf, PROG_LAN_INGRESS)?;
        let (xdp_link, xdp_mode) = match xdp.attach(iface, XdpMode::Driver) {
            Ok(link) => (link, XdpAttachMode::Driver),
            // Anything but "driver has no native XDP" (EBUSY: another program is
            // there, EPERM, ...) is a real failure: generic mode would not help.
            Err(source) if !is_unsupported(&source) => {
                return Err(BpfError::Attach { program: PROG_LAN_INGRESS, iface: iface.into(), source });
            }
            Err(driver_err) => {
                // Drivers without native XDP: the generic hook works everywhere, slower.
                tracing::warn!(iface, error = %driver_err, "native XDP unavailable, using generic (skb) mode");
                let link = xdp.attach(iface, XdpMode::Skb).map_err(|source| BpfError::Attach {
                    program: PROG_LAN_INGRESS,
                    iface: iface.into(),
                    source,
                })?;
                (link, XdpAttachMode::Skb)
            }
        };

        match self.attach_tc(iface, ifindex) {
            Ok((tc_link, clsact_created)) => {
                let (xdp_prog_id, tc_prog_id) = self.program_ids()?;
                self.attached.push(Attached {
                    info: Attachment {
                        iface: iface.into(),
                        ifindex,
                        xdp: xdp_mode,
                        tc: self.tc_mode,
                        clsact_created,
                        xdp_prog_id,
                        tc_prog_id,
                    },
                    xdp_link,
                    tc_link,
                });
                Ok(&self.attached.last().expect("just pushed").info)
            }
            Err(e) => {
                let xdp: &mut Xdp = program_mut(&mut self.ebpf, PROG_LAN_INGRESS)?;
                if let Err(detach) = xdp.detach(xdp_link) {
                    tracing::error!(iface, error = %detach, "detach XDP after failed TC attach");
                }
                Err(e)
            }
        }
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        ifindex: u32,
    ) -> Result<(aya::programs::tc::SchedClassifierLinkId, bool), BpfError> {
        let mode = self.tc_mode;
        let clsact_created = match mode {
            TcAttachMode::Tcx => false,
            TcAttachMode::Netlink => clsact::add(iface)?,
        };
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, PROG_LAN_EGRESS)?;
        let options = match mode {
            TcAttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            TcAttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
        };
        match tc.attach_with_options(iface, TcAttachType::Egress, options) {
            Ok(link) => Ok((link, clsact_created)),
            Err(source) => {
                if clsact_created {
                    if let Err(e) = clsact::remove(ifindex) {
                        tracing::error!(iface, error = %e, "remove clsact after failed attach");
                    }
                }
                Err(BpfError::Attach { program: PROG_LAN_EGRESS, iface: iface.into(), source })
            }
        }
    }

    fn program_ids(&mut self) -> Result<(u32, u32), BpfError> {
        let xdp: &mut Xdp = program_mut(&mut self.ebpf, PROG_LAN_INGRESS)?;
        let xdp_id = xdp.info().map_err(|source| BpfError::LoadProgram { program: PROG_LAN_INGRESS, source })?.id();
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, PROG_LAN_EGRESS)?;
        let tc_id = tc.info().map_err(|source| BpfError::LoadProgram { program: PROG_LAN_EGRESS, source })?.id();
        Ok((xdp_id, tc_id))
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
        let map = self.counters_map()?;
        let read = |direction| -> Result<Counters, BpfError> {
            let values = map
                .get(&IfKey { ifindex, direction }, 0)
                .map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS, source })?;
            let mut sum = Counters::default();
            values.iter().for_each(|c| sum.add(c));
            Ok(sum)
        };
        Ok(IfCounters { upload: read(DIR_UPLOAD)?, download: read(DIR_DOWNLOAD)? })
    }

    /// Detach everything, in reverse order, continuing past failures; every
    /// failure is returned. The maps and programs go when `self` is dropped.
    pub fn detach_all(&mut self) -> Vec<BpfError> {
        let mut errors = Vec::new();
        while let Some(a) = self.attached.pop() {
            let iface = a.info.iface.clone();
            match program_mut::<SchedClassifier>(&mut self.ebpf, PROG_LAN_EGRESS) {
                Ok(tc) => {
                    if let Err(source) = tc.detach(a.tc_link) {
                        errors.push(BpfError::Detach { program: PROG_LAN_EGRESS, iface: iface.clone(), source });
                    }
                }
                Err(e) => errors.push(e),
            }
            if a.info.clsact_created {
                if let Err(e) = clsact::remove(a.info.ifindex) {
                    errors.push(e);
                }
            }
            match program_mut::<Xdp>(&mut self.ebpf, PROG_LAN_INGRESS) {
                Ok(xdp) => {
                    if let Err(source) = xdp.detach(a.xdp_link) {
                        errors.push(BpfError::Detach { program: PROG_LAN_INGRESS, iface: iface.clone(), source });
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    fn counters_map(&self) -> Result<PerCpuHashMap<&aya::maps::MapData, IfKey, Counters>, BpfError> {
        let map = self.ebpf.map(MAP_IF_COUNTERS).ok_or(BpfError::Missing { kind: "map", name: MAP_IF_COUNTERS })?;
        PerCpuHashMap::try_from(map).map_err(|source| BpfError::Map { map: MAP_IF_COUNTERS, source })
    }

    fn register_counters(&mut self, ifindex: u32) -> Result<(), BpfError> {
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
