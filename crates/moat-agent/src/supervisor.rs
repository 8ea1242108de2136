//! Runs the agent's loops side by side, each on its own thread: a loop that returns or
//! fails (an error or a panic) is reported and restarted with back-off, never silently dead,
//! and never takes the others down. [`Stop`] ends them all; loops check it between units of
//! work and sleep through it.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("starting a thread")]
    Spawn(#[source] std::io::Error),
    #[error("API")]
    Api(#[from] moat_client::ClientError),
    #[error("the loop failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Asks every loop to stop; cloneable, usable from a signal handler's thread.
#[derive(Clone, Default)]
pub struct Stop(Arc<StopInner>);

#[derive(Default)]
struct StopInner {
    flag: AtomicBool,
    wake: Mutex<Vec<mpsc::Sender<()>>>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn stop(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        for w in self.0.wake.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = w.send(());
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// `tx` hears when stop is asked.
    pub fn register(&self, tx: mpsc::Sender<()>) {
        self.0
            .wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
    }

    /// Sleeps `d`, or less if stop is asked meanwhile.
    pub fn sleep(&self, d: Duration) {
        let (tx, rx) = mpsc::channel();
        self.register(tx);
        if !self.is_stopped() {
            let _ = rx.recv_timeout(d);
        }
    }
}

pub type LoopFn = Box<dyn Fn(&Stop) -> Result<(), LoopError> + Send + Sync>;

/// Restart back-off: 1 s doubling to 30 s; reset after a loop ran a minute.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The loops and how often each was restarted.
#[derive(Default)]
pub struct Supervisor {
    loops: Vec<(String, LoopFn)>,
    restarts: Arc<Mutex<BTreeMap<String, Arc<AtomicU32>>>>,
}

/// How many times each loop has been restarted, readable while they run.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<String, Arc<AtomicU32>>>>);

impl Health {
    pub fn restarts(&self, name: &str) -> u32 {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(name).map(|c| c.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
}

impl Supervisor {
    pub fn add(&mut self, name: &str, f: LoopFn) {
        self.loops.push((name.to_string(), f));
    }

    pub fn names(&self) -> Vec<String> {
        self.loops.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn health(&self) -> Health {
        Health(self.restarts.clone())
    }

    /// Runs every loop until `stop`; returns when all have ended.
    pub fn run(self, stop: &Stop) {
        let mut threads = Vec::new();
        for (name, f) in self.loops {
            let counter = Arc::new(AtomicU32::new(0));
            if let Ok(mut m) = self.restarts.lock() {
                m.insert(name.clone(), counter.clone());
            }
            let stop = stop.clone();
            let n = name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("loop-{name}"))
                .spawn(move || supervise(&n, &f, &stop, &counter));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!(loop_name = %name, error = %e, "starting a loop"),
            }
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

fn supervise(name: &str, f: &LoopFn, stop: &Stop, restarts: &AtomicU32) {
    let mut backoff = BACKOFF_FIRST;
    while !stop.is_stopped() {
        let started = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(stop)));
        if stop.is_stopped() {
            break;
        }
        match r {
            Ok(Ok(())) => tracing::error!(loop_name = name, "loop ended by itself; restarting"),
            Ok(Err(e)) => {
                tracing::error!(loop_name = name, error = %crate::node::chain(&e), "loop failed; restarting")
            }
            Err(_) => tracing::error!(loop_name = name, "loop panicked; restarting"),
        }
        restarts.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = BACKOFF_FIRST;
        }
        stop.sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_loop_is_restarted_and_never_stops_the_others() {
        let mut s = Supervisor::default();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        s.add(
            "flaky",
            Box::new(move |stop: &Stop| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    panic!("first run panics");
                }
                if n == 1 {
                    return Err(LoopError::Failed("second run fails".into()));
                }
                while !stop.is_stopped() {
                    stop.sleep(Duration::from_millis(10));
                }
                Ok(())
            }),
        );
        let ticks = Arc::new(AtomicU32::new(0));
        let t = ticks.clone();
        s.add(
            "steady",
            Box::new(move |stop: &Stop| {
                while !stop.is_stopped() {
                    t.fetch_add(1, Ordering::SeqCst);
                    stop.sleep(Duration::from_millis(10));
                }
                Ok(())
            }),
        );
        let health = s.health();
        let stop = Stop::new();
        let st = stop.clone();
        let h = std::thread::spawn(move || s.run(&st));
        // 1 s then 2 s of back-off before the third run.
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "restarted after a panic and an error"
        );
        assert_eq!(health.restarts("flaky"), 2);
        assert_eq!(health.restarts("steady"), 0);
        let before = ticks.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            ticks.load(Ordering::SeqCst) > before,
            "the other loop kept running"
        );
        stop.stop();
        h.join().unwrap();
    }
}
