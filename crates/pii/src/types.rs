//! The closed set of things the engine can find.
//!
//! Types are an enum rather than free strings so that per-type settings are
//! plain arrays indexed by the type, and so that a typo in a config is a
//! reported problem instead of a silently ignored key. The names are the
//! upper-case strings used in configs, in `rules.json` and in mask tokens
//! (`[EMAIL]`).

use std::fmt;

/// A kind of personal data or secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiType {
    /// Email address.
    Email,
    /// Phone number, national or international.
    Phone,
    /// Payment card number (Luhn-valid).
    CreditCard,
    /// US social security number.
    UsSsn,
    /// International bank account number (mod-97 valid).
    Iban,
    /// IPv4 address.
    Ipv4,
    /// IPv6 address.
    Ipv6,
    /// JSON Web Token.
    Jwt,
    /// Bearer token in an Authorization header or log line.
    BearerToken,
    /// AWS access key id.
    AwsAccessKey,
    /// PEM private key block.
    PrivateKey,
    /// Password, API key or other secret.
    Secret,
    /// Person's name.
    Person,
    /// Street address line.
    StreetAddress,
}

impl PiiType {
    /// Every type, in a fixed order (the index of a type in this array is
    /// [`PiiType::index`]).
    pub const ALL: [PiiType; 14] = [
        PiiType::Email,
        PiiType::Phone,
        PiiType::CreditCard,
        PiiType::UsSsn,
        PiiType::Iban,
        PiiType::Ipv4,
        PiiType::Ipv6,
        PiiType::Jwt,
        PiiType::BearerToken,
        PiiType::AwsAccessKey,
        PiiType::PrivateKey,
        PiiType::Secret,
        PiiType::Person,
        PiiType::StreetAddress,
    ];

    /// Number of types.
    pub const COUNT: usize = 14;

    /// The upper-case name used in configs and mask tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiType::Email => "EMAIL",
            PiiType::Phone => "PHONE",
            PiiType::CreditCard => "CREDIT_CARD",
            PiiType::UsSsn => "US_SSN",
            PiiType::Iban => "IBAN",
            PiiType::Ipv4 => "IPV4",
            PiiType::Ipv6 => "IPV6",
            PiiType::Jwt => "JWT",
            PiiType::BearerToken => "BEARER_TOKEN",
            PiiType::AwsAccessKey => "AWS_ACCESS_KEY",
            PiiType::PrivateKey => "PRIVATE_KEY",
            PiiType::Secret => "SECRET",
            PiiType::Person => "PERSON",
            PiiType::StreetAddress => "STREET_ADDRESS",
        }
    }

    /// Parses an upper-case type name (case-insensitive).
    pub fn parse(name: &str) -> Option<PiiType> {
        PiiType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    /// Position of this type in [`PiiType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether this type is structured (found by pattern and validator) as
    /// opposed to names and addresses found by heuristics.
    pub fn is_structured(self) -> bool {
        !matches!(self, PiiType::Person | PiiType::StreetAddress)
    }
}

impl fmt::Display for PiiType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `s` is a token this engine writes (`[EMAIL]`,
/// `[EMAIL:0123456789abcdef]`), so redacting twice changes nothing.
pub(crate) fn is_token(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return false;
    };
    let (name, hash) = match inner.split_once(':') {
        Some((n, h)) => (n, Some(h)),
        None => (inner, None),
    };
    (PiiType::parse(name).is_some() || name == "REDACTED")
        && hash.is_none_or(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `s` contains a token this engine writes anywhere.
pub(crate) fn contains_token(s: &str) -> bool {
    let b = s.as_bytes();
    memchr::memchr_iter(b'[', b).any(|i| token_starts_at(b, i))
}

/// Whether `hay[..i]` ends with a token this engine writes.
pub(crate) fn token_ends_at(hay: &[u8], i: usize) -> bool {
    if i == 0 || hay[i - 1] != b']' {
        return false;
    }
    let from = i.saturating_sub(48);
    match hay[from..i].iter().rposition(|b| *b == b'[') {
        Some(p) => std::str::from_utf8(&hay[from + p..i]).is_ok_and(is_token),
        None => false,
    }
}

/// Whether `hay[i..]` starts with a token this engine writes.
pub(crate) fn token_starts_at(hay: &[u8], i: usize) -> bool {
    if hay.get(i) != Some(&b'[') {
        return false;
    }
    let to = (i + 48).min(hay.len());
    match hay[i..to].iter().position(|b| *b == b']') {
        Some(p) => std::str::from_utf8(&hay[i..=i + p]).is_ok_and(is_token),
        None => false,
    }
}

/// A word-at-a-time multiplicative hash (the FxHash step, eight bytes per
/// round, with a final fold so the low bits depend on every input bit):
/// the sets hold names and words from the rules file and the name lists,
/// SipHash's flooding resistance buys nothing for them, and hashing a byte
/// at a time (FNV) showed up in every lookup. Maps keyed by record data
/// use std's seeded hasher instead.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WordHash(u64);

const WORD_HASH_K: u64 = 0x517c_c1b7_2722_0a95;

impl WordHash {
    fn round(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(WORD_HASH_K);
    }
}

impl std::hash::Hasher for WordHash {
    fn finish(&self) -> u64 {
        let wide = u128::from(self.0) * u128::from(WORD_HASH_K);
        (wide as u64) ^ ((wide >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.round(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // Whole loads of the tail (copying it into a buffer first made
            // the next read wait for the copy); the length keeps tails
            // that load alike apart.
            let n = rest.len();
            let word = match (rest.first_chunk::<4>(), rest.last_chunk::<4>()) {
                (Some(lo), Some(hi)) => {
                    u64::from(u32::from_le_bytes(*lo)) | u64::from(u32::from_le_bytes(*hi)) << 32
                }
                _ => {
                    u64::from(rest[0]) | u64::from(rest[n / 2]) << 8 | u64::from(rest[n - 1]) << 16
                }
            };
            self.round(word ^ ((n as u64) << 59));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.round(u64::from(b) | 1 << 63);
    }
}

/// Hash map and set with [`WordHash`].
pub(crate) type FastMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<WordHash>>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<WordHash>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_matches_all() {
        for (i, t) in PiiType::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(PiiType::parse(t.as_str()), Some(t));
            assert_eq!(PiiType::parse(&t.as_str().to_lowercase()), Some(t));
        }
        assert_eq!(PiiType::parse("NOPE"), None);
        assert!(!PiiType::Person.is_structured());
        assert!(PiiType::Email.is_structured());
    }
}
