//! Errors in fleet.toml, located: file, line, column, the field's path, what
//! was expected, and the nearest known key for a typo.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a field's path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field's path such as `apps.blog.services.web.memory`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn new() -> Self {
        FieldPath(Vec::new())
    }

    /// A child path: `key` is split on nothing, so dotted names stay one key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.into()));
        FieldPath(segs)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        FieldPath(segs)
    }

    /// Builds a path from keys, for the common all-keys case.
    pub fn of<const N: usize>(keys: [&str; N]) -> Self {
        FieldPath(keys.iter().map(|k| Seg::Key((*k).to_owned())).collect())
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: FieldPath,
    pub message: String,
    pub help: Option<String>,
    /// Byte range in the file, when the problem has a place.
    pub span: Option<Range<usize>>,
    /// The problem is the key's name, not its value: point at the key.
    pub at_key: bool,
    /// Worth knowing, but the file is usable.
    pub warning: bool,
}

impl Diagnostic {
    pub fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Diagnostic {
            path,
            message: message.into(),
            help: None,
            span: None,
            at_key: false,
            warning: false,
        }
    }

    pub(crate) fn warning(mut self) -> Self {
        self.warning = true;
        self
    }

    pub(crate) fn at_key(mut self) -> Self {
        self.at_key = true;
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Why fleet.toml could not be used. Nothing is applied when this is returned.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    Invalid(Invalid),
}

/// A file that was read but is not a valid fleet.
#[derive(Debug)]
pub struct Invalid {
    pub file: PathBuf,
    pub text: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, source } => {
                write!(f, "cannot read {}: {source}", file.display())?;
                if source.kind() == std::io::ErrorKind::NotFound {
                    write!(
                        f,
                        "\n  help: pass the file with -c/--config or set PRISM_CONFIG"
                    )?;
                }
                Ok(())
            }
            ConfigError::Invalid(inv) => inv.fmt(f),
        }
    }
}

impl Invalid {
    /// `(line, column)`, both from 1, of a byte offset; the column counts characters.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let n = self.diagnostics.len();
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let place = match &d.span {
                Some(span) => {
                    let (line, col) = self.line_col(span.start);
                    format!("{file}:{line}:{col}")
                }
                None => file.to_string(),
            };
            let level = if d.warning { "warning" } else { "error" };
            if d.path.0.is_empty() {
                write!(f, "{level}: {place}: {}", d.message)?;
            } else {
                write!(f, "{level}: {place}: {}: {}", d.path, d.message)?;
            }
            if let Some(span) = &d.span {
                write_snippet(f, &self.text, span)?;
            }
            if let Some(help) = &d.help {
                write!(f, "\n  help: {help}")?;
            }
        }
        if n > 1 && self.diagnostics.iter().any(|d| !d.warning) {
            write!(f, "\n{n} problems in {file}")?;
        }
        Ok(())
    }
}

/// The offending line with a caret under the span, as compilers show it.
fn write_snippet(f: &mut fmt::Formatter<'_>, text: &str, span: &Range<usize>) -> fmt::Result {
    let (line_no, col) = line_col(text, span.start);
    let Some(line) = text.lines().nth(line_no - 1) else {
        return Ok(());
    };
    let width = line_no.to_string().len();
    let line_chars = line.chars().count();
    let span_chars = text
        .get(span.clone())
        .map_or(1, |s| s.lines().next().unwrap_or("").chars().count())
        .clamp(1, line_chars.saturating_sub(col - 1).max(1));
    write!(
        f,
        "\n{:width$} |\n{line_no} | {line}\n{:width$} | {}{}",
        "",
        "",
        " ".repeat(col - 1),
        "^".repeat(span_chars)
    )
}

/// Finds where a path lives in the parsed document: the value's span (for
/// a `[table]` its header), or the deepest enclosing one when the field
/// itself is absent.
/// With `at_key`, the last key's own span instead of its value's.
pub(crate) fn locate(
    root: &Spanned<DeTable<'_>>,
    path: &FieldPath,
    at_key: bool,
) -> Option<Range<usize>> {
    let mut span = None;
    let mut here: Option<&DeValue<'_>> = None;
    let last = path.0.len().saturating_sub(1);
    for (depth, seg) in path.0.iter().enumerate() {
        let next = match (seg, here) {
            (Seg::Key(k), None) => find_key(root.get_ref(), k),
            (Seg::Key(k), Some(DeValue::Table(t))) => find_key(t, k),
            (Seg::Index(i), Some(DeValue::Array(items))) => items.get(*i).map(|v| (v.span(), v)),
            _ => None,
        };
        let Some((key_span, next)) = next else { break };
        span = Some(if at_key && depth == last {
            key_span
        } else {
            next.span()
        });
        here = Some(next.get_ref());
    }
    span
}

fn find_key<'a, 'i>(
    table: &'a DeTable<'i>,
    key: &str,
) -> Option<(Range<usize>, &'a Spanned<DeValue<'i>>)> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(k, v)| (k.span(), v))
}

/// The closest candidate to a mistyped name, if any is close enough.
pub(crate) fn nearest<'a>(
    typo: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(typo, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// serde reports an unknown key as "unknown field `x`, expected one of `a`, `b`";
/// read the typo and the candidates back out to suggest the nearest.
pub(crate) fn suggestion_for(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (typo, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    nearest(typo, candidates.iter().copied()).map(|c| format!("did you mean `{c}`?"))
}
