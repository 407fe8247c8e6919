//! Bind and accept: the first stage of the pipeline. Each accepted connection gets its own
//! tracked task running [`conn::serve`](crate::conn::serve); nothing a connection does can
//! reach the accept loop.
//!
//! A TCP listener is one accepting socket per worker ([`crate::workers`]), all bound to the
//! same address with `SO_REUSEPORT`, each accepted on by its own worker's event loop. A Unix
//! listener is one socket (Unix sockets have no reuseport group) that every worker accepts
//! on through a descriptor of its own. A udp listener has one datagram socket per worker,
//! like a TCP one, each received on by [`conn::udp::serve`](crate::conn::udp::serve).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ListenAddr, UnixAddr, UnixPerms};
use crate::conn::Permits;
use crate::io::Socket;
use crate::limits::IpTable;
use crate::live::{ConnLimit, Peer};
use crate::services::Services;
use crate::shutdown::{Stop, registering};
use crate::snapshot::ListenerSnap;
use crate::workers::Workers;

/// A listener's address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener `{listener}` cannot listen on {addr}")]
pub struct BindError {
    pub listener: String,
    pub addr: ListenAddr,
    #[source]
    pub source: std::io::Error,
}

/// A listening socket of either kind, as a std socket until it reaches its worker: a tokio
/// socket belongs to the runtime it was registered with.
#[derive(Debug)]
pub enum Listening {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
    /// A udp listener's datagram socket.
    Udp(std::net::UdpSocket),
}

impl AsFd for Listening {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listening::Tcp(l) => l.as_fd(),
            Listening::Unix(l) => l.as_fd(),
            Listening::Udp(s) => s.as_fd(),
        }
    }
}

/// The socket file a Unix listener created, identified by device and inode, so that it is
/// removed only while it is still this socket's (not one a later process bound there).
#[derive(Debug, Clone)]
pub struct SocketFile {
    pub path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    fn of(path: &Path) -> std::io::Result<SocketFile> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Unlinks the file if it is still the one bound.
    pub fn remove(&self) {
        if SocketFile::of(&self.path).is_ok_and(|now| now.id == self.id)
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the listener's socket file");
        }
    }
}

/// Bound sockets not yet accepting.
pub struct Pending {
    name: String,
    configured: ListenAddr,
    local_addr: ListenAddr,
    /// One per worker (a Unix listener: copies of one socket).
    sockets: Vec<Listening>,
    file: Option<SocketFile>,
    /// Bound here, rather than adopted from an upgrade or a renamed listener.
    created: bool,
    /// Datagram sockets (`protocol = "udp"`).
    udp: bool,
}

/// A listener accepting connections.
#[derive(Debug)]
pub struct Bound {
    /// The address in the config (port 0 stays 0 here).
    pub configured: ListenAddr,
    /// The address actually bound.
    pub local_addr: ListenAddr,
    /// Stops this accept loop (a reload removed the listener).
    pub stop: Stop,
    /// The sockets, for a binary upgrade to hand over (see [`crate::handoff`]).
    pub copies: crate::handoff::Copies,
    /// A Unix listener's socket file, removed when the listener ends here (a reload removed
    /// it, or the gateway exits) but not when an upgrade handed the socket over.
    pub file: Option<SocketFile>,
    /// Datagram sockets (`protocol = "udp"`).
    pub udp: bool,
}

/// Binds `count` sockets to `addr` (with port 0, the port the first one got); datagram
/// sockets when `udp` (on an IP address: `check` refuses a udp listener on a Unix socket).
/// A Unix socket has no `SO_REUSEPORT`: its one socket is shared by the `count` accept
/// loops (see [`bind_unix`]).
pub fn bind(
    name: &str,
    addr: &ListenAddr,
    perms: UnixPerms,
    count: usize,
    udp: bool,
) -> Result<Pending, BindError> {
    let error = |source| BindError {
        listener: name.to_owned(),
        addr: addr.clone(),
        source,
    };
    let tcp_addr = match addr {
        ListenAddr::Tcp(tcp) => *tcp,
        ListenAddr::Unix(unix) => {
            let (socket, file) = bind_unix(unix, perms).map_err(error)?;
            let sockets = share(socket, count).map_err(error)?;
            return Ok(Pending {
                name: name.to_owned(),
                configured: addr.clone(),
                local_addr: addr.clone(),
                sockets,
                file,
                created: true,
                udp: false,
            });
        }
    };
    let reuse_port = count > 1;
    if udp {
        let first = bind_udp(tcp_addr, reuse_port).map_err(error)?;
        let local_addr = first.local_addr().map_err(error)?;
        let mut sockets = vec![Listening::Udp(first)];
        for _ in 1..count {
            sockets.push(Listening::Udp(
                bind_udp(local_addr, reuse_port).map_err(error)?,
            ));
        }
        return Ok(Pending {
            name: name.to_owned(),
            configured: addr.clone(),
            local_addr: ListenAddr::Tcp(local_addr),
            sockets,
            file: None,
            created: true,
            udp: true,
        });
    }
    let first = bind_socket(tcp_addr, reuse_port, true).map_err(error)?;
    let local_addr = first.local_addr().map_err(error)?;
    let mut sockets = vec![Listening::Tcp(first)];
    for _ in 1..count {
        sockets.push(Listening::Tcp(
            bind_socket(local_addr, reuse_port, true).map_err(error)?,
        ));
    }
    Ok(Pending {
        name: name.to_owned(),
        configured: addr.clone(),
        local_addr: ListenAddr::Tcp(local_addr),
        sockets,
        file: None,
        created: true,
        udp: false,
    })
}

/// One accept loop per worker on the same Unix socket, each through its own descriptor.
/// Every worker's event loop is told of each new connection and the first to call
/// `accept(2)` takes it (the others get `EAGAIN`), as nginx's workers share a socket without
/// `reuseport`: connections still spread over the workers, for a wake-up per worker each.
fn share(
    socket: std::os::unix::net::UnixListener,
    count: usize,
) -> std::io::Result<Vec<Listening>> {
    let mut sockets = Vec::with_capacity(count.max(1));
    for _ in 1..count {
        sockets.push(Listening::Unix(socket.try_clone()?));
    }
    sockets.push(Listening::Unix(socket));
    Ok(sockets)
}

/// Binds a Unix socket. A socket file left by a process that is gone (a connect to it is
/// refused) is replaced; a path where a process still accepts, or that is no socket, is
/// refused. `perms` are applied between `bind(2)` and `listen(2)`, so nobody connects
/// before the file has its mode and owner.
fn bind_unix(
    addr: &UnixAddr,
    perms: UnixPerms,
) -> std::io::Result<(std::os::unix::net::UnixListener, Option<SocketFile>)> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let sockaddr = SockAddr::unix(addr.sun_path())?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    match socket.bind(&sockaddr) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match addr {
            UnixAddr::Abstract(_) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    "another socket has this abstract name",
                ));
            }
            UnixAddr::Path(path) => {
                remove_stale(path, &sockaddr)?;
                socket.bind(&sockaddr)?;
            }
        },
        Err(e) => return Err(e),
    }
    let file = match addr {
        UnixAddr::Path(path) => {
            let file = SocketFile::of(path)?;
            if let Err(e) = apply_perms(path, perms) {
                file.remove();
                return Err(e);
            }
            Some(file)
        }
        UnixAddr::Abstract(_) => None,
    };
    let listening = socket
        .listen(BACKLOG)
        .and_then(|()| socket.set_nonblocking(true));
    if let Err(e) = listening {
        if let Some(file) = &file {
            file.remove();
        }
        return Err(e);
    }
    Ok((socket.into(), file))
}

/// `path` is taken: removes it if it is a socket nobody accepts on.
fn remove_stale(path: &Path, sockaddr: &socket2::SockAddr) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; it is left alone",
        ));
    }
    // Non-blocking, so a live process whose backlog is full answers EAGAIN instead of
    // making this wait.
    let probe = socket2::Socket::new(
        socket2::Domain::UNIX,
        socket2::Type::STREAM.nonblocking(),
        None,
    )?;
    match probe.connect(sockaddr) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale socket file (nothing accepts on it)");
            std::fs::remove_file(path)
        }
        Ok(()) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "a process is listening on it",
        )),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "a process is listening on it (its backlog is full)",
        )),
        Err(e) => Err(e),
    }
}

/// `chmod(2)` and `chown(2)` on the socket file, as `unix = { mode, owner, group }` asks.
pub fn apply_perms(path: &Path, perms: UnixPerms) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if perms.owner.is_some() || perms.group.is_some() {
        std::os::unix::fs::chown(path, perms.owner, perms.group).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot set the socket file's owner: {e}"))
        })?;
    }
    if let Some(mode) = perms.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot set the socket file's mode: {e}"))
        })?;
    }
    Ok(())
}

/// A listener on sockets received from the process this one replaces (see
/// [`crate::handoff`]): nothing is bound, the accept queues are the old process's. A Unix
/// socket's file is left as it is, its mode and owner set again from the config.
pub fn adopt(
    name: &str,
    addr: &ListenAddr,
    perms: UnixPerms,
    fds: Vec<OwnedFd>,
    udp: bool,
) -> Result<Pending, BindError> {
    let error = |source| BindError {
        listener: name.to_owned(),
        addr: addr.clone(),
        source,
    };
    let mut sockets = Vec::with_capacity(fds.len());
    for fd in fds {
        let socket = socket2::SockRef::from(&fd);
        let local = socket.local_addr().map_err(error)?;
        let datagram = socket.r#type().map_err(error)? == socket2::Type::DGRAM;
        if datagram != udp {
            return Err(error(std::io::Error::other(format!(
                "the process before had a {} listener here, and a socket cannot change protocol; give the listener a new name or address for this upgrade",
                if udp { "stream" } else { "udp" }
            ))));
        }
        sockets.push(match addr {
            ListenAddr::Tcp(_) if udp && local.as_socket().is_some() => {
                Listening::Udp(std::net::UdpSocket::from(fd))
            }
            ListenAddr::Tcp(_) if local.as_socket().is_some() => {
                Listening::Tcp(std::net::TcpListener::from(fd))
            }
            ListenAddr::Unix(_) if local.is_unix() => {
                Listening::Unix(std::os::unix::net::UnixListener::from(fd))
            }
            _ => {
                return Err(error(std::io::Error::other(
                    "the socket received is not of the address's kind",
                )));
            }
        });
    }
    let local_addr = match sockets.first() {
        None => return Err(error(std::io::Error::other("no socket received"))),
        Some(Listening::Tcp(l)) => ListenAddr::Tcp(l.local_addr().map_err(error)?),
        Some(Listening::Udp(s)) => ListenAddr::Tcp(s.local_addr().map_err(error)?),
        Some(Listening::Unix(_)) => addr.clone(),
    };
    let file = match addr {
        ListenAddr::Unix(UnixAddr::Path(path)) => {
            if let Err(e) = apply_perms(path, perms) {
                tracing::warn!(listener = name, error = %e, "socket file received in the upgrade");
            }
            SocketFile::of(path).ok()
        }
        _ => None,
    };
    Ok(Pending {
        name: name.to_owned(),
        configured: addr.clone(),
        local_addr,
        sockets,
        file,
        created: false,
        udp,
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
    /// Closes sockets that will not be used (a reload failed further on), and the file of
    /// a Unix socket bound for them.
    pub fn discard(self) {
        if self.created
            && let Some(file) = &self.file
        {
            file.remove();
        }
    }

    /// Starts one accept loop per socket, each a tracked task on its worker.
    pub fn spawn(
        self,
        services: &Arc<Services>,
        limit: &Arc<ConnLimit>,
        workers: &Workers,
    ) -> (String, Bound) {
        let stop = Stop::new();
        let name: Arc<str> = self.name.as_str().into();
        let copies = crate::handoff::Copies::default();
        // Shared by the listener's accept loops on every worker; they outlive reloads, so
        // counts carry on while a reload changes the limits.
        let limits = ListenerLimits {
            global: limit.clone(),
            listener: ConnLimit::new(usize::MAX),
            per_ip: IpTable::new(),
        };
        // A udp listener's sessions, likewise shared by its sockets.
        let sessions = crate::conn::udp::SessionLimits {
            global: limit.clone(),
            sessions: ConnLimit::new(usize::MAX),
        };
        for (i, socket) in self.sockets.into_iter().enumerate() {
            let copy = copies.keep(&socket);
            let (name, shared, stop) = (name.clone(), services.clone(), stop.clone());
            let (limits, sessions) = (limits.clone(), sessions.clone());
            let run = async move {
                match socket {
                    Listening::Udp(socket) => {
                        let stop = stop.token().clone();
                        crate::conn::udp::serve(socket, name, shared, sessions, stop).await;
                    }
                    socket => accept_loop(socket, name, shared, limits, stop).await,
                }
                drop(copy);
            };
            // Sockets received from an upgrade may outnumber this process's workers: every
            // one of them must be accepted on, or the connections the kernel queues on it
            // would wait forever.
            let worker = i % workers.sockets_per_listener();
            services.shutdown.spawn_on(run, workers.runtime(worker));
        }
        (
            self.name,
            Bound {
                configured: self.configured,
                local_addr: self.local_addr,
                stop,
                copies,
                file: self.file,
                udp: self.udp,
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
pub fn refuse(tcp: Socket, listener: Option<&ListenerSnap>) {
    if listener.is_some_and(|l| l.tls.is_none() && l.detect) {
        let _ = tcp.try_write(crate::limits::REFUSED_503);
    }
    drop(tcp);
}

/// A listening socket registered with its worker's event loop.
enum Acceptor {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Acceptor {
    fn new(socket: Listening) -> std::io::Result<Acceptor> {
        Ok(match socket {
            Listening::Tcp(l) => Acceptor::Tcp(TcpListener::from_std(l)?),
            Listening::Unix(l) => Acceptor::Unix(tokio::net::UnixListener::from_std(l)?),
            Listening::Udp(_) => unreachable!("datagram sockets are received on, not accepted on"),
        })
    }

    /// The socket's own waker slot, rather than an `accept` future that joins (and, when
    /// dropped, leaves) the socket's list of waiters under its lock on every wake-up.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<(Socket, Peer)>> {
        match self {
            Acceptor::Tcp(l) => l
                .poll_accept(cx)
                .map_ok(|(s, peer)| (Socket::Tcp(s), Peer::Ip(peer))),
            Acceptor::Unix(l) => l
                .poll_accept(cx)
                .map_ok(|(s, _)| (Socket::Unix(s), Peer::Unix)),
        }
    }
}

async fn accept_loop(
    socket: Listening,
    name: Arc<str>,
    services: Arc<Services>,
    limits: ListenerLimits,
    stop: Stop,
) {
    let socket = match Acceptor::new(socket) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot register the listening socket; this worker does not accept on it");
            return;
        }
    };
    // Made once and kept registered, rather than a pair of waiters made and dropped for
    // every connection; polled on the first wake-up that finds the backlog empty and then on
    // every 64th, with the flags set before either token fires read in between (see
    // `shutdown::registering`).
    let mut stopping = std::pin::pin!(async {
        tokio::select! {
            () = services.shutdown.drained() => {}
            () = stop.token().cancelled() => {}
        }
    });
    let mut wakeups = 0;
    loop {
        // Accepting first: the stop is looked at whenever the backlog is empty, and a
        // backlog that never empties still yields to it (tokio's task budget makes
        // `poll_accept` return pending after 128 connections in a row).
        let accepted = std::future::poll_fn(|cx| {
            if let Poll::Ready(accepted) = socket.poll_accept(cx) {
                return Poll::Ready(Some(accepted));
            }
            let stopped = if registering(&mut wakeups) {
                stopping.as_mut().poll(cx).is_ready()
            } else {
                services.shutdown.is_draining() || stop.is_cancelled()
            };
            if stopped {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await;
        let Some(accepted) = accepted else { break };
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
        let reject = |tcp: Socket, reason: &'static str| {
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
            // A Unix socket's peers are local processes its file's permissions let in.
            if peer.ip().is_some_and(|ip| !lsnap.trusts(ip)) {
                reject(tcp, "untrusted_proxy");
                continue;
            }
            // The address that counts is the one in the header: checked after it.
            if lsnap.limits_per_ip() {
                permits.ip_table = Some(limits.per_ip.clone());
            }
        } else if lsnap.limits_per_ip()
            && let Some(ip) = peer.ip()
        {
            // A Unix socket's clients have no address to count: only `max_connections`
            // applies to them.
            match limits
                .per_ip
                .admit(ip, lsnap.ip_rules(), std::time::Instant::now())
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
