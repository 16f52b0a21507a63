//! Keys: how a typed key becomes the string stored in the shared tier and the
//! hash that identifies it in the local tier.
//!
//! The *storage key* of `key` in namespace `ns` is `ns:key`; when that is longer
//! than the configured maximum it becomes `ns:#` followed by the 32 hex digits
//! of its 128-bit xxh3 hash, so keys stay bounded in length. A key whose text
//! starts with `#` is stored as `ns:##key`: after `ns:#` a hashed key has a
//! hex digit and an escaped one another `#`, so no key can render to another
//! key's hashed form. Every crate (the Redis tier, the sidecar) derives
//! storage keys through [`KeyFormat`], never a copy of these rules.
//!
//! The local tier is keyed by [`KeyHash`]: the xxh3-128 of the rendered key,
//! seeded with the namespace (for a hashed long key, of its storage key). It
//! is computed by formatting the key into a stack buffer: a local hit formats
//! and hashes, and allocates nothing.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use xxhash_rust::xxh3::{Xxh3, xxh3_64, xxh3_128, xxh3_128_with_seed};

/// The identity of an entry in the local tier: the xxh3-128 of the rendered
/// key, seeded with the namespace (for a hashed long key, of its storage
/// key). Made by [`KeyFormat::hash`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub(crate) u128);

/// A type that can be a cache key: it writes its text form, which is what
/// the shared tier stores and what travels on the bus.
///
/// Implemented for integers, `char`, `bool` and string types without going
/// through `fmt` (a local hit renders the key on every lookup). For another
/// type whose `Display` is its key, use [`display_cache_key!`](crate::display_cache_key).
pub trait CacheKey {
    /// Writes the key's text form into `out`.
    fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result;

    /// The key's text form as a `String`.
    fn render(&self) -> String {
        let mut s = String::new();
        let _ = self.write_key(&mut s);
        s
    }
}

macro_rules! int_keys {
    ($($t:ty)*) => {$(
        impl CacheKey for $t {
            #[inline]
            fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
                out.write_str(itoa::Buffer::new().format(*self))
            }
        }
    )*};
}
int_keys!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize);

macro_rules! str_keys {
    ($($t:ty)*) => {$(
        impl CacheKey for $t {
            #[inline]
            fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
                out.write_str(self)
            }
        }
    )*};
}
str_keys!(str String Box<str> Arc<str> Cow<'_, str>);

impl CacheKey for char {
    fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        out.write_char(*self)
    }
}

impl CacheKey for bool {
    fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        out.write_str(if *self { "true" } else { "false" })
    }
}

impl<T: CacheKey + ?Sized> CacheKey for &T {
    #[inline]
    fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        (**self).write_key(out)
    }
}

/// Implements [`CacheKey`] for types whose `Display` output is their key.
///
/// ```
/// struct Sku(String);
/// impl std::fmt::Display for Sku {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "sku-{}", self.0) }
/// }
/// tiercache_core::display_cache_key!(Sku);
/// # use tiercache_core::CacheKey;
/// assert_eq!(Sku("42".into()).render(), "sku-42");
/// ```
#[macro_export]
macro_rules! display_cache_key {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::CacheKey for $t {
            fn write_key<W: ::std::fmt::Write + ?Sized>(&self, out: &mut W) -> ::std::fmt::Result {
                ::std::write!(out, "{}", self)
            }
        }
    )*};
}

/// Shows a [`CacheKey`] with `Display` (for logs and spans).
pub struct ShowKey<'a, K: ?Sized>(pub &'a K);

impl<K: CacheKey + ?Sized> fmt::Display for ShowKey<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_key(f)
    }
}

/// A hasher for [`KeyHash`]: the key is already a 128-bit hash, so hashing it
/// again (moka's default SipHash) is wasted work on every local hit. Folds the
/// two halves instead.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyHashBuilder;

/// The hasher [`KeyHashBuilder`] builds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyHashHasher(u64);

impl std::hash::Hasher for KeyHashHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Not used by KeyHash; a correct (if slower) fallback for anything else.
        self.0 = xxh3_64(bytes) ^ self.0.rotate_left(5);
    }
}

impl std::hash::BuildHasher for KeyHashBuilder {
    type Hasher = KeyHashHasher;
    #[inline]
    fn build_hasher(&self) -> KeyHashHasher {
        KeyHashHasher(0)
    }
}

/// The identity of a tag: the xxh3-64 of the tag's text.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TagHash(pub(crate) u64);

impl TagHash {
    /// The hash of `tag`.
    pub(crate) fn of(tag: &str) -> Self {
        TagHash(xxh3_64(tag.as_bytes()))
    }
}

/// Derives storage keys and key hashes for one namespace.
#[derive(Clone, Debug)]
pub struct KeyFormat {
    namespace: Arc<str>,
    max_key_len: usize,
    seed: u64,
}

/// Marks a hashed storage key (`ns:#<hex>`); a key starting with it is
/// stored with it doubled.
const ESCAPE: u8 = b'#';

/// Stack space used to format a key before hashing it; longer keys stream.
const STACK_KEY: usize = 64;

/// Formats into a stack buffer, spilling into a streaming hasher past it.
struct KeyWriter {
    buf: [u8; STACK_KEY],
    len: usize,
    total: usize,
    /// The key's first byte (0 while empty).
    first: u8,
    stream: Option<Box<Xxh3>>,
    seed: u64,
}

impl KeyWriter {
    fn new(seed: u64) -> Self {
        Self {
            buf: [0; STACK_KEY],
            len: 0,
            total: 0,
            first: 0,
            stream: None,
            seed,
        }
    }

    fn digest(&self) -> u128 {
        match &self.stream {
            Some(s) => s.digest128(),
            None => xxh3_128_with_seed(&self.buf[..self.len], self.seed),
        }
    }
}

impl fmt::Write for KeyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        if self.total == 0
            && let Some(&b) = bytes.first()
        {
            self.first = b;
        }
        self.total += bytes.len();
        if let Some(stream) = &mut self.stream {
            stream.update(bytes);
        } else if self.len + bytes.len() <= STACK_KEY {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut stream = Box::new(Xxh3::with_seed(self.seed));
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
        let namespace = namespace.into();
        Self {
            seed: xxh3_64(namespace.as_bytes()),
            namespace,
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

    #[inline]
    fn write<K: CacheKey + ?Sized>(&self, key: &K) -> KeyWriter {
        let mut w = KeyWriter::new(self.seed);
        // Writing into KeyWriter never fails; a key that reports an error
        // leaves a shorter key, which still hashes consistently.
        let _ = key.write_key(&mut w);
        w
    }

    fn fits(&self, rendered_len: usize) -> bool {
        self.namespace.len() + 1 + rendered_len <= self.max_key_len
    }

    /// The local-tier identity of `key`. Allocates nothing for keys that fit
    /// the stack buffer and are within the maximum length.
    #[inline]
    pub fn hash<K: CacheKey + ?Sized>(&self, key: &K) -> KeyHash {
        let w = self.write(key);
        if self.fits(w.total + usize::from(w.first == ESCAPE)) {
            KeyHash(w.digest())
        } else {
            KeyHash(xxh3_128(self.storage_key(key).as_bytes()))
        }
    }

    /// The storage key of `key`: `ns:key`, or `ns:#<hash>` when too long.
    pub fn storage_key<K: CacheKey + ?Sized>(&self, key: &K) -> String {
        let mut s = String::with_capacity(self.namespace.len() + 24);
        s.push_str(&self.namespace);
        s.push(':');
        let start = s.len();
        let _ = key.write_key(&mut s);
        if s.as_bytes().get(start) == Some(&ESCAPE) {
            s.insert(start, char::from(ESCAPE));
        }
        if s.len() <= self.max_key_len {
            s
        } else {
            format!("{}:#{:032x}", self.namespace, xxh3_128(s.as_bytes()))
        }
    }

    /// Both the [storage key](Self::storage_key) and the
    /// [hash](Self::hash) of `key`.
    pub fn storage_key_and_hash<K: CacheKey + ?Sized>(&self, key: &K) -> (String, KeyHash) {
        (self.storage_key(key), self.hash(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_prefixed() {
        let f = KeyFormat::new("products", 64);
        assert_eq!(f.storage_key(&42u64), "products:42");
        assert_eq!(
            f.hash("42"),
            f.hash(&42u64),
            "a key and its rendering hash alike"
        );
        assert_ne!(
            f.hash(&42u64),
            KeyFormat::new("other", 64).hash(&42u64),
            "namespaces differ"
        );
    }

    #[test]
    fn long_keys_are_hashed_and_bounded() {
        let f = KeyFormat::new("ns", 40);
        let long = "x".repeat(1000);
        let sk = f.storage_key(&long);
        assert!(sk.starts_with("ns:#"));
        assert_eq!(sk.len(), "ns:#".len() + 32);
        assert_eq!(f.hash(&long), f.hash(long.as_str()));
        // Different long keys stay distinct.
        let other = format!("{}y", "x".repeat(999));
        assert_ne!(f.storage_key(&other), sk);
    }

    /// Issue 11, case 6: a short key never renders to a long key's hashed
    /// storage key.
    #[test]
    fn no_short_key_renders_to_a_hashed_one() {
        let f = KeyFormat::new("ns", 250);
        let long = "L".repeat(300);
        let hashed = f.storage_key(&long);
        let forged = &hashed["ns:".len()..];
        assert!(forged.starts_with('#'));
        assert_ne!(f.storage_key(forged), hashed);
        assert_eq!(f.storage_key(forged), format!("ns:#{forged}"));
        assert_eq!(
            f.storage_key("#76218cfe33fa24c1f4a67c79e15962e3"),
            "ns:##76218cfe33fa24c1f4a67c79e15962e3"
        );
        assert_eq!(f.storage_key("##x"), "ns:###x");
        assert_ne!(f.storage_key("#x"), f.storage_key("##x"));
        assert_eq!(f.storage_key("a#b"), "ns:a#b");
        // The escape counts toward the length bound, in `hash` and in
        // `storage_key` alike: a key that just fits unescaped is hashed
        // once it needs the escape.
        let f = KeyFormat::new("ns", 48);
        let edge = format!("#{}", "k".repeat(44));
        assert_eq!("ns:".len() + edge.len(), 48);
        let sk = f.storage_key(&edge);
        assert!(sk.starts_with("ns:#") && !sk.starts_with("ns:##"), "{sk}");
        assert_eq!(f.hash(&edge), KeyHash(xxh3_128(sk.as_bytes())));
        let fits = "#".to_owned() + &"k".repeat(43);
        assert_eq!(f.storage_key(&fits), format!("ns:#{fits}"));
    }

    #[test]
    fn keys_longer_than_the_stack_buffer_hash_the_same_way() {
        let f = KeyFormat::new("ns", 10_000);
        let k = "k".repeat(STACK_KEY * 3 + 7);
        let (sk, h) = f.storage_key_and_hash(&k);
        assert_eq!(f.hash(&k), h);
        assert_eq!(sk.len(), 3 + k.len());
    }
}
