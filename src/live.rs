//! The live connection table behind `GET /connections` and `DELETE /connections`, and the
//! per-connection context every stage fills in as the connection moves down the pipeline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Protocol;
use crate::metrics::{ConnHandles, ListenerHandles};

/// Why the gateway closes a connection on purpose. Only the WebSocket relay turns it into a
/// close code; a drain reaches every relay through `Shutdown` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// `DELETE /connections`.
    Operator,
    /// A reload removed the connection's route or backend.
    Reload,
    /// `POST /connections/shed`: the client should reconnect, through the load balancer, to
    /// whichever replica it picks now.
    Shed,
}

/// What is learned about a connection stage by stage; read by the admin API and the
/// access log. Written a few times per connection, never per byte.
#[derive(Debug, Default, Clone)]
pub struct ConnInfo {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    /// The client presented a certificate the listener's `client_auth` accepted.
    pub client_cert: bool,
    /// That certificate's subject (RFC 4514), formatted once after the handshake.
    pub client_subject: Option<Arc<str>>,
    pub protocol: Option<Protocol>,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub server: Option<String>,
}

/// Who is at the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Ip(SocketAddr),
    /// A Unix socket's client: a local process with no address (its socket is unnamed).
    Unix,
}

impl Peer {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(addr) => Some(addr.ip()),
            Peer::Unix => None,
        }
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Ip(addr) => Some(*addr),
            Peer::Unix => None,
        }
    }
}

impl std::fmt::Display for Peer {
    /// A Unix client shows as `unix:`, as nginx logs it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(addr) => addr.fmt(f),
            Peer::Unix => f.write_str("unix:"),
        }
    }
}

#[derive(Debug)]
pub struct ConnCtx {
    pub id: u64,
    pub listener: Arc<str>,
    /// The socket's peer.
    pub peer: Peer,
    /// What the client reached, and its address when a PROXY header named it (else the
    /// peer is the client). Set once, before routing; unset when neither a PROXY header nor
    /// a backend's `send_proxy_protocol` needs it.
    reached: OnceLock<(Option<SocketAddr>, SocketAddr)>,
    /// When the connection was accepted. The wall-clock time of it is worked out from this
    /// when asked for (one clock read fewer per connection).
    pub started_at: Instant,
    info: Mutex<ConnInfo>,
    pub bytes_client_to_backend: AtomicU64,
    pub bytes_backend_to_client: AtomicU64,
    pub messages_client_to_backend: AtomicU64,
    pub messages_backend_to_client: AtomicU64,
    /// Fires when the gateway closes this connection on purpose (operator, reload, shed), or on a
    /// hard stop.
    pub cancel: CancellationToken,
    /// Why `cancel` fired, as a [`CloseReason`]; the WebSocket relay turns it into a code.
    close_reason: AtomicU8,
    /// Set by [`ConnCtx::request_close`] before `cancel` fires: a load where the token's own
    /// `is_cancelled` takes its lock, for relays that check on every wake-up. A hard stop
    /// fires `cancel` without it (see `Shutdown::is_stopped` for that).
    close_requested: AtomicBool,
    /// A shed has picked this connection and will close it; another shed passes it over.
    shed_picked: AtomicBool,
    /// Its listener's connection metrics, resolved once per protocol (a listener
    /// snapshot's): a connection's start and end look no labels up.
    handles: Arc<ListenerHandles>,
}

// Protocols index the listener's handles.
const _: () = assert!((Protocol::Udp as usize) < crate::metrics::PROTOCOL_SLOTS);

impl ConnCtx {
    /// `listener`: the connection metrics of its listener, which carry its name.
    pub fn new(
        id: u64,
        listener: Arc<ListenerHandles>,
        peer: Peer,
        cancel: CancellationToken,
    ) -> Self {
        ConnCtx {
            id,
            listener: listener.listener().clone(),
            peer,
            reached: OnceLock::new(),
            started_at: Instant::now(),
            info: Mutex::new(ConnInfo::default()),
            bytes_client_to_backend: AtomicU64::new(0),
            bytes_backend_to_client: AtomicU64::new(0),
            messages_client_to_backend: AtomicU64::new(0),
            messages_backend_to_client: AtomicU64::new(0),
            cancel,
            close_reason: AtomicU8::new(CloseReason::Operator as u8),
            close_requested: AtomicBool::new(false),
            shed_picked: AtomicBool::new(false),
            handles: listener,
        }
    }

    /// The connection metrics of its listener and `protocol`.
    fn conn_handles(&self, protocol: Protocol, metrics: &crate::metrics::Metrics) -> &ConnHandles {
        self.handles
            .get(metrics, protocol as usize, protocol.as_str())
    }

    /// The client: the address a PROXY header carried, else the socket's peer.
    pub fn client(&self) -> Peer {
        match self.reached.get().and_then(|r| r.0) {
            Some(addr) => Peer::Ip(addr),
            None => self.peer,
        }
    }

    /// The address the client reached: from a PROXY header, else the socket's (when
    /// [`ConnCtx::set_local`] recorded it).
    pub fn local(&self) -> Option<SocketAddr> {
        self.reached.get().map(|r| r.1)
    }

    /// The address the client reached, for a PROXY header toward a backend: unspecified
    /// (port 0) when unknown.
    pub fn reached(&self) -> SocketAddr {
        self.local().unwrap_or_else(|| {
            let any: IpAddr = if self.client().ip().is_none_or(|ip| ip.is_ipv4()) {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            SocketAddr::new(any, 0)
        })
    }

    /// What a PROXY header said; once, before anything reads the client's address.
    pub fn set_proxied(&self, client: SocketAddr, local: SocketAddr) {
        let _ = self.reached.set((Some(client), local));
        tracing::Span::current().record("client.address", tracing::field::display(client));
    }

    /// The socket's own address, when no PROXY header gave one.
    pub fn set_local(&self, local: SocketAddr) {
        let _ = self.reached.set((None, local));
    }

    /// Asks the connection to close: WebSockets get a Close frame that says why, other
    /// connections end.
    pub fn request_close(&self, reason: CloseReason) {
        self.close_reason.store(reason as u8, Ordering::Relaxed);
        self.close_requested.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    /// Whether [`ConnCtx::request_close`] was called.
    pub fn close_requested(&self) -> bool {
        self.close_requested.load(Ordering::Acquire)
    }

    /// Marks the connection as picked by a shed: true the first time, false if a shed
    /// picked it already or it is closing for another reason.
    pub fn pick_for_shed(&self) -> bool {
        !self.close_requested() && !self.shed_picked.swap(true, Ordering::Relaxed)
    }

    /// Whether a shed has picked this connection.
    pub fn shed_picked(&self) -> bool {
        self.shed_picked.load(Ordering::Relaxed)
    }

    /// Why [`ConnCtx::request_close`] was called (`Operator` before it is).
    pub fn close_reason(&self) -> CloseReason {
        match self.close_reason.load(Ordering::Relaxed) {
            r if r == CloseReason::Reload as u8 => CloseReason::Reload,
            r if r == CloseReason::Shed as u8 => CloseReason::Shed,
            _ => CloseReason::Operator,
        }
    }

    /// The route picked (HTTP: for the latest request), for `/connections`, the access log
    /// and the connection's span.
    pub fn set_route(&self, route: &Arc<str>, backend: &Arc<str>) {
        {
            let mut info = self.info();
            info.route = Some(route.clone());
            info.backend = Some(backend.clone());
        }
        tracing::Span::current().record("route", &**route);
    }

    /// The backend server connected to, likewise.
    pub fn set_server(&self, address: &str) {
        self.info().server = Some(address.to_owned());
        tracing::Span::current().record("upstream.address", address);
    }

    /// The info, even if a panicking holder poisoned the lock (the data is plain values).
    pub fn info(&self) -> MutexGuard<'_, ConnInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's fields as they are now: one row of `GET /connections`, and what
    /// the access log's events carry (see [`access_event`]).
    pub fn snapshot(&self) -> ConnSummary {
        let info = self.info().clone();
        // WebSocket messages; UDP datagrams.
        let counted = matches!(info.protocol, Some(Protocol::WebSocket | Protocol::Udp));
        let messages = counted.then(|| {
            (
                self.messages_client_to_backend.load(Ordering::Relaxed),
                self.messages_backend_to_client.load(Ordering::Relaxed),
            )
        });
        let elapsed = self.started_at.elapsed();
        ConnSummary {
            id: self.id,
            listener: self.listener.clone(),
            client: self.client(),
            sni: info.sni,
            alpn: info.alpn,
            client_subject: info.client_subject,
            protocol: info.protocol.map(Protocol::as_str),
            route: info.route,
            backend: info.backend,
            server: info.server,
            started: SystemTime::now()
                .checked_sub(elapsed)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            bytes_client_to_backend: self.bytes_client_to_backend.load(Ordering::Relaxed),
            bytes_backend_to_client: self.bytes_backend_to_client.load(Ordering::Relaxed),
            messages_client_to_backend: messages.map(|m| m.0),
            messages_backend_to_client: messages.map(|m| m.1),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
        }
    }
}

/// A connection's fields at one moment. Each has one name wherever it appears: the
/// access log's events, the connection's span and `GET /connections` (see the README's
/// field table). `/connections` also carries `id`, `client`, `sni` and `server`, the names
/// the product contract gives those fields there.
#[derive(Debug)]
pub struct ConnSummary {
    /// `conn.id`
    pub id: u64,
    pub listener: Arc<str>,
    /// `client.address`
    pub client: Peer,
    /// `tls.sni`
    pub sni: Option<String>,
    /// `tls.alpn`
    pub alpn: Option<String>,
    /// `tls.client_subject`
    pub client_subject: Option<Arc<str>>,
    pub protocol: Option<&'static str>,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    /// `upstream.address`
    pub server: Option<String>,
    pub started: SystemTime,
    pub bytes_client_to_backend: u64,
    pub bytes_backend_to_client: u64,
    /// WebSockets (messages) and UDP sessions (datagrams) only.
    pub messages_client_to_backend: Option<u64>,
    pub messages_backend_to_client: Option<u64>,
    /// Open so far, in milliseconds.
    pub duration_ms: f64,
}

impl ConnSummary {
    pub fn started_rfc3339(&self) -> humantime::Rfc3339Timestamp {
        humantime::format_rfc3339_millis(self.started)
    }
}

impl Serialize for ConnSummary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("conn.id", &self.id)?;
        map.serialize_entry("listener", &*self.listener)?;
        map.serialize_entry("client.address", &Display(&self.client))?;
        map.serialize_entry("tls.sni", &self.sni)?;
        map.serialize_entry("tls.alpn", &self.alpn)?;
        map.serialize_entry("tls.client_subject", &self.client_subject.as_deref())?;
        map.serialize_entry("protocol", &self.protocol)?;
        map.serialize_entry("route", &self.route.as_deref())?;
        map.serialize_entry("backend", &self.backend.as_deref())?;
        map.serialize_entry("upstream.address", &self.server)?;
        map.serialize_entry("started", &Display(&self.started_rfc3339()))?;
        map.serialize_entry("bytes_client_to_backend", &self.bytes_client_to_backend)?;
        map.serialize_entry("bytes_backend_to_client", &self.bytes_backend_to_client)?;
        if let Some(n) = self.messages_client_to_backend {
            map.serialize_entry("messages_client_to_backend", &n)?;
        }
        if let Some(n) = self.messages_backend_to_client {
            map.serialize_entry("messages_backend_to_client", &n)?;
        }
        map.serialize_entry("duration_ms", &self.duration_ms)?;
        // The names SPEC gives these fields in `/connections`, kept beside the one name.
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("client", &Display(&self.client))?;
        map.serialize_entry("sni", &self.sni)?;
        map.serialize_entry("server", &self.server)?;
        map.end()
    }
}

/// Serializes a value as the string its `Display` writes, without building the string.
struct Display<'a, T>(&'a T);

impl<T: std::fmt::Display> Serialize for Display<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// One event of the access log (target `sockgate::access`) with every field of a
/// [`ConnSummary`], then the caller's fields and message: the final event and the progress
/// events share their fields this way.
macro_rules! access_event {
    ($summary:expr, $($rest:tt)+) => {{
        let s: &$crate::live::ConnSummary = $summary;
        tracing::info!(
            target: "sockgate::access",
            listener = &*s.listener,
            conn.id = s.id,
            client.address = %s.client,
            tls.sni = s.sni.as_deref().unwrap_or(""),
            tls.alpn = s.alpn.as_deref().unwrap_or(""),
            tls.client_subject = s.client_subject.as_deref().unwrap_or(""),
            protocol = s.protocol.unwrap_or(""),
            route = s.route.as_deref().unwrap_or(""),
            backend = s.backend.as_deref().unwrap_or(""),
            upstream.address = s.server.as_deref().unwrap_or(""),
            started = %s.started_rfc3339(),
            bytes_client_to_backend = s.bytes_client_to_backend,
            bytes_backend_to_client = s.bytes_backend_to_client,
            messages_client_to_backend = s.messages_client_to_backend,
            messages_backend_to_client = s.messages_backend_to_client,
            duration_ms = s.duration_ms,
            $($rest)+
        )
    }};
}
pub(crate) use access_event;

impl ConnCtx {
    /// The access log's progress event for a connection still open.
    pub fn log_progress(&self) {
        access_event!(&self.snapshot(), "connection progress");
    }
}

const SHARDS: usize = 16;

/// Sharded so that accepting on two cores rarely contends on one lock.
#[derive(Debug)]
pub struct LiveTable {
    next_id: AtomicU64,
    shards: [Mutex<HashMap<u64, Arc<ConnCtx>>>; SHARDS],
}

impl Default for LiveTable {
    fn default() -> Self {
        LiveTable {
            next_id: AtomicU64::new(1),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl LiveTable {
    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Arc<ConnCtx>>> {
        self.shards[(id as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn insert(&self, ctx: Arc<ConnCtx>) {
        self.shard(ctx.id).insert(ctx.id, ctx);
    }

    pub fn remove(&self, id: u64) {
        self.shard(id).remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnCtx>> {
        self.shard(id).get(&id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ConnCtx>> {
        let mut all: Vec<Arc<ConnCtx>> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Calls `f` on every connection, one shard at a time, with no lock held during the
    /// calls (so a slow `f` delays no accept).
    pub fn each(&self, mut f: impl FnMut(&Arc<ConnCtx>)) {
        let mut shard_copy = Vec::new();
        for shard in &self.shards {
            shard_copy.extend(
                shard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned(),
            );
            for conn in shard_copy.drain(..) {
                f(&conn);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl ConnCtx {
    /// Counts the connection under `protocol` the first time it is known; later calls (the
    /// next requests of a keep-alive connection) change nothing.
    pub fn set_protocol(&self, protocol: Protocol, metrics: &crate::metrics::Metrics) {
        {
            let mut info = self.info();
            if info.protocol.is_some() {
                return;
            }
            info.protocol = Some(protocol);
        }
        let h = self.conn_handles(protocol, metrics);
        h.total.inc();
        h.active.inc();
    }

    /// Undoes `set_protocol`'s gauge and records the lifetime; once, when the connection ends.
    pub fn finish_metrics(&self, metrics: &crate::metrics::Metrics) {
        let Some(protocol) = self.info().protocol else {
            return;
        };
        let h = self.conn_handles(protocol, metrics);
        h.active.dec();
        h.duration.observe(self.started_at.elapsed().as_secs_f64());
    }
}

/// The process-wide `max_connections`: a count of open client connections and a limit a
/// reload can change. A lowered limit closes nothing: new connections wait for the count to
/// fall below it.
#[derive(Debug)]
pub struct ConnLimit {
    active: AtomicUsize,
    max: AtomicUsize,
}

/// One client connection's place under the limit, given back on drop.
#[derive(Debug)]
pub struct Permit(Arc<ConnLimit>);

impl ConnLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnLimit {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A place for one more connection, unless the limit is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        if before >= self.max.load(Ordering::Relaxed) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit(self.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_and_a_changed_limit_applies_to_the_next_connection() {
        let limit = ConnLimit::new(2);
        let a = limit.try_acquire();
        let b = limit.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.active(), 2);
        limit.set_max(3);
        let c = limit.try_acquire();
        assert!(c.is_some());
        limit.set_max(1);
        drop(a);
        assert!(limit.try_acquire().is_none(), "2 open, limit 1");
        drop((b, c));
        assert_eq!(limit.active(), 0);
        assert!(limit.try_acquire().is_some());
    }
}
