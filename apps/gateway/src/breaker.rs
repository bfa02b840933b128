//! A circuit breaker per backend.
//!
//! A failed attempt is one the backend could not serve: no connection, a timeout, a broken
//! answer, or 502/503/504 (a 500 is an answer about that request, and is not counted).
//!
//! Closed: every attempt goes through; it opens after `failure_threshold` consecutive failed
//! attempts, or when at least `failure_ratio` of the attempts in the last 10 s failed (once
//! there were `min_requests` of them). Open: requests fail fast (503 + `Retry-After`) for
//! `open_duration`. Half-open: one probe request goes through at a time; its success closes the
//! breaker, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use shopstack_telemetry::metrics::{IntCounterVec, IntGauge};

/// Length of the failure-ratio window, in one-second buckets.
const WINDOW_SECS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The `gateway_circuit_breaker_state` value.
    fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// 0 turns the breaker off.
    pub failure_threshold: u32,
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub open_duration: Duration,
}

/// Attempts and failures in one second of the ratio window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    total: u32,
    failures: u32,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    probe_in_flight: bool,
    window: [Bucket; WINDOW_SECS],
}

pub struct Breaker {
    settings: BreakerSettings,
    started: Instant,
    inner: Mutex<Inner>,
    state_gauge: IntGauge,
    transitions: IntCounterVec<2>,
    upstream: &'static str,
}

/// Permission for one attempt. Report its result with [`Permit::finish`]; a permit dropped
/// unfinished (the client went away) frees the half-open probe slot without a verdict.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    finished: bool,
}

impl Permit<'_> {
    /// The attempt's verdict, and when it was reached (`now`, read once by the caller for
    /// this and the attempt's duration).
    pub fn finish(mut self, success: bool, now: Instant) {
        self.finished = true;
        self.breaker.record(self.probe, success, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            self.breaker.lock().probe_in_flight = false;
        }
    }
}

impl Breaker {
    pub fn new(
        upstream: &'static str,
        settings: BreakerSettings,
        state_gauge: IntGauge,
        transitions: IntCounterVec<2>,
    ) -> Self {
        state_gauge.set(BreakerState::Closed.gauge_value());
        let now = Instant::now();
        Self {
            settings,
            started: now,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: now,
                probe_in_flight: false,
                window: [Bucket::default(); WINDOW_SECS],
            }),
            state_gauge,
            transitions,
            upstream,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn enabled(&self) -> bool {
        self.settings.failure_threshold > 0
    }

    /// May an attempt go through now? `Err(retry_after)` while open (or half-open with its
    /// probe already out).
    pub fn admit(&self) -> Result<Permit<'_>, Duration> {
        if !self.enabled() {
            return Ok(Permit {
                breaker: self,
                probe: false,
                finished: false,
            });
        }
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(Permit {
                breaker: self,
                probe: false,
                finished: false,
            }),
            BreakerState::Open => {
                let open_for = inner.opened_at.elapsed();
                if open_for < self.settings.open_duration {
                    return Err(self.settings.open_duration - open_for);
                }
                self.transition(&mut inner, BreakerState::HalfOpen);
                inner.probe_in_flight = true;
                Ok(Permit {
                    breaker: self,
                    probe: true,
                    finished: false,
                })
            }
            BreakerState::HalfOpen => {
                if inner.probe_in_flight {
                    Err(Duration::from_secs(1))
                } else {
                    inner.probe_in_flight = true;
                    Ok(Permit {
                        breaker: self,
                        probe: true,
                        finished: false,
                    })
                }
            }
        }
    }

    fn record(&self, probe: bool, success: bool, now: Instant) {
        let mut inner = self.lock();
        let second = now.saturating_duration_since(self.started).as_secs();
        let bucket = &mut inner.window[(second % WINDOW_SECS as u64) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                total: 0,
                failures: 0,
            };
        }
        bucket.total += 1;
        if !success {
            bucket.failures += 1;
        }
        if probe {
            inner.probe_in_flight = false;
        }
        if success {
            inner.consecutive_failures = 0;
            if probe && inner.state == BreakerState::HalfOpen {
                inner.window = [Bucket::default(); WINDOW_SECS];
                self.transition(&mut inner, BreakerState::Closed);
            }
            return;
        }
        inner.consecutive_failures += 1;
        match inner.state {
            BreakerState::HalfOpen if probe => self.open(&mut inner, now),
            BreakerState::Closed => {
                let (total, failures) = inner
                    .window
                    .iter()
                    .filter(|bucket| second.saturating_sub(bucket.second) < WINDOW_SECS as u64)
                    .fold((0u32, 0u32), |(t, f), bucket| {
                        (t + bucket.total, f + bucket.failures)
                    });
                let ratio_tripped = total >= self.settings.min_requests.max(1)
                    && f64::from(failures) >= self.settings.failure_ratio * f64::from(total);
                if inner.consecutive_failures >= self.settings.failure_threshold || ratio_tripped {
                    self.open(&mut inner, now);
                }
            }
            _ => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.opened_at = now;
        inner.consecutive_failures = 0;
        self.transition(inner, BreakerState::Open);
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        if inner.state == to {
            return;
        }
        tracing::warn!(
            upstream = self.upstream,
            from = inner.state.name(),
            to = to.name(),
            "circuit breaker state changed"
        );
        inner.state = to;
        self.state_gauge.set(to.gauge_value());
        self.transitions
            .with_label_values(&[self.upstream, to.name()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopstack_telemetry::metrics::Registry;

    fn breaker(threshold: u32, open: Duration) -> Breaker {
        let registry = Registry::with_constant_label("service", "gateway");
        let gauge = registry
            .gauge("state", "state")
            .unwrap_or_else(|_| unreachable!());
        let transitions = registry
            .counter_vec("t_total", "t", ["upstream", "to"])
            .unwrap_or_else(|_| unreachable!());
        Breaker::new(
            "test",
            BreakerSettings {
                failure_threshold: threshold,
                failure_ratio: 0.5,
                min_requests: 20,
                open_duration: open,
            },
            gauge,
            transitions,
        )
    }

    fn fail(breaker: &Breaker) {
        if let Ok(permit) = breaker.admit() {
            permit.finish(false, Instant::now());
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let breaker = breaker(5, Duration::from_secs(60));
        for _ in 0..4 {
            fail(&breaker);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        let retry_after = breaker.admit().err();
        assert!(retry_after.is_some_and(|wait| wait <= Duration::from_secs(60)));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let breaker = breaker(3, Duration::from_secs(60));
        fail(&breaker);
        fail(&breaker);
        if let Ok(permit) = breaker.admit() {
            permit.finish(true, Instant::now());
        }
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_on_the_failure_ratio() {
        let breaker = breaker(100, Duration::from_secs(60));
        for index in 0..40 {
            if let Ok(permit) = breaker.admit() {
                permit.finish(index % 2 == 0, Instant::now());
            }
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_closes_on_success() {
        let breaker = breaker(1, Duration::ZERO);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        let probe = breaker.admit();
        assert!(probe.is_ok());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(
            breaker.admit().is_err(),
            "a second request while the probe is out fails fast"
        );
        if let Ok(permit) = probe {
            permit.finish(true, Instant::now());
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_probe_frees_the_slot() {
        let breaker = breaker(1, Duration::ZERO);
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        drop(breaker.admit());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(
            breaker.admit().is_ok(),
            "the abandoned probe's slot is free again"
        );
    }

    #[test]
    fn threshold_zero_turns_it_off() {
        let breaker = breaker(0, Duration::from_secs(60));
        for _ in 0..50 {
            fail(&breaker);
        }
        assert!(breaker.admit().is_ok());
    }
}
