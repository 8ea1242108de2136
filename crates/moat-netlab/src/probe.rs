//! Probers: one thread per pod that entered the pod's network namespace (sockets keep the
//! namespace they were created in), serving TCP and UDP listeners on the pod's ports and
//! sending probes from inside it on a small tokio runtime. The lab attaches them to the
//! namespaces it builds; a live-cluster test attaches them to the namespaces of real pods
//! (the agent's `<run dir>/netns/<uid>` files), so the same probes judge both.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_netpol::Proto;
use tokio::sync::{mpsc, oneshot};

use crate::{LabError, LabPod, ProbeOpts};

struct ProbeReq {
    dst: Ipv4Addr,
    port: u16,
    proto: Proto,
    opts: ProbeOpts,
    reply: oneshot::Sender<bool>,
}

struct Worker {
    tx: Option<mpsc::UnboundedSender<ProbeReq>>,
    thread: Option<JoinHandle<()>>,
}

/// The probers of a set of pods, in the order they were added.
#[derive(Default)]
pub struct Probers {
    pods: Vec<LabPod>,
    workers: Vec<Worker>,
}

impl Probers {
    /// Probers for pods whose network namespaces already exist at the given paths; on error
    /// the ones started are stopped.
    pub fn attach(pods: &[(LabPod, &Path)]) -> Result<Probers, LabError> {
        let mut p = Probers::default();
        for (pod, path) in pods {
            p.add(pod, path)?;
        }
        Ok(p)
    }

    /// Enters `netns`, binds the pod's listeners and starts serving probe requests.
    pub fn add(&mut self, pod: &LabPod, netns: &Path) -> Result<(), LabError> {
        let w = spawn_worker(pod, netns)?;
        self.pods.push(pod.clone());
        self.workers.push(w);
        Ok(())
    }

    pub fn pods(&self) -> &[LabPod] {
        &self.pods
    }

    /// Runs the probes in parallel; results in the same order.
    pub fn probe_all(
        &self,
        probes: &[(usize, usize, u16, Proto)],
        opts: ProbeOpts,
    ) -> Result<Vec<bool>, LabError> {
        let mut waits = Vec::with_capacity(probes.len());
        for &(from, to, port, proto) in probes {
            let rx = self.send(from, self.pods[to].ip, port, proto, opts)?;
            waits.push((from, rx));
        }
        waits
            .into_iter()
            .map(|(from, rx)| {
                rx.blocking_recv().map_err(|_| LabError::WorkerGone {
                    pod: self.pods[from].id.clone(),
                })
            })
            .collect()
    }

    pub fn probe(
        &self,
        from: usize,
        to: usize,
        port: u16,
        proto: Proto,
        opts: ProbeOpts,
    ) -> Result<bool, LabError> {
        Ok(self.probe_all(&[(from, to, port, proto)], opts)?[0])
    }

    /// Probes an arbitrary address (e.g. a Service VIP) from pod `from`.
    pub fn probe_addr(
        &self,
        from: usize,
        dst: Ipv4Addr,
        port: u16,
        proto: Proto,
        opts: ProbeOpts,
    ) -> Result<bool, LabError> {
        let rx = self.send(from, dst, port, proto, opts)?;
        rx.blocking_recv().map_err(|_| LabError::WorkerGone {
            pod: self.pods[from].id.clone(),
        })
    }

    /// Probes many addresses from pod `from` at once; results in the same order.
    pub fn probe_addrs(
        &self,
        from: usize,
        targets: &[(Ipv4Addr, u16, Proto)],
        opts: ProbeOpts,
    ) -> Result<Vec<bool>, LabError> {
        let mut waits = Vec::with_capacity(targets.len());
        for &(dst, port, proto) in targets {
            waits.push(self.send(from, dst, port, proto, opts)?);
        }
        waits
            .into_iter()
            .map(|rx| {
                rx.blocking_recv().map_err(|_| LabError::WorkerGone {
                    pod: self.pods[from].id.clone(),
                })
            })
            .collect()
    }

    fn send(
        &self,
        from: usize,
        dst: Ipv4Addr,
        port: u16,
        proto: Proto,
        opts: ProbeOpts,
    ) -> Result<oneshot::Receiver<bool>, LabError> {
        let (reply, rx) = oneshot::channel();
        let gone = || LabError::WorkerGone {
            pod: self.pods[from].id.clone(),
        };
        self.workers[from]
            .tx
            .as_ref()
            .ok_or_else(gone)?
            .send(ProbeReq {
                dst,
                port,
                proto,
                opts,
                reply,
            })
            .map_err(|_| gone())?;
        Ok(rx)
    }

    /// Stops every thread (closing its sockets) and waits for them.
    pub fn stop(&mut self) {
        for w in &mut self.workers {
            w.tx.take();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Probers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn enter_netns(ns: &Path, pod: &str) -> Result<(), LabError> {
    let f = File::open(ns).map_err(|source| LabError::Setns {
        pod: pod.to_string(),
        source,
    })?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Setns {
        pod: pod.to_string(),
        source: std::io::Error::from(e),
    })
}

/// Starts the pod's thread: enter the namespace, bind listeners, then serve probe requests
/// until the sender is dropped. Reports bind errors before returning.
fn spawn_worker(pod: &LabPod, ns: &Path) -> Result<Worker, LabError> {
    let (tx, rx) = mpsc::unbounded_channel::<ProbeReq>();
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), LabError>>();
    let pod = pod.clone();
    let ns = ns.to_path_buf();
    let id = pod.id.clone();
    let thread = std::thread::Builder::new()
        .name(format!("lab-{}", pod.id))
        .spawn(move || worker_main(pod, ns, rx, ready_tx))
        .map_err(|source| LabError::Spawn {
            cmd: "thread".into(),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(LabError::WorkerGone { pod: id }),
    }
}

fn worker_main(
    pod: LabPod,
    ns: std::path::PathBuf,
    mut rx: mpsc::UnboundedReceiver<ProbeReq>,
    ready: std_mpsc::Sender<Result<(), LabError>>,
) {
    if let Err(e) = enter_netns(&ns, &pod.id) {
        let _ = ready.send(Err(e));
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(LabError::Spawn {
                cmd: "tokio runtime".into(),
                source,
            }));
            return;
        }
    };
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for &(port, proto) in &pod.listen {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let bind_err = |source| LabError::Listen {
                pod: pod.id.clone(),
                port,
                proto,
                source,
            };
            match proto {
                Proto::Tcp => match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => tasks.push(tokio::spawn(serve_tcp(l))),
                    Err(e) => {
                        let _ = ready.send(Err(bind_err(e)));
                        return;
                    }
                },
                Proto::Udp => match tokio::net::UdpSocket::bind(addr).await {
                    Ok(s) => tasks.push(tokio::spawn(serve_udp(s))),
                    Err(e) => {
                        let _ = ready.send(Err(bind_err(e)));
                        return;
                    }
                },
                // No SCTP listener here: SCTP is checked by rule generation only.
                Proto::Sctp => {}
            }
        }
        let _ = ready.send(Ok(()));
        while let Some(req) = rx.recv().await {
            tokio::spawn(async move {
                let ok = probe(req.dst, req.port, req.proto, req.opts).await;
                let _ = req.reply.send(ok);
            });
        }
        for t in tasks {
            t.abort();
        }
    });
}

async fn serve_tcp(l: tokio::net::TcpListener) {
    use tokio::io::AsyncWriteExt;
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let _ = s.write_all(b"ok\n").await;
        });
    }
}

async fn serve_udp(s: tokio::net::UdpSocket) {
    let mut buf = [0u8; 64];
    while let Ok((n, from)) = s.recv_from(&mut buf).await {
        let _ = s.send_to(&buf[..n], from).await;
    }
}

async fn probe_once(dst: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> bool {
    let addr = SocketAddr::from((dst, port));
    match proto {
        Proto::Tcp => {
            use tokio::io::AsyncReadExt;
            let attempt = async {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                let mut b = [0u8; 3];
                s.read_exact(&mut b).await.ok()?;
                Some(&b == b"ok\n")
            };
            matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
        }
        Proto::Udp => {
            let attempt = async {
                let s = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await.ok()?;
                s.send_to(b"moat-probe", addr).await.ok()?;
                let mut b = [0u8; 16];
                let (n, _) = s.recv_from(&mut b).await.ok()?;
                Some(&b[..n] == b"moat-probe")
            };
            matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
        }
        Proto::Sctp => false,
    }
}

async fn probe(dst: Ipv4Addr, port: u16, proto: Proto, opts: ProbeOpts) -> bool {
    for _ in 0..opts.attempts.max(1) {
        if probe_once(dst, port, proto, opts.timeout).await {
            return true;
        }
    }
    false
}
