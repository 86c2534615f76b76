//! Locking out client addresses that keep failing to authenticate
//! (R-SEC-5).
//!
//! `lockout.max_failures` failed authentications from one address within
//! `lockout.window_secs` (a window that opens at the first failure) lock
//! the address out for `lockout.duration_secs`: every request from it is
//! answered 429 `RATE_LIMITED` with `Retry-After` before its key is even
//! looked at, so a valid key does not help an address that has been
//! guessing. When the lock ends the count starts again from zero.
//!
//! The start of a lockout is a security event: a `security_event` log
//! line for the SIEM, a metric, and an audit row: in the tenant whose key
//! was being tried when the failure that triggered it named a known
//! (revoked, expired or rotated-out) key, else in the system chain
//! (guesses of unknown keys belong to no tenant).
//!
//! With `redis.url` set the counts and locks live in Redis (one Lua
//! script per failure, atomic), so every API node locks the address out
//! together; if Redis is unavailable the node falls back to its own
//! memory, as the rate limits do (see [`crate::ratelimit`]).

use crate::ratelimit::SharedRedis;
use sluice_config::server::LockoutConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Count a failure; lock when the count reaches the maximum. KEYS[1]: the
/// failure counter, KEYS[2]: the lock. ARGV: window ms, max failures, lock
/// ms. Returns 1 when this failure started a lockout.
const FAILURE_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  return 1
end
return 0
";

/// How long the lock of KEYS[1] still lasts, in ms (0: not locked).
const LOCKED_LUA: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then return 0 end
return ttl
";

#[derive(Debug, Default)]
struct Entry {
    failures: u32,
    window_start: Option<Instant>,
    locked_until: Option<Instant>,
}

pub struct Lockout {
    config: LockoutConfig,
    local: Mutex<HashMap<String, Entry>>,
    redis: Option<Arc<SharedRedis>>,
    failure_script: redis::Script,
    locked_script: redis::Script,
}

impl Lockout {
    pub fn new(config: &LockoutConfig, redis: Option<Arc<SharedRedis>>) -> Self {
        Self {
            config: config.clone(),
            local: Mutex::new(HashMap::new()),
            redis,
            failure_script: redis::Script::new(FAILURE_LUA),
            locked_script: redis::Script::new(LOCKED_LUA),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_secs)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.config.duration_secs)
    }

    /// How much longer `addr` is locked out, if it is.
    pub async fn locked(&self, addr: &str) -> Option<Duration> {
        if !self.enabled() {
            return None;
        }
        if let Some(redis) = &self.redis {
            let key = redis.key(&["lockout", "lock", addr]);
            if let Some(ms) = redis.invoke::<i64>(&self.locked_script, &[key], &[]).await {
                return (ms > 0).then(|| Duration::from_millis(ms as u64));
            }
        }
        self.locked_local(addr, Instant::now())
    }

    /// Count one failed authentication of `addr`. `Some(duration)` when
    /// this failure started a lockout.
    pub async fn record_failure(&self, addr: &str) -> Option<Duration> {
        if !self.enabled() {
            return None;
        }
        if let Some(redis) = &self.redis {
            let keys = [
                redis.key(&["lockout", "failures", addr]),
                redis.key(&["lockout", "lock", addr]),
            ];
            let args = [
                self.window().as_millis() as u64,
                u64::from(self.config.max_failures),
                self.duration().as_millis() as u64,
            ];
            if let Some(started) = redis
                .invoke::<i64>(&self.failure_script, &keys, &args)
                .await
            {
                return (started == 1).then(|| self.duration());
            }
        }
        self.record_local(addr, Instant::now())
    }

    fn locked_local(&self, addr: &str, now: Instant) -> Option<Duration> {
        let map = self.local.lock().ok()?;
        let until = map.get(addr)?.locked_until?;
        (until > now).then(|| until - now)
    }

    fn record_local(&self, addr: &str, now: Instant) -> Option<Duration> {
        let mut map = self.local.lock().ok()?;
        let entry = map.entry(addr.to_owned()).or_default();
        if entry.locked_until.is_some_and(|until| until > now) {
            return None;
        }
        entry.locked_until = None;
        if entry
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.window())
        {
            entry.window_start = Some(now);
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures >= self.config.max_failures {
            entry.failures = 0;
            entry.window_start = None;
            entry.locked_until = Some(now + self.duration());
            return Some(self.duration());
        }
        None
    }

    /// Forget addresses whose window and lock are over.
    pub fn prune(&self) {
        let now = Instant::now();
        let window = self.window();
        if let Ok(mut map) = self.local.lock() {
            map.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now)
                    || e.window_start
                        .is_some_and(|s| now.duration_since(s) < window)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn locks_at_the_count_and_ends_on_time() {
        let config = LockoutConfig {
            enabled: true,
            max_failures: 3,
            window_secs: 60,
            duration_secs: 10,
        };
        let l = Lockout::new(&config, None);
        let t0 = Instant::now();
        assert_eq!(l.record_local("a", t0), None);
        assert_eq!(l.record_local("a", t0), None);
        assert_eq!(l.locked_local("a", t0), None);
        assert_eq!(l.record_local("a", t0), Some(Duration::from_secs(10)));
        assert_eq!(l.locked_local("a", t0), Some(Duration::from_secs(10)));
        assert_eq!(l.locked_local("b", t0), None);
        // Failures while locked do not extend the lock.
        assert_eq!(l.record_local("a", t0 + Duration::from_secs(5)), None);
        let after = t0 + Duration::from_secs(10);
        assert_eq!(l.locked_local("a", after), None);
        // A fresh count after the lock.
        assert_eq!(l.record_local("a", after), None);
    }

    #[test]
    fn the_window_expires() {
        let config = LockoutConfig {
            enabled: true,
            max_failures: 2,
            window_secs: 5,
            duration_secs: 10,
        };
        let l = Lockout::new(&config, None);
        let t0 = Instant::now();
        assert_eq!(l.record_local("a", t0), None);
        assert_eq!(l.record_local("a", t0 + Duration::from_secs(6)), None);
        assert!(l.record_local("a", t0 + Duration::from_secs(7)).is_some());
    }
}
