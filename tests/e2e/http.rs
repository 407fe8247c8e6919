//! Plain HTTP through the gateway: forwarding headers, keep-alive, and the gateway's own
//! answers (404, 502, 400, 431).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    assert!(
        page.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{page}"
    );
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
