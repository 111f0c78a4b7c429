//! One ICMP echo over a ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP{,V6}`).
//!
//! The lab probes in-process instead of running `ping`: iputils is not part of every
//! machine the tests run on, and a ping socket needs no raw-socket privilege, fills in
//! the identifier and checksum itself, and hands back only replies to our own echoes.
//! The lab widens `net.ipv4.ping_group_range` in its namespaces so the socket may be
//! opened (the range covers ICMPv6 too).

use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const PAYLOAD: &[u8] = b"inferlane-lab-probe";

/// Sends one echo request to `dst` and waits up to `timeout` for its reply. Returns the
/// round-trip time, or `TimedOut`.
pub(crate) fn echo(dst: IpAddr, seq: u16, timeout: Duration) -> io::Result<Duration> {
    let (family, proto, request, reply) = match dst {
        IpAddr::V4(_) => (
            libc::AF_INET,
            libc::IPPROTO_ICMP,
            ICMP_ECHO_REQUEST,
            ICMP_ECHO_REPLY,
        ),
        IpAddr::V6(_) => (
            libc::AF_INET6,
            libc::IPPROTO_ICMPV6,
            ICMPV6_ECHO_REQUEST,
            ICMPV6_ECHO_REPLY,
        ),
    };
    // SAFETY: plain socket(2) call; the returned descriptor is owned by OwnedFd below.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // Identifier and checksum are left zero: the kernel fills both in for ping sockets.
    let mut packet = vec![request, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);

    let start = Instant::now();
    send_to(&sock, &packet, dst)?;

    let deadline = start + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no echo reply"));
        }
        set_recv_timeout(&sock, left)?;
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no echo reply"))
                }
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        let got = &buf[..n as usize];
        // The kernel already matched the identifier; check the rest is our echo.
        if got.len() >= 8
            && got[0] == reply
            && got[6..8] == seq.to_be_bytes()
            && &got[8..] == PAYLOAD
        {
            return Ok(start.elapsed());
        }
    }
}

fn send_to(sock: &OwnedFd, packet: &[u8], dst: IpAddr) -> io::Result<()> {
    let rc = match dst {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: packet and sa are valid for the lengths passed.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: packet and sa are valid for the lengths passed.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_recv_timeout(sock: &OwnedFd, timeout: Duration) -> io::Result<()> {
    // A zero timeval would mean "block forever"; never ask for less than 1 µs.
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: (timeout.subsec_micros().max(1)) as libc::suseconds_t,
    };
    // SAFETY: tv is valid for size_of::<timeval>() bytes.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
