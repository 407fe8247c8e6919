//! Plain HTTP through the gateway: forwarding headers, keep-alive, the gateway's own
//! answers (404, 502, 400, 431, 504), what the backend hears whatever the client wrote, and
//! timers on silent backends and stalled bodies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn http_config(app: SocketAddr, dead: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

  [[listener.route]]
  name = "down"
  protocol = "http"
  path_prefix = "/down"
  backend = "dead"

  [[listener.route]]
  name = "app"
  protocol = "http"
  host = "localhost"
  backend = "app"

[[backend]]
name = "app"
servers = ["{app}"]

[[backend]]
name = "dead"
servers = ["{dead}"]
"#
    )
}

async fn setup() -> (Pki, Gateway) {
    let pki = Pki::new();
    let app = ws_echo().await;
    let dead = dead_port().await;
    let gw = Gateway::start(pki.path(), &http_config(app, dead)).await;
    (pki, gw)
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut req = http::Request::get(path).header("host", host);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn client(pki: &Pki, gw: &Gateway) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tls = tls_connect(
        gw.addr("edge"),
        client_config(&[&pki.pki.ca.cert], &[b"http/1.1"]),
        "localhost",
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn requests_are_forwarded_with_forwarding_headers_over_keep_alive() {
    let (pki, gw) = setup().await;
    let mut sender = client(&pki, &gw).await;

    let (status, page) = get(
        &mut sender,
        "localhost",
        "/hello?x=1",
        &[
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.starts_with("GET /hello?x=1\n"), "{page}");
    // The client is no trusted proxy: its X-Forwarded-For is replaced, not appended to.
    assert!(page.contains("x-forwarded-for: 127.0.0.1\n"), "{page}");
    assert!(!page.contains("203.0.113.7"), "{page}");
    assert!(page.contains("x-forwarded-proto: https\n"), "{page}");
    assert!(page.contains("x-forwarded-host: localhost\n"), "{page}");
    assert!(
        page.contains("forwarded: for=127.0.0.1;proto=https;host=\"localhost\"\n"),
        "{page}"
    );
    assert!(!page.contains("x-hop"), "hop-by-hop header leaked: {page}");

    // Second request on the same client connection.
    let (status, page) = get(&mut sender, "localhost", "/again", &[]).await;
    assert_eq!(status, 200);
    assert!(page.starts_with("GET /again\n"), "{page}");

    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[("listener", "edge"), ("protocol", "http")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_http_responses_total",
            &[("route", "app"), ("code", "200")]
        ),
        2.0
    );
    // HTTP-phase bytes reach the counters at request boundaries and at close.
    drop(sender);
    eventually("bytes flushed at close", || async {
        gw.metrics().await.get(
            "sockgate_bytes_total",
            &[("route", "app"), ("direction", "backend_to_client")],
        ) > 0.0
    })
    .await;
}

#[tokio::test]
async fn unknown_host_gets_404_and_is_counted() {
    let (pki, gw) = setup().await;
    let mut sender = client(&pki, &gw).await;
    let (status, _) = get(&mut sender, "other.example", "/", &[]).await;
    assert_eq!(status, 404);
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_unrouted_total",
            &[("listener", "edge"), ("protocol", "http")]
        ),
        1.0
    );
}

#[tokio::test]
async fn unreachable_backend_gets_502_and_is_counted() {
    let (pki, gw) = setup().await;
    let mut sender = client(&pki, &gw).await;
    let (status, body) = get(&mut sender, "localhost", "/down/x", &[]).await;
    assert_eq!(status, 502);
    assert!(body.contains("502 Bad Gateway"), "{body}");
    // The client connection survives a 502.
    let (status, _) = get(&mut sender, "localhost", "/fine", &[]).await;
    assert_eq!(status, 200);
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_backend_connect_errors_total",
            &[("backend", "dead")]
        ),
        1.0
    );
}

async fn raw_exchange(pki: &Pki, gw: &Gateway, request: &[u8]) -> (u16, String) {
    let mut tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    tls.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw))
        .await
        .expect("gateway answered and closed");
    parse_response(&raw)
}

#[tokio::test]
async fn malformed_request_gets_400() {
    let (pki, gw) = setup().await;
    let (status, _) = raw_exchange(&pki, &gw, b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn oversized_header_gets_431() {
    let (pki, gw) = setup().await;
    let big = "a".repeat(64 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    let (status, _) = raw_exchange(&pki, &gw, request.as_bytes()).await;
    assert_eq!(status, 431);
}

#[tokio::test]
async fn plaintext_listener_says_http_in_forwarded_proto() {
    let pki = Pki::new();
    let app = ws_echo().await;
    let gw = Gateway::start(
        pki.path(),
        &format!(
            r#"
[[listener]]
name = "plain"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "app"
  backend = "app"

[[backend]]
name = "app"
servers = ["{app}"]
"#
        ),
    )
    .await;
    let (status, page) = http_get(gw.addr("plain"), "/p").await;
    assert_eq!(status, 200);
    assert!(page.contains("x-forwarded-proto: http\n"), "{page}");
}

/// A plaintext gateway (listener `plain`) with `defaults` in [defaults], `listener` keys,
/// `routes` (each `[[listener.route]]`) and `backends`.
async fn plain_gateway(
    pki: &Pki,
    defaults: &str,
    listener: &str,
    routes: &str,
    backends: &str,
) -> Gateway {
    Gateway::start(
        pki.path(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[defaults]\n{defaults}\n\n\
             [[listener]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\n{routes}\n\n{backends}\n"
        ),
    )
    .await
}

/// One route `app` to the demo's header-echo backend, with `keys` added to the route.
async fn echo_route(keys: &str) -> (String, String) {
    let app = ws_echo().await;
    (
        format!("[[listener.route]]\nname = \"app\"\n{keys}\nbackend = \"app\"\n"),
        format!("[[backend]]\nname = \"app\"\nservers = [\"{app}\"]\n"),
    )
}

/// Sends `request` on a fresh plain connection and reads until the gateway closes it
/// (10 s at most): (status, body, the whole response as text).
pub async fn plain_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("the gateway answered and closed within 10s");
    let (status, body) = parse_response(&raw);
    (status, body, String::from_utf8_lossy(&raw).into_owned())
}

#[tokio::test]
async fn absolute_form_is_routed_and_forwarded_on_its_authority() {
    let pki = Pki::new();
    let (route, backend) = echo_route("host = \"a.test\"").await;
    let gw = plain_gateway(&pki, "", "", &route, &backend).await;
    // RFC 9112 §3.2.2: the absolute-form target wins over Host, for routing and for what
    // the backend is told.
    let (status, page, _) = plain_exchange(
        gw.addr("plain"),
        b"GET http://a.test:8080/p?q=1 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.starts_with("GET /p?q=1\n"), "{page}");
    assert!(page.contains("\nhost: a.test:8080\n"), "{page}");
    assert!(page.contains("x-forwarded-host: a.test:8080\n"), "{page}");
    assert!(
        page.contains("forwarded: for=127.0.0.1;proto=http;host=\"a.test:8080\"\n"),
        "{page}"
    );
    assert!(!page.contains("b.test"), "{page}");

    // Host alone routes as before.
    let (status, _, _) = plain_exchange(
        gw.addr("plain"),
        b"GET /p HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn two_hosts_no_host_or_a_malformed_host_get_400_and_the_connection_closes() {
    let pki = Pki::new();
    let (route, backend) = echo_route("").await;
    let gw = plain_gateway(&pki, "", "", &route, &backend).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test:80:80\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nHost: c.test\r\n\r\n",
    ] {
        // No `Connection: close`: the gateway closes on its own after a 400.
        let (status, body, raw) = plain_exchange(gw.addr("plain"), request).await;
        assert_eq!(status, 400, "{}: {raw}", String::from_utf8_lossy(request));
        assert!(body.contains("400 Bad Request"), "{body}");
        assert!(
            raw.to_ascii_lowercase().contains("connection: close"),
            "{raw}"
        );
    }
    let (status, _, _) = plain_exchange(
        gw.addr("plain"),
        b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
    )
    .await;
    assert_eq!(status, 501);
    // HTTP/1.0 needs no Host.
    let (status, page, _) = plain_exchange(gw.addr("plain"), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "{page}");
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_http_responses_total",
            &[("listener", "plain"), ("code", "400")]
        ),
        6.0
    );
}

#[tokio::test]
async fn connection_cannot_strip_what_the_gateway_and_the_backend_rely_on() {
    let pki = Pki::new();
    let (route, backend) = echo_route("").await;
    let gw = plain_gateway(&pki, "", "", &route, &backend).await;
    let (status, page, _) = plain_exchange(
        gw.addr("plain"),
        b"POST /form HTTP/1.1\r\nHost: localhost\r\n\
          Connection: close, host, x-forwarded-for, forwarded, x-forwarded-host, x-forwarded-proto, content-length, x-hop\r\n\
          X-Hop: 1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    for line in [
        "\nhost: localhost\n",
        "\ncontent-length: 5\n",
        "\nx-forwarded-for: 127.0.0.1\n",
        "\nx-forwarded-host: localhost\n",
        "\nx-forwarded-proto: http\n",
        "\nforwarded: for=127.0.0.1;proto=http;host=\"localhost\"\n",
    ] {
        assert!(page.contains(line), "missing {line:?} in {page}");
    }
    assert!(
        !page.contains("x-hop"),
        "a hop-by-hop header went through: {page}"
    );
    assert!(!page.contains("connection:"), "{page}");

    // An upgrade whose Connection names the handshake's own fields still upgrades.
    let mut tcp = TcpStream::connect(gw.addr("plain")).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Version, Upgrade, Host\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut head))
        .await
        .expect("an answer within 5s")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
}

#[tokio::test]
async fn ipv6_host_routes_match_bracketed_hosts() {
    let pki = Pki::new();
    let (route, backend) = echo_route("host = \"[::1]\"").await;
    let gw = plain_gateway(&pki, "", "", &route, &backend).await;
    for host in ["[::1]:8080", "[::1]", "[0:0:0:0:0:0:0:1]:8080"] {
        let request = format!("GET /v6 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, page, _) = plain_exchange(gw.addr("plain"), request.as_bytes()).await;
        assert_eq!(status, 200, "Host: {host}: {page}");
        assert!(page.contains(&format!("\nhost: {host}\n")), "{page}");
    }
    let (status, _, _) = plain_exchange(
        gw.addr("plain"),
        b"GET /v6 HTTP/1.1\r\nHost: [::2]:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
}

const SPOOFED: &str = "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: evil.test\r\n\
                       X-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4;proto=https\r\n";

#[tokio::test]
async fn forwarded_headers_from_a_client_that_is_no_trusted_proxy_are_replaced() {
    let pki = Pki::new();
    let (route, backend) = echo_route("").await;
    // Loopback is not in the list: the test client is an ordinary client.
    let gw = plain_gateway(
        &pki,
        "",
        "trusted_proxies = [\"10.0.0.0/8\", \"::2\"]",
        &route,
        &backend,
    )
    .await;
    let request =
        format!("GET /who HTTP/1.1\r\nHost: localhost\r\n{SPOOFED}Connection: close\r\n\r\n");
    let (status, page, _) = plain_exchange(gw.addr("plain"), request.as_bytes()).await;
    assert_eq!(status, 200, "{page}");
    for line in [
        "\nx-forwarded-for: 127.0.0.1\n",
        "\nx-forwarded-host: localhost\n",
        "\nx-forwarded-proto: http\n",
        "\nforwarded: for=127.0.0.1;proto=http;host=\"localhost\"\n",
    ] {
        assert!(page.contains(line), "missing {line:?} in {page}");
    }
    assert!(!page.contains("1.2.3.4"), "{page}");
    assert!(!page.contains("evil.test"), "{page}");
    assert!(!page.contains("https"), "{page}");
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_appended_to() {
    let pki = Pki::new();
    let (route, backend) = echo_route("").await;
    let gw = plain_gateway(
        &pki,
        "",
        "trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]",
        &route,
        &backend,
    )
    .await;
    let request =
        format!("GET /who HTTP/1.1\r\nHost: localhost\r\n{SPOOFED}Connection: close\r\n\r\n");
    let (status, page, _) = plain_exchange(gw.addr("plain"), request.as_bytes()).await;
    assert_eq!(status, 200, "{page}");
    for line in [
        "\nx-forwarded-for: 1.2.3.4, 127.0.0.1\n",
        "\nx-forwarded-host: evil.test\n",
        "\nx-forwarded-proto: https\n",
        "\nforwarded: for=1.2.3.4;proto=https, for=127.0.0.1;proto=http;host=\"localhost\"\n",
    ] {
        assert!(page.contains(line), "missing {line:?} in {page}");
    }
}

/// A backend that accepts connections and reads, but never writes. Reports each
/// connection's end (EOF or error) with how long it was open.
async fn silent_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Duration>) {
    let (listener, addr) = listen().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let opened = Instant::now();
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = tx.send(opened.elapsed());
            });
        }
    });
    (addr, rx)
}

/// The next connection end the backend reports, within `limit`.
async fn backend_closed(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Duration>,
    limit: Duration,
) -> Duration {
    tokio::time::timeout(limit, rx.recv())
        .await
        .expect("the gateway closed the backend connection in time")
        .expect("backend running")
}

#[tokio::test]
async fn a_backend_that_never_answers_gets_the_client_a_504_within_request_timeout() {
    let pki = Pki::new();
    let (silent, mut closed) = silent_backend().await;
    // The route's own value (400ms) overrides the default (30s).
    let gw = plain_gateway(
        &pki,
        "request_timeout = \"30s\"",
        "",
        "[[listener.route]]\nname = \"silent\"\nrequest_timeout = \"400ms\"\nbackend = \"silent\"\n",
        &format!("[[backend]]\nname = \"silent\"\nservers = [\"{silent}\"]\n"),
    )
    .await;
    let started = Instant::now();
    let (status, body, raw) = plain_exchange(
        gw.addr("plain"),
        b"GET /never HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, 504, "{raw}");
    assert!(body.contains("504 Gateway Timeout"), "{body}");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "504 after {waited:?}"
    );
    // The backend connection is closed too, not left holding a descriptor on each side.
    let open = backend_closed(&mut closed, Duration::from_secs(2)).await;
    assert!(
        open < Duration::from_secs(3),
        "backend connection open {open:?}"
    );

    // The wait for a WebSocket upgrade's answer is bounded the same way.
    let started = Instant::now();
    let (status, _, raw) = plain_exchange(
        gw.addr("plain"),
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(status, 504, "{raw}");
    assert!(started.elapsed() < Duration::from_secs(3));
    backend_closed(&mut closed, Duration::from_secs(2)).await;

    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_http_responses_total",
            &[("route", "silent"), ("code", "504")]
        ),
        2.0
    );
}

/// A backend that answers every request with a head promising 100 bytes, sends 10, and
/// stalls. Reports each connection's end as `silent_backend` does.
async fn stalling_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Duration>) {
    let (listener, addr) = listen().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let opened = Instant::now();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                    .await;
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = tx.send(opened.elapsed());
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_download_that_stalls_ends_after_idle_timeout() {
    let pki = Pki::new();
    let (stalling, mut closed) = stalling_backend().await;
    let gw = plain_gateway(
        &pki,
        "idle_timeout = \"500ms\"",
        "",
        "[[listener.route]]\nname = \"stall\"\nbackend = \"stall\"\n",
        &format!("[[backend]]\nname = \"stall\"\nservers = [\"{stalling}\"]\n"),
    )
    .await;
    let started = Instant::now();
    let (_, _, raw) = plain_exchange(
        gw.addr("plain"),
        b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let waited = started.elapsed();
    // The head and the 10 bytes came through, then the connection ended short of 100.
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n0123456789"), "{raw:?}");
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "ended after {waited:?}"
    );
    backend_closed(&mut closed, Duration::from_secs(2)).await;
}

/// A backend that reads a request head and its whole `Content-Length` body before it
/// answers 200. Reports each connection's end as `silent_backend` does.
async fn body_reading_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Duration>) {
    let (listener, addr) = listen().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let opened = Instant::now();
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                            Bytes::from(format!("got {} bytes", body.len())),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                let _ = tx.send(opened.elapsed());
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_upload_that_stalls_gets_408_after_idle_timeout() {
    let pki = Pki::new();
    let (backend, mut closed) = body_reading_backend().await;
    let gw = plain_gateway(
        &pki,
        "idle_timeout = \"500ms\"",
        "",
        "[[listener.route]]\nname = \"up\"\nbackend = \"up\"\n",
        &format!("[[backend]]\nname = \"up\"\nservers = [\"{backend}\"]\n"),
    )
    .await;
    // A whole body goes through.
    let (status, body, _) = plain_exchange(
        gw.addr("plain"),
        b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "got 10 bytes"));
    backend_closed(&mut closed, Duration::from_secs(2)).await;

    // 10 of 100 bytes, then nothing: the client's connection stays open on its side.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(gw.addr("plain")).await.unwrap();
    tcp.write_all(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
        .await
        .expect("the gateway answered and closed within 5s")
        .unwrap();
    let waited = started.elapsed();
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&raw));
    assert!(body.contains("408 Request Timeout"), "{body}");
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    backend_closed(&mut closed, Duration::from_secs(2)).await;
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_http_responses_total",
            &[("route", "up"), ("code", "408")]
        ),
        1.0
    );
}

/// A head still incomplete after `handshake_timeout` gets 408 and the connection closes,
/// on plain TCP and over TLS (where `close_notify` follows it); a whole head sent in
/// pieces within the time is served.
#[tokio::test]
async fn a_request_head_that_does_not_finish_in_time_gets_408() {
    let pki = Pki::new();
    let app = ws_echo().await;
    let gw = Gateway::start(
        pki.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
handshake_timeout = "1s"

[[listener]]
name = "plain"
listen = "127.0.0.1:0"
  [[listener.route]]
  name = "app"
  backend = "app"

[[listener]]
name = "tls"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}
  [[listener.route]]
  name = "app"
  backend = "app"

[[backend]]
name = "app"
servers = ["{app}"]
"#
        ),
    )
    .await;

    let started = Instant::now();
    let mut plain = TcpStream::connect(gw.addr("plain")).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    let mut tls = tls_connect(
        gw.addr("tls"),
        client_config(&[&pki.pki.ca.cert], &[b"http/1.1"]),
        "localhost",
    )
    .await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: loc").await.unwrap();
    let mut answer = Vec::new();
    // read_to_end succeeds only on close_notify: a bare FIN is an UnexpectedEof error.
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );

    // A head trickled in well within the time is served as usual.
    let mut slow = TcpStream::connect(gw.addr("plain")).await.unwrap();
    for piece in [
        "GET /ok HTTP/1.1\r\n",
        "Host: localhost\r\n",
        "connection: close\r\n\r\n",
    ] {
        slow.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let metrics = gw.metrics().await;
    assert_eq!(
        metrics.get("sockgate_http_responses_total", &[("code", "408")]),
        2.0
    );
    assert_eq!(
        metrics.get(
            "sockgate_http_responses_total",
            &[("listener", "plain"), ("code", "408")]
        ),
        1.0
    );
}
