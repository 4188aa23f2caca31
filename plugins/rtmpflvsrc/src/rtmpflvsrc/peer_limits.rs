// SPDX-License-Identifier: MPL-2.0

//! Limits on peers that do not publish, as plain state without I/O (the network side applies
//! them): the table of pending connections with eviction of the oldest, the digest that posts
//! one bus warning per kind per interval, and the throttle on wrong application / stream-key
//! guesses per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

/// Connections not publishing (yet) served at once: handshaking, connecting, being rejected.
/// The publisher does not count against it.
pub(super) const MAX_PENDING: usize = 64;
/// When every pending slot is taken, the oldest pending connection is dropped for a new one if
/// it has had this long to publish; otherwise the new connection is refused. A real publisher
/// needs a few round trips, an attacker holding slots is churned out.
pub(super) const PENDING_GRACE: Duration = Duration::from_secs(1);
/// At most one bus warning per kind (refused, dropped) per interval; the others are counted
/// and summarized.
pub(super) const WARNING_INTERVAL: Duration = Duration::from_secs(5);
/// Wrong application / stream-key guesses per peer address: this many at once, then one per
/// [`GUESS_INTERVAL`] (the answer to a guess is delayed).
const GUESS_BURST: u32 = 5;
const GUESS_INTERVAL: Duration = Duration::from_secs(1);
/// Addresses remembered by the guess throttle, at most.
const GUESS_TABLE: usize = 1024;

/// Connections that do not publish (yet): when they fill [`MAX_PENDING`], the oldest one past
/// [`PENDING_GRACE`] makes room for a newcomer.
#[derive(Default)]
pub(super) struct PendingTable {
    conns: HashMap<u64, (Instant, Option<AbortHandle>)>,
}

impl PendingTable {
    /// Admits connection `id`; returns the task to abort to make room (if any), or `Err` with
    /// the reason to refuse the newcomer.
    pub(super) fn admit(&mut self, id: u64, now: Instant) -> Result<Option<AbortHandle>, String> {
        let mut evict = None;
        if self.conns.len() >= MAX_PENDING {
            let oldest = self
                .conns
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(id, (since, _))| (*id, *since));
            match oldest {
                Some((old, since)) if now.duration_since(since) >= PENDING_GRACE => {
                    evict = self.conns.remove(&old).and_then(|(_, h)| h);
                }
                _ => {
                    return Err(format!(
                        "{MAX_PENDING} connections are already connecting, none of them for \
                         longer than {} ms",
                        PENDING_GRACE.as_millis()
                    ));
                }
            }
        }
        self.conns.insert(id, (now, None));
        Ok(evict)
    }

    pub(super) fn set_handle(&mut self, id: u64, handle: AbortHandle) {
        if let Some(entry) = self.conns.get_mut(&id) {
            entry.1 = Some(handle);
        }
    }

    /// Removes `id`; false if it was not there (evicted).
    pub(super) fn remove(&mut self, id: u64) -> bool {
        self.conns.remove(&id).is_some()
    }
}

/// Bus warnings of one kind at most once per [`WARNING_INTERVAL`]; the rest are counted and
/// reported in one summary.
#[derive(Default)]
pub(super) struct WarningDigest {
    kinds: HashMap<&'static str, DigestEntry>,
}

struct DigestEntry {
    posted: Instant,
    suppressed: u64,
    latest: String,
}

impl WarningDigest {
    /// The text to post now, or `None` if this warning is only counted.
    pub(super) fn admit(&mut self, kind: &'static str, text: &str, now: Instant) -> Option<String> {
        match self.kinds.get_mut(kind) {
            Some(e) if now.duration_since(e.posted) < WARNING_INTERVAL => {
                e.suppressed += 1;
                e.latest = text.to_string();
                None
            }
            Some(e) => {
                let out = if e.suppressed > 0 {
                    format!(
                        "{text} (and {} more like this in the {} s before)",
                        e.suppressed,
                        now.duration_since(e.posted).as_secs()
                    )
                } else {
                    text.to_string()
                };
                e.posted = now;
                e.suppressed = 0;
                Some(out)
            }
            None => {
                self.kinds.insert(
                    kind,
                    DigestEntry {
                        posted: now,
                        suppressed: 0,
                        latest: String::new(),
                    },
                );
                Some(text.to_string())
            }
        }
    }

    /// Summaries of what was counted over a finished interval.
    pub(super) fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.kinds.values_mut() {
            if e.suppressed > 0 && now.duration_since(e.posted) >= WARNING_INTERVAL {
                out.push(format!(
                    "{} more like this in the last {} s, the latest: {}",
                    e.suppressed,
                    now.duration_since(e.posted).as_secs(),
                    e.latest
                ));
                e.posted = now;
                e.suppressed = 0;
            }
        }
        out
    }
}

/// Wrong application / stream-key guesses per address (GCRA): [`GUESS_BURST`] answered at
/// once, then one per [`GUESS_INTERVAL`].
#[derive(Default)]
pub(super) struct GuessThrottle {
    /// Per address: the time the next guess is "due" at the sustained rate.
    due: HashMap<IpAddr, Instant>,
}

impl GuessThrottle {
    /// Counts a wrong guess from `ip`; returns how long its answer must wait.
    pub(super) fn charge(&mut self, ip: IpAddr, now: Instant) -> Duration {
        if self.due.len() >= GUESS_TABLE && !self.due.contains_key(&ip) {
            // Forget addresses that are back at full allowance, else the one due soonest.
            self.due.retain(|_, due| *due > now);
            if self.due.len() >= GUESS_TABLE
                && let Some(ip) = self.due.iter().min_by_key(|(_, d)| **d).map(|(ip, _)| *ip)
            {
                self.due.remove(&ip);
            }
        }
        let due = self.due.entry(ip).or_insert(now);
        let start = (*due).max(now);
        *due = start + GUESS_INTERVAL;
        let allowance = GUESS_INTERVAL * GUESS_BURST;
        (start + GUESS_INTERVAL)
            .saturating_duration_since(now)
            .saturating_sub(allowance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_table_evicts_only_past_the_grace() {
        let t0 = Instant::now();
        let mut t = PendingTable::default();
        for id in 0..MAX_PENDING as u64 {
            assert!(matches!(t.admit(id, t0), Ok(None)));
        }
        // Full of young connections: the newcomer is refused.
        let e = t.admit(1000, t0 + PENDING_GRACE / 2).unwrap_err();
        assert!(e.contains("already connecting"), "{e}");
        // Past the grace the oldest makes room (no handle registered: nothing to abort).
        assert!(matches!(t.admit(1001, t0 + PENDING_GRACE), Ok(None)));
        assert_eq!(t.conns.len(), MAX_PENDING);
        assert!(t.conns.contains_key(&1001));
        // A connection that became the publisher left the table; an evicted one is gone.
        assert!(t.remove(1001));
        assert!(!t.remove(1001));
    }

    #[test]
    fn warning_digest_posts_once_per_interval_and_summarizes() {
        let t0 = Instant::now();
        let mut d = WarningDigest::default();
        assert_eq!(d.admit("refused", "a", t0).as_deref(), Some("a"));
        for i in 0..1000 {
            assert!(d.admit("refused", &format!("r{i}"), t0).is_none());
        }
        // Another kind is independent.
        assert_eq!(d.admit("dropped", "b", t0).as_deref(), Some("b"));
        assert!(d.flush(t0 + WARNING_INTERVAL / 2).is_empty());
        let s = d.flush(t0 + WARNING_INTERVAL);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(
            s[0].starts_with("1000 more like this") && s[0].ends_with("r999"),
            "{s:?}"
        );
        assert!(d.flush(t0 + WARNING_INTERVAL * 3).is_empty());
        let later = t0 + WARNING_INTERVAL * 3;
        assert_eq!(d.admit("refused", "c", later).as_deref(), Some("c"));
    }

    #[test]
    fn guess_throttle_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut g = GuessThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let delays: Vec<Duration> = (0..8).map(|_| g.charge(ip, t0)).collect();
        assert!(
            delays[..GUESS_BURST as usize].iter().all(|d| d.is_zero()),
            "{delays:?}"
        );
        assert_eq!(delays[GUESS_BURST as usize], GUESS_INTERVAL);
        assert_eq!(delays[GUESS_BURST as usize + 2], GUESS_INTERVAL * 3);
        // Another address is not slowed down.
        assert!(g.charge("192.0.2.2".parse().unwrap(), t0).is_zero());
        // After a quiet period the burst is back.
        assert!(g.charge(ip, t0 + GUESS_INTERVAL * 20).is_zero());
        // The table stays bounded.
        for i in 0..(GUESS_TABLE as u32 * 2) {
            g.charge(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(g.due.len() <= GUESS_TABLE);
    }
}
