//! Key encoding: `(pkey, ts)` as order-preserving bytes.
//!
//! ```text
//! offset  size      field     encoding
//! 0       2         bucket    u16 big-endian: xxh3_64(pkey, seed 0) mod 65536
//! 2       1         pkey_len  u8, 1..=255
//! 3       pkey_len  pkey      opaque bytes
//! 3+len   8         ts        u64 big-endian
//! ```
//!
//! Invariant: comparing encoded keys as bytes orders them by (bucket, pkey length, pkey, ts), so
//! all entries of one pkey are contiguous and sorted by `ts`, and all pkeys of one bucket are
//! contiguous (buckets move whole, as one key range).

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Buckets are the unit of placement: `bucket = xxh3(pkey) mod BUCKET_COUNT`.
pub const BUCKET_COUNT: u32 = 65_536;
/// The fixed seed of the bucket hash. Changing it would move every key: never change it.
pub const BUCKET_HASH_SEED: u64 = 0;
/// The longest pkey, in bytes.
pub const PKEY_LEN_MAX: usize = 255;
/// The timestamp of timeless records (a Redis `SET k v`): always newest, never sunk.
pub const TS_TIMELESS: u64 = u64::MAX;
/// Bytes an encoded key adds to its pkey.
pub const KEY_OVERHEAD: usize = 2 + 1 + 8;

pub type Bucket = u16;
pub type Timestamp = u64;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    PkeyEmpty,
    PkeyTooLong { len: usize },
    Truncated { len: usize },
    LengthMismatch { declared: usize, actual: usize },
    BucketMismatch { stored: u16, computed: u16 },
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PkeyEmpty => write!(f, "pkey is empty (it must be 1..=255 bytes)"),
            Self::PkeyTooLong { len } => write!(f, "pkey is {len} bytes (at most {PKEY_LEN_MAX})"),
            Self::Truncated { len } => write!(f, "encoded key of {len} bytes is truncated"),
            Self::LengthMismatch { declared, actual } => {
                write!(f, "encoded key declares pkey of {declared} bytes but holds {actual}")
            }
            Self::BucketMismatch { stored, computed } => {
                write!(f, "encoded key stores bucket {stored} but its pkey hashes to {computed}")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// The bucket of a pkey.
#[must_use]
pub fn bucket_of(pkey: &[u8]) -> Bucket {
    (xxh3_64_with_seed(pkey, BUCKET_HASH_SEED) % u64::from(BUCKET_COUNT)) as Bucket
}

/// Checks a pkey's length.
pub fn validate_pkey(pkey: &[u8]) -> Result<(), KeyError> {
    if pkey.is_empty() {
        return Err(KeyError::PkeyEmpty);
    }
    if pkey.len() > PKEY_LEN_MAX {
        return Err(KeyError::PkeyTooLong { len: pkey.len() });
    }
    Ok(())
}

/// Appends the encoding of `(pkey, ts)` to `out`.
pub fn encode_key_into(pkey: &[u8], ts: Timestamp, out: &mut Vec<u8>) -> Result<(), KeyError> {
    validate_pkey(pkey)?;
    out.reserve(KEY_OVERHEAD + pkey.len());
    out.extend_from_slice(&bucket_of(pkey).to_be_bytes());
    out.push(pkey.len() as u8);
    out.extend_from_slice(pkey);
    out.extend_from_slice(&ts.to_be_bytes());
    Ok(())
}

/// The encoding of `(pkey, ts)`.
pub fn encode_key(pkey: &[u8], ts: Timestamp) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(KEY_OVERHEAD + pkey.len());
    encode_key_into(pkey, ts, &mut out)?;
    Ok(out)
}

/// A decoded key, borrowing its pkey from the encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub bucket: Bucket,
    pub pkey: &'a [u8],
    pub ts: Timestamp,
}

/// Decodes an encoded key, checking its length and bucket.
pub fn decode_key(bytes: &[u8]) -> Result<KeyRef<'_>, KeyError> {
    if bytes.len() < KEY_OVERHEAD + 1 {
        return Err(KeyError::Truncated { len: bytes.len() });
    }
    let stored = u16::from_be_bytes([bytes[0], bytes[1]]);
    let declared = usize::from(bytes[2]);
    let actual = bytes.len() - KEY_OVERHEAD;
    if declared != actual {
        return Err(KeyError::LengthMismatch { declared, actual });
    }
    let pkey = &bytes[3..3 + declared];
    validate_pkey(pkey)?;
    let computed = bucket_of(pkey);
    if computed != stored {
        return Err(KeyError::BucketMismatch { stored, computed });
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[3 + declared..]);
    Ok(KeyRef { bucket: stored, pkey, ts: u64::from_be_bytes(ts) })
}

/// The encoded key's prefix that names its pkey: bucket, length byte, pkey (no ts).
///
/// # Panics
/// When `key` is shorter than a timestamp (not an encoded key).
#[must_use]
pub fn pkey_prefix(key: &[u8]) -> &[u8] {
    &key[..key.len() - 8]
}

/// The timestamp stored in the last 8 bytes of an encoded key.
///
/// # Panics
/// When `key` is shorter than a timestamp (not an encoded key).
#[must_use]
pub fn ts_of_key(key: &[u8]) -> Timestamp {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&key[key.len() - 8..]);
    u64::from_be_bytes(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips() {
        for (pkey, ts) in [(&b"u"[..], 0), (b"user-42", 1_700_000_000_000_000), (&[0xff; 255], TS_TIMELESS)] {
            let enc = encode_key(pkey, ts).unwrap();
            let dec = decode_key(&enc).unwrap();
            assert_eq!(dec.pkey, pkey);
            assert_eq!(dec.ts, ts);
            assert_eq!(dec.bucket, bucket_of(pkey));
        }
    }

    #[test]
    fn key_orders_entries_of_a_pkey_by_ts() {
        let mut prev = encode_key(b"alice", 0).unwrap();
        for ts in [1, 255, 256, 65_535, 1 << 40, u64::MAX - 1, u64::MAX] {
            let next = encode_key(b"alice", ts).unwrap();
            assert!(prev < next, "ts order lost at {ts}");
            prev = next;
        }
    }

    #[test]
    fn key_keeps_each_pkey_contiguous() {
        // "a" is a prefix of "a\0": without the length byte their entries would interleave.
        let a_lo = encode_key(b"a", 0).unwrap();
        let a_hi = encode_key(b"a", u64::MAX).unwrap();
        let b = encode_key(b"a\0", 7).unwrap();
        assert!(!(a_lo < b && b < a_hi));
    }

    #[test]
    fn key_refuses_bad_pkeys() {
        assert_eq!(encode_key(b"", 1), Err(KeyError::PkeyEmpty));
        assert_eq!(encode_key(&[1; 256], 1), Err(KeyError::PkeyTooLong { len: 256 }));
    }

    #[test]
    fn key_detects_every_single_bit_flip() {
        let enc = encode_key(b"timeline-7", 123_456).unwrap();
        for bit in 0..enc.len() * 8 {
            let mut bad = enc.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            // A flip in ts yields another valid key (ts has no redundancy); every other flip
            // must be refused.
            let in_ts = bit / 8 >= enc.len() - 8;
            assert_eq!(decode_key(&bad).is_ok(), in_ts, "bit {bit}");
        }
    }
}
