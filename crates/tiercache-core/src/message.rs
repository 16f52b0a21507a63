//! The invalidation message carried by the bus, and its wire format.
//!
//! Wire format, version 1:
//!
//! ```text
//! b"TCI"  version:u8  flags:u8  body (postcard)  [clear (postcard)]  [hmac-sha256: 32 bytes]
//! ```
//!
//! Version 2 adds the clear ([`ClearNote`]) after the body; a message without
//! one is still written as version 1, so an instance of an older build reads
//! every invalidation but a clear. It drops a clear as a newer version, and
//! the gap that leaves in the sender's sequence makes it flush its local tier:
//! the safe side of a rolling deploy.
//!
//! `flags` bit 0: the message is signed (the last 32 bytes are an HMAC-SHA256,
//! with the shared key, of everything before them). A message of a newer
//! version, a foreign payload, a bad signature or a corrupt body is a
//! [`DecodeError`]; the engine counts and drops it.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::DecodeError;

const MAGIC: &[u8; 3] = b"TCI";
/// The newest version read (and written, for a clear).
const VERSION: u8 = 2;
const FLAG_SIGNED: u8 = 1;
const MAC_LEN: usize = 32;
/// Largest payload accepted by [`MessageCodec::decode`].
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// An invalidation: keys and tags of one namespace that changed at the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The instance that published it (each process draws a random id).
    /// Serialized under its former name, `origin` (the wire format is
    /// unchanged).
    #[serde(rename = "origin")]
    pub sender_instance: u64,
    /// The namespace of the keys and tags.
    pub namespace: String,
    /// Keys as the application renders them (without the namespace prefix).
    pub keys: Vec<String>,
    /// Tags whose entries are all invalid.
    pub tags: Vec<String>,
    /// The keys were created: Bloom guards add them.
    pub created: bool,
    /// The publisher's sequence number (per sender instance and namespace,
    /// from 1, no gaps); a receiver that sees a gap presumes messages lost.
    pub seq: u64,
    /// When the change happened at its source, in milliseconds since the Unix
    /// epoch (for the commit-to-evict lag metric); 0 when unknown.
    pub source_time_ms: u64,
    /// The whole namespace was cleared (`keys` and `tags` are then empty).
    /// Carried after the body, in version 2 of the wire format.
    #[serde(skip)]
    pub clear: Option<ClearNote>,
}

/// A namespace clear, as the bus carries it (see
/// [`Cache::clear`](crate::Cache::clear)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearNote {
    /// Entries are gone (`true`), or stale and servable within grace.
    pub hard: bool,
    /// The namespace's clear epoch after this clear; 0 when the sender could
    /// not reach the shared tier (receivers clear their local tiers and
    /// learn the epochs from the shared tier later).
    pub epoch: u64,
    /// The namespace's hard-clear floor after this clear.
    pub floor: u64,
}

/// What an [`Invalidation`] with no keys and no tags says of its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginSignal {
    /// An invalidation proper (keys, tags, or both).
    Changes,
    /// The sender is alive and has published up to `seq`: a receiver that
    /// has heard less presumes the rest lost.
    Heartbeat,
    /// The sender goes quiet after `seq` (it stops heartbeating): a
    /// receiver forgets it instead of counting its silence as a loss.
    Farewell,
}

impl Invalidation {
    /// A sender's heartbeat: alive, `seq` is its last sequence number. A
    /// sender that publishes invalidations heartbeats while it is active, so
    /// that a receiver notices when its messages stop arriving (its own
    /// connection down while the receiver's is up) and does not wait for
    /// its next message to see a gap.
    pub fn heartbeat(sender_instance: u64, namespace: impl Into<String>, seq: u64) -> Self {
        Self {
            sender_instance,
            namespace: namespace.into(),
            keys: Vec::new(),
            tags: Vec::new(),
            created: false,
            seq,
            source_time_ms: 0,
            clear: None,
        }
    }

    /// A sender's farewell: it goes quiet after `seq` (no more heartbeats
    /// until its next invalidation). Encoded as a heartbeat with `created`
    /// set, which an invalidation proper (with keys) never is without keys.
    pub fn farewell(sender_instance: u64, namespace: impl Into<String>, seq: u64) -> Self {
        Self {
            created: true,
            ..Self::heartbeat(sender_instance, namespace, seq)
        }
    }

    /// What this message says of its sender.
    pub fn signal(&self) -> OriginSignal {
        let empty = self.keys.is_empty() && self.tags.is_empty() && self.clear.is_none();
        match (empty, self.created) {
            (false, _) => OriginSignal::Changes,
            (true, false) => OriginSignal::Heartbeat,
            (true, true) => OriginSignal::Farewell,
        }
    }
}

/// Encodes and decodes [`Invalidation`]s, signing them when given a key.
#[derive(Clone, Default)]
pub struct MessageCodec {
    key: Option<std::sync::Arc<[u8]>>,
}

impl std::fmt::Debug for MessageCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageCodec")
            .field("signed", &self.key.is_some())
            .finish()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl MessageCodec {
    /// A codec that neither signs nor checks signatures.
    pub fn unsigned() -> Self {
        Self { key: None }
    }

    /// A codec that signs every message with `key` and accepts only messages
    /// signed with it.
    pub fn signed(key: impl AsRef<[u8]>) -> Self {
        Self {
            key: Some(key.as_ref().into()),
        }
    }

    fn mac(&self, key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
        // HMAC accepts keys of any length; new_from_slice cannot fail.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => return [0; MAC_LEN],
        };
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The wire bytes of `msg`.
    pub fn encode(&self, msg: &Invalidation) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(if msg.clear.is_some() { 2 } else { 1 });
        out.push(if self.key.is_some() { FLAG_SIGNED } else { 0 });
        // Serializing plain strings and integers into a Vec cannot fail.
        if let Ok(body) = postcard::to_stdvec(msg) {
            out.extend_from_slice(&body);
        }
        if let Some(clear) = &msg.clear
            && let Ok(c) = postcard::to_stdvec(clear)
        {
            out.extend_from_slice(&c);
        }
        if let Some(key) = &self.key {
            let mac = self.mac(key, &out);
            out.extend_from_slice(&mac);
        }
        out
    }

    /// The message in `bytes`, or why it is not acceptable.
    pub fn decode(&self, bytes: &[u8]) -> Result<Invalidation, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::Corrupt("message too large".into()));
        }
        if bytes.len() < 5 || &bytes[..3] != MAGIC {
            return Err(DecodeError::Foreign);
        }
        if bytes[3] > VERSION {
            return Err(DecodeError::FutureVersion(bytes[3]));
        }
        if bytes[3] == 0 {
            return Err(DecodeError::Corrupt("version 0".into()));
        }
        let signed = bytes[4] & FLAG_SIGNED != 0;
        let body_end = match (&self.key, signed) {
            (Some(key), true) => {
                if bytes.len() < 5 + MAC_LEN {
                    return Err(DecodeError::BadSignature);
                }
                let end = bytes.len() - MAC_LEN;
                let mut mac =
                    HmacSha256::new_from_slice(key).map_err(|_| DecodeError::BadSignature)?;
                mac.update(&bytes[..end]);
                mac.verify_slice(&bytes[end..])
                    .map_err(|_| DecodeError::BadSignature)?;
                end
            }
            (Some(_), false) => return Err(DecodeError::BadSignature),
            (None, true) => bytes.len().saturating_sub(MAC_LEN).max(5),
            (None, false) => bytes.len(),
        };
        let (mut msg, mut rest): (Invalidation, _) = postcard::take_from_bytes(&bytes[5..body_end])
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if bytes[3] >= 2 {
            let (clear, after): (ClearNote, _) =
                postcard::take_from_bytes(rest).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
            if !(msg.keys.is_empty() && msg.tags.is_empty()) || clear.floor > clear.epoch {
                return Err(DecodeError::Corrupt(
                    "a clear with keys or tags, or a floor past its epoch".into(),
                ));
            }
            msg.clear = Some(clear);
            rest = after;
        }
        if !rest.is_empty() {
            return Err(DecodeError::Corrupt("trailing bytes".into()));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invalidation {
        Invalidation {
            sender_instance: 7,
            namespace: "products".into(),
            keys: vec!["1".into(), "2".into()],
            tags: vec!["category:books".into()],
            created: true,
            seq: 42,
            source_time_ms: 1_700_000_000_000,
            clear: None,
        }
    }

    fn clear() -> Invalidation {
        Invalidation {
            keys: Vec::new(),
            tags: Vec::new(),
            created: false,
            clear: Some(ClearNote {
                hard: true,
                epoch: 5,
                floor: 5,
            }),
            ..sample()
        }
    }

    #[test]
    fn a_clear_is_version_2_and_everything_else_version_1() {
        let plain = MessageCodec::unsigned();
        let bytes = plain.encode(&sample());
        assert_eq!(bytes[3], 1, "readable by older builds");
        let cleared = plain.encode(&clear());
        assert_eq!(cleared[3], 2);
        assert_eq!(plain.decode(&cleared), Ok(clear()));
        assert_eq!(clear().signal(), OriginSignal::Changes);
        let signed = MessageCodec::signed(b"secret");
        assert_eq!(signed.decode(&signed.encode(&clear())), Ok(clear()));
        // A version-1 message claiming version 2 lacks its clear: corrupt.
        let mut short = bytes.clone();
        short[3] = 2;
        assert!(matches!(plain.decode(&short), Err(DecodeError::Corrupt(_))));
        // A clear that also names keys is refused.
        let mut both = clear();
        both.keys.push("1".into());
        assert!(matches!(
            plain.decode(&plain.encode(&both)),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn round_trips_unsigned_and_signed() {
        let plain = MessageCodec::unsigned();
        assert_eq!(plain.decode(&plain.encode(&sample())), Ok(sample()));
        let signed = MessageCodec::signed(b"secret");
        assert_eq!(signed.decode(&signed.encode(&sample())), Ok(sample()));
    }

    #[test]
    fn rejects_forged_and_unsigned_when_keyed() {
        let signed = MessageCodec::signed(b"secret");
        let forged = MessageCodec::signed(b"other").encode(&sample());
        assert_eq!(signed.decode(&forged), Err(DecodeError::BadSignature));
        let unsigned = MessageCodec::unsigned().encode(&sample());
        assert_eq!(signed.decode(&unsigned), Err(DecodeError::BadSignature));
        let mut tampered = signed.encode(&sample());
        tampered[7] ^= 1;
        assert_eq!(signed.decode(&tampered), Err(DecodeError::BadSignature));
    }

    #[test]
    fn foreign_future_and_garbage_are_errors_not_panics() {
        let c = MessageCodec::unsigned();
        assert_eq!(c.decode(b"hello world"), Err(DecodeError::Foreign));
        assert_eq!(c.decode(b""), Err(DecodeError::Foreign));
        let mut future = c.encode(&sample());
        future[3] = 9;
        assert_eq!(c.decode(&future), Err(DecodeError::FutureVersion(9)));
        let good = c.encode(&sample());
        for cut in 0..good.len() {
            let _ = c.decode(&good[..cut]);
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut junk = good.clone();
            for b in junk.iter_mut().skip(5) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b ^= (x & 0xff) as u8;
            }
            let _ = c.decode(&junk);
        }
    }
}
