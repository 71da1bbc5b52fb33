//! What the bootstrap script reports, typed. Pure: no I/O.

use std::fmt;

use crate::observe::{check_header, clip};

const HEADER: &str = "prism-bootstrap 1";

/// Docker answers on the node; how it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    /// The daemon's version (`20.10.24+dfsg1`).
    pub version: String,
    /// `ID VERSION_ID` from /etc/os-release (`debian 12`), read only when
    /// something had to be installed.
    pub os: Option<String>,
    /// What went wrong without stopping the bootstrap.
    pub warnings: Vec<Warning>,
    /// The login user (not root) added to the `docker` group; it applies
    /// from the next login.
    pub group_added: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Docker was there and answering: nothing changed.
    AlreadyPresent,
    /// Docker was installed but not running: it was started.
    Started { method: StartMethod },
    /// Docker was missing: `tool` installed `package`, and it was started.
    Installed {
        tool: String,
        package: String,
        method: StartMethod,
    },
}

/// How the daemon was brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMethod {
    /// `systemctl enable --now docker` (systemd is PID 1).
    Systemd,
    /// The init script (`service docker start`).
    Service,
    /// `dockerd` started in the background: no service manager would.
    Dockerd,
    /// The package's own install scripts started it.
    Package,
}

impl StartMethod {
    fn parse(word: &str) -> Option<StartMethod> {
        Some(match word {
            "systemd" => StartMethod::Systemd,
            "service" => StartMethod::Service,
            "dockerd" => StartMethod::Dockerd,
            "package" => StartMethod::Package,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Systemd => "systemd",
            StartMethod::Service => "service",
            StartMethod::Dockerd => "dockerd",
            StartMethod::Package => "package",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    /// The tail of the output of the step that warned.
    pub detail: Vec<String>,
}

/// Why Docker could not be made to run, as the script reported it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{user} is not root and `sudo -n` is refused: cannot install Docker")]
    NoRoot { user: String },
    #[error("cannot install Docker on {os}: Prism knows Debian, Ubuntu, Amazon Linux and Fedora")]
    UnsupportedOs { os: String },
    #[error("`{tool} install` exited {status}: {}", last_lines(.output))]
    InstallFailed {
        tool: String,
        status: i32,
        /// The tail of the package manager's output.
        output: Vec<String>,
    },
    #[error("Docker is installed but did not answer after starting it ({method}): {}", last_lines(.output))]
    StartFailed {
        method: StartMethod,
        /// The tail of the start's output, or of the daemon's log.
        output: Vec<String>,
    },
    /// The output is not what the script prints. `line` is 1-based.
    #[error("the script's output{}: {detail}", line.map(|n| format!(", line {n}")).unwrap_or_default())]
    Malformed { line: Option<usize>, detail: String },
}

impl Failure {
    /// A short condition name for status and the store.
    pub fn condition(&self) -> &'static str {
        match self {
            Failure::NoRoot { .. } => "bootstrap-no-root",
            Failure::UnsupportedOs { .. } => "bootstrap-unsupported-os",
            Failure::InstallFailed { .. } => "bootstrap-install-failed",
            Failure::StartFailed { .. } => "bootstrap-start-failed",
            Failure::Malformed { .. } => "bootstrap-error",
        }
    }
}

impl Outcome {
    /// One line for an event: what was done, and the version now running.
    pub fn summary(&self) -> String {
        let os = self
            .os
            .as_deref()
            .map(|os| format!(" on {os}"))
            .unwrap_or_default();
        let mut text = match &self.action {
            Action::AlreadyPresent => format!("Docker {} already running", self.version),
            Action::Started { method } => {
                format!("started Docker {} ({method})", self.version)
            }
            Action::Installed {
                tool,
                package,
                method,
            } => format!(
                "installed {package} with {tool}{os} and started Docker {} ({method})",
                self.version
            ),
        };
        if let Some(user) = &self.group_added {
            text.push_str(&format!("; added {user} to the docker group"));
        }
        for w in &self.warnings {
            text.push_str(&format!("; warning: {}", w.message));
        }
        text
    }
}

/// The last `n` non-blank lines, joined for a one-line message.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn last_lines(output: &[String]) -> String {
    let text = tail(&output.join("\n"), 3);
    if text.is_empty() {
        "(no output)".to_owned()
    } else {
        text
    }
}

/// The result marker, with its detail lines.
struct ResultLine<'a> {
    line: usize,
    kind: &'a str,
    args: &'a str,
    detail: Vec<String>,
}

/// Where the next `| ` detail line goes.
enum Attach {
    Nothing,
    Warning,
    Result,
}

/// Parses the script's stdout.
pub(crate) fn parse_output(stdout: &str) -> Result<Outcome, Failure> {
    let bad = |line: Option<usize>, detail: String| Failure::Malformed { line, detail };
    let mut lines = stdout.lines().enumerate().map(|(i, l)| (i + 1, l));
    check_header(lines.next(), HEADER).map_err(|(line, detail)| bad(line, detail))?;

    let mut os = None;
    let mut warnings: Vec<Warning> = Vec::new();
    let mut install: Option<(String, String)> = None;
    let mut start: Option<StartMethod> = None;
    let mut group_added = None;
    let mut result: Option<ResultLine<'_>> = None;
    let mut attach = Attach::Nothing;
    let mut ended = false;
    for (n, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        if ended {
            return Err(bad(Some(n), "output continues after `@@ end`".into()));
        }
        if let Some(detail) = text.strip_prefix("| ").or((text == "|").then_some("")) {
            match attach {
                Attach::Warning => {
                    if let Some(w) = warnings.last_mut() {
                        w.detail.push(detail.to_owned());
                    }
                }
                Attach::Result => {
                    if let Some(r) = result.as_mut() {
                        r.detail.push(detail.to_owned());
                    }
                }
                Attach::Nothing => {
                    return Err(bad(
                        Some(n),
                        "a `| ` line under a marker that has none".into(),
                    ));
                }
            }
            continue;
        }
        let Some(marker) = text.strip_prefix("@@ ") else {
            return Err(bad(Some(n), format!("unexpected line {:?}", clip(text))));
        };
        let (name, args) = marker.split_once(' ').unwrap_or((marker, ""));
        let args = args.trim();
        if result.is_some() && name != "end" {
            return Err(bad(Some(n), format!("`@@ {name}` after the result")));
        }
        attach = Attach::Nothing;
        match name {
            "end" => ended = true,
            "os" => os = Some(args.to_owned()),
            "warn" => {
                warnings.push(Warning {
                    message: args.to_owned(),
                    detail: Vec::new(),
                });
                attach = Attach::Warning;
            }
            "install" => {
                let (tool, package) = two_words(args)
                    .ok_or_else(|| bad(Some(n), "expected `@@ install TOOL PACKAGE`".into()))?;
                install = Some((tool.to_owned(), package.to_owned()));
            }
            "start" => {
                start = Some(StartMethod::parse(args).ok_or_else(|| {
                    bad(Some(n), format!("unknown start method {:?}", clip(args)))
                })?);
            }
            "group-added" if !args.is_empty() => group_added = Some(args.to_owned()),
            "result" => {
                let (kind, rest) = args.split_once(' ').unwrap_or((args, ""));
                result = Some(ResultLine {
                    line: n,
                    kind,
                    args: rest.trim(),
                    detail: Vec::new(),
                });
                attach = Attach::Result;
            }
            _ => {
                return Err(bad(Some(n), format!("unknown marker {:?}", clip(text))));
            }
        }
    }
    if !ended {
        return Err(bad(None, "output ends before `@@ end` (cut short?)".into()));
    }
    let Some(r) = result else {
        return Err(bad(None, "no `@@ result`".into()));
    };
    let at = Some(r.line);
    let version = || {
        if r.args.is_empty() || r.args.contains(char::is_whitespace) {
            Err(bad(at, format!("`@@ result {}` needs one version", r.kind)))
        } else {
            Ok(r.args.to_owned())
        }
    };
    let started =
        || start.ok_or_else(|| bad(at, format!("`@@ result {}` without `@@ start`", r.kind)));
    let action = match r.kind {
        "present" => Action::AlreadyPresent,
        "started" => Action::Started { method: started()? },
        "installed" => {
            let (tool, package) = install
                .clone()
                .ok_or_else(|| bad(at, "`@@ result installed` without `@@ install`".into()))?;
            Action::Installed {
                tool,
                package,
                method: started()?,
            }
        }
        "no-root" => {
            return Err(Failure::NoRoot {
                user: r.args.to_owned(),
            });
        }
        "unsupported-os" => {
            return Err(Failure::UnsupportedOs {
                os: r.args.to_owned(),
            });
        }
        "install-failed" => {
            let (tool, status) = two_words(r.args)
                .and_then(|(t, s)| Some((t, s.parse::<i32>().ok()?)))
                .ok_or_else(|| bad(at, "expected `@@ result install-failed TOOL STATUS`".into()))?;
            return Err(Failure::InstallFailed {
                tool: tool.to_owned(),
                status,
                output: r.detail,
            });
        }
        "start-failed" => {
            let method = StartMethod::parse(r.args)
                .ok_or_else(|| bad(at, format!("unknown start method {:?}", clip(r.args))))?;
            return Err(Failure::StartFailed {
                method,
                output: r.detail,
            });
        }
        other => {
            return Err(bad(at, format!("unknown result {:?}", clip(other))));
        }
    };
    Ok(Outcome {
        action,
        version: version()?,
        os,
        warnings,
        group_added,
    })
}

fn two_words(s: &str) -> Option<(&str, &str)> {
    let mut words = s.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(a), Some(b), None) => Some((a, b)),
        _ => None,
    }
}
