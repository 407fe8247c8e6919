//! HTTP/2 toward the client, on TLS listeners whose client chose ALPN `h2`; HTTP/1.1 toward
//! the backend.
//!
//! Each stream is a request of its own, routed and forwarded as an HTTP/1.1 request is
//! (`:authority` is the host; the same forwarded and hop-by-hop header rules). A stream
//! takes the connection's kept-alive backend connection when it is free and a fresh one
//! when another stream holds it, so concurrent streams never wait for each other.
//!
//! A WebSocket over HTTP/2 (RFC 8441: an extended CONNECT with `:protocol = websocket`,
//! allowed by `SETTINGS_ENABLE_CONNECT_PROTOCOL`) becomes an HTTP/1.1 Upgrade toward the
//! backend: a `GET` with a fresh `Sec-WebSocket-Key`, version 13, and the client's
//! subprotocols and extensions. The backend's 101 becomes a 200 (RFC 8441 §5); any other
//! answer goes back as it came. The stream and the backend socket are then joined by the
//! WebSocket relay that conn hands in, one per stream, all driven in this connection's task.
//!
//! Drain, an operator's close and a shed: the relays inside send their Close frames (as
//! on HTTP/1.1), and only when the last of them has ended does the connection send its
//! GOAWAY (hyper's graceful shutdown), which lets requests in flight finish. A GOAWAY sent
//! first would leave the client's WebSockets to be cut without a Close.
//!
//! Bytes: the connection's totals are what crossed the client connection (HTTP/2 framing
//! included); the relays count their WebSocket bytes toward their route, and the rest goes
//! to the route of the latest request, as on an HTTP/1.1 keep-alive connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::ext::Protocol as H2Protocol;
use hyper::server::conn::http2 as server_http2;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::headers::{BadRequest, permessage_deflate, strip_hop_by_hop};
use super::idle::Idle;
use super::{Body, End, Error, HttpConn, MAX_HEAD, ProxyError};
use crate::config::Protocol;
use crate::error::Side;
use crate::io::{BackendStream, ClientStream, Rewind};
use crate::live::{CloseReason, ConnCtx};
use crate::metrics::RouteCounters;
use crate::route::Route;
use crate::services::Services;
use crate::snapshot::ListenerSnap;
use crate::upstream::Lease;

/// Streams a client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`); RFC 9113
/// §6.5.2 recommends no fewer than 100.
pub const MAX_STREAMS: u32 = 100;

/// A WebSocket over one HTTP/2 stream, joined to its backend socket, for the relay.
pub struct WebSocket {
    pub client: TokioIo<Upgraded>,
    pub backend: Rewind<BackendStream>,
    pub route: Arc<Route>,
    pub listener: Arc<ListenerSnap>,
    pub permessage_deflate: bool,
    /// Counts the relay on its server (`least_conn`, `/backends`) until dropped.
    pub lease: Lease,
}

/// A relay conn runs for one WebSocket stream.
pub type Relay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A WebSocket handshake answered with 200, waiting for hyper to hand both streams over.
struct Pending {
    client: OnUpgrade,
    backend: OnUpgrade,
    route: Arc<Route>,
    listener: Arc<ListenerSnap>,
    permessage_deflate: bool,
    lease: Lease,
}

struct H2Conn {
    http: Arc<HttpConn>,
    /// Requests whose response (head or body) is still going, and WebSocket streams.
    active: AtomicUsize,
    upgrades: mpsc::UnboundedSender<Pending>,
    /// The route the bytes not relayed as WebSocket frames are counted toward, and what
    /// has been added to the connection's totals and to it so far.
    flushed: std::sync::Mutex<Flushed>,
    /// What crossed the client connection (see the module's note on bytes).
    wire_up: AtomicU64,
    wire_down: AtomicU64,
}

#[derive(Default)]
struct Flushed {
    counters: Option<RouteCounters>,
    up: u64,
    down: u64,
}

/// Serves HTTP/2 on one client connection until it closes, drains, or is closed; runs
/// `relay` for each WebSocket stream, in this task.
pub async fn serve(
    client: Rewind<ClientStream>,
    ctx: Arc<ConnCtx>,
    listener: Arc<ListenerSnap>,
    services: Arc<Services>,
    relay: &(dyn Fn(WebSocket) -> Relay + Send + Sync),
) -> Result<End, Error> {
    let (upgrades, mut upgraded) = mpsc::unbounded_channel();
    let http = Arc::new(HttpConn::new(ctx.clone(), services.clone(), true));
    let state = Arc::new(H2Conn {
        http: http.clone(),
        active: AtomicUsize::new(0),
        upgrades,
        flushed: std::sync::Mutex::new(Flushed::default()),
        wire_up: AtomicU64::new(0),
        wire_down: AtomicU64::new(0),
    });
    let io = WireCount {
        inner: client,
        state: state.clone(),
    };
    let service = {
        let state = state.clone();
        service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.handle(req).await) }
        })
    };
    let mut builder = server_http2::Builder::new(Exec(services.clone(), tracing::Span::current()));
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .enable_connect_protocol();
    let head_timeout = listener.defaults.handshake_timeout;
    let drain_timeout = listener.defaults.drain_timeout;
    drop(listener);
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), service));

    let mut pending = FuturesUnordered::new();
    let mut relays: FuturesUnordered<Relay> = FuturesUnordered::new();
    // A drain, an operator's close or a shed: GOAWAY once no WebSocket stream is left.
    let mut closing = false;
    let mut goaway = false;
    let mut reload_seen = false;
    let mut close_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // An HTTP/1.1 connection waits `handshake_timeout` for each request head, the first
    // and those after: an HTTP/2 connection without a stream for as long is closed.
    let mut idle_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + head_timeout, head_timeout);
    let mut last_wire = 0;
    let served = loop {
        if closing && !goaway && relays.is_empty() && pending.is_empty() {
            goaway = true;
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            res = conn.as_mut() => break Some(res),
            Some(p) = upgraded.recv() => pending.push(take_upgraded(p)),
            Some(ws) = pending.next(), if !pending.is_empty() => {
                if let Some(ws) = ws {
                    relays.push(relay(ws));
                }
            }
            Some(()) = relays.next(), if !relays.is_empty() => {}
            _ = services.shutdown.drained(), if !closing => closing = true,
            _ = ctx.cancel.cancelled(), if !reload_seen && close_deadline.is_none() => {
                if services.shutdown.is_stopped() {
                    break None;
                }
                if ctx.close_reason() == CloseReason::Reload {
                    // Plain requests are routed anew, as on HTTP/1.1; the WebSocket relays
                    // close their streams (1012) themselves.
                    reload_seen = true;
                    http.close_idle_backend();
                    continue;
                }
                // An operator's close or a shed: the relays send their Close, then GOAWAY,
                // bounded by `drain_timeout` as a drain is.
                closing = true;
                close_deadline = Some(Box::pin(tokio::time::sleep(drain_timeout)));
            }
            // With the token spent on the reload or the close, a hard stop is heard here.
            _ = services.shutdown.stopped(), if reload_seen || close_deadline.is_some() => {
                break None;
            }
            _ = async {
                match close_deadline.as_mut() {
                    Some(deadline) => deadline.await,
                    None => std::future::pending().await,
                }
            } => break None,
            _ = idle_tick.tick() => {
                let wire = state.wire_up.load(Ordering::Relaxed)
                    + state.wire_down.load(Ordering::Relaxed);
                let idle = state.active.load(Ordering::Relaxed) == 0
                    && relays.is_empty()
                    && pending.is_empty()
                    && wire == last_wire;
                if idle && goaway {
                    // The GOAWAY's PING was never answered (RFC 9113 §6.8 has the server
                    // wait for it): a silent client is not waited for any longer.
                    break Some(Ok(()));
                }
                if idle && !closing {
                    tracing::debug!(?head_timeout, "HTTP/2 connection without a stream: GOAWAY");
                    closing = true;
                }
                last_wire = wire;
                state.flush();
            }
        }
    };
    // A connection that ended before any request is still HTTP.
    ctx.set_protocol(Protocol::Http, &services.metrics);
    // Whatever is still relaying ends now, and records how: on a hard stop at once (a relay
    // sees the stop first), or because the client connection is gone. One still going when
    // an operator's close ran out of `drain_timeout` is dropped with the connection.
    if served.is_some() || services.shutdown.is_stopped() {
        while relays.next().await.is_some() {}
    }
    drop(relays);
    drop(conn);
    state.flush();
    match served {
        None => Ok(End::Cancelled),
        Some(served) => served.map(|()| End::Closed).map_err(Error::Http),
    }
}

async fn take_upgraded(p: Pending) -> Option<WebSocket> {
    let client = p.client.await.ok()?;
    let backend = p.backend.await.ok()?;
    let backend = match backend.downcast::<TokioIo<BackendStream>>() {
        Ok(parts) => Rewind::new(parts.read_buf, parts.io.into_inner()),
        Err(_) => {
            tracing::debug!("upgraded backend stream could not be taken over");
            return None;
        }
    };
    Some(WebSocket {
        client: TokioIo::new(client),
        backend,
        route: p.route,
        listener: p.listener,
        permessage_deflate: p.permessage_deflate,
        lease: p.lease,
    })
}

impl H2Conn {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Tracked> {
        // Dropped with the response body, or here if the stream is reset before its answer.
        let active = Active::new(self.clone());
        let websocket = req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<H2Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        let protocol = if websocket {
            Protocol::WebSocket
        } else {
            Protocol::Http
        };
        let http = &self.http;
        http.ctx.set_protocol(protocol, &http.services.metrics);
        self.flush();
        let response = if websocket {
            let (route_name, result) = self.websocket(req).await;
            http.respond(route_name.as_deref(), result)
        } else {
            let (route_name, result) = self.forward(req).await;
            http.respond(route_name.as_deref(), result)
        };
        response.map(|body| Tracked {
            body,
            _active: active,
        })
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
    ) -> (Option<Arc<str>>, Result<Response<Body>, ProxyError>) {
        let http = &self.http;
        let (mut parts, body) = req.into_parts();
        join_cookies(&mut parts.headers);
        let mut req = Request::from_parts(parts, body);
        // Routed as HTTP/2 (`:authority`, no `Host`), forwarded as HTTP/1.1.
        let (route, listener) = match http.route(&req, Protocol::Http, false) {
            Ok(routed) => routed,
            Err(e) => return (None, Err(e)),
        };
        *req.version_mut() = Version::HTTP_11;
        self.attribute(&route);
        let trusted = http.trusted(&listener);
        let name = route.name.clone();
        (
            Some(name),
            http.forward(req, route, &listener, trusted).await,
        )
    }

    /// RFC 8441 §5: the extended CONNECT toward the backend as the HTTP/1.1 Upgrade
    /// handshake of RFC 6455 §4.1.
    async fn websocket(
        &self,
        req: Request<Incoming>,
    ) -> (Option<Arc<str>>, Result<Response<Body>, ProxyError>) {
        let http = &self.http;
        let mut req = req;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        parts.method = Method::GET;
        parts.extensions.remove::<H2Protocol>();
        join_cookies(&mut parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        let headers = &mut parts.headers;
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let key = tungstenite::handshake::client::generate_key();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let Ok(key) = HeaderValue::from_str(&key) else {
            return (None, Err(ProxyError::BadRequest(BadRequest::Connect)));
        };
        headers.insert(header::SEC_WEBSOCKET_KEY, key);
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        let req = Request::from_parts(parts, body);
        let (route, listener) = match http.route(&req, Protocol::WebSocket, true) {
            Ok(routed) => routed,
            Err(e) => return (None, Err(e)),
        };
        self.attribute(&route);
        let name = Some(route.name.clone());
        let trusted = http.trusted(&listener);
        let affinity = route
            .backend
            .affinity(http.ctx.client().ip(), Some((req.headers(), req.uri())));
        let connected = async {
            let (stream, lease) = http.connect(&route, affinity).await?;
            let sender = http.upgrade_handshake(stream).await?;
            Ok::<_, ProxyError>((sender, lease))
        };
        let (mut sender, lease) = match connected.await {
            Ok(connected) => connected,
            Err(e) => return (name, Err(e)),
        };
        let (mut parts, body) = req.into_parts();
        parts.version = Version::HTTP_11;
        http.toward_backend(&mut parts, &listener, trusted);
        let idle = listener.defaults.idle_timeout;
        let body = Idle::new(body, idle, Side::Client);
        let limit = route.request_timeout.min(idle);
        let answer = sender.send_request(Request::from_parts(parts, body));
        let Some(answer) = http.response_within(limit, answer).await else {
            return (name, Err(ProxyError::Timeout(limit)));
        };
        let mut response = match answer {
            Ok(response) => response,
            Err(e) => return (name, Err(ProxyError::Backend(e))),
        };
        let accepted = response
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == accept.as_bytes());
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(response.headers_mut());
            return (
                name,
                Ok(response.map(|body| Either::Left(Idle::new(body, idle, Side::Backend)))),
            );
        }
        if !accepted {
            // RFC 6455 §4.1: the client (here the gateway) fails a handshake whose accept
            // key is wrong; the backend is not speaking WebSocket to us.
            tracing::warn!("backend's 101 carries a wrong Sec-WebSocket-Accept");
            return (
                name,
                Err(ProxyError::Connect(crate::upstream::ConnectError::Io {
                    server: lease.address().to_owned(),
                    source: std::io::Error::other(
                        "wrong Sec-WebSocket-Accept in the backend's 101",
                    ),
                })),
            );
        }
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let permessage_deflate = response
            .headers()
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .is_some_and(permessage_deflate);
        // RFC 8441 §5: a 2xx answers the CONNECT; what the handshake agreed goes with it.
        let mut ok = Response::new(Either::Right(Full::default()));
        for name in [
            header::SEC_WEBSOCKET_PROTOCOL,
            header::SEC_WEBSOCKET_EXTENSIONS,
        ] {
            if let Some(value) = response.headers().get(&name) {
                ok.headers_mut().insert(name, value.clone());
            }
        }
        let pending = Pending {
            client: client_upgrade,
            backend: backend_upgrade,
            route,
            listener,
            permessage_deflate,
            lease,
        };
        if self.upgrades.send(pending).is_err() {
            // The connection is ending: nothing will relay this stream.
            return (name, Err(ProxyError::Closing));
        }
        (name, Ok(ok))
    }

    /// Records the route for `/connections` and the access log, and where the following
    /// bytes are counted.
    fn attribute(&self, route: &Arc<Route>) {
        let http = &self.http;
        http.ctx.set_route(&route.name, &route.backend.name);
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        flushed.counters = Some(
            route
                .counters(&http.services.metrics, &http.ctx.listener)
                .clone(),
        );
    }

    /// Adds the bytes that crossed the client connection since the last flush, less what
    /// the WebSocket relays counted themselves, to the connection's totals and to the
    /// latest request's route.
    fn flush(&self) {
        let ctx = &self.http.ctx;
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        let Flushed { counters, up, down } = &mut *flushed;
        let directions = [
            (
                &self.wire_up,
                &ctx.bytes_client_to_backend,
                up,
                counters.as_ref().map(|c| &c.client_to_backend),
            ),
            (
                &self.wire_down,
                &ctx.bytes_backend_to_client,
                down,
                counters.as_ref().map(|c| &c.backend_to_client),
            ),
        ];
        for (wire, total, added, counter) in directions {
            let relayed = total.load(Ordering::Relaxed).saturating_sub(*added);
            let plain = wire.load(Ordering::Relaxed).saturating_sub(relayed);
            let delta = plain.saturating_sub(*added);
            if delta == 0 {
                continue;
            }
            total.fetch_add(delta, Ordering::Relaxed);
            if let Some(counter) = counter {
                counter.inc_by(delta);
            }
            *added += delta;
        }
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `Cookie` into one field per pair; an
/// HTTP/1.1 backend gets them joined with "; ".
fn join_cookies(headers: &mut http::HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// A request being answered, for the connection's idle rule; its WebSocket, if it opens
/// one, is counted by the relay set instead.
struct Active(Arc<H2Conn>);

impl Active {
    fn new(conn: Arc<H2Conn>) -> Self {
        conn.active.fetch_add(1, Ordering::Relaxed);
        Active(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request [`Active`] until hyper drops it (sent whole, or
/// the stream reset).
pub struct Tracked {
    body: Body,
    _active: Active,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs hyper's per-stream tasks as tasks the shutdown waits for, in the connection's
/// span (its id in the stream's log events).
#[derive(Clone)]
struct Exec(Arc<Services>, tracing::Span);

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        drop(self.0.shutdown.spawn(task.instrument(self.1.clone())));
    }
}

/// Counts what crosses the client connection (after TLS), for [`H2Conn::flush`].
struct WireCount {
    inner: Rewind<ClientStream>,
    state: Arc<H2Conn>,
}

impl AsyncRead for WireCount {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.state.wire_up.fetch_add(n as u64, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for WireCount {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.state.wire_down.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.state.wire_down.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
