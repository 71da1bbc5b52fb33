//! Header rewriting between client and instance: hop-by-hop headers are
//! the connection's own and never forwarded; X-Forwarded-* tell the app who
//! asked and how; every request carries an id.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// plus the older ones proxies still see.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The longest client-sent request id passed on; longer ones are replaced.
const MAX_REQUEST_ID: usize = 200;

/// Removes hop-by-hop headers and those the Connection header names. An
/// upgrade (WebSocket) keeps `Upgrade` and gets `Connection: upgrade` back,
/// since the upgrade has to reach the other side; otherwise `Upgrade` goes
/// too.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the few names they
    // have is cheaper than a hashed removal per hop-by-hop name.
    if !keep_upgrade
        && !headers
            .keys()
            .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether an HTTP/1.1 request asks to switch to WebSocket: `Connection`
/// lists `upgrade` and `Upgrade` is `websocket`. Only WebSocket is
/// tunnelled: any other protocol (`h2c`) would carry the rest of the
/// connection past routing and header rewriting, so such a request goes on
/// as a plain one, its `Upgrade` dropped.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let websocket = match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    };
    websocket
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// What the edge says about the client and the request it got, which only
/// the edge may say: from a client that is not a trusted proxy, each is
/// dropped (and the X-Forwarded-* ones set from the connection).
static FORWARDING: [HeaderName; 7] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-original-forwarded-for"),
];

/// Sets X-Forwarded-For, -Proto and -Host for the instance. From a
/// `trusted` peer (a load balancer in front) what it says is kept: the
/// client is appended to its X-Forwarded-For, and its -Proto and -Host
/// stay when it set them. From anyone else every forwarding header the
/// client sent is dropped, so no client can claim another address, scheme
/// or host to the apps.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: &HeaderValue,
    trusted: bool,
) {
    if !trusted {
        for name in &FORWARDING {
            headers.remove(name);
        }
        headers.insert(&X_FORWARDED_FOR, client.clone());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        headers.insert(&X_FORWARDED_HOST, host.clone());
        return;
    }
    let mut prior = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .peekable();
    let value = if prior.peek().is_none() {
        Some(client.clone())
    } else {
        let mut joined = prior.collect::<Vec<_>>().join(", ");
        joined.push_str(", ");
        joined.push_str(client.to_str().unwrap_or("unknown"));
        HeaderValue::from_str(&joined).ok()
    };
    if let Some(v) = value {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
}

/// The request's id: the client's X-Request-Id when it is a sane token
/// (visible ASCII, at most 200 bytes), else a new random one. Set on the
/// request and returned for the response.
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(&X_REQUEST_ID, id.clone());
    id
}

/// 128 random bits as 32 hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    /// Ids are cut from a block of this many bytes per thread: the id's
    /// two copies (request and response) then share one buffer, and a
    /// block serves 128 requests, where a value of its own would be an
    /// allocation for the id and another for its first copy.
    const BLOCK: usize = 32 * 128;
    thread_local! {
        static IDS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    }
    let bits = fastrand::u128(..);
    let mut text = [0u8; 32];
    for (i, c) in text.iter_mut().enumerate() {
        *c = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    let id = IDS.with_borrow_mut(|ids| {
        if ids.capacity() < text.len() {
            *ids = BytesMut::with_capacity(BLOCK);
        }
        ids.extend_from_slice(&text);
        ids.split_to(text.len()).freeze()
    });
    HeaderValue::from_maybe_shared(id).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
            ("cookie", "a=1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept", "cookie"]);
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = map(&[("accept", "*/*"), ("x-request-id", "a"), ("host", "a.com")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept", "host", "x-request-id"]);
        let mut h = map(&[("accept", "*/*"), ("upgrade", "h2c")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn upgrade_needs_both_headers_and_only_websocket_is_one() {
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
        for other in ["h2c", "websocket, h2c", "TLS/1.0"] {
            assert!(
                !wants_upgrade(&map(&[("connection", "upgrade"), ("upgrade", other)])),
                "{other}"
            );
        }
        assert!(wants_upgrade(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "WebSocket")
        ])));
        assert!(!wants_upgrade(&map(&[("connection", "upgrade")])));
        assert!(wants_upgrade(&map(&[
            ("connection", "keep-alive"),
            ("connection", "UPGRADE"),
            ("upgrade", "websocket"),
        ])));
    }

    #[test]
    fn a_client_cannot_claim_another_address_scheme_or_host() {
        let client = HeaderValue::from_static("203.0.113.7");
        let host = HeaderValue::from_static("blog.example.com");
        let sent = [
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("accept", "*/*"),
        ];
        let mut h = map(&sent);
        add_forwarded(&mut h, &client, "http", &host, false);
        assert_eq!(
            names(&h),
            [
                "accept",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "blog.example.com");
        // A trusted proxy in front is believed: the client is appended.
        let mut h = map(&sent);
        add_forwarded(&mut h, &client, "http", &host, true);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.example");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &HeaderValue::from_static("::1"),
            "http",
            &HeaderValue::from_static("a.com:8080"),
            true,
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.com:8080");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(request_id(&mut h), "abc-123");
        let mut h = HeaderMap::new();
        let id = request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(h["x-request-id"], id);
        assert_ne!(request_id(&mut HeaderMap::new()), id);
        let long = "a".repeat(201);
        let mut h = map(&[("x-request-id", &long)]);
        assert_eq!(request_id(&mut h).len(), 32);
        let mut h = map(&[("x-request-id", "has space")]);
        assert_ne!(request_id(&mut h), "has space");
    }

    #[test]
    fn new_request_ids_stay_whole_and_distinct_across_blocks() {
        let ids: Vec<HeaderValue> = (0..1000).map(|_| new_request_id()).collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|i| i.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.as_bytes().iter().all(u8::is_ascii_hexdigit))
        );
    }
}
