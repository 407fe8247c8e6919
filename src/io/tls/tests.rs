//! The server stream against a real rustls client, over memory. The client's records wait on
//! the wire until the test releases them, cut where it chose; the server's reads take at most
//! the size the test set for each, and its writes as much room as the test gives. The server
//! future is polled only after its waker was woken, like an executor does: a stream that
//! waits without having asked to be woken stalls the test instead of passing by luck.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Wake, Waker};

use proptest::prelude::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, ClientConfig, ClientConnection, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

// The binary's dev certificates (see `sockgate cert dev`), for real handshakes here.
#[allow(dead_code)]
#[path = "../../certgen.rs"]
mod certgen;
use crate::config::model::{CertPair, SniCert, TlsConfig};
use certgen::PemPair;

// ---- certificates and configs ----

struct Pki {
    /// The CAs of both certificates, PEM.
    cas: Vec<String>,
    /// The certificate served for `api.example.test`, DER.
    api_cert: Vec<u8>,
    /// Without ALPN, and with ALPN `http/1.1`.
    tcp: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

static PKI: LazyLock<Pki> = LazyLock::new(|| {
    let main = certgen::dev_pki(&["localhost", "127.0.0.1"]).unwrap();
    let api = certgen::dev_pki(&["api.example.test"]).unwrap();
    let pair = |pem: &PemPair| CertPair {
        cert: "<memory>".into(),
        key: "<memory>".into(),
        certified: crate::certs::cert_pair_from_pem(&pem.cert, &pem.key).unwrap(),
    };
    let tls = TlsConfig {
        default: pair(&main.server),
        sni: vec![SniCert {
            names: vec!["api.example.test".into()],
            pair: pair(&api.server),
        }],
        client_auth: None,
    };
    Pki {
        cas: vec![main.ca.cert, api.ca.cert],
        api_cert: CertificateDer::from_pem_slice(api.server.cert.as_bytes())
            .unwrap()
            .to_vec(),
        tcp: crate::tls::server_config(&tls, false).unwrap(),
        http: crate::tls::server_config(&tls, true).unwrap(),
    }
});

const TLS13: &SupportedProtocolVersion = &rustls::version::TLS13;
const TLS12: &SupportedProtocolVersion = &rustls::version::TLS12;

/// A client config that trusts the test CAs (or none) and offers `alpn`.
fn client_config(
    version: &'static SupportedProtocolVersion,
    trust: bool,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if trust {
        for ca in &PKI.cas {
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
        }
    }
    let mut config = ClientConfig::builder_with_provider(crate::certs::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

// ---- the wire ----

/// Sizes used one after the other, then again from the first.
#[derive(Clone, Debug)]
struct Cycle {
    sizes: Vec<usize>,
    at: usize,
}

impl Cycle {
    fn of(sizes: &[usize]) -> Self {
        assert!(!sizes.is_empty() && sizes.iter().all(|&s| s > 0));
        Cycle {
            sizes: sizes.to_vec(),
            at: 0,
        }
    }

    fn all() -> Self {
        Cycle::of(&[usize::MAX])
    }

    fn next(&mut self) -> usize {
        let size = self.sizes[self.at];
        self.at = (self.at + 1) % self.sizes.len();
        size
    }
}

struct Wire {
    /// Sent by the client, not yet released to the server.
    held: VecDeque<u8>,
    /// Released: what the server's reads return.
    readable: VecDeque<u8>,
    /// The client's FIN, read by the server once `readable` is empty.
    fin: bool,
    /// Bytes each release moves from `held` to `readable`.
    release: Cycle,
    /// Most bytes each server read returns.
    read: Cycle,
    reader: Option<Waker>,
    /// Written by the server, not yet taken by the client.
    written: Vec<u8>,
    /// Bytes the server's writes may still take before they block.
    room: usize,
    /// Room given each time a blocked writer is let on.
    grant: Cycle,
    /// Most bytes each server write takes.
    write: Cycle,
    writer: Option<Waker>,
    /// How many times a blocked writer was let on.
    grants: usize,
    /// The server shut its write side.
    shut: bool,
}

impl Default for Wire {
    fn default() -> Self {
        Wire {
            held: VecDeque::new(),
            readable: VecDeque::new(),
            fin: false,
            release: Cycle::all(),
            read: Cycle::all(),
            reader: None,
            written: Vec::new(),
            room: usize::MAX,
            grant: Cycle::all(),
            write: Cycle::all(),
            writer: None,
            grants: 0,
            shut: false,
        }
    }
}

impl Wire {
    /// Moves the next cut of held bytes to the server; true if any moved.
    fn release_next(&mut self) -> bool {
        if self.held.is_empty() {
            return false;
        }
        let n = self.release.next().min(self.held.len());
        self.readable.extend(self.held.drain(..n));
        wake(&mut self.reader);
        true
    }

    /// Releases everything held.
    fn release_all(&mut self) {
        self.readable.extend(self.held.drain(..));
        wake(&mut self.reader);
    }

    /// Lets a blocked writer write some more; true if it was blocked.
    fn grant_next(&mut self) -> bool {
        if self.writer.is_none() {
            return false;
        }
        self.room = self.room.saturating_add(self.grant.next());
        self.grants += 1;
        wake(&mut self.writer);
        true
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

/// The server's end of the wire.
struct ServerIo(Rc<RefCell<Wire>>);

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut w = self.0.borrow_mut();
        if w.readable.is_empty() {
            if w.fin && w.held.is_empty() {
                return Poll::Ready(Ok(()));
            }
            w.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = w.read.next().min(buf.remaining()).min(w.readable.len());
        let bytes: Vec<u8> = w.readable.drain(..n).collect();
        buf.put_slice(&bytes);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut w = self.0.borrow_mut();
        assert!(!w.shut, "write after shutdown");
        if w.room == 0 {
            w.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(w.room).min(w.write.next());
        w.written.extend_from_slice(&buf[..n]);
        w.room -= n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.borrow_mut().shut = true;
        Poll::Ready(Ok(()))
    }
}

// ---- the client ----

struct Client {
    conn: ClientConnection,
    wire: Rc<RefCell<Wire>>,
    /// Application data the client received.
    received: Vec<u8>,
    /// The client read the server's `close_notify`.
    closed: bool,
    /// What the client's rustls reported about the server's records.
    error: Option<rustls::Error>,
}

impl Client {
    fn new(config: Arc<ClientConfig>, name: &str) -> Self {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = Client {
            conn: ClientConnection::new(config, name).unwrap(),
            wire: Rc::new(RefCell::new(Wire::default())),
            received: Vec::new(),
            closed: false,
            error: None,
        };
        client.flush();
        client
    }

    fn io(&self) -> ServerIo {
        ServerIo(self.wire.clone())
    }

    /// Sends application data: one record per 16 KiB, put on the wire but not released.
    fn send(&mut self, data: &[u8]) {
        self.conn.writer().write_all(data).unwrap();
        self.flush();
    }

    /// Puts what the client's rustls has to send on the wire; true if there was any.
    fn flush(&mut self) -> bool {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        self.wire.borrow_mut().held.extend(&out);
        !out.is_empty()
    }

    /// Takes in what the server wrote; true if there was any.
    fn take_in(&mut self) -> bool {
        let bytes = std::mem::take(&mut self.wire.borrow_mut().written);
        if bytes.is_empty() {
            return false;
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() && self.error.is_none() {
            self.conn.read_tls(&mut rest).unwrap();
            if let Err(e) = self.conn.process_new_packets() {
                self.error = Some(e);
            }
            let mut buf = [0; 4096];
            loop {
                match self.conn.reader().read(&mut buf) {
                    Ok(0) => {
                        self.closed = true;
                        break;
                    }
                    Ok(n) => self.received.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
        true
    }

    /// One move of the network: the client takes what the server wrote and answers, the next
    /// cut of its bytes reaches the server, a blocked server writer gets room. True if
    /// anything moved.
    fn step(&mut self) -> bool {
        let took = self.take_in();
        let sent = self.flush();
        let mut w = self.wire.borrow_mut();
        let released = w.release_next();
        let granted = w.grant_next();
        took || sent || released || granted
    }

    /// Takes in everything the server wrote, without releasing anything to it.
    fn settle(&mut self) {
        while self.take_in() | self.flush() {}
    }

    fn release_all(&mut self) {
        self.wire.borrow_mut().release_all();
    }

    fn take_received(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.received)
    }
}

// ---- driving the server ----

#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs a server future to completion, moving the network one step at a time while it waits,
/// and polling it again only once it was woken.
fn run<F: Future>(client: &mut Client, fut: F) -> F::Output {
    let count = Arc::new(Count::default());
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    for _ in 0..10_000_000 {
        let woken = count.0.load(Ordering::SeqCst);
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        while count.0.load(Ordering::SeqCst) == woken {
            assert!(
                client.step(),
                "the server waits with nothing left to wake it"
            );
        }
    }
    panic!("the server future keeps waking itself");
}

/// Polls a server read once, without moving the network.
fn poll_read_once(server: &mut TlsStream<ServerIo>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    let waker = Waker::from(Arc::new(Count::default()));
    let mut cx = Context::from_waker(&waker);
    let mut rb = ReadBuf::new(buf);
    Pin::new(server)
        .poll_read(&mut cx, &mut rb)
        .map_ok(|()| rb.filled().len())
}

fn handshake(client: &mut Client, config: &Arc<ServerConfig>) -> TlsStream<ServerIo> {
    let io = client.io();
    let server = run(client, accept(io, config.clone())).unwrap();
    client.settle();
    assert!(!client.conn.is_handshaking());
    assert_eq!(client.error, None);
    server
}

/// A client that finished its handshake with the server; reads and writes unlimited.
fn connected(version: &'static SupportedProtocolVersion) -> (Client, TlsStream<ServerIo>) {
    let mut client = Client::new(client_config(version, true, &[]), "localhost");
    let server = handshake(&mut client, &PKI.tcp);
    (client, server)
}

/// Reads `len` bytes from the server stream, `buf` bytes at most per read.
fn read_len(
    client: &mut Client,
    server: &mut TlsStream<ServerIo>,
    len: usize,
    buf: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut chunk = vec![0; buf];
    while out.len() < len {
        let n = run(client, AsyncReadExt::read(server, &mut chunk)).unwrap();
        assert!(n > 0, "EOF after {} of {len} bytes", out.len());
        out.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(out.len(), len, "read past the data sent");
    out
}

/// Writes and flushes `data` from the server, then lets the client take it all in. Returns
/// the bytes the server put on the wire.
fn write_all(client: &mut Client, server: &mut TlsStream<ServerIo>, data: &[u8]) -> Vec<u8> {
    client.settle();
    run(client, async {
        server.write_all(data).await?;
        server.flush().await
    })
    .unwrap();
    let wire = client.wire.borrow().written.clone();
    client.settle();
    wire
}

/// The record headers in `wire`: content type and length.
fn records(mut wire: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    while let [kind, _, _, hi, lo, rest @ ..] = wire {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        out.push((*kind, len));
        wire = &rest[len..];
    }
    assert!(wire.is_empty(), "a partial record on the wire");
    out
}

/// Bytes that show where they came from when misplaced.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// The rustls error inside an I/O error from the stream.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref()
}

/// Both directions after a handshake: `up` from the client, `down` from the server, then
/// `close_notify` each way. The server reads `buf` bytes at most per read; with `write_first`
/// it writes before it reads, so the client's records wait while it writes.
fn exchange(
    client: &mut Client,
    server: &mut TlsStream<ServerIo>,
    up: &[usize],
    down: &[usize],
    buf: usize,
    write_first: bool,
) {
    exchange_updating(client, server, up, &[], down, buf, write_first);
}

/// [`exchange`], with a key update from the client before each message of `up` whose flag in
/// `update` is set.
fn exchange_updating(
    client: &mut Client,
    server: &mut TlsStream<ServerIo>,
    up: &[usize],
    update: &[bool],
    down: &[usize],
    buf: usize,
    write_first: bool,
) {
    let up: Vec<Vec<u8>> = up.iter().zip(1..).map(|(&n, s)| pattern(n, s)).collect();
    let down: Vec<Vec<u8>> = down
        .iter()
        .zip(100..)
        .map(|(&n, s)| pattern(n, s))
        .collect();
    for (i, message) in up.iter().enumerate() {
        if update.get(i) == Some(&true) {
            client.conn.refresh_traffic_keys().unwrap();
        }
        client.send(message);
    }
    let up = up.concat();
    let mut got = Vec::new();
    if !write_first {
        got = read_len(client, server, up.len(), buf);
    }
    for message in &down {
        write_all(client, server, message);
    }
    if write_first {
        got = read_len(client, server, up.len(), buf);
    }
    assert!(got == up, "client to server bytes differ");
    assert!(
        client.take_received() == down.concat(),
        "server to client bytes differ"
    );
    assert_eq!(client.error, None);

    client.conn.send_close_notify();
    client.flush();
    assert_eq!(
        run(client, AsyncReadExt::read(server, &mut [0; 64])).unwrap(),
        0
    );
    assert_eq!(
        run(client, AsyncReadExt::read(server, &mut [0; 64])).unwrap(),
        0,
        "EOF stays EOF"
    );
    run(client, server.shutdown()).unwrap();
    client.settle();
    assert!(client.closed, "the client did not read close_notify");
    assert!(client.wire.borrow().shut, "no FIN after close_notify");
    assert_eq!(client.error, None);
    assert!(!server.incoming.is_held() && !server.outgoing.is_held());
}

/// Sets how the client's bytes reach the server and how the server's writes go out.
fn cut(
    client: &Client,
    release: &[usize],
    read: &[usize],
    grant: Option<&[usize]>,
    write: &[usize],
) {
    let mut w = client.wire.borrow_mut();
    w.release = Cycle::of(release);
    w.read = Cycle::of(read);
    w.write = Cycle::of(write);
    if let Some(grant) = grant {
        w.room = 0;
        w.grant = Cycle::of(grant);
    }
}

#[test]
fn one_byte_at_a_time_both_ways() {
    for version in [TLS13, TLS12] {
        let mut client = Client::new(client_config(version, true, &[]), "localhost");
        cut(&client, &[1], &[1], Some(&[1]), &[1]);
        let mut server = handshake(&mut client, &PKI.tcp);
        // Records larger than a server read, one larger than the pool buffer's plaintext
        // share, and a one-byte one.
        exchange(
            &mut client,
            &mut server,
            &[40_000, 1, 3_000],
            &[35_000, 1],
            1_000,
            false,
        );
    }
}

#[test]
fn many_small_records_come_out_of_one_read() {
    let (mut client, mut server) = connected(TLS13);
    let messages: Vec<Vec<u8>> = (0..400).map(|i| pattern(1 + i % 7, i as u8)).collect();
    for message in &messages {
        client.send(message);
    }
    client.release_all();
    let mut buf = vec![0; 64 * 1024];
    let n = run(&mut client, AsyncReadExt::read(&mut server, &mut buf)).unwrap();
    assert_eq!(&buf[..n], &messages.concat()[..]);
    assert!(
        !server.incoming.is_held(),
        "receive buffer kept after all was read"
    );
}

#[test]
fn a_record_larger_than_the_callers_buffer_comes_out_in_order() {
    let (mut client, mut server) = connected(TLS13);
    let data = pattern(16 * 1024, 7);
    client.send(&data);
    client.release_all();
    let mut got = Vec::new();
    let mut buf = [0; 1000];
    let n = run(&mut client, AsyncReadExt::read(&mut server, &mut buf)).unwrap();
    assert_eq!(n, 1000);
    got.extend_from_slice(&buf[..n]);
    // The rest of the record waits decrypted; the receive buffer is not needed for it.
    assert!(!server.incoming.is_held());
    while got.len() < data.len() {
        let n = run(&mut client, AsyncReadExt::read(&mut server, &mut buf)).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data);
    assert!(server.plain.is_empty());
}

#[test]
fn a_blocked_writer_still_delivers_everything_in_order() {
    for version in [TLS13, TLS12] {
        let mut client = Client::new(client_config(version, true, &[]), "localhost");
        cut(
            &client,
            &[300],
            &[4096],
            Some(&[1, 7, 1000, 5]),
            &[3, 16 * 1024, 1],
        );
        let mut server = handshake(&mut client, &PKI.tcp);
        let data = pattern(100_000, 3);
        // Client data waits while the server writes: the writer must get past it.
        client.send(&pattern(50_000, 4));
        write_all(&mut client, &mut server, &data);
        assert!(client.take_received() == data);
        assert!(
            client.wire.borrow().grants > 100,
            "the writer was never held back"
        );
        let got = read_len(&mut client, &mut server, 50_000, 32 * 1024);
        assert!(got == pattern(50_000, 4));
        exchange(&mut client, &mut server, &[10], &[70_000], 4096, true);
    }
}

#[test]
fn key_updates_from_the_client_keep_data_flowing_both_ways() {
    let (mut client, mut server) = connected(TLS13);
    for round in 0..5u8 {
        let up = pattern(5_000 + usize::from(round), round);
        let down = pattern(7_000, round + 50);
        client.conn.refresh_traffic_keys().unwrap();
        client.send(&up);
        if round == 1 {
            // The key update cut anywhere.
            cut(&client, &[1], &[1], None, &[usize::MAX]);
        }
        if round == 2 {
            cut(&client, &[usize::MAX], &[usize::MAX], None, &[usize::MAX]);
        }
        if round % 2 == 0 {
            assert!(read_len(&mut client, &mut server, up.len(), 4096) == up);
            // The server answers the request with its own key update, ahead of the data
            // (RFC 8446 §4.6.3); both are application-data records from the outside.
            let wire = write_all(&mut client, &mut server, &down);
            assert_eq!(
                records(&wire).len(),
                2,
                "round {round}: no key update before the data"
            );
        } else {
            // The key update waits while the server writes: the server has not seen it.
            let wire = write_all(&mut client, &mut server, &down);
            assert_eq!(records(&wire).len(), 1, "round {round}");
            assert!(read_len(&mut client, &mut server, up.len(), 4096) == up);
        }
        assert_eq!(client.error, None, "round {round}");
        assert!(client.take_received() == down, "round {round}");
    }
    exchange(
        &mut client,
        &mut server,
        &[1, 20_000],
        &[20_000, 1],
        4096,
        false,
    );
}

#[test]
fn close_notify_is_eof_after_all_data_and_shutdown_sends_one() {
    for version in [TLS13, TLS12] {
        let (mut client, mut server) = connected(version);
        let data = pattern(20_000, 9);
        client.send(&data);
        // The data and the close_notify reach the server in one read.
        client.conn.send_close_notify();
        client.flush();
        assert!(read_len(&mut client, &mut server, data.len(), 64 * 1024) == data);
        assert_eq!(
            run(&mut client, AsyncReadExt::read(&mut server, &mut [0; 16])).unwrap(),
            0
        );
        // A peer's close_notify closes its direction only: the server still sends.
        let late = pattern(3_000, 10);
        write_all(&mut client, &mut server, &late);
        assert!(client.take_received() == late);
        assert!(!client.closed);
        run(&mut client, server.shutdown()).unwrap();
        let wire = client.wire.borrow().written.clone();
        // One alert record (encrypted, so application data from the outside in TLS 1.3).
        assert_eq!(records(&wire).len(), 1);
        client.settle();
        assert!(client.closed);
        assert_eq!(client.error, None);
        assert!(client.wire.borrow().shut);
        // A second shutdown sends nothing more.
        run(&mut client, server.shutdown()).unwrap();
        assert!(client.wire.borrow().written.is_empty());
    }
}

#[test]
fn tcp_eof_without_close_notify_is_unexpected_eof() {
    let (mut client, mut server) = connected(TLS13);
    client.send(b"half");
    client.wire.borrow_mut().fin = true;
    assert!(read_len(&mut client, &mut server, 4, 16) == b"half");
    let e = run(&mut client, AsyncReadExt::read(&mut server, &mut [0; 16])).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn tcp_eof_during_the_handshake_is_unexpected_eof() {
    let mut client = Client::new(client_config(TLS13, true, &[]), "localhost");
    // The ClientHello cut short, then FIN.
    let mut w = client.wire.borrow_mut();
    let len = w.held.len();
    w.held.truncate(len / 2);
    w.fin = true;
    drop(w);
    let io = client.io();
    let e = run(&mut client, accept(io, PKI.tcp.clone())).err().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
}

/// Checks that the server's read fails with InvalidData carrying `expected`, and that the
/// client then receives the server's fatal alert `alert`.
fn read_fails(
    client: &mut Client,
    server: &mut TlsStream<ServerIo>,
    expected: impl Fn(&rustls::Error) -> bool,
    alert: AlertDescription,
) {
    let e = run(client, AsyncReadExt::read(server, &mut [0; 1024])).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let inner = rustls_error(&e).unwrap();
    assert!(expected(inner), "unexpected error {inner:?}");
    client.settle();
    assert_eq!(client.error, Some(rustls::Error::AlertReceived(alert)));
    // The stream stays failed, sends nothing more (one alert), and shutting down sends only
    // the FIN.
    for _ in 0..2 {
        let again = run(client, AsyncReadExt::read(server, &mut [0; 1024])).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
        let again = run(client, server.write_all(b"late")).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
    }
    run(client, server.shutdown()).unwrap();
    assert!(
        client.wire.borrow().written.is_empty(),
        "a record after the fatal alert"
    );
    assert!(client.wire.borrow().shut);
}

#[test]
fn a_tampered_record_is_invalid_data_and_the_server_sends_bad_record_mac() {
    for version in [TLS13, TLS12] {
        let (mut client, mut server) = connected(version);
        client.send(b"intact");
        assert!(read_len(&mut client, &mut server, 6, 64) == b"intact");
        client.send(b"tampered");
        let last = client.wire.borrow().held.len() - 1;
        client.wire.borrow_mut().held[last] ^= 1;
        read_fails(
            &mut client,
            &mut server,
            |e| *e == rustls::Error::DecryptError,
            AlertDescription::BadRecordMac,
        );
    }
}

#[test]
fn garbage_records_are_invalid_data_and_alerted() {
    // An unknown content type, a record longer than TLS allows, a plaintext handshake
    // message after the handshake.
    let garbage: [&[u8]; 3] = [
        &[0x63, 3, 3, 0, 2, 1, 2],
        &[0x17, 3, 3, 0xff, 0xff],
        &[0x16, 3, 3, 0, 4, 1, 0, 0, 0],
    ];
    for bytes in garbage {
        let (mut client, mut server) = connected(TLS13);
        client.wire.borrow_mut().held.extend(bytes);
        let e = run(&mut client, AsyncReadExt::read(&mut server, &mut [0; 1024])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bytes:?}: {e}");
        client.settle();
        assert!(
            matches!(client.error, Some(rustls::Error::AlertReceived(_))),
            "{bytes:?}: the client saw {:?}",
            client.error
        );
    }
}

#[test]
fn a_fatal_alert_from_the_client_fails_the_handshake() {
    // A client that does not trust the certificate says so with a fatal alert.
    let mut client = Client::new(client_config(TLS13, false, &[]), "localhost");
    let io = client.io();
    let e = run(&mut client, accept(io, PKI.tcp.clone())).err().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        rustls_error(&e),
        Some(&rustls::Error::AlertReceived(AlertDescription::UnknownCA))
    );
}

#[test]
fn a_fatal_alert_after_the_handshake_is_invalid_data() {
    for version in [TLS13, TLS12] {
        let (mut client, mut server) = connected(version);
        // rustls' client sends a fatal alert only when it fails: a forged server record
        // makes it send bad_record_mac, encrypted like any record after the handshake.
        client
            .wire
            .borrow_mut()
            .written
            .extend([&[0x17, 3, 3, 0, 40][..], &[0; 40]].concat());
        client.settle();
        assert_eq!(client.error, Some(rustls::Error::DecryptError));
        let e = run(&mut client, AsyncReadExt::read(&mut server, &mut [0; 64])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            rustls_error(&e),
            Some(&rustls::Error::AlertReceived(
                AlertDescription::BadRecordMac
            ))
        );
    }
}

#[test]
fn a_lone_partial_record_is_set_aside_and_completed() {
    let (mut client, mut server) = connected(TLS13);
    let message = pattern(50, 11);
    let record_len = 5 + 50 + 1 + 16;
    // A pause at every byte of a record: what arrived waits in `tail`, not in a pool buffer,
    // and the record comes out whole when the rest arrives.
    for at in 1..record_len {
        client.send(&message);
        let record = client.wire.borrow_mut().held.drain(..).collect::<Vec<u8>>();
        assert_eq!(record.len(), record_len);
        client.wire.borrow_mut().readable.extend(&record[..at]);
        let mut buf = [0; 100];
        assert!(
            poll_read_once(&mut server, &mut buf).is_pending(),
            "at {at}"
        );
        assert_eq!(&server.tail[..], &record[..at], "at {at}");
        assert!(!server.incoming.is_held(), "at {at}: receive buffer kept");
        client.wire.borrow_mut().readable.extend(&record[at..]);
        let polled = poll_read_once(&mut server, &mut buf);
        let Poll::Ready(Ok(n)) = polled else {
            panic!("at {at}: no data: {polled:?}");
        };
        assert_eq!(&buf[..n], &message[..], "at {at}");
        assert!(
            server.tail.is_empty() && !server.incoming.is_held(),
            "at {at}"
        );
    }
}

#[test]
fn a_partial_record_after_a_whole_one_is_set_aside_after_the_whole_one_is_read() {
    let (mut client, mut server) = connected(TLS13);
    client.send(b"first");
    client.send(b"second");
    let bytes = client.wire.borrow_mut().held.drain(..).collect::<Vec<u8>>();
    let first_len = records(&bytes)[0].1 + 5;
    let cut_at = first_len + 3;
    client.wire.borrow_mut().readable.extend(&bytes[..cut_at]);
    let mut buf = [0; 100];
    let Poll::Ready(Ok(n)) = poll_read_once(&mut server, &mut buf) else {
        panic!("first record not read");
    };
    assert_eq!(&buf[..n], b"first");
    // The rest of the buffer (three bytes of the next record) is kept until the socket
    // says it has nothing more.
    assert!(poll_read_once(&mut server, &mut buf).is_pending());
    assert_eq!(&server.tail[..], &bytes[first_len..cut_at]);
    assert!(!server.incoming.is_held());
    client.wire.borrow_mut().readable.extend(&bytes[cut_at..]);
    let Poll::Ready(Ok(n)) = poll_read_once(&mut server, &mut buf) else {
        panic!("second record not read");
    };
    assert_eq!(&buf[..n], b"second");
}

#[test]
fn sni_and_alpn_are_reported() {
    let mut client = Client::new(
        client_config(TLS13, true, &[b"h2", b"http/1.1"]),
        "API.Example.Test",
    );
    let mut server = handshake(&mut client, &PKI.http);
    assert_eq!(server.take_sni().as_deref(), Some("api.example.test"));
    assert_eq!(server.take_sni(), None, "taken");
    // An HTTP listener offers h2 first; a client offering both gets it.
    assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(client.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The certificate was picked by the name.
    let certs = client.conn.peer_certificates().unwrap();
    assert_eq!(certs[0].as_ref(), &PKI.api_cert[..]);

    // A client offering only HTTP/1.1 gets it.
    let mut client = Client::new(client_config(TLS12, true, &[b"http/1.1"]), "localhost");
    let server = handshake(&mut client, &PKI.http);
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));

    // No ALPN on a TCP listener, whatever the client offers.
    let mut client = Client::new(client_config(TLS12, true, &[b"h2"]), "localhost");
    let mut server = handshake(&mut client, &PKI.tcp);
    assert_eq!(server.take_sni().as_deref(), Some("localhost"));
    assert_eq!(server.alpn_protocol(), None);

    // An IP address is not sent as SNI.
    let mut client = Client::new(client_config(TLS13, true, &[]), "127.0.0.1");
    let mut server = handshake(&mut client, &PKI.tcp);
    assert_eq!(server.take_sni(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any cuts of the client's bytes, any read and write sizes, a writer held back or not,
    /// key updates anywhere (TLS 1.3): the handshake completes and both directions arrive
    /// whole and in order, then close cleanly.
    #[test]
    fn any_cuts_deliver_whole_and_in_order(
        tls13 in any::<bool>(),
        release in prop::collection::vec(1..3_000usize, 1..6),
        read in prop::collection::vec(1..20_000usize, 1..5),
        grant in prop::option::of(prop::collection::vec(1..5_000usize, 1..5)),
        write in prop::collection::vec(1..20_000usize, 1..4),
        up in prop::collection::vec(1..40_000usize, 1..4),
        update in prop::collection::vec(any::<bool>(), 4),
        down in prop::collection::vec(1..40_000usize, 1..4),
        buf in 1..40_000usize,
        write_first in any::<bool>(),
    ) {
        let version = if tls13 { TLS13 } else { TLS12 };
        let mut client = Client::new(client_config(version, true, &[]), "localhost");
        cut(&client, &release, &read, grant.as_deref(), &write);
        let mut server = handshake(&mut client, &PKI.tcp);
        let update = if tls13 { &update[..] } else { &[] };
        exchange_updating(&mut client, &mut server, &up, update, &down, buf, write_first);
    }
}

// ---- the client side, toward backends ----
//
// The same stream with rustls' unbuffered client connection, against tokio-rustls' server
// over an in-memory pipe whose small capacity cuts every record across reads and writes.

/// Our client stream (TLS 1.2 or 1.3, offering `alpn`) against a tokio-rustls server with
/// the test configs, over a pipe of `pipe` bytes; the server end after its handshake.
async fn client_pair(
    version: &'static SupportedProtocolVersion,
    alpn: &[&[u8]],
    pipe: usize,
    name: &str,
) -> (
    io::Result<BackendTls<tokio::io::DuplexStream>>,
    tokio::task::JoinHandle<io::Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>>,
) {
    let (ours, theirs) = tokio::io::duplex(pipe);
    let server_config = if alpn.is_empty() {
        PKI.tcp.clone()
    } else {
        PKI.http.clone()
    };
    let server = tokio::spawn(tokio_rustls::TlsAcceptor::from(server_config).accept(theirs));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let client = connect(ours, client_config(version, true, alpn), name).await;
    (client, server)
}

#[tokio::test]
async fn the_client_side_moves_data_both_ways_through_records_cut_anywhere_and_closes() {
    for (version, pipe) in [(TLS13, 7), (TLS12, 13), (TLS13, 64 * 1024)] {
        let up = pattern(100_000, 1);
        let down = pattern(70_000, 2);
        let (ours, theirs) = tokio::io::duplex(pipe);
        // The server runs beside the client from the start: with a small pipe, its
        // handshake (and TLS 1.3 tickets) only completes while the client reads.
        let server = {
            let down = down.clone();
            let len = up.len();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(PKI.http.clone());
                let mut server = acceptor.accept(theirs).await.unwrap();
                assert_eq!(server.get_ref().1.server_name(), Some("localhost"));
                let mut got = vec![0; len];
                server.read_exact(&mut got).await.unwrap();
                server.write_all(&down).await.unwrap();
                server.shutdown().await.unwrap();
                // The client's close_notify, sent by its `shutdown`, as EOF here.
                assert_eq!(server.read(&mut [0; 16]).await.unwrap(), 0);
                got
            })
        };
        let name = ServerName::try_from("localhost").unwrap();
        let config = client_config(version, true, &[b"http/1.1"]);
        let client = connect(ours, config, name).await.unwrap();
        assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        // Both directions at once: through a small pipe, the server's tickets and
        // response wait for the client to read while it is still writing.
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut got = vec![0; down.len()];
        tokio::join!(
            async {
                wr.write_all(&up).await.unwrap();
                wr.flush().await.unwrap();
            },
            async { rd.read_exact(&mut got).await.unwrap() }
        );
        let mut client = rd.unsplit(wr);
        // The server's close_notify reads as EOF.
        assert_eq!(
            AsyncReadExt::read(&mut client, &mut [0; 16]).await.unwrap(),
            0
        );
        client.shutdown().await.unwrap();
        assert!(got == down, "server to client, pipe {pipe}");
        assert!(server.await.unwrap() == up, "client to server, pipe {pipe}");
        // Idle: no record buffer held.
        assert!(!client.incoming.is_held() && !client.outgoing.is_held());
    }
}

#[tokio::test]
async fn the_client_side_offers_no_alpn_unless_configured() {
    let (client, server) = client_pair(TLS13, &[], 64 * 1024, "localhost").await;
    let client = client.unwrap();
    let server = server.await.unwrap().unwrap();
    assert_eq!(client.alpn_protocol(), None);
    assert_eq!(server.get_ref().1.alpn_protocol(), None);
}

#[tokio::test]
async fn the_client_side_refuses_a_certificate_for_another_name() {
    let (client, _server) = client_pair(TLS13, &[], 1024, "other.example.test").await;
    let e = client.err().expect("the name does not match");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(
        matches!(
            rustls_error(&e),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
                    | rustls::CertificateError::NotValidForName
            ))
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_client_side_fails_cleanly_on_a_peer_that_does_not_speak_tls() {
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let peer = tokio::spawn(async move {
        let mut hello = [0; 5];
        theirs.read_exact(&mut hello).await.unwrap();
        theirs
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        hello
    });
    let name = ServerName::try_from("localhost").unwrap();
    let e = connect(ours, client_config(TLS13, true, &[]), name)
        .await
        .err()
        .expect("not TLS");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e:?}");
    // It did send a ClientHello first: a handshake record.
    assert_eq!(peer.await.unwrap()[0], 22);
}
