use super::*;

const MI: u64 = 1 << 20;

fn node(id: &str, zone: Option<&str>, memory_mi: u64, cpu: u64, state: NodeState) -> NodeView {
    NodeView {
        id: id.into(),
        address: format!("10.0.0.{}", id.len()),
        zone: zone.map(String::from),
        memory: Bytes(memory_mi * MI),
        cpu: Millicores(cpu),
        state,
        images: None,
        stopped: false,
        silent_for: None,
        mesh: None,
    }
}

fn ready(id: &str, memory_mi: u64) -> NodeView {
    node(id, None, memory_mi, 2000, NodeState::Ready)
}

fn pod(app: &str, instance: u32, memory_mi: u64, cpu: u64) -> PodDemand {
    PodDemand {
        pod: PodKey::new(app, instance),
        memory: Bytes(memory_mi * MI),
        cpu: Millicores(cpu),
        holds_data: false,
        zone: ZoneRule::Any,
    }
}

/// 256M and 100m kept free on every node, as fleet.toml's defaults.
fn reserve() -> Reserve {
    Reserve {
        memory: Bytes(256 * MI),
        cpu: Millicores(100),
    }
}

fn current(pairs: &[(&str, u32, &str)]) -> BTreeMap<PodKey, String> {
    pairs
        .iter()
        .map(|(app, i, node)| (PodKey::new(app, *i), (*node).to_owned()))
        .collect()
}

fn placed(s: &Schedule) -> Vec<(String, String)> {
    s.placements
        .iter()
        .map(|(p, n)| (p.to_string(), n.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, n)| ((*p).to_owned(), (*n).to_owned()))
        .collect()
}

#[test]
fn empty_fleet_and_empty_inventory() {
    let s = schedule(&[], &[ready("n1", 2048)], &BTreeMap::new(), reserve());
    assert_eq!(s, Schedule::default());

    let s = schedule(&[pod("blog", 0, 128, 0)], &[], &BTreeMap::new(), reserve());
    assert!(s.placements.is_empty());
    assert_eq!(s.problems.len(), 1);
    assert_eq!(s.problems[0].kind, ProblemKind::CannotPlace);
    assert_eq!(
        s.problems[0].detail,
        "blog/0 has no node to run on: the fleet has no nodes"
    );
}

#[test]
fn best_fit_takes_the_tightest_node() {
    // 1G less the reserve leaves 768M; 2G leaves 1792M.
    let nodes = [ready("big", 2048), ready("small", 1024)];
    let s = schedule(
        &[pod("blog", 0, 512, 0)],
        &nodes,
        &BTreeMap::new(),
        reserve(),
    );
    assert_eq!(placed(&s), pairs(&[("blog/0", "small")]));
    assert!(s.problems.is_empty());
}

#[test]
fn the_reserve_is_kept_free() {
    // 1G less 256M leaves exactly 768M: 768M fits, 769M does not.
    let nodes = [ready("n1", 1024)];
    let s = schedule(&[pod("a", 0, 768, 0)], &nodes, &BTreeMap::new(), reserve());
    assert_eq!(placed(&s), pairs(&[("a/0", "n1")]));
    let s = schedule(&[pod("a", 0, 769, 0)], &nodes, &BTreeMap::new(), reserve());
    assert!(s.placements.is_empty());
    assert_eq!(
        s.problems[0].detail,
        "a/0 needs 769M of memory; the largest free space is 768M, on node n1"
    );
    // CPU: 2 cores less 100m.
    let s = schedule(
        &[pod("a", 0, 64, 1901)],
        &nodes,
        &BTreeMap::new(),
        reserve(),
    );
    assert_eq!(
        s.problems[0].detail,
        "a/0 needs 1901m CPU; the most free is 1900m, on node n1"
    );
}

#[test]
fn instances_spread_across_nodes_before_best_fit() {
    let nodes = [ready("n1", 4096), ready("n2", 4096), ready("n3", 1024)];
    let pods = [
        pod("blog", 0, 256, 0),
        pod("blog", 1, 256, 0),
        pod("blog", 2, 256, 0),
    ];
    let s = schedule(&pods, &nodes, &BTreeMap::new(), reserve());
    // Best fit alone would put all three on n3 (768M free).
    assert_eq!(
        placed(&s),
        pairs(&[("blog/0", "n3"), ("blog/1", "n1"), ("blog/2", "n2")])
    );
    // Other apps are not spread against blog: shop packs onto the tightest.
    let mut more = pods.to_vec();
    more.push(pod("shop", 0, 256, 0));
    let s = schedule(&more, &nodes, &BTreeMap::new(), reserve());
    assert_eq!(s.placements[&PodKey::new("shop", 0)], "n3");
}

#[test]
fn instances_spread_across_zones() {
    let nodes = [
        node("a", Some("z1"), 2048, 2000, NodeState::Ready),
        node("b", Some("z1"), 2048, 2000, NodeState::Ready),
        node("c", Some("z2"), 2048, 2000, NodeState::Ready),
    ];
    let pods = [pod("blog", 0, 256, 0), pod("blog", 1, 256, 0)];
    let s = schedule(&pods, &nodes, &BTreeMap::new(), reserve());
    // b is as free as c, but in a's zone.
    assert_eq!(placed(&s), pairs(&[("blog/0", "a"), ("blog/1", "c")]));
}

#[test]
fn running_pods_stay_on_ready_and_suspect_nodes() {
    let nodes = [
        ready("roomy", 8192),
        ready("tight", 1024),
        node("sus", None, 1024, 2000, NodeState::Suspect),
    ];
    let pods = [pod("blog", 0, 512, 0), pod("shop", 0, 512, 0)];
    // Best fit would move blog to tight; it stays on roomy.
    let cur = current(&[("blog", 0, "roomy"), ("shop", 0, "sus")]);
    let s = schedule(&pods, &nodes, &cur, reserve());
    assert_eq!(placed(&s), pairs(&[("blog/0", "roomy"), ("shop/0", "sus")]));
}

#[test]
fn a_suspect_node_takes_nothing_new() {
    let nodes = [
        node("sus", None, 8192, 4000, NodeState::Suspect),
        ready("n1", 1024),
    ];
    let pods = [pod("blog", 0, 512, 0), pod("shop", 0, 512, 0)];
    let s = schedule(&pods, &nodes, &BTreeMap::new(), reserve());
    assert_eq!(placed(&s), pairs(&[("blog/0", "n1")]));
    assert_eq!(
        s.problems[0].detail,
        "shop/0 needs 512M of memory; the largest free space is 256M, on node n1"
    );
}

#[test]
fn pods_leave_lost_draining_untrusted_and_unknown_nodes() {
    let nodes = [
        node("lost", None, 8192, 4000, NodeState::Lost),
        node("drain", None, 8192, 4000, NodeState::Draining),
        node("bad", None, 8192, 4000, NodeState::Untrusted),
        ready("n1", 4096),
    ];
    let pods = [
        pod("a", 0, 256, 0),
        pod("b", 0, 256, 0),
        pod("c", 0, 256, 0),
        pod("d", 0, 256, 0),
    ];
    let cur = current(&[
        ("a", 0, "lost"),
        ("b", 0, "drain"),
        ("c", 0, "bad"),
        ("d", 0, "gone"),
    ]);
    let s = schedule(&pods, &nodes, &cur, reserve());
    assert_eq!(
        placed(&s),
        pairs(&[("a/0", "n1"), ("b/0", "n1"), ("c/0", "n1"), ("d/0", "n1")])
    );
    assert!(s.problems.is_empty());
}

#[test]
fn a_draining_pod_without_room_stays() {
    let nodes = [
        node("drain", None, 8192, 4000, NodeState::Draining),
        ready("n1", 512),
    ];
    let pods = [pod("blog", 0, 768, 0)];
    let s = schedule(&pods, &nodes, &current(&[("blog", 0, "drain")]), reserve());
    assert_eq!(placed(&s), pairs(&[("blog/0", "drain")]));
    assert_eq!(s.problems.len(), 1);
    assert_eq!(s.problems[0].kind, ProblemKind::CannotMove);
    assert_eq!(
        s.problems[0].detail,
        "blog/0 stays on draining node drain: needs 768M of memory; the largest free space is 256M, on node n1"
    );
}

#[test]
fn a_lost_pod_without_room_is_unplaced() {
    let nodes = [node("lost", None, 8192, 4000, NodeState::Lost)];
    let pods = [pod("blog", 0, 256, 0)];
    let s = schedule(&pods, &nodes, &current(&[("blog", 0, "lost")]), reserve());
    assert!(s.placements.is_empty());
    assert_eq!(
        s.problems[0].detail,
        "blog/0 has no node to run on: none is ready (1 lost)"
    );
}

#[test]
fn infeasible_pod_is_reported_and_the_rest_placed() {
    let nodes = [ready("i-0a", 768), ready("i-0b", 1024)];
    let pods = [
        pod("blog", 0, 1024, 0),
        pod("shop", 0, 256, 0),
        pod("wiki", 0, 256, 0),
    ];
    let s = schedule(&pods, &nodes, &BTreeMap::new(), reserve());
    // Best fit: both fill i-0a (512M free) before touching i-0b.
    assert_eq!(placed(&s), pairs(&[("shop/0", "i-0a"), ("wiki/0", "i-0a")]));
    assert_eq!(s.problems.len(), 1);
    let p = &s.problems[0];
    assert_eq!(
        (p.kind, &p.pod),
        (ProblemKind::CannotPlace, &PodKey::new("blog", 0))
    );
    assert_eq!(
        p.detail,
        "blog/0 needs 1G of memory; the largest free space is 768M, on node i-0b"
    );
}

#[test]
fn memory_and_cpu_on_different_nodes() {
    let nodes = [
        node("mem", None, 4096, 600, NodeState::Ready),
        node("cpu", None, 768, 4000, NodeState::Ready),
    ];
    let s = schedule(
        &[pod("blog", 0, 1024, 1000)],
        &nodes,
        &BTreeMap::new(),
        reserve(),
    );
    assert_eq!(
        s.problems[0].detail,
        "blog/0 needs 1G of memory and 1 CPU on one node; node mem has 3840M and 500m, node cpu has 512M and 3900m"
    );
}

#[test]
fn two_pods_competing_for_one_node() {
    // Room for one 512M pod.
    let nodes = [ready("n1", 768)];
    // The larger wins, whatever the input order.
    let a = [pod("alpha", 0, 256, 0), pod("beta", 0, 512, 0)];
    let b = [pod("beta", 0, 512, 0), pod("alpha", 0, 256, 0)];
    for pods in [&a, &b] {
        let s = schedule(pods, &nodes, &BTreeMap::new(), reserve());
        assert_eq!(placed(&s), pairs(&[("beta/0", "n1")]));
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.problems[0].pod, PodKey::new("alpha", 0));
        assert_eq!(
            s.problems[0].detail,
            "alpha/0 needs 256M of memory; the largest free space is 0B, on node n1"
        );
    }
}

#[test]
fn every_app_gets_a_first_instance_before_any_gets_a_second() {
    // Room for two 256M pods.
    let nodes = [ready("n1", 768)];
    let pods = [
        pod("big", 0, 256, 0),
        pod("big", 1, 256, 0),
        pod("small", 0, 128, 0),
    ];
    let s = schedule(&pods, &nodes, &BTreeMap::new(), reserve());
    assert_eq!(placed(&s), pairs(&[("big/0", "n1"), ("small/0", "n1")]));
    assert_eq!(s.problems[0].pod, PodKey::new("big", 1));
}

#[test]
fn a_new_node_takes_waiting_pods_and_nothing_moves() {
    let mut nodes = vec![ready("n1", 1024)];
    let pods = [pod("blog", 0, 512, 0), pod("shop", 0, 512, 0)];
    let first = schedule(&pods, &nodes, &BTreeMap::new(), reserve());
    assert_eq!(placed(&first), pairs(&[("blog/0", "n1")]));
    assert_eq!(first.problems.len(), 1);

    nodes.push(ready("n2", 8192));
    let second = schedule(&pods, &nodes, &first.placements, reserve());
    assert_eq!(
        placed(&second),
        pairs(&[("blog/0", "n1"), ("shop/0", "n2")])
    );
    assert!(second.problems.is_empty());
}

#[test]
fn kept_pods_may_overcommit_and_new_ones_see_no_room() {
    // The node shrank (or pods grew) after placement: nothing moves, and
    // a new pod sees no room there.
    let nodes = [ready("n1", 512)];
    let pods = [pod("blog", 0, 512, 0), pod("shop", 0, 64, 0)];
    let s = schedule(&pods, &nodes, &current(&[("blog", 0, "n1")]), reserve());
    assert_eq!(placed(&s), pairs(&[("blog/0", "n1")]));
    assert_eq!(
        s.problems[0].detail,
        "shop/0 needs 64M of memory; the largest free space is 0B, on node n1"
    );
}

#[test]
fn current_entries_for_unknown_pods_are_ignored() {
    let nodes = [ready("n1", 1024)];
    let s = schedule(&[], &nodes, &current(&[("old", 0, "n1")]), reserve());
    assert!(s.placements.is_empty());
}
