//! A real PostgreSQL client for stateful tests and benchmarks: rows are
//! counted only once the server acknowledged their commit, and afterwards
//! every acknowledged row must still be there.

// Each test binary and benchmark uses a part.
#![allow(dead_code)]
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// Connects as `postgres` (the lab's image trusts its network) to
/// `address:port`.
pub fn connect(addr: &str) -> Result<postgres::Client> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{addr} is not address:port"))?;
    let port: u16 = port.parse().with_context(|| format!("port of {addr}"))?;
    let mut client = postgres::Config::new()
        .host(host)
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2))
        // A server cut off mid-insert fails the insert within seconds
        // instead of the kernel's quarter of an hour.
        .tcp_user_timeout(Duration::from_secs(3))
        .connect(postgres::NoTls)
        .with_context(|| format!("connect to PostgreSQL at {addr}"))?;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS acked (i bigint PRIMARY KEY)")
        .context("create table acked")?;
    Ok(client)
}

/// A client of `app`'s `service` through the first of its recorded
/// addresses (on the node at `node`, when given) that answers: a moved or
/// replaced container's record may linger. The address, and the client.
pub fn client_of(
    state: &Path,
    app: &str,
    service: &str,
    node: Option<&str>,
) -> Result<(String, postgres::Client)> {
    let prefix = node.map(|n| format!("{n}:"));
    let mut last = None;
    for addr in crate::common::published_addrs(state, app, service)
        .into_iter()
        .filter(|a| prefix.as_ref().is_none_or(|p| a.starts_with(p.as_str())))
    {
        match connect(&addr) {
            Ok(c) => return Ok((addr, c)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no address of {app}/{service} recorded on {node:?}")))
}

/// Every row of `app`'s `service` on the node at `node`.
pub fn rows_on(state: &Path, app: &str, service: &str, node: &str) -> Result<BTreeSet<i64>> {
    let (addr, _) = client_of(state, app, service, Some(node))?;
    rows(&addr)
}

/// Inserts rows `from..from+n`, one commit each; the ids acknowledged.
pub fn write_rows(addr: &str, from: i64, n: i64) -> Result<Vec<i64>> {
    let mut client = connect(addr)?;
    let mut acked = Vec::new();
    for i in from..from.saturating_add(n) {
        client
            .execute("INSERT INTO acked (i) VALUES ($1)", &[&i])
            .with_context(|| format!("insert row {i} at {addr}"))?;
        acked.push(i);
    }
    Ok(acked)
}

/// Every row the table holds.
pub fn rows(addr: &str) -> Result<BTreeSet<i64>> {
    let mut client = connect(addr)?;
    Ok(client
        .query("SELECT i FROM acked", &[])
        .with_context(|| format!("select from {addr}"))?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect())
}

/// Acknowledged rows missing from `found`.
pub fn lost(acked: &[i64], found: &BTreeSet<i64>) -> Vec<i64> {
    acked
        .iter()
        .copied()
        .filter(|i| !found.contains(i))
        .collect()
}

/// What a [`Writer`] saw.
#[derive(Debug, Default)]
pub struct Writes {
    /// Rows whose commit the server acknowledged.
    pub acked: Vec<i64>,
    /// Inserts that failed or went unanswered (not acknowledged: they may
    /// or may not be there).
    pub failed: u64,
    /// The longest time between two acknowledgements.
    pub longest_gap: Duration,
}

/// Inserts one row after another into the database of `app`'s `service`,
/// wherever the state store says its port is published, reconnecting
/// whenever the server goes away.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Writes>>,
}

impl Writer {
    pub fn start(state: &Path, app: &str, service: &str, first: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (state, app, service): (PathBuf, String, String) =
            (state.to_path_buf(), app.to_owned(), service.to_owned());
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut w = Writes::default();
            let mut client: Option<postgres::Client> = None;
            let mut last = Instant::now();
            let mut i = first;
            while !flag.load(Ordering::Relaxed) {
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => match client_of(&state, &app, &service, None) {
                        Ok((_, c)) => client.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    },
                };
                i += 1;
                match c.execute("INSERT INTO acked (i) VALUES ($1)", &[&i]) {
                    Ok(_) => {
                        w.acked.push(i);
                        w.longest_gap = w.longest_gap.max(last.elapsed());
                        last = Instant::now();
                    }
                    Err(_) => {
                        w.failed += 1;
                        client = None;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            w
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops writing; what was written.
    pub fn stop(mut self) -> Writes {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
