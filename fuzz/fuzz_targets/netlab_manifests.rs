//! `moat netpol lab` / `explain` manifest loading: arbitrary YAML streams through
//! `Objects::add_yaml`, `finish`, the snapshot, the policy compiler and the lab's pod plan —
//! everything before root is needed. Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_netlab::manifest::{Objects, lab_pods, parse_probes};
use moat_netpol::Options;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (probes, yaml) = text.split_once('\n').unwrap_or(("80/TCP", &text));
    let mut objs = Objects::default();
    if objs.add_yaml("fuzz.yaml", yaml).is_err() || objs.finish().is_err() {
        return;
    }
    for legacy in [false, true] {
        let opts = Options {
            legacy_namespace_isolation: legacy,
            node_addrs: vec![moat_netlab::LAB_GATEWAY],
            ..Default::default()
        };
        let Ok(snap) = objs.snapshot(&opts) else {
            return;
        };
        let compiled = moat_netpol::compile::compile(&snap);
        let _ = moat_netpol::render::full(&compiled);
        if let Ok(p) = parse_probes(probes) {
            let pods = lab_pods(&snap, &p);
            for a in &pods {
                for b in &pods {
                    for (port, proto) in &p {
                        let _ = moat_netpol::sim::allowed(&compiled, a.ip, b.ip, *proto, *port);
                    }
                }
            }
        }
    }
});
