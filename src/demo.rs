//! `sockgate demo`: the gateway in front of two built-in backends, with nothing to set up.
//! The backends are real servers on loopback: a TCP echo, and an HTTP server that echoes
//! WebSocket messages and answers plain requests with the headers it received (so the
//! forwarding headers the gateway adds are visible).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::certgen;

/// Echoes every byte back; half-closes when the client does.
pub async fn tcp_echo(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut rd, mut wr) = tcp.split();
            if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                let _ = wr.shutdown().await;
            }
        });
    }
}

/// WebSocket echo at any path; plain HTTP requests get a text page listing their headers.
pub async fn ws_echo(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(ws_echo_conn(tcp));
    }
}

/// Serves one connection of [`ws_echo`], over any byte stream (a Unix socket; tests run it
/// over TLS).
pub async fn ws_echo_conn<IO>(io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        service_fn(|req| async move { Ok::<_, std::convert::Infallible>(ws_echo_request(req)) });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

fn ws_echo_request(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()));
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let Some(accept) = key.filter(|_| upgrade) else {
        let mut page = format!("{} {}\n", req.method(), req.uri());
        for (name, value) in req.headers() {
            page.push_str(&format!(
                "{}: {}\n",
                name,
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        return Response::new(Full::new(Bytes::from(page)));
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                // tungstenite queues the Close reply; flush sends it.
                let _ = ws.flush().await;
                break;
            }
        }
    });
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Files the demo writes: a self-signed certificate and the config that uses it.
pub struct DemoFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// Writes the demo's certificate and config into `dir`, naming the two backends' addresses.
/// The files must not exist yet: `dir` is meant to be a fresh private folder.
pub fn write_files(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    ws_backend: SocketAddr,
    tcp_backend: SocketAddr,
) -> Result<DemoFiles, certgen::CertGenError> {
    certgen::create_private_dir_all(dir)?;
    let pair = certgen::self_signed(certgen::DEV_NAMES)?;
    certgen::write_new_file(&dir.join("demo.crt"), &pair.cert)?;
    certgen::write_new_file(&dir.join("demo.key"), &pair.key)?;
    let config = format!(
        r#"# Written by `sockgate demo`. Try: sockgate check --config {path}
[admin]
listen = "{admin}"

[defaults]
# Clients that say nothing for this long are taken for raw TCP (the echo route).
detect_timeout = "1s"
drain_timeout = "5s"
drain_spread = "1s"
close_timeout = "1s"

[[listener]]
name = "demo"
listen = "{listen}"
tls = {{ cert = "demo.crt", key = "demo.key" }}

  [[listener.route]]
  name = "websocket"
  protocol = "websocket"
  backend = "ws-echo"

  [[listener.route]]
  name = "http"
  protocol = "http"
  backend = "ws-echo"

  [[listener.route]]
  name = "tcp"
  protocol = "tcp"
  backend = "tcp-echo"

[[backend]]
name = "ws-echo"
servers = ["{ws_backend}"]

[[backend]]
name = "tcp-echo"
servers = ["{tcp_backend}"]
"#,
        path = dir.join("sockgate.toml").display(),
    );
    let config_path = dir.join("sockgate.toml");
    certgen::write_new_file(&config_path, &config)?;
    Ok(DemoFiles {
        dir: dir.to_owned(),
        config: config_path,
    })
}

/// What to type to see the demo work.
pub fn instructions(listen: SocketAddr, admin: SocketAddr, files: &DemoFiles) -> String {
    let port = listen.port();
    format!(
        r#"
sockgate demo is running (config: {config}).

  TLS + WebSocket echo:
    SSL_CERT_FILE={cert} python3 -m websockets wss://localhost:{port}/chat   (pip install websockets)
    websocat --insecure wss://localhost:{port}/chat
  TLS + plain HTTP (the backend answers with the headers it received):
    curl --insecure https://localhost:{port}/hello
  TLS + raw TCP echo (type a line; anything that is not HTTP goes to the echo backend):
    openssl s_client -connect 127.0.0.1:{port} -servername localhost -quiet
  Admin:
    curl http://{admin}/metrics
    curl http://{admin}/connections
    curl http://{admin}/readyz

Edit the config and reload it: curl -X POST http://{admin}/reload
Ctrl-C drains and exits; the folder {dir} (config, certificate and key) is removed then:
copy the config elsewhere to keep your edits.
"#,
        dir = files.dir.display(),
        config = files.config.display(),
        cert = files.dir.join("demo.crt").display(),
    )
}
