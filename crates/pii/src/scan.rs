//! The structured detectors: every pattern of the rules file compiled into
//! one multi-pattern automaton.
//!
//! Scanning each string once with a lazy DFA over all patterns costs about
//! the same as scanning it with one, which is what makes the engine cheap
//! enough to run on every string of every record. The automaton reports the
//! leftmost match and which pattern produced it; only then are the slower
//! parts run: the capture group (for detectors that redact part of their
//! match), context patterns and the named validator. When a candidate is
//! rejected the other patterns are tried anchored at the same position, and
//! the search resumes one character further, so a rejected look-alike never
//! hides a real match that starts inside it. After an accepted candidate it
//! resumes where the redacted part ends, which is before the match's end
//! when a validator keeps only a prefix or a group is redacted.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex_automata::hybrid;
use regex_automata::meta::Regex;
use regex_automata::nfa::thompson::backtrack::{self, BoundedBacktracker};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, Match, MatchError, PatternID};

use crate::rules::{self, DetectorSpec, GroupSpec, RulesError};
use crate::split::{Split, SplitCache};
use crate::types::{PiiType, token_ends_at, token_starts_at};
use crate::validators::Validator;

/// A detected span, in byte offsets of the scanned haystack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: PiiType,
}

/// A candidate before merging: the redacted span plus where the whole
/// match started and which detector found it (its order in the file).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    span: Span,
    match_start: usize,
    order: usize,
}

/// A regex that is only needed when an automaton gives up or a capture
/// group cannot be read off cheaply: compiled on first use. (Compiling
/// every one up front was about half of building a scanner.)
struct OnDemand {
    patterns: Vec<String>,
    regex: OnceLock<Option<Regex>>,
}

impl OnDemand {
    fn new(patterns: Vec<String>) -> OnDemand {
        OnDemand {
            patterns,
            regex: OnceLock::new(),
        }
    }

    /// The regex; `None` only if the patterns (which the lazy DFAs
    /// already accepted) do not compile.
    fn get(&self) -> Option<&Regex> {
        self.regex
            .get_or_init(|| {
                Regex::builder()
                    .syntax(syntax::Config::new().utf8(false))
                    .build_many(&self.patterns)
                    .ok()
            })
            .as_ref()
    }
}

/// A context pattern: a forward lazy DFA (only whether the window matches
/// is asked, never where; its cache lives in [`ScanCache`]) and the same
/// pattern as a fallback.
struct Context {
    dfa: hybrid::dfa::DFA,
    fallback: OnDemand,
}

impl Context {
    fn is_match(&self, cache: &mut hybrid::dfa::Cache, window: &[u8]) -> bool {
        match self
            .dfa
            .try_search_fwd(cache, &Input::new(window).earliest(true))
        {
            Ok(m) => m.is_some(),
            Err(_) => self.fallback.get().is_some_and(|r| r.is_match(window)),
        }
    }
}

struct Detector {
    kind: PiiType,
    group: usize,
    validator: Option<Validator>,
    /// Indexes into `Scanner::contexts`.
    require_before: Option<usize>,
    deny_before: Option<usize>,
    boundary: bool,
    /// The pattern alone, for capture groups (fallback of `capture`).
    single: OnDemand,
    /// For detectors that redact a group: a backtracker over the pattern
    /// alone, run only on the match span (its cache is in [`ScanCache`],
    /// at this detector's index).
    capture: Option<BoundedBacktracker>,
    /// The group's bounds from small automata, tried before `capture`.
    split: Option<Split>,
}

/// What a string must contain for a group to be worth running.
#[derive(Debug, Clone, Copy, Default)]
struct Needs {
    /// Any of these feature bits.
    any: u64,
    /// All of these feature bits.
    all: u64,
}

/// Which of a set of literals occur in a haystack, ASCII
/// case-insensitively: an Aho-Corasick automaton over the lowercased
/// literals as a dense DFA, walked in the same loop as the byte classes.
/// (The `aho-corasick` crate's overlapping search cost about four times
/// as much per byte.)
struct Literals {
    /// Byte (either case) to its column in `trans`.
    classes: [u8; 256],
    stride: usize,
    /// Per state and class: the next state, premultiplied by `stride`.
    /// States where a literal ends are numbered last, from `first_out`.
    trans: Vec<u32>,
    first_out: u32,
    /// Per state: the feature bits of the literals ending there.
    out: Vec<u64>,
    /// Length of the longest literal.
    longest: usize,
}

impl Literals {
    fn new(literals: &[(String, u64)]) -> Literals {
        let mut classes = [0u8; 256];
        let mut stride = 1usize;
        for (lit, _) in literals {
            for b in lit.bytes().map(|b| b.to_ascii_lowercase()) {
                if classes[usize::from(b)] == 0 {
                    // At most 48 literals of a few bytes each: far below 255.
                    classes[usize::from(b)] = u8::try_from(stride).unwrap_or(u8::MAX);
                    stride += 1;
                }
            }
        }
        for b in b'A'..=b'Z' {
            classes[usize::from(b)] = classes[usize::from(b.to_ascii_lowercase())];
        }
        // The trie; u32::MAX is "no edge".
        let mut goto: Vec<Vec<u32>> = vec![vec![u32::MAX; stride]];
        let mut out: Vec<u64> = vec![0];
        for (lit, bit) in literals {
            let mut s = 0usize;
            for b in lit.bytes() {
                let c = usize::from(classes[usize::from(b)]);
                s = match goto[s][c] {
                    u32::MAX => {
                        goto.push(vec![u32::MAX; stride]);
                        out.push(0);
                        let new = goto.len() - 1;
                        goto[s][c] = u32::try_from(new).unwrap_or(u32::MAX);
                        new
                    }
                    next => next as usize,
                };
            }
            out[s] |= bit;
        }
        // Failure links in breadth-first order give the DFA transitions.
        let n = goto.len();
        let mut delta = vec![0u32; n * stride];
        let mut fail = vec![0usize; n];
        let mut queue = std::collections::VecDeque::new();
        for c in 0..stride {
            match goto[0][c] {
                u32::MAX => delta[c] = 0,
                child => {
                    delta[c] = child;
                    queue.push_back(child as usize);
                }
            }
        }
        while let Some(s) = queue.pop_front() {
            out[s] |= out[fail[s]];
            for c in 0..stride {
                match goto[s][c] {
                    u32::MAX => delta[s * stride + c] = delta[fail[s] * stride + c],
                    child => {
                        let child = child as usize;
                        fail[child] = delta[fail[s] * stride + c] as usize;
                        delta[s * stride + c] = u32::try_from(child).unwrap_or(0);
                        queue.push_back(child);
                    }
                }
            }
        }
        // Renumber: states without an output first (the start state stays
        // 0), so "a literal ends here" is one comparison.
        let mut order: Vec<usize> = (0..n).filter(|&s| out[s] == 0).collect();
        let first_out = order.len();
        order.extend((0..n).filter(|&s| out[s] != 0));
        let mut new_id = vec![0u32; n];
        for (new, &old) in order.iter().enumerate() {
            new_id[old] = u32::try_from(new).unwrap_or(0);
        }
        let stride32 = u32::try_from(stride).unwrap_or(0);
        let mut trans = vec![0u32; n * stride];
        for (old, &new) in new_id.iter().enumerate() {
            for c in 0..stride {
                let next = delta[old * stride + c] as usize;
                trans[new as usize * stride + c] = new_id[next] * stride32;
            }
        }
        Literals {
            classes,
            stride,
            trans,
            first_out: u32::try_from(first_out).unwrap_or(0) * stride32,
            out: order.iter().map(|&old| out[old]).collect(),
            longest: literals.iter().map(|(l, _)| l.len()).max().unwrap_or(0),
        }
    }

    /// The feature bits of the literals in `hay`, and the byte classes of
    /// `hay` OR-ed together (see [`BYTES`]). A walk is one chain of
    /// dependent loads, so long haystacks are cut into four overlapping
    /// parts walked side by side.
    fn find(&self, hay: &[u8]) -> (u64, u16) {
        let step = |sid: &mut u32, f: &mut u64, b: u8| {
            *sid = self.trans[*sid as usize + usize::from(self.classes[usize::from(b)])];
            if *sid >= self.first_out {
                *f |= self.out[*sid as usize / self.stride];
            }
        };
        let mut f = 0u64;
        let mut acc = 0u16;
        let part = hay.len() / 4;
        if part < 16 {
            let mut sid = 0;
            for &b in hay {
                acc |= BYTES[usize::from(b)];
                step(&mut sid, &mut f, b);
            }
            return (f, acc);
        }
        // Lane k reads hay[k * part ..], and all but the last read on for
        // longest - 1 bytes, so a literal across a cut is found.
        let (l0, rest) = hay.split_at(part);
        let (l1, rest) = rest.split_at(part);
        let (l2, l3) = rest.split_at(part);
        let mut sids = [0u32; 4];
        for (((&a, &b), &c), &d) in l0.iter().zip(l1).zip(l2).zip(l3) {
            acc |= BYTES[usize::from(a)] | BYTES[usize::from(b)];
            acc |= BYTES[usize::from(c)] | BYTES[usize::from(d)];
            step(&mut sids[0], &mut f, a);
            step(&mut sids[1], &mut f, b);
            step(&mut sids[2], &mut f, c);
            step(&mut sids[3], &mut f, d);
        }
        for b in &l3[part..] {
            acc |= BYTES[usize::from(*b)];
        }
        for (k, sid) in sids.iter_mut().enumerate() {
            let end = if k == 3 {
                hay.len()
            } else {
                ((k + 1) * part + self.longest.saturating_sub(1)).min(hay.len())
            };
            for &b in &hay[k * part + part..end] {
                step(sid, &mut f, b);
            }
        }
        (f, acc)
    }
}

/// Detectors scanned together by one automaton.
struct Group {
    needs: Needs,
    /// Detector index (file order) of each pattern id.
    detectors: Vec<usize>,
    dfa: hybrid::regex::Regex,
    /// Same patterns, reporting every pattern that matches: after a
    /// rejected candidate, which others match at its start.
    all: hybrid::dfa::DFA,
    /// Same patterns, used if an automaton ever gives up on an input.
    fallback: OnDemand,
}

impl Group {
    /// The leftmost-first match in `input`, as `hybrid::regex::Regex::try_search`
    /// finds it (the forward automaton finds its end, the reverse one its
    /// start), but with the reverse search anchored to the pattern that
    /// matched. The reverse automaton then follows that one pattern back
    /// from the end instead of every pattern of the group, which could go
    /// on far past the start. The start is the same: a match of any pattern
    /// starting further left would have been the leftmost match. Falls back
    /// to a meta regex if an automaton gives up.
    fn find(&self, cache: &mut hybrid::regex::Cache, input: &Input<'_>) -> Option<Match> {
        self.try_find(cache, input)
            .unwrap_or_else(|_| self.fallback.get().and_then(|r| r.search(input)))
    }

    fn try_find(
        &self,
        cache: &mut hybrid::regex::Cache,
        input: &Input<'_>,
    ) -> Result<Option<Match>, MatchError> {
        let (fwd, rev) = cache.as_parts_mut();
        let Some(end) = self.dfa.forward().try_search_fwd(fwd, input)? else {
            return Ok(None);
        };
        if input.start() == end.offset() || input.get_anchored().is_anchored() {
            return Ok(Some(Match::new(end.pattern(), input.start()..end.offset())));
        }
        let back = input
            .clone()
            .span(input.start()..end.offset())
            .anchored(Anchored::Pattern(end.pattern()))
            .earliest(false);
        match self.dfa.reverse().try_search_rev(rev, &back)? {
            Some(start) => Ok(Some(Match::new(
                end.pattern(),
                start.offset()..end.offset(),
            ))),
            // Cannot happen: the forward match is a match of that pattern.
            None => Err(MatchError::gave_up(end.offset())),
        }
    }
}

/// Lazy DFA caches for every group; one per thread at a time.
pub(crate) struct ScanCache {
    groups: Vec<hybrid::regex::Cache>,
    /// For each group's `all` automaton, and the patterns it found.
    alls: Vec<(hybrid::dfa::Cache, regex_automata::PatternSet)>,
    contexts: Vec<hybrid::dfa::Cache>,
    /// Backtracker cache and captures per detector (only for detectors
    /// with a `capture`).
    captures: Vec<Option<(backtrack::Cache, Captures)>>,
    splits: Vec<Option<SplitCache>>,
    candidates: Vec<Candidate>,
    /// Set when another pass over the redacted text may find more (the
    /// caller clears it): [`Scanner::scan`] sets it when it drops a
    /// candidate that reaches outside one it kept, the engine when it
    /// judges two views of a percent-encoded string.
    pub(crate) recheck: bool,
}

/// The per-call caches `accept` needs besides the group's own.
struct Side<'a> {
    contexts: &'a mut [hybrid::dfa::Cache],
    captures: &'a mut [Option<(backtrack::Cache, Captures)>],
    splits: &'a mut [Option<SplitCache>],
}

/// All enabled pattern detectors, compiled.
pub(crate) struct Scanner {
    detectors: Vec<Detector>,
    contexts: Vec<Context>,
    groups: Vec<Group>,
    literals: Option<Literals>,
}

/// How far back the context patterns look.
const CONTEXT_BYTES: usize = 40;
/// Lazy DFA cache per group. Generous, so that the automata stay warm.
const DFA_CACHE_BYTES: usize = 8 << 20;

const F_DIGIT: u64 = 1 << 0;
const F_HEXCOLON: u64 = 1 << 1;
/// Two words starting with a capital letter (or a non-ASCII letter) at most
/// one word apart: the precondition of the person-name heuristics.
pub(crate) const F_CAPS2: u64 = 1 << 2;
/// Single-byte literals get bit `8 + byte class index`; see `byte_bit`.
const FIRST_LITERAL_BIT: u32 = 16;

const CLASS_DIGIT: u16 = 1 << 8;
const CLASS_HEX: u16 = 1 << 9;
const CLASS_SEP: u16 = 1 << 10;
const CLASS_CAP: u16 = 1 << 11;

/// Per byte: the one-byte-literal bit index (low 8 bits, see `byte_bit`)
/// and character classes.
static BYTES: [u16; 256] = byte_table();

const fn byte_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut v: u16 = match b {
            b'@' => 1,
            b'=' => 1 << 1,
            b':' => 1 << 2,
            b' ' => 1 << 3,
            b'%' => 1 << 4,
            b'/' => 1 << 5,
            b'-' => 1 << 6,
            b'.' => 1 << 7,
            _ => 0,
        };
        if b.is_ascii_digit() {
            v |= CLASS_DIGIT;
        }
        if b.is_ascii_hexdigit() {
            v |= CLASS_HEX;
        }
        if !b.is_ascii_alphanumeric() && b < 0x80 && b != b'\'' && b != b'-' {
            v |= CLASS_SEP;
        }
        // Upper-case ASCII, or the lead byte of a two-byte UTF-8 letter.
        if b.is_ascii_uppercase() || (b >= 0xC3 && b <= 0xC5) {
            v |= CLASS_CAP;
        }
        t[i] = v;
        i += 1;
    }
    t
}

/// Whether two words starting with a capital letter (or a non-ASCII
/// letter) are at most one word apart.
fn cap_pair(hay: &[u8]) -> bool {
    let mut prev: u16 = CLASS_SEP;
    // Word starts since the last capitalised word start.
    let mut since_cap = u32::MAX;
    for (i, &b) in hay.iter().enumerate() {
        let c = BYTES[b as usize];
        // The name finder's words may also start after a joiner ("-Ja",
        // "'Ja", "’Ja": one that begins a word is not part of it). Counting
        // every capital after one as a word start can only say yes more
        // often, which keeps this a precondition.
        let after_joiner = c & CLASS_CAP != 0
            && i > 0
            && (matches!(hay[i - 1], b'-' | b'\'') || hay[..i].ends_with("’".as_bytes()));
        if (prev & CLASS_SEP != 0 && c & CLASS_SEP == 0) || after_joiner {
            if c & CLASS_CAP != 0 {
                if since_cap <= 2 {
                    return true;
                }
                since_cap = 1;
            } else {
                since_cap = since_cap.saturating_add(1);
            }
        }
        prev = c;
    }
    false
}

/// Feature bit for a one-byte literal need, if it has one.
fn byte_bit(b: u8) -> Option<u64> {
    let i = match b {
        b'@' => 0,
        b'=' => 1,
        b':' => 2,
        b' ' => 3,
        b'%' => 4,
        b'/' => 5,
        b'-' => 6,
        b'.' => 7,
        _ => return None,
    };
    Some(1 << (8 + i))
}

fn compile_context(
    spec: &DetectorSpec,
    pattern: Option<&String>,
) -> Result<Option<Context>, RulesError> {
    let err = |message: String| RulesError::Detector {
        id: spec.id.clone(),
        message,
    };
    let Some(p) = pattern else { return Ok(None) };
    let ci = rules::case_insensitive(&spec.flags_context).map_err(err)?;
    let t = rules::translate(p, ci).map_err(err)?;
    let dfa = hybrid::dfa::DFA::builder()
        .syntax(syntax::Config::new().utf8(false))
        .configure(hybrid::dfa::Config::new().minimum_cache_clear_count(None))
        .build(&t)
        .map_err(|e| err(format!("context pattern: {e}")))?;
    Ok(Some(Context {
        dfa,
        fallback: OnDemand::new(vec![t]),
    }))
}

impl Scanner {
    /// A scanner with no detectors.
    pub(crate) fn empty() -> Scanner {
        Scanner {
            detectors: Vec::new(),
            contexts: Vec::new(),
            groups: Vec::new(),
            literals: None,
        }
    }

    /// Compiles the detectors whose type is enabled.
    pub(crate) fn new(
        specs: &[DetectorSpec],
        group_specs: &BTreeMap<String, GroupSpec>,
        enabled: &[bool; PiiType::COUNT],
    ) -> Result<Scanner, RulesError> {
        // Feature bits of the group needs.
        let mut literals: Vec<String> = Vec::new();
        let mut need_bit = |need: &str| -> Result<u64, String> {
            match need {
                "#digit" => Ok(F_DIGIT),
                "#hexcolon" => Ok(F_HEXCOLON),
                "" => Err("empty need".into()),
                n if n.starts_with('#') => Err(format!("unknown need {n:?}")),
                n if n.len() == 1 => byte_bit(n.as_bytes()[0])
                    .ok_or_else(|| format!("one-byte need {n:?} is not supported")),
                n => {
                    let idx = match literals.iter().position(|l| l == n) {
                        Some(i) => i,
                        None => {
                            literals.push(n.to_string());
                            literals.len() - 1
                        }
                    };
                    let bit = FIRST_LITERAL_BIT as usize + idx;
                    if bit >= 64 {
                        return Err("too many literal needs (at most 48)".into());
                    }
                    Ok(1 << bit)
                }
            }
        };
        let mut group_names: Vec<&String> = Vec::new();
        let mut group_needs: Vec<Needs> = Vec::new();
        for (name, g) in group_specs {
            let gerr = |message: String| RulesError::Detector {
                id: format!("group {name}"),
                message,
            };
            let mut needs = Needs::default();
            for n in &g.needs_any {
                needs.any |= need_bit(n).map_err(gerr)?;
            }
            for n in &g.needs_all {
                needs.all |= need_bit(n).map_err(gerr)?;
            }
            group_names.push(name);
            group_needs.push(needs);
        }
        let mut detectors = Vec::new();
        let mut contexts: Vec<Context> = Vec::new();
        let mut group_patterns: Vec<Vec<(usize, String)>> = vec![Vec::new(); group_names.len()];
        for spec in specs {
            let err = |message: String| RulesError::Detector {
                id: spec.id.clone(),
                message,
            };
            let kind = PiiType::parse(&spec.kind)
                .ok_or_else(|| err(format!("unknown type {:?}", spec.kind)))?;
            let group = group_names
                .iter()
                .position(|g| **g == spec.group)
                .ok_or_else(|| err(format!("unknown group {:?}", spec.group)))?;
            let validator = match &spec.validator {
                None => None,
                Some(name) => Some(
                    Validator::parse(name)
                        .ok_or_else(|| err(format!("unknown validator {name:?}")))?,
                ),
            };
            let ci = rules::case_insensitive(&spec.flags).map_err(err)?;
            let translated = rules::translate(&spec.pattern, ci).map_err(err)?;
            let capture = if spec.group_index == 0 {
                None
            } else {
                let bt = backtrack::Builder::new()
                    .syntax(syntax::Config::new().utf8(false))
                    .build(&translated)
                    .map_err(|e| err(e.to_string()))?;
                if spec.group_index >= bt.get_nfa().group_info().group_len(PatternID::ZERO) {
                    return Err(err(format!("pattern has no group {}", spec.group_index)));
                }
                Some(bt)
            };
            let single = OnDemand::new(vec![translated.clone()]);
            let split = (spec.group_index != 0)
                .then(|| Split::new(&translated, spec.group_index))
                .flatten();
            let require_before = compile_context(spec, spec.require_before.as_ref())?;
            let deny_before = compile_context(spec, spec.deny_before.as_ref())?;
            if !enabled[kind.index()] {
                continue;
            }
            group_patterns[group].push((detectors.len(), translated));
            let mut add = |c: Option<Context>| {
                c.map(|c| {
                    contexts.push(c);
                    contexts.len() - 1
                })
            };
            let require_before = add(require_before);
            let deny_before = add(deny_before);
            detectors.push(Detector {
                kind,
                group: spec.group_index,
                validator,
                require_before,
                deny_before,
                boundary: spec.boundary,
                single,
                capture,
                split,
            });
        }
        let mut groups = Vec::new();
        for (gi, patterns) in group_patterns.into_iter().enumerate() {
            if patterns.is_empty() {
                continue;
            }
            let gerr = |message: String| RulesError::Detector {
                id: format!("group {}", group_names[gi]),
                message,
            };
            let texts: Vec<&str> = patterns.iter().map(|(_, p)| p.as_str()).collect();
            let dfa = hybrid::regex::Regex::builder()
                .syntax(syntax::Config::new().utf8(false))
                .dfa(
                    hybrid::dfa::Config::new()
                        .cache_capacity(DFA_CACHE_BYTES)
                        .minimum_cache_clear_count(None)
                        .starts_for_each_pattern(true),
                )
                .build_many(&texts)
                .map_err(|e| gerr(e.to_string()))?;
            let all = hybrid::dfa::DFA::builder()
                .syntax(syntax::Config::new().utf8(false))
                .configure(
                    hybrid::dfa::Config::new()
                        .match_kind(regex_automata::MatchKind::All)
                        .minimum_cache_clear_count(None),
                )
                .build_many(&texts)
                .map_err(|e| gerr(e.to_string()))?;
            let fallback = OnDemand::new(texts.iter().map(|t| t.to_string()).collect());
            groups.push(Group {
                needs: group_needs[gi],
                detectors: patterns.iter().map(|(d, _)| *d).collect(),
                dfa,
                all,
                fallback,
            });
        }
        let literals = (!literals.is_empty()).then(|| {
            let with_bits: Vec<(String, u64)> = literals
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), 1u64 << (FIRST_LITERAL_BIT as usize + i)))
                .collect();
            Literals::new(&with_bits)
        });
        Ok(Scanner {
            detectors,
            contexts,
            groups,
            literals,
        })
    }

    /// A fresh set of caches for [`Scanner::scan`].
    pub(crate) fn create_cache(&self) -> ScanCache {
        ScanCache {
            groups: self.groups.iter().map(|g| g.dfa.create_cache()).collect(),
            alls: self
                .groups
                .iter()
                .map(|g| {
                    let set = regex_automata::PatternSet::new(g.all.pattern_len());
                    (g.all.create_cache(), set)
                })
                .collect(),
            contexts: self.contexts.iter().map(|c| c.dfa.create_cache()).collect(),
            captures: self
                .detectors
                .iter()
                .map(|d| {
                    d.capture
                        .as_ref()
                        .map(|bt| (bt.create_cache(), bt.create_captures()))
                })
                .collect(),
            splits: self
                .detectors
                .iter()
                .map(|d| d.split.as_ref().map(Split::create_cache))
                .collect(),
            candidates: Vec::new(),
            recheck: false,
        }
    }

    /// Which needs `hay` satisfies: one pass for the literals and the byte
    /// classes, then the rarer checks only when their bytes are present.
    fn features(&self, hay: &[u8]) -> u64 {
        let (mut f, acc) = match &self.literals {
            Some(lits) => lits.find(hay),
            None => (0, hay.iter().fold(0, |acc, &b| acc | BYTES[usize::from(b)])),
        };
        f |= u64::from(acc & 0xFF) << 8;
        if acc & CLASS_DIGIT != 0 {
            f |= F_DIGIT;
        }
        let colon = byte_bit(b':').unwrap_or(0);
        if f & colon != 0
            && memchr::memchr_iter(b':', hay).any(|i| i > 0 && hay[i - 1].is_ascii_hexdigit())
        {
            f |= F_HEXCOLON;
        }
        let space = byte_bit(b' ').unwrap_or(0);
        if f & space != 0 && acc & CLASS_CAP != 0 && cap_pair(hay) {
            f |= F_CAPS2;
        }
        f
    }

    /// Appends every accepted span of `hay` to `out`, sorted, without
    /// overlaps.
    /// Returns the features of `hay` (see [`F_CAPS2`]).
    pub(crate) fn scan(&self, hay: &[u8], cache: &mut ScanCache, out: &mut Vec<Span>) -> u64 {
        if hay.is_empty() {
            return 0;
        }
        let features = self.features(hay);
        if self.groups.is_empty() {
            return features;
        }
        let mut candidates = std::mem::take(&mut cache.candidates);
        candidates.clear();
        for (gi, group) in self.groups.iter().enumerate() {
            let n = group.needs;
            if (n.any != 0 && features & n.any == 0) || features & n.all != n.all {
                continue;
            }
            let mut side = Side {
                contexts: &mut cache.contexts,
                captures: &mut cache.captures,
                splits: &mut cache.splits,
            };
            self.scan_group(
                group,
                &mut cache.groups[gi],
                &mut cache.alls[gi],
                &mut side,
                hay,
                &mut candidates,
            );
        }
        // Merge: by match start, then detector order; drop overlaps.
        candidates.sort_by_key(|c| (c.match_start, c.order));
        let first = out.len();
        for c in &candidates {
            match overlap(&out[first..], c.span) {
                None => out.push(c.span),
                // Part of it is left once the kept span is a token.
                Some(Overlap::Outside) => cache.recheck = true,
                Some(Overlap::Inside) => {}
            }
        }
        out[first..].sort_by_key(|s| s.start);
        cache.candidates = candidates;
        features
    }

    fn scan_group(
        &self,
        group: &Group,
        cache: &mut hybrid::regex::Cache,
        (all_cache, matching): &mut (hybrid::dfa::Cache, regex_automata::PatternSet),
        side: &mut Side<'_>,
        hay: &[u8],
        out: &mut Vec<Candidate>,
    ) {
        let mut pos = 0;
        while pos < hay.len() {
            let input = Input::new(hay).range(pos..);
            let found = group.find(cache, &input);
            let Some(m) = found else { break };
            let (s, e) = (m.start(), m.end());
            let order = group.detectors[m.pattern().as_usize()];
            if let Some(span) = self.accept(order, hay, s, e, side) {
                out.push(Candidate {
                    span,
                    match_start: s,
                    order,
                });
                pos = span.end.max(s + 1);
                continue;
            }
            // Rejected: another pattern of the group may match at the same
            // place; try each that does, anchored, before moving on. One
            // pass says which do (all of them if that automaton gives up).
            matching.clear();
            let at_start = Input::new(hay).range(s..).anchored(Anchored::Yes);
            let known = group
                .all
                .try_which_overlapping_matches(all_cache, &at_start, matching)
                .is_ok();
            let mut retried = false;
            for (pid, &other) in group.detectors.iter().enumerate() {
                if other == order || (known && !matching.contains(PatternID::new_unchecked(pid))) {
                    continue;
                }
                let anchored = Input::new(hay)
                    .range(s..)
                    .anchored(Anchored::Pattern(PatternID::new_unchecked(pid)));
                let m2 = group.find(cache, &anchored);
                if let Some(m2) = m2
                    && let Some(span) = self.accept(other, hay, s, m2.end(), side)
                {
                    out.push(Candidate {
                        span,
                        match_start: s,
                        order: other,
                    });
                    pos = span.end.max(s + 1);
                    retried = true;
                    break;
                }
            }
            if !retried {
                pos = next_char(hay, s);
            }
        }
    }

    /// Runs the group, context and validator checks of detector `i` on the
    /// match `hay[s..e]`.
    fn accept(
        &self,
        i: usize,
        hay: &[u8],
        s: usize,
        e: usize,
        side: &mut Side<'_>,
    ) -> Option<Span> {
        let caches = &mut *side.contexts;
        let d = self.detectors.get(i)?;
        if d.require_before.is_some() || d.deny_before.is_some() {
            // The context window, cut after the last token this engine
            // wrote: "[PHONE]" is not a phone keyword, even with another
            // ']' after it.
            let mut from = s.saturating_sub(CONTEXT_BYTES);
            if let Some(p) = memchr::memrchr_iter(b']', &hay[from..s])
                .find(|&p| token_ends_at(hay, from + p + 1))
            {
                from += p + 1;
            }
            let window = &hay[from..s];
            if let Some(c) = d.require_before
                && !self.contexts[c].is_match(&mut caches[c], window)
            {
                return None;
            }
            if let Some(c) = d.deny_before
                && self.contexts[c].is_match(&mut caches[c], window)
            {
                return None;
            }
        }
        if d.boundary && (touches_alnum_before(hay, s) || touches_alnum_after(hay, e)) {
            return None;
        }
        // Nothing glued to a token this engine wrote, or spanning one, is
        // a new finding: the text next to it was judged with its original
        // neighbour, and redacting twice must change nothing.
        if joined_to_token(hay, s, e) || spans_token(hay, s, e) {
            return None;
        }
        let (gs, ge) = if d.group == 0 {
            (s, e)
        } else {
            let split = match (&d.split, side.splits.get_mut(i)) {
                (Some(split), Some(Some(cache))) => split.group(cache, hay, s, e),
                _ => None,
            };
            let group = match split {
                Some(g) => Some(g),
                None => {
                    let input = Input::new(hay).range(s..e).anchored(Anchored::Yes);
                    let fast = match (&d.capture, side.captures.get_mut(i)) {
                        (Some(bt), Some(Some((cache, caps)))) if e - s <= bt.max_haystack_len() => {
                            bt.try_search(cache, &input, caps)
                                .ok()
                                .map(|()| caps.get_group(d.group).map(|g| (g.start, g.end)))
                        }
                        _ => None,
                    };
                    match fast {
                        Some(g) => g,
                        None => {
                            let single = d.single.get()?;
                            let mut caps = single.create_captures();
                            single.search_captures(&input, &mut caps);
                            caps.get_group(d.group).map(|g| (g.start, g.end))
                        }
                    }
                }
            };
            group?
        };
        if gs >= ge {
            return None;
        }
        let ge = match d.validator {
            None => ge,
            Some(v) => v.check(hay, gs, ge)?,
        };
        Some(Span {
            start: gs,
            end: ge,
            kind: d.kind,
        })
    }
}

/// Whether `hay[s..e]` touches a token this engine wrote, directly or
/// across one character that joins the parts of a number (" ", "+", "-",
/// ".", "/"). In the original text that neighbour may have been part of the
/// same number ("+1707418648+0424..." judged as one over-long number), so
/// the part left standing next to its token must not become a finding when
/// the output is redacted again.
fn joined_to_token(hay: &[u8], s: usize, e: usize) -> bool {
    let joiner = |b: u8| matches!(b, b' ' | b'+' | b'-' | b'.' | b'/');
    token_ends_at(hay, s)
        || token_starts_at(hay, e)
        || (s > 0 && joiner(hay[s - 1]) && token_ends_at(hay, s - 1))
        || (hay.get(e).copied().is_some_and(joiner) && token_starts_at(hay, e + 1))
}

/// Whether a token this engine wrote starts inside `hay[s..e]`. Such a
/// match runs over replaced text that was not there when the original was
/// judged: "postgres://u:+24-01-20 22:x@h" has no credentials (a password
/// has no spaces), but with the phone number a token, "u:[PHONE]:x@"
/// would look like some.
fn spans_token(hay: &[u8], s: usize, e: usize) -> bool {
    memchr::memchr_iter(b'[', &hay[s..e]).any(|i| token_starts_at(hay, s + i))
}

/// How a span meets spans already kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overlap {
    /// It lies inside one of those it overlaps: replaced with it.
    Inside,
    /// It reaches outside those it overlaps: part of it is left once they
    /// are tokens.
    Outside,
}

/// Whether `span` overlaps any of `kept`, and how.
pub(crate) fn overlap(kept: &[Span], span: Span) -> Option<Overlap> {
    let mut found = None;
    for k in kept
        .iter()
        .filter(|k| k.start < span.end && span.start < k.end)
    {
        if k.start <= span.start && span.end <= k.end {
            return Some(Overlap::Inside);
        }
        found = Some(Overlap::Outside);
    }
    found
}

/// Index of the next UTF-8 character start after `i`.
fn next_char(hay: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < hay.len() && (hay[j] & 0xC0) == 0x80 {
        j += 1;
    }
    j
}

fn char_before(hay: &[u8], i: usize) -> Option<char> {
    let mut j = i.checked_sub(1)?;
    while j > 0 && (hay[j] & 0xC0) == 0x80 && i - j < 4 {
        j -= 1;
    }
    std::str::from_utf8(&hay[j..i]).ok()?.chars().next()
}

fn char_after(hay: &[u8], i: usize) -> Option<char> {
    let end = (i + 4).min(hay.len());
    let slice = hay.get(i..end)?;
    match std::str::from_utf8(slice) {
        Ok(s) => s.chars().next(),
        Err(e) => std::str::from_utf8(&slice[..e.valid_up_to()])
            .ok()?
            .chars()
            .next(),
    }
}

fn touches_alnum_before(hay: &[u8], i: usize) -> bool {
    char_before(hay, i).is_some_and(char::is_alphanumeric)
}

fn touches_alnum_after(hay: &[u8], i: usize) -> bool {
    char_after(hay, i).is_some_and(char::is_alphanumeric)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::strategy::Strategy;

    fn scanner() -> Scanner {
        let rules = rules::parse(crate::RULES_JSON).unwrap();
        Scanner::new(&rules.detectors, &rules.groups, &[true; PiiType::COUNT]).unwrap()
    }

    fn found(s: &Scanner, text: &str) -> Vec<(PiiType, String)> {
        let mut out = Vec::new();
        let mut cache = s.create_cache();
        s.scan(text.as_bytes(), &mut cache, &mut out);
        out.iter()
            .map(|sp| (sp.kind, text[sp.start..sp.end].to_string()))
            .collect()
    }

    #[test]
    fn finds_each_structured_type() {
        let s = scanner();
        let cases: &[(&str, PiiType, &str)] = &[
            (
                "mail bob.smith+x@example.co.uk now",
                PiiType::Email,
                "bob.smith+x@example.co.uk",
            ),
            (
                "card 4539-1488-0343-6467.",
                PiiType::CreditCard,
                "4539-1488-0343-6467",
            ),
            ("SSN 123-45-6789 on file", PiiType::UsSsn, "123-45-6789"),
            ("ssn=023485892", PiiType::UsSsn, "023485892"),
            (
                "IBAN DE89 3704 0044 0532 0130 00 ok",
                PiiType::Iban,
                "DE89 3704 0044 0532 0130 00",
            ),
            ("from 191.112.33.56 at", PiiType::Ipv4, "191.112.33.56"),
            (
                "ip 2001:db8:85a3::8a2e:370:7334",
                PiiType::Ipv6,
                "2001:db8:85a3::8a2e:370:7334",
            ),
            ("call +44 7400 120590", PiiType::Phone, "+44 7400 120590"),
            ("call (972) 859-3792", PiiType::Phone, "(972) 859-3792"),
            ("phone 4155552671", PiiType::Phone, "4155552671"),
            (
                "key AKIAIOSFODNN7EXAMPLE",
                PiiType::AwsAccessKey,
                "AKIAIOSFODNN7EXAMPLE",
            ),
            (
                "Authorization: Bearer abcdefghijklmnop1234",
                PiiType::BearerToken,
                "abcdefghijklmnop1234",
            ),
            (
                "postgres://app:s3cret-pw@db:5432/x",
                PiiType::Secret,
                "s3cret-pw",
            ),
            (
                "GET /x?api_key=sk_live_abcdefghijklmnop&y=1",
                PiiType::Secret,
                "sk_live_abcdefghijklmnop",
            ),
            (
                "Authorization: Basic dXNlcjpwYXNzd29yZA==",
                PiiType::Secret,
                "dXNlcjpwYXNzd29yZA==",
            ),
            (
                "93 Lakeview Drive Apt. 5, Springfield",
                PiiType::StreetAddress,
                "93 Lakeview Drive Apt. 5",
            ),
            (
                "bei Seidelring 15, Berlin",
                PiiType::StreetAddress,
                "Seidelring 15",
            ),
        ];
        for (text, kind, want) in cases {
            let got = found(&s, text);
            assert!(
                got.iter().any(|(k, v)| k == kind && v == want),
                "{text}: want {kind} {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn jwt_and_private_keys() {
        let s = scanner();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU";
        assert_eq!(
            found(&s, &format!("token {jwt} end")),
            [(PiiType::Jwt, jwt.to_string())]
        );
        let escaped = "-----BEGIN RSA PRIVATE KEY-----\\nMIIEowIBAAKCAQEA\\nabc+/=\\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            found(&s, escaped),
            [(PiiType::PrivateKey, escaped.to_string())]
        );
        let real =
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0=\n-----END PRIVATE KEY-----";
        assert_eq!(
            found(&s, &format!("k: {real}")),
            [(PiiType::PrivateKey, real.to_string())]
        );
    }

    #[test]
    fn hard_negatives_survive() {
        let s = scanner();
        for text in [
            "8a0ac984-f71a-4247-a88b-759131db6e32",
            "2024-12-24T20:05:03.376Z",
            "Wed, 07 Feb 2024 07:42:13 GMT",
            "18/Dec/2024:02:14:22 +0000",
            "release 8.6.77 and 111.0.6048.63",
            "The app version 4.28.52.98 crashes",
            "Chrome/126.0.6037.216 Safari/537.36",
            "commit 79f6ae28652eb6fa7cd62de963a8cc7d2cd0e63b",
            "order XCE-7614-0353 id 1069790534 at 1725684578",
            "transaction 2354-9213-5055-8597",
            "Part number 132-74-0000",
            "ref DE32 7655 8662 6179 6762 42",
            "CRM id 111-941-4503 and 126-713-5687",
            "Ticket ref 737336292",
            "Basic membership plan",
        ] {
            assert_eq!(found(&s, text), [], "{text}");
        }
    }

    #[test]
    fn group_find_matches_try_search() {
        // The pattern-anchored reverse search finds the same matches as the
        // regex's own, at every start position, on texts where the patterns
        // of a group overlap (long alphanumeric and digit runs before and
        // around the matches).
        let s = scanner();
        let vectors: serde_json::Value = serde_json::from_str(crate::VECTORS_JSON).unwrap();
        fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(t) => out.push(t.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
                serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
                _ => {}
            }
        }
        let mut texts: Vec<String> = Vec::new();
        strings(&vectors, &mut texts);
        texts.extend(
            [
                "GB82WEST12345698765432 then 4111 1111 1111 1111 and +44 20 7946 0958",
                "ABCD1234EF5678 555-867-5309 DE89370400440532013000 2001:db8::1",
                "x9f3a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5 123-45-6789",
                "Flat 3 12 High Street, Musterstraße 12, 1600 Pennsylvania Avenue NW",
                "mail: a.b-c+d@example.co.uk, postgres://u:p@h:5432/db?api_key=abc123",
            ]
            .map(String::from),
        );
        let mut cache = s.create_cache();
        let mut reference = s.create_cache();
        let mut compared = 0;
        for text in &texts {
            let hay = text.as_bytes();
            for (gi, group) in s.groups.iter().enumerate() {
                for pos in 0..hay.len() {
                    let input = Input::new(hay).range(pos..);
                    let ours = group.find(&mut cache.groups[gi], &input);
                    let theirs = group
                        .dfa
                        .try_search(&mut reference.groups[gi], &input)
                        .unwrap();
                    assert_eq!(ours, theirs, "group {gi} at {pos} of {text:?}");
                    compared += usize::from(ours.is_some());
                }
            }
        }
        assert!(compared > 1000, "only {compared} matches compared");
    }

    #[test]
    fn a_rejected_candidate_leaves_its_start_to_the_other_patterns() {
        let s = scanner();
        // Nine digits are a bare SSN first, rejected without an SSN
        // keyword; the bare-phone pattern matches at the same start.
        assert_eq!(
            found(&s, "call 012345678"),
            [(PiiType::Phone, "012345678".to_string())]
        );
    }

    #[test]
    fn a_rejected_candidate_does_not_hide_a_later_match() {
        let s = scanner();
        // The Luhn-invalid number is rejected; the SSN after it is still found.
        let got = found(&s, "4539-1488-0343-6468 123-45-6789");
        assert_eq!(got, [(PiiType::UsSsn, "123-45-6789".to_string())]);
    }

    /// The literal automaton finds exactly the literals that occur, ASCII
    /// case-insensitively, overlapping ones included, and every byte's
    /// classes.
    #[test]
    fn literal_needs_match_a_plain_search() {
        static WORDS: [&str; 10] = [
            "pass",
            "passwd",
            "sig",
            "signature",
            "sk_",
            "ask",
            "-----BEGIN",
            "://",
            "key",
            // Has "ask" and "key" inside: found only through failure links.
            "taskey",
        ];
        let words = &WORDS;
        let lits: Vec<(String, u64)> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), 1u64 << i))
            .collect();
        let automaton = Literals::new(&lits);
        let plain = |hay: &str| -> u64 {
            let lower = hay.to_ascii_lowercase();
            lits.iter()
                .filter(|(l, _)| lower.contains(&l.to_ascii_lowercase()))
                .fold(0, |acc, (_, bit)| acc | bit)
        };
        let walk = |hay: &str| -> u64 {
            let (found, classes) = automaton.find(hay.as_bytes());
            // The byte classes come out of the same walk.
            let plain_classes = hay.bytes().fold(0, |acc, b| acc | BYTES[usize::from(b)]);
            assert_eq!(classes, plain_classes, "{hay:?}");
            found
        };
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 2000,
            ..Default::default()
        });
        let texts = proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(&words[..]).prop_map(str::to_owned),
                proptest::sample::select(&words[..]).prop_map(|w| w.to_uppercase()),
                "[a-zA-Z_:/ -]{0,3}",
                "\\PC{0,2}",
                // Long fillers move literals across the cuts between the
                // parts that long haystacks are walked in.
                "[a-z0-9 ]{0,40}",
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat());
        runner
            .run(&texts, |hay| {
                proptest::prop_assert_eq!(walk(&hay), plain(&hay), "{:?}", hay);
                Ok(())
            })
            .unwrap();
        for hay in [
            "PASSWD=1",
            "asignaturesk_",
            "x:/://",
            "-----begin",
            "KeY",
            "",
            "pas",
        ] {
            assert_eq!(walk(hay), plain(hay), "{hay}");
        }
    }

    /// Where the group automata answer, they give the bounds the pattern's
    /// own capture search gives.
    #[test]
    fn split_groups_equal_capture_groups() {
        let s = scanner();
        let split: Vec<&Detector> = s.detectors.iter().filter(|d| d.split.is_some()).collect();
        assert!(split.len() >= 4, "url, bearer, basic and key=value use it");
        static PARTS: [&str; 31] = [
            "password",
            "PassWD",
            "api_key",
            "token",
            "sig",
            "secret",
            "=",
            ":",
            ": ",
            " = ",
            "\"",
            "'",
            "String(\"",
            "\")",
            "hunter2",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIi",
            " ",
            "\t",
            "&",
            ";",
            "[",
            "Bearer ",
            "basic ",
            "dXNlcjpwYXNzd29yZA==",
            "postgres://",
            "mysql://app:",
            "app",
            "@db:5432",
            "@",
            "/",
            "x",
        ];
        let text = proptest::collection::vec(proptest::sample::select(&PARTS[..]), 1..14)
            .prop_map(|p| p.concat());
        let answered = std::cell::Cell::new(0usize);
        let mut cache = s.create_cache();
        for (i, d) in s.detectors.iter().enumerate() {
            let (Some(sp), Some(Some(c))) = (&d.split, cache.splits.get_mut(i)) else {
                continue;
            };
            let c = std::cell::RefCell::new(c);
            let check = |hay: &str| -> Result<(), proptest::test_runner::TestCaseError> {
                let hay = hay.as_bytes();
                let single = d.single.get().unwrap();
                for m in single.find_iter(hay) {
                    let input = Input::new(hay)
                        .range(m.start()..m.end())
                        .anchored(Anchored::Yes);
                    let mut caps = single.create_captures();
                    single.search_captures(&input, &mut caps);
                    let want = caps.get_group(d.group).map(|g| (g.start, g.end));
                    if let Some(got) = sp.group(&mut c.borrow_mut(), hay, m.start(), m.end()) {
                        answered.set(answered.get() + 1);
                        proptest::prop_assert_eq!(
                            Some(got),
                            want,
                            "{:?}",
                            String::from_utf8_lossy(hay)
                        );
                    }
                }
                Ok(())
            };
            for hay in [
                "password: hunter2 and token=eyJabc.def",
                "postgres://app:s3cret-pw@db:5432/x and a@b",
                "Authorization: Bearer abcdefghijklmnop1234",
                "Authorization: Basic dXNlcjpwYXNzd29yZA==",
                "password = \"a b\" api_key='x y' secret=String(\"z\")",
            ] {
                check(hay).unwrap();
            }
            let mut runner =
                proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
                    cases: 3000,
                    ..Default::default()
                });
            runner.run(&text, |hay| check(&hay)).unwrap();
        }
        let answered = answered.get();
        assert!(
            answered > 200,
            "the automata answered only {answered} times"
        );
    }

    /// The regexes compiled on first use compile, for every detector,
    /// context and group of the rules file.
    #[test]
    fn fallback_regexes_compile() {
        let s = scanner();
        assert!(s.detectors.iter().all(|d| d.single.get().is_some()));
        assert!(s.contexts.iter().all(|c| c.fallback.get().is_some()));
        assert!(s.groups.iter().all(|g| g.fallback.get().is_some()));
        assert!(OnDemand::new(vec!["(".into()]).get().is_none());
    }

    #[test]
    fn disabled_types_are_not_compiled() {
        let rules = rules::parse(crate::RULES_JSON).unwrap();
        let mut enabled = [false; PiiType::COUNT];
        enabled[PiiType::Email.index()] = true;
        let s = Scanner::new(&rules.detectors, &rules.groups, &enabled).unwrap();
        assert_eq!(found(&s, "a@b.io 123-45-6789").len(), 1);
        let none = Scanner::new(&rules.detectors, &rules.groups, &[false; PiiType::COUNT]).unwrap();
        assert_eq!(found(&none, "a@b.io"), []);
    }
}
