//! CRI container log format (what the kubelet reads under /var/log/pods):
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <content>\n`, `P` marking a partial line that
//! continues in the next entry. Sans-IO encode/decode; the shim writes, the agent reads.

/// Longest content per entry; longer lines are split into `P` entries, as containerd does.
pub const MAX_LINE: usize = 16 * 1024;

/// Encodes one read chunk of a stream into CRI entries. `pending` carries an unterminated tail
/// between calls; [`flush`] emits it at end of stream.
pub fn encode(time: &str, stream: &str, pending: &mut Vec<u8>, chunk: &[u8], out: &mut Vec<u8>) {
    pending.extend_from_slice(chunk);
    let mut start = 0;
    while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
        let line = &pending[start..start + nl];
        for (i, part) in line.chunks(MAX_LINE).enumerate() {
            let last = (i + 1) * MAX_LINE >= line.len();
            entry(time, stream, if last { "F" } else { "P" }, part, out);
        }
        if line.is_empty() {
            entry(time, stream, "F", b"", out);
        }
        start += nl + 1;
    }
    pending.drain(..start);
    while pending.len() >= MAX_LINE {
        let rest = pending.split_off(MAX_LINE);
        entry(time, stream, "P", pending, out);
        *pending = rest;
    }
}

/// The unterminated tail at end of stream becomes a final full entry.
pub fn flush(time: &str, stream: &str, pending: &mut Vec<u8>, out: &mut Vec<u8>) {
    if !pending.is_empty() {
        entry(time, stream, "F", pending, out);
        pending.clear();
    }
}

fn entry(time: &str, stream: &str, tag: &str, content: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_bytes());
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// One decoded entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

pub fn decode(line: &[u8]) -> Option<Entry<'_>> {
    let mut it = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(it.next()?).ok()?;
    let stream = std::str::from_utf8(it.next()?).ok()?;
    let tag = it.next()?;
    let content = it.next().unwrap_or(b"");
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    Some(Entry {
        time,
        stream,
        partial: tag == b"P",
        content,
    })
}

/// What `kubectl logs` prints: the contents, partial entries joined.
pub fn to_plain(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in file.split_inclusive(|&b| b == b'\n') {
        if let Some(e) = decode(line) {
            out.extend_from_slice(e.content);
            if !e.partial {
                out.push(b'\n');
            }
        }
    }
    out
}

/// Where a container run's CRI log lives: `<log_dir>/<ns>_<pod>_<uid>/<container>/<restart>.log`.
pub fn log_path(
    log_dir: &std::path::Path,
    ns: &str,
    pod: &str,
    uid: &str,
    container: &str,
    restart: u32,
) -> std::path::PathBuf {
    log_dir
        .join(format!("{ns}_{pod}_{uid}"))
        .join(container)
        .join(format!("{restart}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_round_trip() {
        let mut p = Vec::new();
        let mut out = Vec::new();
        encode("T", "stdout", &mut p, b"hel", &mut out);
        assert!(out.is_empty());
        encode("T", "stdout", &mut p, b"lo\n\nwor", &mut out);
        flush("T", "stdout", &mut p, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "T stdout F hello\nT stdout F \nT stdout F wor\n"
        );
        assert_eq!(to_plain(&out), b"hello\n\nwor\n");
    }

    #[test]
    fn long_lines_become_partial_entries() {
        let mut p = Vec::new();
        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE + 10];
        encode("T", "stderr", &mut p, &long, &mut out);
        encode("T", "stderr", &mut p, b"\n", &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "F"]);
        let mut want = long.clone();
        want.push(b'\n');
        assert_eq!(to_plain(&out), want);
    }
}
