//! Relay buffers, lent for the time bytes are in flight.
//!
//! A relay direction takes a buffer just before it reads and gives it back as soon as a read
//! would block with nothing left to write, so an idle connection — most long-lived
//! WebSockets, most of the time — holds no relay buffer at all. Buffers come from a small
//! per-thread free list: taking and giving back is a `Vec` pop and push, no allocation and
//! no lock, and a buffer never needs zeroing again.
//!
//! Two sizes, each with its own list: [`Plain`] buffers hold what a relay reads, [`Sealed`]
//! ones hold that much as TLS records (see `io::tls`), so one relay read is one
//! TLS write.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::thread::LocalKey;

/// Bytes per plain buffer: a TLS record's worth of plaintext (16 KiB) twice over, so a bulk
/// transfer moves in few syscalls.
pub const SIZE: usize = 32 * 1024;

/// Bytes per sealed buffer: [`SIZE`] bytes of plaintext as TLS records, with room for their
/// headers and tags (at most 29 bytes a record among the suites offered).
pub const SEALED_SIZE: usize = SIZE + 1024;

/// Free buffers kept per worker thread and size; the rest are freed. Only directions that
/// are moving bytes right now hold one, so a few per thread cover the steady state.
const KEEP: usize = 32;

type FreeList = RefCell<Vec<Box<[u8]>>>;

thread_local! {
    static FREE: FreeList = const { RefCell::new(Vec::new()) };
    static FREE_SEALED: FreeList = const { RefCell::new(Vec::new()) };
}

/// A buffer size and its per-thread free list.
pub trait Pool {
    const SIZE: usize;
    fn free_list() -> &'static LocalKey<FreeList>;
}

/// Relay buffers: [`SIZE`] bytes.
#[derive(Debug)]
pub struct Plain;

/// TLS record buffers: [`SEALED_SIZE`] bytes.
#[derive(Debug)]
pub struct Sealed;

impl Pool for Plain {
    const SIZE: usize = SIZE;
    fn free_list() -> &'static LocalKey<FreeList> {
        &FREE
    }
}

impl Pool for Sealed {
    const SIZE: usize = SEALED_SIZE;
    fn free_list() -> &'static LocalKey<FreeList> {
        &FREE_SEALED
    }
}

/// A buffer from this thread's free list, or a new one.
pub fn take<P: Pool>() -> Box<[u8]> {
    P::free_list()
        .with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; P::SIZE].into_boxed_slice())
}

/// Returns a buffer to this thread's free list (tasks move between threads, and so do
/// buffers: each list stays bounded all the same).
pub fn give<P: Pool>(buf: Box<[u8]>) {
    P::free_list().with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

/// A buffer slot that is empty while its direction is idle.
#[derive(Debug)]
pub struct Slot<P: Pool = Plain>(Option<Box<[u8]>>, PhantomData<P>);

impl<P: Pool> Default for Slot<P> {
    fn default() -> Self {
        Slot(None, PhantomData)
    }
}

impl<P: Pool> Slot<P> {
    /// The buffer, taken from the free list if the slot is empty.
    pub fn get(&mut self) -> &mut [u8] {
        self.0.get_or_insert_with(take::<P>)
    }

    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Gives the buffer back; call only when it holds no bytes still needed.
    pub fn release(&mut self) {
        if let Some(buf) = self.0.take() {
            give::<P>(buf);
        }
    }
}

impl<P: Pool> Drop for Slot<P> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The largest UDP datagram (its length field is 16 bits).
pub const DATAGRAM_SIZE: usize = 65_535;

thread_local! {
    static DATAGRAM: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's datagram buffer ([`DATAGRAM_SIZE`] bytes, allocated on first
/// use). Every UDP session of a worker receives into the same one, so an idle session holds
/// no buffer. `f` must not run this again (the buffer is lent once at a time).
pub fn with_datagram<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    DATAGRAM.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.is_empty() {
            buf.resize(DATAGRAM_SIZE, 0);
        }
        f(&mut buf)
    })
}
