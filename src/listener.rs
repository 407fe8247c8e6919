//! Bind and accept: the first stage of the pipeline. Each accepted connection gets its own
//! tracked task running [`conn::serve`](crate::conn::serve); nothing a connection does can
//! reach the accept loop.
//!
//! A listener is one accepting socket per worker ([`crate::workers`]), all bound to the same
//! address with `SO_REUSEPORT`, each accepted on by its own worker's event loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::workers::Workers;
use crate::{Shared, StartError};

/// Bound sockets not yet accepting.
pub struct Pending {
    name: String,
    configured: SocketAddr,
    local_addr: SocketAddr,
    /// One per worker. Kept as std sockets until each reaches its worker: a tokio socket
    /// belongs to the runtime it was registered with.
    sockets: Vec<std::net::TcpListener>,
}

/// A listener accepting connections.
#[derive(Debug)]
pub struct Bound {
    /// The address in the config (port 0 stays 0 here).
    pub configured: SocketAddr,
    /// The address actually bound.
    pub local_addr: SocketAddr,
    /// Stops this accept loop (a reload removed the listener).
    pub stop: CancellationToken,
}

/// Binds `count` sockets to `addr` (with port 0, the port the first one got).
pub fn bind(name: &str, addr: SocketAddr, count: usize) -> Result<Pending, StartError> {
    let error = |source| StartError::Bind {
        listener: name.to_owned(),
        addr,
        source,
    };
    let reuse_port = count > 1;
    let first = bind_socket(addr, reuse_port, true).map_err(error)?;
    let local_addr = first.local_addr().map_err(error)?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind_socket(local_addr, reuse_port, true).map_err(error)?);
    }
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
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

impl Pending {
    /// Starts one accept loop per socket, each a tracked task on its worker.
    pub fn spawn(self, shared: Arc<Shared>, workers: &Workers) -> (String, Bound) {
        let stop = CancellationToken::new();
        let name: Arc<str> = self.name.as_str().into();
        for (i, socket) in self.sockets.into_iter().enumerate() {
            let accept = accept_loop(socket, name.clone(), shared.clone(), stop.clone());
            shared.shutdown.spawn_on(accept, workers.runtime(i));
        }
        (
            self.name,
            Bound {
                configured: self.configured,
                local_addr: self.local_addr,
                stop,
            },
        )
    }
}

async fn accept_loop(
    socket: std::net::TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
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
            _ = shared.shutdown.drained() => break,
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
        let permit = match &shared.conn_limit {
            None => None,
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    shared
                        .metrics
                        .rejected_total
                        .with_label_values(&[&name, "max_connections"])
                        .inc();
                    tracing::debug!(listener = %name, client = %peer, "max_connections reached; closed");
                    drop(tcp);
                    continue;
                }
            },
        };
        shared.shutdown.spawn(crate::conn::serve(
            tcp,
            peer,
            name.clone(),
            shared.clone(),
            permit,
        ));
    }
    tracing::debug!(listener = %name, "stopped accepting");
}
