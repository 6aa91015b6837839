//! Clients behind a reverse proxy: which peers are trusted proxies
//! (`--trusted-proxy CIDR`), and the client address such a proxy names in
//! `X-Forwarded-For`. Pure: addresses and header values in, an address out.
//!
//! The header is a list each proxy appends its peer to, so only its
//! right-most entries are trustworthy: walking from the right, every entry
//! that is itself a trusted proxy is skipped and the first one that is not
//! is the client. Anything further left was written by that client and is
//! ignored. From a peer that is not a trusted proxy the header is ignored
//! entirely (anyone can send one).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is
/// a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a `--trusted-proxy` value is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or address block like 10.0.0.0/8, 127.0.0.1 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(text.to_owned());
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len.parse::<u8>().map_err(|_| error())?)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| error())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = prefix_len.unwrap_or(max);
        if prefix_len > max {
            return Err(error());
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl Cidr {
    /// True if `ip` is in the block (IPv4-mapped IPv6 addresses as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                masked(u128::from(network.to_bits()), 32, self.prefix_len)
                    == masked(u128::from(ip.to_bits()), 32, self.prefix_len)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                masked(network.to_bits(), 128, self.prefix_len)
                    == masked(ip.to_bits(), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

/// The top `prefix_len` bits of a `width`-bit address.
fn masked(bits: u128, width: u32, prefix_len: u8) -> u128 {
    let drop = width - u32::from(prefix_len).min(width);
    bits.checked_shr(drop).unwrap_or(0)
}

/// The proxies whose word about a client's address is taken.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts the peers in `blocks`; none, and every header is ignored.
    pub fn new(blocks: Vec<Cidr>) -> Self {
        TrustedProxies(blocks)
    }

    /// True if no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }

    /// The client a request from `peer` comes from: `peer` itself unless it
    /// is a trusted proxy that names another in `forwarded_for` (the
    /// `X-Forwarded-For` values, in the order they came).
    pub fn client<'a>(
        &self,
        peer: SocketAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let mut client = peer;
        let entries = forwarded_for
            .rev()
            .flat_map(|value| value.rsplit(|b| *b == b','));
        for entry in entries {
            let Some(ip) = parse_entry(entry) else {
                // A garbled entry: nothing left of it can be trusted.
                break;
            };
            client = SocketAddr::new(ip, 0);
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`), white space around it.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(with_port) = entry.parse::<SocketAddr>() {
        return Some(with_port.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| b.parse().unwrap()).collect())
    }

    fn client(trusted: &TrustedProxies, peer: &str, headers: &[&str]) -> String {
        let peer: SocketAddr = peer.parse().unwrap();
        trusted
            .client(peer, headers.iter().map(|h| h.as_bytes()))
            .ip()
            .to_string()
    }

    #[test]
    fn parses_blocks_and_matches_addresses() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "10.0.0.0/x",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer = "10.0.0.1:40000";
        assert_eq!(client(&trusted, peer, &["203.0.113.7"]), "203.0.113.7");
        // The client wrote the first entry itself: it does not count.
        assert_eq!(
            client(&trusted, peer, &["1.1.1.1, 203.0.113.7, 10.0.0.5"]),
            "203.0.113.7"
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client(&trusted, peer, &["1.1.1.1", "198.51.100.2 , 10.9.9.9"]),
            "198.51.100.2"
        );
        assert_eq!(
            client(&trusted, peer, &["[2001:db8::7]:443", "203.0.113.8:5000"]),
            "203.0.113.8"
        );
        assert_eq!(client(&trusted, peer, &["2001:db8::7"]), "2001:db8::7");
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_trusted() {
        assert_eq!(
            client(&proxies(&[]), "10.0.0.1:1", &["203.0.113.7"]),
            "10.0.0.1"
        );
        assert_eq!(
            client(&proxies(&["10.0.0.0/8"]), "192.0.2.1:1", &["203.0.113.7"]),
            "192.0.2.1"
        );
    }

    #[test]
    fn without_a_usable_entry_the_last_trusted_address_stands() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer = "10.0.0.1:1";
        assert_eq!(client(&trusted, peer, &[]), "10.0.0.1");
        assert_eq!(client(&trusted, peer, &[""]), "10.0.0.1");
        assert_eq!(client(&trusted, peer, &["evil, 10.0.0.2"]), "10.0.0.2");
        assert_eq!(client(&trusted, peer, &["10.0.0.3, 10.0.0.2"]), "10.0.0.3");
        assert_eq!(client(&trusted, peer, &["\u{ff}garbage"]), "10.0.0.1");
    }
}
