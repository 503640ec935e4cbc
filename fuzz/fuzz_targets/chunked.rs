//! Any bytes, fed to the chunked decoder in fuzzer-chosen pieces, must decode or fail
//! cleanly, never panic, and never report data outside the piece it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::http::chunked::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut decoder = ChunkedDecoder::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in input.chunks(step) {
        pending.extend_from_slice(piece);
        loop {
            match decoder.decode(&pending) {
                Ok(d) => {
                    assert!(d.consumed <= pending.len());
                    assert!(d.data.end <= d.consumed);
                    pending.drain(..d.consumed);
                    if d.consumed == 0 || decoder.is_done() {
                        break;
                    }
                }
                Err(_) => return,
            }
        }
        if decoder.is_done() {
            return;
        }
    }
});
