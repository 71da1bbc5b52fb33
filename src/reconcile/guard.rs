//! Guards against mass change. Two kinds of input can look like "remove
//! everything" while meaning nothing of the sort: a fleet.toml cut short
//! by an editor or a bad copy (it still parses, with most apps gone), and
//! a DescribeInstances that answers with too little (most nodes missing,
//! none said to be shutting down or terminated). Either is held back:
//!
//! - **apps removed**: a plan that would remove more than half of the
//!   fleet's pods because their apps are no longer in fleet.toml;
//! - **inventory shrank**: a listing that lacks more than half of the
//!   nodes known before, with no word from the provider on them.
//!
//! A held change is left out of the plan (the pods keep running, the
//! missing nodes are still probed), recorded as an event and shown by
//! `prism plan` and the dashboard. It goes ahead when the same change is
//! still seen `[guard] hold` after it was first seen, or when someone
//! confirms it (`prism confirm`). A change that goes away clears its hold.
//! Pure: the caller keeps [`Holds`] between passes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::desired::{Desired, PodKey};
use super::plan::{Action, PlacementChange, Plan, RemoveReason};
use crate::observe::ContainerState;

/// What a guard watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldKind {
    AppsRemoved,
    InventoryShrank,
}

impl HoldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::AppsRemoved => "apps-removed",
            HoldKind::InventoryShrank => "inventory-shrank",
        }
    }

    pub fn parse(s: &str) -> Option<HoldKind> {
        [HoldKind::AppsRemoved, HoldKind::InventoryShrank]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A mass change seen this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MassChange {
    pub kind: HoldKind,
    /// What changes, as a sorted list: the apps removed, or the nodes
    /// missing. The same list seen again is the same change.
    pub items: Vec<String>,
    /// In words, for the event and the plan.
    pub summary: String,
}

/// A change held back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub kind: HoldKind,
    pub items: Vec<String>,
    pub summary: String,
    /// When it was first seen (unix ms).
    pub first_seen: i64,
    pub confirmed: bool,
}

impl Hold {
    /// When it goes ahead unless confirmed before (unix ms).
    pub(crate) fn release_at(&self, hold: Duration) -> i64 {
        self.first_seen
            .saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "held: {}", self.summary)
    }
}

/// What the guard decided for one kind this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// No mass change of this kind.
    Clear,
    /// Held back. `new`: first seen this pass (worth an event).
    Held { hold: Hold, new: bool },
    /// Seen long enough, or confirmed: it goes ahead.
    Go(Hold),
}

/// The holds kept between passes, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds(BTreeMap<HoldKind, Hold>);

impl Holds {
    pub fn new(holds: impl IntoIterator<Item = Hold>) -> Holds {
        Holds(holds.into_iter().map(|h| (h.kind, h)).collect())
    }

    pub fn all(&self) -> impl Iterator<Item = &Hold> {
        self.0.values()
    }

    /// Judges `seen` (this pass's change of `kind`, if any) at `now`: a new
    /// change is held; the same change goes ahead once confirmed or seen
    /// again `hold` after it was first seen; no change clears the hold.
    pub(crate) fn admit(
        &mut self,
        kind: HoldKind,
        seen: Option<MassChange>,
        now: i64,
        hold: Duration,
    ) -> Admission {
        let Some(change) = seen else {
            self.0.remove(&kind);
            return Admission::Clear;
        };
        match self.0.get(&kind) {
            Some(h) if h.items == change.items => {
                if h.confirmed || now >= h.release_at(hold) {
                    Admission::Go(h.clone())
                } else {
                    Admission::Held {
                        hold: h.clone(),
                        new: false,
                    }
                }
            }
            _ => {
                let h = Hold {
                    kind,
                    items: change.items,
                    summary: change.summary,
                    first_seen: now,
                    confirmed: false,
                };
                self.0.insert(kind, h.clone());
                Admission::Held { hold: h, new: true }
            }
        }
    }

    /// Lets every change held now go ahead; the holds confirmed.
    pub(crate) fn confirm_all(&mut self) -> Vec<Hold> {
        self.0
            .values_mut()
            .map(|h| {
                h.confirmed = true;
                h.clone()
            })
            .collect()
    }
}

/// The apps-removed change, if more than half of the fleet's `pods` (those
/// placed or seen running) belong to apps no longer in `desired`.
pub(crate) fn apps_removed(desired: &Desired, pods: &BTreeSet<PodKey>) -> Option<MassChange> {
    let removed: Vec<&PodKey> = pods
        .iter()
        .filter(|p| !desired.apps.contains_key(&p.app))
        .collect();
    if removed.is_empty() || removed.len().saturating_mul(2) <= pods.len() {
        return None;
    }
    let apps: BTreeSet<&str> = removed.iter().map(|p| p.app.as_str()).collect();
    let items: Vec<String> = apps.iter().map(|a| (*a).to_owned()).collect();
    Some(MassChange {
        kind: HoldKind::AppsRemoved,
        summary: format!(
            "{} of the fleet's {} pods would be removed because their apps are no longer in fleet.toml ({})",
            removed.len(),
            pods.len(),
            items.join(", ")
        ),
        items,
    })
}

/// The fleet's pods: those placed, and those with containers of
/// `fleet` observed.
pub(crate) fn fleet_pods(
    fleet: &str,
    placed: impl IntoIterator<Item = PodKey>,
    observed: &BTreeMap<String, Vec<ContainerState>>,
) -> BTreeSet<PodKey> {
    let mut pods: BTreeSet<PodKey> = placed.into_iter().collect();
    for c in observed.values().flatten() {
        if let Some(l) = c.identity.prism()
            && l.fleet == fleet
        {
            pods.insert(PodKey::new(&l.app, l.instance));
        }
    }
    pods
}

/// `plan` without what removes the pods of `apps`: their containers,
/// networks and placements stay as they are.
pub(crate) fn hold_apps(plan: &mut Plan, apps: &[String]) {
    let held = |pod: &PodKey| apps.contains(&pod.app);
    for actions in plan.actions.values_mut() {
        actions.retain(|a| match a {
            Action::Remove {
                container,
                reason: RemoveReason::AppRemoved,
            } => !held(&container.pod),
            Action::RemoveNetwork { pod, .. } => !held(pod),
            Action::UnmountVolume { volume, .. } | Action::DetachVolume { volume, .. } => {
                !held(&volume.pod())
            }
            _ => true,
        });
    }
    plan.actions.retain(|_, actions| !actions.is_empty());
    plan.placement_changes.retain(|c| match c {
        PlacementChange::Unplace { pod, .. } => !held(pod),
        _ => true,
    });
}

/// The inventory-shrank change, if more than half of the `known` nodes
/// (recorded and not gone) are missing from a listing (`listed`: every id
/// the provider answered with, shutting down and terminated ones
/// included).
pub(crate) fn inventory_shrank(
    known: &BTreeSet<String>,
    listed: &BTreeSet<String>,
) -> Option<MassChange> {
    let missing: Vec<String> = known.difference(listed).cloned().collect();
    if missing.is_empty() || missing.len().saturating_mul(2) <= known.len() {
        return None;
    }
    Some(MassChange {
        kind: HoldKind::InventoryShrank,
        summary: format!(
            "discovery no longer lists {} of the {} known nodes ({}), and says none of them is shutting down or terminated",
            missing.len(),
            known.len(),
            missing.join(", ")
        ),
        items: missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(600);

    fn change(items: &[&str]) -> MassChange {
        MassChange {
            kind: HoldKind::AppsRemoved,
            items: items.iter().map(|s| (*s).to_owned()).collect(),
            summary: "three pods".into(),
        }
    }

    #[test]
    fn a_change_is_held_until_seen_again_after_the_hold_or_confirmed() {
        let mut holds = Holds::default();
        let kind = HoldKind::AppsRemoved;
        let first = holds.admit(kind, Some(change(&["a", "b"])), 1_000, HOLD);
        assert!(
            matches!(first, Admission::Held { new: true, .. }),
            "{first:?}"
        );
        let again = holds.admit(kind, Some(change(&["a", "b"])), 300_000, HOLD);
        assert!(
            matches!(again, Admission::Held { new: false, .. }),
            "{again:?}"
        );
        // A different change starts its own wait.
        let other = holds.admit(kind, Some(change(&["a"])), 400_000, HOLD);
        assert!(
            matches!(other, Admission::Held { new: true, .. }),
            "{other:?}"
        );
        assert!(matches!(
            holds.admit(kind, Some(change(&["a"])), 1_000_000, HOLD),
            Admission::Go(_)
        ));
        // Gone away: cleared; seen again later, held anew.
        assert_eq!(holds.admit(kind, None, 1_000_000, HOLD), Admission::Clear);
        assert!(holds.all().next().is_none());
        assert!(matches!(
            holds.admit(kind, Some(change(&["a"])), 1_000_001, HOLD),
            Admission::Held { new: true, .. }
        ));
        // Confirmed: it goes at once.
        assert_eq!(holds.confirm_all().len(), 1);
        assert!(matches!(
            holds.admit(kind, Some(change(&["a"])), 1_000_002, HOLD),
            Admission::Go(h) if h.confirmed
        ));
    }

    #[test]
    fn an_inventory_missing_more_than_half_without_word_is_a_change() {
        let set =
            |ids: &[&str]| -> BTreeSet<String> { ids.iter().map(|s| (*s).to_owned()).collect() };
        let known = set(&["i-1", "i-2", "i-3", "i-4"]);
        assert_eq!(inventory_shrank(&known, &known), None);
        // Half missing is not more than half.
        assert_eq!(inventory_shrank(&known, &set(&["i-1", "i-2"])), None);
        let c = inventory_shrank(&known, &set(&["i-1"])).expect("three of four");
        assert_eq!(c.items, ["i-2", "i-3", "i-4"]);
        assert!(
            c.summary.contains("3 of the 4 known nodes"),
            "{}",
            c.summary
        );
        // An empty answer is the extreme case.
        assert!(inventory_shrank(&known, &set(&[])).is_some());
        // Terminated ones the answer lists are accounted for.
        assert_eq!(inventory_shrank(&known, &set(&["i-1", "i-2", "i-3"])), None);
        assert_eq!(inventory_shrank(&set(&[]), &set(&[])), None);
    }
}
