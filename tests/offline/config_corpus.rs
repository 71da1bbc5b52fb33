//! The fleet.toml corpus.
//!
//! Every file under `tests/config/invalid` is a realistic fleet.toml with one
//! mistake. Its leading comment lines say what the parser must report:
//!
//! ```text
//! # expect: 14:10 apps.blog.services.web.memory: unknown size unit "Q"
//! # help: did you mean `memory`?
//! ```
//!
//! `# expect: LINE:COL PATH: MESSAGE` is one diagnostic, in the order the
//! parser reports them: it must start at LINE:COL (both from 1), its path must
//! print as PATH and its message must contain MESSAGE. A diagnostic without a
//! path (a TOML syntax error) is written `# expect: LINE:COL MESSAGE`. A file
//! has one `# expect:` line per diagnostic, no more, no fewer. An optional
//! `# help:` line after an `# expect:` line must be contained in that
//! diagnostic's help.
//!
//! Every file under `tests/config/valid`, and the repository's own
//! `fleet.toml` when there is one, must parse.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use prism::config::{Diagnostic, Invalid};

/// The issue asks for at least this many invalid files.
const MIN_INVALID_FILES: usize = 30;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `.toml` files of `tests/config/<dir>`, sorted by name.
fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = manifest_dir().join("tests/config").join(dir);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus folder {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable entry in the corpus folder").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn read(file: &Path) -> String {
    fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

/// One `# expect:` line and the `# help:` line that may follow it.
#[derive(Debug)]
struct Expected {
    line: usize,
    col: usize,
    /// `PATH: MESSAGE`, or only `MESSAGE` for a diagnostic without a path.
    text: String,
    help: Option<String>,
}

impl Expected {
    fn matches(&self, invalid: &Invalid, d: &Diagnostic) -> bool {
        let Some(span) = &d.span else {
            return false;
        };
        if invalid.line_col(span.start) != (self.line, self.col) {
            return false;
        }
        let head = if d.path.0.is_empty() {
            String::new()
        } else {
            format!("{}: ", d.path)
        };
        let message_ok = self
            .text
            .strip_prefix(&head)
            .is_some_and(|fragment| !fragment.is_empty() && d.message.contains(fragment));
        let help_ok = match &self.help {
            None => true,
            Some(want) => d.help.as_ref().is_some_and(|got| got.contains(want)),
        };
        message_ok && help_ok
    }
}

/// Reads the expectations from the file's leading comment lines.
fn expectations(text: &str) -> Result<Vec<Expected>, String> {
    let mut all: Vec<Expected> = Vec::new();
    for line in text.lines() {
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        if let Some(rest) = comment.strip_prefix("expect:") {
            let bad = || format!("cannot read `{line}`: want `# expect: LINE:COL PATH: MESSAGE`");
            let (place, text) = rest.trim().split_once(' ').ok_or_else(bad)?;
            let (line_no, col) = place.split_once(':').ok_or_else(bad)?;
            all.push(Expected {
                line: line_no.parse().map_err(|_| bad())?,
                col: col.parse().map_err(|_| bad())?,
                text: text.trim().to_owned(),
                help: None,
            });
        } else if let Some(help) = comment.strip_prefix("help:") {
            let last = all
                .last_mut()
                .ok_or("a `# help:` line must follow an `# expect:` line")?;
            if last.help.is_some() {
                return Err("two `# help:` lines for one `# expect:` line".into());
            }
            last.help = Some(help.trim().to_owned());
        }
    }
    if all.is_empty() {
        return Err("no `# expect:` line in the header".into());
    }
    Ok(all)
}

/// A diagnostic in the header's own notation, so a mismatch shows what to write.
fn describe(invalid: &Invalid, d: &Diagnostic) -> String {
    let place = match &d.span {
        Some(span) => {
            let (line, col) = invalid.line_col(span.start);
            format!("{line}:{col}")
        }
        None => "(no location)".to_owned(),
    };
    let mut out = if d.path.0.is_empty() {
        format!("# expect: {place} {}", d.message)
    } else {
        format!("# expect: {place} {}: {}", d.path, d.message)
    };
    if let Some(help) = &d.help {
        write!(out, "\n# help: {help}").expect("writing to a String");
    }
    out
}

/// What is wrong with one invalid file, or `None` when it reports exactly
/// what its header says.
fn check_invalid(file: &Path) -> Option<String> {
    let text = read(file);
    let expected = match expectations(&text) {
        Ok(expected) => expected,
        Err(e) => return Some(format!("bad header: {e}")),
    };
    let invalid = match prism::config::parse(file, &text) {
        Ok(_) => return Some("parsed without any error".to_owned()),
        Err(invalid) => invalid,
    };
    let all_match = expected.len() == invalid.diagnostics.len()
        && expected
            .iter()
            .zip(&invalid.diagnostics)
            .all(|(e, d)| e.matches(&invalid, d));
    if all_match {
        return None;
    }
    let mut report = String::from("expected:\n");
    for e in &expected {
        writeln!(report, "  # expect: {}:{} {}", e.line, e.col, e.text)
            .expect("writing to a String");
        if let Some(help) = &e.help {
            writeln!(report, "  # help: {help}").expect("writing to a String");
        }
    }
    report.push_str("got:\n");
    for d in &invalid.diagnostics {
        for line in describe(&invalid, d).lines() {
            writeln!(report, "  {line}").expect("writing to a String");
        }
    }
    report.push_str("printed:\n");
    for line in invalid.to_string().lines() {
        writeln!(report, "  | {line}").expect("writing to a String");
    }
    Some(report)
}

#[test]
fn invalid_files_report_the_expected_errors() {
    let files = corpus("invalid");
    assert!(
        files.len() >= MIN_INVALID_FILES,
        "expected at least {MIN_INVALID_FILES} files in tests/config/invalid, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        if let Some(report) = check_invalid(file) {
            failures.push(format!("{}:\n{report}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid files do not report what their header expects:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_file_names_are_numbered_and_unique() {
    let mut numbers = std::collections::BTreeMap::new();
    let mut problems = Vec::new();
    for file in corpus("invalid") {
        let name = file
            .file_name()
            .expect("a corpus file has a name")
            .to_string_lossy()
            .into_owned();
        let number = name.split_once('-').map(|(n, _)| n.to_owned());
        match number {
            Some(n) if n.len() >= 2 && n.chars().all(|c| c.is_ascii_digit()) => {
                if let Some(first) = numbers.insert(n.clone(), name.clone()) {
                    problems.push(format!("{name} and {first} share the number {n}"));
                }
            }
            _ => problems.push(format!("{name} is not named NN-short-name.toml")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn valid_files_parse() {
    let mut files = corpus("valid");
    assert!(
        !files.is_empty(),
        "expected valid examples in tests/config/valid"
    );
    let root = manifest_dir().join("fleet.toml");
    if root.exists() {
        files.push(root);
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            prism::config::parse(file, &read(file))
                .err()
                .map(|invalid| invalid.to_string())
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} valid files do not parse:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

/// The invalid file whose name ends with `suffix`.
fn invalid_file(suffix: &str) -> PathBuf {
    corpus("invalid")
        .into_iter()
        .find(|path| path.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no file named NN{suffix} in tests/config/invalid"))
}

/// The printed form: `FILE:LINE:COL: PATH: MESSAGE`, the offending line and
/// a caret under the exact column, then the help.
#[test]
fn display_shows_place_path_line_caret_and_help() {
    for suffix in [
        "-memory-unknown-unit.toml",
        "-unknown-key-service-memroy.toml",
    ] {
        let file = invalid_file(suffix);
        let text = read(&file);
        let invalid = prism::config::parse(&file, &text).expect_err("an invalid file");
        let first = invalid
            .diagnostics
            .first()
            .expect("at least one diagnostic");
        let span = first.span.clone().expect("the diagnostic has a location");
        let (line, col) = invalid.line_col(span.start);
        let printed = invalid.to_string();
        let lines: Vec<&str> = printed.lines().collect();

        let headline = format!(
            "{}:{line}:{col}: {}: {}",
            file.display(),
            first.path,
            first.message
        );
        assert!(
            lines.first().is_some_and(|l| l.ends_with(&headline)),
            "expected the first line to end with {headline:?}:\n{printed}"
        );

        let source_line = text
            .lines()
            .nth(line - 1)
            .expect("the diagnostic's line exists");
        let numbered = format!("{line} | {source_line}");
        let at = lines
            .iter()
            .position(|l| *l == numbered)
            .unwrap_or_else(|| panic!("the line {numbered:?} is not shown:\n{printed}"));
        let caret = lines
            .get(at + 1)
            .unwrap_or_else(|| panic!("no caret line under {numbered:?}:\n{printed}"));
        let gutter = " ".repeat(line.to_string().len());
        let marks = caret
            .strip_prefix(&format!("{gutter} | "))
            .unwrap_or_else(|| panic!("the caret line {caret:?} has no gutter:\n{printed}"));
        let carets = marks.trim_start();
        assert_eq!(
            marks.len() - carets.len(),
            col - 1,
            "the caret is not under column {col}:\n{printed}"
        );
        assert!(
            !carets.is_empty() && carets.chars().all(|c| c == '^'),
            "expected carets under the offending text, found {caret:?}:\n{printed}"
        );
        let span_text = &text[span.clone()];
        assert_eq!(
            carets.len(),
            span_text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .count()
                .max(1),
            "the carets do not cover {span_text:?}:\n{printed}"
        );

        if let Some(help) = &first.help {
            assert!(
                lines.iter().any(|l| l.trim() == format!("help: {help}")),
                "the help is missing:\n{printed}"
            );
        }
    }
    let with_help = invalid_file("-unknown-key-service-memroy.toml");
    let invalid = prism::config::parse(&with_help, &read(&with_help)).expect_err("a typo");
    assert!(
        invalid.to_string().contains("help: did you mean `memory`?"),
        "the typo's suggestion is not printed:\n{invalid}"
    );
}
