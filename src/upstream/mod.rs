//! Backend pools: pick a server ([`balance`]: weighted round robin, least connections or
//! rendezvous hashing), among those the health checks ([`health`]) and passive ejection
//! leave in, and connect within `connect_timeout`, moving on to the next server when a
//! connect fails. An attempt is the TCP connect, the PROXY header the servers expect, and
//! the TLS handshake toward a backend with `tls` ([`tls`]); each is retried on the next
//! server, as nothing of the client's has been sent to a backend yet.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, Uri};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};
use tokio::net::{TcpStream, UdpSocket};

use crate::io::Socket;
use tokio_util::sync::CancellationToken;

use crate::config::{
    BackendConfig, BackendTls, Balance, HealthCheck, Passive, ProxyVersion, ServerConfig, UnixAddr,
};
use crate::io::BackendStream;
use crate::metrics::Metrics;

mod balance;
mod health;
mod tls;

use balance::Schedule;

/// One server of a backend and what the gateway knows of it now.
#[derive(Debug)]
pub struct Server {
    /// As written in the config.
    pub address: String,
    pub weight: u32,
    /// Pre-parsed when the address is an IP literal, so connecting skips the resolver.
    literal: Option<SocketAddr>,
    /// A `unix:` server's socket (boxed: most servers are not, and a backend of a thousand
    /// servers keeps its list small).
    unix: Option<Box<UnixAddr>>,
    /// Its rendezvous-hashing identity, from the address.
    seed: u64,
    /// Connections using it: connecting, relaying, or kept alive.
    active: AtomicUsize,
    /// The active checks' verdict (always true without `health`).
    up: AtomicBool,
    /// Connect failures in a row.
    failures: AtomicU32,
    /// Passive ejections in a row, for the backoff.
    ejections: AtomicU32,
    /// Milliseconds after [`Servers::epoch`] until which the server is ejected; 0: not.
    ejected_until: AtomicU64,
}

/// A backend's servers and their state. Shared by the pools of successive snapshots while
/// a reload leaves the backend's servers and health check unchanged, so health verdicts,
/// ejections and live connection counts carry over.
#[derive(Debug)]
pub struct Servers {
    list: Box<[Server]>,
    /// What the state was built for: a reload with the same keeps it.
    config: Vec<ServerConfig>,
    health: Option<HealthCheck>,
    /// The backend's `tls` the connector was built from: a reload that changes it (or the
    /// files it names) builds new state, whose health checks use the new connector.
    tls_config: Option<BackendTls>,
    tls: Option<tls::Connector>,
    epoch: Instant,
    /// Stops the health check task; cancelled when no snapshot in force uses these servers.
    stop: CancellationToken,
    checking: AtomicBool,
}

impl Servers {
    fn now_ms(&self) -> u64 {
        // Never 0, which means "not ejected".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether `server` takes new connections: up, and not ejected.
    fn available(&self, server: &Server) -> bool {
        if !server.up.load(Ordering::Relaxed) {
            return false;
        }
        let until = server.ejected_until.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }
}

impl Server {
    /// The server answered (a connect completed, a datagram came back): its failure and
    /// ejection counts start again.
    fn reached(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }

    /// The `Host` a health check sends: the address, or `localhost` for a Unix socket,
    /// whose `unix:/path` is not a host.
    fn host(&self) -> &str {
        if self.unix.is_some() {
            "localhost"
        } else {
            &self.address
        }
    }
}

/// A server in use by one connection: counted in its live connections (for `least_conn`
/// and `/backends`) until dropped. Held by whatever holds the backend connection: the TCP
/// relay, the WebSocket relay, or the task driving a kept-alive HTTP connection.
#[derive(Debug)]
pub struct Lease {
    servers: Arc<Servers>,
    index: usize,
}

impl Lease {
    fn new(servers: &Arc<Servers>, index: usize) -> Self {
        servers.list[index].active.fetch_add(1, Ordering::Relaxed);
        Lease {
            servers: servers.clone(),
            index,
        }
    }

    pub fn address(&self) -> &str {
        &self.servers.list[self.index].address
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.servers.list[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {server} timed out after {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("connecting to {server}")]
    Io {
        server: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {server} failed")]
    Tls {
        server: String,
        #[source]
        source: io::Error,
    },
    #[error("backend `{backend}` has no healthy server")]
    NoHealthyServer { backend: Arc<str> },
}

/// What is said to a server before the client's bytes, on a connection opened for one
/// client connection or request.
#[derive(Debug, Clone, Copy)]
pub struct Opening {
    /// The client's address, for the PROXY header (`None`: a Unix socket's client).
    pub client: Option<SocketAddr>,
    /// The address the client reached, for the PROXY header.
    pub reached: SocketAddr,
    /// HTTP or WebSocket traffic: TLS offers ALPN `http/1.1`; TCP offers none.
    pub http: bool,
}

/// The hash of a connection's or request's `hash_on` key, computed before the request is
/// rewritten; `None` when the backend does not hash or the key is absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Affinity(Option<u64>);

/// What `/backends` shows of one server.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub address: String,
    pub weight: u32,
    pub healthy: bool,
    pub active_connections: usize,
}

/// A backend's counter, resolved on first use: like the connect histogram, a child per
/// backend that a config of many idle backends would hold for nothing.
struct LazyCounter {
    family: IntCounterVec,
    child: std::sync::OnceLock<IntCounter>,
}

impl LazyCounter {
    fn new(family: &IntCounterVec) -> Self {
        LazyCounter {
            family: family.clone(),
            child: std::sync::OnceLock::new(),
        }
    }

    fn get(&self, backend: &str) -> &IntCounter {
        self.child
            .get_or_init(|| self.family.with_label_values(&[backend]))
    }

    /// The count so far, without creating the series.
    #[cfg(test)]
    fn value(&self) -> u64 {
        self.child.get().map_or(0, IntCounter::get)
    }
}

pub struct Pool {
    pub name: Arc<str>,
    servers: Arc<Servers>,
    balance: Balance,
    schedule: Schedule,
    next: AtomicUsize,
    passive: Option<Passive>,
    connect_timeout: Duration,
    /// Servers expect a PROXY header first.
    pub send_proxy: Option<ProxyVersion>,
    /// Resolved on the first connect: a histogram child holds a few hundred bytes of
    /// buckets per backend, which a config of many idle backends would pay for nothing.
    connect_duration: std::sync::OnceLock<Histogram>,
    connect_durations: HistogramVec,
    connect_errors: LazyCounter,
    no_healthy_server: LazyCounter,
    up_gauge: IntGaugeVec,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("servers", &self.servers.list)
            .finish()
    }
}

impl Pool {
    /// A pool for `config`. With `previous` (the same backend in the snapshot before), its
    /// server state is kept if the servers, health check and TLS settings are unchanged.
    /// Fails only if rustls refuses the TLS client configuration.
    pub fn new(
        config: &BackendConfig,
        connect_timeout: Duration,
        metrics: &Metrics,
        previous: Option<&Pool>,
    ) -> Result<Self, rustls::Error> {
        let kept = previous
            .filter(|p| {
                p.servers.config == config.servers
                    && p.servers.health == config.health
                    && p.servers.tls_config == config.tls
            })
            .map(|p| p.servers.clone());
        let servers = match kept {
            Some(kept) => kept,
            None => {
                let tls = config
                    .tls
                    .as_ref()
                    .map(|t| tls::Connector::new(t, &config.servers))
                    .transpose()?;
                let list = config
                    .servers
                    .iter()
                    .map(|s| Server {
                        address: s.address.clone(),
                        weight: s.weight,
                        literal: s.address.parse().ok(),
                        unix: UnixAddr::parse(&s.address).map(Box::new),
                        seed: balance::hash_bytes(s.address.as_bytes()),
                        active: AtomicUsize::new(0),
                        up: AtomicBool::new(true),
                        failures: AtomicU32::new(0),
                        ejections: AtomicU32::new(0),
                        ejected_until: AtomicU64::new(0),
                    })
                    .collect();
                Arc::new(Servers {
                    list,
                    config: config.servers.clone(),
                    health: config.health.clone(),
                    tls_config: config.tls.clone(),
                    tls,
                    epoch: Instant::now(),
                    stop: CancellationToken::new(),
                    checking: AtomicBool::new(false),
                })
            }
        };
        let weights: Vec<u32> = config.servers.iter().map(|s| s.weight).collect();
        Ok(Pool {
            name: config.name.as_str().into(),
            servers,
            balance: config.balance.clone(),
            schedule: Schedule::new(&weights),
            next: AtomicUsize::new(0),
            passive: config.passive.clone(),
            connect_timeout,
            send_proxy: config.send_proxy_protocol,
            connect_duration: std::sync::OnceLock::new(),
            connect_durations: metrics.backend_connect_duration_seconds.clone(),
            connect_errors: LazyCounter::new(&metrics.backend_connect_errors_total),
            no_healthy_server: LazyCounter::new(&metrics.no_healthy_server_total),
            up_gauge: metrics.backend_up.clone(),
        })
    }

    /// The key this backend hashes for a connection from `client` (and, for HTTP and
    /// WebSocket, its request).
    pub fn affinity(
        &self,
        client: Option<IpAddr>,
        request: Option<(&HeaderMap, &Uri)>,
    ) -> Affinity {
        match &self.balance {
            Balance::Hash(on) => Affinity(balance::key_hash(on, client, request)),
            _ => Affinity(None),
        }
    }

    /// Whether two pools share their servers' state (a reload kept it).
    pub fn same_servers(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.servers, &other.servers)
    }

    /// Every server's state, in config order.
    pub fn view(&self) -> Vec<ServerView> {
        self.servers
            .list
            .iter()
            .map(|s| ServerView {
                address: s.address.clone(),
                weight: s.weight,
                healthy: self.servers.available(s),
                active_connections: s.active.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Sets `sockgate_backend_up` for every server from its state now (ejections end
    /// without an event, so this runs when the metrics are read).
    pub fn publish_state(&self) {
        for s in self.servers.list.iter() {
            self.up_gauge
                .with_label_values(&[&*self.name, &s.address])
                .set(i64::from(self.servers.available(s)));
        }
    }

    /// Removes this pool's `sockgate_backend_up` series, but those `keep` says to keep.
    pub fn unpublish_state(&self, keep: impl Fn(&str, &str) -> bool) {
        for s in self.servers.list.iter() {
            if !keep(&self.name, &s.address) {
                let _ = self
                    .up_gauge
                    .remove_label_values(&[&*self.name, &s.address]);
            }
        }
    }

    /// Starts the health check task if the backend has one and it is not running yet (a
    /// reload that kept the servers keeps their task). It stops with [`Pool::stop_health`]
    /// or when `drain` fires.
    pub fn start_health(&self, drain: &CancellationToken) {
        let Some(check) = self.servers.health.clone() else {
            return;
        };
        if self.servers.checking.swap(true, Ordering::Relaxed) {
            return;
        }
        let servers = self.servers.clone();
        let stop = self.servers.stop.clone();
        let drain = drain.clone();
        let backend = self.name.clone();
        let gauge = self.up_gauge.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = health::run(&servers, &backend, &check, &gauge) => {}
                () = stop.cancelled() => {}
                () = drain.cancelled() => {}
            }
        });
    }

    /// Stops the health check task: no snapshot in force uses these servers any more.
    pub fn stop_health(&self) {
        self.servers.stop.cancel();
    }

    /// Connects to a server picked by the backend's balance among those up and not
    /// ejected; when a connect fails, moves on to the next such server not yet tried. All
    /// attempts together take at most `connect_timeout`; each gets an equal share of what
    /// is left, so one silent server cannot spend the whole budget.
    pub async fn connect(
        &self,
        affinity: Affinity,
        opening: Opening,
    ) -> Result<(BackendStream, Lease), ConnectError> {
        // The first attempt starts at once: the clock is read again only for a retry.
        let mut now = Instant::now();
        let deadline = now + self.connect_timeout;
        // Allocated only once an attempt fails.
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error = None;
        // One turn per connection: its retries follow on from it rather than taking turns
        // from other connections (which would send every one of them to a dead server).
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        while let Some(index) = self.pick(affinity, turn, &tried) {
            if !tried.is_empty() {
                now = Instant::now();
            }
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                break;
            }
            let left = self.candidates(&tried).max(1);
            let budget = remaining / u32::try_from(left).unwrap_or(u32::MAX);
            // Counted from the pick, so concurrent picks see each other.
            let lease = Lease::new(&self.servers, index);
            let server = &self.servers.list[index];
            match self.connect_one(index, now, budget, opening).await {
                Ok(stream) => {
                    server.reached();
                    return Ok((stream, lease));
                }
                Err(e) => {
                    drop(lease);
                    self.attempt_failed(server);
                    tracing::debug!(backend = %self.name, server = %server.address, error = %crate::error::error_chain(&e), "backend connect failed");
                    last_error = Some(e);
                    tried.push(index);
                }
            }
        }
        Err(self.exhausted(last_error))
    }

    /// A UDP socket connected to a server picked as [`Pool::connect`] picks one, for one
    /// client session. `connect(2)` on a datagram socket sends nothing: it fixes the peer,
    /// so the kernel drops datagrams from anyone else and reports the server's ICMP port
    /// unreachable as `ECONNREFUSED` on the next send or receive (see [`Pool::udp_refused`]).
    /// Only a local error (no route to the server) can fail here; a server whose address is
    /// a name is refused (config refuses it on udp routes: a session's first datagram is sent
    /// as it arrives, with no name lookup in between).
    pub fn connect_udp(&self, affinity: Affinity) -> Result<(UdpSocket, Lease), ConnectError> {
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error = None;
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        while let Some(index) = self.pick(affinity, turn, &tried) {
            let lease = Lease::new(&self.servers, index);
            let server = &self.servers.list[index];
            let connected = match server.literal {
                Some(addr) => udp_connect(addr),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a UDP server needs an IP address, not a name",
                )),
            };
            match connected {
                Ok(socket) => return Ok((socket, lease)),
                Err(source) => {
                    drop(lease);
                    self.attempt_failed(server);
                    last_error = Some(ConnectError::Io {
                        server: server.address.clone(),
                        source,
                    });
                    tried.push(index);
                }
            }
        }
        Err(self.exhausted(last_error))
    }

    /// The server of a UDP session answered with ICMP port unreachable: counted as a
    /// failed connect, for `sockgate_backend_connect_errors_total` and passive ejection.
    pub fn udp_refused(&self, lease: &Lease) {
        if let Some(server) = self.lease_server(lease) {
            self.attempt_failed(server);
        }
    }

    /// The server of a UDP session sent a datagram back: it is there, as a completed
    /// connect shows for TCP, so its failure counts start again.
    pub fn udp_answered(&self, lease: &Lease) {
        if let Some(server) = self.lease_server(lease) {
            server.reached();
        }
    }

    /// A failed attempt on `server`: counted, and told to passive ejection.
    fn attempt_failed(&self, server: &Server) {
        self.connect_errors.get(&self.name).inc();
        self.connect_failed(server);
    }

    /// Why no server could be had: the last attempt's error, or, when none could be
    /// tried, no healthy server (counted).
    fn exhausted(&self, last_error: Option<ConnectError>) -> ConnectError {
        last_error.unwrap_or_else(|| {
            self.no_healthy_server.get(&self.name).inc();
            ConnectError::NoHealthyServer {
                backend: self.name.clone(),
            }
        })
    }

    /// The server a lease of this pool is on (`None` if a reload replaced the servers).
    fn lease_server(&self, lease: &Lease) -> Option<&Server> {
        Arc::ptr_eq(&self.servers, &lease.servers).then(|| &self.servers.list[lease.index])
    }

    /// Passive ejection: `failures` connect failures in a row take the server out for
    /// `eject`, doubled at each ejection in a row up to [`Passive::max_eject`]. The count is
    /// not reset by the ejection, so the first failure after it ends ejects again (for
    /// twice as long); a successful connect resets both counts.
    fn connect_failed(&self, server: &Server) {
        let failures = server.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(passive) = &self.passive else {
            return;
        };
        if failures < passive.failures {
            return;
        }
        let now = self.servers.now_ms();
        let until = server.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now < until {
            // Already out: attempts in flight when it was ejected do not extend it.
            return;
        }
        let ejections = server.ejections.fetch_add(1, Ordering::Relaxed);
        let eject = passive
            .eject
            .saturating_mul(1u32 << ejections.min(16))
            .min(passive.max_eject());
        let next = now + eject.as_millis() as u64;
        if server
            .ejected_until
            .compare_exchange(until, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(backend = %self.name, server = %server.address, failures, eject = ?eject, "server ejected after consecutive connect failures");
        }
    }

    /// Servers that may still be tried.
    fn candidates(&self, tried: &[usize]) -> usize {
        self.servers
            .list
            .iter()
            .enumerate()
            .filter(|(i, s)| !tried.contains(i) && self.servers.available(s))
            .count()
    }

    /// The server for the next attempt, or `None` when every server is down, ejected or
    /// tried.
    fn pick(&self, affinity: Affinity, turn: usize, tried: &[usize]) -> Option<usize> {
        let list = &self.servers.list;
        let usable = |i: usize| !tried.contains(&i) && self.servers.available(&list[i]);
        match (&self.balance, affinity.0) {
            (Balance::Hash(_), Some(key)) => {
                let mut best: Option<(usize, f64)> = None;
                for (i, s) in list.iter().enumerate() {
                    if !usable(i) {
                        continue;
                    }
                    let score = balance::rendezvous_score(key, s.seed, s.weight);
                    if best.is_none_or(|(_, b)| score > b) {
                        best = Some((i, score));
                    }
                }
                best.map(|(i, _)| i)
            }
            (Balance::LeastConn, _) => {
                // The scan starts one further each connection, so equally loaded servers
                // take turns instead of the first always winning.
                let start = turn;
                let mut best: Option<(usize, usize)> = None;
                for k in 0..list.len() {
                    let i = (start.wrapping_add(k)) % list.len();
                    if !usable(i) {
                        continue;
                    }
                    let active = list[i].active.load(Ordering::Relaxed);
                    if best.is_none_or(|(b, b_active)| {
                        balance::less_loaded(active, list[i].weight, b_active, list[b].weight)
                    }) {
                        best = Some((i, active));
                    }
                }
                best.map(|(i, _)| i)
            }
            // Round robin, and hashing without a key.
            _ => (0..list.len())
                .map(|k| self.schedule.pick(turn.wrapping_add(k)))
                .find(|&i| usable(i))
                .or_else(|| (0..list.len()).find(|&i| usable(i))),
        }
    }

    /// One attempt on server `index`, started at `started`, within `timeout`: the connect,
    /// the PROXY header the servers expect (in plaintext before TLS, as HAProxy sends it),
    /// then the TLS handshake if the backend has `tls`.
    async fn connect_one(
        &self,
        index: usize,
        started: Instant,
        timeout: Duration,
        opening: Opening,
    ) -> Result<BackendStream, ConnectError> {
        let server = &self.servers.list[index];
        let io_error = |source| ConnectError::Io {
            server: server.address.clone(),
            source,
        };
        let attempt = async {
            let mut stream = connect_addr(server).await.map_err(io_error)?;
            if let Socket::Tcp(tcp) = &stream {
                // Small writes (WebSocket frames, request/response protocols) go out at once.
                let _ = tcp.set_nodelay(true);
                // Keepalive finds a backend host that vanished without a FIN (power,
                // network). A server on this host cannot vanish that way: the kernel closes a
                // dead process's sockets and answers probes for a hung one, so loopback
                // servers go without it (four `setsockopt(2)` calls fewer per connection).
                if server.literal.is_none_or(|addr| !addr.ip().is_loopback()) {
                    let _ =
                        socket2::SockRef::from(tcp).set_tcp_keepalive(&crate::io::tcp_keepalive());
                }
            }
            if let Some(version) = self.send_proxy {
                send_proxy_header(&mut stream, version, opening)
                    .await
                    .map_err(io_error)?;
            }
            match &self.servers.tls {
                None => Ok(BackendStream::Plain(stream)),
                // Boxed: the handshake's state would otherwise size every connect's
                // future, and with it the task of each plain connection.
                Some(connector) => Box::pin(connector.handshake(stream, index, opening.http))
                    .await
                    .map(|tls| BackendStream::Tls(Box::new(tls)))
                    .map_err(|source| ConnectError::Tls {
                        server: server.address.clone(),
                        source,
                    }),
            }
        };
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let stream = match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    server: server.address.clone(),
                    timeout,
                });
            }
            Ok(attempt) => attempt?,
        };
        self.connect_duration
            .get_or_init(|| self.connect_durations.with_label_values(&[&self.name]))
            .observe(started.elapsed().as_secs_f64());
        Ok(stream)
    }
}

/// A datagram socket on an ephemeral port of the server's address family, connected to it,
/// registered with the current runtime. Both system calls return at once.
fn udp_connect(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking(), None)?;
    socket.connect(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Writes the PROXY header as the connection's first bytes: the client's address (`UNKNOWN`
/// for a Unix socket's client, which has none) and the one it reached. A `unix:` server
/// gets the same header: the addresses are the client's, not those of the gateway's
/// connection to the server.
async fn send_proxy_header(
    stream: &mut Socket,
    version: ProxyVersion,
    opening: Opening,
) -> io::Result<()> {
    use crate::io::proxy_header::{unknown, v1, v2};
    use tokio::io::AsyncWriteExt;
    let header = match (version, opening.client) {
        (ProxyVersion::V1, Some(client)) => v1(client, opening.reached),
        (ProxyVersion::V2, Some(client)) => v2(client, opening.reached),
        (version, None) => unknown(version == ProxyVersion::V2),
    };
    stream.write_all(header.as_bytes()).await
}

/// A connect to `server`, without a timer (the caller has one).
async fn connect_addr(server: &Server) -> io::Result<Socket> {
    if let Some(unix) = &server.unix {
        return connect_unix(unix).await.map(Socket::Unix);
    }
    match server.literal {
        Some(addr) if addr.ip().is_loopback() => connect_loopback(addr).await,
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect(server.address.as_str()).await,
    }
    .map(Socket::Tcp)
}

/// A Unix socket connect. Linux completes it inside `connect(2)` or refuses it at once: a
/// full backlog answers `EAGAIN` on a non-blocking socket (no waiting for room, unlike TCP's
/// SYN queue), which counts as a failed attempt like a refused one, and the next server is
/// tried.
async fn connect_unix(addr: &UnixAddr) -> io::Result<tokio::net::UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
    match socket.connect(&SockAddr::unix(addr.sun_path())?) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = tokio::net::UnixStream::from_std(socket.into())?;
    stream.writable().await?;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

/// Connects to a server on this host. Over loopback the whole handshake runs inside
/// `connect(2)` (the SYN, SYN-ACK and ACK are delivered in the calling thread before it
/// returns), so the socket is usually established already when the call reports
/// `EINPROGRESS`: one `getpeername(2)` confirms it (it fails with `ENOTCONN` until then),
/// and the connection goes on without waiting for the event loop to report the socket
/// writable, and without arming the connect timer, which on this runtime also costs a
/// wake-up of the event loop when it is the earliest timer. Otherwise (refused, backlog
/// full) it waits for writability and reads the error, as `TcpStream::connect` does.
async fn connect_loopback(addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    let established = match socket.connect(&addr.into()) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => socket.peer_addr().is_ok(),
        Err(e) => return Err(e),
    };
    let stream = TcpStream::from_std(socket.into())?;
    if !established {
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests;
