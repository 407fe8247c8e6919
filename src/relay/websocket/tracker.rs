//! WebSocket frame tracker (RFC 6455 §5): the relay's view of where frames and messages end.
//!
//! Part of the relay stage. The WebSocket relay forwards each direction's bytes exactly as they
//! came (masking, extensions and compression untouched) and feeds every chunk it forwards to one
//! [`Tracker`] for that direction. The tracker follows frame headers only, so the gateway knows
//! message boundaries, counts messages, sees Close codes, enforces a message size limit, and
//! knows where it may put a control frame of its own ([`Tracker::at_boundary`],
//! [`Tracker::next_boundary`]); [`encode_close`], [`encode_ping`] and [`encode_pong`] build
//! those frames.
//!
//! # Contract
//! - Input is one direction of the connection after the HTTP upgrade, in any chunking, down to
//!   one byte at a time. The same bytes give the same [`Event`]s at the same stream offsets
//!   however they are cut.
//! - Work is proportional to the number of frame headers. Payload bytes of data, Ping and Pong
//!   frames are skipped by count and never read; only a Close payload (at most 125 bytes) is
//!   copied into a fixed array and unmasked, to read its code. Nothing allocates, no message is
//!   buffered, and partial state is at most one header (14 bytes).
//! - The first violation is reported once, as [`Event::Error`]. The tracker then stays failed:
//!   it swallows further input without events and is never again [at a
//!   boundary](Tracker::at_boundary), because the rest of the stream has no frames the gateway
//!   can trust. [`FrameError::close_code`] gives the code to close with.
//! - Sizes are the payload lengths declared on the wire. With permessage-deflate they count
//!   compressed bytes: the tracker never inflates.
//! - Not checked, by choice: UTF-8 of text messages and Close reasons. RFC 6455 §8.1 puts that
//!   on the endpoints, and checking text would mean reading every payload byte. Nor the
//!   payload format of an extension (RFC 7692 §7.2), for the same reason.
//! - Never panics on any input; length arithmetic is checked because a 64-bit length field is
//!   attacker-chosen.

use std::fmt;

/// Longest control frame on the wire: 2 header bytes, a 4-byte mask key and the 125-byte
/// payload limit of RFC 6455 §5.5.
pub const MAX_CONTROL_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// Longest Close reason: the 125-byte control payload less the 2-byte code (RFC 6455 §5.5.1).
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less".
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header: 2 bytes, a 64-bit extended length and a mask key (RFC 6455 §5.2).
const MAX_HEADER: usize = 2 + 8 + 4;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Which peer sends the frames a tracker follows; this decides the masking rule (RFC 6455
/// §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Frames sent by the client: every frame must be masked.
    Client,
    /// Frames sent by the backend (the WebSocket server): no frame may be masked.
    Server,
}

/// Extensions negotiated in the handshake, as far as they change the frame rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Extensions {
    /// RFC 7692 permessage-deflate: makes RSV1 legal, on the first frame of a data message only.
    pub permessage_deflate: bool,
}

/// The kind of a data message, from the opcode of its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Text,
    Binary,
}

/// What the tracker saw. Every event except [`Event::Error`] is reported at the end of the
/// frame that completes it, which is always a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The last frame (FIN set) of a data message ended.
    Message {
        kind: MessageKind,
        /// RSV1 was set on the first frame: the payload is permessage-deflate compressed.
        compressed: bool,
        /// Payload bytes across all frames of the message, as declared on the wire.
        len: u64,
        /// Number of frames the message was sent in, at least 1.
        frames: u64,
    },
    /// A Ping ended; `len` is its payload length.
    Ping { len: u8 },
    /// A Pong ended; `len` is its payload length.
    Pong { len: u8 },
    /// A Close ended, with a valid code or none. The sender must send no data after it.
    Close(Close),
    /// The stream broke the protocol or a limit; the tracker is failed from here on.
    /// Reported right after the byte that shows it: the second header byte, the end of the
    /// extended length, or the end of a Close payload. Earlier bytes of that frame's header
    /// may have come in an earlier chunk.
    Error(FrameError),
}

/// The content of a Close frame (RFC 6455 §5.5.1), copied into a fixed array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Close {
    code: Option<u16>,
    reason_len: u8,
    reason: [u8; MAX_CLOSE_REASON],
}

impl Close {
    /// `payload` is the unmasked Close payload after its code, so at most 123 bytes.
    fn new(code: Option<u16>, payload: &[u8]) -> Self {
        let mut reason = [0; MAX_CLOSE_REASON];
        let len = payload.len().min(MAX_CLOSE_REASON);
        reason[..len].copy_from_slice(&payload[..len]);
        Self {
            code,
            reason_len: len as u8,
            reason,
        }
    }

    /// The status code, or `None` for an empty Close (which stands for 1005, "no status",
    /// RFC 6455 §7.4.1). A code that is present has passed [`is_valid_close_code`].
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    /// The reason exactly as sent, unmasked.
    pub fn reason_bytes(&self) -> &[u8] {
        &self.reason[..usize::from(self.reason_len)]
    }

    /// The reason as text, or `None` if the peer sent bytes that are not UTF-8.
    pub fn reason(&self) -> Option<&str> {
        std::str::from_utf8(self.reason_bytes()).ok()
    }
}

/// Why the tracker stopped following a stream. Every variant but
/// [`MessageTooBig`](FrameError::MessageTooBig) is a protocol error: the peer must be closed
/// with [`close_code`](FrameError::close_code) and nothing after the offending header is a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameError {
    /// A reserved bit is set that no negotiated extension defines (RFC 6455 §5.2): RSV2 or RSV3
    /// ever, or RSV1 without permessage-deflate. `rsv` holds the three bits, RSV1 highest.
    ReservedBits { rsv: u8 },
    /// RSV1 on a continuation frame: only the first frame of a message carries the compressed
    /// bit (RFC 7692 §6).
    CompressedContinuation,
    /// RSV1 on a control frame, which are never compressed (RFC 7692 §6).
    CompressedControl { opcode: u8 },
    /// An opcode RFC 6455 §5.2 reserves (0x3–0x7, 0xB–0xF).
    UnknownOpcode { opcode: u8 },
    /// A control frame without FIN: control frames are never fragmented (RFC 6455 §5.5).
    FragmentedControl { opcode: u8 },
    /// A control frame whose 7-bit length field is over 125 (RFC 6455 §5.5).
    ControlTooLong { opcode: u8, len: u8 },
    /// A frame from the client without a mask (RFC 6455 §5.1).
    UnmaskedClientFrame,
    /// A frame from the server with a mask (RFC 6455 §5.1).
    MaskedServerFrame,
    /// A continuation frame with no fragmented message in progress (RFC 6455 §5.4).
    ContinuationWithoutMessage,
    /// A Text or Binary frame while a fragmented message still waits for its continuation
    /// frames: messages do not interleave (RFC 6455 §5.4).
    DataInsideMessage { opcode: u8 },
    /// A data frame after the sender's Close (RFC 6455 §5.5.1).
    DataAfterClose,
    /// A length in a longer encoding than needed; RFC 6455 §5.2 says "the minimal number of
    /// bytes MUST be used".
    NonMinimalLength { len: u64 },
    /// A 64-bit length with its most significant bit set (RFC 6455 §5.2).
    LengthTopBit,
    /// A Close payload of one byte: a code needs two (RFC 6455 §5.5.1).
    CloseTooShort,
    /// A Close code that must not be sent (RFC 6455 §7.4), see [`is_valid_close_code`].
    InvalidCloseCode { code: u16 },
    /// The message in progress declares more payload than the configured limit; detected from
    /// the frame header, before its payload. `size` saturates at `u64::MAX`; without a
    /// configured limit, `limit` is `u64::MAX` and this reports a sum that overflowed.
    MessageTooBig { size: u64, limit: u64 },
}

impl FrameError {
    /// The Close code to send the peer: 1009 "message too big" for the size limit, 1002
    /// "protocol error" for everything else (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::MessageTooBig { .. } => 1009,
            FrameError::ReservedBits { .. }
            | FrameError::CompressedContinuation
            | FrameError::CompressedControl { .. }
            | FrameError::UnknownOpcode { .. }
            | FrameError::FragmentedControl { .. }
            | FrameError::ControlTooLong { .. }
            | FrameError::UnmaskedClientFrame
            | FrameError::MaskedServerFrame
            | FrameError::ContinuationWithoutMessage
            | FrameError::DataInsideMessage { .. }
            | FrameError::DataAfterClose
            | FrameError::NonMinimalLength { .. }
            | FrameError::LengthTopBit
            | FrameError::CloseTooShort
            | FrameError::InvalidCloseCode { .. } => 1002,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ReservedBits { rsv } => {
                write!(
                    f,
                    "reserved bits {rsv:#05b} set without an extension that defines them"
                )
            }
            FrameError::CompressedContinuation => {
                f.write_str("RSV1 (compressed) set on a continuation frame")
            }
            FrameError::CompressedControl { opcode } => {
                write!(f, "RSV1 (compressed) set on control frame {opcode:#x}")
            }
            FrameError::UnknownOpcode { opcode } => write!(f, "reserved opcode {opcode:#x}"),
            FrameError::FragmentedControl { opcode } => {
                write!(f, "control frame {opcode:#x} without FIN")
            }
            FrameError::ControlTooLong { opcode, len } => {
                write!(
                    f,
                    "control frame {opcode:#x} with length field {len}, over 125"
                )
            }
            FrameError::UnmaskedClientFrame => f.write_str("unmasked frame from the client"),
            FrameError::MaskedServerFrame => f.write_str("masked frame from the server"),
            FrameError::ContinuationWithoutMessage => {
                f.write_str("continuation frame with no message in progress")
            }
            FrameError::DataInsideMessage { opcode } => {
                write!(
                    f,
                    "data frame {opcode:#x} inside an unfinished fragmented message"
                )
            }
            FrameError::DataAfterClose => f.write_str("data frame after Close"),
            FrameError::NonMinimalLength { len } => {
                write!(f, "length {len} not in its minimal encoding")
            }
            FrameError::LengthTopBit => f.write_str("64-bit length with the top bit set"),
            FrameError::CloseTooShort => f.write_str("Close payload of 1 byte"),
            FrameError::InvalidCloseCode { code } => write!(f, "invalid Close code {code}"),
            FrameError::MessageTooBig { size, limit } => {
                write!(
                    f,
                    "message of {size} bytes or more exceeds the limit of {limit}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Whether a Close frame may carry `code` (RFC 6455 §7.4): the defined codes 1000–1003 and
/// 1007–1011, the IANA-registered 1012–1014, and 3000–4999 for libraries and applications.
/// 1004 is reserved; 1005, 1006 and 1015 stand for conditions and never go on the wire; the
/// rest of 0–2999 is reserved for future standards.
pub const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What one [`Tracker::step`] did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the chunk consumed; when `event` is set, the event happened right after the
    /// last of them.
    pub consumed: usize,
    pub event: Option<Event>,
}

/// Follows the frames of one direction of one WebSocket connection. See the module docs for
/// the contract.
#[derive(Debug, Clone)]
pub struct Tracker {
    role: Role,
    extensions: Extensions,
    /// `u64::MAX` when no limit is configured, which leaves only overflow to catch.
    limit: u64,
    state: State,
    /// The header being read, `header_len` bytes of it so far.
    header: [u8; MAX_HEADER],
    header_len: u8,
    frame: Frame,
    message: Option<Message>,
    close_seen: bool,
    /// The current control frame's payload, `control_len` bytes of it so far; masked while
    /// it arrives, unmasked once the frame ends. Allocated at the first control payload and
    /// kept: most connections are idle most of the time and never see one.
    control: Option<Box<[u8; MAX_CONTROL_PAYLOAD]>>,
    control_len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a header; at a frame boundary when no byte of it has arrived.
    Header,
    /// Skipping the rest of a data frame's payload.
    Data {
        remaining: u64,
    },
    /// Reading the rest of a control frame's payload (RFC 6455 §5.5 keeps it ≤ 125 bytes).
    Control {
        remaining: u8,
    },
    Failed(FrameError),
}

/// The fields of the current frame's header, filled as its bytes arrive.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: Option<[u8; 4]>,
}

/// The data message in progress.
#[derive(Debug, Clone, Copy)]
struct Message {
    kind: MessageKind,
    compressed: bool,
    len: u64,
    frames: u64,
}

impl Tracker {
    /// A tracker for frames sent by `role`, at the start of the stream (a boundary), with no
    /// message size limit.
    pub fn new(role: Role, extensions: Extensions) -> Self {
        Self {
            role,
            extensions,
            limit: u64::MAX,
            state: State::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
            frame: Frame::default(),
            message: None,
            close_seen: false,
            control: None,
            control_len: 0,
        }
    }

    /// Fail with [`FrameError::MessageTooBig`] as soon as the frame headers of one message
    /// declare more than `limit` payload bytes in total.
    #[must_use]
    pub fn message_size_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit.unwrap_or(u64::MAX);
        self
    }

    /// Follows `chunk` to its end, calling `on_event` for each event in stream order.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event)) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let step = self.step(rest);
            if let Some(event) = step.event {
                on_event(event);
            }
            rest = rest.get(step.consumed..).unwrap_or_default();
        }
    }

    /// Follows `chunk` up to and including the byte that completes the first event, and
    /// returns how far it went; without an event it consumes the whole chunk. Each call with a
    /// non-empty chunk consumes at least one byte. For a relay that must act at the exact
    /// offset of an event, e.g. stop forwarding before the rest of a chunk.
    pub fn step(&mut self, chunk: &[u8]) -> Step {
        self.advance(chunk, false)
    }

    /// Follows `chunk` up to and including the byte that ends the first frame or completes
    /// the first event, whichever comes first; without either it consumes the whole chunk.
    /// The frame ended exactly when the tracker is [at a boundary](Self::at_boundary)
    /// afterwards. Each call with a non-empty chunk consumes at least one byte. For a relay
    /// that must know every frame boundary, e.g. to forward each whole frame as soon as it
    /// has passed, or to count frames: unlike [`step`](Self::step), a run of frames without
    /// events (empty fragments) is never taken in one go.
    pub fn step_frame(&mut self, chunk: &[u8]) -> Step {
        self.advance(chunk, true)
    }

    /// Whether the stream is exactly between two frames, where the gateway may put a whole
    /// frame of its own (RFC 6455 §5.4 lets control frames go between the fragments of a
    /// message too). True at the start, false once failed.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.header_len == 0
    }

    /// The offset in `chunk` of the first frame boundary, counting the start (`Some(0)` when
    /// [at a boundary](Self::at_boundary) now) and the end (`Some(chunk.len())` when the chunk
    /// ends a frame); `None` if the chunk holds none, or breaks the protocol before one. Does
    /// not advance the tracker: the relay forwards and feeds `chunk[..offset]`, writes its own
    /// frame, then goes on with the rest.
    pub fn next_boundary(&self, chunk: &[u8]) -> Option<usize> {
        if self.at_boundary() {
            return Some(0);
        }
        let mut probe = self.clone();
        let step = probe.advance(chunk, true);
        probe.at_boundary().then_some(step.consumed)
    }

    /// Whether the bytes since the last boundary can be forwarded without leaving the receiver
    /// inside a frame the gateway might have to cut: false while a header is incomplete or a
    /// control frame has not fully arrived (both at most 131 bytes), and once failed. A relay
    /// that holds such bytes back can always stop a direction at a frame boundary, to put a
    /// Close of its own there.
    pub fn forwardable(&self) -> bool {
        matches!(self.state, State::Data { .. }) || self.at_boundary()
    }

    /// The unmasked payload of the control frame that just ended: valid right after a
    /// [`Event::Ping`], [`Event::Pong`] or [`Event::Close`].
    pub fn control_payload(&self) -> &[u8] {
        self.control
            .as_deref()
            .map_or(&[], |c| &c[..usize::from(self.control_len)])
    }

    /// Whether a fragmented data message has begun and its last frame has not yet ended.
    pub fn in_message(&self) -> bool {
        self.message.is_some()
    }

    /// Whether the sender's Close frame has gone by; it must send no data after it.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// The violation that failed the tracker, if any.
    pub fn error(&self) -> Option<FrameError> {
        match self.state {
            State::Failed(error) => Some(error),
            State::Header | State::Data { .. } | State::Control { .. } => None,
        }
    }

    /// The state machine. Stops after the first event, at the end of `chunk`, or, with
    /// `stop_at_boundary`, at the first frame end.
    fn advance(&mut self, chunk: &[u8], stop_at_boundary: bool) -> Step {
        let mut pos = 0;
        loop {
            let rest = chunk.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let frame_ended = match self.state {
                State::Failed(_) => {
                    pos = chunk.len();
                    break;
                }
                State::Header => {
                    let have = usize::from(self.header_len);
                    let target = self.next_header_checkpoint();
                    let take = (target - have).min(rest.len());
                    self.header[have..have + take].copy_from_slice(&rest[..take]);
                    // `take` ≤ MAX_HEADER, so the sum stays far inside u8.
                    self.header_len += take as u8;
                    pos += take;
                    if have + take < target {
                        break;
                    }
                    match self.header_checkpoint() {
                        Ok(ended) => ended,
                        Err(error) => {
                            self.state = State::Failed(error);
                            return Step {
                                consumed: pos,
                                event: Some(Event::Error(error)),
                            };
                        }
                    }
                }
                State::Data { remaining } => {
                    // A usize always fits in u64 on the targets Rust supports.
                    let available = rest.len() as u64;
                    if remaining > available {
                        self.state = State::Data {
                            remaining: remaining - available,
                        };
                        pos = chunk.len();
                        break;
                    }
                    // `remaining` ≤ `available`, which came from a usize.
                    pos += remaining as usize;
                    true
                }
                State::Control { remaining } => {
                    let take = usize::from(remaining).min(rest.len());
                    let at = usize::from(self.control_len);
                    if take > 0 {
                        let control = self
                            .control
                            .get_or_insert_with(|| Box::new([0; MAX_CONTROL_PAYLOAD]));
                        control[at..at + take].copy_from_slice(&rest[..take]);
                    }
                    self.control_len += take as u8;
                    pos += take;
                    // `take` ≤ `remaining` ≤ 125.
                    let remaining = remaining - take as u8;
                    if remaining > 0 {
                        self.state = State::Control { remaining };
                        break;
                    }
                    true
                }
            };
            if frame_ended {
                let event = self.end_frame();
                if event.is_some() || stop_at_boundary {
                    return Step {
                        consumed: pos,
                        event,
                    };
                }
            }
        }
        Step {
            consumed: pos,
            event: None,
        }
    }

    /// How many header bytes to have before the next check: 2 for the fixed part, then the
    /// end of the extended length, then the end of the mask key. Checking at each point finds
    /// a violation at the same stream offset however the header was cut.
    fn next_header_checkpoint(&self) -> usize {
        let have = usize::from(self.header_len);
        if have < 2 {
            return 2;
        }
        let length_end = 2 + self.extended_length_size();
        if have < length_end {
            length_end
        } else {
            length_end + self.mask_size()
        }
    }

    /// Bytes of extended length after the 7-bit field (RFC 6455 §5.2). Needs 2 header bytes.
    fn extended_length_size(&self) -> usize {
        match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        }
    }

    /// Bytes of mask key (RFC 6455 §5.3). Needs 2 header bytes.
    fn mask_size(&self) -> usize {
        if self.header[1] & 0x80 != 0 { 4 } else { 0 }
    }

    /// Runs the checks due now that the header holds `header_len` bytes, a checkpoint. Returns
    /// whether the frame already ended, which a header with no payload does.
    fn header_checkpoint(&mut self) -> Result<bool, FrameError> {
        let have = usize::from(self.header_len);
        if have == 2 {
            self.check_fixed_header()?;
        }
        let length_end = 2 + self.extended_length_size();
        if have == length_end {
            self.check_length()?;
        }
        if have < length_end + self.mask_size() {
            return Ok(false);
        }
        self.frame.mask = match self.header.get(length_end..have) {
            Some(&[a, b, c, d]) => Some([a, b, c, d]),
            _ => None,
        };
        self.header_len = 0;
        if is_control(self.frame.opcode) {
            self.control_len = 0;
            // check_fixed_header kept control lengths ≤ 125.
            let remaining = self.frame.len as u8;
            self.state = State::Control { remaining };
            Ok(remaining == 0)
        } else {
            self.state = State::Data {
                remaining: self.frame.len,
            };
            Ok(self.frame.len == 0)
        }
    }

    /// The first two header bytes: flags, opcode, mask bit and the 7-bit length.
    fn check_fixed_header(&mut self) -> Result<(), FrameError> {
        let [b0, b1, ..] = self.header;
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0b111;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;

        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(FrameError::UnknownOpcode { opcode }),
        }
        // RSV1 is the only bit permessage-deflate defines (RFC 7692 §6); RSV2 and RSV3 stay
        // reserved.
        if rsv & 0b011 != 0 || (rsv != 0 && !self.extensions.permessage_deflate) {
            return Err(FrameError::ReservedBits { rsv });
        }
        let rsv1 = rsv != 0;
        if is_control(opcode) {
            if rsv1 {
                return Err(FrameError::CompressedControl { opcode });
            }
            if !fin {
                return Err(FrameError::FragmentedControl { opcode });
            }
            if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::ControlTooLong { opcode, len: len7 });
            }
            if opcode == OP_CLOSE && len7 == 1 {
                return Err(FrameError::CloseTooShort);
            }
        } else if opcode == OP_CONTINUATION && rsv1 {
            return Err(FrameError::CompressedContinuation);
        }
        match (self.role, masked) {
            (Role::Client, false) => return Err(FrameError::UnmaskedClientFrame),
            (Role::Server, true) => return Err(FrameError::MaskedServerFrame),
            (Role::Client, true) | (Role::Server, false) => {}
        }
        if !is_control(opcode) {
            if self.close_seen {
                return Err(FrameError::DataAfterClose);
            }
            match (opcode, &self.message) {
                (OP_CONTINUATION, None) => return Err(FrameError::ContinuationWithoutMessage),
                (OP_TEXT | OP_BINARY, Some(_)) => {
                    return Err(FrameError::DataInsideMessage { opcode });
                }
                (OP_TEXT, None) | (OP_BINARY, None) => {
                    self.message = Some(Message {
                        kind: if opcode == OP_TEXT {
                            MessageKind::Text
                        } else {
                            MessageKind::Binary
                        },
                        compressed: rsv1,
                        len: 0,
                        frames: 0,
                    });
                }
                _ => {}
            }
        }
        self.frame = Frame {
            fin,
            opcode,
            len: u64::from(len7),
            mask: None,
        };
        Ok(())
    }

    /// The payload length, once its encoding is complete; counts it into the message.
    fn check_length(&mut self) -> Result<(), FrameError> {
        let h = &self.header;
        let len = match self.extended_length_size() {
            2 => {
                let len = u64::from(u16::from_be_bytes([h[2], h[3]]));
                if len <= MAX_CONTROL_PAYLOAD as u64 {
                    return Err(FrameError::NonMinimalLength { len });
                }
                len
            }
            8 => {
                let len = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if len >> 63 != 0 {
                    return Err(FrameError::LengthTopBit);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(FrameError::NonMinimalLength { len });
                }
                len
            }
            _ => self.frame.len,
        };
        self.frame.len = len;
        if let Some(message) = self
            .message
            .as_mut()
            .filter(|_| !is_control(self.frame.opcode))
        {
            let size = message.len.checked_add(len);
            match size {
                Some(size) if size <= self.limit => {
                    message.len = size;
                    message.frames = message.frames.saturating_add(1);
                }
                _ => {
                    return Err(FrameError::MessageTooBig {
                        size: size.unwrap_or(u64::MAX),
                        limit: self.limit,
                    });
                }
            }
        }
        Ok(())
    }

    /// The current frame's last byte went by: back to reading a header, and report what the
    /// frame completed.
    fn end_frame(&mut self) -> Option<Event> {
        self.state = State::Header;
        let len = self.frame.len as u8;
        if is_control(self.frame.opcode)
            && let Some(key) = self.frame.mask
            && let Some(control) = self.control.as_deref_mut()
        {
            apply_mask(&mut control[..usize::from(self.control_len)], key);
        }
        match self.frame.opcode {
            OP_PING => Some(Event::Ping { len }),
            OP_PONG => Some(Event::Pong { len }),
            OP_CLOSE => {
                let close = self.read_close();
                Some(match close {
                    Ok(close) => {
                        self.close_seen = true;
                        Event::Close(close)
                    }
                    Err(error) => {
                        self.state = State::Failed(error);
                        Event::Error(error)
                    }
                })
            }
            _ if self.frame.fin => self.message.take().map(|m| Event::Message {
                kind: m.kind,
                compressed: m.compressed,
                len: m.len,
                frames: m.frames,
            }),
            _ => None,
        }
    }

    /// Reads the (unmasked) Close payload's code and reason (RFC 6455 §5.5.1).
    fn read_close(&mut self) -> Result<Close, FrameError> {
        let payload = self.control_payload();
        match payload {
            [] => Ok(Close::new(None, &[])),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if is_valid_close_code(code) {
                    Ok(Close::new(Some(code), reason))
                } else {
                    Err(FrameError::InvalidCloseCode { code })
                }
            }
            // check_fixed_header refused a 1-byte Close.
            [_] => Err(FrameError::CloseTooShort),
        }
    }
}

/// Opcodes 0x8–0xF are control frames (RFC 6455 §5.5).
fn is_control(opcode: u8) -> bool {
    opcode & 0x08 != 0
}

/// XORs `payload`, which starts at payload offset 0, with the mask key (RFC 6455 §5.3).
fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Writes a Close frame into `out` and returns its length. `reason` is cut to its longest
/// prefix of at most 123 bytes that ends on a character boundary. `code` goes out as given:
/// a peer fails the connection on one that [`is_valid_close_code`] refuses. Pass a `mask`
/// toward the backend (the gateway is its client) and `None` toward the client
/// (RFC 6455 §5.1).
pub fn encode_close(
    code: u16,
    reason: &str,
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_CONTROL_FRAME],
) -> usize {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    encode_control(
        OP_CLOSE,
        &code.to_be_bytes(),
        &reason.as_bytes()[..end],
        mask,
        out,
    )
}

/// Writes a Ping frame into `out` and returns its length, or `None` if `payload` is over the
/// 125 bytes a control frame may carry (RFC 6455 §5.5). `mask` as for [`encode_close`].
pub fn encode_ping(
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_CONTROL_FRAME],
) -> Option<usize> {
    (payload.len() <= MAX_CONTROL_PAYLOAD).then(|| encode_control(OP_PING, &[], payload, mask, out))
}

/// Writes a Pong frame into `out` and returns its length, or `None` if `payload` is over 125
/// bytes. A Pong answering a Ping carries the Ping's payload (RFC 6455 §5.5.3).
pub fn encode_pong(
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_CONTROL_FRAME],
) -> Option<usize> {
    (payload.len() <= MAX_CONTROL_PAYLOAD).then(|| encode_control(OP_PONG, &[], payload, mask, out))
}

/// One unfragmented control frame with payload `head` then `body`, together ≤ 125 bytes.
fn encode_control(
    opcode: u8,
    head: &[u8],
    body: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_CONTROL_FRAME],
) -> usize {
    let len = head.len() + body.len();
    out[0] = 0x80 | opcode;
    out[1] = len as u8;
    let mut start = 2;
    if let Some(key) = mask {
        out[1] |= 0x80;
        out[2..6].copy_from_slice(&key);
        start = 6;
    }
    let payload = &mut out[start..start + len];
    let (head_out, body_out) = payload.split_at_mut(head.len());
    head_out.copy_from_slice(head);
    body_out.copy_from_slice(body);
    if let Some(key) = mask {
        apply_mask(payload, key);
    }
    start + len
}

/// Body for a `cargo fuzz` target: the first byte picks the role, permessage-deflate and
/// whether the next two bytes are a size limit; the rest is the stream, fed once whole and
/// once in chunks whose sizes come from the stream's own bytes, with boundary probes on each
/// chunk; then an encoded Ping and Close built from the data are read back. Panics only when
/// the tracker breaks its contract (different events for different chunking, a boundary
/// that is not one, an encoded frame that does not read back), which is what a fuzzer hunts.
pub fn fuzz_feed(data: &[u8]) {
    use std::hash::{DefaultHasher, Hash, Hasher};

    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let extensions = Extensions {
        permessage_deflate: flags & 2 != 0,
    };
    let (limit, stream) = match rest.split_first_chunk::<2>() {
        Some((limit, stream)) if flags & 4 != 0 => {
            (Some(u64::from(u16::from_be_bytes(*limit))), stream)
        }
        _ => (None, rest),
    };
    let new_tracker = || Tracker::new(role, extensions).message_size_limit(limit);

    let mut whole = new_tracker();
    let mut whole_events = DefaultHasher::new();
    whole.feed(stream, |event| event.hash(&mut whole_events));

    let mut chunked = new_tracker();
    let mut chunked_events = DefaultHasher::new();
    let mut feed_steps = |tracker: &mut Tracker, mut bytes: &[u8]| {
        while !bytes.is_empty() {
            let step = tracker.step(bytes);
            assert!(step.consumed > 0, "step consumed nothing");
            if let Some(event) = step.event {
                event.hash(&mut chunked_events);
            }
            bytes = &bytes[step.consumed..];
        }
    };
    let mut pos = 0;
    while pos < stream.len() {
        let size = usize::from(stream[pos] % 17) + 1;
        let chunk = &stream[pos..(pos + size).min(stream.len())];
        pos += chunk.len();
        match chunked.next_boundary(chunk) {
            Some(boundary) => {
                let (before, after) = chunk.split_at(boundary);
                feed_steps(&mut chunked, before);
                assert!(
                    chunked.at_boundary(),
                    "next_boundary gave {boundary}, not a boundary"
                );
                feed_steps(&mut chunked, after);
            }
            None => feed_steps(&mut chunked, chunk),
        }
    }
    assert_eq!(
        whole_events.finish(),
        chunked_events.finish(),
        "chunking changed the events"
    );
    assert_eq!(whole.error(), chunked.error());
    assert_eq!(whole.at_boundary(), chunked.at_boundary());

    let mask = match role {
        Role::Client => Some([flags, 0x5A, flags ^ 0xFF, 0xA5]),
        Role::Server => None,
    };
    let mut out = [0; MAX_CONTROL_FRAME];
    let payload = &stream[..stream.len().min(MAX_CONTROL_PAYLOAD)];
    if let Some(n) = encode_ping(payload, mask, &mut out) {
        let mut reader = Tracker::new(role, extensions);
        let step = reader.step(&out[..n]);
        assert_eq!(
            step.event,
            Some(Event::Ping {
                len: payload.len() as u8
            })
        );
        assert_eq!(step.consumed, n);
    }
    let first = stream.first().copied().unwrap_or(0);
    let code = if flags & 8 == 0 {
        1000 + u16::from(first % 16)
    } else {
        u16::from_be_bytes([flags, first])
    };
    let reason = match std::str::from_utf8(stream) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(&stream[..error.valid_up_to()]).unwrap_or_default(),
    };
    let n = encode_close(code, reason, mask, &mut out);
    let mut reader = Tracker::new(role, extensions);
    match reader.step(&out[..n]).event {
        Some(Event::Close(close)) => {
            assert_eq!(close.code(), Some(code));
            let kept = (0..=reason.len().min(MAX_CLOSE_REASON))
                .rev()
                .find(|&n| reason.is_char_boundary(n));
            assert_eq!(close.reason(), kept.and_then(|n| reason.get(..n)));
        }
        Some(Event::Error(FrameError::InvalidCloseCode { code: seen })) => {
            assert!(!is_valid_close_code(code) && seen == code);
        }
        other => panic!("encoded Close read back as {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    const DEFLATE: Extensions = Extensions {
        permessage_deflate: true,
    };

    /// One frame with the minimal length encoding; `mask` also masks the payload.
    fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![b0];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            len @ 0..=125 => out.push(mask_bit | len as u8),
            len @ 126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let start = out.len();
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
        out.extend_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut out[start + 4..], key);
        }
        out
    }

    /// A frame as the client sends it: masked.
    fn from_client(b0: u8, payload: &[u8]) -> Vec<u8> {
        frame(b0, payload, Some(KEY))
    }

    fn client() -> Tracker {
        Tracker::new(Role::Client, Extensions::default())
    }

    fn server() -> Tracker {
        Tracker::new(Role::Server, Extensions::default())
    }

    fn events(tracker: &mut Tracker, bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        tracker.feed(bytes, |event| out.push(event));
        out
    }

    /// Events with the stream offset right after the byte that completed each.
    fn steps(tracker: &mut Tracker, chunks: &[&[u8]]) -> Vec<(usize, Event)> {
        let mut out = Vec::new();
        let mut base = 0;
        for chunk in chunks {
            let mut offset = 0;
            while offset < chunk.len() {
                let step = tracker.step(&chunk[offset..]);
                assert!(step.consumed > 0);
                offset += step.consumed;
                if let Some(event) = step.event {
                    out.push((base + offset, event));
                }
            }
            base += chunk.len();
        }
        out
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        payload
    }

    fn text(len: u64, frames: u64) -> Event {
        Event::Message {
            kind: MessageKind::Text,
            compressed: false,
            len,
            frames,
        }
    }

    fn binary(len: u64, frames: u64) -> Event {
        Event::Message {
            kind: MessageKind::Binary,
            compressed: false,
            len,
            frames,
        }
    }

    #[test]
    fn control_payload_is_unmasked_after_ping_pong_and_close() {
        let mut tracker = client();
        for (b0, payload) in [
            (0x89, &b"are you there"[..]),
            (0x8A, b"token-42"),
            (0x88, b"\x03\xe8bye"),
        ] {
            let bytes = from_client(b0, payload);
            let got = events(&mut tracker, &bytes);
            assert_eq!(got.len(), 1);
            assert_eq!(tracker.control_payload(), payload);
        }
    }

    #[test]
    fn forwardable_holds_back_headers_and_control_frames_but_not_data_payload() {
        let mut tracker = client();
        assert!(tracker.forwardable());
        let data = from_client(0x82, &[7u8; 300]);
        // Inside the 16-bit length header: hold back.
        let _ = tracker.step(&data[..3]);
        assert!(!tracker.forwardable());
        // Header complete, payload streaming: forward.
        let _ = tracker.step(&data[3..100]);
        assert!(tracker.forwardable());
        let _ = tracker.step(&data[100..]);
        assert!(tracker.forwardable() && tracker.at_boundary());
        let ping = from_client(0x89, b"abc");
        let _ = tracker.step(&ping[..ping.len() - 1]);
        assert!(!tracker.forwardable(), "a control frame goes out whole");
        let _ = tracker.step(&ping[ping.len() - 1..]);
        assert!(tracker.forwardable());
    }

    #[test]
    fn rfc_single_frame_unmasked_text_from_server() {
        // RFC 6455 §5.7, "A single-frame unmasked text message".
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut tracker = server();
        assert_eq!(steps(&mut tracker, &[&bytes]), [(7, text(5, 1))]);
        assert!(tracker.at_boundary());
        assert!(!tracker.in_message());
    }

    #[test]
    fn rfc_single_frame_masked_text_from_client() {
        // RFC 6455 §5.7, "A single-frame masked text message".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(events(&mut client(), &bytes), [text(5, 1)]);
        assert_eq!(from_client(0x81, b"Hello"), bytes);
    }

    #[test]
    fn rfc_fragmented_text_with_ping_between_fragments() {
        // RFC 6455 §5.7, "A fragmented unmasked text message", with a Ping injected between
        // the fragments as §5.4 allows.
        let mut bytes = vec![0x01, 0x03, 0x48, 0x65, 0x6c];
        bytes.extend(frame(0x89, b"Hello", None));
        bytes.extend([0x80, 0x02, 0x6c, 0x6f]);
        let mut tracker = server();
        assert_eq!(
            steps(&mut tracker, &[&bytes]),
            [(12, Event::Ping { len: 5 }), (16, text(5, 2))]
        );
    }

    #[test]
    fn in_message_between_fragments() {
        let mut tracker = server();
        assert!(events(&mut tracker, &frame(0x02, b"ab", None)).is_empty());
        assert!(tracker.in_message() && tracker.at_boundary());
        assert_eq!(events(&mut tracker, &frame(0x00, b"c", None)), []);
        assert_eq!(
            events(&mut tracker, &frame(0x80, b"", None)),
            [binary(3, 3)]
        );
        assert!(!tracker.in_message());
    }

    #[test]
    fn binary_16_bit_lengths() {
        // RFC 6455 §5.7: 256 bytes in a single unmasked frame uses the 16-bit length.
        let payload = vec![0; 256];
        let bytes = frame(0x82, &payload, None);
        assert_eq!(bytes[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(events(&mut server(), &bytes), [binary(256, 1)]);
        for len in [126, 127, 65535] {
            let bytes = from_client(0x82, &vec![7; len]);
            assert_eq!(bytes.len(), 2 + 2 + 4 + len);
            assert_eq!(events(&mut client(), &bytes), [binary(len as u64, 1)]);
        }
    }

    #[test]
    fn binary_64_bit_lengths() {
        // RFC 6455 §5.7: 64KiB in a single unmasked frame uses the 64-bit length.
        let bytes = frame(0x82, &vec![0; 65536], None);
        assert_eq!(bytes[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(events(&mut server(), &bytes), [binary(65536, 1)]);
        let bytes = from_client(0x82, &vec![0; 70000]);
        assert_eq!(events(&mut client(), &bytes), [binary(70000, 1)]);
    }

    #[test]
    fn largest_64_bit_length_is_followed_without_overflow() {
        let mut header = vec![0x82, 0x7F];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        let mut tracker = server();
        assert_eq!(events(&mut tracker, &header), []);
        assert_eq!(tracker.next_boundary(&[0; 100]), None);
        assert_eq!(events(&mut tracker, &[0; 100]), []);
        assert_eq!(
            tracker.state,
            State::Data {
                remaining: (u64::MAX >> 1) - 100
            }
        );
    }

    #[test]
    fn step_frame_stops_at_every_frame_end_even_without_an_event() {
        let mut tracker = client();
        // Text fragment, empty continuation, Pong (6 + 3 bytes), a header cut short.
        let mut bytes = from_client(0x01, b"ab");
        bytes.extend(from_client(0x00, b""));
        bytes.extend(from_client(0x8A, b"xyz"));
        bytes.extend_from_slice(&from_client(0x80, b"")[..3]);
        let mut ends = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let step = tracker.step_frame(&bytes[at..]);
            assert!(step.consumed > 0);
            at += step.consumed;
            if tracker.at_boundary() {
                ends.push((at, step.event));
            }
        }
        assert_eq!(
            ends,
            [(8, None), (14, None), (23, Some(Event::Pong { len: 3 })),]
        );
        assert!(!tracker.at_boundary(), "inside the last header");
    }

    #[test]
    fn empty_frames_end_at_their_header() {
        let mut tracker = client();
        let mut bytes = from_client(0x81, b"");
        bytes.extend(from_client(0x8A, b""));
        bytes.extend(from_client(0x88, b""));
        assert_eq!(
            steps(&mut tracker, &[&bytes]),
            [
                (6, text(0, 1)),
                (12, Event::Pong { len: 0 }),
                (18, Event::Close(Close::new(None, b""))),
            ]
        );
        assert!(tracker.close_seen());
    }

    #[test]
    fn ping_and_pong_payloads_are_counted() {
        let mut bytes = frame(0x89, &[1; 125], None);
        bytes.extend(frame(0x8A, &[2; 3], None));
        assert_eq!(
            events(&mut server(), &bytes),
            [Event::Ping { len: 125 }, Event::Pong { len: 3 }]
        );
    }

    #[test]
    fn masked_close_code_and_reason_are_read() {
        let bytes = from_client(0x88, &close_payload(1001, "going away ✓".as_bytes()));
        let events = events(&mut client(), &bytes);
        let [Event::Close(close)] = events[..] else {
            panic!("expected one Close, got {events:?}");
        };
        assert_eq!(close.code(), Some(1001));
        assert_eq!(close.reason(), Some("going away ✓"));
    }

    #[test]
    fn close_reason_of_123_bytes_and_bytes_that_are_not_utf8() {
        let reason = [b'r'; MAX_CLOSE_REASON];
        let bytes = frame(0x88, &close_payload(4000, &reason), None);
        assert_eq!(
            events(&mut server(), &bytes),
            [Event::Close(Close::new(Some(4000), &reason))]
        );
        let bytes = frame(0x88, &close_payload(1000, &[0xFF, 0xFE]), None);
        let events = events(&mut server(), &bytes);
        let [Event::Close(close)] = events[..] else {
            panic!("expected one Close, got {events:?}");
        };
        assert_eq!(close.reason(), None);
        assert_eq!(close.reason_bytes(), [0xFF, 0xFE]);
    }

    #[test]
    fn close_codes_follow_rfc_6455_section_7_4() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ];
        let invalid = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            assert!(is_valid_close_code(code), "{code}");
            let bytes = from_client(0x88, &close_payload(code, b""));
            assert_eq!(
                events(&mut client(), &bytes),
                [Event::Close(Close::new(Some(code), b""))]
            );
        }
        for code in invalid {
            assert!(!is_valid_close_code(code), "{code}");
            let bytes = from_client(0x88, &close_payload(code, b"x"));
            let mut tracker = client();
            assert_eq!(
                steps(&mut tracker, &[&bytes]),
                [(
                    bytes.len(),
                    Event::Error(FrameError::InvalidCloseCode { code })
                )]
            );
            assert!(!tracker.close_seen());
        }
    }

    /// Feeds `bytes` and expects the last event to be the error, right after `offset` bytes,
    /// and no error before it; then checks the tracker stays failed.
    fn assert_error_at(mut tracker: Tracker, bytes: &[u8], offset: usize, error: FrameError) {
        let seen = steps(&mut tracker, &[bytes]);
        assert_eq!(seen.last(), Some(&(offset, Event::Error(error))), "{error}");
        let errors = seen
            .iter()
            .filter(|(_, event)| matches!(event, Event::Error(_)));
        assert_eq!(errors.count(), 1);
        assert_eq!(tracker.error(), Some(error));
        assert!(!tracker.at_boundary());
        let valid = frame(0x82, b"after", None);
        assert_eq!(events(&mut tracker, &valid), []);
        assert_eq!(tracker.step(&valid).consumed, valid.len());
        assert_eq!(tracker.next_boundary(&valid), None);
        assert_eq!(tracker.error(), Some(error));
    }

    #[test]
    fn reserved_bits_without_extension() {
        for (b0, rsv) in [(0xC1, 0b100), (0xA1, 0b010), (0x91, 0b001)] {
            assert_error_at(server(), &[b0, 0x00], 2, FrameError::ReservedBits { rsv });
        }
    }

    #[test]
    fn rsv2_and_rsv3_even_with_deflate() {
        let tracker = Tracker::new(Role::Server, DEFLATE);
        assert_error_at(
            tracker.clone(),
            &[0xA1, 0],
            2,
            FrameError::ReservedBits { rsv: 0b010 },
        );
        assert_error_at(
            tracker,
            &[0xD1, 0],
            2,
            FrameError::ReservedBits { rsv: 0b101 },
        );
    }

    #[test]
    fn rsv1_with_deflate_marks_the_first_frame_only() {
        let mut tracker = Tracker::new(Role::Client, DEFLATE);
        let mut bytes = from_client(0x42, b"abc");
        bytes.extend(from_client(0x89, b""));
        bytes.extend(from_client(0x80, b"de"));
        assert_eq!(
            events(&mut tracker, &bytes),
            [
                Event::Ping { len: 0 },
                Event::Message {
                    kind: MessageKind::Binary,
                    compressed: true,
                    len: 5,
                    frames: 2
                }
            ]
        );
    }

    #[test]
    fn rsv1_on_continuation() {
        let mut bytes = frame(0x41, b"a", None);
        bytes.extend(frame(0xC0, b"b", None));
        let tracker = Tracker::new(Role::Server, DEFLATE);
        assert_error_at(tracker, &bytes, 5, FrameError::CompressedContinuation);
    }

    #[test]
    fn rsv1_on_control() {
        let tracker = Tracker::new(Role::Server, DEFLATE);
        let error = FrameError::CompressedControl { opcode: 0x9 };
        assert_error_at(tracker, &frame(0xC9, b"", None), 2, error);
    }

    #[test]
    fn unknown_opcodes() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            let bytes = frame(0x80 | opcode, b"x", None);
            assert_error_at(server(), &bytes, 2, FrameError::UnknownOpcode { opcode });
        }
    }

    #[test]
    fn control_frame_without_fin() {
        for opcode in [OP_CLOSE, OP_PING, OP_PONG] {
            let bytes = frame(opcode, b"", None);
            assert_error_at(
                server(),
                &bytes,
                2,
                FrameError::FragmentedControl { opcode },
            );
        }
    }

    #[test]
    fn control_frame_over_125_bytes() {
        let error = FrameError::ControlTooLong {
            opcode: OP_PING,
            len: 126,
        };
        assert_error_at(server(), &frame(0x89, &[0; 126], None), 2, error);
        let error = FrameError::ControlTooLong {
            opcode: OP_CLOSE,
            len: 127,
        };
        assert_error_at(client(), &from_client(0x88, &[0; 70000]), 2, error);
    }

    #[test]
    fn unmasked_client_frame() {
        assert_error_at(
            client(),
            &frame(0x81, b"hi", None),
            2,
            FrameError::UnmaskedClientFrame,
        );
    }

    #[test]
    fn masked_server_frame() {
        assert_error_at(
            server(),
            &from_client(0x81, b"hi"),
            2,
            FrameError::MaskedServerFrame,
        );
    }

    #[test]
    fn continuation_without_message() {
        let mut bytes = frame(0x81, b"done", None);
        bytes.extend(frame(0x80, b"more", None));
        assert_error_at(server(), &bytes, 8, FrameError::ContinuationWithoutMessage);
    }

    #[test]
    fn new_message_inside_fragmented_message() {
        for opcode in [OP_TEXT, OP_BINARY] {
            let mut bytes = frame(0x01, b"part", None);
            bytes.extend(frame(0x89, b"", None));
            bytes.extend(frame(0x80 | opcode, b"new", None));
            let error = FrameError::DataInsideMessage { opcode };
            assert_error_at(server(), &bytes, 10, error);
        }
    }

    #[test]
    fn data_after_close_but_control_frames_pass() {
        let mut bytes = frame(0x88, &close_payload(1000, b""), None);
        bytes.extend(frame(0x89, b"", None));
        bytes.extend(frame(0x81, b"late", None));
        let mut tracker = server();
        assert_eq!(
            steps(&mut tracker, &[&bytes]),
            [
                (4, Event::Close(Close::new(Some(1000), b""))),
                (6, Event::Ping { len: 0 }),
                (8, Event::Error(FrameError::DataAfterClose)),
            ]
        );
    }

    #[test]
    fn non_minimal_lengths() {
        let error = |len| FrameError::NonMinimalLength { len };
        assert_error_at(server(), &[0x82, 126, 0, 125], 4, error(125));
        assert_error_at(server(), &[0x82, 126, 0, 0], 4, error(0));
        let mut bytes = vec![0x82, 127];
        bytes.extend_from_slice(&65535u64.to_be_bytes());
        assert_error_at(server(), &bytes, 10, error(65535));
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&1u64.to_be_bytes());
        assert_error_at(client(), &bytes, 10, error(1));
    }

    #[test]
    fn length_with_top_bit() {
        let mut bytes = vec![0x82, 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_error_at(server(), &bytes, 10, FrameError::LengthTopBit);
        let mut bytes = vec![0x82, 127];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_error_at(server(), &bytes, 10, FrameError::LengthTopBit);
    }

    #[test]
    fn close_of_one_byte() {
        assert_error_at(
            client(),
            &from_client(0x88, &[3]),
            2,
            FrameError::CloseTooShort,
        );
    }

    #[test]
    fn message_too_big_is_caught_from_the_header() {
        let tracker = server().message_size_limit(Some(1000));
        // The 2-byte header and the 16-bit length only; the payload never arrives.
        let error = FrameError::MessageTooBig {
            size: 1001,
            limit: 1000,
        };
        assert_error_at(tracker.clone(), &[0x82, 126, 0x03, 0xE9], 4, error);
        assert_eq!(error.close_code(), 1009);
        let mut tracker = tracker;
        assert_eq!(
            events(&mut tracker, &frame(0x82, &[0; 1000], None)),
            [binary(1000, 1)]
        );
    }

    #[test]
    fn message_too_big_counts_every_fragment() {
        let mut bytes = frame(0x01, &[0; 600], None);
        bytes.extend(frame(0x89, b"", None));
        bytes.extend(frame(0x00, &[0; 400], None));
        let second_length_end = bytes.len();
        bytes.extend(frame(0x80, &[0; 1], None));
        let tracker = server().message_size_limit(Some(1000));
        let error = FrameError::MessageTooBig {
            size: 1001,
            limit: 1000,
        };
        assert_error_at(tracker, &bytes, second_length_end + 2, error);
    }

    #[test]
    fn message_size_sum_overflow_is_an_error() {
        let mut tracker = server();
        assert_eq!(events(&mut tracker, &frame(0x02, b"", None)), []);
        if let Some(message) = tracker.message.as_mut() {
            message.len = u64::MAX - 65535;
        }
        let mut bytes = vec![0x00, 127];
        bytes.extend_from_slice(&65536u64.to_be_bytes());
        let error = FrameError::MessageTooBig {
            size: u64::MAX,
            limit: u64::MAX,
        };
        assert_error_at(tracker, &bytes, 10, error);
    }

    #[test]
    fn every_protocol_error_closes_with_1002() {
        let errors = [
            FrameError::ReservedBits { rsv: 1 },
            FrameError::CompressedContinuation,
            FrameError::CompressedControl { opcode: 9 },
            FrameError::UnknownOpcode { opcode: 3 },
            FrameError::FragmentedControl { opcode: 9 },
            FrameError::ControlTooLong {
                opcode: 9,
                len: 126,
            },
            FrameError::UnmaskedClientFrame,
            FrameError::MaskedServerFrame,
            FrameError::ContinuationWithoutMessage,
            FrameError::DataInsideMessage { opcode: 1 },
            FrameError::DataAfterClose,
            FrameError::NonMinimalLength { len: 1 },
            FrameError::LengthTopBit,
            FrameError::CloseTooShort,
            FrameError::InvalidCloseCode { code: 1005 },
        ];
        for error in errors {
            assert_eq!(error.close_code(), 1002, "{error}");
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn header_split_at_every_byte_gives_the_same_events_at_the_same_offsets() {
        // A fixture with every header shape: 7/16/64-bit lengths, masked, control in between.
        let mut bytes = from_client(0x01, &[1; 10]);
        bytes.extend(from_client(0x89, b"ping"));
        bytes.extend(from_client(0x00, &[2; 300]));
        bytes.extend(from_client(0x80, &[3; 65536]));
        bytes.extend(from_client(0x88, &close_payload(1000, b"bye")));
        let whole = steps(&mut client(), &[&bytes]);
        assert_eq!(whole.len(), 3);
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(steps(&mut client(), &[a, b]), whole, "cut at {cut}");
        }
        let one_byte_chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(steps(&mut client(), &one_byte_chunks), whole);
    }

    #[test]
    fn next_boundary_in_header_payload_and_at_the_end() {
        let bytes = frame(0x82, &[0; 10], None);
        let mut tracker = server();
        assert_eq!(tracker.next_boundary(&bytes), Some(0));
        assert_eq!(tracker.next_boundary(&[]), Some(0));
        assert_eq!(events(&mut tracker, &bytes[..1]), []);
        // Mid-header: the boundary is found by reading the rest of the header.
        assert_eq!(tracker.next_boundary(&bytes[1..]), Some(11));
        assert_eq!(tracker.next_boundary(&bytes[1..5]), None);
        assert_eq!(tracker.next_boundary(&[]), None);
        assert_eq!(events(&mut tracker, &bytes[1..5]), []);
        assert_eq!(tracker.next_boundary(&bytes[5..]), Some(7));
        let mut more = bytes[5..].to_vec();
        more.extend(frame(0x89, b"", None));
        assert_eq!(tracker.next_boundary(&more), Some(7));
        // The probe did not move the tracker.
        assert_eq!(
            events(&mut tracker, &more),
            [binary(10, 1), Event::Ping { len: 0 }]
        );
        // A chunk that breaks the protocol before its first boundary has none.
        let mut tracker = server();
        assert_eq!(events(&mut tracker, &[0x81]), []);
        assert_eq!(tracker.next_boundary(&[0x80, 0x81, 0x00]), None);
    }

    #[test]
    fn encode_close_reads_back_masked_and_unmasked() {
        let mut out = [0; MAX_CONTROL_FRAME];
        let n = encode_close(1001, "draining", Some(KEY), &mut out);
        assert_eq!(
            out[..n],
            from_client(0x88, &close_payload(1001, b"draining"))[..]
        );
        assert_eq!(
            events(&mut client(), &out[..n]),
            [Event::Close(Close::new(Some(1001), b"draining"))]
        );
        let n = encode_close(1012, "", None, &mut out);
        assert_eq!(out[..n], [0x88, 0x02, 0x03, 0xF4]);
        assert_eq!(
            events(&mut server(), &out[..n]),
            [Event::Close(Close::new(Some(1012), b""))]
        );
    }

    #[test]
    fn encode_close_truncates_reason_on_a_char_boundary() {
        let mut out = [0; MAX_CONTROL_FRAME];
        // 122 ASCII bytes then a 2-byte 'é' would be 124: the 'é' is dropped whole.
        let reason = format!("{}é", "a".repeat(122));
        let n = encode_close(1000, &reason, None, &mut out);
        assert_eq!(n, 2 + 2 + 122);
        let events = events(&mut server(), &out[..n]);
        let [Event::Close(close)] = events[..] else {
            panic!("expected one Close, got {events:?}");
        };
        assert_eq!(close.reason(), Some(&reason[..122]));
        let long = "ü".repeat(200);
        let n = encode_close(4000, &long, Some(KEY), &mut out);
        assert_eq!(
            n,
            MAX_CONTROL_FRAME - 1,
            "61 two-byte chars fill 122 of 123 bytes"
        );
        let n = encode_close(4000, &"x".repeat(200), Some(KEY), &mut out);
        assert_eq!(n, MAX_CONTROL_FRAME);
    }

    #[test]
    fn encode_ping_and_pong() {
        let mut out = [0; MAX_CONTROL_FRAME];
        // RFC 6455 §5.7: "Unmasked Ping request and masked Ping response".
        let n = encode_ping(b"Hello", None, &mut out);
        assert_eq!(
            n.map(|n| &out[..n]),
            Some(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f][..])
        );
        let n = encode_pong(b"Hello", Some(KEY), &mut out);
        assert_eq!(
            n.map(|n| &out[..n]),
            Some(
                &[
                    0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
                ][..]
            )
        );
        let n = encode_ping(&[9; 125], Some(KEY), &mut out);
        assert_eq!(n, Some(MAX_CONTROL_FRAME));
        assert_eq!(events(&mut client(), &out), [Event::Ping { len: 125 }]);
        assert_eq!(encode_ping(&[0; 126], None, &mut out), None);
        assert_eq!(encode_pong(&[0; 126], None, &mut out), None);
    }

    /// A control frame the generator may put anywhere between frames.
    #[derive(Debug, Clone)]
    enum Control {
        Ping(u8),
        Pong(u8),
    }

    #[derive(Debug, Clone)]
    enum Item {
        /// Payload length of each fragment, and the controls sent after it (none after the
        /// last).
        Message {
            kind: MessageKind,
            compressed: bool,
            fragments: Vec<(usize, Vec<Control>)>,
        },
        Control(Control),
    }

    #[derive(Debug, Clone)]
    struct Script {
        role: Role,
        extensions: Extensions,
        limit: Option<u64>,
        items: Vec<Item>,
        close: Option<(Option<u16>, String)>,
        mask_seed: u32,
    }

    impl Script {
        fn tracker(&self) -> Tracker {
            Tracker::new(self.role, self.extensions).message_size_limit(self.limit)
        }
    }

    /// The serialized stream and what the tracker must make of it.
    struct Expected {
        bytes: Vec<u8>,
        /// Events with the offset right after the byte that completes each.
        events: Vec<(usize, Event)>,
        /// Every offset between two frames, in order, up to the first error.
        boundaries: Vec<usize>,
    }

    struct Writer {
        expected: Expected,
        role: Role,
        mask_seed: u32,
        failed: bool,
    }

    impl Writer {
        fn frame(&mut self, b0: u8, payload: &[u8]) {
            let mask = match self.role {
                Role::Client => {
                    self.mask_seed = self
                        .mask_seed
                        .wrapping_mul(1_664_525)
                        .wrapping_add(1_013_904_223);
                    Some(self.mask_seed.to_be_bytes())
                }
                Role::Server => None,
            };
            self.expected.bytes.extend(frame(b0, payload, mask));
        }

        fn record(&mut self, event: Event) {
            if !self.failed {
                let end = self.expected.bytes.len();
                self.expected.events.push((end, event));
                self.expected.boundaries.push(end);
            }
        }

        fn control(&mut self, control: &Control) {
            let (b0, len, event) = match *control {
                Control::Ping(len) => (0x89, len, Event::Ping { len }),
                Control::Pong(len) => (0x8A, len, Event::Pong { len }),
            };
            self.frame(b0, &vec![0xAB; usize::from(len)]);
            self.record(event);
        }
    }

    /// Writes the script's frames and the model of what they mean.
    fn expected(script: &Script) -> Expected {
        let mut w = Writer {
            expected: Expected {
                bytes: Vec::new(),
                events: Vec::new(),
                boundaries: vec![0],
            },
            role: script.role,
            mask_seed: script.mask_seed,
            failed: false,
        };
        let limit = script.limit.unwrap_or(u64::MAX);
        for item in &script.items {
            match item {
                Item::Control(control) => w.control(control),
                Item::Message {
                    kind,
                    compressed,
                    fragments,
                } => {
                    let compressed = *compressed && script.extensions.permessage_deflate;
                    let mut total = 0u64;
                    for (i, (len, controls)) in fragments.iter().enumerate() {
                        let last = i + 1 == fragments.len();
                        let opcode = match (i, kind) {
                            (0, MessageKind::Text) => OP_TEXT,
                            (0, MessageKind::Binary) => OP_BINARY,
                            _ => OP_CONTINUATION,
                        };
                        let fin = if last { 0x80 } else { 0 };
                        let rsv1 = if i == 0 && compressed { 0x40 } else { 0 };
                        total += *len as u64;
                        if total > limit && !w.failed {
                            let length_end = match len {
                                0..=125 => 2,
                                126..=0xFFFF => 4,
                                _ => 10,
                            };
                            let at = w.expected.bytes.len() + length_end;
                            let error = FrameError::MessageTooBig { size: total, limit };
                            w.expected.events.push((at, Event::Error(error)));
                            w.failed = true;
                        }
                        let payload: Vec<u8> = (0..*len).map(|i| i as u8).collect();
                        w.frame(fin | rsv1 | opcode, &payload);
                        if last {
                            w.record(Event::Message {
                                kind: *kind,
                                compressed,
                                len: total,
                                frames: fragments.len() as u64,
                            });
                        } else {
                            if !w.failed {
                                let end = w.expected.bytes.len();
                                w.expected.boundaries.push(end);
                            }
                            for control in controls {
                                w.control(control);
                            }
                        }
                    }
                }
            }
        }
        if let Some((code, reason)) = &script.close {
            let payload = match code {
                Some(code) => close_payload(*code, reason.as_bytes()),
                None => Vec::new(),
            };
            w.frame(0x88, &payload);
            let reason = payload.get(2..).unwrap_or_default();
            w.record(Event::Close(Close::new(*code, reason)));
        }
        w.expected
    }

    fn payload_len(small: bool) -> BoxedStrategy<usize> {
        if small {
            prop_oneof![6 => 0usize..40, 1 => Just(125), 1 => Just(126)].boxed()
        } else {
            prop_oneof![
                6 => 0usize..200,
                1 => Just(0),
                1 => Just(125),
                1 => Just(126),
                1 => Just(127),
                1 => Just(65535),
                1 => Just(65536),
            ]
            .boxed()
        }
    }

    fn control() -> impl Strategy<Value = Control> {
        prop_oneof![
            prop_oneof![Just(0u8), Just(125u8), 0u8..=125].prop_map(Control::Ping),
            (0u8..=125).prop_map(Control::Pong),
        ]
    }

    fn item(small: bool) -> impl Strategy<Value = Item> {
        let kind = prop_oneof![Just(MessageKind::Text), Just(MessageKind::Binary)];
        let fragment = (payload_len(small), prop::collection::vec(control(), 0..3));
        prop_oneof![
            3 => (kind, any::<bool>(), prop::collection::vec(fragment, 1..5)).prop_map(
                |(kind, compressed, fragments)| Item::Message { kind, compressed, fragments }
            ),
            1 => control().prop_map(Item::Control),
        ]
    }

    fn close() -> impl Strategy<Value = Option<(Option<u16>, String)>> {
        let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
        let with_code = (code, "\\PC{0,40}").prop_map(|(code, mut reason)| {
            while reason.len() > MAX_CLOSE_REASON {
                reason.pop();
            }
            (Some(code), reason)
        });
        prop::option::of(prop_oneof![Just((None, String::new())), with_code])
    }

    fn script(small: bool) -> impl Strategy<Value = Script> {
        (
            prop_oneof![Just(Role::Client), Just(Role::Server)],
            any::<bool>(),
            prop_oneof![3 => Just(None), 1 => (0u64..70_000).prop_map(Some)],
            prop::collection::vec(item(small), 0..8),
            close(),
            any::<u32>(),
        )
            .prop_map(|(role, deflate, limit, items, close, mask_seed)| Script {
                role,
                extensions: Extensions {
                    permessage_deflate: deflate,
                },
                limit,
                items,
                close,
                mask_seed,
            })
    }

    /// Cut points in `0..=len` from proptest indices, sorted, with the ends added.
    fn cut_points(len: usize, cuts: &[Index]) -> Vec<usize> {
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(len + 1)).collect();
        points.extend([0, len]);
        points.sort_unstable();
        points.dedup();
        points
    }

    /// Feeds `bytes` cut at `points`, checking `next_boundary` and `at_boundary` on every
    /// chunk against `boundaries`; returns the events with their offsets.
    fn feed_checking_boundaries(
        mut tracker: Tracker,
        bytes: &[u8],
        points: &[usize],
        boundaries: &[usize],
    ) -> Result<Vec<(usize, Event)>, TestCaseError> {
        let mut out = Vec::new();
        for pair in points.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            let chunk = &bytes[start..end];
            let first = boundaries.iter().find(|&&b| start <= b && b <= end);
            prop_assert_eq!(tracker.next_boundary(chunk), first.map(|b| b - start));
            for (offset, event) in steps(&mut tracker, &[chunk]) {
                out.push((start + offset, event));
            }
            prop_assert_eq!(
                tracker.at_boundary(),
                boundaries.binary_search(&end).is_ok()
            );
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn valid_stream_in_any_chunking_matches_the_model(
            script in script(false),
            cuts in prop::collection::vec(any::<Index>(), 0..40),
        ) {
            let expected = expected(&script);
            let bytes = &expected.bytes;
            let whole = events(&mut script.tracker(), bytes);
            let model: Vec<Event> = expected.events.iter().map(|(_, event)| *event).collect();
            prop_assert_eq!(&whole, &model);
            let points = cut_points(bytes.len(), &cuts);
            let chunked =
                feed_checking_boundaries(script.tracker(), bytes, &points, &expected.boundaries)?;
            prop_assert_eq!(chunked, expected.events);
        }

        #[test]
        fn valid_stream_one_byte_at_a_time_matches_the_model(script in script(true)) {
            let expected = expected(&script);
            let points: Vec<usize> = (0..=expected.bytes.len()).collect();
            let chunked = feed_checking_boundaries(
                script.tracker(),
                &expected.bytes,
                &points,
                &expected.boundaries,
            )?;
            prop_assert_eq!(chunked, expected.events);
        }

        #[test]
        fn corrupted_stream_gives_the_same_events_in_any_chunking(
            script in script(false),
            flips in prop::collection::vec((any::<Index>(), 1u8..=255), 1..4),
            cuts in prop::collection::vec(any::<Index>(), 0..40),
        ) {
            let mut bytes = expected(&script).bytes;
            prop_assume!(!bytes.is_empty());
            for (at, xor) in &flips {
                let at = at.index(bytes.len());
                bytes[at] ^= xor;
            }
            let whole = steps(&mut script.tracker(), &[&bytes]);
            let points = cut_points(bytes.len(), &cuts);
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            prop_assert_eq!(steps(&mut script.tracker(), &chunks), whole);
        }

        #[test]
        fn arbitrary_bytes_give_the_same_events_in_any_chunking(
            client_role in any::<bool>(),
            deflate in any::<bool>(),
            limit in prop::option::of(any::<u64>()),
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<Index>(), 0..40),
        ) {
            let role = if client_role { Role::Client } else { Role::Server };
            let new = || {
                Tracker::new(role, Extensions { permessage_deflate: deflate })
                    .message_size_limit(limit)
            };
            let whole = steps(&mut new(), &[&bytes]);
            let points = cut_points(bytes.len(), &cuts);
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            prop_assert_eq!(steps(&mut new(), &chunks), whole.clone());
            let one_byte_chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(steps(&mut new(), &one_byte_chunks), whole);
        }

        #[test]
        fn fuzz_body_never_panics(data in prop::collection::vec(any::<u8>(), 0..1000)) {
            fuzz_feed(&data);
        }

        #[test]
        fn fuzz_body_never_panics_on_valid_streams(flags in any::<u8>(), script in script(true)) {
            let mut data = vec![flags];
            data.extend(expected(&script).bytes);
            fuzz_feed(&data);
        }
    }

    /// Run with `cargo test --release -- --ignored --nocapture throughput`.
    #[test]
    #[ignore = "throughput report, run in release by hand"]
    fn throughput() {
        use std::time::Instant;

        let mut stream = Vec::new();
        for i in 0..10_000usize {
            stream.extend(from_client(0x82, &vec![0; i % 200]));
            if i % 100 == 0 {
                stream.extend(from_client(0x82, &vec![0; 70_000]));
            }
        }
        let mut frames = 0u64;
        let rounds = 200;
        let started = Instant::now();
        for _ in 0..rounds {
            let mut tracker = client();
            for chunk in stream.chunks(16 * 1024) {
                tracker.feed(chunk, |_| frames += 1);
            }
            assert!(tracker.at_boundary());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let bytes = (stream.len() * rounds) as f64;
        eprintln!(
            "{:.0} MiB/s, {:.1} M frames/s ({} frames, {:.3} s)",
            bytes / elapsed / (1024.0 * 1024.0),
            frames as f64 / elapsed / 1e6,
            frames,
            elapsed
        );
    }
}
