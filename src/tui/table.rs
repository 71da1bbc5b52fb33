//! The three tables (nodes, containers, events) as rows of text cells,
//! each cell with a sort order and a tone; which columns fit a width.

use std::collections::BTreeSet;

use super::app::{Screen, Tone};
use super::data::{DesiredPods, Snapshot};
use crate::cli::table::{age, size};
use crate::reconcile::NodeState;
use crate::store::Level;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Column {
    pub title: &'static str,
    /// Width below which the column is not worth showing.
    pub min: u16,
    /// Lower shows first; columns go from the highest when space is short.
    pub priority: u8,
    /// Takes the width left over.
    pub fill: bool,
}

const fn col(title: &'static str, min: u16, priority: u8) -> Column {
    Column {
        title,
        min,
        priority,
        fill: false,
    }
}

const NODE_COLUMNS: &[Column] = &[
    col("NAME", 10, 0),
    col("ID", 12, 5),
    col("ADDRESS", 14, 3),
    col("AZ", 11, 4),
    col("TYPE", 9, 4),
    col("LIFECYCLE", 9, 1),
    col("STATE", 20, 0),
    col("PROBE", 5, 2),
    col("MEMORY", 11, 2),
    col("PODS", 4, 1),
];

const CONTAINER_COLUMNS: &[Column] = &[
    col("POD", 16, 0),
    col("NODE", 10, 1),
    Column {
        title: "IMAGE",
        min: 14,
        priority: 3,
        fill: true,
    },
    col("STATE", 9, 0),
    col("HEALTH", 9, 0),
    col("UP", 5, 1),
    col("RESTARTS", 8, 2),
    Column {
        title: "HOSTS/PORTS",
        min: 14,
        priority: 4,
        fill: true,
    },
];

const EVENT_COLUMNS: &[Column] = &[
    col("AGE", 5, 0),
    col("LEVEL", 5, 1),
    col("KIND", 18, 1),
    col("NODE", 10, 2),
    Column {
        title: "MESSAGE",
        min: 20,
        priority: 0,
        fill: true,
    },
];

pub(crate) fn columns(screen: Screen) -> &'static [Column] {
    match screen {
        Screen::Nodes => NODE_COLUMNS,
        Screen::Containers => CONTAINER_COLUMNS,
        Screen::Events => EVENT_COLUMNS,
        _ => &[],
    }
}

/// Which columns (by index) fit `width`, one space between each: the
/// highest priorities drop first.
pub(crate) fn visible(columns: &[Column], width: u16) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    let need =
        |shown: &[usize]| -> u32 { shown.iter().map(|&i| u32::from(columns[i].min) + 1).sum() };
    while need(&shown) > u32::from(width) && shown.len() > 1 {
        let Some(pos) = shown
            .iter()
            .enumerate()
            .max_by_key(|(pos, i)| (columns[**i].priority, *pos))
            .map(|(pos, _)| pos)
        else {
            break;
        };
        shown.remove(pos);
    }
    shown
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    /// Sorts by this when set (times, counts), else by the text.
    pub order: Option<i64>,
    pub tone: Tone,
}

fn text(t: impl Into<String>) -> Cell {
    Cell {
        text: t.into(),
        order: None,
        tone: Tone::Plain,
    }
}

fn num(t: impl Into<String>, order: i64) -> Cell {
    Cell {
        text: t.into(),
        order: Some(order),
        tone: Tone::Plain,
    }
}

fn toned(t: impl Into<String>, tone: Tone) -> Cell {
    Cell {
        text: t.into(),
        order: None,
        tone,
    }
}

/// What a row stands for, for actions on the selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKey {
    Node {
        id: String,
        name: String,
    },
    Container {
        node_id: String,
        name: String,
        /// app/service/instance
        label: String,
    },
    Event(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: RowKey,
    pub cells: Vec<Cell>,
}

pub(crate) fn node_tone(state: NodeState) -> Tone {
    match state {
        NodeState::Ready => Tone::Good,
        NodeState::Suspect | NodeState::Draining => Tone::Warn,
        NodeState::Lost | NodeState::Untrusted | NodeState::Gone => Tone::Bad,
        NodeState::Preparing => Tone::Plain,
    }
}

pub(crate) fn run_tone(state: &str) -> Tone {
    match state {
        "running" => Tone::Good,
        "created" | "restarting" | "paused" | "removing" => Tone::Warn,
        "exited" | "dead" => Tone::Bad,
        _ => Tone::Plain,
    }
}

pub(crate) fn health_tone(health: &str) -> Tone {
    match health {
        "healthy" => Tone::Good,
        "starting" => Tone::Warn,
        "unhealthy" => Tone::Bad,
        _ => Tone::Muted,
    }
}

pub(crate) fn node_name<'a>(data: &'a Snapshot, id: &'a str) -> &'a str {
    data.nodes
        .iter()
        .find(|n| n.id == id)
        .map_or(id, |n| n.name.as_str())
}

pub(crate) fn node_rows(data: &Snapshot, now: i64) -> Vec<Row> {
    let mut rows: Vec<Row> = data
        .nodes
        .iter()
        .map(|n| {
            let pods = data.placements.iter().filter(|p| p.node_id == n.id).count();
            let memory = match (n.memory_free, n.memory_total) {
                (Some(free), Some(total)) => num(
                    format!("{}/{}", size(total - free), size(total)),
                    total - free,
                ),
                (None, Some(total)) => num(size(total), 0),
                _ => text("-"),
            };
            let state = match &n.condition {
                _ if n.state == NodeState::Gone => "gone (not discovered)".to_owned(),
                Some(c) if n.state != NodeState::Ready => format!("{} ({c})", n.state.as_str()),
                _ => n.state.as_str().to_owned(),
            };
            let probe = n
                .last_probe
                .map_or_else(|| text("-"), |t| num(age(now, t), now - t));
            Row {
                key: RowKey::Node {
                    id: n.id.clone(),
                    name: n.name.clone(),
                },
                cells: vec![
                    text(&n.name),
                    text(&n.id),
                    text(&n.address),
                    text(n.zone.as_deref().unwrap_or("-")),
                    text(n.instance_type.as_deref().unwrap_or("-")),
                    text(n.lifecycle.as_str()),
                    toned(state, node_tone(n.state)),
                    probe,
                    memory,
                    num(pods.to_string(), pods as i64),
                ],
            }
        })
        .collect();
    rows.sort_by(|a, b| a.cells[0].text.cmp(&b.cells[0].text));
    rows
}

pub(crate) fn container_rows(data: &Snapshot, desired: &DesiredPods, now: i64) -> Vec<Row> {
    let gone = data.gone();
    // Containers last seen on a node that is lost or gone: what runs there
    // now is unknown.
    let unknown: BTreeSet<&str> = data
        .nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Lost | NodeState::Gone))
        .map(|n| n.id.as_str())
        .collect();
    let mut rows: Vec<Row> = data
        .containers
        .iter()
        // What a node discovery dropped last ran is history.
        .filter(|c| !gone.contains(c.node_id.as_str()))
        .map(|c| {
            let label = format!("{}/{}/{}", c.app, c.service, c.instance);
            // Prism's verdict for this pod's service on this node, if it
            // checks one; else what Docker says.
            let verdict = data
                .health
                .iter()
                .filter(|h| {
                    h.node_id == c.node_id
                        && h.app == c.app
                        && h.service == c.service
                        && h.instance == c.instance
                })
                .max_by_key(|h| h.started_at)
                .map(|h| h.verdict.as_str());
            let health = verdict.or(c.health.as_deref()).unwrap_or("-");
            let lost = unknown.contains(c.node_id.as_str());
            let state = if lost {
                toned("node lost", Tone::Bad)
            } else {
                toned(&c.state, run_tone(&c.state))
            };
            let up = match c.started_at {
                Some(t) if c.state == "running" && !lost => num(age(now, t), now - t),
                _ => num("-", i64::MAX),
            };
            let mut reach: Vec<String> = desired
                .hosts
                .get(&(c.app.clone(), c.service.clone()))
                .cloned()
                .unwrap_or_default();
            if !c.ports.is_empty() {
                // Docker's "0.0.0.0:32768->8080/tcp": the node port and
                // the container's are what matter.
                reach.push(c.ports.replace("0.0.0.0:", "").replace("/tcp", ""));
            }
            Row {
                key: RowKey::Container {
                    node_id: c.node_id.clone(),
                    name: c.name.clone(),
                    label: label.clone(),
                },
                cells: vec![
                    text(label),
                    text(node_name(data, &c.node_id)),
                    text(short_image(&c.image)),
                    state,
                    toned(health, health_tone(health)),
                    up,
                    num(c.restarts.to_string(), i64::from(c.restarts)),
                    text(if reach.is_empty() {
                        "-".to_owned()
                    } else {
                        reach.join(" ")
                    }),
                ],
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.cells[0].text, &a.cells[1].text).cmp(&(&b.cells[0].text, &b.cells[1].text))
    });
    rows
}

pub(crate) fn event_rows(data: &Snapshot, now: i64) -> Vec<Row> {
    data.events
        .iter()
        .map(|e| {
            let tone = match e.level {
                Level::Info => Tone::Plain,
                Level::Warn => Tone::Warn,
                Level::Error => Tone::Bad,
            };
            Row {
                key: RowKey::Event(e.id),
                cells: vec![
                    num(age(now, e.at), now - e.at),
                    toned(e.level.as_str(), tone),
                    text(&e.kind),
                    text(e.node_id.as_deref().map_or("-", |id| node_name(data, id))),
                    toned(&e.message, tone),
                ],
            }
        })
        .collect()
}

/// The image without its registry host (describe shows it whole): the
/// repository and tag are what tell containers apart.
pub(crate) fn short_image(image: &str) -> &str {
    match image.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => image,
    }
}

/// Stable: rows equal in the column keep their order.
pub fn sort(rows: &mut [Row], col: usize, descending: bool) {
    rows.sort_by(|a, b| {
        let (x, y) = (a.cells.get(col), b.cells.get(col));
        let ord = match (x, y) {
            (Some(x), Some(y)) => match (x.order, y.order) {
                (Some(p), Some(q)) => p.cmp(&q),
                _ => x.text.cmp(&y.text),
            },
            _ => std::cmp::Ordering::Equal,
        };
        if descending { ord.reverse() } else { ord }
    });
}

#[cfg(test)]
mod tests {
    use super::super::data::fixtures::{NOW, desired, snapshot};
    use super::*;

    #[test]
    fn narrow_screens_drop_the_least_needed_columns() {
        let all = visible(NODE_COLUMNS, 500);
        assert_eq!(all.len(), NODE_COLUMNS.len());
        let narrow: Vec<&str> = visible(NODE_COLUMNS, 78)
            .iter()
            .map(|&i| NODE_COLUMNS[i].title)
            .collect();
        assert!(
            narrow.contains(&"NAME") && narrow.contains(&"STATE"),
            "{narrow:?}"
        );
        assert!(!narrow.contains(&"ID"), "{narrow:?}");
        let need: u16 = visible(NODE_COLUMNS, 78)
            .iter()
            .map(|&i| NODE_COLUMNS[i].min + 1)
            .sum();
        assert!(need <= 78);
        // Never nothing at all.
        assert_eq!(visible(NODE_COLUMNS, 3).len(), 1);
    }

    #[test]
    fn prism_health_verdicts_win_over_dockers() {
        use crate::store::{HealthRecord, Verdict};
        let mut data = snapshot();
        // Docker says healthy; Prism's own check says unhealthy.
        data.health.push(HealthRecord {
            container_id: "c1".into(),
            node_id: "i-0aaa".into(),
            app: "blog".into(),
            service: "web".into(),
            instance: 0,
            started_at: Some(NOW - 600_000),
            successes: 0,
            failures: 3,
            verdict: Verdict::Unhealthy,
            last_check: Some(NOW - 1_000),
            last_ok: Some(false),
            detail: Some("GET /up: 503".into()),
        });
        let rows = container_rows(&data, &desired(), NOW);
        let web = rows
            .iter()
            .find(|r| r.cells[0].text == "blog/web/0")
            .expect("blog web");
        assert_eq!(
            (web.cells[4].text.as_str(), web.cells[4].tone),
            ("unhealthy", Tone::Bad)
        );
        // Another pod's record does not leak onto this one.
        let queue = &rows[0];
        assert_eq!(queue.cells[4].text, "-");
    }

    #[test]
    fn images_lose_their_registry_host_only() {
        assert_eq!(
            short_image("172.31.250.2:5000/prism/testapp:1"),
            "prism/testapp:1"
        );
        assert_eq!(short_image("ghcr.io/a/b:2"), "a/b:2");
        assert_eq!(short_image("library/redis:7"), "library/redis:7");
        assert_eq!(short_image("redis"), "redis");
    }

    #[test]
    fn rows_carry_state_tones_and_names() {
        let data = snapshot();
        let nodes = node_rows(&data, NOW);
        let node2 = &nodes[1];
        assert_eq!(node2.cells[6].text, "lost (unreachable)");
        assert_eq!(node2.cells[6].tone, Tone::Bad);
        assert_eq!(nodes[0].cells[8].text, "1G/2G");
        assert_eq!(nodes[0].cells[9].text, "1", "blog is placed there");
        let containers = container_rows(&data, &desired(), NOW);
        let shop = containers
            .iter()
            .find(|r| r.cells[0].text == "shop/web/0")
            .expect("shop");
        assert_eq!(shop.cells[1].text, "node3");
        assert_eq!(shop.cells[4].tone, Tone::Bad);
        let blog = &containers[1];
        assert_eq!(blog.cells[0].text, "blog/web/0");
        assert_eq!(blog.cells[7].text, "blog.example.com 8080->31000");
        let wiki = containers.last().expect("wiki");
        assert_eq!(wiki.cells[5].text, "-", "no uptime when not running");
        let mut docker_ports = data.clone();
        docker_ports.containers[0].ports = "0.0.0.0:32768->8080/tcp".into();
        let rows = container_rows(&docker_ports, &desired(), NOW);
        assert_eq!(rows[1].cells[7].text, "blog.example.com 32768->8080");
        let mut lost_node = data.clone();
        lost_node.nodes[2].state = NodeState::Lost;
        let rows = container_rows(&lost_node, &desired(), NOW);
        let shop = rows
            .iter()
            .find(|r| r.cells[0].text == "shop/web/0")
            .expect("shop");
        assert_eq!(
            (shop.cells[3].text.as_str(), shop.cells[3].tone),
            ("node lost", Tone::Bad)
        );
        assert_eq!(shop.cells[5].text, "-");
        let events = event_rows(&data, NOW);
        assert_eq!(events[0].cells[3].text, "node2");
        assert_eq!(events[0].cells[1].tone, Tone::Warn);
    }
}
