//! The nftables edge shared by moat's network crates (netpol, proxy, podnet).
//!
//! Each crate computes its ruleset sans-IO and hands one `nft -f` script to an
//! [`NftApply`]: the real [`Nft`] (runs `nft -f -`, optionally inside a named network
//! namespace) or the [`Recorder`] fake. nft applies a script as one transaction, so a
//! rejected script leaves the kernel's previous ruleset in force.
//!
//! [`ident`] builds nft identifiers (chain, set and map names) from arbitrary text:
//! the output only ever contains `[A-Za-z0-9_-]`, so no user string can inject syntax,
//! and long names keep a readable prefix plus a hash suffix so distinct inputs stay
//! distinct (as kube-proxy does for its per-service chain names).

pub mod apply;
pub mod ident;

pub use apply::{ApplyError, Nft, NftApply, Recorder};
pub use ident::{hashed_ident, ident, is_safe_ident};
