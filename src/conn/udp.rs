//! The UDP pipeline of one listening socket (one per worker):
//!
//! ```text
//! receive ─► session of the source address? ─► forward
//!                 └ no: limits ─► route ─► server pick ─► connected socket ─► session task
//! ```
//!
//! A session is keyed by the client's address and lives on the worker whose socket received
//! its first datagram. With one socket per worker in a `SO_REUSEPORT` group, Linux picks
//! the socket for a datagram by a hash of its addresses and ports, so a client's datagrams
//! keep reaching the same worker and its session map needs no sharing between threads.
//!
//! Each session has a connected socket toward its server and a task (see
//! [`crate::relay::udp`]) that relays the server's datagrams back through the listening
//! socket, so they come from the address the client sent to. The listener's receive loop
//! forwards the client's datagrams itself, from the worker's one datagram buffer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntCounter;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Protocol;
use crate::live::{ConnCtx, ConnLimit, Peer, Permit, access_event};
use crate::metrics::RouteCounters;
use crate::relay::tcp::Flow;
use crate::relay::udp::{self as udp_relay, Counters, Forwarded, Session, UdpEnd};
use crate::route::{Route, RouteQuery};
use crate::services::Services;
use crate::upstream::Lease;

/// Datagrams taken from the listening socket per wake-up before the worker's other tasks
/// get a turn.
const BATCH: usize = 64;

/// The counts one udp listener's sessions are admitted against, shared by its sockets on
/// every worker.
#[derive(Clone)]
pub struct SessionLimits {
    /// `[defaults] max_connections`: a session holds a socket, as a connection does.
    pub global: Arc<ConnLimit>,
    /// The route's `max_sessions`.
    pub sessions: Arc<ConnLimit>,
}

/// One live session, shared by the receive loop (which forwards the client's datagrams)
/// and the session's task (which relays the server's).
struct Entry {
    session: Session,
    ctx: Arc<ConnCtx>,
    route: Arc<Route>,
    /// Counts the session on its server (`least_conn`, `/backends`) until it ends.
    lease: Lease,
    counters: RouteCounters,
    datagrams_up: IntCounter,
    datagrams_down: IntCounter,
    dropped_up: IntCounter,
    dropped_down: IntCounter,
    /// Places under `max_connections` and `max_sessions`, given back when the session ends.
    _permits: (Permit, Permit),
}

impl Entry {
    fn up(&self) -> Counters<'_> {
        Counters {
            bytes: Flow {
                total: &self.ctx.bytes_client_to_backend,
                counter: &self.counters.client_to_backend,
            },
            total: &self.ctx.messages_client_to_backend,
            datagrams: &self.datagrams_up,
            dropped: &self.dropped_up,
        }
    }

    fn down(&self) -> Counters<'_> {
        Counters {
            bytes: Flow {
                total: &self.ctx.bytes_backend_to_client,
                counter: &self.counters.backend_to_client,
            },
            total: &self.ctx.messages_backend_to_client,
            datagrams: &self.datagrams_down,
            dropped: &self.dropped_down,
        }
    }
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Entry>>>>;

fn lock(sessions: &Sessions) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Entry>>> {
    sessions.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the receive loop of one socket shares with the sessions it starts.
struct Listening {
    socket: Arc<UdpSocket>,
    name: Arc<str>,
    services: Arc<Services>,
    limits: SessionLimits,
    sessions: Sessions,
    /// `sockgate_udp_dropped_total` for a new source no server could take, and for a
    /// datagram that found the server's or the client's send buffer full.
    no_server: IntCounter,
    backend_busy: IntCounter,
    client_busy: IntCounter,
}

/// Receives on one listening socket until the listener is removed (`stop`) or a drain
/// begins; sessions end with the drain too (see the README: a datagram has no close to
/// wait for).
pub async fn serve(
    socket: std::net::UdpSocket,
    name: Arc<str>,
    services: Arc<Services>,
    limits: SessionLimits,
    stop: CancellationToken,
) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => Arc::new(socket),
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot register the UDP socket; this worker does not receive on it");
            return;
        }
    };
    let dropped = |reason: &str| {
        services
            .metrics
            .udp_dropped_total
            .with_label_values(&[&name, reason])
    };
    let listening = Listening {
        no_server: dropped("no_server"),
        backend_busy: dropped("backend_busy"),
        client_busy: dropped("client_busy"),
        socket,
        name,
        services,
        limits,
        sessions: Arc::default(),
    };
    loop {
        tokio::select! {
            ready = listening.socket.readable() => {
                if let Err(e) = ready {
                    tracing::warn!(listener = %listening.name, error = %e, "UDP socket failed");
                    break;
                }
            }
            _ = listening.services.shutdown.drained() => break,
            _ = stop.cancelled() => break,
        }
        crate::io::buffer::with_datagram(|buf| {
            for _ in 0..BATCH {
                match listening.socket.try_recv_from(buf) {
                    Ok((n, client)) => listening.datagram(&buf[..n], client),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // An unconnected socket is told of no ICMP errors; whatever this is
                    // concerns one datagram.
                    Err(e) => {
                        tracing::debug!(listener = %listening.name, error = %e, "UDP receive failed");
                        break;
                    }
                }
            }
        });
    }
    tracing::debug!(listener = %listening.name, "stopped receiving");
}

impl Listening {
    /// One datagram from `client`: forwarded on its session, or the start of one.
    fn datagram(&self, datagram: &[u8], client: SocketAddr) {
        let refused = {
            let mut sessions = lock(&self.sessions);
            match sessions.get(&client) {
                Some(entry) => match udp_relay::forward(&entry.session, datagram, entry.up()) {
                    Forwarded::Sent | Forwarded::Dropped => return,
                    // Counted now, so that the session this datagram starts picks a
                    // server knowing of it.
                    Forwarded::Refused => {
                        entry.route.backend.udp_refused(&entry.lease);
                        sessions.remove(&client)
                    }
                    Forwarded::Failed(e) => {
                        tracing::debug!(conn.id = entry.ctx.id, error = %e, "sending to the server failed; the session ends");
                        sessions.remove(&client)
                    }
                },
                None => None,
            }
        };
        if let Some(ended) = refused {
            // Its task reports how it ended; this datagram starts a new session.
            ended.ctx.cancel.cancel();
        }
        self.start(datagram, client);
    }

    /// A datagram from a client without a session: admitted, routed and sent to a server
    /// picked for the new session.
    fn start(&self, datagram: &[u8], client: SocketAddr) {
        let services = &self.services;
        let Some(listener) = services.snapshot().listener(&self.name).cloned() else {
            return;
        };
        let query = RouteQuery {
            protocol: Protocol::Udp,
            sni: None,
            host: None,
            path: None,
            client_cert: false,
        };
        let Some(route) = listener.routes.find(&query).cloned() else {
            services
                .metrics
                .unrouted_total
                .with_label_values(&[&self.name, Protocol::Udp.as_str()])
                .inc();
            return;
        };
        let reject = |reason: &str| {
            services
                .metrics
                .rejected_total
                .with_label_values(&[&self.name, reason])
                .inc();
            tracing::debug!(listener = %self.name, client.address = %client, reason, "datagram from a new client dropped");
        };
        let Some(global) = self.limits.global.try_acquire() else {
            reject("max_connections");
            return;
        };
        self.limits.sessions.set_max(route.sessions.max_sessions);
        let Some(place) = self.limits.sessions.try_acquire() else {
            reject("max_sessions");
            return;
        };
        let affinity = route.backend.affinity(Some(client.ip()), None);
        let (backend, lease) = match route.backend.connect_udp(affinity) {
            Ok(connected) => connected,
            Err(e) => {
                self.no_server.inc();
                tracing::debug!(listener = %self.name, client.address = %client, error = %crate::error::error_chain(&e), "no server for a new UDP session");
                return;
            }
        };
        let ctx = Arc::new(ConnCtx::new(
            services.live.next_id(),
            listener.conn_metrics.clone(),
            Peer::Ip(client),
            services.shutdown.conn_token(),
        ));
        ctx.set_protocol(Protocol::Udp, &services.metrics);
        ctx.set_route(&route.name, &route.backend.name);
        ctx.set_server(lease.address());
        let metrics = &services.metrics;
        let labels = |direction: &'static str| [&*self.name, &*route.name, direction];
        let entry = Arc::new(Entry {
            session: Session::new(backend, client),
            counters: route.counters(metrics, &self.name).clone(),
            datagrams_up: metrics
                .udp_datagrams_total
                .with_label_values(&labels("client_to_backend")),
            datagrams_down: metrics
                .udp_datagrams_total
                .with_label_values(&labels("backend_to_client")),
            dropped_up: self.backend_busy.clone(),
            dropped_down: self.client_busy.clone(),
            ctx,
            route,
            lease,
            _permits: (global, place),
        });
        services.live.insert(entry.ctx.clone());
        // A fresh socket's first send fails only on a local error; the task reports it.
        match udp_relay::forward(&entry.session, datagram, entry.up()) {
            Forwarded::Sent | Forwarded::Dropped => {}
            Forwarded::Refused => {
                entry.route.backend.udp_refused(&entry.lease);
                entry.ctx.cancel.cancel();
            }
            Forwarded::Failed(e) => {
                tracing::debug!(conn.id = entry.ctx.id, error = %e, "sending to the server failed; the session ends");
                entry.ctx.cancel.cancel();
            }
        }
        lock(&self.sessions).insert(client, entry.clone());
        let span = tracing::info_span!(
            "conn",
            conn.id = entry.ctx.id,
            network.peer.address = %client,
            listener = %self.name,
            route = %entry.route.name,
            upstream.address = %entry.lease.address(),
        );
        let ending = Ending {
            entry,
            sessions: self.sessions.clone(),
            services: self.services.clone(),
            end: None,
        };
        let socket = self.socket.clone();
        services
            .shutdown
            .spawn(run(ending, socket).instrument(span));
    }
}

/// A session's task: the server's datagrams back to the client until the session ends.
async fn run(mut ending: Ending, socket: Arc<UdpSocket>) {
    let entry = &ending.entry;
    let pool = &entry.route.backend;
    let end = udp_relay::relay(
        &entry.session,
        &socket,
        entry.down(),
        entry.route.sessions.idle_timeout,
        &entry.ctx.cancel,
        ending.services.shutdown.drain_token(),
        || pool.udp_answered(&entry.lease),
    )
    .await;
    if let UdpEnd::Refused = end
        && !entry.session.refused_on_send()
    {
        pool.udp_refused(&entry.lease);
    }
    ending.end = Some(end);
}

/// Ends a session exactly once, however its task ends (returned, or dropped with its
/// runtime): out of the session map and the live table, metrics, the access log.
struct Ending {
    entry: Arc<Entry>,
    sessions: Sessions,
    services: Arc<Services>,
    end: Option<UdpEnd>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let entry = &self.entry;
        {
            let mut sessions = lock(&self.sessions);
            // A refused session was taken out already, and its client may have a new one.
            if sessions
                .get(&entry.session.client)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                sessions.remove(&entry.session.client);
            }
        }
        self.services.live.remove(entry.ctx.id);
        entry.ctx.finish_metrics(&self.services.metrics);
        access_log(&entry.ctx, self.end.as_ref());
    }
}

/// The access log's final event for a session, with the fields every connection has.
fn access_log(ctx: &ConnCtx, end: Option<&UdpEnd>) {
    let (outcome, closed_by, error) = match end {
        Some(UdpEnd::Idle) => ("idle_timeout", "gateway", None),
        Some(UdpEnd::Refused) => ("refused", "backend", None),
        Some(UdpEnd::Cancelled) => ("cancelled", "gateway", None),
        Some(UdpEnd::Drained) => ("drain", "gateway", None),
        Some(UdpEnd::Error { side, error }) => ("reset", side.as_str(), Some(error.to_string())),
        None => ("aborted", "gateway", None),
    };
    access_event!(
        &ctx.snapshot(),
        outcome,
        closed_by,
        error = error.as_deref().unwrap_or(""),
        "connection finished"
    );
}
