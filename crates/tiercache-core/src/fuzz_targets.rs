//! Fuzz targets for the engine's parsers of outside bytes (issue 11).
//!
//! Each target takes arbitrary bytes, runs a parser (and what the engine
//! does with its result) and asserts what must hold beyond "no panic". A
//! failed assertion or a panic is a bug. The same functions run twice:
//!
//! - under libFuzzer, from the `fuzz/` crate (`cargo +nightly fuzz run
//!   <target>`, feature `fuzzing`), for as long as one cares to;
//! - as bounded proptests in `mod tests` below (`cargo test`), so every
//!   landing runs a few hundred cases of each.
//!
//! Not part of the API: compiled only for tests and with the `fuzzing`
//! feature, and hidden from the docs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128, xxh3_128_with_seed};

use crate::Cache;
use crate::bus::{Bus, InProcessBus};
#[cfg(test)]
use crate::envelope::Times;
use crate::envelope::{self, MAX_PAYLOAD, MAX_TAG_LEN, MAX_TAGS};
use crate::error::DecodeError;
use crate::key::{CacheKey, KeyFormat, KeyHash};
use crate::message::{ClearNote, Invalidation, MAX_MESSAGE_BYTES, MessageCodec};

/// The shared-tier envelope every stored value is wrapped in, for tests and
/// fuzz targets outside this crate that plant stored values (or check tags
/// as the engine does). Not an API.
pub mod envelope_format {
    pub use crate::envelope::{Times, check_tags, encode, encode_at_epoch};
}

/// The key the signed codec of [`bus_message`] uses.
pub const SIGNING_KEY: &[u8] = b"tiercache-fuzz-signing-key";

/// A valid unsigned message header: `b"TCI"`, version 1, no flags.
const MESSAGE_HEADER: [u8; 5] = *b"TCI\x01\x00";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
}

/// Runs `fut` to completion on this thread's current-thread tokio runtime
/// (made once per thread), for targets that drive the async engine. Must
/// not be called from inside a runtime.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(fut))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

// ---------------------------------------------------------------------------
// Bus messages

/// [`MessageCodec::decode`], unsigned and signed, on `data` as it is, on
/// `data` as the body behind a valid header, and on that body signed with
/// [`SIGNING_KEY`].
///
/// Invariants: a message the signed codec accepts the unsigned one accepts
/// as the same message; a message that decodes re-encodes (unsigned and
/// signed) to bytes that decode to the same message; the signed codec
/// refuses the unsigned encoding and any one-bit change of the signed one;
/// a correctly signed body decodes exactly as the unsigned body does.
pub fn bus_message(data: &[u8]) {
    let plain = MessageCodec::unsigned();
    let signed = MessageCodec::signed(SIGNING_KEY);
    let _ = check_message(&plain, &signed, data);

    let mut framed = Vec::with_capacity(MESSAGE_HEADER.len() + data.len() + 32);
    framed.extend_from_slice(&MESSAGE_HEADER);
    framed.extend_from_slice(data);
    let as_body = check_message(&plain, &signed, &framed);

    // The same body, signed: the signature changes nothing about the body.
    if framed.len() + 32 <= MAX_MESSAGE_BYTES {
        framed[4] = 1;
        let mac = hmac_sha256(SIGNING_KEY, &framed);
        framed.extend_from_slice(&mac);
        let via_signed = check_message(&plain, &signed, &framed);
        assert_eq!(
            via_signed, as_body,
            "a signed body decodes as the unsigned one"
        );
        assert_eq!(signed.decode(&framed), as_body);
    }
}

fn check_message(
    plain: &MessageCodec,
    signed: &MessageCodec,
    bytes: &[u8],
) -> Result<Invalidation, DecodeError> {
    let p = plain.decode(bytes);
    let s = signed.decode(bytes);
    if let Ok(m) = &s {
        assert_eq!(
            p.as_ref(),
            Ok(m),
            "a signed message reads the same unsigned"
        );
    }
    let Ok(m) = &p else {
        assert!(s.is_err(), "signed accepts only what unsigned accepts");
        return p;
    };
    assert!(bytes.len() <= MAX_MESSAGE_BYTES);
    assert!(
        bytes.starts_with(b"TCI\x01") || (bytes.starts_with(b"TCI\x02") && m.clear.is_some()),
        "only version 1 decodes, and version 2 for a clear: {:?}",
        &bytes[..bytes.len().min(5)]
    );

    let enc = plain.encode(m);
    assert_eq!(plain.decode(&enc).as_ref(), Ok(m), "unsigned round trip");
    assert_eq!(
        signed.decode(&enc),
        Err(DecodeError::BadSignature),
        "an unsigned message is refused by a keyed codec"
    );
    // Encoding is canonical: what decodes from an encoding encodes to it.
    assert_eq!(plain.encode(&plain.decode(&enc).expect("round trip")), enc);

    let sig = signed.encode(m);
    assert_eq!(signed.decode(&sig).as_ref(), Ok(m), "signed round trip");
    assert_eq!(plain.decode(&sig).as_ref(), Ok(m), "unsigned reads signed");
    // Any one-bit change of a signed message is refused.
    let at = usize::try_from(m.seq ^ m.sender_instance).unwrap_or(0) % sig.len();
    let bit = (m.keys.len() + m.tags.len() + bytes.len()) % 8;
    let mut forged = sig.clone();
    forged[at] ^= 1 << bit;
    assert!(
        signed.decode(&forged).is_err(),
        "a signed message with bit {bit} of byte {at} flipped was accepted"
    );
    // And under another key.
    assert_eq!(
        MessageCodec::signed(b"another key").decode(&sig),
        Err(DecodeError::BadSignature)
    );
    p
}

// ---------------------------------------------------------------------------
// Envelopes

/// [`envelope::decode`] / [`envelope::decode_limited`] on `data`, and on
/// `data` behind a valid header whose times are in order (random bytes
/// rarely order four `u64`s).
///
/// Invariants: a decoded envelope has ordered times, at most
/// [`MAX_PAYLOAD`] bytes of payload, none when negative, tags within the
/// limits; `decode_limited(bytes, n)` succeeds exactly when the payload is
/// at most `n` bytes, with the same envelope, and never returns a longer
/// payload; an envelope re-encodes (with its tags, compressed or not) to
/// bytes that decode to the same envelope, and an uncompressed one to
/// exactly the bytes it came from.
pub fn envelope(data: &[u8]) {
    check_envelope(data);
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut framed = Vec::with_capacity(4 + data.len() + 32);
    framed.extend_from_slice(b"TC\x01");
    framed.push(flags & 3);
    let mut times = [0u64; 4];
    let mut rest = rest;
    for t in &mut times {
        let n = rest.len().min(8);
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&rest[..n]);
        *t = u64::from_le_bytes(b);
        rest = &rest[n..];
    }
    times[1..].sort_unstable();
    for t in times {
        framed.extend_from_slice(&t.to_le_bytes());
    }
    framed.extend_from_slice(rest);
    check_envelope(&framed);
}

fn check_envelope(bytes: &[u8]) {
    let decoded = envelope::decode(bytes);
    let Ok(e) = decoded else {
        for limit in [0, 64, 4096, MAX_PAYLOAD, usize::MAX] {
            assert!(
                envelope::decode_limited(bytes, limit).is_err(),
                "decode_limited({limit}) accepts what decode refuses"
            );
        }
        return;
    };
    let t = e.times;
    assert!(t.soft_ms <= t.fresh_ms && t.fresh_ms <= t.stale_ms, "{t:?}");
    let n = e.payload.len();
    assert!(n <= MAX_PAYLOAD);
    assert!(!e.negative || n == 0, "a negative entry has no payload");
    assert!(e.tags.len() <= MAX_TAGS);
    assert!(e.tags.iter().all(|(t, _)| t.len() <= MAX_TAG_LEN));
    let compressed = bytes[3] & 2 != 0;
    assert_eq!(
        matches!(e.payload, Cow::Borrowed(_)),
        !compressed,
        "only a compressed payload is copied"
    );

    for limit in [0, n.saturating_sub(1), n, n.saturating_add(1), 64, 4096] {
        match envelope::decode_limited(bytes, limit) {
            Ok(l) => {
                assert!(l.payload.len() <= limit, "payload past the limit {limit}");
                assert_eq!(l, e);
            }
            Err(_) => assert!(n > limit, "a payload of {n} bytes refused under {limit}"),
        }
    }

    // Re-encoded with its tags: never compressed, then compressed if that
    // makes it smaller.
    let plain = envelope::encode_at_epoch(
        e.epoch,
        e.negative,
        e.times,
        &e.tags,
        &e.payload,
        usize::MAX,
    )
    .expect("decoded tags fit an envelope");
    if !compressed {
        assert_eq!(
            plain, bytes,
            "an uncompressed envelope re-encodes to itself"
        );
    }
    assert_eq!(envelope::decode(&plain).expect("re-encoded decodes"), e);
    let packed = envelope::encode_at_epoch(e.epoch, e.negative, e.times, &e.tags, &e.payload, 0)
        .expect("decoded tags fit an envelope");
    assert!(packed.len() <= plain.len());
    let again = envelope::decode_limited(&packed, n).expect("compressed re-encoding decodes");
    assert_eq!(again, e);
}

// ---------------------------------------------------------------------------
// Keys

/// A key written in pieces (as a `Display`-based key may be): its hash must
/// not depend on how it is cut.
struct Pieces<'a>(Vec<&'a str>);

impl CacheKey for Pieces<'_> {
    fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        for p in &self.0 {
            out.write_str(p)?;
        }
        Ok(())
    }
}

/// A key rendered through `Display` ([`display_cache_key!`](crate::display_cache_key)).
struct Shown(String);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

crate::display_cache_key!(Shown);

/// `s` cut every `every` characters, with empty pieces in between.
fn pieces(s: &str, every: usize) -> Pieces<'_> {
    let mut out = vec![""];
    let mut start = 0;
    for (n, (i, _)) in s.char_indices().enumerate() {
        if n > 0 && n % every == 0 {
            out.push(&s[start..i]);
            out.push("");
            start = i;
        }
    }
    out.push(&s[start..]);
    Pieces(out)
}

/// [`KeyFormat::storage_key`] and [`KeyFormat::hash`] on keys from `data`:
/// bytes 0-1 the maximum key length (mod 1024), byte 2 the namespace's
/// length (mod 32), then the namespace, then two keys separated by the
/// first `\n` (all UTF-8, lossy).
///
/// Invariants: a storage key is `ns:key` (with a leading `#` doubled) when
/// that fits, else `ns:#` and 32 hex digits, so it is at most the maximum
/// whenever the namespace and a hashed key fit; two different keys never
/// share a storage key or a hash (among the two keys, each with a `#` in
/// front, and the text of each one's storage key after `ns:`, which is how
/// a short key would forge a long key's hashed form); the hash is the
/// documented xxh3, is stable, and is the same for the key as `&str`,
/// `String`, `Box<str>`, `Arc<str>`, `Cow`, a `Display` type, a key written
/// in pieces, and an integer whose text it is.
pub fn keys(data: &[u8]) {
    let max = match data {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])) % 1024,
        _ => 250,
    };
    let rest = data.get(2..).unwrap_or_default();
    let (ns_len, rest) = match rest.split_first() {
        Some((n, r)) => (usize::from(*n) % 32, r),
        None => (2, &b""[..]),
    };
    let ns_len = ns_len.min(rest.len());
    let ns = String::from_utf8_lossy(&rest[..ns_len]).into_owned();
    let rest = &rest[ns_len..];
    let (k1, k2) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let k1 = String::from_utf8_lossy(k1).into_owned();
    let k2 = String::from_utf8_lossy(k2).into_owned();
    let f = KeyFormat::new(ns.as_str(), max);

    let tail = |k: &str| f.storage_key(k)[ns.len() + 1..].to_owned();
    let candidates = [
        tail(&k1),
        tail(&k2),
        format!("#{k1}"),
        format!("#{k2}"),
        k1,
        k2,
    ];
    let mut seen: Vec<(&str, String, KeyHash)> = Vec::with_capacity(candidates.len());
    for k in &candidates {
        let (sk, h) = check_key(&f, k);
        for (other, osk, oh) in &seen {
            if *other == k.as_str() {
                assert_eq!((osk, oh), (&sk, &h));
            } else {
                assert_ne!(osk, &sk, "keys {other:?} and {k:?} share a storage key");
                assert_ne!(oh, &h, "keys {other:?} and {k:?} share a hash");
            }
        }
        seen.push((k.as_str(), sk, h));
    }
}

/// The storage key and hash of `k`, checked against the documented rules.
fn check_key(f: &KeyFormat, k: &str) -> (String, KeyHash) {
    let ns = f.namespace();
    let max = f.max_key_len();
    let sk = f.storage_key(k);
    let escaped_len = k.len() + usize::from(k.starts_with('#'));
    let fits = ns.len() + 1 + escaped_len <= max;
    if fits {
        let mut want = format!("{ns}:");
        if k.starts_with('#') {
            want.push('#');
        }
        want.push_str(k);
        assert_eq!(sk, want);
    } else {
        let hex = sk
            .strip_prefix(ns)
            .and_then(|s| s.strip_prefix(":#"))
            .unwrap_or_else(|| panic!("hashed storage key {sk:?} of {k:?}"));
        assert_eq!(hex.len(), 32, "{sk:?}");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{sk:?}"
        );
        if ns.len() + 34 <= max {
            assert!(sk.len() <= max, "{} > {max}", sk.len());
        }
    }

    let h = f.hash(k);
    let want = if fits {
        KeyHash(xxh3_128_with_seed(k.as_bytes(), xxh3_64(ns.as_bytes())))
    } else {
        KeyHash(xxh3_128(sk.as_bytes()))
    };
    assert_eq!(h, want, "the documented hash of {k:?}");
    assert_eq!(f.hash(k), h, "stable");
    assert_eq!(f.storage_key_and_hash(k), (sk.clone(), h));
    assert_eq!(f.hash(&k.to_owned()), h);
    assert_eq!(f.hash(&Box::<str>::from(k)), h);
    assert_eq!(f.hash(&Arc::<str>::from(k)), h);
    assert_eq!(f.hash(&Cow::Borrowed(k)), h);
    assert_eq!(f.hash(&Shown(k.to_owned())), h);
    assert_eq!(f.storage_key(&Shown(k.to_owned())), sk);
    for every in [1, 3, 64] {
        let p = pieces(k, every);
        assert_eq!(p.render(), k);
        assert_eq!(f.hash(&p), h, "{k:?} in pieces of {every}");
        assert_eq!(f.storage_key(&p), sk);
    }
    if let Ok(n) = k.parse::<i64>()
        && n.to_string() == k
    {
        assert_eq!(f.hash(&n), h);
        assert_eq!(f.storage_key(&n), sk);
    }
    if let Ok(n) = k.parse::<u128>()
        && n.to_string() == k
    {
        assert_eq!(f.hash(&n), h);
    }
    (sk, h)
}

// ---------------------------------------------------------------------------
// The bus listener

/// The namespace of [`bus_listener`]'s cache.
const LISTENER_NS: &str = "fz";

/// A cache listening on an in-process bus gets the messages in `data`, then
/// an invalidation of a key it holds.
///
/// `data` is a list of chunks, each a length byte then that many bytes. A
/// chunk whose first byte is odd is a message built from its bytes (origin
/// from the first, `seq` from the next eight, the rest keys and tags, of
/// this namespace or, when byte 1 is odd, another); an even one is
/// published as it is (or as the body behind a valid header).
///
/// Invariants: whatever came before (garbage, forged sequence numbers such
/// as `u64::MAX` then 1, gaps), the listener is still there and applies the
/// invalidation (the key is gone locally), and the cache still stores and
/// serves.
pub fn bus_listener(data: &[u8]) {
    block_on(async {
        let bus = InProcessBus::new();
        let cache: Cache<String, String> = Cache::builder(LISTENER_NS)
            .no_shared_tier()
            .bus(bus.clone())
            .build()
            .expect("cache");
        for _ in 0..1000 {
            if cache.local_trusted() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(cache.local_trusted(), "the in-process bus connects at once");
        let mut applied = cache.subscribe_applied();
        let probe = "probe".to_owned();
        cache.insert(&probe, "v".to_owned()).await;
        assert!(cache.get_local(&probe).is_some());

        let codec = MessageCodec::unsigned();
        let mut rest = data;
        while let Some((&n, tail)) = rest.split_first() {
            let n = usize::from(n).min(tail.len());
            let (chunk, next) = tail.split_at(n);
            rest = next;
            let payload = match chunk.first() {
                Some(b) if b & 1 == 1 => codec.encode(&message_from(chunk)),
                Some(_) if chunk.len() > 1 && chunk[1] & 1 == 1 => {
                    let mut framed = MESSAGE_HEADER.to_vec();
                    framed.extend_from_slice(&chunk[2..]);
                    framed
                }
                _ => chunk.to_vec(),
            };
            bus.publish(LISTENER_NS, Bytes::from(payload))
                .await
                .expect("publish");
        }
        // The invalidation that must get through: a fresh origin's first.
        let last = Invalidation {
            sender_instance: u64::MAX - 7,
            namespace: LISTENER_NS.to_owned(),
            keys: vec![probe.clone()],
            tags: Vec::new(),
            created: false,
            seq: 1,
            source_time_ms: 0,
            clear: None,
        };
        bus.publish(LISTENER_NS, Bytes::from(codec.encode(&last)))
            .await
            .expect("publish");
        let heard = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match applied.recv().await {
                    // (A fuzzed message just like it evicts the key too.)
                    Ok(a) if a.sender_instance == last.sender_instance && a.keys == last.keys => {
                        return true;
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        assert_eq!(heard, Ok(true), "the listener applies the last message");
        assert!(
            cache.get_local(&probe).is_none(),
            "the invalidated key is gone"
        );
        cache.insert(&probe, "w".to_owned()).await;
        assert_eq!(
            cache.get(&probe).await.as_deref().map(String::as_str),
            Some("w"),
            "the cache still works"
        );
    });
}

/// An invalidation built from a chunk of [`bus_listener`]'s data.
fn message_from(chunk: &[u8]) -> Invalidation {
    let sender_instance = u64::from(chunk[0] >> 1);
    let mut seq = [0u8; 8];
    let body = chunk.get(1..).unwrap_or_default();
    let n = body.len().min(8);
    seq[..n].copy_from_slice(&body[..n]);
    let words = String::from_utf8_lossy(&body[n..]).into_owned();
    let mut words = words.split(' ').map(str::to_owned);
    let namespace = if chunk.get(1).is_some_and(|b| b & 1 == 1) {
        "other".to_owned()
    } else {
        LISTENER_NS.to_owned()
    };
    Invalidation {
        sender_instance,
        namespace,
        keys: words.next().into_iter().collect(),
        tags: words.collect(),
        created: chunk.len().is_multiple_of(2),
        seq: u64::from_le_bytes(seq),
        source_time_ms: u64::from_le_bytes(seq).rotate_left(17),
        // Some are clears (of any epochs; with keys too, which a decoder
        // refuses).
        clear: chunk.get(1).is_some_and(|b| b & 6 == 6).then(|| ClearNote {
            hard: chunk.len().is_multiple_of(3),
            epoch: u64::from_le_bytes(seq).rotate_left(9),
            floor: u64::from_le_bytes(seq).rotate_left(9) >> 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    use super::*;
    use crate::fuzz_targets;

    /// Bytes of a valid envelope (payloads from 64 bytes compressed).
    fn sample_envelope(
        negative: bool,
        times: Times,
        tags: &[(String, u64)],
        payload: &[u8],
    ) -> Vec<u8> {
        envelope::encode(negative, times, tags, payload, 64).expect("sample envelope")
    }

    // Failures are not persisted (no proptest-regressions files in the
    // source tree): a failing input becomes a named test or a fuzz seed.
    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    fn invalidation() -> impl Strategy<Value = Invalidation> {
        (
            (
                any::<u64>(),
                prop_oneof![Just("products".to_owned()), ".{0,12}"],
                vec(".{0,16}", 0..4),
                vec(".{0,16}", 0..4),
                any::<bool>(),
                prop_oneof![Just(u64::MAX), Just(1), any::<u64>()],
                any::<u64>(),
            ),
            proptest::option::of((any::<bool>(), any::<u64>(), any::<u64>())),
        )
            .prop_map(
                |(
                    (sender_instance, namespace, keys, tags, created, seq, source_time_ms),
                    clear,
                )| {
                    // A clear names no keys or tags, and its floor is not
                    // past its epoch (a decoder refuses anything else).
                    let clear = clear.map(|(hard, a, b)| crate::message::ClearNote {
                        hard,
                        epoch: a.max(b),
                        floor: a.min(b),
                    });
                    let (keys, tags) = if clear.is_some() {
                        (Vec::new(), Vec::new())
                    } else {
                        (keys, tags)
                    };
                    Invalidation {
                        sender_instance,
                        namespace,
                        keys,
                        tags,
                        created,
                        seq,
                        source_time_ms,
                        clear,
                    }
                },
            )
    }

    /// Edits of a valid encoding: byte changes, a cut, an insertion.
    fn mutated(bytes: Vec<u8>, edits: Vec<(usize, u8)>, cut: Option<usize>) -> Vec<u8> {
        let mut b = bytes;
        for (at, v) in edits {
            if b.is_empty() {
                break;
            }
            let i = at % (b.len() + 1);
            match v % 3 {
                0 if i < b.len() => b[i] = v,
                1 if i < b.len() => b[i] ^= 1 << (v % 8),
                _ => b.insert(i, v),
            }
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        b
    }

    fn times() -> impl Strategy<Value = Times> {
        (any::<u64>(), vec(any::<u64>(), 3)).prop_map(|(written_ms, mut t)| {
            t.sort_unstable();
            Times {
                written_ms,
                soft_ms: t[0],
                fresh_ms: t[1],
                stale_ms: t[2],
            }
        })
    }

    fn valid_envelope() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            prop_oneof![
                times(),
                Just(Times {
                    written_ms: 1,
                    soft_ms: 2,
                    fresh_ms: 3,
                    stale_ms: u64::MAX
                })
            ],
            vec((".{0,12}", any::<u64>()), 0..4),
            prop_oneof![
                vec(any::<u8>(), 0..200),
                (any::<u8>(), 64usize..2000).prop_map(|(b, n)| vec![b; n]),
            ],
        )
            .prop_map(|(negative, times, tags, payload)| {
                let payload = if negative { Vec::new() } else { payload };
                sample_envelope(negative, times, &tags, &payload)
            })
    }

    fn key_input() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(250u16), Just(48), 0u16..1024],
            prop_oneof![Just("ns".to_owned()), "[a-z:]{0,10}", ".{0,4}"],
            prop_oneof![
                (240usize..320).prop_map(|n| "L".repeat(n)),
                "#?#?[0-9a-f]{0,40}",
                Just("#76218cfe33fa24c1f4a67c79e15962e3".to_owned()),
                "[0-9]{1,40}",
                ".{0,300}",
            ],
            prop_oneof![Just(String::new()), "#?.{0,300}"],
        )
            .prop_map(|(max, ns, k1, k2)| {
                let mut b = max.to_le_bytes().to_vec();
                b.push(ns.len() as u8);
                b.extend_from_slice(ns.as_bytes());
                b.extend_from_slice(k1.as_bytes());
                b.push(b'\n');
                b.extend_from_slice(k2.as_bytes());
                b
            })
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn bus_message(data in vec(any::<u8>(), 0..512)) {
            fuzz_targets::bus_message(&data);
        }

        #[test]
        fn bus_message_near_valid(
            msg in invalidation(),
            signed in any::<bool>(),
            edits in vec((any::<usize>(), any::<u8>()), 0..3),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let codec = if signed { MessageCodec::signed(SIGNING_KEY) } else { MessageCodec::unsigned() };
            let bytes = codec.encode(&msg);
            fuzz_targets::bus_message(&bytes);
            fuzz_targets::bus_message(&bytes[5..]);
            fuzz_targets::bus_message(&mutated(bytes, edits, cut));
        }

        #[test]
        fn envelope(data in vec(any::<u8>(), 0..512)) {
            fuzz_targets::envelope(&data);
        }

        #[test]
        fn envelope_near_valid(
            bytes in valid_envelope(),
            edits in vec((any::<usize>(), any::<u8>()), 0..3),
            cut in proptest::option::of(any::<usize>()),
        ) {
            fuzz_targets::envelope(&bytes);
            fuzz_targets::envelope(&mutated(bytes, edits, cut));
        }

        #[test]
        fn keys(data in vec(any::<u8>(), 0..512)) {
            fuzz_targets::keys(&data);
        }

        #[test]
        fn keys_structured(data in key_input()) {
            fuzz_targets::keys(&data);
        }
    }

    proptest! {
        // Each case builds a cache and runs its listener: fewer cases.
        #![proptest_config(config(256))]

        #[test]
        fn bus_listener(
            chunks in vec(
                prop_oneof![
                    invalidation().prop_map(|m| {
                        let mut m = m;
                        m.namespace = LISTENER_NS.to_owned();
                        MessageCodec::unsigned().encode(&m)
                    }),
                    vec(any::<u8>(), 0..64),
                ],
                0..6,
            ),
        ) {
            let mut data = Vec::new();
            for c in chunks {
                let c = &c[..c.len().min(255)];
                data.push(c.len() as u8);
                data.extend_from_slice(c);
            }
            fuzz_targets::bus_listener(&data);
        }
    }

    #[test]
    fn the_issue_inputs_pass() {
        let lz4_bomb = {
            let mut b = vec![0x54, 0x43, 0x01, 0x02, 0x00];
            b.extend_from_slice(&[0; 33]);
            b.extend_from_slice(&[0x00, 0x00, 0x00, 0x10]);
            b
        };
        assert_eq!(lz4_bomb.len(), 42);
        fuzz_targets::envelope(&lz4_bomb);
        fuzz_targets::keys(&[250, 0, 2, b'n', b's', b'L']);
        let mut long = vec![250, 0, 2, b'n', b's'];
        long.extend_from_slice("L".repeat(300).as_bytes());
        fuzz_targets::keys(&long);
        let codec = MessageCodec::unsigned();
        let mut data = Vec::new();
        for seq in [u64::MAX, 1] {
            let m = Invalidation {
                sender_instance: 9,
                namespace: LISTENER_NS.to_owned(),
                keys: vec!["probe".into()],
                tags: vec![],
                created: false,
                seq,
                source_time_ms: 0,
                clear: None,
            };
            let enc = codec.encode(&m);
            fuzz_targets::bus_message(&enc);
            data.push(enc.len() as u8);
            data.extend_from_slice(&enc);
        }
        fuzz_targets::bus_listener(&data);
    }
}
