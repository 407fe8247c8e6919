//! Raw TCP through the gateway: bulk bytes, half-close, server-speaks-first, failover.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

pub(crate) fn tcp_config(tls: bool, servers: &str, extra_defaults: &str) -> String {
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
detect_timeout = "200ms"
{extra_defaults}

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
{tls}

  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"

[[backend]]
name = "echo"
servers = [{servers}]
"#
    )
}

/// Writes `data` and reads the same number of bytes back at the same time; returns them
/// and the stream, still open.
async fn echo_roundtrip<S>(stream: S, data: &[u8]) -> (Vec<u8>, S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let len = data.len();
    let reader = async move {
        let mut got = vec![0u8; len];
        rd.read_exact(&mut got).await.unwrap();
        (got, rd)
    };
    let writer = async move {
        for chunk in data.chunks(64 * 1024) {
            wr.write_all(chunk).await.unwrap();
        }
        wr.flush().await.unwrap();
        wr
    };
    let ((got, rd), wr) = tokio::join!(reader, writer);
    (got, rd.unsplit(wr))
}

#[tokio::test]
async fn eight_mib_through_tls_to_tcp_arrive_byte_exact_both_ways() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &tcp_config(true, &format!("\"{echo}\""), "")).await;
    let stream = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;

    let data = random_bytes(8 * 1024 * 1024, 7);
    let (got, _open) = echo_roundtrip(stream, &data).await;
    assert!(got == data, "echoed bytes differ from what was sent");

    let m = gw.metrics().await;
    let labels = [("listener", "edge"), ("route", "echo"), ("backend", "echo")];
    assert_eq!(
        m.get(
            "sockgate_bytes_total",
            &[
                labels[0],
                labels[1],
                labels[2],
                ("direction", "client_to_backend")
            ]
        ),
        data.len() as f64
    );
    assert_eq!(
        m.get(
            "sockgate_bytes_total",
            &[
                labels[0],
                labels[1],
                labels[2],
                ("direction", "backend_to_client")
            ]
        ),
        data.len() as f64
    );
    assert_eq!(
        m.get(
            "sockgate_tls_handshakes_total",
            &[("listener", "edge"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[("listener", "edge"), ("protocol", "tcp")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_connections_active",
            &[("listener", "edge"), ("protocol", "tcp")]
        ),
        1.0
    );
}

#[tokio::test]
async fn plaintext_bulk_is_byte_exact() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &tcp_config(false, &format!("\"{echo}\""), "")).await;
    let stream = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let data = random_bytes(2 * 1024 * 1024, 11);
    assert!(echo_roundtrip(stream, &data).await.0 == data);
}

/// A backend that reads the whole request until EOF, then answers and closes.
async fn answer_after_eof_backend() -> std::net::SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut question = Vec::new();
                tcp.read_to_end(&mut question).await.unwrap();
                let answer = format!("got {} bytes", question.len());
                tcp.write_all(answer.as_bytes()).await.unwrap();
                tcp.shutdown().await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test]
async fn half_close_from_the_client_still_gets_the_answer() {
    let pki = Pki::new();
    let backend = answer_after_eof_backend().await;
    let gw = Gateway::start(
        pki.path(),
        &tcp_config(false, &format!("\"{backend}\""), ""),
    )
    .await;

    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(&[b'x'; 1000]).await.unwrap();
    tcp.shutdown().await.unwrap(); // FIN: our direction only
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 1000 bytes");
}

#[tokio::test]
async fn half_close_through_tls_sends_close_notify_and_keeps_reading() {
    let pki = Pki::new();
    let backend = answer_after_eof_backend().await;
    let gw = Gateway::start(pki.path(), &tcp_config(true, &format!("\"{backend}\""), "")).await;

    let mut tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    tls.write_all(b"hello").await.unwrap();
    tls.shutdown().await.unwrap(); // close_notify + FIN
    let mut answer = Vec::new();
    // read_to_end succeeds only if the gateway ends its side with close_notify: rustls
    // reports a truncation error otherwise.
    tls.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"got 5 bytes");
}

#[tokio::test]
async fn server_speaks_first_backend_is_reached_after_detect_timeout() {
    let pki = Pki::new();
    let (listener, banner_backend) = listen().await;
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                tcp.write_all(b"220 ready\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                let n = tcp.read(&mut buf).await.unwrap();
                tcp.write_all(&buf[..n]).await.unwrap();
            });
        }
    });
    // A listener with an HTTP route too, so detection runs and must time out into TCP.
    let config = format!(
        r#"
[defaults]
detect_timeout = "200ms"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

  [[listener.route]]
  name = "web"
  protocol = "http"
  backend = "banner"

  [[listener.route]]
  name = "smtp"
  protocol = "tcp"
  backend = "banner"

[[backend]]
name = "banner"
servers = ["{banner_backend}"]
"#
    );
    let gw = Gateway::start(pki.path(), &config).await;
    let mut tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut banner))
        .await
        .expect("banner within 5s")
        .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    tls.write_all(b"EHLO me").await.unwrap();
    let mut echo = [0u8; 7];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO me");
}

#[tokio::test]
async fn a_dead_server_falls_through_to_the_next() {
    let pki = Pki::new();
    let dead = dead_port().await;
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        pki.path(),
        &tcp_config(false, &format!("\"{dead}\", \"{echo}\""), ""),
    )
    .await;
    for i in 0..4u8 {
        let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
        tcp.write_all(&[i; 3]).await.unwrap();
        let mut got = [0u8; 3];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [i; 3]);
    }
    let m = gw.metrics().await;
    // Round robin starts at the dead server every other connection.
    assert_eq!(
        m.get(
            "sockgate_backend_connect_errors_total",
            &[("backend", "echo")]
        ),
        2.0
    );
}

#[tokio::test]
async fn no_reachable_server_closes_the_client_and_counts_it() {
    let pki = Pki::new();
    let dead = dead_port().await;
    let gw = Gateway::start(pki.path(), &tcp_config(false, &format!("\"{dead}\""), "")).await;
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("closed within 5s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_backend_connect_errors_total",
            &[("backend", "echo")]
        ),
        1.0
    );
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_connection() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        pki.path(),
        &tcp_config(false, &format!("\"{echo}\""), "idle_timeout = \"300ms\""),
    )
    .await;
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tcp.read_exact(&mut got).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("closed by idle timeout")
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn ipv6_listener_relays() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let config = tcp_config(false, &format!("\"{echo}\""), "").replace(
        "name = \"edge\"\nlisten = \"127.0.0.1:0\"",
        "name = \"edge\"\nlisten = \"[::1]:0\"",
    );
    let gw = Gateway::start(pki.path(), &config).await;
    assert!(gw.addr("edge").is_ipv6());
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(b"six").await.unwrap();
    let mut got = [0u8; 3];
    tcp.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"six");
}

#[tokio::test]
async fn ipv4_and_ipv6_wildcard_listeners_share_a_port() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 here; skipping");
        return;
    }
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let (probe, free) = listen().await;
    drop(probe);
    let port = free.port();
    let route =
        "\n  [[listener.route]]\n  name = \"echo\"\n  protocol = \"tcp\"\n  backend = \"echo\"\n";
    let config = format!(
        "[[listener]]\nname = \"v4\"\nlisten = \"0.0.0.0:{port}\"\n{route}\n[[listener]]\nname = \"v6\"\nlisten = \"[::]:{port}\"\n{route}\n[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n"
    );
    let _gw = Gateway::start(pki.path(), &config).await;
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"dual").await.unwrap();
        let mut got = [0u8; 4];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"dual", "{addr}");
    }
}

#[tokio::test]
async fn small_pieces_bulk_and_small_again_keep_their_order() {
    // The plain relay copies small reads and splices bulk ones; a stream that changes pace
    // crosses between the two both ways and must come out whole and in order.
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &tcp_config(false, &format!("\"{echo}\""), "")).await;
    let mut stream = TcpStream::connect(gw.addr("edge")).await.unwrap();
    for round in 0..50 {
        ping_pong(&mut stream, round).await;
    }
    let bulk = random_bytes(4 * 1024 * 1024, 99);
    let (got, mut stream) = echo_roundtrip(stream, &bulk).await;
    assert!(got == bulk, "bulk differs");
    for round in 50..100 {
        ping_pong(&mut stream, round).await;
    }
}

/// 64 random bytes out, the same 64 back.
async fn ping_pong(stream: &mut TcpStream, round: u64) {
    let piece = random_bytes(64, round);
    stream.write_all(&piece).await.unwrap();
    let mut got = [0u8; 64];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(got[..], piece[..], "round {round}");
}

/// The operator's DELETE ends TCP relays on both paths (splice between plain sockets, the
/// copy loop behind TLS), also after many wake-ups: the relays read the close request
/// from a flag between registrations with the connection's token.
#[tokio::test]
async fn operator_closes_plain_and_tls_tcp_connections_after_many_wakeups() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let servers = format!("\"{echo}\"");
    let plain_gw = Gateway::start(pki.path(), &tcp_config(false, &servers, "")).await;
    let tls_gw = Gateway::start(pki.path(), &tcp_config(true, &servers, "")).await;
    let plain = TcpStream::connect(plain_gw.addr("edge")).await.unwrap();
    let tls = tls_connect(tls_gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    operator_closes_after_many_wakeups(&plain_gw, plain).await;
    operator_closes_after_many_wakeups(&tls_gw, tls).await;
}

async fn operator_closes_after_many_wakeups<S>(gw: &Gateway, mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // 200 round trips: far more wake-ups than the 64 between registrations.
    let mut got = [0u8; 8];
    for round in 0..200u64 {
        stream.write_all(&round.to_be_bytes()).await.unwrap();
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, round.to_be_bytes());
    }
    let (status, body) = http_request(gw.admin(), "DELETE", "/connections?route=echo").await;
    assert_eq!(status, 200, "{body}");
    let closed = serde_json::from_str::<serde_json::Value>(&body).unwrap()["closed"].clone();
    assert_eq!(closed, 1, "{body}");
    // The client reads the end of its stream (TLS: close_notify, then the FIN).
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("connection not closed by the operator")
        .unwrap();
    assert_eq!(n, 0);
    eventually("no connection listed", || async {
        http_get(gw.admin(), "/connections").await.1.trim() == "[]"
    })
    .await;
}
