//! Bounds by default: the connection limit and its reload, stages that a hard stop ends,
//! routing on the config in force when the route is picked, and descriptors running out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A plain listener with one TCP route to `backend`, and `defaults`.
fn tcp_config(defaults: &str, backend: SocketAddr) -> String {
    crate::tcp::tcp_config(false, &format!("\"{backend}\""), defaults)
}

/// Sends `data` and reads it back from an echo backend.
async fn echoes(stream: &mut TcpStream, data: &[u8]) -> bool {
    if stream.write_all(data).await.is_err() {
        return false;
    }
    let mut got = vec![0; data.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got)).await,
        Ok(Ok(_))
    ) && got == data
}

/// Whether the gateway closes `stream` (EOF or reset) within a few seconds, without a byte.
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A backend that greets each connection with `banner`, then echoes.
async fn banner_backend(banner: &'static [u8]) -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if stream.write_all(banner).await.is_err() {
                    return;
                }
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

fn listener_addr(ready: &serde_json::Value, name: &str) -> SocketAddr {
    ready["listeners"][name].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn max_connections_closes_the_one_over_and_a_reload_changes_the_limit() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &tcp_config("max_connections = 2", echo)).await;
    let edge = gw.addr("edge");

    let mut first = TcpStream::connect(edge).await.unwrap();
    let mut second = TcpStream::connect(edge).await.unwrap();
    assert!(echoes(&mut first, b"one").await);
    assert!(echoes(&mut second, b"two").await);
    let mut third = TcpStream::connect(edge).await.unwrap();
    assert!(
        closed_at_once(&mut third).await,
        "a third connection was served"
    );
    let rejected = |m: &Metrics| {
        m.get(
            "sockgate_rejected_total",
            &[("listener", "edge"), ("reason", "max_connections")],
        )
    };
    assert_eq!(rejected(&gw.metrics().await), 1.0);
    assert_eq!(gw.metrics().await.get("sockgate_max_connections", &[]), 2.0);

    // The new limit applies to the next connection; the open ones are untouched.
    let config_path = pki.path().join("sockgate.toml");
    std::fs::write(&config_path, tcp_config("max_connections = 3", echo)).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let mut third = TcpStream::connect(edge).await.unwrap();
    assert!(
        echoes(&mut third, b"three").await,
        "the raised limit did not apply"
    );
    let mut fourth = TcpStream::connect(edge).await.unwrap();
    assert!(
        closed_at_once(&mut fourth).await,
        "a fourth connection was served"
    );
    assert_eq!(rejected(&gw.metrics().await), 2.0);
    assert_eq!(gw.metrics().await.get("sockgate_max_connections", &[]), 3.0);
    assert!(echoes(&mut first, b"still").await);

    // Without the key, the limit comes from the open-files limit: far more than 3 here.
    std::fs::write(&config_path, tcp_config("", echo)).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let mut fourth = TcpStream::connect(edge).await.unwrap();
    assert!(echoes(&mut fourth, b"four").await);
    assert_eq!(rejected(&gw.metrics().await), 2.0);
}

#[tokio::test]
async fn the_default_connection_limit_follows_the_open_files_limit() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sockgate.toml");
    std::fs::write(
        &config,
        tcp_config("", echo).replace("[admin]\nlisten = \"127.0.0.1:0\"\n", ""),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    // (1000 open files - 128 kept for the process) / 2 descriptors per connection.
    let mut gw =
        Binary::spawn_with_open_files(1000, &["--config", &config_arg, "--workers", "1"], dir);
    let ready = gw.ready().await;
    let edge = listener_addr(&ready, "edge");
    let stderr = gw.stderr();
    assert!(
        stderr.contains("max_connections=436") && stderr.contains("open_files=1000"),
        "{stderr}"
    );

    // The limit holds: 436 connections are served, the 437th is closed at once.
    let mut open = Vec::new();
    for i in 0..436 {
        let mut stream = TcpStream::connect(edge).await.unwrap();
        if i % 109 == 0 || i == 435 {
            assert!(echoes(&mut stream, b"hi").await, "connection {i}");
        }
        open.push(stream);
    }
    let mut over = TcpStream::connect(edge).await.unwrap();
    assert!(
        closed_at_once(&mut over).await,
        "the 437th connection was served"
    );
    assert!(echoes(&mut open[0], b"first still works").await);
    gw.signal("TERM");
    drop(open);
    assert_eq!(
        gw.exit_status(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn a_drain_ends_stalled_handshakes_detections_and_connects_at_drain_timeout() {
    let pki = Pki::new();
    // A server whose accept queue is full: a connect to it waits for connect_timeout.
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    full.listen(0).unwrap();
    let full_addr = full.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(full_addr)).await
        {
            fillers.push(s);
        }
    }
    let echo = tcp_echo().await;
    let config = format!(
        r#"
[defaults]
handshake_timeout = "60s"
detect_timeout = "60s"
connect_timeout = "60s"
drain_timeout = "1s"
drain_spread = "100ms"
close_timeout = "100ms"

[[listener]]
name = "tls"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}
  [[listener.route]]
  name = "any"
  backend = "echo"

[[listener]]
name = "detect"
listen = "127.0.0.1:0"
  [[listener.route]]
  name = "any"
  backend = "echo"

[[listener]]
name = "connect"
listen = "127.0.0.1:0"
  [[listener.route]]
  name = "stuck"
  protocol = "tcp"
  backend = "stuck"

[[backend]]
name = "echo"
servers = ["{echo}"]

[[backend]]
name = "stuck"
servers = ["{full_addr}"]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    for file in ["server.crt", "server.key"] {
        std::fs::copy(pki.path().join(file), dir.path().join(file)).unwrap();
    }
    let config_path = dir.path().join("sockgate.toml");
    std::fs::write(&config_path, config).unwrap();
    let config_arg = config_path.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg], dir);
    let ready = gw.ready().await;

    // A TLS client that never says hello, an HTTP client stuck inside its method name, and
    // a TCP client whose backend never answers the SYN.
    let _silent_tls = TcpStream::connect(listener_addr(&ready, "tls"))
        .await
        .unwrap();
    let mut undecided = TcpStream::connect(listener_addr(&ready, "detect"))
        .await
        .unwrap();
    undecided.write_all(b"GE").await.unwrap();
    let _stuck = TcpStream::connect(listener_addr(&ready, "connect"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    gw.signal("TERM");
    let status = gw.exit_status(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the drain took {took:?}, past drain_timeout (1s)"
    );
    drop(full);
}

#[tokio::test]
async fn a_reload_during_detection_routes_the_connection_on_the_new_config() {
    let pki = Pki::new();
    let old = banner_backend(b"old\n").await;
    let new = banner_backend(b"new\n").await;
    let config = |backend: SocketAddr| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
detect_timeout = "1s"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "api"
  protocol = "http"
  backend = "web"

  [[listener.route]]
  name = "game"
  protocol = "tcp"
  backend = "game"

[[backend]]
name = "web"
servers = ["{backend}"]

[[backend]]
name = "game"
servers = ["{backend}"]
"#
        )
    };
    let gw = Gateway::start(pki.path(), &config(old)).await;
    // A server-speaks-first client: it sends nothing, so detection waits detect_timeout.
    let mut client = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(pki.path().join("sockgate.toml"), config(new)).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");

    let mut banner = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &banner, b"new\n",
        "routed on the config from before the reload"
    );
}

#[tokio::test]
async fn a_splice_relay_without_descriptors_for_a_pipe_copies_instead() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sockgate.toml");
    // No admin listener and a connection limit above what the descriptors allow, so the
    // descriptors run out before the limit does.
    std::fs::write(&config, tcp_config("max_connections = 1000", echo)).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[admin]\nlisten = \"127.0.0.1:0\"\n", "");
    std::fs::write(&config, text).unwrap();
    let config_arg = config.display().to_string();
    let mut gw =
        Binary::spawn_with_open_files(64, &["--config", &config_arg, "--workers", "1"], dir);
    let ready = gw.ready().await;
    let edge = listener_addr(&ready, "edge");

    let mut bulk = TcpStream::connect(edge).await.unwrap();
    assert!(echoes(&mut bulk, b"small, copied").await);
    // Idle connections until the gateway has no descriptor left: the ones it cannot take
    // wait in the accept queue or are closed when their backend socket cannot be made.
    let mut idle = Vec::new();
    for _ in 0..40 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(edge)).await
        {
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        gw.stderr().contains("Too many open files"),
        "the descriptors did not run out:\n{}",
        gw.stderr()
    );

    // A bulk transfer switches the direction to splice, which needs a pipe it cannot get.
    let data = random_bytes(1 << 20, 7);
    let (mut rd, mut wr) = bulk.split();
    let (written, echoed) = tokio::join!(wr.write_all(&data), async {
        let mut got = vec![0; data.len()];
        tokio::time::timeout(Duration::from_secs(20), rd.read_exact(&mut got))
            .await
            .map(|r| r.map(|_| got))
    });
    written.unwrap();
    let echoed = echoed.expect("echo timed out").expect("connection ended");
    assert!(echoed == data, "the echoed bytes differ");
    drop(idle);
}

/// A plain listener `edge` with `listener_keys`, one route of `protocol` to `backend`.
fn limited_config(listener_keys: &str, protocol: &str, backend: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
{listener_keys}

  [[listener.route]]
  name = "r"
  protocol = "{protocol}"
  backend = "b"

[[backend]]
name = "b"
servers = ["{backend}"]
"#
    )
}

async fn rejected(gw: &Gateway, reason: &str) -> f64 {
    gw.metrics().await.get(
        "sockgate_rejected_total",
        &[("listener", "edge"), ("reason", reason)],
    )
}

/// An echoed connection from `source`, or `None` when the gateway closed it.
async fn echoed_from(source: &str, to: SocketAddr) -> Option<TcpStream> {
    let mut tcp = crate::proxy_protocol::connect_from(source, to).await;
    echoes(&mut tcp, b"ping").await.then_some(tcp)
}

#[tokio::test]
async fn a_listeners_max_connections_closes_the_one_over_and_its_place_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        dir.path(),
        &limited_config("max_connections = 2", "tcp", echo),
    )
    .await;
    let addr = gw.addr("edge");
    let a = echoed_from("127.0.0.1", addr).await.expect("first");
    let _b = echoed_from("127.0.0.2", addr).await.expect("second");
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(closed_at_once(&mut c).await, "the third is closed");
    assert_eq!(rejected(&gw, "max_connections").await, 1.0);
    drop(a);
    let mut back = None;
    for _ in 0..50 {
        back = echoed_from("127.0.0.1", addr).await;
        if back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back.is_some(), "the place never came back");
}

#[tokio::test]
async fn max_connections_per_ip_counts_each_client_address_apart() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        dir.path(),
        &limited_config("max_connections_per_ip = 2", "tcp", echo),
    )
    .await;
    let addr = gw.addr("edge");
    let a1 = echoed_from("127.0.0.1", addr).await.expect("a1");
    let _a2 = echoed_from("127.0.0.1", addr).await.expect("a2");
    let mut a3 = crate::proxy_protocol::connect_from("127.0.0.1", addr).await;
    assert!(closed_at_once(&mut a3).await, "a third from 127.0.0.1");
    assert_eq!(rejected(&gw, "per_ip").await, 1.0);
    // Another address has its own count.
    let _b1 = echoed_from("127.0.0.2", addr).await.expect("b1");
    let _b2 = echoed_from("127.0.0.2", addr).await.expect("b2");
    drop(a1);
    let mut back = None;
    for _ in 0..50 {
        back = echoed_from("127.0.0.1", addr).await;
        if back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back.is_some(), "127.0.0.1's place never came back");
}

#[tokio::test]
async fn max_new_connections_per_ip_refuses_the_one_over_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        dir.path(),
        &limited_config("max_new_connections_per_ip = \"3/s\"", "tcp", echo),
    )
    .await;
    let addr = gw.addr("edge");
    let started = Instant::now();
    // Closed at once after their echo: the rate counts new connections, not open ones.
    for i in 0..3 {
        assert!(echoed_from("127.0.0.1", addr).await.is_some(), "{i}");
    }
    let mut fourth = crate::proxy_protocol::connect_from("127.0.0.1", addr).await;
    let closed = closed_at_once(&mut fourth).await;
    assert!(
        closed || started.elapsed() >= Duration::from_secs(1),
        "the fourth within a second went through"
    );
    if closed {
        assert_eq!(rejected(&gw, "rate").await, 1.0);
    }
    assert!(
        echoed_from("127.0.0.2", addr).await.is_some(),
        "another address"
    );
    // A second later the window starts over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        echoed_from("127.0.0.1", addr).await.is_some(),
        "next window"
    );
}

#[tokio::test]
async fn a_plaintext_http_listener_over_a_limit_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ws_echo().await;
    let gw = Gateway::start(
        dir.path(),
        &limited_config("max_connections_per_ip = 1", "http", backend),
    )
    .await;
    let addr = gw.addr("edge");
    // One held open (keep-alive, nothing sent).
    let _held = TcpStream::connect(addr).await.unwrap();
    eventually("the first connection is counted", || async {
        http_get(gw.admin(), "/connections")
            .await
            .1
            .contains("\"client\"")
    })
    .await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (status, _) = parse_response(&raw);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(rejected(&gw, "per_ip").await, 1.0);
}
