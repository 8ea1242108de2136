//! The collections the control loops share, each a [`moat_client::Reflector`] fed by one
//! list+watch. Loops that run often on large collections read these instead of listing over
//! HTTP every pass.

use std::sync::Arc;
use std::sync::mpsc;

use crate::Api;

pub(crate) use moat_client::Reflector as Cache;

#[derive(Clone)]
pub(crate) struct Caches {
    pub pods: Arc<Cache>,
    pub nodes: Arc<Cache>,
}

impl Caches {
    pub(crate) fn synced(&self) -> bool {
        self.pods.synced() && self.nodes.synced()
    }

    /// The cache that holds the collection at `path` (a cluster-wide list path), if any.
    pub(crate) fn for_path(&self, path: &str) -> Option<&Arc<Cache>> {
        match path {
            "/api/v1/pods" => Some(&self.pods),
            "/api/v1/nodes" => Some(&self.nodes),
            _ => None,
        }
    }
}

/// Starts the list+watch thread for `path`; every change wakes `wake`.
pub(crate) fn spawn(c: Api, path: &'static str, wake: Vec<mpsc::Sender<()>>) -> Arc<Cache> {
    Cache::spawn(Arc::new(c.client.clone()), path, wake)
}
