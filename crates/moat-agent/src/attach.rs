//! `attach` on the agent endpoint (`/attach/{namespace}/{pod}/{container}`), over the same
//! stream protocols as exec (WebSocket v5/v4 channels, SPDY/3.1; see [`crate::exec`]).
//!
//! The container's output is what its shim writes to the CRI log from the moment of the
//! attach on, stdout on channel 1 and stderr on channel 2, until the container ends; its
//! stdin (for containers with `stdin: true`) is the shim's attach socket in the bundle
//! ([`crate::shim::ATTACH_SOCKET`]), so input reaches the container even across agent
//! restarts. For a container with a terminal (`tty: true`) that socket hands over the pty
//! master instead: input is written to it and kubectl's resizes set its window size, and
//! the output (the terminal's) still comes from the log. A session ends when the container does (status Success, as the kubelet's) or
//! when the client goes.

use std::io::{BufRead, BufReader, Seek, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::exec::{Out, negotiate, open, relay};
use crate::http::{Ctx, Reply, Request, locate};

/// The answer to an attach request: a refusal, or the upgrade whose session relays the
/// container's streams.
pub fn serve(ctx: &Ctx, req: &Request, ns: &str, pod: &str, c: &str) -> Reply {
    let (rec, restart, id, _) = match locate(ctx, ns, pod, c) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(id) = id else {
        return Reply::bad(format!("container {c} is not running\n"));
    };
    let bundle = rec.bundle(&ctx.run_dir, &id);
    let exit_file = bundle.join(crate::runtime::EXIT_FILE);
    if exit_file.exists() {
        return Reply::bad(format!(
            "container {c} in pod {pod} has terminated: nothing to attach to\n"
        ));
    }
    // A terminal container: the shim hands over its pty master, for input and resizes.
    let master = if crate::shim::terminal(&bundle) {
        match connect_terminal(&bundle) {
            Ok(m) => Some(m),
            Err(e) => {
                return Reply::text(
                    500,
                    format!("the terminal of container {c} in pod {pod}: {e}\n"),
                );
            }
        }
    } else {
        None
    };
    let stdin = if let Some(m) = master.as_ref().filter(|_| req.flag("stdin")) {
        m.try_clone()
            .ok()
            .map(|w| Box::new(w) as Box<dyn Write + Send>)
    } else if req.flag("stdin") {
        match connect_stdin(&bundle) {
            Ok(w) => Some(Box::new(w) as Box<dyn Write + Send>),
            Err(e) => {
                return Reply::bad(format!(
                    "container {c} in pod {pod} takes no stdin (set stdin: true in its spec): {e}\n"
                ));
            }
        }
    } else {
        None
    };
    let log = ctx
        .log_dir
        .join(format!("{ns}_{pod}_{}", rec.uid))
        .join(c)
        .join(format!("{restart}.log"));
    let (headers, proto) = match negotiate(req) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = req.clone();
    Reply::Upgrade {
        headers,
        session: Box::new(move |s| {
            let Some(mut t) = open(s, proto, &req) else {
                return;
            };
            let (tx, rx) = mpsc::channel::<Out>();
            let (want_out, want_err) = (req.flag("stdout"), req.flag("stderr") || req.flag("tty"));
            // Opened before any stdin is passed on, so the answers to it are seen.
            let reader = open_at_end(&log);
            std::thread::spawn(move || follow(reader, &log, &exit_file, want_out, want_err, &tx));
            let resize = |w: u16, h: u16| {
                if let Some(m) = &master {
                    crate::exec::set_winsize(m, w, h);
                }
            };
            let stdin = stdin.map(|w| w as Box<dyn Write>);
            relay(t.as_mut(), &rx, stdin, Some(&resize), &[]);
        }),
    }
}

/// The pty master of a terminal container, from its shim's attach socket.
fn connect_terminal(bundle: &Path) -> std::io::Result<std::fs::File> {
    let conn = connect_stdin(bundle)?;
    crate::exec::recv_master(&conn)
}

/// A connection to the shim's stdin socket of the container in `bundle`.
fn connect_stdin(bundle: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let dir = std::fs::File::open(bundle)?;
    std::os::unix::net::UnixStream::connect(crate::shim::short_socket_path(
        &dir,
        crate::shim::ATTACH_SOCKET,
    ))
}

/// The CRI log `path` opened at its current end. The shim creates the file with the
/// container: a moment's grace for a young one.
pub(crate) fn open_at_end(path: &Path) -> Option<BufReader<std::fs::File>> {
    for _ in 0..10 {
        if let Ok(mut f) = std::fs::File::open(path)
            && f.seek(std::io::SeekFrom::End(0)).is_ok()
        {
            return Some(BufReader::new(f));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Sends what the shim appends to the CRI log `path` through `r` (channel 1 for stdout,
/// 2 for stderr, each if wanted), then `Exited(0)` once the container's exit file exists
/// (or its bundle is gone) and the log is drained. Follows a rotation to the new file. Ends early if nobody
/// listens any more.
pub(crate) fn follow(
    mut r: Option<BufReader<std::fs::File>>,
    path: &Path,
    exit_file: &Path,
    want_out: bool,
    want_err: bool,
    tx: &mpsc::Sender<Out>,
) {
    let mut line = Vec::new();
    let mut idle_after_exit = 0;
    loop {
        let Some(reader) = r.as_mut() else {
            // No log at all: nothing will ever come but the end.
            let _ = tx.send(Out::Exited(0));
            return;
        };
        let n = reader.read_until(b'\n', &mut line).unwrap_or(0);
        if n > 0 && line.ends_with(b"\n") {
            if let Some(e) = crate::logs::decode(&line) {
                let chan = if e.stream == "stderr" { 2 } else { 1 };
                if (chan == 1 && want_out) || (chan == 2 && want_err) {
                    let mut data = e.content.to_vec();
                    if !e.partial {
                        data.push(b'\n');
                    }
                    if tx.send(Out::Data(chan, data)).is_err() {
                        return;
                    }
                }
            }
            line.clear();
            continue;
        }
        if n > 0 {
            // Half a line: the rest is being written.
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        let rotated = match (std::fs::metadata(path), reader.get_ref().metadata()) {
            (Ok(now), Ok(open)) => (now.dev(), now.ino()) != (open.dev(), open.ino()),
            _ => false,
        };
        if rotated && let Ok(f) = std::fs::File::open(path) {
            r = Some(BufReader::new(f));
            continue;
        }
        // Ended: its exit file is there, or the agent already removed its bundle (a
        // finished container of a pod that does not restart).
        let bundle_gone = exit_file.parent().is_some_and(|b| !b.exists());
        if exit_file.exists() || bundle_gone {
            idle_after_exit += 1;
            if idle_after_exit > 2 {
                let _ = tx.send(Out::Exited(0));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_sees_only_new_output_by_stream_and_ends_with_the_container() {
        let d = tempfile::tempdir().unwrap();
        let (log, exit) = (d.path().join("0.log"), d.path().join("exit"));
        std::fs::write(&log, "T1 stdout F before the attach\n").unwrap();
        let (tx, rx) = mpsc::channel();
        let (l2, e2) = (log.clone(), exit.clone());
        let r = open_at_end(&log);
        let h = std::thread::spawn(move || follow(r, &l2, &e2, true, false, &tx));
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"T2 stdout P hel\nT3 stdout F lo\nT4 stderr F not wanted\n")
            .unwrap();
        std::fs::write(&exit, "0\n").unwrap();
        h.join().unwrap();
        let got: Vec<Out> = rx.iter().collect();
        let mut text = Vec::new();
        for o in &got[..got.len() - 1] {
            match o {
                Out::Data(1, d) => text.extend_from_slice(d),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(String::from_utf8(text).unwrap(), "hello\n");
        assert!(matches!(got.last(), Some(Out::Exited(0))));
    }

    #[test]
    fn attach_ends_when_the_bundle_is_removed_before_the_exit_file_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let log = d.path().join("0.log");
        std::fs::write(&log, "").unwrap();
        let (tx, rx) = mpsc::channel();
        let (l2, e2) = (log.clone(), bundle.join("exit"));
        let r = open_at_end(&log);
        let h = std::thread::spawn(move || follow(r, &l2, &e2, true, true, &tx));
        std::fs::remove_dir(&bundle).unwrap();
        h.join().unwrap();
        assert!(matches!(rx.iter().last(), Some(Out::Exited(0))));
    }

    #[test]
    fn attach_follows_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let (log, exit) = (d.path().join("0.log"), d.path().join("exit"));
        std::fs::write(&log, "").unwrap();
        let (tx, rx) = mpsc::channel();
        let (l2, e2) = (log.clone(), exit.clone());
        let r = open_at_end(&log);
        let h = std::thread::spawn(move || follow(r, &l2, &e2, true, true, &tx));
        std::fs::rename(&log, d.path().join("0.log.old")).unwrap();
        std::fs::write(&log, "T1 stderr F after\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(&exit, "0\n").unwrap();
        h.join().unwrap();
        let got: Vec<Out> = rx.iter().collect();
        assert!(
            matches!(&got[0], Out::Data(2, d) if d == b"after\n"),
            "{got:?}"
        );
    }
}
