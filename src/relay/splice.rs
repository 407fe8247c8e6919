//! Zero-copy relay for plain TCP on both sides (Linux): `splice(2)` moves bulk bytes from one
//! socket into a pipe and from the pipe into the other socket without copying them through
//! user space; small pieces are copied (see [`Direction`]). Same contract as [`tcp::relay`](super::tcp::relay): half-close, idle timer,
//! cancellation, and byte counts as they flow.
//!
//! Pipes are lent like relay buffers: a direction takes one from a per-thread free list when
//! its socket turns readable and gives it back once it is empty and the socket would block,
//! so an idle connection holds no pipe and costs no extra file descriptors.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::io::Socket;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::time::Instant;

use super::Cancel;
use super::tcp::{Flow, Held, RelayEnd, idle_expired};
use crate::error::Side;
use crate::io::buffer;

/// Bytes a lent pipe can hold, asked of the kernel (the default is 64 KiB).
const PIPE_SIZE: usize = 512 * 1024;

/// Bytes moved per `splice` call at most: a full pipe.
const CHUNK: usize = PIPE_SIZE;

/// Free pipes kept per worker thread.
const KEEP: usize = 32;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = FREE.with(|free| free.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // A larger pipe moves a bulk transfer in fewer splice calls. Pages are only taken as
        // bytes arrive, so an empty pooled pipe costs no more; the kernel may refuse the size
        // (fs.pipe-max-size), and the default 64 KiB then stays.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        let pipe = Pipe { read, write };
        Ok(pipe)
    }

    /// Back to the free list; only an empty pipe may be given back.
    fn give(self) {
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                free.push(self);
            }
        });
    }
}

/// Moves up to `len` bytes between a socket and a pipe without blocking; null offsets,
/// as sockets and pipes require.
fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

/// One direction: `reader`'s socket to the other socket, by copy while the bytes come in
/// small pieces and by splice through a pipe once they come in bulk.
///
/// Why both: for a 64-byte request a copy is two syscalls (a short read tells tokio the
/// socket is drained, so no third read hits `EAGAIN`) where a splice is three plus a pipe
/// page; for a bulk stream the splice saves copying every byte twice. A read that fills the
/// whole relay buffer switches the direction to splice; a splice that moves less than half a
/// buffer switches it back.
struct Direction {
    reader: Side,
    splicing: bool,
    /// `pipe2` failed (the open-files limit, most likely): copy for the rest of the
    /// connection rather than end it or ask again on every bulk read.
    no_pipes: bool,
    held: Held,
    pipe: Option<Pipe>,
    in_pipe: usize,
    eof: bool,
    done: bool,
}

/// A splice that moves less than this goes back to copying.
const BULK: usize = buffer::SIZE / 2;

impl Direction {
    fn new(reader: Side) -> Self {
        Direction {
            reader,
            splicing: false,
            no_pipes: false,
            held: Held::default(),
            pipe: None,
            in_pipe: 0,
            eof: false,
            done: false,
        }
    }

    fn writer(&self) -> Side {
        match self.reader {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// `other_done`: the opposite direction has ended, so this one's end is the relay's.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Socket,
        dst: &mut Socket,
        other_done: bool,
        flow: Flow<'_>,
        progressed: &mut bool,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        loop {
            let writer_side = self.writer();
            ready!(self.held.poll_write_out(
                cx,
                Pin::new(&mut *dst),
                writer_side,
                flow,
                progressed
            ))?;
            while self.in_pipe > 0 {
                ready!(dst.poll_write_ready(cx)).map_err(|e| (self.writer(), e))?;
                let Some(pipe) = &self.pipe else { break };
                match dst.try_io(Interest::WRITABLE, || {
                    splice(&pipe.read, &*dst, self.in_pipe)
                }) {
                    Ok(n) => {
                        self.in_pipe -= n;
                        flow.add(n);
                        *progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err((self.writer(), e))),
                }
            }
            if self.eof {
                self.idle();
                // The reader's FIN, passed on: the writer's peer reads EOF, this direction
                // ends, the other keeps going. When the other has ended too, the relay
                // returns and both sockets are closed at once, and the close sends that FIN
                // (nothing is left unread on `dst`, whose EOF was read, so it is a FIN, not
                // a reset): no separate `shutdown(2)`.
                if !other_done {
                    let _ = socket2::SockRef::from(&*dst).shutdown(std::net::Shutdown::Write);
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.splicing {
                if src.poll_read_ready(cx).is_pending() {
                    self.idle();
                    return Poll::Pending;
                }
                if self.pipe.is_none() {
                    match Pipe::take() {
                        Ok(pipe) => self.pipe = Some(pipe),
                        Err(error) => {
                            tracing::debug!(%error, "no pipe for splice; this direction copies instead");
                            self.no_pipes = true;
                            self.splicing = false;
                            continue;
                        }
                    }
                }
                let Some(pipe) = &self.pipe else { continue };
                match src.try_io(Interest::READABLE, || splice(&*src, &pipe.write, CHUNK)) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        self.in_pipe = n;
                        self.splicing = n >= BULK;
                        *progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err((self.reader, e))),
                }
            } else {
                match self.held.poll_read_in(cx, Pin::new(&mut *src)) {
                    Poll::Ready(Ok(0)) => self.eof = true,
                    Poll::Ready(Ok(n)) => {
                        self.splicing = n == buffer::SIZE && !self.no_pipes;
                        *progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((self.reader, e))),
                    Poll::Pending => {
                        self.idle();
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Nothing in flight: the buffer and the empty pipe go back to their free lists until
    /// bytes come.
    fn idle(&mut self) {
        self.held.buf.release();
        if let Some(pipe) = self.pipe.take() {
            pipe.give();
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        // A pipe with bytes still in it is closed rather than reused.
        if self.in_pipe == 0
            && let Some(pipe) = self.pipe.take()
        {
            pipe.give();
        }
    }
}

/// Relays between two plain TCP sockets until both directions end, one fails, nothing moves
/// for `idle_timeout`, or `cancel` fires.
pub async fn relay(
    client: &mut Socket,
    backend: &mut Socket,
    up: Flow<'_>,
    down: Flow<'_>,
    idle_timeout: Duration,
    cancel: Cancel<'_>,
) -> RelayEnd {
    let mut c2b = Direction::new(Side::Client);
    let mut b2c = Direction::new(Side::Backend);
    let mut first_eof = None;
    let mut cancelled = pin!(cancel.cancelled());
    let mut wakeups = 0;
    // One clock read for both.
    let mut last_progress = Instant::now();
    let mut idle = pin!(tokio::time::sleep_until(last_progress + idle_timeout));

    poll_fn(|cx| {
        if cancel.poll(cancelled.as_mut(), &mut wakeups, cx) {
            return Poll::Ready(RelayEnd::Cancelled);
        }
        let mut progressed = false;
        for reader in [Side::Client, Side::Backend] {
            let (dir, other_done, flow, src, dst) = match reader {
                Side::Client => (&mut c2b, b2c.done, up, &mut *client, &mut *backend),
                Side::Backend => (&mut b2c, c2b.done, down, &mut *backend, &mut *client),
            };
            if dir.done {
                continue;
            }
            let result = dir.poll_move(cx, src, dst, other_done, flow, &mut progressed);
            if dir.eof && first_eof.is_none() {
                first_eof = Some(dir.reader);
            }
            if let Poll::Ready(Err((side, error))) = result {
                return Poll::Ready(RelayEnd::Error { side, error });
            }
        }
        if c2b.done && b2c.done {
            return Poll::Ready(RelayEnd::Closed {
                first: first_eof.unwrap_or(Side::Client),
            });
        }
        if progressed {
            last_progress = Instant::now();
        }
        if idle_expired(idle.as_mut(), cx, last_progress + idle_timeout) {
            return Poll::Ready(RelayEnd::Idle);
        }
        Poll::Pending
    })
    .await
}
