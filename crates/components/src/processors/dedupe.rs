//! `dedupe`: drop records whose key was already seen within a time window.
//!
//! The window lives in memory, in the built pipeline: one per process and
//! per pipeline config version (the worker caches a built pipeline per
//! version, so a config change starts an empty window). Several worker
//! processes do not share windows; dedupe is a best-effort filter for
//! duplicates that arrive close together, not a uniqueness guarantee.
//!
//! Delivery is at-least-once, so a batch may be processed again after a
//! crash or a retry. To keep that from dropping the batch's own records,
//! every remembered key stores the *origin* of the first record that used
//! it (its batch id and record index). A record with the same origin is
//! that same record coming round again and passes; only a record from a
//! different origin is a duplicate.
//!
//! Keys are stored as 128-bit hashes of the key values (never the values
//! themselves, which may be personal data), origins as 64-bit hashes: an
//! origin collision can only let a duplicate through, never drop a record.
//! The window is fixed from the first sighting (a duplicate does not
//! extend it), and `max_keys` bounds memory (about 70 bytes per key):
//! past it the oldest keys are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_config::DedupeSpec;
use sluice_core::{ErrorCode, Problem, ProcessError, Processor, Record, RecordContext};
use uuid::Uuid;

use crate::Stage;
use crate::pointer::Pointer;

pub(crate) struct DedupeProcessor {
    keys: Vec<Pointer>,
    window: Mutex<Window>,
    hashers: (RandomState, RandomState),
}

pub(crate) fn build(spec: &DedupeSpec) -> Result<DedupeProcessor, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut keys = Vec::with_capacity(spec.key.len());
    for (j, k) in spec.key.iter().enumerate() {
        match Pointer::parse(k) {
            Ok(p) => keys.push(p),
            Err(message) => problems.push(Problem::new(format!("/key/{j}"), message)),
        }
    }
    if spec.key.is_empty() {
        problems.push(Problem::new("/key", "must not be empty"));
    }
    if spec.window_secs == 0 {
        problems.push(Problem::new("/window_secs", "must be positive"));
    }
    if spec.max_keys == 0 {
        problems.push(Problem::new("/max_keys", "must be positive"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(DedupeProcessor {
        keys,
        window: Mutex::new(Window::new(
            Duration::from_secs(spec.window_secs),
            spec.max_keys,
        )),
        hashers: (RandomState::new(), RandomState::new()),
    })
}

/// The remembered keys, oldest first.
struct Window {
    ttl: Duration,
    capacity: usize,
    epoch: Instant,
    /// key hash → (origin hash, first seen in ms since `epoch`).
    seen: HashMap<u128, (u64, u64)>,
    /// Insertion order, for expiry and eviction.
    order: VecDeque<(u128, u64)>,
}

impl Window {
    fn new(ttl: Duration, capacity: usize) -> Window {
        Window {
            ttl,
            capacity,
            epoch: Instant::now(),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the record is a duplicate; remembers its key if it is new.
    fn is_duplicate(&mut self, key: u128, origin: u64, now: Instant) -> bool {
        let now_ms = self.millis(now);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        // Forget what has expired.
        while let Some(&(k, at)) = self.order.front() {
            if now_ms.saturating_sub(at) < ttl_ms {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&k).is_some_and(|&(_, seen_at)| seen_at == at) {
                self.seen.remove(&k);
            }
        }
        if let Some(&(first_origin, _)) = self.seen.get(&key) {
            return first_origin != origin;
        }
        while self.seen.len() >= self.capacity {
            let Some((k, at)) = self.order.pop_front() else {
                break;
            };
            if self.seen.get(&k).is_some_and(|&(_, seen_at)| seen_at == at) {
                self.seen.remove(&k);
            }
        }
        self.seen.insert(key, (origin, now_ms));
        self.order.push_back((key, now_ms));
        false
    }
}

impl DedupeProcessor {
    /// The key hash, or `None` when a key field is missing (such records
    /// are never treated as duplicates).
    fn key_hash(&self, record: &Value) -> Option<u128> {
        let mut a = self.hashers.0.build_hasher();
        let mut b = self.hashers.1.build_hasher();
        let mut buf = Vec::with_capacity(64);
        for p in &self.keys {
            let v = p.get(record)?;
            buf.clear();
            // JSON text cannot contain a raw 0x1F byte, so the separator
            // keeps ("ab","c") and ("a","bc") apart.
            serde_json::to_writer(&mut buf, v).ok()?;
            buf.push(0x1f);
            a.write(&buf);
            b.write(&buf);
        }
        Some((u128::from(a.finish()) << 64) | u128::from(b.finish()))
    }

    fn origin_hash(&self, batch_id: Uuid, index: u64) -> u64 {
        let mut h = self.hashers.0.build_hasher();
        h.write(batch_id.as_bytes());
        h.write_u64(index);
        h.finish()
    }

    fn check(
        &self,
        record: &Value,
        ctx: &RecordContext<'_>,
        now: Instant,
    ) -> Result<bool, ProcessError> {
        let Some(key) = self.key_hash(record) else {
            return Ok(false);
        };
        let origin = self.origin_hash(ctx.batch_id, ctx.record_index);
        let mut window = self.window.lock().map_err(|_| {
            ProcessError::new(ErrorCode::InternalError, "dedupe window unavailable")
        })?;
        Ok(window.is_duplicate(key, origin, now))
    }
}

impl Processor for DedupeProcessor {
    fn type_name(&self) -> &'static str {
        "dedupe"
    }

    fn process(
        &self,
        record: Record,
        ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError> {
        if !self.check(&record, ctx, Instant::now())? {
            out.push(record);
        }
        Ok(())
    }
}

impl Stage for DedupeProcessor {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::ctx;
    use serde_json::json;

    fn dedupe(window_secs: u64, max_keys: usize) -> DedupeProcessor {
        build(&DedupeSpec {
            key: vec!["/id".into(), "/kind".into()],
            window_secs,
            max_keys,
        })
        .map_err(|p| format!("{p:?}"))
        .unwrap()
    }

    fn dup_at(p: &DedupeProcessor, r: Value, index: u64, now: Instant) -> bool {
        p.check(&r, &ctx(index), now).unwrap()
    }

    #[test]
    fn second_sighting_from_another_record_is_a_duplicate() {
        let p = dedupe(60, 100);
        let now = Instant::now();
        assert!(!dup_at(&p, json!({"id": 1, "kind": "a"}), 0, now));
        assert!(dup_at(&p, json!({"id": 1, "kind": "a"}), 1, now));
        assert!(!dup_at(&p, json!({"id": 1, "kind": "b"}), 2, now));
        assert!(!dup_at(&p, json!({"id": "1", "kind": "a"}), 3, now));
        // Records missing a key field are never duplicates.
        assert!(!dup_at(&p, json!({"id": 9}), 4, now));
        assert!(!dup_at(&p, json!({"id": 9}), 5, now));
    }

    #[test]
    fn redelivering_the_same_record_is_not_a_duplicate() {
        let p = dedupe(60, 100);
        let now = Instant::now();
        let r = json!({"id": 7, "kind": "a"});
        assert!(!dup_at(&p, r.clone(), 3, now));
        // The batch is processed again after a crash: same batch, same index.
        assert!(!dup_at(&p, r.clone(), 3, now));
        // A different record of the batch with the same key still is one.
        assert!(dup_at(&p, r, 4, now));
    }

    #[test]
    fn keys_expire_after_the_window() {
        let p = dedupe(10, 100);
        let t0 = Instant::now();
        let r = json!({"id": 1, "kind": "a"});
        assert!(!dup_at(&p, r.clone(), 0, t0));
        assert!(dup_at(&p, r.clone(), 1, t0 + Duration::from_secs(9)));
        // The duplicate did not extend the window.
        assert!(!dup_at(&p, r.clone(), 2, t0 + Duration::from_secs(10)));
        // Record 2 now owns the key.
        assert!(dup_at(&p, r, 0, t0 + Duration::from_secs(11)));
    }

    #[test]
    fn capacity_forgets_the_oldest_key() {
        let p = dedupe(3600, 2);
        let now = Instant::now();
        let r = |id: u64| json!({"id": id, "kind": "k"});
        assert!(!dup_at(&p, r(1), 0, now));
        assert!(!dup_at(&p, r(2), 1, now));
        assert!(!dup_at(&p, r(3), 2, now));
        assert_eq!(p.window.lock().unwrap().seen.len(), 2);
        // Key 1 was evicted, keys 2 and 3 are remembered.
        assert!(!dup_at(&p, r(1), 10, now));
        assert!(dup_at(&p, r(3), 11, now));
    }

    #[test]
    fn process_drops_duplicates() {
        let p = dedupe(60, 10);
        let mut out = Vec::new();
        let r = json!({"id": 1, "kind": "a"});
        p.process(r.clone(), &ctx(0), &mut out).unwrap();
        p.process(r.clone(), &ctx(1), &mut out).unwrap();
        assert_eq!(out, vec![r]);
    }
}
