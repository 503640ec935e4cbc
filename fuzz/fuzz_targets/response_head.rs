//! Any bytes from an origin, parsed as a response head (also for a HEAD request), must give
//! a verdict without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::http::ResponseHead;

fuzz_target!(|data: &[u8]| {
    let mut head = ResponseHead::default();
    let head_request = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(true) = head.parse(data, head_request, 32 * 1024) {
        assert!(head.len <= data.len());
    }
});
