//! Relay buffers, lent for the time bytes are in flight.
//!
//! A relay direction takes a buffer just before it reads and gives it back as soon as a read
//! would block with nothing left to write, so an idle connection — most long-lived
//! WebSockets, most of the time — holds no relay buffer at all. Buffers come from a small
//! per-thread free list: taking and giving back is a `Vec` pop and push, no allocation and
//! no lock, and a buffer never needs zeroing again.

use std::cell::RefCell;

/// Bytes per buffer: a TLS record's worth of plaintext (16 KiB) twice over, so a bulk
/// transfer moves in few syscalls.
pub const SIZE: usize = 32 * 1024;

/// Free buffers kept per worker thread; the rest are freed. Only directions that are moving
/// bytes right now hold one, so a few per thread cover the steady state.
const KEEP: usize = 32;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's free list, or a new one.
pub fn take() -> Box<[u8]> {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; SIZE].into_boxed_slice())
}

/// Returns a buffer to this thread's free list (tasks move between threads, and so do
/// buffers: each list stays bounded all the same).
pub fn give(buf: Box<[u8]>) {
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

/// A buffer slot that is empty while its direction is idle.
#[derive(Debug, Default)]
pub struct Slot(Option<Box<[u8]>>);

impl Slot {
    /// The buffer, taken from the free list if the slot is empty.
    pub fn get(&mut self) -> &mut [u8] {
        self.0.get_or_insert_with(take)
    }

    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Gives the buffer back; call only when it holds no bytes still needed.
    pub fn release(&mut self) {
        if let Some(buf) = self.0.take() {
            give(buf);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}
