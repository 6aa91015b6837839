//! The built-in web client: its files, embedded in the binary at build
//! time, and the HTTP answers that serve them at `GET /` and `/web/…` (off
//! with `chatd run --no-web`).
//!
//! Every answer carries an `ETag` (a hash of the file, computed at compile
//! time) with `Cache-Control: no-cache`, so a browser revalidates each load
//! and an upgraded binary's files are never served stale from its cache; and
//! headers that confine the page: a Content-Security-Policy that allows
//! only this origin (scripts, styles, and the Socket.IO connection, polling
//! or websocket), no framing, no MIME sniffing, no referrer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};

/// The policy of every web client answer: nothing but this origin's own
/// scripts, styles, icon and connections ('self' covers `wss:` to the same
/// host); no inline code, no `<base>`, no form posts, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file and how it is served.
struct Asset {
    /// The URL path it answers.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
    /// Its strong `ETag`: a quoted FNV-1a hash of `body`, as text.
    etag: [u8; 18],
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        Asset {
            path,
            content_type,
            body,
            etag: etag_of(body),
        }
    }

    fn etag(&'static self) -> &'static str {
        // Built from ASCII hex digits and quotes by etag_of.
        std::str::from_utf8(&self.etag).unwrap_or("\"\"")
    }
}

// A `static`, not a `const`: the ETags are references into it.
static ASSETS: [Asset; 5] = [
    Asset::new(
        "/",
        "text/html; charset=utf-8",
        include_bytes!("index.html"),
    ),
    Asset::new(
        "/web/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("app.js"),
    ),
    Asset::new(
        "/web/app.css",
        "text/css; charset=utf-8",
        include_bytes!("app.css"),
    ),
    Asset::new("/web/icon.svg", "image/svg+xml", include_bytes!("icon.svg")),
    // The stock socket.io-client browser bundle, byte for byte (see
    // tests/node/webbundle.test.mjs).
    Asset::new(
        "/web/socket.io.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("socket.io.min.js"),
    ),
];

/// The FNV-1a 64-bit hash of `bytes` as a quoted ETag of 16 hex digits.
const fn etag_of(bytes: &[u8]) -> [u8; 18] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tag = [b'"'; 18];
    let mut digit = 0;
    while digit < 16 {
        tag[1 + digit] = HEX[((hash >> (60 - 4 * digit)) & 0xf) as usize];
        digit += 1;
    }
    tag
}

/// The answer to a request for `path`, if `path` is one of the web
/// client's: the file (`GET`, `HEAD`), `304 Not Modified` when the
/// request's `If-None-Match` names its current ETag, or `405` for any
/// other method. `None` for every other path.
pub fn answer(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let asset = ASSETS.iter().find(|asset| asset.path == path)?;
    let etag = asset.etag();
    let (status, body) = if method != Method::GET && method != Method::HEAD {
        (StatusCode::METHOD_NOT_ALLOWED, Bytes::new())
    } else if headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|value| matches_etag(value, etag))
    {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(asset.body))
    };
    let mut answer = Response::new(Full::new(body));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    } else {
        headers.insert(header::ETAG, HeaderValue::from_static(etag));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if status == StatusCode::OK {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
        }
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // For browsers that predate CSP's frame-ancestors.
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Some(answer)
}

/// True if an `If-None-Match` value (`*`, or a list of tags, weak or
/// strong: RFC 9110 §13.1.2 compares them weakly) names `etag`.
fn matches_etag(value: &HeaderValue, etag: &str) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, if_none_match: Option<&str>) -> Option<Response<Full<Bytes>>> {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        }
        answer(&Method::GET, path, &headers)
    }

    #[test]
    fn serves_each_file_with_its_type_tag_and_the_security_headers() {
        for asset in &ASSETS {
            let answer = get(asset.path, None).expect("a web client path");
            assert_eq!(answer.status(), StatusCode::OK, "{}", asset.path);
            let headers = answer.headers();
            assert_eq!(headers[header::CONTENT_TYPE], asset.content_type);
            assert_eq!(headers[header::ETAG], asset.etag());
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
            let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
            assert!(policy.contains("default-src 'none'"), "{policy}");
        }
    }

    #[test]
    fn etags_are_quoted_hex_and_differ_between_files() {
        let tags: Vec<&str> = ASSETS.iter().map(Asset::etag).collect();
        for tag in &tags {
            assert_eq!(tag.len(), 18);
            assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
            assert!(tag[1..17].bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
        }
        let mut unique = tags.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), tags.len(), "{tags:?}");
        // FNV-1a's published test vector: "a" → af63dc4c8601ec8c.
        assert_eq!(&etag_of(b"a"), b"\"af63dc4c8601ec8c\"");
    }

    #[test]
    fn a_matching_if_none_match_gets_304_without_a_body() {
        let tag = ASSETS[0].etag();
        let weak_in_list = format!("\"0000000000000000\", W/{tag}");
        for value in [tag, &weak_in_list, "*"] {
            let answer = get("/", Some(value)).unwrap();
            assert_eq!(answer.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(answer.headers()[header::ETAG], tag);
            assert!(answer.headers().get(header::CONTENT_TYPE).is_none());
        }
        let stale = get("/", Some("\"0000000000000000\"")).unwrap();
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[test]
    fn other_methods_get_405_and_other_paths_none() {
        let answer = answer(&Method::POST, "/", &HeaderMap::new()).unwrap();
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers()[header::ALLOW], "GET, HEAD");
        for path in ["/index.html", "/web/", "/web/missing.js", "/socket.io/", ""] {
            assert!(get(path, None).is_none(), "{path}");
        }
    }
}
