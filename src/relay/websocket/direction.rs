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

use crate::metrics::Metrics;
use crate::relay::buffer::{self, Slot};
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
    /// Held only while bytes are in flight (see [`buffer`](crate::relay::buffer)).
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
