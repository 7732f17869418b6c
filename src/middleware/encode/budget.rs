//! The memory budget of compression: at most `[server] max_encoders` encoders alive at once,
//! all routes and reloads together (a response compressed under the previous config still
//! counts). An encoder holds 0.34 (gzip) to 4.4 MiB (brotli) for as long as its response
//! streams, so without a cap the number of compressed responses in flight sets the memory.
//! Over the cap a response goes out uncompressed (with `Vary: Accept-Encoding`, as for a client
//! that takes no coding), counted in `gatehouse_encode_skipped_total{reason="budget"}`.

use crate::metrics::Metrics;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Encoders alive now, process-wide.
#[derive(Debug)]
pub struct EncoderBudget {
    alive: AtomicUsize,
    /// `alive`, for `/metrics`.
    gauge: IntGauge,
    skipped: IntCounter,
}

/// One encoder's place in the budget; given back when dropped (with the response body).
#[must_use]
#[derive(Debug)]
pub struct EncoderTicket(Arc<EncoderBudget>);

impl EncoderBudget {
    pub fn new(metrics: &Metrics) -> Arc<EncoderBudget> {
        Arc::new(EncoderBudget {
            alive: AtomicUsize::new(0),
            gauge: metrics.encoders_active(),
            skipped: metrics.encode_skipped("budget"),
        })
    }

    /// A place for one more encoder under `max` (0: no limit), or `None`, counted as skipped.
    pub fn take(self: &Arc<Self>, max: usize) -> Option<EncoderTicket> {
        let before = self.alive.fetch_add(1, Ordering::Relaxed);
        if max > 0 && before >= max {
            self.alive.fetch_sub(1, Ordering::Relaxed);
            self.skipped.inc();
            return None;
        }
        self.gauge.inc();
        Some(EncoderTicket(self.clone()))
    }

    /// Whether a response now would go out uncompressed for the budget (what a `HEAD` answers,
    /// without taking a place: it sends no body to compress).
    pub fn is_full(&self, max: usize) -> bool {
        max > 0 && self.alive.load(Ordering::Relaxed) >= max
    }
}

impl Drop for EncoderTicket {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_cap_and_given_back() {
        let metrics = Metrics::new().unwrap();
        let budget = EncoderBudget::new(&metrics);
        let first = budget.take(2).unwrap();
        let _second = budget.take(2).unwrap();
        assert!(budget.is_full(2));
        assert!(budget.take(2).is_none());
        assert_eq!(budget.skipped.get(), 1);
        assert_eq!(budget.gauge.get(), 2);
        drop(first);
        assert!(!budget.is_full(2));
        let _again = budget.take(2).unwrap();
        // 0 is no limit
        let many: Vec<_> = (0..100).map(|_| budget.take(0).unwrap()).collect();
        assert_eq!(budget.gauge.get(), 102);
        drop(many);
        assert_eq!(budget.alive.load(Ordering::Relaxed), 2);
    }
}
