//! Minimum transfer rates (`body_min_rate`, `send_min_rate`) kept as a budget of waiting time.
//!
//! Every byte the client moves earns `1 / rate` seconds of waiting, up to `window` (the rate's
//! own, else as long as the timeout of the same wait: `body_timeout`, `timeouts.send`); a
//! client starts with `window` (its grace period). Only time spent waiting *on the client* is charged:
//! for a request body, while a read of it is pending; for a response, while a write to the
//! client's socket is pending. Time spent on a slow upstream, or with nothing to send, costs
//! nothing. When the budget runs out during a wait, the client is too slow.
//!
//! So a client must average `rate` over any stretch in which it is waited on, and may pause for
//! as long as it has earned (at most `window`) once it has kept up: a 20 KB/s upload earns 40 s
//! of pause per second at 512 B/s and never runs out; 1 byte every 2 s earns 2 ms per 2 s and
//! runs out one `window` after it started. A timeout, by contrast, is reset by every byte.
//!
//! `Pace` is pure bookkeeping; `Stall` is the one timer of a wait, shared by the request body
//! (`body::CountedBody`) and the client socket (`conn::WatchedIo`).

use crate::config::MinRate;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct Pace {
    rate: MinRate,
    /// The window, in microseconds (the rate's own, else the timeout's).
    window_us: u64,
    /// Waiting the client may still cost, in microseconds.
    credit_us: u64,
    /// When the current wait on the client began.
    waiting_since: Option<Instant>,
}

impl Pace {
    /// `timeout`: the plain timeout of the same wait, the window when `rate` has none.
    pub fn new(rate: MinRate, timeout: Duration) -> Pace {
        let window_us = window_us(rate, timeout);
        Pace {
            rate,
            window_us,
            credit_us: window_us,
            waiting_since: None,
        }
    }

    pub fn rate(&self) -> MinRate {
        self.rate
    }

    /// Holds the client to `rate` from now on, with what it had earned (up to the new window).
    pub fn set_rate(&mut self, rate: MinRate, timeout: Duration) {
        self.rate = rate;
        self.window_us = window_us(rate, timeout);
        self.credit_us = self.credit_us.min(self.window_us);
    }

    /// `bytes` moved: each earns `1 / rate` seconds, up to the window.
    pub fn moved(&mut self, bytes: usize) {
        let per_sec = u64::from(self.rate.bytes_per_sec.max(1));
        let earned = (bytes as u64).saturating_mul(1_000_000) / per_sec;
        self.credit_us = self.credit_us.saturating_add(earned).min(self.window_us);
    }

    /// A wait on the client begins at `now`, or goes on: when its budget runs out.
    pub fn waiting(&mut self, now: Instant) -> Instant {
        let since = *self.waiting_since.get_or_insert(now);
        since + Duration::from_micros(self.credit_us)
    }

    /// The wait (if any) ended at `now`: its time is spent.
    pub fn waited(&mut self, now: Instant) {
        if let Some(since) = self.waiting_since.take() {
            let spent = now.saturating_duration_since(since).as_micros();
            let spent = u64::try_from(spent).unwrap_or(u64::MAX);
            self.credit_us = self.credit_us.saturating_sub(spent);
        }
    }
}

/// The timer of one wait on the client: until `timeout`, or until the client's rate budget
/// runs out if that is sooner.
#[derive(Debug)]
pub struct Stall {
    timer: Pin<Box<Sleep>>,
    /// The rate's budget, not the timeout, is what this timer ends.
    pub slow: bool,
}

impl Stall {
    pub fn arm(timeout: Duration, pace: Option<&mut Pace>) -> Stall {
        let now = Instant::now();
        let timeout = now + timeout;
        let slow = pace.map(|p| p.waiting(now)).filter(|at| *at < timeout);
        Stall {
            timer: Box::pin(tokio::time::sleep_until(slow.unwrap_or(timeout))),
            slow: slow.is_some(),
        }
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.as_mut().poll(cx)
    }
}

fn window_us(rate: MinRate, timeout: Duration) -> u64 {
    let window = rate.window.unwrap_or(timeout);
    u64::try_from(window.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: MinRate = MinRate {
        bytes_per_sec: 1024,
        window: Some(WINDOW),
    };
    const WINDOW: Duration = Duration::from_secs(10);
    /// The timeouts' default.
    const MINUTE: Duration = Duration::from_secs(60);

    /// A client that sends `bytes` every `gap` for `rounds`; the wait at which it ran out, if any.
    fn runs_out(bytes: usize, gap: Duration, rounds: u32) -> Option<u32> {
        let mut pace = Pace::new(RATE, MINUTE);
        let mut now = Instant::now();
        for round in 0..rounds {
            let deadline = pace.waiting(now);
            now += gap;
            if deadline < now {
                return Some(round);
            }
            pace.waited(now);
            pace.moved(bytes);
        }
        None
    }

    #[test]
    fn a_trickle_runs_out_after_the_grace() {
        // 1 byte every 2 s: ~2 ms earned per 2 s waited; the 10 s grace lasts 5 waits
        assert_eq!(runs_out(1, Duration::from_secs(2), 100), Some(5));
        // 64 B/s against 1 KB/s: a little slower to run out, but it does
        let round = runs_out(64, Duration::from_secs(1), 100).expect("ran out");
        assert!((10..=11).contains(&round), "{round}");
    }

    #[test]
    fn a_slow_link_with_pauses_never_runs_out() {
        // 20 KB/s in 1 s bursts, each followed by a 5 s pause: 4 KB/s on average
        let mut pace = Pace::new(RATE, MINUTE);
        let mut now = Instant::now();
        for _ in 0..1000 {
            for _ in 0..10 {
                assert!(pace.waiting(now) >= now + Duration::from_millis(100));
                now += Duration::from_millis(100);
                pace.waited(now);
                pace.moved(2048);
            }
            assert!(pace.waiting(now) >= now + Duration::from_secs(5), "paused");
            now += Duration::from_secs(5);
            pace.waited(now);
        }
    }

    /// The default's reasoning (`config::DEFAULT_MIN_RATE`), checked.
    #[test]
    fn the_default_cuts_a_trickle_and_a_64_byte_reader_in_about_a_minute_and_never_a_phone() {
        use crate::config::DEFAULT_MIN_RATE;
        let cut_after = |bytes: usize, gap: Duration| {
            let mut pace = Pace::new(DEFAULT_MIN_RATE, MINUTE);
            let start = Instant::now();
            let mut now = start;
            loop {
                let deadline = pace.waiting(now);
                if deadline < now + gap {
                    return deadline - start;
                }
                now += gap;
                pace.waited(now);
                pace.moved(bytes);
            }
        };
        let trickle = cut_after(1, Duration::from_secs(2));
        assert!((60..=61).contains(&trickle.as_secs()), "{trickle:?}");
        let reader = cut_after(64, Duration::from_secs(1));
        assert!((68..=69).contains(&reader.as_secs()), "{reader:?}");
        // 20 KB/s for 1 s, then 5 s of nothing, for an hour
        let mut pace = Pace::new(DEFAULT_MIN_RATE, MINUTE);
        let mut now = Instant::now();
        for _ in 0..600 {
            now += Duration::from_secs(1);
            pace.moved(20 << 10);
            assert!(pace.waiting(now) >= now + Duration::from_secs(5));
            now += Duration::from_secs(5);
            pace.waited(now);
        }
    }

    #[test]
    fn without_a_window_of_its_own_the_rate_takes_the_timeouts() {
        let rate = MinRate {
            window: None,
            ..RATE
        };
        let now = Instant::now();
        let five_minutes = Duration::from_secs(300);
        let mut pace = Pace::new(rate, five_minutes);
        assert_eq!(pace.waiting(now), now + five_minutes);
    }

    #[test]
    fn credit_is_capped_at_the_window() {
        let mut pace = Pace::new(RATE, MINUTE);
        pace.moved(100 << 20);
        let now = Instant::now();
        assert_eq!(pace.waiting(now), now + WINDOW);
        // the deadline of a wait in progress stays where it was
        assert_eq!(pace.waiting(now + Duration::from_secs(3)), now + WINDOW);
        pace.waited(now + Duration::from_secs(4));
        let later = now + Duration::from_secs(4);
        assert_eq!(pace.waiting(later), later + Duration::from_secs(6));
        let tighter = MinRate {
            window: Some(Duration::from_secs(2)),
            ..RATE
        };
        pace.waited(later);
        pace.set_rate(tighter, MINUTE);
        assert_eq!(pace.waiting(later), later + Duration::from_secs(2));
    }
}
