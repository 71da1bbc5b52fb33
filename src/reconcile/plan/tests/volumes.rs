//! Volumes: pods that hold data move only on proof, stop before they
//! start elsewhere; durable volumes are made, attached and mounted before
//! their containers, follow their pod within its zone, and are never
//! formatted when they may hold data.

use super::*;

/// A database on a local volume.
const CACHE: &str = r#"
[apps.cache]
[apps.cache.volumes.data]
kind = "local"
[apps.cache.services.redis]
image = "redis:7"
memory = "64M"
volumes = ["data:/data"]
"#;

/// A database on a durable volume.
const DB: &str = r#"
[apps.db]
[apps.db.volumes.pgdata]
size = "10G"
[apps.db.services.postgres]
image = "postgres:16"
memory = "256M"
volumes = ["pgdata:/var/lib/postgresql/data"]
"#;

fn desired_ec2(apps: &str) -> Desired {
    let text = format!(
        "[fleet]\nname = \"hobby\"\n[discovery]\nprovider = \"ec2\"\n[lifecycle]\nfence_after = \"60s\"\n{apps}"
    );
    let fleet = crate::config::parse(Path::new("fleet.toml"), &text).unwrap();
    Desired::build(&fleet, &Secrets::default()).unwrap()
}

fn in_zone(id: &str, zone: &str) -> NodeView {
    NodeView {
        zone: Some(zone.into()),
        ..ready(id)
    }
}

fn ec2_world(apps: &str, nodes: Vec<NodeView>) -> World {
    let mut w = World::new("", nodes);
    w.desired = desired_ec2(apps);
    w
}

/// n1 stops answering: lost, not (yet) provably stopped.
fn lose(w: &mut World, id: &str) {
    w.reachable.remove(id);
    w.set_state(id, NodeState::Lost);
}

fn stop(w: &mut World, id: &str) {
    for n in &mut w.nodes {
        if n.id == id {
            n.stopped = true;
        }
    }
}

#[test]
fn a_pod_with_a_local_volume_gets_one_of_its_own_before_it_runs() {
    let mut w = World::new(CACHE, vec![ready("n1")]);
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "network cache/0",
                "pull redis:7",
                "local volume cache/0/data",
                "run cache/0 redis new",
            ]
        )])
    );
    let Action::Run { spec, .. } = &p.actions["n1"][3] else {
        panic!()
    };
    let argv = crate::reconcile::docker::run_argv(spec, None).unwrap();
    assert!(
        argv.contains(&"type=volume,src=prism.hobby.cache.0.data,dst=/data".to_owned()),
        "{argv:?}"
    );
    w.converge();
    assert!(w.plan().is_empty());
}

#[test]
fn two_instances_on_one_node_get_two_volumes() {
    let apps = CACHE.replace("[apps.cache]", "[apps.cache]\ninstances = 2");
    let mut w = World::new(&apps, vec![ready("n1")]);
    w.converge();
    assert_eq!(w.layout(), ["n1 cache/0 redis", "n1 cache/1 redis"]);
    assert_eq!(
        w.storage.local["n1"],
        BTreeSet::from([
            "prism.hobby.cache.0.data".to_owned(),
            "prism.hobby.cache.1.data".to_owned()
        ])
    );
}

#[test]
fn a_pod_that_holds_data_stays_on_a_node_that_stops_answering_until_it_is_stopped() {
    let mut w = World::new(CACHE, vec![ready("n1"), ready("n2")]);
    w.converge();
    assert_eq!(w.placements[0].node_id, "n1");
    lose(&mut w, "n1");
    let p = w.plan();
    // A blip is no proof: nothing starts elsewhere.
    assert!(p.is_empty(), "{:?}", actions(&p));
    assert_eq!(
        problems(&p),
        [
            "! holds data: cache/0 holds data and stays on node n1, which does not answer: it moves once EC2 reports the instance stopped or terminated, or Prism fences it ([lifecycle] fence)"
        ]
    );
    assert_eq!(p.placements[0].node, "n1");
    // EC2 says the instance stopped: it moves, on a volume of its own there.
    stop(&mut w, "n1");
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move cache/0 from node n1 to node n2"]);
    assert_eq!(
        actions(&p),
        table(&[(
            "n2",
            &[
                "network cache/0",
                "pull redis:7",
                "local volume cache/0/data",
                "run cache/0 redis move from n1",
            ]
        )])
    );
}

#[test]
fn a_stateless_pod_still_moves_at_once() {
    let mut w = World::new(SHOP, vec![ready("n1"), ready("n2")]);
    w.converge();
    lose(&mut w, "n1");
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move shop/0 from node n1 to node n2"]);
    assert!(p.problems.is_empty());
}

#[test]
fn a_drain_stops_a_pod_that_holds_data_before_it_starts_elsewhere() {
    let mut w = World::new(CACHE, vec![ready("n1"), ready("n2")]);
    w.converge();
    w.set_state("n1", NodeState::Draining);
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move cache/0 from node n1 to node n2"]);
    // Stopped here first; nothing starts there while it runs here.
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &["remove cache/0 redis moves to n2", "remove network cache/0"]
        )])
    );
    assert_eq!(
        p.waiting,
        ["cache/0 waits on node n2 until its containers on node n1 are gone"]
    );
    w.apply(&p);
    // The placement moved with the first plan.
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n2",
            &[
                "network cache/0",
                "pull redis:7",
                "local volume cache/0/data",
                "run cache/0 redis new",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["n2 cache/0 redis"]);
}

#[test]
fn an_image_not_read_yet_is_pulled_but_not_run() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.unread.insert("reg.example.com/shop:2".into());
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "network shop/0",
                "pull reg.example.com/shop:2 login reg.example.com"
            ]
        )])
    );
    assert_eq!(
        p.waiting,
        [
            "shop/0 web waits until node n1 has read the volumes image reg.example.com/shop:2 declares"
        ]
    );
    w.apply(&p);
    w.unread.clear();
    w.converge();
    assert_eq!(w.layout(), ["n1 shop/0 web"]);
}

#[test]
fn paths_an_image_declares_get_volumes_of_the_pod_and_a_change_stops_first() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.declared
        .insert("reg.example.com/shop:2".into(), vec!["/data".into()]);
    w.declared
        .insert("reg.example.com/shop:3".into(), vec!["/data".into()]);
    let p = w.plan();
    let runs: Vec<&RunSpec> = p.actions["n1"]
        .iter()
        .filter_map(|a| match a {
            Action::Run { spec, .. } => Some(spec.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(runs[0].image_mounts, ["/data"]);
    assert!(
        actions(&p)["n1"].contains(&"local volume shop/0/web:/data".to_owned()),
        "{:?}",
        actions(&p)
    );
    w.converge();
    // A new spec: the old container goes first, the new one gets the same
    // volume (made already: nothing to copy).
    w.desired = desired(&SHOP.replace("shop:2", "shop:3"));
    let p = w.plan();
    assert_eq!(
        actions(&p)["n1"][2..],
        ["remove shop/0 web stop first", "run shop/0 web replace"]
    );
}

#[test]
fn a_new_local_volume_is_filled_from_what_the_old_container_had_there() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.declared
        .insert("reg.example.com/shop:2".into(), vec!["/data".into()]);
    w.converge();
    // As a container made before volumes belonged to pods: Docker gave it
    // an anonymous volume at the image's path.
    let c = w.find_mut("n1", "web");
    c.volumes = BTreeMap::from([("/data".to_owned(), "f00d".repeat(16))]);
    w.storage.local.get_mut("n1").unwrap().clear();
    w.desired = desired(&SHOP.replace("shop:2", "shop:3"));
    w.declared
        .insert("reg.example.com/shop:3".into(), vec!["/data".into()]);
    let p = w.plan();
    let seeded = format!("local volume shop/0/web:/data from {}", "f00d".repeat(16));
    assert_eq!(
        actions(&p)["n1"][2..],
        [
            "remove shop/0 web stop first",
            seeded.as_str(),
            "run shop/0 web replace"
        ]
    );
}

#[test]
fn a_durable_volume_is_made_in_its_node_s_zone_attached_and_mounted_before_its_pod_runs() {
    let mut w = ec2_world(DB, vec![in_zone("i-1", "eu-north-1a")]);
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[("i-1", &["create volume db/0/pgdata in eu-north-1a"])])
    );
    assert_eq!(
        p.waiting,
        ["db/0 waits on node i-1: db/0/pgdata is being created in eu-north-1a"]
    );
    w.apply(&p);
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "i-1",
            &[
                "attach db/0/pgdata",
                "mount db/0/pgdata may format",
                "network db/0",
                "pull postgres:16",
                "run db/0 postgres new",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty(), "{:?}", actions(&w.plan()));
    // Mounted once: never formatted again.
    let v = &w.storage.ebs.as_ref().unwrap()[0];
    assert_eq!(v.formatted.as_deref(), Some("ext4"));
    w.storage.mounted.get_mut("i-1").unwrap().clear();
    let p = w.plan();
    assert_eq!(actions(&p), table(&[("i-1", &["mount db/0/pgdata"])]));
}

#[test]
fn a_volume_from_a_snapshot_is_never_formatted() {
    let apps = DB.replace(
        "size = \"10G\"",
        "size = \"10G\"\nfrom_snapshot = \"snap-0123456789abcdef0\"",
    );
    let mut w = ec2_world(&apps, vec![in_zone("i-1", "eu-north-1a")]);
    w.apply(&w.plan());
    w.storage.ebs.as_mut().unwrap()[0].snapshot_id = Some("snap-0123456789abcdef0".into());
    let p = w.plan();
    assert_eq!(
        actions(&p)["i-1"][..2],
        ["attach db/0/pgdata", "mount db/0/pgdata"]
    );
}

#[test]
fn a_durable_pod_follows_its_volume_to_a_node_of_its_zone_once_its_node_is_terminated() {
    let mut w = ec2_world(
        DB,
        vec![
            in_zone("i-1", "eu-north-1a"),
            in_zone("i-2", "eu-north-1b"),
            in_zone("i-3", "eu-north-1a"),
        ],
    );
    w.converge();
    assert_eq!(w.placements[0].node_id, "i-1");
    // i-1 is terminated: EC2 no longer lists it, and still shows the
    // volume attached to it for a while.
    w.reachable.remove("i-1");
    w.nodes.retain(|n| n.id != "i-1");
    w.storage.ended.insert("i-1".into());
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move db/0 from node i-1 to node i-3"]);
    assert_eq!(
        actions(&p),
        table(&[(
            "i-3",
            &[
                "force-detach db/0/pgdata from i-1",
                "attach db/0/pgdata",
                "mount db/0/pgdata",
                "network db/0",
                "pull postgres:16",
                "run db/0 postgres move from i-1",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
}

#[test]
fn no_node_in_the_volume_s_zone_is_a_problem_naming_the_zone() {
    let mut w = ec2_world(
        DB,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-2", "eu-north-1b")],
    );
    w.converge();
    w.reachable.remove("i-1");
    w.nodes.retain(|n| n.id != "i-1");
    w.storage.ended.insert("i-1".into());
    let p = w.plan();
    assert!(p.actions.is_empty(), "{:?}", actions(&p));
    assert_eq!(
        problems(&p),
        [
            "! no node in zone: db/0 has its durable volumes in zone eu-north-1a, where no node is ready"
        ]
    );
}

#[test]
fn a_volume_attached_to_an_instance_not_of_the_fleet_is_left_alone() {
    let mut w = ec2_world(
        DB,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-3", "eu-north-1a")],
    );
    w.converge();
    w.reachable.remove("i-1");
    w.nodes.retain(|n| n.id != "i-1");
    // Not listed as terminated: someone else's machine, as far as Prism
    // can tell.
    let p = w.plan();
    assert!(
        !p.all_actions()
            .any(|(_, a)| matches!(a, Action::DetachVolume { .. })),
        "{:?}",
        actions(&p)
    );
    assert!(
        p.waiting[0].contains("which is not a node of the fleet: Prism leaves it alone"),
        "{:?}",
        p.waiting
    );
}

#[test]
fn a_drained_durable_pod_is_stopped_unmounted_and_detached_before_it_attaches_elsewhere() {
    let mut w = ec2_world(
        DB,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-3", "eu-north-1a")],
    );
    w.converge();
    w.set_state("i-1", NodeState::Draining);
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "i-1",
            &[
                "remove db/0 postgres moves to i-3",
                "remove network db/0",
                "unmount db/0/pgdata",
                "detach db/0/pgdata from i-1",
            ]
        )])
    );
    w.apply(&p);
    let p = w.plan();
    assert_eq!(
        actions(&p)["i-3"][..3],
        ["attach db/0/pgdata", "mount db/0/pgdata", "network db/0"]
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["i-3 db/0 postgres"]);
}

#[test]
fn a_removed_app_s_volume_is_unmounted_and_detached_and_kept() {
    let mut w = ec2_world(DB, vec![in_zone("i-1", "eu-north-1a")]);
    w.converge();
    w.desired = desired_ec2("");
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "i-1",
            &[
                "remove db/0 postgres app removed",
                "remove network db/0",
                "unmount db/0/pgdata",
                "detach db/0/pgdata from i-1",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    // Kept in EC2, available.
    let v = &w.storage.ebs.as_ref().unwrap()[0];
    assert_eq!(
        (v.state, v.attachment.is_none()),
        (EbsState::Available, true)
    );
}

#[test]
fn a_node_silent_past_fence_after_that_holds_data_is_fenced() {
    let mut w = ec2_world(
        DB,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-3", "eu-north-1a")],
    );
    w.converge();
    lose(&mut w, "i-1");
    let silent = |w: &mut World, secs| {
        for n in &mut w.nodes {
            if n.id == "i-1" {
                n.silent_for = Some(std::time::Duration::from_secs(secs));
            }
        }
    };
    silent(&mut w, 30);
    assert!(w.plan().actions.is_empty());
    silent(&mut w, 61);
    let p = w.plan();
    assert_eq!(actions(&p), table(&[("i-1", &["fence i-1"])]));
    let Action::Fence { pods, .. } = &p.actions["i-1"][0] else {
        panic!()
    };
    assert_eq!(pods, &[PodKey::new("db", 0)]);
    // Terminated: EC2 lists it as such, and the pod moves.
    w.apply(&p);
    w.nodes.retain(|n| n.id != "i-1");
    w.storage.ended.insert("i-1".into());
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move db/0 from node i-1 to node i-3"]);
    // With `fence = "never"`, a person decides.
    let mut never = ec2_world(
        DB,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-3", "eu-north-1a")],
    );
    never.desired.fence_after = None;
    never.converge();
    lose(&mut never, "i-1");
    silent(&mut never, 3600);
    assert!(never.plan().actions.is_empty());
}

fn ask_delete(id: i64, volume: &str, node: Option<&str>) -> crate::store::Request {
    crate::store::Request {
        id,
        at: 0,
        kind: crate::store::RequestKind::DeleteVolume,
        node_id: node.map(Into::into),
        container: Some(volume.into()),
        by: "prism volumes delete (pid 1)".into(),
        state: crate::store::RequestState::Running,
        done_at: None,
        result: None,
    }
}

#[test]
fn volumes_are_listed_with_whether_fleet_toml_still_wants_them() {
    let apps = format!("{DB}{CACHE}");
    let mut w = ec2_world(&apps, vec![in_zone("i-1", "eu-north-1a")]);
    w.converge();
    let lines = w.storage.lines(&w.desired);
    let brief: Vec<String> = lines
        .volumes
        .iter()
        .map(|v| {
            format!(
                "{}/{}/{} {} {} {} {}",
                v.app,
                v.instance,
                v.volume,
                v.kind.as_str(),
                v.node.as_deref().unwrap_or("-"),
                v.state,
                v.wanted
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            "cache/0/data local i-1 present true",
            "db/0/pgdata durable i-1 in-use, attached true",
        ]
    );
    assert!(!lines.ebs_unlisted);
    // Removed from fleet.toml: kept, and said so.
    w.desired = desired_ec2(CACHE);
    let lines = w.storage.lines(&w.desired);
    let db = lines.volumes.iter().find(|v| v.app == "db").unwrap();
    assert!(!db.wanted);
    // EC2 unlisted: said so, and the local volumes are still there.
    w.storage.ebs = None;
    let lines = w.storage.lines(&w.desired);
    assert!(lines.ebs_unlisted);
    assert_eq!(lines.volumes.len(), 1);
}

#[test]
fn only_a_volume_fleet_toml_no_longer_wants_and_nothing_uses_is_deleted() {
    let apps = format!("{DB}{CACHE}");
    let mut w = ec2_world(&apps, vec![in_zone("i-1", "eu-north-1a")]);
    w.converge();
    let ebs = w.storage.ebs.as_ref().unwrap()[0].id.clone();
    let local = "prism.hobby.cache.0.data";
    let asks = [ask_delete(1, &ebs, None), ask_delete(2, local, Some("i-1"))];
    let plan = |w: &World| crate::reconcile::plan_deletes(&w.desired, &asks, &w.nodes, &w.storage);

    // Still in fleet.toml: both refused, nothing planned.
    let d = plan(&w);
    assert!(d.actions.is_empty());
    assert_eq!(d.refused.len(), 2);
    assert!(
        d.refused[0].1.contains("still in fleet.toml"),
        "{:?}",
        d.refused
    );

    // Both apps removed, but the EBS volume is still attached: refused
    // until a pass has detached it.
    w.desired = desired_ec2("");
    let d = plan(&w);
    assert!(
        d.refused
            .iter()
            .any(|(id, why)| *id == 1 && why.contains("attached")),
        "{:?}",
        d.refused
    );
    assert!(
        d.actions["i-1"]
            .iter()
            .any(|a| matches!(a, Action::DeleteVolume { request: 2, .. }))
    );

    // Once detached, deleted.
    w.converge();
    let d = plan(&w);
    assert!(d.refused.is_empty(), "{:?}", d.refused);
    let ids: Vec<String> = d.actions["i-1"].iter().map(ToString::to_string).collect();
    assert_eq!(
        ids,
        [
            format!("- delete db/0/pgdata (EBS volume {ebs}), as request 1 asks"),
            format!("- delete cache/0/data (Docker volume {local}), as request 2 asks"),
        ]
    );

    // Anything else is refused: a volume not the fleet's, a node not ready.
    let others = [
        ask_delete(3, "vol-0000000000000dead", None),
        ask_delete(4, "prism.other.cache.0.data", Some("i-1")),
        ask_delete(5, local, Some("i-9")),
        ask_delete(6, "some-volume", None),
    ];
    let d = crate::reconcile::plan_deletes(&w.desired, &others, &w.nodes, &w.storage);
    assert!(d.actions.is_empty());
    assert_eq!(d.refused.len(), 4, "{:?}", d.refused);
}

#[test]
fn a_volume_whose_zone_stays_empty_moves_through_a_snapshot_and_the_old_one_is_kept() {
    let mut w = ec2_world(
        DB,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-2", "eu-north-1b")],
    );
    w.converge();
    assert_eq!(w.placements[0].node_id, "i-1");
    let old = w.storage.ebs.as_ref().unwrap()[0].id.clone();
    // i-1 is terminated; EC2 still shows the volume attached a while.
    w.reachable.remove("i-1");
    w.nodes.retain(|n| n.id != "i-1");
    w.storage.ended.insert("i-1".into());
    let empty = |w: &mut World, secs| {
        w.storage
            .zones_empty_for
            .insert("eu-north-1a".into(), std::time::Duration::from_secs(secs));
    };
    empty(&mut w, 30);
    let p = w.plan();
    assert!(p.actions.is_empty(), "{:?}", actions(&p));
    assert!(
        p.waiting.iter().any(|l| l.contains("after 300s")),
        "{:?}",
        p.waiting
    );
    // Past zone_wait, but still attached to the terminated instance: it
    // waits until EC2 has detached it.
    empty(&mut w, 301);
    assert!(w.plan().actions.is_empty());
    let v = w.ebs_mut(&old);
    v.state = EbsState::Available;
    v.attachment = None;
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[("i-2", &["snapshot db/0/pgdata to move to eu-north-1b"])])
    );
    w.apply(&p);
    // Pending: nothing more until it completes.
    let p = w.plan();
    assert!(p.actions.is_empty(), "{:?}", actions(&p));
    assert!(
        p.waiting.iter().any(|l| l.contains("is pending")),
        "{:?}",
        p.waiting
    );
    w.storage.snapshots.as_mut().unwrap()[0].state = SnapshotState::Completed;
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "i-2",
            &[&*format!(
                "create volume db/0/pgdata in eu-north-1b from {old}"
            )]
        )])
    );
    w.apply(&p);
    // The pod follows its new volume (it lost its place with its zone's
    // last node); made from a snapshot, it is never formatted.
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place db/0 on node i-2"]);
    assert_eq!(
        actions(&p)["i-2"][..2],
        ["attach db/0/pgdata", "mount db/0/pgdata"]
    );
    w.converge();
    // (i-1's containers died with it; the World only stops observing it.)
    assert!(w.layout().contains(&"i-2 db/0 postgres".to_owned()));
    assert!(w.plan().is_empty());
    // The old volume is kept, shown as moved and no longer wanted.
    let lines = w.storage.lines(&w.desired);
    let kept = lines.volumes.iter().find(|v| v.id == old).unwrap();
    assert!(!kept.wanted);
    assert!(
        kept.state.contains("moved to another zone"),
        "{}",
        kept.state
    );
    assert_eq!(w.storage.ebs.as_ref().unwrap().len(), 2);
}

#[test]
fn scheduled_snapshots_are_taken_of_every_instance_s_volume() {
    let db = DB.replace(
        "size = \"10G\"",
        "size = \"10G\"\nsnapshots = { schedule = \"0 3 * * *\", keep = 7 }",
    );
    let apps = db.replace("[apps.db]", "[apps.db]\ninstances = 2");
    let mut w = ec2_world(
        &apps,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-2", "eu-north-1b")],
    );
    w.converge();
    let tick = |instance| crate::reconcile::SnapshotTick {
        app: "db".into(),
        volume: "pgdata".into(),
        instance,
        at: 0,
    };
    let p = crate::reconcile::plan_snapshots(&w.desired, &[tick(None)], &w.nodes, &w.storage);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    let on: Vec<(String, Vec<String>)> = p
        .actions
        .iter()
        .map(|(n, a)| (n.clone(), a.iter().map(brief).collect()))
        .collect();
    assert_eq!(
        on,
        [
            (
                "i-1".to_owned(),
                vec!["snapshot db/0/pgdata keep 7".to_owned()]
            ),
            (
                "i-2".to_owned(),
                vec!["snapshot db/1/pgdata keep 7".to_owned()]
            ),
        ]
    );
    // Each planned tick names its instance, so that one carried over to
    // the next pass takes that instance's only.
    assert_eq!(p.planned[0].1.instance, Some(0));
    let again = crate::reconcile::plan_snapshots(
        &w.desired,
        &[p.planned[1].1.clone()],
        &w.nodes,
        &w.storage,
    );
    assert_eq!(again.planned.len(), 1);
    // An app without the schedule any more: skipped, said why.
    w.desired = desired_ec2(DB);
    let p = crate::reconcile::plan_snapshots(&w.desired, &[tick(None)], &w.nodes, &w.storage);
    assert!(p.actions.is_empty());
    assert_eq!(p.skipped.len(), 1);
}

/// A pod with two durable volumes, its zone emptied past zone_wait, both
/// volumes detached.
fn two_volume_world() -> (World, [String; 2]) {
    let db = DB
        .replace(
            "[apps.db.services.postgres]",
            "[apps.db.volumes.wal]\nsize = \"1G\"\n[apps.db.services.postgres]",
        )
        .replace(
            "volumes = [\"pgdata:/var/lib/postgresql/data\"]",
            "volumes = [\"pgdata:/var/lib/postgresql/data\", \"wal:/wal\"]",
        );
    let mut w = ec2_world(
        &db,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-2", "eu-north-1b")],
    );
    w.converge();
    assert_eq!(w.placements[0].node_id, "i-1");
    w.reachable.remove("i-1");
    w.nodes.retain(|n| n.id != "i-1");
    w.storage.ended.insert("i-1".into());
    for v in w.storage.ebs.as_mut().unwrap() {
        v.state = EbsState::Available;
        v.attachment = None;
    }
    w.storage.at_ms = 1_000_000;
    w.storage
        .zones_empty_for
        .insert("eu-north-1a".into(), std::time::Duration::from_secs(400));
    let ids = {
        let e = w.storage.ebs.as_ref().unwrap();
        [e[0].id.clone(), e[1].id.clone()]
    };
    (w, ids)
}

#[test]
fn a_pod_s_volumes_move_zones_together_and_only_from_fresh_snapshots() {
    let (mut w, ids) = two_volume_world();
    // A move snapshot from before the zone emptied (an earlier, aborted
    // move): it may miss later writes, so a new one is taken.
    w.storage.snapshots.as_mut().unwrap().push(EbsSnapshot {
        id: "snap-old".into(),
        key: Some(VolumeKey::new(&PodKey::new("db", 0), "pgdata")),
        volume_id: ids[0].clone(),
        state: SnapshotState::Completed,
        progress: Some("100%".into()),
        started_at: Some(1_000),
        purpose: SnapshotPurpose::Move,
    });
    let p = w.plan();
    let mut got = actions(&p)["i-2"].clone();
    got.sort();
    assert_eq!(
        got,
        [
            "snapshot db/0/pgdata to move to eu-north-1b",
            "snapshot db/0/wal to move to eu-north-1b",
        ]
    );
    // Fresh ones (taken after the zone emptied, i.e. from 600 000 ms).
    w.storage.snapshots.as_mut().unwrap().clear();
    for (n, (id, vol)) in ids.iter().zip(["pgdata", "wal"]).enumerate() {
        w.storage.snapshots.as_mut().unwrap().push(EbsSnapshot {
            id: format!("snap-{n}"),
            key: Some(VolumeKey::new(&PodKey::new("db", 0), vol)),
            volume_id: id.clone(),
            state: if n == 0 {
                SnapshotState::Completed
            } else {
                SnapshotState::Pending
            },
            progress: None,
            started_at: Some(900_000),
            purpose: SnapshotPurpose::Move,
        });
    }
    // One done, one pending: nothing made yet, so that the pod's volumes
    // end up in one zone.
    let p = w.plan();
    assert!(p.actions.is_empty(), "{:?}", actions(&p));
    w.storage.snapshots.as_mut().unwrap()[1].state = SnapshotState::Completed;
    let p = w.plan();
    assert_eq!(p.actions["i-2"].len(), 2, "{:?}", actions(&p));
    // Say only the first CreateVolume went through: the move goes on for
    // the other, and the pod waits in the new zone.
    let first = Plan {
        actions: [("i-2".to_owned(), vec![p.actions["i-2"][0].clone()])].into(),
        ..Plan::default()
    };
    w.apply(&first);
    let p = w.plan();
    assert_eq!(
        actions(&p)["i-2"]
            .iter()
            .filter(|a| a.starts_with("create volume"))
            .count(),
        1,
        "{:?}",
        actions(&p)
    );
    w.converge();
    assert!(w.layout().contains(&"i-2 db/0 postgres".to_owned()));
}

#[test]
fn no_node_is_fenced_when_most_of_them_are_silent() {
    let mut w = ec2_world(
        DB,
        vec![
            in_zone("i-1", "eu-north-1a"),
            in_zone("i-2", "eu-north-1a"),
            in_zone("i-3", "eu-north-1a"),
        ],
    );
    w.converge();
    let on = w.placements[0].node_id.clone();
    let others: Vec<String> = w
        .nodes
        .iter()
        .map(|n| n.id.clone())
        .filter(|id| *id != on)
        .collect();
    // The operator's own network fails: two of three silent for long.
    for id in [on.clone(), others[0].clone()] {
        lose(&mut w, &id);
        for n in &mut w.nodes {
            if n.id == id {
                n.silent_for = Some(std::time::Duration::from_secs(600));
            }
        }
    }
    assert!(
        !w.plan()
            .actions
            .values()
            .flatten()
            .any(|a| matches!(a, Action::Fence { .. })),
        "fenced while most nodes were silent"
    );
}

#[test]
fn a_volume_moved_to_another_zone_can_be_deleted() {
    let mut w = ec2_world(
        DB,
        vec![in_zone("i-1", "eu-north-1a"), in_zone("i-2", "eu-north-1b")],
    );
    w.converge();
    let old = w.storage.ebs.as_ref().unwrap()[0].clone();
    let v = w.ebs_mut(&old.id);
    v.state = EbsState::Available;
    v.attachment = None;
    let mut moved = old.clone();
    moved.id = "vol-0000000000000moved".into();
    moved.zone = "eu-north-1b".into();
    moved.moved_from = Some(old.id.clone());
    w.storage.ebs.as_mut().unwrap().push(moved);
    let asks = [ask_delete(1, &old.id, None)];
    let d = crate::reconcile::plan_deletes(&w.desired, &asks, &w.nodes, &w.storage);
    assert!(d.refused.is_empty(), "{:?}", d.refused);
    // The one it moved to is still wanted.
    let asks = [ask_delete(2, "vol-0000000000000moved", None)];
    let d = crate::reconcile::plan_deletes(&w.desired, &asks, &w.nodes, &w.storage);
    assert_eq!(d.refused.len(), 1);
}
