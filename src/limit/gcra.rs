//! The limiting algorithms over one key's cell, knowing nothing of requests or HTTP: GCRA
//! (a token bucket as one timestamp), UTC-aligned fixed windows (quotas), and in-flight
//! counts (concurrency). Times are microseconds: GCRA and concurrency on a monotonic clock,
//! windows on the Unix clock (so "per 1d" resets at midnight UTC on every node).
//!
//! Usage from elsewhere (other shards, other nodes) is *charged* to a cell: it moves the
//! same state local admissions move, without a verdict, so every reader sums everyone's use.

/// One key's state. One enum for all three algorithms keeps a table homogeneous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Theoretical arrival time: the cell is full again at `tat`.
    Gcra { tat: u64 },
    /// Requests counted in window number `window` (Unix time / period).
    Window { window: u64, count: u64 },
    /// Requests in flight here, and elsewhere as last told.
    InFlight { here: u64, elsewhere: i64 },
}

/// A policy's algorithm and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rate` per `period` with `burst` extra at once: emission interval `period / rate`,
    /// tolerance `burst` intervals.
    Gcra { interval_us: u64, tolerance_us: u64 },
    /// At most `limit` per UTC-aligned window of `period_us`.
    FixedWindow { limit: u64, period_us: u64 },
    /// At most `limit` in flight.
    Concurrency { limit: u64 },
}

/// What a check decided, with what the `RateLimit` fields report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests that would still be admitted right now.
    pub remaining: u64,
    /// Microseconds until the cell is back to full (`RateLimit` `t`).
    pub reset_us: u64,
    /// Microseconds until a refused request could be admitted (`Retry-After`).
    pub retry_us: u64,
}

impl Algorithm {
    /// A fresh cell.
    pub fn empty(&self, now: Clocks) -> Cell {
        match *self {
            Algorithm::Gcra { .. } => Cell::Gcra { tat: now.mono_us },
            Algorithm::FixedWindow { period_us, .. } => Cell::Window {
                window: now.unix_us / period_us,
                count: 0,
            },
            Algorithm::Concurrency { .. } => Cell::InFlight {
                here: 0,
                elsewhere: 0,
            },
        }
    }

    /// Whether forgetting this cell loses nothing (it is back to what a fresh one says).
    pub fn at_rest(&self, cell: &Cell, now: Clocks) -> bool {
        match (*self, *cell) {
            (Algorithm::Gcra { .. }, Cell::Gcra { tat }) => tat <= now.mono_us,
            (Algorithm::FixedWindow { period_us, .. }, Cell::Window { window, count }) => {
                count == 0 || window != now.unix_us / period_us
            }
            (Algorithm::Concurrency { .. }, Cell::InFlight { here, elsewhere }) => {
                here == 0 && elsewhere <= 0
            }
            _ => true,
        }
    }

    /// Admits one request (moving the cell) or refuses it (leaving the cell as it was).
    /// `weight`: how many requests one admission counts for (more than one while a cluster
    /// limit is enforced locally: each node takes its share).
    pub fn check(&self, cell: &mut Cell, now: Clocks, weight: u64) -> Verdict {
        self.normalise(cell, now);
        match (*self, &mut *cell) {
            (
                Algorithm::Gcra {
                    interval_us,
                    tolerance_us,
                },
                Cell::Gcra { tat },
            ) => {
                let start = (*tat).max(now.mono_us);
                let cost = interval_us.saturating_mul(weight);
                let next = start.saturating_add(cost);
                // Admitted while the cell's debt after this request stays within the
                // tolerance plus the request itself. A weighted request (a node taking its
                // share of a cluster limit) costs `weight` intervals: the rate divides, the
                // burst (in time) stays.
                let ceiling = tolerance_us.saturating_add(cost);
                let allowed = next - now.mono_us <= ceiling;
                if allowed {
                    *tat = next;
                }
                let debt = (*tat).max(now.mono_us) - now.mono_us;
                Verdict {
                    allowed,
                    remaining: ceiling.saturating_sub(debt) / cost.max(1),
                    reset_us: debt,
                    retry_us: if allowed {
                        0
                    } else {
                        (next - now.mono_us) - ceiling
                    },
                }
            }
            (Algorithm::FixedWindow { limit, period_us }, Cell::Window { window, count }) => {
                // Weighted: a node's share is limit / weight, rounded up (never zero).
                let allowed = *count < limit;
                if allowed {
                    *count = count.saturating_add(weight);
                }
                let end = (*window + 1) * period_us;
                let left = end.saturating_sub(now.unix_us);
                Verdict {
                    allowed,
                    remaining: limit.saturating_sub(*count) / weight.max(1),
                    reset_us: left,
                    retry_us: if allowed { 0 } else { left },
                }
            }
            (Algorithm::Concurrency { limit }, Cell::InFlight { here, elsewhere }) => {
                let busy = (*here as i64 + (*elsewhere).max(0)) as u64;
                let allowed = busy.saturating_add(weight) <= limit;
                if allowed {
                    *here += weight;
                }
                let busy = (*here as i64 + (*elsewhere).max(0)) as u64;
                Verdict {
                    allowed,
                    remaining: limit.saturating_sub(busy),
                    reset_us: 0,
                    // Nobody knows when a request ends: ask for a retry in a second.
                    retry_us: if allowed { 0 } else { 1_000_000 },
                }
            }
            // A cell of another algorithm (the policy changed kind on reload): start over.
            _ => {
                *cell = self.empty(now);
                self.check(cell, now, weight)
            }
        }
    }

    /// Charges `n` requests admitted elsewhere (negative: in-flight requests that ended
    /// elsewhere). `window`: the window they were counted in, for fixed windows.
    pub fn charge(&self, cell: &mut Cell, now: Clocks, n: i64, window: u64) {
        self.normalise(cell, now);
        match (*self, &mut *cell) {
            (Algorithm::Gcra { interval_us, .. }, Cell::Gcra { tat }) if n > 0 => {
                *tat = (*tat)
                    .max(now.mono_us)
                    .saturating_add(interval_us.saturating_mul(n as u64));
            }
            (Algorithm::FixedWindow { .. }, Cell::Window { window: w, count })
                if n > 0 && *w == window =>
            {
                *count = count.saturating_add(n as u64);
            }
            (Algorithm::Concurrency { .. }, Cell::InFlight { elsewhere, .. }) => {
                *elsewhere = elsewhere.saturating_add(n);
            }
            _ => {}
        }
    }

    /// Ends one local in-flight request (concurrency).
    pub fn release(&self, cell: &mut Cell, weight: u64) {
        if let Cell::InFlight { here, .. } = cell {
            *here = here.saturating_sub(weight);
        }
    }

    /// The window `now` falls in (fixed windows; 0 otherwise).
    pub fn window(&self, now: Clocks) -> u64 {
        match *self {
            Algorithm::FixedWindow { period_us, .. } => now.unix_us / period_us,
            _ => 0,
        }
    }

    /// A window that has passed starts over.
    fn normalise(&self, cell: &mut Cell, now: Clocks) {
        if let (Algorithm::FixedWindow { period_us, .. }, Cell::Window { window, count }) =
            (*self, &mut *cell)
        {
            let current = now.unix_us / period_us;
            if *window != current {
                *window = current;
                *count = 0;
            }
        }
    }
}

/// The two clocks a check reads, read once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clocks {
    pub mono_us: u64,
    pub unix_us: u64,
}

impl Clocks {
    pub fn now() -> Clocks {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        // Starts at one hour so a fresh GCRA cell (tat = now) never sits at zero.
        let mono_us = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_micros() as u64
            + 3_600_000_000;
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Clocks { mono_us, unix_us }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn at(s: f64) -> Clocks {
        let us = (s * SEC as f64) as u64;
        Clocks {
            mono_us: 3600 * SEC + us,
            unix_us: 1_764_547_200 * SEC + us, // 2025-12-01T00:00:00Z
        }
    }

    fn gcra(rate: u64, period_s: u64, burst: u64) -> Algorithm {
        let interval_us = period_s * SEC / rate;
        Algorithm::Gcra {
            interval_us,
            tolerance_us: burst * interval_us,
        }
    }

    #[test]
    fn gcra_admits_burst_plus_one_then_the_rate() {
        let a = gcra(10, 1, 4);
        let mut cell = a.empty(at(0.0));
        let verdicts: Vec<Verdict> = (0..6).map(|_| a.check(&mut cell, at(0.0), 1)).collect();
        assert!(verdicts[..5].iter().all(|v| v.allowed));
        assert_eq!(
            verdicts.iter().map(|v| v.remaining).collect::<Vec<_>>(),
            [4, 3, 2, 1, 0, 0]
        );
        let refused = verdicts[5];
        assert!(!refused.allowed);
        assert_eq!(refused.retry_us, SEC / 10);
        assert_eq!(refused.reset_us, SEC / 2);
        // One interval later, exactly one more.
        assert!(a.check(&mut cell, at(0.1), 1).allowed);
        assert!(!a.check(&mut cell, at(0.1), 1).allowed);
        // After a full second the whole burst is back.
        let n = (0..10)
            .filter(|_| a.check(&mut cell, at(2.0), 1).allowed)
            .count();
        assert_eq!(n, 5);
        assert!(!a.at_rest(&cell, at(2.0)));
        assert!(a.at_rest(&cell, at(3.0)));
    }

    #[test]
    fn gcra_over_a_long_run_holds_the_rate() {
        let a = gcra(100, 1, 0);
        let mut cell = a.empty(at(0.0));
        // A request every millisecond for 10 s: 100 per second get through (+1 at t=0).
        let admitted = (0..10_000u64)
            .filter(|i| {
                let now = Clocks {
                    mono_us: 3600 * SEC + i * 1000,
                    unix_us: 0,
                };
                a.check(&mut cell, now, 1).allowed
            })
            .count();
        assert!((1000..=1001).contains(&admitted), "{admitted}");
    }

    #[test]
    fn charges_from_elsewhere_count_like_local_admissions() {
        let a = gcra(10, 1, 9);
        let mut cell = a.empty(at(0.0));
        a.charge(&mut cell, at(0.0), 8, 0);
        let n = (0..10)
            .filter(|_| a.check(&mut cell, at(0.0), 1).allowed)
            .count();
        assert_eq!(n, 2);
        // Weighted: each admission counts for 3.
        let mut cell = a.empty(at(0.0));
        let n = (0..10)
            .filter(|_| a.check(&mut cell, at(0.0), 3).allowed)
            .count();
        assert_eq!(n, 4, "a third of 10, rounded up");
        // A share smaller than one request still admits one per interval of the share.
        let strict = gcra(10, 1, 0);
        let mut cell = strict.empty(at(0.0));
        assert!(strict.check(&mut cell, at(0.0), 2).allowed);
        assert!(!strict.check(&mut cell, at(0.1), 2).allowed);
        assert!(strict.check(&mut cell, at(0.2), 2).allowed);
        let quota = Algorithm::FixedWindow {
            limit: 1,
            period_us: 60 * SEC,
        };
        let mut cell = quota.empty(at(0.0));
        assert!(quota.check(&mut cell, at(0.0), 3).allowed);
        assert!(!quota.check(&mut cell, at(0.0), 3).allowed);
    }

    #[test]
    fn fixed_windows_are_utc_aligned_and_reset() {
        let a = Algorithm::FixedWindow {
            limit: 3,
            period_us: 86_400 * SEC,
        };
        let mut cell = a.empty(at(0.0));
        let late = at(86_399.0);
        assert!(a.check(&mut cell, late, 1).allowed);
        a.charge(&mut cell, late, 1, a.window(late));
        a.charge(&mut cell, late, 5, a.window(late) - 1); // an old window's news: ignored
        let v = a.check(&mut cell, late, 1);
        assert!(v.allowed && v.remaining == 0);
        let v = a.check(&mut cell, late, 1);
        assert!(!v.allowed);
        assert_eq!(v.retry_us, SEC);
        // Midnight UTC: a new day.
        let next = at(86_400.0);
        assert!(a.at_rest(&cell, next));
        assert_eq!(a.check(&mut cell, next, 1).remaining, 2);
    }

    #[test]
    fn concurrency_counts_in_flight_here_and_elsewhere() {
        let a = Algorithm::Concurrency { limit: 2 };
        let mut cell = a.empty(at(0.0));
        assert!(a.check(&mut cell, at(0.0), 1).allowed);
        a.charge(&mut cell, at(0.0), 1, 0);
        let v = a.check(&mut cell, at(0.0), 1);
        assert!(!v.allowed && v.retry_us == SEC);
        a.charge(&mut cell, at(0.0), -1, 0);
        assert!(a.check(&mut cell, at(0.0), 1).allowed);
        a.release(&mut cell, 1);
        a.release(&mut cell, 1);
        assert!(a.at_rest(&cell, at(0.0)));
    }
}
