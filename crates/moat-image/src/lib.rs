//! moat's image store: content-addressed blobs, unpacked layers shared across images, OCI and
//! Docker archive import, registry pull, and per-container overlay rootfs.

pub mod oci;
pub mod policy;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use policy::{PullDecision, PullPolicy, UnsupportedPullPolicy, decide, default_policy};
pub use reference::{Digest, RefError, Reference};
pub use rootfs::{Mounter, RealMounter, RecordingMounter};
pub use store::{ImageRecord, Store, StoreError};
pub mod registry;
