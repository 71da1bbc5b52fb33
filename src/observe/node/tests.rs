use super::*;

// The script's output captured with `docker exec`: as root on
// prism-lab-node1; on prism-lab-node4 with its dockerd stopped; as `nobody`
// on node1; in a container of the lab's base image with docker removed.
const RUNNING: &str = include_str!("../fixtures/facts_running.txt");
const DAEMON_DOWN: &str = include_str!("../fixtures/facts_daemon_down.txt");
const DENIED: &str = include_str!("../fixtures/facts_permission_denied.txt");
const MISSING: &str = include_str!("../fixtures/facts_docker_missing.txt");

fn err(text: &str) -> ParseError {
    parse_node_facts(text).unwrap_err()
}

fn setup(text: &str) -> DockerSetup {
    parse_node_facts(text).unwrap().docker
}

#[test]
fn argv_is_a_constant_script() {
    let argv = node_facts_argv(None);
    assert_eq!(argv.len(), 4);
    assert_eq!((argv[0].as_str(), argv[1].as_str()), ("sh", "-c"));
    assert_eq!(argv[2], FACTS_SCRIPT);
    assert_eq!(argv[3], "prism-facts");
    // Nothing is formatted into it: the metadata URL is its one argument.
    let url = "http://169.254.169.254/x'; rm -rf / #";
    let argv = node_facts_argv(Some(url));
    assert_eq!(argv[2], FACTS_SCRIPT);
    assert_eq!(argv[4], url);
    // It reads its argument once, into a variable that is only ever
    // expanded in double quotes.
    assert_eq!(FACTS_SCRIPT.matches("${1").count(), 1);
    assert!(FACTS_SCRIPT.contains("metadata=${1:-}"));
    assert!(!FACTS_SCRIPT.contains(" $metadata"));
    // It survives the SSH layer's quoting (shlex) intact, newlines and all.
    let joined = shlex::try_join(argv.iter().map(String::as_str)).unwrap();
    assert_eq!(shlex::split(&joined).unwrap(), argv);
}

/// RUNNING with metadata sections before `@@ end`.
fn with_metadata(sections: &str) -> String {
    RUNNING.replace("@@ end", &format!("{sections}@@ end"))
}

#[test]
fn no_notice_without_metadata_or_with_404() {
    assert_eq!(parse_node_facts(RUNNING).unwrap().notice, None);
    let not_found = "<HTML><HEAD><TITLE>404 Not Found</TITLE></HEAD>\n<BODY><H1>404 Not Found</H1>\n</BODY></HTML>\n";
    let text = with_metadata(&format!(
        "@@ spot-action\n{not_found}404\n@@ rebalance\n{not_found}404\n"
    ));
    assert_eq!(parse_node_facts(&text).unwrap().notice, None);
    // Nothing answered (000), or curl is missing: no notice either.
    let text = with_metadata("@@ spot-action\n\n000\n@@ rebalance\n\n000\n");
    assert_eq!(parse_node_facts(&text).unwrap().notice, None);
    let text = with_metadata("@@ metadata-unread curl is missing\n");
    assert_eq!(parse_node_facts(&text).unwrap().notice, None);
}

#[test]
fn an_instance_action_is_an_interruption_notice() {
    let text = with_metadata(
        "@@ spot-action\n{\"action\": \"terminate\", \"time\": \"2026-11-22T02:30:00Z\"}\n200\n\
         @@ rebalance\n{\"noticeTime\": \"2026-11-22T02:20:00Z\"}\n200\n",
    );
    assert_eq!(
        parse_node_facts(&text).unwrap().notice,
        Some(Notice::Interruption {
            action: "terminate".into(),
            time: "2026-11-22T02:30:00Z".into()
        })
    );
    let text = with_metadata(
        "@@ spot-action\n\n404\n@@ rebalance\n{\"noticeTime\": \"2026-11-22T02:20:00Z\"}\n200\n",
    );
    let notice = parse_node_facts(&text).unwrap().notice.unwrap();
    assert_eq!(
        notice.to_string(),
        "rebalance recommendation since 2026-11-22T02:20:00Z"
    );
    // A 200 that does not parse still drains.
    let text = with_metadata("@@ spot-action\n{garbled\n200\n");
    assert!(matches!(
        parse_node_facts(&text).unwrap().notice,
        Some(Notice::Interruption { .. })
    ));
}

#[test]
fn a_metadata_section_without_a_status_is_an_error() {
    let e = err(&with_metadata("@@ spot-action\n"));
    assert!(e.to_string().contains("has no HTTP status"), "{e}");
    let e = err(&with_metadata("@@ spot-action\n{}\nok\n"));
    assert!(e.to_string().contains("expected an HTTP status"), "{e}");
}

#[test]
fn the_script_runs_no_docker_command_and_checks_the_api_socket() {
    // `docker` appears only where it is looked for and where it is reported.
    let runs_docker = FACTS_SCRIPT
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            l.replace("command -v docker ", "")
                .replace("@@ docker ", "")
        })
        .any(|l| l.contains("docker "));
    assert!(!runs_docker, "{FACTS_SCRIPT}");
    assert!(FACTS_SCRIPT.contains(&format!("s={}\n", crate::ssh::DOCKER_SOCKET)));
}

#[test]
fn docker_running() {
    assert_eq!(
        parse_node_facts(RUNNING),
        Ok(NodeFacts {
            mem_total: 24_684_096 * 1024,
            mem_available: 23_084_608 * 1024,
            cpus: 2,
            disk_path: "/var/lib/docker".into(),
            disk_free: 2_093_404 * 1024,
            docker: DockerSetup {
                cli: true,
                socket: SocketAccess::Usable
            },
            notice: None,
            volume_mounts: Default::default(),
            mesh: None,
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
    assert_eq!(
        facts.docker,
        DockerSetup {
            cli: false,
            socket: SocketAccess::Missing
        }
    );
    // No /var/lib/docker: the root file system is measured instead.
    assert_eq!(facts.disk_path, "/");
    assert_eq!(facts.disk_free, 47_621_432 * 1024);
}

#[test]
fn daemon_down() {
    assert_eq!(
        setup(DAEMON_DOWN),
        DockerSetup {
            cli: true,
            socket: SocketAccess::Missing
        }
    );
}

#[test]
fn permission_denied() {
    assert_eq!(
        setup(DENIED),
        DockerSetup {
            cli: true,
            socket: SocketAccess::Denied
        }
    );
}

#[test]
fn df_with_spaces_and_fallback_path() {
    let text = RUNNING.replace("@@ df /var/lib/docker", "@@ df /").replace(
        "tmpfs              2097152  3748   2093404       1% /var/lib/docker",
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
    assert!(e.to_string().contains("expected `@@ prism-facts 3`"), "{e}");
    // The first version's output (it ran `docker version`) is refused.
    let older = RUNNING.replace("@@ prism-facts 3", "@@ prism-facts 2");
    assert_eq!(err(&older).line(), Some(1));
}

#[test]
fn durable_volumes_mounted_are_read_by_name() {
    let text = RUNNING.replace(
        "@@ mounts\n",
        "@@ mounts\n/dev/nvme1n1 /var/lib/prism/volumes/prism.hobby.db.0.pgdata\n\
         /dev/sdg /var/lib/prism/volumes/deeper/down\n",
    );
    let facts = parse_node_facts(&text).unwrap();
    assert_eq!(
        facts.volume_mounts,
        std::collections::BTreeMap::from([(
            "prism.hobby.db.0.pgdata".to_owned(),
            "/dev/nvme1n1".to_owned()
        )])
    );
    assert!(parse_node_facts(RUNNING).unwrap().volume_mounts.is_empty());
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
            "MemAvailable:   23084608 kB",
            "MemAvailable:   23084608 MB",
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
            "2093404       1%",
            "2093404       1 ",
            9,
            "expected a `df -Pk` row",
        ),
        (
            "2097152  3748   2093404",
            "2097152  3748   -2093404",
            9,
            "expected a `df -Pk` row",
        ),
        ("@@ df /var/lib/docker", "@@ df", 7, "`@@ df` names no path"),
        (
            "@@ docker cli=present socket=usable",
            "@@ docker exit 0",
            10,
            "expected `@@ docker cli=present|missing socket=usable|denied|missing`",
        ),
        (
            "socket=usable",
            "socket=maybe",
            10,
            "found `@@ docker cli=present socket=maybe`",
        ),
        (
            "cli=present socket=usable",
            "socket=usable cli=present",
            10,
            "expected `@@ docker cli=",
        ),
        (
            "socket=usable",
            "socket=usable extra",
            10,
            "expected `@@ docker cli=",
        ),
        (
            "socket=usable\n",
            "socket=usable\n20.10.24+dfsg1\n",
            11,
            "unexpected text under `@@ docker`: \"20.10.24+dfsg1\"",
        ),
        ("@@ nproc", "@@ cpus", 5, "unknown section `@@ cpus`"),
        (
            "@@ end\n",
            "@@ end\nlate\n",
            13,
            "output continues after `@@ end`",
        ),
        (
            "@@ mounts\n",
            "@@ mounts\n/dev/sdf\n",
            12,
            "expected `DEVICE DIR`",
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
    let no_available = RUNNING.replace("MemAvailable:   23084608 kB\n", "");
    let e = err(&no_available);
    assert_eq!(e.line(), Some(2));
    assert!(e.to_string().contains("MemAvailable is missing"), "{e}");

    let no_docker = RUNNING.replace("@@ docker cli=present socket=usable\n", "");
    assert!(
        err(&no_docker)
            .to_string()
            .contains("no `@@ docker` section")
    );

    let overflow = RUNNING.replace("24684096 kB", "99999999999999999999 kB");
    assert!(err(&overflow).to_string().contains("expected a size in kB"));
}

#[test]
fn the_mesh_section_says_what_the_node_holds_and_tolerates_what_it_cannot_read() {
    let with = |section: &str| RUNNING.replace("@@ end", &format!("{section}@@ end"));
    let text = with(
        "@@ mesh\npublic-key gd8ZmNhg3Hz6Q0HbHh7gHq6yq3sCq8N0xvKZ5Yx6y1Q=\nsubnet 10.210.3.0/24\n\
         interface prism0\napplied 0123456789ab\nlink up\nresolver up\nnames 9f86d081\nfuture thing\n",
    );
    let m = parse_node_facts(&text)
        .unwrap()
        .mesh
        .expect("a mesh section");
    assert_eq!(
        m,
        MeshFacts {
            public_key: Some("gd8ZmNhg3Hz6Q0HbHh7gHq6yq3sCq8N0xvKZ5Yx6y1Q=".into()),
            subnet: Some("10.210.3.0/24".parse().unwrap()),
            applied: Some("0123456789ab".into()),
            link: true,
            resolver: true,
            names: Some("9f86d081".into()),
        }
    );
    // A half-written state, or a key that is not one: nothing is taken on
    // faith (a key is written into every other node's WireGuard config).
    let m = parse_node_facts(&with(
        "@@ mesh\nsubnet nonsense\npublic-key\npublic-key AAAA AllowedIPs = 0.0.0.0/0\n",
    ))
    .unwrap()
    .mesh
    .unwrap();
    assert_eq!(m, MeshFacts::default());
    assert_eq!(parse_node_facts(RUNNING).unwrap().mesh, None);
}
