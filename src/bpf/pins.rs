//! Pins under the bpffs, per daemon instance: `BPFFS/inferlane/INSTANCE/`.
//!
//! - `maps/NAME`: every map of the object, pinned whenever the daemon runs. The
//!   next start adopts them (flow table, counters, learned addresses keep their
//!   content) if each pinned map is what our object declares (type, key size,
//!   value size, max_entries, flags) and `abi_version` holds the hash of
//!   `ebpf/inferlane_structs.h` we were built with. Otherwise the stale pins are
//!   removed and the daemon starts with empty maps (a router must come up; the
//!   log says why the state was dropped).
//! - `links/IFACE@KIND`: the XDP and TCX links, pinned only by a handover
//!   (`inferlane restart`, SIGUSR2), so the programs stay attached while no
//!   daemon runs. The successor swaps its programs into them (BPF_LINK_UPDATE:
//!   never an instant without a program) and removes the pins.
//!
//! A clean stop removes the instance directory, and `BPFFS/inferlane` if empty.

use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, MapInfo};

/// The ABI header; its hash versions the layouts of every map.
const ABI_HEADER: &[u8] = include_bytes!("../../ebpf/inferlane_structs.h");

pub const MAP_ABI_VERSION: &str = "abi_version";

/// FNV-1a 64 of the ABI header (never 0: 0 means "not written").
pub fn abi_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ABI_HEADER {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// The instance's name: `default` for the packaged socket path, otherwise the
/// socket path with `/` turned into `-` and `.` into `_` (the bpffs refuses
/// names with a dot); two lab daemons, in two namespaces, never share pins.
pub fn instance_name(control_socket: &Path) -> String {
    if control_socket == Path::new("/run/inferlane/control.sock") {
        return "default".into();
    }
    let s: String = control_socket
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            '.' => '_',
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => c,
            _ => '-',
        })
        .collect();
    if s.len() <= 200 {
        s
    } else {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{}-{h:016x}", &s[s.len() - 150..])
    }
}

/// `BPFFS/inferlane/INSTANCE`.
#[derive(Debug, Clone)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(bpffs: &Path, control_socket: &Path) -> PinDir {
        PinDir { root: bpffs.join("inferlane").join(instance_name(control_socket)) }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// `links/IFACE@KIND` (a dot in a VLAN interface's name becomes `_`: the
    /// bpffs refuses dots).
    pub fn link(&self, iface: &str, kind: &str) -> PathBuf {
        self.links().join(format!("{}@{kind}", iface.replace('.', "_")))
    }

    /// The maps directory (0700), ready for pins.
    pub fn create_maps_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.maps())
    }

    pub fn create_links_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.links())
    }

    /// Names pinned under `maps/`.
    pub fn pinned_maps(&self) -> Vec<String> {
        list(&self.maps())
    }

    /// Names pinned under `links/`.
    pub fn pinned_links(&self) -> Vec<String> {
        list(&self.links())
    }

    /// Remove every map pin (stale ones, or at a clean stop). Maps still used
    /// by a program or an fd live on; the pins go.
    pub fn remove_maps(&self) -> Vec<String> {
        remove_files(&self.maps())
    }

    /// Remove everything: map and link pins, the directories, and
    /// `BPFFS/inferlane` if nothing else is in it. Returns the failures.
    pub fn remove_all(&self) -> Vec<String> {
        let mut errors = remove_files(&self.maps());
        errors.extend(remove_files(&self.links()));
        for dir in [self.maps(), self.links(), self.root.clone()] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
            }
        }
        if let Some(parent) = self.root.parent() {
            // Only if empty: other instances keep theirs.
            let _ = std::fs::remove_dir(parent);
        }
        errors
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn remove_files(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for name in list(dir) {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("unpin {}: {e}", path.display())),
        }
    }
    errors
}

/// What our object declares for one map (after the config's overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSpec {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The maps of `object`, with the flow table at `flow_table_size` entries.
pub fn object_maps(object: &[u8], flows_map: &str, flow_table_size: u32) -> Result<Vec<MapSpec>, String> {
    let obj = aya_obj::Object::parse(object).map_err(|e| format!("parse the eBPF object: {e}"))?;
    let mut specs: Vec<MapSpec> = obj
        .maps
        .iter()
        .map(|(name, m)| MapSpec {
            name: name.clone(),
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: if name == flows_map { flow_table_size } else { m.max_entries() },
            flags: m.map_flags(),
        })
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(specs)
}

/// What the pins found at start mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No pinned map: start with fresh maps.
    Nothing,
    /// Every map pinned and as we declare it: adopt them.
    Compatible,
    /// Pinned maps we cannot use, and why.
    Stale(String),
}

/// Compare the pinned maps with `specs` and the ABI hash.
pub fn check(dir: &PinDir, specs: &[MapSpec]) -> Found {
    let pinned = dir.pinned_maps();
    if pinned.is_empty() {
        return Found::Nothing;
    }
    let ours: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    if let Some(extra) = pinned.iter().find(|p| !ours.contains(&p.as_str())) {
        return Found::Stale(format!("pinned map {extra} is not in this version's datapath"));
    }
    for spec in specs {
        let path = dir.map(&spec.name);
        let info = match MapInfo::from_pin(&path) {
            Ok(i) => i,
            Err(e) => return Found::Stale(format!("map {}: not pinned or unreadable ({e})", spec.name)),
        };
        let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let seen = (map_type, info.key_size(), info.value_size(), info.max_entries(), info.map_flags());
        let want = (spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags);
        if seen != want {
            return Found::Stale(format!(
                "map {}: pinned (type {}, key {} B, value {} B, max_entries {}, flags {:#x}), this datapath declares (type {}, key {} B, value {} B, max_entries {}, flags {:#x})",
                spec.name, seen.0, seen.1, seen.2, seen.3, seen.4, want.0, want.1, want.2, want.3, want.4
            ));
        }
    }
    match read_abi(dir) {
        Ok(v) if v == abi_hash() => Found::Compatible,
        Ok(v) => Found::Stale(format!(
            "map layouts (abi_version {v:#018x}) differ from this version's ({:#018x})",
            abi_hash()
        )),
        Err(e) => Found::Stale(format!("abi_version: {e}")),
    }
}

fn read_abi(dir: &PinDir) -> Result<u64, String> {
    let data = MapData::from_pin(dir.map(MAP_ABI_VERSION)).map_err(|e| e.to_string())?;
    let array: Array<MapData, u64> = Array::try_from(aya::maps::Map::Array(data)).map_err(|e| e.to_string())?;
    array.get(&0, 0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_file_names_and_distinct() {
        assert_eq!(instance_name(Path::new("/run/inferlane/control.sock")), "default");
        assert_eq!(instance_name(Path::new("/tmp/inferlane-e2e-1/control.sock")), "tmp-inferlane-e2e-1-control_sock");
        assert_ne!(instance_name(Path::new("/a/b c")), instance_name(Path::new("/a/b/c.sock")));
        let long = format!("/{}", "x/".repeat(200));
        let name = instance_name(Path::new(&long));
        assert!(name.len() < 255 && !name.contains('/') && !name.contains('.'), "{name}");
        let d = PinDir::new(Path::new("/sys/fs/bpf"), Path::new("/run/inferlane/control.sock"));
        assert_eq!(d.map("flows"), Path::new("/sys/fs/bpf/inferlane/default/maps/flows"));
        assert_eq!(d.link("eth0.7", "xdp"), Path::new("/sys/fs/bpf/inferlane/default/links/eth0_7@xdp"));
    }

    #[test]
    fn the_object_declares_the_flow_table_at_the_configured_size() {
        let specs = object_maps(super::super::OBJECT, "flows", 4096).unwrap();
        let flows = specs.iter().find(|s| s.name == "flows").expect("flows map");
        assert_eq!(flows.max_entries, 4096);
        assert_eq!(flows.key_size as usize, std::mem::size_of::<super::super::abi::FlowKey>());
        assert_eq!(flows.value_size as usize, std::mem::size_of::<super::super::abi::Flow>());
        assert!(specs.iter().any(|s| s.name == MAP_ABI_VERSION), "abi_version map missing: {specs:?}");
        assert_ne!(abi_hash(), 0);
    }
}
