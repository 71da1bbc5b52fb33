//! The inventory across passes: discovery's latest answer, kept when the
//! provider fails (throttled, credentials expired, endpoint down) so that
//! Prism goes on probing the nodes it knows, and asked again with backoff.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Discovery, DiscoveryError, Listing, Node};

/// The first retry after a failure waits this long, each further one twice
/// as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Discovery with memory.
pub(crate) struct Inventory {
    discovery: Discovery,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    nodes: Option<Vec<Node>>,
    failures: u32,
    failing_since: Option<Instant>,
    retry_at: Option<Instant>,
    error: String,
}

/// One pass's inventory.
#[derive(Debug)]
pub(crate) struct Found {
    /// The fleet's machines (terminated ones left out).
    pub nodes: Vec<Node>,
    /// Every id the provider answered with, terminated ones included: what
    /// it has word of. Empty when the answer is stale.
    pub listed: BTreeSet<String>,
    /// Set when discovery failed and `nodes` are the last known ones.
    pub stale: Option<Stale>,
    /// Discovery answered again after failing.
    pub recovered: Option<Recovered>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The latest error, in words.
    pub error: String,
    /// Failed attempts in a row.
    pub failures: u32,
    /// This pass made an attempt that failed (rather than waiting out the
    /// backoff): worth a log line.
    pub attempted: bool,
    pub failing_for: Duration,
    pub retry_in: Duration,
    /// The nodes kept came from the state store: discovery has not
    /// answered once since Prism started.
    pub from_store: bool,
}

impl Stale {
    /// A listing that answered but was held back by the guard against
    /// mass change: treated as stale, so no node is marked gone.
    pub fn held(summary: &str) -> Stale {
        Stale {
            error: format!("held back: {summary}"),
            failures: 0,
            attempted: false,
            failing_for: Duration::ZERO,
            retry_in: Duration::ZERO,
            from_store: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub failures: u32,
    pub after: Duration,
}

impl Inventory {
    pub fn new(discovery: Discovery) -> Inventory {
        Inventory {
            discovery,
            known: Mutex::new(Known::default()),
        }
    }

    /// The fleet's nodes now, or, when discovery fails, the last ones it
    /// gave (else `stored()`, what the state store knows). An error only
    /// when there is neither.
    pub async fn nodes(&self, stored: impl FnOnce() -> Vec<Node>) -> Result<Found, DiscoveryError> {
        let now = Instant::now();
        {
            let known = self.lock();
            if let (Some(nodes), Some(retry_at)) = (&known.nodes, known.retry_at)
                && now < retry_at
            {
                return Ok(Found {
                    nodes: nodes.clone(),
                    listed: BTreeSet::new(),
                    stale: Some(known.stale(now, false, false)),
                    recovered: None,
                });
            }
        }
        let answer = self.discovery.listing().await;
        let now = Instant::now();
        let mut known = self.lock();
        match answer {
            Ok(Listing { nodes, listed }) => {
                let recovered = (known.failures > 0).then(|| Recovered {
                    failures: known.failures,
                    after: known
                        .failing_since
                        .map_or(Duration::ZERO, |s| now.duration_since(s)),
                });
                *known = Known {
                    nodes: Some(nodes.clone()),
                    ..Known::default()
                };
                Ok(Found {
                    nodes,
                    listed,
                    stale: None,
                    recovered,
                })
            }
            Err(e) => {
                known.failures += 1;
                known.failing_since.get_or_insert(now);
                known.retry_at = Some(now + jittered(backoff(known.failures)));
                known.error = e.to_string();
                let from_store = known.nodes.is_none();
                let nodes = match &known.nodes {
                    Some(nodes) => nodes.clone(),
                    None => stored(),
                };
                if nodes.is_empty() && from_store {
                    // Nothing to keep probing: say so plainly.
                    known.retry_at = None;
                    return Err(e);
                }
                Ok(Found {
                    stale: Some(known.stale(now, true, from_store)),
                    nodes,
                    listed: BTreeSet::new(),
                    recovered: None,
                })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Known {
    fn stale(&self, now: Instant, attempted: bool, from_store: bool) -> Stale {
        Stale {
            error: self.error.clone(),
            failures: self.failures,
            attempted,
            failing_for: self
                .failing_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
            retry_in: self
                .retry_at
                .map_or(Duration::ZERO, |r| r.saturating_duration_since(now)),
            from_store,
        }
    }
}

/// The wait after `failures` failed attempts in a row: 1 s, 2 s, 4 s, ...
/// up to 15 s.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// Up to a fifth less, so that many operators do not retry in step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 - fastrand::f64() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_ceiling() {
        let secs: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 15, 15, 15]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(10));
            assert!(
                j <= Duration::from_secs(10) && j >= Duration::from_secs(8),
                "{j:?}"
            );
        }
    }
}
