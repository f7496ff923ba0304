//! The native wire protocol: the frame header, request bodies and response bodies.
//!
//! Every frame, request or response, is a 32-byte [`FrameHeader`] followed by `body_len` bytes
//! of body. Requests are pipelined: a client may send many before reading, and the server answers
//! each one once, in any order, with a response that repeats its `request_id` and `opcode`.
//! `docs/protocol.md` gives every byte of every body in a table; the header's table is repeated
//! on [`FrameHeader`], and each body's fields are listed on the function that writes it.
//!
//! Invariants: a header is checked in full (magic, version, checksum, reserved bits, body limit)
//! before any body byte is read; no decoder allocates, and none indexes by a length the peer
//! declared before that length has been checked against its limit and against the bytes present;
//! every decoder refuses bytes left over after the last field.

use crate::checksum::crc32c;
pub use crate::key::PKEY_LEN_MAX;
use crate::key::Timestamp;
use crate::ticket::TICKET_LEN_MAX;
use crate::version::Version;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "STRP": Strata RPC.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"STRP");
pub const PROTOCOL_VERSION: u8 = 1;
pub const HEADER_SIZE: usize = size_of::<FrameHeader>();
/// The largest body of any frame, request or response.
pub const FRAME_BODY_MAX: u32 = 4 << 20;
/// The largest value a PUT may carry.
pub const VALUE_LEN_MAX: u32 = 1 << 20;
/// The most items in one MGET or MPUT.
pub const BATCH_ITEMS_MAX: u16 = 1024;
/// The most entries one SCAN may ask for.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// The most bytes one COLD_READ may ask for.
pub const COLD_READ_MAX: u32 = 1 << 20;
/// COLD_READ offsets and lengths are multiples of this (the cold tier's direct-I/O alignment).
pub const COLD_READ_ALIGN: u32 = 4096;
/// The longest error message a response carries; longer ones are cut at a character boundary.
pub const MESSAGE_LEN_MAX: usize = 1024;

const FLAG_PRIORITY_MASK: u8 = 0b0000_0011;
const FLAG_RESPONSE: u8 = 0b1000_0000;
/// Bytes of the header its checksum covers.
const HEADER_CRC_COVERS: usize = 28;

/// Frame header, for requests and responses alike.
///
/// ```text
/// offset size field        meaning
/// 0      4    magic        "STRP"
/// 4      1    version      1
/// 5      1    opcode       see Opcode; a response repeats its request's
/// 6      1    flags        bits 0-1: priority (0 highest .. 3 lowest); bit 7: response;
///                          bits 2-6 reserved, 0
/// 7      1    status       see Status; 0 in a request
/// 8      4    deadline_us  budget in µs from when the client sent the request (0: none);
///                          0 in a response
/// 12     4    body_len     bytes of body after the header, at most FRAME_BODY_MAX
/// 16     8    request_id   chosen by the client, repeated by the response
/// 24     4    body_crc     CRC32C of the body (0 for an empty body)
/// 28     4    header_crc   CRC32C of bytes 0..28
/// ```
///
/// The six wide fields take 28 bytes; version, opcode, flags and status take one byte each so
/// the header stays 32 bytes with every field naturally aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: u8,
    pub opcode: u8,
    pub flags: u8,
    pub status: u8,
    pub deadline_us: U32,
    pub body_len: U32,
    pub request_id: U64,
    pub body_crc: U32,
    pub header_crc: U32,
}
const _: () = assert!(size_of::<FrameHeader>() == 32);

/// What a request asks for. A response carries the opcode of the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Ping = 1,
    Auth = 2,
    Put = 3,
    Get = 4,
    GetIfNewer = 5,
    Delete = 6,
    DeleteRange = 7,
    Scan = 8,
    MGet = 9,
    MPut = 10,
    Stats = 11,
    /// Raw bytes of one of the node's cold files (admin): how `strata-tool repair` and
    /// `rebuild-disk` copy from a running peer.
    ColdRead = 12,
}

impl Opcode {
    pub const ALL: [Self; 12] = [
        Self::Ping,
        Self::Auth,
        Self::Put,
        Self::Get,
        Self::GetIfNewer,
        Self::Delete,
        Self::DeleteRange,
        Self::Scan,
        Self::MGet,
        Self::MPut,
        Self::Stats,
        Self::ColdRead,
    ];

    #[must_use]
    pub fn from_u8(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as u8 == byte)
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ping => "PING",
            Self::Auth => "AUTH",
            Self::Put => "PUT",
            Self::Get => "GET",
            Self::GetIfNewer => "GET_IF_NEWER",
            Self::Delete => "DELETE",
            Self::DeleteRange => "DELETE_RANGE",
            Self::Scan => "SCAN",
            Self::MGet => "MGET",
            Self::MPut => "MPUT",
            Self::Stats => "STATS",
            Self::ColdRead => "COLD_READ",
        }
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a response ended. The same codes are used per item in MGET and MPUT answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    /// GET_IF_NEWER: the caller already holds the newest version.
    NotModified = 2,
    /// Shed by admission control; retry after the hint, lowest priority first.
    Overloaded = 3,
    /// The pkey's bucket lives on another shard, whose index the body names.
    WrongShard = 4,
    BadRequest = 5,
    TooLarge = 6,
    Unauthorized = 7,
    ReadOnly = 8,
    /// The write may or may not have been applied (for example the disk failed mid-commit).
    UnknownOutcome = 9,
    Corrupted = 10,
    Internal = 11,
}

impl Status {
    pub const ALL: [Self; 12] = [
        Self::Ok,
        Self::NotFound,
        Self::NotModified,
        Self::Overloaded,
        Self::WrongShard,
        Self::BadRequest,
        Self::TooLarge,
        Self::Unauthorized,
        Self::ReadOnly,
        Self::UnknownOutcome,
        Self::Corrupted,
        Self::Internal,
    ];

    #[must_use]
    pub fn from_u8(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|status| *status as u8 == byte)
    }

    #[must_use]
    pub fn from_u16(code: u16) -> Option<Self> {
        u8::try_from(code).ok().and_then(Self::from_u8)
    }

    /// The statuses whose body is only an error message.
    #[must_use]
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::BadRequest
                | Self::TooLarge
                | Self::Unauthorized
                | Self::ReadOnly
                | Self::UnknownOutcome
                | Self::Corrupted
                | Self::Internal
        )
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::NotFound => "NOT_FOUND",
            Self::NotModified => "NOT_MODIFIED",
            Self::Overloaded => "OVERLOADED",
            Self::WrongShard => "WRONG_SHARD",
            Self::BadRequest => "BAD_REQUEST",
            Self::TooLarge => "TOO_LARGE",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::ReadOnly => "READ_ONLY",
            Self::UnknownOutcome => "UNKNOWN_OUTCOME",
            Self::Corrupted => "CORRUPTED",
            Self::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request's priority; admission control sheds `Lowest` first. Ordered from `Highest` (0) to
/// `Lowest` (3), so the largest value is the first to shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    Highest = 0,
    High = 1,
    Low = 2,
    Lowest = 3,
}

impl Priority {
    pub const ALL: [Self; 4] = [Self::Highest, Self::High, Self::Low, Self::Lowest];

    /// The priority held in the two low bits of a header's flags.
    #[must_use]
    pub fn from_flags(flags: u8) -> Self {
        Self::ALL[usize::from(flags & FLAG_PRIORITY_MASK)]
    }

    /// 0 for `Highest` .. 3 for `Lowest`, to index per-priority queues.
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: Opcode,
    pub priority: Priority,
    pub response: bool,
    /// `Ok` in every request.
    pub status: Status,
    pub request_id: u64,
    /// 0 in every response.
    pub deadline_us: u32,
    pub body_len: u32,
    pub body_crc: u32,
}

/// What a response needs from the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub request_id: u64,
    /// The request's opcode byte, repeated even when it names no known operation.
    pub opcode: u8,
    pub priority: Priority,
}

/// What a request header needs from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub request_id: u64,
    /// Budget in µs from when the request is sent (0: none).
    pub deadline_us: u32,
    pub priority: Priority,
}

/// Why bytes are not a valid frame, or a request or response is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    BadMagic {
        found: u32,
    },
    BadVersion {
        found: u8,
    },
    HeaderChecksum {
        expected: u32,
        actual: u32,
    },
    BodyChecksum {
        expected: u32,
        actual: u32,
    },
    ReservedNonZero {
        field: &'static str,
    },
    BodyTooLarge {
        len: u64,
        max: u32,
    },
    /// The body handed to a decoder is not the length its header declares.
    BodyLengthMismatch {
        declared: u32,
        actual: usize,
    },
    UnknownOpcode {
        op: u8,
    },
    UnknownStatus {
        status: u16,
    },
    /// A response was given where a request was expected, or the reverse.
    WrongDirection {
        expected_response: bool,
    },
    /// A response status that the operation never answers with.
    UnexpectedStatus {
        opcode: Opcode,
        status: Status,
    },
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    TrailingBytes {
        count: usize,
    },
    PkeyEmpty,
    PkeyTooLong {
        len: usize,
    },
    ValueTooLarge {
        len: u64,
        max: u32,
    },
    TicketTooLarge {
        len: usize,
        max: usize,
    },
    TooManyItems {
        count: usize,
        max: u16,
    },
    NoItems,
    /// `ts_from` is above `ts_to`.
    BadRange {
        ts_from: Timestamp,
        ts_to: Timestamp,
    },
    ScanLimit {
        limit: u32,
        max: u32,
    },
    /// A byte that must be 0 or 1 is neither.
    BadFlag {
        field: &'static str,
        found: u8,
    },
    BadUtf8 {
        field: &'static str,
    },
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl ProtocolError {
    /// Whether the byte stream can no longer be trusted to find the next frame: the connection
    /// must be closed. Other errors leave the stream in step (the header, checksum and all, is
    /// intact) and can be answered.
    #[must_use]
    pub fn is_framing(&self) -> bool {
        matches!(self, Self::BadMagic { .. } | Self::BadVersion { .. } | Self::HeaderChecksum { .. })
    }

    /// The status a server answers this error with.
    #[must_use]
    pub fn status(&self) -> Status {
        match self {
            Self::BodyTooLarge { .. }
            | Self::PkeyTooLong { .. }
            | Self::ValueTooLarge { .. }
            | Self::TicketTooLarge { .. }
            | Self::TooManyItems { .. } => Status::TooLarge,
            Self::ScanLimit { limit, max } if limit > max => Status::TooLarge,
            _ => Status::BadRequest,
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadMagic { found } => write!(f, "bad frame magic {found:#010x} (not a Strata client?)"),
            Self::BadVersion { found } => {
                write!(f, "protocol version {found} is not supported (this side speaks {PROTOCOL_VERSION})")
            }
            Self::HeaderChecksum { expected, actual } => {
                write!(f, "header checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")
            }
            Self::BodyChecksum { expected, actual } => {
                write!(f, "body checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")
            }
            Self::ReservedNonZero { field } => write!(f, "reserved field {field} is not zero"),
            Self::BodyTooLarge { len, max } => write!(f, "body of {len} bytes exceeds the limit of {max}"),
            Self::BodyLengthMismatch { declared, actual } => {
                write!(f, "header declares a body of {declared} bytes but {actual} were given")
            }
            Self::UnknownOpcode { op } => write!(f, "unknown opcode {op}"),
            Self::UnknownStatus { status } => write!(f, "unknown status {status}"),
            Self::WrongDirection { expected_response: true } => write!(f, "expected a response, got a request"),
            Self::WrongDirection { expected_response: false } => write!(f, "expected a request, got a response"),
            Self::UnexpectedStatus { opcode, status } => write!(f, "{opcode} never answers {status}"),
            Self::Truncated { field, needed, remaining } => {
                write!(f, "truncated at {field}: needs {needed} bytes, {remaining} remain")
            }
            Self::TrailingBytes { count } => write!(f, "{count} bytes after the last field"),
            Self::PkeyEmpty => write!(f, "pkey is empty (it must be 1..={PKEY_LEN_MAX} bytes)"),
            Self::PkeyTooLong { len } => write!(f, "pkey is {len} bytes (at most {PKEY_LEN_MAX})"),
            Self::ValueTooLarge { len, max } => write!(f, "value of {len} bytes exceeds the limit of {max}"),
            Self::TicketTooLarge { len, max } => write!(f, "ticket of {len} bytes exceeds the limit of {max}"),
            Self::TooManyItems { count, max } => write!(f, "{count} items exceed the limit of {max} per request"),
            Self::NoItems => write!(f, "a batch needs at least one item"),
            Self::BadRange { ts_from, ts_to } => write!(f, "ts_from {ts_from} is above ts_to {ts_to}"),
            Self::ScanLimit { limit, max } => write!(f, "scan limit {limit} is not in 1..={max}"),
            Self::BadFlag { field, found } => write!(f, "{field} is {found}, not 0 or 1"),
            Self::BadUtf8 { field } => write!(f, "{field} is not UTF-8"),
            Self::Invalid { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

struct RawHead {
    opcode: u8,
    flags: u8,
    status: u8,
    deadline_us: u32,
    request_id: u64,
}

fn seal_header(head: &RawHead, body_len: u32, body_crc: u32) -> FrameHeader {
    assert!(body_len <= FRAME_BODY_MAX, "frame body of {body_len} bytes exceeds the limit");
    let mut header = FrameHeader {
        magic: FRAME_MAGIC.into(),
        version: PROTOCOL_VERSION,
        opcode: head.opcode,
        flags: head.flags,
        status: head.status,
        deadline_us: head.deadline_us.into(),
        body_len: body_len.into(),
        request_id: head.request_id.into(),
        body_crc: body_crc.into(),
        header_crc: 0.into(),
    };
    header.header_crc = crc32c(&header.as_bytes()[..HEADER_CRC_COVERS]).into();
    header
}

impl FrameHeader {
    /// Checks a header without its body: magic, checksum, version, reserved bits, opcode,
    /// status and the body limit.
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Result<Header, ProtocolError> {
        let header = Self::intact(bytes)?;
        if header.flags & !(FLAG_PRIORITY_MASK | FLAG_RESPONSE) != 0 {
            return Err(ProtocolError::ReservedNonZero { field: "flags" });
        }
        let response = header.flags & FLAG_RESPONSE != 0;
        if !response && header.status != 0 {
            return Err(ProtocolError::ReservedNonZero { field: "status (in a request)" });
        }
        if response && header.deadline_us.get() != 0 {
            return Err(ProtocolError::ReservedNonZero { field: "deadline_us (in a response)" });
        }
        let opcode = Opcode::from_u8(header.opcode).ok_or(ProtocolError::UnknownOpcode { op: header.opcode })?;
        let status =
            Status::from_u8(header.status).ok_or(ProtocolError::UnknownStatus { status: header.status.into() })?;
        let body_len = header.body_len.get();
        if body_len > FRAME_BODY_MAX {
            return Err(ProtocolError::BodyTooLarge { len: body_len.into(), max: FRAME_BODY_MAX });
        }
        Ok(Header {
            opcode,
            priority: Priority::from_flags(header.flags),
            response,
            status,
            request_id: header.request_id.get(),
            deadline_us: header.deadline_us.get(),
            body_len,
            body_crc: header.body_crc.get(),
        })
    }

    /// The request a refused header can still be answered for: `Some` when the header's magic,
    /// checksum and version are good and it is a request, whatever else `decode` refused.
    #[must_use]
    pub fn peek_reply_to(bytes: &[u8; HEADER_SIZE]) -> Option<ReplyTo> {
        let header = Self::intact(bytes).ok()?;
        if header.flags & FLAG_RESPONSE != 0 {
            return None;
        }
        Some(ReplyTo {
            request_id: header.request_id.get(),
            opcode: header.opcode,
            priority: Priority::from_flags(header.flags),
        })
    }

    /// The checks that say whether the stream is still in step.
    fn intact(bytes: &[u8; HEADER_SIZE]) -> Result<Self, ProtocolError> {
        let header = Self::read_from_bytes(bytes).expect("a header is exactly HEADER_SIZE bytes");
        if header.magic.get() != FRAME_MAGIC {
            return Err(ProtocolError::BadMagic { found: header.magic.get() });
        }
        let actual = crc32c(&bytes[..HEADER_CRC_COVERS]);
        if actual != header.header_crc.get() {
            return Err(ProtocolError::HeaderChecksum { expected: header.header_crc.get(), actual });
        }
        if header.version != PROTOCOL_VERSION {
            return Err(ProtocolError::BadVersion { found: header.version });
        }
        Ok(header)
    }
}

impl Header {
    /// The header's bytes, with its checksum.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        assert!(self.response || self.status == Status::Ok, "a request carries no status");
        assert!(!self.response || self.deadline_us == 0, "a response carries no deadline");
        let flags = self.priority as u8 | if self.response { FLAG_RESPONSE } else { 0 };
        let head = RawHead {
            opcode: self.opcode as u8,
            flags,
            status: self.status as u8,
            deadline_us: self.deadline_us,
            request_id: self.request_id,
        };
        let mut bytes = [0; HEADER_SIZE];
        bytes.copy_from_slice(seal_header(&head, self.body_len, self.body_crc).as_bytes());
        bytes
    }

    /// How to address the response to this request.
    #[must_use]
    pub fn reply_to(&self) -> ReplyTo {
        assert!(!self.response, "only a request is answered");
        ReplyTo { request_id: self.request_id, opcode: self.opcode as u8, priority: self.priority }
    }
}

/// Checks a body against its header: its length and its checksum.
pub fn check_body(header: &Header, body: &[u8]) -> Result<(), ProtocolError> {
    if body.len() != header.body_len as usize {
        return Err(ProtocolError::BodyLengthMismatch { declared: header.body_len, actual: body.len() });
    }
    let actual = crc32c(body);
    if actual != header.body_crc {
        return Err(ProtocolError::BodyChecksum { expected: header.body_crc, actual });
    }
    Ok(())
}

/// A whole frame found at the start of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the frame takes in the buffer: the header and the body.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        HEADER_SIZE + self.body.len()
    }
}

/// The frame at the start of `buf`, checked (header and body checksum), or `None` while `buf`
/// holds less than a whole frame.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, ProtocolError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_SIZE>() else {
        return Ok(None);
    };
    let header = FrameHeader::decode(header_bytes)?;
    let Some(body) = buf[HEADER_SIZE..].get(..header.body_len as usize) else {
        return Ok(None);
    };
    check_body(&header, body)?;
    Ok(Some(Frame { header, body }))
}

// ---------------------------------------------------------------------------------------------
// Reading and writing body fields
// ---------------------------------------------------------------------------------------------

/// Reads fields from the front of a body, checking each length against what remains.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    fn take(&mut self, field: &'static str, needed: usize) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < needed {
            return Err(ProtocolError::Truncated { field, needed, remaining: self.rest.len() });
        }
        let (taken, rest) = self.rest.split_at(needed);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        Ok(self.take(field, N)?.try_into().expect("take returns exactly N bytes"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            found => Err(ProtocolError::BadFlag { field, found }),
        }
    }

    fn status(&mut self) -> Result<Status, ProtocolError> {
        let code = self.u16("item status")?;
        Status::from_u16(code).ok_or(ProtocolError::UnknownStatus { status: code })
    }

    /// `pkey_len u8` (1..=255), then the pkey.
    fn pkey(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = usize::from(self.u8("pkey_len")?);
        if len == 0 {
            return Err(ProtocolError::PkeyEmpty);
        }
        self.take("pkey", len)
    }

    fn key(&mut self) -> Result<Key<'a>, ProtocolError> {
        Ok(Key { pkey: self.pkey()?, ts: self.u64("ts")? })
    }

    /// `value_len u32` (at most `VALUE_LEN_MAX`), then the value.
    fn value(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32("value_len")?;
        if len > VALUE_LEN_MAX {
            return Err(ProtocolError::ValueTooLarge { len: len.into(), max: VALUE_LEN_MAX });
        }
        self.take("value", len as usize)
    }

    fn put(&mut self) -> Result<Put<'a>, ProtocolError> {
        Ok(Put { pkey: self.pkey()?, ts: self.u64("ts")?, value: self.value()? })
    }

    /// `message_len u16` (at most `MESSAGE_LEN_MAX`), then UTF-8.
    fn message(&mut self) -> Result<&'a str, ProtocolError> {
        let len = usize::from(self.u16("message_len")?);
        if len > MESSAGE_LEN_MAX {
            return Err(ProtocolError::Invalid { field: "message", reason: "longer than MESSAGE_LEN_MAX" });
        }
        std::str::from_utf8(self.take("message", len)?).map_err(|_| ProtocolError::BadUtf8 { field: "message" })
    }

    /// `count u16`, 1..=`BATCH_ITEMS_MAX`.
    fn batch_count(&mut self) -> Result<u16, ProtocolError> {
        let count = self.u16("count")?;
        if count == 0 {
            return Err(ProtocolError::NoItems);
        }
        if count > BATCH_ITEMS_MAX {
            return Err(ProtocolError::TooManyItems { count: count.into(), max: BATCH_ITEMS_MAX });
        }
        Ok(count)
    }

    /// Walks `count` items with `item`, and returns the bytes they take.
    fn items<T>(
        &mut self,
        count: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, ProtocolError>,
    ) -> Result<&'a [u8], ProtocolError> {
        let start = self.rest;
        for _ in 0..count {
            item(self)?;
        }
        Ok(&start[..start.len() - self.rest.len()])
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() { Ok(()) } else { Err(ProtocolError::TrailingBytes { count: self.rest.len() }) }
    }
}

fn check_pkey(pkey: &[u8]) -> Result<(), ProtocolError> {
    if pkey.is_empty() {
        return Err(ProtocolError::PkeyEmpty);
    }
    if pkey.len() > PKEY_LEN_MAX {
        return Err(ProtocolError::PkeyTooLong { len: pkey.len() });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), ProtocolError> {
    if value.len() > VALUE_LEN_MAX as usize {
        return Err(ProtocolError::ValueTooLarge { len: value.len() as u64, max: VALUE_LEN_MAX });
    }
    Ok(())
}

fn check_range(ts_from: Timestamp, ts_to: Timestamp) -> Result<(), ProtocolError> {
    if ts_from > ts_to {
        return Err(ProtocolError::BadRange { ts_from, ts_to });
    }
    Ok(())
}

fn check_scan_limit(limit: u32) -> Result<(), ProtocolError> {
    if limit == 0 || limit > SCAN_LIMIT_MAX {
        return Err(ProtocolError::ScanLimit { limit, max: SCAN_LIMIT_MAX });
    }
    Ok(())
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes `pkey_len u8` and the pkey; the caller has checked the pkey.
fn put_pkey(out: &mut Vec<u8>, pkey: &[u8]) {
    debug_assert!(check_pkey(pkey).is_ok());
    out.push(pkey.len() as u8);
    out.extend_from_slice(pkey);
}

/// Writes `value_len u32` and the value; the caller has checked the value.
fn put_value(out: &mut Vec<u8>, value: &[u8]) {
    debug_assert!(check_value(value).is_ok());
    put_u32(out, value.len() as u32);
    out.extend_from_slice(value);
}

/// Writes `message_len u16` and the message, cut to `MESSAGE_LEN_MAX` bytes at a character
/// boundary.
fn put_message(out: &mut Vec<u8>, message: &str) {
    let mut len = message.len().min(MESSAGE_LEN_MAX);
    while !message.is_char_boundary(len) {
        len -= 1;
    }
    put_u16(out, len as u16);
    out.extend_from_slice(&message.as_bytes()[..len]);
}

/// Reserves room for a header at the end of `out`; returns where the frame starts.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + HEADER_SIZE, 0);
    start
}

/// Fills in the header of the frame that starts at `start`, whose body is the rest of `out`.
fn finish_frame(out: &mut [u8], start: usize, head: &RawHead) {
    let (header, body) = out[start..].split_at_mut(HEADER_SIZE);
    let body_len = u32::try_from(body.len()).expect("a frame body should fit u32");
    header.copy_from_slice(seal_header(head, body_len, crc32c(body)).as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A key: a pkey and a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    pub pkey: &'a [u8],
    pub ts: Timestamp,
}

/// One write: a PUT's body, or one MPUT item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put<'a> {
    pub pkey: &'a [u8],
    pub ts: Timestamp,
    pub value: &'a [u8],
}

/// A SCAN: entries of one pkey with `ts_from <= ts <= ts_to`, at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan<'a> {
    pub pkey: &'a [u8],
    pub ts_from: Timestamp,
    pub ts_to: Timestamp,
    pub limit: u32,
    pub newest_first: bool,
}

/// A COLD_READ: `len` bytes at `offset` of cold file `file` on disk `disk` of shard
/// `file.shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdRead {
    pub disk: u16,
    pub file: crate::cold::ColdFileId,
    pub offset: u64,
    pub len: u32,
}

fn check_cold_read(read: &ColdRead) -> Result<(), ProtocolError> {
    if read.len > COLD_READ_MAX {
        return Err(ProtocolError::BodyTooLarge { len: u64::from(read.len), max: COLD_READ_MAX });
    }
    if read.len == 0
        || !read.len.is_multiple_of(COLD_READ_ALIGN)
        || !read.offset.is_multiple_of(u64::from(COLD_READ_ALIGN))
    {
        return Err(ProtocolError::Invalid {
            field: "COLD_READ",
            reason: "offset and len must be multiples of 4096, and len above 0",
        });
    }
    Ok(())
}

/// A decoded request, borrowing from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Ping {
        echo: &'a [u8],
    },
    /// Presents a ticket (see [`crate::ticket`]); once per connection.
    Auth {
        ticket: &'a [u8],
    },
    Put(Put<'a>),
    Get(Key<'a>),
    /// A GET answered NOT_MODIFIED when the newest version is `version`, the one the caller holds.
    GetIfNewer {
        key: Key<'a>,
        version: Version,
    },
    Delete(Key<'a>),
    /// Deletes every entry of `pkey` with `ts_from <= ts <= ts_to` (both ends included).
    DeleteRange {
        pkey: &'a [u8],
        ts_from: Timestamp,
        ts_to: Timestamp,
    },
    Scan(Scan<'a>),
    MGet(MGetItems<'a>),
    MPut(MPutItems<'a>),
    Stats,
    ColdRead(ColdRead),
}

impl<'a> Request<'a> {
    #[must_use]
    pub fn opcode(&self) -> Opcode {
        match self {
            Self::Ping { .. } => Opcode::Ping,
            Self::Auth { .. } => Opcode::Auth,
            Self::Put(_) => Opcode::Put,
            Self::Get(_) => Opcode::Get,
            Self::GetIfNewer { .. } => Opcode::GetIfNewer,
            Self::Delete(_) => Opcode::Delete,
            Self::DeleteRange { .. } => Opcode::DeleteRange,
            Self::Scan(_) => Opcode::Scan,
            Self::MGet(_) => Opcode::MGet,
            Self::MPut(_) => Opcode::MPut,
            Self::Stats => Opcode::Stats,
            Self::ColdRead(_) => Opcode::ColdRead,
        }
    }

    /// The pkey of a single-pkey request; `None` for PING, AUTH, STATS and the batches (whose
    /// items each name their own).
    #[must_use]
    pub fn pkey(&self) -> Option<&'a [u8]> {
        match self {
            Self::Put(put) => Some(put.pkey),
            Self::Get(key) | Self::GetIfNewer { key, .. } | Self::Delete(key) => Some(key.pkey),
            Self::DeleteRange { pkey, .. } => Some(pkey),
            Self::Scan(scan) => Some(scan.pkey),
            Self::Ping { .. } | Self::Auth { .. } | Self::MGet(_) | Self::MPut(_) | Self::Stats | Self::ColdRead(_) => {
                None
            }
        }
    }
}

/// The items of a batch (MGET keys, MPUT writes, SCAN entries, MGET and MPUT results), whose
/// bytes were checked when the frame was decoded: they are iterated without allocating.
pub struct Batch<'a, T> {
    items: &'a [u8],
    count: usize,
    read: fn(&mut Reader<'a>) -> Result<T, ProtocolError>,
}

/// The keys of an MGET.
pub type MGetItems<'a> = Batch<'a, Key<'a>>;
/// The writes of an MPUT.
pub type MPutItems<'a> = Batch<'a, Put<'a>>;
/// An MGET answer, items in request order.
pub type MGetResults<'a> = Batch<'a, MGetResult<'a>>;
/// An MPUT answer, items in request order.
pub type MPutResults<'a> = Batch<'a, MPutResult>;

impl<'a, T> Batch<'a, T> {
    /// Checks `count` items at the reader's position and takes their bytes.
    fn take(
        reader: &mut Reader<'a>,
        count: usize,
        read: fn(&mut Reader<'a>) -> Result<T, ProtocolError>,
    ) -> Result<Self, ProtocolError> {
        Ok(Self { items: reader.items(count, read)?, count, read })
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    #[must_use]
    pub fn iter(&self) -> Items<'a, T> {
        Items { reader: Reader::new(self.items), remaining: self.count, read: self.read }
    }
}

impl<T> Clone for Batch<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Batch<'_, T> {}

impl<T> PartialEq for Batch<'_, T> {
    /// Batches are equal when their bytes are: the item type fixes how they are read.
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items && self.count == other.count
    }
}

impl<T> Eq for Batch<'_, T> {}

impl<T> std::fmt::Debug for Batch<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("count", &self.count).field("bytes", &self.items.len()).finish()
    }
}

impl<'a, T> IntoIterator for Batch<'a, T> {
    type Item = T;
    type IntoIter = Items<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterates the items of a batch whose bytes were checked when it was decoded.
pub struct Items<'a, T> {
    reader: Reader<'a>,
    remaining: usize,
    read: fn(&mut Reader<'a>) -> Result<T, ProtocolError>,
}

impl<T> std::fmt::Debug for Items<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Items").field("remaining", &self.remaining).finish_non_exhaustive()
    }
}

impl<T> Iterator for Items<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.remaining == 0 {
            debug_assert!(self.reader.rest.is_empty());
            return None;
        }
        self.remaining -= 1;
        Some((self.read)(&mut self.reader).expect("batch items should have been checked when decoded"))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> ExactSizeIterator for Items<'_, T> {}

/// Decodes a request body. The caller has decoded the header and checked the body
/// ([`check_body`]).
pub fn decode_request<'a>(header: &Header, body: &'a [u8]) -> Result<Request<'a>, ProtocolError> {
    if header.response {
        return Err(ProtocolError::WrongDirection { expected_response: false });
    }
    if body.len() != header.body_len as usize {
        return Err(ProtocolError::BodyLengthMismatch { declared: header.body_len, actual: body.len() });
    }
    parse_request(header.opcode, body)
}

fn parse_request(opcode: Opcode, body: &[u8]) -> Result<Request<'_>, ProtocolError> {
    let mut reader = Reader::new(body);
    let request = match opcode {
        Opcode::Ping => Request::Ping { echo: reader.rest() },
        Opcode::Auth => {
            let ticket = reader.rest();
            if ticket.len() > TICKET_LEN_MAX {
                return Err(ProtocolError::TicketTooLarge { len: ticket.len(), max: TICKET_LEN_MAX });
            }
            Request::Auth { ticket }
        }
        Opcode::Put => Request::Put(reader.put()?),
        Opcode::Get => Request::Get(reader.key()?),
        Opcode::GetIfNewer => Request::GetIfNewer { key: reader.key()?, version: reader.u64("version")? },
        Opcode::Delete => Request::Delete(reader.key()?),
        Opcode::DeleteRange => {
            let (pkey, ts_from, ts_to) = (reader.pkey()?, reader.u64("ts_from")?, reader.u64("ts_to")?);
            check_range(ts_from, ts_to)?;
            Request::DeleteRange { pkey, ts_from, ts_to }
        }
        Opcode::Scan => {
            let (pkey, ts_from, ts_to) = (reader.pkey()?, reader.u64("ts_from")?, reader.u64("ts_to")?);
            let (limit, newest_first) = (reader.u32("limit")?, reader.flag("newest_first")?);
            check_range(ts_from, ts_to)?;
            check_scan_limit(limit)?;
            Request::Scan(Scan { pkey, ts_from, ts_to, limit, newest_first })
        }
        Opcode::MGet => {
            let count = reader.batch_count()?;
            Request::MGet(Batch::take(&mut reader, count.into(), Reader::key)?)
        }
        Opcode::MPut => {
            let count = reader.batch_count()?;
            Request::MPut(Batch::take(&mut reader, count.into(), Reader::put)?)
        }
        Opcode::Stats => Request::Stats,
        Opcode::ColdRead => {
            let (shard, disk, window) = (reader.u16("shard")?, reader.u16("disk")?, reader.u64("window")?);
            let (generation, part) = (reader.u32("generation")?, reader.u16("part")?);
            if reader.u16("reserved")? != 0 {
                return Err(ProtocolError::ReservedNonZero { field: "COLD_READ reserved" });
            }
            let (offset, len) = (reader.u64("offset")?, reader.u32("len")?);
            let file = crate::cold::ColdFileId { window, shard, generation, part };
            let read = ColdRead { disk, file, offset, len };
            check_cold_read(&read)?;
            Request::ColdRead(read)
        }
    };
    reader.finish()?;
    Ok(request)
}

/// Appends a request frame whose body `write_body` writes. On error `out` is left as it was.
fn encode_request_with(
    out: &mut Vec<u8>,
    head: RequestHead,
    opcode: Opcode,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let start = begin_frame(out);
    let written = write_body(out).and_then(|()| {
        let len = out.len() - start - HEADER_SIZE;
        if len > FRAME_BODY_MAX as usize {
            return Err(ProtocolError::BodyTooLarge { len: len as u64, max: FRAME_BODY_MAX });
        }
        Ok(())
    });
    if let Err(error) = written {
        out.truncate(start);
        return Err(error);
    }
    let raw = RawHead {
        opcode: opcode as u8,
        flags: head.priority as u8,
        status: Status::Ok as u8,
        deadline_us: head.deadline_us,
        request_id: head.request_id,
    };
    finish_frame(out, start, &raw);
    Ok(())
}

/// Appends any request. The batches (MGET, MPUT) are copied as they were decoded; the client
/// builds new ones with [`encode_mget`] and [`encode_mput`].
pub fn encode_request(out: &mut Vec<u8>, head: RequestHead, request: &Request<'_>) -> Result<(), ProtocolError> {
    match *request {
        Request::Ping { echo } => encode_ping(out, head, echo),
        Request::Auth { ticket } => encode_auth(out, head, ticket),
        Request::Put(put) => encode_put(out, head, put.pkey, put.ts, put.value),
        Request::Get(key) => encode_get(out, head, key.pkey, key.ts),
        Request::GetIfNewer { key, version } => encode_get_if_newer(out, head, key.pkey, key.ts, version),
        Request::Delete(key) => encode_delete(out, head, key.pkey, key.ts),
        Request::DeleteRange { pkey, ts_from, ts_to } => encode_delete_range(out, head, pkey, ts_from, ts_to),
        Request::Scan(scan) => encode_scan(out, head, &scan),
        Request::MGet(items) => encode_request_with(out, head, Opcode::MGet, |out| {
            put_u16(out, items.count as u16);
            out.extend_from_slice(items.items);
            Ok(())
        }),
        Request::MPut(items) => encode_request_with(out, head, Opcode::MPut, |out| {
            put_u16(out, items.count as u16);
            out.extend_from_slice(items.items);
            Ok(())
        }),
        Request::Stats => encode_stats(out, head),
        Request::ColdRead(read) => encode_cold_read(out, head, &read),
    }
}

/// PING: the body is echoed back as it is.
pub fn encode_ping(out: &mut Vec<u8>, head: RequestHead, echo: &[u8]) -> Result<(), ProtocolError> {
    encode_request_with(out, head, Opcode::Ping, |out| {
        out.extend_from_slice(echo);
        Ok(())
    })
}

/// AUTH: the body is a signed ticket ([`crate::ticket::Ticket::sign`]).
pub fn encode_auth(out: &mut Vec<u8>, head: RequestHead, ticket: &[u8]) -> Result<(), ProtocolError> {
    if ticket.len() > TICKET_LEN_MAX {
        return Err(ProtocolError::TicketTooLarge { len: ticket.len(), max: TICKET_LEN_MAX });
    }
    encode_request_with(out, head, Opcode::Auth, |out| {
        out.extend_from_slice(ticket);
        Ok(())
    })
}

/// PUT: `pkey_len u8, pkey, ts u64, value_len u32, value`.
pub fn encode_put(
    out: &mut Vec<u8>,
    head: RequestHead,
    pkey: &[u8],
    ts: Timestamp,
    value: &[u8],
) -> Result<(), ProtocolError> {
    check_pkey(pkey)?;
    check_value(value)?;
    encode_request_with(out, head, Opcode::Put, |out| {
        put_pkey(out, pkey);
        put_u64(out, ts);
        put_value(out, value);
        Ok(())
    })
}

/// GET: `pkey_len u8, pkey, ts u64`.
pub fn encode_get(out: &mut Vec<u8>, head: RequestHead, pkey: &[u8], ts: Timestamp) -> Result<(), ProtocolError> {
    check_pkey(pkey)?;
    encode_request_with(out, head, Opcode::Get, |out| {
        put_pkey(out, pkey);
        put_u64(out, ts);
        Ok(())
    })
}

/// GET_IF_NEWER: `pkey_len u8, pkey, ts u64, version u64` (the version the caller holds).
pub fn encode_get_if_newer(
    out: &mut Vec<u8>,
    head: RequestHead,
    pkey: &[u8],
    ts: Timestamp,
    version: Version,
) -> Result<(), ProtocolError> {
    check_pkey(pkey)?;
    encode_request_with(out, head, Opcode::GetIfNewer, |out| {
        put_pkey(out, pkey);
        put_u64(out, ts);
        put_u64(out, version);
        Ok(())
    })
}

/// DELETE: `pkey_len u8, pkey, ts u64`.
pub fn encode_delete(out: &mut Vec<u8>, head: RequestHead, pkey: &[u8], ts: Timestamp) -> Result<(), ProtocolError> {
    check_pkey(pkey)?;
    encode_request_with(out, head, Opcode::Delete, |out| {
        put_pkey(out, pkey);
        put_u64(out, ts);
        Ok(())
    })
}

/// DELETE_RANGE: `pkey_len u8, pkey, ts_from u64, ts_to u64`, both ends included.
pub fn encode_delete_range(
    out: &mut Vec<u8>,
    head: RequestHead,
    pkey: &[u8],
    ts_from: Timestamp,
    ts_to: Timestamp,
) -> Result<(), ProtocolError> {
    check_pkey(pkey)?;
    check_range(ts_from, ts_to)?;
    encode_request_with(out, head, Opcode::DeleteRange, |out| {
        put_pkey(out, pkey);
        put_u64(out, ts_from);
        put_u64(out, ts_to);
        Ok(())
    })
}

/// SCAN: `pkey_len u8, pkey, ts_from u64, ts_to u64, limit u32, newest_first u8`.
pub fn encode_scan(out: &mut Vec<u8>, head: RequestHead, scan: &Scan<'_>) -> Result<(), ProtocolError> {
    check_pkey(scan.pkey)?;
    check_range(scan.ts_from, scan.ts_to)?;
    check_scan_limit(scan.limit)?;
    encode_request_with(out, head, Opcode::Scan, |out| {
        put_pkey(out, scan.pkey);
        put_u64(out, scan.ts_from);
        put_u64(out, scan.ts_to);
        put_u32(out, scan.limit);
        out.push(u8::from(scan.newest_first));
        Ok(())
    })
}

/// Writes `count u16` and the items `write_item` writes, checking the count as it goes.
fn put_batch<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut write_item: impl FnMut(&mut Vec<u8>, T) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let count_at = out.len();
    put_u16(out, 0);
    let mut count = 0usize;
    for item in items {
        count += 1;
        if count > usize::from(BATCH_ITEMS_MAX) {
            return Err(ProtocolError::TooManyItems { count, max: BATCH_ITEMS_MAX });
        }
        write_item(out, item)?;
    }
    if count == 0 {
        return Err(ProtocolError::NoItems);
    }
    out[count_at..count_at + 2].copy_from_slice(&(count as u16).to_le_bytes());
    Ok(())
}

/// MGET: `count u16`, then `count` times `pkey_len u8, pkey, ts u64`.
pub fn encode_mget<'k>(
    out: &mut Vec<u8>,
    head: RequestHead,
    keys: impl IntoIterator<Item = Key<'k>>,
) -> Result<(), ProtocolError> {
    encode_request_with(out, head, Opcode::MGet, |out| {
        put_batch(out, keys, |out, key| {
            check_pkey(key.pkey)?;
            put_pkey(out, key.pkey);
            put_u64(out, key.ts);
            Ok(())
        })
    })
}

/// MPUT: `count u16`, then `count` PUT bodies.
pub fn encode_mput<'k>(
    out: &mut Vec<u8>,
    head: RequestHead,
    puts: impl IntoIterator<Item = Put<'k>>,
) -> Result<(), ProtocolError> {
    encode_request_with(out, head, Opcode::MPut, |out| {
        put_batch(out, puts, |out, put| {
            check_pkey(put.pkey)?;
            check_value(put.value)?;
            put_pkey(out, put.pkey);
            put_u64(out, put.ts);
            put_value(out, put.value);
            Ok(())
        })
    })
}

/// STATS: an empty body.
pub fn encode_stats(out: &mut Vec<u8>, head: RequestHead) -> Result<(), ProtocolError> {
    encode_request_with(out, head, Opcode::Stats, |_| Ok(()))
}

/// COLD_READ: `shard u16, disk u16, window u64, generation u32, part u16, reserved u16 (0),
/// offset u64, len u32`.
pub fn encode_cold_read(out: &mut Vec<u8>, head: RequestHead, read: &ColdRead) -> Result<(), ProtocolError> {
    check_cold_read(read)?;
    encode_request_with(out, head, Opcode::ColdRead, |out| {
        put_u16(out, read.file.shard);
        put_u16(out, read.disk);
        put_u64(out, read.file.window);
        put_u32(out, read.file.generation);
        put_u16(out, read.file.part);
        put_u16(out, 0);
        put_u64(out, read.offset);
        put_u32(out, read.len);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// One SCAN answer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEntry<'a> {
    pub ts: Timestamp,
    pub version: Version,
    pub value: &'a [u8],
}

/// One MGET answer item: `Ok` with a version and value, or another status with neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MGetResult<'a> {
    pub status: Status,
    pub version: Version,
    pub value: &'a [u8],
}

/// One MPUT answer item: the version the write was given when `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MPutResult {
    pub status: Status,
    pub version: Version,
}

/// A SCAN answer: its entries (a [`Batch`]) and whether the server cut it short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEntries<'a> {
    entries: Batch<'a, ScanEntry<'a>>,
    /// The server stopped before `limit` entries and before `ts_to` because the answer would
    /// have passed `FRAME_BODY_MAX`; scan again from after the last entry.
    pub truncated: bool,
}

impl<'a> std::ops::Deref for ScanEntries<'a> {
    type Target = Batch<'a, ScanEntry<'a>>;

    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

fn read_scan_entry<'a>(reader: &mut Reader<'a>) -> Result<ScanEntry<'a>, ProtocolError> {
    Ok(ScanEntry { ts: reader.u64("ts")?, version: reader.u64("version")?, value: reader.value()? })
}

fn read_mget_result<'a>(reader: &mut Reader<'a>) -> Result<MGetResult<'a>, ProtocolError> {
    let result = MGetResult { status: reader.status()?, version: reader.u64("version")?, value: reader.value()? };
    if result.status != Status::Ok && (result.version != 0 || !result.value.is_empty()) {
        return Err(ProtocolError::Invalid { field: "MGET item", reason: "a version or value without OK" });
    }
    Ok(result)
}

fn read_mput_result(reader: &mut Reader<'_>) -> Result<MPutResult, ProtocolError> {
    let result = MPutResult { status: reader.status()?, version: reader.u64("version")? };
    if result.status != Status::Ok && result.version != 0 {
        return Err(ProtocolError::Invalid { field: "MPUT item", reason: "a version without OK" });
    }
    Ok(result)
}

/// A decoded response, borrowing from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// PING, OK.
    Pong {
        echo: &'a [u8],
    },
    /// AUTH, OK: the connection now holds the ticket.
    Authenticated,
    /// PUT, DELETE or DELETE_RANGE, OK: the version the write was given.
    Written {
        version: Version,
    },
    /// GET or GET_IF_NEWER, OK.
    Value {
        version: Version,
        value: &'a [u8],
    },
    /// GET or GET_IF_NEWER: no live entry at that key.
    NotFound,
    /// GET_IF_NEWER: the newest version is the one the caller holds.
    NotModified {
        version: Version,
    },
    Scan(ScanEntries<'a>),
    MGet(MGetResults<'a>),
    MPut(MPutResults<'a>),
    /// STATS, OK: human-readable text.
    Stats {
        text: &'a str,
    },
    /// COLD_READ, OK: the bytes asked for.
    ColdBytes {
        bytes: &'a [u8],
    },
    Overloaded {
        retry_after_us: u32,
    },
    WrongShard {
        shard: u16,
        message: &'a str,
    },
    /// Any status for which [`Status::is_failure`] holds.
    Failed {
        status: Status,
        message: &'a str,
    },
}

/// Decodes a response body. The caller has decoded the header and checked the body
/// ([`check_body`]).
pub fn decode_response<'a>(header: &Header, body: &'a [u8]) -> Result<Response<'a>, ProtocolError> {
    if !header.response {
        return Err(ProtocolError::WrongDirection { expected_response: true });
    }
    if body.len() != header.body_len as usize {
        return Err(ProtocolError::BodyLengthMismatch { declared: header.body_len, actual: body.len() });
    }
    parse_response(header.opcode, header.status, body)
}

fn parse_response(opcode: Opcode, status: Status, body: &[u8]) -> Result<Response<'_>, ProtocolError> {
    let mut reader = Reader::new(body);
    let response = match status {
        Status::Ok => parse_ok_response(opcode, &mut reader)?,
        Status::NotFound if matches!(opcode, Opcode::Get | Opcode::GetIfNewer | Opcode::ColdRead) => Response::NotFound,
        Status::NotModified if opcode == Opcode::GetIfNewer => {
            Response::NotModified { version: reader.u64("version")? }
        }
        Status::Overloaded => Response::Overloaded { retry_after_us: reader.u32("retry_after_us")? },
        Status::WrongShard => Response::WrongShard { shard: reader.u16("shard")?, message: reader.message()? },
        failure if failure.is_failure() => Response::Failed { status, message: reader.message()? },
        _ => return Err(ProtocolError::UnexpectedStatus { opcode, status }),
    };
    reader.finish()?;
    Ok(response)
}

fn parse_ok_response<'a>(opcode: Opcode, reader: &mut Reader<'a>) -> Result<Response<'a>, ProtocolError> {
    Ok(match opcode {
        Opcode::Ping => Response::Pong { echo: reader.rest() },
        Opcode::Auth => Response::Authenticated,
        Opcode::Put | Opcode::Delete | Opcode::DeleteRange => Response::Written { version: reader.u64("version")? },
        Opcode::Get | Opcode::GetIfNewer => Response::Value { version: reader.u64("version")?, value: reader.value()? },
        Opcode::Scan => {
            let count = reader.u32("count")?;
            if count > SCAN_LIMIT_MAX {
                return Err(ProtocolError::ScanLimit { limit: count, max: SCAN_LIMIT_MAX });
            }
            let truncated = reader.flag("truncated")?;
            let entries = Batch::take(reader, count as usize, read_scan_entry)?;
            Response::Scan(ScanEntries { entries, truncated })
        }
        Opcode::MGet => {
            let count = reader.batch_count()?;
            Response::MGet(Batch::take(reader, count.into(), read_mget_result)?)
        }
        Opcode::MPut => {
            let count = reader.batch_count()?;
            Response::MPut(Batch::take(reader, count.into(), read_mput_result)?)
        }
        Opcode::Stats => Response::Stats {
            text: std::str::from_utf8(reader.rest()).map_err(|_| ProtocolError::BadUtf8 { field: "stats" })?,
        },
        Opcode::ColdRead => {
            let len = reader.u32("len")?;
            if len > COLD_READ_MAX {
                return Err(ProtocolError::BodyTooLarge { len: u64::from(len), max: COLD_READ_MAX });
            }
            Response::ColdBytes { bytes: reader.take("cold bytes", len as usize)? }
        }
    })
}

fn response_head(to: ReplyTo, status: Status) -> RawHead {
    RawHead {
        opcode: to.opcode,
        flags: to.priority as u8 | FLAG_RESPONSE,
        status: status as u8,
        deadline_us: 0,
        request_id: to.request_id,
    }
}

/// Appends a response frame whose body `write_body` writes.
fn encode_response_with(out: &mut Vec<u8>, to: ReplyTo, status: Status, write_body: impl FnOnce(&mut Vec<u8>)) {
    let start = begin_frame(out);
    write_body(out);
    finish_frame(out, start, &response_head(to, status));
}

/// PING, OK: the request's body.
pub fn encode_pong(out: &mut Vec<u8>, to: ReplyTo, echo: &[u8]) {
    encode_response_with(out, to, Status::Ok, |out| out.extend_from_slice(echo));
}

/// AUTH, OK: an empty body.
pub fn encode_authenticated(out: &mut Vec<u8>, to: ReplyTo) {
    encode_response_with(out, to, Status::Ok, |_| {});
}

/// PUT, DELETE or DELETE_RANGE, OK: `version u64`.
pub fn encode_written(out: &mut Vec<u8>, to: ReplyTo, version: Version) {
    encode_response_with(out, to, Status::Ok, |out| put_u64(out, version));
}

/// GET or GET_IF_NEWER, OK: `version u64, value_len u32, value`.
pub fn encode_value(out: &mut Vec<u8>, to: ReplyTo, version: Version, value: &[u8]) {
    assert!(check_value(value).is_ok(), "a stored value should be within VALUE_LEN_MAX");
    encode_response_with(out, to, Status::Ok, |out| {
        put_u64(out, version);
        put_value(out, value);
    });
}

/// NOT_FOUND: an empty body.
pub fn encode_not_found(out: &mut Vec<u8>, to: ReplyTo) {
    encode_response_with(out, to, Status::NotFound, |_| {});
}

/// NOT_MODIFIED: `version u64`, the newest version, which the caller already holds.
pub fn encode_not_modified(out: &mut Vec<u8>, to: ReplyTo, version: Version) {
    encode_response_with(out, to, Status::NotModified, |out| put_u64(out, version));
}

/// STATS, OK: UTF-8 text filling the body.
pub fn encode_stats_text(out: &mut Vec<u8>, to: ReplyTo, text: &str) {
    encode_response_with(out, to, Status::Ok, |out| out.extend_from_slice(text.as_bytes()));
}

/// COLD_READ, OK: `len u32`, then the bytes.
pub fn encode_cold_bytes(out: &mut Vec<u8>, to: ReplyTo, bytes: &[u8]) {
    debug_assert!(bytes.len() <= COLD_READ_MAX as usize);
    encode_response_with(out, to, Status::Ok, |out| {
        put_u32(out, bytes.len() as u32);
        out.extend_from_slice(bytes);
    });
}

/// OVERLOADED: `retry_after_us u32`, how long the client should wait before trying again.
pub fn encode_overloaded(out: &mut Vec<u8>, to: ReplyTo, retry_after_us: u32) {
    encode_response_with(out, to, Status::Overloaded, |out| put_u32(out, retry_after_us));
}

/// WRONG_SHARD: `shard u16` (the shard that holds the pkey's bucket), then a message.
pub fn encode_wrong_shard(out: &mut Vec<u8>, to: ReplyTo, shard: u16, message: &str) {
    encode_response_with(out, to, Status::WrongShard, |out| {
        put_u16(out, shard);
        put_message(out, message);
    });
}

/// A failure ([`Status::is_failure`]): `message_len u16, message` (UTF-8, cut to
/// `MESSAGE_LEN_MAX` bytes).
pub fn encode_failure(out: &mut Vec<u8>, to: ReplyTo, status: Status, message: &str) {
    assert!(status.is_failure(), "{status} is not a failure status");
    encode_response_with(out, to, status, |out| put_message(out, message));
}

/// Writes a SCAN answer entry by entry: `count u32, truncated u8`, then `count` times
/// `ts u64, version u64, value_len u32, value`. Call [`ScanWriter::finish`] to seal it.
#[must_use = "a response frame is incomplete until finish"]
#[derive(Debug)]
pub struct ScanWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    to: ReplyTo,
    count: u32,
}

const SCAN_PREFIX_LEN: usize = 4 + 1;
const SCAN_ENTRY_OVERHEAD: usize = 8 + 8 + 4;

impl<'o> ScanWriter<'o> {
    pub fn begin(out: &'o mut Vec<u8>, to: ReplyTo) -> Self {
        let start = begin_frame(out);
        out.resize(out.len() + SCAN_PREFIX_LEN, 0);
        Self { out, start, to, count: 0 }
    }

    /// Adds an entry, or returns false (writing nothing) when it would pass `SCAN_LIMIT_MAX`
    /// entries or `FRAME_BODY_MAX` bytes: the caller then finishes with `truncated`.
    pub fn push(&mut self, ts: Timestamp, version: Version, value: &[u8]) -> bool {
        assert!(check_value(value).is_ok(), "a stored value should be within VALUE_LEN_MAX");
        let body_len = self.out.len() - self.start - HEADER_SIZE;
        if self.count == SCAN_LIMIT_MAX || body_len + SCAN_ENTRY_OVERHEAD + value.len() > FRAME_BODY_MAX as usize {
            return false;
        }
        put_u64(self.out, ts);
        put_u64(self.out, version);
        put_value(self.out, value);
        self.count += 1;
        true
    }

    #[must_use]
    pub fn len(&self) -> u32 {
        self.count
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Seals the frame. `truncated`: the scan stopped early because an entry did not fit.
    pub fn finish(self, truncated: bool) {
        let prefix = self.start + HEADER_SIZE;
        self.out[prefix..prefix + 4].copy_from_slice(&self.count.to_le_bytes());
        self.out[prefix + 4] = u8::from(truncated);
        finish_frame(self.out, self.start, &response_head(self.to, Status::Ok));
    }
}

/// Writes an MGET answer item by item, in request order: `count u16`, then `count` times
/// `status u16, version u64, value_len u32, value`. Call [`MGetWriter::finish`] to seal it.
#[must_use = "a response frame is incomplete until finish"]
#[derive(Debug)]
pub struct MGetWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    to: ReplyTo,
    count: u16,
}

const MGET_ITEM_OVERHEAD: usize = 2 + 8 + 4;

impl<'o> MGetWriter<'o> {
    pub fn begin(out: &'o mut Vec<u8>, to: ReplyTo) -> Self {
        let start = begin_frame(out);
        put_u16(out, 0);
        Self { out, start, to, count: 0 }
    }

    /// Adds a found item, or returns false (writing nothing) when its value would pass
    /// `FRAME_BODY_MAX`: the caller then adds the item as `TOO_LARGE` with [`MGetWriter::push_status`].
    pub fn push_value(&mut self, version: Version, value: &[u8]) -> bool {
        assert!(check_value(value).is_ok(), "a stored value should be within VALUE_LEN_MAX");
        let body_len = self.out.len() - self.start - HEADER_SIZE;
        // Leave room for every remaining item to be answered without a value.
        let rest = usize::from(BATCH_ITEMS_MAX.saturating_sub(self.count + 1)) * MGET_ITEM_OVERHEAD;
        if body_len + MGET_ITEM_OVERHEAD + value.len() + rest > FRAME_BODY_MAX as usize {
            return false;
        }
        self.push(Status::Ok, version, value);
        true
    }

    /// Adds an item answered without a value (NOT_FOUND, TOO_LARGE, UNAUTHORIZED, ...).
    pub fn push_status(&mut self, status: Status) {
        assert!(status != Status::Ok, "a found item goes through push_value");
        self.push(status, 0, &[]);
    }

    fn push(&mut self, status: Status, version: Version, value: &[u8]) {
        assert!(self.count < BATCH_ITEMS_MAX, "an MGET answer has at most BATCH_ITEMS_MAX items");
        put_u16(self.out, status as u16);
        put_u64(self.out, version);
        put_value(self.out, value);
        self.count += 1;
    }

    #[must_use]
    pub fn len(&self) -> u16 {
        self.count
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(self) {
        assert!(self.count > 0, "an MGET answer holds one item per requested key");
        let prefix = self.start + HEADER_SIZE;
        self.out[prefix..prefix + 2].copy_from_slice(&self.count.to_le_bytes());
        finish_frame(self.out, self.start, &response_head(self.to, Status::Ok));
    }
}

/// Writes an MPUT answer item by item, in request order: `count u16`, then `count` times
/// `status u16, version u64`. Call [`MPutWriter::finish`] to seal it.
#[must_use = "a response frame is incomplete until finish"]
#[derive(Debug)]
pub struct MPutWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    to: ReplyTo,
    count: u16,
}

impl<'o> MPutWriter<'o> {
    pub fn begin(out: &'o mut Vec<u8>, to: ReplyTo) -> Self {
        let start = begin_frame(out);
        put_u16(out, 0);
        Self { out, start, to, count: 0 }
    }

    /// Adds an item: `version` is the write's version when `status` is OK, else 0.
    pub fn push(&mut self, status: Status, version: Version) {
        assert!(self.count < BATCH_ITEMS_MAX, "an MPUT answer has at most BATCH_ITEMS_MAX items");
        assert!(status == Status::Ok || version == 0, "only a written item has a version");
        put_u16(self.out, status as u16);
        put_u64(self.out, version);
        self.count += 1;
    }

    #[must_use]
    pub fn len(&self) -> u16 {
        self.count
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(self) {
        assert!(self.count > 0, "an MPUT answer holds one item per requested write");
        let prefix = self.start + HEADER_SIZE;
        self.out[prefix..prefix + 2].copy_from_slice(&self.count.to_le_bytes());
        finish_frame(self.out, self.start, &response_head(self.to, Status::Ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, seed};

    fn head(request_id: u64) -> RequestHead {
        RequestHead { request_id, deadline_us: 2_500, priority: Priority::Low }
    }

    fn reply_to(request_id: u64, opcode: Opcode) -> ReplyTo {
        ReplyTo { request_id, opcode: opcode as u8, priority: Priority::High }
    }

    fn scan() -> Scan<'static> {
        Scan { pkey: b"timeline:42", ts_from: 100, ts_to: u64::MAX, limit: 50, newest_first: true }
    }

    type RequestEncoder = Box<dyn Fn(&mut Vec<u8>) -> Result<(), ProtocolError>>;

    /// One frame of every request kind, in the order `request_round_trips_every_kind` expects.
    fn sample_request_frames() -> Vec<Vec<u8>> {
        let long_pkey = [0xab; PKEY_LEN_MAX];
        let encoders: Vec<RequestEncoder> = vec![
            Box::new(|out| encode_ping(out, head(1), b"are you there")),
            Box::new(|out| encode_auth(out, head(2), &[7; 90])),
            Box::new(|out| encode_put(out, head(3), b"alice", 7, b"hello")),
            Box::new(move |out| encode_put(out, head(4), &long_pkey, 0, &[1; VALUE_LEN_MAX as usize])),
            Box::new(|out| encode_get(out, head(5), b"alice", 7)),
            Box::new(|out| encode_get_if_newer(out, head(6), b"alice", 7, 1 << 40)),
            Box::new(|out| encode_delete(out, head(7), b"bob", u64::MAX)),
            Box::new(|out| encode_delete_range(out, head(8), b"bob", 10, 20)),
            Box::new(|out| encode_scan(out, head(9), &scan())),
            Box::new(|out| {
                let keys = [Key { pkey: b"a", ts: 1 }, Key { pkey: b"bb", ts: 2 }, Key { pkey: b"ccc", ts: 3 }];
                encode_mget(out, head(10), keys)
            }),
            Box::new(|out| {
                let puts = [Put { pkey: b"a", ts: 1, value: b"" }, Put { pkey: b"b", ts: 2, value: b"two" }];
                encode_mput(out, head(11), puts)
            }),
            Box::new(|out| encode_stats(out, head(12))),
            Box::new(|out| encode_ping(out, head(13), b"")),
            Box::new(|out| {
                let file = crate::cold::ColdFileId { window: 19_700, shard: 1, generation: 2, part: 3 };
                encode_cold_read(out, head(14), &ColdRead { disk: 2, file, offset: 8192, len: 1 << 20 })
            }),
        ];
        encoders
            .iter()
            .map(|encode| {
                let mut out = Vec::new();
                encode(&mut out).unwrap();
                out
            })
            .collect()
    }

    fn only_frame(bytes: &[u8]) -> Frame<'_> {
        let frame = parse_frame(bytes).unwrap().expect("a whole frame");
        assert_eq!(frame.frame_len(), bytes.len());
        frame
    }

    #[test]
    fn request_round_trips_every_kind() {
        let frames = sample_request_frames();
        // All requests go down one pipelined stream and come out whole and in order.
        let stream = frames.concat();
        let mut rest = &stream[..];
        let mut requests = Vec::new();
        while let Some(frame) = parse_frame(rest).unwrap() {
            assert!(!frame.header.response);
            assert_eq!(frame.header.deadline_us, 2_500);
            assert_eq!(frame.header.priority, Priority::Low);
            assert_eq!(frame.header.request_id, requests.len() as u64 + 1);
            let request = decode_request(&frame.header, frame.body).unwrap();
            assert_eq!(request.opcode(), frame.header.opcode);
            requests.push(request);
            rest = &rest[frame.frame_len()..];
        }
        assert!(rest.is_empty());
        assert_eq!(requests.len(), frames.len());
        assert_eq!(requests[0], Request::Ping { echo: b"are you there" });
        assert_eq!(requests[1], Request::Auth { ticket: &[7; 90] });
        assert_eq!(requests[2], Request::Put(Put { pkey: b"alice", ts: 7, value: b"hello" }));
        let Request::Put(big) = requests[3] else { panic!("expected a PUT, got {:?}", requests[3]) };
        assert_eq!((big.pkey.len(), big.value.len()), (PKEY_LEN_MAX, VALUE_LEN_MAX as usize));
        assert_eq!(requests[4], Request::Get(Key { pkey: b"alice", ts: 7 }));
        assert_eq!(requests[5], Request::GetIfNewer { key: Key { pkey: b"alice", ts: 7 }, version: 1 << 40 });
        assert_eq!(requests[6], Request::Delete(Key { pkey: b"bob", ts: u64::MAX }));
        assert_eq!(requests[7], Request::DeleteRange { pkey: b"bob", ts_from: 10, ts_to: 20 });
        assert_eq!(requests[8], Request::Scan(scan()));
        let Request::MGet(keys) = requests[9] else { panic!("expected an MGET, got {:?}", requests[9]) };
        assert_eq!(keys.len(), 3);
        assert_eq!(
            keys.iter().collect::<Vec<_>>(),
            [Key { pkey: b"a", ts: 1 }, Key { pkey: b"bb", ts: 2 }, Key { pkey: b"ccc", ts: 3 }]
        );
        let Request::MPut(puts) = requests[10] else { panic!("expected an MPUT, got {:?}", requests[10]) };
        assert_eq!(
            puts.into_iter().collect::<Vec<_>>(),
            [Put { pkey: b"a", ts: 1, value: b"" }, Put { pkey: b"b", ts: 2, value: b"two" }]
        );
        assert_eq!(requests[11], Request::Stats);
        assert_eq!(requests[12], Request::Ping { echo: b"" });
        assert_eq!(requests[2].pkey(), Some(&b"alice"[..]));
        assert_eq!(requests[8].pkey(), Some(&b"timeline:42"[..]));
        assert_eq!(requests[9].pkey(), None);
        // Re-encoding a decoded request gives the same bytes.
        for (request, frame) in requests.iter().zip(&frames) {
            let mut again = Vec::new();
            let header = only_frame(frame).header;
            let head = RequestHead { request_id: header.request_id, deadline_us: 2_500, priority: Priority::Low };
            encode_request(&mut again, head, request).unwrap();
            assert_eq!(&again, frame, "{} re-encodes differently", request.opcode());
        }
    }

    /// One frame of every response kind, in the order `response_round_trips_every_kind` expects.
    fn sample_response_frames() -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut frame = |encode: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            encode(&mut out);
            frames.push(out);
        };
        frame(&|out| encode_pong(out, reply_to(1, Opcode::Ping), b"are you there"));
        frame(&|out| encode_authenticated(out, reply_to(2, Opcode::Auth)));
        frame(&|out| encode_written(out, reply_to(3, Opcode::Put), 77));
        frame(&|out| encode_value(out, reply_to(4, Opcode::Get), 78, b"hello"));
        frame(&|out| encode_not_found(out, reply_to(5, Opcode::Get)));
        frame(&|out| encode_not_modified(out, reply_to(6, Opcode::GetIfNewer), 79));
        frame(&|out| {
            let mut writer = ScanWriter::begin(out, reply_to(7, Opcode::Scan));
            assert!(writer.push(5, 80, b"five"));
            assert!(writer.push(4, 81, b""));
            writer.finish(false);
        });
        frame(&|out| {
            let mut writer = MGetWriter::begin(out, reply_to(8, Opcode::MGet));
            assert!(writer.push_value(82, b"x"));
            writer.push_status(Status::NotFound);
            writer.push_status(Status::Unauthorized);
            writer.finish();
        });
        frame(&|out| {
            let mut writer = MPutWriter::begin(out, reply_to(9, Opcode::MPut));
            writer.push(Status::Ok, 83);
            writer.push(Status::TooLarge, 0);
            writer.finish();
        });
        frame(&|out| encode_stats_text(out, reply_to(10, Opcode::Stats), "shards 2\nkeys 1000\n"));
        frame(&|out| encode_overloaded(out, reply_to(11, Opcode::Get), 1_500));
        frame(&|out| encode_wrong_shard(out, reply_to(12, Opcode::Put), 3, "bucket 17 lives on shard 3"));
        frame(&|out| encode_failure(out, reply_to(13, Opcode::Put), Status::ReadOnly, "disk is full"));
        frame(&|out| encode_written(out, reply_to(14, Opcode::DeleteRange), 84));
        frame(&|out| encode_value(out, reply_to(15, Opcode::GetIfNewer), 85, &[9; VALUE_LEN_MAX as usize]));
        frame(&|out| {
            let writer = ScanWriter::begin(out, reply_to(16, Opcode::Scan));
            writer.finish(true);
        });
        frame(&|out| encode_cold_bytes(out, reply_to(17, Opcode::ColdRead), &[7; 8192]));
        frame(&|out| encode_not_found(out, reply_to(18, Opcode::ColdRead)));
        frames
    }

    #[test]
    fn response_round_trips_every_kind() {
        let frames = sample_response_frames();
        let responses: Vec<_> = frames
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                let frame = only_frame(bytes);
                assert!(frame.header.response);
                assert_eq!(frame.header.request_id, index as u64 + 1);
                assert_eq!(frame.header.priority, Priority::High);
                assert_eq!(frame.header.deadline_us, 0);
                decode_response(&frame.header, frame.body).unwrap()
            })
            .collect();
        assert_eq!(responses[0], Response::Pong { echo: b"are you there" });
        assert_eq!(responses[1], Response::Authenticated);
        assert_eq!(responses[16], Response::ColdBytes { bytes: &[7; 8192] });
        assert_eq!(responses[17], Response::NotFound);
        assert_eq!(responses[2], Response::Written { version: 77 });
        assert_eq!(responses[3], Response::Value { version: 78, value: b"hello" });
        assert_eq!(responses[4], Response::NotFound);
        assert_eq!(responses[5], Response::NotModified { version: 79 });
        let Response::Scan(entries) = responses[6] else { panic!("expected a SCAN, got {:?}", responses[6]) };
        assert!(!entries.truncated);
        assert_eq!(
            entries.iter().collect::<Vec<_>>(),
            [ScanEntry { ts: 5, version: 80, value: b"five" }, ScanEntry { ts: 4, version: 81, value: b"" }]
        );
        let Response::MGet(results) = responses[7] else { panic!("expected an MGET, got {:?}", responses[7]) };
        assert_eq!(
            results.iter().collect::<Vec<_>>(),
            [
                MGetResult { status: Status::Ok, version: 82, value: b"x" },
                MGetResult { status: Status::NotFound, version: 0, value: b"" },
                MGetResult { status: Status::Unauthorized, version: 0, value: b"" },
            ]
        );
        let Response::MPut(results) = responses[8] else { panic!("expected an MPUT, got {:?}", responses[8]) };
        assert_eq!(
            results.iter().collect::<Vec<_>>(),
            [MPutResult { status: Status::Ok, version: 83 }, MPutResult { status: Status::TooLarge, version: 0 }]
        );
        assert_eq!(responses[9], Response::Stats { text: "shards 2\nkeys 1000\n" });
        assert_eq!(responses[10], Response::Overloaded { retry_after_us: 1_500 });
        assert_eq!(responses[11], Response::WrongShard { shard: 3, message: "bucket 17 lives on shard 3" });
        assert_eq!(responses[12], Response::Failed { status: Status::ReadOnly, message: "disk is full" });
        assert_eq!(responses[13], Response::Written { version: 84 });
        let Response::Value { value, .. } = responses[14] else { panic!("expected a value") };
        assert_eq!(value.len(), VALUE_LEN_MAX as usize);
        let Response::Scan(empty) = responses[15] else { panic!("expected a SCAN, got {:?}", responses[15]) };
        assert!(empty.truncated && empty.is_empty());
    }

    #[test]
    fn every_failure_status_round_trips() {
        for status in Status::ALL.into_iter().filter(|status| status.is_failure()) {
            let mut out = Vec::new();
            encode_failure(&mut out, reply_to(1, Opcode::MGet), status, "why");
            let frame = only_frame(&out);
            assert_eq!(frame.header.status, status);
            assert_eq!(decode_response(&frame.header, frame.body), Ok(Response::Failed { status, message: "why" }));
        }
    }

    #[test]
    fn header_round_trips() {
        for priority in Priority::ALL {
            for (response, status, deadline_us) in
                [(false, Status::Ok, 0), (false, Status::Ok, 7), (true, Status::Internal, 0)]
            {
                let header = Header {
                    opcode: Opcode::Scan,
                    priority,
                    response,
                    status,
                    request_id: u64::MAX - 5,
                    deadline_us,
                    body_len: FRAME_BODY_MAX,
                    body_crc: 0x1234_5678,
                };
                assert_eq!(FrameHeader::decode(&header.encode()), Ok(header));
            }
        }
    }

    #[test]
    fn header_detects_every_single_bit_flip() {
        let mut frame = Vec::new();
        encode_put(&mut frame, head(9), b"alice", 7, b"hello").unwrap();
        let header: [u8; HEADER_SIZE] = frame[..HEADER_SIZE].try_into().unwrap();
        assert!(FrameHeader::decode(&header).is_ok());
        for bit in 0..HEADER_SIZE * 8 {
            let mut bad = header;
            bad[bit / 8] ^= 1 << (bit % 8);
            let error = FrameHeader::decode(&bad).expect_err("a flipped header bit should be refused");
            assert!(error.is_framing(), "flip of bit {bit} gave {error}");
        }
    }

    #[test]
    fn body_detects_every_single_bit_flip() {
        let mut frame = Vec::new();
        encode_put(&mut frame, head(9), b"alice", 7, b"hello").unwrap();
        for bit in HEADER_SIZE * 8..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(parse_frame(&bad), Err(ProtocolError::BodyChecksum { .. })),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    /// A header with a valid checksum around whatever fields the test wants.
    fn sealed(opcode: u8, flags: u8, status: u8, deadline_us: u32, body_len: u32) -> [u8; HEADER_SIZE] {
        let mut header = seal_header(&RawHead { opcode, flags, status, deadline_us, request_id: 42 }, 0, 0);
        header.body_len = body_len.into();
        header.header_crc = crc32c(&header.as_bytes()[..HEADER_CRC_COVERS]).into();
        header.as_bytes().try_into().unwrap()
    }

    #[test]
    fn header_refuses_what_it_does_not_know() {
        let get = Opcode::Get as u8;
        let cases = [
            (sealed(get, 0b0000_0100, 0, 0, 0), ProtocolError::ReservedNonZero { field: "flags" }),
            (sealed(get, 0, 1, 0, 0), ProtocolError::ReservedNonZero { field: "status (in a request)" }),
            (
                sealed(get, FLAG_RESPONSE, 0, 5, 0),
                ProtocolError::ReservedNonZero { field: "deadline_us (in a response)" },
            ),
            (sealed(0, 0, 0, 0, 0), ProtocolError::UnknownOpcode { op: 0 }),
            (sealed(13, 0, 0, 0, 0), ProtocolError::UnknownOpcode { op: 13 }),
            (sealed(get, FLAG_RESPONSE, 12, 0, 0), ProtocolError::UnknownStatus { status: 12 }),
            (
                sealed(get, 0, 0, 0, FRAME_BODY_MAX + 1),
                ProtocolError::BodyTooLarge { len: u64::from(FRAME_BODY_MAX) + 1, max: FRAME_BODY_MAX },
            ),
        ];
        for (bytes, expected) in cases {
            let error = FrameHeader::decode(&bytes).expect_err("the header should be refused");
            assert_eq!(error, expected);
            assert!(!error.is_framing());
            // The header is intact, so a request can still be answered.
            let reply = FrameHeader::peek_reply_to(&bytes);
            if bytes[6] & FLAG_RESPONSE == 0 {
                assert_eq!(reply.map(|to| (to.request_id, to.opcode)), Some((42, bytes[5])));
            } else {
                assert_eq!(reply, None);
            }
        }
        assert_eq!(
            ProtocolError::BodyTooLarge { len: 1, max: 0 }.status(),
            Status::TooLarge,
            "an oversized body is answered TOO_LARGE"
        );
        assert_eq!(ProtocolError::ScanLimit { limit: 0, max: SCAN_LIMIT_MAX }.status(), Status::BadRequest);
        assert_eq!(ProtocolError::ScanLimit { limit: 10_001, max: SCAN_LIMIT_MAX }.status(), Status::TooLarge);
        assert_eq!(ProtocolError::PkeyEmpty.status(), Status::BadRequest);
        let mut wrong_version = sealed(get, 0, 0, 0, 0);
        wrong_version[4] = 2;
        let crc = crc32c(&wrong_version[..HEADER_CRC_COVERS]);
        wrong_version[HEADER_CRC_COVERS..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(FrameHeader::decode(&wrong_version), Err(ProtocolError::BadVersion { found: 2 }));
        assert_eq!(FrameHeader::peek_reply_to(&wrong_version), None);
        assert!(matches!(FrameHeader::decode(&[0; HEADER_SIZE]), Err(ProtocolError::BadMagic { found: 0 })));
    }

    #[test]
    fn decoders_refuse_the_wrong_direction_and_length() {
        let request = sample_request_frames().remove(2);
        let frame = only_frame(&request);
        assert_eq!(
            decode_response(&frame.header, frame.body),
            Err(ProtocolError::WrongDirection { expected_response: true })
        );
        let short = &frame.body[..frame.body.len() - 1];
        assert!(matches!(decode_request(&frame.header, short), Err(ProtocolError::BodyLengthMismatch { .. })));
        assert!(matches!(check_body(&frame.header, short), Err(ProtocolError::BodyLengthMismatch { .. })));
        let response = sample_response_frames().remove(2);
        let frame = only_frame(&response);
        assert_eq!(
            decode_request(&frame.header, frame.body),
            Err(ProtocolError::WrongDirection { expected_response: false })
        );
        // A status an operation never answers with is refused.
        assert_eq!(
            parse_response(Opcode::Put, Status::NotModified, &5u64.to_le_bytes()),
            Err(ProtocolError::UnexpectedStatus { opcode: Opcode::Put, status: Status::NotModified })
        );
        assert!(matches!(
            parse_response(Opcode::Scan, Status::NotFound, &[]),
            Err(ProtocolError::UnexpectedStatus { .. })
        ));
    }

    /// Bodies whose every strict prefix is also valid (opaque bytes filling the body).
    fn is_opaque_request(opcode: Opcode) -> bool {
        matches!(opcode, Opcode::Ping | Opcode::Auth | Opcode::Stats)
    }

    #[test]
    fn request_truncated_at_every_length_is_refused() {
        for bytes in sample_request_frames() {
            let frame = only_frame(&bytes);
            let opcode = frame.header.opcode;
            let lengths: Vec<usize> = if frame.body.len() > 4096 {
                // The 1 MiB PUT: every length of its head, a sample of its value.
                (0..64).chain((64..frame.body.len()).step_by(4093)).chain([frame.body.len() - 1]).collect()
            } else {
                (0..frame.body.len()).collect()
            };
            for len in lengths {
                let header = Header { body_len: len as u32, ..frame.header };
                let result = decode_request(&header, &frame.body[..len]);
                assert!(is_opaque_request(opcode) || result.is_err(), "{opcode} cut to {len} bytes was accepted");
            }
            let mut longer = frame.body.to_vec();
            longer.push(0);
            let header = Header { body_len: longer.len() as u32, ..frame.header };
            let result = decode_request(&header, &longer);
            assert!(
                matches!(opcode, Opcode::Ping | Opcode::Auth)
                    || matches!(result, Err(ProtocolError::TrailingBytes { count: 1 })),
                "{opcode} with a trailing byte gave {result:?}"
            );
        }
    }

    #[test]
    fn response_truncated_at_every_length_is_refused() {
        for bytes in sample_response_frames() {
            let frame = only_frame(&bytes);
            let opaque =
                frame.header.status == Status::Ok && matches!(frame.header.opcode, Opcode::Ping | Opcode::Stats);
            let lengths: Vec<usize> = if frame.body.len() > 4096 {
                (0..64).chain((64..frame.body.len()).step_by(4093)).collect()
            } else {
                (0..frame.body.len()).collect()
            };
            for len in lengths {
                let header = Header { body_len: len as u32, ..frame.header };
                let result = decode_response(&header, &frame.body[..len]);
                assert!(opaque || result.is_err(), "{} cut to {len} bytes was accepted", frame.header.opcode);
            }
        }
    }

    #[test]
    fn cold_read_refuses_unaligned_empty_and_oversized_ranges() {
        let file = crate::cold::ColdFileId { window: 5, shard: 0, generation: 1, part: 0 };
        let good = ColdRead { disk: 1, file, offset: 4096, len: 8192 };
        let bad = [
            (ColdRead { offset: 100, ..good }, Status::BadRequest),
            (ColdRead { len: 4097, ..good }, Status::BadRequest),
            (ColdRead { len: 0, ..good }, Status::BadRequest),
            (ColdRead { len: COLD_READ_MAX + 4096, ..good }, Status::TooLarge),
        ];
        for (read, status) in bad {
            let mut out = vec![1, 2, 3];
            let error = encode_cold_read(&mut out, head(1), &read).expect_err("refused");
            assert_eq!((error.status(), out.as_slice()), (status, [1u8, 2, 3].as_slice()), "{read:?}");
            // The same fields sent by a client that does not check are refused by the decoder.
            let mut body = Vec::new();
            put_u16(&mut body, 0);
            put_u16(&mut body, read.disk);
            put_u64(&mut body, 5);
            put_u32(&mut body, 1);
            put_u16(&mut body, 0);
            put_u16(&mut body, 0);
            put_u64(&mut body, read.offset);
            put_u32(&mut body, read.len);
            let error = parse_request(Opcode::ColdRead, &body).expect_err("refused");
            assert_eq!(error.status(), status, "{read:?}: {error}");
        }
        let mut out = Vec::new();
        encode_cold_read(&mut out, head(1), &good).unwrap();
        let frame = only_frame(&out);
        assert_eq!(decode_request(&frame.header, frame.body), Ok(Request::ColdRead(good)));
    }

    #[test]
    fn request_encoders_refuse_bad_arguments_and_leave_out_alone() {
        let mut out = b"earlier frames".to_vec();
        let too_long = [1; PKEY_LEN_MAX + 1];
        let too_big = vec![0; VALUE_LEN_MAX as usize + 1];
        assert_eq!(encode_get(&mut out, head(1), b"", 0), Err(ProtocolError::PkeyEmpty));
        assert_eq!(encode_put(&mut out, head(1), &too_long, 0, b""), Err(ProtocolError::PkeyTooLong { len: 256 }));
        assert!(matches!(encode_put(&mut out, head(1), b"a", 0, &too_big), Err(ProtocolError::ValueTooLarge { .. })));
        assert_eq!(
            encode_delete_range(&mut out, head(1), b"a", 5, 4),
            Err(ProtocolError::BadRange { ts_from: 5, ts_to: 4 })
        );
        for limit in [0, SCAN_LIMIT_MAX + 1] {
            let bad = Scan { limit, ..scan() };
            assert!(matches!(encode_scan(&mut out, head(1), &bad), Err(ProtocolError::ScanLimit { .. })));
        }
        assert_eq!(encode_mget(&mut out, head(1), []), Err(ProtocolError::NoItems));
        let many = (0..=BATCH_ITEMS_MAX).map(|_| Key { pkey: b"k", ts: 0 });
        assert!(matches!(encode_mget(&mut out, head(1), many), Err(ProtocolError::TooManyItems { .. })));
        let bad_item = [Put { pkey: b"a", ts: 0, value: b"" }, Put { pkey: b"", ts: 0, value: b"" }];
        assert_eq!(encode_mput(&mut out, head(1), bad_item), Err(ProtocolError::PkeyEmpty));
        // Items within their limits can still add up past the frame limit.
        let big = vec![0; VALUE_LEN_MAX as usize];
        let puts = (0..5).map(|_| Put { pkey: b"a", ts: 0, value: &big });
        assert!(matches!(encode_mput(&mut out, head(1), puts), Err(ProtocolError::BodyTooLarge { .. })));
        let big_ticket = vec![0; TICKET_LEN_MAX + 1];
        assert!(matches!(encode_auth(&mut out, head(1), &big_ticket), Err(ProtocolError::TicketTooLarge { .. })));
        assert_eq!(out, b"earlier frames");
        let full = (0..BATCH_ITEMS_MAX).map(|_| Key { pkey: b"k", ts: 0 });
        assert_eq!(encode_mget(&mut out, head(1), full), Ok(()));
    }

    #[test]
    fn request_decoder_refuses_bad_fields() {
        let pkey_then = |rest: &[u8]| [&[1u8, b'k'][..], rest].concat();
        let range = pkey_then(&[5u64.to_le_bytes(), 4u64.to_le_bytes()].concat());
        assert_eq!(parse_request(Opcode::DeleteRange, &range), Err(ProtocolError::BadRange { ts_from: 5, ts_to: 4 }));
        let scan_body = |limit: u32, newest_first: u8| {
            pkey_then(&[&0u64.to_le_bytes()[..], &9u64.to_le_bytes(), &limit.to_le_bytes(), &[newest_first]].concat())
        };
        assert!(parse_request(Opcode::Scan, &scan_body(1, 0)).is_ok());
        assert!(matches!(parse_request(Opcode::Scan, &scan_body(0, 0)), Err(ProtocolError::ScanLimit { .. })));
        assert!(matches!(parse_request(Opcode::Scan, &scan_body(10_001, 0)), Err(ProtocolError::ScanLimit { .. })));
        assert_eq!(
            parse_request(Opcode::Scan, &scan_body(1, 2)),
            Err(ProtocolError::BadFlag { field: "newest_first", found: 2 })
        );
        assert_eq!(parse_request(Opcode::Get, &[0; 9]), Err(ProtocolError::PkeyEmpty));
        assert_eq!(parse_request(Opcode::MGet, &[0, 0]), Err(ProtocolError::NoItems));
        assert!(matches!(parse_request(Opcode::MGet, &1025u16.to_le_bytes()), Err(ProtocolError::TooManyItems { .. })));
        // A declared value length is checked against the limit before anything is taken.
        let huge = pkey_then(&[&0u64.to_le_bytes()[..], &u32::MAX.to_le_bytes()].concat());
        assert!(matches!(parse_request(Opcode::Put, &huge), Err(ProtocolError::ValueTooLarge { .. })));
        let lying = pkey_then(&[&0u64.to_le_bytes()[..], &100u32.to_le_bytes(), b"short"].concat());
        assert_eq!(
            parse_request(Opcode::Put, &lying),
            Err(ProtocolError::Truncated { field: "value", needed: 100, remaining: 5 })
        );
    }

    #[test]
    fn scan_writer_stops_before_the_frame_limit() {
        let value = vec![3; VALUE_LEN_MAX as usize];
        let mut out = Vec::new();
        let mut writer = ScanWriter::begin(&mut out, reply_to(1, Opcode::Scan));
        let mut pushed = 0;
        while writer.push(pushed, pushed + 100, &value) {
            pushed += 1;
        }
        assert_eq!(pushed, 3, "three 1 MiB values and their overhead fit in 4 MiB, four do not");
        assert!(writer.push(99, 99, b"small"), "a smaller entry may still fit");
        writer.finish(true);
        let frame = only_frame(&out);
        assert!(frame.header.body_len <= FRAME_BODY_MAX);
        let Ok(Response::Scan(entries)) = decode_response(&frame.header, frame.body) else { panic!("expected a scan") };
        assert!(entries.truncated);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries.iter().map(|entry| entry.ts).collect::<Vec<_>>(), [0, 1, 2, 99]);
    }

    #[test]
    fn mget_writer_keeps_room_for_every_item() {
        let value = vec![3; VALUE_LEN_MAX as usize];
        let mut out = Vec::new();
        let mut writer = MGetWriter::begin(&mut out, reply_to(1, Opcode::MGet));
        let mut found = 0;
        while writer.push_value(found, &value) {
            found += 1;
        }
        assert_eq!(found, 3);
        while writer.len() < BATCH_ITEMS_MAX {
            writer.push_status(Status::TooLarge);
        }
        writer.finish();
        let frame = only_frame(&out);
        let Ok(Response::MGet(results)) = decode_response(&frame.header, frame.body) else {
            panic!("expected an MGET")
        };
        assert_eq!(results.len(), usize::from(BATCH_ITEMS_MAX));
        assert_eq!(results.iter().filter(|item| item.status == Status::Ok).count(), 3);
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MESSAGE_LEN_MAX);
        let mut out = Vec::new();
        encode_failure(&mut out, reply_to(1, Opcode::Get), Status::Internal, &long);
        let frame = only_frame(&out);
        let Ok(Response::Failed { message, .. }) = decode_response(&frame.header, frame.body) else {
            panic!("expected a failure")
        };
        assert_eq!(message.len(), MESSAGE_LEN_MAX);
        assert!(long.starts_with(message));
        let odd = format!("x{long}");
        out.clear();
        encode_failure(&mut out, reply_to(1, Opcode::Get), Status::Internal, &odd);
        let frame = only_frame(&out);
        let Ok(Response::Failed { message, .. }) = decode_response(&frame.header, frame.body) else {
            panic!("expected a failure")
        };
        assert_eq!(message.len(), MESSAGE_LEN_MAX - 1);
    }

    #[test]
    fn parse_frame_waits_for_a_whole_frame() {
        let bytes = sample_request_frames().remove(2);
        for len in 0..bytes.len() {
            assert_eq!(parse_frame(&bytes[..len]), Ok(None), "a frame cut to {len} bytes is not whole yet");
        }
        assert!(parse_frame(&bytes).unwrap().is_some());
    }

    #[test]
    fn reply_to_a_refused_opcode_repeats_its_byte() {
        let bytes = sealed(200, 2, 0, 0, 0);
        assert_eq!(FrameHeader::decode(&bytes), Err(ProtocolError::UnknownOpcode { op: 200 }));
        let to = FrameHeader::peek_reply_to(&bytes).expect("the header is intact");
        assert_eq!(to, ReplyTo { request_id: 42, opcode: 200, priority: Priority::Low });
        let mut out = Vec::new();
        encode_failure(&mut out, to, Status::BadRequest, "unknown opcode 200");
        assert_eq!(out[5], 200);
        assert_eq!(out[6], FLAG_RESPONSE | 2);
        assert!(matches!(parse_frame(&out), Err(ProtocolError::UnknownOpcode { op: 200 })));
    }

    /// Bytes to try, with the opcode and status to parse them as: random bytes as a random
    /// operation, or a valid body with a few bytes changed, cut or extended, parsed mostly as what
    /// it was (to reach past the first field).
    fn fuzz_body(rng: &mut Rng, samples: &[Vec<u8>]) -> (Opcode, Status, Vec<u8>) {
        let opcode = Opcode::ALL[rng.index(Opcode::ALL.len())];
        let status = Status::ALL[rng.index(Status::ALL.len())];
        if rng.index(3) == 0 {
            let len = rng.index(64);
            return (opcode, status, rng.bytes(len));
        }
        let frame = &samples[rng.index(samples.len())];
        let header = only_frame(frame).header;
        let mut body = frame[HEADER_SIZE..frame.len().min(HEADER_SIZE + 2048)].to_vec();
        for _ in 0..rng.index(4) {
            match rng.index(4) {
                0 if !body.is_empty() => {
                    let at = rng.index(body.len());
                    body[at] = rng.next() as u8;
                }
                1 if !body.is_empty() => {
                    let len = rng.index(body.len());
                    body.truncate(len);
                }
                2 => body.push(rng.next() as u8),
                _ => {
                    let at = rng.index(body.len() + 1);
                    let small = [0, 1, 0xff, 0x04][rng.index(4)];
                    body.insert(at, small);
                }
            }
        }
        if rng.index(8) == 0 { (opcode, status, body) } else { (header.opcode, header.status, body) }
    }

    fn check_request_decoding(body: &[u8], opcode: Opcode) -> bool {
        let Ok(request) = parse_request(opcode, body) else { return false };
        match request {
            Request::MGet(keys) => assert_eq!(keys.iter().count(), keys.len()),
            Request::MPut(puts) => assert_eq!(puts.iter().count(), puts.len()),
            _ => {}
        }
        // Whatever decodes re-encodes to the same bytes: the layout has one spelling per request.
        let mut out = Vec::new();
        encode_request(&mut out, head(1), &request).expect("a decoded request should re-encode");
        assert_eq!(&out[HEADER_SIZE..], body, "{opcode} decoded from bytes it does not re-encode to");
        true
    }

    fn check_response_decoding(body: &[u8], opcode: Opcode, status: Status) -> bool {
        match parse_response(opcode, status, body) {
            Ok(Response::Scan(entries)) => assert_eq!(entries.iter().count(), entries.len()),
            Ok(Response::MGet(results)) => assert_eq!(results.iter().count(), results.len()),
            Ok(Response::MPut(results)) => assert_eq!(results.iter().count(), results.len()),
            Ok(_) => {}
            Err(_) => return false,
        }
        true
    }

    #[test]
    fn decoders_survive_random_bytes() {
        let mut rng = Rng(seed("STRATA_PROTOCOL_SEED", "protocol fuzz"));
        let requests = sample_request_frames();
        let responses = sample_response_frames();
        let (mut requests_accepted, mut responses_accepted) = (0, 0);
        let rounds = 30_000;
        for _ in 0..rounds {
            let (opcode, _, body) = fuzz_body(&mut rng, &requests);
            requests_accepted += usize::from(check_request_decoding(&body, opcode));
            let (opcode, status, body) = fuzz_body(&mut rng, &responses);
            responses_accepted += usize::from(check_response_decoding(&body, opcode, status));
            let header: [u8; HEADER_SIZE] = rng.bytes(HEADER_SIZE).try_into().unwrap();
            assert!(FrameHeader::decode(&header).is_err(), "random bytes should not pass the header checksum");
            let raw = rng.bytes(4);
            let body_len = [0, 1, FRAME_BODY_MAX, FRAME_BODY_MAX + 1, rng.next() as u32][rng.index(5)];
            let _ = FrameHeader::decode(&sealed(raw[0] % 16, raw[1], raw[2] % 16, u32::from(raw[3]), body_len));
            let mut stream = requests[rng.index(requests.len())].clone();
            stream.truncate(rng.index(stream.len() + 1));
            let _ = parse_frame(&stream);
        }
        println!("of {rounds}: {requests_accepted} request bodies accepted, {responses_accepted} response bodies");
        for accepted in [requests_accepted, responses_accepted] {
            assert!(accepted > rounds / 20 && accepted < rounds * 19 / 20, "the fuzzing should reach both outcomes");
        }
    }
}
