//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`, `/connections`,
//! `/connections/shed`, `/reload`.
//! Plain HTTP on its own listener, meant for loopback or a private network.
//!
//! What a request must get past before it is routed, in order:
//!
//! - the connection limit ([`MAX_CONNECTIONS`]; over it a connection gets a 503 and is
//!   closed), the head timeout ([`HEADER_READ_TIMEOUT`], also between keep-alive
//!   requests), the head size ([`MAX_HEAD`], 431 from hyper) and a connection lifetime
//!   ([`MAX_CONNECTION_LIFETIME`]);
//! - `Host` (and an absolute-form target) must be the address the client reached, the
//!   configured address, or a loopback name: 421 otherwise, so a page whose DNS name was
//!   rebound to 127.0.0.1 cannot read `/connections` or `/metrics`;
//! - with `token_file` set, `Authorization: Bearer <token>` (401 otherwise);
//! - without a token, a `POST`/`DELETE` with a web-form content type or an `Origin` other
//!   than the endpoint's own
//!   is refused (403): a web page cannot reload the gateway or close connections;
//! - a body of at most [`MAX_BODY`] bytes arriving within [`BODY_TIMEOUT`] (413 / 408).
//!
//! `/healthz` and `/readyz` skip the Host and token rules, so probes need no setup.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, AdminToken};
use crate::live::ConnSummary;

/// What the admin endpoint asks of the gateway. The gateway answers; the endpoint never
/// holds the data plane.
pub trait Control: Send + Sync + 'static {
    /// `[admin]` of the config in force.
    fn admin_config(&self) -> Option<AdminConfig>;
    fn readiness(&self) -> Readiness;
    /// `/metrics` in the Prometheus text format.
    fn metrics_text(&self) -> String;
    fn connections(&self) -> Vec<ConnSummary>;
    /// Closes the connections picked (WebSockets with a Close frame); how many.
    fn close(&self, which: Which<'_>) -> usize;
    /// Picks `ceil(fraction × n)` of the `n` live connections `filter` matches, at random,
    /// and closes each at a random moment within `spread` (WebSockets with Close 1012);
    /// how many were picked. Returns at once.
    fn shed(&self, filter: Filter<'_>, fraction: f64, spread: Duration) -> usize;
    /// Reloads the config file; on refusal, one line per problem.
    fn reload(&self) -> impl Future<Output = Result<(), Vec<String>>> + Send;
}

/// What `/readyz` answers.
pub enum Readiness {
    Ready,
    Starting,
    Draining,
}

/// Which connections an operator's close picks.
pub enum Which<'a> {
    Id(u64),
    Matching(Filter<'a>),
}

/// `route=NAME` and `backend=NAME` of `DELETE /connections` and `POST /connections/shed`:
/// a connection matches every one given.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Filter<'a> {
    pub route: Option<&'a str>,
    pub backend: Option<&'a str>,
}

impl Filter<'_> {
    /// Whether a connection on this route and backend matches (one not routed yet matches
    /// only an empty filter).
    pub fn matches(&self, route: Option<&str>, backend: Option<&str>) -> bool {
        self.route.is_none_or(|r| route == Some(r))
            && self.backend.is_none_or(|b| backend == Some(b))
    }

    fn is_empty(&self) -> bool {
        self.route.is_none() && self.backend.is_none()
    }
}

/// The longest `spread` a shed takes: a rebalance is meant to finish while the new replicas
/// are still new.
pub const MAX_SHED_SPREAD: Duration = Duration::from_secs(3600);

/// Admin connections open at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Time to send a whole request head, and the longest a kept-alive connection may sit idle.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head limit in bytes (hyper's read buffer; its minimum is 8 KiB). Over it: 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Request body limit in bytes; no admin request needs one. Over it: 413.
pub const MAX_BODY: usize = 1024;
/// Time to send the body once the head is in. Over it: 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// After this a connection is asked to close once its current request is answered (and is
/// dropped 5 s later), so no client keeps a connection slot for ever.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Content types a web page may send cross-site without a CORS preflight.
const FORM_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

struct Admin<G> {
    gateway: Arc<G>,
    /// The configured and the bound listen address: `Host` may name either.
    addrs: Vec<SocketAddr>,
    /// The token at start, used if a reload removes `[admin]` (the listener stays until a
    /// restart, and must not become open).
    start_token: Option<AdminToken>,
}

/// One connection's addresses, for the Host rule and the logs.
#[derive(Clone, Copy)]
struct Peer {
    client: SocketAddr,
    /// The address the client reached (matters when the listener is on 0.0.0.0 or [::]).
    local: Option<SocketAddr>,
}

pub async fn serve<G: Control>(listener: TcpListener, gateway: Arc<G>, stop: CancellationToken) {
    let admin_config = gateway.admin_config();
    let mut addrs: Vec<SocketAddr> = admin_config.iter().map(|a| a.listen).collect();
    addrs.extend(listener.local_addr().ok());
    let admin = Arc::new(Admin {
        gateway,
        addrs,
        start_token: admin_config.and_then(|a| a.token),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Refusals are logged once, then at most every 10 s with the count in between.
    let mut refused_since_log: u64 = 0;
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (tcp, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused_since_log += 1;
            if last_refusal_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    client = %client,
                    refused = refused_since_log,
                    limit = MAX_CONNECTIONS,
                    "admin connection refused: too many admin connections open"
                );
                last_refusal_log = Some(Instant::now());
                refused_since_log = 0;
            }
            refuse_busy(tcp);
            continue;
        };
        let peer = Peer {
            client,
            local: tcp.local_addr().ok(),
        };
        let admin = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(tcp, peer, admin, stop).await;
        });
    }
}

/// Best effort: a 503 if the socket takes it without waiting, then close.
fn refuse_busy(tcp: TcpStream) {
    const BODY: &str = "too many admin connections; try again later\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tcp.try_write(response.as_bytes());
}

async fn serve_connection<G: Control>(
    tcp: TcpStream,
    peer: Peer,
    admin: Arc<Admin<G>>,
    stop: CancellationToken,
) {
    // Requests seen on this connection: a head timeout after one is a kept-alive
    // connection going idle (Prometheus between scrapes), not a slow client.
    let served = Arc::new(AtomicU64::new(0));
    let counted = served.clone();
    let service = service_fn(move |req| {
        let admin = admin.clone();
        counted.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = tokio::time::sleep(MAX_CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::info!(client = %peer.client, "admin connection closed: open longer than {MAX_CONNECTION_LIFETIME:?}");
                    Ok(())
                }
            }
        }
        _ = stop.cancelled() => Ok(()),
    };
    if let Err(e) = ended {
        if e.is_timeout() && served.load(Ordering::Relaxed) > 0 {
            tracing::debug!(
                client = %peer.client,
                "idle admin connection closed after {HEADER_READ_TIMEOUT:?}"
            );
        } else if e.is_timeout() {
            tracing::warn!(
                client = %peer.client,
                "admin connection closed: no complete request head within {HEADER_READ_TIMEOUT:?}"
            );
        } else if e.is_parse_too_large() {
            tracing::warn!(
                client = %peer.client,
                "admin request refused: head larger than {MAX_HEAD} bytes (431)"
            );
        } else {
            tracing::debug!(client = %peer.client, error = %e, "admin connection ended");
        }
    }
}

impl<G: Control> Admin<G> {
    /// The token in force: the running config's, or the start one if `[admin]` went away.
    fn token(&self) -> Option<AdminToken> {
        match self.gateway.admin_config() {
            Some(admin) => admin.token,
            None => self.start_token.clone(),
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: Peer) -> Response<Full<Bytes>> {
        let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
        if !probe && let Err(refusal) = self.check(&req, peer) {
            tracing::warn!(
                client = %peer.client,
                method = %req.method(),
                path = %truncated(req.uri().path()),
                status = refusal.status.as_u16(),
                "admin request refused: {}",
                refusal.log
            );
            return refusal.response();
        }
        let (parts, body) = req.into_parts();
        if let Err(response) = read_body(&parts.headers, body).await {
            tracing::warn!(
                client = %peer.client,
                method = %parts.method,
                path = %truncated(parts.uri.path()),
                status = response.status().as_u16(),
                "admin request refused: body over {MAX_BODY} bytes or not sent within {BODY_TIMEOUT:?}"
            );
            return response;
        }
        route(Request::from_parts(parts, ()), &*self.gateway, peer).await
    }

    /// The Host, token and web-form rules.
    fn check(&self, req: &Request<Incoming>, peer: Peer) -> Result<(), Refusal> {
        let hosts = req.headers().get_all(header::HOST);
        let mut names: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
        if names.len() > 1 {
            return Err(Refusal::text(
                StatusCode::BAD_REQUEST,
                "more than one Host header\n".to_owned(),
                "more than one Host header".to_owned(),
            ));
        }
        let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
        names.extend(authority);
        if names.is_empty() && !peer.client.ip().is_loopback() {
            return Err(Refusal::text(
                StatusCode::MISDIRECTED_REQUEST,
                "requests from other hosts must name this admin listener in a Host header\n"
                    .to_owned(),
                "no Host header from a non-loopback client".to_owned(),
            ));
        }
        let mut allowed: Vec<SocketAddr> = self.addrs.clone();
        allowed.extend(peer.local);
        // On a dual-stack [::] listener an IPv4 client reached ::ffff:a.b.c.d.
        allowed.extend(
            peer.local
                .map(|local| SocketAddr::new(local.ip().to_canonical(), local.port())),
        );
        for name in names {
            if !host_allowed(name, &allowed) {
                return Err(Refusal::text(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!(
                        "the Host header must name this admin listener ({}) or localhost; other names are refused so that a web page cannot reach it through DNS rebinding\n",
                        self.addrs
                            .first()
                            .map_or("its address".to_owned(), |a| a.to_string())
                    ),
                    format!(
                        "Host {:?} is neither the admin address nor a loopback name",
                        truncated(&String::from_utf8_lossy(name))
                    ),
                ));
            }
        }
        if let Some(token) = self.token() {
            return match bearer(req.headers()) {
                Some(offered) if token.matches(offered) => Ok(()),
                Some(_) => Err(Refusal::unauthorized("wrong bearer token")),
                None => Err(Refusal::unauthorized("no bearer token")),
            };
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            if let Some(form) = form_content_type(req.headers()) {
                return Err(Refusal::text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{} with Content-Type {form} is refused: a web page can send that cross-site; send no body, or another content type such as application/json\n",
                        req.method()
                    ),
                    format!("web-form content type {form}"),
                ));
            }
            if let Some(origin) = req.headers().get(header::ORIGIN)
                && !same_origin(origin.as_bytes(), req.headers().get(header::HOST))
            {
                return Err(Refusal::text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{} from a web page of another origin is refused\n",
                        req.method()
                    ),
                    format!(
                        "Origin {:?} is not the admin endpoint itself",
                        truncated(&String::from_utf8_lossy(origin.as_bytes()))
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A refused request: what the client and the log line are told (never the token).
struct Refusal {
    status: StatusCode,
    body: String,
    log: String,
    /// `WWW-Authenticate` for a 401.
    challenge: Option<&'static str>,
}

impl Refusal {
    fn text(status: StatusCode, body: String, log: String) -> Self {
        Refusal {
            status,
            body,
            log,
            challenge: None,
        }
    }

    fn unauthorized(why: &str) -> Self {
        let challenge = if why == "no bearer token" {
            r#"Bearer realm="sockgate admin""#
        } else {
            r#"Bearer realm="sockgate admin", error="invalid_token""#
        };
        Refusal {
            challenge: Some(challenge),
            ..Refusal::text(
                StatusCode::UNAUTHORIZED,
                "this admin endpoint needs Authorization: Bearer <token> (the token in [admin] token_file)\n".to_owned(),
                why.to_owned(),
            )
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        let mut response = text(self.status, "");
        *response.body_mut() = Full::new(Bytes::from(self.body));
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// The credentials of an `Authorization: Bearer <token>` header (scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// The web-form media type a `Content-Type` header names, if it names one.
fn form_content_type(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .find_map(|value| {
            let value = value.as_bytes();
            let essence = value
                .split(|b| *b == b';')
                .next()
                .unwrap_or(value)
                .trim_ascii();
            FORM_TYPES
                .iter()
                .copied()
                .find(|form| essence.eq_ignore_ascii_case(form.as_bytes()))
        })
}

/// Whether a `Host` value (or a target's authority) names a loopback host (any port) or
/// one of `addrs` exactly (no port = 80).
fn host_allowed(host: &[u8], addrs: &[SocketAddr]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (ip, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host.as_str(), None),
        }
    };
    let port = match port {
        None => 80,
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            match port.parse::<u16>() {
                Ok(port) => port,
                Err(_) => return false,
            }
        }
        Some(_) => return false,
    };
    if name == "localhost" {
        return true;
    }
    // The bracket form is IPv6 only, the bare form IPv4 only (a bare IPv6 has colons).
    let Ok(ip) = name.parse::<IpAddr>() else {
        return false;
    };
    if host.starts_with('[') != ip.is_ipv6() {
        return false;
    }
    ip.is_loopback() || addrs.contains(&SocketAddr::new(ip, port))
}

/// Whether an `Origin` is the admin endpoint itself, `http://` plus the request's `Host`
/// (which passed the Host rule). The endpoint serves no pages, so in practice any page
/// that sends an Origin is another site, a page on another loopback port included.
fn same_origin(origin: &[u8], host: Option<&header::HeaderValue>) -> bool {
    match (origin.strip_prefix(b"http://"), host) {
        (Some(origin_host), Some(host)) => origin_host.eq_ignore_ascii_case(host.as_bytes()),
        _ => false,
    }
}

/// Reads (and drops) the body: none of the routes takes one, but a client must not hold a
/// slot by trickling one in, nor make the gateway buffer a large one.
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<(), Response<Full<Bytes>>> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(closing(text(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time\n",
        ))),
    }
}

fn too_large() -> Response<Full<Bytes>> {
    closing(text(
        StatusCode::PAYLOAD_TOO_LARGE,
        "admin requests take a body of at most 1024 bytes (none is needed)\n",
    ))
}

fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// At most 100 characters of a peer-controlled string, for logs.
fn truncated(s: &str) -> String {
    s.chars().take(100).collect()
}

async fn route<G: Control>(req: Request<()>, gateway: &G, peer: Peer) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match gateway.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n"),
            Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            Readiness::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        },
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(gateway.metrics_text())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/connections") => json(StatusCode::OK, &gateway.connections()),
        (&Method::DELETE, "/connections") => {
            let params = Params::parse(query);
            let filter = match params.filter(&[]) {
                Ok(filter) if !filter.is_empty() => filter,
                Ok(_) => {
                    return bad_request(
                        "use DELETE /connections/{id}, or DELETE /connections with ?route=NAME, ?backend=NAME or both (route=A&backend=B)",
                    );
                }
                Err(e) => return bad_request(&e),
            };
            let closed = gateway.close(Which::Matching(filter));
            json(StatusCode::OK, &serde_json::json!({ "closed": closed }))
        }
        (&Method::POST, "/connections/shed") => {
            let params = Params::parse(query);
            let shed = params
                .filter(&["fraction", "spread"])
                .and_then(|filter| Ok((filter, params.fraction()?, params.spread()?)));
            let (filter, fraction, spread) = match shed {
                Ok(shed) => shed,
                Err(e) => return bad_request(&e),
            };
            let picked = gateway.shed(filter, fraction, spread);
            tracing::info!(
                client = %peer.client,
                route = filter.route.unwrap_or(""),
                backend = filter.backend.unwrap_or(""),
                fraction,
                spread = %humantime::format_duration(spread),
                picked,
                "shedding connections (POST /connections/shed)"
            );
            json(StatusCode::OK, &serde_json::json!({ "picked": picked }))
        }
        (&Method::DELETE, p) if p.starts_with("/connections/") => {
            let id = p["/connections/".len()..].parse::<u64>().ok();
            match id.map_or(0, |id| gateway.close(Which::Id(id))) {
                0 => json(StatusCode::NOT_FOUND, &serde_json::json!({ "closed": 0 })),
                closed => json(StatusCode::OK, &serde_json::json!({ "closed": closed })),
            }
        }
        (&Method::POST, "/reload") => {
            let Err(errors) = gateway.reload().await else {
                return json(StatusCode::OK, &serde_json::json!({ "result": "ok" }));
            };
            // As SIGHUP's refusal is: the running config stays, and the log says why.
            for e in &errors {
                tracing::warn!(client = %peer.client, "reload refused (POST /reload): {}", e.replace('\n', " "));
            }
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "result": "error", "errors": errors }),
            )
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/connections" | "/connections/shed" | "/reload",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz /readyz /metrics /connections\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(error: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": error }),
    )
}

/// A query string's `key=value` pairs, percent-decoded, in order.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Self {
        Params(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(key), percent_decode(value))
                })
                .collect(),
        )
    }

    /// The one value of `key`, if given; an error if given twice.
    fn one(&self, key: &str) -> Result<Option<&str>, String> {
        let mut values = self.0.iter().filter(|(k, _)| k == key);
        let first = values.next().map(|(_, v)| v.as_str());
        match values.next() {
            Some(_) => Err(format!("`{key}` is given more than once; give it once")),
            None => Ok(first),
        }
    }

    /// `route` and `backend`; any key but those and `also` is an error.
    fn filter(&self, also: &[&str]) -> Result<Filter<'_>, String> {
        if let Some((key, _)) = self.0.iter().find(|(k, _)| {
            !matches!(k.as_str(), "route" | "backend") && !also.contains(&k.as_str())
        }) {
            let mut known = vec!["route", "backend"];
            known.extend_from_slice(also);
            return Err(format!(
                "unknown parameter `{}`; the parameters are {}",
                truncated(key),
                known.join(", ")
            ));
        }
        Ok(Filter {
            route: self.one("route")?,
            backend: self.one("backend")?,
        })
    }

    /// `fraction`: a number in (0, 1].
    fn fraction(&self) -> Result<f64, String> {
        const ALLOWED: &str = "a number greater than 0 and at most 1, such as fraction=0.25";
        let Some(text) = self.one("fraction")? else {
            return Err(format!("`fraction` is missing: give {ALLOWED}"));
        };
        match text.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
            _ => Err(format!(
                "`fraction` = \"{}\" is not {ALLOWED}",
                truncated(text)
            )),
        }
    }

    /// `spread`: a duration from 0 to [`MAX_SHED_SPREAD`].
    fn spread(&self) -> Result<Duration, String> {
        const ALLOWED: &str = "a duration from 0s to 1h, such as spread=60s, 500ms or 5m";
        let Some(text) = self.one("spread")? else {
            return Err(format!(
                "`spread` is missing: give {ALLOWED} (the closes are spread over it)"
            ));
        };
        match crate::config::parse_duration(text) {
            Ok(d) if d <= MAX_SHED_SPREAD => Ok(d),
            Ok(_) => Err(format!(
                "`spread` = \"{}\" is longer than 1h; give {ALLOWED}",
                truncated(text)
            )),
            Err(why) => Err(format!(
                "`spread` = \"{}\" is not a duration ({why}); give {ALLOWED}",
                truncated(text)
            )),
        }
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => hex(bytes[i + 1])
                .zip(hex(bytes[i + 2]))
                .map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rule() {
        let addrs: Vec<SocketAddr> = vec![
            "10.0.0.5:9901".parse().expect("addr"),
            "[2001:db8::5]:9901".parse().expect("addr"),
            "192.168.1.2:80".parse().expect("addr"),
        ];
        for ok in [
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:9901",
            "10.0.0.5:9901",
            "[2001:db8::5]:9901",
            "[2001:DB8::5]:9901",
            "192.168.1.2",
        ] {
            assert!(host_allowed(ok.as_bytes(), &addrs), "{ok}");
        }
        for refused in [
            "",
            "10.0.0.5",
            "10.0.0.5:9902",
            "10.0.0.6:9901",
            "evil.example",
            "evil.example:9901",
            "localhost.",
            "localhost:",
            "localhost:x",
            "localhost:99999",
            "::1",
            "[127.0.0.1]",
            "[::1]x",
            "[::1",
            "127.0.0.1:9901:1",
            "0x7f.0.0.1",
            "2130706433",
        ] {
            assert!(!host_allowed(refused.as_bytes(), &addrs), "{refused}");
        }
        assert!(!host_allowed(b"localhost\xff", &addrs));
    }

    #[test]
    fn origin_and_form_rules() {
        let host = header::HeaderValue::from_static("localhost:9901");
        assert!(same_origin(b"http://localhost:9901", Some(&host)));
        assert!(same_origin(b"http://LocalHost:9901", Some(&host)));
        assert!(!same_origin(b"http://localhost:8000", Some(&host)));
        assert!(!same_origin(b"http://localhost", Some(&host)));
        assert!(!same_origin(b"https://localhost:9901", Some(&host)));
        assert!(!same_origin(b"null", Some(&host)));
        assert!(!same_origin(b"http://evil.example", Some(&host)));
        assert!(!same_origin(b"http://localhost:9901", None));

        let mut headers = HeaderMap::new();
        assert_eq!(form_content_type(&headers), None);
        for (value, form) in [
            ("application/json", None),
            ("text/plain", Some("text/plain")),
            (" Text/Plain ; charset=utf-8", Some("text/plain")),
            (
                "multipart/form-data; boundary=x",
                Some("multipart/form-data"),
            ),
            (
                "application/x-www-form-urlencoded",
                Some("application/x-www-form-urlencoded"),
            ),
            ("text/plainx", None),
        ] {
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_str(value).expect("value"),
            );
            assert_eq!(form_content_type(&headers), form, "{value}");
        }
    }

    #[test]
    fn shed_and_close_parameters() {
        let p = Params::parse("fraction=0.25&spread=1m30s&route=chat%20room&backend=b");
        assert_eq!(
            p.filter(&["fraction", "spread"]),
            Ok(Filter {
                route: Some("chat room"),
                backend: Some("b")
            })
        );
        assert_eq!(p.fraction(), Ok(0.25));
        assert_eq!(p.spread(), Ok(Duration::from_secs(90)));
        assert!(
            p.filter(&[])
                .is_err_and(|e| e.contains("unknown parameter `fraction`"))
        );

        let p = Params::parse("fraction=1&spread=0s&");
        assert_eq!(p.filter(&["fraction", "spread"]), Ok(Filter::default()));
        assert_eq!((p.fraction(), p.spread()), (Ok(1.0), Ok(Duration::ZERO)));
        assert_eq!(Params::parse("spread=1h").spread(), Ok(MAX_SHED_SPREAD));
        for bad in ["0", "-1", "1.0001", "inf", "NaN", "", "1/4"] {
            let p = Params::parse(&format!("fraction={bad}"));
            assert!(p.fraction().is_err(), "{bad}");
        }
        for bad in ["1h1ms", "61m", "10", "", "-1s"] {
            let p = Params::parse(&format!("spread={bad}"));
            assert!(p.spread().is_err(), "{bad}");
        }

        let both = Filter {
            route: Some("r"),
            backend: Some("b"),
        };
        assert!(both.matches(Some("r"), Some("b")));
        assert!(!both.matches(Some("r"), Some("c")));
        assert!(!both.matches(None, None));
        assert!(Filter::default().matches(None, None));
        let route = Filter {
            route: Some("r"),
            backend: None,
        };
        assert!(route.matches(Some("r"), Some("anything")));
    }

    #[test]
    fn bearer_credentials() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        for (value, token) in [
            ("Bearer abc", Some(&b"abc"[..])),
            ("bearer  abc ", Some(&b"abc"[..])),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearerabc", None),
        ] {
            headers.insert(
                header::AUTHORIZATION,
                header::HeaderValue::from_str(value).expect("value"),
            );
            assert_eq!(bearer(&headers), token, "{value}");
        }
    }
}
