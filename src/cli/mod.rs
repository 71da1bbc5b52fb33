//! The `prism` command line: parses arguments, runs one command, maps the
//! outcome to an exit code. Commands print for people on stdout, problems
//! on stderr.

mod confirm;
mod daemon;
mod deploy;
mod docs;
pub(crate) mod plan;
mod reconcile;
mod status;
pub(crate) mod table;
mod validate;
pub(crate) mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
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
    /// [proxy] admin. Logs go to stderr (PRISM_LOG sets the level
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
  0  fleet.toml edited and the change recorded
  1  the state file could not record it, or fleet.toml kept changing under
     the edit
  2  bad usage, no such app or service, nothing to roll back, or the edit
     would make fleet.toml invalid (nothing was written)";

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
    /// An edit of fleet.toml that cannot be made (no such app or service).
    #[error(transparent)]
    Edit(crate::config::EditError),
    /// fleet.toml kept changing under an edit.
    #[error("{0}")]
    Conflict(String),
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
            Failure::Config(_) | Failure::Edit(_) | Failure::Usage(_) => 2,
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

/// Runs a command's async part; commands that need no network never start
/// a runtime.
fn block_on<T>(f: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::runtime::Runtime::new()
        .map_err(Failure::Runtime)?
        .block_on(f)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Dashboard {
        interval: None,
        no_proxy: false,
    });
    let result = match &command {
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
        Command::Deploy { app, images } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| deploy::deploy(&config.file, &config.state_path(), app, images)),
        Command::Scale { app, instances } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| deploy::scale(&config.file, &config.state_path(), app, *instances)),
        Command::Rollback { app } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| deploy::rollback(&config.file, &config.state_path(), app)),
        Command::History { app, json } => Config::load(&cli.config)
            .map_err(Failure::from)
            .and_then(|config| deploy::history(&config.state_path(), app.as_deref(), *json)),
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
