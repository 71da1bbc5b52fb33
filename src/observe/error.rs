//! What goes wrong reading a command's output: which command, where, what.
//! No node name: the caller wraps a `ParseError` with the node it came from.

use std::fmt;

/// The read-only commands and Docker API requests whose output this
/// module parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// `GET /version` of the Docker API.
    Version,
    /// `GET /containers/json` listing a fleet's containers.
    ContainerList,
    /// `GET /containers/{id}/json` of one of them.
    ContainerInspect,
    /// `GET /images/json`: the node's images.
    ImageList,
    /// `docker ps -aq` listing a fleet's container ids.
    ContainerIds,
    /// `docker container inspect` of those ids.
    Inspect,
    /// The node facts script (`sh -c`).
    NodeFacts,
}

impl Probe {
    /// The command or request as people know it, for messages.
    pub fn command(self) -> &'static str {
        match self {
            Probe::Version => "GET /version",
            Probe::ContainerList => "GET /containers/json",
            Probe::ContainerInspect => "GET /containers/{id}/json",
            Probe::ImageList => "GET /images/json",
            Probe::ContainerIds => "docker ps -aq",
            Probe::Inspect => "docker container inspect",
            Probe::NodeFacts => "node facts script",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The output is not what the command prints. `line` is 1-based.
    #[error("output of `{probe}`{}: {detail}", at_line(*.line))]
    Malformed {
        probe: Probe,
        line: Option<usize>,
        detail: String,
    },
    /// Docker answered an API request with an error status and this message.
    #[error("`{probe}`: Docker answered {status}: {message}")]
    Status {
        probe: Probe,
        status: u16,
        message: String,
    },
}

impl ParseError {
    pub fn probe(&self) -> Probe {
        match self {
            ParseError::Malformed { probe, .. } | ParseError::Status { probe, .. } => *probe,
        }
    }

    /// The 1-based line of the output at fault, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ParseError::Malformed { line, .. } => *line,
            ParseError::Status { .. } => None,
        }
    }

    pub(crate) fn malformed(probe: Probe, line: Option<usize>, detail: impl Into<String>) -> Self {
        ParseError::Malformed {
            probe,
            line,
            detail: detail.into(),
        }
    }

    /// A JSON error from serde_json, with its line and the path in the
    /// document where it happened (`[2].State.ExitCode`).
    pub(crate) fn json(probe: Probe, path: &str, err: &serde_json::Error) -> Self {
        let line = (err.line() > 0).then_some(err.line());
        let mut message = err.to_string();
        // serde_json appends " at line L column C"; the line is kept apart.
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        let at = if path.is_empty() || path == "." {
            String::new()
        } else {
            format!("at {path}: ")
        };
        // Line 0: the error came from an already parsed value, not text.
        let column = line
            .map(|_| format!(" (column {})", err.column()))
            .unwrap_or_default();
        let detail = format!("{at}{message}{column}");
        ParseError::malformed(probe, line, detail)
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|n| format!(", line {n}")).unwrap_or_default()
}

/// Deserializes one JSON document (surrounding whitespace allowed),
/// keeping the path of any error.
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(
    probe: Probe,
    text: &'a str,
) -> Result<T, ParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ParseError::json(probe, &e.path().to_string(), e.inner()))?;
    de.end().map_err(|e| ParseError::json(probe, "", &e))?;
    Ok(value)
}

/// At most 80 characters of untrusted text, for messages.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// Checks the first line of a marker script's output (`@@ HEADER`), as
/// `lines` yields it (1-based number, text). `Err` holds the line and what
/// is wrong, for the caller's own error type.
pub(crate) fn check_header(
    first: Option<(usize, &str)>,
    header: &str,
) -> Result<(), (Option<usize>, String)> {
    match first {
        Some((_, line)) if line.strip_prefix("@@ ") == Some(header) => Ok(()),
        Some((n, line)) => Err((
            Some(n),
            format!("expected `@@ {header}`, found {:?}", clip(line)),
        )),
        None => Err((None, "no output".into())),
    }
}
