//! The [`Redactor`]: walks records, applies field rules, runs the detectors
//! on string values and rewrites what they find.
//!
//! A record is modified in place and a string is only reallocated when
//! something was found in it, so the common case (a timestamp, a UUID, a
//! product name) costs one automaton scan and no allocation. Field names
//! are the context a string alone lacks: a field rule can claim a whole
//! value (`password`, `billing.name`), while free-text detection still runs
//! everywhere else. Percent-encoded strings (URLs) are scanned in their
//! decoded form and the spans mapped back, so `bob%40example.com` is found
//! and replaced in the original encoding.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use hmac::{Hmac, Mac};
use regex_automata::meta::Regex;
use serde_json::Value;
use sha2::Sha256;

use crate::config::{Action, ConfigProblem, RedactConfig, Resolved, UserField, normalize_field};
use crate::names::{PersonFinder, PersonScratch};
use crate::rules::{self, FieldRuleSpec, RulesError};
use crate::scan::{F_CAPS2, ScanCache, Scanner, Span, overlap};
use crate::types::{FastMap, FastSet, PiiType, WordHash, contains_token, is_token};

/// Key of the process-wide default engine. Its pseudonyms are only used in
/// logs and failed-record captures, never for joins across tenants.
const DEFAULT_KEY: &[u8] = b"sluice default redaction key v1";

/// What a field rule requires of a value before it claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    NonEmpty,
    HasAt,
    PhoneLike,
    CardLike,
    SsnLike,
    IbanLike,
    PersonLike,
    AddressLike,
}

impl Check {
    fn parse(s: &str) -> Option<Check> {
        Some(match s {
            "nonempty" => Check::NonEmpty,
            "has_at" => Check::HasAt,
            "phone_like" => Check::PhoneLike,
            "card_like" => Check::CardLike,
            "ssn_like" => Check::SsnLike,
            "iban_like" => Check::IbanLike,
            "person_like" => Check::PersonLike,
            "address_like" => Check::AddressLike,
            _ => return None,
        })
    }

    fn holds(self, v: &str) -> bool {
        let digits = v.bytes().filter(u8::is_ascii_digit).count();
        let only = |allowed: &[u8]| {
            v.bytes()
                .all(|b| b.is_ascii_digit() || allowed.contains(&b))
        };
        match self {
            Check::NonEmpty => true,
            Check::HasAt => v.contains('@') || v.contains("%40"),
            Check::PhoneLike => digits >= 7 && only(b" +-.()/x%2B0"),
            Check::CardLike => (12..=19).contains(&digits) && only(b" -"),
            Check::SsnLike => digits == 9 && only(b" -"),
            Check::IbanLike => {
                let compact: Vec<u8> = v.bytes().filter(|b| *b != b' ').collect();
                (15..=34).contains(&compact.len())
                    && compact[..2].iter().all(u8::is_ascii_alphabetic)
                    && compact.iter().all(u8::is_ascii_alphanumeric)
            }
            Check::PersonLike => {
                v.chars().any(char::is_alphabetic)
                    && digits == 0
                    && !v.contains('@')
                    && v.len() <= 120
                    && v.split_whitespace().count() <= 6
            }
            Check::AddressLike => v.chars().any(char::is_alphabetic) && v.len() <= 300,
        }
    }
}

struct FieldRule {
    kind: PiiType,
    check: Check,
    keep_prefix: Option<Regex>,
    parents: FastSet<String>,
}

/// Field-name rules from the rules file, indexed for cheap lookups.
struct FieldRules {
    rules: Vec<FieldRule>,
    exact: FastMap<String, Vec<usize>>,
    suffixes: FastMap<String, usize>,
    prefixes: FastMap<String, usize>,
    except: FastSet<String>,
}

impl FieldRules {
    fn new(specs: &[FieldRuleSpec]) -> Result<FieldRules, RulesError> {
        let mut out = FieldRules {
            rules: Vec::new(),
            exact: FastMap::default(),
            suffixes: FastMap::default(),
            prefixes: FastMap::default(),
            except: FastSet::default(),
        };
        for (index, spec) in specs.iter().enumerate() {
            let err = |message: String| RulesError::FieldRule { index, message };
            let kind = PiiType::parse(&spec.kind)
                .ok_or_else(|| err(format!("unknown type {:?}", spec.kind)))?;
            let check = Check::parse(&spec.check)
                .ok_or_else(|| err(format!("unknown check {:?}", spec.check)))?;
            let keep_prefix = match &spec.keep_prefix {
                None => None,
                Some(p) => {
                    let ci = rules::case_insensitive(&spec.keep_prefix_flags).map_err(err)?;
                    let t = rules::translate(p, ci).map_err(err)?;
                    Some(Regex::new(&t).map_err(|e| err(e.to_string()))?)
                }
            };
            let id = out.rules.len();
            out.rules.push(FieldRule {
                kind,
                check,
                keep_prefix,
                parents: spec.parents.iter().map(|p| p.to_lowercase()).collect(),
            });
            for n in &spec.names {
                out.exact.entry(n.to_lowercase()).or_default().push(id);
            }
            for s in &spec.suffixes {
                out.suffixes.entry(s.to_lowercase()).or_insert(id);
            }
            for p in &spec.prefixes {
                out.prefixes.entry(p.to_lowercase()).or_insert(id);
            }
            out.except
                .extend(spec.except.iter().map(|e| e.to_lowercase()));
        }
        Ok(out)
    }

    /// What [`FieldRules::lookup`] answers for `key` (normalized), as far
    /// as it can be told without the parent.
    fn rule_ref(&self, key: &str) -> RuleRef {
        if self.except.contains(key) {
            return RuleRef::None;
        }
        if let Some(ids) = self.exact.get(key) {
            return match ids.first() {
                Some(id) if self.rules[*id].parents.is_empty() => RuleRef::Rule(*id),
                Some(_) => RuleRef::ByParent,
                None => RuleRef::None,
            };
        }
        match self.lookup(key, None) {
            Some(rule) => self
                .rules
                .iter()
                .position(|r| std::ptr::eq(r, rule))
                .map_or(RuleRef::None, RuleRef::Rule),
            None => RuleRef::None,
        }
    }

    /// The rule for a normalized field name inside an object held under
    /// `parent` (normalized), if any.
    fn lookup(&self, key: &str, parent: Option<&str>) -> Option<&FieldRule> {
        if self.except.contains(key) {
            return None;
        }
        if let Some(ids) = self.exact.get(key) {
            for id in ids {
                let rule = &self.rules[*id];
                if rule.parents.is_empty() || parent.is_some_and(|p| rule.parents.contains(p)) {
                    return Some(rule);
                }
            }
            return None;
        }
        for (i, b) in key.bytes().enumerate() {
            if b != b'_' {
                continue;
            }
            if let Some(id) = self.suffixes.get(&key[i..]) {
                return Some(&self.rules[*id]);
            }
            if let Some(id) = self.prefixes.get(&key[..=i]) {
                return Some(&self.rules[*id]);
            }
        }
        None
    }
}

/// The field rule a key gets, as far as the key alone decides it.
#[derive(Debug, Clone, Copy)]
enum RuleRef {
    None,
    /// Index into [`FieldRules::rules`].
    Rule(usize),
    /// Depends on the parent's name: looked up per value.
    ByParent,
}

/// What a field name means for its string values, cached per name.
#[derive(Debug, Clone, Copy)]
struct KeyInfo {
    /// Types its values ignore ([`Redactor::exempt_mask`]).
    exempt: u32,
    /// A field rule from the config.
    user: Option<UserField>,
    /// A field rule from the rules file (enabled types only).
    rule: RuleRef,
}

/// Slots of the field-name cache.
const KEY_SLOTS: usize = 1024;
/// Longer field names are not cached.
const KEY_CACHE_NAME_BYTES: usize = 32;

/// What field names mean, remembered per [`Work`]: a direct-mapped cache
/// (one name per slot, a new name evicts the old). Names come from record
/// data, so a hash table could be flooded with colliding names; here a
/// collision only costs a miss, and the memory is fixed.
struct KeyCache {
    names: Vec<[u8; KEY_CACHE_NAME_BYTES]>,
    /// Length of the name in each slot; `u8::MAX` when empty.
    lens: Vec<u8>,
    infos: Vec<KeyInfo>,
}

impl KeyCache {
    fn new() -> KeyCache {
        KeyCache {
            names: vec![[0; KEY_CACHE_NAME_BYTES]; KEY_SLOTS],
            lens: vec![u8::MAX; KEY_SLOTS],
            infos: vec![
                KeyInfo {
                    exempt: 0,
                    user: None,
                    rule: RuleRef::None,
                };
                KEY_SLOTS
            ],
        }
    }

    fn slot(name: &str) -> usize {
        use std::hash::Hasher;
        let mut h = WordHash::default();
        h.write(name.as_bytes());
        (h.finish() as usize) % KEY_SLOTS
    }

    fn get(&self, name: &str) -> Option<KeyInfo> {
        if name.len() > KEY_CACHE_NAME_BYTES {
            return None;
        }
        let i = Self::slot(name);
        (usize::from(self.lens[i]) == name.len() && self.names[i][..name.len()] == *name.as_bytes())
            .then(|| self.infos[i])
    }

    fn put(&mut self, name: &str, info: KeyInfo) {
        if name.len() > KEY_CACHE_NAME_BYTES {
            return;
        }
        let i = Self::slot(name);
        self.names[i][..name.len()].copy_from_slice(name.as_bytes());
        self.lens[i] = u8::try_from(name.len()).unwrap_or(u8::MAX);
        self.infos[i] = info;
    }
}

/// Scratch state of a record walk: the detectors' caches and what field
/// names mean. Pooled by the [`Redactor`], so it outlives one record.
pub(crate) struct Work {
    path: Vec<String>,
    norm: String,
    parent_norm: String,
    cache: ScanCache,
    keys: KeyCache,
    person: PersonScratch,
    found: Vec<Span>,
}

/// What happens to one string value.
pub(crate) enum Outcome {
    Keep,
    Replace(String),
    Remove,
}

/// The redaction engine. Immutable once built: `Send + Sync`, cheap to
/// share in an `Arc`.
pub struct Redactor {
    scanner: Arc<Scanner>,
    persons: Option<PersonFinder>,
    field_rules: FieldRules,
    user_fields: FastMap<String, UserField>,
    pub(crate) resolved: Resolved,
    /// Whether [`Redactor::redact_json_line`] can follow the `only`
    /// pointers (see [`Resolved::only_fits_lines`]).
    pub(crate) only_lines: bool,
    placeholders: FastSet<String>,
    sibling_name_keys: Vec<String>,
    /// Field names (exact, and suffixes starting with '_') whose values
    /// ignore some types, as a bit mask over [`PiiType::index`].
    exempt_exact: FastMap<String, u32>,
    exempt_suffixes: FastMap<String, u32>,
    key: Vec<u8>,
    /// Set only when the built-in rules failed to load: every string is
    /// replaced, so a broken build fails closed instead of leaking.
    fail_closed: bool,
    /// Scratch states not in use, one per thread that redacted at once.
    pool: Mutex<Vec<Work>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("enabled", &self.resolved.enabled)
            .field("actions", &self.resolved.actions)
            .field("fail_closed", &self.fail_closed)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// Builds an engine for `config`; `hash_key` keys the `hash` action's
    /// HMAC (use one key per tenant). Reports every config problem.
    pub fn new(config: &RedactConfig, hash_key: &[u8]) -> Result<Redactor, Vec<ConfigProblem>> {
        let resolved = config.resolve()?;
        let rules_problem = |e: RulesError| {
            vec![ConfigProblem {
                pointer: String::new(),
                message: format!("built-in rules: {e}"),
            }]
        };
        let rules = rules::parse(crate::RULES_JSON).map_err(rules_problem)?;
        let scanner = shared_scanner(&rules, &resolved.enabled).map_err(rules_problem)?;
        let field_rules = FieldRules::new(&rules.field_rules).map_err(rules_problem)?;
        let persons =
            resolved.enabled[PiiType::Person.index()].then(|| PersonFinder::new(&rules.person));
        let user_fields = resolved.fields.iter().cloned().collect();
        let mut exempt_exact: FastMap<String, u32> = FastMap::default();
        let mut exempt_suffixes: FastMap<String, u32> = FastMap::default();
        for (index, spec) in rules.field_exempt.iter().enumerate() {
            let mut mask = 0u32;
            for t in &spec.types {
                let kind = PiiType::parse(t).ok_or_else(|| {
                    rules_problem(RulesError::FieldRule {
                        index,
                        message: format!("field_exempt: unknown type {t:?}"),
                    })
                })?;
                mask |= 1 << kind.index();
            }
            for n in &spec.names {
                *exempt_exact.entry(n.to_lowercase()).or_default() |= mask;
            }
            for n in &spec.suffixes {
                *exempt_suffixes.entry(n.to_lowercase()).or_default() |= mask;
            }
        }
        Ok(Redactor {
            scanner,
            persons,
            field_rules,
            user_fields,
            only_lines: resolved.only_fits_lines(),
            resolved,
            placeholders: rules
                .placeholders
                .iter()
                .map(|p| p.to_lowercase())
                .collect(),
            sibling_name_keys: rules.value_of_sibling_name_keys,
            exempt_exact,
            exempt_suffixes,
            key: hash_key.to_vec(),
            fail_closed: false,
            pool: Mutex::new(Vec::new()),
        })
    }

    fn fail_closed() -> Redactor {
        Redactor {
            scanner: Arc::new(Scanner::empty()),
            persons: None,
            field_rules: FieldRules {
                rules: Vec::new(),
                exact: FastMap::default(),
                suffixes: FastMap::default(),
                prefixes: FastMap::default(),
                except: FastSet::default(),
            },
            user_fields: FastMap::default(),
            resolved: Resolved {
                enabled: [true; PiiType::COUNT],
                actions: [Action::Mask; PiiType::COUNT],
                fields: Vec::new(),
                allow_values: Vec::new(),
                allow_domains: Vec::new(),
                skip: Vec::new(),
                only: Vec::new(),
                field_names: false,
            },
            only_lines: true,
            placeholders: FastSet::default(),
            sibling_name_keys: Vec::new(),
            exempt_exact: FastMap::default(),
            exempt_suffixes: FastMap::default(),
            key: DEFAULT_KEY.to_vec(),
            fail_closed: true,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Whether [`Redactor::redact_json_line`] takes lines at all with this
    /// config (it still gives up on single lines it cannot reproduce
    /// exactly). False when the `only` pointers hold array indexes or lie
    /// inside one another: then every line takes the `Value` path.
    pub fn lines_supported(&self) -> bool {
        self.resolved.only.is_empty() || self.only_lines
    }

    /// Redacts every string value of `record` in place. Object keys give
    /// context to their values; `remove` actions delete keys (or array
    /// elements) whose whole value is sensitive.
    pub fn redact_record(&self, record: &mut Value) {
        if self.resolved.skip.iter().any(Vec::is_empty) {
            return;
        }
        let mut w = self.work();
        if self.resolved.only.is_empty() {
            self.walk(record, None, None, &mut w);
        } else {
            for tokens in &self.resolved.only {
                self.walk_at(record, tokens, &mut w);
            }
        }
        self.end_work(w);
    }

    /// Scratch state for one record, from the pool; give it back with
    /// [`Self::end_work`].
    pub(crate) fn work(&self) -> Work {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        pooled.unwrap_or_else(|| Work {
            path: Vec::new(),
            norm: String::new(),
            parent_norm: String::new(),
            cache: self.scanner.create_cache(),
            keys: KeyCache::new(),
            person: PersonScratch::default(),
            found: Vec::new(),
        })
    }

    pub(crate) fn end_work(&self, w: Work) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < 64
        {
            p.push(w);
        }
    }

    /// What field name `k` means for its values, from `w`'s cache.
    fn key_info(&self, k: &str, w: &mut Work) -> KeyInfo {
        if let Some(info) = w.keys.get(k) {
            return info;
        }
        normalize_field(k, &mut w.norm);
        let norm = w.norm.as_str();
        let rule = if self.resolved.field_names {
            match self.field_rules.rule_ref(norm) {
                RuleRef::Rule(id)
                    if !self.resolved.enabled[self.field_rules.rules[id].kind.index()] =>
                {
                    RuleRef::None
                }
                r => r,
            }
        } else {
            RuleRef::None
        };
        let info = KeyInfo {
            exempt: self.exempt_mask(norm),
            user: self.user_fields.get(norm).copied(),
            rule,
        };
        w.keys.put(k, info);
        info
    }

    /// The keys whose string value names a sibling `value` field.
    pub(crate) fn sibling_name_keys(&self) -> &[String] {
        &self.sibling_name_keys
    }

    /// Walks the value at `tokens` (an `only` pointer), with the field
    /// names above it as context; removes it when its action says so.
    fn walk_at(&self, record: &mut Value, tokens: &[String], w: &mut Work) {
        let Some((last, parents)) = tokens.split_last() else {
            self.walk(record, None, None, w);
            return;
        };
        let mut container = record;
        for t in parents {
            container = match container {
                Value::Object(map) => match map.get_mut(t) {
                    Some(v) => v,
                    None => return,
                },
                Value::Array(items) => match t.parse::<usize>().ok().and_then(|i| items.get_mut(i))
                {
                    Some(v) => v,
                    None => return,
                },
                _ => return,
            };
        }
        let key_of =
            |t: &String| -> Option<String> { (t.parse::<usize>().is_err()).then(|| t.clone()) };
        let key = key_of(last).or_else(|| parents.iter().rev().find_map(key_of));
        let parent = parents
            .iter()
            .rev()
            .filter_map(key_of)
            .nth(usize::from(key_of(last).is_none()));
        if !self.resolved.skip.is_empty() {
            w.path = tokens.to_vec();
        }
        match container {
            Value::Object(map) => {
                let remove = match map.get_mut(last) {
                    Some(v) => self.walk(v, key.as_deref(), parent.as_deref(), w),
                    None => false,
                };
                if remove {
                    map.remove(last);
                }
            }
            Value::Array(items) => {
                if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < items.len())
                    && self.walk(&mut items[i], key.as_deref(), parent.as_deref(), w)
                {
                    items.remove(i);
                }
            }
            _ => {}
        }
        w.path.clear();
    }

    /// Redacts free text (a log line, a message) with no field context.
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.fail_closed {
            return if text.is_empty() {
                Cow::Borrowed(text)
            } else {
                Cow::Owned("[REDACTED]".into())
            };
        }
        let mut w = self.work();
        let out = self.redact_free(text, 0, &mut w);
        self.end_work(w);
        match out {
            Some(s) => Cow::Owned(s),
            None => Cow::Borrowed(text),
        }
    }

    /// Returns true when the caller should remove this value.
    fn walk(&self, v: &mut Value, key: Option<&str>, parent: Option<&str>, w: &mut Work) -> bool {
        let track = !self.resolved.skip.is_empty();
        if track && self.resolved.skip.contains(&w.path) {
            return false;
        }
        match v {
            Value::String(s) => match self.redact_field(s, key, parent, w) {
                Outcome::Keep => false,
                Outcome::Replace(n) => {
                    *s = n;
                    false
                }
                Outcome::Remove => true,
            },
            Value::Object(map) => {
                let sibling = self.sibling_name(map);
                let mut remove = Vec::new();
                for (k, child) in map.iter_mut() {
                    if track {
                        w.path.push(k.clone());
                    }
                    let ctx = match (&sibling, k.as_str()) {
                        (Some(name), "value") => name.as_str(),
                        _ => k.as_str(),
                    };
                    if self.walk(child, Some(ctx), key, w) {
                        remove.push(k.clone());
                    }
                    if track {
                        w.path.pop();
                    }
                }
                for k in remove {
                    map.remove(&k);
                }
                false
            }
            Value::Array(items) => {
                let mut i = 0;
                let mut index = 0;
                while i < items.len() {
                    if track {
                        w.path.push(index.to_string());
                    }
                    let drop = self.walk(&mut items[i], key, parent, w);
                    if track {
                        w.path.pop();
                    }
                    if drop {
                        items.remove(i);
                    } else {
                        i += 1;
                    }
                    index += 1;
                }
                false
            }
            _ => false,
        }
    }

    /// For `{"name": "password", "value": "..."}` shaped objects (form
    /// fields, HAR headers), the name that gives `value` its meaning.
    fn sibling_name(&self, map: &serde_json::Map<String, Value>) -> Option<String> {
        if !matches!(map.get("value"), Some(Value::String(_))) {
            return None;
        }
        self.sibling_name_keys
            .iter()
            .find_map(|k| match map.get(k) {
                Some(Value::String(s)) if k != "value" && s.len() <= 64 => Some(s.clone()),
                _ => None,
            })
    }

    /// What happens to the string value `s` of field `key` in an object
    /// held under `parent`.
    pub(crate) fn redact_field(
        &self,
        s: &str,
        key: Option<&str>,
        parent: Option<&str>,
        w: &mut Work,
    ) -> Outcome {
        if s.is_empty() {
            return Outcome::Keep;
        }
        if self.fail_closed {
            return Outcome::Replace("[REDACTED]".into());
        }
        let mut exempt = 0;
        if let Some(k) = key {
            let info = self.key_info(k, w);
            exempt = info.exempt;
            if let Some(rule) = info.user {
                if self.is_placeholder(s) {
                    return Outcome::Keep;
                }
                let action = rule
                    .action
                    .unwrap_or(self.resolved.actions[rule.kind.index()]);
                return self.whole(s, rule.kind, action, 0);
            }
            let rule = match info.rule {
                RuleRef::None => None,
                RuleRef::Rule(id) => self.field_rules.rules.get(id),
                RuleRef::ByParent => {
                    normalize_field(k, &mut w.norm);
                    let p = parent.map(|p| {
                        normalize_field(p, &mut w.parent_norm);
                        w.parent_norm.as_str()
                    });
                    self.field_rules
                        .lookup(&w.norm, p)
                        .filter(|rule| self.resolved.enabled[rule.kind.index()])
                }
            };
            if let Some(rule) = rule
                && let Some(outcome) = self.apply_field_rule(s, rule, w)
            {
                return outcome;
            }
        }
        match self.redact_free(s, exempt, w) {
            // Everything in the value was removed: remove the field.
            Some(n) if n.trim().is_empty() => Outcome::Remove,
            Some(n) => Outcome::Replace(n),
            None => Outcome::Keep,
        }
    }

    fn apply_field_rule(&self, s: &str, rule: &FieldRule, w: &mut Work) -> Option<Outcome> {
        let trimmed = s.trim();
        if self.is_placeholder(trimmed) {
            return Some(Outcome::Keep);
        }
        // Already redacted (partly): judge only what is left, as free text.
        if contains_token(trimmed) {
            return None;
        }
        if !rule.check.holds(trimmed) {
            return None;
        }
        let action = self.resolved.actions[rule.kind.index()];
        if action == Action::Remove {
            return Some(self.whole(s, rule.kind, action, 0));
        }
        // Types with a precise detector prefer its spans, so surrounding
        // text ("john@x.io (work)") survives; the whole value is the
        // fallback.
        let precise = matches!(
            rule.kind,
            PiiType::Email | PiiType::Phone | PiiType::CreditCard | PiiType::UsSsn | PiiType::Iban
        );
        if precise && let Some(n) = self.redact_free(s, 0, w) {
            return Some(Outcome::Replace(n));
        }
        let keep = rule
            .keep_prefix
            .as_ref()
            .and_then(|re| re.find(s.as_bytes()))
            .filter(|m| m.start() == 0)
            .map_or(0, |m| m.end());
        if keep > 0 && keep < s.len() {
            let rest = &s[keep..];
            if self.is_placeholder(rest) {
                return Some(Outcome::Keep);
            }
            let rep = self.replacement(rule.kind, action, rest);
            return Some(Outcome::Replace(format!("{}{rep}", &s[..keep])));
        }
        Some(self.whole(s, rule.kind, action, 0))
    }

    fn whole(&self, s: &str, kind: PiiType, action: Action, keep: usize) -> Outcome {
        if action == Action::Remove && keep == 0 {
            return Outcome::Remove;
        }
        if self.is_allowed(kind, s) {
            return Outcome::Keep;
        }
        Outcome::Replace(self.replacement(kind, action, s))
    }

    fn exempt_mask(&self, key: &str) -> u32 {
        if self.exempt_exact.is_empty() && self.exempt_suffixes.is_empty() {
            return 0;
        }
        let mut mask = self.exempt_exact.get(key).copied().unwrap_or(0);
        for (i, b) in key.bytes().enumerate() {
            if b == b'_'
                && let Some(m) = self.exempt_suffixes.get(&key[i..])
            {
                mask |= m;
            }
        }
        mask
    }

    fn is_placeholder(&self, s: &str) -> bool {
        let t = s.trim();
        // Placeholders are short words; lower-case ASCII on the stack
        // instead of allocating for every value of a sensitive field.
        let mut buf = [0u8; 32];
        let listed = match buf.get_mut(..t.len()) {
            Some(lower) if t.is_ascii() => {
                lower.copy_from_slice(t.as_bytes());
                lower.make_ascii_lowercase();
                std::str::from_utf8(lower).is_ok_and(|l| self.placeholders.contains(l))
            }
            _ => self.placeholders.contains(&t.to_lowercase()),
        };
        listed || is_token(t)
    }

    /// Detects spans in free text and rewrites them; `None` when nothing
    /// changes.
    fn redact_free(&self, s: &str, exempt: u32, w: &mut Work) -> Option<String> {
        w.cache.recheck = false;
        let mut out = self.redact_pass(s, exempt, w)?;
        // Redacting the output again must change nothing. A string where a
        // candidate was dropped for overlapping a finding can leave the
        // second pass something new: once the finding is a token, the part
        // of the candidate outside it may match on its own ("Ring
        // 2.135.2lz-x@b.io": the street wins over the address starting at
        // "2", and "35.2lz-x@b.io" is an address next to the street's
        // token). So can a percent-encoded string, judged decoded and as
        // written, where a finding in one view wins over one in the other
        // ("s://:%27@r@b.io": the decoded e-mail address wins over the
        // written credentials, which become "%27" once it is a token).
        // Such strings, and every percent-encoded one (the two views can
        // disagree in more ways than that), are redacted until they stop
        // changing.
        if w.cache.recheck {
            for _ in 0..MORE_PASSES {
                match self.redact_pass(&out, exempt, w) {
                    Some(next) if next != out => out = next,
                    _ => break,
                }
            }
        }
        Some(out)
    }

    /// One pass of [`Redactor::redact_free`].
    fn redact_pass(&self, s: &str, exempt: u32, w: &mut Work) -> Option<String> {
        let spans = self.detect(s, w);
        if spans.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        let mut changed = false;
        for sp in &spans {
            let (start, end) = widen_to_chars(s, sp.start, sp.end);
            if start < last || exempt & (1 << sp.kind.index()) != 0 {
                continue;
            }
            let value = &s[start..end];
            if self.is_allowed(sp.kind, value) {
                continue;
            }
            let action = self.resolved.actions[sp.kind.index()];
            out.push_str(&s[last..start]);
            out.push_str(&self.replacement(sp.kind, action, value));
            last = end;
            changed = true;
        }
        if !changed {
            return None;
        }
        out.push_str(&s[last..]);
        Some(out)
    }

    /// All spans of `s`, sorted and non-overlapping, in `s`'s offsets.
    fn detect(&self, s: &str, w: &mut Work) -> Vec<Span> {
        let bytes = s.as_bytes();
        let mut spans = Vec::new();
        if trivially_clean(bytes) {
            return spans;
        }
        if let Some(view) = PercentView::new(bytes) {
            let features = self.scanner.scan(&view.decoded, &mut w.cache, &mut spans);
            let decoded_text = std::str::from_utf8(&view.decoded).ok();
            if let Some(persons) = &self.persons
                && features & F_CAPS2 != 0
                && let Some(text) = decoded_text
            {
                w.found.clear();
                persons.find(text, &spans, &mut w.person, &mut w.found);
                merge(&mut spans, &w.found);
            }
            for sp in &mut spans {
                let (a, b) = view.map(sp.start, sp.end);
                sp.start = a;
                sp.end = b;
            }
            // The text as written is scanned too: decoding can also hide a
            // finding. In "db://u%40x.io:pw@host" only the written form has
            // credentials (the decoded '@' cannot be part of a user name),
            // and once the e-mail address is replaced they would be found.
            // Its spans fill in where the decoded view found nothing.
            let mut written = Vec::new();
            let written_features = self.scanner.scan(bytes, &mut w.cache, &mut written);
            // Two views can disagree: see `redact_free`.
            w.cache.recheck = true;
            written.retain(|r| overlap(&spans, *r).is_none());
            merge(&mut spans, &written);
            // Decoded bytes that are not UTF-8 ("%e7" alone) leave the
            // names to the text as written.
            if let Some(persons) = &self.persons
                && decoded_text.is_none()
                && written_features & F_CAPS2 != 0
            {
                w.found.clear();
                persons.find(s, &spans, &mut w.person, &mut w.found);
                merge(&mut spans, &w.found);
            }
        } else {
            let features = self.scanner.scan(bytes, &mut w.cache, &mut spans);
            if let Some(persons) = &self.persons
                && features & F_CAPS2 != 0
            {
                w.found.clear();
                persons.find(s, &spans, &mut w.person, &mut w.found);
                merge(&mut spans, &w.found);
            }
        }
        spans
    }

    fn is_allowed(&self, kind: PiiType, value: &str) -> bool {
        if self.resolved.allow_values.is_empty() && self.resolved.allow_domains.is_empty() {
            return false;
        }
        let lower = value.trim().to_lowercase();
        if self.resolved.allow_values.contains(&lower) {
            return true;
        }
        let host = match kind {
            PiiType::Email => lower.rsplit(['@']).next().unwrap_or(""),
            _ => lower.as_str(),
        };
        let host = host.strip_prefix("%40").unwrap_or(host);
        let host = match lower.rfind("%40") {
            Some(i) if kind == PiiType::Email => &lower[i + 3..],
            _ => host,
        };
        self.resolved.allow_domains.iter().any(|d| {
            host == d
                || host
                    .strip_suffix(d.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        })
    }

    fn replacement(&self, kind: PiiType, action: Action, value: &str) -> String {
        match action {
            Action::Mask => {
                let name = kind.as_str();
                let mut token = String::with_capacity(name.len() + 2);
                token.push('[');
                token.push_str(name);
                token.push(']');
                token
            }
            Action::Remove => String::new(),
            Action::Partial => partial(value),
            Action::Hash => format!("[{}:{}]", kind.as_str(), self.pseudonym(kind, value)),
        }
    }

    /// First 8 bytes (16 hex digits) of HMAC-SHA256(key, TYPE ":" value),
    /// with the value normalized so that the same email or card written
    /// differently gets the same pseudonym.
    fn pseudonym(&self, kind: PiiType, value: &str) -> String {
        let normalized: Cow<'_, str> = match kind {
            PiiType::Email => Cow::Owned(value.to_lowercase().replace("%40", "@")),
            PiiType::Phone | PiiType::CreditCard | PiiType::UsSsn => {
                Cow::Owned(value.chars().filter(char::is_ascii_digit).collect())
            }
            PiiType::Iban => Cow::Owned(value.chars().filter(|c| !c.is_whitespace()).collect()),
            _ => Cow::Borrowed(value),
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC accepts keys of any length; unreachable in practice.
            return "0000000000000000".into();
        };
        mac.update(kind.as_str().as_bytes());
        mac.update(b":");
        mac.update(normalized.as_bytes());
        let tag = mac.finalize().into_bytes();
        hex::encode(&tag[..8])
    }
}

/// Whether no detector can match anywhere in `s`, decided from its shape
/// alone: very short strings, lower-case hex digests and short numbers,
/// UUIDs and ISO 8601 timestamps. These are a large share of all string
/// values, so skipping them matters; the shapes are chosen so that no
/// pattern of the rules file can match inside them (a detector needs a
/// word boundary before a digit run, an '@', ':', '+', a space or an
/// upper-case letter that these shapes do not have).
fn trivially_clean(s: &[u8]) -> bool {
    if s.len() < 5 {
        return true;
    }
    let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if s.iter().all(lower_hex) {
        // All digits from 9 on may be an SSN, a phone or a card number.
        return s.len() <= 8 || s.iter().any(|b| !b.is_ascii_digit());
    }
    if s.len() == 36 {
        let uuid = s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
        if uuid {
            return true;
        }
    }
    is_iso_timestamp(s)
}

/// `YYYY-MM-DD[T ]hh:mm[:ss[.frac]][Z|±hh[:]mm]`.
fn is_iso_timestamp(s: &[u8]) -> bool {
    let digits =
        |r: std::ops::Range<usize>| s.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if s.len() < 16
        || !digits(0..4)
        || s[4] != b'-'
        || !digits(5..7)
        || s[7] != b'-'
        || !digits(8..10)
        || !(s[10] == b'T' || s[10] == b' ')
        || !digits(11..13)
        || s[13] != b':'
        || !digits(14..16)
    {
        return false;
    }
    let mut i = 16;
    if s.get(i) == Some(&b':') {
        if !digits(i + 1..i + 3) {
            return false;
        }
        i += 3;
        if matches!(s.get(i), Some(b'.' | b',')) {
            i += 1;
            let start = i;
            while s.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return false;
            }
        }
    }
    match s.get(i) {
        None => true,
        Some(b'Z') => i + 1 == s.len(),
        Some(b'+' | b'-') => {
            let rest = &s[i + 1..];
            (rest.len() == 4 && rest.iter().all(u8::is_ascii_digit))
                || (rest.len() == 5
                    && rest[2] == b':'
                    && digits(i + 1..i + 3)
                    && digits(i + 4..i + 6))
        }
        _ => false,
    }
}

/// Keeps the last four letters or digits and stars the others; separators
/// stay, so the value keeps its shape.
fn partial(value: &str) -> String {
    let alnum = value.chars().filter(|c| c.is_alphanumeric()).count();
    let keep_from = alnum.saturating_sub(4);
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                seen += 1;
                if seen > keep_from { c } else { '*' }
            } else {
                c
            }
        })
        .collect()
}

fn widen_to_chars(s: &str, mut start: usize, mut end: usize) -> (usize, usize) {
    start = start.min(s.len());
    end = end.min(s.len());
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    while !s.is_char_boundary(end) {
        end += 1;
    }
    (start, end)
}

/// Adds `extra` spans (which do not overlap `spans`) keeping order.
fn merge(spans: &mut Vec<Span>, extra: &[Span]) {
    if extra.is_empty() {
        return;
    }
    spans.extend_from_slice(extra);
    spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
}

/// The percent-decoded form of a string and the way back to its offsets.
struct PercentView {
    decoded: Vec<u8>,
    /// For each decoded byte: its start and end in the original.
    origin: Vec<(usize, usize)>,
}

/// More passes after the first over a string that may need them, at most
/// (see [`Redactor::redact_free`]).
const MORE_PASSES: usize = 3;

/// Whether `s` has a `%XX` escape.
fn has_percent_escape(s: &[u8]) -> bool {
    let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
    memchr::memchr_iter(b'%', s).any(|at| hex(s.get(at + 1)) && hex(s.get(at + 2)))
}

impl PercentView {
    fn new(s: &[u8]) -> Option<PercentView> {
        if !has_percent_escape(s) {
            return None;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let mut decoded = Vec::with_capacity(s.len());
        let mut origin = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%'
                && let (Some(h), Some(l)) = (
                    s.get(i + 1).and_then(|b| hex(*b)),
                    s.get(i + 2).and_then(|b| hex(*b)),
                )
            {
                decoded.push((h * 16 + l) as u8);
                origin.push((i, i + 3));
                i += 3;
                continue;
            }
            decoded.push(s[i]);
            origin.push((i, i + 1));
            i += 1;
        }
        Some(PercentView { decoded, origin })
    }

    fn map(&self, start: usize, end: usize) -> (usize, usize) {
        let a = self.origin.get(start).map_or(0, |o| o.0);
        let b = end
            .checked_sub(1)
            .and_then(|e| self.origin.get(e))
            .map_or(a, |o| o.1);
        (a, b)
    }
}

/// Scanners by the types they detect. A scanner depends only on those and
/// the built-in rules, and building one is most of building an engine, so
/// engines with the same types share one: `sluice run` validates a
/// pipeline and then builds it, and a server runs many pipelines with the
/// default types. The last one built is kept alive for the build that
/// usually follows a validation; the others live as long as an engine
/// uses them.
fn shared_scanner(
    rules: &rules::RulesFile,
    enabled: &[bool; PiiType::COUNT],
) -> Result<Arc<Scanner>, RulesError> {
    type Shared = (
        Vec<([bool; PiiType::COUNT], Weak<Scanner>)>,
        Option<Arc<Scanner>>,
    );
    static SHARED: Mutex<Shared> = Mutex::new((Vec::new(), None));
    if let Ok(shared) = SHARED.lock()
        && let Some(scanner) = shared
            .0
            .iter()
            .find(|(e, _)| e == enabled)
            .and_then(|(_, w)| w.upgrade())
    {
        return Ok(scanner);
    }
    let scanner = Arc::new(Scanner::new(&rules.detectors, &rules.groups, enabled)?);
    if let Ok(mut shared) = SHARED.lock() {
        // Another thread may have built the same scanner meanwhile: keep
        // one, so that engines with the same types always share it.
        if let Some(first) = shared
            .0
            .iter()
            .find(|(e, _)| e == enabled)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(first);
        }
        shared
            .0
            .retain(|(e, w)| w.strong_count() > 0 && e != enabled);
        shared.0.push((*enabled, Arc::downgrade(&scanner)));
        shared.1 = Some(Arc::clone(&scanner));
    }
    Ok(scanner)
}

/// The process-wide default engine (default config, fixed key), used for
/// logs and failed-record captures.
pub fn default_redactor() -> &'static Redactor {
    static DEFAULT: OnceLock<Redactor> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        Redactor::new(&RedactConfig::default(), DEFAULT_KEY)
            .unwrap_or_else(|_| Redactor::fail_closed())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn redactor(cfg: serde_json::Value) -> Redactor {
        let cfg: RedactConfig = serde_json::from_value(cfg).unwrap();
        Redactor::new(&cfg, b"tenant-key").unwrap()
    }

    /// `text` redacted once, after checking that redacting that again
    /// changes nothing (whatever a second pass finds, the first left in).
    fn redact_stable(r: &Redactor, text: &str) -> String {
        let once = r.redact_text(text).into_owned();
        assert_eq!(r.redact_text(&once), once, "a second pass changed {text:?}");
        once
    }

    #[test]
    fn send_sync_and_default_loads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Redactor>();
        assert!(!default_redactor().fail_closed);
    }

    #[test]
    fn masks_fields_and_free_text() {
        let r = redactor(json!({}));
        let mut rec = json!({
            "user": {"email": "bob@example.com", "id": "1069790534", "name": "Diana Carter"},
            "password": "hunter2",
            "headers": {"authorization": "Bearer abcdefghijklmnopqrstuvwxyz"},
            "msg": "card 4539 1488 0343 6467 from 191.112.33.56",
            "items": [{"name": "Standing Desk"}],
            "form": [{"name": "passwd", "value": "s3cr3t!"}],
            "n": 5
        });
        r.redact_record(&mut rec);
        assert_eq!(
            rec,
            json!({
                "user": {"email": "[EMAIL]", "id": "1069790534", "name": "[PERSON]"},
                "password": "[SECRET]",
                "headers": {"authorization": "Bearer [SECRET]"},
                "msg": "card [CREDIT_CARD] from [IPV4]",
                "items": [{"name": "Standing Desk"}],
                "form": [{"name": "passwd", "value": "[SECRET]"}],
                "n": 5
            })
        );
    }

    #[test]
    fn percent_encoded_values_are_found_and_replaced_in_place() {
        let r = redactor(json!({}));
        let out = r.redact_text(
            "https://x.io/?email=hector%2Bnews%40piedpiper.dev&p=%2B1%20208%20236%203135&s=1",
        );
        assert_eq!(out, "https://x.io/?email=[EMAIL]&p=[PHONE]&s=1");
    }

    #[test]
    fn percent_encoding_hides_nothing_from_the_written_form() {
        // Found by the `detect` fuzz target: decoded, "%40" makes the user
        // name invalid and the password was kept on the first pass, then
        // found on the second, once the e-mail address was a token.
        let r = redactor(json!({}));
        let text = "postgres://app:Mres://apry%40proton.me&session=b566f79f-4704-4db7-b0d1-17p:Monkey134Y@onkey134Y@dMcinternal:5432/app";
        let once = redact_stable(&r, text);
        assert!(!once.contains("Monkey134Y"), "{once}");
        assert!(once.contains("[EMAIL]"), "{once}");
        let out = redact_stable(&r, "db://ops%40acme.io:Hunter2pass@db.internal:5432/x");
        assert!(!out.contains("Hunter2pass"), "{out}");
    }

    #[test]
    fn percent_encoded_strings_are_redacted_until_nothing_changes() {
        // Found by the `detect` fuzz target (minimised).
        let r = redactor(json!({}));
        for text in ["s://:%27@\0r@b.oC", "s://:%27@ r@b.io and more"] {
            let once = redact_stable(&r, text);
            assert!(once.contains("[EMAIL]"), "{once}");
            assert!(!once.contains("%27"), "{once}");
        }
    }

    #[test]
    fn a_match_over_a_token_is_not_a_new_finding() {
        // Found by the `detect` fuzz target: the phone number's token took
        // away the space that kept the rest from looking like credentials.
        let r = redactor(json!({}));
        let text = "postgres://app\0w:+24-01-20 22:2:0-85PsZs&a@dapp";
        let once = redact_stable(&r, text);
        assert_eq!(once, "postgres://app\0w:[PHONE]:2:0-85PsZs&a@dapp");
    }

    #[test]
    fn the_rest_of_a_trimmed_match_is_still_searched() {
        // Found by the `detect` fuzz target: the IBAN pattern matched on to
        // "... 9445 1", its validator kept "IE27 IBAN IE27 SXSA", and the
        // search went on after the whole match, past the start of
        // "1.9.1.20"; the second pass found that address.
        let r = redactor(json!({}));
        let text = "1My IBAN IE27 IBAN IE27 SXSA 9445 1.9.1.20) Gecko";
        let once = redact_stable(&r, text);
        assert_eq!(once, "1My IBAN [IBAN] 9445 [IPV4]) Gecko");
    }

    #[test]
    fn what_an_overlap_left_out_is_redacted_in_the_same_call() {
        // Found by the `detect` fuzz target (shortened).
        let r = redactor(json!({}));
        let text = "at lz-Ring 2.135.2lz-Ringme1983@b.dustomer=Goffredo";
        let once = redact_stable(&r, text);
        assert!(
            once.contains("[STREET_ADDRESS]") && once.contains("[EMAIL]"),
            "{once}"
        );
    }

    #[test]
    fn a_name_after_a_joiner_is_found_in_the_first_pass() {
        // Found by the `detect` fuzz target: the cheap check that two
        // capitalised words are near each other did not count "Ja" in
        // "-Ja" as a word, so the name finder did not run, until a token's
        // capitals made the check pass in the second pass.
        let r = redactor(json!({}));
        for text in [
            "x -Ja Sa d7:8::e12d ",
            "x ’Ja Sa d7:8::e12d ",
            "x 'Ja Sa d7:8::e12d ",
        ] {
            redact_stable(&r, text);
        }
    }

    #[test]
    fn a_word_cut_by_a_finding_is_judged_as_it_will_be_left() {
        // Found by the `detect` fuzz target: "Eleni-S-Ring" was one word
        // touching the street address "Ring 2", so not a name; once the
        // street was a token, "Eleni-S" was, and the second pass found
        // "Goffredo Eleni-S".
        let r = redactor(json!({}));
        let text = "succeeded: customer=Goffredo Eleni-S-Ring 2.135.arge";
        let once = redact_stable(&r, text);
        assert!(once.contains("[STREET_ADDRESS]"), "{once}");
    }

    #[test]
    fn a_token_is_no_context_cue_even_before_another_bracket() {
        // Found by the `detect` fuzz target: only the last ']' before a
        // match was checked for a token, so in "[PHONE]]02222024" the
        // token's "PHONE" was the cue a bare number needs.
        let r = redactor(json!({}));
        let text = "q@~ +22222222]02222024";
        let once = redact_stable(&r, text);
        assert_eq!(once, "q@~ [PHONE]]02222024");
    }

    #[test]
    fn names_are_found_when_the_decoded_view_is_not_text() {
        // Found by the `detect` fuzz target: "%e7" decodes to a byte that
        // is not UTF-8, and names were only looked for in the decoded view.
        let r = redactor(json!({}));
        for text in [
            "2%Ad:e::b\0Ma Ma :2",
            "New lead: Susan Ho ostgres://app:maager-nUm%e7.20.1-number@d+",
        ] {
            redact_stable(&r, text);
        }
    }

    #[test]
    fn actions() {
        let r = redactor(json!({
            "actions": {"CREDIT_CARD": "partial", "EMAIL": "hash", "PHONE": "remove"},
            "fields": {"customer_ref": {"type": "PERSON", "action": "remove"}}
        }));
        let mut rec = json!({
            "cc": "4539-1488-0343-6467",
            "email": "Bob@Example.com",
            "note": "mail bob@example.com or call +1 415 555 2671 now",
            "customerRef": "Diana Carter",
            "phone": "+1 415 555 2671"
        });
        r.redact_record(&mut rec);
        let tag = r.pseudonym(PiiType::Email, "bob@example.com");
        assert_eq!(tag.len(), 16);
        assert_eq!(
            rec,
            json!({
                "cc": "****-****-****-6467",
                "email": format!("[EMAIL:{tag}]"),
                "note": format!("mail [EMAIL:{tag}] or call  now"),
            })
        );
        // A different key gives a different pseudonym.
        let other = Redactor::new(&RedactConfig::default(), b"other").unwrap();
        assert_ne!(other.pseudonym(PiiType::Email, "bob@example.com"), tag);
    }

    #[test]
    fn only_scans_the_listed_pointers() {
        let r = redactor(json!({
            "only": ["/message", "/user/email", "/list/1", "/absent/x"],
            "actions": {"PHONE": "remove"}
        }));
        let mut rec = json!({
            "message": "mail bob@example.com",
            "note": "mail bob@example.com",
            "user": {"email": "bob@example.com", "name": "Diana Carter"},
            "list": ["bob@example.com", "+1 415 555 2671", "x"],
            "password": "hunter2"
        });
        r.redact_record(&mut rec);
        assert_eq!(
            rec,
            json!({
                "message": "mail [EMAIL]",
                "note": "mail bob@example.com",
                "user": {"email": "[EMAIL]", "name": "Diana Carter"},
                "list": ["bob@example.com", "x"],
                "password": "hunter2"
            })
        );
        let bad: RedactConfig = serde_json::from_value(json!({"only": ["nope"]})).unwrap();
        let problems = Redactor::new(&bad, b"k").err().unwrap();
        assert_eq!(problems[0].pointer, "/only/0");
    }

    #[test]
    fn allow_list_skip_and_disable() {
        let r = redactor(json!({
            "allow": ["@acme.com", "support@example.org"],
            "skip": ["/keep", "/list/1"],
            "disable": ["IPV4"]
        }));
        let mut rec = json!({
            "a": "ops@acme.com, SUPPORT@example.org, eve@evil.io",
            "keep": {"email": "x@y.io"},
            "list": ["a@b.io", "c@d.io"],
            "ip": "191.112.33.56"
        });
        r.redact_record(&mut rec);
        assert_eq!(
            rec,
            json!({
                "a": "ops@acme.com, SUPPORT@example.org, [EMAIL]",
                "keep": {"email": "x@y.io"},
                "list": ["[EMAIL]", "c@d.io"],
                "ip": "191.112.33.56"
            })
        );
    }

    #[test]
    fn redacting_twice_changes_nothing_more() {
        let r = redactor(json!({"default_action": "hash"}));
        let mut rec = json!({"password": "hunter2", "t": "mail a@b.io"});
        r.redact_record(&mut rec);
        let once = rec.clone();
        r.redact_record(&mut rec);
        assert_eq!(rec, once);
    }

    #[test]
    fn placeholders_are_left_alone() {
        let r = redactor(json!({}));
        let mut rec = json!({"ssn_on_file": "redacted", "password": "", "token": "***"});
        let before = rec.clone();
        r.redact_record(&mut rec);
        assert_eq!(rec, before);
    }

    #[test]
    fn fail_closed_masks_everything() {
        let r = Redactor::fail_closed();
        let mut rec = json!({"a": "hello", "b": [1, "x"]});
        r.redact_record(&mut rec);
        assert_eq!(rec, json!({"a": "[REDACTED]", "b": [1, "[REDACTED]"]}));
        assert_eq!(r.redact_text("hi"), "[REDACTED]");
    }

    #[test]
    fn shapes_that_cannot_hold_pii_are_skipped() {
        for clean in [
            "abc",
            "8a0ac984-f71a-4247-a88b-759131db6e32",
            "79f6ae28652eb6fa7cd62de963a8cc7d2cd0e63b",
            "12345678",
            "2024-12-24T20:05:03.376Z",
            "2024-11-13 17:26:04,320",
            "2024-11-13T17:26:04+02:00",
        ] {
            assert!(trivially_clean(clean.as_bytes()), "{clean}");
        }
        for maybe in [
            "123456789",
            "4352696285171030",
            "a@b.io",
            "2024-11-13T17:26:04 Bob Smith",
        ] {
            assert!(!trivially_clean(maybe.as_bytes()), "{maybe}");
        }
    }

    /// The per-name cache answers what the uncached lookups answer, for
    /// every name of the rules file under every parent they mention.
    #[test]
    fn cached_key_decisions_match_the_lookups() {
        let r = redactor(json!({"fields": {"customerRef": {"type": "PERSON"}}}));
        let mut names: Vec<String> = r.field_rules.exact.keys().cloned().collect();
        names.extend(r.field_rules.suffixes.keys().map(|s| format!("x{s}")));
        names.extend(r.field_rules.prefixes.keys().map(|p| format!("{p}x")));
        names.extend(["customerRef", "Billing.Name", "nothing_here"].map(String::from));
        let mut parents: Vec<Option<String>> = vec![None, Some("unrelated".into())];
        for rule in &r.field_rules.rules {
            parents.extend(rule.parents.iter().map(|p| Some(p.clone())));
        }
        let mut w = r.work();
        for name in &names {
            let mut norm = String::new();
            normalize_field(name, &mut norm);
            for parent in &parents {
                let p = parent.as_deref();
                let want = r
                    .field_rules
                    .lookup(&norm, p)
                    .filter(|rule| r.resolved.enabled[rule.kind.index()])
                    .map(|rule| (rule.kind, rule.check));
                let info = r.key_info(name, &mut w);
                let got = match info.rule {
                    RuleRef::None => None,
                    RuleRef::Rule(id) => r.field_rules.rules.get(id),
                    RuleRef::ByParent => r.field_rules.lookup(&norm, p),
                }
                .map(|rule| (rule.kind, rule.check));
                assert_eq!(got, want, "{name} under {p:?}");
                assert_eq!(info.exempt, r.exempt_mask(&norm), "{name}");
                assert_eq!(
                    info.user.map(|u| u.kind),
                    r.user_fields.get(norm.as_str()).map(|u| u.kind),
                    "{name}"
                );
            }
        }
        assert!(w.keys.get("customerRef").is_some());
        // Names that evict each other, and names too long to cache, still
        // get their own answer.
        for i in 0..(4 * KEY_SLOTS) {
            let name = format!("x{i}_password");
            assert!(
                matches!(r.key_info(&name, &mut w).rule, RuleRef::Rule(_)),
                "{name}"
            );
            let plain = format!("k{i}");
            assert!(
                matches!(r.key_info(&plain, &mut w).rule, RuleRef::None),
                "{plain}"
            );
        }
        let long = format!("{}_password", "x".repeat(40));
        assert!(matches!(r.key_info(&long, &mut w).rule, RuleRef::Rule(_)));
        assert!(w.keys.get(&long).is_none());
        r.end_work(w);
    }

    #[test]
    fn engines_with_the_same_types_share_a_scanner() {
        let a = redactor(json!({"actions": {"EMAIL": "hash"}}));
        let b = redactor(json!({}));
        let c = redactor(json!({"disable": ["IPV4"]}));
        assert!(Arc::ptr_eq(&a.scanner, &b.scanner));
        assert!(!Arc::ptr_eq(&a.scanner, &c.scanner));
        let mut rec = json!({"ip": "191.112.33.56"});
        c.redact_record(&mut rec);
        assert_eq!(rec, json!({"ip": "191.112.33.56"}));
        b.redact_record(&mut rec);
        assert_eq!(rec, json!({"ip": "[IPV4]"}));
    }

    #[test]
    fn partial_keeps_last_four() {
        assert_eq!(partial("4111 1111 1111 1111"), "**** **** **** 1111");
        assert_eq!(partial("abc"), "abc");
    }
}
