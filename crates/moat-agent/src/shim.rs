//! The per-container shim (containerd-shim's job, much reduced): it runs the handler's
//! `create`, answers the agent with `ok <pid>` or `error <message>` on stdout, then stays as
//! the container's subreaper, copying its stdout/stderr into the CRI log file and recording
//! the exit code in the bundle. It outlives agent restarts, so containers keep their logs and
//! nobody loses their exit status.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub runtime: PathBuf,
    pub root: PathBuf,
    pub options: Vec<String>,
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
}

impl ShimArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--runtime".into(),
            self.runtime.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
        ];
        for o in &self.options {
            v.push(format!("--option={o}"));
        }
        v.extend([
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--log".into(),
            self.log.display().to_string(),
        ]);
        v
    }

    pub fn parse(args: &[String]) -> Result<ShimArgs, String> {
        let mut a = ShimArgs {
            runtime: PathBuf::new(),
            root: PathBuf::new(),
            options: Vec::new(),
            id: String::new(),
            bundle: PathBuf::new(),
            log: PathBuf::new(),
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if let Some(o) = k.strip_prefix("--option=") {
                a.options.push(o.into());
                continue;
            }
            let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
            match k.as_str() {
                "--runtime" => a.runtime = v.into(),
                "--root" => a.root = v.into(),
                "--id" => a.id = v.clone(),
                "--bundle" => a.bundle = v.into(),
                "--log" => a.log = v.into(),
                _ => return Err(format!("unknown shim argument {k}")),
            }
        }
        if a.runtime.as_os_str().is_empty() || a.id.is_empty() || a.bundle.as_os_str().is_empty() {
            return Err("shim needs --runtime, --id and --bundle".into());
        }
        Ok(a)
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The CRI log file, reopened when its path names another file: the agent's log rotation
/// renames the current file and creates a new one (see [`crate::logrotate`]).
pub struct LogFile {
    path: PathBuf,
    file: File,
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

impl LogFile {
    pub fn open(path: &std::path::Path) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `data` to the file the path names now (one stat per write).
    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let rotated = match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(now), Ok(open)) => !same_file(&now, &open),
            (Err(_), _) => true,
            (Ok(_), Err(_)) => false,
        };
        if rotated
            && let Ok(f) = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        {
            self.file = f;
        }
        self.file.write_all(data)
    }
}

fn copy_stream(mut r: File, stream: &'static str, log: Arc<Mutex<LogFile>>) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut out = Vec::new();
        crate::logs::encode(&now(), stream, &mut pending, &buf[..n], &mut out);
        if !out.is_empty()
            && let Ok(mut f) = log.lock()
        {
            let _ = f.write_all(&out);
        }
    }
    let mut out = Vec::new();
    crate::logs::flush(&now(), stream, &mut pending, &mut out);
    if let Ok(mut f) = log.lock() {
        let _ = f.write_all(&out);
    }
}

fn answer(line: &str) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{}", line.replace('\n', " "));
    let _ = o.flush();
}

/// Runs the shim; the process exit code. `--reap PID_FILE -- CMD...` is the exec reaper
/// instead (see [`reap`]).
pub fn main(args: &[String]) -> i32 {
    if let Some(("--reap", rest)) = args.split_first().map(|(a, r)| (a.as_str(), r)) {
        return match rest {
            [pid_file, dashdash, cmd @ ..] if dashdash == "--" && !cmd.is_empty() => {
                match reap(std::path::Path::new(pid_file), cmd) {
                    Ok(()) => 0,
                    Err(e) => {
                        answer(&format!("error {e}"));
                        1
                    }
                }
            }
            _ => {
                answer("error usage: shim --reap PID_FILE -- CMD...");
                2
            }
        };
    }
    let a = match ShimArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            answer(&format!("error {e}"));
            return 2;
        }
    };
    match run(&a) {
        Ok(()) => 0,
        Err(e) => {
            answer(&format!("error {e}"));
            1
        }
    }
}

/// For a detached process (`runc exec -d -t`, whose parent exits at once): becomes a
/// subreaper, runs `cmd` (which writes the process's pid to `pid_file`), answers `ok <pid>`,
/// then waits for the process and answers `exit <code>` (128+signal when killed).
pub fn reap(pid_file: &std::path::Path, cmd: &[String]) -> Result<(), String> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only and changes only
    // this process's reaping behaviour.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "becoming a subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (prog, args) = cmd.split_first().ok_or("no command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {prog}: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(if msg.is_empty() {
            format!("{prog} failed ({})", out.status)
        } else {
            msg
        });
    }
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {}", pid_file.display()))?;
    answer(&format!("ok {pid}"));
    let code = loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(p, c)) if p.as_raw() == pid => break c,
            Ok(nix::sys::wait::WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                break 128 + s as i32;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // No children left: it was not ours to wait for (e.g. reaped elsewhere).
            Err(e) => return Err(format!("waiting for {pid}: {e}")),
        }
    };
    answer(&format!("exit {code}"));
    Ok(())
}

fn pipe() -> Result<(File, OwnedFd), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("creating a pipe: {e}"))?;
    Ok((File::from(r), w))
}

fn run(a: &ShimArgs) -> Result<(), String> {
    let _ = std::env::set_current_dir("/");
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only and changes only
    // this process's reaping behaviour.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "becoming a subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    if let Some(d) = a.log.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let log =
        LogFile::open(&a.log).map_err(|e| format!("opening the log {}: {e}", a.log.display()))?;
    let log = Arc::new(Mutex::new(log));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let pid_file = a.bundle.join("init.pid");
    let status = {
        let mut c = Command::new(&a.runtime);
        c.args(&a.options)
            .arg("--root")
            .arg(&a.root)
            .arg("create")
            .arg("--bundle")
            .arg(&a.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&a.id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        // `c` (holding our copies of the write ends) is dropped at the end of this block.
        c.status()
            .map_err(|e| format!("running {} create: {e}", a.runtime.display()))?
    };
    if !status.success() {
        // Nothing runs in the container: the pipes hit EOF once the runtime is gone.
        let mut msg = String::new();
        let (mut o, mut e) = (out_r, err_r);
        let _ = e.read_to_string(&mut msg);
        let _ = o.read_to_string(&mut msg);
        let msg = msg.trim();
        return Err(if msg.is_empty() {
            format!("{} create failed ({status})", a.runtime.display())
        } else {
            msg.to_string()
        });
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {}", pid_file.display()))?;
    answer(&format!("ok {pid}"));
    // From here on nobody reads stdout: point it at /dev/null so a late write cannot fail.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let (l1, l2) = (log.clone(), log);
    let t1 = std::thread::spawn(move || copy_stream(out_r, "stdout", l1));
    let t2 = std::thread::spawn(move || copy_stream(err_r, "stderr", l2));
    let code = loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(p, c)) if p.as_raw() == pid => break c,
            Ok(nix::sys::wait::WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                break 128 + s as i32;
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for the container: {e}")),
        }
    };
    let tmp = a.bundle.join(format!("{}.tmp", crate::runtime::EXIT_FILE));
    let _ = std::fs::write(&tmp, format!("{code}\n"))
        .and_then(|()| std::fs::rename(&tmp, a.bundle.join(crate::runtime::EXIT_FILE)));
    let _ = t1.join();
    let _ = t2.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            runtime: "/usr/sbin/runc".into(),
            root: "/run/r".into(),
            options: vec!["--debug".into()],
            id: "c1".into(),
            bundle: "/b".into(),
            log: "/l/0.log".into(),
        };
        assert_eq!(ShimArgs::parse(&a.to_args()).unwrap(), a);
        assert!(ShimArgs::parse(&["--id".into()]).is_err());
        assert!(ShimArgs::parse(&["--bogus".into(), "x".into()]).is_err());
    }

    #[test]
    fn the_log_follows_its_path_after_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut log = LogFile::open(&p).unwrap();
        log.write_all(b"one\n").unwrap();
        std::fs::rename(&p, d.path().join("0.log.1")).unwrap();
        std::fs::write(&p, b"").unwrap();
        log.write_all(b"two\n").unwrap();
        std::fs::rename(&p, d.path().join("0.log.2")).unwrap();
        // Nothing at the path (the rotation is half-way): the write creates it.
        log.write_all(b"three\n").unwrap();
        let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap();
        assert_eq!(
            (read("0.log.1"), read("0.log.2"), read("0.log")),
            ("one\n".into(), "two\n".into(), "three\n".into())
        );
    }
}
