//! `X-Forwarded-For` values from a trusted proxy, one per line: resolving
//! the client never panics and gives the peer or an address the header
//! holds, never one from a peer that is not trusted.
#![no_main]
use std::net::SocketAddr;

use chatd::server::proxy::TrustedProxies;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
    let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let values = || data.split(|b| *b == b'\n');
    let client = trusted.client(peer, values());
    if client != peer {
        assert_eq!(client.port(), 0);
        let text = String::from_utf8_lossy(data);
        assert!(text.contains(&client.ip().to_string()) || client.ip().is_ipv6());
    }
    let stranger: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    assert_eq!(trusted.client(stranger, values()), stranger);
});
