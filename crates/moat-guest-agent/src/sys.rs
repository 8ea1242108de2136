//! Thin checked wrappers over the syscalls the agent needs. Errors name the step and path.

use std::ffi::CString;
use std::io;
use std::path::Path;

pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

pub fn ctx(step: &str, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{step} {what}: {e}"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let s = cstr(src)?;
    let t = cstr(target)?;
    let f = cstr(fstype)?;
    let d = data.map(cstr).transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings (or null for data) for the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void),
        )
    };
    check(r).map_err(|e| ctx(&format!("mounting {fstype} {src} on"), target, e))
}

pub fn umount_detach(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) })
        .map_err(|e| ctx("unmounting", target, e))
}

pub fn mkdir_p(p: &str) -> io::Result<()> {
    std::fs::create_dir_all(p).map_err(|e| ctx("creating directory", p, e))
}

/// Creates an empty file (and its parents) to bind a file onto.
pub fn touch(p: &str) -> io::Result<()> {
    if let Some(parent) = Path::new(p).parent() {
        std::fs::create_dir_all(parent).map_err(|e| ctx("creating directory", p, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(|_| ())
        .map_err(|e| ctx("creating file", p, e))
}

pub fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

pub fn close(fd: i32) {
    // SAFETY: closing a descriptor we own; errors are irrelevant here.
    unsafe { libc::close(fd) };
}

/// Writes all of `buf` to a raw fd (used after fork, where std's locks are off limits).
pub fn write_all(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

pub fn read_some(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid mutable slice.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
