//! Any bytes as X-Forwarded-For fields from a trusted peer: the client address is the peer or
//! one of the addresses written in them, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::perimeter::{Cidr, client_ip};

fuzz_target!(|data: &[u8]| {
    let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().expect("cidr"), "::1/128".parse().expect("cidr")];
    let peer = "10.0.0.1".parse().expect("ip");
    let fields: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let _ = client_ip(peer, &trusted, fields.into_iter());
});
