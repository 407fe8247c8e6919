//! Balancing, health and retries: which server each connection reaches, told by the
//! servers themselves (each answers with its name), with `/backends` and the metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A server that writes its name and a line break to every connection, then echoes until
/// the client closes. Counts the connections it accepted.
async fn named_tcp(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let (listener, addr) = listen().await;
    (addr, serve_named_tcp(listener, name))
}

fn serve_named_tcp(listener: TcpListener, name: &'static str) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = tcp.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    accepted
}

/// An HTTP server answering every request with its name, except `/health`, answered with
/// the status in `health` (101 with a proper handshake answer to a WebSocket handshake, if
/// `health` is 101), and WebSocket handshakes elsewhere, which it accepts and then sends
/// its name as the first message.
struct NamedHttp {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
}

async fn named_http(name: &'static str) -> NamedHttp {
    let (listener, addr) = listen().await;
    let health = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let (status, count, checked) = (health.clone(), hits.clone(), checks.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (status, count, checked) = (status.clone(), count.clone(), checked.clone());
            tokio::spawn(async move { serve_http(tcp, name, &status, &count, &checked).await });
        }
    });
    NamedHttp {
        addr,
        health,
        hits,
        checks,
    }
}

async fn serve_http(
    mut tcp: TcpStream,
    name: &str,
    health: &AtomicU16,
    hits: &AtomicUsize,
    checks: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    });
    let switching = |key: &str| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        )
    };
    if path == "/health" {
        checks.fetch_add(1, Ordering::SeqCst);
        let status = health.load(Ordering::SeqCst);
        let answer = match &key {
            Some(key) if status == 101 => switching(key),
            _ => format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        };
        let _ = tcp.write_all(answer.as_bytes()).await;
        return;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if let Some(key) = key {
        let _ = tcp.write_all(switching(&key).as_bytes()).await;
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            tcp,
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let _ = ws.send(Message::text(name)).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
        return;
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    );
    let _ = tcp.write_all(answer.as_bytes()).await;
}

/// Connects through a TCP route and reads the server's name; the connection stays open.
async fn tcp_name(addr: SocketAddr) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), async {
        while tcp.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
            name.push(byte[0]);
        }
    })
    .await
    .expect("the server's name within 5s");
    (String::from_utf8(name).unwrap(), tcp)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket through the gateway and reads the server's name.
async fn ws_name(addr: SocketAddr) -> (String, Ws) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the server's name within 5s")
        .unwrap()
        .unwrap();
    (first.into_text().unwrap().to_string(), ws)
}

/// `GET path` with extra header lines; (status, body).
async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
        .await
        .expect("a response within 5s")
        .unwrap();
    parse_response(&raw)
}

async fn backends(gw: &Gateway) -> serde_json::Value {
    serde_json::from_str(&http_get(gw.admin(), "/backends").await.1).unwrap()
}

/// `healthy` of each server of `backend` in `/backends`, in config order.
async fn healthy(gw: &Gateway, backend: &str) -> Vec<bool> {
    let all = backends(gw).await;
    let b = all
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap();
    b["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["healthy"].as_bool().unwrap())
        .collect()
}

fn config(routes: &str, backends: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
connect_timeout = "1s"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
{routes}
{backends}
"#
    )
}

const TCP_ROUTE: &str = r#"
  [[listener.route]]
  name = "t"
  protocol = "tcp"
  backend = "b"
"#;

const HTTP_ROUTE: &str = r#"
  [[listener.route]]
  name = "h"
  backend = "b"
"#;

#[tokio::test]
async fn round_robin_follows_the_weighted_schedule_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = named_tcp("a").await;
    let (b, _) = named_tcp("b").await;
    let (c, _) = named_tcp("c").await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{a}", {{ address = "{b}", weight = 2 }}, "{c}"]
"#
    );
    let gw = Gateway::start(dir.path(), &config(TCP_ROUTE, &backend)).await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(tcp_name(gw.addr("edge")).await.0);
    }
    // Rounds: {b, a, c}, then {b} for b's second unit of weight.
    assert_eq!(seen, ["b", "a", "c", "b", "b", "a", "c", "b"]);
}

#[tokio::test]
async fn least_conn_counts_held_tcp_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = named_tcp("a").await;
    let (b, _) = named_tcp("b").await;
    let (c, _) = named_tcp("c").await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{a}", "{b}", "{c}"]
balance = "least_conn"
"#
    );
    let gw = Gateway::start(dir.path(), &config(TCP_ROUTE, &backend)).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(tcp_name(gw.addr("edge")).await);
    }
    let mut names: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["a", "a", "b", "b", "c", "c"],
        "ties did not take turns"
    );
    // Keep the two on a, close the rest.
    held.retain(|(n, _)| n == "a");
    eventually("b and c idle in /backends", || async {
        let all = backends(&gw).await;
        let active: Vec<u64> = all[0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["active_connections"].as_u64().unwrap())
            .collect();
        active == [2, 0, 0]
    })
    .await;
    let (first, _x) = tcp_name(gw.addr("edge")).await;
    let (second, _y) = tcp_name(gw.addr("edge")).await;
    let mut next = [first, second];
    next.sort();
    assert_eq!(next, ["b", "c"]);
    // 2, 1, 1: the next goes to b or c again, not a.
    let (third, _z) = tcp_name(gw.addr("edge")).await;
    assert_ne!(third, "a");
}

#[tokio::test]
async fn least_conn_counts_established_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let a = named_http("a").await;
    let b = named_http("b").await;
    let c = named_http("c").await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{}", "{}", "{}"]
balance = "least_conn"
"#,
        a.addr, b.addr, c.addr
    );
    let gw = Gateway::start(dir.path(), &config(HTTP_ROUTE, &backend)).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(ws_name(gw.addr("edge")).await);
    }
    let mut names: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b", "c", "c"]);
    for (name, ws) in &mut held {
        if name != "a" {
            ws.close(None).await.unwrap();
        }
    }
    held.retain(|(n, _)| n == "a");
    eventually("only a's two WebSockets counted", || async {
        let all = backends(&gw).await;
        let active: Vec<u64> = all[0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["active_connections"].as_u64().unwrap())
            .collect();
        active == [2, 0, 0]
    })
    .await;
    let (first, _x) = ws_name(gw.addr("edge")).await;
    let (second, _y) = ws_name(gw.addr("edge")).await;
    let mut next = [first, second];
    next.sort();
    assert_eq!(next, ["b", "c"]);
}

#[tokio::test]
async fn hash_sends_the_same_key_to_the_same_server_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let servers = [
        named_http("a").await,
        named_http("b").await,
        named_http("c").await,
        named_http("d").await,
    ];
    let list = servers
        .iter()
        .map(|s| format!("\"{}\"", s.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let mut routes = String::new();
    let mut backends = String::new();
    for (name, on) in [
        ("header", "header:X-User"),
        ("cookie", "cookie:sid"),
        ("query", "query:user"),
        ("ip", "client_ip"),
    ] {
        routes.push_str(&format!(
            "  [[listener.route]]\n  name = \"{name}\"\n  path_prefix = \"/{name}\"\n  backend = \"{name}\"\n"
        ));
        backends.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\nservers = [{list}]\nbalance = \"hash\"\nhash_on = \"{on}\"\n"
        ));
    }
    let gw = Gateway::start(dir.path(), &config(&routes, &backends)).await;
    let edge = gw.addr("edge");
    for (path, header) in [
        ("/header", "X-User: KEY\r\n"),
        ("/cookie", "Cookie: theme=dark; sid=KEY\r\n"),
        ("/query?x=1&user=KEY", ""),
        ("/ip", ""),
    ] {
        let mut by_key = Vec::new();
        for key in 0..12 {
            let (path, header) = (
                path.replace("KEY", &format!("k{key}")),
                header.replace("KEY", &format!("k{key}")),
            );
            let (status, first) = get(edge, &path, &header).await;
            assert_eq!(status, 200);
            for _ in 0..4 {
                assert_eq!(get(edge, &path, &header).await.1, first, "{path} {header}");
            }
            by_key.push(first);
        }
        by_key.sort();
        by_key.dedup();
        if path == "/ip" {
            assert_eq!(by_key.len(), 1, "one client address, one server");
        } else {
            assert!(by_key.len() >= 2, "12 keys all on {by_key:?} for {path}");
        }
    }
    // Without the key: round robin, so all four servers are reached.
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..8 {
        seen.push(get(edge, "/header", "").await.1);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn active_http_health_check_takes_a_failing_server_out_and_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = named_http("a").await;
    let b = named_http("b").await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{}", "{}"]
health = {{ kind = "http", path = "/health", interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(dir.path(), &config(HTTP_ROUTE, &backend)).await;
    let up = |server: SocketAddr| {
        let gw = &gw;
        async move {
            gw.metrics().await.get(
                "sockgate_backend_up",
                &[("backend", "b"), ("server", &server.to_string())],
            )
        }
    };
    assert_eq!(healthy(&gw, "b").await, [true, true]);
    a.health.store(500, Ordering::SeqCst);
    eventually("a marked down", || async {
        healthy(&gw, "b").await == [false, true]
    })
    .await;
    assert_eq!(up(a.addr).await, 0.0);
    assert_eq!(up(b.addr).await, 1.0);
    let before = a.hits.load(Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(get(gw.addr("edge"), "/", "").await, (200, "b".to_owned()));
    }
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        before,
        "a down server got traffic"
    );
    a.health.store(200, Ordering::SeqCst);
    eventually("a back up", || async {
        healthy(&gw, "b").await == [true, true]
    })
    .await;
    assert_eq!(up(a.addr).await, 1.0);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(gw.addr("edge"), "/", "").await.1);
    }
    assert!(seen.contains(&"a".to_owned()), "{seen:?}");
}

#[tokio::test]
async fn active_tcp_health_check_follows_a_server_that_stops_and_starts_listening() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, a) = listen().await;
    let _a = serve_named_tcp(listener, "a");
    let (b, _) = named_tcp("b").await;
    let dead = dead_port().await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{dead}", "{b}"]
health = {{ kind = "tcp", interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }}
"#
    );
    let gw = Gateway::start(dir.path(), &config(TCP_ROUTE, &backend)).await;
    // Refused at start: out after the first check.
    eventually("the refusing server down", || async {
        healthy(&gw, "b").await == [false, true]
    })
    .await;
    for _ in 0..4 {
        assert_eq!(tcp_name(gw.addr("edge")).await.0, "b");
    }
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_backend_connect_errors_total", &[("backend", "b")]),
        0.0,
        "a down server was tried"
    );
    // It starts listening: back after `rise` checks.
    let listener = TcpListener::bind(dead).await.unwrap();
    let _revived = serve_named_tcp(listener, "revived");
    eventually("the server back up", || async {
        healthy(&gw, "b").await == [true, true]
    })
    .await;
    let _ = a;
}

#[tokio::test]
async fn active_websocket_health_check_wants_101() {
    let dir = tempfile::tempdir().unwrap();
    let a = named_http("a").await;
    let b = named_http("b").await;
    b.health.store(101, Ordering::SeqCst);
    // a answers 200 to the handshake.
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{}", "{}"]
health = {{ kind = "websocket", path = "/health", interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(dir.path(), &config(HTTP_ROUTE, &backend)).await;
    eventually("a down", || async {
        healthy(&gw, "b").await == [false, true]
    })
    .await;
    for _ in 0..4 {
        assert_eq!(ws_name(gw.addr("edge")).await.0, "b");
    }
    a.health.store(101, Ordering::SeqCst);
    eventually("a back up", || async {
        healthy(&gw, "b").await == [true, true]
    })
    .await;
}

#[tokio::test]
async fn passive_ejection_stops_connect_attempts_to_a_failing_server() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_port().await;
    let (b, _) = named_tcp("b").await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{dead}", "{b}"]
passive = {{ failures = 2, eject = "10s" }}
"#
    );
    let gw = Gateway::start(dir.path(), &config(TCP_ROUTE, &backend)).await;
    for _ in 0..4 {
        assert_eq!(tcp_name(gw.addr("edge")).await.0, "b");
    }
    let errors = || async {
        gw.metrics()
            .await
            .get("sockgate_backend_connect_errors_total", &[("backend", "b")])
    };
    assert_eq!(errors().await, 2.0);
    assert_eq!(healthy(&gw, "b").await, [false, true]);
    // The port listens again, but the server is out for 10s: no connection reaches it.
    let listener = TcpListener::bind(dead).await.unwrap();
    let revived = serve_named_tcp(listener, "revived");
    for _ in 0..6 {
        assert_eq!(tcp_name(gw.addr("edge")).await.0, "b");
    }
    assert_eq!(
        revived.load(Ordering::SeqCst),
        0,
        "an ejected server got connections"
    );
    assert_eq!(errors().await, 2.0);
}

#[tokio::test]
async fn no_healthy_server_answers_503_and_closes_tcp_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_port().await;
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
  [[listener.route]]
  name = "h"
  backend = "b"

[[listener]]
name = "raw"
listen = "127.0.0.1:0"
  [[listener.route]]
  name = "t"
  protocol = "tcp"
  backend = "b"

[[backend]]
name = "b"
servers = ["{dead}"]
health = {{ kind = "tcp", interval = "100ms", timeout = "100ms" }}
"#
    );
    let gw = Gateway::start(dir.path(), &toml).await;
    eventually("the only server down", || async {
        healthy(&gw, "b").await == [false]
    })
    .await;
    assert_eq!(get(gw.addr("edge"), "/", "").await.0, 503);
    let ws = get(
        gw.addr("edge"),
        "/ws",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert_eq!(ws.0, 503);
    let started = Instant::now();
    let mut tcp = TcpStream::connect(gw.addr("raw")).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(1));
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_no_healthy_server_total", &[("backend", "b")]),
        3.0
    );
    assert_eq!(
        m.get("sockgate_backend_connect_errors_total", &[("backend", "b")]),
        0.0
    );
    assert_eq!(
        m.get(
            "sockgate_backend_up",
            &[("backend", "b"), ("server", &dead.to_string())]
        ),
        0.0
    );
}

#[tokio::test]
async fn a_refused_connect_moves_to_the_next_server_within_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_port().await;
    let (b, _) = named_tcp("b").await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{dead}", "{b}"]
"#
    );
    let gw = Gateway::start(dir.path(), &config(TCP_ROUTE, &backend)).await;
    let started = Instant::now();
    let (name, _open) = tcp_name(gw.addr("edge")).await;
    assert_eq!(name, "b");
    assert!(started.elapsed() < Duration::from_secs(1));
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_backend_connect_errors_total", &[("backend", "b")]),
        1.0
    );
}

#[tokio::test]
async fn a_server_that_resets_after_the_request_reached_it_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts, reads the request, then resets.
    let (listener, resetter) = listen().await;
    let got_request = Arc::new(AtomicUsize::new(0));
    let seen = got_request.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            if tcp.read(&mut buf).await.unwrap_or(0) > 0 {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            socket2::SockRef::from(&tcp)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(tcp);
        }
    });
    let other = named_http("other").await;
    let backend = format!(
        r#"
[[backend]]
name = "b"
servers = ["{resetter}", "{}"]
"#,
        other.addr
    );
    let gw = Gateway::start(dir.path(), &config(HTTP_ROUTE, &backend)).await;
    // Round robin starts on the resetting server.
    let (status, _) = get(gw.addr("edge"), "/", "").await;
    assert_eq!(status, 502);
    assert_eq!(got_request.load(Ordering::SeqCst), 1);
    assert_eq!(
        other.hits.load(Ordering::SeqCst),
        0,
        "the request was sent twice"
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_backends_health_and_stops_a_removed_ones_checks() {
    let dir = tempfile::tempdir().unwrap();
    let a = named_http("a").await;
    let b = named_http("b").await;
    let other = named_http("other").await;
    a.health.store(500, Ordering::SeqCst);
    let toml = |backend: &str, extra: &str| {
        config(
            &format!("  [[listener.route]]\n  name = \"h\"\n  backend = \"{backend}\"\n"),
            &format!(
                r#"
[[backend]]
name = "b"
servers = ["{}", "{}"]
health = {{ kind = "http", path = "/health", interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }}

[[backend]]
name = "other"
servers = ["{}"]
{extra}
"#,
                a.addr, b.addr, other.addr
            ),
        )
    };
    let gw = Gateway::start(dir.path(), &toml("b", "")).await;
    eventually("a down", || async {
        healthy(&gw, "b").await == [false, true]
    })
    .await;
    // Another backend changes; b's state carries over at once, no new round of checks.
    std::fs::write(
        dir.path().join("sockgate.toml"),
        toml("b", r#"balance = "least_conn""#),
    )
    .unwrap();
    gw.handle.reload_from_source().await.unwrap();
    assert_eq!(healthy(&gw, "b").await, [false, true]);
    assert_eq!(get(gw.addr("edge"), "/", "").await.1, "b");
    // One task checks b, not two: about 10 checks a second per server.
    let before = b.checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let per_second = b.checks.load(Ordering::SeqCst) - before;
    assert!((5..=13).contains(&per_second), "{per_second} checks in 1s");
    // b leaves the config: its checks stop and its series leave /metrics.
    let without_b = toml("other", "").replace(
        &format!(
            "[[backend]]\nname = \"b\"\nservers = [\"{}\", \"{}\"]\nhealth = {{ kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n",
            a.addr, b.addr
        ),
        "",
    );
    assert!(!without_b.contains("name = \"b\""), "{without_b}");
    std::fs::write(dir.path().join("sockgate.toml"), without_b).unwrap();
    gw.handle.reload_from_source().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = b.checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.checks.load(Ordering::SeqCst), stopped_at, "checks go on");
    let m = gw.metrics().await;
    assert_eq!(m.get("sockgate_backend_up", &[("backend", "b")]), 0.0);
    assert_eq!(m.get("sockgate_backend_up", &[("backend", "other")]), 1.0);
    let text = http_get(gw.admin(), "/metrics").await.1;
    assert!(
        !text.contains("sockgate_backend_up{backend=\"b\""),
        "{text}"
    );
}
