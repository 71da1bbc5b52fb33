//! Node facts in one round trip: memory, CPUs, disk free where Docker
//! keeps its data, and what the node has of Docker. A constant script
//! (`facts.sh`, no interpolated input) prints them in sections:
//!
//! ```text
//! @@ prism-facts 3
//! @@ meminfo              MemTotal/MemAvailable lines of /proc/meminfo
//! @@ nproc                one number
//! @@ df /var/lib/docker   `df -Pk` of that path (`/` if it does not exist)
//! @@ docker cli=present|missing socket=usable|denied|missing
//! @@ mounts               `DEVICE DIR` of each filesystem mounted under
//!                         /var/lib/prism/volumes/
//! @@ mesh                 only once Prism set the mesh up: `KEY VALUE`
//!                         lines (public-key, subnet, interface, applied,
//!                         `link up`, `resolver up`, names SHA256)
//! @@ spot-action          only with a metadata URL: the body of
//! @@ rebalance            .../spot/instance-action (.../rebalance), then
//!                         its HTTP status (000: no answer)
//! @@ metadata-unread why  instead of those two, when curl is missing
//! @@ end                  the output is complete
//! ```
//!
//! The script runs no `docker` command (each costs the node ~15 ms of CPU):
//! the daemon is asked over its API socket ([`super::api`]), and the
//! `docker` line only tells why, should that fail.

use super::error::{ParseError, Probe, check_header, clip};

/// The script run by `sh -c`: a constant, never formatted.
pub(crate) const FACTS_SCRIPT: &str = include_str!("facts.sh");

const HEADER: &str = "prism-facts 3";

/// `sh -c <FACTS_SCRIPT> prism-facts [metadata_url]`: with a URL, the
/// script also reads the instance metadata for a spot notice. Its exit
/// status is that of its last `echo`: 0 unless the shell itself failed;
/// judge the output, not the status.
pub(crate) fn node_facts_argv(metadata_url: Option<&str>) -> Vec<String> {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        FACTS_SCRIPT.to_owned(),
        "prism-facts".to_owned(),
    ];
    argv.extend(metadata_url.map(str::to_owned));
    argv
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
    pub docker: DockerSetup,
    /// A spot interruption notice or rebalance recommendation, when the
    /// metadata was read and holds one.
    pub notice: Option<Notice>,
    /// Durable volumes mounted on it: directory name under
    /// `/var/lib/prism/volumes/` → device.
    pub volume_mounts: std::collections::BTreeMap<String, String>,
    /// Its part of the mesh, once Prism set it up.
    pub mesh: Option<MeshFacts>,
}

/// What a node holds of the mesh (its `@@ mesh` section).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshFacts {
    /// WireGuard's public key; the private one never leaves the node.
    pub public_key: Option<String>,
    /// Its /24 of the mesh.
    pub subnet: Option<ipnet::Ipv4Net>,
    /// The hash of the set-up last applied.
    pub applied: Option<String>,
    /// Its WireGuard interface exists.
    pub link: bool,
    /// Its resolver runs.
    pub resolver: bool,
    /// SHA-256 of the names file it serves.
    pub names: Option<String>,
}

/// Why a spot node should be drained, from its instance metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `spot/instance-action`: EC2 will stop, hibernate or terminate the
    /// instance at `time` (about two minutes ahead).
    Interruption { action: String, time: String },
    /// `events/recommendations/rebalance`: the instance is at elevated risk
    /// of interruption since `time`.
    Rebalance { time: String },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Interruption { action, time } => {
                write!(f, "spot interruption notice: {action} at {time}")
            }
            Notice::Rebalance { time } => write!(f, "rebalance recommendation since {time}"),
        }
    }
}

/// What the node has of Docker, seen without asking the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DockerSetup {
    /// A `docker` command is on the login user's PATH.
    pub cli: bool,
    /// The daemon's socket, `/var/run/docker.sock`.
    pub socket: SocketAccess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAccess {
    /// No socket there: no daemon, or one that is not running.
    Missing,
    /// The login user may not read and write it (not root, not in its group).
    Denied,
    /// There, and the login user may connect to it.
    Usable,
}

/// One `@@ name args` section of the output and the lines under it.
struct Section<'a> {
    line: usize,
    name: &'a str,
    args: &'a str,
    body: Vec<(usize, &'a str)>,
}

/// Parses the facts script's stdout.
pub(crate) fn parse_node_facts(stdout: &str) -> Result<NodeFacts, ParseError> {
    let bad =
        |line: Option<usize>, detail: String| ParseError::malformed(Probe::NodeFacts, line, detail);
    let mut lines = stdout.lines().enumerate().map(|(i, l)| (i + 1, l));
    check_header(lines.next(), HEADER).map_err(|(line, detail)| bad(line, detail))?;

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
            if !matches!(
                name,
                "meminfo"
                    | "nproc"
                    | "df"
                    | "docker"
                    | "mounts"
                    | "mesh"
                    | "spot-action"
                    | "rebalance"
                    | "metadata-unread"
            ) {
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
    let docker = docker_setup(section("docker")?)?;
    let volume_mounts = mounts(section("mounts")?)?;
    let optional = |name: &str| sections.iter().find(|s| s.name == name);
    let mesh = optional("mesh").map(mesh_facts);
    let action = optional("spot-action").map(metadata).transpose()?;
    let rebalance = optional("rebalance").map(metadata).transpose()?;
    let notice = match (action.flatten(), rebalance.flatten()) {
        (Some(body), _) => Some(interruption(&body)),
        (None, Some(body)) => Some(rebalance_notice(&body)),
        (None, None) => None,
    };
    Ok(NodeFacts {
        mem_total,
        mem_available,
        cpus,
        disk_path: df_section.args.to_owned(),
        disk_free,
        docker,
        notice,
        volume_mounts,
        mesh,
    })
}

/// A WireGuard key as `wg` prints it: 32 bytes in base64 (43 characters
/// and one `=`).
pub fn is_wireguard_key(k: &str) -> bool {
    k.len() == 44
        && k.ends_with('=')
        && k.bytes()
            .take(43)
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `KEY VALUE` lines; what cannot be read is left unset, so the next
/// pass sets the mesh up again.
fn mesh_facts(s: &Section<'_>) -> MeshFacts {
    let mut m = MeshFacts::default();
    for (_, line) in &s.body {
        let (key, value) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let value = value.trim();
        let word = || (!value.is_empty()).then(|| value.to_owned());
        match key {
            // Given to every other node's WireGuard: only a well-formed
            // key (base64 of 32 bytes) is taken, never other text.
            "public-key" => m.public_key = word().filter(|k| is_wireguard_key(k)),
            "subnet" => m.subnet = value.parse().ok(),
            "applied" => m.applied = word(),
            "link" => m.link = value == "up",
            "resolver" => m.resolver = value == "up",
            "names" => m.names = word(),
            _ => {}
        }
    }
    m
}

/// `DEVICE /var/lib/prism/volumes/NAME` lines.
fn mounts(s: &Section<'_>) -> Result<std::collections::BTreeMap<String, String>, ParseError> {
    let mut out = std::collections::BTreeMap::new();
    for (n, line) in &s.body {
        if line.trim().is_empty() {
            continue;
        }
        let (device, dir) = line.split_once(' ').ok_or_else(|| {
            ParseError::malformed(
                Probe::NodeFacts,
                Some(*n),
                format!("expected `DEVICE DIR`, found {:?}", clip(line)),
            )
        })?;
        // A directory deeper down is not one of Prism's mounts.
        if let Some(name) = dir.strip_prefix("/var/lib/prism/volumes/")
            && !name.is_empty()
            && !name.contains('/')
        {
            out.insert(name.to_owned(), device.to_owned());
        }
    }
    Ok(out)
}

/// A metadata section: the body when the status is 200, `None` for any
/// other status (404: no notice; 000: the service did not answer).
fn metadata(s: &Section<'_>) -> Result<Option<String>, ParseError> {
    let lines: Vec<&(usize, &str)> = s
        .body
        .iter()
        .filter(|(_, t)| !t.trim().is_empty())
        .collect();
    let Some((&&(n, status), body)) = lines.split_last() else {
        return Err(malformed(
            s.line,
            format!("`@@ {}` has no HTTP status", s.name),
        ));
    };
    let status = status.trim();
    if status.len() != 3 || !status.bytes().all(|c| c.is_ascii_digit()) {
        return Err(malformed(
            n,
            format!(
                "expected an HTTP status such as 200 or 404, found {:?}",
                clip(status)
            ),
        ));
    }
    Ok((status == "200").then(|| {
        body.iter()
            .map(|(_, t)| t.trim())
            .collect::<Vec<_>>()
            .join("")
    }))
}

/// `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}`. A 200 is a
/// notice even when its body is not understood: draining early is cheap.
fn interruption(body: &str) -> Notice {
    #[derive(serde::Deserialize)]
    struct Action {
        action: String,
        time: String,
    }
    match serde_json::from_str::<Action>(body) {
        Ok(a) => Notice::Interruption {
            action: a.action,
            time: a.time,
        },
        Err(_) => Notice::Interruption {
            action: format!("unreadable ({})", clip(body)),
            time: "an unknown time".into(),
        },
    }
}

/// `{"noticeTime": "2020-11-05T08:22:00Z"}`.
fn rebalance_notice(body: &str) -> Notice {
    #[derive(serde::Deserialize)]
    struct Rebalance {
        #[serde(rename = "noticeTime")]
        notice_time: String,
    }
    Notice::Rebalance {
        time: serde_json::from_str::<Rebalance>(body)
            .map(|r| r.notice_time)
            .unwrap_or_else(|_| "an unknown time".into()),
    }
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

/// `@@ docker cli=… socket=…`: both keys, once each, in that order.
fn docker_setup(s: &Section<'_>) -> Result<DockerSetup, ParseError> {
    let expected = || {
        malformed(
            s.line,
            format!(
                "expected `@@ docker cli=present|missing socket=usable|denied|missing`, \
                 found `@@ docker {}`",
                clip(s.args)
            ),
        )
    };
    let mut words = s.args.split_whitespace();
    let (Some(cli), Some(socket), None) = (words.next(), words.next(), words.next()) else {
        return Err(expected());
    };
    let cli = match cli {
        "cli=present" => true,
        "cli=missing" => false,
        _ => return Err(expected()),
    };
    let socket = match socket {
        "socket=usable" => SocketAccess::Usable,
        "socket=denied" => SocketAccess::Denied,
        "socket=missing" => SocketAccess::Missing,
        _ => return Err(expected()),
    };
    if let Some(&(n, text)) = s.body.iter().find(|(_, t)| !t.trim().is_empty()) {
        return Err(malformed(
            n,
            format!("unexpected text under `@@ docker`: {:?}", clip(text)),
        ));
    }
    Ok(DockerSetup { cli, socket })
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
