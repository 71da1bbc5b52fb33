//! The live side of the route table: per-instance state that outlives a
//! table swap (requests in flight, marked down, draining) and the choice
//! of an instance for each request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use http::uri::Authority;
use tokio::sync::Notify;

use super::limits::{Balance, now_ms};
use super::metrics::{Metrics, RouteMetrics};
use super::routes::{Route, RouteTable, Upstream};
use super::shards::Shards;

/// One instance as the proxy tracks it. Shared by every table that lists
/// the same instance at the same endpoint, and by the requests in flight
/// to it, so a swap neither resets nor cuts them.
#[derive(Debug)]
pub(crate) struct BackendState {
    /// Who the instance is; its health is each table's word, in `Backend`.
    pub upstream: Upstream,
    pub endpoint: String,
    /// `None` when the address cannot form a URI authority: never chosen.
    pub authority: Option<Authority>,
    /// Requests in flight, counted by each worker apart (see [`Shards`]).
    in_flight: Shards<Arc<Count>>,
    down_until_ms: AtomicU64,
    draining: Arc<Draining>,
    connect_failures: AtomicU64,
}

/// One worker's requests in flight to an instance. On cache lines of its
/// own, and in an `Arc` of its own, so that a request taking and dropping
/// its hold writes nothing another worker reads.
type Count = CachePadded<Held>;

#[derive(Debug)]
struct Held {
    n: AtomicUsize,
    draining: Arc<Draining>,
}

/// Set once a drain starts; the drain is woken whenever a worker's count
/// drops to zero meanwhile, and adds the counts up again.
#[derive(Debug, Default)]
struct Draining {
    on: AtomicBool,
    idle: Notify,
}

impl BackendState {
    fn new(upstream: &Upstream, parts: usize) -> BackendState {
        let endpoint = upstream.endpoint();
        let draining = Arc::new(Draining::default());
        BackendState {
            upstream: Upstream {
                healthy: false,
                ..upstream.clone()
            },
            authority: endpoint.parse().ok(),
            endpoint,
            in_flight: Shards::new(parts, || {
                Arc::new(CachePadded::new(Held {
                    n: AtomicUsize::new(0),
                    draining: Arc::clone(&draining),
                }))
            }),
            down_until_ms: AtomicU64::new(0),
            draining,
            connect_failures: AtomicU64::new(0),
        }
    }

    /// Every worker's count added up. SeqCst, as is each count's change
    /// and the drain's flag: a drain that reads a count before its drop
    /// is then sure to be woken by it (see [`InFlight`]'s drop).
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .map(|c| c.n.load(Ordering::SeqCst))
            .sum()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.on.load(Ordering::Acquire)
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    pub(crate) fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// After a failed connect: no new requests for `time`.
    pub(crate) fn mark_down(&self, time: Duration) {
        let until = now_ms().saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX));
        self.down_until_ms.fetch_max(until, Ordering::Relaxed);
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request on `worker`'s count from now until the guard drops
    /// (with the response body, or the end of an upgraded connection).
    /// `None` when a drain started since the instance was picked: the
    /// drain may have read the counts before this one, so the request goes
    /// elsewhere. (Counted first, then the flag read: as the drop, against
    /// the drain's flag-then-counts.)
    pub fn start(&self, worker: usize) -> Option<InFlight> {
        let count = self.in_flight.get(worker);
        count.n.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(count));
        if self.draining.on.load(Ordering::SeqCst) {
            return None;
        }
        Some(guard)
    }

    /// Stops new requests to this instance and waits until those in flight
    /// finish, or `timeout` passes.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        self.draining.on.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.draining.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop to zero in between
            // still wakes us.
            notified.as_mut().enable();
            let left = self.in_flight();
            if left == 0 {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return DrainReport {
                        endpoint: self.endpoint.clone(),
                        known: true,
                        finished: false,
                        in_flight_left: self.in_flight(),
                        waited: started.elapsed(),
                    };
                }
            }
        }
        DrainReport {
            endpoint: self.endpoint.clone(),
            known: true,
            finished: true,
            in_flight_left: 0,
            waited: started.elapsed(),
        }
    }
}

/// What a drain came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub endpoint: String,
    /// False when the proxy had no such instance (nothing to wait for).
    pub known: bool,
    /// Every request finished before the timeout.
    pub finished: bool,
    /// Requests still running when the timeout passed.
    pub in_flight_left: usize,
    pub waited: Duration,
}

/// A request in flight to an instance.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Count>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let count = &self.0;
        // The drain sets its flag and then reads the counts; this drops
        // the count and then reads the flag. All SeqCst, so at least one
        // side sees the other: the drain reads zero here, or is woken.
        if count.n.fetch_sub(1, Ordering::SeqCst) == 1 && count.draining.on.load(Ordering::SeqCst) {
            count.draining.idle.notify_waiters();
        }
    }
}

/// An instance in one table: the shared state plus this table's word on
/// its health.
#[derive(Debug)]
pub(crate) struct Backend {
    pub state: Arc<BackendState>,
    pub healthy: bool,
}

impl Backend {
    fn available(&self, now: u64) -> bool {
        self.healthy
            && self.state.authority.is_some()
            && !self.state.draining.on.load(Ordering::Relaxed)
            && self.state.down_until_ms.load(Ordering::Relaxed) <= now
    }
}

/// A route with its live instances, each worker's round-robin position,
/// and metrics.
#[derive(Debug)]
pub(crate) struct LiveRoute {
    pub route: Route,
    pub backends: Vec<Backend>,
    turns: Shards<AtomicUsize>,
    pub metrics: RouteMetrics,
}

impl LiveRoute {
    /// An available instance not in `tried`, by the balance rule. Each
    /// worker takes its own turns, as nginx's workers do.
    pub fn pick(&self, balance: Balance, tried: &[usize], worker: usize) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let now = now_ms();
        let ok = |i: &usize| !tried.contains(i) && self.backends[*i].available(now);
        let count = (0..n).filter(ok).count();
        if count == 0 {
            return None;
        }
        // Each worker starts at an instance of its own, so after a swap
        // the first instance does not take every worker's first request.
        let turn = worker.wrapping_add(self.turns.get(worker).fetch_add(1, Ordering::Relaxed));
        match balance {
            // Turns over the available instances only, so one that is out
            // does not send its share to its neighbour.
            Balance::RoundRobin => (0..n).filter(ok).nth(turn % count),
            // Ties go in turn, so equal load still spreads.
            Balance::LeastConnections => (0..n)
                .map(|i| (turn % n + i) % n)
                .filter(ok)
                .min_by_key(|&i| self.backends[i].state.in_flight()),
        }
    }
}

/// A table the proxy serves from: swapped whole, read without locks.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub table: RouteTable,
    pub routes: Vec<LiveRoute>,
}

impl Snapshot {
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&LiveRoute> {
        self.table
            .lookup_index(host, path)
            .and_then(|i| self.routes.get(i))
    }
}

/// Every instance the proxy knows of, by endpoint.
#[derive(Debug)]
pub struct Registry {
    /// Parts of each per-worker count: one per worker number (see
    /// [`Shards`]).
    parts: usize,
    states: HashMap<String, Arc<BackendState>>,
    /// Instances that left the table (their app or host removed from
    /// fleet.toml) while requests may still run to them: a drain before
    /// they stop must find them. Kept until a later swap finds them idle.
    retired: HashMap<String, Arc<BackendState>>,
}

impl Registry {
    pub fn new(parts: usize) -> Registry {
        Registry {
            parts,
            states: HashMap::new(),
            retired: HashMap::new(),
        }
    }

    /// The snapshot for `table`. An instance listed before keeps its state
    /// (in flight, down, draining); one at an endpoint that now holds a
    /// different instance starts afresh; instances no longer listed are
    /// retired (requests still running to them keep theirs), and
    /// forgotten at a later swap once idle.
    pub(crate) fn snapshot(&mut self, table: RouteTable, metrics: &Metrics) -> Snapshot {
        let mut states: HashMap<String, Arc<BackendState>> = HashMap::new();
        let mut routes = Vec::with_capacity(table.routes().len());
        for route in table.routes() {
            let mut backends = Vec::with_capacity(route.upstreams.len());
            for up in &route.upstreams {
                let endpoint = up.endpoint();
                let same = |s: &&Arc<BackendState>| same_instance(&s.upstream, up);
                let state = match states
                    .get(&endpoint)
                    .or(self.states.get(&endpoint).filter(same))
                {
                    Some(s) => Arc::clone(s),
                    None => Arc::new(BackendState::new(up, self.parts)),
                };
                states.insert(endpoint, Arc::clone(&state));
                backends.push(Backend {
                    state,
                    healthy: up.healthy,
                });
            }
            routes.push(LiveRoute {
                route: route.clone(),
                backends,
                turns: Shards::new(self.parts, AtomicUsize::default),
                metrics: metrics.route(&route.pattern),
            });
        }
        // Retired at an earlier swap and idle since: nothing to drain.
        self.retired
            .retain(|endpoint, s| s.in_flight() > 0 && !states.contains_key(endpoint));
        let old = std::mem::replace(&mut self.states, states);
        for (endpoint, state) in old {
            if !self.states.contains_key(&endpoint) {
                self.retired.insert(endpoint, state);
            }
        }
        Snapshot { table, routes }
    }

    /// The instance at `endpoint`: listed now, or retired.
    pub fn get(&self, endpoint: &str) -> Option<Arc<BackendState>> {
        self.states
            .get(endpoint)
            .or_else(|| self.retired.get(endpoint))
            .cloned()
    }
}

fn same_instance(a: &Upstream, b: &Upstream) -> bool {
    a.app == b.app && a.service == b.service && a.instance == b.instance && a.node == b.node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(instance: u32, port: u16, healthy: bool) -> Upstream {
        Upstream {
            app: "blog".into(),
            service: "web".into(),
            instance,
            node: "n1".into(),
            address: "127.0.0.1".into(),
            port,
            healthy,
        }
    }

    fn live(ups: &[Upstream]) -> LiveRoute {
        LiveRoute {
            route: Route {
                pattern: "x".into(),
                prefix: "/".into(),
                app: "blog".into(),
                service: "web".into(),
                max_body: 0,
                upstreams: ups.to_vec(),
            },
            backends: ups
                .iter()
                .map(|u| Backend {
                    state: Arc::new(BackendState::new(u, 2)),
                    healthy: u.healthy,
                })
                .collect(),
            turns: Shards::new(2, AtomicUsize::default),
            metrics: Metrics::new(&mut Default::default(), 2).route("x"),
        }
    }

    #[test]
    fn round_robin_skips_unhealthy_down_and_draining() {
        let r = live(&[
            up(0, 1, true),
            up(1, 2, false),
            up(2, 3, true),
            up(3, 4, true),
        ]);
        let picks: Vec<_> = (0..6)
            .map(|_| r.pick(Balance::RoundRobin, &[], 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
        // Another worker keeps turns of its own, from its own place.
        let picks: Vec<_> = (0..3)
            .map(|_| r.pick(Balance::RoundRobin, &[], 1).unwrap())
            .collect();
        assert_eq!(picks, [2, 3, 0]);
        r.backends[0].state.mark_down(Duration::from_secs(60));
        r.backends[3]
            .state
            .draining
            .on
            .store(true, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(r.pick(Balance::RoundRobin, &[], 0), Some(2));
        }
        assert_eq!(r.pick(Balance::RoundRobin, &[2], 0), None);
    }

    #[test]
    fn a_down_mark_expires() {
        let r = live(&[up(0, 1, true)]);
        r.backends[0].state.mark_down(Duration::ZERO);
        assert_eq!(r.pick(Balance::RoundRobin, &[], 0), Some(0));
        assert_eq!(r.backends[0].state.connect_failures(), 1);
    }

    #[test]
    fn least_connections_picks_the_least_busy() {
        let r = live(&[up(0, 1, true), up(1, 2, true), up(2, 3, true)]);
        let _a = r.backends[0].state.start(0).unwrap();
        let _b = r.backends[1].state.start(0).unwrap();
        let _c = r.backends[1].state.start(0).unwrap();
        for _ in 0..3 {
            assert_eq!(r.pick(Balance::LeastConnections, &[], 0), Some(2));
        }
        let _d = r.backends[2].state.start(0).unwrap();
        let _e = r.backends[2].state.start(0).unwrap();
        assert_eq!(r.pick(Balance::LeastConnections, &[], 0), Some(0));
        assert_eq!(r.pick(Balance::LeastConnections, &[0], 0), Some(1));
    }

    #[test]
    fn no_instances_means_no_pick() {
        let r = live(&[]);
        assert_eq!(r.pick(Balance::RoundRobin, &[], 0), None);
        let r = live(&[up(0, 1, false)]);
        assert_eq!(r.pick(Balance::LeastConnections, &[], 0), None);
    }

    #[test]
    fn states_survive_a_swap_unless_the_instance_changed() {
        let fleet = crate::config::parse(
            std::path::Path::new("f.toml"),
            "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n[apps.blog.services.web]\nimage = \"b\"\nport = 80\nhosts = [\"a.com\", \"b.com\"]\n",
        )
        .unwrap();
        let metrics = Metrics::new(&mut Default::default(), 2);
        let mut reg = Registry::new(2);
        let first = reg.snapshot(
            RouteTable::build(&fleet, &[up(0, 1, true), up(1, 2, true)]),
            &metrics,
        );
        let a = &first.routes[0].backends[0].state;
        // Both routes of the service share one state per instance.
        assert!(Arc::ptr_eq(a, &first.routes[1].backends[0].state));
        a.mark_down(Duration::from_secs(60));
        let second = reg.snapshot(
            RouteTable::build(&fleet, &[up(0, 1, false), up(1, 2, true)]),
            &metrics,
        );
        assert!(Arc::ptr_eq(a, &second.routes[0].backends[0].state));
        assert!(!second.routes[0].backends[0].healthy);
        // Instance 5 now listens where instance 1 did: a fresh state.
        let third = reg.snapshot(
            RouteTable::build(&fleet, &[up(0, 1, true), up(5, 2, true)]),
            &metrics,
        );
        let old = &first.routes[0].backends[1].state;
        assert!(!Arc::ptr_eq(old, &third.routes[0].backends[1].state));
        assert!(reg.get("127.0.0.1:2").is_some());
        assert!(reg.get("127.0.0.1:9").is_none());
    }

    #[test]
    fn an_instance_that_leaves_the_table_stays_drainable_while_busy() {
        let fleet = crate::config::parse(
            std::path::Path::new("f.toml"),
            "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n[apps.blog.services.web]\nimage = \"b\"\nport = 80\nhosts = [\"a.com\"]\n",
        )
        .unwrap();
        let metrics = Metrics::new(&mut Default::default(), 2);
        let mut reg = Registry::new(2);
        let both = RouteTable::build(&fleet, &[up(0, 1, true), up(1, 2, true)]);
        let first = reg.snapshot(both.clone(), &metrics);
        let busy = Arc::clone(&first.routes[0].backends[1].state);
        let request = busy.start(1).unwrap();
        // The app leaves the table: both instances are retired, still found.
        reg.snapshot(RouteTable::default(), &metrics);
        assert!(Arc::ptr_eq(&reg.get("127.0.0.1:2").unwrap(), &busy));
        assert!(reg.get("127.0.0.1:1").is_some());
        // A later swap forgets the idle one and keeps the busy one...
        reg.snapshot(RouteTable::default(), &metrics);
        assert!(reg.get("127.0.0.1:1").is_none());
        assert!(reg.get("127.0.0.1:2").is_some());
        // ...until its request ends.
        drop(request);
        reg.snapshot(RouteTable::default(), &metrics);
        assert!(reg.get("127.0.0.1:2").is_none());
        // Listed again while a retired one is busy there: a fresh state,
        // not the retired (maybe drained) one.
        let listed = reg.snapshot(both.clone(), &metrics);
        let busy = Arc::clone(&listed.routes[0].backends[1].state);
        let _request = busy.start(0).unwrap();
        reg.snapshot(RouteTable::default(), &metrics);
        let again = reg.snapshot(both, &metrics);
        let fresh = &again.routes[0].backends[1].state;
        assert!(!Arc::ptr_eq(fresh, &busy));
        assert!(Arc::ptr_eq(&reg.get("127.0.0.1:2").unwrap(), fresh));
    }

    #[tokio::test]
    async fn drain_waits_for_requests_in_flight_up_to_the_timeout() {
        let state = Arc::new(BackendState::new(&up(0, 1, true), 2));
        // One request on each worker's count: the drain waits for both.
        let (first, second) = (state.start(0).unwrap(), state.start(1).unwrap());
        let waiter = {
            let state = Arc::clone(&state);
            tokio::spawn(async move { state.drain(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(state.is_draining());
        drop(second);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        assert_eq!(state.in_flight(), 1);
        drop(first);
        let report = waiter.await.unwrap();
        assert!(report.finished);
        assert!(report.waited >= Duration::from_millis(200));
        assert!(report.waited < Duration::from_secs(5));

        // Picked before the drain, started after it read the counts: the
        // request is turned away, not missed.
        assert!(state.start(0).is_none());
        assert_eq!(state.in_flight(), 0);

        let state = BackendState::new(&up(0, 1, true), 2);
        let _stuck = state.start(1).unwrap();
        let report = state.drain(Duration::from_millis(200)).await;
        assert!(!report.finished);
        assert_eq!(report.in_flight_left, 1);
        assert!(report.waited >= Duration::from_millis(200));
    }
}
