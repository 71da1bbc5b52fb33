//! The daemon's proxy counters as last written: the daemon rewrites one
//! row every second, and a dashboard attached to it reads the row with
//! the rest of the store and computes rates from successive readings.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Proxy request counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyTraffic {
    /// When they were read (unix ms).
    pub at_ms: i64,
    /// Requests answered since the proxy started.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub server_errors: u64,
}

/// SQLite keeps signed integers; a count past i64::MAX stays there.
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Replaces the recorded counters with `traffic`.
    pub(crate) fn write_proxy_traffic(&self, traffic: &ProxyTraffic) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO proxy_traffic (id, at, requests, server_errors) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at, requests = excluded.requests,
                     server_errors = excluded.server_errors",
                params![
                    traffic.at_ms,
                    to_sql(traffic.requests),
                    to_sql(traffic.server_errors)
                ],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// The counters last written, if a proxy ever wrote any.
    pub(crate) fn proxy_traffic(&self) -> Result<Option<ProxyTraffic>, StoreError> {
        self.conn
            .query_row(
                "SELECT at, requests, server_errors FROM proxy_traffic WHERE id = 1",
                [],
                |r| {
                    Ok(ProxyTraffic {
                        at_ms: r.get(0)?,
                        requests: from_sql(r.get(1)?),
                        server_errors: from_sql(r.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_counters_written_are_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let daemon = Store::open(&file).expect("daemon");
        let dashboard = Store::open(&file).expect("dashboard");
        assert_eq!(dashboard.proxy_traffic().expect("read"), None);
        for (at_ms, requests) in [(1_000, 5), (2_000, 9)] {
            daemon
                .write_proxy_traffic(&ProxyTraffic {
                    at_ms,
                    requests,
                    server_errors: 1,
                })
                .expect("write");
        }
        assert_eq!(
            dashboard.proxy_traffic().expect("read"),
            Some(ProxyTraffic {
                at_ms: 2_000,
                requests: 9,
                server_errors: 1
            })
        );
    }
}
