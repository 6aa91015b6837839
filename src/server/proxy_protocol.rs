//! HAProxy's PROXY protocol, versions 1 (text) and 2 (binary): the header a
//! proxy such as HAProxy (`send-proxy`, `send-proxy-v2`) writes before the
//! client's bytes to say whom the connection is for. Pure parsing here; the
//! listener reads it only from trusted proxies, before TLS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first bytes of a version 1 header.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The signature that opens a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The most bytes the peeked start of a stream needs to tell a header
/// from something else.
pub const SNIFF_LEN: usize = V2_SIGNATURE.len();

/// A complete header at the start of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes of the header, to be consumed before the client's own.
    pub len: usize,
    /// The client's address; `None` when the proxy speaks for itself (a
    /// health check: `LOCAL`, `UNKNOWN`, or an unsupported family).
    pub source: Option<SocketAddr>,
}

/// Why a stream's start is not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// A version 1 header that is malformed or too long.
    #[error("malformed PROXY protocol v1 header")]
    V1,
    /// A version 2 header that is malformed.
    #[error("malformed PROXY protocol v2 header")]
    V2,
}

/// Whether `start` (the first bytes of a stream) opens a header: `Some(true)`
/// or `Some(false)` once that is certain, `None` while more bytes are needed.
pub fn sniff(start: &[u8]) -> Option<bool> {
    for prefix in [V1_PREFIX, &V2_SIGNATURE[..]] {
        let n = start.len().min(prefix.len());
        if start[..n] == prefix[..n] {
            return if n == prefix.len() { Some(true) } else { None };
        }
    }
    Some(false)
}

/// Parses the header at the start of `bytes`: `Ok(None)` while it is
/// incomplete. Call it only when [`sniff`] said there is one.
pub fn parse(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    if bytes.starts_with(V2_SIGNATURE) {
        parse_v2(bytes)
    } else {
        parse_v1(bytes)
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(ProxyHeaderError::V1)
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| ProxyHeaderError::V1)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            source,
            _destination,
            port,
            _,
        ] => {
            let ip: IpAddr = source.parse().map_err(|_| ProxyHeaderError::V1)?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(ProxyHeaderError::V1);
            }
            let port: u16 = port.parse().map_err(|_| ProxyHeaderError::V1)?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyHeaderError::V1),
    };
    Ok(Some(ProxyHeader {
        len: end + 2,
        source,
    }))
}

fn parse_v2(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let Some(&[version_command, family, len_hi, len_lo]) = bytes.get(12..16) else {
        return Ok(None);
    };
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::V2);
    }
    let len = 16 + usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let Some(body) = bytes.get(16..len) else {
        return Ok(None);
    };
    let source = match (version_command & 0x0f, family >> 4) {
        // LOCAL: the proxy's own connection (a health check).
        (0, _) => None,
        (1, 1) => {
            let addresses = body.get(..12).ok_or(ProxyHeaderError::V2)?;
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (1, 2) => {
            let addresses = body.get(..36).ok_or(ProxyHeaderError::V2)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // Unix sockets and unspecified families carry no client address.
        (1, _) => None,
        _ => return Err(ProxyHeaderError::V2),
    };
    Ok(Some(ProxyHeader { len, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([0x20 | command, family]);
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn sniffs_headers_apart_from_tls_and_http() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"PRO"), None);
        assert_eq!(sniff(b"PROXY "), Some(true));
        assert_eq!(sniff(b"POST / HTTP/1.1"), Some(false));
        assert_eq!(sniff(b"GET /"), Some(false));
        assert_eq!(sniff(&[0x16, 0x03, 0x01]), Some(false));
        assert_eq!(sniff(b"\r\n\r\n\0"), None);
        assert_eq!(sniff(V2_SIGNATURE), Some(true));
    }

    #[test]
    fn parses_v1() {
        let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(header),
            Ok(Some(ProxyHeader {
                len: 43,
                source: Some("203.0.113.7:56324".parse().unwrap())
            }))
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            parse(v6).unwrap().unwrap().source,
            Some("[2001:db8::7]:4000".parse().unwrap())
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Ok(Some(ProxyHeader {
                len: 15,
                source: None
            }))
        );
        assert_eq!(parse(&header[..20]), Ok(None));
        for bad in [
            &b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 2\r\n",
            b"PROXY TCP5 1.2.3.4 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
        ] {
            assert_eq!(parse(bad), Err(ProxyHeaderError::V1), "{bad:?}");
        }
        let endless = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(parse(&endless), Err(ProxyHeaderError::V1));
    }

    #[test]
    fn parses_v2() {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1];
        body.extend(56324u16.to_be_bytes());
        body.extend(443u16.to_be_bytes());
        body.extend([0x04, 0, 1, 0]); // a TLV, skipped
        let header = v2(1, 0x11, &body);
        assert_eq!(
            parse(&header),
            Ok(Some(ProxyHeader {
                len: 16 + body.len(),
                source: Some("203.0.113.7:56324".parse().unwrap())
            }))
        );
        assert_eq!(parse(&header[..header.len() - 1]), Ok(None));

        let mut body6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body6.extend([0; 16]);
        body6.extend(4000u16.to_be_bytes());
        body6.extend(443u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body6)).unwrap().unwrap().source,
            Some("[2001:db8::7]:4000".parse().unwrap())
        );
        assert_eq!(parse(&v2(0, 0, &[])).unwrap().unwrap().source, None);
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Err(ProxyHeaderError::V2));
        assert_eq!(parse(&v2(7, 0x11, &body)), Err(ProxyHeaderError::V2));
    }
}
