use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::observe::labels::{self, LabelProblem, PrismLabels};

// Captured on prism-lab-node1 (Docker 20.10.24): see fixtures/.
const IDS: &str = include_str!("../fixtures/ps_ids.txt");
const LAB: &str = include_str!("../fixtures/inspect_lab.json");
const FAILED: &str = include_str!("../fixtures/inspect_failed.json");
const UNLABELLED: &str = include_str!("../fixtures/inspect_unlabelled.json");

fn id(s: &str) -> ContainerId {
    ContainerId::parse(s).unwrap()
}

fn demo(service: &str, instance: u32, spec: &str) -> Identity {
    Identity::Prism(PrismLabels {
        fleet: "lab".into(),
        app: "demo".into(),
        service: service.into(),
        instance,
        spec: spec.into(),
    })
}

fn port(container_port: u16, protocol: Protocol, ip: [u8; 4], host_port: u16) -> PublishedPort {
    PublishedPort {
        container_port,
        protocol,
        host_ip: IpAddr::from(ip),
        host_port,
    }
}

fn by_name<'a>(all: &'a [ContainerState], name: &str) -> &'a ContainerState {
    all.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn ids_from_the_lab() {
    let ids = parse_container_ids(IDS).unwrap();
    assert_eq!(ids.len(), 8);
    assert_eq!(
        ids[7],
        id("54d8101b064269a1ad09e73ef47153a7cb30b3a6fcdc4594e4a838f8f30e8ed8")
    );
    assert_eq!(ids[7].short(), "54d8101b0642");
    // The ids are those inspect then described, in the same order.
    let states = parse_inspect(LAB).unwrap();
    assert_eq!(states.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), ids);
}

#[test]
fn no_containers() {
    assert_eq!(parse_container_ids(""), Ok(vec![]));
    assert_eq!(parse_container_ids("\n\n"), Ok(vec![]));
    assert_eq!(parse_inspect("[]\n"), Ok(vec![]));
}

#[test]
fn a_garbage_id_line_is_named() {
    let mut lines: Vec<&str> = IDS.lines().collect();
    lines.insert(2, "Cannot connect to the Docker daemon");
    let err = parse_container_ids(&lines.join("\n")).unwrap_err();
    assert_eq!(
        err,
        ParseError::Malformed {
            probe: Probe::ContainerIds,
            line: Some(3),
            detail:
                "expected a 64-digit container id, found \"Cannot connect to the Docker daemon\""
                    .into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "output of `docker ps -aq`, line 3: expected a 64-digit container id, found \"Cannot connect to the Docker daemon\""
    );
    // Short (truncated) ids and upper case are not what --no-trunc prints.
    for bad in ["54d8101b0642", &"A".repeat(64), &"0".repeat(65)] {
        assert_eq!(
            parse_container_ids(bad).unwrap_err().line(),
            Some(1),
            "{bad}"
        );
    }
    let long = "x".repeat(500);
    assert!(parse_container_ids(&long).unwrap_err().to_string().len() < 200);
}

#[test]
fn lab_containers() {
    let all = parse_inspect(LAB).unwrap();
    assert_eq!(all.len(), 8);

    let web0 = by_name(&all, "prism-demo-web-0");
    assert_eq!(
        *web0,
        ContainerState {
            id: id("54d8101b064269a1ad09e73ef47153a7cb30b3a6fcdc4594e4a838f8f30e8ed8"),
            name: "prism-demo-web-0".into(),
            image: "172.31.250.2:5000/prism/testapp:1".into(),
            image_id: "sha256:9e77f397eb0bdc97b8d2facd70d481ccc8a48198bdf8f98b2374e4f04afde44f"
                .into(),
            identity: demo("web", 0, "abc123"),
            state: RunState::Running,
            health: Health::None,
            exit_code: 0,
            error: None,
            oom_killed: false,
            restart_count: 0,
            created_at: 1_795_305_728_134,
            started_at: Some(1_795_305_728_269),
            finished_at: None,
            ports: vec![port(8080, Protocol::Tcp, [0, 0, 0, 0], 8080)],
            volumes: Default::default(),
            mesh_ip: None,
        }
    );
    assert_eq!(web0.ports[0].to_string(), "0.0.0.0:8080->8080/tcp");

    // Failing health check, published on loopback only.
    let web1 = by_name(&all, "prism-demo-web-1");
    assert_eq!(web1.state, RunState::Running);
    assert_eq!(web1.health, Health::Unhealthy);
    assert_eq!(web1.identity, demo("web", 1, "abc123"));
    assert_eq!(
        web1.ports,
        [port(8080, Protocol::Tcp, [127, 0, 0, 1], 8081)]
    );

    // Health check not run yet; a tcp and a udp port on the same host port.
    let web2 = by_name(&all, "prism-demo-web-2");
    assert_eq!(web2.health, Health::Starting);
    assert_eq!(
        web2.ports,
        [
            port(8080, Protocol::Tcp, [0, 0, 0, 0], 8082),
            port(8082, Protocol::Udp, [0, 0, 0, 0], 8082),
        ]
    );

    // Paused; 8080 exposed by the image but not published.
    let web3 = by_name(&all, "prism-demo-web-3");
    assert_eq!(web3.state, RunState::Paused);
    assert_eq!(web3.health, Health::None);
    assert_eq!(web3.ports, []);
    assert_eq!(web3.started_at, Some(1_795_305_740_182));

    // `--restart always` on a command that exits 2 after a second.
    let queue = by_name(&all, "prism-demo-queue-0");
    assert_eq!(queue.state, RunState::Restarting);
    assert_eq!(queue.restart_count, 7);
    assert_eq!(queue.exit_code, 2);
    assert_eq!(queue.started_at, Some(1_795_305_752_927));
    assert_eq!(queue.finished_at, Some(1_795_305_753_944));

    // Exited with status 3 (the fraction of its StartedAt has 8 digits).
    let cron = by_name(&all, "prism-demo-cron-0");
    assert_eq!(cron.state, RunState::Exited);
    assert_eq!(cron.exit_code, 3);
    assert_eq!(cron.identity, demo("cron", 0, "def456"));
    assert_eq!(cron.started_at, Some(1_795_305_728_561));
    assert_eq!(cron.finished_at, Some(1_795_305_728_562));

    // Created, never started: Docker's zero times are None.
    let worker = by_name(&all, "prism-demo-worker-0");
    assert_eq!(worker.state, RunState::Created);
    assert_eq!((worker.started_at, worker.finished_at), (None, None));
    assert_eq!(worker.ports, []);

    // Fleet label but no service: reported, not an error of the parse.
    let stray = by_name(&all, "stray");
    assert_eq!(
        stray.identity,
        Identity::Foreign(LabelProblem::Missing(labels::SERVICE))
    );
    assert_eq!(stray.state, RunState::Running);
}

#[test]
fn failed_start_and_oom_kill() {
    let all = parse_inspect(FAILED).unwrap();
    // Its port was taken: created, never started, Docker's reason kept.
    let blocked = by_name(&all, "prism-demo-web-1");
    assert_eq!(blocked.state, RunState::Created);
    assert_eq!(blocked.exit_code, 128);
    assert_eq!(blocked.started_at, None);
    let error = blocked.error.as_deref().unwrap();
    assert!(
        error.ends_with("Bind for 0.0.0.0:8080 failed: port is already allocated"),
        "{error}"
    );

    let hog = by_name(&all, "prism-demo-hog-0");
    assert_eq!(hog.state, RunState::Exited);
    assert!(hog.oom_killed);
    assert_eq!(hog.exit_code, 137);
    assert_eq!(hog.error, None);
    assert_eq!(hog.started_at, Some(1_795_305_882_588));
}

#[test]
fn foreign_containers() {
    let all = parse_inspect(UNLABELLED).unwrap();
    assert_eq!(
        by_name(&all, "nolabels").identity,
        Identity::Foreign(LabelProblem::Missing(labels::FLEET))
    );
    // Well-formed labels of another fleet: Prism's, but not this fleet's;
    // the caller compares `fleet`.
    let other = by_name(&all, "other-fleet").identity.prism().unwrap();
    assert_eq!(other.fleet, "prod");
}

#[test]
fn unknown_states_are_kept() {
    let text = LAB
        .replacen(r#""Status": "paused""#, r#""Status": "hibernating""#, 1)
        .replacen(r#""Status": "starting""#, r#""Status": "pondering""#, 1);
    let all = parse_inspect(&text).unwrap();
    let web3 = by_name(&all, "prism-demo-web-3");
    assert_eq!(web3.state, RunState::Other("hibernating".into()));
    assert_eq!(web3.state.to_string(), "hibernating");
    assert_eq!(
        by_name(&all, "prism-demo-web-2").health,
        Health::Other("pondering".into())
    );
}

#[test]
fn minimal_container() {
    // Only the fields Prism needs; null labels and ports; IPv6 binding.
    let text = r#"[{
        "Id": "0000000000000000000000000000000000000000000000000000000000000001",
        "Created": "2026-01-01T00:00:00Z",
        "Name": "/x",
        "Image": "sha256:1",
        "RestartCount": 0,
        "State": {"Status": "running", "ExitCode": 0,
                  "StartedAt": "2026-01-01T00:00:01Z", "FinishedAt": "0001-01-01T00:00:00Z"},
        "Config": {"Image": "busybox", "Labels": null},
        "NetworkSettings": {"Ports": {"53/udp": [{"HostIp": "::", "HostPort": "5353"}],
                                      "80/sctp": [{"HostIp": "", "HostPort": "80"}]}},
        "Future": {"Field": true}
    }]"#;
    let c = parse_inspect(text).unwrap().remove(0);
    assert_eq!(c.name, "x");
    assert_eq!(
        c.identity,
        Identity::Foreign(LabelProblem::Missing(labels::FLEET))
    );
    assert_eq!(c.started_at, Some(1_767_225_601_000));
    let v6 = PublishedPort {
        container_port: 53,
        protocol: Protocol::Udp,
        host_ip: "::".parse().unwrap(),
        host_port: 5353,
    };
    let any = port(80, Protocol::Sctp, [0, 0, 0, 0], 80);
    assert_eq!(c.ports, [v6, any]);
    assert_eq!(v6.to_string(), "[::]:5353->53/udp");
    assert_eq!(any.host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

#[test]
fn truncated_json_names_the_line() {
    let cut = &LAB[..LAB.len() / 2];
    let err = parse_inspect(cut).unwrap_err();
    assert_eq!(err.probe(), Probe::Inspect);
    assert_eq!(err.line(), Some(cut.lines().count()));
    assert!(err.to_string().contains("EOF while parsing"), "{err}");
}

#[test]
fn wrong_types_name_the_field() {
    let text = LAB.replacen(r#""ExitCode": 0"#, r#""ExitCode": "zero""#, 1);
    let err = parse_inspect(&text).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("output of `docker container inspect`, line "),
        "{msg}"
    );
    assert!(
        msg.contains("at [0].State.ExitCode: invalid type: string \"zero\", expected i64"),
        "{msg}"
    );

    let text = LAB.replacen(r#""RestartCount": 7"#, r#""RestartCount": -1"#, 1);
    let msg = parse_inspect(&text).unwrap_err().to_string();
    assert!(
        msg.contains("at [2].RestartCount: invalid value: integer `-1`"),
        "{msg}"
    );

    let text = LAB.replacen(r#""Labels": {"#, r#""Labels": {"n": 1, "#, 1);
    let msg = parse_inspect(&text).unwrap_err().to_string();
    assert!(
        msg.contains("at [0].Config.Labels.n: invalid type: integer"),
        "{msg}"
    );
}

#[test]
fn missing_fields_and_bad_values() {
    let cases = [
        (
            LAB.replacen(r#""RestartCount""#, r#""Restarts""#, 1),
            "at [0]: missing field `RestartCount`",
        ),
        (
            LAB.replacen(
                r#""StartedAt": "2026-11-22T00:02:20.182804453Z""#,
                r#""StartedAt": "soon""#,
                1,
            ),
            "container [0] /prism-demo-web-3: State.StartedAt: \"soon\" is not an RFC 3339 time",
        ),
        (
            LAB.replace(r#""8082/udp""#, r#""8082/quic""#),
            "container [1] /prism-demo-web-2: NetworkSettings.Ports: \"8082/quic\" is not PORT/PROTOCOL",
        ),
        (
            LAB.replace(r#""HostPort": "8082""#, r#""HostPort": "eighty""#),
            "HostPort \"eighty\" is not a port",
        ),
        (
            LAB.replace(r#""HostIp": "0.0.0.0""#, r#""HostIp": "everywhere""#),
            "HostIp \"everywhere\" is not an IP address",
        ),
        (
            LAB.replacen(r#""Id": "6939"#, r#""Id": "zz39"#, 1),
            "Id \"zz39",
        ),
    ];
    for (text, want) in cases {
        let err = parse_inspect(&text).unwrap_err();
        assert_eq!(err.probe(), Probe::Inspect);
        assert!(err.to_string().contains(want), "want {want:?} in: {err}");
    }
}

#[test]
fn not_an_array_or_not_json() {
    for (text, want) in [
        ("", "no output"),
        (" \n", "no output"),
        ("{}", "invalid type: map, expected a sequence"),
        ("Error: No such container: x", "expected value"),
        ("[] []", "trailing characters"),
        ("[1]", "at [0]: invalid type: integer `1`"),
    ] {
        let err = parse_inspect(text).unwrap_err();
        assert!(err.to_string().contains(want), "{text:?}: {err}");
    }
}
