//! Subjects: how a namespace becomes a NATS subject, and the checks on the
//! configured prefix and stream name.
//!
//! See [`namespace_token`] for the mapping.

use tiercache_core::ConfigError;

/// The subject prefix used when none is configured.
pub const DEFAULT_SUBJECT_PREFIX: &str = "tiercache.inv";

/// The subject token of `namespace`.
///
/// A namespace is published on `<prefix>.<token>`, where `<token>` is the
/// namespace with every byte outside `[A-Za-z0-9_-]` written as `%XX`
/// (uppercase hex of the UTF-8 byte, `%` itself included), and the empty
/// namespace written as a lone `%`. So:
///
/// | namespace        | subject (default prefix)           |
/// |------------------|------------------------------------|
/// | `products`       | `tiercache.inv.products`           |
/// | `user.profile`   | `tiercache.inv.user%2Eprofile`     |
/// | `a b*>`          | `tiercache.inv.a%20b%2A%3E`        |
/// | `50%`            | `tiercache.inv.50%25`              |
/// | (empty)          | `tiercache.inv.%`                  |
///
/// The mapping is injective (two namespaces never share a subject) and its
/// output is always exactly one valid subject token: no `.`, `*`, `>`,
/// whitespace or control character can reach the subject.
///
/// ```
/// assert_eq!(tiercache_nats::namespace_token("products"), "products");
/// assert_eq!(tiercache_nats::namespace_token("a.b"), "a%2Eb");
/// assert_eq!(tiercache_nats::namespace_token(""), "%");
/// ```
pub fn namespace_token(namespace: &str) -> String {
    if namespace.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(namespace.len());
    for &b in namespace.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// The subject a namespace is published on, under `prefix`.
pub(crate) fn namespace_subject(prefix: &str, namespace: &str) -> String {
    format!("{prefix}.{}", namespace_token(namespace))
}

fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>' && c != '.')
}

/// Checks a subject prefix: one or more literal tokens separated by dots.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError::new("subject_prefix", "must not be empty"));
    }
    if !prefix.split('.').all(valid_token) {
        return Err(ConfigError::new(
            "subject_prefix",
            format!(
                "{prefix:?} is not a literal NATS subject: tokens must be non-empty and free \
                 of whitespace, `*` and `>`"
            ),
        ));
    }
    Ok(())
}

/// Checks a JetStream stream name.
pub(crate) fn check_stream_name(name: &str) -> Result<(), ConfigError> {
    let bad =
        |c: char| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if name.is_empty() || name.chars().any(bad) {
        return Err(ConfigError::new(
            "jetstream",
            format!(
                "{name:?} is not a valid stream name: it must be non-empty and free of \
                 whitespace, `.`, `*`, `>`, `/` and `\\`"
            ),
        ));
    }
    Ok(())
}

/// Whether the stream subject `pattern` matches every subject that
/// `wildcard` (a subject that may end in `>`) matches.
pub(crate) fn covers(pattern: &str, wildcard: &str) -> bool {
    let mut p = pattern.split('.');
    let mut w = wildcard.split('.');
    loop {
        match (p.next(), w.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => continue,
            (Some(a), Some(b)) if a == b && b != ">" && b != "*" => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_valid_tokens_and_injective() {
        let samples = [
            "",
            "%",
            "products",
            "user.profile",
            "a b",
            "*",
            ">",
            "a.*.>",
            "50%",
            "50%25",
            "\t\n",
            "ünïcode",
            "-_",
            "%2E",
            ".",
        ];
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            let t = namespace_token(s);
            assert!(valid_token(&t), "{s:?} -> {t:?} is a valid token");
            assert!(seen.insert(t.clone()), "{s:?} -> {t:?} is unique");
        }
        assert_eq!(namespace_token("user.profile"), "user%2Eprofile");
        assert_eq!(namespace_token("a b*>"), "a%20b%2A%3E");
        assert_eq!(namespace_token("50%"), "50%25");
        assert_eq!(namespace_subject("tiercache.inv", "x"), "tiercache.inv.x");
    }

    #[test]
    fn prefix_and_stream_checks_name_the_field() {
        assert!(check_prefix("tiercache.inv").is_ok());
        for bad in ["", ".a", "a.", "a..b", "a.*", "a.>", "a b"] {
            assert_eq!(
                check_prefix(bad).unwrap_err().field,
                "subject_prefix",
                "{bad:?}"
            );
        }
        assert!(check_stream_name("TIERCACHE").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            assert_eq!(
                check_stream_name(bad).unwrap_err().field,
                "jetstream",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cover_rules() {
        assert!(covers("tiercache.inv.>", "tiercache.inv.>"));
        assert!(covers("tiercache.>", "tiercache.inv.>"));
        assert!(covers(">", "tiercache.inv.>"));
        assert!(!covers("tiercache.inv.*", "tiercache.inv.>"));
        assert!(!covers("other.>", "tiercache.inv.>"));
        assert!(!covers("tiercache.inv.x.>", "tiercache.inv.>"));
        assert!(covers("tiercache.*.>", "tiercache.inv.>"));
    }
}
