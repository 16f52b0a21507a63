//! Value codecs: how a value becomes bytes for the shared tier.
//!
//! The codec only turns a value into bytes and back; the engine wraps the
//! result in its own versioned envelope (see [`envelope`](crate::envelope)) and
//! compresses large payloads, so a codec need not care about either.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, EncodeError};

/// Turns values into bytes and back.
pub trait Codec<V>: Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`.
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), EncodeError>;
    /// The value encoded in `bytes`. Any bytes may arrive here (another
    /// program's, an older build's): return an error, never panic.
    fn decode(&self, bytes: &[u8]) -> Result<V, DecodeError>;

    /// A copy of `value` that shares no reference-counted memory with it,
    /// or `None` (the default) to share `value` itself.
    ///
    /// Each thread keeps its own copies of the few local entries it reads
    /// most (see [`Cache::get_local`](crate::Cache::get_local)). When a
    /// caller clones parts of a value on every hit (`Bytes`, `Arc`s), the
    /// reference counts of a shared value are written by every core and
    /// cost more than the rest of the hit; a per-thread copy keeps those
    /// writes on the thread's own memory. It is made once per copy taken
    /// (an entry read twice in a row through its slot, or after a change),
    /// never per hit, and only for entries of at most 16 KiB encoded.
    fn thread_copy(&self, value: &V) -> Option<V> {
        let _ = value;
        None
    }
}

/// The default codec: serde into postcard, a compact binary format.
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl<V> Codec<V> for Postcard
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let bytes = postcard::to_extend(value, std::mem::take(out))
            .map_err(|e| EncodeError(e.to_string()))?;
        *out = bytes;
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, DecodeError> {
        let (v, rest) =
            postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if rest.is_empty() {
            Ok(v)
        } else {
            Err(DecodeError::Corrupt("trailing bytes after value".into()))
        }
    }
}

/// A codec for values that are already bytes: stores them as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawBytes;

impl Codec<bytes::Bytes> for RawBytes {
    fn encode(&self, value: &bytes::Bytes, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<bytes::Bytes, DecodeError> {
        Ok(bytes::Bytes::copy_from_slice(bytes))
    }

    fn thread_copy(&self, value: &bytes::Bytes) -> Option<bytes::Bytes> {
        Some(bytes::Bytes::copy_from_slice(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Product {
        id: u64,
        name: String,
    }

    #[test]
    fn postcard_round_trips_and_rejects_garbage() {
        let p = Product {
            id: 7,
            name: "lamp".into(),
        };
        let mut out = Vec::new();
        Codec::<Product>::encode(&Postcard, &p, &mut out).expect("encode");
        assert_eq!(Codec::<Product>::decode(&Postcard, &out), Ok(p));
        assert!(Codec::<Product>::decode(&Postcard, &[0xff; 3]).is_err());
        assert!(Codec::<Product>::decode(&Postcard, &[]).is_err());
    }
}
