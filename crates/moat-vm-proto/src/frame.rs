//! Length-prefixed frames and an incremental decoder that never trusts the length field.

/// Largest frame (header after the length word + payload) a peer may send.
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Largest payload: data writers split at this size.
pub const MAX_PAYLOAD: usize = MAX_FRAME as usize - 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Request = 2,
    Response = 3,
    Event = 4,
    Data = 5,
    Eof = 6,
    Credit = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Request,
            3 => Kind::Response,
            4 => Kind::Event,
            5 => Kind::Data,
            6 => Kind::Eof,
            7 => Kind::Credit,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame length {0} is outside 5..={MAX_FRAME}")]
    BadLength(u32),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("{kind:?} frame on stream {stream}: {why}")]
    Malformed {
        kind: Kind,
        stream: u32,
        why: &'static str,
    },
}

impl Frame {
    pub fn new(stream: u32, kind: Kind, payload: Vec<u8>) -> Frame {
        Frame {
            stream,
            kind,
            payload,
        }
    }

    pub fn credit(stream: u32, n: u32) -> Frame {
        Frame::new(stream, Kind::Credit, n.to_be_bytes().to_vec())
    }

    pub fn eof(stream: u32) -> Frame {
        Frame::new(stream, Kind::Eof, Vec::new())
    }

    /// The credit carried by a `Credit` frame.
    pub fn credit_amount(&self) -> Option<u32> {
        match (self.kind, <[u8; 4]>::try_from(self.payload.as_slice())) {
            (Kind::Credit, Ok(b)) => Some(u32::from_be_bytes(b)),
            _ => None,
        }
    }

    /// Appends the wire form to `out`.
    ///
    /// # Panics
    /// If the payload exceeds [`MAX_PAYLOAD`]; every caller splits data before framing it, so
    /// this is a programming error, not an input error.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        assert!(self.payload.len() <= MAX_PAYLOAD, "frame payload too large");
        let len = 5 + self.payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.payload);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + self.payload.len());
        self.encode_into(&mut v);
        v
    }
}

/// Incremental decoder: feed it whatever the transport returned, take frames out.
///
/// After an error the stream is unusable (the peer is broken or hostile); the decoder keeps
/// returning the error so a caller cannot resynchronise on garbage by accident.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.parse();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn parse(&mut self) -> Result<Option<Frame>, DecodeError> {
        let avail = &self.buf[self.pos..];
        let Some(len) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if !(5..=MAX_FRAME).contains(&len) {
            return Err(DecodeError::BadLength(len));
        }
        // The header is validated before the body arrives, so a bogus kind fails at once.
        if avail.len() >= 9 && Kind::from_u8(avail[8]).is_none() {
            return Err(DecodeError::BadKind(avail[8]));
        }
        let total = 4 + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let stream = u32::from_be_bytes([avail[4], avail[5], avail[6], avail[7]]);
        let kind = Kind::from_u8(avail[8]).ok_or(DecodeError::BadKind(avail[8]))?;
        let payload = avail[9..total].to_vec();
        self.pos += total;
        if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let f = Frame {
            stream,
            kind,
            payload,
        };
        validate(&f)?;
        Ok(Some(f))
    }
}

fn validate(f: &Frame) -> Result<(), DecodeError> {
    let bad = |why| {
        Err(DecodeError::Malformed {
            kind: f.kind,
            stream: f.stream,
            why,
        })
    };
    match f.kind {
        Kind::Hello | Kind::Request | Kind::Response | Kind::Event if f.stream != 0 => {
            bad("control frames belong to stream 0")
        }
        Kind::Data | Kind::Eof | Kind::Credit if f.stream == 0 => bad("stream 0 carries no stdio"),
        Kind::Credit if f.payload.len() != 4 => bad("credit must be 4 bytes"),
        Kind::Eof if !f.payload.is_empty() => bad("eof carries no payload"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_split_at_every_byte_boundary_decode_the_same() {
        let frames = vec![
            Frame::new(0, Kind::Hello, b"{\"version\":1}".to_vec()),
            Frame::new(7, Kind::Data, vec![0xff; 1000]),
            Frame::credit(7, 1000),
            Frame::eof(9),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode_into(&mut wire);
        }
        for split in 0..wire.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                d.feed(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "split at {split}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_buffering_the_body() {
        let mut d = Decoder::new();
        d.feed(&u32::MAX.to_be_bytes());
        assert_eq!(d.next_frame(), Err(DecodeError::BadLength(u32::MAX)));
        // Sticky: later good bytes do not resynchronise.
        d.feed(&Frame::eof(1).encode());
        assert!(d.next_frame().is_err());
        let mut d = Decoder::new();
        d.feed(&4u32.to_be_bytes());
        assert_eq!(d.next_frame(), Err(DecodeError::BadLength(4)));
    }

    #[test]
    fn unknown_kind_and_misplaced_frames_are_errors() {
        let mut d = Decoder::new();
        d.feed(&[0, 0, 0, 5, 0, 0, 0, 1, 99]);
        assert_eq!(d.next_frame(), Err(DecodeError::BadKind(99)));
        for f in [
            Frame::new(3, Kind::Request, b"{}".to_vec()),
            Frame::new(0, Kind::Data, b"x".to_vec()),
            Frame::new(3, Kind::Credit, vec![1, 2]),
            Frame::new(3, Kind::Eof, vec![1]),
        ] {
            let mut d = Decoder::new();
            d.feed(&f.encode());
            assert!(
                matches!(d.next_frame(), Err(DecodeError::Malformed { .. })),
                "{f:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut d = Decoder::new();
            for c in chunks {
                d.feed(&c);
                while let Ok(Some(_)) = d.next_frame() {}
            }
        }

        #[test]
        fn encode_decode_round_trip(stream in 1u32.., data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let f = Frame::new(stream, Kind::Data, data);
            let mut d = Decoder::new();
            d.feed(&f.encode());
            prop_assert_eq!(d.next_frame().unwrap(), Some(f));
        }
    }
}
