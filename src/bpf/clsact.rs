//! The clsact qdisc that legacy (pre-TCX, kernel < 6.6) TC attachment needs.
//! We add it only when missing and remember that, so a clsact that another tool
//! put there (and its filters) is never removed by us.

use super::BpfError;

/// Add clsact to `iface`. Returns whether we created it (false: it was there).
pub(super) fn add(iface: &str) -> Result<bool, BpfError> {
    match aya::programs::tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(true),
        Err(aya::programs::tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(BpfError::Clsact { op: "add", iface: iface.into(), reason: e.to_string() }),
    }
}

/// Remove the clsact qdisc of `ifindex`. An interface or qdisc already gone is success.
pub(super) fn remove(ifindex: u32) -> Result<(), BpfError> {
    use netlink_packet_route::tc::{TcAttribute, TcHandle};

    let iface = ifindex.to_string();
    let fail = |reason: String| BpfError::Clsact { op: "remove", iface: iface.clone(), reason };
    // A private current-thread runtime on its own thread: teardown may run from
    // Drop or from inside the daemon's runtime, and a runtime may neither block
    // nor be dropped inside another.
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| fail(e.to_string()))?;
            runtime.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| fail(e.to_string()))?;
                tokio::spawn(conn);
                let mut req = handle.qdisc().del(ifindex as i32);
                let msg = req.message_mut();
                msg.header.parent = TcHandle::CLSACT;
                msg.header.handle = TcHandle { major: 0xffff, minor: 0 };
                msg.attributes.push(TcAttribute::Kind("clsact".into()));
                match req.execute().await {
                    Ok(()) => Ok(()),
                    Err(rtnetlink::Error::NetlinkError(e))
                        if matches!(e.raw_code().abs(), libc::ENOENT | libc::ENODEV | libc::EINVAL) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(fail(e.to_string())),
                }
            })
        })
        .join()
        .unwrap_or_else(|_| Err(fail("panicked".into())))
    })
}
