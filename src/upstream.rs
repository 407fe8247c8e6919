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

use crate::config::{BackendConfig, ProxyVersion};
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
    schedule: Schedule,
    next: AtomicUsize,
    connect_timeout: Duration,
    /// Servers expect a PROXY header first.
    pub send_proxy: Option<ProxyVersion>,
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
        let weights: Vec<u32> = config.servers.iter().map(|s| s.weight).collect();
        let schedule = Schedule::new(&weights);
        Pool {
            name: config.name.as_str().into(),
            servers,
            schedule,
            next: AtomicUsize::new(0),
            connect_timeout,
            send_proxy: config.send_proxy_protocol,
            connect_duration: metrics
                .backend_connect_duration_seconds
                .with_label_values(&[&config.name]),
            connect_errors: metrics
                .backend_connect_errors_total
                .with_label_values(&[&config.name]),
        }
    }

    /// Connects to the next server in turn; on failure tries each other server once.
    /// Returns the stream and the address of the server that answered.
    pub async fn connect(&self) -> Result<(TcpStream, &Server), ConnectError> {
        let start = self
            .schedule
            .pick(self.next.fetch_add(1, Ordering::Relaxed));
        let mut last_error = None;
        for offset in 0..self.servers.len() {
            let server = &self.servers[(start + offset) % self.servers.len()];
            match self.connect_one(server).await {
                Ok(stream) => return Ok((stream, server)),
                Err(e) => {
                    self.connect_errors.inc();
                    tracing::debug!(backend = %self.name, server = %server.address, error = %crate::error::error_chain(&e), "backend connect failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ConnectError::Io {
            server: String::new(),
            source: io::Error::new(io::ErrorKind::NotFound, "backend has no servers"),
        }))
    }

    /// Writes the PROXY header the servers expect, if they do, as the connection's first
    /// bytes: `client` is the client's address, `local` the one it reached. Called right
    /// after [`Pool::connect`], before anything of the client's.
    pub async fn send_proxy_header(
        &self,
        stream: &mut TcpStream,
        client: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let header = match self.send_proxy {
            None => return Ok(()),
            Some(ProxyVersion::V1) => crate::io::proxy_header::v1(client, local),
            Some(ProxyVersion::V2) => crate::io::proxy_header::v2(client, local),
        };
        stream.write_all(header.as_bytes()).await
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
        if server.literal.is_none_or(|addr| !addr.ip().is_loopback()) {
            // A loopback server's socket got it before connecting.
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&crate::io::tcp_keepalive());
        }
        Ok(stream)
    }
}

/// Weighted round robin in memory that grows with the number of servers, not with their
/// weights.
///
/// The turns are dealt in rounds: round `r` gives one turn to every server whose weight is
/// more than `r`, so weights 3 and 1 give `a b a a`, not `a a a b`. With the servers sorted
/// by weight (heaviest first, ties in config order), the servers in a round are always a
/// prefix of that order, and consecutive rounds with the same prefix form a band. A turn
/// number then finds its band by binary search and its server by division: no table with a
/// slot per unit of weight.
#[derive(Debug)]
struct Schedule {
    /// Server indexes, heaviest first.
    order: Vec<usize>,
    /// One per distinct weight, lightest band last.
    bands: Vec<Band>,
    /// Turns in a whole cycle: the sum of the weights.
    cycle: u64,
}

#[derive(Debug, Clone, Copy)]
struct Band {
    /// The first turn of the band within the cycle.
    start: u64,
    /// Servers taking part: the first `width` of `order`.
    width: usize,
}

impl Schedule {
    fn new(weights: &[u32]) -> Self {
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
        let mut bands = Vec::new();
        let mut start = 0u64;
        let mut rounds_done = 0u32;
        // Walk from the lightest weight up: the rounds below the lightest weight include
        // everyone, the next rounds everyone but the lightest, and so on.
        let mut width = order.len();
        while width > 0 {
            let weight = weights[order[width - 1]];
            let rounds = weight - rounds_done;
            if rounds > 0 {
                bands.push(Band { start, width });
                start += u64::from(rounds) * width as u64;
                rounds_done = weight;
            }
            width -= 1;
        }
        Schedule {
            order,
            bands,
            cycle: start,
        }
    }

    /// The server index for turn `turn`.
    fn pick(&self, turn: usize) -> usize {
        if self.cycle == 0 {
            return 0;
        }
        let at = turn as u64 % self.cycle;
        let band = match self.bands.partition_point(|b| b.start <= at) {
            0 => return 0,
            n => self.bands[n - 1],
        };
        self.order[((at - band.start) % band.width as u64) as usize]
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
    socket.set_tcp_keepalive(&crate::io::tcp_keepalive())?;
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
mod tests {
    use super::{Pool, Schedule};
    use crate::config::{BackendConfig, ServerConfig};

    #[tokio::test]
    async fn backend_sockets_have_keepalive_whether_loopback_literal_or_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for address in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let config = BackendConfig {
                name: "b".to_owned(),
                servers: vec![ServerConfig {
                    address: address.clone(),
                    weight: 1,
                }],
                send_proxy_protocol: None,
            };
            let metrics = crate::metrics::Metrics::new();
            let pool = Pool::new(&config, std::time::Duration::from_secs(2), &metrics);
            let (stream, _) = pool.connect().await.unwrap();
            let sock = socket2::SockRef::from(&stream);
            assert!(sock.keepalive().unwrap(), "{address}");
            assert_eq!(
                sock.tcp_keepalive_time().unwrap(),
                std::time::Duration::from_secs(60),
                "{address}"
            );
            assert!(sock.tcp_nodelay().unwrap(), "{address}");
        }
    }

    fn turns(weights: &[u32], n: usize) -> Vec<usize> {
        let schedule = Schedule::new(weights);
        (0..n).map(|turn| schedule.pick(turn)).collect()
    }

    #[test]
    fn equal_weights_take_turns_in_config_order() {
        assert_eq!(turns(&[1, 1, 1], 7), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn heavier_servers_get_their_share_interleaved() {
        // Rounds: {1, 0}, {1}, {1}.
        assert_eq!(turns(&[1, 3], 8), [1, 0, 1, 1, 1, 0, 1, 1]);
        // Rounds: {0, 2, 1}, {0, 2}, {0}.
        assert_eq!(turns(&[3, 1, 2], 6), [0, 2, 1, 0, 2, 0]);
    }

    #[test]
    fn shares_match_weights_over_a_cycle_without_a_slot_per_unit() {
        let weights = [1000, 1, 500, 1000, 7];
        let schedule = Schedule::new(&weights);
        assert_eq!(schedule.cycle, 2508);
        assert_eq!(schedule.bands.len(), 4);
        let mut counts = [0u32; 5];
        for turn in 0..2508 {
            counts[schedule.pick(turn)] += 1;
        }
        assert_eq!(counts, weights);
        // The counter wraps around usize::MAX without skipping a server.
        let _ = schedule.pick(usize::MAX);
    }

    #[test]
    fn no_servers_pick_the_first_index() {
        assert_eq!(Schedule::new(&[]).pick(5), 0);
    }
}
