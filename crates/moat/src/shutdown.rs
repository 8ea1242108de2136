//! Graceful termination: the first SIGTERM, SIGINT or SIGHUP runs a (non-blocking) stop
//! action; a second one ends the process at once.

use std::sync::Mutex;

use anyhow::Context;

pub fn on_signal(stop: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let first = Mutex::new(Some(stop));
    ctrlc::set_handler(move || {
        let f = first.lock().unwrap_or_else(|p| p.into_inner()).take();
        match f {
            Some(f) => {
                tracing::info!("stopping (signal again to exit at once)");
                f();
            }
            None => {
                eprintln!("moat: second signal, exiting now");
                std::process::exit(130);
            }
        }
    })
    .context("installing the signal handler")
}
