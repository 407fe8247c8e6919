//! The WebSocket frame tracker under arbitrary bytes: never panics, the same events for any
//! chunking, boundaries where it says they are, and its own encoded control frames read back.
//! All of it lives in `fuzz_feed`, so the proptest in the tracker runs the same body.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sockgate::relay::websocket::tracker::fuzz_feed(data);
});
