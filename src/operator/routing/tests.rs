use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::*;
use crate::config::{Bytes, Millicores};
use crate::observe::{Identity, LabelProblem, PrismLabels, PublishedPort};
use crate::reconcile::NodeState;

const APPS: &str = r#"
[apps.blog]
instances = 2
[apps.blog.services.web]
image = "blog"
port = 8080
hosts = ["blog.example.com", "*.blog.example.com"]
health = { http = "/up" }
[apps.blog.services.queue]
image = "blog"
[apps.shop.services.web]
image = "shop"
port = 3000
hosts = ["shop.example.com"]
"#;

fn fleet() -> Fleet {
    let text = format!("[fleet]\nname = \"hobby\"\n[discovery]\nprovider = \"ec2\"\n{APPS}");
    crate::config::parse(Path::new("fleet.toml"), &text).unwrap()
}

fn node(id: &str, address: &str, state: NodeState) -> NodeView {
    NodeView {
        id: id.into(),
        address: address.into(),
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

fn port(container_port: u16, host_port: u16, v6: bool) -> PublishedPort {
    PublishedPort {
        container_port,
        protocol: Protocol::Tcp,
        host_ip: if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        },
        host_port,
    }
}

/// A running container of fleet `hobby`, healthy, its service port
/// published on `host_port` (v4 and v6, as Docker lists them).
fn container(n: u8, app: &str, service: &str, instance: u32, host_port: u16) -> ContainerState {
    let container_port = if app == "shop" { 3000 } else { 8080 };
    ContainerState {
        id: ContainerId::parse(&format!("{n:064x}")).unwrap(),
        name: format!("hobby.{app}.{instance}.{service}"),
        image: app.into(),
        image_id: "sha256:00".into(),
        identity: Identity::Prism(PrismLabels {
            fleet: "hobby".into(),
            app: app.into(),
            service: service.into(),
            instance,
            spec: "s1".into(),
        }),
        state: RunState::Running,
        health: Health::Healthy,
        exit_code: 0,
        error: None,
        oom_killed: false,
        restart_count: 0,
        created_at: 0,
        started_at: Some(0),
        finished_at: None,
        ports: vec![
            port(container_port, host_port, false),
            port(container_port, host_port, true),
        ],
        volumes: Default::default(),
        mesh_ip: None,
    }
}

/// `(pattern, endpoint, healthy)` of every route's upstreams.
fn listed(routes: &Routes) -> Vec<(String, String, bool)> {
    routes
        .table
        .routes()
        .iter()
        .flat_map(|r| {
            r.upstreams
                .iter()
                .map(|u| (r.pattern.clone(), u.endpoint(), u.healthy))
        })
        .collect()
}

fn row(pattern: &str, endpoint: &str, healthy: bool) -> (String, String, bool) {
    (pattern.into(), endpoint.into(), healthy)
}

#[test]
fn hosts_route_to_the_node_address_and_published_port_of_each_instance() {
    let views = [
        node("i-1", "10.0.0.1", NodeState::Ready),
        node("i-2", "10.0.0.2", NodeState::Ready),
    ];
    let observed = BTreeMap::from([
        (
            "i-1".to_owned(),
            vec![
                container(1, "blog", "web", 0, 32768),
                container(2, "blog", "queue", 0, 0),
                container(3, "shop", "web", 0, 32769),
            ],
        ),
        (
            "i-2".to_owned(),
            vec![container(4, "blog", "web", 1, 32768)],
        ),
    ]);
    let routes = routes(&fleet(), &views, &observed);
    assert_eq!(
        listed(&routes),
        vec![
            row("blog.example.com", "10.0.0.1:32768", true),
            row("blog.example.com", "10.0.0.2:32768", true),
            row("*.blog.example.com", "10.0.0.1:32768", true),
            row("*.blog.example.com", "10.0.0.2:32768", true),
            row("shop.example.com", "10.0.0.1:32769", true),
        ]
    );
    let route = routes.table.lookup("www.blog.example.com", "/").unwrap();
    assert_eq!(route.upstreams[1].node, "i-2");
    assert_eq!(route.upstreams[1].instance, 1);
    // Every listed container can be drained by its id; the queue has no hosts.
    let id = |n: u8| ContainerId::parse(&format!("{n:064x}")).unwrap();
    assert_eq!(routes.endpoints.len(), 3);
    assert_eq!(routes.endpoints[&id(1)], "10.0.0.1:32768");
    assert_eq!(routes.endpoints[&id(4)], "10.0.0.2:32768");
    assert!(!routes.endpoints.contains_key(&id(2)));
}

#[test]
fn a_port_exposed_but_not_published_is_no_endpoint() {
    let views = [node("i-1", "10.0.0.1", NodeState::Ready)];
    // Docker lists an exposed, unpublished port with host port 0.
    let observed = BTreeMap::from([(
        "i-1".to_owned(),
        vec![
            container(1, "blog", "web", 0, 0),
            container(2, "gone", "web", 0, 0),
        ],
    )]);
    let routes = routes(&fleet(), &views, &observed);
    assert_eq!(listed(&routes), Vec::<(String, String, bool)>::new());
    assert!(routes.endpoints.is_empty(), "{:?}", routes.endpoints);
}

#[test]
fn only_running_containers_count_and_health_decides_who_gets_requests() {
    let views = [node("i-1", "10.0.0.1", NodeState::Ready)];
    let mut starting = container(1, "blog", "web", 0, 30001);
    starting.health = Health::Starting;
    let mut unhealthy = container(2, "blog", "web", 1, 30002);
    unhealthy.health = Health::Unhealthy;
    let mut exited = container(3, "shop", "web", 0, 30003);
    exited.state = RunState::Exited;
    // No health check: running is enough.
    let mut unchecked = container(4, "shop", "web", 0, 30004);
    unchecked.health = Health::None;
    let mut restarting = container(5, "shop", "web", 0, 30005);
    restarting.state = RunState::Restarting;
    let observed = BTreeMap::from([(
        "i-1".to_owned(),
        vec![starting, unhealthy, exited, unchecked, restarting],
    )]);
    let routes = routes(&fleet(), &views, &observed);
    assert_eq!(
        listed(&routes),
        vec![
            row("blog.example.com", "10.0.0.1:30001", false),
            row("blog.example.com", "10.0.0.1:30002", false),
            row("*.blog.example.com", "10.0.0.1:30001", false),
            row("*.blog.example.com", "10.0.0.1:30002", false),
            row("shop.example.com", "10.0.0.1:30004", true),
        ]
    );
}

#[test]
fn lost_and_untrusted_nodes_serve_nothing_draining_ones_still_do() {
    let states = [
        NodeState::Ready,
        NodeState::Suspect,
        NodeState::Draining,
        NodeState::Lost,
        NodeState::Untrusted,
    ];
    let views: Vec<NodeView> = states
        .iter()
        .enumerate()
        .map(|(i, s)| node(&format!("i-{i}"), &format!("10.0.0.{i}"), *s))
        .collect();
    let observed = (0..states.len())
        .map(|i| {
            let c = container(i as u8 + 1, "shop", "web", 0, 31000);
            (format!("i-{i}"), vec![c])
        })
        .collect();
    let routes = routes(&fleet(), &views, &observed);
    assert_eq!(
        listed(&routes),
        vec![
            row("shop.example.com", "10.0.0.0:31000", true),
            row("shop.example.com", "10.0.0.1:31000", true),
            row("shop.example.com", "10.0.0.2:31000", true),
        ]
    );
}

#[test]
fn old_and_new_containers_of_a_replacement_are_both_listed() {
    // A spec change on one node: the old container (port 8080 published
    // on 32770) and its successor, which publishes a new port.
    let mut fleet = fleet();
    fleet
        .apps
        .get_mut("shop")
        .unwrap()
        .services
        .get_mut("web")
        .unwrap()
        .port = Some(4000);
    let views = [node("i-1", "10.0.0.1", NodeState::Ready)];
    let old = container(1, "shop", "web", 0, 32770);
    let mut new = container(2, "shop", "web", 0, 32771);
    new.ports = vec![port(4000, 32771, false)];
    new.health = Health::Starting;
    let observed = BTreeMap::from([("i-1".to_owned(), vec![old, new])]);
    let routes = routes(&fleet, &views, &observed);
    assert_eq!(
        listed(&routes),
        vec![
            row("shop.example.com", "10.0.0.1:32770", true),
            row("shop.example.com", "10.0.0.1:32771", false),
        ]
    );
}

#[test]
fn foreign_other_fleets_unpublished_and_unknown_services_are_left_out() {
    let views = [node("i-1", "10.0.0.1", NodeState::Ready)];
    let mut foreign = container(1, "shop", "web", 0, 30001);
    foreign.identity = Identity::Foreign(LabelProblem::Missing("prism.fleet"));
    let mut other = container(2, "shop", "web", 0, 30002);
    if let Identity::Prism(l) = &mut other.identity {
        l.fleet = "other".into();
    }
    let mut unpublished = container(3, "shop", "web", 0, 30003);
    unpublished.ports.clear();
    let gone = container(4, "gone", "web", 0, 30004);
    let gone_id = gone.id.clone();
    let observed = BTreeMap::from([("i-1".to_owned(), vec![foreign, other, unpublished, gone])]);
    let routes = routes(&fleet(), &views, &observed);
    assert!(listed(&routes).is_empty(), "{:?}", listed(&routes));
    // An app no longer in fleet.toml gets no route, but its endpoint is
    // known, to drain it before it stops.
    assert_eq!(
        routes.endpoints,
        HashMap::from([(gone_id, "10.0.0.1:30004".to_owned())])
    );
    // Hosts are still known: their requests get 503, not 404.
    assert!(routes.table.lookup("shop.example.com", "/").is_some());
}

#[test]
fn containers_that_lost_their_route_keep_an_endpoint_to_drain() {
    let views = [
        node("i-1", "10.0.0.1", NodeState::Ready),
        node("i-2", "fd00::2", NodeState::Draining),
        node("i-3", "10.0.0.3", NodeState::Lost),
    ];
    // The blog's hosts were removed from fleet.toml; the shop was removed.
    let text = format!(
        "[fleet]\nname = \"hobby\"\n[discovery]\nprovider = \"ec2\"\n{}",
        APPS.replace(
            "hosts = [\"blog.example.com\", \"*.blog.example.com\"]\n",
            ""
        )
        .split("[apps.shop")
        .next()
        .unwrap()
    );
    let fleet = crate::config::parse(Path::new("fleet.toml"), &text).unwrap();
    let blog = container(1, "blog", "web", 0, 30001);
    let shop = container(2, "shop", "web", 0, 30002);
    let on_lost = container(3, "shop", "web", 1, 30003);
    let (blog_id, shop_id) = (blog.id.clone(), shop.id.clone());
    let observed = BTreeMap::from([
        ("i-1".to_owned(), vec![blog]),
        ("i-2".to_owned(), vec![shop]),
        ("i-3".to_owned(), vec![on_lost]),
    ]);
    let routes = routes(&fleet, &views, &observed);
    assert!(routes.table.routes().is_empty(), "{:?}", routes.table);
    assert_eq!(
        routes.endpoints,
        HashMap::from([
            (blog_id, "10.0.0.1:30001".to_owned()),
            (shop_id, "[fd00::2]:30002".to_owned()),
        ])
    );
}
