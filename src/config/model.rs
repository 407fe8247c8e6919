//! Validated configuration: what every later stage reads. Nothing here is raw input —
//! addresses are parsed, durations are `Duration`s, relative paths are resolved against the
//! config file's folder, and every certificate/key pair has been loaded and checked to match.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;

pub use crate::certs::CaBundle;

use super::cidr::Cidr;
use super::error::ConfigError;

/// One whole, validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for reload and messages); `None` when built in memory.
    pub source: Option<PathBuf>,
    pub admin: Option<AdminConfig>,
    pub defaults: Defaults,
    pub listeners: Vec<ListenerConfig>,
    pub backends: Vec<BackendConfig>,
    /// What `sockgate check` prints as `warning:` and the gateway logs at start: accepted,
    /// but some clients would fail (Apple's App Transport Security), in file order.
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// From `token_file`: every request but `/healthz` and `/readyz` must carry it as
    /// `Authorization: Bearer <token>`. `None` = no token asked for.
    pub token: Option<AdminToken>,
}

/// The admin bearer token: printable ASCII, [`AdminToken::MIN_LEN`] to
/// [`AdminToken::MAX_LEN`] bytes. Never printed: `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    pub const MIN_LEN: usize = 16;
    pub const MAX_LEN: usize = 1024;

    /// The token file's text minus trailing line breaks, or why it cannot be a token.
    pub fn parse(text: &[u8]) -> Result<AdminToken, String> {
        let mut token = text;
        while let [rest @ .., b'\n' | b'\r'] = token {
            token = rest;
        }
        if token.is_empty() {
            return Err("is empty".to_owned());
        }
        if let Some(bad) = token.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "holds a byte that cannot be sent in an Authorization header (0x{:02x} at byte {}): tokens are printable ASCII without spaces",
                token[bad],
                bad + 1
            ));
        }
        if token.len() < Self::MIN_LEN {
            return Err(format!(
                "holds a token of {} bytes, shorter than the {} a guess-resistant token needs",
                token.len(),
                Self::MIN_LEN
            ));
        }
        if token.len() > Self::MAX_LEN {
            return Err(format!(
                "holds more than {} bytes, too long for a token",
                Self::MAX_LEN
            ));
        }
        Ok(AdminToken(token.into()))
    }

    /// Compares in time that depends on the lengths only, not on where the bytes differ.
    pub fn matches(&self, offered: &[u8]) -> bool {
        let expected: &[u8] = &self.0;
        if offered.len() != expected.len() {
            return false;
        }
        let diff = expected
            .iter()
            .zip(offered)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({} bytes)", self.0.len())
    }
}

/// `[defaults]`; every field has a default when the section or the key is absent.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Backend TCP connect (default 3s).
    pub connect_timeout: Duration,
    /// Wait for the client's first bytes before deciding it is raw TCP (default 2s).
    pub detect_timeout: Duration,
    /// TLS handshake and HTTP request head (default 10s).
    pub handshake_timeout: Duration,
    /// No bytes either way (default 1h).
    pub idle_timeout: Duration,
    /// Total time given to connections after a drain starts (default 30s).
    pub drain_timeout: Duration,
    /// WebSocket closes are spread over this window (default 10s); never more than drain_timeout.
    pub drain_spread: Duration,
    /// WebSocket closing handshake (default 5s).
    pub close_timeout: Duration,
    /// HTTP: request sent to the backend's response head; over it the client gets 504
    /// (default 60s). Routes may override it.
    pub request_timeout: Duration,
    /// Whole-process connection limit; `None` = unlimited.
    pub max_connections: Option<usize>,
    /// Connections open longer than this get an access-log progress event every interval;
    /// `None` = only the final event. At least [`MIN_ACCESS_LOG_INTERVAL`].
    pub access_log_interval: Option<Duration>,
}

/// The shortest `access_log_interval`: more often would make the log the load.
pub const MIN_ACCESS_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            connect_timeout: Duration::from_secs(3),
            detect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            drain_spread: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            max_connections: None,
            access_log_interval: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: ListenAddr,
    /// `unix = { mode, owner, group }`: applied to the socket file after bind.
    pub unix: UnixPerms,
    /// `protocol = "udp"`: datagrams, relayed per client session; its routes are udp too,
    /// and it has no TLS, PROXY header or connection limits (`max_sessions` on its route).
    pub udp: bool,
    /// `None` = plaintext.
    pub tls: Option<TlsConfig>,
    /// Clients whose forwarded headers (`X-Forwarded-*`, `Forwarded`) are kept and appended
    /// to; everyone else's are replaced. Empty: nobody.
    pub trusted_proxies: Vec<Cidr>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), accepted only from
    /// `trusted_proxies`.
    pub proxy_protocol: bool,
    /// Open connections on this listener (besides the process-wide limit).
    pub max_connections: Option<usize>,
    /// Open connections from one client address.
    pub max_connections_per_ip: Option<u32>,
    /// New connections from one client address per window.
    pub max_new_connections_per_ip: Option<Rate>,
    /// Lower-cased header that carries the client certificate's subject to HTTP and
    /// WebSocket backends; only with `tls.client_auth`.
    pub client_cert_header: Option<String>,
    /// In file order; the first match wins.
    pub routes: Vec<RouteConfig>,
}

/// Where a listener accepts: an IP address and port, or a Unix domain socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(UnixAddr),
}

impl ListenAddr {
    /// The IP address and port of a TCP listener.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for ListenAddr {
    /// As the config writes it; a TCP address as `SocketAddr` displays it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            ListenAddr::Unix(addr) => addr.fmt(f),
        }
    }
}

/// A Unix domain socket address: `unix:/path` (a file) or `unix:@name` (Linux's abstract
/// namespace: no file, gone with the last socket that has it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    Path(PathBuf),
    Abstract(String),
}

impl UnixAddr {
    /// The prefix that marks a Unix socket in `listen` and `servers`.
    pub const PREFIX: &str = "unix:";

    /// `text` after [`UnixAddr::PREFIX`]: `@name` or a path, as written (unresolved).
    pub fn parse(text: &str) -> Option<UnixAddr> {
        let rest = text.strip_prefix(Self::PREFIX)?;
        Some(match rest.strip_prefix('@') {
            Some(name) => UnixAddr::Abstract(name.to_owned()),
            None => UnixAddr::Path(PathBuf::from(rest)),
        })
    }

    /// The bytes of `sun_path`: the path, or a NUL then the name for an abstract socket
    /// (unix(7)); what `socket2::SockAddr::unix` takes.
    pub fn sun_path(&self) -> std::borrow::Cow<'_, std::path::Path> {
        use std::os::unix::ffi::OsStrExt;
        match self {
            UnixAddr::Path(path) => path.into(),
            UnixAddr::Abstract(name) => {
                let mut bytes = Vec::with_capacity(name.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(name.as_bytes());
                PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)).into()
            }
        }
    }
}

impl std::fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnixAddr::Path(path) => write!(f, "unix:{}", path.display()),
            UnixAddr::Abstract(name) => write!(f, "unix:@{name}"),
        }
    }
}

/// A Unix listener's socket file: what `chmod(2)`/`chown(2)` set after bind. `None` keeps
/// what bind gave (the umask's mode, the gateway's user and group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnixPerms {
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// `count` events per `per` (a fixed window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

/// The PROXY protocol version a backend's servers expect first on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Served when the client sends no SNI or a name no `sni` entry covers.
    pub default: CertPair,
    /// Extra certificates chosen by SNI, in file order.
    pub sni: Vec<SniCert>,
    /// Client certificates asked for, and checked against these CAs.
    pub client_auth: Option<ClientAuth>,
}

/// `client_auth = { ca, mode }`: the CA bundle is read once per config load, and again when
/// the file changes (see `certwatch`).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub ca: PathBuf,
    pub mode: ClientAuthMode,
    /// The certificates of `ca`, at least one.
    pub bundle: CaBundle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A client without a valid certificate fails the handshake.
    Require,
    /// A client may present a certificate or not; one it presents must be valid.
    Request,
}

/// A certificate chain and its key, loaded and checked to match.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<CertifiedKey>,
}

#[derive(Debug, Clone)]
pub struct SniCert {
    /// Lower-cased; exact names or `*.example.com` wildcards (one label).
    pub names: Vec<String>,
    pub pair: CertPair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    WebSocket,
    Http,
    Tcp,
    /// TLS relayed untouched, picked by the server name in the client's ClientHello.
    TlsPassthrough,
    /// Datagrams on a `protocol = "udp"` listener, one session per client address.
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::WebSocket => "websocket",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::TlsPassthrough => "tls_passthrough",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// `None` = any protocol.
    pub protocol: Option<Protocol>,
    /// Lower-cased, without port; an IPv6 address in brackets, in its shortest form
    /// (`[::1]`). HTTP and WebSocket only.
    pub host: Option<String>,
    /// Lower-cased TLS server name; any protocol, and required with `TlsPassthrough`.
    pub sni: Option<String>,
    /// HTTP and WebSocket only; starts with `/`.
    pub path_prefix: Option<String>,
    /// Name of a backend that exists in `Config::backends`.
    pub backend: String,
    /// Overrides `Defaults::request_timeout` for this route.
    pub request_timeout: Option<Duration>,
    /// `Some(true)`: only clients that presented a valid certificate; `Some(false)`: only
    /// those that presented none; `None`: either.
    pub client_cert: Option<bool>,
    pub websocket: WebSocketLimits,
    /// UDP routes: how sessions end and how many there may be (defaults elsewhere).
    pub sessions: UdpSessions,
}

/// A UDP route's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSessions {
    /// No datagram either way for this long ends a session (default 60s).
    pub idle_timeout: Duration,
    /// Sessions open at once on the route's listener; datagrams from new client addresses
    /// over it are dropped (default 100,000).
    pub max_sessions: usize,
}

impl Default for UdpSessions {
    fn default() -> Self {
        UdpSessions {
            idle_timeout: Duration::from_secs(60),
            max_sessions: 100_000,
        }
    }
}

/// Per-route WebSocket options, all optional.
#[derive(Debug, Clone, Default)]
pub struct WebSocketLimits {
    /// Bytes; over it the sender gets Close 1009.
    pub max_message_size: Option<u64>,
    /// Over it the sender gets Close 1008.
    pub max_messages_per_second: Option<u32>,
    /// Every frame from the client, control frames and fragments included; over it the
    /// client gets Close 1008.
    pub max_frames_per_second: Option<u32>,
    /// Gateway-originated pings toward the client.
    pub ping_interval: Option<Duration>,
    /// Default 10s when `ping_interval` is set.
    pub pong_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    /// At least one.
    pub servers: Vec<ServerConfig>,
    pub balance: Balance,
    /// Active checks; `None`: every server counts as up.
    pub health: Option<HealthCheck>,
    /// Ejection after consecutive connect failures; `None`: never ejected.
    pub passive: Option<Passive>,
    /// Write a PROXY protocol header first on every connection to a server.
    pub send_proxy_protocol: Option<ProxyVersion>,
    /// Re-encrypt toward the servers; `None`: plain TCP.
    pub tls: Option<BackendTls>,
}

/// `tls = { ... }` on a backend: connections to its servers speak TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// The name asked for and verified (lower-cased); `None`: each server's host.
    pub sni: Option<String>,
    /// How the servers' certificates are checked.
    pub verify: BackendVerify,
    /// Presented when a server asks for a client certificate.
    pub client_cert: Option<ClientCert>,
}

impl BackendTls {
    /// The name a connection to the server at `address` (`HOST:PORT`, as validated) asks
    /// for and verifies: `sni`, else the server's host, a DNS name or an IP address (which
    /// is verified against the certificate's IP SANs and sent as no SNI, RFC 6066 §3).
    pub fn server_name(&self, address: &str) -> Option<ServerName<'static>> {
        let host = match &self.sni {
            Some(sni) => sni.as_str(),
            None => {
                let (host, _port) = address.rsplit_once(':')?;
                host.strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host)
            }
        };
        ServerName::try_from(host).ok().map(|n| n.to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendVerify {
    /// The chain must lead to a certificate of `ca` and name the server (`verify = true`).
    Ca { path: PathBuf, bundle: CaBundle },
    /// Any certificate is taken (`verify = false`); `check` warns.
    Off,
}

/// The gateway's own certificate toward a backend's servers.
#[derive(Debug, Clone)]
pub struct ClientCert(pub CertPair);

impl PartialEq for ClientCert {
    /// Same files with the same certificates: a reload that re-reads them changes nothing.
    fn eq(&self, other: &Self) -> bool {
        self.0.cert == other.0.cert
            && self.0.key == other.0.key
            && self.0.certified.cert == other.0.certified.cert
    }
}

impl Eq for ClientCert {}

/// How a backend picks a server for a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Weighted, interleaved (the default).
    #[default]
    RoundRobin,
    /// Fewest live connections per unit of weight.
    LeastConn,
    /// Weighted rendezvous hashing on a key of the connection or request.
    Hash(HashOn),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    /// Lower-cased header name.
    Header(String),
    Cookie(String),
    Query(String),
}

/// `health = { ... }`: active checks of every server of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    /// HTTP and WebSocket checks: the request target (default `/`).
    pub path: String,
    pub interval: Duration,
    /// At most `interval`.
    pub timeout: Duration,
    /// Consecutive passing checks that bring a down server back.
    pub rise: u32,
    /// Consecutive failing checks that take an up server out.
    pub fall: u32,
    /// HTTP checks: the status that passes (default 200).
    pub expect_status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP connect.
    Tcp,
    /// `GET path` answered with `expect_status`.
    Http,
    /// A WebSocket handshake on `path` answered with 101.
    WebSocket,
}

/// `passive = { failures, eject }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive connect failures that eject a server.
    pub failures: u32,
    /// How long the first ejection lasts; repeated ones double it, up to
    /// [`Passive::max_eject`].
    pub eject: Duration,
}

impl Passive {
    /// The longest an ejection lasts after repeated ones: 5 minutes, or `eject` if longer.
    pub fn max_eject(&self) -> Duration {
        self.eject.max(Duration::from_secs(300))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port` as written (`127.0.0.1:9001`, `[::1]:9001`, `chat.internal:9001`);
    /// resolved at connect time.
    pub address: String,
    /// Default 1.
    pub weight: u32,
}
