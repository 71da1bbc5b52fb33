//! The `prism` command line: parses arguments, runs one command, maps the
//! outcome to an exit code. Commands print for people on stdout, problems
//! on stderr.

mod confirm;
mod daemon;
mod deploy;
mod docs;
pub(crate) mod plan;
mod reconcile;
pub(crate) mod remote;
pub(crate) mod status;
pub(crate) mod table;
mod token;
mod validate;
pub(crate) mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::rollout::{Change, RolloutError};
use crate::store::StoreError;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the command failed (state store, network, a node)
  2  bad usage, or fleet.toml is invalid (nothing was changed)";

/// The version `--version` prints: the crate's and the git commit it was
/// built from (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PRISM_COMMIT"),
    ")"
);

/// Prism runs your containers on cheap EC2 spot instances (or any machines
/// with sshd and Docker) and keeps them running when instances are taken away.
///
/// Without a command, opens the live dashboard (`prism dashboard`).
#[derive(Debug, Parser)]
#[command(name = "prism", version = VERSION, after_help = EXIT_CODES, propagate_version = true)]
pub(crate) struct Cli {
    /// The fleet file: desired state of nodes, apps and the proxy.
    #[arg(
        short,
        long,
        global = true,
        env = "PRISM_CONFIG",
        default_value = "fleet.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,

    /// Act through the API of the operator at this URL
    /// (`https://prism.example.com:9443`) instead of on this machine's
    /// fleet.toml; the token is read from PRISM_TOKEN. For the dashboard,
    /// deploy, scale, rollback and history.
    #[arg(long, global = true, env = "PRISM_REMOTE", value_name = "URL")]
    pub remote: Option<String>,

    /// With --remote: trust only this CA's certificates (PEM) instead of
    /// the system's.
    #[arg(long, global = true, env = "PRISM_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The live dashboard: nodes, containers, events, logs, plan, actions.
    ///
    /// What `prism` runs without a command. If a daemon already applies
    /// for the same state file, the dashboard attaches to it: it shows the
    /// daemon's state and sends it your actions. Otherwise it runs the
    /// operator itself (discovery, reconcile, and the bundled proxy and
    /// admin listener, started as `prism daemon` starts them) until you
    /// quit, logging to prism-dashboard.DATE.log beside the state file (a
    /// file a day, a week kept). Press ? for
    /// the keys.
    #[command(after_help = DASHBOARD_EXIT_CODES)]
    Dashboard {
        /// Time between passes when the dashboard runs the operator
        /// [default: `[lifecycle] probe_interval`, 2s].
        #[arg(long, value_parser = duration_arg)]
        interval: Option<std::time::Duration>,
        /// When the dashboard runs the operator: without the bundled proxy
        /// and its admin listener ([proxy] listen and admin are then not
        /// bound).
        #[arg(long)]
        no_proxy: bool,
    },

    /// Check fleet.toml: syntax, keys, units and cross-field rules.
    ///
    /// Every problem is reported with file, line, column and the field's
    /// path. Nothing is contacted and nothing is changed.
    #[command(after_help = EXIT_CODES)]
    Validate,

    /// Show what a reconcile would do now, changing nothing.
    ///
    /// Discovers and probes every node, then prints per node the actions a
    /// reconcile would run (+ create, ~ replace, - remove), the placement
    /// changes, and pods that cannot be placed (!).
    #[command(after_help = EXIT_CODES)]
    Plan {
        /// Print JSON (problems as RFC 7807 objects) instead of text.
        #[arg(long)]
        json: bool,
    },

    /// Make the nodes run what fleet.toml asks for.
    ///
    /// With --once: observe, plan and apply, again until nothing is left to
    /// do or --timeout passes, then exit. Quiet when there is nothing to do,
    /// so it suits cron. Only one applier runs per state file: a second
    /// one exits 2 naming the holder.
    #[command(after_help = RECONCILE_EXIT_CODES)]
    Reconcile {
        /// Converge once and exit (the daemon is `prism daemon`).
        #[arg(long, required = true)]
        once: bool,
        /// Give up waiting for new containers to be ready after this.
        #[arg(long, default_value = "60s", value_parser = duration_arg)]
        timeout: std::time::Duration,
    },

    /// Let the changes the guards hold back go ahead now.
    ///
    /// A fleet.toml edit that removes more than half of the fleet's pods,
    /// or a listing from EC2 that lacks more than half of the nodes with
    /// no word of them shutting down, is held back ([guard] hold, 10
    /// minutes by default) in case it is a mistake: `prism plan` and
    /// `prism status` show what is held. This lets it go at once: the
    /// applier (daemon or dashboard) takes it within a second, and a cron
    /// `reconcile --once` at its next run.
    #[command(after_help = EXIT_CODES)]
    Confirm,

    /// Run headless: discover and reconcile in a loop, with logs.
    ///
    /// Reconciles every --interval, and at once when a node appears, is
    /// lost or changes state. Serves the bundled proxy on [proxy] listen,
    /// its routes following every pass, and /healthz and /metrics on
    /// [proxy] admin; with [api], the API on its listen address. Logs go
    /// to stderr (PRISM_LOG sets the level
    /// filter, e.g. `debug` or `prism=debug`). SIGTERM or SIGINT finish the
    /// pass in flight, release the apply lock and exit 0.
    #[command(after_help = DAEMON_EXIT_CODES)]
    Daemon {
        /// Time between passes [default: `[lifecycle] probe_interval`, 2s].
        #[arg(long, value_parser = duration_arg)]
        interval: Option<std::time::Duration>,
        /// Log lines for people, or one JSON object per line.
        #[arg(long, value_enum, default_value = "human")]
        log_format: daemon::LogFormat,
        /// Run without the bundled proxy and its admin listener ([proxy]
        /// listen and admin are then not bound).
        #[arg(long)]
        no_proxy: bool,
    },

    /// Show nodes and containers as last recorded in the state store.
    ///
    /// Reads the state file named by fleet.toml ([fleet] state); contacts no
    /// node unless --probe is given. A fleet that was never reconciled has no
    /// state yet.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Discover the nodes and probe each over SSH now (Docker, memory,
        /// disk, containers, and why a node is not ready), record what is
        /// found, then print. Changes nothing on the nodes.
        #[arg(long)]
        probe: bool,
    },

    /// List the fleet's volumes, or delete those fleet.toml no longer asks for.
    ///
    /// Lists every pod's volumes as the applier's last pass saw them: app
    /// and instance, kind (durable: an EBS volume; local: a Docker volume
    /// on one node; image: made for a path the image declares as VOLUME),
    /// size, zone, node, state, and whether fleet.toml still asks for it.
    /// Volumes are never deleted otherwise: removing an app or lowering its
    /// instances keeps them.
    #[command(after_help = EXIT_CODES, args_conflicts_with_subcommands = true)]
    Volumes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<VolumesCommand>,
    },

    /// Set the images of an app's services in fleet.toml, and record it.
    ///
    /// Edits fleet.toml in place, keeping its comments and layout: only
    /// the `image` of each SERVICE named changes. The result is checked as
    /// `prism validate` would before it is written; it is written in one
    /// step, and only if the file still holds what was read (an edit by
    /// hand meanwhile is kept: the change is made again on it). The change
    /// is recorded in the state file (who, when, the file before and
    /// after) for `prism history` and `prism rollback`. The applier (a
    /// daemon or dashboard) rolls it out at its next pass, make before
    /// break; a cron `reconcile --once` at its next run.
    #[command(after_help = EDIT_EXIT_CODES)]
    Deploy {
        /// The app, as in `[apps.APP]`.
        app: String,
        /// SERVICE=IMAGE, once or more: `web=registry.example.com/blog:1.5`.
        #[arg(required = true, value_parser = deploy::service_image, value_name = "SERVICE=IMAGE")]
        images: Vec<(String, String)>,
        #[command(flatten)]
        wait: WaitArgs,
    },

    /// Set how many instances (pods) an app runs, in fleet.toml.
    ///
    /// An edit as `prism deploy` makes one: checked, written in one step,
    /// recorded.
    #[command(after_help = EDIT_EXIT_CODES)]
    Scale {
        /// The app, as in `[apps.APP]`.
        app: String,
        /// Its instances (0 stops it and keeps its volumes).
        instances: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },

    /// Put an app back in fleet.toml as it was before its newest change.
    ///
    /// The app's whole table comes back from the file as it stood before
    /// the newest recorded change of that app (`prism history APP`);
    /// the rest of the file is left as it is now. Recorded like any edit,
    /// so a second rollback undoes the first.
    #[command(after_help = EDIT_EXIT_CODES)]
    Rollback {
        /// The app, as in `[apps.APP]`.
        app: String,
        #[command(flatten)]
        wait: WaitArgs,
    },

    /// List the changes deploy, scale and rollback made, newest first.
    #[command(after_help = EXIT_CODES)]
    History {
        /// Only this app's.
        app: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// Make, list and revoke the API's tokens (in the state file).
    ///
    /// A token is printed once, when it is made; the state file keeps only
    /// an Argon2id hash of it. Scopes: read (the fleet, the plan, events,
    /// history), deploy (and deploy, scale, rollback), admin (and drain,
    /// reconcile). Run on the operator's box.
    #[command(after_help = EXIT_CODES)]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },

    /// Print shell completions for prism to stdout.
    ///
    /// For example `prism completions bash > /etc/bash_completion.d/prism`,
    /// or for zsh into a folder of $fpath as `_prism`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the manual page prism(1) to stdout, in roff.
    ///
    /// `prism man | man -l -` reads it. With --dir, writes prism.1 and one
    /// page per command (prism-daemon.1, ...) into that folder instead.
    Man {
        /// Write every page into this folder (it must exist).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `--wait` and `--timeout` of deploy, scale and rollback.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WaitArgs {
    /// Wait until the change has rolled out: every instance runs it,
    /// healthy and routed, and nothing of the old is left. If its new
    /// containers turn unhealthy or are not ready in time, it failed, and
    /// with the app's rollback_on_failure (on by default) the previous
    /// version is put back: exit 1.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = duration_arg, requires = "wait")]
    pub timeout: std::time::Duration,
}

impl WaitArgs {
    fn wait(self) -> Option<std::time::Duration> {
        self.wait.then_some(self.timeout)
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (only now).
    Create {
        /// A name for it: who or what uses it (`github-ci`).
        name: String,
        /// What it may do: read, deploy or admin.
        #[arg(long, value_parser = token::scope_arg)]
        scope: crate::store::Scope,
        /// It stops working after this long (`90d`, `12h`); default: never.
        #[arg(long, value_parser = token::expires_arg, value_name = "DURATION")]
        expires: Option<std::time::Duration>,
    },
    /// List the tokens: name, scope, when made and last used, state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: the API refuses it from the next request on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumesCommand {
    /// Delete the volumes of APP (or of one instance), and all they hold.
    ///
    /// Only volumes fleet.toml no longer asks for: remove the app (or lower
    /// its instances) first. Lists what it would delete and deletes only
    /// with --yes. The applier carries it out: a daemon or dashboard at
    /// once, otherwise the next `prism reconcile --once`. A volume still
    /// attached or in use is refused. Snapshots are kept.
    #[command(after_help = EXIT_CODES)]
    Delete {
        /// The app whose volumes go.
        app: String,
        /// Only this instance's volumes (pod APP/N).
        #[arg(long, value_name = "N")]
        instance: Option<u32>,
        /// Delete for good; without it, only lists what would go.
        #[arg(long)]
        yes: bool,
        /// How long to wait for the applier's answer.
        #[arg(long, default_value = "60s", value_parser = duration_arg)]
        wait: std::time::Duration,
    },
}

const EDIT_EXIT_CODES: &str = "\
Exit codes:
  0  fleet.toml edited and the change recorded (with --wait: rolled out)
  1  the state file could not record it, fleet.toml kept changing under
     the edit, the API could not be reached, or with --wait it did not
     roll out (and was rolled back, when the app asks for that)
  2  bad usage, no such app or service, nothing to roll back, the edit
     would make fleet.toml invalid (nothing was written), or the API
     refused the request or the token";

const RECONCILE_EXIT_CODES: &str = "\
Exit codes:
  0  converged: the nodes run what fleet.toml asks for
  1  some action failed, a change is held back by the guards, or not
     converged within --timeout
  2  bad usage, invalid fleet.toml or secrets, or another applier holds the lock
     (nothing was changed)";

const DASHBOARD_EXIT_CODES: &str = "\
Exit codes:
  0  quit (q, :q, ctrl-c, SIGTERM)
  1  the dashboard could not go on (state store, terminal, runtime)
  2  bad usage, invalid fleet.toml, secrets or SSH settings, a port held by
     another process, or another applier (not a daemon) holds the lock";

const DAEMON_EXIT_CODES: &str = "\
Exit codes:
  0  stopped by SIGTERM or SIGINT
  1  the daemon could not go on (state store, runtime)
  2  bad usage, invalid fleet.toml or secrets, a port held by another
     process, or another applier holds the lock (nothing was started)";

/// A duration on the command line, as fleet.toml takes them: `2s`,
/// `1m30s`, within fleet.toml's bounds (a year at most), so no later
/// arithmetic on it can overflow.
fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<crate::config::Interval>().map(|i| i.0)
}

/// Why a command failed, which decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    #[error(transparent)]
    Discovery(#[from] crate::cloud::DiscoveryError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// A listener that could not be bound, or HTTPS certificates named by
    /// fleet.toml that could not be used.
    #[error(transparent)]
    Front(#[from] crate::operator::FrontError),
    #[error(transparent)]
    Pass(#[from] crate::operator::PassError),
    #[error(transparent)]
    Start(#[from] crate::operator::StartError),
    #[error(transparent)]
    Run(#[from] crate::operator::RunError),
    #[error(transparent)]
    Dashboard(#[from] crate::tui::TuiError),
    /// A task the daemon cannot run without ended (a panic).
    #[error(transparent)]
    Task(#[from] crate::tasks::Ended),
    /// A deploy, scale or rollback that could not be made.
    #[error(transparent)]
    Rollout(#[from] crate::rollout::RolloutError),
    /// Through `--remote`: the API refused, or could not be reached.
    #[error(transparent)]
    Remote(remote::RemoteError),
    /// Bad usage that the arguments' parser cannot see.
    #[error("{0}")]
    Usage(String),
    /// Already reported; only the exit code is left.
    #[error("")]
    Reported(u8),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) | Failure::Usage(_) => 2,
            Failure::Rollout(
                RolloutError::Edit(_)
                | RolloutError::Config(ConfigError::Invalid(_))
                | RolloutError::NothingToRollBack { .. },
            ) => 2,
            Failure::Remote(e) => e.exit_code(),
            Failure::Front(crate::operator::FrontError::Tls(_)) => 2,
            Failure::Store(StoreError::Locked { .. }) => 2,
            Failure::Pass(e) if e.is_setup() => 2,
            Failure::Start(e) if e.is_setup() => 2,
            Failure::Dashboard(e) if e.is_setup() => 2,
            Failure::Reported(code) => *code,
            _ => 1,
        }
    }
}

/// A deploy, scale or rollback: through the API with `--remote`, else on
/// this machine's fleet.toml.
fn change(
    cli: &Cli,
    app: &str,
    change: Change,
    wait: Option<std::time::Duration>,
) -> Result<(), Failure> {
    match &cli.remote {
        Some(url) => {
            let remote = remote::Remote::new(url, cli.ca.as_deref())?;
            block_on(deploy::remote(&remote, app, &change, wait))
        }
        None => {
            let config = Config::load(&cli.config)?;
            deploy::local(&config, app, &change, wait)
        }
    }
}

/// Runs a command's async part; commands that need no network never start
/// a runtime.
fn block_on<T>(f: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::runtime::Runtime::new()
        .map_err(Failure::Runtime)?
        .block_on(f)
}

pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let command = cli.command.take().unwrap_or(Command::Dashboard {
        interval: None,
        no_proxy: false,
    });
    let remote_ok = matches!(
        command,
        Command::Dashboard { .. }
            | Command::Deploy { .. }
            | Command::Scale { .. }
            | Command::Rollback { .. }
            | Command::History { .. }
    );
    let result = match &command {
        _ if cli.remote.is_some() && !remote_ok => Err(Failure::Usage(
            "--remote (PRISM_REMOTE) works with the dashboard, deploy, scale, rollback and history; run the others on the operator's box".into(),
        )),
        Command::Dashboard { .. } if cli.remote.is_some() => remote::Remote::new(
            cli.remote.as_deref().unwrap_or_default(),
            cli.ca.as_deref(),
        )
        .map_err(Failure::from)
        .and_then(|r| block_on(async { Ok(crate::tui::run_remote(r).await?) })),
        Command::Dashboard { interval, no_proxy } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| {
                let interval = interval.unwrap_or(config.fleet.lifecycle.probe_interval.0);
                block_on(async {
                    crate::tui::run(config, interval, !*no_proxy)
                        .await
                        .map_err(Failure::from)
                })
            }),
        Command::Completions { shell } => docs::completions(*shell),
        Command::Man { dir: None } => docs::man_page(),
        Command::Man { dir: Some(dir) } => docs::man_pages(dir),
        Command::Validate => validate::run(&cli.config),
        Command::Confirm => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| confirm::run(&config)),
        Command::Plan { json } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| block_on(plan::run(config, *json))),
        Command::Reconcile { once: _, timeout } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(
                |config| match block_on(reconcile::once(config, *timeout))? {
                    reconcile::Converged::Yes => Ok(()),
                    reconcile::Converged::No => Err(Failure::Reported(1)),
                },
            ),
        Command::Daemon {
            interval,
            log_format,
            no_proxy,
        } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| {
                daemon::init_logs(*log_format);
                let interval = interval.unwrap_or(config.fleet.lifecycle.probe_interval.0);
                block_on(daemon::run(config, interval, !*no_proxy))
            }),
        Command::Volumes { json, command } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| match command {
                None => volumes::list(&config, *json),
                Some(VolumesCommand::Delete {
                    app,
                    instance,
                    yes,
                    wait,
                }) => volumes::delete(
                    &config,
                    &volumes::DeleteArgs {
                        app,
                        instance: *instance,
                        yes: *yes,
                        wait: *wait,
                    },
                ),
            }),
        Command::Deploy { app, images, wait } => {
            change(&cli, app, Change::Deploy(images.clone()), wait.wait())
        }
        Command::Scale {
            app,
            instances,
            wait,
        } => change(&cli, app, Change::Scale(*instances), wait.wait()),
        Command::Rollback { app, wait } => change(&cli, app, Change::Rollback, wait.wait()),
        Command::History { app, json } => match &cli.remote {
            Some(url) => remote::Remote::new(url, cli.ca.as_deref())
                .map_err(Failure::from)
                .and_then(|r| block_on(deploy::remote_history(&r, app.as_deref(), *json))),
            None => Config::load(&cli.config)
                .map_err(Failure::from)
                .and_then(|config| deploy::history(&config.state_path(), app.as_deref(), *json)),
        },
        Command::Token { command } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| {
                let state = config.state_path();
                match command {
                    TokenCommand::Create {
                        name,
                        scope,
                        expires,
                    } => token::create(&state, name, *scope, *expires),
                    TokenCommand::List { json } => token::list(&state, *json),
                    TokenCommand::Revoke { name } => token::revoke(&state, name),
                }
            }),
        Command::Status { json, probe } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| {
                if *probe {
                    block_on(status::probe(&config))?;
                }
                status::run(&config, *json)
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`prism status | head`) is not a failure.
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        // Located config problems carry their own "error:" prefixes.
        Err(Failure::Config(ConfigError::Invalid(invalid))) => {
            eprintln!("{invalid}");
            ExitCode::from(2)
        }
        Err(Failure::Reported(code)) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}
