//! Bind and accept: the first stage of the pipeline. Each accepted connection gets its own
//! tracked task running [`conn::serve`](crate::conn::serve); nothing a connection does can
//! reach the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Shared, StartError};

/// A bound socket not yet accepting.
pub struct Pending {
    name: String,
    configured: SocketAddr,
    socket: TcpListener,
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

pub async fn bind(name: &str, addr: SocketAddr) -> Result<Pending, StartError> {
    let socket = listen_socket(addr).map_err(|source| StartError::Bind {
        listener: name.to_owned(),
        addr,
        source,
    })?;
    Ok(Pending {
        name: name.to_owned(),
        configured: addr,
        socket,
    })
}

/// Backlog of connections not yet accepted: enough to absorb a reconnect wave.
const BACKLOG: i32 = 4096;

/// A listening socket. IPv6 sockets are IPv6-only, so `0.0.0.0:P` and `[::]:P` can be two
/// listeners side by side (as nginx does by default) instead of the second failing to bind.
pub fn listen_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A restart can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

impl Pending {
    /// Starts the accept loop as a tracked task.
    pub fn spawn(self, shared: Arc<Shared>) -> (String, Bound) {
        let local_addr = self.socket.local_addr().unwrap_or(self.configured);
        let stop = CancellationToken::new();
        let name: Arc<str> = self.name.as_str().into();
        shared
            .shutdown
            .spawn(accept_loop(self.socket, name, shared.clone(), stop.clone()));
        (
            self.name,
            Bound {
                configured: self.configured,
                local_addr,
                stop,
            },
        )
    }
}

async fn accept_loop(
    socket: TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
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
        let shared_conn = shared.clone();
        let name_conn = name.clone();
        shared.shutdown.spawn(async move {
            crate::conn::serve(tcp, peer, name_conn, shared_conn).await;
            drop(permit);
        });
    }
    tracing::debug!(listener = %name, "stopped accepting");
}
