//! The eBPF datapath: the embedded object, loading, attaching to the LAN
//! interfaces, reading the maps, and detaching. Keeping [`Datapath`] alive is what
//! keeps the programs attached; dropping it detaches them (aya owns the links).

pub mod abi;
mod batch;
mod clsact;
pub mod fs;
pub mod maps;
pub mod pins;
mod steer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// bpf_map_update_elem flag: only if the key is absent.
const BPF_NOEXIST: u64 = 1;

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
    #[error("pins under {dir}: {reason}")]
    Pins { dir: String, reason: String },
}

/// What the loader needs from the config.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub flow_table_size: u32,
    /// Pin every map under this instance directory, adopting compatible pins
    /// found there (see [`pins`]). None: unpinned maps (tests, benchmarks).
    pub pins: Option<pins::PinDir>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { flow_table_size: DEFAULT_FLOW_TABLE_SIZE, pins: None }
    }
}

/// What became of pinned maps found at load.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapAdoption {
    /// Where the maps are pinned (None: not pinned).
    pub dir: Option<String>,
    /// The maps were pinned by a previous run and adopted with their content.
    pub adopted: bool,
    /// Pins were found but could not be used (and were removed), and why.
    pub discarded: Option<String>,
    /// Links a handover left pinned that now run our programs.
    pub links_adopted: u32,
    /// Flows whose export state a handover carried over (nothing reported twice).
    #[serde(default)]
    pub flows_carried: u64,
}

/// Pinned links, one per interface and hook, named in `links/`.
/// The XDP link's pin names its mode, which an adopted link keeps.
const LINK_XDP_DRIVER: &str = "xdp_drv";
const LINK_XDP_SKB: &str = "xdp_skb";
const LINK_TC_INGRESS: &str = "tc_ingress";
const LINK_TC_EGRESS: &str = "tc_egress";
const LINK_WAN_EGRESS: &str = "wan_egress";

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
    pins: Option<pins::PinDir>,
    adoption: MapAdoption,
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
        let mut adoption = MapAdoption::default();
        let specs = match &opts.pins {
            Some(dir) => {
                let pin_err = |reason: String| BpfError::Pins { dir: dir.root.display().to_string(), reason };
                let specs = pins::object_maps(OBJECT, MAP_FLOWS, opts.flow_table_size).map_err(pin_err)?;
                match pins::check(dir, &specs) {
                    pins::Found::Nothing => {}
                    pins::Found::Compatible => adoption.adopted = true,
                    pins::Found::Stale(reason) => {
                        tracing::warn!(dir = %dir.root.display(), %reason, "pinned maps do not fit this datapath: removed, starting with empty maps");
                        let errors = dir.remove_maps();
                        if !errors.is_empty() {
                            return Err(pin_err(errors.join("; ")));
                        }
                        adoption.discarded = Some(reason);
                    }
                }
                dir.create_maps_dir().map_err(|e| pin_err(format!("create {}: {e}", dir.maps().display())))?;
                adoption.dir = Some(dir.maps().display().to_string());
                specs
            }
            None => Vec::new(),
        };
        let pin_paths: Vec<(String, PathBuf)> = match &opts.pins {
            Some(dir) => specs.iter().map(|s| (s.name.clone(), dir.map(&s.name))).collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_FLOWS, opts.flow_table_size);
        for (name, path) in &pin_paths {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(BpfError::Load)?;
        if opts.pins.is_some() && !adoption.adopted {
            // Fresh maps: stamp them with our layout version.
            let map = ebpf.map_mut(pins::MAP_ABI_VERSION).ok_or(BpfError::Missing { kind: "map", name: pins::MAP_ABI_VERSION })?;
            let mut abi: aya::maps::Array<_, u64> = aya::maps::Array::try_from(map)
                .map_err(|source| BpfError::Map { map: pins::MAP_ABI_VERSION, source })?;
            abi.set(0, pins::abi_hash(), 0).map_err(|source| BpfError::Map { map: pins::MAP_ABI_VERSION, source })?;
        }
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
            pins: opts.pins,
            adoption,
        };
        // Slot 0 catches packets from interfaces nobody registered (see inferlane_count.h).
        dp.register_counters(0)?;
        Ok(dp)
    }

    pub fn flow_table_size(&self) -> u32 {
        self.flow_table_size
    }

    /// Whether the maps were adopted from pins, or pins were discarded.
    pub fn adoption(&self) -> &MapAdoption {
        &self.adoption
    }

    /// A link a handover pinned for `iface`/`kind`, if there is one. The pin
    /// stays until [`Datapath::adopted_link`] has our program in the link.
    fn pinned_link(&self, iface: &str, kind: &str) -> Option<(PathBuf, aya::programs::links::FdLink)> {
        let path = self.pins.as_ref()?.link(iface, kind);
        if !path.exists() {
            return None;
        }
        match aya::programs::links::PinnedLink::from_pin(&path) {
            Ok(p) => Some((path, p.into())),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "pinned link unreadable; removed, attaching anew");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// After our program went into a pinned link (or failed to): the pin goes.
    /// On failure the old program is detached with it and we attach anew.
    fn unpin_link(&mut self, path: &Path, ok: bool) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "remove link pin");
        }
        if ok {
            self.adoption.links_adopted += 1;
        }
    }

    /// TC attach, or our program swapped into the link a handover pinned.
    fn attach_or_adopt_tc(
        &mut self,
        iface: &str,
        program: &'static str,
        attach_type: TcAttachType,
        kind: &str,
    ) -> Result<aya::programs::tc::SchedClassifierLinkId, BpfError> {
        if self.tc_mode == TcAttachMode::Tcx {
            if let Some((path, fd)) = self.pinned_link(iface, kind) {
                let result = aya::programs::tc::SchedClassifierLink::try_from(fd)
                    .map_err(|e| e.to_string())
                    .and_then(|link| {
                        program_mut::<SchedClassifier>(&mut self.ebpf, program)
                            .map_err(|e| e.to_string())?
                            .attach_to_link(link)
                            .map_err(|e| e.to_string())
                    });
                self.unpin_link(&path, result.is_ok());
                match result {
                    Ok(id) => {
                        tracing::info!(iface, program, "adopted the pinned TCX link (program replaced in place)");
                        return Ok(id);
                    }
                    Err(e) => tracing::warn!(iface, program, error = %e, "pinned TCX link not adoptable; attaching anew"),
                }
            }
        }
        self.attach_tc(iface, program, attach_type)
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
        let tc_ingress_link = match self.attach_or_adopt_tc(iface, PROG_LAN_INGRESS_TC, TcAttachType::Ingress, LINK_TC_INGRESS) {
            Ok(l) => l,
            Err(e) => {
                undo_clsact();
                return Err(e);
            }
        };
        let tc_egress_link = match self.attach_or_adopt_tc(iface, PROG_LAN_EGRESS, TcAttachType::Egress, LINK_TC_EGRESS) {
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
        let link = match self.attach_or_adopt_tc(iface, PROG_WAN_EGRESS, TcAttachType::Egress, LINK_WAN_EGRESS) {
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
        let pinned = [(LINK_XDP_DRIVER, XdpAttachMode::Driver), (LINK_XDP_SKB, XdpAttachMode::Skb)]
            .into_iter()
            .find_map(|(kind, mode)| self.pinned_link(iface, kind).map(|(path, fd)| (path, fd, mode)));
        if let Some((path, fd, mode)) = pinned {
            let result = aya::programs::xdp::XdpLink::try_from(fd).map_err(|e| e.to_string()).and_then(|link| {
                program_mut::<Xdp>(&mut self.ebpf, PROG_LAN_INGRESS)
                    .map_err(|e| e.to_string())?
                    .attach_to_link(link)
                    .map_err(|e| e.to_string())
            });
            self.unpin_link(&path, result.is_ok());
            match result {
                Ok(id) => {
                    tracing::info!(iface, "adopted the pinned XDP link (program replaced in place)");
                    // The link keeps the mode it was made with.
                    return Ok((id, mode));
                }
                Err(e) => tracing::warn!(iface, error = %e, "pinned XDP link not adoptable; attaching anew"),
            }
        }
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

    /// Handover: pin every XDP and TCX link under the instance's `links/`, so
    /// the programs stay attached (and keep using the pinned maps) after this
    /// process exits, until the successor swaps its programs in. Netlink
    /// attachments (old kernels) cannot be pinned: they are detached as at a
    /// clean stop (fail open). Returns the failures.
    pub fn pin_links(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let Some(dir) = self.pins.clone() else {
            errors.push("maps are not pinned: nothing to hand over".into());
            errors.extend(self.detach_all().into_iter().map(|e| e.to_string()));
            return errors;
        };
        if let Err(e) = dir.create_links_dir() {
            errors.push(format!("create {}: {e}", dir.links().display()));
            errors.extend(self.detach_all().into_iter().map(|e| e.to_string()));
            return errors;
        }
        let pin = |fd: Result<aya::programs::links::FdLink, aya::programs::links::LinkError>, path: PathBuf| -> Result<(), String> {
            let fd = fd.map_err(|e| format!("{}: not a pinnable link ({e})", path.display()))?;
            fd.pin(&path).map(drop).map_err(|e| format!("pin {}: {e}", path.display()))
        };
        while let Some(u) = self.uplinks.pop() {
            let result = program_mut::<SchedClassifier>(&mut self.ebpf, PROG_WAN_EGRESS)
                .map_err(|e| e.to_string())
                .and_then(|tc| tc.take_link(u.link).map_err(|e| e.to_string()))
                .and_then(|link| pin(aya::programs::links::FdLink::try_from(link), dir.link(&u.info.iface, LINK_WAN_EGRESS)));
            if let Err(e) = result {
                errors.push(e);
            }
        }
        while let Some(a) = self.attached.pop() {
            let iface = a.info.iface.clone();
            for (program, link, kind) in [
                (PROG_LAN_INGRESS_TC, a.tc_ingress_link, LINK_TC_INGRESS),
                (PROG_LAN_EGRESS, a.tc_egress_link, LINK_TC_EGRESS),
            ] {
                let result = program_mut::<SchedClassifier>(&mut self.ebpf, program)
                    .map_err(|e| e.to_string())
                    .and_then(|tc| tc.take_link(link).map_err(|e| e.to_string()))
                    .and_then(|link| pin(aya::programs::links::FdLink::try_from(link), dir.link(&iface, kind)));
                if let Err(e) = result {
                    errors.push(e);
                }
            }
            let result = program_mut::<Xdp>(&mut self.ebpf, PROG_LAN_INGRESS)
                .map_err(|e| e.to_string())
                .and_then(|xdp| xdp.take_link(a.xdp_link).map_err(|e| e.to_string()))
                .and_then(|link| {
                    let kind = if a.info.xdp == XdpAttachMode::Skb { LINK_XDP_SKB } else { LINK_XDP_DRIVER };
                    pin(aya::programs::links::FdLink::try_from(link), dir.link(&iface, kind))
                });
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }

    /// The instance's pin directory, if the maps are pinned.
    pub fn pin_dir(&self) -> Option<&pins::PinDir> {
        self.pins.as_ref()
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
            // BPF_NOEXIST: counters adopted from pins keep counting.
            match map.insert(IfKey { ifindex, direction }, zero, BPF_NOEXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => return Err(BpfError::Map { map: MAP_IF_COUNTERS, source }),
            }
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
