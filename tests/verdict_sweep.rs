//! Verdicts userspace hands to pending flows are removed by the sweep once no
//! flow will pick them up, so the bounded map never fills with leftovers.

use inferlane::bpf::abi::{FlowKey, Verdict, SRC_SNI};
use inferlane::bpf::Datapath;

#[test]
fn stale_verdicts_are_swept() {
    if !inferlane::lab::require_root_or_skip("stale_verdicts_are_swept") {
        return;
    }
    let mut dp = Datapath::load().expect("load the datapath");
    let key = |port: u16| FlowKey {
        client: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 2],
        remote: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10],
        client_port: port.to_be(),
        remote_port: 443u16.to_be(),
        proto: 6,
        family: 4,
        pad: 0,
    };
    let v = Verdict { provider_id: 1, source: SRC_SNI, flags: 0, pad: 0 };
    for port in [40000, 40001, 40002] {
        dp.set_verdict(key(port), v).unwrap();
    }
    // None of these flows exists: all three verdicts are stale.
    assert_eq!(dp.sweep_verdicts().unwrap(), 3, "expected the three orphan verdicts to go");
    assert_eq!(dp.sweep_verdicts().unwrap(), 0, "a second sweep finds nothing");
}
