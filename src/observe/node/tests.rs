use super::*;

// The script's output on prism-lab-node1, captured with `docker exec`:
// as root; with DOCKER_HOST at a missing socket; as `nobody`; with a PATH
// holding everything but docker.
const RUNNING: &str = include_str!("../fixtures/facts_running.txt");
const DAEMON_DOWN: &str = include_str!("../fixtures/facts_daemon_down.txt");
const DENIED: &str = include_str!("../fixtures/facts_permission_denied.txt");
const MISSING: &str = include_str!("../fixtures/facts_docker_missing.txt");

fn err(text: &str) -> ParseError {
    parse_node_facts(text).unwrap_err()
}

#[test]
fn argv_is_a_constant_script() {
    let argv = node_facts_argv();
    assert_eq!(argv.len(), 3);
    assert_eq!((argv[0].as_str(), argv[1].as_str()), ("sh", "-c"));
    assert_eq!(argv[2], FACTS_SCRIPT);
    assert!(FACTS_SCRIPT.contains(r#"docker version --format "{{.Server.Version}}""#));
    // Nothing is formatted into it, and it reads no arguments.
    assert!(!FACTS_SCRIPT.contains("$1") && !FACTS_SCRIPT.contains("$@"));
    // It survives the SSH layer's quoting (shlex) intact, newlines and all.
    let joined = shlex::try_join(argv.iter().map(String::as_str)).unwrap();
    assert_eq!(shlex::split(&joined).unwrap(), argv);
}

#[test]
fn docker_running() {
    assert_eq!(
        parse_node_facts(RUNNING),
        Ok(NodeFacts {
            mem_total: 24_684_096 * 1024,
            mem_available: 23_745_916 * 1024,
            cpus: 2,
            disk_path: "/var/lib/docker".into(),
            disk_free: 2_092_688 * 1024,
            docker: DockerStatus::Running {
                version: "20.10.24+dfsg1".into()
            },
        })
    );
}

#[test]
fn blank_lines_are_ignored() {
    let spaced = RUNNING
        .replace("@@ nproc\n", "@@ nproc\n\n")
        .replace("@@ end\n", "@@ end\n\n");
    assert_eq!(parse_node_facts(&spaced), parse_node_facts(RUNNING));
}

#[test]
fn docker_missing() {
    let facts = parse_node_facts(MISSING).unwrap();
    assert_eq!(facts.docker, DockerStatus::Missing);
    assert_eq!(facts.mem_available, 23_761_076 * 1024);
}

#[test]
fn daemon_down() {
    assert_eq!(
        parse_node_facts(DAEMON_DOWN).unwrap().docker,
        DockerStatus::DaemonDown {
            message: "Cannot connect to the Docker daemon at unix:///nonexistent.sock. Is the docker daemon running?"
                .into()
        }
    );
}

#[test]
fn permission_denied() {
    let DockerStatus::PermissionDenied { message } = parse_node_facts(DENIED).unwrap().docker
    else {
        panic!("not PermissionDenied");
    };
    assert!(
        message.starts_with("permission denied while trying to connect"),
        "{message}"
    );
}

#[test]
fn docker_exit_without_output() {
    let text = RUNNING.replace("@@ docker exit 0\n20.10.24+dfsg1\n", "@@ docker exit 137\n");
    assert_eq!(
        parse_node_facts(&text).unwrap().docker,
        DockerStatus::DaemonDown {
            message: "docker version exited with status 137".into()
        }
    );
}

#[test]
fn warnings_before_the_version() {
    let text = RUNNING.replace(
        "@@ docker exit 0\n",
        "@@ docker exit 0\nWARNING: Error loading config file: /root/.docker/config.json\n",
    );
    assert_eq!(
        parse_node_facts(&text).unwrap().docker,
        DockerStatus::Running {
            version: "20.10.24+dfsg1".into()
        }
    );
}

#[test]
fn df_with_spaces_and_fallback_path() {
    let text = RUNNING.replace("@@ df /var/lib/docker", "@@ df /").replace(
        "tmpfs              2097152  4464   2092688       1% /var/lib/docker",
        "/dev/disk by label 41152736 9 30000 100% /mnt/my disk",
    );
    let facts = parse_node_facts(&text).unwrap();
    assert_eq!(facts.disk_path, "/");
    assert_eq!(facts.disk_free, 30_000 * 1024);
}

#[test]
fn cut_short() {
    let cut = RUNNING.replace("@@ end\n", "");
    let e = err(&cut);
    assert_eq!(e.line(), None);
    assert_eq!(
        e.to_string(),
        "output of `node facts script`: output ends before `@@ end` (cut short?)"
    );
    // Cut in the middle of a section: still no end.
    let half = &RUNNING[..RUNNING.find("@@ df").unwrap()];
    assert!(err(half).to_string().contains("ends before `@@ end`"));
}

#[test]
fn empty_or_foreign_output() {
    assert_eq!(
        err("").to_string(),
        "output of `node facts script`: no output"
    );
    let e = err("sh: 1: grep: not found\n");
    assert_eq!(e.line(), Some(1));
    assert!(e.to_string().contains("expected `@@ prism-facts 1`"), "{e}");
    let newer = RUNNING.replace("@@ prism-facts 1", "@@ prism-facts 2");
    assert_eq!(err(&newer).line(), Some(1));
}

#[test]
fn garbage_lines_are_located() {
    // (mangled text, line at fault, what the message says)
    let cases = [
        (
            "MemTotal:       24684096 kB",
            "MemTotal:       lots",
            3,
            "MemTotal: expected a size in kB",
        ),
        (
            "MemTotal:       24684096 kB",
            "MemTotal 24684096 kB",
            3,
            "expected `Key: N kB`",
        ),
        (
            "MemAvailable:   23745916 kB",
            "MemAvailable:   23745916 MB",
            4,
            "MemAvailable: expected a size",
        ),
        ("@@ nproc\n2\n", "@@ nproc\n0\n", 6, "expected a CPU count"),
        (
            "@@ nproc\n2\n",
            "@@ nproc\ntwo\n",
            6,
            "expected a CPU count",
        ),
        (
            "@@ nproc\n2\n",
            "@@ nproc\n2\n3\n",
            7,
            "expected one CPU count",
        ),
        ("@@ nproc\n2\n", "@@ nproc\n", 5, "nproc printed nothing"),
        (
            "Filesystem     1024-blocks",
            "Dateisystem    1024-Blöcke",
            8,
            "expected df's header",
        ),
        (
            "2092688       1%",
            "2092688       1 ",
            9,
            "expected a `df -Pk` row",
        ),
        (
            "2097152  4464   2092688",
            "2097152  4464   -2092688",
            9,
            "expected a `df -Pk` row",
        ),
        ("@@ df /var/lib/docker", "@@ df", 7, "`@@ df` names no path"),
        (
            "@@ docker exit 0",
            "@@ docker exited 0",
            10,
            "expected `@@ docker exit N` or `@@ docker missing`",
        ),
        (
            "20.10.24+dfsg1",
            "Client: Docker Engine",
            10,
            "not a version",
        ),
        ("@@ nproc", "@@ cpus", 5, "unknown section `@@ cpus`"),
        (
            "@@ end\n",
            "@@ end\nlate\n",
            13,
            "output continues after `@@ end`",
        ),
        (
            "@@ meminfo\n",
            "oops\n@@ meminfo\n",
            2,
            "text before the first section",
        ),
        (
            "@@ df /var/lib/docker",
            "@@ nproc",
            7,
            "section `@@ nproc` appears twice",
        ),
    ];
    for (from, to, line, want) in cases {
        assert!(RUNNING.contains(from), "fixture lacks {from:?}");
        let e = err(&RUNNING.replacen(from, to, 1));
        assert_eq!(e.probe(), Probe::NodeFacts);
        assert_eq!(e.line(), Some(line), "{to:?}: {e}");
        assert!(e.to_string().contains(want), "{to:?}: want {want:?} in {e}");
    }
}

#[test]
fn missing_sections_and_fields() {
    let no_available = RUNNING.replace("MemAvailable:   23745916 kB\n", "");
    let e = err(&no_available);
    assert_eq!(e.line(), Some(2));
    assert!(e.to_string().contains("MemAvailable is missing"), "{e}");

    let no_docker = RUNNING.replace("@@ docker exit 0\n20.10.24+dfsg1\n", "");
    assert!(
        err(&no_docker)
            .to_string()
            .contains("no `@@ docker` section")
    );

    let overflow = RUNNING.replace("24684096 kB", "99999999999999999999 kB");
    assert!(err(&overflow).to_string().contains("expected a size in kB"));
}
