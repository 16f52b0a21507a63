//! The envelope every shared-tier value is stored in.
//!
//! ```text
//! b"TC" version:u8 flags:u8
//! written_ms:u64 soft_ms:u64 fresh_ms:u64 stale_ms:u64     (little endian, ms since the Unix epoch)
//! tag_count:u16 { len:u16 tag-bytes version:u64 }*
//! payload (the codec's bytes; with flag LZ4: raw_len:u32 then an lz4 block)
//! ```
//!
//! flags bit 0: negative entry (the origin had no such item; no payload).
//! flags bit 1: the payload is lz4-compressed.
//!
//! A newer `version` is [`DecodeError::FutureVersion`]: the engine treats it as
//! a miss and leaves it alone (a newer build wrote it). Anything else that
//! does not parse is [`DecodeError::Corrupt`] or [`DecodeError::Foreign`]: a
//! miss, deleted and counted. Nothing here panics on any input.

use std::borrow::Cow;

use crate::error::DecodeError;

const MAGIC: &[u8; 2] = b"TC";
/// The envelope format this build writes.
pub const VERSION: u8 = 1;
const FLAG_NEGATIVE: u8 = 1;
const FLAG_LZ4: u8 = 2;
const HEADER: usize = 4 + 4 * 8 + 2;
/// Largest decompressed payload accepted (guards against hostile size prefixes).
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// The times of an entry, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Times {
    /// When the entry was written.
    pub written_ms: u64,
    /// From here on a read triggers a background refresh.
    pub soft_ms: u64,
    /// Until here the entry is fresh.
    pub fresh_ms: u64,
    /// Until here the entry may be served stale when the origin fails.
    pub stale_ms: u64,
}

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The origin had no such item.
    pub negative: bool,
    /// The entry's times.
    pub times: Times,
    /// Tags with the versions they had when the entry was filled.
    pub tags: Vec<(String, u64)>,
    /// The codec's bytes (decompressed).
    pub payload: Cow<'a, [u8]>,
}

/// Encodes an envelope; payloads of at least `compress_at` bytes are
/// lz4-compressed when that makes them smaller.
pub fn encode(
    negative: bool,
    times: Times,
    tags: &[(String, u64)],
    payload: &[u8],
    compress_at: usize,
) -> Vec<u8> {
    let tag_bytes: usize = tags.iter().map(|(t, _)| 10 + t.len()).sum();
    let mut out = Vec::with_capacity(HEADER + tag_bytes + payload.len() + 8);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let flags_at = out.len();
    out.push(if negative { FLAG_NEGATIVE } else { 0 });
    for t in [
        times.written_ms,
        times.soft_ms,
        times.fresh_ms,
        times.stale_ms,
    ] {
        out.extend_from_slice(&t.to_le_bytes());
    }
    let tags = &tags[..tags.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(tags.len() as u16).to_le_bytes());
    for (tag, version) in tags {
        let t = &tag.as_bytes()[..tag.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(t.len() as u16).to_le_bytes());
        out.extend_from_slice(t);
        out.extend_from_slice(&version.to_le_bytes());
    }
    if !negative && payload.len() >= compress_at && payload.len() <= MAX_PAYLOAD {
        let compressed = lz4_flex::block::compress(payload);
        if compressed.len() + 4 < payload.len() {
            out[flags_at] |= FLAG_LZ4;
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&compressed);
            return out;
        }
    }
    out.extend_from_slice(payload);
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Corrupt("truncated".into()));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

/// Decodes an envelope.
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    if bytes.len() < 4 || &bytes[..2] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    match bytes[2] {
        0 => return Err(DecodeError::Corrupt("version 0".into())),
        v if v > VERSION => return Err(DecodeError::FutureVersion(v)),
        _ => {}
    }
    let flags = bytes[3];
    if flags & !(FLAG_NEGATIVE | FLAG_LZ4) != 0 {
        return Err(DecodeError::Corrupt("unknown flags".into()));
    }
    let mut r = Reader { b: &bytes[4..] };
    let times = Times {
        written_ms: r.u64()?,
        soft_ms: r.u64()?,
        fresh_ms: r.u64()?,
        stale_ms: r.u64()?,
    };
    if !(times.soft_ms <= times.fresh_ms && times.fresh_ms <= times.stale_ms) {
        return Err(DecodeError::Corrupt("times out of order".into()));
    }
    let n = r.u16()? as usize;
    let mut tags = Vec::with_capacity(n.min(r.b.len() / 10 + 1));
    for _ in 0..n {
        let len = r.u16()? as usize;
        let t = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DecodeError::Corrupt("tag is not UTF-8".into()))?;
        tags.push((t.to_owned(), r.u64()?));
    }
    let negative = flags & FLAG_NEGATIVE != 0;
    let payload = if flags & FLAG_LZ4 != 0 {
        if negative {
            return Err(DecodeError::Corrupt("negative entry with payload".into()));
        }
        let raw = r.u32()? as usize;
        if raw > MAX_PAYLOAD {
            return Err(DecodeError::Corrupt("payload too large".into()));
        }
        let out = lz4_flex::block::decompress(r.b, raw)
            .map_err(|e| DecodeError::Corrupt(format!("lz4: {e}")))?;
        if out.len() != raw {
            return Err(DecodeError::Corrupt("lz4 length mismatch".into()));
        }
        Cow::Owned(out)
    } else {
        if negative && !r.b.is_empty() {
            return Err(DecodeError::Corrupt("negative entry with payload".into()));
        }
        Cow::Borrowed(r.b)
    };
    Ok(Envelope {
        negative,
        times,
        tags,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times() -> Times {
        Times {
            written_ms: 1,
            soft_ms: 2,
            fresh_ms: 3,
            stale_ms: 4,
        }
    }

    #[test]
    fn round_trips_plain_compressed_negative_and_tagged() {
        let tags = vec![("products".to_owned(), 9), ("category:lamps".to_owned(), 0)];
        let small = encode(false, times(), &tags, b"hello", 1024);
        let e = decode(&small).expect("decode");
        assert_eq!(
            (e.negative, e.times, &e.tags[..], &*e.payload),
            (false, times(), &tags[..], &b"hello"[..])
        );

        let big = vec![b'a'; 10_000];
        let enc = encode(false, times(), &[], &big, 1024);
        assert!(enc.len() < 1000, "repetitive payload compresses");
        assert_eq!(&*decode(&enc).expect("decode").payload, &big[..]);

        let neg_bytes = encode(true, times(), &[], b"", 0);
        let neg = decode(&neg_bytes).expect("decode");
        assert!(neg.negative && neg.payload.is_empty());
    }

    #[test]
    fn bad_bytes_are_errors_never_panics() {
        assert_eq!(decode(b"").unwrap_err(), DecodeError::Foreign);
        assert_eq!(decode(b"{\"json\":1}").unwrap_err(), DecodeError::Foreign);
        let mut future = encode(false, times(), &[], b"x", 1024);
        future[2] = 2;
        assert_eq!(decode(&future).unwrap_err(), DecodeError::FutureVersion(2));
        let good = encode(false, times(), &[("t".into(), 1)], &vec![7u8; 5000], 16);
        for cut in 0..good.len().min(200) {
            let _ = decode(&good[..cut]);
        }
        // A hostile size prefix does not allocate gigabytes.
        let mut hostile = encode(false, times(), &[], &vec![1u8; 4096], 16);
        let at = HEADER;
        hostile[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&hostile).is_err());
        let mut x: u32 = 12345;
        for _ in 0..5000 {
            let mut junk = good.clone();
            for b in junk.iter_mut().skip(4) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if x.is_multiple_of(7) {
                    *b = (x >> 16) as u8;
                }
            }
            let _ = decode(&junk);
        }
    }
}
