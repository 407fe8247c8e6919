//! The UDP relay: the datagrams of one client session, each sent on whole as it came —
//! never merged, split or queued. A datagram that finds a send buffer full is dropped and
//! counted, as a router would drop it.
//!
//! A session holds no buffer: datagrams are received into the worker thread's one
//! ([`crate::io::buffer::with_datagram`]) once the socket is readable, and sent on before the
//! next wait. Its task sleeps until input, a close, or its idle deadline; the deadline is
//! moved only when that timer fires, so traffic costs an atomic store, not a timer reset.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Side;
use crate::relay::tcp::Flow;

/// Datagrams taken from a socket per wake-up, so one busy session does not hold up the
/// others of its worker; the socket stays readable and the next turn takes the rest.
const BATCH: usize = 64;

/// One client's session: its socket toward the server and when it was last used.
#[derive(Debug)]
pub struct Session {
    /// Connected to the session's server: the kernel keeps only that server's datagrams and
    /// reports its ICMP port unreachable as `ECONNREFUSED`.
    pub backend: UdpSocket,
    /// The client's address, where replies go (from the listener's socket).
    pub client: SocketAddr,
    born: Instant,
    /// Milliseconds after `born` of the last datagram either way.
    last: AtomicU64,
    /// The server refused a datagram the client sent (seen by [`forward`]).
    refused: AtomicBool,
    /// A datagram has come back from the server.
    answered: AtomicBool,
}

/// How a session ended.
#[derive(Debug)]
pub enum UdpEnd {
    /// No datagram either way for the idle timeout.
    Idle,
    /// The server's host answered with ICMP port unreachable.
    Refused,
    /// The operator, a reload, a shed or a hard stop closed it.
    Cancelled,
    /// The gateway began to drain.
    Drained,
    /// A socket error other than the above.
    Error { side: Side, error: io::Error },
}

/// What became of one datagram from the client.
#[derive(Debug)]
pub enum Forwarded {
    Sent,
    /// The backend socket's send buffer was full.
    Dropped,
    /// The server refused an earlier datagram: the session is over.
    Refused,
    Failed(io::Error),
}

/// Datagram counters of one direction.
#[derive(Clone, Copy)]
pub struct Counters<'a> {
    pub bytes: Flow<'a>,
    /// Datagrams relayed, for the session and the metric.
    pub total: &'a AtomicU64,
    pub datagrams: &'a IntCounter,
    /// Datagrams dropped on a full send buffer.
    pub dropped: &'a IntCounter,
}

impl Counters<'_> {
    fn relayed(&self, len: usize) {
        self.bytes.add(len);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.datagrams.inc();
    }
}

impl Session {
    pub fn new(backend: UdpSocket, client: SocketAddr) -> Self {
        Session {
            backend,
            client,
            born: Instant::now(),
            last: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            answered: AtomicBool::new(false),
        }
    }

    /// Whether [`forward`] saw the refusal (its caller counts it), rather than the relay.
    pub fn refused_on_send(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// When the session ends unless a datagram comes first.
    fn deadline(&self, idle: Duration) -> Instant {
        self.born + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle
    }
}

/// Sends one datagram from the client to the session's server, without waiting.
pub fn forward(session: &Session, datagram: &[u8], up: Counters<'_>) -> Forwarded {
    // A plain send(2), not tokio's `try_send`: that one answers WouldBlock until the event
    // loop has seen the socket writable, which a new session's socket has not yet when its
    // first datagram goes out. A datagram never waits for room anyway.
    match socket2::SockRef::from(&session.backend).send(datagram) {
        Ok(_) => {
            session.touch();
            up.relayed(datagram.len());
            Forwarded::Sent
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            up.dropped.inc();
            Forwarded::Dropped
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            session.refused.store(true, Ordering::Relaxed);
            Forwarded::Refused
        }
        Err(e) => Forwarded::Failed(e),
    }
}

/// Relays the server's datagrams to the client through `listening` (so they come from the
/// address the client sent to) until the session is idle for `idle`, the server refuses,
/// `cancel` fires (operator, reload, shed, or [`forward`] saw a refusal) or `drain` does.
/// `answered` runs once, on the server's first datagram.
pub async fn relay(
    session: &Session,
    listening: &UdpSocket,
    down: Counters<'_>,
    idle: Duration,
    cancel: &CancellationToken,
    drain: &CancellationToken,
    answered: impl Fn(),
) -> UdpEnd {
    let timer = tokio::time::sleep_until(session.deadline(idle));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                return if session.refused.load(Ordering::Relaxed) {
                    UdpEnd::Refused
                } else {
                    UdpEnd::Cancelled
                };
            }
            _ = drain.cancelled() => return UdpEnd::Drained,
            // An ICMP error sets the socket's error, which epoll reports as EPOLLERR alone,
            // not as readable: without `ERROR` the session would not hear of it.
            ready = session.backend.ready(Interest::READABLE | Interest::ERROR) => {
                let ready = match ready {
                    Ok(ready) => ready,
                    Err(error) => return UdpEnd::Error { side: Side::Backend, error },
                };
                if ready.is_error() {
                    match session.backend.take_error() {
                        Ok(Some(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            return UdpEnd::Refused;
                        }
                        Ok(Some(error)) | Err(error) => {
                            return UdpEnd::Error { side: Side::Backend, error };
                        }
                        // Taken by a send meanwhile: forget the readiness, or this would spin.
                        Ok(None) => {
                            let _ = session
                                .backend
                                .try_io(Interest::ERROR, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
                        }
                    }
                }
                if ready.is_readable()
                    && let Some(end) = receive(session, listening, down, &answered)
                {
                    return end;
                }
            }
            _ = &mut timer => {
                let next = session.deadline(idle);
                if next <= Instant::now() {
                    return UdpEnd::Idle;
                }
                timer.as_mut().reset(next);
            }
        }
    }
}

/// Up to [`BATCH`] datagrams from the server, each sent on to the client at once.
fn receive(
    session: &Session,
    listening: &UdpSocket,
    down: Counters<'_>,
    answered: &impl Fn(),
) -> Option<UdpEnd> {
    crate::io::buffer::with_datagram(|buf| {
        for _ in 0..BATCH {
            let n = match session.backend.try_recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Some(UdpEnd::Refused);
                }
                Err(error) => {
                    return Some(UdpEnd::Error {
                        side: Side::Backend,
                        error,
                    });
                }
            };
            session.touch();
            // A load first: after the first datagram this reads the session's cache line
            // instead of writing it (the receive loop's `forward` writes `last` there).
            if !session.answered.load(Ordering::Relaxed)
                && !session.answered.swap(true, Ordering::Relaxed)
            {
                answered();
            }
            match socket2::SockRef::from(listening).send_to(&buf[..n], &session.client.into()) {
                Ok(_) => down.relayed(n),
                // A full send buffer, or a client address the host cannot send to now:
                // this datagram is lost, as it would be on the way.
                Err(_) => down.dropped.inc(),
            }
        }
        None
    })
}
