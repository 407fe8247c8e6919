//! The per-connection pipeline, top to bottom:
//!
//! ```text
//! accept ─► [PROXY header] ─► TLS handshake (SNI → cert, ALPN) ─► detect ─► route ─► connect ─► relay ─► finish
//! ```
//!
//! [`serve`] runs one connection in its own task. Each stage returns the next stream or a
//! [`ConnError`] that says which stage failed and on whose side; the error is logged once,
//! in the access-log event when the connection ends, and never reaches the accept loop.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::io::Socket;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tracing::Instrument;
use tracing::field::Empty;

pub mod http;
pub mod udp;

use crate::client_hello::{self, Hello};
use crate::config::Protocol;
use crate::detect::{self, DetectError, Detected};
use crate::error::Side;
use crate::io::{BackendStream, ClientStream, Rewind};
use crate::limits::{IpPermit, IpTable};
use crate::live::{ConnCtx, Peer, Permit, access_event};
use crate::proxy_header::{self, Header, ProxyHeaderError};
use crate::relay::tcp::{self as tcp_relay, Flow};
use crate::relay::{self, RelayEnd};
use crate::route::{Route, RouteQuery};
use crate::services::Services;
use crate::snapshot::ListenerSnap;
use crate::upstream::{ConnectError, Lease, Opening};

/// How a connection ended when no stage failed.
#[derive(Debug)]
pub enum Finish {
    /// A TCP relay ran and ended this way.
    Relayed(RelayEnd),
    /// A WebSocket relay ran and ended this way.
    WebSocket(relay::websocket::WsEnd),
    /// An HTTP connection closed after its requests.
    Http,
    /// An operator or a hard stop closed it.
    Cancelled,
}

/// Which stage failed and why. The side follows from the variant.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    ProxyHeader(ProxyHeaderError),
    #[error("refused: over the listener's limit ({0})")]
    Refused(&'static str),
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("protocol detection failed")]
    Detect(#[source] DetectError),
    #[error("reading the TLS ClientHello")]
    ClientHello(#[source] client_hello::Malformed),
    #[error("no route matches")]
    NoRoute,
    #[error("backend unreachable")]
    Connect(#[source] ConnectError),
    #[error(transparent)]
    Http(#[from] http::Error),
    #[error("closed by the gateway before the connection was set up")]
    Cancelled,
    #[error("the connection's task ended abnormally")]
    Aborted,
}

impl ConnError {
    pub fn stage(&self) -> &'static str {
        match self {
            ConnError::ProxyHeader(_) => "proxy_header",
            ConnError::Refused(_) => "limits",
            ConnError::Tls(_) | ConnError::TlsTimeout => "tls",
            ConnError::Detect(_) | ConnError::ClientHello(_) => "detect",
            ConnError::NoRoute => "route",
            ConnError::Connect(_) => "connect",
            ConnError::Http(http::Error::Http(_) | http::Error::HeadTimeout) => "http",
            ConnError::Http(http::Error::Upgrade(_) | http::Error::UpgradeLost(_)) => "upgrade",
            ConnError::Cancelled => "cancelled",
            ConnError::Aborted => "aborted",
        }
    }

    /// Who is to blame: `client`, `backend`, or `gateway`.
    pub fn side(&self) -> &'static str {
        match self {
            ConnError::ProxyHeader(_)
            | ConnError::Refused(_)
            | ConnError::Tls(_)
            | ConnError::TlsTimeout
            | ConnError::Detect(_)
            | ConnError::ClientHello(_)
            | ConnError::Http(http::Error::Http(_) | http::Error::HeadTimeout) => "client",
            ConnError::Connect(_) | ConnError::Http(http::Error::Upgrade(_)) => "backend",
            ConnError::NoRoute | ConnError::Cancelled | ConnError::Aborted => "gateway",
            ConnError::Http(http::Error::UpgradeLost(side)) => side.as_str(),
        }
    }
}

/// What the setup stages hand back to [`serve`].
pub enum Handoff {
    /// The connection has ended (a TCP relay, plain HTTP, a cancel).
    Finished(Finish),
    /// A WebSocket upgrade went through: both streams, ready for the relay.
    /// Boxed, so that holding it beside the relay's future costs the task a pointer.
    WebSocket(Box<WebSocketReady>),
}

/// Both streams of an upgraded connection and what the WebSocket relay runs with. The
/// session lives here, on the heap of WebSocket connections only, rather than in the task,
/// whose size every connection pays.
pub struct WebSocketReady {
    client: Rewind<ClientStream>,
    backend: Rewind<BackendStream>,
    session: relay::websocket::Session,
    /// Counts the relay on its server (`least_conn`, `/backends`) until it ends.
    #[expect(dead_code, reason = "held for its drop")]
    lease: Lease,
}

/// The places a connection holds under the limits, given back when it ends.
pub struct Permits {
    /// `[defaults] max_connections`.
    #[expect(dead_code, reason = "held for its drop")]
    pub global: Permit,
    /// The listener's `max_connections`.
    #[expect(dead_code, reason = "held for its drop")]
    pub listener: Permit,
    /// The client address's place under the per-address limits.
    pub ip: Option<IpPermit>,
    /// Per-address limits still to check, on the address a PROXY header carries.
    pub ip_table: Option<Arc<IpTable>>,
}

/// Runs a setup stage (TLS handshake, detection, backend connect) unless the connection is
/// closed first: by the operator, or by a hard stop when `drain_timeout` runs out, which a
/// stage waiting on a slow peer must not outlast. The stage is polled first, so one that is
/// done at once (a loopback connect) never registers with the token, which takes its lock.
///
/// A macro, not an async fn: a function's future would hold the stage twice (its argument,
/// and the copy it polls), and every stage's future is part of the connection's.
macro_rules! unless_closed {
    ($ctx:expr, $stage:expr $(,)?) => {
        tokio::select! {
            biased;
            done = $stage => done,
            _ = $ctx.cancel.cancelled() => Err(ConnError::Cancelled),
        }
    };
}

/// Runs one accepted connection through the whole pipeline. `permits` (its places under
/// the limits) are held until the connection ends.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps a second copy of its arguments in the task for the connection's whole life.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice in every connection's task"
)]
pub fn serve(
    mut tcp: Socket,
    peer: Peer,
    lsnap: Arc<ListenerSnap>,
    services: Arc<Services>,
    permits: Permits,
) -> impl Future<Output = ()> + Send {
    async move {
        // The TLS configuration comes from the snapshot in force at accept; the route is
        // picked on the one in force when detection is done (see `pipeline`).
        let ctx = Arc::new(ConnCtx::new(
            services.live.next_id(),
            lsnap.conn_metrics.clone(),
            peer,
            services.shutdown.conn_token(),
        ));
        services.live.insert(ctx.clone());
        let span = tracing::info_span!(
            "conn",
            conn.id = ctx.id,
            network.peer.address = %peer,
            client.address = Empty,
            listener = %ctx.listener,
            tls.sni = Empty,
            route = Empty,
            upstream.address = Empty,
        );
        // Whatever ends this task — a return, a panic, the runtime dropping it — the
        // connection leaves the live table and the gauges, and gets its access-log event.
        // The guard owns what it needs, so it costs the task one flag.
        let mut finishing = Finishing {
            ctx,
            services,
            span,
            permits,
            done: false,
        };
        if lsnap.proxy_protocol {
            let admitted = Box::pin(proxied(
                &mut tcp,
                &finishing.ctx,
                &lsnap,
                &finishing.services,
                finishing.permits.ip_table.take(),
            ))
            .instrument(finishing.span.clone())
            .await;
            match admitted {
                Ok(ip) => finishing.permits.ip = ip,
                Err(e) => return finishing.finish(Err(e)),
            }
        }
        if lsnap.sends_proxy_header
            && finishing.ctx.local().is_none()
            && let Some(local) = tcp.local_addr()
        {
            finishing.ctx.set_local(local);
        }
        let Finishing {
            ctx,
            services,
            span,
            ..
        } = &finishing;
        // Boxed: the setup stages (TLS handshake, detection, hyper's connection, the
        // upgrade) are freed when they hand over, so a WebSocket that stays open for hours
        // carries only its relay in this task.
        let mut ws =
            match Box::pin(pipeline(tcp, ctx, lsnap, services).instrument(span.clone())).await {
                Ok(Handoff::WebSocket(ws)) => ws,
                Ok(Handoff::Finished(finish)) => return finishing.finish(Ok(finish)),
                Err(e) => return finishing.finish(Err(e)),
            };
        // Boxed too: a plain connection's task then carries neither the WebSocket relay
        // nor the setup, only what every connection needs, and the task is moved into
        // place and freed with that size.
        let end = Box::pin(
            relay::websocket::relay(
                &mut ws.client,
                &mut ws.backend,
                &ws.session,
                ctx,
                &services.metrics,
                &services.shutdown,
            )
            .instrument(span.clone()),
        )
        .await;
        drop(ws);
        finishing.finish(Ok(Finish::WebSocket(end)));
    }
}

/// Finishes a connection exactly once: through [`Finishing::finish`], or on drop when the
/// task unwinds from a panic or is dropped unfinished.
struct Finishing {
    ctx: Arc<ConnCtx>,
    services: Arc<Services>,
    span: tracing::Span,
    /// The places under the limits, given back once the connection is finished.
    permits: Permits,
    done: bool,
}

impl Finishing {
    /// The connection has ended: out of the live table, metrics, the access log.
    fn finish(&mut self, outcome: Result<Finish, ConnError>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.services.live.remove(self.ctx.id);
        self.ctx.finish_metrics(&self.services.metrics);
        self.span.in_scope(|| access_log(&self.ctx, &outcome));
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        if !self.done {
            if std::thread::panicking() {
                tracing::error!(
                    conn.id = self.ctx.id,
                    "connection task panicked; its connection is closed"
                );
            }
            self.finish(Err(ConnError::Aborted));
        }
    }
}

/// The PROXY header stage, then the per-address limits on the address it carries. Over
/// them, or with a bad header, the connection is closed and counted.
async fn proxied(
    tcp: &mut Socket,
    ctx: &ConnCtx,
    listener: &ListenerSnap,
    services: &Services,
    ip_table: Option<Arc<IpTable>>,
) -> Result<Option<IpPermit>, ConnError> {
    let count = |reason: &str| {
        services
            .metrics
            .rejected_total
            .with_label_values(&[&listener.name, reason])
            .inc();
    };
    let header = unless_closed!(ctx, async {
        proxy_header::read(tcp, listener.defaults.detect_timeout)
            .await
            .map_err(|e| {
                count(e.reason());
                ConnError::ProxyHeader(e)
            })
    })?;
    if let Header::Proxied { client, local } = header {
        ctx.set_proxied(client, local);
    }
    let Some(table) = ip_table else {
        return Ok(None);
    };
    // A header without addresses (`LOCAL`, `UNKNOWN`) from a Unix peer leaves none to count.
    let Some(ip) = ctx.client().ip() else {
        return Ok(None);
    };
    match table.admit(ip, listener.ip_rules(), Instant::now()) {
        Ok(permit) => Ok(Some(permit)),
        Err(refused) => {
            count(refused.reason());
            if listener.tls.is_none() && listener.detect {
                let _ = tcp.try_write(crate::limits::REFUSED_503);
            }
            Err(ConnError::Refused(refused.reason()))
        }
    }
}

async fn pipeline(
    tcp: Socket,
    ctx: &Arc<ConnCtx>,
    listener: Arc<ListenerSnap>,
    services: &Arc<Services>,
) -> Result<Handoff, ConnError> {
    // On Linux the socket has it already, copied from the listening socket at accept (see
    // `listener::bind`).
    #[cfg(not(target_os = "linux"))]
    let _ = tcp.set_nodelay(true);
    // A ClientHello still being read after detection has what is left of the same budget,
    // counted from the accept (no clock read of its own), or from the end of the PROXY
    // header, which had a budget of its own.
    let detect_start = if listener.proxy_protocol {
        tokio::time::Instant::now()
    } else {
        tokio::time::Instant::from_std(ctx.started_at)
    };
    let detect_deadline = detect_start + listener.defaults.detect_timeout;
    let client = match &listener.tls {
        // Boxed so the handshake's state is freed when it ends instead of sizing the task.
        Some(config) => {
            let (received, tcp) = if listener.routes.any_passthrough() {
                match peek_client_hello(tcp, ctx, &listener, detect_deadline).await? {
                    Peeked::Passthrough(client) => {
                        let Some(current) = services.snapshot().listener(&listener.name).cloned()
                        else {
                            return Err(ConnError::NoRoute);
                        };
                        return Box::pin(passthrough_path(
                            client,
                            ctx,
                            &current,
                            services,
                            detect_deadline,
                        ))
                        .await
                        .map(Handoff::Finished);
                    }
                    Peeked::Terminate(received, tcp) => (received, tcp),
                }
            } else {
                (Bytes::new(), tcp)
            };
            unless_closed!(
                ctx,
                Box::pin(tls_handshake(
                    tcp, received, config, &listener, ctx, services,
                )),
            )?
        }
        None => ClientStream::Plain(tcp),
    };
    let tls = matches!(client, ClientStream::Tls(_));
    // A client that chose `h2` in the handshake speaks HTTP/2: no bytes to look at.
    if tls && ctx.info().alpn.as_deref() == Some("h2") {
        return h2_path(client, ctx, &listener.name, services).await;
    }
    let (detected, client) = if listener.detect {
        unless_closed!(ctx, async {
            detect::detect(client, listener.defaults.detect_timeout)
                .await
                .map_err(ConnError::Detect)
        })?
    } else {
        (Detected::Tcp, Rewind::new(Bytes::new(), client))
    };
    // Routes are picked on the config in force now: a reload during the handshake or
    // detection applies to this connection (the TLS certificate came from the one before).
    // With neither (nor a PROXY header), nothing has waited since the accept took the
    // snapshot, which is still the one in force.
    let waited = tls || listener.detect || listener.proxy_protocol;
    let current = if waited {
        services.snapshot().listener(&listener.name).cloned()
    } else {
        Some(listener)
    };
    let listener = match current {
        Some(current) => current,
        None => {
            // A reload removed the listener meanwhile.
            let mut client = client;
            close_gently(&mut client).await;
            return Err(ConnError::NoRoute);
        }
    };
    match detected {
        // On a TLS listener the ClientHello was looked at before the handshake; TLS inside
        // the session is the client's business.
        Detected::Tls if !tls && listener.routes.any_passthrough() => {
            // Boxed (here and above): its state is larger than the TCP path's, and would
            // otherwise size the task of every plain connection.
            Box::pin(passthrough_path(
                client,
                ctx,
                &listener,
                services,
                detect_deadline,
            ))
            .await
            .map(Handoff::Finished)
        }
        // A listener whose only routes are TCP and passthrough runs detection for the
        // ClientHello alone: HTTP-looking bytes are TCP there, as they were without it.
        Detected::Http if listener.routes.any_http() => {
            match http::serve(client, ctx.clone(), listener, services.clone(), tls).await? {
                http::End::Closed => Ok(Handoff::Finished(Finish::Http)),
                http::End::Cancelled => Ok(Handoff::Finished(Finish::Cancelled)),
                http::End::Upgraded(ws) => {
                    let http::Upgraded {
                        client,
                        backend,
                        route,
                        listener,
                        permessage_deflate,
                        lease,
                    } = ws;
                    Ok(Handoff::WebSocket(Box::new(WebSocketReady {
                        client,
                        backend,
                        session: websocket_session(&route, &listener, permessage_deflate),
                        lease,
                    })))
                }
            }
        }
        Detected::Http | Detected::Tls | Detected::Tcp => {
            tcp_path(client, ctx, &listener, services)
                .await
                .map(Handoff::Finished)
        }
    }
}

/// HTTP/2 on a TLS listener (ALPN `h2`): each WebSocket stream inside gets its own relay,
/// run in this connection's task by the HTTP stage.
async fn h2_path(
    client: ClientStream,
    ctx: &Arc<ConnCtx>,
    listener: &str,
    services: &Arc<Services>,
) -> Result<Handoff, ConnError> {
    let mut client = Rewind::new(Bytes::new(), client);
    let Some(listener) = services.snapshot().listener(listener).cloned() else {
        // A reload removed the listener meanwhile.
        close_gently(&mut client).await;
        return Err(ConnError::NoRoute);
    };
    let relay = |ws: http::h2::WebSocket| -> http::h2::Relay {
        let ctx = ctx.clone();
        let services = services.clone();
        Box::pin(
            async move {
                let http::h2::WebSocket {
                    mut client,
                    mut backend,
                    route,
                    listener,
                    permessage_deflate,
                    lease,
                } = ws;
                let session = websocket_session(&route, &listener, permessage_deflate);
                let end = relay::websocket::relay(
                    &mut client,
                    &mut backend,
                    &session,
                    &ctx,
                    &services.metrics,
                    &services.shutdown,
                )
                .await;
                drop(lease);
                tracing::info!(
                    route = %route.name,
                    outcome = end.reason.as_str(),
                    closed_by = end.close.map_or("", |(_, by)| by),
                    websocket.close_code = end.close.map(|(code, _)| code),
                    "WebSocket stream finished"
                );
            }
            .in_current_span(),
        )
    };
    match http::h2::serve(client, ctx.clone(), listener, services.clone(), &relay).await? {
        http::End::Cancelled => Ok(Handoff::Finished(Finish::Cancelled)),
        http::End::Closed | http::End::Upgraded(_) => Ok(Handoff::Finished(Finish::Http)),
    }
}

/// What a TLS listener with passthrough routes does with a connection.
enum Peeked {
    /// The ClientHello names a passthrough route: relay it (it is the stream's prefix).
    Passthrough(Rewind<ClientStream>),
    /// Terminate TLS here; the bytes read so far start the handshake.
    Terminate(Bytes, Socket),
}

/// Reads the ClientHello before the handshake, on a TLS listener with passthrough routes, to
/// tell a session it relays untouched from one it terminates. Bytes that are not a
/// ClientHello go to the handshake, which answers them with a TLS alert.
async fn peek_client_hello(
    tcp: Socket,
    ctx: &ConnCtx,
    listener: &ListenerSnap,
    deadline: tokio::time::Instant,
) -> Result<Peeked, ConnError> {
    let (sni, rewind) = unless_closed!(ctx, async {
        detect::read_until(
            Rewind::new(Bytes::new(), tcp),
            deadline,
            client_hello::MAX_BUFFERED,
            |buf| match client_hello::parse(buf) {
                Ok(Hello::Incomplete) => None,
                Ok(Hello::Complete { sni }) => Some(sni),
                Err(_) => Some(None),
            },
        )
        .await
        .map_err(ConnError::Detect)
    })?;
    let passthrough = sni.as_deref().is_some_and(|sni| {
        let query = RouteQuery {
            protocol: Protocol::TlsPassthrough,
            sni: Some(sni),
            host: None,
            path: None,
            client_cert: false,
        };
        listener.routes.find(&query).is_some()
    });
    let (received, tcp) = rewind.into_parts();
    Ok(if passthrough {
        Peeked::Passthrough(Rewind {
            prefix: received,
            inner: ClientStream::Plain(tcp),
        })
    } else {
        Peeked::Terminate(received, tcp)
    })
}

async fn tls_handshake(
    tcp: Socket,
    received: Bytes,
    config: &Arc<rustls::ServerConfig>,
    listener: &ListenerSnap,
    ctx: &ConnCtx,
    services: &Services,
) -> Result<ClientStream, ConnError> {
    let started = Instant::now();
    let result = tokio::time::timeout(
        listener.defaults.handshake_timeout,
        crate::io::tls::accept_after(tcp, &received, config.clone()),
    )
    .await;
    let ok = matches!(result, Ok(Ok(_)));
    services
        .metrics
        .tls_handshakes_total
        .with_label_values(&[&*listener.name, if ok { "ok" } else { "error" }])
        .inc();
    let failed = |reason: &str| {
        services
            .metrics
            .tls_handshake_errors_total
            .with_label_values(&[&*listener.name, reason])
            .inc();
    };
    let mut stream = match result {
        Err(_) => {
            failed("timeout");
            return Err(ConnError::TlsTimeout);
        }
        Ok(Err(e)) => {
            failed(handshake_error_reason(&e));
            return Err(ConnError::Tls(e));
        }
        Ok(Ok(stream)) => stream,
    };
    services
        .metrics
        .tls_handshake_duration_seconds
        .with_label_values(&[&listener.name])
        .observe(started.elapsed().as_secs_f64());
    let sni = stream.take_sni();
    if let Some(sni) = &sni {
        tracing::Span::current().record("tls.sni", sni.as_str());
    }
    {
        let mut info = ctx.info();
        info.sni = sni;
        info.alpn = stream
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        // Verified by the listener's `client_auth`; its subject is formatted here, once,
        // for the backend header, `/connections` and the access log.
        if let Some(leaf) = stream.peer_certificates().and_then(<[_]>::first) {
            info.client_cert = true;
            info.client_subject = crate::tls::subject_rfc4514(leaf).map(Arc::from);
        }
    }
    Ok(ClientStream::Tls(Box::new(stream)))
}

/// The `reason` label of a failed handshake: rustls' error, which the stream carries as
/// the source of its `io::Error`, says whether the client certificate was the cause.
fn handshake_error_reason(e: &io::Error) -> &'static str {
    let rustls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_client_certificate",
        _ => "other",
    }
}

async fn tcp_path(
    mut client: Rewind<ClientStream>,
    ctx: &ConnCtx,
    listener: &ListenerSnap,
    services: &Services,
) -> Result<Finish, ConnError> {
    ctx.set_protocol(Protocol::Tcp, &services.metrics);
    // The server name a TLS listener's handshake gave; a ClientHello read on a plaintext
    // listener is not one a `tcp` route can match (config refuses `sni` there).
    let (sni, client_cert) = if listener.tls.is_some() {
        let info = ctx.info();
        (info.sni.clone(), info.client_cert)
    } else {
        (None, false)
    };
    let query = RouteQuery {
        protocol: Protocol::Tcp,
        sni: sni.as_deref(),
        host: None,
        path: None,
        client_cert,
    };
    let Some(route) = listener.routes.find(&query).cloned() else {
        services
            .metrics
            .unrouted_total
            .with_label_values(&[&listener.name, Protocol::Tcp.as_str()])
            .inc();
        close_gently(&mut client).await;
        return Err(ConnError::NoRoute);
    };
    relay_tcp(client, &route, ctx, listener, services).await
}

/// A TLS session relayed untouched, routed on the server name in its ClientHello, which is
/// read whole (it may span records) within what is left of `detect_timeout`. A server name
/// no passthrough route takes goes to the listener's TCP routes, as any other bytes would.
async fn passthrough_path(
    client: Rewind<ClientStream>,
    ctx: &ConnCtx,
    listener: &ListenerSnap,
    services: &Services,
    deadline: tokio::time::Instant,
) -> Result<Finish, ConnError> {
    let read = unless_closed!(ctx, async {
        detect::read_until(client, deadline, client_hello::MAX_BUFFERED, |buf| {
            match client_hello::parse(buf) {
                Ok(Hello::Incomplete) => None,
                Ok(Hello::Complete { sni }) => Some(Ok(sni)),
                Err(malformed) => Some(Err(malformed)),
            }
        })
        .await
        .map_err(ConnError::Detect)
    });
    let (sni, mut client) = match read {
        Ok((Ok(sni), client)) => (sni, client),
        Ok((Err(malformed), mut client)) => {
            close_gently(&mut client).await;
            return Err(ConnError::ClientHello(malformed));
        }
        // The stream was dropped, which closed it.
        Err(e) => return Err(e),
    };
    if let Some(sni) = &sni {
        tracing::Span::current().record("tls.sni", sni.as_str());
    }
    let query = RouteQuery {
        protocol: Protocol::TlsPassthrough,
        sni: sni.as_deref(),
        host: None,
        path: None,
        client_cert: false,
    };
    let route = listener.routes.find(&query).cloned();
    ctx.info().sni = sni;
    if let Some(route) = route {
        ctx.set_protocol(Protocol::TlsPassthrough, &services.metrics);
        return relay_tcp(client, &route, ctx, listener, services).await;
    }
    let tcp = RouteQuery {
        protocol: Protocol::Tcp,
        sni: None,
        host: None,
        path: None,
        client_cert: false,
    };
    if listener.routes.find(&tcp).is_some() {
        return tcp_path(client, ctx, listener, services).await;
    }
    ctx.set_protocol(Protocol::TlsPassthrough, &services.metrics);
    services
        .metrics
        .unrouted_total
        .with_label_values(&[&listener.name, Protocol::TlsPassthrough.as_str()])
        .inc();
    close_gently(&mut client).await;
    Err(ConnError::NoRoute)
}

/// Connects to the route's backend and relays bytes both ways until either side ends.
async fn relay_tcp(
    mut client: Rewind<ClientStream>,
    route: &Route,
    ctx: &ConnCtx,
    listener: &ListenerSnap,
    services: &Services,
) -> Result<Finish, ConnError> {
    ctx.set_route(&route.name, &route.backend.name);
    // TCP has no request: only `hash_on = "client_ip"` finds its key.
    let affinity = route.backend.affinity(ctx.client().ip(), None);
    let opening = Opening {
        client: ctx.client().addr(),
        reached: ctx.reached(),
        http: false,
    };
    let connected = unless_closed!(ctx, async {
        route
            .backend
            .connect(affinity, opening)
            .await
            .map_err(ConnError::Connect)
    });
    // The lease counts this connection on its server until the relay ends.
    let (mut backend, lease) = match connected {
        Ok(connected) => connected,
        Err(e) => {
            close_gently(&mut client).await;
            return Err(e);
        }
    };
    ctx.set_server(lease.address());

    let counters = route.counters(&services.metrics, &listener.name);
    let up = Flow {
        total: &ctx.bytes_client_to_backend,
        counter: &counters.client_to_backend,
    };
    let down = Flow {
        total: &ctx.bytes_backend_to_client,
        counter: &counters.backend_to_client,
    };
    let idle = listener.defaults.idle_timeout;
    // The connection's token fires on `request_close` or on a hard stop (its parent), each of
    // which sets its flag first.
    let close = || ctx.close_requested() || services.shutdown.is_stopped();
    let cancel = relay::Cancel::new(&ctx.cancel, &close);

    // Plain on both sides: splice(2), the bytes never enter user space. TLS on either side
    // needs them there, to decrypt or encrypt: the copying relay.
    #[cfg(target_os = "linux")]
    if let (
        Rewind {
            prefix,
            inner: ClientStream::Plain(tcp),
        },
        BackendStream::Plain(backend),
    ) = (&mut client, &mut backend)
    {
        let prefix = std::mem::take(prefix);
        if !prefix.is_empty() {
            // What detection read goes first.
            if let Err(error) = backend.write_all(&prefix).await {
                return Ok(Finish::Relayed(RelayEnd::Error {
                    side: Side::Backend,
                    error,
                }));
            }
            up.add(prefix.len());
        }
        let end = relay::splice::relay(tcp, backend, up, down, idle, cancel).await;
        return Ok(Finish::Relayed(end));
    }

    let end = tcp_relay::relay(&mut client, &mut backend, up, down, idle, cancel).await;
    if !matches!(end, RelayEnd::Closed { .. }) {
        close_gently(&mut client).await;
    }
    Ok(Finish::Relayed(end))
}

/// What the WebSocket relay runs with: names for its metric labels, the route's limits and
/// the listener's timers, from the snapshot the upgrade request was routed on.
fn websocket_session(
    route: &Route,
    listener: &ListenerSnap,
    permessage_deflate: bool,
) -> relay::websocket::Session {
    let defaults = &listener.defaults;
    relay::websocket::Session {
        route: route.name.clone(),
        backend: route.backend.name.clone(),
        limits: route.websocket.clone(),
        permessage_deflate,
        idle_timeout: defaults.idle_timeout,
        close_timeout: defaults.close_timeout,
        drain_spread: defaults.drain_spread,
        drain_timeout: defaults.drain_timeout,
    }
}

/// Ends the client's stream with a TLS `close_notify` and a FIN where the peer still
/// listens, without waiting on a peer that does not read.
async fn close_gently(client: &mut Rewind<ClientStream>) {
    let _ = tokio::time::timeout(Duration::from_millis(100), client.shutdown()).await;
}

/// The access log's final event: the connection's fields (as `/connections` and the
/// progress events carry them) and how it ended.
fn access_log(ctx: &ConnCtx, outcome: &Result<Finish, ConnError>) {
    // Nothing to gather (the fields are copied out of the connection) when the filter drops
    // the event, as `RUST_LOG=warn` does.
    if !tracing::enabled!(target: "sockgate::access", tracing::Level::INFO) {
        return;
    }
    let websocket_close = match outcome {
        Ok(Finish::WebSocket(end)) => end.close.map(|(code, _)| code),
        _ => None,
    };
    let (outcome, closed_by, error) = match outcome {
        Ok(Finish::Relayed(RelayEnd::Closed { first })) => ("closed", first.as_str(), None),
        Ok(Finish::Relayed(RelayEnd::Idle)) => ("idle_timeout", "gateway", None),
        Ok(Finish::Relayed(RelayEnd::Cancelled)) | Ok(Finish::Cancelled) => {
            ("cancelled", "gateway", None)
        }
        Ok(Finish::Relayed(RelayEnd::Error { side, error })) => {
            ("reset", side.as_str(), Some(error.to_string()))
        }
        Ok(Finish::Http) => ("closed", "client", None),
        Ok(Finish::WebSocket(end)) => (
            end.reason.as_str(),
            end.close.map_or("", |(_, by)| by),
            None,
        ),
        Err(e) => (e.stage(), e.side(), Some(crate::error::error_chain(e))),
    };
    access_event!(
        &ctx.snapshot(),
        outcome,
        closed_by,
        error = error.as_deref().unwrap_or(""),
        websocket.close_code = websocket_close,
        "connection finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::snapshot::Snapshot;

    #[tokio::test]
    async fn a_panicking_connection_task_leaves_the_live_table_the_gauges_and_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::from_str(
            r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{ name = "r", backend = "b" }]
[[backend]]
name = "b"
servers = ["127.0.0.1:9"]
"#,
            std::path::Path::new("sockgate.toml"),
            dir.path(),
        )
        .unwrap();
        let metrics = Metrics::new();
        let snapshot = Arc::new(Snapshot::build(config, &metrics).unwrap());
        let services = Arc::new(Services::new(snapshot, metrics));
        let limit = crate::live::ConnLimit::new(1);
        let permits = Permits {
            global: limit.try_acquire().unwrap(),
            listener: crate::live::ConnLimit::new(usize::MAX)
                .try_acquire()
                .unwrap(),
            ip: None,
            ip_table: None,
        };
        let peer = Peer::Ip("127.0.0.1:40000".parse().unwrap());
        let ctx = Arc::new(ConnCtx::new(
            services.live.next_id(),
            services
                .snapshot()
                .listener("edge")
                .unwrap()
                .conn_metrics
                .clone(),
            peer,
            services.shutdown.stop_token().child_token(),
        ));
        services.live.insert(ctx.clone());
        ctx.set_protocol(Protocol::Tcp, &services.metrics);
        let active = || {
            services
                .metrics
                .connections_active
                .with_label_values(&["edge", "tcp"])
                .get()
        };
        assert_eq!((services.live.all().len(), active()), (1, 1));
        assert!(limit.try_acquire().is_none());

        let task = {
            let finishing = Finishing {
                ctx,
                services: services.clone(),
                span: tracing::Span::none(),
                permits,
                done: false,
            };
            tokio::spawn(async move {
                let _finishing = finishing;
                tokio::task::yield_now().await;
                panic!("a bug in some stage");
            })
        };
        let joined = task.await;
        assert!(joined.is_err_and(|e| e.is_panic()));
        assert!(
            services.live.all().is_empty(),
            "the live table kept the connection"
        );
        assert_eq!(active(), 0, "the active gauge kept the connection");
        assert!(
            limit.try_acquire().is_some(),
            "the place was not given back"
        );
    }
}
