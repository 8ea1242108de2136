//! The pod network across nodes, flannel's job done inside the node agent (as k3s embeds
//! flannel): every node has a subnet of the cluster CIDR (`spec.podCIDR`, given by the server's
//! node IPAM), pods sit on the bridge `cni0` with gateway `.1`, and nodes reach each other's
//! subnets by one of two backends:
//!
//! - `host-gw`: a route to each peer's subnet via the peer's node address. It needs every node
//!   on one L2 segment; a peer reached through a gateway is reported, never routed into a
//!   black hole.
//! - `vxlan`: one device `flannel.1` (VNI 1, UDP 8472, learning off, MTU = underlay − 50) and,
//!   per peer, a permanent neighbour (its subnet's `.0` → its VTEP MAC), an FDB entry (its VTEP
//!   MAC → its node address) and an `onlink` route via its `.0`, in that order, as flannel
//!   programs them. Each node publishes its VTEP MAC in flannel's Node annotations.
//!
//! Masquerade follows flannel's ip-masq rules (pod ↔ pod never, pod → outside to the node's
//! address), in an nft table of its own.
//!
//! Layout: [`conf`] (the cluster's choice of CIDR and backend, in flannel's `net-conf.json`),
//! [`plan`] (sans-IO: Node list → desired tables; diff against the kernel's), [`render`]
//! (`subnet.env`, nft, CNI conflist, annotations), [`driver`] (the IO edge over
//! `moat_hostnet::HostNet` and `NftApply`). Unlike flannel, which never reconciles at start
//! (flannel#2554), a start reads what the kernel has and removes what the Node list does not
//! justify, while leaving every entry that is already right untouched.
//!
//! Must not: touch routes outside the cluster CIDR, or know about pods (the pod loop never
//! imports this crate; it only reads the CNI config this crate renders).

pub mod conf;
pub mod driver;
pub mod plan;
pub mod render;

pub use conf::{Backend, ConfError, NetConf};
pub use driver::{PodNet, PodNetError, Report};
pub use plan::{Local, NodeNet, Problem, Tables};
