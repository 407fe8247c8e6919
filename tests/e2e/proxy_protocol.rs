//! PROXY protocol: headers read from trusted load balancers (v1 and v2, before plain HTTP,
//! TCP and TLS), refused from anyone else, closed when bad or slow; headers written to
//! servers that ask for them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A v2 header (PROXY command, TCP over IPv4), written by hand from the spec's layout.
fn v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(l)) = (client, local) else {
        panic!("IPv4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&l.ip().octets());
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&l.port().to_be_bytes());
    h
}

/// Connects from `source` (any address of 127/8 routes to lo on Linux).
pub async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

fn config(tls: bool, protocol: &str, backend: SocketAddr, listener_extra: &str) -> String {
    let tls = if tls {
        r#"tls = { cert = "server.crt", key = "server.key" }"#
    } else {
        ""
    };
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
detect_timeout = "300ms"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]
{listener_extra}
{tls}

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

async fn connections(gw: &Gateway) -> String {
    http_get(gw.admin(), "/connections").await.1
}

async fn rejected(gw: &Gateway, reason: &str) -> f64 {
    gw.metrics().await.get(
        "sockgate_rejected_total",
        &[("listener", "edge"), ("reason", reason)],
    )
}

/// Whether the gateway closes `stream` within `limit`, without a byte.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn v1_and_v2_addresses_are_the_clients_for_http_forwarding_and_connections() {
    let pki = Pki::new();
    let backend = ws_echo().await;
    let gw = Gateway::start(pki.path(), &config(false, "http", backend, "")).await;
    let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
    for (header, client) in [
        (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n".to_vec(),
            "203.0.113.7:40000",
        ),
        (
            v2_header("198.51.100.9:5555".parse().unwrap(), local),
            "198.51.100.9:5555",
        ),
    ] {
        let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
        tcp.write_all(&header).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/who")
            .header("host", "localhost")
            .header("x-forwarded-for", "192.0.2.66")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let page = resp.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&page);
        let ip = client.split(':').next().unwrap();
        // The header's address is the client: not a trusted proxy, so what it sent is
        // replaced.
        assert!(page.contains(&format!("x-forwarded-for: {ip}\n")), "{page}");
        assert!(!page.contains("192.0.2.66"), "{page}");
        // The connection is still open (keep-alive): /connections names the header's client.
        let listed = connections(&gw).await;
        assert!(
            listed.contains(&format!("\"client\":\"{client}\"")),
            "{listed}"
        );
        drop(sender);
    }
}

#[tokio::test]
async fn tcp_bytes_after_the_header_and_tls_after_it_are_untouched() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    // TCP: the header and the client's first bytes in one segment.
    let gw = Gateway::start(pki.path(), &config(false, "tcp", echo, "")).await;
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let mut first = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n".to_vec();
    let payload = random_bytes(64 * 1024, 7);
    first.extend_from_slice(&payload[..1000]);
    tcp.write_all(&first).await.unwrap();
    tcp.write_all(&payload[1000..]).await.unwrap();
    let mut got = vec![0; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == payload, "the relayed bytes differ");
    let listed = connections(&gw).await;
    assert!(
        listed.contains("\"client\":\"203.0.113.7:40000\""),
        "{listed}"
    );
    drop(tcp);

    // TLS: the header precedes the ClientHello, in the same write.
    let gw = Gateway::start(pki.path(), &config(true, "tcp", echo, "")).await;
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let header = v2_header(
        "198.51.100.9:5555".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
    );
    tcp.write_all(&header).await.unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(pki.client_config(&[]))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    tls.write_all(b"over tls").await.unwrap();
    let mut got = [0u8; 8];
    tls.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"over tls");
    let listed = connections(&gw).await;
    assert!(
        listed.contains("\"client\":\"198.51.100.9:5555\""),
        "{listed}"
    );
}

#[tokio::test]
async fn an_untrusted_source_is_closed_at_once_and_counted() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        pki.path(),
        &config(false, "tcp", echo, "").replace("127.0.0.1/32", "127.0.0.2/32"),
    )
    .await;
    let mut tcp = connect_from("127.0.0.1", gw.addr("edge")).await;
    let _ = tcp
        .write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\nhello")
        .await;
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
    assert_eq!(rejected(&gw, "untrusted_proxy").await, 1.0);

    // From a trusted address the same bytes go through.
    let mut tcp = connect_from("127.0.0.2", gw.addr("edge")).await;
    tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\nhello")
        .await
        .unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(rejected(&gw, "untrusted_proxy").await, 1.0);
}

#[tokio::test]
async fn bad_truncated_and_slow_headers_are_closed_within_detect_timeout_and_counted() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &config(false, "tcp", echo, "")).await;
    let addr = gw.addr("edge");
    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.extend(std::iter::repeat_n(b'1', 120));
    let mut bad_v2 = v2_header(
        "198.51.100.9:5555".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
    );
    bad_v2[12] = 0x23; // command 3
    let malformed: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 99999 80\r\nhello",
        b"PROXY TCP6 203.0.113.7 10.0.0.1 1 80\r\n",
        &long_v1,
        &bad_v2,
    ];
    for bytes in malformed {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(bytes).await;
        let started = Instant::now();
        assert!(
            closed_within(&mut tcp, Duration::from_secs(2)).await,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "not at once"
        );
    }
    assert_eq!(rejected(&gw, "bad_proxy_header").await, 5.0);

    // Truncated: half a v2 header, then the client's FIN.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&bad_v2[..20]).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
    eventually("the truncated header is counted", || async {
        rejected(&gw, "bad_proxy_header").await == 6.0
    })
    .await;

    // Slow: a valid header a byte every 50 ms would need 2 s; detect_timeout is 300 ms.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for byte in b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n" {
        if tcp.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "no bytes come back");
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow header was never closed");
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < Duration::from_millis(1000),
        "closed after {closed_after:?}"
    );
    assert_eq!(rejected(&gw, "proxy_header_timeout").await, 1.0);
    eventually("nothing left open", || async {
        connections(&gw).await.trim() == "[]"
    })
    .await;
}

/// A server that expects a PROXY header (v1 or v2) first: reports what it carried, then
/// answers plain HTTP with `ok` or echoes TCP.
async fn proxy_reading_backend(
    http: bool,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, SocketAddr)>,
) {
    let (listener, addr) = listen().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(addrs) = read_header(&mut stream).await else {
                    return;
                };
                let _ = tx.send(addrs);
                if http {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                } else {
                    let (mut rd, mut wr) = stream.split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                }
            });
        }
    });
    (addr, rx)
}

/// The test's own reader of a PROXY header: v1 line or v2 IPv4.
async fn read_header(stream: &mut TcpStream) -> Option<(SocketAddr, SocketAddr)> {
    let mut first = [0u8; 16];
    stream.read_exact(&mut first[..6]).await.ok()?;
    if &first[..6] == b"PROXY " {
        let mut line = b"PROXY ".to_vec();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).await.ok()?;
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).ok()?;
        let f: Vec<&str> = line.trim_end().split(' ').collect();
        assert_eq!(f.len(), 6, "{line}");
        return Some((
            format!("{}:{}", f[2], f[4]).parse().ok()?,
            format!("{}:{}", f[3], f[5]).parse().ok()?,
        ));
    }
    stream.read_exact(&mut first[6..]).await.ok()?;
    assert_eq!(&first[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(&first[12..16], &[0x21, 0x11, 0, 12]);
    let mut a = [0u8; 12];
    stream.read_exact(&mut a).await.ok()?;
    let ip = |o: usize| std::net::Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
    let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
    Some((
        SocketAddr::new(ip(0).into(), port(8)),
        SocketAddr::new(ip(4).into(), port(10)),
    ))
}

fn sending_config(protocol: &str, backend: SocketAddr, version: &str, proxy_in: bool) -> String {
    let proxy_in = if proxy_in {
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]"
    } else {
        ""
    };
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
{proxy_in}

  [[listener.route]]
  name = "r"
  protocol = "{protocol}"
  backend = "b"

[[backend]]
name = "b"
servers = ["{backend}"]
send_proxy_protocol = "{version}"
"#
    )
}

#[tokio::test]
async fn servers_that_ask_get_the_clients_address_in_v1_or_v2() {
    let pki = Pki::new();
    for version in ["v1", "v2"] {
        // TCP relay: the header, then the client's bytes untouched.
        let (backend, mut saw) = proxy_reading_backend(false).await;
        let gw = Gateway::start(pki.path(), &sending_config("tcp", backend, version, false)).await;
        let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
        let client = tcp.local_addr().unwrap();
        tcp.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"ping");
        let (src, dst) = saw.recv().await.unwrap();
        assert_eq!((src, dst), (client, gw.addr("edge")), "{version}");

        // HTTP: every backend connection starts with one.
        let (backend, mut saw) = proxy_reading_backend(true).await;
        let gw = Gateway::start(pki.path(), &sending_config("http", backend, version, false)).await;
        let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
        let client = tcp.local_addr().unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(parse_response(&raw), (200, "ok".to_owned()), "{version}");
        assert_eq!(saw.recv().await.unwrap(), (client, gw.addr("edge")));

        // A header in, a header out: the server sees the load balancer's client.
        let (backend, mut saw) = proxy_reading_backend(false).await;
        let gw = Gateway::start(pki.path(), &sending_config("tcp", backend, version, true)).await;
        let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
        tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\nping")
            .await
            .unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(
            saw.recv().await.unwrap(),
            (
                "203.0.113.7:40000".parse().unwrap(),
                "10.0.0.1:80".parse().unwrap()
            )
        );
    }
}

#[tokio::test]
async fn per_ip_limits_count_the_address_in_the_header() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        pki.path(),
        &config(false, "tcp", echo, "max_connections_per_ip = 1"),
    )
    .await;
    let open = |ip: &'static str| {
        let addr = gw.addr("edge");
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(format!("PROXY TCP4 {ip} 10.0.0.1 40000 80\r\nping").as_bytes())
                .await
                .unwrap();
            tcp
        }
    };
    let echoed = |mut tcp: TcpStream| async move {
        let mut got = [0u8; 4];
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got)).await,
            Ok(Ok(_))
        ) && &got == b"ping";
        (ok, tcp)
    };
    // Two connections from one load balancer, two clients: both pass.
    let (ok_a, a) = echoed(open("203.0.113.7").await).await;
    let (ok_b, _b) = echoed(open("203.0.113.8").await).await;
    assert!(ok_a && ok_b);
    // A second one for the same client is over `max_connections_per_ip`.
    let mut c = open("203.0.113.7").await;
    assert!(closed_within(&mut c, Duration::from_secs(2)).await);
    assert_eq!(rejected(&gw, "per_ip").await, 1.0);
    // Its place comes back when the first closes.
    drop(a);
    let mut back = false;
    for _ in 0..50 {
        let (ok, _c) = echoed(open("203.0.113.7").await).await;
        if ok {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the client's place never came back");
}

#[tokio::test]
async fn a_websocket_upgrade_connection_starts_with_the_header_too() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let pki = Pki::new();
    let (listener, backend) = listen().await;
    let (tx, mut saw) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(addrs) = read_header(&mut stream).await else {
                    return;
                };
                let _ = tx.send(addrs);
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(
        pki.path(),
        &sending_config("websocket", backend, "v2", false),
    )
    .await;
    let tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async("ws://localhost/ws", tcp),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hi"));
    assert_eq!(saw.recv().await.unwrap(), (client, gw.addr("edge")));
}

#[tokio::test]
async fn the_access_log_names_the_client_in_the_header() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockgate.toml");
    std::fs::write(&path, config(false, "tcp", echo, "")).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let mut gw = Binary::spawn(&["--config", &path, "--log-format", "json"], dir);
    let ready = gw.ready().await;
    let addr: SocketAddr = ready["listeners"]["edge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\nhello")
        .await
        .unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    drop(tcp);
    eventually("the access-log event", || {
        let stderr = gw.stderr();
        async move {
            stderr.lines().any(|l| {
                l.contains("connection finished")
                    && l.contains("\"client.address\":\"203.0.113.7:40000\"")
            })
        }
    })
    .await;
}
