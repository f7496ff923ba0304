//! Tickets: signed, expiring tokens that say which pkeys a connection may touch.
//!
//! A client presents its ticket once per connection (the `AUTH` request of
//! [`crate::protocol`]); the shard verifies it once, keeps the decoded [`Ticket`] for the
//! connection's life, and checks every request's pkey with [`Ticket::allows`]. An admin ticket
//! allows every pkey and the admin operations.
//!
//! ```text
//! offset    size  field         meaning
//! 0         4     magic         "STTK"
//! 4         1     version       1
//! 5         1     flags         bit 0: admin; bits 1..=7 reserved, 0
//! 6         2     scope_count   0..=64
//! 8         8     issued_at_s   unix seconds
//! 16        8     expires_at_s  unix seconds; refused from this second on
//! 24        var   scopes        scope_count times: kind u8 (1 exact, 2 prefix), len u8, len bytes
//! end-32    32    tag           HMAC-SHA256(secret, every byte before the tag)
//! ```
//!
//! Invariant: no byte of a ticket is trusted before its tag has been checked (in constant
//! time), and a verified ticket is never honoured at or after `expires_at_s`.

use crate::key::PKEY_LEN_MAX;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

type HmacSha256 = Hmac<Sha256>;

/// "STTK": Strata ticket.
pub const TICKET_MAGIC: u32 = u32::from_le_bytes(*b"STTK");
pub const TICKET_FORMAT_VERSION: u8 = 1;
/// Bytes of the HMAC-SHA256 tag that ends every ticket.
pub const TICKET_TAG_LEN: usize = 32;
/// The most scopes one ticket names.
pub const TICKET_SCOPES_MAX: usize = 64;
/// The shortest secret `sign` and `verify` accept: a shorter one is too easy to guess.
pub const TICKET_SECRET_LEN_MIN: usize = 16;
/// Bytes of the fixed head before the scopes.
pub const TICKET_HEAD_SIZE: usize = size_of::<TicketHead>();
/// The longest ticket: every scope at its longest.
pub const TICKET_LEN_MAX: usize = TICKET_HEAD_SIZE + TICKET_SCOPES_MAX * (2 + PKEY_LEN_MAX) + TICKET_TAG_LEN;

const FLAG_ADMIN: u8 = 1;
const SCOPE_KIND_EXACT: u8 = 1;
const SCOPE_KIND_PREFIX: u8 = 2;

/// The fixed head of a ticket; the table is in the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct TicketHead {
    magic: U32,
    version: u8,
    flags: u8,
    scope_count: U16,
    issued_at_s: U64,
    expires_at_s: U64,
}
const _: () = assert!(size_of::<TicketHead>() == 24);

/// Which pkeys a scope covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// This pkey only (1..=255 bytes).
    Exact(Vec<u8>),
    /// Every pkey that starts with these bytes (0..=255 bytes; empty matches every pkey, which
    /// grants all data but, unlike the admin flag, no admin operations).
    Prefix(Vec<u8>),
}

impl Scope {
    #[must_use]
    pub fn covers(&self, pkey: &[u8]) -> bool {
        match self {
            Self::Exact(exact) => pkey == exact.as_slice(),
            Self::Prefix(prefix) => pkey.starts_with(prefix),
        }
    }
}

/// What a ticket grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Allows every pkey and the admin operations.
    pub admin: bool,
    pub issued_at_s: u64,
    /// The first unix second at which the ticket is refused.
    pub expires_at_s: u64,
    pub scopes: Vec<Scope>,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketError {
    Malformed {
        reason: &'static str,
    },
    /// The tag does not match: the ticket was altered or signed with another secret.
    BadSignature,
    Expired {
        expired_at_s: u64,
        now_s: u64,
    },
}

impl std::fmt::Display for TicketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed { reason } => write!(f, "malformed ticket: {reason}"),
            Self::BadSignature => {
                write!(f, "ticket signature does not match (altered, or signed with another secret)")
            }
            Self::Expired { expired_at_s, now_s } => write!(
                f,
                "ticket expired at unix second {expired_at_s}, {} s ago: issue a new one",
                now_s.saturating_sub(*expired_at_s)
            ),
        }
    }
}

impl std::error::Error for TicketError {}

fn mac_of(secret: &[u8]) -> HmacSha256 {
    assert!(
        secret.len() >= TICKET_SECRET_LEN_MIN,
        "ticket secret is {} bytes: it should be at least {TICKET_SECRET_LEN_MIN}",
        secret.len()
    );
    HmacSha256::new_from_slice(secret).expect("HMAC should accept a key of any length")
}

impl Ticket {
    /// Whether this ticket lets its holder touch `pkey`.
    #[must_use]
    pub fn allows(&self, pkey: &[u8]) -> bool {
        self.admin || self.scopes.iter().any(|scope| scope.covers(pkey))
    }

    /// Checks that the ticket can be signed: scope count and lengths, and times in order.
    pub fn validate(&self) -> Result<(), TicketError> {
        let malformed = |reason| Err(TicketError::Malformed { reason });
        if self.scopes.len() > TICKET_SCOPES_MAX {
            return malformed("more than 64 scopes");
        }
        if self.expires_at_s <= self.issued_at_s {
            return malformed("expires before it is issued");
        }
        for scope in &self.scopes {
            match scope {
                Scope::Exact(pkey) if pkey.is_empty() => return malformed("empty exact scope"),
                Scope::Exact(bytes) | Scope::Prefix(bytes) if bytes.len() > PKEY_LEN_MAX => {
                    return malformed("scope longer than 255 bytes");
                }
                Scope::Exact(_) | Scope::Prefix(_) => {}
            }
        }
        Ok(())
    }

    /// The signed ticket's bytes. The ticket must be valid (see [`Ticket::validate`]).
    #[must_use]
    pub fn sign(&self, secret: &[u8]) -> Vec<u8> {
        assert_eq!(self.validate(), Ok(()), "a ticket should be validated before it is signed");
        let head = TicketHead {
            magic: TICKET_MAGIC.into(),
            version: TICKET_FORMAT_VERSION,
            flags: if self.admin { FLAG_ADMIN } else { 0 },
            scope_count: (self.scopes.len() as u16).into(),
            issued_at_s: self.issued_at_s.into(),
            expires_at_s: self.expires_at_s.into(),
        };
        let mut out = Vec::with_capacity(TICKET_LEN_MAX.min(256));
        out.extend_from_slice(head.as_bytes());
        for scope in &self.scopes {
            let (kind, bytes) = match scope {
                Scope::Exact(bytes) => (SCOPE_KIND_EXACT, bytes),
                Scope::Prefix(bytes) => (SCOPE_KIND_PREFIX, bytes),
            };
            out.push(kind);
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
        let mut mac = mac_of(secret);
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        assert!(out.len() <= TICKET_LEN_MAX);
        assert_eq!(Self::verify(&out, secret, self.issued_at_s).as_ref(), Ok(self));
        out
    }

    /// Checks a ticket's tag with `secret` (in constant time), then decodes it and checks that
    /// it has not expired at `now_s` (unix seconds).
    pub fn verify(bytes: &[u8], secret: &[u8], now_s: u64) -> Result<Self, TicketError> {
        let malformed = |reason| Err(TicketError::Malformed { reason });
        if bytes.len() < TICKET_HEAD_SIZE + TICKET_TAG_LEN {
            return malformed("shorter than a ticket's head and tag");
        }
        if bytes.len() > TICKET_LEN_MAX {
            return malformed("longer than the longest ticket");
        }
        let (head, _) = TicketHead::read_from_prefix(bytes).expect("the length was checked");
        if head.magic.get() != TICKET_MAGIC {
            return malformed("bad magic (not a Strata ticket)");
        }
        if head.version != TICKET_FORMAT_VERSION {
            return malformed("unknown ticket version");
        }
        let (signed, tag) = bytes.split_at(bytes.len() - TICKET_TAG_LEN);
        let mut mac = mac_of(secret);
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| TicketError::BadSignature)?;
        // From here on the bytes are the signer's: a malformed ticket is a signer's defect.
        let ticket = Self::decode_signed(&head, &signed[TICKET_HEAD_SIZE..])?;
        if now_s >= ticket.expires_at_s {
            return Err(TicketError::Expired { expired_at_s: ticket.expires_at_s, now_s });
        }
        Ok(ticket)
    }

    fn decode_signed(head: &TicketHead, mut rest: &[u8]) -> Result<Self, TicketError> {
        let malformed = |reason| Err(TicketError::Malformed { reason });
        if head.flags & !FLAG_ADMIN != 0 {
            return malformed("reserved flag bits set");
        }
        let scope_count = usize::from(head.scope_count.get());
        if scope_count > TICKET_SCOPES_MAX {
            return malformed("more than 64 scopes");
        }
        let mut scopes = Vec::with_capacity(scope_count);
        for _ in 0..scope_count {
            let [kind, len, tail @ ..] = rest else {
                return malformed("truncated scope");
            };
            let len = usize::from(*len);
            if tail.len() < len {
                return malformed("truncated scope");
            }
            let bytes = tail[..len].to_vec();
            scopes.push(match *kind {
                SCOPE_KIND_EXACT => Scope::Exact(bytes),
                SCOPE_KIND_PREFIX => Scope::Prefix(bytes),
                _ => return malformed("unknown scope kind"),
            });
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return malformed("bytes after the last scope");
        }
        let ticket = Self {
            admin: head.flags & FLAG_ADMIN != 0,
            issued_at_s: head.issued_at_s.get(),
            expires_at_s: head.expires_at_s.get(),
            scopes,
        };
        ticket.validate()?;
        Ok(ticket)
    }
}

/// Lower-case hex of `bytes`, to pass a ticket on a command line or in an environment variable.
#[must_use]
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The bytes of hex `text` (either case; surrounding white space is ignored).
pub fn decode_hex(text: &str) -> Result<Vec<u8>, TicketError> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    let text = text.trim().as_bytes();
    if !text.len().is_multiple_of(2) {
        return Err(TicketError::Malformed { reason: "odd number of hex digits" });
    }
    text.chunks_exact(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(high), Some(low)) => Ok(high << 4 | low),
            _ => Err(TicketError::Malformed { reason: "not a hex digit" }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-strata-test";
    const NOW_S: u64 = 1_700_000_000;

    fn user_ticket() -> Ticket {
        Ticket {
            admin: false,
            issued_at_s: NOW_S - 10,
            expires_at_s: NOW_S + 3600,
            scopes: vec![Scope::Exact(b"alice".to_vec()), Scope::Prefix(b"team-7/".to_vec())],
        }
    }

    #[test]
    fn ticket_round_trips() {
        let ticket = user_ticket();
        let bytes = ticket.sign(SECRET);
        assert_eq!(bytes.len(), TICKET_HEAD_SIZE + (2 + 5) + (2 + 7) + TICKET_TAG_LEN);
        assert_eq!(Ticket::verify(&bytes, SECRET, NOW_S), Ok(ticket));
        let empty = Ticket { scopes: vec![], ..user_ticket() };
        assert_eq!(Ticket::verify(&empty.sign(SECRET), SECRET, NOW_S), Ok(empty));
        let widest = Ticket {
            scopes: (0..TICKET_SCOPES_MAX).map(|i| Scope::Prefix(vec![i as u8; PKEY_LEN_MAX])).collect(),
            ..user_ticket()
        };
        let bytes = widest.sign(SECRET);
        assert_eq!(bytes.len(), TICKET_LEN_MAX);
        assert_eq!(Ticket::verify(&bytes, SECRET, NOW_S), Ok(widest));
    }

    #[test]
    fn ticket_detects_tampering_with_any_byte() {
        let bytes = user_ticket().sign(SECRET);
        for index in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[index] ^= flip;
                assert!(Ticket::verify(&bad, SECRET, NOW_S).is_err(), "change of byte {index} went unnoticed");
            }
        }
        assert!(Ticket::verify(&bytes[..bytes.len() - 1], SECRET, NOW_S).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Ticket::verify(&longer, SECRET, NOW_S).is_err());
        // A scope byte changed by someone without the secret fails the signature, not the parse.
        let mut widened = bytes;
        widened[TICKET_HEAD_SIZE + 2] = b'b';
        assert_eq!(Ticket::verify(&widened, SECRET, NOW_S), Err(TicketError::BadSignature));
    }

    #[test]
    fn ticket_refuses_another_secret() {
        let bytes = user_ticket().sign(SECRET);
        assert_eq!(Ticket::verify(&bytes, b"0123456789abcdef-other-secret", NOW_S), Err(TicketError::BadSignature));
    }

    #[test]
    fn ticket_expires_at_its_second() {
        let ticket = user_ticket();
        let bytes = ticket.sign(SECRET);
        assert!(Ticket::verify(&bytes, SECRET, ticket.expires_at_s - 1).is_ok());
        assert_eq!(
            Ticket::verify(&bytes, SECRET, ticket.expires_at_s),
            Err(TicketError::Expired { expired_at_s: ticket.expires_at_s, now_s: ticket.expires_at_s })
        );
        assert!(matches!(Ticket::verify(&bytes, SECRET, u64::MAX), Err(TicketError::Expired { .. })));
    }

    #[test]
    fn ticket_scopes_are_exact_or_prefix() {
        let ticket = user_ticket();
        assert!(ticket.allows(b"alice"));
        assert!(!ticket.allows(b"alice2"));
        assert!(!ticket.allows(b"alic"));
        assert!(ticket.allows(b"team-7/"));
        assert!(ticket.allows(b"team-7/bob"));
        assert!(!ticket.allows(b"team-8/bob"));
        assert!(!ticket.allows(b"team-7"));
        let nothing = Ticket { scopes: vec![], ..user_ticket() };
        assert!(!nothing.allows(b"alice"));
        let everything = Ticket { scopes: vec![Scope::Prefix(vec![])], ..user_ticket() };
        assert!(everything.allows(b"anyone"));
    }

    #[test]
    fn ticket_admin_allows_every_pkey() {
        let admin = Ticket { admin: true, scopes: vec![], ..user_ticket() };
        let verified = Ticket::verify(&admin.sign(SECRET), SECRET, NOW_S).unwrap();
        assert!(verified.admin);
        assert!(verified.allows(b"alice"));
        assert!(verified.allows(&[0xff; PKEY_LEN_MAX]));
        assert!(!user_ticket().admin);
    }

    #[test]
    fn ticket_refuses_invalid_contents() {
        let too_many = Ticket { scopes: vec![Scope::Exact(b"a".to_vec()); TICKET_SCOPES_MAX + 1], ..user_ticket() };
        assert!(too_many.validate().is_err());
        let empty_exact = Ticket { scopes: vec![Scope::Exact(vec![])], ..user_ticket() };
        assert!(empty_exact.validate().is_err());
        let too_long = Ticket { scopes: vec![Scope::Prefix(vec![1; PKEY_LEN_MAX + 1])], ..user_ticket() };
        assert!(too_long.validate().is_err());
        let backwards = Ticket { expires_at_s: NOW_S - 20, ..user_ticket() };
        assert!(backwards.validate().is_err());
        assert!(matches!(Ticket::verify(&[0; 10], SECRET, NOW_S), Err(TicketError::Malformed { .. })));
        assert!(matches!(
            Ticket::verify(&[0; TICKET_HEAD_SIZE + TICKET_TAG_LEN], SECRET, NOW_S),
            Err(TicketError::Malformed { .. })
        ));
    }

    #[test]
    fn ticket_hex_round_trips() {
        let bytes = user_ticket().sign(SECRET);
        let text = encode_hex(&bytes);
        assert_eq!(text.len(), bytes.len() * 2);
        assert_eq!(decode_hex(&text), Ok(bytes.clone()));
        assert_eq!(decode_hex(&format!(" {}\n", text.to_uppercase())), Ok(bytes));
        assert_eq!(encode_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert!(decode_hex("+1").is_err());
    }
}
