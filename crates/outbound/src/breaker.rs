//! Circuit breakers, one per target, in a process-wide registry (R-DEL-2).
//!
//! A breaker remembers the outcomes of the last `window` calls. When
//! `failures` of them were transient failures it opens: calls fail at once
//! without reaching the target, which spares a struggling receiver and
//! frees the worker. After `cooldown_secs` the next call is a probe
//! (half-open; other calls still fail fast); its success closes the
//! breaker with a clean window, its failure re-opens it for another
//! cooldown. Permanent failures (a 4xx answer, a refused address) say
//! nothing about the target's health and are not counted.
//!
//! Breakers live in a registry keyed by target (`<pipeline_id>/destination`,
//! `<pipeline_id>/processors/<i>/<provider>`), so they survive pipeline
//! rebuilds and config versions, and so `/metrics` and
//! `GET /pipelines/{id}` can show them. The state is per process: each
//! worker process judges the targets it calls.

use serde::Serialize;
use sluice_config::BreakerSpec;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The state of a breaker, as shown in metrics (gauge value) and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// Value of the `sluice_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    spec: BreakerSpec,
    /// `true` = transient failure, newest at the back.
    window: VecDeque<bool>,
    mode: Mode,
    opened_total: u64,
}

/// One target's breaker. Get it from [`breaker`].
#[derive(Debug)]
pub struct Breaker {
    target: String,
    kind: &'static str,
    inner: Mutex<Inner>,
    retries: AtomicU64,
    calls: AtomicU64,
}

/// A call was refused because the breaker is open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit breaker open for {target}; the call was not made (next probe in {retry_in:?})")]
pub struct BreakerOpen {
    pub target: String,
    pub retry_in: Duration,
}

/// Leave to make one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping it unreported counts as neither (and lets
/// another probe through when it was the half-open probe).
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl Permit {
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.probe, false);
    }

    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.probe, true);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            let mut inner = self.breaker.lock();
            if let Mode::HalfOpen { probing } = &mut inner.mode {
                *probing = false;
            }
        }
    }
}

/// A point-in-time view of one breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    pub target: String,
    pub kind: &'static str,
    pub state: BreakerState,
    /// Transient failures among the last `window` calls.
    pub failures_in_window: u32,
    pub window: u32,
    /// Times the breaker has opened since the process started.
    pub opened_total: u64,
    /// Retries made for this target since the process started.
    pub retries_total: u64,
    /// Calls made to this target since the process started.
    pub calls_total: u64,
}

impl Breaker {
    fn new(target: String, kind: &'static str, spec: BreakerSpec) -> Self {
        let b = Self {
            target,
            kind,
            inner: Mutex::new(Inner {
                spec,
                window: VecDeque::with_capacity(spec.window as usize),
                mode: Mode::Closed,
                opened_total: 0,
            }),
            retries: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        };
        b.publish(BreakerState::Closed);
        b
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Ask to make one call.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, BreakerOpen> {
        let mut inner = self.lock();
        let now = Instant::now();
        let mode = inner.mode;
        let probe = match mode {
            Mode::Closed => false,
            Mode::Open { until } if now < until => {
                return Err(BreakerOpen {
                    target: self.target.clone(),
                    retry_in: until - now,
                });
            }
            Mode::Open { .. } => {
                inner.mode = Mode::HalfOpen { probing: true };
                drop(inner);
                self.transition(BreakerState::HalfOpen);
                true
            }
            Mode::HalfOpen { probing: true } => {
                return Err(BreakerOpen {
                    target: self.target.clone(),
                    retry_in: Duration::ZERO,
                });
            }
            Mode::HalfOpen { probing: false } => {
                inner.mode = Mode::HalfOpen { probing: true };
                true
            }
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut inner = self.lock();
        let spec = inner.spec;
        let mode = inner.mode;
        let changed = match (mode, probe) {
            (Mode::HalfOpen { .. }, true) => {
                if failed {
                    inner.mode = Mode::Open {
                        until: Instant::now() + Duration::from_secs(spec.cooldown_secs),
                    };
                    inner.opened_total += 1;
                    Some(BreakerState::Open)
                } else {
                    inner.mode = Mode::Closed;
                    inner.window.clear();
                    Some(BreakerState::Closed)
                }
            }
            (Mode::Closed, _) => {
                inner.window.push_back(failed);
                while inner.window.len() > spec.window as usize {
                    inner.window.pop_front();
                }
                let failures = inner.window.iter().filter(|f| **f).count();
                if failed && failures >= spec.failures as usize {
                    inner.mode = Mode::Open {
                        until: Instant::now() + Duration::from_secs(spec.cooldown_secs),
                    };
                    inner.opened_total += 1;
                    inner.window.clear();
                    Some(BreakerState::Open)
                } else {
                    None
                }
            }
            // A call that started before the breaker opened: its outcome
            // is already accounted for by the opening.
            _ => None,
        };
        drop(inner);
        if let Some(state) = changed {
            self.transition(state);
        }
    }

    /// Count one retry of a call to this target.
    pub fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_outbound_retries_total", "target" => self.target.clone(), "kind" => self.kind).increment(1);
    }

    fn transition(&self, to: BreakerState) {
        match to {
            BreakerState::Open => {
                tracing::warn!(target_name = %self.target, kind = self.kind, "circuit breaker opened")
            }
            BreakerState::HalfOpen => {
                tracing::info!(target_name = %self.target, kind = self.kind, "circuit breaker half-open: probing")
            }
            BreakerState::Closed => {
                tracing::info!(target_name = %self.target, kind = self.kind, "circuit breaker closed")
            }
        }
        metrics::counter!("sluice_breaker_transitions_total", "target" => self.target.clone(), "kind" => self.kind, "to" => to.as_str()).increment(1);
        self.publish(to);
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("sluice_breaker_state", "target" => self.target.clone(), "kind" => self.kind)
            .set(state.gauge());
    }

    /// The current state (an open breaker whose cooldown has passed shows
    /// as half-open: the next call will probe).
    pub fn snapshot(&self) -> BreakerSnapshot {
        let inner = self.lock();
        let state = match inner.mode {
            Mode::Closed => BreakerState::Closed,
            Mode::Open { until } if Instant::now() < until => BreakerState::Open,
            Mode::Open { .. } | Mode::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        BreakerSnapshot {
            target: self.target.clone(),
            kind: self.kind,
            state,
            failures_in_window: inner.window.iter().filter(|f| **f).count() as u32,
            window: inner.spec.window,
            opened_total: inner.opened_total,
            retries_total: self.retries.load(Ordering::Relaxed),
            calls_total: self.calls.load(Ordering::Relaxed),
        }
    }

    fn update_spec(&self, spec: BreakerSpec) {
        let mut inner = self.lock();
        if inner.spec != spec {
            inner.spec = spec;
            while inner.window.len() > spec.window as usize {
                inner.window.pop_front();
            }
        }
    }
}

type Registry = Mutex<HashMap<String, Arc<Breaker>>>;

fn registry() -> MutexGuard<'static, HashMap<String, Arc<Breaker>>> {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let r = REGISTRY.get_or_init(Default::default);
    match r.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The breaker of `target`, created on first use. A later call with
/// another spec (a new config version) updates the settings and keeps the
/// state. `kind` is `destination` or `provider`.
pub fn breaker(target: &str, kind: &'static str, spec: BreakerSpec) -> Arc<Breaker> {
    let mut reg = registry();
    if let Some(b) = reg.get(target) {
        b.update_spec(spec);
        return b.clone();
    }
    let b = Arc::new(Breaker::new(target.to_owned(), kind, spec));
    reg.insert(target.to_owned(), b.clone());
    b
}

/// Snapshots of every breaker whose target starts with `prefix` (`""` for
/// all), sorted by target.
pub fn snapshots(prefix: &str) -> Vec<BreakerSnapshot> {
    let breakers: Vec<Arc<Breaker>> = registry()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, b)| b.clone())
        .collect();
    let mut out: Vec<BreakerSnapshot> = breakers.iter().map(|b| b.snapshot()).collect();
    out.sort_by(|a, b| a.target.cmp(&b.target));
    out
}

/// Re-publish every breaker's gauge (an open breaker whose cooldown has
/// passed reads as half-open). Call before rendering `/metrics`.
pub fn refresh_gauges() {
    let breakers: Vec<Arc<Breaker>> = registry().values().cloned().collect();
    for b in breakers {
        let snap = b.snapshot();
        b.publish(snap.state);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(window: u32, failures: u32, cooldown_secs: u64) -> BreakerSpec {
        BreakerSpec {
            window,
            failures,
            cooldown_secs,
        }
    }

    #[test]
    fn opens_at_the_failure_count_within_the_window() {
        let b = breaker("test/opens", "destination", spec(10, 5, 60));
        // Failures spread among successes: 4 in the window stay closed.
        for _ in 0..4 {
            b.acquire().unwrap().failure();
            b.acquire().unwrap().success();
        }
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        b.acquire().unwrap().failure();
        assert_eq!(b.snapshot().state, BreakerState::Open);
        let err = b.acquire().unwrap_err();
        assert!(err.to_string().contains("circuit breaker open"), "{err}");
        assert_eq!(b.snapshot().opened_total, 1);
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let b = breaker("test/slides", "destination", spec(4, 3, 60));
        b.acquire().unwrap().failure();
        b.acquire().unwrap().failure();
        for _ in 0..4 {
            b.acquire().unwrap().success();
        }
        b.acquire().unwrap().failure();
        b.acquire().unwrap().failure();
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        assert_eq!(b.snapshot().failures_in_window, 2);
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let b = breaker("test/probe", "provider", spec(2, 2, 1));
        b.acquire().unwrap().failure();
        b.acquire().unwrap().failure();
        assert!(b.acquire().is_err());
        // Force the cooldown to have passed.
        b.lock().mode = Mode::Open {
            until: Instant::now(),
        };
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "only one probe at a time");
        probe.failure();
        assert_eq!(b.snapshot().state, BreakerState::Open);
        assert_eq!(b.snapshot().opened_total, 2);
        b.lock().mode = Mode::Open {
            until: Instant::now(),
        };
        // A probe dropped without an outcome lets the next one through.
        drop(b.acquire().unwrap());
        let probe = b.acquire().unwrap();
        probe.success();
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        assert_eq!(b.snapshot().failures_in_window, 0);
        b.acquire().unwrap().success();
    }

    #[test]
    fn the_registry_keeps_state_across_rebuilds() {
        let a = breaker("test/registry", "destination", spec(3, 1, 60));
        a.acquire().unwrap().failure();
        let again = breaker("test/registry", "destination", spec(5, 2, 30));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(again.snapshot().state, BreakerState::Open);
        assert_eq!(again.snapshot().window, 5);
        assert!(snapshots("test/registry").len() == 1);
    }
}
