//! Reconnect delays.
//!
//! Pure arithmetic over a [`ReconnectPolicy`] plus one random draw for the jitter; it knows
//! nothing about connections. The session decides when to call it and when to reset it.

use std::time::Duration;

use crate::config::ReconnectPolicy;

/// The delay sequence of successive reconnect attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The delay before the next attempt, jittered, and advances the sequence.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = self.policy.jitter;
        if nominal.is_zero() || jitter <= 0.0 {
            return nominal;
        }
        nominal.mul_f64(rand::random_range(1.0 - jitter..=1.0 + jitter))
    }

    /// Starts the sequence over (after a connection that stayed up, or an explicit request).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The un-jittered delay of attempt `n` (0-based): 0, base, 2·base, 4·base … capped.
    fn nominal(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow((n - 1).min(31));
        self.policy
            .base_delay
            .saturating_mul(factor)
            .min(self.policy.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(values: &[f64]) -> Vec<Duration> {
        values.iter().map(|s| Duration::from_secs_f64(*s)).collect()
    }

    #[test]
    fn the_sequence_doubles_from_zero_and_caps_at_32_seconds() {
        let policy = ReconnectPolicy {
            jitter: 0.0,
            ..ReconnectPolicy::default()
        };
        let mut backoff = Backoff::new(policy);
        let got: Vec<_> = (0..12).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            got,
            secs(&[
                0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0, 32.0, 32.0
            ])
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::ZERO);
        assert_eq!(backoff.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut backoff = Backoff::new(ReconnectPolicy::default());
        assert_eq!(
            backoff.next_delay(),
            Duration::ZERO,
            "the first retry is immediate"
        );
        for _ in 0..200 {
            backoff.attempt = 5; // nominal 4 s
            let d = backoff.next_delay().as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d} outside 4 s ± 20 %");
        }
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(ReconnectPolicy {
            jitter: 0.0,
            ..ReconnectPolicy::default()
        });
        backoff.attempt = u32::MAX;
        assert_eq!(backoff.next_delay(), Duration::from_secs(32));
    }
}
