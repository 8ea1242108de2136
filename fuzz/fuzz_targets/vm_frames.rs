//! The guest agent's (and the host's) frame decoder and control-message parsing fed
//! arbitrary bytes in arbitrary chunks: it must never panic, never buffer past one frame
//! and, for what it accepts, re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_vm_proto::{Decoder, Event, Hello, Kind, MAX_FRAME, Request, Response, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = (split as usize % 64) + 1;
    let mut d = Decoder::new();
    let mut accepted = Vec::new();
    for c in rest.chunks(chunk) {
        d.feed(c);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let _ = parse::<Request>(&f, Kind::Request);
                    let _ = parse::<Response>(&f, Kind::Response);
                    let _ = parse::<Event>(&f, Kind::Event);
                    let _ = parse::<Hello>(&f, Kind::Hello);
                    let _ = f.credit_amount();
                    f.encode_into(&mut accepted);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= 4 + MAX_FRAME as usize + chunk);
    }
    assert_eq!(&accepted[..], &rest[..accepted.len()]);
});
