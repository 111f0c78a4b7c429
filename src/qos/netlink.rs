//! The qdiscs and classes of an [`HtbTree`] on the wire (rtnetlink).
//!
//! netlink-packet-route 0.34 knows the generic tc message (`TcMessage`) and the
//! options of ingress, fq_codel and a few filters, but nothing of HTB or the fifos,
//! and rtnetlink 0.24 has no request for adding traffic classes. So this module
//! builds the messages itself: HTB's attributes (TCA_HTB_INIT, TCA_HTB_PARMS,
//! TCA_HTB_RATE64/CEIL64, TCA_HTB_DIRECT_QLEN) go as `TcOption::Other(DefaultNla)`
//! inside TCA_OPTIONS, which the crate emits as a nested attribute, as the kernel
//! wants; bfifo's TCA_OPTIONS is a bare `struct tc_fifo_qopt`, not a nest, so it
//! goes as a `TcAttribute::Other` with type TCA_OPTIONS. Requests are sent with
//! `Handle::request`; the layouts are those of `<linux/pkt_sched.h>`.
//!
//! Rate tables: `htb_change_class` (net/sched/sch_htb.c, since Linux 3.11) computes
//! its own rate parameters (`psched_ratecfg_precompute`) and reads TCA_HTB_RTAB and
//! TCA_HTB_CTAB only for a ratespec whose `linklayer` is TC_LINKLAYER_UNAWARE, to
//! stay compatible with old tc binaries. We send `linklayer = TC_LINKLAYER_ETHERNET`
//! and no tables. Rates of 2^32 bytes/s and above (34 Gbit/s) go in
//! TCA_HTB_RATE64/CEIL64 with the 32-bit field saturated, as tc does.

use futures::StreamExt;
use rtnetlink::packet_core::{
    DefaultNla, Nla, NlasIterator, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::tree::{HtbClass, ROOT_MAJOR};

// <linux/pkt_sched.h>
const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// Scheduler clock tick: `PSCHED_TICKS2NS(x) = x << 6`.
const PSCHED_SHIFT: u32 = 6;
/// Packets whose skb->priority is exactly `1a1:0` bypass the classes (HTB's
/// "direct" queue); nothing of ours sets that, so a short queue is plenty. Set
/// explicitly so it does not depend on the device's tx_queue_len (0 on some).
const DIRECT_QLEN: u32 = 128;
/// Only used by the kernel when a class has no explicit quantum; ours always do.
const R2Q: u32 = 10;

/// A failed netlink request, with the errno when the kernel sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub errno: Option<i32>,
    pub message: String,
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{} ({})", std::io::Error::from_raw_os_error(e), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for NlError {}

impl From<rtnetlink::Error> for NlError {
    fn from(e: rtnetlink::Error) -> Self {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
            _ => None,
        };
        NlError { errno, message: e.to_string() }
    }
}

impl NlError {
    pub fn is(&self, errno: i32) -> bool {
        self.errno == Some(errno)
    }
}

/// A qdisc as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdiscInfo {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// bfifo/pfifo limit, when the qdisc is one.
    pub fifo_limit: Option<u32>,
    /// HTB's default class minor, when the qdisc is HTB.
    pub htb_default: Option<u32>,
}

/// An HTB class as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    pub handle: u32,
    pub parent: u32,
    /// Handle of the leaf qdisc (tcm_info), 0 for inner classes.
    pub leaf: u32,
    pub rate: u64,
    pub ceil: u64,
    pub quantum: u32,
    pub prio: u32,
}

pub const fn handle(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// The kernel's "root" parent (TC_H_ROOT).
pub const TC_H_ROOT: u32 = u32::MAX;

/// One rtnetlink connection, alive for the duration of one runtime.
pub struct Conn {
    handle: rtnetlink::Handle,
}

impl Conn {
    /// Opens the socket in the calling thread's network namespace and spawns its
    /// driver on the current tokio runtime.
    pub fn open() -> Result<Conn, NlError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NlError { errno: e.raw_os_error(), message: format!("netlink socket: {e}") })?;
        tokio::spawn(conn);
        Ok(Conn { handle })
    }

    async fn ack(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut response = self.handle.request(req)?;
        while let Some(msg) = response.next().await {
            if let NetlinkPayload::Error(err) = msg.payload {
                if err.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(err).into());
                }
            }
        }
        Ok(())
    }

    async fn dump(&mut self, message: RouteNetlinkMessage) -> Result<Vec<TcMessage>, NlError> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut response = self.handle.request(req)?;
        let mut out = Vec::new();
        while let Some(msg) = response.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewQueueDiscipline(m) | RouteNetlinkMessage::NewTrafficClass(m),
                ) => out.push(m),
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    return Err(rtnetlink::Error::NetlinkError(err).into())
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Every qdisc of `ifindex` (the kernel filters the dump by tcm_ifindex).
    pub async fn qdiscs(&mut self, ifindex: u32) -> Result<Vec<QdiscInfo>, NlError> {
        let msg = TcMessage::with_index(ifindex as i32);
        let all = self.dump(RouteNetlinkMessage::GetQueueDiscipline(msg)).await?;
        Ok(all.iter().filter(|m| m.header.index == ifindex as i32).map(qdisc_info).collect())
    }

    /// The root qdisc of `ifindex` (parent TC_H_ROOT); `None` when the device has
    /// none listed (a device that is down may have only noop).
    pub async fn root_qdisc(&mut self, ifindex: u32) -> Result<Option<QdiscInfo>, NlError> {
        Ok(self.qdiscs(ifindex).await?.into_iter().find(|q| q.parent == TC_H_ROOT))
    }

    /// Every class of `ifindex`.
    pub async fn classes(&mut self, ifindex: u32) -> Result<Vec<ClassInfo>, NlError> {
        let msg = TcMessage::with_index(ifindex as i32);
        let all = self.dump(RouteNetlinkMessage::GetTrafficClass(msg)).await?;
        Ok(all.iter().filter(|m| m.header.index == ifindex as i32).filter_map(class_info).collect())
    }

    /// Adds our HTB root (`1a1:`, default class `default_minor`). NLM_F_EXCL
    /// without NLM_F_REPLACE: the kernel itself refuses (EEXIST) to put it over a
    /// root qdisc that is not a kernel default (handle 0), so a qdisc someone
    /// else created is never replaced, even if it appeared after our check.
    pub async fn add_htb_root(&mut self, ifindex: u32, default_minor: u16) -> Result<(), NlError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle { major: ROOT_MAJOR, minor: 0 };
        msg.attributes.push(TcAttribute::Kind("htb".into()));
        let mut glob = Vec::with_capacity(20);
        for v in [TC_HTB_PROTOVER, R2Q, u32::from(default_minor), 0, 0] {
            glob.extend_from_slice(&v.to_ne_bytes());
        }
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob)),
            TcOption::Other(DefaultNla::new(TCA_HTB_DIRECT_QLEN, DIRECT_QLEN.to_ne_bytes().to_vec())),
        ]));
        self.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_EXCL).await
    }

    /// Creates the class, or changes it in place when it exists (NLM_F_CREATE
    /// without NLM_F_EXCL): a change keeps the class's queue and tokens, so a rate
    /// change takes effect at once and drops nothing.
    pub async fn put_class(&mut self, ifindex: u32, class: &HtbClass) -> Result<(), NlError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.handle = TcHandle { major: ROOT_MAJOR, minor: class.minor };
        msg.header.parent = TcHandle { major: ROOT_MAJOR, minor: class.parent_minor.unwrap_or(0) };
        msg.attributes.push(TcAttribute::Kind("htb".into()));
        let mut options = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, htb_opt(class)))];
        if class.rate > u64::from(u32::MAX) {
            options.push(TcOption::Other(DefaultNla::new(TCA_HTB_RATE64, class.rate.to_ne_bytes().to_vec())));
        }
        if class.ceil > u64::from(u32::MAX) {
            options.push(TcOption::Other(DefaultNla::new(TCA_HTB_CEIL64, class.ceil.to_ne_bytes().to_vec())));
        }
        msg.attributes.push(TcAttribute::Options(options));
        self.ack(RouteNetlinkMessage::NewTrafficClass(msg), NLM_F_CREATE).await
    }

    /// Puts a leaf qdisc `major:` of `kind` under class `1a1:minor`, replacing the
    /// class's default pfifo, or changing ours in place when it is already there.
    /// `fifo_limit` is sent for bfifo; fq_codel and cake run with their defaults.
    pub async fn put_leaf(
        &mut self,
        ifindex: u32,
        class_minor: u16,
        major: u16,
        kind: &str,
        fifo_limit: u32,
    ) -> Result<(), NlError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle { major: ROOT_MAJOR, minor: class_minor };
        msg.header.handle = TcHandle { major, minor: 0 };
        msg.attributes.push(TcAttribute::Kind(kind.into()));
        if kind == "bfifo" || kind == "pfifo" {
            // struct tc_fifo_qopt { __u32 limit; }, not nested.
            msg.attributes
                .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, fifo_limit.to_ne_bytes().to_vec())));
        }
        self.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE).await
    }

    /// Deletes the leaf qdisc `major:` under class `1a1:class_minor`; HTB puts its
    /// default pfifo back. Used only to change the kind of a leaf of ours.
    pub async fn del_leaf(&mut self, ifindex: u32, class_minor: u16, major: u16) -> Result<(), NlError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle { major: ROOT_MAJOR, minor: class_minor };
        msg.header.handle = TcHandle { major, minor: 0 };
        self.ack(RouteNetlinkMessage::DelQueueDiscipline(msg), 0).await
    }

    /// Deletes the root qdisc of `ifindex` if, and only if, it is HTB with handle
    /// `1a1:` (the kernel checks handle and kind: ENOENT / EINVAL otherwise). The
    /// kernel then attaches the device's default qdisc again.
    pub async fn del_htb_root(&mut self, ifindex: u32) -> Result<(), NlError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle { major: ROOT_MAJOR, minor: 0 };
        msg.attributes.push(TcAttribute::Kind("htb".into()));
        self.ack(RouteNetlinkMessage::DelQueueDiscipline(msg), 0).await
    }
}

/// `struct tc_ratespec` (12 bytes).
fn ratespec(out: &mut Vec<u8>, rate: u64) {
    out.push(0); // cell_log
    out.push(TC_LINKLAYER_ETHERNET);
    out.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
    out.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    out.extend_from_slice(&(rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
}

/// Scheduler ticks to send `bytes` at `rate` bytes per second (tc's xmittime).
pub fn xmit_ticks(bytes: u64, rate: u64) -> u32 {
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1));
    (ns >> PSCHED_SHIFT).min(u128::from(u32::MAX)) as u32
}

/// `struct tc_htb_opt` (44 bytes).
fn htb_opt(class: &HtbClass) -> Vec<u8> {
    let mut out = Vec::with_capacity(44);
    ratespec(&mut out, class.rate);
    ratespec(&mut out, class.ceil);
    for v in [
        xmit_ticks(class.burst, class.rate),
        xmit_ticks(class.cburst, class.ceil),
        class.quantum,
        0, // level: the kernel's to decide
        class.prio,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out
}

/// The payload of the TCA_OPTIONS attribute of a dumped message, whatever way
/// the crate parsed it (it keeps unknown kinds' options as one raw attribute).
fn options_payload(msg: &TcMessage) -> Option<Vec<u8>> {
    msg.attributes.iter().find_map(|a| {
        let nla: &dyn Nla = match a {
            TcAttribute::Options(opts) => match opts.as_slice() {
                [TcOption::Other(nla)] if nla.kind() & 0x3fff == TCA_OPTIONS => nla,
                _ => return None,
            },
            TcAttribute::Other(nla) if nla.kind() & 0x3fff == TCA_OPTIONS => nla,
            _ => return None,
        };
        let mut buf = vec![0; nla.value_len()];
        nla.emit_value(&mut buf);
        Some(buf)
    })
}

fn nested(payload: &[u8], kind: u16) -> Option<Vec<u8>> {
    NlasIterator::new(payload)
        .filter_map(Result::ok)
        .find(|n| n.kind() & 0x3fff == kind)
        .map(|n| n.value().to_vec())
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(offset..offset + 4)?.try_into().ok()?))
}

fn u64_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn kind_of(msg: &TcMessage) -> String {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn qdisc_info(msg: &TcMessage) -> QdiscInfo {
    let kind = kind_of(msg);
    let options = options_payload(msg);
    let fifo_limit = match kind.as_str() {
        "bfifo" | "pfifo" => options.as_deref().and_then(|o| u32_at(o, 0)),
        _ => None,
    };
    let htb_default = match kind.as_str() {
        "htb" => options.as_deref().and_then(|o| nested(o, TCA_HTB_INIT)).and_then(|g| u32_at(&g, 8)),
        _ => None,
    };
    QdiscInfo {
        kind,
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
        fifo_limit,
        htb_default,
    }
}

fn class_info(msg: &TcMessage) -> Option<ClassInfo> {
    if kind_of(msg) != "htb" {
        return None;
    }
    let options = options_payload(msg)?;
    let parms = nested(&options, TCA_HTB_PARMS)?;
    let rate64 = nested(&options, TCA_HTB_RATE64).and_then(|v| u64_of(&v));
    let ceil64 = nested(&options, TCA_HTB_CEIL64).and_then(|v| u64_of(&v));
    Some(ClassInfo {
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
        leaf: msg.header.info,
        rate: rate64.unwrap_or(u64::from(u32_at(&parms, 8)?)),
        ceil: ceil64.unwrap_or(u64::from(u32_at(&parms, 20)?)),
        quantum: u32_at(&parms, 32)?,
        prio: u32_at(&parms, 40)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htb_opt_has_the_kernel_layout() {
        let class = HtbClass {
            minor: 0x10,
            parent_minor: Some(1),
            rate: 5_000_000,
            ceil: 12_500_000,
            burst: 5000,
            cburst: 12_500,
            quantum: 5000,
            prio: 0,
        };
        let opt = htb_opt(&class);
        assert_eq!(opt.len(), 44, "sizeof(struct tc_htb_opt)");
        assert_eq!(opt[1], TC_LINKLAYER_ETHERNET, "rate.linklayer");
        assert_eq!(u32_at(&opt, 8), Some(5_000_000), "rate.rate");
        assert_eq!(opt[13], TC_LINKLAYER_ETHERNET, "ceil.linklayer");
        assert_eq!(u32_at(&opt, 20), Some(12_500_000), "ceil.rate");
        // 5000 bytes at 5 MB/s = 1 ms = 15625 ticks of 64 ns.
        assert_eq!(u32_at(&opt, 24), Some(15_625), "buffer");
        assert_eq!(u32_at(&opt, 28), Some(15_625), "cbuffer");
        assert_eq!(u32_at(&opt, 32), Some(5000), "quantum");
        assert_eq!(u32_at(&opt, 40), Some(0), "prio");
    }

    #[test]
    fn rates_above_32_bits_saturate_the_ratespec() {
        let mut out = Vec::new();
        ratespec(&mut out, 10_000_000_000);
        assert_eq!(u32_at(&out, 8), Some(u32::MAX));
    }

    #[test]
    fn handles_compose_like_tc_h_make() {
        assert_eq!(handle(0x1a1, 0x10), 0x01a1_0010);
        assert_eq!(u32::from(TcHandle::ROOT), TC_H_ROOT);
    }
}
