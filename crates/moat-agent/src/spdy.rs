//! SPDY/3.1 framing, the subset kubectl 1.27–1.29 speaks for `exec` (Kubernetes'
//! `httpstream/spdy` over moby/spdystream): SYN_STREAM / SYN_REPLY / DATA / RST_STREAM /
//! PING / GOAWAY, header blocks compressed with one zlib stream per direction seeded with the
//! protocol's dictionary. Flow control (WINDOW_UPDATE) is not enforced, as spdystream does
//! not enforce it either. Sans-IO: bytes in, frames out, and back.

/// Header-compression dictionary of SPDY/3 (spec section 2.6.10.1): length-prefixed header
/// names and values, then a raw tail of common value fragments.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &[&str] = &[
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, ",
        "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    ];
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    for t in TAIL {
        d.extend_from_slice(t.as_bytes());
    }
    d
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY: {0}")]
    Protocol(String),
    #[error("SPDY header block")]
    Zlib(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub const FLAG_FIN: u8 = 0x01;
const VERSION: u16 = 3;
/// Frames larger than this are refused (kubectl's are a few KiB at most).
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    SynReply {
        id: u32,
        headers: Vec<(String, String)>,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, WINDOW_UPDATE, HEADERS and anything else this subset does not act on.
    Other,
}

/// One direction's header-block compression state and the framing around it.
pub struct Codec {
    inflate: flate2::Decompress,
    deflate: flate2::Compress,
    dict: Vec<u8>,
    deflate_primed: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn zerr(e: impl std::error::Error + Send + Sync + 'static) -> SpdyError {
    SpdyError::Zlib(Box::new(e))
}

impl Codec {
    pub fn new() -> Codec {
        Codec {
            inflate: flate2::Decompress::new(true),
            deflate: flate2::Compress::new(flate2::Compression::default(), true),
            dict: dictionary(),
            deflate_primed: false,
        }
    }

    /// Takes one complete frame off the front of `buf`, if it holds one.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
        if len > MAX_FRAME {
            return Err(SpdyError::Protocol(format!("frame of {len} bytes")));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = buf.drain(..8 + len).collect();
        let (head, body) = frame.split_at(8);
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                id: be32(head) & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: body.to_vec(),
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Protocol(format!("version {version}")));
        }
        let short = || SpdyError::Protocol("short control frame".into());
        Ok(Some(match u16::from_be_bytes([head[2], head[3]]) {
            1 => {
                if body.len() < 10 {
                    return Err(short());
                }
                Frame::SynStream {
                    id: be32(body) & 0x7fff_ffff,
                    fin: flags & FLAG_FIN != 0,
                    headers: self.inflate_headers(&body[10..])?,
                }
            }
            2 => {
                if body.len() < 4 {
                    return Err(short());
                }
                Frame::SynReply {
                    id: be32(body) & 0x7fff_ffff,
                    headers: self.inflate_headers(&body[4..])?,
                }
            }
            3 => {
                if body.len() < 8 {
                    return Err(short());
                }
                Frame::RstStream {
                    id: be32(body) & 0x7fff_ffff,
                    status: be32(&body[4..]),
                }
            }
            6 => {
                if body.len() < 4 {
                    return Err(short());
                }
                Frame::Ping(be32(body))
            }
            7 => Frame::GoAway,
            8 => {
                // HEADERS: decompressed only to keep the zlib stream in step.
                if body.len() < 4 {
                    return Err(short());
                }
                self.inflate_headers(&body[4..])?;
                Frame::Other
            }
            _ => Frame::Other,
        }))
    }

    fn inflate_headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let (before, produced) = (self.inflate.total_in(), out.len());
            let r =
                self.inflate
                    .decompress_vec(&block[pos..], &mut out, flate2::FlushDecompress::Sync);
            pos += (self.inflate.total_in() - before) as usize;
            match r {
                Ok(flate2::Status::StreamEnd) if pos < block.len() => {
                    return Err(SpdyError::Protocol("data after the header stream".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&self.dict).map_err(zerr)?;
                    continue;
                }
                Err(e) => return Err(zerr(e)),
            }
            if self.inflate.total_in() == before && out.len() == produced && pos < block.len() {
                return Err(SpdyError::Protocol("header block does not inflate".into()));
            }
            if pos >= block.len() && out.capacity() > out.len() {
                break;
            }
            if out.len() > MAX_FRAME {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
        }
        parse_headers(&out)
    }

    fn deflate_headers(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        if !self.deflate_primed {
            self.deflate.set_dictionary(&self.dict).map_err(zerr)?;
            self.deflate_primed = true;
        }
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[pos..], &mut out, flate2::FlushCompress::Sync)
                .map_err(zerr)?;
            pos += (self.deflate.total_in() - before) as usize;
            // Done once all input is in and the flush had room to finish.
            if pos >= raw.len() && out.capacity() > out.len() {
                break;
            }
        }
        Ok(out)
    }

    /// The bytes of `f` (SYN_REPLY, DATA, RST_STREAM, PING, GOAWAY).
    pub fn encode(&mut self, f: &Frame) -> Result<Vec<u8>, SpdyError> {
        let control = |ty: u16, flags: u8, body: &[u8]| -> Vec<u8> {
            let mut v = Vec::with_capacity(8 + body.len());
            v.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            v.extend_from_slice(&ty.to_be_bytes());
            v.push(flags);
            v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            v.extend_from_slice(body);
            v
        };
        Ok(match f {
            Frame::SynReply { id, headers } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend(self.deflate_headers(headers)?);
                control(2, 0, &body)
            }
            Frame::SynStream { id, fin, headers } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                body.extend(self.deflate_headers(headers)?);
                control(1, if *fin { FLAG_FIN } else { 0 }, &body)
            }
            Frame::RstStream { id, status } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(3, 0, &body)
            }
            Frame::Ping(id) => control(6, 0, &id.to_be_bytes()),
            Frame::GoAway => control(7, 0, &[0; 8]),
            Frame::Data { id, fin, data } => {
                if data.len() > 0xff_ffff {
                    return Err(SpdyError::Protocol("DATA frame too large".into()));
                }
                let mut v = Vec::with_capacity(8 + data.len());
                v.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                v.push(if *fin { FLAG_FIN } else { 0 });
                v.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                v.extend_from_slice(data);
                v
            }
            Frame::Other => Vec::new(),
        })
    }
}

/// An uncompressed header block: count, then length-prefixed names and values (several
/// values of one name are NUL-separated; names are lower case).
fn parse_headers(b: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = || SpdyError::Protocol("malformed header block".into());
    let mut pos = 0;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = b.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    let count = be32(take(4)?);
    let mut out = Vec::new();
    for _ in 0..count {
        let mut pair = [String::new(), String::new()];
        for p in pair.iter_mut() {
            let len = be32(take(4)?) as usize;
            *p = String::from_utf8_lossy(take(len)?).into_owned();
        }
        let [k, v] = pair;
        for v in v.split('\0') {
            out.push((k.to_ascii_lowercase(), v.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    #[test]
    fn frames_round_trip_through_two_codecs() {
        // `client` plays kubectl: what it encodes, `server` decodes, over several frames so
        // the shared zlib state is exercised.
        let (mut client, mut server) = (Codec::new(), Codec::new());
        let mut wire = Vec::new();
        for (id, ty) in [(1, "error"), (3, "stdout"), (5, "stdin")] {
            wire.extend(
                client
                    .encode(&Frame::SynStream {
                        id,
                        fin: false,
                        headers: vec![("streamtype".into(), ty.into())],
                    })
                    .unwrap(),
            );
        }
        wire.extend(
            client
                .encode(&Frame::Data {
                    id: 5,
                    fin: true,
                    data: b"hi".to_vec(),
                })
                .unwrap(),
        );
        wire.extend(client.encode(&Frame::Ping(7)).unwrap());
        // Byte by byte: a frame comes out only once it is complete.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire {
            buf.push(b);
            if let Some(f) = server.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(
            got[1],
            Frame::SynStream {
                id: 3,
                fin: false,
                headers: vec![("streamtype".into(), "stdout".into())]
            }
        );
        assert_eq!(
            got[3],
            Frame::Data {
                id: 5,
                fin: true,
                data: b"hi".to_vec()
            }
        );
        assert_eq!(got[4], Frame::Ping(7));
        // And the reply direction.
        let mut reply = server
            .encode(&Frame::SynReply {
                id: 3,
                headers: vec![],
            })
            .unwrap();
        assert_eq!(
            client.decode(&mut reply).unwrap(),
            Some(Frame::SynReply {
                id: 3,
                headers: vec![]
            })
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut c = Codec::new();
        // Version 2 control frame.
        let mut b = vec![0x80, 2, 0, 1, 0, 0, 0, 0];
        assert!(c.decode(&mut b).is_err());
        // A SYN_STREAM whose body is too short.
        let mut b = vec![0x80, 3, 0, 1, 0, 0, 0, 2, 0, 0];
        assert!(c.decode(&mut b).is_err());
        // Garbage where a header block should be.
        let mut b = vec![0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4];
        assert!(c.decode(&mut b).is_err());
        assert!(parse_headers(&[0, 0, 0, 1, 0, 0, 0, 9, b'x']).is_err());
        // Too large to buffer.
        let mut b = vec![0, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(c.decode(&mut b).is_err());
    }
}
