//! Rust mirror of ebpf/inferlane_structs.h. Field order, widths and padding must
//! match the C header exactly; the size checks below catch a drift at compile time.

/// Upload: LAN client to router (the `lan_ingress` hook).
pub const DIR_UPLOAD: u32 = 0;
/// Download: router to LAN client (the `lan_egress` hook).
pub const DIR_DOWNLOAD: u32 = 1;

/// `struct il_if_key`
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfKey {
    pub ifindex: u32,
    pub direction: u32,
}

/// `struct il_counters`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub other: u64,
    pub vlan: u64,
    pub malformed: u64,
}

const _: () = assert!(std::mem::size_of::<IfKey>() == 8);
const _: () = assert!(std::mem::size_of::<Counters>() == 56);

// SAFETY: plain old data, every bit pattern valid, no padding (checked above).
unsafe impl aya::Pod for IfKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Counters {}

impl Counters {
    /// Sum of the per-CPU copies the kernel keeps.
    pub fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.ipv4 += other.ipv4;
        self.ipv6 += other.ipv6;
        self.other += other.other;
        self.vlan += other.vlan;
        self.malformed += other.malformed;
    }
}
