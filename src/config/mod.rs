//! fleet.toml: the desired state, read and checked before anything else runs.
//! `load` either returns a fleet that passed every check or the problems,
//! each located in the file: the first structural one (syntax, an unknown
//! key, a wrong type), else every cross-field one. Nothing half-valid gets
//! through.

mod diagnostic;
mod edit;
mod schedule;
mod schema;
mod units;
mod validate;

use std::path::{Path, PathBuf};

pub use diagnostic::{ConfigError, Diagnostic, FieldPath, Invalid, Seg, line_col};
pub use edit::{Edit, EditError, app_text, apply as apply_edit};
pub use schema::*;
pub use units::{Bytes, Interval, Millicores};
pub use validate::{Mount, MountSource};

use diagnostic::{locate, suggestion_for};

/// A checked fleet and where it came from.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub fleet: Fleet,
    /// What is worth knowing but leaves the file usable, each located
    /// (`warning: FILE:LINE:COL: …`).
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and checks fleet.toml.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let fleet = parse(file, &text).map_err(ConfigError::Invalid)?;
        let warnings = warnings(file, &text, &fleet);
        Ok(Config {
            file: file.to_path_buf(),
            fleet,
            warnings,
        })
    }

    /// A path from fleet.toml: `~/` is the operator's home, relative paths
    /// are taken from the folder holding fleet.toml.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if let Ok(rest) = path.strip_prefix("~")
            && let Some(home) = std::env::var_os("HOME")
        {
            return PathBuf::from(home).join(rest);
        }
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let dir = self.file.parent().unwrap_or(Path::new("."));
        dir.join(path)
    }

    pub fn state_path(&self) -> PathBuf {
        self.resolve(&self.fleet.fleet.state)
    }
}

/// Parses and checks fleet.toml text; `file` is only used in messages.
pub fn parse(file: &Path, text: &str) -> Result<Fleet, Invalid> {
    let invalid = |diagnostics| Invalid {
        file: file.to_path_buf(),
        text: text.to_owned(),
        diagnostics,
    };
    let root = toml::de::DeTable::parse(text).map_err(|e| invalid(vec![syntax(&e)]))?;
    let de = toml::de::Deserializer::from(root.clone());
    let fleet: Fleet = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = serde_path(e.path());
        let inner = e.into_inner();
        let message = inner.message().to_owned();
        let mut d = Diagnostic::new(path.clone(), tidy(&message));
        d.span = inner.span().or_else(|| locate(&root, &path, false));
        d.help = suggestion_for(&message);
        invalid(vec![d])
    })?;
    let mut problems = validate::validate(&fleet);
    if problems.is_empty() {
        return Ok(fleet);
    }
    for p in &mut problems {
        p.span = locate(&root, &p.path, p.at_key);
    }
    problems.sort_by_key(|p| p.span.as_ref().map_or(usize::MAX, |s| s.start));
    Err(invalid(problems))
}

/// The warnings about a fleet that [`parse`] accepted, each rendered with
/// its place in the file.
pub fn warnings(file: &Path, text: &str, fleet: &Fleet) -> Vec<String> {
    let Ok(root) = toml::de::DeTable::parse(text) else {
        return Vec::new();
    };
    validate::warnings(fleet)
        .into_iter()
        .map(|mut d| {
            d.span = locate(&root, &d.path, d.at_key);
            Invalid {
                file: file.to_path_buf(),
                text: text.to_owned(),
                diagnostics: vec![d],
            }
            .to_string()
        })
        .collect()
}

fn syntax(e: &toml::de::Error) -> Diagnostic {
    let mut d = Diagnostic::new(
        FieldPath::new(),
        format!("invalid TOML: {}", e.message().trim()),
    );
    d.span = e.span();
    d
}

fn serde_path(path: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment;
    FieldPath(
        path.iter()
            .filter_map(|seg| match seg {
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect(),
    )
}

/// serde's wording, made to read as Prism's ("unknown field" is a key in TOML).
fn tidy(message: &str) -> String {
    let mut text = message
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("expected u16", "expected a port number from 1 to 65535")
        .replace("expected u32", "expected a whole number, 0 or more")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .trim()
        .to_owned();
    // "expected struct SecretSource": the reader wrote TOML, not Rust.
    if let Some(i) = text.find("expected struct ") {
        text.truncate(i);
        text.push_str("expected a table");
    }
    text
}
