//! Unix domain sockets, as an operator uses them: listeners on socket files and abstract
//! names (HTTP, WebSocket and TCP through them, with clients on tokio's UnixStream), the
//! file's mode and owner, a stale file replaced and a live one refused, the file removed on
//! exit and kept across a binary upgrade; and `unix:` backend servers for every route kind,
//! with health checks, retries and PROXY headers.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const WITHIN: Duration = Duration::from_secs(5);

/// Echoes every byte back on a Unix socket; half-closes when the client does.
fn unix_echo(path: &Path) -> PathBuf {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                    let _ = wr.shutdown().await;
                }
            });
        }
    });
    path.to_owned()
}

/// The demo's WebSocket echo and header-echo page, on a Unix socket.
fn unix_ws_echo(path: &Path) -> PathBuf {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(crate::demo::ws_echo_conn(stream));
        }
    });
    path.to_owned()
}

async fn connect(path: &Path) -> UnixStream {
    tokio::time::timeout(WITHIN, UnixStream::connect(path))
        .await
        .expect("connect within 5s")
        .unwrap()
}

/// Writes `bytes`, half-closes, and reads until the other side closes.
async fn echoed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    bytes: &[u8],
) -> Vec<u8> {
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WITHIN, stream.read_to_end(&mut got))
        .await
        .expect("the echo within 5s")
        .unwrap();
    got
}

/// A large payload both ways at once (so neither side's buffers fill while the other
/// waits): what the splice relay moves.
async fn echoed_large(stream: UnixStream, bytes: Vec<u8>) -> Vec<u8> {
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&bytes).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(WITHIN, rd.read_to_end(&mut got))
        .await
        .expect("the echo within 5s")
        .unwrap();
    writer.await.unwrap();
    got
}

/// `GET path` over `stream`: (status, body).
async fn http_get_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    head: &str,
) -> (u16, String) {
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WITHIN, stream.read_to_end(&mut raw))
        .await
        .expect("a response within 5s")
        .unwrap();
    parse_response(&raw)
}

const GET: &str = "GET /page HTTP/1.1\r\nHost: chat.local\r\nConnection: close\r\n\r\n";

fn listener_toml(name: &str, listen: &str, extra: &str, routes: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\n{extra}{routes}\n")
}

const WEB_ROUTES: &str = r#"
  [[listener.route]]
  name = "ws"
  protocol = "websocket"
  backend = "web"

  [[listener.route]]
  name = "page"
  protocol = "http"
  backend = "web"
"#;

const TCP_ROUTE: &str = r#"
  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"
"#;

#[tokio::test]
async fn http_websocket_and_tcp_through_unix_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let web = ws_echo().await;
    let echo = tcp_echo().await;
    let web_sock = dir.path().join("web.sock");
    let raw_sock = dir.path().join("raw.sock");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}{}[[backend]]\nname = \"web\"\nservers = [\"{web}\"]\n\n[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n",
        listener_toml(
            "web",
            &format!("unix:{}", web_sock.display()),
            "",
            WEB_ROUTES
        ),
        listener_toml(
            "raw",
            &format!("unix:{}", raw_sock.display()),
            "",
            TCP_ROUTE
        ),
    );
    let gw = Gateway::start(dir.path(), &toml).await;
    assert!(gw.handle.local_addr("web").is_none(), "no TCP address");
    let listed: Vec<String> = gw
        .handle
        .listener_addrs()
        .into_iter()
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect();
    assert_eq!(
        listed,
        [
            format!("raw=unix:{}", raw_sock.display()),
            format!("web=unix:{}", web_sock.display())
        ]
    );

    // HTTP: a Unix client has no address: nothing in X-Forwarded-For, `for=unknown`.
    let (status, body) = http_get_on(connect(&web_sock).await, GET).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("GET /page\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(
        body.contains("forwarded: for=unknown;proto=http;host=\"chat.local\"\n"),
        "{body}"
    );
    assert!(!body.contains("x-forwarded-for"), "{body}");
    // A local process in front (a web server) is trusted: its X-Forwarded-For is kept.
    let (status, body) = http_get_on(
        connect(&web_sock).await,
        "GET / HTTP/1.1\r\nHost: chat.local\r\nX-Forwarded-For: 198.51.100.4\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-for: 198.51.100.4\n"), "{body}");

    // WebSocket, and `/connections` while it is open.
    let stream = connect(&web_sock).await;
    let (mut ws, _) = tokio_tungstenite::client_async("ws://chat.local/chat", stream)
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WITHIN, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::text("hello")
    );
    let conns: serde_json::Value =
        serde_json::from_str(&http_get(gw.admin(), "/connections").await.1).unwrap();
    let row = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["protocol"] == "websocket")
        .unwrap_or_else(|| panic!("{conns}"));
    assert_eq!(row["listener"], "web");
    assert_eq!(row["client.address"], "unix:");
    assert_eq!(row["client"], "unix:");
    ws.close(None).await.unwrap();
    drop(ws);

    // TCP, with a payload big enough for the splice relay.
    let payload = random_bytes(1 << 20, 7);
    let got = echoed_large(connect(&raw_sock).await, payload.clone()).await;
    assert!(
        got == payload,
        "{} bytes back of {}",
        got.len(),
        payload.len()
    );

    eventually("the connections counted", || async {
        let m = gw.metrics().await;
        m.get("sockgate_connections_total", &[("listener", "web")]) == 3.0
            && m.get("sockgate_connections_total", &[("listener", "raw")]) == 1.0
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_bytes_total",
            &[("listener", "raw"), ("direction", "client_to_backend")]
        ),
        (1 << 20) as f64
    );
}

#[tokio::test]
async fn tls_on_a_unix_listener_https_and_wss() {
    let pki = Pki::new();
    let web = ws_echo().await;
    let sock = pki.path().join("tls.sock");
    let toml = format!(
        "{}[[backend]]\nname = \"web\"\nservers = [\"{web}\"]\n",
        listener_toml(
            "secure",
            &format!("unix:{}", sock.display()),
            "tls = { cert = \"server.crt\", key = \"server.key\" }\n",
            WEB_ROUTES
        ),
    );
    let gw = Gateway::start(pki.path(), &toml).await;
    let tls = || async {
        tokio_rustls::TlsConnector::from(pki.client_config(&[]))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                connect(&sock).await,
            )
            .await
            .unwrap()
    };
    let (status, body) = http_get_on(
        tls().await,
        "GET /page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/chat", tls().await)
        .await
        .unwrap();
    ws.send(Message::text("secure")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WITHIN, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::text("secure")
    );
    let m = Metrics::parse(&gw.handle.metrics().render());
    assert_eq!(
        m.get(
            "sockgate_tls_handshakes_total",
            &[("listener", "secure"), ("result", "ok")]
        ),
        2.0
    );
}

#[tokio::test]
async fn an_abstract_listener_serves_and_leaves_no_file() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo().await;
    let name = format!("sockgate-test-{}-{}", std::process::id(), line!());
    let toml = format!(
        "{}[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n",
        listener_toml("local", &format!("unix:@{name}"), "", TCP_ROUTE),
    );
    let gw = Gateway::start(dir.path(), &toml).await;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_stream = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    std_stream.set_nonblocking(true).unwrap();
    let stream = UnixStream::from_std(std_stream).unwrap();
    assert_eq!(echoed(stream, b"abstract").await, b"abstract");
    // A second gateway on the same name is refused.
    let config_path = dir.path().join("second.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let config = sockgate::config::load(&config_path).unwrap();
    let e = sockgate::start(config).await.err().expect("refused");
    let text = sockgate::error::error_chain(&e);
    assert!(
        text.contains(&format!("cannot listen on unix:@{name}"))
            && text.contains("another socket has this abstract name"),
        "{text}"
    );
    gw.handle.drain();
}

#[tokio::test]
async fn mode_owner_and_group_are_applied_to_the_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo().await;
    let sock = dir.path().join("chat.sock");
    let toml = format!(
        "{}[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n",
        listener_toml(
            "local",
            &format!("unix:{}", sock.display()),
            "unix = { mode = \"0640\", owner = 4321, group = \"root\" }\n",
            TCP_ROUTE
        ),
    );
    let gw = Gateway::start(dir.path(), &toml).await;
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o640, 4321, 0)
    );
    assert_eq!(echoed(connect(&sock).await, b"ok").await, b"ok");
    gw.handle.drain();
    assert!(!sock.exists(), "a drain removes the socket file");
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_a_live_one_or_a_plain_file_refused() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo().await;
    let config = |sock: &Path| {
        let toml = format!(
            "{}[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n",
            listener_toml("local", &format!("unix:{}", sock.display()), "", TCP_ROUTE),
        );
        let path = dir.path().join("sockgate.toml");
        std::fs::write(&path, toml).unwrap();
        sockgate::config::load(&path).unwrap()
    };

    // Left by a process that crashed: the file is there, a connect is refused.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert_eq!(
        std::os::unix::net::UnixStream::connect(&stale)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let gw = sockgate::start(config(&stale)).await.unwrap();
    assert_eq!(
        echoed(connect(&stale).await, b"replaced").await,
        b"replaced"
    );

    // Someone listens there: refused, and their socket is untouched.
    let live = dir.path().join("live.sock");
    let theirs = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let e = sockgate::start(config(&live)).await.err().expect("refused");
    let text = sockgate::error::error_chain(&e);
    assert!(
        text.contains(&format!(
            "listener `local` cannot listen on unix:{}",
            live.display()
        )) && text.contains("a process is listening on it"),
        "{text}"
    );
    let _client = std::os::unix::net::UnixStream::connect(&live).unwrap();
    theirs.set_nonblocking(true).unwrap();
    assert!(
        theirs.accept().is_ok(),
        "the other process keeps its socket"
    );

    // Not a socket: left alone.
    let plain = dir.path().join("plain.sock");
    std::fs::write(&plain, "data").unwrap();
    let e = sockgate::start(config(&plain))
        .await
        .err()
        .expect("refused");
    let text = sockgate::error::error_chain(&e);
    assert!(
        text.contains("the path exists and is not a socket"),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "data");

    gw.drain();
    tokio::time::timeout(WITHIN, gw.wait()).await.unwrap();
    assert!(!stale.exists());
}

#[tokio::test]
async fn proxy_protocol_on_a_unix_listener_yields_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let web = ws_echo().await;
    let sock = dir.path().join("pp.sock");
    let toml = format!(
        "{}[[backend]]\nname = \"web\"\nservers = [\"{web}\"]\n",
        listener_toml(
            "local",
            &format!("unix:{}", sock.display()),
            "proxy_protocol = true\nmax_connections_per_ip = 1\n",
            WEB_ROUTES
        ),
    );
    let _gw = Gateway::start(dir.path(), &toml).await;
    let (status, body) = http_get_on(
        connect(&sock).await,
        &format!("PROXY TCP4 203.0.113.9 192.0.2.1 5555 443\r\n{GET}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-forwarded-for: 203.0.113.9\n"), "{body}");
    assert!(
        body.contains("forwarded: for=203.0.113.9;proto=http"),
        "{body}"
    );
}

/// A Unix socket's client, toward a server that expects a PROXY header: the header says the
/// addresses are unknown (v2: the PROXY command, family `AF_UNSPEC`).
#[tokio::test]
async fn a_unix_client_is_unknown_in_a_proxy_header_toward_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("in.sock");
    let server = dir.path().join("server.sock");
    let server_listener = UnixListener::bind(&server).unwrap();
    let toml = format!(
        "{}[[backend]]\nname = \"echo\"\nservers = [\"unix:{}\"]\nsend_proxy_protocol = \"v2\"\n",
        listener_toml("local", &format!("unix:{}", sock.display()), "", TCP_ROUTE),
        server.display()
    );
    let _gw = Gateway::start(dir.path(), &toml).await;
    let mut client = connect(&sock).await;
    client.write_all(b"payload").await.unwrap();
    let (mut stream, _) = tokio::time::timeout(WITHIN, server_listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut got = [0u8; 16 + 7];
    tokio::time::timeout(WITHIN, stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(&got[12..16], &[0x21, 0x00, 0x00, 0x00]);
    assert_eq!(&got[16..], b"payload");
}

#[tokio::test]
async fn unix_backend_servers_for_tcp_http_and_websocket_routes() {
    let dir = tempfile::tempdir().unwrap();
    let echo = unix_echo(&dir.path().join("echo.sock"));
    let web = unix_ws_echo(&dir.path().join("web.sock"));
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let pp = dir.path().join("pp.sock");
    let pp_listener = UnixListener::bind(&pp).unwrap();
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "tcp"
listen = "127.0.0.1:0"
{TCP_ROUTE}
[[listener]]
name = "web"
listen = "127.0.0.1:0"
{WEB_ROUTES}
[[listener]]
name = "retry"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "retry"
  protocol = "tcp"
  backend = "retry"

[[listener]]
name = "pp"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "pp"
  protocol = "tcp"
  backend = "pp"

[[backend]]
name = "echo"
servers = ["unix:{echo}"]
health = {{ kind = "tcp", interval = "100ms", timeout = "100ms", rise = 1, fall = 1 }}

[[backend]]
name = "web"
servers = ["unix:{web}"]
health = {{ kind = "websocket", path = "/health", interval = "200ms", timeout = "200ms", rise = 1, fall = 1 }}

[[backend]]
name = "retry"
servers = ["unix:{dead}", "unix:{echo}"]

[[backend]]
name = "pp"
servers = ["unix:{pp}"]
send_proxy_protocol = "v1"
"#,
        echo = echo.display(),
        web = web.display(),
        dead = dead.display(),
        pp = pp.display(),
    );
    let gw = Gateway::start(dir.path(), &toml).await;

    // TCP, through the splice relay.
    let payload = random_bytes(1 << 20, 9);
    let tcp = tokio::net::TcpStream::connect(gw.addr("tcp"))
        .await
        .unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(WITHIN, rd.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(got == payload, "{} bytes back", got.len());

    // HTTP: the backend sees the client's address in X-Forwarded-For.
    let (status, body) = http_get(gw.addr("web"), "/page").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");

    // WebSocket.
    let tcp = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://chat.local/chat", tcp)
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WITHIN, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.close(None).await.unwrap();

    // Health checks and `/backends` name the servers as configured.
    let backends: serde_json::Value =
        serde_json::from_str(&http_get(gw.admin(), "/backends").await.1).unwrap();
    let server = |name: &str| {
        backends
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap()["servers"][0]
            .clone()
    };
    assert_eq!(
        server("echo")["address"],
        format!("unix:{}", echo.display())
    );
    assert_eq!(server("web")["address"], format!("unix:{}", web.display()));
    eventually("both unix servers up by their health checks", || async {
        let m = gw.metrics().await;
        m.get(
            "sockgate_backend_up",
            &[
                ("backend", "echo"),
                ("server", &format!("unix:{}", echo.display())),
            ],
        ) == 1.0
            && m.get(
                "sockgate_backend_up",
                &[
                    ("backend", "web"),
                    ("server", &format!("unix:{}", web.display())),
                ],
            ) == 1.0
    })
    .await;

    // A refused Unix server: the connect moves on to the next one.
    for n in 0..4u8 {
        let tcp = tokio::net::TcpStream::connect(gw.addr("retry"))
            .await
            .unwrap();
        assert_eq!(echoed(tcp, &[n; 3]).await, [n; 3]);
    }
    let m = gw.metrics().await;
    assert!(
        m.get(
            "sockgate_backend_connect_errors_total",
            &[("backend", "retry")]
        ) >= 1.0,
        "the stale server was tried and refused"
    );

    // A PROXY header toward a Unix server carries the client's addresses.
    let mut client = tokio::net::TcpStream::connect(gw.addr("pp")).await.unwrap();
    client.write_all(b"after the header").await.unwrap();
    let (stream, _) = tokio::time::timeout(WITHIN, pp_listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let (client_port, gw_port) = (client.local_addr().unwrap().port(), gw.addr("pp").port());
    assert_eq!(
        line,
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {gw_port}\r\n")
    );
    let mut rest = [0u8; 16];
    reader.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"after the header");
}

#[tokio::test]
async fn a_unix_listener_added_and_removed_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo().await;
    let sock = dir.path().join("added.sock");
    let backend = format!("[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n");
    let tcp_only = format!(
        "{}{backend}",
        listener_toml("edge", "127.0.0.1:0", "", TCP_ROUTE)
    );
    let gw = Gateway::start(dir.path(), &tcp_only).await;
    assert!(!sock.exists());
    let path = dir.path().join("sockgate.toml");
    let with_unix = format!(
        "{}{}{backend}",
        listener_toml("edge", "127.0.0.1:0", "", TCP_ROUTE),
        listener_toml("local", &format!("unix:{}", sock.display()), "", TCP_ROUTE)
    );
    std::fs::write(&path, &with_unix).unwrap();
    gw.handle.reload_from_source().await.unwrap();
    assert_eq!(echoed(connect(&sock).await, b"added").await, b"added");
    // Kept, with another mode: the file gets it.
    let moded = with_unix.replace(
        "name = \"local\"\n",
        "name = \"local\"\nunix = { mode = \"0600\" }\n",
    );
    std::fs::write(&path, &moded).unwrap();
    gw.handle.reload_from_source().await.unwrap();
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    // Renamed on the same path: it keeps its socket.
    let renamed = with_unix.replace("name = \"local\"", "name = \"local2\"");
    std::fs::write(&path, &renamed).unwrap();
    gw.handle.reload_from_source().await.unwrap();
    assert_eq!(echoed(connect(&sock).await, b"renamed").await, b"renamed");
    std::fs::write(&path, &tcp_only).unwrap();
    gw.handle.reload_from_source().await.unwrap();
    assert!(!sock.exists(), "a removed listener's file goes with it");

    // A reload that cannot bind its second new listener (someone listens there) changes
    // nothing, and leaves no file for its first.
    let live = dir.path().join("live.sock");
    let _theirs = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let failing = format!(
        "{}{}{}{backend}",
        listener_toml("edge", "127.0.0.1:0", "", TCP_ROUTE),
        listener_toml("first", &format!("unix:{}", sock.display()), "", TCP_ROUTE),
        listener_toml("second", &format!("unix:{}", live.display()), "", TCP_ROUTE)
    );
    std::fs::write(&path, &failing).unwrap();
    let e = gw.handle.reload_from_source().await.expect_err("refused");
    let text = sockgate::error::error_chain(&e);
    assert!(text.contains("a process is listening on it"), "{text}");
    assert!(!sock.exists(), "the failed reload removed what it bound");
    let tcp = tokio::net::TcpStream::connect(gw.addr("edge"))
        .await
        .unwrap();
    assert_eq!(echoed(tcp, b"still").await, b"still");
}

/// The built binary: the file is kept while an upgrade hands the socket over (no client is
/// refused meanwhile), and removed when the process that has it exits on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_file_survives_an_upgrade_and_goes_on_sigterm() {
    let echo = tcp_echo().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let sock = dir.join("chat.sock");
    let control = dir.join("control.sock").display().to_string();
    let config = dir.join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n",
            listener_toml(
                "local",
                &format!("unix:{}", sock.display()),
                "unix = { mode = \"0660\" }\n",
                TCP_ROUTE
            ),
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut gw = Binary::spawn(
        &[
            "--config",
            &config_arg,
            "--workers",
            "2",
            "--control-socket",
            &control,
        ],
        tmp,
    );
    let ready = gw.ready().await;
    assert_eq!(
        ready["listeners"]["local"],
        format!("unix:{}", sock.display())
    );
    let old_pid = ready["pid"].as_u64().unwrap();
    let inode = std::fs::metadata(&sock).unwrap().ino();

    // Clients connect one after the other while the upgrade runs.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = {
        let (stop, sock) = (stop.clone(), sock.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                match UnixStream::connect(&sock).await {
                    Ok(stream) => {
                        let line = format!("n{ok}");
                        if echoed(stream, line.as_bytes()).await == line.as_bytes() {
                            ok += 1;
                        } else {
                            failed.push("wrong echo".to_owned());
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sockgate"))
            .args(["upgrade", "--control-socket", &control])
            .output(),
    )
    .await
    .expect("sockgate upgrade answers within 30s")
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.stderr()
    );
    let status = gw.exit_status(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
    // The old process has exited: the new one serves on the same file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = clients.await.unwrap();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(ok >= 10, "only {ok} connections went through");
    let meta = std::fs::metadata(&sock).expect("the socket file stays after the upgrade");
    assert_eq!((meta.ino(), meta.mode() & 0o777), (inode, 0o660));
    assert_eq!(echoed(connect(&sock).await, b"new").await, b"new");

    let text = std::fs::read_to_string(gw.dir.path().join("ready.json")).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&text).unwrap();
    let new_pid = ready["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid);
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &new_pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(kill("TERM").success());
    let alive = || {
        std::fs::read_to_string(format!("/proc/{new_pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if alive() {
        kill("KILL");
        panic!("the new process did not exit on SIGTERM");
    }
    assert!(!sock.exists(), "the exit removed the socket file");
}
