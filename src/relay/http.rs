//! The HTTP stage: a hyper server connection on the client side, hyper client connections
//! toward the backend.
//!
//! Plain requests are forwarded with keep-alive on both sides (one backend connection per
//! client connection, reused while it stays open), hop-by-hop headers removed and
//! `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` added.
//!
//! A WebSocket upgrade request is sent to the backend over a fresh connection; a 101 answer
//! goes back to the client and, once hyper has written it and handed both streams over,
//! the two upgraded streams are joined by the WebSocket relay in this same task. Any other
//! answer goes back to the client as it came.
//!
//! hyper answers malformed requests itself: 400, or 431 when the head exceeds
//! [`MAX_HEAD`], or 414 for an overlong URI.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Shared;
use crate::config::Protocol;
use crate::conn::{ClientStream, ConnError, Finish, Handoff};
use crate::detect::Rewind;
use crate::live::ConnCtx;
use crate::metrics::RouteCounters;
use crate::relay::Side;
use crate::relay::websocket;
use crate::route::{Route, RouteQuery};
use crate::snapshot::ListenerSnap;

/// Largest request head accepted; hyper answers 431 beyond it.
pub const MAX_HEAD: usize = 32 * 1024;

type ClientIo = Counting<Rewind<ClientStream>>;
type Body = Either<Incoming, Full<Bytes>>;

/// Serves HTTP on one client connection until it closes, drains, or upgrades (then hands
/// both upgraded streams back for the WebSocket relay).
pub async fn serve(
    client: Rewind<ClientStream>,
    ctx: Arc<ConnCtx>,
    listener: Arc<ListenerSnap>,
    shared: Arc<Shared>,
    tls: bool,
) -> Result<Handoff, ConnError> {
    let state = Arc::new(HttpConn {
        ctx: ctx.clone(),
        listener: listener.clone(),
        shared: shared.clone(),
        tls,
        session: tokio::sync::Mutex::new(None),
        upgrade: Mutex::new(None),
        flushed: Mutex::new(Flushed::default()),
    });
    let io = Counting {
        inner: client,
        ctx: ctx.clone(),
    };
    let service = {
        let state = state.clone();
        service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.handle(req).await) }
        })
    };
    let mut builder = server_http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(listener.defaults.handshake_timeout)
        .max_buf_size(MAX_HEAD);
    // Boxed: the HTTP phase's state lives on the heap only while it runs, so a WebSocket that
    // outlives it does not carry hyper's connection in its task for hours.
    let mut conn = Box::pin(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades(),
    );

    let mut draining = false;
    let served = loop {
        tokio::select! {
            res = conn.as_mut() => break res,
            _ = shared.shutdown.drained(), if !draining => {
                // Finish the request in flight, then close instead of keeping alive.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ctx.cancel.cancelled() => {
                state.flush_bytes();
                return Ok(Handoff::Finished(Finish::Cancelled));
            }
        }
    };
    drop(conn);
    state.flush_bytes();
    // A connection that ended before any request (bad request, early close) is still HTTP.
    ctx.set_protocol(Protocol::Http, &shared.metrics);
    if let Err(e) = served {
        return Err(if e.is_timeout() {
            ConnError::HttpTimeout
        } else {
            ConnError::Http(e)
        });
    }

    let pending = state
        .upgrade
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    drop(state);
    match pending {
        None => Ok(Handoff::Finished(Finish::Http)),
        Some(upgrade) => take_upgraded(upgrade)
            .await
            .map(|upgraded| Handoff::WebSocket(Box::new(upgraded))),
    }
}

/// Both streams of a WebSocket upgrade, out of hyper's hands, with what the relay needs.
pub struct Upgraded {
    pub client: Rewind<ClientStream>,
    pub backend: Rewind<TcpStream>,
    pub session: websocket::Session,
}

/// Waits for hyper to hand over both upgraded streams and takes the raw streams back out of
/// hyper's wrappers (so the relay reads sockets, not trait objects).
async fn take_upgraded(pending: PendingUpgrade) -> Result<Upgraded, ConnError> {
    let client = pending.client.await.map_err(ConnError::Upgrade)?;
    let backend = pending.backend.await.map_err(ConnError::Upgrade)?;
    let client = match client.downcast::<TokioIo<ClientIo>>() {
        Ok(parts) => {
            let (unread, stream) = parts.io.into_inner().inner.into_parts();
            Rewind::new(join(parts.read_buf, unread), stream)
        }
        Err(_) => return Err(ConnError::UpgradeLost(Side::Client)),
    };
    let backend = match backend.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Rewind::new(parts.read_buf, parts.io.into_inner()),
        Err(_) => return Err(ConnError::UpgradeLost(Side::Backend)),
    };
    Ok(Upgraded {
        client,
        backend,
        session: pending.session,
    })
}

fn join(first: Bytes, second: Bytes) -> Bytes {
    if second.is_empty() {
        return first;
    }
    if first.is_empty() {
        return second;
    }
    let mut both = BytesMut::with_capacity(first.len() + second.len());
    both.extend_from_slice(&first);
    both.extend_from_slice(&second);
    both.freeze()
}

struct PendingUpgrade {
    client: OnUpgrade,
    backend: OnUpgrade,
    session: websocket::Session,
}

/// A reusable connection to one backend server, for plain HTTP keep-alive.
struct BackendSession {
    route: Arc<Route>,
    sender: client_http1::SendRequest<Incoming>,
}

/// Bytes already added to `sockgate_bytes_total` and the route they were attributed to.
#[derive(Default)]
struct Flushed {
    counters: Option<RouteCounters>,
    up: u64,
    down: u64,
}

/// State shared by the requests of one client connection (handled one at a time).
struct HttpConn {
    ctx: Arc<ConnCtx>,
    listener: Arc<ListenerSnap>,
    shared: Arc<Shared>,
    tls: bool,
    session: tokio::sync::Mutex<Option<BackendSession>>,
    upgrade: Mutex<Option<PendingUpgrade>>,
    flushed: Mutex<Flushed>,
}

/// Why a request could not be forwarded; each maps to one status.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("no route matches")]
    NoRoute,
    #[error("backend unreachable")]
    Connect(#[source] crate::upstream::ConnectError),
    #[error("backend connection failed")]
    Backend(#[source] hyper::Error),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Connect(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Backend(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl HttpConn {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let websocket = is_websocket_upgrade(&req);
        let protocol = if websocket {
            Protocol::WebSocket
        } else {
            Protocol::Http
        };
        self.ctx.set_protocol(protocol, &self.shared.metrics);
        let host = request_host(&req);
        let sni = self.ctx.info().sni.clone();
        let query = RouteQuery {
            protocol,
            sni: sni.as_deref(),
            host: host.as_deref(),
            path: Some(req.uri().path()),
        };
        let route = self.listener.routes.find(&query).cloned();
        let route_name = route.as_ref().map(|r| r.name.clone());
        let result = match route {
            None => {
                self.shared
                    .metrics
                    .unrouted_total
                    .with_label_values(&[&self.ctx.listener, protocol.as_str()])
                    .inc();
                tracing::info!(
                    method = %req.method(),
                    host = host.as_deref().unwrap_or(""),
                    path = req.uri().path(),
                    protocol = protocol.as_str(),
                    "no route matches"
                );
                Err(ProxyError::NoRoute)
            }
            Some(route) => {
                self.flush_bytes();
                self.attribute(&route);
                if websocket {
                    self.websocket(req, route, host).await
                } else {
                    self.forward(req, route, host).await
                }
            }
        };
        let response = result.unwrap_or_else(|e| {
            if !matches!(e, ProxyError::NoRoute) {
                tracing::warn!(error = %crate::error_chain(&e), "request not forwarded");
            }
            error_response(e.status())
        });
        self.shared
            .metrics
            .http_responses_total
            .with_label_values(&[
                &self.ctx.listener,
                route_name.as_deref().unwrap_or(""),
                response.status().as_str(),
            ])
            .inc();
        response
    }

    /// Records the route for `/connections` and the access log, and where the following
    /// bytes are counted.
    fn attribute(&self, route: &Arc<Route>) {
        {
            let mut info = self.ctx.info();
            info.route = Some(route.name.clone());
            info.backend = Some(route.backend.name.clone());
        }
        tracing::Span::current().record("route", &*route.name);
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        flushed.counters = Some(self.shared.metrics.route_counters(
            &self.ctx.listener,
            &route.name,
            &route.backend.name,
        ));
    }

    /// Adds the bytes counted since the last flush to the current route's counters. Before
    /// the first route is known nothing is flushed, so the first request's head counts
    /// toward its own route; later heads count toward the route of the request before.
    fn flush_bytes(&self) {
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        let up = self.ctx.bytes_client_to_backend.load(Ordering::Relaxed);
        let down = self.ctx.bytes_backend_to_client.load(Ordering::Relaxed);
        let Some(counters) = &flushed.counters else {
            return;
        };
        counters.client_to_backend.inc_by(up - flushed.up);
        counters.backend_to_client.inc_by(down - flushed.down);
        flushed.up = up;
        flushed.down = down;
    }

    fn set_server(&self, server: &str) {
        self.ctx.info().server = Some(server.to_owned());
        tracing::Span::current().record("upstream.address", server);
    }

    async fn connect(&self, route: &Route) -> Result<TcpStream, ProxyError> {
        let (stream, server) = route.backend.connect().await.map_err(ProxyError::Connect)?;
        self.set_server(&server.address);
        Ok(stream)
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        route: Arc<Route>,
        host: Option<String>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        add_forwarding(
            &mut parts.headers,
            self.ctx.client,
            self.tls,
            host.as_deref(),
        );
        parts.uri = origin_form(&parts.uri);
        let mut req = Request::from_parts(parts, body);

        let mut session = self.session.lock().await;
        // A kept-alive backend connection may have been closed by the server since the last
        // request; if hyper hands the request back unsent, retry once on a fresh connection.
        let mut retried = false;
        loop {
            let reuse = !retried
                && session
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(&s.route.backend, &route.backend));
            if !reuse {
                *session = None;
            }
            let alive = match session.as_mut() {
                Some(s) => s.sender.ready().await.is_ok(),
                None => false,
            };
            let sender = match session.as_mut() {
                Some(s) if alive => &mut s.sender,
                _ => {
                    let stream = self.connect(&route).await?;
                    let sender = self.handshake(stream, false).await?;
                    &mut session
                        .insert(BackendSession {
                            route: route.clone(),
                            sender,
                        })
                        .sender
                }
            };
            match sender.try_send_request(req).await {
                Ok(mut response) => {
                    strip_hop_by_hop(response.headers_mut());
                    return Ok(response.map(Either::Left));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        req = unsent;
                    }
                    _ => {
                        *session = None;
                        return Err(ProxyError::Backend(e.into_error()));
                    }
                },
            }
        }
    }

    async fn websocket(
        &self,
        mut req: Request<Incoming>,
        route: Arc<Route>,
        host: Option<String>,
    ) -> Result<Response<Body>, ProxyError> {
        let stream = self.connect(&route).await?;
        let mut sender = self.handshake(stream, true).await?;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        let upgrade = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(upgrade) = upgrade {
            parts.headers.insert(header::UPGRADE, upgrade);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        add_forwarding(
            &mut parts.headers,
            self.ctx.client,
            self.tls,
            host.as_deref(),
        );
        parts.uri = origin_form(&parts.uri);
        let mut response = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(ProxyError::Backend)?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(response.headers_mut());
            return Ok(response.map(Either::Left));
        }
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let permessage_deflate = response
            .headers()
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .is_some_and(websocket::permessage_deflate);
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(PendingUpgrade {
            client: client_upgrade,
            backend: backend_upgrade,
            session: websocket::Session {
                route: route.name.clone(),
                backend: route.backend.name.clone(),
                limits: route.websocket.clone(),
                permessage_deflate,
                idle_timeout: self.listener.defaults.idle_timeout,
                close_timeout: self.listener.defaults.close_timeout,
                drain_spread: self.listener.defaults.drain_spread,
                drain_timeout: self.listener.defaults.drain_timeout,
            },
        });
        let (parts, _) = response.into_parts();
        Ok(Response::from_parts(parts, Either::Right(Full::default())))
    }

    /// Opens a hyper client connection and drives it in a tracked task: for keep-alive it
    /// lives as long as the sender; for an upgrade it ends when the 101 hands the stream over.
    async fn handshake(
        &self,
        stream: TcpStream,
        upgrade: bool,
    ) -> Result<client_http1::SendRequest<Incoming>, ProxyError> {
        let (sender, conn) = client_http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Backend)?;
        let stop = self.ctx.cancel.clone();
        self.shared.shutdown.spawn(async move {
            let result = if upgrade {
                tokio::select! {
                    r = conn.with_upgrades() => r,
                    _ = stop.cancelled() => Ok(()),
                }
            } else {
                tokio::select! {
                    r = conn => r,
                    _ = stop.cancelled() => Ok(()),
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %crate::error_chain(&e), "backend HTTP connection ended");
            }
        });
        Ok(sender)
    }
}

fn error_response(status: StatusCode) -> Response<Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// RFC 6455 §4.2.1: a GET with `Upgrade: websocket` and `Connection: upgrade`.
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && header_has_token(req.headers(), header::UPGRADE, "websocket")
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
}

fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The request's host, lower-case and without port: from an absolute-form URI, else `Host`.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(authority) => authority.host().to_owned(),
        None => {
            let value = req.headers().get(header::HOST)?.to_str().ok()?;
            strip_port(value).to_owned()
        }
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content only.
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if uri.authority().is_some() => {
            Uri::try_from(pq.as_str()).unwrap_or_else(|_| Uri::from_static("/"))
        }
        Some(_) => uri.clone(),
        None => Uri::from_static("/"),
    }
}

/// RFC 9110 §7.6.1: headers that describe one hop, plus those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Appends this hop to `X-Forwarded-For` and `Forwarded` (RFC 7239), and sets
/// `X-Forwarded-Proto` and, when absent, `X-Forwarded-Host`.
fn add_forwarding(headers: &mut HeaderMap, client: SocketAddr, tls: bool, host: Option<&str>) {
    let ip = client.ip().to_canonical();
    let proto = if tls { "https" } else { "http" };

    let previous: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if previous.is_empty() {
        ip.to_string()
    } else {
        format!("{}, {ip}", previous.join(", "))
    };
    set(headers, "x-forwarded-for", &xff);
    set(headers, "x-forwarded-proto", proto);
    if let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or(host.map(str::to_owned))
        && !headers.contains_key("x-forwarded-host")
    {
        set(headers, "x-forwarded-host", &host);
    }

    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        element.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    let previous: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded = if previous.is_empty() {
        element
    } else {
        format!("{}, {element}", previous.join(", "))
    };
    set(headers, header::FORWARDED.as_str(), &forwarded);
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Counts the bytes of the HTTP phase into the connection's totals. After an upgrade the
/// WebSocket relay takes the stream out of this wrapper and counts for itself.
struct Counting<S> {
    inner: S,
    ctx: Arc<ConnCtx>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.ctx
                .bytes_client_to_backend
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.ctx
                .bytes_backend_to_client
                .fetch_add(n as u64, Ordering::Relaxed);
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
            self.ctx
                .bytes_backend_to_client
                .fetch_add(n as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn forwarding_headers_append_this_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("chat.example.com:8443"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        add_forwarding(&mut h, "[::1]:5000".parse().unwrap(), true, None);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "chat.example.com:8443");
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[::1]\";proto=https;host=\"chat.example.com:8443\""
        );
    }

    #[test]
    fn host_is_lowercased_without_port() {
        assert_eq!(strip_port("Example.com:8443"), "Example.com");
        assert_eq!(strip_port("[::1]:8443"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
