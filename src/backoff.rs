//! Exponential backoff with jitter, for reconnects and kube watch streams (the sweeper's
//! followers and pod watch, the router's backend watch).

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with equal jitter: each delay is between half and all of the current
/// step, so many followers that failed together (a node hiccup) do not retry in lockstep.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, step: min }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

/// As the backoff of a kube watch stream (reset by the stream on every event).
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        Backoff::reset(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped_then_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        let steps = [100, 200, 400, 800, 1000, 1000, 1000, 1000].map(Duration::from_millis);
        for (delay, step) in delays.iter().zip(steps) {
            assert!(*delay >= step / 2 && *delay <= step, "{delay:?} not within [{:?}, {step:?}]", step / 2);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
