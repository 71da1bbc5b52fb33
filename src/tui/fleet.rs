//! The dashboard's own reach to the nodes, for what the store does not
//! hold: a container's logs and its inspect data. Runs in background
//! tasks; results come back as messages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc::UnboundedSender;

use super::Msg;
use super::app::LogSpec;
use crate::config::{Config, Provider, Service};
use crate::ssh::{Chunk, ExecLimits, Pool, StreamLimits, Target};
use crate::store::{NodeRecord, Writer};

/// How the dashboard reaches the nodes and the applier: the operator's
/// pool when it runs here, else one of its own; the store's writer, for
/// requests.
pub(crate) struct Reach {
    pub pool: Arc<Pool>,
    pub journal: Writer,
}

impl Reach {
    fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// How to reach a node recorded in the store: its address, with the
/// user and port fleet.toml gives (per node for static ones).
pub fn target(config: &Config, node: &NodeRecord) -> Target {
    let ssh = &config.fleet.ssh;
    let listed = (config.fleet.discovery.provider == Provider::Static)
        .then(|| {
            config
                .fleet
                .discovery
                .nodes
                .iter()
                .find(|n| n.name == node.id || n.name == node.name)
        })
        .flatten();
    Target {
        id: node.id.clone(),
        address: node.address.clone(),
        port: listed.and_then(|n| n.port).unwrap_or(ssh.port),
        user: listed
            .and_then(|n| n.user.clone())
            .unwrap_or_else(|| ssh.user.clone()),
    }
}

/// Terminal control characters from a container must not reach the
/// screen: tabs become spaces, other controls go.
pub(crate) fn clean(line: &str) -> String {
    line.trim_end_matches('\r')
        .replace('\t', "    ")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

pub(crate) fn logs_argv(spec: &LogSpec) -> Vec<String> {
    let mut argv: Vec<String> = ["docker", "logs", "--follow"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.push("--tail".into());
    argv.push(
        spec.tail
            .map_or_else(|| "all".to_owned(), |n| n.to_string()),
    );
    if spec.timestamps {
        argv.push("--timestamps".into());
    }
    argv.push("--".into());
    argv.push(spec.container.clone());
    argv
}

/// Streams logs until the stream ends or the task is aborted (which drops
/// the stream and so stops `docker logs` on the node).
pub(crate) async fn stream_logs(
    reach: Arc<Reach>,
    target: Target,
    spec: LogSpec,
    backlog: Arc<AtomicUsize>,
    tx: UnboundedSender<Msg>,
) {
    let seq = spec.seq;
    let mut stream = match reach
        .pool()
        .exec_stream(&target, &logs_argv(&spec), StreamLimits::default())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Msg::LogEnded(seq, format!("cannot stream: {e}")));
            return;
        }
    };
    let _ = tx.send(Msg::LogEnded(seq, "streaming".into()));
    // Partial last lines of stdout and stderr, completed by the next chunk.
    let (mut out, mut err) = (Lines::default(), Lines::default());
    let mut dropped = 0usize;
    while let Some(chunk) = stream.next().await {
        let (buf, bytes) = match chunk {
            Ok(Chunk::Stdout(b)) => (&mut out, b),
            Ok(Chunk::Stderr(b)) => (&mut err, b),
            Ok(Chunk::Exit(status)) => {
                let why =
                    status.map_or_else(|| "ended".to_owned(), |s| format!("ended (exit {s})"));
                let _ = tx.send(Msg::LogEnded(seq, why));
                return;
            }
            Err(e) => {
                let _ = tx.send(Msg::LogEnded(seq, format!("stream lost: {e}")));
                return;
            }
        };
        let mut lines = buf.push(&bytes);
        if lines.is_empty() {
            continue;
        }
        // The screen keeps what it can draw: past a backlog, lines are
        // counted, not queued.
        if backlog.load(Ordering::Relaxed).saturating_add(lines.len()) > MAX_BACKLOG {
            dropped = dropped.saturating_add(lines.len());
            continue;
        }
        if dropped > 0 {
            lines.insert(
                0,
                format!("… {dropped} lines not shown (they came faster than the screen)"),
            );
            dropped = 0;
        }
        backlog.fetch_add(lines.len(), Ordering::Relaxed);
        if tx.send(Msg::LogLines(seq, lines)).is_err() {
            return;
        }
    }
    let _ = tx.send(Msg::LogEnded(seq, "ended".into()));
}

/// The longest line kept, in bytes; the rest of a longer one is counted.
pub(crate) const MAX_LINE: usize = 4096;
/// Lines sent to the screen and not taken yet, at most.
pub(crate) const MAX_BACKLOG: usize = 20_000;

/// A stream cut into lines, holding at most [`MAX_LINE`] bytes of the
/// unfinished one whatever comes (a container printing without newlines).
#[derive(Debug, Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// Bytes of the unfinished line past [`MAX_LINE`].
    cut: u64,
}

impl Lines {
    /// The lines `bytes` finishes, cleaned.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, finished) = match piece.split_last() {
                Some((b'\n', body)) => (body, true),
                _ => (piece, false),
            };
            let room = MAX_LINE.saturating_sub(self.buf.len());
            let (keep, over) = body.split_at(body.len().min(room));
            self.buf.extend_from_slice(keep);
            self.cut = self.cut.saturating_add(over.len() as u64);
            if finished {
                let mut line = clean(&String::from_utf8_lossy(&self.buf));
                if self.cut > 0 {
                    line.push_str(&format!(" … ({} more bytes)", self.cut));
                }
                done.push(line);
                self.buf.clear();
                self.cut = 0;
            }
        }
        done
    }
}

/// `docker inspect` of the container, its secrets' values hidden, and its
/// service's spec from fleet.toml.
pub async fn describe(
    reach: Arc<Reach>,
    config: Arc<Config>,
    target: Target,
    container: String,
    app_service: Option<(String, String)>,
    seq: u64,
    tx: UnboundedSender<Msg>,
) {
    let service = app_service.as_ref().and_then(|(app, service)| {
        config
            .fleet
            .apps
            .get(app)
            .and_then(|a| a.services.get(service))
    });
    let secret_names: BTreeSet<String> = service
        .map(|s| s.secrets.keys().cloned().collect())
        .unwrap_or_default();
    let argv: Vec<String> = ["docker", "inspect", "--", &container]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let inspect = match reach
        .pool()
        .exec(&target, &argv, None, ExecLimits::default())
        .await
    {
        Ok(out) if out.success() => {
            match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                Ok(mut v) => {
                    hide_secrets(&mut v, &secret_names);
                    serde_json::to_string_pretty(&v).unwrap_or_else(|e| e.to_string())
                }
                Err(e) => format!("docker inspect printed something that is not JSON: {e}"),
            }
        }
        Ok(out) => format!("docker inspect failed: {}", out.brief()),
        Err(e) => format!("docker inspect failed: {e}"),
    };
    let mut text = String::new();
    if let (Some((app, name)), Some(s)) = (&app_service, service) {
        text.push_str(&format!("SPEC (fleet.toml apps.{app}.services.{name})\n"));
        text.push_str(&spec_text(s));
        text.push('\n');
    }
    text.push_str("INSPECT\n");
    text.push_str(&inspect);
    let _ = tx.send(Msg::Described(seq, text));
}

/// Env entries of secret variables keep their name, not their value.
pub(crate) fn hide_secrets(inspect: &mut serde_json::Value, names: &BTreeSet<String>) {
    let Some(items) = inspect.as_array_mut() else {
        return;
    };
    for item in items {
        // What the container itself says is secret; a container made
        // before Prism said so has every value hidden.
        let marked: Option<BTreeSet<String>> = item
            .pointer(&format!(
                "/Config/Labels/{}",
                crate::observe::labels::SECRETS
            ))
            .and_then(|v| v.as_str())
            .map(|v| v.split(',').map(str::to_owned).collect());
        let ours = item
            .pointer(&format!("/Config/Labels/{}", crate::observe::labels::FLEET))
            .is_some();
        let Some(env) = item
            .pointer_mut("/Config/Env")
            .and_then(|e| e.as_array_mut())
        else {
            continue;
        };
        for entry in env {
            let Some((name, _)) = entry.as_str().and_then(|s| s.split_once('=')) else {
                continue;
            };
            let hide = match &marked {
                Some(m) => m.contains(name) || names.contains(name),
                None => ours || names.contains(name),
            };
            if hide {
                *entry = serde_json::Value::String(format!("{name}=(secret, hidden)"));
            }
        }
    }
}

fn spec_text(s: &Service) -> String {
    let mut t = format!("  image      {}\n", s.image);
    if let Some(c) = &s.command {
        t.push_str(&format!("  command    {c:?}\n"));
    }
    if let Some(p) = s.port {
        t.push_str(&format!("  port       {p}\n"));
    }
    if !s.hosts.is_empty() {
        t.push_str(&format!("  hosts      {}\n", s.hosts.join(", ")));
    }
    t.push_str(&format!("  memory     {}\n", s.memory));
    if let Some(c) = &s.cpu {
        t.push_str(&format!("  cpu        {c}\n"));
    }
    if let Some(h) = &s.health {
        t.push_str(&format!("  health     {h:?}\n"));
    }
    t.push_str(&format!("  restart    {:?}\n", s.restart));
    if !s.env.is_empty() {
        let names: Vec<&str> = s.env.keys().map(String::as_str).collect();
        t.push_str(&format!("  env        {}\n", names.join(", ")));
    }
    if !s.secrets.is_empty() {
        let names: Vec<&str> = s.secrets.keys().map(String::as_str).collect();
        t.push_str(&format!("  secrets    {}\n", names.join(", ")));
    }
    if !s.depends_on.is_empty() {
        t.push_str(&format!("  depends_on {}\n", s.depends_on.join(", ")));
    }
    if !s.volumes.is_empty() {
        t.push_str(&format!("  volumes    {}\n", s.volumes.join(", ")));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_newlines_and_cleaned() {
        let mut lines = Lines::default();
        assert_eq!(
            lines.push(b"one\r\ntw\x1b[31mo\tx\npart"),
            ["one", "tw[31mo    x"]
        );
        assert!(lines.push(b"").is_empty());
        assert_eq!(lines.push(b"ial\n"), ["partial"]);
        assert_eq!(lines.push(b"\n\n"), ["", ""]);
    }

    #[test]
    fn a_line_without_end_holds_a_bounded_buffer() {
        // 200 MB without a newline, in the SSH channel's chunk size.
        let mut lines = Lines::default();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..(200 * 1024 * 1024 / chunk.len()) {
            assert!(lines.push(&chunk).is_empty());
            assert!(lines.buf.len() <= MAX_LINE && lines.buf.capacity() <= 2 * MAX_LINE);
        }
        let done = lines.push(b"\nnext\n");
        let cut = 200 * 1024 * 1024 - MAX_LINE;
        assert_eq!(done.len(), 2);
        assert!(done[0].starts_with(&"a".repeat(MAX_LINE)));
        assert!(
            done[0].ends_with(&format!(" … ({cut} more bytes)")),
            "{}",
            &done[0][MAX_LINE..]
        );
        assert_eq!(done[1], "next");
    }

    #[test]
    fn logs_argv_is_data() {
        let spec = LogSpec {
            seq: 1,
            node_id: "i-1".into(),
            container: "prism-blog-web-0".into(),
            tail: None,
            timestamps: true,
        };
        assert_eq!(
            logs_argv(&spec),
            [
                "docker",
                "logs",
                "--follow",
                "--tail",
                "all",
                "--timestamps",
                "--",
                "prism-blog-web-0"
            ]
        );
    }

    #[test]
    fn secret_values_are_hidden_in_inspect() {
        let mut v = serde_json::json!([{"Config": {"Env": ["APP_ENV=prod", "DB_PASSWORD=hunter2", "odd"]}}]);
        hide_secrets(&mut v, &["DB_PASSWORD".to_string()].into());
        let text = v.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("DB_PASSWORD=(secret, hidden)"));
        assert!(text.contains("APP_ENV=prod"));
        // A container of an app fleet.toml no longer has: its own label
        // names its secrets.
        let mut v = serde_json::json!([{"Config": {
            "Labels": {"prism.fleet": "lab", "prism.secrets": "API_KEY,DB_PASSWORD"},
            "Env": ["APP_ENV=prod", "DB_PASSWORD=hunter2", "API_KEY=k3y"],
        }}]);
        hide_secrets(&mut v, &BTreeSet::new());
        let text = v.to_string();
        assert!(!text.contains("hunter2") && !text.contains("k3y"), "{text}");
        assert!(text.contains("APP_ENV=prod"), "{text}");
        // One made before containers said so: every value hidden.
        let mut v = serde_json::json!([{"Config": {
            "Labels": {"prism.fleet": "lab"},
            "Env": ["APP_ENV=prod", "DB_PASSWORD=hunter2"],
        }}]);
        hide_secrets(&mut v, &BTreeSet::new());
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("=prod"),
            "{text}"
        );
    }
}
