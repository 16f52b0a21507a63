//! The envelope every shared-tier value is stored in.
//!
//! ```text
//! b"TC" version:u8 flags:u8
//! written_ms:u64 soft_ms:u64 fresh_ms:u64 stale_ms:u64     (little endian, ms since the Unix epoch)
//! [clear_epoch:u64]                                          (version 2 only)
//! tag_count:u16 { len:u16 tag-bytes version:u64 }*
//! payload (the codec's bytes; with flag LZ4: raw_len:u32 then an lz4 block)
//! ```
//!
//! flags bit 0: negative entry (the origin had no such item; no payload).
//! flags bit 1: the payload is lz4-compressed.
//!
//! Version 2 adds the namespace's clear epoch the value was written under
//! (see [`Cache::clear`](crate::Cache::clear)); a value written before the
//! namespace was ever cleared is still written as version 1 (epoch 0), so
//! instances of an older build keep reading it during a rolling deploy.
//!
//! A newer `version` is [`DecodeError::FutureVersion`]: the engine treats it as
//! a miss and leaves it alone (a newer build wrote it). Anything else that
//! does not parse is [`DecodeError::Corrupt`] or [`DecodeError::Foreign`]: a
//! miss, deleted and counted. Nothing here panics on any input.
//!
//! Crate-private: tests and fuzz targets outside the crate reach [`Times`],
//! [`encode`] and [`check_tags`] through `fuzz_targets::envelope_format`
//! (feature `fuzzing`), to plant stored values; they are not an API.

use std::borrow::Cow;

use crate::error::{DecodeError, EncodeError};

const MAGIC: &[u8; 2] = b"TC";
/// The newest envelope format this build reads and writes.
pub(crate) const VERSION: u8 = 2;
const FLAG_NEGATIVE: u8 = 1;
const FLAG_LZ4: u8 = 2;
const HEADER: usize = 4 + 4 * 8 + 2;
/// Largest decompressed payload accepted (guards against hostile size prefixes).
pub(crate) const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

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
pub(crate) struct Envelope<'a> {
    /// The origin had no such item.
    pub(crate) negative: bool,
    /// The entry's times.
    pub(crate) times: Times,
    /// The namespace's clear epoch it was written under (0: version 1).
    pub(crate) epoch: u64,
    /// Tags with the versions they had when the entry was filled.
    pub(crate) tags: Vec<(String, u64)>,
    /// The codec's bytes (decompressed).
    pub(crate) payload: Cow<'a, [u8]>,
}

/// Most tags an envelope records (its tag count is a `u16`).
pub(crate) const MAX_TAGS: usize = u16::MAX as usize;
/// Longest tag, in bytes, an envelope records (its length is a `u16`).
pub(crate) const MAX_TAG_LEN: usize = u16::MAX as usize;

/// Whether `tags` can be recorded exactly: at most [`MAX_TAGS`] of them,
/// none longer than [`MAX_TAG_LEN`] bytes. An entry whose tags cannot be
/// recorded must not be stored: a cut tag would never match its
/// invalidation.
pub fn check_tags<'t>(tags: impl ExactSizeIterator<Item = &'t str>) -> Result<(), EncodeError> {
    if tags.len() > MAX_TAGS {
        return Err(EncodeError(format!(
            "{} tags, more than the {MAX_TAGS} an entry can record",
            tags.len()
        )));
    }
    for t in tags {
        if t.len() > MAX_TAG_LEN {
            return Err(EncodeError(format!(
                "a tag of {} bytes, longer than the {MAX_TAG_LEN} an entry can record",
                t.len()
            )));
        }
    }
    Ok(())
}

/// Encodes an envelope; payloads of at least `compress_at` bytes are
/// lz4-compressed when that makes them smaller.
///
/// # Errors
///
/// Tags that cannot be recorded exactly ([`check_tags`]): nothing is
/// ever cut.
#[cfg(any(test, feature = "fuzzing"))]
pub fn encode(
    negative: bool,
    times: Times,
    tags: &[(String, u64)],
    payload: &[u8],
    compress_at: usize,
) -> Result<Vec<u8>, EncodeError> {
    encode_at_epoch(0, negative, times, tags, payload, compress_at)
}

/// [`encode`] for a value written under the namespace's clear `epoch`
/// (version 2; version 1 for epoch 0).
///
/// # Errors
///
/// Tags that cannot be recorded exactly ([`check_tags`]).
pub fn encode_at_epoch(
    epoch: u64,
    negative: bool,
    times: Times,
    tags: &[(String, u64)],
    payload: &[u8],
    compress_at: usize,
) -> Result<Vec<u8>, EncodeError> {
    check_tags(tags.iter().map(|(t, _)| t.as_str()))?;
    let tag_bytes: usize = tags.iter().map(|(t, _)| 10 + t.len()).sum();
    let mut out = Vec::with_capacity(HEADER + 8 + tag_bytes + payload.len() + 8);
    out.extend_from_slice(MAGIC);
    out.push(if epoch == 0 { 1 } else { 2 });
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
    if epoch != 0 {
        out.extend_from_slice(&epoch.to_le_bytes());
    }
    // Checked above: every count and length fits its u16.
    out.extend_from_slice(&u16::try_from(tags.len()).unwrap_or(u16::MAX).to_le_bytes());
    for (tag, version) in tags {
        let t = tag.as_bytes();
        out.extend_from_slice(&u16::try_from(t.len()).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(t);
        out.extend_from_slice(&version.to_le_bytes());
    }
    if !negative && payload.len() >= compress_at && payload.len() <= MAX_PAYLOAD {
        let compressed = lz4_flex::block::compress(payload);
        if compressed.len() + 4 < payload.len() {
            out[flags_at] |= FLAG_LZ4;
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&compressed);
            return Ok(out);
        }
    }
    out.extend_from_slice(payload);
    Ok(out)
}

/// What a stored envelope holds, for operators' tools (`tiercache
/// inspect`): everything but the value itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// The format version it was written in.
    pub version: u8,
    /// A cached "no such item".
    pub negative: bool,
    /// The payload is lz4-compressed.
    pub compressed: bool,
    /// Its times (ms since the Unix epoch).
    pub times: Times,
    /// The namespace clear epoch it was written under.
    pub clear_epoch: u64,
    /// Its tags, with the versions they had when it was written.
    pub tags: Vec<(String, u64)>,
    /// The stored length in bytes (the envelope, as stored).
    pub stored_len: usize,
    /// The codec's bytes, once decompressed.
    pub payload_len: usize,
}

/// Decodes the envelope in `bytes` (as the engine does, with the largest
/// payload it accepts) and describes it.
///
/// # Errors
///
/// The bytes are not an envelope this build reads ([`DecodeError`]).
pub fn describe(bytes: &[u8]) -> Result<EnvelopeInfo, DecodeError> {
    let e = decode_limited(bytes, MAX_PAYLOAD)?;
    Ok(EnvelopeInfo {
        version: bytes[2],
        negative: e.negative,
        compressed: bytes[3] & FLAG_LZ4 != 0,
        times: e.times,
        clear_epoch: e.epoch,
        tags: e.tags,
        stored_len: bytes.len(),
        payload_len: e.payload.len(),
    })
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

/// lz4 turns at most this many bytes out of each compressed byte (a run
/// extension byte stands for 255 more): a size prefix claiming more than this
/// over the compressed length is a lie, refused before anything is allocated.
const LZ4_MAX_RATIO: usize = 255;

/// Decodes an envelope whose payload may decompress to at most
/// [`MAX_PAYLOAD`] bytes (the engine uses [`decode_limited`]).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    decode_limited(bytes, MAX_PAYLOAD)
}

/// Decodes an envelope whose payload is at most `max_payload` bytes once
/// decompressed (the engine passes its `max_value_size`: it never writes a
/// larger payload). The size prefix of a compressed payload is checked
/// against that limit and against the compressed length before anything is
/// allocated.
pub(crate) fn decode_limited(
    bytes: &[u8],
    max_payload: usize,
) -> Result<Envelope<'_>, DecodeError> {
    if bytes.len() < 4 || &bytes[..2] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    let version = match bytes[2] {
        0 => return Err(DecodeError::Corrupt("version 0".into())),
        v if v > VERSION => return Err(DecodeError::FutureVersion(v)),
        v => v,
    };
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
    let epoch = if version >= 2 { r.u64()? } else { 0 };
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
        if raw > max_payload.min(MAX_PAYLOAD) {
            return Err(DecodeError::Corrupt(format!(
                "payload of {raw} bytes is over the limit of {max_payload}"
            )));
        }
        if raw > r.b.len().saturating_mul(LZ4_MAX_RATIO).saturating_add(16) {
            return Err(DecodeError::Corrupt(format!(
                "size prefix {raw} impossible for {} compressed bytes",
                r.b.len()
            )));
        }
        let out = lz4_flex::block::decompress(r.b, raw)
            .map_err(|e| DecodeError::Corrupt(format!("lz4: {e}")))?;
        if out.len() != raw {
            return Err(DecodeError::Corrupt("lz4 length mismatch".into()));
        }
        Cow::Owned(out)
    } else {
        if r.b.len() > max_payload {
            return Err(DecodeError::Corrupt(format!(
                "payload of {} bytes is over the limit of {max_payload}",
                r.b.len()
            )));
        }
        if negative && !r.b.is_empty() {
            return Err(DecodeError::Corrupt("negative entry with payload".into()));
        }
        Cow::Borrowed(r.b)
    };
    Ok(Envelope {
        negative,
        times,
        epoch,
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
        let small = encode(false, times(), &tags, b"hello", 1024).expect("encode");
        let e = decode(&small).expect("decode");
        assert_eq!(
            (e.negative, e.times, &e.tags[..], &*e.payload),
            (false, times(), &tags[..], &b"hello"[..])
        );

        let big = vec![b'a'; 10_000];
        let enc = encode(false, times(), &[], &big, 1024).expect("encode");
        assert!(enc.len() < 1000, "repetitive payload compresses");
        assert_eq!(&*decode(&enc).expect("decode").payload, &big[..]);

        let neg_bytes = encode(true, times(), &[], b"", 0).expect("encode");
        let neg = decode(&neg_bytes).expect("decode");
        assert!(neg.negative && neg.payload.is_empty());
    }

    #[test]
    fn describe_reports_the_header() {
        let bytes = encode_at_epoch(3, false, times(), &[("t".into(), 9)], &[b'q'; 300], 16)
            .expect("encode");
        let info = describe(&bytes).expect("describe");
        assert_eq!(
            (
                info.version,
                info.negative,
                info.compressed,
                info.clear_epoch
            ),
            (2, false, true, 3)
        );
        assert_eq!((info.payload_len, info.stored_len), (300, bytes.len()));
        assert_eq!(info.tags, vec![("t".to_owned(), 9)]);
        assert_eq!(describe(b"nope"), Err(DecodeError::Foreign));
    }

    #[test]
    fn a_clear_epoch_makes_version_2_and_epoch_0_stays_version_1() {
        let tags = vec![("t".to_owned(), 3)];
        let v1 = encode(false, times(), &tags, b"hello", 1024).expect("encode");
        assert_eq!(v1[2], 1, "never cleared: readable by older builds");
        assert_eq!(decode(&v1).expect("decode").epoch, 0);
        let v2 = encode_at_epoch(7, false, times(), &tags, &vec![b'z'; 500], 16).expect("encode");
        assert_eq!(v2[2], 2);
        let e = decode(&v2).expect("decode");
        assert_eq!(
            (e.epoch, e.times, &e.tags[..], e.payload.len()),
            (7, times(), &tags[..], 500)
        );
        // Truncated inside the epoch: corrupt, not a panic.
        assert!(matches!(
            decode(&v2[..4 + 32 + 4]),
            Err(DecodeError::Corrupt(_))
        ));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Issue 11, case 4: a 42-byte value whose size prefix claims 256 MiB.
    #[test]
    fn a_lying_size_prefix_allocates_nothing() {
        let bytes = hex(&format!("5443010200{}00000010", "00".repeat(33)));
        assert_eq!(bytes.len(), 42);
        for limit in [MAX_PAYLOAD, 1024 * 1024] {
            match decode_limited(&bytes, limit) {
                Err(DecodeError::Corrupt(why)) => assert!(
                    why.contains("size prefix") || why.contains("limit"),
                    "{why}"
                ),
                other => panic!("expected corrupt, got {other:?}"),
            }
        }
        // A real compressed payload decodes under a limit it fits, and is
        // refused under one it does not.
        let big = vec![b'a'; 100_000];
        let enc = encode(false, times(), &[], &big, 16).expect("encode");
        assert_eq!(
            decode_limited(&enc, 100_000).expect("fits").payload.len(),
            100_000
        );
        assert!(decode_limited(&enc, 99_999).is_err());
        let plain = encode(false, times(), &[], b"0123456789", 1024).expect("encode");
        assert!(decode_limited(&plain, 10).is_ok());
        assert!(decode_limited(&plain, 9).is_err());
    }

    /// Issue 11, case 5: tags are recorded exactly or not at all.
    #[test]
    fn tags_past_the_limits_are_refused_not_cut() {
        let long = "t".repeat(MAX_TAG_LEN + 1);
        assert!(encode(false, times(), &[(long, 1)], b"v", 1024).is_err());
        let edge = "t".repeat(MAX_TAG_LEN);
        let ok = encode(false, times(), &[(edge.clone(), 1)], b"v", 1024).expect("fits");
        assert_eq!(decode(&ok).expect("decode").tags, [(edge, 1)]);
        let many: Vec<(String, u64)> = (0..=MAX_TAGS).map(|i| (i.to_string(), 0)).collect();
        assert!(encode(false, times(), &many, b"v", 1024).is_err());
        let utf8 = [("category:café".to_owned(), 3)];
        let e = encode(false, times(), &utf8, b"v", 1024).expect("utf-8 tag");
        assert_eq!(decode(&e).expect("decode").tags, utf8);
    }

    #[test]
    fn bad_bytes_are_errors_never_panics() {
        assert_eq!(decode(b"").unwrap_err(), DecodeError::Foreign);
        assert_eq!(decode(b"{\"json\":1}").unwrap_err(), DecodeError::Foreign);
        let mut future = encode(false, times(), &[], b"x", 1024).expect("encode");
        future[2] = VERSION + 1;
        assert_eq!(
            decode(&future).unwrap_err(),
            DecodeError::FutureVersion(VERSION + 1)
        );
        let good =
            encode(false, times(), &[("t".into(), 1)], &vec![7u8; 5000], 16).expect("encode");
        for cut in 0..good.len().min(200) {
            let _ = decode(&good[..cut]);
        }
        // A hostile size prefix does not allocate gigabytes.
        let mut hostile = encode(false, times(), &[], &vec![1u8; 4096], 16).expect("encode");
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
