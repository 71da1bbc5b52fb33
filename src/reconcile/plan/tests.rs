//! Table tests of the planner, and a small simulated fleet that applies
//! plans the way Docker would (refusing a run without its network, image
//! or with a name in use) to check that plans converge and then stay empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::*;
use crate::config::{Bytes, Millicores};
use crate::observe::{Identity, LabelProblem};
use crate::reconcile::schedule::NodeState;
use crate::reconcile::secrets::{Secret, Secrets};
use crate::reconcile::storage::{
    AttachState, EbsAttachment, EbsSnapshot, EbsState, EbsVolume, SnapshotPurpose, SnapshotState,
};
use crate::reconcile::volumes::MountSpec;

const SECRET: &str = "TOPSECRET-VALUE";

const BLOG: &str = r#"
[apps.blog]
instances = 1
[apps.blog.services.web]
image = "reg.example.com/blog:1.4"
port = 8080
memory = "256M"
secrets = { APP_KEY = { env = "BLOG_KEY" } }
health = { http = "/up" }
depends_on = ["redis"]
[apps.blog.services.redis]
image = "redis:7"
memory = "64M"
"#;

const SHOP: &str = r#"
[apps.shop]
[apps.shop.services.web]
image = "reg.example.com/shop:2"
memory = "128M"
"#;

fn desired(apps: &str) -> Desired {
    let text = format!(
        r#"
[fleet]
name = "hobby"
[discovery]
provider = "static"
nodes = [{{ name = "n1", address = "10.0.0.1" }}]
[registries."reg.example.com"]
username = "bot"
password_env = "REG_PASSWORD"
{apps}"#
    );
    let fleet = crate::config::parse(Path::new("fleet.toml"), &text).unwrap();
    let mut secrets = Secrets::default();
    for (app, a) in &fleet.apps {
        for (svc, s) in &a.services {
            for name in s.secrets.keys() {
                secrets.insert(app, svc, name, Secret::new(SECRET));
            }
        }
    }
    Desired::build(&fleet, &secrets).unwrap()
}

fn node(id: &str, state: NodeState) -> NodeView {
    NodeView {
        id: id.into(),
        address: format!("10.0.0.{}", id.len()),
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

fn ready(id: &str) -> NodeView {
    node(id, NodeState::Ready)
}

/// A compact form of an action for table assertions.
fn brief(a: &Action) -> String {
    match a {
        Action::EnsureNetwork { pod, .. } => format!("network {pod}"),
        Action::Pull {
            image,
            login,
            policy,
            prepare,
        } => {
            let always = match policy {
                PullPolicy::Always => " always",
                PullPolicy::Missing => "",
            };
            let ahead = if *prepare { " to prepare" } else { "" };
            match login {
                Some(host) => format!("pull{always} {image} login {host}{ahead}"),
                None => format!("pull{always} {image}{ahead}"),
            }
        }
        Action::RemoveNetwork { pod, .. } => format!("remove network {pod}"),
        Action::Run { spec, reason } => {
            let why = match reason {
                RunReason::New => "new".to_owned(),
                RunReason::Replace { .. } => "replace".to_owned(),
                RunReason::Move { from } => format!("move from {from}"),
                RunReason::Recreate => "recreate".to_owned(),
            };
            format!("run {} {} {why}", spec.pod, spec.service)
        }
        Action::Start { container: c, .. } => format!("start {} {}", c.pod, c.service),
        Action::Restart { container: c, .. } => format!("restart {} {}", c.pod, c.service),
        Action::Remove {
            container: c,
            reason,
        } => {
            let why = match reason {
                RemoveReason::AppRemoved => "app removed".to_owned(),
                RemoveReason::ServiceRemoved => "service removed".to_owned(),
                RemoveReason::ScaledDown { instances } => format!("scaled down to {instances}"),
                RemoveReason::SpecChanged { .. } => "spec changed".to_owned(),
                RemoveReason::StopFirst { .. } => "stop first".to_owned(),
                RemoveReason::Stray { node } => format!("stray, on {node}"),
                RemoveReason::Duplicate { .. } => "duplicate".to_owned(),
                RemoveReason::Dead => "dead".to_owned(),
                RemoveReason::Moves { to } => format!("moves to {to}"),
            };
            format!("remove {} {} {why}", c.pod, c.service)
        }
        Action::EnsureLocalVolume { volume, seed, .. } => match seed {
            Some(from) => format!("local volume {volume} from {from}"),
            None => format!("local volume {volume}"),
        },
        Action::CreateVolume {
            volume,
            zone,
            moved_from,
            ..
        } => match moved_from {
            Some(old) => format!("create volume {volume} in {zone} from {old}"),
            None => format!("create volume {volume} in {zone}"),
        },
        Action::SnapshotVolume { volume, why, .. } => match why {
            SnapshotWhy::Scheduled { keep, .. } => format!("snapshot {volume} keep {keep}"),
            SnapshotWhy::Move { to_zone } => format!("snapshot {volume} to move to {to_zone}"),
        },
        Action::AttachVolume { volume, .. } => format!("attach {volume}"),
        Action::MountVolume {
            volume, may_format, ..
        } => {
            let fmt = if *may_format { " may format" } else { "" };
            format!("mount {volume}{fmt}")
        }
        Action::UnmountVolume { volume, .. } => format!("unmount {volume}"),
        Action::DetachVolume {
            volume,
            instance,
            force,
            ..
        } => {
            let how = if *force { "force-detach" } else { "detach" };
            format!("{how} {volume} from {instance}")
        }
        Action::Fence { instance, .. } => format!("fence {instance}"),
        // The pods' plan never holds these; jobs, asks and bootstrap add
        // them after it.
        Action::RunJob { .. }
        | Action::RemoveJob { .. }
        | Action::InstallDocker
        | Action::DeleteVolume { .. }
        | Action::SetUpMesh { .. }
        | Action::WriteNames { .. } => {
            panic!("not a pod action: {a}")
        }
    }
}

/// Per node, the brief actions.
fn actions(plan: &Plan) -> BTreeMap<String, Vec<String>> {
    plan.actions
        .iter()
        .map(|(n, a)| (n.clone(), a.iter().map(brief).collect()))
        .collect()
}

fn table(rows: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    rows.iter()
        .map(|(n, a)| ((*n).to_owned(), a.iter().map(|s| (*s).to_owned()).collect()))
        .collect()
}

fn changes(plan: &Plan) -> Vec<String> {
    plan.placement_changes
        .iter()
        .map(|c| c.to_string())
        .collect()
}

fn problems(plan: &Plan) -> Vec<String> {
    plan.problems.iter().map(|p| p.to_string()).collect()
}

/// A fleet of simulated nodes. Actions change it as Docker would.
struct World {
    desired: Desired,
    nodes: Vec<NodeView>,
    /// Per node: containers; only nodes in `reachable` are observed.
    containers: BTreeMap<String, Vec<ContainerState>>,
    networks: BTreeMap<String, BTreeSet<String>>,
    images: BTreeMap<String, BTreeSet<String>>,
    placements: Vec<Placement>,
    reachable: BTreeSet<String>,
    next: u64,
    /// Storage as observed; images not in `declared` nor `unread` declare
    /// no volumes.
    storage: Storage,
    declared: BTreeMap<String, Vec<String>>,
    unread: BTreeSet<String>,
    next_volume: u64,
}

impl World {
    fn new(apps: &str, nodes: Vec<NodeView>) -> World {
        let reachable = nodes.iter().map(|n| n.id.clone()).collect();
        let containers = nodes.iter().map(|n| (n.id.clone(), Vec::new())).collect();
        World {
            desired: desired(apps),
            nodes,
            containers,
            networks: BTreeMap::new(),
            images: BTreeMap::new(),
            placements: Vec::new(),
            reachable,
            next: 1,
            storage: Storage {
                ebs: Some(Vec::new()),
                snapshots: Some(Vec::new()),
                ..Storage::default()
            },
            declared: BTreeMap::new(),
            unread: BTreeSet::new(),
            next_volume: 1,
        }
    }

    /// Storage as the planner sees it this round.
    fn storage(&self) -> Storage {
        let mut s = self.storage.clone();
        s.mounted.retain(|n, _| self.reachable.contains(n));
        s.local.retain(|n, _| self.reachable.contains(n));
        for node in &self.reachable {
            s.mounted.entry(node.clone()).or_default();
            s.local.entry(node.clone()).or_default();
        }
        s.image_volumes = self
            .desired
            .images()
            .into_iter()
            .filter(|i| !self.unread.contains(i))
            .map(|i| {
                let paths = self.declared.get(&i).cloned().unwrap_or_default();
                (i, paths)
            })
            .collect();
        s
    }

    fn ebs_mut(&mut self, id: &str) -> &mut EbsVolume {
        self.storage
            .ebs
            .as_mut()
            .unwrap()
            .iter_mut()
            .find(|v| v.id == id)
            .unwrap()
    }

    fn observed(&self) -> BTreeMap<String, Vec<ContainerState>> {
        self.containers
            .iter()
            .filter(|(n, _)| self.reachable.contains(*n))
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }

    fn plan(&self) -> Plan {
        plan(
            &self.desired,
            &self.nodes,
            &self.observed(),
            &self.placements,
            &self.storage(),
        )
    }

    fn set_state(&mut self, id: &str, state: NodeState) {
        for n in &mut self.nodes {
            if n.id == id {
                n.state = state;
            }
        }
    }

    fn on(&self, node: &str) -> &Vec<ContainerState> {
        &self.containers[node]
    }

    fn find_mut(&mut self, node: &str, service: &str) -> &mut ContainerState {
        self.containers
            .get_mut(node)
            .unwrap()
            .iter_mut()
            .find(|c| c.identity.prism().is_some_and(|l| l.service == service))
            .unwrap()
    }

    fn with_spec(&mut self, node: &str, spec: &str) -> &mut ContainerState {
        self.containers
            .get_mut(node)
            .unwrap()
            .iter_mut()
            .find(|c| c.identity.prism().is_some_and(|l| l.spec == spec))
            .unwrap()
    }

    /// Adds a container as Docker would run it (running, healthy).
    fn add(&mut self, node: &str, labels: PrismLabels, name: &str, image: &str) -> ContainerId {
        let id = ContainerId::parse(&format!("{:064x}", self.next)).unwrap();
        self.next += 1;
        let state = ContainerState {
            id: id.clone(),
            name: name.into(),
            image: image.into(),
            image_id: "sha256:00".into(),
            identity: Identity::Prism(labels),
            state: RunState::Running,
            health: Health::Healthy,
            exit_code: 0,
            error: None,
            oom_killed: false,
            restart_count: 0,
            created_at: self.next as i64,
            started_at: Some(self.next as i64),
            finished_at: None,
            ports: vec![],
            volumes: BTreeMap::new(),
            mesh_ip: None,
        };
        self.containers
            .entry(node.to_owned())
            .or_default()
            .push(state);
        id
    }

    fn add_foreign(&mut self, node: &str, name: &str, problem: LabelProblem) {
        let labels = PrismLabels {
            fleet: "x".into(),
            app: "x".into(),
            service: "x".into(),
            instance: 0,
            spec: "x".into(),
        };
        self.add(node, labels, name, "busybox");
        let c = self.containers.get_mut(node).unwrap().last_mut().unwrap();
        c.identity = Identity::Foreign(problem);
    }

    /// Applies a plan as the apply side would; panics where Docker would
    /// fail.
    fn apply(&mut self, plan: &Plan) {
        for change in &plan.placement_changes {
            match change {
                PlacementChange::Place { pod, node, .. } => {
                    self.placements
                        .retain(|p| !(p.app == pod.app && p.instance == pod.instance));
                    self.placements.push(Placement {
                        app: pod.app.clone(),
                        instance: pod.instance,
                        node_id: node.clone(),
                        placed_at: 0,
                    });
                }
                PlacementChange::Unplace { pod, .. } => self
                    .placements
                    .retain(|p| !(p.app == pod.app && p.instance == pod.instance)),
            }
        }
        for (node, acts) in &plan.actions {
            assert!(
                self.reachable.contains(node)
                    || acts.iter().all(|a| matches!(a, Action::Fence { .. })),
                "actions for unobserved {node}"
            );
            for a in acts {
                self.apply_one(node, a);
            }
        }
    }

    fn apply_one(&mut self, node: &str, a: &Action) {
        match a {
            Action::EnsureNetwork { network, .. } => {
                self.networks
                    .entry(node.into())
                    .or_default()
                    .insert(network.clone());
            }
            Action::RemoveNetwork { network, .. } => {
                assert!(
                    !self
                        .on(node)
                        .iter()
                        .any(|c| c.name.starts_with(&format!("{network}."))),
                    "network {network} removed on {node} while a container uses it"
                );
                // "No such network" counts as done, as apply takes it.
                if let Some(n) = self.networks.get_mut(node) {
                    n.remove(network);
                }
            }
            Action::Pull { image, .. } => {
                self.images
                    .entry(node.into())
                    .or_default()
                    .insert(image.clone());
            }
            Action::Run { spec, .. } => {
                assert!(
                    self.networks
                        .get(node)
                        .is_some_and(|n| n.contains(&spec.network)),
                    "run {} before its network",
                    spec.name
                );
                assert!(
                    self.images
                        .get(node)
                        .is_some_and(|i| i.contains(&spec.config.image)),
                    "run {} before its pull",
                    spec.name
                );
                assert!(
                    !self.on(node).iter().any(|c| c.name == spec.name),
                    "name {} already in use on {node}",
                    spec.name
                );
                for m in &spec.config.mounts {
                    if let MountSpec::Volume { name, kind, .. } = m {
                        let vname = VolumeKey::new(&spec.pod, name).name("hobby");
                        let present = match kind {
                            crate::config::VolumeKind::Local => self
                                .storage
                                .local
                                .get(node)
                                .is_some_and(|v| v.contains(&vname)),
                            crate::config::VolumeKind::Durable => self
                                .storage
                                .mounted
                                .get(node)
                                .is_some_and(|m| m.contains_key(&vname)),
                        };
                        assert!(present, "run {} before its volume {vname}", spec.name);
                    }
                }
                let has_check = self
                    .desired
                    .app_of(&spec.pod)
                    .and_then(|a| a.service(&spec.service))
                    .is_some_and(|s| s.health.is_some());
                self.add(node, spec.labels(), &spec.name, &spec.config.image);
                let c = self.containers.get_mut(node).unwrap().last_mut().unwrap();
                c.health = if has_check {
                    Health::Healthy
                } else {
                    Health::None
                };
            }
            Action::Start { container, .. } => {
                let c = self.by_id(node, &container.id);
                assert!(matches!(c.state, RunState::Created | RunState::Exited));
                c.state = RunState::Running;
            }
            Action::Restart { container, .. } => {
                let c = self.by_id(node, &container.id);
                c.health = Health::Healthy;
                c.restart_count += 1;
            }
            Action::Remove { container, .. } => {
                let list = self.containers.get_mut(node).unwrap();
                let before = list.len();
                list.retain(|c| c.id != container.id);
                assert_eq!(list.len() + 1, before, "remove of a missing container");
            }
            Action::EnsureLocalVolume { name, .. } => {
                self.storage
                    .local
                    .entry(node.into())
                    .or_default()
                    .insert(name.clone());
            }
            Action::CreateVolume {
                volume,
                zone,
                ebs,
                moved_from,
            } => {
                let id = format!("vol-{:017x}", self.next_volume);
                self.next_volume += 1;
                self.storage.ebs.as_mut().unwrap().push(EbsVolume {
                    id,
                    key: Some(volume.clone()),
                    zone: zone.clone(),
                    size_gib: 10,
                    state: EbsState::Available,
                    attachment: None,
                    snapshot_id: ebs.from_snapshot.clone(),
                    formatted: None,
                    moved_from: moved_from.clone(),
                    created_at: Some(0),
                });
            }
            // Taken pending; a test completes it.
            Action::SnapshotVolume { volume, id, why } => {
                let n = self.storage.snapshots.as_ref().unwrap().len();
                self.storage.snapshots.as_mut().unwrap().push(EbsSnapshot {
                    id: format!("snap-{n:017x}"),
                    key: Some(volume.clone()),
                    volume_id: id.clone(),
                    state: SnapshotState::Pending,
                    progress: Some("0%".into()),
                    started_at: Some(i64::try_from(n).unwrap()),
                    purpose: match why {
                        SnapshotWhy::Scheduled { .. } => SnapshotPurpose::Scheduled,
                        SnapshotWhy::Move { .. } => SnapshotPurpose::Move,
                    },
                });
            }
            Action::AttachVolume { id, devices, .. } => {
                let node = node.to_owned();
                let v = self.ebs_mut(id);
                assert_eq!(v.state, EbsState::Available, "attach of {id} in use");
                v.state = EbsState::InUse;
                v.attachment = Some(EbsAttachment {
                    instance: node,
                    device: devices[0].clone(),
                    state: AttachState::Attached,
                });
            }
            Action::MountVolume { id, name, .. } => {
                let v = self.ebs_mut(id);
                assert_eq!(
                    v.attachment.as_ref().map(|a| a.instance.as_str()),
                    Some(node),
                    "mount of {id} not attached here"
                );
                v.formatted = Some("ext4".into());
                self.storage
                    .mounted
                    .entry(node.into())
                    .or_default()
                    .insert(name.clone(), "/dev/sdf".into());
            }
            Action::UnmountVolume { name, .. } => {
                let uses = self.on(node).iter().any(|c| {
                    c.identity
                        .prism()
                        .is_some_and(|l| name.contains(&format!(".{}.{}.", l.app, l.instance)))
                });
                assert!(!uses, "unmount of {name} while its pod runs on {node}");
                self.storage.mounted.get_mut(node).unwrap().remove(name);
            }
            Action::DetachVolume {
                id,
                instance,
                force,
                ..
            } => {
                let mounted_there = self
                    .storage
                    .mounted
                    .get(instance)
                    .is_some_and(|m| m.keys().any(|n| self.ebs_name_of(id) == Some(n.clone())));
                assert!(*force || !mounted_there, "detach of {id} while mounted");
                let v = self.ebs_mut(id);
                v.state = EbsState::Available;
                v.attachment = None;
            }
            Action::Fence { instance, .. } => {
                for n in &mut self.nodes {
                    if &n.id == instance {
                        n.stopped = true;
                    }
                }
            }
            Action::RunJob { .. }
            | Action::RemoveJob { .. }
            | Action::InstallDocker
            | Action::DeleteVolume { .. }
            | Action::SetUpMesh { .. }
            | Action::WriteNames { .. } => {
                panic!("not a pod action: {a}")
            }
        }
    }

    fn ebs_name_of(&self, id: &str) -> Option<String> {
        self.storage
            .ebs
            .iter()
            .flatten()
            .find(|v| v.id == id)
            .and_then(|v| v.key.as_ref())
            .map(|k| k.name("hobby"))
    }

    fn by_id(&mut self, node: &str, id: &ContainerId) -> &mut ContainerState {
        self.containers
            .get_mut(node)
            .unwrap()
            .iter_mut()
            .find(|c| &c.id == id)
            .unwrap()
    }

    /// Plans and applies until a plan is empty; returns how many plans had
    /// something to do. Fails if it does not settle.
    fn converge(&mut self) -> usize {
        for round in 0..6 {
            let p = self.plan();
            if p.is_empty() {
                return round;
            }
            self.apply(&p);
        }
        panic!("no fixpoint after 6 rounds: {:#?}", actions(&self.plan()));
    }

    /// (node, pod, service) of every Prism container, sorted: checks there
    /// is exactly one per desired service.
    fn layout(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .containers
            .iter()
            .flat_map(|(n, list)| {
                list.iter().filter_map(move |c| {
                    let l = c.identity.prism()?;
                    Some(format!("{n} {}/{} {}", l.app, l.instance, l.service))
                })
            })
            .collect();
        out.sort();
        out
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn empty_fleet_on_empty_nodes_does_nothing() {
    let w = World::new("", vec![ready("n1")]);
    let p = w.plan();
    assert!(p.is_empty());
    assert_eq!(p, Plan::default());
}

#[test]
fn fresh_deploy_then_nothing() {
    let mut w = World::new(BLOG, vec![ready("n1")]);
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "network blog/0",
                "pull redis:7",
                "pull reg.example.com/blog:1.4 login reg.example.com",
                "run blog/0 redis new",
                "run blog/0 web new",
            ]
        )])
    );
    assert_eq!(changes(&p), ["+ place blog/0 on node n1"]);
    assert_eq!(
        p.placements,
        [PodPlacement {
            pod: PodKey::new("blog", 0),
            node: "n1".into()
        }]
    );
    assert!(p.problems.is_empty());
    w.apply(&p);
    // Idempotent: observed == desired gives an empty plan.
    assert!(w.plan().is_empty(), "{:#?}", actions(&w.plan()));
    assert_eq!(w.layout(), ["n1 blog/0 redis", "n1 blog/0 web"]);
}

#[test]
fn run_specs_carry_the_containers_identity() {
    let w = World::new(BLOG, vec![ready("n1")]);
    let p = w.plan();
    let Action::Run { spec, .. } = &p.actions["n1"][4] else {
        panic!("not a run: {:?}", p.actions["n1"][4]);
    };
    let web = w.desired.apps["blog"].service("web").unwrap();
    assert_eq!(spec.name, format!("prism.hobby.blog.0.web.{}", web.spec));
    assert_eq!(spec.network, "prism.hobby.blog.0");
    assert_eq!(spec.spec, web.spec);
    assert_eq!(spec.config, web.container);
}

#[test]
fn a_half_done_apply_converges_without_duplicates() {
    let mut w = World::new(BLOG, vec![ready("n1")]);
    let p = w.plan();
    // Killed after redis was run and web created but not started.
    w.apply(&Plan {
        actions: BTreeMap::from([("n1".to_owned(), p.actions["n1"][..5].to_vec())]),
        placement_changes: vec![],
        ..Plan::default()
    });
    w.find_mut("n1", "web").state = RunState::Created;
    let p = w.plan();
    // The placement was never stored: it is adopted where the pod runs.
    assert_eq!(changes(&p), ["+ place blog/0 on node n1"]);
    assert_eq!(actions(&p), table(&[("n1", &["start blog/0 web"])]));
    w.apply(&p);
    assert_eq!(w.converge(), 0);
    assert_eq!(w.layout(), ["n1 blog/0 redis", "n1 blog/0 web"]);

    // Killed after redis only: web is run, with its network and pull again.
    let mut w = World::new(BLOG, vec![ready("n1")]);
    let p = w.plan();
    w.apply(&Plan {
        actions: BTreeMap::from([("n1".to_owned(), p.actions["n1"][..4].to_vec())]),
        ..p.clone()
    });
    assert_eq!(
        actions(&w.plan()),
        table(&[(
            "n1",
            &[
                "network blog/0",
                "pull reg.example.com/blog:1.4 login reg.example.com",
                "run blog/0 web new",
            ]
        )])
    );
    assert_eq!(w.converge(), 1);
    assert_eq!(w.layout(), ["n1 blog/0 redis", "n1 blog/0 web"]);
}

#[test]
fn spec_change_replaces_only_the_changed_service_make_before_break() {
    let mut w = World::new(BLOG, vec![ready("n1")]);
    w.converge();
    let old_web = w.desired.apps["blog"].service("web").unwrap().spec.clone();
    w.desired = desired(&BLOG.replace("blog:1.4", "blog:1.5"));
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "network blog/0",
                "pull reg.example.com/blog:1.5 login reg.example.com",
                "run blog/0 web replace",
            ]
        )])
    );
    let Action::Run { reason, .. } = &p.actions["n1"][2] else {
        panic!()
    };
    assert_eq!(reason, &RunReason::Replace { old: old_web });
    w.apply(&p);
    // Both run side by side until the next plan sees the new one ready.
    assert_eq!(
        w.layout(),
        ["n1 blog/0 redis", "n1 blog/0 web", "n1 blog/0 web"]
    );
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[("n1", &["remove blog/0 web spec changed"])])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["n1 blog/0 redis", "n1 blog/0 web"]);
}

#[test]
fn a_service_with_a_writable_volume_stops_before_its_replacement_runs() {
    let apps = SHOP.replace(
        "memory = \"128M\"",
        "memory = \"128M\"\nvolumes = [\"shop-data:/data\", \"/etc/ssl:/ssl:ro\"]",
    ) + "[apps.shop.volumes.shop-data]\nkind = \"local\"\n";
    let mut w = World::new(&apps, vec![ready("n1")]);
    w.converge();
    w.desired = desired(&apps.replace("shop:2", "shop:3"));
    let p = w.plan();
    // Pulled first, so the gap between stop and start is short.
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "network shop/0",
                "pull reg.example.com/shop:3 login reg.example.com",
                "remove shop/0 web stop first",
                "run shop/0 web replace",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["n1 shop/0 web"]);

    // An old one beside a new one that waits (say, on its lock): the old
    // one goes, without waiting for the new one to be ready.
    let old = SpecHash::of(
        &desired(&apps).apps["shop"].services[0].container,
        &crate::reconcile::SpecKey::default(),
    );
    let mut labels = w.on("n1")[0].identity.prism().unwrap().clone();
    labels.spec = old.to_string();
    w.add("n1", labels, "old", "reg.example.com/shop:2");
    w.find_mut("n1", "web").state = RunState::Restarting;
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[("n1", &["remove shop/0 web stop first"])])
    );
    let Action::Remove { container, .. } = &p.actions["n1"][0] else {
        panic!()
    };
    assert_eq!(container.name, "old");
}

#[test]
fn the_old_container_stays_until_the_new_one_is_healthy() {
    let mut w = World::new(BLOG, vec![ready("n1")]);
    w.converge();
    w.desired = desired(&BLOG.replace("blog:1.4", "blog:1.5"));
    let p = w.plan();
    w.apply(&p);
    let new_spec = w.desired.apps["blog"].service("web").unwrap().spec.clone();
    for (state, health) in [
        (RunState::Running, Health::Starting),
        (RunState::Running, Health::None),
        (RunState::Running, Health::Unhealthy),
        (RunState::Restarting, Health::None),
    ] {
        let c = w.with_spec("n1", new_spec.as_str());
        c.state = state.clone();
        c.health = health.clone();
        let p = w.plan();
        let removes = p
            .all_actions()
            .filter(|(_, a)| matches!(a, Action::Remove { .. }))
            .count();
        assert_eq!(removes, 0, "{state} {health}: {:?}", actions(&p));
    }
    let c = w.with_spec("n1", new_spec.as_str());
    c.state = RunState::Running;
    c.health = Health::Healthy;
    assert_eq!(
        actions(&w.plan()),
        table(&[("n1", &["remove blog/0 web spec changed"])])
    );
}

#[test]
fn a_lost_node_s_pods_move_and_its_strays_go_when_it_returns() {
    let mut w = World::new(BLOG, vec![ready("n1"), ready("n2")]);
    w.converge();
    assert_eq!(w.placements[0].node_id, "n1");
    // n1 stops answering, then is declared lost.
    w.reachable.remove("n1");
    w.set_state("n1", NodeState::Lost);
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move blog/0 from node n1 to node n2"]);
    assert_eq!(
        actions(&p),
        table(&[(
            "n2",
            &[
                "network blog/0",
                "pull redis:7",
                "pull reg.example.com/blog:1.4 login reg.example.com",
                "run blog/0 redis move from n1",
                "run blog/0 web move from n1",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());

    // n1 comes back holding its old containers: they are strays now.
    w.reachable.insert("n1".into());
    w.set_state("n1", NodeState::Ready);
    let p = w.plan();
    assert!(p.placement_changes.is_empty());
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "remove blog/0 redis stray, on n2",
                "remove blog/0 web stray, on n2",
                "remove network blog/0",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["n2 blog/0 redis", "n2 blog/0 web"]);
}

#[test]
fn draining_starts_elsewhere_first_then_removes() {
    let mut w = World::new(BLOG, vec![ready("n1"), ready("n2")]);
    w.converge();
    w.set_state("n1", NodeState::Draining);
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move blog/0 from node n1 to node n2"]);
    // Nothing leaves n1 yet.
    assert_eq!(
        actions(&p),
        table(&[(
            "n2",
            &[
                "network blog/0",
                "pull redis:7",
                "pull reg.example.com/blog:1.4 login reg.example.com",
                "run blog/0 redis move from n1",
                "run blog/0 web move from n1",
            ]
        )])
    );
    w.apply(&p);
    // Not ready on n2 yet (web's check has not passed): n1 keeps its pod.
    w.find_mut("n2", "web").health = Health::Starting;
    assert!(w.plan().is_empty(), "{:?}", actions(&w.plan()));
    w.find_mut("n2", "web").health = Health::Healthy;
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "remove blog/0 redis stray, on n2",
                "remove blog/0 web stray, on n2",
                "remove network blog/0",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
}

#[test]
fn draining_without_room_elsewhere_keeps_the_pod_and_says_so() {
    let mut w = World::new(BLOG, vec![ready("n1")]);
    w.converge();
    w.set_state("n1", NodeState::Draining);
    let p = w.plan();
    assert!(p.is_empty());
    assert_eq!(
        problems(&p),
        [
            "! cannot move: blog/0 stays on draining node n1: has no node to run on: none is ready (1 draining)"
        ]
    );
    // And nothing new is started on a draining node.
    w.find_mut("n1", "web").state = RunState::Exited;
    w.find_mut("n1", "web").exit_code = 137;
    assert!(w.plan().is_empty());
}

#[test]
fn a_lost_node_s_pod_without_room_waits_for_the_next_ready_node() {
    // n2 is too small for blog (320M over a 256M reserve).
    let mut small = ready("n2");
    small.memory = Bytes(400 << 20);
    let mut w = World::new(BLOG, vec![ready("n1"), small]);
    w.converge();
    w.reachable.remove("n1");
    w.set_state("n1", NodeState::Lost);
    let p = w.plan();
    assert!(p.actions.is_empty());
    assert_eq!(changes(&p), ["- unplace blog/0 from node n1"]);
    assert_eq!(
        problems(&p),
        ["! cannot place: blog/0 needs 320M of memory; the largest free space is 144M, on node n2"]
    );
    w.apply(&p);

    // A new instance appears: nothing goes there while it is prepared.
    w.nodes.push(node("n3", NodeState::Preparing));
    w.containers.insert("n3".into(), vec![]);
    w.reachable.insert("n3".into());
    let p = w.plan();
    assert!(p.is_empty(), "{:?}", actions(&p));
    assert_eq!(p.problems.len(), 1);

    // Ready: the waiting pod goes there at once.
    w.set_state("n3", NodeState::Ready);
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place blog/0 on node n3"]);
    assert_eq!(p.actions.keys().collect::<Vec<_>>(), ["n3"]);
    assert!(p.problems.is_empty());
    w.apply(&p);
    assert!(w.plan().is_empty());
}

#[test]
fn a_draining_node_takes_no_new_pod_even_with_room() {
    let mut w = World::new(BLOG, vec![ready("n1"), ready("n2")]);
    w.converge();
    assert_eq!(w.placements[0].node_id, "n1");
    w.set_state("n2", NodeState::Draining);
    // shop/0 is new: n1 takes it, never the draining n2.
    w.desired = desired(&format!("{BLOG}{SHOP}"));
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place shop/0 on node n1"]);
    assert_eq!(p.actions.keys().collect::<Vec<_>>(), ["n1"]);
    w.apply(&p);
    // With n1 draining too, a third app has nowhere to go.
    w.set_state("n1", NodeState::Draining);
    w.desired = desired(&format!("{BLOG}{SHOP}{}", SHOP.replace("shop", "wiki")));
    let p = w.plan();
    assert!(p.actions.is_empty(), "{:?}", actions(&p));
    assert!(
        problems(&p).iter().any(|l| l.starts_with(
            "! cannot place: wiki/0 has no node to run on: none is ready (2 draining)"
        )),
        "{:?}",
        problems(&p)
    );
}

#[test]
fn a_suspect_node_keeps_its_pods_without_churn() {
    let mut w = World::new(BLOG, vec![ready("n1"), ready("n2")]);
    w.converge();
    w.set_state("n1", NodeState::Suspect);
    w.reachable.remove("n1");
    let p = w.plan();
    assert!(p.is_empty(), "{:?} {:?}", changes(&p), actions(&p));
    assert!(p.problems.is_empty());
    // Observed again while still suspect: nothing to do either.
    w.reachable.insert("n1".into());
    assert!(w.plan().is_empty());
}

#[test]
fn a_suspect_node_takes_no_new_pod() {
    let mut w = World::new(
        &format!("{BLOG}{SHOP}"),
        vec![node("n1", NodeState::Suspect)],
    );
    let p = w.plan();
    assert!(p.actions.is_empty());
    assert_eq!(p.problems.len(), 2);
    // A new node arrives: everything goes there; the suspect node is left alone.
    w.nodes.push(ready("n2"));
    w.containers.insert("n2".into(), vec![]);
    w.reachable.insert("n2".into());
    let p = w.plan();
    assert_eq!(
        changes(&p),
        ["+ place blog/0 on node n2", "+ place shop/0 on node n2"]
    );
    assert_eq!(p.actions.keys().collect::<Vec<_>>(), ["n2"]);
    assert!(p.problems.is_empty());
}

#[test]
fn a_node_added_takes_waiting_pods_and_nothing_else_moves() {
    // n1 holds blog (320M) but not shop too: 2G total, 256M reserve... so
    // make n1 small.
    let mut small = ready("n1");
    small.memory = Bytes(600 << 20);
    let mut w = World::new(&format!("{BLOG}{SHOP}"), vec![small]);
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place blog/0 on node n1"]);
    assert_eq!(
        problems(&p),
        ["! cannot place: shop/0 needs 128M of memory; the largest free space is 24M, on node n1"]
    );
    w.converge();

    w.nodes.push(ready("n2"));
    w.containers.insert("n2".into(), vec![]);
    w.reachable.insert("n2".into());
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place shop/0 on node n2"]);
    assert_eq!(
        actions(&p),
        table(&[(
            "n2",
            &[
                "network shop/0",
                "pull reg.example.com/shop:2 login reg.example.com",
                "run shop/0 web new",
            ]
        )])
    );
    assert!(p.problems.is_empty());
    w.apply(&p);
    assert!(w.plan().is_empty());
}

#[test]
fn scale_up_spreads_and_scale_down_removes() {
    let mut w = World::new(SHOP, vec![ready("n1"), ready("n2")]);
    w.converge();
    w.desired = desired(&SHOP.replace("[apps.shop]", "[apps.shop]\ninstances = 3"));
    let p = w.plan();
    assert_eq!(
        changes(&p),
        ["+ place shop/1 on node n2", "+ place shop/2 on node n1"]
    );
    assert_eq!(
        actions(&p),
        table(&[
            (
                "n1",
                &[
                    "network shop/2",
                    "pull reg.example.com/shop:2 login reg.example.com",
                    "run shop/2 web new",
                ]
            ),
            (
                "n2",
                &[
                    "network shop/1",
                    "pull reg.example.com/shop:2 login reg.example.com",
                    "run shop/1 web new",
                ]
            ),
        ])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());

    w.desired = desired(SHOP);
    let p = w.plan();
    assert_eq!(
        changes(&p),
        [
            "- unplace shop/1 from node n2",
            "- unplace shop/2 from node n1"
        ]
    );
    assert_eq!(
        actions(&p),
        table(&[
            (
                "n1",
                &[
                    "remove shop/2 web scaled down to 1",
                    "remove network shop/2"
                ]
            ),
            (
                "n2",
                &[
                    "remove shop/1 web scaled down to 1",
                    "remove network shop/1"
                ]
            ),
        ])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["n1 shop/0 web"]);
}

#[test]
fn removed_apps_and_services_go_at_once() {
    let mut w = World::new(&format!("{BLOG}{SHOP}"), vec![ready("n1")]);
    w.converge();
    // shop removed, blog loses redis.
    let blog_without_redis = BLOG.replace("depends_on = [\"redis\"]\n", "").replace(
        "[apps.blog.services.redis]\nimage = \"redis:7\"\nmemory = \"64M\"\n",
        "",
    );
    w.desired = desired(&blog_without_redis);
    let p = w.plan();
    assert_eq!(changes(&p), ["- unplace shop/0 from node n1"]);
    // web's spec did not change (depends_on is not part of it).
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "remove blog/0 redis service removed",
                "remove shop/0 web app removed",
                "remove network shop/0",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());

    w.desired = desired("");
    let p = w.plan();
    assert_eq!(changes(&p), ["- unplace blog/0 from node n1"]);
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &["remove blog/0 web app removed", "remove network blog/0"]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert!(w.layout().is_empty());
    assert!(w.networks["n1"].is_empty(), "{:?}", w.networks);
}

#[test]
fn infeasible_pod_is_a_problem_and_the_rest_runs() {
    let huge = SHOP
        .replace("[apps.shop]", "[apps.huge]")
        .replace("apps.shop.", "apps.huge.")
        .replace("128M", "1900M");
    let mut w = World::new(&format!("{BLOG}{huge}"), vec![ready("i-0abc")]);
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place blog/0 on node i-0abc"]);
    assert_eq!(
        problems(&p),
        [
            "! cannot place: huge/0 needs 1900M of memory; the largest free space is 1792M, on node i-0abc"
        ]
    );
    assert_eq!(
        serde_json::to_value(&p.problems[0]).unwrap()["type"],
        "urn:prism:problem:cannot-place"
    );
    w.apply(&p);
    // Still reported, and nothing else to do.
    let p = w.plan();
    assert!(p.is_empty());
    assert_eq!(p.problems.len(), 1);
}

#[test]
fn two_pods_competing_for_one_node() {
    let big =
        |app: &str| format!("[apps.{app}.services.web]\nimage = \"{app}:1\"\nmemory = \"1G\"\n");
    let w = World::new(
        &format!("{}{}", big("alpha"), big("beta")),
        vec![ready("n1")],
    );
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place alpha/0 on node n1"]);
    assert_eq!(
        problems(&p),
        ["! cannot place: beta/0 needs 1G of memory; the largest free space is 768M, on node n1"]
    );
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &["network alpha/0", "pull alpha:1", "run alpha/0 web new"]
        )])
    );
}

#[test]
fn strays_stay_until_their_pod_is_ready_on_its_node() {
    let mut w = World::new(SHOP, vec![ready("n1"), ready("n2")]);
    w.converge();
    assert_eq!(w.placements[0].node_id, "n1");
    // A copy of the pod on n2 (left there by an earlier move).
    let spec = w.desired.apps["shop"].services[0].spec.clone();
    let labels = PrismLabels {
        fleet: "hobby".into(),
        app: "shop".into(),
        service: "web".into(),
        instance: 0,
        spec: spec.to_string(),
    };
    w.add("n2", labels, "stray", "reg.example.com/shop:2");
    // While the pod on n1 is not running, the stray is kept.
    w.find_mut("n1", "web").state = RunState::Restarting;
    assert!(w.plan().is_empty(), "{:?}", actions(&w.plan()));
    w.find_mut("n1", "web").state = RunState::Running;
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n2",
            &["remove shop/0 web stray, on n1", "remove network shop/0"]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
}

#[test]
fn foreign_jobs_and_other_fleets_are_never_touched() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.converge();
    w.add_foreign("n1", "by-hand", LabelProblem::Missing("prism.fleet"));
    // A job container: fleet and app labels, prism.job, no service/instance.
    w.add_foreign("n1", "prism-job", LabelProblem::Missing("prism.service"));
    let other = PrismLabels {
        fleet: "other".into(),
        app: "gone".into(),
        service: "web".into(),
        instance: 0,
        spec: "0".into(),
    };
    w.add("n1", other, "other-fleet", "x:1");
    assert!(w.plan().is_empty(), "{:?}", actions(&w.plan()));
    // Even with no apps at all, only our own containers go.
    w.desired = desired("");
    assert_eq!(
        actions(&w.plan()),
        table(&[(
            "n1",
            &["remove shop/0 web app removed", "remove network shop/0"]
        )])
    );
}

#[test]
fn untrusted_and_unknown_nodes_are_never_touched() {
    let mut w = World::new(SHOP, vec![ready("n1"), ready("n2")]);
    w.converge();
    assert_eq!(w.placements[0].node_id, "n1");
    w.set_state("n1", NodeState::Untrusted);
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move shop/0 from node n1 to node n2"]);
    w.apply(&p);
    // Ready on n2, yet n1's copy stays: n1 is not to be touched.
    assert!(w.plan().is_empty(), "{:?}", actions(&w.plan()));

    // A node observed but missing from the inventory is ignored too.
    w.nodes.retain(|n| n.id != "n1");
    assert!(w.plan().is_empty());
}

#[test]
fn unhealthy_containers_restart_per_policy() {
    let mut w = World::new(BLOG, vec![ready("n1")]);
    w.converge();
    w.find_mut("n1", "web").health = Health::Unhealthy;
    assert_eq!(
        actions(&w.plan()),
        table(&[("n1", &["restart blog/0 web"])])
    );
    w.converge();

    let mut w = World::new(
        &BLOG.replace("depends_on", "restart = \"no\"\ndepends_on"),
        vec![ready("n1")],
    );
    w.converge();
    w.find_mut("n1", "web").health = Health::Unhealthy;
    assert!(w.plan().is_empty());
}

#[test]
fn exited_containers_start_per_policy() {
    let cases = [
        ("always", 0, true),
        ("unless-stopped", 0, true),
        ("unless-stopped", 137, true),
        ("on-failure", 1, true),
        ("on-failure", 0, false),
        ("no", 1, false),
        ("no", 0, false),
    ];
    for (policy, code, starts) in cases {
        let apps = SHOP.replace(
            "memory = \"128M\"",
            &format!("memory = \"128M\"\nrestart = \"{policy}\""),
        );
        let mut w = World::new(&apps, vec![ready("n1")]);
        w.converge();
        let c = w.find_mut("n1", "web");
        c.state = RunState::Exited;
        c.exit_code = code;
        let want: &[&str] = if starts { &["start shop/0 web"] } else { &[] };
        assert_eq!(
            actions(&w.plan()).remove("n1").unwrap_or_default(),
            strings(want),
            "{policy} exit {code}"
        );
    }
}

#[test]
fn a_dead_container_is_replaced_by_a_new_one_of_the_same_name() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.converge();
    w.find_mut("n1", "web").state = RunState::Dead;
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[(
            "n1",
            &[
                "network shop/0",
                "pull reg.example.com/shop:2 login reg.example.com",
                "remove shop/0 web dead",
                "run shop/0 web recreate",
            ]
        )])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["n1 shop/0 web"]);
}

#[test]
fn duplicates_keep_the_running_one() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.converge();
    let labels = w.on("n1")[0].identity.prism().unwrap().clone();
    w.add("n1", labels, "an-older-name", "reg.example.com/shop:2");
    w.containers.get_mut("n1").unwrap()[1].state = RunState::Exited;
    let p = w.plan();
    let Action::Remove { container, reason } = &p.actions["n1"][0] else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(container.name, "an-older-name");
    assert_eq!(
        reason,
        &RemoveReason::Duplicate {
            kept: w.on("n1")[0].name.clone()
        }
    );
    assert_eq!(p.actions["n1"].len(), 1);
    w.apply(&p);
    assert!(w.plan().is_empty());
}

#[test]
fn lost_placements_are_adopted_from_what_runs() {
    let mut w = World::new(SHOP, vec![ready("n1"), ready("n2")]);
    w.converge();
    // Move the containers to n2 by hand, and lose the state file.
    let moved = w.containers.insert("n1".into(), vec![]).unwrap();
    w.containers.insert("n2".into(), moved);
    w.placements.clear();
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place shop/0 on node n2"]);
    assert!(p.actions.is_empty());
}

#[test]
fn pods_on_one_node_pull_a_shared_image_once() {
    let apps = SHOP.replace("[apps.shop]", "[apps.shop]\ninstances = 2");
    let w = World::new(&apps, vec![ready("n1")]);
    assert_eq!(
        actions(&w.plan()),
        table(&[(
            "n1",
            &[
                "network shop/0",
                "pull reg.example.com/shop:2 login reg.example.com",
                "run shop/0 web new",
                "network shop/1",
                "run shop/1 web new",
            ]
        )])
    );
}

#[test]
fn a_placement_on_a_vanished_node_moves() {
    let mut w = World::new(SHOP, vec![ready("n2")]);
    w.placements.push(Placement {
        app: "shop".into(),
        instance: 0,
        node_id: "i-gone".into(),
        placed_at: 1,
    });
    let p = w.plan();
    assert_eq!(changes(&p), ["~ move shop/0 from node i-gone to node n2"]);
    assert_eq!(
        actions(&p)["n2"].last().unwrap(),
        "run shop/0 web move from i-gone"
    );
    assert_eq!(w.converge(), 1);
}

#[test]
fn placements_of_pods_that_cannot_go_anywhere_are_dropped() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.converge();
    w.set_state("n1", NodeState::Lost);
    w.reachable.remove("n1");
    let p = w.plan();
    assert_eq!(changes(&p), ["- unplace shop/0 from node n1"]);
    assert_eq!(
        problems(&p),
        ["! cannot place: shop/0 has no node to run on: none is ready (1 lost)"]
    );
    w.apply(&p);
    // n1 returns with the pod still running: it is adopted, not rerun.
    w.set_state("n1", NodeState::Ready);
    w.reachable.insert("n1".into());
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place shop/0 on node n1"]);
    assert!(p.actions.is_empty());
}

#[test]
fn plans_never_show_secret_values() {
    let mut w = World::new(BLOG, vec![ready("n1")]);
    let p = w.plan();
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains("APP_KEY"), "{json}");
    let text: String = p
        .all_actions()
        .map(|(_, a)| format!("{a}\n{a:?}\n"))
        .collect();
    for out in [&json, &text, &format!("{p:?}")] {
        assert!(!out.contains(SECRET), "{out}");
    }
    // Nor does any argv built from it.
    for (_, a) in p.all_actions() {
        if let Action::Run { spec, .. } = a {
            let argv = crate::reconcile::docker::run_argv(
                spec,
                spec.needs_env_file().then_some("/dev/stdin"),
            )
            .unwrap();
            assert!(argv.iter().all(|arg| !arg.contains(SECRET)), "{argv:?}");
        }
    }
    w.apply(&p);
}

#[test]
fn plan_lines_read_well() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    let spec = w.desired.apps["shop"].services[0].spec.clone();
    let p = w.plan();
    let lines: Vec<String> = p.all_actions().map(|(_, a)| a.to_string()).collect();
    assert_eq!(
        lines,
        [
            "+ create network prism.hobby.shop.0".to_owned(),
            "+ pull reg.example.com/shop:2 (if missing, logging in to reg.example.com)".to_owned(),
            format!("+ create shop/0 web (reg.example.com/shop:2, spec {spec})"),
        ]
    );
    w.apply(&p);
    w.desired = desired(&SHOP.replace("shop:2", "shop:3"));
    let p = w.plan();
    let new = w.desired.apps["shop"].services[0].spec.clone();
    assert_eq!(
        p.actions["n1"][2].to_string(),
        format!("~ replace shop/0 web (reg.example.com/shop:3, spec {new}), was spec {spec}")
    );
    w.apply(&p);
    let p = w.plan();
    let name = format!("prism.hobby.shop.0.web.{spec}");
    assert_eq!(
        p.actions["n1"][0].to_string(),
        format!("- remove shop/0 web ({name}, spec changed; {new} is ready)")
    );
    let json = serde_json::to_value(&p).unwrap();
    let remove = &json["actions"]["n1"][0];
    assert_eq!(remove["action"], "remove");
    assert_eq!(remove["reason"]["why"], "spec_changed");
    assert_eq!(remove["container"]["name"], name.as_str());
}

#[test]
fn a_dead_copy_beside_a_live_one_just_goes() {
    let mut w = World::new(SHOP, vec![ready("n1")]);
    w.converge();
    let labels = w.on("n1")[0].identity.prism().unwrap().clone();
    w.add("n1", labels, "dead-copy", "reg.example.com/shop:2");
    w.containers.get_mut("n1").unwrap()[1].state = RunState::Dead;
    // The live one is created, not running: it is started, not replaced.
    w.containers.get_mut("n1").unwrap()[0].state = RunState::Created;
    let p = w.plan();
    assert_eq!(
        actions(&p),
        table(&[("n1", &["remove shop/0 web dead", "start shop/0 web"])])
    );
    w.apply(&p);
    assert!(w.plan().is_empty());
    assert_eq!(w.layout(), ["n1 shop/0 web"]);
}

#[test]
fn one_pull_per_image_and_always_wins() {
    let apps = r#"
[apps.shop]
[apps.shop.services.web]
image = "reg.example.com/shop:latest"
memory = "64M"
pull = "always"
[apps.shop.services.queue]
image = "reg.example.com/shop:latest"
memory = "64M"
[apps.shop.services.cache]
image = "redis:7"
memory = "64M"
"#;
    let w = World::new(apps, vec![ready("n1")]);
    assert_eq!(
        actions(&w.plan()),
        table(&[(
            "n1",
            &[
                "network shop/0",
                "pull redis:7",
                "pull always reg.example.com/shop:latest login reg.example.com",
                "run shop/0 cache new",
                "run shop/0 queue new",
                "run shop/0 web new",
            ]
        )])
    );
    // The policy decides when to pull, not what runs: no new spec.
    let missing = World::new(&apps.replace("pull = \"always\"\n", ""), vec![ready("n1")]);
    assert_eq!(
        missing.desired.apps["shop"].service("web").unwrap().spec,
        w.desired.apps["shop"].service("web").unwrap().spec
    );
}

#[test]
fn a_preparing_node_pulls_the_fleet_s_missing_images_and_takes_no_pod() {
    let mut small = ready("n1");
    small.memory = Bytes(600 << 20);
    let mut fresh = node("n2", NodeState::Preparing);
    fresh.images = Some(crate::observe::Images::new(["docker.io/library/redis:7"]));
    let apps = format!(
        "{BLOG}{}",
        SHOP.replace("memory = \"128M\"", "memory = \"128M\"\npull = \"always\"")
    );
    let mut w = World::new(&apps, vec![small, fresh]);
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place blog/0 on node n1"]);
    assert_eq!(
        p.problems.len(),
        1,
        "shop waits for a ready node: {:?}",
        problems(&p)
    );
    assert_eq!(
        actions(&p)["n2"],
        strings(&[
            "pull reg.example.com/blog:1.4 login reg.example.com to prepare",
            "pull always reg.example.com/shop:2 login reg.example.com to prepare",
        ]),
        "each image it lacks (redis is there), with its policy and login"
    );
    let lines: Vec<String> = p.actions["n2"].iter().map(ToString::to_string).collect();
    assert_eq!(
        lines[0],
        "+ pull reg.example.com/blog:1.4 (if missing, logging in to reg.example.com, preparing the node)"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["actions"]["n2"][0]["prepare"], true);
    assert!(
        json["actions"]["n1"][1].get("prepare").is_none(),
        "{json:#}"
    );

    // Once ready (the next pass saw its images), it takes the waiting pod
    // and pulls nothing more than the pod's own.
    w.apply(&p);
    w.set_state("n2", NodeState::Ready);
    let p = w.plan();
    assert_eq!(changes(&p), ["+ place shop/0 on node n2"]);
    assert!(
        p.all_actions()
            .all(|(_, a)| !matches!(a, Action::Pull { prepare: true, .. })),
        "{:?}",
        actions(&p)
    );
}

#[test]
fn a_preparing_node_does_not_pull_the_images_of_an_app_scaled_to_zero() {
    let mut fresh = node("n1", NodeState::Preparing);
    fresh.images = Some(crate::observe::Images::new(["docker.io/library/redis:7"]));
    let apps = format!(
        "{BLOG}{}",
        SHOP.replace("[apps.shop]\n", "[apps.shop]\ninstances = 0\n")
    );
    let p = World::new(&apps, vec![fresh]).plan();
    assert_eq!(
        actions(&p)["n1"],
        strings(&["pull reg.example.com/blog:1.4 login reg.example.com to prepare"]),
    );
}

#[test]
fn only_a_preparing_node_whose_images_were_read_pulls_ahead() {
    let held = crate::observe::Images::new(["redis:7", "reg.example.com/blog:1.4"]);
    let with = |state: NodeState, images: Option<crate::observe::Images>| {
        let mut n = node("n1", state);
        n.images = images;
        n
    };
    for n in [
        with(NodeState::Preparing, None),
        with(NodeState::Ready, Some(crate::observe::Images::default())),
        with(NodeState::Suspect, Some(crate::observe::Images::default())),
        with(NodeState::Preparing, Some(held)),
    ] {
        let w = World::new(BLOG, vec![n.clone()]);
        let p = w.plan();
        assert!(
            p.all_actions()
                .all(|(_, a)| !matches!(a, Action::Pull { prepare: true, .. })),
            "{n:?}: {:?}",
            actions(&p)
        );
    }
}

mod volumes;
