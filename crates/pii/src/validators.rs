//! Named validators that confirm or reject a pattern match.
//!
//! Patterns are kept loose (and small, so the combined automaton stays
//! small); the checks that keep false positives down live here, as plain
//! functions the browser extension re-implements under the same names. A
//! validator sees the whole haystack so it can look at the characters around
//! the match, and may shrink the match (an IBAN followed by an unrelated
//! group of four characters).

use base64::Engine as _;

/// The validators the rules file may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validator {
    Luhn,
    Mod97,
    Ssn,
    Ipv4,
    Ipv6,
    Phone,
    BasicAuth,
}

impl Validator {
    pub(crate) fn parse(name: &str) -> Option<Validator> {
        Some(match name {
            "luhn" => Validator::Luhn,
            "mod97" => Validator::Mod97,
            "ssn" => Validator::Ssn,
            "ipv4" => Validator::Ipv4,
            "ipv6" => Validator::Ipv6,
            "phone" => Validator::Phone,
            "basic_auth" => Validator::BasicAuth,
            _ => return None,
        })
    }

    /// Checks `hay[start..end]`; returns the (possibly shrunk) end when the
    /// match is accepted.
    pub(crate) fn check(self, hay: &[u8], start: usize, end: usize) -> Option<usize> {
        let m = hay.get(start..end)?;
        let ok = match self {
            Validator::Luhn => card(m) && card_context(hay, start),
            Validator::Mod97 => return iban_end(m).map(|len| start + len),
            Validator::Ssn => ssn(m),
            Validator::Ipv4 => ipv4(m) && ipv4_context(hay, start, end),
            Validator::Ipv6 => ipv6(m) && ipv6_context(hay, start, end),
            Validator::Phone => phone(m) && phone_context(hay, start, end),
            Validator::BasicAuth => basic_auth(m),
        };
        ok.then_some(end)
    }
}

/// Luhn checksum over the digits of `s` (other bytes ignored).
pub(crate) fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for &b in s.iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(b - b'0');
        if n % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

/// A payment card number: 13-19 digits, at most one kind of separator,
/// issuer digit 2-6, Luhn-valid, and not a run of one repeated digit.
pub(crate) fn card(s: &[u8]) -> bool {
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    if !(13..=19).contains(&digits) {
        return false;
    }
    let mut sep = None;
    for &b in s {
        if !b.is_ascii_digit() {
            match sep {
                None => sep = Some(b),
                Some(x) if x == b => {}
                Some(_) => return false,
            }
        }
    }
    let first = s.first().copied().unwrap_or(b'0');
    let second = s
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .nth(1)
        .unwrap_or(b'0');
    // Issuer prefixes by length (ISO/IEC 7812 ranges of the major schemes):
    // 13 digits only Visa, 14 Diners, 15 Amex/Diners, 16+ Visa,
    // Mastercard (51-55, 2221-2720), Discover/UnionPay/Maestro (6), JCB (35).
    let issuer_ok = match digits {
        13 => first == b'4',
        14 | 15 => first == b'3',
        _ => match first {
            b'2' => (b'2'..=b'7').contains(&second),
            b'3' => second == b'5',
            b'4' | b'5' | b'6' => true,
            _ => false,
        },
    };
    if !issuer_ok {
        return false;
    }
    if s.iter().filter(|b| b.is_ascii_digit()).all(|b| *b == first) {
        return false;
    }
    luhn(s)
}

/// A card number is not one part of a longer run of digit groups (an
/// account number or reference written in groups of four).
fn card_context(hay: &[u8], start: usize) -> bool {
    // Inside an IBAN-like reference ("PL40 0408 6200 8470 6712 4866"):
    // walking back over groups of four reaches a country code and check
    // digits.
    let grouped_before = {
        let mut i = start;
        let mut inside = false;
        while i >= 5 && (hay[i - 1] == b' ' || hay[i - 1] == b'-') {
            let g = &hay[i - 5..i - 1];
            if !g.iter().all(u8::is_ascii_alphanumeric)
                || (i > 5 && hay[i - 6].is_ascii_alphanumeric())
            {
                break;
            }
            if g[..2].iter().all(u8::is_ascii_uppercase) && g[2..].iter().all(u8::is_ascii_digit) {
                inside = true;
                break;
            }
            i -= 5;
        }
        inside
    };
    !grouped_before
}

/// ISO 13616 mod-97 check of an IBAN written compact or in groups.
pub(crate) fn mod97(s: &[u8]) -> bool {
    let compact: Vec<u8> = s.iter().copied().filter(|b| *b != b' ').collect();
    if compact.len() < 15 || compact.len() > 34 {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    if !head[..2].iter().all(u8::is_ascii_uppercase) || !head[2..].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head.iter()) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Length of the longest prefix of `s` that is a valid IBAN, dropping
/// trailing space-separated groups one at a time.
fn iban_end(s: &[u8]) -> Option<usize> {
    let mut end = s.len();
    loop {
        if mod97(&s[..end]) {
            return Some(end);
        }
        let cut = s[..end].iter().rposition(|b| *b == b' ')?;
        if cut < 4 {
            return None;
        }
        end = cut;
    }
}

/// A US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000.
pub(crate) fn ssn(s: &[u8]) -> bool {
    let d: Vec<u32> = s
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    if d.len() != 9 {
        return false;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Dotted quad with every octet <= 255 and no leading zeros.
pub(crate) fn ipv4(s: &[u8]) -> bool {
    let mut parts = 0;
    for part in s.split(|b| *b == b'.') {
        parts += 1;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return false;
        }
        let v = part
            .iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b.wrapping_sub(b'0')));
        if v > 255 || !part.iter().all(u8::is_ascii_digit) {
            return false;
        }
    }
    parts == 4
}

/// An IPv4 address is not part of a longer dotted number (a version
/// "1.2.3.4.5"), a path segment ("Chrome/1.2.3.4") or an identifier.
fn ipv4_context(hay: &[u8], start: usize, end: usize) -> bool {
    if start > 0 {
        let p = hay[start - 1];
        if p == b'.' || p.is_ascii_alphanumeric() || p == b'_' {
            return false;
        }
        if p == b'/' && !(start >= 2 && hay[start - 2] == b'/') {
            return false;
        }
    }
    if let Some(&n) = hay.get(end) {
        if n == b'.' && hay.get(end + 1).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        if n.is_ascii_alphanumeric() || n == b'_' {
            return false;
        }
    }
    true
}

/// A parseable IPv6 address with at least three non-empty groups.
pub(crate) fn ipv6(s: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(s) else {
        return false;
    };
    if text.parse::<std::net::Ipv6Addr>().is_err() {
        return false;
    }
    let groups = text.split(':').filter(|g| !g.is_empty()).count();
    groups >= 3
}

fn ipv6_context(hay: &[u8], start: usize, end: usize) -> bool {
    if start > 0 {
        let p = hay[start - 1];
        if p == b':' || p == b'.' || p.is_ascii_alphanumeric() {
            return false;
        }
    }
    match hay.get(end) {
        Some(n) => !(n.is_ascii_alphanumeric() || *n == b':'),
        None => true,
    }
}

/// Digit count of a plausible phone number: 8-15, or a 10/11-digit North
/// American number; a number starting with 00 needs 9-17 digits with it.
pub(crate) fn phone(s: &[u8]) -> bool {
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    if s.starts_with(b"00") {
        // 00, a country code and a full national number.
        return (11..=17).contains(&digits);
    }
    (8..=15).contains(&digits)
}

/// A phone number is not glued to letters, digits or dots around it (which
/// would make it part of an id, a version or a decimal).
fn phone_context(hay: &[u8], start: usize, end: usize) -> bool {
    if start > 0 {
        let p = hay[start - 1];
        if p.is_ascii_alphanumeric() || p == b'.' || p == b'_' || p == b'/' {
            return false;
        }
        if p == b'-' && start >= 2 && hay[start - 2].is_ascii_alphanumeric() {
            return false;
        }
    }
    if let Some(&n) = hay.get(end) {
        if n.is_ascii_alphanumeric() || n == b'_' {
            return false;
        }
        if (n == b'.' || n == b'-') && hay.get(end + 1).is_some_and(u8::is_ascii_digit) {
            return false;
        }
    }
    true
}

/// HTTP Basic credentials: base64 that decodes to text with a colon.
pub(crate) fn basic_auth(s: &[u8]) -> bool {
    let token = s.rsplit(|b| *b == b' ').next().unwrap_or(s);
    match base64::engine::general_purpose::STANDARD.decode(token) {
        Ok(bytes) => bytes.contains(&b':'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_card() {
        assert!(luhn(b"4111111111111111"));
        assert!(card(b"4111 1111 1111 1111"));
        assert!(card(b"4539-1488-0343-6467"));
        assert!(card(b"5555555555554444"));
        assert!(card(b"378282246310005"));
        assert!(!card(b"4539-1488-0343-6468"), "checksum off by one");
        assert!(!card(b"4539 1488-0343-6467"), "mixed separators");
        assert!(!card(b"1234567812345670"), "issuer digit 1");
        assert!(!card(b"453914880343"), "too short");
        assert!(!card(b"6625531447835"), "13 digits that are not Visa");
        assert!(
            Validator::Luhn
                .check(b"PL40 0408 6200 8470 6712 4866 3753", 10, 29)
                .is_none()
        );
    }

    #[test]
    fn mod97_and_shrinking() {
        assert!(mod97(b"DE89370400440532013000"));
        assert!(mod97(b"DE89 3704 0044 0532 0130 00"));
        assert!(mod97(b"GB82 WEST 1234 5698 7654 32"));
        assert!(!mod97(b"DE89 3704 0044 0532 0130 01"));
        assert!(!mod97(b"de89370400440532013000"));
        let s = b"DE89 3704 0044 0532 0130 00 ABCD";
        assert_eq!(iban_end(s), Some(27));
        assert_eq!(iban_end(b"DE00 0000 0000 0000 0000 00"), None);
    }

    #[test]
    fn ssn_ranges() {
        assert!(ssn(b"123-45-6789"));
        assert!(ssn(b"123 45 6789"));
        assert!(ssn(b"023485892"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!ssn(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ipv4_octets_and_context() {
        assert!(ipv4(b"192.168.1.1"));
        assert!(!ipv4(b"256.1.1.1"));
        assert!(!ipv4(b"01.2.3.4"));
        let v = Validator::Ipv4;
        let h = b"from 10.1.2.3 ok";
        assert_eq!(v.check(h, 5, 13), Some(13));
        let h = b"Chrome/126.0.6.21 x";
        assert_eq!(v.check(h, 7, 17), None, "path segment");
        let h = b"v 1.2.3.4.5";
        assert_eq!(v.check(h, 2, 9), None, "longer dotted number");
        let h = b"http://1.2.3.4/";
        assert_eq!(v.check(h, 7, 14), Some(14), "URL host");
    }

    #[test]
    fn ipv6_forms() {
        assert!(ipv6(b"2001:db8::1"));
        assert!(ipv6(b"25a5:1691:0000:0000:5844:a1a3:d703:3c76"));
        assert!(!ipv6(b"20:05:03"), "a time of day");
        assert!(!ipv6(b"dead::beef"), "two groups only");
        assert!(!ipv6(b"00:1a:2b:3c:4d:5e"), "a MAC address");
    }

    #[test]
    fn phone_digits_and_context() {
        assert!(phone(b"+1 415 555 2671"));
        assert!(phone(b"0081 3-1237-2991"));
        assert!(!phone(b"009-999-0444"), "an id with a 00 prefix");
        assert!(!phone(b"+1 23"));
        assert!(!phone(b"+1234567890123456"));
        let h = b"id A-415-555-2671";
        assert_eq!(Validator::Phone.check(h, 5, 17), None);
    }

    #[test]
    fn basic_auth_needs_a_colon() {
        assert!(basic_auth(b"dXNlcjpwYXNz"));
        assert!(
            !basic_auth(b"bWVtYmVyc2hpcA=="),
            "'membership' has no colon"
        );
        assert!(!basic_auth(b"membership"));
    }
}
