//! Scenario 7: HTTP/2 through the TLS frontend, toward HTTP/1.1 backends.
//!
//! - Requests: one h2 connection carries `streams` closed loops of `GET` [`PATH`], each
//!   answered by the backend with [`BODY`] bytes.
//! - WebSockets over HTTP/2 (RFC 8441): one h2 connection carries `streams` extended
//!   `CONNECT`s with `:protocol = websocket`, each then a closed loop of one binary message
//!   and its echo, as scenario 4 does over HTTP/1.1.
//!
//! The backend side is here too: [`serve_http1`] is the HTTP/1.1 server every proxy
//! forwards to (the `GET` answer, and WebSocket upgrades that echo), and [`serve_h2`] the
//! same service over TLS and HTTP/2 with extended `CONNECT` enabled, for `direct`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::backend::pattern;
use crate::load::{self, Stream, Window, WsClient};
use crate::tls;

/// What the request row asks for.
pub const PATH: &str = "/h2bench";
/// Bytes of the backend's answer to a `GET`.
pub const BODY: usize = 64;
/// Where the WebSocket row's extended `CONNECT`s go.
pub const WS_PATH: &str = "/h2ws";

// ---------------------------------------------------------------------------------------
// Backend

type Answer = Response<Full<Bytes>>;

fn status(code: StatusCode) -> Answer {
    let mut response = Response::new(Full::default());
    *response.status_mut() = code;
    response
}

/// The one service of both backends: a WebSocket (RFC 6455 upgrade, or RFC 8441 extended
/// `CONNECT` on HTTP/2) is accepted and echoes every data message; any other request gets
/// [`BODY`] bytes.
async fn answer(mut req: Request<Incoming>) -> Result<Answer, std::convert::Infallible> {
    let extended_connect = req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    let upgrade_key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| req.headers().contains_key(header::UPGRADE))
        .cloned();
    if !extended_connect && upgrade_key.is_none() {
        if req.method() == Method::CONNECT {
            return Ok(status(StatusCode::NOT_IMPLEMENTED));
        }
        return Ok(Response::new(Full::new(pattern(BODY).into())));
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            echo(ws).await;
        }
    });
    let Some(key) = upgrade_key else {
        // RFC 8441: a 200 opens the stream as the WebSocket's byte stream.
        return Ok(status(StatusCode::OK));
    };
    let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = derive_accept_key(key.as_bytes()).parse() {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    // tungstenite answers Ping and Close itself while we keep reading.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// The HTTP/1.1 backend the proxies' h2 frontends forward to: keep-alive, upgrades.
pub async fn serve_http1(tcp: TcpStream) {
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service_fn(answer))
        .with_upgrades()
        .await;
}

/// The same service over TLS and HTTP/2, with extended `CONNECT` (RFC 8441): `direct`.
pub async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) {
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .enable_connect_protocol()
        .serve_connection(TokioIo::new(stream), service_fn(answer))
        .await;
}

// ---------------------------------------------------------------------------------------
// Clients

type Sender = SendRequest<Empty<Bytes>>;

/// The client for the h2 frontends: ALPN `h2` only, so a proxy that does not pick it fails
/// the run instead of being measured on HTTP/1.1.
pub fn connector(ca: &std::path::Path) -> anyhow::Result<TlsConnector> {
    tls::connector(ca, &[b"h2"])
}

/// One TLS connection that settled on h2, and its HTTP/2 handshake.
async fn dial(addr: SocketAddr, connector: &TlsConnector) -> anyhow::Result<(Sender, String)> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let stream = tls::connect(connector, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() != Some(b"h2") {
        bail!(
            "{addr} did not pick ALPN h2 (it picked {:?})",
            alpn.map(|a| String::from_utf8_lossy(&a).into_owned())
        );
    }
    let negotiated = format!("{} ALPN h2", tls::negotiated(&stream));
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, negotiated))
}

/// One `GET` [`PATH`] and its whole answer, which must be the backend's [`BODY`] bytes.
async fn get(sender: &mut Sender, expected: &[u8]) -> anyhow::Result<()> {
    let req = Request::get(format!("https://{}{PATH}", tls::SERVER_NAME))
        .body(Empty::new())
        .context("bad request")?;
    let response = sender.send_request(req).await.context("request failed")?;
    if response.status() != StatusCode::OK {
        bail!("answered {} instead of 200", response.status());
    }
    let body = response.into_body().collect().await?.to_bytes();
    if body != expected {
        bail!("answer of {} bytes differs from the backend's", body.len());
    }
    Ok(())
}

/// Opens a WebSocket over an h2 stream (RFC 8441 extended `CONNECT`).
async fn websocket(mut sender: Sender) -> anyhow::Result<WsClient> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://{}{WS_PATH}", tls::SERVER_NAME))
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .extension(Protocol::from_static("websocket"))
        .body(Empty::new())
        .context("bad request")?;
    let response = sender
        .send_request(req)
        .await
        .context("extended CONNECT failed")?;
    if response.status() != StatusCode::OK {
        bail!("extended CONNECT answered {}", response.status());
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .context("the CONNECT stream did not open")?;
    let stream: Stream = Box::new(TokioIo::new(upgraded));
    Ok(WebSocketStream::from_raw_socket(stream, Role::Client, None).await)
}

/// A row's connection, opened before the clock starts.
pub struct Opened {
    sender: Sender,
    /// The row's WebSockets, for the RFC 8441 row.
    websockets: Vec<WsClient>,
    pub negotiated: String,
}

/// One h2 connection; for `websockets`, also `streams` WebSockets inside it.
pub async fn open(
    addr: SocketAddr,
    connector: &TlsConnector,
    streams: usize,
    websockets: bool,
) -> anyhow::Result<Opened> {
    let (mut sender, negotiated) = dial(addr, connector).await?;
    // A first request, answered after the server's SETTINGS (with
    // SETTINGS_ENABLE_CONNECT_PROTOCOL, which an extended CONNECT needs) have come.
    get(&mut sender, &pattern(BODY)).await?;
    let mut opened = Vec::new();
    if websockets {
        opened = futures_util::future::try_join_all((0..streams).map(|_| {
            let sender = sender.clone();
            async move {
                tokio::time::timeout(load::OP_TIMEOUT, websocket(sender))
                    .await
                    .context("WebSocket over h2 setup timed out")?
            }
        }))
        .await?;
    }
    Ok(Opened {
        sender,
        websockets: opened,
        negotiated,
    })
}

/// Starts the row's closed loops: `streams` of `GET`s, or one echo loop per WebSocket.
pub fn spawn(
    opened: Opened,
    streams: usize,
    size: usize,
    w: Window,
    counter: &Arc<AtomicU64>,
) -> Vec<JoinHandle<anyhow::Result<Vec<u64>>>> {
    let Opened {
        sender, websockets, ..
    } = opened;
    if !websockets.is_empty() {
        return websockets
            .into_iter()
            .map(|ws| {
                let (counter, sender) = (counter.clone(), sender.clone());
                tokio::spawn(async move {
                    let rtts = load::ws_echo(ws, size, w, &counter).await;
                    // The connection lives as long as a handle to it.
                    drop(sender);
                    rtts
                })
            })
            .collect();
    }
    (0..streams)
        .map(|_| {
            let (counter, mut sender) = (counter.clone(), sender.clone());
            tokio::spawn(async move {
                let expected = pattern(BODY);
                let mut rtts = Vec::with_capacity(1 << 14);
                tokio::time::sleep_until(w.start.into()).await;
                loop {
                    let sent = Instant::now();
                    if sent >= w.end {
                        break;
                    }
                    tokio::time::timeout(load::OP_TIMEOUT, get(&mut sender, &expected))
                        .await
                        .context("request timed out")??;
                    let received = Instant::now();
                    counter.fetch_add(1, Ordering::Relaxed);
                    if w.counts(sent, received) {
                        rtts.push(load::nanos(received - sent));
                    }
                }
                Ok(rtts)
            })
        })
        .collect()
}
