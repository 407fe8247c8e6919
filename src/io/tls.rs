//! TLS streams: rustls' unbuffered connection over a `Socket` (TCP or Unix; or any byte
//! stream: the unit tests run it over memory), with its record buffers lent from the relay
//! buffer pool. The same code drives both ends: the server side toward clients
//! ([`accept_after`]) and the client side toward backends whose servers speak TLS
//! ([`connect`]); rustls' unbuffered server and client connections differ only in how they
//! are made and in early data (see [`Endpoint`]).
//!
//! rustls' buffered connections keep a 4 KiB receive buffer for the connection's whole
//! life and reads the socket 4 KiB at a time. Here received TLS bytes go into a buffer taken
//! from a per-thread pool ([`crate::io::buffer`]) for the read and given back as soon as
//! no partial record is left in it; encrypted bytes go into another, given back once written.
//! An idle connection holds neither; a bulk upload is read two full records per syscall, and
//! a relay's 32 KiB read goes out as two records in one write.
//!
//! Behaviour matches `tokio-rustls`: a peer's `close_notify` is EOF, a TCP EOF without one is
//! an `UnexpectedEof` error, a bad record is `InvalidData` after the alert is sent, and
//! shutting down sends `close_notify` before the FIN.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, ReadEarlyData, UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::Socket;
use crate::io::buffer::{self, Sealed};

type Slot = buffer::Slot<Sealed>;

/// Plaintext encrypted per write: one relay read's worth, which fills a sealed buffer.
const WRITE_CHUNK: usize = buffer::SIZE;

thread_local! {
    /// The server name the certificate resolver saw last on this thread (see [`note_sni`]).
    static HELLO_SNI: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Called by the certificate resolver with the ClientHello's server name. rustls' unbuffered
/// connection does not expose the name, but the resolver runs synchronously inside the
/// `process_tls_records` call that reads the ClientHello, so the stream driving that call
/// picks it up from this thread right after.
pub(crate) fn note_sni(name: Option<&str>) {
    HELLO_SNI.with(|sni| *sni.borrow_mut() = name.map(str::to_ascii_lowercase));
}

/// One end of a TLS connection as rustls' unbuffered API drives it: a server toward
/// clients, or a client toward a backend's servers. Sealed: only those two.
pub trait Endpoint:
    std::ops::DerefMut<Target = rustls::unbuffered::UnbufferedConnectionCommon<Self::Data>>
    + private::Sealed
{
    type Data;

    /// rustls' `process_tls_records`, which each side defines on its own.
    fn process<'c, 'i>(&'c mut self, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;

    /// Takes the early data rustls offers and drops it; returns the bytes to discard.
    fn skip_early_data(early: &mut ReadEarlyData<'_, '_, Self::Data>) -> io::Result<usize>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::UnbufferedServerConnection {}
    impl Sealed for super::UnbufferedClientConnection {}
}

impl Endpoint for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(&'c mut self, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(input)
    }

    // Early data is not offered (`max_early_data_size` is 0); any that comes is dropped.
    fn skip_early_data(early: &mut ReadEarlyData<'_, '_, Self::Data>) -> io::Result<usize> {
        let mut discard = 0;
        while let Some(record) = early.next_record() {
            discard += record.map_err(invalid_data)?.discard;
        }
        Ok(discard)
    }
}

impl Endpoint for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(&'c mut self, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(input)
    }

    // A client is never handed early data: it is what a server receives.
    fn skip_early_data(_: &mut ReadEarlyData<'_, '_, Self::Data>) -> io::Result<usize> {
        Err(io::Error::other("early data offered to a TLS client"))
    }
}

/// A TLS stream whose handshake has completed: the server side by default, the client side
/// toward backends as [`BackendTls`].
pub struct TlsStream<IO = Socket, C: Endpoint = UnbufferedServerConnection> {
    io: IO,
    conn: C,
    /// Received TLS bytes not yet processed: `incoming[in_start..in_end]`.
    incoming: Slot,
    in_start: usize,
    in_end: usize,
    /// The start of a record whose rest has not arrived, kept apart while the socket has
    /// nothing more, so that a peer that sends a few bytes and stops pins those bytes, not a
    /// whole receive buffer. Empty otherwise; it goes back to the front of `incoming` at the
    /// next read.
    tail: Box<[u8]>,
    /// Decrypted bytes a read had no room for: `plain[plain_pos..]`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Encrypted bytes not yet written: `outgoing[out_pos..out_end]`, then all of `spill`
    /// (records rustls queued while `outgoing` had no room for them; rare).
    outgoing: Slot,
    out_pos: usize,
    out_end: usize,
    spill: Vec<u8>,
    sni: Option<String>,
    /// The peer sent `close_notify`.
    peer_closed: bool,
    /// The socket read EOF.
    eof: bool,
    /// `close_notify` is queued.
    close_sent: bool,
    /// rustls reported an error; the kind every later call returns.
    failed: Option<io::ErrorKind>,
}

/// Where decrypted application data goes while [`TlsStream::drive`] runs.
enum Sink<'a, 'b> {
    /// Into the caller's buffer; what does not fit is kept in `plain`.
    Into(&'a mut ReadBuf<'b>),
    /// All into `plain`: the caller is writing and must get past received data.
    Spill,
    /// Nowhere: stop and leave it with rustls (the handshake is done).
    Stop,
}

/// What to send once rustls is ready for application data.
enum Act<'a> {
    None,
    /// Encrypt a prefix of the bytes and say how many were taken.
    Encrypt(&'a [u8], &'a mut usize),
    Close,
}

/// Where [`TlsStream::drive`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// Ready for application data; nothing more to do until the peer sends something.
    Idle,
    /// The handshake needs more bytes from the peer.
    Blocked,
    /// Decrypted data is waiting that the sink did not take.
    Data,
    /// Both sides have sent `close_notify`.
    Closed,
}

/// Completes a TLS handshake on an accepted connection.
#[cfg(test)]
pub async fn accept<IO>(io: IO, config: Arc<ServerConfig>) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    accept_after(io, &[], config).await
}

/// Completes a TLS handshake whose first bytes, `received`, were already read from `io`
/// (a ClientHello looked at for its server name). They go into the receive buffer the
/// handshake takes anyway, so the stream's type stays the same and reads nothing twice.
pub async fn accept_after<IO>(
    io: IO,
    received: &[u8],
    config: Arc<ServerConfig>,
) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if received.len() > buffer::SEALED_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TLS message larger than the receive buffer",
        ));
    }
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream::new(io, conn);
    if !received.is_empty() {
        stream.incoming.get()[..received.len()].copy_from_slice(received);
        stream.in_end = received.len();
    }
    stream.handshake().await?;
    Ok(stream)
}

/// The client side of TLS toward a backend server.
pub type BackendTls<IO = Socket> = TlsStream<IO, UnbufferedClientConnection>;

/// Completes a TLS handshake as a client on a connection to a server, asking for `name`
/// (sent as SNI when it is a DNS name, and what the certificate is checked against) and
/// offering the ALPN protocols in `config`.
pub async fn connect<IO>(
    io: IO,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<BackendTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut stream = TlsStream::new(io, conn);
    stream.handshake().await?;
    Ok(stream)
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Endpoint> TlsStream<IO, C> {
    fn new(io: IO, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            incoming: Slot::default(),
            in_start: 0,
            in_end: 0,
            tail: Box::default(),
            plain: Vec::new(),
            plain_pos: 0,
            outgoing: Slot::default(),
            out_pos: 0,
            out_end: 0,
            spill: Vec::new(),
            sni: None,
            peer_closed: false,
            eof: false,
            close_sent: false,
            failed: None,
        }
    }

    async fn handshake(&mut self) -> io::Result<()> {
        poll_fn(|cx| {
            let polled = self.poll_handshake(cx);
            self.release_idle_input();
            polled
        })
        .await
    }
}

impl<IO, C: Endpoint> TlsStream<IO, C> {
    /// The server name the client asked for (lowercase), taken out of the stream.
    pub fn take_sni(&mut self) -> Option<String> {
        self.sni.take()
    }

    /// The application protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The client's certificate chain, leaf first, when it presented one: the listener's
    /// verifier has accepted it by the time the handshake completes (a resumed session
    /// carries the chain verified in the full handshake that issued it).
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.conn
            .peer_certificates()
            .filter(|chain| !chain.is_empty())
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Endpoint> TlsStream<IO, C> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            HELLO_SNI.with(|sni| sni.borrow_mut().take());
            let driven = self.drive(Sink::Stop, Act::None);
            if let Some(sni) = HELLO_SNI.with(|sni| sni.borrow_mut().take()) {
                self.sni = Some(sni);
            }
            let driven = match driven {
                Ok(driven) => driven,
                Err(e) => return Poll::Ready(Err(self.failed(cx, e))),
            };
            ready!(self.poll_write_out(cx))?;
            if !self.conn.is_handshaking() && matches!(driven, Drive::Idle | Drive::Data) {
                return Poll::Ready(Ok(()));
            }
            if self.eof || self.peer_closed || driven == Drive::Closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
            ready!(self.poll_read_in(cx))?;
        }
    }

    /// Runs rustls over the received bytes until it needs input or the caller's attention:
    /// records rustls wants sent are queued for [`Self::poll_write_out`], decrypted data goes
    /// to `sink`, and `act` is done once application data may be sent.
    fn drive(&mut self, mut sink: Sink<'_, '_>, mut act: Act<'_>) -> io::Result<Drive> {
        // The unbuffered connection does not remember its error where input is concerned:
        // called again, it deframes the same bad record again and queues a second fatal
        // alert (a debug assertion in rustls), so a failed stream stays failed here.
        if let Some(kind) = self.failed {
            return Err(io::Error::new(kind, "TLS connection failed earlier"));
        }
        // Bytes put into the sink by this call.
        let mut put = 0;
        loop {
            let input: &mut [u8] = if self.in_start == self.in_end {
                &mut []
            } else {
                &mut self.incoming.get()[self.in_start..self.in_end]
            };
            let UnbufferedStatus { mut discard, state } = self.conn.process(input);
            let state = state.map_err(invalid_data)?;
            let out = Out {
                slot: &mut self.outgoing,
                end: &mut self.out_end,
                spill: &mut self.spill,
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut data) => match &mut sink {
                    Sink::Stop => Some(Drive::Data),
                    Sink::Spill => {
                        while let Some(record) = data.next_record() {
                            let record = record.map_err(invalid_data)?;
                            discard += record.discard;
                            self.plain.extend_from_slice(record.payload);
                        }
                        None
                    }
                    Sink::Into(dst) => {
                        let mut full = false;
                        while let Some(len) = data.peek_len() {
                            if put > 0 && len.get() > dst.remaining() {
                                full = true;
                                break;
                            }
                            let Some(record) = data.next_record() else {
                                break;
                            };
                            let record = record.map_err(invalid_data)?;
                            discard += record.discard;
                            let n = record.payload.len().min(dst.remaining());
                            dst.put_slice(&record.payload[..n]);
                            put += n;
                            if n < record.payload.len() {
                                self.plain.extend_from_slice(&record.payload[n..]);
                                full = true;
                                break;
                            }
                        }
                        full.then_some(Drive::Data)
                    }
                },
                ConnectionState::EncodeTlsData(mut record) => {
                    out.queue(|buf| record.encode(buf), encode_short)?;
                    None
                }
                // Queued records count as sent: `poll_write_out` owes them to the peer.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Drive::Blocked),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Drive::Closed)
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    discard += C::skip_early_data(&mut early)?;
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut act, Act::None) {
                        Act::None => {}
                        Act::Encrypt(data, taken) => {
                            // Called with nothing queued: the chunk fits one pool buffer.
                            let mut len = data.len().min(WRITE_CHUNK);
                            let buf = &mut out.slot.get()[*out.end..];
                            loop {
                                match traffic.encrypt(&data[..len], buf) {
                                    Ok(n) => {
                                        *out.end += n;
                                        *taken = len;
                                        break;
                                    }
                                    Err(EncryptError::InsufficientSize(_)) if len > 1 => {
                                        len /= 2;
                                    }
                                    Err(e) => return Err(io::Error::other(e)),
                                }
                            }
                        }
                        Act::Close => out.queue(
                            |buf| traffic.queue_close_notify(buf),
                            |e| match e {
                                EncryptError::InsufficientSize(s) => Some(s.required_size),
                                _ => None,
                            },
                        )?,
                    }
                    Some(Drive::Idle)
                }
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected TLS connection state {other:?}"
                    )));
                }
            };
            self.in_start += discard;
            if self.in_start == self.in_end {
                self.in_start = 0;
                self.in_end = 0;
            }
            if let Some(stop) = stop {
                return Ok(stop);
            }
        }
    }

    /// After rustls reported an error: queue the alert it has for the peer, try once to
    /// send it, and hand back the error.
    fn failed(&mut self, cx: &mut Context<'_>, error: io::Error) -> io::Error {
        self.failed.get_or_insert(error.kind());
        // While rustls has records to send, `process_tls_records` hands them out before it
        // looks at input again (which would only repeat the error).
        while self.conn.wants_write() {
            let status = self.conn.process(&mut []);
            let out = Out {
                slot: &mut self.outgoing,
                end: &mut self.out_end,
                spill: &mut self.spill,
            };
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    if out.queue(|buf| record.encode(buf), encode_short).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::ReadTraffic(mut data)) => while data.next_record().is_some() {},
                _ => break,
            }
        }
        let _ = self.poll_write_out(cx);
        error
    }

    /// Reads from the socket after what is already received; sets `eof` at EOF.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.incoming.get()[..tail.len()].copy_from_slice(&tail);
            self.in_start = 0;
            self.in_end = tail.len();
        } else if self.in_start > 0 {
            // A partial record goes to the front.
            let (start, end) = (self.in_start, self.in_end);
            self.incoming.get().copy_within(start..end, 0);
            self.in_end -= start;
            self.in_start = 0;
        }
        if self.in_end == buffer::SEALED_SIZE {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message larger than the receive buffer",
            )));
        }
        let mut rb = ReadBuf::new(&mut self.incoming.get()[self.in_end..]);
        if Pin::new(&mut self.io).poll_read(cx, &mut rb)?.is_pending() {
            self.set_aside_partial_record();
            return Poll::Pending;
        }
        match rb.filled().len() {
            0 => self.eof = true,
            n => self.in_end += n,
        }
        Poll::Ready(Ok(()))
    }

    /// Writes out everything queued, then gives the buffers back.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_end {
            let queued = &self.outgoing.get()[self.out_pos..self.out_end];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, queued))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out_pos = 0;
        self.out_end = 0;
        self.outgoing.release();
        while !self.spill.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.spill))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.spill.drain(..n);
        }
        if self.spill.capacity() > 0 {
            self.spill = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    fn has_queued(&self) -> bool {
        self.out_end > 0 || !self.spill.is_empty()
    }

    /// While waiting for the socket: when the received bytes are only the start of one record
    /// (rustls has taken every whole one), moves them to `tail` and gives the receive buffer
    /// back. Only after the handshake, and only a lone partial record, which rustls has not
    /// looked into: bytes it has seen but not discarded (a handshake message spread over
    /// records) must stay where it saw them.
    fn set_aside_partial_record(&mut self) {
        let held = self.in_end - self.in_start;
        if held == 0 || self.conn.is_handshaking() {
            return;
        }
        let bytes = &self.incoming.get()[self.in_start..self.in_end];
        let lone_partial = match bytes {
            [_, _, _, hi, lo, ..] => held < 5 + usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => true,
        };
        if lone_partial {
            self.tail = bytes.into();
            self.in_start = 0;
            self.in_end = 0;
            self.incoming.release();
        }
    }

    /// Gives the receive buffer back when it holds no partial record.
    fn release_idle_input(&mut self) {
        if self.in_start == self.in_end {
            self.incoming.release();
        }
    }

    fn read(&mut self, cx: &mut Context<'_>, dst: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if dst.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.plain_pos < self.plain.len() {
            let n = dst.remaining().min(self.plain.len() - self.plain_pos);
            dst.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
            self.plain_pos += n;
            if self.plain_pos == self.plain.len() {
                self.plain = Vec::new();
                self.plain_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = dst.filled().len();
        loop {
            if self.peer_closed {
                return Poll::Ready(Ok(()));
            }
            match self.drive(Sink::Into(dst), Act::None) {
                Err(e) => return Poll::Ready(Err(self.failed(cx, e))),
                Ok(Drive::Data | Drive::Closed) => return Poll::Ready(Ok(())),
                Ok(Drive::Idle | Drive::Blocked) => {}
            }
            if dst.filled().len() > before || self.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // What rustls queued (tickets, a key update) goes out before waiting for input.
            if self.has_queued()
                && let Poll::Ready(Err(e)) = self.poll_write_out(cx)
            {
                return Poll::Ready(Err(e));
            }
            if self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            ready!(self.poll_read_in(cx))?;
        }
    }

    fn write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // One chunk in flight at most: a peer that does not read holds the writer back.
        ready!(self.poll_write_out(cx))?;
        let mut taken = 0;
        if let Err(e) = self.drive(Sink::Spill, Act::Encrypt(data, &mut taken)) {
            return Poll::Ready(Err(self.failed(cx, e)));
        }
        if taken == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS session cannot send application data",
            )));
        }
        // Sent now as far as the socket takes it; the rest goes with the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }
}

/// The outgoing queue, borrowed apart from the connection.
struct Out<'a> {
    slot: &'a mut Slot,
    end: &'a mut usize,
    spill: &'a mut Vec<u8>,
}

impl Out<'_> {
    /// Queues one record from `encode`: into the pool buffer when it fits there and nothing
    /// is spilled, else at the end of `spill`. `required` reads the size a too-short buffer
    /// needed out of `encode`'s error.
    fn queue<E: std::error::Error + Send + Sync + 'static>(
        self,
        mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
        required: impl Fn(&E) -> Option<usize>,
    ) -> io::Result<()> {
        if self.spill.is_empty() {
            match encode(&mut self.slot.get()[*self.end..]) {
                Ok(n) => {
                    *self.end += n;
                    return Ok(());
                }
                Err(e) if required(&e).is_none() => return Err(io::Error::other(e)),
                Err(_) => {}
            }
        }
        let size = match encode(&mut []) {
            Ok(_) => return Ok(()),
            Err(e) => required(&e).ok_or_else(|| io::Error::other(e))?,
        };
        let at = self.spill.len();
        self.spill.resize(at + size, 0);
        let n = encode(&mut self.spill[at..]).map_err(io::Error::other)?;
        self.spill.truncate(at + n);
        Ok(())
    }
}

/// The buffer size an `encode` that did not fit needed.
fn encode_short(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(short) => Some(short.required_size),
        _ => None,
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Endpoint + Unpin> AsyncRead for TlsStream<IO, C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = this.read(cx, buf);
        this.release_idle_input();
        polled
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Endpoint + Unpin> AsyncWrite for TlsStream<IO, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // After a fatal alert no other record may follow (RFC 8446 §6.2): only the FIN.
        if !this.close_sent && this.failed.is_none() {
            this.close_sent = true;
            if let Err(e) = this.drive(Sink::Spill, Act::Close) {
                return Poll::Ready(Err(this.failed(cx, e)));
            }
        }
        ready!(this.poll_write_out(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

#[cfg(test)]
mod tests;
