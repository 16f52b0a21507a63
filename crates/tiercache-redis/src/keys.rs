//! The key layout in Redis (see the crate docs).

/// The Redis keys of one storage key: value, version and lease, all in the
/// slot of the storage key's hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryKeys {
    pub(crate) value: String,
    pub(crate) version: String,
    pub(crate) lease: String,
}

/// `{<storage key>}`: the value's Redis key. A storage key that starts with `}`
/// would make an empty hash tag (Redis then hashes the whole key, splitting
/// value, version and lease across slots), so it is wrapped as `{~<key>}`,
/// whose tag is `~`.
pub(crate) fn value_key(storage_key: &str) -> String {
    let mut s = String::with_capacity(storage_key.len() + 3);
    s.push('{');
    if storage_key.is_empty() || storage_key.starts_with('}') {
        s.push('~');
    }
    s.push_str(storage_key);
    s.push('}');
    s
}

impl EntryKeys {
    pub(crate) fn of(storage_key: &str) -> Self {
        let value = value_key(storage_key);
        let version = format!("{value}:v");
        let lease = format!("{value}:l");
        Self {
            value,
            version,
            lease,
        }
    }
}

/// `{tc:<ns>}:clock`: the namespace's tag clock.
pub(crate) fn tag_clock_key(namespace: &str) -> String {
    format!("{{tc:{namespace}}}:clock")
}

/// `{tc:<ns>}:clear`: the namespace's clear epochs, `epoch:floor`, in the
/// clock's slot (a fill reads both with one `MGET`).
pub(crate) fn clear_key(namespace: &str) -> String {
    format!("{{tc:{namespace}}}:clear")
}

/// `{tc:<ns>}:t:<tag>`: a tag's version, in the clock's slot.
pub(crate) fn tag_key(namespace: &str, tag: &str) -> String {
    format!("{{tc:{namespace}}}:t:{tag}")
}

/// The hash tag Redis Cluster hashes for `key`.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_share_a_slot_whatever_the_key() {
        for sk in [
            "ns:1", "ns:{x}", "}ns", "ns:}", "{", "}", "", "a}b{c}", "ns:#00ff",
        ] {
            let k = EntryKeys::of(sk);
            let t = hash_tag(&k.value);
            assert!(!t.is_empty());
            assert_eq!(hash_tag(&k.version), t, "{sk}");
            assert_eq!(hash_tag(&k.lease), t, "{sk}");
            assert_ne!(k.value, k.version);
        }
        assert_eq!(EntryKeys::of("ns:1").value, "{ns:1}");
        assert_eq!(EntryKeys::of("ns:1").version, "{ns:1}:v");
        assert_eq!(EntryKeys::of("ns:1").lease, "{ns:1}:l");
    }

    #[test]
    fn tag_keys_share_the_clock_slot() {
        for ns in ["products", "a}b", "{x}", ""] {
            let c = tag_clock_key(ns);
            assert_eq!(hash_tag(&tag_key(ns, "t1")), hash_tag(&c));
            assert_eq!(hash_tag(&tag_key(ns, "}{")), hash_tag(&c));
        }
        assert_eq!(tag_clock_key("products"), "{tc:products}:clock");
        assert_eq!(tag_key("products", "cat:1"), "{tc:products}:t:cat:1");
    }
}
