use super::*;
use crate::config::{Bytes, Millicores};
use crate::observe::labels::{Identity, PrismLabels};
use crate::observe::{ContainerId, ContainerState};
use crate::reconcile::NodeState;

fn settings() -> MeshSettings {
    MeshSettings {
        cidr: "10.210.0.0/16".parse().unwrap(),
        port: 51820,
        domain: "internal".into(),
        interface: "prism0".into(),
    }
}

fn node(id: &str, n: u8, state: NodeState) -> NodeView {
    NodeView {
        id: id.into(),
        address: format!("172.31.250.{n}"),
        zone: None,
        memory: Bytes(2 << 30),
        cpu: Millicores(2000),
        state,
        images: None,
        stopped: false,
        silent_for: None,
        mesh: None,
    }
}

fn reports(subnet: &str, key: &str) -> MeshFacts {
    MeshFacts {
        public_key: Some(key.into()),
        subnet: subnet.parse().ok(),
        ..MeshFacts::default()
    }
}

fn member(slot: u16, key: Option<&str>) -> Member {
    Member {
        slot,
        public_key: key.map(str::to_owned),
    }
}

#[test]
fn a_node_keeps_its_slash_24_and_a_new_one_takes_the_lowest_free() {
    let s = settings();
    let nodes = [
        node("i-a", 10, NodeState::Ready),
        node("i-b", 11, NodeState::Ready),
        node("i-c", 12, NodeState::Suspect),
        node("i-new", 13, NodeState::Preparing),
    ];
    // i-a says it holds slot 3; the store remembers i-b at 1 and i-c at 3
    // (which i-a's report wins), i-gone at 2.
    let facts = BTreeMap::from([("i-a".to_owned(), reports("10.210.3.0/24", "KA"))]);
    let stored = BTreeMap::from([
        ("i-b".to_owned(), member(1, Some("KB"))),
        ("i-c".to_owned(), member(3, Some("KC"))),
        ("i-gone".to_owned(), member(2, Some("KG"))),
    ]);
    let got = members(&s, &nodes, &facts, &stored);
    assert_eq!(got["i-a"], member(3, Some("KA")));
    assert_eq!(got["i-b"], member(1, Some("KB")));
    // i-gone left the inventory: its /24 is free again; 0 is the
    // operator's and never a node's.
    assert_eq!(got["i-c"], member(2, Some("KC")));
    assert_eq!(got["i-new"], member(4, None));
    assert!(!got.contains_key("i-gone"));
    // A report outside the cidr is no claim.
    let facts = BTreeMap::from([("i-a".to_owned(), reports("10.99.3.0/24", "KA"))]);
    let got = members(&s, &nodes[..1], &facts, &BTreeMap::new());
    assert_eq!(got["i-a"].slot, 1);
    // A full cidr leaves a node out rather than giving it another's /24.
    let small = MeshSettings {
        cidr: "10.210.0.0/23".parse().unwrap(),
        ..settings()
    };
    let got = members(&small, &nodes, &BTreeMap::new(), &BTreeMap::new());
    assert_eq!(got.len(), 1);
}

fn container(app: &str, service: &str, instance: u32, ip: &str, health: Health) -> ContainerState {
    ContainerState {
        id: ContainerId::parse(&format!("{:0>64}", instance)).unwrap(),
        name: format!("prism.lab.{app}.{instance}.{service}.x"),
        image: "img".into(),
        image_id: "sha256:00".into(),
        identity: Identity::Prism(PrismLabels {
            fleet: "lab".into(),
            app: app.into(),
            service: service.into(),
            instance,
            spec: "x".into(),
        }),
        state: RunState::Running,
        health,
        exit_code: 0,
        error: None,
        oom_killed: false,
        restart_count: 0,
        created_at: 1,
        started_at: Some(1),
        finished_at: None,
        ports: vec![],
        volumes: BTreeMap::new(),
        mesh_ip: ip.parse().ok(),
    }
}

#[test]
fn names_are_the_healthy_instances_and_nothing_else() {
    let views = [
        node("i-a", 10, NodeState::Ready),
        node("i-b", 11, NodeState::Ready),
        node("i-lost", 12, NodeState::Lost),
    ];
    let mut stopped = container("blog", "web", 3, "10.210.1.9", Health::None);
    stopped.state = RunState::Exited;
    let mut foreign = container("blog", "web", 4, "10.210.1.10", Health::None);
    foreign.identity = Identity::Prism(PrismLabels {
        fleet: "other".into(),
        ..foreign.identity.prism().unwrap().clone()
    });
    let observed = BTreeMap::from([
        (
            "i-a".to_owned(),
            vec![
                container("blog", "web", 0, "10.210.1.2", Health::Healthy),
                container("db", "postgres", 0, "10.210.1.3", Health::None),
                container("blog", "web", 2, "10.210.1.4", Health::Unhealthy),
                container("blog", "web", 5, "10.210.1.5", Health::Starting),
                container("blog", "queue", 0, "", Health::None),
                stopped,
                foreign,
            ],
        ),
        (
            "i-b".to_owned(),
            vec![container("blog", "web", 1, "10.210.2.2", Health::Healthy)],
        ),
        (
            "i-lost".to_owned(),
            vec![container("blog", "web", 6, "10.210.3.2", Health::Healthy)],
        ),
    ]);
    let text = names(
        "lab",
        "internal",
        &views,
        &observed,
        &BTreeMap::new(),
        &BTreeSet::new(),
    );
    assert_eq!(
        text,
        "# The names of fleet lab's instances, written by Prism.\n\
         10.210.1.2 0.web.blog.internal\n\
         10.210.1.2 web.blog.internal\n\
         10.210.1.3 0.postgres.db.internal\n\
         10.210.1.3 postgres.db.internal\n\
         10.210.2.2 1.web.blog.internal\n\
         10.210.2.2 web.blog.internal\n"
    );
    assert_eq!(names_hash("abc\n").len(), 64);
    // i-b misses a probe: its instances keep their names from what it ran
    // when it last answered.
    let mut suspect = views.clone();
    suspect[1].state = NodeState::Suspect;
    let mut missed = observed.clone();
    let last = BTreeMap::from([("i-b".to_owned(), missed.remove("i-b").unwrap())]);
    assert_eq!(
        names(
            "lab",
            "internal",
            &suspect,
            &missed,
            &last,
            &BTreeSet::new()
        ),
        text
    );
    assert!(
        !names(
            "lab",
            "internal",
            &suspect,
            &missed,
            &BTreeMap::new(),
            &BTreeSet::new()
        )
        .contains("1.web")
    );
    // A container this pass removes is unnamed before it goes.
    let leaving = BTreeSet::from([observed["i-b"][0].id.clone()]);
    assert!(
        !names(
            "lab",
            "internal",
            &views,
            &observed,
            &BTreeMap::new(),
            &leaving
        )
        .contains("1.web")
    );
}

#[test]
fn a_node_is_set_up_until_it_holds_its_peers_and_names() {
    let s = settings();
    let views = [
        node("i-a", 10, NodeState::Ready),
        node("i-b", 11, NodeState::Ready),
        node("i-new", 12, NodeState::Preparing),
    ];
    let members = BTreeMap::from([
        ("i-a".to_owned(), member(1, Some("KA"))),
        ("i-b".to_owned(), member(2, Some("KB"))),
        ("i-new".to_owned(), member(3, None)),
    ]);
    let text = "# names\n10.210.1.2 web.blog.internal\n";
    let mut facts = BTreeMap::from([
        ("i-a".to_owned(), None),
        ("i-b".to_owned(), None),
        ("i-new".to_owned(), None),
    ]);
    let input = |facts: &BTreeMap<String, Option<MeshFacts>>| {
        plan_mesh(&MeshInput {
            settings: &s,
            views: &views,
            members: &members,
            operator_key: Some("KOP"),
            facts,
            names: text,
        })
    };
    let (setups, writes) = input(&facts);
    assert_eq!(setups.len(), 3);
    assert_eq!(writes.len(), 3);
    let Action::SetUpMesh { setup } = &setups["i-a"] else {
        panic!("{:?}", setups["i-a"]);
    };
    assert_eq!(setup.subnet.to_string(), "10.210.1.0/24");
    assert_eq!(setup.gateway.to_string(), "10.210.1.1");
    // Its peers: the other node with a key (i-new has none yet) and the
    // operator's box, which has no endpoint.
    let peers: Vec<String> = setup
        .peers
        .iter()
        .map(|p| {
            format!(
                "{} {} {}",
                p.public_key,
                p.endpoint.as_deref().unwrap_or("-"),
                p.allowed
            )
        })
        .collect();
    assert_eq!(
        peers,
        [
            "KB 172.31.250.11:51820 10.210.2.0/24",
            "KOP - 10.210.0.0/24"
        ]
    );
    let Action::WriteNames { records, .. } = &writes["i-a"] else {
        panic!();
    };
    assert_eq!(*records, 1);
    // A node that holds this set-up, runs it and serves these names: nothing.
    facts.insert(
        "i-a".into(),
        Some(MeshFacts {
            public_key: Some("KA".into()),
            subnet: Some(setup.subnet),
            applied: Some(setup.hash.clone()),
            link: true,
            resolver: true,
            names: Some(names_hash(text)),
        }),
    );
    let (setups, writes) = input(&facts);
    assert!(!setups.contains_key("i-a") && !writes.contains_key("i-a"));
    // Its interface gone (wireguard-go died): set up again.
    if let Some(Some(f)) = facts.get_mut("i-a") {
        f.link = false;
    }
    assert!(input(&facts).0.contains_key("i-a"));
    // A node that did not answer is not planned for.
    facts.remove("i-b");
    assert!(!input(&facts).0.contains_key("i-b"));
    // The operator's peers: every node with a key, at its address.
    let op: Vec<String> = operator_peers(&s, &views, &members)
        .iter()
        .map(|p| format!("{} {}", p.public_key, p.endpoint.as_deref().unwrap_or("-")))
        .collect();
    assert_eq!(op, ["KA 172.31.250.10:51820", "KB 172.31.250.11:51820"]);
}

#[test]
fn a_peer_change_changes_the_hash_and_nothing_else_does() {
    let s = settings();
    let subnet: Ipv4Net = "10.210.1.0/24".parse().unwrap();
    let peer = |k: &str| Peer {
        public_key: k.into(),
        endpoint: Some("172.31.250.11:51820".into()),
        allowed: "10.210.2.0/24".parse().unwrap(),
    };
    let a = MeshSetup::new(&s, subnet, vec![peer("K1"), peer("K2")]);
    let b = MeshSetup::new(&s, subnet, vec![peer("K2"), peer("K1")]);
    let c = MeshSetup::new(&s, subnet, vec![peer("K1")]);
    assert_eq!(a.hash, b.hash, "peer order does not matter");
    assert_ne!(a.hash, c.hash);
}
