//! Node facts in one round trip: memory, CPUs, disk free where Docker
//! keeps its data, and whether Docker is there and answering. A constant
//! script (`facts.sh`, no interpolated input) prints them in sections:
//!
//! ```text
//! @@ prism-facts 1
//! @@ meminfo              MemTotal/MemAvailable lines of /proc/meminfo
//! @@ nproc                one number
//! @@ df /var/lib/docker   `df -Pk` of that path (`/` if it does not exist)
//! @@ docker exit N        then `docker version` output (stdout and stderr)
//! @@ docker missing       when no `docker` is on PATH
//! @@ end                  the output is complete
//! ```

use super::error::{ParseError, Probe, clip};

/// The script run by `sh -c`: a constant, never formatted.
pub const FACTS_SCRIPT: &str = include_str!("facts.sh");

const HEADER: &str = "prism-facts 1";

/// `sh -c <FACTS_SCRIPT>`. Its exit status is that of its last `echo`: 0
/// unless the shell itself failed; judge the output, not the status.
pub fn node_facts_argv() -> Vec<String> {
    vec!["sh".to_owned(), "-c".to_owned(), FACTS_SCRIPT.to_owned()]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Bytes (`MemTotal`).
    pub mem_total: u64,
    /// Bytes (`MemAvailable`: free plus reclaimable).
    pub mem_available: u64,
    /// CPUs this shell may run on (`nproc`).
    pub cpus: u32,
    /// The path measured: `/var/lib/docker`, or `/` when it does not exist.
    pub disk_path: String,
    /// Bytes available to unprivileged users on `disk_path`'s filesystem.
    pub disk_free: u64,
    pub docker: DockerStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerStatus {
    /// The daemon answered with its version (`20.10.24+dfsg1`).
    Running { version: String },
    /// No `docker` command on the node.
    Missing,
    /// `docker` is there but the daemon did not answer (not running, or
    /// any other failure); `message` is Docker's own.
    DaemonDown { message: String },
    /// The login user may not use the Docker socket (not root, not in the
    /// `docker` group).
    PermissionDenied { message: String },
}

/// One `@@ name args` section of the output and the lines under it.
struct Section<'a> {
    line: usize,
    name: &'a str,
    args: &'a str,
    body: Vec<(usize, &'a str)>,
}

/// Parses the facts script's stdout.
pub fn parse_node_facts(stdout: &str) -> Result<NodeFacts, ParseError> {
    let bad =
        |line: Option<usize>, detail: String| ParseError::malformed(Probe::NodeFacts, line, detail);
    let mut lines = stdout.lines().enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, first)) if first.strip_prefix("@@ ") == Some(HEADER) => {}
        Some((n, first)) => {
            return Err(bad(
                Some(n),
                format!("expected `@@ {HEADER}`, found {:?}", clip(first)),
            ));
        }
        None => return Err(bad(None, "no output".into())),
    }

    let mut sections: Vec<Section<'_>> = Vec::new();
    let mut ended = false;
    for (n, text) in lines {
        if ended {
            if text.trim().is_empty() {
                continue;
            }
            return Err(bad(Some(n), "output continues after `@@ end`".into()));
        }
        if let Some(header) = text.strip_prefix("@@ ") {
            let (name, args) = header.split_once(' ').unwrap_or((header, ""));
            if name == "end" {
                ended = true;
                continue;
            }
            if !matches!(name, "meminfo" | "nproc" | "df" | "docker") {
                return Err(bad(Some(n), format!("unknown section `@@ {name}`")));
            }
            if sections.iter().any(|s| s.name == name) {
                return Err(bad(Some(n), format!("section `@@ {name}` appears twice")));
            }
            sections.push(Section {
                line: n,
                name,
                args,
                body: Vec::new(),
            });
        } else if let Some(current) = sections.last_mut() {
            current.body.push((n, text));
        } else if !text.trim().is_empty() {
            return Err(bad(Some(n), "text before the first section".into()));
        }
    }
    if !ended {
        return Err(bad(None, "output ends before `@@ end` (cut short?)".into()));
    }
    let section = |name: &str| {
        sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| bad(None, format!("no `@@ {name}` section")))
    };

    let (mem_total, mem_available) = meminfo(section("meminfo")?)?;
    let cpus = nproc(section("nproc")?)?;
    let df_section = section("df")?;
    let disk_free = df_available(df_section)?;
    let docker = docker_status(section("docker")?)?;
    Ok(NodeFacts {
        mem_total,
        mem_available,
        cpus,
        disk_path: df_section.args.to_owned(),
        disk_free,
        docker,
    })
}

fn malformed(line: usize, detail: String) -> ParseError {
    ParseError::malformed(Probe::NodeFacts, Some(line), detail)
}

/// `MemTotal:       24684096 kB` lines, in bytes.
fn meminfo(s: &Section<'_>) -> Result<(u64, u64), ParseError> {
    let mut total = None;
    let mut available = None;
    for &(n, text) in &s.body {
        if text.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = text.split_once(':') else {
            return Err(malformed(
                n,
                format!("expected `Key: N kB`, found {:?}", clip(text)),
            ));
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let bytes = kib(value.trim().strip_suffix("kB").map(str::trim)).ok_or_else(|| {
            malformed(
                n,
                format!(
                    "{key}: expected a size in kB, found {:?}",
                    clip(value.trim())
                ),
            )
        })?;
        *slot = Some(bytes);
    }
    let missing = |key: &str| malformed(s.line, format!("{key} is missing from /proc/meminfo"));
    Ok((
        total.ok_or_else(|| missing("MemTotal"))?,
        available.ok_or_else(|| missing("MemAvailable"))?,
    ))
}

fn nproc(s: &Section<'_>) -> Result<u32, ParseError> {
    let mut body = s.body.iter().filter(|(_, t)| !t.trim().is_empty());
    match (body.next(), body.next()) {
        (Some(&(n, text)), None) => match text.trim().parse::<u32>() {
            Ok(cpus) if cpus > 0 => Ok(cpus),
            _ => Err(malformed(
                n,
                format!("expected a CPU count, found {:?}", clip(text)),
            )),
        },
        (None, _) => Err(malformed(s.line, "nproc printed nothing".into())),
        (Some(_), Some(&(n, text))) => Err(malformed(
            n,
            format!("expected one CPU count, also found {:?}", clip(text)),
        )),
    }
}

/// `df -Pk`: a header, then `FS 1024-blocks Used Available Capacity% Mount`.
/// Found from the Capacity field, so a file system or mount point with
/// spaces in its name still parses.
fn df_available(s: &Section<'_>) -> Result<u64, ParseError> {
    if s.args.is_empty() {
        return Err(malformed(s.line, "`@@ df` names no path".into()));
    }
    let mut body = s.body.iter().filter(|(_, t)| !t.trim().is_empty());
    match body.next() {
        Some((_, header)) if header.starts_with("Filesystem") => {}
        Some(&(n, text)) => {
            return Err(malformed(
                n,
                format!("expected df's header, found {:?}", clip(text)),
            ));
        }
        None => {
            return Err(malformed(
                s.line,
                format!("df printed nothing for {}", s.args),
            ));
        }
    }
    let Some(&(n, row)) = body.next() else {
        return Err(malformed(
            s.line,
            format!("df printed no row for {}", s.args),
        ));
    };
    let fields: Vec<&str> = row.split_whitespace().collect();
    let available = fields
        .iter()
        .position(|f| {
            f.len() > 1 && f.ends_with('%') && f[..f.len() - 1].bytes().all(|c| c.is_ascii_digit())
        })
        .filter(|&capacity| capacity >= 4)
        .and_then(|capacity| kib(Some(fields[capacity - 1])));
    available.ok_or_else(|| malformed(n, format!("expected a `df -Pk` row, found {:?}", clip(row))))
}

fn docker_status(s: &Section<'_>) -> Result<DockerStatus, ParseError> {
    if s.args == "missing" {
        return Ok(DockerStatus::Missing);
    }
    let code = s
        .args
        .strip_prefix("exit ")
        .and_then(|c| c.parse::<i32>().ok())
        .ok_or_else(|| {
            malformed(
                s.line,
                format!(
                    "expected `@@ docker exit N` or `@@ docker missing`, found `@@ docker {}`",
                    s.args
                ),
            )
        })?;
    let text: Vec<&str> = s
        .body
        .iter()
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    if code == 0 {
        // Warnings (stderr) may come first; the version is the last line.
        return match text.last() {
            Some(v) if v.starts_with(|c: char| c.is_ascii_digit()) => Ok(DockerStatus::Running {
                version: (*v).to_owned(),
            }),
            Some(other) => Err(malformed(
                s.line,
                format!("docker version printed {:?}, not a version", clip(other)),
            )),
            None => Err(malformed(s.line, "docker version printed nothing".into())),
        };
    }
    let message = if text.is_empty() {
        format!("docker version exited with status {code}")
    } else {
        text.join("\n")
    };
    if message.to_ascii_lowercase().contains("permission denied") {
        Ok(DockerStatus::PermissionDenied { message })
    } else {
        Ok(DockerStatus::DaemonDown { message })
    }
}

/// A number of KiB as bytes.
fn kib(s: Option<&str>) -> Option<u64> {
    let s = s?;
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok()?.checked_mul(1024)
}

#[cfg(test)]
mod tests;
