//! One start-up for every process that applies: `prism daemon`, the
//! dashboard when no daemon runs, and (without the proxy and the loop's
//! companions) `prism reconcile --once`. In this order:
//!
//! 1. fleet.toml's secrets and key are resolved (a mistake exits 2 with
//!    nothing taken);
//! 2. the apply lock is taken, with this process's TTL (held elsewhere:
//!    exit 2, saying by whom);
//! 3. only then the proxy's and the API's ports are bound: a port any
//!    other process holds exits 2 with its address, never shared;
//! 4. what the store recorded is loaded into memory, and from then on the
//!    store only takes writes through its one writer;
//! 5. the heartbeat, the loop, the request poller and the fleet.toml
//!    watcher start.
//!
//! [`Running::stop`] undoes it: the pass in flight and the node workers
//! finish (up to a minute), the listeners close, the lock is released and
//! the writes still queued land.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::apply::{Applier, Workers};
use super::front::RouterMaker;
use super::lease::{self, Fence};
use super::memory::Memory;
use super::pass::{Operator, PassError};
use super::run::{Control, Input, Loop, LoopEnd};
use super::{Front, FrontError, Serving, requests};
use crate::config::{self, Config};
use crate::proxy::Proxy;
use crate::ssh::Pool;
use crate::store::{Lease, LockHolder, Store, StoreError, Writer};
use crate::tasks::{Ended, Tasks};

/// How long stopping waits for node workers still at work.
const WORKERS_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Front(#[from] FrontError),
}

impl StartError {
    /// Nothing was started: the set-up is wrong (secrets, the key, a port,
    /// a certificate) or another applier holds the lock. Exit 2.
    pub(crate) fn is_setup(&self) -> bool {
        match self {
            StartError::Pass(e) => e.is_setup(),
            StartError::Store(e) => matches!(e, StoreError::Locked { .. }),
            StartError::Front(_) => true,
        }
    }
}

/// Why a running applier ended on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Loop(#[from] LoopEnd),
    /// A task the applier cannot go on without ended (a panic).
    #[error(transparent)]
    Task(#[from] Ended),
}

/// What every applying process holds: the store's writer, the lease on the
/// apply lock and its fence, and the workers in flight.
#[derive(Clone)]
pub(crate) struct Applying {
    pub journal: Writer,
    pub fence: Arc<Fence>,
    pub workers: Arc<Workers>,
}

impl Applying {
    /// Steps 1, 2 and 4: the operator of `config`, the lock for `role`, and
    /// what the store recorded.
    pub(crate) async fn begin(
        config: Config,
        role: &str,
    ) -> Result<(Operator, Memory, Applying), StartError> {
        let store = Store::open(&config.state_path())?;
        let journal = Writer::start(store);
        let ttl = config.fleet.fleet.lock_ttl.0;
        let operator = Operator::new(config, Some(journal.clone())).await?;
        let me = LockHolder::this_process(role);
        let lease: Lease = journal
            .call("take the apply lock", move |s| s.try_lock(&me, ttl))
            .await?;
        let memory = match journal.call("load the state", |s| Memory::load(s)).await {
            Ok(memory) => memory,
            Err(e) => {
                release(&journal, &lease).await;
                return Err(e.into());
            }
        };
        let fence = Arc::new(Fence::new(lease, journal.clone()));
        Ok((
            operator,
            memory,
            Applying {
                journal,
                fence,
                workers: Workers::new(),
            },
        ))
    }

    /// The applier of `operator`.
    pub fn applier(&self, operator: &Operator) -> Applier {
        Applier::new(
            operator,
            self.journal.clone(),
            self.fence.clone(),
            self.workers.clone(),
        )
    }

    /// Waits for the workers (up to a minute), releases the lock, and
    /// waits for the writes still queued.
    pub async fn finish(self) {
        let deadline = tokio::time::Instant::now() + WORKERS_GRACE;
        self.workers.wait_idle(deadline).await;
        let lease = self.fence.lease().clone();
        release(&self.journal, &lease).await;
    }
}

async fn release(journal: &Writer, lease: &Lease) {
    let lease = lease.clone();
    if let Err(e) = journal
        .call("release the apply lock", move |s| s.unlock(&lease))
        .await
    {
        tracing::warn!(error = %e, "could not release the apply lock");
    }
}

/// How a process applies.
pub struct Options {
    /// `daemon` or `dashboard`, as the lock records it.
    pub role: &'static str,
    pub interval: Duration,
    /// Serve the bundled proxy and the admin listener.
    pub proxy: bool,
}

/// An applier at work.
pub struct Running {
    control: Arc<Control>,
    applying: Applying,
    /// The loop, until it is seen to end.
    run: Option<JoinHandle<Result<(), LoopEnd>>>,
    serving: Option<Serving>,
    /// Everything beside the loop: a panic in any ends the applier.
    watched: Tasks,
    pool: Arc<Pool>,
}

/// Starts applying `config` (see the module).
pub async fn start(config: Config, options: Options) -> Result<Running, StartError> {
    let file = config.file.clone();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // What was loaded, to notice edits; unreadable now means any later
    // readable text counts as an edit.
    let loaded = std::fs::read_to_string(&file).unwrap_or_default();
    let (operator, memory, applying) = Applying::begin(config, options.role).await?;
    let front = if options.proxy {
        match Front::bind(&operator.config) {
            Ok(front) => Some(front),
            Err(e) => {
                applying.finish().await;
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let api = match crate::api::Api::bind(&operator.config, front.as_ref().map(Front::tls)) {
        Ok(api) => api,
        Err(e) => {
            applying.finish().await;
            return Err(e.into());
        }
    };
    let mut watched = Tasks::new();
    let (control, inbox) = Control::new();
    // The text of fleet.toml as this process's API last wrote it: the
    // watcher takes it at once, as it is written whole.
    let (edited, edits) = tokio::sync::watch::channel(None::<String>);
    if let Some(api) = api {
        // The API edits fleet.toml on disk and reads the state file: the
        // config it holds only locates the two (and names the fleet).
        watched.spawn(
            "API listener",
            api.serve(
                operator.config.clone(),
                applying.journal.clone(),
                edited,
                std::future::pending(),
            ),
        );
    }
    let mut serving = front.map(Front::serve);
    let operator = match &mut serving {
        Some(s) => {
            s.publish_traffic(applying.journal.clone());
            for task in s.take_tasks() {
                watched.adopt("proxy or admin listener", task);
            }
            watched.adopt("metrics recorder", s.follow(control.clone()));
            s.route(operator)
        }
        None => operator,
    };
    let pool = operator.pool.clone();
    let stop = control.clone();
    watched.adopt(
        "lock heartbeat",
        lease::keep(applying.fence.clone(), move || stop.stop()),
    );
    watched.spawn(
        "request poller",
        requests::poll(applying.journal.clone(), control.clone()),
    );
    let router_of = serving.as_ref().map(Serving::router_maker);
    watched.spawn(
        "fleet.toml watcher",
        watch_fleet_toml(
            operator.config.clone(),
            loaded,
            options.interval,
            edits,
            control.clone(),
            Reloader {
                applying: applying.clone(),
                router_of,
            },
        ),
    );
    tracing::info!(
        fleet = %operator.desired.fleet,
        interval = %humantime::format_duration(options.interval),
        pid = std::process::id(),
        role = options.role,
        "applier started"
    );
    let the_loop = Loop {
        applier: applying.applier(&operator),
        operator: Arc::new(operator),
        memory,
        journal: applying.journal.clone(),
        fence: applying.fence.clone(),
        workers: applying.workers.clone(),
        interval: options.interval,
        budget: super::run::PASS_BUDGET,
        progress: None,
        pending: None,
        held_reload: None,
        control: control.clone(),
        inbox,
    };
    let run = Some(tokio::spawn(the_loop.run()));
    Ok(Running {
        control,
        applying,
        run,
        serving,
        watched,
        pool,
    })
}

impl Running {
    pub(crate) fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The proxy, when this process serves it.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.serving.as_ref().map(Serving::proxy)
    }

    /// The operator's SSH pool (for the dashboard's logs and inspect).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn journal(&self) -> &Writer {
        &self.applying.journal
    }

    /// Waits until the applier ends on its own: the loop (the lock lost)
    /// or a task beside it (a panic). Cancel-safe.
    pub async fn ended(&mut self) -> RunError {
        let joined = {
            let run = async {
                match self.run.as_mut() {
                    Some(run) => Some(run.await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = run => joined,
                ended = self.watched.next_panic() => return RunError::Task(ended),
            }
        };
        self.run = None;
        match joined {
            Some(Ok(Err(e))) => RunError::Loop(e),
            Some(Err(e)) => RunError::Task(Ended::from_join("operator loop", e)),
            Some(Ok(Ok(()))) | None => RunError::Task(Ended {
                task: "operator loop".into(),
                exit: crate::tasks::Exit::Returned,
            }),
        }
    }

    /// Stops: the pass in flight finishes, then the workers (up to a
    /// minute), the listeners (letting open connections finish), the
    /// lock. Returns how the loop ended if not as asked.
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.control.stop();
        let ran = match self.run.take() {
            Some(run) => run.await,
            // Seen to end already: [`Running::ended`] told how.
            None => Ok(Ok(())),
        };
        self.watched.abort_all();
        if let Some(serving) = self.serving.take() {
            serving.stop().await;
        }
        let panicked = self.watched.join_all().await;
        self.applying.finish().await;
        match ran {
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(Ended::from_join("operator loop", e).into()),
            Ok(Ok(())) => match panicked.into_iter().next() {
                Some(ended) => Err(ended.into()),
                None => Ok(()),
            },
        }
    }
}

/// What a reload needs to make the new operator's applier.
struct Reloader {
    applying: Applying,
    /// Makes the router of a new fleet.toml, when a proxy runs.
    router_of: Option<RouterMaker>,
}

/// Follows edits of fleet.toml: reads the file every `poll`, and when its
/// text changed, was read the same twice in a row (an editor may write it
/// in steps; an edit of this process's API, written whole, is taken at
/// once) and loads (valid, secrets resolved, the same state file),
/// hands the new operator to the loop. An edit that does not load is
/// logged once and the fleet keeps running as it was.
async fn watch_fleet_toml(
    current: Config,
    loaded: String,
    poll: Duration,
    mut edits: tokio::sync::watch::Receiver<Option<String>>,
    control: Arc<Control>,
    reloader: Reloader,
) {
    let mut current = current;
    let mut seen = loaded;
    let mut candidate: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            Ok(()) = edits.changed() => candidate = edits.borrow_and_update().clone(),
        }
        // A missing file is a moment of an editor's replace, not a change.
        let Ok(text) = tokio::fs::read_to_string(&current.file).await else {
            continue;
        };
        if text == seen {
            candidate = None;
            continue;
        }
        if candidate.as_deref() != Some(text.as_str()) {
            candidate = Some(text);
            continue;
        }
        candidate = None;
        seen = text.clone();
        match reload(&current, &text, &reloader).await {
            Ok((operator, applier)) => {
                current = operator.config.clone();
                control.send(Input::Reload(Box::new(operator), applier));
            }
            Err(why) => tracing::error!(
                "fleet.toml changed but cannot be used; still running the previous one: {why}"
            ),
        }
    }
}

async fn reload(
    current: &Config,
    text: &str,
    reloader: &Reloader,
) -> Result<(Operator, Applier), String> {
    let fleet = config::parse(&current.file, text).map_err(|e| e.to_string())?;
    let warnings = config::warnings(&current.file, text, &fleet);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let config = Config {
        file: current.file.clone(),
        fleet,
        warnings,
    };
    if config.state_path() != current.state_path() {
        return Err("[fleet] state changed: restart the daemon to use another state file".into());
    }
    if format!("{:?}", config.fleet.proxy) != format!("{:?}", current.fleet.proxy) {
        tracing::warn!("[proxy] changed: its new settings take effect when the daemon restarts");
    }
    let mut operator = Operator::new(config, Some(reloader.applying.journal.clone()))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(router_of) = &reloader.router_of {
        let router = router_of(&operator.config.fleet);
        operator = operator.with_router(router);
    }
    let applier = reloader.applying.applier(&operator);
    Ok((operator, applier))
}
