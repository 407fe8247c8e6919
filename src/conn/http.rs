//! The HTTP stage: a hyper server connection on the client side, hyper client connections
//! toward the backend.
//!
//! Each request is routed on the config snapshot current when it arrives, so a keep-alive
//! connection follows reloads: a removed route answers 404, and a backend connection is only
//! reused for the same backend of the same snapshot (the one it replaces finishes its
//! response, then closes).
//!
//! The backend hears the truth, whatever the client wrote:
//! - `Host` is the authority the request was routed on: an absolute-form URI's, else the one
//!   `Host` header (RFC 9112 §3.2.2). Two `Host` headers, none in HTTP/1.1, or one that is
//!   not an authority get 400 (RFC 9112 §3.2).
//! - The client's `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` and
//!   `Forwarded` are replaced by what the gateway saw, unless the client's address is in the
//!   listener's `trusted_proxies`: then they are kept, and the lists appended to.
//! - Hop-by-hop headers are removed, with those the `Connection` header names, except the
//!   ones the gateway and the backend rely on ([`KEPT_END_TO_END`]).
//!
//! Timers: `request_timeout` from the request sent to the backend's response head (504);
//! `idle_timeout` between body bytes either way, which ends the transfer and the connection.
//!
//! A WebSocket upgrade request is sent to the backend over a fresh connection; a 101 answer
//! goes back to the client and, once hyper has written it and handed both streams over,
//! the two upgraded streams are joined by the WebSocket relay in this same task. Any other
//! answer goes back to the client as it came.
//!
//! hyper answers malformed requests itself: 400, or 431 when the head exceeds
//! [`MAX_HEAD`], or 414 for an overlong URI. A head still incomplete after
//! `handshake_timeout` gets 408 (RFC 9110 §15.5.9) from here: hyper closes without an answer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Protocol;
use crate::error::Side;
use crate::io::{BackendStream, ClientStream, Rewind};
use crate::live::{CloseReason, ConnCtx};
use crate::metrics::RouteCounters;
use crate::route::{Route, RouteQuery};
use crate::services::Services;
use crate::snapshot::ListenerSnap;
use crate::upstream::{Affinity, ConnectError, Lease, Opening, Pool};

pub mod h2;
mod headers;
mod idle;

use headers::{
    BadRequest, add_forwarding, origin_form, permessage_deflate, set_client_subject,
    strip_hop_by_hop, target,
};
use idle::{Idle, stalled};

/// Largest request head accepted; hyper answers 431 beyond it.
pub const MAX_HEAD: usize = 32 * 1024;

type ClientIo = Counting;
type Body = Either<Idle<Incoming>, Full<Bytes>>;
/// A request body on its way to the backend.
type Upload = Idle<Incoming>;

/// How the HTTP stage ended.
pub enum End {
    /// The client connection closed after its requests.
    Closed,
    /// An operator or a hard stop closed it.
    Cancelled,
    /// A WebSocket upgrade went through.
    Upgraded(Upgraded),
}

/// Why the HTTP stage failed; conn says which stage and side each is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP connection failed")]
    Http(#[source] hyper::Error),
    #[error("HTTP request head not received in time")]
    HeadTimeout,
    #[error("WebSocket upgrade failed")]
    Upgrade(#[source] hyper::Error),
    #[error("upgraded {} stream could not be taken over", .0.as_str())]
    UpgradeLost(Side),
}

/// Serves HTTP on one client connection until it closes, drains, or upgrades (then hands
/// both upgraded streams back for the WebSocket relay).
pub async fn serve(
    client: Rewind<ClientStream>,
    ctx: Arc<ConnCtx>,
    listener: Arc<ListenerSnap>,
    services: Arc<Services>,
    tls: bool,
) -> Result<End, Error> {
    let state = Arc::new(HttpConn::new(ctx.clone(), services.clone(), tls));
    let io = Counting {
        inner: Some(client),
        state: state.clone(),
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
    let drain_timeout = listener.defaults.drain_timeout;
    let head_timeout = listener.defaults.handshake_timeout;
    drop(listener);
    // Boxed: the HTTP phase's state lives on the heap only while it runs, so a WebSocket that
    // outlives it does not carry hyper's connection in its task for hours.
    let mut conn = Box::pin(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades(),
    );

    let mut draining = false;
    // A reload asked this connection to close because its last request's route or backend
    // is gone; HTTP re-routes every request, so the connection stays (see `reload_close`).
    let mut reload_seen = false;
    // A shed closes the connection as a drain would: after the request in flight, bounded
    // by `drain_timeout` as a drain is.
    let mut shed_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let served = loop {
        tokio::select! {
            res = conn.as_mut() => break res,
            _ = services.shutdown.drained(), if !draining => {
                // Finish the request in flight, then close instead of keeping alive.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ctx.cancel.cancelled(), if !reload_seen && shed_deadline.is_none() => {
                if reload_close(&ctx, &services) {
                    reload_seen = true;
                    state.close_idle_backend();
                    continue;
                }
                if shed_close(&ctx, &services) {
                    shed_deadline = Some(Box::pin(tokio::time::sleep(drain_timeout)));
                    if !draining {
                        conn.as_mut().graceful_shutdown();
                    }
                    continue;
                }
                state.flush_bytes();
                return Ok(End::Cancelled);
            }
            // With the token spent on the reload or the shed, a hard stop is heard here.
            _ = services.shutdown.stopped(), if reload_seen || shed_deadline.is_some() => {
                state.flush_bytes();
                return Ok(End::Cancelled);
            }
            _ = async {
                match shed_deadline.as_mut() {
                    Some(deadline) => deadline.await,
                    None => std::future::pending().await,
                }
            } => {
                state.flush_bytes();
                return Ok(End::Cancelled);
            }
        }
    };
    let head_late = matches!(&served, Err(e) if e.is_timeout());
    // Dropping the connection with the flag up parks the client stream (see `Counting`'s
    // drop) so that the 408 can be written after hyper has let go of it.
    state.head_late.store(head_late, Ordering::Relaxed);
    drop(conn);
    // A connection that ended before any request (bad request, early close) is still HTTP.
    ctx.set_protocol(Protocol::Http, &services.metrics);
    if head_late {
        let parked = state
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(client) = parked {
            answer_late_head(client, &state, head_timeout).await;
        }
    }
    state.flush_bytes();
    if let Err(e) = served {
        return Err(if head_late {
            Error::HeadTimeout
        } else {
            Error::Http(e)
        });
    }

    let pending = state
        .upgrade
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    drop(state);
    match pending {
        None => Ok(End::Closed),
        Some(upgrade) => take_upgraded(upgrade).await.map(End::Upgraded),
    }
}

/// Whether the connection's close request came from a reload (route or backend removed)
/// while it is plain HTTP: such a connection keeps serving, each request routed anew. A
/// WebSocket handshake in flight, an operator's close and a hard stop end it.
fn reload_close(ctx: &ConnCtx, services: &Services) -> bool {
    ctx.close_requested()
        && ctx.close_reason() == CloseReason::Reload
        && !services.shutdown.is_stopped()
        && ctx.info().protocol != Some(Protocol::WebSocket)
}

/// Whether the connection's close request is a shed's while it is plain HTTP: it then
/// closes after the request in flight, as on a drain. An upgrade already forwarded goes
/// through, and the WebSocket relay then sends the Close at once.
fn shed_close(ctx: &ConnCtx, services: &Services) -> bool {
    ctx.close_requested()
        && ctx.close_reason() == CloseReason::Shed
        && !services.shutdown.is_stopped()
}

/// Both streams of a WebSocket upgrade, out of hyper's hands, with the route and listener
/// settings of the request it answered.
pub struct Upgraded {
    pub client: Rewind<ClientStream>,
    pub backend: Rewind<BackendStream>,
    pub route: Arc<Route>,
    pub listener: Arc<ListenerSnap>,
    /// The 101 response's `Sec-WebSocket-Extensions` agreed to permessage-deflate.
    pub permessage_deflate: bool,
    /// Counts the relay on its server (`least_conn`, `/backends`) until dropped.
    pub lease: Lease,
}

/// Waits for hyper to hand over both upgraded streams and takes the raw streams back out of
/// hyper's wrappers (so the relay reads sockets, not trait objects).
async fn take_upgraded(pending: PendingUpgrade) -> Result<Upgraded, Error> {
    let client = pending.client.await.map_err(Error::Upgrade)?;
    let backend = pending.backend.await.map_err(Error::Upgrade)?;
    let client = match client.downcast::<TokioIo<ClientIo>>() {
        Ok(parts) => {
            let Some(client) = parts.io.into_inner().take() else {
                return Err(Error::UpgradeLost(Side::Client));
            };
            let (unread, stream) = client.into_parts();
            Rewind::new(join(parts.read_buf, unread), stream)
        }
        Err(_) => return Err(Error::UpgradeLost(Side::Client)),
    };
    let backend = match backend.downcast::<TokioIo<BackendStream>>() {
        Ok(parts) => Rewind::new(parts.read_buf, parts.io.into_inner()),
        Err(_) => return Err(Error::UpgradeLost(Side::Backend)),
    };
    Ok(Upgraded {
        client,
        backend,
        route: pending.route,
        listener: pending.listener,
        permessage_deflate: pending.permessage_deflate,
        lease: pending.lease,
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
    route: Arc<Route>,
    listener: Arc<ListenerSnap>,
    permessage_deflate: bool,
    lease: Lease,
}

/// A reusable connection to one backend server, for plain HTTP keep-alive. Dropping it lets
/// hyper finish the response in flight and close; `abort` closes it at once.
struct BackendSession {
    /// The pool of the snapshot it was opened under: a reload builds new pools, so a
    /// request routed on a newer snapshot opens a fresh connection.
    backend: Arc<Pool>,
    sender: client_http1::SendRequest<Upload>,
    abort: CancellationToken,
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
    services: Arc<Services>,
    tls: bool,
    /// The client presented a verified certificate (routes with `client_cert`).
    client_cert: bool,
    /// Its subject, ready for the listener's `client_cert_header`.
    client_subject: Option<HeaderValue>,
    session: tokio::sync::Mutex<Option<BackendSession>>,
    /// Backend sessions of concurrent HTTP/2 streams, kept once their request is done for
    /// the next stream that finds `session` busy; at most [`h2::MAX_STREAMS`], as many as
    /// the client had streams open at once. HTTP/1.1 never fills it.
    spare: Mutex<Vec<BackendSession>>,
    /// A reload removed the session's backend while a request was using it: the session
    /// is dropped once that request has its response.
    session_stale: AtomicBool,
    upgrade: Mutex<Option<PendingUpgrade>>,
    flushed: Mutex<Flushed>,
    /// hyper gave up on a request head (`handshake_timeout`): the client stream is parked in
    /// `parked` when hyper drops it, for the 408.
    head_late: AtomicBool,
    parked: Mutex<Option<Rewind<ClientStream>>>,
}

impl HttpConn {
    fn new(ctx: Arc<ConnCtx>, services: Arc<Services>, tls: bool) -> Self {
        // Once per connection: every request on it carries the same certificate.
        let (client_cert, client_subject) = {
            let info = ctx.info();
            let subject = info
                .client_subject
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok());
            (info.client_cert, subject)
        };
        HttpConn {
            ctx,
            services,
            tls,
            client_cert,
            client_subject,
            session: tokio::sync::Mutex::new(None),
            spare: Mutex::new(Vec::new()),
            session_stale: AtomicBool::new(false),
            upgrade: Mutex::new(None),
            flushed: Mutex::new(Flushed::default()),
            head_late: AtomicBool::new(false),
            parked: Mutex::new(None),
        }
    }
}

impl HttpConn {
    /// Whether the client's forwarding headers are kept: one scan of a list that is usually
    /// empty. A Unix socket's client (without a PROXY header naming another) is a local
    /// process the socket file's permissions let in, such as a web server in front: trusted.
    fn trusted(&self, listener: &ListenerSnap) -> bool {
        match self.ctx.client().ip() {
            Some(ip) => listener.trusted_proxies.iter().any(|c| c.contains(ip)),
            None => true,
        }
    }

    /// The request head as the backend gets it: the forwarding headers (kept and appended
    /// to when `trusted`), the client certificate's subject where the listener names a
    /// header for it, and the target in origin form.
    fn toward_backend(
        &self,
        parts: &mut http::request::Parts,
        listener: &ListenerSnap,
        trusted: bool,
    ) {
        add_forwarding(
            &mut parts.headers,
            &parts.uri,
            self.ctx.client().ip(),
            self.tls,
            trusted,
        );
        set_client_subject(
            &mut parts.headers,
            listener.client_cert_header.as_ref(),
            self.client_subject.as_ref(),
        );
        parts.uri = origin_form(&parts.uri);
    }
}

impl Drop for HttpConn {
    /// The client is gone: its backend connection goes too, even mid-response.
    fn drop(&mut self) {
        if let Some(session) = self.session.get_mut().take() {
            session.abort.cancel();
        }
        let spare = self.spare.get_mut().unwrap_or_else(|p| p.into_inner());
        for session in spare.drain(..) {
            session.abort.cancel();
        }
    }
}

/// Why a request could not be forwarded; each maps to one status.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("bad request: {}", .0.as_str())]
    BadRequest(BadRequest),
    #[error("the connection is closing")]
    Closing,
    #[error("no route matches")]
    NoRoute,
    #[error("backend unreachable")]
    Connect(#[source] ConnectError),
    #[error("backend connection failed")]
    Backend(#[source] hyper::Error),
    #[error("the client's request body stalled")]
    UploadStalled(#[source] hyper::Error),
    #[error("no response head from the backend within {0:?} (request_timeout)")]
    Timeout(Duration),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(bad) => bad.status(),
            ProxyError::Closing => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Connect(ConnectError::NoHealthyServer { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Backend(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UploadStalled(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the client connection ends after this answer: it sent something the next
    /// request on it cannot be trusted after, or its request body was left unread.
    fn closes(&self) -> bool {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::Closing
            | ProxyError::UploadStalled(_)
            | ProxyError::Timeout(_) => true,
            ProxyError::NoRoute | ProxyError::Connect(_) | ProxyError::Backend(_) => false,
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
        self.ctx.set_protocol(protocol, &self.services.metrics);
        let routed = self.route(&req, protocol, websocket);
        let route_name = routed.as_ref().ok().map(|(route, _)| route.name.clone());
        let result = match routed {
            Ok((route, listener)) => {
                self.flush_bytes();
                self.attribute(&route);
                let trusted = self.trusted(&listener);
                if websocket {
                    self.websocket(req, route, &listener, trusted).await
                } else {
                    self.forward(req, route, &listener, trusted).await
                }
            }
            Err(e) => Err(e),
        };
        self.respond(route_name.as_deref(), result)
    }

    /// The response to a request: the backend's, or the error's, logged and counted.
    fn respond(
        &self,
        route_name: Option<&str>,
        result: Result<Response<Body>, ProxyError>,
    ) -> Response<Body> {
        let response = result.unwrap_or_else(|e| {
            match &e {
                // Logged where it was found, with what was asked for.
                ProxyError::NoRoute => {}
                ProxyError::BadRequest(_) | ProxyError::Closing | ProxyError::UploadStalled(_) => {
                    tracing::info!(error = %crate::error::error_chain(&e), "request refused")
                }
                ProxyError::Connect(_) | ProxyError::Backend(_) | ProxyError::Timeout(_) => {
                    tracing::warn!(error = %crate::error::error_chain(&e), "request not forwarded")
                }
            }
            error_response(e.status(), e.closes())
        });
        self.services
            .metrics
            .http_responses_total
            .with_label_values(&[
                &self.ctx.listener,
                route_name.unwrap_or(""),
                response.status().as_str(),
            ])
            .inc();
        response
    }

    /// The route for a request on the config in force now (a reload applies from the next
    /// request on), with that config's listener, or why it gets none.
    fn route<B>(
        &self,
        req: &Request<B>,
        protocol: Protocol,
        websocket: bool,
    ) -> Result<(Arc<Route>, Arc<ListenerSnap>), ProxyError> {
        let target = target(req).map_err(ProxyError::BadRequest)?;
        // The reload kept this connection for plain requests (see `reload_close`); an
        // operator's close since, or an upgrade, which would run under the spent token, is
        // told to come back on a new connection.
        // A shed lets the request in flight through, as a drain does.
        if self.ctx.close_requested()
            && (websocket
                || !matches!(
                    self.ctx.close_reason(),
                    CloseReason::Reload | CloseReason::Shed
                ))
        {
            return Err(ProxyError::Closing);
        }
        // `None` when a reload removed the listener: it accepts no more, and what is still
        // open on it finds no route.
        let listener = self
            .services
            .snapshot()
            .listener(&self.ctx.listener)
            .cloned();
        let route = listener.as_ref().and_then(|listener| {
            let info = self.ctx.info();
            let query = RouteQuery {
                protocol,
                sni: info.sni.as_deref(),
                host: target.host.as_deref(),
                path: Some(req.uri().path()),
                client_cert: self.client_cert,
            };
            listener.routes.find(&query).cloned()
        });
        match (route, listener) {
            (Some(route), Some(listener)) => Ok((route, listener)),
            _ => {
                self.services
                    .metrics
                    .unrouted_total
                    .with_label_values(&[&self.ctx.listener, protocol.as_str()])
                    .inc();
                tracing::info!(
                    method = %req.method(),
                    host = target.host.as_deref().unwrap_or(""),
                    path = req.uri().path(),
                    protocol = protocol.as_str(),
                    "no route matches"
                );
                Err(ProxyError::NoRoute)
            }
        }
    }

    /// Records the route for `/connections` and the access log, and where the following
    /// bytes are counted.
    fn attribute(&self, route: &Arc<Route>) {
        self.ctx.set_route(&route.name, &route.backend.name);
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        flushed.counters = Some(
            route
                .counters(&self.services.metrics, &self.ctx.listener)
                .clone(),
        );
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

    /// Closes the backend connections kept for the next requests: a reload removed their
    /// backend. A request waiting for its response head holds the shared one; it is closed
    /// after that. Spares in use go back to the spares after their request, where the next
    /// request routed on the new snapshot drops them (their pool is not its backend's).
    fn close_idle_backend(&self) {
        // Dropped, not aborted: a response body still streaming to the client finishes.
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).clear();
        match self.session.try_lock() {
            // Dropped, not aborted: a response body still streaming to the client finishes.
            Ok(mut session) => drop(session.take()),
            Err(_) => self.session_stale.store(true, Ordering::Relaxed),
        }
    }

    async fn connect(
        &self,
        route: &Route,
        affinity: Affinity,
    ) -> Result<(BackendStream, Lease), ProxyError> {
        let opening = Opening {
            client: self.ctx.client().addr(),
            reached: self.ctx.reached(),
            http: true,
        };
        let (stream, lease) = route
            .backend
            .connect(affinity, opening)
            .await
            .map_err(ProxyError::Connect)?;
        self.ctx.set_server(lease.address());
        Ok((stream, lease))
    }

    /// Waits for the backend's response head for `limit`. The clock starts over while the
    /// client is still sending (its request body is streamed to the backend meanwhile): a
    /// slow upload is not a silent backend; a stalled one is ended by `idle_timeout`.
    async fn response_within<F: Future>(&self, limit: Duration, answer: F) -> Option<F::Output> {
        let received = || self.ctx.bytes_client_to_backend.load(Ordering::Relaxed);
        let mut seen = received();
        let timer = tokio::time::sleep(limit);
        tokio::pin!(answer, timer);
        loop {
            tokio::select! {
                out = &mut answer => return Some(out),
                () = &mut timer => {
                    let now = received();
                    if now == seen {
                        return None;
                    }
                    seen = now;
                    timer.as_mut().reset(Instant::now() + limit);
                }
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        route: Arc<Route>,
        listener: &ListenerSnap,
        trusted: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // The key as the client sent it, before the forwarded headers are rewritten.
        let affinity = route
            .backend
            .affinity(self.ctx.client().ip(), Some((&parts.headers, &parts.uri)));
        strip_hop_by_hop(&mut parts.headers);
        self.toward_backend(&mut parts, listener, trusted);
        let idle = listener.defaults.idle_timeout;
        let mut req = Request::from_parts(parts, Idle::new(body, idle, Side::Client));

        let mut session = SessionSlot::take(&self.session, &self.spare);
        if session.is_shared() && self.session_stale.swap(false, Ordering::Relaxed) {
            *session = None;
        }
        // A kept-alive backend connection may have been closed by the server since the last
        // request; if hyper hands the request back unsent, retry once on a fresh connection.
        let mut retried = false;
        loop {
            let reuse = !retried
                && session
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(&s.backend, &route.backend));
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
                    let (stream, lease) = self.connect(&route, affinity).await?;
                    let abort = CancellationToken::new();
                    let sender = self.handshake(stream, lease, abort.clone()).await?;
                    &mut session
                        .insert(BackendSession {
                            backend: route.backend.clone(),
                            sender,
                            abort,
                        })
                        .sender
                }
            };
            let answer = sender.try_send_request(req);
            let Some(answer) = self.response_within(route.request_timeout, answer).await else {
                // The backend holds the request: close its connection, it cannot be reused.
                if let Some(s) = session.take() {
                    s.abort.cancel();
                }
                return Err(ProxyError::Timeout(route.request_timeout));
            };
            match answer {
                Ok(mut response) => {
                    if session.is_shared() && self.session_stale.swap(false, Ordering::Relaxed) {
                        // hyper finishes this response's body, then closes.
                        *session = None;
                    }
                    strip_hop_by_hop(response.headers_mut());
                    return Ok(
                        response.map(|body| Either::Left(Idle::new(body, idle, Side::Backend)))
                    );
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        req = unsent;
                    }
                    _ => {
                        *session = None;
                        let e = e.into_error();
                        if stalled(&e) == Some(Side::Client) {
                            return Err(ProxyError::UploadStalled(e));
                        }
                        return Err(ProxyError::Backend(e));
                    }
                },
            }
        }
    }

    async fn websocket(
        &self,
        mut req: Request<Incoming>,
        route: Arc<Route>,
        listener: &Arc<ListenerSnap>,
        trusted: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let affinity = route
            .backend
            .affinity(self.ctx.client().ip(), Some((req.headers(), req.uri())));
        let (stream, lease) = self.connect(&route, affinity).await?;
        let mut sender = self.upgrade_handshake(stream).await?;
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
        self.toward_backend(&mut parts, listener, trusted);
        let idle = listener.defaults.idle_timeout;
        let body = Idle::new(body, idle, Side::Client);
        // The 101 is a response head like any other (`request_timeout`), and the wait is a
        // silence that `idle_timeout` bounds too.
        let limit = route.request_timeout.min(idle);
        let answer = sender.send_request(Request::from_parts(parts, body));
        let Some(answer) = self.response_within(limit, answer).await else {
            // Dropping the request closes the backend connection.
            return Err(ProxyError::Timeout(limit));
        };
        let mut response = answer.map_err(ProxyError::Backend)?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(response.headers_mut());
            return Ok(response.map(|body| Either::Left(Idle::new(body, idle, Side::Backend))));
        }
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let permessage_deflate = response
            .headers()
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .is_some_and(permessage_deflate);
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(PendingUpgrade {
            client: client_upgrade,
            backend: backend_upgrade,
            route,
            listener: listener.clone(),
            permessage_deflate,
            lease,
        });
        let (parts, _) = response.into_parts();
        Ok(Response::from_parts(parts, Either::Right(Full::default())))
    }

    /// Opens a keep-alive hyper client connection, driven in a tracked task that lives as
    /// long as the sender (then finishes the response in flight), until `abort`, or until a
    /// hard stop. Not the connection's own token: a reload that spends it must not cut a
    /// response short (see `reload_close`).
    async fn handshake(
        &self,
        stream: BackendStream,
        lease: Lease,
        abort: CancellationToken,
    ) -> Result<client_http1::SendRequest<Upload>, ProxyError> {
        let (sender, conn) = client_http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Backend)?;
        let stop = self.services.shutdown.stop_token().clone();
        self.services.shutdown.spawn(async move {
            // The server counts this connection while it is open, kept alive or not.
            let _lease = lease;
            let result = tokio::select! {
                r = conn => r,
                _ = abort.cancelled() => Ok(()),
                _ = stop.cancelled() => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(error = %crate::error::error_chain(&e), "backend HTTP connection ended");
            }
        });
        Ok(sender)
    }

    /// Opens a hyper client connection for one upgrade, driven in a tracked task that ends
    /// when the 101 hands the stream over, or with the connection's token.
    async fn upgrade_handshake(
        &self,
        stream: BackendStream,
    ) -> Result<client_http1::SendRequest<Upload>, ProxyError> {
        let (sender, conn) = client_http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Backend)?;
        let stop = self.ctx.cancel.clone();
        self.services.shutdown.spawn(async move {
            let result = tokio::select! {
                r = conn.with_upgrades() => r,
                _ = stop.cancelled() => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(error = %crate::error::error_chain(&e), "backend HTTP connection ended");
            }
        });
        Ok(sender)
    }
}

fn error_response(status: StatusCode, close: bool) -> Response<Body> {
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
    if close {
        // hyper closes the connection after a response that says so.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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

/// Counts the bytes of the HTTP phase into the connection's totals. After an upgrade the
/// WebSocket relay takes the stream out of this wrapper and counts for itself.
///
/// The stream is an `Option` only so that it can leave: taken by the upgrade, or parked in
/// [`HttpConn::parked`] when hyper drops it after a late head. It is `Some` while hyper
/// drives it.
struct Counting {
    inner: Option<Rewind<ClientStream>>,
    state: Arc<HttpConn>,
}

impl Counting {
    fn take(mut self) -> Option<Rewind<ClientStream>> {
        self.inner.take()
    }

    fn stream(&mut self) -> io::Result<Pin<&mut Rewind<ClientStream>>> {
        match self.inner.as_mut() {
            Some(inner) => Ok(Pin::new(inner)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        if self.state.head_late.load(Ordering::Relaxed)
            && let Some(inner) = self.inner.take()
        {
            *self.state.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(inner);
        }
    }
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = self.stream()?.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.state
                .ctx
                .bytes_client_to_backend
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.stream()?.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.state
                .ctx
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
        let result = self.stream()?.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.state
                .ctx
                .bytes_backend_to_client
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_shutdown(cx)
    }
}

/// The answer to a request head that did not arrive whole within `handshake_timeout`.
const LATE_HEAD: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// How long the 408 may take to leave: it fits any socket buffer, so only a client that
/// stopped reading as well as writing holds it up.
const LATE_HEAD_WRITE: Duration = Duration::from_secs(1);

/// Writes the 408 (and, on TLS, `close_notify`) to a client whose request head was late,
/// then lets the connection close.
async fn answer_late_head(mut client: Rewind<ClientStream>, state: &HttpConn, timeout: Duration) {
    use tokio::io::AsyncWriteExt;
    let written = tokio::time::timeout(LATE_HEAD_WRITE, async {
        client.write_all(LATE_HEAD).await?;
        client.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        state
            .ctx
            .bytes_backend_to_client
            .fetch_add(LATE_HEAD.len() as u64, Ordering::Relaxed);
    }
    tracing::info!(
        ?timeout,
        "request head not received within handshake_timeout: 408"
    );
    state
        .services
        .metrics
        .http_responses_total
        .with_label_values(&[&state.ctx.listener, "", "408"])
        .inc();
}

/// The connection's kept-alive backend session, or, while another request of the same
/// connection holds it (concurrent HTTP/2 streams), a spare one that is free (or none, and
/// this request opens one), so that no stream waits behind another's response. The spare
/// goes back to the connection's spares when the request is done with it. HTTP/1.1 requests
/// come one at a time and always find the shared one free.
enum SessionSlot<'a> {
    Shared(tokio::sync::MutexGuard<'a, Option<BackendSession>>),
    Own {
        session: Option<BackendSession>,
        spare: &'a Mutex<Vec<BackendSession>>,
    },
}

impl<'a> SessionSlot<'a> {
    fn take(
        shared: &'a tokio::sync::Mutex<Option<BackendSession>>,
        spare: &'a Mutex<Vec<BackendSession>>,
    ) -> Self {
        match shared.try_lock() {
            Ok(guard) => SessionSlot::Shared(guard),
            Err(_) => {
                let mut spares = spare.lock().unwrap_or_else(|p| p.into_inner());
                // Closed ones go; one still streaming a response body stays for later.
                spares.retain(|s| !s.sender.is_closed());
                let free = spares.iter().rposition(|s| s.sender.is_ready());
                SessionSlot::Own {
                    session: free.map(|i| spares.swap_remove(i)),
                    spare,
                }
            }
        }
    }

    /// `session_stale` speaks of the shared session only.
    fn is_shared(&self) -> bool {
        matches!(self, SessionSlot::Shared(_))
    }
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        if let SessionSlot::Own { session, spare } = self
            && let Some(s) = session.take()
            && !s.sender.is_closed()
        {
            let mut spares = spare.lock().unwrap_or_else(|p| p.into_inner());
            if spares.len() < h2::MAX_STREAMS as usize {
                spares.push(s);
            }
        }
    }
}

impl std::ops::Deref for SessionSlot<'_> {
    type Target = Option<BackendSession>;
    fn deref(&self) -> &Self::Target {
        match self {
            SessionSlot::Shared(guard) => guard,
            SessionSlot::Own { session, .. } => session,
        }
    }
}

impl std::ops::DerefMut for SessionSlot<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            SessionSlot::Shared(guard) => guard,
            SessionSlot::Own { session, .. } => session,
        }
    }
}
