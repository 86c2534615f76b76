//! Person names in free text, from capitalisation, cue words and name lists.
//!
//! A pattern cannot tell "Diana Carter" from "Standing Desk", and a
//! statistical model would be too slow for every string of every record, so
//! this is a small rule system: find runs of two to four capitalised words,
//! then accept a run when a strong cue precedes it ("customer", "spoke
//! with", "Thanks,"), or when a weak cue ("for", "by") precedes it and the
//! name lists know one of its words, or when the first word is a known given
//! name and the last a known surname. The lists are the US Census 1990
//! frequency files (public domain, see `data/README.md`), folded to ASCII so
//! "Ibán" finds "Iban"; cue and stop words come from the rules file.

use std::sync::OnceLock;

use crate::rules::PersonSpec;
use crate::scan::Span;
use crate::types::{FastSet, PiiType};

const FIRST_NAMES: &str = include_str!("../data/first_names.txt");
const LAST_NAMES: &str = include_str!("../data/last_names.txt");

/// The census name lists, lower-cased ASCII, loaded once per process.
pub(crate) struct NameLists {
    first: FastSet<&'static str>,
    last: FastSet<&'static str>,
}

impl NameLists {
    pub(crate) fn get() -> &'static NameLists {
        static LISTS: OnceLock<NameLists> = OnceLock::new();
        LISTS.get_or_init(|| {
            // The files are stored capitalised; lower-case once into leaked
            // strings so lookups borrow nothing per call.
            let lower = |text: &'static str| -> FastSet<&'static str> {
                let joined: &'static str = Box::leak(text.to_ascii_lowercase().into_boxed_str());
                let mut set = FastSet::with_capacity_and_hasher(
                    memchr::memchr_iter(b'\n', joined.as_bytes()).count() + 1,
                    Default::default(),
                );
                set.extend(joined.lines().map(str::trim).filter(|l| !l.is_empty()));
                set
            };
            NameLists {
                first: lower(FIRST_NAMES),
                last: lower(LAST_NAMES),
            }
        })
    }

    pub(crate) fn is_first(&self, folded: &str) -> bool {
        self.first.contains(folded)
    }

    pub(crate) fn is_last(&self, folded: &str) -> bool {
        self.last.contains(folded)
    }
}

/// Compiled person heuristics.
pub(crate) struct PersonFinder {
    /// Strong cues (lower-case), by their last byte.
    strong_cues: Vec<Vec<String>>,
    weak_cues: FastSet<String>,
    particles: FastSet<String>,
    stopwords: FastSet<String>,
    max_tokens: usize,
    lists: &'static NameLists,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    /// Capitalised word that could be part of a name.
    cap: bool,
}

/// Lower-cases and folds Latin-1/Latin Extended-A letters to ASCII.
pub(crate) fn fold(word: &str, out: &mut String) {
    out.clear();
    for c in word.chars() {
        let c = c.to_lowercase().next().unwrap_or(c);
        let mapped = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ą' => 'a',
            'ç' | 'ć' | 'č' => 'c',
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' | 'ě' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'ī' => 'i',
            'ñ' | 'ń' | 'ň' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => 'u',
            'ý' | 'ÿ' => 'y',
            'ś' | 'š' | 'ş' => 's',
            'ź' | 'ż' | 'ž' => 'z',
            'ł' => 'l',
            'ř' => 'r',
            'ď' => 'd',
            'ť' => 't',
            'ß' => {
                out.push_str("ss");
                continue;
            }
            c if is_joiner(c) => continue,
            other => other,
        };
        out.push(mapped);
    }
}

/// A character that joins the parts of a name ("O'Brien", "Anne-Marie",
/// "D’Angelo").
fn is_joiner(c: char) -> bool {
    matches!(c, '\'' | '’' | '-')
}

/// Whether `word` is shaped like a name: an upper-case letter, then letters
/// with at least one lower-case, inner capitals only after Mc/Mac/O'/D' or a
/// hyphen.
fn name_shaped(word: &str) -> bool {
    let mut chars = word.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if !first.is_uppercase() {
        return false;
    }
    let mut prev = first;
    let mut len = 1;
    let mut has_lower = false;
    let mut allowed_cap_at = usize::MAX;
    if word.starts_with("Mc") {
        allowed_cap_at = 2;
    } else if word.starts_with("Mac") {
        allowed_cap_at = 3;
    }
    for c in chars {
        if c.is_lowercase() {
            has_lower = true;
        } else if c.is_uppercase() {
            let ok = len == allowed_cap_at || is_joiner(prev);
            if !ok {
                return false;
            }
        } else if !is_joiner(c) {
            return false;
        }
        prev = c;
        len += 1;
    }
    has_lower && len >= 2 && prev.is_alphabetic()
}

impl PersonFinder {
    pub(crate) fn new(spec: &PersonSpec) -> PersonFinder {
        let lower =
            |v: &[String]| -> FastSet<String> { v.iter().map(|s| s.to_lowercase()).collect() };
        let mut strong: Vec<Vec<String>> = vec![Vec::new(); 256];
        for cue in spec.strong_cues.iter().map(|s| s.to_lowercase()) {
            if let Some(&last) = cue.as_bytes().last() {
                strong[usize::from(last)].push(cue);
            }
        }
        PersonFinder {
            strong_cues: strong,
            weak_cues: lower(&spec.weak_cues),
            particles: lower(&spec.particles),
            stopwords: lower(&spec.stopwords),
            max_tokens: spec.max_tokens.max(2),
            lists: NameLists::get(),
        }
    }

    /// Appends PERSON spans of `text` that do not overlap `taken` (sorted,
    /// non-overlapping spans found earlier).
    pub(crate) fn find(
        &self,
        text: &str,
        taken: &[Span],
        scratch: &mut PersonScratch,
        out: &mut Vec<Span>,
    ) {
        let bytes = text.as_bytes();
        // A name needs two words: a space, and an upper-case letter after it.
        if memchr::memchr(b' ', bytes).is_none() {
            return;
        }
        let PersonScratch {
            bufs,
            tokens,
            run,
            cut,
        } = scratch;
        tokenize(text, tokens);
        // Text already inside a finding cannot be part of a name. The words
        // are cut where findings start and end, and judged as they will be
        // once the findings are tokens (so a second pass finds nothing
        // new): "Eleni-S-Ring 2" with "Ring 2" a street is the word
        // "Eleni-S", which "[STREET_ADDRESS]" will leave standing.
        if !taken.is_empty() {
            cut_at(text, tokens, taken, cut);
            std::mem::swap(tokens, cut);
        }
        if tokens.len() < 2 {
            return;
        }
        let mut i = 0;
        while i < tokens.len() {
            if !tokens[i].cap {
                i += 1;
                continue;
            }
            // Grow a run of capitalised words joined by single spaces,
            // allowing lower-case particles (van, de, ...) inside.
            run.clear();
            run.push(i);
            let mut j = i;
            while j + 1 < tokens.len() {
                let gap = &text[tokens[j].end..tokens[j + 1].start];
                if gap != " " {
                    break;
                }
                let next = tokens[j + 1];
                if next.cap {
                    run.push(j + 1);
                    j += 1;
                } else if self
                    .particles
                    .contains(lower_into(&text[next.start..next.end], &mut bufs.lower))
                    && j + 2 < tokens.len()
                    && tokens[j + 2].cap
                    && &text[next.end..tokens[j + 2].start] == " "
                {
                    j += 1;
                } else {
                    break;
                }
            }
            let run_end = j + 1;
            self.judge(text, tokens, run, taken, bufs, out);
            i = run_end;
        }
    }

    fn judge(
        &self,
        text: &str,
        tokens: &[Token],
        run: &[usize],
        taken: &[Span],
        bufs: &mut Bufs,
        out: &mut Vec<Span>,
    ) {
        let Bufs { folded, lower } = bufs;
        // Strip leading and trailing stop words; a stripped leading word may
        // itself be the cue ("Customer Alessio Segni").
        let word = |k: usize| &text[tokens[k].start..tokens[k].end];
        let mut a = 0;
        let mut b = run.len();
        while a < b && self.stopwords.contains(lower_into(word(run[a]), lower)) {
            a += 1;
        }
        while b > a && self.stopwords.contains(lower_into(word(run[b - 1]), lower)) {
            b -= 1;
        }
        let names = &run[a..b];
        if names.len() < 2 || names.len() > self.max_tokens {
            return;
        }
        let start = tokens[names[0]].start;
        let end = tokens[names[names.len() - 1]].end;
        if taken.iter().any(|s| s.start < end && start < s.end) {
            return;
        }
        let before = &text[..start];
        let mut cue = self.cue_before(before, lower);
        // "Jane Roe, jane@x.io", "Jane Roe (jane@x.io)", "Jane Roe <...>":
        // a contact detail right after the words vouches for them.
        let rest = &text[end..];
        let skipped = rest.len() - rest.trim_start_matches([' ', ',', '(', '<', ':']).len();
        if skipped <= 3
            && taken.iter().any(|s| {
                s.start == end + skipped && matches!(s.kind, PiiType::Email | PiiType::Phone)
            })
        {
            cue = Cue::Strong;
        }
        let first_known = {
            fold(word(names[0]), folded);
            self.lists.is_first(folded)
        };
        let last_known = {
            fold(word(names[names.len() - 1]), folded);
            self.lists.is_last(folded)
        };
        let accept = match cue {
            Cue::Strong => true,
            Cue::Weak => first_known || last_known,
            Cue::None => first_known && last_known,
        };
        if accept {
            out.push(Span {
                start,
                end,
                kind: PiiType::Person,
            });
        }
    }

    fn cue_before(&self, before: &str, lower: &mut String) -> Cue {
        let mut tail_start = before.len().saturating_sub(40);
        while !before.is_char_boundary(tail_start) {
            tail_start += 1;
        }
        let tail: &str = lower_into(before[tail_start..].trim_end(), lower);
        if tail.is_empty() {
            return Cue::None;
        }
        let last = usize::from(*tail.as_bytes().last().unwrap_or(&0));
        for cue in &self.strong_cues[last] {
            if let Some(prefix) = tail.strip_suffix(cue.as_str()) {
                let boundary = prefix
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_alphanumeric());
                if boundary {
                    return Cue::Strong;
                }
            }
        }
        let last_word = tail
            .rsplit(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("");
        let ends_with_word = tail.ends_with(last_word) && !last_word.is_empty();
        if ends_with_word && self.weak_cues.contains(last_word) {
            return Cue::Weak;
        }
        Cue::None
    }
}

/// Reused scratch strings of one `find` call.
#[derive(Default)]
struct Bufs {
    folded: String,
    lower: String,
}

/// Scratch space of [`PersonFinder::find`], kept between calls so a call
/// allocates nothing once it has warmed up.
#[derive(Default)]
pub(crate) struct PersonScratch {
    bufs: Bufs,
    tokens: Vec<Token>,
    run: Vec<usize>,
    cut: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cue {
    None,
    Weak,
    Strong,
}

/// Lower-cases `s` into `buf` (reused, so no allocation per word).
fn lower_into<'a>(s: &str, buf: &'a mut String) -> &'a str {
    buf.clear();
    if s.is_ascii() {
        buf.push_str(s);
        buf.make_ascii_lowercase();
    } else {
        buf.extend(s.chars().flat_map(char::to_lowercase));
    }
    buf.as_str()
}

/// The character starting at byte `i` of `text` (a char boundary).
fn char_at(text: &str, i: usize) -> Option<char> {
    let b = *text.as_bytes().get(i)?;
    if b < 0x80 {
        Some(char::from(b))
    } else {
        text.get(i..)?.chars().next()
    }
}

fn is_alpha_at(text: &str, i: usize) -> bool {
    match text.as_bytes().get(i) {
        None => false,
        Some(b) if *b < 0x80 => b.is_ascii_alphabetic(),
        Some(_) => char_at(text, i).is_some_and(char::is_alphabetic),
    }
}

/// Splits text into words (letters with inner apostrophes and hyphens),
/// into `out` (cleared first). ASCII is read byte by byte; only non-ASCII
/// characters are decoded.
fn tokenize(text: &str, out: &mut Vec<Token>) {
    out.clear();
    let bytes = text.as_bytes();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (alpha, joiner_char, len) = if b < 0x80 {
            (b.is_ascii_alphabetic(), is_joiner(char::from(b)), 1)
        } else {
            match char_at(text, i) {
                Some(c) => (c.is_alphabetic(), is_joiner(c), c.len_utf8()),
                None => (false, false, 1),
            }
        };
        let joiner = joiner_char && start.is_some() && is_alpha_at(text, i + len);
        if alpha || joiner {
            if start.is_none() {
                start = Some(i);
            }
        } else if let Some(s) = start.take() {
            out.push(make_token(text, s, i, false, false));
        }
        i += len;
    }
    if let Some(s) = start {
        out.push(make_token(text, s, text.len(), false, false));
    }
}

/// The words of `tokens` as they will be once the `taken` spans (sorted,
/// not overlapping) are a finding's tokens, into `out` (cleared first): a
/// word is cut where a span starts and ends, a part loses the joiners at a
/// cut, and a finding next to a word glues to nothing.
fn cut_at(text: &str, tokens: &[Token], taken: &[Span], out: &mut Vec<Token>) {
    out.clear();
    for t in tokens {
        let touches = |s: &&Span| s.start <= t.end && t.start <= s.end;
        if !taken.iter().any(|s| touches(&s)) {
            out.push(*t);
            continue;
        }
        let mut from = t.start;
        let mut cut_before = taken.iter().any(|s| s.end == t.start);
        for s in taken.iter().filter(touches) {
            if s.start >= from && s.start <= t.end {
                out.extend(piece(text, from, s.start, cut_before, true));
            }
            if s.end > from {
                from = s.end;
                cut_before = true;
            }
        }
        if from < t.end {
            out.extend(piece(text, from, t.end, cut_before, false));
        }
    }
}

/// The word `text[start..end]`, without the joiners at a cut end, with
/// nothing glued where it was cut.
fn piece(text: &str, start: usize, end: usize, cut_before: bool, cut_after: bool) -> Option<Token> {
    let raw = text.get(start..end)?;
    let lead = if cut_before {
        raw.len() - raw.trim_start_matches(is_joiner).len()
    } else {
        0
    };
    let word = &raw[lead..];
    let word = if cut_after {
        word.trim_end_matches(is_joiner)
    } else {
        word
    };
    if word.is_empty() {
        return None;
    }
    let (a, b) = (start + lead, start + lead + word.len());
    Some(make_token(
        text,
        a,
        b,
        cut_before && a == start,
        cut_after && b == end,
    ))
}

fn glued_before(bytes: &[u8], start: usize) -> bool {
    start > 0
        && (bytes[start - 1].is_ascii_digit()
            || matches!(bytes[start - 1], b'@' | b'/' | b'_' | b'.' | b'\\'))
}

fn glued_after(bytes: &[u8], end: usize) -> bool {
    bytes
        .get(end)
        .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'@' | b'/' | b'_' | b'\\'))
}

/// The word `text[start..end]` as a token. `free_before` / `free_after`:
/// that side will be a finding's token, which glues to nothing.
fn make_token(text: &str, start: usize, end: usize, free_before: bool, free_after: bool) -> Token {
    let bytes = text.as_bytes();
    let word = &text[start..end];
    // Only a word starting with an upper-case letter can be part of a name.
    let upper = match bytes[start] {
        b if b < 0x80 => b.is_ascii_uppercase(),
        _ => word.chars().next().is_some_and(char::is_uppercase),
    };
    if !upper {
        return Token {
            start,
            end,
            cap: false,
        };
    }
    // A word glued to digits or '@', '.', '/', '_' on either side is part of
    // an identifier, a path or an address, not a name. (Bytes of non-ASCII
    // characters are never among these.)
    Token {
        start,
        end,
        cap: (free_before || !glued_before(bytes, start))
            && (free_after || !glued_after(bytes, end))
            && name_shaped(word),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn finder() -> PersonFinder {
        let rules = crate::rules::parse(crate::RULES_JSON).unwrap();
        PersonFinder::new(&rules.person)
    }

    fn people(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        finder().find(text, &[], &mut PersonScratch::default(), &mut out);
        out.iter()
            .map(|s| text[s.start..s.end].to_string())
            .collect()
    }

    #[test]
    fn census_lists_load() {
        let l = NameLists::get();
        assert!(l.is_first("mary") && l.is_first("james"));
        assert!(l.is_last("smith") && l.is_last("johnson"));
        assert!(!l.is_first("headphones"));
    }

    #[test]
    fn shapes() {
        for ok in ["Smith", "McDonald", "O'Connor", "Jean-Luc", "Ibán", "Åsa"] {
            assert!(name_shaped(ok), "{ok}");
        }
        for bad in ["smith", "HTTPError", "ValueError", "SMITH", "A", "Abc1"] {
            assert!(!name_shaped(bad), "{bad}");
        }
        let mut s = String::new();
        fold("Ibán-Müller", &mut s);
        assert_eq!(s, "ibanmuller");
    }

    #[test]
    fn finds_names_by_cue_or_lists() {
        assert_eq!(
            people("Customer Alessio Segni (a@b.io) reports"),
            ["Alessio Segni"]
        );
        assert_eq!(
            people("Agent note: spoke with Diana Carter, verified"),
            ["Diana Carter"]
        );
        assert_eq!(
            people("Hi, this is Kieran O'Connor. I was charged"),
            ["Kieran O'Connor"]
        );
        assert_eq!(people("Jerry Miller order status"), ["Jerry Miller"]);
        assert_eq!(
            people("records for Christopher Williams"),
            ["Christopher Williams"]
        );
        assert_eq!(people("Thanks, Rotraut Ehlert"), ["Rotraut Ehlert"]);
    }

    #[test]
    fn leaves_capitalised_non_names_alone() {
        for text in [
            "the Noise Cancelling Headphones arrived damaged",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_6_3) AppleWebKit/533.0",
            "Your Account",
            "Standing Desk",
            "HTTPError: Bad Gateway",
            "New York",
        ] {
            assert_eq!(people(text), Vec::<String>::new(), "{text}");
        }
    }
}
