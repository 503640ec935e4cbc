//! Any bytes at the start of a connection on a `proxy_protocol` listener: a verdict (a header,
//! read more, or refuse), never a panic, and an accepted header never claims bytes it was
//! not given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::perimeter::proxy_protocol::{V2_MAX, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse(data) {
        assert!(header.len <= data.len() && header.len <= V2_MAX);
    }
});
