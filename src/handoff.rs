//! Binary upgrade, the socket side: handing the listening sockets of a running gateway to the
//! process that replaces it, over a Unix stream socket with `SCM_RIGHTS`.
//!
//! Only listening sockets travel, never a live connection: the old process drains its own
//! connections. A descriptor passed this way names the same kernel socket in both processes,
//! with the same accept queue, so a connection the kernel queued before the handover is
//! accepted by whichever process calls `accept(2)` next, and none is refused. (Binding anew
//! with `SO_REUSEPORT` would not do: each socket of a reuseport group has its own queue, and
//! the connections queued on the old process's sockets would be reset when it closed them.)
//!
//! The protocol runs on one connection from the new process to the old one. Each message is a
//! frame: a 4-byte big-endian length, then a JSON object.
//!
//! ```text
//! old → new   {"type":"offer", listeners, admin, control}   the sockets that follow, in order
//! old → new   {"type":"fds","count":N}  + N descriptors      until every offered socket is sent
//! new → old   {"type":"ready","pid":P}                       accepting on them: the old one drains
//!        or   {"type":"abort","reason":"..."}                refused its config or failed to
//!                                                            start: the old one keeps serving
//! ```
//!
//! The offer comes first so that the new process can match what it receives with its own
//! config by listener name and configured address before it binds anything.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// The environment variable that tells a process started by an upgrade where to connect.
pub const ENV_SOCKET: &str = "SOCKGATE_HANDOFF_SOCKET";

/// Descriptors attached to one frame. Linux takes up to 253 in one message (`SCM_MAX_FD`);
/// a small batch keeps the receive buffer small and a partial delivery impossible.
const FDS_PER_FRAME: usize = 32;

/// A frame longer than this is not ours.
const MAX_FRAME: usize = 1 << 20;

/// More sockets than any config has (listeners × workers); a bigger offer is refused.
const MAX_SOCKETS: usize = 1 << 16;

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Offer(Offer),
    Fds { count: usize },
    Ready { pid: u32 },
    Abort { reason: String },
}

/// What the old process hands over. The descriptors follow in this order: each listener's
/// sockets, then the admin socket, then the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub listeners: Vec<OfferedListener>,
    /// The admin endpoint's configured address.
    pub admin: Option<SocketAddr>,
    /// The control socket's path, as given on the command line.
    pub control: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferedListener {
    pub name: String,
    /// The address in the config (port 0 stays 0), which the new config must name too: an
    /// IP address and port, or `unix:PATH` / `unix:@NAME`. (A string, as an address was
    /// serialized before Unix listeners, so the two versions read each other's offers.)
    pub configured: String,
    /// Accepting sockets (one per worker of the old process).
    pub sockets: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("handoff socket")]
    Io(#[from] std::io::Error),
    #[error("the other process closed the handoff socket")]
    Closed,
    #[error("unexpected handoff message: {0}")]
    Protocol(String),
    #[error("the new process gave up: {0}")]
    Aborted(String),
}

/// The sockets a running gateway offers, as copies of its descriptors.
#[derive(Debug, Default)]
pub struct Sockets {
    pub listeners: Vec<ListenerSockets>,
    pub admin: Option<(SocketAddr, OwnedFd)>,
    pub control: Option<(PathBuf, OwnedFd)>,
}

#[derive(Debug)]
pub struct ListenerSockets {
    pub name: String,
    pub configured: String,
    pub fds: Vec<OwnedFd>,
}

/// One end of the handoff connection: frames in and out, and the descriptors that came with
/// them.
pub struct Channel {
    stream: UnixStream,
    bytes: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

fn frame(message: &Message) -> Result<Vec<u8>, HandoffError> {
    let body = serde_json::to_vec(message)
        .map_err(|e| HandoffError::Protocol(format!("cannot encode: {e}")))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| (*n as usize) <= MAX_FRAME)
        .ok_or_else(|| HandoffError::Protocol("message too long".into()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Channel {
            stream,
            bytes: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// Sends one frame, with `fds` attached to its first byte.
    pub async fn send(
        &mut self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), HandoffError> {
        let frame = frame(message)?;
        let mut sent = 0;
        if !fds.is_empty() {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(HandoffError::Protocol(
                    "too many descriptors for one frame".into(),
                ));
            }
            let stream = &self.stream;
            sent = loop {
                stream.writable().await?;
                let result = stream.try_io(Interest::WRITABLE, || {
                    rustix::net::sendmsg(
                        stream,
                        &[IoSlice::new(&frame)],
                        &mut control,
                        SendFlags::NOSIGNAL,
                    )
                    .map_err(std::io::Error::from)
                });
                match result {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.into()),
                }
            };
        }
        // The descriptors went with the first byte; the rest of the frame is plain bytes.
        self.stream.write_all(&frame[sent..]).await?;
        Ok(())
    }

    /// The next frame. Descriptors that came with it (or with the start of a later frame)
    /// wait in order for [`Channel::take_fds`].
    pub async fn recv(&mut self) -> Result<Message, HandoffError> {
        loop {
            if let Some(head) = self.bytes.get(..4) {
                let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                if len > MAX_FRAME {
                    return Err(HandoffError::Protocol(format!("a frame of {len} bytes")));
                }
                if let Some(body) = self.bytes.get(4..4 + len) {
                    let message = serde_json::from_slice(body)
                        .map_err(|e| HandoffError::Protocol(e.to_string()))?;
                    self.bytes.drain(..4 + len);
                    return Ok(message);
                }
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), HandoffError> {
        let mut chunk = [0u8; 4096];
        // Linux hands over one sender's batch of descriptors per `recvmsg(2)` at most (it
        // stops reading at the next message that carries some), so one batch's room is
        // enough.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_FRAME))];
        let stream = &self.stream;
        loop {
            stream.readable().await?;
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let result = stream.try_io(Interest::READABLE, || {
                rustix::net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut chunk)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)
            });
            let received = match result {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    self.fds.extend(fds);
                }
            }
            if received.flags.contains(ReturnFlags::CTRUNC) {
                return Err(HandoffError::Protocol(
                    "descriptors were cut off (more than one batch in a message)".into(),
                ));
            }
            if received.bytes == 0 {
                return Err(HandoffError::Closed);
            }
            self.bytes.extend_from_slice(&chunk[..received.bytes]);
            return Ok(());
        }
    }

    /// The first `n` descriptors received and not taken yet.
    pub fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>, HandoffError> {
        if self.fds.len() < n {
            return Err(HandoffError::Protocol(format!(
                "{n} descriptors announced, {} received",
                self.fds.len()
            )));
        }
        Ok(self.fds.drain(..n).collect())
    }

    /// Old side: sends the offer, then the descriptors in batches.
    pub async fn offer(&mut self, sockets: &Sockets) -> Result<(), HandoffError> {
        let offer = Offer {
            listeners: sockets
                .listeners
                .iter()
                .map(|l| OfferedListener {
                    name: l.name.clone(),
                    configured: l.configured.clone(),
                    sockets: l.fds.len(),
                })
                .collect(),
            admin: sockets.admin.as_ref().map(|(addr, _)| *addr),
            control: sockets.control.as_ref().map(|(path, _)| path.clone()),
        };
        self.send(&Message::Offer(offer), &[]).await?;
        let all: Vec<BorrowedFd<'_>> = sockets
            .listeners
            .iter()
            .flat_map(|l| l.fds.iter().map(|fd| fd.as_fd()))
            .chain(sockets.admin.iter().map(|(_, fd)| fd.as_fd()))
            .chain(sockets.control.iter().map(|(_, fd)| fd.as_fd()))
            .collect();
        for batch in all.chunks(FDS_PER_FRAME) {
            self.send(&Message::Fds { count: batch.len() }, batch)
                .await?;
        }
        Ok(())
    }

    /// New side: reads the offer and every descriptor it announces.
    pub async fn receive(&mut self) -> Result<Inherited, HandoffError> {
        let offer = match self.recv().await? {
            Message::Offer(offer) => offer,
            other => {
                return Err(HandoffError::Protocol(format!(
                    "expected an offer, got {other:?}"
                )));
            }
        };
        let expected = offer
            .listeners
            .iter()
            .try_fold(0usize, |n, l| n.checked_add(l.sockets))
            .and_then(|n| n.checked_add(usize::from(offer.admin.is_some())))
            .and_then(|n| n.checked_add(usize::from(offer.control.is_some())))
            .filter(|n| *n <= MAX_SOCKETS)
            .ok_or_else(|| HandoffError::Protocol("an offer of too many sockets".into()))?;
        let mut fds = Vec::with_capacity(expected);
        while fds.len() < expected {
            match self.recv().await? {
                Message::Fds { count } if count > 0 && count <= expected - fds.len() => {
                    fds.extend(self.take_fds(count)?);
                }
                other => {
                    return Err(HandoffError::Protocol(format!(
                        "expected descriptors, got {other:?}"
                    )));
                }
            }
        }
        Inherited::from_offer(offer, fds)
    }
}

/// Sockets received from the process being replaced, waiting to be claimed by the listeners
/// of the new config. What is not claimed is closed.
#[derive(Debug, Default)]
pub struct Inherited {
    listeners: Vec<(String, String, Vec<OwnedFd>)>,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
    control: Option<(PathBuf, std::os::unix::net::UnixListener)>,
}

impl Inherited {
    fn from_offer(offer: Offer, fds: Vec<OwnedFd>) -> Result<Self, HandoffError> {
        let mut fds = fds.into_iter();
        let mut out = Inherited::default();
        for l in offer.listeners {
            let sockets = fds
                .by_ref()
                .take(l.sockets)
                .map(|fd| listening_socket(fd, &l.name))
                .collect::<Result<Vec<_>, _>>()?;
            if sockets.is_empty() {
                return Err(HandoffError::Protocol(format!(
                    "listener `{}` came without a socket",
                    l.name
                )));
            }
            let datagram = |fd: &OwnedFd| {
                socket2::SockRef::from(fd)
                    .r#type()
                    .is_ok_and(|t| t == socket2::Type::DGRAM)
            };
            if sockets.iter().any(datagram) && !sockets.iter().all(datagram) {
                return Err(HandoffError::Protocol(format!(
                    "listener `{}` came with stream and datagram sockets",
                    l.name
                )));
            }
            out.listeners.push((l.name, l.configured, sockets));
        }
        if let Some(addr) = offer.admin {
            let fd = fds
                .next()
                .ok_or_else(|| HandoffError::Protocol("no admin socket".into()))?;
            out.admin = Some((addr, tcp_listener(fd, "admin")?));
        }
        if let Some(path) = offer.control {
            let fd = fds
                .next()
                .ok_or_else(|| HandoffError::Protocol("no control socket".into()))?;
            out.control = Some((path, unix_listener(fd)?));
        }
        Ok(out)
    }

    /// The sockets of listener `name` if the old process had it on the same configured
    /// address (as the config writes it: `127.0.0.1:8443`, `unix:/run/chat.sock`).
    pub fn take_listener(&mut self, name: &str, configured: &str) -> Option<Vec<OwnedFd>> {
        let i = self
            .listeners
            .iter()
            .position(|(n, addr, _)| n == name && addr == configured)?;
        Some(self.listeners.swap_remove(i).2)
    }

    pub fn take_admin(&mut self, configured: SocketAddr) -> Option<std::net::TcpListener> {
        match self.admin.take() {
            Some((addr, socket)) if addr == configured => Some(socket),
            other => {
                self.admin = other;
                None
            }
        }
    }

    pub fn take_control(
        &mut self,
        path: &std::path::Path,
    ) -> Option<std::os::unix::net::UnixListener> {
        match self.control.take() {
            Some((p, socket)) if p == path => Some(socket),
            other => {
                self.control = other;
                None
            }
        }
    }

    /// Closes what no listener of the new config claimed and says what it was.
    pub fn close_rest(self) -> Vec<String> {
        let mut closed: Vec<String> = self
            .listeners
            .into_iter()
            .map(|(name, addr, _)| format!("listener `{name}` on {addr}"))
            .collect();
        closed.extend(self.admin.map(|(addr, _)| format!("admin on {addr}")));
        closed.extend(
            self.control
                .map(|(path, _)| format!("control socket {}", path.display())),
        );
        closed
    }
}

/// A received descriptor for a listener: a listening stream socket (TCP or Unix) or a bound
/// UDP socket (which of them the listener's address and protocol want is checked when it is
/// adopted).
fn listening_socket(fd: OwnedFd, what: &str) -> Result<OwnedFd, HandoffError> {
    let socket = socket2::SockRef::from(&fd);
    let usable = match socket.r#type()? {
        socket2::Type::STREAM => socket.is_listener()?,
        socket2::Type::DGRAM => socket.local_addr()?.as_socket().is_some(),
        _ => false,
    };
    if !usable {
        return Err(HandoffError::Protocol(format!(
            "the socket for {what} is neither a listening stream socket nor a bound UDP socket"
        )));
    }
    socket.set_nonblocking(true)?;
    Ok(fd)
}

/// A received descriptor as a listening TCP socket, checked to be one.
fn tcp_listener(fd: OwnedFd, what: &str) -> Result<std::net::TcpListener, HandoffError> {
    let socket = socket2::SockRef::from(&fd);
    let local = socket.local_addr()?;
    if socket.r#type()? != socket2::Type::STREAM
        || !socket.is_listener()?
        || local.as_socket().is_none()
    {
        return Err(HandoffError::Protocol(format!(
            "the socket for {what} is not a listening TCP socket"
        )));
    }
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn unix_listener(fd: OwnedFd) -> Result<std::os::unix::net::UnixListener, HandoffError> {
    let socket = socket2::SockRef::from(&fd);
    if socket.r#type()? != socket2::Type::STREAM
        || !socket.is_listener()?
        || !socket.local_addr()?.is_unix()
    {
        return Err(HandoffError::Protocol(
            "the control socket is not a listening Unix socket".into(),
        ));
    }
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Copies of a listener's sockets, one per accept loop, kept for as long as that loop runs,
/// so that an upgrade can send them. A loop that ends (drain, or a reload that removed its
/// listener) drops its copy, or the kernel would keep the socket listening and queueing
/// connections that nobody accepts.
#[derive(Debug, Clone, Default)]
pub struct Copies(Arc<Mutex<Vec<Slot>>>);

#[derive(Debug)]
enum Slot {
    Open(OwnedFd),
    /// No copy could be made (out of descriptors): an upgrade would miss this socket.
    Failed(String),
    Closed,
}

/// Holds one copy in [`Copies`] until dropped.
#[derive(Debug)]
pub struct CopyGuard {
    copies: Copies,
    index: usize,
}

impl Copies {
    /// Keeps a copy of `socket` until the guard is dropped.
    pub fn keep(&self, socket: &impl AsFd) -> CopyGuard {
        let slot = match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => Slot::Open(fd),
            Err(e) => Slot::Failed(e.to_string()),
        };
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slots.push(slot);
        CopyGuard {
            copies: self.clone(),
            index: slots.len() - 1,
        }
    }

    /// Fresh copies of the sockets still open, to send; ours stay with us.
    pub fn dup_all(&self) -> std::io::Result<Vec<OwnedFd>> {
        let slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for slot in slots.iter() {
            match slot {
                Slot::Open(fd) => out.push(fd.try_clone()?),
                Slot::Failed(e) => {
                    return Err(std::io::Error::other(format!(
                        "a listening socket could not be copied when it was bound ({e})"
                    )));
                }
                Slot::Closed => {}
            }
        }
        Ok(out)
    }
}

impl Drop for CopyGuard {
    fn drop(&mut self) {
        let mut slots = self.copies.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(self.index) {
            *slot = Slot::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        (Channel::new(a), Channel::new(b))
    }

    fn tcp_listener_on_loopback() -> std::net::TcpListener {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    fn accept_blocking(l: &std::net::TcpListener) -> std::net::TcpStream {
        l.set_nonblocking(false).unwrap();
        let (s, _) = l.accept().unwrap();
        l.set_nonblocking(true).unwrap();
        s
    }

    #[tokio::test]
    async fn listeners_sent_over_the_channel_accept_connections_queued_before_and_after() {
        // Three listeners of which one has 40 sockets (more than one batch), an admin
        // socket and a control socket.
        let edge: Vec<_> = (0..40).map(|_| tcp_listener_on_loopback()).collect();
        let other = tcp_listener_on_loopback();
        let admin = tcp_listener_on_loopback();
        let dir = tempfile::tempdir().unwrap();
        let control_path = dir.path().join("control.sock");
        let control = std::os::unix::net::UnixListener::bind(&control_path).unwrap();

        // A connection queued in the kernel before the handover, not accepted yet.
        let edge0 = edge[0].local_addr().unwrap();
        let mut queued = std::net::TcpStream::connect(edge0).unwrap();
        queued.write_all(b"queued").unwrap();

        let sockets = Sockets {
            listeners: vec![
                ListenerSockets {
                    name: "edge".into(),
                    configured: "127.0.0.1:0".into(),
                    fds: edge
                        .iter()
                        .map(|l| l.as_fd().try_clone_to_owned().unwrap())
                        .collect(),
                },
                ListenerSockets {
                    name: "other".into(),
                    configured: other.local_addr().unwrap().to_string(),
                    fds: vec![other.as_fd().try_clone_to_owned().unwrap()],
                },
            ],
            admin: Some((
                "127.0.0.1:9901".parse().unwrap(),
                admin.as_fd().try_clone_to_owned().unwrap(),
            )),
            control: Some((
                control_path.clone(),
                control.as_fd().try_clone_to_owned().unwrap(),
            )),
        };
        let (mut old, mut new) = pair();
        let (sent, received) = tokio::join!(old.offer(&sockets), new.receive());
        sent.unwrap();
        let mut inherited = received.unwrap();
        drop(sockets);
        // The old side's own sockets close; the received copies keep the sockets alive.
        drop(edge);
        drop(other);
        drop(admin);
        drop(control);

        assert!(inherited.take_listener("edge", "127.0.0.1:1").is_none());
        let edge = inherited.take_listener("edge", "127.0.0.1:0").unwrap();
        assert_eq!(edge.len(), 40);
        let edge: Vec<std::net::TcpListener> = edge.into_iter().map(Into::into).collect();
        assert_eq!(edge[0].local_addr().unwrap(), edge0);
        let mut accepted = accept_blocking(&edge[0]);
        let mut got = [0u8; 6];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"queued");
        // A connection made after the handover.
        let mut after = std::net::TcpStream::connect(edge0).unwrap();
        let mut accepted = accept_blocking(&edge[0]);
        accepted.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        after.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        drop(queued);

        assert!(
            inherited
                .take_admin("127.0.0.1:9902".parse().unwrap())
                .is_none()
        );
        let admin = inherited
            .take_admin("127.0.0.1:9901".parse().unwrap())
            .unwrap();
        let _c = std::net::TcpStream::connect(admin.local_addr().unwrap()).unwrap();
        accept_blocking(&admin);

        let control = inherited.take_control(&control_path).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&control_path).unwrap();
        control.set_nonblocking(false).unwrap();
        control.accept().unwrap();

        let rest = inherited.close_rest();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert!(rest[0].starts_with("listener `other`"), "{rest:?}");
    }

    #[tokio::test]
    async fn ready_and_abort_travel_back() {
        let (mut old, mut new) = pair();
        new.send(&Message::Ready { pid: 42 }, &[]).await.unwrap();
        new.send(
            &Message::Abort {
                reason: "sockgate.toml:3:1: unknown key".into(),
            },
            &[],
        )
        .await
        .unwrap();
        assert_eq!(old.recv().await.unwrap(), Message::Ready { pid: 42 });
        assert_eq!(
            old.recv().await.unwrap(),
            Message::Abort {
                reason: "sockgate.toml:3:1: unknown key".into()
            }
        );
        drop(new);
        assert!(matches!(old.recv().await, Err(HandoffError::Closed)));
    }

    #[tokio::test]
    async fn bad_frames_and_short_descriptor_batches_are_errors_not_panics() {
        // A frame announcing more than the limit.
        let (a, b) = UnixStream::pair().unwrap();
        let mut reader = Channel::new(b);
        let mut a = a;
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        assert!(matches!(
            reader.recv().await,
            Err(HandoffError::Protocol(_))
        ));

        // Not JSON.
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut reader = Channel::new(b);
        a.write_all(&[0, 0, 0, 3, b'x', b'y', b'z']).await.unwrap();
        assert!(matches!(
            reader.recv().await,
            Err(HandoffError::Protocol(_))
        ));

        // An offer whose descriptors never come: the sender announces two, sends one.
        let (mut old, mut new) = pair();
        let l = tcp_listener_on_loopback();
        let offer = Offer {
            listeners: vec![OfferedListener {
                name: "edge".into(),
                configured: "127.0.0.1:0".into(),
                sockets: 2,
            }],
            admin: None,
            control: None,
        };
        old.send(&Message::Offer(offer), &[]).await.unwrap();
        old.send(&Message::Fds { count: 2 }, &[l.as_fd()])
            .await
            .unwrap();
        assert!(matches!(
            new.receive().await,
            Err(HandoffError::Protocol(_))
        ));

        // A TCP socket that is not listening is refused.
        let l = tcp_listener_on_loopback();
        let not_listening = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let e = listener_refused(&[l.as_fd(), not_listening.as_fd()]).await;
        assert!(
            e.to_string()
                .contains("neither a listening stream socket nor a bound UDP socket"),
            "{e}"
        );

        // A udp listener's sockets are all datagram sockets: one listener does not mix them.
        let l = tcp_listener_on_loopback();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = listener_refused(&[l.as_fd(), udp.as_fd()]).await;
        assert!(
            e.to_string()
                .contains("came with stream and datagram sockets"),
            "{e}"
        );
    }

    /// Offers one listener with `fds` and returns the error the receiving side answers.
    async fn listener_refused(fds: &[BorrowedFd<'_>]) -> HandoffError {
        let (mut old, mut new) = pair();
        let sockets = Sockets {
            listeners: vec![ListenerSockets {
                name: "edge".into(),
                configured: "127.0.0.1:0".into(),
                fds: fds
                    .iter()
                    .map(|fd| fd.try_clone_to_owned().unwrap())
                    .collect(),
            }],
            ..Sockets::default()
        };
        let (sent, received) = tokio::join!(old.offer(&sockets), new.receive());
        sent.unwrap();
        received.unwrap_err()
    }

    #[test]
    fn copies_follow_their_guards() {
        let l = tcp_listener_on_loopback();
        let copies = Copies::default();
        let a = copies.keep(&l);
        let b = copies.keep(&l);
        assert_eq!(copies.dup_all().unwrap().len(), 2);
        drop(a);
        assert_eq!(copies.dup_all().unwrap().len(), 1);
        drop(b);
        assert!(copies.dup_all().unwrap().is_empty());
    }
}
