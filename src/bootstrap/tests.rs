use super::*;

// Real output of the script; fixtures/README.md says where each came from.
const INSTALLED: &str = include_str!("fixtures/installed.txt");
const PRESENT: &str = include_str!("fixtures/present.txt");
const STARTED: &str = include_str!("fixtures/started.txt");
const NO_ROOT: &str = include_str!("fixtures/no_root.txt");
const UNSUPPORTED: &str = include_str!("fixtures/unsupported_os.txt");
const INSTALL_FAILED: &str = include_str!("fixtures/install_failed.txt");
const START_FAILED: &str = include_str!("fixtures/start_failed.txt");

fn malformed(text: &str) -> (Option<usize>, String) {
    match parse_output(text) {
        Err(Failure::Malformed { line, detail }) => (line, detail),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn argv_is_a_constant_script_that_survives_quoting() {
    let argv = install_argv();
    assert_eq!(argv.len(), 3);
    assert_eq!((argv[0].as_str(), argv[1].as_str()), ("sh", "-c"));
    assert_eq!(argv[2], INSTALL_SCRIPT);
    let joined = shlex::try_join(argv.iter().map(String::as_str)).unwrap();
    assert_eq!(shlex::split(&joined).unwrap(), argv);
}

#[test]
fn every_marker_the_script_prints_is_one_the_parser_knows() {
    let known = [
        "prism-bootstrap",
        "os",
        "warn",
        "install",
        "start",
        "group-added",
        "result",
        "end",
    ];
    let results = [
        "present",
        "started",
        "installed",
        "no-root",
        "unsupported-os",
        "install-failed",
        "start-failed",
    ];
    let mut seen = 0;
    for line in INSTALL_SCRIPT.lines() {
        let Some(at) = line.find("echo \"@@ ") else {
            continue;
        };
        seen += 1;
        let mut words = line[at + "echo \"@@ ".len()..].split([' ', '"']);
        let marker = words.next().unwrap_or_default();
        assert!(known.contains(&marker), "unknown marker in: {line}");
        if marker == "result" {
            let kind = words.next().unwrap_or_default();
            assert!(results.contains(&kind), "unknown result in: {line}");
        }
    }
    assert!(seen >= 12, "only {seen} markers found in the script");
}

#[test]
fn installed_from_the_apt_cache_with_a_failed_update() {
    let outcome = parse_output(INSTALLED).unwrap();
    assert_eq!(
        outcome.action,
        Action::Installed {
            tool: "apt-get".into(),
            package: "docker.io".into(),
            method: StartMethod::Dockerd,
        }
    );
    assert_eq!(outcome.version, "20.10.24+dfsg1");
    assert_eq!(outcome.os.as_deref(), Some("debian 12"));
    assert_eq!(outcome.group_added, None);
    let messages: Vec<&str> = outcome
        .warnings
        .iter()
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "apt-get update failed; installing from the package lists on the node",
            "the docker service did not start; starting dockerd directly",
        ]
    );
    assert_eq!(
        outcome.warnings[0].detail.last().map(String::as_str),
        Some(
            "W: Some index files failed to download. They have been ignored, or old ones used instead."
        )
    );
    // Detail keeps its own indentation after the "| " prefix.
    assert!(
        outcome.warnings[1]
            .detail
            .iter()
            .any(|l| l.starts_with("       dmesg(1)")),
        "{:?}",
        outcome.warnings[1].detail
    );
    assert_eq!(
        outcome.summary(),
        "installed docker.io with apt-get on debian 12 and started Docker 20.10.24+dfsg1 (dockerd); \
         warning: apt-get update failed; installing from the package lists on the node; \
         warning: the docker service did not start; starting dockerd directly"
    );
}

#[test]
fn present_changes_nothing() {
    let outcome = parse_output(PRESENT).unwrap();
    assert_eq!(
        outcome,
        Outcome {
            action: Action::AlreadyPresent,
            version: "20.10.24+dfsg1".into(),
            os: None,
            warnings: vec![],
            group_added: None,
        }
    );
    assert_eq!(outcome.summary(), "Docker 20.10.24+dfsg1 already running");
}

#[test]
fn installed_but_stopped_is_started() {
    let outcome = parse_output(STARTED).unwrap();
    assert_eq!(
        outcome.action,
        Action::Started {
            method: StartMethod::Dockerd
        }
    );
    assert_eq!(outcome.os, None);
    assert_eq!(outcome.warnings.len(), 1);
    assert!(
        outcome
            .summary()
            .starts_with("started Docker 20.10.24+dfsg1 (dockerd); warning: ")
    );
}

#[test]
fn systemd_and_a_user_added_to_the_docker_group() {
    let text = INSTALLED.replace(
        "@@ start dockerd\n",
        "@@ start systemd\n@@ group-added admin\n",
    );
    let outcome = parse_output(&text).unwrap();
    assert_eq!(outcome.group_added.as_deref(), Some("admin"));
    let Action::Installed { method, .. } = outcome.action else {
        panic!("not Installed: {:?}", outcome.action);
    };
    assert_eq!(method, StartMethod::Systemd);
    assert!(
        outcome
            .summary()
            .contains("(systemd); added admin to the docker group"),
        "{}",
        outcome.summary()
    );
}

#[test]
fn no_root() {
    let failure = parse_output(NO_ROOT).unwrap_err();
    assert_eq!(
        failure,
        Failure::NoRoot {
            user: "plain".into()
        }
    );
    assert_eq!(failure.condition(), "bootstrap-no-root");
    assert_eq!(
        failure.to_string(),
        "plain is not root and `sudo -n` is refused: cannot install Docker"
    );
}

#[test]
fn unsupported_os_is_named() {
    let failure = parse_output(UNSUPPORTED).unwrap_err();
    assert_eq!(
        failure,
        Failure::UnsupportedOs {
            os: "Alpine Linux v3.19".into()
        }
    );
    assert!(
        failure
            .to_string()
            .starts_with("cannot install Docker on Alpine Linux v3.19: ")
    );
}

#[test]
fn install_failed_keeps_the_tail_of_its_output() {
    let failure = parse_output(INSTALL_FAILED).unwrap_err();
    let Failure::InstallFailed {
        tool,
        status,
        output,
    } = &failure
    else {
        panic!("not InstallFailed: {failure:?}");
    };
    assert_eq!((tool.as_str(), *status), ("apt-get", 100));
    assert_eq!(output.len(), 25);
    assert_eq!(
        output.last().map(String::as_str),
        Some(
            "E: Unable to fetch some archives, maybe run apt-get update or try with --fix-missing?"
        )
    );
    let message = failure.to_string();
    assert!(
        message.starts_with("`apt-get install` exited 100: E: Failed to fetch"),
        "{message}"
    );
    assert!(message.ends_with("--fix-missing?"), "{message}");
}

#[test]
fn start_failed_keeps_the_daemon_log() {
    let failure = parse_output(START_FAILED).unwrap_err();
    let Failure::StartFailed { method, output } = &failure else {
        panic!("not StartFailed: {failure:?}");
    };
    assert_eq!(*method, StartMethod::Dockerd);
    assert!(
        output
            .iter()
            .any(|l| l.starts_with("failed to start daemon:")),
        "{output:?}"
    );
    assert!(
        failure.to_string().contains("failed to start daemon:"),
        "{failure}"
    );
    assert_eq!(failure.condition(), "bootstrap-start-failed");
}

#[test]
fn errors_name_the_node() {
    let err = BootstrapError::Failed {
        node: "i-0abc".into(),
        failure: parse_output(NO_ROOT).unwrap_err(),
    };
    assert!(
        err.to_string()
            .starts_with("i-0abc: Docker bootstrap: plain is not root"),
        "{err}"
    );
    assert_eq!(err.condition(), "bootstrap-no-root");
}

#[test]
fn output_cut_short_or_garbled_is_malformed() {
    assert_eq!(malformed("").1, "no output");
    let (line, detail) = malformed("bash: sh: not found\n");
    assert_eq!(line, Some(1));
    assert!(
        detail.contains("expected `@@ prism-bootstrap 1`"),
        "{detail}"
    );

    let cut = INSTALLED.replace("@@ end\n", "");
    assert!(malformed(&cut).1.contains("before `@@ end`"));
    let cut = INSTALLED.split("@@ start").next().unwrap().to_owned() + "@@ end\n";
    assert_eq!(malformed(&cut).1, "no `@@ result`");

    let (line, detail) = malformed(&PRESENT.replace("@@ result", "@@ verdict"));
    assert_eq!(line, Some(2));
    assert!(detail.contains("unknown marker"), "{detail}");
    let (line, detail) = malformed(&PRESENT.replace("@@ result present", "@@ result finished"));
    assert_eq!(line, Some(2));
    assert!(detail.contains("unknown result"), "{detail}");
    let (line, detail) = malformed(&PRESENT.replace("@@ end", "@@ end\nmore"));
    assert_eq!(line, Some(4));
    assert!(detail.contains("after `@@ end`"), "{detail}");
    let (line, detail) = malformed(&PRESENT.replace("@@ result", "stray text\n@@ result"));
    assert_eq!(line, Some(2));
    assert!(detail.contains("unexpected line"), "{detail}");
    let (_, detail) =
        malformed(&PRESENT.replace("@@ result present 20.10.24+dfsg1", "@@ result present"));
    assert!(detail.contains("needs one version"), "{detail}");
    let (_, detail) = malformed(&INSTALLED.replace("@@ start dockerd\n", ""));
    assert!(detail.contains("without `@@ start`"), "{detail}");
    let (_, detail) = malformed(&INSTALLED.replace("@@ install apt-get docker.io\n", ""));
    assert!(detail.contains("without `@@ install`"), "{detail}");
    let (_, detail) = malformed(&INSTALLED.replace("@@ start dockerd", "@@ start magic"));
    assert!(detail.contains("unknown start method"), "{detail}");
    let (_, detail) = malformed(&INSTALL_FAILED.replace("apt-get 100", "apt-get lots"));
    assert!(detail.contains("install-failed TOOL STATUS"), "{detail}");
    let (line, detail) = malformed(&NO_ROOT.replace("@@ end", "@@ warn late\n@@ end"));
    assert_eq!(line, Some(3));
    assert!(detail.contains("after the result"), "{detail}");
    let (line, detail) = malformed(&NO_ROOT.replace("@@ result", "| orphan\n@@ result"));
    assert_eq!(line, Some(2));
    assert!(detail.contains("under a marker that has none"), "{detail}");
}

#[test]
fn blank_lines_are_ignored() {
    let spaced = INSTALLED
        .replace("@@ start", "\n@@ start")
        .replace("@@ end\n", "@@ end\n\n");
    assert_eq!(parse_output(&spaced), parse_output(INSTALLED));
}
