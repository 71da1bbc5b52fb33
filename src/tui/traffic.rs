//! The proxy's figures in the header: requests per second, and the share
//! of them answered with a 5xx status, from successive readings of its
//! counters (the proxy's own when it runs in this process, the row the
//! daemon writes every second when attached). Pure: readings in, figures
//! out.

use std::collections::VecDeque;

use crate::store::ProxyTraffic;

/// Rates are over about this much time.
pub(crate) const WINDOW_MS: i64 = 5_000;
/// A newest reading older than this means no proxy reports: the daemon
/// runs without one (`--no-proxy`), or has stopped.
pub(crate) const STALE_MS: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProxyRate {
    pub requests_per_s: f64,
    /// Of the requests answered, the share with a 5xx status (0 to 1);
    /// `None` when none were answered.
    pub server_errors: Option<f64>,
}

/// What the header says about the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ProxyView {
    /// No proxy runs, or none reports.
    Off,
    /// One reading so far: no rate yet.
    Measuring,
    Rate(ProxyRate),
}

/// The rates between two readings; `None` when no time passed between
/// them or a counter went back (another proxy's counters began).
pub fn rate(from: &ProxyTraffic, to: &ProxyTraffic) -> Option<ProxyRate> {
    let ms = to.at_ms.checked_sub(from.at_ms).filter(|ms| *ms > 0)?;
    let requests = to.requests.checked_sub(from.requests)?;
    let errors = to.server_errors.checked_sub(from.server_errors)?;
    // The two counters are read one after the other: a request can show
    // in the errors before the total.
    let errors = errors.min(requests);
    Some(ProxyRate {
        requests_per_s: requests as f64 * 1000.0 / ms as f64,
        server_errors: (requests > 0).then(|| errors as f64 / requests as f64),
    })
}

/// The readings of the last [`WINDOW_MS`], and one before them to measure
/// from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meter {
    readings: VecDeque<ProxyTraffic>,
}

impl Meter {
    /// Adds a reading. One no newer than the last is the same row read
    /// again and is ignored; counters that went back start over.
    pub fn push(&mut self, reading: ProxyTraffic) {
        if let Some(last) = self.readings.back() {
            if reading.at_ms <= last.at_ms {
                return;
            }
            if reading.requests < last.requests || reading.server_errors < last.server_errors {
                self.readings.clear();
            }
        }
        self.readings.push_back(reading);
        let start = reading.at_ms - WINDOW_MS;
        while self.readings.get(1).is_some_and(|r| r.at_ms <= start) {
            self.readings.pop_front();
        }
    }

    /// The figures at `now_ms`.
    pub(crate) fn view(&self, now_ms: i64) -> ProxyView {
        let (Some(first), Some(last)) = (self.readings.front(), self.readings.back()) else {
            return ProxyView::Off;
        };
        if now_ms - last.at_ms > STALE_MS {
            return ProxyView::Off;
        }
        match rate(first, last) {
            Some(r) => ProxyView::Rate(r),
            None => ProxyView::Measuring,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: i64, requests: u64, server_errors: u64) -> ProxyTraffic {
        ProxyTraffic {
            at_ms,
            requests,
            server_errors,
        }
    }

    #[test]
    fn rate_is_the_counters_change_over_the_time_between() {
        let r = rate(&at(1_000, 100, 10), &at(3_000, 150, 15)).expect("rate");
        assert_eq!(r.requests_per_s, 25.0);
        assert_eq!(r.server_errors, Some(0.1));
        // No request: no error share to speak of.
        let idle = rate(&at(1_000, 7, 1), &at(2_000, 7, 1)).expect("rate");
        assert_eq!(idle.requests_per_s, 0.0);
        assert_eq!(idle.server_errors, None);
        // The error counter read a step ahead of the total.
        let ahead = rate(&at(0, 0, 0), &at(1_000, 2, 3)).expect("rate");
        assert_eq!(ahead.server_errors, Some(1.0));
    }

    #[test]
    fn no_rate_without_time_or_across_a_restart() {
        assert_eq!(rate(&at(1_000, 1, 0), &at(1_000, 5, 0)), None);
        assert_eq!(rate(&at(2_000, 1, 0), &at(1_000, 5, 0)), None);
        assert_eq!(rate(&at(1_000, 50, 0), &at(2_000, 5, 0)), None);
        assert_eq!(rate(&at(1_000, 50, 9), &at(2_000, 60, 2)), None);
    }

    #[test]
    fn the_meter_measures_over_its_window() {
        let mut m = Meter::default();
        assert_eq!(m.view(0), ProxyView::Off);
        m.push(at(0, 0, 0));
        assert_eq!(m.view(0), ProxyView::Measuring);
        // 10 requests a second for 10 s, then 100 a second for 5 s: the
        // figure is the last 5 s only.
        for s in 1..=10 {
            m.push(at(s * 1_000, 10 * s as u64, 0));
        }
        for s in 1..=5 {
            m.push(at(10_000 + s * 1_000, 100 + 100 * s as u64, s as u64));
        }
        let ProxyView::Rate(r) = m.view(15_000) else {
            panic!("{:?}", m.view(15_000));
        };
        assert_eq!(r.requests_per_s, 100.0);
        assert_eq!(r.server_errors, Some(5.0 / 500.0));
        // The same row read again changes nothing.
        let before = m.clone();
        m.push(at(15_000, 600, 5));
        assert_eq!(m, before);
    }

    #[test]
    fn the_meter_starts_over_when_counters_go_back_and_goes_off_when_stale() {
        let mut m = Meter::default();
        m.push(at(0, 500, 5));
        m.push(at(1_000, 600, 5));
        // A new daemon, counting from zero.
        m.push(at(2_000, 3, 0));
        assert_eq!(m.view(2_000), ProxyView::Measuring);
        m.push(at(3_000, 13, 0));
        assert!(matches!(m.view(3_000), ProxyView::Rate(r) if r.requests_per_s == 10.0));
        assert!(matches!(m.view(3_000 + STALE_MS), ProxyView::Rate(_)));
        assert_eq!(m.view(3_001 + STALE_MS), ProxyView::Off);
    }
}
