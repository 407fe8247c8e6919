//! What the backend hears: the request's target checked and normalised, hop-by-hop headers
//! removed, forwarded headers written. Pure functions of the request head, tested here.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

/// A request head the gateway refuses to route (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadRequest {
    TwoHosts,
    NoHost,
    BadHost,
    /// A tunnel request: the gateway forwards requests, it does not open tunnels.
    Connect,
}

impl BadRequest {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            BadRequest::TwoHosts => "more than one Host header",
            BadRequest::NoHost => "HTTP/1.1 request without Host",
            BadRequest::BadHost => "Host is not a host[:port] authority",
            BadRequest::Connect => "CONNECT is not supported",
        }
    }

    pub(super) fn status(self) -> StatusCode {
        match self {
            BadRequest::TwoHosts | BadRequest::NoHost | BadRequest::BadHost => {
                StatusCode::BAD_REQUEST
            }
            BadRequest::Connect => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// Where a request goes, from its head.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target<'a> {
    /// What routes compare (see [`RouteQuery::host`]); `None` when the request names no
    /// authority (HTTP/1.0 without `Host`, or an empty `Host`).
    pub(super) host: Option<Cow<'a, str>>,
}

/// The request's authority and routing host: an absolute-form URI's (whose `Host` is
/// ignored, RFC 9112 §3.2.2), else the `Host` header's. More than one `Host`, none in
/// HTTP/1.1, or a value that is not `host[:port]` is a bad request (RFC 9112 §3.2); so is
/// CONNECT, whose authority-form target is a tunnel's end, not a request's.
pub(super) fn target<B>(req: &Request<B>) -> Result<Target<'_>, BadRequest> {
    if req.method() == Method::CONNECT {
        return Err(BadRequest::Connect);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::TwoHosts);
    }
    if host_header.is_none() && req.version() == Version::HTTP_11 {
        return Err(BadRequest::NoHost);
    }
    // Checked even when an absolute-form URI overrides it: it goes nowhere, but a malformed
    // one marks a client (or a proxy before it) not to trust further.
    let from_header = match host_header.map(HeaderValue::to_str) {
        None | Some(Ok("")) => None,
        Some(Ok(value)) => Some(authority_host(value).ok_or(BadRequest::BadHost)?),
        Some(Err(_)) => return Err(BadRequest::BadHost),
    };
    let host = match req.uri().authority() {
        Some(authority) => Some(authority_host(authority.as_str()).ok_or(BadRequest::BadHost)?),
        // An empty Host says the target has no authority (RFC 9112 §3.2).
        None => from_header,
    };
    Ok(Target {
        host: host.map(route_host),
    })
}

/// The host part of `host[:port]` (RFC 3986 §3.2.2: a reg-name, an IPv4 address or a
/// bracketed IPv6 address; `:` and an optional port after), or `None` if it is not one.
/// Userinfo (`user@host`) is refused: RFC 9110 §4.2.4 deprecates it.
fn authority_host(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, port) = authority.split_at(end + 1);
        host[1..end].parse::<Ipv6Addr>().ok()?;
        (host, port)
    } else {
        let (host, port) = match authority.rfind(':') {
            Some(i) => authority.split_at(i),
            None => (authority, ""),
        };
        let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
        if host.is_empty() || !host.bytes().all(reg_name) {
            return None;
        }
        (host, port)
    };
    if let Some(digits) = port.strip_prefix(':') {
        if !digits.is_empty() && digits.parse::<u16>().is_err() {
            return None;
        }
        if digits.starts_with('+') {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    Some(host)
}

/// The host as routes are written: lower-case, no trailing dot, an IPv6 address in brackets
/// in its shortest form. Borrowed unless something had to change.
fn route_host(host: &str) -> Cow<'_, str> {
    if let Some(ip) = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<Ipv6Addr>().ok())
    {
        return Cow::Owned(format!("[{ip}]"));
    }
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

pub(super) fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if uri.authority().is_some() => {
            Uri::try_from(pq.as_str()).unwrap_or_else(|_| Uri::from_static("/"))
        }
        Some(_) => uri.clone(),
        None => Uri::from_static("/"),
    }
}

/// Headers a `Connection` token may not remove: what the gateway routed on and tells the
/// backend, message framing, and the WebSocket handshake. RFC 9110 §7.6.1 lets a sender
/// name any field there; a client naming these would take from the backend what the
/// gateway vouches for.
const KEPT_END_TO_END: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

/// Removed on every hop (RFC 9110 §7.6.1, and the `Keep-Alive` and `Proxy-Connection` of
/// older peers). `Transfer-Encoding` goes too: hyper frames each hop's body itself.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// RFC 9110 §7.6.1: removes the hop-by-hop headers, and those the `Connection` header names
/// unless they are in [`KEPT_END_TO_END`]. Allocates only for a token naming another field.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            let listed = |list: &[&str]| list.iter().any(|n| token.eq_ignore_ascii_case(n));
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
                || listed(&KEPT_END_TO_END)
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets `Host`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// (RFC 7239) from what the gateway saw. `Host` becomes an absolute-form URI's authority
/// (RFC 9112 §3.2.2); `target` has checked that there is one `Host` at most and that it
/// is a plain `host[:port]`. A trusted proxy's lists are appended to and its
/// `X-Forwarded-Proto` and `X-Forwarded-Host` kept; anyone else's are replaced. A client
/// without an address (a Unix socket's) adds nothing to `X-Forwarded-For` and is
/// `for=unknown` in `Forwarded` (RFC 7239 §6.2).
pub(super) fn add_forwarding(
    headers: &mut HeaderMap,
    uri: &Uri,
    client: Option<IpAddr>,
    tls: bool,
    trusted: bool,
) {
    if let Some(authority) = uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    if !trusted {
        headers.remove(X_FORWARDED_FOR);
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(X_FORWARDED_HOST);
        headers.remove(header::FORWARDED);
    }
    let ip = client.map(|ip| ip.to_canonical());
    let proto = if tls { "https" } else { "http" };
    // `fmt::Write` into a `String` cannot fail.
    if let Some(ip) = ip {
        let mut xff = joined(headers, X_FORWARDED_FOR);
        let _ = write!(xff, "{ip}");
        set(headers, X_FORWARDED_FOR, xff);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    let authority = headers.get(header::HOST).filter(|h| !h.is_empty()).cloned();
    if let Some(authority) = &authority
        && !headers.contains_key(X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST, authority.clone());
    }
    let mut forwarded = joined(headers, header::FORWARDED);
    let _ = match ip {
        Some(IpAddr::V4(v4)) => write!(forwarded, "for={v4};proto={proto}"),
        Some(IpAddr::V6(v6)) => write!(forwarded, "for=\"[{v6}]\";proto={proto}"),
        None => write!(forwarded, "for=unknown;proto={proto}"),
    };
    if let Some(authority) = authority.as_ref().and_then(|a| a.to_str().ok()) {
        // An authority holds no quote or backslash (`authority_host`).
        let _ = write!(forwarded, ";host=\"{authority}\"");
    }
    set(headers, header::FORWARDED, forwarded);
}

/// The listener's `client_cert_header`: whatever the client sent under that name is
/// removed, certificate or not, so that only the gateway speaks for the certificate; then
/// the verified certificate's subject is set when there is one.
pub(super) fn set_client_subject(
    headers: &mut HeaderMap,
    name: Option<&HeaderName>,
    subject: Option<&HeaderValue>,
) {
    let Some(name) = name else { return };
    headers.remove(name);
    if let Some(subject) = subject {
        headers.insert(name.clone(), subject.clone());
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `name`'s values (a trusted proxy's list), each followed by `, `, ready for this hop's.
fn joined(headers: &HeaderMap, name: HeaderName) -> String {
    let mut list = String::with_capacity(64);
    for value in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        list.push_str(value);
        list.push_str(", ");
    }
    list
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: String) {
    // Taken over without a copy.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(name, value);
    }
}

/// Whether a `Sec-WebSocket-Extensions` value agrees to permessage-deflate (RFC 7692).
pub(super) fn permessage_deflate(extensions: &str) -> bool {
    extensions
        .split([',', ';'])
        .any(|t| t.trim().eq_ignore_ascii_case("permessage-deflate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut req = Request::get(uri).body(()).expect("request");
        for host in hosts {
            req.headers_mut()
                .append(header::HOST, HeaderValue::from_str(host).expect("value"));
        }
        req
    }

    fn host_of(uri: &str, hosts: &[&str]) -> Result<Option<String>, BadRequest> {
        target(&request(uri, hosts)).map(|t| t.host.map(Cow::into_owned))
    }

    #[test]
    fn host_is_lowercased_without_port_or_trailing_dot() {
        assert_eq!(
            host_of("/", &["Example.COM.:8443"]),
            Ok(Some("example.com".into()))
        );
        assert_eq!(host_of("/", &["a.test"]), Ok(Some("a.test".into())));
        assert_eq!(host_of("/", &["a.test:"]), Ok(Some("a.test".into())));
        assert_eq!(
            host_of("/", &["127.0.0.1:80"]),
            Ok(Some("127.0.0.1".into()))
        );
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets_in_shortest_form() {
        assert_eq!(host_of("/", &["[::1]:8080"]), Ok(Some("[::1]".into())));
        assert_eq!(host_of("/", &["[::1]"]), Ok(Some("[::1]".into())));
        assert_eq!(
            host_of("/", &["[0:0:0:0:0:0:0:1]:80"]),
            Ok(Some("[::1]".into()))
        );
        assert_eq!(
            host_of("/", &["[2001:DB8::A]"]),
            Ok(Some("[2001:db8::a]".into()))
        );
        assert_eq!(
            host_of("http://[::1]:8080/x", &["b.test"]),
            Ok(Some("[::1]".into()))
        );
    }

    #[test]
    fn an_absolute_form_target_overrides_host() {
        assert_eq!(
            host_of("http://A.test:8080/x?y", &["b.test"]),
            Ok(Some("a.test".into()))
        );
    }

    #[test]
    fn host_must_be_one_authority() {
        assert_eq!(
            host_of("/", &["a.test", "b.test"]),
            Err(BadRequest::TwoHosts)
        );
        assert_eq!(
            host_of("/", &["a.test", "a.test"]),
            Err(BadRequest::TwoHosts)
        );
        assert_eq!(host_of("/", &[]), Err(BadRequest::NoHost));
        assert_eq!(host_of("http://a.test/", &[]), Err(BadRequest::NoHost));
        for bad in [
            "a b",
            "user@a.test",
            "a.test:80:80",
            "a.test:99999",
            "a.test:+80",
            "a.test:8o",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[a.test]",
            "::1",
            "a.test/x",
            "a\"b",
            "a\\b",
            ":80",
        ] {
            let expected = if bad == "[::1]:" {
                Ok(Some("[::1]".into()))
            } else {
                Err(BadRequest::BadHost)
            };
            assert_eq!(host_of("/", &[bad]), expected, "{bad}");
        }
        assert_eq!(
            host_of("http://user@a.test/", &["a.test"]),
            Err(BadRequest::BadHost)
        );
        // Checked though the absolute-form target overrides it.
        assert_eq!(
            host_of("http://a.test/", &["a b"]),
            Err(BadRequest::BadHost)
        );
    }

    #[test]
    fn empty_host_and_http10_without_host_route_on_no_host() {
        assert_eq!(host_of("/", &[""]), Ok(None));
        let mut old = request("/", &[]);
        *old.version_mut() = Version::HTTP_10;
        assert_eq!(target(&old).map(|t| t.host), Ok(None));
    }

    #[test]
    fn connect_is_refused() {
        let mut req = request("a.test:443", &["a.test:443"]);
        *req.method_mut() = Method::CONNECT;
        assert_eq!(target(&req).map(|_| ()), Err(BadRequest::Connect));
        assert_eq!(BadRequest::Connect.status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn absolute_form_is_forwarded_in_origin_form() {
        let uri: Uri = "http://a.test:8080/p/q?x=1".parse().expect("uri");
        assert_eq!(origin_form(&uri), "/p/q?x=1");
        let uri: Uri = "http://a.test".parse().expect("uri");
        assert_eq!(origin_form(&uri), "/");
        let uri: Uri = "/already?y".parse().expect("uri");
        assert_eq!(origin_form(&uri), "/already?y");
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn connection_cannot_remove_what_the_gateway_and_backend_rely_on() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Host, x-forwarded-for, Content-Length"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(
                "forwarded,x-forwarded-host , x-forwarded-proto, sec-websocket-key, close, ,",
            ),
        );
        for (name, value) in [
            ("host", "a.test"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "a.test"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=10.0.0.1"),
            ("content-length", "5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 7, "{h:?}");
        assert!(!h.contains_key(header::CONNECTION));
    }

    fn forwarded(
        h: &mut HeaderMap,
        uri: &str,
        client: &str,
        tls: bool,
        trusted: bool,
    ) -> Vec<(String, String)> {
        let uri: Uri = uri.parse().expect("uri");
        add_forwarding(h, &uri, Some(client.parse().expect("ip")), tls, trusted);
        let mut all: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("text").to_owned()))
            .collect();
        all.sort();
        all
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    fn client_sent() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("chat.example.com:8443"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.9;proto=http"),
        );
        h
    }

    #[test]
    fn an_untrusted_clients_forwarded_headers_are_replaced() {
        let mut h = client_sent();
        let all = forwarded(&mut h, "/", "::1", true, false);
        assert_eq!(
            all,
            pairs(&[
                (
                    "forwarded",
                    "for=\"[::1]\";proto=https;host=\"chat.example.com:8443\""
                ),
                ("host", "chat.example.com:8443"),
                ("x-forwarded-for", "::1"),
                ("x-forwarded-host", "chat.example.com:8443"),
                ("x-forwarded-proto", "https"),
            ])
        );
    }

    #[test]
    fn a_trusted_proxys_forwarded_headers_are_appended_to() {
        let mut h = client_sent();
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.2"));
        let all = forwarded(&mut h, "/", "::ffff:10.0.0.5", false, true);
        assert_eq!(
            all,
            pairs(&[
                (
                    "forwarded",
                    "for=203.0.113.9;proto=http, for=10.0.0.5;proto=http;host=\"chat.example.com:8443\""
                ),
                ("host", "chat.example.com:8443"),
                ("x-forwarded-for", "203.0.113.9, 198.51.100.2, 10.0.0.5"),
                ("x-forwarded-host", "evil.test"),
                ("x-forwarded-proto", "http"),
            ])
        );
    }

    #[test]
    fn host_becomes_the_absolute_form_authority() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("b.test"));
        let all = forwarded(&mut h, "http://a.test:81/x", "127.0.0.1", false, false);
        assert_eq!(
            all,
            pairs(&[
                ("forwarded", "for=127.0.0.1;proto=http;host=\"a.test:81\""),
                ("host", "a.test:81"),
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-host", "a.test:81"),
                ("x-forwarded-proto", "http"),
            ])
        );
    }

    #[test]
    fn no_host_no_host_parameters() {
        let mut h = HeaderMap::new();
        let all = forwarded(&mut h, "/", "127.0.0.1", false, false);
        assert_eq!(
            all,
            pairs(&[
                ("forwarded", "for=127.0.0.1;proto=http"),
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-proto", "http"),
            ])
        );
    }

    #[test]
    fn the_client_cert_header_is_only_ever_the_gateways() {
        let name = HeaderName::from_static("x-client-cert-subject");
        let forged = || {
            let mut headers = HeaderMap::new();
            headers.append(&name, HeaderValue::from_static("CN=admin"));
            headers.append(&name, HeaderValue::from_static("CN=root"));
            headers
        };
        let subject = HeaderValue::from_static("CN=client-1,O=Example");

        let mut headers = forged();
        set_client_subject(&mut headers, Some(&name), Some(&subject));
        let values: Vec<_> = headers.get_all(&name).iter().collect();
        assert_eq!(values, [&subject]);

        let mut headers = forged();
        set_client_subject(&mut headers, Some(&name), None);
        assert!(!headers.contains_key(&name));

        // A listener without the key leaves the header alone: it is not the gateway's.
        let mut headers = forged();
        set_client_subject(&mut headers, None, Some(&subject));
        assert_eq!(headers.get_all(&name).iter().count(), 2);
    }
}
