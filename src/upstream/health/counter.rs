//! Pure health decisions, no IO and no clock of their own: the active check's threshold counter
//! and the passive ejection schedule.

use crate::config::Eject;
use std::time::Duration;

/// Up or down by consecutive check results: `healthy` passes in a row bring a server in,
/// `unhealthy` failures in a row take it out. A server not checked yet is `Pending`: its first
/// result decides at once (a new replica joins after one passing check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveCounter {
    state: State,
    streak: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Up,
    Down,
}

impl Default for ActiveCounter {
    fn default() -> Self {
        ActiveCounter {
            state: State::Pending,
            streak: 0,
        }
    }
}

impl ActiveCounter {
    /// Records one check; returns the new state when it changed.
    pub fn record(&mut self, passed: bool, healthy: u32, unhealthy: u32) -> Option<State> {
        let (same, threshold, next) = match (self.state, passed) {
            (State::Pending, true) => return self.change(State::Up),
            (State::Pending, false) => return self.change(State::Down),
            (State::Up, true) | (State::Down, false) => {
                self.streak = 0;
                return None;
            }
            (State::Up, false) => (State::Up, unhealthy, State::Down),
            (State::Down, true) => (State::Down, healthy, State::Up),
        };
        debug_assert_eq!(same, self.state);
        self.streak += 1;
        if self.streak >= threshold {
            self.change(next)
        } else {
            None
        }
    }

    fn change(&mut self, next: State) -> Option<State> {
        self.state = next;
        self.streak = 0;
        Some(next)
    }

    pub fn state(&self) -> State {
        self.state
    }
}

/// The cool-down for the `nth` ejection in a row (1-based): doubling, capped.
pub fn cooldown(eject: &Eject, nth: u32) -> Duration {
    let factor = 1u32 << nth.saturating_sub(1).min(16);
    eject
        .cooldown
        .saturating_mul(factor)
        .min(eject.max_cooldown)
}

/// What one proxied request said about its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connect refused or timed out, or the connection reset or closed before a response.
    Failure,
    /// A 5xx answer.
    ServerError,
    Success,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_first_result() {
        let mut c = ActiveCounter::default();
        assert_eq!(c.record(true, 2, 3), Some(State::Up));
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(
            c.record(true, 2, 3),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), Some(State::Down));
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), Some(State::Up));
        let mut fresh = ActiveCounter::default();
        assert_eq!(fresh.record(false, 2, 3), Some(State::Down));
    }

    #[test]
    fn cooldown_doubles_up_to_the_cap() {
        let e = Eject {
            failures: 3,
            server_errors: 0,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(60),
        };
        let secs: Vec<u64> = (1..=5).map(|n| cooldown(&e, n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60]);
    }
}
