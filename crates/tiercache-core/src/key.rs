//! Keys: how a typed key becomes the string stored in the shared tier and the
//! hash that identifies it in the local tier.
//!
//! The *storage key* of `key` in namespace `ns` is `ns:key`; when that is longer
//! than the configured maximum it becomes `ns:#` followed by the 32 hex digits
//! of its 128-bit xxh3 hash, so keys stay bounded in length. Every crate (the
//! Redis tier, the sidecar) derives storage keys through [`KeyFormat`], never a
//! copy of these rules.
//!
//! The local tier is keyed by [`KeyHash`], the xxh3-128 of the storage key. It
//! is computed by formatting the key into a stack buffer: a local hit formats
//! and hashes, and allocates nothing.

use std::fmt::{self, Display, Write as _};
use std::sync::Arc;

use xxhash_rust::xxh3::{Xxh3, xxh3_64, xxh3_128};

/// The identity of an entry in the local tier: the xxh3-128 of its storage key.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub u128);

/// The identity of a tag: the xxh3-64 of the tag's text.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagHash(pub u64);

impl TagHash {
    /// The hash of `tag`.
    pub fn of(tag: &str) -> Self {
        TagHash(xxh3_64(tag.as_bytes()))
    }
}

/// Derives storage keys and key hashes for one namespace.
#[derive(Clone, Debug)]
pub struct KeyFormat {
    namespace: Arc<str>,
    max_key_len: usize,
}

/// Stack space used to format a key before hashing it; longer keys stream.
const STACK_KEY: usize = 192;

/// Formats into a stack buffer, spilling into a streaming hasher past it.
struct KeyWriter {
    buf: [u8; STACK_KEY],
    len: usize,
    total: usize,
    stream: Option<Box<Xxh3>>,
}

impl KeyWriter {
    fn new() -> Self {
        Self {
            buf: [0; STACK_KEY],
            len: 0,
            total: 0,
            stream: None,
        }
    }

    fn digest(&self) -> u128 {
        match &self.stream {
            Some(s) => s.digest128(),
            None => xxh3_128(&self.buf[..self.len]),
        }
    }
}

impl fmt::Write for KeyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        self.total += bytes.len();
        if let Some(stream) = &mut self.stream {
            stream.update(bytes);
        } else if self.len + bytes.len() <= STACK_KEY {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut stream = Box::new(Xxh3::new());
            stream.update(&self.buf[..self.len]);
            stream.update(bytes);
            self.stream = Some(stream);
        }
        Ok(())
    }
}

impl KeyFormat {
    /// A key format for `namespace`, hashing storage keys longer than
    /// `max_key_len` bytes.
    pub fn new(namespace: impl Into<Arc<str>>, max_key_len: usize) -> Self {
        Self {
            namespace: namespace.into(),
            max_key_len,
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The maximum storage key length before hashing.
    pub fn max_key_len(&self) -> usize {
        self.max_key_len
    }

    fn write<K: Display + ?Sized>(&self, key: &K) -> KeyWriter {
        let mut w = KeyWriter::new();
        // Writing into KeyWriter never fails; a Display impl that reports an
        // error leaves a shorter key, which still hashes consistently.
        let _ = write!(w, "{}:{}", self.namespace, key);
        w
    }

    /// The local-tier identity of `key`. Allocates nothing for keys that fit
    /// the stack buffer and are within the maximum length.
    pub fn hash<K: Display + ?Sized>(&self, key: &K) -> KeyHash {
        let w = self.write(key);
        if w.total <= self.max_key_len {
            KeyHash(w.digest())
        } else {
            KeyHash(xxh3_128(self.long_key(w.digest()).as_bytes()))
        }
    }

    /// The storage key of `key`: `ns:key`, or `ns:#<hash>` when too long.
    pub fn storage_key<K: Display + ?Sized>(&self, key: &K) -> String {
        let w = self.write(key);
        if w.total <= self.max_key_len {
            let mut s = String::with_capacity(w.total);
            let _ = write!(s, "{}:{}", self.namespace, key);
            s
        } else {
            self.long_key(w.digest())
        }
    }

    /// Both the storage key and the hash of `key`.
    pub fn both<K: Display + ?Sized>(&self, key: &K) -> (String, KeyHash) {
        let s = self.storage_key(key);
        let h = KeyHash(xxh3_128(s.as_bytes()));
        (s, h)
    }

    fn long_key(&self, digest: u128) -> String {
        format!("{}:#{:032x}", self.namespace, digest)
    }

    /// The hash of an already-built storage key.
    pub fn hash_storage_key(storage_key: &str) -> KeyHash {
        KeyHash(xxh3_128(storage_key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_prefixed() {
        let f = KeyFormat::new("products", 64);
        assert_eq!(f.storage_key(&42u64), "products:42");
        assert_eq!(f.hash(&42u64), KeyFormat::hash_storage_key("products:42"));
        assert_eq!(f.hash("42"), f.hash(&42u64));
    }

    #[test]
    fn long_keys_are_hashed_and_bounded() {
        let f = KeyFormat::new("ns", 40);
        let long = "x".repeat(1000);
        let sk = f.storage_key(&long);
        assert!(sk.starts_with("ns:#"));
        assert_eq!(sk.len(), "ns:#".len() + 32);
        assert_eq!(f.hash(&long), KeyFormat::hash_storage_key(&sk));
        // Different long keys stay distinct.
        let other = format!("{}y", "x".repeat(999));
        assert_ne!(f.storage_key(&other), sk);
    }

    #[test]
    fn keys_longer_than_the_stack_buffer_hash_the_same_way() {
        let f = KeyFormat::new("ns", 10_000);
        let k = "k".repeat(STACK_KEY * 3 + 7);
        let (sk, h) = f.both(&k);
        assert_eq!(f.hash(&k), h);
        assert_eq!(sk.len(), 3 + k.len());
    }
}
