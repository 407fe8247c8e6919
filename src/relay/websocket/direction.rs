//! One direction of the WebSocket relay: frames one peer sends, relayed to the other as
//! they came, with the tracker stepped over them, and the gateway's own frames put in
//! between.
//!
//! To always be able to stop at a frame boundary, a direction holds back the bytes of an
//! incomplete frame header or control frame (at most [`MAX_CONTROL_FRAME`]) until they are
//! whole; data payload streams through as it arrives. The tracker is stepped to every frame
//! end (not only to events), so a run of frames without events (empty fragments) never piles
//! up behind a header cut by a read: the held-back bytes stay that one header or control
//! frame.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use prometheus::{Histogram, IntCounter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::io::buffer::{self, Slot};
use crate::metrics::Metrics;
use crate::relay::tcp::Flow;

use super::code;
use super::rate::Rate;
use super::tracker::{Event, MAX_CONTROL_FRAME, Tracker};

/// Per-direction message metrics, resolved once per connection.
pub(super) struct Meters {
    messages: IntCounter,
    sizes: Histogram,
}

impl Meters {
    pub(super) fn new(m: &Metrics, route: &str, direction: &str) -> Meters {
        Meters {
            messages: m
                .websocket_messages_total
                .with_label_values(&[route, direction]),
            sizes: m
                .websocket_message_size_bytes
                .with_label_values(&[route, direction]),
        }
    }
}

/// Where one direction's counts go: its bytes, as a TCP relay counts them, and its messages.
pub(super) struct Counters<'a> {
    pub(super) bytes: Flow<'a>,
    pub(super) messages: &'a AtomicU64,
    pub(super) meters: Meters,
}

/// A frame of the gateway's own, waiting for the next boundary of a direction.
struct Injected {
    frame: [u8; MAX_CONTROL_FRAME],
    len: usize,
    written: usize,
    close: bool,
}

/// One direction: frames sent by `reader`, relayed to the other peer.
pub(super) struct Direction {
    tracker: Tracker,
    /// Held only while bytes are in flight (see [`buffer`](crate::io::buffer)).
    buf: Slot,
    /// While the reader is silent: the held-back start of a frame (`buf[..end]`, at most
    /// one header or control frame), kept in an allocation of its own size so that a peer
    /// that sends a byte and stops pins that byte, not a relay buffer. Empty otherwise.
    tail: Box<[u8]>,
    /// Next byte to write.
    start: usize,
    /// Bytes before this may go out: whole frames, or data payload as it streams.
    safe: usize,
    /// Whether `safe` is a frame boundary, where a frame of the gateway's may go.
    safe_is_boundary: bool,
    /// Bytes before this were fed to the tracker.
    scan: usize,
    /// Bytes before this were read.
    end: usize,
    /// The reader went over a rate limit: what it sent up to the end of the frame or message
    /// that did is forwarded, everything after is read and dropped.
    refused: bool,
    eof: bool,
    /// Frames from the reader are dropped instead of forwarded: the writer already got the
    /// gateway's Close, or the reader broke the protocol.
    dropping: bool,
    /// Boxed: rare, and an idle connection should not carry 160 bytes for it.
    inject: Option<Box<Injected>>,
    need_flush: bool,
    /// The writer is gone; nothing more is written.
    writer_gone: bool,
    shut: bool,
}

/// Something a direction reports for the connection to act on.
#[derive(Debug)]
pub(super) enum Note {
    /// The reader sent a Close with this code (None: no code).
    Close(Option<u16>),
    /// The reader broke the protocol or a limit: close it with this code.
    Violation(u16, String),
    /// The reader's stream ended (EOF or error) without a Close.
    ReaderLost,
    /// Writing to the writer failed: that peer is gone.
    WriterLost,
    /// A data message went by (for the rate limit).
    Message,
    /// A Pong ended; its frame is `[start, scan)` and still held back.
    Pong { start: usize },
}

impl Direction {
    pub(super) fn new(tracker: Tracker) -> Self {
        Direction {
            tracker,
            buf: Slot::default(),
            tail: Box::default(),
            start: 0,
            safe: 0,
            safe_is_boundary: true,
            scan: 0,
            end: 0,
            refused: false,
            eof: false,
            dropping: false,
            inject: None,
            need_flush: false,
            writer_gone: false,
            shut: false,
        }
    }

    /// Queues a frame for the writer at the next boundary. A Close replaces a queued Ping;
    /// nothing is queued after a Close.
    pub(super) fn queue(&mut self, frame: [u8; MAX_CONTROL_FRAME], len: usize, close: bool) {
        if self.writer_gone || self.inject.as_ref().is_some_and(|q| q.close || !close) {
            return;
        }
        self.inject = Some(Box::new(Injected {
            frame,
            len,
            written: 0,
            close,
        }));
    }

    /// Puts a set-aside frame start back at the front of the relay buffer, where `scan`,
    /// `safe` and `end` expect it.
    fn restore_tail(&mut self) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.buf.get()[..tail.len()].copy_from_slice(&tail);
        }
    }

    /// Removes a held-back frame `[start, scan)` from the stream (a Pong the gateway answers
    /// for itself).
    pub(super) fn swallow(&mut self, start: usize) {
        let n = self.scan - start;
        self.buf.get().copy_within(self.scan..self.end, start);
        self.end -= n;
        self.scan = start;
        self.safe = start;
        self.safe_is_boundary = true;
    }

    /// The reader went over a rate limit at the frame end `scan` is at: what came before
    /// goes out (whole frames, so the gateway's Close can follow), what was read after it
    /// and everything the reader sends from here on is dropped.
    pub(super) fn refuse(&mut self) {
        debug_assert!(self.safe == self.scan && self.safe_is_boundary);
        self.refused = true;
        self.end = self.scan;
    }

    /// The payload of the control frame that just ended (a Pong's, to match against the
    /// gateway's ping).
    pub(super) fn control_payload(&self) -> &[u8] {
        self.tracker.control_payload()
    }

    /// The reader's Close goes to the writer as it came: a Close of the gateway's queued for
    /// the writer and not begun gives way to it, so the writer gets one Close.
    pub(super) fn withdraw_close(&mut self) {
        if self
            .inject
            .as_ref()
            .is_some_and(|i| i.close && i.written == 0)
        {
            self.inject = None;
        }
    }

    /// Whether what the reader sends is dropped rather than forwarded.
    pub(super) fn dropping(&self) -> bool {
        self.dropping
    }

    /// The writer's peer is gone: nothing more is written to it.
    pub(super) fn stop_writing(&mut self) {
        self.writer_gone = true;
    }

    /// Whether the gateway's ping waits for a boundary (its clock starts when it leaves).
    pub(super) fn ping_queued(&self) -> bool {
        self.inject.as_ref().is_some_and(|i| !i.close)
    }

    /// Scans what was read, one frame at a time, stopping at an event the connection must
    /// see, or at a boundary when a frame of the gateway's is waiting. Each whole frame
    /// becomes forwardable as soon as it has passed, so what stays held back is at most the
    /// one incomplete header or control frame at the end of what was read.
    fn scan(&mut self, counters: &Counters<'_>, mut frames: Option<&mut Rate>) -> Option<Note> {
        if self.refused || self.tracker.error().is_some() {
            // Nothing after a violation can be trusted or forwarded; what came before it
            // still goes out, then the gateway's Close.
            self.end = self.safe;
            self.scan = self.safe;
            return None;
        }
        // Read at most once per call, and only by the frame limit: frames scanned together
        // arrived together.
        let mut now = None;
        while self.scan < self.end {
            if self.inject.is_some() && self.safe_is_boundary && self.safe == self.scan {
                return None;
            }
            let before = self.safe;
            let step = self
                .tracker
                .step_frame(&self.buf.get()[self.scan..self.end]);
            self.scan += step.consumed;
            if self.tracker.forwardable() {
                self.safe = self.scan;
                self.safe_is_boundary = self.tracker.at_boundary();
            }
            if self.tracker.at_boundary()
                && !self.dropping
                && let Some(frames) = frames.as_deref_mut()
                && frames.over(*now.get_or_insert_with(Instant::now))
            {
                let reason = format!("more than {} frames per second", frames.max);
                self.refuse();
                return Some(Note::Violation(code::POLICY, reason));
            }
            match step.event {
                None | Some(Event::Ping { .. }) => {}
                Some(Event::Message { len, .. }) => {
                    counters.messages.fetch_add(1, Ordering::Relaxed);
                    counters.meters.messages.inc();
                    counters.meters.sizes.observe(len as f64);
                    return Some(Note::Message);
                }
                // The Pong's frame, exactly: stepped frame by frame and held back whole until
                // it ended here, it began where forwarding stopped before this step.
                Some(Event::Pong { .. }) => return Some(Note::Pong { start: before }),
                Some(Event::Close(close)) => return Some(Note::Close(close.code())),
                Some(Event::Error(error)) => {
                    // Drop the rest, including the held-back bytes of the offending frame.
                    self.end = self.safe;
                    self.scan = self.safe;
                    return Some(Note::Violation(error.close_code(), error.to_string()));
                }
            }
        }
        None
    }

    /// Moves bytes from `reader` to `writer` until both would block or there is a note.
    pub(super) fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        counters: &Counters<'_>,
        mut frames: Option<&mut Rate>,
        progressed: &mut bool,
    ) -> Poll<Note>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        self.restore_tail();
        loop {
            if let Some(note) = self.scan(counters, frames.as_deref_mut()) {
                return Poll::Ready(note);
            }

            // Write what may go out: forwarded bytes, then a frame of the gateway's at a
            // boundary.
            if self.writer_gone {
                self.start = self.safe;
                self.inject = None;
            }
            while self.start < self.safe {
                if self.dropping {
                    self.start = self.safe;
                    break;
                }
                match writer
                    .as_mut()
                    .poll_write(cx, &self.buf.get()[self.start..self.safe])
                {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.writer_gone = true;
                        return Poll::Ready(Note::WriterLost);
                    }
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.need_flush = true;
                        counters.bytes.add(n);
                        *progressed = true;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.start == self.safe
                && self.safe_is_boundary
                && let Some(injected) = self.inject.as_mut()
                && !self.writer_gone
            {
                while injected.written < injected.len {
                    match writer
                        .as_mut()
                        .poll_write(cx, &injected.frame[injected.written..injected.len])
                    {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            self.writer_gone = true;
                            return Poll::Ready(Note::WriterLost);
                        }
                        Poll::Ready(Ok(n)) => {
                            injected.written += n;
                            self.need_flush = true;
                            *progressed = true;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if injected.close {
                    // The writer has the gateway's Close: whatever the reader sends from
                    // here on (its own Close reply included) is not for it.
                    self.dropping = true;
                }
                self.inject = None;
                continue;
            }

            // Everything that may go out has gone; read more.
            if self.eof {
                return Poll::Pending;
            }
            if self.start > 0 {
                // Keep the held-back bytes of an incomplete header or control frame.
                self.buf.get().copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.scan -= self.start;
                self.safe -= self.start;
                self.start = 0;
            }
            if self.end == buffer::SIZE {
                // Unreachable: `scan` releases every whole frame, so at most one incomplete
                // header or control frame (131 bytes) is held back here. Should it happen
                // anyway, this direction ends as a violation: waiting for room that no
                // input can make would spin.
                self.start = 0;
                self.safe = 0;
                self.scan = 0;
                self.end = 0;
                self.eof = true;
                self.dropping = true;
                return Poll::Ready(Note::Violation(
                    code::INTERNAL_ERROR,
                    "held-back bytes filled the relay buffer".to_owned(),
                ));
            }
            let mut rb = ReadBuf::new(&mut self.buf.get()[self.end..]);
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                        return Poll::Ready(Note::ReaderLost);
                    }
                    self.end += n;
                    *progressed = true;
                }
                Poll::Ready(Err(_)) => {
                    self.eof = true;
                    return Poll::Ready(Note::ReaderLost);
                }
                Poll::Pending => {
                    if self.end == 0 {
                        // Idle with nothing held back: give the buffer back.
                        self.buf.release();
                    } else if self.start == 0 && self.end <= MAX_CONTROL_FRAME {
                        // Only an incomplete frame start is held back: keep it apart.
                        self.tail = self.buf.get()[..self.end].into();
                        self.buf.release();
                    }
                    if self.need_flush && !self.writer_gone {
                        match writer.as_mut().poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(_)) => {
                                self.writer_gone = true;
                                return Poll::Ready(Note::WriterLost);
                            }
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Flushes and ends the writer's send side (TLS close_notify, then FIN).
    pub(super) fn poll_shutdown<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
    ) -> Poll<()> {
        if self.shut || self.writer_gone {
            return Poll::Ready(());
        }
        if (self.start < self.safe && !self.dropping) || self.inject.is_some() {
            // A forwarded Close reply or the gateway's Close still to go; poll_move writes
            // them first.
            return Poll::Pending;
        }
        match writer.as_mut().poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.shut = true;
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Waker;

    use super::*;
    use crate::relay::websocket::tracker::{self, Extensions, Role};

    const KEY: [u8; 4] = [0x5A, 0x01, 0xC3, 0x7E];

    /// A frame as a client sends it (masked with `KEY`).
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend((n as u16).to_be_bytes());
            }
        }
        out.extend(KEY);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        out
    }

    /// Reads return the chunks the test released, then Pending (or EOF once `eof`).
    #[derive(Default)]
    struct Reads {
        chunks: VecDeque<Vec<u8>>,
        eof: bool,
    }

    impl AsyncRead for Reads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let Some(chunk) = self.chunks.pop_front() else {
                return if self.eof {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.push_front(chunk[n..].to_vec());
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Where one direction's counts go, owned by the test.
    struct Sink {
        total: AtomicU64,
        counter: IntCounter,
        messages: AtomicU64,
        metrics: Metrics,
    }

    impl Sink {
        fn new() -> Sink {
            Sink {
                total: AtomicU64::new(0),
                counter: IntCounter::new("bytes", "bytes").unwrap(),
                messages: AtomicU64::new(0),
                metrics: Metrics::new(),
            }
        }

        fn counters(&self) -> Counters<'_> {
            Counters {
                bytes: Flow {
                    total: &self.total,
                    counter: &self.counter,
                },
                messages: &self.messages,
                meters: Meters::new(&self.metrics, "r", "client_to_backend"),
            }
        }
    }

    /// A client-to-backend direction, its input, its output and its counts.
    struct Test {
        direction: Direction,
        reads: Reads,
        written: Vec<u8>,
        sink: Sink,
        frames: Option<Rate>,
    }

    impl Test {
        fn new() -> Test {
            let extensions = Extensions {
                permessage_deflate: false,
            };
            Test {
                direction: Direction::new(Tracker::new(Role::Client, extensions)),
                reads: Reads::default(),
                written: Vec::new(),
                sink: Sink::new(),
                frames: None,
            }
        }

        fn release(&mut self, bytes: &[u8]) {
            self.reads.chunks.push_back(bytes.to_vec());
        }

        /// One call of `poll_move`.
        fn poll(&mut self) -> Poll<Note> {
            let mut cx = Context::from_waker(Waker::noop());
            let counters = self.sink.counters();
            let mut progressed = false;
            self.direction.poll_move(
                &mut cx,
                Pin::new(&mut self.reads),
                Pin::new(&mut self.written),
                &counters,
                self.frames.as_mut(),
                &mut progressed,
            )
        }

        /// Polls until the direction would block; the notes it reported on the way.
        fn run(&mut self) -> Vec<Note> {
            let mut notes = Vec::new();
            while let Poll::Ready(note) = self.poll() {
                notes.push(note);
            }
            notes
        }

        /// Bytes read and not yet written: set apart while the reader is quiet, in the
        /// relay buffer otherwise.
        fn held_back(&self) -> usize {
            let d = &self.direction;
            if d.tail.is_empty() {
                d.end - d.start
            } else {
                d.tail.len()
            }
        }
    }

    fn ping(payload: &[u8]) -> Vec<u8> {
        let mut out = [0u8; MAX_CONTROL_FRAME];
        let len = tracker::encode_ping(payload, None, &mut out).unwrap();
        out[..len].to_vec()
    }

    fn queue_ping(direction: &mut Direction, payload: &[u8]) {
        let mut out = [0u8; MAX_CONTROL_FRAME];
        let len = tracker::encode_ping(payload, None, &mut out).unwrap();
        direction.queue(out, len, false);
    }

    fn queue_close(direction: &mut Direction, code: u16) -> Vec<u8> {
        let mut out = [0u8; MAX_CONTROL_FRAME];
        let len = tracker::encode_close(code, "", None, &mut out);
        direction.queue(out, len, true);
        out[..len].to_vec()
    }

    #[test]
    fn whole_frames_go_out_and_a_cut_header_waits_apart_from_the_relay_buffer() {
        let mut t = Test::new();
        let (ping, text, next) = (
            frame(0x89, b"hello"),
            frame(0x81, b"hi!"),
            frame(0x81, b"later"),
        );
        t.release(&[&ping[..], &text, &next[..3]].concat());
        assert!(matches!(t.run()[..], [Note::Message]));
        assert_eq!(t.written, [&ping[..], &text].concat());
        // The reader went quiet with 3 bytes of a header: they wait in an allocation of
        // their own size, and the relay buffer went back to the pool.
        assert_eq!(t.direction.tail, next[..3].into());
        assert_eq!(t.held_back(), 3);

        t.release(&next[3..]);
        assert!(matches!(t.run()[..], [Note::Message]));
        assert_eq!(t.written, [&ping[..], &text, &next].concat());
        assert!(t.direction.tail.is_empty());
        assert_eq!(t.sink.messages.load(Ordering::Relaxed), 2);
        assert_eq!(t.sink.total.load(Ordering::Relaxed), t.written.len() as u64);
        assert_eq!(t.sink.counter.get(), t.written.len() as u64);
    }

    #[test]
    fn data_payload_streams_while_a_control_frame_waits_until_whole() {
        let mut t = Test::new();
        let text = frame(0x81, &[b'a'; 1000]);
        t.release(&text[..500]);
        assert!(t.run().is_empty());
        assert_eq!(t.written, text[..500], "payload goes out as it arrives");

        let ping = frame(0x89, &[b'p'; 125]);
        assert_eq!(ping.len(), MAX_CONTROL_FRAME);
        t.release(&[&text[500..], &ping[..130]].concat());
        assert!(matches!(t.run()[..], [Note::Message]));
        assert_eq!(t.written, text, "nothing of the Ping before it is whole");
        assert_eq!(t.held_back(), 130);
        assert!(t.held_back() <= MAX_CONTROL_FRAME);

        t.release(&ping[130..]);
        assert!(t.run().is_empty());
        assert_eq!(t.written, [&text[..], &ping].concat());
    }

    #[test]
    fn a_run_of_empty_fragments_holds_back_only_the_last_cut_header() {
        let mut t = Test::new();
        let mut burst = frame(0x01, b"");
        for _ in 1..1000 {
            burst.extend(frame(0x00, b""));
        }
        let last = frame(0x80, b"end");
        t.release(&[&burst[..], &last[..4]].concat());
        assert!(t.run().is_empty());
        assert_eq!(t.written, burst, "every whole fragment went out");
        assert_eq!(t.held_back(), 4);
    }

    #[test]
    fn a_queued_frame_goes_between_frames_never_inside_one() {
        let mut t = Test::new();
        let (long, short) = (frame(0x81, &[b'a'; 300]), frame(0x82, b"x"));
        t.release(&long[..100]);
        assert!(t.run().is_empty());
        assert_eq!(t.written, long[..100]);

        queue_ping(&mut t.direction, b"gw");
        assert!(t.direction.ping_queued());
        assert!(t.run().is_empty(), "no input: the Ping waits");
        assert_eq!(t.written, long[..100], "not inside the frame in flight");

        t.release(&[&long[100..], &short].concat());
        assert!(matches!(t.run()[..], [Note::Message, Note::Message]));
        assert_eq!(t.written, [&long[..], &ping(b"gw"), &short].concat());
        assert!(!t.direction.ping_queued());
    }

    #[test]
    fn a_close_replaces_a_queued_ping_and_is_the_last_frame_the_writer_gets() {
        let mut t = Test::new();
        queue_ping(&mut t.direction, b"gw");
        let close = queue_close(&mut t.direction, 1001);
        // Neither a Ping nor a second Close after a Close.
        queue_ping(&mut t.direction, b"gw");
        queue_close(&mut t.direction, 1012);
        assert!(t.run().is_empty());
        assert_eq!(t.written, close);
        assert!(t.direction.dropping());

        // What the reader sends from here on (its Close reply too) is read and dropped.
        t.release(
            &[
                &frame(0x81, b"late")[..],
                &frame(0x88, &1001u16.to_be_bytes()),
            ]
            .concat(),
        );
        assert!(matches!(
            t.run()[..],
            [Note::Message, Note::Close(Some(1001))]
        ));
        assert_eq!(t.written, close);
    }

    #[test]
    fn a_peers_close_withdraws_only_a_gateway_close_not_begun() {
        let mut t = Test::new();
        queue_close(&mut t.direction, 1001);
        t.direction.withdraw_close();
        assert!(t.run().is_empty());
        assert!(t.written.is_empty());
        assert!(!t.direction.dropping());

        queue_ping(&mut t.direction, b"gw");
        t.direction.withdraw_close();
        assert!(t.run().is_empty());
        assert_eq!(t.written, ping(b"gw"));
    }

    #[test]
    fn a_swallowed_pong_removes_only_its_own_bytes() {
        let mut t = Test::new();
        let (fragment, pong, last) = (
            frame(0x01, b"part"),
            frame(0x8A, &[7; 8]),
            frame(0x80, b"end"),
        );
        t.release(&[&fragment[..], &pong, &last].concat());
        let Poll::Ready(Note::Pong { start }) = t.poll() else {
            panic!("the Pong is reported");
        };
        assert_eq!(start, fragment.len());
        assert_eq!(t.direction.control_payload(), [7; 8]);
        t.direction.swallow(start);
        assert!(matches!(t.run()[..], [Note::Message]));
        assert_eq!(t.written, [&fragment[..], &last].concat());
        assert_eq!(t.sink.total.load(Ordering::Relaxed), t.written.len() as u64);
    }

    #[test]
    fn a_pong_not_swallowed_goes_through() {
        let mut t = Test::new();
        let pong = frame(0x8A, b"app");
        t.release(&pong);
        assert!(matches!(t.run()[..], [Note::Pong { start: 0 }]));
        assert_eq!(t.written, pong);
    }

    #[test]
    fn a_protocol_violation_drops_the_offending_frame_and_all_after_it() {
        let mut t = Test::new();
        let text = frame(0x81, b"ok");
        // Unmasked, from a client (RFC 6455 §5.1).
        let unmasked = [0x81, 0x02, b'n', b'o'];
        t.release(&[&text[..], &unmasked, &frame(0x81, b"after")].concat());
        let notes = t.run();
        assert!(
            matches!(notes[..], [Note::Message, Note::Violation(1002, _)]),
            "{notes:?}"
        );
        assert_eq!(t.written, text);
        t.release(&frame(0x81, b"more"));
        assert!(t.run().is_empty());
        assert_eq!(t.written, text);
    }

    #[test]
    fn over_the_frame_limit_the_frame_that_went_over_is_the_last_forwarded() {
        let mut t = Test::new();
        t.frames = Some(Rate::new(2));
        let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(0x82, &[i])).collect();
        t.release(&frames.concat());
        let notes = t.run();
        assert!(
            matches!(
                notes[..],
                [Note::Message, Note::Message, Note::Violation(1008, _)]
            ),
            "{notes:?}"
        );
        assert_eq!(t.written, frames[..3].concat());
    }

    #[test]
    fn the_readers_end_is_reported_once_its_bytes_are_out() {
        let mut t = Test::new();
        let text = frame(0x81, b"bye");
        t.release(&text);
        t.reads.eof = true;
        assert!(matches!(t.run()[..], [Note::Message, Note::ReaderLost]));
        assert_eq!(t.written, text);
    }
}
