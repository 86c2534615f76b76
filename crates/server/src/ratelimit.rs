//! Rate limits (R-SEC-5): GCRA per key and per client address.
//!
//! Three limits, each a generic cell rate algorithm (GCRA) bucket:
//! failed authentications per client address (default 5 a minute; beyond
//! it a failure answers 429 instead of 401), management calls per key
//! (default 100 a minute) and batch body bytes per key (a sustained rate
//! and a burst). GCRA keeps one timestamp per key (the theoretical arrival
//! time), so it needs no background refill and works the same in memory
//! (the `governor` crate) and in Redis (one Lua script, below, that reads
//! and updates the timestamp atomically under Redis' own clock).
//!
//! With `redis.url` set, every API node checks the same buckets in Redis
//! and so enforces one limit together. If Redis cannot be reached (or
//! does not answer within `redis.timeout_ms`) the node falls back to its
//! own in-memory buckets and logs that it did: it neither lets everything
//! through (a Redis outage must not switch the limits off) nor refuses
//! everything (it must not take the API down). While it falls back, N
//! nodes allow up to N times the limit. Reconnection is retried at most
//! every few seconds.
//!
//! Ingest is limited in bytes: the request is admitted when its key has
//! room for the body's declared size (capped at the burst), which is
//! charged up front; bytes beyond that (a body larger than the burst, or
//! one without `Content-Length`) are charged as they arrive, and the body
//! is read no faster than the rate allows, so a large upload slows down
//! instead of failing half-way. Sizes are wire bytes (before
//! decompression).
//!
//! Answers carry `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the bucket is full again), and a
//! refusal is 429 `RATE_LIMITED` with `Retry-After`.

use crate::auth::{Permission, Principal};
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter as Governor};
use sluice_config::ServerConfig;
use sluice_config::server::RedisConfig;
use sluice_core::ErrorCode;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Which bucket a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Failed authentications, per client address.
    AuthFailure,
    /// Management calls, per key.
    Management,
    /// Batch body bytes, per key.
    Ingest,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::AuthFailure => "auth_failure",
            Class::Management => "management",
            Class::Ingest => "ingest",
        }
    }
}

/// The outcome of charging a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The bucket's size (burst).
    pub limit: u64,
    /// Cells left after this request.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// For a refusal: until the request would be allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// Add the `RateLimit-*` headers (and `Retry-After` on a refusal).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let secs = |d: Duration| d.as_millis().div_ceil(1000) as u64;
        headers.insert(
            HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(self.limit),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(self.remaining),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(secs(self.reset)),
        );
        if !self.allowed {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(secs(self.retry_after).max(1)),
            );
        }
    }

    /// The 429 answer for a refusal.
    pub fn refusal(&self, message: &str) -> Response {
        let secs = self.retry_after.as_millis().div_ceil(1000) as u64;
        let mut response = ApiError::new(ErrorCode::RateLimited, message)
            .with_retry_after(secs.max(1))
            .into_response();
        self.apply(response.headers_mut());
        response
    }
}

type Local = Governor<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
    StateInformationMiddleware,
>;

/// One limit: its parameters and its in-memory bucket.
struct Limit {
    /// Time to earn one cell.
    interval: Duration,
    burst: u32,
    local: Local,
}

impl Limit {
    fn new(interval: Duration, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let interval = interval.max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            interval,
            burst: burst.get(),
            local: Governor::keyed(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }

    fn check_local(&self, key: &str, n: u32) -> Decision {
        let n = n.clamp(1, self.burst);
        let cells = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let limit = u64::from(self.burst);
        match self.local.check_key_n(&key.to_owned(), cells) {
            Ok(Ok(snapshot)) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset: self.interval * (self.burst.saturating_sub(remaining as u32)),
                    retry_after: Duration::ZERO,
                }
            }
            Ok(Err(not_until)) => {
                use governor::clock::Clock;
                let wait = not_until.wait_time_from(self.local.clock().now());
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset: wait + self.interval * (self.burst - n),
                    retry_after: wait,
                }
            }
            // `n` is clamped to the burst, so this does not happen.
            Err(_) => Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset: self.interval * self.burst,
                retry_after: self.interval * n,
            },
        }
    }
}

/// GCRA in Redis, atomically. KEYS[1]: the bucket. ARGV: microseconds per
/// cell, burst, cells wanted. Returns {allowed, remaining, reset_us,
/// retry_after_us}. The stored value is the theoretical arrival time in
/// microseconds of Redis' clock; it expires when the bucket is full.
const GCRA_LUA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval * n
local allow_at = new_tat - tolerance
if allow_at > now then
  local remaining = math.floor((now - (tat - tolerance)) / interval)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now - (new_tat - tolerance)) / interval)
return {1, remaining, new_tat - now, 0}
";

/// A Redis connection shared by the rate limits and the lockout, with
/// lazy (re)connection and a per-call timeout.
pub struct SharedRedis {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    /// Milliseconds since `epoch` before which no reconnection is tried.
    retry_at_ms: AtomicU64,
    epoch: Instant,
    /// Whether the last call failed (to log changes, not every call).
    failing: std::sync::atomic::AtomicBool,
}

/// How long after a failed connection attempt the next one is made.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);

impl SharedRedis {
    pub fn open(config: &RedisConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("invalid redis.url: {e}"))?;
        Ok(Some(Arc::new(Self {
            client,
            prefix: config.key_prefix.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            conn: tokio::sync::Mutex::new(None),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            failing: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    /// The full Redis key for `parts`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        key.push_str(&parts.join(":"));
        key
    }

    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms < self.retry_at_ms.load(Ordering::Relaxed) {
            return None;
        }
        // Another request is connecting: use local limits meanwhile.
        let mut guard = self.conn.try_lock().ok()?;
        if let Some(conn) = guard.as_ref() {
            return Some(conn.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let attempt = tokio::time::timeout(
            self.timeout * 2,
            redis::aio::ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                *guard = Some(conn.clone());
                Some(conn)
            }
            Ok(Err(error)) => {
                self.failed(&error.to_string());
                None
            }
            Err(_) => {
                self.failed("connection timed out");
                None
            }
        }
    }

    fn failed(&self, error: &str) {
        let retry = self.epoch.elapsed() + RECONNECT_AFTER;
        self.retry_at_ms
            .store(retry.as_millis() as u64, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "redis is unavailable; rate limits and lockouts fall back to this node's memory"
            );
        }
        metrics::counter!("sluice_ratelimit_redis_errors_total").increment(1);
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("redis is reachable again; rate limits and lockouts are shared");
        }
    }

    /// Run `script` with a timeout; `None` (after logging) on any failure.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[u64],
    ) -> Option<T> {
        let mut conn = self.connection().await?;
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(*a);
        }
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => {
                self.recovered();
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(&error.to_string());
                None
            }
            Err(_) => {
                self.failed("command timed out");
                None
            }
        }
    }
}

/// Every rate limit of this process.
pub struct RateLimits {
    enabled: bool,
    auth_failures: Limit,
    management: Limit,
    ingest: Limit,
    redis: Option<Arc<SharedRedis>>,
    script: redis::Script,
}

impl RateLimits {
    pub fn new(config: &ServerConfig, redis: Option<Arc<SharedRedis>>) -> Self {
        let r = &config.rate_limits;
        let per_min = |n: u32| Duration::from_secs(60) / n.max(1);
        Self {
            enabled: r.enabled,
            auth_failures: Limit::new(per_min(r.auth_failures_per_min), r.auth_failures_per_min),
            management: Limit::new(per_min(r.management_per_min), r.management_per_min),
            ingest: Limit::new(
                Duration::from_secs(1) / r.ingest_bytes_per_sec.max(1),
                r.ingest_burst_bytes,
            ),
            redis,
            script: redis::Script::new(GCRA_LUA),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn limit(&self, class: Class) -> &Limit {
        match class {
            Class::AuthFailure => &self.auth_failures,
            Class::Management => &self.management,
            Class::Ingest => &self.ingest,
        }
    }

    /// The burst of `class` (the most cells one check can take).
    pub fn burst(&self, class: Class) -> u32 {
        self.limit(class).burst
    }

    /// Charge `n` cells of `class` to `key`: in Redis when configured and
    /// reachable, else in this process's memory.
    pub async fn check(&self, class: Class, key: &str, n: u32) -> Decision {
        let limit = self.limit(class);
        let n = n.clamp(1, limit.burst);
        let decision = match &self.redis {
            Some(redis) => {
                let interval_us = (limit.interval.as_micros() as u64).max(1);
                let rkey = redis.key(&["rl", class.name(), key]);
                let reply: Option<(i64, i64, i64, i64)> = redis
                    .invoke(
                        &self.script,
                        &[rkey],
                        &[interval_us, u64::from(limit.burst), u64::from(n)],
                    )
                    .await;
                match reply {
                    Some((allowed, remaining, reset_us, retry_us)) => Decision {
                        allowed: allowed == 1,
                        limit: u64::from(limit.burst),
                        remaining: remaining.max(0) as u64,
                        reset: Duration::from_micros(reset_us.max(0) as u64),
                        retry_after: Duration::from_micros(retry_us.max(0) as u64),
                    },
                    None => limit.check_local(key, n),
                }
            }
            None => limit.check_local(key, n),
        };
        if !decision.allowed {
            metrics::counter!("sluice_rate_limited_total", "limit" => class.name()).increment(1);
        }
        decision
    }

    /// Forget in-memory buckets that are full again (bounded memory).
    pub fn retain_recent(&self) {
        self.auth_failures.local.retain_recent();
        self.management.local.retain_recent();
        self.ingest.local.retain_recent();
    }
}

/// Every minute, drop in-memory buckets that no longer matter.
pub fn spawn_housekeeping(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = state.shutdown().cancelled() => return,
                _ = tick.tick() => {
                    state.rate_limits().retain_recent();
                    state.lockout().prune();
                }
            }
        }
    });
}

/// Middleware (after authentication): charge the caller's key. Batch
/// submission is charged in body bytes, everything else one call.
pub async fn limit_key(
    State(state): State<AppState>,
    matched: MatchedPath,
    mut req: Request,
    next: Next,
) -> Response {
    let limits = state.rate_limits();
    if !limits.enabled() {
        return next.run(req).await;
    }
    let Some(key_id) = req.extensions().get::<Principal>().map(|p| p.key_id) else {
        return next.run(req).await;
    };
    let key = key_id.to_string();
    let permission = crate::routes::permission_for(req.method(), matched.as_str());
    let decision = if permission == Some(Permission::BatchesSubmit) {
        let burst = limits.burst(Class::Ingest);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let upfront = declared.map_or(burst.min(64 * 1024), |n| {
            n.min(u64::from(burst)).max(1) as u32
        });
        let decision = limits.check(Class::Ingest, &key, upfront).await;
        if decision.allowed {
            let body = std::mem::take(req.body_mut());
            *req.body_mut() = throttled(body, state.clone(), key, u64::from(upfront));
        }
        decision
    } else {
        limits.check(Class::Management, &key, 1).await
    };
    if !decision.allowed {
        return decision.refusal("too many requests for this API key; retry later");
    }
    let mut response = next.run(req).await;
    decision.apply(response.headers_mut());
    response
}

/// `body`, read no faster than the key's ingest rate allows; the first
/// `prepaid` bytes were charged already.
fn throttled(body: Body, state: AppState, key: String, prepaid: u64) -> Body {
    let stream = body.into_data_stream();
    let stream = futures::stream::unfold(
        (stream, state, key, prepaid),
        |(mut stream, state, key, mut prepaid)| async move {
            let chunk = stream.next().await?;
            if let Ok(bytes) = &chunk {
                let len = bytes.len() as u64;
                let covered = len.min(prepaid);
                prepaid -= covered;
                let mut owed = len - covered;
                let limits = state.rate_limits();
                let burst = u64::from(limits.burst(Class::Ingest));
                while owed > 0 {
                    let n = owed.min(burst);
                    let decision = limits.check(Class::Ingest, &key, n as u32).await;
                    if decision.allowed {
                        owed -= n;
                    } else {
                        tokio::time::sleep(decision.retry_after.max(Duration::from_millis(1)))
                            .await;
                    }
                }
            }
            Some((chunk, (stream, state, key, prepaid)))
        },
    );
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(tweak: impl FnOnce(&mut ServerConfig)) -> RateLimits {
        let mut config = ServerConfig::default();
        tweak(&mut config);
        RateLimits::new(&config, None)
    }

    #[tokio::test]
    async fn the_burst_passes_then_refusals_say_when() {
        let l = limits(|c| c.rate_limits.management_per_min = 3);
        for left in [2, 1, 0] {
            let d = l.check(Class::Management, "k", 1).await;
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, left));
        }
        let d = l.check(Class::Management, "k", 1).await;
        assert!(!d.allowed);
        assert!(
            d.retry_after > Duration::from_secs(15) && d.retry_after <= Duration::from_secs(20)
        );
        // Other keys have their own bucket.
        assert!(l.check(Class::Management, "other", 1).await.allowed);
        let mut h = HeaderMap::new();
        d.apply(&mut h);
        assert_eq!(h["ratelimit-limit"], "3");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["retry-after"], "20");
    }

    #[tokio::test]
    async fn ingest_counts_bytes() {
        let l = limits(|c| {
            c.rate_limits.ingest_bytes_per_sec = 1000;
            c.rate_limits.ingest_burst_bytes = 1000;
        });
        assert!(l.check(Class::Ingest, "k", 600).await.allowed);
        let d = l.check(Class::Ingest, "k", 600).await;
        assert!(!d.allowed);
        assert!(d.retry_after >= Duration::from_millis(100));
        assert!(l.check(Class::Ingest, "k", 300).await.allowed);
    }
}
