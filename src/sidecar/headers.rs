//! Header rules of a forwarding proxy (RFC 9110 §7.6): hop-by-hop fields, upgrades and
//! `X-Forwarded-*`, and the RFC 9112 rules hyper's parser leaves to the service. Pure functions
//! over `HeaderMap`, so the rules are unit-tested without sockets.

use http::Version;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Why a request is refused with 400 before it is forwarded: the RFC 9112 rules hyper leaves to
/// the service. Its parser (httparse) already refuses invalid field names, whitespace before the
/// colon or the first field, obs-fold, and framing it cannot trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("an HTTP/1.1 request needs a Host header")]
    NoHost,
    #[error("more than one Host header")]
    ManyHosts,
    /// RFC 9112 §6.1. hyper removes Content-Length before the service sees the request (and
    /// frames it by Transfer-Encoding), so [`super::framing`] reports this one.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
}

/// RFC 9112 §3.2: one `Host` in an HTTP/1.1 request, at most one in any request. With two, the
/// app and whatever sits in front of the sidecar may each believe a different one; without one,
/// the app would have to guess the site (and `X-Forwarded-Host` would be missing).
pub fn check_host(version: Version, headers: &HeaderMap) -> Result<(), Error> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(Error::ManyHosts),
        (None, _) if version == Version::HTTP_11 => Err(Error::NoHost),
        _ => Ok(()),
    }
}

/// True when `value` (a comma-separated list) contains `token`, compared case-insensitively.
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn any_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| has_token(v, token))
}

/// The request asks for a protocol upgrade: an `Upgrade` field and the `upgrade` token anywhere
/// in `Connection` (so `keep-alive, Upgrade` counts).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && any_has_token(headers, &header::CONNECTION, "upgrade")
}

/// The upgrade is to WebSocket (so the sidecar may speak its close handshake on shutdown).
pub fn is_websocket(headers: &HeaderMap) -> bool {
    any_has_token(headers, &header::UPGRADE, "websocket")
}

/// Remove the fields that describe this hop only: the ones `Connection` lists, `Connection`
/// itself, `Keep-Alive`, `TE`, `Transfer-Encoding` (hyper frames each hop itself), `Proxy-*`.
/// With `upgrade`, keep `Upgrade` and send `Connection: upgrade` so the next hop sees the
/// handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One look at each name first: most messages carry none of these fields, and each removal
    // costs a hash and a probe whether the field is there or not (callgrind: about 2,000
    // instructions per proxied request for the two calls, before this check).
    if headers.keys().any(is_hop_by_hop) {
        remove_hop_by_hop(headers, upgrade);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A field [`strip_hop_by_hop`] removes whatever `Connection` lists (`Upgrade` is put back for
/// an upgrade).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Only names other than the usual `keep-alive`/`close`/`upgrade` need collecting; the Vec
    // does not allocate in the common case.
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"upgrade")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                listed.push(name);
            }
        }
    }
    for name in listed {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TE);
    headers.remove(header::TRANSFER_ENCODING);
    if !upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Append the client to `X-Forwarded-For`; set `X-Forwarded-Proto` and `X-Forwarded-Host` unless
/// a proxy in front (the cluster's nginx) already did.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    // Entries: one hash and probe per field (this runs for every proxied request).
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut prev) => {
            let mut joined = Vec::with_capacity(prev.get().len() + 2 + client_ip.len());
            joined.extend_from_slice(prev.get().as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            prev.insert(HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone()));
        }
        Entry::Vacant(none) => {
            none.insert(client_ip.clone());
        }
    }
    headers.entry(&X_FORWARDED_PROTO).or_insert_with(|| HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.entry(&X_FORWARDED_HOST).or_insert(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn one_host_is_required_in_http_1_1_and_more_than_one_is_refused_in_any_version() {
        assert_eq!(check_host(Version::HTTP_11, &map(&[("host", "h")])), Ok(()));
        assert_eq!(check_host(Version::HTTP_11, &map(&[])), Err(Error::NoHost));
        assert_eq!(check_host(Version::HTTP_11, &map(&[("host", "h"), ("host", "h")])), Err(Error::ManyHosts));
        assert_eq!(check_host(Version::HTTP_10, &map(&[])), Ok(()));
        assert_eq!(check_host(Version::HTTP_10, &map(&[("host", "h"), ("host", "e")])), Err(Error::ManyHosts));
    }

    #[test]
    fn upgrade_token_counts_anywhere_in_connection_and_in_any_case() {
        assert!(wants_upgrade(&map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
        assert!(wants_upgrade(&map(&[("connection", "keep-alive"), ("connection", "UPGRADE"), ("upgrade", "h2c")])));
        assert!(!wants_upgrade(&map(&[("connection", "upgraded"), ("upgrade", "websocket")])));
        assert!(!wants_upgrade(&map(&[("connection", "upgrade")])));
        assert!(is_websocket(&map(&[("upgrade", "WebSocket")])));
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_lists_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("host", "example"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "host"]);
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
        ] {
            let mut h = map(&[(name, "x"), ("x-kept", "yes")]);
            strip_hop_by_hop(&mut h, false);
            let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-kept"], "{name}");
        }
        let mut plain = map(&[("host", "example"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_a_plain_connection_upgrade() {
        let mut h = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_and_host_are_kept_when_present() {
        let ip = HeaderValue::from_static("10.0.0.7");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https"), ("host", "h")]);
        add_forwarded(&mut h, &ip);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "h");

        let mut h = map(&[("host", "h:1")]);
        add_forwarded(&mut h, &ip);
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "h:1");
    }
}
