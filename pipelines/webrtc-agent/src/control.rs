//! Small control laws, free of I/O: the reconnect backoff and the loss-based bitrate controller.

use std::time::Duration;

/// Reconnect delays: `base`, doubling, capped at `max`, plus up to 10 % jitter so that many
/// agents restarted together do not reconnect in lockstep. `reset` after a `hello_ack`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            next: base,
        }
    }

    /// The delay before the next attempt; `unit` in [0, 1) draws the jitter.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d + d.mul_f64(0.1 * unit.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// A uniform number in [0, 1) from the kernel's generator (for jitter; not for secrets).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Loss-based sender bitrate from the viewer's RTCP receiver reports (the rule of WebRTC's
/// loss-based controller): more than 10 % lost → cut by half the loss fraction; less than 2 %
/// → grow by 8 %; in between → hold.
#[derive(Debug, Clone)]
pub struct LossBasedRate {
    kbps: u32,
    min: u32,
    max: u32,
}

impl LossBasedRate {
    pub fn new(start: u32, min: u32, max: u32) -> Self {
        let max = max.max(min);
        LossBasedRate {
            kbps: start.clamp(min, max),
            min,
            max,
        }
    }

    pub fn kbps(&self) -> u32 {
        self.kbps
    }

    /// Feeds one report's fraction lost (0..=1); returns the new target.
    pub fn on_report(&mut self, fraction_lost: f64) -> u32 {
        let loss = if fraction_lost.is_finite() {
            fraction_lost.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let k = self.kbps as f64;
        let next = if loss > 0.10 {
            k * (1.0 - 0.5 * loss)
        } else if loss < 0.02 {
            k * 1.08 + 1.0
        } else {
            k
        };
        self.kbps = (next as u32).clamp(self.min, self.max);
        self.kbps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let seq: Vec<u64> = (0..9).map(|_| b.next_delay(0.0).as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        let d = b.next_delay(0.999);
        assert!(
            d >= Duration::from_secs(1) && d < Duration::from_millis(1100),
            "{d:?}"
        );
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn loss_cuts_and_clean_reports_grow_within_bounds() {
        let mut r = LossBasedRate::new(1000, 100, 2000);
        assert_eq!(r.on_report(0.5), 750);
        assert_eq!(r.on_report(0.05), 750);
        assert!(r.on_report(0.0) > 800);
        for _ in 0..50 {
            r.on_report(0.0);
        }
        assert_eq!(r.kbps(), 2000);
        for _ in 0..50 {
            r.on_report(1.0);
        }
        assert_eq!(r.kbps(), 100);
        assert_eq!(r.on_report(f64::NAN), 109);
    }
}
