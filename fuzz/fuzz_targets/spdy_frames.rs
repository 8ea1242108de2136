//! The node agent's SPDY/3.1 decoder (kubectl exec on 1.27–1.29) fed arbitrary bytes in
//! arbitrary chunks: it must never panic, and every frame it accepts must encode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_agent::spdy::{Codec, Frame};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = (split as usize % 128) + 1;
    let mut codec = Codec::new();
    let mut out = Codec::new();
    let mut buf = Vec::new();
    for c in rest.chunks(chunk) {
        buf.extend_from_slice(c);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    // What the agent sends back goes through the encoder of its direction.
                    let reply = match f {
                        Frame::SynStream { id, headers, .. } => Frame::SynReply { id, headers },
                        other => other,
                    };
                    if !matches!(reply, Frame::Other) {
                        let _ = out.encode(&reply);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
