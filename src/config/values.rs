//! Single values written as strings in the config: DSCP code points, port specs,
//! health probes, CIDRs and socket addresses.
//!
//! Each type deserializes itself, so a bad value fails inside toml's deserializer and
//! the error carries the value's span: the message points at the string that is wrong.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// A value that could not be parsed. Every message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("unknown DSCP {0:?}; use a name (CS0-CS7, AF11-AF43, EF, VA, LE, DF or BE) or a number 0-63")]
    UnknownDscp(String),
    #[error("DSCP {0} is out of range 0-63")]
    DscpOutOfRange(i128),
    #[error("invalid port {0:?}: expected PROTO:PORT or PROTO:FIRST-LAST with PROTO tcp or udp, e.g. \"tcp:443\" or \"udp:8000-8001\"")]
    PortSyntax(String),
    #[error("invalid port {input:?}: unknown protocol {proto:?}; use tcp or udp")]
    PortProto { input: String, proto: String },
    #[error("invalid port {input:?}: {port:?} is not a port number 1-65535")]
    PortNumber { input: String, port: String },
    #[error("invalid port {input:?}: range {first}-{last} is reversed; write {last}-{first}")]
    PortReversed {
        input: String,
        first: u16,
        last: u16,
    },
    #[error("invalid probe {0:?}: expected icmp:ADDR, tcp:ADDR:PORT or dns:ADDR[:PORT] (IPv6 with a port as [ADDR]:PORT)")]
    ProbeSyntax(String),
    #[error("invalid probe {input:?}: unknown probe type {kind:?}; use icmp, tcp or dns")]
    ProbeKind { input: String, kind: String },
    #[error("invalid probe {0:?}: a tcp probe needs a port, e.g. \"tcp:192.0.2.10:443\"")]
    ProbePort(String),
    #[error("invalid CIDR {input:?}: {addr:?} is not an IP address")]
    CidrAddr { input: String, addr: String },
    #[error("invalid CIDR {input:?}: prefix length {len:?} is not a number")]
    CidrLenSyntax { input: String, len: String },
    #[error("invalid CIDR {input:?}: prefix length {len} exceeds {max}")]
    CidrLenRange { input: String, len: u32, max: u8 },
    #[error("{input:?} has host bits set; did you mean \"{network}\"?")]
    CidrHostBits { input: String, network: IpNet },
    #[error("invalid address {0:?}: expected IP:PORT (IPv6 as [IP]:PORT)")]
    AddrSyntax(String),
    #[error("invalid address {0:?}: missing port, e.g. \"192.0.2.50:4739\"")]
    AddrNoPort(String),
    #[error("invalid address {0:?}: port 0 is not usable")]
    PortZero(String),
}

// ---------------------------------------------------------------------------------
// Deserializing through FromStr-like functions

/// Deserializes a string through `parse`. `expecting` completes serde's
/// "invalid type: integer 5, expected ..." when the value is not a string.
pub(crate) fn deserialize_parsed<'de, D, T, E>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    deserializer.deserialize_str(ParseVisitor { expecting, parse })
}

struct ParseVisitor<T, E> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, E>,
}

impl<T, E: fmt::Display> Visitor<'_> for ParseVisitor<T, E> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<Er: de::Error>(self, v: &str) -> Result<T, Er> {
        (self.parse)(v).map_err(Er::custom)
    }
}

/// A list whose elements deserialize through `parse`, each error spanning its element.
macro_rules! parsed_list {
    ($name:ident, $elem:ident, $ty:ty, $expecting:literal, $parse:path) => {
        struct $elem($ty);

        impl<'de> Deserialize<'de> for $elem {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserialize_parsed(deserializer, $expecting, $parse).map($elem)
            }
        }

        pub(crate) fn $name<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<$ty>, D::Error> {
            let items = Vec::<$elem>::deserialize(deserializer)?;
            Ok(items.into_iter().map(|item| item.0).collect())
        }
    };
}

parsed_list!(
    de_cidrs,
    CidrItem,
    IpNet,
    "a CIDR like \"192.0.2.0/24\"",
    parse_cidr
);

pub(crate) fn de_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    deserialize_parsed(
        deserializer,
        "an address like \"127.0.0.1:9464\"",
        parse_socket_addr,
    )
}

// ---------------------------------------------------------------------------------
// DSCP

/// A DiffServ code point, 0..=63.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dscp(u8);

impl Dscp {
    pub const DF: Dscp = Dscp(0);
    pub const LE: Dscp = Dscp(1);
    pub const VA: Dscp = Dscp(44);
    pub const EF: Dscp = Dscp(46);

    /// `None` above 63.
    pub fn new(value: u8) -> Option<Dscp> {
        (value <= 63).then_some(Dscp(value))
    }

    pub fn value(self) -> u8 {
        self.0
    }

    /// The code point as it sits in the IPv4 TOS / IPv6 traffic class byte (ECN bits
    /// zero).
    pub fn tos(self) -> u8 {
        self.0 << 2
    }

    fn from_name(name: &str) -> Option<Dscp> {
        let upper = name.to_ascii_uppercase();
        match upper.as_str() {
            "DF" | "BE" => return Some(Dscp::DF),
            "LE" => return Some(Dscp::LE),
            "VA" => return Some(Dscp::VA),
            "EF" => return Some(Dscp::EF),
            _ => {}
        }
        let digits = |prefix: &str| upper.strip_prefix(prefix).map(str::as_bytes);
        if let Some(&[n]) = digits("CS") {
            // CSn = n << 3 (RFC 2474 class selectors).
            return (b'0'..=b'7').contains(&n).then(|| Dscp((n - b'0') << 3));
        }
        if let Some(&[class, drop]) = digits("AF") {
            // AFxy = 8x + 2y (RFC 2597), x in 1..=4, y in 1..=3.
            if (b'1'..=b'4').contains(&class) && (b'1'..=b'3').contains(&drop) {
                return Some(Dscp(8 * (class - b'0') + 2 * (drop - b'0')));
            }
        }
        None
    }

    fn from_integer(value: i128) -> Result<Dscp, ValueError> {
        u8::try_from(value)
            .ok()
            .and_then(Dscp::new)
            .ok_or(ValueError::DscpOutOfRange(value))
    }
}

impl FromStr for Dscp {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let value = s.parse::<i128>().unwrap_or(i128::MAX);
            return Dscp::from_integer(value);
        }
        Dscp::from_name(s).ok_or_else(|| ValueError::UnknownDscp(s.to_owned()))
    }
}

/// The usual name where there is one ("AF41", "EF", "DF"), else the number.
impl fmt::Display for Dscp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        // The three high bits are the class, the next two the AF drop precedence.
        let (class, low) = (v >> 3, v & 7);
        match v {
            0 => f.write_str("DF"),
            1 => f.write_str("LE"),
            44 => f.write_str("VA"),
            46 => f.write_str("EF"),
            _ if low == 0 => write!(f, "CS{class}"),
            _ if (1..=4).contains(&class) && matches!(low, 2 | 4 | 6) => {
                write!(f, "AF{class}{}", low / 2)
            }
            _ => write!(f, "{v}"),
        }
    }
}

/// A DSCP is a name or number in a string, or a plain TOML integer.
impl<'de> Deserialize<'de> for Dscp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DscpVisitor;

        impl Visitor<'_> for DscpVisitor {
            type Value = Dscp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DSCP name like \"AF41\" or a number 0-63")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dscp, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dscp, E> {
                Dscp::from_integer(v.into()).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dscp, E> {
                Dscp::from_integer(v.into()).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DscpVisitor)
    }
}

// ---------------------------------------------------------------------------------
// Ports

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// The IP protocol number, as the packet carries it.
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
        })
    }
}

/// A protocol and an inclusive port range: "tcp:443", "udp:8000-8001".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub proto: L4Proto,
    pub first: u16,
    pub last: u16,
}

impl PortSpec {
    pub fn contains(&self, proto: L4Proto, port: u16) -> bool {
        self.proto == proto && (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortSpec {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (proto, ports) = input
            .split_once(':')
            .ok_or_else(|| ValueError::PortSyntax(input.to_owned()))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => L4Proto::Tcp,
            "udp" => L4Proto::Udp,
            _ => {
                return Err(ValueError::PortProto {
                    input: input.to_owned(),
                    proto: proto.to_owned(),
                })
            }
        };
        let port = |text: &str| match text.parse::<u16>() {
            // Reject "+443" too: u16::from_str accepts a leading '+'.
            Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
            _ => Err(ValueError::PortNumber {
                input: input.to_owned(),
                port: text.to_owned(),
            }),
        };
        let (first, last) = match ports.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => (port(ports)?, port(ports)?),
        };
        if first > last {
            return Err(ValueError::PortReversed {
                input: input.to_owned(),
                first,
                last,
            });
        }
        Ok(PortSpec { proto, first, last })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}:{}", self.proto, self.first)
        } else {
            write!(f, "{}:{}-{}", self.proto, self.first, self.last)
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "a port like \"tcp:443\"", PortSpec::from_str)
    }
}

// ---------------------------------------------------------------------------------
// Health probes

/// One uplink health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// "icmp:ADDR": echo request, answered by any reachable host.
    Icmp(IpAddr),
    /// "tcp:ADDR:PORT": a TCP handshake, for networks that drop ICMP.
    Tcp(SocketAddr),
    /// "dns:ADDR" or "dns:ADDR:PORT": a DNS query over UDP, port 53 by default.
    Dns(SocketAddr),
}

impl Probe {
    pub fn target(&self) -> IpAddr {
        match self {
            Probe::Icmp(addr) => *addr,
            Probe::Tcp(addr) | Probe::Dns(addr) => addr.ip(),
        }
    }
}

/// An address, optionally in brackets: "192.0.2.1", "2001:db8::1", "[2001:db8::1]".
fn parse_bare_ip(text: &str) -> Option<IpAddr> {
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    unbracketed.parse().ok()
}

impl FromStr for Probe {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || ValueError::ProbeSyntax(input.to_owned());
        let (kind, target) = input.split_once(':').ok_or_else(syntax)?;
        let with_port = |target: &str| -> Result<SocketAddr, ValueError> {
            let addr: SocketAddr = target.parse().map_err(|_| syntax())?;
            if addr.port() == 0 {
                return Err(ValueError::PortZero(input.to_owned()));
            }
            Ok(addr)
        };
        match kind.to_ascii_lowercase().as_str() {
            "icmp" => parse_bare_ip(target).map(Probe::Icmp).ok_or_else(syntax),
            "tcp" if parse_bare_ip(target).is_some() => {
                Err(ValueError::ProbePort(input.to_owned()))
            }
            "tcp" => with_port(target).map(Probe::Tcp),
            "dns" => match parse_bare_ip(target) {
                Some(ip) => Ok(Probe::Dns(SocketAddr::new(ip, 53))),
                None => with_port(target).map(Probe::Dns),
            },
            _ => Err(ValueError::ProbeKind {
                input: input.to_owned(),
                kind: kind.to_owned(),
            }),
        }
    }
}

/// The same spelling the parser reads: "icmp:192.0.2.1", "tcp:[2001:db8::1]:443".
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Icmp(addr) => write!(f, "icmp:{addr}"),
            Probe::Tcp(addr) => write!(f, "tcp:{addr}"),
            Probe::Dns(addr) if addr.port() == 53 => write!(f, "dns:{}", addr.ip()),
            Probe::Dns(addr) => write!(f, "dns:{addr}"),
        }
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(
            deserializer,
            "a probe like \"icmp:192.0.2.1\"",
            Probe::from_str,
        )
    }
}

// ---------------------------------------------------------------------------------
// CIDRs and socket addresses

/// "192.0.2.0/24", "2001:db8::/32", or a bare address meaning that one host.
/// Networks with host bits set are refused: "10.0.0.1/8" is almost always a typo for
/// either a host or a network, and silently truncating it would match far more (or
/// less) than the writer meant.
pub fn parse_cidr(input: &str) -> Result<IpNet, ValueError> {
    let (addr_text, len_text) = match input.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (input, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| ValueError::CidrAddr {
        input: input.to_owned(),
        addr: addr_text.to_owned(),
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(text) => {
            // u8::from_str would accept "+24"; a prefix length is plain digits.
            let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
            let len = if digits {
                text.parse::<u32>().ok()
            } else {
                None
            };
            let len = len.ok_or_else(|| ValueError::CidrLenSyntax {
                input: input.to_owned(),
                len: text.to_owned(),
            })?;
            if len > u32::from(max) {
                return Err(ValueError::CidrLenRange {
                    input: input.to_owned(),
                    len,
                    max,
                });
            }
            len as u8
        }
    };
    let net = IpNet::new(addr, len).expect("prefix length checked above");
    if net.trunc() != net {
        return Err(ValueError::CidrHostBits {
            input: input.to_owned(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// "192.0.2.50:4739" or "[2001:db8::50]:4739"; the port is required and non-zero.
pub fn parse_socket_addr(input: &str) -> Result<SocketAddr, ValueError> {
    match input.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(ValueError::PortZero(input.to_owned())),
        Ok(addr) => Ok(addr),
        Err(_) if parse_bare_ip(input).is_some() => Err(ValueError::AddrNoPort(input.to_owned())),
        Err(_) => Err(ValueError::AddrSyntax(input.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn ok<T: FromStr<Err = ValueError> + fmt::Debug>(input: &str) -> T {
        input
            .parse()
            .unwrap_or_else(|e| panic!("expected {input:?} to parse, got error: {e}"))
    }

    #[track_caller]
    fn err<T: FromStr<Err = ValueError> + fmt::Debug>(input: &str) -> String {
        match input.parse::<T>() {
            Ok(v) => panic!("expected {input:?} to be refused, parsed as {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dscp_names_and_numbers() {
        let cases = [
            ("CS0", 0),
            ("cs1", 8),
            ("CS5", 40),
            ("CS7", 56),
            ("AF11", 10),
            ("AF12", 12),
            ("AF13", 14),
            ("AF21", 18),
            ("af31", 26),
            ("AF41", 34),
            ("AF42", 36),
            ("AF43", 38),
            ("EF", 46),
            ("ef", 46),
            ("VA", 44),
            ("LE", 1),
            ("DF", 0),
            ("be", 0),
            ("0", 0),
            ("46", 46),
            ("63", 63),
        ];
        for (input, expected) in cases {
            let seen = ok::<Dscp>(input).value();
            assert_eq!(
                seen, expected,
                "DSCP {input:?}: expected {expected}, saw {seen}"
            );
        }
    }

    #[test]
    fn dscp_refusals() {
        for input in ["AF44", "AF51", "AF10", "CS8", "XX", "", "A F41", "-1"] {
            let seen = err::<Dscp>(input);
            assert!(seen.starts_with("unknown DSCP"), "{input:?}: {seen}");
        }
        assert_eq!(err::<Dscp>("64"), "DSCP 64 is out of range 0-63");
        assert_eq!(
            err::<Dscp>("99999999999999999999999999999999999999999"),
            format!("DSCP {} is out of range 0-63", i128::MAX)
        );
    }

    #[test]
    fn dscp_display_round_trips() {
        for value in 0..=63u8 {
            let dscp = Dscp::new(value).unwrap();
            let text = dscp.to_string();
            assert_eq!(ok::<Dscp>(&text), dscp, "DSCP {value} displays as {text:?}");
        }
        assert_eq!(Dscp::new(34).unwrap().to_string(), "AF41");
        assert_eq!(Dscp::new(3).unwrap().to_string(), "3");
        assert_eq!(Dscp::EF.tos(), 0xb8);
        assert_eq!(Dscp::new(64), None);
    }

    #[test]
    fn dscp_from_toml_integer_or_string() {
        #[derive(Deserialize)]
        struct T {
            d: Dscp,
        }
        let d = |text: &str| {
            toml::from_str::<T>(text)
                .map(|t| t.d)
                .map_err(|e| e.message().to_owned())
        };
        assert_eq!(d("d = 46"), Ok(Dscp::EF));
        assert_eq!(d("d = \"46\""), Ok(Dscp::EF));
        assert_eq!(d("d = \"af41\""), Ok(Dscp::new(34).unwrap()));
        assert_eq!(d("d = 64"), Err("DSCP 64 is out of range 0-63".to_owned()));
        assert_eq!(d("d = -1"), Err("DSCP -1 is out of range 0-63".to_owned()));
        let seen = d("d = 1.5").unwrap_err();
        assert!(
            seen.contains("expected a DSCP name like \"AF41\" or a number 0-63"),
            "{seen}"
        );
    }

    #[test]
    fn port_specs() {
        let p = ok::<PortSpec>("tcp:443");
        assert_eq!(
            p,
            PortSpec {
                proto: L4Proto::Tcp,
                first: 443,
                last: 443
            }
        );
        let p = ok::<PortSpec>("udp:8000-8001");
        assert_eq!(
            p,
            PortSpec {
                proto: L4Proto::Udp,
                first: 8000,
                last: 8001
            }
        );
        assert_eq!(ok::<PortSpec>("TCP:1-65535").to_string(), "tcp:1-65535");
        assert_eq!(p.to_string(), "udp:8000-8001");
        assert!(p.contains(L4Proto::Udp, 8001) && !p.contains(L4Proto::Tcp, 8001));
    }

    #[test]
    fn port_spec_refusals() {
        assert!(err::<PortSpec>("443").contains("expected PROTO:PORT"));
        assert_eq!(
            err::<PortSpec>("sctp:443"),
            "invalid port \"sctp:443\": unknown protocol \"sctp\"; use tcp or udp"
        );
        assert_eq!(
            err::<PortSpec>("tcp:0"),
            "invalid port \"tcp:0\": \"0\" is not a port number 1-65535"
        );
        assert_eq!(
            err::<PortSpec>("tcp:65536"),
            "invalid port \"tcp:65536\": \"65536\" is not a port number 1-65535"
        );
        assert_eq!(
            err::<PortSpec>("tcp:+443"),
            "invalid port \"tcp:+443\": \"+443\" is not a port number 1-65535"
        );
        assert_eq!(
            err::<PortSpec>("tcp:80-"),
            "invalid port \"tcp:80-\": \"\" is not a port number 1-65535"
        );
        assert_eq!(
            err::<PortSpec>("udp:9-8"),
            "invalid port \"udp:9-8\": range 9-8 is reversed; write 8-9"
        );
    }

    #[test]
    fn probes() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ok::<Probe>("icmp:192.0.2.1"), Probe::Icmp(v4("192.0.2.1")));
        assert_eq!(
            ok::<Probe>("icmp:2001:db8::1"),
            Probe::Icmp(v4("2001:db8::1"))
        );
        assert_eq!(
            ok::<Probe>("icmp:[2001:db8::1]"),
            Probe::Icmp(v4("2001:db8::1"))
        );
        assert_eq!(
            ok::<Probe>("tcp:192.0.2.10:443"),
            Probe::Tcp("192.0.2.10:443".parse().unwrap())
        );
        assert_eq!(
            ok::<Probe>("tcp:[2001:db8::10]:443"),
            Probe::Tcp("[2001:db8::10]:443".parse().unwrap())
        );
        assert_eq!(
            ok::<Probe>("dns:192.0.2.53"),
            Probe::Dns("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(
            ok::<Probe>("dns:192.0.2.53:5353"),
            Probe::Dns("192.0.2.53:5353".parse().unwrap())
        );
        assert_eq!(
            ok::<Probe>("dns:2001:db8::53"),
            Probe::Dns("[2001:db8::53]:53".parse().unwrap())
        );
        assert_eq!(
            ok::<Probe>("dns:[2001:db8::53]:5353"),
            Probe::Dns("[2001:db8::53]:5353".parse().unwrap())
        );
        for text in [
            "icmp:192.0.2.1",
            "tcp:[2001:db8::10]:443",
            "dns:192.0.2.53",
            "dns:192.0.2.53:5353",
            "dns:2001:db8::53",
        ] {
            assert_eq!(
                ok::<Probe>(text).to_string(),
                text,
                "probe display round trip"
            );
        }
        assert_eq!(ok::<Probe>("tcp:192.0.2.10:443").target(), v4("192.0.2.10"));
    }

    #[test]
    fn probe_refusals() {
        assert!(err::<Probe>("192.0.2.1").contains("expected icmp:ADDR"));
        assert!(err::<Probe>("icmp:gateway").contains("expected icmp:ADDR"));
        assert_eq!(
            err::<Probe>("http:192.0.2.1"),
            "invalid probe \"http:192.0.2.1\": unknown probe type \"http\"; use icmp, tcp or dns"
        );
        assert_eq!(err::<Probe>("tcp:192.0.2.10"), "invalid probe \"tcp:192.0.2.10\": a tcp probe needs a port, e.g. \"tcp:192.0.2.10:443\"");
        assert_eq!(
            err::<Probe>("tcp:192.0.2.10:0"),
            "invalid address \"tcp:192.0.2.10:0\": port 0 is not usable"
        );
        assert!(err::<Probe>("dns:192.0.2.53:x").contains("expected icmp:ADDR"));
    }

    #[track_caller]
    fn cidr(input: &str) -> String {
        parse_cidr(input)
            .unwrap_or_else(|e| panic!("expected {input:?} to parse: {e}"))
            .to_string()
    }

    #[track_caller]
    fn cidr_err(input: &str) -> String {
        match parse_cidr(input) {
            Ok(net) => panic!("expected {input:?} to be refused, parsed as {net}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn cidrs_ipv4_and_ipv6() {
        assert_eq!(cidr("192.0.2.0/24"), "192.0.2.0/24");
        assert_eq!(cidr("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(cidr("198.51.100.7"), "198.51.100.7/32");
        assert_eq!(cidr("198.51.100.7/32"), "198.51.100.7/32");
        assert_eq!(cidr("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(cidr("2001:db8::1"), "2001:db8::1/128");
        assert_eq!(cidr("::/0"), "::/0");
    }

    #[test]
    fn cidr_refusals() {
        assert_eq!(
            cidr_err("10.0.0.0/33"),
            "invalid CIDR \"10.0.0.0/33\": prefix length 33 exceeds 32"
        );
        assert_eq!(
            cidr_err("2001:db8::/129"),
            "invalid CIDR \"2001:db8::/129\": prefix length 129 exceeds 128"
        );
        assert_eq!(
            cidr_err("10.0.0.0/999"),
            "invalid CIDR \"10.0.0.0/999\": prefix length 999 exceeds 32"
        );
        assert_eq!(
            cidr_err("10.0.0.1/8"),
            "\"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"
        );
        assert_eq!(
            cidr_err("2001:db8::1/32"),
            "\"2001:db8::1/32\" has host bits set; did you mean \"2001:db8::/32\"?"
        );
        assert_eq!(
            cidr_err("10.0.0/8"),
            "invalid CIDR \"10.0.0/8\": \"10.0.0\" is not an IP address"
        );
        assert_eq!(
            cidr_err("10.0.0.0/"),
            "invalid CIDR \"10.0.0.0/\": prefix length \"\" is not a number"
        );
        assert_eq!(
            cidr_err("10.0.0.0/+8"),
            "invalid CIDR \"10.0.0.0/+8\": prefix length \"+8\" is not a number"
        );
        assert_eq!(
            cidr_err("example.com"),
            "invalid CIDR \"example.com\": \"example.com\" is not an IP address"
        );
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket_addr("192.0.2.50:4739"),
            Ok("192.0.2.50:4739".parse().unwrap())
        );
        assert_eq!(
            parse_socket_addr("[2001:db8::50]:4739"),
            Ok("[2001:db8::50]:4739".parse().unwrap())
        );
        assert_eq!(
            parse_socket_addr("192.0.2.50"),
            Err(ValueError::AddrNoPort("192.0.2.50".into()))
        );
        assert_eq!(
            parse_socket_addr("2001:db8::50"),
            Err(ValueError::AddrNoPort("2001:db8::50".into()))
        );
        assert_eq!(
            parse_socket_addr("192.0.2.50:0"),
            Err(ValueError::PortZero("192.0.2.50:0".into()))
        );
        assert_eq!(
            parse_socket_addr("collector:4739"),
            Err(ValueError::AddrSyntax("collector:4739".into()))
        );
    }
}
