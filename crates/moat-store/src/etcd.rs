//! The etcd v3 backend (`moat server --datastore-endpoint http://127.0.0.1:2379`).
//!
//! The `Store` contract is etcd's own, so the mapping is direct: a revision is etcd's
//! revision (resourceVersion = `mod_revision`), creates and compare-and-swap writes are
//! transactions comparing `create_revision` / `mod_revision`, lists are ranges at a
//! revision, watches start at `after + 1` with previous values and progress notifications.
//! Details etcd leaves to the client:
//! - a watch from a compacted revision must fail at once (the contract), so `watch` first
//!   reads the prefix at `after` and maps etcd's "compacted" error;
//! - etcd does not report its compaction point, and a marker key written by `compact` would
//!   miss compactions done by others (etcdctl, `--auto-compaction-*`) and add revisions
//!   nobody asked for. So `oldest_revision` finds it by bisection: a read at revision `r`
//!   fails exactly when `r` is below the compaction point;
//! - etcd keeps the compaction revision itself readable; the contract calls it gone, so
//!   `oldest_revision` reports compaction point + 1 (reads at the point still succeed);
//! - progress notifications come only from etcd's timer (synced watchers, same channel as
//!   events, so never ahead of an undelivered event). Explicit progress requests are not
//!   used: etcd 3.4.23 (Debian) answers them from the store's current revision even while
//!   the watcher is still replaying history (etcd-io/etcd#15220), which would turn into a
//!   bookmark past events the client has not seen. The timer is etcd's
//!   `--experimental-watch-progress-notify-interval` (10 min by default; [`LocalEtcd`] uses
//!   5 s).

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
    /// Deadline of each request (not of watch streams, which live on).
    timeout: Duration,
}

/// How long one request may go unanswered by default; kube-apiserver's request timeout is
/// 60 s, so an unanswering etcd surfaces as an error before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn backend(op: &'static str, e: etcd_client::Error) -> StoreError {
    StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

fn status_message(e: &etcd_client::Error) -> Option<&str> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.message()),
        _ => None,
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    status_message(e).is_some_and(|m| m.contains("required revision has been compacted"))
}

fn is_future(e: &etcd_client::Error) -> bool {
    status_message(e).is_some_and(|m| m.contains("required revision is a future revision"))
}

#[derive(Debug, thiserror::Error)]
#[error("etcd did not answer within {0:?}")]
struct TimedOut(Duration);

/// A watch etcd ended on its own (for a reason other than compaction).
#[derive(Debug, thiserror::Error)]
#[error("etcd canceled the watch: {0}")]
struct Canceled(String);
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

/// Where a page of a prefix list starts: the smallest key under `prefix` strictly greater
/// than `after` (a `start_after` outside the prefix must not widen the range).
fn page_start(prefix: &str, after: Option<&str>) -> Vec<u8> {
    match after {
        Some(a) => {
            let mut next = a.as_bytes().to_vec();
            next.push(0);
            next.max(prefix.as_bytes().to_vec())
        }
        None => prefix.as_bytes().to_vec(),
    }
}

/// Tracks what a watch has delivered, so progress never claims less than what was sent
/// (etcd's timer can report a revision just below an event it already sent, #15220) —
/// nor less than the revision the watch started after.
#[derive(Debug, Default)]
struct Delivered {
    last: Revision,
}

impl Delivered {
    /// The events of one etcd watch response, in order; None for responses that say nothing.
    fn map(&mut self, resp: &etcd_client::WatchResponse) -> Option<Vec<WatchEvent>> {
        if resp.events().is_empty() {
            if resp.created() {
                return None;
            }
            // Repeats are kept: a consumer may act only on a later one (the API server
            // sends a bookmark after enough silence).
            let revision = header_rev(resp.header()).max(self.last);
            self.last = revision;
            return Some(vec![WatchEvent::Progress { revision }]);
        }
        let out: Vec<WatchEvent> = resp
            .events()
            .iter()
            .filter_map(|e| {
                let k = e.kv()?;
                Some(match e.event_type() {
                    EventType::Put => WatchEvent::Put {
                        kv: kv(k),
                        prev: e.prev_kv().map(kv),
                    },
                    // etcd reads prev_kv at revision - 1, which compaction never removes
                    // for a live event; the key-only fallback keeps the event if it did.
                    EventType::Delete => WatchEvent::Delete {
                        prev: e.prev_kv().map(kv).unwrap_or_else(|| kv(k)),
                        revision: k.mod_revision(),
                    },
                })
            })
            .collect();
        if let Some(r) = out.last().map(WatchEvent::revision) {
            self.last = self.last.max(r);
        }
        Some(out)
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

impl EtcdStore {
    /// Connects to a comma-separated list of endpoints (`http://host:port`).
    pub async fn connect(endpoints: &str) -> Result<EtcdStore, StoreError> {
        let eps: Vec<&str> = endpoints.split(',').map(str::trim).collect();
        // No tonic-level request timeout: it would also cut long-lived watch streams;
        // `call` puts a deadline on each request instead.
        // HTTP/2 keep-alive: a watch on a connection to an etcd that stopped answering
        // (hung, partitioned) would otherwise wait forever; with it the stream fails and
        // the API server's clients re-watch. etcd refuses pings more often than every 5 s.
        // Requiring a leader makes a member cut off from its cluster refuse requests and
        // cancel watches instead of serving stale data (as kube-apiserver does).
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(15), Duration::from_secs(10))
            .with_require_leader(true);
        let client = Client::connect(eps, Some(opts))
            .await
            .map_err(|e| backend("connect", e))?;
        let s = EtcdStore {
            client,
            timeout: REQUEST_TIMEOUT,
        };
        // Fail at startup, not on the first request, when nothing answers.
        s.call(
            "connect",
            s.c().get("\0", Some(GetOptions::new().with_count_only())),
        )
        .await?
        .map_err(|e| backend("connect", e))?;
        Ok(s)
    }

    /// Sets the deadline of each request (default 30 s); watch streams have none.
    pub fn with_request_timeout(mut self, timeout: Duration) -> EtcdStore {
        self.timeout = timeout;
        self
    }

    /// One request under the store's deadline; etcd's own answer (or error) stays inside
    /// for the caller to map.
    async fn call<T>(
        &self,
        op: &'static str,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<Result<T, etcd_client::Error>, StoreError> {
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| StoreError::Backend {
                op,
                source: Box::new(TimedOut(self.timeout)),
            })
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

    /// Whether the store can still be read as of `rev`: Ok(false) below the compaction
    /// point, Ok(true) otherwise (a future `rev` is an error).
    async fn readable_at(&self, rev: Revision) -> Result<bool, StoreError> {
        let op = "find the compaction point";
        let o = GetOptions::new().with_revision(rev).with_count_only();
        match self.call(op, self.c().get("\0", Some(o))).await? {
            Ok(_) => Ok(true),
            Err(e) if is_compacted(&e) => Ok(false),
            Err(e) => Err(backend(op, e)),
        }
    }

    /// etcd's compaction point (0 if nothing was compacted): the smallest readable revision.
    async fn compaction_point(&self) -> Result<Revision, StoreError> {
        if self.readable_at(1).await? {
            return Ok(0);
        }
        // Invariant: `lo` unreadable, `hi` readable (the current revision always is).
        let (mut lo, mut hi) = (1, self.current_revision().await?);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            // A compaction racing the search cannot make `mid` future; any error is real.
            if self.readable_at(mid).await? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(hi)
    }

    /// Maps etcd's revision errors (gRPC status messages without the numbers) to the
    /// contract's, asking etcd for the numbers.
    async fn at_revision(
        &self,
        op: &'static str,
        requested: Revision,
        e: etcd_client::Error,
    ) -> StoreError {
        if is_compacted(&e) {
            let compacted = self.compaction_point().await.unwrap_or(requested);
            StoreError::Compacted {
                requested,
                compacted,
            }
        } else if is_future(&e) {
            let current = self.current_revision().await.unwrap_or(requested - 1);
            StoreError::FutureRevision { requested, current }
        } else {
            backend(op, e)
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let op = "read revision";
        let r = self
            .call(
                op,
                self.c()
                    .get("\0", Some(GetOptions::new().with_count_only())),
            )
            .await?
            .map_err(|e| backend(op, e))?;
        Ok(header_rev(r.header()))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .call("get", self.c().get(key, None))
            .await?
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
            let mut o = GetOptions::new()
                .with_range(prefix_end(prefix))
                .with_limit(want as i64);
            if at > 0 {
                o = o.with_revision(at);
            }
            let mut c = self.c();
            let page = c.get(page_start(prefix, after.as_deref()), Some(o));
            let r = match self.call("list", page).await? {
                Ok(r) => r,
                Err(e) => return Err(self.at_revision("list", at, e).await),
            };
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
            .and_then([TxnOp::put(key, value.clone(), None)]);
        let r = self
            .call("create", self.c().txn(txn))
            .await?
            .map_err(|e| backend("create", e))?;
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
        // etcd compares a missing key's mod_revision as 0: without the existence check an
        // update expecting 0 would create the key.
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Greater, 0),
                Compare::mod_revision(key, CompareOp::Equal, expected),
            ])
            .and_then([
                TxnOp::put(key, value.clone(), None),
                TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
            ])
            .or_else([TxnOp::get(key, None)]);
        let r = self
            .call("update", self.c().txn(txn))
            .await?
            .map_err(|e| backend("update", e))?;
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
        let mut cmp = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(e) = expected {
            cmp.push(Compare::mod_revision(key, CompareOp::Equal, e));
        }
        let txn = Txn::new()
            .when(cmp)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let r = self
            .call("delete", self.c().txn(txn))
            .await?
            .map_err(|e| backend("delete", e))?;
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
        // Fragments: etcd batches up to 1,000 revisions into one response, which (with
        // previous values) outgrows gRPC's 4 MiB message limit; fragmented, each response
        // stays near etcd's request size limit. Events are used one by one, so fragments
        // need no reassembly.
        let mut opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_prev_key()
            .with_progress_notify()
            .with_fragment();
        let mut delivered = Delivered::default();
        if after > 0 {
            // Reading at `after` fails exactly when history before it is gone.
            let probe = GetOptions::new()
                .with_range(prefix_end(prefix))
                .with_revision(after)
                .with_count_only();
            if let Err(e) = self
                .call("watch", self.c().get(prefix, Some(probe)))
                .await?
            {
                return Err(self.at_revision("watch", after, e).await);
            }
            opts = opts.with_start_revision(after + 1);
            delivered.last = after;
        }
        // The deadline covers starting the watch, not the stream.
        let stream = self
            .call("watch", self.c().watch(prefix, Some(opts)))
            .await?
            .map_err(|e| backend("watch", e))?;
        // The stream owns the request sender: dropping the WatchStream ends the watch.
        let events = futures::stream::unfold(Some((stream, delivered)), |st| async move {
            let (mut s, mut delivered) = st?;
            loop {
                match s.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            // Raced a compaction between the probe and the watch's start.
                            let c = resp.compact_revision();
                            let err = StoreError::Compacted {
                                requested: delivered.last,
                                compacted: c,
                            };
                            return Some((vec![Err(err)], None));
                        }
                        if resp.canceled() {
                            let err = StoreError::Backend {
                                op: "watch",
                                source: Box::new(Canceled(resp.cancel_reason().to_string())),
                            };
                            return Some((vec![Err(err)], None));
                        }
                        if let Some(evs) = delivered.map(&resp) {
                            return Some((evs.into_iter().map(Ok).collect(), Some((s, delivered))));
                        }
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
        if let Err(e) = self
            .call("compact", self.c().compact(revision, None))
            .await?
        {
            return Err(self.at_revision("compact", revision, e).await);
        }
        Ok(())
    }

    async fn oldest_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.compaction_point().await? + 1)
    }
}

/// A single-member etcd on loopback ports of its own, with its data in a directory the
/// caller owns; killed on drop. For tests and benchmarks (Debian's `etcd-server`).
pub struct LocalEtcd {
    child: std::process::Child,
    pub url: String,
    data_dir: std::path::PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl LocalEtcd {
    pub fn start(data_dir: &std::path::Path) -> std::io::Result<LocalEtcd> {
        let port = || -> std::io::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (client_port, peer_port) = (port()?, port()?);
        let child = Self::spawn(data_dir, client_port, peer_port)?;
        Ok(LocalEtcd {
            child,
            url: format!("http://127.0.0.1:{client_port}"),
            data_dir: data_dir.to_path_buf(),
            client_port,
            peer_port,
        })
    }

    /// Kills etcd (SIGKILL) and starts it again on the same ports and data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.child = Self::spawn(&self.data_dir, self.client_port, self.peer_port)?;
        Ok(())
    }

    /// Freezes etcd (SIGSTOP): connections stay open and nothing answers, like a hung or
    /// partitioned etcd. `resume` thaws it.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal("-STOP")
    }

    pub fn resume(&self) -> std::io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> std::io::Result<()> {
        let st = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()?;
        if st.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {sig} etcd: {st}")))
        }
    }

    /// Kills etcd (SIGKILL) and waits for it; `restart` brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn spawn(
        data_dir: &std::path::Path,
        client: u16,
        peer: u16,
    ) -> std::io::Result<std::process::Child> {
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child = std::process::Command::new("etcd")
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
            // Progress notifications are what watch bookmarks are made of; etcd's default
            // of 10 min would leave them out of every test.
            .args(["--experimental-watch-progress-notify-interval", "5s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!("etcd exited: {status}")));
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other("etcd did not start within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::{page_start, prefix_end};

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn pages_start_inside_the_prefix_after_the_given_key() {
        assert_eq!(page_start("/p/", None), b"/p/".to_vec());
        assert_eq!(page_start("/p/", Some("/p/a")), b"/p/a\0".to_vec());
        assert_eq!(
            page_start("/p/", Some("/a")),
            b"/p/".to_vec(),
            "a key before the prefix does not widen the range"
        );
    }
}
