//! The etcd v3 backend (`moat server --datastore-endpoint http://127.0.0.1:2379`).
//!
//! The `Store` contract is etcd's own, so the mapping is direct: a revision is etcd's
//! revision (resourceVersion = `mod_revision`), creates and compare-and-swap writes are
//! transactions comparing `create_revision` / `mod_revision`, lists are ranges at a
//! revision, watches start at `after + 1` with previous values and progress notifications.
//! Two details etcd leaves to the client:
//! - a watch from a compacted revision must fail at once (the contract), so `watch` first
//!   reads the prefix at `after` and maps etcd's "compacted" error;
//! - etcd does not report its compaction point, so `oldest_revision` asks a watch from
//!   revision 1, which etcd cancels with the compaction revision if history was compacted.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;

use crate::{KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchEvent};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

fn backend(op: &'static str, e: etcd_client::Error) -> StoreError {
    StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

/// Maps etcd's revision errors (carried as gRPC status messages) to the contract's.
fn at_revision(op: &'static str, requested: Revision, e: etcd_client::Error) -> StoreError {
    let msg = e.to_string();
    if msg.contains("required revision has been compacted") {
        StoreError::Compacted {
            requested,
            compacted: requested,
        }
    } else if msg.contains("required revision is a future revision") {
        StoreError::FutureRevision {
            requested,
            current: requested - 1,
        }
    } else {
        backend(op, e)
    }
}

fn kv(k: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: k.value().to_vec(),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

impl EtcdStore {
    /// Connects to a comma-separated list of endpoints (`http://host:port`).
    pub async fn connect(endpoints: &str) -> Result<EtcdStore, StoreError> {
        let eps: Vec<&str> = endpoints.split(',').map(str::trim).collect();
        // No per-request timeout: it would also cut long-lived watch streams.
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        let client = Client::connect(eps, Some(opts))
            .await
            .map_err(|e| backend("connect", e))?;
        let s = EtcdStore { client };
        // Fail at startup, not on the first request, when nothing answers.
        s.c()
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| backend("connect", e))?;
        Ok(s)
    }

    fn c(&self) -> Client {
        self.client.clone()
    }

    /// The current value of `key` inside a failed transaction's `or_else` get.
    fn txn_get(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(kv),
            _ => None,
        })
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .c()
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| backend("read revision", e))?;
        Ok(header_rev(r.header()))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .c()
            .get(key, None)
            .await
            .map_err(|e| backend("get", e))?;
        Ok(r.kvs().first().map(kv))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        // Read in pages at one revision: a single range over many objects would exceed
        // gRPC's 4 MiB message limit, and paging at a fixed revision is still one snapshot.
        const PAGE: usize = 500;
        let mut items: Vec<KeyValue> = Vec::new();
        let mut at = opts.at;
        let mut after = opts.start_after.clone();
        loop {
            let want = if opts.limit > 0 {
                (opts.limit - items.len()).min(PAGE)
            } else {
                PAGE
            };
            let start = match &after {
                // The smallest key strictly greater than `after`.
                Some(a) => format!("{a}\0"),
                None => prefix.to_string(),
            };
            let mut o = GetOptions::new()
                .with_range(prefix_end(prefix))
                .with_limit(want as i64);
            if at > 0 {
                o = o.with_revision(at);
            }
            let r = self
                .c()
                .get(start, Some(o))
                .await
                .map_err(|e| at_revision("list", at, e))?;
            if at == 0 {
                at = header_rev(r.header());
            }
            let page: Vec<KeyValue> = r.kvs().iter().map(kv).collect();
            after = page.last().map(|k| k.key.clone()).or(after);
            items.extend(page);
            let full = opts.limit > 0 && items.len() >= opts.limit;
            if !r.more() || full {
                return Ok(ListResult {
                    items,
                    revision: at,
                    more: r.more(),
                });
            }
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let r = self.c().txn(txn).await.map_err(|e| backend("create", e))?;
        if !r.succeeded() {
            return Err(StoreError::AlreadyExists { key: key.into() });
        }
        let rev = header_rev(r.header());
        Ok(KeyValue {
            key: key.into(),
            value,
            create_revision: rev,
            mod_revision: rev,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([
                TxnOp::put(key, value.clone(), None),
                TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
            ])
            .or_else([TxnOp::get(key, None)]);
        let r = self.c().txn(txn).await.map_err(|e| backend("update", e))?;
        if !r.succeeded() {
            return match Self::txn_get(&r) {
                Some(cur) => Err(StoreError::Conflict {
                    key: key.into(),
                    expected,
                    actual: cur.mod_revision,
                }),
                None => Err(StoreError::NotFound { key: key.into() }),
            };
        }
        let rev = header_rev(r.header());
        let create_revision = Self::txn_get(&r).map(|k| k.create_revision).unwrap_or(rev);
        Ok(KeyValue {
            key: key.into(),
            value,
            create_revision,
            mod_revision: rev,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let cmp = match expected {
            Some(e) => Compare::mod_revision(key, CompareOp::Equal, e),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let r = self.c().txn(txn).await.map_err(|e| backend("delete", e))?;
        if !r.succeeded() {
            return match (Self::txn_get(&r), expected) {
                (Some(cur), Some(e)) => Err(StoreError::Conflict {
                    key: key.into(),
                    expected: e,
                    actual: cur.mod_revision,
                }),
                _ => Err(StoreError::NotFound { key: key.into() }),
            };
        }
        let prev = r.op_responses().into_iter().find_map(|o| match o {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().map(kv),
            _ => None,
        });
        let prev = prev.ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        Ok((prev, header_rev(r.header())))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<crate::WatchStream, StoreError> {
        let mut opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_prev_key()
            .with_progress_notify();
        if after > 0 {
            // Reading at `after` fails exactly when history before it is gone.
            self.c()
                .get(
                    prefix,
                    Some(
                        GetOptions::new()
                            .with_range(prefix_end(prefix))
                            .with_revision(after)
                            .with_count_only(),
                    ),
                )
                .await
                .map_err(|e| at_revision("watch", after, e))?;
            opts = opts.with_start_revision(after + 1);
        }
        let stream = self
            .c()
            .watch(prefix, Some(opts))
            .await
            .map_err(|e| backend("watch", e))?;
        // The stream owns the request sender: dropping the WatchStream ends the watch.
        let events = futures::stream::unfold(Some(stream), |st| async move {
            let mut s = st?;
            loop {
                match s.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            let c = resp.compact_revision();
                            let err = StoreError::Compacted {
                                requested: c,
                                compacted: c,
                            };
                            return Some((vec![Err(err)], None));
                        }
                        if resp.canceled() {
                            return Some((vec![Err(StoreError::Closed)], None));
                        }
                        if resp.events().is_empty() {
                            if resp.created() {
                                continue;
                            }
                            let revision = header_rev(resp.header());
                            return Some((vec![Ok(WatchEvent::Progress { revision })], Some(s)));
                        }
                        let out = resp
                            .events()
                            .iter()
                            .filter_map(|e| {
                                let k = e.kv()?;
                                Some(Ok(match e.event_type() {
                                    EventType::Put => WatchEvent::Put {
                                        kv: kv(k),
                                        prev: e.prev_kv().map(kv),
                                    },
                                    EventType::Delete => WatchEvent::Delete {
                                        prev: e.prev_kv().map(kv).unwrap_or_else(|| kv(k)),
                                        revision: k.mod_revision(),
                                    },
                                }))
                            })
                            .collect();
                        return Some((out, Some(s)));
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((vec![Err(backend("watch", e))], None)),
                }
            }
        })
        .flat_map(futures::stream::iter);
        Ok(events.boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.c()
            .compact(revision, None)
            .await
            .map_err(|e| at_revision("compact", revision, e))?;
        Ok(())
    }

    async fn oldest_revision(&self) -> Result<Revision, StoreError> {
        let mut w = self
            .c()
            .watch(
                "/moat-meta/compaction-probe",
                Some(WatchOptions::new().with_start_revision(1)),
            )
            .await
            .map_err(|e| backend("probe compaction", e))?;
        // A compacted start is answered at once (after the "created" response); an intact
        // history sends nothing more.
        let probe = async {
            loop {
                match w.message().await {
                    Ok(Some(r)) if r.compact_revision() > 0 => {
                        return Ok(r.compact_revision() + 1);
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(1),
                    Err(e) => return Err(backend("probe compaction", e)),
                }
            }
        };
        match tokio::time::timeout(Duration::from_millis(500), probe).await {
            Ok(r) => r,
            Err(_) => Ok(1),
        }
    }
}

/// A single-member etcd on loopback ports of its own, with its data in a directory the
/// caller owns; killed on drop. For tests and benchmarks (Debian's `etcd-server`).
pub struct LocalEtcd {
    child: std::process::Child,
    pub url: String,
}

impl LocalEtcd {
    pub fn start(data_dir: &std::path::Path) -> std::io::Result<LocalEtcd> {
        let port = || -> std::io::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (client, peer) = (port()?, port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = std::process::Command::new("etcd")
            .args(["--name", "moat-local", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("moat-local={peer_url}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let e = LocalEtcd { child, url };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(std::io::Error::other("etcd did not start within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(e)
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
