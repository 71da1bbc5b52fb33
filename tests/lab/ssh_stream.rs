//! Streaming exec against the lab's real sshd and dockerd: `docker logs -f`
//! arrives line by line, dropping the stream stops the remote command, and
//! a reader that stalls loses its stream without holding up the node.

use crate::common;

use std::time::{Duration, Instant};

use common::Lab;
use common::prism_ssh::{argv, known_hosts_pool, limits, run, target};
use prism::ssh::{Chunk, ExecStream, Pool, SshError, StreamLimits, Target};

/// A name no one else uses, of characters safe in a shell word.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Removes the container when dropped, so a failing test cleans up too.
struct Container<'a> {
    lab: &'a Lab,
    address: String,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .ssh(&self.address, &format!("docker rm -f {}", self.name));
    }
}

/// Whether a process whose command line matches `pattern` runs on the node.
/// The pattern's first letter is bracketed, so it never matches the shell
/// that runs pgrep itself.
async fn running(pool: &Pool, node: &Target, pattern: &str) -> bool {
    let mut chars = pattern.chars();
    let first = chars.next().expect("a pattern");
    let regex = format!("[{first}]{}", chars.as_str());
    let out = run(pool, node, &["pgrep", "-f", &regex]).await;
    assert!(
        matches!(out.status, Some(0 | 1)),
        "pgrep: {}",
        out.stderr_text()
    );
    out.status == Some(0)
}

/// Waits up to `limit` for no process matching `pattern` to be left.
async fn gone(pool: &Pool, node: &Target, pattern: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !running(pool, node, pattern).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Everything the stream yields until it ends.
async fn collect(mut stream: ExecStream) -> Vec<Result<Chunk, SshError>> {
    let mut all = Vec::new();
    while let Some(item) = stream.next().await {
        all.push(item);
    }
    all
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn docker_logs_follow_arrives_line_by_line_and_stops_when_dropped() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let lab_node = lab.nodes.last().expect("a node");
    let node = target(lab_node);
    let name = unique("prism-stream-test");
    let container = Container {
        lab: &lab,
        address: lab_node.address.clone(),
        name: name.clone(),
    };
    let started = pool
        .exec(
            &node,
            &argv(&[
                "docker",
                "run",
                "-d",
                "--init",
                "--name",
                &name,
                "--entrypoint",
                "sh",
                &lab.testapp_image,
                "-c",
                "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done",
            ]),
            None,
            limits(120),
        )
        .await
        .expect("docker run");
    assert!(started.success(), "docker run: {}", started.stderr_text());

    let follow = format!("docker logs -f {name}");
    let opened = Instant::now();
    let mut stream = pool
        .exec_stream(
            &node,
            &argv(&["docker", "logs", "-f", &name]),
            StreamLimits::default(),
        )
        .await
        .expect("start docker logs -f");
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while text.lines().count() < 15 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a chunk within 10s")
            .expect("the stream goes on")
            .expect("no error");
        match chunk {
            Chunk::Stdout(data) => {
                text.push_str(&String::from_utf8_lossy(&data));
                arrivals.push(opened.elapsed());
            }
            other => panic!("unexpected {other:?} while following; so far: {text}"),
        }
    }
    assert!(
        arrivals[0] < Duration::from_secs(5),
        "the first line took {:?}",
        arrivals[0]
    );
    // Lines came over time, as the container wrote them, not in one batch.
    let span = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(
        arrivals.len() >= 5 && span >= Duration::from_secs(1),
        "{} chunks over {span:?}",
        arrivals.len()
    );
    let numbers: Vec<u32> = text
        .lines()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?}"))
        })
        .collect();
    assert_eq!(numbers, (0..numbers.len() as u32).collect::<Vec<_>>());

    assert!(
        running(&pool, &node, &follow).await,
        "docker logs -f is not running on the node while followed"
    );
    drop(stream);
    assert!(
        gone(&pool, &node, &follow, Duration::from_secs(5)).await,
        "docker logs -f still runs on the node after the stream was dropped"
    );
    drop(container);
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_finished_command_ends_with_its_exit_status() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let node = target(&lab.nodes[0]);
    let stream = pool
        .exec_stream(
            &node,
            &argv(&["sh", "-c", "echo out; sleep 0.2; echo err >&2; exit 3"]),
            StreamLimits::default(),
        )
        .await
        .expect("start");
    let all: Vec<Chunk> = collect(stream)
        .await
        .into_iter()
        .map(|c| c.expect("no error"))
        .collect();
    assert_eq!(
        all,
        vec![
            Chunk::Stdout("out\n".into()),
            Chunk::Stderr("err\n".into()),
            Chunk::Exit(Some(3)),
        ]
    );
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_stalled_reader_loses_the_stream_and_the_node_stays_usable() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let node = target(&lab.nodes[0]);
    let marker = unique("prism-stall");
    let limits_ = StreamLimits {
        buffer: 4,
        stall_timeout: Duration::from_secs(1),
        ..StreamLimits::default()
    };
    // Endless output as fast as the connection takes it.
    let stream = pool
        .exec_stream(&node, &argv(&["yes", &marker]), limits_)
        .await
        .expect("start");
    let pattern = format!("yes {marker}");
    // Not reading: the stream stalls, and is given up after a second;
    // meanwhile other commands on the node's connection still get through.
    let started = Instant::now();
    let out = run(&pool, &node, &["echo", "still here"]).await;
    assert_eq!(out.stdout_text(), "still here\n");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a command waited {:?} behind the stalled stream",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let all = collect(stream).await;
    // Bounded: what was queued for the reader, then why it ended.
    assert!(all.len() <= limits_.buffer + 1, "{} items", all.len());
    let (last, data) = all.split_last().expect("items");
    assert!(
        matches!(last, Err(SshError::StreamStalled { .. })),
        "{last:?}"
    );
    // What did arrive is the command's output, in order (chunks split
    // lines anywhere).
    let mut text = Vec::new();
    for item in data {
        match item {
            Ok(Chunk::Stdout(d)) => text.extend_from_slice(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&text);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let partial = lines.pop().unwrap_or_default();
    assert!(!lines.is_empty() && lines.iter().all(|l| *l == marker));
    assert!(marker.starts_with(partial));
    assert!(
        gone(&pool, &node, &pattern, Duration::from_secs(5)).await,
        "yes still runs on the node after its stream was given up"
    );
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn streams_have_their_own_few_slots() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let node = target(&lab.nodes[0]);
    // Quiet commands, which never write (so nothing but the watcher can
    // stop them), each with a child of its own that must stop too. The
    // sleep's odd length marks it as this test's.
    let marker = format!("sleep 30.{}", std::process::id());
    let script = format!("{marker}; true");
    let mut open = Vec::new();
    let err = loop {
        match pool
            .exec_stream(
                &node,
                &argv(&["sh", "-c", &script]),
                StreamLimits::default(),
            )
            .await
        {
            Ok(stream) => open.push(stream),
            Err(e) => break e,
        }
        assert!(open.len() <= 10, "no limit on streams");
    };
    assert!(
        matches!(err, SshError::TooManyStreams { limit, .. } if limit == open.len()),
        "{err:?}"
    );
    // Short commands still run while every stream slot is taken.
    let out = run(&pool, &node, &["echo", "ok"]).await;
    assert_eq!(out.stdout_text(), "ok\n");
    assert!(running(&pool, &node, &marker).await);
    drop(open);
    assert!(
        gone(&pool, &node, &marker, Duration::from_secs(5)).await,
        "dropped streams left their commands running"
    );
}
