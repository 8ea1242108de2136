//! Tests of the planner, and of the driver against the recording fake.

use super::*;
use crate::conf::NetConf;
use crate::driver::PodNet;
use moat_hostnet::HostNet;
use moat_hostnet::fake::FakeNet;
use moat_nft::Recorder;
use proptest::prelude::*;

fn conf(b: Backend) -> NetConf {
    NetConf::new("10.42.0.0/16".parse().unwrap(), b)
}

fn node(i: u8) -> NodeNet {
    NodeNet {
        name: format!("n{i}"),
        subnet: Some(format!("10.42.{i}.0/24").parse().unwrap()),
        ip: Some(format!("192.168.50.{}", 10 + i).parse().unwrap()),
        vtep_mac: Some(Mac([0x0a, 0x58, 0, 0, 0, i])),
    }
}

fn local() -> Local {
    Local {
        name: "n1".into(),
        subnet: "10.42.1.0/24".parse().unwrap(),
        ip: "192.168.50.11".parse().unwrap(),
        underlay: "eth0".into(),
    }
}

fn onlink(_: Ipv4Addr) -> Option<Ipv4Addr> {
    None
}

#[test]
fn host_gw_routes_each_peer_via_its_node_address() {
    let (t, p) = desired(
        &conf(Backend::HostGw),
        &local(),
        &[node(1), node(2), node(3)],
        &onlink,
    );
    assert!(p.is_empty());
    let r: Vec<String> = t
        .routes
        .iter()
        .map(|r| Op::AddRoute(r.clone()).to_string())
        .collect();
    assert_eq!(
        r,
        [
            "route add 10.42.2.0/24 via 192.168.50.12 dev eth0",
            "route add 10.42.3.0/24 via 192.168.50.13 dev eth0"
        ]
    );
    assert!(t.neighs.is_empty() && t.fdb.is_empty());
}

#[test]
fn host_gw_peer_behind_a_gateway_is_reported_not_routed() {
    let gw = |ip: Ipv4Addr| {
        (ip == "192.168.50.13".parse::<Ipv4Addr>().unwrap())
            .then(|| "192.168.50.1".parse().unwrap())
    };
    let (t, p) = desired(&conf(Backend::HostGw), &local(), &[node(2), node(3)], &gw);
    assert_eq!(t.routes.len(), 1);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].node(), "n3");
    assert_eq!(p[0].reason(), "HostGwPeerNotOnLink");
    assert!(p[0].to_string().contains("n3") && p[0].to_string().contains("vxlan"));
}

#[test]
fn vxlan_programs_neigh_fdb_and_onlink_route_per_peer_in_flannels_order() {
    let (t, _) = desired(
        &conf(Backend::Vxlan),
        &local(),
        &[node(1), node(2)],
        &onlink,
    );
    let ops = diff(&Tables::default(), &t);
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "neigh add 10.42.2.0 lladdr 0a:58:00:00:00:02 dev flannel.1",
            "fdb add 0a:58:00:00:00:02 dst 192.168.50.12 dev flannel.1",
            "route add 10.42.2.0/24 via 10.42.2.0 dev flannel.1 onlink",
        ]
    );
}

#[test]
fn vxlan_peer_without_vtep_mac_waits() {
    let mut n = node(2);
    n.vtep_mac = None;
    let (t, p) = desired(&conf(Backend::Vxlan), &local(), &[n], &onlink);
    assert!(t.routes.is_empty());
    assert_eq!(p[0].reason(), "NoVtepMAC");
}

#[test]
fn pod_cidr_outside_the_cluster_or_overlapping_is_refused() {
    let mut out = node(2);
    out.subnet = Some("10.99.2.0/24".parse().unwrap());
    let mut dup = node(3);
    dup.subnet = Some("10.42.1.0/24".parse().unwrap());
    let (t, p) = desired(&conf(Backend::HostGw), &local(), &[out, dup], &onlink);
    assert!(t.routes.is_empty());
    let reasons: Vec<_> = p.iter().map(Problem::reason).collect();
    assert_eq!(reasons, ["PodCIDROutsideClusterCIDR", "PodCIDROverlap"]);
}

#[test]
fn node_without_pod_cidr_or_address_gets_nothing() {
    let mut a = node(2);
    a.subnet = None;
    let mut b = node(3);
    b.ip = None;
    let (t, p) = desired(&conf(Backend::HostGw), &local(), &[a, b], &onlink);
    assert!(t.routes.is_empty());
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].reason(), "NoNodeAddress");
}

#[test]
fn owned_routes_leave_everything_else_alone() {
    let r = |dst: &str, via: Option<&str>, dev: &str| Route {
        dst: dst.parse().unwrap(),
        via: via.map(|v| v.parse().unwrap()),
        dev: dev.into(),
        onlink: false,
    };
    let all = vec![
        r("0.0.0.0/0", Some("192.168.50.1"), "eth0"),
        r("192.168.50.0/24", None, "eth0"),
        r("10.42.1.0/24", None, "cni0"),
        r("10.42.2.0/24", Some("192.168.50.12"), "eth0"),
        r("10.42.3.0/24", Some("10.42.3.0"), "flannel.1"),
        r("10.43.0.0/16", Some("192.168.50.1"), "eth0"),
    ];
    let owned = owned_routes(&conf(Backend::Vxlan), &local(), &all);
    let dsts: Vec<String> = owned.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(dsts, ["10.42.2.0/24", "10.42.3.0/24"]);
}

#[test]
fn diff_of_equal_tables_is_empty_and_a_moved_peer_is_replaced_not_deleted() {
    let (t, _) = desired(
        &conf(Backend::Vxlan),
        &local(),
        &[node(2), node(3)],
        &onlink,
    );
    assert!(diff(&t, &t).is_empty());
    let mut moved = node(3);
    moved.ip = Some("192.168.50.99".parse().unwrap());
    let (t2, _) = desired(&conf(Backend::Vxlan), &local(), &[node(2), moved], &onlink);
    let ops = diff(&t, &t2);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(&ops[0], Op::AddFdb(e) if e.dst.to_string() == "192.168.50.99"));
}

fn fake_node() -> FakeNet {
    FakeNet::node("192.168.50.11", 24, 1500)
}

#[test]
fn setup_creates_flannel_1_with_mtu_1450_and_masquerade() {
    let host = fake_node();
    let nft = Recorder::default();
    let pn = PodNet::setup(
        host.clone(),
        &nft,
        conf(Backend::Vxlan),
        "n1",
        "10.42.1.0/24".parse().unwrap(),
        "192.168.50.11".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(pn.mtu(), 1450);
    let l = host.link("flannel.1").unwrap().unwrap();
    assert_eq!(l.mtu, 1450);
    let v = l.vxlan.unwrap();
    assert_eq!((v.vni, v.port, v.learning), (1, 8472, false));
    assert_eq!(l.addrs, vec!["10.42.1.0/32".parse::<Ipv4Net>().unwrap()]);
    assert!(pn.annotations()["flannel.alpha.coreos.com/backend-data"].contains("VtepMAC"));
    assert_eq!(nft.scripts.lock().unwrap().len(), 1);
    assert!(
        host.state()
            .sysctls
            .contains(&("net.ipv4.ip_forward".into(), "1".into()))
    );
}

#[test]
fn restart_changes_nothing_that_is_right() {
    let host = fake_node();
    let setup = || {
        PodNet::setup(
            host.clone(),
            &Recorder::default(),
            conf(Backend::Vxlan),
            "n1",
            "10.42.1.0/24".parse().unwrap(),
            "192.168.50.11".parse().unwrap(),
        )
        .unwrap()
    };
    let first = setup();
    let mac = first.vtep_mac();
    first.reconcile(&[node(1), node(2), node(3)]).unwrap();
    host.take_log();
    let again = setup();
    let r = again.reconcile(&[node(1), node(2), node(3)]).unwrap();
    assert!(r.applied.is_empty(), "{:?}", r.applied);
    assert_eq!(again.vtep_mac(), mac, "the device was recreated");
    let log = host.take_log();
    assert!(
        log.iter().all(|l| l.starts_with("sysctl")),
        "a restart changed the kernel: {log:?}"
    );
}

#[test]
fn regression_stale_routes_of_a_node_deleted_while_down_are_removed() {
    // flannel#2554: a node deleted while flanneld was down kept its routes forever.
    let host = fake_node();
    let pn = PodNet::setup(
        host.clone(),
        &Recorder::default(),
        conf(Backend::Vxlan),
        "n1",
        "10.42.1.0/24".parse().unwrap(),
        "192.168.50.11".parse().unwrap(),
    )
    .unwrap();
    pn.reconcile(&[node(2), node(3)]).unwrap();
    let r = pn.reconcile(&[node(2)]).unwrap();
    let text: Vec<String> = r.applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "route del 10.42.3.0/24 via 10.42.3.0 dev flannel.1 onlink",
            "fdb del 0a:58:00:00:00:03 dst 192.168.50.13 dev flannel.1",
            "neigh del 10.42.3.0 dev flannel.1",
        ]
    );
    let st = host.state();
    assert_eq!(st.fdb.len(), 1);
    assert_eq!(st.neighs.len(), 1);
}

#[test]
fn switching_to_host_gw_removes_the_tunnel_and_its_routes() {
    let host = fake_node();
    let mk = |b| {
        PodNet::setup(
            host.clone(),
            &Recorder::default(),
            conf(b),
            "n1",
            "10.42.1.0/24".parse().unwrap(),
            "192.168.50.11".parse().unwrap(),
        )
        .unwrap()
    };
    mk(Backend::Vxlan).reconcile(&[node(2)]).unwrap();
    let hg = mk(Backend::HostGw);
    assert!(host.link("flannel.1").unwrap().is_none());
    hg.reconcile(&[node(2)]).unwrap();
    let routes: Vec<Route> = host.routes().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dev == "eth0" && r.dst.to_string() == "10.42.2.0/24")
    );
    assert!(!routes.iter().any(|r| r.dev == "flannel.1"));
}

#[test]
fn a_refused_operation_is_reported_and_retried() {
    let host = fake_node();
    let pn = PodNet::setup(
        host.clone(),
        &Recorder::default(),
        conf(Backend::HostGw),
        "n1",
        "10.42.1.0/24".parse().unwrap(),
        "192.168.50.11".parse().unwrap(),
    )
    .unwrap();
    host.state().fail_on = Some("10.42.3.0".into());
    let r = pn.reconcile(&[node(2), node(3)]).unwrap();
    assert_eq!(r.applied.len(), 1);
    assert_eq!(r.failed.len(), 1);
    host.state().fail_on = None;
    let r = pn.reconcile(&[node(2), node(3)]).unwrap();
    assert_eq!(r.applied.len(), 1);
    assert!(r.failed.is_empty());
}

#[test]
fn missing_underlay_is_a_clear_error() {
    let e = PodNet::setup(
        fake_node(),
        &Recorder::default(),
        conf(Backend::Vxlan),
        "n1",
        "10.42.1.0/24".parse().unwrap(),
        "192.168.50.99".parse().unwrap(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("192.168.50.99"), "{e}");
}

proptest! {
    /// Whatever nodes come and go, reconciling leaves exactly the desired tables.
    #[test]
    fn reconcile_converges(steps in proptest::collection::vec(proptest::collection::btree_set(2u8..8, 0..6), 1..6), hg in any::<bool>()) {
        let b = if hg { Backend::HostGw } else { Backend::Vxlan };
        let host = fake_node();
        let pn = PodNet::setup(host.clone(), &Recorder::default(), conf(b), "n1", "10.42.1.0/24".parse().unwrap(), "192.168.50.11".parse().unwrap()).unwrap();
        for set in steps {
            let nodes: Vec<NodeNet> = set.iter().map(|i| node(*i)).collect();
            pn.reconcile(&nodes).unwrap();
            let (want, _) = desired(&conf(b), pn.local(), &nodes, &onlink);
            prop_assert_eq!(pn.observed().unwrap(), want);
            prop_assert!(pn.reconcile(&nodes).unwrap().applied.is_empty());
        }
    }
}
