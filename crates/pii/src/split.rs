//! A detector's capture group from the bounds of its match, without an NFA
//! engine.
//!
//! Detectors that redact part of their match (`password=(...)`,
//! `Bearer (...)`) need the group's bounds inside a match the lazy DFA has
//! already found. A backtracker gets them, but its cost grows with the
//! pattern's states times the match length, and secret values are often
//! long (a JWT after `token=` is 500 bytes): it was the largest single cost
//! of the scan. When the group sits at the top level of the pattern,
//! `P (G) S`, its bounds can instead be read off small lazy DFAs:
//!
//! - the group starts at an end of `P` (anchored at the match start) that is
//!   also a start of `G S` (anchored at the match end, run backwards);
//! - it ends at an end of `P G` that is also a start of `S`.
//!
//! The bounds the backtracker would report are among those, so when each
//! set has exactly one member, that member is the answer; otherwise the
//! caller asks the backtracker. Usually `P` can end in only one place (the
//! `=` after `password`), so only a few bytes are read.

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};
use regex_syntax::hir::{Hir, HirKind};

/// The automata of one detector's `P (G) S`.
pub(crate) struct Split {
    /// `P`, forward.
    pre: DFA,
    /// `G S`, backward.
    group_post: DFA,
    /// `S` backward and `P G` forward; `None` when `S` is empty.
    post: Option<(DFA, DFA)>,
}

/// Lazy DFA caches of one [`Split`].
pub(crate) struct SplitCache {
    pre: Cache,
    group_post: Cache,
    post: Option<(Cache, Cache)>,
    a: Vec<usize>,
    b: Vec<usize>,
}

fn dfa(hir: &Hir, reverse: bool) -> Option<DFA> {
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .reverse(reverse)
                .utf8(false)
                .which_captures(thompson::WhichCaptures::None),
        )
        .build_from_hir(hir)
        .ok()?;
    DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .minimum_cache_clear_count(None),
        )
        .build_from_nfa(nfa)
        .ok()
}

impl Split {
    /// The automata for capture group `group` of `pattern` (Rust syntax,
    /// as the scanner compiles it), or `None` when the group is not a
    /// direct part of the pattern's top-level sequence.
    pub(crate) fn new(pattern: &str, group: usize) -> Option<Split> {
        let hir = syntax::parse_with(pattern, &syntax::Config::new().utf8(false)).ok()?;
        let HirKind::Concat(parts) = hir.kind() else {
            return None;
        };
        let (k, sub) = parts.iter().enumerate().find_map(|(k, h)| match h.kind() {
            HirKind::Capture(c) if c.index as usize == group => Some((k, &c.sub)),
            _ => None,
        })?;
        let pre = Hir::concat(parts[..k].to_vec());
        let group_hir = (**sub).clone();
        let post = Hir::concat(parts[k + 1..].to_vec());
        let mut group_post = vec![group_hir.clone()];
        group_post.extend_from_slice(&parts[k + 1..]);
        let post = if k + 1 == parts.len() {
            None
        } else {
            let mut pre_group = parts[..k].to_vec();
            pre_group.push(group_hir);
            Some((dfa(&post, true)?, dfa(&Hir::concat(pre_group), false)?))
        };
        Some(Split {
            pre: dfa(&pre, false)?,
            group_post: dfa(&Hir::concat(group_post), true)?,
            post,
        })
    }

    pub(crate) fn create_cache(&self) -> SplitCache {
        SplitCache {
            pre: self.pre.create_cache(),
            group_post: self.group_post.create_cache(),
            post: self
                .post
                .as_ref()
                .map(|(s, pg)| (s.create_cache(), pg.create_cache())),
            a: Vec::new(),
            b: Vec::new(),
        }
    }

    /// The group's bounds in the match `hay[s..e]` of the whole pattern,
    /// when only one is possible.
    pub(crate) fn group(
        &self,
        c: &mut SplitCache,
        hay: &[u8],
        s: usize,
        e: usize,
    ) -> Option<(usize, usize)> {
        c.a.clear();
        ends(&self.pre, &mut c.pre, hay, s, e, &mut c.a)?;
        let start = match c.a.as_slice() {
            [one] => *one,
            [] => return None,
            [lowest, ..] => {
                c.b.clear();
                starts(
                    &self.group_post,
                    &mut c.group_post,
                    hay,
                    *lowest,
                    e,
                    &mut c.b,
                )?;
                only_common(&c.a, &c.b)?
            }
        };
        let end = match (&self.post, &mut c.post) {
            (None, _) => e,
            (Some((post, pre_group)), Some((post_cache, pre_group_cache))) => {
                c.b.clear();
                starts(post, post_cache, hay, start, e, &mut c.b)?;
                match c.b.as_slice() {
                    [one] => *one,
                    [] => return None,
                    _ => {
                        c.a.clear();
                        ends(pre_group, pre_group_cache, hay, s, e, &mut c.a)?;
                        only_common(&c.a, &c.b)?
                    }
                }
            }
            (Some(_), None) => return None,
        };
        Some((start, end))
    }
}

/// The one position in both lists, if there is exactly one.
fn only_common(a: &[usize], b: &[usize]) -> Option<usize> {
    let mut common = a.iter().filter(|x| b.contains(x));
    let first = *common.next()?;
    common.next().is_none().then_some(first)
}

fn step(dfa: &DFA, cache: &mut Cache, sid: LazyStateID, byte: u8) -> Option<LazyStateID> {
    dfa.next_state(cache, sid, byte).ok()
}

/// Appends every `c` in `s..=limit` such that `dfa` matches `hay[s..c]`
/// (look-around sees the whole haystack), ascending. `None` if the
/// automaton gave up.
fn ends(
    dfa: &DFA,
    cache: &mut Cache,
    hay: &[u8],
    s: usize,
    limit: usize,
    out: &mut Vec<usize>,
) -> Option<()> {
    let input = Input::new(hay).range(s..limit).anchored(Anchored::Yes);
    let mut sid = dfa.start_state_forward(cache, &input).ok()?;
    for (at, &byte) in hay.iter().enumerate().take(limit).skip(s) {
        sid = step(dfa, cache, sid, byte)?;
        if sid.is_tagged() {
            if sid.is_match() {
                // Matches are reported one byte late.
                out.push(at);
            } else if sid.is_dead() {
                return Some(());
            } else if sid.is_quit() {
                return None;
            }
        }
    }
    sid = match hay.get(limit) {
        Some(&byte) => step(dfa, cache, sid, byte)?,
        None => dfa.next_eoi_state(cache, sid).ok()?,
    };
    if sid.is_match() {
        out.push(limit);
    }
    Some(())
}

/// Appends every `c` in `floor..=e` such that the reverse automaton `dfa`
/// matches `hay[c..e]`, descending. `None` if the automaton gave up.
fn starts(
    dfa: &DFA,
    cache: &mut Cache,
    hay: &[u8],
    floor: usize,
    e: usize,
    out: &mut Vec<usize>,
) -> Option<()> {
    let input = Input::new(hay).range(floor..e).anchored(Anchored::Yes);
    let mut sid = dfa.start_state_reverse(cache, &input).ok()?;
    for at in (floor..e).rev() {
        sid = step(dfa, cache, sid, hay[at])?;
        if sid.is_tagged() {
            if sid.is_match() {
                out.push(at + 1);
            } else if sid.is_dead() {
                return Some(());
            } else if sid.is_quit() {
                return None;
            }
        }
    }
    sid = match floor.checked_sub(1) {
        Some(before) => step(dfa, cache, sid, hay[before])?,
        None => dfa.next_eoi_state(cache, sid).ok()?,
    };
    if sid.is_match() {
        out.push(floor);
    }
    Some(())
}
