//! `GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&timestamps=&tailLines=&sinceSeconds=&sinceTime=&limitBytes=`
//! on the agent endpoint: a container's CRI log as `kubectl logs` shows it, streamed until
//! the container ends when following (the kubelet's `LogOptions`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use crate::http::{Ctx, Reply, Request, locate};

/// The answer to a `containerLogs` request: a refusal, or the log as a streamed body.
pub fn serve(ctx: &Ctx, req: &Request, ns: &str, pod: &str, c: &str) -> Reply {
    let (rec, restart, id, has_last) = match locate(ctx, ns, pod, c) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let n = if req.flag("previous") {
        // The run before the current one: the last terminated instance.
        if restart == 0 || !has_last {
            return Reply::bad(format!(
                "previous terminated container \"{c}\" in pod \"{pod}\" not found\n"
            ));
        }
        restart - 1
    } else {
        restart
    };
    let path = ctx
        .log_dir
        .join(format!("{ns}_{pod}_{}", rec.uid))
        .join(c)
        .join(format!("{n}.log"));
    let mut opts = LogOptions::from_query(req, chrono::Utc::now());
    opts.follow = opts.follow && !req.flag("previous") && id.is_some();
    let exit_file = id
        .as_ref()
        .map(|id| rec.bundle(&ctx.run_dir, id).join(crate::runtime::EXIT_FILE));
    Reply::Body(Box::new(move |out| {
        stream_log(&path, &opts, exit_file.as_deref(), out)
    }))
}

/// What `kubectl logs` asks for (the kubelet's `LogOptions`).
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Only the last this many lines (`--tail`).
    pub tail: Option<usize>,
    /// Each line prefixed with its CRI time stamp (`--timestamps`).
    pub timestamps: bool,
    /// Keep streaming until the container has ended (`-f`).
    pub follow: bool,
    /// Only entries from this time on (`--since`, `--since-time`).
    pub since: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// At most this many bytes of output (`--limit-bytes`), then the stream ends.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// From the query of a `containerLogs` request, at time `now`.
    pub fn from_query(req: &Request, now: chrono::DateTime<chrono::Utc>) -> LogOptions {
        let since = match (req.q("sinceSeconds"), req.q("sinceTime")) {
            (Some(s), _) => s
                .parse::<i64>()
                .ok()
                .map(|s| (now - chrono::Duration::seconds(s)).fixed_offset()),
            (None, Some(t)) => chrono::DateTime::parse_from_rfc3339(t).ok(),
            (None, None) => None,
        };
        LogOptions {
            tail: req.q("tailLines").and_then(|t| t.parse().ok()),
            timestamps: req.flag("timestamps"),
            follow: req.flag("follow"),
            since,
            limit_bytes: req.q("limitBytes").and_then(|b| b.parse().ok()),
        }
    }
}

/// Writes decoded entries as `kubectl logs` shows them, applying `since` and the byte limit.
struct Emitter<'a> {
    opts: &'a LogOptions,
    remaining: Option<u64>,
}

impl Emitter<'_> {
    /// Whether more may be written after this line.
    fn emit(&mut self, line: &[u8], out: &mut dyn Write) -> std::io::Result<bool> {
        if self.remaining == Some(0) {
            return Ok(false);
        }
        let Some(e) = crate::logs::decode(line) else {
            return Ok(true);
        };
        if let Some(since) = self.opts.since
            && chrono::DateTime::parse_from_rfc3339(e.time).is_ok_and(|t| t < since)
        {
            return Ok(true);
        }
        let mut buf = Vec::new();
        if self.opts.timestamps {
            buf.extend_from_slice(e.time.as_bytes());
            buf.push(b' ');
        }
        buf.extend_from_slice(e.content);
        if !e.partial {
            buf.push(b'\n');
        }
        if let Some(left) = self.remaining.as_mut() {
            let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            buf.truncate(n);
            *left -= n as u64;
        }
        out.write_all(&buf)?;
        Ok(self.remaining != Some(0))
    }
}

/// Copies a CRI log as plain text; when following, keeps reading until the container's exit
/// file appears and the log has been drained.
pub fn stream_log(
    path: &Path,
    opts: &LogOptions,
    exit_file: Option<&Path>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let follow = opts.follow;
    let mut em = Emitter {
        opts,
        remaining: opts.limit_bytes,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The shim creates it with the container; wait briefly.
            std::thread::sleep(Duration::from_millis(300));
            std::fs::File::open(path)?
        }
        Err(e) => return Err(e),
    };
    let mut r = BufReader::new(f);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut partial = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.ends_with(b"\n") {
            lines.push(line);
        } else {
            partial = line;
        }
    }
    let skip = opts.tail.map_or(0, |t| lines.len().saturating_sub(t));
    for l in &lines[skip..] {
        if !em.emit(l, out)? {
            return out.flush();
        }
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut drained_after_exit = 0;
    // After a rotation: the new current file, read once the old one is finished. The shim
    // moves to the new file at its first write there, so once the new file has data nothing
    // more comes to the old one: drain the old one again, then switch.
    let mut next: Option<BufReader<std::fs::File>> = None;
    let mut switch_when_drained = false;
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n > 0 {
            partial.extend_from_slice(&line);
            if partial.ends_with(b"\n") {
                let more = em.emit(&partial, out)?;
                out.flush()?;
                if !more {
                    return Ok(());
                }
                partial.clear();
            }
            continue;
        }
        if switch_when_drained && let Some(nx) = next.take() {
            r = nx;
            switch_when_drained = false;
            continue;
        }
        match &next {
            Some(nx) => {
                if nx.get_ref().metadata().is_ok_and(|m| m.len() > 0) {
                    switch_when_drained = true;
                    continue;
                }
            }
            None => {
                use std::os::unix::fs::MetadataExt;
                if let (Ok(now), Ok(open)) = (std::fs::metadata(path), r.get_ref().metadata())
                    && (now.dev(), now.ino()) != (open.dev(), open.ino())
                {
                    // Missing for a moment mid-rotation: look again on the next round.
                    if let Ok(f) = std::fs::File::open(path) {
                        next = Some(BufReader::new(f));
                        continue;
                    }
                }
            }
        }
        if exit_file.is_some_and(Path::exists) {
            drained_after_exit += 1;
            if drained_after_exit > 3 {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_tail_and_timestamps() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::fs::write(
            &p,
            "T1 stdout F one\nT2 stderr F two\nT3 stdout P thr\nT4 stdout F ee\n",
        )
        .unwrap();
        let read = |o: LogOptions| {
            let mut out = Vec::new();
            stream_log(&p, &o, None, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(read(LogOptions::default()), "one\ntwo\nthree\n");
        let tail1 = LogOptions {
            tail: Some(1),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(read(tail1), "T4 ee\n");
    }

    #[test]
    fn since_and_limit_bytes_filter_like_the_kubelet() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::fs::write(
            &p,
            "2026-01-01T00:00:01.5Z stdout F early\n2026-01-01T00:00:03Z stderr F later\n2026-01-01T00:00:04Z stdout F last\n",
        )
        .unwrap();
        let read = |o: LogOptions| {
            let mut out = Vec::new();
            stream_log(&p, &o, None, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let at = |t: &str| Some(chrono::DateTime::parse_from_rfc3339(t).unwrap());
        let since = |t: &str| LogOptions {
            since: at(t),
            ..Default::default()
        };
        assert_eq!(read(since("2026-01-01T00:00:02Z")), "later\nlast\n");
        assert_eq!(
            read(since("2026-01-01T00:00:03Z")),
            "later\nlast\n",
            "inclusive"
        );
        assert_eq!(read(since("2026-01-02T00:00:00Z")), "");
        let limit = |n| LogOptions {
            limit_bytes: Some(n),
            ..Default::default()
        };
        assert_eq!(read(limit(8)), "early\nla");
        assert_eq!(read(limit(0)), "");
        // tail first, then since, as the kubelet applies them
        let both = LogOptions {
            tail: Some(2),
            since: at("2026-01-01T00:00:03.5Z"),
            ..Default::default()
        };
        assert_eq!(read(both), "last\n");
        // The query as kubectl sends it.
        let req = Request::get("/containerLogs/d/p/c?sinceSeconds=60&limitBytes=10&tailLines=3");
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .unwrap()
            .to_utc();
        let o = LogOptions::from_query(&req, now);
        assert_eq!(o.since, at("2026-01-01T00:00:00Z"));
        assert_eq!(
            (o.limit_bytes, o.tail, o.follow),
            (Some(10), Some(3), false)
        );
    }

    #[test]
    fn follow_ends_after_the_container_exits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let exit = d.path().join("exit");
        std::fs::write(&p, "T1 stdout F one\n").unwrap();
        let (p2, e2) = (p.clone(), exit.clone());
        let h = std::thread::spawn(move || {
            let mut out = Vec::new();
            let follow = LogOptions {
                follow: true,
                ..Default::default()
            };
            stream_log(&p2, &follow, Some(&e2), &mut out).unwrap();
            out
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"T2 stdout F two\n").unwrap();
        std::fs::write(&exit, "0\n").unwrap();
        assert_eq!(String::from_utf8(h.join().unwrap()).unwrap(), "one\ntwo\n");
    }

    /// A writer whose bytes the test receives as they are written.
    struct Chan(std::sync::mpsc::Sender<Vec<u8>>);

    impl Write for Chan {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn follow_goes_on_in_the_new_file_after_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let exit = d.path().join("exit");
        std::fs::write(&p, "T1 stdout F one\n").unwrap();
        let (p2, e2) = (p.clone(), exit.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let follow = LogOptions {
                follow: true,
                ..Default::default()
            };
            stream_log(&p2, &follow, Some(&e2), &mut Chan(tx)).unwrap();
        });
        // The follower has the first file open once it has sent its content.
        assert_eq!(rx.recv().unwrap(), b"one\n");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"T2 stdout F two\n").unwrap();
        std::fs::rename(&p, d.path().join("0.log.20260101-000000")).unwrap();
        std::fs::write(&p, "").unwrap();
        // A write the shim makes to the old file before it notices the rotation.
        f.write_all(b"T3 stdout F late\n").unwrap();
        std::fs::write(&p, "T4 stdout F three\n").unwrap();
        std::fs::write(&exit, "0\n").unwrap();
        h.join().unwrap();
        let rest: Vec<u8> = rx.iter().flatten().collect();
        assert_eq!(String::from_utf8(rest).unwrap(), "two\nlate\nthree\n");
    }
}
