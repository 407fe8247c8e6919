//! Backend pools: pick a server (weighted round robin), connect with `connect_timeout`, and
//! fall through to the next server when a connect fails, so one dead server costs a client
//! one timeout at most, not an error.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
use tokio::net::TcpStream;

use crate::config::BackendConfig;
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct Server {
    /// As written in the config.
    pub address: String,
    /// Pre-parsed when the address is an IP literal, so connecting skips the resolver.
    literal: Option<SocketAddr>,
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
}

pub struct Pool {
    pub name: Arc<str>,
    servers: Vec<Server>,
    /// Server indexes, each repeated by its weight, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
    connect_timeout: Duration,
    connect_duration: Histogram,
    connect_errors: IntCounter,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .finish()
    }
}

impl Pool {
    pub fn new(config: &BackendConfig, connect_timeout: Duration, metrics: &Metrics) -> Self {
        let servers: Vec<Server> = config
            .servers
            .iter()
            .map(|s| Server {
                address: s.address.clone(),
                literal: s.address.parse().ok(),
            })
            .collect();
        // Interleave by rounds so weight 3 vs 1 gives a a b a a, not a a a b.
        let max_weight = config.servers.iter().map(|s| s.weight).max().unwrap_or(1);
        let mut schedule = Vec::new();
        for round in 0..max_weight {
            for (i, s) in config.servers.iter().enumerate() {
                if s.weight > round {
                    schedule.push(i);
                }
            }
        }
        Pool {
            name: config.name.as_str().into(),
            servers,
            schedule,
            next: AtomicUsize::new(0),
            connect_timeout,
            connect_duration: metrics
                .backend_connect_duration_seconds
                .with_label_values(&[&config.name]),
            connect_errors: metrics
                .backend_connect_errors_total
                .with_label_values(&[&config.name]),
        }
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.iter()
    }

    /// Connects to the next server in turn; on failure tries each other server once.
    /// Returns the stream and the address of the server that answered.
    pub async fn connect(&self) -> Result<(TcpStream, &Server), ConnectError> {
        let start = if self.schedule.is_empty() {
            0
        } else {
            self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len()]
        };
        let mut last_error = None;
        for offset in 0..self.servers.len() {
            let server = &self.servers[(start + offset) % self.servers.len()];
            match self.connect_one(server).await {
                Ok(stream) => return Ok((stream, server)),
                Err(e) => {
                    self.connect_errors.inc();
                    tracing::debug!(backend = %self.name, server = %server.address, error = %crate::error_chain(&e), "backend connect failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ConnectError::Io {
            server: String::new(),
            source: io::Error::new(io::ErrorKind::NotFound, "backend has no servers"),
        }))
    }

    async fn connect_one(&self, server: &Server) -> Result<TcpStream, ConnectError> {
        let started = std::time::Instant::now();
        let attempt = async {
            match server.literal {
                Some(addr) if addr.ip().is_loopback() => connect_loopback(addr).await,
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(server.address.as_str()).await,
            }
        };
        let stream = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    server: server.address.clone(),
                    timeout: self.connect_timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(ConnectError::Io {
                    server: server.address.clone(),
                    source,
                });
            }
            Ok(Ok(stream)) => stream,
        };
        self.connect_duration
            .observe(started.elapsed().as_secs_f64());
        // Small writes (WebSocket frames, request/response protocols) go out at once.
        let _ = stream.set_nodelay(true);
        Ok(stream)
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
