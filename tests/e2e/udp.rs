//! UDP listeners: per-client sessions, each with its own socket toward a server, idle
//! timeout, session limit, ICMP port unreachable, reload, and datagrams relayed whole.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::support::*;

/// A UDP echo server on a fresh port: each datagram comes back with `tag` in front.
pub(crate) async fn udp_echo(tag: &'static [u8]) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        let mut out = Vec::with_capacity(65_535 + tag.len());
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            out.clear();
            out.extend_from_slice(tag);
            out.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&out, from).await;
        }
    });
    addr
}

/// A UDP port with nothing bound to it: the kernel answers ICMP port unreachable.
async fn dead_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

fn udp_config(servers: &str, route_extra: &str, backend_extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "voice"
listen = "127.0.0.1:0"
protocol = "udp"

  [[listener.route]]
  name = "voice"
  backend = "voice"
  {route_extra}

[[backend]]
name = "voice"
servers = [{servers}]
{backend_extra}
"#
    )
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Sends `data` to `to` and waits up to 5s for one datagram back.
async fn roundtrip(socket: &UdpSocket, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    socket.send_to(data, to).await.unwrap();
    recv(socket).await.expect("a reply within 5s")
}

async fn recv(socket: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

/// Nothing comes back within `wait`.
async fn silent(socket: &UdpSocket, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .is_err()
}

fn active(m: &Metrics) -> f64 {
    m.get(
        "sockgate_connections_active",
        &[("listener", "voice"), ("protocol", "udp")],
    )
}

#[tokio::test]
async fn datagrams_echo_through_the_gateway_and_each_client_gets_its_own_replies() {
    let echo = udp_echo(b"").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &udp_config(&format!("\"{echo}\""), "", "")).await;
    let addr = gw.addr("voice");
    let (a, b) = (client().await, client().await);
    assert_eq!(roundtrip(&a, addr, b"hello from a").await, b"hello from a");
    assert_eq!(roundtrip(&b, addr, b"hello from b").await, b"hello from b");
    // Interleaved, each client sees only its own datagrams, whole and in the order sent.
    for i in 0..20u32 {
        a.send_to(format!("a{i}").as_bytes(), addr).await.unwrap();
        b.send_to(format!("b{i}").as_bytes(), addr).await.unwrap();
    }
    for i in 0..20u32 {
        assert_eq!(recv(&a).await.unwrap(), format!("a{i}").as_bytes());
        assert_eq!(recv(&b).await.unwrap(), format!("b{i}").as_bytes());
    }
    // Replies come from the address the clients sent to.
    a.send_to(b"from?", addr).await.unwrap();
    let mut buf = [0u8; 16];
    let (_, from) = a.recv_from(&mut buf).await.unwrap();
    assert_eq!(from, addr);

    assert_eq!(gw.handle.connections(), 2, "one session per client address");
    let (status, body) = http_get(gw.admin(), "/connections").await;
    assert_eq!(status, 200);
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    let row = rows
        .iter()
        .find(|r| r["client.address"] == a.local_addr().unwrap().to_string())
        .unwrap();
    assert_eq!(row["protocol"], "udp");
    assert_eq!(row["route"], "voice");
    assert_eq!(row["upstream.address"], echo.to_string());
    assert_eq!(row["messages_client_to_backend"], 22);
    assert_eq!(row["messages_backend_to_client"], 22);
    let bytes = "hello from a".len() + (0..20).map(|i| format!("a{i}").len()).sum::<usize>() + 5;
    assert_eq!(row["bytes_client_to_backend"], bytes);

    let m = gw.metrics().await;
    assert_eq!(active(&m), 2.0);
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[("listener", "voice"), ("protocol", "udp")]
        ),
        2.0
    );
    for direction in ["client_to_backend", "backend_to_client"] {
        assert_eq!(
            m.get(
                "sockgate_udp_datagrams_total",
                &[("route", "voice"), ("direction", direction)]
            ),
            43.0,
            "{direction}"
        );
    }
    let b_bytes = "hello from b".len() + (0..20).map(|i| format!("b{i}").len()).sum::<usize>();
    assert_eq!(
        m.get(
            "sockgate_bytes_total",
            &[("route", "voice"), ("direction", "backend_to_client")]
        ),
        (bytes + b_bytes) as f64
    );
}

#[tokio::test]
async fn round_robin_gives_two_clients_a_server_each_and_least_conn_counts_sessions() {
    for balance in ["round_robin", "least_conn"] {
        let (one, two) = (udp_echo(b"one:").await, udp_echo(b"two:").await);
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::start(
            dir.path(),
            &udp_config(
                &format!("\"{one}\", \"{two}\""),
                "",
                &format!("balance = \"{balance}\""),
            ),
        )
        .await;
        let addr = gw.addr("voice");
        let (a, b) = (client().await, client().await);
        let first = roundtrip(&a, addr, b"x").await;
        let second = roundtrip(&b, addr, b"x").await;
        let mut got = [first.clone(), second.clone()];
        got.sort();
        assert_eq!(got, [b"one:x".to_vec(), b"two:x".to_vec()], "{balance}");
        // A session keeps its server.
        for _ in 0..5 {
            assert_eq!(roundtrip(&a, addr, b"x").await, first, "{balance}");
            assert_eq!(roundtrip(&b, addr, b"x").await, second, "{balance}");
        }
        let (_, body) = http_get(gw.admin(), "/backends").await;
        let backends: serde_json::Value = serde_json::from_str(&body).unwrap();
        let text = backends.to_string();
        assert_eq!(
            text.matches("\"active_connections\":1").count(),
            2,
            "each server counts its session: {text}"
        );
    }
}

#[tokio::test]
async fn hash_on_client_ip_keeps_one_address_on_one_server() {
    let (one, two) = (udp_echo(b"one:").await, udp_echo(b"two:").await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &udp_config(
            &format!("\"{one}\", \"{two}\""),
            "",
            "balance = \"hash\"\nhash_on = \"client_ip\"",
        ),
    )
    .await;
    let addr = gw.addr("voice");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let c = client().await;
        seen.push(roundtrip(&c, addr, b"x").await);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

#[tokio::test]
async fn an_idle_session_ends_with_an_access_log_event_and_the_gauge_back_to_zero() {
    let echo = udp_echo(b"").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockgate.toml");
    std::fs::write(
        &path,
        udp_config(
            &format!("\"{echo}\""),
            "session_idle_timeout = \"300ms\"",
            "",
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_owned();
    let mut gw = Binary::spawn(&["--config", &path, "--log-format", "json"], dir);
    let ready = gw.ready().await;
    let addr: SocketAddr = ready["listeners"]["voice"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admin: SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    let c = client().await;
    // Traffic within the timeout keeps the session: the same one answers throughout.
    for _ in 0..4 {
        assert_eq!(roundtrip(&c, addr, b"ping").await, b"ping");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let metrics = || async { Metrics::parse(&http_get(admin, "/metrics").await.1) };
    assert_eq!(active(&metrics().await), 1.0);
    eventually("the session to end after 300ms of silence", || async {
        active(&metrics().await) == 0.0
    })
    .await;
    let m = metrics().await;
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[("listener", "voice"), ("protocol", "udp")]
        ),
        1.0,
        "one session for the whole exchange"
    );
    let client_addr = c.local_addr().unwrap();
    eventually("the access-log event", || {
        let stderr = gw.stderr();
        async move {
            stderr.lines().any(|l| {
                l.contains("connection finished")
                    && l.contains("\"protocol\":\"udp\"")
                    && l.contains("\"outcome\":\"idle_timeout\"")
                    && l.contains(&format!("\"client.address\":\"{client_addr}\""))
                    && l.contains("\"messages_client_to_backend\":4")
                    && l.contains("\"bytes_backend_to_client\":16")
            })
        }
    })
    .await;
    // The next datagram starts a new session.
    assert_eq!(roundtrip(&c, addr, b"again").await, b"again");
}

#[tokio::test]
async fn over_max_sessions_a_new_source_is_dropped_and_counted() {
    let echo = udp_echo(b"").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &udp_config(&format!("\"{echo}\""), "max_sessions = 2", ""),
    )
    .await;
    let addr = gw.addr("voice");
    let (a, b, c) = (client().await, client().await, client().await);
    assert_eq!(roundtrip(&a, addr, b"a").await, b"a");
    assert_eq!(roundtrip(&b, addr, b"b").await, b"b");
    c.send_to(b"c", addr).await.unwrap();
    c.send_to(b"c", addr).await.unwrap();
    assert!(silent(&c, Duration::from_millis(300)).await);
    // The two sessions go on.
    assert_eq!(roundtrip(&a, addr, b"a").await, b"a");
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_rejected_total",
            &[("listener", "voice"), ("reason", "max_sessions")]
        ),
        2.0,
        "each dropped datagram is counted"
    );
    assert_eq!(active(&m), 2.0);
    assert_eq!(gw.handle.connections(), 2);
}

#[tokio::test]
async fn icmp_port_unreachable_ends_the_session_and_counts_a_connect_failure() {
    let dead = dead_udp_port().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &udp_config(
            &format!("\"{dead}\""),
            "",
            "passive = { failures = 1, eject = \"10s\" }",
        ),
    )
    .await;
    let addr = gw.addr("voice");
    let c = client().await;
    c.send_to(b"anyone?", addr).await.unwrap();
    eventually("the refused session to end", || async {
        let m = gw.metrics().await;
        active(&m) == 0.0
            && m.get(
                "sockgate_connections_total",
                &[("listener", "voice"), ("protocol", "udp")],
            ) == 1.0
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_backend_connect_errors_total",
            &[("backend", "voice")]
        ),
        1.0
    );
    // Passive ejection took the only server out: the next new session has none.
    assert_eq!(
        m.get(
            "sockgate_backend_up",
            &[("backend", "voice"), ("server", &dead.to_string())]
        ),
        0.0
    );
    c.send_to(b"again", addr).await.unwrap();
    eventually("the datagram without a server to be counted", || async {
        gw.metrics().await.get(
            "sockgate_udp_dropped_total",
            &[("listener", "voice"), ("reason", "no_server")],
        ) == 1.0
    })
    .await;
    assert_eq!(gw.handle.connections(), 0);
}

#[tokio::test]
async fn a_reload_that_replaces_the_route_ends_its_sessions() {
    let (one, two) = (udp_echo(b"one:").await, udp_echo(b"two:").await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &udp_config(&format!("\"{one}\""), "", "")).await;
    let addr = gw.addr("voice");
    let c = client().await;
    assert_eq!(roundtrip(&c, addr, b"x").await, b"one:x");
    let path = dir.path().join("sockgate.toml");
    // Same listener, same address (kept, not rebound), a new route to another backend.
    let text = udp_config(&format!("\"{two}\""), "", "").replace(
        "name = \"voice\"\n  backend",
        "name = \"voice2\"\n  backend",
    );
    assert!(text.contains("voice2"), "{text}");
    std::fs::write(&path, text).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.addr("voice"), addr);
    eventually("the old session to end", || async {
        gw.handle.connections() == 0
    })
    .await;
    // The client's next datagram starts a session on the new route.
    assert_eq!(roundtrip(&c, addr, b"x").await, b"two:x");
    let (_, body) = http_get(gw.admin(), "/connections").await;
    assert!(body.contains("\"route\":\"voice2\""), "{body}");
}

#[tokio::test]
async fn a_reload_adds_and_removes_a_udp_listener() {
    let echo = udp_echo(b"").await;
    let tcp = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tcp_only = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{{ name = "t", protocol = "tcp", backend = "t" }}]
[[backend]]
name = "t"
servers = ["{tcp}"]
[[backend]]
name = "voice"
servers = ["{echo}"]
"#
    );
    let gw = Gateway::start(dir.path(), &tcp_only).await;
    assert!(gw.handle.local_addr("voice").is_none());
    let with_udp = format!(
        "{tcp_only}\n[[listener]]\nname = \"voice\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\nroute = [{{ name = \"v\", backend = \"voice\" }}]\n"
    );
    let path = dir.path().join("sockgate.toml");
    std::fs::write(&path, &with_udp).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let addr = gw.addr("voice");
    let c = client().await;
    assert_eq!(roundtrip(&c, addr, b"added").await, b"added");
    std::fs::write(&path, &tcp_only).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(gw.handle.local_addr("voice").is_none());
    eventually("the session to end with its listener", || async {
        gw.handle.connections() == 0
    })
    .await;
    c.send_to(b"gone", addr).await.unwrap();
    assert!(silent(&c, Duration::from_millis(300)).await);
}

#[tokio::test]
async fn the_largest_udp_datagram_is_relayed_whole_both_ways() {
    let echo = udp_echo(b"").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &udp_config(&format!("\"{echo}\""), "", "")).await;
    let addr = gw.addr("voice");
    let c = client().await;
    // 65,535 minus the IPv4 and UDP headers.
    let data = random_bytes(65_507, 7);
    let got = roundtrip(&c, addr, &data).await;
    assert_eq!(got.len(), 65_507);
    assert!(got == data, "the datagram came back changed");
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_bytes_total",
            &[("route", "voice"), ("direction", "client_to_backend")]
        ),
        65_507.0
    );
}

#[tokio::test]
async fn a_drain_ends_the_sessions() {
    let echo = udp_echo(b"").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &udp_config(&format!("\"{echo}\""), "", "")).await;
    let addr = gw.addr("voice");
    let c = client().await;
    assert_eq!(roundtrip(&c, addr, b"x").await, b"x");
    gw.handle.drain();
    tokio::time::timeout(Duration::from_secs(5), gw.handle.wait())
        .await
        .expect("the drain to finish at once: sessions have nothing in flight");
    assert_eq!(gw.handle.connections(), 0);
}
