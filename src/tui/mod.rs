//! `prism` with no command: the live dashboard (ratatui + crossterm).
//!
//! Background tasks feed the UI over one channel: keys (from a thread
//! blocking on the terminal), the state store polled every 500 ms, pass
//! reports when the operator runs here, log lines and inspect data from
//! the nodes. The UI loop only updates `App` and redraws, so nothing it
//! does waits on the network.
//!
//! If a daemon holds the apply lock of the same state file, the dashboard
//! attaches: it shows the store the daemon writes, and its actions become
//! requests in the store that the daemon serves. Otherwise it takes the
//! lock and runs the operator loop itself, logging to a file beside the
//! state file, never to the terminal it draws on, with the bundled proxy
//! and admin listener in front as `prism daemon` has them (unless
//! `--no-proxy`).
//!
//! With `--remote URL` it shows an operator elsewhere through its API
//! (`GET /v1/dashboard`, polled every second), and its actions become API
//! calls; logs and inspect need SSH to the nodes, so they stay on the
//! operator's box.

pub mod app;
pub mod data;
mod fleet;
pub mod keymap;
pub mod table;
pub mod traffic;
pub mod ui;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyEvent, KeyEventKind};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::AbortHandle;

use app::{App, Effect, LastPass, Mode};
use data::{DesiredPods, Snapshot};
use fleet::Reach;

use crate::cli::remote::{Remote, RemoteError};
use crate::config::Config;
use crate::operator::{self, Control, FrontError, Options, RunError, Running, StartError};
use crate::ssh::{Pool, SshError, SshSettings};
use crate::store::{
    LockInfo, NewRequest, ProxyTraffic, PublishedPlan, RequestKind, Store, StoreError, Writer,
    hostname, now_ms,
};
use crate::tasks::{self, Ended, Exit, Tasks};

const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error(transparent)]
    Start(StartError),
    #[error("{0}; `prism dashboard --no-proxy` runs without the proxy")]
    Front(FrontError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// The operator running here, or a task the dashboard cannot go on
    /// without, ended.
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Task(#[from] Ended),
    #[error(
        "the dashboard needs a terminal; `prism daemon` runs headless and `prism status` prints the state"
    )]
    NoTerminal,
    /// `--remote`: the API refused, or could not be reached at first.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl From<StartError> for TuiError {
    fn from(e: StartError) -> TuiError {
        match e {
            StartError::Front(e) => TuiError::Front(e),
            other => TuiError::Start(other),
        }
    }
}

impl TuiError {
    /// Nothing ran: the set-up was wrong (secrets, the key, a port, no
    /// terminal) or another applier holds the lock, as for the other
    /// commands.
    pub(crate) fn is_setup(&self) -> bool {
        match self {
            TuiError::Start(e) => e.is_setup(),
            TuiError::Front(_) => true,
            TuiError::Store(e) => matches!(e, StoreError::Locked { .. }),
            TuiError::Ssh(_) | TuiError::NoTerminal => true,
            TuiError::Remote(e) => e.exit_code() == 2,
            TuiError::Terminal(_) | TuiError::Run(_) | TuiError::Task(_) => false,
        }
    }
}

/// Everything that reaches the UI loop.
pub(crate) enum Msg {
    Key(KeyEvent),
    Redraw,
    Tick,
    Data(Box<Snapshot>),
    DataError(String),
    Pass(LastPass, Box<PublishedPlan>),
    LogLines(u64, Vec<String>),
    /// A stream's status: "streaming", or how it ended.
    LogEnded(u64, String),
    Described(u64, String),
    Requested(i64, String),
    Notice(String, app::Tone),
    /// A task the dashboard cannot go on without ended.
    Failed(Ended),
    Quit,
}

/// A daemon holds the lock and is alive: attach to it.
fn live_daemon(lock: Option<LockInfo>) -> Option<LockInfo> {
    let lock = lock?;
    (lock.role == "daemon" && lock.alive(&hostname(), now_ms())).then_some(lock)
}

/// Where the in-process operator's logs go: `prism-dashboard.DATE.log`
/// beside the state file, a file a day, the last [`LOG_DAYS`] kept.
fn log_dir(config: &Config) -> PathBuf {
    let state = config.state_path();
    state.parent().map(PathBuf::from).unwrap_or_default()
}

/// Days of the dashboard's log kept.
const LOG_DAYS: usize = 7;

fn init_file_logs(dir: &std::path::Path) -> Result<(), std::io::Error> {
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("prism-dashboard")
        .filename_suffix("log")
        .max_log_files(LOG_DAYS)
        .build(dir)
        .map_err(std::io::Error::other)?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRISM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already set (tests, embedding): keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(appender))
        .try_init();
    Ok(())
}

pub async fn run(config: Config, interval: Duration, with_proxy: bool) -> Result<(), TuiError> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(TuiError::NoTerminal);
    }
    let config = Arc::new(config);
    let state = config.state_path();
    // Made if missing, then only read here: the applier writes.
    drop(Store::open(&state)?);
    let reader = Store::open_read_only(&state)?.ok_or_else(|| StoreError::Open {
        file: state.clone(),
        reason: "it vanished as the dashboard opened it".into(),
    })?;
    let daemon = live_daemon(reader.lock_info()?);
    let reader = Arc::new(Mutex::new(reader));
    let (mode, mut running, pool, journal) = match daemon {
        Some(lock) => {
            let journal = Writer::start(Store::open(&state)?);
            let pool = Pool::new(SshSettings::from_config(&config)?, Some(journal.clone()));
            (Mode::Attached(lock), None, Arc::new(pool), journal)
        }
        None => {
            init_file_logs(&log_dir(&config))?;
            let options = Options {
                role: "dashboard",
                interval,
                proxy: with_proxy,
            };
            let running = operator::start((*config).clone(), options).await?;
            let (pool, journal) = (running.pool().clone(), running.journal().clone());
            (Mode::InProcess, Some(running), pool, journal)
        }
    };
    let mut app = App::new(
        config.fleet.fleet.name.clone(),
        mode,
        DesiredPods::from_fleet(&config.fleet),
        now_ms(),
    );
    let backend = Backend::Local {
        config: config.clone(),
        store: reader,
        reach: Arc::new(Reach { pool, journal }),
    };
    let result = ui_loop(&mut app, backend, running.as_mut()).await;
    if let Some(running) = running {
        eprintln!("prism: finishing the pass in flight, then stopping");
        if let Err(e) = running.stop().await {
            eprintln!("prism: the operator ended: {e}");
        }
    }
    result
}

/// The dashboard of the operator whose API `remote` is.
pub async fn run_remote(remote: Remote) -> Result<(), TuiError> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(TuiError::NoTerminal);
    }
    let doc = dashboard(&remote).await?;
    let lock = doc.snapshot.lock.clone().ok_or_else(|| {
        RemoteError::Setup(format!(
            "{}: no applier holds the fleet's state file",
            remote.url()
        ))
    })?;
    let mut app = App::new(doc.fleet, Mode::Attached(lock), doc.desired, now_ms());
    app.remote = Some(remote.url().to_owned());
    ui_loop(&mut app, Backend::Remote(Arc::new(remote)), None).await
}

async fn dashboard(remote: &Remote) -> Result<data::Dashboard, RemoteError> {
    let answer = remote
        .call(http::Method::GET, "/v1/dashboard", None, Duration::ZERO)
        .await?;
    serde_json::from_value(answer)
        .map_err(|e| RemoteError::Setup(format!("the API's /v1/dashboard: {e}")))
}

/// Where the dashboard reads the fleet and sends its actions.
enum Backend {
    /// This machine's state file; logs and inspect over SSH.
    Local {
        config: Arc<Config>,
        store: Arc<Mutex<Store>>,
        reach: Arc<Reach>,
    },
    /// An operator's API.
    Remote(Arc<Remote>),
}

/// Why logs and inspect are not shown through the API.
const REMOTE_NO_SSH: &str =
    "logs and inspect need SSH to the nodes: open the dashboard on the operator's box for them";

/// Restores the terminal however the UI loop ends. ratatui's panic hook
/// restores it too, on whichever thread panics, before anything else: a
/// panic that ends the process leaves a usable terminal.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The terminal again, after ratatui's panic hook restored it for a task
/// that panicked while the dashboard goes on.
fn reenter(terminal: &mut ratatui::DefaultTerminal) -> std::io::Result<()> {
    use ratatui::crossterm::{execute, terminal};
    terminal::enable_raw_mode()?;
    execute!(std::io::stdout(), terminal::EnterAlternateScreen)?;
    terminal.clear()
}

async fn ui_loop(
    app: &mut App,
    backend: Backend,
    mut running: Option<&mut Running>,
) -> Result<(), TuiError> {
    let (tx, mut rx) = unbounded_channel::<Msg>();
    let stop = Arc::new(AtomicBool::new(false));
    // Without these the screen would freeze: a panic in one ends the
    // dashboard with its name.
    let mut essential = Tasks::new();
    match &backend {
        Backend::Local { store, .. } => {
            essential.spawn("store poller", poll_store(store.clone(), tx.clone()))
        }
        Backend::Remote(remote) => {
            essential.spawn("API poller", poll_api(remote.clone(), tx.clone()))
        }
    };
    essential.spawn("clock", ticks(tx.clone()));
    essential.spawn("signal handler", quit_on_signals(tx.clone()));
    // These can fail alone: a panic is shown and the dashboard goes on.
    let mut extras = Tasks::new();
    // This process's proxy, when it runs one, for the header's figures.
    let proxy = running.as_deref().and_then(Running::proxy).cloned();
    if let Some(running) = running.as_deref() {
        essential.spawn(
            "pass report follower",
            follow_reports(running.control().clone(), tx.clone()),
        );
    }
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let input = {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::spawn(move || {
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                read_terminal(&tx, &stop)
            }));
            let exit = match read {
                Ok(Ok(())) => return,
                Ok(Err(e)) => Exit::Failed(e.to_string()),
                Err(payload) => Exit::Panicked(tasks::panic_message(payload.as_ref())),
            };
            let _ = tx.send(Msg::Failed(Ended {
                task: "terminal reader".into(),
                exit,
            }));
        })
    };
    // The running log stream, and which view it feeds; log lines sent and
    // not yet taken (the stream stops queueing past a bound).
    let mut logs: Option<(AbortHandle, u64)> = None;
    let backlog = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut result = Ok(());
    'ui: loop {
        if let Err(e) = terminal.draw(|f| ui::draw(f, app)) {
            result = Err(TuiError::Terminal(e));
            break;
        }
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            ended = operator_ended(&mut running) => {
                result = Err(TuiError::Run(ended));
                break;
            }
            ended = essential.next_panic() => {
                result = Err(TuiError::Task(ended));
                break;
            }
            ended = extras.next_panic() => {
                // The panic hook gave the terminal back; take it again.
                if let Err(e) = reenter(&mut terminal) {
                    result = Err(TuiError::Terminal(e));
                    break;
                }
                if let (Some((_, seq)), "log stream") = (&logs, ended.task.as_str()) {
                    app.log_ended(*seq, ended.to_string());
                }
                Msg::Notice(ended.to_string(), app::Tone::Bad)
            }
        };
        // Take everything waiting before drawing again.
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        for msg in batch {
            let effect = match msg {
                Msg::Key(k) => app.on_key(k),
                Msg::Redraw => None,
                Msg::Tick => {
                    let now = now_ms();
                    app.tick(now);
                    // Two atomic loads: cheap enough for every tick.
                    if let Some(proxy) = &proxy {
                        let t = proxy.traffic();
                        app.traffic.push(ProxyTraffic {
                            at_ms: now,
                            requests: t.requests,
                            server_errors: t.server_errors,
                        });
                    }
                    None
                }
                Msg::Data(d) => {
                    app.set_data(*d);
                    None
                }
                Msg::DataError(e) => {
                    app.data_error = Some(e);
                    None
                }
                Msg::Pass(p, plan) => {
                    app.last_pass = Some(p);
                    app.plan = Some(*plan);
                    None
                }
                Msg::LogLines(seq, lines) => {
                    let n = lines.len();
                    let _ = backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        Some(b.saturating_sub(n))
                    });
                    app.log_lines(seq, lines);
                    None
                }
                Msg::LogEnded(seq, why) => {
                    app.log_ended(seq, why);
                    None
                }
                Msg::Described(seq, text) => {
                    app.described(seq, text);
                    None
                }
                Msg::Requested(id, what) => {
                    app.requested(id, &what);
                    None
                }
                Msg::Notice(text, tone) => {
                    app.notify(text, tone);
                    None
                }
                Msg::Failed(ended) => {
                    result = Err(TuiError::Task(ended));
                    break 'ui;
                }
                Msg::Quit => Some(Effect::Quit),
            };
            match effect {
                None => {}
                Some(Effect::Quit) => break 'ui,
                Some(Effect::Request {
                    kind,
                    node_id,
                    container,
                }) => {
                    let what = match (&container, &node_id) {
                        (Some(c), _) => format!("{} {c}", kind.as_str()),
                        (None, Some(n)) => format!("{} {n}", kind.as_str()),
                        (None, None) => kind.as_str().to_owned(),
                    };
                    let (backend, tx) = (backend.clone_handle(), tx.clone());
                    extras.spawn("request writer", async move {
                        let added = backend.request(kind, node_id, container).await;
                        let _ = tx.send(match added {
                            Ok(id) => Msg::Requested(id, what),
                            Err(e) => Msg::Notice(format!("{what}: {e}"), app::Tone::Bad),
                        });
                    });
                }
                Some(Effect::Logs(spec)) => {
                    if let Some((t, _)) = logs.take() {
                        t.abort();
                    }
                    let Backend::Local { config, reach, .. } = &backend else {
                        app.log_ended(spec.seq, REMOTE_NO_SSH.into());
                        continue;
                    };
                    match node_target(config, app, &spec.node_id) {
                        Some(target) => {
                            let seq = spec.seq;
                            let stream = fleet::stream_logs(
                                reach.clone(),
                                target,
                                spec,
                                backlog.clone(),
                                tx.clone(),
                            );
                            logs = Some((extras.spawn("log stream", stream), seq));
                        }
                        None => {
                            app.log_ended(spec.seq, format!("node {} is not known", spec.node_id))
                        }
                    }
                }
                Some(Effect::StopLogs) => {
                    if let Some((t, _)) = logs.take() {
                        t.abort();
                    }
                }
                Some(Effect::Describe {
                    seq,
                    node_id,
                    container,
                }) => {
                    let Backend::Local { config, reach, .. } = &backend else {
                        app.described(seq, REMOTE_NO_SSH.into());
                        continue;
                    };
                    let app_service = app
                        .data
                        .containers
                        .iter()
                        .find(|c| c.node_id == node_id && c.name == container)
                        .map(|c| (c.app.clone(), c.service.clone()));
                    match node_target(config, app, &node_id) {
                        Some(target) => {
                            extras.spawn(
                                "describe",
                                fleet::describe(
                                    reach.clone(),
                                    config.clone(),
                                    target,
                                    container,
                                    app_service,
                                    seq,
                                    tx.clone(),
                                ),
                            );
                        }
                        None => app.described(seq, format!("node {node_id} is not known")),
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    extras.abort_all();
    essential.abort_all();
    drop(terminal);
    drop(_restore);
    // The input thread notices the stop within its poll interval.
    let _ = input.join();
    result
}

fn node_target(config: &Config, app: &App, node_id: &str) -> Option<crate::ssh::Target> {
    app.data
        .nodes
        .iter()
        .find(|n| n.id == node_id)
        .map(|n| fleet::target(config, n))
}

/// Keys and resizes from the terminal; blocking reads live on this thread.
/// Ends without error when told to stop or when the UI loop is gone.
fn read_terminal(tx: &UnboundedSender<Msg>, stop: &AtomicBool) -> std::io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        if !event::poll(Duration::from_millis(200))? {
            continue;
        }
        let msg = match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => Msg::Key(k),
            Event::Resize(..) => Msg::Redraw,
            _ => continue,
        };
        if tx.send(msg).is_err() {
            break;
        }
    }
    Ok(())
}

/// The store, read every 500 ms; a message only when something changed.
async fn poll_store(store: Arc<Mutex<Store>>, tx: UnboundedSender<Msg>) {
    let mut last: Option<Snapshot> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Snapshot::load(&store.lock().unwrap_or_else(|p| p.into_inner()))
        })
        .await;
        let msg = match loaded {
            Ok(Ok(snap)) if last.as_ref() == Some(&snap) => continue,
            Ok(Ok(snap)) => {
                last = Some(snap.clone());
                Msg::Data(Box::new(snap))
            }
            Ok(Err(e)) => Msg::DataError(e.to_string()),
            Err(e) => Msg::DataError(format!("reading the state store: {e}")),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// What a remote dashboard sends and reads, cheap to hand to a task.
enum Handle {
    Local(Writer),
    Remote(Arc<Remote>),
}

impl Backend {
    fn clone_handle(&self) -> Handle {
        match self {
            Backend::Local { reach, .. } => Handle::Local(reach.journal.clone()),
            Backend::Remote(r) => Handle::Remote(r.clone()),
        }
    }
}

impl Handle {
    /// Asks the applier: a request in the store, or the API's endpoint for
    /// it. The request's id.
    async fn request(
        self,
        kind: RequestKind,
        node_id: Option<String>,
        container: Option<String>,
    ) -> Result<i64, String> {
        let remote = match self {
            Handle::Local(journal) => {
                let req = NewRequest {
                    kind,
                    node_id,
                    container,
                    by: format!("dashboard (pid {})", std::process::id()),
                };
                return journal
                    .call("add a request", move |s| s.add_request(&req))
                    .await
                    .map_err(|e| e.to_string());
            }
            Handle::Remote(remote) => remote,
        };
        let seg = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let path = match (kind, &node_id, &container) {
            (RequestKind::Reconcile, _, _) => "/v1/reconcile".to_owned(),
            (RequestKind::Drain, Some(n), _) => format!("/v1/nodes/{}/drain", seg(n)),
            (RequestKind::Restart, Some(n), Some(c)) => {
                format!("/v1/nodes/{}/containers/{}/restart", seg(n), seg(c))
            }
            _ => {
                return Err(format!(
                    "{} is not available through the API",
                    kind.as_str()
                ));
            }
        };
        let answer = remote
            .call(http::Method::POST, &path, None, Duration::ZERO)
            .await
            .map_err(|e| e.to_string())?;
        answer["request"]
            .as_i64()
            .ok_or_else(|| format!("the API answered without a request id: {answer}"))
    }
}

/// The API's dashboard document every second; a message only when
/// something changed.
async fn poll_api(remote: Arc<Remote>, tx: UnboundedSender<Msg>) {
    let mut last: Option<Snapshot> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let msg = match dashboard(&remote).await {
            Ok(doc) if last.as_ref() == Some(&doc.snapshot) => continue,
            Ok(doc) => {
                last = Some(doc.snapshot.clone());
                Msg::Data(Box::new(doc.snapshot))
            }
            Err(e) => Msg::DataError(e.to_string()),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// Ages on screen move once a second.
async fn ticks(tx: UnboundedSender<Msg>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if tx.send(Msg::Tick).is_err() {
            return;
        }
    }
}

async fn quit_on_signals(tx: UnboundedSender<Msg>) {
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(Msg::Quit);
}

/// When the operator running here ends on its own; never without one.
async fn operator_ended(running: &mut Option<&mut Running>) -> RunError {
    match running {
        Some(running) => running.ended().await,
        None => std::future::pending().await,
    }
}

/// Each pass report of the in-process operator, with its plan.
async fn follow_reports(control: Arc<Control>, tx: UnboundedSender<Msg>) {
    let mut reports = control.reports();
    loop {
        let report = reports.borrow_and_update().clone();
        if let Some(r) = report {
            let plan = r.published();
            let pass = LastPass {
                store: r.store.clone(),
                ..LastPass::from(&plan)
            };
            if tx.send(Msg::Pass(pass, Box::new(plan))).is_err() {
                return;
            }
        }
        if reports.changed().await.is_err() {
            return;
        }
    }
}
