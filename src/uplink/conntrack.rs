//! Ending the flows of a dead uplink: their conntrack entries are deleted through
//! ctnetlink, one by its original tuple each, so that the next packet of each flow
//! creates a fresh entry NATed to the uplink it is steered to now. Entries of
//! flows on healthy uplinks are never touched (mwan3 flushes the whole table).
//!
//! Written by hand: the message is three nested attributes, and no well-kept crate
//! speaks ctnetlink (netlink-packet-netfilter covers nflog only).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// A connection by its original direction, as the LAN client opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// What a batch of deletions did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: usize,
    /// No such entry (the flow had ended, or never went through conntrack).
    pub absent: usize,
    pub failed: usize,
}

/// Delete the conntrack entries of `tuples` (TCP and UDP; other protocols are
/// skipped). Blocking: call from a blocking task.
pub fn delete(tuples: &[Tuple]) -> io::Result<Deleted> {
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = Deleted::default();
    for (seq, t) in tuples.iter().enumerate() {
        if t.proto != libc::IPPROTO_TCP as u8 && t.proto != libc::IPPROTO_UDP as u8 {
            continue;
        }
        let msg = delete_message(t, seq as u32 + 1);
        let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        match read_ack(&sock)? {
            0 => out.deleted += 1,
            e if e == -libc::ENOENT => out.absent += 1,
            e => {
                out.failed += 1;
                tracing::debug!(tuple = ?t, error = %io::Error::from_raw_os_error(-e), "conntrack delete");
            }
        }
    }
    Ok(out)
}

/// The NLMSG_ERROR code answering our request (0 is the ACK).
fn read_ack(sock: &OwnedFd) -> io::Result<i32> {
    let mut buf = [0u8; 4096];
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // nlmsghdr (16) then the error code.
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected ctnetlink answer"));
    }
    Ok(i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]))
}

/// One IPCTNL_MSG_CT_DELETE request for `t`.
pub fn delete_message(t: &Tuple, seq: u32) -> Vec<u8> {
    let mut ip = Vec::new();
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            attr(&mut ip, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            attr(&mut ip, CTA_IP_V6_SRC, &v6(s));
            attr(&mut ip, CTA_IP_V6_DST, &v6(d));
        }
    }
    let mut proto = Vec::new();
    attr(&mut proto, CTA_PROTO_NUM, &[t.proto]);
    attr(&mut proto, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
    attr(&mut proto, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    let mut tuple = Vec::new();
    attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut body = Vec::new();
    // nfgenmsg: family, version 0, resource id 0.
    let family = if t.src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    body.extend_from_slice(&[family, 0, 0, 0]);
    attr(&mut body, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// A netlink attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_message_layout() {
        let t = Tuple {
            src: "10.77.0.2".parse().unwrap(),
            dst: "192.0.2.10".parse().unwrap(),
            proto: 17,
            sport: 40000,
            dport: 9000,
        };
        let m = delete_message(&t, 7);
        // Checked by hand against linux/netfilter/nfnetlink_conntrack.h: header
        // 16, nfgenmsg 4, ORIG(4) { IP(4) { SRC(8) DST(8) } PROTO(4) { NUM(8)
        // SPORT(8) DPORT(8) } } = 16 + 4 + 4 + 20 + 28 = 72.
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes(m[20..22].try_into().unwrap()), 52, "ORIG length");
        assert_eq!(u16::from_ne_bytes(m[22..24].try_into().unwrap()), 0x8001);
        assert_eq!(&m[32..36], &[10, 77, 0, 2], "source address");
        assert_eq!(&m[40..44], &[192, 0, 2, 10], "destination address");
        assert_eq!(m[52], 17, "protocol");
        assert_eq!(&m[60..62], &40000u16.to_be_bytes(), "source port, network order");
        assert_eq!(&m[68..70], &9000u16.to_be_bytes());
    }
}
