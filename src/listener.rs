//! Bind and accept: the first stage of the pipeline. Each accepted connection gets its own
//! tracked task running [`conn::serve`](crate::conn::serve); nothing a connection does can
//! reach the accept loop.
//!
//! A listener is one accepting socket per worker ([`crate::workers`]), all bound to the same
//! address with `SO_REUSEPORT`, each accepted on by its own worker's event loop. A udp
//! listener has one datagram socket per worker the same way, each received on by
//! [`conn::udp::serve`](crate::conn::udp::serve).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::conn::Permits;
use crate::limits::IpTable;
use crate::live::ConnLimit;
use crate::services::Services;
use crate::snapshot::ListenerSnap;
use crate::workers::Workers;

/// A listener's address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener `{listener}` cannot listen on {addr}")]
pub struct BindError {
    pub listener: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Bound sockets not yet accepting.
pub struct Pending {
    name: String,
    configured: SocketAddr,
    local_addr: SocketAddr,
    /// One per worker. Kept as std sockets until each reaches its worker: a tokio socket
    /// belongs to the runtime it was registered with.
    sockets: Sockets,
}

/// A listener's sockets, of its kind (the same as an upgrade hands over).
pub use crate::handoff::Listening as Sockets;

/// A listener accepting connections.
#[derive(Debug)]
pub struct Bound {
    /// The address in the config (port 0 stays 0 here).
    pub configured: SocketAddr,
    /// The address actually bound.
    pub local_addr: SocketAddr,
    /// Stops this accept loop (a reload removed the listener).
    pub stop: CancellationToken,
    /// The sockets, for a binary upgrade to hand over (see [`crate::handoff`]).
    pub copies: crate::handoff::Copies,
    /// Datagram sockets (`protocol = "udp"`).
    pub udp: bool,
}

/// Binds `count` sockets to `addr` (with port 0, the port the first one got), datagram
/// sockets when `udp`.
pub fn bind(name: &str, addr: SocketAddr, count: usize, udp: bool) -> Result<Pending, BindError> {
    let error = |source| BindError {
        listener: name.to_owned(),
        addr,
        source,
    };
    let reuse_port = count > 1;
    let (local_addr, sockets) = if udp {
        let first = bind_udp(addr, reuse_port).map_err(error)?;
        let local_addr = first.local_addr().map_err(error)?;
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(bind_udp(local_addr, reuse_port).map_err(error)?);
        }
        (local_addr, Sockets::Udp(sockets))
    } else {
        let first = bind_socket(addr, reuse_port, true).map_err(error)?;
        let local_addr = first.local_addr().map_err(error)?;
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(bind_socket(local_addr, reuse_port, true).map_err(error)?);
        }
        (local_addr, Sockets::Tcp(sockets))
    };
    Ok(Pending {
        name: name.to_owned(),
        configured: addr,
        local_addr,
        sockets,
    })
}

/// A listener on sockets received from the process this one replaces (see
/// [`crate::handoff`]): nothing is bound, the accept queues are the old process's.
pub fn adopt(
    name: &str,
    addr: SocketAddr,
    sockets: Sockets,
    udp: bool,
) -> Result<Pending, BindError> {
    let error = |source| BindError {
        listener: name.to_owned(),
        addr,
        source,
    };
    if matches!(sockets, Sockets::Udp(_)) != udp {
        return Err(error(std::io::Error::other(format!(
            "the process before had a {} listener here, and a socket cannot change protocol; give the listener a new name or address for this upgrade",
            if udp { "TCP" } else { "UDP" }
        ))));
    }
    let local_addr = sockets
        .first_addr()
        .ok_or_else(|| error(std::io::Error::other("no socket received")))?
        .map_err(error)?;
    Ok(Pending {
        name: name.to_owned(),
        configured: addr,
        local_addr,
        sockets,
    })
}

/// Backlog of connections not yet accepted: enough to absorb a reconnect wave.
const BACKLOG: i32 = 4096;

/// A listening socket. IPv6 sockets are IPv6-only, so `0.0.0.0:P` and `[::]:P` can be two
/// listeners side by side (as nginx does by default) instead of the second failing to bind.
pub fn listen_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_socket(addr, false, false)?)
}

/// A datagram socket; IPv6 ones IPv6-only, as [`bind_socket`]'s. With `reuse_port`, Linux
/// hands each datagram to one socket of the group by a hash of its source and destination,
/// so one client's datagrams keep reaching the same socket (and worker).
fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `reuse_port`: several sockets of ours share the address, the kernel spreading new
/// connections over them. Like HAProxy's listeners (which set it by default), this also
/// lets another process of the same user bind the address beside us.
///
/// `nodelay`: connections accepted on the socket start with `TCP_NODELAY` (Linux copies it
/// from the listening socket to each one it accepts), which saves a `setsockopt(2)` per
/// connection.
fn bind_socket(
    addr: SocketAddr,
    reuse_port: bool,
    nodelay: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A restart can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if nodelay {
        socket.set_tcp_nodelay(true)?;
        // Like TCP_NODELAY, Linux copies keepalive and its timings from the listening
        // socket to each accepted one.
        socket.set_tcp_keepalive(&crate::io::tcp_keepalive())?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

impl Pending {
    /// Starts one accept loop per socket, each a tracked task on its worker.
    pub fn spawn(
        self,
        services: &Arc<Services>,
        limit: &Arc<ConnLimit>,
        workers: &Workers,
    ) -> (String, Bound) {
        let stop = CancellationToken::new();
        let name: Arc<str> = self.name.as_str().into();
        let copies = crate::handoff::Copies::default();
        let sockets = match self.sockets {
            Sockets::Tcp(sockets) => sockets,
            Sockets::Udp(sockets) => {
                let limits = crate::conn::udp::SessionLimits {
                    global: limit.clone(),
                    sessions: ConnLimit::new(usize::MAX),
                };
                for (i, socket) in sockets.into_iter().enumerate() {
                    let copy = copies.keep(&socket);
                    let receive = crate::conn::udp::serve(
                        socket,
                        name.clone(),
                        services.clone(),
                        limits.clone(),
                        stop.clone(),
                    );
                    let receive = async move {
                        receive.await;
                        drop(copy);
                    };
                    let worker = i % workers.sockets_per_listener();
                    services.shutdown.spawn_on(receive, workers.runtime(worker));
                }
                return (
                    self.name,
                    Bound {
                        configured: self.configured,
                        local_addr: self.local_addr,
                        stop,
                        copies,
                        udp: true,
                    },
                );
            }
        };
        // Shared by the listener's accept loops on every worker; they outlive reloads, so
        // counts carry on while a reload changes the limits.
        let limits = ListenerLimits {
            global: limit.clone(),
            listener: ConnLimit::new(usize::MAX),
            per_ip: IpTable::new(),
        };
        for (i, socket) in sockets.into_iter().enumerate() {
            let copy = copies.keep(&socket);
            let accept = accept_loop(
                socket,
                name.clone(),
                services.clone(),
                limits.clone(),
                stop.clone(),
            );
            let accept = async move {
                accept.await;
                drop(copy);
            };
            // Sockets received from an upgrade may outnumber this process's workers: every
            // one of them must be accepted on, or the connections the kernel queues on it
            // would wait forever.
            let worker = i % workers.sockets_per_listener();
            services.shutdown.spawn_on(accept, workers.runtime(worker));
        }
        (
            self.name,
            Bound {
                configured: self.configured,
                local_addr: self.local_addr,
                stop,
                copies,
                udp: false,
            },
        )
    }
}

/// The counts one listener's connections are admitted against.
#[derive(Clone)]
struct ListenerLimits {
    /// `[defaults] max_connections`, shared by every listener.
    global: Arc<ConnLimit>,
    /// The listener's `max_connections` (unlimited when not set).
    listener: Arc<ConnLimit>,
    /// `max_connections_per_ip`, `max_new_connections_per_ip`.
    per_ip: Arc<IpTable>,
}

/// Closes a connection refused at once. Plaintext HTTP listeners answer 503 first (SPEC),
/// with one non-blocking `write(2)`; a TLS client only sees the close: a handshake would cost
/// more than the refused connection is worth.
pub fn refuse(tcp: tokio::net::TcpStream, listener: Option<&ListenerSnap>) {
    if listener.is_some_and(|l| l.tls.is_none() && l.detect) {
        let _ = tcp.try_write(crate::limits::REFUSED_503);
    }
    drop(tcp);
}

async fn accept_loop(
    socket: std::net::TcpListener,
    name: Arc<str>,
    services: Arc<Services>,
    limits: ListenerLimits,
    stop: CancellationToken,
) {
    let socket = match TcpListener::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot register the listening socket; this worker does not accept on it");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = services.shutdown.drained() => break,
            _ = stop.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE/ENFILE and friends: the connection waiting in the backlog is not
                // lost; back off briefly instead of spinning on the error.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The snapshot in force now: its limits, and the TLS configuration the connection
        // starts with.
        let lsnap = services.snapshot().listener(&name).cloned();
        let Some(lsnap) = lsnap else {
            drop(tcp);
            continue;
        };
        let reject = |tcp: tokio::net::TcpStream, reason: &'static str| {
            services
                .metrics
                .rejected_total
                .with_label_values(&[&name, reason])
                .inc();
            tracing::debug!(listener = %name, network.peer.address = %peer, reason, "connection refused");
            refuse(tcp, Some(&lsnap));
        };
        let Some(global) = limits.global.try_acquire() else {
            reject(tcp, "max_connections");
            continue;
        };
        limits
            .listener
            .set_max(lsnap.max_connections.unwrap_or(usize::MAX));
        let Some(listener) = limits.listener.try_acquire() else {
            reject(tcp, "max_connections");
            continue;
        };
        let mut permits = Permits {
            global,
            listener,
            ip: None,
            ip_table: None,
        };
        if lsnap.proxy_protocol {
            if !lsnap.trusts(peer.ip()) {
                reject(tcp, "untrusted_proxy");
                continue;
            }
            // The address that counts is the one in the header: checked after it.
            if lsnap.limits_per_ip() {
                permits.ip_table = Some(limits.per_ip.clone());
            }
        } else if lsnap.limits_per_ip() {
            match limits
                .per_ip
                .admit(peer.ip(), lsnap.ip_rules(), std::time::Instant::now())
            {
                Ok(permit) => permits.ip = Some(permit),
                Err(refused) => {
                    reject(tcp, refused.reason());
                    continue;
                }
            }
        }
        services.shutdown.spawn(crate::conn::serve(
            tcp,
            peer,
            lsnap,
            services.clone(),
            permits,
        ));
    }
    tracing::debug!(listener = %name, "stopped accepting");
}

/// Open files a gateway process keeps beside its connections: listening sockets, the admin
/// endpoint and its clients, log and config files, certificate reads on reload.
const FD_HEADROOM: u64 = 128;

/// The `max_connections` that fits the open-files limit: each client connection can hold two
/// descriptors (the client's socket and the backend's; a splice relay's pipes are given up
/// for the copy relay when descriptors run short), plus [`FD_HEADROOM`].
pub fn default_max_connections(open_files: u64) -> usize {
    let usable = open_files.saturating_sub(FD_HEADROOM) / 2;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(1, crate::config::MAX_CONNECTIONS)
}

/// The soft open-files limit (`RLIMIT_NOFILE`); `None` when unlimited.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The limit in force for a config: the one it sets, or the one the open-files limit allows.
pub fn effective_max_connections(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| default_max_connections(open_files_limit().unwrap_or(1024)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let listener = bind_socket("127.0.0.1:0".parse().unwrap(), false, true).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 6);
    }

    #[test]
    fn default_limit_leaves_two_descriptors_a_connection_and_headroom() {
        assert_eq!(default_max_connections(20_000), 9_936);
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(10), 1);
        assert_eq!(
            default_max_connections(u64::MAX),
            crate::config::MAX_CONNECTIONS
        );
    }
}
