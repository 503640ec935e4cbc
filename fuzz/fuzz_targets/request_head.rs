//! Any bytes, fed to the request-head parser whole and byte-split at a fuzzer-chosen point,
//! must give a verdict (complete / need more / a 4xx-5xx error) without panicking, and a
//! complete head's ranges must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::http::{HeadLimits, RequestHead};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_header_bytes: 16 * 1024,
        max_headers: 100,
        max_uri_bytes: 8 * 1024,
    };
    let mut head = RequestHead::default();
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    // an incomplete prefix first, as a slow client would send it, then the whole
    let _ = head.parse(&data[..split], &limits);
    match head.parse(data, &limits) {
        Ok(true) => {
            assert!(head.len <= data.len());
            for r in [&head.method, &head.target, &head.path, &head.query] {
                assert!(r.end <= head.len);
            }
            for f in &head.fields {
                assert!(f.name.end <= head.len && f.value.end <= head.len);
            }
        }
        Ok(false) => {}
        Err(e) => assert!((400..=599).contains(&e.status())),
    }
});
