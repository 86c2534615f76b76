//! Per-pipeline script limits and the CPU-time clock that enforces them.
//!
//! The limits are plain serde config (they arrive as the `limits` object of a
//! `script`, `filter` or `map` processor), with defaults safe enough that a
//! pipeline that never mentions them cannot hurt the server.
//!
//! Time is CPU time of the worker thread, not wall time, so a record is not
//! failed because the machine was busy with other threads. Reading the thread
//! CPU clock is a system call (about a microsecond here), too dear to pay twice
//! per record at 70k records/s, so the [`Clock`] reads it lazily: the wall
//! clock (cheap) bounds CPU time from above, and the CPU clock is read only from
//! the engine's interrupt handler, which QuickJS polls every few thousand
//! operations. Short records, which are nearly all of them, never make that
//! system call; a long one is measured in CPU time from its first poll on.

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Resource limits for one script, set per pipeline. Every field has a safe
/// default; see `docs/scripting.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    /// Memory for the script's engine instance (its heap: records, strings,
    /// objects it builds), in MiB. Allocating past it fails the record with
    /// `SCRIPT_MEMORY_LIMIT`. Default 32, allowed 4..=1024.
    pub memory_mb: u32,
    /// CPU time for one record (one `transform` call or expression), in
    /// milliseconds. Past it the record fails with `SCRIPT_TIMEOUT`.
    /// Default 50, allowed 1..=60000.
    pub timeout_ms: u64,
    /// CPU time for one chunk of records on one worker, in milliseconds; once
    /// spent, the chunk's remaining records fail with `SCRIPT_TIMEOUT`.
    /// Also bounds the script's top-level code when an engine starts, and
    /// engine restarts within a chunk are charged to it.
    /// Default 5000, allowed 1..=600000.
    pub chunk_timeout_ms: u64,
    /// Native stack the script may use (bounds recursion depth), in KiB. Past
    /// it the record fails with `SCRIPT_ERROR` ("stack limit"). Default 256,
    /// allowed 64..=1024.
    pub max_stack_kb: u32,
    /// Size of one record's output (all returned records, as JSON), in bytes.
    /// Past it the record fails with `SCRIPT_OUTPUT_TOO_LARGE`.
    /// Default 1 MiB, allowed 1..=64 MiB.
    pub max_output_bytes: u64,
    /// Lines of `ctx.log(...)` kept per record; further lines are dropped and
    /// counted. Default 20, allowed 0..=1000.
    pub max_log_lines: u32,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            memory_mb: 32,
            timeout_ms: 50,
            chunk_timeout_ms: 5_000,
            max_stack_kb: 256,
            max_output_bytes: 1024 * 1024,
            max_log_lines: 20,
        }
    }
}

impl ScriptLimits {
    /// Every out-of-range field, as `(field, message)`; empty when valid.
    /// `Script::compile` rejects limits that have problems.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut check = |field: &'static str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                out.push((field, format!("must be between {min} and {max}")));
            }
        };
        check("memory_mb", u64::from(self.memory_mb), 4, 1024);
        check("timeout_ms", self.timeout_ms, 1, 60_000);
        check("chunk_timeout_ms", self.chunk_timeout_ms, 1, 600_000);
        check("max_stack_kb", u64::from(self.max_stack_kb), 64, 1024);
        check(
            "max_output_bytes",
            self.max_output_bytes,
            1,
            64 * 1024 * 1024,
        );
        check("max_log_lines", u64::from(self.max_log_lines), 0, 1000);
        out
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        usize::try_from(u64::from(self.memory_mb) * 1024 * 1024).unwrap_or(usize::MAX)
    }

    pub(crate) fn stack_bytes(&self) -> usize {
        usize::try_from(u64::from(self.max_stack_kb) * 1024).unwrap_or(usize::MAX)
    }

    pub(crate) fn output_bytes(&self) -> usize {
        usize::try_from(self.max_output_bytes).unwrap_or(usize::MAX)
    }
}

/// CPU time this thread has used so far.
pub(crate) fn thread_cpu() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Which budget a deadline came from, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    Record,
    Chunk,
    Startup,
}

/// The deadline of the call in progress, shared with the interrupt handler.
#[derive(Debug)]
pub(crate) struct Clock {
    armed: Cell<bool>,
    start: Cell<Instant>,
    limit: Cell<Duration>,
    budget: Cell<Budget>,
    /// Wall time and thread CPU time at the first interrupt poll of the call.
    first_poll: Cell<Option<(Instant, Duration)>>,
    fired: Cell<bool>,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            armed: Cell::new(false),
            start: Cell::new(Instant::now()),
            limit: Cell::new(Duration::ZERO),
            budget: Cell::new(Budget::Record),
            first_poll: Cell::new(None),
            fired: Cell::new(false),
        }
    }

    /// Starts a call that may use `limit` of CPU time.
    pub(crate) fn arm(&self, limit: Duration, budget: Budget) {
        self.start.set(Instant::now());
        self.limit.set(limit);
        self.budget.set(budget);
        self.first_poll.set(None);
        self.fired.set(false);
        self.armed.set(true);
    }

    /// Ends the call; returns the CPU time it used (wall time when it was too
    /// short to be polled, which is then at most a poll interval).
    pub(crate) fn disarm(&self) -> Duration {
        self.armed.set(false);
        let start = self.start.get();
        match self.first_poll.get() {
            Some((wall, cpu)) => (wall - start) + thread_cpu().saturating_sub(cpu),
            None => start.elapsed(),
        }
    }

    /// Whether the interrupt handler stopped the call.
    pub(crate) fn fired(&self) -> bool {
        self.fired.get()
    }

    pub(crate) fn budget(&self) -> Budget {
        self.budget.get()
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit.get()
    }

    /// Called by the QuickJS interrupt handler; true stops the script.
    pub(crate) fn should_interrupt(&self) -> bool {
        if !self.armed.get() {
            return false;
        }
        if self.fired.get() {
            return true;
        }
        let now = Instant::now();
        let start = self.start.get();
        let Some((wall, cpu)) = self.first_poll.get() else {
            // First poll of this call: take the CPU reading that later polls
            // measure from. Never fire here, so a thread that was descheduled
            // before its first poll is not blamed for that time.
            self.first_poll.set(Some((now, thread_cpu())));
            return false;
        };
        let limit = self.limit.get();
        // CPU time never exceeds wall time: skip the system call while the
        // wall clock is still within the limit.
        if now - start < limit {
            return false;
        }
        let used = (wall - start) + thread_cpu().saturating_sub(cpu);
        if used >= limit {
            self.fired.set(true);
            return true;
        }
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let l = ScriptLimits::default();
        assert!(l.problems().is_empty());
        assert_eq!(l.memory_mb, 32);
        assert_eq!(l.timeout_ms, 50);
        assert_eq!(l.max_output_bytes, 1 << 20);
    }

    #[test]
    fn out_of_range_limits_are_all_reported() {
        let l = ScriptLimits {
            memory_mb: 1,
            timeout_ms: 0,
            max_stack_kb: 100_000,
            ..ScriptLimits::default()
        };
        let fields: Vec<_> = l.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["memory_mb", "timeout_ms", "max_stack_kb"]);
    }

    #[test]
    fn limits_deserialize_with_defaults_and_reject_unknown_fields() {
        let l: ScriptLimits = serde_json::from_str(r#"{"timeout_ms": 10}"#).unwrap();
        assert_eq!(l.timeout_ms, 10);
        assert_eq!(l.memory_mb, 32);
        assert!(serde_json::from_str::<ScriptLimits>(r#"{"timeout": 10}"#).is_err());
    }

    #[test]
    fn clock_fires_only_after_cpu_time_is_spent() {
        let clock = Clock::new();
        clock.arm(Duration::from_millis(20), Budget::Record);
        assert!(!clock.should_interrupt(), "first poll never fires");
        assert!(!clock.should_interrupt());
        let spin = Instant::now();
        let mut fired = false;
        while spin.elapsed() < Duration::from_secs(2) {
            if clock.should_interrupt() {
                fired = true;
                break;
            }
        }
        assert!(fired);
        assert!(clock.fired());
        assert!(clock.disarm() >= Duration::from_millis(20));
        assert!(!clock.should_interrupt(), "a disarmed clock never fires");
    }

    #[test]
    fn sleeping_is_not_cpu_time() {
        let clock = Clock::new();
        // Wall time between `arm` and the first poll counts (it is not
        // measured in CPU time), so the limit leaves room for a busy
        // machine to deschedule the thread there.
        clock.arm(Duration::from_millis(25), Budget::Record);
        assert!(!clock.should_interrupt());
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            !clock.should_interrupt(),
            "wall time past the limit, CPU time not"
        );
    }
}
