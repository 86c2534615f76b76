//! Retries with exponential backoff and jitter, behind a circuit breaker.
//!
//! The delays come from `backon`'s exponential backoff (factor 2, full
//! jitter, capped at `max_backoff_ms`, at most `max_retries`); the loop is
//! ours because each attempt must first ask the breaker, and a
//! `Retry-After` from the target replaces the computed delay when it is
//! longer (capped at `max_backoff_ms`, so one answer cannot park a worker
//! for an hour — the batch is re-queued instead).

use crate::breaker::Breaker;
use backon::{BackoffBuilder, ExponentialBuilder};
use sluice_config::RetrySpec;
use sluice_core::FailureKind;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Why an outbound call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub kind: FailureKind,
    /// Safe to log and to show the tenant: no record data, no secrets.
    pub message: String,
    /// The target asked to wait this long (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl CallError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Transient,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }
}

/// Retry settings plus the target's breaker.
#[derive(Debug, Clone)]
pub struct Resilience {
    retry: RetrySpec,
    breaker: Arc<Breaker>,
}

impl Resilience {
    pub fn new(retry: RetrySpec, breaker: Arc<Breaker>) -> Self {
        Self { retry, breaker }
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.retry.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.retry.max_backoff_ms))
            .with_max_times(self.retry.max_retries as usize)
            .with_factor(2.0)
            .with_jitter()
            .build()
    }

    /// Run `call` until it succeeds, fails permanently, the retries are
    /// used up, or the breaker refuses (a transient error, without a call).
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut delays = self.backoff();
        let cap = Duration::from_millis(self.retry.max_backoff_ms);
        loop {
            let permit = self
                .breaker
                .acquire()
                .map_err(|open| CallError::transient(open.to_string()))?;
            let error = match call().await {
                Ok(value) => {
                    permit.success();
                    return Ok(value);
                }
                Err(e) if !e.is_transient() => {
                    // The target answered; its health is not in question.
                    drop(permit);
                    return Err(e);
                }
                Err(e) => {
                    permit.failure();
                    e
                }
            };
            let Some(delay) = delays.next() else {
                return Err(error);
            };
            let delay = match error.retry_after {
                Some(asked) => asked.min(cap).max(delay),
                None => delay,
            };
            self.breaker.count_retry();
            tracing::debug!(target_name = %self.breaker.target(), error = %error.message, delay_ms = delay.as_millis() as u64, "retrying an outbound call");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Parse a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(wait.max(0) as u64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::breaker::{BreakerState, breaker};
    use sluice_config::BreakerSpec;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(max_retries: u32) -> RetrySpec {
        RetrySpec {
            max_retries,
            initial_backoff_ms: 1,
            max_backoff_ms: 5,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let r = Resilience::new(
            fast(3),
            breaker("retry/ok", "destination", BreakerSpec::default()),
        );
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let out = r
            .run(|| async move {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(CallError::transient("down"))
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(r.breaker().snapshot().retries_total, 2);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let r = Resilience::new(
            fast(5),
            breaker("retry/perm", "destination", BreakerSpec::default()),
        );
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let err = r
            .run(|| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CallError::permanent("400"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Permanent);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.breaker().snapshot().failures_in_window, 0);
    }

    #[tokio::test]
    async fn retries_stop_when_the_budget_or_the_breaker_says_so() {
        let r = Resilience::new(
            fast(2),
            breaker("retry/budget", "destination", BreakerSpec::default()),
        );
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let err = r
            .run(|| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CallError::transient("down"))
            })
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let spec = BreakerSpec {
            window: 4,
            failures: 2,
            cooldown_secs: 60,
        };
        let r = Resilience::new(fast(10), breaker("retry/breaker", "destination", spec));
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let err = r
            .run(|| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CallError::transient("down"))
            })
            .await
            .unwrap_err();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the open breaker stops the calls"
        );
        assert!(
            err.message.contains("circuit breaker open"),
            "{}",
            err.message
        );
        assert_eq!(r.breaker().snapshot().state, BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_up_to_the_cap() {
        let retry = RetrySpec {
            max_retries: 1,
            initial_backoff_ms: 1,
            max_backoff_ms: 3_000,
        };
        let r = Resilience::new(
            retry,
            breaker("retry/after", "destination", BreakerSpec::default()),
        );
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let started = tokio::time::Instant::now();
        r.run(|| async move {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(CallError::transient("429").with_retry_after(Some(Duration::from_secs(2))))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        calls.store(0, Ordering::SeqCst);
        r.run(|| async move {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(CallError::transient("503").with_retry_after(Some(Duration::from_secs(3600))))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(started.elapsed() <= Duration::from_secs(4), "capped");
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
