//! The whole relay (both directions, the closing handshake, keepalive), driven by hand over
//! in-memory streams: every read returns what the test released, cut where it chose; writes
//! land in a Vec, with as much room as the test gives. The relay future is polled only when
//! its waker was woken, like an executor does, with a waker that counts its wake-ups: a
//! relay that wakes itself without new input, or that stops without waiting for input it
//! needs, fails here.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::*;

/// Counts wake-ups.
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

/// One peer's socket as the relay sees it.
#[derive(Default)]
struct Wire {
    /// Released by the test, not yet read; a read returns at most the front chunk.
    incoming: VecDeque<Vec<u8>>,
    read_waker: Option<Waker>,
    written: Vec<u8>,
    /// Bytes writes may still take; `None`: any number.
    room: Option<usize>,
    write_waker: Option<Waker>,
    shut: bool,
}

#[derive(Clone, Default)]
struct Stream(Rc<RefCell<Wire>>);

impl Stream {
    fn release(&self, chunk: &[u8]) {
        let mut w = self.0.borrow_mut();
        w.incoming.push_back(chunk.to_vec());
        if let Some(waker) = w.read_waker.take() {
            waker.wake();
        }
    }

    fn give_room(&self, n: Option<usize>) {
        let mut w = self.0.borrow_mut();
        w.room = match (w.room, n) {
            (Some(have), Some(more)) => Some(have + more),
            _ => None,
        };
        if let Some(waker) = w.write_waker.take() {
            waker.wake();
        }
    }

    fn written(&self) -> Vec<u8> {
        self.0.borrow().written.clone()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut w = self.0.borrow_mut();
        let Some(front) = w.incoming.front_mut() else {
            w.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let n = front.len().min(buf.remaining());
        buf.put_slice(&front[..n]);
        front.drain(..n);
        if front.is_empty() {
            w.incoming.pop_front();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut w = self.0.borrow_mut();
        let n = match w.room {
            None => buf.len(),
            Some(0) => {
                w.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Some(room) => room.min(buf.len()),
        };
        w.written.extend_from_slice(&buf[..n]);
        if let Some(room) = w.room.as_mut() {
            *room -= n;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.borrow_mut().shut = true;
        Poll::Ready(Ok(()))
    }
}

/// A frame with the minimal length encoding, masked with `mask` if given.
fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

const KEY: [u8; 4] = [0x5A, 0x01, 0xC3, 0x7E];

fn session(limits: WebSocketLimits) -> Session {
    Session {
        route: "r".into(),
        backend: "b".into(),
        limits,
        permessage_deflate: false,
        idle_timeout: Duration::from_secs(3600),
        close_timeout: Duration::from_secs(3600),
        drain_spread: Duration::ZERO,
        drain_timeout: Duration::from_secs(3600),
    }
}

fn ctx() -> ConnCtx {
    ConnCtx::new(
        1,
        Arc::new(crate::metrics::ListenerHandles::new("l".into())),
        crate::live::Peer::Ip(std::net::SocketAddr::from(([127, 0, 0, 1], 1))),
        CancellationToken::new(),
    )
}

/// Polls `relay` the way an executor would: only after a wake-up (and once at the start).
struct Driver {
    count: Arc<Count>,
    waker: Waker,
    seen: usize,
    polls: usize,
}

impl Driver {
    fn new() -> Self {
        let count = Arc::new(Count::default());
        Driver {
            waker: Waker::from(count.clone()),
            count,
            // Unequal to the count: the first `run` polls.
            seen: usize::MAX,
            polls: 0,
        }
    }

    fn wakes(&self) -> usize {
        self.count.0.load(Ordering::SeqCst)
    }

    /// Polls while woken. A poll that returns Pending must not have woken the waker itself:
    /// with no new input there is nothing to do, and a self-wake would spin.
    fn run(&mut self, relay: Pin<&mut impl Future<Output = WsEnd>>) -> Option<WsEnd> {
        let mut relay = relay;
        let mut cx = Context::from_waker(&self.waker);
        while self.wakes() != self.seen {
            self.seen = self.wakes();
            self.polls += 1;
            match relay.as_mut().poll(&mut cx) {
                Poll::Ready(end) => return Some(end),
                Poll::Pending => assert_eq!(
                    self.wakes(),
                    self.seen,
                    "the relay woke itself without new input"
                ),
            }
        }
        None
    }
}

/// A runtime context for the relay's timers; time stands still unless advanced.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A text message as 30,000 empty non-final fragments (6 bytes each, masked) in one burst,
/// then its final fragment (issue 10). The relay reads 32 KiB at a time, so its reads end
/// inside a header: the frames before that header must go out at once, not wait behind it
/// until the buffer is full.
#[test]
fn thirty_thousand_empty_fragments_in_one_burst_go_through_without_spinning() {
    let rt = runtime();
    let _guard = rt.enter();
    let (client, backend) = (Stream::default(), Stream::default());
    let (metrics, shutdown, ctx, session) = (
        Metrics::new(),
        Shutdown::new(),
        ctx(),
        session(WebSocketLimits::default()),
    );
    let (mut c, mut b) = (client.clone(), backend.clone());
    let mut relay = pin!(relay(&mut c, &mut b, &session, &ctx, &metrics, &shutdown));
    let mut driver = Driver::new();
    assert!(driver.run(relay.as_mut()).is_none());

    let mut burst = frame(0x01, b"", Some(KEY));
    for _ in 1..30_000 {
        burst.extend(frame(0x00, b"", Some(KEY)));
    }
    assert_eq!(burst.len(), 180_000);
    client.release(&burst);
    assert!(driver.run(relay.as_mut()).is_none());
    assert_eq!(backend.written(), burst, "every fragment forwarded at once");
    let polls = driver.polls;

    let last = frame(0x80, b"end", Some(KEY));
    client.release(&last);
    assert!(driver.run(relay.as_mut()).is_none());
    assert_eq!(driver.polls, polls + 1);
    assert_eq!(backend.written().len(), burst.len() + last.len());
    assert_eq!(
        metrics
            .websocket_messages_total
            .with_label_values(&["r", "client_to_backend"])
            .get(),
        1
    );
    // Idle: nothing woke the relay since.
    assert_eq!(relay_idle_polls(&mut driver, relay.as_mut()), 0);
}

/// With nothing released, a relay is not polled again: it did not wake itself.
fn relay_idle_polls(driver: &mut Driver, relay: Pin<&mut impl Future<Output = WsEnd>>) -> usize {
    let before = driver.polls;
    assert!(driver.run(relay).is_none());
    driver.polls - before
}

/// A non-final text fragment and the answer to the gateway's Ping in one read (issue 10):
/// only the Pong is swallowed; the fragment reaches the backend intact.
#[test]
fn a_swallowed_pong_leaves_the_fragment_read_with_it() {
    let rt = runtime();
    let _guard = rt.enter();
    let (client, backend) = (Stream::default(), Stream::default());
    let limits = WebSocketLimits {
        ping_interval: Some(Duration::from_secs(1)),
        pong_timeout: Some(Duration::from_secs(10)),
        ..WebSocketLimits::default()
    };
    let (metrics, shutdown, ctx, session) =
        (Metrics::new(), Shutdown::new(), ctx(), session(limits));
    let (mut c, mut b) = (client.clone(), backend.clone());
    let mut relay = pin!(relay(&mut c, &mut b, &session, &ctx, &metrics, &shutdown));
    let mut driver = Driver::new();
    assert!(driver.run(relay.as_mut()).is_none());

    rt.block_on(tokio::time::advance(Duration::from_millis(1001)));
    assert!(driver.run(relay.as_mut()).is_none());
    let ping = client.written();
    assert_eq!(
        &ping[..2],
        &[0x89, 8],
        "an unmasked Ping with 8 bytes of payload"
    );
    let payload = &ping[2..10];

    let fragment = frame(0x01, b"hello ", Some(KEY));
    let pong = frame(0x8A, payload, Some(KEY));
    let mut chunk = fragment.clone();
    chunk.extend_from_slice(&pong);
    client.release(&chunk);
    assert!(driver.run(relay.as_mut()).is_none());
    assert_eq!(
        backend.written(),
        fragment,
        "the fragment goes, the Pong does not"
    );

    let last = frame(0x80, b"world", Some(KEY));
    client.release(&last);
    assert!(driver.run(relay.as_mut()).is_none());
    let mut expected = fragment;
    expected.extend_from_slice(&last);
    assert_eq!(backend.written(), expected);
    assert_eq!(
        metrics
            .websocket_ping_rtt_seconds
            .with_label_values(&["r"])
            .get_sample_count(),
        1
    );
}

/// Frames over `max_frames_per_second` (empty fragments count): the frames before the limit
/// and the one that crossed it go out whole, then the gateway's Close 1001; the client gets
/// Close 1008 and nothing it sends after reaches the backend.
#[test]
fn frames_over_the_limit_close_the_client_with_1008() {
    let rt = runtime();
    let _guard = rt.enter();
    let (client, backend) = (Stream::default(), Stream::default());
    let limits = WebSocketLimits {
        max_frames_per_second: Some(10),
        ..WebSocketLimits::default()
    };
    let (metrics, shutdown, ctx, session) =
        (Metrics::new(), Shutdown::new(), ctx(), session(limits));
    let (mut c, mut b) = (client.clone(), backend.clone());
    let mut relay = pin!(relay(&mut c, &mut b, &session, &ctx, &metrics, &shutdown));
    let mut driver = Driver::new();
    assert!(driver.run(relay.as_mut()).is_none());

    let mut frames = frame(0x01, b"", Some(KEY));
    for _ in 1..10 {
        frames.extend(frame(0x00, b"", Some(KEY)));
    }
    client.release(&frames);
    assert!(driver.run(relay.as_mut()).is_none());
    assert_eq!(backend.written(), frames, "ten frames are within the limit");

    // The eleventh in the same second, and more behind it.
    let mut over = frame(0x89, b"p", Some(KEY));
    over.extend(frame(0x00, b"", Some(KEY)));
    client.release(&over);
    assert!(driver.run(relay.as_mut()).is_none());
    let to_backend = backend.written();
    let ping_len = 7;
    assert_eq!(
        &to_backend[..frames.len() + ping_len],
        &[&frames[..], &over[..ping_len]].concat()[..]
    );
    let close = &to_backend[frames.len() + ping_len..];
    assert_eq!(close[0], 0x88, "then the gateway's Close");
    let masked_code = [close[6] ^ close[2], close[7] ^ close[3]];
    assert_eq!(u16::from_be_bytes(masked_code), 1001);
    let to_client = client.written();
    assert_eq!(to_client[0], 0x88);
    assert_eq!(u16::from_be_bytes([to_client[2], to_client[3]]), 1008);
    assert_eq!(
        metrics
            .websocket_closes_total
            .with_label_values(&["r", "1008", "gateway"])
            .get(),
        1
    );

    // Dropped from here on.
    client.release(&frame(0x80, b"late", Some(KEY)));
    assert!(driver.run(relay.as_mut()).is_none());
    assert_eq!(backend.written(), to_backend);
}

#[test]
fn close_codes_outside_the_registry_are_counted_as_other() {
    assert_eq!(code::label(1000), "1000");
    assert_eq!(code::label(1005), "1005");
    assert_eq!(code::label(1015), "1015");
    for other in [0, 999, 1016, 2999, 3000, 4321, 4999, u16::MAX] {
        assert_eq!(code::label(other), "other", "{other}");
    }
}

/// One data message: fragments with control frames before each.
#[derive(Debug, Clone)]
struct Message {
    binary: bool,
    /// Payload length of each fragment, and the Pings (0x9) and Pongs (0xA) before it.
    fragments: Vec<(usize, Vec<(u8, usize)>)>,
}

fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
}

fn encode(messages: &[Message], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::new();
    for (m, message) in messages.iter().enumerate() {
        let last = message.fragments.len() - 1;
        for (i, (len, controls)) in message.fragments.iter().enumerate() {
            for &(opcode, len) in controls {
                out.extend(frame(0x80 | opcode, &payload(len, m + i), mask));
            }
            let opcode = match (i, message.binary) {
                (0, false) => 0x1,
                (0, true) => 0x2,
                _ => 0x0,
            };
            let fin = if i == last { 0x80 } else { 0 };
            out.extend(frame(fin | opcode, &payload(*len, m), mask));
        }
    }
    // Then Close 1000.
    out.extend(frame(0x88, &1000u16.to_be_bytes(), mask));
    out
}

fn fragment_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => Just(0usize),
        3 => 1..126usize,
        2 => 126..2000usize,
        1 => 65_536..66_000usize,
    ]
}

fn control() -> impl Strategy<Value = (u8, usize)> {
    (prop_oneof![Just(0x9u8), Just(0xAu8)], 0..=125usize)
}

fn message() -> impl Strategy<Value = Message> {
    let fragments = prop::collection::vec(
        (fragment_len(), prop::collection::vec(control(), 0..3)),
        1..8,
    );
    // Runs of empty fragments, up to a few thousand.
    let empty_run = (1..3000usize).prop_map(|n| vec![(0usize, Vec::new()); n]);
    (any::<bool>(), prop_oneof![4 => fragments, 1 => empty_run])
        .prop_map(|(binary, fragments)| Message { binary, fragments })
}

/// Cut points in `0..=len` from proptest indices, sorted, with the ends.
fn chunks(bytes: &[u8], cuts: &[Index]) -> VecDeque<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.extend([0, bytes.len()]);
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// What is released and how much writers may take, step by step.
#[derive(Debug, Clone)]
enum Action {
    /// The next chunk of the client's (true) or the backend's stream.
    Next(bool),
    /// More room for the backend's (true) or the client's writer.
    Room(bool, usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => any::<bool>().prop_map(Action::Next),
        1 => (any::<bool>(), 0..40_000usize).prop_map(|(b, n)| Action::Room(b, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Valid streams both ways, cut anywhere, writers with limited room or none: every byte
    /// comes out in order; while writers take everything, at most one incomplete header or
    /// control frame (131 bytes) is held back; a poll that returns Pending never woke the
    /// relay; after both Closes the relay ends.
    #[test]
    fn valid_streams_in_any_cut_come_out_whole_and_in_order(
        up in prop::collection::vec(message(), 0..5),
        down in prop::collection::vec(message(), 0..5),
        up_cuts in prop::collection::vec(any::<Index>(), 0..60),
        down_cuts in prop::collection::vec(any::<Index>(), 0..60),
        limited_room in any::<bool>(),
        actions in prop::collection::vec(action(), 0..200),
    ) {
        let rt = runtime();
        let _guard = rt.enter();
        let up_bytes = encode(&up, Some(KEY));
        let down_bytes = encode(&down, None);
        let mut up_chunks = chunks(&up_bytes, &up_cuts);
        let mut down_chunks = chunks(&down_bytes, &down_cuts);
        let (client, backend) = (Stream::default(), Stream::default());
        if limited_room {
            client.0.borrow_mut().room = Some(0);
            backend.0.borrow_mut().room = Some(0);
        }
        let (metrics, shutdown, ctx, session) = (
            Metrics::new(),
            Shutdown::new(),
            ctx(),
            session(WebSocketLimits::default()),
        );
        let (mut c, mut b) = (client.clone(), backend.clone());
        let mut relay = pin!(relay(&mut c, &mut b, &session, &ctx, &metrics, &shutdown));
        let mut driver = Driver::new();
        prop_assert!(driver.run(relay.as_mut()).is_none());
        let (mut up_released, mut down_released) = (0, 0);
        let mut end = None;

        let script = actions.into_iter().chain(std::iter::repeat_n(Action::Next(true), up_chunks.len())).chain(std::iter::repeat_n(Action::Next(false), down_chunks.len()));
        for action in script {
            match action {
                Action::Next(true) => if let Some(chunk) = up_chunks.pop_front() {
                    up_released += chunk.len();
                    client.release(&chunk);
                },
                Action::Next(false) => if let Some(chunk) = down_chunks.pop_front() {
                    down_released += chunk.len();
                    backend.release(&chunk);
                },
                Action::Room(true, n) => backend.give_room(limited_room.then_some(n)),
                Action::Room(false, n) => client.give_room(limited_room.then_some(n)),
            }
            let polls = driver.polls;
            if let Some(done) = driver.run(relay.as_mut()) {
                end = Some(done);
            }
            prop_assert!(driver.polls <= polls + 1, "one poll per new input");
            let (to_backend, to_client) = (backend.written(), client.written());
            prop_assert!(up_bytes.starts_with(&to_backend), "client bytes out of order");
            prop_assert!(down_bytes.starts_with(&to_client), "backend bytes out of order");
            if !limited_room {
                prop_assert!(up_released - to_backend.len() <= MAX_CONTROL_FRAME);
                prop_assert!(down_released - to_client.len() <= MAX_CONTROL_FRAME);
            }
            if end.is_some() {
                break;
            }
        }
        if end.is_none() {
            backend.give_room(None);
            client.give_room(None);
            end = driver.run(relay.as_mut());
        }
        prop_assert_eq!(backend.written(), up_bytes);
        prop_assert_eq!(client.written(), down_bytes);
        let end = end.expect("the relay ends after both Closes");
        prop_assert_eq!(end.reason, EndReason::Closed);
        prop_assert!(client.0.borrow().shut && backend.0.borrow().shut);
    }
}
